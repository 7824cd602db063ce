"""Peers and floors for bench/bench_decode.py: llama.cpp's decode and the matmul floor.

``llama_cpp_decode`` times llama.cpp (through ``llama-cpp-python``) on a GGUF
file: greedy decoding, one token per ``eval``, the same thread count as the
tiercache run. ``llama-cpp-python`` is an optional peer for this benchmark
only -- never a dependency of tiercache or of ``make test``: ``ensure_llama_cpp``
installs it into the running interpreter on request (``pip install
llama-cpp-python`` builds llama.cpp from source: about 8 minutes on the 2-core
VM; a wheel folder given with ``--llama-cpp-wheels`` skips the build).

``matmul_floor`` times only the matrix products of one decode step (the same
shapes as the model, ``transpose_b=True``, weights resident as tensors) in one
``tf.function``, with and without XLA, and keeps the faster: what no decoder
built from TensorFlow's matmuls can beat.

Thread-safety: single-threaded benchmark helpers.
"""

from __future__ import annotations

import importlib
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tiercache.models.llama import LlamaHParams


def ensure_llama_cpp(wheels: Path | None) -> bool:
    """Import ``llama_cpp``, installing ``llama-cpp-python`` with pip first if missing
    (from ``wheels`` when given). False when it cannot be had."""
    try:
        importlib.import_module("llama_cpp")
        return True
    except ImportError:
        pass
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    if wheels is not None:
        cmd += ["--no-index", "--find-links", str(wheels)]
    cmd += ["llama-cpp-python", "diskcache", "jinja2", "markupsafe", "typing-extensions"]
    print("installing llama-cpp-python for the peer measurement (a source build takes "
          "~8 minutes on 2 cores)...", flush=True)
    if subprocess.run(cmd).returncode != 0:
        return False
    importlib.invalidate_caches()
    try:
        importlib.import_module("llama_cpp")
        return True
    except ImportError:
        return False


def llama_cpp_decode(gguf: Path, prompt_ids: list[int], new_tokens: int, threads: int,
                     repeats: int = 3) -> dict[str, Any]:
    """Median ms per decoded token of llama.cpp on ``gguf``: the prompt in one eval, then
    ``new_tokens`` greedy one-token evals (argmax of the logits, as tiercache's greedy),
    ``repeats`` times. Returns the medians, every run, and the generated ids."""
    from llama_cpp import Llama

    llm: Any = Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads,
                n_ctx=max(256, len(prompt_ids) + new_tokens + 8), logits_all=True,
                verbose=False, use_mmap=True)
    per_token: list[float] = []
    tokens: list[int] = []
    for _ in range(repeats):
        llm.reset()
        llm.eval(prompt_ids)
        tokens = []
        started = time.perf_counter()
        for _ in range(new_tokens):
            logits = np.asarray(llm.scores[llm.n_tokens - 1])
            token = int(np.argmax(logits))
            tokens.append(token)
            llm.eval([token])
        per_token.append((time.perf_counter() - started) / new_tokens * 1000)
    llm.close()
    return {"ms_per_token": statistics.median(per_token), "runs_ms": per_token,
            "token_ids": tokens}


def matmul_floor(hp: LlamaHParams, batch: int, steps: int = 32, repeats: int = 3) -> float:
    """Median ms of one decode step's matrix products alone (random float32 weights of
    ``hp``'s shapes, resident as tensors, ``batch`` rows): the faster of one
    ``tf.function`` (oneDNN's matmuls) and the same under XLA (faster at batch 1 and
    16 on the 2-core VM, slower at 4)."""
    return min(_matmul_floor(hp, batch, steps, repeats, jit) for jit in (False, True))


def _matmul_floor(hp: LlamaHParams, batch: int, steps: int, repeats: int,
                  jit: bool) -> float:
    from tiercache.models.runtime.tensorflow import tf_module

    tf = tf_module()
    rng = np.random.default_rng(0)
    shapes = hp.tensor_shapes()
    layer = [shapes[f"blk.0.{name}.weight"] for name in
             ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")]
    weights = [[tf.constant(rng.standard_normal(s, dtype=np.float32) * 0.02) for s in layer]
               for _ in range(hp.n_layers)]
    head = tf.constant(rng.standard_normal((hp.vocab_size, hp.dim), dtype=np.float32) * 0.02)
    x0 = tf.constant(rng.standard_normal((batch, hp.dim), dtype=np.float32))
    q_dim = hp.n_heads * hp.head_dim

    @tf.function(jit_compile=jit)  # type: ignore[untyped-decorator]
    def step(x: Any) -> Any:
        kv_sum = tf.zeros([batch, 1])  # keeps the K and V products from being pruned
        for wq, wk, wv, wo, wg, wu, wd in weights:
            q = tf.matmul(x, wq, transpose_b=True)
            k = tf.matmul(x, wk, transpose_b=True)
            v = tf.matmul(x, wv, transpose_b=True)
            kv_sum += k[:, :1] + v[:, :1]
            x = x + tf.matmul(q[:, :q_dim], wo, transpose_b=True)
            g = tf.matmul(x, wg, transpose_b=True)
            u = tf.matmul(x, wu, transpose_b=True)
            x = x + tf.matmul(g * u, wd, transpose_b=True)
        return tf.matmul(x, head, transpose_b=True) + kv_sum

    step(x0).numpy()
    times: list[float] = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            step(x0).numpy()
        times.append((time.perf_counter() - started) / steps * 1000)
    return statistics.median(times)
