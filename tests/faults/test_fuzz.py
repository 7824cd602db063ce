"""Bad input: fuzz every parser of untrusted bytes with hypothesis.

Each reader must either succeed or raise its one documented error -- never
anything else (no IndexError, struct.error, MemoryError, UnicodeDecodeError...):

- the shard codec (``decode_header``, ``decode``) and the disk stores' read paths
  (diskcache value files, the packed store's data file):
  :class:`~tiercache.errors.CorruptShardError`;
- trace files (CSV, ARC ``.lis``, ``.npy``, plain or ``.gz`` / ``.zst``):
  :class:`~tiercache.errors.TraceError`;
- model files (safetensors, GGUF importers in ``tiercache.models``):
  :class:`~tiercache.errors.ModelFormatError`;
- origins (``.npy`` folder, safetensors file): :class:`~tiercache.errors.StoreError`.

Inputs are random bytes and, more usefully, valid files with bytes flipped,
overwritten, inserted, cut or appended. ``TIERCACHE_FUZZ_EXAMPLES`` scales the
number of examples (default 1 = the committed budget: 300 per test, about 8 s).

Reproducible and bounded: every property runs with ``derandomize=True`` (the
same examples on every run and machine, no example database) and in a forked
child under ``RLIMIT_AS`` (``memcap.run_capped``, :data:`FUZZ_CAP_BYTES` above
what the child starts with), so a parser that allocates from a damaged length
fails its test instead of taking the machine down (one ``make test`` was
OOM-killed at 23.6 GB in the GGUF property before the importer checked its
header). TensorFlow is never imported in the children.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
import re
import sqlite3
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memcap import run_capped

from tiercache import codec
from tiercache.errors import CorruptShardError, ModelFormatError, StoreError, TraceError
from tiercache.models.importers.base import DictSink
from tiercache.models.importers.gguf import import_gguf
from tiercache.models.importers.safetensors import import_safetensors
from tiercache.origins import NpyDirOrigin, SafetensorsOrigin, npy_filename
from tiercache.sim.traces import Trace, read_trace, write_trace_csv
from tiercache.stores.diskcache_store import DiskcacheStore
from tiercache.stores.packed import PackedStore

pytestmark = pytest.mark.slow  # about 20 s: 300 examples per parser

SCALE = int(os.environ.get("TIERCACHE_FUZZ_EXAMPLES", "1"))
FUZZ = settings(deadline=None, max_examples=300 * SCALE, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: Address space a property's child may add to what it inherits (far above a parser's
#: needs for these small inputs, far below the machine's memory).
FUZZ_CAP_BYTES = 1 << 30
#: A property (300 examples, or a failure and its shrinking) must end within this.
FUZZ_TIMEOUT_S = 180.0 * SCALE
def in_capped_child(prop: Callable[[], None]) -> None:
    """Run the hypothesis property ``prop`` (all its examples) in a forked child under the
    memory cap; fail with the child's error -- hypothesis's falsifying example included --
    or with the signal, MemoryError or timeout that stopped it."""
    result = run_capped(prop, limit_bytes=FUZZ_CAP_BYTES, timeout_s=FUZZ_TIMEOUT_S)
    assert result.ok, f"the property failed in its capped child: {result.describe()}"


# -- mutations of a valid file -------------------------------------------------------------

Mutation = tuple[str, int, bytes]
MUTATIONS = st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "cut", "append",
                                                 "truncate"]),
                               st.integers(0, 1 << 20), st.binary(min_size=1, max_size=8)),
                     min_size=1, max_size=4)


def mutate(data: bytes, mutations: list[Mutation]) -> bytes:
    """Apply byte-level damage; positions wrap around the current length."""
    out = bytearray(data)
    for kind, pos, payload in mutations:
        n = len(out)
        i = pos % n if n else 0
        if kind == "flip" and n:
            out[i] ^= payload[0] or 1
        elif kind == "set" and n:
            out[i:i + len(payload)] = payload
        elif kind == "insert":
            out[i:i] = payload
        elif kind == "cut" and n:
            del out[i:i + len(payload) * 17]
        elif kind == "append":
            out += payload * (pos % 64 + 1)
        elif kind == "truncate":
            del out[i:]
    return bytes(out)


def _only(expected: type[BaseException] | tuple[type[BaseException], ...], name: str,
          call: Callable[[], Any]) -> Any:
    """Run ``call``; let ``expected`` pass (it is the documented failure), fail on any other
    -- and on an ``expected`` error raised while handling a MemoryError or RecursionError (a
    parser that wraps "ran out of memory" in its own error still allocated from the input)."""
    try:
        return call()
    except expected as exc:
        context = exc.__context__
        while context is not None:
            if isinstance(context, (MemoryError, RecursionError)):
                raise AssertionError(f"{name}: {type(exc).__name__} came from a "
                                     f"{type(context).__name__}: {exc}") from exc
            context = context.__context__
        return None


# -- the shard codec -----------------------------------------------------------------------

ARRAY = np.arange(300, dtype=np.float32).reshape(20, 15)
ENCODED = codec.encode("blk.0.w", ARRAY)
ENCODED_WITH_KEY = codec.encode("x" * 600, ARRAY[:2], store_key=True)


@FUZZ
@given(data=st.binary(max_size=700))
def _decode_random_bytes(data: bytes) -> None:
    _only(CorruptShardError, "codec.decode_header random", lambda: codec.decode_header(data))
    _only(CorruptShardError, "codec.decode random", lambda: codec.decode(data, "k"))


def test_decode_header_random_bytes_only_corrupt_shard_error() -> None:
    in_capped_child(_decode_random_bytes)


@FUZZ
@given(body=st.binary(min_size=56, max_size=400), length=st.integers(0, 2**32 - 1))
def _decode_plausible_prefix(body: bytes, length: int) -> None:
    data = codec.MAGIC + (1).to_bytes(2, "little") + body[:2] + \
        (length - length % 64).to_bytes(4, "little") + body[2:]
    _only(CorruptShardError, "codec.decode_header prefix", lambda: codec.decode_header(data))


def test_decode_header_with_a_plausible_prefix() -> None:
    """Magic and version right, everything else random: still only CorruptShardError."""
    in_capped_child(_decode_plausible_prefix)


@FUZZ
@given(mutations=MUTATIONS, which=st.booleans())
def _decode_damaged_shards(mutations: list[Mutation], which: bool) -> None:
    source, key = (ENCODED, "blk.0.w") if which else (ENCODED_WITH_KEY, "x" * 600)
    damaged = mutate(source, mutations)
    try:
        got = codec.decode(damaged, key)
    except CorruptShardError:
        return
    assert damaged == source, "damaged bytes decoded without an error"
    np.testing.assert_array_equal(got, ARRAY if which else ARRAY[:2])


def test_damaged_shards_never_decode_to_wrong_bytes() -> None:
    in_capped_child(_decode_damaged_shards)


def _diskcache_damaged_values() -> None:
    with tempfile.TemporaryDirectory() as tmp, DiskcacheStore(Path(tmp)) as store:
        _diskcache_property(store)


@FUZZ
@given(mutations=MUTATIONS, big=st.booleans())
def _diskcache_property(dc_store: DiskcacheStore, mutations: list[Mutation], big: bool) -> None:
    array = np.arange(20_000 if big else 200, dtype=np.float32)  # a value file or inline
    dc_store.put("k", array)
    filename = dc_store.value_file("k")
    original = filename.read_bytes() if filename else codec.encode("k", array)
    damaged = mutate(original, mutations)
    if filename:
        filename.write_bytes(damaged)
    else:
        with contextlib.closing(sqlite3.connect(dc_store.path / "cache.db")) as other, other:
            other.execute("UPDATE Cache SET value = ?", (damaged,))
    try:
        got = dc_store.get("k")
    except CorruptShardError:
        return
    assert damaged == original
    np.testing.assert_array_equal(got, array)


def test_diskcache_store_reads_damaged_values_as_corrupt() -> None:
    """The store's own read path (a file header read, fstat, readinto) on damaged values."""
    in_capped_child(_diskcache_damaged_values)


