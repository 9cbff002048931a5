"""The threshold OPRF as signed messages: a node and its key holders through a simulated broker.

As python-tuf tests its client against an in-memory repository simulator, these
tests drive ``samenloop.node.tokens.evaluation`` (the node) and ``samenloop.node.tokens.holder``
(the key holders) in one process, through ``Broker``: an in-memory relay that
can lose, alter, redirect, replay, delay and swap messages the way a broker
that is down or dishonest could. Time is always passed in; nothing sleeps.
The last test adds the node's store (SQLite) behind a holder: what the holder
loop commits before an answer may leave.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Protocol

import pytest
import sqlalchemy as sa

from samenloop.node.daemon.api_token import Tally
from samenloop.node.daemon.database import MIGRATIONS
from samenloop.node.daemon.uplink import record_answer
from samenloop.node.tokens import derive as tokens
from samenloop.node.tokens import evaluation, keysetup, oprf, threshold
from samenloop.node.tokens.derive import TokenDomain
from samenloop.node.tokens.evaluation import RefusalReason, Replies
from samenloop.node.tokens.holder import (
    ANSWERED_AGAIN,
    REPLAY_WINDOW,
    UNVERIFIED,
    HolderEvent,
    KeyHolder,
)
from samenloop.node.tokens.store import TokenStore
from samenloop.node.tokens.threshold import HolderPlanner, KeyEpoch
from samenloop.policies import crypto, database
from samenloop.policies.crypto import PartyKeys, PublicKeys, SignatureContext
from samenloop.policies.errors import (
    ConfigurationError,
    InvalidInput,
    InvalidSignature,
    LocalError,
    MessageTooLarge,
    NotAllowed,
    NotEnoughHolders,
)
from samenloop.policies.policy import Quotas
from samenloop.v1 import common_pb2, keyholder_pb2

COVENANT = "riec-zuid"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
DEALT = NOW - timedelta(days=30)
MAX_AGE = timedelta(seconds=common_pb2.LIMITS_MAX_REQUEST_AGE_SECONDS)
MAX_SKEW = timedelta(seconds=common_pb2.LIMITS_MAX_CLOCK_SKEW_SECONDS)
NODE = "gemeente-tilburg"
R = RefusalReason


@dataclass(frozen=True)
class Ident:
    type: str
    canonical: str


IDS = [Ident("bsn", "123456782"), Ident("kvk", "12345678"), Ident("iban", "NL91ABNA0417164300")]


class Covenant:
    """A dict-backed ``evaluation.Directory``; with a ``cap``, also the covenant's quotas."""

    def __init__(self, keys: Mapping[str, PublicKeys], cap: int | None = None):
        self._keys = dict(keys)
        if cap is not None:
            self.policy = SimpleNamespace(quotas=Quotas(cap, 0))

    def public_keys(self, party: str) -> PublicKeys:
        try:
            return self._keys[party]
        except KeyError:
            raise NotAllowed(f"{party!r} is not a party", field="party") from None

    def is_party(self, party: str) -> bool:
        return party in self._keys


@dataclass
class World:
    """A covenant with a node, a dealt key epoch and its key holders."""

    epoch: KeyEpoch
    key: bytes
    node: PartyKeys
    holder_keys: dict[int, PartyKeys]
    shares: dict[int, threshold.Share]
    directory: Covenant
    holders: dict[int, KeyHolder]

    @property
    def domain(self) -> TokenDomain:
        return TokenDomain(COVENANT, self.epoch.epoch)

    def expected(self, identifiers: list[Ident]) -> list[bytes]:
        return [tokens.token_with_key(self.domain, self.key, i) for i in identifiers]

    def tokenise(
        self,
        broker: Broker,
        identifiers: list[Ident],
        *,
        node: PartyKeys | None = None,
        now: datetime = NOW,
        planner: HolderPlanner | None = None,
    ) -> list[bytes]:
        return evaluation.tokenise(
            node or self.node,
            self.directory,
            self.domain,
            self.epoch,
            identifiers,
            broker,
            now=now,
            planner=planner,
        )


def world(
    t: int = 2,
    n: int = 3,
    *,
    quota: dict[int, int] | None = None,
    cap: int | None = None,
    used_today: Mapping[str, int] | None = None,
) -> World:
    """``quota``: one allowance per holder for every requester. ``cap``: the covenant's
    ``oprf_evaluations_per_day``, each holder allowing its share (``rules.oprf_allowance``)."""
    holder_keys = {i: PartyKeys.generate(f"holder-{i}") for i in range(1, n + 1)}
    epoch, sealed = keysetup.deal(
        COVENANT, 1, t, [(p.party, p.public().x25519) for p in holder_keys.values()], now=DEALT
    )
    shares = {
        s.holder_index: keysetup.open_share(s, epoch, holder_keys[s.holder_index]) for s in sealed
    }
    node = PartyKeys.generate(NODE)
    others = [PartyKeys.generate("politie-zeeland-west-brabant")]
    directory = Covenant({p.party: p.public() for p in [node, *others, *holder_keys.values()]}, cap)
    holders = {
        i: KeyHolder(
            holder_keys[i],
            shares[i],
            epoch,
            COVENANT,
            (lambda: directory) if cap is not None else directory,
            **({"daily_quota": quota[i]} if quota and i in quota else {}),
            used_today=used_today,
            today=NOW.date() if used_today else None,
        )
        for i in holder_keys
    }
    return World(
        epoch=epoch,
        key=threshold.recover_key(list(shares.values())[:t]),
        node=node,
        holder_keys=holder_keys,
        shares=shares,
        directory=directory,
        holders=holders,
    )


class Handler(Protocol):
    """Anything that answers signed requests like a ``KeyHolder``."""

    def handle(self, signed_request: bytes, *, now: datetime) -> bytes: ...


@dataclass
class Broker:
    """An in-memory broker relaying OPRF requests to holders, honest unless told otherwise.

    ``down``: holders it cannot reach. ``route``: deliver the request meant
    for holder i to holder route[i] (and return the answer as i's).
    ``alter``: rewrite the request meant for holder i. ``delay``: the holder
    receives the request this much later than the node sent it.
    ``swap_reply``: replace holder i's reply, given all replies of the round.
    ``drop_reply``: whether to drop holder i's reply to a request (the holder
    got it and answered; the node never sees the answer).
    Every request and reply is recorded, as the broker could record them.
    """

    holders: Mapping[int, KeyHolder | Handler]
    now: datetime = NOW
    down: set[int] = field(default_factory=set)
    route: dict[int, int] = field(default_factory=dict)
    alter: dict[int, Callable[[bytes], bytes]] = field(default_factory=dict)
    delay: dict[int, timedelta] = field(default_factory=dict)
    swap_reply: dict[int, Callable[[dict[int, bytes]], bytes]] = field(default_factory=dict)
    drop_reply: Callable[[int, bytes], bool] = lambda index, request: False
    requests: list[dict[int, bytes]] = field(default_factory=list)
    replies: list[dict[int, bytes]] = field(default_factory=list)

    def __call__(self, requests: dict[int, bytes]) -> dict[int, bytes]:
        self.requests.append(dict(requests))
        out: dict[int, bytes] = {}
        for index, request in requests.items():
            target = self.route.get(index, index)
            if target in self.down:
                continue
            request = self.alter.get(index, lambda r: r)(request)
            when = self.now + self.delay.get(index, timedelta(0))
            reply = self.holders[target].handle(request, now=when)
            if not self.drop_reply(index, request):  # answered (and counted), then lost
                out[index] = reply
        for index, swap in self.swap_reply.items():
            if index in out:
                out[index] = swap(dict(out))
        self.replies.append(out)
        return out


# --- helpers -------------------------------------------------------------------------


def open_reply(reply: bytes, holder: PartyKeys, audience: str = NODE):
    """Verify a holder's signed reply for ``audience`` and parse it."""
    signed = common_pb2.Signed.FromString(reply)
    assert signed.context == SignatureContext.OPRF_RESPONSE.value
    assert signed.signer == holder.party
    crypto.verify(
        holder.public().ed25519,
        SignatureContext.OPRF_RESPONSE,
        signed.body,
        signed.signature,
        audience=audience,
    )
    return keyholder_pb2.EvaluationResponse.FromString(signed.body)


