"""Secrets and files: the token never shows (logs at DEBUG, tracebacks, messages), result paths cannot
leave OUTPUT_DIR, and a full disk (images or database) is reported plainly and loses no job."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from PIL import Image

import dispatch.dispatcher
from cogs.utils.i18n import t
from db.models import Job, JobState
from launcher import _Redact
from tests.conftest import World
from tests.e2e.harness import (
    REPO,
    BotProcess,
    ephemeral_reply,
    process_env,
    queued_reply,
    running_bot,
    settings_for,
    wait_job,
    wait_result,
)
from tests.e2e.test_bot_process import bare_env
from tests.fakediscord import FakeDiscord
from tests.reliability import dbread
from tests.reliability.hostile import leaks

CANARY = "canary-TOKEN.Mz8Qw2Er4Ty6Ui8Op0As.Df1Gh3Jk5Lz7"


@pytest.mark.parametrize("mode", ["login-error", "login-oserror", "crash", "thread", "warning"])
def test_token_never_printed_even_inside_an_error(tmp_path: Path, mode: str) -> None:
    env = bare_env(DISCORD_TOKEN=CANARY, LOG_LEVEL="DEBUG", DATABASE_PATH=str(tmp_path / "q.sqlite3"))
    (tmp_path / "no-model").mkdir()  # a folder that exists (a missing one is refused before the login)
    env["MODEL_ID"] = str(tmp_path / "no-model")  # the login fails before any model is needed
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "reliability" / "token_child.py"), mode],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert CANARY not in output, output[-3000:]
    assert "[token hidden]" in output, output[-3000:]  # the error itself still reaches the owner


async def test_rejected_token_at_debug_level(tmp_path: Path) -> None:
    async with FakeDiscord(heartbeat_interval=0.5, token="the-right-token") as server:
        (tmp_path / "no-model").mkdir()  # exists: a missing folder is refused before the login
        env = process_env(server, tmp_path / "no-model", tmp_path, DISCORD_TOKEN=CANARY, LOG_LEVEL="DEBUG")
        proc = BotProcess(env, tmp_path / "bot.log", tmp_path)
        await proc.start()
        try:
            assert proc.proc is not None
            code = await proc.proc.wait()
        finally:
            await proc.kill()
        sent = [r for r in server.requests if r.headers.get("Authorization") == f"Bot {CANARY}"]
    output = proc.output()
    assert code == 1 and "Discord rejected DISCORD_TOKEN" in output, output[-3000:]
    assert sent  # it did try, with the canary
    assert CANARY not in output and "Traceback" not in output, output[-3000:]


async def test_an_error_holding_a_secret_reaches_no_user(
    world: World, tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug whose exception text holds the token: the user gets the generic line; the log hides it."""
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id)
    async with running_bot(server, settings, ready=False) as bot:

        async def exploding() -> list[Job]:
            raise RuntimeError(f"database exploded while holding {CANARY}")

        bot.queue.active_jobs = exploding  # type: ignore[method-assign]
        reply = await ephemeral_reply(await server.send_slash_command(world.alice, world.channel, "queue"))
    assert reply == t("error.unexpected")
    assert all(CANARY not in json.dumps(r.payload, default=str) for r in server.requests)
    logged = [r for r in caplog.records if r.exc_info and CANARY in str(r.exc_info[1])]
    assert logged, "the error must be logged for the owner"
    formatter = _Redact("%(message)s", [CANARY])  # the formatter the launcher installs on its log handler
    assert all(CANARY not in formatter.format(r) for r in logged)


# --- result files ------------------------------------------------------------------------------------------
def png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(path)
    return path


TAMPERED = {
    "absolute path elsewhere": lambda out, secret: [str(secret)],
    "system file": lambda out, secret: ["/etc/hostname"],
    "../ out of the folder": lambda out, secret: [str(out / ".." / "secret" / "stolen.png")],
    "symlink to elsewhere": lambda out, secret: [str(_link(out / "job0000001_0.png", secret))],
    "subfolder": lambda out, secret: [str(png(out / "sub" / "job0000001_0.png"))],
    "one good, one elsewhere": lambda out, secret: [str(png(out / "job0000001_0.png")), str(secret)],
}


