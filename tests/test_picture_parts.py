"""A picture share larger than one message: split, joined, bound to its vector.

The core (``picture_shares.split``/``check_part``/``join``), the messages that carry
parts (``picture_protocol``), the store that keeps parts until a vector is whole
(durable, idempotent, dropped once settled), and the desks of a viewer, two partners
and the aggregator relaying a collection whose shares and sum need two parts each,
with parts dropped, reordered, repeated and tampered with on the way. Through the
daemons: ``tests/test_picture_parts_end_to_end.py``; the broker operator and a
partner as attackers: ``tests/attacks/test_split_shares.py``.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from test_picture import GEMEENTE, NOW, OCT, POLITIE, RIEC, Network, picture_world

from samenloop.node.daemon.database import MIGRATIONS, SealedEnvelope
from samenloop.node.picture import arithmetic as p
from samenloop.node.picture import protocol as pp
from samenloop.node.picture import shares as ps
from samenloop.node.picture.models import PicturePartHeld, PicturePartKind
from samenloop.node.picture.store import NewPictureAnswer, PictureStore
from samenloop.policies import crypto, database
from samenloop.policies.crypto import SignatureContext
from samenloop.policies.errors import InvalidInput, MessageTooLarge
from samenloop.policies.policy import PictureRules, Role
from samenloop.v1 import common_pb2, picture_pb2

WORD = crypto.SHARE_WORD_BYTES
SIGNALS = p.Measure.ACTIVE_SIGNALS


def vector(values: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(values * WORD)


# --- the core: split, check, join ---------------------------------------------------------


def test_the_limits_are_on_the_wire():
    assert ps.MAX_VALUES == common_pb2.LIMITS_MAX_PICTURE_SHARE_VALUES == 98_304
    assert ps.MAX_PARTS == common_pb2.LIMITS_MAX_PICTURE_SHARE_PARTS == 32
    assert ps.MAX_TOTAL_VALUES == common_pb2.LIMITS_MAX_PICTURE_VECTOR_VALUES
    assert ps.MAX_TOTAL_VALUES == ps.MAX_PARTS * ps.MAX_VALUES


@pytest.mark.parametrize(
    ("values", "parts"),
    [(1, 1), (ps.MAX_VALUES, 1), (ps.MAX_VALUES + 1, 2), (ps.MAX_TOTAL_VALUES, ps.MAX_PARTS)],
)
def test_parts_needed(values, parts):
    assert ps.parts_needed(values) == parts


def test_a_vector_beyond_the_limit_is_not_split():
    with pytest.raises(MessageTooLarge) as caught:
        ps.split(bytes((ps.MAX_TOTAL_VALUES + 1) * WORD))
    assert (caught.value.field, caught.value.reason) == ("share", "picture.too_large")


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 3 * ps.MAX_VALUES),
    st.integers(0, 2**32),
    st.randoms(use_true_random=False),
    st.integers(0, 3),
)
def test_split_then_join_in_any_order_with_repeats_is_the_identity(values, seed, rnd, repeats):
    whole = vector(values, seed)
    parts = ps.split(whole)
    assert len(parts) == ps.parts_needed(values)
    assert all(len(x.data) <= ps.MAX_VALUES * WORD for x in parts)
    arriving = parts + [rnd.choice(parts) for _ in range(repeats)]  # a repeat is idempotent
    rnd.shuffle(arriving)
    for missing in range(len(parts)) if len(parts) > 1 else ():
        assert ps.join([x for x in arriving if x.index != missing]) is None
    assert ps.join(arriving, values=values) == whole


def _flip(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:]


TAMPERED = {
    "data": (lambda x: dataclasses.replace(x, data=_flip(x.data)), "part.vector_digest"),
    "short": (lambda x: dataclasses.replace(x, data=x.data[:-WORD]), "share"),
    "index": (lambda x: dataclasses.replace(x, index=x.count), "part.index"),
    "count": (lambda x: dataclasses.replace(x, count=x.count + 1), "part.count"),
    "total": (lambda x: dataclasses.replace(x, total_values=x.total_values + 1), "part.count"),
    "digest": (lambda x: dataclasses.replace(x, digest=bytes(31)), "part.vector_digest"),
}


@settings(max_examples=20, deadline=None)
@given(
    st.integers(ps.MAX_VALUES + 1, 3 * ps.MAX_VALUES),
    st.sampled_from(sorted(TAMPERED)),
    st.data(),
)
def test_a_tampered_part_is_refused_naming_the_field(values, how, data):
    parts = ps.split(vector(values))
    at = data.draw(st.integers(0, len(parts) - 1))
    tamper, field = TAMPERED[how]
    bad = tamper(parts[at])
    with pytest.raises(InvalidInput) as caught:
        ps.join([*parts[:at], bad, *parts[at + 1 :]])
    assert caught.value.field in (field, "part", "part.count", "share")


@settings(max_examples=15, deadline=None)
@given(st.integers(ps.MAX_VALUES + 1, 3 * ps.MAX_VALUES), st.integers(0, 2**32), st.data())
def test_a_part_of_another_vector_is_refused(values, seed, data):
    """Splicing: a part of another vector (another collection's share, or another share of
    this one), of the same or another length, never joins with this vector's parts."""
    ours = ps.split(vector(values, seed))
    other_length = data.draw(st.sampled_from([values, values + 1, 2 * ps.MAX_VALUES + 7]))
    theirs = ps.split(vector(other_length, seed + 1))
    at = data.draw(st.integers(0, min(len(ours), len(theirs)) - 1))
    with pytest.raises(InvalidInput) as caught:
        ps.join([*ours[:at], theirs[at], *ours[at + 1 :]])
    assert caught.value.field in ("part", "part.vector_digest", "part.index", "share")


