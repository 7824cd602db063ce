"""Layout advice for serving a model: what will thrash, and the recommended layout.

Pure functions of a :class:`~tiercache.config.CacheConfig` and the size of a
model (no TensorFlow, no disk access), so ``tiercache generate`` can warn
before the first token and ``tiercache init`` can write a layout:

- :func:`layout_warnings` -- a tier the loop fills whose policy does not know
  the schedule (``lru``, ``fifo``, ``clock``, ``arc``, ``lfu``, ...; not
  ``opt``) and that is smaller than one forward pass would thrash on its own: a
  decoder reads every shard once per token in the same order, so the least
  recently used shard is always the next one needed. With the schedule declared,
  the engine's promotion rule keeps a fixed part of the pass in such a tier
  instead (docs/serving.md); the warning says which policy keeps the best part.
  Also prefetching from an ``lmdb`` tier below a RAM tier that cannot hold the model.
- :func:`recommended_layout` -- the TOML of docs/serving.md's recipe sized
  for a model: an ``opt`` RAM tier over a ``packed``, ``zero_copy`` SSD tier,
  each choice with its reason as a comment.

Thread-safety: pure functions (they only read their arguments).
"""

from __future__ import annotations

import math
from fractions import Fraction

from .config import CacheConfig, TierConfig
from .policies import get_policy_class
from .units import format_size, parse_percent, parse_size

__all__ = ["knows_schedule", "layout_warnings", "ram_bytes_for", "recommended_layout"]

_MiB = 1 << 20


def _mib(nbytes: int) -> str:
    return format_size(nbytes)


def knows_schedule(policy: str) -> bool:
    """Whether the policy ``policy`` (a name or ``"module:Class"``) uses a declared
    schedule (declares ``uses_schedule``, e.g. ``opt``). A policy that cannot be
    loaded counts as not knowing it. O(1) after the first load."""
    try:
        cls = get_policy_class(policy)
    except (LookupError, ImportError, TypeError):
        return False
    return cls.uses_schedule


def _fed_by_the_loop(cfg: CacheConfig, index: int) -> bool:
    """Whether the loop's gets fill tier ``index``: the bottom tier (the import puts
    every shard there), the top tier with an origin (misses are admitted at the
    top), or a tier whose lower neighbour promotes into it."""
    tiers = cfg.tiers
    if index == len(tiers) - 1:
        return True
    if index == 0 and cfg.origin is not None:
        return True
    return tiers[index + 1].promote_after is not None


def _thrash_warning(cfg: CacheConfig, index: int, schedule_bytes: int) -> str:
    tier = cfg.tiers[index]
    head = (f"{cfg.config_path}: tier {tier.name!r} ({tier.policy}, {_mib(tier.capacity_bytes)}) "
            f"is smaller than one forward pass ({_mib(schedule_bytes)}) and its policy does "
            "not know the loop's order: ")
    if index + 1 < len(cfg.tiers):
        below = cfg.tiers[index + 1].name
        head += ("on its own it would thrash (evict each shard just before it is needed "
                 "again). With the schedule declared (generate declares it) the engine skips "
                 "promotions that would evict a shard needed sooner, so the tier keeps a fixed "
                 "part of the pass -- whichever part the policy happened to keep.")
        fix = (f' Fix: policy = "opt" on tier {tier.name!r} (schedule-aware: keeps the part '
               f'worth most), or promote_after = "never" on tier {below!r} '
               "(read-through). See docs/serving.md.")
    else:
        head += ("each shard is evicted just before it is needed again, so nearly every get "
                 "misses (thrashing).")
        fix = (f' Fix: policy = "opt" on tier {tier.name!r}, or a capacity of at least '
               f"{_mib(schedule_bytes)}. See docs/serving.md.")
    return head + fix


def layout_warnings(cfg: CacheConfig, schedule_bytes: int, *,
                    prefetch: bool = False, decoded_bytes: int | None = None) -> list[str]:
    """Problems of ``cfg`` for a loop that reads ``schedule_bytes`` per pass.

    Parameters
    ----------
    cfg:
        The cache's validated configuration.
    schedule_bytes:
        Bytes of the distinct shards one forward pass reads (the model's size).
    prefetch:
        Whether a prefetcher will run.
    decoded_bytes:
        The same shards' bytes once decoded (float32), what a memory tier with
        ``representation = "decoded"`` holds of them; ``schedule_bytes`` if not given.

    Returns
    -------
    list of str
        One message per problem, each naming the file, the tier and the fix;
        empty when the layout is fine. O(tiers).
    """
    if schedule_bytes < 0:
        raise ValueError(f"schedule_bytes must be >= 0, got {schedule_bytes}")
    out: list[str] = []

    def held(tier: TierConfig) -> int:  # what one pass takes in this tier
        decoded = tier.options.get("representation") == "decoded"
        return decoded_bytes if decoded and decoded_bytes is not None else schedule_bytes

    for index, tier in enumerate(cfg.tiers):
        if tier.capacity_bytes >= held(tier) or knows_schedule(tier.policy):
            continue
        if _fed_by_the_loop(cfg, index):
            out.append(_thrash_warning(cfg, index, held(tier)))
    top = cfg.tiers[0]
    if prefetch and top.backend == "memory" and top.capacity_bytes < held(top):
        for tier in cfg.tiers[1:]:
            if tier.backend == "lmdb":
                out.append(
                    f"{cfg.config_path}: prefetching from the lmdb tier {tier.name!r} while the "
                    f"RAM tier {top.name!r} holds less than the model copies every shard it "
                    "brings up (SmolLM2, RAM 25 %, cold disk: 559 MB read per token, 1.45x "
                    "the disk bound; packed zero-copy 396 MB, 1.15x: docs/performance.md). "
                    f'Fix: backend = "packed" with zero_copy = true on tier {tier.name!r} '
                    "(without prefetch lmdb is slower still: 1.70x).")
                break
    return out


