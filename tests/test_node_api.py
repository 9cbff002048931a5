"""The node's local API over real gRPC on a Unix socket, with the real store on SQLite.

The client library (``samenloop.node.client``) drives it as a partner's
application would; a few tests use the raw stub to send what the library never
sends (unknown enum values, output-only fields). Hits are stored the way the
uplink stores them: a broker-signed notice, accepted by ``SignalStore.accept_notice``.
"""

from __future__ import annotations

import queue
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
import structlog.testing

from samenloop.node.client import FeedRestored, Hit, NodeClient, SignalInput, normalise_target
from samenloop.node.daemon.api import HitBell, NodeApiContext, NodeApiService
from samenloop.node.daemon.repositories import MIGRATIONS, Repositories
from samenloop.node.daemon.uplink import UplinkStatus, verify_hit_notice
from samenloop.node.provision import PartySpec, Provisioned, provision
from samenloop.node.signals.models import AreaKind, HitKind, HitState, SignalState
from samenloop.node.signals.store import SignalStore
from samenloop.policies import covenant as covenant_model
from samenloop.policies import database
from samenloop.policies.audit import AuditKind
from samenloop.policies.covenant import AttributeKey, AttributeKeyRing, Role
from samenloop.policies.crypto import PartyKeys, SignatureContext
from samenloop.policies.errors import (
    ConfigurationError,
    InvalidInput,
    LocalError,
    NotFound,
    Replay,
    SamenloopError,
    UnknownType,
)
from samenloop.policies.rpc import ErrorInterceptor, error_from_rpc
from samenloop.v1 import broker_pb2, common_pb2, node_pb2, node_pb2_grpc

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
ME = "gemeente"
CATEGORY = "vastgoedmisbruik"


# --- the covenant, the broker's notices -------------------------------------------------


@dataclass
class Covenant:
    provisioned: Provisioned
    broker_keys: PartyKeys
    attribute_key: AttributeKey
    attribute_keys: AttributeKeyRing

    @property
    def covenant(self) -> covenant_model.Covenant:
        return self.provisioned.covenant


@pytest.fixture(scope="module")
def covenant(tmp_path_factory: pytest.TempPathFactory) -> Covenant:
    root = tmp_path_factory.mktemp("cov")
    provisioned = provision(
        root,
        "riec-test",
        [
            PartySpec(ME, "Gemeente Test", Role.GEMEENTE),
            PartySpec("politie", "Politie Test", Role.POLITIE),
            PartySpec("woco", "Woningcorporatie Test", Role.WONINGCORPORATIE),
        ],
        [ME, "politie"],
        2,
        now=NOW - timedelta(days=1),
    )
    keys = PartyKeys.load(root / ME / "party-keys.json")
    ring = AttributeKeyRing(keys)
    return Covenant(
        provisioned=provisioned,
        broker_keys=PartyKeys.load(root / "broker" / "signing-keys.json"),
        attribute_key=ring.current(provisioned.covenant),
        attribute_keys=ring,
    )


@dataclass(frozen=True)
class Member:
    party: str
    role: str
    categories: Sequence[str]
    refs: Sequence[bytes] = (b"\x07" * 16,)


def signed_notice(
    cov: Covenant,
    group: bytes,
    revision: int,
    own_refs: Sequence[bytes],
    members: Sequence[Member],
    *,
    kind: broker_pb2.HitNoticeKind.ValueType = broker_pb2.HIT_NOTICE_KIND_NEW,
    key: AttributeKey | None = None,
) -> bytes:
    """A hit notice for ME as the broker signs it, members' categories sealed."""
    sealing = key or cov.attribute_key
    notice = broker_pb2.HitNotice(
        covenant_id=cov.covenant.id,
        covenant_version=cov.covenant.version,
        hit_group_id=group,
        revision=revision,
        kind=kind,
        recipient=ME,
        visibility=broker_pb2.HitVisibility(
            party_count=True, roles=True, parties=True, categories=True
        ),
        own_signal_refs=list(own_refs),
        party_count=1 + len(members),
    )
    for member in members:
        shown = notice.members.add(party=member.party, role=member.role)
        shown.signal_refs.extend(member.refs)
        for category in member.categories:
            plaintext = common_pb2.MemberAttributes(category=category).SerializeToString()
            nonce, ciphertext = covenant_model.seal_attributes(sealing, plaintext)
            shown.sealed_attributes.add(
                key_version=sealing.version, nonce=nonce, ciphertext=ciphertext
            )
    notice.first_seen.FromDatetime(NOW - timedelta(hours=1))
    notice.last_seen.FromDatetime(NOW)
    notice.issued_at.FromDatetime(NOW)
    body = notice.SerializeToString()
    signed = common_pb2.Signed(
        body=body,
        signer=cov.covenant.broker.id,
        context=SignatureContext.HIT_NOTICE.value,
        signature=cov.broker_keys.sign(SignatureContext.HIT_NOTICE, body),
    )
    verify_hit_notice(cov.covenant, ME, signed)  # what the uplink checks before storing
    return signed.SerializeToString()


