"""Multi-tier simulation: a TOML layout, a trace, a virtual clock -- no disk touched.

:func:`simulate_tiers` predicts, for a cache layout (the same TOML/dict
:func:`tiercache.config.load_config` reads), what share of the requests each
tier would serve and how long each request would take. The behaviour is
*literally the engine's*: it builds a real :class:`tiercache.TieredCache` over
real :class:`tiercache.core.tier.Tier` objects with the configured policies,
capacities, promotion rules and mode, and only swaps the media for
:class:`SimStore`, a metadata-only stand-in that keeps each shard's size and
charges every read, write and delete the engine performs to a
:class:`VirtualClock` by a per-tier :class:`TierModel` (latency plus bytes
over bandwidth). Every trace request is one ``cache.get(key)``; a key in no
tier comes from a stand-in origin (also charged) and is admitted at the top,
exactly as in a real run with an origin.

Shards are stood for by zero-stride numpy arrays (``nbytes`` as in the trace,
no memory behind them), so a multi-GiB layout simulates in a few MiB. Sizes
count as the real stores count them: the buffer plus a per-entry overhead in
memory tiers (:func:`tiercache.stores.memory.shard_cost_nbytes`), header plus
payload (:func:`tiercache.codec.stored_nbytes`) in disk tiers.

Differences from a real run, all by design:

* the engine's scratch buffer for demotions out of a disk tier is allocated
  (as in a real run) but never written, so it costs address space only;
* checksums, lmdb map growth, diskcache's SQLite rows, the page cache and
  concurrency (prefetch threads, reads racing puts) are not modelled: one
  request runs at a time and costs exactly what its I/O costs under the model;
* the engine's own CPU time is not counted (``overhead_s`` adds a fixed
  amount per request if wanted);
* the ``latency`` percentiles in :meth:`TieredCache.stats` are wall time of
  the simulation itself and are replaced by virtual times in the result.

The default models (:data:`DEFAULT_MODELS`) stand for RAM, an SSD and an HDD
behind the three backends, from the measurements in the machine-facts lab note; override any
field per tier name, per backend, or for ``"origin"``.

Thread-safety: a simulation owns all its objects; run one per thread.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from .. import codec
from ..config import CacheConfig, load_config
from ..core.tier import Tier
from ..errors import ConfigError, PolicyError, SimulationError
from ..origins import Origin
from ..stores.base import ShardInfo, Store
from ..stores.memory import shard_cost_nbytes
from ..units import parse_size
from .replay import ProgressFn
from .traces import Trace, read_trace

__all__ = ["DEFAULT_MODELS", "DEFAULT_ORIGIN_MODEL", "SimOrigin", "SimStore", "TierModel",
           "TierReport", "TierSimResult", "VirtualClock", "load_models", "simulate_tiers"]


# --- the cost model -------------------------------------------------------------------------


@dataclass(frozen=True)
class TierModel:
    """Time one operation takes on a medium: ``latency + nbytes / bandwidth``.

    ``zero_copy_reads``: a read without a destination buffer hands back the
    stored array itself (the memory store), costing the latency only.
    ``math.inf`` bandwidth means "free per byte". Immutable.
    """

    read_latency_s: float
    read_bytes_per_s: float
    write_latency_s: float
    write_bytes_per_s: float
    delete_s: float = 0.0
    zero_copy_reads: bool = False

    def read_s(self, nbytes: int, *, copy: bool = True) -> float:
        """Seconds to read ``nbytes`` (latency only for a zero-copy read). O(1)."""
        if not copy and self.zero_copy_reads:
            return self.read_latency_s
        return self.read_latency_s + nbytes / self.read_bytes_per_s

    def write_s(self, nbytes: int, *, copy: bool = True) -> float:
        """Seconds to write ``nbytes`` (latency only when the store adopts an array). O(1)."""
        if not copy and self.zero_copy_reads:
            return self.write_latency_s
        return self.write_latency_s + nbytes / self.write_bytes_per_s

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, base: TierModel | None = None,
                     where: str = "model") -> TierModel:
        """A model from a TOML-like table; fields not given keep ``base``'s values.

        Times are seconds (``1e-4``) or strings with a unit (``"100us"``,
        ``"8ms"``, ``"1s"``); bandwidths are bytes per second (``1.6e9``) or
        sizes (``"1.6GB"``, ``"105MB/s"``). Raises :class:`ConfigError` naming
        ``where`` and the key.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in data.items():
            if key not in fields:
                raise ConfigError(f"unknown key {key!r} (known: {', '.join(sorted(fields))})",
                                  key=f"{where}.{key}")
            try:
                if key == "zero_copy_reads":
                    if not isinstance(raw, bool):
                        raise ValueError(f"must be true or false, got {raw!r}")
                    values[key] = raw
                elif key.endswith("_per_s"):
                    values[key] = _parse_rate(raw)
                else:
                    values[key] = _parse_seconds(raw)
            except ValueError as exc:
                raise ConfigError(str(exc), key=f"{where}.{key}") from None
        if base is None:
            missing = fields - set(values) - {"delete_s", "zero_copy_reads"}
            if missing:
                raise ConfigError(f"missing {', '.join(sorted(missing))} (no default model to "
                                  "fill them from)", key=where)
            return cls(**values)
        return dataclasses.replace(base, **values)


