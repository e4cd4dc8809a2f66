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
    name = f"test_finetune[{fw}-resnet50]"
    return dict(name=name, fullname=f"tests/benchmarks/test_cases.py::{name}", stats=dict(median=total, data=[total]),
                extra_info=e)


def _train_step(fw, seconds):
    e = dict(framework=fw, model="resnet50", steps_per_round=10, batch_size=32, train_images_per_s=320 / seconds[1],
             round_images_per_s=[320 / t for t in seconds])  # as the worker timed its rounds
    name = f"test_train_step[{fw}-resnet50]"
    return dict(name=name, fullname=f"tests/benchmarks/test_cases.py::{name}",
                stats=dict(median=sorted(seconds)[1], data=[9.9] * 3),
                extra_info=e)  # pytest-benchmark's round times (IPC included) are not what the findings read


def _run(tf_acc, tf_ttfs, tf_gap, tf_mem, tf_seconds, tf_total=20.0):
    ft = {("torch", "resnet50"): _finetune("torch", 0.60, 0.30, 0.01, 2**30),
          ("tensorflow", "resnet50"): _finetune("tensorflow", tf_acc, tf_ttfs, tf_gap, tf_mem, total=tf_total)}
    ts = {("torch", "resnet50"): _train_step("torch", [1.0, 1.1, 0.9]),
          ("tensorflow", "resnet50"): _train_step("tensorflow", tf_seconds)}
    run = dict(bench_config=dict(profile="seed", dataset="cifar10", epochs=5, batch_size=32, device="cpu",
                                 setup="matched", weights="imagenet"), benchmarks=[])
    return {"matched": ft}, {"matched": ts}, [run]


def test_a_run_with_known_figures_gives_exactly_these_sentences():
    md = fnd.findings(*_run(tf_acc=0.55, tf_ttfs=11.3, tf_gap=0.8, tf_mem=2**31, tf_seconds=[0.5, 0.52, 0.48],
                            tf_total=9.0))
    text = "\n".join(md)
    assert md[0] == "## Findings"
    expected = [
        "- **TensorFlow:** Whole fine-tune time: resnet50 0.45× PyTorch's (faster). Measurably ahead of PyTorch: "
        "steady throughput (resnet50 2.00×). Behind: accuracy "
        "(resnet50 -5.0 points); time to first step (resnet50 11.30 s vs 0.30 s); gap between epochs (resnet50 "
        "0.800 s vs 0.010 s); peak memory (resnet50 2.00×). No measurable difference: none.",
        "- Against TensorFlow: the same accuracy (no difference the test set resolves) on 0 of 1 judged models; "
        "PyTorch measurably behind on: whole fine-tune time (resnet50 0.45×); steady throughput (resnet50 2.00×).",
        "- **The whole fine-tune, resnet50:** PyTorch 20.00 s, one round; TensorFlow 9.00 s, one round. TensorFlow "
        "0.45× PyTorch's time, faster.",
        "- **Accuracy after fine-tuning, resnet50:** PyTorch 60.0%, TensorFlow 55.0%; one training run each, its "
        "spread not in the margin. TensorFlow behind by 5.0 points (±4.3 at n = 1,000).",
        "- **Steady throughput, resnet50:** PyTorch 320.0 images/s (3 rounds, 290.9–355.6); TensorFlow 640.0 "
        "images/s (3 rounds, 615.4–666.7). TensorFlow 2.00× PyTorch.",
        "- **Time to first step, resnet50:** PyTorch 0.30 s (eager: nothing to trace), TensorFlow 11.30 s (graph "
        "tracing); one measurement each, paid once per process.",
        "- **Between epochs, resnet50:** mean gap PyTorch 0.010 s, TensorFlow 0.800 s; one run. TensorFlow longer.",
        "- **Peak memory, resnet50** (the worker's resident host memory): PyTorch 1024 MiB, TensorFlow 2048 MiB; "
        "one run. TensorFlow 2.00× PyTorch.",
    ]
    for line in expected:
        assert line in md, f"missing:\n{line}\n--- in ---\n{text}"
    assert "- Each framework starts from its own ImageNet checkpoint: accuracy differences include the " \
           "checkpoints'." in md
    assert "- On a CPU: a GPU can rank the frameworks' speed differently, and memory here is host memory." in md


