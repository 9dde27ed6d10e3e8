"""Why plain decoding of a Llama-2-7B shape reaches only ~66% of the memory floor, and what would close the gap.

Random weights, Llama-2-7B shape, bf16. Every timing is a CUDA-graph replay timed with CUDA events
(median of >= 20 replays after a warm-up):

1. copy bandwidth (gpu_bench.copy_bandwidth) and weight bytes -> floor ms per token (also at the
   read-only bandwidth of a 1 GiB sum, and the KV bytes a step reads: the whole cache capacity).
2. bare GEMVs per weight shape (one layer's, the fused QKV / gate+up ones, lm_head): F.linear(x[1, 4096], W)
   over 32 distinct weight copies in one graph (nothing stays in L2); x @ W^T stored transposed; and
   torch.compile(max-autotune-no-cudagraphs) without / with coordinate-descent tuning (run last,
   skipped past --budget seconds).
3. the engine's plain step (SwiftDecoder, RuntimeConfig(mode="graphs"), ctx 512), fuse=False / True.
4. the same with fused projections (one GEMV for q/k/v, one for gate/up per layer, `fuse_projections`),
   after checking one forward's logits against the unfused model.
5. kernels per plain step: torch.profiler over one eager run of the graphed program (GPU busy time per
   kernel kind; replay ms - busy ms ~ launch gaps), kernels seen in a replay, the graph's node count.

Run:   PYTHONPATH=src python3 scripts/gpu_floor_probe.py --out $OUT/floor   [--quick] [--no-compile]
Check: PYTHONPATH=src python3 scripts/gpu_floor_probe.py --cpu-check   (no GPU: the fused-projection
       wrapper on a tiny float32 Llama, logits and engine tokens against the unfused model)
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
from gpu_bench import GREEDY, copy_bandwidth, log, random_llama, time_replays, weight_bytes  # noqa: E402

from skipspec import SwiftConfig, SwiftDecoder  # noqa: E402
from skipspec.runtime import RuntimeConfig  # noqa: E402
from skipspec.runtime.buckets import bucket_for  # noqa: E402
from skipspec.tree import build_tree  # noqa: E402

HID, FF, V, LAYERS, COPIES = 4096, 11008, 32000, 32, 32
SHAPES = {"4096x4096 (q,k,v,o)": (HID, HID), "11008x4096 (gate,up)": (FF, HID), "4096x11008 (down)": (HID, FF),
          "12288x4096 (qkv fused)": (3 * HID, HID), "22016x4096 (gate+up fused)": (2 * FF, HID),
          "32000x4096 (lm_head)": (V, HID)}  # fmt: skip


class _Stash:
    """The whole output of the last fused projection (variant 4), for the siblings called after it."""

    out: torch.Tensor | None = None


class FusedFirst(nn.Module):
    """Replaces the first projection of a group (q_proj, gate_proj): one F.linear with the concatenated
    weight; returns its own slice and stashes the whole output for the siblings."""

    def __init__(self, linears: list[nn.Linear], stash: _Stash) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.cat([m.weight.detach() for m in linears]), requires_grad=False)
        biases = [m.bias for m in linears]
        assert all(b is None for b in biases) or all(b is not None for b in biases), "mixed biases"
        self.bias = None if biases[0] is None else nn.Parameter(torch.cat([b.detach() for b in biases]), False)
        self.stop, self.stash = linears[0].out_features, stash

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        self.stash.out = out
        return out[..., : self.stop]


class FusedSlice(nn.Module):
    """Replaces a later sibling (k_proj, v_proj, up_proj): its slice of the stashed output. The last one
    clears the stash, so a compiled region ends with the stash as it began."""

    def __init__(self, stash: _Stash, start: int, stop: int, last: bool) -> None:
        super().__init__()
        self.stash, self.start, self.stop, self.last = stash, start, stop, last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stash.out
        if self.last:
            self.stash.out = None
        return out[..., self.start : self.stop]


@torch.no_grad()
def fuse_projections(model: nn.Module) -> None:
    """In place: q/k/v and gate/up of every layer become one GEMV each (the same weight bytes in all).
    Relies on the Llama modules calling q, k, v (and gate, up) in that order, as they do."""
    stash = _Stash()
    for layer in model.model.layers:
        for mod, names in ((layer.self_attn, ("q_proj", "k_proj", "v_proj")), (layer.mlp, ("gate_proj", "up_proj"))):
            linears = [getattr(mod, n) for n in names]
            setattr(mod, names[0], FusedFirst(linears, stash))
            start = linears[0].out_features
            for i, name in enumerate(names[1:], 1):
                setattr(mod, name, FusedSlice(stash, start, start + linears[i].out_features, i == len(names) - 1))
                start += linears[i].out_features


@torch.inference_mode()
def logits_of(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits.float()


def cpu_check() -> dict:
    """The wrapper on a tiny float32 Llama (GQA: 4 heads, 2 KV heads): HF logits, and engine tokens (static
    runtime, plain and SWIFT, plain and compiled sublayers), must equal the unfused model's."""
    model = random_llama("tiny", torch.device("cpu"), torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    cfg = SwiftConfig(optimize=False, max_draft_tokens=6, topk=4)

    def tokens(method: str, fuse: bool) -> list[int]:
        dec = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=RuntimeConfig(mode="static", fuse=fuse))
        out = dec.generate(ids[0].tolist(), 24, method=method).tokens
        assert dec.fast.fused == fuse, "the compiled sublayers fell back to the plain ones"
        return out

    ref, ref_bytes, ref_tok = logits_of(model, ids), weight_bytes(model), {m: tokens(m, False) for m in ("ar", "swift")}
    fuse_projections(model)
    res = {"max_abs_diff": (logits_of(model, ids) - ref).abs().max().item()}
    res["weight_bytes_equal"] = weight_bytes(model) == ref_bytes
    for m in ("ar", "swift"):
        res[f"engine_{m}_tokens_equal"] = tokens(m, False) == ref_tok[m]
        try:  # compiled sublayers (TorchInductor on the CPU): dynamo must trace through the stash
            res[f"engine_{m}_compiled_tokens_equal"] = tokens(m, True) == ref_tok[m]
        except Exception:
            log(f"compiled CPU check ({m}) FAILED:\n{traceback.format_exc()}")
    res["ok"] = res["max_abs_diff"] < 1e-5 and all(v for k, v in res.items() if k.endswith("equal"))
    log(json.dumps(res))
    return res


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


