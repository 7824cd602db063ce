"""Origins: read-only sources of truth consulted when a shard is in no tier.

An origin is never written by the cache. Built in: a folder of ``.npy`` files
(one per key) and a safetensors file. Anything with the :class:`Origin`
interface works; a config may name one as ``"package.module:ClassName"``
(constructed with the path).

Trust model: an origin's bytes are trusted as the truth (no checksum is
kept for them); ``.npy`` files are loaded with ``allow_pickle=False``; a
``module:Class`` origin runs Python code, so only name trusted ones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np

from .errors import ConfigError, StoreError
from .loading import import_target


class Origin(ABC):
    """Read-only source of shards. Implementations must be thread-safe for reads."""

    #: Whether :meth:`get` returns a fresh array the cache may keep without copying.
    fresh_arrays: bool = True

    @abstractmethod
    def get(self, key: str) -> np.ndarray | None:
        """The shard for ``key``, or ``None`` if the origin does not have it."""

    @abstractmethod
    def keys(self) -> Iterator[str]:
        """Every key the origin can serve."""

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in set(self.keys())

    def close(self) -> None:  # noqa: B027 - optional
        """Release resources. Idempotent."""


def npy_filename(key: str) -> str:
    """The file name a key maps to in an :class:`NpyDirOrigin`: one path component,
    percent-encoded, so no key can name a file outside the folder."""
    encoded = quote(key, safe="-_.,+=@ ", errors="surrogatepass")
    return encoded + ".npy"


class NpyDirOrigin(Origin):
    """A folder with one ``<key>.npy`` per shard (key percent-encoded, see :func:`npy_filename`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise StoreError(f"origin folder {self.path} does not exist")

    def _file(self, key: str) -> Path:
        return self.path / npy_filename(key)

    def get(self, key: str) -> np.ndarray | None:
        file = self._file(key)
        try:
            array = np.load(file, allow_pickle=False)
        except FileNotFoundError:
            return None
        except Exception as exc:  # numpy's header parser raises SyntaxError, TokenError, ...
            raise StoreError(f"origin file {file} for key {key!r} is unreadable: "
                             f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(array, np.ndarray):
            raise StoreError(f"origin file {file} is not a single .npy array")
        return np.ascontiguousarray(array)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._file(key).is_file()

    def keys(self) -> Iterator[str]:
        for file in sorted(self.path.glob("*.npy")):
            yield unquote(file.name[:-4], errors="surrogatepass")

    @staticmethod
    def write(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
        """Write ``arrays`` as a folder this origin can read (a helper for tests and demos)."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        for key, array in arrays.items():
            np.save(folder / npy_filename(key), array, allow_pickle=False)


class SafetensorsOrigin(Origin):
    """One ``.safetensors`` file; needs the optional ``safetensors`` package."""

    def __init__(self, path: str | Path) -> None:
        try:
            from safetensors import safe_open
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise StoreError("the safetensors origin needs `pip install safetensors`") from exc
        self.path = Path(path)
        opener: Any = safe_open  # the package ships no usable type hints
        try:  # the rust reader raises its own SafetensorError (and OSError) on a bad file
            self._file: Any = opener(str(self.path), framework="numpy")
            self._keys = set(self._file.keys())
        except Exception as exc:
            raise StoreError(f"origin file {self.path} is not a readable safetensors file: "
                             f"{exc}") from exc

    def get(self, key: str) -> np.ndarray | None:
        if key not in self._keys:
            return None
        try:
            return np.ascontiguousarray(self._file.get_tensor(key))
        except Exception as exc:
            raise StoreError(f"origin file {self.path}: tensor {key!r} is unreadable: "
                             f"{exc}") from exc

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def keys(self) -> Iterator[str]:
        return iter(sorted(self._keys))


def load_origin_class(kind: str) -> type[Origin]:
    """Import the ``"package.module:ClassName"`` origin class and check it subclasses
    :class:`Origin`. Runs the module's code (trusted configs only). Raises
    :class:`LookupError` with the reason: every name quoted in full, and a hint to
    check PYTHONPATH when the module is not found. O(one import); thread-safe as far
    as :mod:`importlib` is."""
    try:
        cls = import_target(kind, f"origin kind {kind!r}")
    except ImportError as exc:
        raise LookupError(str(exc)) from None
    if not isinstance(cls, type) or not issubclass(cls, Origin):
        raise LookupError(f"{kind!r} is not a tiercache.origins.Origin subclass")
    return cls


def open_origin(kind: str, path: Path, *, config_path: str = "<dict>") -> Origin:
    """Build the origin named in a config (``npy``, ``safetensors`` or ``module:Class``);
    errors name ``config_path``, the config file."""
    if kind == "npy":
        return NpyDirOrigin(path)
    if kind == "safetensors":
        return SafetensorsOrigin(path)
    try:
        cls = load_origin_class(kind)
    except LookupError as exc:
        raise ConfigError(str(exc), file=config_path, key="origin.kind") from None
    origin = cls(path)  # type: ignore[call-arg]  # module:Class origins take the path
    if not isinstance(origin, Origin):
        raise ConfigError(f"{kind!r} is not a tiercache.origins.Origin subclass", file=config_path,
                          key="origin.kind")
    return origin
