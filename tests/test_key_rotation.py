"""Rotating the OPRF key through the daemons (docs/operations.md "Rotating the OPRF key").

Three nodes, all key holders (2-of-3), a broker, as processes with mTLS and SQLite, and
a ``watch_hits`` application on each node. Hits form under key epoch 1; epoch 2 is dealt
and staged (a covenant version), the holders serve both epochs and the nodes re-tokenise
every live identifier under it; while staged one node imports a signal that grows a hit
and another withdraws one (a shrink); the switch (the next version) is refused while a
node has not re-tokenised, and accepted once every party is ready; then a fresh import
grows a hit through epoch 2. Every application sees every hit change exactly once, under
the same group ids before and after the switch; the broker holds no epoch-1 entry after
it and the holders no epoch-1 share. Insiders: a batch under an epoch neither current nor
staged is refused naming ``key_epoch``; a party that joins a staged group is told nothing.

Every process is SIGKILLed at teardown, whatever happened; every wait is bounded.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from test_end_to_end import PARTIES, SEE_ALL, SPECS, Watcher

from samenloop.node.client import Hit
from samenloop.node.daemon.uplink import broker_channel
from samenloop.node.identifiers.normalise import Identifier, IdentifierType
from samenloop.node.tokens import derive, evaluation, keysetup, threshold
from samenloop.policies import config, crypto
from samenloop.policies.covenant import Covenant, KeyHolderSeat, OprfKeyEpoch, covenant_to_toml
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.errors import NotEnoughHolders
from samenloop.v1 import broker_pb2, broker_pb2_grpc, common_pb2

from daemons import Daemons, cli_command, running_covenant, sqlite_count, sqlite_rows, wait_until

COVENANT = "riec-rotation"
WAIT = 90.0
GEM, POL, BD = PARTIES  # gemeente, politie, belastingdienst
X, Y = "111222333", "123456782"  # the subjects of the two hits (valid BSNs)


def publish(daemons: Daemons, draft: Covenant, name: str) -> subprocess.CompletedProcess[str]:
    """Sign ``draft`` by every signer and publish it with a covenant timestamp, as the
    administrators do with the CLI."""
    prov = daemons.provisioned
    path = prov.root / f"{name}.json"
    path.write_bytes(prov.sign(draft).to_json())
    (prov.root / f"{name}.toml").write_bytes(covenant_to_toml(draft))
    return subprocess.run(
        cli_command(
            "covenant", "publish", str(path), "--config", str(prov.node_configs[GEM]),
            "--timestamp-key", str(prov.timestamp_key),
        ),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def hit_of(daemons: Daemons, party: str, reference: str) -> Hit | None:
    for hit in daemons.clients[party].hits():
        if any(s.reference == reference for s in hit.own_signals):
            return hit
    return None


def wait_hit(daemons: Daemons, party: str, reference: str) -> Hit:
    found: list[Hit] = []

    def there() -> bool:
        hit = hit_of(daemons, party, reference)
        found[:] = [] if hit is None else [hit]
        return bool(found)

    daemons.until(f"{party}: a hit on {reference}", WAIT, there)
    return found[0]


def changes(watcher: Watcher, group: bytes) -> int:
    """How many changes of ``group`` the application has seen."""
    return sum(1 for g, _, _ in watcher.snapshot()[0] if g == group)


def wait_changes(daemons: Daemons, watcher: Watcher, party: str, group: bytes, count: int) -> None:
    wait_until(
        lambda: changes(watcher, group) >= count,
        WAIT,
        lambda: (
            f"{party}'s application saw {count} changes of {group.hex()[:8]}: "
            f"{[(g.hex()[:8], r) for g, r, _ in watcher.snapshot()[0]]}, error {watcher.error!r}"
        ),
        check=daemons.check_alive,
    )


def broker_stub(daemons: Daemons, party: str) -> broker_pb2_grpc.BrokerStub:
    node = config.load_node_config(daemons.provisioned.node_configs[party])
    channel = broker_channel(
        node.broker,
        ca_certificate=node.ca_certificate.read_bytes(),
        private_key=crypto.read_secret_file(node.private_key),
        certificate=node.certificate.read_bytes(),
    )
    return broker_pb2_grpc.BrokerStub(channel)


def rotation_ready(daemons: Daemons) -> bool:
    for party in PARTIES:
        status = daemons.status(party)
        if status is None or status.staged_key_epoch != 2:
            return False
        if status.rotation_restated != status.rotation_live or status.outbox_pending:
            return False
    return True


def test_a_rotation_neither_misses_nor_repeats_a_hit(tmp_path: Path) -> None:
    now = datetime.now(UTC) - timedelta(minutes=5)
    with running_covenant(
        tmp_path, COVENANT, SPECS, PARTIES, 2, now=now, policy=SEE_ALL
    ) as daemons:
        prov = daemons.provisioned
        watchers = {p: Watcher(prov.node_configs[p]) for p in PARTIES}
        try:
            _run(daemons, watchers)
        finally:
            for watcher in watchers.values():
                watcher.stop()


def _run(daemons: Daemons, watchers: dict[str, Watcher]) -> None:
    prov = daemons.provisioned
    clients = daemons.clients
    categories = {GEM: "vastgoedmisbruik", POL: "drugsproductie", BD: "witwasindicatie"}

    def add(party: str, reference: str, bsn: str) -> None:
        clients[party].add_signal(reference, categories[party], [("bsn", bsn)])

    # --- epoch 1: H1 = {gemeente, politie} on X; H2 = {belastingdienst, gemeente, politie} on Y
    add(GEM, "G1", X)
    add(POL, "P1", X)
    h1 = wait_hit(daemons, GEM, "G1").group_id
    add(BD, "B1", Y)
    add(GEM, "G2", Y)
    h2 = wait_hit(daemons, BD, "B1").group_id
    add(POL, "P2", Y)
    wait_changes(daemons, watchers[BD], BD, h2, 2)
    wait_changes(daemons, watchers[POL], POL, h2, 1)

    # --- stage epoch 2: dealt 2-of-3 to the same holders, each share kept beside key_share
    v1 = prov.covenant
    holders = {p: PartyKeys.load(prov.party_dir(p) / "party-keys.json") for p in PARTIES}
    dealt, sealed = keysetup.deal(
        COVENANT, 2, 2, [(p, k.public().x25519) for p, k in holders.items()],
        now=datetime.now(UTC) - timedelta(minutes=1), lifetime=timedelta(days=365),
    )  # fmt: skip
    for share in sealed:
        opened = keysetup.open_share(share, dealt, holders[share.holder])
        base = prov.party_dir(share.holder) / "key-share.json"
        keysetup.save_share(keysetup.share_path(base, 2), dealt, opened)
    staged_epoch = OprfKeyEpoch(
        epoch=2,
        threshold=2,
        group_public_key=dealt.group_public_key,
        holders=tuple(KeyHolderSeat(h.index, h.party, h.commitment) for h in dealt.holders),
        created_at=dealt.created_at,
        retire_after=dealt.retire_after,
    )
    # The belastingdienst's node is down while the others re-tokenise.
    daemons.stop(BD)
    del daemons.processes[BD]  # stopped on purpose: not a death to report
    v2 = replace(v1, version=2, next_key_epoch=staged_epoch)
    done = publish(daemons, v2, "v2")
    assert done.returncode == 0, done.stderr + done.stdout

    # Insider: a batch under an epoch neither current nor staged stores nothing.
    entry = broker_pb2.TokenEntry(token=secrets.token_bytes(32), signal_ref=secrets.token_bytes(16))
    entry.expires_at.FromDatetime(datetime.now(UTC) + timedelta(days=30))
    with pytest.raises(grpc.RpcError) as refused:
        broker_stub(daemons, POL).SubmitTokens(
            broker_pb2.SubmitTokensRequest(
                client_batch_id=secrets.token_bytes(16), key_epoch=7, entries=[entry]
            ),
            timeout=30,
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "key_epoch" in (refused.value.details() or "")
    assert (
        sqlite_count(
            daemons.broker_database, "SELECT count(*) FROM token_entries WHERE key_epoch = 7"
        )
        == 0
    )

    # The politie and the gemeente re-tokenise; the belastingdienst cannot.
    def restated(party: str) -> bool:
        status = daemons.status(party)
        return (
            status is not None
            and status.staged_key_epoch == 2
            and status.rotation_live > 0
            and status.rotation_restated == status.rotation_live
        )

    daemons.until(
        "gemeente and politie re-tokenised", WAIT, lambda: restated(GEM) and restated(POL)
    )
    # The switch now is refused, naming the party not ready; nothing changes.
    v3 = replace(v2, version=3, key_epoch=staged_epoch, next_key_epoch=None)
    early = publish(daemons, v3, "v3-early")
    assert early.returncode != 0
    assert "belastingdienst" in early.stderr
    assert "key_epoch" in early.stderr
    assert (
        sqlite_count(
            daemons.broker_database, "SELECT count(*) FROM token_entries WHERE key_epoch = 1"
        )
        > 0
    )

    # Insider: the politie joins the staged group of X under a fresh ref of its own (its
    # node's database holds its staged token of X); nobody is told, the politie neither.
    politie_db = daemons.node_database(POL)
    ((staged_x,),) = sqlite_rows(
        politie_db,
        "SELECT r.token FROM restated_tokens r JOIN signal_identifiers i ON i.id = r.identifier_id"
        " JOIN signals s ON s.id = i.signal_id WHERE s.reference = 'P1'",
    )
    seen_before = {p: len(w.snapshot()[0]) for p, w in watchers.items()}
    stub = broker_stub(daemons, POL)
    spy_ref = secrets.token_bytes(16)
    for epoch, token in ((1, secrets.token_bytes(32)), (2, bytes(staged_x))):
        spy = broker_pb2.TokenEntry(token=token, signal_ref=spy_ref)
        spy.expires_at.FromDatetime(datetime.now(UTC) + timedelta(days=30))
        stub.SubmitTokens(
            broker_pb2.SubmitTokensRequest(
                client_batch_id=secrets.token_bytes(16), key_epoch=epoch, entries=[spy]
            ),
            timeout=30,
        )
    stub.WithdrawTokens(
        broker_pb2.WithdrawTokensRequest(
            client_batch_id=secrets.token_bytes(16), signal_refs=[spy_ref]
        ),
        timeout=30,
    )

    # --- while staged: the belastingdienst comes back and grows H1; the politie shrinks H2
    daemons.start(BD)
    daemons.wait_ready([BD])
    add(BD, "B2", X)
    wait_changes(daemons, watchers[GEM], GEM, h1, 2)
    clients[POL].withdraw_signal("P2", reason="ended", officer="agent")
    wait_changes(daemons, watchers[BD], BD, h2, 3)
    daemons.until("every node re-tokenised", WAIT, lambda: rotation_ready(daemons))
    shown = subprocess.run(
        cli_command("broker", "rotation-status", "--config", str(prov.broker_config), "--json"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert '"ready": true' in shown.stdout
    # Nothing was told of the spy's entries (the hits seen are the two changes above).
    for party, watcher in watchers.items():
        daemons.until(
            f"{party}'s application up to date",
            WAIT,
            lambda w=watcher, p=party: _caught_up(daemons, w, p),
        )
    assert {p: len(w.snapshot()[0]) for p, w in watchers.items()} == {
        GEM: seen_before[GEM] + 2,
        POL: seen_before[POL] + 2,
        BD: seen_before[BD] + 2,
    }

    # --- the switch
    switched = publish(daemons, v3, "v3")
    assert switched.returncode == 0, switched.stderr + switched.stdout
    assert (
        sqlite_count(
            daemons.broker_database, "SELECT count(*) FROM token_entries WHERE key_epoch = 1"
        )
        == 0
    )
    held = sqlite_count(
        daemons.broker_database, "SELECT count(*) FROM token_entries WHERE key_epoch = 2"
    )
    assert held == 5  # G1, P1, B1, G2, B2 (P2 withdrawn)

    # A fresh import under epoch 2 grows H2 again.
    add(POL, "P3", Y)
    assert wait_hit(daemons, POL, "P3").group_id == h2

    # Every application saw every change once, under the groups' ids from epoch 1:
    # nothing at the switch, nothing of the staged groups, nothing twice.
    expected = {GEM: {h1: 2, h2: 4}, POL: {h1: 2, h2: 3}, BD: {h1: 1, h2: 4}}
    for party, watcher in watchers.items():
        wait_changes(daemons, watcher, party, h2, expected[party][h2])
        daemons.until(
            f"{party}'s application up to date",
            WAIT,
            lambda w=watcher, p=party: _caught_up(daemons, w, p),
        )
        seen = [(g, r) for g, r, _ in watcher.snapshot()[0]]
        assert watcher.error is None
        assert len(seen) == len(set(seen)), party  # nothing twice
        assert {g: changes(watcher, g) for g in {h1, h2}} == expected[party], party
        assert {g for g, _ in seen} == {h1, h2}, party
        for group in (h1, h2):
            revisions = [r for g, r in seen if g == group]
            assert revisions == sorted(revisions), party

    # The holders serve epoch 2 only: their epoch-1 shares are gone, and a request under
    # epoch 1 finds no holder.
    for party in PARTIES:
        base = prov.party_dir(party) / "key-share.json"
        daemons.until(
            f"{party} dropped its epoch-1 share", WAIT, lambda b=base: keysetup.share_epoch(b) == 2
        )
        assert not keysetup.share_path(base, 2).exists()
        assert not keysetup.share_path(base, 1).exists()
    epoch1 = threshold.KeyEpoch.from_covenant(v1)
    keys = PartyKeys.load(prov.party_dir(GEM) / "party-keys.json")

    def relay(requests: dict[int, bytes]) -> dict[int, bytes]:
        answer = broker_stub(daemons, GEM).Evaluate(
            broker_pb2.EvaluateRequest(
                requests=[common_pb2.Signed.FromString(r) for r in requests.values()]
            ),
            timeout=30,
        )
        return {
            r.holder_index: r.response.SerializeToString()
            for r in answer.replies
            if r.HasField("response")
        }

    with pytest.raises((NotEnoughHolders, grpc.RpcError)):
        evaluation.tokenise(
            keys, v3, derive.TokenDomain(COVENANT, 1), epoch1,
            [Identifier(IdentifierType.BSN, X)], relay, now=datetime.now(UTC),
        )  # fmt: skip


def _caught_up(daemons: Daemons, watcher: Watcher, party: str) -> bool:
    """The application has seen the node's newest hit revision of every group."""
    latest = watcher.latest()
    return all(latest.get(h.group_id, 0) >= h.revision for h in daemons.clients[party].hits())