def ram_bytes_for(ram: str, model_bytes: int) -> int:
    """The RAM tier's capacity for ``--ram``: a percentage of the model's weights
    (``"25%"``) or a size (``"128MiB"``). ``ValueError`` otherwise. O(len(ram))."""
    try:
        share = parse_percent(ram)
        if share is not None:
            return max(1, math.ceil(Fraction(model_bytes)
                                    * Fraction(share).limit_denominator(10**6)))
        size = parse_size(ram)
    except ValueError as exc:
        raise ValueError(f"--ram {ram!r}: give a share of the model's weights (25%) or a size "
                         f"(128MiB): {exc}") from None
    if size <= 0:
        raise ValueError(f"--ram {ram!r}: the RAM tier needs a capacity > 0")
    return size


def _round_up(nbytes: int, step: int) -> int:
    return max(step, -(-nbytes // step) * step)


def recommended_layout(model_bytes: int, ram: str = "25%", *, ssd_path: str = "ssd",
                       model_name: str = "the model", decoded_bytes: int | None = None) -> str:
    """The TOML of the recommended layout (docs/serving.md) for a model of
    ``model_bytes`` of weights (as imported), with a comment per choice.

    The RAM tier gets ``ram`` (a share of the weights or a size, rounded up to
    a MiB), policy ``opt``; the SSD tier is ``packed`` + ``zero_copy`` at
    ``ssd_path``, sized twice the model (rounded up to 64 MiB: room for dead
    space before the packed file compacts). ``decoded_bytes``: the weights'
    size once decoded for compute (float32), when larger than ``model_bytes``
    (a quantized or float16 import): the RAM tier then holds shards decoded
    (``representation = "decoded"``, the faster choice measured in
    docs/serving.md) and ``ram`` is a share of ``decoded_bytes``, what that
    tier holds. O(1).
    """
    if model_bytes <= 0:
        raise ValueError(f"the model has no weights (size {model_bytes} bytes)")
    decoded = decoded_bytes is not None and decoded_bytes > model_bytes
    held = decoded_bytes if decoded_bytes is not None and decoded else model_bytes
    ram_bytes = _round_up(ram_bytes_for(ram, held), _MiB)
    ssd_bytes = _round_up(2 * model_bytes, 64 * _MiB)
    ram_note = ((f"{ram} of the decoded weights" if decoded else f"{ram} of the weights")
                if parse_percent(ram) is not None else "--ram")
    fits = ram_bytes >= held
    ram_comment = f"{ram_note}; " + ("the whole model fits" if fits
                                     else "the rest streams from the SSD tier")
    weights = (f"{_mib(model_bytes)} of weights, {_mib(held)} decoded" if decoded
               else f"{_mib(model_bytes)} of weights")
    representation = [
        _line('representation = "decoded"', "dequantized once, on promotion: hits are"),
        _line("", "float32, ready to compute; faster than decoding"),
        _line("", "at every use (docs/serving.md, where to dequantize)"),
    ] if decoded else []
    lines = [
        f"# tiercache layout for {model_name} ({weights}),",
        "# written by `tiercache init`: the recipe of docs/serving.md.",
        "#   tiercache import MODEL --config THIS_FILE      # once",
        '#   tiercache generate --config THIS_FILE --prompt "..."',
        _line('mode = "inclusive"', "promotions copy up and the SSD tier keeps every"),
        _line("", "shard: evicting from RAM writes nothing"),
        "",
        "[[tiers]]",
        'name = "ram"',
        _line('backend = "memory"', "arrays in this process's memory"),
        _line(f'capacity = "{ram_bytes // _MiB}MiB"', ram_comment),
        _line('policy = "opt"', "schedule-aware (Belady over the order the loop"),
        _line("", "declares); lru/arc would evict each shard just before"),
        _line("", "its next use"),
        *representation,
        "",
        "[[tiers]]",
        'name = "ssd"',
        _line('backend = "packed"', "every shard in one file, in the order a forward"),
        _line("", "pass reads them: cold reads run at the disk's speed"),
        _line(f"path = {_toml_string(ssd_path)}", "a relative path starts at this file's folder"),
        _line(f'capacity = "{ssd_bytes // _MiB}MiB"', "twice the weights: room for the dead bytes"),
        _line("", "of replaced shards until the file compacts"),
        _line("zero_copy = true", "shards served as read-only memory maps: no copy"),
        _line("promote_after = 1", "a shard read once may move up (opt admits it only"),
        _line("", "if no nearer shard must leave for it)"),
        "",
    ]
    return "\n".join(lines)


def _line(code: str, comment: str) -> str:
    """``code`` with ``comment`` aligned in column 27 (a continuation when ``code`` is "")."""
    return f"{code.ljust(24)}  # {comment}"


def _toml_string(text: str) -> str:
    """``text`` as a TOML basic string."""
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)
