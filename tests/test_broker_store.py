"""The broker's store on real databases: SQLite (a temporary file) and PostgreSQL."""

from __future__ import annotations

import hashlib
import importlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from functools import partial

import pytest
import sqlalchemy as sa
import structlog
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hypothesis import given
from hypothesis import strategies as st

from samenloop.broker import mailbox, matching, token_filter, token_index
from samenloop.broker.covenant_store import TimestampRecord
from samenloop.broker.database import MIGRATIONS, BrokerDatabase
from samenloop.broker.mailbox import ItemKind, SetAside
from samenloop.broker.matching import Entry, NoticeDraft
from samenloop.broker.models import Base, TokenEntry
from samenloop.broker.store import BrokerStore
from samenloop.policies import database
from samenloop.policies.audit import AuditKind
from samenloop.policies.errors import (
    ConfigurationError,
    InvalidInput,
    MessageTooLarge,
    NotAllowed,
    QuotaExceeded,
    Replay,
)
from samenloop.policies.policy import MIN_TOKEN_QUOTA
from samenloop.v1 import broker_pb2, common_pb2

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=365)


def token(n: int) -> bytes:
    return hashlib.sha256(b"token %d" % n).digest()


def ref(party: str, n: int = 1) -> bytes:
    return hashlib.sha256(f"ref {party} {n}".encode()).digest()[:16]


def batch_id(n: int) -> bytes:
    return n.to_bytes(16, "big")


def entry(party: str, n: int, r: int = 1, expires: datetime = LATER, box: bytes | None = None):
    return Entry(party, token(n), ref(party, r), 1, expires, box)


def sign(draft: NoticeDraft) -> bytes:
    """Stands in for the broker's signed HitNotice: enough to check what was delivered."""
    return f"{draft.recipient}|{draft.kind.name}|{draft.revision}|{draft.group_id.hex()}".encode()


class Ids:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> bytes:
        self.n += 1
        return self.n.to_bytes(16, "big")


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = database.make_engine(database_url)
    database.upgrade(engine, MIGRATIONS)
    yield engine
    with engine.begin() as conn:  # the PostgreSQL database lives for the module
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


@pytest.fixture
def broker(engine: sa.Engine) -> BrokerStore:
    return BrokerStore(engine)


def submit(broker: BrokerStore, party: str, n: int, entries, *, ids=None, sign_notice=sign, at=NOW):
    return broker.tokens.submit(
        party,
        batch_id(n),
        1,
        entries,
        min_parties=2,
        now=at,
        new_group_id=ids or Ids(),
        sign_notice=sign_notice,
    )


def inbox(broker: BrokerStore, party: str) -> list[str]:
    return [item.payload.decode() for item in broker.mailboxes.fetch(party, 0, now=NOW).items]


def table_counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in Base.metadata.sorted_tables
        }


# --- migrations ---------------------------------------------------------------------


def test_migrations_go_up_down_and_up_again(database_url):
    engine = database.make_engine(database_url)
    try:
        database.upgrade(engine, MIGRATIONS)
        assert database.current(engine) == database.heads(MIGRATIONS) == ("0010",)
        database.check_at_head(engine, MIGRATIONS)

        database.downgrade(engine, MIGRATIONS)
        assert database.current(engine) == ()
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
        with pytest.raises(ConfigurationError, match="run `samenloop broker migrate`"):
            database.check_at_head(engine, MIGRATIONS)

        database.upgrade(engine, MIGRATIONS)
        database.check_at_head(engine, MIGRATIONS)
        assert set(sa.inspect(engine).get_table_names()) >= set(Base.metadata.tables)
    finally:
        engine.dispose()


def test_a_schema_newer_than_the_software_is_refused(engine):
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'ffff'"))
    with pytest.raises(ConfigurationError, match="newer than this software"):
        database.check_at_head(engine, MIGRATIONS)
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE alembic_version SET version_num = :head"),
            {"head": database.heads(MIGRATIONS)[0]},
        )


def _not_a_partition(obj, name, type_, reflected, compare_to):
    """The token index's partitions (PostgreSQL) are the store's, not the models'."""
    table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", "")
    return not (reflected and str(table).startswith("token_entries_p"))


def test_the_migrations_create_exactly_the_models(engine):
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": _not_a_partition})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def test_the_token_lookups_use_the_prefix_indexes(engine):
    explain = "EXPLAIN QUERY PLAN" if engine.dialect.name == "sqlite" else "EXPLAIN"
    is_open = "is_open = 1" if engine.dialect.name == "sqlite" else "is_open"
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":  # tiny tables: make the planner show its index
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        plans = {
            index: str(conn.exec_driver_sql(f"{explain} {query}").all())
            for index, query in [
                ("ix_token_entries_token_prefix",
                 "SELECT id, token FROM token_entries WHERE token_prefix IN (1, 2)"),
                ("ix_token_entries_party_ref",
                 "SELECT id FROM token_entries"
                 " WHERE party_id = 1 AND ref_bucket IN (1, 2) AND ref_prefix IN (1, 2)"),
                ("uq_hit_groups_open_token",
                 f"SELECT group_id FROM hit_groups WHERE token_prefix IN (1, 2) AND {is_open}"),
                ("ix_token_entries_expiry_bucket",
                 "SELECT token FROM token_entries WHERE expiry_bucket <= 3000"),
            ]
        }  # fmt: skip
    if engine.dialect.name == "sqlite":  # refs are found from the index alone
        assert "COVERING INDEX ix_token_entries_party_ref" in plans["ix_token_entries_party_ref"]
    # PostgreSQL: each partition of token_entries has its own copy of the index.
    on_partitions = {
        "ix_token_entries_token_prefix": "token_prefix_idx",
        "ix_token_entries_party_ref": "party_id_ref_bucket_id_ref_prefix_idx",
        "ix_token_entries_expiry_bucket": "expiry_bucket_idx",
    }
    for index, plan in plans.items():
        used = on_partitions.get(index, index) if engine.dialect.name == "postgresql" else index
        assert used in plan, plan


