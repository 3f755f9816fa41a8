"""ALFWorld tasks: the shipped real games, users' own game files, and a seeded generator.

A task is a dict in the shipped JSON Lines format (see ``data/NOTICE.md``):
``pddl_problem`` (the PDDL problem string) and ``task_desc_templated`` (the
goal sentence the game prints after "Your task is to: ") are required;
``game_id``, ``task_type``, ``pddl_params``, ``human_annotations`` and
``walkthrough`` are kept when present. Any ALFWorld game converted this way
plays unchanged.

* :func:`load_split` reads ``valid_seen`` (ALFWorld's 140 seen-validation
  games) and ``train_sample`` (200 of its training games) from ``data/``.
* :func:`load_game_file` / :func:`load_alfworld_dir` read users' own
  ``game.tw-pddl`` files (e.g. under ``$ALFWORLD_DATA``).
* :func:`generate_task` makes new solvable games from a seed: a new goal on a
  real scene, or a synthetic scene built from the object/receptacle tables
  the shipped games use (which are alfworld's own constants).

This module depends on the other modules of :mod:`turngym.envs.alfworld` and :mod:`turngym.errors`.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import Any

from turngym.envs.alfworld.pddl import parse_problem
from turngym.errors import TaskError

DATA_DIR = Path(__file__).parent / "data"
SPLIT_FILES = {"valid_seen": "valid_seen.jsonl.gz", "train_sample": "train_sample.jsonl.gz"}
TASK_TYPES = ("pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
              "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep", "pick_two_obj_and_place")
TASK_PREFIX = "Your task is to: "


@cache
def load_split(split: str) -> tuple[dict[str, Any], ...]:
    """The shipped games of ``split`` (sorted by game_id)."""
    if split not in SPLIT_FILES:
        raise TaskError(f"unknown ALFWorld data split {split!r}; shipped: {sorted(SPLIT_FILES)}")
    path = DATA_DIR / SPLIT_FILES[split]
    if not path.exists():
        raise TaskError(f"ALFWorld data file {path} is missing; reinstall turngym (it ships in the package data)")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return tuple(json.loads(line) for line in fh if line.strip())


@cache
def domain_text() -> str:
    return (DATA_DIR / "alfred.pddl").read_text()


@cache
def grammar_template() -> str:
    return (DATA_DIR / "grammar.twl2").read_text()


def grammar_for(task_desc: str) -> str:
    """The game's grammar with its task sentence, as every real game.tw-pddl embeds it."""
    return grammar_template().replace("Your task is to: UNKNOWN GOAL.", TASK_PREFIX + task_desc, 1)


def validate_task(task: dict[str, Any]) -> dict[str, Any]:
    """Check a task dict and return a normalized copy; ``TaskError`` names the bad field."""
    if not isinstance(task, dict):
        raise TaskError(f"an ALFWorld task must be a dict, got {type(task).__name__}")
    problem = task.get("pddl_problem")
    if not isinstance(problem, str) or "(define" not in problem:
        raise TaskError("ALFWorld task field 'pddl_problem' must be the PDDL problem string "
                        "(game.tw-pddl's 'pddl_problem'); convert games with turngym.envs.alfworld.tasks.load_game_file")
    desc = task.get("task_desc_templated")
    if not isinstance(desc, str) or not desc.strip():
        raise TaskError("ALFWorld task field 'task_desc_templated' must be the goal sentence, "
                        "e.g. 'put a clean mug in coffeemachine.'")
    parse_problem(problem)  # raises TaskError on malformed PDDL
    out = dict(task)
    walkthrough = out.get("walkthrough")
    if walkthrough is not None and not (isinstance(walkthrough, list) and all(isinstance(c, str) for c in walkthrough)):
        raise TaskError("ALFWorld task field 'walkthrough' must be a list of commands or null")
    return out


# ---- users' own ALFWorld files ------------------------------------------------------------------

