"""benchmarks/scale.py runs (a seconds-long version): every backend replays the same oracle episodes and the
I/O-bound env scales with its workers (waiting overlaps whatever the cores). The full table is the benchmark's."""

from __future__ import annotations

import json

from turngym.benchmarks import scale


def test_scale_benchmark_prints_and_writes_its_table(tmp_path, capsys):
    out = tmp_path / "scale.json"
    assert scale.main(["--backends", "thread", "process", "--workers", "1", "2", "--steps", "40", "--latency", "0.02",
                       "--cpu", "0.001", "--out", str(out)]) == 0
    table = json.loads(out.read_text())
    rows = {(r["env"], r["backend"], r["workers"]): r for r in table["rows"]}
    assert set(rows) == {(e, b, w) for e in ("plain", "cpu-bound", "io-bound") for b in ("thread", "process")
                         for w in (1, 2)}
    for (env, backend, workers), row in rows.items():
        assert row["steps_per_s"] > 0 and (workers > 1 or row["speedup"] == 1.0)
    # two slots that each wait 20 ms a step: about twice the steps/s of one (loose: the machine may be busy)
    assert rows[("io-bound", "thread", 2)]["speedup"] > 1.4
    assert "io-bound" in capsys.readouterr().out


def test_the_oracle_plans_win_and_replay_the_same_through_every_pool():
    from functools import partial

    from turngym.agents.pool import make_pool

    plans = scale.oracle_plans(scale.ENV_ID, range(3))
    for kind in ("thread", "process"):
        pool = make_pool(kind, partial(scale.make_bench_env, scale.ENV_ID, 0.0, 0.0), 1, 1)
        try:
            for seed, actions in plans:
                pool.submit(0, "reset", seed, None).result()
                results = [pool.submit(0, "step", a).result()[0] for a in actions]
                assert results[-1][2] and results[-1][4]["won"]  # the replay wins as the plan did
        finally:
            pool.close()
