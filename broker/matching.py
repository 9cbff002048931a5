"""Incremental matching: a batch of token entries in, hit-group changes and notice drafts out.

A *hit group* exists for a token whose live entries come from at least the
covenant's minimum number of distinct parties (several refs of one party on a
token count once). It has a random id fixed for its life, a revision (1 when
formed, plus one per change), first and last seen, and an open flag. When a
token drops below the minimum its group closes for good; should the token
reach the minimum again, a new group with a new id forms.

Every operation is incremental: it takes only the state of the tokens that the
batch touches (:class:`TokenState`: the token's stored entries and its open
group), so its cost depends on the batch, never on the size of the index. The
store loads those states, calls one of :func:`submit`, :func:`withdraw`,
:func:`expire` or :func:`remove_party`, and writes back the :class:`Change`.
All of them share one rule (``_ChangeBuilder.regroup``) that compares a
token's entries before and after and decides the group's fate and the
notices, one revision per change:

* no group, now at least the minimum, an entry added: the group forms,
  NEW to every member;
* open group, now below the minimum: it closes, CLOSED to every previous member;
* open group, an entry added: NEW to members that joined, GROWN to the
  others, CLOSED to members that left entirely;
* open group, entries removed only: SHRUNK to the remaining members, CLOSED
  to those that left entirely;
* anything else: no notice (entries may still be stored or updated).

An entry whose ``expires_at`` has passed is not live: it does not count, and
whenever its token is touched it is dropped with the same consequences (an
expired entry submitted again joins anew). A member the visibility rule hid
before and shows now is told NEW; one it never showed is not told CLOSED.

Nothing a party submits may grow another party's notices without bound, nor
fill the broker: a sealed attribute box is at most
``LIMITS_MAX_SEALED_ATTRIBUTES_BYTES`` (:func:`parse_batch`); a party holds at
most ``LIMITS_MAX_REFS_PER_TOKEN`` refs on one token (:func:`submit`); a notice
carries at most ``LIMITS_MAX_SEALED_ATTRIBUTES_PER_NOTICE`` boxes, each member
keeping an equal share; with at most ``LIMITS_MAX_PARTIES`` members, every
notice fits well inside one message. An entry expires at most the covenant's
longest retention (plus the clock skew allowed) from now, and a party's
submissions count against its quotas of the covenant (:class:`SubmissionRules`,
:func:`charge`): entries per UTC day and entries held.

What a recipient learns is decided by a :data:`VisibilityRule`; the default,
:func:`members_see_all`, lets every member see everything about the others.
The covenant's visibility rules plug in here. Time (``now``) and group ids
(``new_group_id``) are passed in. This module does no I/O.

Over 800 lines: the matching rules, their limits and the notice drafts are one
transition function, mutation-tested as one core (docs/mutation.md).
"""

from __future__ import annotations

import enum
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Final, NamedTuple

from samenloop.policies import crypto, rules
from samenloop.policies.covenant import Covenant
from samenloop.policies.errors import (
    ConfigurationError,
    InvalidInput,
    MessageTooLarge,
    QuotaExceeded,
)
from samenloop.policies.policy import Level
from samenloop.v1 import common_pb2

TOKEN_BYTES: int = common_pb2.LIMITS_TOKEN_BYTES
REF_BYTES: int = common_pb2.LIMITS_ID_BYTES
GROUP_ID_BYTES: int = common_pb2.LIMITS_ID_BYTES
MAX_ENTRIES_PER_BATCH: int = common_pb2.LIMITS_MAX_TOKENS_PER_BATCH
MAX_REFS_PER_WITHDRAWAL: int = common_pb2.LIMITS_MAX_REFS_PER_WITHDRAWAL
MAX_PARTY_ID_BYTES: int = common_pb2.LIMITS_MAX_PARTY_ID_BYTES
MAX_SEALED_ATTRIBUTES_BYTES: int = common_pb2.LIMITS_MAX_SEALED_ATTRIBUTES_BYTES
MAX_REFS_PER_TOKEN: int = common_pb2.LIMITS_MAX_REFS_PER_TOKEN
MAX_SEALED_ATTRIBUTES_PER_NOTICE: int = common_pb2.LIMITS_MAX_SEALED_ATTRIBUTES_PER_NOTICE
CLOCK_SKEW = timedelta(seconds=common_pb2.LIMITS_MAX_CLOCK_SKEW_SECONDS)
_MAX_KEY_EPOCH = 2**32 - 1

_SUBMIT_DOMAIN = b"samenloop/v1 submit-tokens"
_WITHDRAW_DOMAIN = b"samenloop/v1 withdraw-tokens"


# --- values -------------------------------------------------------------------


class EntryKey(NamedTuple):
    """What makes a token entry itself: its party, signal ref and token."""

    party: str
    signal_ref: bytes
    token: bytes


@dataclass(frozen=True, slots=True)
class Entry:
    """One token entry: a party's token for one signal ref.

    ``sealed_attributes`` is an opaque serialized ``SecretBox`` (the signal's
    category under the covenant's attribute key) that the broker cannot read
    and only copies into notices.
    """

    party: str
    token: bytes
    signal_ref: bytes
    key_epoch: int
    expires_at: datetime
    sealed_attributes: bytes | None = None

    @property
    def key(self) -> EntryKey:
        return EntryKey(self.party, self.signal_ref, self.token)


@dataclass(frozen=True, slots=True)
class Group:
    """A hit group as stored: stable id, revision, and whether it is still open."""

    group_id: bytes
    token: bytes
    revision: int
    first_seen: datetime
    last_seen: datetime
    open: bool = True


