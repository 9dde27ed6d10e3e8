"""Saved layer sets: what a search chose, per (model, dtype, device kind, task, objective), across processes.

One versioned JSON file, `layer_sets.json` in skipspec's cache folder (`$SKIPSPEC_CACHE`, else the
platform's user cache folder; the same root `offline_models` uses). Two sections:

- "sets": the search's result per `StoreKey`: the chosen set (or none: plain decoding), its score,
  and what the search needs to warm-start (the speed search's slot order, whether SWIFT's search
  had stopped for good);
- "costs": measured step costs (`search.costs`) per model, dtype, device and CPU thread count.

A file that cannot be read, is not JSON, or has another format version is ignored with a warning
(and replaced at the next save); a record that does not fit the model is ignored by its reader.
Writes go to a temporary file that replaces the old one, so a reader never sees half a file. Two
processes saving at once: the last one wins, and both files are whole.

Model identity must not cost a read of gigabytes per load: it hashes the config, the name or
path it was loaded from, and a strided sample of at most 4096 values from each of four weight
tensors (embeddings, first and last layer, output head).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..model.skipset import SkipSet

FORMAT = "skipspec-layer-sets"
VERSION = 1
FILE_NAME = "layer_sets.json"
_SAMPLE = 4096


@dataclass(frozen=True)
class StoreKey:
    """What a saved set depends on.

    runtime: how steps run (`StaticExecutor.tag`, or "eager"): a captured step costs differently.

    >>> str(StoreKey("ab12", "float32", "cpu", "code", "speed"))
    'ab12|float32|cpu|eager|code|speed'
    """

    model: str
    dtype: str
    device: str
    task: str
    objective: str
    runtime: str = "eager"

    def __str__(self) -> str:
        return "|".join((self.model, self.dtype, self.device, self.runtime, self.task, self.objective))

    @property
    def hardware(self) -> str:
        """The part that step costs depend on (not the task or objective)."""
        return "|".join((self.model, self.dtype, self.device, self.runtime, f"threads={torch.get_num_threads()}"))


def default_path() -> Path:
    from ..offline_models import cache_dir

    return cache_dir().parent / FILE_NAME


def device_kind(device: torch.device) -> str:
    """'cpu', or 'cuda:<device name>' (sets and costs do not carry between GPU models)."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


def _sample(t: torch.Tensor) -> bytes:
    # A tensor-parallel model's weights are DTensors: sample this rank's shard (reading the whole
    # tensor would be a collective that the other ranks do not join).
    local = t.to_local() if hasattr(t, "to_local") else t
    flat = local.detach().reshape(-1)
    step = max(1, flat.numel() // _SAMPLE)
    return flat[::step][:_SAMPLE].to("cpu", torch.float32).numpy().tobytes()


def model_identity(model: torch.nn.Module) -> str:
    """A short hash naming these weights, cheap to compute (see the module docstring)."""
    config = model.config.to_dict()
    for volatile in ("transformers_version", "_attn_implementation", "_attn_implementation_internal"):
        config.pop(volatile, None)
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(str(getattr(model.config, "_name_or_path", "")).encode())
    layers = model.model.layers
    for t in (
        model.get_input_embeddings().weight,
        next(layers[0].parameters()),
        next(layers[-1].parameters()),
        model.get_output_embeddings().weight,
    ):
        h.update(_sample(t))
    return h.hexdigest()[:20]


class LayerSetStore:
    """Reads and writes the file; holds nothing else (every call reads it fresh)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()

    def _read(self) -> dict:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return _empty()
        except OSError as err:
            warnings.warn(f"layer-set store {self.path} cannot be read ({err}); ignoring it", RuntimeWarning, stacklevel=3)
            return _empty()
        try:
            doc = json.loads(text)
        except ValueError as err:
            message = f"layer-set store {self.path} is not valid JSON ({err}); ignoring it"
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            return _empty()
        if not (isinstance(doc, dict) and doc.get("format") == FORMAT and doc.get("version") == VERSION
                and all(isinstance(doc.get(s), dict) for s in ("sets", "costs"))):  # fmt: skip
            warnings.warn(
                f"layer-set store {self.path} is not a version-{VERSION} {FORMAT} file; ignoring it",
                RuntimeWarning,
                stacklevel=3,
            )
            return _empty()
        return doc

    def get(self, section: str, key: str) -> dict | None:
        entry = self._read()[section].get(key)
        return entry if isinstance(entry, dict) else None

    def put(self, section: str, key: str, entry: dict) -> None:
        doc = self._read()
        doc[section][key] = entry
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".layer_sets.", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as err:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            warnings.warn(f"cannot save to layer-set store {self.path}: {err}", RuntimeWarning, stacklevel=2)


def _empty() -> dict:
    return {"format": FORMAT, "version": VERSION, "sets": {}, "costs": {}}


def parse_saved_sets(entry: dict, num_layers: int, objective: str) -> dict:
    """A saved "sets" entry with its chosen set as a `SkipSet` (and, for "speed", its slot order
    checked); raises KeyError, TypeError, ValueError or ConfigError when it does not fit this model.

    >>> parse_saved_sets({"num_layers": 4, "set": {"attn": [1], "mlp": []}}, 4, "paper")["set"]
    SkipSet(attn=[1], mlp=[])
    """
    if entry["num_layers"] != num_layers:
        raise ValueError(f"it is for {entry['num_layers']} layers, this model has {num_layers}")
    out = dict(entry)
    chosen = entry.get("set")
    out["set"] = None if chosen is None else SkipSet.of(chosen["attn"], chosen["mlp"]).validate(num_layers)
    if objective == "speed":
        order = tuple(int(s) for s in entry["order"]) if entry.get("order") is not None else None
        if order is not None and sorted(order) != list(range(2 * (num_layers - 2))):
            raise ValueError("its slot order is not a permutation of this model's slots")
        out["order"] = order
    return out
