"""The native ALFWorld engine: alfred.pddl's actions with ALFWorld's text, in pure Python.

The real ALFWorld text game is TextWorld's ``PddlEnv`` (Fast Downward grounds
``alfred.pddl`` on each problem) with ALFWorld's ``AlfredDemangler``, which
names every entity ``"<class> <n>"``, and the grammar ``alfred.twl2``, which
words the feedback. This module plays the same problems with the same
commands, observations and admissible-command lists, without either
dependency. What it reproduces, found by playing the real stack side by side
(``tests/envs/test_alfworld_fidelity.py`` checks it step by step):

* entity names: ids sorted, numbered per class from the count down to 1
  (``"drawer 11"`` ... ``"drawer 1"``), ``"basin"`` appended to sink/bathtub
  basins, exactly as the demangler does;
* lists: sorted by entity id, words joined ``"a, b, and c"`` (``", and "``
  even for two), ``"nothing"`` when empty, every entity with the article
  ``"a"``;
* the admissible commands: every applicable grounded action's command,
  deduplicated and sorted; ``go to X`` is absent when X's location is the
  agent's (Fast Downward drops the no-op move);
* the fact semantics of the real state, including the negated facts that
  action effects leave behind (``look`` lists objects "next to" a receptacle
  from them) and objects that sit in several receptacles at once;
* any command that is not admissible: ``"Nothing happens."`` and no change.

This module depends on :mod:`turngym.envs.alfworld.pddl` and :mod:`turngym.errors` only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from turngym.envs.alfworld.pddl import Problem, holds

NOTHING_HAPPENS = "Nothing happens."
INTRO_BANNER = "-= Welcome to TextWorld, ALFRED! =-"

HELP_TEXT = (
    "Available commands:\n"
    "  look:                             look around your current location\n"
    "  inventory:                        check your current inventory\n"
    "  go to (receptacle):               move to a receptacle\n"
    "  open (receptacle):                open a receptacle\n"
    "  close (receptacle):               close a receptacle\n"
    "  take (object) from (receptacle):  take an object from a receptacle\n"
    "  move (object) to (receptacle):  place an object in or on a receptacle\n"
    "  examine (something):              examine a receptacle or an object\n"
    "  use (object):                     use an object\n"
    "  heat (object) with (receptacle):  heat an object using a receptacle\n"
    "  clean (object) with (receptacle): clean an object using a receptacle\n"
    "  cool (object) with (receptacle):  cool an object using a receptacle\n"
    "  slice (object) with (object):     slice an object using a sharp object\n"
)

SINK_TYPES = frozenset({"sinktype", "sinkbasintype"})
MICROWAVE_TYPES = frozenset({"microwavetype"})
FRIDGE_TYPES = frozenset({"fridgetype"})
KNIFE_TYPES = frozenset({"knifetype", "butterknifetype"})


def demangled_names(entity_ids: Iterable[str]) -> dict[str, str]:
    """ALFWorld's display names: ``"drawer_bar__plus_01_dot_88..."`` -> ``"drawer 3"``.

    Ids are sorted; within a class the first id gets the highest number. An id
    without ``_bar_`` keeps its text and gets no number (with the demangler's
    trailing space).
    """
    ids = sorted(entity_ids)
    count: dict[str, int] = defaultdict(int)
    cls_of: dict[str, str] = {}
    for eid in ids:
        head, sep, _ = eid.partition("_bar_")
        if sep:
            cls = head + ("basin" if "basin" in eid else "")
            cls_of[eid] = cls
            count[cls] += 1
    names = {}
    for eid in ids:
        if eid in cls_of:
            cls = cls_of[eid]
            names[eid] = f"{cls} {count[cls]}"
            count[cls] -= 1
        else:
            text = (eid.replace("_bar_", "|").replace("_minus_", "-").replace("_plus_", "+")
                    .replace("_dot_", ".").replace("_comma_", ","))
            names[eid] = f"{text} "
    return names


def display_list(items: list[str]) -> str:
    """TextWorld's list rendering: ``nothing`` / ``a`` / ``a, b, and c``."""
    if not items:
        return "nothing"
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + ", and " + items[-1]


