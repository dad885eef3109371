"""The head in each trainable form: an ExecuTorch training program and a Core ML updatable model.

Invariants a caller can rely on:
- both start from the base head's weights, so an untrained form predicts what the released
  model predicts;
- the ExecuTorch program's method takes `(embedding[B, D], label[B], weight[B])` and returns
  `(loss, logits)`, where the loss is the weight-averaged cross-entropy: a padded row (weight
  0) contributes nothing, so a batch of any size up to B trains exactly; its parameters are
  the trainable layers only (a frozen layer's weights are constants);
- the Core ML model is a neural network (specification 4, iOS 14+) whose updatable layers are
  the trainable ones, with a categorical cross-entropy loss on its softmax and an SGD
  optimizer; it is validated here by evaluating its layers in numpy against the head.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeforge.personalize._split import HeadSplit

__all__ = ["build_coreml", "build_executorch"]

METHOD = "forward"


class _TrainingHead(nn.Module):
    def __init__(self, layers: nn.ModuleDict, order: list[str]) -> None:
        super().__init__()
        self.layers = layers
        self.order = order

    def forward(
        self, embedding: torch.Tensor, label: torch.Tensor, weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = embedding
        for key in self.order:
            x = self.layers[key](x)
        losses = nn.functional.cross_entropy(x, label, reduction="none")
        return (losses * weight).sum() / weight.sum().clamp(min=1.0), x.detach()


def _fresh(layer: dict[str, Any], params: dict[str, np.ndarray]) -> nn.Module:
    """A new module for one head layer from its base weights; a frozen layer's weights are
    buffers, so they are constants of the program and get no gradient."""
    kind, name = layer["kind"], layer["name"]
    if kind != "linear":
        simple = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "flatten": nn.Flatten}
        return simple.get(kind, nn.Identity)()
    weight = torch.from_numpy(params[f"{name}.weight"].copy())
    bias = params.get(f"{name}.bias")
    module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    values = {"weight": weight}
    if bias is not None:
        values["bias"] = torch.from_numpy(bias.copy())
    for key, value in values.items():
        delattr(module, key)
        if layer["trainable"]:
            module.register_parameter(key, nn.Parameter(value))
        else:
            module.register_buffer(key, value)
    return module


def build_executorch(split: HeadSplit, out: Path, batch: int) -> dict[str, Any]:
    """Write the training program `head_train.pte`; returns its entry in the package index."""
    from executorch.exir import ExecutorchBackendConfig, to_edge
    from torch.export.experimental import _export_forward_backward

    keys = {layer["name"]: f"l{i}" for i, layer in enumerate(split.layers)}
    modules = nn.ModuleDict(
        {keys[layer["name"]]: _fresh(layer, split.params) for layer in split.layers}
    )
    head = _TrainingHead(modules, [keys[layer["name"]] for layer in split.layers]).train()
    example = (
        torch.zeros(batch, split.embedding_size),
        torch.zeros(batch, dtype=torch.long),
        torch.ones(batch),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(head, example, strict=False)
        program = _export_forward_backward(program)
        lowered = to_edge(program).to_executorch(ExecutorchBackendConfig())
    file = out / "head_train.pte"
    file.write_bytes(lowered.buffer)
    names = {
        f"layers.{keys[layer['name']]}.{key}": f"{layer['name']}.{key}"
        for layer in split.layers
        if layer["trainable"]
        for key in ("weight", "bias")
        if f"{layer['name']}.{key}" in split.params
    }
    return {"file": file.name, "method": METHOD, "batch": batch, "names": names}


def build_coreml(split: HeadSplit, out: Path, lr: float, batch: int, epochs: int) -> dict:
    """Write the updatable model `head.mlmodel`; returns its entry in the package index."""
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder, SgdParams
    from coremltools.models.utils import save_spec

    builder = NeuralNetworkBuilder(
        [("embedding", datatypes.Array(split.embedding_size))],
        [("probs", datatypes.Array(split.classes))],
        disable_rank5_shape_mapping=True,
    )
    current, updatable = "embedding", []
    activations = {"relu": "RELU", "tanh": "TANH", "sigmoid": "SIGMOID"}
    for i, layer in enumerate(split.layers):
        name = f"layer{i}_{layer['kind']}"
        if layer["kind"] == "linear":
            weight = split.params[f"{layer['name']}.weight"]
            bias = split.params.get(f"{layer['name']}.bias")
            builder.add_inner_product(
                name,
                weight,
                bias,
                weight.shape[1],
                weight.shape[0],
                bias is not None,
                current,
                name,
            )
            if layer["trainable"]:
                updatable.append(name)
        elif layer["kind"] in activations:
            builder.add_activation(name, activations[layer["kind"]], current, name)
        else:  # identity and flatten: the embedding is already flat
            continue
        current = name
    builder.add_softmax("softmax", current, "probs")
    builder.make_updatable(updatable)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a note; --json owns stdout
        builder.set_categorical_cross_entropy_loss(name="loss", input="probs")
    builder.set_sgd_optimizer(SgdParams(lr=lr, batch=batch))
    builder.set_epochs(epochs)
    spec = builder.spec
    _validate_coreml(spec, split)
    file = out / "head.mlmodel"
    save_spec(spec, str(file))
    return {
        "file": file.name,
        "input": "embedding",
        "output": "probs",
        "label_input": "probs_true",
        "updatable_layers": updatable,
        "validated": "updatable spec; layers evaluated in numpy match the head",
    }


def _validate_coreml(spec: Any, split: HeadSplit) -> None:
    """Evaluate the spec's layers in numpy on random embeddings; they must give the head's
    softmax (Core ML itself runs only on Apple systems)."""
    from edgeforge.errors import EdgeforgeError
    from edgeforge.fleet.personal import head_forward

    if not spec.isUpdatable or spec.specificationVersion < 4:
        raise EdgeforgeError("the Core ML head was not built updatable; report this")
    x = np.random.default_rng(0).standard_normal((4, split.embedding_size)).astype(np.float32)
    values = {"embedding": x}
    for layer in spec.neuralNetwork.layers:
        kind = layer.WhichOneof("layer")
        value = values[layer.input[0]]
        if kind == "innerProduct":
            p = layer.innerProduct
            weight = np.array(p.weights.floatValue, np.float32).reshape(
                p.outputChannels, p.inputChannels
            )
            value = value @ weight.T
            if p.hasBias:
                value = value + np.array(p.bias.floatValue, np.float32)
        elif kind == "activation":
            which = layer.activation.WhichOneof("NonlinearityType")
            value = {
                "ReLU": lambda v: np.maximum(v, 0),
                "tanh": np.tanh,
                "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
            }[which](value)
        elif kind == "softmax":
            value = np.exp(value - value.max(1, keepdims=True))
            value = value / value.sum(1, keepdims=True)
        values[layer.output[0]] = value
    logits, _ = head_forward(split.layers, split.params, x)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    if not np.allclose(values["probs"], expected, atol=1e-5):
        raise EdgeforgeError("the Core ML head computes something else than the head; report it")
