"""Configuration: a TOML file (or a dict) into validated, frozen objects.

Everything is checked before anything touches disk: unknown keys, bad sizes,
unknown policies or backends, missing or unusable paths all raise one
:class:`~tiercache.errors.ConfigError` naming the file, the key and the reason.
Relative paths resolve against the folder of the TOML file (or the current
directory for a dict). See docs/configuration.md for every key.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil

from .errors import ConfigError
from .policies import get_policy_class
from .stores.base import VerifyMode
from .units import parse_percent, parse_size

Mode = Literal["exclusive", "inclusive"]

MEMORY_BACKENDS = frozenset({"memory"})
DISK_BACKENDS = frozenset({"lmdb", "diskcache"})
KNOWN_BACKENDS = MEMORY_BACKENDS | DISK_BACKENDS
ORIGIN_KINDS = ("npy", "safetensors")
DEFAULT_PROMOTE_AFTER = 2

_TOP_KEYS = {"mode", "tiers", "origin", "flush_on_close"}
_TIER_KEYS = {"name", "backend", "capacity", "policy", "policy_options", "path",
              "promote_after", "verify"}
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
    policy_options: Mapping[str, Any] = field(default_factory=dict)


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


def load_config(source: str | os.PathLike[str] | Mapping[str, Any], *,
                base_dir: str | os.PathLike[str] | None = None) -> CacheConfig:
    """Read and validate a config from a TOML path or an already-parsed mapping.

    Raises :class:`ConfigError` (file, key, reason) on any problem. Pure: creates
    nothing on disk.
    """
    if isinstance(source, Mapping):
        return _Validator("<dict>", Path(base_dir) if base_dir else Path.cwd()).config(source)
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
        return CacheConfig(tiers=tiers, mode=mode, origin=origin, flush_on_close=flush,
                           source=self.file)

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
        path = self.tier_path(where, t.get("path"), backend)
        promote_after = self.promote_after(f"{where}.promote_after",
                                           t.get("promote_after", DEFAULT_PROMOTE_AFTER))
        verify = t.get("verify", "always")
        if verify not in ("always", "never"):
            raise self.error(f"{where}.verify", f"must be \"always\" or \"never\", got {verify!r}")
        return TierConfig(name=name, backend=backend, capacity_bytes=capacity, policy=policy,
                          path=path, promote_after=promote_after, verify=verify,
                          policy_options=dict(options))

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
        if backend in MEMORY_BACKENDS:
            if value is not None:
                raise self.error(key, "a memory tier has no path; remove the key")
            return None
        if value is None:
            raise self.error(key, f"required for a {backend} tier: the folder that holds it")
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be a folder path, got {value!r}")
        path = Path(os.path.expanduser(value))
        if not path.is_absolute():
            path = self.base_dir / path
        path = Path(os.path.normpath(path))
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
        raw = value.get("path")
        if not isinstance(raw, str) or not raw.strip():
            raise self.error("origin.path", f"required: the origin's file or folder, got {raw!r}")
        path = Path(os.path.expanduser(raw))
        if not path.is_absolute():
            path = self.base_dir / path
        if not path.exists():
            raise self.error("origin.path", f"{path} does not exist")
        if kind == "npy" and not path.is_dir():
            raise self.error("origin.path", f"{path} must be a folder of .npy files")
        if kind == "safetensors" and not path.is_file():
            raise self.error("origin.path", f"{path} must be a .safetensors file")
        return OriginConfig(kind=kind, path=path)

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
            for other, j in seen_paths.items():
                if t.path == other or t.path.is_relative_to(other) or other.is_relative_to(t.path):
                    raise self.error(f"tiers[{i}] ({t.name}).path",
                                     f"{t.path} overlaps the path of tiers[{j}] "
                                     f"({tiers[j].name}); each tier needs its own folder")
            seen_paths[t.path] = i
