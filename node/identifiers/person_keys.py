"""Several keys per person: each survives a different kind of error in the other record.

Today a person is found only through one exact key, ``surname|initial|date``
(:func:`~samenloop.node.identifiers.normalise.parse_person`): a single typo in the
surname, a day and month written the other way round or a ``Terhorst`` against a
``Ter Horst`` loses the hit. Here a person's parts give a small set of keys, one per
:class:`PersonKeyKind`; each key is an exact-equality string that is tokenised
through the same threshold OPRF as every other identifier, under its own domain
(the kind's wire name), so nobody can compute a key's token without the key holders
and the broker sees only which tokens of *one kind* are equal. Two records are a
candidate pair when at least one kind agrees; :mod:`.person_score` weighs which kinds
agreed. ``docs/linkage.md`` says why each kind exists, which errors it survives and
what it costs.

Keys are made of parts that are lowercase ``a-z``/``0-9`` (and ``-`` inside a date),
joined by ``|``; no part can contain ``|``, so a key has exactly one reading.

Pure functions, no I/O.
"""

from __future__ import annotations

import datetime
import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import jellyfish

from samenloop.node.identifiers import normalise as _n

__all__ = [
    "ALL_KINDS",
    "PersonKeyKind",
    "PersonParts",
    "dutch_phonetic",
    "person_keys",
    "person_parts",
]


class PersonKeyKind(enum.StrEnum):
    """The kinds of person key; each value is a stable wire name (a token domain)."""

    #: Dutch phonetic surname, initial and date of birth with day and month unordered:
    #: survives phonetic and vowel errors in the surname, a prefix written apart or glued,
    #: any given-name error but the initial, and day and month swapped.
    PHONETIC_DATE = "person.phonetic_date"
    #: Phonetic first given name with the full date: survives a surname that is misspelt
    #: beyond phonetics, missing or changed.
    GIVEN_DATE = "person.given_date"
    #: Phonetic surname, initial, birth year and month: survives an error in the day.
    NAMES_YEAR_MONTH = "person.names_year_month"
    #: Phonetic surname and phonetic first given name in either order, birth year: survives
    #: errors in day and month, and the names written in each other's field.
    NAMES_YEAR = "person.names_year"
    #: Phonetic surname and first given name in either order, month and day: survives an
    #: error in the year.
    NAMES_MONTH_DAY = "person.names_month_day"
    #: Phonetic surname, initial, postcode and house number: survives any date error.
    NAMES_ADDRESS = "person.names_address"
    #: Phonetic surname and phonetic first given name (in either order) with the postcode:
    #: survives a wrong date together with a wrong house number.
    NAMES_POSTCODE = "person.names_postcode"
    #: Phonetic first given name, postcode and house number: survives a surname and a date
    #: that are both wrong or missing.
    GIVEN_ADDRESS = "person.given_address"
    #: Postcode, house number and full date of birth: survives any name error.
    ADDRESS_DATE = "person.address_date"


ALL_KINDS: Final = frozenset(PersonKeyKind)

_SEP: Final = "|"
_ALNUM: Final = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True, slots=True, repr=False)
class PersonParts:
    """A person's parts, normalised: what keys are made from.

    ``surname`` is the surname's core as :mod:`normalise` makes it (lowercase ``a-z``, no
    tussenvoegsels); ``surname_joined`` is every surname word *with* its tussenvoegsels,
    joined (``Ter Horst`` → ``terhorst``), for the phonetic form. ``given_names`` are the
    given names (or initials) folded to ``a-z``. ``postcode`` (uppercase letters and digits
    folded to lowercase, no spaces) and ``house_number`` (digits, with any addition
    dropped) are both given or both ``None``. ``gender`` is ``"m"``, ``"v"``, ``"x"`` or
    ``None``. Its ``repr`` hides every part.
    """

    surname: str
    surname_joined: str
    given_names: tuple[str, ...]
    birth_date: datetime.date | None
    gender: str | None = None
    postcode: str | None = None
    house_number: str | None = None

    def __repr__(self) -> str:
        return "PersonParts(<redacted>)"


_GENDERS: Final = {
    "m": "m",
    "man": "m",
    "male": "m",
    "v": "v",
    "f": "v",
    "vrouw": "v",
    "female": "v",
    "x": "x",
    "o": "x",
    "onbekend": "x",
}


