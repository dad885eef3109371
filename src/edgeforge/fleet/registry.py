"""The registry: which versions of a model exist, their variants with evidence, and aliases.

Tables (`registry_*`, created by the migration "0001_registry"): a model has versions (1, 2, ...);
a version has one variant per device class, each with its runtime, recipe, artifact hash, size,
the target path of its signed index (`NAME/VERSION/CLASS/variant.json`) and its evidence; a model
has aliases (`production`, `canary`, any name) and every move of one is an event.

Invariants:
- the registry mirrors the signed repository: rows are written in the transaction of a release
  or alias move, and that transaction commits only after the repository published (see
  `edgeforge.fleet.release`); a refused or failed release leaves both as they were;
- versions only grow: a new version is one more than the highest ever recorded;
- an alias never moves to an older version unless the caller says `downgrade`, and then the move
  is recorded as an event like any other (its signed metadata is a new version too);
- lineage is the chain source hash -> recipe -> artifact hash -> release (version, target path),
  all kept on the variant row, so `show` answers "what exactly is production on android?".
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet.db import Base, engine, sqlite_url, upgrade

__all__ = [
    "Alias",
    "AliasEvent",
    "ModelRow",
    "Registry",
    "Variant",
    "Version",
    "parse_reference",
]

DB_FILE = "registry.db"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,99}$")


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


class ModelRow(Base):
    __tablename__ = "registry_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    versions: Mapped[list[Version]] = relationship(
        back_populates="model", order_by="Version.version", cascade="all, delete-orphan"
    )
    aliases: Mapped[list[Alias]] = relationship(
        back_populates="model", order_by="Alias.alias", cascade="all, delete-orphan"
    )


class Version(Base):
    __tablename__ = "registry_versions"
    __table_args__ = (
        UniqueConstraint("model_id", "version", name="uq_registry_versions_model_version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("registry_models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    created: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    source: Mapped[str] = mapped_column(Text)
    source_sha256: Mapped[str] = mapped_column(String(64))
    targets_version: Mapped[int] = mapped_column(Integer)
    tools: Mapped[dict[str, Any]] = mapped_column(JSON)
    model: Mapped[ModelRow] = relationship(back_populates="versions")
    variants: Mapped[list[Variant]] = relationship(
        back_populates="version", order_by="Variant.device_class", cascade="all, delete-orphan"
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.model.name,
            "version": self.version,
            "created": self.created.isoformat(timespec="seconds"),
            "source": self.source,
            "source_sha256": self.source_sha256,
            "targets_version": self.targets_version,
            "tools": self.tools,
            "variants": [v.to_dict() for v in self.variants],
        }


class Variant(Base):
    __tablename__ = "registry_variants"
    __table_args__ = (
        UniqueConstraint("version_id", "device_class", name="uq_registry_variants_class"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("registry_versions.id", ondelete="CASCADE"))
    device_class: Mapped[str] = mapped_column(String(100))
    runtime: Mapped[str] = mapped_column(String(50))
    precision: Mapped[str] = mapped_column(String(50))
    recipe: Mapped[dict[str, Any]] = mapped_column(JSON)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    index_path: Mapped[str] = mapped_column(Text)
    index_sha256: Mapped[str] = mapped_column(String(64))
    store_uri: Mapped[str] = mapped_column(Text)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)
    version: Mapped[Version] = relationship(back_populates="variants")

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_class": self.device_class,
            "runtime": self.runtime,
            "precision": self.precision,
            "size_bytes": self.size_bytes,
            "index": self.index_path,
            "index_sha256": self.index_sha256,
            "store": self.store_uri,
            "lineage": {
                "source_sha256": self.version.source_sha256,
                "recipe": self.recipe,
                "artifact_sha256": self.artifact_sha256,
                "release": f"{self.version.model.name}@{self.version.version}",
            },
            "evidence": self.evidence,
        }


class Alias(Base):
    __tablename__ = "registry_aliases"
    __table_args__ = (UniqueConstraint("model_id", "alias", name="uq_registry_aliases_alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("registry_models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    updated: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    model: Mapped[ModelRow] = relationship(back_populates="aliases")


class AliasEvent(Base):
    __tablename__ = "registry_alias_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("registry_models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(100))
    from_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    to_version: Mapped[int] = mapped_column(Integer)
    downgrade: Mapped[bool] = mapped_column(Boolean, default=False)
    targets_version: Mapped[int] = mapped_column(Integer)
    at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)

    def to_dict(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "downgrade": self.downgrade,
            "targets_version": self.targets_version,
            "at": _aware(self.at).isoformat(timespec="seconds"),
        }


def _aware(moment: _dt.datetime) -> _dt.datetime:
    """SQLite hands back naive datetimes; every moment stored here is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=_dt.UTC)


