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


class Loop:
    """Passes of a loop over :func:`candidates`, with a cumulative eviction count."""

    def __init__(self, keep: KeepSet, room: int | None = None, window: int = 0) -> None:
        self.keep, self.room, self.window, self.lost = keep, room, window, 0
        for _ in range(keep.settle_passes):  # the first passes: the baseline
            keep.new_pass(0, never, self.estimate, window)

    def estimate(self) -> int | None:
        return self.room

    def run(self, lost: int = 0) -> KeepSet:
        """One pass that found ``lost`` bytes evicted."""
        self.lost += lost
        self.keep.new_pass(self.lost, candidates, self.estimate, self.window)
        return self.keep

    def thrash(self) -> KeepSet:
        """Two passes losing the whole loop: the keep set starts."""
        self.run(TOTAL)
        assert not self.keep.active  # once may be a cold start
        return self.run(TOTAL)


def test_without_evictions_everything_is_kept_and_nothing_is_asked() -> None:
    keep = KeepSet()
    for lost in (7 * MIB, 200 * MIB, 400 * MIB):  # a cold start's burst: the baseline
        keep.new_pass(lost, never, lambda: None, window=9)
    for _ in range(10):
        keep.new_pass(400 * MIB, never, lambda: None, window=9)
    assert not keep.active and keep.keeps("anything") and keep.target_bytes is None
    assert not keep.releases("anything")
    assert keep.describe()["kept_bytes"] is None and keep.passes == 13


