"""Shortest plans for ALFWorld games: the oracle and the progress signal.

ALFWorld's six task types have three goal shapes, read from the PDDL goal
itself (not from the task-type label):

* **place**: some object of type T, optionally clean / hot / cool, in some
  receptacle of type R (pick_and_place, pick_clean/heat/cool_then_place);
* **two**: two distinct objects of type T in one receptacle of type R
  (pick_two_obj_and_place);
* **light**: holding an object of type T while at the receptacle holding a
  switched-on lamp of type L (look_at_obj_in_light).

In alfred.pddl every action costs one step, nothing limits capacity, and an
object not named by the goal only matters while it is in the agent's hand.
So a shortest plan is one of a few stage sequences (drop what you hold, get
the object, use the appliance, put it away / switch on the lamp); the planner
enumerates the choices of object, source, appliance, target and drop place,
expands each into concrete commands (walking and opening only where needed)
and keeps the shortest (first one in sorted order on ties). A goal of any
other shape falls back to breadth-first search over the real commands
(:func:`bfs_plan`), which tests also use to check the planner's optimality.

This module depends on :mod:`turngym.envs.alfworld.game` and :mod:`turngym.envs.alfworld.pddl`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from turngym.envs.alfworld.game import FRIDGE_TYPES, MICROWAVE_TYPES, SINK_TYPES, Game, Scene

_NO_OP = ("look", "inventory", "help", "examine_r", "examine_o")


@dataclass(frozen=True)
class GoalSpec:
    kind: str  # "place" | "two" | "light"
    obj_type: str
    recep_type: str = ""  # place / two
    condition: str = ""  # "", "isclean", "ishot", "iscool" (place)
    lamp_type: str = ""  # light


def goal_spec(goal: Any) -> GoalSpec | None:
    """Recognize one of ALFWorld's goal shapes in a parsed goal formula; None if it is another."""
    atoms: list[tuple[str, tuple[str, ...]]] = []
    negs = 0

    def walk(f: Any) -> None:
        nonlocal negs
        kind = f[0]
        if kind == "and":
            for g in f[1]:
                walk(g)
        elif kind == "exists":
            walk(f[2])
        elif kind == "atom":
            atoms.append((f[1], f[2]))
        elif kind == "not" and f[1][0] == "=":
            negs += 1
        else:
            raise ValueError(kind)

    try:
        walk(goal)
    except (ValueError, IndexError, TypeError):
        return None
    otype = {a[0]: a[1] for p, a in atoms if p == "objecttype" and len(a) == 2}
    rtype = {a[0]: a[1] for p, a in atoms if p == "receptacletype" and len(a) == 2}
    inrec = [(a[0], a[1]) for p, a in atoms if p == "inreceptacle" and len(a) == 2]
    held = [a[1] for p, a in atoms if p == "holds" and len(a) == 2]
    toggled = [a[0] for p, a in atoms if p == "istoggled"]
    conds = {p: a[0] for p, a in atoms if p in ("isclean", "ishot", "iscool")}
    if held and toggled:
        o, lamp = held[0], toggled[0]
        if o in otype and lamp in otype and len(held) == 1 and len(toggled) == 1 and not conds:
            return GoalSpec("light", otype[o], lamp_type=otype[lamp])
        return None
    if held or toggled or not inrec:
        return None
    recs = {r for _, r in inrec}
    if len(recs) != 1 or next(iter(recs)) not in rtype:
        return None
    r = next(iter(recs))
    objs = [o for o, _ in inrec]
    if any(o not in otype for o in objs) or len({otype[o] for o in objs}) != 1:
        return None
    if len(objs) == 1 and negs == 0 and len(conds) <= 1 and all(v == objs[0] for v in conds.values()):
        return GoalSpec("place", otype[objs[0]], rtype[r], next(iter(conds), ""))
    if len(objs) == 2 and negs == 1 and not conds:
        return GoalSpec("two", otype[objs[0]], rtype[r])
    return None