def refusal(reply: bytes, holder: PartyKeys, audience: str = NODE) -> RefusalReason | None:
    response = open_reply(reply, holder, audience)
    if response.WhichOneof("result") != "refusal":
        return None
    return RefusalReason(response.refusal.reason)


def request_id_of(signed_request: bytes) -> bytes:
    body = common_pb2.Signed.FromString(signed_request).body
    return keyholder_pb2.EvaluationRequest.FromString(body).request_id


def blinded(count: int) -> list[bytes]:
    return [oprf.blind(f"identifier {j}".encode())[1] for j in range(count)]


def signed_request(
    w: World,
    index: int = 1,
    *,
    mutate: Callable[[keyholder_pb2.EvaluationRequest], None] = lambda r: None,
    signer: PartyKeys | None = None,
    audience: str | None = None,
    context: SignatureContext = SignatureContext.OPRF_REQUEST,
    body: bytes | None = None,
    request_id: bytes = b"r" * 16,
    issued_at: datetime = NOW,
    elements: int = 2,
) -> bytes:
    """A request to holder ``index`` as ``build_requests`` makes it, then changed and re-signed."""
    signer = signer or w.node
    built = evaluation.build_requests(
        w.node,
        COVENANT,
        w.epoch,
        tuple(range(1, w.epoch.threshold + 1)),
        blinded(elements),
        request_id=request_id,
        now=issued_at,
    )
    request = keyholder_pb2.EvaluationRequest.FromString(
        common_pb2.Signed.FromString(built[index]).body
    )
    request.requester = signer.party
    mutate(request)
    body = request.SerializeToString() if body is None else body
    audience = w.epoch.holder(index).party if audience is None else audience
    return common_pb2.Signed(
        body=body,
        signer=signer.party,
        context=context.value,
        signature=signer.sign(context, body, audience=audience),
    ).SerializeToString()


def flip_body_byte(signed: bytes) -> bytes:
    message = common_pb2.Signed.FromString(signed)
    body = bytearray(message.body)
    body[-1] ^= 1
    message.body = bytes(body)
    return message.SerializeToString()


def resign_response(
    keys: PartyKeys, reply: bytes, change: Callable[[keyholder_pb2.EvaluationResponse], None]
) -> bytes:
    """A holder (``keys``) that changes its honest response and signs the result."""
    response = keyholder_pb2.EvaluationResponse.FromString(common_pb2.Signed.FromString(reply).body)
    change(response)
    body = response.SerializeToString()
    return common_pb2.Signed(
        body=body,
        signer=keys.party,
        context=SignatureContext.OPRF_RESPONSE.value,
        signature=keys.sign(SignatureContext.OPRF_RESPONSE, body, audience=NODE),
    ).SerializeToString()


# --- the whole pipeline --------------------------------------------------------------


@pytest.mark.parametrize(("t", "n"), [(2, 3), (3, 5)])
def test_tokens_through_the_broker_equal_the_single_key_tokens(t, n):
    w = world(t, n)
    broker = Broker(w.holders)
    assert w.tokenise(broker, IDS) == w.expected(IDS)
    assert len(broker.requests) == 1  # everyone honest: one round
    (round_,) = broker.requests
    assert sorted(round_) == list(range(1, t + 1))
    assert len({request_id_of(r) for r in round_.values()}) == 1  # one id for the round
    for i in range(1, n + 1):
        assert dict(w.holders[i].served) == ({NODE: len(IDS)} if i <= t else {})
        assert w.holders[i].used_today(NODE, now=NOW) == (len(IDS) if i <= t else 0)


def test_every_responding_set_gives_the_same_tokens():
    w = world(3, 5)
    for excluded in [set(), {1}, {1, 2}, {2, 4}, {1, 3}]:
        planner = HolderPlanner(w.epoch)
        planner.exclude(excluded)
        assert w.tokenise(Broker(w.holders), IDS, planner=planner) == w.expected(IDS)


def test_a_batch_larger_than_one_request_is_split():
    w = world(2, 3)
    identifiers = [Ident("bsn", f"{j:09d}") for j in range(evaluation.MAX_ELEMENTS + 1)]
    broker = Broker(w.holders)
    assert w.tokenise(broker, identifiers) == w.expected(identifiers)
    sizes = [
        len(
            keyholder_pb2.EvaluationRequest.FromString(
                common_pb2.Signed.FromString(next(iter(r.values()))).body
            ).blinded_elements
        )
        for r in broker.requests
    ]
    assert sizes == [evaluation.MAX_ELEMENTS, 1]
    # The second request goes to the next set round: holder 1 did the first, holder 3 the second.
    assert [sorted(r) for r in broker.requests] == [[1, 2], [2, 3]]
    assert {i: h.served.get(NODE, 0) for i, h in w.holders.items()} == {
        1: evaluation.MAX_ELEMENTS,
        2: evaluation.MAX_ELEMENTS + 1,
        3: 1,
    }


def test_requests_are_signed_for_their_holder_alone():
    w = world(2, 3)
    requests = evaluation.build_requests(
        w.node, COVENANT, w.epoch, (1, 3), blinded(2), request_id=b"i" * 16, now=NOW
    )
    assert sorted(requests) == [1, 3]
    for index, data in requests.items():
        signed = common_pb2.Signed.FromString(data)
        assert (signed.signer, signed.context) == (NODE, "oprf-request")
        request = keyholder_pb2.EvaluationRequest.FromString(signed.body)
        assert (request.requester, request.holder_index, list(request.responding_set)) == (
            NODE,
            index,
            [1, 3],
        )
        assert (request.covenant_id, request.key_epoch) == (COVENANT, 1)
        assert request.issued_at.ToDatetime(tzinfo=UTC) == NOW
        ed = w.node.public().ed25519
        crypto.verify(
            ed,
            SignatureContext.OPRF_REQUEST,
            signed.body,
            signed.signature,
            audience=f"holder-{index}",
        )
        other = f"holder-{4 - index}"
        with pytest.raises(InvalidSignature):
            crypto.verify(
                ed, SignatureContext.OPRF_REQUEST, signed.body, signed.signature, audience=other
            )


@pytest.mark.parametrize(
    ("change", "error", "field"),
    [
        ({"covenant_id": "riec-noord"}, InvalidInput, "covenant_id"),
        ({"request_id": b"short"}, InvalidInput, "request_id"),
        ({"responding_set": (1,)}, InvalidInput, "responding_set"),
        ({"responding_set": (2, 1)}, InvalidInput, "responding_set"),
        ({"responding_set": (1, 9)}, InvalidInput, "responding_set"),
        ({"blinded": []}, InvalidInput, "blinded_elements"),
        ({"blinded": [b"x" * 32] * 1001}, MessageTooLarge, "blinded_elements"),
        ({"now": NOW.replace(tzinfo=None)}, LocalError, "now"),
    ],
)
def test_build_requests_refuses_what_no_holder_would_answer(change, error, field):
    w = world(2, 3)
    args = {
        "covenant_id": COVENANT,
        "responding_set": (1, 2),
        "blinded": blinded(1),
        "request_id": b"i" * 16,
        "now": NOW,
    } | change
    with pytest.raises(error) as raised:
        evaluation.build_requests(
            w.node,
            args["covenant_id"],
            w.epoch,
            args["responding_set"],
            args["blinded"],
            request_id=args["request_id"],
            now=args["now"],
        )
    assert raised.value.field == field


# --- a dishonest or failing broker ------------------------------------------------------


def test_an_altered_request_is_refused_and_the_node_uses_another_set():
    w = world(2, 3)
    broker = Broker(w.holders, alter={1: flip_body_byte})
    assert w.tokenise(broker, IDS) == w.expected(IDS)
    assert refusal(broker.replies[0][1], w.holder_keys[1]) is R.BAD_SIGNATURE
    assert sorted(broker.requests[1]) == [2, 3]
    assert request_id_of(broker.requests[0][2]) != request_id_of(broker.requests[1][2])
    assert NODE not in w.holders[1].served