def test_the_engine_settings(database_url):
    engine = database.make_engine(database_url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                pragmas = {
                    name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                    for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
                }
                assert pragmas == {
                    "journal_mode": "wal",
                    "synchronous": 2,  # FULL
                    "foreign_keys": 1,
                    "busy_timeout": database.SQLITE_BUSY_TIMEOUT_MS,
                }
            else:
                assert conn.exec_driver_sql("SHOW timezone").scalar() == "UTC"
    finally:
        engine.dispose()


def test_sqlite_checkpoints_in_the_background(sqlite_url, tmp_path):
    """Commits only append to the WAL; the background thread copies it into the file."""
    engine = database.make_engine(sqlite_url)
    database.upgrade(engine, MIGRATIONS)
    marker = b"copied-by-the-checkpointer" * 50
    BrokerStore(engine).mailboxes.enqueue("a", marker, ItemKind.ENVELOPE, NOW)
    main_file = tmp_path / "test.db"
    deadline = time.monotonic() + 5
    while marker not in main_file.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker in main_file.read_bytes()
    threads = [t for t in threading.enumerate() if t.name.endswith(str(main_file))]
    assert len(threads) == 1
    engine.dispose()
    assert not threads[0].is_alive()


@pytest.mark.parametrize("url", ["mysql://x/y", "not a url", "sqlite+aiosqlite:///x.db"])
def test_unsupported_database_urls_are_configuration_errors(url):
    with pytest.raises(ConfigurationError) as raised:
        database.make_engine(url)
    assert raised.value.field == "database.url"


def test_timestamps_are_utc_and_naive_ones_refused(broker, engine):
    cet = NOW.astimezone(datetime.now().astimezone().tzinfo)
    broker.mailboxes.enqueue("a", b"x", ItemKind.ENVELOPE, cet)
    (item,) = broker.mailboxes.fetch("a", 0, now=NOW).items
    assert item.enqueued_at == NOW
    assert item.enqueued_at.tzinfo is UTC
    with pytest.raises(ValueError, match="time zone"):
        broker.mailboxes.enqueue("a", b"x", ItemKind.ENVELOPE, NOW.replace(tzinfo=None))


# --- submitting and matching ----------------------------------------------------------


def test_a_hit_is_delivered_to_both_parties_in_the_same_transaction(broker):
    ids = Ids()
    first = submit(broker, "gemeente", 1, [entry("gemeente", 1, box=b"box-g")], ids=ids)
    assert (first.stored, first.unchanged, first.replayed, first.notified) == (1, 0, False, ())
    second = submit(broker, "politie", 2, [entry("politie", 1), entry("politie", 2)], ids=ids)
    assert (second.stored, second.notified) == (2, ("gemeente", "politie"))
    group = (1).to_bytes(16, "big").hex()
    assert inbox(broker, "gemeente") == [f"gemeente|NEW|1|{group}"]
    assert inbox(broker, "politie") == [f"politie|NEW|1|{group}"]
    assert broker.tokens.count_tokens() == 3
    assert broker.tokens.count_groups() == 1
    (stored,) = broker.tokens.open_groups()
    assert (stored.token, stored.revision, stored.first_seen) == (token(1), 1, NOW)


def test_a_resync_puts_the_latest_notice_of_every_group_in_the_mailbox_again(broker):
    """What a node restored from an older backup asks for: the notices it acknowledged
    since are deleted, but its latest of each group, open or closed, comes again."""
    ids = Ids()
    submit(broker, "a", 1, [entry("a", 1), entry("a", 2)], ids=ids)
    submit(broker, "b", 2, [entry("b", 1), entry("b", 2)], ids=ids)  # two groups: NEW
    submit(broker, "c", 3, [entry("c", 1)], ids=ids)  # the first grows
    broker.tokens.withdraw("b", batch_id(4), [ref("b")], min_parties=2, now=NOW, sign_notice=sign)
    first, second = (1).to_bytes(16, "big").hex(), (2).to_bytes(16, "big").hex()
    delivered = inbox(broker, "a")
    assert delivered == [
        f"a|NEW|1|{first}",
        f"a|NEW|1|{second}",
        f"a|GROWN|2|{first}",
        f"a|SHRUNK|3|{first}",
        f"a|CLOSED|2|{second}",
    ]
    broker.mailboxes.ack("a", broker.mailboxes.mailbox_state("a").head_cursor)
    assert inbox(broker, "a") == []

    resent, head = broker.mailboxes.resync("a", NOW)
    assert (resent, head) == (2, 7)
    assert sorted(inbox(broker, "a")) == sorted([f"a|SHRUNK|3|{first}", f"a|CLOSED|2|{second}"])
    # Asked again before those are read: refused, so at most one copy waits.
    with pytest.raises(QuotaExceeded) as refused:
        broker.mailboxes.resync("a", NOW)
    assert refused.value.reason == "quota.resync_pending"
    broker.mailboxes.ack("a", 6)
    with pytest.raises(QuotaExceeded):
        broker.mailboxes.resync("a", NOW)
    broker.mailboxes.ack("a", 7)
    assert broker.mailboxes.resync("a", NOW) == (2, 9)  # read: asked again, the same again
    assert broker.mailboxes.resync("nobody", NOW) == (0, 0)  # told of nothing: nothing
    entries = broker.audit.audit_entries(kind=AuditKind.HIT_NOTICE)
    assert {"party": "a", "resent": 2, "head_cursor": 7} in [dict(e.details) for e in entries]

    broker.mailboxes.close_mailbox("a")  # removed from the covenant: nothing is kept for it
    with pytest.raises(NotAllowed):
        broker.mailboxes.resync("a", NOW)
    assert table_counts(broker.engine)["latest_notices"] == 3  # b's two, c's one
    assert table_counts(broker.engine)["resyncs"] == 1  # "nobody"'s


def test_closed_groups_are_forgotten_after_the_longest_lifetime_with_their_latest_notices(
    broker,
):
    """The broker's database does not grow with every group that ever closed: once a
    closed group is older than what any backup still needs, it goes with the notices kept
    of it for ``ResyncHits``; open groups and recently closed ones stay."""
    ids = Ids()
    submit(broker, "a", 1, [entry("a", n, n) for n in (1, 2, 3)], ids=ids)
    submit(broker, "b", 2, [entry("b", n, n) for n in (1, 2, 3)], ids=ids)
    kept_open, closed_early, closed_late = (n.to_bytes(16, "big") for n in (1, 2, 3))
    broker.tokens.withdraw(
        "b", batch_id(3), [ref("b", 2)], min_parties=2, now=NOW, sign_notice=sign
    )
    broker.tokens.withdraw(
        "b",
        batch_id(4),
        [ref("b", 3)],
        min_parties=2,
        now=NOW + timedelta(days=10),
        sign_notice=sign,
    )
    keep = timedelta(days=30)

    def kept() -> tuple[set[bytes], set[bytes]]:
        with broker.engine.connect() as conn:
            groups = set(conn.execute(sa.text("SELECT group_id FROM hit_groups")).scalars())
            notices = set(conn.execute(sa.text("SELECT group_id FROM latest_notices")).scalars())
        return {bytes(g) for g in groups}, {bytes(g) for g in notices}

    assert kept() == ({kept_open, closed_early, closed_late},) * 2
    nothing = broker.retention.prune_closed_groups(NOW + timedelta(days=29), keep=keep)
    assert (nothing.groups, nothing.notices) == (0, 0)

    pruned = broker.retention.prune_closed_groups(NOW + timedelta(days=31), keep=keep)
    assert (pruned.groups, pruned.notices, pruned.more) == (1, 2, False)  # a's and b's notice
    assert kept() == ({kept_open, closed_late},) * 2
    pruned = broker.retention.prune_closed_groups(NOW + timedelta(days=400), keep=keep, limit=1)
    assert (pruned.groups, pruned.more) == (1, True)
    assert kept() == ({kept_open},) * 2
    assert broker.retention.prune_closed_groups(NOW + timedelta(days=400), keep=keep).groups == 0
    # The open group still grows as before, and a resync still carries its notice.
    submit(broker, "c", 5, [entry("c", 1)], ids=ids)
    broker.mailboxes.ack("a", broker.mailboxes.mailbox_state("a").head_cursor)
    assert broker.mailboxes.resync("a", NOW)[0] == 1
    details = [dict(e.details) for e in broker.audit.audit_entries(kind=AuditKind.TOKEN_EXPIRY)]
    assert {"closed_groups_pruned": 1, "latest_notices_pruned": 2} in details


def test_withdrawal_finds_refs_sharing_a_prefix_or_bucket(broker):
    twin = ref("a")[:8] + bytes(8)
    cousin = ref("a")[:1] + bytes(15)
    submit(broker, "a", 1, [entry("a", 1), replace(entry("a", 2), signal_ref=twin)])
    submit(broker, "a", 2, [replace(entry("a", 3), signal_ref=cousin)])
    result = broker.tokens.withdraw(
        "a", batch_id(3), [twin], min_parties=2, now=NOW, sign_notice=sign
    )
    assert (result.withdrawn, result.unknown) == (1, 0)
    assert broker.tokens.count_tokens() == 2
    result = broker.tokens.withdraw(
        "a", batch_id(4), [ref("a"), cousin], min_parties=2, now=NOW, sign_notice=sign
    )
    assert (result.withdrawn, result.unknown) == (2, 0)
    assert broker.tokens.count_tokens() == 0


def test_tokens_sharing_a_prefix_do_not_match(broker):
    twin = token(1)[:8] + bytes(24)
    submit(broker, "a", 1, [entry("a", 1)])
    result = submit(broker, "b", 2, [replace(entry("b", 1), token=twin)])
    assert result.notified == ()
    assert broker.tokens.count_groups() == 0
    # ...and the real token still matches.
    assert submit(broker, "c", 3, [entry("c", 1)]).notified == ("a", "c")


def test_group_growth_and_notices_carry_members(broker):
    ids = Ids()
    seen: list[NoticeDraft] = []

    def keep(draft: NoticeDraft) -> bytes:
        seen.append(draft)
        return sign(draft)

    submit(broker, "a", 1, [entry("a", 1, box=b"box-a")], ids=ids, sign_notice=keep)
    submit(broker, "b", 2, [entry("b", 1)], ids=ids, sign_notice=keep)
    submit(broker, "c", 3, [entry("c", 1)], ids=ids, sign_notice=keep)
    assert inbox(broker, "a")[-1].startswith("a|GROWN|2|")
    assert inbox(broker, "c") == [f"c|NEW|2|{(1).to_bytes(16, 'big').hex()}"]
    to_c = seen[-1]
    assert to_c.recipient == "c"
    assert [(m.party, m.sealed_attributes) for m in to_c.view.members] == [
        ("a", (b"box-a",)),
        ("b", ()),
    ]


def test_resubmitting_a_batch_is_acknowledged_again_without_effect(broker, engine):
    entries = [entry("a", 1), entry("a", 2)]
    submit(broker, "b", 1, [entry("b", 1)])
    first = submit(broker, "a", 7, entries)
    before = table_counts(engine)
    again = submit(broker, "a", 7, list(reversed(entries)), at=NOW + timedelta(hours=1))
    assert first.notices == 2  # the group formed: a notice to each member; none again
    assert again == replace(first, replayed=True, notified=(), notices=0)
    assert again.accepted_at == NOW
    assert table_counts(engine) == before


def test_a_batch_id_reused_for_other_content_is_refused(broker, engine):
    submit(broker, "a", 7, [entry("a", 1)])
    before = table_counts(engine)
    with pytest.raises(Replay) as raised:
        submit(broker, "a", 7, [entry("a", 2)])
    assert raised.value.field == "client_batch_id"
    with pytest.raises(Replay):
        broker.tokens.withdraw(
            "a", batch_id(7), [ref("a")], min_parties=2, now=NOW, sign_notice=sign
        )
    assert table_counts(engine) == before
    # Batch ids are per party: another party may use the same id.
    assert submit(broker, "b", 7, [entry("b", 2)]).replayed is False


def test_a_replayed_batch_is_recognised_even_after_its_entries_expired(broker):
    soon = NOW + timedelta(minutes=1)
    first = submit(broker, "a", 1, [entry("a", 1, expires=soon)])
    again = submit(broker, "a", 1, [entry("a", 1, expires=soon)], at=NOW + timedelta(hours=1))
    assert again.replayed
    assert again.stored == first.stored


def test_a_failure_inside_the_transaction_leaves_nothing(broker, engine):
    submit(broker, "a", 1, [entry("a", 1)])
    before = table_counts(engine)

    def broken(draft: NoticeDraft) -> bytes:
        raise RuntimeError("signing key unavailable")

    with pytest.raises(RuntimeError, match="signing key"):
        submit(broker, "b", 2, [entry("b", 1), entry("b", 2)], sign_notice=broken)
    assert table_counts(engine) == before
    assert inbox(broker, "a") == []
    # The batch was not recorded either: sending it again works.
    assert submit(broker, "b", 2, [entry("b", 1), entry("b", 2)]).stored == 2
    assert len(inbox(broker, "a")) == 1


LIMIT = common_pb2.LIMITS_MAX_TOKENS_PER_BATCH

MAX_BOX = common_pb2.LIMITS_MAX_SEALED_ATTRIBUTES_BYTES
MAX_REFS = common_pb2.LIMITS_MAX_REFS_PER_TOKEN

INVALID = [
    ("short token", [replace(entry("a", 1), token=b"t" * 31)], InvalidInput, "entries[0].token"),
    ("expired", [entry("a", 1), entry("a", 2, expires=NOW)], InvalidInput, "entries[1].expires_at"),
    ("too many", [entry("a", 1)] * (LIMIT + 1), MessageTooLarge, "entries"),
    ("oversized box", [entry("a", 1), entry("a", 2, box=bytes(MAX_BOX + 1))], MessageTooLarge,
     "entries[1].sealed_attributes"),
    ("too many refs", [entry("a", 1, r=n) for n in range(MAX_REFS + 1)], MessageTooLarge,
     f"entries[{MAX_REFS}].signal_ref"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("entries", "error", "field_name"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_bad_input_names_the_field_and_stores_nothing(broker, engine, entries, error, field_name):
    before = table_counts(engine)
    with pytest.raises(error) as raised:
        submit(broker, "a", 1, entries)
    assert raised.value.field == field_name
    assert table_counts(engine) == before


def test_a_batch_id_must_be_16_bytes(broker):
    with pytest.raises(InvalidInput) as raised:
        broker.tokens.submit(
            "a", b"short", 1, [entry("a", 1)],
            min_parties=2, now=NOW, new_group_id=Ids(), sign_notice=sign,
        )  # fmt: skip
    assert raised.value.field == "client_batch_id"


def test_unchanged_entries_are_updated_not_added(broker, engine):
    submit(broker, "a", 1, [entry("a", 1, box=b"old")])
    result = submit(broker, "a", 2, [entry("a", 1, expires=LATER + timedelta(days=1), box=b"new")])
    assert (result.stored, result.unchanged) == (0, 1)
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT sealed_attributes FROM token_entries")).one()
    assert bytes(row[0]) == b"new"


def test_a_full_batch_is_looked_up_in_chunks(broker):
    size = common_pb2.LIMITS_MAX_TOKENS_PER_BATCH
    submit(broker, "a", 1, [entry("a", n) for n in range(size)])
    result = submit(broker, "b", 2, [entry("b", n) for n in range(size - 3, size + 3)])
    assert result.stored == 6
    assert broker.tokens.count_groups() == 3
    assert len(inbox(broker, "a")) == 3


# --- withdrawing, expiring, removing ----------------------------------------------------


def test_withdrawal_closes_the_group_and_is_idempotent(broker, engine):
    ids = Ids()
    submit(broker, "a", 1, [entry("a", 1)], ids=ids)
    submit(broker, "b", 2, [entry("b", 1)], ids=ids)
    result = broker.tokens.withdraw(
        "b", batch_id(3), [ref("b"), ref("b", 9)], min_parties=2, now=NOW, sign_notice=sign
    )
    assert (result.withdrawn, result.unknown, result.replayed) == (1, 1, False)
    assert result.notified == ("a", "b")
    assert [p.split("|")[1] for p in inbox(broker, "a")] == ["NEW", "CLOSED"]
    assert broker.tokens.count_groups() == 0
    assert broker.tokens.count_groups(open_only=False) == 1
    before = table_counts(engine)
    again = broker.tokens.withdraw(
        "b", batch_id(3), [ref("b", 9), ref("b")], min_parties=2, now=NOW, sign_notice=sign
    )
    assert result.notices == 2
    assert again == replace(result, replayed=True, notified=(), notices=0)
    assert table_counts(engine) == before
    # The token can form a new group later, with a new id.
    submit(broker, "b", 4, [entry("b", 1, r=2)], ids=ids)
    assert inbox(broker, "a")[-1] == f"a|NEW|1|{(2).to_bytes(16, 'big').hex()}"


def test_expiry_drops_entries_and_tells_the_members(broker):
    soon = NOW + timedelta(days=1)
    submit(broker, "a", 1, [entry("a", 1, expires=soon), entry("a", 2, expires=soon)])
    submit(broker, "b", 2, [entry("b", 1), entry("b", 2)])
    submit(broker, "c", 3, [entry("c", 1)])
    assert broker.tokens.expire(NOW, min_parties=2, sign_notice=sign).removed == 0
    result = broker.tokens.expire(soon, min_parties=2, sign_notice=sign, limit=1)
    assert result.more
    assert result.removed == 1
    result = broker.tokens.expire(soon, min_parties=2, sign_notice=sign)
    assert (result.removed, result.more) == (1, False)
    assert broker.tokens.count_tokens() == 3
    kinds = sorted(p.split("|")[1] + p.split("|")[2] for p in inbox(broker, "a"))
    assert kinds == ["CLOSED2", "CLOSED3", "GROWN2", "NEW1", "NEW1"]
    assert [p.split("|")[1] for p in inbox(broker, "c")] == ["NEW", "SHRUNK"]


def test_the_sweep_s_notices_count_against_the_day_of_the_party_whose_entries_expired(
    broker, engine
):
    """Entries that expire tell the others too: those notices' bytes count against the
    expired party's notice bytes of the day (never refused: the sweep goes on), so that
    a party cannot have the sweep do the churn its batches may not."""
    soon = NOW + timedelta(days=1)
    submit(broker, "a", 1, [entry("a", 1, expires=soon), entry("a", 2, expires=soon)])
    submit(broker, "b", 2, [entry("b", 1), entry("b", 2)])
    submit(broker, "c", 3, [entry("c", 1)])
    sent: list[tuple[str, int]] = []

    def counting(draft: NoticeDraft) -> bytes:
        signed = sign(draft)
        sent.append((draft.recipient, len(signed)))
        return signed

    before, other = broker.tokens.usage("a"), broker.tokens.usage("b")
    broker.tokens.expire(soon, min_parties=2, sign_notice=counting)
    to_others = sum(size for recipient, size in sent if recipient != "a")
    assert {recipient for recipient, _ in sent} == {"a", "b", "c"}
    assert to_others > 0
    assert broker.tokens.usage("a") == replace(
        before, day=matching.utc_day(soon), submitted=0, notice_bytes=to_others, held=0
    )
    assert broker.tokens.usage("b") == other  # its entries did not expire


def test_removing_a_party_closes_its_mailbox_and_tells_the_others(broker, engine):
    submit(broker, "a", 1, [entry("a", 1)])
    submit(broker, "b", 2, [entry("b", 1)])
    submit(broker, "c", 3, [entry("c", 1)])
    result = broker.tokens.remove_party("c", min_parties=2, now=NOW, sign_notice=sign)
    assert (result.removed, result.notified) == (1, ("a", "b"))
    assert inbox(broker, "a")[-1].startswith("a|SHRUNK|3|")
    for action in (
        lambda: broker.mailboxes.fetch("c", 0, now=NOW),
        lambda: broker.mailboxes.ack("c", 0),
        lambda: broker.mailboxes.enqueue("c", b"x", ItemKind.ENVELOPE, NOW),
        lambda: submit(broker, "c", 9, [entry("c", 2)]),
    ):
        with pytest.raises(NotAllowed):
            action()
    with engine.connect() as conn:
        left = conn.execute(
            sa.text(
                "SELECT count(*) FROM mailbox_items m JOIN parties p ON p.id = m.party_id"
                " WHERE p.name = 'c'"
            )
        ).scalar()
    assert left == 0


# --- the index's invariant, under random operations ------------------------------------

# One operation: (kind, party, token numbers, ref number, days until expiry or of the clock).
_OPERATION = st.tuples(
    st.sampled_from(["submit", "submit", "submit", "withdraw", "expire"]),
    st.sampled_from(["a", "b", "c"]),
    st.lists(st.integers(0, 5), min_size=1, max_size=4),
    st.integers(1, 2),
    st.integers(1, 4),
)


@given(st.lists(_OPERATION, min_size=1, max_size=12))
def test_open_groups_follow_the_entries_under_any_operations(operations):
    """What the SQLite lookup relies on (groups looked up only where entries are): an open
    group always has entries of at least two parties on its token, and tokens whose live
    entries come from two parties have exactly one open group."""
    engine = database.make_engine("sqlite://")
    Base.metadata.create_all(engine)
    broker = BrokerStore(engine)
    ids = Ids()
    now = NOW
    try:
        for n, (kind, party, numbers, r, days) in enumerate(operations):
            if kind == "submit":
                expires = now + timedelta(days=days)
                entries = [entry(party, k, r=r + k, expires=expires) for k in numbers]
                submit(broker, party, n, entries, ids=ids, at=now)
            elif kind == "withdraw":
                refs = [ref(party, r + k) for k in numbers]
                broker.tokens.withdraw(
                    party, batch_id(n), refs, min_parties=2, now=now, sign_notice=sign
                )
            else:
                now += timedelta(days=days)
                broker.tokens.expire(now, min_parties=2, sign_notice=sign)
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.text("SELECT party_id, token, expires_at FROM token_entries")
                ).all()
                open_groups = [
                    bytes(t)
                    for (t,) in conn.execute(sa.text("SELECT token FROM hit_groups WHERE is_open"))
                ]
            stored: dict[bytes, set[int]] = {}
            live: dict[bytes, set[int]] = {}
            for party_id, tok, expires_at in rows:
                stored.setdefault(bytes(tok), set()).add(party_id)
                if datetime.fromisoformat(expires_at).replace(tzinfo=UTC) > now:
                    live.setdefault(bytes(tok), set()).add(party_id)
            assert len(open_groups) == len(set(open_groups))
            for tok in open_groups:
                assert len(stored.get(tok, ())) >= 2
            for tok, parties in live.items():
                assert (tok in open_groups) == (len(parties) >= 2)
    finally:
        engine.dispose()


# --- quotas and the expiry cap ------------------------------------------------------------

RULES = matching.SubmissionRules(
    longest_retention_days=365,
    entries_per_day=MIN_TOKEN_QUOTA,
    entries_held=MIN_TOKEN_QUOTA,
)


def held_by_party(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT p.name, count(t.id) FROM parties p"
                " LEFT JOIN token_entries t ON t.party_id = p.id GROUP BY p.name"
            )
        ).all()
    return {name: count for name, count in rows}


def test_entries_held_follow_every_operation(broker, engine):
    """The quota's count of entries held moves with every insert and delete: submissions
    (which also drop other parties' expired entries on the tokens they touch),
    withdrawals, the expiry sweep and a party's removal."""
    soon = NOW + timedelta(days=1)
    ids = Ids()

    def check() -> None:
        assert {p: broker.tokens.usage(p).held for p in held_by_party(engine)} == held_by_party(
            engine
        )

    submit(
        broker, "a", 1, [entry("a", 1, expires=soon), entry("a", 2), entry("a", 3, r=2)], ids=ids
    )
    submit(broker, "b", 2, [entry("b", 1), entry("b", 4)], ids=ids)
    check()
    # b touches token 1 after a's entry there expired: a's expired entry goes.
    submit(broker, "b", 3, [entry("b", 1, r=2)], ids=ids, at=soon + timedelta(hours=1))
    check()
    assert broker.tokens.usage("a").held == 2
    broker.tokens.withdraw(
        "a", batch_id(4), [ref("a", 2)], min_parties=2, now=soon, sign_notice=sign
    )
    check()
    submit(
        broker, "c", 5, [entry("c", 2, expires=soon + timedelta(days=1)), entry("c", 4)], ids=ids
    )
    broker.tokens.expire(soon + timedelta(days=2), min_parties=2, sign_notice=sign)
    check()
    broker.tokens.remove_party("b", min_parties=2, now=soon, sign_notice=sign)
    check()
    assert broker.tokens.usage("b").held == 0
    assert broker.tokens.usage("nobody") == matching.Usage()


def test_the_quotas_refuse_a_batch_whole_and_let_it_in_when_there_is_room(broker, engine):
    per_day = RULES.entries_per_day

    def batch(party, n, first, count, at):
        entries = [entry(party, k) for k in range(first, first + count)]
        return broker.tokens.submit(
            party, batch_id(n), 1, entries, min_parties=2, now=at,
            new_group_id=Ids(), sign_notice=sign, rules=RULES,
        )  # fmt: skip

    batch("a", 1, 0, per_day * 6 // 10, NOW)
    assert broker.tokens.usage("a") == matching.Usage(
        matching.utc_day(NOW), per_day * 6 // 10, 6000
    )
    before = table_counts(engine)
    with pytest.raises(QuotaExceeded) as refused:
        batch("a", 2, 10_000, per_day * 5 // 10, NOW + timedelta(hours=1))
    assert (refused.value.field, refused.value.reason) == ("entries", "quota.token_entries_per_day")
    assert table_counts(engine) == before
    assert broker.tokens.usage("a").submitted == per_day * 6 // 10  # nothing counted
    # The next UTC day the daily quota has room, but 11,000 would be held.
    tomorrow = NOW + timedelta(days=1)
    with pytest.raises(QuotaExceeded) as held:
        batch("a", 2, 10_000, per_day * 5 // 10, tomorrow)
    assert held.value.reason == "quota.token_entries_held"
    assert table_counts(engine) == before
    broker.tokens.withdraw(
        "a", batch_id(3), [ref("a", 1)], min_parties=2, now=tomorrow, sign_notice=sign
    )
    assert broker.tokens.usage("a").held == 0  # ref 1 named every entry of a
    assert batch("a", 2, 10_000, per_day * 5 // 10, tomorrow).stored == 5000
    assert broker.tokens.usage("a") == matching.Usage(matching.utc_day(tomorrow), 5000, 5000)
    # A replayed batch counts nothing again.
    assert batch("a", 2, 10_000, per_day * 5 // 10, tomorrow).replayed
    assert broker.tokens.usage("a").submitted == 5000


def test_withdrawn_refs_count_against_the_day_like_submitted_entries(broker, engine):
    """Churning refs (withdraw one, submit it again) costs the day's quota both ways."""
    per_day = RULES.entries_per_day
    entries = [entry("a", k, r=k) for k in range(per_day - 2)]
    broker.tokens.submit(
        "a", batch_id(1), 1, entries, min_parties=2, now=NOW,
        new_group_id=Ids(), sign_notice=sign, rules=RULES,
    )  # fmt: skip
    withdraw = partial(broker.tokens.withdraw, "a", min_parties=2, sign_notice=sign, rules=RULES)
    assert withdraw(batch_id(2), [ref("a", 0), ref("a", 1)], now=NOW).withdrawn == 2
    assert broker.tokens.usage("a").submitted == per_day
    before = table_counts(engine)
    with pytest.raises(QuotaExceeded) as refused:
        withdraw(batch_id(3), [ref("a", 2)], now=NOW)
    assert (refused.value.field, refused.value.reason) == (
        "signal_refs",
        "quota.token_entries_per_day",
    )
    assert table_counts(engine) == before  # nothing withdrawn, nothing recorded
    assert withdraw(batch_id(3), [ref("a", 2)], now=NOW + timedelta(days=1)).withdrawn == 1
    assert withdraw(batch_id(3), [ref("a", 2)], now=NOW + timedelta(days=1)).replayed
    assert broker.tokens.usage("a").submitted == 1  # a replay counts nothing


def test_the_notices_a_party_causes_others_are_counted_and_bounded_per_day(broker, engine):
    """The churn of issue 12's review: one party withdraws and submits again a ref under a
    token it shares, and every co-member gets a notice each time. Those notices' bytes count
    against the party's day; once it caused some, a batch that would pass the quota is
    refused whole; the day's first such batch always goes through."""
    box = b"\x07" * 256
    rules = replace(RULES, notice_bytes_per_day=1000)
    ids = Ids()

    def big(draft: NoticeDraft) -> bytes:
        return sign(draft).ljust(300, b".")  # a notice of 300 bytes

    def send(n: int, refs: list[int], at: datetime) -> matching.Usage:
        broker.tokens.submit(
            "b", batch_id(n), 1, [entry("b", 1, r=r, box=box) for r in refs], min_parties=2,
            now=at, new_group_id=ids, sign_notice=big, rules=rules,
        )  # fmt: skip
        return broker.tokens.usage("b")

    def take_back(n: int, r: int, at: datetime) -> matching.Usage:
        broker.tokens.withdraw(
            "b", batch_id(n), [ref("b", r)], min_parties=2, now=at, sign_notice=big, rules=rules
        )
        return broker.tokens.usage("b")

    submit(broker, "a", 1, [entry("a", 1)], ids=ids, sign_notice=big)
    submit(broker, "c", 2, [entry("c", 1)], ids=ids, sign_notice=big)
    # b joins: a notice to a and to c (300 bytes each); to itself costs it nothing.
    assert send(3, [1, 2, 3], NOW).notice_bytes == 600
    # Withdrawing one of its refs would tell a and c again: 1200 would pass 1000.
    before = table_counts(engine)
    with pytest.raises(QuotaExceeded) as refused:
        take_back(4, 1, NOW)
    assert (refused.value.field, refused.value.reason) == (
        "signal_refs",
        "quota.hit_notice_bytes_per_day",
    )
    assert table_counts(engine) == before  # nothing withdrawn, no notice, no record
    assert broker.tokens.usage("b").notice_bytes == 600
    with pytest.raises(QuotaExceeded) as refused:
        send(5, [4], NOW)
    assert (refused.value.field, refused.value.reason) == (
        "entries",
        "quota.hit_notice_bytes_per_day",
    )
    assert table_counts(engine) == before
    # A batch that causes no notice to others still goes in (c, alone on token 9).
    broker.tokens.submit(
        "b", batch_id(6), 1, [entry("b", 9, r=9)], min_parties=2, now=NOW,
        new_group_id=ids, sign_notice=big, rules=rules,
    )  # fmt: skip
    assert broker.tokens.usage("b").notice_bytes == 600
    # The next UTC day starts afresh: its first batch goes through whatever it causes.
    tomorrow = NOW + timedelta(days=1)
    assert take_back(4, 1, tomorrow).notice_bytes == 600
    with pytest.raises(QuotaExceeded):
        take_back(7, 2, tomorrow)  # 1200 would pass 1000


def test_an_expiry_beyond_the_covenant_s_retention_is_refused_and_stores_nothing(broker, engine):
    before = table_counts(engine)
    far = NOW + timedelta(days=365 * 100)
    with pytest.raises(InvalidInput) as raised:
        broker.tokens.submit(
            "a", batch_id(1), 1, [entry("a", 1), entry("a", 2, expires=far)], min_parties=2,
            now=NOW, new_group_id=Ids(), sign_notice=sign, rules=RULES,
        )  # fmt: skip
    assert (raised.value.field, raised.value.reason) == (
        "entries[1].expires_at",
        "retention.exceeded",
    )
    assert table_counts(engine) == before


# --- mailboxes and envelopes --------------------------------------------------------------


def test_mailbox_cursors_survive_reconnects(engine):
    first = BrokerStore(engine)
    cursors = [
        first.mailboxes.enqueue("a", b"item %d" % i, ItemKind.ENVELOPE, NOW) for i in range(5)
    ]
    assert cursors == [1, 2, 3, 4, 5]
    page = first.mailboxes.fetch("a", 0, 2, now=NOW)
    assert [i.cursor for i in page.items] == [1, 2]
    assert (page.head_cursor, page.acked_cursor) == (5, 0)
    assert first.mailboxes.ack("a", 2) == 2

    engine.dispose()  # the broker restarts: new connections, a new store
    second = BrokerStore(engine)
    state = second.mailboxes.mailbox_state("a")
    assert (state.head_cursor, state.acked_cursor) == (5, 2)
    assert [i.payload for i in second.mailboxes.fetch("a", state.acked_cursor, now=NOW).items] == [
        b"item 2",
        b"item 3",
        b"item 4",
    ]
    # The acknowledged ones are gone.
    assert [i.cursor for i in second.mailboxes.fetch("a", 0, now=NOW).items] == [3, 4, 5]
    assert second.mailboxes.ack("a", 1) == 2  # an older ack: no-op
    with pytest.raises(InvalidInput) as raised:
        second.mailboxes.ack("a", 6)
    assert raised.value.field == "cursor"
    assert second.mailboxes.ack("a", 5) == 5
    assert second.mailboxes.fetch("a", 0, now=NOW).items == ()
    assert second.mailboxes.enqueue("a", b"next", ItemKind.ENVELOPE, NOW) == 6  # never reused


def test_readers_do_not_wait_for_a_writer(broker, engine):
    """Mailbox reads run beside a long write transaction (SQLite: a deferred BEGIN
    under WAL; PostgreSQL: MVCC)."""
    broker.mailboxes.enqueue("a", b"first", ItemKind.ENVELOPE, NOW)
    with engine.connect() as writer:
        writer.begin()
        writer.execute(sa.text("UPDATE mailbox_heads SET closed = closed"))
        done = threading.Event()
        seen: list[int] = []

        def read() -> None:
            seen.append(len(broker.mailboxes.fetch("a", 0, now=NOW).items))
            seen.append(broker.tokens.count_tokens())
            done.set()

        threading.Thread(target=read, daemon=True).start()
        assert done.wait(timeout=5), "a reader waited for the writer"
        writer.rollback()
    assert seen == [1, 0]


def test_fetch_respects_limits_and_sizes(broker):
    for i in range(3):
        broker.mailboxes.enqueue("a", bytes(100) + bytes([i]), ItemKind.COVENANT_UPDATE, NOW)
    # Each item costs its payload and ITEM_OVERHEAD_BYTES; the response its own overhead.
    room = mailbox.RESPONSE_OVERHEAD_BYTES + 2 * mailbox.wire_bytes(101)
    assert len(broker.mailboxes.fetch("a", 0, now=NOW, budget=room).items) == 2
    assert len(broker.mailboxes.fetch("a", 0, now=NOW, budget=room - 1).items) == 1
    assert len(broker.mailboxes.fetch("a", 0, 1, now=NOW).items) == 1
    assert broker.mailboxes.fetch("a", 0, now=NOW).items[0].kind is ItemKind.COVENANT_UPDATE
    unknown = broker.mailboxes.fetch("nobody", 0, now=NOW)
    assert (unknown.items, unknown.head_cursor, unknown.acked_cursor) == ((), 0, 0)
    assert broker.mailboxes.ack("nobody", 0) == 0


def test_an_item_too_large_for_any_message_is_set_aside_and_delivery_goes_on(broker, engine):
    """As if stored before the size limits: an item no message can carry. The fetch sets
    it aside (moved out, kept, audited), sends a marker at its cursor and goes on."""
    huge = b"\x01" * (common_pb2.LIMITS_MAX_MESSAGE_BYTES + 1)
    broker.mailboxes.enqueue("a", b"before", ItemKind.HIT_NOTICE, NOW)
    broker.mailboxes.enqueue("a", huge, ItemKind.HIT_NOTICE, NOW)
    broker.mailboxes.enqueue("a", b"after", ItemKind.COVENANT_UPDATE, NOW)
    later = NOW + timedelta(minutes=5)
    fetched = broker.mailboxes.fetch("a", 0, now=later)
    assert [(i.cursor, i.kind) for i in fetched.items] == [
        (1, ItemKind.HIT_NOTICE),
        (2, ItemKind.SET_ASIDE),
        (3, ItemKind.COVENANT_UPDATE),
    ]
    marker = broker_pb2.SetAsideItem.FromString(fetched.items[1].payload)
    assert (marker.kind, marker.size_bytes) == ("hit_notice", len(huge))
    assert marker.set_aside_at.ToDatetime(tzinfo=UTC) == later
    (audited,) = broker.audit.audit_entries(kind=AuditKind.MAILBOX_ITEM_SET_ASIDE)
    assert dict(audited.details) == {"party": "a", "cursor": 2, "kind": "hit_notice",
                                     "bytes": len(huge), "reason": "too_large"}  # fmt: skip
    with engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT cursor, kind, payload FROM set_aside_items")).one()
    assert (kept.cursor, kept.kind, bytes(kept.payload)) == (2, "hit_notice", huge)
    # Fetched again (the node did not acknowledge): the same marker, nothing set aside twice.
    again = broker.mailboxes.fetch("a", 1, now=later + timedelta(minutes=1))
    assert [i.payload for i in again.items] == [i.payload for i in fetched.items[1:]]
    assert len(broker.audit.audit_entries(kind=AuditKind.MAILBOX_ITEM_SET_ASIDE)) == 1
    # A second reader that found the same item sets nothing aside again.
    broker.mailboxes._set_aside(
        "a", broker.database._party_ids["a"], {2: SetAside.TOO_LARGE}, later
    )
    assert len(broker.audit.audit_entries(kind=AuditKind.MAILBOX_ITEM_SET_ASIDE)) == 1
    assert broker.mailboxes.ack("a", 3) == 3
    assert broker.mailboxes.fetch("a", 0, now=later).items == ()
    with engine.connect() as conn:  # the operator still has it
        assert conn.execute(sa.text("SELECT count(*) FROM set_aside_items")).scalar_one() == 1


def test_a_fetch_takes_as_many_whole_items_as_fit_in_one_message(broker):
    third = common_pb2.LIMITS_MAX_MESSAGE_BYTES * 4 // 10
    for n in range(3):
        broker.mailboxes.enqueue("a", bytes([n]) * third, ItemKind.ENVELOPE, NOW)
    first = broker.mailboxes.fetch("a", 0, now=NOW)
    assert [i.cursor for i in first.items] == [1, 2]  # a third would pass the limit
    assert [i.cursor for i in broker.mailboxes.fetch("a", 2, now=NOW).items] == [3]
    assert broker.audit.audit_entries(kind=AuditKind.MAILBOX_ITEM_SET_ASIDE) == []


def test_envelopes_are_relayed_once(broker):
    digest = hashlib.sha256(b"envelope").digest()
    first = broker.mailboxes.relay_envelope(
        "a", batch_id(1), digest, recipient="b", payload=b"sealed", now=NOW
    )
    assert (first.cursor, first.accepted_at, first.replayed) == (1, NOW, False)
    again = broker.mailboxes.relay_envelope(
        "a", batch_id(1), digest, recipient="b", payload=b"sealed", now=NOW + timedelta(hours=1)
    )
    assert again == replace(first, replayed=True)
    assert [i.payload for i in broker.mailboxes.fetch("b", 0, now=NOW).items] == [b"sealed"]
    with pytest.raises(Replay) as raised:
        broker.mailboxes.relay_envelope(
            "a", batch_id(1), hashlib.sha256(b"other").digest(),
            recipient="b", payload=b"other", now=NOW,
        )  # fmt: skip
    assert raised.value.field == "client_message_id"
    broker.mailboxes.close_mailbox("c")
    with pytest.raises(NotAllowed) as closed:
        broker.mailboxes.relay_envelope(
            "a", batch_id(2), digest, recipient="c", payload=b"x", now=NOW
        )
    assert closed.value.field == "envelope.recipient"


ENVELOPES = mailbox.EnvelopeRules(per_day=3, bytes_per_day=1000, bytes_waiting=1000)


def relay(broker: BrokerStore, sender: str, n: int, recipient: str, size: int, at=NOW):
    payload = bytes([n % 256]) * size
    return broker.mailboxes.relay_envelope(
        sender, batch_id(n), hashlib.sha256(payload).digest(), recipient=recipient,
        payload=payload, now=at, rules=ENVELOPES,
    )  # fmt: skip


def test_envelope_quotas_refuse_whole_and_the_room_frees_as_the_recipient_reads(broker, engine):
    """Per sender and UTC day: envelopes and bytes; per recipient: the bytes waiting from
    all senders together. A refused envelope stores and counts nothing; the recipient's
    acknowledgements, set-asides and removal give its room back."""
    relay(broker, "a", 1, "c", 400)
    relay(broker, "b", 2, "c", 400)
    assert broker.mailboxes.envelope_usage("c").waiting_bytes == 800
    before = table_counts(engine)
    with pytest.raises(QuotaExceeded) as full:
        relay(broker, "b", 3, "c", 300)  # 1100 would wait in c's mailbox
    assert (full.value.field, full.value.reason) == (
        "envelope.recipient",
        "quota.envelope_bytes_waiting",
    )
    assert table_counts(engine) == before
    assert broker.mailboxes.envelope_usage("b") == mailbox.EnvelopeUsage(
        mailbox.utc_day(NOW), 1, 400
    )
    relay(broker, "b", 4, "d", 500)  # other mailboxes still take b's envelopes
    with pytest.raises(QuotaExceeded) as too_many_bytes:
        relay(broker, "b", 5, "d", 101)  # 1001 bytes from b today
    assert too_many_bytes.value.reason == "quota.envelope_bytes_per_day"
    relay(broker, "a", 6, "d", 10)
    relay(broker, "a", 7, "d", 10)
    with pytest.raises(QuotaExceeded) as too_many:
        relay(broker, "a", 8, "d", 10)  # a fourth envelope from a today
    assert (too_many.value.field, too_many.value.reason) == (
        "envelope",
        "quota.envelopes_per_day",
    )
    assert relay(broker, "a", 6, "d", 10).replayed  # a repeat costs nothing
    # c reads its first envelope: its 400 bytes leave the room, and b's fits.
    broker.mailboxes.ack("c", 1)
    assert broker.mailboxes.envelope_usage("c").waiting_bytes == 400
    later = NOW + timedelta(days=1)
    assert not relay(broker, "b", 3, "c", 300, at=later).replayed
    assert broker.mailboxes.envelope_usage("c").waiting_bytes == 700
    # An envelope set aside leaves the mailbox too; a removed party waits for nothing.
    broker.mailboxes._set_aside(
        "c", broker.database._party_ids["c"], {3: SetAside.MALFORMED}, later
    )
    assert broker.mailboxes.envelope_usage("c").waiting_bytes == 400
    broker.mailboxes.close_mailbox("c")
    assert broker.mailboxes.envelope_usage("c").waiting_bytes == 0
    assert broker.mailboxes.envelope_usage("nobody") == mailbox.EnvelopeUsage()


def test_a_stored_item_that_does_not_parse_is_set_aside_and_delivery_goes_on(broker, engine):
    """A row damaged on disk (or by hand) in the broker's SQLite or PostgreSQL database:
    a fetch that checks what it sends (the service passes ``mailbox.parses``) moves it
    aside with an audit entry, delivers a marker at its cursor and goes on."""
    envelope = broker_pb2.RelayedEnvelope(client_message_id=batch_id(1)).SerializeToString()
    notice = common_pb2.Signed(body=b"notice", signer="broker").SerializeToString()
    broker.mailboxes.enqueue("a", envelope, ItemKind.ENVELOPE, NOW)
    broker.mailboxes.enqueue("a", notice, ItemKind.HIT_NOTICE, NOW)
    broker.mailboxes.enqueue("a", envelope, ItemKind.ENVELOPE, NOW)
    damaged = b"\xff\xff\xff\xff garbage"
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE mailbox_items SET payload = :p WHERE cursor = 2"), {"p": damaged}
        )
    assert [i.kind for i in broker.mailboxes.fetch("a", 0, now=NOW).items][1] is ItemKind.HIT_NOTICE
    later = NOW + timedelta(minutes=1)
    fetched = broker.mailboxes.fetch("a", 0, now=later, parses=mailbox.parses)
    assert [(i.cursor, i.kind) for i in fetched.items] == [
        (1, ItemKind.ENVELOPE),
        (2, ItemKind.SET_ASIDE),
        (3, ItemKind.ENVELOPE),
    ]
    marker = broker_pb2.SetAsideItem.FromString(fetched.items[1].payload)
    assert (marker.kind, marker.size_bytes) == ("hit_notice", len(damaged))
    (audited,) = broker.audit.audit_entries(kind=AuditKind.MAILBOX_ITEM_SET_ASIDE)
    assert dict(audited.details) == {"party": "a", "cursor": 2, "kind": "hit_notice",
                                     "bytes": len(damaged), "reason": "malformed"}  # fmt: skip
    with engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT cursor, kind, payload FROM set_aside_items")).one()
    assert (kept.cursor, kept.kind, bytes(kept.payload)) == (2, "hit_notice", damaged)
    assert (
        broker.mailboxes.fetch("a", 1, now=later, parses=mailbox.parses).items == fetched.items[1:]
    )
    assert len(broker.audit.audit_entries(kind=AuditKind.MAILBOX_ITEM_SET_ASIDE)) == 1
    # A damaged marker is replaced by a new one (it held nothing to keep).
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE mailbox_items SET payload = :p WHERE cursor = 2"), {"p": damaged}
        )
    again = broker.mailboxes.fetch("a", 1, now=later, parses=mailbox.parses)
    marker = broker_pb2.SetAsideItem.FromString(again.items[0].payload)
    assert (again.items[0].cursor, marker.kind, marker.size_bytes) == (
        2,
        "set_aside",
        len(damaged),
    )
    assert len(broker.audit.audit_entries(kind=AuditKind.MAILBOX_ITEM_SET_ASIDE)) == 2
    assert broker.mailboxes.ack("a", 3) == 3


def test_notices_to_a_closed_mailbox_are_dropped_not_fatal(broker):
    submit(broker, "a", 1, [entry("a", 1)])
    broker.mailboxes.close_mailbox("a")
    result = submit(broker, "b", 2, [entry("b", 1)])
    assert result.notified == ("b",)


# --- concurrency ------------------------------------------------------------------------


def test_concurrent_batches_on_one_token_never_miss_the_hit(engine):
    """Matching is serialized: parties submitting the same token at once form one group
    and every revision is told once."""
    parties = [f"p{i}" for i in range(6)]
    barrier = threading.Barrier(len(parties))
    errors: list[BaseException] = []
    ids = Ids()
    lock = threading.Lock()

    def new_id() -> bytes:
        with lock:
            return ids()

    def run(party: str) -> None:
        try:
            store_ = BrokerStore(engine)
            barrier.wait()
            store_.tokens.submit(
                party, batch_id(1), 1, [entry(party, 1)],
                min_parties=2, now=NOW, new_group_id=new_id, sign_notice=sign,
            )  # fmt: skip
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(p,)) for p in parties]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    broker = BrokerStore(engine)
    (group,) = broker.tokens.open_groups()
    assert group.revision == len(parties) - 1
    revisions = sorted(
        int(p.split("|")[2]) for p in inbox(broker, parties[0]) + inbox(broker, parties[1])
    )
    assert max(revisions) == len(parties) - 1


# --- PostgreSQL: the prefix filter in front of the lookups ----------------------------------


@pytest.fixture
def pg_engine(postgres_url: str) -> Iterator[sa.Engine]:
    engine = database.make_engine(postgres_url)
    database.upgrade(engine, MIGRATIONS)
    yield engine
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


def _relkind(conn: sa.Connection) -> str:
    query = "SELECT relkind FROM pg_class WHERE relname = 'token_entries'"
    return str(conn.execute(sa.text(query)).scalar_one())


def test_migration_0004_partitions_the_token_index_and_keeps_its_rows(postgres_url):
    engine = database.make_engine(postgres_url)
    row = (
        "INSERT INTO token_entries (token_prefix, party_id, ref_bucket, ref_prefix, token,"
        " signal_ref, key_epoch, expires_at, expiry_bucket)"
        " VALUES (1, 1, 0, 1, :token, :ref, 1, now() + interval '1 day', 1)"
    )
    try:
        database.downgrade(engine, MIGRATIONS)
        database.upgrade(engine, MIGRATIONS, "0003")
        with engine.begin() as conn:
            for n in range(3):
                conn.execute(sa.text(row), {"token": token(n), "ref": ref("a", n)})
        database.upgrade(engine, MIGRATIONS)
        with engine.begin() as conn:
            assert _relkind(conn) == "p"  # partitioned
            assert conn.execute(sa.text("SELECT count(*) FROM token_entries")).scalar_one() == 3
            conn.execute(sa.text(row), {"token": token(9), "ref": ref("a", 9)})
            ids = conn.execute(sa.text("SELECT id FROM token_entries ORDER BY id")).scalars()
            assert list(ids) == [1, 2, 3, 4]  # the id sequence went along
        database.downgrade(engine, MIGRATIONS, "0003")
        with engine.begin() as conn:
            assert _relkind(conn) == "r"  # a plain table
            assert conn.execute(sa.text("SELECT count(*) FROM token_entries")).scalar_one() == 4
        database.upgrade(engine, MIGRATIONS)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM token_entries"))
        engine.dispose()


def test_migration_0005_counts_what_parties_hold_and_gives_back_what_was_set_aside(
    database_url,
):
    """Up: each party's entries held are counted from the index. Down: an item set aside
    and not yet acknowledged is back in its mailbox, as it was."""
    engine = database.make_engine(database_url)
    statements = [
        "INSERT INTO parties (id, name) VALUES (1, 'a'), (2, 'b')",
        "INSERT INTO mailbox_heads (party_id, head_cursor, acked_cursor, closed)"
        " VALUES (1, 2, 0, false), (2, 0, 0, false)",
        "INSERT INTO mailbox_items (party_id, cursor, kind, payload, enqueued_at)"
        " VALUES (1, 1, 'hit_notice', :huge, :now), (1, 2, 'envelope', :small, :now)",
    ]
    row = (
        "INSERT INTO token_entries (token_prefix, party_id, ref_bucket, ref_prefix, token,"
        " signal_ref, key_epoch, expires_at, expiry_bucket)"
        " VALUES (1, :party, 0, 1, :token, :ref, 1, :later, 1)"
    )
    huge = b"\x02" * (common_pb2.LIMITS_MAX_MESSAGE_BYTES + 1)
    values = {"huge": huge, "small": b"small", "now": NOW, "later": LATER}
    try:
        database.downgrade(engine, MIGRATIONS)
        database.upgrade(engine, MIGRATIONS, "0004")
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement), values)
            for n, party in enumerate([1, 1, 1, 2]):
                conn.execute(
                    sa.text(row), {"party": party, "token": token(n), "ref": ref("a", n), **values}
                )
        database.upgrade(engine, MIGRATIONS)
        broker = BrokerStore(engine)
        assert (broker.tokens.usage("a").held, broker.tokens.usage("b").held) == (3, 1)
        kinds = [i.kind for i in broker.mailboxes.fetch("a", 0, now=NOW).items]
        assert kinds == [ItemKind.SET_ASIDE, ItemKind.ENVELOPE]
        database.downgrade(engine, MIGRATIONS, "0004")
        with engine.begin() as conn:
            back = conn.execute(sa.text("SELECT kind, payload FROM mailbox_items ORDER BY cursor"))
            assert [(kind, bytes(payload)) for kind, payload in back] == [
                ("hit_notice", huge),
                ("envelope", b"small"),
            ]
        database.upgrade(engine, MIGRATIONS)
    finally:
        with engine.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())
        engine.dispose()


