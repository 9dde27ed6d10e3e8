"""A drafter of your own in 30 lines: propose what followed the last token earlier in the text.

    python examples/bigram_drafter.py            # a tiny random model, so it runs anywhere
    python examples/bigram_drafter.py --model smollm2-135m-instruct

Whatever a drafter proposes, the output is exactly what plain decoding gives: the full model
verifies every drafted token. A good drafter only makes it faster.
"""

from __future__ import annotations

import argparse

from skipspec.drafting import DraftContext, DraftTree, StepResult


class BigramDrafter:
    """After token t, propose the tokens that followed t's last occurrences, one chain each."""

    name = "bigram"

    def __init__(self, branches: int = 2, depth: int = 6) -> None:
        self.branches, self.depth = branches, depth

    def propose(self, ctx: DraftContext) -> DraftTree | None:
        tokens, last = ctx.tokens, ctx.tokens[-1]
        starts = [i + 1 for i in range(len(tokens) - 2, -1, -1) if tokens[i] == last][: self.branches]
        out, parents = [], []
        for start in starts:
            parent = -1  # each chain hangs under the root
            for token in tokens[start : start + min(self.depth, ctx.max_depth)]:
                if len(out) == ctx.max_nodes:
                    break
                out.append(token)
                parents.append(parent)
                parent = len(out) - 1
        return DraftTree(out, parents) if out else None

    def observe(self, ctx: DraftContext, result: StepResult) -> None:
        pass  # it reads everything it needs from ctx.tokens


def main() -> None:
    import skipspec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model reference for skipspec.load (default: a tiny random Llama)")
    args = parser.parse_args()
    if args.model:
        model, tok = skipspec.load(args.model, device="cpu", dtype="float32")
        code = "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n# again:\n"
        prompt = tok(code)["input_ids"]
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
        model, prompt = LlamaForCausalLM(config), [5, 6, 7, 8, 5, 6, 7, 8, 5, 6]
    decoder = skipspec.SwiftDecoder(model, skipspec.SwiftConfig(optimize=False))
    plain = decoder.generate(prompt, 48, method="ar")
    mine = decoder.generate(prompt, 48, drafters=[BigramDrafter()])
    assert mine.tokens == plain.tokens
    s = mine.stats
    accepted, drafted = s["accepted_by_source"].get("bigram", 0), s["drafted_by_source"].get("bigram", 0)
    print(f"identical to plain decoding; {s['mean_accepted']:.2f} tokens per step, "
          f"{accepted} of {drafted} drafted tokens accepted")  # fmt: skip


if __name__ == "__main__":
    main()
