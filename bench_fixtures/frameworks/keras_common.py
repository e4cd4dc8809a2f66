"""The Keras half of the two Keras backends: TensorFlow (`tf_backend`) and JAX (`jax_backend`).

Keras 3 runs the same `keras.applications` model and the same `model.fit` on either runtime, so
everything that is Keras lives here once: the model (backbone, torchvision-style init, BatchNorm
and optimizer alignment, the shared head, the input transform), `fit` with its timeline, the step
clock, evaluation and the description. A runtime backend subclasses `KerasBackend` and supplies
what differs under Keras: its process settings, how data reaches `fit`, device synchronisation,
memory statistics, the FLOP counter and the steady-state step loop.

Imported only inside a worker, after the runtime backend has set KERAS_BACKEND (Keras reads it once,
at its first import).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
from typing import Any, Callable

if os.environ.get("KERAS_BACKEND") not in ("tensorflow", "jax"):  # Keras would pick its own default
    raise ImportError("bench_fixtures.frameworks.keras_common is imported by tf_backend or jax_backend, "
                      "which set KERAS_BACKEND first")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from ..config import BenchConfig  # noqa: E402
from ..data import Bundle  # noqa: E402
from ..models import SPECS, f32, head_init, input_transform, transform_mode  # noqa: E402
from ..telemetry.timeline import (EPOCH_START, EPOCH_STOP, EVAL_START, EVAL_STOP, FIRST_STEP_END,  # noqa: E402
                                  FIRST_STEP_START, LAST_STEP_END, RUN_START, RUN_STOP, USER_WORK_START,
                                  USER_WORK_STOP, Timeline)
from ..weights import (FILES, WeightsFileError, cache_dir, file_for, get_hint, location, offline_hint,  # noqa: E402
                       staged_problem, start_record, torchvision_file)
from .keras_port import export_state, port, same_start_network  # noqa: E402
from .protocol import WeightsError, nonfinite_error  # noqa: E402

POLICIES = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def set_policy(precision: str | None) -> None:
    """Keras' global dtype policy for PRECISION (None: Keras' own); again after every `clear_session`,
    which resets it."""
    if precision is not None:
        keras.mixed_precision.set_global_policy(POLICIES.get(precision, "float32"))


class InputTransform(keras.layers.Layer):
    """uint8 NHWC batch -> normalised float NHWC, resized on the device if asked; float32 under a
    mixed policy too (the backbone casts its input to the compute dtype), as torch's autocast does."""

    def __init__(self, mode: str, image_size: int, **kwargs: Any) -> None:
        super().__init__(dtype="float32", **kwargs)
        order, scale, offset = input_transform(mode)
        self.order, self.scale, self.offset = list(order), scale, offset
        self.image_size = image_size

    def call(self, x):
        x = keras.ops.cast(x, "float32")
        x = keras.ops.take(x, self.order, axis=-1) * self.scale + self.offset
        if self.image_size != x.shape[1]:
            x = keras.ops.image.resize(x, (self.image_size,) * 2, interpolation="bilinear", antialias=False)
        return x


