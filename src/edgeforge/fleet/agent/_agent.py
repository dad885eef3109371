"""The device agent: a journaled state machine over two model slots.

State folder (`--state DIR`):
  device.json     id, class, server, repo URL, director key (from enrolment)
  device.key      the device's Ed25519 private key (0600)
  root.json       the TUF root the device shipped with (`--root`); tuf/ the trusted metadata
  slots/a, slots/b  one verified variant each (variant.json + its files)
  active.json     the slot applications run (`predict`); committed.json the last good one
  journal.log     one JSON line per transition (append + fsync)
  partial/        resumable downloads; outbox.json reports not yet delivered; failed.json
  telemetry/      the application's telemetry windows (spool/*.win, uploaded by the daemon with
                  its reports) and outcomes.log (canary/health outcomes for those windows)
  personal/       the user's personal head (`personalize`), bound to the release it was
                  trained under (bound.json); see `_personal`

Invariants (what `kill -9` at any moment cannot break):
- Only the inactive slot (the one neither active.json nor committed.json names) is ever
  written. active.json changes only by an atomic rename, and only to a slot that was verified
  against its signed hashes and passed its canary, or to the committed slot.
- So active.json always names a complete, verified model once the first install committed, and
  `predict` works offline and while an install runs.
- Every transition is journaled before its effect; on start, `recover()` reads the last entry and
  finishes or undoes the step (an interrupted download resumes from its persisted offset; an
  activation rolls forward to the probe; a probe interrupted three times rolls back).
- A personal head is applied by `predict` only to the release (and backbone) it was trained
  on: every change of the active release drops a head bound to another one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import random
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet.agent._files import Journal, atomic_write_json, read_json
from edgeforge.fleet.agent._http import Offline, ServerClient
from edgeforge.fleet.agent._personal import drop_unless_bound_to
from edgeforge.fleet.agent._personal import summary as personal_summary
from edgeforge.fleet.agent._uploads import spool_summary

__all__ = ["Agent", "AgentStatus", "parse_size"]

SLOTS = ("a", "b")
PAUSE_ENV = "EDGEFORGE_AGENT_PAUSE_AT"
MAX_PROBE_TRIES = 3
_OUTBOX_LIMIT = 500
_REPORT_BATCH = 50


def parse_size(text: str | int | None) -> int | None:
    """`512MB`, `1.5GiB`, `800k` or a byte count as bytes."""
    if text is None or isinstance(text, int):
        return text
    value = text.strip().lower().removesuffix("ib").removesuffix("b")
    scale = 1
    for suffix, factor in (("k", 2**10), ("m", 2**20), ("g", 2**30), ("t", 2**40)):
        if value.endswith(suffix):
            value, scale = value[:-1], factor
            break
    try:
        size = float(value) * scale
    except ValueError as exc:
        raise EdgeforgeError(f"size {text!r} does not parse; write e.g. 512MB or 2GB") from exc
    if size <= 0:
        raise EdgeforgeError(f"size {text!r} must be positive")
    return int(size)


def verify_slot(slot: Path) -> dict[str, Any] | None:
    """The slot's variant.json if every file it lists is there with its length and SHA-256."""
    index = read_json(slot / "variant.json")
    if not isinstance(index, dict):
        return None
    for entry in index.get("files", []):
        path = slot / str(entry.get("path", ""))
        try:
            if "length" in entry and path.stat().st_size != int(entry["length"]):
                return None
            if "sha256" in entry:
                digest = hashlib.sha256()
                with open(path, "rb") as handle:
                    while block := handle.read(1 << 20):
                        digest.update(block)
                if digest.hexdigest() != entry["sha256"]:
                    return None
        except OSError:
            return None
    return index


