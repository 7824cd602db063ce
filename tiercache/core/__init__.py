"""The engine: a cache of tiers (see :mod:`tiercache.core.cache`)."""
