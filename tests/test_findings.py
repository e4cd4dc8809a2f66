"""The report's findings: exact sentences from crafted runs with known figures, "no measurable
difference" where the figures are inside their noise, and the one-file HTML report."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from bench_fixtures.analysis import findings as fnd
from bench_fixtures.analysis import report

from .test_report import crafted_run


def _finetune(fw, acc, ttfs, gap, mem, n=1000, total=20.0):
    e = dict(framework=fw, model="resnet50", accuracy_before=0.1, accuracy_after=acc, test_size=n,
             time_to_first_step_s=ttfs, inter_epoch_gaps_s=[gap], memory=dict(process_peak=mem),
             settings=dict(xla=False, torch_compile=False))
    return dict(name=f"test_finetune[{fw}-resnet50]", stats=dict(median=total, data=[total]), extra_info=e)


def _train_step(fw, seconds):
    e = dict(framework=fw, model="resnet50", steps_per_round=10, batch_size=32, train_images_per_s=320 / seconds[1])
    return dict(name=f"test_train_step[{fw}-resnet50]", stats=dict(median=sorted(seconds)[1], data=seconds),
                extra_info=e)


def _run(tf_acc, tf_ttfs, tf_gap, tf_mem, tf_seconds):
    ft = {("torch", "resnet50"): _finetune("torch", 0.60, 0.30, 0.01, 2**30),
          ("tensorflow", "resnet50"): _finetune("tensorflow", tf_acc, tf_ttfs, tf_gap, tf_mem)}
    ts = {("torch", "resnet50"): _train_step("torch", [1.0, 1.1, 0.9]),
          ("tensorflow", "resnet50"): _train_step("tensorflow", tf_seconds)}
    run = dict(bench_config=dict(profile="seed", dataset="cifar10", epochs=5, batch_size=32, device="cpu",
                                 setup="matched", weights="imagenet"), benchmarks=[])
    return {"matched": ft}, {"matched": ts}, [run]


def test_a_run_with_known_figures_gives_exactly_these_sentences():
    md = fnd.findings(*_run(tf_acc=0.55, tf_ttfs=11.3, tf_gap=0.8, tf_mem=2**31, tf_seconds=[0.5, 0.52, 0.48]))
    text = "\n".join(md)
    assert md[0] == "## Findings"
    expected = [
        "- **TensorFlow** measurably ahead of PyTorch: steady throughput (resnet50). Behind: accuracy (resnet50); "
        "time to first step (resnet50); gap between epochs (resnet50); peak memory (resnet50). No measurable "
        "difference: none.",
        "- Against TensorFlow: the same accuracy (no difference the test set resolves) on 0 of 1 models; PyTorch "
        "measurably behind on: steady throughput (resnet50).",
        "- **Accuracy after fine-tuning, resnet50:** PyTorch 60.0%, TensorFlow 55.0%. TensorFlow behind by 5.0 "
        "points (±4.3 at n = 1,000).",
        "- **Steady throughput, resnet50:** PyTorch 320.0 images/s (3 rounds, 290.9–355.6); TensorFlow 640.0 "
        "images/s (3 rounds, 615.4–666.7). TensorFlow 2.00× PyTorch.",
        "- **Time to first step, resnet50:** PyTorch 0.30 s (eager: nothing to trace), TensorFlow 11.30 s (graph "
        "tracing); one measurement each, paid once per process.",
        "- **Between epochs, resnet50:** mean gap PyTorch 0.010 s, TensorFlow 0.800 s; one run. TensorFlow longer.",
        "- **Peak memory, resnet50** (the worker's resident host memory): PyTorch 1,024 MiB, TensorFlow 2,048 MiB. "
        "TensorFlow 2.00× PyTorch.",
    ]
    for line in expected:
        assert line in md, f"missing:\n{line}\n--- in ---\n{text}"
    assert "- Each framework starts from its own ImageNet checkpoint: accuracy differences include the " \
           "checkpoints'." in md
    assert "- On a CPU: a GPU can rank the frameworks' speed differently, and memory here is host memory." in md


def test_differences_inside_the_noise_say_so():
    md = fnd.findings(*_run(tf_acc=0.58, tf_ttfs=0.33, tf_gap=0.03, tf_mem=1.1 * 2**30, tf_seconds=[0.95, 1.05, 1.0]))
    assert "- **Accuracy after fine-tuning, resnet50:** PyTorch 60.0%, TensorFlow 58.0%. TensorFlow: no difference " \
           "the test set can resolve (±4.3 points at n = 1,000)." in md
    assert "- **Steady throughput, resnet50:** PyTorch 320.0 images/s (3 rounds, 290.9–355.6); TensorFlow 320.0 " \
           "images/s (3 rounds, 304.8–336.8). TensorFlow 1.00× PyTorch: no measurable difference (the rounds " \
           "overlap)." in md
    assert "- **Time to first step, resnet50:** PyTorch 0.30 s (eager: nothing to trace), TensorFlow 0.33 s (graph " \
           "tracing); one measurement each, paid once per process; TensorFlow and PyTorch: no measurable " \
           "difference (within 20%)." in md
    assert any(line.startswith("- **Between epochs, resnet50:**") and line.endswith(
        "TensorFlow: no measurable difference (under 0.05 s apart or within 20%).") for line in md)
    assert "- **TensorFlow** measurably ahead of PyTorch: none. Behind: none. No measurable difference: accuracy " \
           "(resnet50); steady throughput (resnet50); time to first step (resnet50); gap between epochs " \
           "(resnet50); peak memory (resnet50)." in md


@pytest.mark.parametrize("p1,p2,n,margin", [(0.6, 0.55, 1000, 0.0433), (0.5, 0.5, 100, 0.1386), (0.0, 1.0, 10, 0.0)])
def test_accuracy_margin_is_the_normal_95_percent_margin_of_a_difference(p1, p2, n, margin):
    assert fnd.accuracy_margin(p1, p2, n) == pytest.approx(margin, abs=1e-4)


class _Refs(HTMLParser):
    """Every src/href of a page, its images, and whether it parsed to the end."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.images: list[str] = []
        self.closed = False

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("src", "href"):
                self.refs.append(value or "")
        if tag == "img":
            self.images.append(dict(attrs).get("alt", ""))

    def handle_endtag(self, tag):
        self.closed = self.closed or tag == "html"


