"""HFEngine: batched generation checked against a teacher-forced forward pass of the same model.

Fast tests run a tiny random Llama (tests/agents/conftest.py); the SmolLM2 tests are ``slow``.
"""

from __future__ import annotations

import itertools
import os

import pytest

from turngym.agents.engines import Engine, make_engine
from turngym.agents.engines.hf import HFEngine  # imports torch lazily
from turngym.agents.types import SamplingParams
from turngym.testing import teacher_forced_logprobs

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

GREEDY = SamplingParams(max_tokens=24, temperature=0.0)

PROMPTS = [
    "Thought: I",
    "Observation: block b1 is on the table; the hand is empty. You are in the middle of a room.",
    [{"role": "user", "content": "Déjà vu?"}],
    "Action: pick up the red block. Observation: you hold",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "capital of France"}],
]


def reference_logprobs(model, prompt_ids, completion_ids):
    """Written out here (not the engine's helper): one forward over prompt + completion, no cache, no padding."""
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    n = len(prompt_ids)
    return [logp[n - 1 + t, tok].item() for t, tok in enumerate(completion_ids)]


def max_diff(a, b):
    assert len(a) == len(b)
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


def test_is_an_engine_and_exposes_model_and_tokenizer(tiny_engine, tiny_model, tiny_tokenizer):
    assert isinstance(tiny_engine, Engine)
    assert tiny_engine.model is tiny_model and tiny_engine.tokenizer is tiny_tokenizer
    assert tiny_engine.name == "hf:tiny"
    assert tiny_engine.device.type == "cpu" and tiny_engine.dtype == torch.float32
    default = HFEngine((tiny_model, tiny_tokenizer), device="cpu", dtype="float32")
    assert default.model is tiny_model and default.dtype == torch.float32
    assert default.eos_token_ids == {tiny_tokenizer.eos_token_id}
    assert default.name == "hf:model"  # a random model has no name_or_path


def test_render_uses_the_chat_template_with_generation_prompt(tiny_engine, tiny_tokenizer):
    messages = [{"role": "user", "content": "hello"}]
    ids = tiny_engine.render(messages)
    text = tiny_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    assert ids == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.decode(ids) == text
    tools = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
    with_tools = tiny_tokenizer.decode(tiny_engine.render(messages, tools=tools))
    assert '"name": "search"' in with_tools and with_tools.endswith(text)


def test_text_ids_and_messages_prompts_agree(tiny_engine, tiny_tokenizer):
    messages = [{"role": "user", "content": "hello"}]
    ids = tiny_engine.render(messages)
    text = tiny_tokenizer.decode(ids)
    outs = tiny_engine.generate([messages, ids, text, torch.tensor(ids)], GREEDY)
    assert all(o.prompt_ids == ids for o in outs)
    assert len({tuple(o.token_ids) for o in outs}) == 1


def test_token_ids_and_logprobs_match_a_teacher_forced_pass(tiny_engine, tiny_model):
    params = [SamplingParams(max_tokens=20, temperature=t, top_p=p, seed=s)
              for t, p, s in [(0.0, 1.0, None), (1.0, 1.0, 1), (0.7, 0.9, 2), (1.3, 0.5, 3), (1.0, 0.95, 4)]]
    outs = tiny_engine.generate(PROMPTS, params)
    for prompt, out in zip(PROMPTS, outs):
        assert out.prompt_ids == tiny_engine.prompt_ids(prompt)
        assert len(out.token_ids) == len(out.logprobs) == 20
        assert max_diff(out.logprobs, reference_logprobs(tiny_model, out.prompt_ids, out.token_ids)) < 1e-4
        assert max_diff(out.logprobs, teacher_forced_logprobs(tiny_model, out.prompt_ids, out.token_ids)) < 1e-4
    # greedy picks the argmax of the same teacher-forced logits
    greedy = outs[0]
    ids = torch.tensor([greedy.prompt_ids + greedy.token_ids])
    with torch.no_grad():
        logits = tiny_model(input_ids=ids).logits[0]
    n = len(greedy.prompt_ids)
    assert logits[n - 1:-1].argmax(-1).tolist() == greedy.token_ids


