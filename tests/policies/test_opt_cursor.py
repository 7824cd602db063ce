"""OPT driven by the engine's cursor, as a model loop drives it: its shortcuts for the
loop's usual steps (the next request, one request another tier served) rank every
resident exactly as the general path does -- Belady's order, next use after the
cursor's position -- through jumps, repeats, misses and evictions."""

from __future__ import annotations

import random

import pytest

from tiercache.policies.opt import NEVER, OPTPolicy


def _expected_next_use(schedule: list[str], key: str, time: int) -> int:
    """The first absolute position after ``time`` whose key is ``key`` (brute force)."""
    period = len(schedule)
    for step in range(1, period + 1):
        if schedule[(time + step) % period] == key:
            return time + step
    return NEVER


@pytest.mark.parametrize("seed", range(6))
def test_cursor_driven_ranks_equal_brute_force_belady(seed: int) -> None:
    rng = random.Random(seed)
    schedule = [f"k{i}" for i in range(12)] + ["k3", "emb", "k7"]  # repeated keys too
    keys = sorted(set(schedule))
    capacity = 6
    policy = OPTPolicy(capacity, schedule=schedule)
    resident: set[str] = set()
    position = -1
    for _ in range(600):
        move = rng.random()
        if move < 0.8:
            position = (position + 1) % len(schedule)  # the loop's usual step
        elif move < 0.9:
            position = rng.randrange(len(schedule))  # a jump (a new sequence, a skip)
        # else: a repeated read at the same position
        if position < 0:
            position = 0
        repeat = policy.time >= 0 and policy.time % len(schedule) == position
        policy.on_cursor(position)
        if not repeat:  # just before the cursor's request
            assert (policy.time + 1) % len(schedule) == position
        key = schedule[position]
        saw = rng.random() >= 0.3  # else served by another tier: this one sees nothing
        hit = saw and key in resident
        if not saw:
            pass
        elif hit:
            policy.on_hit(key)
        else:
            policy.on_miss(key, 1)
            if len(resident) >= capacity:
                victim = str(policy.victim(key))
                ranks = {k: _expected_next_use(schedule, k, policy.time) for k in resident}
                assert ranks[victim] == max(ranks.values()), (victim, ranks)
                policy.on_evict(victim)
                resident.discard(victim)
            policy.on_insert(key, 1)
            resident.add(key)
        # a hit on the cursor's request lands time on it; a miss (an admission: maybe a
        # prefetch) or a request this tier did not see leaves time before it
        landed = policy.time % len(schedule) == position
        assert landed == (hit or repeat), (position, policy.time, hit, repeat)
        if rng.random() < 0.05 and resident:  # a put elsewhere removes a key
            gone = rng.choice(sorted(resident))
            policy.on_remove(gone)
            resident.discard(gone)
        policy.check_invariants()  # every resident's next use is right at this time
        for k in resident:
            assert policy.next_use(k) == _expected_next_use(schedule, k, policy.time)
    assert set(policy) == resident and set(keys) >= resident


def test_a_prefetched_next_shard_keeps_its_rank_until_the_loop_reads_it() -> None:
    """A prefetcher admits the shards right after the cursor; the next one must not
    become the furthest needed (the first victim) before the loop has read it."""
    schedule = [f"k{i}" for i in range(8)]
    policy = OPTPolicy(3, schedule=schedule)
    for key in ("k5", "k6"):
        policy.on_miss(key, 1)
        policy.on_insert(key, 1)
    policy.on_cursor(1)
    before = policy.time  # just before the loop's read of k1
    policy.on_miss("k1", 1)  # prefetched: the loop reads it next
    policy.on_insert("k1", 1)
    assert policy.time == before  # an admission does not move time
    policy.on_miss("k2", 1)  # the next prefetch needs room
    assert policy.victim("k2") == "k6", "the shard needed next would be evicted"
