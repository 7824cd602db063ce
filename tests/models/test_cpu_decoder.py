"""The decoder on numpy and the C kernel (``kernels=True``,
tiercache.models.runtime.cpu): the same tokens as TensorFlow's compiled step and its
eager path, for one sequence, ragged batches, prefix reuse and mixed shard forms; chosen
by default for a native import; TensorFlow never imported for it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType, quants

from tiercache.errors import ShardNotFoundError
from tiercache.models import DictSink, quant, synthetic_hparams, synthetic_llama
from tiercache.models.manifest import ModelManifest, TensorInfo
from tiercache.models.prefix import PrefixCache
from tiercache.models.runtime import MappingProvider, kernels
from tiercache.models.runtime.cpu import CpuFunctions
from tiercache.models.runtime.handoff import aligned_empty
from tiercache.models.runtime.tensorflow import LlamaModel

pytestmark = pytest.mark.tf

HP = synthetic_hparams(layers=3, dim=64, ffn=96, vocab=300, heads=4, kv_heads=2)


class DictStore(dict[str, Any]):
    """A dict with the cache's get/put/delete (the prefix cache's block store)."""

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key, default)

    def put(self, key: str, array: np.ndarray) -> None:
        self[key] = np.array(array)

    def delete(self, key: str) -> bool:
        return self.pop(key, None) is not None


def _aligned(array: np.ndarray) -> np.ndarray:
    out = aligned_empty(array.shape, array.dtype)
    out[...] = array
    return out


def _native(encoding: str = "Q4_1", seed: int = 3) -> tuple[dict[str, np.ndarray],
                                                             ModelManifest]:
    """The synthetic model with every matrix in ``encoding`` blocks, and a manifest
    that says so (as a native import's does)."""
    sink = DictSink()
    manifest = synthetic_llama(sink, HP, seed=seed, progress=False)
    gtype = getattr(GGMLQuantizationType, encoding)
    stored, tensors = {}, dict(manifest.tensors)
    for key, value in sink.arrays.items():
        if value.ndim == 2:
            t = quant.GGML_TYPES[encoding]
            blocks = quants.quantize(value.astype(np.float32), gtype)
            value = blocks.reshape(value.shape[0], -1, t.block_bytes)
            tensors[key] = TensorInfo(shape=tensors[key].shape, dtype="uint8",
                                      nbytes=value.nbytes, encoding=encoding)
        stored[key] = _aligned(value)
    manifest.tensors = tensors
    return stored, manifest


def _model(stored: dict[str, np.ndarray], manifest: ModelManifest,
           **kwargs: object) -> LlamaModel:
    return LlamaModel.from_manifest(MappingProvider(stored), manifest,
                                    **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("encoding", ["Q4_0", "Q4_1", "Q8_0"])
def test_the_kernel_path_gives_the_compiled_and_eager_tokens(encoding: str) -> None:
    stored, manifest = _native(encoding)
    cpu, xla = _model(stored, manifest, kernels=True), _model(stored, manifest, kernels=False)
    eager = _model(stored, manifest, compile=False)
    default = _model(stored, manifest)  # chosen by the manifest where the vector kernel runs
    assert isinstance(default._fns or default._start(), CpuFunctions) == kernels.available()
    assert cpu._tf is None  # TensorFlow is not even imported for it
    for ids in ([1, 2, 3], [4], [5], [6, 7]):  # a prompt pass, one-token steps, a prompt
        want, got = eager.forward(ids), cpu.forward(ids)
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
    assert cpu.generate([1, 2, 3], 12) == xla.generate([1, 2, 3], 12) \
        == eager.generate([1, 2, 3], 12)
    assert cpu.traces() == {} and cpu.decode_buffer_bytes == 0  # nothing traced or decoded
    assert cpu.timings.decode_s > 0 and cpu.timings.compute_s > 0
    assert cpu.timings.as_dict()["engine"] == "kernels"
    assert xla.timings.as_dict()["engine"] == "tensorflow"
    cpu.timings.reset()
    assert cpu.timings.engine == "kernels" and cpu.timings.decode_s == 0  # engine kept


def test_ragged_batches_equal_each_sequence_alone() -> None:
    stored, manifest = _native()
    model = _model(stored, manifest, kernels=True)
    prompts = [[1, 2, 3, 4, 5], [6], [7, 8], [9, 10, 11], [12, 13], [14]]  # a batch of 16
    batch = model.generate_batch(prompts, 7, eos_id=20)
    alone = [model.generate(p, 7, eos_id=20) for p in prompts]
    assert batch == alone
    assert batch == _model(stored, manifest, kernels=False).generate_batch(prompts, 7,
                                                                            eos_id=20)


def test_a_prefix_reused_from_the_kv_tier_gives_the_same_tokens() -> None:
    stored, manifest = _native()
    model = _model(stored, manifest, kernels=True)
    model.prefix_cache = PrefixCache(DictStore(), "i" * 32, HP, block_tokens=4)
    prompt = list(range(1, 14))
    first = model.generate(prompt, 6)
    again = model.generate(prompt, 6)
    assert model.timings.prompt_tokens_reused >= 8 and again == first
    assert first == _model(stored, manifest, kernels=False).generate(prompt, 6)


def test_mixed_forms_decode_what_the_kernel_does_not_take() -> None:
    """Float32 (also stored [in, out]), float16 and Q5_0 shards next to Q4_1 blocks:
    those are decoded (or multiplied) in numpy; the tokens stay the eager path's."""
    stored, manifest = _native()
    sink = DictSink()
    synthetic_llama(sink, HP, seed=3, progress=False)
    floats = sink.arrays
    stored["blk.0.attn_q.weight"] = _aligned(floats["blk.0.attn_q.weight"])
    stored["blk.1.ffn_up.weight"] = _aligned(floats["blk.1.ffn_up.weight"].astype(np.float16))
    q5 = quants.quantize(floats["blk.2.ffn_down.weight"], GGMLQuantizationType.Q5_0)
    stored["blk.2.ffn_down.weight"] = _aligned(q5.reshape(HP.dim, -1, 22))
    eager = _model(stored, manifest, compile=False)
    model = _model(stored, manifest, kernels=True)
    assert model.generate([1, 2, 3], 10) == eager.generate([1, 2, 3], 10)
    assert model.timings.dequant_s > 0  # the float16 and Q5_0 shards
    transposed = dict(stored)
    transposed["blk.0.attn_q.weight"] = _aligned(floats["blk.0.attn_q.weight"].T)
    in_out = LlamaModel(MappingProvider(transposed), HP, transposed={"blk.0.attn_q.weight"},
                        kernels=True)
    assert in_out.generate([1, 2, 3], 10) == eager.generate([1, 2, 3], 10)


def test_kernels_true_is_refused_where_it_cannot_run() -> None:
    stored, manifest = _native()
    with pytest.raises(ValueError, match="compile=False"):
        _model(stored, manifest, kernels=True, compile=False)
    # an import that keeps float32 (or K-quants) stays on TensorFlow by default
    sink = DictSink()
    floats = synthetic_llama(sink, HP, seed=3, progress=False)
    model = LlamaModel.from_manifest(MappingProvider(sink.arrays), floats)
    assert not isinstance(model._fns or model._start(), CpuFunctions)


def test_a_native_model_loads_without_importing_tensorflow() -> None:
    """The kernel path needs numpy only: TensorFlow (3-7 s to import) stays out."""
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from gguf import GGMLQuantizationType, quants
        from tiercache.models import DictSink, synthetic_hparams, synthetic_llama
        from tiercache.models.runtime import MappingProvider
        from tiercache.models.runtime.tensorflow import LlamaModel
        hp = synthetic_hparams(layers=2, dim=64, ffn=96, vocab=300, heads=4, kv_heads=2)
        sink = DictSink()
        synthetic_llama(sink, hp, progress=False)
        stored = {k: (quants.quantize(v, GGMLQuantizationType.Q8_0).reshape(v.shape[0], -1, 34)
                      if v.ndim == 2 else v) for k, v in sink.arrays.items()}
        model = LlamaModel(MappingProvider(stored), hp, kernels=True)
        print(model.generate([1, 2, 3], 4), "tensorflow" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    tokens, imported = done.stdout.split("]")
    assert len(tokens.strip("[").split(",")) == 4 and imported.strip() == "False"


@pytest.mark.slow
def test_smollm2_native_on_the_kernel_gives_tensorflows_tokens() -> None:
    """SmolLM2's native import (Q4_1 blocks, a Q8_0 head): the kernel path and
    TensorFlow's compiled step give the same greedy tokens, alone and in a batch, and
    prompt logits within 1e-3 of each other."""
    from tiercache.models import import_model

    sink = DictSink()
    manifest = import_model("smollm2", sink, progress=False)
    stored = {k: _aligned(v) for k, v in sink.arrays.items()}
    cpu, xla = _model(stored, manifest, kernels=True), _model(stored, manifest, kernels=False)
    prompt = [504, 3575, 282, 4649, 314]  # "The capital of France is"
    a, b = cpu.forward(prompt), xla.forward(prompt)
    assert np.abs(a - b).max() < 1e-3 and int(np.argmax(a)) == int(np.argmax(b))
    prompts = [prompt, [1, 504, 2593], [28, 1184, 314, 253, 1345, 30], [9]]
    want = [xla.generate(p, 12) for p in prompts]
    assert [cpu.generate(p, 12) for p in prompts] == want
    assert cpu.generate_batch(prompts, 12) == want


class ManyProvider(MappingProvider):
    """A provider that also reads many shards at once, counting its calls."""

    def __init__(self, arrays: dict[str, np.ndarray], missing: str | None = None) -> None:
        super().__init__(arrays)
        self.batches: list[list[str]] = []
        self.missing = missing

    def get_many(self, keys: list[str]) -> list[np.ndarray]:
        self.batches.append(list(keys))
        if self.missing in keys:
            raise KeyError(self.missing)
        return [self.get(key) for key in keys]

    def get(self, key: str, /) -> Any:
        if key == self.missing:
            raise KeyError(key)
        return super().get(key)


# the C kernel where the CPU runs it (AVX-512), TensorFlow's step everywhere
@pytest.mark.parametrize("use_kernels", [False, *([True] if kernels.available() else [])])
def test_a_provider_that_reads_many_is_asked_once_per_layer(use_kernels: bool) -> None:
    stored, manifest = _native()
    provider = ManyProvider(stored)
    model = LlamaModel.from_manifest(provider, manifest, kernels=use_kernels,
                                     group_layers=1)
    want = _model(stored, manifest, kernels=use_kernels).generate([1, 2, 3], 6)
    assert model.generate([1, 2, 3], 6) == want
    layer_keys = [[k for k in model.schedule() if k.startswith(f"blk.{i}.")]
                  for i in range(HP.n_layers)]
    assert provider.batches == layer_keys * 6  # the prompt pass and five steps
    assert model.timings.shards_fetched == 6 * len(model.schedule())


def test_a_shard_missing_from_a_batch_is_named() -> None:
    stored, manifest = _native()
    provider = ManyProvider(stored, missing="blk.1.attn_v.weight")
    model = LlamaModel.from_manifest(provider, manifest)
    with pytest.raises(ShardNotFoundError, match=r"blk\.1\.attn_v\.weight"):
        model.generate([1, 2, 3], 2)
    assert model._batch == {}