# --- a running node API ---------------------------------------------------------------------


@dataclass
class Node:
    repositories: Repositories
    bell: HitBell
    client: NodeClient
    stub: node_pb2_grpc.NodeApiStub
    context: NodeApiContext
    wakes: list[int] = field(default_factory=list)
    cursor: int = 0

    def accept(
        self,
        cov: Covenant,
        group: bytes,
        revision: int,
        own: Sequence[bytes] = (),
        members: Sequence[Member] = (),
        *,
        kind: broker_pb2.HitNoticeKind.ValueType = broker_pb2.HIT_NOTICE_KIND_NEW,
        key: AttributeKey | None = None,
    ) -> None:
        """Store a notice as the uplink does (verified, then accepted), then ring the bell."""
        signed = signed_notice(cov, group, revision, own, members, kind=kind, key=key)
        self.cursor += 1
        hit_kind = {
            broker_pb2.HIT_NOTICE_KIND_NEW: HitKind.NEW,
            broker_pb2.HIT_NOTICE_KIND_GROWN: HitKind.GROWN,
            broker_pb2.HIT_NOTICE_KIND_CLOSED: HitKind.CLOSED,
        }[kind]
        assert self.repositories.signals.accept_notice(
            self.cursor,
            group,
            revision,
            hit_kind,
            signed,
            own,
            NOW - timedelta(hours=1),
            NOW,
            now=NOW,
        )
        self.bell.ring()

    def refs(self, reference: str) -> list[bytes]:
        record = self.repositories.signals.signal(reference)
        assert record is not None
        return [i.signal_ref for i in record.identifiers]


