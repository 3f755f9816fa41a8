"""Unified diffs between two folder trees, their exact application, and a digest of a tree.

The SWE env compares the agent's work copy with the task's tree (:func:`tree_diff`), the task files
carry the bug and its fix as diffs (:func:`apply_diff`), and a tree's identity is its content
(:func:`tree_digest`, SWE-bench's ``base_commit`` for turngym's tasks). All three are pure Python:
neither git nor patch need be installed.

Diffs are git-style (``diff --git a/x b/x``, ``---``/``+++`` lines, hunks with 3 lines of context,
``\\ No newline at end of file``). :func:`apply_diff` takes those and the diffs of ``git diff`` and
``diff -u`` (paths with ``a/``/``b/`` prefixes or none), lets a hunk move (a line offset, as
``git apply`` does) but never fuzzes its content: a context or removed line that does not match is
a :class:`PatchError` naming the file, the hunk and the line.

Only text files (UTF-8, no NUL byte) are diffed; binary files that differ are left out. Lines end at
``\\n`` only (a ``\\r`` stays part of its line), so any text round-trips byte for byte.

This module depends on nothing of ours but :mod:`turngym.errors`.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from turngym.errors import TurngymError

#: names (fnmatch patterns, matched against each path component) that diffs and digests skip: caches
#: and byte code that running the tests leaves behind, version-control folders, turngym's test reports
DEFAULT_EXCLUDE = ("__pycache__", ".pytest_cache", "*.pyc", "*.pyo", ".git", ".hg", ".svn", ".turngym-*")
CONTEXT_LINES = 3
NO_NEWLINE = "\\ No newline at end of file"


class PatchError(TurngymError, ValueError):
    """A diff that cannot be parsed or does not apply to the tree it is applied to."""


# ---- trees ------------------------------------------------------------------------------------


def _excluded(name: str, exclude: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)


def tree_files(root: str | os.PathLike, exclude: tuple[str, ...] = DEFAULT_EXCLUDE) -> dict[str, Path]:
    """Every file under ``root`` (relative POSIX path -> path), sorted, skipping ``exclude``d names.

    Symbolic links are listed as files (never followed into folders)."""
    root = Path(root)
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        keep = []
        for name in sorted(dirnames):
            if _excluded(name, exclude):
                continue
            if os.path.islink(os.path.join(dirpath, name)):
                filenames.append(name)  # a link to a folder: its target, not its content
            else:
                keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            if not _excluded(name, exclude):
                path = Path(dirpath, name)
                found[path.relative_to(root).as_posix()] = path
    return dict(sorted(found.items()))


def _file_bytes(path: Path) -> bytes:
    if path.is_symlink():
        return b"symlink:" + os.readlink(path).encode("utf-8", "surrogateescape")
    return path.read_bytes()


def tree_digest(root: str | os.PathLike, exclude: tuple[str, ...] = DEFAULT_EXCLUDE) -> str:
    """A SHA-256 of a tree's file paths and contents (modes and times left out): equal trees, equal digests."""
    h = hashlib.sha256()
    for rel, path in tree_files(root, exclude).items():
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
        h.update(hashlib.sha256(_file_bytes(path)).digest())
    return h.hexdigest()


# ---- making diffs -----------------------------------------------------------------------------


def split_lines(text: str) -> list[str]:
    """``text`` cut after each ``\\n`` (the last line may lack one); ``"".join`` gives ``text`` back."""
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


def _as_text(data: bytes | None) -> str | None:
    if data is None or b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _range(start: int, length: int) -> str:
    """A hunk header's range, as difflib and git write it (0-based start in, 1-based out)."""
    first = start + 1 if length else start
    return f"{first}" if length == 1 else f"{first},{length}"


def _body_line(prefix: str, line: str) -> str:
    return prefix + line if line.endswith("\n") else f"{prefix}{line}\n{NO_NEWLINE}\n"


