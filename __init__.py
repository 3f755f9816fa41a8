"""turngym: multi-turn text environments and tools to train LLM agents on them.

``import turngym`` registers every env with Gymnasium, so both of these work::

    import turngym
    env = turngym.make("turngym/Game24-v0")

    import gymnasium as gym
    env = gym.make("turngym:turngym/Game24-v0")   # gymnasium imports turngym first
"""

from __future__ import annotations

import os as _os
import sys as _sys

__version__ = "0.1.0"


def _keep_root_off_sys_path() -> None:
    """Take this package's own folder off ``sys.path``; refuse to run if it already shadowed something.

    The repository root is the package ``turngym`` (see docs/DESIGN.md). Whenever that folder is on
    ``sys.path`` (``python -m ...`` or ``python -c`` run from the root of a checkout), its folders are
    also importable as top-level names, and ``kernels/`` then shadows the ``kernels`` distribution
    that transformers imports. turngym is always imported as ``turngym`` (the installed or editable
    package), never from that entry, so removing it costs nothing and makes every later import of
    ``kernels``, ``envs``, ... find the real distributions. A name that was already imported from
    the root before turngym is an error that says how to run the command instead.
    """
    root = _os.path.dirname(_os.path.abspath(__file__))

    def is_root(entry: str) -> bool:
        try:
            return _os.path.samefile(entry or _os.getcwd(), root)
        except OSError:
            return False

    _sys.path[:] = [p for p in _sys.path if not is_root(p)]
    for name, module in list(_sys.modules.items()):
        if "." in name or name == __name__:
            continue
        origin = _os.path.abspath(getattr(module, "__file__", None) or "")
        if origin in (_os.path.join(root, name + ".py"), _os.path.join(root, name, "__init__.py")):
            raise ImportError(
                f"module {name!r} was imported from this checkout ({origin}) instead of an installed "
                f"distribution, because the checkout's root was on sys.path. Run Python with -P "
                f"(e.g. `python -P -m pytest`, `python -P -m turngym.benchmarks.credit_speed`) or from "
                f"another folder, and import turngym's parts as `turngym.{name}`."
            )


_keep_root_off_sys_path()

from turngym.envs import make, register, registry  # registers the envs

__all__ = ["__version__", "make", "register", "registry"]
