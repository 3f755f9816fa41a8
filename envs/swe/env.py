"""SWE (SWE-bench / R2E-Gym / SWE-smith): fix a bug in a Python repository, in a sandbox.

This module depends on nothing of ours but :mod:`turngym.envs.core`, :mod:`turngym.errors` and this package.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import shlex
import shutil
import sys
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from turngym.envs.core import TextEnv, Transition, stable_digest
from turngym.envs.swe import tasks as tasks_lib
from turngym.envs.swe.actions import (
    EDIT_TOOLS,
    REPO_ROOT,
    SKIP_DIRS,
    ActionError,
    FileTools,
    format_call,
    parse_call,
    truncate,
)
from turngym.envs.swe.patches import apply_diff, tree_diff
from turngym.envs.swe.sandbox import BACKENDS, Limits, make_sandbox
from turngym.errors import TaskError, TurngymError

#: fields every instance has (SWE-bench's)
INSTANCE_FIELDS = ("instance_id", "repo", "base_commit", "patch", "problem_statement", "FAIL_TO_PASS", "PASS_TO_PASS")
#: files an evaluation takes from the shipped tree whatever the agent did to them (SWE-bench re-applies
#: its test patch over the model's patch the same way): tests, conftest files and test-runner configs
TEST_CONFIG_FILES = frozenset({"conftest.py", "pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml", "noxfile.py"})
TEST_DIRS = frozenset({"tests", "test", "testing"})
UNDO_DEPTH = 10
#: what info["tests"] holds after a measurement
REPORT_COUNTS = ("f2p_passed", "f2p_total", "p2p_passed", "p2p_total")
_REPO_IN_COMMAND = re.compile(r"(?<![\w./-])/repo(?=[/\s'\";|&)`]|$)")
_EVALUATIONS: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
_EVALUATIONS_LOCK = threading.Lock()
_BASE_FILES: dict[str, dict[str, bytes]] = {}
_FIXED_FILES: dict[str, dict[str, bytes | None]] = {}


def default_backend() -> str:
    """``bwrap`` on Linux (isolating); elsewhere ``docker``. ``local`` is never the default: it does not isolate."""
    return "bwrap" if sys.platform.startswith("linux") else "docker"


def is_test_path(rel: str, instance: dict[str, Any]) -> bool:
    """Whether the evaluation ignores the agent's changes to ``rel`` (a test, a conftest, a test config)."""
    parts = rel.split("/")
    name = parts[-1]
    test_files = set(instance.get("turngym", {}).get("test_files", ()))
    return (rel in test_files or name in TEST_CONFIG_FILES or name.startswith("test_") or name.endswith("_test.py")
            or any(p in TEST_DIRS for p in parts[:-1]))


def _walk(root: Path) -> dict[str, Path]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in filenames:
            if name.endswith((".pyc", ".pyo")):
                continue
            path = Path(dirpath) / name
            if path.is_symlink() or path.is_file():
                out[path.relative_to(root).as_posix()] = path
    return out


def _read_bytes(path: Path) -> bytes:
    if path.is_symlink():
        return b"symlink:" + os.readlink(path).encode("utf-8", "surrogateescape")
    return path.read_bytes()


def base_files(instance: dict[str, Any]) -> dict[str, bytes]:
    """Every file of the instance's buggy tree (path -> bytes), read once per process."""
    key = instance["instance_id"] + "@" + instance["base_commit"]
    if key not in _BASE_FILES:
        root = tasks_lib.repo_tree(instance)
        _BASE_FILES[key] = {rel: _read_bytes(p) for rel, p in _walk(root).items()}
    return _BASE_FILES[key]


def fixed_files(instance: dict[str, Any]) -> dict[str, bytes | None]:
    """The files the gold patch changes, as the patch leaves them (None: the patch deletes it)."""
    key = instance["instance_id"] + "@" + instance["base_commit"]
    if key not in _FIXED_FILES:
        base = base_files(instance)
        with tempfile.TemporaryDirectory(prefix="turngym-swe-gold-") as tmp:
            root = Path(tmp)
            for rel, data in base.items():
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(data)
            apply_diff(root, instance["patch"])
            after = {rel: _read_bytes(p) for rel, p in _walk(root).items()}
        _FIXED_FILES[key] = {rel: after.get(rel) for rel in set(after) | set(base) if after.get(rel) != base.get(rel)}
    return _FIXED_FILES[key]


