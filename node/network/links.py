"""Links of the subject network on the wire: which to report, and what a viewer accepts.

A *link* says that one partner's signals tie two hit groups: the reporter holds a
signal with identifiers in both. The reporter's node works out, from its own hits and
signals, which links it holds now (:func:`held_links`), which viewers may be told of
each (:func:`~samenloop.policies.rules.link_viewers`) and what changed since it last
told each viewer (:func:`plan`); it sends the changes as ``NetworkLinks`` messages
(:func:`to_message`), signed and sealed to the viewer. The viewer parses them at its
boundary (:func:`parse`), refusing bad input naming the field, and keeps the latest
revision per reporter and pair.

Pure data and functions, no I/O: the store reads and writes the rows, the desk seals.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from google.protobuf.message import DecodeError

from samenloop.node.identifiers.normalise import IdentifierType
from samenloop.policies.errors import InvalidInput, NotAllowed
from samenloop.policies.policy import MAX_PERSON_SCORE
from samenloop.v1 import common_pb2, network_pb2

__all__ = [
    "LINK_TYPES",
    "MAX_LINKS_PER_MESSAGE",
    "MAX_LINK_COUNT",
    "HeldLink",
    "LinkChange",
    "LinkEnd",
    "ReceivedLink",
    "ReceivedLinks",
    "SentLink",
    "held_links",
    "link_type",
    "parse",
    "plan",
    "to_message",
]

ID_BYTES: Final = common_pb2.LIMITS_ID_BYTES
#: The most links one sealed message carries (a few dozen bytes each).
MAX_LINKS_PER_MESSAGE: Final = 256
#: The most signals one link can count: more than any node holds of one pair.
MAX_LINK_COUNT: Final = 1_000_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
#: The identifier types a link end may name: the node's types, person keys as "person".
LINK_TYPES: Final = frozenset(t.value for t in IdentifierType)


def link_type(identifier_type: str) -> str:
    """The type a link end names for a stored identifier type (``person.*`` is "person")."""
    return "person" if identifier_type.startswith("person") else identifier_type


@dataclass(frozen=True, slots=True)
class LinkEnd:
    """A hit group at one end of a link, as the reporter knows it."""

    group_id: bytes
    identifier_type: str
    person_score: float | None = None


@dataclass(frozen=True, slots=True)
class HeldLink:
    """A link the reporter holds now: ``count`` of its open signals tie ``a`` and ``b``."""

    a: LinkEnd
    b: LinkEnd
    count: int


@dataclass(frozen=True, slots=True)
class SentLink:
    """What the reporter last told one viewer of one pair."""

    recipient: str
    a: bytes
    b: bytes
    count: int
    revision: int


@dataclass(frozen=True, slots=True)
class LinkChange:
    """A change to tell ``recipient``: the pair's new ``count`` (0: ended) at ``revision``."""

    recipient: str
    a: LinkEnd
    b: LinkEnd
    count: int
    revision: int


def held_links(
    rows: Iterable[tuple[bytes, int, str]],
    scores: Mapping[bytes, float] | None = None,
) -> dict[tuple[bytes, bytes], HeldLink]:
    """The links that ``rows`` make: each row is (open hit group, own active signal,
    the identifier type of the signal's identifier in the group). A signal in ``n``
    groups ties each of their ``n*(n-1)/2`` pairs; a pair's count is how many signals
    tie it. A group's type is the smallest of its types (several only if the node's
    signals put identifiers of several types in one group, which tokens make unlikely).
    """
    groups_of: dict[int, set[bytes]] = {}
    type_of: dict[bytes, str] = {}
    for group_id, signal_id, identifier_type in rows:
        groups_of.setdefault(signal_id, set()).add(group_id)
        kind = link_type(identifier_type)
        type_of[group_id] = min(kind, type_of.get(group_id, kind))
    counts: dict[tuple[bytes, bytes], int] = {}
    for groups in groups_of.values():
        ordered = sorted(groups)
        for i, a in enumerate(ordered):
            for b in ordered[i + 1 :]:
                counts[(a, b)] = counts.get((a, b), 0) + 1
    scores = scores or {}

    def end(group_id: bytes) -> LinkEnd:
        return LinkEnd(group_id, type_of[group_id], scores.get(group_id))

    return {
        pair: HeldLink(end(pair[0]), end(pair[1]), min(count, MAX_LINK_COUNT))
        for pair, count in counts.items()
    }


