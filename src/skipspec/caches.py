"""Everything skipspec keeps on disk, for `skipspec cache list` and `skipspec cache clear`.

Kinds (all under `offline_models.cache_root()`, i.e. `$SKIPSPEC_CACHE` or the user cache folder,
except the compiled kernels):

- "converted": GGUF files converted to ordinary model folders (`gguf_cache`);
- "layer-sets": the skip sets searches chose and the step costs they measured (`search.store`);
- "models": offline models assembled from the package index (`offline_models`);
- "kernels": compiled kernels. skipspec does not move them: TorchInductor keeps them in
  `$TORCHINDUCTOR_CACHE_DIR` (default `<tmp>/torchinductor_<user>`) and Triton in
  `$TRITON_CACHE_DIR` (default `~/.triton/cache`), shared with every other program that uses them,
  so they are listed but cleared only when asked for by name.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import gguf_cache, offline_models

#: Kind -> what it holds, in the order `list` shows them.
KINDS = {
    "converted": "GGUF files converted once to model folders (later loads read these)",
    "layer-sets": "skip sets chosen by searches, and measured step costs",
    "models": "offline models assembled from the package index (`skipspec models fetch`)",
    "kernels": "compiled kernels (TorchInductor, Triton): shared with other programs, cleared only by name",
}
#: Kinds that belong to other libraries too: `clear` with no kind leaves them alone.
SHARED = frozenset({"kernels"})


@dataclass(frozen=True)
class Entry:
    kind: str
    path: Path
    size: int  # bytes
    what: str


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _converted() -> list[Entry]:
    out = []
    for path, record in gguf_cache.entries():
        if record:
            source = Path(record.get("source", "?")).name
            versions = ", ".join(f"{k} {record.get(k, '?')}" for k in ("transformers", "torch", "gguf"))
            what = f"{source} as {record.get('dtype', '?')} ({versions})"
        else:
            what = "incomplete conversion (no record)"
        out.append(Entry("converted", path, _size(path), what))
    fingerprints = gguf_cache.cache_dir() / gguf_cache.FINGERPRINTS
    if fingerprints.is_file():
        out.append(Entry("converted", fingerprints, _size(fingerprints), "sha256 of GGUF files seen (saves re-hashing)"))
    return out


def _layer_sets() -> list[Entry]:
    from .search.store import default_path

    path = default_path()
    if not path.is_file():
        return []
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        what = f"{len(doc.get('sets', {}))} saved skip set(s), {len(doc.get('costs', {}))} step-cost measurement(s)"
    except (OSError, ValueError, AttributeError, TypeError):
        what = "saved skip sets and step costs (unreadable: ignored by skipspec, safe to clear)"
    return [Entry("layer-sets", path, _size(path), what)]


def _models() -> list[Entry]:
    folder = offline_models.cache_dir()
    if not folder.is_dir():
        return []
    names = {m.filename: m.name for m in offline_models.MODELS.values()}
    out = []
    for path in sorted(folder.iterdir()):
        if path.name.endswith(offline_models._MARKER_SUFFIX):
            continue  # counted with its model
        marker = path.with_name(path.name + offline_models._MARKER_SUFFIX)
        size = _size(path) + (_size(marker) if marker.is_file() else 0)
        if path.name in names:
            what = f"offline model {names[path.name]}"
        elif path.name.startswith(".install-") or path.name.endswith(".part"):
            what = "left over from an interrupted `skipspec models fetch`"
        else:
            what = "not a known offline model"
        out.append(Entry("models", path, size, what))
    return out


def kernel_dirs() -> list[tuple[Path, str]]:
    """Where TorchInductor and Triton keep compiled kernels (computed as torch and Triton do, without
    importing them: torch's own helper creates the folder and sets an environment variable)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid_{os.getuid()}"
    inductor = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")
    triton = os.environ.get("TRITON_CACHE_DIR") or os.path.join(Path.home(), ".triton", "cache")
    return [
        (Path(inductor), "TorchInductor's compiled kernels (fused sublayers), shared with every torch.compile user"),
        (Path(triton), "Triton's compiled kernels (the decode-attention kernel), shared with every Triton user"),
    ]


def _kernels() -> list[Entry]:
    note = "; only `skipspec cache clear kernels` clears it"
    return [Entry("kernels", p, _size(p), what + note) for p, what in kernel_dirs() if p.exists()]


_FINDERS = {"converted": _converted, "layer-sets": _layer_sets, "models": _models, "kernels": _kernels}


def entries(kinds: tuple[str, ...] | None = None) -> list[Entry]:
    """What is on disk now, of these kinds (default: all), in `KINDS` order."""
    return [e for kind in KINDS if kinds is None or kind in kinds for e in _FINDERS[kind]()]


def clear(kinds: tuple[str, ...] | None = None) -> list[Entry]:
    """Remove the entries of these kinds (default: every kind not in `SHARED`); return what was removed."""
    chosen = tuple(k for k in KINDS if k not in SHARED) if kinds is None else kinds
    unknown = [k for k in chosen if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown cache kind(s) {unknown}; known: {', '.join(KINDS)}")
    removed = []
    for entry in entries(chosen):
        if entry.path.is_dir() and not entry.path.is_symlink():
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            entry.path.unlink(missing_ok=True)
        if entry.kind == "models":
            entry.path.with_name(entry.path.name + offline_models._MARKER_SUFFIX).unlink(missing_ok=True)
        removed.append(entry)
    return removed


def human(size: int) -> str:
    """1536 -> '1.5 kB', 538090408 -> '538.1 MB'."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
