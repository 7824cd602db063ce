"""Key spaces: which shards are model weights and which are attention KV blocks.

Every shard key is a string. Keys starting with :data:`KV_PREFIX` are the
attention keys/values of a prompt block (:mod:`tiercache.models.prefix`); every
other key is a weight shard (or a user's array). A tier may bound the bytes its
KV blocks take (``kv_capacity``), so a running loop's weights keep the rest.

Thread-safety: constants and pure functions.
"""

from __future__ import annotations

#: Prefix of every KV-block key (``kv/<model id>/<block hash>``).
KV_PREFIX = "kv/"


def is_kv_key(key: str) -> bool:
    """Whether ``key`` names a KV block (not a weight shard). O(1)."""
    return key.startswith(KV_PREFIX)