def plan(
    held: Mapping[tuple[bytes, bytes], HeldLink],
    viewers: Mapping[tuple[bytes, bytes], frozenset[str]],
    sent: Iterable[SentLink],
    *,
    now: datetime,
) -> list[LinkChange]:
    """What to tell whom: every (viewer, pair) whose count differs from what was last
    sent it, at the next revision. A link no longer held, or whose viewer may no longer
    be told of it, goes out with count 0 (it ended, as far as that viewer is told); a
    viewer told 0 already is not told again. Ordered by recipient and pair.

    A revision is a time (microseconds since 1970), one above the last if the clock did
    not move: like a hit notice's, so that a node restored from a backup, whose record of
    what it sent went back, still sends revisions above every one it sent before."""
    clock = int((now - _EPOCH).total_seconds() * 1_000_000)

    def after(revision: int) -> int:
        return max(revision + 1, clock)

    last = {(s.recipient, s.a, s.b): s for s in sent}
    changes: list[LinkChange] = []
    for pair, link in held.items():
        for viewer in viewers.get(pair, frozenset()):
            before = last.get((viewer, *pair))
            if before is not None and before.count == link.count:
                continue
            revision = after(0 if before is None else before.revision)
            changes.append(LinkChange(viewer, link.a, link.b, link.count, revision))
    for (viewer, a, b), before in last.items():
        if before.count == 0:
            continue
        if (a, b) in held and viewer in viewers.get((a, b), frozenset()):
            continue
        ended_a = held[(a, b)].a if (a, b) in held else LinkEnd(a, "")
        ended_b = held[(a, b)].b if (a, b) in held else LinkEnd(b, "")
        changes.append(LinkChange(viewer, ended_a, ended_b, 0, after(before.revision)))
    changes.sort(key=lambda c: (c.recipient, c.a.group_id, c.b.group_id))
    return changes


def to_message(reporter: str, changes: Iterable[LinkChange], *, now: datetime) -> bytes:
    """The serialized ``NetworkLinks`` of ``changes`` (at most
    :data:`MAX_LINKS_PER_MESSAGE`, all for one recipient)."""
    message = network_pb2.NetworkLinks(reporter=reporter)
    message.issued_at.FromDatetime(now.astimezone(UTC))
    for change in changes:
        link = message.links.add(count=change.count, revision=change.revision)
        for end, shown in ((change.a, link.a), (change.b, link.b)):
            shown.hit_group_id = end.group_id
            shown.identifier_type = end.identifier_type
            if end.person_score is not None:
                shown.person_score = end.person_score
    if len(message.links) > MAX_LINKS_PER_MESSAGE:
        raise ValueError(f"at most {MAX_LINKS_PER_MESSAGE} links per message")
    return message.SerializeToString()


@dataclass(frozen=True, slots=True)
class ReceivedLink:
    """One link of a parsed ``NetworkLinks``."""

    a: LinkEnd
    b: LinkEnd
    count: int
    revision: int


@dataclass(frozen=True, slots=True)
class ReceivedLinks:
    """A parsed ``NetworkLinks``: who reported them, when, and the links."""

    reporter: str
    issued_at: datetime
    links: tuple[ReceivedLink, ...]


def _end(shown: network_pb2.LinkEnd, where: str, *, ended: bool) -> LinkEnd:
    if len(shown.hit_group_id) != ID_BYTES:
        raise InvalidInput(f"a hit group id is {ID_BYTES} bytes", field=f"{where}.hit_group_id")
    kind = shown.identifier_type
    if not (ended and kind == "") and kind not in LINK_TYPES:
        raise InvalidInput("not an identifier type", field=f"{where}.identifier_type")
    score: float | None = None
    if shown.HasField("person_score"):
        score = shown.person_score
        if not math.isfinite(score) or not 0 <= score <= MAX_PERSON_SCORE:
            raise InvalidInput(
                f"a score is 0 to {MAX_PERSON_SCORE:g} bits", field=f"{where}.person_score"
            )
    return LinkEnd(shown.hit_group_id, kind, score)


def parse(body: bytes, *, sender: str) -> ReceivedLinks:
    """A verified ``NetworkLinks`` body from ``sender``, checked field by field:
    ``InvalidInput`` names the first bad field; ``NotAllowed`` if it claims another
    reporter."""
    message = network_pb2.NetworkLinks()
    try:
        message.ParseFromString(body)
    except DecodeError:
        raise InvalidInput("not a NetworkLinks message", field="body") from None
    if message.reporter != sender:
        raise NotAllowed("the reporter is not the sender", field="reporter")
    if len(message.links) > MAX_LINKS_PER_MESSAGE:
        raise InvalidInput(f"at most {MAX_LINKS_PER_MESSAGE} links", field="links")
    try:
        issued_at = message.issued_at.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidInput("out of range", field="issued_at") from None
    links: list[ReceivedLink] = []
    pairs: set[tuple[bytes, bytes]] = set()
    for i, link in enumerate(message.links):
        where = f"links[{i}]"
        ended = link.count == 0
        a = _end(link.a, f"{where}.a", ended=ended)
        b = _end(link.b, f"{where}.b", ended=ended)
        if not a.group_id < b.group_id:
            raise InvalidInput("the groups must be distinct and ordered (a < b)", field=where)
        if (a.group_id, b.group_id) in pairs:
            raise InvalidInput("a pair is named once per message", field=where)
        pairs.add((a.group_id, b.group_id))
        if link.count > MAX_LINK_COUNT:
            raise InvalidInput(f"at most {MAX_LINK_COUNT}", field=f"{where}.count")
        if not 1 <= link.revision < 2**63:
            raise InvalidInput("a revision starts at 1", field=f"{where}.revision")
        links.append(ReceivedLink(a, b, link.count, link.revision))
    return ReceivedLinks(sender, issued_at, tuple(links))