def person_parts(
    surname: str | None,
    given_names: str | None,
    birth_date: str | datetime.date | None,
    *,
    prefix: str = "",
    gender: str | None = None,
    postcode: str | None = None,
    house_number: str | int | None = None,
    field: str = "value",
    today: datetime.date | None = None,
) -> PersonParts:
    """Parse a person's parts given in separate fields, as the BRP keeps them.

    ``surname``, ``given_names``, ``prefix`` (voorvoegsel) and ``birth_date`` are read as
    :func:`normalise.parse_person_parts` reads them; the surname, the given names (not both)
    and the birth date may be ``None`` where the source has none: then no key that needs
    them is made. ``postcode`` is taken as
    written (any country: letters and digits, spaces and dashes ignored); with it a house
    number 1..99999 (an addition after the digits is dropped). Raises
    :class:`InvalidIdentifier` (``person.<rule>``) naming ``field``.
    """
    fail = _n._Fail(_n.IdentifierType.PERSON, field)
    surname_text = "" if surname is None else _n._clean(surname, fail)
    given_text = "" if given_names is None else _n._clean(given_names, fail)
    if not isinstance(prefix, str):
        raise fail("name", "surname prefix (voorvoegsel) must be text")
    prefix_text = _n._clean(prefix, fail)
    if any(c in text for text in (surname_text, given_text, prefix_text) for c in ",;"):
        raise fail("name", "separate name fields must not contain ',' or ';' (one name part each)")
    given = _n._tokens(given_text)
    _n._check_given_names(given, fail)
    words = _n._tokens(prefix_text) + _n._tokens(surname_text)
    if not words and not given:
        raise fail("name", "person needs a surname or a given name")
    core = _n._surname_core(words, fail) if words else ""
    if given:
        _n._initial(given, fail)  # refuses given names without a letter
    folded_given = tuple(letters for t in given if (letters := _n._NOT_LETTER.sub("", _n._fold(t))))
    joined = "".join(_n._NOT_LETTER.sub("", _n._fold(w)) for w in words)
    date = (
        None
        if birth_date is None
        else _n._birth_date(_n._date_value(birth_date, fail), fail, today)
    )
    return PersonParts(
        surname=core,
        surname_joined=joined or core,
        given_names=folded_given,
        birth_date=date,
        gender=_gender(gender, fail),
        **_address(postcode, house_number, fail),
    )


def _gender(gender: str | None, fail: _n._Fail) -> str | None:
    if gender is None:
        return None
    if not isinstance(gender, str):
        raise fail("gender", "gender must be text")
    text = _n._clean(gender, fail).casefold()
    if not text:
        return None
    if text not in _GENDERS:
        raise fail("gender", "gender must be one of m, v, x (or man, vrouw, onbekend)")
    return _GENDERS[text]


_HOUSE: Final = re.compile(r"0*([1-9][0-9]{0,4})(?:[^0-9].*)?", re.ASCII | re.DOTALL)


def _address(
    postcode: str | None, house_number: str | int | None, fail: _n._Fail
) -> dict[str, str | None]:
    if postcode is None and house_number is None:
        return {"postcode": None, "house_number": None}
    if postcode is None or house_number is None:
        raise fail("address", "postcode and house number go together: give both or neither")
    if not isinstance(postcode, str):
        raise fail("address", "postcode must be text")
    code = _ALNUM.sub("", _n._fold(_n._clean(postcode, fail)))
    if not code or len(code) > 10:
        raise fail("address", "postcode must have 1 to 10 letters or digits")
    number_text = str(house_number) if isinstance(house_number, int) else house_number
    if not isinstance(number_text, str):
        raise fail("address", "house number must be text or a number")
    match = _HOUSE.fullmatch(_n._clean(number_text, fail))
    if match is None:
        raise fail("address", "house number must start with a number from 1 to 99999")
    return {"postcode": code, "house_number": match[1]}


# --- Dutch phonetics ----------------------------------------------------------

#: Tussenvoegsels as they appear glued to the front of a surname (``Vandijk``,
#: ``Terhorst``, ``Vanderberg``), longest first. A glued prefix is dropped only if at least
#: three letters remain, so that ``Terhorst`` and ``Ter Horst`` (core ``horst``) meet.
_GLUED_PREFIXES: Final = (
    "vanden",
    "vander",
    "vande",
    "vant",
    "van",
    "inthe",
    "int",
    "opde",
    "opden",
    "ter",
    "ten",
    "den",
    "der",
    "de",
)

#: The Dutch rule table, applied in order to a folded name (``a-z`` only). Each rule maps
#: spellings that Dutch speakers write for one sound onto one form.
_DUTCH_RULES: Final[tuple[tuple[re.Pattern[str], str], ...]] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"eij|eiy|ij|ei|ey|y", "i"),  # ij/y, ei/ij: Meijer, Meyer, Meier; Huygens/Huijgens
        (r"ae", "a"),  # old spelling: Maes/Maas
        (r"(?:au|ou)w?", "au"),  # ou/au(w): Bouman, Bauman, Bouwman
        (r"sch", "s"),  # sch: Schmidt/Smit, Visch/Vis
        (r"ch|gh", "g"),  # ch/g: Gerritsen/Cherritsen, Hoogh/Hoog
        (r"ck", "k"),
        (r"c(?=[eiy])", "s"),
        (r"c", "k"),  # c/k: Claassen/Klaassen, Cornelissen/Kornelissen
        (r"qu", "kw"),
        (r"q", "k"),
        (r"x", "ks"),
        (r"ph", "f"),
        (r"th", "t"),
        (r"dt", "t"),  # dt/t: Smidt/Smit
        (r"d$", "t"),  # final devoicing: Brand/Brant
        (r"z", "s"),  # Zwart/Swart
        (r"v", "f"),  # Vries/Fries
        (r"(.)\1+", r"\1"),  # double letters: Jansen/Janssen, Dekker/Deker
    )
)


