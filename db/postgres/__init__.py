"""The queue on PostgreSQL with procrastinate, for several GPU machines (`pip install ".[cluster]"`).

Importing this package needs procrastinate and psycopg; nothing outside it imports them,
so a single-machine install never needs the cluster extra.
"""

from __future__ import annotations

from db.postgres.connection import DatabaseUnreachable
from db.postgres.queue import PostgresJobQueue

__all__ = ["DatabaseUnreachable", "PostgresJobQueue"]
