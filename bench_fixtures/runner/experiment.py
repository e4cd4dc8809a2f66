"""One benchmark case, (framework, model), as the five steps of the experiment.

    load -> init -> predict_before -> fine_tune (timed) -> predict_after

Everything runs in the case's own worker process; this object only drives it and collects what it
reports into the `extra_info` that pytest-benchmark stores. Usable without pytest.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from .. import peaks
from ..config import MODELS, BenchConfig
from ..files import write_json_atomic
from ..registry import installed
from ..telemetry.energy import cost_record, energy_record
from ..telemetry.monitor import IDLE_BELOW, Monitor, disturbance, judge, peak, summarize_util
from ..telemetry.timeline import (EPOCH_START, EPOCH_STOP, RUN_START, RUN_STOP, accuracy_curve, after_first_steps,
                                  epoch_phases, epoch_times, fit_teardown, inter_epoch_gaps, project_overhead,
                                  step_intervals, time_to_accuracy, time_to_first_step)
from .replicas import ReplicaGroup, world_size
from .worker import Worker, hide_for_worker_errors, kill_all

__tracebackhide__ = hide_for_worker_errors




class Experiment:
    def __init__(self, framework: str, model: str, cfg: BenchConfig, bundle_dir: str | os.PathLike,
                 work_dir: str | os.PathLike, bundle_meta: dict[str, Any] | None = None,
                 telemetry_dir: str | os.PathLike | None = None, python: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.framework, self.model, self.cfg = framework, model, cfg
        self.python, self.env = python, env  # another interpreter / environment for the worker (bench ab)
        self.bundle_dir, self.work_dir = Path(bundle_dir), Path(work_dir)
        self.bundle_meta = bundle_meta or {}
        self.telemetry_dir = Path(telemetry_dir) if telemetry_dir else None
        self.monitor: Monitor | None = None
        self.name = f"{framework}-{model}" + (f"-{cfg.setup}" if cfg.setup != "matched" else "")
        self.worker: Worker | None = None
        self.description: dict[str, Any] = {}
        self.rounds: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []
        self.warmup: dict[str, Any] = {}
        self.steps_monitor: Monitor | None = None
        self.flops: dict[str, Any] | None = None
        self.gpu_name: str | None = None  # as NVML reports it: the peak table's key
        self.global_batch = cfg.batch_size * world_size(cfg.replicas)  # images per step, all replicas

    # -- the five steps --------------------------------------------------------------------
    def load(self) -> dict[str, Any]:
        """Start the case's worker; it maps the shared arrays and reports its framework set-up."""
        kind = ReplicaGroup if self.cfg.replicas > 1 else Worker  # one process per replica
        self.worker = kind(self.framework, self.cfg.as_dict(), self.bundle_dir, self.work_dir / f"{self.name}.log",
                           self.cfg.worker_timeout, name=self.name, python=self.python, env=self.env)
        self.gpu_name = gpu_name(self.cfg.device, self.worker.info)
        return self.worker.info

    def init(self) -> dict[str, Any]:
        """A fresh backbone + the shared head + optimizer."""
        self.description = self.request("build", model=self.model)
        return self.description

    def predict_before(self) -> dict[str, Any]:
        result = self._evaluate()
        self.rounds.append({"before": result})
        return result

    def _evaluate(self) -> dict[str, Any]:
        """The test accuracy; with replicas, the mean over the replicas, each evaluating its own model
        on the whole test split (their BatchNorm statistics differ), and each one's in `replica_accuracy`."""
        result = self.request("evaluate")
        if isinstance(self.worker, ReplicaGroup):
            answers = self.worker.answers
            result = dict(result, replica_accuracy=[a["accuracy"] for a in answers],
                          accuracy=statistics.fmean(a["accuracy"] for a in answers),
                          loss=statistics.fmean(a["loss"] for a in answers))
        return result

    def fine_tune(self) -> dict[str, Any]:
        """The timed part: `epochs` epochs over the shared order; the worker syncs before answering."""
        start = time.perf_counter()
        result = self.request("fit", epochs=self.cfg.epochs)
        result["seconds"] = time.perf_counter() - start
        if isinstance(self.worker, ReplicaGroup):  # each replica's loss is its shard's: their mean, as Keras logs it
            result["epoch_losses"] = [statistics.fmean(losses) for losses in
                                      zip(*(a["epoch_losses"] for a in self.worker.answers))]
        result["events"] = self.worker.events[:] if self.worker else []
        self.rounds[-1]["fit"] = result
        return result

    def predict_after(self) -> dict[str, Any]:
        self.rounds[-1]["monitor"] = self.stop_monitor()
        result = self._evaluate()
        self.rounds[-1]["after"] = result
        return result

    # -- helpers for pytest-benchmark's rounds ----------------------------------------------
    def start_round(self) -> None:
        """pedantic's `setup`: finish the previous round, then init + predict_before (untimed)."""
        if self.rounds and "after" not in self.rounds[-1]:
            self.predict_after()
        if isinstance(self.worker, ReplicaGroup):
            self.worker.clear_events()
        elif self.worker is not None:
            self.worker.events.clear()
        self.init()
        self.predict_before()
        self.start_monitor()  # last, so that the timed region is fully covered

    # -- telemetry -------------------------------------------------------------------------
    def start_monitor(self) -> Monitor:
        assert self.worker is not None
        pids = self.worker.pids if isinstance(self.worker, ReplicaGroup) else self.worker.pid  # every replica
        gpus = getattr(self.worker, "gpus", None) or visible_gpu()  # each replica's GPU, as NVML numbers them
        self.monitor = Monitor(pids, self.cfg.device, self.cfg.monitor_interval, gpu_index=gpus).start()
        return self.monitor

    def stop_monitor(self) -> Monitor | None:
        mon, self.monitor = self.monitor, None
        return mon.stop() if mon is not None else None

    def monitoring(self) -> "_Monitoring":
        """`with exp.monitoring(): ...` samples the worker for the block (used around train_step rounds)."""
        return _Monitoring(self)

    def warm_up(self) -> dict[str, Any]:
        """Untimed steps before the steady-state rounds (tracing, autotuning); their time is reported."""
        start = time.perf_counter()
        result = self.request("train_steps", count=self.cfg.step_warmup) if self.cfg.step_warmup else {}
        self.warmup = dict(result, steps=self.cfg.step_warmup, seconds=time.perf_counter() - start)
        return self.warmup

    def train_steps(self) -> dict[str, Any]:
        start = time.monotonic_ns()
        result = self.request("train_steps", count=self.cfg.step_count)
        if isinstance(self.worker, ReplicaGroup):
            result = dict(result, loss=statistics.fmean(a["loss"] for a in self.worker.answers))
        self.steps.append(dict(result, start_ns=start, stop_ns=time.monotonic_ns()))
        return result

    def count_flops(self) -> dict[str, Any]:
        """The framework's own FLOP count of this model's training step, once per worker, after the
        timed work (tracing a graph for it must not warm what time to first step measures)."""
        if self.flops is None:
            self.flops = self.request("count_flops")
        return self.flops

    def utilization(self, images_per_s: float | None) -> dict[str, Any]:
        """Achieved FLOP/s at IMAGES_PER_S of training steps, and MFU where the device's peak is known."""
        flops = self.count_flops()
        precision = peaks.effective_precision(self.cfg.precision, self.description.get("settings"))
        # MFU is per device: N GPUs share the work; on a CPU the replicas share the one peak
        world = self.global_batch // self.cfg.batch_size
        per_device = images_per_s / world if images_per_s and self.cfg.device == "gpu" else images_per_s
        return dict(flops_per_image=flops, **peaks.utilization(
            flops.get("train_per_image"), per_device, self.cfg.device, self.gpu_name, precision,
            self.cfg.peak_tflops))

    def close(self) -> None:
        self.stop_monitor()
        if self.worker is not None:
            self.worker.close()

    def request(self, cmd: str, **args: Any) -> Any:
        """Any worker request (the overhead check uses `bare_steps` and `input_pipeline`)."""
        if self.worker is None:
            raise RuntimeError("load() first")
        return self.worker.request(cmd, **args)

    # -- results ---------------------------------------------------------------------------
    def common_info(self) -> dict[str, Any]:
        cfg, info = self.cfg, self.worker.info if self.worker else {}
        return dict(framework=self.framework, model=self.model, profile=cfg.profile, dataset=cfg.dataset,
                    train_size=self.bundle_meta.get("train_size", cfg.train_size),
                    test_size=self.bundle_meta.get("test_size", cfg.test_size),
                    batch_size=cfg.batch_size, weights=cfg.weights, device=cfg.device,
                    device_name=info.get("device_name"), precision=cfg.precision or "default",
                    compile=cfg.compile or "default", setup=cfg.setup, overrides=cfg.overrides,
                    settings=self.description.get("settings"),
                    image_size=cfg.image_size, optimizer=cfg.optimizer, lr=cfg.lr, seed=cfg.seed,
                    bn_momentum=cfg.bn_momentum, bn_eps=cfg.bn_eps,
                    framework_version=info.get("framework_version"),
                    trainable_params=self.description.get("trainable_params"),
                    non_trainable_params=self.description.get("non_trainable_params"),
                    train_layers=cfg.train_layers, frozen_params=self.description.get("frozen_params"),
                    start=self.description.get("start"),
                    input_transform=self.description.get("input_transform"),
                    replicas=cfg.replicas, global_batch_size=self.global_batch,
                    distributed=info.get("distributed"), cpu_threads=info.get("cpu_threads"))

    def finetune_info(self) -> dict[str, Any]:
        last = self.rounds[-1]
        fit = last["fit"]
        events = fit["events"]
        times = epoch_times(events, self.cfg.epochs)
        steady = after_first_steps(events, self.cfg.epochs, fit["steps_per_epoch"])
        step_rate = steady[1] * self.global_batch / steady[0] if steady else None  # first steps left out
        curve = accuracy_curve(events, self.cfg.epochs)
        target = self.cfg.target_accuracy
        energies = [self._energy(r) for r in self.rounds if "fit" in r]
        rounds = [dict(accuracy_before=r["before"]["accuracy"], accuracy_after=r.get("after", {}).get("accuracy"),
                       finetune_s=r["fit"]["seconds"], energy_j=e["finetune_j"])
                  for r, e in zip((r for r in self.rounds if "fit" in r), energies)]
        projection = project_overhead(events, self.cfg.epochs, fit["steps_per_epoch"])
        if self.cfg.replicas > 1:
            replicas = dict(replica_accuracy_after=last["after"].get("replica_accuracy"),
                            replica_pids=self.worker.pids if isinstance(self.worker, ReplicaGroup) else None,
                            rendezvous_port_attempts=(self.worker.info or {}).get("port_attempts"))
        else:
            replicas = {}
        return dict(self.common_info(), epochs=self.cfg.epochs, steps_per_epoch=fit["steps_per_epoch"],
                    eval_every_epoch=self.cfg.eval_every_epoch,
                    accuracy_before=last["before"]["accuracy"], accuracy_after=last["after"]["accuracy"],
                    loss_before=last["before"]["loss"], loss_after=last["after"]["loss"],
                    epoch_losses=fit["epoch_losses"], epoch_evals=fit["epoch_evals"],
                    epoch_times_s=times, time_to_first_step_s=time_to_first_step(events),
                    fit_teardown_s=fit_teardown(events, self.cfg.epochs),
                    overhead_projection=projection,
                    energy=_energy_summary(energies),
                    cost=cost_record(self.cfg.price_per_hour, statistics.median(r["finetune_s"] for r in rounds),
                                     projection),
                    finetune_s=fit["seconds"], train_images_per_s=fit["images"] / fit["seconds"],
                    step_images_per_s=step_rate,
                    rounds=rounds, rounds_summary=rounds_summary(rounds),
                    accuracy_curve=curve, target_accuracy=target,
                    time_to_accuracy=time_to_accuracy(curve, target, last["before"]["accuracy"])
                    if target is not None else None,
                    **self.utilization(step_rate), **replicas,
                    **self._telemetry("finetune", events, last.get("monitor")))

    def _energy(self, r: dict[str, Any]) -> dict[str, Any]:
        """One fine-tune round's energy record, from its own monitor's counter reads and timeline. A
        bug in the energy code costs the energy figure, never the case's time or accuracy."""
        mon, fit = r.get("monitor"), r["fit"]
        info = mon.energy_info if mon else dict(source=None, reason="not measured: the round had no monitor")
        util = [s for s in mon.samples if "util" in s] if mon and mon.sampler.name == "nvml" else None
        try:
            return energy_record(mon.energy_reads if mon else [], info, fit["events"], self.cfg.epochs,
                                 fit["steps_per_epoch"], fit["images"], util, IDLE_BELOW)
        except Exception as e:  # noqa: BLE001 - reported as the figure's reason
            return energy_record([], dict(source=None, reason=f"not measured: the energy split failed "
                                                              f"({type(e).__name__}: {e})"), [], 0, 0, None)

    def _telemetry(self, test: str, events: list[dict], mon: Monitor | None) -> dict[str, Any]:
        """The telemetry keys of extra_info, and the raw timeline + samples written beside the results."""
        epochs = self.cfg.epochs if test == "finetune" else 0
        phases, phase_problems = epoch_phases(events, epochs)
        gaps, gap_problems = inter_epoch_gaps(events, epochs)
        samples = mon.samples if mon else []
        if test == "finetune":
            steps_w, gaps_w = step_intervals(events, epochs)
            run = {e["name"]: e["t_ns"] for e in events if e["name"] in (RUN_START, RUN_STOP)}
            timed_w = [(run[RUN_START], run[RUN_STOP] + 1)] if len(run) == 2 else steps_w
        else:
            steps_w = [(e["start_ns"], e["stop_ns"]) for e in self.steps if "start_ns" in e]
            gaps_w, timed_w = [], steps_w
        util = dict(steps=summarize_util(samples, steps_w), gaps=summarize_util(samples, gaps_w))
        per_epoch, epoch_windows = [], []
        at = {(e["name"], e.get("epoch")): e for e in events}
        for k in range(epochs):
            start, stop = at.get((EPOCH_START, k)), at.get((EPOCH_STOP, k))
            fw = (stop or {}).get("memory") or {}
            window = [(start["t_ns"], stop["t_ns"] + 1)] if start and stop else []
            epoch_windows.append(window[0] if window else None)  # None: its events are missing
            per_epoch.append(dict(epoch=k, framework_peak=fw.get("peak"), framework_reserved_peak=fw.get("reserved_peak"),
                                  process_peak=peak(samples, "proc_mem", window) if window else None))
        fw_peaks = [m["framework_peak"] for m in per_epoch if m["framework_peak"] is not None]
        reserved = [m["framework_reserved_peak"] for m in per_epoch if m["framework_reserved_peak"] is not None]
        memory = dict(epochs=per_epoch, process_peak=peak(samples, "proc_mem"),
                      replica_process_peaks=replica_peaks(samples),
                      device_peak=peak(samples, "device_mem"),
                      framework_peak=max(fw_peaks) if fw_peaks else None,
                      reserved_peak=max(reserved) if reserved else None,
                      process_memory_kind="GPU memory of the worker (NVML)" if mon and mon.sampler.name == "nvml"
                      else "resident memory of the worker (psutil)")
        monitor_problems, flags = judge(mon, steps_w, timed_w)
        out: dict[str, Any] = dict(utilization=util, memory=memory,
                                   monitor=mon.info() if mon else dict(backend=None, samples=0),
                                   telemetry_problems=phase_problems + gap_problems + monitor_problems,
                                   telemetry_flags=flags,
                                   disturbance=disturbance(mon, timed_w, epoch_windows, gaps_w))
        if test == "finetune":
            out.update(inter_epoch_gaps_s=[g["total_s"] if g else None for g in gaps], inter_epoch_gaps=gaps,
                       epoch_phases=phases)
        if self.telemetry_dir is not None:
            path = self.telemetry_dir / f"{test}-{self.name}.json"
            write_json_atomic(path, dict(case=self.name, test=test, config=self.cfg.as_dict(), events=events,
                                         samples=samples, host_samples=mon.host_samples if mon else [],
                                         energy_reads=mon.energy_reads if mon else [],
                                         energy_meter=mon.energy_info if mon else None,
                                         monitor=out["monitor"]))
            out["telemetry_file"] = str(path)
        return out

    def train_step_info(self) -> dict[str, Any]:
        rates = [s["images"] / s["seconds"] for s in self.steps]
        return dict(self.common_info(), steps_per_round=self.cfg.step_count, rounds=len(self.steps),
                    warmup_steps=self.warmup.get("steps", 0), warmup_s=self.warmup.get("seconds"),
                    train_images_per_s=statistics.median(rates) if rates else None,
                    round_images_per_s=rates,  # each round as the worker timed it (the findings' spread)
                    step_time_s=statistics.median(s["seconds"] / self.cfg.step_count for s in self.steps)
                    if self.steps else None,
                    final_loss=self.steps[-1]["loss"] if self.steps else None,
                    **self.utilization(statistics.median(rates) if rates else None),
                    **self._telemetry("train_step", [], self.steps_monitor))


