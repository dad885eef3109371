"""Split a torch module into a frozen backbone and a trainable head.

Invariants a caller can rely on:
- the head is the chain of leaf modules from the first trainable layer to the output, in the
  order the forward pass calls them; the split is refused unless running those layers one
  after another on the captured embedding gives the model's own output (checked on the
  example inputs), so a head never computes something the model does not;
- every head layer is one the device side can run and train (`LAYER_KINDS`); the builder
  refuses any other with the layer's name;
- the backbone returns `(logits, embedding)`: the released model's own output, unchanged, and
  the input of the head's first layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet.personal import head_forward

__all__ = ["Backbone", "HeadSplit", "split_module"]

_KINDS: tuple[tuple[type, str], ...] = (
    (nn.Linear, "linear"),
    (nn.ReLU, "relu"),
    (nn.Tanh, "tanh"),
    (nn.Sigmoid, "sigmoid"),
    (nn.Identity, "identity"),
    (nn.Dropout, "identity"),  # eval mode: the identity
    (nn.Flatten, "flatten"),
)


class Backbone(nn.Module):
    """The source model, also returning the input of the head's first layer."""

    def __init__(self, model: nn.Module, first: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._captured: list[torch.Tensor] = []
        first.register_forward_pre_hook(self._capture)

    def _capture(self, _module: nn.Module, args: tuple) -> None:
        self._captured.append(args[0])

    def forward(self, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        self._captured.clear()
        logits = self.model(*args)
        embedding = self._captured[-1]
        return logits, embedding.flatten(1)


class OneInputBackbone(Backbone):
    """A backbone of one input, with a named parameter: the exporters map dynamic axes by the
    forward's signature, which `*args` hides."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return super().forward(x)


@dataclass
class HeadSplit:
    backbone: Backbone
    layers: list[dict[str, Any]]  # {name, kind, trainable}, in call order
    modules: dict[str, nn.Module]  # leaf name -> module
    params: dict[str, np.ndarray]  # "<leaf>.weight" / "<leaf>.bias" -> base values
    embedding_size: int
    classes: int


def _leaf_kind(name: str, module: nn.Module) -> str:
    if isinstance(module, nn.Flatten) and (module.start_dim, module.end_dim) != (1, -1):
        raise EdgeforgeError(f"head layer {name} flattens dims other than 1..-1")
    for cls, kind in _KINDS:
        if isinstance(module, cls):
            return kind
    raise EdgeforgeError(
        f"head layer {name} is a {type(module).__name__}; a personal head is made of Linear "
        "and activation layers: name later layers with --trainable"
    )


def split_module(
    module: nn.Module, example_inputs: tuple, trainable: list[str] | None = None
) -> HeadSplit:
    """Split `module` (eval mode) at its first trainable layer (default: the last layer with
    weights). `trainable` names modules; a container names all the leaves in it."""
    module = module.eval()
    leaves = {
        name: child for name, child in module.named_modules() if name and not list(child.children())
    }
    order: list[str] = []
    handles = [
        child.register_forward_hook(lambda *_a, _n=name: order.append(_n))
        for name, child in leaves.items()
    ]
    try:
        with torch.no_grad():
            output = module(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        raise EdgeforgeError(
            "personalize needs a classifier whose output is one [batch, classes] tensor of "
            f"logits; this model returns {type(output).__name__}"
        )
    if trainable:
        chosen = set()
        for name in trainable:
            found = [leaf for leaf in leaves if leaf == name or leaf.startswith(name + ".")]
            if not found:
                raise EdgeforgeError(
                    f"--trainable {name}: the model has no such layer; its layers are "
                    f"{', '.join(order)}"
                )
            chosen.update(found)
    else:
        weighted = [name for name in order if any(True for _ in leaves[name].parameters())]
        if not weighted:
            raise EdgeforgeError("the model has no layer with weights to train")
        chosen = {weighted[-1]}
    called = [name for name in chosen if name in order]
    if not called:
        raise EdgeforgeError(f"--trainable {', '.join(sorted(chosen))}: never called in forward")
    first = min(order.index(name) for name in called)
    tail = order[first:]
    if len(set(tail)) != len(tail):
        raise EdgeforgeError(
            f"the layers from {tail[0]} on are called more than once; name later layers"
        )
    layers = [
        {"name": name, "kind": _leaf_kind(name, leaves[name]), "trainable": name in chosen}
        for name in tail
    ]
    params = {
        f"{name}.{key}": value.detach().cpu().numpy().astype(np.float32)
        for name in tail
        for key, value in leaves[name].named_parameters()
    }
    kind = OneInputBackbone if len(example_inputs) == 1 else Backbone
    backbone = kind(module, leaves[tail[0]]).eval()
    with torch.no_grad():
        logits, embedding = backbone(*example_inputs)
    recomputed, _ = head_forward(layers, params, embedding.numpy())
    if not np.allclose(recomputed, logits.numpy(), rtol=1e-4, atol=1e-4):
        raise EdgeforgeError(
            f"the layers from {tail[0]} on are not a plain chain that ends at the output "
            "(something else touches their values); name layers nearer the output"
        )
    return HeadSplit(
        backbone=backbone,
        layers=layers,
        modules={name: leaves[name] for name in tail},
        params=params,
        embedding_size=int(embedding.shape[1]),
        classes=int(logits.shape[1]),
    )
