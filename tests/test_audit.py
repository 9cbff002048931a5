"""The audit log: hash chain, signed checkpoints, export, both stores, migrations and the CLI.

Tampering is a table of scenarios, each one line, with the ``seq`` the error
must name. The stores run on SQLite and PostgreSQL; on PostgreSQL the module's
database is shared, so each test migrates its role's schema and drops it after.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from samenloop.broker.database import MIGRATIONS as BROKER_MIGRATIONS
from samenloop.broker.matching import Entry, NoticeDraft
from samenloop.broker.store import BrokerStore
from samenloop.node.daemon.database import Database
from samenloop.node.daemon.repositories import MIGRATIONS as NODE_MIGRATIONS
from samenloop.node.daemon.repositories import Repositories
from samenloop.node.identifiers.normalise import Identifier, IdentifierType
from samenloop.node.provision import PartySpec, Provisioned, provision
from samenloop.node.signals.models import HitKind
from samenloop.node.signals.store import NewSignal, SignalStore
from samenloop.policies import audit, audit_store, cli, database, terminal
from samenloop.policies.audit import AuditEntry, AuditKind
from samenloop.policies.config import load_broker_config, load_node_config
from samenloop.policies.covenant import Role
from samenloop.policies.crypto import PartyKeys, SignatureContext
from samenloop.policies.errors import AuditMismatch, InvalidInput, Replay
from samenloop.v1 import common_pb2

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=365)
OWNER = PartyKeys.generate("gemeente")
OTHER = PartyKeys.generate("politie")
N = 8


def build(n: int = N, *, keys: PartyKeys = OWNER) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    for i in range(n):
        entries.append(
            audit.next_entry(
                entries[-1] if entries else None,
                kind=list(AuditKind)[i % len(AuditKind)],
                actor=keys.party,
                subject=[f"{i:032x}"],
                details={"count": i, "open": i % 2 == 0, "kind": "new"},
                now=NOW + timedelta(seconds=i),
            )
        )
    return entries


def checkpoint_of(entries: list[AuditEntry], size: int, keys: PartyKeys = OWNER) -> bytes:
    return audit.sign_checkpoint(
        keys, size=size, head_hash=entries[size - 1].hash, now=NOW + timedelta(hours=1)
    )


def verify(entries, checkpoints=(), key: bytes = OWNER.public().ed25519):
    return audit.verify_log(entries, list(checkpoints), key, owner=OWNER.party)


# --- the chain ----------------------------------------------------------------------------


def test_a_chain_builds_and_verifies():
    entries = build()
    assert [e.seq for e in entries] == list(range(1, N + 1))
    assert entries[0].prev_hash == audit.GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    summary = verify(entries, [checkpoint_of(entries, 4), checkpoint_of(entries, N)])
    assert (summary.entries, summary.checkpoints, summary.checkpointed) == (N, 2, N)
    assert summary.head_hash == entries[-1].hash
    assert verify([]).entries == 0


def test_the_hash_is_domain_separated_sha256_of_canonical_json():
    entry = build(1)[0]
    canonical = entry.canonical()
    assert canonical == (
        b'{"actor":"gemeente","at":"2026-11-28T12:00:00.000000Z",'
        b'"details":{"count":0,"kind":"new","open":true},"kind":"token_submission",'
        b'"prev_hash":"' + b"0" * 64 + b'","seq":1,"subject":["' + b"0" * 32 + b'"]}'
    )
    assert entry.hash == hashlib.sha256(b"samenloop/v1 audit entry\x00" + canonical).digest()


K = 4

ALTERED = [
    ("seq", lambda e: replace(e, seq=e.seq + 100)),
    ("at", lambda e: replace(e, at=e.at + timedelta(microseconds=1))),
    ("kind", lambda e: replace(e, kind=AuditKind.DISCLOSURE_RELEASED)),
    ("actor", lambda e: replace(e, actor="politie")),
    ("subject", lambda e: replace(e, subject=("ff" * 16,))),
    ("subject removed", lambda e: replace(e, subject=())),
    ("details value", lambda e: replace(e, details=MappingProxyType({**e.details, "count": 99}))),
    ("details type", lambda e: replace(e, details=MappingProxyType({**e.details, "count": "3"}))),
    ("details added", lambda e: replace(e, details=MappingProxyType({**e.details, "x": 1}))),
    ("prev_hash", lambda e: replace(e, prev_hash=bytes(32))),
    ("hash", lambda e: replace(e, hash=bytes(32))),
]  # fmt: skip


@pytest.mark.parametrize(("name", "alter"), ALTERED, ids=[name for name, _ in ALTERED])
def test_altering_any_field_of_an_entry_names_it(name, alter):
    entries = build()
    entries[K - 1] = alter(entries[K - 1])
    with pytest.raises(AuditMismatch, match=f"entry {K} ") as caught:
        verify(entries)
    assert caught.value.seq == K


def _rehashed_from(entries: list[AuditEntry], start: int) -> list[AuditEntry]:
    """Entries from index ``start`` on rebuilt onto their (changed) predecessors."""
    out = entries[:start]
    for e in entries[start:]:
        out.append(
            audit.next_entry(
                out[-1] if out else None,
                kind=e.kind,
                actor=e.actor,
                subject=e.subject,
                details=e.details,
                now=e.at,
            )
        )
    return out


def _rewritten(entries: list[AuditEntry]) -> list[AuditEntry]:
    changed = list(entries)
    changed[K - 1] = replace(changed[K - 1], actor="politie")
    return _rehashed_from(changed, 0)


def _forged(signed: bytes) -> bytes:
    message = common_pb2.Signed.FromString(signed)
    message.signature = bytes([message.signature[0] ^ 1]) + message.signature[1:]
    return message.SerializeToString()


def _resized(signed: bytes) -> bytes:
    message = common_pb2.Signed.FromString(signed)
    body = common_pb2.AuditCheckpoint.FromString(message.body)
    body.size = 2
    message.body = body.SerializeToString()
    return message.SerializeToString()


def _alien(entries: list[AuditEntry]) -> bytes:
    body = common_pb2.AuditCheckpoint(log_owner="politie", size=N, head_hash=entries[-1].hash)
    serialized = body.SerializeToString()
    return common_pb2.Signed(
        body=serialized,
        signer="politie",
        context=SignatureContext.AUDIT_CHECKPOINT.value,
        signature=OWNER.sign(SignatureContext.AUDIT_CHECKPOINT, serialized),
    ).SerializeToString()


# (name, entries, checkpoints, the seq the error names, what the message says)
Scenario = Callable[[list[AuditEntry]], tuple[list[AuditEntry], list[bytes]]]
SCENARIOS: list[tuple[str, Scenario, int, str]] = [
    ("deleted", lambda e: (e[: K - 1] + e[K:], []), K, f"entry {K} is missing"),
    ("deleted first", lambda e: (e[1:], []), 1, "entry 1 is missing"),
    ("reordered", lambda e: ([*e[:K - 1], e[K], e[K - 1], *e[K + 1:]], []), K, "missing"),
    ("duplicated", lambda e: ([*e[:K], e[K - 1], *e[K:]], []), K + 1, f"entry {K + 1} is missing"),
    ("truncated after a checkpoint", lambda e: (e[:5], [checkpoint_of(e, N)]), 6, "truncated"),
    ("emptied after a checkpoint", lambda e: ([], [checkpoint_of(e, 3)]), 1, "truncated"),
    ("rewritten, hashes fresh", lambda e: (_rewritten(e), [checkpoint_of(e, N)]), N, "rewritten"),
    ("forged signature", lambda e: (e, [_forged(checkpoint_of(e, N))]), N, "not signed"),
    ("checkpoint changed", lambda e: (e, [_resized(checkpoint_of(e, N))]), 2, "not signed"),
    ("another key", lambda e: (e, [checkpoint_of(e, N, OTHER)]), N, "not signed"),
    ("another log's checkpoint", lambda e: (e, [_alien(e)]), N, "politie"),
    ("garbage checkpoint", lambda e: (e, [b"\xff garbage"]), 0, "not signed"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "scenario", "seq", "says"), SCENARIOS, ids=[s[0] for s in SCENARIOS]
)
def test_tampering_is_detected_and_names_the_entry(name, scenario, seq, says):
    entries, checkpoints = scenario(build())
    with pytest.raises(AuditMismatch, match=says) as caught:
        verify(entries, checkpoints)
    assert caught.value.seq == (seq or None)
    assert caught.value.reason.startswith("audit.")


def test_a_checkpoint_opens_only_with_its_owners_key():
    entries = build()
    signed = checkpoint_of(entries, N)
    opened = audit.open_checkpoint(signed, OWNER.public().ed25519)
    assert (opened.log_owner, opened.size, opened.head_hash) == ("gemeente", N, entries[-1].hash)
    assert opened.issued_at == NOW + timedelta(hours=1)
    with pytest.raises(Exception, match="signature does not verify"):
        audit.open_checkpoint(signed, OTHER.public().ed25519)


# --- what may go into an entry ------------------------------------------------------------


REFUSED_DETAILS = [
    ({"toelichting": "x" * 65}, "details.toelichting"),
    ({"Naam": "x"}, "details.Naam"),
    ({"a b": 1}, "details.a b"),
    ({"adres": "Kerkstraat 1\n5000 AA"}, "details.adres"),
    ({"naam": "Jansen-Müller"}, "details.naam"),
    ({"nested": {"bsn": "111222333"}}, "details.nested"),
    ({"ratio": 0.5}, "details.ratio"),
    ({"big": 2**63}, "details.big"),
    ({f"k{i}": i for i in range(17)}, "details"),
]  # fmt: skip


@pytest.mark.parametrize(("details", "field"), REFUSED_DETAILS)
def test_details_that_could_carry_raw_data_are_refused(details, field):
    with pytest.raises(InvalidInput) as caught:
        audit.check_details(details)
    assert caught.value.field == field


REFUSED = [
    ({"subject": ["111222333"]}, "subject[0]"),  # odd length: not an opaque id
    ({"subject": ["AB" * 16]}, "subject[0]"),
    ({"subject": ["ab" * 33]}, "subject[0]"),
    ({"subject": "abcd"}, "subject"),
    ({"subject": ["ab"] * 65}, "subject"),
    ({"actor": ""}, "actor"),
    ({"actor": "   "}, "actor"),  # spaces only
    ({"actor": "jan\x1b[31m"}, "actor"),  # a terminal escape
    ({"actor": "jan\nde vries"}, "actor"),
    ({"actor": "jan\u202eseirv"}, "actor"),  # a bidi override: a format character
    ({"actor": "jan\u200b"}, "actor"),  # zero width
    ({"actor": "\u00a0"}, "actor"),  # a separator other than the space
    ({"actor": "a" * 129}, "actor"),
    ({"kind": "gossip"}, "kind"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "field"), REFUSED)
def test_entries_refuse_bad_actors_subjects_and_kinds(change, field):
    arguments = {"kind": AuditKind.HIT_NOTICE, "actor": "gemeente", "subject": (), **change}
    with pytest.raises(InvalidInput) as caught:
        audit.next_entry(None, now=NOW, **arguments)
    assert caught.value.field == field


@pytest.mark.parametrize(
    "actor", ["gemeente", "officer:42", "Jürgen de Vries", "Bd-Teamleider-7 ", "Łukasz Żak"]
)
def test_an_officer_named_as_given_is_an_actor_that_exports_and_verifies(actor: str) -> None:
    """Officers are named in any script and with spaces, as the disclosure record shows
    them; the canonical bytes stay ASCII (JSON escapes) and the entry verifies after an
    export and a parse."""
    first = audit.next_entry(None, kind=AuditKind.DISCLOSURE_APPROVED, actor=actor, now=NOW)
    assert first.actor == actor
    assert first.canonical().isascii()
    exported = audit.encode_export(OWNER.party, NOW, [first], [checkpoint_of([first], 1)])
    parsed = audit.parse_export(exported)
    assert parsed.entries == (first,)
    assert verify(parsed.entries, parsed.checkpoints).entries == 1
    assert audit.filter_entries(parsed.entries, actor=actor) == [first]


def test_an_actor_check_names_the_field_it_is_given() -> None:
    with pytest.raises(InvalidInput) as caught:
        audit.check_actor("jan\x00", field="officer")
    assert caught.value.field == "officer"
    assert caught.value.message == (
        "must be printable text, not only spaces: letters, digits, punctuation and spaces, "
        "no control or format characters, at most 128"
    )


def test_entries_need_an_aware_time():
    with pytest.raises(InvalidInput, match="aware"):
        audit.next_entry(None, kind=AuditKind.HIT_NOTICE, actor="a", now=datetime(2026, 1, 1))


def test_filters():
    entries = build()
    assert [e.seq for e in audit.filter_entries(entries, kind=AuditKind.HIT_NOTICE)] == [4]
    assert audit.filter_entries(entries, actor="politie") == []
    assert [e.seq for e in audit.filter_entries(entries, subject=f"{2:032x}")] == [3]
    since, until = NOW + timedelta(seconds=2), NOW + timedelta(seconds=5)
    assert [e.seq for e in audit.filter_entries(entries, since=since, until=until)] == [3, 4, 5]
    assert [e.seq for e in audit.filter_entries(entries, limit=2)] == [1, 2]


# --- export ----------------------------------------------------------------------------------


def exported(n: int = N) -> bytes:
    entries = build(n)
    return audit.encode_export(
        "gemeente", NOW, entries, [checkpoint_of(entries, 3), checkpoint_of(entries, n)]
    )


def test_an_export_round_trips_byte_for_byte():
    data = exported()
    lines = data.decode().splitlines()
    assert json.loads(lines[0]) == {
        "kind": "samenloop.audit-export.v1",
        "log_owner": "gemeente",
        "exported_at": "2026-11-28T12:00:00.000000Z",
    }
    assert [json.loads(line)["type"] for line in lines[1:]] == ["entry"] * N + ["checkpoint"] * 2
    parsed = audit.parse_export(data)
    assert parsed.entries == tuple(build())
    assert (
        audit.encode_export(
            parsed.log_owner, parsed.exported_at, parsed.entries, parsed.checkpoints
        )
        == data
    )
    assert verify(parsed.entries, parsed.checkpoints).checkpointed == N


def _line(data: bytes, number: int, new: bytes | None) -> bytes:
    lines = data.split(b"\n")
    if new is None:
        del lines[number - 1]
    else:
        lines[number - 1] = new
    return b"\n".join(lines)


GARBAGE = [
    ("no final newline", lambda d: d[:-1], "line 1"),
    ("empty", lambda d: b"", "line 1"),
    ("not JSON", lambda d: _line(d, 3, b"hello"), "line 3 (entry 2)"),
    ("not an object", lambda d: _line(d, 3, b"[1]"), "line 3 (entry 2)"),
    ("blank line", lambda d: _line(d, 4, b""), "line 4 (entry 3)"),
    ("bad header", lambda d: _line(d, 1, b'{"kind":"csv"}'), "line 1"),
    ("no header", lambda d: _line(d, 1, None), "line 1"),
    ("spaces", lambda d: _line(d, 2, d.split(b"\n")[1].replace(b",", b", ")), "line 2 (entry 1)"),
    ("upper-case hex", lambda d: _line(d, 2, d.split(b"\n")[1].upper()), "line 2 (entry 1)"),
    ("entry after a checkpoint", lambda d: d + d.split(b"\n")[1] + b"\n", f"line {N + 4}"),
    ("unknown line", lambda d: _line(d, 5, b'{"type":"note"}'), "line 5 (entry 4)"),
    ("bad base64", lambda d: _line(d, N + 2, b'{"signed":"!!","size":3,"type":"checkpoint"}'),
     f"line {N + 2}"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "mangle", "where"), GARBAGE, ids=[g[0] for g in GARBAGE])
def test_garbage_in_an_export_is_refused_naming_the_line(name, mangle, where):
    with pytest.raises(InvalidInput) as caught:
        audit.parse_export(mangle(exported()))
    assert str(caught.value.field).startswith(where)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_single_byte_change_in_an_exported_entry_is_detected(data):
    export = exported(5)
    lines = export.split(b"\n")
    number = data.draw(st.integers(2, 6), label="line")  # the entry lines
    start = sum(len(line) + 1 for line in lines[: number - 1])
    position = data.draw(st.integers(start, start + len(lines[number - 1])), label="byte")
    old = export[position]
    new = data.draw(st.integers(0, 255).filter(lambda b: b != old), label="new byte")
    tampered = export[:position] + bytes([new]) + export[position + 1 :]
    try:
        parsed = audit.parse_export(tampered)
    except InvalidInput:
        return  # refused as garbage, naming the line
    with pytest.raises(AuditMismatch) as caught:
        audit.verify_log(parsed.entries, parsed.checkpoints, OWNER.public().ed25519)
    assert caught.value.seq is not None
    assert caught.value.seq <= number - 1


# --- the stores -----------------------------------------------------------------------------


def _migrated(url: str, package: str) -> Iterator[sa.Engine]:
    engine = database.make_engine(url)
    database.downgrade(engine, package)  # PostgreSQL: whatever another test left
    database.upgrade(engine, package)
    try:
        yield engine
    finally:
        database.downgrade(engine, package)
        engine.dispose()


@pytest.fixture
def node_engine(database_url: str) -> Iterator[sa.Engine]:
    yield from _migrated(database_url, NODE_MIGRATIONS)


@pytest.fixture
def broker_engine(database_url: str) -> Iterator[sa.Engine]:
    yield from _migrated(database_url, BROKER_MIGRATIONS)


@pytest.mark.parametrize("package", [NODE_MIGRATIONS, BROKER_MIGRATIONS])
def test_the_audit_migration_goes_up_and_down(database_url, package):
    engine = database.make_engine(database_url)
    try:
        database.downgrade(engine, package)
        database.upgrade(engine, package, "0001")
        assert "audit_entries" not in sa.inspect(engine).get_table_names()
        database.upgrade(engine, package, "0002")
        assert database.current(engine) == ("0002",)
        assert {"audit_entries", "audit_checkpoints"} <= set(sa.inspect(engine).get_table_names())
        database.downgrade(engine, package, "0001")
        assert database.current(engine) == ("0001",)
        assert not {"audit_entries", "audit_checkpoints"} & set(
            sa.inspect(engine).get_table_names()
        )
        database.upgrade(engine, package)
        database.check_at_head(engine, package)
    finally:
        database.downgrade(engine, package)
        engine.dispose()


def test_the_database_refuses_malformed_rows(node_engine):
    entry = build(1)[0]
    row = {
        "seq": 1,
        "at": entry.at,
        "kind": entry.kind.value,
        "actor": entry.actor,
        "subject": "",
        "details": "{}",
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }
    table = sa.table("audit_entries", *(sa.column(name) for name in row))
    for bad in ({"seq": 0}, {"hash": b"short"}, {"prev_hash": b""}, {"actor": ""}):
        with pytest.raises(sa.exc.IntegrityError), node_engine.begin() as conn:
            conn.execute(sa.insert(table).values(**{**row, **bad}))
    with node_engine.begin() as conn:
        conn.execute(sa.insert(table).values(**row))
    # No fork: a second successor of the same entry, or a repeated hash, is refused.
    for bad in ({"seq": 2}, {"seq": 2, "prev_hash": entry.hash}):
        with pytest.raises(sa.exc.IntegrityError), node_engine.begin() as conn:
            conn.execute(sa.insert(table).values(**{**row, **bad}))


BSN_A, BSN_B = "111222333", "111222345"
DETAIL = "Kerkstraat 1, leegstand sinds maart"
REFERENCE = "DOSSIER-2026-0042"


def new_signal(reference: str, *bsns: str) -> NewSignal:
    return NewSignal(
        reference=reference,
        category="woonfraude",
        identifiers=[Identifier(IdentifierType.BSN, b) for b in bsns],
        expires_at=LATER,
        details={"adres": DETAIL},
    )


def raw_values() -> list[str]:
    return [BSN_A, BSN_B, DETAIL, REFERENCE, "Kerkstraat"]


def audit_rows_text(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM audit_entries")).all()
        rows += conn.execute(sa.text("SELECT * FROM audit_checkpoints")).all()
    return repr(rows)


def kinds(entries: list[AuditEntry]) -> list[str]:
    return [e.kind.value for e in entries]


def test_node_store_records_its_changes_in_the_same_transaction(node_engine):
    node = Repositories.open(node_engine, owner="gemeente")
    (added,) = node.signals.add_signals([new_signal(REFERENCE, BSN_A, BSN_B)], now=NOW)
    refs = sorted(i.signal_ref for i in added.identifiers)
    # The same content again stores nothing and records nothing; other content is refused.
    node.signals.add_signals([new_signal(REFERENCE, BSN_A, BSN_B)], now=NOW)
    with pytest.raises(Replay):
        node.signals.add_signals([new_signal("x", BSN_A), new_signal(REFERENCE, BSN_A)], now=NOW)
    assert kinds(node.shared.audit_entries()) == ["signal_added"]

    pending = node.signals.pending_identifiers(10, now=NOW)
    node.signals.record_tokens({p.id: bytes([p.id]) * 32 for p in pending}, 1, now=NOW)
    (batch,) = node.signals.outbox()
    node.signals.mark_acked(batch.client_batch_id, now=NOW)
    assert node.signals.accept_notice(
        1, b"\x07" * 16, 1, HitKind.NEW, b"signed", refs, NOW, NOW, now=NOW
    )
    node.signals.withdraw_signal(REFERENCE, now=NOW + timedelta(hours=1))
    node.signals.withdraw_signal(REFERENCE, now=NOW + timedelta(hours=2))  # idempotent: no entry
    node.tokens.count_evaluation("politie", now=NOW, elements=5)

    entries = node.shared.audit_entries()
    assert kinds(entries) == [
        "signal_added",
        "token_submission",
        "hit_notice",
        "signal_withdrawn",
        "oprf_evaluation",
    ]
    first, submitted, hit, withdrawn, evaluation = entries
    assert first.subject == tuple(ref.hex() for ref in refs)
    assert dict(first.details) == {
        "signals": 1,
        "identifiers": 2,
        "unchanged": 0,
        "imported": False,
        "refs_sha256": hashlib.sha256(b"".join(refs)).hexdigest(),
    }
    assert submitted.subject == (batch.client_batch_id.hex(),)
    assert dict(submitted.details) == {"entries": 2, "accepted": True}
    assert hit.subject == ("07" * 16,)
    assert dict(hit.details)["own_refs"] == 2
    assert set(withdrawn.subject) == {ref.hex() for ref in refs}
    assert (evaluation.actor, dict(evaluation.details)) == (
        "politie",
        {"elements": 5, "refused": False},
    )
    assert {e.actor for e in entries[:-1]} == {"gemeente"}
    assert node.shared.audit_entries(kind=AuditKind.HIT_NOTICE, limit=5) == [hit]
    assert node.shared.audit_entries(subject=refs[0].hex()) == [first, withdrawn]

    text = audit_rows_text(node_engine)
    assert not [value for value in raw_values() if value in text]
    with node_engine.connect() as conn:
        summary = audit_store.verify(conn, OWNER.public().ed25519, owner="gemeente")
    assert summary.entries == 5


def test_expiry_is_recorded_once_per_sweep(node_engine):
    node = Repositories.open(node_engine, owner="gemeente")
    node.signals.add_signals([new_signal("a", BSN_A), new_signal("b", BSN_B)], now=NOW)
    assert node.signals.expire_signals(LATER) == 2
    assert node.signals.expire_signals(LATER) == 0
    expired = node.shared.audit_entries(kind=AuditKind.SIGNAL_EXPIRED)
    assert [dict(e.details) for e in expired] == [{"signals": 2}]


def in_transaction(engine: sa.Engine, *steps: Callable[[sa.Connection], object]) -> None:
    """Run ``steps`` in one transaction, then fail: what a disclosure that breaks off does."""
    with engine.begin() as conn:
        for step in steps:
            step(conn)
        raise RuntimeError("the work failed after all")


def test_a_rolled_back_transaction_leaves_no_entry(node_engine):
    node = Database(node_engine, owner="gemeente")
    node.audit_append(kind=AuditKind.COVENANT_ACCEPTED, details={"version": 2}, now=NOW)

    def released(conn: sa.Connection) -> object:
        return node.append_audit(conn, kind=AuditKind.DISCLOSURE_RELEASED, now=NOW)

    def too_long(conn: sa.Connection) -> object:
        details = {"x": "y" * 99}
        return node.append_audit(conn, kind=AuditKind.DISCLOSURE_RELEASED, details=details, now=NOW)

    with pytest.raises(RuntimeError):
        in_transaction(node_engine, released)
    with pytest.raises(InvalidInput):
        in_transaction(node_engine, released, too_long)
    with node_engine.begin() as conn:
        entry = node.append_audit(
            conn, kind=AuditKind.DISCLOSURE_DENIED, actor="officer:42", now=NOW
        )
    assert kinds(node.audit_entries()) == ["covenant_accepted", "disclosure_denied"]
    assert (entry.seq, entry.actor) == (2, "officer:42")


def sign(draft: NoticeDraft) -> bytes:
    return f"{draft.recipient}|{draft.kind.name}|{draft.group_id.hex()}".encode()


def token(n: int) -> bytes:
    return hashlib.sha256(b"token %d" % n).digest()


def ref(party: str, n: int) -> bytes:
    return hashlib.sha256(f"ref {party} {n}".encode()).digest()[:16]


def test_broker_store_records_batches_and_hit_groups(broker_engine):
    broker = BrokerStore(broker_engine, owner="broker")
    ids = iter(n.to_bytes(16, "big") for n in range(1, 100))

    def submit(party: str, batch: int, tokens: list[int], expires: datetime = LATER):
        entries = [Entry(party, token(t), ref(party, t), 1, expires, None) for t in tokens]
        return broker.tokens.submit(
            party,
            bytes([batch]) * 16,
            1,
            entries,
            min_parties=2,
            now=NOW,
            new_group_id=lambda: next(ids),
            sign_notice=sign,
        )

    submit("a", 1, [1, 2, 3], expires=NOW + timedelta(days=1))
    submit("b", 2, [1, 2, 4])
    submit("b", 2, [1, 2, 4])  # a replay records nothing
    broker.tokens.withdraw(
        "b", bytes([3]) * 16, [ref("b", 2)], min_parties=2, now=NOW, sign_notice=sign
    )
    broker.tokens.expire(NOW + timedelta(days=2), min_parties=2, sign_notice=sign)
    broker.tokens.remove_party("b", min_parties=2, now=NOW, sign_notice=sign)

    entries = broker.audit.audit_entries()
    assert kinds(entries) == [
        "token_submission",
        "token_submission", "hit_notice", "hit_notice",
        "token_withdrawal", "hit_notice",
        "token_expiry", "hit_notice",
        "party_removed",
    ]  # fmt: skip
    first, second, grown, _, withdrawn, closed, expired, closed_too, removed = entries
    assert (first.actor, first.subject) == ("a", ("01" * 16,))
    assert dict(second.details) == {"stored": 3, "unchanged": 0, "key_epoch": 1}
    assert dict(grown.details) == {"revision": 1, "open": True, "recipients": 2, "kinds": "new"}
    assert grown.actor == "broker"
    assert grown.subject == ((1).to_bytes(16, "big").hex(),)
    assert dict(withdrawn.details) == {"withdrawn": 1, "unknown": 0}
    assert dict(closed.details)["open"] is False
    assert dict(expired.details) == {"removed": 3}
    assert closed_too.kind is AuditKind.HIT_NOTICE
    assert dict(removed.details) == {"party": "b", "removed": 2}
    with broker_engine.connect() as conn:
        assert audit_store.verify(conn, OWNER.public().ed25519, owner="broker").entries == 9
    assert all(token(t).hex() not in audit_rows_text(broker_engine) for t in range(1, 5))


def test_a_failed_batch_leaves_no_entry(broker_engine):
    broker = BrokerStore(broker_engine)
    entries = [Entry("a", token(1), ref("a", 1), 1, LATER, None)]

    def broken(draft: NoticeDraft) -> bytes:
        raise RuntimeError("signing key unavailable")

    broker.tokens.submit(
        "b",
        b"\x01" * 16,
        1,
        [Entry("b", token(1), ref("b", 1), 1, LATER, None)],
        min_parties=2,
        now=NOW,
        new_group_id=lambda: b"\x09" * 16,
        sign_notice=sign,
    )
    with pytest.raises(RuntimeError):
        broker.tokens.submit(
            "a",
            b"\x02" * 16,
            1,
            entries,
            min_parties=2,
            now=NOW,
            new_group_id=lambda: b"\x08" * 16,
            sign_notice=broken,
        )
    with pytest.raises(Replay):
        broker.tokens.submit(
            "b",
            b"\x01" * 16,
            1,
            [Entry("b", token(2), ref("b", 2), 1, LATER, None)],
            min_parties=2,
            now=NOW,
            new_group_id=lambda: b"\x08" * 16,
            sign_notice=sign,
        )
    assert kinds(broker.audit.audit_entries()) == ["token_submission"]

    def relayed(conn: sa.Connection) -> object:
        return broker.audit.append_audit(conn, kind=AuditKind.ENVELOPE_RELAYED, now=NOW)

    with pytest.raises(RuntimeError):
        in_transaction(broker_engine, relayed)
    assert len(broker.audit.audit_entries()) == 1


def test_checkpoints_are_stored_signed_and_skipped_when_nothing_is_new(node_engine):
    node = Database(node_engine, owner="gemeente")
    assert node.audit_checkpoint(OWNER, now=NOW) is None  # an empty log
    for i in range(3):
        node.audit_append(kind=AuditKind.CASE_EVENT, subject=[f"{i:032x}"], now=NOW)
    made = node.audit_checkpoint(OWNER, now=NOW)
    assert made is not None
    assert (made.size, made.log_owner) == (3, "gemeente")
    assert node.audit_checkpoint(OWNER, now=NOW) is None
    node.audit_append(kind=AuditKind.PICTURE_EVENT, now=NOW)
    assert node.audit_checkpoint(OWNER, now=NOW + timedelta(minutes=1)) is not None
    assert [audit.parse_checkpoint(c).size for c in node.audit_checkpoints()] == [3, 4]
    with node_engine.connect() as conn:
        summary = audit_store.verify(conn, OWNER.public().ed25519, owner="gemeente")
    assert (summary.entries, summary.checkpoints, summary.checkpointed) == (4, 2, 4)


UPDATE, DELETE = "UPDATE audit_entries SET", "DELETE FROM audit_entries WHERE"
STORED_TAMPERING = [
    ("altered", f"{UPDATE} actor = 'politie' WHERE seq = 3", 3, "entry 3 was altered"),
    ("unreadable", f"{UPDATE} kind = 'gossip' WHERE seq = 2", 2, "entry 2 was altered"),
    ("bad details", f"{UPDATE} details = '[1' WHERE seq = 4", 4, "entry 4 was altered"),
    ("deleted", f"{DELETE} seq = 2", 2, "entry 2 is missing"),
    ("truncated", f"{DELETE} seq >= 4", 4, "truncated"),
    ("renumbered", f"{UPDATE} seq = seq + 10 WHERE seq = 5", 5, "entry 5 is missing"),
    ("checkpoint dropped and last entry deleted",
     f"DELETE FROM audit_checkpoints; {DELETE} seq = 5", 0, ""),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "statements", "seq", "says"), STORED_TAMPERING, ids=[t[0] for t in STORED_TAMPERING]
)
def test_tampering_with_the_database_is_detected(node_engine, name, statements, seq, says):
    node = Database(node_engine, owner="gemeente")
    for i in range(5):
        node.audit_append(kind=AuditKind.HIT_NOTICE, subject=[f"{i:032x}"], now=NOW)
    node.audit_checkpoint(OWNER, now=NOW)
    with node_engine.begin() as conn:
        for statement in statements.split("; "):
            conn.execute(sa.text(statement))
    with node_engine.connect() as conn:
        if not seq:
            # Without a checkpoint, cutting off the newest entries goes unnoticed: why
            # the daemons sign one every sweep and at shutdown.
            assert audit_store.verify(conn, OWNER.public().ed25519, owner="gemeente").entries == 4
            return
        with pytest.raises(AuditMismatch, match=says) as caught:
            audit_store.verify(conn, OWNER.public().ed25519, owner="gemeente")
    assert caught.value.seq == seq


def test_concurrent_appenders_keep_one_chain(node_engine):
    stores = [Database(node_engine, owner="gemeente") for _ in range(4)]
    errors: list[BaseException] = []

    def work(store: Database, worker: int) -> None:
        try:
            for i in range(10):
                store.audit_append(
                    kind=AuditKind.CASE_EVENT, details={"worker": worker, "i": i}, now=NOW
                )
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(s, n)) for n, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with node_engine.connect() as conn:
        assert audit_store.verify(conn, OWNER.public().ed25519, owner="gemeente").entries == 40


def test_two_engines_on_one_log_keep_one_chain(node_engine):
    """Two daemons (say, broker replicas) writing one log: each one's guess of where the log
    ends goes stale as the other writes, and a rolled-back append leaves a guess that is
    ahead of the log; appends then fall back to the head read under the lock."""
    second = database.make_engine(node_engine.url.render_as_string(hide_password=False))
    engines = [node_engine, second]
    try:
        stores = [Database(engine, owner="gemeente") for engine in engines]
        for i in range(6):
            stores[i % 2].audit_append(kind=AuditKind.CASE_EVENT, details={"i": i}, now=NOW)
        with pytest.raises(RuntimeError):  # appended, then rolled back
            in_transaction(
                engines[0],
                lambda conn: stores[0].append_audit(conn, kind=AuditKind.CASE_EVENT, now=NOW),
            )
        stores[0].audit_append(kind=AuditKind.CASE_EVENT, details={"i": 6}, now=NOW)
        stores[1].audit_append(kind=AuditKind.CASE_EVENT, details={"i": 7}, now=NOW)
        with engines[0].connect() as conn:
            summary = audit_store.verify(conn, OWNER.public().ed25519, owner="gemeente")
        assert summary.entries == 8
        assert [e.details["i"] for e in stores[1].audit_entries()] == list(range(8))
    finally:
        second.dispose()


# --- the CLI ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def provisioned() -> Iterator[Provisioned]:
    root = Path(tempfile.mkdtemp(prefix="sl-audit-", dir="/tmp"))
    try:
        yield provision(
            root,
            "riec-audit",
            [
                PartySpec("gemeente", "Gemeente", Role.GEMEENTE),
                PartySpec("politie", "Politie", Role.POLITIE),
            ],
            ["gemeente", "politie"],
            2,
            now=NOW - timedelta(days=1),
        )
    finally:
        shutil.rmtree(root)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def node_log(provisioned: Provisioned) -> Iterator[Path]:
    """The gemeente node's database with a few entries and a checkpoint; its node.toml."""
    config_path = provisioned.node_configs["gemeente"]
    config = load_node_config(config_path)
    engine = database.make_engine(config.database_url)
    database.upgrade(engine, NODE_MIGRATIONS)
    node = SignalStore(engine, owner="gemeente")
    node.add_signals([new_signal(REFERENCE, BSN_A, BSN_B)], now=NOW)
    node.add_signals([new_signal("other", BSN_B)], now=NOW + timedelta(minutes=1))
    node.withdraw_signal(REFERENCE, now=NOW + timedelta(minutes=2))
    node.audit_checkpoint(PartyKeys.load(config.party_keys), now=NOW + timedelta(minutes=3))
    node.audit_append(kind=AuditKind.CASE_EVENT, now=NOW + timedelta(minutes=4))
    engine.dispose()
    try:
        yield config_path
    finally:
        Path(config.database_url.removeprefix("sqlite:///")).unlink()


