"""Hugging Face Hub ids as model specs: ``org/name`` or ``org/name@revision`` -> a snapshot folder in the HF cache.

``resolve_model`` (``default_model.py``) calls :func:`resolve_hub_model` for a spec that is neither
``default`` nor an existing file or folder but reads as a Hub repo id, so every place that names a model
(``turngym bench --model``, ``turngym serve --model``, ``vllm:ID``, the trainers' ``model.path``) takes one:

    HuggingFaceTB/SmolLM2-135M-Instruct          the ``main`` branch
    HuggingFaceTB/SmolLM2-135M-Instruct@v1.0     a branch or tag
    HuggingFaceTB/SmolLM2-135M-Instruct@<sha>    a commit (40 hex digits)

The result is the snapshot folder of the HF cache (``<cache>/models--org--name/snapshots/<commit>``), which
transformers and vLLM load like any local folder. The cache is the one ``huggingface_hub`` uses, read
when the model is resolved (so a process may set it late): ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``.

Offline (``HF_HUB_OFFLINE=1`` or ``TRANSFORMERS_OFFLINE=1``) only the cache is read; a model that is not
there is an error naming the folder searched and the fix. Online, ``snapshot_download`` brings the files
a load reads (config, tokenizer, chat template, safetensors weights; ``*.bin`` weights only for a repo that
has no safetensors), not a repo's ONNX, GGUF or log files, and a cached model is used when the Hub cannot
be reached.

Depends on ``turngym.errors`` and ``default_model``'s error class; ``huggingface_hub`` (installed with
transformers, the ``hf`` extra) is imported when a Hub id is resolved.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from turngym.agents.engines.default_model import ModelNotFoundError
from turngym.errors import require

#: A Hub repo id, as huggingface_hub validates it: ``org/name``, each part word characters, '-' and '.',
#: starting and ending with a word character, at most 96 characters; no '--' or '..' (the cache's separator).
_PART = r"\w(?:[\w.-]{0,94}\w)?"
_REPO_ID = re.compile(rf"(?!.*(?:--|\.\.))({_PART})/({_PART})")
#: The files a transformers or vLLM load reads (fnmatch patterns, as ``snapshot_download`` takes them).
MODEL_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken")
#: Older repos ship only PyTorch pickles: fetched only when a snapshot has no safetensors weights.
LEGACY_WEIGHTS = ("*.bin",)


def parse_hub_id(spec: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` for ``org/name[@revision]``, or None when ``spec`` is not a Hub id."""
    repo_id, sep, revision = str(spec).partition("@")
    if sep and not revision.strip():
        return None
    if not _REPO_ID.fullmatch(repo_id) or repo_id.endswith(".git"):
        return None
    return repo_id, (revision.strip() or None)


def hub_offline() -> bool:
    """Whether the Hub is off limits: ``HF_HUB_OFFLINE`` (else ``TRANSFORMERS_OFFLINE``) is 1/true/yes/on, read
    now (huggingface_hub reads it once, at import), else huggingface_hub's own setting."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")  # huggingface_hub's rule
    if value is not None:
        return value.strip().upper() in {"1", "ON", "YES", "TRUE"}
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> Path:
    """The HF Hub cache, with huggingface_hub's precedence, read from the environment now."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.path.expandvars(os.environ[name])).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(os.path.expandvars(home)).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def repo_cache_folder(repo_id: str, cache: Path | None = None) -> Path:
    """Where the HF cache keeps ``repo_id``: ``<cache>/models--org--name``."""
    return (cache or hub_cache_dir()) / ("models--" + repo_id.replace("/", "--"))


