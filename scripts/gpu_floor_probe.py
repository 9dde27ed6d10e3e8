"""Where a plain decode step spends its time, against the memory floor.

Random weights of a Llama-2-7B shape (`--shape`: another of `gpu_bench.LLAMA_SHAPES`), bf16.
Every timing is a CUDA-graph replay timed with CUDA events (median of >= 20 replays after a warm-up):

1. copy bandwidth (gpu_bench.copy_bandwidth) and weight bytes -> floor ms per token (also at the
   read-only bandwidth of a 1 GiB sum, and the KV bytes a step reads: the whole cache capacity).
2. bare GEMVs per weight shape (one layer's, the grouped QKV / gate+up ones, lm_head): F.linear(x[1, 4096], W)
   over 32 distinct weight copies in one graph (nothing stays in L2), and x @ W^T stored transposed
   (--no-gemv skips); --compile-gemv adds torch.compile(max-autotune-no-cudagraphs) GEMVs.
3. the engine's plain step at ctx 512 and its 16-node verify / plain ratio at ctx 2048, per runtime
   variant (`VARIANTS`: compiled sublayers or not, grouped projections, column-major weights,
   eager tree attention), each on the same weights given back their own layout first.
4. kernels per plain step: torch.profiler over one eager run of the graphed program (GPU busy time per
   kernel kind; replay ms - busy ms ~ launch gaps), kernels seen in a replay, the graph's node count.

Run:   PYTHONPATH=src python3 scripts/gpu_floor_probe.py --out $OUT/floor [--quick] [--no-gemv] [--variants a,b]
       [--shape qwen2.5-1.5b-shape]
Writes results.json and results.md under --out; prints a Markdown table last.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import sys
import time
import traceback
from pathlib import Path

T0 = time.perf_counter()
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import (  # noqa: E402
    GREEDY,
    LLAMA_SHAPES,
    copy_bandwidth,
    log,
    random_llama,
    swift_tree,
    time_replays,
    tree_widths,
    weight_bytes,
)

from skipspec import SwiftConfig, SwiftDecoder  # noqa: E402
from skipspec.runtime import RuntimeConfig  # noqa: E402
from skipspec.runtime.buckets import bucket_for  # noqa: E402
from skipspec.runtime.weights import unpack_weights  # noqa: E402

HID, FF, V, LAYERS, COPIES = 4096, 11008, 32000, 32, 32
SHAPES = {"4096x4096 (q,k,v,o)": (HID, HID), "11008x4096 (gate,up)": (FF, HID), "4096x11008 (down)": (HID, FF),
          "12288x4096 (qkv fused)": (3 * HID, HID), "22016x4096 (gate+up fused)": (2 * FF, HID),
          "32000x4096 (lm_head)": (V, HID)}  # fmt: skip


def graph_ms(fn, reps: int, dev: torch.device) -> float:
    """Median ms of one replay of a graph running `fn()` once (run eagerly, then on a side stream, first)."""
    fn()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return time_replays(g.replay, dev, reps)


def gemv_ms(shape: tuple[int, int], variant: str, reps: int, dev: torch.device) -> float:
    """Milliseconds of ONE GEMV of `shape` (out, in), from a graph over COPIES distinct weights."""
    out_f, in_f = shape
    x = torch.randn(1, in_f, device=dev, dtype=torch.bfloat16)
    fn, dims = (torch.mm, (in_f, out_f)) if variant == "eager W^T stored" else (F.linear, (out_f, in_f))  # mm: x @ Wt
    ws = [torch.empty(dims, device=dev, dtype=torch.bfloat16).normal_(0, 0.02) for _ in range(COPIES)]
    if variant.startswith("max-autotune"):
        torch._dynamo.reset()
        fn = torch.compile(lambda a, w: F.linear(a, w), mode="max-autotune-no-cudagraphs", dynamic=False)
    return graph_ms(lambda: [fn(x, w) for w in ws], reps, dev) / COPIES


def read_bandwidth(dev: torch.device, reps: int) -> float:
    """Bytes per second read by a sum over 1 GiB (a read-only stream, unlike the copy's read + write)."""
    x = torch.empty(2**29, device=dev, dtype=torch.bfloat16).normal_()
    out = torch.empty((), device=dev, dtype=torch.float32)
    return 2**30 / (graph_ms(lambda: torch.sum(x, 0, dtype=torch.float32, out=out), reps, dev) / 1e3)


def kind_of(name: str) -> str:
    n = name.lower()
    if "memcpy" in n or "memset" in n:
        return "copy/set"
    if any(k in n for k in ("gemv", "gemm", "nvjet", "xmma", "cutlass", "splitk", "_mm", "tem_fused")):
        return "matmul"
    if any(k in n for k in ("attention", "fmha", "flash", "attn")):
        return "attention"
    return "triton other" if n.startswith("triton") else "other"


def profile_step(step) -> dict:
    """Kernels of one eager run of the graphed program, GPU busy ms per kind; ops seen in a replay; graph nodes."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    def gpu_events(fn) -> list:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        return [e for e in prof.events() if e.device_type == DeviceType.CUDA]

    def eager():
        with torch.inference_mode():
            step._program()

    eager()
    torch.cuda.synchronize()
    events = gpu_events(eager)
    res: dict = {"kernels_eager": sum(kind_of(e.name) != "copy/set" for e in events), "gpu_ops_eager": len(events)}
    by_kind: dict[str, float] = {}
    by_name: dict[str, float] = {}
    for e in events:
        ms = (e.time_range.end - e.time_range.start) / 1e3
        by_kind[kind_of(e.name)] = by_kind.get(kind_of(e.name), 0.0) + ms
        by_name[e.name[:100]] = by_name.get(e.name[:100], 0.0) + ms
    res["busy_ms"] = sum(by_kind.values())
    res["busy_ms_by_kind"] = dict(sorted(by_kind.items(), key=lambda kv: -kv[1]))
    res["top_kernels_ms"] = dict(sorted(by_name.items(), key=lambda kv: -kv[1])[:12])
    try:
        res["gpu_ops_seen_in_replay"] = len(gpu_events(step))
    except Exception:
        log(f"profiling a replay FAILED:\n{traceback.format_exc()}")
    try:  # node count of a fresh capture of the same program (keep_graph + the driver API)
        g = torch.cuda.CUDAGraph(keep_graph=True)
        with torch.inference_mode(), torch.cuda.graph(g):
            step._program()
        n = ctypes.c_size_t(0)
        rc = ctypes.CDLL("libcuda.so.1").cuGraphGetNodes(ctypes.c_void_p(g.raw_cuda_graph()), None, ctypes.byref(n))
        res["graph_nodes"] = n.value if rc == 0 else f"cuGraphGetNodes error {rc}"
    except Exception:
        log(f"graph node count FAILED:\n{traceback.format_exc()}")
    return res


def engine_step(
    model: nn.Module, runtime: RuntimeConfig, ctx: int, nodes: tuple[int, ...], reps: int, dev: torch.device,
    profile: bool,
) -> dict:
    """The engine's plain step and verify steps of trees of `nodes` nodes after a `ctx`-token prompt,
    set up as gpu_bench.cost_model does; the model's weights are first given back their own layout."""
    t = time.perf_counter()
    unpack_weights(model)
    cfg = SwiftConfig(optimize=False, max_draft_tokens=25, topk=10)
    dec = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=runtime)
    rt = dec.executor
    prompt = torch.randint(0, model.config.vocab_size, (ctx,), generator=torch.Generator().manual_seed(ctx)).tolist()
    rt.prefill(prompt, 400, 0, GREEDY, seed=0)
    res = {"tag": rt.tag, "capacity": rt.cache.capacity, "kv_bytes": rt.cache.data.numel() * rt.cache.data.element_size()}
    for n in sorted({1, *nodes}):
        tree = swift_tree(tree_widths(n, cfg.topk))
        bucket = bucket_for(tree.size + 1, rt.tree_buckets)
        rt.stage_tree(tree, ctx, bucket)
        step = rt.verify_graph(bucket)
        res["ms" if n == 1 else f"verify{n}_ms"] = time_replays(step, dev, reps)
        if profile:
            try:
                res.update({("" if n == 1 else f"verify{n}_") + k: v for k, v in profile_step(step).items()})
            except Exception:
                log(f"profile FAILED:\n{traceback.format_exc()}")
    res["compiled_sublayers_on"] = rt.fused
    res["setup_s"] = time.perf_counter() - t
    rt.release()
    note = "".join(f", verify{n}/plain {res[f'verify{n}_ms'] / res['ms']:.3f}" for n in nodes if n > 1)
    log(
        f"  {rt.tag} ctx {ctx}: {res['ms']:.3f} ms{note}; {res.get('kernels_eager', '-')} kernels, busy "
        f"{res.get('busy_ms', float('nan')):.2f} ms; setup {res['setup_s']:.0f} s"
    )
    return res


