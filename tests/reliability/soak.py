"""Crash soak: the real ``python launcher.py`` against the fake Discord, SIGKILLed at chosen moments, restarted.

"Never loses a job" is a claim about the worst moments: while a job waits, mid-generation, between the
image write and the post, in the middle of the post. This harness queues jobs from several users through
slash commands, times each kill by reading the bot's SQLite file read-only and by watching the fake's
requests (a 429 or a delay on the channel-message POST widens the "about to post" and "mid-post"
windows), restarts the bot, and at the end checks every job: it reached a final state, its result (or
failure) was posted exactly once, and each time it was running at a kill its owner was told.

    python -m pytest tests/reliability --soak -m soak -s     # 20 kills, as recorded in tests/RELIABILITY.md
    python -m tests.reliability.soak --kills 20 --seed 7     # the same, outside pytest, figures as JSON
"""

# Test helpers wait with an explicit timeout argument by design.

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import re
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import World, make_world
from tests.e2e.harness import BotProcess, process_env
from tests.fakediscord import FakeDiscord, InteractionHandle
from tests.reliability import dbread

TRIGGERS = ("queued", "running", "before-post", "mid-post", "random")
POSTS = r"/channels/\d+/messages$"
QUEUED = re.compile(r"Queued as #(\d+)")
RESULT = re.compile(r"here is \*\*#(\d+)\*\*")
FAILED = re.compile(r"Job #(\d+) failed")
RESUMED = re.compile(r"Your job #(\d+) was interrupted by a restart")
CRASH_ERROR = re.compile(r"crashed the worker \d+ times")
TOKEN = "soak-token.not-a-real-one"


@dataclass
class SoakConfig:
    kills: int = 20
    seed: int = 7
    users: int = 4
    step_delay_s: float = 0.25
    triggers: tuple[str, ...] = TRIGGERS
    trigger_timeout_s: float = 60.0
    drain_timeout_s: float = 240.0


@dataclass
class SoakReport:
    runs: int = 0
    kills: int = 0
    jobs: int = 0
    acked: int = 0
    queued_without_reply: int = 0
    done: int = 0
    failed: int = 0
    lost: int = 0
    duplicates: int = 0
    interrupted_runs: int = 0
    resumed_notices: int = 0
    crash_failures: int = 0
    max_attempts_seen: int = 0
    stale_status_messages: int = 0  # "Queued…"/progress lines never edited to the outcome (cosmetic)
    seconds: float = 0.0
    triggers: dict[str, int] = field(default_factory=dict)
    kill_points: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


def classify(jobs: list[dict[str, Any]], notices: list[dict[str, Any]], outputs: Path, posted: set[str]) -> str:
    """The most delicate moment the bot was in when it died, read from the database it left behind.

    ``posted``: nonces of messages the fake holds (a post that reached Discord whose reply the bot never saw).
    """
    by_job = {j["id"]: j for j in jobs}
    points = set()
    for notice in notices:
        if notice["delivered_at"] is None:
            job = by_job[notice["job_id"]]
            nonce = f"cv{notice['id']}.{int(job['created_at']) % 10**8}"
            points.add("mid-post (posted, not recorded)" if nonce in posted else "state saved, post owed")
    for job in jobs:
        if job["state"] == "running":
            fresh = [
                p for p in outputs.glob(f"job{job['id']:07d}_*.png") if p.stat().st_mtime >= (job["started_at"] or 0)
            ]
            points.add("image written, job not marked done" if fresh else "mid-generation")
        elif job["state"] == "queued":
            points.add("queued")
    for point in (
        "mid-post (posted, not recorded)",
        "image written, job not marked done",
        "state saved, post owed",
        "mid-generation",
        "queued",
    ):
        if point in points:
            return point
    return "idle"


