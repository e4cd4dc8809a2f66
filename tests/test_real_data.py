"""Real CIFAR-10 (the 5,000/1,000 subset built from ../shared/cifar10): reader facts, and a real
accuracy gain for mobilenet_v2 in every framework (torch, Keras on TensorFlow, on JAX) on identical data."""
import numpy as np
import pytest

from bench_fixtures import data
from bench_fixtures.config import resolve
from bench_fixtures.registry import installed
from bench_fixtures.runner.experiment import Experiment
from tests.helpers import real_subset

pytestmark = pytest.mark.real_data


def test_reader_on_the_real_subset():
    ds = data.read_canonical(real_subset())
    assert (len(ds.train), len(ds.test)) == (5000, 1000)
    assert np.bincount(ds.train.labels).tolist() == [500] * 10
    assert np.bincount(ds.test.labels).tolist() == [100] * 10
    mean = ds.train.images.reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(mean, data.MEAN, atol=0.01)  # real images, not noise
    assert ds.label_names[3] == "cat"


@pytest.mark.torch
@pytest.mark.tensorflow
def test_mobilenet_v2_learns_real_images_in_every_framework(tmp_path):
    cfg = resolve(dict(profile="smoke", dataset="cifar10", data_dir=str(real_subset()), train_size=2000,
                       test_size=0, epochs=2, bn_momentum=0.1), gpu_count=0)
    bundle_dir, meta = data.prepare_data(cfg, tmp_path, world=1)
    assert meta["train_size"] == 2000 and meta["test_size"] == 1000
    results = {}
    for framework in installed():
        exp = Experiment(framework, "mobilenet_v2", cfg, bundle_dir, tmp_path, meta)
        try:
            exp.load()
            exp.start_round()
            exp.fine_tune()
            exp.predict_after()
            results[framework] = exp.finetune_info()
        finally:
            exp.close()
    summary = {fw: (round(r["accuracy_before"], 3), round(r["accuracy_after"], 3)) for fw, r in results.items()}
    print(f"\nreal CIFAR-10 subset, mobilenet_v2, 2 epochs of 2,000 images: {summary}")
    for fw, r in results.items():
        # +5 points on 1,000 test images is over 4 standard errors at these accuracies: a real gain
        assert r["accuracy_after"] >= r["accuracy_before"] + 0.05, f"{fw}: {summary[fw]}"
        assert r["epoch_losses"][1] < r["epoch_losses"][0]
