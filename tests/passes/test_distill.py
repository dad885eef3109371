"""Distillation on unlabelled data into a half-width student, and what it refuses."""

from __future__ import annotations

import pytest
import torch
from pass_data import as_samples
from torch import nn

from edgeforge.errors import EdgeforgeError
from edgeforge.passes.distill import distill
from edgeforge.zoo import DigitsCNN

DIGIT = torch.zeros(1, 1, 8, 8)


def test_a_half_width_student_agrees_with_the_teacher(trained_digits):
    teacher, data, _ = trained_digits
    result = distill(
        teacher,
        DIGIT,
        as_samples(data.train_x),  # no labels
        width=0.5,
        steps=150,
        eval_data=as_samples(data.test_x, data.test_y),
    )
    assert result.parameters_kept < 0.35  # half the channels: about a quarter of the weights
    # Measured on the 450 held-out digits: 98.7% top-1 agreement;
    # the student is 97.6% accurate, the teacher 97.8%.
    assert result.metrics["student_top1_agreement"] >= 0.95
    assert result.metrics["student_accuracy"] >= result.metrics["teacher_accuracy"] - 0.04
    assert result.module(torch.zeros(5, 1, 8, 8)).shape == (5, 10)


def test_a_supplied_student_is_trained_as_a_copy_and_deterministically(trained_digits):
    teacher, data, _ = trained_digits
    torch.manual_seed(1)
    student = DigitsCNN(width=4)
    untouched = [p.clone() for p in student.parameters()]
    data_ = as_samples(data.train_x[:200])
    first = distill(teacher, DIGIT, data_, student=student, steps=20, seed=3).module
    second = distill(teacher, DIGIT, data_, student=student, steps=20, seed=3).module
    assert all(torch.equal(a, b) for a, b in zip(untouched, student.parameters(), strict=True))
    assert all(
        torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters(), strict=True)
    )
    assert not torch.equal(next(first.parameters()), untouched[0])


def test_a_student_with_other_outputs_is_refused(trained_digits):
    teacher, data, _ = trained_digits
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    with pytest.raises(EdgeforgeError, match=r"student's outputs \['\[1, 5\] float32'\]") as e:
        distill(teacher, DIGIT, as_samples(data.train_x[:8]), student=wrong)
    assert "\n" not in str(e.value)


def test_data_of_the_wrong_shape_is_refused(trained_digits):
    teacher, _, _ = trained_digits
    big = as_samples(torch.zeros(4, 1, 16, 16).numpy())
    with pytest.raises(EdgeforgeError, match=r"\[1, 1, 16, 16\]"):
        distill(teacher, DIGIT, big)


@pytest.mark.parametrize("width", [0.0, 1.0, 2.0])
def test_width_outside_zero_one_is_refused(width):
    with pytest.raises(EdgeforgeError, match="between 0 and 1"):
        distill(DigitsCNN(), DIGIT, as_samples(torch.zeros(2, 1, 8, 8).numpy()), width=width)


def test_distillation_without_data_is_refused():
    with pytest.raises(EdgeforgeError, match="needs data"):
        distill(DigitsCNN(), DIGIT, None)
