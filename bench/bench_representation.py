"""Where to dequantize: a stored RAM tier (numpy dequantization at every use) vs a decoded one.

SmolLM2-135M imported natively (its Q4_1/Q8_0/... ggml blocks, ``tiercache import
smollm2``) into a packed, zero-copy SSD tier; above it a memory tier (policy
``opt``, mode inclusive: the recipe of docs/serving.md) that is either

``stored``
    shards as imported; the decoder dequantizes each fetched shard in numpy into
    a reused float32 buffer on every forward pass (``ShardDecoder``);
``decoded``
    ``representation = "decoded"``: a shard is dequantized once, when it is
    promoted into the RAM tier, and every later hit is float32, ready to compute
    (the decoder passes it through, zero-copy);

each with a RAM tier big enough for every shard (``full``), one of 25 % of
the *stored* bytes (``25%``; a decoded tier of that size holds ~4.5 % of the
float32 weights) and one of 25 % of the float32 bytes (``25%f32``: a stored
tier of that size holds every shard, a decoded one a quarter of them). The SSD
tier's file is in the page cache (warm: this measures CPU work, not the disk;
cold runs are bench/bench_serving.py's job).

Every configuration is loaded once (its own copy of the SSD folder), warmed up,
then timed over ``--repeat`` interleaved rounds of greedy decoding; medians are
reported, and every configuration must produce the same tokens.

Usage::

    python bench/bench_representation.py                 # ~3 min on the 2-core VM
    python bench/bench_representation.py --tokens 32 --repeat 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import tiercache
from tiercache.models import load_manifest, load_model

PROMPT = "The capital of France is"


def layout(ram_capacity: int, representation: str) -> str:
    """The TOML of one configuration (paths relative to the file)."""
    extra = f'representation = "{representation}"\n' if representation != "stored" else ""
    return (f'mode = "inclusive"\n\n[[tiers]]\nname = "ram"\nbackend = "memory"\n'
            f'capacity = {ram_capacity}\npolicy = "opt"\n{extra}\n'
            '[[tiers]]\nname = "ssd"\nbackend = "packed"\npath = "ssd"\n'
            'capacity = "1GiB"\nzero_copy = true\npromote_after = 1\n')


def import_once(root: Path) -> tuple[Path, int, int]:
    """Import SmolLM2 natively into ``root/base`` (SSD tier only); its manifest, stored
    bytes and float32 bytes."""
    base = root / "base"
    base.mkdir()
    (base / "tiers.toml").write_text(layout(1 << 20, "stored"), encoding="utf-8")
    subprocess.run([sys.executable, "-m", "tiercache", "import", "smollm2", "--config",
                    str(base / "tiers.toml"), "--tier", "ssd"], check=True,
                   stdout=subprocess.DEVNULL)
    manifest = base / "tiers.model.json"
    loaded = load_manifest(manifest)
    f32 = sum(4 * math.prod(t.shape) for t in loaded.tensors.values())
    return manifest, loaded.total_bytes, f32


def configure(root: Path, name: str, capacity: int, representation: str) -> Path:
    """A configuration folder with its own copy of the imported SSD folder."""
    folder = root / name
    shutil.copytree(root / "base" / "ssd", folder / "ssd")
    (folder / "tiers.toml").write_text(layout(capacity, representation), encoding="utf-8")
    return folder / "tiers.toml"


def timed(model: Any, ids: list[int], tokens: int) -> tuple[dict[str, float], list[int]]:
    """ms per decoded token (wall) and its parts from the model's timings."""
    llama = model.llama
    llama.timings.reset()
    started = time.perf_counter()
    out = llama.generate(ids, tokens)
    wall = time.perf_counter() - started
    t = llama.timings
    steps = max(1, t.forward_passes - 1)
    return ({"ms_per_token": wall / tokens * 1000,
             "decode_ms_per_step": t.decode_s / steps * 1000,
             "dequant_ms_per_pass": t.dequant_s / t.forward_passes * 1000,
             "fetch_ms_per_pass": t.fetch_s / t.forward_passes * 1000}, list(out))


def decoder_bytes(model: Any) -> int:
    """Bytes of the float32 buffers the model's shard decoder holds (outside the cache:
    one block's shards, the norm and the output head). O(buffers)."""
    return int(model.llama.decode_buffer_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=24, help="new tokens per round")
    parser.add_argument("--repeat", type=int, default=5, help="rounds (medians reported)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="tiercache-repr-"))
    try:
        manifest, stored_bytes, f32_bytes = import_once(root)
        quarter = stored_bytes // 4
        sizes = (("full", 2 << 30), ("25%", quarter), ("25%f32", f32_bytes // 4))
        configs = {f"{rep} {label}": configure(root, f"{rep}-{label}", cap, rep)
                   for label, cap in sizes
                   for rep in ("stored", "decoded")}
        models = {name: load_model(path, manifest=manifest, warn=False)
                  for name, path in configs.items()}
        ids = next(iter(models.values())).tokenizer.encode(PROMPT)
        for model in models.values():  # warm: fill the RAM tier, trace the functions --
            for _ in range(2):  # past the residency check (16 passes) that may switch to
                model.llama.generate(ids, 20)  # the whole step, and its prompt pass
        rows: dict[str, list[dict[str, float]]] = {name: [] for name in models}
        tokens: dict[str, list[int]] = {}
        names = list(models)
        for round_ in range(args.repeat):  # the order rotates: no config always runs first
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in order:
                row, out = timed(models[name], ids, args.tokens)
                rows[name].append(row)
                tokens[name] = out
            base = rows["stored full"][-1]["ms_per_token"]
            for name in names:
                rows[name][-1]["ratio"] = rows[name][-1]["ms_per_token"] / base
        reference = tokens["stored full"]
        same = {name: out == reference for name, out in tokens.items()}
        result: dict[str, Any] = {
            "machine": f"{platform.node()} {os.cpu_count()} cpus", "tokens": args.tokens,
            "repeat": args.repeat, "stored_bytes": stored_bytes, "ram_25pct_bytes": quarter,
            "float32_bytes": f32_bytes,
            "configs": {}}
        print(f"SmolLM2 native ({stored_bytes / 2**20:.1f} MiB stored), {args.tokens} tokens x "
              f"{args.repeat} rounds, medians; ratio: median over rounds of the time over "
              "'stored full' in the same round")
        print(f"{'config':14} {'ms/token':>9} {'ratio':>6} {'dequant ms/pass':>16} "
              f"{'fetch ms/pass':>14} {'RAM tier MiB':>13} {'decoder MiB':>12} "
              f"{'same tokens':>12}")
        for name, model in models.items():
            med = {k: statistics.median(r[k] for r in rows[name]) for k in rows[name][0]}
            ram = model.cache.stats()["tiers"]["ram"]
            med["ram_resident_mib"] = ram["resident_bytes"] / 2**20
            med["decoder_buffers_mib"] = decoder_bytes(model) / 2**20
            result["configs"][name] = {**med, "same_tokens": same[name]}
            print(f"{name:14} {med['ms_per_token']:9.1f} {med['ratio']:6.2f} "
                  f"{med['dequant_ms_per_pass']:16.1f} {med['fetch_ms_per_pass']:14.1f} "
                  f"{med['ram_resident_mib']:13.1f} {med['decoder_buffers_mib']:12.1f} "
                  f"{same[name]!s:>12}")
        for model in models.values():
            model.close()
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
        if not all(same.values()):
            raise SystemExit("the configurations produced different tokens")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    tiercache.__name__  # noqa: B018 - the package imports before TensorFlow
    main()
