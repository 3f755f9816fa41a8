"""OpenMP settings of a turngym process, decided once, before torch is imported.

OpenMP (torch's ATen backend on CPU, and MKL's threading layer) reads its
``OMP_*`` variables once, when the library loads: that is when ``import
torch`` runs. A variable set after that import changes nothing (the RL
trainer used to set ``OMP_WAIT_POLICY`` there, for nothing). So every entry
point (the ``turngym`` CLI, each benchmark's ``main``) calls
:func:`configure` first, before anything imports torch; each variable of
:data:`DEFAULTS` is set only when the environment does not have it (the
user's value always wins).

The thread count is not decided here: ``torch.set_num_threads`` works at
any time, so ``run.threads`` (and the benchmarks' ``--threads``) apply it
where the config is known.

If torch is already imported (a notebook, a test, a program that imported
torch first) the variables cannot take effect: :func:`configure` warns once
and sets nothing.

Depends on the standard library only (it must run before torch loads).
"""

from __future__ import annotations

import os
import sys
import warnings

#: Environment defaults set before torch loads. ``OMP_WAIT_POLICY`` is how an idle OpenMP worker waits
#: between parallel regions (a trainer step is thousands of short ones, one per op): ACTIVE spins, PASSIVE
#: sleeps at once, unset (libgomp) spins a while then sleeps. Empty by an A/B of the trainer step
#: (trl_compare, 2 cores: 7.7 s with libgomp's default, 9.4 s ACTIVE, 13.3 s PASSIVE; docs/DESIGN.md, "CPU
#: speed"): the hook stays so a measured default has one place to live.
DEFAULTS: dict[str, str] = {}

_warned = False


def configure(defaults: dict[str, str] | None = None) -> dict[str, str]:
    """Set the OpenMP environment of this process; call it before ``import torch``.

    Args:
        defaults: the variables to set when unset (default :data:`DEFAULTS`).

    Returns:
        The variables this call set (those the environment already has are kept and not listed; nothing
        once torch is imported).
    """
    wanted = {k: v for k, v in (DEFAULTS if defaults is None else defaults).items() if k not in os.environ}
    if "torch" in sys.modules:
        global _warned
        if wanted and not _warned:
            _warned = True
            warnings.warn(f"turngym.threads.configure: torch is already imported, so OpenMP would ignore "
                          f"{', '.join(f'{k}={v}' for k, v in sorted(wanted.items()))}; call configure() before "
                          "importing torch, or set them in the shell", RuntimeWarning, stacklevel=2)
        return {}
    os.environ.update(wanted)
    return wanted


__all__ = ["DEFAULTS", "configure"]
