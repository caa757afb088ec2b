"""A single-machine install has no procrastinate or psycopg: everything but the cluster code must import.

Each check runs in a fresh interpreter whose import system refuses those packages, as a machine
installed with `pip install -e .` (no cluster extra) would.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCK = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoClusterExtra(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("procrastinate", "psycopg", "psycopg_pool", "psycopg_binary"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoClusterExtra())
    """
)


def run(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + textwrap.dedent(code), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_bot_cogs_and_engine_import_without_the_cluster_extra() -> None:
    result = run(
        """
        import bot, launcher, settings, db, db.interface, db.sqlite_queue, db.workers, db.results
        import engine.service, dispatch.dispatcher, cluster.view
        import cogs.admin, cogs.utils.reports, cogs.delivery, cogs.progress, cogs.imagine
        assert "procrastinate" not in sys.modules and "psycopg" not in sys.modules
        print("ok")
        """
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_asking_for_postgres_without_the_extra_says_how_to_install_it(tmp_path: Path) -> None:
    result = run(
        """
        import asyncio
        from db import open_queue
        from db.models import QueueError
        from settings import load_settings

        settings = load_settings(queue_backend="postgres", database_url="postgresql://u@localhost/db")
        try:
            asyncio.run(open_queue(settings))
        except QueueError as exc:
            print(exc)
        """
    )
    assert "cluster extra (psycopg is missing): pip install -e '.[cluster]'" in result.stdout, result.stderr
    worker = run(
        "import sys\nfrom engine.__main__ import main\nsys.exit(main(['worker']))",
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DATABASE_URL": "postgresql://u@localhost/db"},
    )
    assert worker.returncode == 2 and "pip install -e '.[cluster]'" in worker.stderr, worker.stderr
