"""Inputs for verification: a user's `--data` folder, or samples synthesised from a signature.

A data folder holds one of:
- `.npz` files, each one sample (or a batch along axis 0) with arrays named after the model's
  inputs, and optionally `label`;
- `.npy` files named after the inputs (`image.npy`), samples along axis 0, and optionally
  `labels.npy`;
- images (`.png`, `.jpg`, `.jpeg`, `.bmp`) for a single image input, either flat or in one
  sub-folder per class (the class index is the folder's position in sorted order); they are
  resized to the input's size, scaled to [0, 1] and laid out as the input is, then normalised
  as a `Preprocess` says (`--preprocess mean=...;std=...;layout=nchw;channels=rgb`, or a
  `hook=module:function` / `hook=file.py:function` that turns an image's path into its array).

What a caller can rely on when reading a folder:
- every sample is used unless `limit` (`--max-samples`) says fewer; then the samples are drawn
  with a fixed seed, stratified by class when every sample has one integer label (each class
  keeps its share, and at least one sample while the limit allows), never "the first N files";
- the samples come back in the folder's sorted order, each with the file (and row) it came
  from in `Samples.files`; `Samples.available` says how many the folder held;
- the same folder, limit and seed give the same samples.

A `--data` folder is untrusted input (issue 13, class 6); reading it never runs code and never
allocates past the budget:
- arrays are read with `allow_pickle=False`: an object array is refused, never unpickled;
- every `.npy` (alone or inside an `.npz`) has its header read first; what its shape and dtype
  would allocate is checked against `_limits.memory_budget()` (all the arrays read, together)
  before any data is read, so a small `.npz` that inflates to gigabytes is refused up front;
- a truncated or corrupt `.npy`/`.npz`/image, or an image larger than the budget, is one line
  naming the file; so is a float input holding NaN or Inf (a data problem, not the model's).

Without a folder, `synthesize` makes realistic samples by each input's role (token ids inside
the vocabulary, attention masks with real tokens and a padded tail, speech-like audio,
image-like pixels: `edgeforge.evaluate.synthesis`); the old edge values (all-zero masks,
constants, extremes) are a separate robustness check, never part of a verdict.
"""

from __future__ import annotations

import importlib
import importlib.util
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeforge._limits import memory_budget
from edgeforge.errors import EdgeforgeError
from edgeforge.model import Model, TensorSpec

__all__ = ["SEED", "Preprocess", "Samples", "load_data", "resolve_callable", "synthesize"]

SEED = 0  # every draw from --data uses it: the same folder gives the same samples

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
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
    files: list[str] = field(default_factory=list)  # where each feed came from (folder reads)
    available: int | None = None  # how many samples the folder held (folder reads)
    preprocess: dict[str, Any] | None = None  # `Preprocess.to_dict()` for image folders


