"""``tiercache generate --config tiers.toml --prompt TEXT``: text generation.

Runs the Llama model imported into the cache (``tiercache import``) through
:func:`tiercache.load_model` -- on tiercache's C kernel for a native import of
Q4_0/Q4_1/Q8_0 blocks where the CPU has AVX-512, else TensorFlow (``--engine``
chooses) -- streaming every block's
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

Several prompts (``--prompt`` repeated, ``--prompt-file``, ``--prompts-file``
with one per line; in that order) run as one batch -- one forward pass per
step for every live sequence -- or as batches of ``--batch-size``. Prompt
``i`` samples with seed ``--seed + i``. Each result is printed, after its
batch ends, under a header line ``[i] PROMPT``; ``--json`` prints
``{"results": [{"prompt_ids", "token_ids", "text"}, ...], "stats", "timing"}``.

The attention state of each prompt is kept in the tiers as KV blocks of
``--kv-block-tokens`` tokens and the longest cached prefix of the next prompt
is reused -- in this process or a later one (:mod:`tiercache.models.prefix`);
``--no-kv-cache`` turns that off. ``timing`` holds ``ttft_s`` (time to the
first token, the prompt pass included) and ``prompt_tokens_reused``; ``kv``
(one prompt) the reuse counters.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..models.api import DEFAULT_PREFETCH
from ..models.prefix import DEFAULT_BLOCK_TOKENS

if TYPE_CHECKING:
    from ..models.api import Model, Sampler


def _prompts(args: argparse.Namespace) -> list[str]:
    """Every prompt of the command line, in order: each ``--prompt``, the
    ``--prompt-file``, then the lines of ``--prompts-file``. Reads the files only."""
    prompts = [str(p) for p in args.prompt or ()]
    if args.prompt_file is not None:
        prompts.append(_prompt_file(Path(args.prompt_file)))
    if args.prompts_file is not None:
        prompts.extend(_prompts_file(Path(args.prompts_file)))
    if not prompts:
        raise ValueError("no prompt: give --prompt TEXT (may repeat), --prompt-file FILE "
                         "or --prompts-file FILE")
    return prompts


def _prompts_file(path: Path) -> list[str]:
    """The non-blank lines of ``path`` (UTF-8, a BOM allowed), each a prompt as written."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: prompts file not found") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: the prompts file is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise OSError(f"{path}: cannot read the prompts file ({exc.strerror or exc})") from None
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path}: the prompts file has no prompt (one per line; blank lines "
                         "are skipped)")
    return prompts


def _prompt_file(path: Path) -> str:
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
    from ..models.api import Sampler, batch_samplers, load_model

    if args.max_new_tokens < 0:
        raise ValueError("--max-new-tokens must be >= 0")
    if args.prefetch < 0:
        raise ValueError("--prefetch must be >= 0 (0: off)")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    if args.kv_block_tokens < 1:
        raise ValueError("--kv-block-tokens must be >= 1")
    sampler = Sampler(args.temperature, args.top_k, args.top_p, args.seed)
    prompts = _prompts(args)
    model = load_model(args.config, manifest=args.manifest, prefetch=args.prefetch,
                       warn=_warning, on_status=None if args.json else _status,
                       kv_cache=not args.no_kv_cache, kv_block_tokens=args.kv_block_tokens,
                       kernels=ENGINES[args.engine])
    if len(prompts) > 1:
        samplers = batch_samplers(len(prompts), args.temperature, args.top_k, args.top_p,
                                  args.seed)
        return _run_batch(args, model, prompts, samplers)
    return _run_one(args, model, prompts[0], sampler)


def _run_one(args: argparse.Namespace, model: Model, prompt: str, sampler: Sampler) -> int:
    from ..models.api import TextStream

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
                          "timing": timing, "kv": model.kv_stats}, indent=2, default=str))
        return 0
    sys.stdout.write(stream.flush() + "\n")
    rate = timing["decode_tokens_per_s"]
    print(f"{len(token_ids)} tokens; {_decode_rate(timing)}; "
          f"fetch {timing['fetch_s']:.2f} s, handoff {timing['handoff_s']:.3f} s, "
          f"compute {timing['compute_s']:.2f} s{_engine(timing)}" if rate is not None else
          f"{len(token_ids)} tokens", file=sys.stderr)
    if timing["ttft_s"] is not None:
        reused = timing["prompt_tokens_reused"]
        print(f"first token after {timing['ttft_s']:.2f} s; prompt {len(prompt_ids)} tokens"
              + (f", {reused} reused from the KV cache" if reused else ""), file=sys.stderr)
    _print_stats(args, stats)
    return 0


def _print_stats(args: argparse.Namespace, stats: dict[str, Any]) -> None:
    if args.stats:
        from .stats import render_stats

        sys.stdout.flush()
        render_stats(stats, loop=True)


def _one_line(prompt: str) -> str:
    """``prompt`` on one line: line breaks shown as ``\\n`` / ``\\r``."""
    return prompt.replace("\r", "\\r").replace("\n", "\\n")


