"""Step costs of a tensor-parallel model on several GPUs: random-weight Llama-2-70B / 13B shapes.

    torchrun --nproc-per-node 8 scripts/tp_bench.py --shapes llama2-70b,llama2-13b --out tp-bench-out

No rank ever holds a whole model: it is built on the meta device, split with transformers'
tensor-parallel plan (DTensor placeholders), and each rank then materializes only its own slices,
with random values, on its GPU. Per shape and context, through the decoder's executor (so every
step runs on every rank, as in real use; rank 0's clock):

- plain decoding end to end (`method="ar"`), against the memory floor: the bandwidth of one GPU
  (a device-to-device copy, bytes read + written) over the bytes of one rank's weights;
- a verify step per tree size (SWIFT's tree shape; 1 node = a plain step);
- a layer-skip draft step per skip ratio, and the share of the weights its skip set leaves out;
- the SWIFT speedup these costs allow at the acceptance the paper reports (`gpu_bench.speedup_model`).

Rank 0 writes results.json and results.md under --out. `--device cpu --shapes tiny` runs the same
on CPU processes (gloo), to check the script; tests/test_tensor_parallel.py does so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

from gpu_bench import (  # noqa: E402
    GREEDY,
    LLAMA_SHAPES,
    copy_bandwidth,
    speedup_model,
    spread_skip,
    swift_tree,
    tree_widths,
)

from skipspec import SwiftConfig, SwiftDecoder, parallel  # noqa: E402
from skipspec.parallel.group import Place  # noqa: E402
from skipspec.parallel.shard import adopt, apply_transformers_plan, check_divisible, splits_heads  # noqa: E402

SHAPES = {
    **LLAMA_SHAPES,
    "llama2-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                       num_key_value_heads=8, vocab_size=32000),
    # A tiny shape whose heads and vocabulary divide by 2 ranks (transformers 5.17 gathers the head's columns).
    "tiny-tp": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=96),
}  # fmt: skip
SKIP_RATIOS = (0.2, 0.3, 0.45, 0.6)
TOPK = 10


def log(*args) -> None:
    if torch.distributed.get_rank() == 0:
        print(*args, flush=True)


# -- a sharded random model, never whole on any rank ----------------------------------------------------


def sharded_llama(shape: str, place: Place, dtype: torch.dtype) -> torch.nn.Module:
    """A Llama of `shape` split over the ranks, each rank's slices random (norms 1) on its device."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    plan_heads = splits_heads(model.tp_plan)
    check_divisible(config, place.world_size, plan_heads)
    mesh = torch.distributed.init_device_mesh(place.device.type, (place.world_size,), mesh_dim_names=("tp",))
    apply_transformers_plan(model, mesh)
    materialize(model, place)
    adopt(model, place, "transformers", plan_heads)
    return model.eval()


@torch.no_grad()
def materialize(model: torch.nn.Module, place: Place) -> None:
    """Give every meta parameter (or its DTensor's local slice) real, random values on the device:
    slices differ per rank, replicated values are the same on every rank; rotary buffers rebuilt."""
    from torch.distributed.tensor import DTensor, Replicate

    for name, module in model.named_modules():
        for pname, p in list(module.named_parameters(recurse=False)):
            full = f"{name}.{pname}"
            local = p.to_local() if isinstance(p, DTensor) else p
            replicated = not isinstance(p, DTensor) or all(isinstance(x, Replicate) for x in p.placements)
            seed = int(hashlib.sha256(full.encode()).hexdigest()[:8], 16) + (0 if replicated else place.rank + 1)
            gen = torch.Generator(device=place.device).manual_seed(seed)
            values = torch.empty(local.shape, dtype=local.dtype, device=place.device)
            values.fill_(1.0) if local.dim() == 1 else values.normal_(0.0, 0.02, generator=gen)
            if isinstance(p, DTensor):
                values = DTensor.from_local(values, p.device_mesh, p.placements, run_check=False,
                                            shape=p.shape, stride=p.stride())  # fmt: skip
            module._parameters[pname] = torch.nn.Parameter(values, requires_grad=False)
    with torch.device(place.device):  # its inverse frequencies were computed on the meta device
        model.model.rotary_emb = type(model.model.rotary_emb)(model.config)


