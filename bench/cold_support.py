"""Pieces of bench/bench_cold.py that do not need TensorFlow: the synthetic GGUF writer,
weight sources (memmap of a GGUF file, zeros for tracing), a capped child run, the
configurations and the report table.

``write_synthetic_gguf`` writes tiercache's synthetic Llama
(:func:`tiercache.models.synthetic_hparams` / ``synthetic_tensor``: the same
deterministic values) as a GGUF file that llama.cpp loads: ``llama.*``
metadata, a byte-level ``gpt2`` tokenizer (the 256 bytes, ``<|endoftext|>``,
one merge so llama.cpp finds ``tokenizer.ggml.merges``), 2-D tensors encoded
by ``gguf.quants.quantize`` (Q8_0 or Q4_0), norms in F32, tensors in reading
order. It streams: one tensor is in memory at a time.

``GGUFMemmapSource`` is the "memmap of the GGUF file" baseline: one
``np.memmap`` of the file, each tensor a view in tiercache's stored layout
(``quant.stored_shape``), so the decoder dequantizes it at use with
``quant.dequantize`` -- the page cache serves the bytes, as under llama.cpp's
mmap.

``run_capped_child`` runs ``python bench_cold.py --child JOB`` in a cgroup v1
memory child group (created under this process's group, removed afterwards)
and returns the dict the child printed after ``RESULT``; the child sets the
cap itself (it knows its own memory once TensorFlow has traced).

Thread-safety: single-threaded benchmark helpers.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_serving as bs
import numpy as np

from tiercache.models import quant
from tiercache.models.importers.gguf_header import read_gguf_header
from tiercache.models.importers.synthetic import synthetic_tensor
from tiercache.models.llama import LlamaHParams, llama_schedule
from tiercache.models.manifest import ModelManifest
from tiercache.models.tokenizer import BPETokenizer

MIB = 1 << 20


def write_synthetic_gguf(path: Path, hp: LlamaHParams, qtype: str = "Q8_0",
                         seed: int = 0) -> int:
    """Write the synthetic Llama ``hp`` (values of ``synthetic_tensor``) as a GGUF file;
    return its size in bytes. ``qtype``: Q8_0 or Q4_0 for 2-D tensors. O(model)."""
    import gguf
    from gguf.quants import quantize

    if qtype not in ("Q8_0", "Q4_0"):
        raise ValueError(f"qtype must be Q8_0 or Q4_0, got {qtype!r}")
    raw = gguf.GGMLQuantizationType[qtype]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"tiercache-synthetic-{hp.n_layers}x{hp.dim}")
    writer.add_context_length(hp.context_length)
    writer.add_embedding_length(hp.dim)
    writer.add_block_count(hp.n_layers)
    writer.add_feed_forward_length(hp.ffn_dim)
    writer.add_head_count(hp.n_heads)
    writer.add_head_count_kv(hp.n_kv_heads)
    writer.add_rope_dimension_count(hp.head_dim)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    writer.add_vocab_size(hp.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if qtype == "Q8_0"
                         else gguf.LlamaFileType.MOSTLY_Q4_0)
    tok = BPETokenizer.byte_level(hp.vocab_size).to_dict()
    tokens = list(tok["tokens"])
    space = tokens[ord(" ")]  # byte-level: "Ġ"
    tokens[257] = space + space  # one merge ("Ġ Ġ" -> "ĠĠ"): llama.cpp needs the key
    types = list(tok["token_types"])
    types[257] = 1  # normal
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([f"{space} {space}"])
    writer.add_eos_token_id(256)
    writer.add_bos_token_id(256)
    writer.add_add_bos_token(False)
    shapes = hp.tensor_shapes()
    order = list(dict.fromkeys(llama_schedule(hp)))
    order += [k for k in shapes if k not in order]
    for name in order:
        shape = shapes[name]
        if len(shape) == 1:
            writer.add_tensor_info(name, shape, np.dtype(np.float32), 4 * shape[0])
        else:
            byte_shape = gguf.quant_shape_to_byte_shape(shape, raw)
            writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8),
                                   math.prod(byte_shape), raw_dtype=raw)
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name in order:
        values = synthetic_tensor(name, shapes[name], seed=seed, dtype=np.dtype(np.float32))
        writer.write_tensor_data(values if values.ndim == 1 else quantize(values, raw))
        del values
    writer.close()
    return path.stat().st_size


class GGUFMemmapSource:
    """Views of one ``np.memmap`` of a GGUF file in tiercache's stored layout (the decoder
    dequantizes block tensors at use). ``get`` is O(1); thread-safe for reads."""

    def __init__(self, path: Path) -> None:
        header, buf = read_gguf_header(path)
        buf.close()
        self.map = np.memmap(path, dtype=np.uint8, mode="r")
        self.views: dict[str, np.ndarray] = {}
        for t in header.tensors:
            ggml_type = quant.GGML_TYPES.get(t.type_name)
            if ggml_type is None:
                raise ValueError(f"{path}: tensor {t.name!r} is {t.type_name}, which "
                                 "tiercache.models.quant cannot dequantize")
            dtype = quant.storage_dtype(ggml_type)
            shape = quant.stored_shape(ggml_type, t.shape)
            self.views[t.name] = (self.map[t.offset:t.offset + t.nbytes].view(np.ndarray)
                                  .view(dtype).reshape(shape))

    def get(self, key: str) -> np.ndarray:
        return self.views[key]

    def close(self) -> None:
        self.views.clear()
        mapping = self.map.base  # np.memmap of a file: the mmap.mmap it reads through
        if isinstance(mapping, mmap.mmap):
            mapping.close()


class ZeroStoredSource:
    """Zeros in each shard's stored layout (ggml blocks of zeros decode to zeros): traces
    the compiled functions and sizes the decoder's reused buffers without reading a
    weight, so the memory a child measures before capping includes them. O(1) a get."""

    def __init__(self, manifest: ModelManifest) -> None:
        self.meta = {k: (t.stored_shape, np.dtype(t.dtype)) for k, t in manifest.tensors.items()}

    def get(self, key: str) -> np.ndarray:
        shape, dtype = self.meta[key]
        return np.zeros(shape, dtype)


def run_capped_child(script: Path, job: dict[str, Any], job_path: Path,
                     parent_group: Path | None, timeout_s: float,
                     interpreter: str = sys.executable) -> dict[str, Any]:
    """Run ``interpreter script --child job_path`` in a fresh memory cgroup under
    ``parent_group`` (none: uncapped); the child's ``RESULT {json}`` line, or
    ``{"failed": True, "log": ...}``."""
    group = None
    if parent_group is not None:
        group = parent_group / f"tiercache-bench-cold-{os.getpid()}"
        group.mkdir()
    job_path.write_text(json.dumps({**job, "cgroup": str(group) if group else ""}))
    try:
        proc = subprocess.run([interpreter, str(script), "--child", str(job_path)],
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"failed": True, "log": f"timed out after {timeout_s:.0f} s"}
    finally:
        if group is not None:
            bs.remove_group(group)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        return {"failed": True, "returncode": proc.returncode, "log": " | ".join(tail)}
    result: dict[str, Any] = json.loads(line[len("RESULT "):])
    return result


def set_cap(group: Path, anon: int, budget_bytes: int, slack: int) -> int:
    """Cap ``group`` at ``anon + budget_bytes + slack`` (page cache included); reset its peak."""
    limit = anon + budget_bytes + slack
    (group / "memory.limit_in_bytes").write_text(f"{limit}\n")
    (group / "memory.max_usage_in_bytes").write_text("0\n")
    return limit


def probe_file(path: Path, nbytes: int = 256 * MIB) -> Path:
    """A file of ``nbytes`` random bytes for the disk-bandwidth probes (made once)."""
    if not path.exists() or path.stat().st_size < nbytes:
        rng = np.random.default_rng(0)
        with path.open("wb") as fh:
            for _ in range(nbytes // (8 * MIB)):
                fh.write(rng.integers(0, 256, 8 * MIB, dtype=np.uint8).tobytes())
        os.sync()
    return path


# --- configurations and the report table -------------------------------------------
@dataclass(frozen=True)
class Config:
    """One measured configuration (``kind``: tiered | gguf-memmap | llama.cpp | accelerate
    | ram)."""

    label: str
    model: str
    kind: str
    manifest: str = ""  # tiercache manifest (tiered, ram; gguf-memmap: the native one)
    data: str = ""  # the packed tier's folder or the GGUF file
    layout_bytes: int = 0  # what --budget is a fraction of
    representation: str = "stored"
    capped: bool = True
    reference: str = ""  # label of the all-in-RAM run giving this row's compute bound
    slack_mib: int = 160  # added to the cap (see bench_cold's docstring)
    drop_behind: bool = False  # tiered: the prefetcher's keep set (tiercache.serving.keep)
    stream: bool = False  # tiered, with drop_behind: the released shards streamed


def decoded_tier_supported() -> bool:
    """Whether memory tiers take ``representation`` (issue 14 item 2)."""
    try:
        from tiercache.stores.memory import OPTION_KEYS
    except ImportError:
        return False
    return "representation" in OPTION_KEYS


def tiered_config(cfg: Config, budget: float) -> dict[str, Any]:
    ram: dict[str, Any] = {"name": "ram", "backend": "memory", "policy": "opt",
                           "capacity": max(1, int(cfg.layout_bytes * budget))}
    if cfg.representation != "stored":
        ram["representation"] = cfg.representation
    ssd = {"name": "ssd", "backend": "packed", "path": cfg.data, "policy": "lru",
           "capacity": 2 * cfg.layout_bytes + 64 * MIB, "promote_after": 1, "zero_copy": True}
    return {"mode": "inclusive", "tiers": [ram, ssd]}


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(model: str, configs: list[Config], results: dict[str, list[dict[str, Any]]],
          batches: list[int]) -> str:
    """One markdown table per model: every ratio within this run (medians over rounds)."""
    rows = [c for c in configs if c.model == model]
    ok = {c.label: [r for r in results[c.label] if not r.get("failed")] for c in rows}
    f32 = next((c.label for c in rows if c.kind == "tiered" and "float32" in c.label), None)

    def m(label: str, key: str, sub: str = "") -> float:
        return med([(r[sub] if sub else r)[key] for r in ok.get(label, [])
                    if key in (r[sub] if sub else r)])

    head = ("| configuration | cap MiB (slack) | ms/token b1 | MB read/token | bound ms | x bound "
            "| first pass ms (MB read) | x float32 time | x float32 bytes | "
            + " | ".join(f"tok/s b{b}" for b in batches) + " |")
    lines = [head, "|" + "---|" * (9 + len(batches))]
    for c in rows:
        runs = ok[c.label]
        if not runs:
            reason = next((r.get("log", "") for r in results[c.label]), "")[:120]
            lines.append(f"| {c.label} | failed: {reason} |")
            continue
        ms, read = m(c.label, "ms_per_token"), m(c.label, "read_mb_per_token")
        compute = m(c.reference, "ms_per_token") if c.reference else float("nan")
        bound = med([max(compute, r["read_mb_per_token"] / r["disk_gbps"]) for r in runs])
        cap = f"{m(c.label, 'limit_mb'):.0f} ({c.slack_mib})" if c.capped else "none"
        first = f"{m(c.label, 'first_pass_ms'):.0f} ({m(c.label, 'first_pass_read_mb'):.0f})"
        if c.kind in ("llama.cpp", "accelerate"):
            first += f"; load {m(c.label, 'load_ms'):.0f} ({m(c.label, 'load_read_mb'):.0f})"
        vs_t = f"{ms / m(f32, 'ms_per_token'):.2f}" if f32 and c.capped else "-"
        vs_b = f"{read / m(f32, 'read_mb_per_token'):.2f}" if f32 and c.capped else "-"
        tps = [f"{1e3 / ms:.2f}" if b == 1 else
               (f"{m(c.label, 'tokens_per_s', f'b{b}'):.2f}" if f"b{b}" in runs[0] else "-")
               for b in batches]
        lines.append(f"| {c.label} | {cap} | {ms:.1f} | {read:.1f} | {bound:.1f} | "
                     f"**{ms / bound:.2f}** | {first} | {vs_t} | {vs_b} | "
                     + " | ".join(tps) + " |")
    return "\n".join(lines)


def largest_tensor_bytes(cfg: Config) -> int:
    """Bytes of the largest tensor ``cfg`` reads (one shard in flight must fit the page
    cache next to the budget): from the manifest, the GGUF header, or the safetensors
    header of an accelerate checkpoint. O(tensors)."""
    from tiercache.models import load_manifest

    if cfg.kind == "accelerate":
        sizes = []
        for file in Path(cfg.data).glob("*.safetensors"):
            with file.open("rb") as fh:
                length = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(length))
            sizes += [v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()
                      if k != "__metadata__"]
        return max(sizes, default=0)
    if cfg.kind in ("llama.cpp", "gguf-memmap"):
        header, buf = read_gguf_header(Path(cfg.data))
        buf.close()
        return max(t.nbytes for t in header.tensors)
    return max(t.nbytes for t in load_manifest(cfg.manifest).tensors.values())
