"""Inputs for verification: a user's `--data` folder, or samples synthesised from a signature.

A data folder holds one of:
- `.npz` files, each one sample (or a batch along axis 0) with arrays named after the model's
  inputs, and optionally `label`;
- `.npy` files named after the inputs (`image.npy`), samples along axis 0, and optionally
  `labels.npy`;
- images (`.png`, `.jpg`, `.jpeg`, `.bmp`) for a single image input, either flat or in one
  sub-folder per class (the class index is the folder's position in sorted order); they are
  resized to the input's size and scaled to [0, 1], channels first.

Synthesised samples always include edge values: zeros, ones, large magnitudes and negative
values for float inputs; 0 and the largest valid index for integer inputs (the vocabulary size
is read from the Gather that consumes the input, when there is one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeforge.errors import EdgeforgeError
from edgeforge.model import Model, TensorSpec

__all__ = ["Samples", "load_data", "synthesize"]

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
_EDGE_SAMPLES = 4  # the most edge values any dtype has (floats: 0, 1, -1, 8)
_LAYOUT = (
    "expected .npz files with arrays named after the inputs, .npy files named <input>.npy, or "
    "images (optionally in one sub-folder per class)"
)


@dataclass
class Samples:
    """Feeds to run, one dict per sample, and labels when the data has them."""

    feeds: list[dict[str, np.ndarray]]
    labels: np.ndarray | None = None
    source: str = "synthesised"
    notes: list[str] = field(default_factory=list)


def load_data(folder: Path, inputs: tuple[TensorSpec, ...], limit: int = 64) -> Samples:
    """Read up to `limit` samples from `folder`; raises EdgeforgeError naming what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgeforgeError(f"--data {folder}: not a folder; {_LAYOUT}")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise EdgeforgeError(f"--data {folder}: the folder is empty; {_LAYOUT}")
    npz = [p for p in files if p.suffix == ".npz"]
    npy = {p.stem: p for p in files if p.suffix == ".npy"}
    images = [p for p in files if p.suffix.lower() in _IMAGE_SUFFIXES]
    if npz:
        samples = _from_npz(npz, inputs)
    elif npy:
        samples = _from_npy(npy, inputs, folder)
    elif images:
        samples = _from_images(images, inputs, folder)
    else:
        raise EdgeforgeError(f"--data {folder}: no .npz, .npy or image files; {_LAYOUT}")
    samples.feeds = samples.feeds[:limit]
    if samples.labels is not None:
        samples.labels = samples.labels[:limit]
    for feed in samples.feeds:
        _check_feed(feed, inputs, folder)
    return samples


def synthesize(
    model: Model | None,
    inputs: tuple[TensorSpec, ...] | None = None,
    count: int = 6,
    seed: int = 0,
    edges: bool = True,
) -> Samples:
    """`count` samples for `inputs` (default: the model's): edge values first (unless `edges`
    is false: quantized models clip them to their calibrated ranges by design), then random
    ones; dynamic dims take 1 on the batch axis and 16 elsewhere. Without a model, integer
    inputs stay in [0, 2) since no vocabulary size is known."""
    vocab = _vocabulary_sizes(model) if model is not None else {}
    rng = np.random.default_rng(seed)
    first = 0 if edges else _EDGE_SAMPLES
    feeds = []
    for index in range(first, first + count):
        feed = {}
        for spec in inputs or model.inputs:  # type: ignore[union-attr]
            shape = _concrete(spec)
            feed[spec.name] = _sample(spec.dtype, shape, index, rng, vocab.get(spec.name))
        feeds.append(feed)
    return Samples(feeds, None, f"synthesised ({'edge values + ' if edges else ''}random)")


def _sample(dtype: str, shape: tuple[int, ...], index: int, rng, vocab: int | None) -> np.ndarray:
    numpy_dtype = np.dtype(dtype) if dtype not in ("undefined", "bfloat16") else np.float32
    if numpy_dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if numpy_dtype.kind in "iu":
        high = vocab if vocab else 2  # masks and flags when nothing says otherwise
        edge = [np.zeros(shape), np.full(shape, high - 1)]
        values = edge[index] if index < len(edge) else rng.integers(0, high, shape)
        return np.asarray(values).astype(numpy_dtype)
    edge = [np.zeros(shape), np.ones(shape), np.full(shape, -1.0), np.full(shape, 8.0)]
    values = edge[index] if index < len(edge) else rng.standard_normal(shape)
    return np.asarray(values).astype(numpy_dtype)


