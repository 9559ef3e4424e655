"""Every evaluation the agent makes, in SQLite (WAL; an SQLAlchemy URL for a shared database).

One row per (run fingerprint, recipe hash, fidelity): the recipe, its per-task scores, the general loss,
the objective, seconds and when. A row is committed before the search goes on, so a run stopped at any
point (Ctrl-C, a crash) keeps everything it measured, and a rerun with the same fingerprint reads those rows
instead of evaluating again. Fidelities: ``low`` (the first few dev rows per task), ``dev`` (the whole dev
part), ``holdout`` (the part the search never sees), ``single`` (a candidate alone, dev part).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from modelmix.dbutil import sqlite_pragmas
from modelmix.errors import InputError


class TrialStore:
    def __init__(self, url: str | Path) -> None:
        import sqlalchemy as sa

        u = str(url)
        if "://" not in u:
            p = Path(u)
            if not p.parent.is_dir():
                raise InputError(f"--db {p}: the directory {p.parent} does not exist.")
            u = f"sqlite:///{p}"
        md = sa.MetaData()
        self.trials = sa.Table(
            "agent_trials", md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("run", sa.String(32), nullable=False, index=True),
            sa.Column("recipe_hash", sa.String(64), nullable=False),
            sa.Column("fidelity", sa.String(16), nullable=False),
            sa.Column("recipe", sa.Text, nullable=False),
            sa.Column("scores", sa.Text, nullable=False),
            sa.Column("objective", sa.Float),
            sa.Column("seconds", sa.Float, nullable=False),
            sa.Column("seed", sa.Integer, nullable=False),
            sa.Column("created", sa.Float, nullable=False),
            sa.UniqueConstraint("run", "recipe_hash", "fidelity"),
        )
        self.runs = sa.Table(
            "agent_runs", md,
            sa.Column("run", sa.String(32), primary_key=True),
            sa.Column("spec", sa.Text, nullable=False),
            sa.Column("created", sa.Float, nullable=False),
            sa.Column("result", sa.Text),
        )
        try:
            self.engine = sa.create_engine(u, future=True)
            if u.startswith("sqlite"):
                sa.event.listen(self.engine, "connect", sqlite_pragmas)
            md.create_all(self.engine)
        except (sa.exc.SQLAlchemyError, ValueError) as e:
            raise InputError(f"--db {url}: cannot open the trial store ({type(e).__name__}: {e}).") from None
        self._sa = sa

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> TrialStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes (each committed at once)
    def start_run(self, run: str, spec: dict[str, Any]) -> None:
        sa = self._sa
        with self.engine.begin() as c:
            if c.execute(sa.select(self.runs.c.run).where(self.runs.c.run == run)).first() is None:
                c.execute(self.runs.insert().values(run=run, spec=json.dumps(spec), created=time.time()))

    def finish_run(self, run: str, result: dict[str, Any]) -> None:
        with self.engine.begin() as c:
            c.execute(self.runs.update().where(self.runs.c.run == run).values(result=json.dumps(result)))

    def put(self, run: str, recipe_hash: str, fidelity: str, recipe: dict[str, Any], scores: dict[str, Any],
            objective: float | None, seconds: float, seed: int) -> None:
        with self.engine.begin() as c:
            c.execute(self.trials.insert().values(
                run=run, recipe_hash=recipe_hash, fidelity=fidelity, recipe=json.dumps(recipe, sort_keys=True),
                scores=json.dumps(scores), objective=objective, seconds=seconds, seed=seed, created=time.time()))

    # ------------------------------------------------------------------ reads
    def get(self, run: str, recipe_hash: str, fidelity: str) -> dict[str, Any] | None:
        sa, t = self._sa, self.trials
        with self.engine.connect() as c:
            row = c.execute(sa.select(t).where(t.c.run == run, t.c.recipe_hash == recipe_hash,
                                               t.c.fidelity == fidelity)).mappings().first()
        return None if row is None else _row(row)

    def history(self, run: str | None = None) -> list[dict[str, Any]]:
        sa, t = self._sa, self.trials
        q = sa.select(t).order_by(t.c.id)
        if run is not None:
            q = q.where(t.c.run == run)
        with self.engine.connect() as c:
            return [_row(r) for r in c.execute(q).mappings()]

    def run_ids(self) -> list[dict[str, Any]]:
        sa = self._sa
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(sa.select(self.runs).order_by(self.runs.c.created)).mappings()]


def _row(r: Any) -> dict[str, Any]:
    d = dict(r)
    d["recipe"], d["scores"] = json.loads(d["recipe"]), json.loads(d["scores"])
    return d
