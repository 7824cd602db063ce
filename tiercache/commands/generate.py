"""``tiercache generate --config tiers.toml --prompt TEXT``: greedy text generation.

Runs the Llama model imported into the cache (``tiercache import``) with
TensorFlow, streaming every block's weights from the tiers, and prints the
generated text as it comes; timing goes to stderr. ``--json`` prints one
object instead::

    {"prompt_ids": [...], "token_ids": [...],   # token_ids: the generated tokens only
     "text": "...",                             # decoded token_ids
     "stats": {...},                            # cache.stats()
     "timing": {...}}                           # LlamaModel.timings.as_dict()

The prompt is used raw (no chat template; BOS only if the model asks for it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _manifest_path(args: argparse.Namespace, cfg: object) -> Path:
    from ..config import CacheConfig
    from ..sources import manifest_path_for_config, manifest_path_for_npy_dir

    if args.manifest:
        return Path(args.manifest)
    path = manifest_path_for_config(args.config)
    if not path.exists() and isinstance(cfg, CacheConfig) and cfg.origin is not None \
            and cfg.origin.kind == "npy":
        in_origin = manifest_path_for_npy_dir(cfg.origin.path)
        if in_origin.exists():
            return in_origin
    return path


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..engine import TieredCache
    from ..sources import BPETokenizer, load_manifest

    if args.max_new_tokens < 0:
        raise ValueError("--max-new-tokens must be >= 0")
    cfg = load_config(args.config)
    manifest = load_manifest(_manifest_path(args, cfg))
    hparams = manifest.llama_hparams()
    if manifest.tokenizer is None:
        raise ValueError(f"model {manifest.name!r} has no supported tokenizer")
    tokenizer = BPETokenizer.from_dict(manifest.tokenizer)
    prompt_ids = tokenizer.encode(args.prompt)
    if not prompt_ids:
        raise ValueError("the prompt is empty: give some text with --prompt")

    from ..adapters.tensorflow import LlamaModel

    with TieredCache.from_config(cfg) as cache:
        model = LlamaModel(cache, hparams, key_prefix=manifest.key_prefix)
        # always declare the loop's order: schedule-aware policies (opt) use it to
        # evict the shard needed furthest ahead, and the prefetcher follows it
        cache.declare_schedule(model.schedule())
        if args.prefetch:
            cache.start_prefetcher(depth=args.prefetch)
        printed = ""
        generated: list[int] = []

        def show(token: int) -> None:
            nonlocal printed
            generated.append(token)
            text = tokenizer.decode(generated)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                sys.stdout.write(text[len(printed):])
                sys.stdout.flush()
                printed = text

        eos = None if args.ignore_eos else tokenizer.eos_id
        if not args.json:
            sys.stdout.write(args.prompt)
            sys.stdout.flush()
        try:
            token_ids = model.generate(prompt_ids, args.max_new_tokens, eos_id=eos,
                                       on_token=None if args.json else show)
        finally:
            cache.stop_prefetcher()
        stats = cache.stats()
    timing = model.timings.as_dict()
    text = tokenizer.decode(token_ids)
    if args.json:
        print(json.dumps({"prompt_ids": prompt_ids, "token_ids": token_ids, "text": text,
                          "stats": stats, "timing": timing}, indent=2, default=str))
        return 0
    sys.stdout.write(text[len(printed):] + "\n")
    rate = timing["decode_tokens_per_s"]
    print(f"{len(token_ids)} tokens; decode {rate:.2f} tokens/s; "
          f"fetch {timing['fetch_s']:.2f} s, handoff {timing['handoff_s']:.3f} s, "
          f"compute {timing['compute_s']:.2f} s" if rate is not None else
          f"{len(token_ids)} tokens", file=sys.stderr)
    if args.stats:
        from .stats import render_stats

        render_stats(stats)
        loop = stats["loop"]
        print(f"loop: {loop['gets']} scheduled gets, {loop['stalls']} not in the top tier "
              f"({loop['stall_s'] * 1e3:.1f} ms), {loop['prefetched']} prefetched")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("generate", help="generate text greedily with the model in a cache")
    p.add_argument("--config", required=True, help="the cache's TOML file")
    p.add_argument("--prompt", required=True, help="the prompt (raw text, no chat template)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="tokens to generate (16)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--manifest", help="the model manifest (default: <config stem>.model.json "
                   "next to the config)")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-sequence")
    p.add_argument("--stats", action="store_true",
                   help="print the per-tier statistics table after the text")
    p.add_argument("--prefetch", type=int, default=0, metavar="DEPTH",
                   help="declare the model's schedule and prefetch DEPTH shards ahead")
    p.set_defaults(func=run)
