"""Few-shot exemplars per env, kept as data so every agent format can render them.

An exemplar is a task (a custom task dict for ``reset(options={"task": ...})``)
and the (thought, action) pairs of a solution. The observations are not
written here: :func:`exemplars_for` replays the actions in the real env, so
the exemplars always show the env's exact current wording and can never
teach a move the env would reject (a test checks that each one wins).

Exemplar tasks are custom puzzles (Game24: from the train split, never
test; BlocksWorld: hand-made), so few-shot prompting does not leak test
answers.

An env without exemplars gets none (the agent's format instructions alone).
This module depends on :mod:`turngym.envs` only (lazily, to replay).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class ExemplarStep:
    thought: str
    action: str
    observation: str = ""


@dataclass(frozen=True)
class Exemplar:
    """A solved episode: the problem as the env states it (without the instruction) and its steps."""

    problem: str
    steps: tuple[ExemplarStep, ...]


#: Env family (the id without namespace and version) -> exemplar tasks and their solutions.
_SOURCES: dict[str, list[tuple[dict, list[tuple[str, str]]]]] = {
    "Game24": [
        ({"numbers": [4, 5, 11, 12]}, [
            ("12 * 2 = 24, so I need a 2 from 4, 5 and 11. 4 + 5 = 9 and 11 - 9 = 2.", "4 + 5 = 9 (left: 9 11 12)"),
            ("Now 11 - 9 = 2, and then 2 * 12 = 24.", "11 - 9 = 2 (left: 2 12)"),
            ("2 * 12 = 24 uses the last two numbers.", "2 * 12 = 24 (left: 24)"),
        ]),
        ({"numbers": [2, 8, 8, 13]}, [
            ("3 * 8 = 24, so I need a 3 from 2, 8 and 13. 2 + 8 = 10 and 13 - 10 = 3.", "2 + 8 = 10 (left: 8 10 13)"),
            ("13 - 10 = 3 leaves 3 and 8.", "13 - 10 = 3 (left: 3 8)"),
            ("3 * 8 = 24.", "3 * 8 = 24 (left: 24)"),
        ]),
    ],
    "BlocksWorld": [
        ({"init": [["orange", "red"], ["blue"]], "goal": [["orange", "red"]]}, [
            (("The orange block must go on top of the red block, but the red block is on top of the orange block. "
              "First I take the red block off."), "unstack the red block from on top of the orange block"),
            ("I am holding the red block. I put it down on the table.", "put down the red block"),
            ("The orange block is clear and on the table, and my hand is empty. I pick it up.",
             "pick up the orange block"),
            ("The red block is clear. I stack the orange block on it, which reaches the goal.",
             "stack the orange block on top of the red block"),
        ]),
    ],
    # A train-split bridge question (train entities only) over the synthetic corpus; the env's own
    # protocol tags are the actions.
    "Search": [
        ({"question": "In which city was the founder of the Vethquith Works born?", "answers": ["Drevstys"],
          "supporting": ["company-38", "person-136"], "oracle_queries": ["Vethquith Works", "Grarksteind Quirkga"]}, [
            ("I need the founder of the Vethquith Works first, then where that person was born.",
             "<search> Vethquith Works </search>"),
            ("The Vethquith Works was founded by Grarksteind Quirkga. Now I look up Grarksteind Quirkga.",
             "<search> Grarksteind Quirkga </search>"),
            ("Grarksteind Quirkga was born in Drevstys, so that is the answer.", "<answer> Drevstys </answer>"),
        ]),
    ],
    # A hand-made kitchen (not an ALFWorld eval game) in the env's task format; ReAct-style thoughts.
    "ALFWorld": [
        ({"task_desc_templated": "put a clean mug in coffeemachine.", "pddl_problem": """(define (problem exemplar)
(:domain alfred)
(:objects agent1 - agent Mug_bar_1 Bread_bar_1 - object
 CounterTop_bar_1 Sink_bar_1_bar_SinkBasin Fridge_bar_1 CoffeeMachine_bar_1 - receptacle
 loc_bar_0 loc_bar_1 loc_bar_2 loc_bar_3 loc_bar_4 - location MugType BreadType - otype
 CounterTopType SinkBasinType FridgeType CoffeeMachineType - rtype)
(:init (atLocation agent1 loc_bar_0)
 (receptacleType CounterTop_bar_1 CounterTopType) (receptacleAtLocation CounterTop_bar_1 loc_bar_1)
 (receptacleType Sink_bar_1_bar_SinkBasin SinkBasinType) (receptacleAtLocation Sink_bar_1_bar_SinkBasin loc_bar_2)
 (receptacleType Fridge_bar_1 FridgeType) (receptacleAtLocation Fridge_bar_1 loc_bar_3) (openable Fridge_bar_1)
 (receptacleType CoffeeMachine_bar_1 CoffeeMachineType) (receptacleAtLocation CoffeeMachine_bar_1 loc_bar_4)
 (objectType Mug_bar_1 MugType) (inReceptacle Mug_bar_1 CounterTop_bar_1) (objectAtLocation Mug_bar_1 loc_bar_1)
 (pickupable Mug_bar_1) (cleanable Mug_bar_1) (isReceptacleObject Mug_bar_1)
 (objectType Bread_bar_1 BreadType) (inReceptacle Bread_bar_1 CounterTop_bar_1) (pickupable Bread_bar_1)
 (objectAtLocation Bread_bar_1 loc_bar_1) (canContain CounterTopType MugType) (canContain CounterTopType BreadType)
 (canContain SinkBasinType MugType) (canContain FridgeType MugType) (canContain CoffeeMachineType MugType))
(:goal (exists (?r - receptacle ?o - object) (and (objectType ?o MugType) (receptacleType ?r CoffeeMachineType)
 (cleanable ?o) (isClean ?o) (inReceptacle ?o ?r)))))"""}, [
            (("To solve the task, I need to find a mug, clean it with the sinkbasin, then put it in the "
              "coffeemachine. A mug is likely on a countertop."), "go to countertop 1"),
            ("There is a mug 1 here. I take it.", "take mug 1 from countertop 1"),
            ("Now I clean the mug 1 at the sinkbasin 1.", "go to sinkbasin 1"),
            ("I am at the sinkbasin 1, holding the mug 1.", "clean mug 1 with sinkbasin 1"),
            ("The mug 1 is clean. Next, I put it in the coffeemachine 1.", "go to coffeemachine 1"),
            ("I am at the coffeemachine 1.", "move mug 1 to coffeemachine 1"),
        ]),
    ],
}


def env_family(env_id: str | None) -> str:
    """``"turngym/Game24-v0"`` -> ``"Game24"``."""
    if not env_id:
        return ""
    name = env_id.split(":")[-1].split("/")[-1]
    return name.rsplit("-v", 1)[0] if "-v" in name else name


@cache
def exemplars_for(env_id: str | None) -> tuple[Exemplar, ...]:
    """The exemplars of ``env_id``'s family, replayed in the env (empty if it has none)."""
    sources = _SOURCES.get(env_family(env_id))
    if not sources or env_id is None:
        return ()
    import turngym

    out = []
    env = turngym.make(env_id)
    try:
        for task, solution in sources:
            obs, info = env.reset(options={"task": task})
            problem = obs
            instruction = info.get("instruction", "")
            if instruction and problem.startswith(instruction):
                problem = problem[len(instruction):].strip()
            steps = []
            for thought, action in solution:
                obs, _, terminated, truncated, info = env.step(action)
                if not info.get("action_valid", True):
                    raise AssertionError(f"exemplar action {action!r} of {env_id} is invalid: {obs}")
                steps.append(ExemplarStep(thought, action, obs))
                if terminated or truncated:
                    break
            if not info.get("won"):
                raise AssertionError(f"an exemplar of {env_id} does not win its task {task}")
            out.append(Exemplar(problem, tuple(steps)))
    finally:
        env.close()
    return tuple(out)