# Engine variants, each on the same random weights: compiled sublayers with the model's own
# projections and layout, each re-layout alone, both, with eager tree attention, with skipspec's
# decode kernel for one-token steps, for trees too, with skipspec's linear kernel (the default for
# this shape) or cuBLAS on column-major weights, and uncompiled. (FlexAttention for one-token
# steps was tried in commit a1342f8; cuDNN switched off by flag was void, the compiled sublayers
# call it whatever the flag.)
_OFF = dict(group_projections=False, transpose_weights=False, eager_tree_attention=False, decode_kernel=False,
            tree_kernel=False, linear_kernel=False)  # fmt: skip
_SDPA = dict(decode_kernel=False, tree_kernel=False, linear_kernel=False)
VARIANTS = {
    "fused": RuntimeConfig(mode="graphs", **_OFF),
    "fused+grouped+decode-kernel+tree-kernel+linear-kernel (default)": RuntimeConfig(mode="graphs"),
    "fused+grouped+colmajor+decode-kernel+tree-kernel": RuntimeConfig(mode="graphs", linear_kernel=False),
    "fused+grouped+colmajor+eager-tree-attn+decode-kernel": RuntimeConfig(
        mode="graphs", tree_kernel=False, linear_kernel=False
    ),
    "fused+grouped+colmajor+eager-tree-attn": RuntimeConfig(mode="graphs", **_SDPA),
    "fused+grouped+colmajor": RuntimeConfig(mode="graphs", eager_tree_attention=False, **_SDPA),
    "fused+colmajor": RuntimeConfig(mode="graphs", **{**_OFF, "transpose_weights": True}),
    "fused+grouped": RuntimeConfig(mode="graphs", **{**_OFF, "group_projections": True}),
    "unfused+grouped+colmajor": RuntimeConfig(mode="graphs", fuse=False, linear_kernel=False),
}