def load_game_file(path: str | os.PathLike) -> dict[str, Any]:
    """Convert one ``game.tw-pddl`` (and its ``traj_data.json`` if beside it) into a task dict."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TaskError(f"cannot read ALFWorld game file {path}: {exc}") from exc
    if "pddl_problem" not in data or "grammar" not in data:
        raise TaskError(f"{path} is not an ALFWorld game.tw-pddl file (no 'pddl_problem'/'grammar' keys)")
    match = re.search(r'"rhs":\s*"Your task is to: (.*?)"\s*}', data["grammar"])
    if not match:
        raise TaskError(f"{path}: the grammar has no 'Your task is to: ...' task rule")
    task: dict[str, Any] = {
        "game_id": f"{path.parent.parent.name}/{path.parent.name}",
        "task_desc_templated": match.group(1),
        "pddl_problem": data["pddl_problem"],
        "walkthrough": data.get("walkthrough"),
        "solvable": data.get("solvable", True),
    }
    traj = path.parent / "traj_data.json"
    if traj.exists():
        meta = json.loads(traj.read_text())
        task["task_type"] = meta.get("task_type")
        task["pddl_params"] = meta.get("pddl_params")
        task["human_annotations"] = [a.get("task_desc") for a in meta.get("turk_annotations", {}).get("anns", [])]
    return validate_task(task)


def load_alfworld_dir(root: str | os.PathLike | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Every solvable ``game.tw-pddl`` under ``root`` (default ``$ALFWORLD_DATA``), sorted by path.

    Skips movable/sliced task folders and games marked unsolvable, as ALFWorld does.
    """
    root = root or os.environ.get("ALFWORLD_DATA")
    if not root:
        raise TaskError("no ALFWorld data folder given: pass root=... or set $ALFWORLD_DATA")
    root = Path(os.path.expandvars(str(root)))
    if not root.is_dir():
        raise TaskError(f"ALFWorld data folder {root} does not exist; pass root=... or set $ALFWORLD_DATA "
                        "to the folder holding ALFWorld's json_2.1.1 games")
    out = []
    for path in sorted(root.rglob("game.tw-pddl")):
        if "movable" in str(path.parent) or "Sliced" in str(path.parent):
            continue
        task = load_game_file(path)
        if task.get("solvable") is False:
            continue
        out.append(task)
        if limit is not None and len(out) >= limit:
            break
    return out


# ---- the generator ----------------------------------------------------------------------------

@cache
def _tables() -> dict[str, Any]:
    """Object/receptacle tables read off the shipped games (alfworld's constants, as its games use them)."""
    otype_props: dict[str, set[str]] = defaultdict(set)
    rtype_open: dict[str, bool] = {}
    can: set[tuple[str, str]] = set()
    templates: dict[str, set[str]] = defaultdict(set)
    fixed_homes: dict[str, set[str]] = defaultdict(set)  # lamps: fixtures no canContain fact allows
    scenes = []
    for split in SPLIT_FILES:
        for rec in load_split(split):
            prob = parse_problem(rec["pddl_problem"])
            types_of = {}
            for f in prob.init:
                if f[0] == "objecttype":
                    types_of[f[1]] = f[2]
            rtypes = {f[1]: f[2] for f in prob.init if f[0] == "receptacletype"}
            for f in prob.init:
                if f[0] in ("pickupable", "cleanable", "heatable", "coolable", "toggleable", "sliceable",
                            "isreceptacleobject", "moveable") and f[1] in types_of:
                    otype_props[types_of[f[1]]].add(f[0])
                elif f[0] == "cancontain":
                    can.add((f[1], f[2]))
            toggles = {f[1] for f in prob.init if f[0] == "toggleable"}
            for f in prob.init:
                if f[0] == "inreceptacle" and f[1] in toggles and f[1] in types_of and f[2] in rtypes:
                    fixed_homes[types_of[f[1]]].add(rtypes[f[2]])
            opened = {f[1] for f in prob.init if f[0] == "openable"}
            for r, t in rtypes.items():
                rtype_open[t] = rtype_open.get(t, False) or r in opened
            for t in types_of.values():
                otype_props.setdefault(t, set())
            scenes.append(rec)
            params = rec.get("pddl_params") or {}
            tmpl = _template_of(rec["task_desc_templated"], params)
            if tmpl:
                templates[rec["task_type"]].add(tmpl)
    return {"otype_props": dict(otype_props), "rtype_open": rtype_open, "can": can, "fixed_homes": dict(fixed_homes),
            "templates": {k: sorted(v) for k, v in templates.items()}, "scenes": scenes}


def _template_of(desc: str, params: dict[str, Any]) -> str | None:
    out = desc
    for key, slot in (("object_target", "{obj}"), ("parent_target", "{recep}"), ("toggle_target", "{toggle}")):
        word = (params.get(key) or "").lower()
        if word:
            if word not in out:
                return None
            out = out.replace(word, slot, 1)
    return out


