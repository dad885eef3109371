"""What the registry and release tests share: a tiny ONNX classifier, labelled samples, a
PostgreSQL schema per test session, and snapshots of a repository and a registry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from server_support import postgres_schema as fresh_schema

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def tiny_classifier(path: Path, seed: int = 0) -> Path:
    """x [batch, 4] -> logits [batch, 3]: one MatMul and one Add (opset 17)."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(4, 3)).astype(np.float32)
    bias = rng.normal(size=(3,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def labelled_samples(model: Path, folder: Path, count: int = 40) -> Path:
    """.npz samples (x, label) labelled by the model itself: its accuracy is 100%."""
    proto = onnx.load(model)
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        x = rng.normal(size=(1, 4)).astype(np.float32)
        label = int(np.argmax(x @ weights["W"] + weights["b"]))
        np.savez(folder / f"{i:03}.npz", x=x, label=np.array([label]))
    return folder


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (the lock file aside: taking it is no change)."""
    if not folder.exists():
        return {}
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def registry_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every registry table's rows, in id order."""
    from sqlalchemy import inspect, text

    from edgeforge.fleet.db import engine

    made = engine(url)
    tables = [t for t in inspect(made).get_table_names() if t.startswith("registry_")]
    with made.connect() as connection:
        return {
            t: [tuple(r) for r in connection.execute(text(f"SELECT * FROM {t} ORDER BY id"))]
            for t in sorted(tables)
        }


def postgres_schema() -> Iterator[str]:
    """A URL whose connections work in a fresh schema, dropped afterwards (parallel runs of the
    suite each get their own): server_support's, as a generator for fixtures."""
    with fresh_schema() as url:
        yield url


def cli(*argv: str) -> int:
    from edgeforge.cli import main

    return main([str(a) for a in argv])