@dataclass(frozen=True, slots=True)
class TokenState:
    """What the index holds for one token: all its stored entries and its open group."""

    token: bytes
    entries: tuple[Entry, ...] = ()
    group: Group | None = None

    def __post_init__(self) -> None:
        if self.group is not None and (self.group.token != self.token or not self.group.open):
            raise ValueError("a token state's group must be the token's open group")
        if any(e.token != self.token for e in self.entries):
            raise ValueError("a token state holds only entries of its own token")


class NoticeKind(enum.IntEnum):
    """What a hit notice reports; the numbers are those of ``HitNoticeKind``."""

    NEW = 1
    GROWN = 2
    SHRUNK = 3
    CLOSED = 4
    UPDATED = 5


@dataclass(frozen=True, slots=True)
class Visibility:
    """What one recipient may learn of a hit; mirrors ``HitVisibility``."""

    party_count: bool = True
    roles: bool = True
    parties: bool = True
    categories: bool = True


SEE_ALL = Visibility()


@dataclass(frozen=True, slots=True)
class Member:
    """A member of a group as the broker holds it: a party, its refs and sealed attributes."""

    party: str
    signal_refs: tuple[bytes, ...]
    sealed_attributes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class MemberView:
    """Another member as one recipient may see it; hidden fields are ``None`` or empty."""

    party: str | None
    role: str | None
    signal_refs: tuple[bytes, ...]
    sealed_attributes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class View:
    """What one recipient sees of a group: its visibility, the other members, the count."""

    visibility: Visibility
    members: tuple[MemberView, ...]
    party_count: int | None


VisibilityRule = Callable[[str, tuple[Member, ...]], View | None]
"""``(recipient, all members of the group) -> what the recipient sees``, or ``None``
if it may not know of the group at all (it then gets no notice)."""


def members_see_all(roles: Mapping[str, str] | None = None) -> VisibilityRule:
    """The rule until the covenant brings its own: every member sees everything.

    ``roles`` maps party ids to their covenant roles, shown to the other members.
    """
    role_of = dict(roles or {})

    def rule(recipient: str, members: tuple[Member, ...]) -> View | None:
        others = tuple(
            MemberView(
                party=m.party,
                role=role_of.get(m.party),
                signal_refs=m.signal_refs,
                sealed_attributes=m.sealed_attributes,
            )
            for m in members
            if m.party != recipient
        )
        return View(SEE_ALL, others, party_count=len(members))

    return rule


DEFAULT_VISIBILITY: VisibilityRule = members_see_all()


#: Views a :class:`CovenantVisibility` remembers (it lives for one operation, usually).
_MAX_CACHED_VIEWS: Final = 4096


class CovenantVisibility:
    """The covenant's visibility rules (``samenloop.policies.rules.visibility``) as a
    :data:`VisibilityRule`, with the coordinators as ``observers``."""

    def __init__(self, covenant: Covenant, *, former: Covenant | None = None) -> None:
        self._covenant = covenant
        self.observers = rules.observers(covenant)
        # Parties a new version removed still count as what they were in groups as they
        # stood before, so that the others are told those groups shrank or closed.
        self._former_roles = {
            p.id: p.role for p in (former.parties if former else ()) if not covenant.is_party(p.id)
        }
        # Matching asks the same question several times per group (notices, reporter).
        self._views: dict[tuple[str, tuple[Member, ...]], View | None] = {}

    def hides(self, recipient: str, party: str) -> bool:
        """Whether ``recipient`` may never learn of ``party``'s part in a hit (also of a
        party a new version removed, by the role it had)."""
        return rules.hides(self._covenant, recipient, party, former_roles=self._former_roles)

    def __call__(self, recipient: str, members: tuple[Member, ...]) -> View | None:
        key = (recipient, members)
        if key in self._views:
            return self._views[key]
        if len(self._views) >= _MAX_CACHED_VIEWS:
            self._views.clear()
        view = self._views[key] = self._view(recipient, members)
        return view

    def _view(self, recipient: str, members: tuple[Member, ...]) -> View | None:
        seen = rules.visibility(
            self._covenant,
            recipient,
            [rules.MemberFacts(m.party, m.signal_refs, m.sealed_attributes) for m in members],
            former_roles=self._former_roles,
        )
        if seen is None:
            return None
        level = seen.level
        return View(
            visibility=Visibility(
                party_count=level.at_least(Level.COUNT),
                roles=level.at_least(Level.ROLES),
                parties=level.at_least(Level.PARTIES),
                categories=level.at_least(Level.CATEGORIES),
            ),
            members=tuple(
                MemberView(m.party, m.role, m.signal_refs, m.sealed_attributes)
                for m in seen.members
            ),
            party_count=seen.party_count,
        )


@dataclass(frozen=True, slots=True)
class NoticeDraft:
    """One hit notice for one recipient, ready for the broker to sign.

    For ``CLOSED`` notices ``own_refs`` are the refs the recipient had in the
    group, and no members or count are given: the hit is over for it.
    """

    recipient: str
    group: Group
    kind: NoticeKind
    own_refs: tuple[bytes, ...]
    view: View
    picture_reporter: bool
    #: Some member of the group is (or was, in this change) hidden from the recipient: its
    #: notice must not carry what would date that member's part (see the broker's signing).
    partial: bool = False

    @property
    def group_id(self) -> bytes:
        return self.group.group_id

    @property
    def revision(self) -> int:
        return self.group.revision

    @property
    def first_seen(self) -> datetime:
        return self.group.first_seen

    @property
    def last_seen(self) -> datetime:
        return self.group.last_seen


@dataclass(frozen=True, slots=True)
class Change:
    """What an operation does to the index: rows to write and notices to deliver.

    ``updated`` entries replace the stored entry with the same key; ``groups``
    are inserted or updated by ``group_id``.
    """

    inserted: tuple[Entry, ...] = ()
    updated: tuple[Entry, ...] = ()
    deleted: tuple[Entry, ...] = ()
    groups: tuple[Group, ...] = ()
    notices: tuple[NoticeDraft, ...] = ()