def test_differences_inside_the_noise_say_so():
    md = fnd.findings(*_run(tf_acc=0.58, tf_ttfs=0.33, tf_gap=0.03, tf_mem=1.1 * 2**30, tf_seconds=[0.95, 1.05, 1.0]))
    assert "- **Accuracy after fine-tuning, resnet50:** PyTorch 60.0%, TensorFlow 58.0%; one training run each, its " \
           "spread not in the margin. TensorFlow: no difference the test set can resolve (±4.3 points at " \
           "n = 1,000)." in md
    assert "- **Steady throughput, resnet50:** PyTorch 320.0 images/s (3 rounds, 290.9–355.6); TensorFlow 320.0 " \
           "images/s (3 rounds, 304.8–336.8). TensorFlow 1.00× PyTorch: no measurable difference (the rounds " \
           "overlap)." in md
    assert "- **Time to first step, resnet50:** PyTorch 0.30 s (eager: nothing to trace), TensorFlow 0.33 s (graph " \
           "tracing); one measurement each, paid once per process; TensorFlow and PyTorch: no measurable " \
           "difference (within 20%)." in md
    assert any(line.startswith("- **Between epochs, resnet50:**") and line.endswith(
        "TensorFlow: no measurable difference (under 0.05 s apart or within 20%).") for line in md)
    assert "- **TensorFlow:** Whole fine-tune time: resnet50 1.00× PyTorch's (no measurable difference). Measurably " \
           "ahead of PyTorch: none. Behind: none. No measurable difference: accuracy " \
           "(resnet50 -2.0 points); steady throughput (resnet50 1.00×); time to first step (resnet50 0.33 s vs " \
           "0.30 s); gap between epochs (resnet50 0.030 s vs 0.010 s); peak memory (resnet50 1.10×)." in md


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
        run["benchmarks"] = [_finetune(fw, 0.6, 0.3, 0.01, 2**30, total=t) for fw, t in zip(("torch", "tensorflow"), totals)]
    assert set(results.cases(second, "test_finetune", "matched")) == {("torch", "resnet50"), ("tensorflow", "resnet50")}
    md = fnd.findings(fts, tss, [first, second])
    assert "### What changed since the previous run (run 1 → 2)" in md
    assert "- **Another machine:** CPU A → CPU B: the changes below include the machine's." in md
    assert "- **tensorflow-resnet50:** fine-tune 30.0 → 45.0 s (+50%)." in md
    assert "- **torch-resnet50:** fine-tune 20.0 → 20.5 s (+2%, within 20%: no measurable change)." in md
    assert not any("Another experiment" in line for line in md)
    second["bench_config"] = dict(second["bench_config"], replicas=2)
    md = fnd.findings(fts, tss, [first, second])
    # the first run's config lacks `replicas`: a run from before the schema key ran one (settings.ABSENT)
    assert "- **Another experiment:** replicas 1 → 2: the times below compare different work, not a " \
           "regression." in md


def test_a_failed_case_is_left_out_and_a_missing_reference_is_said():
    fts, tss, runs = _run(0.55, 11.3, 0.8, 2**31, [0.5, 0.52, 0.48])
    from bench_fixtures.analysis.results import OUTCOME_KEY
    fts["matched"][("tensorflow", "resnet50")]["extra_info"][OUTCOME_KEY] = "failed"
    from bench_fixtures.analysis import results
    assert results.failed(fts["matched"][("tensorflow", "resnet50")])
    md = fnd.findings(fts, tss, runs)
    assert "- Left out, their numbers are no result: test_finetune[tensorflow-resnet50] (FAILED)." in md
    assert not any(line.startswith("- **Accuracy after fine-tuning") for line in md)  # nothing paired with it
    assert "- **TensorFlow:** not compared (no case of it beside PyTorch's)." not in md  # its train_step still is
    fts, tss, runs = _run(0.55, 11.3, 0.8, 2**31, [0.5, 0.52, 0.48])
    for src in (fts["matched"], tss["matched"]):
        src.pop(("torch", "resnet50"))
    md = fnd.findings(fts, tss, runs)
    missing = "PyTorch, the reference every finding compares with, has no case that passed on a quiet machine; " \
              "passed and quiet: TensorFlow."
    assert "- **TensorFlow:** not compared (no case of it beside PyTorch's)." in md
    assert f"- Not answered: {missing}" in md and f"- Not compared: {missing}" in md
    assert "- **What a fine-tune costs, resnet50:** TensorFlow 20.00 s. Nothing to compare it with." in md
    assert_no_empty_section(md)


