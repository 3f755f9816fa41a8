"""Generate SWE tasks (SWE-smith's procedural bugs) from PyPI source distributions, and check them.

    turngym swe generate --package more-itertools==10.5.0 --per-package 10 --seed 0 --out tasks.jsonl
    turngym swe check tasks.jsonl

For each package: ``pip download --no-deps --no-binary :all:`` its sdist, unpack it, find its test
files (``test_*.py``/``*_test.py``), run them three times, each in a fresh sandbox, the last from a
copy at another path (tests that pass every time are the stable ones; the others are never used),
list the mutation sites of its source files with libcst (:data:`OPERATORS`), and try them in a
seeded order: each mutant is written into the sandbox's work copy (libcst changes the one node; the
file's other bytes stay as they were, and a mutant that changes more than two lines is dropped), all
test files run, and the mutant is kept when 1 to ``max_f2p`` stable tests fail, every test module
still imports and the run is not much slower. FAIL_TO_PASS are the stable tests it breaks;
PASS_TO_PASS the stable tests it leaves passing in the test files that hold the FAIL_TO_PASS ones (an
evaluation runs those files only). The problem statement reads like an issue built from the failing
tests' names and messages (never the diff, the mutated line or its file and line); the gold ``patch``
is the bug's reverse. At most one bug per function, the operators taken in turn, so the set is varied.

:func:`check_instance` is the oracle check: on a fresh copy of the buggy tree the FAIL_TO_PASS tests
must fail (an empty submission does not resolve the task) and, after the gold patch, every
FAIL_TO_PASS and PASS_TO_PASS test must pass. ``generate`` keeps only instances that pass it twice.

This module needs libcst (the ``swe`` extra: ``pip install 'turngym[swe]'``), imported when a mutation
is made; it depends on nothing of ours but :mod:`turngym.errors`, :mod:`turngym.files` and this package.
"""

from __future__ import annotations

import argparse
import difflib
import email.parser
import functools
import hashlib
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from turngym.envs.swe import tasks as tasks_lib
from turngym.envs.swe.patches import PatchError, apply_diff, file_diff, tree_digest
from turngym.errors import TaskError, TurngymError, require

#: the mutation operators, SWE-smith's procedural bug kinds
OPERATORS = ("flip_comparison", "swap_arithmetic", "swap_boolean", "off_by_one", "remove_not", "remove_statement",
             "swap_arguments")
#: folders never searched for tests or mutated
SKIP_DIRS = {"docs", "doc", "build", "dist", "examples", "example", "benchmarks", "benchmark", "bench", "scripts",
             "site-packages", "node_modules", "__pycache__"}
TEST_DIRS = {"tests", "test", "testing"}
#: source files never mutated (packaging, version stamps, entry points)
SKIP_SOURCES = {"setup.py", "conftest.py", "noxfile.py", "fabfile.py", "_version.py", "version.py", "__main__.py",
                "__about__.py"}
#: calls whose first two arguments a swap would turn into a plain TypeError (a bug that names itself)
NO_SWAP_CALLS = {"isinstance", "issubclass", "getattr", "setattr", "hasattr", "delattr", "super", "print", "format",
                 "join", "append", "insert", "get", "pop", "setdefault", "min", "max"}
#: pytest options tried in turn until the suite runs (some sdists ship a conftest.py for an older pytest)
PYTEST_FALLBACKS = ("", " --noconftest", " --noconftest -o addopts=")
MAX_CHANGED_LINES = 2
SHOWN_FAILURES = 6


# ---- mutation sites (libcst) ------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """One place a mutation operator applies: ``index`` orders the sites of a file (libcst's traversal)."""

    operator: str
    file: str
    line: int
    scope: str  # the enclosing function, qualified (Class.method)
    index: int


def _cst() -> Any:
    return require("libcst", "swe", "Generating SWE tasks (the libcst mutations)")


