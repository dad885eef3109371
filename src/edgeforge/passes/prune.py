"""Structured channel pruning of a torch module, then a short fine-tune on the user's data.

Channels (conv filters, linear features) are removed for real, so the module that comes back
has fewer parameters and MACs and exports like any other. The dependency graph, the coupled
layers and the surgery are torch-pruning's (Fang et al., "DepGraph", CVPR 2023): a residual add
prunes the same channels on both of its branches, a depthwise conv follows its input's
channels, a BatchNorm follows its conv, a flatten before a linear layer maps channels to
features. Importance is the L1 (or L2) magnitude of each coupled group's weights.

What a caller can rely on:
- the module given is not modified; the pruned copy is returned in eval mode;
- layers whose output channels reach the module's outputs (a classifier's last linear layer,
  a detector's heads) keep them, so the outputs keep their shapes (the `Pass` base checks it);
- every prunable layer is pruned by the same share of its channels (local pruning, which cannot
  collapse one layer to nothing), chosen by bisection as the smallest share that removes at
  least `ratio` of the parameters (or of the MACs);
- with data, the pruned copy is fine-tuned: on the labels when there are any (cross-entropy or
  MSE), else to match the unpruned module's outputs (distillation); without data it is not.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch

from edgeforge._progress import progress_bar
from edgeforge.errors import EdgeforgeError
from edgeforge.passes._torch_data import ExampleInputs, tensor_data
from edgeforge.passes._training import evaluate, fit, objective_for, outputs, seeded
from edgeforge.passes.base import Footprint, Pass, PassResult

__all__ = ["PrunePass", "footprint", "prune", "prune_channels"]

_IMPORTANCE = {"l1": 1, "l2": 2}
_MAX_CHANNEL_SHARE = 0.95  # never leave a layer with less than 5% of its channels
_BISECTION_STEPS = 10


class PrunePass(Pass):
    """Remove `ratio` of the parameters (or MACs) by structured channel pruning."""

    name = "prune"
    consumes = "torch"

    def __init__(
        self,
        ratio: float = 0.5,
        *,
        target: Literal["params", "macs"] = "params",
        data: Any = None,
        epochs: int = 3,
        task: str = "auto",
        eval_data: Any = None,
        importance: Literal["l1", "l2"] = "l1",
        round_to: int | None = None,
        ignored_layers: Sequence[torch.nn.Module] = (),
        lr: float = 1e-3,
        batch_size: int = 32,
        temperature: float = 4.0,
        seed: int = 0,
    ) -> None:
        if not 0 < ratio < 1:
            raise EdgeforgeError(
                f"prune ratio must be between 0 and 1 (the share of parameters to remove), "
                f"not {ratio}; 0.5 halves the model"
            )
        if target not in ("params", "macs"):
            raise EdgeforgeError(f"prune target must be 'params' or 'macs', not {target!r}")
        if importance not in _IMPORTANCE:
            raise EdgeforgeError(f"importance must be 'l1' or 'l2', not {importance!r}")
        if epochs < 0 or batch_size < 1 or lr <= 0:
            raise EdgeforgeError("epochs must be >= 0, batch_size >= 1 and lr > 0")
        self.ratio = ratio
        self.target = target
        self.data = data
        self.epochs = epochs
        self.task = task
        self.eval_data = eval_data
        self.importance = importance
        self.round_to = round_to
        self.ignored_layers = list(ignored_layers)
        self.lr = lr
        self.batch_size = batch_size
        self.temperature = temperature
        self.seed = seed

    def apply(self, source: torch.nn.Module, example_inputs: ExampleInputs) -> PassResult:
        inputs = example_inputs
        # Read the data first: a wrong shape should fail before minutes of pruning.
        train = tensor_data(self.data, inputs, "data") if self.data is not None else None
        held_out = (
            tensor_data(self.eval_data, inputs, "eval_data") if self.eval_data is not None else None
        )
        before = footprint(source, inputs)
        measure = "parameters" if self.target == "params" else "macs"
        goal = (1 - self.ratio) * getattr(before, measure)

        with seeded(self.seed) as generator:
            pruned, share, after = self._search(source, inputs, measure, goal, before)
            notes = [
                f"removed {share:.1%} of the channels of every prunable layer "
                f"({self.importance.upper()} magnitude); layers feeding the outputs kept theirs",
            ]
            metrics: dict[str, float] = {"channel_share_removed": share}
            if train is not None and self.epochs > 0:
                teacher = copy.deepcopy(source).eval()
                first = outputs(teacher, inputs, train)[0]
                objective = objective_for(
                    self.task,
                    train,
                    first,
                    use_labels=train.labels is not None,
                    temperature=self.temperature,
                )
                judge = held_out if held_out is not None else train
                reference = outputs(teacher, inputs, judge)[0]
                for name, value in evaluate(teacher, inputs, judge, objective.task).items():
                    metrics[f"original_{name}"] = value
                for name, value in evaluate(
                    pruned, inputs, judge, objective.task, reference
                ).items():
                    metrics[f"pruned_{name}"] = value
                steps = self.epochs * math.ceil(len(train) / self.batch_size)
                metrics["final_loss"] = fit(
                    pruned,
                    inputs,
                    train,
                    objective,
                    teacher=teacher,
                    steps=steps,
                    batch_size=self.batch_size,
                    lr=self.lr,
                    generator=generator,
                    description="Fine-tuning the pruned model",
                )
                for name, value in evaluate(
                    pruned, inputs, judge, objective.task, reference
                ).items():
                    metrics[f"finetuned_{name}"] = value
                notes.append(
                    f"fine-tuned for {self.epochs} epochs ({steps} steps) on {len(train)} "
                    f"samples ({train.source}) with {objective.describe()}; metrics on "
                    + ("eval_data" if held_out else "the training data")
                )
            else:
                notes.append("not fine-tuned (no data given): accuracy will have dropped")
        return PassResult(self.name, pruned.eval(), before, after, metrics, notes)

    def _search(
        self,
        source: torch.nn.Module,
        inputs: ExampleInputs,
        measure: str,
        goal: float,
        before: Footprint,
    ) -> tuple[torch.nn.Module, float, Footprint]:
        """Bisect on the channel share: the smallest one that reaches `goal`."""

        def attempt(share: float) -> tuple[torch.nn.Module, Footprint]:
            module = prune_channels(
                source,
                inputs,
                share,
                importance=self.importance,
                round_to=self.round_to,
                ignored_layers=self.ignored_layers,
            )
            return module, footprint(module, inputs)

        with progress_bar("Choosing how many channels to prune", _BISECTION_STEPS + 1) as advance:
            best, best_print = attempt(_MAX_CHANNEL_SHARE)
            advance()
            if getattr(best_print, measure) > goal:
                most = 1 - getattr(best_print, measure) / getattr(before, measure)
                raise EdgeforgeError(
                    f"pruning can remove at most {most:.0%} of the {measure} of this module "
                    f"(layers feeding the outputs and ignored layers keep their channels), not "
                    f"{self.ratio:.0%}; ask for a smaller ratio"
                )
            low, high = 0.0, _MAX_CHANNEL_SHARE
            for _ in range(_BISECTION_STEPS):
                middle = (low + high) / 2
                module, measured = attempt(middle)
                if getattr(measured, measure) <= goal:
                    high, best, best_print = middle, module, measured
                else:
                    low = middle
                advance()
        return best, high, best_print


def prune_channels(
    module: torch.nn.Module,
    example_inputs: Any,
    share: float,
    *,
    importance: str = "l1",
    round_to: int | None = None,
    ignored_layers: Sequence[torch.nn.Module] = (),
) -> torch.nn.Module:
    """A copy of `module` with `share` of the channels of every prunable layer removed (by
    weight magnitude), except in layers that feed the outputs and `ignored_layers`."""
    import torch_pruning as tp

    inputs = ExampleInputs.of(module, example_inputs, "prune")
    copied = copy.deepcopy(module).eval()
    # deepcopy keeps identities consistent, so the user's ignored layers map into the copy.
    mapping = {id(m): c for m, c in zip(module.modules(), copied.modules(), strict=True)}
    ignored = [mapping[id(m)] for m in ignored_layers if id(m) in mapping]
    traced = tuple(t.clone() for t in inputs.tensors)
    example = dict(zip(inputs.names, traced, strict=True)) if inputs.keyword else traced
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")  # torch-pruning warns on every unknown op it meets
        graph = tp.DependencyGraph().build_dependency(copied, example, verbose=False)
        ignored += _output_layers(graph)
        pruner = tp.pruner.MetaPruner(
            copied,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=_IMPORTANCE[importance]),
            pruning_ratio=share,
            ignored_layers=ignored,
            round_to=round_to,
            num_heads=_attention_heads(copied),
        )
        pruner.step()
    for parameter in copied.parameters():
        parameter.requires_grad_(True)
    return copied.eval()


def _output_layers(graph: Any) -> list[torch.nn.Module]:
    """Conv and linear layers whose output channels reach a module output, found by walking
    back from the graph's sinks through layers that keep channels as they are."""
    import torch_pruning as tp

    channel_makers = (torch.nn.modules.conv._ConvNd, torch.nn.Linear, torch.nn.LSTM)
    found: list[torch.nn.Module] = []
    stack = [node for node in graph.module2node.values() if not node.outputs]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        module = node.module
        if isinstance(module, channel_makers):
            found.append(module)
            depthwise = isinstance(module, torch.nn.modules.conv._ConvNd) and (
                module.groups == module.in_channels == module.out_channels
            )
            if not depthwise:
                continue
        if isinstance(module, tp.ops._ConcatOp | tp.ops._SplitOp):
            continue  # channels are remapped there; what is behind keeps its own
        stack.extend(node.inputs)
    return found


