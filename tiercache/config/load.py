"""Reading and validating a configuration: TOML, paths, backends, policies, origin.

Everything is checked before anything touches disk: unknown keys, bad sizes,
unknown policies or backends, missing or unusable paths all raise one
:class:`~tiercache.errors.ConfigError` naming the file, the key and the reason.
Relative paths resolve against the folder of the TOML file (or the current
directory for a dict). What a backend is, which keys it takes and how they are
validated comes from :mod:`tiercache.stores.registry`. See docs/configuration.md
for every key.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import inspect
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from ..errors import ConfigError
from ..policies import Policy, UnknownPolicyOptionError, get_policy_class
from ..stores.registry import BackendSpec, backend_names, backend_spec, backend_specs
from ..units import parse_percent, parse_size, show
from .digest import origin_digest
from .schema import (
    DEFAULT_PROMOTE_AFTER,
    ORIGIN_KINDS,
    CacheConfig,
    Mode,
    OriginConfig,
    TierConfig,
)

__all__ = ["load_config"]

_TOP_KEYS = {"mode", "tiers", "origin", "flush_on_close", "record_trace"}
#: Keys every tier takes, whatever its backend.
_COMMON_TIER_KEYS = {"name", "backend", "capacity", "policy", "policy_options",
                     "promote_after", "verify", "kv_capacity"}
_ORIGIN_KEYS = {"kind", "path"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def load_config(config: str | os.PathLike[str] | Mapping[str, Any], *,
                base_dir: str | os.PathLike[str] | None = None) -> CacheConfig:
    """Read and validate a config from a TOML path or an already-parsed mapping.

    Raises :class:`ConfigError` (file, key, reason) on any problem, hostile input
    included (a number of 400 digits, an array nested 50,000 deep, a symlink loop):
    never another exception. Pure: creates nothing on disk. O(size of the file); a
    redis tier without a ``namespace`` also reads the origin once per process to
    digest it (see :func:`origin_digest`). Thread-safe.
    """
    if isinstance(config, Mapping):
        return _Validator("<dict>", Path(base_dir) if base_dir else Path.cwd()).config(config)
    if not isinstance(config, str | os.PathLike):
        raise ConfigError(f"expected a TOML file path or a table (dict), got "
                          f"{type(config).__name__}", file="<dict>")
    path = Path(config)
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
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise ConfigError("invalid TOML: arrays or tables nested too deeply to read (the "
                          "parser's recursion limit was reached); a configuration needs a "
                          "few levels at most", file=path) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"invalid TOML: {exc}", file=path) from None
    except OSError as exc:  # a symlink loop, a name too long, an I/O error
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", file=path) from None
    base = Path(base_dir) if base_dir else path.resolve().parent
    return _Validator(str(path), base, config_path=path).config(data)


def _link_problem(path: Path) -> str | None:
    """Why ``path`` (or a folder on the way to it) cannot be used although something is
    there: a symlink loop, a dangling symlink, or a component that cannot be looked up.
    ``None`` when every existing component resolves. O(depth) ``lstat`` calls."""
    for probe in (*reversed(path.parents), path):
        try:
            os.stat(probe)
            continue
        except FileNotFoundError:
            if not os.path.islink(probe):
                return None  # simply missing: it (and what is below) can be created
            try:
                target = os.readlink(probe)
            except OSError:
                target = "?"
            return f"{probe} is a dangling symlink (to {target}, which does not exist)"
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return f"{probe} is a symlink loop (it never reaches a real file or folder)"
            if exc.errno == errno.ENOTDIR:
                return f"{probe.parent} is not a folder"
            return f"{probe} cannot be looked up: {exc.strerror or exc}"
    return None


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: equal real paths, or (both existing) the
    same inode, which catches a hard link. O(1) system calls."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def kv_capacity_bytes(value: Any, capacity: int) -> int | None:
    """A tier's ``kv_capacity``: absent (``None``, no bound), a size (0 allowed: KV
    blocks never enter the tier) or a percentage of the tier's ``capacity``; never
    more than the capacity. ``ValueError`` with the reason. O(1)."""
    if value is None:
        return None
    fraction = parse_percent(value)
    if fraction is not None:
        return int(capacity * fraction)
    size = parse_size(value, allow_zero=True)
    if size > capacity:
        raise ValueError(f"{show(value)} ({size} bytes) is more than the tier's capacity "
                         f"({capacity} bytes); give at most the capacity or a percentage "
                         "such as \"30%\"")
    return size


def _all_tier_keys() -> set[str]:
    """Every key some tier may take: the common ones, ``path``, ``zero_copy`` and the
    option keys of every registered backend. O(backends)."""
    keys = _COMMON_TIER_KEYS | {"path", "zero_copy"}
    for spec in backend_specs():
        keys |= spec.option_keys
    return keys


def _backend_keys(spec: BackendSpec | None) -> set[str]:
    """The keys a tier of backend ``spec`` takes (every tier key for an unknown one).
    O(backends)."""
    if spec is None:
        return _all_tier_keys()
    keys = _COMMON_TIER_KEYS | spec.option_keys
    if spec.kind == "disk":
        keys |= {"path"}
    if spec.zero_copy:
        keys |= {"zero_copy"}
    return keys


def _find_spec(backend: object) -> tuple[BackendSpec | None, str | None]:
    """``backend``'s spec, or ``None`` and why not (``None`` for an unknown name, whose
    message the caller writes). Imports a ``"module:Class"`` backend. O(1) when known."""
    if not isinstance(backend, str):
        return None, None
    try:
        return backend_spec(backend), None
    except (LookupError, ImportError, TypeError, ValueError) as exc:
        return None, (str(exc) if ":" in backend else None)


class _Validator:
    """Validates one configuration. Not thread-safe (one per :func:`load_config` call);
    every check is O(size of the config), none recurses into the values."""

    def __init__(self, file: str, base_dir: Path, *, config_path: Path | None = None) -> None:
        self.file = file
        self.base_dir = base_dir
        self.config_path = config_path

    def error(self, key: str, reason: str) -> ConfigError:
        return ConfigError(reason, file=self.file, key=key)

    def check_keys(self, where: str, table: Mapping[str, Any], allowed: set[str], *,
                   listed: set[str] | None = None, what: str = "") -> None:
        """Refuse a key not in ``allowed``: name it, suggest the closest of ``listed``
        (default ``allowed``) and list those. O(len(table) * len(listed))."""
        for k in table:
            if k in allowed:
                continue
            choices = sorted(listed if listed is not None else allowed)
            name = k if isinstance(k, str) and len(k) <= 80 else show(k)
            close = difflib.get_close_matches(str(k), choices, n=1) if isinstance(k, str) else []
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise self.error(f"{where}{'.' if where else ''}{name}",
                             f"unknown key {show(k)}{hint} (keys {what or 'allowed here'}: "
                             f"{', '.join(choices)})")

    def config(self, data: Mapping[str, Any]) -> CacheConfig:
        if not isinstance(data, Mapping):
            raise self.error("", "the configuration must be a table")
        self.check_keys("", data, _TOP_KEYS, what="at the top level")
        mode: Mode = data.get("mode", "exclusive")
        if not isinstance(mode, str) or mode not in ("exclusive", "inclusive"):
            raise self.error("mode", f"must be \"exclusive\" or \"inclusive\", got {show(mode)}")
        flush = data.get("flush_on_close", True)
        if not isinstance(flush, bool):
            raise self.error("flush_on_close", f"must be true or false, got {show(flush)}")
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
        tiers = tuple(self.default_namespace(i, t, origin) for i, t in enumerate(tiers))
        self.check_distinct_remotes(tiers)
        record_trace = (self.record_trace(data["record_trace"], tiers, origin)
                        if "record_trace" in data else None)
        return CacheConfig(tiers=tiers, mode=mode, origin=origin, flush_on_close=flush,
                           config_path=self.file, record_trace=record_trace)

    def resolve(self, value: str) -> Path:
        """``value`` with ``~`` expanded, made absolute against the config's folder."""
        path = Path(os.path.expanduser(value))
        if not path.is_absolute():
            path = self.base_dir / path
        return Path(os.path.normpath(path))

    def record_trace(self, value: Any, tiers: tuple[TierConfig, ...],
                     origin: OriginConfig | None) -> Path:
        """The trace file to write: a file path whose folder exists or can be created,
        and that is none of the files the cache reads or owns -- this config file, the
        origin (or a file in an origin folder), anything in a tier's folder. Real paths
        are compared (symlinks resolved), and an existing file also by inode, so no
        link or ``..`` can make the trace overwrite one of them. O(number of tiers)."""
        key = "record_trace"
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be the path of a CSV file to write, got {show(value)}")
        if "\x00" in value:
            raise self.error(key, "a path cannot contain a NUL character")
        path = self.resolve(value)
        problem = _link_problem(path)
        if problem is not None:
            raise self.error(key, f"{problem}; name a file the trace can be written to")
        if path.is_dir():
            raise self.error(key, f"{path} is a folder; name a file such as trace.csv")
        real = Path(os.path.realpath(path))
        if self.config_path is not None and _same_file(real, self.config_path):
            raise self.error(key, f"{path} is this configuration file; recording would "
                             "overwrite it. Name another file, such as trace.csv")
        if origin is not None:
            origin_real = Path(os.path.realpath(origin.path))
            if _same_file(real, origin_real):
                raise self.error(key, f"{path} is the origin ({origin.path}); recording "
                                 "would overwrite the source of truth. Name another file")
            if real.is_relative_to(origin_real):
                raise self.error(key, f"{path} is inside the origin folder {origin.path}; "
                                 "put the trace elsewhere")
        for i, t in enumerate(tiers):
            if t.path is not None and real.is_relative_to(os.path.realpath(t.path)):
                raise self.error(key, f"{path} is inside the folder of tier {t.name!r} "
                                 f"(tiers[{i}]), which the tier owns; put the trace elsewhere")
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
        backend = t.get("backend")
        spec, problem = _find_spec(backend)
        what = f"a tier of backend {backend} takes" if spec is not None else "a tier takes"
        name = t.get("name")
        named = isinstance(name, str) and _NAME_RE.fullmatch(name) is not None
        self.check_keys(f"{where} ({name})" if named else where, t, _all_tier_keys(),
                        listed=_backend_keys(spec), what=what)
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise self.error(f"{where}.name", "required: a short name of letters, digits, "
                             f"'_', '-' or '.', got {show(name)}")
        where = f"tiers[{index}] ({name})"
        if problem is not None:
            raise self.error(f"{where}.backend", problem)
        if spec is None or not isinstance(backend, str):
            names = backend_names()
            known = ", ".join(names)
            close = (difflib.get_close_matches(backend, names, n=1)
                     if isinstance(backend, str) else [])
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise self.error(f"{where}.backend",
                             f"unknown backend {show(backend)}{hint} (known: {known})")
        capacity = self.capacity(f"{where}.capacity", t.get("capacity"), spec)
        try:
            kv_capacity = kv_capacity_bytes(t.get("kv_capacity"), capacity)
        except ValueError as exc:
            raise self.error(f"{where}.kv_capacity", str(exc)) from None
        policy = t.get("policy", "lru")
        if not isinstance(policy, str) or not policy:
            raise self.error(f"{where}.policy", f"must be a policy name, got {show(policy)}")
        try:
            policy_cls = get_policy_class(policy)
        except (LookupError, ImportError, TypeError, ValueError) as exc:
            raise self.error(f"{where}.policy", str(exc)) from None
        options = t.get("policy_options", {})
        if not isinstance(options, Mapping):
            raise self.error(f"{where}.policy_options", "must be a table")
        self.policy_options(where, policy, policy_cls, capacity, options)
        path = self.tier_path(where, t.get("path"), spec)
        store_options = self.store_options(where, t, spec)
        promote_after = self.promote_after(f"{where}.promote_after",
                                           t.get("promote_after", DEFAULT_PROMOTE_AFTER))
        verify = t.get("verify", "always")
        if verify not in ("always", "never"):
            raise self.error(f"{where}.verify",
                             f"must be \"always\" or \"never\", got {show(verify)}")
        # default: views wherever the backend can serve them (verified like every read)
        zero_copy = t.get("zero_copy", spec.zero_copy)
        if not isinstance(zero_copy, bool):
            raise self.error(f"{where}.zero_copy", f"must be true or false, got {show(zero_copy)}")
        if zero_copy and not spec.zero_copy:
            can = ", ".join(sorted(s.name for s in backend_specs() if s.zero_copy))
            raise self.error(f"{where}.zero_copy", f"the {backend} backend cannot serve "
                             f"zero-copy views (backends that can: {can})")
        return TierConfig(name=name, backend=backend, capacity_bytes=capacity, policy=policy,
                          path=path, promote_after=promote_after, verify=verify,
                          zero_copy=zero_copy,
                          policy_options=dict(options), options=store_options,
                          kv_capacity_bytes=kv_capacity)

    def policy_options(self, where: str, policy: str, cls: type[Policy], capacity: int,
                       options: Mapping[str, Any]) -> None:
        """Build the policy once with ``options`` (policies hold metadata only: cheap, no
        disk). An option it does not take is named, with the closest one it does
        (:class:`~tiercache.policies.UnknownPolicyOptionError`), also for a class whose
        constructor has no ``**options``. O(construction of an empty policy)."""
        key = f"{where}.policy_options"
        if not all(isinstance(k, str) for k in options):
            raise self.error(key, "option names must be strings")
        try:
            try:
                params = inspect.signature(cls).parameters
            except (TypeError, ValueError):  # no signature to read: let the call decide
                params = None
            if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                unknown = [k for k in options if k not in params
                           or params[k].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                 inspect.Parameter.VAR_POSITIONAL)]
                if unknown:
                    raise UnknownPolicyOptionError(cls, unknown)
            cls(capacity, **dict(options))
        except UnknownPolicyOptionError as exc:
            name = exc.options[0] if len(exc.options[0]) <= 80 else show(exc.options[0])
            raise self.error(f"{key}.{name}", f"policy {show(policy)}: {exc}") from None
        except Exception as exc:
            raise self.error(key, f"policy {show(policy)} refuses these options: "
                             f"{type(exc).__name__}: {exc}") from None

    def store_options(self, where: str, t: Mapping[str, Any], spec: BackendSpec
                      ) -> dict[str, Any]:
        """The backend's own keys, validated by its spec into store keyword arguments.

        A key only another backend takes is an error naming that backend. For a
        remote tier, the namespace, when not given, is filled in later from the tier
        name and origin (:meth:`default_namespace`). O(keys * backends).
        """
        foreign = sorted(k for k in t if isinstance(k, str) and k not in spec.option_keys
                         and k not in _COMMON_TIER_KEYS and k not in ("path", "zero_copy"))
        for key in foreign:
            owner = next((s.name for s in sorted(backend_specs(), key=lambda s: s.name)
                          if key in s.option_keys), None)
            if owner is not None:
                raise self.error(f"{where}.{key}", f"only a {owner} tier takes this key "
                                 f"(this tier's backend is {spec.name}); remove it")
        return spec.parse_options(t, lambda key, reason: self.error(f"{where}.{key}", reason))

    def default_namespace(self, index: int, tier: TierConfig,
                          origin: OriginConfig | None) -> TierConfig:
        """Give a remote (redis) tier without a ``namespace`` one that names the model's *content*:
        ``tiercache:<digest>:<tier name>``, the digest being :func:`origin_digest` (xxh3-128
        of the origin's bytes). Workers whose origins hold the same bytes share the tier;
        origins that differ in one byte -- same file names and shapes, other values --
        do not. Without an origin, or with a ``"module:Class"`` origin tiercache cannot
        read, there is nothing to name the model by: the namespace must be given.
        O(origin bytes) the first time in the process, a ``stat`` per file after."""
        spec = backend_spec(tier.backend)
        if spec.kind != "remote" or "namespace" not in spec.option_keys \
                or "namespace" in tier.options:
            return tier
        key = f"tiers[{index}] ({tier.name}).namespace"
        advice = ("name the namespace after the model (e.g. namespace = \"smollm2-135m-f32\"), "
                  "so that only caches of the same model share it")
        if origin is None:
            raise self.error(key, f"required for a {tier.backend} tier when there is no "
                             "origin: whoever uses the same server and namespace shares its "
                             f"shards, so sharing must be chosen; {advice}")
        try:
            digest = origin_digest(origin.kind, origin.path)
        except OSError as exc:
            raise self.error("origin.path", f"cannot read {exc.filename or origin.path} to name "
                             f"the default namespace of tiers[{index}] ({tier.name}): "
                             f"{exc.strerror or exc}; give that tier a namespace") from None
        if digest is None:
            raise self.error(key, f"required for a {tier.backend} tier when the origin is a "
                             f"{origin.kind!r} class: tiercache cannot digest its content to "
                             f"tell one model from another; {advice}")
        namespace = f"tiercache:{digest}:{tier.name}"
        return dataclasses.replace(tier, options={**tier.options, "namespace": namespace})

    def check_distinct_remotes(self, tiers: tuple[TierConfig, ...]) -> None:
        """Two redis tiers on the same server and namespace would hold each other's shards."""
        seen: dict[tuple[object, ...], int] = {}
        for i, t in enumerate(tiers):
            if backend_spec(t.backend).kind != "remote":
                continue
            where = t.options.get("url") or tuple(t.options.get("cluster_nodes", ()))
            ident = (where, t.options.get("namespace"))
            if ident in seen:
                raise self.error(f"tiers[{i}] ({t.name}).namespace",
                                 f"tiers[{seen[ident]}] ({tiers[seen[ident]].name}) uses the "
                                 "same server and namespace; give each tier its own namespace")
            seen[ident] = i

    def capacity(self, key: str, value: Any, spec: BackendSpec) -> int:
        if value is None:
            raise self.error(key, "required: a size such as \"256MiB\"")
        try:
            fraction = parse_percent(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None
        if fraction is not None:
            if spec.kind != "memory":
                raise self.error(key, f"a percentage is only allowed for memory tiers "
                                 f"(it means a share of available RAM); give {spec.name} a size")
            return max(1, int(psutil.virtual_memory().available * fraction))
        try:
            return parse_size(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def tier_path(self, where: str, value: Any, spec: BackendSpec) -> Path | None:
        key = f"{where}.path"
        backend = spec.name
        if spec.kind == "remote":
            if value is not None:
                raise self.error(key, f"a {backend} tier has no path (it lives on the server "
                                 "named by url or cluster_nodes); remove the key")
            return None
        if spec.kind == "memory":
            if value is not None:
                raise self.error(key, "a memory tier has no path; remove the key")
            return None
        if value is None:
            raise self.error(key, f"required for a {backend} tier: the folder that holds it")
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be a folder path, got {show(value)}")
        if "\x00" in value:
            raise self.error(key, "a path cannot contain a NUL character")
        path = self.resolve(value)
        if path.parent == path:
            raise self.error(key, f"{path} is the root of the file system; give the tier a "
                             "folder of its own")
        problem = _link_problem(path)  # a loop or dangling link would fail at open (EEXIST)
        if problem is not None:
            raise self.error(key, f"{problem}; give the tier a folder it can create or use")
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
                             f"\"never\", got {show(value)}")
        return value

    def origin(self, value: Any) -> OriginConfig:
        if not isinstance(value, Mapping):
            raise self.error("origin", "must be a table with keys kind and path")
        self.check_keys("origin", value, _ORIGIN_KEYS, what="the origin takes")
        kind = value.get("kind")
        if not isinstance(kind, str) or (kind not in ORIGIN_KINDS and ":" not in kind):
            raise self.error("origin.kind", f"unknown origin kind {show(kind)} (known: "
                             f"{', '.join(ORIGIN_KINDS)}, or 'package.module:ClassName')")
        if kind not in ORIGIN_KINDS:
            from ..origins import load_origin_class  # runs the module: trusted configs only
            try:
                load_origin_class(kind)
            except LookupError as exc:
                raise self.error("origin.kind", str(exc)) from None
        raw = value.get("path")
        if not isinstance(raw, str) or not raw.strip():
            raise self.error("origin.path",
                             f"required: the origin's file or folder, got {show(raw)}")
        if "\x00" in raw:
            raise self.error("origin.path", "a path cannot contain a NUL character")
        path = self.resolve(raw)
        problem = _link_problem(path)
        if problem is not None:
            raise self.error("origin.path", problem)
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
