"""`python launcher.py` as a real process against the fake Discord: start-up errors, a full job, a crash and a
restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_world
from tests.e2e.harness import (
    REPO,
    BotProcess,
    ephemeral_reply,
    image_size,
    process_env,
    queued_reply,
    wait_online,
    wait_result,
)
from tests.fakediscord import FakeDiscord

CANARY = "canary-TOKEN.Zq9xW3vB7nM2kL5pR8tY1uI4oE6aS0dF"


def run_bot_sync(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "launcher.py")], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def bare_env(**extra: str) -> dict[str, str]:
    """This environment minus anything the bot reads, plus ``extra`` (run in a folder without .env)."""
    from tests.e2e.harness import _is_setting

    env = {k: v for k, v in os.environ.items() if not _is_setting(k)}
    env.update(extra)
    return env


def test_without_token_explains_how_to_get_one(tmp_path: Path) -> None:
    done = run_bot_sync(bare_env(), tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "DISCORD_TOKEN is not set" in output and "discord.com/developers/applications" in output
    assert "Traceback" not in output


def test_malformed_settings_are_listed_without_a_traceback(tmp_path: Path) -> None:
    env = bare_env(DISCORD_TOKEN=CANARY, MAX_JOBS_PER_USER="lots", DEVICE="gpu", DEV_GUILD_ID="my server")
    done = run_bot_sync(env, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "MAX_JOBS_PER_USER" in output and "DEVICE" in output and "DEV_GUILD_ID" in output
    assert "Traceback" not in output and CANARY not in output


def test_python_bot_py_says_how_to_start_the_bot(tmp_path: Path) -> None:
    """bot.py holds the bot class; the start-up flows launcher → bot, so `python bot.py` points there."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bot.py")], env=bare_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == (
        "Start the bot with: python launcher.py (bot.py holds the bot class; launcher.py runs it)."
    )


def test_a_model_folder_that_does_not_exist_is_named_before_going_online(tmp_path: Path) -> None:
    done = run_bot_sync(bare_env(DISCORD_TOKEN=CANARY, MODEL_ID="/no/such/folder"), tmp_path)
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 2
    assert output.startswith("MODEL_ID: The model folder /no/such/folder does not exist")
    assert "\n" not in output and "Traceback" not in output and CANARY not in output


async def test_real_process_job_crash_restart_and_reroll(tiny_model: Path, tmp_path: Path) -> None:
    async with FakeDiscord(heartbeat_interval=0.5, token=CANARY) as server:
        world = make_world(server)
        base = process_env(
            server,
            tiny_model,
            tmp_path,
            DISCORD_TOKEN=CANARY,
            DEV_GUILD_ID=str(world.guild.id),
            ADMIN_USER_IDS=str(world.admin.id),
            LOG_LEVEL="DEBUG",
        )
        first = BotProcess({**base, "ENGINE_STEP_DELAY": "0.3"}, tmp_path / "run1.log", tmp_path)
        second = BotProcess({**base, "ENGINE_STEP_DELAY": "0"}, tmp_path / "run2.log", tmp_path)
        try:
            # --- first run: a job from the start (the model may still be loading), with progress edits
            await first.start()
            await wait_online(server, first, world.guild)
            handle = await server.send_slash_command(
                world.alice, world.channel, "imagine", {"prompt": "a lighthouse at dusk", "steps": 16}
            )
            job1, position, status1 = await queued_reply(handle)
            assert position == 1 and handle.ack_latency is not None and handle.ack_latency < 3.0
            result1 = await wait_result(server, world.channel, job1, timeout=90)
            assert [image_size(a.data) for a in result1.attachments] == [(64, 64)]
            await server.wait_for(lambda: "Done — see below" in server.message(status1.id).content, 10, "final")
            shown = [h["content"] for h in server.message(status1.id).history]
            assert any("making it" in text and "/16 steps" in text for text in shown), shown

            switch = await server.send_slash_command(world.admin, world.channel, "memory", {"plan": "mixed_resident"})
            assert "Now using plan mixed_resident" in await ephemeral_reply(switch, timeout=30)

            # --- a job that is running when the process dies
            handle = await server.send_slash_command(
                world.alice, world.channel, "imagine", {"prompt": "a storm at sea", "steps": 40}
            )
            job2, _, status2 = await queued_reply(handle)
            await server.wait_for(lambda: "making it" in server.message(status2.id).content, 20, "job 2 running")
            await first.stop(signal.SIGKILL)

            # --- second run: the job is back, announced, finished; old buttons still work; memory plan kept
            await second.start()
            await wait_online(server, second, world.guild)
            resumed = await server.wait_for_message(
                world.channel, lambda m: f"Your job #{job2} was interrupted by a restart" in m.content, 30
            )
            assert [u["id"] for u in resumed.data["mentions"]] == [str(world.alice.id)]
            result2 = await wait_result(server, world.channel, job2, timeout=60)
            await server.wait_for(lambda: "Done — see below" in server.message(status2.id).content, 10, "adopted")

            reroll = await server.send_component_click(world.bob, result1, f"cv4:reroll:{job1}")
            job3, _, _ = await queued_reply(reroll)
            result3 = await wait_result(server, world.channel, job3, timeout=60)
            assert [image_size(a.data) for a in result3.attachments] == [(64, 64)]

            info = await server.send_component_click(world.bob, result2, f"cv4:info:{job2}")
            assert "**plan:** mixed_resident" in await ephemeral_reply(info)
            assert await second.stop(signal.SIGTERM, timeout=30) == 0
        finally:
            await first.kill()
            await second.kill()

    logs = first.output() + second.output()
    assert CANARY not in logs
    invite = f"https://discord.com/oauth2/authorize?client_id={server.application_id}&scope=bot+applications.commands"
    assert invite in logs
    assert "Stopped cleanly" in second.output()
    assert "voice will NOT be supported" not in logs  # the bot has no voice: no warning about it (issue 14)
    results = [m for m in server.messages(world.channel) if m.attachments]
    assert sorted(int(m.content.split("**#")[1].split("**")[0]) for m in results) == [job1, job2, job3]