def replica_peaks(samples: list[dict]) -> list[int | None] | None:
    """Each replica's peak process memory: from psutil's combined samples (`replica_mem`) or NVML's
    per-replica ones (`replica`); None for one process."""
    combined = [s["replica_mem"] for s in samples if s.get("replica_mem")]
    if combined:
        return [max(m[r] for m in combined) for r in range(len(combined[0]))]
    ranks = sorted({s["replica"] for s in samples if "replica" in s})
    if not ranks:
        return None
    return [peak([s for s in samples if s.get("replica") == r], "proc_mem") for r in ranks]


def visible_gpu() -> int:
    """The GPU a single worker uses, as NVML numbers it: the first of CUDA_VISIBLE_DEVICES, an index
    (as replicas.py reads each replica's) or a GPU's UUID (looked up in NVML), else 0."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if first.isdigit():
        return int(first)
    if first.startswith("GPU-"):  # a UUID, or any unique prefix of one (as CUDA takes it)
        try:
            import pynvml
            pynvml.nvmlInit()
            try:
                for i in range(pynvml.nvmlDeviceGetCount()):
                    uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
                    if (uuid.decode() if isinstance(uuid, bytes) else uuid).startswith(first):
                        return i
            finally:
                pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - no NVML: the first GPU, as before
            pass
    return 0


def gpu_name(device: str, worker_info: dict[str, Any]) -> str | None:
    """The GPU's name as NVML reports it (the peak table's key; the first GPU, as the worker uses
    the first visible one), else as the framework reports it; None on a CPU."""
    if device != "gpu":
        return None
    from ..machine import nvml_gpus
    gpus = nvml_gpus()[0]
    return gpus[0]["name"] if gpus else worker_info.get("device_name")


def spread(values: list[float], relative: bool) -> dict[str, Any] | None:
    """Median, min, max and spread (max - min; relative: over the median) of a case's rounds."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    mid, width = statistics.median(values), max(values) - min(values)
    return dict(n=len(values), median=mid, min=min(values), max=max(values),
                spread=width / mid if relative and mid else width, spread_kind="relative" if relative else "absolute")


