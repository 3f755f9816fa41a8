"""ALFWorld: the native engine's text against transcripts of the real game, the planner, tasks, generator.

The step-by-step comparison with the real engine (which needs `turngym[alfworld]`)
is in test_alfworld_fidelity.py; the strings below were recorded from it
(textworld 1.7.0 PddlEnv + alfworld 0.4.2 AlfredDemangler, valid_seen games).
"""

from __future__ import annotations

import copy
import json
import random
import sys

import pytest

import turngym
from turngym.envs.alfworld.env import ALFWorldEnv
from turngym.envs.alfworld.game import Game, Scene, demangled_names, display_list
from turngym.envs.alfworld.pddl import parse_problem
from turngym.envs.alfworld.planner import Planner, bfs_plan, goal_spec
from turngym.envs.alfworld.tasks import (
    TASK_TYPES,
    generate_task,
    grammar_for,
    load_alfworld_dir,
    load_game_file,
    load_split,
)
from turngym.errors import MissingDependencyError, TaskError

LOOK_GAME = "look_at_obj_in_light-AlarmClock-None-DeskLamp-323/trial_T20190909_044715_250790"
HEAT_GAME = "pick_heat_then_place_in_recep-Apple-None-DiningTable-26/trial_T20190907_060234_011675"


def _task(game_id: str) -> dict:
    return next(t for t in load_split("valid_seen") if t["game_id"] == game_id)


def _game(task: dict) -> Game:
    return Game(Scene(parse_problem(task["pddl_problem"])), task["task_desc_templated"])


def test_shipped_splits_have_the_documented_sizes_and_types():
    vs, tr = load_split("valid_seen"), load_split("train_sample")
    assert len(vs) == 140 and len(tr) == 200
    assert {t["task_type"] for t in vs} == set(TASK_TYPES)
    env = ALFWorldEnv()
    assert env.splits()["valid_seen"] == 140 and env.splits()["train_sample"] == 200


def test_real_transcript_look_at_obj_in_light():
    game = _game(_task(LOOK_GAME))
    assert game.intro() == (
        "-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room. Looking quickly around you, you see "
        "a bed 2, a bed 1, a desk 1, a drawer 11, a drawer 10, a drawer 9, a drawer 8, a drawer 7, a drawer 6, "
        "a drawer 5, a drawer 4, a drawer 3, a drawer 2, a drawer 1, a dresser 1, a garbagecan 1, a safe 1, "
        "a sidetable 2, and a sidetable 1.\n\nYour task is to: look at alarmclock under the desklamp.")
    assert game.admissible_commands()[:3] == ["go to bed 1", "go to bed 2", "go to desk 1"]
    assert game.admissible_commands()[-3:] == ["help", "inventory", "look"]
    assert game.step("look") == ("You are in the middle of a room. Looking quickly around you, you see nothing.", True)
    assert game.step("go to desk 1")[0] == (
        "You arrive at desk 1. On the desk 1, you see a alarmclock 2, a book 1, a bowl 1, a cd 2, a desklamp 1, "
        "a mug 2, a mug 1, a pen 2, and a pen 1.")
    assert "examine desk 1" in game.admissible_commands() and "go to desk 1" not in game.admissible_commands()
    assert "examine alarmclock 2" not in game.admissible_commands()  # the real game offers examine only for held objects
    assert game.step("use desklamp 1")[0] == "You turn on the desklamp 1."
    assert not game.won()
    assert game.step("take alarmclock 2 from desk 1")[0] == "You pick up the alarmclock 2 from the desk 1."
    assert game.won()
    assert game.step("look")[0] == "You are facing the desk 1. Next to it, you see nothing."
    assert game.step("inventory")[0] == "You are carrying: a alarmclock 2."
    assert game.step("examine alarmclock 2")[0] == "There's nothing special about alarmclock 2."
    assert game.step("go to desk 1") == ("Nothing happens.", False)
    assert game.step("help")[0].startswith("Available commands:\n  look:")


def test_real_transcript_heat_and_place():
    task = _task(HEAT_GAME)
    game = _game(task)
    expected = [
        ("You arrive at diningtable 2. On the diningtable 2, you see a apple 1, a bread 3, a cup 3, a egg 3, "
         "a peppershaker 2, a soapbottle 2, and a soapbottle 1."),
        "You pick up the apple 1 from the diningtable 2.",
        "You arrive at microwave 1. The microwave 1 is closed.",
        "You heat the apple 1 using the microwave 1.",
        ("You arrive at diningtable 2. On the diningtable 2, you see a bread 3, a cup 3, a egg 3, a peppershaker 2, "
         "a soapbottle 2, and a soapbottle 1."),
        "You move the apple 1 to the diningtable 2.",
    ]
    for command, text in zip(task["walkthrough"], expected):
        assert game.step(command) == (text, True)
    assert game.won()
    assert game.step("examine apple 1") == ("Nothing happens.", False)
    assert game.step("inventory")[0] == "You are not carrying anything."
    assert game.admissible_commands()[-3:] == ["take peppershaker 2 from diningtable 2",
                                              "take soapbottle 1 from diningtable 2",
                                              "take soapbottle 2 from diningtable 2"]


