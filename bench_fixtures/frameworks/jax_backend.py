"""JAX backend: Keras 3 on JAX, trained the idiomatic way (`fit`), the same Keras code as TensorFlow's.

Imported only inside a JAX worker process. The model, head, alignment, `fit` and its timeline are
`keras_common`'s, shared with the TensorFlow backend; what differs is the runtime under Keras:
- XLA is JAX's only mode: Keras jit-compiles every step (`jit_compile=True`); --compile does not
  apply, and the settings say so.
- JAX preallocates 75% of GPU memory when it starts (XLA_PYTHON_CLIENT_PREALLOCATE): `matched` turns
  it off (allocate as needed, as TensorFlow's memory growth), `defaults` keeps it.
- fp32 matmuls and convolutions: JAX's default lets XLA use TF32 on recent GPUs; `matched` sets
  `jax_default_matmul_precision` as --precision says, `defaults` keeps JAX's.
- Data reaches `fit` as numpy batches of the shared order (a `keras.utils.PyDataset`); Keras' JAX
  iterator puts the next batch on the GPU while a step runs (no look-ahead on a CPU).
- Device synchronisation: `jax.block_until_ready` on a step's outputs (its logs and new state).
- Memory: the device's allocator statistics (`Device.memory_stats`); none on a CPU.
"""
from __future__ import annotations

import functools
import importlib.abc
import importlib.metadata
import itertools
import os
import re
import sys
import time
from typing import Any


class _HideTensorFlow(importlib.abc.MetaPathFinder):
    """Keras imports TensorFlow wherever it is installed, whatever its backend (`set_random_seed`
    seeds tf.data with it): in a JAX worker that would load a second framework (its import time, its
    threads, its claim on the GPU). Hidden, it is what Keras sees where TensorFlow is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden from the JAX worker)", name=name)
        return None


if "tensorflow" in sys.modules:
    raise ImportError("jax_backend: TensorFlow is already imported in this process; a JAX worker runs alone")
sys.meta_path.insert(0, _HideTensorFlow())
os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from ..config import BenchConfig  # noqa: E402
from ..data import MEAN, STD, Bundle  # noqa: E402
from ..models import SPECS  # noqa: E402
from ..telemetry.timeline import Timeline  # noqa: E402
from .keras_common import KerasBackend, set_policy  # noqa: E402
from .protocol import BackendError  # noqa: E402

PREALLOCATE = "XLA_PYTHON_CLIENT_PREALLOCATE"
MEM_FRACTION = "XLA_PYTHON_CLIENT_MEM_FRACTION"
DENSE = ("conv_general_dilated", "dot_general")  # what MFU counts (as torch's counter)


def configure(cfg: BenchConfig) -> None:
    """The process-wide settings of a setup (the backend and the standalone bare loop share it).
    Before JAX starts its runtime: the allocator reads its environment once, at the first device use."""
    if cfg.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"  # a CUDA jaxlib would otherwise look for a GPU (or insist: "cuda")
    if cfg.setup == "matched":  # else JAX takes 75% of the GPU at start
        os.environ[PREALLOCATE] = "false"
    if cfg.precision is not None:  # None: JAX's default (TF32 allowed on GPUs that have it)
        jax.config.update("jax_default_matmul_precision", "tensorfloat32" if cfg.precision == "tf32" else "float32")
    set_policy(cfg.precision)


def preallocates() -> bool:
    """Whether JAX's GPU client takes its memory fraction up front (its default), from its environment."""
    return (os.environ.get(PREALLOCATE, "true").lower() not in ("false", "0")
            and os.environ.get("XLA_PYTHON_CLIENT_ALLOCATOR", "default") != "platform")


def tf32_allowed() -> bool:
    """JAX's default precision lets XLA use TF32 for fp32 matmuls and convolutions on GPUs that have it."""
    return jax.config.jax_default_matmul_precision in (None, "default", "tensorfloat32", "high", "bfloat16",
                                                        "fastest")


