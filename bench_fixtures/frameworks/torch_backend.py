"""PyTorch backend: torchvision backbone + shared head, a plain hand-written training loop.

Imported only inside a torch worker process. Synchronises the device wherever a time is taken.
In the `matched` setup cuDNN autotuning, TF32, BatchNorm and Adam epsilon are set as the config
says; in `defaults` (values None) torch's own are kept. Both are read back (`settings`). Mixed
precision (bf16/fp16) is `torch.autocast` around the model, with the head, its logits and the loss
in float32 (as Keras' mixed policies with a float32 head), and for fp16 a GradScaler.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import hashlib
import time
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils import flop_counter

from ..config import PRETRAINED, BenchConfig
from ..data import MEAN, STD, Bundle
from ..data.bundle import replica_shard
from ..models import SPECS, f32, head_init, input_transform, transform_mode
from ..weights import TOP, FILES, WeightsFileError, get_hint, start_record, torchvision_file
from ..telemetry.timeline import (EPOCH_START, EPOCH_STOP, EVAL_START, EVAL_STOP, FIRST_STEP_END, FIRST_STEP_START,
                                 LAST_STEP_END, RUN_START, RUN_STOP, USER_WORK_START, USER_WORK_STOP, Timeline)
from .protocol import BackendError, WeightsError, collective_timeout_s, nonfinite_error, replica_from_env

# Test batches are views of the read-only memory-mapped bundle and are only read; torch's warning
# about it would be the first thing in every worker's log tail.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)


class InputTransform(nn.Module):
    """uint8 NHWC batch -> normalised float NCHW (contiguous), resized on the device if asked."""

    def __init__(self, mode: str, image_size: int) -> None:
        super().__init__()
        order, scale, offset = input_transform(mode)
        self.register_buffer("order", torch.tensor(order), persistent=False)
        self.register_buffer("scale", torch.from_numpy(scale).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("offset", torch.from_numpy(offset).view(1, 3, 1, 1), persistent=False)
        self.image_size = image_size

        self.memory_format = torch.contiguous_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).index_select(1, self.order).float()
        x = (x * self.scale + self.offset).contiguous(memory_format=self.memory_format)
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        return x


class Float32Head(nn.Linear):
    """The classifier in float32 under autocast too: its logits, and so the loss, are float32 in
    both frameworks (Keras: the head layer's dtype policy is float32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(x.device.type, None):
            return super().forward(x.float())


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
LOSS_SCALE_MATCHED = 2.0 ** 15  # Keras' LossScaleOptimizer starts here; torch's GradScaler at 2**16


def autocast(device_type: str, amp: torch.dtype | None):
    """Mixed precision at AMP (None: off). The meta device (FLOP counting) has no autocast."""
    if device_type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=amp or torch.float32, enabled=amp is not None)


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                      scaler: "torch.amp.GradScaler | None") -> None:
    """The backward pass and the update; with fp16's scaler the update is skipped when the scaled
    gradients overflowed, then the scale adjusts. The suite's step and the bare one share it."""
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """torch's formula for a convolution's backward, except the weight gradient: that costs as many
    multiply-adds as the forward convolution. torch's own counts it as if groups were 1, which
    makes MobileNetV2's depthwise layers ~7x a training step's real FLOPs."""
    flops = 0
    if output_mask[0]:
        flops += flop_counter.conv_flop_count(grad_out_shape, w_shape, x_shape, not transposed)
    if output_mask[1]:
        flops += flop_counter.conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return flops


# torch >= 2.9 has `fp32_precision`; older ones only the `allow_tf32` flags. Which one ran is recorded.
TF32_API = "fp32_precision" if hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision") else "allow_tf32"


