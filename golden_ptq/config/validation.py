"""Typed checks for values read from user files (yaml, json): one-line errors that name the culprit.

Every check takes ``where`` (e.g. ``"configs/x.yaml: PTQConfig.group_size"``) and raises
:class:`ConfigError` naming it, the bad value and what is allowed. Booleans are never read from
strings or numbers (``"false"`` is truthy in Python), and integers are never read from booleans.
"""
from __future__ import annotations

import difflib
import numbers
import os
from typing import Any, Iterable, List, Optional

import yaml


class ConfigError(ValueError):
    """A configuration value or file is not acceptable."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for a near miss among ``known``, else ``""``."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_known_keys(keys: Iterable[str], known: Iterable[str], where: str, what: str = "key") -> None:
    """Every key must be one of ``known``; the first unknown one is named, with a near miss suggested."""
    known = list(known)
    for key in keys:
        if key not in known:
            raise ConfigError(f"{where}: unknown {what} {key!r}{did_you_mean(key, known)}; known: {sorted(known)}")


def check_bool(value: Any, where: str, optional: bool = False) -> Optional[bool]:
    """True/False only (yaml ``true``/``false``); None too when ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    allowed = "true, false or null" if optional else "true or false"
    raise ConfigError(f"{where}: {value!r} ({type(value).__name__}) is not a boolean; allowed: {allowed}")


def check_int(value: Any, where: str, minimum: Optional[int] = None, maximum: Optional[int] = None,
              optional: bool = False) -> Optional[int]:
    """An integer (not a bool, not a float, not a string) within ``[minimum, maximum]``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{where}: {value!r} ({type(value).__name__}) is not an integer; allowed: "
                          f"{_range_text(minimum, maximum, 'integer')}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(f"{where}: {value} is out of range; allowed: {_range_text(minimum, maximum, 'integer')}")
    return value


def check_float(value: Any, where: str, minimum: Optional[float] = None, maximum: Optional[float] = None,
                strict_minimum: bool = False, optional: bool = False) -> Optional[float]:
    """A finite real number (int or float, not a bool or string) within the bounds."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value or abs(value) == float("inf"):
        raise ConfigError(f"{where}: {value!r} ({type(value).__name__}) is not a finite number; allowed: "
                          f"{_range_text(minimum, maximum, 'number', strict_minimum)}")
    value = float(value)
    low = minimum is not None and (value <= minimum if strict_minimum else value < minimum)
    if low or (maximum is not None and value > maximum):
        raise ConfigError(f"{where}: {value:g} is out of range; allowed: "
                          f"{_range_text(minimum, maximum, 'number', strict_minimum)}")
    return value


def check_str(value: Any, where: str, choices: Optional[Iterable[str]] = None, optional: bool = False) -> Optional[str]:
    if value is None and optional:
        return None
    choices = None if choices is None else list(choices)
    if not isinstance(value, str) or not value:
        allowed = f"one of {choices}" if choices else "a non-empty string"
        raise ConfigError(f"{where}: {value!r} ({type(value).__name__}) is not a string; allowed: {allowed}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: {value!r} is not allowed{did_you_mean(value, choices)}; allowed: {choices}")
    return value


def check_str_list(value: Any, where: str) -> List[str]:
    """A list of non-empty strings; one string counts as a list of one; None as empty."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: {value!r} ({type(value).__name__}) is not a list; allowed: a list of "
                          f"non-empty strings")
    for item in value:
        if not isinstance(item, str) or not item:
            raise ConfigError(f"{where}: entry {item!r} ({type(item).__name__}) is not allowed; entries must be "
                              f"non-empty strings")
    return list(value)


def check_mapping(value: Any, where: str, optional: bool = True) -> dict:
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {value!r} ({type(value).__name__}) is not a mapping of key: value")
    return dict(value)


def load_yaml_mapping(path: str, what: str) -> dict:
    """The top-level mapping of the yaml file ``path``; any unreadable content is a ConfigError naming it.

    An empty file is an empty mapping. ``what`` says what the file should hold ("a PTQConfig").
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: {what} yaml file does not exist")
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text (UTF-8) yaml file: byte {err.start} is 0x{raw[err.start]:02x}; "
                          f"expected {what} yaml") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid yaml{at}: {problem}; expected {what} yaml") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {what} yaml must be a mapping of key: value, got a {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{path}: key {bad[0]!r} is not a string; {what} yaml keys are names")
    return data


def _range_text(minimum, maximum, kind: str, strict_minimum: bool = False) -> str:
    minimum, maximum = (v if v is None or not isinstance(v, float) else f"{v:g}" for v in (minimum, maximum))
    if minimum is not None and maximum is not None:
        return f"{kind} in {'(' if strict_minimum else '['}{minimum}, {maximum}]"
    if minimum is not None:
        return f"{kind} {'>' if strict_minimum else '>='} {minimum}"
    if maximum is not None:
        return f"{kind} <= {maximum}"
    return kind
