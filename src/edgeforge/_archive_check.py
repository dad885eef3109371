"""Checking a torch archive (`.pt2`, or any zip handed to `load`) before torch opens it.

`torch.export.load` unpickles parts of the archive (the example inputs, pickled weights and
constants), and when torch's safe `weights_only` unpickler refuses one it retries with the
full unpickler, which runs whatever a `__reduce__` in the file asks for. So no archive reaches
torch unless every pickle torch would load passes the same rules as the safe unpickler.

Invariants enforced by `check_torch_archive` (each refusal is one `EdgeforgeError`):
- every pickle torch would unpickle, at any depth of nested `torch.save` zips, uses only the
  opcodes torch's `weights_only` unpickler implements and imports only the globals it allows
  (`torch._weights_only_unpickler._get_allowed_globals()`), so the safe load succeeds and the
  unsafe retry never happens;
- a member torch would unpickle that is not a `torch.save` zip (the legacy pickle format, which
  torch loads with the full unpickler) is refused, as is a TorchScript archive inside;
- the scan reads at most `_MAX_SCAN_BYTES` and nests at most `_MAX_DEPTH` zips deep, so a zip
  bomb costs a refusal, not the machine's memory.
Nothing here builds an object from the file: opcodes are read with `pickletools.genops`.
"""

from __future__ import annotations

import io
import json
import pickletools
import zipfile
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from pathlib import Path, PurePosixPath

from edgeforge.errors import EdgeforgeError

__all__ = ["check_torch_archive"]

_MAX_DEPTH = 3
_MAX_SCAN_BYTES = 1 << 30  # pickles and configs read in all; weights are never read
_MAX_MEMBER_BYTES = 256 << 20  # one pickle or config
_ZIP_MAGIC = b"PK\x03\x04"

# The opcodes torch's weights_only Unpickler.load implements (torch/_weights_only_unpickler.py);
# a pickle with any other opcode makes the safe load fail and torch retry unsafely.
_SAFE_OPCODES = frozenset(
    {
        "PROTO", "STOP", "GLOBAL", "MARK", "NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1",
        "BININT2", "LONG1", "BINFLOAT", "BINUNICODE", "SHORT_BINSTRING", "EMPTY_TUPLE", "TUPLE",
        "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_LIST", "APPEND", "APPENDS", "EMPTY_DICT", "SETITEM",
        "SETITEMS", "EMPTY_SET", "BINGET", "LONG_BINGET", "BINPUT", "LONG_BINPUT", "BINPERSID",
        "REDUCE", "BUILD", "NEWOBJ",
    }
)  # fmt: skip
# Members torch.load reads from an archive by name; also any member a payload config marks
# `use_pickle` (torch/export/pt2_archive/_package.py).
_PICKLED_SUFFIXES = (".pkl", ".pt", ".pth", ".pickle")
_PICKLED_FOLDERS = ("data/sample_inputs/",)


def check_torch_archive(path: Path) -> None:
    """Raise `EdgeforgeError` unless torch can open the archive at `path` with safe
    unpickling only (see the module docstring)."""
    path = Path(path)
    budget = [_MAX_SCAN_BYTES]
    try:
        with zipfile.ZipFile(path) as archive:
            _check_zip(archive, str(path), 0, budget)
    except zipfile.BadZipFile as exc:
        raise EdgeforgeError(
            f"{path}: cannot load as a torch.export program (not a zip archive: {exc}); "
            "save it with torch.export.save"
        ) from None