class Soak:
    def __init__(self, server: FakeDiscord, world: World, model: Path, workdir: Path, config: SoakConfig) -> None:
        self.server = server
        self.world = world
        self.config = config
        self.workdir = workdir
        self.db = workdir / "queue.sqlite3"
        self.outputs = workdir / "outputs"
        self.rng = random.Random(config.seed)
        self.users = [world.alice, world.bob] + [server.add_user(f"user{i}") for i in range(max(0, config.users - 2))]
        for user in self.users[2:]:
            server.add_member(world.guild, user)
        self.env = process_env(
            server,
            model,
            workdir,
            DISCORD_TOKEN=TOKEN,
            DEV_GUILD_ID=str(world.guild.id),
            ENGINE_STEP_DELAY=str(config.step_delay_s),
            MAX_JOBS_PER_USER="1000",
            MAX_QUEUE_LENGTH="10000",
        )
        self.handles: list[InteractionHandle] = []
        self.interrupted: Counter[int] = Counter()  # job id -> runs cut short by a kill
        self._seen_runs: set[tuple[int, float]] = set()
        self.report = SoakReport()
        self._n = 0

    async def run(self) -> SoakReport:
        started = time.monotonic()
        order = list(self.config.triggers)
        plan: list[str] = []
        while len(plan) < self.config.kills:  # every trigger once per round, rounds shuffled
            self.rng.shuffle(order)
            plan.extend(order)
        for index, trigger in enumerate(plan[: self.config.kills]):
            await self._cycle(index, trigger)
        await self._drain()
        self.report.seconds = round(time.monotonic() - started, 1)
        self._verify()
        return self.report

    # --- one life of the bot ----------------------------------------------------------------------
    async def _start(self, index: int) -> BotProcess:
        before = self.server.identify_count
        proc = BotProcess(self.env, self.workdir / f"run{index:02d}.log", self.workdir)
        await proc.start()
        self.report.runs += 1

        def online() -> bool:
            assert proc.proc is not None
            if proc.proc.returncode is not None:
                raise RuntimeError(f"bot exited with {proc.proc.returncode}:\n{proc.output()[-3000:]}")
            return self.server.identify_count > before and bool(self.server.gateway.connected_sessions)

        await self.server.wait_for(online, 90, "bot online")
        return proc

    async def _cycle(self, index: int, trigger: str) -> None:
        proc = await self._start(index)
        rule = None
        if trigger == "before-post":  # Discord says "slow down": the bot waits with the post still owed
            rule = self.server.rate_limit("POST", POSTS, retry_after=2.5)
        elif trigger == "mid-post":  # Discord holds the post: the message appears after the bot died
            rule = self.server.delay(3.0, "POST", POSTS)
        try:
            await self._submit(self.rng.randint(1, 3))
            await self._wait_trigger(trigger, rule)
        finally:
            await proc.kill()  # SIGKILL
            if rule is not None and rule in self.server.faults.rules:
                self.server.faults.rules.remove(rule)
        self.report.kills += 1
        self.report.triggers[trigger] = self.report.triggers.get(trigger, 0) + 1
        # Let the fake finish the request the bot died in (a held post is created after the bot is gone).
        held = rule.hit_times[0] + 3.2 - time.monotonic() if trigger == "mid-post" and rule.hit_times else 0.1
        await asyncio.sleep(max(0.1, held))
        self._after_kill()

    async def _wait_trigger(self, trigger: str, rule: Any) -> None:
        timeout = self.config.trigger_timeout_s
        try:
            if trigger == "queued":
                await self._wait_acks(3.5)
                await asyncio.sleep(self.rng.uniform(0, 0.3))
            elif trigger == "running":
                step = self.rng.randint(1, 3)
                await self._wait_db(
                    lambda jobs: any(j["state"] == "running" and (j["progress_step"] or 0) >= step for j in jobs),
                    timeout,
                )
                await asyncio.sleep(self.rng.uniform(0, 0.5))
            elif trigger in ("before-post", "mid-post"):
                await self.server.wait_for(lambda: rule.hits >= 1, timeout, f"{trigger} fault")
                await asyncio.sleep(self.rng.uniform(0.1, 2.0))
            else:
                await asyncio.sleep(self.rng.uniform(0.0, 8.0))
        except TimeoutError:
            self.report.problems.append(f"trigger {trigger} never came within {timeout:.0f} s; killed anyway")

    async def _submit(self, count: int) -> None:
        for _ in range(count):
            self._n += 1
            user = self.rng.choice(self.users)
            options = {"prompt": f"soak job {self._n} for {user.username}", "steps": self.rng.randint(4, 10)}
            if self.rng.random() < 0.3:
                options["count"] = 2
            self.handles.append(await self.server.send_slash_command(user, self.world.channel, "imagine", options))

    async def _wait_acks(self, timeout: float) -> None:
        pending = [h for h in self.handles if not h.callbacks]
        for handle in pending:
            try:
                await handle.wait_response(timeout)
            except TimeoutError:
                pass

    async def _wait_db(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(await asyncio.to_thread(dbread.jobs, self.db)):
            if time.monotonic() > deadline:
                raise TimeoutError("database condition")
            await asyncio.sleep(0.05)

    def _after_kill(self) -> None:
        jobs = dbread.jobs(self.db)
        notices = dbread.notices(self.db)
        posted = {str(m.data.get("nonce")) for m in self.server.messages(self.world.channel) if m.data.get("nonce")}
        point = classify(jobs, notices, self.outputs, posted)
        self.report.kill_points[point] = self.report.kill_points.get(point, 0) + 1
        for job in jobs:
            run = (job["id"], job["started_at"])
            if job["state"] == "running" and run not in self._seen_runs:  # a run cut short (counted once)
                self._seen_runs.add(run)
                self.interrupted[job["id"]] += 1

    # --- the end: one more life that finishes everything, then a clean stop -----------------------------
    async def _drain(self) -> None:
        proc = await self._start(self.config.kills)
        deadline = time.monotonic() + self.config.drain_timeout_s
        while time.monotonic() < deadline:
            jobs = dbread.jobs(self.db)
            notices = dbread.notices(self.db)
            if all(j["state"] in ("done", "failed", "cancelled") for j in jobs) and all(
                n["delivered_at"] is not None for n in notices
            ):
                break
            await asyncio.sleep(0.2)
        else:
            self.report.problems.append("the last run did not finish every job and post within the time limit")
        await asyncio.sleep(4)  # one more round of status-message edits
        code = await proc.stop(signal.SIGTERM, timeout=60)
        if code != 0:
            self.report.problems.append(f"the clean stop exited with {code}")

    # --- invariants -----------------------------------------------------------------------------------------
    def _verify(self) -> None:
        report = self.report
        jobs = {j["id"]: j for j in dbread.jobs(self.db)}
        notices = dbread.notices(self.db)
        messages = [m for m in self.server.messages(self.world.channel, include_ephemeral=False)]
        results: Counter[int] = Counter()
        failures: Counter[int] = Counter()
        resumed: Counter[int] = Counter()
        for message in messages:
            for pattern, counter in ((RESULT, results), (FAILED, failures), (RESUMED, resumed)):
                match = pattern.search(message.content)
                if match:
                    counter[int(match.group(1))] += 1
        nonces = Counter(str(m.data["nonce"]) for m in messages if m.data.get("nonce"))
        report.duplicates += sum(n - 1 for n in nonces.values() if n > 1)

        acked: dict[int, int] = {}  # job id -> interaction id
        for handle in self.handles:
            response = handle.response
            match = QUEUED.search(response.content or "") if response is not None else None
            if match:
                acked[int(match.group(1))] = handle.id
        report.acked = len(acked)
        for job_id in acked:
            if job_id not in jobs:
                report.lost += 1
                report.problems.append(f"job #{job_id} was acknowledged but is not in the database")
        interaction_ids = {h.id for h in self.handles}
        report.queued_without_reply = sum(
            1 for j in jobs.values() if j["interaction_id"] in interaction_ids and j["id"] not in acked
        )

        report.jobs = len(jobs)
        resumed_db = Counter(n["job_id"] for n in notices if n["kind"] == "resumed")
        report.resumed_notices = sum(resumed.values())
        report.interrupted_runs = sum(self.interrupted.values())
        for job_id, job in jobs.items():
            report.max_attempts_seen = max(report.max_attempts_seen, job["attempts"])
            if job["attempts"] > job["max_attempts"]:
                report.problems.append(f"job #{job_id} ran {job['attempts']} times (max {job['max_attempts']})")
            crashed = job["state"] == "failed" and bool(CRASH_ERROR.search(job["error"] or ""))
            report.crash_failures += crashed
            if job["state"] == "done":
                report.done += 1
                if results[job_id] != 1:
                    report.problems.append(f"job #{job_id} is done but has {results[job_id]} result posts")
                    report.lost += results[job_id] == 0
                    report.duplicates += max(0, results[job_id] - 1)
            elif job["state"] == "failed":
                report.failed += 1
                if failures[job_id] != 1:
                    report.problems.append(f"job #{job_id} failed but its owner got {failures[job_id]} messages")
                    report.lost += failures[job_id] == 0
                    report.duplicates += max(0, failures[job_id] - 1)
            else:
                report.lost += 1
                report.problems.append(f"job #{job_id} never finished: {job['state']}")
            if resumed[job_id] != resumed_db[job_id]:
                report.problems.append(
                    f"job #{job_id}: {resumed_db[job_id]} resumed notices owed, {resumed[job_id]} posted"
                )
                report.duplicates += max(0, resumed[job_id] - resumed_db[job_id])
            if resumed_db[job_id] + crashed != self.interrupted[job_id]:
                report.problems.append(
                    f"job #{job_id} was cut short {self.interrupted[job_id]} time(s) but its owner was told "
                    f"{resumed_db[job_id]} time(s) (crash failure: {crashed})"
                )
        final = ("Done — see below", "Failed:", "Cancelled")
        for job in jobs.values():
            if job["status_message_id"] is not None:
                status = self.server.message(job["status_message_id"]).content
                report.stale_status_messages += not any(word in status for word in final)
        for notice in notices:
            if notice["delivered_at"] is None or notice["message_id"] is None:
                report.problems.append(f"notice {notice['id']} ({notice['kind']}) of job #{notice['job_id']} unsent")


async def run_soak(model: Path, workdir: Path, config: SoakConfig) -> SoakReport:
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    async with FakeDiscord(heartbeat_interval=0.5, token=TOKEN) as server:
        world = make_world(server)
        return await Soak(server, world, model, workdir, config).run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--users", type=int, default=4)
    args = parser.parse_args()
    from tools.tiny import write_tiny_model

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        model = write_tiny_model(Path(tmp) / "tiny")
        config = SoakConfig(kills=args.kills, seed=args.seed, users=args.users)
        report = asyncio.run(run_soak(model, Path(tmp) / "run", config))
    print(report.summary())
    raise SystemExit(1 if report.problems or report.lost or report.duplicates else 0)


if __name__ == "__main__":
    main()
