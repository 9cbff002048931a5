"""Person keys at the node: derived at import, combined into scored probable hits.

A covenant's ``[person_matching] kinds`` turns on person key kinds
(:class:`~samenloop.node.identifiers.person_keys.PersonKeyKind`) beside the exact
``person`` key. For a signal's ``person`` identifier the node derives a
:class:`PersonKey` per kind turned on (:func:`derived_keys`) and stores each as one more
identifier of the signal: its own fresh ``signal_ref``, its type the kind's wire name, so
that it is tokenised under its own domain (:mod:`samenloop.node.tokens.derive` binds the
type into the OPRF input and the token), withdrawn, expired and re-tokenised under a
staged key epoch like any other identifier.

The broker matches each kind on its own. The node then combines, per own signal and other
party, the kinds on which that party is a member of a group with one of the signal's
keys into one :class:`ProbableHit` scored by :func:`person_score.score` (:func:`combine`).
Other parties' refs are fresh per identifier, so the node cannot tell whether two of a
party's memberships are one record of that party: the score is per (own signal, party)
and can overstate when the party holds two different people who each agree on a
different kind (``docs/linkage.md``). The score counts kinds, never refs: a party that
submits many refs of one kind adds nothing.

The ``person`` identifier's value holds the name and birth date only. The parts a register
keeps beside them (postcode with house number, gender) come with it as
:class:`GivenParts` (an import's ``person.postcode``, ``person.house_number`` and
``person.gender`` columns, the local API's ``Identifier.person_parts``):
:func:`check_given_parts` reads them each under its own field name, :func:`parts_of_person`
adds them to the name's parts. Only the keys derived from them are stored.

Pure functions, no I/O.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from samenloop.node.identifiers import normalise as _n
from samenloop.node.identifiers.person_keys import (
    PersonKeyKind,
    PersonParts,
    person_keys,
    person_parts,
)
from samenloop.node.identifiers.person_score import score
from samenloop.policies.policy import PersonMatching

__all__ = [
    "GIVEN_PARTS",
    "HIDDEN_PARTY",
    "GivenParts",
    "PersonKey",
    "ProbableHit",
    "check_given_parts",
    "combine",
    "derived_keys",
    "is_person_kind",
    "parts_of_person",
    "party_labels",
    "person_kind",
]

#: The party label of another member whose party (and role) this node may not see.
HIDDEN_PARTY: Final = ""

_KINDS: Final = {kind.value: kind for kind in PersonKeyKind}


def is_person_kind(type_name: str) -> bool:
    """Whether an identifier type (as stored) is a person key kind's wire name."""
    return type_name in _KINDS


def person_kind(type_name: str) -> PersonKeyKind:
    """The person key kind of a stored identifier type (``ValueError`` if it is none)."""
    return _KINDS[type_name]


@dataclass(frozen=True, slots=True, repr=False)
class PersonKey:
    """One derived person key: tokenised like an identifier (its ``type`` is the kind's
    wire name, its ``canonical`` the key). Its ``repr`` hides the key."""

    type: PersonKeyKind
    canonical: str

    def __repr__(self) -> str:
        return f"PersonKey(type={self.type.value}, canonical=<redacted>)"


#: The parts of a person beside its ``NAME;DATE`` value, by the names an import maps
#: (``--map person.postcode=COLUMN``) and the local API carries (``PersonParts``).
GIVEN_PARTS: Final = ("postcode", "house_number", "gender")


@dataclass(frozen=True, slots=True, repr=False)
class GivenParts:
    """A person's postcode, house number and gender as the source writes them (``None``
    or blank: not given). Its ``repr`` hides them."""

    postcode: str | None = None
    house_number: str | None = None
    gender: str | None = None

    def __repr__(self) -> str:
        given = [name for name in GIVEN_PARTS if not _blank(getattr(self, name))]
        return f"GivenParts({', '.join(given) or 'none'})"

    @property
    def empty(self) -> bool:
        """Whether no part is given."""
        return all(_blank(getattr(self, name)) for name in GIVEN_PARTS)


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


#: A name that :func:`person_parts` accepts, so that a part is checked on its own.
_ANY_NAME: Final = "x"