def tf32_state() -> tuple[bool, bool]:
    """(matmul, convolution) TF32, read back from torch."""
    if TF32_API == "fp32_precision":
        return (torch.backends.cuda.matmul.fp32_precision == "tf32",
                torch.backends.cudnn.conv.fp32_precision == "tf32")
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def configure(cfg: BenchConfig) -> None:
    """The process-wide settings of a setup (the backend and the standalone bare loop share it)."""
    if cfg.precision is not None:  # None: torch's default (TF32 for convolutions only)
        on = cfg.precision == "tf32"  # bf16/fp16: what stays float32 under autocast runs as fp32
        if TF32_API == "fp32_precision":
            torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = \
                "tf32" if on else "ieee"
        else:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    if cfg.setup == "matched":
        torch.backends.cudnn.benchmark = True  # autotuning, as TensorFlow does by default; torch's is off


def without_top(net: nn.Module, model: str) -> nn.Module:
    """torchvision's MODEL network NET less its pooling and classifier (`ModelSpec.torchvision_top`):
    the one child left (VGG's and MobileNetV2's `features`), or the children left, in order."""
    body = [m for n, m in net.named_children() if n not in SPECS[model].torchvision_top]
    return body[0] if len(body) == 1 else nn.Sequential(*body)


class TorchBackend:
    framework = "torch"

    def __init__(self, cfg: BenchConfig, bundle: Bundle, timeline: Timeline) -> None:
        self.cfg, self.bundle, self.timeline = cfg, bundle, timeline
        torch.manual_seed(cfg.seed)
        self.device = torch.device("cuda" if cfg.device == "gpu" else "cpu")
        if cfg.device == "gpu" and not torch.cuda.is_available():
            raise BackendError(f"--device gpu, but torch {torch.__version__} (CUDA {torch.version.cuda}) "
                               f"sees no CUDA device; check the driver and CUDA_VISIBLE_DEVICES")
        configure(cfg)
        self.replica = replica_from_env(cfg, "torchrun")
        self.distributed: dict[str, Any] | None = None
        if self.replica.world > 1:
            self._init_process_group()
        self.amp = AMP_DTYPES.get(cfg.precision or "")
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model: nn.Module | None = None
        self.sleep_hooks = dict(epoch_end=0.0, eval_begin=0.0)  # the tests' stand-in for a user's epoch-end code

    def _init_process_group(self) -> None:
        """torch.distributed from the torchrun-style environment (gloo on a CPU, NCCL on GPUs), this
        replica's threads, and its shard of the shared order; the set-up time is reported apart."""
        import torch.distributed as dist
        r, bs = self.replica, self.cfg.batch_size
        if self.device.type == "cpu":
            torch.set_num_threads(r.threads)
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        start = time.perf_counter()
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=collective_timeout_s(self.cfg)))
        dist.barrier()  # every replica joined
        setup_s = time.perf_counter() - start
        if dist.get_rank() != r.rank or dist.get_world_size() != r.world:
            raise BackendError(f"torch.distributed says rank {dist.get_rank()} of {dist.get_world_size()}, the "
                               f"launcher rank {r.rank} of {r.world}")
        self.bundle = dataclasses.replace(self.bundle, order=replica_shard(self.bundle.order, r.rank, r.world, bs))
        self.distributed = r.describe("torch.distributed DistributedDataParallel", dist.get_backend(), setup_s,
                                      torch.get_num_threads())

    @staticmethod
    def is_out_of_memory(exc: BaseException) -> bool:
        return isinstance(exc, torch.OutOfMemoryError) or (  # CUDA; the CPU allocator raises RuntimeError
            isinstance(exc, RuntimeError) and any(s in str(exc) for s in ("can't allocate memory", "ALLOC_FAILED")))

    def info(self) -> dict[str, Any]:
        cuda = self.device.type == "cuda"
        return dict(framework="torch", framework_version=torch.__version__,
                    torchvision_version=torchvision.__version__, cuda_build=torch.version.cuda,
                    cudnn_version=torch.backends.cudnn.version() if cuda else None,
                    device=self.cfg.device,
                    device_name=torch.cuda.get_device_name(0) if cuda else "cpu",
                    cpu_threads=torch.get_num_threads(), gpus_visible=torch.cuda.device_count(),
                    **self._tf32(), cudnn_autotune=torch.backends.cudnn.benchmark,
                    setup=self.cfg.setup, distributed=self.distributed)

    @staticmethod
    def _tf32() -> dict[str, Any]:
        matmul, conv = tf32_state()
        return dict(tf32_matmul=matmul, tf32_conv=conv, tf32_api=TF32_API)

    # -- model -----------------------------------------------------------------------------
    def _backbone(self, name: str) -> nn.Module:
        """torchvision's network, from its ImageNet checkpoint (`imagenet`, `same`: the staged folder's
        file, else torch.hub's cache, downloaded there when absent) or random init (`none`)."""
        net = getattr(torchvision.models, SPECS[name].torchvision)(weights=None)
        self.weights_file = None
        if self.cfg.weights in PRETRAINED:
            self.weights_file = str(load_checkpoint(net, name, self.cfg.weights_dir))
        return without_top(net, name)

    def build(self, name: str) -> dict[str, Any]:
        torch.manual_seed(self.cfg.seed)
        spec = SPECS[name]
        head = Float32Head(spec.feature_dim, 10)
        kernel, bias = head_init(spec.feature_dim, self.cfg.seed)
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(kernel.T))
            head.bias.copy_(torch.from_numpy(bias))
        self.transform = transform_mode("torch", name, self.cfg.preprocess, self.cfg.weights)
        model = nn.Sequential(OrderedDict(
            transform=InputTransform(self.transform, self.cfg.image_size), backbone=self._backbone(name),
            pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), head=head))
        self.head_only = self.cfg.train_layers == "head"
        if self.head_only:  # transfer learning's first step: only the new head learns
            model.backbone.requires_grad_(False)
        for m in model.modules():  # None: as torchvision ships it
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if self.cfg.bn_momentum is not None:
                    m.momentum = self.cfg.bn_momentum
                if self.cfg.bn_eps is not None:
                    m.eps = self.cfg.bn_eps
        model.transform.memory_format = self.memory_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=self.cfg.lr, momentum=self.cfg.momentum)
        elif self.cfg.adam_eps is not None:
            self.optimizer = torch.optim.Adam(params, lr=self.cfg.lr, eps=self.cfg.adam_eps)
        else:
            self.optimizer = torch.optim.Adam(params, lr=self.cfg.lr)
        compile_on = self.cfg.compile == "on"
        self.forward = torch.compile(self.model) if compile_on else self.model  # evaluation, logits
        self.step_fn = self.forward
        if self.distributed:  # gradients averaged over the replicas in backward; BN kept per replica
            from torch.nn.parallel import DistributedDataParallel
            ddp = DistributedDataParallel(self.model, broadcast_buffers=False)
            self.step_fn = torch.compile(ddp) if compile_on else ddp  # compiled around DDP: overlap kept
        # fp16 only: bf16 has float32's range. Matched starts where Keras' LossScaleOptimizer does.
        scale = dict(init_scale=LOSS_SCALE_MATCHED) if self.cfg.setup == "matched" else {}
        self.scaler = torch.amp.GradScaler(self.device.type, **scale) if self.amp is torch.float16 else None
        self.cursor = 0
        self.start = self._start_record(name)
        return self.describe(name)

    def _train_mode(self) -> None:
        """Training mode; with --train-layers head the frozen backbone's BatchNorm stays in
        inference mode (its running statistics are used, not updated), as Keras does for a layer
        that is not trainable."""
        assert self.model is not None
        self.model.train()
        if self.head_only:
            self.model.backbone.eval()

    def _start_record(self, name: str) -> dict[str, Any]:
        """Which numbers the model starts from (see weights.start_record); the parameter hash covers
        the initial parameters and buffers."""
        digest = hashlib.sha256()
        for value in self.model.state_dict().values():
            digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return start_record("torchvision", name, self.weights_file, digest.hexdigest(), self.cfg.seed)

    def describe(self, name: str) -> dict[str, Any]:
        assert self.model is not None
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        stats = sum(m.running_mean.numel() + m.running_var.numel() for m in bns)
        frozen = sum(p.numel() for p in self.model.parameters() if not p.requires_grad)
        backbone_bns = [m for m in self.model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        g = self.optimizer.param_groups[0]
        if self.cfg.optimizer == "sgd":
            opt = dict(name="sgd", lr=f32(g["lr"]), momentum=f32(g["momentum"]), nesterov=g["nesterov"],
                       weight_decay=f32(g["weight_decay"]))
        else:
            opt = dict(name="adam", lr=f32(g["lr"]), beta_1=f32(g["betas"][0]), beta_2=f32(g["betas"][1]),
                       eps=f32(g["eps"]), weight_decay=f32(g["weight_decay"]))
        return dict(framework="torch", model=name,
                    trainable_params=sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                    non_trainable_params=stats + frozen,
                    batchnorm=sorted({(f32(m.momentum), f32(m.eps)) for m in bns}) or "none",
                    optimizer=opt, loss="softmax cross-entropy from logits, mean over batch",
                    input_transform=self.transform, precision=self.cfg.precision or "default",
                    image_size=self.cfg.image_size, compile=self.cfg.compile or "default",
                    init=self.cfg.weights if self.weights_file else "he_normal(fan_out), as torchvision",
                    train_layers=self.cfg.train_layers, frozen_params=frozen, start=self.start,
                    backbone_bn_in_training=("inference (frozen)" if self.head_only else "batch statistics")
                    if backbone_bns else "none",
                    settings=self.settings(bns))

    def settings(self, bns: list) -> dict[str, Any]:
        """The framework settings the setups differ in, read back from torch."""
        g = self.optimizer.param_groups[0]
        return dict(setup=self.cfg.setup, **self._tf32(),
                    xla=False, compile_requested=str(self.cfg.compile or "off"),
                    torch_compile=self.compiled,
                    memory_growth=None, memory_allocator="caching allocator (grows as needed; torch has no "
                                                         "up-front reservation)",
                    cudnn_autotune=torch.backends.cudnn.benchmark,
                    input_autotune=None, prefetch=None,
                    bn_momentum=sorted({f32(m.momentum) for m in bns}) or None,
                    bn_eps=sorted({f32(m.eps) for m in bns}) or None,
                    adam_eps=f32(g["eps"]) if self.cfg.optimizer == "adam" else None,
                    compute_dtype=str(self.amp or torch.float32).removeprefix("torch."),
                    head_dtype=str(self.model.head.weight.dtype).removeprefix("torch.") + " (autocast off)",
                    loss_scale=self._loss_scale(), loss_scaler="torch.amp.GradScaler" if self.scaler else None,
                    memory_format=self._memory_format())

    def _memory_format(self) -> str:
        """Read back from a 4-D weight: channels_last (NHWC) or contiguous (NCHW)."""
        w = next((p for p in self.model.parameters() if p.dim() == 4), None) if self.model is not None else None
        if w is None:
            return "none"
        return "channels_last (NHWC)" if w.is_contiguous(memory_format=torch.channels_last) and \
            not w.is_contiguous() else "contiguous (NCHW)"

    def _loss_scale(self) -> dict[str, Any] | None:
        """fp16's dynamic loss scaling as configured (read at build: the scale before any step)."""
        if self.scaler is None:
            return None
        return dict(kind="dynamic", initial=self.scaler.get_scale(), growth_interval=self.scaler.get_growth_interval(),
                    growth_factor=self.scaler.get_growth_factor(), backoff_factor=self.scaler.get_backoff_factor())

    def count_flops(self) -> dict[str, Any]:
        """FLOPs per image of one training step (forward, loss, backward) and of a forward pass,
        counted by torch's FlopCounterMode on a copy of the model as built, moved to the meta
        device (no memory, no compute, no effect on the model). It counts convolutions and
        matmuls, 2 per multiply-add; see `_conv_backward_flop` for the one formula replaced."""
        assert self.model is not None
        meta = copy.deepcopy(self.model).to("meta")
        bs = self.cfg.batch_size
        x = torch.zeros((bs, 32, 32, 3), dtype=torch.uint8, device="meta")
        y = torch.zeros((bs,), dtype=torch.int64, device="meta")
        mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop}
        with flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as train:
            F.cross_entropy(meta(x), y).backward()
        with flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as forward, torch.no_grad():
            meta(x)
        ops = {str(k).removeprefix("aten."): v // bs for k, v in train.get_flop_counts().get("Global", {}).items()}
        return dict(counter=f"torch.utils.flop_counter.FlopCounterMode (torch {torch.__version__}; convolution "
                            f"weight gradients counted with groups, see _conv_backward_flop)",
                    forward_per_image=forward.get_total_flops() / bs, train_per_image=train.get_total_flops() / bs,
                    train_all_ops_per_image=None, by_op=ops, uncounted_ops=[])

    # -- running ---------------------------------------------------------------------------
    @property
    def compiled(self) -> bool:
        """Whether the steps run through torch.compile (the bare reference follows it)."""
        return self.forward is not self.model

    def weights_digest(self) -> str:
        digest = hashlib.sha256()
        for p in self.model.parameters():
            if p.requires_grad:
                digest.update(p.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def add_sleep_hooks(self, epoch_end_s: float, eval_begin_s: float) -> None:
        """A user's per-epoch work, for the tests (the worker's fault-injection commands only)."""
        self.sleep_hooks = dict(epoch_end=epoch_end_s, eval_begin=eval_begin_s)

    def _user_work(self, epoch: int, at: str) -> None:
        if self.sleep_hooks[at]:
            self.timeline.record(USER_WORK_START, epoch=epoch, at=at)
            time.sleep(self.sleep_hooks[at])
            self.timeline.record(USER_WORK_STOP, epoch=epoch, at=at)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def memory(self) -> dict[str, Any]:
        """The caching allocator's view since the last reset; None on the CPU (no allocator stats)."""
        if self.device.type != "cuda":
            return dict(peak=None, reserved_peak=None, current=None)
        return dict(peak=torch.cuda.max_memory_allocated(), reserved_peak=torch.cuda.max_memory_reserved(),
                    current=torch.cuda.memory_allocated())

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":  # pinned + async, so the copy never stalls the queue
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    @staticmethod
    def _first_nonfinite(bad: torch.Tensor, loss: torch.Tensor, step: int) -> torch.Tensor:
        """The first step whose loss is NaN/inf, kept on the device: found exactly, read at the
        next synchronisation, never a sync per step."""
        return torch.where((bad < 0) & ~torch.isfinite(loss), step, bad)

    def _step(self, idx: np.ndarray) -> torch.Tensor:
        x = self._to_device(self.bundle.train.images[idx])
        y = self._to_device(self.bundle.train.labels[idx])
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, self.amp):
            logits = self.step_fn(x)  # float32: Float32Head
        loss = F.cross_entropy(logits, y)
        backward_and_step(loss, self.optimizer, self.scaler)
        return loss.detach()

    def _epoch_batches(self, epoch: int):
        """Index batches of EPOCH in the shared order; the last partial batch is already dropped."""
        row, bs = self.bundle.order[epoch], self.cfg.batch_size
        for s in range(len(row) // bs):
            yield row[s * bs:(s + 1) * bs]

    def peek_labels(self, batches: int) -> list[list[int]]:
        """Labels of the first BATCHES training batches exactly as `fit` feeds them."""
        out = []
        for epoch in range(len(self.bundle.order)):
            for idx in self._epoch_batches(epoch):
                if len(out) == batches:
                    return out
                out.append(self.bundle.train.labels[idx].tolist())
        return out

    def evaluate(self) -> dict[str, Any]:
        assert self.model is not None
        test, bs = self.bundle.test, self.cfg.batch_size
        self.model.eval()
        start = time.perf_counter()
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        loss = torch.zeros((), device=self.device)
        with torch.inference_mode(), autocast(self.device.type, self.amp):
            for i in range(0, len(test), bs):
                x, y = self._to_device(test.images[i:i + bs]), self._to_device(test.labels[i:i + bs])
                logits = self.forward(x)
                loss += F.cross_entropy(logits, y, reduction="sum")
                correct += (logits.argmax(1) == y).sum()
        n = len(test)
        result = dict(accuracy=correct.item() / n, loss=loss.item() / n, n=n)
        result["seconds"] = time.perf_counter() - start
        return result

    def _evaluate_shared(self) -> dict[str, Any]:
        """Validation inside `fit` with replicas: the test batches shared among the replicas, each
        evaluating its share with its own model, the counts summed, as Keras' validation under the
        strategy does (tf.distribute shards the test set the same way)."""
        import torch.distributed as dist
        test, bs, r = self.bundle.test, self.cfg.batch_size, self.replica
        self.model.eval()
        start = time.perf_counter()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)  # correct, loss sum, images
        with torch.inference_mode(), autocast(self.device.type, self.amp):
            for i in range(r.rank * bs, len(test), r.world * bs):
                x, y = self._to_device(test.images[i:i + bs]), self._to_device(test.labels[i:i + bs])
                logits = self.forward(x)
                totals += torch.stack([(logits.argmax(1) == y).sum().double(),
                                       F.cross_entropy(logits, y, reduction="sum").double(),
                                       torch.tensor(float(len(y)), dtype=torch.float64, device=self.device)])
        dist.all_reduce(totals)
        correct, loss, n = totals.tolist()
        return dict(accuracy=correct / n, loss=loss / n, n=int(n), seconds=time.perf_counter() - start)

    def logits(self, count: int) -> list[list[float]]:
        assert self.model is not None
        self.model.eval()
        with torch.inference_mode(), autocast(self.device.type, self.amp):
            out = self.forward(self._to_device(self.bundle.test.images[:count]))
        return out.float().cpu().tolist()

    def fit(self, epochs: int) -> dict[str, Any]:
        assert self.model is not None
        order, bs = self.bundle.order, self.cfg.batch_size
        steps = order.shape[1] // bs
        tl, losses, evals = self.timeline, [], []
        tl.record(RUN_START)
        for epoch in range(epochs):
            self._reset_peak_memory()
            tl.record(EPOCH_START, epoch=epoch)
            self._train_mode()
            total = torch.zeros((), device=self.device)
            bad = torch.full((), -1, dtype=torch.int64, device=self.device)
            for s, idx in enumerate(self._epoch_batches(epoch)):
                if s == 0:
                    tl.record(FIRST_STEP_START, epoch=epoch)
                loss = self._step(idx)
                total += loss
                bad = self._first_nonfinite(bad, loss, s)
                if s == 0:
                    self._sync()
                    tl.record(FIRST_STEP_END, epoch=epoch)
            self._sync()
            tl.record(LAST_STEP_END, epoch=epoch)
            if bad.item() >= 0:
                raise nonfinite_error("torch", epoch, bad.item())
            losses.append(total.item() / steps)
            if self.cfg.eval_every_epoch:
                tl.record(EVAL_START, epoch=epoch)
                self._user_work(epoch, "eval_begin")
                evals.append(self._evaluate_shared() if self.distributed else self.evaluate())
                tl.record(EVAL_STOP, epoch=epoch)
            self._user_work(epoch, "epoch_end")
            tl.record(EPOCH_STOP, epoch=epoch, memory=self.memory(), loss=losses[-1],
                      val_accuracy=evals[-1]["accuracy"] if evals else None)
        tl.record(RUN_STOP)
        return dict(epoch_losses=losses, epoch_evals=evals, steps_per_epoch=steps,
                    images=epochs * steps * bs * self.replica.world)  # over all replicas

    def input_pipeline(self, count: int) -> dict[str, Any]:
        """COUNT batches through the input path alone (index, copy to the device), synchronised."""
        flat, bs = self.bundle.order.reshape(-1), self.cfg.batch_size
        batches = len(flat) // bs
        start = time.perf_counter()
        for s in range(count):
            idx = flat[(s % batches) * bs:(s % batches + 1) * bs]
            moved = (self._to_device(self.bundle.train.images[idx]), self._to_device(self.bundle.train.labels[idx]))
        self._sync()
        del moved
        return dict(seconds=time.perf_counter() - start, batches=count)

    def train_steps(self, count: int) -> dict[str, Any]:
        """COUNT steps continuing through the shared order (cycled), then synchronise."""
        assert self.model is not None
        self._train_mode()
        flat, bs = self.bundle.order.reshape(-1), self.cfg.batch_size
        batches = len(flat) // bs
        start = time.perf_counter()
        total = torch.zeros((), device=self.device)
        bad = torch.full((), -1, dtype=torch.int64, device=self.device)
        for s in range(count):
            b = (self.cursor + s) % batches
            loss = self._step(flat[b * bs:(b + 1) * bs])
            total += loss
            bad = self._first_nonfinite(bad, loss, s)
        self.cursor += count
        loss = total.item() / count  # .item() synchronises
        if bad.item() >= 0:
            raise nonfinite_error("torch", None, bad.item())
        return dict(seconds=time.perf_counter() - start, images=count * bs * self.replica.world, loss=loss)


def load_checkpoint(net: nn.Module, model: str, weights_dir: str | None) -> str:
    """Load torchvision's ImageNet checkpoint for MODEL into NET and return its path (see
    weights.torchvision_file: staged, else torch.hub's cache). Every backbone tensor must be there
    with its shape; the ImageNet classifier is not needed (the benchmark replaces it). A missing or
    unusable file is one line naming it and the fix."""
    f = FILES[("torchvision", model)]
    try:
        path = torchvision_file(model, weights_dir)
    except WeightsFileError as e:
        raise WeightsError(str(e)) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"holds a {type(state).__name__}, not a state dict")
        missing, unexpected = net.load_state_dict({k: v for k, v in state.items() if not k.startswith(TOP)},
                                                  strict=False)
        missing = [k for k in missing if not k.startswith(TOP)]
        if missing or unexpected:
            raise ValueError(f"{len(missing)} backbone tensor(s) missing ({', '.join(missing[:2])}), "
                           f"{len(unexpected)} unexpected ({', '.join(unexpected[:2])})")
    except Exception as e:  # unpickling, a zip error, missing keys, wrong shapes: the file is not the checkpoint
        detail = " ".join(str(e).split())[:200]
        raise WeightsError(f"{path}: not torchvision's {model} ImageNet weights ({type(e).__name__}: {detail}); "
                           f"{get_hint(f, path.parent)}") from None
    return str(path)


