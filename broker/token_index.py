"""The token index: entries by token prefix, hit groups, and (PostgreSQL) the prefix filter
and the partitions, over a transaction of :mod:`token_store`.

How it stays incremental: a batch's tokens are looked up by their 64-bit prefix (see
:mod:`models`) in one query per chunk of 1,000 (PostgreSQL: one ``= ANY(array)`` for the
whole batch), the full tokens are compared in Python, and only those tokens' entries and
open groups go to :func:`matching.submit`. The two statements every batch runs (that
lookup and the insert of its new entries) go straight to the driver, the insert as a
binary ``COPY`` on PostgreSQL; everything else is SQLAlchemy Core.

On PostgreSQL the index is partitioned by row id (migration 0004), and a prefix filter
(:class:`~samenloop.broker.token_filter.IndexFilter`) held in memory says which
partitions may hold a prefix, so that most lookups read one partition or none. What a
transaction teaches the filter and the partitions' end reaches memory only once it
committed (:meth:`~samenloop.broker.database.Tx.after_commit`).
"""

from __future__ import annotations

import contextlib
import struct
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final

import numpy as np
import structlog
from sqlalchemy import BigInteger, ColumnElement, any_, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import InstrumentedAttribute

from samenloop.broker import matching
from samenloop.broker.database import BrokerDatabase, Tx
from samenloop.broker.matching import Change, Entry, EntryKey, Group, TokenState
from samenloop.broker.models import TokenEntry
from samenloop.broker.token_filter import IndexFilter, Prefixes, as_array

log = structlog.get_logger(__name__)

# Prefixes per SQLite "IN (...)" lookup.
_SQLITE_CHUNK: Final = 1000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_EXPIRY_BUCKET_DAYS: Final = 7
_ENTRY_COLUMNS: Final = (
    "token_prefix",
    "party_id",
    "ref_bucket",
    "ref_prefix",
    "token",
    "signal_ref",
    "key_epoch",
    "expires_at",
    "expiry_bucket",
    "sealed_attributes",
)
# PostgreSQL types of _ENTRY_COLUMNS, for binary COPY.
ENTRY_COPY_TYPES: Final = [
    "int8", "int4", "int2", "int8", "bytea", "bytea", "int8", "timestamptz", "int4", "bytea",
]  # fmt: skip