@functools.lru_cache(maxsize=8)
def _collect(source: str) -> tuple[Any, list[tuple[str, Any, Any, int, str]]]:
    """The parsed module and its mutation sites: (operator, node, replacement, line, scope) in traversal order
    (cached: libcst takes a second on a 5,000-line module, and its trees are immutable)."""
    cst = _cst()
    from libcst.metadata import MetadataWrapper, PositionProvider

    wrapper = MetadataWrapper(cst.parse_module(source))
    flips = {cst.LessThan: cst.LessThanEqual, cst.LessThanEqual: cst.LessThan, cst.GreaterThan: cst.GreaterThanEqual,
             cst.GreaterThanEqual: cst.GreaterThan, cst.Equal: cst.NotEqual, cst.NotEqual: cst.Equal,
             cst.Is: cst.IsNot, cst.IsNot: cst.Is, cst.In: cst.NotIn, cst.NotIn: cst.In}
    arithmetic = {cst.Add: cst.Subtract, cst.Subtract: cst.Add, cst.Multiply: cst.FloorDivide,
                  cst.FloorDivide: cst.Multiply}
    augmented = {cst.AddAssign: cst.SubtractAssign, cst.SubtractAssign: cst.AddAssign,
                  cst.MultiplyAssign: cst.FloorDivideAssign, cst.FloorDivideAssign: cst.MultiplyAssign}
    literals = (cst.SimpleString, cst.ConcatenatedString, cst.FormattedString, cst.List, cst.Tuple, cst.Dict,
                cst.Set, cst.ListComp, cst.SetComp, cst.DictComp)
    blank = cst.Module(body=[])

    def same_op(old: Any, new_cls: type) -> Any:
        return new_cls(whitespace_before=old.whitespace_before, whitespace_after=old.whitespace_after)

    class NotFinder(cst.CSTVisitor):
        def __init__(self) -> None:
            self.found: set[int] = set()

        def visit_UnaryOperation(self, node: Any) -> None:
            if isinstance(node.operator, cst.Not):
                self.found.add(id(node))

        def visit_Lambda(self, node: Any) -> bool:
            return False

    class AssignedNames(cst.CSTVisitor):
        def __init__(self) -> None:
            self.count: Counter[str] = Counter()

        def visit_AssignTarget(self, node: Any) -> None:
            if isinstance(node.target, cst.Name):
                self.count[node.target.value] += 1

        def visit_AugAssign(self, node: Any) -> None:
            if isinstance(node.target, cst.Name):
                self.count[node.target.value] += 1

        def visit_For(self, node: Any) -> None:
            if isinstance(node.target, cst.Name):
                self.count[node.target.value] += 1

    class Collector(cst.CSTVisitor):
        METADATA_DEPENDENCIES = (PositionProvider,)

        def __init__(self) -> None:
            super().__init__()
            self.sites: list[tuple[str, Any, Any, int, str]] = []
            self.scope: list[str] = []
            self.functions: list[Counter[str]] = []  # per enclosing function: how often each name is assigned
            self.condition_nots: set[int] = set()
            self.bumped_ints: set[int] = set()  # operands of + and -, and negated literals: n -> n + 1

        def add(self, operator: str, node: Any, replacement: Any, at: Any = None) -> None:
            if not self.functions:
                return  # module and class level: mutants there break imports, not behaviour
            line = self.get_metadata(PositionProvider, at if at is not None else node).start.line
            self.sites.append((operator, node, replacement, line, ".".join(self.scope)))

        def visit_ClassDef(self, node: Any) -> None:
            self.scope.append(node.name.value)

        def leave_ClassDef(self, node: Any) -> None:
            self.scope.pop()

        def visit_FunctionDef(self, node: Any) -> None:
            self.scope.append(node.name.value)
            names = AssignedNames()
            node.body.visit(names)
            self.functions.append(names.count)

        def leave_FunctionDef(self, node: Any) -> None:
            self.scope.pop()
            self.functions.pop()

        def _conditions(self, test: Any) -> None:
            finder = NotFinder()
            test.visit(finder)
            self.condition_nots |= finder.found

        def visit_If(self, node: Any) -> None:
            self._conditions(node.test)

        def visit_While(self, node: Any) -> None:
            self._conditions(node.test)

        def visit_IfExp(self, node: Any) -> None:
            self._conditions(node.test)

        def visit_ComparisonTarget(self, node: Any) -> None:
            new_cls = flips.get(type(node.operator))
            if new_cls is not None:
                self.add("flip_comparison", node, node.with_changes(operator=same_op(node.operator, new_cls)),
                         node.operator)

        def visit_BinaryOperation(self, node: Any) -> None:
            if isinstance(node.operator, (cst.Add, cst.Subtract)):
                for side in (node.left, node.right):
                    if isinstance(side, cst.Integer):
                        self.bumped_ints.add(id(side))
            new_cls = arithmetic.get(type(node.operator))
            if new_cls is None or isinstance(node.left, literals) or isinstance(node.right, literals):
                return  # "a" + "b" or [x] * n: the swapped operator is a TypeError, not a bug to hunt
            self.add("swap_arithmetic", node, node.with_changes(operator=same_op(node.operator, new_cls)),
                     node.operator)

        def visit_AugAssign(self, node: Any) -> None:
            new_cls = augmented.get(type(node.operator))
            if new_cls is not None and not isinstance(node.value, literals):
                self.add("swap_arithmetic", node, node.with_changes(operator=same_op(node.operator, new_cls)),
                         node.operator)

        def visit_BooleanOperation(self, node: Any) -> None:
            new_cls = cst.Or if isinstance(node.operator, cst.And) else cst.And
            self.add("swap_boolean", node, node.with_changes(operator=same_op(node.operator, new_cls)), node.operator)

        def visit_UnaryOperation(self, node: Any) -> None:
            if isinstance(node.operator, cst.Minus) and isinstance(node.expression, cst.Integer):
                self.bumped_ints.add(id(node.expression))
            if isinstance(node.operator, cst.Not) and id(node) in self.condition_nots:
                inner = node.expression
                replacement = inner.with_changes(lpar=[*node.lpar, *inner.lpar], rpar=[*inner.rpar, *node.rpar])
                self.add("remove_not", node, replacement)

        def visit_Integer(self, node: Any) -> None:
            if not re.fullmatch(r"[0-9]+", node.value) or (len(node.value) > 1 and node.value.startswith("0")):
                return
            n = int(node.value)
            new = n + 1 if (id(node) in self.bumped_ints or n == 0) else n - 1
            self.add("off_by_one", node, node.with_changes(value=str(new)))

        def visit_SimpleStatementLine(self, node: Any) -> None:
            if not self.functions or len(node.body) != 1:
                return
            stmt = node.body[0]
            if isinstance(stmt, cst.Return):
                removable = stmt.value is not None
            elif isinstance(stmt, cst.Assign):
                # dropping the only assignment of a local is a NameError that names the variable: keep the
                # removals that leave a wrong value behind (an attribute, an item, a name assigned again)
                removable = all(not isinstance(t.target, cst.Name) or self.functions[-1][t.target.value] > 1
                                for t in stmt.targets) and not all(isinstance(t.target, (cst.Tuple, cst.List))
                                                                   for t in stmt.targets)
            elif isinstance(stmt, (cst.AugAssign, cst.AnnAssign)):
                removable = getattr(stmt, "value", True) is not None
            elif isinstance(stmt, cst.Expr):
                removable = isinstance(stmt.value, cst.Call)
            else:
                removable = False
            if removable:
                self.add("remove_statement", node, node.with_changes(body=[cst.Pass()]))

        def visit_Call(self, node: Any) -> None:
            args = node.args
            if len(args) < 2 or any(a.keyword is not None or a.star for a in args[:2]):
                return
            func = node.func
            name = func.value if isinstance(func, cst.Name) else (func.attr.value if isinstance(func, cst.Attribute)
                                                                  else "")
            if name in NO_SWAP_CALLS:
                return
            first, second = args[0].value, args[1].value
            if blank.code_for_node(first) == blank.code_for_node(second):
                return
            swapped = [args[0].with_changes(value=second), args[1].with_changes(value=first), *args[2:]]
            self.add("swap_arguments", node, node.with_changes(args=swapped))

    collector = Collector()
    wrapper.visit(collector)
    return wrapper.module, collector.sites


