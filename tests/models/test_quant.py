"""tiercache.models.quant: ggml block shards, dequantized bit for bit like gguf-py's reference."""

from __future__ import annotations

import threading

import gguf
import gguf.quants
import numpy as np
import pytest

from tiercache.errors import ModelFormatError
from tiercache.models import quant
from tiercache.models.quant import (
    GGML_TYPES,
    dequantize,
    encoding_of,
    logical_shape,
    q8_0_error_bound,
    quantize,
    stored_shape,
)

BLOCK_NAMES = [name for name, t in GGML_TYPES.items() if t.blocked]


def reference(shard: np.ndarray, name: str) -> np.ndarray:
    """gguf-py's dequantization of the same bytes (the GGUF row layout: (rows, row bytes))."""
    qtype = gguf.GGMLQuantizationType[name]
    raw = shard.reshape(shard.shape[0], -1) if shard.ndim == 3 else shard
    if name == "BF16":
        raw = shard.view(np.uint8)
    return np.asarray(gguf.quants.dequantize(raw, qtype))


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))


def test_types_match_gguf_constants() -> None:
    for name, t in GGML_TYPES.items():
        qtype = gguf.GGMLQuantizationType[name]
        assert t.type_id == qtype.value
        assert (t.block_elems, t.block_bytes) == gguf.constants.GGML_QUANT_SIZES[qtype]
    assert {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "F16",
            "BF16"} <= set(GGML_TYPES)


@pytest.mark.parametrize("name", list(GGML_TYPES))
def test_dequantize_equals_gguf_bit_for_bit(name: str) -> None:
    # 70 x 1024 values: more than one chunk, so chunk boundaries are crossed
    t = GGML_TYPES[name]
    rng = np.random.default_rng(t.type_id)
    shard = quant.random_shard(t, 70, 1024, rng)
    assert quant.CHUNK_ELEMS < 70 * 1024
    ours = dequantize(shard)
    assert ours.dtype == np.float32 and ours.shape == (70, 1024)
    assert same_bits(ours, reference(shard, name))


@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_dequantize_random_bytes_with_extreme_scales(name: str) -> None:
    """Every byte random, scales including subnormal, zero, negative zero and large ones."""
    t = GGML_TYPES[name]
    rng = np.random.default_rng(100 + t.type_id)
    shard = rng.integers(0, 256, stored_shape(t, (9, t.block_elems * 3)), dtype=np.uint8)
    choices = np.array([0.0, -0.0, 6e-8, -3e-5, 1.0, -2.5, 60000.0, 1e-3], np.float16)
    for at in quant._F16_FIELDS[name]:
        field = rng.choice(choices, shard.shape[:2])
        shard[:, :, at:at + 2] = field.view(np.uint8).reshape(*shard.shape[:2], 2)
    assert same_bits(dequantize(shard), reference(shard, name))


def test_dequantize_writes_into_out_and_returns_it() -> None:
    rng = np.random.default_rng(5)
    shard = quant.random_shard(GGML_TYPES["Q4_1"], 6, 64, rng)
    out = np.full((6, 64), np.nan, np.float32)
    assert dequantize(shard, out=out) is out
    assert same_bits(out, reference(shard, "Q4_1"))
    flat = np.empty(6 * 64, np.float32)  # any shape with the right count, e.g. a manifest's
    assert dequantize(shard, out=flat) is flat
    assert same_bits(flat.reshape(6, 64), out)


@pytest.mark.parametrize("bad", [np.empty((6, 63), np.float32), np.empty((6, 64), np.float64),
                                 np.empty((64, 6), np.float32).T,
                                 np.empty((6, 64), np.float32)[:, ::1][::-1]])
def test_dequantize_refuses_an_unfit_out(bad: np.ndarray) -> None:
    shard = quant.random_shard(GGML_TYPES["Q8_0"], 6, 64, np.random.default_rng(0))
    with pytest.raises(ValueError, match="out must be"):
        dequantize(shard, out=bad)