def check_given_parts(given: GivenParts, *, fields: Mapping[str, str]) -> GivenParts:
    """``given`` read by :func:`person_parts`' rules, each part on its own: normalised
    (postcode folded without spaces, house number without its addition, gender ``m``,
    ``v`` or ``x``), blanks as ``None``. A postcode without a house number (or the other
    way round) is refused naming the missing part's field. Raises ``InvalidIdentifier``
    (``person.address``, ``person.gender``) naming ``fields[part]``."""
    postcode = None if _blank(given.postcode) else given.postcode
    house_number = None if _blank(given.house_number) else given.house_number
    if (postcode is None) != (house_number is None):
        missing = "house_number" if house_number is None else "postcode"
        fail = _n._Fail(_n.IdentifierType.PERSON, fields[missing])
        raise fail(
            "address",
            "a postcode needs a house number"
            if missing == "house_number"
            else "a house number needs a postcode",
        )
    if postcode is not None and house_number is not None:
        postcode = person_parts(
            _ANY_NAME, None, None, postcode=postcode, house_number="1", field=fields["postcode"]
        ).postcode
        house_number = person_parts(
            _ANY_NAME,
            None,
            None,
            postcode="x",
            house_number=house_number,
            field=fields["house_number"],
        ).house_number
    gender = person_parts(_ANY_NAME, None, None, gender=given.gender, field=fields["gender"]).gender
    return GivenParts(postcode=postcode, house_number=house_number, gender=gender)


def parts_of_person(
    value: str,
    *,
    field: str = "value",
    today: datetime.date | None = None,
    given: GivenParts | None = None,
    given_fields: Mapping[str, str] | None = None,
) -> PersonParts:
    """The parts of a ``person`` identifier written ``NAME;DATE`` (as
    :func:`normalise.parse` reads it): the name split into surname and given names the
    same way, then read by :func:`person_parts`; with the ``given`` parts beside it
    (:func:`check_given_parts`, naming ``given_fields[part]``, by default
    ``<field>.<part>``). Raises ``InvalidIdentifier`` naming ``field``."""
    fail = _n._Fail(_n.IdentifierType.PERSON, field)
    text = _n._prepare(value, fail)
    name, sep, birth_date = text.rpartition(";")
    if not sep or not name.strip():
        raise fail("format", "person must be written as NAME;DATE, e.g. 'J. Jansen;1980-03-15'")
    given_names, surname = _n._split_name(name.strip(), fail)
    parts = person_parts(
        " ".join(surname) or None,
        " ".join(given_names) or None,
        birth_date,
        field=field,
        today=today,
    )
    if given is None or given.empty:
        return parts
    fields = given_fields or {name: f"{field}.{name}" for name in GIVEN_PARTS}
    read = check_given_parts(given, fields=fields)
    return dataclasses.replace(
        parts, postcode=read.postcode, house_number=read.house_number, gender=read.gender
    )


def derived_keys(parts: PersonParts, kinds: Iterable[str]) -> tuple[PersonKey, ...]:
    """The keys of the kinds turned on (wire names) that ``parts`` allow, in the
    kinds' declaration order (deterministic)."""
    wanted = frozenset(_KINDS[name] for name in kinds if name in _KINDS)
    keys = person_keys(parts, wanted)
    return tuple(PersonKey(kind, keys[kind]) for kind in PersonKeyKind if kind in keys)


def party_labels(member: bool, others: Iterable[tuple[str | None, str | None]]) -> list[str]:
    """The labels of a notice's other members as probable hits group them: the party id
    where visible, else ``role:<role>``, else :data:`HIDDEN_PARTY`. A notice to a member
    that shows no other member at all still means another party: one hidden label. A
    non-member (a coordinator) gets none: it has no signal to combine."""
    if not member:
        return []
    labels = {
        party if party else f"role:{role}" if role else HIDDEN_PARTY for party, role in others
    }
    return sorted(labels or {HIDDEN_PARTY})


