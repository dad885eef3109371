"""Real pretrained ONNX models that PyPI packages ship inside their wheels.

They give the tests and benchmarks trained weights without a model hub: `pip install` is the
only download. Which packages are looked at is a fixed list (`KNOWN_PACKAGES`); nothing else
on the machine is searched.

Invariants a caller can rely on:
- the packages are found through their installed metadata (`importlib.metadata`), never
  imported: their own imports (torchaudio, opencv) need not be installed;
- a package that is not installed contributes nothing; `packaged_onnx_models()` is `{}` when
  none is;
- every returned path is an existing file inside the package's own installed folder.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["KNOWN_PACKAGES", "PackagedSource", "packaged_onnx_models"]


@dataclass(frozen=True)
class PackagedSource:
    """A distribution and the folder in it that holds `.onnx` files."""

    distribution: str
    folder: str  # relative to site-packages, "/"-separated
    about: str


KNOWN_PACKAGES = (
    PackagedSource(
        "silero-vad",
        "silero_vad/data",
        "Silero VAD v6 voice-activity detector (conv front end + LSTM), 16/8 kHz audio; "
        "pure-Python wheel needing only torch",
    ),
    PackagedSource(
        "magika",
        "magika/models",
        "Google's Magika file-type classifier (int32 byte windows to 214 content types)",
    ),
    PackagedSource(
        "rapidocr-onnxruntime",
        "rapidocr_onnxruntime/models",
        "PaddleOCR PP-OCRv4 text detection and recognition, PP-OCR v2 direction classifier",
    ),
)


def packaged_onnx_models(
    sources: tuple[PackagedSource, ...] = KNOWN_PACKAGES,
) -> dict[str, Path]:
    """`{"<distribution>/<path in folder without .onnx>": path}` for every `.onnx` file the
    installed `sources` ship, e.g. "silero-vad/silero_vad_16k_op15"."""
    found: dict[str, Path] = {}
    for source in sources:
        try:
            distribution = importlib.metadata.distribution(source.distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
        root = Path(str(distribution.locate_file(source.folder))).resolve()
        for path in _onnx_files(distribution, source.folder, root):
            relative = PurePosixPath(path.relative_to(root).as_posix()).with_suffix("")
            found[f"{source.distribution}/{relative}"] = path
    return dict(sorted(found.items()))


def _onnx_files(
    distribution: importlib.metadata.Distribution, folder: str, root: Path
) -> list[Path]:
    """The package's `.onnx` files under `folder`, from its RECORD when it has one."""
    listed = distribution.files
    if listed is None:  # installed without a RECORD: look in the folder itself
        candidates = list(root.rglob("*.onnx")) if root.is_dir() else []
    else:
        prefix = folder.rstrip("/") + "/"
        candidates = [
            Path(str(distribution.locate_file(f)))
            for f in listed
            if f.suffix == ".onnx" and f.as_posix().startswith(prefix)
        ]
    paths = []
    for candidate in candidates:
        path = candidate.resolve()
        # A RECORD could name a path outside the package (../../); such entries are ignored.
        if path.is_file() and path.is_relative_to(root):
            paths.append(path)
    return paths
