"""Parse and format byte sizes: ``"64MiB"``, ``"1.5 GB"``, ``4096``, ``"25%"``.

Binary units (KiB, MiB, GiB, TiB) are powers of 1024; decimal units (kB, MB,
GB, TB) powers of 1000; ``B`` or no unit means bytes. A bare letter (``K``,
``M``, ``G``, ``T``, in either case) is refused as ambiguous: ``"64M"`` could
mean 64 MiB or 64 MB, so the error asks for one of them.

Hostile values (hundreds of digits, ``inf``, ``nan``, negative numbers) are
refused with a :class:`ValueError` naming the limit, never an
:class:`OverflowError`; the arithmetic is exact (:class:`fractions.Fraction`).
"""

from __future__ import annotations

import re
import reprlib
from fractions import Fraction

_UNITS: dict[str, int] = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
#: Single letters that name no unit on their own: K/M/G/T mean 1000^n to some tools
#: and 1024^n to others. Maps the letter to its (binary, decimal) spellings.
_AMBIGUOUS: dict[str, tuple[str, str, str, str]] = {
    "k": ("KiB", "2^10", "kB", "10^3"), "m": ("MiB", "2^20", "MB", "10^6"),
    "g": ("GiB", "2^30", "GB", "10^9"), "t": ("TiB", "2^40", "TB", "10^12"),
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")
_PERCENT_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*%\s*$")
#: Digits kept after the decimal point: more than any unit can turn into a whole byte.
_MAX_FRACTION_DIGITS = 24

#: Largest size accepted anywhere (1 PiB): anything bigger is a typo.
MAX_SIZE_BYTES = 1024**5
_MAX_SIZE_NAME = "1 PiB (2^50 bytes)"

class _SafeRepr(reprlib.Repr):
    """:class:`reprlib.Repr` that also survives ints too long for ``str()``."""

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:  # str() of a huge int is slow, or refused past 4300 digits
            digits = int(x.bit_length() * 0.30103) + 1
            return f"{'-' if x < 0 else ''}<an integer of about {digits} digits>"
        return super().repr_int(x, level)


_SHOW = _SafeRepr()
_SHOW.maxstring = 60
_SHOW.maxother = 60
_SHOW.maxlong = 40


def show(value: object) -> str:
    """``repr(value)`` cut to a readable length, safe on hostile values (a 400-digit
    int, a megabyte string, a list nested 50,000 deep: :mod:`reprlib` stops at a
    fixed depth, so it never recurses without bound; a huge int is described by its
    number of digits). O(1) in the value's size; pure, thread-safe."""
    return _SHOW.repr(value)


def _too_large(value: object) -> ValueError:
    return ValueError(f"size {show(value)} is larger than the limit of {_MAX_SIZE_NAME}; "
                      "is it a typo?")


def _parse_number(text: str, value: object) -> Fraction:
    """The decimal ``text`` (digits, at most one point) as an exact fraction, refusing
    integer parts too long to be a size before converting anything. O(len(text))."""
    whole, _, frac = text.partition(".")
    if len(whole.lstrip("0")) > 19:  # >= 10^19 before any unit: far past the limit
        raise _too_large(value)
    return Fraction(f"{whole or '0'}.{frac[:_MAX_FRACTION_DIGITS] or '0'}")


def parse_size(value: object, *, allow_zero: bool = False) -> int:
    """Return ``value`` as a whole number of bytes.

    Parameters
    ----------
    value:
        A non-negative int, or a string such as ``"64MiB"``, ``"64 MiB"``,
        ``"1.5GB"`` or ``"4096"``. A fractional result is rounded down.
    allow_zero:
        Accept 0 (otherwise a size must be > 0).

    Returns
    -------
    int
        The number of bytes, at most :data:`MAX_SIZE_BYTES`.

    Raises
    ------
    ValueError
        With a readable reason (the config layer adds the file and key): not a
        size, an unknown or ambiguous unit (``"64M"``), negative, zero, or
        larger than :data:`MAX_SIZE_BYTES`.

    Notes
    -----
    O(len(value)); pure, thread-safe.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 64MiB, got a boolean ({value!r})")
    if isinstance(value, int):
        nbytes = value
    elif isinstance(value, float):
        raise ValueError(f"expected a whole number of bytes or a size string, got {show(value)}")
    elif isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m:
            raise ValueError(f"{show(value)} is not a size (examples: 4096, \"64MiB\", "
                             "\"1.5GB\")")
        number, unit = m.group(1), m.group(2).lower()
        if unit in _AMBIGUOUS:
            binary, bexp, decimal, dexp = _AMBIGUOUS[unit]
            raise ValueError(f"unit {m.group(2)!r} in {show(value)} is ambiguous: write "
                             f"\"{number}{binary}\" ({bexp}) or \"{number}{decimal}\" ({dexp})")
        if unit not in _UNITS:
            raise ValueError(f"unknown unit {show(m.group(2))} in {show(value)} "
                             "(use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB)")
        nbytes = int(_parse_number(number, value) * _UNITS[unit])
    else:
        raise ValueError(f"expected a size such as \"64MiB\", got {type(value).__name__}")
    if nbytes < 0:
        raise ValueError(f"size must not be negative, got {show(value)}")
    if nbytes == 0 and not allow_zero:
        raise ValueError(f"size must be greater than zero, got {show(value)}")
    if nbytes > MAX_SIZE_BYTES:
        raise _too_large(value)
    return nbytes


def parse_percent(value: object) -> float | None:
    """Return the fraction for a string like ``"25%"`` (0.25), else ``None``.

    Raises :class:`ValueError` for a percentage outside (0%, 100%]. O(len(value));
    pure, thread-safe.
    """
    if not isinstance(value, str):
        return None
    m = _PERCENT_RE.match(value)
    if not m:
        return None
    whole = m.group(1).partition(".")[0]
    fraction = float(m.group(1)) / 100.0 if len(whole.lstrip("0")) <= 6 else float("inf")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"percentage must be in (0%, 100%], got {show(value)}")
    return fraction


def format_size(nbytes: float) -> str:
    """Human-readable binary size: ``format_size(3 * 2**20) == "3.0 MiB"``."""
    sign = "-" if nbytes < 0 else ""
    n = float(abs(nbytes))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
