"""The PostgreSQL backend's connection: a pool (lent to procrastinate as well), transactions that turn a lost
database into `DatabaseUnreachable`, worker-side writes that retry through a database restart, and the
LISTEN/NOTIFY that wakes waiters in other processes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from procrastinate import exceptions as pexc
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from db import base, core
from db.models import QueueError
from db.postgres import dispatch
from db.postgres.inputs import DatabaseInputs
from db.postgres.results import DatabaseResults
from db.postgres.schema import ensure_schema

log = logging.getLogger(__name__)

CHANNEL = "cogview_changes"
_TRANSIENT = (psycopg.OperationalError, psycopg_pool.PoolTimeout)
T = TypeVar("T")


class DatabaseUnreachable(QueueError):
    """The database stayed out of reach through the retries; the user is asked to try again."""

    code = "queue.unreachable"


def _transient(exc: BaseException) -> bool:
    """A lost or refused connection (also when procrastinate wrapped it), not a failed statement."""
    return isinstance(exc, _TRANSIENT) or (
        isinstance(exc, pexc.ConnectorException) and isinstance(exc.__cause__, _TRANSIENT)
    )


def describe(conninfo: str) -> str:
    """DATABASE_URL without its password, for messages."""
    try:
        parts = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "DATABASE_URL (unparseable)"
    return (
        f"{parts.get('user', '?')}@{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"
    )


@functools.lru_cache(maxsize=256)
def _pg(sql: str) -> str:
    """db.core's `?` placeholders in psycopg's style."""
    return sql.replace("?", "%s")


class _Conn:
    """db.base.Conn on a psycopg connection."""

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self.conn = conn

    async def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        async with self.conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(_pg(sql), params or None)
            return await cursor.fetchone()

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        async with self.conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(_pg(sql), params or None)
            return await cursor.fetchall()

    async def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self.conn.cursor() as cursor:
            await cursor.execute(_pg(sql), params or None)
            return cursor.rowcount


def raw(conn: base.Conn) -> psycopg.AsyncConnection:
    assert isinstance(conn, _Conn)
    return conn.conn


class PostgresConnection(core.QueueCore):
    """The queue's rules (db.core) on a PostgreSQL connection pool; db.postgres.queue adds the rest."""

    JOB_COLUMNS = "j.*, p.step AS progress_step, p.total AS progress_total"
    JOB_FROM = "jobs j LEFT JOIN job_progress p ON p.job_id = j.id"
    TURN = "token_id"  # procrastinate fetches tokens by priority (-round), then id
    FOR_UPDATE = " FOR UPDATE"

    def __init__(
        self,
        conninfo: str,
        *,
        pool_size: int = 4,
        stalled_after_s: float = 30.0,
        retry_for_s: float = 0.0,
        apply_schema: bool = True,
    ) -> None:
        """`retry_for_s`: how long worker-side writes keep retrying while the database is away."""
        super().__init__()
        self.conninfo = conninfo
        self.stalled_after_s = stalled_after_s
        self.retry_for_s = retry_for_s
        self.results = DatabaseResults(self._tx, self._read, self._retrying)
        self.inputs = DatabaseInputs(self._tx, self._read, self._retrying)
        self._apply_schema = apply_schema
        self._pool_size = pool_size
        self._pool: psycopg_pool.AsyncConnectionPool | None = None
        self._app = dispatch.make_app(self.is_paused)
        self._listener: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------
    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = psycopg_pool.AsyncConnectionPool(
            self.conninfo,
            min_size=1,
            max_size=self._pool_size,
            open=False,
            timeout=10.0,
            check=psycopg_pool.AsyncConnectionPool.check_connection,
        )
        try:
            if self._apply_schema:
                await ensure_schema(self.conninfo)
            await pool.open(wait=True, timeout=15.0)
        except BaseException as exc:
            await pool.close()  # its reconnect tasks would otherwise keep trying in the background
            if isinstance(exc, psycopg.Error | psycopg_pool.PoolTimeout | OSError):
                raise QueueError(f"Could not open the queue database {describe(self.conninfo)}: {exc}") from exc
            raise
        self._pool = pool
        self._app = dispatch.make_app(self.is_paused)  # a closed app keeps its old pool: start afresh
        await self._app.open_async(pool)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await self._app.close_async()  # the pool was lent to procrastinate: it does not close it
            await pool.close()

    @property
    def pool(self) -> psycopg_pool.AsyncConnectionPool:
        return base.opened(self._pool)

    @property
    def procrastinate_app(self) -> Any:
        """The procrastinate app (open while the queue is), for the cluster worker."""
        return self._app

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[_Conn]:
        """One transaction; wakes local waiters after it committed."""
        try:
            async with self.pool.connection() as conn, conn.transaction():
                yield _Conn(conn)
        except Exception as exc:
            if _transient(exc):
                raise DatabaseUnreachable from exc
            raise
        self._wake_local()

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[_Conn]:
        try:
            async with self.pool.connection() as conn:
                yield _Conn(conn)
        except Exception as exc:
            if _transient(exc):
                raise DatabaseUnreachable from exc
            raise

    async def _retrying(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Worker-side writes: keep trying through a database restart (they are all idempotent)."""
        if self.retry_for_s <= 0:
            return await fn()
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(DatabaseUnreachable),
            wait=wait_exponential(multiplier=0.2, max=5.0),
            stop=stop_after_delay(self.retry_for_s),
            reraise=True,
        ):
            with attempt:
                return await fn()
        raise AssertionError("unreachable")

    # --- change notification across processes ----------------------------------------------------------
    async def _announce(self, conn: base.Conn, what: str = "") -> None:
        """Wake other processes' wait_for_change (delivered when the transaction commits)."""
        await conn.run("SELECT pg_notify(?, ?)", (CHANNEL, what))

    async def wait_for_change(self, max_wait: float) -> None:
        if self._listener is None and self._pool is not None:
            self._listener = asyncio.create_task(self._listen(), name="queue-listener")
        await super().wait_for_change(max_wait)

    async def _listen(self) -> None:
        """LISTEN on a connection of its own; reconnects after a database restart."""
        delay = 0.2
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    delay = 0.2
                    while True:
                        async for _ in conn.notifies(timeout=30.0):
                            self._wake_local()
                        await conn.execute("SELECT 1")  # a quiet half-open connection fails here
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                log.debug("Queue listener lost its connection (%s); reconnecting in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