def bare_step(model: str, batch: int, device: str, size: int, compiled: bool = False, precision: str | None = None,
              channels_last: bool = False, train_layers: str = "all"):
    """The overhead check's reference: one hand-written training step on a device-resident batch,
    using none of the class above (no input pipeline, no timeline). Returns (step, sync). It runs
    under the process's numeric settings (the suite's, set by `configure`), through torch.compile
    when the suite's steps do, at the suite's precision (autocast; fp16 with a GradScaler) and memory
format, training what the suite trains (--train-layers), and leaves the process as it found it
(its RNG draws are forked)."""
    dev = torch.device("cuda" if device == "gpu" else "cpu")
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(0)
        net = getattr(torchvision.models, SPECS[model].torchvision)(weights=None)
        x = torch.randint(0, 256, (batch, 32, 32, 3), dtype=torch.uint8).to(dev)
        y = torch.randint(0, 10, (batch,)).to(dev)
    features = without_top(net, model)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    m = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      Float32Head(SPECS[model].feature_dim, 10)).to(dev, memory_format=fmt)
    if train_layers == "head":
        features.requires_grad_(False)
    forward = torch.compile(m) if compiled else m
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    m.train()
    if train_layers == "head":
        features.eval()
    amp = AMP_DTYPES.get(precision or "")
    scaler = torch.amp.GradScaler(dev.type, init_scale=LOSS_SCALE_MATCHED) if amp is torch.float16 else None
    mean = torch.tensor(MEAN, device=dev).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=dev).view(1, 3, 1, 1) * 255

    def step() -> None:
        xb = ((x.permute(0, 3, 1, 2).float() - mean) / std).contiguous(memory_format=fmt)
        if size != 32:
            xb = F.interpolate(xb, size=(size, size), mode="bilinear", align_corners=False)
        opt.zero_grad(set_to_none=True)
        with autocast(dev.type, amp):
            logits = forward(xb)
        backward_and_step(F.cross_entropy(logits, y), opt, scaler)

    return step, (torch.cuda.synchronize if dev.type == "cuda" else (lambda: None))