def test_migration_0006_counts_the_envelope_bytes_waiting_in_every_mailbox(database_url):
    engine = database.make_engine(database_url)
    statements = [
        "INSERT INTO parties (id, name) VALUES (1, 'a'), (2, 'b')",
        "INSERT INTO mailbox_heads (party_id, head_cursor, acked_cursor, closed)"
        " VALUES (1, 3, 0, false), (2, 0, 0, false)",
        "INSERT INTO party_usage (party_id, day, submitted, held)"
        " VALUES (1, 0, 0, 0), (2, 0, 0, 0)",
        "INSERT INTO mailbox_items (party_id, cursor, kind, payload, enqueued_at)"
        " VALUES (1, 1, 'envelope', :five, :now), (1, 2, 'hit_notice', :five, :now),"
        " (1, 3, 'envelope', :seven, :now)",
    ]
    values = {"five": b"5" * 5, "seven": b"7" * 7, "now": NOW}
    try:
        database.downgrade(engine, MIGRATIONS)
        database.upgrade(engine, MIGRATIONS, "0005")
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement), values)
        database.upgrade(engine, MIGRATIONS)
        broker = BrokerStore(engine)
        assert broker.mailboxes.envelope_usage("a") == mailbox.EnvelopeUsage(0, 0, 0, 12)
        assert broker.mailboxes.envelope_usage("b") == mailbox.EnvelopeUsage()
        assert broker.tokens.usage("a") == matching.Usage()
        database.downgrade(engine, MIGRATIONS, "0005")
        assert "envelope_usage" not in sa.inspect(engine).get_table_names()
        database.upgrade(engine, MIGRATIONS)
    finally:
        with engine.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())
        engine.dispose()