def test_cli_export_verify_and_show(node_log, provisioned, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # a wide table, one row per entry
    out = tmp_path / "gemeente.audit.jsonl"
    code, text, _ = run(capsys, "audit", "export", "--config", node_log, "--out", out)
    assert code == 0
    assert "4 audit entries and 1 checkpoints" in text
    data = out.read_bytes()
    assert not [value for value in raw_values() if value in data.decode()]

    for covenant in (provisioned.root / "covenant.toml", provisioned.root / "covenant.json"):
        code, text, _ = run(capsys, "audit", "verify", out, "--covenant", covenant)
        assert code == 0
        assert text.splitlines() == [
            f"gemeente: audit log verified: 4 entries, 1 checkpoints verified "
            f"(signed up to entry 3), head {audit.parse_export(data).entries[-1].hash.hex()}"
        ]
    code, text, _ = run(capsys, "audit", "verify", "--config", node_log)
    assert code == 0
    assert "4 entries" in text

    code, text, _ = run(capsys, "audit", "show", out, "--json", "--kind", "signal_added")
    shown = [json.loads(line) for line in text.splitlines()]
    assert [(e["seq"], e["details"]["identifiers"]) for e in shown] == [(1, 2), (2, 1)]
    code, text, _ = run(
        capsys,
        "audit",
        "show",
        "--config",
        node_log,
        "--json",
        "--since",
        "2026-11-28T12:01:30",
        "--limit",
        "1",
    )
    assert [json.loads(line)["kind"] for line in text.splitlines()] == ["signal_withdrawn"]
    code, text, _ = run(capsys, "audit", "show", "--config", node_log)
    assert code == 0
    assert "signal_withdrawn" in text
    assert "case_event" in text


def test_cli_show_prints_details_as_text(node_log, capsys, monkeypatch):
    """A detail is printable ASCII, but may be markup (and an export may come from
    elsewhere): the table shows it as text, on a terminal that takes colours."""
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setenv("FORCE_COLOR", "1")
    note = "[/bold][link=https://evil.example]x[/link]"
    engine = database.make_engine(load_node_config(node_log).database_url)
    Database(engine, owner="gemeente").audit_append(
        kind=AuditKind.CASE_EVENT, details={"note": note}, now=NOW + timedelta(hours=1)
    )
    engine.dispose()
    code, text, err = run(capsys, "audit", "show", "--config", node_log, "--kind", "case_event")
    assert code == 0, err
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)  # the table's own colours
    assert f"note={note}" in plain
    assert "\x1b]" not in text
    assert [c for c in plain if c != "\n" and not terminal.is_safe(c)] == []