def file_diff(rel: str, old: str | None, new: str | None, context: int = CONTEXT_LINES) -> str:
    """The git-style diff of one file from ``old`` to ``new`` text (None: the file is absent on that side)."""
    if old == new:
        return ""
    out = [f"diff --git a/{rel} b/{rel}\n"]
    if old is None:
        out.append("new file mode 100644\n")
    elif new is None:
        out.append("deleted file mode 100644\n")
    a, b = split_lines(old or ""), split_lines(new or "")
    if not a and not b:
        return "".join(out)  # an empty file created or deleted: git writes the header alone
    out.append("--- /dev/null\n" if old is None else f"--- a/{rel}\n")
    out.append("+++ /dev/null\n" if new is None else f"+++ b/{rel}\n")
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for group in matcher.get_grouped_opcodes(context):
        i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
        out.append(f"@@ -{_range(i1, i2 - i1)} +{_range(j1, j2 - j1)} @@\n")
        for tag, ai1, ai2, bj1, bj2 in group:
            if tag == "equal":
                out.extend(_body_line(" ", line) for line in a[ai1:ai2])
                continue
            out.extend(_body_line("-", line) for line in a[ai1:ai2])
            out.extend(_body_line("+", line) for line in b[bj1:bj2])
    return "".join(out)


def tree_diff(base: str | os.PathLike, work: str | os.PathLike, exclude: tuple[str, ...] = DEFAULT_EXCLUDE) -> str:
    """The git-style unified diff that turns the tree ``base`` into ``work``: every text file that differs,
    was added or was removed, in path order (binary files and ``exclude``d names left out)."""
    before, after = tree_files(base, exclude), tree_files(work, exclude)
    parts = []
    for rel in sorted(set(before) | set(after)):
        old = _file_bytes(before[rel]) if rel in before else None
        new = _file_bytes(after[rel]) if rel in after else None
        if old == new:
            continue
        old_text, new_text = _as_text(old), _as_text(new)
        if (old is not None and old_text is None) or (new is not None and new_text is None):
            continue  # binary (or a link): not expressible as a text diff
        parts.append(file_diff(rel, old_text, new_text))
    return "".join(parts)


# ---- reading diffs ----------------------------------------------------------------------------


@dataclass
class Hunk:
    old_start: int  # 1-based, as in the header (0 when the old side is empty)
    old_lines: list[str] = field(default_factory=list)  # context and removed lines, with their line ends
    new_lines: list[str] = field(default_factory=list)  # context and added lines
    header_line: int = 0  # where the hunk starts in the diff (for messages)


@dataclass
class FilePatch:
    old_path: str | None  # None: the file is created
    new_path: str | None  # None: the file is deleted
    hunks: list[Hunk] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.new_path or self.old_path or ""