def _link(link: Path, target: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


@pytest.mark.parametrize("case", list(TAMPERED))
async def test_tampered_result_paths_are_never_posted(
    world: World, tiny_model: Path, tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = world.server
    out = tmp_path / "outputs"
    secret = png(tmp_path / "secret" / "stolen.png")
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id)
    async with running_bot(server, settings, ready=False) as bot:
        assert bot.services is not None and bot.services.dispatcher is not None
        await bot.services.dispatcher.stop(0)  # this test plays the worker, and writes what a tampered row would hold
        handle = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a cat"})
        job_id, _, _ = await queued_reply(handle)
        job = await bot.queue.claim_next("tamperer", 60)
        assert job is not None and job.id == job_id
        paths = TAMPERED[case](out, secret)
        assert await bot.queue.complete(job_id, "tamperer", result_paths=paths, seed_used=1, plan="bf16_resident")
        told = await server.wait_for_message(world.channel, lambda m: f"Job #{job_id} finished, but" in m.content, 10)
        shown = await ephemeral_reply(
            await server.send_slash_command(world.alice, world.channel, "show", {"job": job_id})
        )
        await wait_job(bot, job_id, lambda j: j.delivered_at is not None)
    assert "not in the bot's output folder" in told.content and "was not posted" in told.content
    assert [u["id"] for u in told.data["mentions"]] == [str(world.alice.id)]
    assert "no longer on the bot's disk" in shown
    assert not any(m.attachments for m in server.messages())
    assert any(f"Not posting job #{job_id}" in r.getMessage() for r in caplog.records)


# --- a full disk -------------------------------------------------------------------------------------------
@pytest.fixture
def output_disk(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """While ``full`` is set, writing an image fails like a full disk (ENOSPC when the PNG is flushed)."""
    state = {"full": True}
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if state["full"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(dispatch.dispatcher, "DISK_FULL_HOLD_S", 0.3)  # the owner's grace time, shortened
    return state


async def test_full_image_disk_requeues_the_job_then_delivers_it(
    world: World, tiny_model: Path, tmp_path: Path, output_disk: dict[str, bool], caplog: pytest.LogCaptureFixture
) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, default_steps=2)
    async with running_bot(server, settings) as bot:
        handle = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a cat"})
        job_id, _, _ = await queued_reply(handle)
        job = await wait_job(
            bot, job_id, lambda j: j.error is not None and j.state in (JobState.QUEUED, JobState.RUNNING)
        )
        assert job.error == dispatch.dispatcher.DISK_FULL and job.attempts >= 1
        assert list((tmp_path / "outputs").iterdir()) == []  # no half-written file or temp file left behind
        output_disk["full"] = False  # the owner freed some space
        posted = await wait_result(server, world.channel, job_id, timeout=30)
        job = await wait_job(bot, job_id, lambda j: j.result_message_id is not None)
    assert job.state is JobState.DONE and posted.attachments
    assert sum(f"**#{job_id}**" in m.content for m in server.messages(world.channel) if m.attachments) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and "could not save" in r.getMessage()]
    assert errors and str(tmp_path / "outputs") in errors[0] and "No space left" in errors[0]


async def test_disk_full_for_good_fails_the_job_with_a_clear_message(
    world: World, tiny_model: Path, tmp_path: Path, output_disk: dict[str, bool]
) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, default_steps=1)
    async with running_bot(server, settings) as bot:
        handle = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a cat"})
        job_id, _, _ = await queued_reply(handle)
        told = await server.wait_for_message(world.channel, lambda m: f"Job #{job_id} failed" in m.content, 30)
        job = await wait_job(bot, job_id, lambda j: j.state is JobState.FAILED)
    assert "disk is full" in told.content and "back in the queue" not in told.content
    assert job.attempts == 3
    assert sum(f"Job #{job_id} failed" in m.content for m in server.messages(world.channel)) == 1


async def test_full_database_refuses_new_requests_clearly_and_recovers(
    world: World, tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real SQLITE_FULL: the database may not grow by a single page (as on a full disk)."""
    server = world.server
    db = tmp_path / "queue.sqlite3"
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, max_jobs_per_user=100)
    async with running_bot(server, settings, ready=False) as bot:
        await bot.queue.set_paused(True)
        conn = bot.queue._db  # type: ignore[attr-defined]  # the bot's own connection: the limit is per connection
        (pages,) = await (await conn.execute("PRAGMA page_count")).fetchone()
        await conn.execute(f"PRAGMA max_page_count = {pages}")
        options = {"prompt": "a very detailed castle " * 40, "negative_prompt": "blurry and dull " * 60}
        for _ in range(40):  # the free room left in the last pages fills up, then the file would have to grow
            await server.wait_for(lambda: all(j["status_message_id"] for j in dbread.jobs(db)), 5, "replies stored")
            before = dbread.dump(db)
            handle = await server.send_slash_command(world.alice, world.channel, "imagine", options)
            text = (await handle.wait_response()).content or ""
            if "Queued as" not in text:
                break
        assert dbread.dump(db) == before  # the refused request left nothing behind
        await conn.execute("PRAGMA max_page_count = 1073741823")  # space freed
        accepted = await server.send_slash_command(world.alice, world.channel, "imagine", options)
        await queued_reply(accepted)
    assert "disk is full" in text and "Try again later" in text
    assert leaks(text) == []
    assert any(
        r.levelname == "ERROR" and "is full" in r.getMessage() and str(db) in r.getMessage() for r in caplog.records
    )


async def test_full_database_while_finishing_a_job_loses_nothing(
    world: World, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every COMMIT fails with "database or disk is full" while the job finishes: the dispatcher keeps its
    result and records it once the disk has room, instead of leaving the job "running" until a restart."""
    server = world.server
    db = tmp_path / "queue.sqlite3"
    full = {"on": False}
    real_execute = aiosqlite.Connection.execute

    async def execute(self: aiosqlite.Connection, sql: str, parameters: Any = None) -> Any:
        if full["on"] and sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return await real_execute(self, sql, parameters)

    monkeypatch.setattr(aiosqlite.Connection, "execute", execute)
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, engine_step_delay=0.2)
    async with running_bot(server, settings) as bot:
        handle = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a cat", "steps": 6})
        job_id, _, _ = await queued_reply(handle)
        await wait_job(bot, job_id, lambda j: (j.progress_step or 0) >= 2)
        full["on"] = True

        def stuck() -> bool:
            return any("could not record the result" in r.getMessage() for r in caplog.records)

        await server.wait_for(stuck, 20, "the dispatcher meets the full disk")
        [row] = [j for j in dbread.jobs(db) if j["id"] == job_id]
        assert row["state"] == "running"  # not done, not lost: waiting for room
        await asyncio.sleep(1.5)
        full["on"] = False
        await wait_result(server, world.channel, job_id, timeout=60)
        job = await wait_job(bot, job_id, lambda j: j.result_message_id is not None)
        after = await server.send_slash_command(world.bob, world.channel, "imagine", {"prompt": "a dog", "steps": 1})
        after_id, _, _ = await queued_reply(after)
        await wait_result(server, world.channel, after_id, timeout=30)  # the dispatcher goes on
    assert job.state is JobState.DONE and job.attempts == 1
    assert sum(f"**#{job_id}**" in m.content for m in server.messages(world.channel) if m.attachments) == 1