def test_cli_verify_names_the_first_altered_or_missing_entry(
    node_log, provisioned, tmp_path, capsys
):
    out = tmp_path / "export.jsonl"
    assert run(capsys, "audit", "export", "--config", node_log, "--out", out)[0] == 0
    lines = out.read_text().splitlines()
    covenant = provisioned.root / "covenant.toml"
    cases = [
        ([*lines[:2], lines[2].replace('"signals":1', '"signals":7'), *lines[3:]], "entry 2 was"),
        (lines[:3] + lines[4:], "entry 3 is missing"),
        (lines[:3] + lines[5:], "entry 3 is missing"),  # entries 3 and 4 gone
        (lines[:1] + lines[1:3] + lines[5:], "truncated"),
        ([*lines[:3], "{nonsense", *lines[4:]], "line 4 (entry 3)"),
    ]
    for tampered, says in cases:
        copy = tmp_path / "tampered.jsonl"
        copy.write_text("\n".join(tampered) + "\n")
        code, text, err = run(capsys, "audit", "verify", copy, "--covenant", covenant)
        assert code == 1, err
        assert says in err
        assert text == ""
    # The owner's key is the covenant's: a log claimed by another party fails its checkpoint.
    claimed = [lines[0].replace("gemeente", "politie"), *lines[1:]]
    (tmp_path / "claimed.jsonl").write_text("\n".join(claimed) + "\n")
    code, _, err = run(
        capsys, "audit", "verify", tmp_path / "claimed.jsonl", "--covenant", covenant
    )
    assert code == 1
    assert "not signed by the log owner's key" in err


