"""Retrieval quality of the Search env's retrievers: recall@k of BM25 vs dense on the synthetic test split.

For every question of the split we search with the question text itself (one
query, as an agent's first search would be) and with the oracle's per-hop
queries (the name of each supporting passage's entity), and report:

* ``recall@k``: the fraction of gold supporting passages among the top ``k``
  of the question query (bridge questions have two; the second hop is
  rarely findable from the question alone: that is why they need two
  searches);
* ``all@k``: the fraction of questions whose every supporting passage is in
  the top ``k`` of the question query;
* ``hop recall@k``: the fraction of supporting passages in the top ``k`` of
  their own oracle query;

overall and per question type, with index build time and per-query latency.
The dense index is cached (``$TURNGYM_CACHE/search``), so only the first run
pays the encoding (about 20 s for the 435 passages on a small CPU).

    python -m turngym.benchmarks.retrieval_quality                       # bm25 and dense, 500 test questions
    python -m turngym.benchmarks.retrieval_quality --retrievers bm25 --tasks 100

Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from turngym.envs.search import synthetic
from turngym.envs.search.retrievers import make_retriever


def evaluate(retriever_name: str, split: str = "test", tasks: int = synthetic.TEST_SIZE, k: int = 3) -> dict[str, Any]:
    """Recall numbers of one retriever over the first ``tasks`` questions of ``split``."""
    corpus = synthetic.corpus()
    t0 = time.perf_counter()
    retriever = make_retriever(retriever_name, corpus)
    build_s = time.perf_counter() - t0
    questions = [synthetic.make_question(split, i) for i in range(tasks)]

    t0 = time.perf_counter()
    question_hits = retriever.search([q["question"] for q in questions], k)
    hop_queries = [(q, sup, query) for q in questions for sup, query in zip(q["supporting"], q["oracle_queries"])]
    hop_hits = retriever.search([query for _, _, query in hop_queries], k)
    search_s = time.perf_counter() - t0

    by_type: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for q, hits in zip(questions, question_hits):
        ids = {h.passage.id for h in hits}
        found = sum(1 for d in q["supporting"] if d in ids)
        for group in (q["type"], "all"):
            row = by_type[group]
            row["questions"] += 1
            row["passages"] += len(q["supporting"])
            row["found"] += found
            row["complete"] += found == len(q["supporting"])
    for (q, sup, _), hits in zip(hop_queries, hop_hits):
        for group in (q["type"], "all"):
            by_type[group]["hop_found"] += sup in {h.passage.id for h in hits}
    table = {}
    for group, row in by_type.items():
        table[group] = {
            "questions": int(row["questions"]),
            f"recall@{k}": row["found"] / row["passages"],
            f"all@{k}": row["complete"] / row["questions"],
            f"hop_recall@{k}": row["hop_found"] / row["passages"],
        }
    return {"retriever": retriever_name, "split": split, "k": k, "corpus_passages": len(corpus),
            "corpus_digest": corpus.digest, "build_s": round(build_s, 3),
            "ms_per_query": round(1000 * search_s / (len(questions) + len(hop_queries)), 3), "by_type": table}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--retrievers", default="bm25,dense", help="comma-separated: bm25, dense")
    parser.add_argument("--split", default="test", choices=["train", "test"])
    parser.add_argument("--tasks", type=int, default=synthetic.TEST_SIZE, help="questions (the first N of the split)")
    parser.add_argument("-k", type=int, default=3, help="passages per query (Search-R1's topk: 3)")
    parser.add_argument("--out", default="results/retrieval_quality.json")
    args = parser.parse_args(argv)

    reports = [evaluate(name.strip(), args.split, args.tasks, args.k) for name in args.retrievers.split(",") if name.strip()]
    k = args.k
    print(f"{'retriever':<10} {'type':<11} {'n':>4} {f'recall@{k}':>9} {f'all@{k}':>7} {f'hop_recall@{k}':>13}")
    for rep in reports:
        for group in ("all", "1-hop", "bridge", "comparison"):
            row = rep["by_type"].get(group)
            if row:
                print(f"{rep['retriever']:<10} {group:<11} {row['questions']:>4} {row[f'recall@{k}']:>9.3f} "
                      f"{row[f'all@{k}']:>7.3f} {row[f'hop_recall@{k}']:>13.3f}")
        print(f"{rep['retriever']:<10} index build {rep['build_s']:.2f} s, {rep['ms_per_query']:.2f} ms/query")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "retrieval_quality", "python": platform.python_version(), "machine": platform.machine(),
              "reports": reports}
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
