"""TensorFlow backend: keras.applications backbone + shared head, trained the idiomatic way (`fit`).

Imported only inside a TensorFlow worker process. In the `matched` setup, Keras' own defaults that
would make the comparison unequal are set explicitly: memory growth on, XLA (`jit_compile`) off
unless --compile on, tf.data autotuning off, TF32 as --precision says, BatchNorm momentum/epsilon
and Adam epsilon aligned. In `defaults` none of these is touched (a value left None in the config),
and everything is read back either way (`settings`). Mixed precision (bf16/fp16) is Keras' global
`mixed_bfloat16` / `mixed_float16` policy with the input transform and the head in float32 (so
the logits and the loss are), and for fp16 Keras' LossScaleOptimizer.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ..data import MEAN, STD, Bundle  # noqa: E402
from ..models import SPECS, f32, head_init, input_transform, transform_mode  # noqa: E402
from ..weights import (FILES, WeightsFileError, cache_dir, file_for, get_hint, location, offline_hint,  # noqa: E402
                       staged_problem, start_record, torchvision_file)
from .keras_port import export_state, port, torchvision_padding, torchvision_resnet50  # noqa: E402
from ..telemetry.timeline import (EPOCH_START, EPOCH_STOP, EVAL_START, EVAL_STOP, FIRST_STEP_END,  # noqa: E402
                                 FIRST_STEP_START, LAST_STEP_END, RUN_START, RUN_STOP, USER_WORK_START,
                                 USER_WORK_STOP, Timeline)
from .protocol import BackendError, WeightsError, nonfinite_error  # noqa: E402


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
    step where the loss turned non-finite. Keras resets metrics at each epoch start."""

    def __init__(self, name: str = "first_nonfinite_step", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.step = self.add_variable(shape=(), initializer="zeros", dtype="int64", name="step")
        self.first = self.add_variable(shape=(), initializer=keras.initializers.Constant(-1), dtype="int64",
                                       name="first")

    def update_state(self, y_true, y_pred, sample_weight=None):
        finite = keras.ops.all(keras.ops.isfinite(y_pred))
        self.first.assign(keras.ops.where(keras.ops.logical_and(self.first < 0, keras.ops.logical_not(finite)),
                                          self.step, self.first))
        self.step.assign_add(1)

    def result(self):
        return self.first

    def reset_state(self):
        self.step.assign(0)
        self.first.assign(-1)


PREFETCH = 4  # batches ready ahead of the training step


class _StepClock:
    """Step boundaries where the steps happen: `fit` calls the model's train function once per step,
    and this wraps it (see `_instrument`). The first and the last step of an epoch are synchronised
    and recorded as they finish, so everything Keras does after the last step (epoch metrics,
    validation set-up, callbacks, a fresh iterator) lands between epochs, not in the steps.
    Callbacks cannot do this: overriding a *_batch_end hook makes Keras convert the logs to numpy
    after every step on the main thread (a device sync per step)."""

    def __init__(self, timeline: Timeline, steps_per_epoch: int) -> None:
        self.timeline, self.steps, self.epoch, self.step = timeline, steps_per_epoch, 0, 0

    def begin_epoch(self, epoch: int) -> None:
        self.epoch, self.step = epoch, 0

    def __call__(self, inner, iterator):
        step, self.step = self.step, self.step + 1
        if step == 0:
            self.timeline.record(FIRST_STEP_START, epoch=self.epoch)
        logs = inner(iterator)
        if step == 0 or step == self.steps - 1:
            tf.test.experimental.sync_devices()
            if step == 0:
                self.timeline.record(FIRST_STEP_END, epoch=self.epoch)
            if step == self.steps - 1:
                self.timeline.record(LAST_STEP_END, epoch=self.epoch)
        return logs


class _TimelineCallback(keras.callbacks.Callback):
    """Epoch and validation boundaries (the steps are the StepClock's), from the main thread."""

    def __init__(self, timeline: Timeline, backend: "TensorFlowBackend", clock: _StepClock) -> None:
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
        bad = int(logs.get("first_nonfinite_step", -1))
        if bad >= 0:
            self.model.stop_training = True
            self.backend.diverged = (epoch, bad)
        self.timeline.record(EPOCH_STOP, epoch=epoch, memory=self.backend.memory(), loss=logs.get("loss"),
                             val_accuracy=logs.get("val_accuracy"))


def configure(cfg: dict[str, Any]) -> None:
    """The process-wide settings of a setup (the backend and the standalone bare loop share it)."""
    if cfg.get("setup", "matched") == "matched":  # else TF reserves nearly all GPU memory up front
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    if cfg.get("precision") is not None:  # None: TensorFlow's default (TF32 on), Keras' float32 policy
        tf.config.experimental.enable_tensor_float_32_execution(cfg["precision"] == "tf32")
    set_policy(cfg)


def set_policy(cfg: dict[str, Any]) -> None:
    """Keras' global dtype policy for the precision; again after every `clear_session`, which resets it."""
    if cfg.get("precision") is not None:
        keras.mixed_precision.set_global_policy(POLICIES.get(cfg["precision"], "float32"))


POLICIES = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
DENSE_OPS = r"^(Conv2D|Conv2DBackprop|DepthwiseConv2dNative|MatMul|BatchMatMul)"  # what MFU counts (as torch's counter)


class _SleepCallback(keras.callbacks.Callback):
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


class TensorFlowBackend:
    framework = "tensorflow"

    def __init__(self, cfg: dict[str, Any], bundle: Bundle, timeline: Timeline) -> None:
        self.cfg, self.bundle, self.timeline = cfg, bundle, timeline
        self.matched = cfg.get("setup", "matched") == "matched"
        gpus = tf.config.list_physical_devices("GPU")
        configure(cfg)
        if cfg["device"] == "gpu" and not gpus:
            build = tf.sysconfig.get_build_info()
            raise BackendError(f"--device gpu, but TensorFlow {tf.__version__} (built for CUDA "
                               f"{build.get('cuda_version')}, cuDNN {build.get('cudnn_version')}) sees no "
                               f"GPU; install tensorflow[and-cuda] matching the driver")
        keras.utils.set_random_seed(cfg["seed"])
        self.gpu = bool(gpus) and cfg["device"] == "gpu"
        with tf.device("/CPU:0"):  # host-side arrays; batches go to the device through tf.data
            self.train_x = tf.constant(np.asarray(bundle.train.images))
            self.train_y = tf.constant(np.asarray(bundle.train.labels))
        self.model: keras.Model | None = None
        self.ported_states: dict[str, dict[str, np.ndarray]] = {}  # --weights same: checkpoint path -> arrays
        self.clock: _StepClock | None = None  # set while `fit` runs
        self.test_callbacks: list[keras.callbacks.Callback] = []  # the tests' own (a user's callbacks)

    @staticmethod
    def is_out_of_memory(exc: BaseException) -> bool:
        return isinstance(exc, tf.errors.ResourceExhaustedError)

    def info(self) -> dict[str, Any]:
        build = tf.sysconfig.get_build_info()
        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0]) \
            if self.gpu else {}
        return dict(framework="tensorflow", framework_version=tf.__version__, keras_version=keras.__version__,
                    cuda_build=build.get("cuda_version"), cudnn_version=build.get("cudnn_version"),
                    device=self.cfg["device"], device_name=details.get("device_name", "cpu"),
                    cpu_threads=tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count(),
                    gpus_visible=len(tf.config.list_physical_devices("GPU")),
                    tf32_matmul=tf.config.experimental.tensor_float_32_execution_enabled(),
                    tf32_conv=tf.config.experimental.tensor_float_32_execution_enabled(),
                    cudnn_autotune=os.environ.get("TF_CUDNN_USE_AUTOTUNE", "1") != "0",
                    memory_growth=self._memory_growth(), setup=self.cfg.get("setup", "matched"))

    @staticmethod
    def _memory_growth() -> bool | None:
        """Read back from TensorFlow; None without a GPU (nothing to grow)."""
        gpus = tf.config.list_physical_devices("GPU")
        return all(tf.config.experimental.get_memory_growth(g) for g in gpus) if gpus else None

    # -- model -----------------------------------------------------------------------------
    def _backbone(self, name: str) -> keras.Model:
        """keras.applications' network: random init (`none`), Keras' ImageNet checkpoint (`imagenet`:
        the staged folder's file, else Keras' cache, downloaded there when absent), or torchvision's
        ported into it (`same`)."""
        spec, size, weights = SPECS[name], self.cfg["image_size"], self.cfg["weights"]
        cls = getattr(keras.applications, spec.keras)
        build = lambda w: cls(include_top=False, weights=w, input_shape=(size, size, 3), pooling="avg")  # noqa: E731
        self.weights_file = None
        if weights == "none":
            return build(None)
        if weights == "same":
            return self._same_start(name, build)
        f, folder = file_for("keras", name, size), self.cfg.get("weights_dir")
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
                raise WeightsError(f"ImageNet weights for tensorflow {name} are not in the Keras cache "
                                   f"({cache_dir('keras')}) and cannot be downloaded "
                                   f"({str(e).splitlines()[0][:200]}); {offline_hint(f)}, or run with "
                                   f"--weights none") from None
        self.weights_file = str(path)
        return net

    def _same_start(self, name: str, build) -> keras.Model:
        """torchvision's checkpoint (the staged folder's, else torch.hub's cache, fetched there and
        hash-checked when absent) ported into the Keras network (BUILD(None)); MobileNetV2 takes
        torchvision's padding, ResNet50 is torchvision's v1.5 built in Keras."""
        f = FILES[("torchvision", name)]
        try:
            path = torchvision_file(name, self.cfg.get("weights_dir"))
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
        size = self.cfg["image_size"]
        net = torchvision_resnet50((size, size, 3)) if name == "resnet50" else build(None)
        if name == "mobilenet_v2":
            net = torchvision_padding(net)
        try:
            port(name, self.ported_states[str(path)], net, str(path))
        except ValueError as e:
            raise WeightsError(f"{e}; {get_hint(f, path.parent)}") from None
        self.weights_file = str(path)
        return net

    def _torchvision_init(self, backbone: keras.Model) -> None:
        """Random init as torchvision does it (He normal, fan_out, zero bias): Keras' glorot-uniform
        default would hand TensorFlow a different, for VGG19 untrainable, starting point."""
        rng = np.random.default_rng([self.cfg["seed"], 0x1917])
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

    def build(self, name: str) -> dict[str, Any]:
        keras.backend.clear_session()
        set_policy(self.cfg)
        keras.utils.set_random_seed(self.cfg["seed"])
        spec = SPECS[name]
        self.transform = transform_mode("tensorflow", name, self.cfg["preprocess"], self.cfg["weights"])
        inputs = keras.Input((32, 32, 3), dtype="uint8")
        self.backbone = backbone = self._backbone(name)
        if self.weights_file is None:
            self._torchvision_init(backbone)
        self.head_only = self.cfg.get("train_layers", "all") == "head"
        if self.head_only:  # Keras: a BatchNormalization layer that is not trainable runs in inference mode
            backbone.trainable = False
        for layer in backbone.layers:  # None: as keras.applications ships it
            if isinstance(layer, keras.layers.BatchNormalization):
                if self.cfg.get("bn_momentum") is not None:
                    layer.momentum = 1.0 - self.cfg["bn_momentum"]  # Keras' m is torch's 1 - m
                if self.cfg.get("bn_eps") is not None:
                    layer.epsilon = self.cfg["bn_eps"]
        head = keras.layers.Dense(10, name="head", dtype="float32")  # float32 logits under a mixed policy
        outputs = head(backbone(InputTransform(self.transform, self.cfg["image_size"])(inputs)))
        head.set_weights(list(head_init(spec.feature_dim, self.cfg["seed"])))
        self.model = keras.Model(inputs, outputs)
        if self.cfg["optimizer"] == "sgd":
            opt = keras.optimizers.SGD(self.cfg["lr"], momentum=self.cfg["momentum"])
        elif self.cfg.get("adam_eps") is not None:
            opt = keras.optimizers.Adam(self.cfg["lr"], epsilon=self.cfg["adam_eps"])
        else:
            opt = keras.optimizers.Adam(self.cfg["lr"])
        if keras.mixed_precision.global_policy().name == "mixed_float16":  # compile() would wrap it alike
            opt = keras.optimizers.LossScaleOptimizer(opt)
        jit = {"on": True, "off": False, None: "auto"}[self.cfg.get("compile")]  # "auto": Keras' default
        self.model.compile(optimizer=opt,
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                           metrics=["accuracy", FirstNonFiniteStep()], jit_compile=jit)
        self._instrument()
        self.step_iterator = None
        self.start = self._start_record(name)
        return self.describe(name)

    def _start_record(self, name: str) -> dict[str, Any]:
        """Which numbers the model starts from (see weights.start_record)."""
        digest = hashlib.sha256()
        for w in self.model.weights:
            digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
        same = self.cfg["weights"] == "same"
        return start_record("torchvision" if same else "keras", name, self.weights_file, digest.hexdigest(),
                            self.cfg["seed"], ported=same, image_size=self.cfg["image_size"])

    def _instrument(self) -> None:
        """Wrap the train function `fit` calls once per step, so the StepClock sees each step (a
        counter and, at the first and last step of an epoch, a sync). `train_steps` calls the same
        function; outside `fit` the wrapper only passes through."""
        assert self.model is not None
        self.model.make_train_function()
        inner = self.model.train_function

        def train_function(iterator):
            clock = self.clock
            return inner(iterator) if clock is None else clock(inner, iterator)

        self.model.train_function = train_function

    def describe(self, name: str) -> dict[str, Any]:
        assert self.model is not None
        bns = [layer for layer in self.backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
        opt = self._inner(self.model.optimizer)  # fp16: the optimizer inside the LossScaleOptimizer
        if self.cfg["optimizer"] == "sgd":
            optimizer = dict(name="sgd", lr=f32(opt.learning_rate), momentum=f32(opt.momentum),
                             nesterov=opt.nesterov, weight_decay=f32(opt.weight_decay or 0))
        else:
            optimizer = dict(name="adam", lr=f32(opt.learning_rate), beta_1=f32(opt.beta_1), beta_2=f32(opt.beta_2),
                             eps=f32(opt.epsilon), weight_decay=f32(opt.weight_decay or 0))
        count = lambda ws: int(sum(np.prod(w.shape) for w in ws))  # noqa: E731
        return dict(framework="tensorflow", model=name,
                    trainable_params=count(self.model.trainable_weights),
                    non_trainable_params=count(self.model.non_trainable_weights),
                    batchnorm=sorted({(f32(1.0 - b.momentum), f32(b.epsilon)) for b in bns}) or "none",
                    optimizer=optimizer, loss="softmax cross-entropy from logits, mean over batch",
                    input_transform=self.transform, precision=self.cfg.get("precision") or "default",
                    image_size=self.cfg["image_size"], compile=self.cfg.get("compile") or "default",
                    init=self.cfg["weights"] if self.weights_file else "he_normal(fan_out), as torchvision",
                    train_layers=self.cfg.get("train_layers", "all"), start=self.start,
                    frozen_params=count(w for w in self.model.non_trainable_weights
                                        if not any(w is s for b in bns for s in (b.moving_mean, b.moving_variance))),
                    backbone_bn_in_training=("inference (frozen)" if self.head_only else "batch statistics")
                    if bns else "none",
                    settings=self.settings(bns))

    def settings(self, bns: list) -> dict[str, Any]:
        """The framework settings the setups differ in, read back from TensorFlow and Keras."""
        tf32 = tf.config.experimental.tensor_float_32_execution_enabled()
        opt, growth = self.model.optimizer, self._memory_growth()  # opt: the loss scaler under fp16
        autotune = self._train_dataset(self.bundle.order[:1]).options().autotune.enabled  # from the pipeline fit gets
        autotune = True if autotune is None else bool(autotune)  # None: tf.data's default, which is on
        allocator = {True: "BFC, grows as needed (memory growth)", False: "BFC, reserves the GPU up front",
                     None: "BFC (no GPU)"}[growth]
        return dict(setup=self.cfg.get("setup", "matched"), tf32_matmul=tf32, tf32_conv=tf32,
                    xla=self.compiled, compile_requested=str(self.cfg.get("compile") or "auto"),
                    memory_growth=growth, memory_allocator=allocator,
                    cudnn_autotune=os.environ.get("TF_CUDNN_USE_AUTOTUNE", "1") != "0",
                    input_autotune=autotune, prefetch="AUTOTUNE" if not self.matched else PREFETCH,  # as configured
                    bn_momentum=sorted({f32(1.0 - b.momentum) for b in bns}) or None,
                    bn_eps=sorted({f32(b.epsilon) for b in bns}) or None,
                    adam_eps=f32(self._inner(opt).epsilon) if self.cfg["optimizer"] == "adam" else None,
                    compute_dtype=self.backbone.compute_dtype, policy=keras.mixed_precision.global_policy().name,
                    head_dtype=f"{self.model.get_layer('head').compute_dtype} (float32 policy)",
                    loss_scale=dict(kind="dynamic", initial=f32(opt.initial_scale),
                                    growth_interval=int(opt.dynamic_growth_steps), growth_factor=2.0,
                                    backoff_factor=0.5)  # the factors: Keras constants, not settable
                    if isinstance(opt, keras.optimizers.LossScaleOptimizer) else None,
                    loss_scaler="keras LossScaleOptimizer" if isinstance(opt, keras.optimizers.LossScaleOptimizer)
                    else None,
                    memory_format="channels_last (NHWC)")

    @staticmethod
    def _inner(opt):
        """The optimizer a LossScaleOptimizer wraps (fp16), else OPT."""
        return getattr(opt, "inner_optimizer", opt)

    def count_flops(self) -> dict[str, Any]:
        """FLOPs per image of one training step (forward, loss, gradients) and of its forward part,
        counted by TensorFlow's profiler on the graph of the model as built, traced once (never
        run) at the run's batch size; the forward part is what lies outside the tape's gradient
        scope. Called after the timed work: tracing must not warm anything the time to first step
        measures. MFU counts convolutions and matmuls (2 per multiply-add, as torch's counter);
        the profiler also counts element-wise ops (`train_all_ops_per_image`), and has no formula
        for some dense ops (`uncounted_ops`: depthwise gradients)."""
        import re

        from tensorflow.python.profiler import model_analyzer, option_builder
        assert self.model is not None
        model, bs = self.model, self.cfg["batch_size"]
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        @tf.function
        def train(x, y):
            # Only what trains is watched: a frozen backbone's variables stay trainable tf.Variables
            # underneath, and a tape watching them would add gradient ops that never run (pruned).
            trained = [v.value for v in model.trainable_variables]  # the tf.Variables under Keras' own
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(trained)
                loss = loss_fn(y, model(x, training=True))
            return tape.gradient(loss, trained)

        graph = train.get_concrete_function(tf.TensorSpec((bs, 32, 32, 3), tf.uint8),
                                            tf.TensorSpec((bs,), tf.int32)).graph
        options = option_builder.ProfileOptionBuilder(
            option_builder.ProfileOptionBuilder.float_operation()).with_empty_output().build()
        per_node: dict[str, int] = {}
        stack = [model_analyzer.profile(graph, cmd="graph", options=options)]
        while stack:  # the graph view: one node per op, each holding its own float_ops
            node = stack.pop()
            stack.extend(node.children)
            if node.float_ops:
                per_node[node.name] = node.float_ops
        for op in graph.get_operations():  # see `_conv_gradient_flops`
            flops = _conv_gradient_flops(op)
            if flops is not None:
                per_node[op.name] = flops
        types = {op.name: op.type for op in graph.get_operations()}
        dense = {k: v for k, v in per_node.items() if re.match(DENSE_OPS, types.get(k, ""))}
        by_op: dict[str, int] = {}
        for k, v in per_node.items():
            by_op[types.get(k, "?")] = by_op.get(types.get(k, "?"), 0) + v
        return dict(counter=f"TensorFlow {tf.__version__} profiler (tf.compat.v1.profiler float_operation) on the "
                            f"traced training step; convolutions and matmuls",
                    forward_per_image=sum(v for k, v in dense.items() if not k.startswith("gradient_tape/")) / bs,
                    train_per_image=sum(dense.values()) / bs, train_all_ops_per_image=sum(per_node.values()) / bs,
                    by_op={k: v // bs for k, v in sorted(by_op.items())},
                    uncounted_ops=sorted(t for t in set(types.values()) if re.match(DENSE_OPS, t) and t not in by_op))

    @property
    def compiled(self) -> bool:
        """Whether Keras compiled the steps with XLA (`jit_compile` as resolved; the bare reference follows it)."""
        return bool(self.model is not None and self.model.jit_compile)

    def add_sleep_hooks(self, epoch_end_s: float, eval_begin_s: float) -> None:
        """A user's per-epoch work, for the tests (the worker's fault-injection commands only)."""
        self.test_callbacks.append(_SleepCallback(self.timeline, epoch_end_s, eval_begin_s))

    def reset_peak_memory(self) -> None:
        if self.gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")

    def memory(self) -> dict[str, Any]:
        """The BFC allocator's view since the last reset; None on the CPU (TF keeps no stats there)."""
        if not self.gpu:
            return dict(peak=None, reserved_peak=None, current=None)
        info = tf.config.experimental.get_memory_info("GPU:0")
        return dict(peak=info["peak"], reserved_peak=None, current=info["current"])

    # -- data ------------------------------------------------------------------------------
    def _finish(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        """matched: tf.data autotuning off. Its optimiser thread sleeps for growing periods (up to a
        minute) and deleting the iterator waits for it: `fit` returned 5-40 s after its last epoch,
        idle (gdb: ~RootDataset::Iterator waiting on Model::OptimizeLoop). The pipeline is one
        gather from memory; a fixed prefetch keeps it ahead of the model (see input_headroom).
        defaults: `prefetch(tf.data.AUTOTUNE)` with autotuning on, as tf.data's guide writes it."""
        if not self.matched:
            return ds.prefetch(tf.data.AUTOTUNE)
        options = tf.data.Options()
        options.autotune.enabled = False
        return ds.prefetch(PREFETCH).with_options(options)

    def _train_dataset(self, order: np.ndarray, repeat: bool = False) -> tf.data.Dataset:
        bs = self.cfg["batch_size"]
        ds = tf.data.Dataset.from_tensor_slices(np.asarray(order).reshape(-1))
        if repeat:
            ds = ds.repeat()
        gather = lambda idx: (tf.gather(self.train_x, idx), tf.gather(self.train_y, idx))  # noqa: E731
        return self._finish(ds.batch(bs, drop_remainder=True).map(gather))

    def _test_dataset(self) -> tf.data.Dataset:
        test = self.bundle.test
        return self._finish(tf.data.Dataset.from_tensor_slices((np.asarray(test.images), np.asarray(test.labels)))
                            .batch(self.cfg["batch_size"]))

    def peek_labels(self, batches: int) -> list[list[int]]:
        """Labels of the first BATCHES training batches exactly as `fit` feeds them."""
        ds = self._train_dataset(self.bundle.order)
        return [y.numpy().tolist() for _, y in ds.take(batches)]

    # -- running ---------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        assert self.model is not None
        start = time.perf_counter()
        logs = self.model.evaluate(self._test_dataset(), verbose=0, return_dict=True)
        n = len(self.bundle.test)  # Keras' accuracy is a float32 mean: back to correct / n, as torch's
        return dict(accuracy=round(float(logs["accuracy"]) * n) / n, loss=float(logs["loss"]), n=n,
                    seconds=time.perf_counter() - start)

    def logits(self, count: int) -> list[list[float]]:
        assert self.model is not None
        out = self.model(np.asarray(self.bundle.test.images[:count]), training=False)
        return keras.ops.convert_to_numpy(out).astype(float).tolist()

    def fit(self, epochs: int) -> dict[str, Any]:
        assert self.model is not None
        order, bs = self.bundle.order, self.cfg["batch_size"]
        steps = order.shape[1] // bs
        self.clock = _StepClock(self.timeline, steps)
        callback = _TimelineCallback(self.timeline, self, self.clock)
        self.diverged: tuple[int, int] | None = None
        self.timeline.record(RUN_START)
        try:
            history = self.model.fit(
                self._train_dataset(order[:epochs]), epochs=epochs, steps_per_epoch=steps, verbose=0,
                validation_data=self._test_dataset() if self.cfg["eval_every_epoch"] else None,
                callbacks=[callback, *self.test_callbacks], shuffle=False)
        finally:
            self.clock = None
        self.timeline.record(RUN_STOP)
        if self.diverged is not None:
            raise nonfinite_error("tensorflow", *self.diverged)
        h = history.history
        evals = [dict(accuracy=a, loss=lo) for a, lo in zip(h.get("val_accuracy", []), h.get("val_loss", []))]
        return dict(epoch_losses=[float(v) for v in h["loss"]], epoch_evals=evals, steps_per_epoch=steps,
                    images=epochs * steps * bs)

    def input_pipeline(self, count: int) -> dict[str, Any]:
        """COUNT batches through the tf.data pipeline `fit` uses (and onto the device), synchronised."""
        it = iter(self._train_dataset(self.bundle.order, repeat=True))
        next(it)  # build the pipeline outside the timing
        device = "/GPU:0" if self.gpu else "/CPU:0"
        start = time.perf_counter()
        for _ in range(count):
            x, y = next(it)
            with tf.device(device):
                x, y = tf.identity(x), tf.identity(y)
        tf.test.experimental.sync_devices()
        return dict(seconds=time.perf_counter() - start, batches=count)

    def train_steps(self, count: int) -> dict[str, Any]:
        """COUNT steps down the per-step path of `fit` (Keras 3: on_train_batch_begin, the train
        function, on_train_batch_end dispatched to Keras' callback thread with the logs), on a
        persistent iterator, then synchronise. What `fit` adds per epoch (metrics, validation,
        epoch callbacks) is between-epoch work and is measured there."""
        assert self.model is not None
        if self.step_iterator is None:
            self.step_iterator = iter(self._train_dataset(self.bundle.order, repeat=True))
        self.model.reset_metrics()
        callbacks = keras.callbacks.CallbackList([keras.callbacks.Callback(), *self.test_callbacks],
                                                 add_history=True, model=self.model, verbose=0, epochs=1,
                                                 steps=count)
        callbacks.on_train_begin()
        start = time.perf_counter()
        for step in range(count):
            callbacks.on_train_batch_begin(step)
            logs = self.model.train_function(self.step_iterator)
            callbacks.on_train_batch_end(step, logs)
        tf.test.experimental.sync_devices()
        seconds = time.perf_counter() - start
        callbacks.on_train_end()  # joins Keras' callback thread, as the end of `fit` does
        bad = int(logs["first_nonfinite_step"])
        if bad >= 0:
            raise nonfinite_error("tensorflow", None, bad)
        return dict(seconds=seconds, images=count * self.cfg["batch_size"], loss=float(logs["loss"]))


def _conv_gradient_flops(op) -> int | None:
    """A convolution gradient's FLOPs, as its forward convolution's: 2 x the output gradient's elements
    x kh x kw x Cin. TensorFlow's profiler counts these ops at the output size 'same' padding would
    give (ceil(input / stride)), which over-counts every 'valid' convolution behind an explicit
    ZeroPadding2D: 2.25x for a 3x3 on a 4x4 map, 1.8x for torchvision's ResNet50 at 32 px."""
    if op.type not in ("Conv2DBackpropInput", "Conv2DBackpropFilter"):
        return None
    grad = op.inputs[2].shape  # dL/d(output), NHWC
    kernel = (op.inputs[1] if op.type == "Conv2DBackpropInput" else op.outputs[0]).shape  # kh, kw, Cin, Cout
    if not (grad.is_fully_defined() and kernel.is_fully_defined()):
        return None
    return 2 * grad.num_elements() * kernel[0] * kernel[1] * kernel[2]


def bare_step(model: str, batch: int, device: str, size: int, compiled: bool = False, precision: str | None = None,
              channels_last: bool = False, train_layers: str = "all"):
    """The overhead check's reference: a hand-written `tf.function` training step (GradientTape) on
    a device-resident batch, using none of the class above. Returns (step, sync). It runs under the
    process's settings (the suite's, set by `configure`: TF32 and the mixed-precision policy, with
    loss scaling under mixed_float16 as `compile` adds it), with XLA when the suite's steps use it,
    and changes no process-wide setting (its inputs come from a stateless RNG; building its model
    advances Keras' seed generator, which the suite's `build` reseeds)."""
    base = getattr(keras.applications, SPECS[model].keras)(include_top=False, weights=None,
                                                          input_shape=(size, size, 3), pooling="avg")
    base.trainable = train_layers != "head"  # what the suite trains (--train-layers)
    m = keras.Sequential([base, keras.layers.Dense(10, dtype="float32")])
    opt = keras.optimizers.SGD(0.01, momentum=0.9)
    scaled = keras.mixed_precision.global_policy().name == "mixed_float16"
    if scaled:  # built before tracing: an unbuilt one bakes its initial scale into the graph
        opt = keras.optimizers.LossScaleOptimizer(opt)
        opt.build(m.trainable_variables)  # the backbone has its input shape: m is built
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x = tf.cast(tf.random.stateless_uniform((batch, 32, 32, 3), (0, 1), 0, 256, dtype=tf.int32), tf.uint8)
    y = tf.random.stateless_uniform((batch,), (0, 2), 0, 10, dtype=tf.int32)
    mean, std = tf.constant(MEAN) * 255, tf.constant(STD) * 255

    @tf.function(jit_compile=compiled)
    def step():
        with tf.GradientTape() as tape:
            xb = (tf.cast(x, tf.float32) - mean) / std
            if size != 32:
                xb = tf.image.resize(xb, (size, size), method="bilinear")
            loss = loss_fn(y, m(xb, training=True))
            scaled_loss = opt.scale_loss(loss) if scaled else loss
        grads = tape.gradient(scaled_loss, m.trainable_variables)  # apply_gradients unscales
        opt.apply_gradients(zip(grads, m.trainable_variables))
        return loss

    return step, tf.test.experimental.sync_devices