def mutation_sites(source: str, file: str = "") -> list[Site]:
    """Every mutation site in a module's functions (empty when libcst cannot parse it)."""
    try:
        _, sites = _collect(source)
    except Exception as exc:  # libcst's ParserSyntaxError and friends: a file we cannot mutate
        if isinstance(exc, TurngymError):
            raise
        return []
    return [Site(op, file, line, scope, i) for i, (op, _node, _new, line, scope) in enumerate(sites)]


def apply_mutation(source: str, site: Site) -> str:
    """``source`` with the one node of ``site`` replaced (libcst keeps every other byte)."""
    module, sites = _collect(source)
    if site.index >= len(sites) or sites[site.index][0] != site.operator or sites[site.index][3] != site.line:
        raise TaskError(f"{site.file}: no {site.operator} site #{site.index} at line {site.line} (the source changed)")
    _op, node, replacement, _line, _scope = sites[site.index]
    return module.deep_replace(node, replacement).code


def changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    """The lines ``after`` removes from and adds to ``before``."""
    old, new = before.splitlines(), after.splitlines()
    removed, added = [], []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag != "equal":
            removed += old[i1:i2]
            added += new[j1:j2]
    return removed, added


# ---- packages ---------------------------------------------------------------------------------


def canonical_name(name: str) -> str:
    """PEP 503's normalized project name: ``More_Itertools`` -> ``more-itertools``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def fetch_sdist(spec: str, download_dir: Path) -> Path:
    """The sdist of ``NAME==VERSION`` (from ``download_dir`` if there, else downloaded into it with pip) or
    the sdist at the path ``spec``."""
    path = Path(spec)
    if path.name.endswith((".tar.gz", ".zip")) and path.is_file():
        return path
    name, sep, version = spec.partition("==")
    if not sep or not name.strip() or not version.strip():
        raise TaskError(f"package {spec!r}: pin an exact version, NAME==VERSION (e.g. more-itertools==10.5.0), "
                        "or give the path of an sdist (.tar.gz or .zip)")
    wanted = canonical_name(f"{name.strip()}-{version.strip()}")

    def cached() -> Path | None:
        for candidate in sorted(download_dir.glob("*")):
            stem = re.sub(r"\.(tar\.gz|zip)$", "", candidate.name)
            if stem != candidate.name and canonical_name(stem) == wanted:
                return candidate
        return None

    download_dir.mkdir(parents=True, exist_ok=True)
    found = cached()
    if found:
        return found
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-d", str(download_dir), f"{name.strip()}=={version.strip()}"]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    found = cached()
    if done.returncode != 0 or found is None:
        raise TaskError(f"pip could not download the sdist of {spec} (exit code {done.returncode}): "
                        f"{(done.stderr or done.stdout).strip()[-600:]}")
    return found


def sdist_metadata(tree: Path, sdist: Path) -> tuple[str, str]:
    """(name, version) from the sdist's PKG-INFO, else from its file name."""
    info = tree / "PKG-INFO"
    if info.is_file():
        headers = email.parser.Parser().parsestr(info.read_text(encoding="utf-8", errors="replace"))
        if headers.get("Name") and headers.get("Version"):
            return canonical_name(headers["Name"]), headers["Version"].strip()
    stem = re.sub(r"\.(tar\.gz|zip)$", "", sdist.name)
    name, _, version = stem.rpartition("-")
    return canonical_name(name), version