def test_two_different_parts_at_one_index_are_refused():
    parts = ps.split(vector(ps.MAX_VALUES + 5))
    other = dataclasses.replace(parts[0], data=_flip(parts[0].data))
    with pytest.raises(InvalidInput) as caught:
        ps.join([parts[0], other])
    assert caught.value.field == "part.index"


def test_a_part_of_another_length_than_the_request_is_refused():
    (first, _) = ps.split(vector(ps.MAX_VALUES + 5))
    with pytest.raises(InvalidInput) as caught:
        ps.check_part(first, values=ps.MAX_VALUES + 6)
    assert caught.value.field == "part.total_values"
    too_many = dataclasses.replace(first, total_values=ps.MAX_TOTAL_VALUES + 1)
    with pytest.raises(InvalidInput) as caught:
        ps.check_part(too_many)
    assert caught.value.field == "part.total_values"


# --- the messages -----------------------------------------------------------------------


def test_a_contribution_in_parts_is_read_part_by_part():
    ask = pp.PictureAsk(OCT, (SIGNALS,), (p.Dimension.AREA,))
    verdict = pp.PictureVerdict(ask)
    values = ps.MAX_VALUES + 3
    whole = vector(values)
    covenant_free = picture_pb2.Period(first_month="2026-10", last_month="2026-10")
    got = []
    for part in ps.split(whole):
        message = picture_pb2.PictureContribution(
            request_id=bytes(16), contributor=GEMEENTE, contributor_role="gemeente"
        )
        message.period.CopyFrom(covenant_free)
        message.share = part.data
        message.part.CopyFrom(part.to_proto())
        received = pp.parse_contribution(
            message, ask, sender=GEMEENTE, role="gemeente", share_values=values
        )
        assert received.part is not None
        got.append(received.part)
    assert verdict.refusal is None
    assert ps.join(reversed(got), values=values) == whole
    # A part for a vector of another length than the request's is refused, naming it.
    with pytest.raises(InvalidInput) as caught:
        pp.parse_contribution(
            message, ask, sender=GEMEENTE, role="gemeente", share_values=values - 1
        )
    assert caught.value.field == "part.total_values"
    # A vector that fits one message travels without a part: one that says "1 of 1" is refused.
    (single,) = ps.split(vector(5))
    message.share = single.data
    message.part.CopyFrom(single.to_proto())
    with pytest.raises(InvalidInput) as caught:
        pp.parse_contribution(message, ask, sender=GEMEENTE, role="gemeente", share_values=5)
    assert caught.value.field == "part.count"


