"""The one parser of command-line ``KEY=VALUE`` values (config overrides, env and engine kwargs).

A value is read as YAML, so numbers, booleans, ``null``, lists and mappings work the same in
``turngym train algo.clip_high=0.28``, ``turngym bench --env-kwarg num_blocks=4`` and
``turngym play --kwarg split=test``; text that is not YAML stays the plain string. Two departures
from PyYAML's YAML 1.1, the ones YAML 1.2 made too: a date (``2026-01-05``) stays a string, and
``1e-5`` is a number. Where the wanted type is known (a config field), :func:`parse_as` keeps a
string field's text as typed (``007`` stays ``'007'``). :data:`YamlLoader` reads recipes the same way.
Depends on nothing else of ours (PyYAML is a core dependency), so any layer may import it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import yaml

from turngym.errors import TurngymError


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader without dates (they stay strings) and with ``1e-5`` read as a float."""


YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver(  # YAML 1.2's floats: the dot and the exponent's sign are optional
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_value(text: str) -> Any:
    """A command-line value as YAML (numbers, booleans, lists, mappings), else the string itself."""
    if text == "":
        return ""
    try:
        return yaml.load(text, Loader=YamlLoader)  # YamlLoader is a SafeLoader
    except yaml.YAMLError:
        return text


def parse_as(text: str, typ: Any) -> Any:
    """A command-line value for a field of type ``typ``: a ``str`` field keeps the text as typed
    (``007``, ``2026-01-05``, ``true``; a quoted YAML string loses its quotes), any other type is
    :func:`parse_value`'s (the caller checks it against ``typ``)."""
    if typ is str:
        value = parse_value(text)
        return value if isinstance(value, str) else text
    return parse_value(text)


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
