"""Writing outputs so that a failure never leaves a half-written one behind, and so that
nothing the user owns is ever destroyed.

Invariants:
- a file is written to a temporary file beside it and renamed into place (`write_text`); a
  folder is built in a staging folder and swapped in with renames (`replace_folder`), so a
  reader sees the old output or the new one, never a mix;
- `guard_output` runs before any output is written: an output path that is an input (or a
  folder holding one) is refused always; an existing file or folder that edgeforge did not
  write is refused unless the caller passes `force` (the CLI's `--force`). edgeforge knows its
  own outputs by a mark: an HTML report ends with `HTML_MARK`, a JSON report is an object keyed
  by verb names, an artifact folder holds a `manifest.json` listing its files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgeforge.errors import EdgeforgeError

__all__ = ["HTML_MARK", "guard_output", "replace_folder", "write_json", "write_text"]

# The last line of every HTML report edgeforge writes: how it knows a file is its own.
HTML_MARK = "<!-- written by edgeforge -->\n"
_REPORT_KEYS = frozenset(
    {
        "inspect", "devices", "check", "convert", "verify", "bench", "estimate", "calibrate",
        "decide", "split", "cascade", "optimize", "demo",
    }
)  # fmt: skip
_MAX_OWN_JSON = 512 << 20  # larger JSON files are not read to recognise them


def write_text(path: Path, text: str) -> Path:
    """Write `text` to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_json(path: Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def replace_folder(staging: Path, target: Path) -> None:
    """Swap the finished `staging` folder in at `target` with renames (same file system):
    the old folder, if any, is moved aside first and removed only once the new one is in."""
    aside = None
    if target.exists() or target.is_symlink():
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
        os.replace(target, aside / target.name)
    try:
        os.replace(staging, target)
    except BaseException:
        if aside is not None:  # put the old output back
            os.replace(aside / target.name, target)
        raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


def guard_output(
    path: Path, inputs: Iterable[Any] = (), *, force: bool = False, folder: bool = False
) -> Path:
    """Refuse (EdgeforgeError) to write the file, or with `folder` the folder, at `path` when
    that would destroy an input or something edgeforge did not write; returns `path`."""
    path = Path(path)
    target = _absolute(path)
    for given in inputs:
        source = _input_path(given)
        if source is None:
            continue
        # Rule: an output never replaces an input, nor a folder holding one (even with --force).
        if target == source or _same_file(path, source):
            raise EdgeforgeError(
                f"{path} is also an input; write the output somewhere else "
                "(edgeforge never overwrites its inputs)"
            )
        if source.is_relative_to(target) and (folder or target.is_dir()):
            raise EdgeforgeError(
                f"{path} holds the input {given}; write the output to another folder "
                "(edgeforge never replaces a folder holding its inputs)"
            )
    _check_parent(path)
    if not (path.exists() or path.is_symlink()):
        return path
    if folder and not path.is_dir():
        raise EdgeforgeError(f"{path} is a file, not a folder; pass a folder path as the output")
    if not folder and path.is_dir():
        raise EdgeforgeError(f"{path} is a folder; pass a file path for this output")
    # Rule: an existing output edgeforge did not write is replaced only with --force.
    if not force and not written_by_edgeforge(path):
        what = "folder" if folder else "file"
        raise EdgeforgeError(
            f"{path} exists and edgeforge did not write it; pass --force to replace the {what}, "
            "or choose another path"
        )
    return path


def written_by_edgeforge(path: Path) -> bool:
    """Whether the existing file or folder at `path` is empty or carries edgeforge's mark."""
    path = Path(path)
    if path.is_symlink():
        return False  # a link leads somewhere the user chose: never replace it silently
    if path.is_dir():
        return _own_folder(path)
    try:
        size = path.stat().st_size
        if size == 0:
            return True
        with open(path, "rb") as stream:
            if size >= len(HTML_MARK):
                stream.seek(size - len(HTML_MARK))
                if stream.read().decode("utf-8", "replace") == HTML_MARK:
                    return True
            if path.suffix.lower() != ".json" or size > _MAX_OWN_JSON:
                return False
            stream.seek(0)
            data = json.loads(stream.read())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and bool(data) and set(data) <= _REPORT_KEYS


def _own_folder(path: Path) -> bool:
    """Empty, or an artifact folder whose files are all ones its manifest lists."""
    present = {p.relative_to(path).as_posix() for p in path.rglob("*") if not p.is_dir()}
    if not present:
        return True
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or not {"runtime", "format", "file"} <= set(manifest):
        return False
    listed = manifest.get("files")
    if not isinstance(listed, list):
        return True  # written before manifests listed their files
    # optimize's out/chosen/ also holds the record of the candidate it copied there.
    return present <= {str(f) for f in listed} | {"manifest.json", "candidate.json"}


def _check_parent(path: Path) -> None:
    for parent in _absolute(path).parents:
        if parent.exists():
            if not parent.is_dir():
                raise EdgeforgeError(
                    f"{path}: {parent} is a file, not a folder; choose an output path in a folder"
                )
            if not os.access(parent, os.W_OK | os.X_OK):
                raise EdgeforgeError(
                    f"{path}: cannot write in {parent} (permission denied); choose another folder"
                )
            return


def _input_path(given: Any) -> Path | None:
    """The file or folder behind an input argument (a `file.py:factory` reference's file)."""
    if given is None or not isinstance(given, (str, Path)) or str(given) == "":
        return None
    text = str(given)
    path = Path(text)
    if not path.exists() and ":" in text:
        path = Path(text.rpartition(":")[0])
    return _absolute(path) if path.exists() else None


def _absolute(path: Path) -> Path:
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError):
        return Path(os.path.abspath(path))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # hard links too
    except (OSError, ValueError):
        return False