def _encode(model: Model, index: int, prompt: str, args: argparse.Namespace) -> list[int]:
    try:
        return model.encode_prompt(prompt, chat=args.chat, system=args.system)
    except ValueError as exc:
        raise ValueError(f"prompt {index} ({_one_line(prompt)[:40]!r}): {exc}") from None


def _run_batch(args: argparse.Namespace, model: Model, prompts: list[str],
               samplers: list[Sampler]) -> int:
    """Several prompts: batches of ``--batch-size`` (default all); each batch's
    results printed when it ends (``[i] PROMPT`` then the text), or one JSON
    object at the end."""
    results: list[dict[str, Any]] = []
    with model:
        batch = [_encode(model, i, p, args) for i, p in enumerate(prompts)]
        size = args.batch_size or len(batch)
        for start in range(0, len(batch), size):
            chunk = batch[start:start + size]
            outs = model.generate_ids(chunk, args.max_new_tokens,
                                      sampler=samplers[start:start + size],
                                      stop_at_eos=not args.ignore_eos)
            for offset, (prompt_ids, token_ids) in enumerate(zip(chunk, outs, strict=True)):
                text = model.tokenizer.decode(token_ids)
                results.append({"prompt_ids": prompt_ids, "token_ids": token_ids,
                                "text": text})
                if not args.json:
                    index = start + offset
                    sys.stdout.write(f"[{index}] {_one_line(prompts[index])}\n{text}\n")
                    sys.stdout.flush()
        model.cache.stop_prefetcher()
        stats = model.cache.stats()
    timing = model.timings.as_dict()
    if args.json:
        print(json.dumps({"results": results, "stats": stats, "timing": timing}, indent=2,
                         default=str))
        return 0
    tokens = sum(len(r["token_ids"]) for r in results)
    rate = timing["decode_tokens_per_s"]
    print(f"{len(prompts)} prompts, {tokens} tokens; {_decode_rate(timing)}; "
          f"fetch {timing['fetch_s']:.2f} s, handoff {timing['handoff_s']:.3f} s, "
          f"compute {timing['compute_s']:.2f} s{_engine(timing)}" if rate is not None else
          f"{len(prompts)} prompts, {tokens} tokens", file=sys.stderr)
    _print_stats(args, stats)
    return 0


#: ``--engine`` -> ``load_model(kernels=)``.
ENGINES: dict[str, bool | None] = {"auto": None, "kernels": True, "tensorflow": False}


def _engine(timing: dict[str, Any]) -> str:
    """" (C kernel)" or " (TensorFlow)": what computed the passes."""
    names = {"kernels": "C kernel", "tensorflow": "TensorFlow"}
    return f" ({names[timing['engine']]})" if timing.get("engine") in names else ""


def _decode_rate(timing: dict[str, Any]) -> str:
    """"decode R tokens/s", and the rate once compiled when some steps compiled."""
    text = f"decode {timing['decode_tokens_per_s']:.2f} tokens/s"
    steady = timing.get("steady_decode_tokens_per_s")
    if timing.get("compiling_s") and steady is not None:
        text += f" ({steady:.2f} once compiled; {timing['compiling_s']:.2f} s compiling)"
    return text


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("generate", help="generate text with the model in a cache")
    p.add_argument("--config", required=True, help="the cache's TOML file")
    p.add_argument("--prompt", action="append", metavar="TEXT",
                   help="the prompt text; repeat it for several prompts (one batch)")
    p.add_argument("--prompt-file", metavar="FILE",
                   help="read one prompt, the whole of FILE (UTF-8)")
    p.add_argument("--prompts-file", metavar="FILE",
                   help="read prompts from FILE, one per line (UTF-8; blank lines skipped). "
                        "With several sources the order is: the --prompt ones first, then "
                        "--prompt-file, then these")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help="several prompts: run them N at a time (default: all in one batch)")
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
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (several prompts: {\"results\": [...], "
                        "\"stats\", \"timing\"})")
    p.add_argument("--manifest", help="the model manifest (default: <config stem>.model.json "
                   "next to the config)")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-sequence")
    p.add_argument("--no-kv-cache", action="store_true",
                   help="compute every prompt whole: neither reuse nor keep KV blocks")
    p.add_argument("--kv-block-tokens", type=int, default=DEFAULT_BLOCK_TOKENS, metavar="N",
                   help=f"tokens per KV block ({DEFAULT_BLOCK_TOKENS})")
    p.add_argument("--stats", action="store_true",
                   help="print the per-tier statistics table after the text")
    p.add_argument("--prefetch", type=int, default=DEFAULT_PREFETCH, metavar="DEPTH",
                   help=f"prefetch DEPTH shards ahead of the loop ({DEFAULT_PREFETCH}; "
                        "0: off). The schedule is declared either way")
    p.add_argument("--engine", choices=sorted(ENGINES), default="auto",
                   help="what computes: the C kernel on ggml blocks, TensorFlow, or auto "
                        "(the kernel for a native Q4_0/Q4_1/Q8_0 import where the CPU has "
                        "AVX-512)")
    p.set_defaults(func=run)
