"""docs/trajectories.md documents the real trajectory records: every field of ``Step`` and ``Trajectory``, in
order, with its Python type and (with pyarrow) the Parquet column type the writer uses."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from turngym.agents import types

DOC = Path(__file__).resolve().parents[1] / "docs" / "trajectories.md"


def _table(heading: str) -> list[tuple[str, str, str, str]]:
    """The rows (field, python type, parquet type, meaning) of the table under ``## <heading>``."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert match, f"{DOC} has no section '## {heading}'"
    rows = []
    for line in match.group(1).splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == 4, line
        rows.append(tuple(c.replace("`", "").replace("\\|", "|") for c in cells[:3]) + (cells[3],))
    return rows


def _python_type(cls: type, name: str) -> str:
    hint = typing.get_type_hints(cls)[name]
    text = str(hint).replace("typing.", "").replace("NoneType", "None")
    text = re.sub(r"<class '([\w.]+)'>", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return text.replace("Optional[", "").replace("turngym.agents.types.", "")


@pytest.mark.parametrize("cls, heading", [(types.Trajectory, "Trajectory: one episode"),
                                          (types.Step, "Step: one agent turn")])
def test_every_field_is_documented_in_order_with_its_type(cls, heading):
    rows = _table(heading)
    fields = [f.name for f in dataclasses.fields(cls)]
    assert [r[0] for r in rows] == fields, f"{DOC}: the {cls.__name__} table must list {fields}"
    for name, python_type, _, meaning in rows:
        assert _python_type(cls, name) == python_type, (name, _python_type(cls, name), python_type)
        assert len(meaning) > 10, f"{cls.__name__}.{name} needs a meaning in {DOC}"


@pytest.mark.parametrize("heading, where", [("Trajectory: one episode", None), ("Step: one agent turn", "steps")])
def test_parquet_types_are_the_writers(heading, where):
    pa = pytest.importorskip("pyarrow")
    schema = types._parquet_schema(pa)
    columns = schema.field("steps").type.value_type if where else schema
    for name, _, parquet_type, _ in _table(heading):
        arrow = columns.field(name).type
        expected = str(arrow)
        if pa.types.is_list(arrow) and pa.types.is_struct(arrow.value_type):
            expected = "list<struct>"
        elif pa.types.is_map(arrow):
            expected = f"map<{arrow.key_type}, {arrow.item_type}>"
        elif name in ("prompt", "state_key", "info", "meta"):
            expected = "string (JSON)"
        elif pa.types.is_list(arrow):
            expected = f"list<{arrow.value_type}>"
        assert parquet_type == expected, (name, parquet_type, expected)


def test_the_documented_run_folder_layout_is_the_trainers():
    from turngym.trainers.runlog import TRAJECTORY_FOLDERS, trajectory_file

    text = DOC.read_text(encoding="utf-8")
    for folder in TRAJECTORY_FOLDERS:
        name = trajectory_file(Path("RUN_DIR"), folder, 3).as_posix().replace("000003", "00000N")
        assert f"`{name}`" in text, name
    assert "`iter-00000N-rankR.parquet`" in text and trajectory_file(Path("."), "rollouts", 3, 1).name == (
        "iter-000003-rank1.parquet")
    assert "--format parquet" in text and "run.save_rollouts=false" in text