_HUNK_HEADER = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def _clean_path(raw: str, line_no: int) -> str | None:
    raw = raw.rstrip("\n").split("\t", 1)[0].rstrip()  # diff -u appends a tab and a time stamp
    if raw.startswith('"') and raw.endswith('"'):
        raw = raw[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape").encode("latin-1").decode("utf-8")
    if raw == "/dev/null":
        return None
    if raw.startswith(("a/", "b/")):
        raw = raw[2:]
    parts = raw.split("/")
    if not raw or raw.startswith("/") or ".." in parts:
        raise PatchError(f"diff line {line_no}: path {raw!r} is not relative to the repository root")
    return "/".join(p for p in parts if p not in ("", "."))


def parse_diff(diff: str) -> list[FilePatch]:
    """The file patches of a unified diff (git-style or ``diff -u``), in order; text outside them is skipped."""
    lines = split_lines(diff)
    patches: list[FilePatch] = []
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        if line.startswith("diff --git "):
            # the header alone (an empty file created or deleted) or followed by ---/+++ and hunks
            header = line[len("diff --git "):].rstrip("\n")
            half = header[: len(header) // 2] if len(header) % 2 else None  # "a/X b/X": X is the middle cut
            created = deleted = False
            i += 1
            while i < n and not lines[i].startswith(("--- ", "diff --git ", "@@")):
                extra = lines[i]
                if extra.startswith("new file mode"):
                    created = True
                elif extra.startswith("deleted file mode"):
                    deleted = True
                elif extra.startswith(("rename from", "rename to", "copy from", "copy to")):
                    raise PatchError(f"diff line {i + 1}: renames and copies are not supported ({extra.strip()})")
                elif extra.startswith(("Binary files", "GIT binary patch")):
                    raise PatchError(f"diff line {i + 1}: binary patches are not supported ({extra.strip()})")
                i += 1
            if i < n and lines[i].startswith("--- "):
                continue  # the ---/+++ branch below reads the paths and the hunks
            if half is None or not half.startswith("a/"):
                raise PatchError(f"diff line {i}: cannot read the paths of {line.strip()!r}")
            path = _clean_path(half, i)
            patches.append(FilePatch(None if created else path, None if deleted else path))
            continue
        if line.startswith("--- ") and i + 1 < n and lines[i + 1].startswith("+++ "):
            old_path = _clean_path(line[4:], i + 1)
            new_path = _clean_path(lines[i + 1][4:], i + 2)
            if old_path is None and new_path is None:
                raise PatchError(f"diff line {i + 1}: both sides are /dev/null")
            patch = FilePatch(old_path, new_path)
            i += 2
            while i < n and lines[i].startswith("@@"):
                hunk, i = _parse_hunk(lines, i)
                patch.hunks.append(hunk)
            if not patch.hunks:
                raise PatchError(f"diff line {i}: the patch of {patch.path!r} has no hunk")
            patches.append(patch)
            continue
        if line.startswith("@@"):
            raise PatchError(f"diff line {i + 1}: a hunk outside any file's ---/+++ header")
        i += 1
    return patches


def _parse_hunk(lines: list[str], i: int) -> tuple[Hunk, int]:
    match = _HUNK_HEADER.match(lines[i])
    if not match:
        raise PatchError(f"diff line {i + 1}: malformed hunk header {lines[i].strip()!r}")
    old_count = 1 if match.group(2) is None else int(match.group(2))
    new_count = 1 if match.group(4) is None else int(match.group(4))
    hunk = Hunk(old_start=int(match.group(1)), header_line=i + 1)
    i += 1
    sides: tuple[list[str], ...] = ()  # the side(s) the previous body line went to, for "\ No newline"
    while len(hunk.old_lines) < old_count or len(hunk.new_lines) < new_count or (
            i < len(lines) and lines[i].startswith("\\")):
        if i >= len(lines):
            raise PatchError(f"diff line {hunk.header_line}: the hunk ends early (its header says {old_count} old "
                             f"and {new_count} new lines)")
        line = lines[i]
        i += 1
        if line.startswith("\\"):
            if not sides:
                raise PatchError(f"diff line {i}: '{NO_NEWLINE}' before any line")
            for side in sides:
                side[-1] = side[-1].removesuffix("\n")
            sides = ()
            continue
        tag, text = line[:1], line[1:]
        if line in ("\n", "\r\n"):  # a context line whose lone space an editor trimmed
            tag, text = " ", line
        if not text.endswith("\n"):
            text += "\n"  # the diff's own last line without its newline
        if tag == " ":
            sides = (hunk.old_lines, hunk.new_lines)
        elif tag == "-":
            sides = (hunk.old_lines,)
        elif tag == "+":
            sides = (hunk.new_lines,)
        else:
            raise PatchError(f"diff line {i}: {line.rstrip()!r} is not a hunk line (' ', '-', '+')")
        for side in sides:
            side.append(text)
    if len(hunk.old_lines) != old_count or len(hunk.new_lines) != new_count:
        raise PatchError(f"diff line {hunk.header_line}: the hunk has {len(hunk.old_lines)} old and "
                         f"{len(hunk.new_lines)} new lines, its header says {old_count} and {new_count}")
    return hunk, i


def diff_files(diff: str) -> list[str]:
    """The paths a diff changes, creates or deletes."""
    return [p.path for p in parse_diff(diff)]


# ---- applying diffs ---------------------------------------------------------------------------


def _find(lines: list[str], needle: list[str], expected: int) -> int | None:
    """Where ``needle`` occurs in ``lines``: at ``expected`` if it does, else at the nearest offset."""
    if not needle:
        return max(0, min(expected, len(lines)))
    last = len(lines) - len(needle)
    for delta in range(max(expected, last - expected, 0) + 1):
        for at in ((expected,) if delta == 0 else (expected - delta, expected + delta)):
            if 0 <= at <= last and lines[at:at + len(needle)] == needle:
                return at
    return None


def _apply_hunks(path: str, text: str, hunks: list[Hunk]) -> str:
    lines = split_lines(text)
    shift = 0  # how far the earlier hunks moved the file's lines (their offset plus the lines they added)
    for k, hunk in enumerate(hunks, 1):
        base = max(hunk.old_start - 1 if hunk.old_lines else hunk.old_start, 0)  # 0-based, as the header says
        at = _find(lines, hunk.old_lines, base + shift)
        if at is None:
            where = _first_mismatch(lines, hunk.old_lines, base + shift)
            raise PatchError(f"{path}: hunk {k} (diff line {hunk.header_line}, @@ -{hunk.old_start}) does not apply: "
                             f"{where}")
        lines[at:at + len(hunk.old_lines)] = hunk.new_lines
        shift = at - base + len(hunk.new_lines) - len(hunk.old_lines)
    return "".join(lines)


def _first_mismatch(lines: list[str], needle: list[str], expected: int) -> str:
    for j, want in enumerate(needle):
        at = expected + j
        have = lines[at] if 0 <= at < len(lines) else None
        if have != want:
            got = "the end of the file" if have is None else repr(have)
            return f"line {at + 1} should be {want!r}, the file has {got} (and the hunk matches nowhere else)"
    return "its lines match nowhere in the file"


def apply_diff(root: str | os.PathLike, diff: str) -> list[str]:
    """Apply a unified diff to the tree at ``root`` exactly; returns the paths it changed.

    Every hunk is checked before any file is written: a diff that does not apply leaves the tree as it
    was and raises :class:`PatchError` naming the file, the hunk and the first line that differs.
    """
    root = Path(root)
    patches = parse_diff(diff)
    if not patches and diff.strip():
        raise PatchError("the diff holds no file patch (expected 'diff --git' or '---'/'+++' headers and '@@' hunks)")
    contents: dict[str, str | None] = {}  # path -> new text (None: deleted), the patches applied in order

    def current(rel: str) -> str | None:
        if rel in contents:
            return contents[rel]
        target = _inside(root, rel)
        if not target.exists() and not target.is_symlink():
            return None
        if target.is_symlink() or not target.is_file():
            raise PatchError(f"{rel}: not a regular file; a text diff cannot change it")
        try:
            return target.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise PatchError(f"{rel}: not a UTF-8 text file; a text diff cannot change it") from None

    for patch in patches:
        if patch.old_path is None:
            rel, old = patch.new_path, ""
            if current(rel) is not None:
                raise PatchError(f"{rel}: the diff creates it, but it exists already")
        else:
            # diff -u between two names (foo.py.orig, foo.py) changes the file in place, as patch does
            rel = patch.new_path if patch.new_path and current(patch.new_path) is not None else patch.old_path
            old = current(rel)
            if old is None:
                raise PatchError(f"{rel}: the diff changes it, but there is no such file under {root}")
        new = _apply_hunks(rel, old, patch.hunks)
        if patch.new_path is None:
            if new:
                raise PatchError(f"{rel}: the diff deletes it but leaves {len(split_lines(new))} line(s) in it")
            contents[rel] = None
        else:
            contents[rel] = new
    for rel, text in contents.items():
        target = _inside(root, rel)
        if text is None:
            target.unlink(missing_ok=True)
            parent = target.parent
            while parent != root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "w", encoding="utf-8", newline="") as f:
                f.write(text)
    return list(contents)


def _inside(root: Path, rel: str) -> Path:
    """``root / rel``, refused when a link would take it outside ``root``."""
    target = root / rel
    real_root = root.resolve()
    if not target.resolve().is_relative_to(real_root):
        raise PatchError(f"{rel}: resolves outside the tree {root} (through a symbolic link)")
    return target
