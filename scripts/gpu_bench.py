"""The GPU benchmark of the fast path (issues #5 and #4's GPU part), in one run.

1. Environment and the device's copy bandwidth (bytes read + written per second).
2. SmolLM2-135M-Instruct, bf16, Spec-Bench dev prompts, greedy: transformers `generate`, this
   engine's plain decoding and SWIFT, eager and CUDA graphs (and graphs + fused sublayers),
   tokens/s side by side, and how often bf16 outputs equal plain bf16 decoding.
3. Random-weight Llama-2-7B and -13B shapes, bf16: step latencies (plain, draft at skip ratios,
   verify per tree size) at two contexts, plain decoding against the memory-bandwidth floor, and
   the SWIFT speedup these costs allow at the acceptance the paper reports.

Writes results.json and results.md under --out and prints a short table last.
Runs on a CPU too (`--device cpu --tiny`: static mode, tiny shapes) to check the script itself.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from skipspec import SkipSet, SwiftConfig, SwiftDecoder  # noqa: E402
from skipspec.config import SamplingParams  # noqa: E402
from skipspec.runtime import RuntimeConfig, TreeInput  # noqa: E402
from skipspec.runtime.buckets import bucket_for  # noqa: E402
from skipspec.tree import build_tree  # noqa: E402

GREEDY = SamplingParams()
# The acceptance the SWIFT paper reports (Xia et al. 2024, arXiv 2410.06916): draft acceptance
# 90-100% at its default skip ratio 0.45, speedups 1.3-1.6x (LLaMA-2-13B .. 70B, A6000 GPUs).
PAPER_ACCEPTANCE = (0.9, 0.95, 1.0)
PAPER_SKIP_RATIO = 0.45
SKIP_RATIOS = (0.2, 0.3, 0.45, 0.6)
LLAMA_SHAPES = {
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000),
    "llama2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                       num_key_value_heads=40, vocab_size=32000),
    "smollm2-shape": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                          num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
    # Qwen2.5-0.5B/1.5B's and Gemma-3-270M's matrices (without Qwen's q/k/v biases, Gemma's extra norms)
    "qwen2.5-0.5b-shape": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                               num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b-shape": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                               num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "gemma3-270m-shape": dict(hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
                              num_key_value_heads=1, head_dim=256, vocab_size=262144, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=97),
}  # fmt: skip


def log(*args) -> None:
    print(*args, flush=True)


# -- measuring -------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_replays(step, device: torch.device, n: int, before=None) -> float:
    """Median milliseconds of one replay of `step` (a StepGraph), replays back to back."""
    if device.type != "cuda":
        times = []
        for _ in range(n):
            if before:
                before()
            t = time.perf_counter()
            step()
            times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)
    if before:
        before()
    step()  # warm
    sync(device)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for s, e in zip(starts, ends):
        if before:
            before()
        s.record()
        step()
        e.record()
    sync(device)
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large device-to-device copy, counting bytes read plus bytes written."""
    if device.type != "cuda":
        return float("nan")
    x = torch.randn(2**29, device=device, dtype=torch.bfloat16)  # 1 GiB
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    sync(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        y.copy_(x)
    end.record()
    sync(device)
    seconds = start.elapsed_time(end) / 1e3 / 20
    del x, y
    return 2 * 2**30 / seconds


@torch.inference_mode()
def stage_draft(inp, committed: int) -> None:
    """Point the draft step at the first slot past the context (graph replays advance it)."""
    inp.pos.fill_(committed)


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def random_llama(shape: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A Llama model of a known shape with random weights, built on the device (no checkpoint)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**LLAMA_SHAPES[shape], max_position_embeddings=4096)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    with torch.no_grad():  # explicit values: never time on whatever the allocator held
        for p in model.parameters():
            p.fill_(1.0) if p.dim() == 1 else p.normal_(0.0, 0.02)
    return model.eval()


def spread_skip(num_layers: int, ratio: float) -> SkipSet:
    """int(2 (L-2) ratio) sublayers, half attention and half MLP, spread evenly over the inner layers."""
    inner = num_layers - 2
    k = int(2 * inner * ratio)
    n_attn, n_mlp = k // 2, k - k // 2

    def spread(count: int, offset: float) -> list[int]:
        return sorted({1 + min(inner - 1, int((i + offset) * inner / count)) for i in range(count)}) if count else []

    return SkipSet.of(spread(n_attn, 0.25), spread(n_mlp, 0.75))


def skipped_weight_fraction(model: torch.nn.Module, skip: SkipSet) -> float:
    layers = model.model.layers
    skipped = sum(weight_bytes(layers[i].self_attn) + weight_bytes(layers[i].input_layernorm) for i in skip.attn)
    skipped += sum(weight_bytes(layers[i].mlp) + weight_bytes(layers[i].post_attention_layernorm) for i in skip.mlp)
    return skipped / weight_bytes(model)


def tree_widths(nodes: int, topk: int) -> tuple[int, ...]:
    """Widths of a SWIFT tree with exactly `nodes` nodes (root included), as wide as topk allows."""
    widths, left = [], nodes - 1
    while left > 0:
        widths.append(min(topk, left))
        left -= widths[-1]
    return tuple(widths)


def swift_tree(widths: tuple[int, ...]) -> TreeInput:
    """SWIFT's tree of these widths as a verify step takes it (the tokens do not change its cost)."""
    parents = [p - 1 for p in build_tree(widths).layout.parents[1:]]
    return TreeInput(([0] * len(parents),), (parents,), len(parents))


# -- section 3: cost model on random-weight Llama-2 shapes -----------------------------------------------


def cost_model(
    shape: str, device, dtype, contexts, tree_sizes, bandwidth: float, fuse: bool, quick: bool,
    linear_kernel: bool | None = None,
) -> dict:
    log(f"\n== cost model: {shape} (random weights, {dtype}), contexts {contexts}, fuse={fuse}")
    t0 = time.perf_counter()
    model = random_llama(shape, device, dtype)
    layers = model.config.num_hidden_layers
    wbytes = weight_bytes(model)
    floor = bandwidth / wbytes
    log(f"built in {time.perf_counter() - t0:.1f} s; weights {wbytes / 1e9:.2f} GB; memory floor {floor:.1f} tokens/s")
    cfg = SwiftConfig(optimize=False, max_draft_tokens=25, topk=10)
    mode = "graphs" if device.type == "cuda" else "static"
    runtime = RuntimeConfig(mode=mode, fuse=fuse, linear_kernel=linear_kernel)
    dec = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=runtime)
    rt = dec.executor
    out = {
        "shape": shape,
        "dtype": str(dtype).replace("torch.", ""),
        "weight_bytes": wbytes,
        "floor_tokens_per_s": floor,
        "fuse": fuse,
        "contexts": {},
    }
    skips = {r: spread_skip(layers, r) for r in SKIP_RATIOS}
    reps = 5 if quick else 20
    for ctx in contexts:
        prompt = torch.randint(0, model.config.vocab_size, (ctx,), generator=torch.Generator().manual_seed(ctx)).tolist()
        t = time.perf_counter()
        rt.prefill(prompt, 400, 0, GREEDY, seed=0)
        committed = ctx
        res = {"verify_ms": {}, "draft_ms": {}, "draft_ratio": {}, "skipped_weight_fraction": {}}
        for n in tree_sizes:
            tree = swift_tree(tree_widths(n, cfg.topk))
            bucket = bucket_for(tree.size + 1, rt.tree_buckets)
            rt.stage_tree(tree, committed, bucket)
            step = rt.verify_graph(bucket)
            res["verify_ms"][n] = time_replays(step, device, reps)
        plain = res["verify_ms"][1]
        inp = rt.inputs

        rewind = functools.partial(stage_draft, inp, committed)

        for r, skip in skips.items():
            rewind()  # stage the inputs before a first-use capture runs the step
            step = rt.draft_graph(skip)
            res["draft_ms"][r] = time_replays(step, device, reps, before=rewind)
            res["draft_ratio"][r] = res["draft_ms"][r] / plain
            res["skipped_weight_fraction"][r] = skipped_weight_fraction(model, skip)
        res["setup_s"] = time.perf_counter() - t
        # End to end: plain decoding through the engine (host loop, one sync per token).
        new = 64 if quick else 256
        r_ar = dec.generate(prompt, new, method="ar")
        res["plain_tokens_per_s"] = r_ar.stats["decode_tokens_per_s"]
        res["plain_vs_floor"] = res["plain_tokens_per_s"] / floor
        res["step_vs_floor"] = (1e3 / plain) / floor
        out["contexts"][ctx] = res
        log(
            f"ctx {ctx}: plain step {plain:.2f} ms ({res['step_vs_floor']:.0%} of floor), end-to-end "
            f"{res['plain_tokens_per_s']:.1f} tokens/s ({res['plain_vs_floor']:.0%} of floor)"
        )
        log("  verify ms by nodes: " + ", ".join(f"{n}:{v:.2f}" for n, v in res["verify_ms"].items()))
        log(
            "  draft/plain by skip ratio: "
            + ", ".join(
                f"{r}:{res['draft_ratio'][r]:.2f} (weights skipped {res['skipped_weight_fraction'][r]:.2f})"
                for r in SKIP_RATIOS
            )
        )
    out["speedup_model"] = speedup_model(out["contexts"][contexts[0]], cfg.topk)
    out["captures"] = rt.captures
    out["capture_time_s"] = rt.capture_time
    del dec, rt, model
    torch.cuda.empty_cache() if device.type == "cuda" else None
    return out


