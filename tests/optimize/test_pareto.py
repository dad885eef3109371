"""Limits, the Pareto front and the choice, on hand-made rows."""

from __future__ import annotations

import numpy as np
import pytest

from edgeforge.errors import EdgeforgeError
from edgeforge.optimize._accuracy import score
from edgeforge.optimize._pareto import (
    Limits,
    choose,
    pareto_front,
    parse_bytes,
    parse_ms,
    parse_share,
)


def _row(name, size, ms, drop):
    return {
        "id": name,
        "size_bytes": size,
        "device_latency_ms": ms,
        "accuracy_drop": drop,
        "memory_bytes": size,
    }


def test_limits_parse_units():
    assert parse_share("1%") == pytest.approx(0.01) and parse_share("0.02") == 0.02
    assert parse_bytes("5MB") == 5_000_000 and parse_bytes("1KiB") == 1024
    assert parse_ms("0.5s") == 500 and parse_ms("10ms") == 10
    with pytest.raises(EdgeforgeError, match="--max-accuracy-drop"):
        parse_share("1MB")


def test_front_and_choice_lowest_latency_then_size():
    rows = [
        _row("a", 100, 5.0, 0.0),
        _row("b", 50, 5.0, 0.0),
        _row("c", 10, 9.0, 0.05),
        _row("d", 200, 6.0, 0.0),
    ]
    front = pareto_front(rows)
    assert front["a"] == "b" and front["d"] is not None and front["b"] is None
    assert front["c"] is None
    assert choose(rows, Limits(max_accuracy_drop=0.01))[0] == "b"


def test_unmeasured_accuracy_is_never_chosen_under_an_accuracy_limit():
    rows = [_row("coreml", 10, 1.0, None), _row("ort", 100, 5.0, 0.0)]
    assert choose(rows, Limits(max_accuracy_drop=0.01))[0] == "ort"
    assert choose(rows, Limits())[0] == "coreml"


def test_limits_met_apart_but_never_together_name_the_closest():
    rows = [_row("small", 10, 9.0, 0.0), _row("fast", 100, 1.0, 0.0)]
    chosen, unmet = choose(rows, Limits(max_size_bytes=20, max_latency_ms=2.0))
    assert chosen is None and unmet[0]["limit"] == "all" and "none meets all" in unmet[0]["text"]


def test_score_with_and_without_labels():
    reference = [{"logits": np.array([[2.0, 1.0], [0.0, 3.0]])}]
    candidate = [{"logits": np.array([[2.0, 1.0], [3.0, 0.0]])}]
    labelled = score(candidate, reference, np.array([0, 1]))
    assert labelled.task == "classification" and labelled.drop == pytest.approx(0.5)
    unlabelled = score(candidate, reference, None)
    assert unlabelled.task == "agreement-top1" and unlabelled.drop == pytest.approx(0.5)
    regression = score([{"y": np.array([[1.5]])}], [{"y": np.array([[1.0]])}], np.array([1.0]))
    assert regression.task == "regression" and regression.candidate == pytest.approx(0.5)