def test_dequantize_plain_arrays() -> None:
    x = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    copy = dequantize(x)
    assert copy is not x and same_bits(copy, x)
    half = x.astype(np.float16)
    assert same_bits(dequantize(half), half.astype(np.float32))
    for other in (x.astype(np.float64), x.astype(">f4"), x.astype(">f2")):
        assert encoding_of(other) is None
        assert same_bits(dequantize(other), other.astype(np.float32))
    bf16 = quantize(x, "BF16")
    assert bf16.dtype == np.uint16 and bf16.shape == (3, 5)
    assert same_bits(dequantize(bf16), reference(bf16, "BF16").reshape(3, 5))


def test_every_float16_and_bfloat16_bit_pattern() -> None:
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).reshape(256, 256)
    half = bits.view(np.float16)
    assert same_bits(dequantize(half), half.astype(np.float32))    # NaNs, infinities too
    assert same_bits(dequantize(bits), reference(bits, "BF16").reshape(256, 256))


def test_encoding_of_and_logical_shape() -> None:
    assert encoding_of(np.zeros((2, 3), np.float32)) is None
    assert encoding_of(np.zeros((2, 3), np.float16)) is None
    assert encoding_of(np.zeros((2, 3), np.uint16)) is GGML_TYPES["BF16"]
    shard = np.zeros((576, 18, 20), np.uint8)
    assert encoding_of(shard) is GGML_TYPES["Q4_1"]
    assert logical_shape(shard) == (576, 576)
    assert logical_shape(np.zeros((4, 2, 210), np.uint8)) == (4, 512)
    assert logical_shape(np.zeros((7,), np.float32)) == (7,)
    for name in BLOCK_NAMES:
        t = GGML_TYPES[name]
        assert encoding_of(np.zeros(stored_shape(t, (3, t.block_elems * 2)), np.uint8)) is t


@pytest.mark.parametrize("array, message", [
    (np.zeros((4, 20), np.uint8), "rows, blocks, block_bytes"),
    (np.zeros((4, 2, 19), np.uint8), "19 bytes"),
    (np.zeros((4, 2), np.int32), "int32"),
    (np.zeros((4, 2), np.uint16).astype(">u2"), ">u2"),
])
def test_encoding_of_refuses_other_arrays(array: np.ndarray, message: str) -> None:
    with pytest.raises(ModelFormatError, match=message):
        encoding_of(array)
    with pytest.raises(ValueError, match=message):
        dequantize(array)


def test_stored_shape() -> None:
    assert stored_shape(GGML_TYPES["Q8_0"], (2, 3, 64)) == (6, 2, 34)
    assert stored_shape(GGML_TYPES["Q6_K"], (512,)) == (1, 2, 210)
    assert stored_shape(GGML_TYPES["F16"], (2, 3)) == (2, 3)
    with pytest.raises(ValueError, match="multiple of 32"):
        stored_shape(GGML_TYPES["Q4_0"], (2, 48))


def q8_cases() -> np.ndarray:
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((40, 256)) * rng.uniform(1e-3, 50, (40, 1))).astype(np.float32)
    x[0] = 0.0                                   # an all-zero block: scale 0
    x[1, :32] = np.arange(32) - 16.5             # values that land on halves
    x[2, :32] = -127 / 2 * np.linspace(-1, 1, 32)
    x[3] = 1e-6 * np.sign(x[3])                  # float16-subnormal scales
    x[4, :32] = 127.0 * np.arange(32) / 31 * 1000
    return x


def test_quantize_q8_0_equals_gguf_bytes() -> None:
    x = q8_cases()
    ours = quantize(x, "Q8_0")
    assert ours.dtype == np.uint8 and ours.shape == (40, 8, 34)
    theirs = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)
    assert np.array_equal(ours.reshape(40, -1), theirs)
    assert same_bits(dequantize(ours), reference(ours, "Q8_0"))


def test_quantize_q8_0_error_bound() -> None:
    x = q8_cases()
    err = np.abs(x - dequantize(quantize(x, "Q8_0"))).reshape(40, 8, 32).max(axis=2)
    bound = q8_0_error_bound(x)
    assert (err <= bound).all()
    d = np.abs(x.reshape(40, 8, 32)).max(axis=2) / 127
    normal = d > 2 ** -14 * 2
    assert (bound[normal] <= 0.5625 * d[normal]).all()   # d/2 + 127 * 2**-11 d
    assert (err[normal] > 0.3 * d[normal]).any()          # the bound is not vacuous


