"""The images in docker/ follow the rules every turngym image keeps (they cannot be built here: no Docker engine).

Rules: a pinned base (an exact tag, never ``latest``; a digest may follow), a non-root user for what runs, a
HEALTHCHECK on every image that starts a server (probing the port it exposes), pip installs pinned (the lock
or exact versions), apt installs without recommends and with the lists removed, COPY sources that exist in
the build context named in the file's own build line, and a ``docker build`` line to copy.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted(ROOT.glob("docker/*/Dockerfile"))


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        pending += (" " if pending else "") + line.rstrip("\\").strip()
        if line.endswith("\\"):
            continue
        word, _, rest = pending.partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    assert not pending, f"{path}: a continued line never ends"
    return out


def base_image(steps: list[tuple[str, str]]) -> str:
    args = {}
    for word, rest in steps:
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value.strip('"')
        if word == "FROM":
            image = rest.split()[0]
            return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)
    raise AssertionError("no FROM")


def test_there_are_the_three_images_the_design_names():
    assert {p.parent.name for p in DOCKERFILES} == {"swe", "env-server", "trainer-gpu"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_the_base_is_pinned(path):
    image = base_image(instructions(path))
    name, _, digest = image.partition("@")
    assert ":" in name.rsplit("/", 1)[-1], f"{path}: base {image!r} has no tag"
    tag = name.rsplit(":", 1)[1]
    assert tag != "latest" and re.search(r"\d", tag), f"{path}: base {image!r} is not pinned to a version"
    assert not digest or re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{path}: bad digest {digest!r}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_what_runs_runs_as_a_non_root_user(path):
    users = [rest.split(":")[0] for word, rest in instructions(path) if word == "USER"]
    assert users, f"{path}: no USER: the container would run as root"
    assert users[-1] not in ("root", "0"), f"{path}: the last USER is {users[-1]!r}"


def _command(steps: list[tuple[str, str]]) -> list[str]:
    cmd = [rest for word, rest in steps if word in ("CMD", "ENTRYPOINT") and rest not in ("[]",)]
    if not cmd:
        return []
    last = cmd[-1]
    return json.loads(last) if last.startswith("[") else shlex.split(last)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_servers_have_a_healthcheck_on_their_port(path):
    steps = instructions(path)
    command = _command(steps)
    serves = any(word.startswith("serve") for word in command)
    checks = [rest for word, rest in steps if word == "HEALTHCHECK"]
    if not serves:
        return
    assert checks, f"{path}: {command} starts a server but has no HEALTHCHECK"
    ports = [rest.split("/")[0] for word, rest in steps if word == "EXPOSE"]
    assert ports and all(f":{p}" in checks[-1] for p in ports), f"{path}: the HEALTHCHECK does not probe {ports}"
    assert "--port" in command and command[command.index("--port") + 1] in ports


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_installs_are_pinned_and_lean(path):
    for word, rest in instructions(path):
        if word != "RUN":
            continue
        for part in re.split(r"&&|;", rest):
            tokens = shlex.split(part)
            if "apt-get" in tokens and "install" in tokens:
                assert "--no-install-recommends" in tokens, f"{path}: {part.strip()!r}"
                assert "rm -rf /var/lib/apt/lists/*" in rest, f"{path}: apt lists are left in the image"
            if "pip" in tokens and "install" in tokens:
                pkgs = [t for t in tokens[tokens.index("install") + 1:] if not t.startswith("-")]
                constrained = "-c" in tokens
                pinned = all("==" in t or t.startswith("${") for t in pkgs)
                assert constrained or pinned, f"{path}: unpinned pip install {part.strip()!r}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_the_build_line_names_a_context_that_holds_what_it_copies(path):
    text = path.read_text()
    builds = re.findall(r"docker build (.*)", text)
    assert builds, f"{path}: no `docker build` line to copy"
    words = shlex.split(builds[0])
    context = ROOT / words[-1] if words[-1] != "." else ROOT
    if "-f" in words:
        assert ROOT / words[words.index("-f") + 1] == path
    for word, rest in instructions(path):
        if word in ("COPY", "ADD"):
            assert word == "COPY", f"{path}: ADD fetches and unpacks; use COPY"
            sources = [t for t in shlex.split(rest) if not t.startswith("--")][:-1]
            for src in sources:
                assert (context / src).exists(), f"{path}: COPY {src} is not in the context {context}"


def test_the_build_context_leaves_venvs_and_runs_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv*", ".git", "runs", "results"):
        assert entry in ignored


def test_the_env_server_image_serves_registered_envs_through_the_cli():
    import turngym.envs

    command = _command(instructions(ROOT / "docker/env-server/Dockerfile"))
    assert command[:2] == ["turngym", "serve-env"]
    ids = [w for w in command[2:] if not w.startswith("--") and "/" in w]
    assert ids and all(i in turngym.envs.registry() for i in ids)


def test_the_gpu_image_keeps_its_cuda_torch():
    """The lock pins the CPU build of torch: the GPU image must drop those pins before installing."""
    text = (ROOT / "docker/trainer-gpu/Dockerfile").read_text()
    dropped = re.search(r"grep -v -E '\^\(([^)]*)\)=='", text)
    assert dropped is not None
    assert {"torch", "triton", "vllm"} <= set(dropped.group(1).split("|"))
    lock = (ROOT / "constraints-lock.txt").read_text()
    assert re.search(r"^torch==.*\+cpu", lock, re.MULTILINE), "the lock's torch is the CPU build this image must not install"