def test_three_frameworks_each_compared_with_pytorch():
    fts, tss, runs = _run(0.55, 11.3, 0.8, 2**31, [0.5, 0.52, 0.48])
    jax = _finetune("jax", 0.61, 6.9, 0.02, 2**30)
    fts["matched"][("jax", "resnet50")] = jax
    tss["matched"][("jax", "resnet50")] = _train_step("jax", [2.0, 2.1, 1.9])
    md = fnd.findings(fts, tss, runs)
    assert "- **Time to first step, resnet50:** PyTorch 0.30 s (eager: nothing to trace), TensorFlow 11.30 s (graph " \
           "tracing), Keras on JAX 6.90 s (XLA compilation); one measurement each, paid once per process." in md
    line = next(x for x in md if x.startswith("- **Keras on JAX:**"))
    assert "steady throughput (resnet50 0.50×)" in line and "accuracy (resnet50 +1.0 points)" in line


def test_every_number_in_the_findings_is_in_a_table_below(tmp_path):
    """Ratios (×), margins (±), differences (points), counts (n =, rounds) are computed; every other
    number the evidence states appears, as written, in the report below the findings."""
    from .test_report import benchmark
    folder = tmp_path / "run"
    folder.mkdir()
    bs = []
    for fw, acc, ttfs, mem, rates in (("torch", 0.6, 0.3, 2**30, [290.9, 320.0, 355.6]),
                                      ("tensorflow", 0.45, 11.3, 2**31, [615.4, 640.0, 666.7])):
        bs.append(benchmark(folder, "test_finetune", fw, "resnet50", "matched", test_size=1000,
                            memory=dict(process_peak=mem), accuracy_after=acc, time_to_first_step_s=ttfs))
        bs.append(benchmark(folder, "test_train_step", fw, "resnet50", "matched", steps_per_round=10, batch_size=32,
                            round_images_per_s=rates, train_images_per_s=rates[1]))
    run = dict(benchmarks=bs, datetime="crafted", command="pytest", machine_info={},
               bench_config=dict(profile="seed", dataset="cifar10", device="cpu", epochs=2, batch_size=32,
                                 setup="matched", weights="imagenet"))
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    md = report.write_report([str(path)], tmp_path / "out").read_text()
    section = md.split("## Findings", 1)[1].split("\n## ", 1)[0]
    below = md.split("## Findings", 1)[1].split("\n## ", 1)[1]
    evidence = section.split("### The real advantages and disadvantages", 1)[1]
    numbers = [(m.group(1), evidence[max(m.start() - 4, 0):m.start()]) for m in
               re.finditer(r"(?<![A-Za-z_\d.,±])(\d[\d,]*(?:\.\d+)?)(?![\d.,]*(?:×| points| rounds?|-epoch| s apart|%\)))", evidence)]
    stated = [n for n, before in numbers if not before.endswith("n = ")]
    assert len(stated) >= 12, stated
    missing = [n for n in stated if n not in below and n.replace(",", "") not in below]
    assert not missing, f"not in any table below: {missing}\n{evidence}"


def assert_no_empty_section(md: list[str]) -> None:
    """Every ### heading of the findings is followed by at least one line of text."""
    heads = [i for i, line in enumerate(md) if line.startswith("### ")]
    for i in heads:
        body = []
        for line in md[i + 1:]:
            if line.startswith("#"):
                break
            body += [line] if line.strip() else []
        assert body, f"empty section {md[i]!r}:\n" + "\n".join(md)


