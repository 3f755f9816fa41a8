"""SWE actions: the function-call text form, its parser and the file tools.

An action is one function call in the text form R2E-Gym and SWE-agent models use::

    <function=str_replace>
    <parameter=path>more_itertools/more.py</parameter>
    <parameter=old_str>    if n < 0:</parameter>
    <parameter=new_str>    if n <= 0:</parameter>
    </function>

Text before the block (a thought) is ignored; text after ``</function>`` is not allowed. The JSON tools
of ``tools.json`` render to the same text. :data:`TOOLS` lists each function's parameters; every
parameter of a function is required.

The file tools (:class:`FileTools`) work on the host side on the sandbox's work copy, with paths
relative to the repository root (``/repo/...`` is accepted as the same) that may not leave it, through
``..`` or a symlink. This module depends on nothing of ours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

#: function name -> its parameters, in order
TOOLS: dict[str, tuple[str, ...]] = {
    "bash": ("command",),
    "view": ("path",),
    "view_range": ("path", "start", "end"),
    "search": ("term", "path"),
    "str_replace": ("path", "old_str", "new_str"),
    "insert": ("path", "line", "new_str"),
    "create": ("path", "file_text"),
    "undo_edit": ("path",),
    "run_tests": ("tests",),
    "submit": (),
}
#: the tools that edit files (undo_edit reverts them)
EDIT_TOOLS = ("str_replace", "insert", "create")
#: where the repository is, as agents see it
REPO_ROOT = "/repo"
#: lines a view shows before it asks for a range
VIEW_LINES = 400
#: search matches shown
SEARCH_MATCHES = 100
#: directory levels a view of a folder lists
LIST_DEPTH = 2
#: what no listing, search or diff walks into
SKIP_DIRS = frozenset({".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".tox", ".eggs"})

_BLOCK = re.compile(r"<function\s*=\s*([A-Za-z_][A-Za-z0-9_]*)\s*>(.*?)</function>", re.S)
_PARAM = re.compile(r"<parameter\s*=\s*([A-Za-z_][A-Za-z0-9_]*)\s*>(.*?)</parameter>", re.S)


class ActionError(ValueError):
    """An action that cannot be carried out; its message is the agent's feedback."""


@dataclass(frozen=True)
class Call:
    name: str
    args: dict[str, str]


def format_call(name: str, **args: str) -> str:
    """The text form of a call (the inverse of :func:`parse_call`)."""
    params = "".join(f"<parameter={k}>{v}</parameter>\n" for k, v in args.items())
    return f"<function={name}>\n{params}</function>"


def parse_call(action: str) -> Call:
    """The call an action text holds; :class:`ActionError` names what is wrong with it."""
    start = action.find("<function")
    if start < 0:
        raise ActionError("no function call found: write one call such as <function=bash>\\n<parameter=command>ls"
                          "</parameter>\\n</function>")
    match = _BLOCK.match(action, start)
    if match is None:
        raise ActionError("the function call is not closed: end it with </function>")
    if action[match.end():].strip():
        raise ActionError("one function call per turn: nothing may follow </function>")
    name, body = match.group(1), match.group(2)
    if name not in TOOLS:
        raise ActionError(f"unknown function {name!r}; the functions are: {', '.join(TOOLS)}")
    args: dict[str, str] = {}
    for param in _PARAM.finditer(body):
        key, value = param.group(1), param.group(2)
        if key in args:
            raise ActionError(f"parameter {key!r} is given twice")
        args[key] = _trim(value)
    leftover = _PARAM.sub("", body).strip()
    if leftover:
        raise ActionError(f"text outside <parameter=...></parameter> in {name}: {leftover[:80]!r}")
    want = TOOLS[name]
    missing, extra = [k for k in want if k not in args], sorted(set(args) - set(want))
    if missing or extra:
        needs = ", ".join(want) or "no parameters"
        raise ActionError(f"{name} takes {needs}" + (f"; missing {missing}" if missing else "")
                          + (f"; unknown {extra}" if extra else ""))
    for key, value in args.items():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ActionError(f"parameter {key!r} holds characters that are not valid text") from None
    return Call(name, args)