@dataclass(frozen=True, slots=True)
class Agreement:
    """One fact from the hit inbox: an open hit on a key of ``kind`` of the own signal
    ``signal_id`` has ``party`` (``HIDDEN_PARTY`` if not visible) among its other members."""

    signal_id: int
    party: str
    kind: PersonKeyKind


@dataclass(frozen=True, slots=True)
class ProbableHit:
    """One own signal and one other party: the kinds that agreed and their score.
    ``shown``: at least the covenant's ``shown_score``; ``disclosable``: at least its
    ``disclosure_score``."""

    signal_id: int
    party: str
    kinds: tuple[PersonKeyKind, ...]
    score: float
    shown: bool
    disclosable: bool


def combine(
    agreements: Iterable[Agreement],
    *,
    own_kinds: Mapping[int, Collection[PersonKeyKind]],
    shown_score: float,
    disclosure_score: float,
    turned_on: Collection[str] | None = None,
) -> dict[tuple[int, str], ProbableHit]:
    """The probable hits of ``agreements``, by (own signal, party).

    Each kind counts once per (signal, party) however many groups or refs name it. The
    score is :func:`person_score.score` of the agreeing kinds *compared* against the own
    signal's kinds (``own_kinds[signal_id]``, restricted to the kinds the covenant has
    ``turned_on`` when given): a kind the own signal has that did not agree counts
    against the hit. The node cannot know which kinds the other party's record had, so a
    part missing on the other side counts as a disagreement too, which lowers recall,
    never precision; the thresholds were chosen for this rule (``docs/linkage.md``).
    The kinds are listed heaviest first (then by name).
    """
    kinds: dict[tuple[int, str], set[PersonKeyKind]] = {}
    for agreement in agreements:
        kinds.setdefault((agreement.signal_id, agreement.party), set()).add(
            PersonKeyKind(agreement.kind)
        )
    out: dict[tuple[int, str], ProbableHit] = {}
    for key, found in sorted(kinds.items()):
        value = score(found, compared_kinds(own_kinds.get(key[0], ()), turned_on))
        out[key] = ProbableHit(
            signal_id=key[0],
            party=key[1],
            kinds=_ordered(found),
            score=value,
            shown=value >= shown_score,
            disclosable=value >= disclosure_score,
        )
    return out


def combine_under(
    agreements: Iterable[Agreement],
    own_kinds: Mapping[int, Collection[PersonKeyKind]],
    matching: PersonMatching | None,
) -> dict[tuple[int, str], ProbableHit]:
    """:func:`combine` under a covenant's ``[person_matching]`` (``None``: the section is
    absent, so the default scores and no kind turned off)."""
    rules_ = matching or PersonMatching()
    return combine(
        agreements,
        own_kinds=own_kinds,
        shown_score=rules_.shown_score,
        disclosure_score=rules_.disclosure_score,
        turned_on=None if matching is None else matching.kinds,
    )


def signal_score(
    agreeing: Iterable[PersonKeyKind],
    own: Iterable[PersonKeyKind],
    matching: PersonMatching | None,
) -> float:
    """The score a node gives one of its signals and another party under a covenant's
    ``[person_matching]``: the ``agreeing`` kinds compared against the signal's ``own``
    kinds that are turned on (all of them without the section). The rule of
    :func:`combine`, for a requester's claim and for the owner's check of a disclosure."""
    return score(agreeing, compared_kinds(own, None if matching is None else matching.kinds))


def compared_kinds(
    own: Iterable[PersonKeyKind], turned_on: Collection[str] | None
) -> frozenset[PersonKeyKind]:
    """The kinds a probable hit is compared on: the own signal's kinds that are matched
    (``turned_on``: the covenant's kinds by wire name; a kind it turned off is not
    matched, so its absence is no evidence)."""
    mine = frozenset(own)
    if turned_on is None:
        return mine
    on = frozenset(turned_on)
    return frozenset(kind for kind in mine if kind.value in on)


def _ordered(kinds: Iterable[PersonKeyKind]) -> tuple[PersonKeyKind, ...]:
    weights: Mapping[PersonKeyKind, float] = {k: score((k,)) for k in kinds}
    return tuple(sorted(weights, key=lambda k: (-weights[k], k.value)))
