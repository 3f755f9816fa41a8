"""How busy was the machine with OTHER work while a benchmark ran? (Linux ``/proc/stat``.)

A load average cannot answer it: it lags by minutes and counts the benchmark's
own threads. :class:`CpuWatch` reads the machine's busy CPU time and this
process's own (``os.times``: itself and its waited-for children) at start and
stop; the difference is other processes' CPU time, reported in cores (0.0 on
an idle machine; 1.0 means one core's worth of other work on average).

    watch = CpuWatch()
    ...                      # the timed work
    print(watch.stop())      # {"wall_s": ..., "own_cores": ..., "other_cores": ...}

Elsewhere than Linux the fields are None. Depends on nothing in turngym.
"""

from __future__ import annotations

import os
import time


def _machine_busy_seconds() -> float | None:
    """Busy CPU seconds of the whole machine since boot (all cores), or None without ``/proc/stat``."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    busy = sum(ticks[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is inside user)
    return busy / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuWatch:
    """Start on construction; :meth:`stop` returns the wall time and the cores used by this process and others."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.busy0 = _machine_busy_seconds()
        self.own0 = _own_seconds()

    def stop(self) -> dict[str, float | None]:
        wall = max(time.perf_counter() - self.t0, 1e-9)
        busy1 = _machine_busy_seconds()
        own = _own_seconds() - self.own0
        out: dict[str, float | None] = {"wall_s": round(wall, 3), "own_cores": round(own / wall, 2),
                                        "other_cores": None, "cpu_count": os.cpu_count()}
        if self.busy0 is not None and busy1 is not None:
            out["other_cores"] = round(max(0.0, (busy1 - self.busy0) - own) / wall, 2)
        return out


def idle_check(seconds: float = 2.0) -> dict[str, float | None]:
    """Other processes' CPU use over ``seconds`` of doing nothing (before a benchmark starts)."""
    watch = CpuWatch()
    time.sleep(seconds)
    return watch.stop()


__all__ = ["CpuWatch", "idle_check"]