def local_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights this rank reads per step (its slices; replicated tensors whole)."""
    from torch.distributed.tensor import DTensor

    total = 0
    for p in model.parameters():
        local = p.to_local() if isinstance(p, DTensor) else p
        total += local.numel() * local.element_size()
    return total


# -- timing through the executor ------------------------------------------------------------------------


def timed(fn, reps: int) -> float:
    """Median milliseconds of `fn()` (which ends in a host read of its result), after one untimed call."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def skipped_weight_fraction(model: torch.nn.Module, skip) -> float:
    from torch.distributed.tensor import DTensor

    def size(module) -> int:
        return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in module.parameters())

    layers = model.model.layers
    skipped = sum(size(layers[i].self_attn) + size(layers[i].input_layernorm) for i in skip.attn)
    skipped += sum(size(layers[i].mlp) + size(layers[i].post_attention_layernorm) for i in skip.mlp)
    return skipped / size(model)


def measure(model, place: Place, contexts, tree_sizes, new_tokens: int, reps: int, mode: str) -> dict:
    """Rank 0: every measurement of one sharded model (see the module docstring)."""
    from skipspec.runtime import RuntimeConfig

    cfg = SwiftConfig(optimize=False, max_draft_tokens=25, topk=TOPK)
    dec = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=RuntimeConfig(mode=mode))
    ex = dec.executor
    layers = model.config.num_hidden_layers
    skips = {r: spread_skip(layers, r) for r in SKIP_RATIOS}
    out = {"tag": ex.tag, "contexts": {}}
    for ctx in contexts:
        gen = torch.Generator().manual_seed(ctx)
        prompt = torch.randint(0, model.config.vocab_size, (ctx,), generator=gen).tolist()
        start = time.perf_counter()
        ar = dec.generate(prompt, new_tokens, method="ar")
        res = {"plain_tokens_per_s": ar.stats["decode_tokens_per_s"], "verify_ms": {}, "draft_ms": {},
               "draft_ratio": {}, "skipped_weight_fraction": {}}  # fmt: skip
        # Each verify commits its bonus token: room for every timed step past the prompt.
        room = (len(tree_sizes) + len(SKIP_RATIOS)) * (reps + 1) + 8
        ex.check(ctx, room, 0, False)
        ex.prefill(prompt, room, 0, GREEDY, 0)
        for n in tree_sizes:
            tree = swift_tree(tree_widths(n, TOPK)) if n > 1 else None
            res["verify_ms"][n] = timed(lambda tree=tree: ex.verify(tree, GREEDY), reps)
        plain = res["verify_ms"][1]
        for r, skip in skips.items():
            ex.prepare_draft(skip, GREEDY)
            res["draft_ms"][r] = timed(lambda skip=skip: ex.draft_forward(skip, GREEDY, start=True)[1].tolist(), reps)
            res["draft_ratio"][r] = res["draft_ms"][r] / plain
            res["skipped_weight_fraction"][r] = skipped_weight_fraction(model, skip)
        res["seconds"] = time.perf_counter() - start
        out["contexts"][ctx] = res
        log(f"ctx {ctx}: plain decoding {res['plain_tokens_per_s']:.1f} tokens/s, plain step {plain:.2f} ms")
        log("  verify ms by nodes: " + ", ".join(f"{n}:{v:.2f}" for n, v in res["verify_ms"].items()))
        log("  draft/plain by skip ratio: " + ", ".join(f"{r}:{v:.2f}" for r, v in res["draft_ratio"].items()))
    out["speedup_model"] = speedup_model(out["contexts"][contexts[0]], TOPK)
    return out