def _failed_defaults_run():
    """The issue's run: `--setup defaults`, random init, MobileNetV2; TensorFlow and Keras on JAX did
    not learn (Keras' BatchNorm momentum 0.999, torch's 0.1), PyTorch did."""
    from bench_fixtures.analysis.results import OUTCOME_KEY
    ft = {}
    for fw, before, after, momentum in (("torch", 0.125, 0.241, 0.1), ("tensorflow", 0.095, 0.123, 0.001),
                                        ("jax", 0.095, 0.100, 0.001)):
        b = _finetune(fw, after, 1.0, 0.01, 2**30)
        b["extra_info"].update(model="mobilenet_v2", accuracy_before=before, setup="defaults", weights="none",
                               epochs=2, steps_per_epoch=62, settings=dict(bn_momentum=[momentum]))
        b["extra_info"][OUTCOME_KEY] = "passed" if fw == "torch" else "failed"
        b["name"] = b["name"].replace("resnet50", "mobilenet_v2")
        b["fullname"] = b["fullname"].replace("resnet50", "mobilenet_v2")
        ft[(fw, "mobilenet_v2")] = b
    run = dict(bench_config=dict(profile="smoke", dataset="cifar10", epochs=2, batch_size=32, device="cpu",
                                 setup="defaults", weights="none", min_accuracy_gain=0.05), benchmarks=[])
    return {"defaults": ft}, {"defaults": {}}, [run]


def test_failed_cases_are_named_with_why_and_no_section_is_empty():
    md = fnd.findings(*_failed_defaults_run())
    assert_no_empty_section(md)
    assert "### Cases that failed" in md
    line = next(x for x in md if x.startswith("- **test_finetune[tensorflow-mobilenet_v2]**"))
    assert line.startswith("- **test_finetune[tensorflow-mobilenet_v2]** (setup defaults): accuracy 9.5% → 12.3%, "
                           "under the required gain of 5 points. Why, from its settings: BatchNorm momentum 0.001 "
                           "(torch's convention, read back): after 124 training steps its moving statistics still "
                           "hold 88% of their initial values"), line
    assert "PyTorch's passing case: momentum 0.1" in line
    assert any(x.startswith("- **test_finetune[jax-mobilenet_v2]** (setup defaults): accuracy 9.5% → 10.0%") for x in md)
    assert "- **What a fine-tune costs, mobilenet_v2:** PyTorch 20.00 s. Nothing to compare it with." in md


def test_disturbed_cases_come_first_among_the_caveats_and_are_not_judged():
    fts, tss, runs = _run(0.55, 11.3, 0.8, 2**31, [0.5, 0.52, 0.48], tf_total=9.0)
    why = "other processes used 45% of the machine's CPU while it was timed (over 10%; steal 0%, run queue 3.1 on 2 cores)"
    fts["matched"][("torch", "resnet50")]["extra_info"]["disturbance"] = dict(version=1, disturbed=True, reasons=[why])
    md = fnd.findings(fts, tss, runs)
    caveats = md[md.index("## Findings") + 4:]
    assert caveats[0] == (f"- **Disturbed, not judged:** test_finetune[torch-resnet50]: {why}. Something else used the "
                          f"machine while they were timed; their figures are in the tables, marked, and left out of "
                          f"every comparison below.")
    assert not any(x.startswith("- **The whole fine-tune, resnet50:**") for x in md)  # nothing judged against it
    assert not any(x.startswith("- **Accuracy after fine-tuning") for x in md)
    assert any(x.startswith("- **Steady throughput, resnet50:**") for x in md)  # its train_step was quiet
    assert_no_empty_section(md)


def test_the_whole_fine_tune_is_judged_on_its_rounds():
    """Three rounds each: ranges apart and more than 20% between medians = measurable; overlapping = not."""
    fts, tss, runs = _run(0.55, 11.3, 0.8, 2**31, [0.5, 0.52, 0.48])
    for fw, times in (("torch", [20.0, 21.0, 19.0]), ("tensorflow", [9.0, 9.5, 8.8])):
        fts["matched"][(fw, "resnet50")]["extra_info"]["rounds"] = [dict(finetune_s=t) for t in times]
    md = fnd.findings(fts, tss, runs)
    assert "- **The whole fine-tune, resnet50:** PyTorch 20.00 s, 3 rounds 19.00–21.00; TensorFlow 9.00 s, 3 rounds " \
           "8.80–9.50. TensorFlow 0.45× PyTorch's time, faster." in md
    fts["matched"][("tensorflow", "resnet50")]["extra_info"]["rounds"] = [dict(finetune_s=t) for t in (9.0, 25.0, 8.0)]
    md = fnd.findings(fts, tss, runs)
    assert any(x.startswith("- **The whole fine-tune, resnet50:**") and x.endswith(
        "TensorFlow 0.45× PyTorch's time: no measurable difference (the rounds overlap).") for x in md)


