"""Pruning: zero weights (masks, made permanent) or physically remove channels (Torch-Pruning).

Methods:
- ``l1_unstructured`` / ``random_unstructured``: per layer, the ``amount`` fraction of weights with the
  smallest magnitude (or chosen at random) become zero.
- ``global_l1``: the smallest ``amount`` fraction of weights across all layers together.
- ``ln_structured``: per layer, whole output channels/rows with the smallest L2 norm become zero.
- ``channels``: dependency-aware structural pruning (Torch-Pruning): channels and neurons are
  removed, so the model is smaller and dense kernels do less work.

Masks do not make dense kernels faster: only ``channels`` speeds up inference, and the report says so.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

from torch import nn
from torch.nn.utils import prune as torch_prune

from perfkit.errors import first_line
from perfkit.optim.report import PRUNABLE, attach, measure, require_module
from perfkit.schemas import PruneMethod, choices

METHODS = choices(PruneMethod)
_MASK_NOTE = (
    "zeroed weights stay in dense tensors: no speed-up on dense kernels and no smaller checkpoint; "
    "use method='channels' to make the model faster"
)


def prune(
    model: nn.Module,
    *,
    amount: float,
    method: str = "l1_unstructured",
    example_inputs: Any = None,
) -> nn.Module:
    """A pruned copy of ``model`` (left untouched).

    ``amount`` in [0, 1) is the fraction of weights (unstructured) or channels (structured) to
    remove from each Linear/Conv layer. The structured methods keep the output layer's size.
    ``example_inputs`` (a tensor or tuple of tensors) is required by ``channels``, which traces the
    model to find which layers must shrink together.
    """
    require_module(model, "perfkit.prune")
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; allowed: {', '.join(METHODS)}")
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not 0 <= amount < 1:
        raise ValueError(f"amount must be a number in [0, 1), got {amount!r}")
    if method == "channels" and example_inputs is None:
        raise ValueError(
            "method='channels' needs example_inputs: a batch the model accepts, e.g. torch.zeros(1, 1, 28, 28)"
        )

    pruned = copy.deepcopy(model)
    layers = [m for m in pruned.modules() if isinstance(m, PRUNABLE)]
    if method in ("ln_structured", "channels"):
        output = output_layer(pruned, example_inputs)
        layers = [m for m in layers if m is not output]
    if not layers:
        raise ValueError(
            f"nothing to prune: the model has no {'/'.join(t.__name__ for t in PRUNABLE)} layers besides its output"
        )

    if method == "channels":
        check_example_inputs(pruned, example_inputs, "perfkit.prune(method='channels')")
        notes = prune_channels_inplace(
            pruned, amount, example_inputs, keep=output_layer(pruned, example_inputs)
        )
        changed = Counter(
            type(new).__name__
            for new, old in zip(_prunable(pruned), _prunable(model), strict=True)
            if new.weight.shape != old.weight.shape
        )
        if not changed:
            notes = [_nothing_removed(amount, layers)]
            warnings.warn(f"perfkit.prune: {notes[0]}", stacklevel=2)
    else:
        targets = [(m, "weight") for m in layers] + _attention_projections(pruned)
        _prune_masks(targets, amount, method)
        changed = Counter(type(m).__name__ for m in dict.fromkeys(m for m, _ in targets))
        notes = [_MASK_NOTE]

    report = measure(f"prune(method={method}, amount={amount})", model, pruned, changed, notes)
    attach(pruned, model, report)
    return pruned


def _nothing_removed(amount: float, layers: Sequence[nn.Module]) -> str:
    widest = max(int(getattr(m, "out_features", 0) or getattr(m, "out_channels", 0)) for m in layers)
    return (
        f"nothing removed: amount={amount} would leave layers with less than one channel, and Torch-Pruning "
        f"skips those; the model is unchanged: use a smaller amount (the widest prunable layer has {widest} "
        "channels)"
    )


def _attention_projections(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``nn.MultiheadAttention`` keeps its q/k/v projection as its own parameter (``in_proj_weight``,
    or three when the widths differ), not in a Linear: prune those matrices too."""
    names = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
    return [
        (module, name)
        for module in model.modules()
        if isinstance(module, nn.MultiheadAttention)
        for name in names
        if getattr(module, name, None) is not None
    ]


def _prune_masks(targets: Sequence[tuple[nn.Module, str]], amount: float, method: str) -> None:
    if method == "global_l1":
        torch_prune.global_unstructured(
            list(targets), pruning_method=torch_prune.L1Unstructured, amount=amount
        )
    for module, name in targets:
        if method == "l1_unstructured":
            torch_prune.l1_unstructured(module, name, amount=amount)
        elif method == "random_unstructured":
            torch_prune.random_unstructured(module, name, amount=amount)
        elif method == "ln_structured":
            torch_prune.ln_structured(module, name, amount=amount, n=2, dim=0)
        # fold the mask into the weight: no weight_orig/weight_mask left in the state dict
        torch_prune.remove(module, name)