def _packed_damaged_bytes() -> None:
    with tempfile.TemporaryDirectory() as tmp, PackedStore(Path(tmp)) as store:
        _packed_property(store)


@FUZZ
@given(mutations=MUTATIONS, big=st.booleans())
def _packed_property(packed: PackedStore, mutations: list[Mutation], big: bool) -> None:
    array = np.arange(20_000 if big else 200, dtype=np.float32)  # page or 64-byte aligned
    packed.put("k", array)  # appended: a fresh entry at a fresh offset
    ((_key, offset, length),) = [row for row in packed.layout() if row[0] == "k"]
    data_path = packed.data_file
    with open(data_path, "r+b") as f:
        f.seek(offset)
        original = f.read(length)
        damaged = mutate(original, mutations)
        f.truncate(offset)  # never below bytes this process mapped for an earlier shard
        f.seek(offset)
        f.write(damaged)
    for read in (packed.get, packed.get_view):
        try:
            got = read("k")
        except CorruptShardError:
            continue
        assert damaged[:length] == original, "damaged bytes read without an error"
        np.testing.assert_array_equal(got, array)


def test_packed_store_reads_damaged_bytes_as_corrupt() -> None:
    """The packed store's read paths (header parse, length checks, copy and view) on damaged
    bytes of its data file: a shard's bytes rewritten in place, possibly cut short (the
    index row then points past the end) or longer (the row's length is what counts)."""
    in_capped_child(_packed_damaged_bytes)