def test_what_changed_says_what_a_framework_default_ran_with():
    fts, tss, _ = _run(0.55, 11.3, 0.8, 2**31, [0.5, 0.52, 0.48])
    first, second = (_run(0.55, 11.3, 0.8, 2**31, [0.5, 0.52, 0.48])[2][0] for _ in range(2))
    first["bench_config"].update(precision="fp32", compile="off")
    second["bench_config"].update(precision=None, compile=None, setup="defaults")
    second["benchmarks"] = [_finetune("torch", 0.6, 0.3, 0.01, 2**30)]
    second["benchmarks"][0]["extra_info"].update(settings=dict(compute_dtype="float32", torch_compile=False))
    md = fnd.findings(fts, tss, [first, second])
    line = next(x for x in md if x.startswith("- **Another experiment:**"))
    assert "precision 'fp32' → each framework's default (read back: torch compute_dtype float32)" in line, line
    assert "compile 'off' → each framework's default (read back: torch torch_compile False)" in line, line
    assert "None" not in line.split(": the times")[0].replace("setup", ""), line


# --------------------------------------------------------------------------- energy and cost (#32)

RAPL = "RAPL: the whole CPU package, every process on it; on a shared machine the others' draw is included"
NO_RAPL = "not measured: no RAPL package zone under /sys/class/powercap (no powercap driver: a virtual machine)"


