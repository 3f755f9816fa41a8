"""SWE (SWE-bench / R2E-Gym / SWE-smith): ``turngym/SWE-v0``, fix a bug in a Python repository in a sandbox.

* :mod:`.env`: :class:`SWEEnv`, the Gymnasium env: the tools, the reward, the oracle.
* :mod:`.actions`: the function-call text form, its parser and the file tools.
* :mod:`.sandbox`: where commands run: ``bwrap`` (default on Linux), ``docker``, ``local`` (not isolating).
* :mod:`.tasks`: SWE-bench-format instances: the shipped set, repository trees, test runs, SWE-bench rows.
* :mod:`.patches`: tree diffs and their exact application.
* :mod:`.generate`: SWE-smith-style task generation from PyPI sdists (``turngym swe generate``).

libcst and pytest (``turngym[swe]``) are imported only where they are used.
"""

from typing import Any

__all__ = ["SWEEnv"]


def __getattr__(name: str) -> Any:  # the env loads on first use: `import turngym.envs.swe.sandbox` stays light
    if name == "SWEEnv":
        from turngym.envs.swe.env import SWEEnv

        return SWEEnv
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
