"""A key holder serving two key epochs while a rotation is staged (``EpochHolders``):
each request goes to the share of its epoch, each epoch counts its own quota, an epoch
not served is refused UNKNOWN_EPOCH, and a retired epoch is dropped; the node's
per-epoch counters and the share files beside ``key_share``."""

from __future__ import annotations

import stat
from types import SimpleNamespace

import pytest

from samenloop.node.daemon.api_token import Tally
from samenloop.node.daemon.database import MIGRATIONS
from samenloop.node.daemon.uplink import record_answer
from samenloop.node.tokens import derive as tokens
from samenloop.node.tokens import evaluation, keysetup, threshold
from samenloop.node.tokens.derive import TokenDomain
from samenloop.node.tokens.holders import EpochHolders
from samenloop.node.tokens.store import TokenStore
from samenloop.policies import database
from samenloop.policies.covenant import KeyHolderSeat, OprfKeyEpoch
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.errors import NotEnoughHolders
from tests.test_evaluation import (
    COVENANT,
    DEALT,
    IDS,
    NODE,
    NOW,
    Broker,
    Covenant,
    R,
    refusal,
)


def same(a: threshold.Share | None, b: threshold.Share) -> bool:
    return a is not None and (a.index, a.commitment) == (b.index, b.commitment)


def plain(epoch: threshold.KeyEpoch) -> OprfKeyEpoch:
    return OprfKeyEpoch(
        epoch=epoch.epoch,
        threshold=epoch.threshold,
        group_public_key=epoch.group_public_key,
        holders=tuple(KeyHolderSeat(h.index, h.party, h.commitment) for h in epoch.holders),
        created_at=epoch.created_at,
        retire_after=epoch.retire_after,
    )


@pytest.fixture
def rotation():
    holder_keys = {i: PartyKeys.generate(f"holder-{i}") for i in (1, 2, 3)}
    seats = [(p.party, p.public().x25519) for p in holder_keys.values()]
    epochs, shares, keys = {}, {}, {}
    for number in (1, 2):
        epoch, sealed = keysetup.deal(COVENANT, number, 2, seats, now=DEALT)
        epochs[number] = epoch
        shares[number] = {
            s.holder_index: keysetup.open_share(s, epoch, holder_keys[s.holder_index])
            for s in sealed
        }
        keys[number] = threshold.recover_key(list(shares[number].values())[:2])
    node = PartyKeys.generate(NODE)
    directory = Covenant({p.party: p.public() for p in [node, *holder_keys.values()]})
    holders = {
        i: EpochHolders(
            holder_keys[i],
            COVENANT,
            directory,
            {n: (shares[n][i], epochs[n]) for n in (1, 2)},
            daily_quota=4,
        )
        for i in holder_keys
    }
    return SimpleNamespace(
        epochs=epochs, shares=shares, keys=keys, node=node, directory=directory,
        holders=holders, holder_keys=holder_keys,
    )  # fmt: skip


def tokenise(r, epoch: int, identifiers, broker=None):
    broker = broker or Broker(r.holders)
    return evaluation.tokenise(
        r.node, r.directory, TokenDomain(COVENANT, epoch), r.epochs[epoch], identifiers, broker,
        now=NOW,
    )  # fmt: skip


def test_each_epoch_is_evaluated_with_its_own_share(rotation):
    r = rotation
    for epoch in (1, 2):
        expected = [
            tokens.token_with_key(TokenDomain(COVENANT, epoch), r.keys[epoch], i) for i in IDS
        ]
        assert tokenise(r, epoch, IDS) == expected
    assert r.holders[1].seats == ((1, 1), (2, 1))
    assert r.holders[1].epochs == (1, 2)
    # The two epochs' tokens of one identifier differ: nothing links them but a ref.
    assert tokenise(r, 1, IDS[:1]) != tokenise(r, 2, IDS[:1])


def test_an_epoch_not_served_is_refused_unknown_epoch(rotation):
    r = rotation
    third, _ = keysetup.deal(
        COVENANT, 3, 2, [(p.party, p.public().x25519) for p in r.holder_keys.values()], now=DEALT
    )
    broker = Broker(r.holders)
    with pytest.raises(NotEnoughHolders):
        evaluation.tokenise(
            r.node, r.directory, TokenDomain(COVENANT, 3), third, IDS[:1], broker, now=NOW
        )
    reasons = {refusal(reply, r.holder_keys[i]) for i, reply in broker.replies[0].items()}
    assert reasons == {R.UNKNOWN_EPOCH}


def test_each_epoch_counts_its_own_daily_quota(rotation):
    r = rotation
    # Holder 3 is out of reach: holders 1 and 2 evaluate everything.
    assert len(tokenise(r, 1, IDS, Broker(r.holders, down={3}))) == 3  # 3 of 4 at each
    broker = Broker(r.holders, down={3})
    with pytest.raises(NotEnoughHolders):
        tokenise(r, 1, IDS, broker)  # 3 more under epoch 1 would pass the 4 allowed
    assert {refusal(x, r.holder_keys[i]) for i, x in broker.replies[0].items()} == {
        R.QUOTA_EXCEEDED
    }
    # The staged epoch's re-tokenisation has its own allowance.
    assert len(tokenise(r, 2, IDS, Broker(r.holders, down={3}))) == 3
    for i in (1, 2):
        assert r.holders[i].holder(1).used_today(NODE, now=NOW) == 3
        assert r.holders[i].holder(2).used_today(NODE, now=NOW) == 3


