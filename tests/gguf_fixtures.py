"""A tiny llama GGUF written with the ``gguf`` package's own writer (Q8_0, F16 and F32
tensors, a byte-level tokenizer): the importers, the packed store and the fuzzers read
it without any shipped model. A support module (tests/ is on ``pythonpath``), so no
test module imports another."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from tiercache.models import BPETokenizer, LlamaHParams
from tiercache.models.importers.synthetic import synthetic_tensor


def write_tiny_gguf(path: Path, *, layers: int = 2, dim: int = 64, ffn: int = 96,
                    heads: int = 4, kv_heads: int = 2, vocab: int = 300,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """A llama GGUF with seeded weights; returns the arrays as written (before quantizing)."""
    hp = LlamaHParams(n_layers=layers, dim=dim, ffn_dim=ffn, n_heads=heads, n_kv_heads=kv_heads,
                      vocab_size=vocab, head_dim=dim // heads, rope_theta=5000.0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(dim)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(5000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(dim // heads)
    tok = BPETokenizer.byte_level(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tok.tokens)
    writer.add_token_types(tok.token_types)
    writer.add_token_merges(["a b"])
    writer.add_eos_token_id(256)
    writer.add_add_bos_token(False)
    arrays: dict[str, np.ndarray] = {}
    for name, shape in hp.tensor_shapes().items():
        value = synthetic_tensor(name, shape, seed=seed, dtype=np.dtype(np.float32))
        arrays[name] = value
        if len(shape) == 1:
            writer.add_tensor(name, value)
        elif name.endswith("ffn_up.weight"):
            writer.add_tensor(name, value.astype(np.float16))
        else:
            q = gguf.quants.quantize(value, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return arrays
