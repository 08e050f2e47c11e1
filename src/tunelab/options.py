"""Options as dataclass fields whose metadata says everything a front end needs: `help`, and where they
apply `bounds` (lowest, highest) and `choices`. The CLI flags, the YAML keys, the service's `tunelab`
extension and `check_fields` all read the same metadata, so a bound or a choice is written once."""

from __future__ import annotations

from dataclasses import dataclass, fields

from .errors import UserError


class ConfigError(UserError, ValueError):
    """A config value or file that cannot be used; the message names the key (and file), and `key`
    holds it where it is one option."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


@dataclass
class NoOptions:
    """A method with no options of its own."""


def option_fields(options_class) -> dict:
    """name -> dataclass field of an options class."""
    return {f.name: f for f in fields(options_class)}


def check_fields(values) -> None:
    """Every field of the dataclass `values` within its `bounds` and `choices` (None is 'not set')."""
    for f in fields(values):
        value = getattr(values, f.name)
        if value is None:
            continue
        choices = f.metadata.get("choices")
        if choices and (isinstance(value, bool) or value not in choices):  # True == 1, YAML's yes is True
            raise ConfigError(f"{f.name}: '{value}' is not one of {', '.join(choices)}", f.name)
        bounds = f.metadata.get("bounds")
        if bounds and isinstance(value, bool):
            raise ConfigError(f"{f.name} is a number, not {value}", f.name)
        if bounds and isinstance(value, int | float) and not bounds[0] <= value <= bounds[1]:
            raise ConfigError(f"{f.name} must be between {bounds[0]} and {bounds[1]} (got {value!r})", f.name)


def comma_separated(value: str | list[str] | None) -> list[str] | None:
    """'a,b' or ['a,b', 'c'] (a repeated flag) as ['a', 'b', 'c']; None stays None."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    return [part.strip() for item in items for part in item.split(",") if part.strip()]
