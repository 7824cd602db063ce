"""``tiercache generate --config tiers.toml --prompt TEXT``: text generation.

Runs the Llama model imported into the cache (``tiercache import``) with
TensorFlow through :func:`tiercache.load_model`, streaming every block's
weights from the tiers, and prints the generated text as it comes; status
lines, layout warnings (:mod:`tiercache.advice`) and timing go to stderr.
The schedule is declared and the prefetcher runs 32 shards ahead unless
``--prefetch 0``. ``--json`` prints one object instead::

    {"prompt_ids": [...], "token_ids": [...],   # token_ids: the generated tokens only
     "text": "...",                             # decoded token_ids
     "stats": {...},                            # cache.stats()
     "timing": {...}}                           # LlamaModel.timings.as_dict()

The prompt is used raw (no BOS unless the model asks for it) unless
``--chat``, which wraps it in the model's chat template (ChatML, from the
manifest) and prints only the reply. Greedy unless ``--temperature`` > 0
(then ``--top-k``, ``--top-p``, ``--seed``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..models.api import DEFAULT_PREFETCH


def _prompt_text(args: argparse.Namespace) -> str:
    if args.prompt_file is None:
        return str(args.prompt)
    path = Path(args.prompt_file)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: prompt file not found") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: the prompt file is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise OSError(f"{path}: cannot read the prompt file ({exc.strerror or exc})") from None


def _status(line: str) -> None:
    print(f"tiercache: {line}", file=sys.stderr, flush=True)


def _warning(text: str) -> None:
    print(f"tiercache: warning: {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from ..models.api import Sampler, TextStream, load_model

    if args.max_new_tokens < 0:
        raise ValueError("--max-new-tokens must be >= 0")
    if args.prefetch < 0:
        raise ValueError("--prefetch must be >= 0 (0: off)")
    sampler = Sampler(args.temperature, args.top_k, args.top_p, args.seed)
    prompt = _prompt_text(args)
    model = load_model(args.config, manifest=args.manifest, prefetch=args.prefetch,
                       warn=_warning, on_status=None if args.json else _status)
    with model:
        prompt_ids = model.encode_prompt(prompt, chat=args.chat, system=args.system)
        stream = TextStream(model.tokenizer)
        if not args.json and not args.chat:
            sys.stdout.write(prompt)
            sys.stdout.flush()
        token_ids: list[int] = []
        for token in model.generate_ids(prompt_ids, args.max_new_tokens, sampler=sampler,
                                        stop_at_eos=not args.ignore_eos):
            token_ids.append(token)
            piece = stream.push(token)
            if piece and not args.json:
                sys.stdout.write(piece)
                sys.stdout.flush()
        model.cache.stop_prefetcher()
        stats = model.cache.stats()
    timing = model.timings.as_dict()
    if args.json:
        print(json.dumps({"prompt_ids": prompt_ids, "token_ids": token_ids,
                          "text": model.tokenizer.decode(token_ids), "stats": stats,
                          "timing": timing}, indent=2, default=str))
        return 0
    sys.stdout.write(stream.flush() + "\n")
    rate = timing["decode_tokens_per_s"]
    print(f"{len(token_ids)} tokens; decode {rate:.2f} tokens/s; "
          f"fetch {timing['fetch_s']:.2f} s, handoff {timing['handoff_s']:.3f} s, "
          f"compute {timing['compute_s']:.2f} s" if rate is not None else
          f"{len(token_ids)} tokens", file=sys.stderr)
    if args.stats:
        from .stats import render_stats

        sys.stdout.flush()
        render_stats(stats, loop=True)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("generate", help="generate text with the model in a cache")
    p.add_argument("--config", required=True, help="the cache's TOML file")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the prompt text")
    prompt.add_argument("--prompt-file", metavar="FILE", help="read the prompt from FILE (UTF-8)")
    p.add_argument("--chat", action="store_true",
                   help="wrap the prompt in the model's chat template (as the user's message) "
                        "and print only the reply")
    p.add_argument("--system", help="with --chat: the system message (default: the template's)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="tokens to generate (16)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 (default): greedy; > 0: sample from softmax(logits / T)")
    p.add_argument("--top-k", type=int, help="sample among the K most likely tokens")
    p.add_argument("--top-p", type=float,
                   help="sample among the most likely tokens whose probabilities reach P")
    p.add_argument("--seed", type=int, help="seed of the sampler (the same seed: the same text)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--manifest", help="the model manifest (default: <config stem>.model.json "
                   "next to the config)")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-sequence")
    p.add_argument("--stats", action="store_true",
                   help="print the per-tier statistics table after the text")
    p.add_argument("--prefetch", type=int, default=DEFAULT_PREFETCH, metavar="DEPTH",
                   help=f"prefetch DEPTH shards ahead of the loop ({DEFAULT_PREFETCH}; "
                        "0: off). The schedule is declared either way")
    p.set_defaults(func=run)
