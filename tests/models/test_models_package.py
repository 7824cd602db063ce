"""tiercache.models: one home for manifests, tokenizer, importers and runtimes (issue 13).

Checks the package's promises that no other test pins: importing it (or a
runtime module) imports no framework, every name it exports resolves, a
TieredCache and a MappingProvider both serve a runtime as a WeightProvider.
(The size limits of issue 13 over tiercache/models are checked in
test_sim_traces.py with those of tiercache/sim.)
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np

import tiercache
import tiercache.models
from tiercache.models import MappingProvider, WeightProvider


def test_importing_models_and_runtimes_imports_no_framework() -> None:
    code = ("import sys\n"
            "import tiercache.models, tiercache.models.runtime.tensorflow, "
            "tiercache.models.runtime.keras, tiercache.models.importers.gguf\n"
            "loaded = sorted(m for m in ('tensorflow', 'keras', 'gguf') if m in sys.modules)\n"
            "assert not loaded, f'importing tiercache.models imported {loaded}'\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_every_exported_name_resolves() -> None:
    for module in (tiercache.models, tiercache.models.importers, tiercache.models.runtime):
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert not missing, f"{module.__name__}.__all__ names {missing}, which do not exist"
    assert tiercache.models.load_model is tiercache.load_model
    assert issubclass(tiercache.models.ModelFormatError, tiercache.TierCacheError)


def _read(provider: WeightProvider, key: str) -> np.ndarray:
    return np.asarray(provider.get(key))


def test_a_cache_and_a_dict_are_both_weight_providers() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    cfg = {"tiers": [{"name": "ram", "backend": "memory", "capacity": "1MiB"}]}
    with tiercache.TieredCache.from_config(cfg) as cache:
        cache.put("w", array)
        np.testing.assert_array_equal(_read(cache, "w"), array)
    np.testing.assert_array_equal(_read(MappingProvider({"w": array}), "w"), array)