def test_a_loop_that_does_not_fit_is_sized_from_the_room_estimate() -> None:
    keep = Loop(KeepSet(margin_bytes=4 * MIB, margin_fraction=0.1), 80 * MIB, 2).thrash()
    # room 80 MiB - 2 shards of the average size - 4 MiB - 10 % of the rest
    spare = 80 * MIB - 2 * (TOTAL // 9)
    assert keep.target_bytes == int(spare - 4 * MIB - 0.1 * spare)
    assert 40 * MIB <= keep.target_bytes < 50 * MIB
    assert keep.active and keep.shrinks == 1
    # most reads per pass first, then reading order, while they fit
    assert keep.members == frozenset({"embed", "blk.0"})
    assert keep.kept_bytes == 40 * MIB and keep.candidate_bytes == TOTAL
    assert keep.keeps("embed") and not keep.keeps("blk.7")
    assert keep.releases("blk.7") and not keep.releases("embed")
    assert not keep.releases("in.ram")  # not a candidate: nothing to let go


def test_without_a_room_estimate_three_quarters_are_kept_then_a_fifth_less() -> None:
    loop = Loop(KeepSet(), None, 9)
    keep = loop.thrash()
    assert keep.target_bytes == TOTAL * 3 // 4
    loop.run(8 * MIB)  # still losing (over 1/16 of the candidates): shrink
    assert keep.target_bytes == int(TOTAL * 3 // 4 * 0.8) and keep.shrinks == 2
    loop.run(0)  # nothing lost: hold
    loop.run(MIB)  # a trickle: hold
    assert keep.target_bytes == int(TOTAL * 3 // 4 * 0.8) and keep.shrinks == 2


def test_a_few_shards_lost_or_a_burst_do_not_start_releasing() -> None:
    """A loop that nearly fits loses a little to a passing peak, a cold start may lose
    much once; a loop that does not fit loses nearly all of it every pass: only that
    starts the keep set."""
    loop = Loop(KeepSet(), 40 * MIB, 2)
    for _ in range(6):
        loop.run(TOTAL // 5)  # a fifth each pass: under the quarter
    assert not loop.keep.active and loop.keep.candidate_bytes == TOTAL
    loop.run(TOTAL // 2)
    loop.run(0)
    loop.run(TOTAL // 2)
    assert not loop.keep.active  # bursts apart
    loop.run(TOTAL // 2)
    assert loop.keep.active  # two passes in a row: the loop does not fit


def test_an_estimate_above_what_fell_short_is_capped() -> None:
    keep = Loop(KeepSet(), 10_000 * MIB, 9).thrash()
    assert keep.target_bytes == TOTAL * 3 // 4  # the whole set did not fit


def test_quiet_passes_grow_the_set_by_steps_without_an_estimate() -> None:
    loop = Loop(KeepSet(grow_after=2, grow_fraction=1 / 10))  # no estimate: no jump back
    keep = loop.thrash()
    start = keep.target_bytes
    assert start is not None
    loop.run()
    loop.run()
    assert keep.target_bytes == start + TOTAL // 10 and keep.grows == 1
    for _ in range(40):
        loop.run()
    assert keep.target_bytes == TOTAL and keep.members is not None
    assert len(keep.members) == 9  # everything fits again, still watched


def test_a_room_estimate_bounds_the_growth() -> None:
    loop = Loop(KeepSet(grow_after=1, margin_bytes=0, margin_fraction=0.0), 50 * MIB)
    keep = loop.thrash()
    assert keep.target_bytes == 50 * MIB
    for _ in range(20):
        loop.run()
    assert keep.target_bytes == 50 * MIB  # never above what the cgroup leaves


def test_a_room_smaller_than_the_window_keeps_only_what_is_read_twice() -> None:
    keep = Loop(KeepSet(), 5 * MIB, 9).thrash()
    assert keep.target_bytes == 0 and keep.members == frozenset({"embed"})
    assert keep.keeps("embed") and not keep.releases("embed")  # never released
    assert keep.releases("blk.0") and keep.kept_bytes == 30 * MIB


def test_standing_down_when_the_room_allows_once() -> None:
    """A peak of memory use passes: two quiet passes and a room estimate that holds
    everything stand the set down (nothing released, as before it started); if the
    loop then loses shards again, it starts again and never stands down twice."""
    loop = Loop(KeepSet(), 20 * MIB)
    keep = loop.thrash()
    low = keep.target_bytes
    assert low is not None and low < TOTAL
    loop.room = 1000 * MIB  # the peak passed
    loop.run()
    assert keep.target_bytes == low  # one quiet pass: not yet
    loop.run()
    assert not keep.active and keep.target_bytes is None and keep.grows == 1
    assert not keep.releases("blk.7")
    loop.run(TOTAL // 8)  # a little lost: still standing down
    assert not keep.active
    loop.thrash()  # the loop does not fit after all
    assert keep.active and keep.target_bytes == TOTAL * 3 // 4
    for _ in range(3):
        loop.run()
    assert keep.active and keep.target_bytes == TOTAL * 3 // 4  # no second stand-down
    loop.run()
    assert keep.target_bytes == TOTAL * 3 // 4 + TOTAL // 16  # a step at 4


@pytest.mark.parametrize("kwargs", [{"shrink": 1.0}, {"shrink": 0.0}, {"grow_after": 0}])
def test_bad_parameters_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        KeepSet(**kwargs)  # type: ignore[arg-type]


class ShrinkingMemory:
    """A cache stand-in for the prefetcher whose page cache starts losing the whole loop
    at pass ``from_pass`` -- noticed only on passes that watch (``advise(watch=True)``
    is where a store's ``mincore`` finds evicted shards)."""

    def __init__(self, keys: list[str], from_pass: int) -> None:
        self.schedule = tuple(keys)
        self.tiers = [type("T", (), {"capacity_bytes": 1 << 30})()]
        self.from_pass = from_pass
        self.passes = 0
        self.evicted = 0
        self.watched: list[bool] = []
        self.released: list[str] = []

    def advise(self, key: str, *, watch: bool = False) -> int | None:
        if key == self.schedule[0]:
            self.passes += 1
            self.watched.append(watch)
        if watch and self.passes >= self.from_pass:
            self.evicted += 10 * MIB  # every shard read before: gone
        return 10 * MIB

    def prefetch(self, key: str, *, once: bool = False) -> int:
        return 0

    def pending(self, key: str) -> bool:
        return False

    def release(self, key: str) -> int:
        self.released.append(key)
        return 10 * MIB

    def page_evictions(self) -> int:
        return self.evicted

    def keep_candidates(self) -> list[Candidate]:
        return [Candidate(k, 10 * MIB, first=i) for i, k in enumerate(self.schedule)]


def test_a_loop_that_stops_fitting_late_is_noticed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Watching one pass in eight must not hide a loop that starts thrashing late: a
    pass that lost a quarter of the loop makes the next one watched."""
    from tiercache.serving.prefetcher import Prefetcher

    keys = [f"blk.{i}" for i in range(12)]
    target = ShrinkingMemory(keys, from_pass=10)
    monkeypatch.setattr("tiercache.serving.prefetcher.page_cache_room_bytes", lambda: 60 * MIB)
    prefetcher = Prefetcher(target, depth=2, drop_behind=True)  # not started: notify only
    for _ in range(30):
        for position in range(0, len(keys), 3):
            prefetcher.notify(position + 2)  # a layer of three per notify
    prefetcher.stop()
    assert not any(target.watched[5:7])  # quiet passes are not watched...
    assert prefetcher.keep.active  # ...yet the late thrash started the keep set
    assert target.released and not set(target.released) & (prefetcher.keep.members or set())


def test_a_small_set_the_page_cache_cannot_hold_shrinks_to_what_it_kept() -> None:
    """A set much smaller than the loop (a cgroup's room mostly taken back by the loop's
    own allocations) that loses a good part of itself every pass -- far below 1/16 of
    the candidates -- shrinks to what the pass kept, down to nothing: shards lost every
    pass would be read back through page faults inside the compute."""
    shards = [Candidate(f"blk.{i}", 10 * MIB, first=i) for i in range(40)]
    keep = KeepSet(margin_bytes=0, margin_fraction=0.0, lost_fraction=0.25)  # (streaming)
    for _ in range(keep.settle_passes):
        keep.new_pass(0, never, lambda: None, 0)
    lost = 0
    for _ in range(2):  # the whole loop lost twice: the set starts, sized from the room
        lost += 400 * MIB
        keep.new_pass(lost, lambda: shards, lambda: 30 * MIB, 0)
    assert keep.active and keep.kept_bytes == 30 * MIB
    lost += 10 * MIB  # a third of the set; 1/40 of the loop
    keep.new_pass(lost, lambda: shards, lambda: 30 * MIB, 0)
    assert keep.target_bytes == 20 * MIB and keep.members == frozenset({"blk.0", "blk.1"})
    lost += 20 * MIB  # all of it
    keep.new_pass(lost, lambda: shards, lambda: 30 * MIB, 0)
    assert keep.target_bytes == 0 and keep.members == frozenset() and keep.shrinks == 3
    assert keep.releases("blk.0") and keep.active


def test_without_streaming_a_small_set_losing_a_third_holds() -> None:
    """The kept-bytes rule is the streaming prefetcher's (lost_fraction); without it a
    pass losing under 1/16 of the candidates leaves the target as it was."""
    shards = [Candidate(f"blk.{i}", 10 * MIB, first=i) for i in range(40)]
    keep = KeepSet(margin_bytes=0, margin_fraction=0.0)
    for _ in range(keep.settle_passes):
        keep.new_pass(0, never, lambda: None, 0)
    lost = 800 * MIB
    keep.new_pass(400 * MIB, lambda: shards, lambda: 30 * MIB, 0)
    keep.new_pass(lost, lambda: shards, lambda: 30 * MIB, 0)
    keep.new_pass(lost + 10 * MIB, lambda: shards, lambda: 30 * MIB, 0)
    assert keep.target_bytes == 30 * MIB and keep.shrinks == 1


def test_a_large_top_tier_does_not_make_streaming_hold_gigabytes() -> None:
    from tiercache.serving.prefetcher import STREAM_AHEAD_MAX_BYTES, Prefetcher

    target = ShrinkingMemory([f"blk.{i}" for i in range(4)], from_pass=10**6)
    big = Prefetcher(target, max_bytes=8 << 30, drop_behind=True, stream=True)
    small = Prefetcher(target, max_bytes=4 * MIB, drop_behind=True, stream=True)
    big.stop()
    small.stop()
    assert big.stream_bytes == STREAM_AHEAD_MAX_BYTES == 64 * MIB
    assert small.stream_bytes == 4 * MIB and big.max_bytes == 8 << 30
    assert big.keep.lost_fraction == 0.25
    assert Prefetcher(target, drop_behind=True).keep.lost_fraction is None
