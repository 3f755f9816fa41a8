"""Where an SWE agent's commands run: a sandbox over a writable copy of a repository.

INTERFACE (fixed; the backends fill it in):

* :class:`Limits`: wall time per command, CPU seconds, memory, processes, output bytes, file size.
* :class:`ExecResult`: what one command gave back (merged stdout+stderr, truncated with a note).
* :class:`Sandbox`: ``workdir`` (the host path of the writable copy, which the env's file tools edit
  directly), ``run(command, timeout_s=None, env=None) -> ExecResult`` (a shell command run with the
  copy as its working directory), ``close()`` (kill every process, unmount, remove the copy; idempotent),
  ``isolates`` (False only for the ``local`` backend), ``name``.
* :func:`make_sandbox(backend, source, limits)`: copy the tree ``source`` into a fresh work copy and open
  a sandbox of that backend over it: ``"bwrap"`` (the default on Linux), ``"docker"``, ``"local"``.

WORK COPIES. ``source`` (a cached repository tree, read-only by contract) is copied into a fresh directory
``ep-<boot>-<pid>-<random>`` under the work root (``$TURNGYM_SWE_WORKDIR``, else
``$XDG_CACHE_HOME/turngym/swe/work``, else ``~/.cache/turngym/swe/work``; not under ``/tmp``, which the
sandbox replaces with its own tmpfs). ``close()`` removes it; a copy left by a process that died
(kill -9) is removed by the next :func:`make_sandbox` on the same machine.

THE BWRAP BACKEND (bubblewrap; Debian's ``bubblewrap`` package). Each command is one bwrap run:

* Namespaces: new pid, network (only a loopback of its own: neither the host's 127.0.0.1 nor the outside
  can be reached), ipc, uts and cgroup namespaces, a new session (no TIOCSTI into our terminal), and
  ``--die-with-parent``. When the command's shell exits, bwrap's pid 1 exits and the kernel kills every
  process left in the pid namespace: nothing survives a command.
* Files: ``/`` read-only; a fresh ``/dev`` and ``/proc``; a private writable ``/tmp`` (tmpfs of
  ``tmp_mb``, also ``$HOME``); the work copy bound read-write at its host path (so paths in tracebacks are
  the ones the env knows). Everything else is read-only.
* Secrets: what the sandbox must not read is hidden under empty tmpfs mounts: :data:`HIDDEN_PATHS`
  (``/root``, ``/home``, the host's ``/tmp`` and ``/var/tmp``, ``/run`` with its sockets and secrets,
  ``/mnt``, ``/media``, ``/srv``), the work root (the other episodes' copies), the parent of ``source``
  (the repository cache) and the turngym checkout (the shipped tasks, with their gold patches and tests),
  plus the ``hide=`` option. The interpreter's paths (``sys.prefix``, ``sys.base_prefix``, the stdlib,
  site-packages: the ``python`` option, default :data:`sys.executable`) are bound back read-only where a
  hidden path covers them, so the env's ``python -m pytest`` runs inside. The command gets only the
  environment variables it is given (plus ``PATH``, ``HOME``, ``TMPDIR``, ``LANG``), never the host's
  (API keys live there). As root there is a second layer: the command runs as an unprivileged uid, so
  files only root may read (``/etc/shadow``, ssh host keys, 0600/0700 files anywhere) stay unreadable
  even where they are not hidden. World-readable files outside the hidden paths are readable: put
  secrets under a hidden path or pass ``hide=``.
* Limits (per command): ``prlimit`` sets RLIMIT_CPU (SIGXCPU, then SIGKILL a second later), RLIMIT_AS
  (``memory_mb``, per process), RLIMIT_FSIZE (``max_file_mb``, SIGXFSZ), RLIMIT_NPROC (``max_procs``) and
  no core files; the wall clock (``timeout_s``) kills the pid namespace's init, which takes every
  process of the namespace with it. Output is read as it comes and only its head and tail are kept.
* How a fork bomb is stopped: the kernel enforces RLIMIT_NPROC only for a uid other than root (it counts
  the processes of the uid, and exempts uid 0 and holders of CAP_SYS_ADMIN/CAP_SYS_RESOURCE). Run as
  root (CI), bwrap would map the sandbox's uid to root outside, where the limit does nothing. So as root
  bwrap sets up the mounts without a user namespace and the command is started through ``setpriv`` as a
  fresh uid of its own (:data:`SANDBOX_UIDS`, one per sandbox, in no passwd file), with every capability
  dropped and no_new_privs: its processes are counted against ``max_procs`` by the kernel, a fork bomb
  gets EAGAIN and is killed with the rest at the timeout, and ``kill(-1)`` as that uid kills exactly this
  sandbox's processes at once (done on timeout and on close). The work copy belongs to that uid;
  :meth:`BwrapSandbox.run` first gives it what the env wrote there as root (a walk by directory fds that
  never follows a symlink and leaves alone hard links to elsewhere). Run as another user, bwrap makes an
  unprivileged user namespace (it must be allowed: ``kernel.unprivileged_userns_clone``,
  ``user.max_user_namespaces``, Ubuntu's ``kernel.apparmor_restrict_unprivileged_userns``), the command
  keeps the caller's uid, and RLIMIT_NPROC, set inside that namespace, counts only its processes there.
* Not limited: the disk space of the work copy (many files of ``max_file_mb`` each), the CPU time of many
  processes together (RLIMIT_CPU is per process: the wall clock bounds them), and memory summed over
  processes (RLIMIT_AS is per process). A cgroup would bound these; it is not used, as a writable cgroup
  tree is not available everywhere bwrap is. As root, the command may still create an unprivileged user
  namespace of its own (the mounts stay locked in it).

THE DOCKER BACKEND (the ``docker`` Python SDK and a running engine; the image is built from
``docker/swe/Dockerfile``, see ``docker/swe/README.md``): one container per command, with no network, a
read-only root file system but a tmpfs ``/tmp`` and the work copy bind-mounted read-write at its host path,
a non-root user, every capability dropped, no_new_privs, and the memory, pids, CPU-seconds and file-size
limits of :class:`Limits`. The image's Python runs the commands, not the host's.

THE LOCAL BACKEND runs the command as a plain subprocess with the same rlimits (but RLIMIT_NPROC, which
would count all of the user's processes) and the same output cap. It does NOT isolate anything: the
command sees the network and every file the user can, and may write them. It is never the default; use
it only for trusted commands (tests of turngym itself, machines without bwrap and docker).

This module depends on nothing of ours but :mod:`turngym.errors`.
"""

