"""The covenant's policies, each end to end through real daemons (issue 5).

Every test starts its own covenant: a real broker and three real nodes in this
process (mTLS on loopback, SQLite), driven through the client library, the
admin CLI and the broker's own sweep, all on one controllable clock:

* quotas hold: a node gets no more identifiers tokenised per day than the
  covenant's ``oprf_evaluations_per_day`` (the node stops asking once the holders'
  answers say nothing is left, the holders refuse the rest, which stay pending and
  never reach the broker, until the next day); a request beyond
  ``disclosure_requests_per_day`` is refused as ``quota_exceeded`` and releases nothing;
* expired signals disappear: the owner's expiry sweep withdraws them, the broker's
  own sweep drops them even when their node is offline, and the other party's hit
  closes;
* covenant updates published with ``PublishCovenant`` (the admin CLI) reach every
  node, also one that was offline and one restarted afterwards; a version that
  removes a party cuts it off at the broker, its new signals reach nothing, and
  the remaining parties' hits no longer show it;
* no details without a hit: a party asking about a hit it did not receive is
  refused locally, and a hand-sealed request carrying someone else's notice, or
  its own notice of another hit, is refused at the owner and releases nothing.

``test_disclosure.py`` covers the sans-IO disclosure rules, four eyes,
replays, forged notices and mailbox-delivered covenant updates.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from stdnum.nl import bsn as stdnum_bsn

from samenloop.node.client import Disclosure, Hit, SignalInput
from samenloop.node.daemon.process import build_node
from samenloop.node.daemon.uplink import IDLE_SECONDS
from samenloop.node.disclosure import protocol as disclosure
from samenloop.node.disclosure.models import DisclosureState
from samenloop.node.provision import PartySpec, provision
from samenloop.node.signals.models import HitKind, HitState, IdentifierState, SignalState
from samenloop.node.tokens import keysetup
from samenloop.policies import cli, database
from samenloop.policies import covenant as covenant_model
from samenloop.policies.audit import AuditKind
from samenloop.policies.config import load_node_config
from samenloop.policies.covenant import Covenant, Role, with_new_attribute_key
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.errors import DecryptionFailed, InvalidInput, NotFound, SamenloopError
from samenloop.policies.policy import MIN_TOKEN_QUOTA, Policy, example_policy
from samenloop.policies.trust import SignedCovenant
from samenloop.v1 import broker_pb2, broker_pb2_grpc, common_pb2

import in_process
from in_process import wait_for

GEMEENTE, WOCO, GEMEENTE_B = "gemeente", "woco", "gemeente-b"
SPECS = (
    PartySpec(GEMEENTE, "Gemeente Test", Role.GEMEENTE),  # key holder
    PartySpec(WOCO, "Woningcorporatie Test", Role.WONINGCORPORATIE),  # key holder
    PartySpec(GEMEENTE_B, "Gemeente Buurdorp", Role.GEMEENTE),
)
HOLDERS = (GEMEENTE, WOCO)
DETAILS = {"naam": "J. de Vries", "adres": "Dorpsstraat 1", "omschrijving": "leegstand"}


def valid_bsns(count: int, start: int = 20_000_000) -> list[str]:
    """``count`` distinct BSNs that pass the 11-test, from ``start`` (8 digits) upward."""
    found: list[str] = []
    prefix = start
    while len(found) < count:
        digits = f"{prefix:08d}"
        check = sum(int(d) * w for d, w in zip(digits, range(9, 1, -1), strict=True)) % 11
        if check < 10:
            found.append(digits + str(check))
        prefix += 1
    assert all(stdnum_bsn.is_valid(b) for b in found)
    return found


BSN, BSN_2, *SPARE_BSNS = valid_bsns(16)


class Cluster(in_process.Cluster):
    """The covenant of these tests, with its broker and nodes running in this process."""

    def tokens_at_broker(self) -> int:
        return int(self.broker.store.tokens.count_tokens())

    def advance(self, delta: timedelta) -> None:
        """Move the shared clock on by ``delta``, with a covenant timestamp issued at the new
        time published, as the administrators' timestamp job would have done meanwhile
        (else every node would be stale once the freshness period passed)."""
        self.clock.advance(delta)
        channel, stub = self.broker_stub(next(iter(self.nodes)))
        with channel:
            served = stub.GetCovenant(broker_pb2.GetCovenantRequest(), timeout=10).covenant
            covenant = SignedCovenant.from_proto(served).unverified()  # the version in force
            stamp = self.provisioned.stamp(covenant, now=self.clock())
            stub.PublishTimestamp(
                broker_pb2.PublishTimestampRequest(covenant_timestamp=stamp.to_proto()),
                timeout=10,
            )

    def hit_with(self, party: str, *members: str) -> Hit:
        """The open hit ``party``'s node shows with all of ``members`` in it."""
        return wait_for(
            f"{party}'s hit with {', '.join(members)}",
            lambda: next(
                (
                    h
                    for h in self.clients[party].hits(HitState.OPEN)
                    if set(members) <= {m.party for m in h.members}
                ),
                None,
            ),
        )

    def ref_of(self, party: str, reference: str) -> bytes:
        """The signal ref of ``party``'s signal ``reference`` (its first identifier)."""
        record = self.nodes[party].repositories.signals.signal(reference)
        assert record is not None, f"{party} holds no signal {reference!r}"
        return record.identifiers[0].signal_ref

    def publish(self, draft: Covenant, *, by: str, capsys: pytest.CaptureFixture[str]) -> str:
        """Sign ``draft`` with the covenant's signers and publish it with the admin CLI,
        over mTLS with ``by``'s node certificate, with a covenant timestamp for it (as the
        administrators do); returns what the CLI printed."""
        path = self.provisioned.root / f"covenant-v{draft.version}.json"
        path.write_bytes(self.provisioned.sign(draft).to_json())
        capsys.readouterr()
        code = cli.main(
            [
                "covenant",
                "publish",
                str(path),
                "--config",
                str(self.provisioned.node_configs[by]),
                "--timestamp-key",
                str(self.provisioned.timestamp_key),
            ]
        )
        printed = capsys.readouterr()
        assert code == 0, f"publish failed ({code}): {printed.err}"
        return printed.out

    def broker_stub(self, party: str) -> tuple[grpc.Channel, broker_pb2_grpc.BrokerStub]:
        """A channel to the broker with ``party``'s TLS identity, as its node has."""
        config = load_node_config(self.provisioned.node_configs[party])
        channel = grpc.secure_channel(
            config.broker,
            grpc.ssl_channel_credentials(
                root_certificates=config.ca_certificate.read_bytes(),
                private_key=config.private_key.read_bytes(),
                certificate_chain=config.certificate.read_bytes(),
            ),
        )
        return channel, broker_pb2_grpc.BrokerStub(channel)


