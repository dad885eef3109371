"""`--data` for `optimize`: read once, split into a calibration part and a held-out part.

What a caller can rely on:
- every sample in `--data` is read, or `max_samples` of them drawn with a fixed seed
  (stratified by class when there are labels; `evaluate.data.load_data`);
- the split is deterministic and honest about classes: with one integer label per sample it is
  stratified (each class gives its share of the calibration part, drawn with the seed, and
  keeps at least one sample on each side where it has two), else a seeded random draw; never
  "the first N files", which hands whole classes to one side;
- by default the calibration part is 64 samples, never more than half of `--data`;
- both parts hold at least one sample, else `Split.read` raises `EdgeforgeError`;
- `Split.describe` names the file (and row) of every sample on each side;
- labels that do not line up with the samples are dropped (with a note), never half-used;
- `Split.digest` changes whenever a feed's name, dtype, shape or bytes, a label, the
  preprocessing, or which samples calibrate, changes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeforge._io import write_json
from edgeforge.errors import EdgeforgeError
from edgeforge.evaluate.data import SEED, Preprocess, Samples, allocate, load_data
from edgeforge.model import Model

__all__ = ["DEFAULT_CALIBRATION", "Split"]

DEFAULT_CALIBRATION = 64  # samples; never more than half of --data


@dataclass
class Split:
    """--data read once, split into the calibration part and the held-out part."""

    folder: Path
    samples: Samples
    calibration_index: list[int]
    held_out_index: list[int]
    labels_calibration: np.ndarray | None
    labels_held_out: np.ndarray | None
    stratified: bool
    digest: str

    @classmethod
    def read(
        cls,
        folder: Path,
        model: Model,
        calibration: int | None,
        max_samples: int | None = None,
        preprocess: Preprocess | str | None = None,
    ) -> Split:
        samples = load_data(folder, model.inputs, limit=max_samples, preprocess=preprocess)
        count = len(samples.feeds)
        if count < 2:
            raise EdgeforgeError(
                f"--data {folder}: {count} sample(s); optimize needs at least 2, one part "
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
        per_sample = (
            labels is not None
            and all(r == 1 for r in rows)
            and np.asarray(labels).dtype.kind in "iu"
        )
        chosen = _calibration_part(labels if per_sample else None, count, calibration)
        calibrating = set(chosen)
        held = [i for i in range(count) if i not in calibrating]
        starts = np.cumsum([0, *rows])

        def part(indices: list[int]) -> np.ndarray | None:
            if labels is None:
                return None
            return np.concatenate([labels[starts[i] : starts[i + 1]] for i in indices])

        return cls(
            folder,
            samples,
            chosen,
            held,
            part(chosen),
            part(held),
            bool(per_sample),
            _samples_digest(samples, chosen),
        )

    @property
    def calibration(self) -> int:
        return len(self.calibration_index)

    @property
    def calibration_feeds(self) -> list[dict[str, np.ndarray]]:
        return [self.samples.feeds[i] for i in self.calibration_index]

    @property
    def held_out(self) -> list[dict[str, np.ndarray]]:
        return [self.samples.feeds[i] for i in self.held_out_index]

    def write_calibration(self, out: Path) -> Path:
        """The calibration part as a folder of .npz files (inputs already preprocessed, labels
        beside them), for recipes' `data` option: every runtime then calibrates on exactly
        these samples. Written once per digest; returns the folder."""
        folder = out / "data" / f"calibration-{self.digest[:16]}"
        record = folder / "files.json"
        if record.is_file():
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        starts = np.cumsum([0, *[len(next(iter(f.values()))) for f in self.samples.feeds]])
        for position, index in enumerate(self.calibration_index):
            arrays = dict(self.samples.feeds[index])
            if self.samples.labels is not None and self.labels_calibration is not None:
                arrays["label"] = self.samples.labels[starts[index] : starts[index + 1]]
            np.savez(folder / f"{position:06d}.npz", **arrays)
        write_json(record, {"calibration_files": self.files(self.calibration_index)})
        return folder

    def files(self, indices: list[int]) -> list[str]:
        origins = self.samples.files or [f"#{i}" for i in range(len(self.samples.feeds))]
        return [origins[i] for i in indices]

    def describe(self) -> dict[str, Any]:
        how = (
            f"stratified by class (seed {SEED})"
            if self.stratified
            else f"drawn at random (seed {SEED})"
        )
        return {
            "folder": str(self.folder),
            "source": self.samples.source,
            "samples": len(self.samples.feeds),
            "available": self.samples.available,
            "calibration_samples": self.calibration,
            "held_out_samples": len(self.held_out_index),
            "labels": self.labels_held_out is not None,
            "preprocess": self.samples.preprocess,
            "split": f"{self.calibration} samples, {how}, calibrate and fine-tune; accuracy and "
            f"every limit are judged on the other {len(self.held_out_index)} (held out)",
            "calibration_files": self.files(self.calibration_index),
            "holdout_files": self.files(self.held_out_index),
            "digest": self.digest,
            "notes": list(self.samples.notes),
        }


def _calibration_part(labels: np.ndarray | None, count: int, calibration: int) -> list[int]:
    """Which samples calibrate, in their original order: stratified by `labels` when given
    (each class keeps at least one sample held out where it has two), else a seeded draw."""
    rng = np.random.default_rng(SEED)
    if labels is None:
        return sorted(int(i) for i in rng.permutation(count)[:calibration])
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(np.ravel(labels)):
        by_class.setdefault(int(label), []).append(index)
    sizes = {c: len(m) for c, m in by_class.items()}
    quotas = allocate(sizes, calibration)
    for c, n in sizes.items():  # keep one of each class to judge on, where there are two
        if n >= 2 and quotas[c] >= n:
            spare = next((d for d in sorted(sizes) if quotas[d] < sizes[d] - 1), None)
            quotas[c] -= 1
            if spare is not None:
                quotas[spare] += 1
    chosen: list[int] = []
    for c in sorted(by_class):
        picks = rng.permutation(len(by_class[c]))[: quotas[c]]
        chosen += [by_class[c][int(i)] for i in picks]
    if len(chosen) < calibration:  # classes of one sample were all held: fill at random
        taken = set(chosen)
        rest = [i for i in range(count) if i not in taken]
        chosen += [rest[int(i)] for i in rng.permutation(len(rest))[: calibration - len(chosen)]]
    return sorted(chosen[:calibration])


def _samples_digest(samples: Samples, calibration: list[int]) -> str:
    digest = hashlib.sha256()
    for feed in samples.feeds:
        for name in sorted(feed):
            array = np.ascontiguousarray(feed[name])
            digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
            digest.update(array.tobytes())
    if samples.labels is not None:
        digest.update(np.ascontiguousarray(samples.labels).tobytes())
    digest.update(json.dumps([samples.preprocess, calibration], sort_keys=True).encode())
    return digest.hexdigest()