def test_adopt_starts_a_staged_epoch_and_drops_a_retired_one(rotation):
    r = rotation
    only_first = EpochHolders(
        r.holder_keys[1], COVENANT, r.directory, {1: (r.shares[1][1], r.epochs[1])}
    )
    staged = SimpleNamespace(id=COVENANT, live_epochs=(plain(r.epochs[1]), plain(r.epochs[2])))
    assert only_first.adopt(staged, lambda epoch: None) == ()  # not accepted yet
    assert only_first.epochs == (1,)
    assert only_first.adopt(staged, lambda epoch: r.shares[2][1]) == ()
    assert only_first.seats == ((1, 1), (2, 1))
    switched = SimpleNamespace(id=COVENANT, live_epochs=(plain(r.epochs[2]),))
    assert only_first.adopt(switched, lambda epoch: None) == (1,)
    assert only_first.epochs == (2,)
    # A covenant that lists none of its epochs leaves the last one, refusing everything,
    # and reports it once (its share is deleted).
    gone = SimpleNamespace(id=COVENANT, live_epochs=())
    assert only_first.adopt(gone, lambda epoch: None) == (2,)
    assert only_first.adopt(gone, lambda epoch: None) == ()
    assert only_first.epochs == (2,)
    assert only_first.holder(2).retired


def test_the_node_counts_each_epoch_apart_and_a_withdrawn_answer_is_given_back(rotation, tmp_path):
    r = rotation
    engine = database.make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    database.upgrade(engine, MIGRATIONS)
    store = TokenStore(engine)
    summed = Tally(lambda counts, now: store.count_holder_events(counts, now=now), lambda: NOW)
    holders = r.holders[1]

    class Recorded:
        """Holder 1 as the node's holder loop runs it: decide, record, then answer."""

        def handle(self, signed_request: bytes, *, now):
            epoch, decided = holders.answer(signed_request, now=now)
            assert record_answer(store, holders, decided, now=now, summed=summed, key_epoch=epoch)
            return decided.reply

    broker = Broker({1: Recorded(), 2: r.holders[2], 3: r.holders[3]}, down={3})
    tokenise(r, 1, IDS, broker)
    tokenise(r, 2, IDS[:2], broker)
    assert store.evaluations_by_epoch(NODE, NOW.date(), current=1) == {1: 3, 2: 2}
    assert store.evaluations_on(NODE, NOW.date()) == 5
    assert store.evaluations_on(NODE, NOW.date(), key_epoch=2) == 2
    assert store.evaluations_by_party(NOW.date()) == {NODE: 5}
    # At start the node hands each epoch's counts back: epoch 1 has 1 of 4 left.
    restarted = EpochHolders(
        r.holder_keys[1],
        COVENANT,
        r.directory,
        {n: (r.shares[n][1], r.epochs[n]) for n in (1, 2)},
        daily_quota=4,
        used_today={1: {NODE: 3}, 2: {NODE: 2}},
        today=NOW.date(),
    )
    assert restarted.holder(1).used_today(NODE, now=NOW) == 3
    assert restarted.holder(2).used_today(NODE, now=NOW) == 2

    # An answer whose record failed is withdrawn from the epoch that admitted it.
    fresh = EpochHolders(
        r.holder_keys[2],
        COVENANT,
        r.directory,
        {n: (r.shares[n][2], r.epochs[n]) for n in (1, 2)},
        daily_quota=4,
    )
    captured = []

    class Capture:
        def handle(self, signed_request: bytes, *, now):
            epoch, decided = fresh.answer(signed_request, now=now)
            captured.append((epoch, decided))
            return decided.reply

    tokenise(r, 2, IDS[:2], Broker({1: r.holders[1], 2: Capture()}, down={3}))
    ((epoch, decided),) = captured
    assert epoch == 2
    assert fresh.holder(2).used_today(NODE, now=NOW) == 2
    fresh.withdraw(decided)
    assert fresh.holder(2).used_today(NODE, now=NOW) == 0
    assert fresh.holder(1).used_today(NODE, now=NOW) == 0


def test_share_files_beside_key_share_and_their_retirement(rotation, tmp_path):
    r = rotation
    base = tmp_path / "key-share.json"
    keysetup.save_share(base, r.epochs[1], r.shares[1][1])
    beside = keysetup.share_path(base, 2)
    assert beside.name == "key-share.epoch-2.json"
    assert keysetup.load_epoch_share(base, r.epochs[2]) is None  # not accepted yet
    keysetup.save_share(beside, r.epochs[2], r.shares[2][1])
    assert stat.S_IMODE(beside.stat().st_mode) == 0o600
    assert same(keysetup.load_epoch_share(base, r.epochs[1]), r.shares[1][1])
    assert same(keysetup.load_epoch_share(base, r.epochs[2]), r.shares[2][1])
    old = base.read_bytes()

    keysetup.retire_share(base, 1, 2)
    assert not beside.exists()
    assert base.read_bytes() != old
    assert keysetup.share_epoch(base) == 2
    assert keysetup.load_epoch_share(base, r.epochs[1]) is None
    assert same(keysetup.load_epoch_share(base, r.epochs[2]), r.shares[2][1])
    keysetup.retire_share(base, 1, 2)  # again: nothing left to do
    assert keysetup.share_epoch(base) == 2
