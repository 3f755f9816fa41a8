"""SWE tasks: SWE-bench instances, the buggy trees they start from, and running and grading their tests.

An instance is a SWE-bench row (``instance_id``, ``repo``, ``base_commit``, ``patch``, ``test_patch``,
``problem_statement``, ``hints_text``, ``version``, ``FAIL_TO_PASS``, ``PASS_TO_PASS``, ``created_at``)
plus, for turngym's own tasks, a ``turngym`` field that makes it self-contained offline:

* ``sdist``/``sdist_sha256``: the PyPI source distribution the tree comes from (shipped in ``data/sdists/``),
* ``bug_patch``: the diff that injected the bug into the pristine tree (the gold ``patch`` is its reverse),
* ``test_files``, ``test_command`` (the pytest command without the test files), ``pythonpath``,
* ``mutation`` (what ``generate.py`` changed; never shown to agents) and ``split`` (``train``/``test``).

``base_commit`` is then the :func:`~turngym.envs.swe.patches.tree_digest` of the buggy tree.
:func:`repo_tree` rebuilds that tree once into turngym's cache and checks the digest. SWE-bench's rule
grades a run: resolved when every FAIL_TO_PASS and every PASS_TO_PASS test passes (:func:`resolved`).

Real SWE-bench and SWE-Gym rows load with :func:`load_swebench_rows`; they carry no ``turngym`` field
and no tree: their repository, environment and tests live in the per-instance Docker images of the
SWE-bench harness (``docker_image``), so they need the ``docker`` backend and that harness's test
commands.

This module depends on nothing of ours but :mod:`turngym.errors`, :mod:`turngym.envs.swe.patches` and
(for its ``Sandbox`` protocol) :mod:`turngym.envs.swe.sandbox`; it never imports libcst.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import tarfile
import tempfile
import uuid
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turngym.envs.swe.patches import PatchError, apply_diff, tree_digest
from turngym.errors import EnvFaultError, TaskError
from turngym.files import cache_dir

DATA_DIR = Path(__file__).resolve().parent / "data"
TASKS_FILE = DATA_DIR / "tasks.jsonl"
SDIST_DIR = DATA_DIR / "sdists"
SPLITS = ("train", "test")
#: the pytest command of an instance, without its test files (``python`` is the sandbox's interpreter)
DEFAULT_TEST_COMMAND = "python -m pytest -p no:cacheprovider"
#: fields every instance has, as SWE-bench spells them (the others get SWE-bench's empty defaults)
REQUIRED_FIELDS = ("instance_id", "repo", "base_commit", "patch", "problem_statement", "FAIL_TO_PASS", "PASS_TO_PASS")
TEXT_FIELDS = ("instance_id", "repo", "base_commit", "patch", "test_patch", "problem_statement", "hints_text",
               "version", "created_at")
TEST_FIELDS = ("FAIL_TO_PASS", "PASS_TO_PASS")
#: the keys of the ``turngym`` field
TURNGYM_FIELDS = ("sdist", "sdist_sha256", "bug_patch", "test_files", "test_command", "pythonpath", "split")
#: status of one test in :func:`run_tests`' results (a test absent from them did not run: count it failed)
STATUSES = ("passed", "failed", "error", "skipped")
MAX_REPORT_BYTES = 64 * 1024 * 1024
#: extra folders where load_instances found sdists (a generated file keeps its sdists beside it, in sdists/)
_SDIST_DIRS: list[Path] = []




# ---- loading and validating -------------------------------------------------------------------


def _bad(where: str, instance: dict[str, Any], name: str, why: str) -> TaskError:
    iid = instance.get("instance_id")
    who = f"instance {iid!r}" if isinstance(iid, str) else "an instance"
    return TaskError(f"{where}{who}: field '{name}' {why}")


def _is_test_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, str) and t for t in value)


def validate_instance(instance: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Check an instance's fields; returns a copy with SWE-bench's optional fields filled in
    (``test_patch``, ``hints_text``, ``version``, ``created_at``: ``""``). A bad field is a
    :class:`~turngym.errors.TaskError` naming the instance and the field (``where`` prefixes it)."""
    if not isinstance(instance, dict):
        raise TaskError(f"{where}an instance must be a JSON object, got {type(instance).__name__}")
    for name in REQUIRED_FIELDS:
        if name not in instance:
            raise _bad(where, instance, name, "is missing (an instance has SWE-bench's fields: "
                                              f"{', '.join(REQUIRED_FIELDS)})")
    out = dict(instance)
    for name in TEXT_FIELDS:
        out.setdefault(name, "")
        if not isinstance(out[name], str):
            raise _bad(where, out, name, f"must be a string, got {type(out[name]).__name__}")
    for name in ("instance_id", "repo", "base_commit", "problem_statement"):
        if not out[name].strip():
            raise _bad(where, out, name, "is empty")
    for name in TEST_FIELDS:
        if not _is_test_list(out[name]):
            raise _bad(where, out, name, "must be a list of test ids (non-empty strings)")
    if not out["FAIL_TO_PASS"]:
        raise _bad(where, out, "FAIL_TO_PASS", "is empty: an instance needs at least one failing test to fix")
    both = sorted(set(out["FAIL_TO_PASS"]) & set(out["PASS_TO_PASS"]))
    if both:
        raise _bad(where, out, "PASS_TO_PASS", f"repeats FAIL_TO_PASS test(s) {both[:3]}")
    if "turngym" in out:
        out["turngym"] = _validate_turngym(out, where)
    return out