from __future__ import annotations

import fcntl
import inspect
import json
import os
import random
import resource
import selectors
import shutil
import signal
import site
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from turngym.errors import EnvFaultError, TurngymError

BACKENDS = ("bwrap", "docker", "local")
#: the backend the env uses unless told otherwise (bwrap is Linux-only)
DEFAULT_BACKEND = "bwrap" if sys.platform.startswith("linux") else "docker"
#: where the work copies go, if set (else the user's cache directory; see the module docstring)
WORK_ROOT_ENV = "TURNGYM_SWE_WORKDIR"
#: host paths hidden (empty tmpfs) inside a bwrap sandbox; those missing on a machine are skipped
HIDDEN_PATHS = ("/root", "/home", "/tmp", "/var/tmp", "/run", "/mnt", "/media", "/srv")
#: the uids a bwrap sandbox run by root gives its commands, one per sandbox (beyond any passwd file or subuid range)
SANDBOX_UIDS = range(2_000_000_000, 2_100_000_000)
#: the uid:gid of the docker image's user (docker/swe/Dockerfile)
DOCKER_UID = 1000
#: the size of the sandbox's own /tmp (MiB)
TMP_MB = 512

_PIPE_SIZE = 1 << 20
_READ_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the turngym checkout (or installed package)


def _turngym_version() -> str:
    try:
        from importlib.metadata import version

        return version("turngym")
    except Exception:  # not installed as a distribution (a bare checkout)
        return "dev"


#: the docker image a docker sandbox runs unless given ``image=`` (``docker build -t`` it from docker/swe)
DOCKER_IMAGE = f"turngym-swe:{_turngym_version()}"


@dataclass(frozen=True)
class Limits:
    """Per-command limits of a sandbox."""

    timeout_s: float = 60.0  # wall clock of one command; the whole process group is killed after it
    cpu_s: int = 120  # CPU seconds of one command
    memory_mb: int = 2048  # address space per process
    max_procs: int = 128  # processes at once
    max_output_bytes: int = 32_000  # stdout+stderr kept (the head and the tail, with a note between)
    max_file_mb: int = 64  # largest file a command may write


@dataclass(frozen=True)
class ExecResult:
    """One command's result."""

    output: str  # stdout and stderr merged, truncated to the limit with a note
    returncode: int | None  # None when killed on timeout
    timed_out: bool = False
    truncated: bool = False
    duration_s: float = 0.0


