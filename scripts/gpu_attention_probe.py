"""One-token attention over a static KV cache on the GPU: SDPA over the whole capacity against
skipspec's split-KV decode kernel (`skipspec.runtime.decode_kernels`), which skips the blocks of
slots the mask hides, per kernel option set. (FlexAttention's decoding kernel, once timed here
too, is under "Tried and dropped" in docs/design.md.)

Each case is one layer's attention for one query token, captured as a CUDA graph of 32 calls, one
per layer's cache (as 32 layers run: one cache reused would be read from L2), timed by replays.
Reported per call: microseconds, the bandwidth of the visible keys and values, and the largest
difference from the float32 formula (bf16 inputs; a float32 check runs once per shape).

With `--trees`, the cases are a verify step's attention instead: 1, 16 and 64 query tokens (a
tree's nodes in the slots after the context, each seeing the context, itself and a random set of
the earlier nodes), skipspec's kernel per option set in `TREE_OPTIONS`.

Run:   PYTHONPATH=src python3 scripts/gpu_attention_probe.py --out $OUT/attn [--budget 240] [--trees]
Writes results.json under --out; prints a Markdown table last.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from skipspec.runtime.decode_attention import reference_attention
from skipspec.runtime.decode_kernels import decode

# (name, query heads, kv heads, head dim, capacity, contexts)
SHAPES = [
    ("llama2-7b", 32, 32, 128, 1280, (512,)),
    ("llama2-7b", 32, 32, 128, 2816, (512, 2048)),
    ("qwen2.5-1.5b", 12, 2, 128, 2816, (512, 2048)),
    ("smollm2-135m", 9, 3, 64, 1280, (512,)),
    ("gemma3-270m", 4, 1, 256, 1280, (512,)),
]
# skipspec decode kernel options (decode_kernels.decode keywords); {} = its defaults.
OPTIONS = [
    {},
    {"block_n": 32},
    {"block_n": 128},
    {"max_splits": 16},
    {"max_splits": 8},
    {"num_warps": 2},
    {"num_warps": 8},
    {"num_stages": 1},
    {"num_stages": 3},
    {"block_n": 32, "num_warps": 2},
]
# (name, query heads, kv heads, head dim, capacity, contexts, query counts) for --trees
TREE_SHAPES = [
    ("llama2-7b", 32, 32, 128, 2816, (512, 2048), (1, 16, 64)),
    ("qwen2.5-1.5b", 12, 2, 128, 2816, (2048,), (1, 16, 64)),
]
# {"bound": False}: the branch per block, as every step ran before the bounded loop; with
# "num_warps": 8, as tiles of 64 rows ran (7B trees of 64 nodes, grouped heads of 16 or more).
TREE_OPTIONS = [
    {},
    {"bound": False, "num_warps": 8},
    {"bound": False},
    {"bound": True},
    {"num_warps": 8},
    {"num_stages": 1},
    {"num_stages": 3},
    {"block_n": 32},
    {"programs": 528},
]
LAYERS = 32
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def graph_us(fn, q: torch.Tensor, ks: torch.Tensor, vs: torch.Tensor, reps: int = 20) -> float:
    """Microseconds per call of `fn(q, k, v)`, from replays of a graph that calls it once per layer's cache."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn(q, ks[0], vs[0])
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for layer in range(LAYERS):
            fn(q, ks[layer], vs[layer])
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / reps / LAYERS


