"""The broker over real gRPC with mTLS on a loopback port, on SQLite: identity, tokens and
hits, mailbox, OPRF relay to key holders on their own channels, envelopes, bad input."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from samenloop.broker import mailbox, relay
from samenloop.broker import server as broker_server
from samenloop.broker.mailbox import ItemKind
from samenloop.node.provision import PartySpec, provision
from samenloop.node.tokens import derive as tokens
from samenloop.node.tokens import evaluation, keysetup, oprf, threshold
from samenloop.node.tokens.holder import KeyHolder
from samenloop.policies import certs, cli, database, rpc
from samenloop.policies.audit import AuditKind
from samenloop.policies.config import load_broker_config
from samenloop.policies.covenant import Role, load_covenant
from samenloop.policies.crypto import (
    PartyKeys,
    SealedBox,
    SignatureContext,
    open_signed,
    seal_signed,
)
from samenloop.policies.errors import ConfigurationError
from samenloop.v1 import broker_pb2, broker_pb2_grpc, common_pb2

PARTIES = [
    PartySpec("gemeente", "Gemeente Middelburg", Role.GEMEENTE),
    PartySpec("politie", "Politie Zeeland-West-Brabant", Role.POLITIE),
    PartySpec("belastingdienst", "Belastingdienst", Role.BELASTINGDIENST),
    PartySpec("riec", "RIEC Zeeland-West-Brabant", Role.RIEC),
]
HOLDERS = ["politie", "belastingdienst", "riec"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("covenant")
    now = datetime.now(UTC)
    provisioned = provision(root, "riec-zwb-test", PARTIES, HOLDERS, 2, now=now)
    # Bind port 0: the server picks a free port and tells us which.
    config = replace(load_broker_config(provisioned.broker_config), listen="127.0.0.1:0")
    engine = database.make_engine(config.database_url)
    database.upgrade(engine, broker_server.MIGRATIONS)
    engine.dispose()
    running = broker_server.build_server(config, evaluate_timeout=3.0)
    ca = certs.CertificateAuthority.load(root / "ca" / "ca.key", root / "ca" / "ca.pem")
    outsider = ca.issue_party("outsider", now=now)
    yield {
        "root": root,
        "port": running.port,
        "running": running,
        "covenant": load_covenant(root / "covenant.toml"),
        "outsider": outsider,
    }
    running.stop(0)


def channel_for(world: dict[str, object], party: str) -> grpc.Channel:
    root: Path = world["root"]  # type: ignore[assignment]
    if party == "outsider":
        issued: certs.IssuedCertificate = world["outsider"]  # type: ignore[assignment]
        key, cert = issued.key_pem, issued.cert_pem
    else:
        key = (root / party / "tls.key").read_bytes()
        cert = (root / party / "tls.pem").read_bytes()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(root / "ca" / "ca.pem").read_bytes(),
        private_key=key,
        certificate_chain=cert,
    )
    return grpc.secure_channel(f"localhost:{world['port']}", credentials)


def stub(world: dict[str, object], party: str) -> broker_pb2_grpc.BrokerStub:
    return broker_pb2_grpc.BrokerStub(channel_for(world, party))


def keys_of(world: dict[str, object], party: str) -> PartyKeys:
    root: Path = world["root"]  # type: ignore[assignment]
    return PartyKeys.load(root / party / "party-keys.json")


def replace_box(sent: broker_pb2.TokenEntry, ciphertext: bytes) -> broker_pb2.TokenEntry:
    sent.sealed_attributes.CopyFrom(
        common_pb2.SecretBox(key_version=1, nonce=bytes(24), ciphertext=ciphertext)
    )
    return sent


def entry(token: bytes, ref: bytes | None = None) -> broker_pb2.TokenEntry:
    expires = broker_pb2.TokenEntry().expires_at
    expires.FromDatetime(datetime.now(UTC) + timedelta(days=30))
    return broker_pb2.TokenEntry(token=token, signal_ref=ref or os.urandom(16), expires_at=expires)


def status_of(call: object) -> grpc.StatusCode:
    assert isinstance(call, grpc.Call)
    return call.code()


def test_health_and_hello(world):
    channel = channel_for(world, "gemeente")
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    hello = stub(world, "gemeente").Hello(
        broker_pb2.HelloRequest(party="gemeente", covenant_id="riec-zwb-test"), timeout=5
    )
    assert hello.broker == "broker"
    assert hello.covenant_version == 1
    assert hello.limits.max_tokens_per_batch == common_pb2.LIMITS_MAX_TOKENS_PER_BATCH


def test_a_second_broker_on_one_data_directory_is_refused(world, capsys):
    """Issue 15: one broker per data directory (each replica has its own); a migration
    under a running broker is refused too. The first goes on serving."""
    running = world["running"]
    path = world["root"] / "broker" / "broker.toml"
    config = replace(load_broker_config(path), listen="127.0.0.1:0")
    with pytest.raises(ConfigurationError) as refused:
        broker_server.build_server(config)
    assert refused.value.field == "data_dir"
    assert "another broker (pid" in str(refused.value)
    assert (
        cli.main(["broker", "migrate", "--config", str(world["root"] / "broker" / "broker.toml")])
        == 2
    )
    assert "another broker (pid" in capsys.readouterr().err
    assert running.lock.path.read_text().strip().isdigit()
    hello = stub(world, "gemeente").Hello(
        broker_pb2.HelloRequest(party="gemeente", covenant_id="riec-zwb-test"), timeout=5
    )
    assert hello.broker == "broker"  # still serving


def test_a_certificate_cannot_speak_for_another_party(world):
    with pytest.raises(grpc.RpcError) as info:
        stub(world, "gemeente").Hello(broker_pb2.HelloRequest(party="politie"), timeout=5)
    assert status_of(info.value) == grpc.StatusCode.PERMISSION_DENIED
    assert rpc.error_from_rpc(info.value).field == "party"


def test_a_party_the_covenant_does_not_list_is_refused(world):
    with pytest.raises(grpc.RpcError) as info:
        stub(world, "outsider").FetchMailbox(broker_pb2.FetchMailboxRequest(), timeout=5)
    assert status_of(info.value) == grpc.StatusCode.PERMISSION_DENIED
    assert rpc.error_from_rpc(info.value).field == "certificate"


def test_a_certificate_from_another_ca_fails_the_handshake(world, tmp_path):
    now = datetime.now(UTC)
    other = certs.CertificateAuthority.create("elsewhere", now=now).issue_party("gemeente", now=now)
    root: Path = world["root"]
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(root / "ca" / "ca.pem").read_bytes(),
        private_key=other.key_pem,
        certificate_chain=other.cert_pem,
    )
    bad = broker_pb2_grpc.BrokerStub(grpc.secure_channel(f"localhost:{world['port']}", credentials))
    with pytest.raises(grpc.RpcError) as info:
        bad.Hello(broker_pb2.HelloRequest(party="gemeente"), timeout=5)
    assert status_of(info.value) == grpc.StatusCode.UNAVAILABLE


def drain(world: dict[str, object], party: str) -> list[broker_pb2.MailboxItem]:
    broker = stub(world, party)
    fetched = broker.FetchMailbox(broker_pb2.FetchMailboxRequest(), timeout=5)
    if fetched.items:
        broker.AckMailbox(broker_pb2.AckMailboxRequest(cursor=fetched.items[-1].cursor), timeout=5)
    return list(fetched.items)


def notice_of(world: dict[str, object], item: broker_pb2.MailboxItem) -> broker_pb2.HitNotice:
    from samenloop.policies import crypto

    covenant = world["covenant"]
    signed = item.hit_notice
    assert signed.signer == covenant.broker.id
    crypto.verify(
        covenant.broker.ed25519, SignatureContext.HIT_NOTICE, signed.body, signed.signature
    )
    return broker_pb2.HitNotice.FromString(signed.body)


def submit(world, party, token, ref):
    return stub(world, party).SubmitTokens(
        broker_pb2.SubmitTokensRequest(
            client_batch_id=os.urandom(16), key_epoch=1, entries=[entry(token, ref)]
        ),
        timeout=10,
    )


def test_overlapping_tokens_make_a_signed_hit_for_both_parties_and_the_riec(world):
    for party in ("gemeente", "politie", "belastingdienst", "riec"):
        drain(world, party)
    token = os.urandom(32)
    ref_g, ref_b = os.urandom(16), os.urandom(16)
    batch_g = os.urandom(16)
    request_g = broker_pb2.SubmitTokensRequest(
        client_batch_id=batch_g, key_epoch=1, entries=[entry(token, ref_g)]
    )
    first = stub(world, "gemeente").SubmitTokens(request_g, timeout=10)
    assert first.stored == 1
    assert drain(world, "gemeente") == []  # one party is no hit
    submit(world, "belastingdienst", token, ref_b)
    (item_g,) = drain(world, "gemeente")
    (item_b,) = drain(world, "belastingdienst")
    (item_r,) = drain(world, "riec")  # the coordinator holds no signal but is told
    notice_g, notice_b = notice_of(world, item_g), notice_of(world, item_b)
    notice_r = notice_of(world, item_r)
    assert notice_g.hit_group_id == notice_b.hit_group_id == notice_r.hit_group_id
    assert notice_g.kind == notice_r.kind == broker_pb2.HIT_NOTICE_KIND_NEW
    assert list(notice_g.own_signal_refs) == [ref_g]
    assert [(m.party, m.role, list(m.signal_refs)) for m in notice_g.members] == [
        ("belastingdienst", "belastingdienst", [ref_b])
    ]
    assert notice_g.party_count == 2
    assert list(notice_r.own_signal_refs) == []
    assert sorted(m.party for m in notice_r.members) == ["belastingdienst", "gemeente"]
    assert notice_r.party_count == 2
    assert sum(n.picture_reporter for n in (notice_g, notice_b, notice_r)) == 1
    assert not notice_r.picture_reporter  # reporters hold a signal in the group
    assert drain(world, "politie") == []
    # Resubmitting the same batch is acknowledged, changes nothing, notifies no one.
    again = stub(world, "gemeente").SubmitTokens(request_g, timeout=10)
    assert again.replayed
    assert drain(world, "belastingdienst") == []


def test_police_signals_count_but_do_not_tip_off_the_municipality(world):
    for party in ("gemeente", "politie", "belastingdienst", "riec"):
        drain(world, party)
    token = os.urandom(32)
    ref_p = os.urandom(16)
    submit(world, "gemeente", token, os.urandom(16))
    submit(world, "politie", token, ref_p)
    # gemeente + politie: a hit, but the municipality may not learn of it at all.
    assert drain(world, "gemeente") == []
    (item_p,) = drain(world, "politie")
    assert [m.party for m in notice_of(world, item_p).members] == ["gemeente"]
    (item_r,) = drain(world, "riec")
    assert sorted(m.party for m in notice_of(world, item_r).members) == ["gemeente", "politie"]
    # The tax office joins: the municipality now learns of the hit, without the police.
    submit(world, "belastingdienst", token, os.urandom(16))
    (item_g,) = drain(world, "gemeente")
    notice_g = notice_of(world, item_g)
    assert notice_g.kind == broker_pb2.HIT_NOTICE_KIND_NEW
    assert [m.party for m in notice_g.members] == ["belastingdienst"]
    assert notice_g.party_count == 2
    (item_b,) = drain(world, "belastingdienst")
    assert [m.party for m in notice_of(world, item_b).members] == ["gemeente"]
    assert len(notice_of(world, drain(world, "politie")[0]).members) == 2
    drain(world, "riec")
    # The police withdraw: nothing the municipality or the tax office may see changes,
    # so neither is told (a notice would betray the police); the RIEC is.
    stub(world, "politie").WithdrawTokens(
        broker_pb2.WithdrawTokensRequest(client_batch_id=os.urandom(16), signal_refs=[ref_p]),
        timeout=10,
    )
    assert drain(world, "gemeente") == []
    assert drain(world, "belastingdienst") == []
    (closed_p,) = drain(world, "politie")
    assert notice_of(world, closed_p).kind == broker_pb2.HIT_NOTICE_KIND_CLOSED
    (shrunk_r,) = drain(world, "riec")
    assert notice_of(world, shrunk_r).kind == broker_pb2.HIT_NOTICE_KIND_SHRUNK


def test_a_reused_batch_id_with_other_content_is_refused(world):
    batch = os.urandom(16)
    broker = stub(world, "gemeente")
    broker.SubmitTokens(
        broker_pb2.SubmitTokensRequest(
            client_batch_id=batch, key_epoch=1, entries=[entry(os.urandom(32))]
        ),
        timeout=10,
    )
    with pytest.raises(grpc.RpcError) as info:
        broker.SubmitTokens(
            broker_pb2.SubmitTokensRequest(
                client_batch_id=batch, key_epoch=1, entries=[entry(os.urandom(32))]
            ),
            timeout=10,
        )
    assert status_of(info.value) == grpc.StatusCode.ALREADY_EXISTS
    assert rpc.error_from_rpc(info.value).field == "client_batch_id"


@pytest.mark.parametrize(
    ("mutate", "code", "field"),
    [
        (
            lambda r: r.entries.add(token=b"short", signal_ref=os.urandom(16)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "entries[1]",
        ),
        (
            lambda r: setattr(r, "client_batch_id", b"x"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "client_batch_id",
        ),
        (lambda r: setattr(r, "key_epoch", 7), grpc.StatusCode.INVALID_ARGUMENT, "key_epoch"),
        (
            lambda r: r.entries.extend(
                [entry(os.urandom(32)) for _ in range(common_pb2.LIMITS_MAX_TOKENS_PER_BATCH)]
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "entries",
        ),
        (
            lambda r: setattr(r.entries[0].expires_at, "seconds", 10**15),  # year > 9999
            grpc.StatusCode.INVALID_ARGUMENT,
            "entries[0].expires_at",
        ),
        (
            lambda r: r.entries[0].expires_at.FromDatetime(
                datetime.now(UTC) + timedelta(days=365 * 100)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "entries[0].expires_at",
        ),
        (
            lambda r: r.entries.add().CopyFrom(replace_box(entry(os.urandom(32)), b"\xff" * 300)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "entries[1].sealed_attributes",
        ),
        (
            lambda r: r.entries.extend(
                [entry(r.entries[0].token) for _ in range(common_pb2.LIMITS_MAX_REFS_PER_TOKEN)]
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"entries[{common_pb2.LIMITS_MAX_REFS_PER_TOKEN}].signal_ref",
        ),
    ],
    ids=[
        "short token",
        "short batch id",
        "unknown epoch",
        "oversized batch",
        "time out of range",
        "a hundred years ahead",
        "oversized sealed box",
        "too many refs on one token",
    ],
)
def test_bad_batches_are_refused_naming_the_field_and_store_nothing(world, mutate, code, field):
    running = world["running"]
    before = running.store.tokens.count_tokens()
    request = broker_pb2.SubmitTokensRequest(
        client_batch_id=os.urandom(16), key_epoch=1, entries=[entry(os.urandom(32))]
    )
    mutate(request)
    with pytest.raises(grpc.RpcError) as info:
        stub(world, "gemeente").SubmitTokens(request, timeout=30)
    assert status_of(info.value) == code
    assert rpc.error_from_rpc(info.value).field.startswith(field)
    assert running.store.tokens.count_tokens() == before


def test_hello_states_the_limits_the_broker_enforces(world):
    limits = (
        stub(world, "gemeente").Hello(broker_pb2.HelloRequest(party="gemeente"), timeout=5).limits
    )
    assert limits.max_sealed_attributes_bytes == common_pb2.LIMITS_MAX_SEALED_ATTRIBUTES_BYTES
    assert limits.max_refs_per_token == common_pb2.LIMITS_MAX_REFS_PER_TOKEN
    assert (
        limits.max_sealed_attributes_per_notice
        == common_pb2.LIMITS_MAX_SEALED_ATTRIBUTES_PER_NOTICE
    )
    longest = world["covenant"].policy.retention.longest_days
    skew = common_pb2.LIMITS_MAX_CLOCK_SKEW_SECONDS
    assert limits.max_entry_lifetime_seconds == longest * 86_400 + skew
    quotas = world["covenant"].policy.quotas
    assert (limits.envelopes_per_day, limits.envelope_bytes_per_day) == (
        quotas.envelopes_per_day,
        quotas.envelope_bytes_per_day,
    )
    assert limits.envelope_bytes_waiting == quotas.envelope_bytes_waiting
    assert limits.hit_notice_bytes_per_day == quotas.hit_notice_bytes_per_day
    assert limits.max_sealed_bytes == mailbox.MAX_SEALED_BYTES


@pytest.mark.parametrize(
    ("changes", "code", "field"),
    [
        ({"nonce": b""}, grpc.StatusCode.INVALID_ARGUMENT, "envelope.nonce"),
        ({"nonce": b"n" * 25}, grpc.StatusCode.INVALID_ARGUMENT, "envelope.nonce"),
        (
            {"ciphertext": b"c" * (common_pb2.LIMITS_MAX_ENVELOPE_BYTES + 1)},
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "envelope.ciphertext",
        ),
    ],
)
def test_an_envelope_beyond_the_wire_format_is_refused_and_stores_nothing(
    world, changes, code, field
):
    running = world["running"]
    fields = {"sender": "gemeente", "recipient": "politie", "nonce": b"n" * 24, "ciphertext": b"c"}
    before = running.store.mailboxes.mailbox_state("politie").head_cursor
    with pytest.raises(grpc.RpcError) as info:
        stub(world, "gemeente").SendEnvelope(
            broker_pb2.SendEnvelopeRequest(
                client_message_id=os.urandom(16),
                envelope=common_pb2.Sealed(**(fields | changes)),
            ),
            timeout=10,
        )
    assert status_of(info.value) == code
    assert rpc.error_from_rpc(info.value).field == field
    assert running.store.mailboxes.mailbox_state("politie").head_cursor == before
    assert running.store.mailboxes.envelope_usage("gemeente").sent == 0


def test_a_stored_item_that_does_not_parse_is_set_aside_and_the_mailbox_goes_on(world):
    """A row damaged in the broker's database (here by an UPDATE of its SQLite file): both
    ways of reading the mailbox get a marker at its cursor and then the items after it,
    where they failed INTERNAL on every retry before."""
    running = world["running"]
    drain(world, "belastingdienst")
    now = datetime.now(UTC)
    good = common_pb2.Signed(body=b"body", signer="broker").SerializeToString()
    planted = running.store.mailboxes.enqueue("belastingdienst", good, ItemKind.HIT_NOTICE, now)
    running.store.mailboxes.enqueue("belastingdienst", good, ItemKind.HIT_NOTICE, now)
    damaged = b"\xff\xff\xff\xff"
    with running.store.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE mailbox_items SET payload = :damaged WHERE cursor = :cursor"
                " AND party_id = (SELECT id FROM parties WHERE name = 'belastingdienst')"
            ),
            {"damaged": damaged, "cursor": planted},
        )
    broker = stub(world, "belastingdienst")
    stream = broker.StreamMailbox(
        broker_pb2.StreamMailboxRequest(after_cursor=planted - 1), timeout=15
    )
    first, second = (event.item for _, event in zip(range(2), stream, strict=False))
    stream.cancel()
    assert (first.cursor, first.WhichOneof("payload")) == (planted, "set_aside")
    assert (first.set_aside.kind, first.set_aside.size_bytes) == ("hit_notice", len(damaged))
    assert (second.cursor, second.hit_notice.body) == (planted + 1, b"body")
    fetched = broker.FetchMailbox(
        broker_pb2.FetchMailboxRequest(after_cursor=planted - 1), timeout=5
    )
    assert list(fetched.items) == [first, second]
    audited = running.store.audit.audit_entries(kind=AuditKind.MAILBOX_ITEM_SET_ASIDE)
    assert [(e.details["party"], e.details["cursor"], e.details["reason"]) for e in audited][
        -1:
    ] == [("belastingdienst", planted, "malformed")]
    drain(world, "belastingdienst")


def test_an_item_no_message_can_carry_is_set_aside_and_the_mailbox_goes_on(world):
    """An item planted in the database as if stored before the size limits: both ways of
    reading the mailbox get its marker and then the items after it."""
    running = world["running"]
    drain(world, "belastingdienst")
    now = datetime.now(UTC)
    huge = b"\x03" * (common_pb2.LIMITS_MAX_MESSAGE_BYTES + 1)
    planted = running.store.mailboxes.enqueue("belastingdienst", huge, ItemKind.HIT_NOTICE, now)
    running.store.mailboxes.enqueue("belastingdienst", b"", ItemKind.HIT_NOTICE, now)
    broker = stub(world, "belastingdienst")
    stream = broker.StreamMailbox(
        broker_pb2.StreamMailboxRequest(after_cursor=planted - 1), timeout=15
    )
    first, second = (event.item for _, event in zip(range(2), stream, strict=False))
    stream.cancel()
    assert (first.cursor, first.WhichOneof("payload")) == (planted, "set_aside")
    assert (first.set_aside.kind, first.set_aside.size_bytes) == ("hit_notice", len(huge))
    assert (second.cursor, second.WhichOneof("payload")) == (planted + 1, "hit_notice")
    fetched = broker.FetchMailbox(
        broker_pb2.FetchMailboxRequest(after_cursor=planted - 1), timeout=5
    )
    assert [item.cursor for item in fetched.items] == [planted, planted + 1]
    assert fetched.items[0] == first
    audited = running.store.audit.audit_entries(kind=AuditKind.MAILBOX_ITEM_SET_ASIDE)
    assert [(e.details["party"], e.details["cursor"]) for e in audited][-1:] == [
        ("belastingdienst", planted)
    ]
    drain(world, "belastingdienst")


def test_garbage_bytes_get_invalid_argument_and_the_broker_keeps_serving(world):
    raw = channel_for(world, "gemeente").unary_unary("/samenloop.v1.Broker/SubmitTokens")
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\xff\xfe\xfd garbage", timeout=5)
    assert status_of(info.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert rpc.error_from_rpc(info.value).field == "request"
    assert (
        stub(world, "gemeente").Hello(broker_pb2.HelloRequest(party="gemeente"), timeout=5).broker
    )


class HolderNode:
    """A key holder's side of the HolderChannel, as a node runs it (in a thread)."""

    def __init__(self, world: dict[str, object], party: str) -> None:
        covenant = world["covenant"]
        root: Path = world["root"]
        epoch = threshold.KeyEpoch.from_covenant(covenant)
        share = keysetup.load_share(root / party / "key-share.json", epoch)
        self.holder = KeyHolder(keys_of(world, party), share, epoch, covenant.id, covenant)
        self.outbox: queue.Queue[broker_pb2.HolderChannelRequest | None] = queue.Queue()
        self.outbox.put(
            broker_pb2.HolderChannelRequest(
                hello=broker_pb2.HolderHello(
                    seats=[broker_pb2.HolderSeat(key_epoch=epoch.epoch, holder_index=share.index)]
                )
            )
        )
        self.call = stub(world, party).HolderChannel(iter(self.outbox.get, None))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            for message in self.call:
                if message.HasField("evaluation"):
                    answer = self.holder.handle(
                        message.evaluation.request.SerializeToString(), now=datetime.now(UTC)
                    )
                    self.outbox.put(
                        broker_pb2.HolderChannelRequest(
                            answer=broker_pb2.HolderAnswer(
                                relay_id=message.evaluation.relay_id,
                                response=common_pb2.Signed.FromString(answer),
                            )
                        )
                    )
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self.outbox.put(None)
        self.call.cancel()