@dataclass(frozen=True, slots=True)
class Submission:
    """The outcome of a submitted batch: the change, and the counts the node is told."""

    change: Change
    stored: int
    unchanged: int


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """The outcome of a withdrawal: the change, refs withdrawn, refs not held."""

    change: Change
    withdrawn: int
    unknown: int


# --- what a party may submit ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubmissionRules:
    """What the covenant lets one party submit, as the broker applies it: how far ahead an
    entry may expire, the party's quotas of entries submitted and refs withdrawn per UTC
    day and of entries held at once, and of the hit-notice bytes its batches may put in
    other parties' mailboxes per UTC day."""

    longest_retention_days: int
    entries_per_day: int
    entries_held: int
    notice_bytes_per_day: int = 2**62

    @classmethod
    def of(cls, covenant: Covenant, *, held_retention_days: int = 0) -> SubmissionRules:
        """The covenant's rules. ``held_retention_days``: the longest retention of the
        versions the broker held before this one, so that tokens a node made under a
        longer rule than the one in force now are still taken."""
        policy = covenant.policy
        return cls(
            longest_retention_days=max(policy.retention.longest_days, held_retention_days),
            entries_per_day=policy.quotas.token_entries_per_day,
            entries_held=policy.quotas.token_entries_held,
            notice_bytes_per_day=policy.quotas.hit_notice_bytes_per_day,
        )

    @property
    def longest_lifetime(self) -> timedelta:
        """How far after now an entry may expire: the longest retention, and the clock
        skew allowed (a node's clock may run ahead of the broker's)."""
        return timedelta(days=self.longest_retention_days) + CLOCK_SKEW


@dataclass(frozen=True, slots=True)
class Usage:
    """A party's use of its quotas, as the broker keeps it: the UTC day (since 1970) of
    its last counted batch, the entries it submitted and refs it withdrew that day, the
    entries it holds (live or expired and not yet swept), and the bytes of hit notices
    its batches put in other parties' mailboxes that day."""

    day: int = 0
    submitted: int = 0
    held: int = 0
    notice_bytes: int = 0


def utc_day(now: datetime) -> int:
    """The UTC day of ``now``, counted from 1970-01-01: what daily quotas reset on."""
    return (now.astimezone(UTC) - _EPOCH).days


def charge(
    usage: Usage,
    *,
    submitted: int,
    added: int,
    rules: SubmissionRules,
    now: datetime,
    field: str = "entries",
) -> Usage:
    """Count a batch of ``submitted`` entries (or, for a withdrawal, refs withdrawn, with
    ``field`` ``signal_refs``) that changes the party's held entries by ``added`` against
    its quotas; ``QuotaExceeded`` naming ``field`` if it would pass one, and then the
    batch stores nothing.

    A batch that does not grow what the party holds is never refused for what it holds.
    A clock that steps back keeps counting on the later day.
    """
    day = utc_day(now)
    today, notices = (usage.submitted, usage.notice_bytes) if usage.day >= day else (0, 0)
    if today + submitted > rules.entries_per_day:
        raise QuotaExceeded(
            f"the covenant allows {rules.entries_per_day} token entries submitted and refs"
            f" withdrawn per party per UTC day; {today} were counted today and this batch"
            f" has {submitted}",
            field=field,
            reason="quota.token_entries_per_day",
        )
    held = usage.held + added
    if added > 0 and held > rules.entries_held:
        raise QuotaExceeded(
            f"the covenant allows {rules.entries_held} token entries held per party;"
            f" {usage.held} are held and this batch adds {added}",
            field=field,
            reason="quota.token_entries_held",
        )
    return Usage(max(day, usage.day), today + submitted, held, notices)


def charge_notices(
    usage: Usage, notice_bytes: int, *, rules: SubmissionRules, field: str = "entries"
) -> Usage:
    """Count the bytes of the hit notices a batch puts in other parties' mailboxes against
    the party's day (``usage`` as :func:`charge` returned it, on the current day).

    While the party has caused no notice that day, its batch goes through whatever its
    notices (so that no batch can wait for ever); after that, a batch whose notices would
    take the day's past ``notice_bytes_per_day`` is refused (``QuotaExceeded``, reason
    ``quota.hit_notice_bytes_per_day``, naming ``field``) and stores nothing. A batch that
    causes no notice is never refused for them. So a party's batches cause at most the
    larger of the quota and its day's first notice-causing batch.
    """
    total = usage.notice_bytes + notice_bytes
    if usage.notice_bytes and notice_bytes and total > rules.notice_bytes_per_day:
        raise QuotaExceeded(
            f"the covenant allows {rules.notice_bytes_per_day} bytes of hit notices to other"
            f" parties per party per UTC day; {usage.notice_bytes} were caused today and"
            f" this batch causes {notice_bytes}",
            field=field,
            reason="quota.hit_notice_bytes_per_day",
        )
    return replace(usage, notice_bytes=total)


def swept_notice_bytes(
    change: Change, signed: Iterable[tuple[NoticeDraft, bytes]]
) -> dict[str, int]:
    """What each party whose entries an expiry sweep dropped caused the others: the bytes
    of the signed notices on those tokens to every recipient but itself (a notice on a
    token where several parties' entries expired counts for each of them)."""
    expired: dict[bytes, set[str]] = {}
    for entry in change.deleted:
        expired.setdefault(entry.token, set()).add(entry.party)
    costs: Counter[str] = Counter()
    for draft, payload in signed:
        for party in expired.get(draft.group.token, ()):
            if draft.recipient != party:
                costs[party] += len(payload)
    return dict(costs)