def test_a_sum_larger_than_one_message_travels_in_parts():
    total = vector(2 * ps.MAX_VALUES + 1)
    verdict = pp.SumVerdict((GEMEENTE, POLITIE), bytes(32), total)
    messages = pp.sum_messages(bytes(16), POLITIE, verdict, now=NOW)
    assert len(messages) == 3
    assert [m.part.index for m in messages] == [0, 1, 2]
    assert all(m.contributors == [GEMEENTE, POLITIE] for m in messages)
    parts = [ps.Part.from_proto(m.part, m.sum) for m in messages]
    assert ps.join(parts) == total
    small = dataclasses.replace(verdict, total=vector(4))
    (one,) = pp.sum_messages(bytes(16), POLITIE, small, now=NOW)
    assert not one.HasField("part")
    refused = pp.SumVerdict(refusal=pp.PictureRefusal.INVALID_REQUEST, message="no")
    (no,) = pp.sum_messages(bytes(16), POLITIE, refused, now=NOW)
    assert no.HasField("refusal")


# --- the store ----------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest) -> str:
    """A fresh node database of either kind, for this one test."""
    fixture = {"sqlite": "sqlite_url", "postgresql": "own_postgres_url"}[request.param]
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def engine(url: str) -> Iterator[sa.Engine]:
    engine = database.make_engine(url)
    database.upgrade(engine, MIGRATIONS)
    yield engine
    engine.dispose()


def test_parts_survive_a_restart_and_a_repeat_changes_nothing(engine, url):
    store = PictureStore(engine)
    request_id = bytes(range(16))
    first, second = ps.split(vector(ps.MAX_VALUES + 9))
    kind = PicturePartKind.SHARE
    assert store.keep_picture_part(1, kind, request_id, GEMEENTE, first, now=NOW)
    assert not store.keep_picture_part(2, kind, request_id, GEMEENTE, first, now=NOW)
    engine.dispose()  # a restart: a new engine on the same file
    again = database.make_engine(url)
    try:
        reopened = PictureStore(again)
        assert reopened.mailbox_cursor() == 2
        assert reopened.picture_parts(kind, request_id, GEMEENTE) == [first]
        assert ps.join([*reopened.picture_parts(kind, request_id, GEMEENTE), second]) is not None
        # Nothing usable is kept of an incomplete share: no share held for the request.
        assert reopened.picture_shares_held(request_id) == []
        # Once the whole share is kept, its parts are gone, in the same transaction, and
        # a late part of it is dropped.
        reopened.keep_picture_share(
            3,
            request_id,
            requester=RIEC,
            contributor=GEMEENTE,
            request_digest=bytes(32),
            share=first.data + second.data,
            first_month="2026-10",
            last_month="2026-10",
            now=NOW,
        )
        assert reopened.picture_parts(kind, request_id, GEMEENTE) == []
        assert not reopened.keep_picture_part(4, kind, request_id, GEMEENTE, second, now=NOW)
        with again.connect() as conn:
            assert (
                conn.execute(sa.select(sa.func.count()).select_from(PicturePartHeld)).scalar() == 0
            )
    finally:
        again.dispose()


def test_a_part_for_no_collection_of_the_viewer_is_dropped(engine):
    store = PictureStore(engine)
    first, _ = ps.split(vector(ps.MAX_VALUES + 9))
    for kind in (PicturePartKind.CONTRIBUTION, PicturePartKind.SUM):
        assert not store.keep_picture_part(1, kind, bytes(16), GEMEENTE, first, now=NOW)
    assert store.picture_parts(PicturePartKind.CONTRIBUTION, bytes(16), GEMEENTE) == []


