"""The agent's personal head: where it lives, which release it belongs to, when it goes.

A release may ship a personalisation package inside each variant (`variant.json`'s
`personalize` entry names its folder, `personalize/` by default; its files are signed targets
like the model's, so the slot's verification covers them). `Agent.personalize` trains a head
on the user's samples in a child process (bounded time and resident memory, as the canary
is) and keeps it at `STATE/personal/` with `bound.json`: the release (name, version) it was
trained under. `personal.json` inside records the backbone's release and artifact sha256.

Invariants:
- a head is applied only while the active release is the one in `bound.json` and the active
  slot's package has the backbone recorded in `personal.json` (`PersonalModel.load` refuses
  any other); any change of the active release (commit, rollback, recovery) drops a head
  bound to another release, and `predict` drops one it finds stale;
- the head folder is replaced by renames (a new head is written aside and swapped in), so a
  crash leaves the old head, the new one, or none, never half of one;
- the user's samples reach the child through an anonymous temporary file on its stdin: they
  are never written under a name, and nothing of them is reported (the report says only that
  personalisation ran and whether the head was kept);
- this module imports only the standard library: the daemon that drops stale heads stays
  free of numpy.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from edgeforge.fleet.agent._files import atomic_write_json, read_json

__all__ = ["BOUND_FILE", "HEAD_DIR", "bound_release", "drop_unless_bound_to", "install_head"]

HEAD_DIR = "personal"
BOUND_FILE = "bound.json"


def package_folder(slot: Path, index: dict[str, Any]) -> Path | None:
    """The personalisation package the variant in `slot` ships, or None."""
    entry = index.get("personalize")
    relative = entry.get("path") if isinstance(entry, dict) else entry
    folder = slot / str(relative or "personalize")
    return folder if (folder / "personalize.json").is_file() else None


def package_output(index: dict[str, Any]) -> str | None:
    """The model output the personal head's logits replace, when the variant names it."""
    entry = index.get("personalize")
    return str(entry["output"]) if isinstance(entry, dict) and entry.get("output") else None


def bound_release(state: Path) -> dict[str, Any] | None:
    """{name, version} of the release the stored head was trained under, or None."""
    data = read_json(state / HEAD_DIR / BOUND_FILE)
    return data if isinstance(data, dict) and "name" in data and "version" in data else None


def drop_unless_bound_to(state: Path, active: dict[str, Any] | None) -> bool:
    """Delete the stored head unless it was trained under the `active` release (a pointer:
    {slot, name, version}); a head whose record cannot be read goes too. True if deleted."""
    folder = state / HEAD_DIR
    if not folder.exists():
        return False
    bound = bound_release(state)
    if (
        active is not None
        and bound is not None
        and bound["name"] == active.get("name")
        and str(bound["version"]) == str(active.get("version"))
    ):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True


def install_head(state: Path, written: Path, active: dict[str, Any]) -> Path:
    """Swap the head written at `written` into `STATE/personal`, bound to `active`."""
    atomic_write_json(
        written / BOUND_FILE, {"name": active["name"], "version": int(active["version"])}
    )
    target = state / HEAD_DIR
    old = state / f".{HEAD_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(written, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def clean_leftovers(state: Path) -> None:
    """Remove what an interrupted personalisation left (a head written aside, an old one)."""
    for leftover in state.glob(f".{HEAD_DIR}.*"):
        with contextlib.suppress(OSError):
            shutil.rmtree(leftover)


def record(path: Path) -> dict[str, Any] | None:
    data = read_json(path / "personal.json")
    return data if isinstance(data, dict) else None


def summary(state: Path) -> dict[str, Any] | None:
    """What `agent status` shows of the stored head (nothing of the user's data)."""
    bound = bound_release(state)
    data = record(state / HEAD_DIR)
    if bound is None or data is None:
        return None
    return {"name": bound["name"], "version": bound["version"], "form": data.get("form")}
