"""Helpers for the monitor's server tests: devices that build real telemetry windows with the
device library (`edgeforge.fleet.telemetry.Telemetry`) and send them signed, as the agent does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from server_support import Device, Server

from edgeforge.fleet.monitor import reference_from_data
from edgeforge.fleet.repository import Repository
from edgeforge.fleet.telemetry import Telemetry

CLASSES = 5


def outputs(rng: np.random.Generator, rows: int, *, sharp: float = 3.0) -> np.ndarray:
    """Softmax outputs of a 5-class model; `sharp` sets how confident it is."""
    logits = rng.normal(size=(rows, CLASSES)) * sharp
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def inputs(rng: np.random.Generator, rows: int, *, shift: float = 0.0) -> np.ndarray:
    return (rng.normal(size=(rows, 3, 4, 4)) + shift).astype(np.float32)


def windows(
    folder: Path,
    device: Device,
    name: str,
    version: int,
    *,
    latency_ms: float,
    seed: int,
    sharp: float = 3.0,
    shift: float = 0.0,
    calls: int = 6,
) -> list[dict[str, str]]:
    """One closed window of `calls` inference calls on `device`, as `drain` gives it."""
    rng = np.random.default_rng(seed)
    tel = Telemetry(folder / device.device_id / f"tel-{version}", device_class=device.device_class)
    tel.set_model(name, version, output_kind="probabilities", input_kind="image")
    for _ in range(calls):
        tel.observe(
            inputs(rng, 8, shift=shift),
            outputs(rng, 8, sharp=sharp),
            float(latency_ms * rng.uniform(0.9, 1.1)),
        )
    return tel.drain(flush=True)


def send(server: Server, device: Device, events: list[dict[str, Any]], telemetry: list) -> Any:
    body = json.dumps({"events": events, "telemetry": telemetry}).encode()
    return device.signed(server, "/v1/report", body)


def publish_reference(repo_path: Path, name: str, version: int, device_class: str) -> None:
    """`NAME/VERSION/CLASS/reference.json` from evaluation-like data, as release writes it."""
    rng = np.random.default_rng(1234)
    ref = reference_from_data(
        outputs(rng, 400), inputs(rng, 400), output_kind="probabilities", input_kind="image"
    )
    local = repo_path.parent / f"reference-{name}-{version}-{device_class}.json"
    local.write_text(json.dumps(ref.to_dict()))
    repo = Repository.open(repo_path)
    with repo.lock():
        repo.publish({f"{name}/{version}/{device_class}/reference.json": local})