def run(args, out: Path) -> dict:
    dev, reps = torch.device("cuda"), 20 if args.quick else 50
    R: dict = {"env": {"gpu": torch.cuda.get_device_name(dev), "torch": torch.__version__, "argv": sys.argv[1:],
                       "shape": args.shape},
               "gemv": {}, "engine": {}}  # fmt: skip

    def attempt(name: str, fn, *a):
        log(f"== {name} ({time.perf_counter() - T0:.0f} s)")
        try:
            return fn(*a)
        except Exception:
            log(f"{name} FAILED:\n{traceback.format_exc()}")
            R.setdefault("failed", []).append(name)
        finally:
            gc.collect()
            torch.cuda.empty_cache()
            (out / "results.json").write_text(json.dumps(R, indent=1, default=str))

    R["copy_Bps"] = attempt("copy bandwidth", copy_bandwidth, dev)
    R["read_Bps"] = attempt("read bandwidth", read_bandwidth, dev, reps)
    # The bare GEMVs are the 7B's matrices (`SHAPES`): beside another shape's floor they would mislead.
    seven_b = args.shape == "llama2-7b"
    if not seven_b and (not args.no_gemv or args.compile_gemv):
        log(f"bare GEMVs skipped: they time the Llama-2-7B's matrices, not {args.shape}'s")
    for shape, s in SHAPES.items() if seven_b and not args.no_gemv else ():
        for v in ("eager", "eager W^T stored"):
            R["gemv"].setdefault(v, {})[shape] = attempt(f"gemv {shape} {v}", gemv_ms, s, v, reps, dev)
    model = attempt(f"build {args.shape}", random_llama, args.shape, dev, torch.bfloat16)
    if model is not None:
        R["weight_bytes"] = weight_bytes(model)
        R["embed_bytes"] = model.model.embed_tokens.weight.numel() * 2
        wanted = args.variants.split(",") if args.variants else list(VARIANTS)
        for name, runtime in VARIANTS.items():
            if name.removesuffix(" (default)") not in wanted and name not in wanted:
                continue
            if time.perf_counter() - T0 > args.budget:
                log(f"skipping engine {name}: past the {args.budget:.0f} s budget")
                continue
            per_ctx = R["engine"].setdefault(name, {})
            per_ctx[512] = attempt(f"engine {name} ctx 512", engine_step, model, runtime, 512, (1,), reps, dev, True)
            per_ctx[2048] = attempt(
                f"engine {name} ctx 2048", engine_step, model, runtime, 2048, (16, 64), reps, dev, args.profile_long
            )
        del model
    if args.compile_gemv and seven_b:
        import torch._inductor.config as inductor

        for v, coord in (("max-autotune", False), ("max-autotune + coord-descent", True)):
            inductor.coordinate_descent_tuning = coord
            for shape, s in list(SHAPES.items())[: 3 if args.quick else None]:
                if time.perf_counter() - T0 > args.budget:
                    log(f"skipping gemv {shape} {v}: past the {args.budget:.0f} s budget")
                    continue
                R["gemv"].setdefault(v, {})[shape] = attempt(f"gemv {shape} {v}", gemv_ms, s, v, reps, dev)
        inductor.coordinate_descent_tuning = False
    R["elapsed_s"] = time.perf_counter() - T0
    (out / "results.json").write_text(json.dumps(R, indent=1, default=str))
    return R


