"""The node's store on real databases: SQLite (a temporary file) and PostgreSQL."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from samenloop.node.daemon.database import Database
from samenloop.node.daemon.models import Base
from samenloop.node.daemon.repositories import MIGRATIONS, Repositories
from samenloop.node.identifiers.normalise import Identifier, IdentifierType, parse
from samenloop.node.signals import store as signal_store
from samenloop.node.signals.models import (
    AreaKind,
    BatchKind,
    HitKind,
    HitState,
    IdentifierState,
    SignalState,
)
from samenloop.node.signals.store import CoarseAttributes, NewSignal
from samenloop.node.tokens.holder import ANSWERED_AGAIN, UNVERIFIED, AnsweredRequest, HolderEvent
from samenloop.node.tokens.models import HolderAnswer, HolderUsage
from samenloop.policies import database
from samenloop.policies.audit import AuditKind
from samenloop.policies.errors import (
    ConfigurationError,
    InvalidInput,
    MessageTooLarge,
    NotFound,
    Replay,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=365)


def kvk(n: int) -> Identifier:
    return Identifier(IdentifierType.KVK, f"{n:08d}")


def signal(reference: str, *numbers: int, category: str = "vastgoedmisbruik", **kw) -> NewSignal:
    return NewSignal(
        reference=reference,
        category=category,
        identifiers=[kvk(n) for n in numbers or (1,)],
        expires_at=kw.pop("expires_at", LATER),
        details=kw.pop("details", {"adres": "Kerkstraat 1", "toelichting": "leegstand"}),
        **kw,
    )


def token(n: int) -> bytes:
    return n.to_bytes(32, "big")


def group(n: int) -> bytes:
    return n.to_bytes(16, "big")


def table_counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in Base.metadata.sorted_tables
        }


def clear(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = database.make_engine(database_url)
    database.upgrade(engine, MIGRATIONS)
    yield engine
    clear(engine)  # the PostgreSQL database lives for the module
    engine.dispose()


@pytest.fixture
def node(engine: sa.Engine) -> Repositories:
    return Repositories.open(engine, random_bytes=random.Random(7).randbytes)


def tokenise_all(node: Repositories, *, epoch: int = 1, at: datetime = NOW, seal=None):
    pending = node.signals.pending_identifiers(1000, now=at)
    return node.signals.record_tokens(
        {p.id: token(p.id) for p in pending}, epoch, now=at, seal_attributes=seal
    )


def notice(node: Repositories, cursor: int, n: int, revision: int, kind=HitKind.NEW, refs=()):
    return node.signals.accept_notice(
        cursor,
        group(n),
        revision,
        kind,
        f"signed {n} r{revision}".encode(),
        refs,
        NOW,
        NOW + timedelta(minutes=revision),
        now=NOW + timedelta(seconds=cursor),
    )


# --- migrations ---------------------------------------------------------------------


def test_migrations_go_up_down_and_up_again_and_are_checked(database_url):
    engine = database.make_engine(database_url)
    try:
        database.downgrade(engine, MIGRATIONS)  # the PostgreSQL database may be migrated
        assert database.current(engine) == ()
        with pytest.raises(ConfigurationError, match="run `samenloop node migrate`") as refused:
            database.check_at_head(engine, MIGRATIONS)
        assert refused.value.reason == "schema.behind"

        database.upgrade(engine, MIGRATIONS)
        assert database.current(engine) == database.heads(MIGRATIONS) == ("0017",)
        database.check_at_head(engine, MIGRATIONS)

        database.downgrade(engine, MIGRATIONS)
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
        with pytest.raises(ConfigurationError, match="samenloop node migrate"):
            database.check_at_head(engine, MIGRATIONS)

        database.upgrade(engine, MIGRATIONS)
        database.check_at_head(engine, MIGRATIONS)
        assert set(sa.inspect(engine).get_table_names()) >= set(Base.metadata.tables)
    finally:
        engine.dispose()


def test_a_node_with_signals_migrates_down_and_up_across_a_table_rebuild(database_url):
    """A real node's upgrade: on SQLite, Alembic's batch mode rebuilds a table that others
    refer to (0016 widens ``signal_identifiers.type``; the outbox and the hit proof keys
    refer to it), which the foreign keys would refuse mid-migration; the migration runs
    with them off and checks them before it commits. Nothing is lost either way."""
    engine = database.make_engine(database_url)
    try:
        database.downgrade(engine, MIGRATIONS)
        database.upgrade(engine, MIGRATIONS)
        node = Repositories.open(engine, random_bytes=random.Random(7).randbytes)
        node.signals.add_signals([signal("ZAAK-1", 1, 2), signal("ZAAK-2", 3)], now=NOW)
        pending = node.signals.pending_identifiers(10, now=NOW)
        node.signals.record_tokens(
            {p.id: token(p.id) for p in pending},
            1,
            now=NOW,
            proof_keys={p.id: bytes(32) for p in pending},
        )
        before = table_counts(engine)
        assert before["outbox_entries"] == before["hit_proof_keys"] == 3
        database.downgrade(engine, MIGRATIONS, "0015")
        database.upgrade(engine, MIGRATIONS)
        assert table_counts(engine) == before
        assert [i.token for i in node.signals.signal("ZAAK-1").identifiers] == [
            token(p.id) for p in pending[:2]
        ]
    finally:
        clear(engine)
        engine.dispose()


def test_a_migration_that_breaks_a_reference_is_rolled_back(sqlite_url):
    """The check before the commit: rows that refer to missing rows roll the whole
    migration run back, naming the tables, and the foreign keys are on again after."""
    engine = database.make_engine(sqlite_url)
    try:
        database.upgrade(engine, MIGRATIONS, "0015")
        node = Repositories.open(engine, random_bytes=random.Random(7).randbytes)
        node.signals.add_signals([signal("ZAAK-1", 1)], now=NOW)
        pending = node.signals.pending_identifiers(10, now=NOW)
        node.signals.record_tokens({p.id: token(p.id) for p in pending}, 1, now=NOW)
        with engine.connect() as conn:  # a reference broken, as a faulty migration would
            conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")
            conn.exec_driver_sql("UPDATE outbox_entries SET identifier_id = 999999")
            conn.commit()
            conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=ON")
        with pytest.raises(ConfigurationError) as refused:
            database.upgrade(engine, MIGRATIONS)
        assert "outbox_entries" in str(refused.value)
        assert database.current(engine) == ("0015",)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
    finally:
        engine.dispose()


def test_the_migrations_create_exactly_the_models(engine):
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert differences == []


def test_the_alembic_environment_sees_every_capabilitys_tables():
    """Each capability keeps its tables in its own models.py; the migrations' environment
    gathers them with ``metadata()`` even in a process that imported no repository (as
    ``alembic`` itself is), and gets exactly the tables the repositories use."""
    code = (
        "from samenloop.node.daemon.models import metadata\n"
        "print(','.join(sorted(metadata().tables)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == [",".join(sorted(Base.metadata.tables))]
    assert len(Base.metadata.tables) == 32


def test_a_schema_newer_than_the_software_is_refused(engine):
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'ffff'"))
    try:
        with pytest.raises(ConfigurationError, match="newer than this software"):
            database.check_at_head(engine, MIGRATIONS)
    finally:
        with engine.begin() as conn:
            (head,) = database.heads(MIGRATIONS)
            conn.execute(sa.text("UPDATE alembic_version SET version_num = :head"), {"head": head})


# --- signals ------------------------------------------------------------------------


def test_signals_are_stored_with_a_fresh_ref_per_identifier(node, engine):
    cet = NOW.astimezone(datetime.now().astimezone().tzinfo)
    attributes = CoarseAttributes(AreaKind.POSTCODE4, "5038", "5610", "2026-11")
    records = node.signals.add_signals(
        [signal("ZAAK-1", 1, 2, 3, attributes=attributes), signal("ZAAK-2", 1)],
        now=cet,
        import_batch="import-1.csv",
    )
    first, second = records
    assert [r.reference for r in records] == ["ZAAK-1", "ZAAK-2"]
    assert (first.state, first.unchanged) == (SignalState.ACTIVE, False)
    assert (first.created_at, first.created_at.tzinfo) == (NOW, UTC)
    assert (first.expires_at, first.ended_at) == (LATER, None)
    assert dict(first.details) == {"adres": "Kerkstraat 1", "toelichting": "leegstand"}
    assert (first.attributes, first.import_batch) == (attributes, "import-1.csv")
    assert [i.identifier for i in first.identifiers] == [kvk(1), kvk(2), kvk(3)]
    refs = [i.signal_ref for r in records for i in r.identifiers]
    assert len(set(refs)) == len(refs) == 4  # the same KvK in two signals: two refs
    assert all(len(ref) == 16 for ref in refs)
    assert {i.state for r in records for i in r.identifiers} == {IdentifierState.PENDING}
    assert node.signals.signal("ZAAK-1") == first
    assert node.signals.signal_by_id(second.id) == second
    assert node.signals.signal("ZAAK-3") is None


def test_a_real_parsed_identifier_round_trips(node):
    (record,) = node.signals.add_signals(
        [NewSignal("Z", "katvangers", [parse("address", "1234 ab 12-a")], LATER)], now=NOW
    )
    assert record.identifiers[0].identifier == Identifier(IdentifierType.ADDRESS, "1234AB 12 A")
    (pending,) = node.signals.pending_identifiers(10)
    assert pending.identifier == record.identifiers[0].identifier


def test_a_duplicate_reference_in_the_middle_stores_nothing(node, engine):
    node.signals.add_signals([signal("BESTAAND", 9)], now=NOW)
    before = table_counts(engine)
    with pytest.raises(Replay) as raised:
        node.signals.add_signals(
            [signal("NIEUW-1", 1), signal("BESTAAND", 8), signal("NIEUW-2", 2)], now=NOW
        )
    assert raised.value.field == "signals[1].reference"
    assert table_counts(engine) == before
    assert node.signals.signal("NIEUW-1") is None

    with pytest.raises(Replay) as raised:
        node.signals.add_signals([signal("A", 1), signal("B", 2), signal("A", 3)], now=NOW)
    assert raised.value.field == "signals[2].reference"
    assert table_counts(engine) == before


def test_the_same_signal_again_is_unchanged_and_a_withdrawn_reference_can_return(node, engine):
    (first,) = node.signals.add_signals([signal("ZAAK-1", 1, 2)], now=NOW)
    before = table_counts(engine)
    # Identifiers in another order, another (derived) expiry: the same signal.
    again = NewSignal("ZAAK-1", first.category, [kvk(2), kvk(1)], LATER + timedelta(days=1),
                      dict(first.details))  # fmt: skip
    records = node.signals.add_signals(
        [again, signal("ZAAK-2", 3), again], now=NOW + timedelta(hours=1)
    )
    assert [r.unchanged for r in records] == [True, False, True]
    assert records[0].id == records[2].id == first.id
    assert table_counts(engine)["signals"] == before["signals"] + 1

    node.signals.withdraw_signal("ZAAK-1", now=NOW)
    (reborn,) = node.signals.add_signals([signal("ZAAK-1", 5)], now=NOW)
    assert reborn.id != first.id
    assert not reborn.unchanged
    assert node.signals.signal("ZAAK-1") == reborn


def test_concurrent_adds_of_one_reference_store_it_once(database_url, engine):
    engines = [database.make_engine(database_url) for _ in range(4)]
    results: list[object] = []
    start = threading.Barrier(4)

    def add(worker: int) -> None:
        store = Repositories.open(engines[worker])
        start.wait()
        try:
            results.append(store.signals.add_signals([signal("SAMEN", 1, 2)], now=NOW)[0].unchanged)
        except BaseException as error:
            results.append(error)

    threads = [threading.Thread(target=add, args=(w,)) for w in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for other in engines:
            other.dispose()
    assert sorted(results, key=str) == [False, True, True, True]
    assert table_counts(engine)["signals"] == 1


@pytest.mark.parametrize(
    ("bad", "error", "field"),
    [
        (signal("", 1), InvalidInput, "signals[1].reference"),
        (signal("R", 1, category=""), InvalidInput, "signals[1].category"),
        (signal("R", *range(1, 34)), MessageTooLarge, "signals[1].identifiers"),
        (NewSignal("R", "c", [], LATER), InvalidInput, "signals[1].identifiers"),
        (signal("R", 1, 2, 1), InvalidInput, "signals[1].identifiers[2]"),
        (signal("R", details={f"f{i}": "x" for i in range(65)}), MessageTooLarge,
         "signals[1].details"),
        (signal("R", details={"f": "x" * 4097}), InvalidInput, "signals[1].details[f]"),
        (signal("R", expires_at=datetime(2027, 1, 1)), InvalidInput, "signals[1].expires_at"),
        (signal("R", attributes=CoarseAttributes(month="2026-13")), InvalidInput,
         "signals[1].attributes.month"),
        (signal("R", attributes=CoarseAttributes(AreaKind.CBS_WIJK)), InvalidInput,
         "signals[1].attributes.area"),
    ],
)  # fmt: skip
def test_bad_signals_are_refused_naming_the_field_and_store_nothing(
    node, engine, bad, error, field
):
    with pytest.raises(error) as raised:
        node.signals.add_signals([signal("GOED", 1), bad], now=NOW)
    assert raised.value.field == field
    assert set(table_counts(engine).values()) == {0}


# --- tokens and the outbox ---------------------------------------------------------


def test_tokens_and_their_submit_batch_are_stored_together(node):
    (record,) = node.signals.add_signals([signal("ZAAK-1", 1, 2)], now=NOW)
    pending = node.signals.pending_identifiers(10, now=NOW)
    assert [p.id for p in pending] == [i.id for i in record.identifiers]
    assert {p.category for p in pending} == {"vastgoedmisbruik"}

    (batch,) = node.signals.record_tokens(
        {p.id: token(p.id) for p in pending},
        3,
        now=NOW,
        seal_attributes=lambda c: b"box:" + c.encode(),
    )
    assert (batch.kind, batch.key_epoch, len(batch.client_batch_id)) == (BatchKind.SUBMIT, 3, 16)
    assert [(e.signal_ref, e.token, e.expires_at, e.category, e.sealed_attributes)
            for e in batch.entries] == [
        (i.signal_ref, token(i.id), LATER, "vastgoedmisbruik", b"box:vastgoedmisbruik")
        for i in record.identifiers
    ]  # fmt: skip
    assert node.signals.outbox() == [batch]
    stored = node.signals.signal("ZAAK-1")
    assert [(i.state, i.token, i.key_epoch) for i in stored.identifiers] == [
        (IdentifierState.TOKENISED, token(i.id), 3) for i in record.identifiers
    ]
    assert node.signals.pending_identifiers(10) == []
    # Recording the same tokens again (a retry after a crash) changes nothing.
    assert node.signals.record_tokens({p.id: token(p.id) for p in pending}, 3, now=NOW) == []
    assert node.signals.outbox() == [batch]


def test_a_failure_while_recording_tokens_leaves_nothing(node, engine):
    node.signals.add_signals([signal("ZAAK-1", 1, 2)], now=NOW)
    pending = node.signals.pending_identifiers(10)

    def broken_seal(category: str) -> bytes:  # runs after the tokens are written
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        node.signals.record_tokens({p.id: token(p.id) for p in pending}, 1, now=NOW,
                           seal_attributes=broken_seal)  # fmt: skip
    assert node.signals.pending_identifiers(10) == pending
    assert node.signals.outbox() == []
    assert {i.token for i in node.signals.signal("ZAAK-1").identifiers} == {None}


def test_submit_batches_are_split_at_the_limit(node, monkeypatch):
    monkeypatch.setattr(signal_store, "MAX_TOKENS_PER_BATCH", 2)
    node.signals.add_signals([signal("A", 1, 2, 3), signal("B", 4, 5)], now=NOW)
    batches = tokenise_all(node)
    assert [len(b.entries) for b in batches] == [2, 2, 1]
    assert len({b.client_batch_id for b in batches}) == 3
    assert node.signals.outbox() == batches
    assert node.signals.outbox(limit=2) == batches[:2]


def test_the_outbox_survives_a_crash_unchanged_until_acked(database_url, engine):
    first = Repositories.open(engine)
    first.signals.add_signals([signal("A", 1, 2), signal("B", 3)], now=NOW)
    created = tokenise_all(first, seal=lambda c: b"sealed " + c.encode())
    engine.dispose()  # the node dies; a new process opens the same database

    restarted = database.make_engine(database_url)
    try:
        second = Repositories.open(restarted)
        assert second.signals.outbox() == created  # same batch id, same entries, same sealed bytes
        assert second.signals.outbox() == created  # and again, until acknowledged
        assert second.signals.mark_acked(created[0].client_batch_id, now=NOW) is True
        assert (
            second.signals.mark_acked(created[0].client_batch_id, now=NOW) is False
        )  # repeated ack
        assert second.signals.outbox() == []
        states = {i.state for r in ("A", "B") for i in second.signals.signal(r).identifiers}
        assert states == {IdentifierState.SUBMITTED}
        assert second.signals.status_counts().outbox_batches == 0
        with pytest.raises(NotFound) as raised:
            second.signals.mark_acked(b"\x00" * 16, now=NOW)
        assert raised.value.field == "client_batch_id"
    finally:
        restarted.dispose()


def test_withdrawal_queues_a_withdraw_batch_behind_the_submit_batch(node):
    node.signals.add_signals([signal("ZAAK-1", 1, 2), signal("ZAAK-2", 3)], now=NOW)
    pending = node.signals.pending_identifiers(10)
    # One identifier of ZAAK-1 is tokenised (and not yet acked), the other is not.
    (submit,) = node.signals.record_tokens(
        {pending[0].id: token(1), pending[2].id: token(3)}, 1, now=NOW
    )

    withdrawn = node.signals.withdraw_signal("ZAAK-1", now=NOW + timedelta(hours=1))
    assert withdrawn.state is SignalState.WITHDRAWN
    assert withdrawn.ended_at == NOW + timedelta(hours=1)
    assert [i.state for i in withdrawn.identifiers] == [
        IdentifierState.WITHDRAW_PENDING,
        IdentifierState.WITHDRAWN,  # never left the node: nothing to withdraw
    ]
    first, second = node.signals.outbox()
    assert first == submit
    assert (second.kind, second.key_epoch) == (BatchKind.WITHDRAW, None)
    assert [(e.signal_ref, e.token) for e in second.entries] == [
        (withdrawn.identifiers[0].signal_ref, None)
    ]
    # The submit ack does not resurrect the withdrawn identifier; the withdraw ack ends it.
    node.signals.mark_acked(submit.client_batch_id, now=NOW)
    assert node.signals.signal("ZAAK-1").identifiers[0].state is IdentifierState.WITHDRAW_PENDING
    assert node.signals.signal("ZAAK-2").identifiers[0].state is IdentifierState.SUBMITTED
    node.signals.mark_acked(second.client_batch_id, now=NOW)
    assert {i.state for i in node.signals.signal("ZAAK-1").identifiers} == {
        IdentifierState.WITHDRAWN
    }
    assert node.signals.outbox() == []

    # Withdrawing again changes nothing; an unknown reference is not found.
    assert node.signals.withdraw_signal(
        "ZAAK-1", now=NOW + timedelta(days=1)
    ) == node.signals.signal("ZAAK-1")
    assert node.signals.outbox() == []
    with pytest.raises(NotFound) as raised:
        node.signals.withdraw_signal("ZAAK-9", now=NOW)
    assert raised.value.field == "reference"
    assert (
        node.signals.withdraw_signal(signal_id=withdrawn.id, now=NOW).state is SignalState.WITHDRAWN
    )


def test_tokens_for_an_identifier_withdrawn_meanwhile_are_dropped(node):
    node.signals.add_signals([signal("ZAAK-1", 1)], now=NOW)
    pending = node.signals.pending_identifiers(10)  # the tokeniser starts...
    node.signals.withdraw_signal("ZAAK-1", now=NOW)  # ...the partner withdraws...
    assert node.signals.record_tokens({p.id: token(p.id) for p in pending}, 1, now=NOW) == []
    assert node.signals.outbox() == []
    assert node.signals.signal("ZAAK-1").identifiers[0].state is IdentifierState.WITHDRAWN


def test_expiry_ends_signals_and_withdraws_their_tokens(node):
    soon = NOW + timedelta(days=1)
    node.signals.add_signals(
        [
            signal("KORT", 1, expires_at=soon),
            signal("LANG", 2),
            signal("KORT-2", 3, expires_at=soon),
        ],
        now=NOW,
    )
    pending = node.signals.pending_identifiers(10)
    (submit,) = node.signals.record_tokens(
        {pending[0].id: token(1), pending[1].id: token(2)}, 1, now=NOW
    )
    node.signals.mark_acked(submit.client_batch_id, now=NOW)

    later = soon + timedelta(seconds=1)
    assert [
        p.id for p in node.signals.pending_identifiers(10, now=later)
    ] == []  # KORT-2 has expired
    assert node.signals.record_tokens({pending[2].id: token(3)}, 1, now=later) == []
    assert node.signals.expire_signals(later, limit=1) == 1
    assert node.signals.expire_signals(later) == 1
    assert node.signals.expire_signals(later) == 0
    assert node.signals.signal("KORT").state is SignalState.EXPIRED
    assert node.signals.signal("KORT").ended_at == later
    assert node.signals.signal("LANG").state is SignalState.ACTIVE
    assert node.signals.signal("KORT-2").identifiers[0].state is IdentifierState.WITHDRAWN
    (withdraw,) = node.signals.outbox()
    assert withdraw.kind is BatchKind.WITHDRAW
    assert [e.signal_ref for e in withdraw.entries] == [
        node.signals.signal("KORT").identifiers[0].signal_ref
    ]
    counts = node.signals.status_counts()
    assert dict(counts.signals) == {
        SignalState.ACTIVE: 1,
        SignalState.WITHDRAWN: 0,
        SignalState.EXPIRED: 2,
    }


def test_a_rejected_submit_batch_sends_its_identifiers_back_to_tokenising(node):
    node.signals.add_signals([signal("ZAAK-1", 1)], now=NOW)
    (batch,) = tokenise_all(node)
    assert node.signals.reject_batch(batch.client_batch_id, now=NOW) is True
    assert node.signals.reject_batch(batch.client_batch_id, now=NOW) is False
    assert node.signals.mark_acked(batch.client_batch_id, now=NOW) is False
    assert node.signals.outbox() == []
    (identifier,) = node.signals.signal("ZAAK-1").identifiers
    assert (identifier.state, identifier.token) == (IdentifierState.PENDING, None)
    (again,) = tokenise_all(node, epoch=2)
    assert again.client_batch_id != batch.client_batch_id
    assert again.key_epoch == 2


def test_bad_token_input_is_refused(node):
    node.signals.add_signals([signal("ZAAK-1", 1)], now=NOW)
    (pending,) = node.signals.pending_identifiers(10)
    with pytest.raises(InvalidInput) as raised:
        node.signals.record_tokens({pending.id: b"short"}, 1, now=NOW)
    assert raised.value.field == f"tokens[{pending.id}]"
    with pytest.raises(InvalidInput) as raised:
        node.signals.record_tokens({pending.id: token(1)}, 0, now=NOW)
    assert raised.value.field == "key_epoch"
    assert node.signals.outbox() == []


def proof_key(n: int) -> bytes:
    return bytes([n]) * 32


def test_hit_proof_keys_are_stored_with_their_tokens_and_go_with_them(node, engine):
    (record,) = node.signals.add_signals([signal("ZAAK-1", 1, 2)], now=NOW)
    first, second = node.signals.pending_identifiers(10, now=NOW)
    (batch,) = node.signals.record_tokens(
        {first.id: token(1), second.id: token(2)},
        1,
        now=NOW,
        proof_keys={first.id: proof_key(1)},  # the second as tokenised before hit proofs
    )
    one, two = (i.signal_ref for i in record.identifiers)
    assert node.disclosures.hit_proof_key(one) == proof_key(1)
    assert node.disclosures.hit_proof_key(two) is None
    assert node.disclosures.hit_proof_key(b"\x00" * 16) is None
    # A rejected batch drops its tokens, and their keys with them; new ones come with new tokens.
    node.signals.reject_batch(batch.client_batch_id, now=NOW)
    assert node.disclosures.hit_proof_key(one) is None
    again = node.signals.pending_identifiers(10, now=NOW)
    node.signals.record_tokens(
        {p.id: token(p.id) for p in again},
        2,
        now=NOW,
        proof_keys={p.id: proof_key(p.id + 10) for p in again},
    )
    assert node.disclosures.hit_proof_key(one) == proof_key(first.id + 10)
    assert node.disclosures.hit_proof_key(two) == proof_key(second.id + 10)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM hit_proof_keys")).scalar_one() == 2


def test_bad_hit_proof_keys_are_refused_and_store_nothing(node, engine):
    node.signals.add_signals([signal("ZAAK-1", 1)], now=NOW)
    (pending,) = node.signals.pending_identifiers(10)
    before = table_counts(engine)
    cases = [
        ({pending.id: b"short"}, f"proof_keys[{pending.id}]"),
        ({pending.id: proof_key(1), pending.id + 1: proof_key(2)}, f"proof_keys[{pending.id + 1}]"),
    ]
    for keys, field in cases:
        with pytest.raises(InvalidInput) as raised:
            node.signals.record_tokens({pending.id: token(1)}, 1, now=NOW, proof_keys=keys)
        assert raised.value.field == field
    assert table_counts(engine) == before


def test_the_own_refs_of_a_hit_are_those_of_its_latest_notice(node):
    assert node.disclosures.hit_own_refs(group(1)) == frozenset()
    a, b = b"\x0a" * 16, b"\x0b" * 16
    notice(node, 1, 1, 1, refs=[a, b])
    assert node.disclosures.hit_own_refs(group(1)) == {a, b}
    notice(node, 2, 1, 2, kind=HitKind.SHRUNK, refs=[b])
    assert node.disclosures.hit_own_refs(group(1)) == {b}
    assert node.disclosures.hit_own_refs(group(2)) == frozenset()


def test_a_pending_request_without_its_hit_group_is_refused(node, engine):
    from samenloop.node.disclosure.protocol import Outcome, Verdict
    from samenloop.node.disclosure.store import NewDisclosure

    request = NewDisclosure(
        request_id=b"\x01" * 16,
        requester="gemeente",
        owner="node",
        hit_group_id=None,
        signal_ref=b"\x02" * 16,
        purpose="bibob",
        fields=("naam",),
        officer="a@gemeente",
        justification="",
        covenant_version=1,
        requested_at=NOW,
    )
    before = table_counts(engine)
    with pytest.raises(InvalidInput) as raised:
        node.disclosures.receive_request(
            1, request, Verdict(Outcome.PENDING, fields=("naam",)), None, now=NOW
        )
    assert raised.value.field == "hit_group_id"
    assert table_counts(engine) == before
    assert node.shared.mailbox_cursor() == 0


def test_a_request_is_stored_once_and_its_replay_not_on_either_database(
    node: Repositories,
) -> None:
    """``receive_request`` says whether it stored the request: on PostgreSQL too, where an
    INSERT's rowcount is not kept (it said False there, and the desk took every first
    request for a replay)."""
    from samenloop.node.disclosure.protocol import Outcome, Verdict
    from samenloop.node.disclosure.store import NewDisclosure
    from samenloop.policies.rules import Refusal

    request = NewDisclosure(
        request_id=b"\x05" * 16,
        requester="gemeente",
        owner="node",
        hit_group_id=None,
        signal_ref=b"\x06" * 16,
        purpose="bibob",
        fields=("naam",),
        officer="a@gemeente",
        justification="",
        covenant_version=1,
        requested_at=NOW,
    )
    refused = Verdict(Outcome.REFUSED, reason=Refusal.NOT_ALLOWED)
    assert node.disclosures.receive_request(1, request, refused, None, now=NOW) is True
    assert node.disclosures.receive_request(2, request, refused, None, now=NOW) is False
    assert node.disclosures.disclosure(request.request_id) is not None
    assert node.shared.mailbox_cursor() == 2


# --- the hit inbox and feed ---------------------------------------------------------


def test_a_repeated_notice_is_stored_once_and_fed_once(node):
    (record,) = node.signals.add_signals([signal("ZAAK-1", 1, 2)], now=NOW)
    refs = [i.signal_ref for i in record.identifiers]
    assert notice(node, 5, 1, 1, refs=[refs[0]]) is True
    assert notice(node, 6, 1, 1, refs=[refs[0]]) is False  # delivered again by the broker
    assert node.shared.mailbox_cursor() == 6  # saved either way
    (hit,) = node.signals.hits()
    assert (hit.revision, hit.feed_seq, hit.kind, hit.state) == (1, 1, HitKind.NEW, HitState.OPEN)
    assert hit.notice == b"signed 1 r1"
    assert hit.received_at == NOW + timedelta(seconds=5)
    (own,) = hit.own_signals
    assert (own.signal_ref, own.signal_id, own.reference, own.category, own.identifier_type) == (
        refs[0], record.id, "ZAAK-1", "vastgoedmisbruik", IdentifierType.KVK,
    )  # fmt: skip
    assert node.signals.hits(after_feed_seq=1) == []
    assert node.signals.last_feed_seq() == 1


def test_an_older_revision_is_ignored_and_a_newer_one_replaces(node):
    (record,) = node.signals.add_signals([signal("ZAAK-1", 1, 2)], now=NOW)
    refs = [i.signal_ref for i in record.identifiers]
    unknown = b"\xff" * 16
    assert notice(node, 1, 1, 3, HitKind.GROWN, refs=[refs[0]]) is True
    assert notice(node, 2, 1, 2, HitKind.NEW, refs=[refs[1]]) is False
    assert node.signals.hit(group(1)).revision == 3
    assert notice(node, 3, 2, 1) is True  # a hit this node coordinates: no own refs
    assert notice(node, 4, 1, 4, HitKind.CLOSED, refs=[refs[1], unknown]) is True

    hit = node.signals.hit(group(1))
    assert (hit.revision, hit.kind, hit.state, hit.feed_seq) == (
        4,
        HitKind.CLOSED,
        HitState.CLOSED,
        3,
    )
    assert hit.last_seen == NOW + timedelta(minutes=4)
    assert [(o.signal_ref, o.reference) for o in hit.own_signals] == [
        (refs[1], "ZAAK-1"), (unknown, None),
    ]  # fmt: skip
    assert node.signals.hit(group(2)).own_signals == ()
    assert node.signals.hit(group(3)) is None
    # The feed: each group once, at its latest change, in order; resumable.
    assert [(h.group_id, h.feed_seq) for h in node.signals.hits()] == [(group(2), 2), (group(1), 3)]
    assert [h.group_id for h in node.signals.hits(after_feed_seq=2)] == [group(1)]
    assert [h.group_id for h in node.signals.hits(HitState.OPEN)] == [group(2)]
    assert [h.group_id for h in node.signals.hits(newest_first=True)] == [group(1), group(2)]
    assert [h.group_id for h in node.signals.hits(newest_first=True, before_feed_seq=3)] == [
        group(2)
    ]
    counts = node.signals.status_counts()
    assert (counts.open_hits, counts.closed_hits, counts.mailbox_cursor) == (1, 1, 4)


def test_the_cursor_never_goes_back(node):
    assert node.shared.mailbox_cursor() == 0
    notice(node, 10, 1, 1)
    assert notice(node, 7, 1, 2) is True  # a redelivered older item still carries news
    assert node.shared.mailbox_cursor() == 10
    assert node.shared.advance_cursor(12) == 12
    assert node.shared.advance_cursor(11) == 12
    assert node.shared.mailbox_cursor() == 12


def test_an_item_the_broker_set_aside_is_recorded_and_passed(node):
    node.shared.advance_cursor(4)
    node.shared.note_set_aside(5, "hit_notice", 5_000_000, now=NOW)
    assert node.shared.mailbox_cursor() == 5
    node.shared.note_set_aside(3, "envelope", 10, now=NOW)  # redelivered: recorded, cursor stays
    assert node.shared.mailbox_cursor() == 5
    entries = node.shared.audit_entries(kind=AuditKind.MAILBOX_ITEM_SET_ASIDE)
    assert [dict(e.details) for e in entries] == [
        {"cursor": 5, "kind": "hit_notice", "bytes": 5_000_000},
        {"cursor": 3, "kind": "envelope", "bytes": 10},
    ]


def test_a_crash_before_commit_loses_the_cursor_with_the_hit(node, monkeypatch):
    (record,) = node.signals.add_signals([signal("ZAAK-1", 1)], now=NOW)
    ref = record.identifiers[0].signal_ref

    def crash(*args, **kwargs):
        raise RuntimeError("crash before commit")

    with monkeypatch.context() as patched:
        patched.setattr(Database, "_save_inbox", crash)
        with pytest.raises(RuntimeError):
            notice(node, 1, 1, 1, refs=[ref])
    # Neither the hit nor the cursor: the item is fetched and processed again.
    assert (node.signals.hits(), node.shared.mailbox_cursor()) == ([], 0)
    assert notice(node, 1, 1, 1, refs=[ref]) is True
    assert [h.feed_seq for h in node.signals.hits()] == [1]


def test_bad_notices_are_refused(node):
    with pytest.raises(InvalidInput) as raised:
        node.signals.accept_notice(1, b"short", 1, HitKind.NEW, b"n", [], NOW, NOW, now=NOW)
    assert raised.value.field == "hit_group_id"
    with pytest.raises(InvalidInput) as raised:
        node.signals.accept_notice(1, group(1), 1, HitKind.NEW, b"n", [b"x"], NOW, NOW, now=NOW)
    assert raised.value.field == "own_signal_refs[0]"
    with pytest.raises(InvalidInput) as raised:
        node.signals.accept_notice(1, group(1), 0, HitKind.NEW, b"n", [], NOW, NOW, now=NOW)
    assert raised.value.field == "revision"
    with pytest.raises(InvalidInput) as raised:
        node.signals.accept_notice(1, group(1), 1, "gone", b"n", [], NOW, NOW, now=NOW)
    assert raised.value.field == "kind"
    assert (node.shared.mailbox_cursor(), node.signals.hits()) == (0, [])


def test_concurrent_notices_get_distinct_feed_seqs_in_commit_order(database_url, engine):
    engines = [database.make_engine(database_url) for _ in range(4)]
    errors: list[BaseException] = []

    def deliver(worker: int) -> None:
        store = Repositories.open(engines[worker])
        try:
            for n in range(10):
                notice(store, worker * 10 + n + 1, worker * 10 + n, 1)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=deliver, args=(w,)) for w in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for other in engines:
            other.dispose()
    assert errors == []
    node = Repositories.open(engine)
    assert [h.feed_seq for h in node.signals.hits(limit=100)] == list(range(1, 41))
    assert node.shared.mailbox_cursor() == 40


# --- status and key-holder counters -------------------------------------------------


def test_status_counts(node):
    node.signals.add_signals([signal("A", 1, 2), signal("B", 3)], now=NOW)
    counts = node.signals.status_counts()
    assert counts.identifiers_pending == 3
    assert (counts.outbox_batches, counts.outbox_entries) == (0, 0)
    tokenise_all(node)
    node.signals.withdraw_signal("B", now=NOW)
    counts = node.signals.status_counts()
    assert dict(counts.signals) == {
        SignalState.ACTIVE: 1,
        SignalState.WITHDRAWN: 1,
        SignalState.EXPIRED: 0,
    }
    assert counts.identifiers_pending == 0
    assert (counts.outbox_batches, counts.outbox_entries) == (2, 4)
    assert (counts.open_hits, counts.closed_hits, counts.mailbox_cursor) == (0, 0, 0)


def test_key_holder_counters_per_party_and_day(node):
    node.tokens.count_evaluation("gemeente", now=NOW, elements=10)
    node.tokens.count_evaluation("gemeente", now=NOW + timedelta(hours=1), elements=5)
    node.tokens.count_holder_events({HolderEvent("gemeente", "STALE", NOW.date()): 1}, now=NOW)
    node.tokens.count_evaluation("gemeente", now=NOW + timedelta(days=1), elements=7)
    node.tokens.count_evaluation("politie", now=NOW, elements=1)
    assert node.tokens.evaluations_on("gemeente", NOW.date()) == 15
    assert node.tokens.evaluations_on("gemeente", (NOW + timedelta(days=1)).date()) == 7
    assert node.tokens.evaluations_on("fiod", NOW.date()) == 0
    totals = node.tokens.holder_totals()
    assert (totals.requests_served, totals.elements_evaluated, totals.requests_refused) == (
        4,
        23,
        1,
    )


def test_an_answered_request_is_kept_with_its_count_and_refused_twice(node, engine):
    first = AnsweredRequest("gemeente", b"a" * 16, 2, NOW + timedelta(minutes=6))
    node.tokens.count_evaluation("gemeente", now=NOW, elements=4, answered=first)
    assert node.tokens.answered_requests(now=NOW) == [first]
    before = table_counts(engine)
    # The same (requester, request id, holder index) again: nothing is counted or stored.
    with pytest.raises(Replay) as raised:
        node.tokens.count_evaluation("gemeente", now=NOW, elements=4, answered=first)
    assert raised.value.field == "request_id"
    assert table_counts(engine) == before
    assert node.tokens.evaluations_on("gemeente", NOW.date()) == 4
    # Another holder index or request id is another request.
    other_seat = AnsweredRequest("gemeente", b"a" * 16, 3, NOW + timedelta(minutes=6))
    node.tokens.count_evaluation("gemeente", now=NOW, elements=1, answered=other_seat)
    assert node.tokens.evaluations_on("gemeente", NOW.date()) == 5
    (entry,) = [e for e in node.shared.audit_entries() if e.kind == "oprf_evaluation"][-1:]
    assert entry.subject == ((b"a" * 16).hex(),)
    assert dict(entry.details) == {"elements": 1, "refused": False}


def test_answered_requests_are_kept_until_they_can_no_longer_be_fresh(node):
    early = AnsweredRequest("politie", b"e" * 16, 1, NOW + timedelta(minutes=1))
    late = AnsweredRequest("politie", b"l" * 16, 1, NOW + timedelta(minutes=6))
    node.tokens.count_evaluation("politie", now=NOW, elements=1, answered=early)
    node.tokens.count_evaluation("politie", now=NOW, elements=1, answered=late)
    assert node.tokens.answered_requests(now=NOW + timedelta(minutes=1)) == [early, late]
    assert node.tokens.answered_requests(now=NOW + timedelta(minutes=2)) == [late]
    # The next answer deletes what expired.
    later = AnsweredRequest("politie", b"n" * 16, 1, NOW + timedelta(minutes=9))
    node.tokens.count_evaluation(
        "politie", now=NOW + timedelta(minutes=2), elements=1, answered=later
    )
    with node.engine.connect() as conn:
        kept = conn.execute(sa.select(HolderAnswer.request_id)).scalars().all()
    assert sorted(kept) == [b"l" * 16, b"n" * 16]


def test_summed_refusals_are_counted_per_requester_reason_and_day_in_one_transaction(node, engine):
    today, tomorrow = NOW.date(), (NOW + timedelta(days=1)).date()
    node.tokens.count_holder_events(
        {
            HolderEvent("riec", "QUOTA_EXCEEDED", today): 40,
            HolderEvent(UNVERIFIED, "BAD_SIGNATURE", today): 500,
            HolderEvent(UNVERIFIED, "BAD_SIGNATURE", tomorrow): 2,
            HolderEvent("riec", ANSWERED_AGAIN, today): 3,
        },
        now=NOW,
    )
    assert node.tokens.answered_requests(now=NOW) == []
    entries = [e for e in node.shared.audit_entries() if e.kind == "oprf_evaluation"]
    assert [(e.actor, dict(e.details)) for e in entries] == [
        (UNVERIFIED, {"elements": 0, "refused": True, "requests": 500, "day": "2026-11-28",
                      "reason": "BAD_SIGNATURE"}),
        (UNVERIFIED, {"elements": 0, "refused": True, "requests": 2, "day": "2026-11-29",
                      "reason": "BAD_SIGNATURE"}),
        ("riec", {"elements": 0, "refused": False, "requests": 3, "day": "2026-11-28",
                  "answered_again": True}),
        ("riec", {"elements": 0, "refused": True, "requests": 40, "day": "2026-11-28",
                  "reason": "QUOTA_EXCEEDED"}),
    ]  # fmt: skip
    with engine.connect() as conn:
        usage = conn.execute(
            sa.select(HolderUsage.party, HolderUsage.day, HolderUsage.requests_refused)
        ).all()
    # Answers given again are no refusals and cost no quota: only audited.
    assert sorted(tuple(row) for row in usage) == [
        (UNVERIFIED, today, 500),
        (UNVERIFIED, tomorrow, 2),
        ("riec", today, 40),
    ]
    assert node.tokens.evaluations_on("riec", today) == 0
    # One bad event writes nothing of the rest.
    before = table_counts(engine)
    with pytest.raises(InvalidInput) as raised:
        node.tokens.count_holder_events(
            {HolderEvent("riec", "STALE", today): 1, HolderEvent("", "STALE", today): 1}, now=NOW
        )
    assert raised.value.field == "requester"
    with pytest.raises(InvalidInput) as raised:
        node.tokens.count_holder_events({HolderEvent("riec", "STALE", today): 0}, now=NOW)
    assert raised.value.field == "count"
    assert table_counts(engine) == before


def test_an_answered_entry_must_be_the_counted_partys_with_a_full_digest(node):
    entry_for = AnsweredRequest("riec", b"x" * 16, 1, NOW)
    with pytest.raises(InvalidInput) as raised:  # the entry is the counted party's
        node.tokens.count_evaluation("politie", now=NOW, elements=1, answered=entry_for)
    assert raised.value.field == "answered"
    short = AnsweredRequest("riec", b"x" * 16, 1, NOW, b"d" * 31)
    with pytest.raises(InvalidInput) as raised:
        node.tokens.count_evaluation("riec", now=NOW, elements=1, answered=short)
    assert raised.value.field == "answered.digest"
    assert node.tokens.answered_requests(now=NOW) == []


def test_an_answered_request_keeps_its_digest_across_a_restart(node):
    digested = AnsweredRequest("riec", b"x" * 16, 1, NOW + timedelta(minutes=6), b"d" * 32)
    node.tokens.count_evaluation("riec", now=NOW, elements=1, answered=digested)
    assert node.tokens.answered_requests(now=NOW) == [digested]


def test_naive_times_are_refused(node):
    with pytest.raises(ValueError, match="time zone"):
        node.signals.add_signals([signal("A", 1)], now=datetime(2026, 1, 1))


def test_migration_0011_erases_the_partners_plaintext_picture_tables(tmp_path):
    """Issue 13, finding 2: what an older version kept of a partner's picture contribution
    (its table in the clear) is erased on upgrade; the viewer's own (first asked) stays."""
    engine = database.make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        database.upgrade(engine, MIGRATIONS, "0010")
        now = datetime(2026, 12, 1, tzinfo=UTC)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO picture_collections (request_id, first_month, last_month, "
                    "measures, dimensions, asked, officer, covenant_version, created_at) "
                    "VALUES (:r, '2026-10', '2026-10', '[]', '[]', :asked, 'a', 1, :now)"
                ),
                {"r": bytes(16), "asked": '["riec", "gemeente"]', "now": now},
            )
            for party, body in (("riec", b"own table"), ("gemeente", b"gemeente's table")):
                conn.execute(
                    sa.text(
                        "INSERT INTO picture_contributions (request_id, contributor, "
                        "contributor_role, epsilon_spent, body, received_at) "
                        "VALUES (:r, :p, :p, 0, :b, :now)"
                    ),
                    {"r": bytes(16), "p": party, "b": body, "now": now},
                )
        database.upgrade(engine, MIGRATIONS)
        with engine.connect() as conn:
            bodies = dict(
                conn.execute(sa.text("SELECT contributor, body FROM picture_contributions")).all()
            )
        assert bodies == {"riec": b"own table", "gemeente": b"-"}
        database.downgrade(engine, MIGRATIONS, "0010")  # and back down
    finally:
        engine.dispose()