def charge_swept(usage: Usage, notice_bytes: int, *, now: datetime) -> Usage:
    """Count the notices the sweep of a party's expired entries caused the others against
    its day, like its own batches' but never refused (the sweep must go on): its batches
    wait once they pass ``hit_notice_bytes_per_day``."""
    day = utc_day(now)
    if usage.day < day:
        usage = Usage(day, 0, usage.held, 0)
    return replace(usage, notice_bytes=usage.notice_bytes + notice_bytes)


def held_deltas(
    change: Change, *, submitter: str | None = None, uncounted: frozenset[int] = frozenset()
) -> dict[str, int]:
    """How a change moves each party's count of entries held: inserted less deleted
    (entries updated in place do not move it). ``submitter``: the change is that party's
    submission, whose inserts are all its own (counted without a look at each).
    Entries of a key epoch in ``uncounted`` (a staged rotation's, which re-state entries
    held under the current epoch) do not move it."""
    if uncounted:
        deltas = Counter(e.party for e in change.inserted if e.key_epoch not in uncounted)
        deltas.subtract(e.party for e in change.deleted if e.key_epoch not in uncounted)
        return {party: delta for party, delta in deltas.items() if delta}
    if submitter is None:
        deltas = Counter(entry.party for entry in change.inserted)
    else:
        deltas = Counter({submitter: len(change.inserted)})
    deltas.subtract(entry.party for entry in change.deleted)
    return {party: delta for party, delta in deltas.items() if delta}


# --- parsing at the boundary ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Batch:
    """A validated submission: duplicates collapsed, times in UTC, with its digest.

    ``positions[i]`` is the index in the request of ``entries[i]`` (the last
    occurrence of a duplicate), so later errors can name the offending field.
    """

    party: str
    key_epoch: int
    entries: tuple[Entry, ...]
    positions: tuple[int, ...]
    digest: bytes

    @property
    def tokens(self) -> tuple[bytes, ...]:
        """The distinct tokens of the batch, sorted."""
        return tuple(sorted({e.token for e in self.entries}))


@dataclass(frozen=True, slots=True)
class WithdrawalBatch:
    """A validated withdrawal: the party's distinct refs, sorted, with its digest."""

    party: str
    signal_refs: tuple[bytes, ...]
    digest: bytes


def _check_party(party: str) -> None:
    if not 0 < len(party.encode("utf-8")) <= MAX_PARTY_ID_BYTES:
        raise InvalidInput(f"party id must be 1..{MAX_PARTY_ID_BYTES} bytes", field="party")


