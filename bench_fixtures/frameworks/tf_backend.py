"""TensorFlow backend: Keras 3 on TensorFlow, trained the idiomatic way (`fit` on tf.data).

Imported only inside a TensorFlow worker process. The Keras half (model, head, alignment, `fit`,
timeline) is `keras_common`, shared with the JAX backend; this file is what TensorFlow adds. In the
`matched` setup, the defaults that would make the comparison unequal are set explicitly: memory
growth on, XLA (`jit_compile`) off unless --compile on, tf.data autotuning off, TF32 as --precision
says (BatchNorm momentum/epsilon and Adam epsilon: keras_common). In `defaults` none of these is
touched (a value left None in the config), and everything is read back either way (`settings`).
Mixed precision (bf16/fp16) is Keras' global `mixed_bfloat16` / `mixed_float16` policy with the
input transform and the head in float32 (so the logits and the loss are), and for fp16 Keras'
LossScaleOptimizer.
"""
from __future__ import annotations

import os
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ..config import BenchConfig  # noqa: E402
from ..data import MEAN, STD, Bundle  # noqa: E402
from ..data.bundle import replica_shard  # noqa: E402
from ..models import SPECS  # noqa: E402
from ..telemetry.timeline import Timeline  # noqa: E402
from .keras_common import KerasBackend, host_number, set_policy  # noqa: E402
from .protocol import BackendError, collective_timeout_s, replica_from_env  # noqa: E402

PREFETCH = 4  # batches ready ahead of the training step


def configure(cfg: BenchConfig) -> None:
    """The process-wide settings of a setup (the backend and the standalone bare loop share it)."""
    if cfg.setup == "matched":  # else TF reserves nearly all GPU memory up front
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    if cfg.precision is not None:  # None: TensorFlow's default (TF32 on), Keras' float32 policy
        tf.config.experimental.enable_tensor_float_32_execution(cfg.precision == "tf32")
    set_policy(cfg.precision)


DENSE_OPS = r"^(Conv2D|Conv2DBackprop|DepthwiseConv2dNative|MatMul|BatchMatMul)"  # what MFU counts (as torch's counter)


