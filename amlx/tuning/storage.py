"""Optuna storages that several tuning workers share, with heartbeats so a killed worker's trial ends FAIL.

``make_storage(url)``:
- ``sqlite:///runs/tune/aml.db`` (default; one file, a few workers on one machine) or any SQLAlchemy database
  URL (``postgresql://user:pass@host/db``, ``mysql+pymysql://...``; many workers on many nodes) →
  ``optuna.storages.RDBStorage`` with its own heartbeat;
- ``journal:<path>`` → Optuna's journal file (``JournalStorage(JournalFileBackend(path))``), for workers on a
  shared filesystem without a database server. Optuna's journal storage has no heartbeat (optuna 5.0), so
  ``HeartbeatJournalStorage`` adds one: a running trial's worker records the time every ``heartbeat_interval``
  seconds in the trial's system attributes, and a trial silent for longer than ``grace_period`` is stale.

Stale trials are set to FAIL by the next worker that starts a trial (Optuna's ``fail_stale_trials``), and
``retry_stale=k`` enqueues each stale trial's parameters again, up to k times
(``optuna.storages.RetryHeartbeatStaleTrialCallback``). Clocks: RDB heartbeats use the database's clock; the
journal's use each worker's clock, so nodes sharing a journal file need synchronized clocks (NTP).
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

JOURNAL_PREFIX = "journal:"
HEARTBEAT_KEY = "amlx:heartbeat"
RDB_ATTEMPTS = 5  # opening a new database: tries while other workers create its schema
SQLITE_TIMEOUT_S = 60  # how long a SQLite writer waits for another worker's lock before "database is locked"

StaleCallback = Callable[[optuna.Study, FrozenTrial], None]


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """``JournalStorage`` with heartbeats kept in the trials' system attributes (``amlx:heartbeat``: Unix time)."""

    def __init__(
        self,
        backend,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
        stale_callback: StaleCallback | None = None,
    ) -> None:
        super().__init__(backend)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period or (2 * heartbeat_interval if heartbeat_interval else None)
        self.stale_callback = stale_callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_KEY, time.time())
        except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
            pass  # another worker already declared this trial stale; the trial's own end reports it

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = t.system_attrs.get(HEARTBEAT_KEY)
            if beat is None and t.datetime_start is not None:
                beat = t.datetime_start.timestamp()  # started, no heartbeat yet
            if beat is not None and now - beat > self.grace_period:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> StaleCallback | None:
        return self.stale_callback


def is_journal(url: str) -> bool:
    return url.startswith(JOURNAL_PREFIX)


def local_path(url: str) -> Path | None:
    """The file behind a SQLite or journal URL (None for a database server)."""
    if is_journal(url):
        return Path(url[len(JOURNAL_PREFIX) :])
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        return Path(path) if path and path != ":memory:" else None
    return None


def make_storage(
    url: str,
    heartbeat_interval: int | None = 60,
    grace_period: int | None = None,
    retry_stale: int = 0,
) -> BaseStorage:
    """The storage behind ``url`` (see the module docstring); heartbeats every ``heartbeat_interval`` s (None: off).

    ``grace_period``: seconds without a heartbeat after which a running trial is stale (default 2 × interval).
    ``retry_stale``: how many times a stale trial's parameters are enqueued again (0: never).
    """
    path = local_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    stale_callback = RetryHeartbeatStaleTrialCallback(max_retry=retry_stale) if retry_stale > 0 else None
    grace = grace_period or (2 * heartbeat_interval if heartbeat_interval else None)
    if is_journal(url):
        return HeartbeatJournalStorage(JournalFileBackend(str(path)), heartbeat_interval, grace, stale_callback)
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    for attempt in range(RDB_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace if heartbeat_interval else None,
                    heartbeat_stale_trial_callback=stale_callback,
                )
        except (IntegrityError, OperationalError, ProgrammingError):
            # workers that open a new database at the same moment race to create Optuna's schema (the loser
            # hits SQLite's "UNIQUE constraint failed: alembic_version", PostgreSQL's duplicate key in pg_type or
            # "relation already exists"); once one has created it, opening succeeds
            if attempt == RDB_ATTEMPTS - 1:
                raise
            time.sleep(0.2 + random.random())