# Binary COPY of token_entries, built in one buffer: the signature and header
# extension, each row's fixed part (field count, then each field's length and value,
# up to the length of sealed_attributes), and the trailer.
_COPY_SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER: Final = b"\xff\xff"
# Rows per write of a COPY (about 30 kB).
_COPY_SLICE: Final = 200
_COPY_ROW: Final = struct.Struct(">hiqiiihiqi32si16siqiqiii")
_MICROSECOND: Final = timedelta(microseconds=1)
_PG_EPOCH_MICROS: Final = 946_684_800 * 1_000_000  # 2000-01-01, PostgreSQL's epoch
# Columns of the token lookups (load).
_LOOKUP_ENTRY_COLUMNS: Final = (
    "id, party_id, token, signal_ref, key_epoch, expires_at, sealed_attributes"
)
_LOOKUP_GROUP_COLUMNS: Final = "group_id, token, revision, first_seen, last_seen"
_PG_UPDATE_GROUP: Final = (
    "UPDATE hit_groups SET revision = %s, last_seen = %s, is_open = %s WHERE group_id = %s"
)
_PG_INSERT_GROUP: Final = (
    "INSERT INTO hit_groups"
    " (group_id, token_prefix, token, revision, first_seen, last_seen, is_open)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
_PG_HOLD: Final = "UPDATE party_usage SET held = held + %s WHERE party_id = %s"
_SQLITE_HOLD: Final = "UPDATE party_usage SET held = held + ? WHERE party_id = ?"
#: Row ids per partition of the token index on PostgreSQL (migration 0004 uses the same).
PARTITION_IDS: Final = 1_000_000
# The token index's partitions, in order: each one's name and the ids it takes (from, to).
_PG_PARTITIONS: Final = (
    "SELECT c.relname, (regexp_match(pg_get_expr(c.relpartbound, c.oid),"
    "                   'FROM \\(''(-?[0-9]+)''\\) TO \\(''(-?[0-9]+)''\\)'))::bigint[]"
    " FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid"
    " WHERE i.inhparent = 'token_entries'::regclass ORDER BY 2"
)
# The last id handed out, and where the token index's partitions end (constants only).
_PG_PARTITIONS_STATE: Final = (
    "SELECT (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END"  # noqa: S608
    "        FROM token_entries_id_seq),"
    f" coalesce((SELECT max(bounds[2]) FROM ({_PG_PARTITIONS}) AS p(name, bounds)), 0)"
)
# The prefix filter's view of the index (see filtered): rows other writers added since
# it last looked, each with the last id handed out and when the server started (one row
# without an entry if there are none: whether the index went back), and a full scan to
# build it.
_PG_NEWER_ENTRIES: Final = (
    "SELECT e.id, e.token_prefix, s.issued, pg_postmaster_start_time()"
    " FROM (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END AS issued"
    "       FROM token_entries_id_seq) AS s"
    " LEFT JOIN LATERAL (SELECT id, token_prefix FROM token_entries WHERE id > %s"
    "                    ORDER BY id LIMIT %s) AS e ON true"
)
_PG_SEQSCAN: Final = "SELECT set_config('enable_seqscan', %s, true)"
_PG_INDEX_EXTENT: Final = (
    "SELECT coalesce(max(id), 0), count(*), pg_postmaster_start_time() FROM token_entries"
)
# A partition's prefixes, each as 8 big-endian bytes, in one value.
_PG_PACKED_PREFIXES: Final = (
    "SELECT string_agg(int8send(token_prefix), ''::bytea) FROM token_entries_p{}"
)
# Rows the filter takes from the index one by one before it rather scans it again.
_FILTER_CATCH_UP_ROWS: Final = 100_000
_SQLITE_UPDATE_GROUP: Final = (
    "UPDATE hit_groups SET revision = ?, last_seen = ?, is_open = ? WHERE group_id = ?"
)
_SQLITE_INSERT_GROUP: Final = (
    "INSERT INTO hit_groups"
    " (group_id, token_prefix, token, revision, first_seen, last_seen, is_open)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def prefix64(value: bytes) -> int:
    """The indexed form of a token or signal ref: its first 8 bytes as a signed integer."""
    return int.from_bytes(value[:8], "big", signed=True)


def expiry_bucket(moment: datetime) -> int:
    """The expiry index key: whole weeks since 1970, so inserts land at few places."""
    return (moment - _EPOCH).days // _EXPIRY_BUCKET_DAYS


@dataclass
class Loaded:
    """The states of a batch's tokens, and what the store needs to write them back."""

    states: list[TokenState]
    row_ids: dict[EntryKey, int]
    group_ids: set[bytes]


class TokenIndex:
    """The token entries and hit groups of a matching transaction, and what this process
    knows of them in memory (PostgreSQL): the prefix filter and where the partitions end."""

    def __init__(self, database: BrokerDatabase) -> None:
        self._db = database
        # Driver-level SQL for the hot path.
        dialect = database.engine.dialect
        columns = ", ".join(_ENTRY_COLUMNS)
        marks = ", ".join(["?" if dialect.paramstyle == "qmark" else "%s"] * len(_ENTRY_COLUMNS))
        # Built from constants only, never from input.
        self.insert_sql: Final = f"INSERT INTO token_entries ({columns}) VALUES ({marks})"  # noqa: S608
        self.copy_sql: Final = f"COPY token_entries ({columns}) FROM STDIN (FORMAT BINARY)"
        self._lookups: dict[tuple[str, str, int, str], str] = {}
        # PostgreSQL: which prefixes the index may hold, built at the first submission.
        self._seen: IndexFilter | None = None
        self._seen_lock = threading.Lock()
        # PostgreSQL: the end of the token index's last partition, as last committed.
        self._partitions_end = 0
        # A rolled-back COPY may have taken ids: the next insert asks the database again
        # where the partitions end (see ensure_partitions).
        database.after_rollback(self._forget_partitions)

    def _forget_partitions(self) -> None:
        self._partitions_end = 0

    def _set_partitions_end(self, end: int) -> None:
        self._partitions_end = end

    # --- the prefix filter (PostgreSQL) ---------------------------------------------

    def prepare(self, tx: Tx) -> int:
        """Build the filter now, under the matching lock; answers the prefixes it holds."""
        with self._seen_lock:
            self._seen = self._scan(self._db.driver(tx))
            return self._seen.prefixes.added

    def early(self, entries: Sequence[Entry]) -> tuple[int | None, dict[int, list[int]] | None]:
        """Before the matching lock: the newest id the filter covers, and the partitions
        that may hold ``entries``' prefixes as far as it knows (None if it cannot tell:
        no filter, one due for a rebuild, or a malformed token, which parsing names)."""
        early: dict[int, list[int]] | None = None
        with self._seen_lock:
            seen = self._seen
            last_id = None if seen is None else seen.last_id
            if seen is not None and not seen.wants_rebuild:
                with contextlib.suppress(ValueError):  # a malformed token: parsing says which
                    early = seen.candidates(np.unique(token_prefixes([e.token for e in entries])))
        return last_id, early

    def send_newer(self, driver: Any, last_id: int | None) -> Any:
        """In a pipeline: the entries other writers added after ``last_id`` (up to one more
        than the filter takes one by one); None without a filter."""
        return (
            None
            if last_id is None
            else driver.execute(_PG_NEWER_ENTRIES, (last_id, _FILTER_CATCH_UP_ROWS + 1))
        )

    @property
    def newest_id(self) -> int | None:
        """The newest entry's id the filter covers (under the matching lock: the newest)."""
        return None if self._seen is None else self._seen.last_id

    def filtered(
        self,
        driver: Any,
        newer: list[Any] | None,
        tokens: Collection[bytes],
        early: Mapping[int, Sequence[int]] | None,
    ) -> dict[int, list[int]]:
        """Under the matching lock: the prefixes of ``tokens`` the index may hold and that
        are still to be looked up, by the partition (its first row id) that may hold
        them. ``early`` were looked up already, for the filter as it was before the lock.

        The filter holds the prefix and partition of every entry up to its ``last_id``:
        those it was built from (a scan), those this store inserted, and those of
        ``newer``, the entries other writers (another thread or broker process)
        inserted since, which it takes in now. Every insert runs under the matching
        lock, so ids are committed in order and nothing below ``last_id`` can appear
        later: after ``early``, only ``newer`` may hold more. A filter that would take
        too many rows one by one, or that has grown too full, is built anew. An open
        group always has entries on its token, so its prefix is covered too.

        Unless the index went back (:meth:`went_back`: a restore, or a failover to a
        standby that had not received the newest rows): then ids below ``last_id`` are
        handed out again, which the filter would never take in, and it is built anew.
        """
        back = self.went_back(newer)
        if newer is not None:
            newer = [row for row in newer if row[0] is not None]
        if early is not None and not newer and not back:  # the common case: nothing more
            return {}
        wanted = np.unique(token_prefixes(tokens))
        with self._seen_lock:
            seen = self._seen
            if seen is None or newer is None or back or len(newer) > _FILTER_CATCH_UP_ROWS:
                seen = self._seen = self._scan(driver)
                latest = seen.candidates(wanted)
            else:
                ids, held = as_array(r[0] for r in newer), as_array(r[1] for r in newer)
                latest = seen.catch_up(ids, held, wanted)
                if seen.wants_rebuild:
                    seen = self._seen = self._scan(driver)
                    latest = seen.candidates(wanted)
                elif early is None:  # nothing looked up yet
                    latest = seen.candidates(wanted)
        missing: dict[int, list[int]] = {}
        for start, found in latest.items():
            done = set((early or {}).get(start, ()))
            rest = sorted({p for p in found if p not in done})
            if rest:
                missing[start] = rest
        return missing

    def went_back(self, newer: Sequence[Any] | None) -> bool:
        """Whether the index went back since the filter was built, by ``newer``'s first row:
        the last id the sequence handed out is below the filter's ``last_id`` (restored from
        a backup, or the rows of a lost primary's last commits gone with it), or the server
        is another one, or started again (a failover, or a restore that needs a restart).
        A server that restarted with nothing lost costs a rebuild too: safe and rare.
        Logged as a warning; the partitions' end is asked again as well."""
        seen = self._seen
        if seen is None or not newer:
            return False
        issued, started = newer[0][2], newer[0][3]
        if int(issued) >= seen.last_id and started == seen.server_started:
            return False
        log.warning(
            "the token index went back or its server changed (a restore or a failover):"
            " rebuilding the prefix filter",
            filter_covers_id=seen.last_id,
            sequence_issued_id=int(issued),
            server_restarted=started != seen.server_started,
        )
        self._forget_partitions()
        return True

    def _scan(self, driver: Any) -> IndexFilter:
        """A filter of the whole index, read partition by partition: each one's prefixes
        in one value, packed by the server (a row per prefix would cost a second of
        this process's time per million).

        Lookups name a candidate's partition by arithmetic (see
        ``_send_partition_lookups``): a partition laid out otherwise is an error here,
        not a hit missed later.
        """
        # Matching turned sequential scans off for its lookups; these read everything.
        driver.execute(_PG_SEQSCAN, ("on",))
        last_id, rows, started = driver.execute(_PG_INDEX_EXTENT).fetchone()
        # Sized by rows, not ids: expired ones leave gaps.
        built = IndexFilter(int(rows), PARTITION_IDS, int(last_id))
        built.server_started = started
        for name, (start, end) in driver.execute(_PG_PARTITIONS).fetchall():
            if (name, end) != (f"token_entries_p{start}", start + PARTITION_IDS) or (
                start % PARTITION_IDS
            ):
                raise ValueError(
                    f"partition {name} of the token index takes ids from {start} to {end},"
                    f" not a range of {PARTITION_IDS} from a multiple of it"
                )
            if not rows or start > last_id:  # nothing there (yet)
                continue
            # Built from the catalog's integers only, never from input.
            with driver.cursor(binary=True) as cursor:
                packed = cursor.execute(_PG_PACKED_PREFIXES.format(start)).fetchone()[0]
            if packed is None:  # an empty partition
                continue
            if len(packed) % 8:
                raise ValueError(f"unexpected prefixes of partition {name}")
            prefixes = np.frombuffer(packed, dtype=">i8").astype(np.int64)
            built.prefixes.add(prefixes)
            built.partitions.add(start, prefixes)
        driver.execute(_PG_SEQSCAN, ("off",))
        return built

    def covered(self, prefixes: Prefixes, first: int, newest: int) -> None:
        """PostgreSQL, once a submission that inserted entries with ``prefixes`` and ids
        from ``first`` to ``newest`` committed: the filter now covers them, and every
        entry up to ``newest`` (unless another thread caught up on them already)."""
        with self._seen_lock:
            if self._seen is not None:
                self._seen.add_inserted(prefixes, first, newest)

    # --- the token index -------------------------------------------------------------

    def _chunks(self, values: Sequence[int]) -> Iterator[Sequence[int]]:
        if self._db.postgres:
            yield values
            return
        for start in range(0, len(values), _SQLITE_CHUNK):
            yield values[start : start + _SQLITE_CHUNK]

    def _among(
        self, column: InstrumentedAttribute[int], values: Sequence[int]
    ) -> ColumnElement[bool]:
        if self._db.postgres:
            array = bindparam(None, list(values), type_=postgresql.ARRAY(BigInteger))
            return column == any_(array)
        return column.in_(values)

    def _lookup(self, table: str, columns: str, size: int, where: str = "") -> str:
        """A driver-level query for rows whose ``token_prefix`` is among ``size`` values."""
        key = (table, columns, size if not self._db.postgres else 0, where)
        sql = self._lookups.get(key)
        if sql is None:
            among = (
                "= ANY(%s::text::bigint[])"
                if self._db.postgres
                else f"IN ({', '.join('?' * size)})"
            )
            # Built from the constants of load only, never from input.
            sql = f"SELECT {columns} FROM {table} WHERE token_prefix {among}{where}"  # noqa: S608
            self._lookups[key] = sql
        return sql

    def load(self, tx: Tx, tokens: Sequence[bytes]) -> Loaded:
        """The states of the given tokens: their entries and open groups.

        The hot path of every batch: one query per chunk and table, straight to the
        driver, with the column types' own converters for the timestamps.
        """
        wanted = set(tokens)
        # prefix64, inlined: this runs per token.
        prefixes = list({int.from_bytes(token[:8], "big", signed=True) for token in wanted})
        driver = self._db.driver(tx)
        if self._db.postgres:
            with driver.pipeline():  # both lookups in one round trip
                found = self._send_lookups(driver, _array(prefixes))
            return self.loaded(tx, wanted, found[0].fetchall(), found[1].fetchall())
        entry_rows: list[Any] = []
        for chunk in self._chunks(prefixes):
            entry_rows += driver.execute(
                self._lookup("token_entries", _LOOKUP_ENTRY_COLUMNS, len(chunk)), chunk
            ).fetchall()
        # An open group has entries on its token (entries go only through matching,
        # which closes a group whose parties fall below the minimum), so SQLite, where
        # each lookup costs this process's CPU, looks groups up only where entries are.
        held = list({int.from_bytes(row[2][:8], "big", signed=True) for row in entry_rows})
        group_rows: list[Any] = []
        for chunk in self._chunks(held):
            group_rows += driver.execute(
                self._lookup("hit_groups", _LOOKUP_GROUP_COLUMNS, len(chunk), " AND is_open = 1"),
                chunk,
            ).fetchall()
        return self.loaded(tx, wanted, entry_rows, group_rows)

    def _send_lookups(self, driver: Any, prefixes: str) -> tuple[Any, Any]:
        """PostgreSQL, in a pipeline: ``load``'s two lookups, by ``prefixes``, an array
        literal (one text parameter, not an array dumped element by element).

        Answers the cursors, to be read once the pipeline is done.
        """
        params = (prefixes,)
        return (
            driver.execute(self._lookup("token_entries", _LOOKUP_ENTRY_COLUMNS, 0), params),
            driver.execute(
                self._lookup("hit_groups", _LOOKUP_GROUP_COLUMNS, 0, " AND is_open"), params
            ),
        )

    def send_partition_lookups(
        self, driver: Any, by_partition: Mapping[int, Sequence[int]]
    ) -> tuple[Any, Any]:
        """PostgreSQL, in a pipeline: ``load``'s two lookups, the entries' only in the
        partitions that may hold them (each named by its first row id, as migration
        0004 and ``ensure_partitions`` name them); see ``_send_lookups``."""
        # Built from the constants of load and integers only, never from input.
        entries = " UNION ALL ".join(
            f"SELECT {_LOOKUP_ENTRY_COLUMNS} FROM token_entries_p{int(start)}"  # noqa: S608
            " WHERE token_prefix = ANY(%s::text::bigint[])"
            for start in by_partition
        )
        everything = sorted({p for prefixes in by_partition.values() for p in prefixes})
        return (
            driver.execute(entries, [_array(prefixes) for prefixes in by_partition.values()]),
            driver.execute(
                self._lookup("hit_groups", _LOOKUP_GROUP_COLUMNS, 0, " AND is_open"),
                (_array(everything),),
            ),
        )

    def loaded(
        self, tx: Tx, wanted: set[bytes], entry_rows: Sequence[Any], group_rows: Sequence[Any]
    ) -> Loaded:
        """The states of the ``wanted`` tokens from the lookups' rows, without the rows of
        other tokens that share a prefix."""
        names = self._db.names(tx, {row[1] for row in entry_rows})
        read_time = self._db.read_time
        entries: dict[bytes, list[Entry]] = {}
        row_ids: dict[EntryKey, int] = {}
        for row_id, party_id, token, ref, key_epoch, expires_at, sealed in entry_rows:
            token = bytes(token)
            if token not in wanted:  # a prefix collision
                continue
            entry = Entry(
                names[party_id],
                token,
                bytes(ref),
                key_epoch,
                read_time(expires_at),
                None if sealed is None else bytes(sealed),
            )
            entries.setdefault(token, []).append(entry)
            row_ids[entry.key] = row_id
        groups: dict[bytes, Group] = {}
        for group_id, token, revision, first_seen, last_seen in group_rows:
            if bytes(token) in wanted:
                groups[bytes(token)] = Group(
                    bytes(group_id),
                    bytes(token),
                    revision,
                    read_time(first_seen),
                    read_time(last_seen),
                    True,
                )
        states = [
            TokenState(token, tuple(entries.get(token, ())), groups.get(token))
            for token in sorted(entries.keys() | groups.keys())
        ]
        return Loaded(states, row_ids, {g.group_id for g in groups.values()})

    def tokens_of_refs(self, tx: Tx, party_id: int, refs: Sequence[bytes]) -> list[bytes]:
        """The tokens on which a party holds entries for the given refs.

        First the ids, from the ref index alone (each ref's run of its party's
        bucket); then those rows. Withdrawals are rare: they pay for cheap inserts.
        """
        wanted = set(refs)
        prefixes = sorted({prefix64(ref) for ref in wanted})
        ids: list[int] = []
        for chunk in self._chunks(prefixes):
            buckets = sorted({(prefix >> 56) & 0xFF for prefix in chunk})
            ids += tx.conn.execute(
                select(TokenEntry.id).where(
                    TokenEntry.party_id == party_id,
                    self._among(TokenEntry.ref_bucket, buckets),
                    self._among(TokenEntry.ref_prefix, chunk),
                )
            ).scalars()
        tokens: set[bytes] = set()
        for chunk in self._chunks(ids):
            rows = tx.conn.execute(
                select(TokenEntry.token, TokenEntry.signal_ref).where(
                    self._among(TokenEntry.id, chunk)
                )
            )
            tokens.update(token for token, ref in rows if ref in wanted)
        return sorted(tokens)

    def tokens_by_ref(
        self, tx: Tx, party_id: int, refs: Sequence[bytes], key_epoch: int
    ) -> dict[bytes, set[bytes]]:
        """The tokens the party holds entries on under ``key_epoch`` for each of ``refs``
        that has any (by the ref index, as ``tokens_of_refs``)."""
        wanted = set(refs)
        prefixes = sorted({prefix64(ref) for ref in wanted})
        found: dict[bytes, set[bytes]] = {}
        for chunk in self._chunks(prefixes):
            buckets = sorted({(prefix >> 56) & 0xFF for prefix in chunk})
            rows = tx.conn.execute(
                select(TokenEntry.signal_ref, TokenEntry.token).where(
                    TokenEntry.party_id == party_id,
                    self._among(TokenEntry.ref_bucket, buckets),
                    self._among(TokenEntry.ref_prefix, chunk),
                    TokenEntry.key_epoch == key_epoch,
                )
            )
            for ref, token in rows:
                if bytes(ref) in wanted:
                    found.setdefault(bytes(ref), set()).add(bytes(token))
        return found

    def live_by_ref(
        self, tx: Tx, party_id: int, refs: Sequence[bytes], key_epoch: int, now: datetime
    ) -> dict[bytes, tuple[set[bytes], datetime]]:
        """For each of ``refs`` the party holds live entries of (``expires_at`` after
        ``now``) under ``key_epoch``: their tokens and the latest expiry among them (by the
        ref index, as ``tokens_of_refs``)."""
        wanted = set(refs)
        prefixes = sorted({prefix64(ref) for ref in wanted})
        found: dict[bytes, tuple[set[bytes], datetime]] = {}
        for chunk in self._chunks(prefixes):
            buckets = sorted({(prefix >> 56) & 0xFF for prefix in chunk})
            rows = tx.conn.execute(
                select(TokenEntry.signal_ref, TokenEntry.token, TokenEntry.expires_at).where(
                    TokenEntry.party_id == party_id,
                    self._among(TokenEntry.ref_bucket, buckets),
                    self._among(TokenEntry.ref_prefix, chunk),
                    TokenEntry.key_epoch == key_epoch,
                    TokenEntry.expires_at > now,
                )
            )
            for ref, token, expires_at in rows:
                if bytes(ref) not in wanted:
                    continue
                tokens, latest = found.get(bytes(ref), (set(), expires_at))
                tokens.add(bytes(token))
                found[bytes(ref)] = (tokens, max(latest, expires_at))
        return found

    def apply(
        self,
        tx: Tx,
        change: Change,
        loaded: Loaded,
        meanwhile: Callable[[], object] | None = None,
        held: Mapping[str, int] | None = None,
        newest_id: int | None = None,
        uncounted: frozenset[int] = frozenset(),
    ) -> None:
        """Write a change: entries deleted, updated and inserted; groups updated and inserted;
        the parties' counts of entries held moved with them (``held``: the moves, when the
        caller counted them itself — a submission counts its own party's apart).

        ``meanwhile`` (work that needs no database) runs once, while the server takes in
        the inserted entries if there are any. ``newest_id``: see ``ensure_partitions``.
        """
        conn = tx.conn
        moves = matching.held_deltas(change, uncounted=uncounted) if held is None else held
        if moves:
            ids = self._db.ids(tx, moves)
            counts = [(delta, ids[party]) for party, delta in sorted(moves.items())]
            if self._db.postgres:
                with self._db.driver(tx).cursor() as cursor:
                    cursor.executemany(_PG_HOLD, counts)
            else:
                self._db.driver(tx).executemany(_SQLITE_HOLD, counts)
        doomed = [loaded.row_ids[entry.key] for entry in change.deleted]
        for start in range(0, len(doomed), _SQLITE_CHUNK):
            conn.execute(
                delete(TokenEntry).where(TokenEntry.id.in_(doomed[start : start + _SQLITE_CHUNK]))
            )
        parties = self._db.ids(tx, {e.party for e in change.inserted + change.updated})
        if change.updated:
            conn.execute(
                update(TokenEntry)
                .where(TokenEntry.id == bindparam("row_id"))
                .values(
                    key_epoch=bindparam("new_key_epoch"),
                    expires_at=bindparam("new_expires_at"),
                    expiry_bucket=bindparam("new_expiry_bucket"),
                    sealed_attributes=bindparam("new_sealed_attributes"),
                ),
                [
                    {
                        "row_id": loaded.row_ids[entry.key],
                        "new_key_epoch": entry.key_epoch,
                        "new_expires_at": entry.expires_at,
                        "new_expiry_bucket": expiry_bucket(entry.expires_at),
                        "new_sealed_attributes": entry.sealed_attributes,
                    }
                    for entry in change.updated
                ],
            )
        if change.inserted:
            self.insert_entries(tx, change.inserted, parties, meanwhile, newest_id)
        elif meanwhile is not None:
            meanwhile()
        changed = [g for g in change.groups if g.group_id in loaded.group_ids]
        formed = [g for g in change.groups if g.group_id not in loaded.group_ids]
        if not (changed or formed):
            return
        stamp = self._db.stamp
        updates = [(g.revision, stamp(g.last_seen), g.open, g.group_id) for g in changed]
        inserts = [
            (
                g.group_id,
                prefix64(g.token),
                g.token,
                g.revision,
                stamp(g.first_seen),
                stamp(g.last_seen),
                g.open,
            )
            for g in formed
        ]
        if not self._db.postgres:
            if updates:
                self._db.driver(tx).executemany(_SQLITE_UPDATE_GROUP, updates)
            if inserts:
                self._db.driver(tx).executemany(_SQLITE_INSERT_GROUP, inserts)
            return
        driver = self._db.driver(tx)
        with driver.pipeline(), driver.cursor() as cursor:  # one round trip for both
            if updates:
                cursor.executemany(_PG_UPDATE_GROUP, updates)
            if inserts:
                cursor.executemany(_PG_INSERT_GROUP, inserts)

    def insert_entries(
        self,
        tx: Tx,
        entries: Sequence[Entry],
        parties: dict[str, int],
        meanwhile: Callable[[], object] | None = None,
        newest_id: int | None = None,
    ) -> None:
        """The hot path of every batch: straight to the driver (PostgreSQL: binary COPY).

        ``meanwhile`` runs after the rows went out, before the end of the COPY is awaited.
        PostgreSQL: the rows are packed and sent in slices, so that the server inserts
        the first while the next are packed.
        """
        if not self._db.postgres:
            # prefix64, sqlite_stamp and expiry_bucket, inlined: this runs per row.
            stamp = self._db.stamp
            epoch = _EPOCH
            rows: list[tuple[Any, ...]] = []
            append = rows.append
            for entry in entries:
                token = entry.token
                ref = entry.signal_ref
                expires_at = entry.expires_at
                append(
                    (
                        int.from_bytes(token[:8], "big", signed=True),
                        parties[entry.party],
                        ref[0],
                        int.from_bytes(ref[:8], "big", signed=True),
                        token,
                        ref,
                        entry.key_epoch,
                        stamp(expires_at),
                        (expires_at - epoch).days // _EXPIRY_BUCKET_DAYS,
                        entry.sealed_attributes,
                    )
                )
            self._db.driver(tx).executemany(self.insert_sql, rows)
            if meanwhile is not None:
                meanwhile()
            return
        self.ensure_partitions(tx, len(entries), newest_id)
        with self._db.driver(tx).cursor() as cursor, cursor.copy(self.copy_sql) as copy:
            copy.write(_COPY_SIGNATURE)
            for start in range(0, len(entries), _COPY_SLICE):
                copy.write(b"".join(_copy_rows(entries[start : start + _COPY_SLICE], parties)))
            copy.write(_COPY_TRAILER)
            if meanwhile is not None:
                meanwhile()

    def ensure_partitions(self, tx: Tx, rows: int, newest_id: int | None = None) -> None:
        """PostgreSQL: make sure partitions of the token index take the next ``rows`` ids
        and half a partition more (migration 0004), creating them under the matching lock.

        Submissions know the newest id from the prefix filter, so that in the common case
        this costs no statement; near the end, or for other callers, the id sequence and
        the catalog say where things stand. ``newest_id``: the newest entry's id, if the
        caller knows it (a submission: from the filter, under the matching lock).
        """
        margin = rows + PARTITION_IDS // 2
        if newest_id is not None and newest_id + margin < self._partitions_end:
            return
        driver = self._db.driver(tx)
        issued, end = driver.execute(_PG_PARTITIONS_STATE).fetchone()
        if int(end) % PARTITION_IDS:
            # The prefix filter finds a row's partition by arithmetic (see filtered).
            raise ValueError(
                f"the token index's partitions end at {end}, not at a multiple of {PARTITION_IDS}"
            )
        while int(issued) + margin >= int(end):
            start = int(end)
            # Built from integers only, never from input.
            driver.execute(
                f"CREATE TABLE IF NOT EXISTS token_entries_p{start} PARTITION OF token_entries"
                f" FOR VALUES FROM ({start}) TO ({start + PARTITION_IDS})"
            )
            end = start + PARTITION_IDS
        tx.after_commit(partial(self._set_partitions_end, int(end)))


def token_prefixes(tokens: Collection[bytes]) -> Prefixes:
    """``prefix64`` of each token, as an array: one buffer read by numpy rather than an
    integer built per token. A token shorter than a prefix is a ``ValueError``."""
    heads = b"".join(token[:8] for token in tokens)
    if len(heads) != 8 * len(tokens):
        raise ValueError("a token is shorter than its prefix")
    return np.frombuffer(heads, dtype=">i8").astype(np.int64)


def _array(values: Iterable[int]) -> str:
    """Integers as a PostgreSQL array literal: one text parameter, rather than an array
    the driver dumps element by element."""
    return f"{{{','.join(map(str, values))}}}"


def _copy_rows(entries: Sequence[Entry], parties: Mapping[str, int]) -> list[bytes]:
    """Each of ``entries`` as a row of a binary ``COPY`` (without the stream's signature and
    trailer), in the column order and types of ``_ENTRY_COLUMNS`` and ``ENTRY_COPY_TYPES``."""
    pack = _COPY_ROW.pack
    epoch = _EPOCH
    rows: list[bytes] = []
    append = rows.append
    for entry in entries:
        token = entry.token
        ref = entry.signal_ref
        if len(token) != matching.TOKEN_BYTES or len(ref) != matching.REF_BYTES:
            raise ValueError("token entries hold 32-byte tokens and 16-byte refs")
        since = entry.expires_at - epoch  # aware datetimes only
        micros = since // _MICROSECOND
        sealed = entry.sealed_attributes
        row = pack(
            10,
            8, int.from_bytes(token[:8], "big", signed=True),
            4, parties[entry.party],
            2, ref[0],
            8, int.from_bytes(ref[:8], "big", signed=True),
            32, token,
            16, ref,
            8, entry.key_epoch,
            8, micros - _PG_EPOCH_MICROS,
            4, since.days // _EXPIRY_BUCKET_DAYS,
            -1 if sealed is None else len(sealed),
        )  # fmt: skip
        append(row if sealed is None else row + sealed)
    return rows