def check_example_inputs(model: nn.Module, example_inputs: Any, transform: str) -> None:
    """Run ``model`` once on ``example_inputs``: a ValueError naming the problem if it can't."""
    import torch

    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    was_training = model.training
    try:
        model.eval()  # not chained: an exported graph's eval() returns None
        with torch.no_grad():
            model(*inputs)
    except Exception as error:
        reason = first_line(error)
        raise ValueError(
            f"{transform}: the model cannot run on example_inputs ({reason}); give a batch it accepts"
        ) from None
    finally:
        model.train(was_training)


def prune_channels_inplace(
    model: nn.Module, amount: float, example_inputs: Any, keep: nn.Module | None
) -> list[str]:
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    attention = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    attention_widths = [m.out_proj.in_features for m in attention]
    bookkept = _head_bookkeeping(model)
    ignored = [keep] if keep is not None else []
    ignored += [layer for _, module in bookkept for layer in module.modules() if isinstance(layer, nn.Linear)]
    pruner = tp.pruner.MetaPruner(
        model,
        example_inputs,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=amount,
        ignored_layers=ignored,
        num_heads=attention,
        prune_head_dims=bool(attention),
        prune_num_heads=False,
        round_to=None,
    )
    pruner.step()
    _sync_widths(model)
    _check_heads(bookkept)
    model.train(was_training)
    notes = ["channels and neurons removed (Torch-Pruning, L2 magnitude): the model is smaller and faster"]
    if bookkept:
        notes.append(
            f"{len(bookkept)} attention module(s) that keep their own head count and size "
            f"({', '.join(name for name, _ in bookkept[:3])}) kept at full width: narrowing them would change "
            "what their heads compute"
        )
    if attention:
        shrunk = sum(m.out_proj.in_features < w for m, w in zip(attention, attention_widths, strict=True))
        notes.append(
            f"attention: {shrunk} of {len(attention)} layers narrowed (head count kept)"
            if shrunk
            else "attention layers unchanged: their width is tied to the residual stream"
        )
    return notes


_HEAD_COUNTS = ("num_attention_heads", "num_heads", "n_head", "n_heads")


def _head_bookkeeping(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Attention modules (other than torch's MultiheadAttention, which perfkit resizes itself) that
    store their head count as an attribute and reshape by it, as Hugging Face-style self-attention does."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            continue
        if any(isinstance(getattr(module, attr, None), int) for attr in _HEAD_COUNTS) and any(
            isinstance(child, nn.Linear) for child in module.children()
        ):
            found.append((name or type(module).__name__, module))
    return found


def _check_heads(bookkept: list[tuple[str, nn.Module]]) -> None:
    """Refuse a result where heads x head size no longer matches a projection's width."""
    for name, module in bookkept:
        heads = next(getattr(module, a) for a in _HEAD_COUNTS if isinstance(getattr(module, a, None), int))
        size = getattr(module, "attention_head_size", None) or getattr(module, "head_dim", None)
        if not isinstance(size, int):
            continue
        projections = ("query", "key", "value", "q_proj", "k_proj", "v_proj")
        for child_name, child in module.named_children():
            narrowed = isinstance(child, nn.Linear) and child.out_features != heads * size
            if child_name in projections and narrowed:
                raise ValueError(
                    f"channel pruning would leave {name}.{child_name} {child.out_features} wide while {name} "
                    f"says {heads} heads x {size}: use a mask method (method='l1_unstructured')"
                )


def _sync_widths(model: nn.Module) -> None:
    """Attributes some modules keep beside their weights must follow the pruned shapes."""
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            module.embed_dim = (
                module.in_proj_weight.shape[1] if module.in_proj_weight is not None else module.embed_dim
            )
            module.kdim = module.vdim = module.embed_dim
            module.head_dim = module.out_proj.in_features // module.num_heads
        projection = getattr(module, "conv_proj", None)
        if hasattr(module, "hidden_dim") and isinstance(
            projection, nn.Conv2d
        ):  # torchvision VisionTransformer
            setattr(module, "hidden_dim", projection.out_channels)  # noqa: B010  (read by its forward)


def _prunable(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, PRUNABLE)]


def output_layer(model: nn.Module, example_inputs: Any = None) -> nn.Module | None:
    """The Linear/Conv that produces the output: with ``example_inputs``, the last one a forward
    pass runs (a GAN's generator head, not the discriminator registered after it); without, the last
    one registered."""
    layers = _prunable(model)
    if example_inputs is None or not layers:
        return layers[-1] if layers else None
    import torch

    ran: list[nn.Module] = []
    handles = [layer.register_forward_hook(lambda m, *_: ran.append(m)) for layer in layers]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*example_inputs) if isinstance(example_inputs, tuple) else model(example_inputs)
    except Exception:
        ran = []  # check_example_inputs reports a failing forward
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return ran[-1] if ran else layers[-1]