def policy_with(
    *, oprf_per_day: int | None = None, disclosures_per_day: int | None = None
) -> Policy:
    """The example rules with the given daily quotas."""
    policy = example_policy()
    quotas = policy.quotas
    if oprf_per_day is not None:
        quotas = dataclasses.replace(quotas, oprf_evaluations_per_day=oprf_per_day)
    if disclosures_per_day is not None:
        quotas = dataclasses.replace(quotas, disclosure_requests_per_day=disclosures_per_day)
    return dataclasses.replace(policy, quotas=quotas)


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[[Policy], Cluster]]:
    """Start a covenant with ``policy``: its broker and every party's node."""
    started: list[Cluster] = []

    def make(policy: Policy) -> Cluster:
        root = tmp_path / f"covenant-{len(started)}"
        cluster = in_process.start_cluster(
            root, "riec-policies", SPECS, HOLDERS, policy=policy, cluster=Cluster
        )
        started.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in started:
            cluster.close()


def final_disclosure(cluster: Cluster, party: str, request_id: bytes) -> Disclosure:
    """``party``'s record of a disclosure request once it is granted or refused."""

    def decided() -> Disclosure | None:
        try:
            found = cluster.clients[party].disclosure(request_id)
        except NotFound:  # not arrived yet
            return None
        return found if found.state in (DisclosureState.GRANTED, DisclosureState.REFUSED) else None

    return wait_for(f"{party}'s decision on request {request_id.hex()}", decided)


# --- quotas ---------------------------------------------------------------------------------

OPRF_PER_DAY = 6


def test_the_daily_oprf_quota_stops_tokenisation_at_the_key_holders(
    make_cluster: Callable[[Policy], Cluster],
) -> None:
    cluster = make_cluster(policy_with(oprf_per_day=OPRF_PER_DAY))
    flooder = cluster.clients[GEMEENTE_B]
    # The holders count blinded elements: one per identifier. Exactly the quota first.
    for i in range(OPRF_PER_DAY):
        flooder.add_signal(f"B-{i}", "woonfraude", [("bsn", SPARE_BSNS[i])])
    wait_for(
        f"{OPRF_PER_DAY} tokens at the broker",
        lambda: cluster.tokens_at_broker() == OPRF_PER_DAY,
    )

    # Two more the same day. The holders' answers said that nothing is left today, so the
    # flooder's node asks no more; nothing more reaches the broker.
    over = [f"B-{i}" for i in range(OPRF_PER_DAY, OPRF_PER_DAY + 2)]
    for i, reference in enumerate(over, start=OPRF_PER_DAY):
        flooder.add_signal(reference, "woonfraude", [("bsn", SPARE_BSNS[i])])
    last_error = wait_for(
        "the flooder's status naming the used-up quota",
        lambda: "no quota left today" in (e := flooder.status().last_error) and e,
    )
    assert "NotEnoughHolders" in last_error, last_error
    for holder in HOLDERS:
        status = cluster.clients[holder].status().key_holder
        assert status is not None, holder
        assert status.requests_refused == 0, holder

    # Restarted, the node no longer knows: it asks, both holders refuse and say what is
    # left (nothing), and it stops asking.
    cluster.stop(GEMEENTE_B)
    cluster.start(GEMEENTE_B)
    flooder = cluster.clients[GEMEENTE_B]

    def refused_by_both() -> bool:
        return all(
            (status := cluster.clients[h].status()).key_holder is not None
            and status.key_holder.requests_refused >= 1
            for h in HOLDERS
        )

    wait_for("both key holders refusing", refused_by_both)
    last_error = wait_for(
        "the flooder's status naming the quota refusal",
        lambda: "QUOTA_EXCEEDED" in (e := flooder.status().last_error) and e,
    )
    assert "NotEnoughHolders" in last_error, last_error
    time.sleep(1.5)  # a few more rounds of the work loop: it asks no more
    for holder in HOLDERS:
        status = cluster.clients[holder].status().key_holder
        assert status is not None, holder
        assert status.requests_refused == 1, holder
    # Tokenising waits, the rest of the work does not: a withdrawal still reaches the broker.
    flooder.withdraw_signal("B-0")
    wait_for("the withdrawal at the broker", lambda: cluster.tokens_at_broker() == OPRF_PER_DAY - 1)
    for holder in HOLDERS:
        served = cluster.clients[holder].status().key_holder
        assert served is not None
        assert served.elements_evaluated == OPRF_PER_DAY, (
            f"{holder} evaluated {served.elements_evaluated} elements, quota {OPRF_PER_DAY}"
        )
        assert cluster.nodes[holder].repositories.tokens.evaluations_on(
            GEMEENTE_B, cluster.clock().date()
        ) == (OPRF_PER_DAY)
    assert cluster.tokens_at_broker() == OPRF_PER_DAY - 1, (
        "tokens beyond the quota reached the broker"
    )
    assert cluster.nodes[
        GEMEENTE_B
    ].repositories.signals.status_counts().identifiers_pending == len(over)
    for reference in over:
        record = cluster.nodes[GEMEENTE_B].repositories.signals.signal(reference)
        assert record is not None
        assert [i.state for i in record.identifiers] == [IdentifierState.PENDING], reference
        assert record.identifiers[0].token is None

    # The quota is per UTC day: the next day the waiting identifiers get their tokens.
    cluster.advance(timedelta(days=1))
    cluster.nodes[GEMEENTE_B].uplink.wake.set()
    wait_for(
        "the rest tokenised the next day",
        lambda: cluster.tokens_at_broker() == OPRF_PER_DAY - 1 + len(over),
    )
    assert cluster.nodes[GEMEENTE_B].repositories.signals.status_counts().identifiers_pending == 0