def check_name(name: str) -> str:
    """A model name: letters, digits, '.', '_', '-' (it becomes a target path component)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise EdgeforgeError(
            f"model name {name!r}: use letters, digits, '.', '_' or '-' (at most 100), "
            "starting with a letter or digit"
        )
    return name


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not _ALIAS.match(alias) or alias.isdigit():
        raise EdgeforgeError(
            f"alias {alias!r}: use a name that starts with a letter (letters, digits, '.', "
            "'_', '-'), e.g. production or canary"
        )
    return alias


def parse_reference(text: str, *, version_required: bool = False) -> tuple[str, str | None]:
    """'NAME', 'NAME@3' or 'NAME@production' -> (name, '3' | 'production' | None)."""
    name, sep, rest = str(text).partition("@")
    check_name(name)
    if sep and not rest:
        raise EdgeforgeError(f"{text!r}: write NAME@VERSION or NAME@ALIAS")
    if version_required and not sep:
        raise EdgeforgeError(f"{text!r}: name a version, e.g. {name}@1 or {name}@production")
    return name, rest or None


@dataclass
class RegistryView:
    """What a `registry` verb answers: `kind` says which (list, show, history, alias, diff)."""

    kind: str
    body: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.body)


class Registry:
    """The registry of one repository, in the database at `url` (migrated on open)."""

    def __init__(self, url: str) -> None:
        self.url = url
        upgrade(url)
        self.engine = engine(url)

    @classmethod
    def for_repository(cls, repository: Path, db: str | None = None) -> Registry:
        """The registry beside a repository: `db` if given, else DIR/registry.db (SQLite)."""
        return cls(db or sqlite_url(Path(repository) / DB_FILE))

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # -- reading -----------------------------------------------------------------------------

    def list(self) -> RegistryView:
        with self.session() as session:
            models = session.scalars(select(ModelRow).order_by(ModelRow.name)).all()
            rows = [
                {
                    "name": m.name,
                    "versions": [v.version for v in m.versions],
                    "latest": max((v.version for v in m.versions), default=None),
                    "device_classes": sorted(
                        {x.device_class for v in m.versions for x in v.variants}
                    ),
                    "aliases": {a.alias: a.version for a in m.aliases},
                }
                for m in models
            ]
        return RegistryView("list", {"models": rows})

    def show(self, reference: str) -> RegistryView:
        name, which = parse_reference(reference)
        with self.session() as session:
            model = self._model(session, name)
            if which is None:
                body = {
                    "name": name,
                    "versions": [v.to_dict() for v in model.versions],
                    "aliases": {a.alias: a.version for a in model.aliases},
                }
                return RegistryView("show", body)
            version = self._version(session, model, which)
            body = version.to_dict() | {
                "aliases": sorted(a.alias for a in model.aliases if a.version == version.version)
            }
        return RegistryView("show", body)

    def history(self, name: str) -> RegistryView:
        check_name(name)
        with self.session() as session:
            model = self._model(session, name)
            events = session.scalars(
                select(AliasEvent).where(AliasEvent.model_id == model.id).order_by(AliasEvent.id)
            ).all()
            timeline = [
                {
                    "at": _aware(v.created).isoformat(timespec="seconds"),
                    "event": "release",
                    "version": v.version,
                    "device_classes": [x.device_class for x in v.variants],
                    "targets_version": v.targets_version,
                }
                for v in model.versions
            ] + [{"event": "alias", **e.to_dict()} for e in events]
        timeline.sort(key=lambda row: (row["at"], row["targets_version"]))
        return RegistryView("history", {"name": name, "history": timeline})

    def diff(self, a: str, b: str) -> RegistryView:
        """Compare the evidence of two versions per device class: accuracy, size, latency."""
        name_a, which_a = parse_reference(a, version_required=True)
        name_b, which_b = parse_reference(b, version_required=True)
        with self.session() as session:
            left = self._version(session, self._model(session, name_a), which_a)
            right = self._version(session, self._model(session, name_b), which_b)
            ours = {v.device_class: v for v in left.variants}
            theirs = {v.device_class: v for v in right.variants}
            classes = []
            for device_class in sorted(set(ours) | set(theirs)):
                x, y = ours.get(device_class), theirs.get(device_class)
                row: dict[str, Any] = {"device_class": device_class}
                for key, pick in _DIFF_FIGURES.items():
                    before = pick(x) if x is not None else None
                    after = pick(y) if y is not None else None
                    change = (
                        after - before
                        if isinstance(before, int | float) and isinstance(after, int | float)
                        else None
                    )
                    row[key] = {"a": before, "b": after, "change": change}
                row["runtime"] = {
                    "a": x.runtime if x else None,
                    "b": y.runtime if y else None,
                }
                row["precision"] = {
                    "a": x.precision if x else None,
                    "b": y.precision if y else None,
                }
                classes.append(row)
            body = {
                "a": f"{name_a}@{left.version}",
                "b": f"{name_b}@{right.version}",
                "source_changed": left.source_sha256 != right.source_sha256,
                "classes": classes,
            }
        return RegistryView("diff", body)

    # -- writing (inside the caller's transaction) --------------------------------------------

    @staticmethod
    def next_version(session: Session, name: str) -> int:
        """One more than the highest version of `name` ever recorded (1 for a new model)."""
        highest = session.scalar(
            select(func.max(Version.version)).join(ModelRow).where(ModelRow.name == name)
        )
        return (highest or 0) + 1

    @staticmethod
    def model_row(session: Session, name: str) -> ModelRow:
        """The model's row, created when it is new."""
        model = session.scalar(select(ModelRow).where(ModelRow.name == name))
        if model is None:
            model = ModelRow(name=name, created=_now())
            session.add(model)
            session.flush()
        return model

    def _model(self, session: Session, name: str) -> ModelRow:
        model = session.scalar(select(ModelRow).where(ModelRow.name == name))
        if model is None:
            known = session.scalars(select(ModelRow.name).order_by(ModelRow.name)).all()
            hint = f"known: {', '.join(known)}" if known else "the registry is empty"
            raise EdgeforgeError(f"no model named {name!r} in the registry ({hint})")
        return model

    def _version(self, session: Session, model: ModelRow, which: str | None) -> Version:
        """A version by number or by alias; one line naming what exists otherwise."""
        if which is None:
            raise EdgeforgeError(f"name a version of {model.name}, e.g. {model.name}@1")
        if which.isdigit():
            found = next((v for v in model.versions if v.version == int(which)), None)
            if found is None:
                have = ", ".join(str(v.version) for v in model.versions) or "none"
                raise EdgeforgeError(f"{model.name} has no version {which} (versions: {have})")
            return found
        alias = next((a for a in model.aliases if a.alias == which), None)
        if alias is None:
            have = ", ".join(a.alias for a in model.aliases) or "none"
            raise EdgeforgeError(
                f"{model.name} has no alias {which!r} (aliases: {have}); set one with "
                f"`edgeforge registry alias {model.name}@VERSION {which}`"
            )
        return next(v for v in model.versions if v.version == alias.version)


def _evidence(variant: Variant | None, *path: str) -> Any:
    value: Any = variant.evidence if variant is not None else None
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


_DIFF_FIGURES = {
    "accuracy": lambda v: _evidence(v, "accuracy", "candidate"),
    "accuracy_drop": lambda v: _evidence(v, "accuracy", "drop"),
    "size_bytes": lambda v: v.size_bytes,
    "estimated_latency_ms": lambda v: _evidence(v, "latency", "estimated_ms"),
    "measured_latency_ms": lambda v: _evidence(v, "latency", "measured_ms"),
}
