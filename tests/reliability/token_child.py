"""``python launcher.py`` (``launcher.main(ImageBot)``) with one fault that carries the token, for the canary tests
(a separate process, so the real interpreter prints what it prints: crash tracebacks, thread errors, warnings).

    python tests/reliability/token_child.py MODE     (DISCORD_TOKEN and the rest come from the environment)

MODE: login-error (an exception whose text holds the token), login-oserror, crash (escapes asyncio.run),
thread (an uncaught error in a thread), warning (a warning that quotes the token).
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import discord

import bot
import launcher


def main(mode: str) -> int:
    token = os.environ["DISCORD_TOKEN"]

    async def failing_login(self: discord.Client, _token: str) -> None:
        if mode == "login-oserror":
            raise OSError(f"could not reach Discord with {token}")
        if mode == "thread":
            worker = threading.Thread(target=lambda: (_ for _ in ()).throw(RuntimeError(f"thread saw {token}")))
            worker.start()
            worker.join()
        if mode == "warning":
            warnings.warn(f"deprecated token format {token}", UserWarning, stacklevel=1)
        if mode == "crash":
            raise SystemError(f"interpreter-level failure holding {token}")
        raise RuntimeError(f"login failed for token {token}")

    discord.Client.login = failing_login  # type: ignore[method-assign]
    if mode == "crash":
        original = launcher._exit_code

        def crash(runner: object) -> int:
            error = runner.exception()  # type: ignore[attr-defined]
            if isinstance(error, SystemError):
                raise error
            return original(runner)  # type: ignore[arg-type]

        launcher._exit_code = crash  # type: ignore[assignment]
    return launcher.main(bot.ImageBot)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
