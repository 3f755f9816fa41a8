"""The SWE sandbox (envs/swe/sandbox.py): the bwrap backend's security properties, run semantics, the local
backend, the docker backend's errors and container settings, and that killed episodes leave nothing behind.

The security tests run the bwrap backend for real (CI installs bubblewrap in `make setup`); each says in its
docstring what it shows. Where a test shows that something is unreachable from inside, a control shows the
same probe succeeding without the sandbox, so a probe that could never succeed cannot pass for isolation.
"""

from __future__ import annotations

import gc
import os
import secrets
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
import types
from pathlib import Path

import pytest

from turngym.envs.swe import sandbox as sandbox_module
from turngym.envs.swe.sandbox import (
    BACKENDS,
    SANDBOX_UIDS,
    BwrapSandbox,
    ExecResult,
    Limits,
    LocalSandbox,
    Sandbox,
    make_sandbox,
)
from turngym.errors import TurngymError

HAVE_BWRAP = shutil.which("bwrap") is not None
needs_bwrap = pytest.mark.skipif(not HAVE_BWRAP, reason="bwrap (bubblewrap) is not installed: apt-get install "
                                                        "bubblewrap (`make setup` does it as root)")
AS_ROOT = os.geteuid() == 0


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A small repository tree: a package, its tests, a symlink."""
    root = tmp_path / "cache" / "repo"
    (root / "pkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "mod.py").write_text("def add(a, b):\n    return a + b\n")
    (root / "tests" / "test_mod.py").write_text("from pkg.mod import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n")
    (root / "link_to_mod.py").symlink_to("pkg/mod.py")
    return root


@pytest.fixture
def work_root() -> Path:
    """A work root where the default one lives (the user's cache dir: hidden under /root when root), not /tmp."""
    root = sandbox_module.default_work_root().parent / f"test-work-{secrets.token_hex(6)}"
    root.mkdir(parents=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _bwrap(repo: Path, work_root: Path, **limits) -> BwrapSandbox:
    return make_sandbox("bwrap", repo, Limits(**limits), work_root=work_root)


def _proc_info(pid: str) -> dict[str, str] | None:
    try:
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:  # a zombie
            cwd = ""
    except (OSError, ValueError):
        return None
    return {"pid": pid, "uid": status["Uid"].split()[0], "state": status["State"].strip(),
            "ppid": status["PPid"].strip(), "cmdline": cmdline, "cwd": cwd}


def _leftover_processes(work_root: Path, uids: set[int]) -> list[dict[str, str]]:
    """Processes of these sandboxes still there: a sandbox uid, a cwd or command line in the work root, or a
    child of ours that is a zombie or a bwrap."""
    found = []
    for pid in (name for name in os.listdir("/proc") if name.isdigit()):
        info = _proc_info(pid)
        if info is None or info["pid"] == str(os.getpid()):
            continue
        ours = info["ppid"] == str(os.getpid()) and (info["state"].startswith("Z") or "bwrap" in info["cmdline"])
        if int(info["uid"]) in uids or str(work_root) in info["cwd"] or str(work_root) in info["cmdline"] or ours:
            found.append(info)
    return found


def _mounts_under(path: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(path) in line]


# ---- make_sandbox -----------------------------------------------------------------------------------

def test_unknown_backend_lists_the_backends(repo, work_root):
    with pytest.raises(TurngymError, match="unknown sandbox backend 'chroot'.*bwrap.*docker.*local"):
        make_sandbox("chroot", repo, work_root=work_root)


def test_unknown_option_and_missing_source_are_errors(repo, work_root, tmp_path):
    with pytest.raises(TurngymError, match="unknown option.*'colour'.*takes work_root"):
        make_sandbox("local", repo, work_root=work_root, colour="red")
    with pytest.raises(TurngymError, match="not a directory"):
        make_sandbox("local", tmp_path / "nowhere", work_root=work_root)
    assert list(work_root.iterdir()) == []


def test_missing_bwrap_names_the_package(repo, work_root, monkeypatch):
    """Without bwrap on the machine, make_sandbox says how to install it and leaves no work copy behind."""
    real_which = shutil.which
    monkeypatch.setattr(sandbox_module.shutil, "which", lambda name, **kw: None if name == "bwrap" else real_which(name, **kw))
    with pytest.raises(TurngymError, match="apt-get install bubblewrap"):
        make_sandbox("bwrap", repo, work_root=work_root)
    assert list(work_root.iterdir()) == []


def test_default_work_root_is_not_tmp(monkeypatch, tmp_path):
    monkeypatch.delenv(sandbox_module.WORK_ROOT_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert sandbox_module.default_work_root() == Path.home() / ".cache" / "turngym" / "swe" / "work"
    monkeypatch.setenv(sandbox_module.WORK_ROOT_ENV, str(tmp_path / "w"))
    assert sandbox_module.default_work_root() == tmp_path / "w"


def test_stale_copies_of_dead_processes_are_removed(repo, work_root):
    """A work copy left by a process killed with -9 (same boot, pid gone) goes at the next make_sandbox."""
    dead = subprocess_pid_that_exited()
    stale = work_root / f"ep-{sandbox_module._boot_id()}-{dead}-abcdefgh"
    alive = work_root / f"ep-{sandbox_module._boot_id()}-{os.getpid()}-abcdefgh"
    stale.mkdir()
    alive.mkdir()
    with make_sandbox("local", repo, work_root=work_root):
        assert not stale.exists() and alive.exists()
    shutil.rmtree(alive)


def subprocess_pid_that_exited() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# ---- the output cap -------------------------------------------------------------------------------

def test_output_cap_keeps_head_and_tail():
    cap = sandbox_module._OutputCap(10)
    for chunk in (b"0123", b"456789"):
        cap.feed(chunk)
    assert not cap.truncated and cap.text() == "0123456789"
    cap.feed(b"abcdefghijklmnopqrstuvwxyz")
    assert cap.truncated and cap.total == 36
    assert cap.text() == "01234\n[... 26 bytes truncated ...]\nvwxyz"


# ---- bwrap: the security properties ------------------------------------------------------------------

_CONNECT = """
import socket, sys
for host, port in [("127.0.0.1", int(sys.argv[1])), ("1.1.1.1", 443), ("8.8.8.8", 53)]:
    try:
        socket.create_connection((host, port), timeout=3).close()
        print(f"CONNECTED {host}:{port}")
    except OSError as exc:
        print(f"FAILED {host}:{port} {type(exc).__name__}: {exc}")
"""


@needs_bwrap
def test_network_is_unreachable(repo, work_root):
    """Socket connects from inside fail: to a server listening on the host's 127.0.0.1 (the sandbox's loopback
    is its own) and to outside addresses (no route). The server accepts nothing. Control: the local backend
    reaches the same server."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        with _bwrap(repo, work_root) as sb:
            (sb.workdir / "connect.py").write_text(_CONNECT)
            result = sb.run(f"python connect.py {port}")
        assert "CONNECTED" not in result.output, result.output
        assert f"FAILED 127.0.0.1:{port} ConnectionRefusedError" in result.output
        assert "FAILED 1.1.1.1:443" in result.output and "FAILED 8.8.8.8:53" in result.output
        with pytest.raises(BlockingIOError):
            server.accept()
        with make_sandbox("local", repo, work_root=work_root) as local:  # the control
            (local.workdir / "connect.py").write_text(_CONNECT)
            assert f"CONNECTED 127.0.0.1:{port}" in local.run(f"python connect.py {port}").output


@needs_bwrap
def test_no_write_outside_the_work_copy(repo, work_root):
    """Writes inside the work copy reach the host; writes anywhere else fail or land in the sandbox's private
    tmpfs, never on the host: system dirs, the interpreter, the work root, another episode's copy, the
    source tree, the host's /tmp and $HOME, the turngym checkout, through a symlink."""
    token = secrets.token_hex(6)
    with _bwrap(repo, work_root) as sb, _bwrap(repo, work_root) as other:
        targets = [Path("/etc"), Path("/usr/lib"), Path(sys.prefix), Path(sys.base_prefix), work_root, other.workdir,
                   repo, Path(tempfile.gettempdir()), Path.home(), sandbox_module._PACKAGE_ROOT, Path("/var/tmp"),
                   Path("/dev/shm")]
        paths = [target / f"written-{token}" for target in targets]
        script = "; ".join(f"echo x > {p} 2>/dev/null && echo WROTE {p}" for p in paths)
        result = sb.run(f"{script}; ln -s /etc/hostname host-link; echo x > host-link || echo LINK-FAILED; "
                        f"echo inside > mine.txt; echo done")
        assert result.returncode == 0 and "done" in result.output and "LINK-FAILED" in result.output
        leaked = [p for p in paths if p.exists()]
        assert leaked == [], leaked
        assert (sb.workdir / "mine.txt").read_text() == "inside\n"
        assert not (repo / "mine.txt").exists()  # the cached source is never touched


@needs_bwrap
def test_hand_over_never_follows_links(repo, work_root):
    """As root, run() gives the sandbox's uid what the env wrote in the copy (the sandbox may then change it),
    but a link the sandbox planted to a file or directory outside is not followed: their owners stay."""
    before = {p: (os.stat(p).st_uid, os.stat(p).st_gid) for p in ("/etc", "/etc/hostname", "/etc/passwd")}
    with _bwrap(repo, work_root) as sb:
        sb.run("ln -s /etc/hostname file-link; ln -s /etc dir-link; ln /etc/passwd hard-link 2>/dev/null; true")
        (sb.workdir / "from_env.txt").write_text("a")  # as the env does: from the host
        (sb.workdir / "new_dir").mkdir()
        (sb.workdir / "new_dir" / "f.txt").write_text("c")
        result = sb.run("echo b >> from_env.txt && echo d >> new_dir/f.txt && cat from_env.txt new_dir/f.txt")
        assert result.returncode == 0 and result.output == "ab\ncd\n", result.output
        assert not (sb.workdir / "hard-link").exists()  # a hard link across mounts is refused
    assert {p: (os.stat(p).st_uid, os.stat(p).st_gid) for p in before} == before


@needs_bwrap
def test_secrets_outside_the_binds_cannot_be_read(repo, work_root, monkeypatch):
    """World-readable secret files in realistic places cannot be read from inside: $HOME (/root), the host's
    temp dir, next to the work copies, in another episode's copy, next to the cached source; nor the turngym
    checkout (the shipped tasks' gold patches), nor, as root, root-only files such as /etc/shadow; nor the
    host's environment variables. Control: the local backend reads the same files."""
    token = secrets.token_hex(8)  # in the files and the variable; their names carry another one
    name = secrets.token_hex(4)
    monkeypatch.setenv("TURNGYM_TEST_API_KEY", token)
    with _bwrap(repo, work_root) as sb, _bwrap(repo, work_root) as other:
        places = [Path.home(), Path(tempfile.gettempdir()), work_root, other.workdir, repo.parent]
        files = [place / f".turngym-secret-{name}" for place in places]
        for path in files:
            path.write_text(f"SECRET {token}\n")
            path.chmod(0o644)
        try:
            checkout_file = sandbox_module._PACKAGE_ROOT / "envs" / "swe" / "sandbox.py"
            readable = [*files, checkout_file] + ([Path("/etc/shadow")] if AS_ROOT and Path("/etc/shadow").exists() else [])
            result = sb.run("; ".join(f"cat {p} 2>&1" for p in readable) + "; env")
            assert token not in result.output, result.output
            assert "BACKENDS" not in result.output  # sandbox.py's text
            assert result.output.count("No such file or directory") >= len(files) + 1, result.output
            if AS_ROOT and Path("/etc/shadow").exists():
                assert "/etc/shadow: Permission denied" in result.output
            with make_sandbox("local", repo, work_root=work_root) as local:  # the control
                assert local.run(f"cat {files[0]} {checkout_file}").output.count(token) == 1
        finally:
            for path in files:
                path.unlink(missing_ok=True)


def _count_processes_of(uid: int, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        count = 0
        for pid in (name for name in os.listdir("/proc") if name.isdigit()):
            try:
                with open(f"/proc/{pid}/status") as status:
                    count += any(line.startswith("Uid:") and int(line.split()[1]) == uid for line in status)
            except OSError:
                pass
        peak[0] = max(peak[0], count)
        time.sleep(0.01)


_FORK_SLEEPERS = """
import os, time
forked, error = 0, None
for _ in range(100):
    try:
        if os.fork() == 0:
            time.sleep(5)
            os._exit(0)
        forked += 1
    except OSError as exc:
        error = exc
print("forked", forked, type(error).__name__, error, flush=True)
time.sleep(0.5)
"""


def _run_counting(sb: BwrapSandbox, command: str) -> tuple[ExecResult, int | None]:
    """Run ``command``, sampling on the host how many processes the sandbox's uid has (as root)."""
    if sb._uid is None:
        return sb.run(command), None
    stop, peak = threading.Event(), [0]
    counter = threading.Thread(target=_count_processes_of, args=(sb._uid, stop, peak))
    counter.start()
    try:
        return sb.run(command), peak[0]
    finally:
        stop.set()
        counter.join()


@needs_bwrap
def test_fork_bomb_is_stopped(repo, work_root):
    """The kernel refuses forks beyond max_procs (as root too: the command runs as a uid of its own): of a
    hundred sleepers, at most 32 exist (counted on the host); a fork bomb stays under the limit as well and
    dies at the timeout with every process it made; the sandbox and the host can still fork afterwards."""
    with _bwrap(repo, work_root, max_procs=32, timeout_s=2.0) as sb:
        sleepers, peak = _run_counting(sb, f"python -c '{_FORK_SLEEPERS}'")
        forked, error = sleepers.output.split()[1:3]
        assert 28 <= int(forked) <= 31 and error == "BlockingIOError", sleepers.output  # + python and its sh: 32
        assert peak is None or 28 <= peak <= 32, peak
        bomb, peak = _run_counting(sb, "bomb() { bomb | bomb & }; bomb; sleep 10")
        assert bomb.timed_out and bomb.returncode is None and bomb.duration_s < 6.0
        assert peak is None or peak <= 32, peak
        assert _leftover_processes(work_root, {sb._uid} - {None}) == []
        assert sb.run("echo alive").output == "alive\n"


@needs_bwrap
def test_infinite_loop_and_limits(repo, work_root):
    """An infinite loop is killed at the wall-clock timeout (returncode None) and, with a longer timeout, by
    the CPU limit (SIGXCPU); a memory hog gets MemoryError; a too-large file is cut at max_file_mb."""
    with _bwrap(repo, work_root, timeout_s=1.0, cpu_s=1, memory_mb=512, max_file_mb=1) as sb:
        looped = sb.run("while :; do :; done")
        assert looped.timed_out and looped.returncode is None and 1.0 <= looped.duration_s < 4.0
        cpu = sb.run("while :; do :; done", timeout_s=10)
        assert not cpu.timed_out and cpu.returncode == 128 + 24 and cpu.duration_s < 4.0  # SIGXCPU
        hog = sb.run("python -c 'x = bytearray(2 << 30)'", timeout_s=10)
        assert hog.returncode == 1 and "MemoryError" in hog.output
        sb.run("head -c 5000000 /dev/zero > big.bin", timeout_s=10)
        assert (sb.workdir / "big.bin").stat().st_size == 1 << 20


@needs_bwrap
def test_one_gigabyte_of_output_is_truncated(repo, work_root):
    """1 GB of output comes back as its head and tail with a note of what was dropped, read as it comes:
    this process never holds more than a few MB of it."""
    with _bwrap(repo, work_root, max_output_bytes=2000, timeout_s=60) as sb:
        tracemalloc.start()
        try:
            result = sb.run("echo START; head -c 1000000000 /dev/zero | tr '\\0' x; echo; echo END")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result.returncode == 0 and result.truncated and not result.timed_out
    total = len("START\n") + 1_000_000_000 + len("\nEND\n")
    assert result.output.startswith("START\nxxx") and result.output.endswith("xxx\nEND\n")
    assert f"[... {total - 2000:,} bytes truncated ...]" in result.output
    assert len(result.output) < 2100
    assert peak < 8 << 20, peak


# ---- bwrap: run semantics ----------------------------------------------------------------------------

@needs_bwrap
def test_run_semantics(repo, work_root, monkeypatch):
    """returncode, merged stdout+stderr, env vars given (and only those), the working directory, the source
    left untouched, the protocol."""
    monkeypatch.setenv("HOST_ONLY_VAR", "host")
    with _bwrap(repo, work_root) as sb:
        assert isinstance(sb, Sandbox) and sb.name == "bwrap" and sb.isolates
        assert sb.workdir.parent == work_root.resolve() and (sb.workdir / "pkg" / "mod.py").is_file()
        assert (sb.workdir / "link_to_mod.py").is_symlink()
        result = sb.run("echo out; echo err >&2; exit 3")
        assert isinstance(result, ExecResult)
        assert (result.returncode, result.output, result.timed_out, result.truncated) == (3, "out\nerr\n", False, False)
        assert result.duration_s > 0
        env = sb.run('echo "$FOO|${HOST_ONLY_VAR:-unset}|$HOME|$(pwd)"', env={"FOO": "bar"}).output
        assert env == f"bar|unset|/tmp|{sb.workdir}\n"
        sb.run("echo changed > pkg/mod.py; rm tests/test_mod.py")
        assert (repo / "pkg" / "mod.py").read_text().startswith("def add") and (repo / "tests" / "test_mod.py").exists()


@needs_bwrap
def test_python_runs_pytest_inside(repo, work_root):
    """The env's interpreter (sys.executable's venv, its stdlib under a hidden path) runs `python -m pytest`
    on the work copy."""
    with _bwrap(repo, work_root) as sb:
        result = sb.run(f"{sys.executable} -m pytest -q -p no:cacheprovider tests && python -c 'import pkg.mod'",
                        env={"PYTHONPATH": str(sb.workdir)})
        assert result.returncode == 0 and "1 passed" in result.output, result.output
        failing = sb.run("sed -i 's/a + b/a - b/' pkg/mod.py && python -m pytest -q -p no:cacheprovider tests")
        assert failing.returncode == 1 and "1 failed" in failing.output


@needs_bwrap
def test_trivial_command_is_fast(repo, work_root):
    """A trivial command takes well under 0.5 s (it is ~10 ms on a 2-core VM); make_sandbox too."""
    start = time.perf_counter()
    with _bwrap(repo, work_root) as sb:
        made = time.perf_counter() - start
        times = []
        for _ in range(10):
            start = time.perf_counter()
            assert sb.run("true").returncode == 0
            times.append(time.perf_counter() - start)
    assert statistics.median(times) < 0.25 and made < 0.5, (made, times)


@needs_bwrap
def test_close_is_idempotent_and_removes_the_copy(repo, work_root):
    sb = _bwrap(repo, work_root)
    workdir = sb.workdir
    sb.close()
    sb.close()
    assert not workdir.exists()
    with pytest.raises(TurngymError, match="closed"):
        sb.run("true")
    dropped = _bwrap(repo, work_root)
    workdir = dropped.workdir
    del dropped
    gc.collect()
    assert not workdir.exists()


# ---- leaks over many killed episodes ---------------------------------------------------------------------

def _episodes(repo: Path, work_root: Path, count: int) -> set[int]:
    """``count`` episodes, each killed a different way: a timeout with background processes and a busy
    loop, a command that exits leaving sleepers behind, and close() from another thread mid-command."""
    uids = set()
    for i in range(count):
        sb = _bwrap(repo, work_root, timeout_s=0.3)
        uids.add(sb._uid)
        way = i % 3
        if way == 0:
            result = sb.run("sleep 100 & sleep 100 & (sleep 100 &) ; while :; do :; done")
            assert result.timed_out
        elif way == 1:
            result = sb.run("(setsid sleep 100 &) ; sleep 100 & echo left")
            assert result.output == "left\n" and result.returncode == 0
        else:
            timer = threading.Timer(0.05, sb.close)
            timer.start()
            sb.run("sleep 100 & sleep 100", timeout_s=30)
            timer.join()
        sb.close()
    return uids - {None}


def _assert_nothing_left(work_root: Path, uids: set[int], mounts_before: list[str]) -> None:
    deadline = time.monotonic() + 5.0  # the kernel reaps a dead pid namespace asynchronously
    while _leftover_processes(work_root, uids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _leftover_processes(work_root, uids) == []
    assert _mounts_under(work_root) == [] and _mounts_under(Path("/tmp")) == mounts_before
    assert list(work_root.iterdir()) == []


@needs_bwrap
def test_killed_episodes_leave_nothing(repo, work_root):
    """A few killed episodes (the quick version of the 200-episode check below)."""
    mounts = _mounts_under(Path("/tmp"))
    _assert_nothing_left(work_root, _episodes(repo, work_root, 9), mounts)


@pytest.mark.slow
@needs_bwrap
def test_two_hundred_killed_episodes_leave_no_process_mount_or_dir(repo, work_root):
    """200 episodes killed by timeout, by close() mid-command, or ending with background processes: no
    process (by uid, cwd, command line, or zombie child), no mount, no work copy is left behind."""
    mounts = _mounts_under(Path("/tmp"))
    _assert_nothing_left(work_root, _episodes(repo, work_root, 200), mounts)


# ---- local --------------------------------------------------------------------------------------------

def test_local_backend_runs_but_does_not_isolate(repo, work_root):
    with make_sandbox("local", repo, Limits(timeout_s=0.5, max_output_bytes=100), work_root=work_root) as sb:
        assert isinstance(sb, LocalSandbox) and sb.name == "local" and not sb.isolates
        result = sb.run("echo out; echo err >&2; echo $FOO; pwd; exit 4", env={"FOO": "bar"})
        assert (result.returncode, result.output) == (4, f"out\nerr\nbar\n{sb.workdir}\n")
        long = sb.run("head -c 5000 /dev/zero | tr '\\0' y")
        assert long.truncated and "[... 4,900 bytes truncated ...]" in long.output
        (sb.workdir / "pid").unlink(missing_ok=True)
        slow = sb.run("sleep 30 & echo $! > pid; wait")
        assert slow.timed_out and slow.returncode is None and slow.duration_s < 3
        left = sb.run("sleep 30 & echo $! > pid2; echo started")
        assert left.output == "started\n" and left.duration_s < 3
        for name in ("pid", "pid2"):  # both sleepers were killed with the process group
            pid = (sb.workdir / name).read_text().strip()
            deadline = time.monotonic() + 2.0
            while (info := _proc_info(pid)) is not None and not info["state"].startswith("Z") and time.monotonic() < deadline:
                time.sleep(0.01)
            assert info is None or info["state"].startswith("Z"), info
        cpu = sb.run("python -c 'x = bytearray(4 << 30)'")
        assert cpu.returncode == 1 and "MemoryError" in cpu.output
        workdir = sb.workdir
    assert not workdir.exists()


# ---- docker -------------------------------------------------------------------------------------------

def test_docker_without_an_engine_is_a_clear_error(repo, work_root):
    """Here there is no Docker engine (and maybe no SDK): the error names the fix and no copy is left."""
    with pytest.raises(TurngymError, match="docker"):
        make_sandbox("docker", repo, work_root=work_root)
    assert list(work_root.iterdir()) == []


class _FakeDockerError(Exception):
    pass


class _FakeImageNotFound(_FakeDockerError):
    pass


class _FakeContainer:
    def __init__(self, options, behaviour):
        self.options, self.behaviour, self.events = options, behaviour, []

    def attach(self, **kwargs):
        self.events.append(("attach", kwargs))
        return iter(self.behaviour.get("chunks", []))

    def start(self):
        self.events.append("start")

    def wait(self, timeout):
        if self.behaviour.get("hang"):
            time.sleep(timeout)
            raise OSError("Read timed out")
        return {"StatusCode": self.behaviour.get("status", 0)}

    def kill(self):
        self.events.append("kill")

    def remove(self, force):
        self.events.append(("remove", force))


def _fake_docker(monkeypatch, engine=True, image=True, behaviour=None):
    containers = []

    class Client:
        def ping(self):
            if not engine:
                raise _FakeDockerError("Error while fetching server API version: connection refused")

        class images:
            @staticmethod
            def get(name):
                if not image:
                    raise _FakeImageNotFound(name)

        class containers:
            @staticmethod
            def create(**options):
                containers.append(_FakeContainer(options, behaviour or {}))
                return containers[-1]

    module = types.ModuleType("docker")
    module.from_env = Client
    module.errors = types.SimpleNamespace(DockerException=_FakeDockerError, ImageNotFound=_FakeImageNotFound)
    module.types = types.SimpleNamespace(Ulimit=lambda **kw: kw)
    monkeypatch.setitem(sys.modules, "docker", module)
    return containers


def test_docker_errors_name_the_fix(repo, work_root, monkeypatch):
    _fake_docker(monkeypatch, engine=False)
    with pytest.raises(TurngymError, match="no Docker engine answers.*DOCKER_HOST"):
        make_sandbox("docker", repo, work_root=work_root)
    _fake_docker(monkeypatch, image=False)
    with pytest.raises(TurngymError, match="docker build -t turngym-swe:.* docker/swe"):
        make_sandbox("docker", repo, work_root=work_root)
    assert list(work_root.iterdir()) == []


def test_docker_container_settings_and_results(repo, work_root, monkeypatch):
    """Each command is a container with no network, a read-only root, a non-root user, the limits, and the
    work copy bind-mounted at its host path; output is capped; a timeout kills the container."""
    containers = _fake_docker(monkeypatch, behaviour={"chunks": [b"a" * 60, b"b" * 60], "status": 2})
    limits = Limits(max_output_bytes=100, max_procs=64, memory_mb=1024, cpu_s=30, max_file_mb=8)
    with make_sandbox("docker", repo, limits, work_root=work_root) as sb:
        assert sb.name == "docker" and sb.isolates and isinstance(sb, Sandbox)
        result = sb.run("make test", env={"FOO": "1"})
        assert result.returncode == 2 and result.truncated and "[... 20 bytes truncated ...]" in result.output
        options = containers[0].options
        assert options["command"] == ["/bin/sh", "-c", "make test"] and options["network_mode"] == "none"
        assert options["read_only"] and options["cap_drop"] == ["ALL"] and options["pids_limit"] == 64
        assert options["user"] != "0" and not options["user"].startswith("0:") and options["mem_limit"] == "1024m"
        assert options["volumes"] == {str(sb.workdir): {"bind": str(sb.workdir), "mode": "rw"}}
        assert options["working_dir"] == str(sb.workdir) and options["environment"]["FOO"] == "1"
        assert {"name": "cpu", "soft": 30, "hard": 31} in options["ulimits"]
        assert containers[0].events[-1] == ("remove", True)
        if AS_ROOT:
            assert (sb.workdir / "pkg").stat().st_uid == sandbox_module.DOCKER_UID
    hung = _fake_docker(monkeypatch, behaviour={"hang": True})
    with make_sandbox("docker", repo, Limits(timeout_s=0.2), work_root=work_root) as sb:
        result = sb.run("sleep 100")
        assert result.timed_out and result.returncode is None and "kill" in hung[0].events
    assert list(work_root.iterdir()) == []


def test_backends_constant():
    assert BACKENDS == ("bwrap", "docker", "local") and sandbox_module.DEFAULT_BACKEND == "bwrap"
    assert 0 not in SANDBOX_UIDS and 65534 not in SANDBOX_UIDS