@runtime_checkable
class Sandbox(Protocol):
    name: str
    isolates: bool
    workdir: Path

    def run(self, command: str, timeout_s: float | None = None, env: dict[str, str] | None = None) -> ExecResult: ...

    def close(self) -> None: ...


# ---- the builder -------------------------------------------------------------------------------

def make_sandbox(backend: str, source: Path | str, limits: Limits | None = None, **options: Any) -> Sandbox:
    """Copy the tree ``source`` into a fresh work copy and open a sandbox of ``backend`` over it.

    Args:
        backend: one of :data:`BACKENDS`.
        source: a repository tree (read-only by contract: the sandbox works on a copy).
        limits: per-command limits (default :class:`Limits()`).
        **options: ``work_root`` (where the copy goes; default :func:`default_work_root`) and the backend's
            own: bwrap ``hide``, ``python``, ``tmp_mb``; docker ``image``, ``client``, ``cpus``, ``tmp_mb``;
            local none.

    Raises:
        TurngymError: an unknown backend or option, a missing ``source``, or a backend that cannot run
            here (bwrap not installed, no Docker engine): the message names the fix.
    """
    classes = {"bwrap": BwrapSandbox, "docker": DockerSandbox, "local": LocalSandbox}
    if backend not in classes:
        raise TurngymError(f"unknown sandbox backend {backend!r}; use one of {BACKENDS}")
    cls = classes[backend]
    known = [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "workdir", "limits")]
    unknown = sorted(set(options) - set(known) - {"work_root"})
    if unknown:
        raise TurngymError(f"unknown option(s) {unknown} for the {backend} sandbox; it takes work_root, {', '.join(known)}")
    limits = limits if limits is not None else Limits()
    source = Path(source)
    if not source.is_dir():
        raise TurngymError(f"sandbox source {str(source)!r} is not a directory (a repository tree to copy)")
    work_root = Path(options.pop("work_root", None) or default_work_root())
    if backend == "bwrap":
        options.setdefault("hide", ())
        options["hide"] = (*options["hide"], str(source.resolve().parent))
    workdir = _make_work_copy(source, work_root)
    try:
        return cls(workdir, limits, **options)
    except BaseException:
        _remove_tree(workdir)
        raise


def default_work_root() -> Path:
    """Where work copies go: ``$TURNGYM_SWE_WORKDIR``, else the user's cache directory."""
    if os.environ.get(WORK_ROOT_ENV):
        return Path(os.environ[WORK_ROOT_ENV])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "turngym" / "swe" / "work"


# ---- work copies --------------------------------------------------------------------------------

def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return "noboot"


def _make_work_copy(source: Path, work_root: Path) -> Path:
    work_root.mkdir(parents=True, exist_ok=True)
    work_root = work_root.resolve()
    _remove_stale_copies(work_root)
    workdir = Path(tempfile.mkdtemp(prefix=f"ep-{_boot_id()}-{os.getpid()}-", dir=work_root))
    try:
        _copy_tree(source, workdir)
    except BaseException:
        _remove_tree(workdir)
        raise
    return workdir


def _copy_tree(source: Path, dest: Path) -> None:
    """GNU cp (several times faster than shutil on thousands of files; reflinks where the file system has
    them), else shutil; symlinks are copied as links."""
    if sys.platform.startswith("linux") and shutil.which("cp"):
        done = subprocess.run(["cp", "-a", "--reflink=auto", "--", f"{source}/.", str(dest)], check=False,
                              stdin=subprocess.DEVNULL, capture_output=True)
        if done.returncode == 0:
            return
        for entry in list(dest.iterdir()):  # a cp that is not GNU's, or failed half-way: start again
            if entry.is_dir() and not entry.is_symlink():
                _remove_tree(entry)
            else:
                entry.unlink()
    shutil.copytree(source, dest, symlinks=True, dirs_exist_ok=True)


def _remove_stale_copies(work_root: Path) -> None:
    """Remove the copies of processes that died without closing their sandboxes (same boot, pid gone)."""
    boot = _boot_id()
    for entry in os.scandir(work_root):
        parts = entry.name.split("-")
        if len(parts) < 4 or parts[0] != "ep" or not parts[2].isdigit() or not entry.is_dir(follow_symlinks=False):
            continue
        if parts[1] == boot:
            try:
                os.kill(int(parts[2]), 0)
                continue
            except ProcessLookupError:
                pass
            except PermissionError:  # alive, another user's
                continue
        _remove_tree(Path(entry.path))