def test_names_and_lists_follow_the_demangler():
    names = demangled_names(["drawer_bar_b", "drawer_bar_a", "sink_bar_x_bar_sinkbasin", "agent1"])
    assert names == {"drawer_bar_a": "drawer 2", "drawer_bar_b": "drawer 1", "sink_bar_x_bar_sinkbasin": "sinkbasin 1",
                     "agent1": "agent1 "}
    assert display_list([]) == "nothing"
    assert display_list(["a x"]) == "a x"
    assert display_list(["a x", "a y"]) == "a x, and a y"


def test_open_close_and_objects_left_next_to_a_receptacle():
    task = _task(HEAT_GAME)
    game = _game(task)
    game.step("go to microwave 1")
    text, ok = game.step("open microwave 1")
    assert ok and text.startswith("You open the microwave 1. The microwave 1 is open. In it, you see")
    assert game.step("close microwave 1") == ("You close the microwave 1.", True)
    assert "open microwave 1" in game.admissible_commands()


def test_planner_matches_the_expert_walkthrough_length_on_every_shipped_game():
    for task in load_split("valid_seen"):
        game = _game(task)
        planner = Planner(game.scene)
        assert planner.spec is not None, task["game_id"]
        plan = planner.plan(game)
        assert len(plan) == len(task["walkthrough"]), task["game_id"]
        for command in plan:
            assert game.step(command)[1], (task["game_id"], command)
        assert game.won(), task["game_id"]


def test_planner_is_optimal_against_breadth_first_search_from_walked_states():
    rng = random.Random(0)
    tasks = load_split("valid_seen")
    checked = 0
    for index in (0, 30, 60, 100, 120):
        game = _game(tasks[index])
        planner = Planner(game.scene)
        for _ in range(25):
            game.step(rng.choice(game.admissible_commands()))
            if game.won():
                break
            d = planner.distance(game)
            if d is not None and d <= 3:
                bfs = bfs_plan(game, max_depth=d)
                assert bfs is not None and len(bfs) == d, (index, d, bfs)
                checked += 1
    assert checked >= 5


def test_goal_shapes_are_recognized_from_the_pddl():
    kinds = {}
    for task in load_split("valid_seen"):
        kinds[task["task_type"]] = goal_spec(parse_problem(task["pddl_problem"]).goal).kind
    assert kinds == {"pick_and_place_simple": "place", "pick_clean_then_place_in_recep": "place",
                     "pick_heat_then_place_in_recep": "place", "pick_cool_then_place_in_recep": "place",
                     "pick_two_obj_and_place": "two", "look_at_obj_in_light": "light"}


def test_env_reset_step_and_invalid_actions():
    env = turngym.make("turngym/ALFWorld-v0")
    obs, info = env.reset(options={"task": _task(LOOK_GAME)})
    assert "Your task is to: look at alarmclock under the desklamp." in obs
    assert info["admissible_actions"] == sorted(info["admissible_actions"])
    assert info["progress"] == 0.0 and info["task_type"] == "look_at_obj_in_light"
    key = info["state_key"]
    obs, reward, term, _, info = env.step("fly to the moon")
    assert obs == "Nothing happens." and not info["action_valid"] and info["state_key"] == key and reward == 0.0
    _, _, _, _, info = env.step("  go to desk 1 ")
    assert info["action_valid"] and info["progress"] == pytest.approx(1 / 3)
    for command in ("use desklamp 1", "take alarmclock 2 from desk 1"):
        _, reward, term, _, info = env.step(command)
    assert term and reward == 1.0 and info["won"] and info["progress"] == 1.0
    assert env.spec.max_episode_steps == 50


def test_oracle_wins_every_shipped_game_through_the_env():
    env = ALFWorldEnv(split="train_sample")
    for task_id in env.task_ids()[::10]:
        env.reset(options={"task_id": task_id})
        for _ in range(50):
            _, reward, term, _, info = env.step(env.oracle_action())
            if term:
                break
        assert info["won"] and reward == 1.0, task_id


def test_state_snapshots_restore_in_a_fresh_instance():
    env = ALFWorldEnv()
    env.reset(seed=3)
    for _ in range(4):
        env.step(env.admissible_actions()[-4])
    snap = copy.deepcopy(env.get_state())
    other = ALFWorldEnv()
    other.reset(seed=99)
    other.set_state(snap)
    assert other.state_key() == env.state_key() and other.get_state() == env.get_state()
    assert other.admissible_actions() == env.admissible_actions()
    assert other.progress() == env.progress()
    assert other.step("look")[0] == env.step("look")[0]