def test_a_request_redirected_to_another_holder_is_refused():
    w = world(2, 3)
    broker = Broker(w.holders, route={1: 2})  # holder 1's request goes to holder 2 instead
    assert w.tokenise(broker, IDS) == w.expected(IDS)
    # holder 2 refuses: the signature names holder 1 as audience, so it does not verify for 2
    assert refusal(broker.replies[0][1], w.holder_keys[2]) is R.BAD_SIGNATURE
    assert sorted(broker.requests[1]) == [2, 3]


def test_a_replayed_request_is_answered_again_uncounted_then_refused():
    w = world(2, 3)
    broker = Broker(w.holders)
    w.tokenise(broker, IDS)
    old = broker.requests[0][1]
    first = open_reply(broker.replies[0][1], w.holder_keys[1])
    # The very request again (what a node sends when the answer did not arrive): the same
    # partial evaluation, nothing counted, at most RESENDS times.
    later = NOW + timedelta(seconds=10)
    for _ in range(evaluation.RESENDS):
        again = open_reply(w.holders[1].handle(old, now=later), w.holder_keys[1])
        assert again.WhichOneof("result") == "evaluation"
        assert again.request_id == first.request_id
        assert again.evaluation.evaluated_elements == first.evaluation.evaluated_elements
        assert again.remaining_today == first.remaining_today
    assert refusal(w.holders[1].handle(old, now=later), w.holder_keys[1]) is R.REPLAY
    # once it is too old to be a replay, it is stale (and the cache has let it go)
    too_late = NOW + MAX_AGE + timedelta(seconds=1)
    assert refusal(w.holders[1].handle(old, now=too_late), w.holder_keys[1]) is R.STALE
    assert w.holders[1].served[NODE] == len(IDS)  # counted once
    assert w.holders[1].used_today(NODE, now=later) == len(IDS)


def test_another_request_under_an_answered_id_is_a_replay_at_once():
    w = world(2, 3)
    first = signed_request(w, elements=3)
    assert w.holders[1].answer(first, now=NOW).answered is not None
    # Signed by the requester itself, same id and seat, other elements: not the very request.
    changed = signed_request(w, elements=2)
    later = signed_request(w, elements=3, issued_at=NOW + timedelta(seconds=1))
    for request in (changed, later):
        decided = w.holders[1].answer(request, now=NOW)
        assert decided.refused is R.REPLAY
        assert decided.summed == HolderEvent(NODE, "REPLAY", NOW.date())
    assert w.holders[1].used_today(NODE, now=NOW) == 3


def test_a_replay_slipped_into_a_later_evaluation_makes_that_holder_faulty():
    w = world(2, 3)
    first = Broker(w.holders)
    w.tokenise(first, IDS[:1])
    old = first.requests[0][1]
    broker = Broker(w.holders, alter={1: lambda _: old})
    assert w.tokenise(broker, IDS) == w.expected(IDS)
    # Holder 1 answers the old request again (uncounted); that is no answer to this one.
    slipped = open_reply(broker.replies[0][1], w.holder_keys[1])
    assert slipped.request_id == request_id_of(old) != request_id_of(broker.requests[0][2])
    assert w.holders[1].used_today(NODE, now=NOW) == 1
    assert sorted(broker.requests[1]) == [2, 3]


def test_a_request_delayed_past_the_maximum_age_is_refused():
    w = world(2, 3)
    broker = Broker(w.holders, delay={1: MAX_AGE + timedelta(seconds=1)})
    assert w.tokenise(broker, IDS) == w.expected(IDS)
    assert refusal(broker.replies[0][1], w.holder_keys[1]) is R.STALE
    everyone_late = Broker(w.holders, now=NOW + MAX_AGE + timedelta(seconds=1))
    with pytest.raises(NotEnoughHolders):
        w.tokenise(everyone_late, IDS)
    assert {refusal(r, w.holder_keys[i]) for i, r in everyone_late.replies[0].items()} == {R.STALE}


def test_unreachable_holders_are_skipped_until_too_few_remain():
    w = world(3, 5)
    broker = Broker(w.holders, down={2, 4})
    assert w.tokenise(broker, IDS) == w.expected(IDS)
    assert sorted(broker.requests[-1]) == [1, 3, 5]
    with pytest.raises(NotEnoughHolders) as raised:
        w.tokenise(Broker(w.holders, down={1, 2, 3}), IDS)
    assert "holder 2: unreachable" in str(raised.value)
    with pytest.raises(NotEnoughHolders):
        w.tokenise(Broker(w.holders, down={1, 2, 3, 4, 5}), IDS)


def test_a_reply_passed_off_as_another_holders_is_excluded():
    w = world(2, 3)
    broker = Broker(w.holders, swap_reply={1: lambda out: out[2]})
    assert w.tokenise(broker, IDS) == w.expected(IDS)
    assert sorted(broker.requests[1]) == [2, 3]


# --- dishonest holders -----------------------------------------------------------------


class LyingHolder:
    """Answers with a wrong partial evaluation, correctly signed with its own key."""

    def __init__(self, honest: KeyHolder, keys: PartyKeys):
        self.honest, self.keys = honest, keys

    def handle(self, signed_request: bytes, *, now: datetime) -> bytes:
        def lie(response: keyholder_pb2.EvaluationResponse) -> None:
            if response.WhichOneof("result") == "evaluation":
                wrong = oprf.scalar_mult_gen(oprf.random_scalar())
                response.evaluation.evaluated_elements[0] = wrong

        return resign_response(self.keys, self.honest.handle(signed_request, now=now), lie)


def test_a_holder_with_a_wrong_proof_is_excluded_and_the_node_asks_again():
    w = world(2, 3)
    broker = Broker({**w.holders, 1: LyingHolder(w.holders[1], w.holder_keys[1])})
    assert w.tokenise(broker, IDS) == w.expected(IDS)
    assert [sorted(r) for r in broker.requests] == [[1, 2], [2, 3]]
    assert request_id_of(broker.requests[0][2]) != request_id_of(broker.requests[1][2])


def test_a_holder_that_signs_another_holders_answer_is_excluded():
    w = world(2, 3)

    def copy_holder_2(out: dict[int, bytes]) -> bytes:
        theirs = open_reply(out[2], w.holder_keys[2])

        def as_mine(response: keyholder_pb2.EvaluationResponse) -> None:
            response.evaluation.CopyFrom(theirs.evaluation)

        return resign_response(w.holder_keys[1], out[1], as_mine)

    broker = Broker(w.holders, swap_reply={1: copy_holder_2})
    assert w.tokenise(broker, IDS) == w.expected(IDS)  # proof fails for holder 1's commitment
    assert [sorted(r) for r in broker.requests] == [[1, 2], [2, 3]]


def test_a_holder_signing_with_the_wrong_key_is_faulty():
    w = world(2, 3)
    impostor_keys = PartyKeys.generate("holder-1")  # right name, key not in the covenant
    impostor = KeyHolder(impostor_keys, w.shares[1], w.epoch, COVENANT, w.directory)
    broker = Broker({**w.holders, 1: impostor})
    assert w.tokenise(broker, IDS) == w.expected(IDS)
    assert [sorted(r) for r in broker.requests] == [[1, 2], [2, 3]]


def test_a_stale_holder_evaluates_for_nobody_and_the_node_uses_the_others():
    """A holder with no unexpired covenant timestamp cannot tell that the requester is still
    a party (a version that removed it may be withheld by the broker): it refuses
    COVENANT_STALE, counts nothing, and the node asks the other holders."""
    w = world(2, 3)
    why = "the covenant timestamp for version 1 expired"
    w.holders[1].stale = lambda: why
    broker = Broker(w.holders)
    assert w.tokenise(broker, IDS) == w.expected(IDS)
    assert refusal(broker.replies[0][1], w.holder_keys[1]) is R.COVENANT_STALE
    assert open_reply(broker.replies[0][1], w.holder_keys[1]).refusal.message == why
    assert NODE not in w.holders[1].served
    assert sorted(broker.requests[1]) == [2, 3]
    for i in (2, 3):
        w.holders[i].stale = lambda: why
    with pytest.raises(NotEnoughHolders):
        w.tokenise(Broker(w.holders), IDS)


