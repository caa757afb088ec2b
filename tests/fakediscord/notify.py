"""Wake-up signal for waiters: tests wait on conditions over the fake's state instead of sleeping."""

# Test helpers wait with an explicit timeout argument by design (clearer than wrapping in asyncio.timeout).

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Notifier:
    """Every state change calls ``bump()``; ``wait_for`` re-checks its predicate on each bump (and on a poll)."""

    def __init__(self, poll_interval: float = 0.05) -> None:
        self._event = asyncio.Event()
        self.poll_interval = poll_interval

    def bump(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait_for(self, predicate: Callable[[], T | None], timeout: float, what: str = "condition") -> T:
        """Return the predicate's first truthy result; raise ``TimeoutError`` naming ``what`` otherwise.

        The poll catches conditions that depend on things outside the fake (files, other processes).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"fakediscord: {what} not met within {timeout:.2f}s")
            event = self._event
            try:
                await asyncio.wait_for(event.wait(), min(self.poll_interval, remaining))
            except TimeoutError:
                pass