def test_the_store_and_the_migration_agree_on_the_partition_size():
    migration = importlib.import_module(
        "samenloop.broker.migrations.versions.0004_partitioned_token_entries"
    )
    assert migration.PARTITION_IDS == token_index.PARTITION_IDS


def test_batches_cross_into_partitions_the_store_creates(pg_engine):
    """Near the end of the last partition the store adds the next one, in the
    transaction that needs it; tokens in different partitions still match."""
    with pg_engine.begin() as conn:
        end = 2 * token_index.PARTITION_IDS
        conn.execute(sa.text("SELECT setval('token_entries_id_seq', :v)"), {"v": end - 10})
    broker = BrokerStore(pg_engine)
    ids = Ids()
    submit(broker, "a", 1, [entry("a", n, r=n) for n in range(25)], ids=ids)
    with pg_engine.connect() as conn:
        placed = dict(
            conn.execute(
                sa.text("SELECT tableoid::regclass::text, count(*) FROM token_entries GROUP BY 1")
            ).all()
        )
    # setval(end - 10): the next ids are end - 9 .. end + 15
    assert placed == {f"token_entries_p{token_index.PARTITION_IDS}": 9, f"token_entries_p{end}": 16}
    result = submit(broker, "b", 2, [entry("b", 0), entry("b", 24)], ids=ids)
    assert result.notified == ("a", "b")
    assert len(broker.tokens.open_groups()) == 2
    withdrawn = broker.tokens.withdraw(
        "a", batch_id(3), [ref("a", 0), ref("a", 24)], min_parties=2, now=NOW, sign_notice=sign
    )
    assert withdrawn.withdrawn == 2
    assert broker.tokens.open_groups() == []


