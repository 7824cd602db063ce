"""Throughput of tiercache.models.quant.dequantize per ggml type, against gguf-py's.

Prints MB/s of float32 output (median of --repeat runs; --threads threads each
decoding its own 1024 x 1024 shard into a reused buffer) for tiercache's
dequantize and, on the same bytes in the same run, gguf.quants.dequantize (the
reference it equals bit for bit), and their ratio.

Usage: ``python bench/bench_quant.py [--threads N] [--repeat R] [--json]``
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from tiercache.models import quant


def gguf_reference(array: np.ndarray, name: str) -> np.ndarray:
    """gguf-py's dequantization of a quant-layout shard (the GGUF row layout)."""
    import gguf
    import gguf.quants

    if name == "F32":  # gguf returns a view: copy, as dequantize() writes a new array
        return np.array(array)
    raw = array.reshape(array.shape[0], -1) if array.ndim == 3 else array
    if name == "BF16":
        raw = array.view(np.uint8)
    return np.asarray(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[name]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="threads decoding at once")
    parser.add_argument("--repeat", type=int, default=7, help="runs per figure (median)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    result = quant.bench(repeat=args.repeat, threads=args.threads, reference=gguf_reference)
    if args.json:
        print(json.dumps({name: {"tiercache_mb_s": ours, "gguf_mb_s": theirs}
                          for name, (ours, theirs) in result.items()}, indent=1))
        return 0
    print(f"MB/s of float32 output, {args.threads} thread(s), median of {args.repeat}")
    print(f"{'type':5s} {'tiercache':>10s} {'gguf-py':>9s} {'ratio':>6s}")
    for name, (ours, theirs) in result.items():
        ratio = f"{ours / theirs:5.1f}x" if theirs else ""
        print(f"{name:5s} {ours:10.0f} {theirs or 0:9.0f} {ratio:>6s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
