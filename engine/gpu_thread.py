"""The one thread that owns the GPU; the asyncio side talks to it through awaitables.

Every command (load, generate, switch plan, release embeddings) runs in submission
order on this thread, so a plan switch requested mid-job takes effect between jobs
and the event loop never blocks on CUDA. Torch is imported on this thread only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any

from engine.types import EngineUnavailable

Command = tuple[Callable[[], Any], concurrent.futures.Future]


class GpuThread:
    def __init__(self, name: str = "gpu-engine") -> None:
        self._name = name
        self._commands: queue.Queue[Command | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
            self._thread.start()

    async def stop(self, timeout: float = 30.0) -> None:
        """Finish the commands already submitted, then end the thread."""
        if self._thread is None:
            return
        self._commands.put(None)
        await asyncio.to_thread(self._thread.join, timeout)

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Queue `fn` behind the commands already waiting; its result or exception lands in the future."""
        if self._thread is None:
            raise EngineUnavailable(code="engine.not_started")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put((fn, future))
        return future

    async def call(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.wrap_future(self.submit(fn))

    def _main(self) -> None:
        while True:
            command = self._commands.get()
            if command is None:
                return
            fn, future = command
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # the thread survives every error a job can raise
                future.set_exception(exc)
