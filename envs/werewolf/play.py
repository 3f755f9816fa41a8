"""``turngym play werewolf --seat 3``: a person plays one seat in the terminal, bots play the rest.

    turngym play werewolf --seat 3 --seed 7
    turngym play werewolf --seat 1 --kwarg preset=lspo7 --kwarg bots=random

``--kwarg`` sets env/rules fields (``preset=arena8``, ``exile_rule=plurality``, ...) and ``bots=rule|random``
(the other seats' policy, default rule). You see exactly your seat's observation; type an action, or the
number of an admissible one. Commands: ``:actions``, ``:quit``. At the end the moderator's full log is shown,
and the seed (only then: the seed rebuilds the deal).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from turngym.errors import TurngymError


def play_terminal(seat: int = 1, seed: int | None = None, config: dict[str, Any] | None = None,
                  read: Callable[[str], str] | None = None, write: Callable[[str], None] | None = None) -> int:
    """Run one game with a person in ``seat``; ``read``/``write`` (default input/print) are replaceable for tests."""
    read = read or (lambda prompt: input(prompt))
    write = write or print
    from turngym.envs.werewolf import parallel_env
    from turngym.envs.werewolf.bots import make_bot

    config = dict(config or {})
    bot = make_bot(str(config.pop("bots", "rule")))
    env = parallel_env(**config)
    if not 1 <= seat <= len(env.possible_agents):
        raise TurngymError(f"--seat {seat} is out of range: this table has seats 1..{len(env.possible_agents)}")
    me = env.possible_agents[seat - 1]
    obs, infos = env.reset(seed=seed)
    rngs = {p: random.Random(f"{env.game.seed}|{p}") for p in env.possible_agents}
    # no seed here: the deal function rebuilds every role from it (it is shown once the game is over)
    write(f"== Werewolf ({env.preset}): you are {me}; bots ({bot.name}) play the other seats ==")
    write("Type an action (or its number). Commands: :actions  :quit\n")
    shown = 0
    while env.agents:
        lines = obs[me].split("\n\nTranscript:\n", 1)
        if shown == 0:
            write(lines[0] + "\n")
        transcript = lines[1].rsplit("\n\n", 1)[0].split("\n") if len(lines) > 1 else []
        for line in transcript[shown:]:
            write(line)
        shown = len(transcript)
        actions: dict[str, str] = {}
        for p in env.game.actors():
            if p != me:
                actions[p] = bot.act(env.game.view(p), infos[p]["admissible_actions"], rngs[p])
                continue
            admissible = infos[me]["admissible_actions"]
            write("\n" + obs[me].rsplit("\n\n", 1)[-1])
            for i, a in enumerate(admissible, 1):
                write(f"  {i:>2}. {a}")
            while True:
                try:
                    typed = read("> ").strip()
                except EOFError:
                    write("")
                    return 0
                if typed in (":quit", ":q"):
                    return 0
                if typed == ":actions":
                    write(" | ".join(admissible))
                    continue
                if typed.isdigit() and 1 <= int(typed) <= len(admissible):
                    typed = admissible[int(typed) - 1]
                break
            actions[me] = typed
        obs, rewards, _terms, _truncs, infos = env.step(actions)
        if me in infos and infos[me]["feedback"]:
            write(f"(moderator to you) {infos[me]['feedback']}")
        if not env.agents:
            lines = obs[me].split("\n\nTranscript:\n", 1)[1].rsplit("\n\n", 1)
            for line in lines[0].split("\n")[shown:]:
                write(line)
            write("\n" + lines[1])
            write(f"[your reward {rewards[me]:g}]")
            write("\n== the moderator's log ==\n" + (env.render() or ""))
            write(f"(replay this deal with --seed {env.game.seed})")
    return 0
