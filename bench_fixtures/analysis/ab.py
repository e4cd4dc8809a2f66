"""Interleaved A/B: gate an upgrade by running both environments in one session.

    bench ab --candidate-python /venvs/new/bin/python [--baseline-python /venvs/old/bin/python]
             [--candidate-env OMP_NUM_THREADS=1] --framework torch --model mobilenet_v2 --out DIR

Each case gets two workers, one per side (another interpreter, i.e. another venv with another
torch or TensorFlow, and/or other environment variables), kept warm for a block of rounds. Their
rounds alternate, ABBA: pair i runs baseline then candidate, pair i+1 candidate then baseline (an even
number of pairs per block, so each side runs second equally often: second is slower here), so
whatever drifts during the session (a noisy neighbour, thermal throttling, a CPU hog) lands on both
sides of every pair. Two blocks, each with fresh workers, the baseline's started first in one and
the candidate's in the other: of two identical workers, the second started ran steadily faster. The verdict tests the paired ratios, candidate/baseline: a case regresses when
their median exceeds 1 + --threshold *and* the one-sided Wilcoxon signed-rank test on their
logarithms gives p < --alpha. Stored runs from different sessions cannot offer this: there, drift
between the sessions is indistinguishable from a change.

--measure steps (default): rounds of --steps training steps after --warmup untimed ones (steady
state). --measure finetune: whole fine-tunes (build, fit, evaluate) per round; accuracy is compared
too, with a two-proportion test on the test-set size.

Writes DIR/baseline.json and DIR/candidate.json (normal run files: `bench report`, `bench gate`
read them) and DIR/verdict.json; two runs at once never share a DIR. Exit 0 pass, 1 regression (or the candidate failed), 2 cannot
run (a bad option; an interpreter that is missing or lacks the project or a framework, checked before
anything starts; a worker of either side that cannot start; the baseline failed; interrupted).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import machine
from ..config import CHOICES, MODELS, ConfigError, rename_options, resolve
from ..data import DataError, prepare_data
from ..files import FolderClaim, OutputError, WorkFolder, check_writable, interrupt_on_termination, write_json_atomic
from ..registry import NAMES, installed
from ..runner.experiment import Experiment
from ..runner.replicas import world_size
from ..runner.worker import ROOT, WorkerError, kill_all
from . import stats
from .results import SCHEMA_KEY, SCHEMA_VERSION

SIDES = ("baseline", "candidate")
# Before each timed round: the other side's worker has just finished one, and its runtime's threads
# spin on for a while (OpenMP/MKL wait policies) before they sleep; its round should not pay for that.
SETTLE_S = 0.25
PASS, REGRESSION, CANNOT_RUN = 0, 1, 2
# The settings bench ab's own options set, by the names its user types (errors name those).
OPTION_NAMES = {"step_count": "--steps", "step_warmup": "--warmup", "step_rounds": "--pairs"}
PROBE_TIMEOUT_S = 20  # importing the project in a fresh interpreter takes about a second here, 5 s cold
# Run in each side's interpreter with a worker's environment: what a worker imports before its
# framework, then whether each framework named on the command line can be found there (not imported:
# that is what the worker's 'hello' does; a framework found but broken is caught there).
PROBE = """
import sys
import bench_fixtures.runner.worker, bench_fixtures.frameworks.protocol
from bench_fixtures.registry import FRAMEWORKS
for name in sys.argv[1:]:
    why = FRAMEWORKS[name].missing()
    if why:
        print(why.partition(": ")[2])
        sys.exit(3)