@dataclasses.dataclass
class AgentStatus:
    """What `edgeforge agent status` shows."""

    state_dir: str
    device_id: str | None
    device_class: str | None
    server: str | None
    state: str
    active: dict | None
    committed: dict | None
    staged: dict | None  # a release being installed (between download and activation)
    inactive: dict | None  # what the other slot holds: the fallback, or a refused download
    downloads: dict[str, int]
    outbox: int
    failed: dict[str, str]
    journal: list[dict]
    # telemetry windows waiting for upload: {"spooled": files, "bytes": their size}
    telemetry: dict[str, int] = dataclasses.field(default_factory=dict)
    # the personal head, if one is stored: {name, version (trained under), form}
    personal: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Agent:
    """The device agent over one state folder. `Agent(state).predict(feed)` runs the active model
    (what an application on the device calls); `run()`/`step()` is the update loop."""

    def __init__(
        self,
        state: str | Path,
        *,
        server: str | None = None,
        device_class: str | None = None,
        device_id: str | None = None,
        token: str | None = None,
        root: str | Path | None = None,
        memory_limit: int | str | None = None,
        interval: float = 60.0,
        probe_count: int = 10,
        canary_timeout: float = 120.0,
        fetch: Callable[..., Any] | None = None,
        rng: random.Random | None = None,
        telemetry_window_s: float = 3600.0,
        accept_jobs: bool = False,
        launcher: Any = None,
    ) -> None:
        self.state = Path(state)
        self.server = server
        self.device_class = device_class
        self.device_id = device_id
        self.token = token if token is not None else os.environ.get("EDGEFORGE_ENROLL_TOKEN")
        self.root = Path(root) if root is not None else None
        self.memory_limit = parse_size(memory_limit)
        self.interval = interval
        self.probe_count = probe_count
        self.canary_timeout = canary_timeout
        self._fetch = fetch
        # how children start (`_spawn`): a fresh interpreter each by default; the fleet
        # simulator forks them from one warm process
        self.launcher = launcher
        self.rng = rng or random.Random()
        self.journal = Journal(self.state / "journal.log")
        self._session: tuple[str, Any] | None = None
        self.stats: dict[str, Any] = {"predictions": 0, "errors": 0, "latency_ms": []}
        self.failures = 0  # consecutive check-ins that found the server unreachable
        # The largest file the download child may write (RLIMIT_FSIZE): a disk quota for it.
        self.file_limit: int | None = None
        self.telemetry_window_s = telemetry_window_s
        self.accept_jobs = accept_jobs  # run benchmark jobs the server queues for this device
        # edgeforge.fleet.telemetry.Telemetry, made by predict(); False once it failed here
        self._telemetry: Any = None
        self._personal: tuple[str, Any] | None = None  # (key, PersonalModel or None)

    # ---- files -------------------------------------------------------------------------------
    def _path(self, name: str) -> Path:
        return self.state / name

    def _ensure_layout(self) -> None:
        for folder in (self.state, self.state / "slots", self.state / "partial"):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _pointer(self, name: str) -> dict | None:
        data = read_json(self._path(f"{name}.json"))
        return data if isinstance(data, dict) and data.get("slot") in SLOTS else None

    def _set_pointer(self, name: str, value: dict) -> None:
        atomic_write_json(self._path(f"{name}.json"), value)

    def _slot_dir(self, slot: str) -> Path:
        return self.state / "slots" / slot

    def _inactive_slot(self) -> str:
        used = {p["slot"] for p in (self._pointer("active"), self._pointer("committed")) if p}
        free = [slot for slot in SLOTS if slot not in used]
        if not free:  # active and committed differ: only while probing; never install then
            raise EdgeforgeError("no free slot: an activation is still being probed")
        return free[0]

    def _enter(self, state: str, **fields: Any) -> dict[str, Any]:
        entry = self.journal.append({"state": state, **fields})
        if state != "downloading":  # that hook waits for the first durable bytes
            self._maybe_pause(state)
        return entry

    def _maybe_pause(self, state: str) -> None:
        """Test hook: stop (for a test to kill the process) once `state` is journaled."""
        if os.environ.get(PAUSE_ENV) == state:
            (self.state / "paused-at").write_text(state)
            time.sleep(600)

    def current_state(self) -> str:
        last = self.journal.last()
        return str(last["state"]) if last else "idle"

    # ---- enrolment ---------------------------------------------------------------------------
    def _device(self) -> dict[str, Any]:
        data = read_json(self._path("device.json"))
        return data if isinstance(data, dict) else {}

    def _key(self):
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        return load_pem_private_key(self._path("device.key").read_bytes(), password=None)

    def _install_root(self) -> None:
        target = self._path("root.json")
        if self.root is not None and not target.exists():
            try:
                data = self.root.read_bytes()
            except OSError as exc:
                raise EdgeforgeError(f"{self.root}: cannot read the trusted root ({exc})") from exc
            tmp = target.with_name(".root.json.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)

    def enrol(self) -> dict[str, Any]:
        """Enrol with the server once (the key and the director key are kept in the state)."""
        self._ensure_layout()
        self._install_root()
        device = self._device()
        if device.get("director_key"):
            return device
        if not self.server or not self.device_class:
            raise EdgeforgeError("the agent is not enrolled yet: give --server and --device-class")
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import (
            Encoding,
            NoEncryption,
            PrivateFormat,
        )

        from edgeforge.fleet.protocol import b64encode, public_key_bytes

        key_file = self._path("device.key")
        if not key_file.exists():
            pem = Ed25519PrivateKey.generate().private_bytes(
                Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
            )
            fd = os.open(key_file.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(key_file.with_suffix(".tmp"), key_file)
        key = self._key()
        device_id = device.get("device_id") or self.device_id or f"dev-{uuid.uuid4().hex[:16]}"
        atomic_write_json(self._path("device.json"), {**device, "device_id": device_id})
        body = {
            "device_id": device_id,
            "device_class": self.device_class,
            "facts": _facts(),
            "public_key": b64encode(public_key_bytes(key)),
            "token": self.token or "",
        }
        status, _, reply = ServerClient(self.server).request("POST", "/v1/enrol", body)
        if status not in (200, 201) or not isinstance(reply, dict):
            raise EdgeforgeError(f"enrolment refused by {self.server}: HTTP {status} {reply}")
        repo = str(reply.get("repo", "/repo"))
        device = {
            "device_id": device_id,
            "device_class": self.device_class,
            "server": self.server,
            "repo": repo if "://" in repo else self.server.rstrip("/") + repo,
            "director_key": reply["director_key"],
        }
        atomic_write_json(self._path("device.json"), device)
        return device

    # ---- status and inference ----------------------------------------------------------------
    def status(self) -> AgentStatus:
        device = self._device()
        state = self.current_state()
        inactive = None
        for slot in SLOTS:
            if self._pointer("active") and slot == self._pointer("active")["slot"]:
                continue
            index = read_json(self._slot_dir(slot) / "variant.json")
            if isinstance(index, dict):
                inactive = {
                    "slot": slot,
                    "name": index.get("name"),
                    "version": index.get("version"),
                }
        last = self.journal.last() or {}
        staged = None
        if state in ("staged", "canary") and last.get("slot") in SLOTS:
            staged = {
                "slot": last["slot"],
                "name": last.get("name"),
                "version": last.get("version"),
            }
        return AgentStatus(
            state_dir=str(self.state),
            device_id=device.get("device_id"),
            device_class=device.get("device_class"),
            server=device.get("server"),
            state=state,
            active=self._pointer("active"),
            committed=self._pointer("committed"),
            staged=staged,
            inactive=inactive,
            downloads=pending_downloads(self.state / "partial"),
            outbox=len(read_json(self._path("outbox.json"), []) or []),
            failed=read_json(self._path("failed.json"), {}) or {},
            journal=self.journal.entries(last=20),
            telemetry=spool_summary(self.state),
            personal=personal_summary(self.state),
        )

    def predict(self, feed: dict[str, Any]) -> dict[str, Any]:
        """Run the active model on `feed` ({input name: array}); records latency and outcome.
        With a personal head trained under the active release (`personalize`), the model's
        logits are the head's.

        Works offline and while an install runs: it reads only the active pointer and its slot.
        """
        active = self._pointer("active")
        if active is None:
            raise EdgeforgeError(f"{self.state}: no model is active yet; let the agent install one")
        key = json.dumps(active, sort_keys=True)
        if self._session is None or self._session[0] != key:
            from edgeforge.fleet.agent._loaders import open_session

            slot = self._slot_dir(active["slot"])
            index = read_json(slot / "variant.json")
            if not isinstance(index, dict):
                raise EdgeforgeError(f"{slot}: the active slot has no variant.json")
            self._session = (key, open_session(slot, index))
            self._telemetry_call(
                "set_model", str(active["name"]), int(active["version"]),
                output_kind=index.get("output_kind"), input_kind=index.get("input_kind"),
            )  # fmt: skip
            self._replay_outcomes()
        started = time.perf_counter()
        try:
            outputs = self._session[1].run(feed)
        except Exception:
            self.stats["errors"] += 1
            self._telemetry_call("record_error")
            raise
        personal = self._personal_head(active)
        if personal is not None:
            outputs = self._with_personal_logits(personal, feed, outputs)
        latency = (time.perf_counter() - started) * 1e3
        self.stats["predictions"] += 1
        self.stats["latency_ms"] = (self.stats["latency_ms"] + [latency])[-1000:]
        self._telemetry_call("observe", feed, outputs, latency)
        return outputs

    # ---- personalisation ---------------------------------------------------------------------
    def personalization_package(self) -> Path:
        """The personalisation package the active release ships (in its verified slot)."""
        from edgeforge.fleet.agent._personal import package_folder

        active = self._pointer("active")
        if active is None:
            raise EdgeforgeError(f"{self.state}: no model is active yet; let the agent install one")
        slot = self._slot_dir(active["slot"])
        index = read_json(slot / "variant.json")
        folder = package_folder(slot, index) if isinstance(index, dict) else None
        if folder is None:
            raise EdgeforgeError(
                f"{active['name']} version {active['version']} ships no personalisation "
                "package; release it with one (edgeforge personalize) to personalise on devices"
            )
        return folder

    def personalize(
        self,
        samples: Any,
        labels: Any,
        *,
        time_limit_s: float = 60.0,
        form: str | None = None,
    ) -> dict[str, Any]:
        """Train a personal head on the user's labelled samples ({input name: array} or one
        array, axis 0 the sample) for the active release, in a child held to `time_limit_s`
        and the agent's memory limit. The package's guard splits the samples into train and
        check folds and keeps the head only if it beats the base model on the user's own check
        samples. Returns {kept, reason, ...}: kept heads are stored (bound to the active
        release) and used by `predict`; a discarded one leaves the base model (and a head
        already kept for this release) in place, and `reason` says why. The report sent to the
        server says only that personalisation ran and whether the head was kept."""
        import io

        import numpy as np

        from edgeforge.fleet.agent._child import run_child
        from edgeforge.fleet.agent._personal import clean_leftovers, install_head

        folder = self.personalization_package()
        active = self._pointer("active")
        assert active is not None  # personalization_package() said so
        if time_limit_s <= 0:
            raise EdgeforgeError("the time limit must be positive (seconds)")
        if form is not None and form not in ("executorch", "coreml", "head"):
            raise EdgeforgeError(f"form {form!r} is not one of executorch, coreml, head")
        feeds = samples if isinstance(samples, dict) else {None: samples}
        labels = np.asarray(labels).reshape(-1)
        if labels.dtype.kind not in "iu":
            raise EdgeforgeError("labels must be integer class indices, one per sample")
        buffer = io.BytesIO()
        names = json.loads((folder / "personalize.json").read_text())["inputs"]
        arrays = {
            f"in/{names[0]['name'] if name is None else name}": np.asarray(value)
            for name, value in feeds.items()
        }
        np.savez(buffer, labels=labels.astype(np.int64), **arrays)
        clean_leftovers(self.state)
        written = self.state / f".personal.new-{uuid.uuid4().hex[:8]}"
        extra = ["--out", str(written), "--time-limit", str(time_limit_s)]
        result = run_child(
            "personalize", folder, memory_limit=self.memory_limit,
            timeout=time_limit_s + max(30.0, self.canary_timeout), extra=extra + (
                ["--form", form] if form else []), stdin_data=buffer.getvalue(),
        )  # fmt: skip
        del buffer
        kept = bool(result.get("ok") and result.get("kept"))
        if not result.get("ok"):
            result["reason"] = f"discarded: {result.get('detail')}"
        elif kept and self._pointer("active") != active:
            kept, result["reason"] = False, "discarded: the active release changed while training"
        if kept and (written / "personal.json").is_file():
            install_head(self.state, written, active)
            self._personal = None
        else:
            kept = False
            _remove(written)
            drop_unless_bound_to(self.state, self._pointer("active"))
        self._event("personalize", active["name"], int(active["version"]), kept,
                    "kept" if kept else "discarded")  # fmt: skip
        fields = ("form", "train_samples", "check_samples", "base_accuracy", "personal_accuracy",
                  "train_seconds", "peak_bytes", "peak_rss", "wall_ms")  # fmt: skip
        return {
            "kept": kept,
            "reason": str(result.get("reason") or ""),
            "release": {"name": active["name"], "version": active["version"]},
            **{k: result.get(k) for k in fields if k in result},
        }

    def _personal_head(self, active: dict[str, Any]) -> Any:
        """The stored personal head if it belongs to the active release (its package in the
        active slot, the same backbone), else None; a stale one is dropped."""
        from edgeforge.fleet.agent._personal import HEAD_DIR, package_folder

        head = self.state / HEAD_DIR
        try:
            stamp = (head / "personal.json").stat().st_mtime_ns
        except OSError:
            self._personal = None
            return None
        key = json.dumps([active, stamp], sort_keys=True)
        if self._personal is not None and self._personal[0] == key:
            return self._personal[1]
        model = None
        if not drop_unless_bound_to(self.state, active):
            from edgeforge.fleet.personal import PersonalizationPackage, PersonalModel

            slot = self._slot_dir(active["slot"])
            index = read_json(slot / "variant.json")
            folder = package_folder(slot, index) if isinstance(index, dict) else None
            try:
                if folder is None:
                    raise EdgeforgeError("the active release ships no personalisation package")
                model = PersonalModel.load(head, PersonalizationPackage.load(folder))
            except EdgeforgeError:
                _remove(head)  # trained on another backbone, or unreadable: never applied
                model = None
        self._personal = (key, model)
        return model

    def _with_personal_logits(self, personal: Any, feed: dict[str, Any], outputs: dict) -> dict:
        """The model's outputs with its logits replaced by the personal head's: the output
        the variant names, else the one shaped like the head's logits."""
        import numpy as np

        from edgeforge.fleet.agent._personal import package_output

        logits = personal.predict(feed)
        index = read_json(self._slot_dir(self._pointer("active")["slot"]) / "variant.json") or {}
        name = package_output(index)
        if name is None:
            name = next(
                (k for k, v in outputs.items() if np.shape(v) == logits.shape),
                next(iter(outputs)),
            )
        value = np.asarray(outputs.get(name, logits))
        return {**outputs, name: logits.reshape(value.shape).astype(value.dtype, copy=False)}

    # ---- telemetry ---------------------------------------------------------------------------
    @property
    def telemetry(self) -> Any:
        """This process's `Telemetry` (made on first use: it imports numpy and datasketches,
        which the daemon never does). Windows it closes go to `STATE/telemetry/spool`, which
        the daemon uploads with its next report; open ones are closed at exit."""
        if self._telemetry is None:
            import atexit

            from edgeforge.fleet.telemetry import Telemetry

            self._telemetry = Telemetry(
                self.state / "telemetry",
                device_class=str(self._device().get("device_class") or self.device_class or ""),
                window_s=self.telemetry_window_s,
            )
            atexit.register(self.flush_telemetry)
        return self._telemetry

    def _telemetry_call(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Telemetry never breaks inference: a state folder it cannot write, a model name it
        refuses, turn it off for this process (said once on stderr) and predict() goes on."""
        if self._telemetry is False:
            return
        try:
            getattr(self.telemetry, method)(*args, **kwargs)
        except (OSError, EdgeforgeError) as exc:
            import sys

            print(f"edgeforge agent: telemetry off in this process: {exc}", file=sys.stderr)
            self._telemetry = False

    def flush_telemetry(self) -> int:
        """Close this process's open telemetry windows into the spool (an application calls it
        before it exits; it is also registered with atexit). Returns how many were spooled."""
        if not self._telemetry:
            return 0
        self._replay_outcomes()
        with contextlib.suppress(OSError):
            return int(self._telemetry.close_due(everything=True))
        return 0

    def _replay_outcomes(self) -> None:
        from edgeforge.fleet.agent._uploads import read_outcomes

        if not self._telemetry or self._telemetry._model is None:
            return  # kept in the log until a model is set
        for entry in read_outcomes(self.state):
            self._telemetry.record_outcome(entry["kind"], bool(entry["ok"]))

    def _outcome(self, kind: str, ok: bool, name: str, version: int) -> None:
        """A canary or health outcome for telemetry: straight into this process's windows if it
        has telemetry loaded, else logged for the application's (the daemon stays numpy-free)."""
        if self._telemetry and self._telemetry._model is not None:
            self._telemetry.record_outcome(kind, ok)
            return
        from edgeforge.fleet.agent._uploads import append_outcome

        append_outcome(self.state, kind, ok, name, version)

    # ---- reports -----------------------------------------------------------------------------
    def _event(
        self,
        kind: str,
        name: str | None,
        version: int | None,
        ok: bool,
        detail: str = "",
        metrics: dict | None = None,
    ) -> None:
        outbox = read_json(self._path("outbox.json"), []) or []
        outbox.append(
            {
                "kind": kind,
                "name": name,
                "version": version,
                "ok": ok,
                "detail": detail[:500],
                "at": time.time(),
                "metrics": metrics or {},
            }
        )
        atomic_write_json(self._path("outbox.json"), outbox[-_OUTBOX_LIMIT:])

    def _flush_reports(self, client: ServerClient, device: dict) -> None:
        """Send the outbox and the spooled telemetry windows in batches; an event leaves the
        outbox, and a window the spool, only once the server took the report (202). A batch
        the server finds too large (413) goes again without metrics and windows, so one
        oversized event never blocks the reports behind it."""
        from edgeforge.fleet.agent._uploads import pending_windows, remove_windows

        sent_windows: set[str] = set()
        while True:
            outbox = read_json(self._path("outbox.json"), []) or []
            batch = outbox[:_REPORT_BATCH]
            windows = [w for w in pending_windows(self.state) if w["id"] not in sent_windows]
            if not batch and not windows:
                return
            status = self._send_report(client, device, batch, windows)
            if status == 422 and windows:  # a window the server cannot decode: find it
                self._drop_refused_windows(client, device, windows)
                sent_windows.update(w["id"] for w in windows)
                windows = []
                status = self._send_report(client, device, batch, windows) if batch else 202
            if status == 413:
                batch, windows = [{**event, "metrics": {}} for event in batch], []
                status = self._send_report(client, device, batch, windows)
            if status not in (200, 202, 413) or (status == 413 and not batch):
                return  # kept for the next check-in
            if status in (200, 202) and windows:
                ids = [w["id"] for w in windows]
                remove_windows(self.state, ids)
                sent_windows.update(ids)  # a file the remove missed is not sent again now
            if batch:
                current = read_json(self._path("outbox.json"), []) or []
                atomic_write_json(self._path("outbox.json"), current[len(batch) :])

    def _drop_refused_windows(
        self, client: ServerClient, device: dict, windows: list[dict[str, str]]
    ) -> None:
        """Send each window alone: one the server refuses (422) is dropped from the spool and
        an error event says so (it would block every report behind it); the rest are sent."""
        from edgeforge.fleet.agent._uploads import remove_windows

        for window in windows:
            status = self._send_report(client, device, [], [window])
            if status in (200, 202):
                remove_windows(self.state, [window["id"]])
            elif status == 422:
                remove_windows(self.state, [window["id"]])
                self._event("error", None, None, False, f"telemetry window {window['id']} "
                            "refused by the server (422); dropped")  # fmt: skip

    def _send_report(
        self,
        client: ServerClient,
        device: dict,
        batch: list[dict],
        windows: list[dict[str, str]] | None = None,
    ) -> int:
        body = {"events": batch, "telemetry": windows or []}
        status, _, _ = client.request(
            "POST", "/v1/report", body, key=self._key(), device_id=device["device_id"]
        )
        return status

    # ---- the loop ----------------------------------------------------------------------------
    def _client(self, device: dict) -> ServerClient:
        """The one place the agent reaches the server (the fleet simulator cuts it here)."""
        return ServerClient(device["server"])

    def _checkin_body(self) -> dict[str, Any]:
        active = self._pointer("active")
        staged = self.status().staged
        return {
            "active": {"name": active["name"], "version": active["version"]} if active else None,
            "staged": {"name": staged["name"], "version": staged["version"]} if staged else None,
            "state": self.current_state(),
        }

    def _check_in(self, client: ServerClient, device: dict) -> dict | None:
        from edgeforge.fleet.protocol import ProtocolError, b64decode, verify_directive

        body = self._checkin_body()
        cached = read_json(self._path("directive.json"))
        headers = {"If-None-Match": cached["etag"]} if cached and cached.get("etag") else {}
        status, reply_headers, reply = client.request(
            "POST", "/v1/checkin", body, key=self._key(), device_id=device["device_id"],
            headers=headers,
        )  # fmt: skip
        if status == 304 and cached:
            return cached["directive"]
        if status != 200 or not isinstance(reply, dict):
            raise Offline(f"check-in answered HTTP {status}")
        try:
            directive = verify_directive(b64decode(device["director_key"]), reply)
        except ProtocolError as exc:
            self._event("error", None, None, False, f"directive refused: {exc}")
            return None
        if directive.get("device_id") not in (None, device["device_id"]):
            self._event("error", None, None, False, "directive names another device; ignored")
            return None
        etag = {k.lower(): v for k, v in reply_headers.items()}.get("etag")
        atomic_write_json(
            self._path("directive.json"), {"etag": etag, "directive": directive, "signed": reply}
        )
        return directive

    def step(self) -> dict[str, Any]:
        """One check-in and whatever it asks: returns {"online", "directive", "state"}."""
        device = self.enrol()
        self.recover()
        client = self._client(device)
        try:
            directive = self._check_in(client, device)
            self.failures = 0
        except Offline as exc:
            self.failures += 1
            return {"online": False, "detail": str(exc), "state": self.current_state()}
        if directive is not None:
            self.act(directive)
        with contextlib.suppress(Offline):
            self._flush_reports(client, device)
        job = None
        if self.accept_jobs and self.current_state() == "idle":
            with contextlib.suppress(Offline):
                job = self._take_job(client, device)
        return {"online": True, "directive": directive, "state": self.current_state(), "job": job}

    # ---- benchmark jobs ----------------------------------------------------------------------
    def _take_job(self, client: ServerClient, device: dict) -> dict | None:
        """Ask for one benchmark job; run it and post the result. Returns {"id", "ok"} or None."""
        status, _, reply = client.request(
            "POST", "/v1/jobs/next", {}, key=self._key(), device_id=device["device_id"]
        )
        if status != 200 or not isinstance(reply, dict) or not isinstance(reply.get("job"), dict):
            return None
        job = reply["job"]
        result = self.run_job(job)
        client.request(
            "POST", f"/v1/jobs/{int(job['id'])}/result", result, key=self._key(),
            device_id=device["device_id"],
        )  # fmt: skip
        return {"id": job["id"], "ok": result["ok"]}

    def run_job(self, job: dict[str, Any]) -> dict[str, Any]:
        """Fetch the job's signed variant (TUF, this device's class) into a scratch folder and
        time it in a child with the runtime loaders `predict` uses: `warmup` untimed runs (the
        first timed apart), then `runs` timed ones on the release's canary inputs, as
        `edgeforge bench` does. Returns {"ok", "detail", "result": {...}}; never raises for
        what the model does. The slots are not touched."""
        from edgeforge.fleet.agent._child import run_child

        name, version = str(job["name"]), int(job["version"])
        options = job.get("options") or {}
        warmup, runs = int(options.get("warmup", 10)), int(options.get("runs", 50))
        where = self.state / "jobs" / str(int(job["id"]))
        _remove(where)
        where.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fetched = self._fetch_variant(name, version, where)
            index = verify_slot(where) if fetched.get("ok") else None
            if index is None:
                detail = str(fetched.get("detail") or "the variant does not match its index")
                return {"ok": False, "detail": f"download: {detail}", "result": {}}
            measured = run_child(
                "bench", where, memory_limit=self.memory_limit, timeout=self.canary_timeout,
                count=runs, warmup=warmup, launcher=self.launcher,
            )  # fmt: skip
            if not measured.get("ok"):
                return {"ok": False, "detail": str(measured.get("detail")), "result": {}}
            return {"ok": True, "detail": "", "result": _bench_figures(index, measured)}
        finally:
            _remove(where)

    def next_delay(self) -> float:
        """Seconds to the next check-in: the interval ±20 % jitter; doubled for each
        consecutive failed check-in while offline (at most an hour)."""
        base = self.interval * (2 ** min(self.failures, 16)) if self.failures else self.interval
        base = min(base, max(self.interval, 3600.0))
        return base * self.rng.uniform(0.8, 1.2)

    def run(self, *, once: bool = False, sleep: Callable[[float], None] = time.sleep) -> None:
        from edgeforge.fleet.agent._lock import exclusive

        with exclusive(self.state / ".agent.lock"):
            while True:
                if once:
                    self.step()
                    return
                if not self._device().get("director_key"):
                    try:
                        self.enrol()  # bad configuration (refused token): say it and stop
                    except Offline:
                        self.failures += 1  # no server yet: keep trying, backing off
                        sleep(self.next_delay())
                        continue
                try:
                    self.step()
                except Exception as exc:  # a full disk, a bug: the loop, and the model, go on
                    import sys

                    self.failures += 1
                    print(f"edgeforge agent: {type(exc).__name__}: {exc}", file=sys.stderr)
                sleep(self.next_delay())

    # ---- acting on a directive ---------------------------------------------------------------
    def act(self, directive: dict[str, Any]) -> None:
        action = directive.get("action")
        name, version = directive.get("name"), directive.get("version")
        if action == "stay" or name is None or version is None:
            return
        version = int(version)
        active = self._pointer("active")
        if active and active.get("name") == name and int(active.get("version", -1)) == version:
            return
        if action == "rollback" and self._rollback_to(name, version):
            return
        failed = read_json(self._path("failed.json"), {}) or {}
        if f"{name}@{version}" in failed:
            return  # refused once (and reported); the server decides what comes next
        self.install(name, version)

    def _record_failure(self, name: str, version: int, detail: str) -> None:
        failed = read_json(self._path("failed.json"), {}) or {}
        failed[f"{name}@{version}"] = detail
        atomic_write_json(self._path("failed.json"), failed)

    def _fetch_variant(self, name: str, version: int, out: Path) -> dict[str, Any]:
        """Fetch into `out`: in a child (default), or in this process with a given `fetch`."""
        from edgeforge.fleet.agent._download import fetch_in_process, run_download

        if self._fetch is not None:
            result = fetch_in_process(self.state, name, version, out, self._fetch)
        else:
            result = run_download(
                self.state, name, version, out, file_limit=self.file_limit, launcher=self.launcher
            )
        self.last_download = result
        return result

    def install(self, name: str, version: int) -> bool:
        """Download, stage, canary, activate, probe, commit (or roll back). True if committed."""
        self._ensure_layout()
        slot = self._inactive_slot()
        where = self._slot_dir(slot)
        index = verify_slot(where)
        if not (index and index.get("name") == name and int(index.get("version", -1)) == version):
            self._enter("downloading", name=name, version=version, slot=slot)
            _remove(where)
            started = time.monotonic()
            fetched = self._fetch_variant(name, version, where)
            if not fetched.get("ok"):
                _remove(where)
                detail = str(fetched.get("detail") or "download failed")
                self._enter("idle", name=name, version=version, detail=detail)
                self._event("download", name, version, False, detail)
                return False
            index = verify_slot(where)
            if index is None or index.get("name") not in (None, name):
                _remove(where)
                detail = "downloaded variant does not match its variant.json or the directive"
                self._enter("idle", name=name, version=version, detail=detail)
                self._event("download", name, version, False, detail)
                return False
            metrics = {"seconds": time.monotonic() - started}
            self._event("download", name, version, True, "", metrics)
        self._enter("staged", name=name, version=version, slot=slot)
        return self._canary_and_activate(name, version, slot)

    def _canary_and_activate(self, name: str, version: int, slot: str) -> bool:
        from edgeforge.fleet.agent._child import run_child

        self._enter("canary", name=name, version=version, slot=slot)
        result = run_child(
            "canary", self._slot_dir(slot), memory_limit=self.memory_limit,
            timeout=self.canary_timeout, launcher=self.launcher,
        )  # fmt: skip
        metrics = {k: result.get(k) for k in ("load_ms", "peak_rss", "wall_ms", "max_abs_error")}
        metrics.update(_latency_summary(result.get("latency_ms")))
        self._event(
            "canary", name, version, bool(result.get("ok")), result.get("detail", ""), metrics
        )
        self._outcome("canary", bool(result.get("ok")), name, version)
        if not result.get("ok"):
            self._record_failure(name, version, f"canary: {result.get('detail')}")
            _remove(self._slot_dir(slot))  # refused: not kept, not reported as staged
            self._enter(
                "idle", name=name, version=version, detail=f"canary failed: {result['detail']}"
            )
            return False
        latencies = [float(x) for x in result.get("latency_ms") or []] or [0.0]
        budget = float(
            read_json(self._slot_dir(slot) / "variant.json", {}).get("latency_budget_ms") or 0
        )
        budget = budget or max(latencies) * 5 + 50.0
        return self._activate_and_probe(name, version, slot, budget)

    def _activate_and_probe(self, name: str, version: int, slot: str, budget_ms: float) -> bool:
        from edgeforge.fleet.agent._child import run_child

        self._enter("activating", name=name, version=version, slot=slot, budget_ms=budget_ms)
        self._set_pointer("active", {"slot": slot, "name": name, "version": version})
        self._event("activate", name, version, True)
        self._enter("probing", name=name, version=version, slot=slot, budget_ms=budget_ms)
        result = run_child(
            "probe", self._slot_dir(slot), memory_limit=self.memory_limit,
            timeout=self.canary_timeout, count=self.probe_count, budget_ms=budget_ms,
            launcher=self.launcher,
        )  # fmt: skip
        metrics = {k: result.get(k) for k in ("peak_rss", "count")}
        metrics.update(_latency_summary(result.get("latency_ms")))
        self.last_probe_p95 = metrics.get("latency_p95_ms")
        self._event(
            "health", name, version, bool(result.get("ok")), result.get("detail", ""), metrics
        )
        self._outcome("health", bool(result.get("ok")), name, version)
        if not result.get("ok"):
            self._record_failure(name, version, f"health probe: {result.get('detail')}")
            self.rollback(f"health probe failed: {result.get('detail')}", name, version)
            return False
        self._commit(name, version, slot)
        return True

    def _commit(self, name: str, version: int, slot: str) -> None:
        self._enter("committing", name=name, version=version, slot=slot)
        self._set_pointer("committed", {"slot": slot, "name": name, "version": version})
        drop_unless_bound_to(self.state, self._pointer("active"))  # trained on another release
        self._enter("idle", name=name, version=version, detail="committed")
        p95 = getattr(self, "last_probe_p95", None)
        self._event("commit", name, version, True, "", {"latency_p95_ms": p95} if p95 else None)

    def rollback(self, reason: str, name: str | None = None, version: int | None = None) -> None:
        """Back to the committed slot (or no model, if none was ever committed)."""
        committed = self._pointer("committed")
        self._enter("rolling_back", name=name, version=version, detail=reason, to=committed)
        if committed is not None:
            self._set_pointer("active", committed)
        else:
            with contextlib.suppress(FileNotFoundError):
                self._path("active.json").unlink()
        drop_unless_bound_to(self.state, self._pointer("active"))
        self._enter("idle", name=name, version=version, detail=f"rolled back: {reason}")
        self._event("rollback", name, version, True, reason)

    def _rollback_to(self, name: str, version: int) -> bool:
        """A rollback directive to a version still in the other slot: switch back to it (it was
        committed before, so it needs no canary). False if it has to be installed again."""
        active = self._pointer("active")
        for slot in SLOTS:
            if active and slot == active["slot"]:
                continue
            index = read_json(self._slot_dir(slot) / "variant.json")
            if not (isinstance(index, dict) and index.get("name") == name):
                continue
            if (
                int(index.get("version", -1)) != version
                or verify_slot(self._slot_dir(slot)) is None
            ):
                continue
            self._enter("rolling_back", name=name, version=version, slot=slot, detail="directive")
            pointer = {"slot": slot, "name": name, "version": version}
            self._set_pointer("active", pointer)
            self._set_pointer("committed", pointer)
            drop_unless_bound_to(self.state, pointer)
            self._enter("idle", name=name, version=version, detail="rolled back by directive")
            self._event("rollback", name, version, True, "directive")
            return True
        return False

    # ---- recovery ----------------------------------------------------------------------------
    def recover(self) -> str:
        """Bring the state folder back to a consistent state after a crash or `kill -9`."""
        state = self._recover()
        # Whatever the step was, a head never outlives the release it was trained under.
        drop_unless_bound_to(self.state, self._pointer("active"))
        return state

    def _recover(self) -> str:
        self._ensure_layout()
        for leftover in (self.state / "slots").iterdir():
            if leftover.name not in SLOTS:
                _remove(leftover)  # a temporary folder of a fetch that was cut short
        last = self.journal.last()
        if last is None:
            return "idle"
        state = last["state"]
        name, version, slot = last.get("name"), last.get("version"), last.get("slot")
        if state == "idle":
            active, committed = self._pointer("active"), self._pointer("committed")
            if committed and active != committed:
                self._set_pointer("active", committed)
        elif state in ("downloading", "staged", "canary"):
            # The download resumes (or the canary reruns) when the directive asks again.
            self._enter("idle", name=name, version=version, detail=f"interrupted while {state}")
        elif state in ("activating", "probing"):
            tries = self._probe_tries(name, version)
            if tries >= MAX_PROBE_TRIES:
                self._record_failure(name, version, "health probe interrupted repeatedly")
                self.rollback(f"health probe interrupted {tries} times", name, version)
            else:
                self._activate_and_probe(name, version, slot, float(last.get("budget_ms", 0)))
        elif state == "committing":
            self._commit(name, version, slot)
        elif state == "rolling_back":
            if last.get("detail") == "directive" and slot in SLOTS:
                pointer = {"slot": slot, "name": name, "version": version}
                self._set_pointer("active", pointer)
                self._set_pointer("committed", pointer)
                self._enter("idle", name=name, version=version, detail="rolled back by directive")
            else:
                self.rollback(str(last.get("detail") or "interrupted"), name, version)
        return self.current_state()

    def _probe_tries(self, name: Any, version: Any) -> int:
        tries = 0
        for entry in reversed(self.journal.entries(last=200)):
            if entry.get("name") != name or entry.get("version") != version:
                break
            if entry["state"] == "probing":
                tries += 1
            if entry["state"] == "staged":
                break
        return tries


def _latency_summary(values: Any) -> dict[str, Any]:
    """count, p50, p95 and max of a list of latencies (ms): a report stays small whatever the
    size of the canary set."""
    if not isinstance(values, list) or not values:
        return {}
    ordered = sorted(float(v) for v in values)
    return {
        "latency_count": len(ordered),
        "latency_p50_ms": ordered[len(ordered) // 2],
        "latency_p95_ms": _p95(ordered),
        "latency_max_ms": ordered[-1],
    }


def _bench_figures(index: dict, measured: dict) -> dict[str, Any]:
    """A job's figures in `edgeforge bench`'s terms (latency percentiles by linear
    interpolation, as numpy's default; statistics from the standard library)."""
    import statistics

    values = sorted(float(v) for v in measured.get("latency_ms") or [])

    def pct(q: float) -> float:
        position = (len(values) - 1) * q
        low = int(position)
        high = min(low + 1, len(values) - 1)
        return values[low] + (values[high] - values[low]) * (position - low)

    latency = {
        "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
        "min": values[0], "max": values[-1],
    }  # fmt: skip
    model_files = [f for f in index.get("files", []) if f.get("path") != _canary_name(index)]
    return {
        "name": index.get("name"),
        "version": index.get("version"),
        "runtime": index.get("runtime", ""),
        "precision": index.get("precision", ""),
        "artifact": str(index.get("main") or ""),
        "artifact_bytes": sum(int(f.get("length", 0)) for f in model_files),
        "inputs": str(measured.get("inputs") or ""),
        "load_ms": float(measured.get("load_ms") or 0.0),
        "first_inference_ms": float(measured.get("first_inference_ms") or values[0]),
        "latency_ms": latency,
        "runs": len(values),
        "peak_rss_mb": float(measured.get("peak_rss") or 0) / 2**20,
        "facts": _facts(),
    }


def _canary_name(index: dict) -> str:
    from edgeforge.fleet.agent._child import canary_spec

    return canary_spec(index)[0]


def _p95(values: Any) -> float | None:
    """The 95th percentile (nearest rank) of a list of latencies, None if empty."""
    if not isinstance(values, list) or not values:
        return None
    ordered = sorted(float(v) for v in values)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]


def pending_downloads(folder: Path) -> dict[str, int]:
    """url -> durable offset of every download that can resume (see `_fetcher`)."""
    result = {}
    for path in sorted(folder.glob("*.offset")) if folder.is_dir() else []:
        data = read_json(path, {}) or {}
        if "url" in data:
            result[data["url"]] = int(data.get("offset", 0))
    return result


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _facts() -> dict[str, Any]:
    facts: dict[str, Any] = {
        "machine": platform.machine(),
        "system": platform.system(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    with contextlib.suppress(OSError, ValueError):
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        facts["memory"] = int(pages * size)
    return facts
