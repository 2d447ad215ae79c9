"""The SQLite index of run records: fast lookups for skipping finished runs and for leaderboards.

The index is a cache. Each run's ``record.json`` is the truth, and :meth:`ResultsStore.rebuild`
re-creates the index from the records at any time. Several processes (the joblib launcher, SLURM
array jobs) may index at once: every operation opens its own short-lived connection, writes take
the lock up front (``BEGIN IMMEDIATE``) and wait for it, and the journal is in WAL mode so readers
never block writers.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing, contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from advsuite.paths import advsuite_home
from advsuite.results.record import RECORD_NAME, finite_number, read_checked_record, to_jsonable

INDEX_NAME = "results.sqlite"
#: bump when the table changes; an index with another version is re-created from the records
INDEX_VERSION = 2
#: where runs live under the home (``hydra.run.dir`` and ``hydra.sweep.dir`` in conf/config.yaml)
RUN_ROOTS = ("runs", "multirun")

_T = TypeVar("_T")

# (column, SQL type): name columns come from record["names"], metric columns from record["metrics"]
_NAME_COLUMNS = (
    ("task", "TEXT"),
    ("dataset", "TEXT"),
    ("model", "TEXT"),
    ("model_source", "TEXT"),
    ("weights_hash", "TEXT"),
    ("attack", "TEXT"),
    ("defense", "TEXT"),
    ("norm", "TEXT"),
    ("epsilon", "REAL"),
    ("access", "TEXT"),
)
_METRIC_COLUMNS = (
    ("n_examples", "INTEGER"),
    ("clean_accuracy", "REAL"),
    ("robust_accuracy", "REAL"),
    ("success_rate", "REAL"),
    ("median_l2", "REAL"),
    ("median_linf", "REAL"),
    ("median_queries", "REAL"),
)
_RUN_COLUMNS = (
    ("run_id", "TEXT PRIMARY KEY"),
    ("status", "TEXT"),
    ("error", "TEXT"),
    ("created", "TEXT"),
    ("created_ts", "REAL"),  # seconds since the epoch, so runs with different UTC offsets sort right
    ("duration_s", "REAL"),
    ("config_hash", "TEXT"),
    ("seed", "INTEGER"),
)
_PATH_COLUMNS = (("record_path", "TEXT"), ("run_dir", "TEXT"), ("record_json", "TEXT NOT NULL"))
_COLUMNS = _RUN_COLUMNS + _NAME_COLUMNS + _METRIC_COLUMNS + _PATH_COLUMNS
#: what :meth:`ResultsStore.finished` returns: every column but the full JSON
SUMMARY_COLUMNS = tuple(name for name, _ in _COLUMNS if name != "record_json")


class ResultsStore:
    """The results index at ``<home>/results.sqlite`` (home: ``$ADVSUITE_HOME`` or ``~/.advsuite``).

    ``wal=False`` keeps SQLite's rollback journal, for homes on network filesystems (NFS) where WAL's
    shared memory does not work; locking then relies on the filesystem's locks.
    """

    def __init__(self, home: str | os.PathLike[str] | None = None, *, timeout: float = 60.0, wal: bool = True):
        self.home = Path(home).expanduser() if home is not None else advsuite_home()
        self.path = self.home / INDEX_NAME
        self.timeout = timeout
        self.wal = wal
        self._ready = False

    # -- connections -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.home.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so transactions stay short and explicit
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        conn.row_factory = sqlite3.Row
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the lock at BEGIN, so it never fails half-way on an upgrade."""
        self._ensure_schema()
        with closing(self._connect()) as conn:
            _retry(lambda: conn.execute("BEGIN IMMEDIATE"), self.timeout)
            try:
                yield conn
            except BaseException:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        self._ensure_schema()
        with closing(self._connect()) as conn:
            yield conn

    def _ensure_schema(self) -> None:
        if self._ready:
            return
        try:
            stale = self._create_schema()
        except sqlite3.DatabaseError as err:
            if not _is_corrupt(err):
                raise
            self._set_aside(err)
            self._create_schema()
            stale = True
        self._ready = True
        if stale:  # a corrupt index, or one written by another advsuite version: the records are the truth
            self.rebuild()

    def _set_aside(self, err: Exception) -> Path:
        """Move a corrupt index (and its WAL files) aside, so a fresh one can be rebuilt from the records."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        aside = self.path.with_name(f"{INDEX_NAME}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{self.path}{suffix}")
            if part.exists():
                os.replace(part, f"{aside}{suffix}")
        warnings.warn(
            f"the results index {self.path} is corrupt ({err}); moved it to {aside.name} and rebuilding it "
            "from the run records",
            RuntimeWarning,
            stacklevel=4,
        )
        self._ready = False
        return aside

    def _create_schema(self) -> bool:
        """Create the table if needed; True when an existing one had to be dropped (so needs a rebuild)."""
        stale = False
        with closing(self._connect()) as conn:
            if self.wal:
                # persistent in the file; switching needs a brief exclusive lock, hence the retry
                _retry(lambda: conn.execute("PRAGMA journal_mode=WAL"), self.timeout)
            _retry(lambda: conn.execute("BEGIN IMMEDIATE"), self.timeout)
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                has_table = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='runs'").fetchone()
                if has_table and version != INDEX_VERSION:
                    conn.execute("DROP TABLE runs")
                    stale = True
                _create(conn)
                conn.execute("COMMIT")
            except BaseException:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        return stale

    def _repairing(self, op: Callable[[], _T]) -> _T:
        """Run ``op``; if the index turns out corrupt, set it aside, rebuild it and run ``op`` once more."""
        try:
            return op()
        except sqlite3.DatabaseError as err:
            if not _is_corrupt(err):
                raise
            self._set_aside(err)
            self.rebuild()
            return op()

    # -- writing -----------------------------------------------------------------------------

    def index(self, record: Mapping[str, Any], path: str | os.PathLike[str] | None = None) -> None:
        """Insert or replace ``record`` (keyed by ``run_id``).

        ``path`` is where its ``record.json`` lies; by default ``<record["run_dir"]>/record.json``.
        """
        row = _row(record, path)

        def write() -> None:
            with self._write() as conn:
                _upsert(conn, [row])

        self._repairing(write)

    def rebuild(self, runs_root: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None) -> int:
        """Empty the index and re-index every ``record.json`` found (recursively) under ``runs_root``.

        ``runs_root`` defaults to ``<home>/runs`` and ``<home>/multirun``. A record that cannot be
        read or lacks a ``run_id`` is skipped with a warning. Returns the number of runs indexed.
        """
        if runs_root is None:
            roots = [self.home / name for name in RUN_ROOTS]
        elif isinstance(runs_root, (str, os.PathLike)):
            roots = [Path(runs_root)]
        else:
            roots = [Path(r) for r in runs_root]
        rows: dict[str, dict[str, Any]] = {}
        for file in _find_records(roots):
            try:
                row = _row(read_checked_record(file), file)
            except (OSError, ValueError, TypeError, KeyError) as err:
                warnings.warn(f"skipping run record {file}: {err}", RuntimeWarning, stacklevel=2)
                continue
            previous = rows.get(row["run_id"])
            if previous is None or (row["created_ts"] or 0.0) >= (previous["created_ts"] or 0.0):
                rows[row["run_id"]] = row

        # Parse everything first, then hold the write lock only for the swap.
        def swap() -> None:
            with self._write() as conn:
                conn.execute("DELETE FROM runs")
                _upsert(conn, list(rows.values()))

        try:
            swap()
        except sqlite3.DatabaseError as err:  # not _repairing: its repair is this very rebuild
            if not _is_corrupt(err):
                raise
            self._set_aside(err)
            swap()
        return len(rows)

    # -- reading -----------------------------------------------------------------------------

    def finished(self, config_hash: str) -> dict[str, Any] | None:
        """Summary (index columns, no full JSON) of the latest finished run with ``config_hash``.

        Only a run whose ``record.json`` is still on disk, whole, and says the same (run id, finished)
        counts: deleting a run directory, or a record that was cut short or edited into another run, makes
        the next sweep redo it (the latter with a warning).
        """
        columns = ", ".join(SUMMARY_COLUMNS)

        def select() -> list[sqlite3.Row]:
            with self._read() as conn:
                return conn.execute(
                    f"SELECT {columns} FROM runs WHERE config_hash = ? AND status = 'finished' "
                    "ORDER BY created_ts DESC, created DESC",
                    (config_hash,),
                ).fetchall()

        for row in self._repairing(select):
            if row["record_path"] and _on_disk(row["record_path"], row["run_id"], row["status"]) is not None:
                return dict(row)
        return None

    def records(
        self,
        dataset: str | None = None,
        norm: str | None = None,
        status: str | None = "finished",
        *,
        task: str | None = None,
    ) -> list[dict[str, Any]]:
        """Full records matching the filters (``None`` = any), oldest first.

        Each comes from its ``record.json`` (the truth); a run whose file is gone, unreadable, incomplete
        or no longer the indexed run is left out, with a warning for the last three.
        """
        where, args = [], []
        for column, value in (("dataset", dataset), ("norm", norm), ("status", status), ("task", task)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = "SELECT record_path, run_id, status FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_ts, created, run_id"

        def select() -> list[sqlite3.Row]:
            with self._read() as conn:
                return conn.execute(sql, args).fetchall()

        found = (_on_disk(row["record_path"], row["run_id"], row["status"]) for row in self._repairing(select))
        return [record for record in found if record is not None]

    def __len__(self) -> int:
        def count() -> int:
            with self._read() as conn:
                return int(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

        return self._repairing(count)

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.home)!r})"


def _is_corrupt(err: sqlite3.DatabaseError) -> bool:
    """A damaged file (not a busy lock or a full disk, which are OperationalErrors of their own)."""
    message = str(err).lower()
    return type(err) is sqlite3.DatabaseError or "malformed" in message or "not a database" in message


def _on_disk(record_path: str | None, run_id: str, status: str | None) -> dict[str, Any] | None:
    """The run's record file if it is whole and still the indexed run; else None (warning unless deleted)."""
    if not record_path or not Path(record_path).is_file():
        return None
    try:
        record = read_checked_record(record_path)
    except ValueError as err:
        warnings.warn(f"{err}; leaving the run out (re-run it, or delete its folder)", RuntimeWarning, stacklevel=3)
        return None
    if record["run_id"] != run_id or record["status"] != status:
        warnings.warn(
            f"run record {record_path} no longer matches the index (run {record['run_id']}, {record['status']}); "
            "leaving it out: rebuild the index with task=leaderboard task.rebuild=true",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return record


def _create(conn: sqlite3.Connection) -> None:
    columns = ", ".join(f"{name} {kind}" for name, kind in _COLUMNS)
    conn.execute(f"CREATE TABLE IF NOT EXISTS runs ({columns})")
    conn.execute("CREATE INDEX IF NOT EXISTS runs_by_hash ON runs (config_hash, status)")
    conn.execute("CREATE INDEX IF NOT EXISTS runs_by_board ON runs (dataset, norm, status)")
    conn.execute(f"PRAGMA user_version = {INDEX_VERSION}")


def _upsert(conn: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
    names = [name for name, _ in _COLUMNS]
    sql = f"INSERT OR REPLACE INTO runs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    conn.executemany(sql, [[row[name] for name in names] for row in rows])


def _find_records(roots: list[Path]) -> Iterator[Path]:
    for root in roots:
        if root.is_dir():
            yield from sorted(root.rglob(RECORD_NAME))


def _row(record: Mapping[str, Any], path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The index row of ``record``: missing or odd optional values become NULL rather than errors."""
    run_id = record.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise ValueError("the record has no run_id")
    names = record.get("names") or {}
    metrics = record.get("metrics") or {}
    if path is None:
        if not record.get("run_dir"):
            raise ValueError(f"record {run_id} has no run_dir; pass path= to index it")
        path = Path(record["run_dir"]) / RECORD_NAME
    record_path = Path(path).resolve()
    created = record.get("created")
    row: dict[str, Any] = {
        "run_id": run_id,
        "status": _text(record.get("status")),
        "error": _text(record.get("error")),
        "created": _text(created),
        "created_ts": _timestamp(created),
        "duration_s": finite_number(record.get("duration_s")),
        "config_hash": _text(record.get("config_hash")),
        "seed": _integer(record.get("seed")),
        "record_path": str(record_path),
        "run_dir": str(record_path.parent),
        "record_json": json.dumps(to_jsonable(record), allow_nan=False, ensure_ascii=False),
    }
    for name, kind in _NAME_COLUMNS:
        row[name] = finite_number(names.get(name)) if kind == "REAL" else _text(names.get(name))
    for name, kind in _METRIC_COLUMNS:
        row[name] = _integer(metrics.get(name)) if kind == "INTEGER" else finite_number(metrics.get(name))
    return row


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _integer(value: Any) -> int | None:
    number = finite_number(value)
    return None if number is None else int(number)


def _timestamp(created: Any) -> float | None:
    if not isinstance(created, str):
        return None
    try:
        return datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _retry(op: Callable[[], _T], timeout: float) -> _T:
    """Run ``op``, retrying while the database is locked.

    SQLite's own busy timeout does not cover every case (e.g. switching to WAL while another
    connection holds the file), and parallel sweep jobs all start at the same moment.
    """
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            return op()
        except sqlite3.OperationalError as err:
            message = str(err).lower()
            if ("locked" not in message and "busy" not in message) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