@pytest.fixture
def small_partitions(own_postgres_url, monkeypatch) -> Iterator[sa.Engine]:
    """A database of its own whose partitions take 1,000 ids each (and half of that as
    margin), from 2,000,000: the migration's two partitions of a million ids, which
    the store would not take at this size, are replaced by one of 1,000."""
    monkeypatch.setattr(token_index, "PARTITION_IDS", 1000)
    engine = database.make_engine(own_postgres_url)
    database.upgrade(engine, MIGRATIONS)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE token_entries_p0, token_entries_p1000000"))
        conn.execute(
            sa.text(
                "CREATE TABLE token_entries_p2000000 PARTITION OF token_entries"
                " FOR VALUES FROM (2000000) TO (2001000)"
            )
        )
        conn.execute(sa.text("SELECT setval('token_entries_id_seq', 1999999)"))
    yield engine
    engine.dispose()


def test_a_partition_layout_the_filter_cannot_follow_is_refused(own_postgres_url, monkeypatch):
    monkeypatch.setattr(token_index, "PARTITION_IDS", 1000)  # the migration's take a million
    engine = database.make_engine(own_postgres_url)
    database.upgrade(engine, MIGRATIONS)
    try:
        with pytest.raises(ValueError, match=r"token_entries_p0 .* from 0 to 1000000"):
            submit(BrokerStore(engine), "a", 1, [entry("a", 0)])
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM token_entries")).scalar() == 0
    finally:
        engine.dispose()


