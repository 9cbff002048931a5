"""The mailbox never sends a message over the limit, and every item the broker can make fits.

The worst cases are built from the wire format's limits: the largest hit notice the
broker can ever sign (the most parties, each with the most refs on one token and the
largest sealed boxes, through the real matching and signing code), the largest envelope
and the largest covenant update. Each must fit in one message several times over, and
the mailbox's page size bound (``mailbox.wire_bytes``) must hold for the real encoding.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from samenloop.broker import mailbox, matching
from samenloop.broker.mailbox import ItemKind
from samenloop.broker.matching import Entry, TokenState
from samenloop.broker.service import BrokerContext, BrokerService
from samenloop.policies import policy, trust
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.policy import Role
from samenloop.v1 import broker_pb2, common_pb2

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=365)
MAX_MESSAGE = common_pb2.LIMITS_MAX_MESSAGE_BYTES
MAX_CURSOR = mailbox.MAX_CURSOR
PARTIES = common_pb2.LIMITS_MAX_PARTIES
REFS = common_pb2.LIMITS_MAX_REFS_PER_TOKEN
BOX = common_pb2.LIMITS_MAX_SEALED_ATTRIBUTES_BYTES
BOXES = common_pb2.LIMITS_MAX_SEALED_ATTRIBUTES_PER_NOTICE
ID = common_pb2.LIMITS_MAX_PARTY_ID_BYTES
#: The longest role name a member can show.
ROLE = max((role.value for role in Role), key=len)


def party(i: int) -> str:
    """A party id of the longest length allowed."""
    return f"p{i:03d}".ljust(ID, "x")


def ref(i: int, n: int) -> bytes:
    return i.to_bytes(8, "big") + n.to_bytes(8, "big")


def response_of(*items: broker_pb2.MailboxItem) -> broker_pb2.FetchMailboxResponse:
    return broker_pb2.FetchMailboxResponse(
        items=items, head_cursor=MAX_CURSOR, acked_cursor=MAX_CURSOR
    )


def item(**payload: object) -> broker_pb2.MailboxItem:
    built = broker_pb2.MailboxItem(cursor=MAX_CURSOR, **payload)  # type: ignore[arg-type]
    built.enqueued_at.FromDatetime(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
    return built


def bound(*payloads: bytes) -> int:
    """What ``mailbox.page`` counts for a response carrying these payloads."""
    return mailbox.RESPONSE_OVERHEAD_BYTES + sum(mailbox.wire_bytes(len(p)) for p in payloads)


def worst_notice_bound() -> int:
    """An upper bound of the largest signed notice, worked out from the limits alone."""
    tag = 1 + 5  # a field's tag and a length of up to 5 bytes
    member = tag + (tag + ID) + (tag + len(ROLE)) + REFS * (tag + 16)
    notice = (
        (tag + ID)  # covenant id
        + 3 * 11  # covenant version, revision, kind, party count: varints
        + (tag + 16)  # group id
        + (tag + ID)  # recipient
        + (tag + 8)  # visibility
        + REFS * (tag + 16)  # own refs
        + (PARTIES - 1) * member
        + BOXES * (tag + BOX)
        + 3 * (tag + 17)  # first seen, last seen, issued at
        + 2  # picture reporter
    )
    return tag + notice + (tag + ID) + (tag + 16) + (tag + 64)  # Signed around it


def test_the_largest_notice_the_broker_can_build_fits_well_inside_one_message():
    """``LIMITS_MAX_PARTIES`` parties with ``LIMITS_MAX_REFS_PER_TOKEN`` refs each on one
    token, every entry with a sealed box of ``LIMITS_MAX_SEALED_ATTRIBUTES_BYTES``: the
    last party's batch makes a notice for every member, through matching and signing."""
    token = b"\x07" * 32
    box = common_pb2.SecretBox(
        key_version=2**32 - 1, nonce=b"\xff" * 24, ciphertext=b"\xff" * 221
    ).SerializeToString()
    assert len(box) == BOX
    held = tuple(
        Entry(party(i), token, ref(i, n), 1, LATER, box)
        for i in range(PARTIES - 1)
        for n in range(REFS)
    )
    last = party(PARTIES - 1)
    batch = matching.parse_batch(
        last, 1, [Entry(last, token, ref(PARTIES - 1, n), 1, LATER, box) for n in range(REFS)]
    )
    roles = {party(i): ROLE for i in range(PARTIES)}
    submitted = matching.submit(
        batch,
        [TokenState(token, held)],
        min_parties=2,
        now=NOW,
        new_group_id=lambda: b"\xff" * 16,
        visibility=matching.members_see_all(roles),
    )
    notices = submitted.change.notices
    assert len(notices) == PARTIES
    covenant = SimpleNamespace(
        id="c" * ID, version=2**63 - 1, broker=SimpleNamespace(id="b" * ID)
    )  # what signing reads of a covenant
    service = BrokerService(
        BrokerContext(
            covenant=lambda: covenant,  # type: ignore[arg-type,return-value]
            store=None,  # type: ignore[arg-type]
            keys=PartyKeys.generate("b" * ID),
            clock=lambda: datetime(9999, 12, 31, tzinfo=UTC),
        )
    )
    draft = notices[-1]  # the last party: its own refs and every other member
    assert len(draft.own_refs) == REFS
    assert len(draft.view.members) == PARTIES - 1
    assert sum(len(m.sealed_attributes) for m in draft.view.members) == BOXES
    signed = service._sign_notice(draft, covenant)  # type: ignore[arg-type]
    response = response_of(item(hit_notice=common_pb2.Signed.FromString(signed)))
    assert len(signed) <= worst_notice_bound()
    assert response.ByteSize() <= bound(signed)
    assert bound(signed) <= MAX_MESSAGE // 4  # well inside: a quarter of one message


def test_the_largest_envelope_and_covenant_update_fit_one_message_three_times():
    sealed = common_pb2.Sealed(
        sender="s" * ID,
        recipient="r" * ID,
        covenant_version=2**64 - 1,
        nonce=b"\xff" * common_pb2.LIMITS_NONCE_BYTES,
        ciphertext=b"\xff" * common_pb2.LIMITS_MAX_ENVELOPE_BYTES,
    )
    relayed = broker_pb2.RelayedEnvelope(client_message_id=b"\xff" * 16, sealed=sealed)
    relayed.accepted_at.FromDatetime(datetime(9999, 12, 31, tzinfo=UTC))
    covenant = common_pb2.SignedCovenant(
        body=b"\xff" * trust.MAX_COVENANT_BYTES,
        signatures=[common_pb2.CovenantSignature(signer="s" * ID, signature=b"\xff" * 64)]
        * trust.MAX_SIGNATURES,
    )
    assert trust.MAX_COVENANT_BYTES == common_pb2.LIMITS_MAX_ENVELOPE_BYTES
    # The broker refuses anything larger (SendEnvelope, PublishCovenant), so these are the
    # largest items a mailbox can hold besides notices: the bounds protocol.md states.
    assert sealed.ByteSize() == mailbox.MAX_SEALED_BYTES
    assert len(relayed.SerializeToString()) <= mailbox.MAX_ENVELOPE_ITEM_BYTES
    assert mailbox.MAX_ENVELOPE_ITEM_BYTES == 2**20 + 214
    assert len(covenant.SerializeToString()) == mailbox.MAX_COVENANT_ITEM_BYTES
    assert mailbox.MAX_COVENANT_ITEM_BYTES == 2**20 + 8644
    assert mailbox.MAX_ENVELOPE_ITEM_BYTES <= policy.MIN_ENVELOPE_BYTES_QUOTA
    for payload in (relayed, covenant):
        encoded = payload.SerializeToString()
        wrapped = (
            item(envelope=relayed)
            if isinstance(payload, broker_pb2.RelayedEnvelope)
            else item(covenant_update=covenant)
        )
        assert response_of(wrapped).ByteSize() <= bound(encoded)
        assert bound(encoded, encoded, encoded) <= MAX_MESSAGE
        assert mailbox.page([(1, len(encoded))] * 4).count == 3  # three to a message


def test_a_marker_fits_its_bound():
    marker = mailbox.marker(ItemKind.COVENANT_UPDATE, 2**63 - 1, datetime(9999, 12, 31, tzinfo=UTC))
    assert len(marker) <= mailbox.MARKER_BYTES
    aside = broker_pb2.SetAsideItem.FromString(marker)
    assert (aside.kind, aside.size_bytes) == ("covenant_update", 2**63 - 1)
    assert response_of(item(set_aside=aside)).ByteSize() <= bound(marker)


# --- paging by bytes ------------------------------------------------------------------

SIZES = st.lists(st.integers(min_value=0, max_value=2 * MAX_MESSAGE), max_size=40)


@settings(max_examples=60, deadline=None)
@given(sizes=SIZES, budget=st.integers(min_value=1000, max_value=MAX_MESSAGE))
def test_a_page_never_exceeds_its_budget_and_always_moves_on(sizes, budget):
    items = [(cursor, size) for cursor, size in enumerate(sizes, start=1)]
    page = mailbox.page(items, budget=budget)
    if items:
        assert page.count >= 1  # a reader always gets past the first item
    sent = items[: page.count]
    assert set(page.set_aside) <= {cursor for cursor, _ in sent}
    cost = mailbox.RESPONSE_OVERHEAD_BYTES + sum(
        mailbox.wire_bytes(mailbox.MARKER_BYTES if cursor in page.set_aside else size)
        for cursor, size in sent
    )
    assert cost <= budget
    for cursor, size in sent:  # only what fits in no message is set aside
        alone = mailbox.RESPONSE_OVERHEAD_BYTES + mailbox.wire_bytes(size)
        assert (cursor in page.set_aside) == (alone > budget)
    if page.count < len(items):  # stopped because the next would not fit
        _, size = items[page.count]
        alone = mailbox.RESPONSE_OVERHEAD_BYTES + mailbox.wire_bytes(size)
        nxt = mailbox.wire_bytes(mailbox.MARKER_BYTES if alone > budget else size)
        assert cost + nxt > budget


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(min_value=0, max_value=300_000), min_size=1, max_size=12))
def test_the_page_bound_holds_for_the_real_encoding(sizes):
    payloads = [common_pb2.Signed(body=b"\xff" * size).SerializeToString() for size in sizes]
    items = [item(hit_notice=common_pb2.Signed.FromString(p)) for p in payloads]
    page = mailbox.page([(i, len(p)) for i, p in enumerate(payloads, start=1)])
    sent = response_of(*items[: page.count])
    assert sent.ByteSize() <= bound(*payloads[: page.count]) <= MAX_MESSAGE
    stream = broker_pb2.StreamMailboxResponse(item=items[0])
    assert stream.ByteSize() <= bound(payloads[0])


def test_pages_by_example():
    big = MAX_MESSAGE // 2
    assert mailbox.page([]) == mailbox.Page(0)
    assert mailbox.page([(1, 10), (2, 10)]) == mailbox.Page(2)
    assert mailbox.page([(1, big), (2, big)]) == mailbox.Page(1)  # the second must wait
    assert mailbox.page([(5, MAX_MESSAGE), (6, 10)]) == mailbox.Page(2, (5,))
    assert mailbox.page([(1, 10), (7, 40 * MAX_MESSAGE), (9, big)]) == mailbox.Page(3, (7,))
    assert mailbox.page([(1, 100), (2, 100)], budget=500) == mailbox.Page(2)
    assert mailbox.page([(1, 100), (2, 100)], budget=300) == mailbox.Page(1)
    assert mailbox.page([(1, 1000)], budget=300) == mailbox.Page(1, (1,))