def test_batched_equals_one_by_one_despite_left_padding(tiny_engine):
    sampled = [SamplingParams(max_tokens=16, temperature=1.0, seed=10 + i) for i in range(len(PROMPTS))]
    for params in (GREEDY, sampled):
        batched = tiny_engine.generate(PROMPTS, params)
        per = params if isinstance(params, list) else [params] * len(PROMPTS)
        singles = [tiny_engine.generate([p], sp)[0] for p, sp in zip(PROMPTS, per)]
        for b, s in zip(batched, singles):
            assert b.token_ids == s.token_ids and b.text == s.text and b.prompt_ids == s.prompt_ids
            assert max_diff(b.logprobs, s.logprobs) < 1e-4
            assert b.finish_reason == s.finish_reason


def test_micro_batches_give_the_same_results(tiny_model, tiny_tokenizer, tiny_engine):
    small = HFEngine((tiny_model, tiny_tokenizer), max_batch_size=2, eos_token_ids=[])
    params = [SamplingParams(max_tokens=12, temperature=1.0, seed=i) for i in range(len(PROMPTS))]
    a = small.generate(PROMPTS, params)
    b = tiny_engine.generate(PROMPTS, params)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert [o.prompt_ids for o in a] == [tiny_engine.prompt_ids(p) for p in PROMPTS]  # input order kept


def test_seeds_are_reproducible_and_independent_of_the_batch(tiny_engine):
    sp = SamplingParams(max_tokens=16, temperature=1.0, seed=1234)
    alone = tiny_engine.generate([PROMPTS[1]], sp)[0]
    others = [SamplingParams(max_tokens=5 + i, temperature=0.8, seed=i) for i in range(3)]
    mixed = tiny_engine.generate([PROMPTS[0], PROMPTS[3], PROMPTS[1], PROMPTS[2]],
                                 [others[0], others[1], sp, others[2]])[2]
    again = tiny_engine.generate([PROMPTS[1]], sp)[0]
    assert alone.token_ids == mixed.token_ids == again.token_ids
    different = tiny_engine.generate([PROMPTS[1]] * 3, [SamplingParams(max_tokens=16, temperature=1.0, seed=s)
                                                        for s in (1, 2, 3)])
    assert len({tuple(o.token_ids) for o in different}) == 3


def test_unseeded_sampling_follows_torch_global_seed(tiny_engine):
    sp = SamplingParams(max_tokens=10, temperature=1.0)
    torch.manual_seed(7)
    a = tiny_engine.generate([PROMPTS[0]] * 2, sp)
    torch.manual_seed(7)
    b = tiny_engine.generate([PROMPTS[0]] * 2, sp)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert a[0].token_ids != a[1].token_ids  # each request got its own seed


@pytest.mark.parametrize("top_p, temperature", [(0.05, 1.0), (0.5, 0.8), (0.999, 3.0)])
def test_top_p_draws_only_from_the_nucleus(tiny_engine, tiny_model, top_p, temperature):
    """The nucleus by a full sort of the teacher-forced distribution; (0.999, 3.0) needs > 256 of 320 tokens."""
    sp = SamplingParams(max_tokens=30, temperature=temperature, top_p=top_p, seed=3)
    out = tiny_engine.generate([PROMPTS[1]], sp)[0]
    ids = torch.tensor([out.prompt_ids + out.token_ids])
    with torch.no_grad():
        logits = tiny_model(input_ids=ids).logits[0]
    n = len(out.prompt_ids)
    sizes = []
    for t, tok in enumerate(out.token_ids):
        probs = torch.softmax(logits[n - 1 + t] / temperature, -1)
        values, order = probs.sort(descending=True)
        inside = order[(values.cumsum(0) - values) < top_p - 1e-6].tolist()
        border = order[(values.cumsum(0) - values) < top_p + 1e-6].tolist()  # float slack at the edge
        sizes.append(len(inside))
        assert tok in border
    if top_p == 0.999:
        assert max(sizes) > 256  # the topk window had to grow


def test_sampling_follows_the_distribution(tiny_engine):
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    logits = probs.log().expand(4000, -1).clone()

    def frequencies(**kw):
        rows = [tiny_engine._new_row(0, [1], SamplingParams(seed=i, **kw)) for i in range(len(logits))]
        tokens, logprobs = tiny_engine._choose(logits, rows)
        assert logprobs == pytest.approx(probs.log()[tokens].tolist())  # temperature-1 log-probs
        return torch.bincount(torch.tensor(tokens), minlength=5).float() / len(tokens)

    assert frequencies(temperature=1.0).tolist() == pytest.approx(probs.tolist(), abs=0.03)
    assert frequencies(temperature=1.0, top_p=0.7).tolist() == pytest.approx([0.625, 0.375, 0, 0, 0], abs=0.03)
    squared = probs**2 / (probs**2).sum()
    assert frequencies(temperature=0.5).tolist() == pytest.approx(squared.tolist(), abs=0.03)
    greedy_rows = [tiny_engine._new_row(0, [1], SamplingParams(temperature=0))]
    assert tiny_engine._choose(logits[:1], greedy_rows)[0] == [0]


