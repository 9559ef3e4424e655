"""SQLite settings shared by the stores (the router's feedback store, the agent's trial store)."""

from __future__ import annotations

from typing import Any


def sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """On every new SQLite connection: WAL (readers never block the writer), FULL sync (a committed write
    survives a crash, so an acknowledged write is never lost), a 30 s busy wait (several processes share one
    file) and foreign keys enforced. Install with ``sqlalchemy.event.listen(engine, "connect", ...)``."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
