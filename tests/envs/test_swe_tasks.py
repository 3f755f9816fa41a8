"""SWE tasks: diffs round-trip, each mutation operator on a worked example, generation end to end on a toy
package (real pytest runs), loading and validation errors, SWE-bench rows, the shipped set's integrity and
its oracle (the gold patch resolves every instance, an empty submission none)."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from turngym.envs.swe import generate as G
from turngym.envs.swe import tasks as T
from turngym.envs.swe.patches import (
    PatchError,
    apply_diff,
    diff_files,
    file_diff,
    parse_diff,
    tree_diff,
    tree_digest,
)
from turngym.errors import TaskError, TurngymError

SHIPPED = T.load_instances() if T.TASKS_FILE.is_file() else []


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    """Repository trees go to a cache of this module's own, not the user's."""
    old = os.environ.get("TURNGYM_CACHE")
    os.environ["TURNGYM_CACHE"] = str(tmp_path_factory.mktemp("turngym-cache"))
    yield
    if old is None:
        os.environ.pop("TURNGYM_CACHE", None)
    else:
        os.environ["TURNGYM_CACHE"] = old


class SubprocessSandbox:
    """A stand-in for the sandbox protocol (a plain subprocess over a copy), used where make_sandbox cannot run."""

    name, isolates = "local", False

    def __init__(self, source: Path):
        self._tmp = tempfile.mkdtemp(prefix="turngym-test-swe-")
        self.workdir = Path(self._tmp) / "repo"
        shutil.copytree(source, self.workdir, symlinks=True)

    def run(self, command, timeout_s=None, env=None):
        from turngym.envs.swe.sandbox import ExecResult

        started = time.monotonic()
        try:
            done = subprocess.run(command, check=False, shell=True, cwd=self.workdir, env={**os.environ, **(env or {})},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout_s or 120)
        except subprocess.TimeoutExpired as exc:
            return ExecResult(str(exc.output or ""), None, timed_out=True, duration_s=time.monotonic() - started)
        return ExecResult(done.stdout, done.returncode, duration_s=time.monotonic() - started)

    def close(self):
        shutil.rmtree(self._tmp, ignore_errors=True)


def _factory():
    """bwrap's sandbox where it runs here, else the stand-in."""
    try:
        from turngym.envs.swe.sandbox import make_sandbox
    except ImportError:
        return SubprocessSandbox
    probe = Path(tempfile.mkdtemp(prefix="turngym-test-probe-"))
    try:
        make_sandbox("bwrap", probe).close()
    except TurngymError:  # no bwrap or no user namespaces here
        return SubprocessSandbox
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return lambda source: make_sandbox("bwrap", source)


@pytest.fixture(scope="module")
def sandbox_factory():
    return _factory()


# ---- diffs --------------------------------------------------------------------------------------


def _write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        with open(root / rel, "w", encoding="utf-8", newline="") as f:
            f.write(text)


def _random_text(rng: random.Random) -> str:
    words = ["alpha", "beta", "", "    return x", "\tdef f():", "ünï", "x = 1\r", "#", "same", "same"]
    lines = [rng.choice(words) for _ in range(rng.randint(0, 30))]
    text = "\n".join(lines)
    return text + ("\n" if lines and rng.random() < 0.7 else "")


