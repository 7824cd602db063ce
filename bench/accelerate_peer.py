"""HF accelerate's disk offload as a peer of bench/bench_cold.py (run by its own interpreter).

Runs under a separate virtual environment holding torch (CPU), transformers,
accelerate, gguf and safetensors -- never tiercache's ``.venv``: none of them is
a dependency of tiercache or of ``make test``. Create it once::

    python3 -m venv .benchvenv            # in the checkout's root (git-ignored)
    .benchvenv/bin/pip install torch transformers accelerate gguf safetensors

Two commands:

``prepare GGUF HF_DIR``
    loads the GGUF with transformers (``gguf_file=``: dequantized to float32)
    and saves it as a float32 safetensors checkpoint in ``HF_DIR`` (the
    layout accelerate offloads from); prints ``RESULT {"bytes": ...}``.
``--child JOB``
    bench_cold's child protocol: joins the job's cgroup, imports torch, caps
    the group at its memory now + ``budget`` x the checkpoint's bytes + slack,
    drops caches, then loads ``HF_DIR`` with ``device_map="auto"``,
    ``max_memory={"cpu": budget x bytes}``, ``offload_folder`` (accelerate keeps
    what does not fit on "disk" and loads it layer by layer at use), runs the
    prompt (the cold first pass) and greedy one-token steps with the KV cache
    (``past_key_values``), ``--threads`` torch threads; prints ``RESULT {...}``
    with the figures bench_cold reports, and for each batch size of its
    ``batches`` above 1 the same prompts at once (left padded, attention mask) and
    greedy steps for all (:func:`timed_batch`).

Thread-safety: a single-threaded script.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

MIB = 1 << 20


def read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def prepare(gguf: str, hf_dir: str) -> None:
    import torch  # type: ignore[import-not-found,unused-ignore]
    from transformers import AutoModelForCausalLM  # type: ignore[import-not-found,unused-ignore]

    path = Path(gguf)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32)
    config = model.config  # a GGUF-loaded model refuses save_pretrained: copy it into a plain one
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(hf_dir)
    size = sum(f.stat().st_size for f in Path(hf_dir).glob("*.safetensors"))
    print("RESULT " + json.dumps({"bytes": size}), flush=True)


def child(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    group = Path(job["cgroup"]) if job["cgroup"] else None
    if group is not None:
        (group / "cgroup.procs").write_text(f"{os.getpid()}\n")
    cfg, args = job["config"], job["args"]
    import torch  # type: ignore[import-not-found,unused-ignore]
    from transformers import AutoModelForCausalLM  # type: ignore[import-not-found,unused-ignore]

    torch.set_num_threads(args["threads"])
    budget = int(args["budget"] * cfg["layout_bytes"])
    out: dict[str, Any] = {}
    if group is not None and cfg["capped"]:
        stat = {k: int(v) for k, v in (line.split() for line in
                                       (group / "memory.stat").read_text().splitlines())}
        anon = stat.get("total_rss", stat.get("rss", 0))
        limit = anon + budget + cfg["slack_mib"] * MIB
        (group / "memory.limit_in_bytes").write_text(f"{limit}\n")
        (group / "memory.max_usage_in_bytes").write_text("0\n")
        out.update(anon_mb=anon / MIB, limit_mb=limit / MIB)
    offload = Path(job["probe"]).parent / f"offload-{os.getpid()}"
    memory = {"cpu": budget} if cfg["capped"] else {"cpu": 8 * cfg["layout_bytes"]}
    drop_caches()
    t0, io0 = time.perf_counter(), read_bytes()
    model = AutoModelForCausalLM.from_pretrained(cfg["data"], dtype=torch.float32,
                                                 device_map="auto", max_memory=memory,
                                                 offload_folder=str(offload))
    model.eval()
    t1, io1 = time.perf_counter(), read_bytes()
    placement = getattr(model, "hf_device_map", {})
    out["on_disk"] = sum(1 for v in placement.values() if v == "disk")
    out["modules"] = len(placement)
    with torch.inference_mode():
        greedy = Greedy(model, torch, torch.tensor([job["prompts"][0]]))  # the prompt pass
        t2, io2 = time.perf_counter(), read_bytes()
        greedy.steps(args["warmup"])
        t3, io3 = time.perf_counter(), read_bytes()
        greedy.steps(args["tokens"])
        t4, io4 = time.perf_counter(), read_bytes()
    out.update(load_ms=(t1 - t0) * 1e3, load_read_mb=(io1 - io0) / 1e6,
               first_pass_ms=(t2 - t1) * 1e3, first_pass_read_mb=(io2 - io1) / 1e6,
               ms_per_token=(t4 - t3) / args["tokens"] * 1e3, decoded=args["tokens"],
               read_mb_per_token=(io4 - io3) / args["tokens"] / 1e6)
    for batch in args.get("batches", [1]):
        if batch > 1:
            out[f"b{batch}"] = timed_batch(model, job["prompts"], batch, args, torch)
    if group is not None and cfg["capped"]:
        out["max_usage_mb"] = int((group / "memory.max_usage_in_bytes").read_text()) / MIB
        out["failcnt"] = int((group / "memory.failcnt").read_text())
    print("RESULT " + json.dumps(out), flush=True)


class Greedy:
    """Greedy decoding with the KV cache: the prompt pass at construction, then
    :meth:`steps`; ``mask`` (a batch's attention mask, left padding) grows by one
    column per step. Call under ``torch.inference_mode()``."""

    def __init__(self, model: Any, torch: Any, ids: Any, mask: Any = None) -> None:
        self.model, self.torch, self.mask = model, torch, mask
        self._take(model(ids, attention_mask=mask, use_cache=True))

    def _take(self, result: Any) -> None:
        self.past = result.past_key_values
        self.token = result.logits[:, -1].argmax(-1, keepdim=True)

    def steps(self, count: int) -> None:
        """``count`` one-token steps for every row."""
        for _ in range(count):
            if self.mask is not None:
                ones = self.torch.ones((self.mask.shape[0], 1), dtype=self.mask.dtype)
                self.mask = self.torch.cat([self.mask, ones], dim=1)
            self._take(self.model(self.token, attention_mask=self.mask,
                                  past_key_values=self.past, use_cache=True))


def timed_batch(model: Any, prompts: list[list[int]], batch: int, args: dict[str, Any],
                torch: Any) -> dict[str, float]:
    """``batch`` prompts at once (bench_cold's first ``batch``, repeated if fewer), left
    padded with an attention mask, then greedy one-token steps for all of them: the
    warm-up steps, then ``args["tokens"]`` timed ones (as tiercache's batch rows)."""
    rows = [prompts[i % len(prompts)] for i in range(batch)]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + list(r) for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.inference_mode():
        greedy = Greedy(model, torch, ids, mask)
        greedy.steps(args["warmup"])
        t0, io0 = time.perf_counter(), read_bytes()
        greedy.steps(args["tokens"])
        t1, io1 = time.perf_counter(), read_bytes()
    steps = args["tokens"]
    return {"tokens_per_s": batch * steps / (t1 - t0), "ms_per_step": (t1 - t0) / steps * 1e3,
            "wall_ms_per_step": (t1 - t0) / steps * 1e3,
            "read_mb_per_token": (io1 - io0) / (batch * steps) / 1e6}


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "prepare":
        prepare(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        raise SystemExit("usage: accelerate_peer.py prepare GGUF HF_DIR | --child JOB")