def table(R: dict) -> str:
    bw = R.get("copy_Bps") or float("nan")
    wb = R.get("weight_bytes") or 2 * (LAYERS * (4 * HID * HID + 3 * HID * FF) + 2 * V * HID)
    floor = wb / bw * 1e3
    pct = lambda ms: f"{floor / ms:.0%}" if ms else "-"  # noqa: E731
    rows = [f"| floor: {wb / 1e9:.2f} GB weights / {bw / 1e12:.2f} TB/s copy bandwidth | {floor:.3f} | 100% | |"]
    if R.get("read_Bps"):
        ms = wb / R["read_Bps"] * 1e3
        rows.append(f"| floor at read-only bandwidth ({R['read_Bps'] / 1e12:.2f} TB/s, a sum) | {ms:.3f} | {pct(ms)} | |")
    kv = next((c["kv_bytes"] for e in R["engine"].values() for k, c in e.items() if c and str(k) == "512"), None)
    if kv and R.get("embed_bytes"):  # the embedding table is not read per token; the whole KV cache is
        ms = (wb - R["embed_bytes"] + kv) / bw * 1e3
        rows.append(f"| floor of the bytes a ctx-512 step reads (no embedding table, + {kv / 1e9:.2f} GB KV) | {ms:.3f} | "
                    f"{pct(ms)} | |")  # fmt: skip
    for v, per in R["gemv"].items():
        for shape, ms in per.items():
            if ms:
                nbytes = SHAPES[shape][0] * SHAPES[shape][1] * 2
                gbps = f"{nbytes / ms / 1e6:.0f} GB/s"
                rows.append(f"| gemv {shape}, {v} | {ms:.4f} (one) | {nbytes / bw * 1e3 / ms:.0%} | {gbps} |")
        t = {s.split()[0]: ms for s, ms in per.items() if ms}
        if all(k in t for k in ("4096x4096", "11008x4096", "4096x11008", "32000x4096")):
            ms = LAYERS * (4 * t["4096x4096"] + 2 * t["11008x4096"] + t["4096x11008"]) + t["32000x4096"]
            rows.append(f"| sum of a step's {v} GEMVs, unfused projections | {ms:.3f} | {pct(ms)} | GEMVs only |")
            if "12288x4096" in t and "22016x4096" in t:
                ms = LAYERS * (t["12288x4096"] + t["4096x4096"] + t["22016x4096"] + t["4096x11008"]) + t["32000x4096"]
                rows.append(f"| sum of a step's {v} GEMVs, fused projections | {ms:.3f} | {pct(ms)} | GEMVs only |")
    for name, per_ctx in R["engine"].items():
        e, long = per_ctx.get(512) or per_ctx.get("512"), per_ctx.get(2048) or per_ctx.get("2048")
        if e:
            note = (f"{e.get('kernels_eager', '?')} kernels, GPU busy {e.get('busy_ms', float('nan')):.2f} ms, "
                    f"compiled={e['compiled_sublayers_on']}, KV {e['kv_bytes'] / 1e9:.2f} GB")  # fmt: skip
            rows.append(f"| engine {name}: plain step, ctx 512 | {e['ms']:.3f} | {pct(e['ms'])} | {note} |")
        for n in (16, 64):
            if long and f"verify{n}_ms" in long:
                ratio = long[f"verify{n}_ms"] / long["ms"]
                rows.append(f"| engine {name}: ctx 2048, plain / {n}-node verify | {long['ms']:.3f} / "
                            f"{long[f'verify{n}_ms']:.3f} | {pct(long['ms'])} | verify{n}/plain {ratio:.3f} |")  # fmt: skip
    return "\n".join(["| variant | ms/token | % of floor | note |", "|---|---|---|---|", *rows])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-out/floor")
    ap.add_argument("--quick", action="store_true", help="20 replays; compiled GEMVs of three shapes only")
    ap.add_argument("--no-gemv", action="store_true", help="skip the bare GEMV timings")
    ap.add_argument("--compile-gemv", action="store_true", help="also time GEMVs compiled with max-autotune")
    ap.add_argument("--variants", default=None, help="engine variants to run (comma list of VARIANTS names)")
    ap.add_argument("--shape", default="llama2-7b", choices=list(LLAMA_SHAPES),
                    help="the random model's shape (the bare GEMVs, the 7B's matrices, run for llama2-7b only)")
    ap.add_argument("--profile-long", action="store_true", help="also profile the ctx-2048 steps (slower)")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds after start past which nothing new starts")
    args = ap.parse_args()
    torch._logging.set_logs(recompiles=True)  # a per-layer recompile of the fused sublayers would show here
    return run_probe(args, run, table)


def run_probe(args, run, table) -> int:
    """A probe's main: `run(args, out)` into `--out`, then its Markdown `table(results)` written and printed last."""
    if not torch.cuda.is_available():
        log("no CUDA device: this probe times CUDA graphs")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    R = run(args, out)
    md = table(R)
    (out / "results.md").write_text(md + "\n")
    log(f"\nfinished in {time.perf_counter() - T0:.0f} s; failed: {R.get('failed', [])}\n")
    log(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
