"""Prompt prefixes' attention state kept in the tiers: KV blocks, found by chained hashes.

A prompt is cut into blocks of ``block_tokens`` token ids. Block ``i``'s key
chains a hash of the model's identity, the KV dtype, the block size, block
``i - 1``'s key and block ``i``'s ids (:func:`block_keys`), so a key names one
whole prefix: two prompts share a block's key only when they share every token
up to the block's end, on the same model. After a prompt pass the keys and
values of each complete block -- every layer, ``[n_layers, 2, block_tokens,
n_kv_heads, head_dim]`` float32 -- are put into the cache as a shard under
``kv/<model id>/<hash>`` (:data:`~tiercache.keyspace.KV_PREFIX`); a later prompt
loads its longest cached block prefix into its KV cache and runs only the rest
(:meth:`PrefixCache.load`).

The blocks are ordinary shards: the same tiers, policies, promotion, demotion,
persistence (a new process finds them on a disk tier) and Redis sharing as the
weights; a tier's ``kv_capacity`` bounds their share. A block that cannot be
read, fails its checksum, or has the wrong shape or dtype is deleted and
recomputed -- never used. Reuse changes no token: a block's keys and values
depend only on the tokens up to it (causal attention); computed in another
prompt pass they may differ from a full recompute by float rounding only
(docs/kv-cache.md states the bound measured).

Thread-safety: a :class:`PrefixCache` is used by one model (not thread-safe);
the cache it puts into is thread-safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import CacheClosedError, TierCacheError
from ..keyspace import KV_PREFIX
from .llama import LlamaHParams
from .manifest import ModelManifest

log = logging.getLogger("tiercache")

#: Tokens per KV block by default.
DEFAULT_BLOCK_TOKENS = 64
#: Version of the key derivation; a change makes old blocks unreachable (never misread).
KEY_VERSION = b"tiercache-kv-1"
#: The dtype KV blocks are kept in (the decoder's KV cache dtype).
KV_DTYPE = np.dtype(np.float32)


class BlockStore(Protocol):
    """Where blocks live: a :class:`~tiercache.TieredCache` (or a dict-like test double)."""

    def get(self, key: str, default: Any = ...) -> Any: ...

    def put(self, key: str, array: np.ndarray) -> None: ...

    def delete(self, key: str) -> bool: ...

    def __contains__(self, key: object) -> bool: ...


class BlockRows(Protocol):
    """Where a sequence's keys and values live: a
    :class:`~tiercache.models.runtime.kv.KVCache` (its rows, in the block layout
    ``[n_layers, 2, tokens, n_kv_heads, head_dim]``)."""

    def read_block(self, row: int, start: int, count: int) -> np.ndarray: ...

    def write_block(self, row: int, start: int, block: np.ndarray) -> None: ...


@dataclass
class PrefixStats:
    """What reuse did, summed over the prompts seen (plain counters)."""

    #: Prompts looked up.
    lookups: int = 0
    #: Blocks loaded from the cache and the prompt tokens they spared.
    blocks_reused: int = 0
    tokens_reused: int = 0
    #: Prompt tokens computed (not reused).
    tokens_computed: int = 0
    #: Blocks put into the cache, and their bytes.
    blocks_saved: int = 0
    bytes_saved: int = 0
    #: Blocks found damaged (unreadable, checksum, shape) and recomputed.
    blocks_rejected: int = 0
    #: Prompt tokens of the last lookup that were reused.
    last_tokens_reused: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def model_identity(manifest: ModelManifest, fingerprint: bytes = b"") -> str:
    """A hex digest naming the model whose KV blocks are kept: its manifest without
    where the file was (path, mtime: the same model imported on another machine has
    the same identity), plus ``fingerprint`` (bytes of some of its weights, so two
    models with identical manifests but different weights never share). O(manifest)."""
    data = manifest.to_dict()
    source = dict(data.get("source") or {})
    source.pop("path", None)
    source.pop("mtime_ns", None)
    data["source"] = source
    text = json.dumps(data, sort_keys=True, default=str).encode()
    digest = hashlib.blake2b(text, digest_size=16)
    digest.update(fingerprint)
    return digest.hexdigest()


def stored_identity(store: BlockStore, manifest: ModelManifest) -> str:
    """:func:`model_identity` of the model whose shards ``store`` serves, fingerprinted
    with the bytes of its norm weights (a few KiB; absent ones are skipped), so
    re-imported weights with the same manifest never share KV blocks. O(dim)."""
    fingerprint = b""
    for name in ("output_norm.weight", "blk.0.attn_norm.weight"):
        shard = store.get(manifest.key_prefix + name, None)
        if isinstance(shard, np.ndarray):
            fingerprint += np.ascontiguousarray(shard).tobytes()
    return model_identity(manifest, fingerprint)


def block_keys(identity: str, token_ids: Sequence[int], block_tokens: int,
               dtype: np.dtype[Any] = KV_DTYPE) -> list[str]:
    """The keys of the complete blocks of ``token_ids``, in order. Key ``i`` hashes
    (version, identity, dtype, block size, key ``i-1``, block ``i``'s ids), so it
    names the whole prefix up to block ``i``'s end. O(len(token_ids))."""
    if block_tokens < 1:
        raise ValueError(f"block_tokens must be >= 1, got {block_tokens}")
    ids = np.asarray(token_ids, dtype=np.int64)
    keys: list[str] = []
    previous = b""
    head = b"|".join([KEY_VERSION, identity.encode(), np.dtype(dtype).str.encode(),
                      str(block_tokens).encode()])
    short = identity[:16]
    for start in range(0, ids.size - block_tokens + 1, block_tokens):
        digest = hashlib.blake2b(head, digest_size=20)
        digest.update(b"|" + previous + b"|")
        digest.update(ids[start:start + block_tokens].astype("<i8").tobytes())
        previous = digest.digest()
        keys.append(f"{KV_PREFIX}{short}/{digest.hexdigest()}")
    return keys


class PrefixCache:
    """Reuse of prompt prefixes' KV blocks for one model. See the module docstring.

    Parameters
    ----------
    store:
        Where blocks are put and found (the model's :class:`~tiercache.TieredCache`).
    identity:
        :func:`model_identity` of the model.
    hparams:
        The architecture (the block's shape).
    block_tokens:
        Tokens per block (default :data:`DEFAULT_BLOCK_TOKENS`).
    """

    def __init__(self, store: BlockStore, identity: str, hparams: LlamaHParams, *,
                 block_tokens: int = DEFAULT_BLOCK_TOKENS) -> None:
        if isinstance(block_tokens, bool) or not isinstance(block_tokens, int) \
                or block_tokens < 1:
            raise ValueError(f"block_tokens must be a whole number >= 1, got {block_tokens!r}")
        self.store = store
        self.identity = identity
        self.block_tokens = block_tokens
        self.shape = (hparams.n_layers, 2, block_tokens, hparams.n_kv_heads, hparams.head_dim)
        self.stats = PrefixStats()

    @property
    def block_bytes(self) -> int:
        """Bytes of one block (every layer's keys and values). O(1)."""
        return int(np.prod(self.shape)) * KV_DTYPE.itemsize

    @property
    def bytes_per_token(self) -> int:
        """Bytes of KV state one token takes. O(1)."""
        return self.block_bytes // self.block_tokens

    def keys(self, token_ids: Sequence[int]) -> list[str]:
        """The keys of ``token_ids``' complete blocks. O(len(token_ids))."""
        return block_keys(self.identity, token_ids, self.block_tokens)

    def load(self, token_ids: Sequence[int], cache: BlockRows, row: int) -> int:
        """Copy the longest cached block prefix of ``token_ids`` into row ``row`` of a KV
        cache (:class:`~tiercache.models.runtime.kv.KVCache`), from position 0, and
        return the tokens it covers: whole blocks, and at least one token of the
        prompt is always left to compute (its logits are needed). The caller makes
        the cache long enough. O(reused blocks x block bytes)."""
        self.stats.lookups += 1
        usable = max(0, len(token_ids) - 1) // self.block_tokens
        reused = 0
        keys = self.keys(token_ids)
        for index, key in enumerate(keys[:usable]):
            block = self._read(key)
            if block is None:
                # a gap in the chain (a block evicted, or dropped as damaged): the blocks
                # after it are computed again, so drop the old ones for save() to replace
                for later in keys[index + 1:]:
                    if later in self.store:
                        self._delete(later)
                break
            start = index * self.block_tokens
            cache.write_block(row, start, block)
            reused += self.block_tokens
        self.stats.blocks_reused += reused // self.block_tokens
        self.stats.tokens_reused += reused
        self.stats.tokens_computed += len(token_ids) - reused
        self.stats.last_tokens_reused = reused
        return reused

    def save(self, token_ids: Sequence[int], cache: BlockRows, row: int, *,
             skip_tokens: int = 0) -> int:
        """Put the complete blocks of ``token_ids`` (whose keys and values are in
        ``cache``'s row ``row``) into the cache, except the first ``skip_tokens``
        tokens' blocks (already there: they were just loaded) and blocks the cache
        already holds. Returns the blocks put. A put that fails (no tier takes the
        block) is logged and skipped: reuse is an optimisation. O(new blocks x block
        bytes)."""
        saved = 0
        first = skip_tokens // self.block_tokens
        for index, key in enumerate(self.keys(token_ids)):
            if index < first or key in self.store:
                continue
            start = index * self.block_tokens
            block = cache.read_block(row, start, self.block_tokens)
            try:
                self.store.put(key, block)
            except CacheClosedError:
                raise
            except (TierCacheError, OSError) as exc:
                log.warning("KV block %s not kept (%s); prompts sharing it recompute it",
                            key, exc)
                break
            saved += 1
            self.stats.bytes_saved += block.nbytes
        self.stats.blocks_saved += saved
        return saved

    def _read(self, key: str) -> np.ndarray | None:
        """The block under ``key``, or None when absent or unusable (then deleted)."""
        try:
            block = self.store.get(key, None)
        except CacheClosedError:
            raise
        except (TierCacheError, OSError, ValueError) as exc:  # unreadable, checksum
            log.warning("KV block %s is damaged (%s): recomputing it", key, exc)
            self._reject(key)
            return None
        if block is None:
            return None
        if not isinstance(block, np.ndarray) or block.shape != self.shape \
                or block.dtype != KV_DTYPE:
            got = (f"{getattr(block, 'dtype', type(block).__name__)} "
                   f"{getattr(block, 'shape', '')}")
            log.warning("KV block %s has the wrong form (%s, expected float32 %s): "
                        "recomputing it", key, got, self.shape)
            self._reject(key)
            return None
        return block

    def _reject(self, key: str) -> None:
        self.stats.blocks_rejected += 1
        self._delete(key)

    def _delete(self, key: str) -> None:
        try:
            self.store.delete(key)
        except (TierCacheError, OSError) as exc:
            log.warning("KV block %s could not be deleted (%s)", key, exc)
