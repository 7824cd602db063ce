"""The options of a redis tier: their limits, defaults, and validation of a TOML tier table.

This module imports neither redis-py nor the store, so a configuration can be
checked (and told that the driver is missing) on a machine without the
``redis`` extra. The limits here are the only copy: the store's constructor and
the configuration loader both use them.

Thread-safety: everything here is immutable or a pure function.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from ...units import parse_size, show

__all__ = ["DEFAULT_CHUNK_BYTES", "DEFAULT_NAMESPACE", "DEFAULT_TIMEOUT_S", "MAX_CHUNK_BYTES",
           "MAX_TIMEOUT_S", "MIN_CHUNK_BYTES", "NAMESPACE_RE", "OPTION_KEYS", "parse_options"]

#: Keys of a TOML tier table that only a redis tier takes.
OPTION_KEYS = frozenset({"url", "cluster_nodes", "namespace", "timeout", "chunk_size"})
DEFAULT_CHUNK_BYTES = 8 << 20
MIN_CHUNK_BYTES = 1 << 10
#: Redis's default ``proto-max-bulk-len`` is 512 MB; a chunk (plus a head) stays far below it.
MAX_CHUNK_BYTES = 256 << 20
DEFAULT_TIMEOUT_S = 5.0
MAX_TIMEOUT_S = 3600
DEFAULT_NAMESPACE = "tiercache"
#: Characters a namespace may use (no braces: the key digest must be the hash tag).
NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")

#: ``fail(key, reason)``: the exception to raise for table key ``key``.
Fail = Callable[[str, str], Exception]


def parse_options(table: Mapping[str, Any], fail: Fail) -> dict[str, Any]:
    """Validate the redis keys of a tier table into :class:`RedisStore` keyword arguments.

    Parameters
    ----------
    table:
        The tier's TOML table (other keys, such as ``name`` or ``capacity``, are
        ignored).
    fail:
        ``fail(key, reason)`` returns the exception to raise, ``key`` being the
        table key at fault (``"url"``, ``"namespace"``, ...; ``"backend"`` when the
        redis-py driver is not installed). The caller adds where the table is.

    Returns
    -------
    dict
        ``url`` or ``cluster_nodes``, ``namespace`` (only when given: the
        configuration derives a default from the origin), ``timeout_s`` and
        ``chunk_bytes``.

    Complexity O(len(url) + cluster nodes); one ``find_spec`` for the driver.
    Thread-safe (pure function).
    """
    if importlib.util.find_spec("redis") is None:
        raise fail("backend", "the redis backend needs the redis package: "
                   "pip install 'tiercache[redis]'")
    url, nodes = table.get("url"), table.get("cluster_nodes")
    if (url is None) == (nodes is None):
        raise fail("url", "give exactly one of url = \"redis://host:6379/0\" "
                   "(one server) and cluster_nodes = [\"host:port\", ...] (Redis Cluster)")
    options: dict[str, Any] = {}
    if url is not None:
        options["url"] = _url(url, fail)
    else:
        options["cluster_nodes"] = _cluster_nodes(nodes, fail)
    if "namespace" in table:
        namespace = table["namespace"]
        if not isinstance(namespace, str) or not NAMESPACE_RE.fullmatch(namespace):
            raise fail("namespace", "must be 1-128 characters of A-Z a-z 0-9 "
                       f"_ . : / - (no braces or spaces), got {show(namespace)}")
        options["namespace"] = namespace
    timeout = table.get("timeout", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
            or not 0 < timeout <= MAX_TIMEOUT_S:
        raise fail("timeout", f"must be a number of seconds > 0 and <= {MAX_TIMEOUT_S}, "
                   f"got {show(timeout)}")
    options["timeout_s"] = float(timeout)
    try:
        chunk = parse_size(table.get("chunk_size", DEFAULT_CHUNK_BYTES))
    except ValueError as exc:
        raise fail("chunk_size", str(exc)) from None
    if not MIN_CHUNK_BYTES <= chunk <= MAX_CHUNK_BYTES:
        raise fail("chunk_size", f"must be between 1KiB and 256MiB, got {chunk} bytes")
    options["chunk_bytes"] = chunk
    return options


def _url(value: Any, fail: Fail) -> str:
    """A redis://, rediss:// or unix:// URL with a valid port and database number. O(len)."""
    if not isinstance(value, str) or not value.strip():
        raise fail("url", f"must be a URL such as \"redis://127.0.0.1:6379/0\", got "
                   f"{show(value)}")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise fail("url", f"not a valid URL ({exc})") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise fail("url", f"scheme {parts.scheme!r} is not redis://, rediss:// or unix://")
    if parts.scheme == "unix":
        if not parts.path:
            raise fail("url", "a unix:// URL needs the socket path")
        return value
    if not parts.hostname:
        raise fail("url", "needs a host, as in redis://127.0.0.1:6379/0")
    if port == 0:
        raise fail("url", "port 0 is not a valid port")
    db = parts.path.strip("/")
    if db and not (db.isascii() and db.isdigit()):
        raise fail("url", f"the path must be a database number, got {show(parts.path)}")
    return value


def _cluster_nodes(value: Any, fail: Fail) -> tuple[str, ...]:
    """A non-empty list of "host:port" strings (IPv6 as "[addr]:port"). O(nodes)."""
    if not isinstance(value, list) or not value:
        raise fail("cluster_nodes", "must be a non-empty list such as [\"127.0.0.1:7000\"]")
    for node in value:
        host, sep, port = node.rpartition(":") if isinstance(node, str) else ("", "", "")
        if not sep or not host or not (port.isascii() and port.isdigit() and len(port) <= 5
                                       and 0 < int(port) < 65536):
            raise fail("cluster_nodes", f"{show(node)} is not \"host:port\"")
    return tuple(value)