# --- the desks, relayed in process ---------------------------------------------------------

#: 250 areas and 20 branches: one month's signal cube (area x branch x category x month,
#: each axis with onbekend and overig) is 252 x 22 x 11 x 2 = 121,968 values: two parts.
AREAS = tuple(f"pc4:{1000 + 7 * n}" for n in range(250))
BRANCHES = tuple(str(n) for n in range(10, 30))


@pytest.fixture(scope="module")
def big_world(tmp_path_factory: pytest.TempPathFactory):
    rules = PictureRules(
        viewers=(Role.RIEC,),
        min_cell_count=3,
        aggregator=Role.POLITIE,
        areas=AREAS,
        branches=BRANCHES,
    )
    return picture_world(
        tmp_path_factory.mktemp("parts-world"), rules, [("woco", Role.WONINGCORPORATIE)]
    )


FACTS = {
    GEMEENTE: [
        p.SignalFacts(AREAS[0], "10", "woonfraude", "2026-10", 5),
        p.SignalFacts(AREAS[-1], "29", "leegstand", "2026-10", 3),
    ],
    "woco": [p.SignalFacts(AREAS[0], "10", "woonfraude", "2026-10", 4)],
    POLITIE: [p.SignalFacts(AREAS[-1], "29", "leegstand", "2026-10", 6)],
}
PARTIES = (RIEC, GEMEENTE, "woco", POLITIE)


@pytest.fixture
def big(big_world, tmp_path: Path) -> Iterator[Network]:
    net = Network(big_world, tmp_path, FACTS, PARTIES)
    yield net
    net.close()


def _collect(net: Network) -> bytes:
    ask = pp.PictureAsk(OCT, (SIGNALS,), (p.Dimension.AREA,))
    request_id, asked = net.desks[RIEC].collect(ask, officer="analist@riec")
    assert set(asked) == set(PARTIES)
    return request_id


def _areas(net: Network, request_id: bytes) -> dict[str, int | None]:
    view = net.desks[RIEC].show(
        measure=SIGNALS, dimensions=(p.Dimension.AREA,), request_id=request_id
    )
    return {c.values[0]: c.count for c in view.table.cells}


def _envelopes(net: Network, party: str) -> list[common_pb2.Sealed]:
    from samenloop.node.daemon.models import EnvelopeOutboxItem

    with net.stores[party].engine.connect() as conn:
        rows = conn.execute(sa.select(EnvelopeOutboxItem.sealed)).scalars().all()
    return [common_pb2.Sealed.FromString(r) for r in rows]


def _deliver(net: Network, sender: str) -> None:
    """Deliver what ``sender`` queued, and nothing else yet."""
    from samenloop.node.daemon.models import EnvelopeOutboxItem
    from samenloop.node.disclosure.protocol import open_envelope

    with net.stores[sender].engine.begin() as conn:
        rows = conn.execute(sa.select(EnvelopeOutboxItem.sealed)).scalars().all()
        conn.execute(sa.delete(EnvelopeOutboxItem))
    for row in rows:
        sealed = common_pb2.Sealed.FromString(row)
        context, body = open_envelope(net.keys[sealed.recipient], net.covenant, sealed)
        net.cursor += 1
        net.handlers[sealed.recipient][context](net.cursor, sender, body, net.covenant)