def relay_through(world: dict[str, object], party: str) -> evaluation.Relay:
    broker = stub(world, party)

    def relay(requests: dict[int, bytes]) -> dict[int, bytes]:
        response = broker.Evaluate(
            broker_pb2.EvaluateRequest(
                requests=[common_pb2.Signed.FromString(r) for r in requests.values()]
            ),
            timeout=10,
        )
        return {
            reply.holder_index: reply.response.SerializeToString()
            for reply in response.replies
            if reply.HasField("response")
        }

    return relay


def test_tokens_through_the_relay_equal_the_single_key_tokens(world):
    covenant = world["covenant"]
    epoch = threshold.KeyEpoch.from_covenant(covenant)
    holders = [HolderNode(world, party) for party in HOLDERS[:2]]  # riec's holder is offline
    try:
        import time

        deadline = time.monotonic() + 5
        while (
            world["running"].service._switchboard.connected(1) != [1, 2]
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        domain = tokens.TokenDomain(covenant.id, epoch.epoch)
        from samenloop.node.identifiers import normalise as identifiers

        idents = [identifiers.parse("bsn", "123456782"), identifiers.parse("kvk", "12345678")]
        made = evaluation.tokenise(
            keys_of(world, "gemeente"),
            covenant,
            domain,
            epoch,
            idents,
            relay_through(world, "gemeente"),
            now=datetime.now(UTC),
        )
        root: Path = world["root"]
        shares = [keysetup.load_share(root / p / "key-share.json", epoch) for p in HOLDERS[:2]]
        key = threshold.recover_key(shares)
        assert made == [tokens.token_with_key(domain, key, i) for i in idents]
        assert oprf.scalar_mult_gen(key) == epoch.group_public_key
    finally:
        for holder in holders:
            holder.close()


def test_evaluate_refuses_requests_signed_by_someone_else(world):
    covenant = world["covenant"]
    epoch = threshold.KeyEpoch.from_covenant(covenant)
    _, blinded = oprf.blind(b"x")
    forged = evaluation.build_requests(
        keys_of(world, "politie"),
        covenant.id,
        epoch,
        (1, 2),
        [blinded],
        request_id=os.urandom(16),
        now=datetime.now(UTC),
    )
    with pytest.raises(grpc.RpcError) as info:
        stub(world, "gemeente").Evaluate(
            broker_pb2.EvaluateRequest(
                requests=[common_pb2.Signed.FromString(r) for r in forged.values()]
            ),
            timeout=5,
        )
    assert status_of(info.value) == grpc.StatusCode.PERMISSION_DENIED


def test_sealed_envelope_is_relayed_to_the_recipient_only(world):
    covenant = world["covenant"]
    drain(world, "politie")
    sender, recipient = keys_of(world, "gemeente"), keys_of(world, "politie")
    box = seal_signed(
        sender, "politie", recipient.public().x25519, SignatureContext.CASE_MESSAGE, b"hello"
    )
    sealed = common_pb2.Sealed(
        sender="gemeente", recipient="politie", nonce=box.nonce, ciphertext=box.ciphertext
    )
    message_id = os.urandom(16)
    broker = stub(world, "gemeente")
    first = broker.SendEnvelope(
        broker_pb2.SendEnvelopeRequest(client_message_id=message_id, envelope=sealed), timeout=5
    )
    again = broker.SendEnvelope(
        broker_pb2.SendEnvelopeRequest(client_message_id=message_id, envelope=sealed), timeout=5
    )
    assert not first.replayed
    assert again.replayed
    (item,) = drain(world, "politie")
    got = item.envelope.sealed
    context, body = open_signed(
        recipient,
        "gemeente",
        covenant.public_keys("gemeente"),
        SealedBox(got.nonce, got.ciphertext),
    )
    assert (context, body) == (SignatureContext.CASE_MESSAGE, b"hello")
    # A party cannot send in another party's name.
    forged = common_pb2.Sealed(
        sender="belastingdienst", recipient="politie", nonce=box.nonce, ciphertext=box.ciphertext
    )
    with pytest.raises(grpc.RpcError) as info:
        broker.SendEnvelope(
            broker_pb2.SendEnvelopeRequest(client_message_id=os.urandom(16), envelope=forged),
            timeout=5,
        )
    assert status_of(info.value) == grpc.StatusCode.PERMISSION_DENIED


def test_stream_mailbox_delivers_new_items_as_they_arrive(world):
    drain(world, "belastingdienst")
    drain(world, "riec")
    stream = stub(world, "belastingdienst").StreamMailbox(
        broker_pb2.StreamMailboxRequest(), timeout=15
    )
    token = os.urandom(32)
    for party in ("belastingdienst", "riec"):
        stub(world, party).SubmitTokens(
            broker_pb2.SubmitTokensRequest(
                client_batch_id=os.urandom(16), key_epoch=1, entries=[entry(token)]
            ),
            timeout=10,
        )
    first = next(event for event in stream if event.HasField("item"))
    assert notice_of(world, first.item).kind == broker_pb2.HIT_NOTICE_KIND_NEW
    stream.cancel()


def test_a_member_left_alone_with_hidden_parties_is_told_the_hit_is_over(world):
    for party in ("gemeente", "politie", "belastingdienst", "riec"):
        drain(world, party)
    token = os.urandom(32)
    ref_b = os.urandom(16)
    submit(world, "gemeente", token, os.urandom(16))
    submit(world, "politie", token, os.urandom(16))
    submit(world, "belastingdienst", token, ref_b)
    (item_g,) = drain(world, "gemeente")
    assert notice_of(world, item_g).kind == broker_pb2.HIT_NOTICE_KIND_NEW
    for party in ("politie", "belastingdienst", "riec"):
        drain(world, party)
    stub(world, "belastingdienst").WithdrawTokens(
        broker_pb2.WithdrawTokensRequest(client_batch_id=os.urandom(16), signal_refs=[ref_b]),
        timeout=10,
    )
    # gemeente + politie still make a hit, but all the municipality may see of it is gone.
    (closed_g,) = drain(world, "gemeente")
    notice = notice_of(world, closed_g)
    assert notice.kind == broker_pb2.HIT_NOTICE_KIND_CLOSED
    assert list(notice.members) == []
    (shrunk_p,) = drain(world, "politie")
    assert notice_of(world, shrunk_p).kind == broker_pb2.HIT_NOTICE_KIND_SHRUNK


def test_notices_do_not_date_or_count_changes_of_hidden_members(world):
    """gemeente + politie form a hit the gemeente is not told of; when the tax office joins
    later, the gemeente's first notice must not show when the group formed, nor a revision
    that counts the change it was not told of; and the picture's reporter flag must not move
    on a change that only the police made."""
    for party in ("gemeente", "politie", "belastingdienst", "riec"):
        drain(world, party)
    token = os.urandom(32)
    submit(world, "gemeente", token, os.urandom(16))
    submit(world, "politie", token, os.urandom(16))
    assert drain(world, "gemeente") == []
    submit(world, "belastingdienst", token, os.urandom(16))
    (item_g,) = drain(world, "gemeente")
    notice_g = notice_of(world, item_g)
    assert notice_g.kind == broker_pb2.HIT_NOTICE_KIND_NEW
    assert notice_g.first_seen == notice_g.last_seen  # not when the police's part began
    last_seen = notice_g.last_seen.ToDatetime(tzinfo=UTC)
    micros = (last_seen - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert notice_g.revision == micros  # a time, not a count of changes
    notices = {
        p: [notice_of(world, i) for i in drain(world, p)] for p in ("politie", "belastingdienst")
    }
    notices["gemeente"] = [notice_g]
    latest = {p: n[-1] for p, n in notices.items() if n}
    assert sum(n.picture_reporter for n in latest.values()) == 1
    # The police add a second signal: nothing the others may see changes; no one else is told,
    # and the group is still counted exactly once.
    submit(world, "politie", token, os.urandom(16))
    assert drain(world, "gemeente") == []
    assert drain(world, "belastingdienst") == []
    for item in drain(world, "politie"):
        latest["politie"] = notice_of(world, item)
    assert sum(n.picture_reporter for n in latest.values()) == 1
    drain(world, "riec")


def test_a_holder_answer_larger_than_its_share_of_a_message_is_not_passed_on():
    """Every holder's answer goes back in one EvaluateResponse: one holder sending a huge
    answer would make that response too large to send, for every requester."""
    board = relay.Switchboard()
    channel = board.open("politie", frozenset({(1, 1), (1, 2)}))
    answers = {
        1: common_pb2.Signed(body=b"a" * 1000, signer="politie"),
        2: common_pb2.Signed(body=b"b" * relay.MAX_ANSWER_BYTES, signer="politie"),
    }

    def answer() -> None:
        for _ in answers:
            sent = channel.outbound.get(timeout=5)
            assert sent is not None
            holder = sent.request.signer  # the request's own field says whose it was
            board.answer(channel, sent.relay_id, answers[int(holder)])

    helper = threading.Thread(target=answer)
    helper.start()
    replies = board.relay(
        1, {index: common_pb2.Signed(signer=str(index)) for index in answers}, timeout=5
    )
    helper.join()
    assert replies[1].response == answers[1]
    assert replies[2].failure == broker_pb2.RELAY_FAILURE_TOO_LARGE
    assert relay.MAX_ANSWER_BYTES * (common_pb2.LIMITS_MAX_KEY_HOLDERS + 1) <= (
        common_pb2.LIMITS_MAX_MESSAGE_BYTES
    )


def test_a_stopping_broker_ends_its_open_streams_rather_than_cancelling_them(tmp_path):
    """A graceful stop lets the calls in flight finish. A mailbox stream or a holder
    channel never finishes by itself: the broker ends them when it stops (the node calls
    again, another replica or this one restarted), instead of waiting out the grace period
    and cancelling them."""
    provisioned = provision(tmp_path, "riec-zwb-test", PARTIES, HOLDERS, 2, now=datetime.now(UTC))
    config = replace(load_broker_config(provisioned.broker_config), listen="127.0.0.1:0")
    engine = database.make_engine(config.database_url)
    database.upgrade(engine, broker_server.MIGRATIONS)
    engine.dispose()
    running = broker_server.build_server(config, evaluate_timeout=3.0)
    world: dict[str, object] = {
        "root": tmp_path,
        "port": running.port,
        "covenant": load_covenant(tmp_path / "covenant.toml"),
    }
    ended: dict[str, queue.Queue[str]] = {"mailbox": queue.Queue(), "holder": queue.Queue()}

    def read(name: str, call: Iterator[Any], oneof: str) -> None:
        try:
            for message in call:
                ended[name].put(message.WhichOneof(oneof) or "?")
            ended[name].put("ended")
        except grpc.RpcError as error:
            ended[name].put(f"failed {status_of(error).name}")

    token = os.urandom(32)
    mailbox_call = stub(world, "gemeente").StreamMailbox(broker_pb2.StreamMailboxRequest())
    epoch = threshold.KeyEpoch.from_covenant(world["covenant"])
    share = keysetup.load_share(tmp_path / "politie" / "key-share.json", epoch)
    seat = broker_pb2.HolderSeat(key_epoch=epoch.epoch, holder_index=share.index)
    hello = broker_pb2.HolderChannelRequest(hello=broker_pb2.HolderHello(seats=[seat]))
    outbox: queue.Queue[broker_pb2.HolderChannelRequest | None] = queue.Queue()
    outbox.put(hello)
    holder_call = stub(world, "politie").HolderChannel(iter(outbox.get, None))
    readers = [
        threading.Thread(target=read, args=("mailbox", mailbox_call, "event"), daemon=True),
        threading.Thread(target=read, args=("holder", holder_call, "message"), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        # Both calls open: the holder channel's first heartbeat, a hit notice on the stream.
        assert ended["holder"].get(timeout=15) == "heartbeat"
        for party in ("gemeente", "belastingdienst"):
            submit(world, party, token, os.urandom(16))
        assert ended["mailbox"].get(timeout=15) == "item"
        running.stop(30.0)
        assert ended["mailbox"].get(timeout=60) == "ended"
        assert ended["holder"].get(timeout=60) == "ended"
    finally:
        outbox.put(None)
        running.stop(0)


def test_closing_a_removed_partys_channels_closes_each_once():
    """A covenant version that removes a key holder closes its channel (one channel may
    hold several seats) and answers what waited on it; the other holders' stay open."""
    board = relay.Switchboard()
    removed = board.open("politie", frozenset({(1, 1), (2, 1)}))
    staying = board.open("riec", frozenset({(1, 3)}))
    board.close_party("politie")
    assert removed.outbound.get(timeout=5) is None  # the channel's requests end
    assert removed.outbound.empty()  # closed once
    assert board.local(1) == [3]
    assert board.local(2) == []
    assert staying.outbound.empty()