def test_cli_verify_against_an_earlier_export_catches_a_cut_off_tail(
    node_log, provisioned, tmp_path, capsys
):
    """Entries 3 and 4 and the checkpoint at entry 3 deleted together: the log alone still
    verifies; against the checkpoints of an export kept elsewhere it does not."""
    kept = tmp_path / "kept.jsonl"
    assert run(capsys, "audit", "export", "--config", node_log, "--out", kept)[0] == 0
    lines = kept.read_text().splitlines()
    assert '"type":"checkpoint"' in lines[-1]
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(lines[:3]) + "\n")  # header, entries 1 and 2
    covenant = provisioned.root / "covenant.json"
    assert run(capsys, "audit", "verify", cut, "--covenant", covenant)[0] == 0
    code, _, err = run(capsys, "audit", "verify", cut, "--covenant", covenant, "--against", kept)
    assert code == 1
    assert "truncated" in err or "missing" in err
    assert run(capsys, "audit", "verify", "--config", node_log, "--against", kept)[0] == 0
    other = [lines[0].replace("gemeente", "politie"), *lines[1:]]
    (tmp_path / "other.jsonl").write_text("\n".join(other) + "\n")
    code, _, err = run(
        capsys,
        "audit",
        "verify",
        cut,
        "--covenant",
        covenant,
        "--against",
        tmp_path / "other.jsonl",
    )
    assert code == 2
    assert "--against" in err


