"""What torchrun runs for tests/test_tensor_parallel.py: every case of `tp_cases` on tiny models
sharded over the ranks (gloo, CPU); then the saved tiny model in argv[2] loaded with
`load(..., tensor_parallel=True)`, through the API and through `skipspec generate`; then
scripts/tp_bench.py on a tiny shape. Rank 0 writes JSON to argv[1]: each case's tokens and stats,
the output head's logits of one full forward, the loaded model's outputs, the bench's results, and
every rank's follower report and command-line output.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/tp_run.py out.json FOLDER
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
torch.set_num_threads(1)

from tiny_models import tiny_model  # noqa: E402
from tp_cases import CLI_PROMPT, NEW_TOKENS, PROMPT, SKIP, VOCAB, cases, runtime_config, swift_config  # noqa: E402

from skipspec import SwiftConfig, SwiftDecoder, load, parallel  # noqa: E402

STATS = ("method", "drafted_tokens", "verify_steps", "fast_path", "runtime", "draft_forwards", "skip_attn", "skip_mlp")


def lead(model, group: list) -> dict:
    """Rank 0: every case of one model, each decoder shared by the cases that may share it."""
    results, decoders = {}, {}
    for case in group:
        key = (case.search, case.runtime)
        if key not in decoders:
            decoders[key] = SwiftDecoder(model, swift_config(case), stop_token_ids=[], runtime=runtime_config(case))
        dec = decoders[key]
        if case.warmup:
            dec.warmup(len(PROMPT) + NEW_TOKENS, methods=(case.method,))
        res = dec.generate(list(PROMPT), NEW_TOKENS, method=case.method, **case.sampling())
        results[case.name] = {"tokens": res.tokens, "stats": {k: res.stats.get(k) for k in STATS}}
        if case.search:
            results[case.name]["search"] = dec.policy.stats()
        if case.search == "speed":
            results[case.name]["probe"] = probe(dec, list(PROMPT) + res.tokens)
    s = parallel.sharding_of(model)
    results[f"{group[0].family}/{group[0].plan}/sharding"] = {"kv_heads": s.kv_heads, "plan": s.plan, "world": s.world_size}
    if group[0].family == "llama" and group[0].plan == "auto":
        ids = torch.tensor([list(PROMPT)])
        results["llama/logits"] = parallel.full_logits(model, ids, 3)[0].tolist()
    return results


def probe(dec: SwiftDecoder, tokens: list[int]) -> dict:
    """The search's influence probe over the last 8 generated tokens, through the executor: its
    logits re-predict those tokens, and its sizes are finite."""
    from skipspec.search.matchness import Context, context_frame

    ex = dec.executor
    context = Context.of(tokens, ex.committed - 8, 8)
    sizes, logits = ex.sublayer_sizes(context_frame(context, ex.committed, dec.adapter.device))
    finite = bool(torch.isfinite(torch.as_tensor(sizes)).all())
    return {"argmax": logits.argmax(-1).tolist(), "targets": list(context.targets), "shape": list(sizes.shape),
            "finite": finite}  # fmt: skip


def loaded(folder: str) -> dict:
    """A saved model loaded sharded (transformers' sharded loading); rank 0's swift output."""
    model, _ = load(folder, device="cpu", tensor_parallel=True)

    def main() -> list[int]:
        dec = SwiftDecoder(model, SwiftConfig(optimize=False, max_draft_tokens=6, **SKIP), stop_token_ids=[])
        return dec.generate(list(PROMPT), NEW_TOKENS, method="swift").tokens

    tokens = parallel.run(model, main)
    s = parallel.sharding_of(model)
    return {"load/swift": tokens, "load/sharding": {"kv_heads": s.kv_heads, "plan": s.plan}} if tokens else {}


def command_line(folder: str) -> dict:
    """`skipspec generate --tensor-parallel` on every rank: rank 0 prints, the others follow."""
    from typer.testing import CliRunner

    from skipspec.cli import app

    res = CliRunner().invoke(app, ["generate", "--model", folder, "--prompt", CLI_PROMPT, "--max-new-tokens", "12",
                                   "--method", "ar", "--json",
                                   "--device", "cpu", "--tensor-parallel"])  # fmt: skip
    return {"exit_code": res.exit_code, "stdout": res.stdout, "error": repr(res.exception) if res.exception else None}


def bench(out: str) -> list | None:
    """scripts/tp_bench.py on a tiny shape: built on the meta device, materialized slice by slice."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    import tp_bench

    args = ["--shapes", "tiny-tp", "--device", "cpu", "--contexts", "16", "--tree-sizes", "2,8", "--new-tokens", "4",
            "--reps", "1", "--out", out]  # fmt: skip
    return tp_bench.main(args)


def main() -> None:
    out = sys.argv[1]
    by_model: dict[tuple, list] = {}
    for case in cases():
        by_model.setdefault((case.family, case.plan), []).append(case)
    results, reports = {}, []
    for (family, plan), group in by_model.items():
        model = parallel.shard(tiny_model(family, vocab_size=VOCAB), plan=plan)
        if parallel.leads(model):
            try:
                results.update(lead(model, group))
            finally:
                parallel.release(model)
        else:
            r = parallel.follow(model)
            reports.append({"model": f"{family}/{plan}", "commands": r.commands, "checked": r.checked,
                            "requests": [list(t) for t in r.requests]})  # fmt: skip
    results.update(loaded(sys.argv[2]))
    results["bench"] = bench(os.path.join(os.path.dirname(out), "bench"))
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, (reports, command_line(sys.argv[2])))
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump({"results": results, "followers": [r for r, _ in everyone[1:]],
                       "cli": [c for _, c in everyone]}, f)  # fmt: skip
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
