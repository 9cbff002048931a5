"""Insiders against a rotation of the OPRF key (docs/threat-model.md): a partner that uses
the staged epoch as storage its quotas do not count, a broker replica that acts on the
covenant version before the switch, a key holder left out of the new epoch.

Store and service level (on SQLite and PostgreSQL where the broker's store is involved):
each attack needs a moment between two commits that a run of daemons cannot aim at; the
daemons' own rotation is `tests/test_key_rotation.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from samenloop.broker.database import MIGRATIONS
from samenloop.broker.matching import Entry, SubmissionRules
from samenloop.broker.models import Base, TokenEntry
from samenloop.broker.service import _unstaged_epoch
from samenloop.broker.store import BrokerStore
from samenloop.node.tokens import evaluation, keysetup
from samenloop.node.tokens.holders import EpochHolders
from samenloop.policies import database
from samenloop.policies.errors import (
    ConfigurationError,
    InvalidInput,
    QuotaExceeded,
    Unavailable,
)
from tests.test_broker_store import NOW, Ids, batch_id, inbox, ref, sign, token
from tests.test_epoch_holders import plain, rotation  # noqa: F401 (a fixture)
from tests.test_evaluation import COVENANT, R, blinded, refusal


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = database.make_engine(database_url)
    database.upgrade(engine, MIGRATIONS)
    yield engine
    with engine.begin() as conn:  # the PostgreSQL database lives for the module
        for table in reversed(Base.metadata.sorted_tables):
            if table.name != "broker_secrets":  # made by the migration, kept for the module
                conn.execute(table.delete())
    engine.dispose()


@pytest.fixture
def broker(engine: sa.Engine) -> BrokerStore:
    return BrokerStore(engine)


def put(
    store: BrokerStore,
    party: str,
    n: int,
    epoch: int,
    items: list[tuple[int, int]],
    *,
    expires: datetime,
    now: datetime = NOW,
    staged: int | None = 2,
    rules: SubmissionRules | None = None,
    ids: Ids | None = None,
    version: int | None = None,
):
    entries = [Entry(party, token(t), ref(party, r), epoch, expires) for t, r in items]
    return store.tokens.submit(
        party,
        batch_id(n),
        epoch,
        entries,
        min_parties=2,
        now=now,
        new_group_id=ids or Ids(),
        sign_notice=sign,
        rules=rules,
        staged_epoch=staged,
        covenant_version=version,
    )


def by_epoch(engine: sa.Engine, party_ref: bytes) -> dict[int, datetime]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(TokenEntry.key_epoch, TokenEntry.expires_at).where(
                TokenEntry.signal_ref == party_ref
            )
        )
        return {int(epoch): expires for epoch, expires in rows}


def test_a_staged_entry_does_not_outlive_the_entry_it_re_states(broker, engine):
    """A partner submits a ref under the current epoch to expire in a minute, re-states it
    under the staged epoch to expire in a year, and lets the current entry expire: the
    staged entry would stay, counted against no quota, and become a held entry at the
    switch (over the held quota, day after day). The broker keeps a staged entry no longer
    than the current entries of its ref."""
    soon = NOW + timedelta(minutes=1)
    year = NOW + timedelta(days=365)
    put(broker, "a", 1, 1, [(1, 1)], expires=soon)
    assert broker.tokens.usage("a").held == 1
    put(broker, "a", 2, 2, [(101, 1)], expires=year)
    # Taken (an honest node may send its signal's expiry), kept no longer than the ref's.
    assert by_epoch(engine, ref("a", 1))[2] <= by_epoch(engine, ref("a", 1))[1]
    # Sent again later, with the same token: still not longer.
    put(broker, "a", 3, 2, [(101, 1)], expires=year, now=NOW + timedelta(seconds=30))
    assert by_epoch(engine, ref("a", 1))[2] <= by_epoch(engine, ref("a", 1))[1]

    # The current entry expires and is swept: nothing of the ref stays behind uncounted.
    broker.tokens.expire(
        NOW + timedelta(minutes=2), min_parties=2, sign_notice=sign, staged_epoch=2
    )
    assert by_epoch(engine, ref("a", 1)) == {}
    assert broker.tokens.usage("a").held == 0
    # Nor can it be re-stated any more.
    with pytest.raises(InvalidInput) as refused:
        put(broker, "a", 4, 2, [(101, 1)], expires=year, now=NOW + timedelta(minutes=3))
    assert refused.value.reason == "token.not_restated"


def test_an_expired_entry_cannot_be_re_stated(broker, engine):
    """An entry expired but not yet swept is no entry held: it cannot be re-stated."""
    put(broker, "a", 1, 1, [(1, 1)], expires=NOW + timedelta(minutes=1))
    with pytest.raises(InvalidInput) as refused:
        put(broker, "a", 2, 2, [(101, 1)], expires=NOW + timedelta(days=1),
            now=NOW + timedelta(minutes=2))  # fmt: skip
    assert refused.value.field == "entries[0].signal_ref"
    assert refused.value.reason == "token.not_restated"


def switch(store: BrokerStore, version: int, now: datetime) -> None:
    store.covenants.publish_covenant(
        version=version,
        signed=b"covenant %d" % version,
        recipients=["a", "b"],
        removed=[],
        min_parties=2,
        now=now,
        sign_notice=sign,
        switch=(1, 2),
        parties=["a", "b"],
    )


def test_a_replica_behind_the_switch_changes_nothing_under_the_old_version(broker, engine):
    """Version 2 switches to key epoch 2 while a call was checked against version 1 (it
    waited for the matching lock, or another broker replica took it before this one heard
    of version 2). Under version 1 an entry of epoch 1 would be stored after the switch
    deleted that epoch (a hit of a retired epoch, told beside the same hit under epoch 2),
    and a withdrawal would change the now current epoch-2 groups as staged ones: silently,
    the other members never told. Each is refused UNAVAILABLE naming the covenant version,
    stores nothing and is taken once retried under the new version."""
    year = NOW + timedelta(days=365)
    ids = Ids()
    for n, party in enumerate("ab"):
        put(broker, party, n, 1, [(1, 1), (2, 2)], expires=year, staged=None, ids=ids)
        put(broker, party, 10 + n, 2, [(101, 1), (102, 2)], expires=year, ids=ids)
    told = {p: len(inbox(broker, p)) for p in "ab"}
    later = NOW + timedelta(minutes=1)
    switch(broker, 2, later)
    assert {p: len(inbox(broker, p)) for p in "ab"} == {p: told[p] + 1 for p in "ab"}
    before = sorted(by_epoch(engine, ref("a", 3)).items())

    # An epoch-1 batch and a withdrawal checked against version 1: refused, nothing changed.
    with pytest.raises(Unavailable) as waited:
        put(broker, "a", 20, 1, [(3, 3)], expires=year, staged=2, now=later, version=1)
    assert waited.value.field == "covenant_version"
    assert waited.value.reason == "covenant.changed"
    with pytest.raises(Unavailable):
        broker.tokens.withdraw(
            "a", batch_id(21), [ref("a", 1)], min_parties=2, now=later, sign_notice=sign,
            staged_epoch=2, covenant_version=1,
        )  # fmt: skip
    assert sorted(by_epoch(engine, ref("a", 3)).items()) == before
    assert by_epoch(engine, ref("a", 1)) == {2: year}
    swept = broker.tokens.expire(
        year + timedelta(days=1), min_parties=2, sign_notice=sign, staged_epoch=2,
        covenant_version=1,
    )  # fmt: skip
    assert swept.removed == 0
    assert by_epoch(engine, ref("a", 1)) == {2: year}

    # Under version 2: the withdrawal of a's ref 1 closes the carried group, and b is told.
    broker.tokens.withdraw(
        "a", batch_id(21), [ref("a", 1)], min_parties=2, now=later, sign_notice=sign,
        staged_epoch=None, covenant_version=2,
    )  # fmt: skip
    assert inbox(broker, "b")[-1].startswith("b|CLOSED|")
    assert by_epoch(engine, ref("a", 1)) == {}


def test_a_holder_the_new_epoch_leaves_out_refuses_the_old_epoch_and_drops_its_share(
    rotation,  # noqa: F811 (the fixture imported above)
):
    """Holder 3 holds a seat in epoch 1 only; epoch 2 is dealt to holders 1 and 2. After
    the switch the broker relays nothing to a seat of epoch 1, but the holder's node used
    to keep serving it (its last epoch was never dropped) and keep its share file: a broker
    operator, or a party, that still reaches it had epoch-1 tokens evaluated under a quota
    of their own. Now it refuses every request UNKNOWN_EPOCH and the caller deletes its share."""
    r = rotation
    third = EpochHolders(
        r.holder_keys[3], COVENANT, r.directory, {1: (r.shares[1][3], r.epochs[1])}
    )
    epoch_2 = plain(r.epochs[2])
    without_3 = dataclasses.replace(
        epoch_2, holders=tuple(h for h in epoch_2.holders if h.party != "holder-3")
    )
    staged = SimpleNamespace(id=COVENANT, live_epochs=(plain(r.epochs[1]), without_3))
    assert third.adopt(staged, lambda epoch: None) == ()  # no seat in epoch 2: serves epoch 1
    request = evaluation.build_requests(
        r.node, COVENANT, r.epochs[1], (1, 3), blinded(1), request_id=b"q" * 16, now=NOW
    )[3]
    assert refusal(third.handle(request, now=NOW), r.holder_keys[3]) is None  # evaluated

    switched = SimpleNamespace(id=COVENANT, live_epochs=(without_3,))
    assert third.adopt(switched, lambda epoch: None) == (1,)  # the caller deletes the share
    assert third.adopt(switched, lambda epoch: None) == ()  # once
    again = evaluation.build_requests(
        r.node, COVENANT, r.epochs[1], (1, 3), blinded(1), request_id=b"s" * 16, now=NOW
    )[3]
    assert refusal(third.handle(again, now=NOW), r.holder_keys[3]) == R.UNKNOWN_EPOCH


def test_a_staging_withdrawn_leaves_nothing_behind_and_can_be_staged_anew(broker, engine):
    """Signers withdraw a staged epoch 2 (a version without ``next_key_epoch``), then stage
    another key as epoch 2. The broker kept the withdrawn staging's entries: uncounted
    storage until they expire, silent groups that a later withdrawal would tell of, and
    refs that counted as re-stated, so that the nodes' entries under the new key were
    refused (``token.restated_twice``) while the switch went through on the old key's
    tokens (every later import missing them). The version that withdraws the staging
    deletes its entries and groups, telling nobody."""
    year = NOW + timedelta(days=365)
    ids = Ids()
    for n, party in enumerate("ab"):
        put(broker, party, n, 1, [(1, 1)], expires=year, staged=None, ids=ids)
        put(broker, party, 10 + n, 2, [(101, 1)], expires=year, ids=ids)
    assert len(broker.tokens.open_groups()) == 2  # epoch 1's, and epoch 2's (silent)
    told = {p: inbox(broker, p) for p in "ab"}
    held = {p: broker.tokens.usage(p).held for p in "ab"}
    later = NOW + timedelta(minutes=1)
    broker.covenants.publish_covenant(
        version=2, signed=b"covenant 2", recipients=["a", "b"], removed=[], min_parties=2,
        now=later, sign_notice=sign, unstaged=2, parties=["a", "b"],
    )  # fmt: skip
    assert by_epoch(engine, ref("a", 1)) == {1: year}
    assert [g.token for g in broker.tokens.open_groups()] == [token(1)]
    assert {p: inbox(broker, p)[:-1] for p in "ab"} == told  # only the covenant since
    assert {p: broker.tokens.usage(p).held for p in "ab"} == held
    assert broker.rotation.status(1, 2, later, ["a", "b"]) == {"a": 1, "b": 1}

    # Staged again with another key: the refs are re-stated under its tokens.
    for n, party in enumerate("ab"):
        put(broker, party, 20 + n, 2, [(201, 1)], expires=year, now=later, ids=ids)
    assert broker.rotation.status(1, 2, later, ["a", "b"]) == {"a": 0, "b": 0}
    assert {p: inbox(broker, p)[:-1] for p in "ab"} == told


def test_the_broker_names_the_staging_a_version_withdraws():
    """``PublishCovenant`` passes the staged epoch a version withdraws, and no other."""

    def version(current: int, staged: tuple[int, bytes] | None) -> Any:
        following = (
            None if staged is None else SimpleNamespace(epoch=staged[0], group_public_key=staged[1])
        )
        return SimpleNamespace(key_epoch=SimpleNamespace(epoch=current), next_key_epoch=following)

    staged = version(1, (2, b"k2"))
    assert _unstaged_epoch(staged, version(1, None)) == 2  # withdrawn
    assert _unstaged_epoch(staged, version(1, (2, b"k2"))) is None  # kept
    assert _unstaged_epoch(staged, version(2, None)) is None  # switched to
    assert _unstaged_epoch(version(1, None), version(1, (2, b"k2"))) is None  # staged
    assert _unstaged_epoch(version(1, None), version(1, None)) is None


def test_re_sending_staged_entries_counts_against_the_day(broker, engine):
    """Staged entries count against neither entry quota, so that re-tokenising everything
    costs a node nothing. Sent again and again under new batch ids they would cost the
    partner nothing either, and the broker a transaction, a lookup and a batch record
    each, without bound. The first re-statement of a ref stays free; an entry that
    re-states it again counts against ``token_entries_per_day``."""
    rules = SubmissionRules(longest_retention_days=400, entries_per_day=3, entries_held=100)
    year = NOW + timedelta(days=365)
    put(broker, "a", 1, 1, [(1, 1), (2, 2)], expires=year, staged=None, rules=rules)
    assert broker.tokens.usage("a").submitted == 2
    put(broker, "a", 2, 2, [(101, 1), (102, 2)], expires=year, rules=rules)
    assert broker.tokens.usage("a").submitted == 2  # re-tokenising is free
    put(broker, "a", 2, 2, [(101, 1), (102, 2)], expires=year, rules=rules)  # a replay: free
    assert broker.tokens.usage("a").submitted == 2
    put(broker, "a", 3, 2, [(101, 1)], expires=year, rules=rules)  # again: counted
    assert broker.tokens.usage("a").submitted == 3
    with pytest.raises(QuotaExceeded) as refused:
        put(broker, "a", 4, 2, [(101, 1), (102, 2)], expires=year, rules=rules)
    assert refused.value.reason == "quota.token_entries_per_day"
    assert broker.tokens.usage("a").held == 2


def test_a_staged_share_other_accounts_may_read_is_refused_by_name(
    rotation,  # noqa: F811 (the fixture imported above)
    tmp_path,
):
    """A local user on a holder's host: the staged epoch's share beside ``key_share``
    (``key-share.epoch-2.json``) left readable by others. The configured share is refused
    then, naming it; the staged one was passed over as "not accepted yet", silently, so the
    operator saw the rotation stall and not why. It is refused naming the file and the fix,
    and taken once it is owner-only again; the retired share is overwritten, then deleted."""
    r = rotation
    base = tmp_path / "key-share.json"
    keysetup.save_share(base, r.epochs[1], r.shares[1][1])
    beside = keysetup.share_path(base, 2)
    keysetup.save_share(beside, r.epochs[2], r.shares[2][1])
    beside.chmod(0o644)
    with pytest.raises(ConfigurationError) as refused:
        keysetup.load_epoch_share(base, r.epochs[2])
    assert str(beside) in refused.value.message
    assert "chmod" in refused.value.message
    beside.chmod(0o600)
    share = keysetup.load_epoch_share(base, r.epochs[2])
    assert share is not None
    assert share.index == r.shares[2][1].index

    # The switch: epoch 1's share is overwritten in place before it is unlinked.
    written: list[bytes] = []
    real_unlink = Path.unlink

    def unlink(path: Path, missing_ok: bool = False) -> None:
        written.append(path.read_bytes())
        real_unlink(path, missing_ok=missing_ok)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "unlink", unlink)
        keysetup.retire_share(base, 1, 2)
    assert written
    assert all(set(content) == {0} for content in written)
    assert keysetup.share_epoch(base) == 2
    assert not beside.exists()


def test_a_guessed_token_under_the_other_epoch_tells_nothing(broker, engine):
    """A partner evaluates a guess under one epoch (one element of its OPRF quota, as for
    any probe) and submits that token under the other: as the staged entry of a ref it
    holds, or as a current entry. A token value could be held under one epoch only, so the
    entry was refused (``token.other_epoch``) exactly when some party held the subject under
    the other epoch: the partner learnt it, and nobody was told (an ordinary probe forms a
    hit that every member is told of); a value taken first was refused to the honest party
    that sent it later. The broker keeps every epoch after the first under a key of its own
    (``held_token``, as ``SubmitTokens`` applies it): both answers are alike, nothing is told,
    and the honest party's entries are taken."""
    year = NOW + timedelta(days=365)
    lane = broker.tokens.lanes.held_token

    def send(party, n, epoch, items, *, staged=2):
        entries = [
            Entry(party, lane(epoch, token(t)), ref(party, r), epoch, year) for t, r in items
        ]
        try:
            return broker.tokens.submit(
                party, batch_id(n), epoch, entries, min_parties=2, now=NOW, new_group_id=Ids(),
                sign_notice=sign, staged_epoch=staged,
            ).stored  # fmt: skip
        except InvalidInput as refused:
            return refused.reason

    assert lane(1, token(7)) == token(7)  # the first epoch's tokens are kept as they were
    assert lane(2, token(7)) not in (token(7), lane(3, token(7)))
    assert send("b", 1, 1, [(7, 1)], staged=None) == 1  # b holds the subject (epoch 1)
    assert send("c", 2, 1, [(9, 1)], staged=None) == 1
    assert send("c", 3, 2, [(90, 1)]) == 1  # c re-states another subject: token 90 (epoch 2)
    assert send("a", 4, 1, [(1, 1), (2, 2), (90, 3), (91, 4)], staged=None) == 4
    told = {p: inbox(broker, p) for p in "abc"}
    # a's staged probes: b's current token, and a token nobody holds. Alike.
    assert send("a", 10, 2, [(7, 1)]) == send("a", 11, 2, [(8, 2)]) == 1
    assert {p: inbox(broker, p) for p in "abc"} == told
    # The current entries a sent with c's staged token 90 and with 91 (held by nobody)
    # were taken alike above; b's and c's own later entries are taken too.
    assert send("b", 12, 1, [(8, 2)], staged=None) == 1
    assert send("c", 13, 2, [(90, 1)]) == 0  # c's re-statement stands (unchanged)