def engine_step(model: nn.Module, fuse: bool, ctx: int, reps: int, dev: torch.device) -> dict:
    """The engine's plain step (a verify of the root alone), set up as gpu_bench.cost_model does."""
    t = time.perf_counter()
    cfg = SwiftConfig(optimize=False, max_draft_tokens=25, topk=10)
    dec = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=RuntimeConfig(mode="graphs", fuse=fuse))
    rt = dec.fast
    prompt = torch.randint(0, model.config.vocab_size, (ctx,), generator=torch.Generator().manual_seed(ctx)).tolist()
    rt.reserve(ctx, 400, 0, False)
    rt.prefill(tuple(prompt), GREEDY, torch.Generator(device=dev))
    layout = build_tree(())
    bucket = bucket_for(layout.size, rt.tree_buckets)
    rt.upload_tree(layout, ctx, bucket)
    step = rt.verify_graph(bucket, GREEDY)
    res = {"ms": time_replays(step, dev, reps), "compiled_sublayers_on": rt.fused, "capacity": rt.cache.capacity,
           "kv_bytes": rt.cache.data.numel() * rt.cache.data.element_size()}  # fmt: skip
    try:
        res.update(profile_step(step))
    except Exception:
        log(f"profile FAILED:\n{traceback.format_exc()}")
    res["setup_s"] = time.perf_counter() - t
    rt.release()
    log(f"  {res['ms']:.3f} ms; {res.get('kernels_eager')} kernels, busy {res.get('busy_ms', 0):.2f} ms")
    return res