_GOAL_PLACE = """(:goal
     (and
         (exists (?r - receptacle)
             (exists (?o - object)
                 (and
                     {cond}(objectType ?o {otype})
                     (receptacleType ?r {rtype})
                     (inReceptacle ?o ?r)
                 )
             )
         )
     )
)"""
_GOAL_TWO = """(:goal
     (and
         (exists (?r - receptacle)
             (exists (?o1 - object)
                 (and
                     (objectType ?o1 {otype})
                     (receptacleType ?r {rtype})
                     (inReceptacle ?o1 ?r)
                     (exists (?o2 - object)
                         (and
                             (not (= ?o1 ?o2))
                             (objectType ?o2 {otype})
                             (receptacleType ?r {rtype})
                             (inReceptacle ?o2 ?r)
                         )
                     )
                 )
             )
         )
     )
)"""
_GOAL_LIGHT = """(:goal
     (and
         (exists (?ot - object ?r - receptacle ?a - agent ?l - location)
             (and
                 (objectType ?ot {ltype})
                 (toggleable ?ot)
                 (isToggled ?ot)
                 (receptacleAtLocation ?r ?l)
                 (atLocation ?a ?l)
                 (inReceptacle ?ot ?r)
             )
         )
         (exists (?o - object ?a - agent)
             (and
                 (objectType ?o {otype})
                 (holds ?a ?o)
             )
         )
     )
)"""
_CONDITION = {"pick_clean_then_place_in_recep": ("cleanable", "isClean"),
              "pick_heat_then_place_in_recep": ("heatable", "isHot"),
              "pick_cool_then_place_in_recep": ("coolable", "isCool")}


def _with_goal(problem_text: str, goal: str) -> str:
    start = problem_text.index("(:goal")
    return problem_text[:start] + goal + "\n)\n"


def _type_word(t: str) -> str:
    return t.removesuffix("type")


def _sample_goal(problem_text: str, task_type: str, rng: random.Random) -> tuple[str, str, dict] | None:
    """A new (goal-replaced problem, description, params) of ``task_type`` on a scene, or None."""
    tables = _tables()
    prob = parse_problem(problem_text)
    otypes, rtypes, props = {}, {}, defaultdict(set)
    parents = defaultdict(set)
    for f in prob.init:
        if f[0] == "objecttype":
            otypes[f[1]] = f[2]
        elif f[0] == "receptacletype":
            rtypes[f[1]] = f[2]
        elif len(f) == 2:
            props[f[1]].add(f[0])
        elif f[0] == "inreceptacle":
            parents[f[1]].add(f[2])
    can = {(rt, ot) for f in prob.init if f[0] == "cancontain" for rt, ot in [(f[1], f[2])]}
    present_r = sorted(set(rtypes.values()))
    movable = sorted({t for o, t in otypes.items() if "pickupable" in props[o] and parents[o]})
    if task_type == "look_at_obj_in_light":
        lamps = sorted({t for o, t in otypes.items() if "toggleable" in props[o] and parents[o]
                        and t in ("desklamptype", "floorlamptype")})
        if not lamps or not movable:
            return None
        ltype, otype = rng.choice(lamps), rng.choice(movable)
        goal = _GOAL_LIGHT.format(ltype=ltype, otype=otype)
        params = {"object_target": _type_word(otype), "toggle_target": _type_word(ltype), "parent_target": ""}
    else:
        need = _CONDITION.get(task_type)
        if need:
            appliance = {"cleanable": ("sinktype", "sinkbasintype"), "heatable": ("microwavetype",),
                         "coolable": ("fridgetype",)}[need[0]]
            if not set(appliance) & set(present_r):
                return None
            movable = [t for t in movable if any(need[0] in props[o] for o, tt in otypes.items() if tt == t)]
        if task_type == "pick_two_obj_and_place":
            counts = defaultdict(int)
            for o, t in otypes.items():
                if "pickupable" in props[o] and parents[o]:
                    counts[t] += 1
            movable = [t for t in movable if counts[t] >= 2]
        pairs = [(ot, rt) for ot in movable for rt in present_r if (rt, ot) in can]
        if not pairs:
            return None
        otype, rtype = rng.choice(pairs)
        if task_type == "pick_two_obj_and_place":
            goal = _GOAL_TWO.format(otype=otype, rtype=rtype)
        else:
            cond = f"({need[0]} ?o)\n                     ({need[1]} ?o)\n                     " if need else ""
            goal = _GOAL_PLACE.format(cond=cond, otype=otype, rtype=rtype)
        params = {"object_target": _type_word(otype), "parent_target": _type_word(rtype), "toggle_target": ""}
    templates = tables["templates"].get(task_type) or ["{obj} {recep}."]
    desc = rng.choice(templates).format(obj=params["object_target"], recep=params["parent_target"],
                                        toggle=params["toggle_target"])
    params.update({"mrecep_target": "", "object_sliced": False})
    return _with_goal(problem_text, goal), desc, params


