"""Model serving on top of the engine: the declared schedule and prefetching."""
