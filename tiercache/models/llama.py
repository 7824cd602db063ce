"""The Llama architecture: hyper-parameters, tensor names and the read schedule.

:class:`LlamaHParams` describes a Llama-family decoder (GGUF ``llama.*`` keys)
and checks every field; :func:`llama_layer_keys` and :func:`llama_schedule`
give the shard keys a forward pass reads, in order -- what the importers lay
out, the TensorFlow runtime fetches, and a cache or a schedule-aware policy is
told about (``declare_schedule``).

Thread-safety: immutable values and pure functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

RopeStyle = Literal["interleaved", "half"]

#: Per-layer tensors of a Llama block, in the order a forward pass reads them.
LLAMA_LAYER_TENSORS: tuple[str, ...] = (
    "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
    "ffn_norm", "ffn_gate", "ffn_up", "ffn_down",
)


#: Upper bounds of the whole-number Llama hyper-parameters (far above any real model:
#: they stop a damaged file or manifest from sizing tables by itself).
HPARAM_LIMITS: dict[str, int] = {
    "n_layers": 1 << 16, "dim": 1 << 20, "ffn_dim": 1 << 22, "n_heads": 1 << 14,
    "n_kv_heads": 1 << 14, "vocab_size": 1 << 24, "head_dim": 1 << 16,
    "context_length": 1 << 32,
}


@dataclass(frozen=True)
class LlamaHParams:
    """Hyper-parameters of a Llama-family decoder (GGUF ``llama.*`` keys).

    ``rope_style`` says how the rotary embedding pairs dimensions, which must
    match how the Q/K weights are laid out: ``"interleaved"`` rotates
    ``(x[2i], x[2i+1])`` -- llama.cpp's "normal" RoPE, the layout of GGUF
    files, whose converter permuted the Hugging Face Q/K rows for it --
    and ``"half"`` rotates ``(x[i], x[i + d/2])`` (Hugging Face / NeoX
    ``rotate_half``, for unpermuted weights).
    """

    n_layers: int
    dim: int
    ffn_dim: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_style: RopeStyle = "interleaved"
    rms_eps: float = 1e-5
    context_length: int = 2048
    tied_embeddings: bool = True

    def __post_init__(self) -> None:
        """Check every field: whole numbers in ``1..HPARAM_LIMITS[name]``, KV heads that
        divide the heads, an even head size, rope theta and the norm epsilon finite and
        positive (epsilon below 1). ``ValueError`` naming the field. O(1)."""
        for name, limit in HPARAM_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or \
                    not 1 <= value <= limit:
                raise ValueError(f"{name} must be a whole number from 1 to {limit}, "
                                 f"got {value!r}")
        for name, upper in (("rope_theta", math.inf), ("rms_eps", 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value) or not 0 < value < upper:
                raise ValueError(f"{name} must be a finite number above 0"
                                 + (f" and below {upper}" if upper != math.inf else "")
                                 + f", got {value!r}")
        if not isinstance(self.tied_embeddings, bool):
            raise ValueError(f"tied_embeddings must be true or false, got "
                             f"{self.tied_embeddings!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads "
                             f"({self.n_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.rope_style not in ("interleaved", "half"):
            raise ValueError(f"rope_style must be 'interleaved' or 'half', got "
                             f"{self.rope_style!r}")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (a manifest's ``hparams``). O(1)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LlamaHParams:
        """Build from :meth:`to_dict`'s output; ``ValueError`` for an unknown or bad field."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown hparams {sorted(unknown)}")
        return cls(**data)

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Expected numpy shape of every tensor (rows = output features), GGUF names."""
        d, f, kv = self.dim, self.ffn_dim, self.n_kv_heads * self.head_dim
        q = self.n_heads * self.head_dim
        shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (self.vocab_size, d)}
        per_layer = {"attn_norm": (d,), "attn_q": (q, d), "attn_k": (kv, d), "attn_v": (kv, d),
                     "attn_output": (d, q), "ffn_norm": (d,), "ffn_gate": (f, d),
                     "ffn_up": (f, d), "ffn_down": (d, f)}
        for layer in range(self.n_layers):
            for name in LLAMA_LAYER_TENSORS:
                shapes[f"blk.{layer}.{name}.weight"] = per_layer[name]
        shapes["output_norm.weight"] = (d,)
        if not self.tied_embeddings:
            shapes["output.weight"] = (self.vocab_size, d)
        return shapes


def llama_layer_keys(layer: int, key_prefix: str = "") -> list[str]:
    """Shard keys of block ``layer`` in the order a forward pass reads them."""
    return [f"{key_prefix}blk.{layer}.{name}.weight" for name in LLAMA_LAYER_TENSORS]


def llama_schedule(hparams: LlamaHParams, key_prefix: str = "") -> list[str]:
    """Shard keys one forward pass reads, in order; O(n_layers).

    The embedding table comes first (row lookup), then each block, then the
    final norm and the output projection -- which, with tied embeddings, is the
    embedding table again, so that key appears twice.
    """
    keys = [f"{key_prefix}token_embd.weight"]
    for layer in range(hparams.n_layers):
        keys.extend(llama_layer_keys(layer, key_prefix))
    keys.append(f"{key_prefix}output_norm.weight")
    keys.append(f"{key_prefix}token_embd.weight" if hparams.tied_embeddings
                else f"{key_prefix}output.weight")
    return keys