# -- trace files ---------------------------------------------------------------------------


def _valid_traces(folder: Path) -> dict[str, bytes]:
    trace = Trace.from_keys([f"k{i % 7}" for i in range(40)], sizes=[100 + i for i in range(40)])
    write_trace_csv(trace, folder / "t.csv")
    csv = (folder / "t.csv").read_bytes()
    lis = "".join(f"{i * 8} {1 + i % 3} 0 {i}\n" for i in range(30)).encode()
    buf = io.BytesIO()
    np.save(buf, np.array([[i % 9, 64 + i] for i in range(30)], dtype=np.int64))
    return {".csv": csv, ".lis": lis, ".npy": buf.getvalue()}


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return _valid_traces(tmp_path_factory.mktemp("traces"))


def _compress(data: bytes, kind: str) -> bytes:
    if kind == ".gz":
        return gzip.compress(data)
    if kind == ".zst":
        zstandard = pytest.importorskip("zstandard")
        return bytes(zstandard.ZstdCompressor().compress(data))
    return data


@FUZZ
@given(ext=st.sampled_from([".csv", ".lis", ".npy"]), comp=st.sampled_from(["", ".gz", ".zst"]),
       mutations=MUTATIONS, damage_compressed=st.booleans(), random=st.booleans(),
       noise=st.binary(max_size=300))
def _trace_property(traces: dict[str, bytes], folder: Path, ext: str, comp: str,
                    mutations: list[Mutation], damage_compressed: bool, random: bool,
                    noise: bytes) -> None:
    if random:
        data = noise
    elif damage_compressed:
        data = mutate(_compress(traces[ext], comp), mutations)
    else:
        data = _compress(mutate(traces[ext], mutations), comp)
    path = folder / f"fuzz{ext}{comp}"
    path.write_bytes(data)
    got = _only(TraceError, f"trace {ext}{comp}", lambda: read_trace(path))
    if got is not None:
        assert isinstance(got, Trace) and len(got) > 0


