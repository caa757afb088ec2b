"""Secrets and files: the token never shows (logs at DEBUG, tracebacks, messages), result paths cannot
leave OUTPUT_DIR, and a full disk (images or database) is reported plainly and loses no job."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import REPO, BotProcess, process_env
from tests.e2e.test_bot_process import bare_env
from tests.fakediscord import FakeDiscord

CANARY = "canary-TOKEN.Mz8Qw2Er4Ty6Ui8Op0As.Df1Gh3Jk5Lz7"


@pytest.mark.parametrize("mode", ["login-error", "login-oserror", "crash", "thread", "warning"])
def test_token_never_printed_even_inside_an_error(tmp_path: Path, mode: str) -> None:
    env = bare_env(DISCORD_TOKEN=CANARY, LOG_LEVEL="DEBUG", DATABASE_PATH=str(tmp_path / "q.sqlite3"))
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