def _remove_tree(path: Path) -> None:
    def make_writable_and_retry(function: Callable[[str], Any], failed: str, _exc_info: Any) -> None:
        os.chmod(os.path.dirname(failed), 0o700)  # a command may leave read-only directories
        function(failed)

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=make_writable_and_retry)


def _hand_over(root: Path, uid: int, gid: int) -> None:
    """Give the work copy's entries that are not ``uid``'s to it (the env writes files there as root).

    Walks by directory fds and never follows a symlink, so a command that swapped a directory for a
    link cannot steer it; a file with other hard links is left alone (it may be a link to a file
    elsewhere). Subtrees it cannot open (too deep for the fd limit) are skipped.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    stack: list[tuple[int, list[str]]] = []

    def enter(fd: int) -> None:
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)
        subdirs = []
        with os.scandir(fd) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.name)
                    continue
                st = entry.stat(follow_symlinks=False)
                if (st.st_uid, st.st_gid) != (uid, gid) and (stat.S_ISLNK(st.st_mode) or st.st_nlink == 1):
                    os.chown(entry.name, uid, gid, dir_fd=fd, follow_symlinks=False)
        stack.append((fd, subdirs))

    enter(os.open(root, flags))
    while stack:
        fd, subdirs = stack[-1]
        if not subdirs:
            os.close(fd)
            stack.pop()
            continue
        try:
            enter(os.open(subdirs.pop(), flags, dir_fd=fd))
        except OSError:  # gone, swapped for a link, or out of fds
            continue


# ---- running a command: the output cap and the read loop ------------------------------------------

class _OutputCap:
    """Keeps the first and the last bytes of a stream and counts the rest (memory stays bounded)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, max_bytes)
        self.head_max = self.max_bytes // 2
        self.tail_max = self.max_bytes - self.head_max
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_max - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if not data or not self.tail_max:
            return
        if len(data) >= self.tail_max:
            self.tail = bytearray(data[-self.tail_max:])
        else:
            self.tail += data
            del self.tail[:max(0, len(self.tail) - self.tail_max)]

    @property
    def truncated(self) -> bool:
        return self.total > self.max_bytes

    def text(self) -> str:
        if not self.truncated:
            return bytes(self.head + self.tail).decode("utf-8", errors="replace")
        dropped = self.total - len(self.head) - len(self.tail)
        return (self.head.decode("utf-8", errors="replace") + f"\n[... {dropped:,} bytes truncated ...]\n"
                + self.tail.decode("utf-8", errors="replace"))


def _collect(proc: subprocess.Popen, timeout_s: float, max_output_bytes: int, kill: Callable[[], None],
             on_exit: Callable[[], None] | None = None) -> ExecResult:
    """Read ``proc``'s merged output until EOF or the deadline; on the deadline call ``kill``.

    ``on_exit`` runs once when the process has exited but the pipe is still open (a background process
    holds it: the local backend kills its process group); EOF is then awaited one more second.
    """
    start = time.monotonic()
    deadline = start + timeout_s
    cap = _OutputCap(max_output_bytes)
    fd = proc.stdout.fileno()
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)  # fewer, larger reads of a flood
    except OSError:
        pass
    timed_out = False
    exited_at: float | None = None
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            if exited_at is not None and now - exited_at > 1.0:
                break
            if selector.select(min(deadline - now, 0.05)):
                data = os.read(fd, _READ_SIZE)
                if not data:
                    break
                cap.feed(data)
            elif exited_at is None and proc.poll() is not None:
                exited_at = time.monotonic()
                if on_exit is not None:
                    on_exit()
        if timed_out:
            kill()
            drain_until = time.monotonic() + 2.0
            while time.monotonic() < drain_until and selector.select(0.2):
                data = os.read(fd, _READ_SIZE)
                if not data:
                    break
                cap.feed(data)
    proc.stdout.close()
    try:
        returncode = proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        returncode = proc.wait()
    return ExecResult(output=cap.text(), returncode=None if timed_out else returncode, timed_out=timed_out,
                      truncated=cap.truncated, duration_s=time.monotonic() - start)


