"""The redis backend (being split out of ``tiercache/stores/redis_store.py``, issue 13).

:mod:`.options` holds the tier options, their limits and validation; it does not
import redis-py.
"""
