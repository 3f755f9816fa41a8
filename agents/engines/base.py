"""The ``Engine`` protocol every LLM backend implements.

An engine turns a batch of prompts into completions in ONE call (batched
generation). Prompts may be raw text, token ids, or chat messages (the
engine applies its model's chat template). Local engines return the prompt
ids they used and the sampled ids with their log-probs (token in, token out).

Streaming hook: ``generate(..., on_text=fn)`` calls ``fn(index, text_so_far)``
as text is decoded (at least once per completion, at the end). P-ReAct uses it
to dispatch an action to the env as soon as its closing tag appears while
the model keeps generating. Engines that cannot stream call it once at the
end; the protocol holds either way.

Capabilities beyond ``generate``/``render`` are typed as Protocols, so callers ask
``isinstance(engine, SessionEngine)`` instead of probing attributes:
``SessionEngine`` (continuous batching: ``session()``, e.g. the hf engine),
``WeightSyncEngine`` (``update_weights``: the trainer pushes new weights),
``InProcessEngine`` (shares the trainer's ``model`` object; ``clear_prefix_cache``
drops KV computed with old weights), ``LocalEngine`` (token in, token out with its
own tokenizer: ``encode_text``, ``vocab_size``) and ``ContextLimited``
(``max_context``). :func:`check_token_ids` is the one check of prompt token ids.

This module depends only on ``turngym.agents.types``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from turngym.agents.types import Completion, Prompt, SamplingParams

OnText = Callable[[int, str], None]


@runtime_checkable
class Engine(Protocol):
    """What the runner and agents need from an LLM backend."""

    #: A short name for reports, e.g. "hf:SmolLM2-135M-Instruct".
    name: str

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams | Sequence[SamplingParams],
                 on_text: OnText | None = None) -> list[Completion]:
        """Complete every prompt; one ``SamplingParams`` for all or one per prompt."""
        ...

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> Prompt:
        """The prompt the engine would generate from for these chat messages
        (token ids for local engines; the messages themselves for remote chat engines)."""
        ...


@runtime_checkable
class SessionEngine(Protocol):
    """An engine with continuous batching: requests join and leave a running batch between decode steps."""

    name: str
    #: why ``session()`` cannot run for this model (e.g. an unsupported cache), or None when it can
    session_off_reason: str | None

    def session(self, admit_fraction: float = 0.25, max_wait_steps: int = 16) -> Any:
        """A continuous-batching session (``submit`` / ``step`` / ``cancel``; see ``HFSession``)."""
        ...


class RequestsFailed(RuntimeError):
    """A session's ``step`` failed some requests and kept the others: ``failures`` maps each failed request
    id to its error, ``finished`` holds the ``(id, completion)`` pairs the step finished all the same. The
    session goes on; a caller that does not catch this sees the first failure's message."""

    def __init__(self, failures: dict[int, Exception], finished: list[tuple[int, Completion]]) -> None:
        request, first = next(iter(failures.items()))
        super().__init__(f"{len(failures)} request(s) failed, e.g. request {request}: {type(first).__name__}: {first}")
        self.failures = failures
        self.finished = finished


@runtime_checkable
class WeightSyncEngine(Protocol):
    """An engine whose weights a trainer replaces after each update."""

    def update_weights(self, weights: Any) -> None:
        """Load these ``(name, tensor)`` pairs (or a mapping) into the served model."""
        ...


@runtime_checkable
class InProcessEngine(Protocol):
    """An engine generating from a model object it shares with its caller (the trainer's own policy)."""

    model: Any

    def clear_prefix_cache(self) -> None:
        """Drop cached KV: it was computed with weights that have since changed."""
        ...


@runtime_checkable
class ContextLimited(Protocol):
    """An engine that knows its context length (prompt + completion tokens)."""

    max_context: int | None


@runtime_checkable
class LocalEngine(Protocol):
    """A token-in, token-out engine with its own tokenizer (hf, vllm)."""

    tokenizer: Any
    vocab_size: int

    def encode_text(self, text: str) -> list[int]:
        """The ids a raw-text prompt is generated from (the engine's BOS rule included)."""
        ...


def continuous_batching_off_reason(engine: Any) -> str | None:
    """None when ``engine`` can batch continuously, else why not."""
    if not isinstance(engine, SessionEngine):
        return "it has no session() (continuous batching)"
    return engine.session_off_reason


def context_limit(engine: Any) -> int | None:
    """The engine's context length in tokens, None when it does not know (e.g. a remote server)."""
    return engine.max_context if isinstance(engine, ContextLimited) else None


def engine_name(engine: Any) -> str:
    """The engine's report name (``Engine.name``), or its type for objects that lack one."""
    name = engine.name if isinstance(engine, Engine) else None
    return str(name) if name else type(engine).__name__


def check_token_ids(ids: Sequence[Any], vocab_size: int, owner: str) -> list[int]:
    """Prompt token ids as ints, each in ``[0, vocab_size)``: the one check every path shares
    (engines' prompt encoding, the server's request parsing). ``owner`` names the vocabulary."""
    out = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) and not hasattr(i, "__index__"):
            raise ValueError(f"a prompt must be text, token ids or chat messages; got an item {i!r}")
        i = int(i)
        if not 0 <= i < vocab_size:
            raise ValueError(f"token id {i} is outside the vocabulary of {owner} (size {vocab_size}): out of range")
        out.append(i)
    return out


def per_prompt_sampling(sampling: SamplingParams | Sequence[SamplingParams], n: int) -> list[SamplingParams]:
    """Broadcast one ``SamplingParams`` to ``n`` prompts, or check a per-prompt list."""
    if isinstance(sampling, SamplingParams):
        return [sampling] * n
    sampling = list(sampling)
    if len(sampling) != n:
        raise ValueError(f"got {len(sampling)} SamplingParams for {n} prompts; pass one, or one per prompt")
    return sampling


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """End index (exclusive) of the earliest stop string in ``text``, or None."""
    best: int | None = None
    for stop in stops:
        if not stop:
            continue
        i = text.find(stop)
        if i >= 0 and (best is None or i + len(stop) < best):
            best = i + len(stop)
    return best