def _cut_after_stop(tokenizer, ids, stop):
    """How many ids it takes for the decoded text to contain ``stop``, by brute force."""
    for n in range(1, len(ids) + 1):
        if stop in tokenizer.decode(ids[:n]):
            return n
    return None


def test_stop_strings_across_token_boundaries(tiny_engine, tiny_tokenizer):
    sp = SamplingParams(max_tokens=40, temperature=1.0, seed=99)
    ref = tiny_engine.generate([PROMPTS[1]], sp)[0]
    pieces = [tiny_tokenizer.decode([i]) for i in ref.token_ids]
    # a stop string made of the end of token k and the start of token k+1: it spans a token boundary
    k = next(k for k in range(5, len(pieces) - 1)
             if len(pieces[k]) >= 1 and len(pieces[k + 1]) >= 1 and "\ufffd" not in pieces[k] + pieces[k + 1])
    stop = pieces[k][-2:] + pieces[k + 1][:2]
    n = _cut_after_stop(tiny_tokenizer, ref.token_ids, stop)
    assert n is not None and n <= k + 2
    out = tiny_engine.generate([PROMPTS[1]], SamplingParams(max_tokens=40, temperature=1.0, seed=99,
                                                             stop=["never-in-this-text", stop]))[0]
    assert out.finish_reason == "stop"
    assert out.token_ids == ref.token_ids[:n] and out.logprobs == pytest.approx(ref.logprobs[:n], abs=1e-5)
    full = tiny_tokenizer.decode(out.token_ids)
    assert out.text.endswith(stop) and full.startswith(out.text)
    assert out.text == full[: full.index(stop) + len(stop)]


def test_earliest_stop_wins_and_stop_is_kept(tiny_engine, tiny_tokenizer):
    sp = SamplingParams(max_tokens=30, temperature=1.0, seed=5)
    ref = tiny_engine.generate([PROMPTS[0]], sp)[0]
    text = tiny_tokenizer.decode(ref.token_ids)
    early, late = text[3:5], text[20:23]
    assert early not in text[:3]
    out = tiny_engine.generate([PROMPTS[0]], SamplingParams(max_tokens=30, temperature=1.0, seed=5,
                                                             stop=[late, early]))[0]
    assert out.text.endswith(early) and len(out.token_ids) == _cut_after_stop(tiny_tokenizer, ref.token_ids, early)


def test_per_request_max_tokens_and_finished_rows_leave_the_batch(tiny_engine):
    lengths = [3, 17, 1, 9, 12]
    params = [SamplingParams(max_tokens=m, temperature=1.0, seed=i) for i, m in enumerate(lengths)]
    outs = tiny_engine.generate(PROMPTS, params)
    assert [len(o.token_ids) for o in outs] == lengths
    assert all(o.finish_reason == "length" for o in outs)
    # rows that outlive the others (after removal and cache trimming) still match the teacher-forced pass
    for o in outs:
        assert max_diff(o.logprobs, reference_logprobs(tiny_engine.model, o.prompt_ids, o.token_ids)) < 1e-4
    singles = [tiny_engine.generate([p], sp)[0] for p, sp in zip(PROMPTS, params)]
    assert [o.token_ids for o in outs] == [s.token_ids for s in singles]


def test_eos_ends_the_completion_is_kept_in_ids_and_left_out_of_text(tiny_model, tiny_tokenizer, tiny_engine):
    sp = SamplingParams(max_tokens=24, temperature=1.0, seed=8)
    ref = tiny_engine.generate([PROMPTS[0]], sp)[0]
    eos = ref.token_ids[6]  # pretend this token is the end-of-sequence token
    first = ref.token_ids.index(eos)
    engine = HFEngine((tiny_model, tiny_tokenizer), eos_token_ids=[eos])
    out = engine.generate([PROMPTS[0], PROMPTS[1]], [sp, GREEDY])[0]
    assert out.finish_reason == "stop"
    assert out.token_ids == ref.token_ids[:first + 1] and len(out.logprobs) == first + 1
    assert out.logprobs == pytest.approx(ref.logprobs[:first + 1], abs=1e-5)
    assert out.text == tiny_tokenizer.decode(ref.token_ids[:first])