_PREPROCESS_KEYS = ("mean", "std", "layout", "channels", "scale", "hook")
_PREPROCESS_FORM = (
    "write key=value pairs separated by ';', e.g. "
    "'mean=0.485,0.456,0.406;std=0.229,0.224,0.225;layout=nchw;channels=rgb' "
    "(keys: mean, std, layout nchw|nhwc, channels rgb|bgr|gray, scale, hook=module:function)"
)


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes an input array: pixels / `scale` (255: to [0, 1]), then
    (x - mean) / std per channel, channels in `channels` order, laid out as `layout` (None:
    channels-last when the input's last axis, and not its second, holds 1, 3 or 4). `hook`
    (a `module:function` or `file.py:function`) replaces all of that: it is called with the
    image's path and returns the sample's array (with or without the batch axis)."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str | None = None  # nchw | nhwc; None: read from the input's shape
    channels: str | None = None  # rgb | bgr | gray; None: gray for one channel, else rgb
    scale: float = 255.0
    hook: str | None = None

    def __post_init__(self) -> None:
        if self.layout not in (None, "nchw", "nhwc"):
            raise EdgeforgeError(f"--preprocess layout={self.layout}: choose nchw or nhwc")
        if self.channels not in (None, "rgb", "bgr", "gray"):
            raise EdgeforgeError(f"--preprocess channels={self.channels}: choose rgb, bgr or gray")
        if self.std is not None and any(v == 0 for v in self.std):
            raise EdgeforgeError("--preprocess std: a standard deviation of 0 divides by zero")
        if not self.scale > 0:
            raise EdgeforgeError(f"--preprocess scale={self.scale}: give a positive divisor")
        if self.hook is not None and (self.mean or self.std or self.channels):
            raise EdgeforgeError(
                "--preprocess hook= replaces mean, std and channels (the hook returns the "
                "finished array); give either the hook or those keys"
            )

    @classmethod
    def parse(cls, text: str | Preprocess | dict[str, Any] | None) -> Preprocess | None:
        """`mean=0.485,0.456,0.406;std=0.229,0.224,0.225;layout=nchw;channels=rgb`, or the
        mapping `to_dict` wrote (a recipe's `preprocess` option, a manifest)."""
        if text is None or isinstance(text, Preprocess):
            return text
        if isinstance(text, dict):
            return cls.from_dict(text)
        values: dict[str, Any] = {}
        for part in (p.strip() for p in str(text).split(";")):
            if not part:
                continue
            key, sep, value = (x.strip() for x in part.partition("="))
            if not sep or key not in _PREPROCESS_KEYS or not value:
                raise EdgeforgeError(f"--preprocess {part!r}: {_PREPROCESS_FORM}")
            if key in ("mean", "std"):
                values[key] = tuple(_number(v, key) for v in value.split(",") if v.strip())
            elif key == "scale":
                values[key] = _number(value, key)
            else:
                values[key] = value.lower() if key in ("layout", "channels") else value
        if not values:
            raise EdgeforgeError(f"--preprocess {text!r}: nothing given; {_PREPROCESS_FORM}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
            "layout": self.layout,
            "channels": self.channels,
            "scale": self.scale,
            "hook": self.hook,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        """The inverse of `to_dict`; unknown keys and values are refused in one line."""
        unknown = sorted(set(data) - set(_PREPROCESS_KEYS))
        if unknown:
            raise EdgeforgeError(f"--preprocess {unknown[0]!r}: {_PREPROCESS_FORM}")
        values = {k: v for k, v in data.items() if v is not None}
        try:
            for key in ("mean", "std"):
                if key in values:
                    values[key] = tuple(float(v) for v in values[key])
            if "scale" in values:
                values["scale"] = float(values["scale"])
        except (TypeError, ValueError):
            raise EdgeforgeError(f"--preprocess {data!r}: {_PREPROCESS_FORM}") from None
        return cls(**values)

    def describe(self) -> str:
        if self.hook:
            return f"hook {self.hook}"
        parts = [f"pixels / {self.scale:g}"]
        if self.mean:
            parts.append(f"- mean {list(self.mean)}")
        if self.std:
            parts.append(f"/ std {list(self.std)}")
        return " ".join(parts) + f", {self.channels or 'rgb/gray'}, {self.layout or 'auto'}"

    def image(self, path: Path, spec: TensorSpec, hook: Callable | None) -> np.ndarray:
        """One image as `spec`'s sample: batch axis of 1, the input's dtype."""
        rank = len(spec.shape or ())
        if hook is not None:
            array = np.asarray(hook(path))
            return (array[None] if array.ndim == rank - 1 else array).astype(spec.dtype)
        from PIL import Image

        dims = [d if isinstance(d, int) else None for d in spec.shape[1:]]  # type: ignore[index]
        layout = self.layout or (
            "nhwc" if dims[2] in (1, 3, 4) and dims[0] not in (1, 3, 4) else "nchw"
        )
        channels, height, width = (
            (dims[0], dims[1], dims[2]) if layout == "nchw" else (dims[2], dims[0], dims[1])
        )
        order = self.channels or ("gray" if channels == 1 else "rgb")
        try:
            with Image.open(path) as opened:
                # The decoded pixels (float32, 3 channels) must fit the budget (issue 13).
                _within_budget(opened.width * opened.height * 3 * 4, path, "decoded")
                image = opened.convert("L" if order == "gray" else "RGB")
        except EdgeforgeError:
            raise
        except Exception as exc:  # PIL: unidentified, truncated, a decompression bomb
            raise EdgeforgeError(
                f"--data {path.name}: not a readable image ({type(exc).__name__}: "
                f"{str(exc)[:200]}); replace or remove the file"
            ) from None
        if height and width:
            image = image.resize((width, height))
        array = np.asarray(image, dtype=np.float32) / np.float32(self.scale)
        array = array[..., None] if array.ndim == 2 else array  # HWC
        if order == "bgr":
            array = array[..., ::-1]
        for values, name in ((self.mean, "mean"), (self.std, "std")):
            if values and len(values) not in (1, array.shape[-1]):
                raise EdgeforgeError(
                    f"--preprocess {name} has {len(values)} values for {array.shape[-1]} "
                    "channels; give one per channel, or one for all"
                )
        if self.mean:
            array = array - np.asarray(self.mean, dtype=np.float32)
        if self.std:
            array = array / np.asarray(self.std, dtype=np.float32)
        if layout == "nchw":
            array = array.transpose(2, 0, 1)
        return np.ascontiguousarray(array[None]).astype(spec.dtype)


def _number(text: str, key: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise EdgeforgeError(f"--preprocess {key}={text!r}: not a number") from None


def resolve_callable(reference: str, flag: str) -> Callable[..., Any]:
    """`package.module:function` or `path/to/file.py:function` -> the function."""
    module_name, sep, name = reference.rpartition(":")
    if not sep or not module_name or not name:
        raise EdgeforgeError(
            f"{flag} {reference!r}: name a function as module:function or file.py:function"
        )
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise EdgeforgeError(f"{flag} {reference!r}: no file {path}")
            spec = importlib.util.spec_from_file_location(f"edgeforge_user_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(module_name)
    except EdgeforgeError:
        raise
    except Exception as exc:
        raise EdgeforgeError(
            f"{flag} {reference!r}: importing {module_name} failed ({type(exc).__name__}: {exc})"
        ) from None
    found = getattr(module, name, None)
    if not callable(found):
        raise EdgeforgeError(f"{flag} {reference!r}: {module_name} has no function {name!r}")
    return found


def load_data(
    folder: Path,
    inputs: tuple[TensorSpec, ...],
    limit: int | None = None,
    *,
    seed: int = SEED,
    preprocess: Preprocess | str | None = None,
) -> Samples:
    """Every sample in `folder`, or `limit` of them drawn with `seed` (stratified by class
    when there are labels); raises EdgeforgeError naming what is wrong."""
    folder = Path(folder)
    preprocess = Preprocess.parse(preprocess)
    if limit is not None and limit < 1:
        raise EdgeforgeError(f"--max-samples {limit}: give a count of 1 or more")
    if not folder.is_dir():
        raise EdgeforgeError(f"--data {folder}: not a folder; {_LAYOUT}")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise EdgeforgeError(f"--data {folder}: the folder is empty; {_LAYOUT}")
    npz = [p for p in files if p.suffix == ".npz"]
    npy = {p.stem: p for p in files if p.suffix == ".npy"}
    images = [p for p in files if p.suffix.lower() in _IMAGE_SUFFIXES]
    if preprocess is not None and (npz or npy or not images):
        raise EdgeforgeError(
            f"--data {folder}: --preprocess applies to image folders, and this one holds "
            f"{'.npz' if npz else '.npy' if npy else 'no image'} files; store the inputs "
            "already preprocessed, or drop --preprocess"
        )
    if npz:
        items = _npz_items(npz, inputs, folder)
    elif npy:
        items = _npy_items(npy, inputs, folder)
    elif images:
        items = _image_items(images, inputs, folder, preprocess or Preprocess())
    else:
        raise EdgeforgeError(f"--data {folder}: no .npz, .npy or image files; {_LAYOUT}")
    chosen = draw([item.label for item in items], limit, seed)
    feeds = [items[i].load() for i in chosen]
    labels = [items[i].label_array for i in chosen]
    has_labels = bool(items) and all(item.label_array is not None for item in items)
    samples = Samples(
        feeds,
        np.concatenate(labels) if has_labels and labels else None,
        _described(items, chosen, folder, limit, seed),
        files=[items[i].origin for i in chosen],
        available=len(items),
        preprocess=preprocess.to_dict() if preprocess is not None else None,
    )
    if npy and "labels" in npy and not has_labels:
        samples.notes.append("labels.npy does not hold one label per sample: labels ignored")
    if images and preprocess is None:
        samples.notes.append(
            "images scaled to [0, 1] with no mean/std normalisation: if the model expects "
            "normalised inputs, pass --preprocess mean=...;std=..."
        )
    for feed, origin in zip(samples.feeds, samples.files, strict=True):
        _check_feed(feed, inputs, folder, origin)
    return samples


def draw(labels: list[int | None], limit: int | None, seed: int = SEED) -> list[int]:
    """Which of `len(labels)` samples to use, in their original order: all of them, or `limit`
    drawn with `seed`, stratified by class when every sample has a label (each class keeps its
    share by largest remainder, and at least one sample while `limit` allows)."""
    count = len(labels)
    if limit is None or limit >= count:
        return list(range(count))
    rng = np.random.default_rng(seed)
    if any(label is None for label in labels):
        return sorted(int(i) for i in rng.choice(count, size=limit, replace=False))
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(index)  # type: ignore[arg-type]
    quotas = allocate({c: len(m) for c, m in by_class.items()}, limit)
    chosen: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        picks = rng.permutation(len(members))[: quotas[label]]
        chosen += [members[int(i)] for i in picks]
    return sorted(chosen)


def allocate(sizes: dict[int, int], total: int) -> dict[int, int]:
    """`total` split over classes in proportion to `sizes` (largest remainder), each class
    getting at least one while `total` covers every class, never more than it holds."""
    whole = sum(sizes.values())
    shares = {c: total * n / whole for c, n in sizes.items()}
    quotas = {c: min(sizes[c], int(share)) for c, share in shares.items()}
    if total >= len(sizes):
        for c in sizes:
            quotas[c] = max(quotas[c], 1)
    order = sorted(sizes, key=lambda c: (-(shares[c] - int(shares[c])), c))
    while sum(quotas.values()) < total:
        grown = False
        for c in order:
            if sum(quotas.values()) < total and quotas[c] < sizes[c]:
                quotas[c] += 1
                grown = True
        if not grown:
            break
    while sum(quotas.values()) > total:  # the minimum of one overshot: take from the largest
        largest = max(quotas, key=lambda c: (quotas[c], -c))
        quotas[largest] -= 1
    return quotas


@dataclass
class _Item:
    """One sample of a folder, read only when drawn."""

    origin: str
    load: Callable[[], dict[str, np.ndarray]]
    label_array: np.ndarray | None = None

    @property
    def label(self) -> int | None:
        """The class, when the sample has exactly one integer label (what stratifies)."""
        if self.label_array is None or self.label_array.size != 1:
            return None
        if np.asarray(self.label_array).dtype.kind not in "iu":
            return None
        return int(np.ravel(self.label_array)[0])


def _described(items: list[_Item], chosen: list[int], folder: Path, limit, seed: int) -> str:
    kind = Path(items[0].origin.split("[")[0]).suffix or "files"
    if len(chosen) == len(items):
        return f"all {len(items)} samples ({kind}) in {folder}"
    how = "stratified by class" if all(i.label is not None for i in items) else "at random"
    return (
        f"{len(chosen)} of {len(items)} samples ({kind}) in {folder}, drawn {how} with seed "
        f"{seed} (--max-samples {limit})"
    )


def synthesize(
    model: Model | None,
    inputs: tuple[TensorSpec, ...] | None = None,
    count: int = 6,
    seed: int = 0,
) -> Samples:
    """`count` realistic samples for `inputs` (default: the model's), each input synthesised
    by its role (`edgeforge.evaluate.synthesis`); the edge values are a separate robustness
    check (`edgeforge.evaluate.synthesis.edge_samples`), never mixed in here."""
    from edgeforge.evaluate.synthesis import synthesize as by_role

    return by_role(model, inputs, count=count, seed=seed)


def _npz_items(files: list[Path], inputs: tuple[TensorSpec, ...], folder: Path) -> list[_Item]:
    items = []
    planned = 0  # bytes every sample read from the folder will hold, together
    for path in files:
        headers = _npz_headers(path)
        names = set(headers)
        missing = [t.name for t in inputs if t.name not in names]
        if missing:
            raise EdgeforgeError(
                f"--data {path.name}: no array named {missing[0]!r}; each .npz needs arrays "
                f"named {', '.join(t.name for t in inputs)} (and optionally 'label')"
            )
        planned += sum(headers[t.name] for t in inputs) + headers.get("label", 0)
        _within_budget(planned, path, "together with the files before it,")
        label = _read_npz(path, ["label"])["label"] if "label" in names else None
        label = np.atleast_1d(label) if label is not None else None

        def load(path: Path = path) -> dict[str, np.ndarray]:
            return _read_npz(path, [t.name for t in inputs])

        items.append(_Item(str(path.relative_to(folder)), load, label))
    return items


def _npy_items(files: dict[str, Path], inputs: tuple[TensorSpec, ...], folder: Path) -> list[_Item]:
    missing = [t.name for t in inputs if t.name not in files]
    if missing:
        raise EdgeforgeError(
            f"--data {folder}: no {missing[0]}.npy; give one <input>.npy per input "
            f"({', '.join(t.name + '.npy' for t in inputs)}) with samples along axis 0"
        )
    arrays = {t.name: _read_npy(files[t.name], mmap=True) for t in inputs}
    _within_budget(sum(a.nbytes for a in arrays.values()), folder, "together")
    if any(a.ndim == 0 for a in arrays.values()):
        raise EdgeforgeError(
            f"--data {folder}: a .npy file holds a scalar; store the samples along axis 0"
        )
    counts = {len(a) for a in arrays.values()}
    if len(counts) != 1:
        raise EdgeforgeError(f"--data {folder}: the .npy files hold different sample counts")
    count = counts.pop()
    labels = _read_npy(files["labels"]) if "labels" in files else None
    aligned = labels is not None and labels.ndim > 0 and len(labels) == count
    origin = "+".join(f"{t.name}.npy" for t in inputs)

    def loader(i: int) -> Callable[[], dict[str, np.ndarray]]:
        # Each sample keeps a batch axis of 1 so it matches the model's rank.
        return lambda: {name: np.array(a[i : i + 1]) for name, a in arrays.items()}

    # Labels that do not line up with the samples are not used (load_data notes it).
    return [
        _Item(f"{origin}[{i}]", loader(i), labels[i : i + 1] if aligned else None)  # type: ignore[index]
        for i in range(count)
    ]


_CORRUPT = "replace the file (np.save / np.savez write it whole)"


def _header(stream, where: Path | str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, bytes) from an .npy header, before any data is read; EdgeforgeError
    for a header numpy cannot parse or an object dtype (never unpickled: issue 13)."""
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(stream)
        read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _, dtype = read(stream)
    except Exception as exc:  # ValueError, EOFError: not an .npy, or cut short
        raise EdgeforgeError(f"--data {where}: not a readable .npy ({exc}); {_CORRUPT}") from None
    if dtype.hasobject:
        raise EdgeforgeError(
            f"--data {where}: holds Python objects (a pickle), which edgeforge never loads; "
            "store numeric arrays"
        )
    count = 1
    for dim in shape:
        count *= int(dim)
    return tuple(shape), dtype, count * dtype.itemsize


def _read_npy(path: Path, mmap: bool = False) -> np.ndarray:
    """An .npy file, its header checked first (object dtype, budget, length)."""
    try:
        with open(path, "rb") as stream:
            _, _, size = _header(stream, path.name)
            offset = stream.tell()
        _within_budget(size, path, "")
        if path.stat().st_size < offset + size:
            raise EdgeforgeError(
                f"--data {path.name}: truncated (its header promises {size} bytes of data, the "
                f"file holds {path.stat().st_size - offset}); {_CORRUPT}"
            )
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except EdgeforgeError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise EdgeforgeError(f"--data {path.name}: cannot read it ({exc}); {_CORRUPT}") from None


def _npz_headers(path: Path) -> dict[str, int]:
    """Array name -> bytes it would allocate, from each member's header alone."""
    try:
        with zipfile.ZipFile(path) as archive:
            sizes = {}
            for info in archive.infolist():
                name = info.filename.removesuffix(".npy")
                with archive.open(info) as stream:
                    sizes[name] = _header(stream, f"{path.name}/{info.filename}")[2]
            return sizes
    except EdgeforgeError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, RuntimeError) as exc:
        raise EdgeforgeError(
            f"--data {path.name}: not a readable .npz ({exc}); {_CORRUPT}"
        ) from None


def _read_npz(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """`names` from an .npz whose headers `_npz_headers` checked."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in names}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, RuntimeError) as exc:
        raise EdgeforgeError(f"--data {path.name}: cannot read it ({exc}); {_CORRUPT}") from None


def _within_budget(size: int, where: Path, what: str) -> None:
    """Refuse before allocating what the memory budget cannot hold (issue 13)."""
    budget = memory_budget()
    if size > budget:
        raise EdgeforgeError(
            f"--data {where.name}: its arrays need {size / 1e9:.3g} GB {what} above the memory "
            f"budget of {budget / 1e9:.3g} GB; pass fewer or smaller samples, or --memory-limit"
        )


def _image_items(
    files: list[Path], inputs: tuple[TensorSpec, ...], folder: Path, preprocess: Preprocess
) -> list[_Item]:
    if len(inputs) != 1 or inputs[0].shape is None or len(inputs[0].shape) != 4:
        raise EdgeforgeError(
            f"--data {folder}: images fit a model with one image input (rank 4, NCHW or NHWC); "
            f"this model takes {', '.join(t.name for t in inputs)}"
        )
    spec = inputs[0]
    hook = resolve_callable(preprocess.hook, "--preprocess hook") if preprocess.hook else None
    classes = sorted({p.parent.name for p in files if p.parent != folder})
    loose = [p for p in files if p.parent == folder]
    if classes and loose:
        raise EdgeforgeError(
            f"--data {folder}: {loose[0].name} lies beside the class sub-folders "
            f"({', '.join(classes[:3])}...); move every image into its class's folder"
        )
    items = []
    for path in files:

        def load(path: Path = path) -> dict[str, np.ndarray]:
            return {spec.name: preprocess.image(path, spec, hook)}

        label = np.asarray([classes.index(path.parent.name)]) if classes else None
        items.append(_Item(str(path.relative_to(folder)), load, label))
    return items


def _check_feed(
    feed: dict[str, np.ndarray], inputs: tuple[TensorSpec, ...], folder: Path, origin: str = ""
) -> None:
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
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            # A data problem, not a model failure: NaN compares unequal to itself (issue 13).
            raise EdgeforgeError(
                f"--data {folder}: input {spec.name!r} holds NaN or Inf in {origin}; the "
                "comparison needs finite inputs: fix or drop those samples"
            )
        feed[spec.name] = array.astype(spec.dtype, copy=False)