_TIME_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ns|us|µs|ms|s)?\s*$")
_TIME_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, None: 1.0}


def _parse_seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected seconds, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _TIME_RE.match(value)):
        seconds = float(m.group(1)) * _TIME_UNITS[m.group(2)]
    else:
        raise ValueError(f"expected seconds such as 1e-4 or \"100us\", got {value!r}")
    if seconds < 0 or math.isnan(seconds):
        raise ValueError(f"time must be >= 0, got {value!r}")
    return seconds


def _parse_rate(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected bytes per second, got {value!r}")
    if isinstance(value, (int, float)):
        rate = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.lower() in ("inf", "infinity"):
            return math.inf
        if text.endswith("/s"):
            text = text[:-2]
        rate = float(parse_size(text))
    else:
        raise ValueError(f"expected bytes per second such as 1.6e9 or \"1.6GB\", got {value!r}")
    if not rate > 0:
        raise ValueError(f"bandwidth must be > 0, got {value!r}")
    return rate


#: Per backend: ``memory`` = RAM (zero-copy hits; puts copy into fresh pages at
#: ~3 GB/s), ``lmdb`` = an NVMe SSD (100 µs, ~1.6 GB/s reads as measured for lmdb
#: ``get``), ``diskcache`` = an HDD (8 ms seek, ~105 MB/s, the throttled disk of
#: the machine-facts lab note), ``redis`` = a shared Redis over the network (~0.4 GB/s GETs with
#: redis-py, the machine-facts lab note). Override per tier or backend with ``models=``.
DEFAULT_MODELS: dict[str, TierModel] = {
    "memory": TierModel(read_latency_s=1e-6, read_bytes_per_s=10e9, write_latency_s=1e-6,
                        write_bytes_per_s=3e9, delete_s=0.0, zero_copy_reads=True),
    "lmdb": TierModel(read_latency_s=100e-6, read_bytes_per_s=1.6e9, write_latency_s=100e-6,
                      write_bytes_per_s=1.0e9, delete_s=50e-6),
    "diskcache": TierModel(read_latency_s=8e-3, read_bytes_per_s=105e6, write_latency_s=8e-3,
                           write_bytes_per_s=100e6, delete_s=1e-3),
    "redis": TierModel(read_latency_s=200e-6, read_bytes_per_s=0.4e9, write_latency_s=200e-6,
                       write_bytes_per_s=0.4e9, delete_s=200e-6),
}
#: The origin (a safetensors/.npy file on a cold disk: ~1 GB/s, the machine-facts lab note).
DEFAULT_ORIGIN_MODEL = TierModel(read_latency_s=1e-3, read_bytes_per_s=1.0e9,
                                 write_latency_s=0.0, write_bytes_per_s=math.inf)
#: Backends the engine does not know yet fall back to the SSD model.
_FALLBACK_MODEL = DEFAULT_MODELS["lmdb"]


def load_models(path: str | os.PathLike[str]) -> dict[str, Mapping[str, Any]]:
    """Read model overrides from a TOML file: one table per tier name, backend or
    ``origin``, e.g. ``[ssd]\\nread_latency_s = "80us"``. Raises ConfigError."""
    file = Path(path)
    try:
        with file.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("file not found", file=file) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the model file: {exc}", file=file) from None
    for name, table in data.items():
        if not isinstance(table, Mapping):
            raise ConfigError("must be a table of model fields", file=file, key=name)
    return data


# --- the virtual clock and the stand-in media ------------------------------------------------


class VirtualClock:
    """Simulated time: advanced by the stand-in stores, never by the wall clock.

    ``busy_s[name]`` accumulates the time charged to each medium. Not thread-safe.
    """

    def __init__(self) -> None:
        self.now_s = 0.0
        self.busy_s: dict[str, float] = {}
        self.ops: dict[str, int] = {}

    def charge(self, name: str, seconds: float) -> None:
        """Advance the clock by ``seconds`` spent on medium ``name``. O(1)."""
        self.now_s += seconds
        self.busy_s[name] = self.busy_s.get(name, 0.0) + seconds
        self.ops[name] = self.ops.get(name, 0) + 1


_ZERO = np.zeros(1, dtype=np.uint8)


def phantom(nbytes: int, dtype: np.dtype[Any] | None = None,
            shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A read-only array of ``nbytes`` (uint8, 1-D unless ``dtype``/``shape`` say
    otherwise) with no memory behind it: every element is the same zero (stride 0). O(1)."""
    base = _ZERO if dtype is None or dtype == _ZERO.dtype else np.zeros(1, dtype=dtype)
    if shape is None:
        shape = (nbytes // base.itemsize,)
    return np.lib.stride_tricks.as_strided(base, shape=shape, strides=(0,) * len(shape),
                                           writeable=False)


class SimStore(Store):
    """A metadata-only store: remembers each shard's dtype, shape and size, charges
    every operation to a :class:`VirtualClock`, holds no bytes.

    Subclasses fix ``backend`` and ``persistent`` (see :func:`sim_store_class`), so
    the engine treats a stand-in exactly as it treats the real medium (a memory
    tier is served under the lock with zero-copy hits, a disk tier is read
    outside it, and its capacity counts the shard header). O(1) per operation.
    Not thread-safe beyond what the engine's lock provides.
    """

    backend: ClassVar[str] = "memory"
    persistent: ClassVar[bool] = False

    def __init__(self, name: str, model: TierModel, clock: VirtualClock) -> None:
        self.name = name
        self.model = model
        self.clock = clock
        self._shards: dict[str, tuple[np.dtype[Any], tuple[int, ...], int]] = {}

    def get(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        entry = self._shards.get(key)
        if entry is None:
            return None
        dtype, shape, nbytes = entry
        self.clock.charge(self.name, self.model.read_s(nbytes, copy=out is not None))
        if out is not None:
            if out.nbytes != nbytes:
                raise ValueError(f"out has {out.nbytes} bytes; shard {key!r} has {nbytes}")
            return out
        return phantom(nbytes, dtype, shape)

    def _keep(self, key: str, array: np.ndarray, *, copy: bool) -> int:
        nbytes = int(array.nbytes)
        self._shards[key] = (array.dtype, tuple(array.shape), nbytes)
        stored = self.stored_size(array)
        self.clock.charge(self.name, self.model.write_s(stored, copy=copy))
        return stored

    def put(self, key: str, array: np.ndarray) -> int:
        return self._keep(key, array, copy=True)

    def adopt(self, key: str, array: np.ndarray) -> int:
        return self._keep(key, array, copy=not (self.model.zero_copy_reads
                                                and not self.persistent))

    def delete(self, key: str) -> bool:
        if self._shards.pop(key, None) is None:
            return False
        if self.model.delete_s:
            self.clock.charge(self.name, self.model.delete_s)
        return True

    def info(self, key: str) -> ShardInfo | None:
        entry = self._shards.get(key)
        if entry is None:
            return None
        dtype, shape, nbytes = entry
        return ShardInfo(dtype, shape, self._stored(nbytes, len(shape), dtype))

    def _stored(self, nbytes: int, ndim: int, dtype: np.dtype[Any]) -> int:
        if self.backend == "memory":  # what MemoryStore charges: its buffer + bookkeeping
            return shard_cost_nbytes(nbytes)
        return nbytes + (codec.header_nbytes(ndim, dtype) if self.persistent else 0)

    def keys(self) -> Iterator[str]:
        return iter(list(self._shards))

    def stored_size(self, array: np.ndarray) -> int:
        return self._stored(int(array.nbytes), array.ndim, array.dtype)

    def __contains__(self, key: object) -> bool:
        return key in self._shards

    def __len__(self) -> int:
        return len(self._shards)


_STORE_CLASSES: dict[str, type[SimStore]] = {}


def sim_store_class(backend: str, persistent: bool | None = None) -> type[SimStore]:
    """The :class:`SimStore` subclass standing for ``backend`` (memory: volatile;
    anything else: persistent unless told). Cached. O(1)."""
    if persistent is None:
        persistent = backend != "memory"
    key = f"{backend}:{persistent}"
    cls = _STORE_CLASSES.get(key)
    if cls is None:
        name = f"Sim{backend.title().replace('_', '')}Store"
        cls = type(name, (SimStore,), {"backend": backend, "persistent": persistent,
                                       "__module__": __name__})
        _STORE_CLASSES[key] = cls
    return cls


class SimOrigin(Origin):
    """The origin of a simulation: serves any key at the size the driver set, charged
    to the clock as ``"origin"``. ``fresh_arrays`` like a real origin (the top tier
    adopts what it returns)."""

    fresh_arrays = True

    def __init__(self, model: TierModel, clock: VirtualClock) -> None:
        self.model = model
        self.clock = clock
        self.sizes: dict[str, int] = {}

    def get(self, key: str) -> np.ndarray | None:
        nbytes = self.sizes.get(key)
        if nbytes is None:
            return None
        self.clock.charge("origin", self.model.read_s(nbytes))
        return phantom(nbytes)

    def keys(self) -> Iterator[str]:
        return iter(list(self.sizes))

    def __contains__(self, key: object) -> bool:
        return key in self.sizes


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TierReport:
    """What one tier (or the origin) did during a simulation.

    ``share`` is the fraction of all requests it served; ``hit_ratio`` the
    engine's ratio of its hits to the lookups that reached it; ``busy_s`` the
    virtual time charged to its medium (reads, writes and deletes).
    """

    name: str
    backend: str
    policy: str
    capacity_bytes: int
    hits: int
    misses: int
    share: float
    hit_ratio: float
    evictions: int = 0
    promotions_in: int = 0
    promotions_out: int = 0
    demotions_in: int = 0
    demotions_out: int = 0
    dropped: int = 0
    skipped_too_large: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    busy_s: float = 0.0
    resident_count: int = 0
    resident_bytes: int = 0
    policy_stats: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TierSimResult:
    """The prediction for one layout and trace: per-tier figures and virtual times."""

    trace: str
    config: str
    mode: str
    requests: int
    total_s: float
    mean_s: float
    p50_s: float
    p99_s: float
    max_s: float
    tiers: tuple[TierReport, ...]
    origin: TierReport
    #: Virtual seconds of every request, in trace order.
    request_s: npt.NDArray[np.float64] = field(repr=False,
                                               default_factory=lambda: np.empty(0))

    def tier(self, name: str) -> TierReport:
        for t in self.tiers:
            if t.name == name:
                return t
        if name == "origin":
            return self.origin
        raise KeyError(f"no tier named {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (per-request times left out)."""
        return {"trace": self.trace, "config": self.config, "mode": self.mode,
                "requests": self.requests, "total_s": self.total_s, "mean_s": self.mean_s,
                "p50_s": self.p50_s, "p99_s": self.p99_s, "max_s": self.max_s,
                "tiers": [t.to_dict() for t in self.tiers], "origin": self.origin.to_dict()}


# --- the driver ------------------------------------------------------------------------------


def _model_for(name: str, backend: str, models: Mapping[str, Any]) -> TierModel:
    base = DEFAULT_MODELS.get(backend, _FALLBACK_MODEL)
    for key in (backend, name):  # backend overrides first, then the tier's own
        override = models.get(key)
        if override is None:
            continue
        if isinstance(override, TierModel):
            base = override
        elif isinstance(override, Mapping):
            base = TierModel.from_mapping(override, base=base, where=f"models.{key}")
        else:
            raise SimulationError(f"model for {key!r} must be a TierModel or a table, "
                                  f"got {type(override).__name__}")
    return base


def simulate_tiers(trace: Trace | str | os.PathLike[str],
                   config: str | os.PathLike[str] | Mapping[str, Any] | CacheConfig, *,
                   models: Mapping[str, Any] | None = None, object_size: int | str | None = None,
                   overhead_s: float = 0.0, progress: ProgressFn | None = None,
                   fmt: str | None = None) -> TierSimResult:
    """Predict per-tier hit shares and per-request time of a layout on a trace.

    Parameters
    ----------
    trace:
        A :class:`Trace` or trace file. Sizes are the shards' ``nbytes``.
    config:
        The layout: a TOML path, a dict, or a :class:`CacheConfig`. Validated
        by :func:`load_config`; no folder is created and no store opened.
    models:
        Overrides of :data:`DEFAULT_MODELS` keyed by tier name, backend or
        ``"origin"``: a :class:`TierModel` or a table of its fields.
    object_size:
        The size of every request (bytes or ``"64MiB"``) for a trace without sizes.
    overhead_s:
        Fixed engine time added to every request.
    progress:
        Called with the number of requests done, every few thousand.

    Complexity: O(len(trace)) engine gets (~50k/s). Not thread-safe for shared
    arguments; each call builds its own cache.
    """
    if not isinstance(trace, Trace):
        trace = read_trace(trace, fmt)
    cfg = config if isinstance(config, CacheConfig) else load_config(config)
    models = dict(models or {})
    if trace.sizes is not None:
        sizes = trace.sizes.tolist()
    elif object_size is not None:
        try:
            size = parse_size(object_size)
        except ValueError as exc:
            raise SimulationError(f"object size: {exc}") from None
        sizes = [size] * len(trace)
    else:
        raise SimulationError(f"trace {trace.source} has no sizes: give every object a size "
                              "(object_size=..., --object-size 64MiB)")
    from ..core.build import tier_from_config  # the engine imports config/stores: lazy
    from ..core.cache import TieredCache

    clock = VirtualClock()
    tiers: list[Tier] = []
    for tc in cfg.tiers:
        model = _model_for(tc.name, tc.backend, models)
        store = sim_store_class(tc.backend)(tc.name, model, clock)
        try:
            tiers.append(tier_from_config(tc, store))
        except TypeError as exc:
            raise PolicyError(f"tier {tc.name!r}: cannot construct policy {tc.policy!r} "
                              f"({exc}); offline policies (future=) cannot run in a tier"
                              ) from None
    origin_model = models.get("origin")
    if isinstance(origin_model, Mapping):
        origin_model = TierModel.from_mapping(origin_model, base=DEFAULT_ORIGIN_MODEL,
                                              where="models.origin")
    origin = SimOrigin(origin_model or DEFAULT_ORIGIN_MODEL, clock)
    cache = TieredCache(tiers, mode=cfg.mode, origin=origin, flush_on_close=False)
    n = len(trace)
    request_s = np.empty(n, dtype=np.float64)
    names: dict[int, str] = {}
    origin_sizes = origin.sizes
    get = cache.get
    try:
        for i, (kid, size) in enumerate(zip(trace.keys.tolist(), sizes, strict=True)):
            key = names.get(kid)
            if key is None:
                key = names[kid] = trace.key_name(kid)
            origin_sizes[key] = size
            before = clock.now_s
            get(key)
            request_s[i] = clock.now_s - before + overhead_s
            if progress is not None and (i + 1) % 4096 == 0:
                progress(4096)
        if progress is not None and n % 4096:
            progress(n % 4096)
        stats = cache.stats()
    finally:
        cache.close()
    reports = []
    for tc in cfg.tiers:
        t = stats["tiers"][tc.name]
        reports.append(TierReport(
            name=tc.name, backend=tc.backend, policy=tc.policy,
            capacity_bytes=tc.capacity_bytes, hits=t["hits"], misses=t["misses"],
            share=t["hits"] / n if n else 0.0, hit_ratio=t["hit_ratio"],
            evictions=t["evictions"], promotions_in=t["promotions_in"],
            promotions_out=t["promotions_out"], demotions_in=t["demotions_in"],
            demotions_out=t["demotions_out"], dropped=t["dropped"],
            skipped_too_large=t["skipped_too_large"], bytes_read=t["bytes_read"],
            bytes_written=t["bytes_written"], busy_s=clock.busy_s.get(tc.name, 0.0),
            resident_count=t["resident_count"], resident_bytes=t["resident_bytes"],
            policy_stats=dict(t.get("policy_stats", {}))))
    o = cache.origin_stats
    origin_report = TierReport(
        name="origin", backend="origin", policy="-", capacity_bytes=0, hits=o.hits, misses=0,
        share=o.hits / n if n else 0.0, hit_ratio=1.0 if o.hits else 0.0,
        bytes_read=o.bytes_read, busy_s=clock.busy_s.get("origin", 0.0))
    total = float(request_s.sum())
    p50, p99 = (np.percentile(request_s, [50, 99]).tolist() if n else [0.0, 0.0])
    return TierSimResult(
        trace=trace.source, config=cfg.config_path, mode=cfg.mode, requests=n, total_s=total,
        mean_s=total / n if n else 0.0, p50_s=float(p50), p99_s=float(p99),
        max_s=float(request_s.max()) if n else 0.0, tiers=tuple(reports),
        origin=origin_report, request_s=request_s)