def test_rolled_back_inserts_do_not_leave_the_partitions_behind(small_partitions):
    """Batches that fail after their COPY use up ids; the next one still finds a partition."""
    broker = BrokerStore(small_partitions)
    submit(broker, "a", 1, [entry("a", 0)])  # 2,000,000; partitions up to 2,001,000

    def signing_fails(draft: NoticeDraft) -> bytes:
        raise RuntimeError("signing is down")

    for n in range(4):  # 4 x 225 ids taken and rolled back, up to 2,000,900
        batch = [entry("b", 0)] + [entry("b", 10_000 * n + k + 1, r=k) for k in range(224)]
        with pytest.raises(RuntimeError, match="signing is down"):
            submit(broker, "b", 10 + n, batch, sign_notice=signing_fails)
    # This batch's ids run past 2,001,000: its partition must be made first.
    batch = [entry("b", 0)] + [entry("b", 90_000 + k, r=k) for k in range(149)]
    assert submit(broker, "b", 20, batch).notified == ("a", "b")
    # The filter knows both partitions; a later batch finds tokens in either.
    assert broker.tokens.index._seen is not None
    assert broker.tokens.index._seen.partitions.starts == [2_000_000, 2_001_000]
    later = [entry("c", 0), entry("c", 90_000), entry("c", 90_148)]
    assert submit(broker, "c", 21, later).notified == ("a", "b", "c")


