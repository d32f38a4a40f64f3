"""The typed config nodes of perfkit's commands: ``optimize`` (training-time optimizations in
``perfkit.train``), ``bench``, ``tune``, and ``perfkit.optimize``'s own keys.

Each dataclass holds the one default of each key: Hydra's ConfigStore serves it as
``schema/<node>``, which the YAML configs put first in their defaults list, so YAML files list only
what they change (``--cfg job`` shows every key). :func:`perfkit.config.check_config` checks a
composed node against its dataclass (unknown keys, ``Literal`` choices, types) and the dataclass's
``__post_init__`` checks ranges. Literal aliases are the single list of choices the runtime modules
use too. Plain data: no torch imports here.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from perfkit.bench.catalog import NAMES as CATALOG_NAMES
from perfkit.bench.catalog import preset

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
PruneMethod = Literal["l1_unstructured", "random_unstructured", "global_l1", "ln_structured", "channels"]
QuantizeScheme = Literal["int8_dynamic", "int8_weight_only", "int8_static"]
QuantizeBackend = Literal["auto", "torch_ao", "torchao"]
# AOTInductor package (.pt2); ONNX (.onnx) as exported, with ONNX Runtime's dynamic int8, or its static
# (QDQ, calibrated) int8
ExportFormat = Literal["aoti", "onnx", "onnx_int8", "onnx_int8_static"]
BenchModel = Literal["cnn", "mlp", "resnet18", "vit", "resnet50", "vit_b_16"]
# the variant names and presets come from perfkit.bench.catalog, their one list (plain data)
if TYPE_CHECKING:
    BenchVariant = str
else:
    BenchVariant = Literal[CATALOG_NAMES]
# what the quick and full presets measure (bench=gpu measures the GPU-sized ones)
CLASSIC_VARIANTS: tuple[str, ...] = preset("classic")
# inference: forward; train: forward + backward + step; serve: perfkit.serving's candidates on the CPU
BenchMode = Literal["inference", "train", "serve"]
BenchOptimizer = Literal["sgd", "adamw"]  # adamw: torch's fused AdamW
TuneMode = Literal["train", "inference"]

_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def is_device(name: str) -> bool:
    """cpu, cuda or cuda:N."""
    return _DEVICE.fullmatch(name) is not None


def choices(alias: Any) -> tuple[str, ...]:
    """The values a ``Literal`` alias allows."""
    return tuple(get_args(alias))


@dataclass
class PruneDuringTraining:
    amount: float = 0.0  # fraction of weights (masks) or channels to remove; 0 = no pruning
    method: PruneMethod = "l1_unstructured"
    at_epoch: int = 1  # prune when this epoch starts (0 = before training), then fine-tune

    def __post_init__(self) -> None:
        if not 0 <= self.amount < 1:
            raise ValueError(f"amount={self.amount!r} is not valid: use a number in [0, 1) (0 = off)")
        if self.at_epoch < 0:
            raise ValueError(f"at_epoch={self.at_epoch!r} is not valid: use an integer >= 0")


@dataclass
class TrainOptimize:
    """``optimize``: optimizations applied while training, one field per registered optimization
    (:data:`perfkit.optim.training.REGISTRY`; a field's name is the optimization's ``name``)."""

    compile: bool = False  # torch.compile the model's forward
    compile_mode: CompileMode = "default"
    prune: PruneDuringTraining = field(default_factory=PruneDuringTraining)
    channels_last: bool = False  # convolution weights and activations in NHWC memory order


@dataclass
class Bench:
    """``bench``: the variant benchmark's matrix and timing. The defaults are the quick preset (about
    2-3 minutes on 2 CPU cores); ``bench=full`` and ``bench=gpu`` change some keys."""

    models: list[BenchModel] = field(default_factory=lambda: ["cnn", "mlp"])
    variants: list[BenchVariant] = field(default_factory=lambda: list(CLASSIC_VARIANTS))
    devices: list[str] = field(default_factory=lambda: ["cpu", "cuda"])  # cuda rows skip without a GPU
    modes: list[BenchMode] = field(default_factory=lambda: ["inference", "train"])
    batch_sizes: list[int] = field(default_factory=lambda: [64])
    rounds: int = 20  # interleaved rounds: every variant once per round (>= 6 for a confidence interval)
    warmup: int = 2  # untimed calls per variant first (the first compiles)
    threads: int | None = None  # torch threads while timing (None: torch's default, one per core)
    prune_amount: float = 0.5  # fraction of weights (unstructured) or channels (channels) removed
    data: str = "mnist"  # dataset config used for training and for held-out accuracy
    train_epochs: int = 3  # train each model this long first (0: random weights, no accuracy)
    finetune_epochs: int = 1  # after channel pruning (0: none)
    optimizer: BenchOptimizer = "sgd"  # of the timed training step
    image_size: int | None = None  # overrides the dataset's image size (data.image_size)
    data_options: dict[str, Any] = field(default_factory=dict)  # more data.* overrides
    # modes=[serve]: artifacts exported from the float and the channel-pruned network, as candidates too
    exports: list[ExportFormat] = field(default_factory=lambda: ["onnx", "onnx_int8", "onnx_int8_static"])
    serve_latency_calls: int = 200  # batch-1 calls per serving candidate, interleaved call by call
    serve_concurrency: int = 0  # threads calling batch-1 at once for tail latency under load (0 = off)

    def __post_init__(self) -> None:
        for name in ("models", "variants", "devices", "modes", "batch_sizes"):
            if not getattr(self, name):
                raise ValueError(f"{name}: choose at least one")
        bad = [device for device in self.devices if not is_device(str(device))]
        if bad:
            raise ValueError(f"devices: {', '.join(map(repr, bad))} not valid; allowed: cpu, cuda, cuda:N")
        if any(size < 1 for size in self.batch_sizes):
            raise ValueError(f"batch_sizes={self.batch_sizes}: every size must be >= 1")
        if self.rounds < 6:
            raise ValueError(f"rounds={self.rounds}: at least 6 are needed for a 95% confidence interval")
        if self.warmup < 1:
            raise ValueError(
                f"warmup={self.warmup}: at least 1 (compiled variants compile at the first call)"
            )
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads={self.threads}: use null or an integer >= 1")
        if not 0 < self.prune_amount < 1:
            raise ValueError(f"prune_amount={self.prune_amount}: use a number in (0, 1)")
        if self.train_epochs < 0 or self.finetune_epochs < 0:
            raise ValueError("train_epochs and finetune_epochs must be >= 0")
        if self.serve_latency_calls < 1 or self.serve_concurrency < 0:
            raise ValueError("serve_latency_calls must be >= 1 and serve_concurrency >= 0")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size={self.image_size}: use null or an integer >= 1")
        trainable = {"cnn", "mlp", "resnet18", "vit"}
        if self.train_epochs and not set(self.models) <= trainable:
            others = ", ".join(sorted(set(self.models) - trainable))
            raise ValueError(f"models: {others} have no training config: use train_epochs=0 (random weights)")

    @property
    def data_overrides(self) -> list[str]:
        """``data.*`` overrides for the dataset config (image size and any data_options)."""
        options = {**self.data_options, **({"image_size": self.image_size} if self.image_size else {})}
        return [f"data.{key}={value}" for key, value in options.items()]

    @property
    def cells_per_model(self) -> int:
        timed = [mode for mode in self.modes if mode != "serve"]  # serve shows its own steps
        return len(self.devices) * len(timed) * len(self.batch_sizes)


@dataclass
class Tune:
    """``tune``: what the tuner measures and within which budget."""

    budget_s: float = 300.0  # wall-clock budget; the tuner stays within it (+-10%) and keeps the best so far
    max_accuracy_drop: float = 0.5  # points of held-out accuracy a numerics-changing setting may cost
    rounds: int = 12  # interleaved rounds per comparison (>= 6 for a confidence interval)
    warmup: int = 2
    accuracy_steps: int = 60  # optimizer steps of the short runs that accuracy is compared after
    modes: list[TuneMode] = field(default_factory=lambda: ["train", "inference"])
    max_batch_factor: int = 8  # training batch sizes tried: 2x, 4x, ... up to this factor of data.batch_size
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        if self.budget_s <= 0:
            raise ValueError(f"budget_s={self.budget_s} must be > 0")
        if self.max_accuracy_drop < 0:
            raise ValueError(f"max_accuracy_drop={self.max_accuracy_drop} must be >= 0")
        if self.rounds < 6:
            raise ValueError(f"rounds={self.rounds}: at least 6 are needed for a confidence interval")
        if not self.modes:
            raise ValueError("modes: choose at least one; allowed: train, inference")
        if self.max_batch_factor < 1 or self.accuracy_steps < 1 or self.warmup < 0:
            raise ValueError("max_batch_factor and accuracy_steps must be >= 1, warmup >= 0")


@dataclass
class PostTrainingPrune:
    amount: float = 0.0  # 0 = no pruning
    method: PruneMethod = "channels"
    finetune_epochs: int = 1  # epochs of training after pruning, on the run's training data (0 = none)

    def __post_init__(self) -> None:
        if not 0 <= self.amount < 1:
            raise ValueError(f"amount={self.amount!r} is not valid: use a number in [0, 1) (0 = off)")
        if self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs={self.finetune_epochs!r} is not valid: use an integer >= 0")


@dataclass
class LatencyTiming:
    batch_size: int = 64  # images per timed forward pass
    threads: int | None = 1  # torch threads while timing (None: leave the default)
    rounds: int = 30  # interleaved timing rounds (every variant once per round)
    warmup: int = 3

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.rounds < 1 or self.warmup < 0:
            raise ValueError("batch_size and rounds must be >= 1, warmup >= 0")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads={self.threads}: use null or an integer >= 1")


@dataclass
class ServeTiming:
    """``perfkit.optimize serve.enabled=true``: every stage and artifact as a serving candidate."""

    enabled: bool = False
    batch_size: int = 64  # throughput is measured at this batch size
    latency_calls: int = 200  # batch-1 calls per candidate, interleaved call by call
    rounds: int = 20  # interleaved rounds of the throughput batch
    cold_starts: int = 1  # fresh processes per candidate (the median is reported; 0: none)
    concurrency: int = 0  # threads calling batch-1 at once for tail latency under load (0 = off)

    def __post_init__(self) -> None:
        for name in ("batch_size", "latency_calls", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: use an integer >= 1")
        if self.cold_starts < 0:
            raise ValueError(f"cold_starts={self.cold_starts}: use 0 (none) or a number of fresh processes")
        if self.concurrency < 0:
            raise ValueError(f"concurrency={self.concurrency}: use 0 (off) or a number of threads")


@dataclass
class PostTraining:
    """``perfkit.optimize``'s own keys (at the config root): the transforms, applied in the order
    prune (then fine-tune) -> quantize -> compile, and how latency is timed."""

    device: str = "cpu"  # where accuracy and latency are measured (int8 dynamic quantization is CPU-only)
    prune: PostTrainingPrune = field(default_factory=PostTrainingPrune)
    quantize: QuantizeScheme | None = None
    quantize_backend: QuantizeBackend = "auto"
    compile: bool = False
    compile_mode: CompileMode = "default"
    # artifacts of the last stage a serving stack loads, each checked and scored as a stage of its own
    export: list[ExportFormat] = field(default_factory=list)
    benchmark: LatencyTiming = field(default_factory=LatencyTiming)
    serve: ServeTiming = field(default_factory=ServeTiming)

    def __post_init__(self) -> None:
        if not is_device(str(self.device)):
            raise ValueError(f"device={self.device!r} is not valid; allowed: cpu, cuda, cuda:N")


# config node -> its schema; ROOTS: a command's own keys at its config root (schema/<name>@_global_)
NODES: dict[str, type] = {"optimize": TrainOptimize, "bench": Bench, "tune": Tune}
ROOTS: dict[str, type] = {"post_training": PostTraining}


def register() -> None:
    """Serve each schema's defaults to Hydra as ``schema/<name>`` (plain values: OmegaConf cannot hold
    ``Literal`` types, so :func:`perfkit.config.check_config` checks those)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, schema in {**NODES, **ROOTS}.items():
        store.store(group="schema", name=name, node=asdict(schema()))
