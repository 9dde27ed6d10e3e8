"""`load`: a model reference -> (ordinary transformers model, tokenizer), with clear errors.

A reference is a local folder, a `.gguf` file, an offline model name (`skipspec models list`) or a
hub id (`owner/name`). `locate` tells which in milliseconds, before anything heavy is imported, so
a typo fails at once: a hub id is looked up with one request and a short timeout, not transformers'
five retries. A GGUF file is converted once and read from `gguf_cache` afterwards.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError, ModelNotFoundError, UnsupportedArchitectureError
from .model.arch import ARCHS, supported_list

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

#: What a hub repository id looks like (https://huggingface.co/docs/hub/repositories): owner/name.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
#: Seconds the hub gets to answer the one lookup (`HF_HUB_ETAG_TIMEOUT` overrides).
HUB_TIMEOUT = 5.0
LIST_HINT = "`skipspec models list` shows models that install offline"


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} needs a CUDA GPU, and none is available")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}") from None


@dataclass(frozen=True)
class ModelSource:
    """Where a model reference points.

    kind: "folder" (a saved model), "gguf" (`path` is the file) or "hub" (`path` is the repo id).
    local_only: hub only: read transformers' local cache, the hub being offline or unreachable.
    """

    ref: str
    kind: str
    path: str
    local_only: bool = False


def locate(ref: str | ModelSource) -> ModelSource:
    """Tell what `ref` names, or raise ModelNotFoundError at once (see the module docstring)."""
    if isinstance(ref, ModelSource):
        return ref
    ref = str(ref)
    path = Path(ref).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelNotFoundError(f"{ref} is a file but not a .gguf; pass a model folder or a .gguf file")
        return ModelSource(ref, "gguf", str(path))
    if path.is_dir():
        return ModelSource(ref, "folder", str(path))
    from . import offline_models

    if ref in offline_models.MODELS:
        found = offline_models.resolve(ref)
        if found is None:
            raise ModelNotFoundError(f"offline model {ref!r} is not installed yet; run: skipspec models fetch {ref}")
        return ModelSource(ref, "gguf", str(found))
    if ref.startswith(("/", ".", "~")) or ref.endswith(".gguf") or ref.count("/") > 1:
        raise ModelNotFoundError(f"no such file or folder: {ref} (it is not a local folder or .gguf file); {LIST_HINT}")
    if not _HUB_ID.fullmatch(ref) or ".." in ref or "--" in ref:
        raise ModelNotFoundError(
            f"no model {ref!r}: it is not a local folder or .gguf file, not an offline model name, and not a "
            f"hub id (owner/name); {LIST_HINT}"
        )
    return _locate_on_hub(ref)


def _locate_on_hub(repo_id: str) -> ModelSource:
    """One request with a short timeout, no retries: does the hub have `repo_id`'s config?

    Unreachable (no network, offline mode) falls back to transformers' local cache when it holds
    the model, and fails at once when it does not.
    """
    import huggingface_hub as hub
    from huggingface_hub.utils import build_hf_headers

    timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or HUB_TIMEOUT)
    failure = "offline mode (HF_HUB_OFFLINE)"
    if not hub.is_offline_mode():
        try:
            response = hub.get_session().head(
                hub.hf_hub_url(repo_id, "config.json"), headers=build_hf_headers(), timeout=timeout
            )
        except Exception as err:  # any transport failure (DNS, refused, timeout, proxy) means: unreachable
            failure = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no answer'}"
        else:
            if response.status_code < 400:
                return ModelSource(repo_id, "hub", repo_id)
            if response.status_code in (401, 403):
                raise ModelNotFoundError(
                    f"the hub has no public model {repo_id!r} (HTTP {response.status_code}: it does not exist, or it "
                    f"is gated or private and needs a token: `hf auth login` or HF_TOKEN); {LIST_HINT}"
                )
            if response.status_code == 404:
                raise ModelNotFoundError(f"the hub has no model {repo_id!r} (HTTP 404); {LIST_HINT}")
            failure = f"HTTP {response.status_code}"
    if isinstance(hub.try_to_load_from_cache(repo_id, "config.json"), str):
        return ModelSource(repo_id, "hub", repo_id, local_only=True)
    raise ModelNotFoundError(
        f"cannot load {repo_id!r}: it is not a local folder, .gguf file or offline model name, and the hub did "
        f"not answer ({failure}); {LIST_HINT}"
    )


def layer_count(source: ModelSource) -> int | None:
    """The model's number of decoder layers, read from its config file or GGUF header without
    loading anything; None for a hub model or when the file does not say."""
    try:
        if source.kind == "gguf":
            from .offline_models import gguf_fields

            path = Path(source.path)
            arch = gguf_fields(path, frozenset({"general.architecture"})).get("general.architecture")
            count = gguf_fields(path, frozenset({f"{arch}.block_count"})).get(f"{arch}.block_count")
        elif source.kind == "folder":
            config = json.loads((Path(source.path) / "config.json").read_text(encoding="utf-8"))
            count = config.get("num_hidden_layers") or (config.get("text_config") or {}).get("num_hidden_layers")
        else:
            return None
    except (OSError, ValueError, AttributeError):
        return None
    return count if isinstance(count, int) and not isinstance(count, bool) else None


def load(
    ref: str | ModelSource,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    tensor_parallel: bool = False,
):
    """Load a causal LM and its tokenizer from a folder, a .gguf file, an offline model name or a hub id.

    The architecture is checked from the config before any weights are read. A GGUF file is
    converted the first time and read from skipspec's cache (`gguf_cache`) afterwards: the same
    weights, a fraction of the time.

    tensor_parallel: in a process started by torchrun, split the model's layers over its ranks
    (`skipspec.parallel`): each rank reads only its slice of the weights, on its own GPU
    (cuda:LOCAL_RANK) or on the CPU. Every rank calls `load` alike; the default process group is
    initialised first if there is none (NCCL on GPUs, gloo on the CPU).
    """
    if tensor_parallel:
        from .parallel import join

        place = join(device)
        dev = place.device
    else:
        dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    source = locate(ref)
    if tensor_parallel and place.world_size > 1:
        return _load_sharded(source, place, torch_dtype)
    if source.kind != "gguf":
        model, tokenizer = _from_pretrained(source, source.path, {}, torch_dtype)
    else:
        model, tokenizer = _from_gguf(source, torch_dtype)
    return model.to(dev).eval(), tokenizer


def _from_gguf(source: ModelSource, torch_dtype: torch.dtype):
    """From the converted folder when there is one; else convert, save the folder, and read it back
    (so every load of a file returns the model the same way, whatever came first)."""
    import warnings

    from . import gguf_cache

    gguf = Path(source.path)
    folder = gguf_cache.lookup(gguf, torch_dtype)
    if folder is not None:
        return _from_pretrained(source, str(folder), {}, torch_dtype)
    model, tokenizer = _from_pretrained(source, str(gguf.parent), {"gguf_file": gguf.name}, torch_dtype)
    try:
        folder = gguf_cache.save(model, tokenizer, gguf, torch_dtype)
    except OSError as err:
        warnings.warn(
            f"could not cache the conversion of {gguf.name} ({err}); the next load converts it again", stacklevel=3
        )
        return model, tokenizer
    del model
    return _from_pretrained(source, str(folder), {}, torch_dtype)


def _from_pretrained(source: ModelSource, where: str, extra: dict, torch_dtype: torch.dtype, check=None):
    """check: called with the config before any weights are read; may return more arguments for
    `from_pretrained` (tensor parallelism's)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.local_only:
        extra = {**extra, "local_files_only": True}
    config = _config(source, where, extra)
    more = check(config) if check is not None else {}
    # Gemma 2 soft-caps attention logits, which transformers' SDPA path refuses.
    attn = "eager" if getattr(config, "attn_logit_softcapping", None) else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, attn_implementation=attn, **extra, **more)
    tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    return model, tokenizer