def _check_zip(archive: zipfile.ZipFile, where: str, depth: int, budget: list[int]) -> None:
    names = archive.namelist()
    if any(PurePosixPath(n).name == "constants.pkl" or "/code/" in n for n in names):
        # Rule: torch.load hands a TorchScript archive to torch.jit.load, which runs its code.
        raise _refused(where, "is a TorchScript archive, which torch loads by running its code")
    pickled = {n for n in names if _torch_unpickles(n)} | _use_pickle_members(
        archive, names, where, budget
    )
    for info in archive.infolist():
        if info.is_dir():
            continue
        name = info.filename
        head = _read(archive, info, where, budget, limit=4)
        inner = f"{where}!{name}"
        if head.startswith(_ZIP_MAGIC) and not name.lower().endswith(".pkl"):
            if depth + 1 >= _MAX_DEPTH:
                raise _refused(inner, f"nests zip archives more than {_MAX_DEPTH} deep")
            data = _read(archive, info, where, budget)
            try:
                with zipfile.ZipFile(io.BytesIO(data)) as nested:
                    _check_zip(nested, inner, depth + 1, budget)
            except zipfile.BadZipFile:
                if name in pickled:  # torch would fall back to its legacy (unsafe) loader
                    raise _refused(inner, "is a damaged torch.save archive") from None
            continue
        if name.lower().endswith(".pkl"):
            _check_pickle(_read(archive, info, where, budget), inner)
        elif name in pickled:
            # Rule: torch.load of anything but a zip uses the legacy format's full unpickler.
            raise _refused(inner, "is a pickle in torch's legacy format, which only loads unsafely")


def _torch_unpickles(name: str) -> bool:
    return name.lower().endswith(_PICKLED_SUFFIXES) or any(f in name for f in _PICKLED_FOLDERS)


def _use_pickle_members(
    archive: zipfile.ZipFile, names: list[str], where: str, budget: list[int]
) -> set[str]:
    """Members that a weights/constants config tells torch to `torch.load`."""
    found: set[str] = set()
    for name in names:
        if not name.endswith("_config.json"):
            continue
        try:
            config = json.loads(_read(archive, archive.getinfo(name), where, budget))
            entries = config.get("config", {}).values()
            folder = str(PurePosixPath(name).parent)
            found |= {
                f"{folder}/{entry['path_name']}"
                for entry in entries
                if isinstance(entry, dict) and entry.get("use_pickle")
            }
        except (ValueError, AttributeError, KeyError, TypeError):
            raise _refused(f"{where}!{name}", "is not a readable payload config") from None
    return found


def _check_pickle(data: bytes, where: str) -> None:
    allowed = _allowed_globals()
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name not in _SAFE_OPCODES:
                # Rule: an opcode the safe unpickler lacks makes torch retry unsafely.
                raise _refused(where, f"uses the pickle opcode {opcode.name}")
            if opcode.name == "GLOBAL":
                module, _, name = str(arg).partition(" ")
                # As torch reads a protocol-2 GLOBAL: Python 2 names mapped to Python 3's.
                if (module, name) in NAME_MAPPING:
                    module, name = NAME_MAPPING[(module, name)]
                else:
                    module = IMPORT_MAPPING.get(module, module)
                # Rule: only the globals torch's weights_only unpickler allows.
                if f"{module}.{name}" not in allowed:
                    raise _refused(where, f"imports {module}.{name}")
            if opcode.name == "STOP":
                return
    except (ValueError, EOFError) as exc:
        raise _refused(where, f"is not a well-formed pickle ({exc})") from None
    raise _refused(where, "is not a well-formed pickle (no STOP)")


def _allowed_globals() -> frozenset[str]:
    from torch._weights_only_unpickler import _get_allowed_globals, _get_user_allowed_globals

    return frozenset(_get_allowed_globals()) | frozenset(_get_user_allowed_globals())


def _read(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    where: str,
    budget: list[int],
    limit: int | None = None,
) -> bytes:
    """At most `limit` bytes of a member (all of it when None), charged to `budget`."""
    want = info.file_size if limit is None else min(limit, info.file_size)
    if limit is None and (info.file_size > _MAX_MEMBER_BYTES or info.file_size > budget[0]):
        raise _refused(
            f"{where}!{info.filename}",
            f"declares {info.file_size} bytes, more than edgeforge reads to check an archive",
        )
    budget[0] -= want
    try:
        with archive.open(info) as stream:
            return stream.read(want)
    except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError) as exc:
        raise _refused(f"{where}!{info.filename}", f"cannot be read ({exc})") from None


def _refused(where: str, why: str) -> EdgeforgeError:
    return EdgeforgeError(
        f"{where} {why}; edgeforge opens torch archives only when torch's safe (weights_only) "
        "loader can read every pickle in them: re-save the program with torch.export.save from "
        "a trusted copy"
    )