def _validate_turngym(instance: dict[str, Any], where: str) -> dict[str, Any]:
    meta = instance["turngym"]
    if not isinstance(meta, dict):
        raise _bad(where, instance, "turngym", "must be an object")
    for key in TURNGYM_FIELDS:
        if key not in meta:
            raise _bad(where, instance, f"turngym.{key}", "is missing")
    for key in ("sdist", "bug_patch", "test_command"):
        if not isinstance(meta[key], str) or not meta[key].strip():
            raise _bad(where, instance, f"turngym.{key}", "must be a non-empty string")
    if "/" in meta["sdist"] or "\\" in meta["sdist"] or meta["sdist"].startswith("."):
        raise _bad(where, instance, "turngym.sdist", "must be a file name (the sdist is looked up in sdists/ folders)")
    if not (isinstance(meta["sdist_sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", meta["sdist_sha256"])):
        raise _bad(where, instance, "turngym.sdist_sha256", "must be 64 lowercase hex digits")
    for key in ("test_files", "pythonpath"):
        if not _is_test_list(meta[key]) or not meta[key]:
            raise _bad(where, instance, f"turngym.{key}", "must be a non-empty list of relative paths")
        for rel in meta[key]:
            if rel.startswith("/") or ".." in rel.split("/"):
                raise _bad(where, instance, f"turngym.{key}", f"holds {rel!r}, not a path inside the repository")
    if meta["split"] not in SPLITS:
        raise _bad(where, instance, "turngym.split", f"must be one of {SPLITS}, got {meta['split']!r}")
    if not shlex.split(meta["test_command"])[:1] or shlex.split(meta["test_command"])[0] not in ("python", "python3"):
        raise _bad(where, instance, "turngym.test_command", "must start with 'python' (e.g. "
                                                            f"{DEFAULT_TEST_COMMAND!r})")
    files = set(meta["test_files"])
    for name in TEST_FIELDS:
        outside = [t for t in instance[name] if t.split("::")[0] not in files]
        if outside:
            raise _bad(where, instance, name, f"names test(s) outside turngym.test_files: {outside[:3]}")
    return dict(meta)


def load_instances(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The instances of a JSONL file (one JSON object a line; default: the shipped ``data/tasks.jsonl``),
    validated. The sdists of a generated file are looked up in ``sdists/`` beside it (then in the
    shipped ``data/sdists/`` and turngym's cache)."""
    path = Path(path) if path is not None else TASKS_FILE
    if not path.is_file():
        hint = " (the shipped tasks are missing: reinstall turngym)" if path == TASKS_FILE else (
            "; make one with `turngym swe generate --out FILE`")
        raise TaskError(f"no SWE tasks file at {path}{hint}")
    instances, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}: "
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskError(f"{where}not a JSON object ({exc.msg}); a tasks file holds one instance a line") from None
            instance = validate_instance(row, where)
            if instance["instance_id"] in seen:
                raise TaskError(f"{where}instance {instance['instance_id']!r} repeats the one on line "
                                f"{seen[instance['instance_id']]}")
            seen[instance["instance_id"]] = line_no
            instances.append(instance)
    if not instances:
        raise TaskError(f"{path} holds no instance")
    beside = path.resolve().parent / "sdists"
    if beside.is_dir() and beside != SDIST_DIR and beside not in _SDIST_DIRS:
        _SDIST_DIRS.append(beside)
    return instances


def load_swebench_rows(path_or_rows: str | os.PathLike | Iterable[dict[str, Any]],
                       image_namespace: str = "swebench") -> list[dict[str, Any]]:
    """Rows of SWE-bench, SWE-bench Lite/Verified or SWE-Gym (a JSONL or JSON file, a Parquet file when
    pyarrow is installed, or the rows themselves) as instances.

    FAIL_TO_PASS/PASS_TO_PASS may be JSON strings (as those datasets store them); ``version`` may be a
    number. Each instance gets ``docker_image``: the row's own (``docker_image`` or ``image_name``) or
    the SWE-bench harness's name for its per-instance image,
    ``{image_namespace}/sweb.eval.x86_64.{instance_id}:latest`` with ``__`` written ``_1776_``
    (``swebench`` for SWE-bench; SWE-Gym's images are under ``xingyaoww``). Such instances have no
    ``turngym`` field: their tree and tests live in that image (the ``docker`` backend)."""
    if isinstance(path_or_rows, (str, os.PathLike)):
        rows, source = _read_rows(Path(path_or_rows)), str(path_or_rows)
    else:
        rows, source = list(path_or_rows), "rows"
    instances = []
    for k, row in enumerate(rows, 1):
        where = f"{source}: row {k}: "
        if not isinstance(row, dict):
            raise TaskError(f"{where}a row must be a JSON object, got {type(row).__name__}")
        out = {key: value for key, value in row.items() if key != "turngym"}
        for name in TEST_FIELDS:
            value = out.get(name)
            if isinstance(value, str):
                try:
                    out[name] = json.loads(value)
                except json.JSONDecodeError:
                    raise _bad(where, out, name, "is a string but not a JSON list of test ids") from None
            elif value is not None and not isinstance(value, list):
                out[name] = list(value)  # a numpy array from parquet
        for name in ("version", "created_at"):
            if out.get(name) is not None and not isinstance(out[name], str):
                value = out[name]
                out[name] = value.isoformat() if hasattr(value, "isoformat") else str(value)
        for name in ("test_patch", "hints_text", "version", "created_at"):
            if out.get(name) is None:
                out[name] = ""
        instance = validate_instance(out, where)
        image = row.get("docker_image") or row.get("image_name")
        if not image:
            key = f"sweb.eval.x86_64.{instance['instance_id'].lower()}:latest"
            image = f"{image_namespace}/{key}".replace("__", "_1776_")
        instance["docker_image"] = image
        instances.append(instance)
    return instances


def _read_rows(path: Path) -> list[Any]:
    if not path.is_file():
        raise TaskError(f"no SWE-bench rows at {path}")
    if path.suffix == ".parquet":
        from turngym.errors import require

        parquet = require("pyarrow.parquet", "parquet", "reading SWE-bench rows from Parquet")
        return parquet.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return json.loads(text)
    rows = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise TaskError(f"{path}:{line_no}: not a JSON object ({exc.msg})") from None
    return rows


# ---- trees ------------------------------------------------------------------------------------


def _meta(instance: dict[str, Any]) -> dict[str, Any]:
    meta = instance.get("turngym")
    if not isinstance(meta, dict):
        raise TaskError(f"instance {instance.get('instance_id')!r} is a SWE-bench row without turngym's 'turngym' "
                        "field: its repository and tests live in its SWE-bench Docker image "
                        f"({instance.get('docker_image', 'see load_swebench_rows')}); use the docker backend and "
                        "the SWE-bench harness for it")
    return meta


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sdist_path(instance: dict[str, Any]) -> Path:
    """The instance's sdist, checked against its SHA-256: beside its tasks file (``sdists/``), shipped
    (``data/sdists/``) or in turngym's cache (``swe/sdists/``)."""
    meta = _meta(instance)
    seen = []
    for folder in (*_SDIST_DIRS, SDIST_DIR, cache_dir() / "swe" / "sdists"):
        candidate = folder / meta["sdist"]
        if candidate.is_file():
            if sha256_file(candidate) == meta["sdist_sha256"]:
                return candidate
            seen.append(str(candidate))
    found = f"; {', '.join(seen)} differ from its sha256" if seen else ""
    raise TaskError(f"instance {instance['instance_id']!r}: its sdist {meta['sdist']} (sha256 "
                    f"{meta['sdist_sha256'][:12]}...) is not in data/sdists/, in sdists/ beside its tasks file or in "
                    f"{cache_dir() / 'swe' / 'sdists'}{found}")


def extract_sdist(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unpack a source distribution (.tar.gz or .zip) into ``dest`` without its top folder
    (``name-version/``); members that would land outside ``dest`` or are devices are refused."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)

    def strip(name: str) -> str | None:
        parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
        if len(parts) < 2:
            return None  # the top folder itself (or a stray top-level file)
        if ".." in parts or name.startswith("/"):
            raise TaskError(f"{archive.name}: member {name!r} would land outside the tree")
        return "/".join(parts[1:])

    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                rel = strip(info.filename)
                if rel is None or info.is_dir():
                    continue
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(info))
        return dest
    with tarfile.open(archive) as tf:
        members = []
        for member in tf.getmembers():
            rel = strip(member.name)
            if rel is None or not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                continue
            member.name = rel
            if member.islnk():
                member.linkname = strip(member.linkname) or ""
            members.append(member)
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, members=members, filter="data")
        else:  # Python < 3.11.4: the checks above (no absolute or .. paths, regular files and links only)
            tf.extractall(dest, members=members)
    return dest


def _build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """``target`` if it exists, else ``build(tmp)`` in a fresh folder beside it renamed onto it: readers
    never see half a tree, and of two processes building it at once the first rename wins."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name[:16]}.", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def pristine_tree(instance: dict[str, Any]) -> Path:
    """The unmodified tree of the instance's sdist, extracted once into turngym's cache. Read only."""
    meta = _meta(instance)
    target = cache_dir() / "swe" / "pristine" / meta["sdist_sha256"]
    if target.is_dir():
        return target
    archive = sdist_path(instance)
    return _build_once(target, lambda tmp: extract_sdist(archive, tmp))


def repo_tree(instance: dict[str, Any]) -> Path:
    """The instance's buggy tree (the pristine tree with ``bug_patch`` applied), built once into turngym's
    cache (``swe/repos/<base_commit>``) and checked against ``base_commit``. Read only: copy it to work in."""
    meta = _meta(instance)
    target = cache_dir() / "swe" / "repos" / instance["base_commit"]
    if target.is_dir():
        return target
    pristine = pristine_tree(instance)

    def build(tmp: Path) -> None:
        shutil.copytree(pristine, tmp, symlinks=True, dirs_exist_ok=True)
        try:
            apply_diff(tmp, meta["bug_patch"])
        except PatchError as exc:
            raise TaskError(f"instance {instance['instance_id']!r}: its bug_patch does not apply to "
                            f"{meta['sdist']}: {exc}") from None
        digest = tree_digest(tmp)
        if digest != instance["base_commit"]:
            raise TaskError(f"instance {instance['instance_id']!r}: the buggy tree's digest is {digest[:12]}..., "
                            f"its base_commit says {instance['base_commit'][:12]}... (sdist or bug_patch changed)")

    return _build_once(target, build)


# ---- running tests ----------------------------------------------------------------------------


@dataclass
class PytestRun:
    """One pytest run in a sandbox: per-test status and failure message, and the command's result."""

    results: dict[str, str] = field(default_factory=dict)  # node id -> one of STATUSES
    messages: dict[str, str] = field(default_factory=dict)  # node id -> failure/error message (not passed only)
    output: str = ""
    returncode: int | None = None
    timed_out: bool = False
    duration_s: float = 0.0


def _python_for(sandbox: Any) -> str:
    """The interpreter tests run with: the sandbox's own if it names one, ``python`` in a Docker image,
    else this process's (bwrap and local sandboxes see the host's file system)."""
    python = getattr(sandbox, "python", None)
    if python:
        return str(python)
    return "python" if getattr(sandbox, "name", "") == "docker" else sys.executable


def pytest_env(pythonpath: Iterable[str]) -> dict[str, str]:
    """The environment of a test run: the repository's import roots, no byte code, a fixed hash seed
    (set and dict orders and so failure messages stay the same from run to run), no pytest plugins
    from the interpreter's site-packages."""
    return {"PYTHONPATH": os.pathsep.join(pythonpath), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTEST_ADDOPTS": "", "NO_COLOR": "1"}


def run_pytest(sandbox: Any, test_files: Iterable[str], *, pythonpath: Iterable[str] = (".",),
               test_command: str = DEFAULT_TEST_COMMAND, timeout_s: float | None = None) -> PytestRun:
    """Run pytest on ``test_files`` in the sandbox's work copy; per-test outcomes from a JUnit XML report
    written in the work copy and removed after. A test file that fails to import reports its path as
    ``"error"``; a run that died before writing the report gives no results (its tests count as failed)."""
    files = list(dict.fromkeys(test_files))
    report = f".turngym-junit-{uuid.uuid4().hex[:12]}.xml"
    args = shlex.split(test_command)
    if args and args[0] in ("python", "python3"):
        args[0] = _python_for(sandbox)
    args += ["--rootdir=.", "--continue-on-collection-errors", "-q", "--tb=short", "--color=no",
             f"--junitxml={report}", "-o", "junit_family=xunit2", *files]
    command = " ".join(shlex.quote(a) for a in args)
    result = sandbox.run(command, timeout_s=timeout_s, env=pytest_env(pythonpath))
    run = PytestRun(output=result.output, returncode=result.returncode, timed_out=result.timed_out,
                    duration_s=result.duration_s)
    path = Path(sandbox.workdir) / report
    try:
        if path.is_file() and path.stat().st_size <= MAX_REPORT_BYTES:
            run.results, run.messages = parse_junit(path.read_bytes(), files)
    finally:
        path.unlink(missing_ok=True)
    if not run.results and not run.timed_out and (
            result.returncode in (126, 127) or "No module named pytest" in result.output):
        raise EnvFaultError(f"the tests could not start in the {getattr(sandbox, 'name', '')} sandbox (exit code "
                            f"{result.returncode}): {result.output.strip()[-400:]}")
    return run


_WORST = {"failure": "failed", "error": "error", "skipped": "skipped"}
_RANK = {"passed": 0, "skipped": 1, "error": 2, "failed": 3}


def parse_junit(xml: bytes | str, test_files: Iterable[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Per-test status and message from pytest's JUnit XML. pytest writes a test's node id
    ``tests/test_x.py::Class::test[p]`` as classname ``tests.test_x.Class`` and name ``test[p]``;
    the collected ``test_files`` turn the classname back into the node id."""
    dotted = {f.removesuffix(".py").replace("/", "."): f for f in test_files}
    by_length = sorted(dotted, key=len, reverse=True)
    results: dict[str, str] = {}
    messages: dict[str, str] = {}
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return results, messages
    for case in root.iter("testcase"):
        classname, name = case.get("classname") or "", case.get("name") or ""
        node = _node_id(classname, name, dotted, by_length)
        status, message = "passed", ""
        for tag in ("failure", "error", "skipped"):  # the worst first
            child = case.find(tag)
            if child is not None:
                status = _WORST[tag]
                message = child.get("message") or (child.text or "").strip().split("\n", 1)[0]
                break
        if node in results and _RANK[results[node]] >= _RANK[status]:
            continue  # a node reported twice (a test and its teardown): keep the worse outcome
        results[node] = status
        if status != "passed":
            messages[node] = message
    return results, messages


def _node_id(classname: str, name: str, dotted: dict[str, str], by_length: list[str]) -> str:
    if not classname:  # a file that failed to collect: pytest writes its dotted path as the name
        return dotted.get(name, name.replace(".", "/") + ".py")
    for prefix in by_length:
        if classname == prefix:
            return f"{dotted[prefix]}::{name}"
        if classname.startswith(prefix + "."):
            return "::".join([dotted[prefix], *classname[len(prefix) + 1:].split("."), name])
    return f"{classname.replace('.', '/')}.py::{name}"


def run_tests(sandbox: Any, instance: dict[str, Any], tests: list[str] | None = None,
              timeout_s: float | None = 600.0) -> dict[str, str]:
    """Run an instance's tests in the sandbox (over a work copy of its tree): ``tests`` (node ids; their
    files are run) or all of its ``test_files``. Returns node id -> ``passed``/``failed``/``error``/
    ``skipped`` (only the requested tests when ``tests`` is given); a test missing from the result did
    not run (its file failed to import, the run timed out or crashed): count it failed."""
    meta = _meta(instance)
    files = list(dict.fromkeys(t.split("::")[0] for t in tests)) if tests else list(meta["test_files"])
    run = run_pytest(sandbox, files, pythonpath=meta["pythonpath"], test_command=meta["test_command"],
                     timeout_s=timeout_s)
    if tests:
        wanted = set(tests)
        return {node: status for node, status in run.results.items() if node in wanted}
    return run.results


def resolved(results: dict[str, str], instance: dict[str, Any]) -> bool:
    """SWE-bench's rule: every FAIL_TO_PASS and every PASS_TO_PASS test passed (a missing one did not)."""
    return all(results.get(t) == "passed" for t in (*instance["FAIL_TO_PASS"], *instance["PASS_TO_PASS"]))


def test_report(results: dict[str, str], instance: dict[str, Any], show: int = 5) -> dict[str, Any]:
    """Counts for a log or an observation: FAIL_TO_PASS and PASS_TO_PASS passed/total, resolved, and
    the first ``show`` tests of each that did not pass (with their status; ``missing`` if absent)."""
    f2p, p2p = instance["FAIL_TO_PASS"], instance["PASS_TO_PASS"]
    f2p_bad = [(t, results.get(t, "missing")) for t in f2p if results.get(t) != "passed"]
    p2p_bad = [(t, results.get(t, "missing")) for t in p2p if results.get(t) != "passed"]
    return {"f2p_passed": len(f2p) - len(f2p_bad), "f2p_total": len(f2p),
            "p2p_passed": len(p2p) - len(p2p_bad), "p2p_total": len(p2p),
            "resolved": not f2p_bad and not p2p_bad,
            "f2p_failing": f2p_bad[:show], "p2p_failing": p2p_bad[:show]}