def test_a_batch_over_the_broker_s_daily_quota_waits_in_the_outbox_for_the_next_day(
    make_cluster: Callable[[Policy], Cluster],
) -> None:
    """The broker counts token entries per party per UTC day (issue 12); a node whose
    batch is refused for it keeps the batch and sends it the next day, losing nothing."""
    per_day = MIN_TOKEN_QUOTA
    policy = example_policy()
    cluster = make_cluster(
        dataclasses.replace(
            policy, quotas=dataclasses.replace(policy.quotas, token_entries_per_day=per_day)
        )
    )
    bsns = valid_bsns(per_day + 1, start=30_000_000)
    rows = [SignalInput(f"Q-{i}", "woonfraude", [("bsn", b)]) for i, b in enumerate(bsns)]
    report = cluster.clients[GEMEENTE_B].import_signals(rows)
    assert report.imported == len(rows)
    repositories = cluster.nodes[GEMEENTE_B].repositories
    error = wait_for(
        "the node's status naming the quota",
        lambda: (
            "quota.token_entries_per_day" in (e := cluster.clients[GEMEENTE_B].status().last_error)
            and e
        ),
        timeout=60,
    )
    counts = repositories.signals.status_counts()
    at_broker = cluster.tokens_at_broker()
    assert at_broker <= per_day
    assert counts.identifiers_pending + counts.outbox_entries + at_broker == per_day + 1
    assert "broker quota reached" in error
    assert cluster.broker.store.tokens.usage(GEMEENTE_B).submitted == at_broker  # batches are whole
    cluster.advance(timedelta(days=1))
    cluster.nodes[GEMEENTE_B].uplink.wake.set()
    wait_for(
        "the rest sent and acknowledged the next day",
        lambda: (
            cluster.tokens_at_broker() == per_day + 1
            and repositories.signals.status_counts().outbox_entries == 0
        ),
    )
    assert cluster.clients[GEMEENTE_B].status().last_error == ""


def test_an_envelope_over_the_broker_s_daily_quota_waits_in_the_outbox_for_the_next_day(
    make_cluster: Callable[[Policy], Cluster],
) -> None:
    """The broker counts envelopes per sender and UTC day (issue 12); a node whose envelope
    is refused for it keeps the envelope (it neither drops it nor sends it again and again)
    and sends it the next day, when the request is answered as usual."""
    policy = example_policy()
    cluster = make_cluster(
        dataclasses.replace(policy, quotas=dataclasses.replace(policy.quotas, envelopes_per_day=1))
    )
    cluster.clients[WOCO].add_signal("W-1", "woonfraude", [("bsn", BSN)], details=DETAILS)
    cluster.clients[GEMEENTE].add_signal("G-1", "vastgoedmisbruik", [("bsn", BSN)])
    hit = cluster.hit_with(GEMEENTE, WOCO)
    (woco_ref,) = next(m for m in hit.members if m.party == WOCO).signal_refs
    gemeente = cluster.clients[GEMEENTE]
    first = gemeente.request_disclosure(
        hit.group_id, WOCO, woco_ref, "adresfraude", ["naam"], officer="a@gemeente"
    )
    assert final_disclosure(cluster, GEMEENTE, first.request_id).state is DisclosureState.GRANTED
    second = gemeente.request_disclosure(
        hit.group_id, WOCO, woco_ref, "adresfraude", ["adres"], officer="a@gemeente"
    )
    error = wait_for(
        "the node's status naming the envelope quota",
        lambda: "quota.envelopes_per_day" in (e := gemeente.status().last_error) and e,
    )
    assert "broker quota reached" in error
    repositories = cluster.nodes[GEMEENTE].repositories
    assert len(repositories.shared.envelope_outbox()) == 1  # kept, not dropped
    usage = cluster.broker.store.mailboxes.envelope_usage(GEMEENTE)
    time.sleep(2 * IDLE_SECONDS)  # the work loop runs meanwhile: it does not try again
    assert cluster.broker.store.mailboxes.envelope_usage(GEMEENTE) == usage
    with pytest.raises(NotFound):
        cluster.clients[WOCO].disclosure(second.request_id)
    # To the next UTC day, where the quota starts again: just past midnight, not a whole
    # day on (that would outlive the covenant timestamp's day of freshness, and the owner
    # would rightly release nothing).
    now = cluster.clock()
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    cluster.clock.advance(midnight - now + timedelta(seconds=1))
    cluster.nodes[GEMEENTE].uplink.wake.set()
    answered = final_disclosure(cluster, GEMEENTE, second.request_id)
    assert answered.state is DisclosureState.GRANTED, answered.refusal_message
    assert repositories.shared.envelope_outbox() == []
    wait_for("the status cleared", lambda: gemeente.status().last_error == "")


