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