def sdist_time(sdist: Path) -> str:
    """When the sdist was built (its newest member's time), ISO 8601 UTC: the instances' ``created_at``."""
    import tarfile
    import zipfile

    if sdist.name.endswith(".zip"):
        with zipfile.ZipFile(sdist) as zf:
            stamp = max(datetime(*i.date_time, tzinfo=UTC).timestamp() for i in zf.infolist())
    else:
        with tarfile.open(sdist) as tf:
            stamp = max(m.mtime for m in tf.getmembers())
    return datetime.fromtimestamp(stamp, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _walk_py(tree: Path) -> list[str]:
    found = []
    for path in sorted(tree.rglob("*.py")):
        rel = path.relative_to(tree)
        if any(p.startswith(".") or p in SKIP_DIRS or p.endswith(".egg-info") for p in rel.parts[:-1]):
            continue
        found.append(rel.as_posix())
    return found


def is_test_file(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name.startswith("test_") or name.endswith("_test.py")


def find_test_files(tree: Path) -> list[str]:
    """The test files pytest would collect by default (``test_*.py``, ``*_test.py``)."""
    return [rel for rel in _walk_py(tree) if is_test_file(rel)]


def import_roots(tree: Path) -> list[str]:
    """``["src"]`` for a src layout, else ``["."]``."""
    src = tree / "src"
    if src.is_dir() and any(p.suffix == ".py" or (p / "__init__.py").is_file() for p in src.iterdir()):
        return ["src"]
    return ["."]


def find_source_files(tree: Path, roots: list[str]) -> list[str]:
    """The package's own modules under its import roots: not tests, test helpers, packaging or docs."""
    out = []
    for rel in _walk_py(tree):
        parts = rel.split("/")
        if roots != ["."] and not any(rel.startswith(root.rstrip("/") + "/") for root in roots):
            continue
        if is_test_file(rel) or parts[-1] in SKIP_SOURCES or any(p in TEST_DIRS for p in parts[:-1]):
            continue
        if roots == ["."] and len(parts) == 1 and parts[0] in SKIP_SOURCES:
            continue
        out.append(rel)
    return out


# ---- problem statements -----------------------------------------------------------------------

_TITLES = (
    "{first} fails in {repo} {version}",
    "Wrong results from {repo} {version}: {count} failing test{s}",
    "Regression in {repo} {version}: {short} no longer pass{es}",
)
_INTROS = (
    ("Running the test suite of {repo} {version} (from its source distribution), {count} test{s} in {files} "
    "fail{verb_s}:"),
    "I noticed that the following test{s} in {files} fail{verb_s} on {repo} {version}:",
    "After building {repo} {version} from source, {files} no longer pass{es_files}. The failing test{s}:",
)
_CLOSINGS = (
    ("The tests look right to me; the library code seems to be at fault. Please fix it so that these tests pass "
    "again without changing the tests."),
    "Expected: these tests pass, and no other test breaks. The tests themselves should not need changes.",
    "Could you look into it? The fix belongs in the library, not in the tests.",
)


_PYTEST_HINT = re.compile(r"Use -v+ to get|use -v+ to show|Full diff:|Omitting \d+ identical items")


def clean_message(message: str, forbidden: Iterable[str], max_lines: int = 6, max_chars: int = 400) -> str:
    """A failure message fit for an issue: memory addresses masked, lines that quote the bug dropped, cut short."""
    text = re.sub(r"0x[0-9a-fA-F]{6,}", "0x...", message or "")
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not any(f in ln for f in forbidden) and not _PYTEST_HINT.search(ln)]
    out = "\n".join(lines[:max_lines])
    return out[:max_chars] + (" ..." if len(out) > max_chars or len(lines) > max_lines else "")


def problem_statement(repo: str, version: str, failing: list[str], messages: dict[str, str],
                      forbidden: list[str], rng: random.Random) -> str:
    """An issue-style statement from the failing tests' names and messages (SWE-smith's F2P-only issues)."""
    files = sorted({t.split("::")[0] for t in failing})
    short = [t.split("::", 1)[1] if "::" in t else t for t in failing]
    count = len(failing)
    fields = {"repo": repo, "version": version, "count": count, "s": "" if count == 1 else "s",
              "verb_s": "s" if count == 1 else "", "es": "es" if count == 1 else "",
              "es_files": "es" if len(files) == 1 else "", "files": ", ".join(f"`{f}`" for f in files),
              "first": f"`{short[0].replace('::', '.')}`",
              "short": ", ".join(f"`{s.replace('::', '.')}`" for s in short[:2]) + (" and others" if count > 2 else "")}
    parts = [rng.choice(_TITLES).format(**fields), "", rng.choice(_INTROS).format(**fields), ""]
    for test in failing[:SHOWN_FAILURES]:
        message = clean_message(messages.get(test, ""), forbidden)
        parts.append(f"- `{test}`")
        if message:
            parts.extend(["", "  ```", *(f"  {ln}" for ln in message.splitlines()), "  ```", ""])
    if count > SHOWN_FAILURES:
        parts.append(f"- ... and {count - SHOWN_FAILURES} more in the same file{'s' if len(files) > 1 else ''}")
    parts += ["", rng.choice(_CLOSINGS)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(parts)).strip() + "\n"


def leaks(statement: str, instance: dict[str, Any]) -> list[str]:
    """What of the fix a problem statement gives away: the mutated lines, the diffs' changed lines and hunk
    headers, the bug's file:line."""
    mutation = instance["turngym"]["mutation"]
    found = []
    for key in ("before", "after"):
        for line in mutation[key].splitlines():
            if len(line.strip()) >= 6 and line.strip() in statement:
                found.append(f"the {key} line {line.strip()!r}")
    for diff in (instance["patch"], instance["turngym"]["bug_patch"]):
        for line in diff.splitlines():
            if line.startswith("@@") and line in statement:
                found.append(f"the hunk header {line!r}")
            elif (line[:1] in "+-" and not line.startswith(("+++", "---")) and len(line[1:].strip()) >= 6
                  and line[1:].strip() in statement):
                found.append(f"the diff line {line!r}")
    if f"{mutation['file']}:{mutation['line']}" in statement:
        found.append(f"{mutation['file']}:{mutation['line']}")
    return found


# ---- generating -------------------------------------------------------------------------------


SandboxFactory = Callable[[Path], Any]


def default_sandbox_factory(backend: str, limits: Any = None) -> SandboxFactory:
    """Sandboxes from :func:`turngym.envs.swe.sandbox.make_sandbox` (a fresh work copy of the tree each)."""
    from turngym.envs.swe import sandbox as sandbox_lib

    make = getattr(sandbox_lib, "make_sandbox", None)
    if make is None:
        raise TurngymError("turngym.envs.swe.sandbox has no make_sandbox yet: pass sandbox_factory= to generate")
    return lambda source: make(backend, source, limits)


@dataclass
class _Suite:
    """A package's test suite as the baseline runs found it."""

    test_files: list[str]
    test_command: str
    stable: set[str]  # tests that passed in both baseline runs
    duration_s: float


class _Relocated:
    """A sandbox's work copy seen from a copy of it in a sub-folder with a long name (see :func:`_baseline`)."""

    FOLDER = ".turngym-relocated-abcdefghijklmnopqrstuvwxyz-0123456789_ABCDEFGHIJKLMNOPQRSTUVWXYZ"

    def __init__(self, sandbox: Any) -> None:
        self.sandbox, self.name = sandbox, getattr(sandbox, "name", "")
        self.workdir = Path(sandbox.workdir) / self.FOLDER
        shutil.copytree(sandbox.workdir, self.workdir, symlinks=True, ignore=shutil.ignore_patterns(self.FOLDER))

    def run(self, command: str, timeout_s: float | None = None, env: dict[str, str] | None = None) -> Any:
        return self.sandbox.run(f"cd {self.FOLDER} && {command}", timeout_s=timeout_s, env=env)


def _baseline(sandbox: Any, sandbox_factory: SandboxFactory, source: Path, test_files: list[str], roots: list[str],
              timeout_s: float, runs: int) -> _Suite:
    """Run the suite in ``sandbox`` (pytest options from :data:`PYTEST_FALLBACKS` until it runs), then
    ``runs - 1`` more times, each in a fresh sandbox: a work copy elsewhere catches tests that depend on
    the checkout's path, the order of the runs or leftovers of the previous run."""
    best: tuple[int, str, Any] | None = None
    for extra in PYTEST_FALLBACKS:
        command = tasks_lib.DEFAULT_TEST_COMMAND + extra
        run = tasks_lib.run_pytest(sandbox, test_files, pythonpath=roots, test_command=command, timeout_s=timeout_s)
        passed = sum(1 for s in run.results.values() if s == "passed")
        broken = [n for n, s in run.results.items() if "::" not in n and s == "error"]
        if best is None or passed > best[0]:
            best = (passed, command, run)
        if passed and not broken:
            break
    passed, command, first = best
    if not passed:
        raise TaskError(f"no test of {test_files[:3]}... passes on the pristine tree: {first.output.strip()[-600:]}")
    files = sorted({n.split("::")[0] for n, s in first.results.items() if s == "passed" and "::" in n})
    stable = {n for n, s in first.results.items() if s == "passed"}
    duration = first.duration_s
    for k in range(runs - 1):
        fresh = sandbox_factory(source)
        try:
            # the last run from a copy at another path, one with every letter and digit in it: a test that
            # depends on where the checkout lies (boltons' lstrip of its path) fails there
            where = _Relocated(fresh) if k == runs - 2 else fresh
            again = tasks_lib.run_pytest(where, files, pythonpath=roots, test_command=command, timeout_s=timeout_s)
        finally:
            fresh.close()
        stable = {n for n in stable if again.results.get(n) == "passed"}
        duration = max(duration, again.duration_s)
    return _Suite(files, command, stable, duration)


def _order_sites(sites: list[Site], rng: random.Random) -> list[Site]:
    """The operators in turn (their order shuffled each round), each operator's sites shuffled."""
    buckets: dict[str, list[Site]] = {}
    for site in sites:
        buckets.setdefault(site.operator, []).append(site)
    for bucket in buckets.values():
        rng.shuffle(bucket)
    ordered = []
    while any(buckets.values()):
        names = sorted(k for k, v in buckets.items() if v)
        rng.shuffle(names)
        ordered += [buckets[name].pop() for name in names]
    return ordered


def assign_splits(instances: list[dict[str, Any]], test_fraction: float) -> None:
    """Per package, the ``round(n * test_fraction)`` instances with the lowest id hashes go to ``test``, the
    others to ``train``: every package is in both splits in the same proportion, and an id's split does
    not depend on the order of generation."""
    by_repo: dict[str, list[dict[str, Any]]] = {}
    for instance in instances:
        by_repo.setdefault(instance["repo"], []).append(instance)
    for group in by_repo.values():
        ranked = sorted(group, key=lambda i: hashlib.sha256(i["instance_id"].encode()).hexdigest())
        n_test = round(len(group) * test_fraction)
        for k, instance in enumerate(ranked):
            instance["turngym"]["split"] = "test" if k < n_test else "train"


def generate_package(spec: str, per_package: int, seed: int, sandbox_factory: SandboxFactory, sdist_dir: Path,
                     *, max_f2p: int = 20, max_tries: int | None = None, timeout_s: float = 600.0,
                     baseline_runs: int = 3, verify_runs: int = 2,
                     log: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    """Up to ``per_package`` instances of one package (see the module docstring); its sdist is kept in
    ``sdist_dir``. Splits are left to :func:`assign_splits`."""
    started = time.monotonic()
    archive = fetch_sdist(spec, sdist_dir)
    if archive.parent.resolve() != sdist_dir.resolve():
        sdist_dir.mkdir(parents=True, exist_ok=True)
        archive = Path(shutil.copy2(archive, sdist_dir / archive.name))
    with tempfile.TemporaryDirectory(prefix="turngym-swe-gen-") as scratch:
        pristine = tasks_lib.extract_sdist(archive, Path(scratch) / "pristine")
        repo, version = sdist_metadata(pristine, archive)
        roots = import_roots(pristine)
        test_files = find_test_files(pristine)
        if not test_files:
            raise TaskError(f"{archive.name} ships no test files (test_*.py, *_test.py): pick a package whose sdist "
                            "includes its tests")
        sources = find_source_files(pristine, roots)
        sites = [s for rel in sources for s in mutation_sites((pristine / rel).read_text(encoding="utf-8"), rel)]
        sandbox = sandbox_factory(pristine)
        try:
            suite = _baseline(sandbox, sandbox_factory, pristine, test_files, roots, timeout_s, baseline_runs)
            log(f"{repo} {version}: {len(suite.stable)} stable tests in {len(suite.test_files)} files "
                f"({suite.duration_s:.1f} s a run, `{suite.test_command}`), {len(sites)} mutation sites in "
                f"{len(sources)} files")
            context = {"repo": repo, "version": version, "sdist": archive.name, "sha": tasks_lib.sha256_file(archive),
                       "pristine": pristine, "roots": roots, "created_at": sdist_time(archive), "seed": seed}
            context["verify"] = (sandbox_factory, verify_runs, timeout_s)
            kept, tries, reasons = _mutate(sandbox, suite, sites, context, per_package, max_f2p,
                                           max_tries or 10 * per_package, log)
        finally:
            sandbox.close()
    log(f"{repo} {version}: kept {len(kept)} of {tries} mutants tried in {time.monotonic() - started:.0f} s "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(reasons.items()))})")
    return kept