def test_the_html_report_is_one_file_with_every_figure_embedded(tmp_path):
    path = crafted_run(tmp_path / "run", ["matched", "defaults"], models=("resnet50", "mobilenet_v2"))
    out = tmp_path / "out"
    md = report.write_report([path], out).read_text()
    page = (out / "report.html").read_text()
    parser = _Refs()
    parser.feed(page)
    parser.close()
    figures = re.findall(r"!\[([^\]]+)\]\(\1\)", md)
    assert parser.closed and len(figures) >= 6
    assert sorted(parser.images) == sorted(figures)  # every figure of report.md, in the page
    assert parser.refs and all(r.startswith("data:image/png;base64,") for r in parser.refs)  # nothing outside it
    assert "<h2>Findings</h2>" in page and page.index("<h2>Findings</h2>") < page.index("<h2>resnet50</h2>")
    assert md.index("## Findings") < md.index("## resnet50")  # the answer first, in both
    assert "<table>" in page and "What changed between the setups" in page
    json.loads(open(path).read())  # the run file is untouched


def test_two_runs_say_what_changed_and_on_which_machine():
    first, second = (_run(0.55, 11.3, 0.8, 2**31, [0.5, 0.52, 0.48])[2][0] for _ in range(2))
    fts, tss, _ = _run(0.55, 11.3, 0.8, 2**31, [0.5, 0.52, 0.48])
    from bench_fixtures.analysis import results
    for run, totals, cpu in ((first, (20.0, 30.0), "CPU A"), (second, (20.5, 45.0), "CPU B")):
        run["machine_info"] = dict(cpu_model=cpu)
        run["benchmarks"] = [dict(_finetune(fw, 0.6, 0.3, 0.01, 2**30, total=t), fullname=f"x::test_finetune[{fw}-resnet50]")
                             for fw, t in zip(("torch", "tensorflow"), totals)]
    assert set(results.cases(second, "test_finetune", "matched")) == {("torch", "resnet50"), ("tensorflow", "resnet50")}
    md = fnd.findings(fts, tss, [first, second])
    assert "### What changed since the previous run (run 1 → 2)" in md
    assert "- **Another machine:** CPU A → CPU B: the changes below include the machine's." in md
    assert "- **tensorflow-resnet50:** fine-tune 30.00 → 45.00 s (+50%)." in md
    assert "- **torch-resnet50:** fine-tune 20.00 → 20.50 s (+2%, within 20%: no measurable change)." in md
