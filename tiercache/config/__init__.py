"""Configuration: a TOML file (or a dict) into validated, frozen objects.

:mod:`.schema` holds the frozen dataclasses, :mod:`.load` reads and validates
(everything is checked before anything touches disk; one
:class:`~tiercache.errors.ConfigError` names the file, the key and the reason), and
:mod:`.digest` names a remote tier's default namespace after the origin's content.
What each backend takes is validated by :mod:`tiercache.stores.registry`. See
docs/configuration.md for every key.
"""

from .digest import file_digest, origin_digest
from .load import load_config
from .schema import (
    DEFAULT_PROMOTE_AFTER,
    ORIGIN_KINDS,
    CacheConfig,
    Mode,
    OriginConfig,
    TierConfig,
)

__all__ = ["DEFAULT_PROMOTE_AFTER", "ORIGIN_KINDS", "CacheConfig", "Mode", "OriginConfig",
           "TierConfig", "file_digest", "load_config", "origin_digest"]
