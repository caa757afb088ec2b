"""The services the cogs use, wired once for the bot's setup_hook: the durable queue, the GPU engine and its
dispatcher (or, when GPU machines run the jobs, the view of those machines).

``open_services`` opens the queue, puts back jobs an earlier run left unfinished, and starts the engine and
its dispatcher in the background: the bot is online and queueing within seconds while the model loads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
from dataclasses import dataclass

from cogs.utils.kv_keys import MEMORY_KEY
from db import JobQueue, open_queue
from dispatch.dispatcher import Dispatcher
from engine.plans import PLANS
from engine.rules import model_label
from engine.service import Engine, EngineConfig
from engine.types import EngineView
from settings import Settings

log = logging.getLogger("bot")  # every start-up log line is named "bot"


@dataclass
class Services:
    """The queue and the engine the cogs see, and the dispatcher when this machine runs the jobs itself."""

    queue: JobQueue
    engine: EngineView
    dispatcher: Dispatcher | None  # None when GPU machines run the jobs (QUEUE_BACKEND=postgres)
    model_label: str

    async def stop_claiming(self, grace_s: float) -> None:
        """Take no new job; the running one gets ``grace_s`` to finish, else it goes back to the queue."""
        if self.dispatcher is not None:
            await self.dispatcher.stop(grace_s)

    async def close(self) -> None:
        await self.engine.stop()
        await self.queue.close()


async def open_services(settings: Settings) -> Services:
    """Open the queue, recover what the last stop interrupted, and start the engine (or the cluster's view)."""
    queue = await open_queue(settings)
    engine: EngineView | None = None
    try:
        requeued, failed = await queue.recover_interrupted()
        if requeued or failed:
            log.warning(
                "Jobs interrupted by the last stop: %d back in the queue, %d failed", len(requeued), len(failed)
            )
        mode = await saved_memory_mode(queue, settings)
        if await queue.is_paused():
            log.warning("The queue is paused (an admin used /pause); /resume starts jobs again")
        label = await asyncio.to_thread(model_label, settings.model_id)
        if settings.queue_backend == "postgres":  # GPU machines run the jobs (python -m engine worker)
            from cluster.view import ClusterView

            view = ClusterView(queue.list_workers, settings.model_id)
            engine = view
            await view.start()
            return Services(queue, view, None, label)
        config = dataclasses.replace(EngineConfig.from_settings(settings), memory_mode=mode)
        local = await asyncio.to_thread(Engine, config)  # reads the model's configs and tokenizer
        engine = local
        local.start()  # loads in the background; jobs wait in the queue meanwhile
        log.info("Loading %s with memory plan %s in the background", settings.model_id, mode)
        dispatcher = Dispatcher(
            queue,
            local,
            worker_id=f"{socket.gethostname()}:{os.getpid()}",
            model_id=label,  # written into the PNGs people download: no local paths
        )
        dispatcher.start()
        return Services(queue, local, dispatcher, label)
    except BaseException:
        if engine is not None:
            await engine.stop()
        await queue.close()
        raise


async def saved_memory_mode(queue: JobQueue, settings: Settings) -> str:
    """The plan an admin chose with /memory (kept across restarts), else MEMORY_MODE."""
    chosen = await queue.kv_get(MEMORY_KEY)
    if chosen is None:
        return settings.memory_mode
    if chosen != "auto" and chosen not in PLANS:
        log.warning("The saved memory plan %r no longer exists; using MEMORY_MODE=%s", chosen, settings.memory_mode)
        return settings.memory_mode
    return chosen