def _config(source: ModelSource, where: str, extra: dict):
    """The model's config, its architecture checked."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(where, **extra)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(
            f"cannot load model {source.ref!r} ({type(err).__name__}: {str(err).splitlines()[0]}); {LIST_HINT}"
        ) from err
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHS:
        raise UnsupportedArchitectureError(
            f"model {source.ref!r} has architecture {model_type!r}, which skipspec does not support; "
            f"supported: {supported_list()}"
        )
    return config


def _load_sharded(source: ModelSource, place, torch_dtype: torch.dtype):
    """Every rank reads its slice of the weights: transformers' sharded loading with the
    architecture's tensor-parallel plan (`from_pretrained(distributed_config=...)`), or, for an
    architecture without one, the whole model on each rank, then split (`parallel.shard`)."""
    import torch.distributed as dist

    from .parallel.shard import adopt, check_divisible, has_plan, shard, splits_heads

    where, extra = source.path, {}
    if source.kind == "gguf":
        # Rank 0 converts the file once; the others wait and read its converted copy.
        if place.leads:
            where = str(_converted(source, torch_dtype))
        dist.barrier()
        if not place.leads:
            where = str(_converted(source, torch_dtype))
    planned = {}

    def check(config) -> dict:
        from transformers.distributed import DistributedConfig

        if not has_plan(config):
            return {}
        plan = dict(config.base_model_tp_plan)
        check_divisible(config, place.world_size, splits_heads(plan))
        planned["heads_split"] = splits_heads(plan)
        return {"distributed_config": DistributedConfig(tp_size=place.world_size)}

    try:
        model, tokenizer = _from_pretrained(source, where, extra, torch_dtype, check)
    except ValueError as err:  # transformers refusing its plan for this model (e.g. an odd vocabulary)
        if isinstance(err, (ConfigError, UnsupportedArchitectureError)):
            raise
        raise ConfigError(f"transformers cannot split {source.ref!r} over {place.world_size} ranks: {err}") from err
    if not planned:
        return shard(model.to(place.device), place, "dtensor").eval(), tokenizer
    device = model.get_input_embeddings().weight.device
    if device != place.device:
        raise ConfigError(
            f"transformers put the sharded model on {device}, not {place.device}: it shards onto this host's "
            "accelerator, so on a machine with GPUs run tensor parallelism on them (device 'cuda')"
        )
    adopt(model, place, "transformers", planned["heads_split"])
    return model.eval(), tokenizer


def _converted(source: ModelSource, torch_dtype: torch.dtype) -> Path:
    """The folder a GGUF file converts to (converting it now if no process has yet)."""
    from . import gguf_cache

    gguf = Path(source.path)
    folder = gguf_cache.lookup(gguf, torch_dtype)
    if folder is None:
        model, _ = _from_gguf(source, torch_dtype)
        del model
        folder = gguf_cache.lookup(gguf, torch_dtype)
    if folder is None:
        raise ModelNotFoundError(f"could not convert {gguf.name} for tensor-parallel loading (see the warning above)")
    return folder
