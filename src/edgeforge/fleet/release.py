"""`release` and `registry alias`: what changes a repository and its registry, together.

A release: parse and check everything given (exit 2 on bad input, nothing touched), gather the
evidence of every variant (`edgeforge.fleet.evidence`), and only if every variant passed, under
the repository's lock: take the next version, stage each variant's files (`variant.json`, the
artifact's files with its manifest, `canary.npz`, and with `personalize` the personalisation
package in `personalize/`, built before the lock by `edgeforge.personalize.release`) under
`NAME/VERSION/CLASS/`, copy them to the artifact store, write the registry rows in one
transaction, publish the targets (re-signing targets, snapshot and timestamp), and commit the
transaction last.

Invariants:
- a refused release (a variant failed a check; exit 1) or bad input (exit 2) changes neither
  the repository nor the registry: the registry is not even opened before the evidence passed;
- the registry's transaction commits only after `Repository.publish` returned; if publishing
  raises, the transaction rolls back and `publish` itself leaves the repository as it was;
- releases into one repository are serialised by `Repository.lock()` (across processes), and
  the version is taken under it: one more than the highest in the registry or the repository;
- an alias moves only forward unless `downgrade` is given; every move publishes a new signed
  `NAME/aliases.json` (`{"name", "aliases": {alias: version}, "history": [...]}`), so a device
  that is served an older one sees TUF's rollback protection refuse it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeforge.errors import EdgeforgeError

__all__ = ["Release", "move_alias", "release"]

VARIANT_INDEX = "variant.json"
ALIASES = "aliases.json"
INDEX_SCHEMA = "edgeforge.variant/1"


@dataclass
class Release:
    """What `release` did: `released` with a version, or refused with the failures named."""

    name: str
    repository: str
    released: bool
    version: int | None = None
    targets_version: int | None = None
    variants: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    registry: str = ""
    store: str = ""
    targets: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 0 if self.released else 1

    @property
    def verdict(self) -> str:
        if self.released:
            classes = ", ".join(v["device_class"] for v in self.variants)
            return f"RELEASED (exit 0): {self.name}@{self.version} for {classes}"
        return "REFUSED (exit 1): " + "; ".join(self.refused) + "; nothing was published"

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "name": self.name,
            "version": self.version,
            "released": self.released,
            "repository": self.repository,
            "targets_version": self.targets_version,
            "registry": self.registry,
            "store": self.store,
            "refused": self.refused,
            "targets": self.targets,
            "seconds": round(self.seconds, 3),
            "variants": self.variants,
        }


def _check_db(db: str | None) -> None:
    """A --db URL that SQLAlchemy cannot parse is bad input, caught before any work."""
    if db is None:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(db)
    except ArgumentError:
        raise EdgeforgeError(
            f"--db {db!r}: not a database URL; write sqlite:///path/registry.db or "
            "postgresql+psycopg://user@host:5432/db"
        ) from None


def release(
    source: Any,
    repo: str | Path,
    name: str,
    variants: str | list[str],
    *,
    keys: str | Path | None = None,
    db: str | None = None,
    store: str | None = None,
    store_endpoint: str | None = None,
    sources: list[str | Path] | None = None,
    data: str | Path | None = None,
    max_accuracy_drop: Any = None,
    max_size: Any = None,
    max_latency: Any = None,
    devices: dict[str, str] | None = None,
    max_samples: int | None = None,
    bench_runs: int = 20,
    canary_count: int = 32,
    timeout: float = 600,
    personalize: str | list[str] | None = None,
    personalize_forms: str | list[str] | None = None,
    personalize_reference: str | Path | None = None,
    **load_options: Any,
) -> Release:
    """Release `source` as the next version of `name` in the repository `repo`, one variant
    per `CLASS=RUNTIME[:PRECISION]`, each only with its evidence (see the module docstring).
    `sources` are optimize/convert output folders to take artifacts from (`--from`).
    `personalize` names the layers of a trainable head: each variant then ships a
    personalisation package in `personalize/` (`edgeforge.personalize.release`), of the forms
    `personalize_forms` names (default: the numpy head, plus the variant runtime's own);
    `personalize_reference` (an .npz of training inputs 'x' and labels 'y') gives the package
    the statistics of the input adapter (`edgeforge.fleet.input_adapter`)."""
    from edgeforge._load import load
    from edgeforge.fleet.evidence import gather, parse_limits, parse_variants
    from edgeforge.fleet.registry import check_name
    from edgeforge.fleet.repository import Repository
    from edgeforge.fleet.store import open_store

    started = time.monotonic()
    check_name(name)
    specs = parse_variants(variants)
    limits = parse_limits(
        specs, max_accuracy_drop=max_accuracy_drop, max_size=max_size, max_latency=max_latency
    )
    if canary_count < 1:
        raise EdgeforgeError(f"--canary-samples {canary_count}: give 1 or more")
    if bench_runs < 0:
        raise EdgeforgeError(f"--bench-runs {bench_runs}: give 0 (do not measure) or more")
    if data is not None and not Path(data).is_dir():
        raise EdgeforgeError(f"--data {data}: not a folder of samples")
    _check_db(db)
    layers: list[str] | None = None
    forms: list[str] | None = None
    reference = None
    if personalize_reference is not None:
        if personalize is None:
            raise EdgeforgeError(
                "--personalize-reference needs --personalize LAYERS (it is the input "
                "adapter's data for the personalisation package)"
            )
        from edgeforge.personalize.build import read_reference

        reference = read_reference(Path(personalize_reference))
    if personalize is not None:  # bad layers or a source without layers: exit 2, nothing done
        from edgeforge.personalize import release as personal

        layers, forms = personal.check(
            source, personalize, personalize_forms, load_options.get("example_inputs")
        )
    repository = Repository.open(Path(repo), Path(keys) if keys else None)
    artifact_store = open_store(store, repository.path, endpoint_url=store_endpoint)
    with tempfile.TemporaryDirectory(prefix="edgeforge-release-") as scratch:
        work = Path(scratch)
        model = load(source, workdir=work / "source", **load_options)
        evidence = gather(
            model,
            specs,
            work,
            data=Path(data) if data else None,
            limits=limits,
            sources=[Path(s) for s in sources or []],
            devices=devices,
            max_samples=max_samples,
            bench_runs=bench_runs,
            canary_count=canary_count,
            timeout=timeout,
        )
        result = Release(
            name,
            str(repository.path),
            released=False,
            variants=[e.to_dict() for e in evidence],
            refused=[f for e in evidence for f in e.failures],
            store=artifact_store.uri,
        )
        if result.refused:  # the gate: nothing is opened, written or published
            result.seconds = time.monotonic() - started
            return result
        packages: dict[str, Any] = {}
        if layers is not None:  # built before the lock: a conversion per backbone runtime
            packages = personal.build(
                source,
                {e.spec.device_class: e.spec.runtime for e in evidence},
                layers,
                forms,
                work,
                name=name,
                timeout=timeout,
                example_inputs=load_options.get("example_inputs"),
                reference=reference,
            )
            for variant in result.variants:
                variant["personalize"] = packages[variant["device_class"]].summary()
        _publish(result, repository, evidence, model, db, artifact_store, packages)
    result.seconds = time.monotonic() - started
    return result


def _publish(
    result: Release,
    repository: Any,
    evidence: list[Any],
    model: Any,
    db: str | None,
    store: Any,
    packages: dict[str, Any],
) -> None:
    from edgeforge.fleet.registry import Registry

    with repository.lock():  # a first release migrates the registry: one process at a time
        registry = Registry.for_repository(repository.path, db)
    result.registry = _redacted(registry.url)
    added: list[str] = []  # objects this release put in the store, taken back if it fails
    try:
        # Staged beside the repository (its file system), so publish links the files in
        # instead of copying them: a large artifact is read once more (its hash), not written.
        with tempfile.TemporaryDirectory(
            prefix=".edgeforge-release-", dir=repository.path.parent
        ) as stage:
            _write(
                result, repository, evidence, model, registry, store, Path(stage), added, packages
            )
    except BaseException:
        for digest in added:
            with contextlib.suppress(Exception):
                store.delete(digest)
        raise


def _write(
    result: Release,
    repository: Any,
    evidence: list[Any],
    model: Any,
    registry: Any,
    store: Any,
    stage: Path,
    added: list[str],
    packages: dict[str, Any],
) -> None:
    """Stage, store, record and publish, under the lock; the registry commits last."""
    from edgeforge.fleet.evidence import tool_versions
    from edgeforge.fleet.registry import Registry, Variant, Version

    name = result.name
    with repository.lock(), registry.session() as session, session.begin():
        version = max(Registry.next_version(session, name), _next_in_repository(repository, name))
        released = _dt.datetime.now(_dt.UTC)
        files: dict[str, Path] = {}
        custom: dict[str, dict] = {}
        model_row = Registry.model_row(session, name)
        row = Version(
            model=model_row,
            version=version,
            created=released,
            source=model.provenance.source,
            source_sha256=evidence[0].source_sha256,
            targets_version=0,  # set once published
            tools=tool_versions(),
        )
        session.add(row)
        for item in evidence:
            prefix = f"{name}/{version}/{item.spec.device_class}"
            staged, index = _stage_variant(
                item,
                name,
                version,
                released,
                stage / prefix,
                packages.get(item.spec.device_class),
            )
            for relative, local in staged.items():
                files[f"{prefix}/{relative}"] = local
                custom[f"{prefix}/{relative}"] = {
                    "edgeforge": {
                        "name": name,
                        "version": version,
                        "device_class": item.spec.device_class,
                    }
                }
                digest = _sha256_file(local)
                if not store.has(digest):
                    store.put(local, digest)
                    added.append(digest)
            index_sha256 = _sha256_file(staged[VARIANT_INDEX])
            session.add(
                Variant(
                    version=row,
                    device_class=item.spec.device_class,
                    runtime=item.spec.runtime,
                    precision=item.spec.precision,
                    recipe=item.recipe,
                    artifact_sha256=item.artifact_sha256,
                    size_bytes=int(item.size_bytes or 0),
                    index_path=f"{prefix}/{VARIANT_INDEX}",
                    index_sha256=index_sha256,
                    store_uri=store.object_uri(index_sha256),
                    evidence=index["evidence"],
                )
            )
        session.flush()  # a constraint the rows break fails here, before anything is published
        with _uninterrupted():
            row.targets_version = repository.publish(files, custom, move=True)
            session.flush()
            session.commit()
    result.released = True
    result.version = version
    result.targets_version = row.targets_version
    result.targets = sorted(files)


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait (they are delivered after the block) while the repository
    publishes and the registry commits, so an interrupt cannot fall between the two. In a
    thread other than the main one the block is a no-op (signals go to the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _next_in_repository(repository: Any, name: str) -> int:
    """One more than the highest NAME/<version>/ among the repository's targets."""
    pattern = re.compile(rf"^{re.escape(name)}/(\d+)/")
    versions = [int(m.group(1)) for path in repository.targets() if (m := pattern.match(path))]
    return max(versions, default=0) + 1


def _stage_variant(
    item: Any,
    name: str,
    version: int,
    released: _dt.datetime,
    folder: Path,
    package: Any = None,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """The variant's files under `folder`: the artifact's own (manifest included), canary.npz,
    the personalisation package when `package` (an `Outcome`) has one, and variant.json (the
    index: every other file with its hash and length, the evidence)."""
    from edgeforge.fleet.evidence import CANARY_FILE, REFERENCE_FILE
    from edgeforge.personalize.release import FOLDER
    from edgeforge.personalize.release import stage as stage_package
    from edgeforge.runtimes import Artifact

    artifact = Artifact.load(item.folder)
    listed = artifact.manifest.files or sorted(
        p.relative_to(artifact.folder).as_posix()
        for p in artifact.folder.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    )
    folder.mkdir(parents=True, exist_ok=True)
    staged: dict[str, Path] = {}
    for relative in [*listed, "manifest.json"]:
        if relative in (VARIANT_INDEX, CANARY_FILE, REFERENCE_FILE) or (
            package is not None and package.folder is not None and relative.split("/")[0] == FOLDER
        ):
            raise EdgeforgeError(
                f"{artifact.folder}: the artifact has a file named {relative}, which a release "
                "reserves; rename it"
            )
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artifact.folder / relative, target)
        staged[relative] = target
    shutil.copyfile(item.canary_file, folder / CANARY_FILE)
    staged[CANARY_FILE] = folder / CANARY_FILE
    reference = getattr(item, "reference_file", None)
    if reference is not None:  # the monitor's baseline, a signed target like the rest
        shutil.copyfile(reference, folder / REFERENCE_FILE)
        staged[REFERENCE_FILE] = folder / REFERENCE_FILE
    evidence = item.evidence()
    entry = None
    if package is not None:
        evidence["personalize"] = package.summary()
        if package.folder is not None:
            record = {"name": name, "version": version, "sha256": item.artifact_sha256}
            staged.update(stage_package(package, folder, record))
            entry = {"path": FOLDER, "layers": package.layers}
            if len(artifact.outputs) == 1:  # the output whose logits a personal head replaces
                entry["output"] = artifact.outputs[0].name
    index = {
        "schema": INDEX_SCHEMA,
        "name": name,
        "version": version,
        "device_class": item.spec.device_class,
        "runtime": item.spec.runtime,
        "precision": item.spec.precision,
        "format": artifact.manifest.format,
        "main": artifact.manifest.file,
        "released": released.isoformat(timespec="seconds"),
        "files": [
            {"path": rel, "sha256": _sha256_file(path), "length": path.stat().st_size}
            for rel, path in sorted(staged.items())
        ],
        "canary": item.canary,
        "reference": REFERENCE_FILE if reference is not None else None,
        "evidence": evidence,
    }
    if entry is not None:  # what the agent reads (`fleet/agent/_personal.py`)
        index["personalize"] = entry
    (folder / VARIANT_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    staged[VARIANT_INDEX] = folder / VARIANT_INDEX
    return staged, index


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# -- aliases ----------------------------------------------------------------------------------


def move_alias(
    repo: str | Path,
    reference: str,
    alias: str,
    *,
    keys: str | Path | None = None,
    db: str | None = None,
    downgrade: bool = False,
) -> dict[str, Any]:
    """Point `alias` of NAME at VERSION (`reference` = "NAME@VERSION"), publishing the model's
    signed aliases.json. Moving to an older version than the alias holds is refused unless
    `downgrade`; moving to the version it holds changes nothing."""
    from sqlalchemy import select

    from edgeforge.fleet.registry import (
        Alias,
        AliasEvent,
        Registry,
        check_alias,
        parse_reference,
    )
    from edgeforge.fleet.repository import Repository

    name, which = parse_reference(reference, version_required=True)
    if which is None or not which.isdigit():
        raise EdgeforgeError(f"{reference!r}: name the version by number, e.g. {name}@3")
    version = int(which)
    check_alias(alias)
    _check_db(db)
    repository = Repository.open(Path(repo), Path(keys) if keys else None)
    with repository.lock():
        registry = Registry.for_repository(repository.path, db)
    with repository.lock(), registry.session() as session, session.begin():
        model = registry._model(session, name)
        registry._version(session, model, str(version))  # it must exist
        row = session.scalar(select(Alias).where(Alias.model_id == model.id, Alias.alias == alias))
        before = row.version if row is not None else None
        answer = {
            "name": name,
            "alias": alias,
            "from_version": before,
            "to_version": version,
            "downgrade": before is not None and version < before,
            "changed": before != version,
            "targets_version": None,
        }
        if before == version:
            return answer
        if before is not None and version < before and not downgrade:
            raise EdgeforgeError(
                f"{name}@{alias} is version {before}; moving it back to {version} is a downgrade: "
                "add --downgrade to do it on purpose"
            )
        now = _dt.datetime.now(_dt.UTC)
        if row is None:
            row = Alias(model=model, alias=alias, version=version, updated=now)
            session.add(row)
        else:
            row.version, row.updated = version, now
        event = AliasEvent(
            model_id=model.id,
            alias=alias,
            from_version=before,
            to_version=version,
            downgrade=answer["downgrade"],
            targets_version=0,
            at=now,
        )
        session.add(event)
        session.flush()
        events = session.scalars(
            select(AliasEvent).where(AliasEvent.model_id == model.id).order_by(AliasEvent.id)
        ).all()
        aliases = session.scalars(select(Alias).where(Alias.model_id == model.id)).all()
        body = {
            "name": name,
            "aliases": {a.alias: a.version for a in sorted(aliases, key=lambda a: a.alias)},
            "sequence": len(events),
            "history": [
                {k: v for k, v in e.to_dict().items() if k != "targets_version"} for e in events
            ],
        }
        with tempfile.TemporaryDirectory(prefix="edgeforge-alias-") as scratch:
            path = Path(scratch) / ALIASES
            path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
            target = f"{name}/{ALIASES}"
            with _uninterrupted():
                published = repository.publish(
                    {target: path}, {target: {"edgeforge": {"name": name, "kind": "aliases"}}}
                )
                event.targets_version = published
                session.flush()
                session.commit()
        answer["targets_version"] = published
        answer["aliases"] = body["aliases"]
    return answer
