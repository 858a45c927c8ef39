"""RunConfig as a user writes it: one command-line flag per field, and the TOML job file (--config)."""

from __future__ import annotations

import difflib
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, NamedTuple

from distill.config import RunConfig, flag
from distill.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 has no TOML reader: --config is refused there; every option still works as a flag
    tomllib = None


class CliField(NamedTuple):
    """One RunConfig field as the argument parser needs it."""

    name: str
    flag: str
    default: Any
    help: str
    choices: tuple[str, ...] | None
    group: str


def cli_fields() -> list[CliField]:
    """Every RunConfig field, in declaration order, for the argument parser."""
    return [
        CliField(f.name, flag(f.name), f.default, f.metadata["help"], f.metadata.get("choices"), f.metadata["group"])
        for f in fields(RunConfig)
        if f.default is not MISSING
    ]


# str fields whose value may be a number: in TOML `alpha = 0.2` is the natural spelling of `--alpha 0.2`.
_NUMBER_OR_AUTO = ("alpha", "temperature")


def load_config_file(path: Path) -> dict[str, Any]:
    """The RunConfig values in the TOML file `path`: keys at the top level or all in a `[run]` table, snake_case
    or kebab-case, each checked against its field's type. Ranges and choices are RunConfig's to check.
    ConfigError names the file, the bad key and the fix."""
    where = f"--config {path}"
    table = _read_toml(path, where)
    if isinstance(table.get("run"), dict):
        stray = sorted(set(table) - {"run"})
        if stray:
            raise ConfigError(f"{where}: key {stray[0]!r} is outside the [run] table; put every option inside "
                              "[run], or drop the [run] header")
        table = table["run"]
    defaults = {f.name: f.default for f in fields(RunConfig)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in defaults:
            close = difflib.get_close_matches(name, list(defaults), n=3)
            hint = f"did you mean {' or '.join(map(repr, close))}?" if close else f"known keys: {', '.join(defaults)}"
            raise ConfigError(f"{where}: unknown key {key!r}; {hint}")
        if name in values:
            raise ConfigError(f"{where}: {name!r} is set twice (snake_case and kebab-case); keep one")
        values[name] = _typed(name, value, defaults[name], where)
    return values


def _read_toml(path: Path, where: str) -> dict[str, Any]:
    if tomllib is None:
        raise ConfigError(f"{where}: reading TOML needs Python 3.11 or newer (tomllib); on Python 3.10 pass "
                          "the options as command-line flags")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the file: {exc.strerror or exc}") from None
    except ValueError as exc:  # tomllib.TOMLDecodeError, or bytes that are not UTF-8
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None


def _typed(name: str, value: Any, default: Any, where: str) -> Any:
    """`value` as field `name` (default `default`) holds it; ConfigError naming key and expected type otherwise.
    TOML has real types, so unlike a flag nothing is parsed from text: `epochs = "300"` is refused."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)  # TOML true is a Python int
    if isinstance(default, bool):
        ok, expected = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, expected = number and isinstance(value, int), "an integer"
    elif isinstance(default, float):
        ok, expected, value = number, "a number", float(value) if number else value
    elif name in _NUMBER_OR_AUTO:
        ok, expected, value = number or isinstance(value, str), 'a number or "auto"', str(value) if number else value
    else:
        ok, expected = isinstance(value, str), "a string"
    if not ok:
        raise ConfigError(f"{where}: {name} = {value!r} ({type(value).__name__}) must be {expected}")
    return value