class TensorFlowBackend(KerasBackend):
    framework = "tensorflow"

    def __init__(self, cfg: BenchConfig, bundle: Bundle, timeline: Timeline) -> None:
        super().__init__(cfg, bundle, timeline)
        gpus = tf.config.list_physical_devices("GPU")
        configure(cfg)
        self.replica = replica_from_env(cfg, "tf_config")
        self.strategy: tf.distribute.Strategy | None = None
        self.distributed: dict[str, Any] | None = None
        if self.replica.world > 1:  # before any other TensorFlow op, as the strategy requires
            self._init_strategy(bool(gpus) and cfg.device == "gpu")
        if cfg.device == "gpu" and not gpus:
            build = tf.sysconfig.get_build_info()
            raise BackendError(f"--device gpu, but TensorFlow {tf.__version__} (built for CUDA "
                               f"{build.get('cuda_version')}, cuDNN {build.get('cudnn_version')}) sees no "
                               f"GPU; install tensorflow[and-cuda] matching the driver")
        keras.utils.set_random_seed(cfg.seed)
        self.gpu = bool(gpus) and cfg.device == "gpu"
        with tf.device("/CPU:0"):  # host-side arrays; batches go to the device through tf.data
            self.train_x = tf.constant(np.asarray(bundle.train.images))
            self.train_y = tf.constant(np.asarray(bundle.train.labels))
        self.step_iterator = None

    def _init_strategy(self, gpu: bool) -> None:
        """MultiWorkerMirroredStrategy from TF_CONFIG: one replica per process, as torch's, with the
        collective implementation chosen to match torch's (ring all-reduce on a CPU, as gloo; NCCL
        on GPUs). Each replica builds the input of its own shard (`_replica_input`)."""
        comm = tf.distribute.experimental.CommunicationImplementation
        threads = self.replica.threads
        if not gpu:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        start = time.perf_counter()
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=comm.NCCL if gpu else comm.RING, timeout_seconds=collective_timeout_s(self.cfg))
        self.strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        with self.strategy.scope():  # the first collective: every replica joined
            self.strategy.reduce("SUM", self.strategy.run(lambda: tf.constant(1)), axis=None)
        setup_s = time.perf_counter() - start
        if self.strategy.num_replicas_in_sync != self.replica.world:
            raise BackendError(f"TF_CONFIG lists {self.replica.world} workers, but the strategy has "
                               f"{self.strategy.num_replicas_in_sync} replicas in sync: one GPU (or CPU) per worker")
        self.global_batch = self.cfg.batch_size * self.replica.world
        _fix_keras_multi_worker()
        self.distributed = self.replica.describe(
            "tf.distribute.MultiWorkerMirroredStrategy", f"{'NCCL' if gpu else 'RING'} all-reduce",
            setup_s, tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count())

    def first_nonfinite(self, logs: dict[str, Any]) -> int:
        """With replicas, read from the metric in cross-replica context (summed state, see
        FirstNonFiniteStep): the step logs hold the replicas' mean of each one's own result."""
        if self.strategy is None:
            return super().first_nonfinite(logs)
        return int(host_number(self.nonfinite.result()))

    def scope(self):
        return self.strategy.scope() if self.strategy is not None else super().scope()

    @staticmethod
    def is_out_of_memory(exc: BaseException) -> bool:
        return isinstance(exc, tf.errors.ResourceExhaustedError)

    def info(self) -> dict[str, Any]:
        build = tf.sysconfig.get_build_info()
        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0]) \
            if self.gpu else {}
        return dict(framework="tensorflow", framework_version=tf.__version__, keras_version=keras.__version__,
                    cuda_build=build.get("cuda_version"), cudnn_version=build.get("cudnn_version"),
                    device=self.cfg.device, device_name=details.get("device_name", "cpu"),
                    cpu_threads=tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count(),
                    gpus_visible=len(tf.config.list_physical_devices("GPU")),
                    tf32_matmul=tf.config.experimental.tensor_float_32_execution_enabled(),
                    tf32_conv=tf.config.experimental.tensor_float_32_execution_enabled(),
                    cudnn_autotune=os.environ.get("TF_CUDNN_USE_AUTOTUNE", "1") != "0",
                    memory_growth=self._memory_growth(), setup=self.cfg.setup,
                    distributed=self.distributed)

    @staticmethod
    def _memory_growth() -> bool | None:
        """Read back from TensorFlow; None without a GPU (nothing to grow)."""
        gpus = tf.config.list_physical_devices("GPU")
        return all(tf.config.experimental.get_memory_growth(g) for g in gpus) if gpus else None

    def jit_compile(self) -> bool | str:
        return {"on": True, "off": False, None: "auto"}[self.cfg.compile]  # "auto": Keras' default

    def built(self) -> None:
        self.step_iterator = None
        self.eval_forward = None
        if self.strategy is not None:
            # Keras 3's `fit` under MultiWorkerMirroredStrategy fails reducing its first batch to build
            # the model (keras-team/keras#20585, open). Built here from one plain batch instead, and
            # the model forgets its strategy: `fit` takes it from the scope it runs in.
            with self.strategy.scope():
                self.model._symbolic_build(data_batch=(self.bundle.train.images[:1], self.bundle.train.labels[:1]))
            self.model._distribute_strategy = None

    def runtime_settings(self) -> dict[str, Any]:
        tf32, growth = tf.config.experimental.tensor_float_32_execution_enabled(), self._memory_growth()
        autotune = self._train_dataset(self.bundle.order[:1]).options().autotune.enabled  # from the pipeline fit gets
        autotune = True if autotune is None else bool(autotune)  # None: tf.data's default, which is on
        allocator = {True: "BFC, grows as needed (memory growth)", False: "BFC, reserves the GPU up front",
                     None: "BFC (no GPU)"}[growth]
        return dict(tf32_matmul=tf32, tf32_conv=tf32, xla=self.compiled,
                    compile_requested=str(self.cfg.compile or "auto"),
                    memory_growth=growth, memory_allocator=allocator,
                    cudnn_autotune=os.environ.get("TF_CUDNN_USE_AUTOTUNE", "1") != "0",
                    input_autotune=autotune, prefetch="AUTOTUNE" if not self.matched else PREFETCH)  # as configured

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
        model, bs = self.model, self.cfg.batch_size
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

    def reset_peak_memory(self) -> None:
        if self.gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")

    def memory(self) -> dict[str, Any]:
        """The BFC allocator's view since the last reset; None on the CPU (TF keeps no stats there)."""
        if not self.gpu:
            return dict(peak=None, reserved_peak=None, current=None)
        info = tf.config.experimental.get_memory_info("GPU:0")
        return dict(peak=info["peak"], reserved_peak=None, current=info["current"])

    def evaluate(self) -> dict[str, Any]:
        """Keras' `evaluate`; with replicas, this replica's own model over the whole test split, as
        torch's replicas evaluate (Keras' metrics under the strategy would report the replicas' mean,
        and the group averages the replicas itself)."""
        if self.strategy is None:
            return super().evaluate()
        start = time.perf_counter()
        if self.eval_forward is None:
            model = self.model
            self.eval_forward = tf.function(lambda x: model(x, training=False))
        test, bs = self.bundle.test, self.cfg.batch_size
        correct, loss = 0, 0.0
        for i in range(0, len(test), bs):
            logits = self.eval_forward(tf.constant(np.asarray(test.images[i:i + bs]))).numpy().astype(np.float64)
            y = np.asarray(test.labels[i:i + bs])
            z = logits - logits.max(axis=1, keepdims=True)  # softmax cross-entropy from logits, as Keras'
            loss += float((np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]).sum())
            correct += int((logits.argmax(axis=1) == y).sum())
        n = len(test)
        return dict(accuracy=correct / n, loss=loss / n, n=n, seconds=time.perf_counter() - start)

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
        bs = self.cfg.batch_size
        ds = tf.data.Dataset.from_tensor_slices(np.asarray(order).reshape(-1))
        if repeat:
            ds = ds.repeat()
        gather = lambda idx: (tf.gather(self.train_x, idx), tf.gather(self.train_y, idx))  # noqa: E731
        return self._finish(ds.batch(bs, drop_remainder=True).map(gather))

    def _replica_input(self, order: np.ndarray, repeat: bool = False) -> Any:
        """What the steps read: the pipeline above; with replicas, built by each worker for its own
        shard of the order (`replica_shard`, as torch's replicas get it) and handed to the strategy
        as per-replica batches, so no replica gathers images another one trains on."""
        if self.strategy is None:
            return self._train_dataset(order, repeat)
        r, bs = self.replica, self.cfg.batch_size

        def shard(context: tf.distribute.InputContext) -> tf.data.Dataset:
            if context.input_pipeline_id != r.rank:  # one pipeline per worker, numbered as TF_CONFIG's tasks
                raise BackendError(f"tf.distribute asked replica {r.rank} for input pipeline {context.input_pipeline_id}")
            return self._train_dataset(replica_shard(order, r.rank, r.world, bs), repeat)

        return self.strategy.distribute_datasets_from_function(shard)

    def _test_dataset(self) -> tf.data.Dataset:
        test = self.bundle.test
        return self._finish(tf.data.Dataset.from_tensor_slices((np.asarray(test.images), np.asarray(test.labels)))
                            .batch(self.cfg.batch_size))

    def peek_labels(self, batches: int) -> list[list[int]]:
        """Labels of the first BATCHES training batches exactly as `fit` feeds them."""
        out = []
        for _, y in self._replica_input(self.bundle.order):
            if len(out) == batches:
                break
            out.append(self._local(y).numpy().tolist())
        return out

    def _local(self, value):
        return self.strategy.experimental_local_results(value)[0] if self.strategy is not None and \
            isinstance(value, tf.distribute.DistributedValues) else value

    # -- running ---------------------------------------------------------------------------
    def train_input(self, order: np.ndarray) -> tuple[Any, list]:
        return self._replica_input(order), []

    def test_input(self) -> dict[str, Any]:
        return dict(x=self._test_dataset())

    def validation_input(self) -> dict[str, Any]:
        return dict(validation_data=self._test_dataset())

    def sync(self, outputs: Any = None) -> None:
        if self.strategy is None:
            tf.test.experimental.sync_devices()
            return
        # Under MultiWorkerMirroredStrategy sync_devices reaches for the other workers' devices and
        # fails; reading the step's outputs waits for the step (its all-reduce included) instead.
        for value in tf.nest.flatten(outputs):
            for local in self.strategy.experimental_local_results(value):
                if hasattr(local, "numpy"):
                    local.numpy()
        from tensorflow.python.eager import context
        context.async_wait()  # as Keras' own epoch iterator waits

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

    def run_steps(self, count: int, callbacks: keras.callbacks.CallbackList) -> dict[str, Any]:
        """`fit`'s per-step path on a persistent iterator of the same pipeline."""
        if self.step_iterator is None:
            self.step_iterator = iter(self._replica_input(self.bundle.order, repeat=True))
        for step in range(count):
            callbacks.on_train_batch_begin(step)
            logs = self.model.train_function(self.step_iterator)
            callbacks.on_train_batch_end(step, logs)
        self.sync(logs)
        return logs


def _fix_keras_multi_worker() -> None:
    """Keras 3's TensorFlow trainer reduces each step's scalar logs across workers with
    `strategy.reduce("MEAN", v, axis=0)`, which fails on a scalar (keras-team/keras#20585): `fit`
    under MultiWorkerMirroredStrategy cannot run a step. The mean of a scalar over the replicas is
    `axis=None`; everything else is Keras' own `reduce_per_replica`."""
    from keras.src.backend.tensorflow import trainer
    if getattr(trainer.reduce_per_replica, "bench_fixed", False):
        return
    original = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return keras.tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica.bench_fixed = True
    trainer.reduce_per_replica = reduce_per_replica


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
