"""The ARC paper, reproduced: LRU and ARC hit ratios on OLTP, P6 and P12.

N. Megiddo and D. S. Modha, "ARC: A Self-Tuning, Low Overhead Replacement
Cache", USENIX FAST 2003 (Tables IV, V and VIII). The traces are in the
repository, in ``data/traces/arc/`` (see the README there), so a fresh clone
runs these tests with nothing beside it. Each replay is a cold start in count
mode (pages).

Budget on the 2-core VM: OLTP sweep ~4 s, P6 and P12 ~10 s each, the
Figure-4 reference on OLTP at c = 1000 ~17 s.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from reference_arc import ReferenceARC

from tiercache.sim import Trace, read_trace, simulate

pytestmark = pytest.mark.slow  # about a minute: the ARC paper's traces replayed

TRACES = Path(__file__).resolve().parents[2] / "data" / "traces" / "arc"
TOLERANCE_PP = 0.05  # percentage points, for tiercache's LRU and ARC
REFERENCE_TOLERANCE_PP = 0.02  # for the independent Figure-4 transliteration

#: Published hit ratios (percent): trace -> capacity -> (LRU, ARC).
PUBLISHED: dict[str, dict[int, tuple[float, float]]] = {
    "OLTP": {1000: (32.83, 38.93), 2000: (42.47, 46.08), 5000: (53.65, 55.25),
             10000: (60.70, 61.87), 15000: (64.63, 65.40)},
    "P12": {32768: (8.93, 15.94)},
    "P6": {32768: (4.24, 23.84)},
}
REQUESTS = {"OLTP": 914_145, "P6": 12_672_123, "P12": 13_208_930}


def test_arc_traces_are_present() -> None:
    """The traces ship with the repository; their absence is a failure, never a skip."""
    for name in REQUESTS:
        assert (TRACES / f"{name}.lis.zst").is_file(), f"ARC trace {name} not found in {TRACES}"


@pytest.fixture(scope="module")
def oltp() -> Trace:
    return read_trace(TRACES / "OLTP.lis.zst")


def check(name: str, trace: Trace) -> float:
    assert len(trace) == REQUESTS[name]
    capacities = list(PUBLISHED[name])
    started = time.perf_counter()
    results = simulate(trace, ["lru", "arc"], capacities)
    seconds = time.perf_counter() - started
    failures = []
    for capacity, (lru, arc) in PUBLISHED[name].items():
        for policy, published in (("lru", lru), ("arc", arc)):
            got = 100 * results.get(policy, capacity).hit_ratio
            if abs(got - published) > TOLERANCE_PP:
                failures.append(f"{name} {policy} c={capacity}: {got:.3f}% vs published "
                                f"{published:.2f}%")
    assert not failures, "\n".join(failures)
    return seconds


def test_oltp_table_iv(oltp: Trace) -> None:
    seconds = check("OLTP", oltp)
    print(f"OLTP sweep (2 policies x 5 capacities): {seconds:.1f} s")


def test_p12_table_v() -> None:
    check("P12", read_trace(TRACES / "P12.lis.zst"))


def test_p6_table_viii() -> None:
    check("P6", read_trace(TRACES / "P6.lis.zst"))


def test_reference_figure4_on_oltp(oltp: Trace) -> None:
    """tests/reference_arc.py (list-based, O(c) per request) also reproduces the paper."""
    ref = ReferenceARC(1000)
    hits = sum(map(ref.request, oltp.keys.tolist()))
    got = 100 * hits / len(oltp)
    assert abs(got - PUBLISHED["OLTP"][1000][1]) <= REFERENCE_TOLERANCE_PP, got
    # and tiercache's ARC agrees with it exactly
    assert simulate(oltp, "arc", 1000)[0].hits == hits