def test_shares_and_sum_in_parts_give_the_viewer_the_sum(big):
    request_id = _collect(big)
    # Each partner's request is answered with two contribution parts to the viewer and
    # two share parts to the aggregator (the aggregator keeps its own second share).
    _deliver(big, RIEC)
    sent = _envelopes(big, GEMEENTE)
    assert sorted(s.recipient for s in sent) == [POLITIE, POLITIE, RIEC, RIEC]
    assert all(len(s.ciphertext) <= common_pb2.LIMITS_MAX_ENVELOPE_BYTES for s in sent)
    big.ferry()
    cells = _areas(big, request_id)
    assert cells[AREAS[0]] == 9
    assert cells[AREAS[-1]] == 9
    assert cells[p.TOTAL] == 18
    record = big.stores[RIEC].picture_collection(request_id)
    assert record is not None
    assert len(record.aggregate_contributors) == 3
    with big.stores[RIEC].engine.connect() as conn:  # no part is left anywhere
        assert conn.execute(sa.select(sa.func.count()).select_from(PicturePartHeld)).scalar() == 0


def test_parts_reordered_and_repeated_on_the_way_give_the_same_sum(big):
    request_id = _collect(big)
    original = dict(big.handlers[RIEC]), dict(big.handlers[POLITIE])
    held: list[tuple[str, SignatureContext, str, bytes]] = []
    for party in (RIEC, POLITIE):
        for context in (SignatureContext.PICTURE_CONTRIBUTION, SignatureContext.PICTURE_SHARE):
            if context in big.handlers[party]:
                big.handlers[party][context] = lambda c, s, b, cov, party=party, context=context: (
                    held.append((party, context, s, b))
                )
    big.ferry()
    big.handlers[RIEC].update(original[0])
    big.handlers[POLITIE].update(original[1])
    assert len(held) == 3 * 2 + 2 * 2  # three partners' contributions, two partners' shares
    rnd = random.Random(5)
    arriving = held + rnd.sample(held, 4)  # the broker replays some
    rnd.shuffle(arriving)  # ... and reorders everything
    for party, context, sender, body in arriving:
        big.cursor += 1
        big.handlers[party][context](big.cursor, sender, body, big.covenant)
    big.ferry()
    cells = _areas(big, request_id)
    assert (cells[AREAS[0]], cells[AREAS[-1]], cells[p.TOTAL]) == (9, 9, 18)


def test_a_dropped_part_leaves_nothing_usable_and_the_partner_unanswered(big):
    """The relay drops the gemeente's second contribution part: the viewer holds its first
    part only, marks nothing answered, and (once the window passed) sums the others."""
    request_id = _collect(big)
    dropped: list[bool] = []

    def drop(sender, to, context):
        first = sender == GEMEENTE and to == RIEC and not dropped
        if first and context is SignatureContext.PICTURE_CONTRIBUTION:
            dropped.append(True)
            return True
        return False

    big.ferry(drop=drop)
    record = big.stores[RIEC].picture_collection(request_id)
    assert record is not None
    assert GEMEENTE not in {c.contributor for c in record.contributions}
    assert record.sum_requested_at is None  # waits for the gemeente's answer
    assert (
        len(big.stores[RIEC].picture_parts(PicturePartKind.CONTRIBUTION, request_id, GEMEENTE)) == 1
    )
    big.now = NOW + timedelta(minutes=16)  # the answer window has passed
    big.desks[RIEC].show(measure=SIGNALS, dimensions=(p.Dimension.AREA,), request_id=request_id)
    big.ferry()
    view = big.desks[RIEC].show(
        measure=SIGNALS, dimensions=(p.Dimension.AREA,), request_id=request_id
    )
    # The aggregator sums every share it holds, the gemeente's too; the viewer holds no
    # whole share of the gemeente, so it refuses that sum rather than guess (as for a
    # whole contribution the broker drops): nothing is summed, and the refusal says why.
    assert view.contributors == (RIEC,)
    refusals = {party: message for party, _, message in view.refusals}
    assert "the viewer holds no share of gemeente" in refusals["woco"]
    # The refusal settles the collection: the gemeente's part is erased with it.
    assert big.stores[RIEC].picture_parts(PicturePartKind.CONTRIBUTION, request_id, GEMEENTE) == []
    # It summed no one, so it is not the month's cube: collected again, every part arrives.
    again = _collect(big)
    assert again != request_id
    big.ferry()
    cells = _areas(big, again)
    assert (cells[AREAS[0]], cells[AREAS[-1]], cells[p.TOTAL]) == (9, 9, 18)


