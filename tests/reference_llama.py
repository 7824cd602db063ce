"""An independent numpy reference of a Llama decoder, for checking the TF adapter.

It deliberately shares no code with tiercache: it reads the GGUF itself
(``gguf.GGUFReader`` + ``gguf.quants.dequantize``), takes the hyper-parameters
straight from the file's metadata, undoes llama.cpp's Q/K row permutation to
get back the Hugging Face layout and then uses Hugging Face's ``rotate_half``
RoPE (the adapter instead keeps the GGUF layout with interleaved RoPE -- the
two agree only if both conventions are right), expands the KV heads with
``np.repeat`` instead of grouping queries, and keeps no KV cache: every step
recomputes the whole sequence with a causal mask. Slow but simple.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RefConfig:
    n_layers: int
    n_heads: int
    n_kv_heads: int
    rope_theta: float
    eps: float


def unpermute_gguf_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Invert convert_hf_to_gguf.py's ``permute``: GGUF (interleaved pairs) -> HF rows."""
    rows, cols = w.shape
    head_dim = rows // n_heads
    return (w.reshape(n_heads, head_dim // 2, 2, cols).swapaxes(1, 2)
            .reshape(rows, cols))


def load_gguf(path: str | Path) -> tuple[dict[str, np.ndarray], RefConfig]:
    """Every tensor of a llama GGUF as float32 (numpy layout: rows = outputs) + config."""
    import gguf

    reader = gguf.GGUFReader(str(path))

    def meta(key: str) -> Any:
        value = reader.fields[key].contents()
        return value.item() if isinstance(value, np.generic) else value

    arch = meta("general.architecture")
    assert arch == "llama", arch
    config = RefConfig(
        n_layers=int(meta("llama.block_count")), n_heads=int(meta("llama.attention.head_count")),
        n_kv_heads=int(meta("llama.attention.head_count_kv")),
        rope_theta=float(meta("llama.rope.freq_base")),
        eps=float(meta("llama.attention.layer_norm_rms_epsilon")))
    weights: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        shape = tuple(int(n) for n in tensor.shape[::-1])
        weights[str(tensor.name)] = np.array(array, dtype=np.float32).reshape(shape)
    return weights, config


class ReferenceLlama:
    """Full-sequence numpy forward pass over GGUF-named float32 weights."""

    def __init__(self, weights: dict[str, np.ndarray], config: RefConfig) -> None:
        self.w = weights
        self.c = config
        # back to the Hugging Face layout, once
        self.q = [unpermute_gguf_qk(weights[f"blk.{i}.attn_q.weight"], config.n_heads)
                  for i in range(config.n_layers)]
        self.k = [unpermute_gguf_qk(weights[f"blk.{i}.attn_k.weight"], config.n_kv_heads)
                  for i in range(config.n_layers)]

    def _norm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        variance = np.mean(x * x, axis=-1, keepdims=True)
        normed: np.ndarray = (
            (x / np.sqrt(variance + np.float32(self.c.eps))).astype(np.float32) * weight)
        return normed

    def _rotary(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        head_dim = x.shape[-1]
        inv_freq = 1.0 / (self.c.rope_theta ** (np.arange(0, head_dim, 2) / head_dim))
        freqs = positions[:, None] * inv_freq[None, :]
        emb = np.concatenate([freqs, freqs], axis=-1)
        cos = np.cos(emb).astype(np.float32)[:, None, :]
        sin = np.sin(emb).astype(np.float32)[:, None, :]
        half = head_dim // 2
        rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        rotary: np.ndarray = (x * cos + rotated * sin).astype(np.float32)
        return rotary

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits of the last position for the sequence ``ids``."""
        c, w = self.c, self.w
        steps = len(ids)
        positions = np.arange(steps, dtype=np.float64)
        x = w["token_embd.weight"][np.asarray(ids)].astype(np.float32)
        causal = np.triu(np.full((steps, steps), -np.inf, dtype=np.float32), k=1)
        for i in range(c.n_layers):
            h = self._norm(x, w[f"blk.{i}.attn_norm.weight"])
            q = (h @ self.q[i].T).reshape(steps, c.n_heads, -1)
            k = (h @ self.k[i].T).reshape(steps, c.n_kv_heads, -1)
            v = (h @ w[f"blk.{i}.attn_v.weight"].T).reshape(steps, c.n_kv_heads, -1)
            head_dim = q.shape[-1]
            q, k = self._rotary(q, positions), self._rotary(k, positions)
            repeat = c.n_heads // c.n_kv_heads
            k, v = np.repeat(k, repeat, axis=1), np.repeat(v, repeat, axis=1)
            scores = np.einsum("thd,shd->hts", q, k) / np.float32(np.sqrt(head_dim)) + causal
            scores = scores - scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            attn = np.einsum("hts,shd->thd", probs, v).reshape(steps, -1)
            x = x + attn @ w[f"blk.{i}.attn_output.weight"].T
            h = self._norm(x, w[f"blk.{i}.ffn_norm.weight"])
            gate = h @ w[f"blk.{i}.ffn_gate.weight"].T
            up = h @ w[f"blk.{i}.ffn_up.weight"].T
            x = x + ((gate / (1.0 + np.exp(-gate))) * up) @ w[f"blk.{i}.ffn_down.weight"].T
        x = self._norm(x[-1:], w["output_norm.weight"])
        out = w.get("output.weight", w["token_embd.weight"])
        logits: np.ndarray = (x @ out.T)[0]
        return logits

    def generate(self, ids: list[int], max_new_tokens: int, eos_id: int | None = None,
                 ) -> list[int]:
        """Greedy decoding, recomputing the whole sequence each step."""
        seq = list(ids)
        out: list[int] = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(self.logits(seq)))
            out.append(token)
            seq.append(token)
            if eos_id is not None and token == eos_id:
                break
        return out
