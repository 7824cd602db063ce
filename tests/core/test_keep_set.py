"""The keep set: which zero-copy shards stay in the page cache between passes of a loop
larger than memory (tiercache.serving.keep), as pure logic: fed eviction counts and
room estimates, it must size and choose exactly as documented."""

from __future__ import annotations

import pytest

from tiercache.serving.keep import Candidate, KeepSet

MIB = 1 << 20


def candidates() -> list[Candidate]:
    # an embedding read twice per pass (first and last), then 8 layers of 10 MiB
    out = [Candidate("embed", 30 * MIB, uses=2, first=0)]
    out += [Candidate(f"blk.{i}", 10 * MIB, first=1 + i) for i in range(8)]
    return out


TOTAL = 110 * MIB


def never() -> list[Candidate]:
    raise AssertionError("candidates asked for although the page cache holds the loop")


def test_without_evictions_everything_is_kept_and_nothing_is_asked() -> None:
    keep = KeepSet()
    keep.new_pass(7 * MIB, never, lambda: None, window=9)  # evictions before: the baseline
    for _ in range(10):
        keep.new_pass(7 * MIB, never, lambda: None, window=9)
    assert not keep.active and keep.keeps("anything") and keep.target_bytes is None
    assert not keep.releases("anything")
    assert keep.describe()["kept_bytes"] is None and keep.passes == 11


def test_first_evictions_size_the_set_from_the_room_estimate() -> None:
    keep = KeepSet(margin_bytes=4 * MIB, margin_fraction=0.1)
    keep.new_pass(0, candidates, lambda: 80 * MIB, window=2)
    keep.new_pass(100 * MIB, candidates, lambda: 80 * MIB, window=2)
    # room 80 MiB - 2 shards of the average size - 4 MiB - 10 % of the rest
    average = TOTAL // 9
    spare = 80 * MIB - 2 * average
    assert keep.target_bytes == int(spare - 4 * MIB - 0.1 * spare)
    assert keep.active and keep.shrinks == 1
    # most reads per pass first, then reading order, while they fit
    assert 40 * MIB <= keep.target_bytes < 50 * MIB
    assert keep.members == frozenset({"embed", "blk.0"})
    assert keep.kept_bytes == 40 * MIB and keep.candidate_bytes == TOTAL
    assert keep.keeps("embed") and not keep.keeps("blk.7")
    assert keep.releases("blk.7") and not keep.releases("embed")
    assert not keep.releases("in.ram")  # not a candidate: nothing to let go


