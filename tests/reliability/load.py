"""Load: a burst of /imagine from many users at once against the real ``python launcher.py``.

Discord gives a bot 3 seconds to acknowledge an interaction; after that the user sees "The application
did not respond". The burst measures intake (the engine is paused with /pause, as an admin would), so
the figures are the bot's own: acknowledgement latency per interaction as the fake Discord saw it, the
per-user cap, the claim order the queue then hands the GPU, and the bot's log for "database is locked".

    python -m tests.reliability.load --users 50 --per-user 20     # 1000 interactions, figures as JSON
"""

# Test helpers wait with an explicit timeout argument by design.

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from db.sqlite_queue import SqliteJobQueue
from tests.conftest import World, make_world
from tests.e2e.harness import BotProcess, ephemeral_reply, process_env
from tests.fakediscord import FakeDiscord, InteractionHandle
from tests.reliability.soak import QUEUED

TOKEN = "load-token.not-a-real-one"


@dataclass
class LoadReport:
    interactions: int = 0
    users: int = 0
    cap: int = 0
    acknowledged: int = 0
    late_or_missing: int = 0
    accepted: int = 0
    refused_by_cap: int = 0
    other_replies: list[str] = field(default_factory=list)
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    burst_s: float = 0.0
    all_acked_s: float = 0.0
    per_user_max: int = 0
    claim_rounds_fair: bool = False
    database_locked_lines: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def run_load(
    model: Path, workdir: Path, *, users: int, per_user: int, cap: int, during_model_load: bool = False
) -> LoadReport:
    started = time.monotonic()
    report = LoadReport(interactions=users * per_user, users=users, cap=cap)
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    async with FakeDiscord(heartbeat_interval=5, token=TOKEN) as server:
        world = make_world(server)
        people = [server.add_user(f"load{i}") for i in range(users)]
        for person in people:
            server.add_member(world.guild, person)
        env = process_env(
            server,
            model,
            workdir,
            DISCORD_TOKEN=TOKEN,
            DEV_GUILD_ID=str(world.guild.id),
            MAX_JOBS_PER_USER=str(cap),
            MAX_QUEUE_LENGTH="100000",
        )
        proc = BotProcess(env, workdir / "bot.log", workdir)
        await proc.start()
        try:
            await server.wait_for(
                lambda: bool(server.gateway.connected_sessions and server.commands(world.guild)), 90, "bot online"
            )
            pause = await server.send_slash_command(world.admin, world.channel, "pause")
            assert "Paused" in await ephemeral_reply(pause, timeout=10)
            if not during_model_load:
                await _wait_engine_ready(server, world)

            # Discord is not a Python process: this one's full garbage collections (it holds the test suite's
            # objects) would add their pauses to the latency measured here.
            gc.freeze()
            burst_start = time.monotonic()
            handles: list[InteractionHandle] = []
            for round_ in range(per_user):  # every user clicks at once, again and again
                for person in people:
                    options = {"prompt": f"burst {round_} of {person.username}", "steps": 4}
                    handles.append(await server.send_slash_command(person, world.channel, "imagine", options))
            report.burst_s = round(time.monotonic() - burst_start, 2)
            for handle in handles:
                try:
                    await handle.wait_response(60)
                except TimeoutError:
                    pass
            report.all_acked_s = round(time.monotonic() - burst_start, 2)
            await _tally(report, handles)
            assert await proc.stop(signal.SIGTERM, timeout=60) == 0
        finally:
            await proc.kill()
    report.database_locked_lines = sum("database is locked" in line for line in proc.output().splitlines())
    await _claim_order(report, workdir / "queue.sqlite3", [p.id for p in people])
    report.seconds = round(time.monotonic() - started, 1)
    return report


async def _wait_engine_ready(server: FakeDiscord, world: World) -> None:
    """Until /status says the model is loaded: the burst measures intake, not intake racing the model load."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = await server.send_slash_command(world.admin, world.channel, "status")
        if "**Engine:** ready" in await ephemeral_reply(status, timeout=10):
            return
        await asyncio.sleep(0.5)
    raise TimeoutError("the engine did not load")


async def _tally(report: LoadReport, handles: list[InteractionHandle]) -> None:
    latencies = []
    for handle in handles:
        response = handle.response
        if response is None:
            report.late_or_missing += 1
            continue
        report.acknowledged += 1
        latencies.append(response.latency)
        text = response.content or ""
        if QUEUED.search(text):
            report.accepted += 1
        elif "You already have" in text and "the limit is" in text:
            report.refused_by_cap += 1
        elif len(report.other_replies) < 10:
            report.other_replies.append(text)
    if latencies:
        report.p50_ms = round(statistics.median(latencies) * 1000, 1)
        report.p95_ms = round(percentile(latencies, 95) * 1000, 1)
        report.p99_ms = round(percentile(latencies, 99) * 1000, 1)
        report.max_ms = round(max(latencies) * 1000, 1)


async def _claim_order(report: LoadReport, db: Path, users: list[int]) -> None:
    """Take every job off the queue the way the dispatcher would; each round must serve each user once."""
    queue = SqliteJobQueue(db)
    await queue.open()
    try:
        await queue.set_paused(False)
        order = []
        while (job := await queue.claim_next("load-check", 60)) is not None:
            order.append(job.requester.user_id)
    finally:
        await queue.close()
    counts = Counter(order)
    report.per_user_max = max(counts.values(), default=0)
    rounds = [order[i : i + len(users)] for i in range(0, len(order), len(users))]
    report.claim_rounds_fair = bool(order) and all(len(set(r)) == len(r) for r in rounds)
    report.claim_rounds_fair &= set(counts) <= set(users)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--per-user", type=int, default=20)
    parser.add_argument("--cap", type=int, default=5)
    parser.add_argument("--during-model-load", action="store_true", help="burst right after start-up")
    args = parser.parse_args()
    from tools.tiny import write_tiny_model

    with tempfile.TemporaryDirectory(prefix="load-") as tmp:
        model = write_tiny_model(Path(tmp) / "tiny")
        report = asyncio.run(run_load(model, Path(tmp) / "run", users=args.users, per_user=args.per_user, cap=args.cap))
    print(report.summary())


if __name__ == "__main__":
    main()