def _energy(b: dict, joules: list[float] | None, source: str = "rapl", reason: str = NO_RAPL, images: int = 1000,
            price: float | None = None) -> dict:
    """B (a _finetune case) with the energy record the runner writes: each round's joules (None: not
    measured, for REASON), their median as the fine-tune's; priced at PRICE per hour when given."""
    e = b["extra_info"]
    if joules is None:
        e["energy"] = dict(version=1, measured=False, source=None, reason=reason, finetune_j=None, per_image_j=None,
                           rounds_j=[None])
        e["rounds"] = [dict(finetune_s=b["stats"]["median"], energy_j=None)]
    else:
        mid = sorted(joules)[len(joules) // 2]
        e["energy"] = dict(version=1, measured=True, source=source, reason=None, finetune_j=mid,
                           per_image_j=mid / images, rounds_j=joules)
        e["rounds"] = [dict(finetune_s=b["stats"]["median"], energy_j=j) for j in joules]
    if price is not None:
        seconds = b["stats"]["median"]
        e["cost"] = dict(price_per_hour=price, finetune=seconds * price / 3600, horizon_epochs=50,
                         horizon=25 * seconds * price / 3600, basis="crafted")
    return b


def _energy_run(torch_j, tf_j, **kw):
    fts, tss, runs = _run(0.55, 11.3, 0.8, 2**31, [0.5, 0.52, 0.48], tf_total=9.0)
    _energy(fts["matched"][("torch", "resnet50")], torch_j, **kw)
    _energy(fts["matched"][("tensorflow", "resnet50")], tf_j, **kw)
    return fts, tss, runs


def _line(md: list[str], start: str) -> str:
    found = [x for x in md if x.startswith(start)]
    assert len(found) == 1, "\n".join(md)
    return found[0]


def _how_much(md: list[str]) -> list[str]:
    """The lines of 'How much do the differences matter' (where energy and money are told)."""
    i = md.index("### How much do the differences matter in a typical project?")
    return md[i + 1:md.index("", i + 2)]


def test_energy_over_several_rounds_is_judged_as_time_is():
    """Ranges apart and more than 20% between medians: measurable; overlapping, or within 20%: not."""
    md = fnd.findings(*_energy_run([100.0, 105.0, 95.0], [50.0, 52.0, 48.0]))
    assert f"- **Energy of a fine-tune, resnet50** ({RAPL}): PyTorch 100 J, 3 rounds 95.0–105, 0.100 J per image; " \
           f"TensorFlow 50.0 J, 3 rounds 48.0–52.0, 0.0500 J per image. TensorFlow 0.50× PyTorch's energy, " \
           f"less." in md
    md = fnd.findings(*_energy_run([100.0, 105.0, 95.0], [50.0, 120.0, 45.0]))
    assert _line(md, "- **Energy of a fine-tune, resnet50**").endswith(
        "TensorFlow 0.50× PyTorch's energy: no measurable difference (the rounds overlap).")
    md = fnd.findings(*_energy_run([100.0, 101.0, 99.0], [90.0, 91.0, 89.0]))
    assert _line(md, "- **Energy of a fine-tune, resnet50**").endswith(
        "TensorFlow 0.90× PyTorch's energy: no measurable difference (within 20%).")
    assert _line(md, "- **Energy of a fine-tune, resnet50**") in _how_much(md)


def test_energy_of_one_round_each_says_it_is_one_measurement():
    md = fnd.findings(*_energy_run([100.0], [150.0]))
    assert f"- **Energy of a fine-tune, resnet50** ({RAPL}): PyTorch 100 J, one round, 0.100 J per image; " \
           f"TensorFlow 150 J, one round, 0.150 J per image. TensorFlow 1.50× PyTorch's energy, more (one " \
           f"measurement each)." in md
    md = fnd.findings(*_energy_run([100.0], [110.0]))
    assert _line(md, "- **Energy of a fine-tune, resnet50**").endswith(
        "TensorFlow 1.10× PyTorch's energy: no measurable difference (within 20%; one measurement each).")
    md = fnd.findings(*_energy_run([100.0, 101.0, 99.0], [150.0]))
    assert _line(md, "- **Energy of a fine-tune, resnet50**").endswith(
        "TensorFlow 1.50× PyTorch's energy, more (one measurement of TensorFlow's).")


def test_energy_not_measured_says_why_once_and_never_a_zero():
    md = fnd.findings(*_energy_run(None, None))
    energy = [x for x in md if "nergy" in x]
    assert energy == [f"- **Energy of a fine-tune:** {NO_RAPL}."], energy
    assert not any(re.search(r"\d J\b", x) for x in md)  # no joules at all, no 0 J
    fts, tss, runs = _energy_run(None, None)
    _energy(fts["matched"][("tensorflow", "resnet50")], None, reason="not measured: the round had no monitor")
    md = fnd.findings(fts, tss, runs)
    assert "- **Energy of a fine-tune:** not measured. PyTorch resnet50: no RAPL package zone under " \
           "/sys/class/powercap (no powercap driver: a virtual machine); TensorFlow resnet50: the round had no " \
           "monitor." in md


def test_energy_of_some_cases_only_gives_no_ratio_to_the_missing():
    md = fnd.findings(*_energy_run([100.0], None))
    assert f"- **Energy of a fine-tune, resnet50** ({RAPL}): PyTorch 100 J, one round, 0.100 J per image; " \
           f"TensorFlow not measured: no RAPL package zone under /sys/class/powercap (no powercap driver: a virtual " \
           f"machine)." in md
    md = fnd.findings(*_energy_run(None, [100.0]))
    line = _line(md, "- **Energy of a fine-tune, resnet50**")
    assert line.startswith("- **Energy of a fine-tune, resnet50** (RAPL") and "PyTorch not measured: no RAPL" in line
    assert line.endswith("TensorFlow 100 J, one round, 0.100 J per image. No ratio: PyTorch's was not measured.")
    assert "×" not in line


def test_the_meter_is_named_once_and_nvml_compares_with_nvml_only():
    fts, tss, runs = _energy_run([1000.0], [2000.0], source="nvml_energy_counter")
    for fw, j in (("torch", [500.0]), ("tensorflow", [400.0])):
        b = _energy(_finetune(fw, 0.6, 0.3, 0.01, 2**30), j, source="nvml_power")
        b["extra_info"]["model"] = "mobilenet_v2"
        fts["matched"][(fw, "mobilenet_v2")] = b
    md = fnd.findings(fts, tss, runs)
    lines = [x for x in md if x.startswith("- **Energy of a fine-tune")]
    assert lines == [
        "- **Energy of a fine-tune, resnet50** (NVML: the GPU board alone, not the host's CPU): PyTorch 1,000 J, one "
        "round, 1.00 J per image; TensorFlow 2,000 J, one round, 2.00 J per image. TensorFlow 2.00× PyTorch's "
        "energy, more (one measurement each).",
        "- **Energy of a fine-tune, mobilenet_v2:** PyTorch 500 J, one round, 0.500 J per image; TensorFlow 400 J, "
        "one round, 0.400 J per image. TensorFlow 0.80× PyTorch's energy: no measurable difference (within 20%; "
        "one measurement each)."], lines
    _energy(fts["matched"][("tensorflow", "resnet50")], [2000.0], source="rapl")
    line = _line(fnd.findings(fts, tss, runs), "- **Energy of a fine-tune, resnet50**")
    assert "NVML" in line and "RAPL" in line
    assert line.endswith("TensorFlow: measured by another meter than PyTorch's, not compared.")


def test_a_priced_run_says_what_a_fine_tune_costs_and_an_unpriced_one_does_not():
    md = fnd.findings(*_energy_run([100.0], [50.0], price=2.5))
    assert "- **What a fine-tune costs, resnet50:** PyTorch 20.00 s = 0.0139 per fine-tune, 0.347 for 50 epochs " \
           "(projected); TensorFlow 9.00 s = 0.00625 per fine-tune, 0.156 for 50 epochs (projected). At 2.5 per " \
           "hour (--price-per-hour)." in md  # three significant digits, as the tables write money
    fts, tss, runs = _energy_run([100.0], [50.0], price=900.0)
    md = fnd.findings(fts, tss, runs)
    assert _line(md, "- **What a fine-tune costs").startswith("- **What a fine-tune costs, resnet50:** PyTorch 20.00 s "
                                                              "= 5.00 per fine-tune, 125.00 for 50 epochs (projected)")
    md = fnd.findings(*_energy_run([100.0], [50.0]))
    assert "- **What a fine-tune costs, resnet50:** PyTorch 20.00 s, TensorFlow 9.00 s." in md
    assert not any("per fine-tune" in x or "per hour" in x for x in md)


def test_a_run_recorded_before_energy_has_no_energy_line():
    fts, tss, runs = _run(0.55, 11.3, 0.8, 2**31, [0.5, 0.52, 0.48])
    md = fnd.findings(fts, tss, runs)
    assert not any("nergy" in x for x in md)
    assert "- **What a fine-tune costs, resnet50:** PyTorch 20.00 s, TensorFlow 20.00 s." in md


def test_energy_leaves_out_disturbed_cases_and_speaks_of_one_framework_alone():
    fts, tss, runs = _energy_run([100.0], [50.0])
    fts["matched"][("tensorflow", "resnet50")]["extra_info"]["disturbance"] = dict(version=1, disturbed=True,
                                                                                  reasons=["busy"])
    md = fnd.findings(fts, tss, runs)
    assert f"- **Energy of a fine-tune, resnet50** ({RAPL}): PyTorch 100 J, one round, 0.100 J per image. Nothing " \
           f"to compare it with." in md  # TensorFlow's, measured on a busy machine, is not judged
    fts, tss, runs = _energy_run([100.0], [50.0], price=2.5)
    for src in (fts["matched"], tss["matched"]):
        src.pop(("tensorflow", "resnet50"))
    md = fnd.findings(fts, tss, runs)
    assert f"- **Energy of a fine-tune, resnet50** ({RAPL}): PyTorch 100 J, one round, 0.100 J per image. Nothing " \
           f"to compare it with." in md
    assert "- **What a fine-tune costs, resnet50:** PyTorch 20.00 s = 0.0139 per fine-tune, 0.347 for 50 epochs " \
           "(projected). At 2.5 per hour (--price-per-hour). Nothing to compare it with." in md
    fts, tss, runs = _energy_run(None, None)
    for src in (fts["matched"], tss["matched"]):
        src.pop(("tensorflow", "resnet50"))
    assert f"- **Energy of a fine-tune:** {NO_RAPL}." in fnd.findings(fts, tss, runs)
    assert_no_empty_section(md)
