"""The hf engine's decoding of one request: choosing each next token, its log-prob, and when to stop.

Sampling and log-probs. ``Completion.logprobs[t]`` is
``log_softmax(logits)[token]`` at temperature 1 with no top-p: the policy's
own log-probability of the sampled token, the quantity PPO ratios need and
the one a trainer's teacher-forced forward recomputes
(:func:`turngym.testing.teacher_forced_logprobs`). Temperature and top-p only
shape the distribution the token is DRAWN from. Temperature 0 is greedy
(argmax). Sampling is inverse-CDF over the temperature-scaled distribution
(in token-id order; with top-p, over the nucleus, most likely token first),
with ONE uniform number per generated token drawn from the request's own
``torch.Generator`` (:func:`request_generator`): the same seed and prompt
give the same completion whatever else is in the batch, up to float
rounding: another batch shape, or a prefix taken from the prefix cache,
changes the last bits of the logits, which changes a sampled token only when
its uniform number lies within that rounding of a CDF boundary (rare; with
``prefix_cache=False`` and the same batch, results are bitwise
reproducible). The same ``SamplingParams`` broadcast to several prompts gives
them all the same seed, so identical prompts then get identical completions:
give each rollout its own seed (or ``seed=None``, drawn from torch's global
RNG).

Stop strings are matched on the decoded completion text after every token
(:func:`advance`). The token that completes a stop string is the last one
kept: ``token_ids`` and ``logprobs`` end there, ``text`` ends exactly at the
end of the stop string (so when that last token also carries characters past
the stop string, e.g. a token ``"]\\n"`` completing the stop ``"]"``,
``text`` is the decoding of ``token_ids`` minus those characters). An EOS
token the model samples is kept in ``token_ids``/``logprobs`` (the policy
sampled it; it carries loss) and left out of ``text``. Decoding never cleans
up spaces, so texts only grow as tokens arrive.

Depends on ``turngym.agents``; torch is imported lazily (the ``hf`` extra).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from turngym.agents.engines.base import OnText, find_stop
from turngym.agents.types import SamplingParams


@dataclass
class Row:
    """Decoding state of one request in a batch."""

    index: int  # position in the generate() call's prompts
    prompt_ids: list[int]
    sampling: SamplingParams
    max_new: int
    generator: Any = None  # torch.Generator for sampled rows
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    streamed: str = ""
    finish: str | None = None


def request_generator(sp: SamplingParams) -> Any:
    """The request's own CPU ``torch.Generator``, seeded with ``sp.seed`` (drawn from torch's global RNG
    when None); None for a greedy request (temperature 0)."""
    if sp.temperature <= 0:
        return None
    import torch

    seed = sp.seed if sp.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed) % 2**64)
    return generator


def choose(logits, rows: Sequence[Row]) -> tuple[list[int], list[float]]:
    """Next token of every row (greedy or seeded inverse-CDF sampling) and its temperature-1 log-prob.

    A sampled row draws one uniform ``u`` from its own generator and takes the
    first token whose cumulative probability exceeds ``u`` times the total:
    over token-id order when top-p is off, over the nucleus (most likely
    first) when it is on. The nucleus comes from ``topk`` with k grown until
    it holds the top-p mass (sorting a 49k vocabulary every step would cost
    more than the model's forward pass on a CPU).
    """
    import torch

    token_logp_all = torch.log_softmax(logits, dim=-1)
    chosen = logits.argmax(dim=-1)
    sampled = [b for b, r in enumerate(rows) if r.sampling.temperature > 0]
    if sampled:
        device = logits.device
        temps = torch.tensor([rows[b].sampling.temperature for b in sampled], device=device)
        uniforms = torch.cat([torch.rand(1, generator=rows[b].generator) for b in sampled]).to(device)
        probs = torch.softmax(logits[sampled] / temps[:, None], dim=-1)
        top_p = [rows[b].sampling.top_p for b in sampled]
        full = [j for j, p in enumerate(top_p) if p >= 1.0]
        nucleus = [j for j, p in enumerate(top_p) if p < 1.0]
        picks = torch.empty(len(sampled), dtype=torch.long, device=device)
        if full:
            picks[full] = inverse_cdf(probs[full], uniforms[full])
        if nucleus:
            p_n = probs[nucleus]
            mass = torch.tensor([top_p[j] for j in nucleus], device=device)
            k = min(256, p_n.shape[-1])
            while True:
                values, ids = p_n.topk(k, dim=-1)  # most likely first
                cdf = values.cumsum(-1)
                if k == p_n.shape[-1] or bool((cdf[:, -1] >= mass).all()):
                    break
                k = min(p_n.shape[-1], k * 8)
            values = torch.where(cdf - values < mass[:, None], values, torch.zeros_like(values))
            picks[nucleus] = ids.gather(1, inverse_cdf(values, uniforms[nucleus])[:, None])[:, 0]
        chosen[sampled] = picks
    token_logp = token_logp_all.gather(1, chosen[:, None])[:, 0]
    return chosen.tolist(), token_logp.tolist()


def advance(row: Row, token: int, logprob: float, eos_token_ids: Collection[int], decode: Callable[[list[int]], str],
            on_text: OnText | None) -> None:
    """Append one sampled token to a row and decide whether it is finished (EOS in ``eos_token_ids``, a stop
    string, or its ``max_new``); ``decode`` turns ids into text; ``on_text`` streams the row's text."""
    row.ids.append(token)
    row.logprobs.append(logprob)
    sp = row.sampling
    if token in eos_token_ids:
        row.finish = "stop"
        row.text = decode(row.ids[:-1])
    else:
        if sp.stop or on_text is not None or len(row.ids) >= row.max_new:
            row.text = decode(row.ids)
        end = find_stop(row.text, sp.stop) if sp.stop else None
        if end is not None:
            row.finish = "stop"
            row.text = row.text[:end]
        elif len(row.ids) >= row.max_new:
            row.finish = "length"
    if on_text is not None:
        visible = row.text if row.finish else row.text.rstrip("\ufffd")
        if row.finish or visible != row.streamed:
            row.streamed = visible
            on_text(row.index, visible)


def inverse_cdf(weights, uniforms):
    """Per row, the first index whose cumulative weight exceeds ``u * total`` (never a zero-weight index)."""
    import torch

    cdf = weights.cumsum(-1)
    total = cdf[:, -1:]
    at = torch.searchsorted(cdf, uniforms[:, None] * total, right=True)
    # u * total can round up to total; the last index that adds weight is the largest legal answer
    last = (cdf < total).sum(-1, keepdim=True)
    return torch.minimum(at, last)[:, 0]
