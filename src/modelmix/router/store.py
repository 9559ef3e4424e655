"""The router's store: every interaction (query, decision, answer) and every feedback event.

Write policy — what "acknowledged" means: a method that records something returns only after its
transaction has committed. On SQLite (the default, one file) the connection runs in WAL mode with
``synchronous=FULL``, so a committed transaction is on disk before the call returns: a crash or ``kill -9``
right after an acknowledgement loses nothing, and readers (``route stats``) never block the writer. Several
processes (uvicorn workers) may share one file: each write is one short transaction and a busy database is
waited for (``busy_timeout``) rather than failed. Any other SQLAlchemy URL (PostgreSQL, MySQL) works the
same way for a store shared by several machines.

Tables: ``interactions`` (id ``cmpl-…``, time, query, the route distribution, strategy, models, weights,
answer, latency, free-form extra JSON) and ``feedback`` (interaction id, time, score in [0, 1], comment).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from modelmix.dbutil import sqlite_pragmas
from modelmix.errors import DataError, InputError

SCHEMA_VERSION = 1


class UnknownInteraction(DataError):
    """Feedback names an interaction id the store has never seen."""


def _tables() -> tuple[Any, Any, Any]:
    import sqlalchemy as sa

    md = sa.MetaData()
    interactions = sa.Table(
        "interactions", md,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("ts", sa.Float, nullable=False, index=True),
        sa.Column("query", sa.Text, nullable=False),
        sa.Column("distribution", sa.Text, nullable=False),  # JSON {route: p}
        sa.Column("strategy", sa.String(16), nullable=False),
        sa.Column("route", sa.String(128), nullable=False, index=True),  # the top route
        sa.Column("models", sa.Text, nullable=False),  # JSON [model, ...]
        sa.Column("weights", sa.Text, nullable=False),  # JSON [w, ...]
        sa.Column("answer", sa.Text, nullable=True),
        sa.Column("latency_ms", sa.Float, nullable=True),
        sa.Column("extra", sa.Text, nullable=True),  # JSON
    )
    feedback = sa.Table(
        "feedback", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("interaction_id", sa.String(64), sa.ForeignKey("interactions.id"), nullable=False, index=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("comment", sa.Text, nullable=True),
    )
    return md, interactions, feedback


class Store:
    """Interactions and feedback in one database (see the module docstring for the write policy)."""

    def __init__(self, url: str | Path) -> None:
        import sqlalchemy as sa

        url = str(url)
        if "://" not in url:
            url = f"sqlite:///{Path(url).expanduser()}"
        self.url = url
        try:
            self.engine = sa.create_engine(url, future=True)
        except Exception as e:  # noqa: BLE001 - an unknown dialect or a malformed URL
            raise InputError(f"feedback store {url}: cannot open it ({type(e).__name__}: {e}).") from None
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", sqlite_pragmas)
        self._md, self.interactions, self.feedback_table = _tables()
        try:
            self._md.create_all(self.engine)
        except sa.exc.SQLAlchemyError as e:
            raise InputError(f"feedback store {url}: cannot create its tables ({e.__class__.__name__}: "
                             f"{str(e).splitlines()[0]}).") from None

    # ------------------------------------------------------------------ writes (acknowledged on return)
    def log(self, query: str, distribution: Mapping[str, float], strategy: str, models: Sequence[str],
            weights: Sequence[float], *, answer: str | None = None, latency_ms: float | None = None,
            extra: Mapping[str, Any] | None = None, interaction_id: str | None = None) -> str:
        """Record one interaction; returns its id (``cmpl-…``) once committed."""
        iid = interaction_id or f"cmpl-{uuid.uuid4().hex}"
        top = max(distribution, key=distribution.__getitem__) if distribution else ""
        row = {"id": iid, "ts": time.time(), "query": query, "distribution": json.dumps(dict(distribution)),
               "strategy": strategy, "route": top, "models": json.dumps(list(models)),
               "weights": json.dumps([float(w) for w in weights]), "answer": answer, "latency_ms": latency_ms,
               "extra": json.dumps(dict(extra)) if extra else None}
        with self.engine.begin() as c:
            c.execute(self.interactions.insert().values(**row))
        return iid

    def add_feedback(self, interaction_id: str, score: float | None = None, *, thumbs: str | None = None,
                     comment: str | None = None) -> int:
        """Record feedback on an interaction (``score`` in [0, 1], or ``thumbs`` "up"/"down"); returns the
        event's id once committed. Unknown ids and bad scores raise before anything is written."""
        import math

        import sqlalchemy as sa

        if (score is None) == (thumbs is None):
            raise DataError('feedback needs exactly one of "score" (0..1) or "thumbs" ("up" or "down").')
        if thumbs is not None:
            if thumbs not in ("up", "down"):
                raise DataError(f'"thumbs" must be "up" or "down", got {thumbs!r}.')
            score = 1.0 if thumbs == "up" else 0.0
        assert score is not None
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score) or not 0 <= score <= 1:
            raise DataError(f'"score" must be a number between 0 and 1, got {score!r}.')
        if comment is not None and not isinstance(comment, str):
            raise DataError(f'"comment" must be a string, got {type(comment).__name__}.')
        with self.engine.begin() as c:
            if c.execute(sa.select(self.interactions.c.id).where(self.interactions.c.id == interaction_id)).first() is None:
                raise UnknownInteraction(f"no interaction with id {interaction_id!r} in the store; feedback must "
                                         "name the id of a completion this router returned.")
            res = c.execute(self.feedback_table.insert().values(interaction_id=interaction_id, ts=time.time(),
                                                                score=float(score), comment=comment))
            return int(res.inserted_primary_key[0])

    # ------------------------------------------------------------------ reads
    def interaction(self, interaction_id: str) -> dict[str, Any] | None:
        import sqlalchemy as sa

        with self.engine.connect() as c:
            r = c.execute(sa.select(self.interactions).where(self.interactions.c.id == interaction_id)).mappings().first()
        return None if r is None else _decode(dict(r))

    def feedback_events(self) -> int:
        import sqlalchemy as sa

        with self.engine.connect() as c:
            return int(c.execute(sa.select(sa.func.count()).select_from(self.feedback_table)).scalar_one())

    def feedback_ids(self) -> set[int]:
        import sqlalchemy as sa

        with self.engine.connect() as c:
            return {int(x) for x in c.execute(sa.select(self.feedback_table.c.id)).scalars()}

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per top route: interactions, feedback events, mean score, and per model its feedback count and
        mean score (what the learner will start from)."""
        import sqlalchemy as sa

        i, f = self.interactions, self.feedback_table
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as c:
            for route, n in c.execute(sa.select(i.c.route, sa.func.count()).group_by(i.c.route)):
                out[route] = {"interactions": int(n), "feedback": 0, "mean_score": None, "models": {}}
            q = sa.select(i.c.route, i.c.models, f.c.score).select_from(f.join(i, f.c.interaction_id == i.c.id))
            acc: dict[str, list[float]] = {}
            per_model: dict[tuple[str, str], list[float]] = {}
            for route, models, score in c.execute(q):
                acc.setdefault(route, []).append(score)
                first = (json.loads(models) or [""])[0]
                per_model.setdefault((route, first), []).append(score)
        for route, scores in acc.items():
            out[route]["feedback"] = len(scores)
            out[route]["mean_score"] = sum(scores) / len(scores)
        for (route, model), scores in per_model.items():
            out[route]["models"][model] = {"feedback": len(scores), "mean_score": sum(scores) / len(scores)}
        return out

    def history(self, after: int = 0) -> Iterator[tuple[dict[str, float], list[str], float]]:
        """Feedback events as ``(distribution, models, score)``, oldest first (the learner replays them)."""
        for _, dist, models, score in self.history_since(after):
            yield dist, models, score

    def history_since(self, after: int = 0) -> Iterator[tuple[int, dict[str, float], list[str], float]]:
        """Feedback events with an id above ``after`` as ``(id, distribution, models, score)``, in id order:
        how every server worker brings its learner up to date with the events all workers stored."""
        for fid, dist, models, score, _ in self.events_since(after):
            yield fid, dist, models, score

    def events_since(self, after: int = 0) -> Iterator[tuple[int, dict[str, float], list[str], float, str]]:
        """:meth:`history_since` with each interaction's strategy: ``(id, distribution, models, score,
        strategy)``, what the learner replays."""
        import sqlalchemy as sa

        i, f = self.interactions, self.feedback_table
        q = (sa.select(f.c.id, i.c.distribution, i.c.models, f.c.score, i.c.strategy)
             .select_from(f.join(i, f.c.interaction_id == i.c.id)).where(f.c.id > after).order_by(f.c.id))
        with self.engine.connect() as c:
            rows = c.execute(q).all()
        for fid, dist, models, score, strategy in rows:
            yield int(fid), json.loads(dist), json.loads(models), float(score), str(strategy)

    def export(self) -> Iterator[dict[str, Any]]:
        """Feedback as ``{"input", "output", "score"}`` examples (interactions with an answer), oldest first."""
        import sqlalchemy as sa

        i, f = self.interactions, self.feedback_table
        q = (sa.select(i.c.query, i.c.answer, f.c.score).select_from(f.join(i, f.c.interaction_id == i.c.id))
             .where(i.c.answer.is_not(None)).order_by(f.c.id))
        with self.engine.connect() as c:
            for query, answer, score in c.execute(q):
                yield {"input": query, "output": answer, "score": score}

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decode(r: dict[str, Any]) -> dict[str, Any]:
    for k in ("distribution", "models", "weights", "extra"):
        if r.get(k) is not None:
            r[k] = json.loads(r[k])
    return r
