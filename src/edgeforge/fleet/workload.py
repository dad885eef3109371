"""What the simulated devices see: synthetic images, a tiny classifier of them, shifted inputs.

The fleet simulator (`edgeforge.fleet.simulate`) runs real agents; with a `Workload` each device
also runs its active model through the agent's own `predict()` on a stream of synthetic images,
window after window, so that the device's real telemetry (sketches, spooled windows, signed
upload with the next check-in) reaches the real server, which merges them and judges drift.

- `SyntheticImages`: 3-channel images of a few classes, each class a colour plus pixel noise and
  a per-image lighting jitter, values in [0, 1]. `batch(..., brightness=, class_mix=)` draws the
  shifted versions: every pixel brightened (then clipped), or the classes drawn with another mix.
- `InputShift`: which devices see shifted inputs (`fraction` of them, drawn with the seed) and
  from which window on (`start`).
- `publish_classifier`: publishes NAME/VERSION/CLASS as `release` lays it out (model, canary set,
  and `reference.json`, the same sketches computed on clean evaluation images, the baseline the
  server compares against), for a nearest-colour classifier in ONNX with a dynamic batch axis.

A window of the simulation is `window_s` of simulated time (a day by default: the server judges
drift per model version x device class x day, so a window's verdict is its day's); it takes
only as long in wall-clock time as its `calls` predictions and one check-in.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeforge.errors import EdgeforgeError

__all__ = ["InputShift", "SyntheticImages", "Workload", "parse_shift", "publish_classifier"]


@dataclass(frozen=True)
class InputShift:
    """From window `start` on (0-based, counted in the simulation's rounds), `fraction` of the
    devices see shifted inputs: `brightness` added to every pixel, and/or the classes drawn
    with the probabilities `class_mix` instead of evenly."""

    fraction: float = 0.3
    start: int = 0
    brightness: float = 0.0
    class_mix: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.fraction <= 1:
            raise EdgeforgeError(f"shift fraction {self.fraction} must be between 0 and 1")
        if self.start < 0:
            raise EdgeforgeError(f"shift start {self.start} must be a window index >= 0")
        if self.class_mix is not None and (
            min(self.class_mix) < 0 or not math.isclose(sum(self.class_mix), 1.0, abs_tol=1e-6)
        ):
            raise EdgeforgeError("class_mix must be probabilities that sum to 1")


def parse_shift(text: str) -> InputShift:
    """`30%@2:brightness=0.2` or `30%@2:mix=0.7/0.1/0.1/0.1` (both may be given, comma-separated):
    FRACTION@FIRST-WINDOW:KIND=VALUE,..."""
    head, _, kinds = text.partition(":")
    fraction, _, start = head.partition("@")
    try:
        value = fraction.strip()
        share = float(value.rstrip("%")) / (100 if value.endswith("%") else 1)
        first = int(start) if start.strip() else 0
        brightness, mix = 0.0, None
        for item in filter(None, (k.strip() for k in kinds.split(","))):
            key, _, arg = item.partition("=")
            if key == "brightness":
                brightness = float(arg)
            elif key == "mix":
                mix = tuple(float(p) for p in arg.split("/"))
            else:
                raise ValueError(key)
    except ValueError:
        raise EdgeforgeError(
            f"shift {text!r}: write FRACTION@WINDOW:brightness=B or :mix=P1/P2/..., e.g. "
            "30%@2:brightness=0.2"
        ) from None
    if not brightness and mix is None:
        raise EdgeforgeError(f"shift {text!r} shifts nothing; add :brightness=B or :mix=P1/P2/...")
    return InputShift(share, first, brightness, mix)


@dataclass(frozen=True)
class SyntheticImages:
    """Images (N, 3, size, size) in [0, 1] of `classes` colours (drawn with `seed`)."""

    classes: int = 4
    size: int = 8
    noise: float = 0.15  # per pixel
    lighting: float = 0.05  # per image and channel
    seed: int = 0

    def prototypes(self) -> np.ndarray:
        return np.random.default_rng(self.seed).uniform(0.2, 0.8, size=(self.classes, 3))

    def batch(
        self,
        rng: np.random.Generator,
        rows: int,
        *,
        brightness: float = 0.0,
        class_mix: tuple[float, ...] | None = None,
    ) -> np.ndarray:
        if class_mix is not None and len(class_mix) != self.classes:
            raise EdgeforgeError(f"class_mix has {len(class_mix)} entries for {self.classes}")
        labels = rng.choice(self.classes, size=rows, p=class_mix)
        x = self.prototypes()[labels][:, :, None, None]
        x = x + rng.normal(0.0, self.lighting, (rows, 3, 1, 1))
        x = x + rng.normal(0.0, self.noise, (rows, 3, self.size, self.size))
        return np.clip(x + brightness, 0.0, 1.0).astype(np.float32)


@dataclass
class Workload:
    """What each device does per window: `calls` predict() calls of `rows` images each, at
    simulated time `start + window * window_s` (the clock of the device's telemetry only)."""

    images: SyntheticImages = field(default_factory=SyntheticImages)
    calls: int = 4
    rows: int = 32
    window_s: float = 86400.0
    start: float = 0.0  # simulated time of window 0; aligned down to window_s
    shift: InputShift | None = None
    input_name: str = "x"

    def window_time(self, window: int) -> float:
        """A simulated instant inside window `window`."""
        return (math.floor(self.start / self.window_s) + window + 0.5) * self.window_s

    def feed(self, rng: np.random.Generator, window: int, shifted: bool) -> dict[str, np.ndarray]:
        on = shifted and self.shift is not None and window >= self.shift.start
        shift = self.shift if on else None
        return {
            self.input_name: self.images.batch(
                rng,
                self.rows,
                brightness=shift.brightness if shift else 0.0,
                class_mix=shift.class_mix if shift else None,
            )
        }


# ------------------------------------------------------------------ the model


def _classifier(path: Path, images: SyntheticImages, sharpness: float = 40.0) -> Path:
    """Nearest class colour: softmax(-sharpness * |channel means - colour_k|^2), as
    ReduceMean -> MatMul -> Add -> Softmax with a dynamic batch axis."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    protos = images.prototypes()
    weight = (2 * sharpness * protos.T).astype(np.float32)  # (3, classes)
    bias = (-sharpness * (protos**2).sum(1)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["z"]),
        helper.make_node("Add", ["z", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
    ]
    inits = [
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(bias, "b"),
    ]
    graph = helper.make_graph(
        nodes,
        "colours",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, images.size, images.size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", images.classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def publish_classifier(
    repo: Any,
    work: Path,
    name: str,
    version: int,
    device_class: str,
    images: SyntheticImages,
    *,
    eval_rows: int = 2000,
) -> dict[str, Any]:
    """Publish NAME/VERSION/CLASS (variant.json, model.onnx, canary.npz, reference.json) into
    `repo` (an `edgeforge.fleet.repository.Repository`); returns variant.json. The reference is
    `reference_from_data` of the model's outputs on `eval_rows` clean images, as `release`
    computes it on evaluation data."""
    import onnxruntime as ort

    from edgeforge.fleet.monitor import reference_from_data

    folder = Path(work) / f"{name}-{version}-{device_class}"
    folder.mkdir(parents=True, exist_ok=True)
    model = _classifier(folder / "model.onnx", images)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(images.seed + 1)
    evaluation = images.batch(rng, eval_rows)
    outputs = session.run(["y"], {"x": evaluation})[0]
    reference = reference_from_data(
        outputs, evaluation, output_kind="probabilities", input_kind="image"
    )
    (folder / "reference.json").write_text(json.dumps(reference.to_dict()))
    canary_in = evaluation[:4, None]  # axis 0 the sample, each a batch of one
    canary_out = np.stack([session.run(["y"], {"x": x})[0] for x in canary_in])
    np.savez(folder / "canary.npz", **{"in/x": canary_in, "out/y": canary_out})
    files = []
    for file in ("model.onnx", "canary.npz", "reference.json"):
        data = (folder / file).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        files.append({"path": file, "sha256": digest, "length": len(data)})
    index = {
        "name": name,
        "version": version,
        "device_class": device_class,
        "runtime": "onnxruntime",
        "precision": "fp32",
        "format": "onnx",
        "main": "model.onnx",
        "files": files,
        "input_kind": "image",
        "output_kind": "probabilities",
        "evidence": {},
        "canary": {
            "file": "canary.npz",
            "samples": len(canary_in),
            "tolerance": {"rtol": 1e-3, "atol": 1e-4, "min_cosine": 0.9999, "min_top1": 0.0},
        },
        "reference": "reference.json",
    }
    (folder / "variant.json").write_text(json.dumps(index))
    base = f"{name}/{version}/{device_class}"
    custom = {"edgeforge": {"name": name, "version": version, "device_class": device_class}}
    with repo.lock():
        repo.publish(
            {f"{base}/{f}": folder / f for f in ("variant.json", *[x["path"] for x in files])},
            {f"{base}/variant.json": custom},
        )
    return index