def speedup_model(ctx_res: dict, topk: int) -> dict:
    """Expected SWIFT speedup over plain decoding from measured step costs and the paper's acceptance.

    Chain of D drafts, each accepted with probability a given its predecessors (the standard
    i.i.d. model): tokens per step = 1 + a + a^2 + ... + a^D. Cost per step = D drafts at the
    paper's skip ratio + one verify of the tree: the chain plus two siblings per depth (width 3,
    what SWIFT's schedule gives confident drafts), i.e. the measured verify of the smallest
    measured size >= 3D + 1 (the largest measured, 64 nodes, beyond that). D is chosen per
    acceptance, up to SWIFT's 25.
    """
    plain = ctx_res["verify_ms"][1] if 1 in ctx_res["verify_ms"] else ctx_res["verify_ms"]["1"]
    verify_ms = {int(k): v for k, v in ctx_res["verify_ms"].items()}
    draft = {float(k): v for k, v in ctx_res["draft_ms"].items()}[PAPER_SKIP_RATIO]
    sizes = sorted(verify_ms)
    rows = []
    for a in PAPER_ACCEPTANCE:
        best = None
        for d in range(1, 26):
            tokens = sum(a**k for k in range(d + 1))
            nodes = min(1 + 3 * d, sizes[-1])
            verify = verify_ms[min(s for s in sizes if s >= nodes)]
            speed = tokens * plain / (d * draft + verify)
            if best is None or speed > best["speedup"]:
                best = {"acceptance": a, "drafts": d, "tokens_per_step": tokens, "speedup": speed}
        rows.append(best)
    return {"draft_over_plain": draft / plain, "rows": rows}