def _trim(value: str) -> str:
    # One newline right after <parameter=...> and right before </parameter> is layout, not content.
    if value.startswith("\n"):
        value = value[1:]
    if value.endswith("\n"):
        value = value[:-1]
    return value


def truncate(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters: its head and tail, with a note of what was left out."""
    if len(text) <= limit:
        return text
    head, tail = text[: limit * 2 // 3], text[-(limit // 3):]
    return f"{head}\n[... {len(text) - len(head) - len(tail):,} characters truncated ...]\n{tail}"


def number_lines(text: str, first: int = 1) -> str:
    return "\n".join(f"{i:6d}\t{line}" for i, line in enumerate(text.split("\n"), first))


class FileTools:
    """The file tools over a work copy ``root`` (its host path)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._real_root = self.root.resolve()

    def resolve(self, path: str, *, must_exist: bool = True) -> Path:
        """The host path of a repository path; :class:`ActionError` if it leaves the repository."""
        raw = path.strip()
        if raw in (REPO_ROOT, f"{REPO_ROOT}/", ".", ""):
            raw = "."
        elif raw.startswith(f"{REPO_ROOT}/"):
            raw = raw[len(REPO_ROOT) + 1:]
        elif raw.startswith("/"):
            raise ActionError(f"path {path!r} is outside the repository: give a path relative to it (or under {REPO_ROOT}/)")
        if "\x00" in raw:
            raise ActionError(f"path {path!r} holds a NUL character")
        full = self.root / raw
        try:
            real = full.resolve()
        except (OSError, RuntimeError) as exc:
            raise ActionError(f"path {path!r} cannot be resolved ({exc})") from None
        if real != self._real_root and self._real_root not in real.parents:
            raise ActionError(f"path {path!r} is outside the repository")
        if must_exist and not real.exists():
            raise ActionError(f"{self.show(real)} does not exist")
        return real

    def show(self, real: Path) -> str:
        rel = real.relative_to(self._real_root).as_posix()
        return REPO_ROOT if rel == "." else f"{REPO_ROOT}/{rel}"

    def read(self, real: Path) -> str:
        if real.is_dir():
            raise ActionError(f"{self.show(real)} is a directory")
        try:
            return real.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ActionError(f"{self.show(real)} is not a UTF-8 text file") from None
        except OSError as exc:
            raise ActionError(f"{self.show(real)} cannot be read ({exc.strerror})") from None

    # ---- viewing ----------------------------------------------------------------------------
    def view(self, path: str) -> str:
        real = self.resolve(path)
        if real.is_dir():
            return self._listing(real)
        text = self.read(real)
        lines = text.split("\n")
        if len(lines) <= VIEW_LINES:
            return f"{self.show(real)}:\n{number_lines(text)}"
        head = "\n".join(lines[:VIEW_LINES])
        return (f"{self.show(real)} (lines 1-{VIEW_LINES} of {len(lines)}; view_range shows the rest):\n"
                f"{number_lines(head)}")

    def view_range(self, path: str, start: str, end: str) -> str:
        real = self.resolve(path)
        lines = self.read(real).split("\n")
        first, last = _int(start, "start"), _int(end, "end")
        if last == -1:
            last = len(lines)
        if not 1 <= first <= len(lines):
            raise ActionError(f"start {first} is out of range: {self.show(real)} has lines 1-{len(lines)}")
        if last < first:
            raise ActionError(f"end {last} is before start {first} (end -1 means the last line)")
        last = min(last, len(lines), first + VIEW_LINES - 1)
        return f"{self.show(real)} (lines {first}-{last} of {len(lines)}):\n" \
               f"{number_lines(chr(10).join(lines[first - 1:last]), first)}"

    def _listing(self, real: Path) -> str:
        out = [f"{self.show(real)}/ (files and folders {LIST_DEPTH} levels down, hidden ones left out):"]
        base_depth = len(real.parts)
        for item in sorted(real.rglob("*")):
            rel = item.relative_to(real)
            if len(item.parts) - base_depth > LIST_DEPTH or any(p in SKIP_DIRS or p.startswith(".") for p in rel.parts):
                continue
            out.append(f"{'  ' * (len(rel.parts) - 1)}{item.name}{'/' if item.is_dir() else ''}")
        return "\n".join(out)

    def search(self, term: str, path: str) -> str:
        if not term:
            raise ActionError("search needs a non-empty term")
        real = self.resolve(path or ".")
        files = [real] if real.is_file() else sorted(p for p in real.rglob("*") if p.is_file() and not any(
            part in SKIP_DIRS for part in p.relative_to(real).parts))
        hits, total = [], 0
        for file in files:
            try:
                text = file.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            for number, line in enumerate(text.split("\n"), 1):
                if term in line:
                    total += 1
                    if len(hits) < SEARCH_MATCHES:
                        hits.append(f"{self.show(file)}:{number}: {line.strip()[:200]}")
        if not hits:
            return f"no match for {term!r} in {self.show(real)}"
        more = f"\n[{total - len(hits)} more matches not shown: narrow the path or the term]" if total > len(hits) else ""
        return f"{total} match(es) for {term!r} in {self.show(real)}:\n" + "\n".join(hits) + more

    # ---- editing: each returns (message, path edited, its text before) ----------------------------
    def str_replace(self, path: str, old: str, new: str) -> tuple[str, Path, str | None]:
        real = self.resolve(path)
        text = self.read(real)
        if not old:
            raise ActionError("old_str is empty: give the exact text to replace (insert adds text at a line)")
        count = text.count(old)
        if count == 0:
            raise ActionError(f"old_str was not found in {self.show(real)}: it must match the file exactly, "
                              "whitespace and indentation included (view the lines first)")
        if count > 1:
            raise ActionError(f"old_str occurs {count} times in {self.show(real)}: add surrounding lines so it is unique")
        if old == new:
            raise ActionError("old_str and new_str are the same: nothing would change")
        updated = text.replace(old, new, 1)
        self._write(real, updated)
        line = text[: text.index(old)].count("\n") + 1
        return self._snippet(real, updated, line, new.count("\n") + 1, "edited"), real, text

    def insert(self, path: str, line: str, new: str) -> tuple[str, Path, str | None]:
        real = self.resolve(path)
        text = self.read(real)
        after = _int(line, "line")
        lines = text.split("\n")
        if not 0 <= after <= len(lines):
            raise ActionError(f"line {after} is out of range: insert after a line 0-{len(lines)} (0 = at the top)")
        if not new:
            raise ActionError("new_str is empty: nothing to insert")
        updated = "\n".join(lines[:after] + new.split("\n") + lines[after:])
        self._write(real, updated)
        return self._snippet(real, updated, after + 1, new.count("\n") + 1, "inserted into"), real, text

    def create(self, path: str, text: str) -> tuple[str, Path, str | None]:
        real = self.resolve(path, must_exist=False)
        if real.exists():
            raise ActionError(f"{self.show(real)} exists already: edit it with str_replace or insert")
        if not real.parent.is_dir():
            raise ActionError(f"folder {self.show(real.parent)} does not exist (create it with bash: mkdir -p)")
        self._write(real, text)
        return f"created {self.show(real)} ({text.count(chr(10)) + 1} lines)", real, None

    def _write(self, real: Path, text: str) -> None:
        try:
            real.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ActionError(f"{self.show(real)} cannot be written ({exc.strerror})") from None

    def _snippet(self, real: Path, text: str, line: int, count: int, verb: str) -> str:
        lines = text.split("\n")
        first, last = max(1, line - 3), min(len(lines), line + count + 2)
        return (f"{verb} {self.show(real)}; lines {first}-{last} now read:\n"
                f"{number_lines(chr(10).join(lines[first - 1:last]), first)}\n"
                "Review the change; undo_edit reverts it.")


def _int(value: str, name: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ActionError(f"{name} must be a whole number, got {value[:40]!r}") from None
