"""turngym's environments and their registry.

Importing this package registers every turngym env with Gymnasium under the
``turngym/`` namespace. A contributor adds an env with one folder under
``envs/`` (env, tasks, oracle, README, and the JSON files agents read:
``exemplars.json``, ``tools.json``) and one :func:`register` call below; the
registry-parametrized tests then check it with no test boilerplate (the
README's "Adding an environment" is the whole checklist). Agents find an
env's exemplars and tool schemas through its id: :func:`env_exemplars`,
:func:`env_tool_specs`.

This package depends on nothing else of ours (but ``turngym.errors``).
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from turngym.envs.core import TextEnv
from turngym.errors import UnknownEnvError

NAMESPACE = "turngym"


@dataclass(frozen=True)
class EnvEntry:
    """What turngym knows of a registered env beyond Gymnasium's spec."""

    id: str
    description: str
    kind: str = "gymnasium"  # or "pettingzoo", or "remote" (a Gymnasium env that needs a server: turngym.envs.remote)


_ENTRIES: dict[str, EnvEntry] = {}
_ENTRY_POINTS: dict[str, str] = {}


def register(id: str, entry_point: str, *, description: str, max_episode_steps: int | None = None,
             kwargs: dict[str, Any] | None = None, kind: str = "gymnasium") -> None:
    """Register an env with Gymnasium (idempotent) and with turngym's listing."""
    if kind in ("gymnasium", "remote") and id not in gym.registry:
        gym.register(id=id, entry_point=entry_point, max_episode_steps=max_episode_steps, kwargs=kwargs or {})
    _ENTRIES[id] = EnvEntry(id=id, description=description, kind=kind)
    _ENTRY_POINTS[id] = entry_point


def registry() -> dict[str, EnvEntry]:
    """Every turngym env id -> its entry, sorted by id.

    Includes envs registered later in the ``turngym/`` namespace straight
    through ``gymnasium.register`` (their description is their class
    docstring's first line).
    """
    entries = dict(_ENTRIES)
    for env_id, spec in gym.registry.items():
        if spec.namespace == NAMESPACE and env_id not in entries:
            entries[env_id] = EnvEntry(id=env_id, description=_doc_line(spec.entry_point))
    return dict(sorted(entries.items()))


def gymnasium_ids() -> list[str]:
    """The ids of the single-agent (Gymnasium) envs (not ``remote`` ones: they need a server to be made)."""
    return [i for i, e in registry().items() if e.kind == "gymnasium"]


def _load(entry_point: Any) -> Any:
    """``"package.module:Name"`` -> the object it names (anything else is returned as it is)."""
    if isinstance(entry_point, str):
        module, _, attr = entry_point.partition(":")
        return getattr(importlib.import_module(module), attr)
    return entry_point


def _doc_line(entry_point: Any) -> str:
    try:
        return (_load(entry_point).__doc__ or "").strip().splitlines()[0]
    except Exception:  # a broken third-party env must not break the listing
        return ""


def check_env_id(env_id: str) -> str:
    """Return ``env_id`` if registered, else raise with the closest ids."""
    known = list(registry())
    if env_id in known or env_id in gym.registry:
        return env_id
    if f"{NAMESPACE}/{env_id}" in known:  # "Game24-v0" is a forgivable shorthand
        return f"{NAMESPACE}/{env_id}"
    close = difflib.get_close_matches(env_id, known, n=3, cutoff=0.5)
    if not close:
        lowered = env_id.lower()
        close = [k for k in known if lowered.split("/")[-1].split("-")[0] in k.lower()][:3]
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else f"; known ids: {', '.join(known)}"
    raise UnknownEnvError(f"unknown env {env_id!r}{hint} (list them with `turngym envs`)")


def make(env_id: str, /, **kwargs: Any) -> Any:
    """``gymnasium.make`` with turngym's error for unknown ids; a PettingZoo env id gives its AEC env."""
    env_id = check_env_id(env_id)
    entry = registry().get(env_id)
    if entry is not None and entry.kind == "pettingzoo":
        return _load(_ENTRY_POINTS[env_id])(**kwargs)
    return gym.make(env_id, **kwargs)