def _strip_glued_prefix(name: str) -> str:
    for glued in _GLUED_PREFIXES:
        if name.startswith(glued) and len(name) - len(glued) >= 3:
            return name[len(glued) :]
    return name


def dutch_phonetic(name: str, *, surname: bool = True) -> str:
    """The Dutch phonetic form of a (folded or raw) name: spellings of one sound meet.

    Case, diacritics, spaces, hyphens and apostrophes do not matter. For a surname
    (``surname=True``) tussenvoegsels are removed whether written apart or glued to the
    front (``Ter Horst``, ``Terhorst`` and ``Horst`` meet), then the Dutch rule table
    maps ij/y/ei, ou/au, sch, ch/g, c/k, dt/t and the like onto one form and finally
    :func:`jellyfish.metaphone` reduces it to its consonant skeleton (so a typo in a
    vowel does not matter either). Empty when the name has no letters.
    """
    words = [_n._NOT_LETTER.sub("", _n._fold(w)) for w in _n._tokens(name.replace("'", " "))]
    words = [w for w in words if w]
    if surname:
        kept = [w for w in words if w not in _n.TUSSENVOEGSELS] or words[-1:]
        text = _strip_glued_prefix("".join(kept))
    else:
        text = "".join(words)
    for pattern, replacement in _DUTCH_RULES:
        text = pattern.sub(replacement, text)
    if not text:
        return ""
    return _ALNUM.sub("", jellyfish.metaphone(text).lower())


# --- keys -------------------------------------------------------------------


def person_keys(
    parts: PersonParts, kinds: Iterable[PersonKeyKind] = ALL_KINDS
) -> dict[PersonKeyKind, str]:
    """The keys of ``parts`` for each of ``kinds`` that its parts allow.

    A kind is left out when a part it needs is missing (no birth date, no address) or
    its phonetic form is empty. Deterministic: the same parts give the same keys.
    """
    wanted = frozenset(kinds)
    surname = _ALNUM.sub("", dutch_phonetic(parts.surname_joined))
    first = parts.given_names[0] if parts.given_names else ""
    # An initial alone is no name to key on: "j" with a date is shared by too many people.
    given = _ALNUM.sub("", dutch_phonetic(first, surname=False)) if len(first) > 1 else ""
    initial = first[:1]
    date = parts.birth_date
    address = (
        (parts.postcode, parts.house_number)
        if parts.postcode is not None and parts.house_number is not None
        else None
    )
    iso = date.isoformat() if date else None
    # Day and month as an unordered pair: a date written with day and month swapped meets.
    unordered = (
        f"{date.year:04d}-{min(date.month, date.day):02d}-{max(date.month, date.day):02d}"
        if date
        else None
    )
    # Surname and first given name as an unordered pair: names in each other's field meet.
    pair = "|".join(sorted((surname, given))) if surname and given else None
    candidates: dict[PersonKeyKind, tuple[str, ...] | None] = {
        PersonKeyKind.PHONETIC_DATE: (
            (surname, initial, unordered) if unordered and surname and initial else None
        ),
        PersonKeyKind.GIVEN_DATE: (given, iso) if iso and given else None,
        PersonKeyKind.NAMES_YEAR_MONTH: (
            (surname, initial, f"{date.year:04d}-{date.month:02d}")
            if date and surname and initial
            else None
        ),
        PersonKeyKind.NAMES_YEAR: (pair, f"{date.year:04d}") if date and pair else None,
        PersonKeyKind.NAMES_MONTH_DAY: (
            (pair, f"{date.month:02d}-{date.day:02d}") if date and pair else None
        ),
        PersonKeyKind.NAMES_ADDRESS: (surname, initial, *address)
        if address and surname and initial
        else None,
        PersonKeyKind.NAMES_POSTCODE: (pair, parts.postcode) if pair and parts.postcode else None,
        PersonKeyKind.GIVEN_ADDRESS: (given, *address) if address and given else None,
        PersonKeyKind.ADDRESS_DATE: (*address, iso) if address and iso else None,
    }
    return {
        kind: _SEP.join(value)
        for kind, value in candidates.items()
        if kind in wanted and value is not None
    }