def test_a_holder_over_quota_refuses_and_the_node_falls_back():
    w = world(2, 3, quota={1: 4})
    assert w.tokenise(Broker(w.holders), IDS) == w.expected(IDS)  # holder 1: 3 of 4 used
    broker = Broker(w.holders)
    assert w.tokenise(broker, IDS[:2]) == w.expected(IDS[:2])
    assert refusal(broker.replies[0][1], w.holder_keys[1]) is R.QUOTA_EXCEEDED
    assert (
        "resets at 2026-11-29T00:00:00+00:00"
        in open_reply(broker.replies[0][1], w.holder_keys[1]).refusal.message
    )
    assert w.holders[1].served[NODE] == 3  # the refused request is not counted
    assert w.holders[3].served[NODE] == 2
    # a new UTC day, a new quota
    tomorrow = NOW + timedelta(days=1)
    broker = Broker(w.holders, now=tomorrow)
    assert w.tokenise(broker, IDS[:2], now=tomorrow) == w.expected(IDS[:2])
    assert sorted(broker.requests[0]) == [1, 2]
    assert len(broker.requests) == 1
    assert w.holders[1].used_today(NODE, now=tomorrow) == 2


def test_an_unknown_requester_is_refused_by_every_holder():
    w = world(2, 3)
    stranger = PartyKeys.generate("not-in-the-covenant")
    broker = Broker(w.holders)
    with pytest.raises(NotEnoughHolders) as raised:
        w.tokenise(broker, IDS, node=stranger)
    assert "holder 1: refused, UNKNOWN_PARTY" in str(raised.value)
    reasons = {
        refusal(reply, w.holder_keys[i], audience=stranger.party)
        for replies in broker.replies
        for i, reply in replies.items()
    }
    assert reasons == {R.UNKNOWN_PARTY}
    assert all(not h.served for h in w.holders.values())


def test_the_node_does_not_ask_with_a_retired_epoch():
    w = world(2, 3)
    broker = Broker(w.holders)
    with pytest.raises(NotAllowed) as raised:
        w.tokenise(broker, IDS, now=w.epoch.retire_after + timedelta(seconds=1))
    assert raised.value.field == "key_epoch"
    assert broker.requests == []


# --- the holder's checks, one scenario a line ------------------------------------------

_STRANGER = PartyKeys.generate("not-in-the-covenant")
_POLICE = "politie-zeeland-west-brabant"


def _set(field_name: str, value: object) -> Callable[[keyholder_pb2.EvaluationRequest], None]:
    def mutate(request: keyholder_pb2.EvaluationRequest) -> None:
        if field_name in ("responding_set", "blinded_elements"):
            del getattr(request, field_name)[:]
            getattr(request, field_name).extend(value)
        elif field_name == "issued_at":
            request.ClearField("issued_at")
        else:
            setattr(request, field_name, value)

    return mutate


SEC = timedelta(seconds=1)
BEFORE = DEALT - timedelta(days=1)  # before the key epoch was created
G = oprf.GENERATOR
EL = "blinded_elements"
SET = "responding_set"

HOLDER_SCENARIOS = [
    # (name, how signed_request changes the request, holder's clock, reason, request id echoed)
    ("wrong context", {"context": SignatureContext.HIT_NOTICE}, NOW, R.BAD_SIGNATURE, False),
    ("signed for holder 2", {"audience": "holder-2"}, NOW, R.BAD_SIGNATURE, False),
    ("unknown requester", {"signer": _STRANGER}, NOW, R.UNKNOWN_PARTY, False),
    ("signed garbage", {"body": b"\xff\xff\xff"}, NOW, R.MALFORMED_REQUEST, False),
    ("short request id", {"mutate": _set("request_id", b"short")}, NOW, R.MALFORMED_REQUEST, False),
    ("requester not signer", {"mutate": _set("requester", _POLICE)}, NOW, R.BAD_SIGNATURE, True),
    ("other covenant", {"mutate": _set("covenant_id", "riec-noord")}, NOW, R.UNKNOWN_EPOCH, True),
    ("other key epoch", {"mutate": _set("key_epoch", 2)}, NOW, R.UNKNOWN_EPOCH, True),
    ("epoch not yet in force", {"issued_at": BEFORE}, BEFORE, R.UNKNOWN_EPOCH, True),
    ("other holder index", {"mutate": _set("holder_index", 2)}, NOW, R.WRONG_HOLDER, True),
    ("set descending", {"mutate": _set(SET, [2, 1])}, NOW, R.WRONG_HOLDER, True),
    ("set repeats", {"mutate": _set(SET, [1, 1])}, NOW, R.WRONG_HOLDER, True),
    ("set too small", {"mutate": _set(SET, [1])}, NOW, R.WRONG_HOLDER, True),
    ("set too large", {"mutate": _set(SET, [1, 2, 3])}, NOW, R.WRONG_HOLDER, True),
    ("set without me", {"mutate": _set(SET, [2, 3])}, NOW, R.WRONG_HOLDER, True),
    ("set with unknown", {"mutate": _set(SET, [1, 9])}, NOW, R.WRONG_HOLDER, True),
    ("no elements", {"mutate": _set(EL, [])}, NOW, R.INVALID_ELEMENT, True),
    ("too many elements", {"mutate": _set(EL, [G] * 1001)}, NOW, R.INVALID_ELEMENT, True),
    ("identity element", {"mutate": _set(EL, [G, bytes(32)])}, NOW, R.INVALID_ELEMENT, True),
    ("short element", {"mutate": _set(EL, [b"\x01" * 31])}, NOW, R.INVALID_ELEMENT, True),
    ("non-canonical element", {"mutate": _set(EL, [b"\xff" * 32])}, NOW, R.INVALID_ELEMENT, True),
    ("no issued_at", {"mutate": _set("issued_at", None)}, NOW, R.STALE, True),
    ("too old", {"issued_at": NOW - MAX_AGE - SEC}, NOW, R.STALE, True),
    ("from the future", {"issued_at": NOW + MAX_SKEW + SEC}, NOW, R.STALE, True),
]


@pytest.mark.parametrize(
    ("kwargs", "clock", "reason", "echoed"),
    [s[1:] for s in HOLDER_SCENARIOS],
    ids=[s[0] for s in HOLDER_SCENARIOS],
)
def test_holder_refuses(kwargs, clock, reason, echoed):
    w = world(2, 3)
    request = signed_request(w, 1, **kwargs)
    requester = kwargs.get("signer", w.node).party
    decided = w.holders[1].answer(request, now=clock)
    # Summed, never recorded one by one; named only once the signature verified.
    verified = reason not in (R.BAD_SIGNATURE, R.UNKNOWN_PARTY) or echoed
    counted_as = requester if verified else UNVERIFIED
    assert decided.summed == HolderEvent(counted_as, reason.name, clock.date())
    assert (decided.requester, decided.answered, decided.elements) == (counted_as, None, 0)
    reply = decided.reply
    response = open_reply(reply, w.holder_keys[1], audience=requester)
    assert response.WhichOneof("result") == "refusal"
    assert RefusalReason(response.refusal.reason) is reason
    assert response.refusal.message
    assert (response.holder, response.holder_index, response.requester) == (
        "holder-1",
        1,
        requester,
    )
    # Before the signature verified, the holder cannot know the request's id and epoch.
    assert response.request_id == (b"r" * 16 if echoed else b"")
    assert not w.holders[1].served  # nothing refused is counted


def test_holder_answers_at_the_edges_of_the_time_window():
    w = world(2, 3)
    for j, issued_at in enumerate([NOW - MAX_AGE, NOW + MAX_SKEW]):
        request = signed_request(w, 1, issued_at=issued_at, request_id=bytes([j]) * 16)
        response = open_reply(w.holders[1].handle(request, now=NOW), w.holder_keys[1])
        assert response.WhichOneof("result") == "evaluation"
        assert response.request_id == bytes([j]) * 16
        assert response.answered_at.ToDatetime(tzinfo=UTC) == NOW


