"""The report from real smoke runs, its robustness to runs without telemetry, the DX figures, and
from crafted runs: matched and defaults side by side, what the setups change, the overhead projection."""
import json
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.image import imread

from bench_fixtures.analysis import dx, figures, report, results
from bench_fixtures.analysis.report import write_report
from bench_fixtures.analysis.results import ResultsError, Run, cases, read_run, setups
from bench_fixtures.telemetry import timeline as tl


def decoded(path):
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    return img


def test_report_from_two_real_runs(saved_runs, tmp_path):
    md_path = write_report([str(p) for p in saved_runs], tmp_path / "out")
    out = md_path.parent
    pngs = {p.name for p in out.glob("*.png")}
    assert {"accuracy.png", "training_time.png", "throughput.png", "trend.png", "accuracy_curve.png",
            "timeline_mobilenet_v2.png"} <= pngs
    for name in pngs:
        img = decoded(out / name)
        assert np.std(img[..., :3]) > 0.05, f"{name} looks blank"  # something was drawn
    md = md_path.read_text()
    assert "## mobilenet_v2" in md and "| accuracy after |" in md and "| time to first step (s) |" in md
    assert "| time to accuracy 20% |" in md and "| training GFLOPs / image (own counter) | 0.0363 |" in md
    assert "| MFU (steady steps) | – (no peak figure for a CPU" in md and "| accuracy after over rounds |" in md
    assert "## History" in md and md.count(".json` |") == 2
    assert "## Developer experience" in md and "import time" in md
    assert "pytest tests/benchmarks" in md  # the command line that produced the run
    notes = md.split("## Notes", 1)[1].strip().splitlines() if "## Notes" in md else []
    assert all(n.startswith("- torch-mobilenet_v2: energy not measured") for n in notes)  # nothing else missing
    assert "## Energy and cost" in md and "| energy per fine-tune (J) |" in md


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
    r = subprocess.run([sys.executable, "-m", "bench_fixtures", "report", str(bad), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "bad.json: not valid JSON" in r.stderr


def test_dx_measured_here():
    """For each installed framework its footprint; a missing one is 'not installed', never 0 bytes."""
    from bench_fixtures.registry import installed
    fp = dx.footprint()
    for fw in fp:
        assert (fp[fw]["bytes"] > 100e6) if fw in installed() else (fp[fw]["bytes"] is None and not fp[fw]["installed"])
    if len(installed()) == len(fp):  # with one framework alone nothing is shared
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
    r = subprocess.run([sys.executable, "-m", "bench_fixtures", "report", str(saved_runs[0]), "--out", str(target)],
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


# -- crafted runs: the setups side by side, the overhead projection (no framework, no worker) --------

EPOCHS = 2
SETTINGS = {  # what each framework reads back, per setup (as on a GPU)
    ("torch", "matched"): dict(tf32_matmul=False, tf32_conv=False, xla=False, compile_requested="off",
                               torch_compile=False, memory_growth=None, cudnn_autotune=True,
                               memory_allocator="caching allocator", bn_momentum=[0.1], bn_eps=[1e-5]),
    ("torch", "defaults"): dict(tf32_matmul=False, tf32_conv=True, xla=False, compile_requested="off",
                                torch_compile=False, memory_growth=None, cudnn_autotune=False,
                                memory_allocator="caching allocator", bn_momentum=[0.1], bn_eps=[1e-5]),
    ("tensorflow", "matched"): dict(tf32_matmul=False, tf32_conv=False, xla=False, compile_requested="off",
                                    memory_growth=True, memory_allocator="BFC, grows as needed (memory growth)",
                                    cudnn_autotune=True, bn_momentum=[0.1], bn_eps=[1e-5]),
    ("tensorflow", "defaults"): dict(tf32_matmul=True, tf32_conv=True, xla=False, compile_requested="auto",
                                     memory_growth=False, memory_allocator="BFC, reserves the GPU up front",
                                     cudnn_autotune=True, bn_momentum=[0.1], bn_eps=[0.001]),
}


def projection(one_time: float, steps: float, gap: float, eval_s: float, first_step: float) -> dict:
    """overhead_projection as the run records it: total(E) = one_time + E (steps + eval) + (E - 1) gap."""
    def at(n):
        overhead = one_time + (n - 1) * gap
        total = overhead + n * (steps + eval_s)
        return dict(epochs=n, total_s=total, overhead_s=overhead, overhead_share=overhead / total)
    return dict(measured_epochs=EPOCHS, measured_total_s=at(EPOCHS)["total_s"], one_time_s=one_time,
                per_epoch_steps_s=steps, per_epoch_eval_s=eval_s, per_gap_s=gap, first_step_s=first_step,
                step_s=steps / 8, measured=at(EPOCHS), projected=[at(n) for n in (5, 50, 500)],
                note="projected from this run's own figures (crafted)")


def telemetry(path, backend: str, mem_key: str = "proc_mem", energy: dict | None = None) -> str:
    """A crafted timeline: two epochs of 1 s steps, 0.5 s between them, a sample every 0.1 s; ENERGY:
    its energy_meter and energy_reads (none: a file from before energy was measured)."""
    s, events = 10**9, [dict(name=tl.RUN_START, t_ns=0)]
    for k, t0 in enumerate((0.2, 1.7)):
        events += [dict(name=tl.EPOCH_START, t_ns=int(t0 * s), epoch=k),
                   dict(name=tl.FIRST_STEP_START, t_ns=int((t0 + 0.1) * s), epoch=k),
                   dict(name=tl.FIRST_STEP_END, t_ns=int((t0 + 0.2) * s), epoch=k),
                   dict(name=tl.LAST_STEP_END, t_ns=int((t0 + 1.1) * s), epoch=k),
                   dict(name=tl.EPOCH_STOP, t_ns=int((t0 + 1.2) * s), epoch=k, memory=dict(peak=(k + 1) * 2**29))]
    events.append(dict(name=tl.RUN_STOP, t_ns=3 * s))
    samples = [dict(t_ns=i * s // 10, util=0.9 if i % 15 < 10 else 0.1, **{mem_key: (1 + i / 30) * 2**30})
               for i in range(30)]
    path.write_text(json.dumps(dict(events=events, samples=samples, monitor=dict(backend=backend), **(energy or {}))))
    return path.name


def benchmark(folder, test, fw, model, setup, backend="psutil", energy_tel: dict | None = None, **extra) -> dict:
    """One test's entry as the suite writes it; SETUP None: a run recorded before setups existed;
    ENERGY_TEL: its telemetry's energy reads and meter."""
    case = f"{fw}-{model}" + (f"-{setup}" if setup else "")
    e = dict(framework=fw, model=model, epochs=EPOCHS, accuracy_before=0.1, accuracy_after=0.6,
             epoch_times_s=[3.0, 2.5], inter_epoch_gaps_s=[0.75], time_to_first_step_s=10.0,
             trainable_params=2236682, non_trainable_params=34112, train_images_per_s=100.0,
             telemetry_file=telemetry(folder / f"{test}-{case}.json", backend, energy=energy_tel))
    if setup:
        e.update(setup=setup, overrides={}, settings=dict(setup=setup, **SETTINGS[fw, setup]))
    e.update(extra)
    name = f"{test}[{case}]"
    return dict(name=name, fullname=f"tests/benchmarks/test_cases.py::{name}",
                stats=dict(median=20.0, rounds=1, data=[20.0]), extra_info=e)


def crafted_run(folder, names, device="cpu", models=("mobilenet_v2",), backend="psutil", **extra) -> str:
    """A run file of fine-tune cases (both frameworks, MODELS) in each setup of NAMES (None: no key)."""
    folder.mkdir(parents=True, exist_ok=True)
    benchmarks = [benchmark(folder, "test_finetune", fw, m, s, backend, **extra)
                  for s in names for fw in ("torch", "tensorflow") for m in models]
    setup = "both" if len(names) > 1 else names[0]
    run = dict(benchmarks=benchmarks, datetime="crafted", command="pytest --setup crafted",
               machine_info={}, bench_config=dict(profile="seed", device=device, epochs=EPOCHS, setup=setup))
    path = folder / "run.json"
    path.write_text(json.dumps(run))
    return str(path)


def table(md: str, model: str) -> list[str]:
    """The table lines under `## MODEL`."""
    lines = md.split(f"## {model}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert all(line.startswith("|") for line in lines)
    return lines


def test_setups_are_ordered_and_a_run_without_the_key_ran_matched(tmp_path):
    run = json.loads(open(crafted_run(tmp_path, ["defaults", "matched"])).read())
    assert setups(run) == ["matched", "defaults"]
    assert cases(run, "test_finetune", "defaults")["torch", "mobilenet_v2"]["extra_info"]["setup"] == "defaults"
    old = json.loads(open(crafted_run(tmp_path / "old", [None])).read())
    assert setups(old) == ["matched"] and set(cases(old, "test_finetune", "matched")) == \
        {("torch", "mobilenet_v2"), ("tensorflow", "mobilenet_v2")}
    assert cases(old, "test_finetune", "defaults") == {}


def test_both_setups_side_by_side_with_what_changed_and_the_projection(tmp_path):
    tf_defaults = projection(one_time=12.5, steps=2.0, gap=0.75, eval_s=0.25, first_step=10.0)
    path = crafted_run(tmp_path / "run", ["matched", "defaults"], models=("resnet50", "mobilenet_v2"),
                       overhead_projection=tf_defaults, fit_teardown_s=2.0)
    run = json.loads(open(path).read())
    for b in run["benchmarks"]:  # per model: Keras' ResNet50 ships its own BN epsilon; one noisy case
        e = b["extra_info"]
        if (e["framework"], e["model"], e["setup"]) == ("tensorflow", "resnet50", "defaults"):
            e["settings"]["bn_eps"] = [1.001e-5]
        if (e["framework"], e["model"], e["setup"]) == ("torch", "mobilenet_v2", "matched"):
            e["overhead_projection"] = projection(one_time=-0.4, steps=3.0, gap=0.01, eval_s=0.0, first_step=0.5)
        if (e["framework"], e["model"], e["setup"]) == ("tensorflow", "resnet50", "matched"):
            e["overhead_projection"] = None  # its timeline lacked an event
    open(path, "w").write(json.dumps(run))
    out = tmp_path / "out"
    md = report.write_report([path], out).read_text()

    assert "setups **matched** and **defaults** side by side" in md
    for model in ("mobilenet_v2", "resnet50"):
        lines = table(md, model)
        assert lines[0] == "| | torch matched | torch defaults | tensorflow matched | tensorflow defaults |"
        assert all(line.count("|") == 6 for line in lines)  # a name and 4 columns
        assert "| fit teardown (s) | 2.000 | 2.000 | 2.000 | 2.000 |" in lines

    changes = md.split("## What the setups change", 1)[1].split("\n## ", 1)[0]
    assert "- torch: cuDNN autotune True → False" in changes
    assert "- torch: TF32 convolutions False → True" in changes and "torch: TF32 matmul" not in changes
    assert "- tensorflow: memory allocator BFC, grows as needed (memory growth) → BFC, reserves the GPU up front" \
        in changes
    assert "- tensorflow: XLA False (requested off) → False (requested auto)" in changes
    assert "- tensorflow (mobilenet_v2): BatchNorm epsilon [1e-05] → [0.001]" in changes
    assert "- tensorflow (resnet50): BatchNorm epsilon [1e-05] → [1.001e-05]" in changes
    assert "BatchNorm momentum" not in changes  # the same in both

    overhead = md.split("## Overhead: fixed vs per-epoch cost (projection)", 1)[1].split("\n## ", 1)[0]
    shares = [f"{100 * r['overhead_share']:.1f}%" for r in tf_defaults["projected"]]
    measured = f"{100 * tf_defaults['measured']['overhead_share']:.1f}% (2 epochs)"
    assert (f"| tensorflow-mobilenet_v2-defaults | 10.000 | 12.500 | 2.000 | 0.750 | 0.250 | 2.000 | {measured} | "
            + " | ".join(shares) + " |") in overhead
    assert shares == ["57.9%", "30.4%", "25.6%"]  # the fixed cost fades; the gaps stay: 0.75 / 3 = 25%
    assert overhead.count("| torch-") == 4 and "**projection**" in overhead and "(crafted)" in overhead
    assert "torch-mobilenet_v2-matched: the one-time cost came out at -0.40 s" in overhead
    assert "below the epoch-to-epoch noise" in overhead
    assert "- tensorflow-resnet50-matched: no projection" in overhead

    pngs = {p.name for p in out.glob("*.png")}
    assert {"accuracy.png", "timeline_mobilenet_v2.png", "timeline_mobilenet_v2_defaults.png",
            "timeline_resnet50_defaults.png", "overhead_share.png"} <= pngs
    for name in pngs:
        assert np.std(decoded(out / name)[..., :3]) > 0.05, f"{name} looks blank"
    assert "a CPU run cannot show" in md and "TensorFlow's up-front reservation" in md


def test_a_run_without_setup_keys_renders_as_matched(tmp_path):
    md = report.write_report([crafted_run(tmp_path / "run", [None])], tmp_path / "out").read_text()
    assert "setup **matched**" in md and "## What the setups change" not in md
    assert table(md, "mobilenet_v2")[0] == "| | torch | tensorflow |"
    assert "| fit teardown (s) | – | – |" in md  # not recorded then
    assert "## Overhead" not in md and "no overhead projection in this run" in md  # not recorded then
    assert "a CPU run cannot show" not in md  # nothing of defaults to miss
    assert not list((tmp_path / "out").glob("*_defaults.png"))


def test_one_setup_has_no_side_by_side_columns(tmp_path):
    md = report.write_report([crafted_run(tmp_path / "run", ["defaults"])], tmp_path / "out").read_text()
    assert "setup **defaults**" in md and "## What the setups change" not in md
    assert table(md, "mobilenet_v2")[0] == "| | torch | tensorflow |" and "torch defaults" not in md
    assert "a CPU run cannot show" in md
    assert (tmp_path / "out" / "timeline_mobilenet_v2.png").is_file()  # its own figures, plain names


def test_a_gpu_run_plots_the_memory_nvml_sees(tmp_path):
    path = crafted_run(tmp_path / "run", ["matched", "defaults"], device="gpu", backend="nvml")
    md = report.write_report([path], tmp_path / "out").read_text()
    assert "a CPU run cannot show" not in md and "timeline_mobilenet_v2_defaults.png" in md
    tel = json.loads((tmp_path / "run" / "test_finetune-tensorflow-mobilenet_v2-defaults.json").read_text())
    assert figures._memory_series(tel) == ("proc_mem", "GPU memory, this process (MiB)")
    assert "NVML" in figures._memory_caption({"tensorflow": (tel, EPOCHS)})
    telemetry(tmp_path / "unlisted.json", "nvml", mem_key="device_mem")
    unlisted = json.loads((tmp_path / "unlisted.json").read_text())
    assert figures._memory_series(unlisted)[0] == "device_mem"  # NVML did not list the worker: the device's
    assert figures._memory_series(dict(monitor=dict(backend="psutil"), samples=[]))[1] == "resident host memory (MiB)"


def test_a_setup_that_is_not_a_name_is_refused_and_nothing_is_written(tmp_path):
    path = crafted_run(tmp_path / "run", ["matched"])
    run = json.loads(open(path).read())
    run["benchmarks"][0]["extra_info"]["setup"] = ["matched"]
    open(path, "w").write(json.dumps(run))
    with pytest.raises(ResultsError, match=r"'extra_info.setup' must be a setup's name.*\(at benchmarks\[0\]\.extra_info"):
        report.write_report([path], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    from bench_fixtures.analysis import gate  # the gate reads it through the same validator: refused alike
    assert gate.main([path, path]) == gate.CANNOT_COMPARE


def test_a_one_and_a_two_replica_run_give_the_scaling_table_and_plot(tmp_path):
    """Efficiency = images/s with N / (N x images/s with 1), from two runs given together; a case
    measured at one replica count only is not in the section."""
    one = crafted_run(tmp_path / "r1", ["matched"], step_images_per_s=200.0, replicas=1, cpu_threads=2)
    two_path = crafted_run(tmp_path / "r2", ["matched"], step_images_per_s=300.0, replicas=2,
                           distributed=dict(engine="DDP", collective="gloo", threads_per_replica=1))
    two = json.loads(open(two_path).read())
    two["benchmarks"] = [b for b in two["benchmarks"] if b["extra_info"]["framework"] == "torch"]
    open(two_path, "w").write(json.dumps(two))
    points = report.scaling_points([read_run(one), Run.from_doc(two)], "matched")
    assert points == {("torch", "mobilenet_v2"): {1: 200.0, 2: 300.0}}
    assert report.efficiency(points["torch", "mobilenet_v2"], 2) == 0.75
    out = tmp_path / "out"
    md = report.write_report([one, two_path], out).read_text()
    section = md.split("## Data-parallel scaling", 1)[1].split("\n## ", 1)[0]
    assert "| torch-mobilenet_v2 | 2 | 300.0 | 0.75 | DDP (gloo) | 1 | – |" in section
    assert "| torch-mobilenet_v2 | 1 | 200.0 | 1.00 | one process | 2 | – |" in section  # its cpu_threads
    assert "tensorflow-mobilenet_v2" not in section
    assert (out / "scaling.png").stat().st_size > 0 and "![scaling.png](scaling.png)" in md
    two["bench_config"]["batch_size"] = 64  # another experiment: not a point on the same curve
    open(two_path, "w").write(json.dumps(two))
    md = report.write_report([one, two_path], tmp_path / "out2").read_text()
    assert "## Data-parallel scaling" not in md and not (tmp_path / "out2" / "scaling.png").exists()
    assert "the runs differ in batch_size (None vs 64): their images/s are not a scaling curve" in md


def test_a_row_only_one_setup_has_is_a_dash_in_the_other(tmp_path):
    """Time to accuracy measured in matched only (found by the any-value property test: the table's
    rows were taken from the first setup and looked up in the others)."""
    path = crafted_run(tmp_path / "run", ["matched", "defaults"])
    run = json.loads(open(path).read())
    for b in run["benchmarks"]:
        if b["extra_info"]["setup"] == "matched":
            b["extra_info"].update(target_accuracy=0.5, time_to_accuracy=dict(
                target=0.5, reached=True, epoch=1, train_s=1.0, wall_s=1.5, evaluated_epochs=2))
    open(path, "w").write(json.dumps(run))
    md = report.write_report([path], tmp_path / "out").read_text()
    assert "| time to accuracy 50% | 1.5 s wall / 1.0 s training (epoch 1) | – | 1.5 s wall / 1.0 s training " \
           "(epoch 1) | – |" in table(md, "mobilenet_v2")


# -- energy and cost (crafted: the records as experiment.finetune_info writes them) -----------------------

IMAGES = 512


def rapl_reads(watts: float, failed: int | None = None) -> dict:
    """The telemetry's energy: a RAPL package counter drawing WATTS, read every 0.1 s over the run
    (0 to 3 s); FAILED: the index of a read that failed (a hole, a problem of the trace)."""
    s = 10**9
    reads = [dict(t_ns=i * s // 10, values=[None if i == failed else 100 + watts * i / 10]) for i in range(31)]
    return dict(energy_reads=reads, energy_meter=dict(source="rapl", kind="counter", domains=["package-0"],
                                                      ranges=[262143.3], reason=""))


def measured(joules: float, source: str = "rapl", idle: float | None = None, one_time: float = 4.0) -> dict:
    """A measured `energy` record: JOULES over 3 s, split like the overhead projection."""
    def at(n):
        overhead = one_time + (n - 1) * 0.5
        total = overhead + n * (joules - one_time - 0.5) / EPOCHS
        return dict(epochs=n, total_j=total, overhead_j=overhead, overhead_share=overhead / total)
    domains = ["gpu0"] if source.startswith("nvml") else ["package-0"]
    return dict(version=1, measured=True, source=source, method=f"{source}'s method (crafted)", domains=domains,
                reason=None, problems=[], wraps=0, finetune_j=joules, per_image_j=joules / IMAGES,
                mean_power_w=joules / 3, domain_finetune_j=[joules], first_step_j=5.0, idle_j=idle,
                epoch_phases=None, inter_epoch_gaps=None,
                projection=dict(one_time_j=one_time, per_epoch_steps_j=(joules - one_time - 0.5) / EPOCHS,
                                per_epoch_eval_j=0.0, per_gap_j=0.5, measured=at(EPOCHS),
                                projected=[at(n) for n in (5, 50, 500)]),
                rounds_j=[joules], last_round_j=joules)


def not_measured(reason: str, problems: tuple[str, ...] = (), source: str | None = None) -> dict:
    """An `energy` record that was not measured: its reason, never a zero."""
    return dict(version=1, measured=False, source=source, method="", domains=[], reason=reason,
                problems=list(problems), wraps=0, finetune_j=None, per_image_j=None, mean_power_w=None,
                domain_finetune_j=None, first_step_j=None, idle_j=None, epoch_phases=None, inter_epoch_gaps=None,
                projection=None, rounds_j=[None])


NO_RAPL = ("not measured: no RAPL package zone under /sys/class/powercap (no powercap driver: a virtual machine, "
           "a container without /sys, or a CPU without RAPL)")
COST = dict(price_per_hour=2.5, finetune=0.0139, horizon_epochs=50, horizon=0.4321,
            basis="price per hour x the fine-tune's wall time; 50 epochs from the overhead projection")


def energy_run(folder, per_fw: dict, cost: dict | None = COST, tel: dict | None = None) -> str:
    """A one-setup run whose fine-tune cases hold PER_FW's energy record (and COST); TEL: per
    framework, its telemetry's energy (none: an old telemetry file)."""
    path = crafted_run(folder, ["matched"])
    run = json.loads(open(path).read())
    for b in run["benchmarks"]:
        fw, e = b["extra_info"]["framework"], b["extra_info"]
        e.update(energy=per_fw[fw], cost=cost)
        j = per_fw[fw]["finetune_j"]
        e["rounds"] = [dict(finetune_s=20.0, accuracy_after=0.6, energy_j=j + d if j else None)
                       for d in ((-10.0, 0.0, 5.0) if fw == "torch" else (0.0,))]
        e["energy"] = dict(e["energy"], rounds_j=[r["energy_j"] for r in e["rounds"]])  # as the suite writes both
        if tel and tel.get(fw):
            telemetry(folder / e["telemetry_file"], "psutil", energy=tel[fw])
    open(path, "w").write(json.dumps(run))
    return path


def tel_of(folder, fw: str) -> dict:
    """FW's crafted telemetry file (setup matched)."""
    return json.loads((folder / f"test_finetune-{fw}-mobilenet_v2-matched.json").read_text())


def case_of(path: str, fw: str):
    return read_run(path).select("test_finetune")[fw, "mobilenet_v2"]


def section(md: str, title: str) -> str:
    return md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_energy_measured_and_priced(tmp_path):
    """Rows per case (the rounds' min–max when several), the section's split and cost, the third
    timeline panel drawn from the reads."""
    path = energy_run(tmp_path / "run", dict(torch=measured(60.0), tensorflow=measured(1234.5, "nvml_energy_counter",
                                                                                         idle=100.0)),
                      tel=dict(torch=rapl_reads(20.0), tensorflow=rapl_reads(400.0)))
    out = tmp_path / "out"
    md = report.write_report([path], out).read_text()
    rows = table(md, "mobilenet_v2")
    assert "| energy per fine-tune (J) | 60.0 (50.0–65.0, 3 rounds) | 1,234 |" in rows
    assert "| energy per image (J) | 0.117 | 2.41 |" in rows and "| mean power (W) | 20.0 | 412 |" in rows
    assert "| energy measured by | RAPL (whole CPU packages) | NVML counter |" in rows
    assert "| cost per fine-tune (at 2.5 per hour) | 0.0139 | 0.0139 |" in rows
    assert "| cost per 50 epochs (projected) | 0.432 | 0.432 |" in rows
    assert rows.index("| total fine-tune (s) | 20.00 | 20.00 |") < rows.index(next(r for r in rows if "energy" in r))
    energy = section(md, "Energy and cost")
    assert "| torch-mobilenet_v2 | 60.0 (50.0–65.0, 3 rounds) | 0.117 | 20.0 | 5.00 | 4.00 | 27.8 | 0 | 0.500 " \
           "| – | 1,416 | 0.0139 | 0.432 |" in energy  # idle: none on a CPU
    assert "| tensorflow-mobilenet_v2 | 1,234 | 2.41 | 412 | 5.00 | 4.00 | 615 | 0 | 0.500 | 100 | 30,778 |" in energy
    assert "**measured** (not estimated)" in energy and "rapl's method (crafted)" in energy
    assert "nvml_energy_counter's method (crafted)" in energy and "**projection**" in energy
    assert "Money in the currency of --price-per-hour: price per hour x the fine-tune's wall time" in energy
    assert md.index("## mobilenet_v2") < md.index("## Energy and cost") < md.index("## Parity")
    assert "energy" not in section(md, "Notes")
    power = {fw: figures._power(tel_of(tmp_path / "run", fw), case_of(path, fw), 0) for fw in ("torch", "tensorflow")}
    assert np.allclose(power["torch"][1], 20.0) and np.allclose(power["tensorflow"][1], 400.0)
    assert power["torch"][2] > 0  # the legend's joules: the drawn round's own
    assert np.std(decoded(out / "timeline_mobilenet_v2.png")[..., :3]) > 0.05


def test_energy_not_measured_shows_the_reason_never_a_zero(tmp_path):
    """Nothing measured: "not measured" in the rows, the short reason in the table and the section's
    one line, the whole reason once in the notes; the cost (time x price) still given."""
    problem = "package-0: 1 of 31 energy reads failed"
    path = energy_run(tmp_path / "run", dict(torch=not_measured(NO_RAPL), tensorflow=not_measured(NO_RAPL)),
                      tel=dict(torch=dict(energy_reads=[], energy_meter=dict(source=None, kind=None, domains=[],
                                                                               ranges=[], reason=NO_RAPL)),
                               tensorflow=rapl_reads(20.0, failed=5)))
    out = tmp_path / "out"
    md = report.write_report([path], out).read_text()
    rows = table(md, "mobilenet_v2")
    assert "| energy per fine-tune (J) | not measured | not measured |" in rows
    assert "| energy per image (J) | not measured | not measured |" in rows
    assert "| energy measured by | not measured: no RAPL package zone under /sys/class/powercap | not measured: no " \
           "RAPL package zone under /sys/class/powercap |" in rows
    assert "| cost per fine-tune (at 2.5 per hour) | 0.0139 | 0.0139 |" in rows
    energy = section(md, "Energy and cost")
    assert energy.startswith("\nEnergy not measured in this run: no RAPL package zone under /sys/class/powercap "
                             "(every case; the whole reason is in the notes).")
    assert "| torch-mobilenet_v2 | 20.00 | 0.0139 | 0.432 |" in energy and "| 0 |" not in energy
    notes = section(md, "Notes")
    assert notes.count("no RAPL package zone") == 1  # one note per distinct reason, with its cases
    assert f"- torch-mobilenet_v2, tensorflow-mobilenet_v2: energy {NO_RAPL}" in notes
    assert np.std(decoded(out / "timeline_mobilenet_v2.png")[..., :3]) > 0.05
    assert figures._power(tel_of(tmp_path / "run", "tensorflow"), case_of(path, "tensorflow"), 0) == \
        "not measured: no RAPL package zone under /sys/class/powercap"

    unpriced = energy_run(tmp_path / "unpriced", dict(torch=measured(60.0), tensorflow=not_measured(
        f"not measured: {problem}", (problem,), "rapl")), cost=None, tel=dict(tensorflow=rapl_reads(20.0, failed=5)))
    md = report.write_report([unpriced], tmp_path / "out2").read_text()
    assert "cost per" not in md and "Money" not in md
    energy = section(md, "Energy and cost")
    assert f"| tensorflow-mobilenet_v2 | not measured: {problem} | – | – |" in energy
    assert f"- tensorflow-mobilenet_v2: energy not measured: {problem}" in section(md, "Notes")
    trace_says = figures._power(tel_of(tmp_path / "unpriced", "tensorflow"), case_of(unpriced, "torch"), 0)
    assert trace_says == f"not measured: {problem}"  # the trace's own problem, not a zero line
    assert figures._power(tel_of(tmp_path / "unpriced", "torch"), case_of(unpriced, "torch"), 0) == \
        "60.0 J per fine-tune; its telemetry file holds no energy reads to draw"
    odd = dict(tel_of(tmp_path / "unpriced", "tensorflow"), **rapl_reads(20.0))
    odd["energy_meter"] = dict(source="rapl", domains=["package-0"])  # no kind, no ranges: drawn as a reason
    assert "the energy meter's record (1 domain(s), kind None, 0 range(s)) does not match" in \
        figures._power(odd, case_of(unpriced, "torch"), 0)


def test_a_run_from_before_energy_has_dashes_and_still_draws(tmp_path):
    path = crafted_run(tmp_path / "run", [None])  # no energy, no cost; telemetry without energy reads
    out = tmp_path / "out"
    md = report.write_report([path], out).read_text()
    rows = table(md, "mobilenet_v2")
    assert "| energy per fine-tune (J) | – | – |" in rows and "| energy measured by | – | – |" in rows
    assert "cost per" not in md and "## Energy and cost" not in md
    assert "no energy figures in this run (recorded since energy was measured)" in section(md, "Notes")
    tel = json.loads((tmp_path / "run" / "test_finetune-torch-mobilenet_v2.json").read_text())
    assert figures._power(tel, case_of(path, "torch"), 0).startswith("energy not recorded")
    assert np.std(decoded(out / "timeline_mobilenet_v2.png")[..., :3]) > 0.05


def test_short_reason_and_significant_figures():
    assert figures.short_reason(NO_RAPL) == "not measured: no RAPL package zone under /sys/class/powercap"
    assert figures.short_reason("not measured: nvidia-ml-py (pynvml) is not installed; pip install nvidia-ml-py") \
        == "not measured: nvidia-ml-py (pynvml) is not installed"
    assert figures.short_reason("round 2 of 3: not measured: gpu0: x") == "not measured: round 2 of 3: gpu0: x"
    assert len(figures.short_reason("not measured: " + "x" * 300)) == 100
    assert [results.significant(v) for v in (0.04453, 22.80, 153.1, 554_413.9)] == ["0.0445", "22.8", "153", "554,414"]
    assert results.significant(12.345, 2) == "12.35" and results.significant(None) == "–"
