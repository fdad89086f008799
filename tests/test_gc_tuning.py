"""The server process tunes CPython's cyclic collector once it has started (run.py):
what is loaded by then is frozen out of its view, and its youngest generation is
collected every GC_YOUNG_THRESHOLD allocations instead of 700 (issue 14, fourth wave)."""

from __future__ import annotations

import gc

from run import _tune_gc
from server.constants import GC_YOUNG_THRESHOLD


def test_the_server_process_freezes_its_startup_objects_and_collects_less_often() -> None:
    before = gc.get_threshold()
    try:
        _tune_gc()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 10_000  # the modules and the app, at least
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