class _Recording:
    """A driver connection that notes the token-index partitions its statements read."""

    def __init__(self, driver, asked: list[set[int]]) -> None:
        self._driver = driver
        self._asked = asked

    def execute(self, query, *args, **kwargs):
        if isinstance(query, str) and "token_prefix = ANY" in query and "token_entries" in query:
            assert "FROM token_entries " not in query  # never through the parent table
            found = re.findall(r"FROM token_entries_p(\d+) ", query)
            self._asked.append({int(start) for start in found})
        return self._driver.execute(query, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._driver, name)


def test_tokens_are_looked_up_only_in_the_partitions_that_may_hold_them(
    small_partitions, monkeypatch
):
    loader = BrokerStore(small_partitions)
    for n in range(3):  # one partition each
        submit(loader, "a", n, [entry("a", 1000 * n + k, r=k) for k in range(1000)])
    asked: list[set[int]] = []
    original = BrokerDatabase.driver

    def recording(self, tx):
        return _Recording(original(self, tx), asked)

    monkeypatch.setattr(BrokerDatabase, "driver", recording)
    # The loader's filter learnt its own inserts; a new one scans the index.
    # (b's entries go to the next partition, 2,003,000.)
    for broker, party, partitions in (
        (loader, "b", {2_000_000, 2_002_000}),
        (BrokerStore(small_partitions), "c", {2_000_000, 2_002_000, 2_003_000}),
    ):
        wanted = [entry(party, 5), entry(party, 2999), entry(party, 70_000)]
        result = submit(broker, party, ord(party), wanted)
        assert set(result.notified) == {"a", "b", party}
        assert asked.pop() == partitions
    assert sorted(g.token for g in loader.tokens.open_groups()) == [token(5), token(2999)]


def test_a_second_process_s_rows_in_a_new_partition_are_caught_up_by_id(small_partitions):
    first, second = BrokerStore(small_partitions), BrokerStore(small_partitions)
    submit(first, "a", 1, [entry("a", 0)])  # builds first's filter: one row, at 2,000,000
    # Ids 2,000,001 to 2,001,500: the rest of that partition and half the next one.
    submit(second, "b", 2, [entry("b", 10 + k, r=k) for k in range(1500)])
    wanted = [entry("c", 10), entry("c", 1509), entry("c", 99_999)]
    assert set(submit(first, "c", 3, wanted).notified) == {"b", "c"}
    assert sorted(g.token for g in first.tokens.open_groups()) == sorted([token(10), token(1509)])
    assert first.tokens.index._seen is not None
    assert first.tokens.index._seen.partitions.starts == [2_000_000, 2_001_000]


def test_the_filter_learns_only_what_committed(small_partitions, monkeypatch):
    """A batch whose rows went into a new partition, then failed before its commit: the
    partition is gone with it, and the filter never heard of either."""
    broker, ids = BrokerStore(small_partitions), Ids()
    submit(broker, "a", 1, [entry("a", k, r=k) for k in range(900)], ids=ids)  # to 2,000,899
    original = BrokerDatabase.audit
    failures = [RuntimeError("the audit log is down")]

    def audit_fails_once(self, tx, events, now):
        if failures:
            raise failures.pop()
        return original(self, tx, events, now)

    monkeypatch.setattr(BrokerDatabase, "audit", audit_fails_once)
    crossing = [entry("b", 0)] + [entry("b", 5000 + k, r=k) for k in range(199)]
    with pytest.raises(RuntimeError, match="audit log is down"):
        submit(broker, "b", 2, crossing, ids=ids)
    assert broker.tokens.index._seen is not None
    assert broker.tokens.index._seen.partitions.starts == [2_000_000]
    # The same batch again: it is looked up, stored and matched as if for the first time.
    assert submit(broker, "b", 2, crossing, ids=ids).notified == ("a", "b")
    assert broker.tokens.index._seen.partitions.starts == [2_000_000, 2_001_000]
    later = [entry("c", 5000), entry("c", 5198)]  # in the first partition, and the new one
    assert set(submit(broker, "c", 3, later, ids=ids).notified) == {"b", "c"}


def test_a_new_filter_finds_the_row_at_a_partition_s_first_id(small_partitions):
    submit(BrokerStore(small_partitions), "a", 1, [entry("a", 0)])  # id 2,000,000
    fresh = BrokerStore(small_partitions)
    assert submit(fresh, "b", 2, [entry("b", 0)]).notified == ("a", "b")
    assert fresh.tokens.index._seen is not None
    assert fresh.tokens.index._seen.partitions.starts == [2_000_000]


def test_a_malformed_token_is_refused_by_name_once_the_filter_looks_ahead(pg_engine):
    """Once the filter is built, a batch's lookups go out before it is parsed: a short
    token must still get the parser's error, naming it, and store nothing."""
    broker = BrokerStore(pg_engine)
    submit(broker, "a", 1, [entry("a", 0)])
    for n, bad in enumerate((b"short", bytes(16), bytes(33))):  # the last two looked up early
        malformed = replace(entry("b", 1), token=bad)
        with pytest.raises(InvalidInput, match="token must be 32 bytes") as raised:
            submit(broker, "b", 2 + n, [entry("b", 0), malformed])
        assert raised.value.field == "entries[1].token"
    assert broker.tokens.count_tokens() == 1
    assert submit(broker, "b", 9, [entry("b", 0)]).notified == ("a", "b")


def test_the_filter_can_be_built_before_the_first_submission(pg_engine, sqlite_url):
    loader = BrokerStore(pg_engine)
    submit(loader, "a", 1, [entry("a", n, r=n) for n in range(5)])
    started = BrokerStore(pg_engine)
    assert started.tokens.prepare_index() == 5
    built = started.tokens.index._seen
    assert submit(started, "b", 2, [entry("b", 3)]).notified == ("a", "b")
    assert started.tokens.index._seen is built  # caught up by id, not scanned again
    sqlite = database.make_engine(sqlite_url)
    try:
        assert BrokerStore(sqlite).tokens.prepare_index() is None
    finally:
        sqlite.dispose()