def test_cli_usage_errors(node_log, tmp_path, capsys):
    assert run(capsys, "audit", "verify", tmp_path / "x.jsonl")[0] == 2  # no --covenant
    assert run(capsys, "audit", "show", tmp_path / "x.jsonl", "--config", node_log)[0] == 2
    assert run(capsys, "audit", "show", tmp_path / "missing.jsonl")[0] == 2
    with pytest.raises(SystemExit):
        run(capsys, "audit", "show", "--config", node_log, "--since", "yesterday")


def test_cli_reads_the_brokers_log_too(provisioned, tmp_path, capsys):
    config = load_broker_config(provisioned.broker_config)
    engine = database.make_engine(config.database_url)
    database.upgrade(engine, BROKER_MIGRATIONS)
    try:
        broker = BrokerStore(engine, owner="broker")
        broker.audit.audit_append(
            kind=AuditKind.COVENANT_PUBLISHED, details={"version": 1}, now=NOW
        )
        broker.audit.audit_checkpoint(PartyKeys.load(config.signing_keys), now=NOW)
        out = tmp_path / "broker.jsonl"
        assert (
            run(capsys, "audit", "export", "--config", provisioned.broker_config, "--out", out)[0]
            == 0
        )
        code, text, _ = run(
            capsys, "audit", "verify", out, "--covenant", provisioned.root / "covenant.json"
        )
        assert code == 0
        assert text.startswith("broker: audit log verified: 1 entries")
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE audit_entries SET details = :d"), {"d": '{"version":2}'})
        code, _, err = run(capsys, "audit", "verify", "--config", provisioned.broker_config)
        assert code == 1
        assert "entry 1 was altered" in err
    finally:
        engine.dispose()
        Path(config.database_url.removeprefix("sqlite:///")).unlink()