def test_the_daily_disclosure_quota_refuses_the_next_request(
    make_cluster: Callable[[Policy], Cluster],
) -> None:
    cluster = make_cluster(policy_with(disclosures_per_day=1))
    cluster.clients[WOCO].add_signal("W-1", "woonfraude", [("bsn", BSN)], details=DETAILS)
    cluster.clients[GEMEENTE].add_signal("G-1", "vastgoedmisbruik", [("bsn", BSN)])
    hit = cluster.hit_with(GEMEENTE, WOCO)
    (woco_ref,) = next(m for m in hit.members if m.party == WOCO).signal_refs
    gemeente = cluster.clients[GEMEENTE]

    first = gemeente.request_disclosure(
        hit.group_id, WOCO, woco_ref, "adresfraude", ["naam"], officer="a@gemeente"
    )
    granted = final_disclosure(cluster, GEMEENTE, first.request_id)
    assert granted.state is DisclosureState.GRANTED, granted.refusal_message
    assert dict(granted.released_fields) == {"naam": DETAILS["naam"]}

    second = gemeente.request_disclosure(
        hit.group_id, WOCO, woco_ref, "adresfraude", ["adres"], officer="a@gemeente"
    )
    refused = final_disclosure(cluster, GEMEENTE, second.request_id)
    assert (refused.state, refused.refusal_reason) == (
        DisclosureState.REFUSED,
        "quota_exceeded",
    ), refused.refusal_message
    assert dict(refused.released_fields) == {}, "a refused request released details"
    at_owner = final_disclosure(cluster, WOCO, second.request_id)
    assert (at_owner.state, at_owner.refusal_reason) == (DisclosureState.REFUSED, "quota_exceeded")
    assert dict(at_owner.released_fields) == {}
    decisions = cluster.nodes[WOCO].repositories.shared.audit_entries(
        kind=AuditKind.DISCLOSURE_DECISION, subject=second.request_id.hex()
    )
    assert [(d.details["outcome"], d.details["released"]) for d in decisions] == [("refused", "")]


# --- expiry ---------------------------------------------------------------------------------


def test_expired_signals_leave_the_broker_and_close_the_hits(
    make_cluster: Callable[[Policy], Cluster],
) -> None:
    cluster = make_cluster(example_policy())
    now = cluster.clock()
    woco, gemeente = cluster.clients[WOCO], cluster.clients[GEMEENTE]
    woco.add_signal("W-1", "woonfraude", [("bsn", BSN)], expires_at=now + timedelta(hours=1))
    cluster.clients[GEMEENTE_B].add_signal(
        "B-1", "woonfraude", [("bsn", BSN_2)], expires_at=now + timedelta(hours=2)
    )
    gemeente.add_signal("G-1", "vastgoedmisbruik", [("bsn", BSN)])
    gemeente.add_signal("G-2", "vastgoedmisbruik", [("bsn", BSN_2)])
    with_woco = cluster.hit_with(GEMEENTE, WOCO)
    with_b = cluster.hit_with(GEMEENTE, GEMEENTE_B)
    assert cluster.tokens_at_broker() == 4
    assert cluster.broker.store.tokens.count_groups() == 2

    # An hour and a half on: woco's node sweeps its expired signal and withdraws it.
    cluster.clock.advance(timedelta(hours=1, minutes=30))
    assert cluster.nodes[WOCO].repositories.signals.expire_signals(cluster.clock()) == 1
    cluster.nodes[WOCO].uplink.wake.set()
    closed = wait_for(
        "the gemeente's hit with woco closed",
        lambda: (h := gemeente.hit(with_woco.group_id)).state is HitState.CLOSED and h,
    )
    assert closed.last_kind is HitKind.CLOSED
    assert woco.signal("W-1").state is SignalState.EXPIRED
    wait_for("woco's token gone from the broker", lambda: cluster.tokens_at_broker() == 3)
    assert cluster.broker.store.tokens.count_groups() == 1

    # Later still, with gemeente-b's node offline: the broker's own sweep drops its token.
    cluster.stop(GEMEENTE_B)
    cluster.clock.advance(timedelta(hours=1))
    assert cluster.broker.service.expire() == 1, "the broker's sweep dropped nothing"
    assert cluster.tokens_at_broker() == 2
    assert cluster.broker.store.tokens.count_groups() == 0
    closed = wait_for(
        "the gemeente's hit with gemeente-b closed",
        lambda: (h := gemeente.hit(with_b.group_id)).state is HitState.CLOSED and h,
    )
    assert closed.last_kind is HitKind.CLOSED
    assert gemeente.hits(HitState.OPEN) == []
    assert {h.group_id for h in gemeente.hits(HitState.CLOSED)} == {
        with_woco.group_id,
        with_b.group_id,
    }
    assert cluster.broker.service.expire() == 0  # the gemeente's own signals stay


# --- covenant updates -----------------------------------------------------------------------