def test_a_second_broker_process_never_misses_what_the_first_indexed(pg_engine):
    """Each store keeps its own filter; one that was built before another store added a
    token still finds that token (it reads the rows added since, by id)."""
    first, second = BrokerStore(pg_engine), BrokerStore(pg_engine)
    ids = Ids()
    submit(first, "a", 1, [entry("a", 100)], ids=ids)  # builds first's filter
    submit(second, "b", 2, [entry("b", n) for n in range(10)], ids=ids)
    result = submit(first, "c", 3, [entry("c", 3), entry("c", 200)], ids=ids)
    assert result.notified == ("b", "c")
    assert [g.token for g in first.tokens.open_groups()] == [token(3)]
    # And the other way round: second's filter learns of first's inserts.
    result = submit(second, "d", 4, [entry("d", 200)], ids=ids)
    assert result.notified == ("c", "d")
    assert first.tokens.index._seen is not None
    assert second.tokens.index._seen is not None
    with pg_engine.connect() as conn:
        newest = conn.execute(sa.text("SELECT max(id) FROM token_entries")).scalar_one()
    assert second.tokens.index._seen.last_id == newest
    assert first.tokens.index._seen.last_id < newest  # it reads second's last row at its next batch


def test_a_filter_grown_too_full_is_built_anew_and_bigger(pg_engine, monkeypatch):
    monkeypatch.setattr(token_filter, "MIN_BITS_LOG2", 6)  # 64 bits: full after 8 prefixes
    monkeypatch.setattr(token_filter, "MIN_INDEX_PREFIXES", 1)
    broker = BrokerStore(pg_engine)
    submit(broker, "a", 1, [entry("a", 0)])
    small = broker.tokens.index._seen
    assert small is not None
    assert small.prefixes.bits == 64
    submit(broker, "a", 2, [entry("a", n, r=n) for n in range(1, 10)])  # 10 prefixes
    assert broker.tokens.index._seen is small
    assert small.wants_rebuild
    result = submit(broker, "b", 3, [entry("b", 0), entry("b", 9), entry("b", 99)])
    assert result.notified == ("a", "b")
    assert broker.tokens.index._seen is not small  # scanned again, sized for the rows there are
    assert broker.tokens.index._seen.prefixes.bits == 256
    assert broker.tokens.index._seen.prefixes.added == 13


def test_a_filter_far_behind_is_built_anew_from_the_index(pg_engine, monkeypatch):
    monkeypatch.setattr(token_index, "_FILTER_CATCH_UP_ROWS", 3)
    first, second = BrokerStore(pg_engine), BrokerStore(pg_engine)
    ids = Ids()
    submit(first, "a", 1, [entry("a", 100)], ids=ids)
    built = first.tokens.index._seen
    submit(second, "b", 2, [entry("b", n) for n in range(10)], ids=ids)
    result = submit(first, "c", 3, [entry("c", 7)], ids=ids)
    assert result.notified == ("b", "c")
    assert first.tokens.index._seen is not built  # scanned again rather than read row by row
    assert first.tokens.index._seen is not None
    assert first.tokens.index._seen.prefixes.added == 12


def test_the_first_submission_scans_the_index_partition_by_partition(small_partitions):
    loader = BrokerStore(small_partitions)
    for n in range(12):  # partitions from 2,000,000 to 2,011,000
        submit(loader, "a", n, [entry("a", 1000 * n + k, r=k) for k in range(1000)])
    with small_partitions.begin() as conn:  # all of one expired, say
        conn.execute(sa.text("DELETE FROM token_entries_p2005000"))
    fresh = BrokerStore(small_partitions)
    wanted = [entry("b", 0), entry("b", 5500), entry("b", 11_999), entry("b", 50_000)]
    result = submit(fresh, "b", 99, wanted)
    assert result.stored == 4
    assert sorted(g.token for g in fresh.tokens.open_groups()) == sorted([token(0), token(11_999)])
    assert fresh.tokens.index._seen is not None
    assert fresh.tokens.index._seen.prefixes.added == 11_004
    starts = [2_000_000 + 1000 * n for n in range(13) if n != 5]  # b's went to 2,012,000
    assert fresh.tokens.index._seen.partitions.starts == starts
    with small_partitions.connect() as conn:
        newest = conn.execute(sa.text("SELECT max(id) FROM token_entries")).scalar_one()
    assert fresh.tokens.index._seen.last_id == newest


def test_prefix_is_a_signed_64_bit_integer():
    assert token_index.prefix64(b"\x00" * 32) == 0
    assert token_index.prefix64(b"\xff" * 8 + b"\x00" * 24) == -1
    assert token_index.prefix64(b"\x7f" + b"\xff" * 7) == 2**63 - 1
    assert matching.TOKEN_BYTES == 32


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=-11)), timezone(timedelta(hours=13, minutes=45))]
        ),
    )
)
def test_the_fast_sqlite_time_is_what_sqlalchemy_would_store(moment):
    engine = database.make_engine("sqlite://")
    column = TokenEntry.__table__.c.expires_at.type.dialect_impl(engine.dialect)
    assert database.sqlite_stamp(moment) == column.bind_processor(engine.dialect)(moment)


def test_the_fast_sqlite_time_refuses_a_naive_one():
    with pytest.raises(ValueError, match="naive"):
        database.sqlite_stamp(datetime(2026, 1, 1))


@pytest.fixture
def own_pg_engine(own_postgres_url) -> Iterator[sa.Engine]:
    """A database of this test's own: its id sequence is set back."""
    engine = database.make_engine(own_postgres_url)
    database.upgrade(engine, MIGRATIONS)
    yield engine
    engine.dispose()


def test_a_filter_rebuilds_itself_when_the_index_went_back(own_pg_engine):
    """A restore from an older backup (or a failover to a standby that lagged) sets the id
    sequence back: ids the running filter covers are handed out again, to rows it would
    never read. It notices by the sequence, says so, and builds itself anew: no hit missed."""
    running, ids = BrokerStore(own_pg_engine), Ids()
    submit(running, "a", 1, [entry("a", 0)], ids=ids)
    with own_pg_engine.connect() as conn:
        backup_id = conn.execute(sa.text("SELECT max(id) FROM token_entries")).scalar_one()
    submit(running, "a", 2, [entry("a", n, r=n) for n in range(1, 10)], ids=ids)
    covered = running.tokens.index._seen
    assert covered is not None
    assert covered.last_id == backup_id + 9
    with own_pg_engine.begin() as conn:  # the backup taken after batch 1, restored
        conn.execute(sa.text("DELETE FROM token_entries WHERE id > :id"), {"id": backup_id})
        conn.execute(
            sa.text("DELETE FROM processed_batches WHERE client_batch_id = :b"), {"b": batch_id(2)}
        )
        conn.execute(sa.text("SELECT setval('token_entries_id_seq', :id)"), {"id": backup_id})
    # Another replica stores a token the running filter never saw, at an id it covers.
    submit(BrokerStore(own_pg_engine), "b", 3, [entry("b", 50)], ids=ids)
    with structlog.testing.capture_logs() as logged:
        result = submit(running, "c", 4, [entry("c", 50)], ids=ids)
    assert result.notified == ("b", "c")
    assert [g.token for g in running.tokens.open_groups()] == [token(50)]
    assert running.tokens.index._seen is not covered
    warned = [e for e in logged if e["log_level"] == "warning"]
    assert [e["filter_covers_id"] for e in warned] == [backup_id + 9]
    assert warned[0]["sequence_issued_id"] == backup_id + 1


def test_a_filter_rebuilds_itself_on_another_database_server(own_pg_engine):
    """A failover to a standby that had every row still means another server (or one
    that restarted): the filter is built anew, once, rather than trusted."""
    running, ids = BrokerStore(own_pg_engine), Ids()
    submit(running, "a", 1, [entry("a", 0)], ids=ids)
    built = running.tokens.index._seen
    assert built is not None
    assert built.server_started is not None
    submit(running, "a", 2, [entry("a", 1, r=1)], ids=ids)
    assert running.tokens.index._seen is built  # the same server: caught up, not rebuilt
    built.server_started = None  # as if it had been read from another server
    with structlog.testing.capture_logs() as logged:
        result = submit(running, "b", 3, [entry("b", 1)], ids=ids)
    assert result.notified == ("a", "b")
    assert running.tokens.index._seen is not built
    assert [e["server_restarted"] for e in logged if e["log_level"] == "warning"] == [True]
    submit(running, "b", 4, [entry("b", 2, r=2)], ids=ids)
    assert running.tokens.index._seen.prefixes.added == 4  # no second rebuild


# --- covenant timestamps ------------------------------------------------------------------------


def test_replicas_starting_together_keep_one_covenant_timestamp(database_url, engine):
    """Issue 15: broker replicas started at once each take the same timestamp file. The
    check and the write are one statement, so one of them keeps it and the others find it
    held (it used to be a read then an insert: the second replica died on the key)."""
    stamp = TimestampRecord(1, b"signed-1", NOW, NOW + timedelta(days=1))
    engines = [database.make_engine(database_url) for _ in range(4)]
    barrier = threading.Barrier(len(engines))
    results: list[object] = []

    def start(worker: int) -> None:
        barrier.wait()
        try:
            store = BrokerStore(engines[worker])
            results.append(store.covenants.publish_timestamp(stamp, recipients=[], now=NOW))
        except BaseException as error:
            results.append(error)

    threads = [threading.Thread(target=start, args=(w,)) for w in range(len(engines))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for other in engines:
            other.dispose()
    assert sorted(results, key=repr) == [False, False, False, True]
    broker = BrokerStore(engine)
    assert broker.covenants.covenant_timestamp(1) == stamp
    # An older one changes nothing; a newer one replaces it.
    older = TimestampRecord(1, b"older", NOW - timedelta(hours=1), NOW + timedelta(days=1))
    assert broker.covenants.publish_timestamp(older, recipients=[], now=NOW) is False
    newer = TimestampRecord(1, b"newer", NOW + timedelta(hours=1), NOW + timedelta(days=2))
    assert broker.covenants.publish_timestamp(newer, recipients=[], now=NOW) is True
    assert broker.covenants.covenant_timestamp(1) == newer