def rounds_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The fine-tune rounds (each a fresh model, same seed): time and energy spread relative, accuracy
    in points."""
    return dict(finetune_s=spread([r["finetune_s"] for r in rounds], relative=True),
                accuracy_after=spread([r["accuracy_after"] for r in rounds], relative=False),
                energy_j=spread([r.get("energy_j") for r in rounds], relative=True)
                if all(r.get("energy_j") is not None for r in rounds) else None)


SPLIT_KEYS = ("per_image_j", "mean_power_w", "domain_finetune_j", "first_step_j", "idle_j", "epoch_phases",
              "inter_epoch_gaps", "projection")


def _energy_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The case's energy: the round with the median joules, whole (its per image, mean power and
    split add up to its joules; with an even count, the lower of the middle two), and every round's
    in `rounds_j`. A round whose counter failed fails the case's figure: a median of the rounds that
    happened to read well would pass for all of them."""
    rounds_j = [r["finetune_j"] for r in records]
    failed = [(i, r) for i, r in enumerate(records) if not r["measured"]]
    if failed:
        n = len(records)
        reason = failed[0][1]["reason"] if len(failed) == n else \
            f"round {failed[0][0] + 1} of {n}: {failed[0][1]['reason']}"
        if 1 < len(failed) < n:
            reason += f" (and {len(failed) - 1} more round(s))"
        return dict(records[-1], measured=False, finetune_j=None, reason=reason, rounds_j=rounds_j,
                    problems=[f"round {i + 1}: {p}" for i, r in failed for p in r["problems"]],
                    **{k: None for k in SPLIT_KEYS})
    i = sorted(range(len(records)), key=lambda k: records[k]["finetune_j"])[(len(records) - 1) // 2]
    return dict(records[i], rounds_j=rounds_j, round=i + 1)


class CaseRunner:
    """Holds at most one case's worker at a time: the finetune and train_step tests of a case
    share it (they are ordered next to each other); switching case closes the previous worker,
    so two frameworks never hold the device at once."""

    def __init__(self, cfg: BenchConfig, bundle_dir: str | os.PathLike, bundle_meta: dict[str, Any],
                 work_dir: str | os.PathLike, telemetry_dir: str | os.PathLike | None = None) -> None:
        self.cfg, self.bundle_dir, self.bundle_meta, self.work_dir = cfg, bundle_dir, bundle_meta, work_dir
        self.telemetry_dir = telemetry_dir
        self.current: Experiment | None = None
        self.framework_builds: dict[str, dict[str, Any]] = {}   # the last worker's answer per framework (and setup)
        self.worker_infos: dict[str, list[dict[str, Any]]] = {}  # every worker's, for import times
        self.progress: Any = None  # (case name, epoch_stop event) -> None

    def get(self, framework: str, model: str, setup: str | None = None) -> Experiment:
        """The case's worker, started on first use; SETUP (matched/defaults) when the session runs both."""
        cfg = self.cfg.for_setup(setup or self.cfg.setups[0])
        cur = self.current
        if cur is not None and (cur.framework, cur.model, cur.cfg.setup) == (framework, model, cfg.setup) \
                and cur.worker is not None and cur.worker.proc.poll() is None:
            return cur
        self.close()
        self.current = Experiment(framework, model, cfg, self.bundle_dir, self.work_dir, self.bundle_meta,
                                  self.telemetry_dir)
        info = self.current.load()
        self.current.worker.on_progress = self.progress
        self.framework_builds[framework if len(self.cfg.setups) == 1 else f"{framework}/{cfg.setup}"] = info
        self.worker_infos.setdefault(framework, []).append(info)
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None

    def kill(self) -> None:
        """No polite shutdown: an interrupted session must not wait for an epoch to end, and a
        worker still starting (not yet handed to its Experiment) is killed too."""
        if self.current is not None:
            self.current.stop_monitor()
            self.current = None
        kill_all()


class _Monitoring:
    def __init__(self, exp: Experiment) -> None:
        self.exp = exp

    def __enter__(self) -> Monitor:
        return self.exp.start_monitor()

    def __exit__(self, *exc: Any) -> None:
        self.exp.steps_monitor = self.exp.stop_monitor()


LOGIT_PROBE = 8  # test images whose logits `--weights same` compares across frameworks


def describe_models(cfg: BenchConfig, bundle_dir: str | os.PathLike, work_dir: str | os.PathLike,
                    models: tuple[str, ...] | None = None, frameworks: tuple[str, ...] | None = None,
                    first_step: bool = False) -> list[dict[str, Any]]:
    """Build every model in every framework (one worker per framework) and collect `describe`, with
    each framework's own FLOP count of the model (`flops`); with `--weights same`, also the logits
    of the first test images and the accuracy before training, which must agree across frameworks;
    with FIRST_STEP, the loss of one training step on the shared order's first batch
    (`first_step_loss`), which must agree where the parameters start the same (Keras on TensorFlow
    and on JAX). Nothing here is timed, so the frameworks' workers run side by side: each spends
    most of its time importing, building and tracing on one core."""
    cfg = dataclasses.replace(cfg.for_setup(cfg.setups[0]), replicas=1)  # a worker runs one setup, alone

    interrupted = threading.Event()

    def describe(framework: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        if interrupted.is_set():
            return rows
        with Worker(framework, cfg.as_dict(), bundle_dir, Path(work_dir) / f"describe-{framework}.log",
                    cfg.worker_timeout) as w:  # ended in this thread, which its PR_SET_PDEATHSIG follows
            for m in models or MODELS:
                if interrupted.is_set():  # Ctrl-C, or another framework failed: its error is the answer
                    break
                d = dict(w.request("build", model=m), flops=w.request("count_flops"))
                if cfg.weights == "same":  # the same start, checked: logits and accuracy on the same images
                    d["logits"] = w.request("logits", count=LOGIT_PROBE)
                    d["accuracy_before"] = w.request("evaluate")["accuracy"]
                if first_step:
                    d["first_step_loss"] = w.request("train_steps", count=1)["loss"]
                rows.append(d)
        return rows

    names = tuple(frameworks or installed())
    with ThreadPoolExecutor(max(len(names), 1)) as pool:
        futures = [pool.submit(describe, fw) for fw in names]
        try:
            if any(f.exception() for f in wait(futures, return_when=FIRST_EXCEPTION).done):
                interrupted.set()  # the others stop after the model they are on
        except KeyboardInterrupt:  # Ctrl-C: end the workers now, not when each has finished its models
            interrupted.set()
            kill_all()
            raise
    return [d for f in futures for d in f.result()]  # in the frameworks' order; the first failure raises


FINETUNE_KEYS = ("framework", "model", "profile", "dataset", "train_size", "test_size", "epochs", "batch_size",
                 "weights", "device", "precision", "accuracy_before", "accuracy_after", "trainable_params",
                 "non_trainable_params", "epoch_times_s", "time_to_first_step_s", "train_images_per_s",
                 "inter_epoch_gaps_s", "utilization", "memory", "monitor", "epoch_phases", "disturbance",
                 "energy", "cost")


def telemetry_problems(info: dict[str, Any], test: str) -> list[str]:
    """What is missing or inconsistent in a case's extra_info (empty = trustworthy)."""
    import json
    problems = [f"missing key {k}" for k in (FINETUNE_KEYS if test == "finetune" else
                                              ("utilization", "memory", "monitor")) if k not in info]
    if problems:
        return problems
    if not info["monitor"].get("samples"):
        problems.append("the monitor took no samples")
    problems += info.get("telemetry_problems", [])
    if test == "finetune":
        for phase, t in zip(info["epoch_phases"], info["epoch_times_s"]):
            if phase is None or t is None:
                continue
            parts = phase["steps_s"] + phase["eval_s"] + phase["other_s"]
            if abs(parts - phase["total_s"]) > 1e-6 or abs(phase["total_s"] - t) > 1e-6:
                problems.append(f"epoch {phase['epoch']}: phases {parts:.6f}s vs epoch {t:.6f}s")
            if min(phase["steps_s"], phase["eval_s"], phase["other_s"]) < 0:
                problems.append(f"epoch {phase['epoch']}: a negative phase")
        if any(g is not None and g < 0 for g in info["inter_epoch_gaps_s"]):
            problems.append("a negative inter-epoch gap")
    path = info.get("telemetry_file")
    if path is not None:
        try:
            json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            problems.append(f"telemetry file {path}: {e}")
    return problems
