"""A tiny Llama as a GGUF file (random weights, some of them Q8_0-quantized, a 64-token BPE
vocabulary and a chat template), written with the `gguf` package: small enough to convert in a
few seconds, complete enough that transformers converts it the way it converts a real one."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_tiny_gguf(path: Path, layers: int = 3, hidden: int = 64, ffn: int = 128, seed: int = 0) -> Path:
    import gguf

    heads, kv_heads = 4, 2
    rng = np.random.default_rng(seed)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["<unk>", "<s>", "</s>", "Ġ"] + letters + ["Ġ" + c for c in letters] + ["ab", "Ġab"]
    tokens += [f"<extra{i}>" for i in range(64 - len(tokens))]
    merges = ["Ġ " + c for c in letters] + ["a b", "Ġ ab"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny test llama")
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_rope_dimension_count(hidden // heads)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_chat_template("{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}")

    def tensor(name: str, shape: tuple[int, ...], quantized: bool = False) -> None:
        data = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        if quantized:
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, data)

    kv = hidden // heads * kv_heads
    tensor("token_embd.weight", (len(tokens), hidden), quantized=True)  # tied: no output.weight
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", (hidden,))
        tensor(f"blk.{i}.attn_q.weight", (hidden, hidden), quantized=True)
        tensor(f"blk.{i}.attn_k.weight", (kv, hidden), quantized=True)
        tensor(f"blk.{i}.attn_v.weight", (kv, hidden))
        tensor(f"blk.{i}.attn_output.weight", (hidden, hidden))
        tensor(f"blk.{i}.ffn_norm.weight", (hidden,))
        tensor(f"blk.{i}.ffn_gate.weight", (ffn, hidden), quantized=True)
        tensor(f"blk.{i}.ffn_up.weight", (ffn, hidden))
        tensor(f"blk.{i}.ffn_down.weight", (hidden, ffn), quantized=True)
    tensor("output_norm.weight", (hidden,))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