class FirstNonFiniteStep(keras.metrics.Metric):
    """The first step of the epoch whose logits are NaN/inf (-1: none), counted on the device, so
    no step waits for the host. Softmax cross-entropy from finite logits is finite, so this is the
    step where the loss turned non-finite. Keras resets metrics at each epoch start.

    Its state adds up across a TensorFlow strategy's replicas (metric variables are summed when
    read, and start at zero on every replica but the first): how many replicas diverged, and the
    sum of their first step + 1; the result is that sum over the count, less one (replicas share
    weights, so they diverge at the same step)."""

    def __init__(self, name: str = "first_nonfinite_step", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        # int64 on TensorFlow (an int32 variable would live on the host there and cost a copy per step);
        # int32 on JAX, its default width (int64 needs jax_enable_x64). Steps per epoch fit either.
        dtype = "int32" if keras.backend.backend() == "jax" else "int64"
        self.step = self.add_variable(shape=(), initializer="zeros", dtype=dtype, name="step")
        self.first_plus_one = self.add_variable(shape=(), initializer="zeros", dtype=dtype, name="first_plus_one")
        self.diverged = self.add_variable(shape=(), initializer="zeros", dtype=dtype, name="diverged")

    def update_state(self, y_true, y_pred, sample_weight=None):
        finite = keras.ops.all(keras.ops.isfinite(y_pred))
        new = keras.ops.logical_and(self.diverged.value == 0, keras.ops.logical_not(finite))
        self.first_plus_one.assign(keras.ops.where(new, self.step.value + 1, self.first_plus_one.value))
        self.diverged.assign(keras.ops.where(new, keras.ops.ones_like(self.diverged.value), self.diverged.value))
        self.step.assign_add(1)

    def result(self):
        diverged = self.diverged.value
        return keras.ops.where(diverged > 0, self.first_plus_one.value // keras.ops.maximum(diverged, 1) - 1, -1)

    def reset_state(self):
        for v in (self.step, self.first_plus_one, self.diverged):
            v.assign(0)


class StepClock:
    """Step boundaries where the steps happen: `fit` calls the model's train function once per step,
    and this wraps it (see `KerasBackend._instrument`). The first and the last step of an epoch are
    synchronised (SYNC, given the step's outputs) and recorded as they finish, so everything Keras
    does after the last step (epoch metrics, validation set-up, callbacks, a fresh iterator) lands
    between epochs, not in the steps. Callbacks cannot do this: overriding a *_batch_end hook makes
    Keras convert the logs to numpy after every step on the main thread (a device sync per step)."""

    def __init__(self, timeline: Timeline, steps_per_epoch: int, sync: Callable[[Any], None]) -> None:
        self.timeline, self.steps, self.sync, self.epoch, self.step = timeline, steps_per_epoch, sync, 0, 0

    def begin_epoch(self, epoch: int) -> None:
        self.epoch, self.step = epoch, 0

    def __call__(self, inner: Callable, *args: Any) -> Any:
        step, self.step = self.step, self.step + 1
        if step == 0:
            self.timeline.record(FIRST_STEP_START, epoch=self.epoch)
        outputs = inner(*args)
        if step == 0 or step == self.steps - 1:
            self.sync(outputs)
            if step == 0:
                self.timeline.record(FIRST_STEP_END, epoch=self.epoch)
            if step == self.steps - 1:
                self.timeline.record(LAST_STEP_END, epoch=self.epoch)
        return outputs


class TimelineCallback(keras.callbacks.Callback):
    """Epoch and validation boundaries (the steps are the StepClock's), from the main thread."""

    def __init__(self, timeline: Timeline, backend: "KerasBackend", clock: StepClock) -> None:
        super().__init__()
        self.timeline, self.backend, self.clock, self.epoch = timeline, backend, clock, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.clock.begin_epoch(epoch)
        self.backend.reset_peak_memory()
        self.timeline.record(EPOCH_START, epoch=epoch)

    def on_test_begin(self, logs=None):
        self.timeline.record(EVAL_START, epoch=self.epoch)

    def on_test_end(self, logs=None):
        self.timeline.record(EVAL_STOP, epoch=self.epoch)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        bad = int(host_number(logs.get("first_nonfinite_step", -1)))
        if bad >= 0:
            self.model.stop_training = True
            self.backend.diverged = (epoch, bad)
        self.timeline.record(EPOCH_STOP, epoch=epoch, memory=self.backend.memory(), loss=logs.get("loss"),
                             val_accuracy=logs.get("val_accuracy"))


class SleepCallback(keras.callbacks.Callback):
    """The tests' stand-in for a user's callbacks: work at the end of each epoch and at the start
    of validation (see `add_sleep_hooks`), each marked on the timeline."""

    def __init__(self, timeline: Timeline, epoch_end_s: float, eval_begin_s: float) -> None:
        super().__init__()
        self.timeline, self.epoch_end_s, self.eval_begin_s, self.epoch = timeline, epoch_end_s, eval_begin_s, 0

    def _work(self, at: str, seconds: float) -> None:
        self.timeline.record(USER_WORK_START, epoch=self.epoch, at=at)
        time.sleep(seconds)
        self.timeline.record(USER_WORK_STOP, epoch=self.epoch, at=at)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        self._work("epoch_end", self.epoch_end_s)

    def on_test_begin(self, logs=None):
        self._work("eval_begin", self.eval_begin_s)


def host_number(value: Any) -> float:
    """A log value as a Python number: under a TensorFlow strategy a metric's value can still be its
    sync-on-read variable, which `numpy()` reads (aggregated over the replicas)."""
    return float(value.numpy()) if hasattr(value, "numpy") else float(value)


def torchvision_init(backbone: keras.Model, seed: int) -> None:
    """Random init as torchvision does it (He normal, fan_out, zero bias): Keras' glorot-uniform
    default would hand Keras a different, for VGG19 untrainable, starting point."""
    rng = np.random.default_rng([seed, 0x1917])
    for layer in backbone.layers:
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
        if not (depthwise or isinstance(layer, keras.layers.Conv2D)):
            continue
        # Conv2D kernel (kh, kw, in, out) is torch's (out, in, kh, kw): fan_out = out * kh * kw.
        # Depthwise (kh, kw, C, 1) is torch's (C, 1, kh, kw): fan_out = C * kh * kw.
        kernel = layer.kernel
        kh, kw, c_in, c_out = kernel.shape
        fan_out = kh * kw * (c_in * c_out if depthwise else c_out)
        kernel.assign(rng.normal(0.0, np.sqrt(2.0 / fan_out), kernel.shape).astype(np.float32))
        if layer.use_bias:
            layer.bias.assign(np.zeros(layer.bias.shape, np.float32))


def inner_optimizer(opt):
    """The optimizer a LossScaleOptimizer wraps (fp16), else OPT."""
    return getattr(opt, "inner_optimizer", opt)


class KerasBackend:
    """The protocol's Keras implementation; a runtime subclass supplies the hooks at the end."""
    framework = "keras"

    def __init__(self, cfg: BenchConfig, bundle: Bundle, timeline: Timeline) -> None:
        self.cfg, self.bundle, self.timeline = cfg, bundle, timeline
        self.matched = cfg.setup == "matched"
        self.model: keras.Model | None = None
        self.ported_states: dict[str, dict[str, np.ndarray]] = {}  # --weights same: checkpoint path -> arrays
        self.clock: StepClock | None = None  # set while `fit` runs
        self.test_callbacks: list[keras.callbacks.Callback] = []  # the tests' own (a user's callbacks)
        self.diverged: tuple[int, int] | None = None
        self.global_batch = cfg.batch_size  # what one step of `fit` reads: all replicas' images (TF)

    # -- model -----------------------------------------------------------------------------
    def _backbone(self, name: str) -> keras.Model:
        """keras.applications' network: random init (`none`), Keras' ImageNet checkpoint (`imagenet`:
        the staged folder's file, else Keras' cache, downloaded there when absent), or torchvision's
        ported into it (`same`)."""
        spec, size, weights = SPECS[name], self.cfg.image_size, self.cfg.weights
        cls = getattr(keras.applications, spec.keras)
        build = lambda w: cls(include_top=False, weights=w, input_shape=(size, size, 3), pooling="avg")  # noqa: E731
        self.weights_file = None
        if weights == "none":
            return build(None)
        if weights == "same":
            return self._same_start(name, build)
        f, folder = file_for("keras", name, size), self.cfg.weights_dir
        path = location("keras", name, folder, size)
        if folder:
            if problem := staged_problem(f, folder):
                raise WeightsError(problem)
            try:
                net = build(str(path))
            except Exception as e:  # h5py, a layer count or shape mismatch: not this model's file
                raise WeightsError(f"{path}: not Keras' {name} ImageNet weights ({type(e).__name__}: "
                                   f"{' '.join(str(e).split())[:200]}); {get_hint(f, folder)}") from None
        else:
            try:
                net = build("imagenet")
            except Exception as e:  # keras.utils.get_file raises a bare Exception when offline
                raise WeightsError(f"ImageNet weights for {self.framework} {name} are not in the Keras cache "
                                   f"({cache_dir('keras')}) and cannot be downloaded "
                                   f"({str(e).splitlines()[0][:200]}); {offline_hint(f)}, or run with "
                                   f"--weights none") from None
        self.weights_file = str(path)
        return net

    def _same_start(self, name: str, build) -> keras.Model:
        """torchvision's checkpoint (the staged folder's, else torch.hub's cache, fetched there and
        hash-checked when absent) ported into the Keras network its spec names (`keras_port`:
        keras.applications' BUILD(None), with torchvision's padding for MobileNetV2, or torchvision's
        ResNet50 v1.5 built in Keras)."""
        f = FILES[("torchvision", name)]
        try:
            path = torchvision_file(name, self.cfg.weights_dir)
        except WeightsFileError as e:
            raise WeightsError(str(e)) from None
        if str(path) not in self.ported_states:  # each round builds afresh; the checkpoint is read once
            try:
                self.ported_states[str(path)] = export_state(path)
            except ImportError as e:  # this environment has no torch to read torchvision's file with
                raise WeightsError(str(e)) from None
            except (ValueError, OSError, subprocess.SubprocessError) as e:
                raise WeightsError(f"{path}: not torchvision's {name} ImageNet weights ({e}); "
                                   f"{get_hint(f, path.parent)}") from None
        size = self.cfg.image_size
        net = same_start_network(name, build, (size, size, 3))
        try:
            port(name, self.ported_states[str(path)], net, str(path))
        except ValueError as e:
            raise WeightsError(f"{e}; {get_hint(f, path.parent)}") from None
        self.weights_file = str(path)
        return net

    def build(self, name: str) -> dict[str, Any]:
        keras.backend.clear_session()
        with self.scope():  # a distribution strategy's variables are made under its scope
            self._build(name)
        self.start = self._start_record(name)
        self.built()
        return self.describe(name)

    def _build(self, name: str) -> None:
        set_policy(self.cfg.precision)
        keras.utils.set_random_seed(self.cfg.seed)
        spec = SPECS[name]
        self.transform = transform_mode(self.framework, name, self.cfg.preprocess, self.cfg.weights)
        inputs = keras.Input((32, 32, 3), dtype="uint8")
        self.backbone = backbone = self._backbone(name)
        if self.weights_file is None:
            torchvision_init(backbone, self.cfg.seed)
        self.head_only = self.cfg.train_layers == "head"
        if self.head_only:  # Keras: a BatchNormalization layer that is not trainable runs in inference mode
            backbone.trainable = False
        for layer in backbone.layers:  # None: as keras.applications ships it
            if isinstance(layer, keras.layers.BatchNormalization):
                if self.cfg.bn_momentum is not None:
                    layer.momentum = 1.0 - self.cfg.bn_momentum  # Keras' m is torch's 1 - m
                if self.cfg.bn_eps is not None:
                    layer.epsilon = self.cfg.bn_eps
        head = keras.layers.Dense(10, name="head", dtype="float32")  # float32 logits under a mixed policy
        outputs = head(backbone(InputTransform(self.transform, self.cfg.image_size)(inputs)))
        head.set_weights(list(head_init(spec.feature_dim, self.cfg.seed)))
        self.model = keras.Model(inputs, outputs)
        self.nonfinite = FirstNonFiniteStep()
        if self.cfg.optimizer == "sgd":
            opt = keras.optimizers.SGD(self.cfg.lr, momentum=self.cfg.momentum)
        elif self.cfg.adam_eps is not None:
            opt = keras.optimizers.Adam(self.cfg.lr, epsilon=self.cfg.adam_eps)
        else:
            opt = keras.optimizers.Adam(self.cfg.lr)
        if keras.mixed_precision.global_policy().name == "mixed_float16":  # compile() would wrap it alike
            opt = keras.optimizers.LossScaleOptimizer(opt)
        self.model.compile(optimizer=opt,
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                           metrics=["accuracy", self.nonfinite], jit_compile=self.jit_compile())
        self._instrument()

    def _start_record(self, name: str) -> dict[str, Any]:
        """Which numbers the model starts from (see weights.start_record)."""
        digest = hashlib.sha256()
        for w in self.model.weights:
            digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
        same = self.cfg.weights == "same"
        return start_record("torchvision" if same else "keras", name, self.weights_file, digest.hexdigest(),
                            self.cfg.seed, ported=same, image_size=self.cfg.image_size)

    def _instrument(self) -> None:
        """Wrap the train function `fit` calls once per step, so the StepClock sees each step (a
        counter and, at the first and last step of an epoch, a sync). `train_steps` calls the same
        function; outside `fit` the wrapper only passes through. (Its arguments are the runtime's:
        an iterator on TensorFlow, the state and the batch on JAX.)"""
        assert self.model is not None
        self.model.make_train_function()
        inner = self.model.train_function

        def train_function(*args):
            clock = self.clock
            return inner(*args) if clock is None else clock(inner, *args)

        self.model.train_function = train_function

    def describe(self, name: str) -> dict[str, Any]:
        assert self.model is not None
        bns = self._batchnorms()
        opt = inner_optimizer(self.model.optimizer)  # fp16: the optimizer inside the LossScaleOptimizer
        if self.cfg.optimizer == "sgd":
            optimizer = dict(name="sgd", lr=f32(keras.ops.convert_to_numpy(opt.learning_rate)), momentum=f32(opt.momentum),
                             nesterov=opt.nesterov, weight_decay=f32(opt.weight_decay or 0))
        else:
            optimizer = dict(name="adam", lr=f32(keras.ops.convert_to_numpy(opt.learning_rate)), beta_1=f32(opt.beta_1), beta_2=f32(opt.beta_2),
                             eps=f32(opt.epsilon), weight_decay=f32(opt.weight_decay or 0))
        count = lambda ws: int(sum(np.prod(w.shape) for w in ws))  # noqa: E731
        return dict(framework=self.framework, model=name,
                    trainable_params=count(self.model.trainable_weights),
                    non_trainable_params=count(self.model.non_trainable_weights),
                    batchnorm=sorted({(f32(1.0 - b.momentum), f32(b.epsilon)) for b in bns}) or "none",
                    optimizer=optimizer, loss="softmax cross-entropy from logits, mean over batch",
                    input_transform=self.transform, precision=self.cfg.precision or "default",
                    image_size=self.cfg.image_size, compile=self.cfg.compile or "default",
                    init=self.cfg.weights if self.weights_file else "he_normal(fan_out), as torchvision",
                    train_layers=self.cfg.train_layers, start=self.start,
                    frozen_params=count(w for w in self.model.non_trainable_weights
                                        if not any(w is s for b in bns for s in (b.moving_mean, b.moving_variance))),
                    backbone_bn_in_training=("inference (frozen)" if self.head_only else "batch statistics")
                    if bns else "none",
                    settings=self.settings())

    def _batchnorms(self) -> list:
        return [layer for layer in self.backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]

    def settings(self) -> dict[str, Any]:
        """The settings the setups differ in, read back: Keras' here, the runtime's from `runtime_settings`."""
        assert self.model is not None
        bns, opt = self._batchnorms(), self.model.optimizer  # opt: the loss scaler under fp16
        scaler = isinstance(opt, keras.optimizers.LossScaleOptimizer)
        return dict(setup=self.cfg.setup, **self.runtime_settings(),
                    bn_momentum=sorted({f32(1.0 - b.momentum) for b in bns}) or None,
                    bn_eps=sorted({f32(b.epsilon) for b in bns}) or None,
                    adam_eps=f32(inner_optimizer(opt).epsilon) if self.cfg.optimizer == "adam" else None,
                    compute_dtype=self.backbone.compute_dtype, policy=keras.mixed_precision.global_policy().name,
                    head_dtype=f"{self.model.get_layer('head').compute_dtype} (float32 policy)",
                    loss_scale=dict(kind="dynamic", initial=f32(keras.ops.convert_to_numpy(opt.initial_scale)),
                                    growth_interval=int(opt.dynamic_growth_steps), growth_factor=2.0,
                                    backoff_factor=0.5)  # the factors: Keras constants, not settable
                    if scaler else None,
                    loss_scaler="keras LossScaleOptimizer" if scaler else None,
                    memory_format="channels_last (NHWC)")

    @property
    def compiled(self) -> bool:
        """Whether Keras compiled the steps with XLA (`jit_compile` as resolved; the bare reference follows it)."""
        return bool(self.model is not None and self.model.jit_compile)

    def add_sleep_hooks(self, epoch_end_s: float, eval_begin_s: float) -> None:
        """A user's per-epoch work, for the tests (the worker's fault-injection commands only)."""
        self.test_callbacks.append(SleepCallback(self.timeline, epoch_end_s, eval_begin_s))

    # -- running ---------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        assert self.model is not None
        start = time.perf_counter()
        logs = self.model.evaluate(**self.test_input(), verbose=0, return_dict=True)
        n = len(self.bundle.test)  # Keras' accuracy is a float32 mean: back to correct / n, as torch's
        return dict(accuracy=round(host_number(logs["accuracy"]) * n) / n, loss=host_number(logs["loss"]), n=n,
                    seconds=time.perf_counter() - start)

    def logits(self, count: int) -> list[list[float]]:
        assert self.model is not None
        out = self.model(np.asarray(self.bundle.test.images[:count]), training=False)
        return keras.ops.convert_to_numpy(out).astype(float).tolist()

    def fit(self, epochs: int) -> dict[str, Any]:
        assert self.model is not None
        order, bs = self.bundle.order, self.global_batch
        steps = order.shape[1] // bs
        self.clock = StepClock(self.timeline, steps, self.sync)
        callback = TimelineCallback(self.timeline, self, self.clock)
        self.diverged = None
        self.timeline.record(RUN_START)  # the input pipelines are built inside the run, as `fit` users do
        validation = self.validation_input() if self.cfg.eval_every_epoch else {}
        data, data_callbacks = self.train_input(order[:epochs])
        try:
            with self.scope():
                history = self.model.fit(data, epochs=epochs, steps_per_epoch=steps, verbose=0, shuffle=False,
                                         callbacks=[*data_callbacks, callback, *self.test_callbacks], **validation)
        finally:
            self.clock = None
        self.timeline.record(RUN_STOP)
        if self.diverged is not None:
            raise nonfinite_error(self.framework, *self.diverged)
        h = history.history
        evals = [dict(accuracy=a, loss=lo) for a, lo in zip(h.get("val_accuracy", []), h.get("val_loss", []))]
        return dict(epoch_losses=[host_number(v) for v in h["loss"]], epoch_evals=evals, steps_per_epoch=steps,
                    images=epochs * steps * bs)

    def train_steps(self, count: int) -> dict[str, Any]:
        """COUNT steps down the per-step path of `fit` (Keras 3: on_train_batch_begin, the train
        function, on_train_batch_end dispatched to Keras' callback thread with the logs) on the
        runtime's persistent input (`run_steps`), then synchronise. What `fit` adds per epoch
        (metrics, validation, epoch callbacks) is between-epoch work and is measured there."""
        assert self.model is not None
        self.model.reset_metrics()
        callbacks = keras.callbacks.CallbackList([keras.callbacks.Callback(), *self.test_callbacks],
                                                 add_history=True, model=self.model, verbose=0, epochs=1,
                                                 steps=count)
        callbacks.on_train_begin()
        start = time.perf_counter()
        with self.scope():
            logs = self.run_steps(count, callbacks)  # synchronised
        seconds = time.perf_counter() - start
        self.steps_done()
        callbacks.on_train_end()  # joins Keras' callback thread, as the end of `fit` does
        bad = self.first_nonfinite(logs)
        if bad >= 0:
            raise nonfinite_error(self.framework, None, bad)
        return dict(seconds=seconds, images=count * self.global_batch, loss=host_number(logs["loss"]))

    def weights_digest(self) -> str:
        digest = hashlib.sha256()
        for w in self.model.trainable_weights:
            digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
        return digest.hexdigest()

    # -- what each runtime supplies --------------------------------------------------------
    def jit_compile(self) -> bool | str:
        """`jit_compile` for `model.compile`."""
        raise NotImplementedError

    def first_nonfinite(self, logs: dict[str, Any]) -> int:
        """After `run_steps`: the first non-finite step of the round, -1 if none (from its logs)."""
        return int(host_number(logs["first_nonfinite_step"]))

    def scope(self) -> contextlib.AbstractContextManager:
        """Where the model is built and trained: a distribution strategy's scope, else nothing."""
        return contextlib.nullcontext()

    def built(self) -> None:
        """After `build`: reset what the runtime keeps per model (a persistent step input)."""

    def runtime_settings(self) -> dict[str, Any]:
        """The runtime's own settings, read back (TF32, XLA, allocator, input pipeline)."""
        raise NotImplementedError

    def train_input(self, order: np.ndarray) -> tuple[Any, list]:
        """What `fit` reads for these epochs' rows of the shared order, and callbacks it needs."""
        raise NotImplementedError

    def test_input(self) -> dict[str, Any]:
        """`evaluate`'s data arguments for the test split."""
        raise NotImplementedError

    def validation_input(self) -> dict[str, Any]:
        """`fit`'s validation arguments for the test split."""
        raise NotImplementedError

    def sync(self, outputs: Any = None) -> None:
        """Wait until the device has finished the work behind OUTPUTS (a step's return value)."""
        raise NotImplementedError

    def run_steps(self, count: int, callbacks: keras.callbacks.CallbackList) -> dict[str, Any]:
        """COUNT steps with the callbacks' per-step hooks, synchronised; the last step's logs."""
        raise NotImplementedError

    def steps_done(self) -> None:
        """After `run_steps`, outside its timing (JAX: the state back into the model's variables)."""

    def reset_peak_memory(self) -> None:
        raise NotImplementedError

    def memory(self) -> dict[str, Any]:
        raise NotImplementedError

