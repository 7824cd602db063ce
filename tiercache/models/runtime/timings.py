"""Where a decoder's time went: :class:`ModelTimings` (fetch, dequantization,
handoff, compute; prompt and decode passes; compiling steps counted apart).

Plain counters, no TensorFlow. Thread-safety: none (owned by one model).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = ["ModelTimings"]


@dataclass
class ModelTimings:
    """Where a model's time went, cumulative since construction or :meth:`reset`.

    ``fetch_s`` waiting on ``provider.get``; ``dequant_s`` decoding stored
    (quantized, float16, bfloat16) shards to float32; ``handoff_s`` numpy ->
    ``tf.Tensor``; ``compute_s`` in TensorFlow (and the in-place KV writes);
    ``prefill_s`` and ``decode_s`` wall time of prompt passes and of
    one-token passes. ``decoded_tokens`` counts every sequence's token of a
    batched step; ``forward_passes`` counts passes (one per step however many
    sequences it serves, one per prompt). ``compiling_s`` / ``compiling_tokens``:
    one-token passes that traced (compiled) a new function, included in ``decode_s``
    / ``decoded_tokens``; ``as_dict()``'s ``steady_decode_tokens_per_s`` leaves them out.
    """

    fetch_s: float = 0.0
    dequant_s: float = 0.0
    handoff_s: float = 0.0
    compute_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    forward_passes: int = 0
    prompt_tokens: int = 0
    decoded_tokens: int = 0
    shards_fetched: int = 0
    bytes_fetched: int = 0
    zero_copy_handoffs: int = 0
    copied_handoffs: int = 0
    ttft_s: float | None = None
    prompt_tokens_reused: int = 0
    compiling_s: float = 0.0
    compiling_tokens: int = 0
    #: What runs the passes: ``"kernels"`` (numpy and the C kernel) or ``"tensorflow"``;
    #: set at the first pass and kept by :meth:`reset` ("" before).
    engine: str = ""

    def reset(self) -> None:
        """Zero every counter (``engine`` stays)."""
        for f in fields(self):
            if f.name != "engine":
                setattr(self, f.name, f.default)

    def add_pass(self, seconds: float, decode: bool, tokens: int, traced: bool = False) -> None:
        """Count a forward pass: a one-token step (``tokens`` decoded) or a prompt pass;
        ``traced``: it traced a new function."""
        self.forward_passes += 1
        if decode:
            self.decode_s += seconds
            self.decoded_tokens += tokens
            if traced:
                self.compiling_s += seconds
                self.compiling_tokens += tokens
        else:
            self.prefill_s += seconds
            self.prompt_tokens += tokens

    def as_dict(self) -> dict[str, Any]:
        """The counters plus derived rates (``decode_tokens_per_s`` counts one-token passes)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["decode_tokens_per_s"] = (self.decoded_tokens / self.decode_s
                                      if self.decode_s > 0 else None)
        steady_s = self.decode_s - self.compiling_s
        out["steady_decode_tokens_per_s"] = (
            (self.decoded_tokens - self.compiling_tokens) / steady_s
            if steady_s > 0 and self.decoded_tokens > self.compiling_tokens else None)
        out["fetch_gb_per_s"] = (self.bytes_fetched / self.fetch_s / 1e9
                                 if self.fetch_s > 0 else None)
        out["handoff_s_per_shard"] = (self.handoff_s / self.shards_fetched
                                      if self.shards_fetched else None)
        return out
