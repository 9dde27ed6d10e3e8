"""GGUF files converted once: what transformers makes of a ``.gguf``, kept as an ordinary model folder.

transformers converts a GGUF file on every load: it parses the whole metadata (a vocabulary of
tens of thousands of entries) once for the config, again for the tokenizer and again for the
weights, and de-quantizes every tensor. For SmolLM2-135M that is ~20 s on two cores, every time.
The first :func:`skipspec.load` of a file saves the result (config, generation config, tokenizer
files, de-quantized weights as safetensors) into a folder of its own; later loads read that
folder with ``from_pretrained``, which takes a second or two.

The folder is keyed by everything the conversion depends on: the file's content (its sha256,
computed once and remembered against its path, size and modification time), the dtype the weights
were cast to, and the versions of transformers, torch and gguf. Another version of any of them
makes another folder; ``skipspec cache list`` shows them and ``skipspec cache clear`` removes them.

Layout, under ``$SKIPSPEC_CACHE/converted`` (else the user cache folder)::

    fingerprints.json                      path -> size, mtime_ns, sha256 of the files seen
    <file stem>-<dtype>-<key>/             config.json, model.safetensors, tokenizer files,
                                           skipspec-converted.json (what it was made from)
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import torch

from .offline_models import cache_root

#: Bumped when what is saved, or how, changes: older folders are then ignored.
FORMAT = 1
DIR_NAME = "converted"
RECORD = "skipspec-converted.json"
FINGERPRINTS = "fingerprints.json"
_BLOCK = 8 * 1024 * 1024


def cache_dir() -> Path:
    """Folder the converted models live in (not created here)."""
    return cache_root() / DIR_NAME


def versions() -> dict[str, str]:
    """The library versions a conversion depends on (read from package metadata: no imports)."""
    out = {"torch": torch.__version__.split("+")[0]}
    for name in ("transformers", "gguf"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "none"
    return out


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _write_json(path: Path, doc: dict) -> None:
    """Write atomically: a reader never sees half a file; two writers leave one whole file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    """The file's sha256, hashed once and then remembered while its size and mtime stay the same.

    A gigabyte hashes in a few seconds; a remembered one costs a stat. The record is a cache
    like the rest: if it cannot be written the hash is simply computed again next time.
    """
    path = Path(path).resolve()
    st = path.stat()
    store = cache_dir() / FINGERPRINTS
    try:
        known = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    entry = known.get(str(path))
    if isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return str(entry["sha256"])
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    digest = h.hexdigest()
    known[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        _write_json(store, known)
    except OSError:
        pass
    return digest


def key(sha256: str, dtype: torch.dtype) -> dict:
    """Everything a converted folder depends on."""
    return {"format": FORMAT, "sha256": sha256, "dtype": _dtype_name(dtype), **versions()}


def folder_for(gguf: Path, dtype: torch.dtype) -> Path:
    """Where the conversion of ``gguf`` to ``dtype`` lives (whether or not it exists yet)."""
    k = key(file_sha256(gguf), dtype)
    digest = hashlib.sha256(json.dumps(k, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"{Path(gguf).stem}-{k['dtype']}-{digest}"


def lookup(gguf: Path, dtype: torch.dtype) -> Path | None:
    """The converted folder of ``gguf`` in ``dtype``, or None when there is none yet."""
    folder = folder_for(gguf, dtype)
    return folder if (folder / RECORD).is_file() else None


def _state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights, each storage once (tied embeddings: the first name, the input embedding, is kept;
    ``from_pretrained`` ties the output head back to it)."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, t in model.state_dict().items():
        ident = (t.untyped_storage().data_ptr(), t.storage_offset())
        if ident in seen:
            continue
        seen.add(ident)
        out[name] = t.detach().to("cpu").contiguous()
    return out


def save(model, tokenizer, gguf: Path, dtype: torch.dtype) -> Path:
    """Save a model (and its tokenizer) just converted from ``gguf``; return its folder.

    transformers refuses ``save_pretrained`` on a model loaded from GGUF (it counts as quantized,
    although its weights are de-quantized), so the parts are saved one by one: the config without
    its GGUF quantization entry, the generation config, the tokenizer, and the weights through
    safetensors. Written into a temporary folder first, then renamed: a reader sees a whole folder
    or none. Raises OSError (disk full, read-only cache); the caller goes on without the cache.
    """
    from safetensors.torch import save_file

    final = folder_for(gguf, dtype)
    if (final / RECORD).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    free = shutil.disk_usage(final.parent).free
    if free < size + (1 << 28):
        raise OSError(f"{size / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free in {final.parent}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_file(_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        record = {**key(file_sha256(gguf), dtype), "source": str(Path(gguf).resolve())}
        _write_json(tmp / RECORD, record)
        for f in tmp.iterdir():  # mkdtemp and mkstemp make them private; the model is not a secret
            f.chmod(0o644)
        tmp.chmod(0o755)
        if final.exists() and not (final / RECORD).is_file():  # left by a conversion that died
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / RECORD).is_file():  # not another process finishing first: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def entries() -> list[tuple[Path, dict]]:
    """Every converted folder with its record (an empty dict when the record is unreadable)."""
    folder = cache_dir()
    out = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not path.is_dir() or path.name.startswith("."):
            continue
        try:
            record = json.loads((path / RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {}
        out.append((path, record if isinstance(record, dict) else {}))
    return out