def _version(cluster: Cluster, version: int, *, without: str | None = None) -> Covenant:
    covenant = cluster.provisioned.covenant
    quotas = dataclasses.replace(covenant.policy.quotas, disclosure_requests_per_day=100 + version)
    policy = dataclasses.replace(covenant.policy, quotas=quotas)
    if without is None:
        return dataclasses.replace(covenant, version=version, policy=policy)
    remaining = tuple(p for p in covenant.parties if p.id != without)
    return with_new_attribute_key(covenant, remaining, version=version, policy=policy)


def test_key_holders_take_up_a_staged_epoch_and_drop_a_withdrawn_one_as_the_version_arrives(
    make_cluster: Callable[[Policy], Cluster], capsys: pytest.CaptureFixture[str]
) -> None:
    """A version that stages a key epoch reaches the holders' nodes, and each tells the
    broker its new seats at once (a new holder hello), so that re-tokenising can start; a
    version that withdraws the staging makes them give that seat up, and its share file
    goes. The broker's idle heartbeats, on which a holder also looks again, are made an
    hour apart here: none comes during the test."""
    cluster = make_cluster(example_policy())
    cluster.broker.service._heartbeat = 3600.0
    for holder in HOLDERS:  # their channels again, under the rare heartbeat
        cluster.stop(holder)
        cluster.start(holder)
    board = cluster.broker.service._switchboard
    indexes = sorted(seat.index for seat in cluster.provisioned.covenant.key_epoch.holders)
    wait_for("both holders' channels open", lambda: board.local(1) == indexes)
    prov = cluster.provisioned
    keys = {p: PartyKeys.load(prov.party_dir(p) / "party-keys.json") for p in HOLDERS}
    dealt, sealed = keysetup.deal(
        "riec-policies", 2, 2, [(p, k.public().x25519) for p, k in keys.items()],
        now=datetime.now(UTC) - timedelta(minutes=1), lifetime=timedelta(days=365),
    )  # fmt: skip
    shares = {}
    for share in sealed:
        base = prov.party_dir(share.holder) / "key-share.json"
        shares[share.holder] = keysetup.share_path(base, 2)
        keysetup.save_share(
            shares[share.holder], dealt, keysetup.open_share(share, dealt, keys[share.holder])
        )
    staged = covenant_model.OprfKeyEpoch(
        epoch=2,
        threshold=2,
        group_public_key=dealt.group_public_key,
        holders=tuple(
            covenant_model.KeyHolderSeat(h.index, h.party, h.commitment) for h in dealt.holders
        ),
        created_at=dealt.created_at,
        retire_after=dealt.retire_after,
    )
    v2 = dataclasses.replace(prov.covenant, version=2, next_key_epoch=staged)
    cluster.publish(v2, by=GEMEENTE, capsys=capsys)
    staged_indexes = sorted(seat.index for seat in staged.holders)
    wait_for("both holders serving the staged epoch", lambda: board.local(2) == staged_indexes)
    # The current epoch served on (a holder's seats are re-registered together).
    wait_for("both holders serving the current epoch", lambda: board.local(1) == indexes)
    for holder in HOLDERS:
        status = cluster.clients[holder].status().key_holder
        assert status is not None
        assert status.seats == ((1, _index(v2.key_epoch, holder)), (2, _index(staged, holder)))
    # Withdrawn: the seat given up, its share deleted; epoch 1 goes on.
    cluster.publish(
        dataclasses.replace(v2, version=3, next_key_epoch=None), by=GEMEENTE, capsys=capsys
    )
    wait_for(
        "both holders off the withdrawn epoch, on the current one",
        lambda: board.local(2) == [] and board.local(1) == indexes,
    )
    wait_for(
        "the withdrawn epoch's shares deleted", lambda: not any(p.exists() for p in shares.values())
    )


def _index(epoch: covenant_model.OprfKeyEpoch, party: str) -> int:
    """``party``'s holder index in ``epoch``."""
    (index,) = [seat.index for seat in epoch.holders if seat.party == party]
    return index


