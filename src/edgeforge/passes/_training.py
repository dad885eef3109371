"""Private machinery for training a torch module in a pass: the loss, the loop, the metrics.

The objective is chosen from the data, unless the caller names the task:
- integer labels: cross-entropy on the first output (classes along axis 1, torch's convention);
- float labels: mean squared error on the first output;
- no labels: distillation from a teacher's outputs, with Hinton et al.'s (2015) softened
  KL divergence (temperature T, scaled by T^2) on classifier outputs and mean squared error on
  every other output.
"Auto" treats an unlabelled module as a classifier when its first output has rank 2 and more
than one column (logits), as `evaluate.compare` does.

Runs are deterministic for a seed: the global RNG is forked (the caller's is left as it was)
and batches are shuffled by a seeded generator.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from edgeforge._progress import progress_bar
from edgeforge.errors import EdgeforgeError
from edgeforge.passes._torch_data import ExampleInputs, TensorData, leaves

__all__ = ["Objective", "Task", "evaluate", "fit", "objective_for", "outputs", "seeded"]

Task = Literal["auto", "classification", "regression"]
_TASKS = ("auto", "classification", "regression")


@dataclass(frozen=True)
class Objective:
    task: Literal["classification", "regression"]
    use_labels: bool  # False: match a teacher's outputs
    temperature: float = 4.0

    def describe(self) -> str:
        if self.use_labels:
            return "cross-entropy on labels" if self.task == "classification" else "MSE on labels"
        if self.task == "classification":
            return f"KL divergence to the teacher's logits at temperature {self.temperature:g}"
        return "MSE to the teacher's outputs"


def objective_for(
    task: str, data: TensorData, first_output: torch.Tensor, *, use_labels: bool, temperature: float
) -> Objective:
    if task not in _TASKS:
        raise EdgeforgeError(f"unknown task {task!r}; choose {', '.join(_TASKS)}")
    if temperature <= 0:
        raise EdgeforgeError(f"temperature must be above 0, not {temperature}")
    labels = data.labels if use_labels else None
    if labels is not None:
        integer = not labels.is_floating_point()
        if task == "auto":
            task = "classification" if integer else "regression"
        if task == "classification" and not integer:
            raise EdgeforgeError(
                "task 'classification' needs integer class labels; these are float (use "
                "task='regression' or give class indices)"
            )
        if task == "classification":
            classes = first_output.shape[1] if first_output.ndim >= 2 else 0
            if labels.min() < 0 or labels.max() >= classes:
                raise EdgeforgeError(
                    f"labels run from {int(labels.min())} to {int(labels.max())} but the "
                    f"module gives {classes} classes; give class indices in [0, {classes})"
                )
        return Objective(task, True, temperature)  # type: ignore[arg-type]
    if task == "auto":
        logits = first_output.ndim == 2 and first_output.shape[1] > 1
        task = "classification" if logits else "regression"
    return Objective(task, False, temperature)  # type: ignore[arg-type]


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[torch.Generator]:
    """Seed torch for the block without disturbing the caller's RNG; yields a generator for
    shuffling."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed)


def _loss(
    objective: Objective,
    student_out: list[torch.Tensor],
    labels: torch.Tensor | None,
    teacher_out: list[torch.Tensor] | None,
) -> torch.Tensor:
    if objective.use_labels:
        first = student_out[0]
        if objective.task == "classification":
            return F.cross_entropy(first, labels.long())
        return F.mse_loss(first, labels.to(first.dtype).reshape(first.shape))
    assert teacher_out is not None
    total = student_out[0].new_zeros(())
    t = objective.temperature
    for index, (s, w) in enumerate(zip(student_out, teacher_out, strict=True)):
        if not s.is_floating_point():
            continue
        if objective.task == "classification" and index == 0:
            # Hinton et al. 2015: soften both, scale by T^2 so gradients keep their size.
            total = total + F.kl_div(
                F.log_softmax(s / t, dim=1),
                F.log_softmax(w / t, dim=1),
                log_target=True,
                reduction="batchmean",
            ) * (t * t)
        else:
            total = total + F.mse_loss(s, w)
    return total


def fit(
    student: torch.nn.Module,
    inputs: ExampleInputs,
    data: TensorData,
    objective: Objective,
    *,
    teacher: torch.nn.Module | None,
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    description: str,
) -> float:
    """Train `student` for `steps` optimiser steps (cycling over shuffled data); returns the
    mean loss over the last tenth of the steps. The teacher stays in eval mode, untouched."""
    if teacher is not None:
        teacher.eval()
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    student.train()
    recent: list[float] = []
    done = 0
    with progress_bar(description, steps) as advance:
        while done < steps:
            for batch, labels in data.batches(batch_size, generator):
                if done >= steps:
                    break
                if len(batch[0]) < 2 and len(data) >= 2:
                    continue  # BatchNorm cannot train on a batch of one
                teacher_out = None
                if teacher is not None and not objective.use_labels:
                    with torch.no_grad():
                        teacher_out = leaves(inputs.call(teacher, batch))
                optimizer.zero_grad()
                loss = _loss(objective, leaves(inputs.call(student, batch)), labels, teacher_out)
                loss.backward()
                optimizer.step()
                recent = [*recent, loss.item()][-max(1, steps // 10) :]
                done += 1
                advance()
    student.eval()
    return sum(recent) / len(recent) if recent else float("nan")


def outputs(
    module: torch.nn.Module, inputs: ExampleInputs, data: TensorData, batch_size: int = 256
) -> list[torch.Tensor]:
    """The module's first output over all of `data` (eval mode, no gradients)."""
    module.eval()
    chunks = []
    with torch.no_grad():
        for batch, _ in data.batches(batch_size):
            chunks.append(leaves(inputs.call(module, batch))[0])
    return [torch.cat(chunks)]


def evaluate(
    module: torch.nn.Module,
    inputs: ExampleInputs,
    data: TensorData,
    task: str,
    reference: torch.Tensor | None = None,
) -> dict[str, float]:
    """Accuracy (classification) or MSE (regression) against the data's labels when it has
    any, and agreement with `reference` outputs (top-1 for classifiers, MSE otherwise)."""
    got = outputs(module, inputs, data)[0]
    metrics: dict[str, float] = {}
    labels = data.labels
    if labels is not None and task == "classification" and not labels.is_floating_point():
        metrics["accuracy"] = float((got.argmax(1) == labels).float().mean())
    elif labels is not None and task == "regression":
        metrics["mse"] = float(F.mse_loss(got, labels.to(got.dtype).reshape(got.shape)))
    if reference is not None:
        if task == "classification":
            metrics["top1_agreement"] = float((got.argmax(1) == reference.argmax(1)).float().mean())
        else:
            metrics["mse_to_reference"] = float(F.mse_loss(got, reference))
    return metrics