def evaluate_changes(instance: dict[str, Any], changes: dict[str, bytes | None], backend: str,
                     limits: Limits | None = None) -> dict[str, Any]:
    """Run the instance's tests on its buggy tree with ``changes`` (path -> new bytes, None = deleted) applied,
    leaving out changes to test files; memoized per process on the changes' digest.

    Returns ``{"resolved", "report", "results"}``: SWE-bench's resolved (every FAIL_TO_PASS and every
    PASS_TO_PASS test passes), the counts of :func:`tasks.test_report` and per-test outcomes.
    """
    kept = {rel: data for rel, data in changes.items() if not is_test_path(rel, instance)}
    digest = hashlib.sha1(repr(sorted(kept.items())).encode("utf-8", "surrogateescape")).hexdigest()
    key = (instance["instance_id"], instance["base_commit"], digest, backend)
    with _EVALUATIONS_LOCK:
        if key in _EVALUATIONS:
            _EVALUATIONS.move_to_end(key)
            return _EVALUATIONS[key]
    sandbox = make_sandbox(backend, tasks_lib.repo_tree(instance), limits)
    try:
        write_changes(sandbox.workdir, kept)
        results = tasks_lib.run_tests(sandbox, instance)
    finally:
        sandbox.close()
    found = {"resolved": tasks_lib.resolved(results, instance), "report": tasks_lib.test_report(results, instance),
             "results": results}
    with _EVALUATIONS_LOCK:
        _EVALUATIONS[key] = found
        while len(_EVALUATIONS) > 512:
            _EVALUATIONS.popitem(last=False)
    return found


def write_changes(root: Path, changes: dict[str, bytes | None]) -> None:
    for rel, data in changes.items():
        target = root / rel
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        if data is None:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if data.startswith(b"symlink:"):
            os.symlink(data[len(b"symlink:"):].decode("utf-8", "surrogateescape"), target)
        else:
            target.write_bytes(data)