def test_trace_readers_only_raise_trace_error(traces: dict[str, bytes], tmp_path: Path) -> None:
    pytest.importorskip("zstandard")  # in the parent: a skip in the child would be an error
    in_capped_child(lambda: _trace_property(traces, tmp_path))


# -- model files (tiercache.models) ---------------------------------------------------------


@pytest.fixture(scope="module")
def safetensors_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from safetensors.numpy import save_file

    path = tmp_path_factory.mktemp("st") / "m.safetensors"
    save_file({"emb": np.arange(64, dtype=np.float32).reshape(8, 8),
               "bias": np.arange(8, dtype=np.float16), "ids": np.arange(5, dtype=np.int64)},
              str(path), metadata={"format": "np"})
    return path.read_bytes()


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from gguf_fixtures import write_tiny_gguf

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path, layers=1, dim=32, ffn=64)
    return path.read_bytes()


#: A JSON value where the header wants a whole number: huge, negative, float (inf is
#: written as 1e400), bool, text.
JSON_NUMBERS = st.one_of(st.integers(0, 64), st.sampled_from([-1, 2**32, 2**63, 2**64, 2**70]),
                         st.integers(-(2**70), 2**70), st.booleans(),
                         st.sampled_from([math.inf, 2.0, 0.5]), st.floats(allow_nan=False),
                         st.just("44"), st.none())


@st.composite
def header_entries(draw: st.DrawFn) -> dict[str, Any]:
    """A valid safetensors entry (U8 or F32, offsets that fit the shape), then maybe one
    field -- dtype, a dimension, the shape, an offset, the offsets -- made hostile."""
    dtype = draw(st.sampled_from(["U8", "F32"]))
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    begin = draw(st.integers(0, 16))
    entry: dict[str, Any] = {"dtype": dtype, "shape": shape,
                             "data_offsets": [begin, begin + math.prod(shape) *
                                              (1 if dtype == "U8" else 4)]}
    which = draw(st.sampled_from(["none", "dtype", "dim", "shape", "offset", "offsets"]))
    if which == "dtype":
        entry["dtype"] = draw(st.one_of(st.sampled_from(["C64", "BF16", ""]), JSON_NUMBERS))
    elif which == "dim" and shape:
        shape[draw(st.integers(0, len(shape) - 1))] = draw(JSON_NUMBERS)
    elif which == "shape":
        entry["shape"] = draw(st.one_of(JSON_NUMBERS, st.lists(JSON_NUMBERS, max_size=40)))
    elif which == "offset":
        entry["data_offsets"][draw(st.integers(0, 1))] = draw(JSON_NUMBERS)
    elif which == "offsets":
        entry["data_offsets"] = draw(st.one_of(JSON_NUMBERS, st.lists(JSON_NUMBERS,
                                                                      max_size=3)))
    return entry


@FUZZ
@given(mutations=MUTATIONS, random=st.booleans(), noise=st.binary(max_size=400),
       structured=st.booleans(), entries=st.dictionaries(st.text(max_size=3), header_entries(),
                                                         min_size=1, max_size=3),
       data_len=st.integers(0, 64))
def _safetensors_property(original: bytes, folder: Path, mutations: list[Mutation],
                          random: bool, noise: bytes, structured: bool,
                          entries: dict[str, Any], data_len: int) -> None:
    """Damaged valid files, random bytes, and well-formed JSON headers whose dtypes, shapes
    and offsets are random values (huge, negative, floats such as 1e400, strings)."""
    path = folder / "m.safetensors"
    if structured:
        blob = json.dumps(entries).replace("Infinity", "1e400").encode("utf-8", "surrogatepass")
        path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(data_len))
    else:
        path.write_bytes(noise if random else mutate(original, mutations))
    _only(ModelFormatError, "safetensors import",
          lambda: import_safetensors(path, DictSink(), progress=False))