def _mutate(sandbox: Any, suite: _Suite, sites: list[Site], context: dict[str, Any], per_package: int,
            max_f2p: int, max_tries: int, log: Callable[[str], None]) -> tuple[list[dict[str, Any]], int, Counter]:
    pristine: Path = context["pristine"]
    rng = random.Random(f"{context['seed']}/{context['repo']}=={context['version']}")
    mutant_timeout = max(30.0, 4 * suite.duration_s + 10)
    kept: list[dict[str, Any]] = []
    used_scopes: set[tuple[str, str]] = set()
    reasons: Counter[str] = Counter()
    tries = 0
    for site in _order_sites(sites, rng):
        if len(kept) >= per_package or tries >= max_tries:
            break
        if (site.file, site.scope) in used_scopes:
            continue
        original = (pristine / site.file).read_text(encoding="utf-8")
        mutated = apply_mutation(original, site)
        removed, added = changed_lines(original, mutated)
        if not removed or len(removed) > MAX_CHANGED_LINES or len(added) > MAX_CHANGED_LINES:
            reasons["not surgical"] += 1
            continue
        tries += 1
        target = Path(sandbox.workdir) / site.file
        target.write_text(mutated, encoding="utf-8")
        try:
            run = tasks_lib.run_pytest(sandbox, suite.test_files, pythonpath=context["roots"],
                                       test_command=suite.test_command, timeout_s=mutant_timeout)
        finally:
            target.write_text(original, encoding="utf-8")
        verdict, f2p = _classify(run, suite, max_f2p)
        if verdict != "kept":
            reasons[verdict] += 1
            continue
        instance = _instance(context, site, original, mutated, removed, added, f2p, run, suite)
        factory, verify_runs, timeout_s = context["verify"]
        failed = next((found for found in (check_instance(instance, factory, timeout_s) for _ in range(verify_runs))
                       if not found["ok"]), None)
        if failed is not None:
            reasons["fails the oracle check"] += 1
            log(f"  - {instance['instance_id']}: the oracle check failed ({_describe(failed)})")
            continue
        reasons["kept"] += 1
        kept.append(instance)
        used_scopes.add((site.file, site.scope))
        log(f"  + {instance['instance_id']}: {site.operator} in {site.scope} breaks {len(f2p)} test(s)")
    return kept, tries, reasons