def test_generator_is_seeded_solvable_and_covers_every_task_type():
    a, b = generate_task(7), generate_task(7)
    assert a == b
    env = ALFWorldEnv()
    seen = set()
    for seed in range(12):
        ttype = TASK_TYPES[seed % len(TASK_TYPES)]
        task = generate_task(seed, task_type=ttype, synthetic=seed < len(TASK_TYPES))  # each type both ways
        seen.add((task["task_type"], task["game_id"].split("/")[1].split("-")[0]))
        _, info = env.reset(options={"task": task})
        assert not info["won"] and len(task["walkthrough"]) >= 2
        for _ in range(50):
            *_, term, _, info = env.step(env.oracle_action())
            if term:
                break
        assert info["won"], task["game_id"]
    assert seen == {(t, kind) for t in TASK_TYPES for kind in ("synthetic", "resampled")}


def test_generated_split_resets_by_task_id():
    env = ALFWorldEnv(split="generated", generated_size=10)
    obs1, info1 = env.reset(options={"task_id": "generated/3"})
    obs2, _ = ALFWorldEnv(split="generated", generated_size=10).reset(options={"task_id": "generated/3"})
    assert obs1 == obs2 and info1["task_id"] == "generated/3"


def test_task_types_filter_restricts_sampling():
    env = ALFWorldEnv(task_types=("pick_two_obj_and_place",))
    assert env.splits()["valid_seen"] == 24
    for seed in range(3):
        assert env.reset(seed=seed)[1]["task_type"] == "pick_two_obj_and_place"
    with pytest.raises(TaskError, match="unknown ALFWorld task_types"):
        ALFWorldEnv(task_types=("pick_three",))


def test_users_game_files_load_and_play_unchanged(tmp_path, monkeypatch):
    task = _task(HEAT_GAME)
    folder = tmp_path / "json_2.1.1" / "valid_seen" / "pick_heat-Apple" / "trial_1"
    folder.mkdir(parents=True)
    game_file = {"pddl_domain": "(define (domain alfred))", "grammar": grammar_for(task["task_desc_templated"]),
                 "pddl_problem": task["pddl_problem"], "solvable": True, "walkthrough": task["walkthrough"]}
    (folder / "game.tw-pddl").write_text(json.dumps(game_file))
    (folder / "traj_data.json").write_text(json.dumps({"task_type": task["task_type"], "pddl_params": task["pddl_params"],
                                                       "turk_annotations": {"anns": [{"task_desc": "Heat an apple."}]}}))
    loaded = load_game_file(folder / "game.tw-pddl")
    assert loaded["task_desc_templated"] == task["task_desc_templated"]
    assert loaded["task_type"] == task["task_type"] and loaded["human_annotations"] == ["Heat an apple."]
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    (tasks,) = [load_alfworld_dir()]
    assert len(tasks) == 1
    env = ALFWorldEnv()
    obs_mine, _ = env.reset(options={"task": tasks[0]})
    obs_shipped, _ = ALFWorldEnv().reset(options={"task": task})
    assert obs_mine == obs_shipped


def test_bad_tasks_and_options_name_the_fix(tmp_path):
    env = ALFWorldEnv()
    with pytest.raises(TaskError, match="pddl_problem"):
        env.reset(options={"task": {"task_desc_templated": "x"}})
    with pytest.raises(TaskError, match="task_desc_templated"):
        env.reset(options={"task": {"pddl_problem": _task(HEAT_GAME)["pddl_problem"]}})
    with pytest.raises(TaskError, match="unbalanced|unclosed"):
        env.reset(options={"task": {"pddl_problem": "(define (problem x)", "task_desc_templated": "x"}})
    with pytest.raises(TaskError, match="unknown ALFWorld engine"):
        ALFWorldEnv(engine="thor")
    with pytest.raises(TaskError, match="ALFWORLD_DATA"):
        load_alfworld_dir(tmp_path / "missing")
    with pytest.raises(TaskError, match="unknown ALFWorld task_type"):
        generate_task(0, task_type="pick_three")


def test_textworld_engine_without_the_extra_names_it(monkeypatch):
    for mod in ("textworld", "textworld.envs.pddl", "alfworld", "alfworld.agents.environment.alfred_tw_env"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(MissingDependencyError, match=r"turngym\[alfworld\]"):
        ALFWorldEnv(engine="textworld")


def test_react_exemplar_replays_and_wins():
    from turngym.agents.exemplars import exemplars_for

    (shot,) = exemplars_for("turngym/ALFWorld-v0")  # raises if an action is invalid or the task is not won
    assert shot.problem.startswith("-= Welcome to TextWorld, ALFRED! =-")
    assert shot.steps[-1].observation == "You move the mug 1 to the coffeemachine 1."