def test_logprobs_can_be_left_out(tiny_engine):
    out = tiny_engine.generate(["Thought:"], SamplingParams(max_tokens=4, temperature=0, logprobs=False))[0]
    assert out.logprobs is None and len(out.token_ids) == 4


def test_on_text_streams_growing_text(tiny_engine, tiny_tokenizer):
    seen: dict[int, list[str]] = {}
    params = [SamplingParams(max_tokens=m, temperature=1.0, seed=i) for i, m in enumerate([25, 3, 12, 1, 20])]
    outs = tiny_engine.generate(PROMPTS, params, on_text=lambda i, text: seen.setdefault(i, []).append(text))
    assert sorted(seen) == list(range(len(PROMPTS)))
    for i, out in enumerate(outs):
        texts = seen[i]
        assert texts[-1] == out.text == tiny_tokenizer.decode(out.token_ids)
        assert all(b.startswith(a) for a, b in itertools.pairwise(texts))  # only grows
        assert all("\ufffd" not in t for t in texts[:-1]) or "\ufffd" in out.text
    assert len(seen[0]) > 3  # streamed, not only at the end


def test_on_text_holds_back_half_a_character(tiny_model, tiny_tokenizer):
    """Byte-level BPE splits '世' over several tokens: the stream never shows the half character."""
    half = tiny_tokenizer(" 世", add_special_tokens=False)["input_ids"]
    assert len(half) > 2 and "\ufffd" in tiny_tokenizer.decode(half[:2])
    engine = HFEngine((tiny_model, tiny_tokenizer), eos_token_ids=[])
    row = engine._new_row(0, [5], SamplingParams(max_tokens=10))
    seen = []
    for tok in half:
        engine._advance(row, tok, 0.0, lambda i, t: seen.append(t))
    assert seen == [" ", " 世"]


def test_generate_restores_train_mode_and_builds_no_graph(tiny_tokenizer, make_tiny_model):
    model = make_tiny_model(tiny_tokenizer, seed=1)
    model.train()
    model.model.layers[0].eval()  # a submodule the trainer froze stays as it was
    engine = HFEngine((model, tiny_tokenizer))
    seen_modes = []
    handle = model.register_forward_hook(lambda m, a, o: seen_modes.append(m.training))
    out = engine.generate(["Thought:"], SamplingParams(max_tokens=3, temperature=0))[0]
    handle.remove()
    assert seen_modes and not any(seen_modes)  # eval mode while generating
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training
    assert all(p.grad is None for p in model.parameters())
    assert len(out.token_ids) == 3


def test_weights_update_in_place(tiny_tokenizer, make_tiny_model):
    model = make_tiny_model(tiny_tokenizer, seed=2)
    engine = HFEngine((model, tiny_tokenizer))
    before = engine.generate([PROMPTS[1]], GREEDY)[0]
    with torch.no_grad():  # what an optimizer step does to the module the trainer holds
        model.lm_head.weight.mul_(-1.0)
    after = engine.generate([PROMPTS[1]], GREEDY)[0]
    assert after.token_ids != before.token_ids
    assert max_diff(after.logprobs, reference_logprobs(model, after.prompt_ids, after.token_ids)) < 1e-4
    # update_weights copies named tensors from elsewhere (a trainer on another device or process)
    other = make_tiny_model(tiny_tokenizer, seed=2)
    engine.update_weights(other.state_dict())
    assert engine.generate([PROMPTS[1]], GREEDY)[0].token_ids == before.token_ids
    with pytest.raises(KeyError, match="not.a.weight"):
        engine.update_weights({"not.a.weight": torch.zeros(1)})


def test_text_prompts_get_a_bos_once(tiny_model, build_tiny_tokenizer):
    """A tokenizer that adds BOS: raw text gets it once, text that carries it gets no second one."""
    from tokenizers import processors

    tok = build_tiny_tokenizer()
    bos = tok.bos_token_id
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)])
    assert tok("hi")["input_ids"][0] == bos
    engine = HFEngine((tiny_model, tok))
    plain = tok("hi", add_special_tokens=False)["input_ids"]
    assert engine.prompt_ids("hi") == [bos] + plain
    assert engine.prompt_ids("<|im_start|>hi") == [bos] + plain
    assert engine.prompt_ids([bos, 7]) == [bos, 7]  # ids are verbatim


def test_text_prompts_without_bos_tokenizer_are_verbatim(tiny_engine, tiny_tokenizer):
    text = "<|im_start|>user\nhi<|im_end|>\n"
    assert tiny_engine.prompt_ids(text) == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny_engine.prompt_ids(text)[0] == tiny_tokenizer.bos_token_id  # the special token is parsed once