def test_the_same_request_id_for_each_holder_of_the_set_is_not_a_replay():
    w = world(2, 3)
    for index in (1, 2):
        response = open_reply(
            w.holders[index].handle(signed_request(w, index), now=NOW), w.holder_keys[index]
        )
        assert response.WhichOneof("result") == "evaluation"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"\xff\xff garbage", "signed_request"),
        (
            common_pb2.Signed(body=b"x", context="oprf-request").SerializeToString(),
            "signed_request.signer",
        ),
        (
            common_pb2.Signed(body=b"x", signer="x" * 65).SerializeToString(),
            "signed_request.signer",
        ),
    ],
)
def test_a_request_naming_no_requester_raises_invalid_input(data, field):
    w = world(2, 3)
    with pytest.raises(InvalidInput) as raised:
        w.holders[1].handle(data, now=NOW)
    assert raised.value.field == field


def test_holder_refuses_a_seat_it_does_not_hold():
    w = world(2, 3)
    with pytest.raises(ConfigurationError):
        KeyHolder(w.holder_keys[1], w.shares[2], w.epoch, COVENANT, w.directory)
    with pytest.raises(ConfigurationError):
        KeyHolder(w.holder_keys[1], w.shares[1], w.epoch, "riec-noord", w.directory)
    wrong = threshold.Share(index=1, scalar=w.shares[2].scalar)
    with pytest.raises(ConfigurationError):
        KeyHolder(w.holder_keys[1], wrong, w.epoch, COVENANT, w.directory)
    with pytest.raises(LocalError):
        w.holders[1].handle(signed_request(w), now=NOW.replace(tzinfo=None))


# --- the node's reading of replies ------------------------------------------------------

REPLY_FAULTS = [
    ("garbage", lambda w, r: b"\xff\xff"),
    ("wrong context", lambda w, r: _resigned(w, r, context=SignatureContext.DISCLOSURE_RESPONSE)),
    ("for another audience", lambda w, r: _resigned(w, r, audience=_POLICE)),
    (
        "other request id",
        lambda w, r: _resigned(w, r, change=_set_response("request_id", b"o" * 16)),
    ),
    ("other key epoch", lambda w, r: _resigned(w, r, change=_set_response("key_epoch", 2))),
    ("other requester", lambda w, r: _resigned(w, r, change=_set_response("requester", _POLICE))),
    ("other holder index", lambda w, r: _resigned(w, r, change=_set_response("holder_index", 2))),
    ("no result", lambda w, r: _resigned(w, r, change=lambda m: m.ClearField("evaluation"))),
    (
        "element missing",
        lambda w, r: _resigned(w, r, change=lambda m: m.evaluation.evaluated_elements.pop()),
    ),
    ("short proof", lambda w, r: _resigned(w, r, change=_set_proof(b"p" * 10))),
    ("signed with another key", lambda w, r: _resigned(w, r, keys=_STRANGER)),
    ("signed by a stranger", lambda w, r: _resigned(w, r, keys=_STRANGER, signer=_STRANGER.party)),
    ("signed by holder 2", lambda w, r: _resigned(w, r, keys=w.holder_keys[2], signer="holder-2")),
]


def _set_response(name: str, value: object) -> Callable[[keyholder_pb2.EvaluationResponse], None]:
    return lambda m: setattr(m, name, value)


def _set_proof(value: bytes) -> Callable[[keyholder_pb2.EvaluationResponse], None]:
    def change(m: keyholder_pb2.EvaluationResponse) -> None:
        m.evaluation.proof = value

    return change


def _resigned(
    w: World,
    reply: bytes,
    *,
    change: Callable[[keyholder_pb2.EvaluationResponse], None] = lambda m: None,
    keys: PartyKeys | None = None,
    context: SignatureContext = SignatureContext.OPRF_RESPONSE,
    audience: str = NODE,
    signer: str = "holder-1",
) -> bytes:
    keys = keys or w.holder_keys[1]
    response = keyholder_pb2.EvaluationResponse.FromString(common_pb2.Signed.FromString(reply).body)
    change(response)
    body = response.SerializeToString()
    return common_pb2.Signed(
        body=body,
        signer=signer,
        context=context.value,
        signature=keys.sign(context, body, audience=audience),
    ).SerializeToString()


def _read(
    w: World, replies: Mapping[int, bytes], request_id: bytes, elements: list[bytes]
) -> Replies:
    return evaluation.read_replies(
        w.directory, w.epoch, (1, 2), elements, request_id, replies, requester=NODE
    )


@pytest.mark.parametrize("fault", [f[1] for f in REPLY_FAULTS], ids=[f[0] for f in REPLY_FAULTS])
def test_read_replies_marks_a_bad_reply_faulty_and_never_raises(fault):
    w = world(2, 3)
    elements = blinded(2)
    requests = evaluation.build_requests(
        w.node, COVENANT, w.epoch, (1, 2), elements, request_id=b"q" * 16, now=NOW
    )
    honest = {i: w.holders[i].handle(requests[i], now=NOW) for i in (1, 2)}
    clean = _read(w, honest, b"q" * 16, elements)
    assert sorted(clean.answers) == [1, 2]
    assert not clean.unusable
    read = _read(w, {**honest, 1: fault(w, honest[1])}, b"q" * 16, elements)
    assert set(read.faulty) == {1}
    assert read.faulty[1]
    assert sorted(read.answers) == [2]
    assert read.unusable == {1}


def test_read_replies_sorts_refusals_and_missing_holders():
    w = world(2, 3)
    elements = blinded(2)
    requests = evaluation.build_requests(
        w.node, COVENANT, w.epoch, (1, 2), elements, request_id=b"q" * 16, now=NOW
    )
    refused = w.holders[1].handle(flip_body_byte(requests[1]), now=NOW)
    read = _read(w, {1: refused, 3: b"ignored: not in the set"}, b"q" * 16, elements)
    assert read.refusals[1].reason is R.BAD_SIGNATURE
    assert read.refusals[1].holder_index == 1
    assert read.missing == {2}
    assert read.unusable == {1, 2}
    assert not read.answers
    assert not read.faulty


def test_a_refusal_for_another_request_is_faulty():
    w = world(2, 3)
    elements = blinded(2)
    old = signed_request(w, 1, request_id=b"o" * 16)
    w.holders[1].handle(old, now=NOW)
    replayed = w.holders[1].handle(old, now=NOW)  # a REPLAY refusal naming request "ooo..."
    read = _read(w, {1: replayed}, b"q" * 16, elements)
    assert set(read.faulty) == {1}


# --- house rules -----------------------------------------------------------------------


def test_refusal_reasons_match_the_wire_format():
    wire = keyholder_pb2.EvaluationRefusalReason
    assert {r.name: r.value for r in RefusalReason} == {
        name.removeprefix("EVALUATION_REFUSAL_REASON_"): value for name, value in wire.items()
    }
    assert RefusalReason.from_wire(99) is R.UNSPECIFIED


def test_neither_side_logs_blinded_elements_evaluations_or_shares(caplog):
    w = world(2, 3)
    caplog.set_level("DEBUG")
    broker = Broker(
        {**w.holders, 1: LyingHolder(w.holders[1], w.holder_keys[1])},
        alter={3: flip_body_byte},
    )
    with pytest.raises(NotEnoughHolders):
        w.tokenise(broker, IDS)
    assert caplog.records  # refusals and faults are logged
    secrets = [s.scalar for s in w.shares.values()]
    for requests in broker.requests:
        for data in requests.values():
            request = keyholder_pb2.EvaluationRequest.FromString(
                common_pb2.Signed.FromString(data).body
            )
            secrets.extend(request.blinded_elements)
    for replies in broker.replies:
        for data in replies.values():
            response = keyholder_pb2.EvaluationResponse.FromString(
                common_pb2.Signed.FromString(data).body
            )
            secrets.extend(response.evaluation.evaluated_elements)
    text = caplog.text + "".join(repr(r.args) for r in caplog.records)
    for secret in secrets:
        assert secret.hex() not in text
        assert repr(secret) not in text
    assert all(i.canonical not in text for i in IDS)


