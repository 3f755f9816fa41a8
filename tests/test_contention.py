"""benchmarks/contention.py: other processes' CPU use beside a benchmark, from /proc/stat."""

import os
import subprocess
import sys
import time

import pytest

from turngym.benchmarks.contention import CpuWatch, idle_check

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux /proc/stat only")


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_own_work_is_not_counted_as_others():
    watch = CpuWatch()
    _spin(0.6)
    out = watch.stop()
    assert out["wall_s"] >= 0.6 and 0.3 <= out["own_cores"] <= 1.05, out
    assert out["other_cores"] is not None and out["other_cores"] >= 0.0


def test_a_busy_neighbour_is_seen():
    """A separate spinning process (not our child until waited for) shows up as other cores."""
    code = "import time\nend = time.perf_counter() + 1.5\nwhile time.perf_counter() < end: pass"
    neighbour = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.3)  # let it start
        seen = idle_check(0.8)
    finally:
        neighbour.wait()
    assert seen["own_cores"] < 0.2 and seen["other_cores"] >= 0.5, seen