def test_published_covenant_versions_reach_every_node_and_cut_off_a_removed_party(
    make_cluster: Callable[[Policy], Cluster], capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = make_cluster(example_policy())
    for party in (GEMEENTE, WOCO, GEMEENTE_B):
        cluster.clients[party].add_signal(f"{party}-1", "woonfraude", [("bsn", BSN)])
    hit = cluster.hit_with(WOCO, GEMEENTE, GEMEENTE_B)
    assert cluster.tokens_at_broker() == 3

    # Version 2, published by the gemeente while woco's node is offline.
    cluster.stop(WOCO)
    printed = cluster.publish(_version(cluster, 2), by=GEMEENTE, capsys=capsys)
    assert "now holds version 2" in printed
    for party in (GEMEENTE, GEMEENTE_B):
        wait_for(
            f"{party} on version 2",
            lambda p=party: cluster.clients[p].status().covenant_version == 2,
        )
    cluster.start(WOCO)  # catches up from its mailbox
    wait_for("woco on version 2", lambda: cluster.clients[WOCO].status().covenant_version == 2)
    cluster.stop(GEMEENTE)  # and a restarted node replays it from its own store
    cluster.start(GEMEENTE)
    assert cluster.clients[GEMEENTE].status().covenant_version == 2
    held = cluster.nodes[GEMEENTE].uplink.disclosures._covenant()
    assert held.policy.quotas.disclosure_requests_per_day == 102

    # Version 3 removes gemeente-b: the broker cuts it off at once.
    printed = cluster.publish(_version(cluster, 3, without=GEMEENTE_B), by=WOCO, capsys=capsys)
    assert "now holds version 3" in printed
    for party in (GEMEENTE, WOCO):
        wait_for(
            f"{party} on version 3",
            lambda p=party: cluster.clients[p].status().covenant_version == 3,
        )
    assert cluster.tokens_at_broker() == 2, "the removed party's token stayed at the broker"

    def woco_hit_without_b() -> Hit | None:
        shown = cluster.clients[WOCO].hit(hit.group_id)
        return None if GEMEENTE_B in {m.party for m in shown.members} else shown

    shrunk = wait_for("woco's hit without gemeente-b", woco_hit_without_b)
    assert shrunk.state is HitState.OPEN
    assert shrunk.last_kind is HitKind.SHRUNK
    assert {m.party for m in shrunk.members} == {GEMEENTE}
    # Each node hears of the shrink in its own mailbox, in its own time (woco's above).
    for party in (GEMEENTE, WOCO):
        wait_for(
            f"{party}'s hits without gemeente-b",
            lambda p=party: all(
                GEMEENTE_B not in {m.party for m in shown.members}
                for shown in cluster.clients[p].hits()
            ),
        )

    removed = cluster.clients[GEMEENTE_B]
    last_error = wait_for(
        "gemeente-b's node reporting the broker's refusal",
        lambda: "PERMISSION_DENIED" in (e := removed.status().last_error) and e,
    )
    assert GEMEENTE_B in last_error, last_error
    assert removed.status().covenant_version == 2  # the broker does not send it version 3
    channel, stub = cluster.broker_stub(GEMEENTE_B)
    with channel, pytest.raises(grpc.RpcError) as refused:
        stub.SubmitTokens(
            broker_pb2.SubmitTokensRequest(client_batch_id=secrets.token_bytes(16), key_epoch=1),
            timeout=5,
        )
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED

    # Its new signals go nowhere: they wait at its node and reach nothing at the broker.
    removed.add_signal(f"{GEMEENTE_B}-2", "woonfraude", [("bsn", BSN_2)])
    cluster.nodes[GEMEENTE_B].uplink.wake.set()
    time.sleep(0.5)  # the uplink's next attempt (it is refused; nothing to wait for)
    record = cluster.nodes[GEMEENTE_B].repositories.signals.signal(f"{GEMEENTE_B}-2")
    assert record is not None
    assert [i.state for i in record.identifiers] == [IdentifierState.PENDING]
    assert removed.status().outbox_pending == 0
    assert cluster.tokens_at_broker() == 2, "the removed party reached the broker"


def _boxes(hit: Hit, party: str) -> list[common_pb2.SecretBox]:
    """The sealed attributes of ``party``'s entries in the signed notice behind ``hit``."""
    notice = broker_pb2.HitNotice.FromString(common_pb2.Signed.FromString(hit.notice).body)
    return [box for m in notice.members if m.party == party for box in m.sealed_attributes]


def test_removing_a_party_deals_a_new_attribute_key_that_running_nodes_pick_up(
    make_cluster: Callable[[Policy], Cluster], capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = make_cluster(example_policy())
    removed_keys = PartyKeys.load(cluster.provisioned.party_dir(GEMEENTE_B) / "party-keys.json")
    old_key = cluster.provisioned.covenant.attribute_key_for(removed_keys)
    cluster.clients[GEMEENTE].add_signal("G-1", "woonfraude", [("bsn", BSN)])
    cluster.clients[WOCO].add_signal("W-1", "leegstand", [("bsn", BSN)])
    cluster.clients[GEMEENTE_B].add_signal("B-1", "katvanger", [("bsn", BSN)])
    before = cluster.hit_with(GEMEENTE, WOCO, GEMEENTE_B)
    assert {m.party: m.categories for m in before.members} == {
        WOCO: ("leegstand",),
        GEMEENTE_B: ("katvanger",),
    }
    assert {b.key_version for b in _boxes(before, WOCO)} == {1}

    # Version 2 removes gemeente-b and deals attribute key version 2 to the others.
    v2 = _version(cluster, 2, without=GEMEENTE_B)
    assert v2.attribute_key_version == 2
    cluster.publish(v2, by=WOCO, capsys=capsys)
    for party in (GEMEENTE, WOCO):
        wait_for(
            f"{party} on version 2",
            lambda p=party: cluster.clients[p].status().covenant_version == 2,
        )
        # The running node opened its key of the new version as the version arrived.
        assert cluster.nodes[party].uplink.attribute_keys.versions == (1, 2)
    assert cluster.nodes[GEMEENTE_B].uplink.attribute_keys.versions == (1,)

    # Without a restart: the old hit still shows its categories (boxes of version 1) ...
    def shrunk() -> Hit | None:
        shown = cluster.clients[GEMEENTE].hit(before.group_id)
        return None if GEMEENTE_B in {m.party for m in shown.members} else shown

    assert {m.party: m.categories for m in wait_for("the shrunk hit", shrunk).members} == {
        WOCO: ("leegstand",)
    }
    # ... and new signals are sealed under version 2, which the gemeente reads.
    cluster.clients[GEMEENTE].add_signal("G-2", "vastgoedmisbruik", [("bsn", BSN_2)])
    cluster.clients[WOCO].add_signal("W-2", "drugsproductie", [("bsn", BSN_2)])
    after = wait_for(
        "the new hit",
        lambda: next(
            (
                h
                for h in cluster.clients[GEMEENTE].hits(HitState.OPEN)
                if h.group_id != before.group_id
            ),
            None,
        ),
    )
    assert {m.party: m.categories for m in after.members} == {WOCO: ("drugsproductie",)}
    (box,) = _boxes(after, WOCO)
    assert box.key_version == 2
    # The removed party, holding version 1 only, cannot open it.
    with pytest.raises(DecryptionFailed):
        covenant_model.open_attributes(old_key, box.nonce, box.ciphertext)
    assert not v2.is_party(GEMEENTE_B)

    # A restarted node rebuilds both versions from its covenant history.
    cluster.stop(GEMEENTE)
    cluster.start(GEMEENTE)
    shown = {h.group_id: h for h in cluster.clients[GEMEENTE].hits()}
    assert shown[before.group_id].members[0].categories == ("leegstand",)
    assert shown[after.group_id].members[0].categories == ("drugsproductie",)


def test_a_node_whose_attribute_key_does_not_open_refuses_to_start(tmp_path: Path) -> None:
    provisioned = provision(
        tmp_path / "covenant", "riec-policies", SPECS, HOLDERS, 2, now=datetime.now(UTC)
    )
    covenant = provisioned.covenant
    ids = [p.id for p in covenant.parties]
    woco, gemeente = ids.index(WOCO), ids.index(GEMEENTE)
    parties = list(covenant.parties)
    # A dealing error: the woco's entry carries the box sealed to the gemeente.
    parties[woco] = dataclasses.replace(
        parties[woco], sealed_attribute_key=parties[gemeente].sealed_attribute_key
    )
    misdealt = provisioned.sign(dataclasses.replace(covenant, parties=tuple(parties)))
    provisioned.signed_covenant.write_bytes(misdealt.to_json())
    config = load_node_config(provisioned.node_configs[WOCO])
    engine = database.make_engine(config.database_url)
    database.upgrade(engine, "samenloop.node.daemon.migrations")
    engine.dispose()
    with pytest.raises(DecryptionFailed) as caught:
        build_node(config)
    assert caught.value.field == f"parties[{woco}].sealed_attribute_key"


# --- no details without a hit ---------------------------------------------------------------


def _hand_sealed(cluster: Cluster, notice: bytes, ref: bytes) -> bytes:
    """A request of gemeente-b to woco with ``notice`` attached, queued; its request id. Its
    hit proof is made with gemeente-b's real hit proof key of its own signal B-2."""
    keys = PartyKeys.load(cluster.provisioned.party_dir(GEMEENTE_B) / "party-keys.json")
    proof_key = cluster.nodes[GEMEENTE_B].repositories.disclosures.hit_proof_key(
        cluster.ref_of(GEMEENTE_B, "B-2")
    )
    assert proof_key is not None
    request_id = secrets.token_bytes(16)
    _, envelope = disclosure.build_request(
        keys,
        cluster.provisioned.covenant,
        common_pb2.Signed.FromString(notice),
        request_id=request_id,
        owner=WOCO,
        signal_ref=ref,
        purpose="adresfraude",
        fields=("naam", "adres"),
        officer="x@gemeente-b",
        justification="",
        proof_key=proof_key,
        now=cluster.clock(),
    )
    cluster.queue(GEMEENTE_B, envelope.sealed.SerializeToString(), WOCO)
    return request_id


def test_no_details_about_a_hit_the_requester_did_not_receive(
    make_cluster: Callable[[Policy], Cluster],
) -> None:
    cluster = make_cluster(example_policy())
    woco, outsider = cluster.clients[WOCO], cluster.clients[GEMEENTE_B]
    woco.add_signal("W-1", "woonfraude", [("bsn", BSN)], details=DETAILS)
    woco.add_signal("W-2", "woonfraude", [("bsn", BSN_2)], details=DETAILS)
    cluster.clients[GEMEENTE].add_signal("G-1", "vastgoedmisbruik", [("bsn", BSN)])
    outsider.add_signal("B-2", "vastgoedmisbruik", [("bsn", BSN_2)])
    theirs = cluster.hit_with(GEMEENTE, WOCO)  # gemeente-b is not in it
    own = cluster.hit_with(GEMEENTE_B, WOCO)  # the outsider's own hit, on another subject
    target = cluster.ref_of(WOCO, "W-1")
    assert target in next(m for m in theirs.members if m.party == WOCO).signal_refs
    with pytest.raises(NotFound):
        outsider.hit(theirs.group_id)

    # Through its client: refused locally, naming the hit, nothing stored or sent.
    with pytest.raises((InvalidInput, NotFound)) as refused:
        outsider.request_disclosure(
            theirs.group_id, WOCO, target, "adresfraude", ["naam"], officer="x@gemeente-b"
        )
    assert refused.value.field == "hit_group_id", refused.value
    assert outsider.disclosures() == []
    assert cluster.nodes[GEMEENTE_B].repositories.shared.envelope_outbox(limit=16) == []

    # Hand-sealed, with the gemeente's valid notice of that hit, or with its own notice of
    # another hit: the owner refuses, and releases nothing.
    cases = [
        (_hand_sealed(cluster, theirs.notice, target), "invalid_notice"),
        (_hand_sealed(cluster, own.notice, target), "not_in_hit"),
    ]
    for request_id, reason in cases:
        answered = final_disclosure(cluster, WOCO, request_id)
        assert (answered.state, answered.refusal_reason) == (DisclosureState.REFUSED, reason), (
            answered.refusal_message
        )
        assert dict(answered.released_fields) == {}
        decisions = cluster.nodes[WOCO].repositories.shared.audit_entries(
            kind=AuditKind.DISCLOSURE_DECISION, subject=request_id.hex()
        )
        assert [(d.details["outcome"], d.details["released"]) for d in decisions] == [
            ("refused", "")
        ]
    assert all(dict(d.released_fields) == {} for d in outsider.disclosures())


# --- covenant freshness ---------------------------------------------------------------------


def test_a_node_without_a_fresh_timestamp_stops_sealing_and_asking_and_goes_on_by_itself(
    make_cluster: Callable[[Policy], Cluster],
) -> None:
    """Issue 12: a broker that withholds a new covenant version keeps the nodes on the old
    one for at most the freshness period after the last covenant timestamp it passed on.
    Here no timestamp job runs for a day and a bit: every node goes stale, seals and asks
    nothing (signals are still taken and wait), says so once, and goes on by itself when
    the next timestamp arrives."""
    cluster = make_cluster(example_policy())
    gemeente, woco = cluster.clients[GEMEENTE], cluster.clients[WOCO]
    fresh = gemeente.status()
    assert fresh.covenant_fresh is True, fresh.covenant_stale_reason
    assert fresh.covenant_fresh_until is not None
    woco.add_signal("W-1", "woonfraude", [("bsn", BSN)], details=DETAILS)
    gemeente.add_signal("G-1", "vastgoedmisbruik", [("bsn", BSN)])
    hit = cluster.hit_with(GEMEENTE, WOCO)
    (woco_ref,) = next(m for m in hit.members if m.party == WOCO).signal_refs
    tokens = cluster.tokens_at_broker()

    cluster.clock.advance(timedelta(hours=25))
    stale = wait_for(
        "the gemeente stale", lambda: (s := gemeente.status()).covenant_fresh is False and s
    )
    assert fresh.covenant_fresh_until.isoformat() in stale.covenant_stale_reason
    assert "expired" in stale.covenant_stale_reason
    gemeente.add_signal("G-2", "woonfraude", [("bsn", BSN_2)])  # taken, and waits
    time.sleep(1.5)  # a few rounds of the work loop: nothing is tokenised and sealed
    assert cluster.tokens_at_broker() == tokens
    repositories = cluster.nodes[GEMEENTE].repositories
    assert repositories.signals.status_counts().identifiers_pending == 1
    with pytest.raises(SamenloopError) as caught:
        gemeente.request_disclosure(
            hit.group_id, WOCO, woco_ref, "adresfraude", ["naam"], officer="a@gemeente"
        )
    assert caught.value.reason == "covenant.stale"
    assert repositories.shared.envelope_outbox() == []
    # Audited as it changed: stale at its first start, fresh once the first timestamp came at
    # Hello, then stale.
    changes = repositories.shared.audit_entries(kind=AuditKind.COVENANT_FRESHNESS)
    assert [(e.details["fresh"], e.details["version"]) for e in changes] == [
        (False, 1),
        (True, 1),
        (False, 1),
    ]

    cluster.advance(timedelta(0))  # the timestamp job runs: a timestamp issued now
    wait_for("G-2 sealed and at the broker", lambda: cluster.tokens_at_broker() == tokens + 1)
    assert gemeente.status().covenant_fresh is True
    changes = repositories.shared.audit_entries(kind=AuditKind.COVENANT_FRESHNESS)
    assert [e.details["fresh"] for e in changes] == [False, True, False, True]
    asked = gemeente.request_disclosure(
        hit.group_id, WOCO, woco_ref, "adresfraude", ["naam"], officer="a@gemeente"
    )
    assert final_disclosure(cluster, GEMEENTE, asked.request_id).state is DisclosureState.GRANTED


def test_a_node_fetches_the_newer_version_that_hello_names(
    make_cluster: Callable[[Policy], Cluster], capsys: pytest.CaptureFixture[str]
) -> None:
    """A node that never got a version in its mailbox (here: its items were acknowledged
    in its name while it was away) learns of it at Hello, fetches it with GetCovenant,
    verifies it against the version it holds, and takes its timestamp."""
    cluster = make_cluster(example_policy())
    cluster.stop(GEMEENTE_B)
    cluster.publish(_version(cluster, 2), by=GEMEENTE, capsys=capsys)
    channel, stub = cluster.broker_stub(GEMEENTE_B)
    with channel:
        items = stub.FetchMailbox(broker_pb2.FetchMailboxRequest(), timeout=10).items
        assert {i.WhichOneof("payload") for i in items} >= {"covenant_update", "covenant_timestamp"}
        stub.AckMailbox(broker_pb2.AckMailboxRequest(cursor=items[-1].cursor), timeout=10)
    cluster.start(GEMEENTE_B)
    status = wait_for(
        "gemeente-b on version 2 and fresh",
        lambda: (
            (s := cluster.clients[GEMEENTE_B].status()).covenant_version == 2
            and s.covenant_fresh
            and s
        ),
    )
    assert status.covenant_stale_reason == ""
    repositories = cluster.nodes[GEMEENTE_B].repositories
    assert [
        SignedCovenant.from_proto(common_pb2.SignedCovenant.FromString(v)).unverified().version
        for v in repositories.covenants.covenant_versions()
    ] == [2]
    assert repositories.covenants.covenant_timestamp() is not None
    # It goes on: its signal is sealed and matched under version 2.
    cluster.clients[GEMEENTE_B].add_signal("B-1", "woonfraude", [("bsn", BSN)])
    cluster.clients[GEMEENTE].add_signal("G-1", "vastgoedmisbruik", [("bsn", BSN)])
    cluster.hit_with(GEMEENTE, GEMEENTE_B)