class SWEEnv(TextEnv):
    """SWE: fix a bug in a Python repository so its failing tests pass and nothing else breaks (SWE-bench / R2E-Gym).

    **Observations.** At reset, the issue (the task's ``problem_statement``), then the repository's
    name, version and top-level listing, and the action syntax. After each action, its output: a
    command's output with its exit code, a file view with line numbers, the edited lines, search
    matches, a test run's report; long outputs keep their head and tail with a note between.
    Absolute paths of the host's work copy are shown as ``/repo``.

    **Actions.** One function call per turn, in R2E-Gym's text form (the JSON tools of ``tools.json``
    render to it)::

        <function=NAME>
        <parameter=ARG>value</parameter>
        </function>

    ``bash(command)`` runs a shell command in the sandbox, at the repository root (no network,
    read-only system, limits on time, CPU, memory, processes, output); ``view(path)`` shows a file with
    line numbers (its first 400 lines) or a folder two levels deep; ``view_range(path, start, end)``
    (end -1: the last line); ``search(term, path)`` (fixed string; path ``.`` for the whole repository);
    ``str_replace(path, old_str, new_str)`` (old_str must occur exactly once); ``insert(path, line,
    new_str)`` (after that line, 0 = at the top); ``create(path, file_text)`` (a new file);
    ``undo_edit(path)`` (reverts the last edit tool on that file); ``run_tests(tests)`` (pytest on test
    files or node ids separated by spaces; empty: the task's test files); ``submit()``. Paths are
    relative to the repository root (``/repo/...`` is the same). An action that cannot be parsed or
    carried out (an unknown function, a missing parameter, a path outside the repository, an old_str
    not found or not unique) is invalid: it changes nothing and the observation says what is wrong.
    A command that fails is a valid action; its exit code is shown.

    **Rewards.** 1.0 on ``submit`` when the submission resolves the task (SWE-bench's rule: after the
    agent's changes every FAIL_TO_PASS and every PASS_TO_PASS test passes), else 0; every other step 0
    (plus ``invalid_action_penalty`` on an invalid action). The evaluation runs the task's tests in a
    fresh sandbox on the buggy tree with the agent's changes to source files (changes to tests,
    conftest files and test configs are left out, as SWE-bench re-applies its test patch).

    **Termination.** On ``submit``. Truncation after ``max_episode_steps`` actions (40) from
    Gymnasium's ``TimeLimit``.

    **Info.** ``task_id``, ``instruction``, ``action_valid``, ``won`` (submitted and resolved),
    ``state_key`` (digest of the repository's changes, the edits undo can reach and the last test
    measurement), ``progress`` (the share of FAIL_TO_PASS tests that pass, measured at each
    ``run_tests`` and at ``submit``, 0 before; never shown to agents), ``tests`` (after a measurement:
    FAIL_TO_PASS and PASS_TO_PASS passed/total), ``patch`` (after ``submit``: the submitted diff).

    **Tasks.** The shipped set (``data/tasks.jsonl``): bugs injected with libcst into pinned PyPI
    packages whose sdists ship their tests, each with the failing tests and a gold patch (SWE-smith's
    method; ``turngym swe generate`` makes more). Splits ``train`` and ``test`` (by the instance's
    ``turngym.split``). ``tasks_file`` loads another file in the same format; a custom task is
    ``reset(options={"task": instance})``.

    Args:
        split: ``"train"`` (default) or ``"test"``.
        tasks_file: a JSONL file of instances (default: the shipped set).
        backend: the sandbox: ``"bwrap"`` (default on Linux), ``"docker"``, or ``"local"`` (a plain
            subprocess that does not isolate: only for trusted agents).
        limits: :class:`~turngym.envs.swe.sandbox.Limits` fields (e.g. ``{"timeout_s": 30}``).
        max_output_chars: the longest tool output shown (head and tail kept).
        invalid_action_penalty: reward added on an invalid action (default 0).
        render_mode: ``None``, ``"ansi"`` or ``"human"``.

    Version History:
        * v0: initial version.
    """

    default_split = "train"

    def __init__(self, split: str | None = None, tasks_file: str | None = None, backend: str | None = None,
                 limits: dict[str, Any] | None = None, max_output_chars: int = 8000,
                 invalid_action_penalty: float = 0.0, render_mode: str | None = None):
        backend = backend or default_backend()
        if backend not in BACKENDS:
            raise TaskError(f"unknown SWE sandbox backend {backend!r}; use one of {BACKENDS}")
        try:
            self.limits = Limits(**(limits or {}))
        except TypeError as exc:
            raise TaskError(f"SWE limits {limits!r}: {exc}; the fields are those of turngym.envs.swe.sandbox.Limits") from None
        self.backend = backend
        self.max_output_chars = int(max_output_chars)
        self.instances = tasks_lib.load_instances(tasks_file)
        self._by_split: dict[str, list[dict[str, Any]]] = {}
        for inst in self.instances:
            self._by_split.setdefault(inst.get("turngym", {}).get("split", "test"), []).append(inst)
        self._sandbox: Any = None
        self._tools: FileTools | None = None
        self._undo: dict[str, list[bytes | None]] = {}
        self._measured: dict[str, Any] | None = None
        self._resolved = False
        self._patch = ""
        super().__init__(split=split, invalid_action_penalty=invalid_action_penalty, render_mode=render_mode)

    # ---- tasks --------------------------------------------------------------------------
    def splits(self) -> dict[str, int]:
        return {name: len(items) for name, items in self._by_split.items()}

    def load_task(self, split: str, index: int) -> dict[str, Any]:
        return dict(self._by_split[split][index])

    def validate_task(self, task: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(task, dict):
            raise TaskError(f"an SWE task must be an instance dict, got {type(task).__name__}")
        missing = [k for k in INSTANCE_FIELDS if k not in task]
        if missing:
            raise TaskError(f"SWE task lacks field(s) {missing}; an instance has SWE-bench's fields "
                            f"{', '.join(INSTANCE_FIELDS)} (see envs/swe/README.md)")
        checked = tasks_lib.validate_instance(dict(task))
        if "turngym" not in checked and self.backend != "docker":
            raise TaskError("an SWE-bench row without turngym's 'turngym' field needs its per-instance Docker image: "
                            "use backend='docker'")
        return checked

    # ---- episode ------------------------------------------------------------------------
    @property
    def instruction(self) -> str:
        if self.task is None:
            return "Fix the issue in the repository so that its failing tests pass and no other test breaks, then submit."
        return self.task["problem_statement"].strip()

    def _start(self, task: dict[str, Any]) -> str:
        self._open(task)
        self._undo, self._measured, self._resolved, self._patch = {}, None, False, ""
        listing = self._tools.view(".").split("\n", 1)[1] if self._tools else ""
        version = f" {task['version']}" if task.get("version") else ""
        return (f"Repository: {task['repo']}{version}, at {REPO_ROOT} (your commands run there; python and pytest "
                f"are installed; there is no network).\n{listing}\n\n"
                "Fix the issue so that its failing tests pass and no other test breaks, then submit. One function "
                "call per turn:\n" + format_call("NAME", ARG="value") + "\nFunctions: bash(command), view(path), "
                "view_range(path, start, end), search(term, path), str_replace(path, old_str, new_str), "
                "insert(path, line, new_str), create(path, file_text), undo_edit(path), run_tests(tests), submit().")

    def _open(self, task: dict[str, Any]) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None
        self._sandbox = make_sandbox(self.backend, tasks_lib.repo_tree(task), self.limits)
        self._tools = FileTools(self._sandbox.workdir)

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None
        super().close()

    def _apply(self, action: str) -> Transition:
        if self._sandbox is None:
            raise TurngymError("the SWE env was closed: call reset() to start an episode")
        try:
            call = parse_call(action)
            handler = getattr(self, f"_do_{call.name}")
            return handler(**call.args)
        except ActionError as exc:
            return Transition(f"Invalid action: {exc}", valid=False)

    def _do_bash(self, command: str) -> Transition:
        if not command.strip():
            raise ActionError("bash needs a command")
        # /repo in a command is the work copy (its host path, which outputs show as /repo again)
        command = _REPO_IN_COMMAND.sub(lambda _m: str(self._sandbox.workdir), command)
        result = self._sandbox.run(command, env=self._command_env())
        out = self._clean(result.output)
        status = (f"[timed out after {self.limits.timeout_s:g} s: the command was killed]" if result.timed_out
                  else f"[exit code {result.returncode}]")
        return Transition(f"{out}\n{status}" if out.strip() else status, valid=True)

    def _do_view(self, path: str) -> Transition:
        return Transition(self._clean(self._tools.view(path)), valid=True)

    def _do_view_range(self, path: str, start: str, end: str) -> Transition:
        return Transition(self._clean(self._tools.view_range(path, start, end)), valid=True)

    def _do_search(self, term: str, path: str) -> Transition:
        return Transition(self._clean(self._tools.search(term, path or ".")), valid=True)

    def _edit(self, name: str, *args: str) -> Transition:
        message, real, before = getattr(self._tools, name)(*args)
        rel = real.relative_to(self._sandbox.workdir.resolve()).as_posix()
        stack = self._undo.setdefault(rel, [])
        stack.append(None if before is None else before.encode("utf-8"))
        del stack[:-UNDO_DEPTH]
        return Transition(self._clean(message), valid=True)

    def _do_str_replace(self, path: str, old_str: str, new_str: str) -> Transition:
        return self._edit("str_replace", path, old_str, new_str)

    def _do_insert(self, path: str, line: str, new_str: str) -> Transition:
        return self._edit("insert", path, line, new_str)

    def _do_create(self, path: str, file_text: str) -> Transition:
        return self._edit("create", path, file_text)

    def _do_undo_edit(self, path: str) -> Transition:
        real = self._tools.resolve(path, must_exist=False)
        rel = real.relative_to(self._sandbox.workdir.resolve()).as_posix()
        if not self._undo.get(rel):
            raise ActionError(f"no edit of {self._tools.show(real)} to undo (undo reverts {', '.join(EDIT_TOOLS)})")
        before = self._undo[rel].pop()
        if not self._undo[rel]:
            del self._undo[rel]
        write_changes(self._sandbox.workdir, {rel: before})
        what = "removed it" if before is None else "restored its text before that edit"
        return Transition(f"undid the last edit of {self._tools.show(real)}: {what}", valid=True)

    def _do_run_tests(self, tests: str) -> Transition:
        targets = tests.split() or list(self.task.get("turngym", {}).get("test_files", ()))
        for target in targets:
            if target.startswith("-"):
                raise ActionError(f"{target!r}: run_tests takes test files or node ids; run pytest with options through bash")
            self._tools.resolve(target.split("::")[0])
        command = " ".join([shlex.quote(sys.executable), "-m", "pytest", "-p", "no:cacheprovider", "-q", "--tb=short",
                            "--color=no", *map(shlex.quote, targets)])
        result = self._sandbox.run(command, env=self._command_env())
        self._measure()
        status = "[timed out: the test run was killed]" if result.timed_out else f"[exit code {result.returncode}]"
        return Transition(f"{self._clean(result.output)}\n{status}", valid=True)

    def _do_submit(self) -> Transition:
        found = self._measure()
        self._resolved = bool(found["resolved"])
        self._patch = tree_diff(tasks_lib.repo_tree(self.task), self._sandbox.workdir)
        report = found["report"]
        verdict = "resolved" if self._resolved else "not resolved"
        text = (f"Submitted. The task's tests after your changes: {report['f2p_passed']}/{report['f2p_total']} of the "
                f"tests that failed now pass, {report['p2p_passed']}/{report['p2p_total']} of the tests that passed "
                f"still pass: {verdict}.")
        return Transition(text, valid=True, reward=1.0 if self._resolved else 0.0, terminated=True)

    def _measure(self) -> dict[str, Any]:
        found = evaluate_changes(self.task, dict(self._snapshot_files()), self.backend, self.limits)
        counts = {k: int(found["report"][k]) for k in REPORT_COUNTS}  # counts only: the test names stay hidden
        self._measured = {"report": counts, "resolved": bool(found["resolved"])}
        return found

    def _command_env(self) -> dict[str, str]:
        paths = self.task.get("turngym", {}).get("pythonpath", ["."])
        # the sandbox sets PATH (its python first), HOME and nothing of the host's environment
        return {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": ":".join(str(self._sandbox.workdir / p) for p in paths)}

    def _clean(self, text: str) -> str:
        if self._sandbox is not None:
            for root in {str(self._sandbox.workdir), str(self._sandbox.workdir.resolve())}:
                text = text.replace(root, REPO_ROOT)
        return truncate(text, self.max_output_chars)

    # ---- state --------------------------------------------------------------------------
    def _snapshot_files(self) -> tuple[tuple[str, bytes | None], ...]:
        """The repository's changes against the task's buggy tree: (path, bytes or None if deleted), sorted."""
        base = base_files(self.task)
        work = _walk(self._sandbox.workdir)
        changed = []
        for rel in sorted(set(base) | set(work)):
            now = _read_bytes(work[rel]) if rel in work else None
            if now != base.get(rel):
                changed.append((rel, now))
        return tuple(changed)

    def _restore_files(self, files: dict[str, bytes | None]) -> None:
        base = base_files(self.task)
        current = dict(self._snapshot_files())
        write_changes(self._sandbox.workdir, {rel: base.get(rel) for rel in current if rel not in files})
        write_changes(self._sandbox.workdir, {rel: data for rel, data in files.items() if current.get(rel, base.get(rel)) != data})

    def _get_state(self) -> tuple:
        undo = tuple(sorted((rel, tuple(stack)) for rel, stack in self._undo.items()))
        measured = None if self._measured is None else (tuple(sorted(self._measured["report"].items())),
                                                        self._measured["resolved"])
        return (self._snapshot_files(), undo, measured, self._resolved, self._patch)

    def _set_state(self, state: Any) -> None:
        files, undo, measured, resolved, patch = state
        if self._sandbox is None or self._tools is None:
            self._open(self.task)
        self._restore_files(dict(files))
        self._undo = {rel: list(stack) for rel, stack in undo}
        self._measured = None if measured is None else {"report": dict(measured[0]), "resolved": measured[1]}
        self._resolved, self._patch = resolved, patch

    def state_key(self) -> str:
        files, undo, measured, resolved, _patch = self._get_state()

        def h(data: bytes | None) -> str | None:
            return None if data is None else hashlib.sha1(data).hexdigest()

        return stable_digest([[[rel, h(d)] for rel, d in files],
                              [[rel, [h(d) for d in stack]] for rel, stack in undo], measured, resolved])

    @property
    def won(self) -> bool:
        return self._done and self._resolved

    def progress(self) -> float:
        if self._resolved:
            return 1.0
        if self._measured is None:
            return 0.0
        report = self._measured["report"]
        return report["f2p_passed"] / report["f2p_total"] if report["f2p_total"] else 0.0

    def _info(self, action_valid: bool) -> dict[str, Any]:
        info = super()._info(action_valid)
        if self._measured is not None:
            info["tests"] = dict(self._measured["report"])
        if self._done and self._patch:
            info["patch"] = self._patch
        return info

    # ---- oracle ----------------------------------------------------------------------------
    def oracle_action(self) -> str:
        """Edit the repository towards the gold patch's tree, one str_replace (or insert, create, rm) at a time:
        the gold patch's files to their fixed text, every other changed file back to the shipped one; then submit."""
        base, fixed = base_files(self.task), fixed_files(self.task)
        current = dict(self._snapshot_files())
        targets = {rel: fixed[rel] for rel in fixed}
        targets.update({rel: base.get(rel) for rel in current if rel not in fixed})
        for rel in sorted(targets):
            want = targets[rel]
            have = current.get(rel, base.get(rel))
            if have == want:
                continue
            if have is None:
                return format_call("create", path=rel, file_text=want.decode("utf-8"))
            if want is None or have.startswith(b"symlink:") or want.startswith(b"symlink:"):
                return format_call("bash", command=f"rm -f -- {shlex.quote(rel)}")
            edit = _edit_towards(rel, have.decode("utf-8", "replace"), want.decode("utf-8", "replace"))
            if edit is not None:
                return edit
            return format_call("bash", command=f"rm -f -- {shlex.quote(rel)}")  # then create it whole
        return format_call("submit")

    def illegal_actions(self) -> list[str]:
        return [format_call("view", path="../../etc/passwd"), format_call("view", path="/etc/passwd"),
                format_call("str_replace", path="no_such_file.py", old_str="a", new_str="b"),
                format_call("undo_edit", path="README.md"), format_call("bash", command="  "),
                format_call("run_tests", tests="--version"), format_call("frobnicate"),
                "<function=submit>", format_call("view", path="x") + "\n" + format_call("submit")]


def _edit_towards(rel: str, have: str, want: str) -> str | None:
    """One str_replace or insert that takes the first differing lines of ``have`` to ``want``'s (None if none fits)."""
    a, b = have.split("\n"), want.split("\n")
    ops = [op for op in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes() if op[0] != "equal"]
    if not ops:
        return None
    _tag, i1, i2, j1, j2 = ops[0]
    if i1 == i2:  # a pure insertion
        return format_call("insert", path=rel, line=str(i1), new_str="\n".join(b[j1:j2]))
    lo, jlo = i1, j1
    if j1 == j2:  # a pure deletion: keep a line before (or after) in both strings so the newline goes too
        if i1 > 0:
            lo, jlo = i1 - 1, j1 - 1
        elif i2 < len(a):
            old, new = "\n".join(a[i1:i2 + 1]), "\n".join(b[j2:j2 + 1])
            return format_call("str_replace", path=rel, old_str=old, new_str=new) if have.count(old) == 1 else None
    while True:
        old, new = "\n".join(a[lo:i2]), "\n".join(b[jlo:j2])
        if old and have.count(old) == 1:
            return format_call("str_replace", path=rel, old_str=old, new_str=new)
        if lo == 0:
            return None
        lo, jlo = lo - 1, jlo - 1