def resolve_hub_model(spec: str, progress: bool = True) -> Path:
    """The cached snapshot folder of the Hub model ``org/name[@revision]`` (downloaded first when online)."""
    parsed = parse_hub_id(spec)
    if parsed is None:
        raise ModelNotFoundError(f"model {spec!r} is not a Hugging Face Hub id: expected ORG/NAME or "
                                 "ORG/NAME@REVISION (e.g. HuggingFaceTB/SmolLM2-135M-Instruct)")
    repo_id, revision = parsed
    hub = require("huggingface_hub", "hf", f"loading the Hub model {spec!r}")
    from huggingface_hub.utils import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache = hub_cache_dir()
    offline = hub_offline()
    at = f" at revision {revision!r}" if revision else ""
    fetch = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
    folder = repo_cache_folder(repo_id, cache)

    def snapshot(patterns: tuple[str, ...]) -> Path:
        try:
            return Path(hub.snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=offline,
                                              allow_patterns=list(patterns)))
        except LocalEntryNotFoundError as exc:
            # huggingface_hub >= 2 knows (from a cached file listing) that some listed file is missing: a
            # download limited to some files. Use it when it has a config; the load then names what it lacks.
            partial = getattr(exc, "snapshot_path", None)
            if partial and (Path(partial) / "config.json").is_file():
                return Path(partial)
            if offline:
                raise ModelNotFoundError(
                    f"model {spec!r} is not a local folder, and the Hugging Face Hub model {repo_id}{at} is not in "
                    f"the HF cache (searched {folder}; cache: $HF_HUB_CACHE, else $HF_HOME/hub) and HF_HUB_OFFLINE=1 "
                    f"forbids downloading it: run `{fetch}` on a connected machine with the same HF_HOME or "
                    f"HF_HUB_CACHE (or copy its {folder.name} folder into {cache}), or unset HF_HUB_OFFLINE"
                ) from None
            raise ModelNotFoundError(
                f"model {spec!r}: the Hugging Face Hub could not be reached and {repo_id}{at} is not in the HF "
                f"cache (searched {folder}): check the connection, or run `{fetch}` on a connected machine "
                f"and copy its {folder.name} folder into {cache} ({type(exc.__cause__ or exc).__name__})"
            ) from exc
        except RevisionNotFoundError:
            raise ModelNotFoundError(f"the Hugging Face Hub model {repo_id} has no revision {revision!r}: pass a "
                                     f"branch, tag or commit of it ({repo_id}@main)") from None
        except RepositoryNotFoundError:
            raise ModelNotFoundError(
                f"model {spec!r} is not a local folder, and the Hugging Face Hub has no model {repo_id} that this "
                "machine may read: check the spelling, or for a private or gated model log in (`hf auth login`) "
                "after accepting its terms on its Hub page") from None
        except HfHubHTTPError as exc:
            raise ModelNotFoundError(f"downloading the Hugging Face Hub model {repo_id}{at} failed: {exc}") from exc

    if progress and not offline:
        print(f"turngym: resolving {repo_id}{at} on the Hugging Face Hub (files cached in {cache})",
              file=sys.stderr, flush=True)
    path = snapshot(MODEL_FILES)
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        path = snapshot(MODEL_FILES + LEGACY_WEIGHTS)
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"the cached snapshot of the Hugging Face Hub model {repo_id}{at} ({path}) has no config.json: it is "
            f"not a transformers model, or its download was cut short (run `{fetch}` again)")
    return path


def hub_model_info(path: str | os.PathLike) -> dict:
    """``{"name": "org/name", "source": {"hub": ..., "commit": ...}}`` for a snapshot folder of the HF cache
    (``.../models--org--name/snapshots/<commit>``), else {}: how reports name a Hub model."""
    path = Path(path)
    repo = path.parent.parent.name
    if path.parent.name != "snapshots" or not repo.startswith("models--"):
        return {}
    org, sep, name = repo[len("models--"):].partition("--")
    if not sep:  # a legacy id without an org ("gpt2")
        org, name = "", org
    repo_id = f"{org}/{name}" if org else name
    return {"name": repo_id, "source": {"hub": repo_id, "commit": path.name}}


__all__ = ["hub_cache_dir", "hub_model_info", "hub_offline", "parse_hub_id", "repo_cache_folder",
           "resolve_hub_model"]
