"""Parse and format byte sizes: ``"64MiB"``, ``"1.5 GB"``, ``4096``, ``"25%"``.

Binary units (KiB, MiB, GiB, TiB) are powers of 1024; decimal units (kB, MB,
GB, TB) powers of 1000; ``B`` or no unit means bytes.
"""

from __future__ import annotations

import re

_UNITS: dict[str, int] = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")
_PERCENT_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*%\s*$")

#: Largest size accepted anywhere (1 PiB): anything bigger is a typo.
MAX_SIZE_BYTES = 1024**5


def parse_size(value: object, *, allow_zero: bool = False) -> int:
    """Return ``value`` as a whole number of bytes.

    Accepts a non-negative int or a string such as ``"64MiB"`` or ``"1.5GB"``.
    Raises :class:`ValueError` with a readable reason otherwise (the config
    layer adds the file and key).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 64MiB, got a boolean ({value!r})")
    if isinstance(value, int):
        nbytes = value
    elif isinstance(value, float):
        raise ValueError(f"expected a whole number of bytes or a size string, got {value!r}")
    elif isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a size (examples: 4096, \"64MiB\", \"1.5GB\")")
        number, unit = m.group(1), m.group(2).lower()
        if unit not in _UNITS:
            raise ValueError(f"unknown unit {m.group(2)!r} in {value!r} "
                             "(use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB)")
        nbytes = int(float(number) * _UNITS[unit])
    else:
        raise ValueError(f"expected a size such as \"64MiB\", got {type(value).__name__}")
    if nbytes < 0:
        raise ValueError(f"size must not be negative, got {value!r}")
    if nbytes == 0 and not allow_zero:
        raise ValueError(f"size must be greater than zero, got {value!r}")
    if nbytes > MAX_SIZE_BYTES:
        raise ValueError(f"size {value!r} is larger than 1 PiB; is it a typo?")
    return nbytes


def parse_percent(value: object) -> float | None:
    """Return the fraction for a string like ``"25%"`` (0.25), else ``None``."""
    if not isinstance(value, str):
        return None
    m = _PERCENT_RE.match(value)
    if not m:
        return None
    fraction = float(m.group(1)) / 100.0
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"percentage must be in (0%, 100%], got {value!r}")
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