def _conflicting(message):
    """Part 1 again, other words in it (a partner signing two versions of one part)."""
    again = picture_pb2.PictureContribution()
    again.CopyFrom(message)
    again.share = _flip(message.share)
    return [message, again]


def _longer(message):
    """A part of a vector one value longer than the request's."""
    message.part.total_values += 1
    return [message]


@pytest.mark.parametrize(
    ("tamper", "field"), [(_conflicting, "part.index"), (_longer, "part.total_values")]
)
def test_a_partner_whose_parts_do_not_fit_is_rejected_naming_the_field(big, tamper, field):
    """The gemeente's second part arrives first, tampered: the viewer keeps its contribution
    as rejected, with why, counts it nowhere, and drops the part that follows."""
    request_id = _collect(big)
    original = big.handlers[RIEC][SignatureContext.PICTURE_CONTRIBUTION]
    firsts: list[tuple[int, bytes]] = []

    def tampering(cursor, sender, body, covenant):
        if sender != GEMEENTE:
            return original(cursor, sender, body, covenant)
        message = picture_pb2.PictureContribution.FromString(body)
        if message.part.index == 0:
            firsts.append((cursor, body))  # held back until the second part is in
            return None
        for changed in tamper(message):
            big.cursor += 1
            original(big.cursor, sender, changed.SerializeToString(), covenant)
        for cursor_then, first in firsts:  # now dropped: the gemeente's answer is settled
            original(cursor_then, sender, first, covenant)
        return None

    big.handlers[RIEC][SignatureContext.PICTURE_CONTRIBUTION] = tampering
    big.ferry()
    assert firsts  # the gemeente's first part was held back and then delivered
    view = big.desks[RIEC].show(
        measure=SIGNALS, dimensions=(p.Dimension.AREA,), request_id=request_id
    )
    refusals = {party: message for party, _, message in view.refusals}
    assert refusals[GEMEENTE].startswith(f"rejected by the viewer: {field}:")
    assert GEMEENTE not in view.contributors
    assert big.stores[RIEC].picture_parts(PicturePartKind.CONTRIBUTION, request_id, GEMEENTE) == []


def test_the_picture_store_tells_a_first_answer_from_a_repeat_on_either_database(engine):
    """On PostgreSQL an INSERT's rowcount is not kept (SQLAlchemy 2.1 with psycopg): the
    store asks the database what it inserted, so that a node there answers a request once,
    queues its answer, and keeps a share or a sum request once."""
    from samenloop.node.daemon.models import EnvelopeOutboxItem

    store = PictureStore(engine)
    request_id = bytes(range(16))
    envelope = SealedEnvelope(bytes(16), RIEC, b"sealed")
    answer = NewPictureAnswer(request_id, RIEC, None)
    assert store.answer_picture_request(1, answer, envelope, budget_units=0, now=NOW)
    again = dataclasses.replace(envelope, message_id=bytes([1]) * 16)
    assert not store.answer_picture_request(2, answer, again, budget_units=0, now=NOW)
    with engine.connect() as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(EnvelopeOutboxItem)).scalar() == 1
        )
    share = {
        "requester": RIEC,
        "contributor": GEMEENTE,
        "request_digest": bytes(32),
        "share": bytes(8),
        "first_month": "2026-10",
        "last_month": "2026-10",
        "now": NOW,
    }
    assert store.keep_picture_share(3, request_id, **share)
    assert not store.keep_picture_share(4, request_id, **share)
    assert store.ask_picture_sum(5, request_id, requester=RIEC, contributors=(GEMEENTE,), now=NOW)
    assert not store.ask_picture_sum(
        6, request_id, requester=RIEC, contributors=(GEMEENTE,), now=NOW
    )