def _classify(run: tasks_lib.PytestRun, suite: _Suite, max_f2p: int) -> tuple[str, list[str]]:
    if run.timed_out:
        return "timed out", []
    if run.duration_s > 2 * suite.duration_s + 5:
        return "makes the tests slow", []  # every evaluation of the task would pay for it
    if any("::" not in node and status == "error" for node, status in run.results.items()):
        return "a test module fails to import", []
    if any(t not in run.results for t in suite.stable):
        return "tests missing from the run", []
    f2p = sorted(t for t in suite.stable if run.results[t] != "passed")
    if not f2p:
        return "no test fails", []
    if len(f2p) > max_f2p:
        return f"breaks more than {max_f2p} tests", []
    return "kept", f2p


def _instance(context: dict[str, Any], site: Site, original: str, mutated: str, removed: list[str],
              added: list[str], f2p: list[str], run: tasks_lib.PytestRun, suite: _Suite) -> dict[str, Any]:
    repo, version, pristine = context["repo"], context["version"], context["pristine"]
    bug_patch = file_diff(site.file, original, mutated)
    with tempfile.TemporaryDirectory(prefix="turngym-swe-digest-") as tmp:
        buggy = Path(tmp) / "tree"
        shutil.copytree(pristine, buggy, symlinks=True)
        (buggy / site.file).write_text(mutated, encoding="utf-8")
        base_commit = tree_digest(buggy)
    files = sorted({t.split("::")[0] for t in f2p})
    p2p = sorted(t for t in suite.stable if t.split("::")[0] in files and run.results.get(t) == "passed")
    instance_id = f"{repo}__{version}__{base_commit[:10]}"
    line = _first_changed_line(original, mutated)
    instance: dict[str, Any] = {
        "instance_id": instance_id, "repo": repo, "version": version, "base_commit": base_commit,
        "patch": file_diff(site.file, mutated, original), "test_patch": "", "problem_statement": "",
        "hints_text": "", "FAIL_TO_PASS": f2p, "PASS_TO_PASS": p2p, "created_at": context["created_at"],
        "turngym": {"sdist": context["sdist"], "sdist_sha256": context["sha"], "bug_patch": bug_patch,
                    "test_files": files, "test_command": suite.test_command, "pythonpath": context["roots"],
                    "mutation": {"operator": site.operator, "file": site.file, "line": line, "scope": site.scope,
                                 "before": "\n".join(removed), "after": "\n".join(added)},
                    "split": "train"},  # assign_splits decides once the package's set is known
    }
    forbidden = [ln.strip() for ln in (*removed, *added) if len(ln.strip()) >= 6] + [site.file]
    rng = random.Random(f"{context['seed']}/{instance_id}")
    statement = problem_statement(repo, version, f2p, run.messages, forbidden, rng)
    if leaks(statement, instance):  # a message quoted the code after all: the names alone
        statement = problem_statement(repo, version, f2p, {}, forbidden, rng)
    instance["problem_statement"] = statement
    return instance