def _concrete(spec: TensorSpec) -> tuple[int, ...]:
    if spec.shape is None:
        raise EdgeforgeError(f"input {spec.name!r} has no known rank; pass samples with --data")
    dims = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int):
            dims.append(dim)
        elif axis == 0 or spec.dtype.startswith("int"):
            dims.append(1 if axis == 0 else 16)
        else:
            dims.append(16)
    return tuple(dims)


def _vocabulary_sizes(model: Model) -> dict[str, int]:
    """Integer inputs used as Gather indices: the gathered table's first dimension."""
    proto = model.proto(load_weights=False)
    tables = {t.name: t.dims[0] for t in proto.graph.initializer if t.dims}
    sizes: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in tables:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if axis == 0:
                sizes.setdefault(node.input[1], int(tables[node.input[0]]))
    return sizes


def _from_npz(files: list[Path], inputs: tuple[TensorSpec, ...]) -> Samples:
    feeds, labels = [], []
    for path in files:
        with np.load(path) as archive:
            arrays = dict(archive)
        missing = [t.name for t in inputs if t.name not in arrays]
        if missing:
            raise EdgeforgeError(
                f"--data {path.name}: no array named {missing[0]!r}; each .npz needs arrays "
                f"named {', '.join(t.name for t in inputs)} (and optionally 'label')"
            )
        feeds.append({t.name: arrays[t.name] for t in inputs})
        if "label" in arrays:
            labels.append(np.atleast_1d(arrays["label"]))
    return Samples(feeds, np.concatenate(labels) if labels else None, f"{len(files)} .npz files")


def _from_npy(files: dict[str, Path], inputs: tuple[TensorSpec, ...], folder: Path) -> Samples:
    missing = [t.name for t in inputs if t.name not in files]
    if missing:
        raise EdgeforgeError(
            f"--data {folder}: no {missing[0]}.npy; give one <input>.npy per input "
            f"({', '.join(t.name + '.npy' for t in inputs)}) with samples along axis 0"
        )
    arrays = {t.name: np.load(files[t.name]) for t in inputs}
    counts = {len(a) for a in arrays.values()}
    if len(counts) != 1:
        raise EdgeforgeError(f"--data {folder}: the .npy files hold different sample counts")
    count = counts.pop()
    # Each sample keeps a batch axis of 1 so it matches the model's rank.
    feeds = [{name: a[i : i + 1] for name, a in arrays.items()} for i in range(count)]
    labels = np.load(files["labels"]) if "labels" in files else None
    return Samples(feeds, labels, f"{count} samples from .npy files")


def _from_images(files: list[Path], inputs: tuple[TensorSpec, ...], folder: Path) -> Samples:
    from PIL import Image

    if len(inputs) != 1 or inputs[0].shape is None or len(inputs[0].shape) != 4:
        raise EdgeforgeError(
            f"--data {folder}: images fit a model with one NCHW input; this model takes "
            f"{', '.join(t.name for t in inputs)}"
        )
    spec = inputs[0]
    channels, height, width = (d if isinstance(d, int) else None for d in spec.shape[1:])
    classes = sorted({p.parent.name for p in files if p.parent != folder})
    feeds, labels = [], []
    for path in files:
        image = Image.open(path).convert("L" if channels == 1 else "RGB")
        if height and width:
            image = image.resize((width, height))
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        feeds.append({spec.name: array[None].astype(spec.dtype)})
        if classes:
            labels.append(classes.index(path.parent.name))
    return Samples(feeds, np.asarray(labels) if classes else None, f"{len(files)} images")


def _check_feed(feed: dict[str, np.ndarray], inputs: tuple[TensorSpec, ...], folder: Path) -> None:
    for spec in inputs:
        array = feed[spec.name]
        if spec.shape is not None and array.ndim != len(spec.shape):
            raise EdgeforgeError(
                f"--data {folder}: input {spec.name!r} has rank {array.ndim} "
                f"{list(array.shape)}, the model expects rank {len(spec.shape)} {list(spec.shape)}"
            )
        if spec.shape is not None:
            for axis, (got, want) in enumerate(zip(array.shape, spec.shape, strict=True)):
                if isinstance(want, int) and got != want:
                    raise EdgeforgeError(
                        f"--data {folder}: input {spec.name!r} axis {axis} is {got}, the model "
                        f"expects {want} (shape {list(spec.shape)})"
                    )
        if np.dtype(spec.dtype).kind != array.dtype.kind:
            raise EdgeforgeError(
                f"--data {folder}: input {spec.name!r} is {array.dtype}, the model expects "
                f"{spec.dtype}"
            )
        feed[spec.name] = array.astype(spec.dtype, copy=False)