def test_safetensors_importer_only_raises_model_format_error(safetensors_bytes: bytes,
                                                             tmp_path: Path) -> None:
    in_capped_child(lambda: _safetensors_property(safetensors_bytes, tmp_path))


#: A count or length field: mostly small, sometimes near a power of two, sometimes huge.
LENGTHS = st.one_of(st.integers(0, 64), st.integers(0, 63).map(lambda b: 1 << b),
                    st.integers(0, 2**64 - 1))


_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


@st.composite
def gguf_headers(draw: st.DrawFn) -> bytes:
    """A GGUF header laid out as the format says -- magic, version 3, counts, then keys
    with typed values -- whose counts, string lengths, value types and array lengths are
    drawn from :data:`LENGTHS` (often huge), followed by a few random bytes."""
    parts = []
    n_fields = draw(st.integers(0, 4))
    for _ in range(n_fields):
        kind = draw(st.sampled_from([4, 6, 8, 8, 9, 9, 9, 13]))
        key = draw(st.sampled_from([b"a.bc", b"general.alignment", b"llama.block_count"]))
        part = struct.pack("<Q", len(key)) + key + struct.pack("<I", kind)
        if kind == 8:
            part += struct.pack("<Q", draw(LENGTHS)) + b"text"
        elif kind == 9:
            item = draw(st.sampled_from([0, 4, 8, 9, 12, 13]))
            part += struct.pack("<IQ", item, draw(LENGTHS))
            part += bytes(_SCALAR_SIZES.get(item, 8)) * draw(st.integers(0, 3))
        else:
            part += bytes(_SCALAR_SIZES.get(kind, 4))
        parts.append(part)
    kv_count = draw(st.one_of(st.just(n_fields), LENGTHS))
    tensor_count = draw(st.one_of(st.just(0), st.just(1), LENGTHS))
    return (b"GGUF" + struct.pack("<IQQ", 3, tensor_count, kv_count) + b"".join(parts)
            + draw(st.binary(max_size=40)))


@FUZZ
@given(mutations=MUTATIONS, random=st.booleans(), noise=st.binary(max_size=400),
       plausible=st.booleans(), header=gguf_headers())
def _gguf_property(original: bytes, folder: Path, mutations: list[Mutation], random: bool,
                   noise: bytes, plausible: bool, header: bytes) -> None:
    """Damaged valid files, random bytes, and plausible headers with hostile counts and
    lengths (:func:`gguf_headers`)."""
    data = header if plausible else noise if random else mutate(original, mutations)
    path = folder / "m.gguf"
    path.write_bytes(data)
    _only(ModelFormatError, "gguf import", lambda: import_gguf(path, DictSink(), progress=False))


def test_gguf_importer_only_raises_model_format_error(gguf_bytes: bytes, tmp_path: Path) -> None:
    in_capped_child(lambda: _gguf_property(gguf_bytes, tmp_path))


# -- origins -------------------------------------------------------------------------------


@FUZZ
@given(mutations=MUTATIONS, random=st.booleans(), noise=st.binary(max_size=300))
def _npy_origin_property(folder: Path, mutations: list[Mutation], random: bool,
                         noise: bytes) -> None:
    buf = io.BytesIO()
    np.save(buf, np.arange(50, dtype=np.float32).reshape(5, 10))
    (folder / npy_filename("w")).write_bytes(noise if random else mutate(buf.getvalue(),
                                                                          mutations))
    got = _only(StoreError, "npy origin", lambda: NpyDirOrigin(folder).get("w"))
    assert got is None or isinstance(got, np.ndarray)


def test_npy_origin_only_raises_store_error(tmp_path: Path) -> None:
    in_capped_child(lambda: _npy_origin_property(tmp_path))