def _attention_heads(module: torch.nn.Module) -> dict[torch.nn.Module, int]:
    return {m: m.num_heads for m in module.modules() if isinstance(m, torch.nn.MultiheadAttention)}


def footprint(module: torch.nn.Module, example_inputs: Any) -> Footprint:
    """Parameters (shared ones once) and MACs on the example inputs."""
    import torch_pruning as tp

    inputs = ExampleInputs.of(module, example_inputs, "prune")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        macs, _ = tp.utils.count_ops_and_params(module, inputs.traced())
    parameters = sum(p.numel() for p in module.parameters())
    return Footprint(parameters=int(parameters), macs=int(macs))


def prune(
    module: torch.nn.Module,
    example_inputs: Any,
    *,
    ratio: float = 0.5,
    data: Any = None,
    epochs: int = 3,
    target: Literal["params", "macs"] = "params",
    **options: Any,
) -> PassResult:
    """Prune `ratio` of `module`'s parameters (or MACs with `target="macs"`) and fine-tune on
    `data` (a `Samples` or a `--data` folder) for `epochs`; `result.module` is the smaller
    module. Options: task, eval_data, importance, round_to, ignored_layers, lr, batch_size,
    temperature, seed (see `PrunePass`)."""
    return PrunePass(ratio, target=target, data=data, epochs=epochs, **options)(
        module, example_inputs
    )