"""


class ABError(Exception):
    """A bad option or environment; the message names it and the fix."""


def parse_env(specs: list[str], option: str) -> dict[str, str]:
    out = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key or not key.replace("_", "").isalnum():
            raise ABError(f"{option} {spec!r}: expected NAME=VALUE")
        out[key] = value
    return out


def find_python(path: str, option: str) -> str:
    """The interpreter PATH names (a path, or a name looked up on PATH), or ABError saying why not."""
    found = shutil.which(os.path.expanduser(path))
    if found is not None:
        return os.path.abspath(found)
    given = Path(path).expanduser()
    if os.sep not in path and not given.exists():
        why = "not found on PATH"
    elif not os.path.lexists(given):
        why = "no such file"
    elif not given.exists():
        why = f"a dangling symlink (to {os.readlink(given)})"
    elif given.is_dir():
        why = "a folder, not an interpreter"
    else:
        why = "not executable"
    raise ABError(f"{option} {path}: {why}; give the python of the environment to test "
                  f"(e.g. /path/to/venv/bin/python)")


def probe_python(python: str, who: str, frameworks: list[str], env: dict[str, str]) -> str | None:
    """Why PYTHON cannot run this project's workers for FRAMEWORKS (one line starting with WHO: what is
    missing there and the fix), or None. Run with the environment a worker gets, so that it fails in
    a second here instead of in a worker's 'hello' after the other side has started and warmed up."""
    run_env = dict(os.environ)  # as runner.worker.Worker builds it: this checkout first, then the side's own
    run_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), run_env.get("PYTHONPATH")]))
    run_env.update(env)
    try:  # its own process group: a wrapper script's children go with it on a timeout
        proc = subprocess.Popen([python, "-c", PROBE, *frameworks], cwd=ROOT, env=run_env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                                start_new_session=True)
    except OSError as e:
        return f"{who}: cannot run it ({e.strerror or e}); give the python of the environment to test"
    try:
        stdout, stderr = proc.communicate(timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"{who}: importing this project there took over {PROBE_TIMEOUT_S} s; check that interpreter"
    r = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    if r.returncode == 0:
        return None
    if r.returncode == 3 and r.stdout.strip():
        return f"{who}: {r.stdout.strip().splitlines()[-1]} (in that environment)"
    lines = [ln.strip() for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
    return (f"{who}: cannot import this project there ({lines[-1] if lines else f'exit code {r.returncode}'}); "
            f"install its requirements into that environment (pip install -r {ROOT / 'requirements.txt'})")


def check_sides(sides: dict[str, dict[str, Any]], frameworks: list[str]) -> None:
    """Probe each side's interpreter (both at once; once for sides alike): ABError naming each that
    cannot run and why, before any data is prepared or any worker started."""
    alike: dict[tuple, list[str]] = {}
    for side in SIDES:
        alike.setdefault((sides[side]["python"], tuple(sorted(sides[side]["env"].items()))), []).append(side)

    def who(group: list[str]) -> str:
        env = " ".join(f"{k}={v}" for k, v in sides[group[0]]["env"].items())
        return (" and ".join(f"--{side}-python" for side in group) + f" {sides[group[0]]['python']}"
                + (f" (with {env})" if env else ""))

    with ThreadPoolExecutor(len(alike)) as pool:
        probes = [pool.submit(probe_python, sides[g[0]]["python"], who(g), frameworks, sides[g[0]]["env"])
                  for g in alike.values()]
        problems = [p for p in (f.result() for f in probes) if p]
    if problems:
        raise ABError("; ".join(problems))


def run_case(framework: str, model: str, cfg: Any, bundle_dir: Path, meta: dict, work: Path,
             sides: dict[str, dict[str, Any]], pairs: int, measure: str) -> dict[str, Any]:
    """PAIRS alternated pairs of rounds, in two blocks with fresh workers: the second-started of two
    identical workers ran 3-16% faster here, steadily (all 8 pairs), so block 1 starts the baseline's
    worker first and block 2 the candidate's. Both workers start before either builds a model, so a
    side that cannot start shows at once. Returns per side its rounds (seconds), accuracies
    (finetune), worker info and the failure, if any (`start_failed`: its worker could not start)."""
    out: dict[str, Any] = {side: dict(rounds=[], accuracy=[], info={}, warmups=[], error=None, start_failed=False)
                           for side in SIDES}
    current = SIDES[0]
    for block, order in enumerate((SIDES, SIDES[::-1])):
        exps = {side: Experiment(framework, model, cfg, bundle_dir, work / f"{side}-{block}", meta,
                                 python=sides[side]["python"], env=sides[side]["env"]) for side in SIDES}
        starting = True
        try:
            for current in order:
                out[current]["info"] = exps[current].load()
            starting = False
            for current in order:
                exps[current].init()
                if measure == "steps":  # untimed, but its time is kept (tracing, autotuning)
                    out[current]["warmups"].append(exps[current].warm_up()["seconds"])
            for i in range(pairs // 2):
                for current in (SIDES if i % 2 == 0 else SIDES[::-1]):
                    exp = exps[current]
                    time.sleep(SETTLE_S)
                    if measure == "steps":
                        start = time.perf_counter()
                        exp.train_steps()
                        out[current]["rounds"].append(time.perf_counter() - start)
                    else:
                        exp.start_round()
                        out[current]["rounds"].append(exp.fine_tune()["seconds"])
                        out[current]["accuracy"].append(exp.predict_after()["accuracy"])
                        out[current]["test_size"] = meta.get("test_size")
        except WorkerError as e:
            out[current].update(error=one_line(e), start_failed=starting)
            return out
        except BaseException:  # interrupted: no polite shutdown that would wait for a round to end
            kill_all()
            raise
        finally:
            for exp in exps.values():
                exp.close()
    return out


def one_line(error: BaseException) -> str:
    """A worker's failure in one line: its first line and, when the worker's output follows, that
    output's last line (the exception that ended it, such as the ImportError of a broken install)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    if not lines:
        return type(error).__name__
    last = lines[-1]
    return lines[0] if last.startswith("--- ") or last in lines[0] else f"{lines[0]}: {last}"


def verdict(case: str, result: dict[str, Any], threshold: float, acc_points: float, alpha: float) -> dict[str, Any]:
    base, cand = result["baseline"], result["candidate"]
    v: dict[str, Any] = dict(case=case, verdict="ok", findings=[])
    for side in SIDES:  # an environment that cannot even start a worker says nothing about speed
        if result[side].get("start_failed"):
            return dict(v, verdict="cannot compare",
                        findings=[f"the {side}'s worker could not start: {result[side]['error']}"])
    if base["error"]:
        return dict(v, verdict="cannot compare", findings=[f"the baseline failed: {base['error']}"])
    if cand["error"]:
        return dict(v, verdict="REGRESSION", findings=[f"the candidate failed: {cand['error']}"])
    t = stats.paired(base["rounds"], cand["rounds"])
    v["time"] = dict(pairs=t.pairs, median_ratio=t.median_ratio, low=t.low, high=t.high, p=t.p,
                     baseline_median_s=statistics.median(base["rounds"]),
                     candidate_median_s=statistics.median(cand["rounds"]))
    if t.median_ratio - 1 > threshold and t.p < alpha:
        v["verdict"] = "REGRESSION"
        v["findings"].append(f"time {t.median_ratio - 1:+.1%} (median of {t.pairs} paired ratios, "
                             f"p={t.p:.3g} < {alpha:g}; limit +{threshold:.0%})")
    if base["accuracy"] and cand["accuracy"]:
        b, c, n = base["accuracy"][-1], cand["accuracy"][-1], base.get("test_size") or 0
        p = stats.accuracy_drop_p(b, n, c, n) if n else 1.0
        v["accuracy"] = dict(baseline=b, candidate=c, test_size=n, p=p)
        if (b - c) * 100 > acc_points and p < alpha:
            v["verdict"] = "REGRESSION"
            v["findings"].append(f"accuracy {100 * (c - b):+.1f} pt (two-proportion p={p:.3g}, n={n}; "
                                 f"limit -{acc_points:g} pt)")
    return v


def run_file(side: str, cfg: Any, results: dict[str, dict[str, Any]], measure: str, sides: dict,
             argv: list[str]) -> dict[str, Any]:
    """One side's numbers as a pytest-benchmark run file (the schema `bench gate`/`report` read)."""
    test = "test_train_step" if measure == "steps" else "test_finetune"
    benchmarks, builds = [], {}
    for case, result in results.items():
        r = result[side]
        if r["error"] or not r["rounds"]:
            continue
        framework, model = case.split("-", 1)
        info = r["info"]
        builds[framework] = info
        data = r["rounds"]
        per_round = cfg.step_count * cfg.batch_size if measure == "steps" else None
        extra = dict(framework=framework, model=model, side=side, python=sides[side]["python"],
                     env=sides[side]["env"], measure=measure, framework_version=info.get("framework_version"),
                     device=cfg.device, batch_size=cfg.batch_size, test_outcome="passed", setup=cfg.setup,
                     train_layers=cfg.train_layers, replicas=cfg.replicas)
        if per_round:
            extra.update(steps_per_round=cfg.step_count, train_images_per_s=per_round / statistics.median(data),
                         warmup_steps=cfg.step_warmup, warmup_s=max(r["warmups"], default=None),
                         warmups_s=r["warmups"], round_images_per_s=[per_round / t for t in data])
        if r["accuracy"]:
            extra.update(accuracy_after=r["accuracy"][-1], test_size=r.get("test_size"))
        benchmarks.append(dict(
            group=f"ab-{model}", name=f"{test}[{case}]", fullname=f"bench ab::{test}[{case}]",
            params=dict(framework=framework, model=model), param=case, extra_info=extra, options={},
            stats=dict(min=min(data), max=max(data), mean=statistics.fmean(data),
                       stddev=statistics.stdev(data) if len(data) > 1 else 0.0, median=statistics.median(data),
                       rounds=len(data), iterations=1, data=data)))
    info = machine.machine_info(builds)
    info["packages"] = dict(info["packages"], **{fw: b.get("framework_version") for fw, b in builds.items()})
    info["python"] = sides[side]["python"]
    return dict({SCHEMA_KEY: SCHEMA_VERSION}, machine_info=info, bench_config=cfg.as_dict(), benchmarks=benchmarks,
                datetime=datetime.now(timezone.utc).isoformat(), version="bench ab",
                command=" ".join(["bench ab", *argv]))


def main(argv: list[str] | None = None, prog: str = "bench ab") -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse(argv, prog)
    outcome = run(a, argv, prog)
    return outcome if isinstance(outcome, int) else conclude(outcome, a)


def parse(argv: list[str], prog: str) -> argparse.Namespace:
    """bench ab's options (argparse exits 2 on a bad one, naming it as typed)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)  # an error names the option as typed, never a longer one
    for side in SIDES:
        p.add_argument(f"--{side}-python", default=sys.executable,
                       help=f"the {side}'s interpreter (its venv has the framework to test; default: this one)")
        p.add_argument(f"--{side}-env", action="append", default=[], metavar="NAME=VALUE",
                       help=f"set in the {side}'s workers (repeatable)")
    p.add_argument("--framework", nargs="+", default=list(installed()), choices=NAMES,
                   help="(default: the frameworks installed in this environment; both sides must have them)")
    p.add_argument("--model", nargs="+", default=["mobilenet_v2"], choices=MODELS)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    p.add_argument("--bench-profile", default="auto", choices=CHOICES["profile"])
    p.add_argument("--data-dir", help="CIFAR-10 folder (profile seed, or --dataset cifar10)")
    p.add_argument("--dataset", choices=("cifar10", "synthetic"))
    p.add_argument("--measure", default="steps", choices=("steps", "finetune"))
    p.add_argument("--pairs", type=int, default=12, help="alternated pairs of rounds, a multiple of 4: half in each block (12)")
    p.add_argument("--steps", type=int, default=10, help="training steps per round, --measure steps (10)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per side first, --measure steps (5)")
    p.add_argument("--epochs", type=int, help="fine-tuning epochs, --measure finetune (profile's)")
    p.add_argument("--threshold", type=float, default=0.05, help="time: the slowdown that counts (0.05 = 5%%)")
    p.add_argument("--accuracy-points", type=float, default=2.0, help="accuracy: the drop that counts (2.0 pt)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (0.05)")
    p.add_argument("--out", required=True, help="folder for baseline.json, candidate.json, verdict.json")
    return p.parse_args(argv)


def run(a: argparse.Namespace, argv: list[str], prog: str) -> tuple[list[dict[str, Any]], Path] | int:
    """The session: every case's alternated rounds and verdict (printed as it comes), the three files
    written to --out; (verdicts, out folder), or CANNOT_RUN once the reason is printed. The workers
    and the work folder go, whatever happens."""
    interrupt_on_termination()  # SIGTERM, SIGHUP: like Ctrl-C, so the cleanup below runs
    work = claim = None
    try:
        try:
            sides, cfg, out = check_options(a)
            claim = FolderClaim(out, "--out", "give each bench ab its own --out folder")
            work = WorkFolder()  # sweeps what sessions killed before their cleanup (kill -9) left behind
            bundle_dir, meta = prepare_data(cfg, work.path, world_size(cfg.replicas))
        except (ABError, ConfigError, OutputError) as e:
            print(f"{prog}: {e}", file=sys.stderr)
            return CANNOT_RUN
        except DataError as e:
            print(f"{prog}: {rename_options(str(e), OPTION_NAMES)}", file=sys.stderr)
            return CANNOT_RUN
        announce(a, cfg, sides, prog)
        results, verdicts = {}, []
        for model in a.model:
            for framework in a.framework:
                case = f"{framework}-{model}"
                results[case] = run_case(framework, model, cfg, bundle_dir, meta, work.path / case, sides,
                                         a.pairs, a.measure)
                verdicts.append(verdict(case, results[case], a.threshold, a.accuracy_points, a.alpha))
                print(format_verdict(verdicts[-1], results[case]))
        files = {f"{side}.json": run_file(side, cfg, results, a.measure, sides, argv) for side in SIDES}
        files["verdict.json"] = dict(threshold=a.threshold, alpha=a.alpha, measure=a.measure, pairs=a.pairs,
                                     sides=sides, cases=verdicts)
        if not save(files, out, a.out, prog):
            return CANNOT_RUN
    except KeyboardInterrupt as e:
        kill_all()
        print(f"\n{prog}: interrupted ({e or 'received SIGINT'}): no verdict; the workers and the work folder are gone",
              file=sys.stderr)
        return CANNOT_RUN
    finally:
        if work is not None:
            work.remove()
        if claim is not None:
            claim.release()
    return verdicts, out


def announce(a: argparse.Namespace, cfg: Any, sides: dict[str, dict[str, Any]], prog: str) -> None:
    """What the session measures and with which interpreters, before the first round."""
    print(f"{prog}: {cfg.headline().removeprefix('bench: ')}; {a.pairs} alternated pairs of "
          f"{'%d steps' % cfg.step_count if a.measure == 'steps' else 'fine-tunes'}")
    for side in SIDES:
        env = " ".join(f"{k}={v}" for k, v in sides[side]["env"].items())
        print(f"  {side}: {sides[side]['python']}{' with ' + env if env else ''}")


def save(files: dict[str, dict[str, Any]], out: Path, given: str, prog: str) -> bool:
    """FILES written into OUT, each atomically; False (said on stderr) when the disk refuses one."""
    try:
        for name, payload in files.items():
            write_json_atomic(out / name, payload)
    except OSError as e:  # the disk filled up during the session: the verdict, then say it was not kept
        print(f"{prog}: --out {given}: cannot write {name} ({e.strerror or e}); the verdict above was not "
              f"kept", file=sys.stderr)
        return False
    return True


def conclude(outcome: tuple[list[dict[str, Any]], Path], a: argparse.Namespace) -> int:
    """The session's verdict line and exit code: a regression first, then a case that could not be compared."""
    verdicts, out = outcome
    bad = [v for v in verdicts if v["verdict"] == "REGRESSION"]
    unreadable = [v for v in verdicts if v["verdict"] == "cannot compare"]
    if bad:
        print(f"\nREGRESSION: {', '.join(v['case'] for v in bad)}: "
              + "; ".join(f"{v['case']} {f}" for v in bad for f in v["findings"]))
        return REGRESSION
    if unreadable:
        print(f"\ncannot compare: {'; '.join(f['case'] + ': ' + f['findings'][0] for f in unreadable)}")
        return CANNOT_RUN
    print(f"\nPASS: {len(verdicts)} case(s), paired rounds within +{a.threshold:.0%} or not significant "
          f"(results in {out})")
    return PASS


def check_options(a: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], Any, Path]:
    """Everything that can be known wrong before any work: (sides, config, out folder), or ABError /
    ConfigError / OutputError naming the option as typed and the fix."""
    a.framework, a.model = list(dict.fromkeys(a.framework)), list(dict.fromkeys(a.model))  # each case once
    if not a.framework:
        raise ABError(f"no framework is installed in this interpreter ({sys.executable}) to default to; name the "
                      f"ones to compare with --framework ({', '.join(NAMES)})")
    sides = {side: dict(python=find_python(getattr(a, f"{side}_python"), f"--{side}-python"),
                        env=parse_env(getattr(a, f"{side}_env"), f"--{side}-env")) for side in SIDES}
    for option, value in (("--threshold", a.threshold), ("--accuracy-points", a.accuracy_points)):
        if not (math.isfinite(value) and value >= 0):
            raise ABError(f"{option} {value!r}: must be a number >= 0")
    if not (math.isfinite(a.alpha) and 0 < a.alpha < 1):
        raise ABError(f"--alpha {a.alpha!r}: must lie in (0, 1)")
    if a.pairs < 4 or a.pairs % 4 or stats.min_paired_p(a.pairs) >= a.alpha:
        need = max(4, math.ceil(math.log2(1 / a.alpha)) + 1)
        need += -need % 4
        raise ABError(f"--pairs {a.pairs}: give a multiple of 4 (two blocks, each side's worker started first in "
                      f"one; in each block each side runs first in half the pairs) of at least {need}, the "
                      f"fewest with which the signed-rank test can reach p < {a.alpha:g}")
    out = Path(a.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ABError(f"--out {a.out}: a file, not a folder; give a folder")
    check_writable(out, "--out")
    gpus, reason = machine.nvml_gpus()
    options = dict(profile=a.bench_profile, device=a.device, data_dir=a.data_dir, dataset=a.dataset,
                   step_count=a.steps, step_warmup=a.warmup, step_rounds=a.pairs, epochs=a.epochs)
    cfg = resolve(options, len(gpus), reason, names=OPTION_NAMES)
    check_sides(sides, a.framework)
    return sides, cfg, out


def format_verdict(v: dict[str, Any], result: dict[str, Any]) -> str:
    versions = " -> ".join(str(result[s]["info"].get("framework_version")) for s in SIDES)
    lines = [f"{v['case']} ({versions}): {v['verdict']}"]
    if "time" in v:
        t = v["time"]
        lines.append(f"  time  baseline {t['baseline_median_s']:.4g} s  candidate {t['candidate_median_s']:.4g} s  "
                     f"paired ratio {t['median_ratio']:.3f} (range {t['low']:.3f}..{t['high']:.3f}, "
                     f"{t['pairs']} pairs, one-sided p={t['p']:.3g})")
    if "accuracy" in v:
        acc = v["accuracy"]
        lines.append(f"  accuracy  {100 * acc['baseline']:.1f}% -> {100 * acc['candidate']:.1f}% "
                     f"(n={acc['test_size']}, p={acc['p']:.3g})")
    lines += [f"  {f}" for f in v["findings"]]
    return "\n".join(lines)