@FUZZ
@given(mutations=MUTATIONS, random=st.booleans(), noise=st.binary(max_size=400))
def _safetensors_origin_property(original: bytes, folder: Path, mutations: list[Mutation],
                                 random: bool, noise: bytes) -> None:
    path = folder / "o.safetensors"
    path.write_bytes(noise if random else mutate(original, mutations))

    def read() -> None:
        origin = SafetensorsOrigin(path)
        for key in origin.keys():
            origin.get(key)

    _only(StoreError, "safetensors origin", read)


def test_safetensors_origin_only_raises_store_error(safetensors_bytes: bytes,
                                                    tmp_path: Path) -> None:
    in_capped_child(lambda: _safetensors_origin_property(safetensors_bytes, tmp_path))


# -- regressions the fuzzer found ------------------------------------------------------------


def test_a_damaged_lis_n_blocks_is_an_error_not_an_allocation_of_terabytes(tmp_path: Path) -> None:
    """One flipped digit in n_blocks once made read_trace ask numpy for ~23 GB (OOM kill)."""
    path = tmp_path / "bomb.lis"
    path.write_text("0 1 0 0\n8 99999999999 0 1\n16 1 0 2\n")
    result = run_capped(read_trace, path, limit_bytes=FUZZ_CAP_BYTES, timeout_s=60)
    assert result.error_type == "TraceError", result.describe()
    assert re.search(r"bomb\.lis:2: n_blocks 99,?999,?999,?999", result.error_message or "")


def test_a_damaged_npy_trace_header_is_a_trace_error(tmp_path: Path) -> None:
    """numpy's header parser raised tokenize.TokenError, which escaped the reader."""
    buf = io.BytesIO()
    np.save(buf, np.arange(10, dtype=np.int64))
    data = bytearray(buf.getvalue())
    data[data.index(b"}")] = ord("(")  # unbalanced header dict
    (tmp_path / "t.npy").write_bytes(bytes(data))
    with pytest.raises(TraceError, match=r"not a readable \.npy array"):
        read_trace(tmp_path / "t.npy")
    (tmp_path / "origin").mkdir()
    (tmp_path / "origin" / npy_filename("w")).write_bytes(bytes(data))
    with pytest.raises(StoreError, match="unreadable"):
        NpyDirOrigin(tmp_path / "origin").get("w")


def test_a_text_key_row_in_a_diskcache_tier_is_corrupt_not_a_type_error(tmp_path: Path) -> None:
    import diskcache

    with DiskcacheStore(tmp_path / "d") as store:
        store.put("k", np.arange(4, dtype=np.int8))
    foreign = diskcache.Cache(str(tmp_path / "d"))
    foreign.set("text-key", b"raw")  # stored raw, but as a TEXT key
    foreign.close()
    # MediumDamagedError (a StoreError): the listing holds a row tiercache never writes
    with DiskcacheStore(tmp_path / "d") as store, pytest.raises(StoreError, match=r"cache\.db"):
        list(store.keys())


def test_a_damaged_gguf_block_count_is_an_error_not_gigabytes(gguf_bytes: bytes,
                                                               tmp_path: Path) -> None:
    """One flipped bit made llama.block_count 16,777,217: the importer built a shape table
    for every layer until memory ran out."""
    data = bytearray(gguf_bytes)
    at = data.index(b"llama.block_count") + len(b"llama.block_count") + 4  # after the type
    data[at:at + 4] = (0x01000001).to_bytes(4, "little")
    path = tmp_path / "m.gguf"
    path.write_bytes(bytes(data))
    result = run_capped(import_gguf, path, DictSink(), progress=False,
                        limit_bytes=FUZZ_CAP_BYTES, timeout_s=60)
    assert result.error_type == "ModelFormatError", result.describe()
    assert "'llama.block_count' is 16777217" in (result.error_message or "")
    data[at:at + 4] = (64).to_bytes(4, "little")  # in range, but more than the tensors hold
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="block_count says 64 layers, but the file has "
                                               "only 11 tensors"):
        import_gguf(path, DictSink(), progress=False)
