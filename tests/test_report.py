"""The report from real smoke runs, its robustness to runs without telemetry, and the DX figures."""
import json
import subprocess
import sys

import numpy as np
from matplotlib.image import imread

from bench_fixtures.analysis import dx
from bench_fixtures.analysis.report import write_report


def decoded(path):
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    return img


def test_report_from_two_real_runs(saved_runs, tmp_path):
    md_path = write_report([str(p) for p in saved_runs], tmp_path / "out")
    out = md_path.parent
    pngs = {p.name for p in out.glob("*.png")}
    assert {"accuracy.png", "training_time.png", "throughput.png", "trend.png",
            "utilization_mobilenet_v2.png", "memory_mobilenet_v2.png"} <= pngs
    for name in pngs:
        img = decoded(out / name)
        assert np.std(img[..., :3]) > 0.05, f"{name} looks blank"  # something was drawn
    md = md_path.read_text()
    assert "## mobilenet_v2" in md and "| accuracy after |" in md and "| time to first step (s) |" in md
    assert "## History" in md and md.count(".json` |") == 2
    assert "## Developer experience" in md and "import time" in md
    assert "pytest tests/benchmarks" in md  # the command line that produced the run
    assert "## Notes" not in md  # everything was there


def test_bench_report_option_writes_the_report_at_session_end(bench_report_dir):
    md = (bench_report_dir / "report.md").read_text()
    assert "## mobilenet_v2" in md and "![accuracy.png](accuracy.png)" in md
    assert json.loads((bench_report_dir / "run.json").read_text())["benchmarks"]  # the run, kept beside
    decoded(bench_report_dir / "accuracy.png")


def test_report_without_telemetry_notes_it(saved_runs, tmp_path):
    run = json.loads(saved_runs[0].read_text())
    for b in run["benchmarks"]:
        for key in ("telemetry_file", "utilization", "memory", "inter_epoch_gaps_s"):
            b["extra_info"].pop(key, None)
    run.pop("dx", None)
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(run))
    md = write_report([str(bare)], tmp_path / "out").read_text()
    assert "torch-mobilenet_v2: no telemetry file" in md
    assert "no developer-experience figures" in md
    assert "| mean inter-epoch gap (s) | –" in md


def test_report_cli_on_a_bad_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{\"benchmarks\": [")
    r = subprocess.run([sys.executable, "-m", "bench_fixtures.report", str(bad), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "bad.json: not valid JSON" in r.stderr


def test_dx_measured_here():
    fp = dx.footprint()
    assert fp["torch"]["bytes"] > 100e6 and fp["tensorflow"]["bytes"] > 100e6
    assert "numpy" not in {name for name, _ in fp["torch"]["largest"]}  # shared, so nobody's cost
    for fw, source in (("torch", "default dependencies"), ("tensorflow", "tensorflow[and-cuda]")):
        assert not any(dx.GPU_LIBRARY.match(name) for name, _ in fp[fw]["largest"])  # like for like
        gpu = fp[fw]["gpu_libraries"]
        assert gpu["source"] == source and (gpu["bytes"] is None) == (not gpu["installed"])
        assert gpu["installed"] or gpu["note"]  # never a silent zero
    loc = dx.backend_loc()
    assert loc["torch"] > 50 and loc["tensorflow"] > 50
    summary = dx.summarize({"torch": [{"import_s": 2.0, "gpus_visible": 0}, {"import_s": 4.0, "gpus_visible": 0}]},
                           0, {"torch": [0.5]})
    assert summary["torch"]["import_s"] == 3.0 and summary["torch"]["sees_nvml_gpus"] is True
    assert summary["tensorflow"]["import_s"] is None


def test_dx_recorded_in_a_real_run(saved_runs):
    run = json.loads(saved_runs[0].read_text())
    assert run["dx"]["torch"]["import_s"] > 0 and run["dx"]["torch"]["footprint_bytes"] > 0
    assert run["dx"]["torch"]["time_to_first_step_s"] > 0


def test_report_refuses_a_file_as_out_and_writes_nothing(saved_runs, tmp_path):
    target = tmp_path / "report.txt"
    target.write_text("keep me")
    r = subprocess.run([sys.executable, "-m", "bench_fixtures.report", str(saved_runs[0]), "--out", str(target)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "is a file, not a folder" in r.stderr and "Traceback" not in r.stderr
    assert target.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["report.txt"]


def test_null_figures_are_not_measured_and_a_failed_case_is_marked(saved_runs, tmp_path):
    run = json.loads(saved_runs[0].read_text())
    for b in run["benchmarks"]:
        e = b["extra_info"]
        e.update(accuracy_after=None, time_to_first_step_s=None, epoch_times_s=[None, None],
                 trainable_params=None, test_outcome="failed")
    nulls = tmp_path / "nulls.json"
    nulls.write_text(json.dumps(run))
    md = write_report([str(nulls)], tmp_path / "out").read_text()
    assert "| accuracy after | –" in md and "| time to first step (s) | –" in md
    assert "| test outcome | FAILED" in md
    assert (tmp_path / "out" / "accuracy.png").is_file() and not list(tmp_path.glob(".out.*"))