def test_quantize_other_types() -> None:
    x = q8_cases()
    assert np.array_equal(quantize(x[5:], "F16"), x[5:].astype(np.float16))
    assert np.array_equal(quantize(x, "F32"), x)
    bf = quantize(x, "BF16")
    ref = gguf.quants.quantize(x, gguf.GGMLQuantizationType.BF16)
    assert np.array_equal(bf.view(np.uint8), ref)
    special = np.array([np.nan, np.inf, -np.inf, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8], np.float32)
    ref_special = gguf.quants.quantize(special, gguf.GGMLQuantizationType.BF16)
    assert np.array_equal(quantize(special, "BF16").view(np.uint8), ref_special)


@pytest.mark.parametrize("array, name, message", [
    (np.ones((2, 48), np.float32), "Q8_0", "multiple of 32"),
    (np.full((1, 32), np.nan, np.float32), "Q8_0", "finite"),
    (np.full((1, 32), 3e38, np.float32), "Q8_0", "overflows"),
    (np.full((1, 2), 7e4, np.float32), "F16", "beyond"),
    (np.ones((1, 32), np.float32), "Q4_1", "cannot quantize to 'Q4_1'"),
    (np.ones((1, 32), np.float32), "Q9", "cannot quantize"),
    (np.ones((1, 32), np.int32), "Q8_0", "float array"),
])
def test_quantize_refuses(array: np.ndarray, name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        quantize(array, name)


def test_dequantize_from_threads() -> None:
    rng = np.random.default_rng(9)
    shards = [quant.random_shard(GGML_TYPES[n], 64, 1024, rng) for n in ("Q4_1", "Q6_K")]
    expected = [dequantize(s) for s in shards]
    outs = [np.empty((64, 1024), np.float32) for _ in range(4)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(5):
                dequantize(shards[i % 2], out=outs[i])
                assert same_bits(outs[i], expected[i % 2])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors


def test_bench_reports_every_type() -> None:
    result = quant.bench(rows=8, cols=256, repeat=1, threads=2,
                         reference=lambda a, name: reference(a, name))
    assert set(result) == set(GGML_TYPES)
    assert all(ours > 0 and theirs is not None and theirs > 0
               for ours, theirs in result.values())


@pytest.mark.tf
@pytest.mark.parametrize("encoding", ["Q4_0", "Q4_1", "Q8_0"])
def test_products_on_blocks_in_tensorflow_match_dequantize_then_multiply(encoding: str) -> None:
    """qlinear's fused per-block sums (few rows) and in-graph dequantization (more rows),
    compiled by XLA or not, equal numpy's exact dequantization times the input up to
    float rounding; the in-graph dequantized matrix equals quant.dequantize's."""
    import tensorflow as tf
    from gguf import GGMLQuantizationType, quants

    from tiercache.models.runtime.qlinear import dequantized, is_tf_block, quantized_linear

    rng = np.random.default_rng(7)
    weights = (rng.standard_normal((96, 128)) * 0.05).astype(np.float32)
    blocks = quants.quantize(weights, getattr(GGMLQuantizationType, encoding))
    blocks = np.ascontiguousarray(blocks.reshape(96, 4, -1))
    assert is_tf_block(blocks.dtype, blocks.shape)
    assert not is_tf_block(np.dtype(np.float32), (96, 128))
    exact = quant.dequantize(blocks)
    graph_w = tf.function(lambda b: dequantized(tf, b))(tf.constant(blocks)).numpy()
    assert np.array_equal(graph_w, exact)  # same formula, same float32 roundings
    for xla in (True, False):
        fn = tf.function(lambda x, b: quantized_linear(tf, x, b), jit_compile=xla)
        for rows in (1, 2, 4, 16):
            x = rng.standard_normal((rows, 128)).astype(np.float32)
            got = fn(tf.constant(x), tf.constant(blocks)).numpy()
            want = x @ exact.T
            assert got.shape == (rows, 96)
            assert np.abs(got - want).max() <= 1e-5 * max(1.0, float(np.abs(want).max()))