# -- section 2: SmolLM2 on Spec-Bench prompts --------------------------------------------------------


def spec_bench_prompts(path: Path, per_group: int) -> list[tuple[str, str, bool]]:
    """(category, text, chat) triples, `per_group` from each Spec-Bench group (MT-bench's eight folded
    into one), ordered round-robin: the first six hold one prompt of each group. A line may say
    `"chat": false` (HumanEval problems appended to the file: plain completions, no chat template)."""
    mt = {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}
    groups: dict[str, list[tuple[str, bool]]] = {}
    for line in path.read_text().splitlines():
        q = json.loads(line)
        group = "mt_bench" if q["category"] in mt else q["category"]
        if len(groups.setdefault(group, [])) < per_group:
            groups[group].append((q["turns"][0], bool(q.get("chat", True))))
    return [(g, *items[i]) for i in range(per_group) for g, items in groups.items() if i < len(items)]


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def smollm(
    model_path: str | None,
    prompts_path: Path,
    device,
    per_group: int,
    timed: int,
    max_new: int,
    fuse: bool,
    only: set[str] | None = None,
) -> dict:
    """Every method on the first `timed` prompts (tokens/s side by side); graph methods on all of them
    (bf16 agreement with plain decoding needs more prompts than the slow eager methods can afford)."""
    from skipspec import load
    from skipspec.engine.stops import tokenizer_stop_token_ids

    log("\n== SmolLM2-135M-Instruct, bf16, Spec-Bench dev, greedy")
    t = time.perf_counter()
    if model_path:
        model, tok = load(model_path, device=str(device), dtype="bfloat16" if device.type == "cuda" else "float32")
        stop = tokenizer_stop_token_ids(tok, model)
        prompts = []
        for cat, text, chat in spec_bench_prompts(prompts_path, per_group):
            if chat:
                ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                              tokenize=True, return_dict=False)  # fmt: skip
                ids = ids["input_ids"] if isinstance(ids, dict) else ids
            else:
                ids = tok(text)["input_ids"]
            prompts.append((cat, list(ids)[-1536:]))
        real = True
    else:  # no checkpoint here: the same shape with random weights (timings only)
        shape = "smollm2-shape" if device.type == "cuda" else "tiny"
        model = random_llama(shape, device, torch.bfloat16 if device.type == "cuda" else torch.float32)
        stop, tok = [], None
        gen = torch.Generator().manual_seed(1)
        lengths = [40, 300, 90, 700, 150, 60][: max(per_group, 1) * 2]
        prompts = [
            (f"random{i}", torch.randint(0, model.config.vocab_size, (n,), generator=gen).tolist())
            for i, n in enumerate(lengths)
        ]
        real = False
    timed = min(timed, len(prompts))
    log(f"loaded in {time.perf_counter() - t:.1f} s ({'real weights' if real else 'RANDOM weights'}); "
        f"{len(prompts)} prompts, all methods on the first {timed}")  # fmt: skip
    layers = model.config.num_hidden_layers
    sets = {"start": SkipSet.starting(layers), "r0.2": spread_skip(layers, 0.2)}
    runs: dict[str, dict[int, dict]] = {}  # method -> prompt index -> {tokens, seconds, steps, ...}
    search_stats: dict[str, dict] = {}  # method -> the search's stats after its last request

    def run_engine(name: str, runtime: RuntimeConfig, method: str, skip: SkipSet | None, count: int, search=None):
        cfg = SwiftConfig(optimize=search is not None, search=search, skip_attn=sorted(skip.attn) if skip else None,
                          skip_mlp=sorted(skip.mlp) if skip else None)  # fmt: skip
        dec = SwiftDecoder(model, cfg, stop_token_ids=stop, runtime=runtime)
        if runtime.mode != "eager":  # untimed pass: captures (and compiles) happen here
            for _, ids in sorted(prompts[:count], key=lambda p: -len(p[1])):
                dec.generate(ids, max_new, method=method)
        captures = dec.executor.captures if dec.mode != "eager" else 0
        runs[name] = {}
        for i, (_, ids) in enumerate(prompts[:count]):
            sync(device)
            t0 = time.perf_counter()
            r = dec.generate(ids, max_new, method=method)
            sync(device)
            runs[name][i] = {"tokens": r.tokens, "seconds": time.perf_counter() - t0, "steps": r.stats["verify_steps"],
                             "drafted": r.stats["drafted_tokens"], "accepted": r.stats["accepted_tokens"],
                             "optimize": r.stats.get("optimize_time", 0.0)}  # fmt: skip
        m = summarize(runs[name], range(count))
        m["captures_during_timing"] = (dec.executor.captures if dec.mode != "eager" else 0) - captures
        m["fused"] = bool(dec.mode != "eager" and dec.executor.fused)
        if search is not None:
            search_stats[name] = {k: v for k, v in dec.policy.stats().items() if isinstance(v, (int, float, str, list))}
            log(f"{name} search: {json.dumps(search_stats[name])}")
        log(f"{name:24s} {m['tokens_per_s']:8.1f} tokens/s  ({m['tokens']} tokens on {count} prompts, "
            f"{m['tokens_per_step']:.2f} per step, acceptance {m['acceptance']:.0%})")  # fmt: skip

    def run_hf(count: int):
        runs["hf-generate"] = {}
        for i, (_, ids) in enumerate(prompts[:count]):
            x = torch.tensor([ids], device=device)
            kwargs = dict(attention_mask=torch.ones_like(x), max_new_tokens=max_new, do_sample=False, pad_token_id=0,
                          eos_token_id=stop or None, **({} if stop else {"min_new_tokens": max_new}))  # fmt: skip
            if i == 0:
                model.generate(x, **kwargs)  # warm-up
            sync(device)
            t0 = time.perf_counter()
            out = model.generate(x, **kwargs)[0, len(ids) :].tolist()
            sync(device)
            secs = time.perf_counter() - t0
            for j, tk in enumerate(out):
                if tk in stop:
                    out = out[: j + 1]
                    break
            runs["hf-generate"][i] = {"tokens": out, "seconds": secs, "steps": len(out), "drafted": 0, "accepted": 0}
        m = summarize(runs["hf-generate"], range(count))
        log(f"{'hf-generate':24s} {m['tokens_per_s']:8.1f} tokens/s  ({m['tokens']} tokens on {count} prompts)")

    fast = "graphs" if device.type == "cuda" else "static"
    every, few = len(prompts), timed
    plan = [("hf-generate", None, few),
            ("eager-ar", (RuntimeConfig(mode="eager"), "ar", None), few),
            ("eager-swift-start", (RuntimeConfig(mode="eager"), "swift", sets["start"]), few),
            ("graphs-ar", (RuntimeConfig(mode=fast, fuse=False), "ar", None), every),
            ("graphs-swift-start", (RuntimeConfig(mode=fast, fuse=False), "swift", sets["start"]), every),
            ("graphs-swift-r0.2", (RuntimeConfig(mode=fast, fuse=False), "swift", sets["r0.2"]), every)]  # fmt: skip
    if fuse:
        plan += [("fused-ar", (RuntimeConfig(mode=fast, fuse=True), "ar", None), every),
                 ("fused-swift-start", (RuntimeConfig(mode=fast, fuse=True), "swift", sets["start"]), every),
                 ("fused-swift-r0.2", (RuntimeConfig(mode=fast, fuse=True), "swift", sets["r0.2"]), every),
                 ("fused-swift-search", (RuntimeConfig(mode=fast, fuse=True), "swift", None), every),
                 ("fused-swift-paper", (RuntimeConfig(mode=fast, fuse=True), "swift", None), every),
                 # the default with one-token steps on the model's SDPA kernel instead of skipspec's
                 ("fused-ar-sdpa", (RuntimeConfig(mode=fast, decode_kernel=False), "ar", None), every)]  # fmt: skip
    searches = {"search": "speed", "paper": "paper"}  # method name suffix -> the search's objective
    for name, spec, count in plan:
        if only and name not in only:
            continue
        try:
            if spec is None:
                run_hf(count)
            else:
                run_engine(name, *spec, count, search=searches.get(name.rsplit("-", 1)[-1]))
        except Exception:  # one broken method must not cost the whole run
            log(f"{name} FAILED:\n{traceback.format_exc()}")
    if only and not any(name in only for name in ("hf-generate", "eager-ar")):
        timed = len(prompts)  # no slow method ran: every method ran every prompt
    methods = {name: summarize(r, range(timed)) for name, r in runs.items()}  # the common prompts
    # Per Spec-Bench group: each method's tokens/s over the same runtime's plain decoding.
    by_group: dict[str, dict[str, float]] = {}
    for name, r in runs.items():
        ar = runs.get(f"{name.split('-')[0]}-ar")
        if ar is None or ar is r:
            continue
        for group in dict.fromkeys(cat for cat, _ in prompts):
            idx = [i for i, (cat, _) in enumerate(prompts) if cat == group and i in r and i in ar]
            if idx:
                by_group.setdefault(name, {})[group] = summarize(r, idx)["tokens_per_s"] / summarize(ar, idx)["tokens_per_s"]
    hf = methods.get("hf-generate", {}).get("tokens_per_s")
    for name, m in methods.items():
        m["vs_hf"] = m["tokens_per_s"] / hf if hf else None
        kind = name.split("-")[0]
        ar = methods.get(f"{kind}-ar", {}).get("tokens_per_s")
        m["vs_plain_same_runtime"] = m["tokens_per_s"] / ar if ar and kind in ("eager", "graphs", "fused") else None
    agreement = {}
    for name, r in runs.items():
        kind = name.split("-")[0]
        for ref in {f"{kind}-ar", "graphs-ar"}:
            if ref in runs and ref != name:
                common = sorted(set(r) & set(runs[ref]))
                same = sum(r[i]["tokens"] == runs[ref][i]["tokens"] for i in common)
                prefix = statistics.mean(
                    common_prefix(r[i]["tokens"], runs[ref][i]["tokens"]) / max(len(runs[ref][i]["tokens"]), 1)
                    for i in common
                )
                agreement[f"{name} vs {ref}"] = {
                    "identical_prompts": same,
                    "prompts": len(common),
                    "mean_common_prefix": prefix,
                }
    all_methods = {name: summarize(r, sorted(r)) for name, r in runs.items()}
    return {"real_weights": real, "prompts": len(prompts), "timed_prompts": timed, "max_new_tokens": max_new,
            "methods": methods, "methods_all_prompts": all_methods, "agreement": agreement, "vs_plain_by_group": by_group,
            "search": search_stats,
            "skip_sets": {k: v.as_dict() for k, v in sets.items()}}  # fmt: skip


