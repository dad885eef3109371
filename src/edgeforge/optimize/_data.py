"""`--data` for `optimize`: read once, split into a calibration part and a held-out part.

What a caller can rely on:
- the split is deterministic: the first `calibration` samples (in the folder's sorted order)
  are the calibration part, the rest are held out; by default the calibration part is 64
  samples, never more than half of `--data`;
- both parts hold at least one sample, else `Split.read` raises `EdgeforgeError`;
- labels that do not line up with the samples are dropped (with a note), never half-used;
- `Split.digest` changes whenever a feed's name, dtype, shape or bytes, or a label, changes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeforge.errors import EdgeforgeError
from edgeforge.evaluate.data import Samples, load_data
from edgeforge.model import Model

__all__ = ["ALL_SAMPLES", "DEFAULT_CALIBRATION", "Split"]

DEFAULT_CALIBRATION = 64  # samples; never more than half of --data
ALL_SAMPLES = 1 << 30


@dataclass
class Split:
    """--data read once, split into the calibration part and the held-out part."""

    folder: Path
    samples: Samples
    calibration: int
    labels_calibration: np.ndarray | None
    labels_held_out: np.ndarray | None
    digest: str

    @classmethod
    def read(cls, folder: Path, model: Model, calibration: int | None) -> Split:
        samples = load_data(folder, model.inputs, limit=ALL_SAMPLES)
        count = len(samples.feeds)
        if count < 2:
            raise EdgeforgeError(
                f"--data {folder}: {count} sample(s); optimize needs at least 2, the first part "
                "to calibrate and the rest to judge accuracy on"
            )
        if calibration is None:
            calibration = min(DEFAULT_CALIBRATION, count // 2)
        if not 1 <= calibration < count:
            raise EdgeforgeError(
                f"--calibration-samples {calibration}: give 1 to {count - 1} (--data holds "
                f"{count} samples; the rest are held out to judge accuracy)"
            )
        rows = [len(next(iter(feed.values()))) for feed in samples.feeds]
        labels = samples.labels
        if labels is not None and len(labels) != sum(rows):
            labels = None  # labels that do not line up with the samples cannot be trusted
            samples.notes.append(
                f"{len(samples.labels)} labels for {sum(rows)} samples: labels ignored"
            )
        cut = sum(rows[:calibration])
        return cls(
            folder,
            samples,
            calibration,
            None if labels is None else labels[:cut],
            None if labels is None else labels[cut:],
            _samples_digest(samples),
        )

    @property
    def held_out(self) -> list[dict[str, np.ndarray]]:
        return self.samples.feeds[self.calibration :]

    def describe(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "source": self.samples.source,
            "samples": len(self.samples.feeds),
            "calibration_samples": self.calibration,
            "held_out_samples": len(self.held_out),
            "labels": self.labels_held_out is not None,
            "split": f"the first {self.calibration} samples (sorted file order) calibrate and "
            "fine-tune; accuracy and every limit are judged on the other "
            f"{len(self.held_out)} (held out)",
            "digest": self.digest,
            "notes": list(self.samples.notes),
        }


def _samples_digest(samples: Samples) -> str:
    digest = hashlib.sha256()
    for feed in samples.feeds:
        for name in sorted(feed):
            array = np.ascontiguousarray(feed[name])
            digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
            digest.update(array.tobytes())
    if samples.labels is not None:
        digest.update(np.ascontiguousarray(samples.labels).tobytes())
    return digest.hexdigest()
