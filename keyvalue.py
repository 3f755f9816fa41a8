"""The one parser of command-line ``KEY=VALUE`` values (config overrides, env and engine kwargs).

A value is read as YAML, so numbers, booleans, ``null``, lists and mappings work the same in
``turngym train algo.clip_high=0.28``, ``turngym bench --env-kwarg num_blocks=4`` and
``turngym play --kwarg split=test``; text that is not YAML stays the plain string. Depends on
nothing else of ours (PyYAML is a core dependency), so any layer may import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from turngym.errors import TurngymError


def parse_value(text: str) -> Any:
    """A command-line value as YAML (numbers, booleans, lists, mappings), else the string itself."""
    import yaml

    if text == "":
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def split_pair(pair: str, flag: str, example: str = "KEY=VALUE") -> tuple[str, str]:
    """``"a.b=1"`` -> ``("a.b", "1")``; a pair without ``=`` is an error naming ``flag``."""
    key, sep, raw = pair.partition("=")
    if not sep or not key.strip():
        raise TurngymError(f"{flag} {pair!r} is malformed; write {example}")
    return key.strip(), raw


def parse_key_values(pairs: Sequence[str], flag: str) -> dict[str, Any]:
    """``["split=test", "num_blocks=4"]`` -> ``{"split": "test", "num_blocks": 4}``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, raw = split_pair(pair, flag)
        out[key] = parse_value(raw)
    return out
