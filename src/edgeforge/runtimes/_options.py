"""Reading a recipe's options where a runtime uses them, with one-line errors for bad values.

Options stay JSON values (they are written into the manifest), so each reader checks the JSON
type it expects: a whole number, a flag, a list of names, one of a few words.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgeforge.errors import EdgeforgeError
from edgeforge.recipe import Recipe

__all__ = ["choice_option", "flag_option", "names_option", "positive_int_option", "ratio_option"]


def positive_int_option(recipe: Recipe, name: str, default: int) -> int:
    value = recipe.options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EdgeforgeError(f"option {name} must be a positive whole number, not {value!r}")
    return value


def ratio_option(recipe: Recipe, name: str, default: float) -> float:
    value = recipe.options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise EdgeforgeError(f"option {name} must be a number in (0, 1], not {value!r}")
    return float(value)


def flag_option(recipe: Recipe, name: str, default: bool) -> bool:
    value = recipe.options.get(name, default)
    if not isinstance(value, bool):
        raise EdgeforgeError(f"option {name} must be true or false, not {value!r}")
    return value


def names_option(recipe: Recipe, name: str) -> list[str]:
    value = recipe.options.get(name, [])
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise EdgeforgeError(f"option {name} must be a list of node names, not {value!r}")
    if not all(isinstance(item, str) for item in value):
        raise EdgeforgeError(f"option {name} must list node names as strings, not {value!r}")
    return list(value)


def choice_option(recipe: Recipe, name: str, choices: Sequence[str], default: str) -> str:
    value: Any = recipe.options.get(name, default)
    if value not in choices:
        raise EdgeforgeError(f"option {name} must be one of {', '.join(choices)}, not {value!r}")
    return value