def _first_changed_line(before: str, after: str) -> int:
    for number, (a, b) in enumerate(zip(before.splitlines(), after.splitlines()), 1):
        if a != b:
            return number
    return min(len(before.splitlines()), len(after.splitlines())) + 1


def check_instance(instance: dict[str, Any], sandbox_factory: SandboxFactory,
                   timeout_s: float | None = 600.0) -> dict[str, Any]:
    """The oracle check of one instance on a fresh copy of its buggy tree: ``empty`` (the tests as they are:
    the FAIL_TO_PASS ones must fail, so an empty submission does not resolve it) and ``gold`` (after the
    gold patch: resolved). Returns ``{"ok", "empty", "gold", "seconds"}`` with the test reports."""
    started = time.monotonic()
    sandbox = sandbox_factory(tasks_lib.repo_tree(instance))
    try:
        empty = tasks_lib.run_tests(sandbox, instance, timeout_s=timeout_s)
        try:
            apply_diff(sandbox.workdir, instance["patch"])
        except PatchError as exc:
            return {"ok": False, "error": f"the gold patch does not apply: {exc}",
                    "empty": tasks_lib.test_report(empty, instance), "gold": None,
                    "seconds": time.monotonic() - started}
        gold = tasks_lib.run_tests(sandbox, instance, timeout_s=timeout_s)
    finally:
        sandbox.close()
    empty_report, gold_report = tasks_lib.test_report(empty, instance), tasks_lib.test_report(gold, instance)
    all_fail = empty_report["f2p_passed"] == 0
    ok = gold_report["resolved"] and not empty_report["resolved"] and all_fail
    return {"ok": ok, "empty": empty_report, "gold": gold_report, "seconds": time.monotonic() - started}