def _synthetic_scene(rng: random.Random) -> str:
    """A new PDDL problem: a real room's kinds of receptacles, new counts, positions and objects."""
    tables = _tables()
    base = parse_problem(rng.choice(tables["scenes"])["pddl_problem"])
    rkinds = sorted({f[2] for f in base.init if f[0] == "receptacletype"})
    okinds = sorted({f[2] for f in base.init if f[0] == "objecttype"})
    can = tables["can"]

    def coord() -> str:
        v = rng.uniform(-4, 4)
        return ("_plus_" if v >= 0 else "_minus_") + f"{abs(v):05.2f}".replace(".", "_dot_")

    def mangle(kind: str) -> str:
        return f"{kind}_bar_{coord()}_bar_{coord()}_bar_{coord()}"

    lines_obj, init = ["agent1 - agent"], []
    start = f"loc_bar_{rng.randint(-9, 9)}_bar_{rng.randint(-9, 9)}_bar_{rng.randint(0, 3)}_bar_30"
    init.append(f"(atLocation agent1 {start})")
    receps: list[tuple[str, str, str]] = []  # id, type, location
    locs = {start}
    for rt in rkinds:
        word = _type_word(rt)
        cap = "Sink" if word == "sinkbasin" else word.capitalize()
        for _ in range(rng.randint(1, 3) if rt not in ("fridgetype", "microwavetype", "sinkbasintype") else 1):
            rid = mangle(cap) + ("_bar_SinkBasin" if word == "sinkbasin" else "")
            loc = start
            while loc in locs:
                loc = f"loc_bar_{rng.randint(-12, 12)}_bar_{rng.randint(-12, 12)}_bar_{rng.randint(0, 3)}_bar_{rng.choice([30, 45, 60])}"
            locs.add(loc)
            receps.append((rid, rt, loc))
    for rid, rt, loc in receps:
        lines_obj.append(f"{rid} - receptacle")
        init += [f"(receptacleType {rid} {rt})", f"(receptacleAtLocation {rid} {loc})"]
        if tables["rtype_open"].get(rt):
            init.append(f"(openable {rid})")
    for loc in sorted(locs):
        lines_obj.append(f"{loc} - location")
    for ot in okinds:
        fixed = tables["fixed_homes"].get(ot, ())
        homes = [(rid, loc) for rid, rt, loc in receps if (rt, ot) in can or rt in fixed]
        if not homes:
            continue
        word = _type_word(ot)
        for _ in range(rng.randint(0, 3)):
            oid = mangle(word)
            rid, loc = rng.choice(homes)
            lines_obj.append(f"{oid} - object")
            init += [f"(objectType {oid} {ot})", f"(inReceptacle {oid} {rid})", f"(objectAtLocation {oid} {loc})"]
            for prop in sorted(tables["otype_props"].get(ot, ())):
                init.append(f"({prop} {oid})")
    for rt in rkinds:
        for ot in okinds:
            if (rt, ot) in can:
                init.append(f"(canContain {rt} {ot})")
    lines_obj += [f"{t} - rtype" for t in rkinds] + [f"{t} - otype" for t in okinds]
    name = f"synthetic_{rng.randrange(10**9)}"
    return (f"\n(define (problem {name})\n(:domain alfred)\n(:objects\n" + "\n        ".join(lines_obj)
            + "\n        )\n    (:init\n        " + "\n        ".join(init) + "\n        )\n    (:goal (and))\n    )\n")


def generate_task(seed: int, task_type: str | None = None, synthetic: bool | None = None,
                  min_plan_length: int = 2, max_tries: int = 200) -> dict[str, Any]:
    """A new solvable ALFWorld task from ``seed`` (deterministic).

    Half the seeds (unless ``synthetic`` says) re-sample the goal on a real scene,
    the others build a synthetic scene. Goals already true at the start, shorter
    than ``min_plan_length`` steps, or unsolvable are rejected and redrawn.
    """
    from turngym.envs.alfworld.game import Game, Scene
    from turngym.envs.alfworld.planner import Planner

    if task_type is not None and task_type not in TASK_TYPES:
        raise TaskError(f"unknown ALFWorld task_type {task_type!r}; known: {', '.join(TASK_TYPES)}")
    rng = random.Random(seed)
    tables = _tables()
    for _ in range(max_tries):
        ttype = task_type or rng.choice(TASK_TYPES)
        synth = rng.random() < 0.5 if synthetic is None else synthetic
        base = _synthetic_scene(rng) if synth else rng.choice(tables["scenes"])["pddl_problem"]
        sampled = _sample_goal(base, ttype, rng)
        if sampled is None:
            continue
        problem, desc, params = sampled
        scene = Scene(parse_problem(problem))
        game = Game(scene, desc)
        plan = Planner(scene).plan(game)
        if plan is None or len(plan) < min_plan_length:
            continue
        kind = "synthetic" if synth else "resampled"
        return {"game_id": f"generated/{kind}-{seed}", "split": "generated", "task_type": ttype,
                "task_desc_templated": desc, "pddl_params": params, "human_annotations": [],
                "walkthrough": plan, "pddl_problem": problem}
    raise TaskError(f"could not generate a solvable ALFWorld task of type {task_type!r} from seed {seed} "
                    f"in {max_tries} tries")
