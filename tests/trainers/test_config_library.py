"""The config library: overrides typed by their field, free mappings, ``${...}`` interpolation, ``+key``,
recipes by name and ``--print-config`` through the real CLI.

Each bug of issue 22 is a worked example here: ``agent.options.window=2`` failed ("not a section"),
``model.path=007`` became ``'7'`` and ``run.dir=2026-01-05`` was rejected as a date.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import turngym
from turngym.keyvalue import parse_as, parse_value
from turngym.trainers.config import (
    ConfigError,
    RLConfig,
    SFTConfig,
    dump_yaml,
    free_mappings,
    load_config,
    recipe_dir,
    recipes,
    resolve_recipe,
    to_dict,
)

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # -P and a folder outside the checkout: the installed package answers, not the repository's files
    return subprocess.run([sys.executable, "-P", "-m", "turngym.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, check=False)


# ---- the bugs of issue 22 -------------------------------------------------------------------------------


def test_a_dotted_key_sets_one_entry_of_a_free_mapping():
    cfg = load_config(RLConfig, "gigpo_blocksworld", ["agent.options.context=window", "agent.options.window=2"])
    # the recipe's other options stay: {context: full, num_exemplars: 1} with context changed and window added
    assert cfg.agent.options == {"context": "window", "num_exemplars": 1, "window": 2}
    # a mapping value still replaces the whole mapping; a deeper key makes the mappings on its way
    cfg = load_config(RLConfig, "gigpo_blocksworld", ["agent.options={context: window, window: 3}",
                                                      "rollout.engine_kwargs.sampling.seed=7"])
    assert cfg.agent.options == {"context": "window", "window": 3}
    assert cfg.rollout.engine_kwargs == {"sampling": {"seed": 7}}
    assert free_mappings(RLConfig) == ["env.kwargs", "agent.options", "rollout.engine_kwargs",
                                       "algo.estimator_kwargs"]


def test_a_string_field_keeps_the_text_as_typed(tmp_path):
    cfg = load_config(RLConfig, None, ["model.path=007", "run.dir=2026-01-05", "env.split=train"])
    assert (cfg.model.path, cfg.run.dir) == ("007", "2026-01-05")
    recipe = tmp_path / "typed.yaml"
    recipe.write_text("model: {path: 007}\nrun: {dir: 2026-01-05, seed: 3}\nagent: {options: {context: full}}\n")
    cfg = load_config(RLConfig, recipe, [r"agent.options.system_prompt=use \${x} as is"])  # \${: a literal ${
    assert (cfg.model.path, cfg.run.dir, cfg.run.seed) == ("007", "2026-01-05", 3)
    assert cfg.agent.options["system_prompt"] == "use ${x} as is"
    # the config.yaml a run writes reads back the same (`turngym eval` reads it)
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_yaml(cfg))
    assert load_config(RLConfig, saved) == cfg


def test_command_line_values_are_yaml_with_dates_as_text_and_1e_5_a_number():
    assert parse_value("2026-01-05") == "2026-01-05"
    assert parse_value("1e-5") == 1e-5 and parse_value("3E2") == 300.0
    assert parse_value("{gamma: 1e-5, split: 2026-01-05}") == {"gamma": 1e-5, "split": "2026-01-05"}
    assert parse_value("007") == 7 and parse_as("007", int) == 7  # no type known: YAML's int
    assert parse_as("007", str) == "007" and parse_as("true", str) == "true" and parse_as("'x y'", str) == "x y"


@pytest.mark.parametrize(("override", "message"), [
    ("rollout.group_size=abc", r"^config key 'rollout\.group_size' must be an integer, got 'abc'$"),
    ("algo.clip_high=high", r"^config key 'algo\.clip_high' must be a number, got 'high'$"),
    ("model.lora=maybe", r"^config key 'model\.lora' must be true or false, got 'maybe'$"),
    ("optim.betas=0.9", r"^config key 'optim\.betas' must be a list, got 0\.9$"),
    ("agent.options=window", r"^config key 'agent\.options' must be a mapping, got 'window'$"),
])
def test_a_typed_field_rejects_a_value_of_another_type(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RLConfig, None, [override])


# ---- interpolation ----------------------------------------------------------------------------------------


def test_interpolations_in_overrides_and_recipes(tmp_path, monkeypatch):
    cfg = load_config(RLConfig, "gigpo_blocksworld", ["run.dir=runs/${env.id}-${algo.estimator}"])
    assert cfg.run.dir == "runs/turngym/BlocksWorld-v0-gigpo"
    recipe = tmp_path / "interp.yaml"
    recipe.write_text("rollout:\n  group_size: 4\n  max_concurrent: ${rollout.group_size}\n"
                      "run:\n  dir: runs/${algo.estimator}-seed${run.seed}\n"  # the default algo.estimator: grpo
                      "agent:\n  options: {context: window, window: '${rollout.group_size}'}\n")
    cfg = load_config(RLConfig, recipe, ["run.seed=5"])  # an override the interpolation then sees
    assert (cfg.rollout.max_concurrent, cfg.run.dir) == (4, "runs/grpo-seed5")
    assert cfg.agent.options == {"context": "window", "window": 4}
    monkeypatch.setenv("TURNGYM_TEST_RUNS", str(tmp_path / "runs"))
    cfg = load_config(RLConfig, None, ["run.dir=${oc.env:TURNGYM_TEST_RUNS}/a"])  # OmegaConf's env resolver
    assert cfg.run.dir == f"{tmp_path}/runs/a"


@pytest.mark.parametrize(("override", "message"), [
    ("run.dir=runs/${env.idd}", (r"^config key 'run\.dir': Interpolation key 'env\.idd' not found; "
                                 r"did you mean '\$\{env\.id\}'\?")),
    ("run.seed=${run.dir}", r"^config key 'run\.seed': .*'runs/run'.*Integer"),
    ("run.dir=runs/${env.id", r"^config key 'run\.dir': .*write \\\$\{ for a literal"),
])
def test_a_bad_interpolation_names_its_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RLConfig, None, [override])


# ---- +key ---------------------------------------------------------------------------------------------------


def test_plus_adds_a_key_to_a_free_mapping_only():
    cfg = load_config(RLConfig, "gigpo_blocksworld", ["+rollout.engine_kwargs.max_batch_size=16",
                                                      "++agent.options.context=window", "+agent.options.window=2"])
    assert cfg.rollout.engine_kwargs == {"max_batch_size": 16}
    assert cfg.agent.options == {"context": "window", "num_exemplars": 1, "window": 2}
    with pytest.raises(ConfigError, match=r"'agent\.options\.context' is already set \(to 'full'\); drop the '\+'"):
        load_config(RLConfig, "gigpo_blocksworld", ["+agent.options.context=window"])
    with pytest.raises(ConfigError, match=r"^unknown config key 'algo\.clip_hihg'; did you mean 'clip_high'\? "
                                          r"\('\+' adds keys only inside env\.kwargs, agent\.options"):
        load_config(RLConfig, None, ["+algo.clip_hihg=0.3"])
    with pytest.raises(ConfigError, match=r"'algo\.clip_high' is a key of the config already; set it without the "
                                          r"'\+': algo\.clip_high=0\.3"):
        load_config(RLConfig, None, ["+algo.clip_high=0.3"])


# ---- recipes by name -------------------------------------------------------------------------------------


def test_a_recipe_is_found_by_name_in_the_installed_package():
    assert recipe_dir() == Path(turngym.__file__).resolve().parent / "configs"
    assert recipes() == sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    shipped = recipe_dir() / "gigpo_blocksworld.yaml"
    for name in ("gigpo_blocksworld", "gigpo_blocksworld.yaml", "configs/gigpo_blocksworld.yaml"):
        assert resolve_recipe(name).resolve() == shipped.resolve()
    assert load_config(SFTConfig, "sft_game24") == load_config(SFTConfig, ROOT / "configs" / "sft_game24.yaml")


def test_a_local_file_comes_before_a_shipped_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("gigpo_blocksworld").write_text("run: {iterations: 3}\n")
    assert load_config(RLConfig, "gigpo_blocksworld").run.iterations == 3


def test_an_unknown_recipe_names_the_close_ones():
    with pytest.raises(ConfigError, match=r"^recipe 'gigpo_blockworld' does not exist: .*did you mean "
                                          r"'gigpo_blocksworld'.*\(shipped: .*grpo_game24"):
        load_config(RLConfig, "gigpo_blockworld")
    with pytest.raises(ConfigError, match=r"^recipe 'elsewhere/gigpo_blocksworld\.yaml' does not exist"):
        load_config(RLConfig, "elsewhere/gigpo_blocksworld.yaml")  # a path names a file, never a shipped recipe


# ---- --print-config through the real CLI -------------------------------------------------------------------


def test_print_config_prints_the_resolved_config_and_exits(tmp_path):
    out = _cli("train", "gigpo_blocksworld", "model.path=007", "run.dir=runs/${env.id}", "agent.options.window=2",
               "--print-config", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    printed = yaml.safe_load(out.stdout)
    expected = load_config(RLConfig, "gigpo_blocksworld", ["model.path=007", "run.dir=runs/${env.id}",
                                                           "agent.options.window=2"])
    assert printed == to_dict(expected)
    assert printed["model"]["path"] == "007" and printed["run"]["dir"] == "runs/turngym/BlocksWorld-v0"
    assert printed["algo"]["estimator_kwargs"] == {"omega": 1.0, "gamma": 0.95}  # the recipe's
    assert list(tmp_path.iterdir()) == []  # nothing ran: no run folder
    # a README-style path works outside a checkout too, and so does sft
    out = _cli("sft", "configs/sft_game24.yaml", "run.dir=2026-01-05", "--print-config", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    printed = yaml.safe_load(out.stdout)
    assert printed["data"]["source"] == "oracle" and printed["run"]["dir"] == "2026-01-05"


def test_the_cli_names_a_bad_recipe_or_key(tmp_path):
    out = _cli("train", "gigpo_blockworld", "--print-config", cwd=tmp_path)
    assert out.returncode != 0 and "did you mean 'gigpo_blocksworld'" in out.stderr
    out = _cli("train", "gigpo_blocksworld", "rollout.group_size=abc", "--print-config", cwd=tmp_path)
    assert out.returncode != 0
    assert "config key 'rollout.group_size' must be an integer, got 'abc'" in out.stderr


# ---- other bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    (["algo.clip_high"], r"^override 'algo\.clip_high' is not KEY=VALUE"),
    (["+=1"], r"^override '\+=1' is not KEY=VALUE"),
    (["model.path.x=1"], r"^config key 'model\.path' is not a section; cannot set 'model\.path\.x'"),
    (["agent.options=[1]", "agent.options.window=2"], r"^config key 'agent\.options' must be a mapping"),
    (["rollout.engine_kwargs.a=1", "rollout.engine_kwargs.a.b=2"],
     r"^config key 'rollout\.engine_kwargs\.a' holds 1, not a mapping"),
    (["algoo.clip_high=0.3"], r"^unknown config key 'algoo'; did you mean 'algo'\?"),
])
def test_bad_overrides_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RLConfig, None, overrides)


@pytest.mark.parametrize(("text", "message"), [
    ("run: {dir: [unclosed\n", r"is not valid YAML"),
    ("- a list\n", r"must be a mapping of sections, got list"),
    ("rollout: {group_size: abc}\n", r"^config key 'rollout\.group_size' must be an integer, got 'abc'"),
    ("rollout: 3\n", r"^config section 'rollout' must be a mapping, got 3"),
    ("algo: {estimater: grpo}\n", r"^unknown config key 'algo\.estimater'; did you mean 'estimator'\?"),
])
def test_bad_recipes_are_named(tmp_path, text, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(RLConfig, recipe)