def _utc(moment: datetime, field: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidInput("time must carry a time zone", field=field)
    return moment.astimezone(UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_MICROS = struct.Struct(">q")
_SEALED = struct.Struct(">BI")  # present, then the length of the sealed attributes


def parse_batch(party: str, key_epoch: int, entries: Sequence[Entry]) -> Batch:
    """Validate a submission's shape; collapse duplicates (the last occurrence wins).

    Expiry is checked later, against ``now``, by :func:`submit`: a resubmitted
    batch must be recognised as such even when its entries have expired since.
    """
    _check_party(party)
    if not 1 <= key_epoch <= _MAX_KEY_EPOCH:
        raise InvalidInput("key epoch must be 1..2^32-1", field="key_epoch")
    if not entries:
        raise InvalidInput("a batch needs at least one entry", field="entries")
    if len(entries) > MAX_ENTRIES_PER_BATCH:
        raise MessageTooLarge(
            f"at most {MAX_ENTRIES_PER_BATCH} entries per batch, got {len(entries)}",
            field="entries",
        )
    # Keyed by ref + token: refs have one length, so the keys sort as (ref, token) pairs.
    kept: dict[bytes, tuple[int, Entry]] = {}
    for i, entry in enumerate(entries):
        token = entry.token
        ref = entry.signal_ref
        if entry.party != party:
            raise InvalidInput("entry names another party", field=f"entries[{i}]")
        if len(token) != TOKEN_BYTES:
            raise InvalidInput(f"token must be {TOKEN_BYTES} bytes", field=f"entries[{i}].token")
        if len(ref) != REF_BYTES:
            raise InvalidInput(
                f"signal ref must be {REF_BYTES} bytes", field=f"entries[{i}].signal_ref"
            )
        expires_at = entry.expires_at
        if expires_at.tzinfo is not UTC:
            expires_at = _utc(expires_at, f"entries[{i}].expires_at")
        sealed = entry.sealed_attributes
        if sealed is not None and not 0 < len(sealed) <= MAX_SEALED_ATTRIBUTES_BYTES:
            if not sealed:
                raise InvalidInput(
                    "sealed attributes, when given, must not be empty",
                    field=f"entries[{i}].sealed_attributes",
                )
            raise MessageTooLarge(
                f"sealed attributes are at most {MAX_SEALED_ATTRIBUTES_BYTES} bytes,"
                f" got {len(sealed)}",
                field=f"entries[{i}].sealed_attributes",
            )
        if entry.key_epoch != key_epoch or expires_at is not entry.expires_at:
            entry = Entry(party, token, ref, key_epoch, expires_at, sealed)
        kept[bytes(ref) + bytes(token)] = (i, entry)
    parts: list[bytes] = [_SUBMIT_DOMAIN + struct.pack(">I", key_epoch)]
    append = parts.append
    pack_micros = _MICROS.pack
    pack_sealed = _SEALED.pack
    epoch = _EPOCH
    for key in sorted(kept):
        entry = kept[key][1]
        sealed = entry.sealed_attributes
        since = entry.expires_at - epoch  # microseconds since 1970, inlined: per entry
        append(entry.token)
        append(entry.signal_ref)
        append(pack_micros((since.days * 86_400 + since.seconds) * 1_000_000 + since.microseconds))
        if sealed is None:
            append(b"\x00")
        else:
            append(pack_sealed(1, len(sealed)))
            append(sealed)
    # The dict keeps each key where it first came, its value the last occurrence:
    # the order of positions needs a sort only where the batch repeated an entry.
    by_position = list(kept.values())
    if len(by_position) != len(entries):
        by_position.sort(key=lambda pair: pair[0])
    positions, kept_entries = zip(*by_position, strict=True)
    return Batch(
        party=party,
        key_epoch=key_epoch,
        entries=kept_entries,
        positions=positions,
        digest=crypto.digest(b"".join(parts)),
    )


def parse_withdrawal(party: str, signal_refs: Sequence[bytes]) -> WithdrawalBatch:
    """Validate a withdrawal's refs; collapse duplicates."""
    _check_party(party)
    if not signal_refs:
        raise InvalidInput("a withdrawal needs at least one signal ref", field="signal_refs")
    if len(signal_refs) > MAX_REFS_PER_WITHDRAWAL:
        raise MessageTooLarge(
            f"at most {MAX_REFS_PER_WITHDRAWAL} signal refs per withdrawal, got {len(signal_refs)}",
            field="signal_refs",
        )
    for i, ref in enumerate(signal_refs):
        if len(ref) != REF_BYTES:
            raise InvalidInput(f"signal ref must be {REF_BYTES} bytes", field=f"signal_refs[{i}]")
    refs = tuple(sorted(set(signal_refs)))
    digest = crypto.digest(_WITHDRAW_DOMAIN + b"".join(refs))
    return WithdrawalBatch(party=party, signal_refs=refs, digest=digest)


# --- operations ----------------------------------------------------------------


def _check_call(min_parties: int, now: datetime) -> datetime:
    if min_parties < 2:
        raise ConfigurationError("a hit needs at least two parties", field="min_parties")
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must carry a time zone")
    return now.astimezone(UTC)


def _by_token(states: Iterable[TokenState]) -> dict[bytes, TokenState]:
    return {state.token: state for state in states}


def submit(
    batch: Batch,
    states: Iterable[TokenState],
    *,
    min_parties: int,
    now: datetime,
    new_group_id: Callable[[], bytes],
    visibility: VisibilityRule = DEFAULT_VISIBILITY,
    rules: SubmissionRules | None = None,
    silent_epochs: frozenset[int] = frozenset(),
) -> Submission:
    """Store a batch and match it against the touched tokens' states.

    Groups of a token whose entries are of a key epoch in ``silent_epochs`` (the
    staged epoch of a rotation) are kept like any other, but no notice is drafted
    for them: they re-state groups of the current epoch, whose notices the
    members already have (``map_switch`` maps them when the epoch switches). A
    token holds entries of one key epoch only: an entry on a token held under
    another is refused (``InvalidInput`` naming its ``key_epoch``).

    ``states`` must hold every stored entry and the open group of each token
    in the batch (tokens without a state are taken as unseen). With ``rules``,
    an entry may expire at most their longest lifetime from ``now`` (the broker
    always passes the covenant's; the quotas are counted by :func:`charge`).
    An entry that would give its party more than ``MAX_REFS_PER_TOKEN`` live refs
    on its token is refused (``MessageTooLarge``, its ``signal_ref``).
    """
    now = _check_call(min_parties, now)
    latest = None if rules is None else now + rules.longest_lifetime
    for entry, position in zip(batch.entries, batch.positions, strict=True):
        expires_at = entry.expires_at
        if expires_at <= now:
            raise InvalidInput(
                "expires_at must lie in the future", field=f"entries[{position}].expires_at"
            )
        if latest is not None and expires_at > latest:
            assert rules is not None
            raise InvalidInput(
                f"expires_at lies beyond the covenant's longest retention"
                f" ({rules.longest_retention_days} days from now)",
                field=f"entries[{position}].expires_at",
                reason="retention.exceeded",
            )
    known = _by_token(states)
    for entry, position in zip(batch.entries, batch.positions, strict=True):
        state = known.get(entry.token)
        if state is not None and any(e.key_epoch != batch.key_epoch for e in state.entries):
            raise InvalidInput(
                f"this token is held under another key epoch than {batch.key_epoch}",
                field=f"entries[{position}].key_epoch",
                reason="token.other_epoch",
            )
    builder = _ChangeBuilder(min_parties, now, new_group_id, visibility, silent_epochs)
    # Tokens with nothing held: their entries are new, and, all being one party's,
    # cannot form a group (min_parties >= 2). The common case, done in bulk.
    unseen = [entry for entry in batch.entries if entry.token not in known]
    if len({entry.token for entry in unseen}) != len(unseen):  # some token more than once
        _check_refs_per_token(batch, known)
    builder.inserted.extend(unseen)
    stored = len(builder.inserted)
    unchanged = 0
    incoming: dict[bytes, list[tuple[Entry, int]]] = {}
    for entry, position in zip(batch.entries, batch.positions, strict=True):
        if entry.token in known:
            incoming.setdefault(entry.token, []).append((entry, position))
    for token in sorted(incoming):
        state = known[token]
        live, expired = _split_live(state.entries, now)
        _check_refs(batch.party, live, incoming[token])
        stored_by_key = {e.key: e for e in state.entries}
        live_keys = {e.key for e in live}
        after = {e.key: e for e in live}
        for entry, _ in incoming[token]:
            previous = stored_by_key.get(entry.key)
            if previous is None:
                builder.inserted.append(entry)
                stored += 1
            elif entry.key not in live_keys:  # expired and not yet dropped: counts as new
                builder.updated.append(entry)
                stored += 1
            else:
                unchanged += 1
                if previous != entry:
                    builder.updated.append(entry)
            after[entry.key] = entry
        builder.deleted.extend(e for e in expired if e.key not in after)
        builder.regroup(state, live, tuple(after.values()), may_form=True)
    # By token, each token's entries in the batch's order (the sort is stable).
    builder.inserted.sort(key=_token_of)
    return Submission(builder.build(), stored=stored, unchanged=unchanged)


def _token_of(entry: Entry) -> bytes:
    return entry.token


def _check_refs_per_token(batch: Batch, known: Mapping[bytes, TokenState]) -> None:
    """The refs per token of a batch that repeats a token nothing is held on yet."""
    repeated: dict[bytes, list[tuple[Entry, int]]] = {}
    for entry, position in zip(batch.entries, batch.positions, strict=True):
        if entry.token not in known:
            repeated.setdefault(entry.token, []).append((entry, position))
    for incoming in repeated.values():
        if len(incoming) > MAX_REFS_PER_TOKEN:
            _check_refs(batch.party, (), incoming)


def _check_refs(party: str, live: Iterable[Entry], incoming: Sequence[tuple[Entry, int]]) -> None:
    """Refuse the first of ``incoming`` (one token's entries of a batch, in the batch's
    order) that would give ``party`` more than ``MAX_REFS_PER_TOKEN`` live refs on it."""
    held = {entry.key for entry in live if entry.party == party}
    if len(held) + len(incoming) <= MAX_REFS_PER_TOKEN:
        return
    for entry, position in incoming:
        held.add(entry.key)
        if len(held) > MAX_REFS_PER_TOKEN:
            raise MessageTooLarge(
                f"a party holds at most {MAX_REFS_PER_TOKEN} signal refs on one token",
                field=f"entries[{position}].signal_ref",
                reason="token.too_many_refs",
            )


def withdraw(
    batch: WithdrawalBatch,
    states: Iterable[TokenState],
    *,
    min_parties: int,
    now: datetime,
    visibility: VisibilityRule = DEFAULT_VISIBILITY,
    silent_epochs: frozenset[int] = frozenset(),
) -> Withdrawal:
    """Remove the party's entries for the batch's refs.

    ``states`` must hold the state of every token on which the party has an
    entry for one of the refs.
    """
    wanted = set(batch.signal_refs)
    held: set[bytes] = set()

    def doomed(entry: Entry) -> bool:
        if entry.party == batch.party and entry.signal_ref in wanted:
            held.add(entry.signal_ref)
            return True
        return False

    change = _remove(
        states,
        doomed,
        min_parties=min_parties,
        now=now,
        visibility=visibility,
        silent_epochs=silent_epochs,
    )
    return Withdrawal(change, withdrawn=len(held), unknown=len(wanted) - len(held))


def expire(
    states: Iterable[TokenState],
    *,
    min_parties: int,
    now: datetime,
    visibility: VisibilityRule = DEFAULT_VISIBILITY,
    silent_epochs: frozenset[int] = frozenset(),
) -> Change:
    """Drop the entries whose ``expires_at`` has passed from the given tokens."""
    return _remove(
        states,
        lambda entry: False,
        min_parties=min_parties,
        now=now,
        visibility=visibility,
        silent_epochs=silent_epochs,
    )


def remove_party(
    party: str,
    states: Iterable[TokenState],
    *,
    min_parties: int,
    now: datetime,
    visibility: VisibilityRule = DEFAULT_VISIBILITY,
    silent_epochs: frozenset[int] = frozenset(),
) -> Change:
    """Drop every entry of a party that the covenant no longer lists.

    ``states`` must hold the state of every token on which the party has entries.
    """
    return _remove(
        states,
        lambda entry: entry.party == party,
        min_parties=min_parties,
        now=now,
        visibility=visibility,
        silent_epochs=silent_epochs,
    )


def _remove(
    states: Iterable[TokenState],
    doomed: Callable[[Entry], bool],
    *,
    min_parties: int,
    now: datetime,
    visibility: VisibilityRule,
    silent_epochs: frozenset[int] = frozenset(),
) -> Change:
    now = _check_call(min_parties, now)
    builder = _ChangeBuilder(min_parties, now, _no_new_groups, visibility, silent_epochs)
    for _, state in sorted(_by_token(states).items()):
        live, expired = _split_live(state.entries, now)
        # Evaluate every entry, so that ``doomed`` sees expired ones too.
        gone = [e for e in state.entries if doomed(e)]
        gone_keys = {e.key for e in gone}
        after = tuple(e for e in live if e.key not in gone_keys)
        builder.deleted.extend(gone)
        builder.deleted.extend(e for e in expired if e.key not in gone_keys)
        builder.regroup(state, live, after, may_form=False)
    return builder.build()


@dataclass(frozen=True, slots=True)
class SwitchMap:
    """What switching the key epoch does to the groups (:func:`map_switch`).

    ``change.groups`` are the group rows after the switch (a staged token's group
    under the id of the old group it re-states; old groups with no successor,
    closed), ``change.notices`` the real differences only; ``retired`` the ids of
    the open group rows of both epochs that these rows replace.
    """

    change: Change
    retired: tuple[bytes, ...]


def map_switch(
    old: Iterable[TokenState],
    staged: Iterable[TokenState],
    *,
    min_parties: int,
    now: datetime,
    visibility: VisibilityRule = DEFAULT_VISIBILITY,
) -> SwitchMap:
    """Map the groups of the retiring key epoch onto those of the staged one, by refs.

    ``old``: the states of the retiring epoch's tokens that have an open group;
    ``staged``: the states of the staged epoch's tokens (every one with an open
    group, and any other that re-states a member of an old group). A node gives
    an identifier one ref and re-states it under the staged epoch with that same
    ref, so each (party, ref) pair names one subject in both epochs: a staged
    token takes over the id, revision and first_seen of the old group whose
    entries share its pairs, and the two are compared as one token's entries
    before and after (the usual rule of ``regroup``): members the same, no
    notice; otherwise GROWN, SHRUNK, NEW or CLOSED as for any change. An old
    group no staged token re-states closes (CLOSED); a staged group with no old
    one forms (NEW, a new id). Deleting the old entries is the caller's, without
    notices: their groups live on here.
    """
    now = _check_call(min_parties, now)
    fresh: list[bytes] = []

    def staged_group_id() -> bytes:
        return fresh.pop()

    builder = _ChangeBuilder(min_parties, now, staged_group_id, visibility)
    retired: list[bytes] = []
    owner: dict[tuple[str, bytes], TokenState] = {}
    by_token = _by_token(old)
    old_states = sorted(by_token.items())
    for _, state in old_states:
        if state.group is None:
            continue
        retired.append(state.group.group_id)
        for entry in state.entries:
            owner.setdefault((entry.party, entry.signal_ref), state)
    taken: set[bytes] = set()
    for token, state in sorted(_by_token(staged).items()):
        live, expired = _split_live(state.entries, now)
        if state.group is not None:
            retired.append(state.group.group_id)
        matches = sorted(
            {
                owner[(e.party, e.signal_ref)].token
                for e in state.entries
                if (e.party, e.signal_ref) in owner
            }
            - taken
        )
        before_count = len(builder.groups)
        if matches:
            predecessor = by_token[matches[0]]
            taken.add(predecessor.token)
            assert predecessor.group is not None
            group = replace(predecessor.group, token=token)
            restated = tuple(replace(e, token=token) for e in predecessor.entries)
            live_before, _ = _split_live(restated, now)
            builder.regroup(
                TokenState(token, restated, group), live_before, tuple(live), may_form=True
            )
            if len(builder.groups) == before_count:  # nothing changed: the same group goes on
                builder.groups.append(group)
        elif state.group is not None:
            fresh.append(state.group.group_id)  # formed while staged: its id is told now
            builder.regroup(TokenState(token, tuple(expired)), (), tuple(live), may_form=True)
            fresh.clear()
    for token, state in old_states:
        if state.group is None or token in taken:
            continue
        live, _ = _split_live(state.entries, now)
        builder.regroup(state, live, (), may_form=False)
    return SwitchMap(builder.build(), tuple(retired))


def _no_new_groups() -> bytes:  # pragma: no cover - removals never form groups
    raise AssertionError("a removal cannot form a group")


def _split_live(entries: Iterable[Entry], now: datetime) -> tuple[list[Entry], list[Entry]]:
    live: list[Entry] = []
    expired: list[Entry] = []
    for entry in entries:
        (live if entry.expires_at > now else expired).append(entry)
    return live, expired


def _members(entries: Iterable[Entry]) -> tuple[Member, ...]:
    by_party: dict[str, list[Entry]] = {}
    for entry in entries:
        by_party.setdefault(entry.party, []).append(entry)
    members = []
    for party in sorted(by_party):
        own = sorted(by_party[party], key=lambda e: e.signal_ref)
        members.append(
            Member(
                party=party,
                signal_refs=tuple(e.signal_ref for e in own),
                sealed_attributes=tuple(
                    e.sealed_attributes for e in own if e.sealed_attributes is not None
                ),
            )
        )
    return tuple(members)


def _capped(view: View) -> View:
    """``view`` with at most ``MAX_SEALED_ATTRIBUTES_PER_NOTICE`` boxes over its members:
    each member's boxes are taken in turn (every member's first, then every member's
    second, ...) until the limit, so that each keeps an equal share however many
    another piled up."""
    boxes = [len(member.sealed_attributes) for member in view.members]
    if sum(boxes) <= MAX_SEALED_ATTRIBUTES_PER_NOTICE:
        return view
    kept = [0] * len(boxes)
    left = MAX_SEALED_ATTRIBUTES_PER_NOTICE
    while left:
        for i, count in enumerate(boxes):
            if kept[i] < count and left:
                kept[i] += 1
                left -= 1
    members = tuple(
        replace(member, sealed_attributes=member.sealed_attributes[:keep])
        for member, keep in zip(view.members, kept, strict=True)
    )
    return replace(view, members=members)


class _ChangeBuilder:
    """Collects the rows and notices of one operation, token by token."""

    def __init__(
        self,
        min_parties: int,
        now: datetime,
        new_group_id: Callable[[], bytes],
        visibility: VisibilityRule,
        silent_epochs: frozenset[int] = frozenset(),
    ) -> None:
        self.min_parties = min_parties
        #: Key epochs whose groups change without notices (a staged rotation).
        self.silent_epochs = silent_epochs
        self.now = now
        self.new_group_id = new_group_id
        self.visibility = visibility
        # Coordinators: told of groups they hold no entry in, as the rule lets them see.
        self.observers: frozenset[str] = frozenset(getattr(visibility, "observers", ()))
        self.inserted: list[Entry] = []
        self.updated: list[Entry] = []
        self.deleted: list[Entry] = []
        self.groups: list[Group] = []
        self.notices: list[NoticeDraft] = []

    def build(self) -> Change:
        return Change(
            inserted=tuple(self.inserted),
            updated=tuple(self.updated),
            deleted=tuple(self.deleted),
            groups=tuple(self.groups),
            notices=tuple(self.notices),
        )

    def regroup(
        self,
        state: TokenState,
        live_before: Sequence[Entry],
        after: Sequence[Entry],
        *,
        may_form: bool,
    ) -> None:
        """Decide the token's group and notices from its entries before and after.

        An entry joins when it was not live before (an expired entry submitted
        again joins anew); an entry leaves when it was stored before, live or
        not, and is gone after: members whose entries expired unseen are told.
        """
        group = state.group
        after_keys = {e.key for e in after}
        joined = bool(after_keys - {e.key for e in live_before})
        left = bool({e.key for e in state.entries} - after_keys)
        old = _members(state.entries)
        new = _members(after)
        old_parties = {m.party for m in old}
        new_parties = {m.party for m in new}
        enough = len(new_parties) >= self.min_parties

        if group is None:
            if not (may_form and joined and enough):
                return
            group_id = self.new_group_id()
            if len(group_id) != GROUP_ID_BYTES:
                raise ValueError(f"group ids are {GROUP_ID_BYTES} bytes")
            changed = Group(group_id, state.token, 1, self.now, self.now)
            old = ()
            kinds = {party: NoticeKind.NEW for party in new_parties}
        elif not enough:
            changed = replace(
                group, revision=group.revision + 1, last_seen=self._later(group), open=False
            )
            kinds = {party: NoticeKind.CLOSED for party in old_parties}
        elif joined or left:
            changed = replace(group, revision=group.revision + 1, last_seen=self._later(group))
            stayed = NoticeKind.GROWN if joined else NoticeKind.SHRUNK
            kinds = {
                party: stayed
                if party in old_parties and self.visibility(party, old) is not None
                else NoticeKind.NEW
                for party in new_parties
            }
            kinds.update({party: NoticeKind.CLOSED for party in old_parties - new_parties})
        else:
            return
        for observer in self.observers - old_parties - new_parties:
            saw = self.visibility(observer, old) if old else None
            sees = self.visibility(observer, new) if changed.open else None
            if sees is not None:
                kinds[observer] = (
                    NoticeKind.NEW
                    if saw is None
                    else (NoticeKind.GROWN if joined else NoticeKind.SHRUNK)
                )
            elif saw is not None:
                kinds[observer] = NoticeKind.CLOSED
        self.groups.append(changed)
        if self.silent_epochs and any(
            e.key_epoch in self.silent_epochs for e in (*state.entries, *after)
        ):
            return  # a staged epoch's group: kept, told nobody
        moved = (after_keys - {e.key for e in live_before}) | (
            {e.key for e in state.entries} - after_keys
        )
        self._notify(changed, kinds, old, new, frozenset(key.party for key in moved))

    def _later(self, group: Group) -> datetime:
        """The group's new last-seen time: now, and always after the previous one, so that
        it orders the group's changes even if the clock steps back (notices use it)."""
        return max(self.now, group.last_seen + timedelta(microseconds=1))

    def _notify(
        self,
        group: Group,
        kinds: dict[str, NoticeKind],
        old: tuple[Member, ...],
        new: tuple[Member, ...],
        changed_parties: frozenset[str] = frozenset(),
    ) -> None:
        drafts: list[tuple[str, NoticeKind, tuple[bytes, ...], View]] = []
        old_refs = {m.party: m.signal_refs for m in old}
        new_refs = {m.party: m.signal_refs for m in new}
        hides: Callable[[str, str], bool] | None = getattr(self.visibility, "hides", None)
        for party in sorted(kinds):
            kind = kinds[party]
            if kind is NoticeKind.CLOSED:
                seen = self.visibility(party, old)
                if seen is None:  # never told of the group: nothing to close
                    continue
                view = View(seen.visibility, members=(), party_count=None)
                drafts.append((party, kind, old_refs.get(party, ()), view))
            else:
                shown = self.visibility(party, new)
                if shown is None:
                    # It may no longer see the group (say its only visible partner left, or
                    # a new covenant hides the rest): for it, the hit is over.
                    seen = (
                        self.visibility(party, old) if old and kind is not NoticeKind.NEW else None
                    )
                    if seen is not None:
                        view = View(seen.visibility, members=(), party_count=None)
                        drafts.append((party, NoticeKind.CLOSED, old_refs.get(party, ()), view))
                    continue
                if (
                    kind in (NoticeKind.GROWN, NoticeKind.SHRUNK)
                    and hides is not None
                    and changed_parties
                    and all(hides(party, other) for other in changed_parties)
                ):
                    continue  # only members hidden from it changed: a notice would betray them
                drafts.append((party, kind, new_refs.get(party, ()), _capped(shown)))
        if not drafts:
            return
        reporter = self._reporter(group, drafts, old_refs.keys(), new, hides)
        everyone = {m.party for m in (*old, *new)}
        self.notices.extend(
            NoticeDraft(
                recipient=party,
                group=group,
                kind=kind,
                own_refs=refs,
                view=view,
                picture_reporter=party == reporter,
                partial=hides is not None and any(hides(party, other) for other in everyone),
            )
            for party, kind, refs, view in drafts
        )

    def _reporter(
        self,
        group: Group,
        drafts: Sequence[tuple[str, NoticeKind, tuple[bytes, ...], View]],
        old_parties: Iterable[str],
        new: tuple[Member, ...],
        hides: Callable[[str, str], bool] | None,
    ) -> str:
        """The member whose node counts this group in the regional picture.

        A function of the membership alone, so that it stays put while nothing its
        candidates can see changes: the smallest party id among the members that the
        rules let see the group and that are hidden from no other member (a member that
        joins or leaves unseen by some never becomes or stops being the reporter then),
        else among all members that may see it. Only a notified member is marked; one
        whose notice this change does not send keeps its flag from the last one.
        """
        told = {party for party, kind, _, _ in drafts if kind is not NoticeKind.CLOSED}
        if not group.open or not new:
            closing = sorted(p for p, _, _, _ in drafts if p in set(old_parties))
            return closing[0] if closing else ""
        parties = [m.party for m in new]
        seeing = [p for p in sorted(parties) if self.visibility(p, new) is not None]
        clear = [
            p for p in seeing if hides is None or not any(hides(q, p) for q in parties if q != p)
        ]
        pool = clear or seeing
        return pool[0] if pool and pool[0] in told else ""