def test_both_sides_are_sans_io():
    code = (
        "import sys\n"
        "import samenloop.node.tokens.evaluation, samenloop.node.tokens.holder\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'sqlalchemy'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_usage_already_recorded_today_counts_towards_the_quota_after_a_restart():
    w = world(2, 3)
    restarted = KeyHolder(
        w.holder_keys[1],
        w.shares[1],
        w.epoch,
        COVENANT,
        w.directory,
        daily_quota=4,
        used_today={NODE: 3},  # what the node's store counted before the restart
        today=NOW.date(),
    )
    broker = Broker({**w.holders, 1: restarted})
    assert w.tokenise(broker, IDS[:2]) == w.expected(IDS[:2])
    assert refusal(broker.replies[0][1], w.holder_keys[1]) is R.QUOTA_EXCEEDED
    # The next day the earlier usage no longer counts.
    fresh = KeyHolder(
        w.holder_keys[1], w.shares[1], w.epoch, COVENANT, w.directory,
        daily_quota=4, used_today={NODE: 3}, today=NOW.date(),
    )  # fmt: skip
    tomorrow = Broker({**w.holders, 1: fresh}, now=NOW + timedelta(days=1))
    assert w.tokenise(tomorrow, IDS[:2], now=NOW + timedelta(days=1)) == w.expected(IDS[:2])
    assert [sorted(r) for r in tomorrow.requests] == [[1, 2]]


# --- the quota per party across all holders (issue 12, finding 3) ------------------------

CAP = 12


def many(count: int) -> list[Ident]:
    return [Ident("bsn", f"{j:09d}") for j in range(count)]


def remaining_today(reply: bytes, holder: PartyKeys, audience: str = NODE) -> int | None:
    response = open_reply(reply, holder, audience)
    return response.remaining_today if response.HasField("remaining_today") else None


def test_each_holder_allows_a_party_its_share_of_the_cap():
    w = world(2, 3, cap=CAP)
    assert w.holders[1].allowance(NODE) == 8  # no seat: floor(12 * 2 / 3)
    assert w.holders[1].allowance("holder-2") == 6  # another holder: floor(12 * 1 / 2)
    assert w.holders[1].allowance("holder-1") == CAP  # its own party: the whole cap
    reply = w.holders[1].handle(signed_request(w, elements=3), now=NOW)
    assert refusal(reply, w.holder_keys[1]) is None
    assert remaining_today(reply, w.holder_keys[1]) == 5


def _ask(w: World, requester: PartyKeys, index: int, rset: tuple[int, ...], element: bytes):
    """One signed request of ``requester`` for one element to holder ``index``: its partial."""
    (request,) = [
        r
        for i, r in evaluation.build_requests(
            requester, COVENANT, w.epoch, rset, [element],
            request_id=evaluation.new_request_id(), now=NOW,
        ).items()
        if i == index
    ]  # fmt: skip
    reply = w.holders[index].handle(request, now=NOW)
    response = open_reply(reply, w.holder_keys[index], requester.party)
    if response.WhichOneof("result") != "evaluation":
        assert RefusalReason(response.refusal.reason) is R.QUOTA_EXCEEDED
        return None
    return threshold.PartialEvaluation(
        index, tuple(response.evaluation.evaluated_elements), response.evaluation.proof
    )


def test_a_party_without_a_seat_gets_no_more_than_its_cap_over_every_set():
    """The RIEC's attack: one element at a time, over every responding set in turn,
    until every set refuses. Before, each holder allowed the whole cap: 18 tokens."""
    w = world(2, 3, cap=CAP)
    made = 0
    refused_in_a_row = 0
    for rset in itertools.cycle(HolderPlanner(w.epoch).all_sets()):
        if refused_in_a_row == 3:
            break
        _, element = oprf.blind(f"guess {made}".encode())
        partials = {i: _ask(w, w.node, i, rset, element) for i in rset}
        if any(p is None for p in partials.values()):
            refused_in_a_row += 1
            continue
        refused_in_a_row = 0
        threshold.combine(w.epoch, rset, [element], partials)
        made += 1
    assert made == CAP
    used = [w.holders[i].used_today(NODE, now=NOW) for i in (1, 2, 3)]
    assert used == [8, 8, 8]  # 24 partial evaluations: at most 24 / t = 12 tokens, any way


def test_a_holder_party_computing_its_own_share_locally_gets_no_more_than_its_cap():
    """The gemeente's attack: its own partial from its share file, uncounted; the others
    asked in turn until both refuse. Before, each allowed the whole cap: 24 tokens."""
    w = world(2, 3, cap=CAP)
    me = w.holder_keys[1]
    made = 0
    for other in itertools.cycle((2, 3)):
        _, element = oprf.blind(f"guess {made}".encode())
        theirs = _ask(w, me, other, (1, other), element)
        if theirs is None:
            if all(w.holders[i].used_today(me.party, now=NOW) == 6 for i in (2, 3)):
                break
            continue
        mine = threshold.evaluate_partial(w.shares[1], [element], (1, other))
        threshold.combine(w.epoch, (1, other), [element], {1: mine, other: theirs})
        made += 1
    assert made == CAP
    assert w.holders[1].used_today(me.party, now=NOW) == 0  # its own seat never saw them


def test_an_honest_party_reaches_its_cap_and_stops_asking():
    w = world(2, 3, cap=CAP)
    wanted = many(CAP + 2)
    use = evaluation.daily_use(Quotas(CAP, 0), w.epoch, NODE)
    broker = Broker(w.holders)
    made = w.tokenise(broker, wanted, planner=HolderPlanner(w.epoch, use=use))
    assert made == w.expected(wanted[:CAP])  # the first 12: the holders ran out
    assert [w.holders[i].used_today(NODE, now=NOW) for i in (1, 2, 3)] == [8, 8, 8]
    assert all(refusal(r, w.holder_keys[i]) is None for rs in broker.replies for i, r in rs.items())
    asked = len(broker.requests)
    with pytest.raises(NotEnoughHolders, match="no quota left today"):
        w.tokenise(broker, wanted[CAP:], planner=HolderPlanner(w.epoch, use=use))
    assert len(broker.requests) == asked  # it knew: nothing more was asked


def test_an_honest_holder_party_counts_every_token_at_its_own_seat():
    w = world(2, 3, cap=CAP)
    me = w.holder_keys[2]
    wanted = many(CAP + 1)
    use = evaluation.daily_use(Quotas(CAP, 0), w.epoch, me.party)
    broker = Broker(w.holders)
    made = w.tokenise(broker, wanted, node=me, planner=HolderPlanner(w.epoch, use=use))
    assert made == w.expected(wanted[:CAP])
    assert all(2 in r for r in broker.requests)  # its own seat in every set
    used = [w.holders[i].used_today(me.party, now=NOW) for i in (1, 2, 3)]
    assert used == [6, CAP, 6]  # its own holder counted (and audits) every one


def test_a_quota_refusal_says_what_is_left_and_the_node_asks_for_less():
    # After a restart the node believes the holders' whole share is left; they had used 3.
    w = world(2, 2, cap=8, used_today={NODE: 3})
    use = evaluation.daily_use(Quotas(8, 0), w.epoch, NODE)
    broker = Broker(w.holders)
    made = w.tokenise(broker, many(8), planner=HolderPlanner(w.epoch, use=use))
    assert made == w.expected(many(5))
    sizes = [len(request_of(r[1]).blinded_elements) for r in broker.requests]
    assert sizes == [8, 5]
    for i in (1, 2):
        assert refusal(broker.replies[0][i], w.holder_keys[i]) is R.QUOTA_EXCEEDED
        assert remaining_today(broker.replies[0][i], w.holder_keys[i]) == 5
        assert remaining_today(broker.replies[1][i], w.holder_keys[i]) == 0
        assert w.holders[i].used_today(NODE, now=NOW) == 8


def request_of(signed: bytes) -> keyholder_pb2.EvaluationRequest:
    return keyholder_pb2.EvaluationRequest.FromString(common_pb2.Signed.FromString(signed).body)


# --- a broker that drops answers: the quota it can burn (issue 12 review) -----------------

LARGE = Quotas(100_000, 0)


def first_times(times: Mapping[int, int]) -> Callable[[int, bytes], bool]:
    """Drop holder i's reply the first ``times[i]`` times it answers."""
    left = dict(times)

    def drop(index: int, request: bytes) -> bool:
        if left.get(index, 0) > 0:
            left[index] -= 1
            return True
        return False

    return drop


def sizes_of(broker: Broker) -> list[tuple[list[int], int]]:
    """Each relay call's holders and the number of elements it asked."""
    return [
        (sorted(r), len(request_of(next(iter(r.values()))).blinded_elements))
        for r in broker.requests
    ]


def test_a_dropped_answer_is_asked_again_under_the_same_id_and_costs_nothing():
    w = world(2, 3)
    use = evaluation.daily_use(LARGE, w.epoch, NODE)
    broker = Broker(w.holders, drop_reply=first_times({1: evaluation.RESENDS}))
    made = w.tokenise(broker, IDS, planner=HolderPlanner(w.epoch, use=use))
    assert made == w.expected(IDS)
    # Sent to the set, then twice more to holder 1 alone: the very same signed bytes.
    assert sizes_of(broker) == [([1, 2], 3), ([1], 3), ([1], 3)]
    assert broker.requests[1][1] == broker.requests[2][1] == broker.requests[0][1]
    # Holder 1 answered three times and counted once; nothing was lost.
    assert [w.holders[i].used_today(NODE, now=NOW) for i in (1, 2, 3)] == [3, 3, 0]
    assert use.window == evaluation.MAX_ELEMENTS


def test_a_holder_whose_every_answer_is_dropped_costs_one_request_then_one_element():
    w = world(2, 3)
    use = evaluation.daily_use(LARGE, w.epoch, NODE)
    broker = Broker(w.holders, drop_reply=lambda index, request: index == 1)
    made = w.tokenise(broker, IDS, planner=HolderPlanner(w.epoch, use=use))
    assert made == w.expected(IDS)
    # Holder 1 silent through both resends: left out, and the next set is asked for one
    # element, then for as many more as came back.
    assert sizes_of(broker) == [([1, 2], 3), ([1], 3), ([1], 3), ([2, 3], 1), ([2, 3], 2)]
    # Lost: the first request, at both holders of its set (t x 3); nothing after it.
    assert [w.holders[i].used_today(NODE, now=NOW) for i in (1, 2, 3)] == [3, 3 + 3, 3]
    assert use.window == 1 + 1 + 2


def test_a_broker_that_drops_every_answer_burns_one_element_a_holder_per_attempt():
    w = world(2, 3)
    use = evaluation.daily_use(LARGE, w.epoch, NODE)
    broker = Broker(w.holders, drop_reply=lambda index, request: True)
    attempts = 6
    for _ in range(attempts):  # as the node's work loop tries again after its backoff
        with pytest.raises(NotEnoughHolders, match="holder 1: unreachable"):
            w.tokenise(broker, many(40), planner=HolderPlanner(w.epoch, use=use))
    # The first attempt lost a whole request (40 elements at each holder of its set);
    # every later one a single element: the node's attempts, not the day's quota.
    used = [w.holders[i].used_today(NODE, now=NOW) for i in (1, 2, 3)]
    assert used == [40 + attempts - 1, 40 + attempts - 1, 0]
    assert all(size in (40, 1) for _, size in sizes_of(broker))


def test_dropping_large_requests_costs_at_most_t_times_what_was_answered_since():
    # The broker sees how many elements a request carries and drops every answer to a
    # request of more than 5: what the holders counted without a token stays within
    # t * (first request + one element per lost round + the tokens made).
    w = world(2, 5)
    use = evaluation.daily_use(LARGE, w.epoch, NODE)

    def large(index: int, request: bytes) -> bool:
        return len(request_of(request).blinded_elements) > 5

    broker = Broker(w.holders, drop_reply=large)
    wanted = many(60)
    made: list[bytes] = []
    for _ in range(100):  # attempts; each makes some tokens, unless the window stays large
        if len(made) == len(wanted):
            break
        try:
            made += w.tokenise(broker, wanted[len(made) :], planner=HolderPlanner(w.epoch, use=use))
        except NotEnoughHolders:
            continue  # every set left out: try again, as the work loop does
    assert made == w.expected(wanted)
    # Each round in order (a request id, first sent), its size, whether its answers came.
    delivered = {
        request_id_of(broker.requests[k][i])
        for k, replies in enumerate(broker.replies)
        for i in replies
    }
    rounds: dict[bytes, int] = {}
    for size_and_sets, sent in zip(sizes_of(broker), broker.requests, strict=True):
        rounds.setdefault(request_id_of(next(iter(sent.values()))), size_and_sets[1])
    since, lost_rounds, first = 0, 0, True
    for request_id, size in rounds.items():
        if request_id in delivered:
            since += size
            continue
        # A lost round asked at most 1 + what was answered since the loss before it.
        assert first or size <= 1 + since, (size, since)
        first, since, lost_rounds = False, 0, lost_rounds + 1
    counted = sum(w.holders[i].used_today(NODE, now=NOW) for i in w.holders)
    lost = counted - 2 * len(made)
    assert lost_rounds > 1
    assert 0 < lost <= 2 * (60 + lost_rounds + len(made))


# --- the replay cache outlives a restart (issue 12, finding 8) -----------------------------


def test_an_answer_says_what_the_node_must_record_before_sending_it():
    w = world(2, 3)
    request = signed_request(w, elements=3)
    answered = w.holders[1].answer(request, now=NOW)
    assert (answered.requester, answered.elements, answered.refused) == (NODE, 3, None)
    assert answered.answered is not None
    assert answered.answered.key == (NODE, b"r" * 16, 1)
    assert answered.answered.keep_until == NOW + MAX_AGE + MAX_SKEW == NOW + REPLAY_WINDOW
    assert answered.answered.digest == crypto.digest(common_pb2.Signed.FromString(request).body)
    assert answered.summed is None
    assert refusal(answered.reply, w.holder_keys[1]) is None
    assert "3 evaluated" in repr(answered)
    assert answered.reply.hex() not in repr(answered)
    # The same request again: answered, nothing to record, only summed.
    for _ in range(evaluation.RESENDS):
        again = w.holders[1].answer(request, now=NOW)
        assert (again.refused, again.elements, again.answered) == (None, 3, None)
        assert again.summed == HolderEvent(NODE, ANSWERED_AGAIN, NOW.date())
        assert "evaluated again" in repr(again)
    replayed = w.holders[1].answer(request, now=NOW)
    assert (replayed.refused, replayed.elements, replayed.answered) == (R.REPLAY, 0, None)
    assert replayed.summed == HolderEvent(NODE, "REPLAY", NOW.date())
    assert w.holders[1].used_today(NODE, now=NOW) == 3


def test_a_withdrawn_answer_was_never_given():
    w = world(2, 3, quota={1: 3})
    request = signed_request(w, elements=3)
    answered = w.holders[1].answer(request, now=NOW)
    w.holders[1].withdraw(answered)  # the node could not record it: it is not sent
    assert w.holders[1].used_today(NODE, now=NOW) == 0
    assert w.holders[1].served.get(NODE, 0) == 0
    assert w.holders[1].answer(request, now=NOW).refused is None  # neither counted nor a replay
    w.holders[1].withdraw(w.holders[1].answer(signed_request(w, request_id=b"s" * 16), now=NOW))
    assert w.holders[1].used_today(NODE, now=NOW) == 3  # a refusal withdraws nothing


def test_a_restarted_holder_refuses_a_replay_of_what_it_answered_before():
    w = world(2, 3, quota={1: 4})
    request = signed_request(w, elements=3)
    answered = w.holders[1].answer(request, now=NOW)
    assert answered.answered is not None
    # What the node's store kept: the count and the answered request.
    restarted = KeyHolder(
        w.holder_keys[1], w.shares[1], w.epoch, COVENANT, w.directory,
        daily_quota=4, used_today={NODE: 3}, today=NOW.date(), answered=[answered.answered],
    )  # fmt: skip
    later = NOW + timedelta(seconds=30)
    for _ in range(evaluation.RESENDS):  # the very request: answered again, uncounted
        replayed = restarted.answer(request, now=later)
        assert (replayed.refused, replayed.answered) == (None, None)
        assert replayed.summed == HolderEvent(NODE, ANSWERED_AGAIN, later.date())
    replayed = restarted.answer(request, now=later)
    assert replayed.refused is R.REPLAY
    assert replayed.answered is None
    assert restarted.used_today(NODE, now=later) == 3  # the replay burnt nothing
    # Kept until the request can no longer be fresh, then it is stale anyway.
    assert restarted.answer(request, now=NOW + MAX_AGE).refused is R.REPLAY
    assert restarted.answer(request, now=NOW + REPLAY_WINDOW).refused is R.STALE
    # An entry stored before digests were kept recognises no repeat: a replay at once.
    undigested = dataclasses.replace(answered.answered, digest=None)
    older = KeyHolder(
        w.holder_keys[1], w.shares[1], w.epoch, COVENANT, w.directory,
        daily_quota=4, used_today={NODE: 3}, today=NOW.date(), answered=[undigested],
    )  # fmt: skip
    assert older.answer(request, now=later).refused is R.REPLAY
    # Without the entry (as before), the restart answers the replay again and counts it.
    forgetful = KeyHolder(
        w.holder_keys[1], w.shares[1], w.epoch, COVENANT, w.directory,
        daily_quota=10, used_today={NODE: 3}, today=NOW.date(),
    )  # fmt: skip
    assert forgetful.answer(request, now=later).refused is None
    assert forgetful.used_today(NODE, now=later) == 6


def test_counts_of_a_day_need_the_day():
    w = world(2, 3)
    with pytest.raises(ConfigurationError) as raised:
        KeyHolder(
            w.holder_keys[1], w.shares[1], w.epoch, COVENANT, w.directory, used_today={NODE: 1}
        )
    assert raised.value.field == "today"


def test_the_holder_loop_records_an_answer_before_it_may_send_it(tmp_path, monkeypatch):
    engine = database.make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    database.upgrade(engine, MIGRATIONS)
    node = TokenStore(engine)
    w = world(2, 3, quota={1: 5})
    holder = w.holders[1]
    request = signed_request(w, elements=3)
    summed = Tally(lambda counts, now: node.count_holder_events(counts, now=now), lambda: NOW)
    decided = holder.answer(request, now=NOW)
    assert record_answer(node, holder, decided, now=NOW, summed=summed) is True
    assert node.evaluations_on(NODE, NOW.date()) == 3
    assert [a.key for a in node.answered_requests(now=NOW)] == [(NODE, b"r" * 16, 1)]

    # The database fails: the error propagates (nothing is sent) and the holder forgets it,
    # so neither the quota nor the replay cache holds an answer that never left.
    other = signed_request(w, elements=2, request_id=b"s" * 16)
    decided = holder.answer(other, now=NOW)
    before = node.holder_totals()

    def broken(*args, **kwargs):
        raise sa.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(node, "count_evaluation", broken)
    with pytest.raises(sa.exc.OperationalError):
        record_answer(node, holder, decided, now=NOW, summed=summed)
    monkeypatch.undo()
    assert node.holder_totals() == before
    assert len(node.answered_requests(now=NOW)) == 1
    assert holder.used_today(NODE, now=NOW) == 3
    again = holder.answer(other, now=NOW)
    assert again.refused is None  # not a replay: it was never answered
    assert record_answer(node, holder, again, now=NOW, summed=summed) is True
    assert node.evaluations_on(NODE, NOW.date()) == 5

    # A second process serving the seat answered it already: not answered, not counted.
    first_process = w.holders[2]
    answered = first_process.answer(signed_request(w, index=2, elements=1), now=NOW)
    assert record_answer(node, first_process, answered, now=NOW, summed=summed) is True
    second_process = KeyHolder(
        w.holder_keys[2], w.shares[2], w.epoch, COVENANT, w.directory, daily_quota=5
    )
    replayed = second_process.answer(signed_request(w, index=2, elements=1), now=NOW)
    assert replayed.refused is None  # this process does not know it...
    assert (
        record_answer(node, second_process, replayed, now=NOW, summed=summed) is False
    )  # ...the store does
    assert second_process.used_today(NODE, now=NOW) == 0
    assert node.evaluations_on(NODE, NOW.date()) == 6
    engine.dispose()


def test_the_holder_loop_sums_refusals_and_names_only_verified_requesters(tmp_path):
    engine = database.make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    database.upgrade(engine, MIGRATIONS)
    node = TokenStore(engine)
    w = world(2, 3)
    holder = w.holders[1]
    clock = [NOW]
    summed = Tally(lambda counts, now: node.count_holder_events(counts, now=now), lambda: clock[0])

    def forged(signer: str) -> bytes:
        """A request in ``signer``'s name with a signature of random bytes."""
        message = common_pb2.Signed.FromString(signed_request(w))
        message.signer = signer
        message.signature = os.urandom(64)
        return message.SerializeToString()

    def audited() -> list[tuple[str, dict[str, object]]]:
        return [
            (e.actor, dict(e.details)) for e in node.audit_entries() if e.kind == "oprf_evaluation"
        ]

    # A flood in made-up names (any 1..64 bytes) and in a party's name, all refused.
    names = [NODE, "made-up", "Z" * 64, "ünïcode naam", "holder-2"]
    for j in range(500):
        clock[0] = NOW + timedelta(milliseconds=100 * j)
        decided = holder.answer(forged(names[j % len(names)]), now=clock[0])
        assert decided.refused in (R.BAD_SIGNATURE, R.UNKNOWN_PARTY)
        assert record_answer(node, holder, decided, now=clock[0], summed=summed) is True
    # ...and stale requests that the node itself signed: its name is verified.
    for j in range(40):
        stale = signed_request(w, request_id=bytes([j]) * 16, issued_at=NOW - 2 * MAX_AGE)
        decided = holder.answer(stale, now=clock[0])
        assert record_answer(node, holder, decided, now=clock[0], summed=summed) is True
    # Written at once: the first of each (requester, outcome); the rest wait for the minute.
    assert [(actor, d["reason"], d["requests"]) for actor, d in audited()] == [
        (UNVERIFIED, "BAD_SIGNATURE", 1),
        (UNVERIFIED, "UNKNOWN_PARTY", 1),
        (NODE, "STALE", 1),
    ]
    clock[0] += timedelta(minutes=1)
    summed.flush()  # the sweep, or the node stopping
    entries = audited()
    assert len(entries) == 6  # 540 refusals: six entries
    totals: dict[tuple[str, str], int] = {}
    for actor, details in entries:
        assert details["refused"] is True
        assert details["elements"] == 0
        key = (actor, str(details["reason"]))
        totals[key] = totals.get(key, 0) + int(str(details["requests"]))
    # The names in the flood: unknown ones (300) and parties whose signature failed (200).
    assert totals == {
        (UNVERIFIED, "UNKNOWN_PARTY"): 300,
        (UNVERIFIED, "BAD_SIGNATURE"): 200,
        (NODE, "STALE"): 40,
    }
    assert node.holder_totals().requests_refused == 540
    assert holder.used_today(NODE, now=clock[0]) == 0
    # No name that a request claimed without its signature is stored anywhere.
    raw = b"".join(f.read_bytes() for f in tmp_path.glob("node.db*"))  # with its WAL
    for name in ("made-up", "Z" * 64, "ünïcode naam"):
        assert name.encode() not in raw
    engine.dispose()