def _base_env(env: dict[str, str] | None, path_first: str | None, home: str) -> dict[str, str]:
    """The command's whole environment: a few defaults and ``env``; nothing of the host's."""
    path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    base = {"PATH": f"{path_first}:{path}" if path_first else path, "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}
    return {**base, **(env or {})}


def _require_tool(name: str, fix: str) -> str:
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/bin"]))
    if found is None:
        raise TurngymError(f"the bwrap sandbox needs `{name}`, which is not installed: {fix} "
                           f"(or run `make setup` as root), or use another backend ({BACKENDS})")
    return found


class _Lifecycle:
    """What the backends share: the running process, closing once, the context manager."""

    workdir: Path

    def _open(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._running: subprocess.Popen | None = None

    def _check_open(self) -> None:
        if self._closed:
            raise TurngymError(f"this {self.name} sandbox is closed (its work copy {self.workdir} is gone); "
                               f"make a new one with make_sandbox")

    def close(self) -> None:
        """Kill every process of the sandbox and remove the work copy; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            running = self._running
        if running is not None and running.poll() is None:
            self._kill(running)
        self._cleanup()
        _remove_tree(self.workdir)

    def _kill(self, proc: subprocess.Popen) -> None:  # pragma: no cover - each backend has its own
        proc.kill()

    def _cleanup(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not getattr(self, "_closed", True):
                self.close()
        except Exception:  # interpreter shutdown
            pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.workdir}{' closed' if self._closed else ''}>"


# ---- bwrap -----------------------------------------------------------------------------------------

_USED_UIDS: set[int] = set()
_PROBED: set[tuple[str, ...]] = set()


def _fresh_uid() -> int:
    rng = random.SystemRandom()
    while True:
        uid = rng.choice(SANDBOX_UIDS)
        if uid not in _USED_UIDS:
            _USED_UIDS.add(uid)
            return uid


def _kill_uid(uid: int) -> None:
    """``kill(-1, SIGKILL)`` as ``uid``: every process of that uid dies at once (a fork bomb cannot outrun it)."""
    subprocess.run(["/bin/sh", "-c", "kill -KILL -1 2>/dev/null; exit 0"], user=uid, group=uid, extra_groups=[],
                   check=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/",
                   env={"PATH": "/usr/bin:/bin"}, timeout=30)


def _parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            return int(stat_file.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _interpreter_paths(python: str) -> list[str]:
    """The directories the interpreter ``python`` needs (prefixes, stdlib, site-packages), real paths."""
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        found = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, *sysconfig.get_paths().values(),
                 *site.getsitepackages()]
    else:  # another interpreter: ask it
        code = ("import site, sys, sysconfig; print('\\n'.join([sys.prefix, sys.exec_prefix, sys.base_prefix, "
                "sys.base_exec_prefix, *sysconfig.get_paths().values(), *site.getsitepackages()]))")
        done = subprocess.run([python, "-I", "-c", code], check=False, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise TurngymError(f"the bwrap sandbox's python {python!r} does not run: {done.stderr.strip()[-300:]}")
        found = done.stdout.splitlines()
    found.append(os.path.dirname(os.path.realpath(python)))
    paths = {os.path.realpath(p) for p in found if p and os.path.isdir(p)}
    paths |= {os.path.normpath(p) for p in found if p and os.path.isdir(p)}
    return sorted(paths)


def _outermost(paths: Iterable[str]) -> list[str]:
    """``paths`` without those inside another one, sorted (parents first)."""
    kept: list[str] = []
    for path in sorted(set(paths)):
        if not any(_is_within(path, other) for other in kept):
            kept.append(path)
    return kept


def _is_within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


class BwrapSandbox(_Lifecycle):
    """Commands run under bubblewrap: no network, read-only system, secrets hidden, rlimits (module docstring).

    Args:
        workdir: the work copy (made by :func:`make_sandbox`); removed on :meth:`close`.
        limits: per-command limits.
        hide: more host paths to hide (empty tmpfs) inside the sandbox.
        python: the interpreter whose directories stay visible (read-only); its ``bin`` directory comes
            first on ``PATH``. Default :data:`sys.executable`.
        tmp_mb: the size of the sandbox's ``/tmp``.
    """

    name = "bwrap"
    isolates = True

    def __init__(self, workdir: Path, limits: Limits, hide: Iterable[str | Path] = (), python: str = sys.executable,
                 tmp_mb: int = TMP_MB) -> None:
        self._open()
        self.workdir = Path(workdir)
        self.limits = limits
        self._bwrap = _require_tool("bwrap", "apt-get install bubblewrap")
        self._prlimit = _require_tool("prlimit", "apt-get install util-linux")
        self._uid: int | None = None
        if os.geteuid() == 0:
            self._setpriv = _require_tool("setpriv", "apt-get install util-linux")
            self._uid = _fresh_uid()
            _hand_over(self.workdir, self._uid, self._uid)
        self._info: int | None = None  # the read end of bwrap's --info-fd while a command runs
        self._child: int | None = None  # the namespace's pid 1, once read from it
        self._python_bin = os.path.dirname(python)
        self._mounts = self._mount_args(hide, python, tmp_mb)
        self._probe()

    # The bwrap command line, without the command.
    def _mount_args(self, hide: Iterable[str | Path], python: str, tmp_mb: int) -> list[str]:
        if self._uid is not None:  # root: no user namespace (see the module docstring); setpriv drops root
            args = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        else:
            args = ["--unshare-all", "--unshare-user", "--disable-userns"]
        args += ["--die-with-parent", "--new-session", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        system = ("/usr", "/etc", "/bin", "/lib", "/proc", "/dev")
        hidden = _outermost(
            p for p in (os.path.realpath(p) for p in (*HIDDEN_PATHS, *hide, self.workdir.parent, _PACKAGE_ROOT))
            if os.path.isdir(p) and not any(_is_within(s, p) or _is_within(p, s) for s in system[4:])
            and not any(_is_within(s, p) for s in system))
        if "/tmp" not in hidden:
            hidden = _outermost([*hidden, "/tmp"])
        for path in hidden:
            perms, size = ("1777", tmp_mb << 20) if path == "/tmp" else ("0755", 1 << 20)
            args += ["--perms", perms, "--size", str(size), "--tmpfs", path]
        # What must stay visible under a hidden path: the interpreter (read-only) and the work copy.
        keep = [p for p in _outermost(_interpreter_paths(python)) if not any(_is_within(h, p) for h in hidden)]
        made: set[str] = set()
        for path, kind in [*((p, "--ro-bind") for p in keep), (str(self.workdir), "--bind")]:
            cover = next((h for h in hidden if _is_within(path, h)), None)
            if cover is None:
                if kind == "--ro-bind":
                    continue  # visible as it is
            else:
                chain, parent = [], os.path.dirname(path)
                while parent != cover and _is_within(parent, cover):
                    chain.append(parent)
                    parent = os.path.dirname(parent)
                for directory in reversed(chain):
                    if directory not in made:
                        made.add(directory)
                        args += ["--perms", "0755", "--dir", directory]
            args += [kind, path, path]
        return args + ["--chdir", str(self.workdir)]

    def _argv(self, command: str, info_fd: int | None = None) -> list[str]:
        lim = self.limits
        argv = [self._bwrap, *self._mounts, *(["--info-fd", str(info_fd)] if info_fd is not None else []), "--"]
        if self._uid is not None:
            argv += [self._setpriv, f"--reuid={self._uid}", f"--regid={self._uid}", "--clear-groups",
                     "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
        argv += [self._prlimit, f"--cpu={lim.cpu_s}:{lim.cpu_s + 1}", f"--as={lim.memory_mb << 20}",
                 f"--fsize={lim.max_file_mb << 20}", f"--nproc={lim.max_procs}", "--core=0", "--",
                 "/bin/sh", "-c", command]
        return argv

    def _probe(self) -> None:
        """Start one sandbox of this shape once per process, to fail here with the fix rather than in run()."""
        key = (self._bwrap, str(self._uid is not None), *(arg for arg in self._mounts if str(self.workdir) not in arg))
        if key in _PROBED:
            return
        done = subprocess.run(self._argv("exit 0"), check=False, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, env=_base_env(None, None, "/tmp"), timeout=60)
        if done.returncode != 0:
            hint = ("bwrap as root needs to create namespaces: inside a container that means --privileged "
                    "(or a seccomp/AppArmor profile that allows unshare and mount)" if self._uid is not None else
                    "as a user, bwrap needs unprivileged user namespaces: sysctl kernel.unprivileged_userns_clone=1, "
                    "user.max_user_namespaces>0 (on Ubuntu: kernel.apparmor_restrict_unprivileged_userns=0)")
            raise TurngymError(f"bwrap cannot start a sandbox here (exit {done.returncode}: "
                               f"{done.stderr.strip()[-400:]}); it needs bubblewrap >= 0.8 (Debian 12's); {hint}; "
                               f"or use the docker backend")
        _PROBED.add(key)

    def run(self, command: str, timeout_s: float | None = None, env: dict[str, str] | None = None) -> ExecResult:
        """Run ``command`` with ``/bin/sh -c`` in the work copy; kill everything it started after ``timeout_s``."""
        with self._lock:
            self._check_open()
            if self._uid is not None:
                _hand_over(self.workdir, self._uid, self._uid)
            info_read, info_write = os.pipe()
            try:
                proc = subprocess.Popen(self._argv(command, info_write), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(info_write,),
                                        env=_base_env(env, self._python_bin, "/tmp"), start_new_session=True)
            except BaseException:
                os.close(info_read)
                raise
            finally:
                os.close(info_write)
            self._running = proc
            self._info, self._child = info_read, None
        try:
            return _collect(proc, self.limits.timeout_s if timeout_s is None else timeout_s,
                            self.limits.max_output_bytes, lambda: self._kill(proc))
        finally:
            with self._lock:
                self._running = None
                os.close(info_read)
                self._info = None

    def _kill(self, proc: subprocess.Popen) -> None:
        if self._uid is not None:
            _kill_uid(self._uid)
        child = self._namespace_init()
        if child is not None and proc.poll() is None and _parent_pid(child) == proc.pid:  # not a reused pid
            try:
                os.kill(child, signal.SIGKILL)  # pid 1 of the namespace: the kernel kills the rest
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:  # bwrap still setting up: its children die with it
            proc.kill()

    def _namespace_init(self) -> int | None:
        """The host pid of the sandbox's pid 1, from bwrap's --info-fd (None before bwrap wrote it)."""
        with self._lock:  # run() closes the fd under the lock: never read a reused fd number
            fd = self._info
            if fd is None or self._child is not None:
                return self._child
            chunks = []
            try:
                with selectors.DefaultSelector() as selector:
                    selector.register(fd, selectors.EVENT_READ)
                    while selector.select(0.5):  # bwrap writes it and closes it while setting up
                        data = os.read(fd, 4096)
                        if not data:
                            break
                        chunks.append(data)
                self._child = int(json.loads(b"".join(chunks))["child-pid"])
                return self._child
            except (OSError, ValueError, KeyError, TypeError):  # not written: bwrap died or is still starting
                return None

    def _cleanup(self) -> None:
        if self._uid is not None:
            _kill_uid(self._uid)
            _USED_UIDS.discard(self._uid)


# ---- docker ------------------------------------------------------------------------------------------

class DockerSandbox(_Lifecycle):
    """Commands run in a Docker container each (the image from ``docker/swe/Dockerfile``; module docstring).

    Args:
        workdir: the work copy (made by :func:`make_sandbox`), bind-mounted at the same path.
        limits: per-command limits (``memory_mb`` bounds the whole container here).
        image: the image (default :data:`DOCKER_IMAGE`; build it with ``docker build -t`` from ``docker/swe``).
        client: a ``docker.DockerClient`` (default ``docker.from_env()``).
        cpus: CPUs the container may use.
        tmp_mb: the size of the container's ``/tmp``.
    """

    name = "docker"
    isolates = True

    def __init__(self, workdir: Path, limits: Limits, image: str = DOCKER_IMAGE, client: Any = None,
                 cpus: float = 1.0, tmp_mb: int = TMP_MB) -> None:
        self._open()
        self.workdir = Path(workdir)
        self.limits = limits
        self.image = image
        self.cpus = cpus
        self.tmp_mb = tmp_mb
        try:
            import docker
        except ImportError:
            raise TurngymError("the docker sandbox needs the Python package 'docker' (the Docker SDK): "
                               "pip install docker; and a running Docker engine; or use the bwrap backend") from None
        self._docker = docker
        try:
            self._client = client if client is not None else docker.from_env()
            self._client.ping()
        except docker.errors.DockerException as exc:
            raise TurngymError(f"the docker sandbox: no Docker engine answers ({exc}); start one (e.g. "
                               f"`sudo systemctl start docker`) or point DOCKER_HOST at one, or use the bwrap "
                               f"backend") from None
        try:
            self._client.images.get(image)
        except docker.errors.ImageNotFound:
            raise TurngymError(f"the docker sandbox: image {image!r} is missing; build it: "
                               f"docker build -t {image} docker/swe (see docker/swe/README.md)") from None
        if os.geteuid() == 0:  # the image's user must own the copy
            self._user = f"{DOCKER_UID}:{DOCKER_UID}"
            self._owner: int | None = DOCKER_UID
            _hand_over(self.workdir, DOCKER_UID, DOCKER_UID)
        else:
            self._user = f"{os.getuid()}:{os.getgid()}"
            self._owner = None
        self._container: Any = None

    def _create_options(self, command: str, env: dict[str, str] | None) -> dict[str, Any]:
        lim = self.limits
        ulimit = self._docker.types.Ulimit
        return dict(
            image=self.image, command=["/bin/sh", "-c", command], working_dir=str(self.workdir), user=self._user,
            environment={"HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8", **(env or {})},
            network_mode="none", read_only=True, tmpfs={"/tmp": f"rw,nosuid,nodev,size={self.tmp_mb}m"},
            volumes={str(self.workdir): {"bind": str(self.workdir), "mode": "rw"}},
            mem_limit=f"{lim.memory_mb}m", memswap_limit=f"{lim.memory_mb}m", pids_limit=lim.max_procs,
            nano_cpus=int(self.cpus * 1e9), cap_drop=["ALL"], security_opt=["no-new-privileges"],
            ulimits=[ulimit(name="cpu", soft=lim.cpu_s, hard=lim.cpu_s + 1),
                     ulimit(name="fsize", soft=lim.max_file_mb << 20, hard=lim.max_file_mb << 20),
                     ulimit(name="core", soft=0, hard=0)],
            log_config={"type": "none"}, labels={"turngym.swe.workdir": str(self.workdir)},
            stdin_open=False, tty=False)

    def run(self, command: str, timeout_s: float | None = None, env: dict[str, str] | None = None) -> ExecResult:
        """Run ``command`` with ``/bin/sh -c`` in a fresh container; kill the container after ``timeout_s``."""
        with self._lock:
            self._check_open()
            if self._owner is not None:
                _hand_over(self.workdir, self._owner, self._owner)
            container = self._client.containers.create(**self._create_options(command, env))
            self._container = container
        start = time.monotonic()
        timeout = self.limits.timeout_s if timeout_s is None else timeout_s
        cap = _OutputCap(self.limits.max_output_bytes)
        try:
            stream = container.attach(stdout=True, stderr=True, stream=True, logs=False)

            def read() -> None:
                try:
                    for chunk in stream:
                        cap.feed(chunk)
                except Exception:  # the container was killed under the stream
                    pass

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            container.start()
            timed_out = False
            try:
                returncode = int(container.wait(timeout=timeout)["StatusCode"])
            except Exception as exc:  # requests' ReadTimeout (or a dropped connection)
                if time.monotonic() - start < timeout * 0.9:
                    raise EnvFaultError(f"the docker sandbox lost its container: {exc}") from exc
                timed_out, returncode = True, None
                container.kill()
            reader.join(timeout=5.0)
        finally:
            self._remove(container)
        return ExecResult(output=cap.text(), returncode=returncode, timed_out=timed_out, truncated=cap.truncated,
                          duration_s=time.monotonic() - start)

    def _remove(self, container: Any) -> None:
        with self._lock:
            self._container = None
        try:
            container.remove(force=True)
        except self._docker.errors.DockerException:  # already gone
            pass

    def close(self) -> None:
        """Kill and remove the running container (if any), remove the work copy; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            container = self._container
        if container is not None:
            self._remove(container)
        _remove_tree(self.workdir)


# ---- local -------------------------------------------------------------------------------------------

def _local_rlimits(limits: Limits) -> Callable[[], None]:
    def apply() -> None:  # in the child, before exec
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb << 20, limits.memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_mb << 20, limits.max_file_mb << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


class LocalSandbox(_Lifecycle):
    """Commands run as plain subprocesses of this process, in the work copy. It does NOT isolate.

    The command sees the network and every file the user can see, and may change them; it runs with
    this user's rights. Only the rlimits (CPU, memory, file size; not processes), the timeout (the
    command's process group is killed: a process that leaves the group with setsid survives it) and the
    output cap apply. Never the default: use it for trusted commands only.

    Args:
        workdir: the work copy (made by :func:`make_sandbox`); removed on :meth:`close`.
        limits: per-command limits.
    """

    name = "local"
    isolates = False

    def __init__(self, workdir: Path, limits: Limits) -> None:
        self._open()
        self.workdir = Path(workdir)
        self.limits = limits

    def run(self, command: str, timeout_s: float | None = None, env: dict[str, str] | None = None) -> ExecResult:
        """Run ``command`` with ``/bin/sh -c`` in the work copy; kill its process group after ``timeout_s``."""
        with self._lock:
            self._check_open()
            proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=self.workdir, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                    env=_base_env(env, os.path.dirname(sys.executable), tempfile.gettempdir()),
                                    preexec_fn=_local_rlimits(self.limits))
            self._running = proc
        try:
            return _collect(proc, self.limits.timeout_s if timeout_s is None else timeout_s,
                            self.limits.max_output_bytes, lambda: self._kill(proc), on_exit=lambda: self._killpg(proc))
        finally:
            with self._lock:
                self._running = None

    @staticmethod
    def _killpg(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _kill(self, proc: subprocess.Popen) -> None:
        self._killpg(proc)
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
