"""One-token attention over a static KV cache on the GPU: SDPA over the whole capacity against
FlexAttention's split-KV decoding kernel with a block mask that skips the blocks past the context,
per kernel option set (the experiment behind docs/benchmarks.md, "Session 4").

Each case is one layer's attention for one query token, captured as a CUDA graph of 32 calls, one
per layer's cache (as 32 layers run: one cache reused would be read from L2), timed by replays.
Reported per call: microseconds and the bandwidth of the visible keys and values it had to read.
SDPA reads the whole capacity; Flex reads the visible blocks.

Run:   python3 scripts/gpu_attention_probe.py --out $OUT/attn [--budget 240]
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
from torch.nn.attention.flex_attention import BlockMask, flex_attention

BLOCK = 128


class DecodeMask:
    """A block mask over persistent buffers, rewritten in place per step (as skipspec's runtime did in
    commit a1342f8): the visible key blocks first, the slot mask inside them read by the mask function."""

    def __init__(self, capacity: int, device) -> None:
        self.capacity, self.blocks = capacity, -(-capacity // BLOCK)
        allowed = self.allowed = torch.zeros(self.blocks * BLOCK, dtype=torch.bool, device=device)
        self.count = torch.zeros(1, 1, 1, dtype=torch.int32, device=device)
        self.indices = torch.zeros(1, 1, 1, self.blocks, dtype=torch.int32, device=device)
        self.mask = BlockMask.from_kv_blocks(
            self.count,
            self.indices,
            BLOCK_SIZE=BLOCK,
            mask_mod=lambda b, h, q, kv: allowed[kv],
            seq_lengths=(1, capacity),
            compute_q_blocks=False,
        )

    def update(self, allowed: torch.Tensor) -> None:
        self.allowed[: self.capacity].copy_(allowed)
        active = self.allowed.view(self.blocks, BLOCK).any(dim=-1)
        self.count.view(1).copy_(active.sum())
        self.indices.view(-1).copy_(torch.argsort((~active).to(torch.int8), stable=True))


def flex_decode(q, k, v, mask: BlockMask, kernel_options: dict):
    return flex_attention(q, k, v, block_mask=mask, enable_gqa=q.shape[1] != k.shape[1], kernel_options=kernel_options)


# (name, query heads, kv heads, head dim, capacity, contexts)
SHAPES = [
    ("llama2-7b", 32, 32, 128, 2816, (512, 2048)),
    ("qwen2.5-1.5b", 12, 2, 128, 2816, (512, 2048)),
    ("smollm2-135m", 9, 3, 64, 1280, (512,)),
]
# kernel_options for flex_attention; {} = its defaults (BLOCK_N 64, 1 stage, 2 warps, SPLIT_KV 2 * SMs / kv heads).
OPTIONS = [
    {},
    {"SPLIT_KV": 32},
    {"num_stages": 3, "num_warps": 4},
    {"SPLIT_KV": 32, "num_stages": 2, "num_warps": 4},
    {"SPLIT_KV": 32, "num_stages": 3, "num_warps": 4},
    {"SPLIT_KV": 64, "num_stages": 2, "num_warps": 4},
    {"SPLIT_KV": 16, "num_stages": 3, "num_warps": 4},
    {"SPLIT_KV": 32, "BLOCK_N": 128, "num_stages": 2, "num_warps": 4},
    {"SPLIT_KV": 32, "BLOCK_N": 32, "num_stages": 3, "num_warps": 4},
    {"SPLIT_KV": 128, "num_stages": 1, "num_warps": 4},
]
LAYERS = 32
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def _with_mask(fn, mask: DecodeMask):
    return lambda q, k, v: fn(q, k, v, mask.mask)


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
        mask = DecodeMask(cap, dev)
        additive = torch.zeros(1, 1, 1, cap, device=dev, dtype=torch.bfloat16)
        sdpa = functools.partial(F.scaled_dot_product_attention, attn_mask=additive, enable_gqa=hq != hkv)
        refs = {}
        for ctx in contexts:
            additive.fill_(0).masked_fill_(torch.arange(cap, device=dev) >= ctx, torch.finfo(torch.bfloat16).min)
            refs[ctx] = sdpa(q, k, v)
            us = graph_us(sdpa, q, ks, vs)
            rows.append({"shape": name, "ctx": ctx, "capacity": cap, "kernel": "sdpa (whole capacity)", "us": us,
                         "GBps_visible": 2 * hkv * ctx * dim * 2 / us / 1e3})  # fmt: skip
            log(f"{name} ctx {ctx} sdpa: {us:.1f} us")
        for opts in OPTIONS:
            if time.perf_counter() - T0 > args.budget:
                log("past the budget: stopping")
                return rows
            torch._dynamo.reset()  # one compile per option set, not recompiles against dynamo's limit
            fn = torch.compile(functools.partial(flex_decode, kernel_options=opts), fullgraph=True, dynamic=False)
            for ctx in contexts:
                row = {"shape": name, "ctx": ctx, "capacity": cap, "kernel": f"flex {opts or 'defaults'}"}
                try:
                    mask.update(torch.arange(cap, device=dev) < ctx)
                    step = _with_mask(fn, mask)
                    row["max_err"] = (step(q, k, v) - refs[ctx]).abs().max().item()
                    row["us"] = graph_us(step, q, ks, vs)
                    row["GBps_visible"] = 2 * hkv * ctx * dim * 2 / row["us"] / 1e3
                    log(f"{name} ctx {ctx} {row['kernel']}: {row['us']:.1f} us, err {row['max_err']:.1e}")
                except Exception:
                    row["error"] = traceback.format_exc(limit=2)[-300:]
                    log(f"{row['kernel']} FAILED: {row['error']}")
                rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-out/attn")
    ap.add_argument("--budget", type=float, default=240.0, help="seconds after which no new case starts")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = run(args)
    (out / "results.json").write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    print("| shape | ctx / capacity | kernel | us per layer | GB/s of visible KV |")
    print("|---|---|---|---|---|")
    for r in rows:
        us = f"{r['us']:.1f}" if "us" in r else "failed"
        bw = f"{r['GBps_visible']:.0f}" if "us" in r else "-"
        print(f"| {r['shape']} | {r['ctx']} / {r['capacity']} | {r['kernel']} | {us} | {bw} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
