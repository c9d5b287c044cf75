"""Load a causal LM and its tokenizer: quickly from a GGUF file, and with one clear sentence when a model is missing.

    model, tokenizer = load_pretrained("gpt2")                            # a hub id (cached, or downloaded)
    model, tokenizer = load_pretrained("runs/x/students/solver")          # a local directory
    model, tokenizer = load_pretrained(path.parent, gguf_file=path.name)  # a GGUF file in a directory
    check_model_available("gpt2")            # raises ModelNotAvailableError before any work is done

A GGUF checkpoint is dequantised once into a float32 safetensors copy (with its tokenizer) in
`gguf_cache_dir()`: `$DD_PROMPTING_CACHE_DIR/gguf`, by default `~/.cache/dd_prompting/gguf` (under
`$XDG_CACHE_HOME` when set). Each copy is a directory named by the GGUF file's sha256, so a changed
file gets a new copy, and delete the directory to free the space (about 0.5 GB for SmolLM2). Measured
here (2 cores): SmolLM2-135M-Instruct's GGUF file loads in 11-12 s plus about 4 s for its tokenizer;
its copy reloads in well under a second with identical logits, and hashing its 98 MB takes 0.06 s,
so the hash is computed on every load rather than cached.

A copy is written into a temporary directory beside its final place and renamed into it, and a
marker file listing every file's size is written last; a directory without a valid marker is never
used. Two processes that load at once may both dequantise, but the first rename wins and the other
uses the winner's copy: neither can leave or read a half-written copy.

torch and transformers are imported only inside the functions that load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dd_prompting.config import ConfigError

__all__ = [
    "CACHE_DIR_ENV",
    "ModelNotAvailableError",
    "check_model_available",
    "load_pretrained",
    "load_pretrained_tokenizer",
    "cache_dir",
    "gguf_cache_dir",
    "file_sha256",
    "MODEL_LOCK",
]

logger = logging.getLogger(__name__)

# Held while a model is loaded or trained in this process. transformers builds a model on the meta
# device under a patch of torch that is global, not per thread: two threads loading at once (DSPy
# runs each fine-tuning job, and the load of its result, in a thread) left weights on the meta device.
MODEL_LOCK = threading.RLock()

CACHE_DIR_ENV = "DD_PROMPTING_CACHE_DIR"
"""The environment variable that moves dd_prompting's cache directory (GGUF copies go in its `gguf/`)."""

_MARKER = "dd_prompting_gguf.json"  # written last into a copy: a directory without it is incomplete
_TMP_PREFIX = ".tmp-"
_STALE_SECONDS = 3600  # a temporary directory this old was left by a killed process (a build takes ~15 s)


class ModelNotAvailableError(ConfigError):
    """A model can't be loaded: not a local directory, not in the Hugging Face cache, and not downloadable now.

    The message is one sentence: the model, why it can't be fetched, and how to fix it.
    """


# --- where the copies live -------------------------------------------------------------------------