def short_socket_dir() -> Path:
    """A directory short enough for a Unix socket path (sun_path is 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix="sl-api-", dir="/tmp"))


def start_node(
    cov: Covenant, database_url: str, socket: Path, *, party: str = ME
) -> tuple[Node, grpc.Server]:
    engine = database.make_engine(database_url)
    database.upgrade(engine, MIGRATIONS)
    repositories = Repositories.open(engine)
    bell = HitBell()
    wakes: list[int] = []
    context = NodeApiContext(
        party=party,
        repositories=repositories,
        covenant=lambda: cov.covenant,
        attribute_keys=cov.attribute_keys,
        wake_uplink=lambda: wakes.append(1),
        clock=lambda: NOW,
        bell=bell,
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8), interceptors=[ErrorInterceptor()]
    )
    node_pb2_grpc.add_NodeApiServicer_to_server(NodeApiService(context), server)
    assert server.add_insecure_port(f"unix:{socket}")
    server.start()
    client = NodeClient(socket)
    stub = node_pb2_grpc.NodeApiStub(grpc.insecure_channel(f"unix:{socket}"))
    return Node(repositories, bell, client, stub, context, wakes), server


@pytest.fixture
def node(covenant: Covenant, sqlite_url: str) -> Iterator[Node]:
    directory = short_socket_dir()
    running, server = start_node(covenant, sqlite_url, directory / "api.sock")
    try:
        yield running
    finally:
        running.client.close()
        server.stop(None).wait()
        running.repositories.engine.dispose()
        (directory / "api.sock").unlink(missing_ok=True)
        directory.rmdir()


def raw(call: Any, request: Any) -> SamenloopError:
    """The typed error a raw stub call fails with."""
    with pytest.raises(grpc.RpcError) as failure:
        call(request, timeout=10)
    return error_from_rpc(failure.value)


def counts(repositories: Repositories) -> dict[str, int]:
    with repositories.engine.connect() as conn:
        return {
            name: conn.execute(sa.text(f"SELECT count(*) FROM {name}")).scalar_one()
            for name in ("signals", "signal_identifiers", "outbox_batches", "hits")
        }


# --- signals ---------------------------------------------------------------------------------


def test_add_signal_normalises_stores_and_wakes_the_uplink(node: Node) -> None:
    signal = node.client.add_signal(
        "DOS-1",
        CATEGORY,
        [("kvk", "KvK 0123 4567"), ("address", "1234 ab 12-a")],
        details={"toelichting": "leegstand"},
    )
    assert signal.reference == "DOS-1"
    assert signal.state is SignalState.ACTIVE
    assert [(i.type.value, i.canonical) for i in signal.identifiers] == [
        ("kvk", "01234567"),
        ("address", "1234AB 12 A"),
    ]
    assert dict(signal.details) == {"toelichting": "leegstand"}
    assert signal.expires_at == NOW + timedelta(days=730)
    assert (signal.area_kind, signal.area_code, signal.month) == (
        AreaKind.POSTCODE4,
        "1234",
        "2026-11",
    )
    assert node.wakes == [1]
    stored = node.repositories.signals.signal("DOS-1")
    assert stored is not None
    assert str(stored.id) == signal.signal_id
    assert len(stored.identifiers) == 2

    # The same content again is the same signal; other content under the reference is refused.
    again = node.client.add_signal(
        "DOS-1",
        CATEGORY,
        [("kvk", "01234567"), ("address", "1234AB 12A")],
        details={"toelichting": "leegstand"},
    )
    assert again.signal_id == signal.signal_id
    assert node.wakes == [1]
    with pytest.raises(Replay) as refused:
        node.client.add_signal("DOS-1", "drugsproductie", [("kvk", "01234567")])
    assert refused.value.field == "signal.reference"
    assert refused.value.reason == "signal.exists"
    assert counts(node.repositories)["signals"] == 1


@pytest.mark.parametrize(
    ("identifiers", "category", "field", "reason"),
    [
        ([("bsn", "111222334")], CATEGORY, "signal.identifiers[0].value", "bsn.check_digit"),
        (
            [("kvk", "01234567"), ("iban", "NL91ABNA0417164301")],
            CATEGORY,
            "signal.identifiers[1].value",
            "iban.checksum",
        ),
        ([("kvk", "01234567")], "  ", "signal.category", "signal.category_missing"),
        ([], CATEGORY, "signal.identifiers", "signal.identifiers_missing"),
        (
            [("kvk", "01234567"), ("kvk", "0123 4567")],
            CATEGORY,
            "signal.identifiers[1]",
            "identifier.duplicate",
        ),
    ],
)
def test_add_signal_refuses_bad_input_naming_the_field(
    node: Node, identifiers: list[tuple[str, str]], category: str, field: str, reason: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        node.client.add_signal("DOS-2", category, identifiers)
    assert (refused.value.field, refused.value.reason) == (field, reason)
    assert "111222334" not in str(refused.value)
    assert counts(node.repositories)["signals"] == 0
    assert node.wakes == []


def test_unknown_identifier_type_is_refused_naming_the_field(node: Node) -> None:
    unknown = common_pb2.IdentifierType.ValueType(99)
    for kind in (unknown, common_pb2.IDENTIFIER_TYPE_UNSPECIFIED):
        request = node_pb2.AddSignalRequest(
            signal=node_pb2.Signal(
                reference="DOS-3",
                category=CATEGORY,
                identifiers=[
                    node_pb2.Identifier(type=common_pb2.IDENTIFIER_TYPE_KVK, value="01234567"),
                    node_pb2.Identifier(type=kind, value="whatever"),
                ],
            )
        )
        error = raw(node.stub.AddSignal, request)
        assert isinstance(error, InvalidInput)
        assert error.field == "signal.identifiers[1].type"
        assert error.reason == "identifier.unknown_type"
    # The client library refuses an unknown type name before sending anything.
    with pytest.raises(UnknownType) as refused:
        node.client.add_signal("DOS-3", CATEGORY, [("kvk", "01234567"), ("postcode", "1234AB")])
    assert refused.value.field == "signal.identifiers[1].type"
    assert counts(node.repositories)["signals"] == 0


def test_expiry_must_lie_within_the_retention(node: Node) -> None:
    with pytest.raises(InvalidInput) as past:
        node.client.add_signal("E", CATEGORY, [("kvk", "01234567")], expires_at=NOW)
    assert (past.value.field, past.value.reason) == ("signal.expires_at", "signal.expired")
    with pytest.raises(InvalidInput) as late:
        node.client.add_signal(
            "E", CATEGORY, [("kvk", "01234567")], expires_at=NOW + timedelta(days=731)
        )
    assert late.value.reason == "retention.exceeded"
    soon = node.client.add_signal(
        "E", CATEGORY, [("kvk", "01234567")], expires_at=NOW + timedelta(days=30)
    )
    assert soon.expires_at == NOW + timedelta(days=30)


def test_leading_zero_restored_only_when_asked(node: Node) -> None:
    with pytest.raises(InvalidInput) as refused:
        node.client.add_signal("Z", CATEGORY, [("bsn", "10000008")])
    assert refused.value.reason == "bsn.length"
    signal = node.client.add_signal(
        "Z", CATEGORY, [("bsn", "10000008"), ("kvk", "1234567")], leading_zero_dropped=True
    )
    assert [i.canonical for i in signal.identifiers] == ["010000008", "01234567"]


def test_import_stores_valid_rows_and_reports_the_others(node: Node) -> None:
    rows = [
        SignalInput("IMP-1", CATEGORY, [("kvk", "01234567")], details={"bron": "BRP"}),
        SignalInput("IMP-2", CATEGORY, [("bsn", "111222334")]),
        SignalInput("IMP-3", "", [("kvk", "01234568"), ("phone", "12")]),
        SignalInput("IMP-4", CATEGORY, [("bsn", "111222333"), ("address", "1234 AB 12")]),
        SignalInput("IMP-5", CATEGORY, [("kenteken", "12-ABC-3"), ("nope", "x")]),
    ]
    report = node.client.import_signals(rows)
    assert (report.imported, report.unchanged, report.rejected) == (2, 0, 3)
    assert [r.ok for r in report.results] == [True, False, False, True, False]
    assert sorted((e.row, e.field, e.reason) for e in report.errors) == [
        (1, "identifiers[0].value", "bsn.check_digit"),
        (2, "category", "signal.category_missing"),
        (2, "identifiers[1].value", "phone.invalid"),
        (4, "identifiers[1].type", "identifier.unknown_type"),
    ]
    assert all("111222334" not in e.message for e in report.errors)
    assert node.repositories.signals.signal("IMP-1") is not None
    assert node.repositories.signals.signal("IMP-4") is not None
    assert [node.repositories.signals.signal(r) for r in ("IMP-2", "IMP-3", "IMP-5")] == [
        None,
        None,
        None,
    ]
    assert counts(node.repositories)["signal_identifiers"] == 3
    assert node.wakes == [1]

    # The same file again: nothing new, every valid row unchanged.
    again = node.client.import_signals(rows)
    assert (again.imported, again.unchanged, again.rejected) == (0, 2, 3)
    assert counts(node.repositories)["signals"] == 2


def test_import_reports_unknown_types_and_output_fields_are_ignored(node: Node) -> None:
    request = node_pb2.ImportSignalsRequest(
        signals=[
            node_pb2.Signal(
                signal_id="999",
                reference="RAW-1",
                category=CATEGORY,
                state=node_pb2.SIGNAL_STATE_WITHDRAWN,
                identifiers=[node_pb2.Identifier(type=common_pb2.IDENTIFIER_TYPE_KVK, value="1")],
            ),
            node_pb2.Signal(
                reference="RAW-2",
                category=CATEGORY,
                identifiers=[
                    node_pb2.Identifier(
                        type=common_pb2.IdentifierType.ValueType(42), value="01234567"
                    )
                ],
            ),
            node_pb2.Signal(
                reference="RAW-3",
                category=CATEGORY,
                identifiers=[
                    node_pb2.Identifier(type=common_pb2.IDENTIFIER_TYPE_KVK, value="01234567")
                ],
            ),
        ]
    )
    response = node.stub.ImportSignals(request, timeout=10)
    assert (response.imported, response.rejected) == (1, 2)
    assert [(e.field, e.reason) for e in response.results[0].errors] == [
        ("identifiers[0].value", "kvk.length")
    ]
    assert [(e.field, e.reason) for e in response.results[1].errors] == [
        ("identifiers[0].type", "identifier.unknown_type")
    ]
    assert response.results[2].signal_id
    stored = node.repositories.signals.signal("RAW-3")
    assert stored is not None
    assert stored.state is SignalState.ACTIVE

    assert isinstance(raw(node.stub.ImportSignals, node_pb2.ImportSignalsRequest()), InvalidInput)


def test_import_refuses_a_conflicting_reference_alone(node: Node) -> None:
    node.client.add_signal("DUP", CATEGORY, [("kvk", "01234567")])
    rows = [
        SignalInput("NEW-1", CATEGORY, [("kvk", "11111111")]),
        SignalInput("DUP", "drugsproductie", [("kvk", "01234567")]),  # exists, other content
        SignalInput("NEW-2", CATEGORY, [("kvk", "22222222")]),
        SignalInput("NEW-2", "drugsproductie", [("kvk", "22222222")]),  # same call, other content
        SignalInput("NEW-1", CATEGORY, [("kvk", "11111111")]),  # same call, same content
    ]
    report = node.client.import_signals(rows)
    assert [(e.row, e.field, e.reason) for e in report.errors] == [
        (1, "reference", "signal.exists"),
        (3, "reference", "signal.exists"),
    ]
    assert (report.imported, report.unchanged, report.rejected) == (2, 1, 2)
    assert report.results[4].signal_id == report.results[0].signal_id
    assert counts(node.repositories)["signals"] == 3
    record = node.repositories.signals.signal("DUP")
    assert record is not None
    assert record.category == CATEGORY


def test_a_failing_import_transaction_stores_nothing(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = SignalStore._insert_signals

    def insert_then_fail(self: SignalStore, *args: Any, **kw: Any) -> list[int]:
        original(self, *args, **kw)  # the signals and identifiers are written ...
        raise RuntimeError("disk full")  # ... and the transaction fails before it commits

    monkeypatch.setattr(SignalStore, "_insert_signals", insert_then_fail)
    rows = [SignalInput(f"F-{n}", CATEGORY, [("kvk", f"{n:08d}")]) for n in range(1, 50)]
    with pytest.raises(LocalError) as failed:
        node.client.import_signals(rows)
    assert failed.value.message == "internal error"  # nothing about the data leaks
    assert counts(node.repositories) == {
        "signals": 0,
        "signal_identifiers": 0,
        "outbox_batches": 0,
        "hits": 0,
    }
    monkeypatch.undo()
    assert node.client.import_signals(rows).imported == 49


def test_validate_only_stores_nothing(node: Node) -> None:
    rows = [
        SignalInput("V-1", CATEGORY, [("kvk", "01234567")]),
        SignalInput("V-2", CATEGORY, [("bsn", "1")]),
    ]
    report = node.client.import_signals(rows, validate_only=True)
    assert (report.imported, report.rejected) == (0, 1)
    assert report.results[0].signal_id is None
    assert counts(node.repositories)["signals"] == 0
    assert node.wakes == []


def test_import_in_chunks_keeps_row_numbers(node: Node) -> None:
    rows = [
        SignalInput(f"C-{n}", CATEGORY, [("kvk", "1" if n == 7 else f"{n:08d}")])
        for n in range(1, 12)
    ]
    progress: list[int] = []
    report = node.client.import_signals(rows, chunk_size=4, on_progress=progress.append)
    assert progress == [4, 4, 3]
    assert [e.row for e in report.errors] == [6]
    assert report.imported == 10


def test_get_and_withdraw_a_signal(node: Node) -> None:
    added = node.client.add_signal("W-1", CATEGORY, [("kvk", "01234567")])
    assert node.client.signal("W-1").signal_id == added.signal_id
    by_id = node.stub.GetSignal(node_pb2.GetSignalRequest(signal_id=added.signal_id), timeout=10)
    assert by_id.signal.reference == "W-1"
    assert by_id.signal.identifiers[0].value == "01234567"

    with pytest.raises(InvalidInput) as bad_officer:  # refused before anything is done
        node.client.withdraw_signal("W-1", officer="j.jansen\u202e")
    assert bad_officer.value.field == "officer"
    assert node.client.signal("W-1").state is SignalState.ACTIVE
    withdrawn = node.client.withdraw_signal("W-1", reason="afgehandeld", officer="Jürgen de Vries")
    assert withdrawn.state is SignalState.WITHDRAWN
    assert node.client.signal("W-1").state is SignalState.WITHDRAWN
    assert node.wakes == [1, 1]
    assert node.client.withdraw_signal("W-1").state is SignalState.WITHDRAWN  # idempotent
    # The officer named is the audit entry's actor, as given; without one, the party.
    node.client.add_signal("W-2", CATEGORY, [("kvk", "01234568")])
    node.client.withdraw_signal("W-2")
    entries = node.repositories.shared.audit_entries(kind=AuditKind.SIGNAL_WITHDRAWN)
    assert [e.actor for e in entries] == ["Jürgen de Vries", "node"]  # the store's owner here

    with pytest.raises(NotFound) as missing:
        node.client.withdraw_signal("NOPE")
    assert missing.value.field == "reference"
    with pytest.raises(NotFound):
        node.client.signal("NOPE")
    bad_id = raw(node.stub.GetSignal, node_pb2.GetSignalRequest(signal_id="12x"))
    assert (type(bad_id), bad_id.field) == (InvalidInput, "signal_id")
    assert raw(node.stub.GetSignal, node_pb2.GetSignalRequest()).field == "key"


# --- hits ------------------------------------------------------------------------------------


def group(n: int) -> bytes:
    return bytes([n]) * 16


def test_a_hit_shows_own_signals_and_decrypted_categories(node: Node, covenant: Covenant) -> None:
    node.client.add_signal("H-1", CATEGORY, [("kvk", "01234567"), ("bsn", "111222333")])
    own = node.refs("H-1")[:1]
    other_key = covenant_model.new_attribute_key(covenant.covenant.id, 1)
    node.accept(
        covenant,
        group(1),
        1,
        own,
        [
            Member("politie", "politie", ["drugsproductie", "witwasindicatie", "drugsproductie"]),
            Member("woco", "woningcorporatie", ["woonfraude"], refs=(b"\x08" * 16,)),
        ],
    )
    # A notice whose categories are under a key this node does not hold still shows.
    node.accept(covenant, group(2), 1, own, [Member("politie", "politie", ["x"])], key=other_key)

    hits = node.client.hits()
    assert [h.group_id for h in hits] == [group(2), group(1)]  # newest change first
    hit = hits[1]
    assert (hit.state, hit.last_kind, hit.revision, hit.party_count) == (
        HitState.OPEN,
        HitKind.NEW,
        1,
        3,
    )
    (mine,) = hit.own_signals
    assert (mine.reference, mine.category, mine.signal_ref) == ("H-1", CATEGORY, own[0])
    assert mine.identifier_type is not None
    assert mine.identifier_type.value == "kvk"
    assert [(m.party, m.role, m.categories) for m in hit.members] == [
        ("politie", "politie", ("drugsproductie", "witwasindicatie")),
        ("woco", "woningcorporatie", ("woonfraude",)),
    ]
    assert hit.members[1].signal_refs == (b"\x08" * 16,)
    assert (hit.first_seen, hit.last_seen, hit.received_at) == (
        NOW - timedelta(hours=1),
        NOW,
        NOW,
    )
    signed = common_pb2.Signed.FromString(hit.notice)
    assert verify_hit_notice(covenant.covenant, ME, signed).hit_group_id == group(1)
    assert hits[0].members[0].categories == ()

    assert node.client.hit(group(1)) == hit
    with pytest.raises(NotFound):
        node.client.hit(group(9))
    assert raw(node.stub.GetHit, node_pb2.GetHitRequest(hit_group_id=b"short")).field == (
        "hit_group_id"
    )


HOSTILE_CATEGORIES = (
    "[/bold]",
    "[link=https://evil.example]x[/link]",
    "\x1b]8;;https://evil.example\x1b\\x",
)


def test_a_category_the_covenant_does_not_list_is_counted_never_shown(
    node: Node, covenant: Covenant
) -> None:
    """Any member can seal any text under the shared attribute key: only the covenant's
    categories are shown, the rest counted per member, and no log line carries them."""
    sealed = ["woonfraude", *HOSTILE_CATEGORIES, "", HOSTILE_CATEGORIES[0], "woonfraude"]
    node.accept(covenant, group(1), 1, (), [Member("politie", "politie", sealed)])
    node.accept(covenant, group(2), 1, (), [Member("woco", "woningcorporatie", ["katvanger"])])
    with structlog.testing.capture_logs() as logs:
        hits = {h.group_id: h for h in node.client.hits()}
        (member,) = hits[group(1)].members
        assert (member.categories, member.unknown_categories) == (("woonfraude",), 4)
        (clean,) = hits[group(2)].members
        assert (clean.categories, clean.unknown_categories) == (("katvanger",), 0)
        response = node.stub.GetHit(node_pb2.GetHitRequest(hit_group_id=group(1)), timeout=10)
    assert list(response.hit.members[0].categories) == ["woonfraude"]
    assert response.hit.members[0].unknown_categories == 4
    warned = [e for e in logs if e["event"] == "sealed member categories not in the covenant"]
    assert [e["count"] for e in warned] == [4, 4]  # ListHits, GetHit: counts, no values
    for hostile in (*HOSTILE_CATEGORIES, "evil.example"):
        assert hostile not in repr(logs)


def test_list_hits_pages_and_filters(node: Node, covenant: Covenant) -> None:
    for n in range(1, 6):
        node.accept(covenant, group(n), 1, (), [Member("politie", "politie", ["drugsproductie"])])
    node.accept(covenant, group(3), 2, (), (), kind=broker_pb2.HIT_NOTICE_KIND_CLOSED)

    first = node.stub.ListHits(node_pb2.ListHitsRequest(page_size=2), timeout=10)
    assert [h.hit_group_id for h in first.hits] == [group(3), group(5)]
    second = node.stub.ListHits(
        node_pb2.ListHitsRequest(page_size=2, page_token=first.next_page_token), timeout=10
    )
    assert [h.hit_group_id for h in second.hits] == [group(4), group(2)]
    assert [h.group_id for h in node.client.hits()] == [group(n) for n in (3, 5, 4, 2, 1)]
    assert [h.group_id for h in node.client.hits("closed")] == [group(3)]
    assert len(node.client.hits(HitState.OPEN, limit=3)) == 3
    bad = raw(node.stub.ListHits, node_pb2.ListHitsRequest(page_token="x"))
    assert bad.field == "page_token"


def _collect(stream: Iterator[Hit], into: queue.Queue[Hit | None]) -> None:
    for hit in stream:
        into.put(hit)
    into.put(None)


def test_watch_hits_backlog_then_live_each_change_once(node: Node, covenant: Covenant) -> None:
    politie = [Member("politie", "politie", ["drugsproductie"])]
    node.accept(covenant, group(1), 1, (), politie)
    node.accept(covenant, group(2), 1, (), politie)

    received: queue.Queue[Hit | None] = queue.Queue()
    watch = node.client.watch_hits()
    reader = threading.Thread(target=_collect, args=(watch, received), daemon=True)
    reader.start()
    backlog = [received.get(timeout=10), received.get(timeout=10)]
    assert [(h.group_id, h.sequence) for h in backlog if h] == [(group(1), 1), (group(2), 2)]

    node.accept(covenant, group(3), 1, (), politie)  # live, as the uplink accepts it
    live = received.get(timeout=10)
    assert live is not None
    assert (live.group_id, live.sequence) == (group(3), 3)
    grown = [*politie, Member("woco", "woningcorporatie", ["woonfraude"])]
    node.accept(covenant, group(1), 2, (), grown, kind=broker_pb2.HIT_NOTICE_KIND_GROWN)
    change = received.get(timeout=10)
    assert change is not None
    assert (change.group_id, change.revision, change.sequence) == (group(1), 2, 4)
    assert change.last_kind is HitKind.GROWN
    assert change.members[1].categories == ("woonfraude",)

    watch.cancel()  # the stream ends when the client cancels
    reader.join(timeout=10)
    assert not reader.is_alive()
    assert received.get(timeout=1) is None
    assert received.empty()

    # Resuming after a sequence gives only what came later: nothing repeats.
    with node.client.watch_hits(after_feed_seq=2) as resumed:
        first, second = next(resumed), next(resumed)
    assert [(h.group_id, h.sequence) for h in (first, second)] == [(group(3), 3), (group(1), 4)]


def test_watch_hits_after_a_restore_maps_the_old_epoch_and_marks_restated_changes(
    node: Node, covenant: Covenant
) -> None:
    """The node was restored from a backup taken after feed sequence 1 (``node restore``
    writes this row); the application had seen up to sequence 3 of the original epoch."""
    politie = [Member("politie", "politie", ["drugsproductie"])]
    node.accept(covenant, group(1), 1, (), politie)  # in the backup
    with node.repositories.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO feed_restore (id, feed_epoch, previous_epoch, base_seq,"
                " restored_at, resync_head) VALUES (1, 77, 1, 1, :now, NULL)"
            ),
            {"now": "2026-12-07 12:00:00.000000"},
        )
    node.accept(covenant, group(2), 5, (), politie)  # resent by the broker: seen before
    with node.client.watch_hits(after_feed_seq=3, feed_epoch=1) as resumed:
        first = next(resumed)
        assert resumed.restored == FeedRestored(feed_epoch=77, resumed_after=1)
    assert (first.group_id, first.sequence, first.feed_epoch, first.restated) == (
        group(2),
        2,
        77,
        True,
    )
    with node.client.watch_hits(feed_epoch=77) as current:  # from 0 of the current epoch
        older, newer = next(current), next(current)
        assert current.restored is None
    assert [(h.sequence, h.restated) for h in (older, newer)] == [(1, False), (2, True)]

    # Caught up: the broker's resync head processed; later changes are new to everyone.
    assert node.repositories.signals.record_resync(node.cursor).restated_until == 2
    node.accept(covenant, group(3), 1, (), politie)
    with node.client.watch_hits(after_feed_seq=1, feed_epoch=1) as resumed:
        got = [next(resumed), next(resumed)]
    assert [(h.sequence, h.restated) for h in got] == [(2, True), (3, False)]
    with node.client.watch_hits(after_feed_seq=2, feed_epoch=12345) as stranger:
        got = [next(stranger) for _ in range(3)]  # an epoch it never had: all of it again
        assert stranger.restored == FeedRestored(feed_epoch=77, resumed_after=0)
    # ... what came before the end of the catching up may repeat; what came after is new.
    assert [(h.sequence, h.restated) for h in got] == [(1, True), (2, True), (3, False)]


def test_watch_hits_ends_when_the_client_goes(node: Node, covenant: Covenant) -> None:
    node.accept(covenant, group(1), 1, (), ())
    client = NodeClient(normalise_target(node.client.target))
    stream = client.watch_hits()
    assert next(stream).group_id == group(1)
    waiting = threading.Thread(target=lambda: list(stream), daemon=True)
    waiting.start()
    client.close()  # cancels open watches
    waiting.join(timeout=10)
    assert not waiting.is_alive()


# --- status and what is not in this version ------------------------------------------------


def test_get_status(node: Node, covenant: Covenant) -> None:
    node.client.add_signal("S-1", CATEGORY, [("kvk", "01234567")])
    node.client.add_signal("S-2", CATEGORY, [("kvk", "01234568")])
    node.client.withdraw_signal("S-2")
    node.accept(covenant, group(1), 1, node.refs("S-1"), [Member("politie", "politie", ["x"])])
    node.repositories.tokens.count_evaluation("politie", now=NOW, elements=5)

    status = node.client.status()
    assert (status.party, status.covenant_id, status.covenant_version, status.key_epoch) == (
        ME,
        "riec-test",
        1,
        1,
    )
    assert status.broker_connection == "disconnected"
    assert status.broker_address == covenant.covenant.broker.address
    assert (status.active_signals, status.open_hits, status.mailbox_acked_cursor) == (1, 1, 1)
    assert status.outbox_pending == 0  # nothing tokenised yet: no uplink runs here
    assert status.key_holder is not None
    assert status.key_holder.seats == ((1, 1),)
    assert (status.key_holder.requests_served, status.key_holder.elements_evaluated) == (1, 5)

    uplink = UplinkStatus(connected=True, last_contact=NOW, holder_channel_open=True)
    node.context.uplink_status = lambda: uplink
    status = node.client.status()
    assert (status.broker_connection, status.last_connected) == ("connected", NOW)
    assert status.key_holder is not None
    assert status.key_holder.channel_open
    uplink.update(connected=False, last_error="work: UNAVAILABLE: broker down")
    status = node.client.status()
    assert (status.broker_connection, status.last_error) == (
        "connecting",
        "work: UNAVAILABLE: broker down",
    )


def test_status_of_a_party_that_holds_no_key(covenant: Covenant, sqlite_url: str) -> None:
    directory = short_socket_dir()
    running, server = start_node(covenant, sqlite_url, directory / "api.sock", party="woco")
    try:
        assert running.client.status().key_holder is None
    finally:
        running.client.close()
        server.stop(None).wait()
        running.repositories.engine.dispose()
        (directory / "api.sock").unlink(missing_ok=True)
        directory.rmdir()


@pytest.mark.parametrize(
    ("method", "request_type"),
    [
        ("PictureShow", node_pb2.PictureShowRequest),
        ("PictureCollect", node_pb2.PictureCollectRequest),
    ],
)
def test_picture_calls_need_the_nodes_party_keys(
    node: Node, method: str, request_type: Any
) -> None:
    error = raw(getattr(node.stub, method), request_type())
    assert isinstance(error, ConfigurationError)
    assert error.field == "pictures"


@pytest.mark.parametrize(
    ("method", "request_type"),
    [("CaseOpen", node_pb2.CaseOpenRequest), ("CaseBoard", node_pb2.CaseBoardRequest)],
)
def test_case_calls_need_the_nodes_party_keys(node: Node, method: str, request_type: Any) -> None:
    error = raw(getattr(node.stub, method), request_type())
    assert isinstance(error, ConfigurationError)
    assert error.field == "cases"


def test_garbage_request_is_refused_and_the_node_keeps_serving(node: Node) -> None:
    channel = grpc.insecure_channel(node.client.target)
    call = channel.unary_unary(
        "/samenloop.v1.NodeApi/AddSignal",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.RpcError) as failure:
        call(b"\xff\xff\xff garbage", timeout=10)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()
    assert node.client.add_signal("OK", CATEGORY, [("kvk", "01234567")]).reference == "OK"


def test_client_targets_are_local_only(tmp_path: Path) -> None:
    assert normalise_target(tmp_path / "api.sock") == f"unix:{tmp_path / 'api.sock'}"
    assert normalise_target("unix:/run/api.sock") == "unix:/run/api.sock"
    assert normalise_target("/run/api.sock") == "unix:/run/api.sock"
    assert normalise_target("127.0.0.1:7444") == "127.0.0.1:7444"
    assert normalise_target("localhost:7444") == "localhost:7444"
    assert normalise_target("[::1]:7444") == "[::1]:7444"
    for remote in ("10.1.2.3:7444", "node.example.nl:7444", "0.0.0.0:7444"):
        with pytest.raises(ConfigurationError):
            normalise_target(remote)


def test_an_unreachable_node_is_unavailable(tmp_path: Path) -> None:
    from samenloop.policies.errors import Unavailable

    with NodeClient(tmp_path / "nothing.sock", timeout=2) as client, pytest.raises(Unavailable):
        client.status()