def test_bad_prompts_are_clear_errors(tiny_engine, tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="empty prompt"):
        tiny_engine.generate([[]], GREEDY)
    with pytest.raises(ValueError, match="token id 100000 is outside the vocabulary"):
        tiny_engine.generate([[1, 100000]], GREEDY)
    with pytest.raises(ValueError, match="fills the context"):
        tiny_engine.generate([[5] * 600], GREEDY)
    with pytest.raises(ValueError, match="one per prompt"):
        tiny_engine.generate(["a", "b"], [GREEDY])
    with pytest.raises(ValueError, match="without its tokenizer"):
        HFEngine(tiny_model)
    assert tiny_engine.generate([], GREEDY) == []


def test_context_limit_ends_with_length(tiny_engine):
    out = tiny_engine.generate([[5] * 508], SamplingParams(max_tokens=50, temperature=0))[0]
    assert len(out.token_ids) == 4 and out.finish_reason == "length"


def test_loads_a_model_folder_through_make_engine(tiny_model_dir, tiny_engine):
    engine = make_engine(f"hf:{tiny_model_dir}", max_batch_size=4)
    assert isinstance(engine, HFEngine) and engine.name == f"hf:{tiny_model_dir.name}"
    a = engine.generate(PROMPTS[:3], GREEDY)
    b = tiny_engine.generate(PROMPTS[:3], GREEDY)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert HFEngine(str(tiny_model_dir), dtype="bfloat16").dtype == torch.bfloat16


def test_bad_device_and_dtype(tiny_model_dir):
    with pytest.raises(ValueError, match="unknown dtype 'float3'"):
        HFEngine(str(tiny_model_dir), dtype="float3")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            HFEngine(str(tiny_model_dir), device="cuda")


# ---- the embedded default model (SmolLM2-135M-Instruct): slow ------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    os.environ["HF_HUB_OFFLINE"] = "1"
    pytest.importorskip("gguf")
    return HFEngine("default", max_batch_size=16)


@pytest.mark.slow
def test_smollm2_answers_a_chat_prompt_sensibly(smollm2):
    assert smollm2.name == "hf:SmolLM2-135M-Instruct"
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    out = smollm2.generate([msgs], SamplingParams(max_tokens=40, temperature=0))[0]
    assert "Paris" in out.text
    assert out.finish_reason == "stop" and out.token_ids[-1] == smollm2.tokenizer.eos_token_id
    assert smollm2.tokenizer.decode(out.prompt_ids).endswith("<|im_start|>assistant\n")


@pytest.mark.slow
def test_smollm2_batched_ids_and_logprobs_match_teacher_forcing(smollm2):
    questions = ["Name a primary colour.", "Count from one to five.", "What is 2+2?", "Say hello in French."]
    prompts = [[{"role": "user", "content": q}] for q in questions]
    params = [SamplingParams(max_tokens=24, temperature=t, seed=i, stop=["\n\n"])
              for i, t in enumerate([0.0, 1.0, 0.7, 1.0])]
    outs = smollm2.generate(prompts, params)
    for out in outs:
        ref = reference_logprobs(smollm2.model, out.prompt_ids, out.token_ids)
        assert max_diff(out.logprobs, ref) < 1e-4
    singles = [smollm2.generate([p], sp)[0] for p, sp in zip(prompts, params)]
    assert [o.token_ids for o in outs] == [s.token_ids for s in singles]


# ---- GPU: the same checks on CUDA, in float32 and bfloat16 ----------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-3), ("bfloat16", 0.1)])
def test_cuda_ids_and_logprobs_match_a_teacher_forced_pass(tiny_tokenizer, make_tiny_model, dtype, tolerance):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    engine = HFEngine((make_tiny_model(tiny_tokenizer, seed=4), tiny_tokenizer), device="cuda", dtype=dtype,
                      eos_token_ids=[])
    assert engine.device.type == "cuda"
    params = [SamplingParams(max_tokens=16, temperature=t, seed=i) for i, t in enumerate([0, 1.0, 0.7, 1.0, 0])]
    outs = engine.generate(PROMPTS, params)
    for out in outs:
        ref = teacher_forced_logprobs(engine.model, out.prompt_ids, out.token_ids)
        assert max_diff(out.logprobs, ref) < tolerance
    if dtype == "float32":
        singles = [engine.generate([p], sp)[0] for p, sp in zip(PROMPTS, params)]
        assert [o.token_ids for o in outs] == [s.token_ids for s in singles]