def test_without_a_room_estimate_three_quarters_are_kept_then_a_fifth_less() -> None:
    keep = KeepSet()
    keep.new_pass(0, never, lambda: None, window=0)  # the baseline
    keep.new_pass(TOTAL, candidates, lambda: None, window=9)
    assert keep.target_bytes == TOTAL * 3 // 4
    keep.new_pass(TOTAL + 8 * MIB, candidates, lambda: None, window=9)  # still losing
    assert keep.target_bytes == int(TOTAL * 3 // 4 * 0.8) and keep.shrinks == 2
    keep.new_pass(TOTAL + 8 * MIB, candidates, lambda: None, window=9)  # none: hold
    keep.new_pass(TOTAL + 9 * MIB, candidates, lambda: None, window=9)  # a trickle: hold
    assert keep.target_bytes == int(TOTAL * 3 // 4 * 0.8) and keep.shrinks == 2


def test_a_few_shards_lost_do_not_start_releasing() -> None:
    """A loop that nearly fits loses a little to a passing peak; a loop that does not
    fit loses nearly all of it each pass: only that starts the keep set."""
    keep = KeepSet()
    keep.new_pass(0, never, lambda: None, window=0)  # the baseline
    lost = 0
    for _ in range(6):
        lost += TOTAL // 5  # a fifth each pass: under the quarter
        keep.new_pass(lost, candidates, lambda: 40 * MIB, window=2)
    assert not keep.active and keep.target_bytes is None and keep.candidate_bytes == TOTAL
    keep.new_pass(lost + TOTAL // 4, candidates, lambda: 40 * MIB, window=2)
    assert keep.active


def test_an_estimate_above_what_fell_short_is_capped() -> None:
    keep = KeepSet()
    keep.new_pass(0, never, lambda: None, window=0)  # the baseline
    keep.new_pass(TOTAL, candidates, lambda: 10_000 * MIB, window=9)
    assert keep.target_bytes == TOTAL * 3 // 4  # the whole set did not fit


def test_quiet_passes_grow_the_set_up_to_the_room() -> None:
    keep = KeepSet(grow_after=2, grow_fraction=1 / 10)
    keep.new_pass(0, never, lambda: None, window=0)  # the baseline (no room estimate:
    # no jump back to the whole set, steps only)
    keep.new_pass(TOTAL, candidates, lambda: None, window=0)
    start = keep.target_bytes
    assert start is not None
    for _ in range(2):
        keep.new_pass(TOTAL, candidates, lambda: None, window=0)
    assert keep.target_bytes == start + TOTAL // 10 and keep.grows == 1
    for _ in range(40):
        keep.new_pass(TOTAL, candidates, lambda: None, window=0)
    assert keep.target_bytes == TOTAL and keep.members is not None
    assert len(keep.members) == 9  # everything fits again, still watched


def test_a_room_estimate_bounds_the_growth() -> None:
    keep = KeepSet(grow_after=1, margin_bytes=0, margin_fraction=0.0)
    keep.new_pass(0, never, lambda: None, window=0)  # the baseline
    keep.new_pass(TOTAL, candidates, lambda: 50 * MIB, window=0)
    assert keep.target_bytes == 50 * MIB
    for _ in range(20):
        keep.new_pass(TOTAL, candidates, lambda: 50 * MIB, window=0)
    assert keep.target_bytes == 50 * MIB  # never above what the cgroup leaves


def test_a_room_smaller_than_the_window_keeps_nothing() -> None:
    keep = KeepSet()
    keep.new_pass(0, never, lambda: None, window=0)  # the baseline
    keep.new_pass(TOTAL, candidates, lambda: 5 * MIB, window=9)
    assert keep.target_bytes == 0 and keep.members == frozenset()
    assert not keep.keeps("embed")


@pytest.mark.parametrize("kwargs", [{"shrink": 1.0}, {"shrink": 0.0}, {"grow_after": 0}])
def test_bad_parameters_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        KeepSet(**kwargs)  # type: ignore[arg-type]


def test_back_to_the_whole_set_when_the_room_allows_once() -> None:
    """A peak of memory use passes: two quiet passes and a room estimate that holds
    everything bring the whole set back; if that loses shards again, only steps."""
    room = [20 * MIB]
    keep = KeepSet()
    keep.new_pass(0, never, lambda: room[0], window=0)
    keep.new_pass(TOTAL, candidates, lambda: room[0], window=0)
    low = keep.target_bytes
    assert low is not None and low < TOTAL
    room[0] = 1000 * MIB  # the peak passed
    keep.new_pass(TOTAL, candidates, lambda: room[0], window=0)
    assert keep.target_bytes == low  # one quiet pass: not yet
    keep.new_pass(TOTAL, candidates, lambda: room[0], window=0)
    assert keep.target_bytes == TOTAL and keep.kept_bytes == TOTAL and keep.grows == 1
    keep.new_pass(2 * TOTAL, candidates, lambda: room[0], window=0)  # it did not fit
    assert keep.target_bytes == int(TOTAL * 0.8)
    for _ in range(3):
        keep.new_pass(2 * TOTAL, candidates, lambda: room[0], window=0)
    assert keep.target_bytes == int(TOTAL * 0.8)  # no second jump; a step comes at 4
    keep.new_pass(2 * TOTAL, candidates, lambda: room[0], window=0)
    assert keep.target_bytes == int(TOTAL * 0.8) + TOTAL // 16
