"""Run records (``record.json``, the source of truth) and the SQLite index built from them."""

from advsuite.results.record import (
    IGNORED_CONFIG_KEYS,
    RECORD_NAME,
    SCHEMA_VERSION,
    atomic_write_text,
    config_hash,
    git_commit,
    package_versions,
    read_record,
    to_jsonable,
    write_record,
)
from advsuite.results.store import ResultsStore

__all__ = [
    "IGNORED_CONFIG_KEYS",
    "RECORD_NAME",
    "SCHEMA_VERSION",
    "ResultsStore",
    "atomic_write_text",
    "config_hash",
    "git_commit",
    "package_versions",
    "read_record",
    "to_jsonable",
    "write_record",
]