class Planner:
    """Optimal plans for one scene; results are memoized per game state."""

    def __init__(self, scene: Scene):
        self.scene = scene
        self.spec = goal_spec(scene.problem.goal)
        self._memo: dict[Any, tuple[int, list[str]] | None] = {}
        s = scene
        self.loc = {r: locs[0] for r, locs in s.recep_locs.items()}
        if self.spec is not None:
            t = self.spec.obj_type
            self.candidates = sorted(o for o, ts in s.otypes.items() if t in ts and o in s.pickupable)
            self.targets = sorted(r for r in s.receptacles if self.spec.recep_type in s.rtypes[r])
            appliance_types = {"isclean": SINK_TYPES, "ishot": MICROWAVE_TYPES, "iscool": FRIDGE_TYPES}.get(
                self.spec.condition, frozenset())
            self.appliances = sorted(r for r in s.receptacles if s.rtypes[r] & appliance_types)
            self.lamps = sorted(o for o, ts in s.otypes.items() if self.spec.lamp_type in ts and o in s.toggleable)

    # ---- public ---------------------------------------------------------------------------
    def plan(self, game: Game) -> list[str] | None:
        """A shortest command list from the game's current state to the goal (None if unsolvable)."""
        key = game.snapshot()
        if key not in self._memo:
            self._memo[key] = self._plan(game)
            if len(self._memo) > 20000:
                self._memo.clear()
        found = self._memo[key]
        return None if found is None else list(found[1])

    def distance(self, game: Game) -> int | None:
        plan = self.plan(game)
        return None if plan is None else len(plan)

    # ---- the enumeration ----------------------------------------------------------------------
    def _plan(self, game: Game) -> tuple[int, list[str]] | None:
        if game.won():
            return 0, []
        if self.spec is None or len(game.holds) > 1:
            plan = bfs_plan(game)
            return None if plan is None else (len(plan), plan)
        best: list[str] | None = None
        for stages in self._stage_options(game):
            cmds = self._expand(game, stages, limit=None if best is None else len(best))
            if cmds is not None and (best is None or len(cmds) < len(best)):
                best = cmds
        return None if best is None else (len(best), best)

    def _stage_options(self, game: Game):
        spec = self.spec
        held = next(iter(game.holds), None)
        if spec.kind == "place":
            for o in self.candidates:
                targets = [r for r in self.targets if self.scene.can_put(o, r)]
                if not targets:
                    continue
                needs_cond = spec.condition and o not in getattr(game, _COND_ATTR[spec.condition])
                apps = [("apply", spec.condition, o, r) for r in self.appliances] if needs_cond else [None]
                if needs_cond and not self.appliances:
                    continue
                for get in self._gets(game, o, held):
                    # Taking an object out of one receptacle leaves it in any other it was in too
                    # (the real game's facts): if one of those is a target, no put is needed.
                    still_in = set(game.parents.get(o, ())) - {st[2] for st in get}
                    puts = [None] if still_in & set(self.targets) else []
                    puts += [("put", o, r_t) for r_t in targets]
                    for app in apps:
                        for put in puts:
                            tail = [st for st in (app, put) if st is not None]
                            yield from self._with_drop(game, held, o, get + tail)
        elif spec.kind == "two":
            for r_t in self.targets:
                inside = [o for o in self.candidates if o in game.contents.get(r_t, ())]
                need = 2 - len(inside)
                outside = [o for o in self.candidates if o not in inside and self.scene.can_put(o, r_t)]
                if need <= 0:
                    continue
                if need == 1:
                    for o in outside:
                        for get in self._gets(game, o, held):
                            yield from self._with_drop(game, held, o, get + [("put", o, r_t)])
                else:
                    for o1 in outside:
                        for o2 in outside:
                            if o2 == o1:
                                continue
                            for get1 in self._gets(game, o1, held):
                                for get2 in self._gets(game, o2, None):
                                    stages = get1 + [("put", o1, r_t)] + get2 + [("put", o2, r_t)]
                                    yield from self._with_drop(game, held, o1, stages)
        else:  # light
            for o in self.candidates:
                for lamp in self.lamps:
                    for r_l in sorted(game.parents.get(lamp, ())):
                        for get in self._gets(game, o, held):
                            yield from self._with_drop(game, held, o, get + [("light", lamp, r_l)])

    def _gets(self, game: Game, o: str, held: str | None) -> list[list[tuple]]:
        if held == o:
            return [[]]
        return [[("take", o, r)] for r in sorted(game.parents.get(o, ()))]

    def _with_drop(self, game: Game, held: str | None, first_obj: str, stages: list[tuple]):
        if held is None or held == first_obj:
            yield stages
            return
        # Drop what we hold first: at the current location or one the plan visits anyway; elsewhere
        # only if neither has room (a detour elsewhere never beats those, see the module docstring).
        plan_locs = {game.location} | {self.loc[s[-1]] for s in stages}
        near = [r for r in self.scene.receptacles if self.loc[r] in plan_locs and self.scene.can_put(held, r)]
        for r in near or [r for r in self.scene.receptacles if self.scene.can_put(held, r)]:
            yield [("put", held, r)] + stages

    def _expand(self, game: Game, stages: list[tuple], limit: int | None) -> list[str] | None:
        names, s = self.scene.names, self.scene
        loc, opened, toggled = game.location, set(game.opened), game.toggled
        cmds: list[str] = []

        def reach(r: str) -> None:
            nonlocal loc
            if self.loc[r] != loc:
                cmds.append(f"go to {names[r]}")
                loc = self.loc[r]

        def open_(r: str) -> None:
            if r in s.openable and r not in opened:
                cmds.append(f"open {names[r]}")
                opened.add(r)

        for st in stages:
            kind = st[0]
            if kind == "take":
                _, o, r = st
                reach(r)
                open_(r)
                cmds.append(f"take {names[o]} from {names[r]}")
            elif kind == "put":
                _, o, r = st
                reach(r)
                open_(r)
                cmds.append(f"move {names[o]} to {names[r]}")
            elif kind == "apply":
                _, cond, o, r = st
                reach(r)
                cmds.append(f"{_COND_VERB[cond]} {names[o]} with {names[r]}")
            elif kind == "light":
                _, lamp, r = st
                reach(r)
                if lamp not in toggled:
                    cmds.append(f"use {names[lamp]}")
            if limit is not None and len(cmds) >= limit:
                return None
        return cmds


