"""The queue's clock: every stored time comes from `now` (tests replace it to move time)."""

from __future__ import annotations

import time


def now() -> float:
    """Unix seconds."""
    return time.time()