@dataclass(frozen=True)
class GameState:
    """The dynamic facts of a game, canonical (sorted tuples): equal iff the states are equal."""

    location: str
    holds: tuple[str, ...]
    holds_any: bool
    in_receptacle: tuple[tuple[str, str], ...]
    at_location: tuple[tuple[str, str], ...]
    not_in_receptacle: tuple[tuple[str, str], ...]
    opened: tuple[str, ...]
    clean: tuple[str, ...]
    hot: tuple[str, ...]
    cool: tuple[str, ...]
    toggled: tuple[str, ...]
    sliced: tuple[str, ...]


class Scene:
    """The static part of one problem: entities, names, types, what may go where, the goal."""

    def __init__(self, problem: Problem):
        self.problem = problem
        facts = problem.init
        by_pred: dict[str, list[tuple[str, ...]]] = defaultdict(list)
        entities = set()
        for f in facts:
            by_pred[f[0]].append(f[1:])
            entities.update(f[1:])
        self.names = demangled_names(entities)
        self.static: dict[str, list[tuple[str, ...]]] = {}
        for pred in ("receptacleatlocation", "openable", "isreceptacleobject", "inreceptacleobject",
                     "receptacletype", "cancontain", "objecttype", "cleanable", "heatable", "coolable",
                     "pickupable", "moveable", "toggleable", "sliceable"):
            self.static[pred] = sorted(by_pred.get(pred, []))
        agents = sorted({a for a, _ in by_pred.get("atlocation", [])})
        if len(agents) != 1:
            from turngym.errors import TaskError

            raise TaskError(f"the PDDL problem must place exactly one agent with (atLocation ...), found {agents}")
        self.agent = agents[0]
        self.start_location = min(by_pred["atlocation"])[1]
        self.recep_locs: dict[str, list[str]] = defaultdict(list)
        self.loc_receps: dict[str, list[str]] = defaultdict(list)
        for r, loc in self.static["receptacleatlocation"]:
            self.recep_locs[r].append(loc)
            self.loc_receps[loc].append(r)
        self.receptacles = sorted(self.recep_locs)
        self.openable = {r for (r,) in self.static["openable"]}
        self.pickupable = {o for (o,) in self.static["pickupable"]}
        self.cleanable = {o for (o,) in self.static["cleanable"]}
        self.heatable = {o for (o,) in self.static["heatable"]}
        self.coolable = {o for (o,) in self.static["coolable"]}
        self.toggleable = {o for (o,) in self.static["toggleable"]}
        self.sliceable = {o for (o,) in self.static["sliceable"]}
        self.receptacle_object = {o for (o,) in self.static["isreceptacleobject"]}
        self.inner_objects: dict[str, list[str]] = defaultdict(list)
        for inner, outer in self.static["inreceptacleobject"]:
            if inner != outer:
                self.inner_objects[outer].append(inner)
        self.otypes: dict[str, set[str]] = defaultdict(set)
        for o, t in self.static["objecttype"]:
            self.otypes[o].add(t)
        self.rtypes: dict[str, set[str]] = defaultdict(set)
        for r, t in self.static["receptacletype"]:
            self.rtypes[r].add(t)
        can = defaultdict(set)
        for rt, ot in self.static["cancontain"]:
            can[rt].add(ot)
        self.can_contain = can
        self.knives = {o for o, ts in self.otypes.items() if ts & KNIFE_TYPES}
        # The "go to" commands from each location: every receptacle whose location differs.
        self._goto_cache: dict[str, list[str]] = {}
        self.typed_objects: dict[str, list[str]] = defaultdict(list)
        for name, typ in problem.objects.items():
            self.typed_objects[typ].append(name)
        self.initial = GameState(
            location=self.start_location,
            holds=tuple(sorted(o for _, o in by_pred.get("holds", []))),
            holds_any=bool(by_pred.get("holdsany")),
            in_receptacle=tuple(sorted(by_pred.get("inreceptacle", []))),
            at_location=tuple(sorted(by_pred.get("objectatlocation", []))),
            not_in_receptacle=(),
            opened=tuple(sorted(r for (r,) in by_pred.get("opened", []))),
            clean=tuple(sorted(o for (o,) in by_pred.get("isclean", []))),
            hot=tuple(sorted(o for (o,) in by_pred.get("ishot", []))),
            cool=tuple(sorted(o for (o,) in by_pred.get("iscool", []))),
            toggled=tuple(sorted(o for (o,) in by_pred.get("istoggled", []))),
            sliced=tuple(sorted(o for (o,) in by_pred.get("issliced", []))),
        )

    def can_put(self, obj: str, recep: str) -> bool:
        return any(self.otypes[obj] & self.can_contain[rt] for rt in self.rtypes[recep])

    def goto_commands(self, location: str) -> list[str]:
        cmds = self._goto_cache.get(location)
        if cmds is None:
            cmds = [f"go to {self.names[r]}" for r in self.receptacles
                    if any(loc != location for loc in self.recep_locs[r])]
            self._goto_cache[location] = cmds
        return cmds