def cache_dir() -> Path:
    """dd_prompting's cache directory: `$DD_PROMPTING_CACHE_DIR`, else `$XDG_CACHE_HOME/dd_prompting`, else `~/.cache/dd_prompting`."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "dd_prompting"


def gguf_cache_dir() -> Path:
    """Where dequantised GGUF copies live, one directory per GGUF file's sha256 (`rm -r` it to clear them)."""
    return cache_dir() / "gguf"


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, as hex (0.06 s for SmolLM2's 98 MB here)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --- is the model there? ---------------------------------------------------------------------------


def check_model_available(model_name_or_path: str | os.PathLike, *, gguf_file: str | None = None) -> None:
    """Raise `ModelNotAvailableError` (one sentence) unless the model can be loaded now; do nothing otherwise.

    Available means: a local directory (holding `gguf_file` when given) or file, a hub id whose
    config (or `gguf_file`) is in the Hugging Face cache, or a hub id the hub answers for. The hub is
    asked only when the model is not cached and `HF_HUB_OFFLINE` is not set, with a 10 s timeout.
    """
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, HFValidationError, HTTPError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    name = str(model_name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        if gguf_file is not None and not (path / gguf_file).is_file():
            raise ModelNotAvailableError(
                f"Model {name!r} has no GGUF file {gguf_file!r} (the directory holds "
                f"{_listing(path)}); check gguf_file, or point at the directory that holds it."
            )
        return
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelNotAvailableError(
            f"Model {name!r} is not available: there is no such local directory, and it is not a Hugging Face hub id "
            "(which is 'name' or 'owner/name'); check the path."
        ) from None
    filename = gguf_file or "config.json"
    if isinstance(huggingface_hub.try_to_load_from_cache(name, filename), str):
        return
    where = f"not a local directory and not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
    fix = (f"download it on a connected machine (`hf download {name}{' ' + gguf_file if gguf_file else ''}`) and copy "
           "the Hugging Face cache here, or point at a local directory that holds the model")
    if huggingface_hub.is_offline_mode():
        raise ModelNotAvailableError(
            f"Model {name!r} is not available: it is {where}, and the hub can't be reached because HF_HUB_OFFLINE is "
            f"set; {fix}."
        )
    try:
        huggingface_hub.model_info(name, timeout=10)
    except GatedRepoError:
        raise ModelNotAvailableError(
            f"Model {name!r} is not available: it is {where}, and it is gated on the hub; accept its terms on "
            f"https://huggingface.co/{name} and log in (`hf auth login`), or point at a local directory."
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotAvailableError(
            f"Model {name!r} is not available: it is {where}, and the hub has no such model (or it is private); "
            "check the id (or log in with `hf auth login`), or point at a local directory."
        ) from None
    except (HTTPError, OSError) as err:
        raise ModelNotAvailableError(
            f"Model {name!r} is not available: it is {where}, and the hub can't be reached "
            f"({type(err).__name__}: {_first_line(err)}); {fix}."
        ) from None


def _listing(directory: Path, limit: int = 5) -> str:
    names = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    if not names:
        return "no files"
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:200]


# --- loading ---------------------------------------------------------------------------------------


def load_pretrained(
    model_name_or_path: str | os.PathLike,
    *,
    gguf_file: str | None = None,
    tokenizer_name_or_path: str | os.PathLike | None = None,
    torch_dtype: Any = "float32",
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """A causal LM and its tokenizer, from a hub id, a local directory, or a directory and a GGUF file in it.

    The model is checked first (`check_model_available`), so a missing one fails in one sentence
    before anything is loaded. A GGUF file is read from its dequantised copy in `gguf_cache_dir()`,
    made on the first load (about 19 s for SmolLM2; later loads 1.6-2.0 s in a fresh process, 0.2 s
    once transformers' model classes are imported). The tokenizer comes from `tokenizer_name_or_path`
    when given, else from the model. `torch_dtype` is a dtype or its name ("float32", "bfloat16",
    "auto"); a GGUF copy is always stored in float32 and cast on load.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _checked_source(model_name_or_path, gguf_file)
    tokenizer_source = _checked_tokenizer_source(model_name_or_path, tokenizer_name_or_path) or source
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=trust_remote_code)
    return model, tokenizer


def load_pretrained_tokenizer(
    model_name_or_path: str | os.PathLike,
    *,
    gguf_file: str | None = None,
    tokenizer_name_or_path: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """The tokenizer `load_pretrained` would give, without loading the model (a GGUF one's from its copy)."""
    from transformers import AutoTokenizer

    source = _checked_tokenizer_source(model_name_or_path, tokenizer_name_or_path)
    if source is None:
        source = _checked_source(model_name_or_path, gguf_file)
    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)


def _checked_tokenizer_source(model_name_or_path, tokenizer_name_or_path) -> str | os.PathLike | None:
    """A tokenizer named apart from the model, checked; None for the model's own."""
    if tokenizer_name_or_path is None or str(tokenizer_name_or_path) == str(model_name_or_path):
        return None
    check_model_available(tokenizer_name_or_path)
    return tokenizer_name_or_path


def _checked_source(model_name_or_path: str | os.PathLike, gguf_file: str | None) -> str | os.PathLike:
    """What to call `from_pretrained` on: the model itself, or its GGUF file's copy (made now if need be)."""
    check_model_available(model_name_or_path, gguf_file=gguf_file)
    return model_name_or_path if gguf_file is None else _gguf_copy(model_name_or_path, gguf_file)


def _gguf_copy(model_name_or_path: str | os.PathLike, gguf_file: str) -> Path:
    """The directory of the dequantised copy of a GGUF file, made now if there is none yet."""
    path = Path(model_name_or_path).expanduser() / gguf_file
    if not path.is_file():  # a hub repository's GGUF file: from the Hugging Face cache, or downloaded
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(str(model_name_or_path), gguf_file))
    return _cached_copy(path, lambda target: _dequantize(path, target))


def _dequantize(path: Path, target: Path) -> None:
    """Load a GGUF file dequantised to float32 and save it (and its tokenizer) as safetensors in `target`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    logger.info("Dequantising %s once into %s (later loads read the copy)", path, target.parent)
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # dequantize=True gives a plain model that save_pretrained accepts (a GGUF-flagged one refuses).
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    logger.info("Dequantised %s in %.1f s", path.name, time.monotonic() - started)


def _cached_copy(gguf_path: Path, build: Callable[[Path], None]) -> Path:
    """The valid copy of `gguf_path` in the cache, built with `build(directory)` when there is none.

    `build` writes into a fresh temporary directory beside the final one, which is then renamed
    into place (atomic on one filesystem); if another process's rename won, its copy is used.
    """
    import transformers

    digest = file_sha256(gguf_path)
    root = gguf_cache_dir()
    final = root / digest
    if _is_complete(final):
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"Can't create the GGUF cache directory {root} ({err.strerror}); set {CACHE_DIR_ENV} "
                          "to a writable directory.") from err
    _remove_stale(root, digest)
    if final.exists():  # a broken copy (half-written by hand, or files removed): move it aside, then rebuild
        logger.warning("Ignoring the incomplete GGUF copy %s; rebuilding it", final)
        _remove_quietly(final, root)
    tmp = root / f"{_TMP_PREFIX}{digest}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        build(tmp)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        marker = {"source": str(gguf_path), "sha256": digest, "transformers": transformers.__version__, "files": files}
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        try:
            os.rename(tmp, final)
        except OSError:
            if not _is_complete(final):
                raise
            logger.info("Another process finished the copy %s first; using it", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _is_complete(directory: Path) -> bool:
    """A copy is complete when its marker parses and lists every file at its recorded size."""
    try:
        files = json.loads((directory / _MARKER).read_text(encoding="utf-8"))["files"]
        return bool(files) and all((directory / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _remove_stale(root: Path, digest: str) -> None:
    """Delete temporary directories of this copy left by processes killed mid-build (older than an hour)."""
    now = time.time()
    for leftover in root.glob(f"{_TMP_PREFIX}{digest}-*"):
        try:
            if now - leftover.stat().st_mtime > _STALE_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except FileNotFoundError:
            continue  # another process removed it first


def _remove_quietly(directory: Path, root: Path) -> None:
    aside = root / f"{_TMP_PREFIX}stale-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(directory, aside)
    except FileNotFoundError:
        return  # another process moved it first
    shutil.rmtree(aside, ignore_errors=True)
