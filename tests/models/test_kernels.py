"""The C kernel on ggml blocks (tiercache.models.runtime.kernels): decoded weights equal
the reference dequantization bit for bit, products equal dequantize-then-multiply within
float rounding for every tile shape and remainder, bad arguments are refused, and a
forked child still computes."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tiercache.models import ModelManifest, quant
from tiercache.models.manifest import TensorInfo
from tiercache.models.runtime import kernels

TYPES = ("Q4_0", "Q4_1", "Q8_0")


def _blocks(name: str, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Random blocks of type ``name`` with finite, model-like scales."""
    rng = np.random.default_rng(seed)
    t = quant.GGML_TYPES[name]
    blocks = rng.integers(0, 256, size=(rows, cols // 32, t.block_bytes), dtype=np.uint8)
    scales = (rng.random((rows, cols // 32)) * 0.02 + 1e-4).astype(np.float16)
    blocks[..., 0:2] = scales.view(np.uint8).reshape(rows, cols // 32, 2)
    if name == "Q4_1":
        minima = (-rng.random((rows, cols // 32)) * 0.1).astype(np.float16)
        blocks[..., 2:4] = minima.view(np.uint8).reshape(rows, cols // 32, 2)
    return blocks


def _cpu_has_avx512() -> bool:
    flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    return all(f" {flag}" in flags for flag in ("avx512f", "avx512bw", "avx512dq"))


def test_the_extension_is_built_and_runs_its_vector_kernel_where_the_cpu_has_it() -> None:
    assert kernels.built()  # `make test` builds it: gcc is part of the machine
    assert kernels.available() == _cpu_has_avx512()


@pytest.mark.parametrize("plain", [False, True])
@pytest.mark.parametrize("name", TYPES)
def test_decoded_weights_equal_the_reference_bit_for_bit(name: str, plain: bool) -> None:
    """x = the identity: each output is one decoded weight times 1 plus zeros, exact."""
    if not plain and not kernels.available():
        plain = True  # (the vector kernel is checked where the CPU has it, above)
    blocks = _blocks(name, 37, 96, seed=1)
    eye = np.eye(96, dtype=np.float32)
    got = kernels.block_matmul(eye, blocks, plain=plain)
    assert np.array_equal(got, quant.dequantize(blocks).T)


@pytest.mark.parametrize("plain", [False, True])
@pytest.mark.parametrize("name", TYPES)
def test_products_equal_dequantize_then_multiply(name: str, plain: bool) -> None:
    rng = np.random.default_rng(2)
    # rows: every tile (4, 2, 1 and their remainders); outputs: chunks of 64, tiles of 4
    # and 8 with remainders; a split between two threads that is not a multiple of 8
    for rows, outputs, cols in [(1, 1, 32), (2, 5, 64), (3, 9, 96), (4, 64, 32),
                                (5, 67, 128), (16, 130, 576), (17, 13, 64), (33, 200, 96)]:
        blocks = _blocks(name, outputs, cols, seed=rows)
        x = rng.standard_normal((rows, cols), dtype=np.float32)
        want = x.astype(np.float64) @ quant.dequantize(blocks).T.astype(np.float64)
        for threads in (1, 2, 3):
            got = kernels.block_matmul(x, blocks, threads=threads, plain=plain)
            assert got.shape == (rows, outputs) and got.dtype == np.float32
            assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), (rows, outputs)
    out = np.full((2, 5), np.nan, np.float32)
    blocks = _blocks(name, 5, 64)
    x = rng.standard_normal((2, 64), dtype=np.float32)
    assert kernels.block_matmul(x, blocks, out) is out and not np.isnan(out).any()


def test_bad_arguments_are_refused_before_the_kernel_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = _blocks("Q4_1", 8, 64)
    x = np.ones((2, 64), np.float32)
    with pytest.raises(ValueError, match=r"x must be \[rows, 64\]"):
        kernels.block_matmul(np.ones((2, 32), np.float32), blocks)
    with pytest.raises(ValueError, match=r"x must be"):
        kernels.block_matmul(np.ones(64, np.float32), blocks)
    with pytest.raises(ValueError, match="not a Q4_0/Q4_1/Q8_0 block shard"):
        kernels.block_matmul(x, np.zeros((8, 2, 21), np.uint8))  # Q5_0's 22, K-quants: no
    with pytest.raises(ValueError, match="not a Q4_0/Q4_1/Q8_0 block shard"):
        kernels.block_matmul(x, np.zeros((8, 64), np.float32))
    with pytest.raises(ValueError, match="not a Q4_0/Q4_1/Q8_0 block shard"):
        kernels.block_matmul(x, blocks[:, ::-1])  # not C-contiguous
    for out in (np.empty((2, 7), np.float32), np.empty((2, 8), np.float64),
                np.empty((8, 2), np.float32).T):
        with pytest.raises(ValueError, match="out must be"):
            kernels.block_matmul(x, blocks, out)
    read_only = np.empty((2, 8), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="out must be"):
        kernels.block_matmul(x, blocks, read_only)
    # float64 or strided x is converted, not refused
    want = kernels.block_matmul(x, blocks)
    assert np.array_equal(kernels.block_matmul(x.astype(np.float64), blocks), want)
    monkeypatch.setattr(kernels, "_extension", None)
    assert not kernels.built() and not kernels.available()
    with pytest.raises(RuntimeError, match="not built"):
        kernels.block_matmul(x, blocks)
    with pytest.raises(ValueError, match="extension was not built"):
        kernels.wanted(True)


def test_kernels_argument_is_checked() -> None:
    assert kernels.wanted(None) is False and kernels.wanted(False) is False
    with pytest.raises(ValueError, match="compile=False"):
        kernels.wanted(True, compile=False)
    assert kernels.wanted(True) is True  # built: the plain kernel where AVX-512 is not


def test_a_native_manifest_suits_the_kernel() -> None:
    def manifest(encoding: str | None, prefix: str = "") -> ModelManifest:
        info = TensorInfo(shape=(64, 64), dtype="uint8" if encoding else "float32",
                          nbytes=0, encoding=encoding)
        return ModelManifest(architecture="llama", key_prefix=prefix,
                             tensors={f"{prefix}blk.0.attn_q.weight": info})

    ok = kernels.available()
    assert kernels.suits(manifest("Q4_1")) is ok
    assert kernels.suits(manifest("Q8_0", prefix="m/")) is ok
    assert not kernels.suits(manifest("Q4_1"), compile=False)
    assert not kernels.suits(manifest("Q4_K")) and not kernels.suits(manifest(None))
    assert not kernels.suits(ModelManifest(architecture="llama"))
    unprefixed = manifest("Q4_1")
    unprefixed.key_prefix = "m/"  # the manifest's keys carry the prefix: this one's do not
    assert not kernels.suits(unprefixed)


def _child_product(queue: multiprocessing.Queue[object]) -> None:
    blocks = _blocks("Q4_1", 70, 64)
    x = np.ones((5, 64), np.float32)
    queue.put((kernels._threads, kernels.block_matmul(x, blocks)))


def test_a_forked_child_computes_on_one_thread() -> None:
    """GNU OpenMP's thread pool does not survive fork: the child runs one thread."""
    blocks = _blocks("Q4_1", 70, 64)
    want = kernels.block_matmul(np.ones((5, 64), np.float32), blocks)  # the pool exists
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[object] = context.Queue()
    child = context.Process(target=_child_product, args=(queue,))
    child.start()
    result: Any = queue.get(timeout=60)
    threads, got = result
    child.join(timeout=60)
    assert child.exitcode == 0 and threads == 1
    assert np.array_equal(got, want) or np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def _attention_reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, keys: np.ndarray,
                         values: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray:
    """float64 softmax attention of one token per row, head by head."""
    b, _, heads, hd = q.shape
    kv = k.shape[2]
    out = np.zeros((b, 1, heads * hd))
    for row in range(b):
        for h in range(heads):
            g = h // (heads // kv)
            ks = np.concatenate([keys[row, g].T, k[row, :, g]]).astype(np.float64)
            vs = np.concatenate([values[row, g], v[row, :, g]]).astype(np.float64)
            scores = ks @ q[row, 0, h] * scale + np.append(mask[row], 0.0)
            p = np.exp(scores - scores.max())
            out[row, 0, h * hd:(h + 1) * hd] = (p / p.sum()) @ vs
    return out


def test_one_token_attention_equals_softmax_attention() -> None:
    rng = np.random.default_rng(5)
    for b, heads, kv, hd, s, held in [(1, 4, 2, 16, 64, 3), (16, 9, 3, 64, 64, 40),
                                      (3, 4, 4, 8, 128, 0), (2, 6, 1, 32, 64, 64)]:
        q = rng.standard_normal((b, 1, heads, hd), dtype=np.float32)
        k = rng.standard_normal((b, 1, kv, hd), dtype=np.float32)
        v = rng.standard_normal((b, 1, kv, hd), dtype=np.float32)
        keys = rng.standard_normal((b, kv, hd, s), dtype=np.float32)
        values = rng.standard_normal((b, kv, s, hd), dtype=np.float32)
        mask = np.full((b, s), -np.inf, np.float32)
        mask[:, :held] = 0.0  # positions past each row's length are masked
        got = kernels.attend_one_token(q, k, v, keys, values, mask, 0.125, threads=2)
        want = _attention_reference(q, k, v, keys, values, mask, 0.125)
        assert got.shape == (b, 1, heads * hd)
        assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    with pytest.raises(ValueError, match=r"values must be \(2, 1, 63, 32\)"):
        kernels.attend_one_token(q, k, v, keys[..., :-1], values, mask, 0.125)
    with pytest.raises(ValueError, match="mask must be"):
        kernels.attend_one_token(q, k, v, keys, values, mask[:1], 0.125)
    with pytest.raises(ValueError, match="q must be"):
        kernels.attend_one_token(np.concatenate([q, q], axis=1), k, v, keys, values, mask, 1.0)


def test_concurrent_products_from_several_threads_are_exact() -> None:
    """Each calling thread gets its own OpenMP team: four threads at once, every result
    bit for bit what one thread alone gets."""
    import threading

    blocks = _blocks("Q4_1", 700, 576, seed=7)
    rng = np.random.default_rng(8)
    xs = [rng.standard_normal((rows, 576), dtype=np.float32) for rows in (1, 5, 16)]
    want = [kernels.block_matmul(x, blocks) for x in xs]
    wrong: list[int] = []

    def work(offset: int) -> None:
        for i in range(60):
            j = (offset + i) % len(xs)
            if not np.array_equal(kernels.block_matmul(xs[j], blocks), want[j]):
                wrong.append(j)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads) and wrong == []


def test_the_lean_call_equals_the_checked_one_and_still_refuses_wrong_sizes() -> None:
    blocks = _blocks("Q8_0", 37, 96, seed=9)
    x = np.random.default_rng(9).standard_normal((5, 96), dtype=np.float32)
    assert np.array_equal(kernels.block_matmul_lean(x, blocks), kernels.block_matmul(x, blocks))
    with pytest.raises(ValueError, match="buffer sizes do not match"):
        kernels.block_matmul_lean(np.ones((5, 64), np.float32), blocks)
    with pytest.raises(ValueError, match="not C-contiguous"):  # the buffer protocol refuses it
        kernels.block_matmul_lean(np.ones((96, 5), np.float32).T, blocks)