def generate(packages: list[str], out: str | Path, per_package: int = 10, seed: int = 0,
             sandbox_backend: str = "bwrap", *, max_f2p: int = 20, max_tries: int | None = None,
             test_fraction: float = 0.3, verify: bool = True, sandbox_factory: SandboxFactory | None = None,
             timeout_s: float = 600.0, log: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    """Generate instances for each of ``packages`` (``NAME==VERSION`` or sdist paths) into the JSONL file
    ``out`` (written atomically), their sdists into ``sdists/`` beside it. Deterministic for a seed (and
    the same sdists and test outcomes). With ``verify``, a mutant is kept only if it passes
    :func:`check_instance` twice, each time in a fresh sandbox. Returns the instances written."""
    from turngym.files import write_text_atomic

    out = Path(out)
    sdist_dir = out.resolve().parent / "sdists"
    if sdist_dir not in tasks_lib._SDIST_DIRS:
        tasks_lib._SDIST_DIRS.append(sdist_dir)  # check_instance rebuilds the buggy trees from there
    factory = sandbox_factory or default_sandbox_factory(sandbox_backend)
    instances: list[dict[str, Any]] = []
    for spec in packages:
        instances += generate_package(spec, per_package, seed, factory, sdist_dir, max_f2p=max_f2p,
                                      max_tries=max_tries, timeout_s=timeout_s, verify_runs=2 if verify else 0,
                                      log=log)
    assign_splits(instances, test_fraction)
    for instance in instances:
        tasks_lib.validate_instance(instance)
    write_text_atomic(out, "".join(json.dumps(i) + "\n" for i in instances))
    return instances


def _describe(found: dict[str, Any]) -> str:
    if found.get("error"):
        return found["error"]
    empty, gold = found["empty"], found["gold"]
    return (f"gold: F2P {gold['f2p_passed']}/{gold['f2p_total']}, P2P {gold['p2p_passed']}/{gold['p2p_total']}; "
            f"empty: F2P {empty['f2p_passed']}/{empty['f2p_total']}")


# ---- the `turngym swe` command ----------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="swe_command", metavar="SWE_COMMAND")
    p = sub.add_parser("generate", help="inject bugs into PyPI packages' sdists and write SWE-bench instances")
    p.add_argument("--package", action="append", required=True, metavar="NAME==VERSION",
                   help="a pinned PyPI package whose sdist ships its tests, or an sdist's path (repeatable)")
    p.add_argument("--per-package", type=int, default=10, help="instances to keep per package")
    p.add_argument("--seed", type=int, default=0, help="seed of the mutation order and the statements' wording")
    p.add_argument("--out", required=True, help="the JSONL file to write (its sdists go to sdists/ beside it)")
    p.add_argument("--backend", default="bwrap", choices=_backends(), help="sandbox the tests run in")
    p.add_argument("--max-f2p", type=int, default=20, help="drop mutants that break more tests than this")
    p.add_argument("--max-tries", type=int, default=None, help="mutants to test per package (default 10 x per-package)")
    p.add_argument("--test-fraction", type=float, default=0.3, help="share of instances in the test split (by id hash)")
    p.add_argument("--no-verify", action="store_true", help="skip the oracle check of each kept instance")
    p = sub.add_parser("check", help="oracle check: the gold patch resolves every instance, an empty patch none")
    p.add_argument("file", nargs="?", default=None, help="a tasks JSONL file (default: the shipped set)")
    p.add_argument("--backend", default="bwrap", choices=_backends(), help="sandbox the tests run in")
    p.add_argument("--instance", action="append", default=[], help="check only this instance id (repeatable)")


def _backends() -> tuple[str, ...]:
    from turngym.envs.swe.sandbox import BACKENDS

    return BACKENDS


def run(args: argparse.Namespace) -> int:
    def say(line: str) -> None:
        print(line, flush=True)

    if args.swe_command == "generate":
        started = time.monotonic()
        instances = generate(args.package, args.out, per_package=args.per_package, seed=args.seed,
                             sandbox_backend=args.backend, max_f2p=args.max_f2p, max_tries=args.max_tries,
                             test_fraction=args.test_fraction, verify=not args.no_verify, log=say)
        splits = Counter(i["turngym"]["split"] for i in instances)
        say(f"wrote {len(instances)} instances ({', '.join(f'{k} {v}' for k, v in sorted(splits.items()))}) to "
            f"{args.out} in {time.monotonic() - started:.0f} s")
        return 0 if instances else 1
    if args.swe_command == "check":
        instances = tasks_lib.load_instances(args.file)
        if args.instance:
            unknown = sorted(set(args.instance) - {i["instance_id"] for i in instances})
            if unknown:
                raise TaskError(f"no instance {unknown[0]!r} in {args.file or tasks_lib.TASKS_FILE}")
            instances = [i for i in instances if i["instance_id"] in set(args.instance)]
        factory = default_sandbox_factory(args.backend)
        failed = 0
        for instance in instances:
            found = check_instance(instance, factory)
            failed += not found["ok"]
            say(f"{'ok  ' if found['ok'] else 'FAIL'} {instance['instance_id']}: {_describe(found)} "
                f"({found['seconds']:.1f} s)")
        say(f"{len(instances) - failed}/{len(instances)} instances pass the oracle check")
        return 1 if failed else 0
    print("usage: turngym swe {generate,check} ... (turngym swe generate --help)", file=sys.stderr)
    return 2