_COND_ATTR = {"isclean": "clean", "ishot": "hot", "iscool": "cool"}
_COND_VERB = {"isclean": "clean", "ishot": "heat", "iscool": "cool"}


def bfs_plan(game: Game, max_states: int = 200_000, max_depth: int | None = None) -> list[str] | None:
    """Breadth-first search over the admissible commands (looks and examines skipped).

    Exact but slow: the fallback for goals of unknown shape and the reference the tests
    check the planner against. Restores the game's state before returning.
    """
    start = game.snapshot()
    try:
        if game.won():
            return []
        parents: dict[Any, tuple[Any, str] | None] = {start: None}
        frontier = deque([(start, 0)])
        while frontier:
            state, depth = frontier.popleft()
            if max_depth is not None and depth >= max_depth:
                continue
            game.restore(state)
            for cmd, action in sorted(game._commands().items()):
                if action[0] in _NO_OP:
                    continue
                game.restore(state)
                game.apply(action)
                nxt = game.snapshot()
                if nxt in parents:
                    continue
                parents[nxt] = (state, cmd)
                if game.won():
                    plan = []
                    node = nxt
                    while parents[node] is not None:
                        node, c = parents[node]
                        plan.append(c)
                    return plan[::-1]
                if len(parents) >= max_states:
                    return None
                frontier.append((nxt, depth + 1))
        return None
    finally:
        game.restore(start)
