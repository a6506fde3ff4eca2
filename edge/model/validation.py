"""One way to read and validate a file the agent trusts: its config, the model card, the detector checkpoint.

`read_json` and `read_toml` turn every way a file can fail to parse into one error naming the file. `check`
runs a voluptuous schema (the library Home Assistant and ESPHome validate their configs with) made of the
validators below and turns its first complaint into one line naming the file, the key, what was expected and
what was found: `edge.toml: mqtt.port: expected a TCP port between 1 and 65535, got 70000`.

A missing key is absent from what `check` returns, so the dataclass built from it keeps its own default:
every default is written once, on the dataclass field.
"""
from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import voluptuous as vol

Validator = Callable[[Any], Any]
Optional = vol.Optional
MISSING = "missing"
SECTION_MISSING = "required section is missing"  # shown as `[name]`, the way TOML writes a table
SHOWN_MAX = 200  # characters of a wrong value that an error quotes


def read_json(path: Path, what: str, error: type[Exception]) -> Any:
    return _read(path, what, error, json.loads, "JSON")


def read_toml(path: Path, what: str, error: type[Exception]) -> Any:
    return _read(path, what, error, tomllib.loads, "TOML")


def _read(path: Path, what: str, error: type[Exception], parse: Callable[[str], Any], language: str) -> Any:
    try:
        return parse(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: missing: expected {what} here") from None
    except OSError as problem:  # a directory, no permission, an I/O error
        raise error(f"{path}: cannot read {what}: {problem.strerror}") from None
    except UnicodeDecodeError as problem:
        raise error(f"{path}: not UTF-8 text (byte {problem.object[problem.start]:#04x} at offset {problem.start}): "
                    f"save {what} as UTF-8") from None
    except json.JSONDecodeError as problem:
        raise error(f"{path}:{problem.lineno}: not valid JSON: {problem.msg}") from None
    except tomllib.TOMLDecodeError as problem:
        raise error(f"{path}: not valid TOML: {problem}") from None
    except ValueError as problem:  # e.g. an integer of more than 4300 digits, which Python refuses to convert
        raise error(f"{path}: not valid {language}: {problem}") from None
    except RecursionError:  # both parsers recurse once per level: `[[[[...` a million deep is no document
        raise error(f"{path}: not valid {language}: nested too deeply (beyond Python's recursion limit)") from None


def check(schema: Validator, data: Any, source: object, error: type[Exception]) -> Any:
    """`data` validated by `schema`; the first problem becomes `error` naming `source` and the key."""
    try:
        return schema(data)
    except vol.MultipleInvalid as invalid:
        raise error(describe(source, invalid.errors[0])) from None
    except vol.Invalid as invalid:
        raise error(describe(source, invalid)) from None


def describe(source: object, invalid: vol.Invalid) -> str:
    label = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in invalid.path).lstrip(".")
    if invalid.msg == SECTION_MISSING:
        label = f"[{label}]"
    return f"{source}: {label or '(top level)'}: {invalid.msg}"


def required(key: str, section: bool = False) -> vol.Required:
    return vol.Required(key, msg=SECTION_MISSING if section else MISSING)


def expected(what: str, value: Any) -> vol.Invalid:
    shown = repr(value)
    if len(shown) > SHOWN_MAX:  # a corrupt file's megabyte list would flood the log and the health topic
        size = f" of {len(value)}" if isinstance(value, list | dict | str) else ""
        shown = f"{shown[:SHOWN_MAX]}... ({type(value).__name__}{size})"
    return vol.Invalid(f"expected {what}, got {shown}")


def table(fields: dict[Any, Any], name: str = "", kind: str = "a table", extra: bool = False) -> Validator:
    """A mapping with the keys `fields` names. Any other key is an error suggesting the closest known one,
    because a typo that silently falls back to a default is a bug in the field; `extra` lets them through
    (a model card from a newer trainer may carry more than this agent reads)."""
    known = sorted(str(getattr(key, "schema", key)) for key in fields)
    prefix = f"{name}." if name else ""
    schema = vol.Schema(fields, extra=vol.ALLOW_EXTRA if extra else vol.PREVENT_EXTRA)

    def validate(value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise expected(kind, value)
        unknown = [] if extra else [key for key in value if key not in known]
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), known, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f"; known keys: {', '.join(known)}"
            raise vol.Invalid(f"unknown key{hint}", path=[unknown[0]])
        return schema(dict(value))

    return validate