def summarize(per_prompt: dict[int, dict], indices) -> dict:
    rows = [per_prompt[i] for i in indices if i in per_prompt]
    tokens = sum(len(r["tokens"]) for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    steps = sum(r["steps"] for r in rows)
    drafted = sum(r["drafted"] for r in rows)
    return {"prompts": len(rows), "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds if seconds else 0.0,
            "verify_steps": steps, "tokens_per_step": tokens / max(steps, 1), "drafted": drafted,
            "search_share": sum(r.get("optimize", 0.0) for r in rows) / seconds if seconds else 0.0,
            "acceptance": sum(r["accepted"] for r in rows) / max(drafted, 1)}  # fmt: skip


# -- report ---------------------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    lines = [f"# GPU fast path benchmark ({results['env'].get('gpu', 'cpu')})", "",
             "```", json.dumps(results["env"], indent=1), "```", ""]  # fmt: skip
    s = results.get("smollm")
    if s:
        lines += [f"## SmolLM2-135M-Instruct bf16 ({'real' if s['real_weights'] else 'random'} weights), "
                  f"Spec-Bench dev prompts, {s['max_new_tokens']} new tokens, greedy", "",
                  f"Speed on the {s['timed_prompts']} prompts every method ran (one per Spec-Bench group):", "",
                  "| method | tokens/s | vs HF generate | vs plain, same runtime | tokens/step | acceptance |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for name, m in s["methods"].items():
            vs_hf = f"{m['vs_hf']:.1f}x" if m.get("vs_hf") else ""
            vs_ar = f"{m['vs_plain_same_runtime']:.2f}x" if m.get("vs_plain_same_runtime") else ""
            lines.append(f"| {name} | {m['tokens_per_s']:.1f} | {vs_hf} | {vs_ar} | {m['tokens_per_step']:.2f} | "
                         f"{m['acceptance']:.0%} |")  # fmt: skip
        lines += ["", f"Graph methods on all {s['prompts']} prompts:", "",
                  "| method | tokens/s | tokens/step | acceptance |",
                  "|---|---|---|---|"]  # fmt: skip
        for name, m in s["methods_all_prompts"].items():
            if m["prompts"] == s["prompts"]:
                lines.append(f"| {name} | {m['tokens_per_s']:.1f} | {m['tokens_per_step']:.2f} | {m['acceptance']:.0%} |")
        lines += ["", "Greedy bf16 outputs identical to plain decoding (same runtime, and the unfused graph path):", "",
                  "| pair | identical prompts | mean common prefix |", "|---|---|---|"]  # fmt: skip
        for name, a in s["agreement"].items():
            lines.append(f"| {name} | {a['identical_prompts']}/{a['prompts']} | {a['mean_common_prefix']:.0%} |")
        lines.append("")
    for c in results.get("cost", []):
        lines += [f"## {c['shape']} random weights, {c['dtype']}{' + fused sublayers' if c['fuse'] else ''}", "",
                  f"Weights {c['weight_bytes'] / 1e9:.2f} GB; memory floor {c['floor_tokens_per_s']:.1f} tokens/s "
                  f"(copy bandwidth {results['env']['copy_bandwidth_TBps']:.2f} TB/s).", ""]  # fmt: skip
        for ctx, r in c["contexts"].items():
            lines += [f"Context {ctx}: plain step {r['verify_ms'][1]:.2f} ms = {r['step_vs_floor']:.0%} of the floor; "
                      f"plain decoding end to end {r['plain_tokens_per_s']:.1f} tokens/s = {r['plain_vs_floor']:.0%}.", "",
                      "| verify nodes | " + " | ".join(str(n) for n in r["verify_ms"]) + " |",
                      "|---" * (len(r["verify_ms"]) + 1) + "|",
                      "| ms | " + " | ".join(f"{v:.2f}" for v in r["verify_ms"].values()) + " |",
                      "| / plain | " + " | ".join(f"{v / r['verify_ms'][1]:.2f}" for v in r["verify_ms"].values()) + " |",
                      "",
                      "| skip ratio r | " + " | ".join(str(x) for x in r["draft_ms"]) + " |",
                      "|---" * (len(r["draft_ms"]) + 1) + "|",
                      "| draft ms | " + " | ".join(f"{v:.2f}" for v in r["draft_ms"].values()) + " |",
                      "| draft / plain | " + " | ".join(f"{v:.2f}" for v in r["draft_ratio"].values()) + " |",
                      "| 1 - r | " + " | ".join(f"{1 - x:.2f}" for x in r["draft_ms"]) + " |",
                      "| 1 - skipped weight share | "
                      + " | ".join(f"{1 - v:.2f}" for v in r["skipped_weight_fraction"].values()) + " |",
                      ""]  # fmt: skip
        sm = c["speedup_model"]
        lines += [f"SWIFT speedup these costs allow (draft at r={PAPER_SKIP_RATIO} costs {sm['draft_over_plain']:.2f} of a "
                  "plain step; acceptance from the paper, best draft length):", "",
                  "| acceptance (paper: 0.9-1.0) | drafts/step | tokens/step | speedup |", "|---|---|---|---|"]  # fmt: skip
        for row in sm["rows"]:
            lines.append(f"| {row['acceptance']} | {row['drafts']} | {row['tokens_per_step']:.2f} | {row['speedup']:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def short_table(results: dict) -> str:
    rows = ["", "=" * 72, "SUMMARY"]
    s = results.get("smollm")
    if s:
        for name, m in s["methods"].items():
            kind = name.split("-")[0]
            a = s["agreement"].get(f"{name} vs {kind}-ar", {})
            rows.append(f"smollm2 {name:20s} {m['tokens_per_s']:7.1f} tok/s vsHF {m.get('vs_hf') or 0:5.1f}x "
                        f"vsAR {m.get('vs_plain_same_runtime') or 0:4.2f}x tok/step {m['tokens_per_step']:.2f} "
                        f"same-as-{kind}-ar {a.get('identical_prompts', '-')}/{a.get('prompts', '-')}")  # fmt: skip
        every = s.get("methods_all_prompts", {})
        for name, m in every.items():
            ar = every.get(f"{name.split('-')[0]}-ar")
            if ar and ar is not m:
                ratio = m["tokens_per_s"] / ar["tokens_per_s"]
                rows.append(f"smollm2 {name} on {m['prompts']} prompts: {ratio:.3f}x plain, "
                            f"drafted {m.get('drafted', 0)}, search share {m.get('search_share', 0):.1%}")  # fmt: skip
        for name, groups in s.get("vs_plain_by_group", {}).items():
            rows.append(f"smollm2 {name} vs plain by group: " + " ".join(f"{g} {v:.2f}x" for g, v in groups.items()))
    for c in results.get("cost", []):
        for ctx, r in c["contexts"].items():
            v = r["verify_ms"]
            name = c["shape"] + ("+fuse" if c["fuse"] else "")
            rows.append(f"{name} ctx{ctx}: plain {v[1]:.2f}ms ({r['step_vs_floor']:.0%} floor, "
                        f"e2e {r['plain_vs_floor']:.0%}); verify16/plain {v.get(16, float('nan')) / v[1]:.2f}; draft/plain "
                        + " ".join(f"r{x}:{y:.2f}" for x, y in r["draft_ratio"].items()))  # fmt: skip
        rows.append(
            f"{c['shape']}{'+fuse' if c['fuse'] else ''}: modelled SWIFT speedup at the paper's acceptance "
            + ", ".join(
                f"{row['acceptance']}: {row['speedup']:.2f}x (D={row['drafts']})" for row in c["speedup_model"]["rows"]
            )
        )
    return "\n".join(rows)


def merge(paths: list[str], out: Path) -> int:
    """One report from several runs' results.json (the device takes a model in two calls)."""
    results: dict = {"env": {}, "cost": []}
    for path in paths:
        part = json.loads(Path(path).read_text())
        results["env"] = results["env"] or part["env"]
        results["env"].setdefault("runs", []).append(part["env"]["argv"])
        if "smollm" in part:
            results["smollm"] = part["smollm"]
        results["cost"] += part.get("cost", [])
    for c in results["cost"]:  # recomputed: the model may have changed since the run
        c["contexts"] = {int(k): {**v, "verify_ms": {int(n): t for n, t in v["verify_ms"].items()},
                                  "draft_ms": {float(r): t for r, t in v["draft_ms"].items()},
                                  "draft_ratio": {float(r): t for r, t in v["draft_ratio"].items()},
                                  "skipped_weight_fraction": {float(r): t for r, t in v["skipped_weight_fraction"].items()}}
                         for k, v in c["contexts"].items()}  # fmt: skip
        c["speedup_model"] = speedup_model(c["contexts"][min(c["contexts"])], 10)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    log(short_table(results))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-out/gpu")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default=None, help="SmolLM2 .gguf (random weights of its shape when absent)")
    ap.add_argument("--prompts", default=str(ROOT / ".gpu" / "spec_bench_dev.jsonl"))
    ap.add_argument("--per-group", type=int, default=4, help="Spec-Bench prompts per category group")
    ap.add_argument("--timed", type=int, default=6, help="prompts every method runs (the slow eager ones too)")
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--sections", default="smollm,cost")
    ap.add_argument("--methods", default=None, help="smollm section: only these methods (comma list of names)")
    ap.add_argument("--shapes", default="llama2-7b,llama2-13b,smollm2-shape")
    ap.add_argument("--contexts", default="512,2048")
    ap.add_argument("--fuse", action="store_true", help="also measure graphs + fused (compiled) sublayers")
    ap.add_argument("--fused-only", action="store_true", help="cost model: only graphs + fused sublayers (the default)")
    ap.add_argument("--linear-kernel", choices=("auto", "on", "off"), default="auto",
                    help="cost model: skipspec's linear kernel (auto: the runtime's default for the shape)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="CPU check of this script: tiny shapes")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="only re-render: merge results.json files into --out")
    args = ap.parse_args()
    if args.merge:
        return merge(args.merge, Path(args.out))
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0],
           "device": str(device), "argv": sys.argv[1:]}  # fmt: skip
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["copy_bandwidth_TBps"] = copy_bandwidth(device) / 1e12
    else:
        env["copy_bandwidth_TBps"] = float("nan")
    log(json.dumps(env))
    results: dict = {"env": env}
    sections = args.sections.split(",")
    if "smollm" in sections:
        try:
            results["smollm"] = smollm(
                args.model,
                Path(args.prompts),
                device,
                args.per_group,
                args.timed,
                args.max_new,
                args.fuse,
                set(args.methods.split(",")) if args.methods else None,
            )
        except Exception:
            log(f"smollm section FAILED:\n{traceback.format_exc()}")
        (out / "results.json").write_text(json.dumps(results, indent=1))
    if "cost" in sections:
        results["cost"] = []
        contexts = [int(c) for c in args.contexts.split(",")]
        sizes = (1, 2, 4, 8, 16, 32, 64)
        shapes = ["tiny"] if args.tiny else args.shapes.split(",")
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        bandwidth = env["copy_bandwidth_TBps"] * 1e12 if device.type == "cuda" else 1e11
        for shape in shapes:
            for fuse in (True,) if args.fused_only else (False, True) if args.fuse else (False,):
                try:
                    kernel = {"auto": None, "on": True, "off": False}[args.linear_kernel]
                    results["cost"].append(
                        cost_model(shape, device, dtype, contexts, sizes, bandwidth, fuse, args.quick, kernel)
                    )
                except Exception:
                    log(f"cost model {shape} fuse={fuse} FAILED:\n{traceback.format_exc()}")
                (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    log(short_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