class Game:
    """One playable ALFWorld game on a :class:`Scene`: the mutable state, commands and feedback."""

    def __init__(self, scene: Scene, task_desc: str):
        self.scene = scene
        self.task_desc = task_desc
        self.restore(scene.initial)

    # ---- state -------------------------------------------------------------------------------
    def restore(self, state: GameState) -> None:
        self.location = state.location
        self.holds = set(state.holds)
        self.holds_any = state.holds_any
        self.contents: dict[str, set[str]] = defaultdict(set)  # receptacle -> objects in it
        self.parents: dict[str, set[str]] = defaultdict(set)  # object -> receptacles holding it
        for o, r in state.in_receptacle:
            self.contents[r].add(o)
            self.parents[o].add(r)
        self.obj_locs: dict[str, set[str]] = defaultdict(set)
        self.loc_objs: dict[str, set[str]] = defaultdict(set)
        for o, loc in state.at_location:
            self.obj_locs[o].add(loc)
            self.loc_objs[loc].add(o)
        self.not_in = set(state.not_in_receptacle)
        self.opened = set(state.opened)
        self.clean, self.hot, self.cool = set(state.clean), set(state.hot), set(state.cool)
        self.toggled, self.sliced = set(state.toggled), set(state.sliced)
        self._frozen: GameState | None = state
        self._admissible: dict[str, tuple] | None = None
        self._won: bool | None = None

    def snapshot(self) -> GameState:
        if self._frozen is None:
            self._frozen = GameState(
                location=self.location,
                holds=tuple(sorted(self.holds)),
                holds_any=self.holds_any,
                in_receptacle=tuple(sorted((o, r) for r, objs in self.contents.items() for o in objs)),
                at_location=tuple(sorted((o, loc) for o, locs in self.obj_locs.items() for loc in locs)),
                not_in_receptacle=tuple(sorted(self.not_in)),
                opened=tuple(sorted(self.opened)),
                clean=tuple(sorted(self.clean)),
                hot=tuple(sorted(self.hot)),
                cool=tuple(sorted(self.cool)),
                toggled=tuple(sorted(self.toggled)),
                sliced=tuple(sorted(self.sliced)),
            )
        return self._frozen

    def _changed(self) -> None:
        self._frozen = None
        self._admissible = None
        self._won = None

    # ---- facts, for the goal ---------------------------------------------------------------
    def facts(self, pred: str) -> Iterable[tuple[str, ...]]:
        if pred == "inreceptacle":
            return ((o, r) for r, objs in self.contents.items() for o in objs)
        if pred == "atlocation":
            return ((self.scene.agent, self.location),)
        if pred == "holds":
            return ((self.scene.agent, o) for o in self.holds)
        if pred == "holdsany":
            return ((self.scene.agent,),) if self.holds_any else ()
        if pred == "objectatlocation":
            return ((o, loc) for o, locs in self.obj_locs.items() for loc in locs)
        single = {"opened": self.opened, "isclean": self.clean, "ishot": self.hot, "iscool": self.cool,
                  "istoggled": self.toggled, "issliced": self.sliced}.get(pred)
        if single is not None:
            return ((x,) for x in single)
        return self.scene.static.get(pred, ())

    def won(self) -> bool:
        if self._won is None:
            scene = self.scene
            self._won = holds(scene.problem.goal, self.facts, lambda t: scene.typed_objects.get(t, ()))
        return self._won

    # ---- text --------------------------------------------------------------------------------
    def _name(self, eid: str) -> str:
        return self.scene.names[eid]

    def _accessible(self, r: str) -> bool:
        return r not in self.scene.openable or r in self.opened

    def describe_receptacle(self, r: str) -> str:
        name = self._name(r)
        listing = display_list([f"a {self._name(o)}" for o in sorted(self.contents.get(r, ()))])
        if r in self.scene.openable:
            if r in self.opened:
                return f"The {name} is open. In it, you see {listing}."
            return f"The {name} is closed."
        return f"On the {name}, you see {listing}."

    def describe_object(self, o: str) -> str:
        name = self._name(o)
        scene = self.scene
        if o in scene.receptacle_object:
            inner = display_list([f"a {self._name(x)}" for x in sorted(scene.inner_objects.get(o, ()))])
            return f"This is a normal {name}. In it, you see {inner}."
        c, h, k, s = o in self.clean, o in self.hot, o in self.cool, o in self.sliced
        if c and h and s:
            return f"This is a hot and clean sliced {name}."
        if c and k and s:
            return f"This is a cool and clean sliced {name}."
        if c and s:
            return f"This is a clean sliced {name}."
        if h and s:
            return f"This is a hot sliced {name}."
        if k and s:
            return f"This is a cool sliced {name}."
        if c and h:
            return f"This is a hot and clean {name}."
        if c and k:
            return f"This is a cool and clean {name}."
        if h:
            return f"This is a hot {name}."
        if c:
            return f"This is a clean {name}."
        if k:
            return f"This is a cold {name}."
        if o in scene.toggleable and o in self.toggled:
            return f"This {name} is on."
        if o in scene.sliceable and s:
            return f"This is a sliced {name}."
        return f"There's nothing special about {name}."

    def _look(self, intro: bool) -> str:
        here = sorted(self.scene.loc_receps.get(self.location, ()))
        if here:
            floor = [f"a {self._name(o)}" for o in sorted(self.loc_objs.get(self.location, ()))
                     for r in here if (o, r) in self.not_in]
            return (f"You are facing the {display_list([self._name(r) for r in here])}. "
                    f"Next to it, you see {display_list(floor)}.")
        if intro:  # the intro derives look's text with no location bound: every receptacle is listed
            seen = [f"a {self._name(r)}" for r, _ in self.scene.static["receptacleatlocation"]]
        else:
            seen = []
        return f"You are in the middle of a room. Looking quickly around you, you see {display_list(seen)}."

    def intro(self) -> str:
        return f"{INTRO_BANNER}\n\n{self._look(intro=True)}\n\nYour task is to: {self.task_desc}"

    # ---- commands ----------------------------------------------------------------------------
    def _commands(self) -> dict[str, tuple]:
        """command text -> the grounded action it runs (first one wins, as in the real game)."""
        if self._admissible is not None:
            return self._admissible
        scene, loc = self.scene, self.location
        name = scene.names
        cmds: dict[str, tuple] = {}

        def add(text: str, action: tuple) -> None:
            cmds.setdefault(text, action)

        add("look", ("look",))
        add("inventory", ("inventory",))
        add("help", ("help",))
        for r in scene.receptacles:
            for rloc in scene.recep_locs[r]:
                if rloc != loc:
                    add(f"go to {name[r]}", ("goto", r, rloc))
        here = scene.loc_receps.get(loc, ())
        for r in here:
            add(f"examine {name[r]}", ("examine_r", r))
            accessible = self._accessible(r)
            if r in scene.openable:
                if r in self.opened:
                    add(f"close {name[r]}", ("close", r))
                else:
                    add(f"open {name[r]}", ("open", r))
            for o in self.contents.get(r, ()):
                # alfred.pddl also lets you examine an object in an open receptacle, but the real
                # game's grounding never offers it: only held objects can be examined.
                if accessible and not self.holds_any and o in scene.pickupable:
                    add(f"take {name[o]} from {name[r]}", ("take", o, r))
                if o in scene.toggleable:
                    add(f"use {name[o]}", ("toggle", o, r))
            rtypes = scene.rtypes[r]
            for o in self.holds:
                if accessible and scene.can_put(o, r):
                    add(f"move {name[o]} to {name[r]}", ("put", o, r))
                if o in scene.cleanable and rtypes & SINK_TYPES:
                    add(f"clean {name[o]} with {name[r]}", ("clean", o, r))
                if o in scene.heatable and rtypes & MICROWAVE_TYPES:
                    add(f"heat {name[o]} with {name[r]}", ("heat", o, r))
                if o in scene.coolable and rtypes & FRIDGE_TYPES:
                    add(f"cool {name[o]} with {name[r]}", ("cool", o, r))
        for o in self.holds:
            add(f"examine {name[o]}", ("examine_o", o))
            if o in scene.knives:
                for co in self.loc_objs.get(loc, ()):
                    if co in scene.sliceable and co != o:
                        add(f"slice {name[co]} with {name[o]}", ("slice", co, o))
        self._admissible = cmds
        return cmds

    def admissible_commands(self) -> list[str]:
        return sorted(self._commands())

    def step(self, command: str) -> tuple[str, bool]:
        """Run a command; return (feedback, whether it was admissible)."""
        action = self._commands().get(command.strip())
        if action is None:
            return NOTHING_HAPPENS, False
        return self.apply(action), True

    def apply(self, action: tuple) -> str:
        kind = action[0]
        if kind == "look":
            return self._look(intro=False)
        if kind == "inventory":
            if self.holds_any:
                return f"You are carrying: {display_list([f'a {self._name(o)}' for o in sorted(self.holds)])}."
            return "You are not carrying anything."
        if kind == "help":
            return HELP_TEXT
        if kind == "examine_r":
            return self.describe_receptacle(action[1])
        if kind == "examine_o":
            return self.describe_object(action[1])
        self._changed()
        if kind == "goto":
            _, r, loc = action
            self.location = loc
            return f"You arrive at {self._name(r)}. {self.describe_receptacle(r)}"
        if kind == "open":
            self.opened.add(action[1])
            return f"You open the {self._name(action[1])}. {self.describe_receptacle(action[1])}"
        if kind == "close":
            self.opened.discard(action[1])
            return f"You close the {self._name(action[1])}."
        if kind == "take":
            _, o, r = action
            self.contents[r].discard(o)
            self.parents[o].discard(r)
            self.not_in.add((o, r))
            self.holds.add(o)
            self.holds_any = True
            self.obj_locs[o].discard(self.location)
            self.loc_objs[self.location].discard(o)
            return f"You pick up the {self._name(o)} from the {self._name(r)}."
        if kind == "put":
            _, o, r = action
            self.contents[r].add(o)
            self.parents[o].add(r)
            self.not_in.discard((o, r))
            self.obj_locs[o].add(self.location)
            self.loc_objs[self.location].add(o)
            self.holds.discard(o)
            self.holds_any = False
            return f"You move the {self._name(o)} to the {self._name(r)}."
        if kind == "clean":
            self.clean.add(action[1])
            return f"You clean the {self._name(action[1])} using the {self._name(action[2])}."
        if kind == "heat":
            self.hot.add(action[1])
            self.cool.discard(action[1])
            return f"You heat the {self._name(action[1])} using the {self._name(action[2])}."
        if kind == "cool":
            self.cool.add(action[1])
            self.hot.discard(action[1])
            return f"You cool the {self._name(action[1])} using the {self._name(action[2])}."
        if kind == "toggle":
            self.toggled.add(action[1])
            return f"You turn on the {self._name(action[1])}."
        if kind == "slice":
            self.sliced.add(action[1])
            return f"You sliced the {self._name(action[1])} with the {self._name(action[2])}."
        raise ValueError(f"unknown action {action!r}")