class SharedOrder(keras.utils.PyDataset):
    """The training batches of the shared order, epoch by epoch, as numpy (what Keras' JAX `fit`
    reads). `epoch` is set by `fit`'s first callback as each epoch begins: Keras also reads one
    batch to build the model and starts a fresh pass per epoch, so the dataset cannot count epochs."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, order: np.ndarray, batch_size: int) -> None:
        super().__init__()  # workers=1: batches are gathered on the main thread, between async steps
        self.images, self.labels, self.order, self.bs, self.epoch = images, labels, order, batch_size, 0

    def __len__(self) -> int:
        return self.order.shape[1] // self.bs

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.order[self.epoch, i * self.bs:(i + 1) * self.bs]
        return self.images[idx], self.labels[idx]


class _FollowEpochs(keras.callbacks.Callback):
    def __init__(self, data: SharedOrder) -> None:
        super().__init__()
        self.data = data

    def on_epoch_begin(self, epoch, logs=None):
        self.data.epoch = epoch


class JaxBackend(KerasBackend):
    framework = "jax"

    def __init__(self, cfg: BenchConfig, bundle: Bundle, timeline: Timeline) -> None:
        super().__init__(cfg, bundle, timeline)
        configure(cfg)
        devices = jax.devices()
        self.gpu = devices[0].platform == "gpu"
        if cfg.device == "gpu" and not self.gpu:
            raise BackendError(f"--device gpu, but JAX {jax.__version__} (jaxlib {_jaxlib()}) sees no GPU, only "
                               f"{devices[0].platform}; install jax[cuda12] (or jax[cuda13]) matching the driver")
        keras.utils.set_random_seed(cfg.seed)
        self.device = devices[0]
        self.train_x, self.train_y = np.asarray(bundle.train.images), np.asarray(bundle.train.labels)
        self.step_batches = None
        self.step_state: Any = None

    @staticmethod
    def is_out_of_memory(exc: BaseException) -> bool:
        # GPU: "RESOURCE_EXHAUSTED: Out of memory while trying to allocate ..."; CPU: "INTERNAL: ... Out of
        # memory allocating N bytes"
        return isinstance(exc, jax.errors.JaxRuntimeError) and bool(re.search(r"RESOURCE_EXHAUSTED|out of memory",
                                                                                str(exc), re.I))

    def info(self) -> dict[str, Any]:
        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        platform = self.device.client.platform_version if self.gpu else None  # e.g. "PJRT C API\ncuda 12080"
        return dict(framework="jax", framework_version=jax.__version__, jaxlib_version=_jaxlib(),
                    keras_version=keras.__version__, cuda_build=platform.splitlines()[-1] if platform else None,
                    cudnn_version=None, device=self.cfg.device, device_name=self.device.device_kind,
                    cpu_threads=os.cpu_count(),  # XLA's CPU thread pool: one per core
                    gpus_visible=len(gpus), tf32_matmul=tf32_allowed(), tf32_conv=tf32_allowed(),
                    cudnn_autotune=_gpu_autotune(), memory_growth=self._memory_growth(),
                    setup=self.cfg.setup)

    def _memory_growth(self) -> bool | None:
        """As TensorFlow's: allocating as needed; None without a GPU."""
        return (not preallocates()) if self.gpu else None

    # -- what Keras leaves to the runtime --------------------------------------------------
    def jit_compile(self) -> bool:
        return True  # XLA is JAX's only mode: Keras' JAX trainer without jit runs op by op

    def built(self) -> None:
        self.step_batches, self.step_state = None, None

    def runtime_settings(self) -> dict[str, Any]:
        growth = self._memory_growth()
        fraction = os.environ.get(MEM_FRACTION, "0.75")
        allocator = {True: "XLA BFC, grows as needed (preallocation off)",
                     False: f"XLA BFC, reserves {float(fraction):.0%} of the GPU up front (preallocation)",
                     None: "XLA (no GPU)"}[growth]
        return dict(tf32_matmul=tf32_allowed(), tf32_conv=tf32_allowed(), xla=True,
                    compile_requested=f"{self.cfg.compile or 'auto'} (not applicable: XLA is JAX's only mode)",
                    matmul_precision=str(jax.config.jax_default_matmul_precision or "default"),
                    memory_growth=growth, memory_allocator=allocator, cudnn_autotune=_gpu_autotune(),
                    input_autotune=False, prefetch="1 batch onto the GPU (Keras' JAX iterator)" if self.gpu
                    else "none (Keras' JAX iterator on a CPU)",
                    memory_peak_scope="since the worker started: JAX cannot reset its peak, so each epoch's "
                                      "includes compilation, evaluation and earlier epochs",
                    compilation_cache=_compilation_cache())

    def count_flops(self) -> dict[str, Any]:
        """FLOPs per image of one training step (forward, loss, gradients) and of its forward part,
        counted on the step's jaxpr (traced, never run, at the run's batch size): convolutions and
        matmuls, 2 per multiply-add, as torch's counter. A strided convolution's input gradient is a
        convolution over the output gradient dilated with zeros; its multiply-adds with those zeros
        are not counted, as torch's formula does not. Called after the timed work."""
        assert self.model is not None
        model, bs = self.model, self.cfg.batch_size
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        trainable = [v.value for v in model.trainable_variables]
        fixed = [v.value for v in model.non_trainable_variables]

        def loss(trainable, x, y):
            logits, _ = model.stateless_call(trainable, fixed, x, training=True)
            return loss_fn(y, logits)

        x = jax.ShapeDtypeStruct((bs, 32, 32, 3), np.uint8)
        y = jax.ShapeDtypeStruct((bs,), np.int32)
        forward = _dense_flops(jax.make_jaxpr(loss)(trainable, x, y).jaxpr)
        train = _dense_flops(jax.make_jaxpr(jax.grad(loss))(trainable, x, y).jaxpr)
        try:  # XLA's own count of every op, element-wise included (as TensorFlow's profiler's "all ops")
            cost = jax.jit(jax.grad(loss)).lower(trainable, x, y).cost_analysis()
            all_ops = (cost[0] if isinstance(cost, list) else cost).get("flops")
        except Exception:  # not every jax version or platform offers it before compiling
            all_ops = None
        return dict(counter=f"jaxpr of the training step (jax {jax.__version__}): convolutions and matmuls, "
                            f"2 per multiply-add, zeros of dilated input gradients not counted",
                    forward_per_image=sum(forward.values()) / bs, train_per_image=sum(train.values()) / bs,
                    train_all_ops_per_image=all_ops / bs if all_ops else None,
                    by_op={k: v // bs for k, v in sorted(train.items())}, uncounted_ops=[])

    def reset_peak_memory(self) -> None:
        """JAX has no way to reset its peak: per-epoch peaks are peaks since the process started."""

    def memory(self) -> dict[str, Any]:
        """The device allocator's statistics (peak since the process started); None on a CPU."""
        stats = self.device.memory_stats() if self.gpu else None
        if not stats:
            return dict(peak=None, reserved_peak=None, current=None)
        return dict(peak=stats.get("peak_bytes_in_use"),
                    reserved_peak=stats.get("peak_pool_bytes", stats.get("pool_bytes")),
                    current=stats.get("bytes_in_use"))

    # -- data ------------------------------------------------------------------------------
    def _dataset(self, order: np.ndarray) -> SharedOrder:
        return SharedOrder(self.train_x, self.train_y, order, self.cfg.batch_size)

    def train_input(self, order: np.ndarray) -> tuple[Any, list]:
        data = self._dataset(order)
        return data, [_FollowEpochs(data)]

    def test_input(self) -> dict[str, Any]:
        test = self.bundle.test
        return dict(x=np.asarray(test.images), y=np.asarray(test.labels), batch_size=self.cfg.batch_size)

    def validation_input(self) -> dict[str, Any]:
        test = self.bundle.test
        return dict(validation_data=(np.asarray(test.images), np.asarray(test.labels)),
                    validation_batch_size=self.cfg.batch_size)

    def peek_labels(self, batches: int) -> list[list[int]]:
        """Labels of the first BATCHES training batches exactly as `fit` feeds them (the same dataset,
        epoch by epoch; tests/test_worker.py logs what `fit` itself reads)."""
        return [np.asarray(y).tolist() for _, y in itertools.islice(self._batches(), batches)]

    def _batches(self):
        """The shared order's batches, epoch after epoch, as Keras' JAX iterator hands them to the
        step (one batch ahead onto the GPU), for the steady-state loop and the input check."""
        data = self._dataset(self.bundle.order)
        ahead = None
        while True:
            for epoch in range(self.bundle.order.shape[0]):
                data.epoch = epoch
                for i in range(len(data)):
                    batch = data[i]
                    if not self.gpu:
                        yield batch
                        continue
                    batch = jax.device_put(batch, self.device)
                    if ahead is not None:
                        yield ahead
                    ahead = batch

    # -- running ---------------------------------------------------------------------------
    def sync(self, outputs: Any = None) -> None:
        jax.block_until_ready(outputs)

    def input_pipeline(self, count: int) -> dict[str, Any]:
        """COUNT batches through the input path the steps use (and onto the device), synchronised."""
        it = self._batches()
        next(it)  # build the pipeline outside the timing
        start = time.perf_counter()
        batch = None
        for _ in range(count):
            batch = jax.device_put(next(it), self.device)
        jax.block_until_ready(batch)
        return dict(seconds=time.perf_counter() - start, batches=count)

    def _state(self) -> tuple[list, list, list, list]:
        """The model's state as Keras' JAX `fit` passes it to each step (the variables' values)."""
        m = self.model
        return tuple([v.value for v in vs] for vs in (m.trainable_variables, m.non_trainable_variables,
                                                       m.optimizer.variables, m.metrics_variables))

    def run_steps(self, count: int, callbacks: keras.callbacks.CallbackList) -> dict[str, Any]:
        """`fit`'s per-step path: the state threads through the jitted step (its input donated),
        on a persistent batch iterator; the variables get it back after the timing (`steps_done`),
        as `fit` does at the end of an epoch."""
        if self.step_batches is None:
            self.step_batches = self._batches()
            first = next(self.step_batches)
            # Keras' JAX step needs the optimizer's and the metrics' variables: `fit` creates them from
            # a first batch the same way when it has not run yet (its own method; a no-op once built)
            self.model._symbolic_build(data_batch=first)
            self.step_batches = itertools.chain([first], self.step_batches)
        state = self._state()
        for step in range(count):
            callbacks.on_train_batch_begin(step)
            logs, state = self.model.train_function(state, iter([next(self.step_batches)]))
            callbacks.on_train_batch_end(step, logs)
        self.sync((logs, state))
        self.step_state = state
        return logs

    def steps_done(self) -> None:
        m, state = self.model, self.step_state
        for variables, values in zip((m.trainable_variables, m.non_trainable_variables, m.optimizer.variables,
                                      m.metrics_variables), state):
            for v, value in zip(variables, values):
                v.assign(value)
        self.step_state = None


def _jaxlib() -> str:
    return importlib.metadata.version("jaxlib")


def _compilation_cache() -> str | None:
    """JAX's persistent compilation cache, where one is on (JAX_COMPILATION_CACHE_DIR): programs compiled
    by an earlier process are read from disk, so build and first-step times are not a cold start."""
    folder = jax.config.jax_compilation_cache_dir
    if not folder or not jax.config.jax_enable_compilation_cache:
        return None
    return f"on, {folder} (build and first-step times read compiled programs from disk)"


def _gpu_autotune() -> bool:
    """XLA's GPU autotuning of convolution and GEMM algorithms (cuDNN's included): level > 0, its default 4."""
    flags = os.environ.get("XLA_FLAGS", "")
    level = next((f.split("=", 1)[1] for f in flags.split() if f.startswith("--xla_gpu_autotune_level=")), "4")
    return level.strip() != "0"


def _sub_jaxprs(params: dict) -> list:
    out = []
    for value in params.values():
        for v in value if isinstance(value, (list, tuple)) else (value,):
            if hasattr(v, "eqns"):
                out.append(v)
            elif hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
                out.append(v.jaxpr)
    return out


def _dense_flops(jaxpr, into: dict[str, int] | None = None) -> dict[str, int]:
    """FLOPs of the convolutions and matmuls in JAXPR (and the jaxprs inside it), by primitive."""
    into = {} if into is None else into
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in DENSE:
            out = eqn.outvars[0].aval.shape
            lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
            if name == "dot_general":
                (lc, _), _ = eqn.params["dimension_numbers"]
                flops = 2 * int(np.prod(out)) * int(np.prod([lhs[d] for d in lc]))
            else:
                dn = eqn.params["dimension_numbers"]
                per_output = rhs[dn.rhs_spec[1]] * int(np.prod([rhs[d] for d in dn.rhs_spec[2:]]))
                flops = 2 * int(np.prod(out)) * per_output // int(np.prod(eqn.params["lhs_dilation"] or (1,)))
            into[name] = into.get(name, 0) + flops
        for sub in _sub_jaxprs(eqn.params):
            _dense_flops(sub, into)
    return into


def bare_step(model: str, batch: int, device: str, size: int, compiled: bool = True, precision: str | None = None,
              channels_last: bool = False, train_layers: str = "all"):
    """The overhead check's reference: a hand-written jitted JAX training step (Keras' stateless
    call, `jax.value_and_grad`, the optimizer's stateless apply) on a device-resident batch, using
    none of the class above. Returns (step, sync). It runs under the process's settings (`configure`:
    matmul precision, the mixed-precision policy, with loss scaling under mixed_float16 as `compile`
    adds it), always with XLA (JAX's only mode), and changes no process-wide setting."""
    base = getattr(keras.applications, SPECS[model].keras)(include_top=False, weights=None,
                                                          input_shape=(size, size, 3), pooling="avg")
    base.trainable = train_layers != "head"  # what the suite trains (--train-layers)
    m = keras.Sequential([base, keras.layers.Dense(10, dtype="float32")])
    opt = keras.optimizers.SGD(0.01, momentum=0.9)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    opt.build(m.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    key_x, key_y = jax.random.split(jax.random.key(0))
    x = jax.random.randint(key_x, (batch, 32, 32, 3), 0, 256).astype(np.uint8)
    y = jax.random.randint(key_y, (batch,), 0, 10)
    mean, std = np.asarray(MEAN, np.float32) * 255, np.asarray(STD, np.float32) * 255

    def loss(trainable, fixed, opt_vars, x, y):
        xb = (x.astype(np.float32) - mean) / std
        if size != 32:
            xb = jax.image.resize(xb, (batch, size, size, 3), method="bilinear")
        logits, fixed = m.stateless_call(trainable, fixed, xb, training=True)
        value = loss_fn(y, logits)
        if isinstance(opt, keras.optimizers.LossScaleOptimizer):  # its scale is one of its variables
            with keras.StatelessScope(state_mapping=list(zip(opt.variables, opt_vars))):
                return opt.scale_loss(value), (value, fixed)
        return value, (value, fixed)

    @functools.partial(jax.jit, donate_argnums=0)  # as Keras' step: the state's buffers are reused
    def train(state, x, y):  # the batch an argument, never a constant XLA could fold the transform into
        trainable, fixed, opt_vars = state
        grads, (value, fixed) = jax.grad(loss, has_aux=True)(trainable, fixed, opt_vars, x, y)
        trainable, opt_vars = opt.stateless_apply(opt_vars, grads, trainable)  # unscales under fp16
        return value, (trainable, fixed, opt_vars)

    state = ([v.value for v in m.trainable_variables], [v.value for v in m.non_trainable_variables],
             [v.value for v in opt.variables])

    def step() -> None:
        nonlocal state
        _, state = train(state, x, y)

    return step, lambda: jax.block_until_ready(state)