def env_class(env_id: str | None) -> type | None:
    """The class ``env_id`` builds, found through the registry without building an env.

    None for no id, an unknown id, or an entry point that is not a class (a factory function).
    ``"module:ns/Name-v0"`` imports the module first, as ``gymnasium.make`` does.
    """
    if not env_id:
        return None
    if ":" in env_id:
        module, _, env_id = env_id.partition(":")
        importlib.import_module(module)
    try:
        env_id = check_env_id(env_id)
    except UnknownEnvError:
        return None
    entry_point = _ENTRY_POINTS.get(env_id) or gym.registry[env_id].entry_point
    found = _load(entry_point)
    return found if isinstance(found, type) else None


def env_exemplars(env_id: str | None) -> list[dict[str, Any]]:
    """Few-shot exemplars of ``env_id``, from its folder (:meth:`TextEnv.exemplars`); [] if it has none."""
    cls = env_class(env_id)
    return cls.exemplars() if cls is not None and issubclass(cls, TextEnv) else []


def env_tool_specs(env_id: str | None) -> list[dict[str, Any]]:
    """The tools of ``env_id``, from its folder (:meth:`TextEnv.tool_specs`); [] if it has none."""
    cls = env_class(env_id)
    return cls.tool_specs() if cls is not None and issubclass(cls, TextEnv) else []


# ---- the registry ------------------------------------------------------------------------
register(
    "turngym/BlocksWorld-v0",
    entry_point="turngym.envs.blocksworld.env:BlocksWorldEnv",
    max_episode_steps=30,
    description="Stack coloured blocks into a goal configuration (RAP / FoR / PlanBench).",
)
register(
    "turngym/ALFWorld-v0",
    entry_point="turngym.envs.alfworld.env:ALFWorldEnv",
    max_episode_steps=50,  # ALFWorld's evaluation budget
    description="ALFWorld household tasks (find, clean/heat/cool, place, look under a lamp) on a native engine faithful to the real game.",
)
register(
    "turngym/Game24-v0",
    entry_point="turngym.envs.game24.env:Game24Env",
    max_episode_steps=10,
    description="Combine four numbers with + - * / into 24, one operation per turn (Tree-of-Thoughts / FoR).",
)
register(
    "turngym/Search-v0",
    entry_point="turngym.envs.search.env:SearchEnv",
    max_episode_steps=5,  # Search-R1: max_turns=4 search turns + the answer turn
    description="Answer questions by searching a corpus with <search>/<answer> turns, exact-match reward (Search-R1).",
)
register(
    "turngym/WebShop-v0",
    entry_point="turngym.envs.webshop.env:WebShopEnv",
    max_episode_steps=15,  # verl-agent's WebShop budget
    description="WebShop: search a shop, open products, choose options and buy what the instruction asks for; WebShop's pages, actions and reward (text or real-browser mode).",
)
register(
    "turngym/SWE-v0",
    entry_point="turngym.envs.swe.env:SWEEnv",
    max_episode_steps=40,
    description="SWE: fix a bug in a Python repository (SWE-bench format, SWE-smith-style tasks) with bash and file tools in a bwrap sandbox; reward when the failing tests pass and nothing else breaks.",
)
register(  # PettingZoo (multi-agent): not in gym.registry; build it with turngym.envs.werewolf.env(**config)
    "turngym/Werewolf-v0",
    entry_point="turngym.envs.werewolf:env",
    kind="pettingzoo",
    description="Werewolf: hidden roles, night actions, free-text debate and votes among LLM agents and bots (PettingZoo AEC + parallel).",
)
register(  # a client: needs url= of a `turngym serve-env` server, so the registry-wide tests skip it (tests/envs/test_remote.py)
    "turngym/Remote-v0",
    entry_point="turngym.envs.remote:make_remote",
    kind="remote",
    description="Any turngym env served by `turngym serve-env` on another host (SWE sandboxes, browsers), over HTTP.",
)
