"""How the redis store reads its server's failures: error mapping and the fail-fast back-off.

Connection errors, timeouts and a server that is loading or down raise
:class:`~tiercache.errors.StoreError` and put the store in back-off: for the
next 50 ms (doubling per failure, at most 2 s) every call fails at once
instead of waiting for a dead server, then one call tries again; a success
clears the back-off (redis-py and the raw reader reconnect by themselves). A
server that *refuses* us -- a wrong or missing password (``WRONGPASS``,
``NOAUTH``), an ACL without the permission (``NOPERM``), a database number the
server does not have -- is not an outage: the StoreError says ``refused:`` and
the server's own reason with what to fix, and the back-off applies too, since
a retry only helps once someone fixed the credentials.

Why the store backs off although the tier does too
    The tier's health (``Tier.note_failure`` / ``Tier.writable``: 1 s doubling
    to 5 s) decides when a degraded tier is *written* to again and when a lost
    medium is reopened; it runs under the engine lock and gates admissions
    only. Reads are not gated by it: a shared tier is read on every miss of the
    tiers above (another process may have put the shard there), its
    ``keys()`` is listed at open, and ``tiercache stats``/``verify`` open a
    store without any tier. Against a dead server each such call would wait
    up to ``timeout_s`` (the connect timeout) -- on every miss of a decoding
    model. The store's back-off is what makes those calls fail in microseconds
    while the server is down; it is per server connection, shorter (50 ms to
    2 s, so a restarted server is found quickly) and thread-safe without the
    engine lock. The two do not overlap: the tier never retries a read, and
    the store never decides what is admitted.

Thread-safety: :class:`Backoff` guards its state with a lock; the functions are pure.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis.exceptions as rexc

from ...errors import StoreError, TierCacheError
from .layout import corrupt
from .resp import ErrorReply, ProtocolError, Redirect, Unavailable

__all__ = ["BACKOFF_MAX_S", "BACKOFF_MIN_S", "SERVER_ERRORS", "UNAVAILABLE", "Backoff",
           "refusal"]

log = logging.getLogger("tiercache")

BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0

#: Failures that mean "no server to talk to": they start the back-off.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    rexc.ConnectionError, rexc.TimeoutError, rexc.ClusterDownError, rexc.RedisClusterException,
    OSError, ProtocolError, Unavailable)
#: Everything a call to the server may raise that the store turns into its own errors.
SERVER_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE, rexc.RedisError, ErrorReply,
                                                  Redirect)
#: Reply prefixes of a server that refuses this client for good (until someone fixes
#: the credentials or the server's configuration).
_AUTH_PREFIXES = ("WRONGPASS", "NOAUTH", "invalid username-password pair",
                  "Authentication required", "AUTH <password> called without any password")
_DB_MESSAGES = ("DB index is out of range", "invalid DB index")


def refusal(exc: BaseException, *, has_password: bool) -> str | None:
    """What to tell the user when ``exc`` means the server refuses this client for good
    (authentication, permissions, no such database); ``None`` for anything else. O(1)."""
    text = str(exc).removeprefix("ERR ")
    if text.startswith("HELLO must be called"):  # redis-py's handshake without a password
        text = "NOAUTH: the server requires authentication"
    if isinstance(exc, rexc.AuthenticationError) or text.startswith(_AUTH_PREFIXES):
        hint = "check the user name and password in the url" if has_password else \
            "the server requires a password and the url gives none"
        return f"authentication failed ({text}): {hint}"
    if isinstance(exc, rexc.NoPermissionError) or text.startswith("NOPERM"):
        return (f"permission denied ({text}): the user's ACL must allow GET, SET, DEL, "
                "GETRANGE, EXISTS, SCAN, EVALSHA and MULTI on the namespace's keys")
    if any(m in text for m in _DB_MESSAGES):
        return (f"no such database ({text}): the url's /db number must be below the "
                "server's `databases` setting")
    return None


class Backoff:
    """The fail-fast state of one store's server (see the module docstring).

    Parameters
    ----------
    where:
        The store, for messages (``"redis store <location> namespace '<ns>'"``).
    has_password:
        Whether the url gives a password (chooses the hint of an authentication
        refusal).
    on_down:
        Called after each failure that starts or lengthens the back-off (the
        store drops its idle raw connections).

    Every method is O(1) and thread-safe.
    """

    def __init__(self, where: str, *, has_password: bool, on_down: Callable[[], None]) -> None:
        self.where = where
        self.has_password = has_password
        self._on_down = on_down
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._backoff_s = 0.0
        self._last_error = ""
        self._refused = False  # whether the back-off is for a refusal, not an outage
        #: Operations that failed for want of a server (connection, timeout, loading) or
        #: because it refused us (authentication, permissions, no such database).
        self.failures = 0

    def check(self) -> None:
        """Raise :class:`StoreError` at once while in back-off."""
        down_until = self._down_until
        if down_until and time.monotonic() < down_until:
            if self._refused:
                raise StoreError(f"{self.where}: refused: {self._last_error}; next try in "
                                 f"{down_until - time.monotonic():.2f} s")
            raise StoreError(f"{self.where}: unavailable ({self._last_error}); next try in "
                             f"{down_until - time.monotonic():.2f} s")

    def error(self, exc: BaseException, what: str, where: str) -> TierCacheError:
        """The error to raise for ``exc`` from the server or the socket during ``what``
        at ``where`` (the store and key), after starting the back-off where it applies."""
        reason = refusal(exc, has_password=self.has_password)
        if reason is not None:
            self._mark_down(exc, reason)
            return StoreError(f"{where}: {what} refused: {reason}")
        if isinstance(exc, UNAVAILABLE):
            self._mark_down(exc)
        elif str(exc).startswith("WRONGTYPE"):  # someone stored a list, hash... there
            return corrupt(where, f"not a string value ({exc})")
        return StoreError(f"{where}: {what} failed: {type(exc).__name__}: {exc}")

    def _mark_down(self, exc: BaseException, reason: str | None = None) -> None:
        """Start (or lengthen) the back-off after ``exc``; ``reason`` is the message when
        the server refused us rather than being unreachable."""
        with self._lock:
            first = not self._backoff_s
            self._backoff_s = min(BACKOFF_MAX_S, max(BACKOFF_MIN_S, 2 * self._backoff_s))
            self._down_until = time.monotonic() + self._backoff_s
            self._last_error = reason or f"{type(exc).__name__}: {exc}"
            self._refused = reason is not None
            self.failures += 1
            backoff = self._backoff_s
        self._on_down()
        if first:
            log.warning("%s: %s (%s); retrying in %.2f s", self.where,
                        "refused" if reason else "unavailable", self._last_error, backoff)

    def mark_up(self) -> None:
        """A call succeeded: clear the back-off (logs once when it was on)."""
        if self._backoff_s:
            with self._lock:
                self._backoff_s = 0.0
                self._down_until = 0.0
            log.warning("%s: reachable again", self.where)