def run_shape(shape: str, place: Place, dtype, contexts, tree_sizes, new_tokens: int, reps: int) -> dict | None:
    """Every rank: build, shard and measure one shape; rank 0's results (None elsewhere)."""
    start = time.perf_counter()
    model = sharded_llama(shape, place, dtype)
    built = time.perf_counter() - start
    local_bytes = local_weight_bytes(model)
    bandwidth = copy_bandwidth(place.device)
    mode = "graphs" if place.device.type == "cuda" else "eager"
    log(f"\n== {shape}: {place.world_size} ranks, {local_bytes / 1e9:.2f} GB of weights per rank, built in {built:.1f} s")
    found = parallel.run(model, lambda: measure(model, place, contexts, tree_sizes, new_tokens, reps, mode))
    if found is None:
        return None
    floor = bandwidth / local_bytes  # tokens/s if a step only read each rank's weights once, in parallel
    for res in found["contexts"].values():
        res["plain_vs_floor"] = res["plain_tokens_per_s"] / floor
        res["step_vs_floor"] = (1e3 / res["verify_ms"][1]) / floor
    return {"shape": shape, "world_size": place.world_size, "dtype": str(dtype).removeprefix("torch."),
            "weight_bytes_per_rank": local_bytes, "bandwidth_per_gpu": bandwidth, "floor_tokens_per_s": floor,
            "build_s": built, **found}  # fmt: skip


def markdown(results: list[dict]) -> str:
    columns = (
        "context",
        "plain decoding tokens/s",
        "of floor",
        "plain step ms",
        "verify ms by nodes",
        "draft/plain by skip ratio",
    )
    lines = []
    for r in results:
        lines += [
            f"## {r['shape']}, random weights, {r['dtype']}, {r['world_size']} ranks ({r['tag']})",
            "",
            f"Weights per rank {r['weight_bytes_per_rank'] / 1e9:.2f} GB; "
            f"memory floor {r['floor_tokens_per_s']:.1f} tokens/s.",
            "",
            "| " + " | ".join(columns) + " |",
            "|---:|---:|---:|---:|---|---|",
        ]
        for ctx, c in r["contexts"].items():
            verify = ", ".join(f"{n}: {v:.2f}" for n, v in c["verify_ms"].items())
            draft = ", ".join(f"{k}: {v:.2f}" for k, v in c["draft_ratio"].items())
            lines.append(
                f"| {ctx} | {c['plain_tokens_per_s']:.1f} | {c['plain_vs_floor']:.0%} | {c['verify_ms'][1]:.2f} | "
                f"{verify} | {draft} |"
            )
        modelled = ", ".join(
            f"{x['acceptance']}: {x['speedup']:.2f}x ({x['drafts']} drafts)" for x in r["speedup_model"]["rows"]
        )
        lines += ["", f"Modelled SWIFT speedup at the paper's acceptance: {modelled}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict] | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="llama2-70b,llama2-13b", help=f"comma-separated, from {', '.join(SHAPES)}")
    ap.add_argument("--device", default="cuda", help="cuda (one GPU per rank) or cpu (gloo, to check the script)")
    ap.add_argument("--dtype", default=None, help="default bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--contexts", default="512,2048")
    ap.add_argument("--tree-sizes", default="1,2,4,8,16,32,64")
    ap.add_argument("--new-tokens", type=int, default=256, help="tokens of plain decoding per context")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default="tp-bench-out")
    args = ap.parse_args(argv)
    place = parallel.join(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if place.device.type == "cuda" else torch.float32)
    contexts = [int(c) for c in args.contexts.split(",")]
    tree_sizes = [int(n) for n in args.tree_sizes.split(",")]
    if tree_sizes[0] != 1:
        tree_sizes = [1, *tree_sizes]
    results = []
    for shape in args.shapes.split(","):
        r = run_shape(shape, place, dtype, contexts, tree_sizes, args.new_tokens, args.reps)
        if r is not None:
            results.append(r)
    if place.rank != 0:
        return None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    log(f"wrote {out}/results.json and {out}/results.md")
    return results


if __name__ == "__main__":
    main()
    torch.distributed.destroy_process_group()