def run(args) -> list[dict]:
    dev, rows = torch.device("cuda"), []
    for name, hq, hkv, dim, cap, contexts in SHAPES:
        q = torch.randn(1, hq, 1, dim, device=dev, dtype=torch.bfloat16)
        # One cache per layer, as a model's: a loop over one would run from L2 (50 MB on an H100).
        ks = torch.randn(LAYERS, 1, hkv, cap, dim, device=dev, dtype=torch.bfloat16)
        vs = torch.randn_like(ks)
        k, v = ks[0], vs[0]
        additive = torch.zeros(cap, device=dev, dtype=torch.bfloat16)
        scale = dim**-0.5
        sdpa = functools.partial(F.scaled_dot_product_attention, attn_mask=additive.view(1, 1, 1, cap), enable_gqa=hq != hkv)
        for ctx in contexts:
            additive.fill_(0).masked_fill_(torch.arange(cap, device=dev) >= ctx, torch.finfo(torch.bfloat16).min)
            ref = reference_attention(q, k, v, additive, scale, 0.0).float()
            us = graph_us(sdpa, q, ks, vs)
            err = (sdpa(q, k, v).float() - ref).abs().max().item()
            rows.append({"shape": name, "ctx": ctx, "capacity": cap, "kernel": "sdpa (whole capacity)", "us": us,
                         "GBps_visible": 2 * hkv * ctx * dim * 2 / us / 1e3, "max_err": err})  # fmt: skip
            log(f"{name} cap {cap} ctx {ctx} sdpa: {us:.1f} us, err {err:.1e}")
            # float32 inputs, with soft-capping and a hidden hole: the kernel's exact-precision path.
            q32, k32, v32, m32 = q.float(), k.float(), v.float(), additive.float()
            m32[ctx // 3 : ctx // 2] = torch.finfo(torch.float32).min
            err32 = decode(q32, k32, v32, m32, scale, 30.0) - reference_attention(q32, k32, v32, m32, scale, 30.0)
            rows.append({"shape": name, "ctx": ctx, "capacity": cap, "kernel": "skipspec float32 check",
                         "max_err": err32.abs().max().item()})  # fmt: skip
            for opts in OPTIONS:
                if time.perf_counter() - T0 > args.budget:
                    log("past the budget: stopping")
                    return rows
                row = {"shape": name, "ctx": ctx, "capacity": cap}
                rows.append(time_option(row, opts, q, ks, vs, additive, ref, visible=hkv * ctx * dim))
    return rows


def tree_mask(queries: int, ctx: int, cap: int, seed: int) -> torch.Tensor:
    """`(queries, cap)` bf16 additive mask: the context and a random tree after it."""
    gen = torch.Generator().manual_seed(seed)
    visible = torch.zeros(queries, cap, dtype=torch.bool)
    visible[:, :ctx] = True
    for i in range(queries):
        visible[i, ctx + i] = True
        visible[i, ctx : ctx + i] |= torch.rand(i, generator=gen) < 0.3
    hidden = torch.finfo(torch.bfloat16).min
    return torch.zeros(queries, cap, dtype=torch.bfloat16).masked_fill_(~visible, hidden).cuda()


def run_trees(args) -> list[dict]:
    rows = []
    for name, hq, hkv, dim, cap, contexts, counts in TREE_SHAPES:
        ks = torch.randn(LAYERS, 1, hkv, cap, dim, device="cuda", dtype=torch.bfloat16)
        vs = torch.randn_like(ks)
        scale = dim**-0.5
        for ctx in contexts:
            for queries in counts:
                q = torch.randn(1, hq, queries, dim, device="cuda", dtype=torch.bfloat16)
                mask = tree_mask(queries, ctx, cap, seed=ctx + queries)
                ref = reference_attention(q, ks[0], vs[0], mask, scale, 0.0).float()
                for opts in TREE_OPTIONS:
                    if time.perf_counter() - T0 > args.budget:
                        log("past the budget: stopping")
                        return rows
                    row = {"shape": name, "ctx": ctx, "capacity": cap, "queries": queries}
                    rows.append(time_option(row, opts, q, ks, vs, mask, ref, visible=hkv * (ctx + queries) * dim))
    return rows


def time_option(row: dict, opts: dict, q, ks, vs, mask, ref, *, visible: int) -> dict:
    """`row` with skipspec's kernel under `opts` timed (graph replays over the layers' caches) and
    checked against `ref`; `visible`: the key (or value) elements a call has to read."""
    row["kernel"] = f"skipspec {opts or 'defaults'}"
    try:
        fn = functools.partial(_decode, additive=mask, scale=q.shape[-1] ** -0.5, opts=opts)
        row["max_err"] = (fn(q, ks[0], vs[0]).float() - ref).abs().max().item()
        row["us"] = graph_us(fn, q, ks, vs)
        row["GBps_visible"] = 2 * visible * 2 / row["us"] / 1e3
        where = " ".join(f"{key} {row[key]}" for key in ("shape", "ctx", "capacity", "queries") if key in row)
        log(f"{where} {row['kernel']}: {row['us']:.1f} us, err {row['max_err']:.1e}")
    except Exception:
        row["error"] = traceback.format_exc(limit=2)[-300:]
        log(f"{row['kernel']} FAILED: {row['error']}")
    return row


def _decode(q, k, v, *, additive, scale, opts):
    return decode(q, k, v, additive, scale, 0.0, **opts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-out/attn")
    ap.add_argument("--budget", type=float, default=240.0, help="seconds after which no new case starts")
    ap.add_argument("--trees", action="store_true", help="verify steps' attention (1, 16, 64 query tokens)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = run_trees(args) if args.trees else run(args)
    (out / "results.json").write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    print("| shape | ctx / capacity | queries | kernel | us per layer | GB/s of visible KV | max error |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        us = f"{r['us']:.1f}" if "us" in r else ("-" if "error" not in r else "failed")
        bw = f"{r['GBps_visible']:.0f}" if "us" in r else "-"
        err = f"{r['max_err']:.1e}" if "max_err" in r else "-"
        where = f"{r['shape']} | {r['ctx']} / {r['capacity']} | {r.get('queries', 1)}"
        print(f"| {where} | {r['kernel']} | {us} | {bw} | {err} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
