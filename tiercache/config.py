"""Configuration: a TOML file (or a dict) into validated, frozen objects.

Everything is checked before anything touches disk: unknown keys, bad sizes,
unknown policies or backends, missing or unusable paths all raise one
:class:`~tiercache.errors.ConfigError` naming the file, the key and the reason.
Relative paths resolve against the folder of the TOML file (or the current
directory for a dict). See docs/configuration.md for every key.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import psutil

from .errors import ConfigError
from .policies import get_policy_class
from .stores.base import VerifyMode
from .units import parse_percent, parse_size

Mode = Literal["exclusive", "inclusive"]

MEMORY_BACKENDS = frozenset({"memory"})
DISK_BACKENDS = frozenset({"lmdb", "diskcache", "packed"})
#: Backends on a server shared by many processes: no path, located by url / cluster_nodes.
REMOTE_BACKENDS = frozenset({"redis"})
KNOWN_BACKENDS = MEMORY_BACKENDS | DISK_BACKENDS | REMOTE_BACKENDS
ORIGIN_KINDS = ("npy", "safetensors")
DEFAULT_PROMOTE_AFTER = 2

_TOP_KEYS = {"mode", "tiers", "origin", "flush_on_close", "record_trace"}
#: Keys only a redis tier takes (checked against tiercache.stores.redis_store by the tests).
_REDIS_KEYS = {"url", "cluster_nodes", "namespace", "timeout", "chunk_size"}
_TIER_KEYS = {"name", "backend", "capacity", "policy", "policy_options", "path",
              "promote_after", "verify", "zero_copy"} | _REDIS_KEYS
#: Backends whose store serves zero-copy views (``zero_copy = true``).
VIEW_BACKENDS = frozenset({"diskcache", "packed"})
_REDIS_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")
_REDIS_CHUNK_RANGE = (1 << 10, 256 << 20)
_REDIS_DEFAULT_CHUNK = 8 << 20
_REDIS_DEFAULT_TIMEOUT_S = 5.0
_ORIGIN_KEYS = {"kind", "path"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class TierConfig:
    """One tier, validated. ``promote_after`` is None for "never"."""

    name: str
    backend: str
    capacity_bytes: int
    policy: str = "lru"
    path: Path | None = None
    promote_after: int | None = DEFAULT_PROMOTE_AFTER
    verify: VerifyMode = "always"
    zero_copy: bool = False
    policy_options: Mapping[str, Any] = field(default_factory=dict)
    #: Keyword arguments for a shared store (redis: ``url`` or ``cluster_nodes``,
    #: ``namespace``, ``timeout_s``, ``chunk_bytes``); empty for the other backends.
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OriginConfig:
    """The read-only source of truth consulted when a shard is in no tier."""

    kind: str
    path: Path


@dataclass(frozen=True)
class CacheConfig:
    """A whole cache: tiers fastest first, mode, optional origin."""

    tiers: tuple[TierConfig, ...]
    mode: Mode = "exclusive"
    origin: OriginConfig | None = None
    flush_on_close: bool = True
    source: str = "<dict>"
    #: CSV file the cache appends every get's ``key,size`` to (see tiercache.recording).
    record_trace: Path | None = None


def load_config(source: str | os.PathLike[str] | Mapping[str, Any], *,
                base_dir: str | os.PathLike[str] | None = None) -> CacheConfig:
    """Read and validate a config from a TOML path or an already-parsed mapping.

    Raises :class:`ConfigError` (file, key, reason) on any problem. Pure: creates
    nothing on disk.
    """
    if isinstance(source, Mapping):
        return _Validator("<dict>", Path(base_dir) if base_dir else Path.cwd()).config(source)
    if not isinstance(source, str | os.PathLike):
        raise ConfigError(f"expected a TOML file path or a table (dict), got "
                          f"{type(source).__name__}", file="<dict>")
    path = Path(source)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("file not found", file=path) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, expected a TOML file", file=path) from None
    except PermissionError:
        raise ConfigError("permission denied reading the file", file=path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason})", file=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=path) from None
    base = Path(base_dir) if base_dir else path.resolve().parent
    return _Validator(str(path), base).config(data)


class _Validator:
    def __init__(self, file: str, base_dir: Path) -> None:
        self.file = file
        self.base_dir = base_dir

    def error(self, key: str, reason: str) -> ConfigError:
        return ConfigError(reason, file=self.file, key=key)

    def check_keys(self, where: str, table: Mapping[str, Any], allowed: set[str]) -> None:
        for k in table:
            if k not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.error(f"{where}{'.' if where else ''}{k}",
                                 f"unknown key {k!r} (known keys: {known})")

    def config(self, data: Mapping[str, Any]) -> CacheConfig:
        if not isinstance(data, Mapping):
            raise self.error("", "the configuration must be a table")
        self.check_keys("", data, _TOP_KEYS)
        mode = data.get("mode", "exclusive")
        if mode not in ("exclusive", "inclusive"):
            raise self.error("mode", f"must be \"exclusive\" or \"inclusive\", got {mode!r}")
        flush = data.get("flush_on_close", True)
        if not isinstance(flush, bool):
            raise self.error("flush_on_close", f"must be true or false, got {flush!r}")
        raw_tiers = data.get("tiers")
        if raw_tiers is None:
            raise self.error("tiers", "missing: list the tiers fastest first as [[tiers]] tables")
        if not isinstance(raw_tiers, list) or not all(isinstance(t, Mapping) for t in raw_tiers):
            raise self.error("tiers", "must be an array of tables ([[tiers]])")
        if not raw_tiers:
            raise self.error("tiers", "is empty: a cache needs at least one tier")
        tiers = tuple(self.tier(i, t) for i, t in enumerate(raw_tiers))
        self.check_distinct(tiers)
        origin = self.origin(data["origin"]) if "origin" in data else None
        if origin is not None:
            self.check_origin_apart(origin, tiers)
        tiers = tuple(self.default_namespace(t, origin) for t in tiers)
        self.check_distinct_remotes(tiers)
        record_trace = (self.record_trace(data["record_trace"], tiers)
                        if "record_trace" in data else None)
        return CacheConfig(tiers=tiers, mode=mode, origin=origin, flush_on_close=flush,
                           source=self.file, record_trace=record_trace)

    def resolve(self, value: str) -> Path:
        """``value`` with ``~`` expanded, made absolute against the config's folder."""
        path = Path(os.path.expanduser(value))
        if not path.is_absolute():
            path = self.base_dir / path
        return Path(os.path.normpath(path))

    def record_trace(self, value: Any, tiers: tuple[TierConfig, ...]) -> Path:
        """The trace file to write: a file path whose folder exists or can be created."""
        key = "record_trace"
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be the path of a CSV file to write, got {value!r}")
        if "\x00" in value:
            raise self.error(key, "a path cannot contain a NUL character")
        path = self.resolve(value)
        if path.is_dir():
            raise self.error(key, f"{path} is a folder; name a file such as trace.csv")
        for t in tiers:
            if t.path is not None and path.is_relative_to(t.path):
                raise self.error(key, f"{path} is inside the folder of tier {t.name!r}; "
                                 "put the trace elsewhere")
        probe = path.parent
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise self.error(key, f"{probe} is not a folder, so {path} cannot be created")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise self.error(key, f"{probe} is not writable, so {path} cannot be created")
        return path

    def tier(self, index: int, t: Mapping[str, Any]) -> TierConfig:
        where = f"tiers[{index}]"
        self.check_keys(where, t, _TIER_KEYS)
        name = t.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise self.error(f"{where}.name", "required: a short name of letters, digits, "
                             f"'_', '-' or '.', got {name!r}")
        where = f"tiers[{index}] ({name})"
        backend = t.get("backend")
        if not isinstance(backend, str) or backend not in KNOWN_BACKENDS:
            known = ", ".join(sorted(KNOWN_BACKENDS))
            raise self.error(f"{where}.backend", f"unknown backend {backend!r} (known: {known})")
        capacity = self.capacity(f"{where}.capacity", t.get("capacity"), backend)
        policy = t.get("policy", "lru")
        if not isinstance(policy, str) or not policy:
            raise self.error(f"{where}.policy", f"must be a policy name, got {policy!r}")
        try:
            get_policy_class(policy)
        except (LookupError, ImportError, AttributeError, TypeError, ValueError) as exc:
            raise self.error(f"{where}.policy", str(exc).strip("'\"")) from None
        options = t.get("policy_options", {})
        if not isinstance(options, Mapping):
            raise self.error(f"{where}.policy_options", "must be a table")
        try:  # policies hold metadata only: building one is cheap and touches no disk
            get_policy_class(policy)(capacity, **dict(options))
        except Exception as exc:
            raise self.error(f"{where}.policy_options",
                             f"policy {policy!r} refuses these options: {exc}") from None
        path = self.tier_path(where, t.get("path"), backend)
        store_options = self.redis_options(where, t, backend)
        promote_after = self.promote_after(f"{where}.promote_after",
                                           t.get("promote_after", DEFAULT_PROMOTE_AFTER))
        verify = t.get("verify", "always")
        if verify not in ("always", "never"):
            raise self.error(f"{where}.verify", f"must be \"always\" or \"never\", got {verify!r}")
        zero_copy = t.get("zero_copy", False)
        if not isinstance(zero_copy, bool):
            raise self.error(f"{where}.zero_copy", f"must be true or false, got {zero_copy!r}")
        if zero_copy and backend not in VIEW_BACKENDS:
            can = ", ".join(sorted(VIEW_BACKENDS))
            raise self.error(f"{where}.zero_copy", f"the {backend} backend cannot serve "
                             f"zero-copy views (backends that can: {can})")
        return TierConfig(name=name, backend=backend, capacity_bytes=capacity, policy=policy,
                          path=path, promote_after=promote_after, verify=verify,
                          zero_copy=zero_copy,
                          policy_options=dict(options), options=store_options)

    def redis_options(self, where: str, t: Mapping[str, Any], backend: str) -> dict[str, Any]:
        """The redis-only keys, validated into RedisStore keyword arguments.

        Any of them on another backend is an error. The namespace, when not
        given, is filled in later from the tier name and origin
        (:meth:`default_namespace`).
        """
        given = sorted(k for k in _REDIS_KEYS if k in t)
        if backend not in REMOTE_BACKENDS:
            if given:
                raise self.error(f"{where}.{given[0]}", f"only a redis tier takes this key "
                                 f"(this tier's backend is {backend}); remove it")
            return {}
        if importlib.util.find_spec("redis") is None:
            raise self.error(f"{where}.backend", "the redis backend needs the redis package: "
                             "pip install 'tiercache[redis]'")
        url, nodes = t.get("url"), t.get("cluster_nodes")
        if (url is None) == (nodes is None):
            raise self.error(f"{where}.url", "give exactly one of url = \"redis://host:6379/0\" "
                             "(one server) and cluster_nodes = [\"host:port\", ...] (Redis "
                             "Cluster)")
        options: dict[str, Any] = {}
        if url is not None:
            options["url"] = self.redis_url(f"{where}.url", url)
        else:
            options["cluster_nodes"] = self.cluster_nodes(f"{where}.cluster_nodes", nodes)
        if "namespace" in t:
            namespace = t["namespace"]
            if not isinstance(namespace, str) or not _REDIS_NAMESPACE_RE.match(namespace):
                raise self.error(f"{where}.namespace", "must be 1-128 characters of A-Z a-z 0-9 "
                                 f"_ . : / - (no braces or spaces), got {namespace!r}")
            options["namespace"] = namespace
        timeout = t.get("timeout", _REDIS_DEFAULT_TIMEOUT_S)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
                or not 0 < timeout <= 3600:
            raise self.error(f"{where}.timeout", "must be a number of seconds > 0 and <= 3600, "
                             f"got {timeout!r}")
        options["timeout_s"] = float(timeout)
        try:
            chunk = parse_size(t.get("chunk_size", _REDIS_DEFAULT_CHUNK))
        except ValueError as exc:
            raise self.error(f"{where}.chunk_size", str(exc)) from None
        low, high = _REDIS_CHUNK_RANGE
        if not low <= chunk <= high:
            raise self.error(f"{where}.chunk_size", f"must be between 1KiB and 256MiB, got "
                             f"{chunk} bytes")
        options["chunk_bytes"] = chunk
        return options

    def redis_url(self, key: str, value: Any) -> str:
        """A redis://, rediss:// or unix:// URL with a valid port and database number."""
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be a URL such as \"redis://127.0.0.1:6379/0\", got "
                             f"{value!r}")
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError as exc:
            raise self.error(key, f"not a valid URL ({exc})") from None
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise self.error(key, f"scheme {parts.scheme!r} is not redis://, rediss:// or "
                             "unix://")
        if parts.scheme == "unix":
            if not parts.path:
                raise self.error(key, "a unix:// URL needs the socket path")
            return value
        if not parts.hostname:
            raise self.error(key, "needs a host, as in redis://127.0.0.1:6379/0")
        if port == 0:
            raise self.error(key, "port 0 is not a valid port")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise self.error(key, f"the path must be a database number, got {parts.path!r}")
        return value

    def cluster_nodes(self, key: str, value: Any) -> tuple[str, ...]:
        """A non-empty list of "host:port" strings (IPv6 as "[addr]:port")."""
        if not isinstance(value, list) or not value:
            raise self.error(key, "must be a non-empty list such as [\"127.0.0.1:7000\"]")
        for node in value:
            host, sep, port = node.rpartition(":") if isinstance(node, str) else ("", "", "")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise self.error(key, f"{node!r} is not \"host:port\"")
        return tuple(value)

    @staticmethod
    def default_namespace(tier: TierConfig, origin: OriginConfig | None) -> TierConfig:
        """Give a redis tier without a namespace ``tiercache:[ORIGIN:]TIER``: the origin's
        file or folder name and the tier name, so every worker of one cache shares it and
        caches of different models (origins) do not."""
        if tier.backend not in REMOTE_BACKENDS or "namespace" in tier.options:
            return tier
        parts = ["tiercache", *([origin.path.name] if origin is not None else []), tier.name]
        namespace = re.sub(r"[^A-Za-z0-9_.:/-]", "_", ":".join(parts))[:128]
        return dataclasses.replace(tier, options={**tier.options, "namespace": namespace})

    def check_distinct_remotes(self, tiers: tuple[TierConfig, ...]) -> None:
        """Two redis tiers on the same server and namespace would hold each other's shards."""
        seen: dict[tuple[object, ...], int] = {}
        for i, t in enumerate(tiers):
            if t.backend not in REMOTE_BACKENDS:
                continue
            where = t.options.get("url") or tuple(t.options.get("cluster_nodes", ()))
            ident = (where, t.options.get("namespace"))
            if ident in seen:
                raise self.error(f"tiers[{i}] ({t.name}).namespace",
                                 f"tiers[{seen[ident]}] ({tiers[seen[ident]].name}) uses the "
                                 "same server and namespace; give each tier its own namespace")
            seen[ident] = i

    def capacity(self, key: str, value: Any, backend: str) -> int:
        if value is None:
            raise self.error(key, "required: a size such as \"256MiB\"")
        try:
            fraction = parse_percent(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None
        if fraction is not None:
            if backend not in MEMORY_BACKENDS:
                raise self.error(key, f"a percentage is only allowed for memory tiers "
                                 f"(it means a share of available RAM); give {backend} a size")
            return max(1, int(psutil.virtual_memory().available * fraction))
        try:
            return parse_size(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def tier_path(self, where: str, value: Any, backend: str) -> Path | None:
        key = f"{where}.path"
        if backend in REMOTE_BACKENDS:
            if value is not None:
                raise self.error(key, f"a {backend} tier has no path (it lives on the server "
                                 "named by url or cluster_nodes); remove the key")
            return None
        if backend in MEMORY_BACKENDS:
            if value is not None:
                raise self.error(key, "a memory tier has no path; remove the key")
            return None
        if value is None:
            raise self.error(key, f"required for a {backend} tier: the folder that holds it")
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be a folder path, got {value!r}")
        if "\x00" in value:
            raise self.error(key, "a path cannot contain a NUL character")
        path = self.resolve(value)
        if path.parent == path:
            raise self.error(key, f"{path} is the root of the file system; give the tier a "
                             "folder of its own")
        if path.exists() and not path.is_dir():
            raise self.error(key, f"{path} exists and is not a folder")
        probe = path
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise self.error(key, f"{probe} is not a folder, so {path} cannot be created")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise self.error(key, f"{probe} is not writable, so the tier cannot be created there")
        return path

    def promote_after(self, key: str, value: Any) -> int | None:
        if value == "never":
            return None
        if value == "always":
            return 1
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.error(key, "must be a whole number of hits >= 1, \"always\" or "
                             f"\"never\", got {value!r}")
        return value

    def origin(self, value: Any) -> OriginConfig:
        if not isinstance(value, Mapping):
            raise self.error("origin", "must be a table with keys kind and path")
        self.check_keys("origin", value, _ORIGIN_KEYS)
        kind = value.get("kind")
        if not isinstance(kind, str) or (kind not in ORIGIN_KINDS and ":" not in kind):
            raise self.error("origin.kind", f"unknown origin kind {kind!r} (known: "
                             f"{', '.join(ORIGIN_KINDS)}, or 'package.module:ClassName')")
        if kind not in ORIGIN_KINDS:
            from .origins import load_origin_class  # runs the module: trusted configs only
            try:
                load_origin_class(kind)
            except LookupError as exc:
                raise self.error("origin.kind", str(exc).strip("'\"")) from None
        raw = value.get("path")
        if not isinstance(raw, str) or not raw.strip():
            raise self.error("origin.path", f"required: the origin's file or folder, got {raw!r}")
        if "\x00" in raw:
            raise self.error("origin.path", "a path cannot contain a NUL character")
        path = self.resolve(raw)
        if not path.exists():
            raise self.error("origin.path", f"{path} does not exist")
        if kind == "npy" and not path.is_dir():
            raise self.error("origin.path", f"{path} must be a folder of .npy files")
        if kind == "safetensors" and not path.is_file():
            raise self.error("origin.path", f"{path} must be a .safetensors file")
        return OriginConfig(kind=kind, path=path)

    def check_origin_apart(self, origin: OriginConfig, tiers: tuple[TierConfig, ...]) -> None:
        """The origin may not live inside a tier's folder: the tier owns that folder and
        may delete or replace what it finds there (a tier folder inside an origin
        folder is fine: origins read only their own files)."""
        real = Path(os.path.realpath(origin.path))
        for i, t in enumerate(tiers):
            if t.path is None:
                continue
            tier_real = Path(os.path.realpath(t.path))
            if real.is_relative_to(tier_real):
                raise self.error("origin.path",
                                 f"{origin.path} is inside the folder of tiers[{i}] ({t.name}), "
                                 "which the tier owns; keep the source of truth elsewhere")

    def check_distinct(self, tiers: tuple[TierConfig, ...]) -> None:
        seen_names: dict[str, int] = {}
        seen_paths: dict[Path, int] = {}
        for i, t in enumerate(tiers):
            if t.name in seen_names:
                raise self.error(f"tiers[{i}].name", f"duplicate tier name {t.name!r} "
                                 f"(also tiers[{seen_names[t.name]}])")
            seen_names[t.name] = i
            if t.path is None:
                continue
            real = Path(os.path.realpath(t.path))  # symlinks cannot make two tiers share
            for other, j in seen_paths.items():
                if real == other or real.is_relative_to(other) or other.is_relative_to(real):
                    raise self.error(f"tiers[{i}] ({t.name}).path",
                                     f"{t.path} overlaps the path of tiers[{j}] "
                                     f"({tiers[j].name}); each tier needs its own folder")
            seen_paths[real] = i
