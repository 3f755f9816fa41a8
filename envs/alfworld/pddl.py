"""A small reader for ALFWorld's PDDL problems: objects, initial facts and the goal formula.

ALFWorld games are PDDL problems of the ``alfred`` domain (``data/alfred.pddl``).
This module turns one problem string into plain Python data: typed objects,
the initial facts as tuples (``("inreceptacle", obj, recep)``) and the goal as
a small formula tree that :func:`holds` evaluates against any fact source.
Names are lower-cased, as Fast Downward (the real game's planner) reads them.

It depends on nothing of ours but :mod:`turngym.errors`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from turngym.errors import TaskError

_TOKEN = re.compile(r"\(|\)|[^\s()]+")


def parse_sexpr(text: str) -> list[Any]:
    """Parse PDDL text (``;`` comments allowed) into nested lists of lower-cased atoms."""
    text = re.sub(r";[^\n]*", "", text)
    stack: list[list[Any]] = [[]]
    for tok in _TOKEN.findall(text):
        if tok == "(":
            stack.append([])
        elif tok == ")":
            if len(stack) == 1:
                raise TaskError("PDDL problem has an unbalanced ')'; check the 'pddl_problem' text")
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok.lower())
    if len(stack) != 1:
        raise TaskError("PDDL problem has an unclosed '('; check the 'pddl_problem' text")
    return stack[0]


@dataclass(frozen=True)
class Problem:
    """One parsed PDDL problem."""

    name: str
    objects: dict[str, str]  # name -> type
    init: tuple[tuple[str, ...], ...]
    goal: Any  # formula tree, see :func:`holds`


def parse_problem(text: str) -> Problem:
    """Read a ``(define (problem ...) ...)`` string; raise ``TaskError`` naming what is missing."""
    if not isinstance(text, str) or "(define" not in text:
        raise TaskError("'pddl_problem' must be a PDDL problem string starting with '(define (problem ...)'")
    tree = parse_sexpr(text)
    define = next((t for t in tree if isinstance(t, list) and t and t[0] == "define"), None)
    if define is None:
        raise TaskError("'pddl_problem' has no (define ...) form")
    name, objects, init, goal = "", {}, None, None
    for part in define[1:]:
        if not isinstance(part, list) or not part:
            continue
        head = part[0]
        if head == "problem":
            name = part[1] if len(part) > 1 else ""
        elif head == ":objects":
            objects.update(_typed_list(part[1:]))
        elif head == ":init":
            init = tuple(tuple(f) for f in part[1:] if isinstance(f, list) and f and f[0] != "="
                         and all(isinstance(a, str) for a in f))
        elif head == ":goal":
            goal = _formula(part[1])
    if init is None:
        raise TaskError("'pddl_problem' has no (:init ...) section")
    if goal is None:
        raise TaskError("'pddl_problem' has no (:goal ...) section")
    return Problem(name=name, objects=objects, init=init, goal=goal)


def _typed_list(items: list[Any]) -> dict[str, str]:
    out, pending, i = {}, [], 0
    while i < len(items):
        tok = items[i]
        if tok == "-" and i + 1 < len(items):
            for n in pending:
                out[n] = items[i + 1]
            pending, i = [], i + 2
            continue
        pending.append(tok)
        i += 1
    for n in pending:
        out[n] = "object"
    return out


def _formula(node: Any) -> Any:
    """Normalize a goal s-expression: ('and', [..]), ('or', [..]), ('not', f),
    ('exists'|'forall', [(var, type)], f), ('=', a, b), ('atom', pred, args)."""
    if not isinstance(node, list) or not node:
        raise TaskError(f"malformed goal formula near {node!r} in 'pddl_problem'")
    head = node[0]
    if head == "and":
        return ("and", [_formula(n) for n in node[1:]])
    if head == "or":
        return ("or", [_formula(n) for n in node[1:]])
    if head == "not":
        return ("not", _formula(node[1]))
    if head in ("exists", "forall"):
        params = _typed_list([t for t in node[1] if isinstance(t, str)])
        return (head, [(v, t) for v, t in params.items()], _formula(node[2]))
    if head == "=":
        return ("=", node[1], node[2])
    return ("atom", head, tuple(node[1:]))


#: facts(pred) -> iterable of argument tuples currently true.
FactSource = Callable[[str], Iterable[tuple[str, ...]]]


def holds(formula: Any, facts: FactSource, objects_of_type: Callable[[str], Iterable[str]],
          binding: dict[str, str] | None = None) -> bool:
    """Evaluate a goal formula. Existentials are solved by backtracking over the facts
    that bind their variables (the cheap way for ALFWorld's conjunctive goals)."""
    return _solve([formula], dict(binding or {}), facts, objects_of_type)


def _value(arg: str, binding: dict[str, str]) -> str | None:
    return binding.get(arg) if arg.startswith("?") else arg


def _solve(todo: list[Any], binding: dict[str, str], facts: FactSource, types: Callable) -> bool:
    if not todo:
        return True
    # Flatten and/exists into the agenda; pick the most constrained atom first.
    for i, f in enumerate(todo):
        kind = f[0]
        if kind == "and":
            return _solve(todo[:i] + list(f[1]) + todo[i + 1:], binding, facts, types)
        if kind == "exists":
            return _solve(todo[:i] + [("bindvars", f[1]), f[2]] + todo[i + 1:], binding, facts, types)
    best, best_unbound = None, None
    for i, f in enumerate(todo):
        if f[0] == "atom":
            unbound = sum(1 for a in f[2] if a.startswith("?") and a not in binding)
            if best is None or unbound < best_unbound:
                best, best_unbound = i, unbound
    if best is not None:
        _, pred, args = todo[best]
        rest = todo[:best] + todo[best + 1:]
        for fact in facts(pred):
            if len(fact) != len(args):
                continue
            new = dict(binding)
            for a, v in zip(args, fact):
                if a.startswith("?"):
                    if new.setdefault(a, v) != v:
                        break
                elif a != v:
                    break
            else:
                if _solve(rest, new, facts, types):
                    return True
        return False
    # No positive atom left: bind what is still free by type, then check the rest.
    for i, f in enumerate(todo):
        if f[0] == "bindvars":
            free = [(v, t) for v, t in f[1] if v not in binding]
            rest = todo[:i] + todo[i + 1:]
            if not free:
                return _solve(rest, binding, facts, types)
            var, typ = free[0]
            remaining = [("bindvars", free[1:])] if len(free) > 1 else []
            return any(_solve(remaining + rest, {**binding, var: obj}, facts, types) for obj in types(typ))
    f, rest = todo[0], todo[1:]
    kind = f[0]
    if kind == "=":
        ok = _value(f[1], binding) == _value(f[2], binding)
    elif kind == "not":
        ok = not _solve([f[1]], dict(binding), facts, types)
    elif kind == "or":
        ok = any(_solve([g], dict(binding), facts, types) for g in f[1])
    elif kind == "forall":
        ok = _forall(f[1], f[2], binding, facts, types)
    else:
        raise TaskError(f"unsupported goal construct {kind!r} in 'pddl_problem'")
    return ok and _solve(rest, binding, facts, types)


def _forall(params: list[tuple[str, str]], body: Any, binding: dict[str, str], facts: FactSource, types) -> bool:
    if not params:
        return _solve([body], dict(binding), facts, types)
    (var, typ), more = params[0], params[1:]
    return all(_forall(more, body, {**binding, var: obj}, facts, types) for obj in types(typ))