def _edit(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(0, len(lines))
        kind = rng.choice(["insert", "delete", "replace"])
        if kind == "insert":
            lines.insert(at, rng.choice(["new", "same", "", "  indented"]))
        elif lines and at < len(lines):
            if kind == "delete":
                del lines[at]
            else:
                lines[at] = lines[at] + " changed"
    out = "\n".join(lines)
    return out.rstrip("\n") if rng.random() < 0.2 else out


@pytest.mark.parametrize("seed", range(60))
def test_tree_diff_then_apply_reproduces_the_tree(tmp_path, seed):
    rng = random.Random(seed)
    before = {f"pkg/m{i}.py": _random_text(rng) for i in range(rng.randint(1, 4))}
    after = dict(before)
    for rel in list(after):
        roll = rng.random()
        if roll < 0.15:
            del after[rel]
        elif roll < 0.85:
            after[rel] = _edit(after[rel], rng)
    if rng.random() < 0.5:
        after[f"new/dir/n{seed}.txt"] = _random_text(rng)
    _write_tree(tmp_path / "a", before)
    _write_tree(tmp_path / "b", after)
    diff = tree_diff(tmp_path / "a", tmp_path / "b")
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    apply_diff(tmp_path / "c", diff)
    assert tree_digest(tmp_path / "c") == tree_digest(tmp_path / "b")
    assert tree_diff(tmp_path / "c", tmp_path / "b") == ""
    # and back: the reverse diff restores the first tree
    apply_diff(tmp_path / "c", tree_diff(tmp_path / "b", tmp_path / "a"))
    assert tree_digest(tmp_path / "c") == tree_digest(tmp_path / "a")
    if shutil.which("git") and diff:  # git reads our diffs as its own
        shutil.copytree(tmp_path / "a", tmp_path / "g")
        (tmp_path / "d.diff").write_text(diff, encoding="utf-8", newline="")
        done = subprocess.run(["git", "apply", "--whitespace=nowarn", str(tmp_path / "d.diff")], check=False,
                              cwd=tmp_path / "g", capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert tree_digest(tmp_path / "g") == tree_digest(tmp_path / "b")


def test_tree_diff_format_and_what_it_skips(tmp_path):
    _write_tree(tmp_path / "a", {"x.py": "one\ntwo\nthree\n", "gone.py": "bye\n"})
    _write_tree(tmp_path / "b", {"x.py": "one\nTWO\nthree", "empty.txt": "", "__pycache__/x.pyc": "junk",
                                 ".pytest_cache/v": "junk"})
    (tmp_path / "b" / "blob.bin").write_bytes(b"\0\1\2")
    diff = tree_diff(tmp_path / "a", tmp_path / "b")
    assert diff == ("diff --git a/empty.txt b/empty.txt\nnew file mode 100644\n"
                    "diff --git a/gone.py b/gone.py\ndeleted file mode 100644\n--- a/gone.py\n+++ /dev/null\n"
                    "@@ -1 +0,0 @@\n-bye\n"
                    "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1,3 +1,3 @@\n one\n-two\n-three\n+TWO\n"
                    "+three\n\\ No newline at end of file\n")
    assert diff_files(diff) == ["empty.txt", "gone.py", "x.py"]
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "b")


def test_apply_diff_moves_hunks_by_an_offset_and_reads_diff_u(tmp_path):
    _write_tree(tmp_path, {"m.py": "".join(f"line {i}\n" for i in range(1, 21))})
    diff = file_diff("m.py", "".join(f"line {i}\n" for i in range(1, 21)),
                     "".join(f"line {i}\n" for i in range(1, 21)).replace("line 10\n", "line ten\n"))
    (tmp_path / "m.py").write_text("header\nheader\n" + (tmp_path / "m.py").read_text())  # lines moved down by 2
    apply_diff(tmp_path, diff)
    assert "line ten\n" in (tmp_path / "m.py").read_text() and "line 10\n" not in (tmp_path / "m.py").read_text()
    plain = "--- m.py\t2024-01-01 00:00:00\n+++ m.py\t2024-01-02 00:00:00\n@@ -1 +1 @@\n-header\n+HEADER\n"
    apply_diff(tmp_path, plain)
    assert (tmp_path / "m.py").read_text().startswith("HEADER\nheader\n")


def test_apply_diff_refuses_a_mismatch_and_leaves_the_tree_alone(tmp_path):
    _write_tree(tmp_path, {"a.py": "a\nb\nc\n", "b.py": "x\ny\n"})
    good = file_diff("a.py", "a\nb\nc\n", "a\nB\nc\n")
    bad = file_diff("b.py", "x\nz\n", "x\nw\n")
    with pytest.raises(PatchError, match=r"b\.py: hunk 1 .* does not apply: line 2 should be 'z\\n'"):
        apply_diff(tmp_path, good + bad)
    assert (tmp_path / "a.py").read_text() == "a\nb\nc\n"  # nothing written: the first file's hunk was fine
    with pytest.raises(PatchError, match="not relative to the repository root"):
        apply_diff(tmp_path, "--- a/../evil.py\n+++ b/../evil.py\n@@ -1 +1 @@\n-a\n+b\n")
    with pytest.raises(PatchError, match="exists already"):
        apply_diff(tmp_path, file_diff("a.py", None, "new\n"))
    with pytest.raises(PatchError, match="no such file"):
        apply_diff(tmp_path, file_diff("missing.py", "a\n", "b\n"))
    with pytest.raises(PatchError, match="header says 1 and 1"):
        apply_diff(tmp_path, "--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-a\n-b\n+c\n")
    with pytest.raises(PatchError, match="no file patch"):
        apply_diff(tmp_path, "just some text\n")
    assert parse_diff("") == []


# ---- mutations ----------------------------------------------------------------------------------

EXAMPLE = '''\
import os

LIMIT = 10


def clamp(values, low, high):
    """Keep values in [low, high]."""
    out = []
    total = 0
    for v in values:
        if v < low or not v:  # skip
            continue
        total += v * 2
        out.append(min(v, high))
        total = total - 1
    return out[0:2], divmod(total, high)
'''

#: operator -> (line before, line after) of one of its sites in EXAMPLE
WORKED = {
    "flip_comparison": ("        if v < low or not v:  # skip", "        if v <= low or not v:  # skip"),
    "swap_arithmetic": ("        total = total - 1", "        total = total + 1"),
    "swap_boolean": ("        if v < low or not v:  # skip", "        if v < low and not v:  # skip"),
    "off_by_one": ("    return out[0:2], divmod(total, high)", "    return out[0:1], divmod(total, high)"),
    "remove_not": ("        if v < low or not v:  # skip", "        if v < low or v:  # skip"),
    "remove_statement": ("        out.append(min(v, high))", "        pass"),
    "swap_arguments": ("    return out[0:2], divmod(total, high)", "    return out[0:2], divmod(high, total)"),
}


@pytest.mark.parametrize("operator", G.OPERATORS)
def test_each_operator_makes_a_one_line_edit(operator):
    pytest.importorskip("libcst")
    sites = [s for s in G.mutation_sites(EXAMPLE, "ex.py") if s.operator == operator]
    assert sites and all(s.scope == "clamp" for s in sites)
    edits = []
    for site in sites:
        mutated = G.apply_mutation(EXAMPLE, site)
        removed, added = G.changed_lines(EXAMPLE, mutated)
        assert len(removed) == len(added) == 1, (site, removed, added)
        assert mutated.count("\n") == EXAMPLE.count("\n")  # every other line byte for byte
        compile(mutated, "ex.py", "exec")
        edits.append((removed[0], added[0]))
    assert WORKED[operator] in edits


def test_mutations_skip_module_level_code_and_trivial_swaps():
    pytest.importorskip("libcst")
    source = "X = 1 + 2\n\ndef f(a):\n    return isinstance(a, int) and min(a, 3) and 'a' + 'b'\n"
    operators = [(s.operator, s.line) for s in G.mutation_sites(source, "m.py")]
    assert all(line == 4 for _, line in operators)  # nothing at module level
    assert "swap_arguments" not in {op for op, _ in operators}  # isinstance, min: never swapped
    assert "swap_arithmetic" not in {op for op, _ in operators}  # 'a' + 'b': never a string subtraction
    assert G.mutation_sites("def broken(:\n", "m.py") == []


# ---- generation end to end on a toy package -----------------------------------------------------

TOY = {
    "toy-0.1/PKG-INFO": "Metadata-Version: 2.1\nName: toy\nVersion: 0.1\n",
    "toy-0.1/toy/__init__.py": '''\
def clamp(x, low, high):
    if x < low:
        return low
    if x > high:
        return high
    return x


def mean(values):
    if not values:
        return 0.0
    return sum(values) / len(values)


def span(values):
    return max(values) - min(values)
''',
    "toy-0.1/tests/test_toy.py": '''\
import pytest

from toy import clamp, mean, span


@pytest.mark.parametrize("x, want", [(-5, 0), (0, 0), (5, 5), (10, 10), (15, 10)])
def test_clamp(x, want):
    assert clamp(x, 0, 10) == want


def test_mean():
    assert mean([1, 2, 3]) == 2


def test_mean_empty():
    assert mean([]) == 0.0


def test_span():
    assert span([3, 1, 4]) == 3


def test_unrelated():
    assert "toy".upper() == "TOY"
''',
}


def _toy_sdist(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "toy-0.1.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, text in TOY.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tf.addfile(info, io.BytesIO(data))
    return path


def test_generate_end_to_end_on_a_toy_package(tmp_path, sandbox_factory):
    pytest.importorskip("libcst")
    sdist = _toy_sdist(tmp_path / "src")
    out = tmp_path / "gen" / "tasks.jsonl"
    lines = []
    instances = G.generate([str(sdist)], out, per_package=3, seed=1, sandbox_factory=sandbox_factory,
                           log=lines.append)
    assert len(instances) == 3, lines
    assert (tmp_path / "gen" / "sdists" / "toy-0.1.tar.gz").is_file()
    loaded = T.load_instances(out)
    assert loaded == instances
    all_tests = {f"tests/test_toy.py::test_clamp[{x}-{w}]" for x, w in [(-5, 0), (0, 0), (5, 5), (10, 10), (15, 10)]}
    all_tests |= {f"tests/test_toy.py::{n}" for n in ("test_mean", "test_mean_empty", "test_span", "test_unrelated")}
    for inst in loaded:
        meta = inst["turngym"]
        assert inst["repo"] == "toy" and inst["version"] == "0.1" and inst["created_at"] == "2023-11-14T22:13:20Z"
        assert meta["test_files"] == ["tests/test_toy.py"] and meta["pythonpath"] == ["."]
        assert set(inst["FAIL_TO_PASS"]) | set(inst["PASS_TO_PASS"]) == all_tests  # one file: every test is in one
        assert "tests/test_toy.py::test_unrelated" in inst["PASS_TO_PASS"]
        assert G.leaks(inst["problem_statement"], inst) == []
        assert inst["FAIL_TO_PASS"][0] in inst["problem_statement"]
        assert diff_files(inst["patch"]) == ["toy/__init__.py"]
        # the buggy tree: its digest is base_commit; pytest there fails exactly FAIL_TO_PASS
        tree = T.repo_tree(inst)
        assert tree_digest(tree) == inst["base_commit"]
        sandbox = sandbox_factory(tree)
        try:
            results = T.run_tests(sandbox, inst)
            assert {t for t, s in results.items() if s != "passed"} == set(inst["FAIL_TO_PASS"])
            assert not T.resolved(results, inst)
            apply_diff(sandbox.workdir, inst["patch"])
            only = T.run_tests(sandbox, inst, tests=inst["FAIL_TO_PASS"][:1])
            assert only == {inst["FAIL_TO_PASS"][0]: "passed"}
            fixed = T.run_tests(sandbox, inst)
            assert T.resolved(fixed, inst)
            report = T.test_report(fixed, inst)
            assert report["f2p_passed"] == report["f2p_total"] == len(inst["FAIL_TO_PASS"]) and report["resolved"]
        finally:
            sandbox.close()
    # deterministic for a seed
    again = G.generate([str(sdist)], tmp_path / "again" / "tasks.jsonl", per_package=3, seed=1,
                       sandbox_factory=sandbox_factory, verify=False)
    assert again == instances
    # a collection error is reported as the file, failing
    inst = loaded[0]
    sandbox = sandbox_factory(T.repo_tree(inst))
    try:
        (sandbox.workdir / "toy" / "__init__.py").write_text("raise ImportError('broken')\n")
        results = T.run_tests(sandbox, inst)
        assert results == {"tests/test_toy.py": "error"}
        assert T.test_report(results, inst)["f2p_failing"][0][1] == "missing"
    finally:
        sandbox.close()


def test_a_package_without_tests_or_a_pin_is_refused(tmp_path, sandbox_factory):
    with pytest.raises(TaskError, match=r"pin an exact version, NAME==VERSION"):
        G.fetch_sdist("more-itertools", tmp_path)
    folder = tmp_path / "src"
    folder.mkdir()
    path = folder / "bare-0.1.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        data = b"def f():\n    return 1\n"
        info = tarfile.TarInfo("bare-0.1/bare.py")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(TaskError, match="ships no test files"):
        G.generate([str(path)], tmp_path / "out.jsonl", sandbox_factory=sandbox_factory)


def test_junit_node_ids_come_back_whole():
    xml = """<testsuites><testsuite>
      <testcase classname="tests.test_x.TestK" name="test_m" />
      <testcase classname="tests.test_x" name="test_p[c::d]"><failure message="AssertionError: boom">..</failure></testcase>
      <testcase classname="tests.test_x" name="test_fx"><error message="failed on setup">..</error></testcase>
      <testcase classname="tests.test_x" name="test_sk"><skipped message="skip" /></testcase>
      <testcase classname="" name="tests.sub.test_y"><error message="collection failure" /></testcase>
    </testsuite></testsuites>"""
    results, messages = T.parse_junit(xml, ["tests/test_x.py", "tests/sub/test_y.py"])
    assert results == {"tests/test_x.py::TestK::test_m": "passed", "tests/test_x.py::test_p[c::d]": "failed",
                       "tests/test_x.py::test_fx": "error", "tests/test_x.py::test_sk": "skipped",
                       "tests/sub/test_y.py": "error"}
    assert messages["tests/test_x.py::test_p[c::d]"] == "AssertionError: boom"
    assert T.parse_junit("<not xml", ["a.py"]) == ({}, {})


def test_problem_statements_quote_failures_not_the_bug():
    rng = random.Random(0)
    messages = {"t.py::test_a": "AssertionError: 3 != 4 at 0x7f00deadbeef\n    return a + 1\nUse -v to get more diff"}
    text = G.problem_statement("toy", "0.1", ["t.py::test_a"], messages, ["return a + 1"], rng)
    assert "t.py::test_a" in text and "AssertionError: 3 != 4 at 0x..." in text
    assert "return a + 1" not in text and "Use -v" not in text


# ---- loading and validating ---------------------------------------------------------------------


def _instance(**changes):
    base = {"instance_id": "toy__0.1__abc", "repo": "toy", "version": "0.1", "base_commit": "0" * 64,
            "patch": "diff", "test_patch": "", "problem_statement": "x fails", "hints_text": "",
            "FAIL_TO_PASS": ["tests/test_toy.py::test_a"], "PASS_TO_PASS": ["tests/test_toy.py::test_b"],
            "created_at": "", "turngym": {"sdist": "toy-0.1.tar.gz", "sdist_sha256": "a" * 64, "bug_patch": "d",
                                          "test_files": ["tests/test_toy.py"], "test_command": T.DEFAULT_TEST_COMMAND,
                                          "pythonpath": ["."], "split": "train"}}
    for key, value in changes.items():
        if key.startswith("turngym_"):
            base["turngym"] = {**base["turngym"], key[len("turngym_"):]: value}
        elif value is None:
            base.pop(key)
        else:
            base[key] = value
    return base


@pytest.mark.parametrize("changes, message", [
    ({"FAIL_TO_PASS": None}, r"instance 'toy__0.1__abc': field 'FAIL_TO_PASS' is missing"),
    ({"FAIL_TO_PASS": "tests/test_toy.py::test_a"}, r"field 'FAIL_TO_PASS' must be a list of test ids"),
    ({"FAIL_TO_PASS": []}, r"field 'FAIL_TO_PASS' is empty"),
    ({"PASS_TO_PASS": ["tests/test_toy.py::test_a"]}, r"field 'PASS_TO_PASS' repeats FAIL_TO_PASS"),
    ({"base_commit": 7}, r"field 'base_commit' must be a string, got int"),
    ({"problem_statement": "  "}, r"field 'problem_statement' is empty"),
    ({"turngym_split": "dev"}, r"field 'turngym.split' must be one of \('train', 'test'\)"),
    ({"turngym_sdist_sha256": "xyz"}, r"field 'turngym.sdist_sha256' must be 64 lowercase hex"),
    ({"turngym_test_files": ["../x.py"]}, r"field 'turngym.test_files' holds '../x.py'"),
    ({"turngym_test_command": "pytest"}, r"field 'turngym.test_command' must start with 'python'"),
    ({"turngym_test_files": ["tests/other.py"]}, r"field 'FAIL_TO_PASS' names test\(s\) outside turngym.test_files"),
    ({"turngym_bug_patch": None}, r"field 'turngym.bug_patch' must be a non-empty string"),
])
def test_validation_names_the_bad_field(changes, message):
    with pytest.raises(TaskError, match=message):
        T.validate_instance(_instance(**changes))


def test_load_instances_errors_name_the_line(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(_instance()) + "\n" + json.dumps(_instance()) + "\n")
    with pytest.raises(TaskError, match=r"tasks.jsonl:2: instance 'toy__0.1__abc' repeats the one on line 1"):
        T.load_instances(path)
    path.write_text(json.dumps(_instance()) + "\n{oops\n")
    with pytest.raises(TaskError, match=r"tasks.jsonl:2: not a JSON object"):
        T.load_instances(path)
    path.write_text(json.dumps(_instance(repo=None)) + "\n")
    with pytest.raises(TaskError, match=r"tasks.jsonl:1: instance 'toy__0.1__abc': field 'repo' is missing"):
        T.load_instances(path)
    with pytest.raises(TaskError, match=r"no SWE tasks file at .*nope.jsonl"):
        T.load_instances(tmp_path / "nope.jsonl")
    path.write_text(json.dumps(_instance()) + "\n")
    (inst,) = T.load_instances(path)
    with pytest.raises(TaskError, match=r"its sdist toy-0.1.tar.gz .* is not in data/sdists/"):
        T.repo_tree(inst)


# ---- SWE-bench rows -----------------------------------------------------------------------------

#: a row as SWE-bench (princeton-nlp/SWE-bench_Lite) stores it: test lists as JSON strings
SWEBENCH_ROW = {
    "repo": "astropy/astropy", "instance_id": "astropy__astropy-12907",
    "base_commit": "d16bfe05a744909de4b27f5875fe0d4ed41ce607",
    "patch": "diff --git a/astropy/modeling/separable.py b/astropy/modeling/separable.py\n--- a/astropy/modeling/"
             "separable.py\n+++ b/astropy/modeling/separable.py\n@@ -242,7 +242,7 @@ def _cstack(left, right):\n"
             "         cright = _coord_matrix(right, 'right', noutp)\n     else:\n         cright = np.zeros((noutp, "
             "right.shape[1]))\n-        cright[-right.shape[0]:, -right.shape[1]:] = 1\n+        cright[-right.shape[0]"
             ":, -right.shape[1]:] = right\n \n     return np.hstack([cleft, cright])\n",
    "test_patch": "diff --git a/astropy/modeling/tests/test_separable.py b/astropy/modeling/tests/test_separable.py\n",
    "problem_statement": "Modeling's `separability_matrix` does not compute separability correctly for nested "
                         "CompoundModels\n",
    "hints_text": "", "created_at": "2022-03-03T15:14:54Z", "version": "4.3",
    "FAIL_TO_PASS": '["astropy/modeling/tests/test_separable.py::test_separable[compound_model6-result6]", '
                    '"astropy/modeling/tests/test_separable.py::test_separable[compound_model9-result9]"]',
    "PASS_TO_PASS": '["astropy/modeling/tests/test_separable.py::test_coord_matrix"]',
    "environment_setup_commit": "298ccb478e6bf092953bca67a3d29dc6c35f6752",
}


def test_swebench_rows_load_as_instances(tmp_path):
    path = tmp_path / "lite.jsonl"
    gym_row = {**SWEBENCH_ROW, "instance_id": "getmoto__moto-5752", "repo": "getmoto/moto", "version": 4.0,
               "FAIL_TO_PASS": ["tests/test_x.py::test_y"], "PASS_TO_PASS": [], "hints_text": None}
    path.write_text(json.dumps(SWEBENCH_ROW) + "\n" + json.dumps(gym_row) + "\n")
    lite, gym = T.load_swebench_rows(path)
    assert lite["FAIL_TO_PASS"] == ["astropy/modeling/tests/test_separable.py::test_separable[compound_model6-result6]",
                                    "astropy/modeling/tests/test_separable.py::test_separable[compound_model9-result9]"]
    assert lite["PASS_TO_PASS"] == ["astropy/modeling/tests/test_separable.py::test_coord_matrix"]
    assert lite["docker_image"] == "swebench/sweb.eval.x86_64.astropy_1776_astropy-12907:latest"
    assert lite["environment_setup_commit"] == SWEBENCH_ROW["environment_setup_commit"] and "turngym" not in lite
    assert gym["version"] == "4.0" and gym["hints_text"] == ""
    (gym_ns,) = T.load_swebench_rows([gym_row], image_namespace="xingyaoww")
    assert gym_ns["docker_image"] == "xingyaoww/sweb.eval.x86_64.getmoto_1776_moto-5752:latest"
    with pytest.raises(TaskError, match=r"rows: row 1: instance 'astropy__astropy-12907': field 'FAIL_TO_PASS' is a "
                                        r"string but not a JSON list"):
        T.load_swebench_rows([{**SWEBENCH_ROW, "FAIL_TO_PASS": "test_a"}])
    with pytest.raises(TaskError, match=r"its repository and tests live in its SWE-bench Docker image"):
        T.repo_tree(lite)


def test_swebench_rows_from_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist([SWEBENCH_ROW]), tmp_path / "lite.parquet")
    (row,) = T.load_swebench_rows(tmp_path / "lite.parquet")
    assert row["instance_id"] == "astropy__astropy-12907" and len(row["FAIL_TO_PASS"]) == 2


# ---- the shipped set ----------------------------------------------------------------------------


def test_the_shipped_set_is_varied_and_split():
    assert len(SHIPPED) >= 30
    repos = {i["repo"] for i in SHIPPED}
    assert len(repos) >= 3
    assert {i["turngym"]["split"] for i in SHIPPED} == {"train", "test"}
    assert len({i["turngym"]["mutation"]["operator"] for i in SHIPPED}) >= 5
    for inst in SHIPPED:
        assert inst["instance_id"].startswith(f"{inst['repo']}__{inst['version']}__{inst['base_commit'][:10]}")
        assert 1 <= len(inst["FAIL_TO_PASS"]) <= 20


@pytest.mark.parametrize("inst", SHIPPED, ids=[i["instance_id"] for i in SHIPPED])
def test_shipped_instance_integrity(inst, tmp_path):
    meta = inst["turngym"]
    sdist = T.SDIST_DIR / meta["sdist"]
    assert sdist.is_file() and T.sha256_file(sdist) == meta["sdist_sha256"]
    tree = T.repo_tree(inst)
    assert tree_digest(tree) == inst["base_commit"]
    mutation = meta["mutation"]
    assert diff_files(inst["patch"]) == diff_files(meta["bug_patch"]) == [mutation["file"]]
    buggy_line = (tree / mutation["file"]).read_text(encoding="utf-8").splitlines()[mutation["line"] - 1]
    assert buggy_line == mutation["after"].splitlines()[0]
    fixed = tmp_path / "fixed"
    shutil.copytree(tree, fixed)
    apply_diff(fixed, inst["patch"])
    assert tree_digest(fixed) == tree_digest(T.pristine_tree(inst))
    statement = inst["problem_statement"]
    assert G.leaks(statement, inst) == []
    assert inst["patch"] not in statement and meta["bug_patch"] not in statement
    for test in [*inst["FAIL_TO_PASS"], *inst["PASS_TO_PASS"]]:
        assert test.split("::")[0] in meta["test_files"]


def _oracle(inst, factory):
    found = G.check_instance(inst, factory)
    assert found["ok"], found
    assert found["gold"]["resolved"] and not found["empty"]["resolved"] and found["empty"]["f2p_passed"] == 0


# One instance of each package in the default tier; all of them under -m slow.
_FIRST_OF_EACH = list({i["repo"]: i for i in reversed(SHIPPED)}.values())


@pytest.mark.parametrize("inst", _FIRST_OF_EACH[:2], ids=[i["instance_id"] for i in _FIRST_OF_EACH[:2]])
def test_oracle_resolves_shipped_instances(inst, sandbox_factory):
    _oracle(inst, sandbox_factory)


@pytest.mark.slow
@pytest.mark.parametrize("inst", SHIPPED, ids=[i["instance_id"] for i in SHIPPED])
def test_oracle_resolves_every_shipped_instance(inst, sandbox_factory):
    _oracle(inst, sandbox_factory)


def test_cli_check_runs_the_oracle(sandbox_factory, capsys, monkeypatch):
    from turngym.cli import main

    if not SHIPPED:
        pytest.skip("no shipped tasks")
    monkeypatch.setattr(G, "default_sandbox_factory", lambda backend: sandbox_factory)
    assert main(["swe", "check", "--instance", SHIPPED[-1]["instance_id"]]) == 0
    assert "1/1 instances pass the oracle check" in capsys.readouterr().out
    assert main(["swe", "check", "--instance", "nope"]) == 2
