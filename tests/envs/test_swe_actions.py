"""SWE's actions: the function-call text form, its parser and the file tools on a work copy (no sandbox)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from turngym.envs.swe.actions import TOOLS, ActionError, FileTools, format_call, parse_call, truncate


def test_a_call_round_trips_through_its_text_form():
    text = format_call("str_replace", path="pkg/mod.py", old_str="    if n < 0:\n        x = 1", new_str="    if n <= 0:")
    assert text == ("<function=str_replace>\n<parameter=path>pkg/mod.py</parameter>\n"
                    "<parameter=old_str>    if n < 0:\n        x = 1</parameter>\n"
                    "<parameter=new_str>    if n <= 0:</parameter>\n</function>")
    call = parse_call(text)
    assert call.name == "str_replace"
    assert call.args == {"path": "pkg/mod.py", "old_str": "    if n < 0:\n        x = 1", "new_str": "    if n <= 0:"}
    assert parse_call("Thought first.\n" + format_call("submit")).name == "submit"  # a thought before is fine
    # one newline after the opening tag and before the closing one is layout
    assert parse_call("<function=bash>\n<parameter=command>\nls -la\n</parameter>\n</function>").args == {"command": "ls -la"}


@pytest.mark.parametrize(("action", "says"), [
    ("ls -la", "no function call"),
    ("<function=bash><parameter=command>ls</parameter>", "not closed"),
    ("<function=rm_rf>\n</function>", "unknown function 'rm_rf'"),
    ("<function=view>\n</function>", "missing ['path']"),
    ("<function=submit>\n<parameter=now>yes</parameter>\n</function>", "unknown ['now']"),
    ("<function=view>\n<parameter=path>a</parameter>\n<parameter=path>b</parameter>\n</function>", "given twice"),
    ("<function=view>\nplease <parameter=path>a</parameter>\n</function>", "outside <parameter"),
    (format_call("submit") + "\n" + format_call("submit"), "one function call per turn"),
    ("<function=bash>\n<parameter=command>echo \ud800</parameter>\n</function>", "not valid text"),
])
def test_a_bad_call_is_refused_with_what_to_fix(action, says):
    with pytest.raises(ActionError, match=re.escape(says)):
        parse_call(action)


def test_tools_json_renders_every_function_to_the_text_form_the_parser_reads():
    specs = json.loads((Path(__file__).parents[2] / "envs" / "swe" / "tools.json").read_text())
    assert [s["name"] for s in specs] == list(TOOLS)
    for spec in specs:
        args = {k: f"value of {k}\n  indented" for k in spec["parameters"]}
        text = spec["action"].format(**args)
        assert parse_call(text) == parse_call(format_call(spec["name"], **args))
        match = re.match(spec["action_pattern"], text)
        assert match is not None and match.groupdict() == args, spec["name"]


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "work"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("def f(n):\n    if n < 0:\n        return 0\n    return n\n")
    (root / "README.md").write_text("hello\n")
    return root


def test_paths_cannot_leave_the_repository(repo, tmp_path):
    """Before a file tool reads or writes, the path is resolved (symlinks too) and must stay inside the copy."""
    secret = tmp_path / "secret.txt"
    secret.write_text("token")
    os.symlink(secret, repo / "link.txt")
    os.symlink(tmp_path, repo / "up")
    tools = FileTools(repo)
    for path in ("../secret.txt", "/etc/passwd", "link.txt", "up/secret.txt", "pkg/../../secret.txt"):
        with pytest.raises(ActionError, match="outside the repository"):
            tools.view(path)
    with pytest.raises(ActionError, match="outside the repository"):
        tools.create("up/new.py", "x")
    assert tools.view("/repo/pkg/mod.py").startswith("/repo/pkg/mod.py:")
    assert tools.resolve("pkg/../pkg/mod.py") == (repo / "pkg" / "mod.py").resolve()


def test_file_tools_worked_examples(repo):
    tools = FileTools(repo)
    assert tools.view("pkg/mod.py").split("\n")[2] == "     2\t    if n < 0:"
    assert "pkg/\n  mod.py" in tools.view(".")
    assert tools.view_range("pkg/mod.py", "2", "3").endswith("     2\t    if n < 0:\n     3\t        return 0")
    assert "pkg/mod.py:2: if n < 0:" in tools.search("n < 0", ".")
    message, real, before = tools.str_replace("pkg/mod.py", "n < 0", "n <= 0")
    assert before.startswith("def f(n):\n    if n < 0:") and "if n <= 0:" in real.read_text() and "undo_edit" in message
    with pytest.raises(ActionError, match="not found"):
        tools.str_replace("pkg/mod.py", "n < 0", "n <= 0")
    with pytest.raises(ActionError, match="occurs 2 times"):
        tools.str_replace("pkg/mod.py", "return", "yield")
    tools.insert("pkg/mod.py", "0", "import os")
    assert real.read_text().startswith("import os\ndef f(n):")
    with pytest.raises(ActionError, match="exists already"):
        tools.create("README.md", "x")
    with pytest.raises(ActionError, match="out of range"):
        tools.view_range("pkg/mod.py", "99", "-1")
    with pytest.raises(ActionError, match="whole number"):
        tools.insert("pkg/mod.py", "two", "x")


def test_long_outputs_keep_head_and_tail_with_a_note():
    text = "".join(f"line {i}\n" for i in range(10_000))
    cut = truncate(text, 1000)
    assert len(cut) < 1100 and cut.startswith("line 0\n") and cut.rstrip().endswith("line 9999")
    assert "characters truncated" in cut
    assert truncate("short", 1000) == "short"
