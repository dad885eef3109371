"""Personalisation, server side: build the package a device trains a personal head from.

`personalize(source, out, trainable=..., runtimes=...)` splits a torch classifier into a
frozen backbone (verified edge artifacts) and a trainable head, in every form a device can
train (see `edgeforge.personalize.build`). The device side, which never imports torch export
or a converter, is `edgeforge.fleet.personal` (`PersonalizationPackage.load(DIR).train(...)`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["PersonalizeResult", "demo_personalize", "personalize"]


def __getattr__(name: str) -> Any:
    if name in ("personalize", "PersonalizeResult"):
        from edgeforge.personalize import build

        return getattr(build, name)
    if name == "demo_personalize":
        from edgeforge.personalize.demo import demo_personalize

        return demo_personalize
    raise AttributeError(f"module 'edgeforge.personalize' has no attribute {name!r}")
