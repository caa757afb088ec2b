"""Test and benchmark harness: real `python -m engine worker` processes on one PostgreSQL database.

The test process plays the bot: it enqueues through a PostgresJobQueue, reads progress and
notices, and "posts" results by consuming the outbox. Workers run the tiny CogView4 on the
CPU with ENGINE_STEP_DELAY, so a job's length is set by sleeping, not by the 2-core CPU.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from db.models import Job, JobState, NoticeKind, Requester
from db.postgres import PostgresJobQueue
from jobrequest import JobRequest

REPO = Path(__file__).resolve().parents[1]

# What README → "Add a second GPU PC" tells the owner to run once the bot has created the tables.
WORKER_GRANTS = (
    "GRANT USAGE ON SCHEMA public TO cogview_workers",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO cogview_workers",
    "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO cogview_workers",
)


def worker_roles_sql(*names: str) -> list[str]:
    """A group role with the workers' rights, and one login role per worker (README)."""
    statements = [
        "DO $$ BEGIN CREATE ROLE cogview_workers NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        *WORKER_GRANTS,
    ]
    for name in names:
        statements.append(
            f"DO $$ BEGIN CREATE ROLE {name} LOGIN PASSWORD 'secret-{name}' IN ROLE cogview_workers; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
    return statements


def request(prompt: str, *, steps: int = 8, seed: int = 1, size: int = 64) -> JobRequest:
    return JobRequest(prompt=prompt, width=size, height=size, steps=steps, guidance=4.0, seed=seed)


def requester(user_id: int) -> Requester:
    return Requester(user_id=user_id, channel_id=77, guild_id=9, user_name=f"user{user_id}")


class Cluster:
    def __init__(self, url: str, model: Path, folder: Path, *, step_delay: float = 0.05) -> None:
        self.url = url
        self.model = model
        self.folder = folder
        self.step_delay = step_delay
        self.queue = PostgresJobQueue(url, apply_schema=True)
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    async def open(self) -> Cluster:
        await self.queue.open()
        return self

    def start_worker(
        self,
        name: str,
        *,
        url: str | None = None,
        stalled_after: float = 3.0,
        heartbeat: float = 0.5,
        progress_every: float = 0.2,
        poll: float = 1.0,
        log_level: str = "INFO",
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "DATABASE_URL": url or self.url,
            "QUEUE_BACKEND": "postgres",
            "MODEL_ID": str(self.model),
            "DEVICE": "cpu",
            "MEMORY_MODE": "auto",
            "ENGINE_STEP_DELAY": str(self.step_delay),
            "OMP_NUM_THREADS": "1",  # several workers share 2 cores: no thread oversubscription
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        log = (self.folder / f"{name}.log").open("ab")
        try:
            command = [sys.executable, "-m", "engine", "worker", "--name", name, "--heartbeat", str(heartbeat)]
            command += ["--stalled-after", str(stalled_after), "--progress-every", str(progress_every)]
            command += ["--poll", str(poll), "--shutdown-grace", "5", "--log-level", log_level]
            proc = subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        self.workers[name] = proc
        return proc

    def log_of(self, name: str) -> str:
        try:
            return (self.folder / f"{name}.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    async def wait_ready(self, *names: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = {w.name: w.state for w in await self.queue.list_workers()}
            if all(states.get(name) in ("ready", "busy") for name in names):
                return
            for name in names:
                proc = self.workers[name]
                if proc.poll() is not None:
                    raise AssertionError(f"worker {name} exited with {proc.returncode}:\n{self.log_of(name)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"workers not ready: {states}\n" + "\n".join(self.log_of(n) for n in names))
            await asyncio.sleep(0.2)

    async def wait_jobs(
        self, ids: Iterable[int], predicate: Any = lambda job: job.state.finished, timeout: float = 90.0
    ) -> list[Job]:
        ids = list(ids)
        deadline = time.monotonic() + timeout
        while True:
            jobs = [await self.queue.get_job(job_id) for job_id in ids]
            if all(job is not None and predicate(job) for job in jobs):
                return [job for job in jobs if job is not None]
            if time.monotonic() > deadline:
                states = [(job.id, job.state.value, job.worker_id, job.progress_step) for job in jobs if job]
                logs = "\n".join(f"--- {n}\n{self.log_of(n)}" for n in self.workers)
                raise AssertionError(f"jobs did not get there in {timeout} s: {states}\n{logs}")
            await asyncio.sleep(0.1)

    async def deliver_all(self) -> dict[int, list[NoticeKind]]:
        """Play the delivery loop: post (here: record) every owed notice once; returns kinds per job."""
        posted: dict[int, list[NoticeKind]] = {}
        while notices := await self.queue.pending_notices(limit=100):
            for notice in notices:
                if notice.kind is NoticeKind.RESULT:
                    assert notice.job.state is JobState.DONE and notice.job.result_paths, notice
                    files = await self.queue.results.read(notice.job)
                    assert len(files) == len(notice.job.result_paths), notice.job.result_paths
                    for file in files:
                        assert file.data.startswith(b"\x89PNG"), file.name
                posted.setdefault(notice.job.id, []).append(notice.kind)
                await self.queue.notice_sent(notice.id, message_id=100_000 + notice.id)
        return posted

    def kill(self, name: str) -> None:
        proc = self.workers[name]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    async def close(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.workers.values():
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        await self.queue.close()

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []
