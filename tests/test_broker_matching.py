"""Incremental matching, driven directly: no database, no network.

A tiny in-memory index (``Index``) applies each ``Change`` the way the store
does, so scenarios can run step by step; each scenario is one row of a table.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, tzinfo

import pytest

from samenloop.broker import matching
from samenloop.broker.matching import (
    Change,
    Entry,
    EntryKey,
    Group,
    Member,
    MemberView,
    NoticeKind,
    TokenState,
    View,
    Visibility,
)
from samenloop.policies.errors import (
    ConfigurationError,
    InvalidInput,
    MessageTooLarge,
    QuotaExceeded,
)
from samenloop.v1 import broker_pb2, common_pb2

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=365)
NEW, GROWN, SHRUNK, CLOSED = NoticeKind.NEW, NoticeKind.GROWN, NoticeKind.SHRUNK, NoticeKind.CLOSED


def token(n: int) -> bytes:
    return bytes([n]) * 32


def ref(party: str, n: int = 1) -> bytes:
    return (party.encode() + bytes([n]) * 16)[:15] + bytes([n])


T1, T2, T3 = token(1), token(2), token(3)


@dataclass
class Index:
    """What the store keeps, in memory: entries by key, open groups by token."""

    entries: dict[EntryKey, Entry] = field(default_factory=dict)
    groups: dict[bytes, Group] = field(default_factory=dict)
    ids: int = 0

    def new_group_id(self) -> bytes:
        self.ids += 1
        return self.ids.to_bytes(16, "big")

    def states(self, tokens: set[bytes]) -> list[TokenState]:
        return [
            TokenState(
                t,
                tuple(e for e in self.entries.values() if e.token == t),
                self.groups.get(t),
            )
            for t in sorted(tokens)
        ]

    def apply(self, change: Change) -> None:
        for e in change.deleted:
            del self.entries[e.key]
        for e in change.updated:
            assert e.key in self.entries
            self.entries[e.key] = e
        for e in change.inserted:
            assert e.key not in self.entries
            self.entries[e.key] = e
        for g in change.groups:
            if g.open:
                self.groups[g.token] = g
            else:
                assert self.groups.pop(g.token).group_id == g.group_id

    def submit(self, party, items, *, min_parties, now=NOW, visibility=None):
        entries = [Entry(party, t, r, 1, expires) for t, r, expires in items]
        batch = matching.parse_batch(party, 1, entries)
        kwargs = {"visibility": visibility} if visibility else {}
        result = matching.submit(
            batch,
            self.states({e.token for e in entries}),
            min_parties=min_parties,
            now=now,
            new_group_id=self.new_group_id,
            **kwargs,
        )
        self.apply(result.change)
        return result

    def withdraw(self, party, refs, *, min_parties, now=NOW):
        batch = matching.parse_withdrawal(party, refs)
        touched = {
            e.token for e in self.entries.values() if e.party == party and e.signal_ref in refs
        }
        result = matching.withdraw(batch, self.states(touched), min_parties=min_parties, now=now)
        self.apply(result.change)
        return result

    def expire(self, *, min_parties, now):
        touched = {e.token for e in self.entries.values() if e.expires_at <= now}
        change = matching.expire(self.states(touched), min_parties=min_parties, now=now)
        self.apply(change)
        return change

    def remove(self, party, *, min_parties, now=NOW):
        touched = {e.token for e in self.entries.values() if e.party == party}
        change = matching.remove_party(
            party, self.states(touched), min_parties=min_parties, now=now
        )
        self.apply(change)
        return change


# --- steps of a scenario: (what to do, the notices expected as (recipient, kind, revision)) --


def sub(party, *tokens, n=1, expires=LATER, at=NOW):
    return ("submit", party, [(t, ref(party, n), expires) for t in tokens], at)


def wd(party, *ns, at=NOW):
    return ("withdraw", party, [ref(party, n) for n in ns], at)


def exp(at):
    return ("expire", None, None, at)


def rm(party, at=NOW):
    return ("remove", party, None, at)


SCENARIOS = [
    ("below the minimum: stored, no group", 2, [
        (sub("a", T1), set()),
        (sub("b", T2), set()),
    ]),
    ("two parties form a group at min 2", 2, [
        (sub("a", T1), set()),
        (sub("b", T1), {("a", NEW, 1), ("b", NEW, 1)}),
    ]),
    ("min 3 needs a third party", 3, [
        (sub("a", T1), set()),
        (sub("b", T1), set()),
        (sub("c", T1), {("a", NEW, 1), ("b", NEW, 1), ("c", NEW, 1)}),
    ]),
    ("a third party grows the group", 2, [
        (sub("a", T1), set()),
        (sub("b", T1), {("a", NEW, 1), ("b", NEW, 1)}),
        (sub("c", T1), {("a", GROWN, 2), ("b", GROWN, 2), ("c", NEW, 2)}),
    ]),
    ("one party with two refs counts once", 2, [
        (sub("a", T1, n=1), set()),
        (sub("a", T1, n=2), set()),
        (sub("b", T1), {("a", NEW, 1), ("b", NEW, 1)}),
    ]),
    ("min 3 is not met by one party's two refs", 3, [
        (sub("a", T1, n=1), set()),
        (sub("a", T1, n=2), set()),
        (sub("b", T1), set()),
    ]),
    ("a member's new ref grows the group", 2, [
        (sub("a", T1), set()),
        (sub("b", T1), {("a", NEW, 1), ("b", NEW, 1)}),
        (sub("a", T1, n=2), {("a", GROWN, 2), ("b", GROWN, 2)}),
    ]),
    ("resubmitting what is held changes nothing", 2, [
        (sub("a", T1), set()),
        (sub("b", T1), {("a", NEW, 1), ("b", NEW, 1)}),
        (sub("a", T1, expires=LATER + timedelta(days=1)), set()),
    ]),
    ("withdrawing to below min closes for every member", 2, [
        (sub("a", T1), set()),
        (sub("b", T1), {("a", NEW, 1), ("b", NEW, 1)}),
        (wd("b", 1), {("a", CLOSED, 2), ("b", CLOSED, 2)}),
    ]),
    ("withdrawing above min shrinks; the leaver is closed", 2, [
        (sub("a", T1), set()),
        (sub("b", T1), {("a", NEW, 1), ("b", NEW, 1)}),
        (sub("c", T1), {("a", GROWN, 2), ("b", GROWN, 2), ("c", NEW, 2)}),
        (wd("c", 1), {("a", SHRUNK, 3), ("b", SHRUNK, 3), ("c", CLOSED, 3)}),
    ]),
    ("withdrawing one of a member's two refs shrinks for all", 2, [
        (sub("a", T1, n=1), set()),
        (sub("a", T1, n=2), set()),
        (sub("b", T1), {("a", NEW, 1), ("b", NEW, 1)}),
        (wd("a", 2), {("a", SHRUNK, 2), ("b", SHRUNK, 2)}),
    ]),
    ("withdrawing refs not held tells nobody", 2, [
        (sub("a", T1), set()),
        (wd("a", 7), set()),
    ]),
    ("expiry closes a group that falls below min", 2, [
        (sub("a", T1, expires=NOW + timedelta(days=1)), set()),
        (sub("b", T1), {("a", NEW, 1), ("b", NEW, 1)}),
        (exp(NOW + timedelta(days=2)), {("a", CLOSED, 2), ("b", CLOSED, 2)}),
    ]),
    ("an expired entry does not count towards a new group", 2, [
        (sub("a", T1, expires=NOW + timedelta(days=1)), set()),
        (sub("b", T1, at=NOW + timedelta(days=2)), set()),
    ]),
    ("an expired entry found on submit shrinks the group", 2, [
        (sub("a", T1), set()),
        (sub("b", T1), {("a", NEW, 1), ("b", NEW, 1)}),
        (sub("c", T1, expires=NOW + timedelta(days=1)),
         {("a", GROWN, 2), ("b", GROWN, 2), ("c", NEW, 2)}),
        (sub("d", T1, at=NOW + timedelta(days=2)),
         {("a", GROWN, 3), ("b", GROWN, 3), ("d", NEW, 3), ("c", CLOSED, 3)}),
    ]),
    ("an expired entry submitted again joins anew", 2, [
        (sub("a", T1, expires=NOW + timedelta(days=1)), set()),
        (sub("b", T1), {("a", NEW, 1), ("b", NEW, 1)}),
        (sub("a", T1, at=NOW + timedelta(days=2)), {("a", GROWN, 2), ("b", GROWN, 2)}),
    ]),
    ("an expired entry submitted again can form a group", 2, [
        (sub("a", T1, expires=NOW + timedelta(days=1)), set()),
        (sub("b", T1, at=NOW + timedelta(days=2)), set()),
        (sub("a", T1, at=NOW + timedelta(days=2)), {("a", NEW, 1), ("b", NEW, 1)}),
    ]),
    ("a closed group re-forms under a new revision 1", 2, [
        (sub("a", T1), set()),
        (sub("b", T1), {("a", NEW, 1), ("b", NEW, 1)}),
        (wd("b", 1), {("a", CLOSED, 2), ("b", CLOSED, 2)}),
        (sub("b", T1, n=2), {("a", NEW, 1), ("b", NEW, 1)}),
    ]),
    ("removing a party shrinks or closes its groups", 2, [
        (sub("a", T1, T2), set()),
        (sub("b", T1), {("a", NEW, 1), ("b", NEW, 1)}),
        (sub("c", T1, T2),
         {("a", GROWN, 2), ("b", GROWN, 2), ("c", NEW, 2), ("a", NEW, 1), ("c", NEW, 1)}),
        (rm("c"),
         {("a", SHRUNK, 3), ("b", SHRUNK, 3), ("c", CLOSED, 3),
          ("a", CLOSED, 2), ("c", CLOSED, 2)}),
    ]),
    ("one batch touching two tokens", 2, [
        (sub("a", T1, T2), set()),
        (sub("b", T1, T2, T3), [("a", NEW, 1), ("b", NEW, 1), ("a", NEW, 1), ("b", NEW, 1)]),
    ]),
]  # fmt: skip


def run_step(index: Index, step, min_parties: int):
    action, party, payload, at = step
    if action == "submit":
        return index.submit(party, payload, min_parties=min_parties, now=at).change
    if action == "withdraw":
        return index.withdraw(party, payload, min_parties=min_parties, now=at).change
    if action == "expire":
        return index.expire(min_parties=min_parties, now=at)
    return index.remove(party, min_parties=min_parties, now=at)


@pytest.mark.parametrize(
    ("min_parties", "steps"), [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS]
)
def test_scenario(min_parties, steps):
    index = Index()
    for number, (step, expected) in enumerate(steps):
        change = run_step(index, step, min_parties)
        got = sorted((n.recipient, n.kind, n.revision) for n in change.notices)
        assert got == sorted(expected), f"step {number}: {step[:2]}"
        # Exactly one picture reporter per group revision that was told anything.
        per_revision: dict[tuple[bytes, int], list[bool]] = {}
        for n in change.notices:
            per_revision.setdefault((n.group_id, n.revision), []).append(n.picture_reporter)
        assert all(flags.count(True) == 1 for flags in per_revision.values())


def test_group_ids_and_times_come_from_the_caller():
    index = Index()
    t1 = NOW + timedelta(minutes=5)
    t2 = NOW + timedelta(minutes=9)
    index.submit("a", [(T1, ref("a"), LATER)], min_parties=2, now=NOW)
    formed = index.submit("b", [(T1, ref("b"), LATER)], min_parties=2, now=t1).change
    grown = index.submit("c", [(T1, ref("c"), LATER)], min_parties=2, now=t2).change
    (group,) = formed.groups
    assert group == Group((1).to_bytes(16, "big"), T1, 1, t1, t1, open=True)
    (regrown,) = grown.groups
    assert regrown == replace(group, revision=2, last_seen=t2)
    assert {n.first_seen for n in grown.notices} == {t1}
    assert {n.last_seen for n in grown.notices} == {t2}


def test_notices_show_own_refs_and_the_other_members():
    index = Index()
    index.submit("gemeente", [(T1, ref("gemeente", 1), LATER)], min_parties=2)
    index.submit("gemeente", [(T1, ref("gemeente", 2), LATER)], min_parties=2)
    entries = [Entry("politie", T1, ref("politie"), 1, LATER, b"sealed-category")]
    batch = matching.parse_batch("politie", 1, entries)
    result = matching.submit(
        batch,
        index.states({T1}),
        min_parties=2,
        now=NOW,
        new_group_id=index.new_group_id,
        visibility=matching.members_see_all({"politie": "politie", "gemeente": "gemeente"}),
    )
    by_recipient = {n.recipient: n for n in result.change.notices}
    gemeente = by_recipient["gemeente"]
    assert gemeente.own_refs == (ref("gemeente", 1), ref("gemeente", 2))
    assert gemeente.view.party_count == 2
    assert gemeente.view.members == (
        MemberView("politie", "politie", (ref("politie"),), (b"sealed-category",)),
    )
    politie = by_recipient["politie"]
    assert politie.own_refs == (ref("politie"),)
    assert politie.view.members == (
        MemberView("gemeente", "gemeente", (ref("gemeente", 1), ref("gemeente", 2)), ()),
    )
    # The lexicographically smallest member reports the group in the regional picture.
    assert gemeente.picture_reporter
    assert not politie.picture_reporter


def test_closed_notices_carry_own_refs_and_nothing_about_others():
    index = Index()
    index.submit("a", [(T1, ref("a"), LATER)], min_parties=2)
    index.submit("b", [(T1, ref("b"), LATER)], min_parties=2)
    change = index.withdraw("b", [ref("b")], min_parties=2).change
    by_recipient = {n.recipient: n for n in change.notices}
    assert by_recipient["b"].own_refs == (ref("b"),)
    assert by_recipient["a"].own_refs == (ref("a"),)
    assert all(n.view.members == () and n.view.party_count is None for n in change.notices)
    assert [g.open for g in change.groups] == [False]


def test_visibility_is_a_parameter():
    """A rule in the covenant's style: police are hidden from municipalities, who
    see no count; a party the rule gives nothing gets no notice at all."""

    def rule(recipient: str, members: tuple[Member, ...]) -> View | None:
        if recipient == "woningcorporatie":
            return None
        hidden = {"politie"} if recipient.startswith("gemeente") else set()
        shown = tuple(
            MemberView(m.party, None, m.signal_refs, ())
            for m in members
            if m.party != recipient and m.party not in hidden
        )
        visibility = Visibility(party_count=not hidden, roles=False, categories=False)
        return View(visibility, shown, None if hidden else len(members))

    index = Index()
    for party in ("gemeente", "politie", "woningcorporatie"):
        change = index.submit(party, [(T1, ref(party), LATER)], min_parties=2, visibility=rule)
    notices = {n.recipient: n for n in change.change.notices}
    assert set(notices) == {"gemeente", "politie"}
    assert [m.party for m in notices["gemeente"].view.members] == ["woningcorporatie"]
    assert notices["gemeente"].view.party_count is None
    assert [m.party for m in notices["politie"].view.members] == ["gemeente", "woningcorporatie"]
    assert notices["politie"].view.party_count == 3


def test_a_member_first_shown_on_a_change_gets_new():
    """A member the rule hid before and shows now is told NEW, not GROWN."""
    seen_by_c = {"count": 0}

    def rule(recipient: str, members: tuple[Member, ...]) -> View | None:
        if recipient == "c" and len(members) < 3:
            seen_by_c["count"] += 1
            return None
        return matching.members_see_all()(recipient, members)

    index = Index()
    index.submit("a", [(T1, ref("a"), LATER)], min_parties=2, visibility=rule)
    index.submit("c", [(T1, ref("c"), LATER)], min_parties=2, visibility=rule)
    change = index.submit("b", [(T1, ref("b"), LATER)], min_parties=2, visibility=rule).change
    kinds = {n.recipient: n.kind for n in change.notices}
    assert kinds == {"a": GROWN, "b": NEW, "c": NEW}


def test_submission_counts_stored_and_unchanged_and_collapses_duplicates():
    index = Index()
    first = index.submit(
        "a",
        [(T1, ref("a", 1), LATER), (T1, ref("a", 1), LATER), (T2, ref("a", 2), LATER)],
        min_parties=2,
    )
    assert (first.stored, first.unchanged) == (2, 0)
    again = index.submit(
        "a",
        [(T1, ref("a", 1), LATER + timedelta(days=1)), (T3, ref("a", 3), LATER)],
        min_parties=2,
    )
    assert (again.stored, again.unchanged) == (1, 1)
    assert [e.expires_at for e in again.change.updated] == [LATER + timedelta(days=1)]
    assert len(index.entries) == 3


def test_withdrawal_counts_withdrawn_and_unknown():
    index = Index()
    index.submit("a", [(T1, ref("a", 1), LATER), (T2, ref("a", 1), LATER)], min_parties=2)
    result = index.withdraw("a", [ref("a", 1), ref("a", 2)], min_parties=2)
    assert (result.withdrawn, result.unknown) == (1, 1)
    assert len(result.change.deleted) == 2
    assert index.entries == {}


def test_other_parties_refs_are_not_withdrawn():
    index = Index()
    shared = ref("x")
    index.submit("a", [(T1, shared, LATER)], min_parties=2)
    index.submit("b", [(T1, shared, LATER)], min_parties=2)
    result = index.withdraw("a", [shared], min_parties=2)
    assert [e.party for e in result.change.deleted] == ["a"]
    assert [e.party for e in index.entries.values()] == ["b"]


def test_digest_ignores_order_and_duplicates_but_not_content():
    a = Entry("a", T1, ref("a", 1), 1, LATER)
    b = Entry("a", T2, ref("a", 2), 1, LATER, b"box")
    digest = matching.parse_batch("a", 1, [a, b]).digest
    assert matching.parse_batch("a", 1, [b, a, b]).digest == digest
    assert matching.parse_batch("a", 2, [a, b]).digest != digest
    assert matching.parse_batch("a", 1, [a, replace(b, sealed_attributes=None)]).digest != digest
    later = replace(b, expires_at=LATER + timedelta(seconds=1))
    assert matching.parse_batch("a", 1, [a, later]).digest != digest
    # The same moment in another zone is the same content.
    cet = replace(a, expires_at=LATER.astimezone(timezone_cet()))
    assert matching.parse_batch("a", 1, [cet, b]).digest == digest
    assert matching.parse_withdrawal("a", [ref("a")]).digest != digest


def timezone_cet():
    from datetime import timezone

    return timezone(timedelta(hours=1))


GOOD = Entry("a", T1, ref("a"), 1, LATER, b"box")

TOO_MANY = common_pb2.LIMITS_MAX_TOKENS_PER_BATCH + 1
NAIVE = LATER.replace(tzinfo=None)

INVALID_BATCHES = [
    ("short token", [replace(GOOD, token=b"x" * 31)], InvalidInput, "entries[0].token"),
    ("long ref", [GOOD, replace(GOOD, signal_ref=b"x" * 17)], InvalidInput,
     "entries[1].signal_ref"),
    ("naive expiry", [replace(GOOD, expires_at=NAIVE)], InvalidInput, "entries[0].expires_at"),
    ("another party's entry", [replace(GOOD, party="b")], InvalidInput, "entries[0]"),
    ("empty sealed box", [replace(GOOD, sealed_attributes=b"")], InvalidInput,
     "entries[0].sealed_attributes"),
    ("empty batch", [], InvalidInput, "entries"),
    ("oversized batch", [GOOD] * TOO_MANY, MessageTooLarge, "entries"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("entries", "error", "field_name"),
    [case[1:] for case in INVALID_BATCHES],
    ids=[case[0] for case in INVALID_BATCHES],
)
def test_invalid_batches_name_the_field(entries, error, field_name):
    with pytest.raises(error) as raised:
        matching.parse_batch("a", 1, entries)
    assert raised.value.field == field_name


def test_a_full_batch_is_accepted():
    entries = [
        replace(GOOD, token=i.to_bytes(32, "big"))
        for i in range(common_pb2.LIMITS_MAX_TOKENS_PER_BATCH)
    ]
    assert len(matching.parse_batch("a", 1, entries).entries) == len(entries)


@pytest.mark.parametrize(
    ("party", "key_epoch", "field_name"),
    [("", 1, "party"), ("x" * 65, 1, "party"), ("a", 0, "key_epoch"), ("a", 2**32, "key_epoch")],
)
def test_invalid_batch_headers_name_the_field(party, key_epoch, field_name):
    with pytest.raises(InvalidInput) as raised:
        matching.parse_batch(party, key_epoch, [replace(GOOD, party=party)])
    assert raised.value.field == field_name


@pytest.mark.parametrize("expires_at", [NOW, NOW - timedelta(seconds=1)])
def test_entries_must_expire_in_the_future_named_by_request_position(expires_at):
    entries = [GOOD, replace(GOOD, token=T2, expires_at=expires_at)]
    batch = matching.parse_batch("a", 1, entries)
    with pytest.raises(InvalidInput) as raised:
        matching.submit(batch, [], min_parties=2, now=NOW, new_group_id=lambda: b"g" * 16)
    assert raised.value.field == "entries[1].expires_at"


@pytest.mark.parametrize(
    ("refs", "error", "field_name"),
    [
        ([], InvalidInput, "signal_refs"),
        ([ref("a"), b"short"], InvalidInput, "signal_refs[1]"),
        ([ref("a")] * (common_pb2.LIMITS_MAX_REFS_PER_WITHDRAWAL + 1), MessageTooLarge,
         "signal_refs"),
    ],
)  # fmt: skip
def test_invalid_withdrawals_name_the_field(refs, error, field_name):
    with pytest.raises(error) as raised:
        matching.parse_withdrawal("a", refs)
    assert raised.value.field == field_name


def test_min_parties_below_two_is_a_configuration_error():
    batch = matching.parse_batch("a", 1, [GOOD])
    with pytest.raises(ConfigurationError):
        matching.submit(batch, [], min_parties=1, now=NOW, new_group_id=lambda: b"g" * 16)


def test_token_state_holds_only_its_own_token_and_open_group():
    with pytest.raises(ValueError, match="own token"):
        TokenState(T1, (replace(GOOD, token=T2),))
    closed = Group(b"g" * 16, T1, 2, NOW, NOW, open=False)
    with pytest.raises(ValueError, match="open group"):
        TokenState(T1, (), closed)


def test_notice_kinds_are_the_wire_numbers():
    for kind in NoticeKind:
        assert broker_pb2.HitNoticeKind.Value(f"HIT_NOTICE_KIND_{kind.name}") == kind.value


def test_matching_and_mailbox_import_neither_grpc_nor_a_database():
    code = (
        "import sys\n"
        "import samenloop.broker.matching, samenloop.broker.mailbox\n"
        "print(','.join(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('grpc', 'sqlalchemy', 'alembic', 'psycopg'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


# --- limits, expiry cap and quotas (issue 12) -------------------------------------------

MAX_BOX = common_pb2.LIMITS_MAX_SEALED_ATTRIBUTES_BYTES
MAX_REFS = common_pb2.LIMITS_MAX_REFS_PER_TOKEN
MAX_BOXES = common_pb2.LIMITS_MAX_SEALED_ATTRIBUTES_PER_NOTICE
SKEW = timedelta(seconds=common_pb2.LIMITS_MAX_CLOCK_SKEW_SECONDS)
RULES = matching.SubmissionRules(
    longest_retention_days=365, entries_per_day=10_000, entries_held=20_000
)


def numbered_ref(n: int) -> bytes:
    return n.to_bytes(16, "big")


@pytest.mark.parametrize(("size", "refused"), [(1, False), (MAX_BOX, False), (MAX_BOX + 1, True)])
def test_a_sealed_box_is_at_most_the_limit_named_by_its_entry(size, refused):
    entries = [GOOD, replace(GOOD, token=T2, sealed_attributes=b"x" * size)]
    if not refused:
        assert matching.parse_batch("a", 1, entries).entries[1].sealed_attributes == b"x" * size
        return
    with pytest.raises(MessageTooLarge) as raised:
        matching.parse_batch("a", 1, entries)
    assert raised.value.field == "entries[1].sealed_attributes"


def test_the_largest_real_sealed_box_is_well_under_the_limit():
    from samenloop.policies import covenant as covenant_model

    key = covenant_model.new_attribute_key("c", 1)
    category = "x" * common_pb2.LIMITS_MAX_PARTY_ID_BYTES
    nonce, ciphertext = covenant_model.seal_attributes(
        key, common_pb2.MemberAttributes(category=category).SerializeToString()
    )
    box = common_pb2.SecretBox(key_version=2**32 - 1, nonce=nonce, ciphertext=ciphertext)
    assert box.ByteSize() == 146 < MAX_BOX


def submit_refs(index: Index, party: str, token: bytes, refs: list[int]):
    entries = [Entry(party, token, numbered_ref(n), 1, LATER) for n in refs]
    batch = matching.parse_batch(party, 1, entries)
    result = matching.submit(
        batch,
        index.states({token}),
        min_parties=2,
        now=NOW,
        new_group_id=index.new_group_id,
    )
    index.apply(result.change)
    return result


def test_a_batch_holds_at_most_the_refs_per_token_of_one_party():
    index = Index()
    submit_refs(index, "a", T1, list(range(MAX_REFS)))  # exactly the limit, in one batch
    with pytest.raises(MessageTooLarge) as raised:
        submit_refs(Index(), "a", T1, list(range(MAX_REFS + 1)))
    assert raised.value.field == f"entries[{MAX_REFS}].signal_ref"
    assert raised.value.reason == "token.too_many_refs"


def test_refs_already_held_count_towards_the_limit_and_resubmissions_do_not():
    index = Index()
    submit_refs(index, "a", T1, list(range(MAX_REFS - 2)))
    submit_refs(index, "b", T1, list(range(MAX_REFS)))  # another party's refs do not count
    # Two held refs again and two new ones: the fourth entry is the one too many.
    with pytest.raises(MessageTooLarge) as raised:
        submit_refs(index, "a", T1, [0, MAX_REFS - 2, 1, MAX_REFS - 1, MAX_REFS])
    assert raised.value.field == "entries[4].signal_ref"
    result = submit_refs(index, "a", T1, [0, 1, MAX_REFS - 2, MAX_REFS - 1])
    assert (result.stored, result.unchanged) == (2, 2)


def test_expired_refs_do_not_count_towards_the_limit():
    index = Index()
    soon = NOW + timedelta(minutes=1)
    entries = [Entry("a", T1, numbered_ref(n), 1, soon) for n in range(MAX_REFS)]
    index.apply(
        matching.submit(
            matching.parse_batch("a", 1, entries),
            [],
            min_parties=2,
            now=NOW,
            new_group_id=index.new_group_id,
        ).change
    )
    later = Entry("a", T1, numbered_ref(1000), 1, LATER)
    result = matching.submit(
        matching.parse_batch("a", 1, [later]),
        index.states({T1}),
        min_parties=2,
        now=soon,
        new_group_id=index.new_group_id,
    )
    assert result.stored == 1
    assert len(result.change.deleted) == MAX_REFS


@pytest.mark.parametrize(
    ("ahead", "refused"),
    [
        (timedelta(days=365) + SKEW, False),
        (timedelta(days=365) + SKEW + timedelta(microseconds=1), True),
        (timedelta(days=36_500), True),
    ],
)
def test_an_expiry_beyond_the_longest_retention_is_refused(ahead, refused):
    entries = [GOOD, replace(GOOD, token=T2, expires_at=NOW + ahead)]
    batch = matching.parse_batch("a", 1, entries)

    def run(rules):
        return matching.submit(
            batch, [], min_parties=2, now=NOW, new_group_id=lambda: b"g" * 16, rules=rules
        )

    assert run(None).stored == 2  # without the covenant's rules there is no cap
    if not refused:
        assert run(RULES).stored == 2
        return
    with pytest.raises(InvalidInput) as raised:
        run(RULES)
    assert raised.value.field == "entries[1].expires_at"
    assert raised.value.reason == "retention.exceeded"
    assert raised.value.message == (
        "expires_at lies beyond the covenant's longest retention (365 days from now)"
    )


def test_submission_rules_take_the_longest_retention_of_any_category_and_version():
    from types import SimpleNamespace

    from samenloop.policies.policy import Quotas, Retention, example_policy

    policy = replace(
        example_policy(),
        retention=Retention(default_days=30, categories=(("vastgoedmisbruik", 900),)),
        quotas=Quotas(
            1,
            0,
            token_entries_per_day=12_345,
            token_entries_held=67_890,
            hit_notice_bytes_per_day=3 * 2**20,
        ),
    )
    covenant = SimpleNamespace(policy=policy)  # all that the rules read of a covenant
    rules = matching.SubmissionRules.of(covenant)
    assert rules == matching.SubmissionRules(900, 12_345, 67_890, 3 * 2**20)
    assert rules.longest_lifetime == timedelta(days=900) + SKEW
    held = matching.SubmissionRules.of(covenant, held_retention_days=1000)
    assert held.longest_retention_days == 1000


DAY = matching.utc_day(NOW)
CHARGES = [
    # (usage before, submitted, added, at) -> usage after, or the reason refused
    ((DAY, 0, 0), 10_000, 10_000, NOW, (DAY, 10_000, 10_000)),
    ((DAY, 4_000, 100), 6_000, 6_000, NOW, (DAY, 10_000, 6_100)),
    ((DAY, 4_001, 100), 6_000, 6_000, NOW, "quota.token_entries_per_day"),
    ((DAY - 1, 10_000, 100), 10_000, 10_000, NOW, (DAY, 10_000, 10_100)),  # a new day
    ((DAY + 1, 9_000, 100), 2_000, 0, NOW, "quota.token_entries_per_day"),  # clock back
    ((DAY, 0, 19_999), 2, 1, NOW, (DAY, 2, 20_000)),
    ((DAY, 0, 19_999), 2, 2, NOW, "quota.token_entries_held"),
    ((DAY, 0, 25_000), 5, 0, NOW, (DAY, 5, 25_000)),  # holds no more: never refused for it
    ((DAY, 0, 25_000), 5, -3, NOW, (DAY, 5, 24_997)),
]


@pytest.mark.parametrize(
    ("before", "submitted", "added", "at", "expected"), CHARGES, ids=[str(c) for c in CHARGES]
)
def test_quotas_count_a_day_s_entries_and_the_entries_held(before, submitted, added, at, expected):
    usage = matching.Usage(*before)
    if isinstance(expected, str):
        with pytest.raises(QuotaExceeded) as raised:
            matching.charge(usage, submitted=submitted, added=added, rules=RULES, now=at)
        assert (raised.value.field, raised.value.reason) == ("entries", expected)
    else:
        after = matching.charge(usage, submitted=submitted, added=added, rules=RULES, now=at)
        assert after == matching.Usage(*expected)


def test_the_utc_day_turns_at_midnight_utc():
    from datetime import timezone

    amsterdam = timezone(timedelta(hours=1))
    assert matching.utc_day(datetime(1970, 1, 2, 0, 30, tzinfo=amsterdam)) == 0
    assert matching.utc_day(datetime(1970, 1, 2, 1, 0, tzinfo=amsterdam)) == 1


def test_held_deltas_count_inserts_less_deletes_per_party():
    a1 = Entry("a", T1, ref("a"), 1, LATER)
    a2 = replace(a1, token=T2)
    b1 = Entry("b", T1, ref("b"), 1, LATER)
    change = Change(inserted=(a1, a2), updated=(b1,), deleted=(b1, replace(a1, token=T3)))
    assert matching.held_deltas(change) == {"a": 1, "b": -1}
    assert matching.held_deltas(Change(inserted=(a1,), deleted=(a1,))) == {}
    submitted = Change(inserted=(a1, a2), deleted=(b1,))
    assert matching.held_deltas(submitted, submitter="a") == {"a": 2, "b": -1}


def boxes_group(members: int, boxes_each: int) -> tuple[Index, list[str]]:
    """A group on T1 of ``members`` parties, each with ``boxes_each`` boxed refs."""
    index = Index()
    parties = [f"p{i:03d}" for i in range(members)]
    for party in parties:
        entries = [
            Entry(party, T1, numbered_ref(n), 1, LATER, bytes([n % 256]) * 8)
            for n in range(boxes_each)
        ]
        index.apply(
            matching.submit(
                matching.parse_batch(party, 1, entries),
                index.states({T1}),
                min_parties=2,
                now=NOW,
                new_group_id=index.new_group_id,
            ).change
        )
    return index, parties


def test_a_notice_carries_at_most_the_boxes_limit_each_member_an_equal_share():
    index, parties = boxes_group(40, MAX_REFS)  # 40 x 64 boxes: more than the limit
    late = Entry("late", T1, numbered_ref(1), 1, LATER, b"late-box")
    result = matching.submit(
        matching.parse_batch("late", 1, [late]),
        index.states({T1}),
        min_parties=2,
        now=NOW,
        new_group_id=index.new_group_id,
    )
    notice = next(n for n in result.change.notices if n.recipient == "late")
    counts = [len(m.sealed_attributes) for m in notice.view.members]
    assert sum(counts) == MAX_BOXES
    assert max(counts) - min(counts) <= 1  # fair shares
    # Each member keeps its first boxes, in order; its refs are all still listed.
    for member in notice.view.members:
        assert member.sealed_attributes == tuple(
            bytes([n]) * 8 for n in range(len(member.sealed_attributes))
        )
        assert len(member.signal_refs) == MAX_REFS
    # Another member sees the newcomer's box among its share.
    other = next(n for n in result.change.notices if n.recipient == parties[0])
    assert sum(len(m.sealed_attributes) for m in other.view.members) == MAX_BOXES
    assert b"late-box" in {b for m in other.view.members for b in m.sealed_attributes}


def test_a_notice_within_the_boxes_limit_is_left_as_it_is():
    index, _ = boxes_group(3, 5)
    late = Entry("late", T1, numbered_ref(1), 1, LATER, b"late-box")
    result = matching.submit(
        matching.parse_batch("late", 1, [late]),
        index.states({T1}),
        min_parties=2,
        now=NOW,
        new_group_id=index.new_group_id,
    )
    notice = next(n for n in result.change.notices if n.recipient == "late")
    assert [len(m.sealed_attributes) for m in notice.view.members] == [5, 5, 5]


# --- every check's message, the digests' exact form, counts and the clock ---------------------

BATCH_MESSAGES = [
    ("x" * 65, 1, [GOOD], "party", "party id must be 1..64 bytes"),
    ("a", 2**32, [GOOD], "key_epoch", "key epoch must be 1..2^32-1"),
    ("a", 1, [], "entries", "a batch needs at least one entry"),
    ("a", 1, [GOOD] * TOO_MANY, "entries", f"at most {TOO_MANY - 1} entries per batch, got "
     f"{TOO_MANY}"),
    ("a", 1, [replace(GOOD, party="b")], "entries[0]", "entry names another party"),
    ("a", 1, [replace(GOOD, token=b"x" * 31)], "entries[0].token", "token must be 32 bytes"),
    ("a", 1, [replace(GOOD, signal_ref=b"x" * 15)], "entries[0].signal_ref",
     "signal ref must be 16 bytes"),
    ("a", 1, [replace(GOOD, expires_at=NAIVE)], "entries[0].expires_at",
     "time must carry a time zone"),
    ("a", 1, [replace(GOOD, sealed_attributes=b"")], "entries[0].sealed_attributes",
     "sealed attributes, when given, must not be empty"),
]  # fmt: skip


@pytest.mark.parametrize(("party", "epoch", "entries", "field_name", "message"), BATCH_MESSAGES)
def test_batch_refusals_say_why(party, epoch, entries, field_name, message):
    with pytest.raises((InvalidInput, MessageTooLarge)) as raised:
        matching.parse_batch(party, epoch, entries if party == "a" else [GOOD])
    assert (raised.value.field, raised.value.message) == (field_name, message)


class _NoOffset(tzinfo):
    """A time zone that knows no offset: as good as none."""

    def utcoffset(self, dt):
        return None


def test_batches_keep_their_party_epoch_and_times_in_utc():
    longest = "p" * 64
    batch = matching.parse_batch(longest, 2**32 - 1, [replace(GOOD, party=longest, key_epoch=7)])
    assert (batch.party, batch.key_epoch) == (longest, 2**32 - 1)
    (entry,) = batch.entries
    assert (entry.party, entry.key_epoch, entry.sealed_attributes) == (longest, 2**32 - 1, b"box")
    cet = matching.parse_batch("a", 1, [replace(GOOD, expires_at=LATER.astimezone(timezone_cet()))])
    assert cet.entries[0].expires_at == LATER
    assert cet.entries[0].expires_at.tzinfo is UTC
    assert matching.parse_batch("a", 1, [GOOD]).entries[0] is GOOD  # nothing to change
    with pytest.raises(InvalidInput) as raised:
        matching.parse_batch("a", 1, [replace(GOOD, expires_at=LATER.replace(tzinfo=_NoOffset()))])
    assert raised.value.field == "entries[0].expires_at"


def test_a_batch_keeps_the_last_of_duplicates_in_request_order():
    first, other = replace(GOOD, sealed_attributes=b"old"), replace(GOOD, token=T2)
    batch = matching.parse_batch("a", 1, [first, other, GOOD])
    assert batch.positions == (1, 2)
    assert batch.entries == (other, GOOD)
    assert matching.parse_batch("a", 1, [other, GOOD]).positions == (0, 1)


def _expected_submit_digest(key_epoch, entries):
    """The digest as the protocol defines it, computed here independently."""
    parts = [b"samenloop/v1 submit-tokens", key_epoch.to_bytes(4, "big")]
    for e in sorted(entries, key=lambda e: (e.signal_ref, e.token)):
        micros = (e.expires_at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        parts += [e.token, e.signal_ref, micros.to_bytes(8, "big", signed=True)]
        if e.sealed_attributes is None:
            parts.append(b"\x00")
        else:
            parts += [b"\x01", len(e.sealed_attributes).to_bytes(4, "big"), e.sealed_attributes]
    return hashlib.sha256(b"".join(parts)).digest()


def test_the_digests_have_their_exact_form():
    odd = LATER + timedelta(days=3, seconds=7, microseconds=123_456)
    entries = [
        GOOD,
        Entry("a", T2, ref("a", 2), 2**31 + 5, odd, b"sealed box"),
        Entry("a", T3, ref("a", 0), 2**31 + 5, odd, None),
    ]
    batch = matching.parse_batch("a", 2**31 + 5, entries)
    normalised = [replace(e, key_epoch=2**31 + 5) for e in entries]
    assert batch.digest == _expected_submit_digest(2**31 + 5, normalised)
    refs = [ref("a", 3), ref("a", 1), ref("a", 3)]
    withdrawal = matching.parse_withdrawal("a", refs)
    assert withdrawal.signal_refs == (ref("a", 1), ref("a", 3))
    assert (
        withdrawal.digest
        == hashlib.sha256(b"samenloop/v1 withdraw-tokens" + ref("a", 1) + ref("a", 3)).digest()
    )


def test_withdrawal_refusals_say_why_and_the_limit_is_allowed():
    most = common_pb2.LIMITS_MAX_REFS_PER_WITHDRAWAL
    refs = [bytes([i % 256, i // 256]) * 8 for i in range(most)]
    assert len(matching.parse_withdrawal("a", refs).signal_refs) == most
    for refs, field_name, message in [
        ([], "signal_refs", "a withdrawal needs at least one signal ref"),
        ([ref("a")] * (most + 1), "signal_refs",
         f"at most {most} signal refs per withdrawal, got {most + 1}"),
        ([ref("a"), b"short"], "signal_refs[1]", "signal ref must be 16 bytes"),
    ]:  # fmt: skip
        with pytest.raises((InvalidInput, MessageTooLarge)) as raised:
            matching.parse_withdrawal("a", refs)
        assert (raised.value.field, raised.value.message) == (field_name, message)


def test_operations_need_two_parties_and_a_time_zone():
    batch = matching.parse_batch("a", 1, [GOOD])
    with pytest.raises(ConfigurationError) as raised:
        matching.submit(batch, [], min_parties=1, now=NOW, new_group_id=lambda: b"g" * 16)
    assert (raised.value.field, raised.value.message) == (
        "min_parties",
        "a hit needs at least two parties",
    )
    for now in (NOW.replace(tzinfo=None), NOW.replace(tzinfo=_NoOffset())):
        with pytest.raises(ValueError, match=r"^now must carry a time zone$"):
            matching.expire([], min_parties=2, now=now)
    with pytest.raises(InvalidInput) as raised:
        matching.submit(batch, [], min_parties=2, now=LATER, new_group_id=lambda: b"g" * 16)
    assert raised.value.message == "expires_at must lie in the future"


def test_times_are_kept_in_utc_and_move_forward():
    index = Index()
    index.submit("a", [(T1, ref("a"), LATER)], min_parties=2)
    formed = index.submit(
        "b", [(T1, ref("b"), LATER)], min_parties=2, now=NOW.astimezone(timezone_cet())
    )
    (group,) = formed.change.groups
    assert group.first_seen.tzinfo is UTC
    # The clock steps back: the group's last-seen still moves on, by a microsecond.
    grown = index.submit("c", [(T1, ref("c"), LATER)], min_parties=2, now=NOW - timedelta(hours=1))
    assert grown.change.groups[0].last_seen == NOW + timedelta(microseconds=1)
    assert grown.change.notices[0].view.visibility == matching.SEE_ALL


def test_counts_of_resubmitted_expired_and_withdrawn_entries():
    index = Index()
    soon = NOW + timedelta(days=1)
    index.submit("a", [(T1, ref("a", 1), soon), (T1, ref("a", 2), soon)], min_parties=2)
    # Both expired but not yet dropped: submitted again, they count as stored anew.
    both = [(T1, ref("a", 1), LATER), (T1, ref("a", 2), LATER)]
    again = index.submit("a", both, min_parties=2, now=soon)
    assert (again.stored, again.unchanged) == (2, 0)
    same = index.submit("a", both, min_parties=2, now=soon)
    assert (same.stored, same.unchanged) == (0, 2)
    gone = index.withdraw("a", [ref("a", 1), ref("a", 2)], min_parties=2, now=soon)
    assert (gone.withdrawn, gone.unknown) == (2, 0)


def test_an_entry_expiring_now_is_no_longer_live():
    index = Index()
    index.submit("a", [(T1, ref("a"), LATER)], min_parties=2)
    index.submit("b", [(T1, ref("b"), NOW + timedelta(days=1))], min_parties=2)
    index.submit("c", [(T2, ref("c"), LATER)], min_parties=2)
    change = index.expire(min_parties=2, now=NOW + timedelta(days=1))
    assert [e.party for e in change.deleted] == ["b"]  # the others stay
    assert {n.recipient: n.kind for n in change.notices} == {"a": CLOSED, "b": CLOSED}
    # A withdrawal drops the party's expired entries on the tokens it touches, too.
    index.submit("d", [(T2, ref("d"), NOW + timedelta(days=2))], min_parties=2)
    index.submit("c", [(T3, ref("c", 2), LATER)], min_parties=2)
    withdrawn = index.withdraw("c", [ref("c", 2)], min_parties=2, now=NOW + timedelta(days=3))
    assert [e.party for e in withdrawn.change.deleted] == ["c"]


def test_token_state_messages():
    with pytest.raises(ValueError, match=r"^a token state holds only entries of its own token$"):
        TokenState(T1, (replace(GOOD, token=T2),))
    with pytest.raises(ValueError, match=r"^a token state's group must be the token's open group$"):
        TokenState(T1, (), Group(b"g" * 16, T2, 1, NOW, NOW))


def test_a_batch_on_tokens_nothing_is_held_on_counts_its_refs_too():
    """The store passes no state for a token it holds nothing on: the refs a batch puts
    on such a token are counted all the same."""

    def batch(refs_by_token):
        entries = [
            Entry("a", token, numbered_ref(n), 1, LATER)
            for token, refs in refs_by_token.items()
            for n in refs
        ]
        return matching.parse_batch("a", 1, entries)

    fine = batch({T1: range(MAX_REFS), T2: range(MAX_REFS), T3: [0]})
    result = matching.submit(fine, [], min_parties=2, now=NOW, new_group_id=lambda: b"g" * 16)
    assert result.stored == 2 * MAX_REFS + 1
    over = batch({T1: [0], T2: range(MAX_REFS + 1)})
    with pytest.raises(MessageTooLarge) as raised:
        matching.submit(over, [], min_parties=2, now=NOW, new_group_id=lambda: b"g" * 16)
    assert (raised.value.field, raised.value.reason, raised.value.message) == (
        f"entries[{MAX_REFS + 1}].signal_ref",
        "token.too_many_refs",
        f"a party holds at most {MAX_REFS} signal refs on one token",
    )


def test_quota_refusals_say_what_was_counted():
    rules = matching.SubmissionRules(365, entries_per_day=10, entries_held=20)
    today = matching.Usage(matching.utc_day(NOW), 4, 20)
    with pytest.raises(QuotaExceeded) as raised:
        matching.charge(today, submitted=7, added=0, rules=rules, now=NOW)
    assert raised.value.message == (
        "the covenant allows 10 token entries submitted and refs withdrawn per party per UTC"
        " day; 4 were counted today and this batch has 7"
    )
    with pytest.raises(QuotaExceeded) as raised:
        matching.charge(today, submitted=1, added=1, rules=rules, now=NOW)
    assert (raised.value.field, raised.value.reason, raised.value.message) == (
        "entries",
        "quota.token_entries_held",
        "the covenant allows 20 token entries held per party; 20 are held and this batch adds 1",
    )


def test_the_default_rule_shows_everything():
    rule = matching.members_see_all({"a": "gemeente"})
    view = rule("b", (Member("a", (ref("a"),), (b"box",)), Member("b", (ref("b"),), ())))
    assert view == View(matching.SEE_ALL, (MemberView("a", "gemeente", (ref("a"),), (b"box",)),), 2)


def test_a_notice_shares_its_boxes_equally_among_the_members():
    most = matching.MAX_SEALED_ATTRIBUTES_PER_NOTICE

    def view(*counts):
        members = tuple(
            MemberView(f"p{i}", None, (), tuple(b"%d-%d" % (i, j) for j in range(n)))
            for i, n in enumerate(counts)
        )
        return View(matching.SEE_ALL, members, len(members))

    full = view(most - 1, 1)
    assert matching._capped(full) is full
    capped = matching._capped(view(most, 2, most))
    kept = [len(m.sealed_attributes) for m in capped.members]
    assert kept == [(most - 2) // 2 + (most - 2) % 2, 2, (most - 2) // 2]
    assert capped.members[1].sealed_attributes == (b"1-0", b"1-1")
    assert capped.members[0].sealed_attributes[:2] == (b"0-0", b"0-1")  # the first ones kept
    assert (capped.visibility, capped.party_count) == (matching.SEE_ALL, 3)


def test_group_ids_have_their_length_and_a_closing_group_its_last_time():
    index = Index()
    index.submit("a", [(T1, ref("a"), LATER)], min_parties=2)
    batch = matching.parse_batch("b", 1, [Entry("b", T1, ref("b"), 1, LATER)])
    with pytest.raises(ValueError, match=r"^group ids are 16 bytes$"):
        matching.submit(
            batch, index.states({T1}), min_parties=2, now=NOW, new_group_id=lambda: b"g" * 15
        )
    index.submit("b", [(T1, ref("b"), LATER)], min_parties=2)
    later = NOW + timedelta(hours=2)
    closed = index.withdraw("b", [ref("b")], min_parties=2, now=later).change
    (group,) = closed.groups
    assert (group.open, group.revision, group.last_seen) == (False, 2, later)


def test_an_oversized_box_is_refused_saying_its_size():
    big = replace(GOOD, sealed_attributes=b"x" * (MAX_BOX + 1))
    with pytest.raises(MessageTooLarge) as raised:
        matching.parse_batch("a", 1, [GOOD, big])
    assert raised.value.field == "entries[1].sealed_attributes"
    assert raised.value.message == (
        f"sealed attributes are at most {MAX_BOX} bytes, got {MAX_BOX + 1}"
    )


def test_a_removal_never_forms_a_group():
    with pytest.raises(AssertionError, match=r"^a removal cannot form a group$"):
        matching._no_new_groups()


def test_a_party_s_notices_to_others_are_bounded_per_day_but_never_stop_its_first_batch():
    rules = replace(RULES, notice_bytes_per_day=1000)
    day = matching.utc_day(NOW)
    fresh = matching.charge(matching.Usage(), submitted=1, added=1, rules=rules, now=NOW)
    assert fresh.notice_bytes == 0
    first = matching.charge_notices(fresh, 5000, rules=rules)  # the day's first: always
    assert first.notice_bytes == 5000
    with pytest.raises(QuotaExceeded) as refused:
        matching.charge_notices(first, 1, rules=rules, field="signal_refs")
    assert (refused.value.reason, refused.value.field) == (
        "quota.hit_notice_bytes_per_day",
        "signal_refs",
    )
    assert matching.charge_notices(first, 0, rules=rules).notice_bytes == 5000  # none caused
    some = matching.Usage(day, 1, 1, 600)
    assert matching.charge_notices(some, 400, rules=rules).notice_bytes == 1000
    with pytest.raises(QuotaExceeded):
        matching.charge_notices(some, 401, rules=rules)
    # The next UTC day, charge starts the notices afresh.
    tomorrow = matching.charge(
        first, submitted=1, added=0, rules=rules, now=NOW + timedelta(days=1)
    )
    assert (tomorrow.day, tomorrow.notice_bytes) == (day + 1, 0)


def test_the_sweep_charges_each_party_whose_entries_expired_and_never_refuses():
    group = Group(b"g" * 16, T1, 3, NOW, NOW)
    other = Group(b"h" * 16, T2, 3, NOW, NOW)

    def draft(recipient: str, on: Group) -> matching.NoticeDraft:
        return matching.NoticeDraft(recipient, on, SHRUNK, (), View(Visibility(), (), 2), False)

    def gone(party: str, on: bytes) -> Entry:
        return Entry(party, on, ref(party), 1, NOW)

    change = Change(deleted=(gone("a", T1), gone("b", T1), gone("a", T2)), groups=(group, other))
    signed = [
        (draft("a", group), b"x" * 10),
        (draft("b", group), b"x" * 20),
        (draft("c", group), b"x" * 40),
        (draft("c", other), b"x" * 80),
    ]
    assert matching.swept_notice_bytes(change, signed) == {"a": 20 + 40 + 80, "b": 10 + 40}
    spent = matching.Usage(matching.utc_day(NOW), 7, 3, 10**12)
    assert matching.charge_swept(spent, 5, now=NOW).notice_bytes == 10**12 + 5
    assert matching.charge_swept(spent, 5, now=NOW + timedelta(days=1)) == matching.Usage(
        matching.utc_day(NOW) + 1, 0, 3, 5
    )
