"""Knowledge distillation of a teacher module into a smaller student, on unlabelled data.

The student learns to reproduce the teacher's outputs on the user's inputs (labels, if the data
has any, are not used for training, only for reporting accuracy): Hinton et al.'s (2015) KL
divergence between temperature-softened logits for classifiers, mean squared error otherwise
(see `_training`).

The student is the caller's, or by default a width-reduced copy of the teacher: the same
structured channel pruning as the `prune` pass keeps `width` of every prunable layer's
channels, those with the largest weight magnitude. It keeps the teacher's weights rather than
being reinitialised, because a pruned teacher is a warm start: Muralidharan et al. 2024
("Compact Language Models via Pruning and Knowledge Distillation", Minitron) found that
distilling from a pruned initialisation reaches a given accuracy with far less training than
from random weights, and a bounded step budget is what this pass has. `reinitialise=True`
starts from fresh weights instead (a baseline, or when the teacher's weights must not leak
into the student).

What a caller can rely on: neither the teacher nor a supplied student is modified (the student
is trained as a copy); the student must give outputs of the teacher's shapes; a run is
deterministic for a seed; training stops after `steps` optimiser steps.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from edgeforge.errors import EdgeforgeError
from edgeforge.passes._torch_data import ExampleInputs, interface, tensor_data
from edgeforge.passes._training import evaluate, fit, objective_for, outputs, seeded
from edgeforge.passes.base import Pass, PassResult
from edgeforge.passes.prune import footprint, prune_channels

__all__ = ["DistillPass", "distill"]


class DistillPass(Pass):
    """Train a student to match the teacher's outputs on unlabelled data."""

    name = "distill"
    consumes = "torch"

    def __init__(
        self,
        data: Any,
        *,
        student: torch.nn.Module | None = None,
        width: float = 0.5,
        reinitialise: bool = False,
        steps: int = 500,
        batch_size: int = 32,
        lr: float = 1e-3,
        temperature: float = 4.0,
        task: str = "auto",
        eval_data: Any = None,
        seed: int = 0,
    ) -> None:
        if data is None:
            raise EdgeforgeError(
                "distillation needs data: pass inputs like the model's (a Samples or a --data "
                "folder; labels are not needed)"
            )
        if student is not None and not isinstance(student, torch.nn.Module):
            raise EdgeforgeError(f"the student must be a torch module, not a {type(student)}")
        if student is None and not 0 < width < 1:
            raise EdgeforgeError(
                f"student width must be between 0 and 1 (the share of channels kept), not {width}"
            )
        if steps < 1 or batch_size < 1 or lr <= 0:
            raise EdgeforgeError("steps and batch_size must be >= 1 and lr > 0")
        self.data = data
        self.student = student
        self.width = width
        self.reinitialise = reinitialise
        self.steps = steps
        self.batch_size = batch_size
        self.lr = lr
        self.temperature = temperature
        self.task = task
        self.eval_data = eval_data
        self.seed = seed

    def apply(self, source: torch.nn.Module, example_inputs: ExampleInputs) -> PassResult:
        inputs = example_inputs
        train = tensor_data(self.data, inputs, "data")
        held_out = (
            tensor_data(self.eval_data, inputs, "eval_data") if self.eval_data is not None else None
        )
        teacher = copy.deepcopy(source).eval()
        notes = []
        with seeded(self.seed) as generator:
            if self.student is not None:
                student = copy.deepcopy(self.student).eval()
                want = interface(teacher, inputs, "the teacher")
                have = interface(student, inputs, "the student")
                if have != want:
                    raise EdgeforgeError(
                        f"the student's outputs {have} do not match the teacher's {want} on the "
                        "example inputs; give a student with the teacher's output shapes"
                    )
                notes.append(f"student supplied: {type(student).__name__}")
            else:
                student = prune_channels(teacher, inputs, 1 - self.width)
                if self.reinitialise:
                    for module in student.modules():
                        if hasattr(module, "reset_parameters"):
                            module.reset_parameters()
                notes.append(
                    f"student: the teacher with {self.width:.0%} of each prunable layer's "
                    "channels (largest L1 magnitude; layers feeding the outputs kept theirs), "
                    + ("reinitialised" if self.reinitialise else "starting from its weights")
                )
            first = outputs(teacher, inputs, train)[0]
            objective = objective_for(
                self.task, train, first, use_labels=False, temperature=self.temperature
            )
            judge = held_out if held_out is not None else train
            reference = outputs(teacher, inputs, judge)[0]
            metrics: dict[str, float] = {}
            for name, value in evaluate(teacher, inputs, judge, objective.task).items():
                metrics[f"teacher_{name}"] = value
            for name, value in evaluate(student, inputs, judge, objective.task, reference).items():
                metrics[f"student_before_{name}"] = value
            metrics["final_loss"] = fit(
                student,
                inputs,
                train,
                objective,
                teacher=teacher,
                steps=self.steps,
                batch_size=self.batch_size,
                lr=self.lr,
                generator=generator,
                description="Distilling",
            )
            for name, value in evaluate(student, inputs, judge, objective.task, reference).items():
                metrics[f"student_{name}"] = value
        if train.labels is not None:
            notes.append("the data's labels were not used for training")
        notes.append(
            f"{self.steps} steps of {objective.describe()} on {len(train)} samples "
            f"({train.source}); metrics on " + ("eval_data" if held_out else "the training data")
        )
        return PassResult(
            self.name,
            student.eval(),
            footprint(source, inputs),
            footprint(student, inputs),
            metrics,
            notes,
        )


def distill(
    teacher: torch.nn.Module,
    example_inputs: Any,
    data: Any,
    *,
    student: torch.nn.Module | None = None,
    width: float = 0.5,
    steps: int = 500,
    **options: Any,
) -> PassResult:
    """Distil `teacher` into `student` (default: the teacher at `width` of its channels) on
    `data` (a `Samples` or a `--data` folder; labels unused) for `steps` steps;
    `result.module` is the trained student. Options: reinitialise, batch_size, lr,
    temperature, task, eval_data, seed (see `DistillPass`)."""
    return DistillPass(data, student=student, width=width, steps=steps, **options)(
        teacher, example_inputs
    )