def integer(minimum: int | None = None, maximum: int | None = None, what: str | None = None) -> Validator:
    def validate(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise expected("an integer", value)
        if minimum is not None and value < minimum:
            raise expected(what or ("a positive integer" if minimum == 1 else f"an integer >= {minimum}"), value)
        if maximum is not None and value > maximum:
            raise expected(what or f"an integer from {minimum} to {maximum}", value)
        return value
    return validate


def number(minimum: float | None = None, positive: bool = False, what: str | None = None) -> Validator:
    """A finite number as a float: an infinite threshold or interval would switch a check off silently."""
    def validate(value: Any) -> float:
        if not _finite(value):
            raise expected("a finite number", value)
        if (positive and value <= 0) or (minimum is not None and value < minimum):
            raise expected(what or ("a positive number" if positive else f"a number >= {minimum}"), value)
        return float(value)
    return validate


def numbers(count: int, what: str, positive: bool = False) -> Validator:
    """A list of `count` finite numbers (positive ones if asked) as a tuple of floats."""
    def validate(value: Any) -> tuple[float, ...]:
        ok = isinstance(value, list) and len(value) == count and all(_finite(v) and (v > 0 or not positive) for v in value)
        if not ok:
            raise expected(what, value)
        return tuple(float(v) for v in value)
    return validate


def _finite(value: Any) -> bool:
    """A number that is a float's: not true/false, not inf or NaN, and no integer too long for a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # 10**400 is valid JSON and TOML
        return False


def text(what: str = "a non-empty string") -> Validator:
    """A string that says something: an empty path, port or id is never what was meant."""
    def validate(value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise expected(what, value)
        return value
    return validate


def names(what: str = "a non-empty list of names", most: int | None = None) -> Validator:
    def validate(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise expected(what, value)
        if most is not None and len(value) > most:
            raise vol.Invalid(f"expected at most {most} names, got {len(value)}")
        return tuple(value)
    return validate


def matching(pattern: re.Pattern[str], what: str) -> Validator:
    def validate(value: Any) -> str:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise expected(what, value)
        return value
    return validate


def one_of(choices: Collection[str]) -> Validator:
    def validate(value: Any) -> Any:
        if not isinstance(value, str) or value not in choices:
            raise expected("one of " + ", ".join(choices), value)
        return value
    return validate


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise expected("true or false", value)
    return value


def nullable(validator: Validator) -> Validator:
    """JSON null, or what `validator` accepts (keys a newer writer added, null in older files)."""
    return lambda value: None if value is None else validator(value)


def refused(why: str) -> Validator:
    """A key that must not be there, and why."""
    def validate(value: Any) -> Any:
        raise vol.Invalid(why)
    return validate


def converted(build: Callable[[Any], Any], what: str) -> Validator:
    """`build(value)`, with any error it raises on a bad value saying what was expected."""
    def validate(value: Any) -> Any:
        try:
            return build(value)
        except (KeyError, TypeError, ValueError):
            raise expected(what, value) from None
    return validate


def relative_path(base: Path) -> Validator:
    """A path; a relative one is taken relative to `base` (the config's folder, so the two travel together)."""
    def validate(value: Any) -> Path:
        path = Path(text()(value)).expanduser()
        return path if path.is_absolute() else base / path
    return validate


def existing_file(base: Path) -> Validator:
    """The path of an existing file, as a string (relative to `base`)."""
    def validate(value: Any) -> str:
        path = relative_path(base)(value)
        if not path.is_file():
            raise expected("an existing readable file", str(path))
        return str(path)
    return validate