def run(args, out: Path) -> dict:
    dev, reps = torch.device("cuda"), 20 if args.quick else 50
    R: dict = {"env": {"gpu": torch.cuda.get_device_name(dev), "torch": torch.__version__, "argv": sys.argv[1:]},
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
    for shape, s in SHAPES.items():
        for v in ("eager", "eager W^T stored"):
            R["gemv"].setdefault(v, {})[shape] = attempt(f"gemv {shape} {v}", gemv_ms, s, v, reps, dev)
    model = attempt("build llama2-7b", random_llama, "llama2-7b", dev, torch.bfloat16)
    if model is not None:
        R["weight_bytes"] = weight_bytes(model)
        R["embed_bytes"] = model.model.embed_tokens.weight.numel() * 2
        for fuse in (False, True):
            R["engine"][f"plain fuse={fuse}"] = attempt(f"engine fuse={fuse}", engine_step, model, fuse, 512, reps, dev)
        ids = torch.randint(0, V, (1, 16), device=dev, generator=torch.Generator(device=dev).manual_seed(0))

        def fuse_and_check() -> dict:
            ref = logits_of(model, ids)
            fuse_projections(model)
            new = logits_of(model, ids)
            c = {"max_abs_diff": (new - ref).abs().max().item(), "max_abs_logit": ref.abs().max().item(),
                 "argmax_agree": (new.argmax(-1) == ref.argmax(-1)).float().mean().item(),
                 "weight_bytes_after": weight_bytes(model)}  # fmt: skip
            c["ok_bf16"] = c["max_abs_diff"] <= 2e-2 * c["max_abs_logit"] + 1e-2  # a heuristic bf16 tolerance
            log(f"  fused projections vs unfused, logits of one forward: {json.dumps(c)}")
            return c

        R["fused_projection_check"] = attempt("fuse projections + logits check", fuse_and_check)
        if R["fused_projection_check"] is not None:
            for fuse in (False, True):
                name = f"fused-proj fuse={fuse}"
                R["engine"][name] = attempt(f"engine {name}", engine_step, model, fuse, 512, reps, dev)
        del model
    if not args.no_compile:
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
    kv = next((e["kv_bytes"] for e in R["engine"].values() if e), None)
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
    for name, e in R["engine"].items():
        if e:
            note = (f"{e.get('kernels_eager', '?')} kernels, {e.get('graph_nodes', '?')} graph nodes, GPU busy "
                    f"{e.get('busy_ms', float('nan')):.2f} ms, compiled={e['compiled_sublayers_on']}, "
                    f"KV {e['kv_bytes'] / 1e9:.2f} GB")  # fmt: skip
            rows.append(f"| engine {name} (ctx 512) | {e['ms']:.3f} | {pct(e['ms'])} | {note} |")
    c = R.get("fused_projection_check")
    if c:
        rows.append(f"| fused-proj logits check: max abs diff {c['max_abs_diff']:.3g} (max logit {c['max_abs_logit']:.3g}), "
                    f"argmax agree {c['argmax_agree']:.0%}, ok={c['ok_bf16']} | | | |")  # fmt: skip
    return "\n".join(["| variant | ms/token | % of floor | note |", "|---|---|---|---|", *rows])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-out/floor")
    ap.add_argument("--quick", action="store_true", help="20 replays; compiled GEMVs of three shapes only")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile GEMVs")
    ap.add_argument("--budget", type=float, default=195.0, help="seconds after start past which compiled GEMVs are skipped")
    ap.add_argument("--cpu-check", action="store_true", help="only check the fused-projection wrapper on the CPU")
    args = ap.parse_args()
    if args.cpu_check:
        return 0 if cpu_check()["ok"] else 1
    if not torch.cuda.is_available():
        log("no CUDA device: only --cpu-check runs here")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch._logging.set_logs(recompiles=True)  # a per-layer recompile of the fused sublayers would show here
    R = run(args, out)
    md = table(R)
    (out / "results.md").write_text(md + "\n")
    log(f"\nfinished in {time.perf_counter() - T0:.0f} s; failed: {R.get('failed', [])}\n")
    log(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
