"""Identifier normalisation: every way a partner writes an identifier, one canonical form.

Two partners holding signals about the same subject only find each other if they
turn the same identifier into the same token, so each identifier type below has
exactly one canonical form, and that string is what gets tokenised. A value that
breaks a rule of its type is refused with :class:`InvalidIdentifier`, whose
``reason`` is ``"<type>.<rule>"`` (for example ``"bsn.check_digit"``). Error
messages say which rule failed and never repeat the raw value.

Canonical forms (``docs/identifiers.md`` has the accepted inputs and examples):

==========  ====================================  ==========================================
type        canonical form                        example
==========  ====================================  ==========================================
bsn         9 digits                              ``111222333``
rsin        9 digits                              ``002345675``
kvk         8 digits                              ``01234567``
vestiging   12 digits                             ``000037178598``
address     ``PPPPLL N`` or ``PPPPLL N T``        ``1234AB 12``, ``1234AB 12 A``
bag         16 digits                             ``0363010000659112``
kenteken    6 uppercase letters/digits            ``12ABC3``
iban        compact, uppercase                    ``NL91ABNA0417164300``
phone       E.164                                 ``+31612345678``
email       ``local@domain``, lowercase, ASCII    ``jan@xn--bcher-kva.example``
person      ``surname|initial|YYYY-MM-DD``        ``vries|j|1980-03-15``
==========  ====================================  ==========================================

Rules common to every type: the value must be a ``str`` that is not empty or only
whitespace (``<type>.empty``) and at most 256 characters long (``<type>.too_long``).
Before the type's own rules run, invisible format characters (zero-width spaces,
byte-order marks, soft hyphens) are removed, the text is NFKC-normalised (so
full-width digits and non-breaking spaces become plain ones), every Unicode dash
becomes ``-`` and surrounding whitespace is stripped.

Per type:

* **bsn**, **rsin** — an optional label (``BSN``, ``BSN-nummer``, ``burgerservicenummer``;
  ``RSIN``, ``RSIN-nummer``) is dropped; spaces, dots and dashes are ignored; 9 digits
  that are not all zero and pass the 11-test (elfproef), checked with
  :mod:`stdnum.nl.bsn` (the RSIN uses the same test; python-stdnum has no module of
  its own for it).
* **kvk** — an optional ``KvK``/``KvK-nummer``/``KvK nr.`` label is dropped; spaces,
  dots and dashes are ignored. No check digit exists, so 8 digits that are not all
  zero are all we can require.
* **vestiging** — exactly 12 digits, not all zero. Dropped leading zeros are never
  restored: a vestigingsnummer without its zeros has 8 digits and would then be
  indistinguishable from a KvK number in the wrong column.
* **address** — postcode (4 digits not starting with 0, then 2 letters other than
  SA, SD, SS; checked with :mod:`stdnum.nl.postcode`), house number 1..99999 and an
  optional addition of up to 5 letters/digits (the BAG huisletter plus up to 4
  characters of huisnummertoevoeging). Spaces, commas, semicolons, pipes, slashes,
  dots and dashes may separate the parts; separators inside the addition are
  dropped, so ``12-A``, ``12a``, ``12 A`` and ``12A`` are one address. ``hs`` and
  ``huis`` are written as ``H``. Ranges and lists of numbers (``12 t/m 14``,
  ``12-14``, ``12 en 14``) are refused. Canonical: postcode without space, a space,
  the number without leading zeros, and, if there is one, a space and the addition
  in uppercase.
* **bag** — a verblijfsobject id: 4-digit gemeentecode (not ``0000``), object type
  ``01``, 10-digit number; an ``NL.IMBAG.Verblijfsobject.`` prefix is accepted.
* **kenteken** — letters and digits, separators (spaces, dashes, dots) ignored, an
  ``NL`` prefix accepted; the 6 characters must follow one of the RDW sidecodes
  1-14. Vowels are not refused (older series contain them).
* **iban** — an optional ``IBAN`` label is dropped, separators ignored; 15-34
  characters, country code and check digits in place, the mod-97 check
  (:mod:`stdnum.iso7064.mod_97_10`), the country's BBAN structure and, where
  python-stdnum knows one, the national check digits (:mod:`stdnum.iban`); a bank
  code that python-stdnum's bundled bank list does not know is not a refusal.
* **phone** — parsed with phonenumbers, default region NL, must be a valid number;
  canonical E.164. An extension is dropped.
* **email** — ``local@domain``: the local part is a dot-atom of RFC 5322 ASCII
  characters (quoted local parts are refused), up to 64 characters; the domain
  has at least two labels and is converted with IDNA 2008 (UTS 46 mapping) to its
  ASCII (punycode) form; all lowercase. ``+tags`` and dots are kept.
* **person** — name and date of birth, see :func:`parse_person` and
  :func:`parse_person_parts`.

Leading zeros: a BSN or RSIN of 8 digits, a KvK number of 7 and a BAG id of 15
are refused (``<type>.length``) unless the caller says the source dropped
leading zeros (``leading_zero_dropped=True``; on the command line
``--leading-zero-dropped``): dropping any one digit of a valid BSN gives, once
zero-padded, a *different* valid BSN about one time in eleven, so restoring
zeros silently would turn typos into other people.

Over 800 lines: one normaliser per identifier type and the table of types; a reader
looks a type up here, next to the rules of every other type.
"""

from __future__ import annotations

import datetime
import enum
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import idna
import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum.exceptions import InvalidChecksum, InvalidComponent, ValidationError
from stdnum.iso7064 import mod_97_10
from stdnum.nl import bsn as stdnum_bsn
from stdnum.nl import postcode as stdnum_postcode
from stdnum.util import get_cc_module

from samenloop.policies.errors import InvalidIdentifier, UnknownType

__all__ = [
    "DESCRIPTIONS",
    "MAX_LENGTH",
    "Identifier",
    "IdentifierType",
    "identifier_type",
    "parse",
    "parse_person",
    "parse_person_parts",
]

#: Longest raw value accepted, in characters, for any type.
MAX_LENGTH: Final = 256


class IdentifierType(enum.StrEnum):
    """The identifier types; each value is the name used on the command line."""

    BSN = "bsn"
    RSIN = "rsin"
    KVK = "kvk"
    VESTIGING = "vestiging"
    ADDRESS = "address"
    BAG = "bag"
    KENTEKEN = "kenteken"
    IBAN = "iban"
    PHONE = "phone"
    EMAIL = "email"
    PERSON = "person"


#: One line per type, for ``samenloop identifier types`` and for help texts.
DESCRIPTIONS: Final[dict[IdentifierType, str]] = {
    IdentifierType.BSN: "burgerservicenummer (citizen service number), 9 digits, elfproef",
    IdentifierType.RSIN: "RSIN (legal entity number), 9 digits, elfproef",
    IdentifierType.KVK: "KvK-nummer (chamber of commerce number), 8 digits",
    IdentifierType.VESTIGING: "KvK vestigingsnummer (establishment number), 12 digits",
    IdentifierType.ADDRESS: "postcode + huisnummer + toevoeging, e.g. '1234 AB 12-a'",
    IdentifierType.BAG: "BAG verblijfsobject id, 16 digits",
    IdentifierType.KENTEKEN: "Dutch licence plate (kenteken), any sidecode",
    IdentifierType.IBAN: "IBAN bank account number, any country, mod-97",
    IdentifierType.PHONE: "phone number, E.164; national numbers are taken as Dutch",
    IdentifierType.EMAIL: "e-mail address",
    IdentifierType.PERSON: (
        "name and date of birth as 'NAME;DATE', e.g. 'Vries, Jan de;1980-03-15'"
    ),
}

_LABELS: Final[dict[IdentifierType, str]] = {
    IdentifierType.BSN: "BSN",
    IdentifierType.RSIN: "RSIN",
    IdentifierType.KVK: "KvK number",
    IdentifierType.VESTIGING: "vestigingsnummer",
    IdentifierType.ADDRESS: "address",
    IdentifierType.BAG: "BAG id",
    IdentifierType.KENTEKEN: "kenteken",
    IdentifierType.IBAN: "IBAN",
    IdentifierType.PHONE: "phone number",
    IdentifierType.EMAIL: "e-mail address",
    IdentifierType.PERSON: "person",
}


@dataclass(frozen=True, slots=True, repr=False)
class Identifier:
    """A validated identifier in its canonical form: what gets tokenised.

    Its ``repr`` (and so its ``str``) hides the value: raw identifiers are never
    logged.
    """

    type: IdentifierType
    canonical: str

    def __repr__(self) -> str:
        return f"Identifier(type={self.type.value}, canonical=<redacted>)"


def identifier_type(name: str) -> IdentifierType:
    """The type called ``name`` (case and surrounding spaces do not matter)."""
    if isinstance(name, IdentifierType):
        return name
    if isinstance(name, str):
        try:
            return IdentifierType(name.strip().lower())
        except ValueError:
            pass
    known = ", ".join(t.value for t in IdentifierType)
    raise UnknownType(
        f"unknown identifier type; known types: {known}",
        field="type",
        reason="identifier.unknown_type",
    )


def parse(
    type: IdentifierType | str,
    value: str,
    *,
    field: str = "value",
    today: datetime.date | None = None,
    leading_zero_dropped: bool = False,
) -> Identifier:
    """Parse ``value`` as an identifier of ``type`` into its canonical form.

    Raises :class:`UnknownType` for an unknown type and :class:`InvalidIdentifier`,
    with ``field`` and a ``reason`` naming the failed rule, for an invalid value.
    For ``person`` the value is ``"NAME;DATE"``; ``today`` (default: the local
    date) bounds its date of birth.

    ``leading_zero_dropped=True`` says that the source (typically a spreadsheet
    column stored as numbers) dropped leading zeros: then exactly one missing
    leading zero is put back for bsn, rsin (8 digits), kvk (7) and bag (15).
    Without it those lengths are refused, because one digit dropped anywhere by a
    typo gives the same lengths and, zero-padded, often a valid number of
    someone else.
    """
    kind = identifier_type(type)
    fail = _Fail(kind, field)
    text = _prepare(value, fail)
    if kind is IdentifierType.PERSON:
        name, sep, birth_date = text.rpartition(";")
        if not sep:
            raise fail("format", "person must be written as NAME;DATE, e.g. 'J. Jansen;1980-03-15'")
        return Identifier(kind, _person(name, birth_date, fail, today))
    return Identifier(kind, _PARSERS[kind](text, fail, leading_zero_dropped))


def parse_person(
    name: str,
    birth_date: str | datetime.date,
    *,
    field: str = "value",
    today: datetime.date | None = None,
) -> Identifier:
    """The person key for a name and a date of birth: ``surname|initial|YYYY-MM-DD``.

    *surname* is the surname's core in lowercase ASCII letters: diacritics are
    removed (NFKD; also ß→ss, æ→ae, ø→o, œ→oe, ł→l, đ→d, þ→th), and so are case,
    spacing, hyphens, apostrophes and every tussenvoegsel word (de, van, der,
    ter, 't, d', la, von, ... — the surname prefixes Dutch registers keep apart)
    unless the surname has no other word, in which case its last word is kept.
    *initial* is the first letter of the first given name.

    With a comma the name is ``Surname, Given names``: ``DE VRIES, Jan``,
    ``Vries, J. de``, ``Vries de, J.``, ``Vries, de, Jan``, ``García López, José``,
    ``Jansen-de Vries, Anna`` (core ``jansenvries``). A given-name part of
    tussenvoegsels only (``Vries, de``) is refused (``person.given_name``).

    Without a comma the name is read as given names followed by the surname, and
    only when exactly one split is possible: the given names have no
    tussenvoegsel (one starts the surname) and the surname has no initial. So
    ``Jan de Vries``, ``J. de Vries``, ``J.W. van den Berg``, ``Anna Jansen-de
    Vries`` and ``Jan Jansen`` are read, but ``Jan Willem de Vries``, ``Mohammed
    El Amrani`` and ``José García López`` are refused (``person.ambiguous``): the
    surname could start at the second or the third word. Write those as
    ``Surname, Given names`` or use :func:`parse_person_parts`. Leading titles
    (dhr., mevr., mr., dr., drs., ir., ing., prof.) are ignored.

    The date of birth is a :class:`datetime.date` or a string ``YYYY-MM-DD``,
    ``DD-MM-YYYY``, ``DD/MM/YYYY``, ``DD.MM.YYYY`` or ``YYYYMMDD``; it must exist,
    be on or after 1900-01-01 and not after ``today``.
    """
    fail = _Fail(IdentifierType.PERSON, field)
    text = _prepare(name, fail)
    return Identifier(
        IdentifierType.PERSON, _person(text, _date_value(birth_date, fail), fail, today)
    )


def parse_person_parts(
    surname: str,
    given_names: str,
    birth_date: str | datetime.date,
    *,
    prefix: str = "",
    field: str = "value",
    today: datetime.date | None = None,
) -> Identifier:
    """The person key from a name in separate fields, as the BRP keeps it.

    ``surname`` is the geslachtsnaam, ``given_names`` the voornamen and ``prefix``
    the voorvoegsel (``de``, ``van der``; empty when there is none). The key is
    the one :func:`parse_person` gives for ``"{prefix} {surname}, {given_names}"``:
    the prefix is read exactly like words written before the surname, so a
    voorvoegsel that is not a tussenvoegsel here (``El``, ``Al``, ``Ben``) stays
    part of the surname core. ``,`` and ``;`` are refused in every field.
    """
    fail = _Fail(IdentifierType.PERSON, field)
    surname_text = _prepare(surname, fail)
    given_text = _prepare(given_names, fail)
    if not isinstance(prefix, str):
        raise fail("name", "surname prefix (voorvoegsel) must be text")
    prefix_text = _clean(prefix, fail)
    if any(c in text for text in (surname_text, given_text, prefix_text) for c in ",;"):
        raise fail("name", "separate name fields must not contain ',' or ';' (one name part each)")
    given = _tokens(given_text)
    _check_given_names(given, fail)
    core = _surname_core(_tokens(prefix_text) + _tokens(surname_text), fail)
    initial = _initial(given, fail)
    date = _birth_date(_date_value(birth_date, fail), fail, today)
    return Identifier(IdentifierType.PERSON, f"{core}|{initial}|{date.isoformat()}")


# --- shared -----------------------------------------------------------------


class _Fail:
    """Builds the InvalidIdentifier for one type and field: ``raise fail(rule, msg)``."""

    __slots__ = ("field", "kind")

    def __init__(self, kind: IdentifierType, field: str) -> None:
        self.kind = kind
        self.field = field

    def __call__(self, rule: str, message: str) -> InvalidIdentifier:
        return InvalidIdentifier(message, field=self.field, reason=f"{self.kind.value}.{rule}")

    @property
    def label(self) -> str:
        return _LABELS[self.kind]


_DASHES: Final = dict.fromkeys(
    (ord(c) for c in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"), "-"
)
_SEPARATORS: Final = re.compile(r"[\s.\-]+")
_DIGITS: Final = re.compile(r"[0-9]+", re.ASCII)


def _prepare(value: object, fail: _Fail) -> str:
    """Type, size and Unicode clean-up common to all types."""
    if not isinstance(value, str):
        raise fail("empty", f"{fail.label} is missing (expected text)")
    text = _clean(value, fail)
    if not text:
        raise fail("empty", f"{fail.label} is empty")
    return text


def _clean(value: str, fail: _Fail) -> str:
    """``value`` without format characters, NFKC-normalised, dashes unified, stripped."""
    if len(value) > MAX_LENGTH:
        raise fail("too_long", f"{fail.label} is longer than {MAX_LENGTH} characters")
    text = "".join(c for c in value if unicodedata.category(c) != "Cf")
    return unicodedata.normalize("NFKC", text).translate(_DASHES).strip()


def _digits(text: str, fail: _Fail) -> str:
    """The digits of a number written with optional spaces, dots and dashes."""
    digits = _SEPARATORS.sub("", text)
    if not _DIGITS.fullmatch(digits):
        raise fail(
            "format",
            f"{fail.label} may contain only digits (with spaces, dots or dashes between them)",
        )
    return digits


def _fixed_length(digits: str, length: int, fail: _Fail, *, restore_zero: bool) -> str:
    """``digits`` if it has ``length`` digits, not all zero.

    With ``restore_zero`` (the caller said its source dropped leading zeros) one
    missing leading zero is put back. Without it a value one digit short is
    refused with a hint, since a typo that drops any digit looks the same.
    """
    if restore_zero and len(digits) == length - 1:
        digits = "0" + digits
    if len(digits) != length:
        hint = ""
        if len(digits) == length - 1:
            hint = (
                "; if your spreadsheet dropped a leading zero, import this column with "
                "leading zeros restored"
            )
        raise fail("length", f"{fail.label} must have {length} digits, not {len(digits)}{hint}")
    if digits.count("0") == length:
        raise fail("format", f"{fail.label} cannot be all zeros")
    return digits


def _strip_label(text: str, label: re.Pattern[str]) -> str:
    match = label.match(text)
    return text[match.end() :] if match else text


# --- numbers ------------------------------------------------------------------

_NUMBER_WORD: Final = r"(?:[\s-]*(?:nummer|nr\.?|number|no\.?))?\s*[:.]?\s*"
_ELFPROEF_LABELS: Final = {
    IdentifierType.BSN: re.compile(r"(?:bsn|burger[\s-]*service[\s-]*nummer)" + _NUMBER_WORD, re.I),
    IdentifierType.RSIN: re.compile(r"rsin" + _NUMBER_WORD, re.I),
}


def _elfproef_number(text: str, fail: _Fail, zero_dropped: bool) -> str:
    text = _strip_label(text, _ELFPROEF_LABELS[fail.kind])
    digits = _fixed_length(_digits(text, fail), 9, fail, restore_zero=zero_dropped)
    if stdnum_bsn.checksum(digits) != 0:
        raise fail("check_digit", f"{fail.label} fails the 11-test (elfproef)")
    return digits


_KVK_LABEL: Final = re.compile(r"kvk" + _NUMBER_WORD, re.I)


def _kvk(text: str, fail: _Fail, zero_dropped: bool) -> str:
    text = _strip_label(text, _KVK_LABEL)
    return _fixed_length(_digits(text, fail), 8, fail, restore_zero=zero_dropped)


def _vestiging(text: str, fail: _Fail, zero_dropped: bool) -> str:
    # Never restored, whatever the caller says: see the module docstring.
    return _fixed_length(_digits(text, fail), 12, fail, restore_zero=False)


_BAG_PREFIX: Final = re.compile(r"NL\.IMBAG\.VERBLIJFSOBJECT\.", re.I)
_BAG_OBJECT_TYPES: Final = {
    "01": "verblijfsobject",
    "02": "ligplaats",
    "03": "standplaats",
    "10": "pand",
    "20": "nummeraanduiding",
    "30": "openbare ruimte",
}


def _bag(text: str, fail: _Fail, zero_dropped: bool) -> str:
    text = _strip_label(text, _BAG_PREFIX)
    digits = _fixed_length(_digits(text, fail), 16, fail, restore_zero=zero_dropped)
    if digits[:4] == "0000":
        raise fail("gemeentecode", "BAG id has gemeentecode 0000, which no municipality has")
    object_type = digits[4:6]
    if object_type != "01":
        kind = _BAG_OBJECT_TYPES.get(object_type, "unknown")
        raise fail(
            "object_type",
            f"BAG id has object type code {object_type} ({kind}); "
            "only verblijfsobject ids (code 01) are accepted",
        )
    return digits


# --- address ------------------------------------------------------------------

_POSTCODE: Final = re.compile(r"(?:NL-?\s*)?([0-9]{4})\s*([A-Z]{2})(?![A-Z])", re.ASCII)
_ADDRESS_SEPARATORS: Final = re.compile(r"[\s,;|/.\-]+")
_LEADING_SEPARATORS: Final = re.compile(r"\A[\s,;|/.\-]+")
_HOUSE_NUMBER: Final = re.compile(r"[0-9]+", re.ASCII)
_ADDITION: Final = re.compile(r"[A-Z0-9]{1,5}", re.ASCII)
#: Words for a range or list of house numbers, anywhere after the house number:
#: "t/m", "t.m." always; "tm", "tot", "tot en met", "en" when a number follows;
#: "&" and "+" always.
_RANGE_WORDS: Final = re.compile(
    r"(?<![A-Z])T\s*[/.]\s*M(?![A-Z])"
    r"|(?<![A-Z])(?:TOT\s+EN\s+MET|TM|TOT|EN)\.?\s*(?=[0-9])"
    r"|[&+]",
    re.ASCII,
)
#: After the house number: an optional huisletter, then "-" or "/", then a number.
_DASHED_NUMBER: Final = re.compile(r"\s*([A-Z]?)\s*[-/]\s*([0-9]+)", re.ASCII)
#: Written forms of one addition that the BAG records in one way. Amsterdam
#: records the ground-floor dwelling ("huis", abbreviated "hs") as the
#: huisnummertoevoeging "H"; nothing else is merged (see docs/identifiers.md).
_ADDITION_WORDS: Final = {"HS": "H", "HUIS": "H"}


def _is_range(rest: str, number: int) -> bool:
    """Whether the text after house number ``number`` makes it a range or a list.

    ``12 t/m 14``, ``12 tot 14``, ``12 en 14``, ``12 & 14``: always. A number right
    after a dash or slash is a range when it is larger than the house number
    (``12-14``, ``12/14``): ranges are written low to high, so a smaller number is a
    toevoeging, as in the usual notation ``12-1`` (house 12, floor 1) and
    ``1-1``. A number starting with 0 is a toevoeging too (``12-02``). After a
    huisletter only the house number itself starts a range (``12a-12c``): ``1A/101``
    is huisletter A with toevoeging 101.
    """
    if _RANGE_WORDS.search(rest):
        return True
    dashed = _DASHED_NUMBER.match(rest)
    if not dashed or dashed[2].startswith("0"):
        return False
    second = int(dashed[2])
    return second == number if dashed[1] else second > number


def _address(text: str, fail: _Fail, zero_dropped: bool) -> str:
    text = text.upper()
    match = _POSTCODE.match(text)
    if not match:
        raise fail("postcode", "address must start with a postcode: 4 digits and 2 letters")
    try:
        postcode = stdnum_postcode.validate(match[1] + match[2]).replace(" ", "")
    except ValidationError:
        raise fail(
            "postcode",
            "postcode must not start with 0 and its letters must not be SA, SD or SS",
        ) from None
    rest = _LEADING_SEPARATORS.sub("", text[match.end() :])
    number = _HOUSE_NUMBER.match(rest)
    if not number:
        raise fail("huisnummer", "address has no house number (huisnummer) after the postcode")
    if len(number[0].lstrip("0")) > 5 or int(number[0]) == 0:
        raise fail("huisnummer", "house number (huisnummer) must be between 1 and 99999")
    house_number = int(number[0])
    rest = rest[number.end() :]
    if _is_range(rest, house_number):
        raise fail(
            "range",
            "address has a range or list of house numbers (such as 't/m' or two numbers "
            "joined by a dash); give one address per signal. A toevoeging that is a number "
            "larger than the house number can be separated by a space instead of a dash",
        )
    parts = [_ADDITION_WORDS.get(part, part) for part in _ADDRESS_SEPARATORS.split(rest)]
    addition = "".join(parts)
    addition = _ADDITION_WORDS.get(addition, addition)
    canonical = f"{postcode} {house_number}"
    if addition:
        if not _ADDITION.fullmatch(addition):
            raise fail(
                "toevoeging",
                "addition (huisletter/toevoeging) must be at most 5 letters or digits",
            )
        canonical += f" {addition}"
    return canonical


# --- kenteken -----------------------------------------------------------------

#: RDW sidecodes: L is a letter, D a digit; the dashes show how plates are written.
SIDECODES: Final[dict[int, str]] = {
    1: "LL-DD-DD",
    2: "DD-DD-LL",
    3: "DD-LL-DD",
    4: "LL-DD-LL",
    5: "LL-LL-DD",
    6: "DD-LL-LL",
    7: "DD-LLL-D",
    8: "D-LLL-DD",
    9: "LL-DDD-L",
    10: "L-DDD-LL",
    11: "LLL-DD-L",
    12: "L-DD-LLL",
    13: "D-LL-DDD",
    14: "DDD-LL-D",
}
_SIDECODE_SHAPES: Final = frozenset(p.replace("-", "") for p in SIDECODES.values())
_ALNUM: Final = re.compile(r"[A-Z0-9]+", re.ASCII)


def _kenteken(text: str, fail: _Fail, zero_dropped: bool) -> str:
    plate = _SEPARATORS.sub("", text.upper())
    if not _ALNUM.fullmatch(plate):
        raise fail("format", "kenteken may contain only letters, digits, spaces and dashes")
    if len(plate) == 8 and plate.startswith("NL"):
        plate = plate[2:]
    if len(plate) != 6:
        raise fail("length", f"kenteken must have 6 letters and digits, not {len(plate)}")
    shape = "".join("D" if c.isdigit() else "L" for c in plate)
    if shape not in _SIDECODE_SHAPES:
        raise fail(
            "sidecode", "kenteken does not follow any RDW sidecode (pattern of letters and digits)"
        )
    return plate


# --- iban ---------------------------------------------------------------------

_IBAN_LABEL: Final = re.compile(r"IBAN\s*:?\s*", re.I)
_IBAN_SHAPE: Final = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]+", re.ASCII)


def _iban(text: str, fail: _Fail, zero_dropped: bool) -> str:
    text = _strip_label(text, _IBAN_LABEL)
    number = _SEPARATORS.sub("", text).upper()
    if not _ALNUM.fullmatch(number):
        raise fail("format", "IBAN may contain only letters, digits, spaces and dashes")
    if not 15 <= len(number) <= 34:
        raise fail("length", f"IBAN must have 15 to 34 characters, not {len(number)}")
    if not _IBAN_SHAPE.fullmatch(number):
        raise fail("format", "IBAN must start with a 2-letter country code and 2 check digits")
    checksum_ok = mod_97_10.is_valid(number[4:] + number[:4])
    if not checksum_ok:
        # Report a wrong country or account format before the checksum: it says more.
        number = number[:2] + stdnum_iban.calc_check_digits(number) + number[4:]
    # What python-stdnum (2.x) raises, and what we make of it:
    # - stdnum.iban.validate(check_country=False) checks mod-97 (InvalidChecksum; the
    #   check digits are right by now), looks the country up in its IBAN registry
    #   (InvalidComponent: the country does not use IBAN -> iban.country) and matches
    #   the BBAN against the country's structure (InvalidFormat -> iban.bban).
    # - The country's own module (stdnum.<cc>.iban: be, es, me, no in 2.2) then
    #   checks the national check digits: InvalidChecksum -> iban.national_check
    #   (ES, NO: InvalidFormat/InvalidLength as well, which the BBAN structure
    #   already excludes -> iban.bban). Belgium's module also looks the bank code
    #   up in the bank list bundled with stdnum and raises InvalidComponent when it
    #   is not there (BE68539007547034, a widely used example IBAN, is such a number). A
    #   bundled list is incomplete and goes stale, and a bank code says nothing
    #   about which account is meant, so a failure that comes only from that
    #   lookup is not a refusal: InvalidComponent from a country module is ignored.
    #   It is raised only after the national check digits passed, and
    #   stdnum.iban.validate(check_country=True) cannot tell it apart from an
    #   unknown country, which is why the country module is called here directly.
    try:
        canonical = stdnum_iban.validate(number, check_country=False)
    except InvalidComponent:
        raise fail("country", "IBAN has a country code that does not issue IBANs") from None
    except ValidationError:
        raise fail(
            "bban", "IBAN does not match its country's account number format (length or kind)"
        ) from None
    if not checksum_ok:
        raise fail("checksum", "IBAN fails the mod-97 check (check digits do not match)")
    national = get_cc_module(canonical[:2], "iban")
    if national is not None:
        try:
            national.validate(canonical)
        except InvalidChecksum:
            raise fail(
                "national_check", "IBAN fails its country's own account number check"
            ) from None
        except InvalidComponent:
            pass  # only the bundled bank-code list does not know the bank: see above
        except ValidationError:
            raise fail(
                "bban", "IBAN does not match its country's account number format (length or kind)"
            ) from None
    return canonical


# --- phone --------------------------------------------------------------------


def _phone(text: str, fail: _Fail, zero_dropped: bool) -> str:
    try:
        number = phonenumbers.parse(text, "NL")
    except phonenumbers.NumberParseException:
        raise fail("format", "phone number cannot be read as a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise fail("invalid", "phone number is not a valid number in its country's numbering plan")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


# --- e-mail -------------------------------------------------------------------

_ATOM: Final = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+", re.ASCII)
_ASCII_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)


def _email(text: str, fail: _Fail, zero_dropped: bool) -> str:
    if text.lower().startswith("mailto:"):
        text = text[len("mailto:") :]
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        raise fail("syntax", "e-mail address must have the form local-part@domain")
    if len(local) > 64:
        raise fail("syntax", "e-mail local part (before the @) is longer than 64 characters")
    if not all(_ATOM.fullmatch(atom) for atom in local.split(".")):
        raise fail(
            "syntax",
            "e-mail local part (before the @) has a character that is not allowed, "
            "or a dot at its start, end or twice in a row",
        )
    domain = domain.removesuffix(".")
    try:
        ascii_domain = idna.encode(domain, uts46=True, std3_rules=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        raise fail(
            "domain", "e-mail domain is not a valid (internationalised) domain name"
        ) from None
    labels = ascii_domain.split(".")
    if len(labels) < 2:
        raise fail("domain", "e-mail domain must contain a dot (e.g. example.nl)")
    if len(ascii_domain) > 253 or not all(_ASCII_LABEL.fullmatch(x) for x in labels):
        raise fail("domain", "e-mail domain is not a valid domain name")
    if labels[-1].isdigit():
        raise fail("domain", "e-mail domain must be a name, not an IP address")
    address = f"{local.lower()}@{ascii_domain}"
    if len(address) > 254:
        raise fail("syntax", "e-mail address is longer than 254 characters")
    return address


# --- person -------------------------------------------------------------------

#: Surname prefix words (voorvoegsels) as the Dutch population register (BRP, table
#: 36) keeps them apart from the surname; multi-word ones ("van der", "in 't") are
#: covered word by word. Deliberately left out: words that are common given or
#: family names on their own (ben, bin, al, el, i, a, don, ...).
# fmt: off
TUSSENVOEGSELS: Final = frozenset(
    {
        "'s", "'t", "aan", "auf", "aus", "bij", "d'", "da", "dal", "dalla", "das", "de",
        "degli", "dei", "del", "della", "dem", "den", "der", "des", "di", "die", "do",
        "dos", "du", "het", "in", "l'", "la", "las", "le", "les", "lo", "los", "op",
        "s", "s'", "t", "te", "ten", "ter", "uit", "uijt", "van", "vom", "von", "voor",
        "zu", "zum", "zur",
    }
)
# fmt: on
_TITLES: Final = frozenset(
    {"dhr", "mevr", "mw", "mej", "mr", "mrs", "ms", "dr", "drs", "ir", "ing", "prof", "ds"}
)
_APOSTROPHES: Final = dict.fromkeys((ord(c) for c in "\u2018\u2019\u02bc\u02bb`\u00b4\u2032"), "'")
_FOLD: Final = str.maketrans(
    {
        "ß": "ss",
        "æ": "ae",
        "ø": "o",
        "œ": "oe",
        "ł": "l",
        "đ": "d",
        "ð": "d",
        "þ": "th",
        "\u0131": "i",
    }
)
_ELIDED: Final = re.compile(r"([dls]')(\w.*)")
_NOT_LETTER: Final = re.compile(r"[^a-z]+")


def _fold(word: str) -> str:
    """Lowercase ASCII without diacritics; apostrophes kept (for 't, d')."""
    word = unicodedata.normalize("NFKD", word.casefold().translate(_APOSTROPHES))
    return "".join(c for c in word if not unicodedata.combining(c)).translate(_FOLD)


def _is_tussenvoegsel(token: str) -> bool:
    folded = _fold(token)
    return folded in TUSSENVOEGSELS or _ELIDED.fullmatch(folded) is not None


def _tokens(text: str) -> list[str]:
    """Words of a name part: initials split at dots, hyphens glued to their words."""
    text = re.sub(r"\s*-\s*", "-", text.replace(".", ". "))
    return [t for t in text.split() if t not in {"-", "."}]


def _surname_core(words: list[str], fail: _Fail) -> str:
    parts: list[str] = []
    for word in words:
        for piece in word.split("-"):
            folded = _fold(piece)
            elided = _ELIDED.fullmatch(folded)
            parts.extend(elided.groups() if elided else [folded])
    parts = [p for p in parts if _NOT_LETTER.sub("", p)]
    core = [p for p in parts if p not in TUSSENVOEGSELS] or parts[-1:]
    surname = "".join(_NOT_LETTER.sub("", p) for p in core)
    if not surname:
        raise fail("name", "person's surname has no letters")
    return surname


def _initial(given: list[str], fail: _Fail) -> str:
    while given and _fold(given[0]).rstrip(".") in _TITLES and len(given) > 1:
        given = given[1:]
    for token in given:
        letters = _NOT_LETTER.sub("", _fold(token))
        if letters:
            return letters[0]
    raise fail("name", "person needs a first name or initial as well as a surname")


def _is_initial(token: str) -> bool:
    """A single letter, with or without its dot, that is not a tussenvoegsel."""
    letter = token.rstrip(".")
    return len(letter) == 1 and letter.isalpha() and not _is_tussenvoegsel(token)


def _has_tussenvoegsel(token: str) -> bool:
    """Whether a word, or a part of it between hyphens, is a tussenvoegsel."""
    return any(_is_tussenvoegsel(piece) for piece in token.split("-") if piece)


def _check_given_names(given: list[str], fail: _Fail) -> None:
    if given and all(_is_tussenvoegsel(t) for t in given):
        raise fail(
            "given_name",
            "person's given names consist of tussenvoegsels only (such as 'de' or 'van'); "
            "put the tussenvoegsel with the surname and give a first name or initial",
        )


def _split_without_comma(tokens: list[str], fail: _Fail) -> tuple[list[str], list[str]]:
    """(given names, surname) of ``Given names Surname``, if only one split fits.

    With a tussenvoegsel after the first word, the surname starts at it. Otherwise a
    split fits when no given-name word contains (across a hyphen) a tussenvoegsel and
    no surname word is an initial. If several splits fit, which words belong to the
    surname is a guess (``Mohammed El Amrani``: ``amrani`` or ``elamrani``?), and a
    guess that differs from another partner's reading of the same person gives another
    key; so refuse.
    """
    while len(tokens) > 2 and _fold(tokens[0]).rstrip(".") in _TITLES:
        tokens = tokens[1:]
    # A tussenvoegsel after the first word starts the surname: "Jan Willem de Vries" has
    # given names "Jan Willem" and surname "de Vries", with no guess involved.
    first_prefix = next((i for i, t in enumerate(tokens) if i > 0 and _is_tussenvoegsel(t)), None)
    if (
        first_prefix is not None
        and first_prefix < len(tokens) - 1
        and not any(_is_initial(t) for t in tokens[first_prefix:])
    ):
        return tokens[:first_prefix], tokens[first_prefix:]
    splits = [
        k
        for k in range(1, len(tokens))
        if not any(_has_tussenvoegsel(t) for t in tokens[:k])
        and not any(_is_initial(t) for t in tokens[k:])
    ]
    if not splits:
        raise fail("name", "person needs a first name or initial as well as a surname")
    if len(splits) > 1:
        raise fail(
            "ambiguous",
            "person's name without a comma has more than one word that could belong to "
            "the surname; write it as 'Surname, Given names' or give surname, prefix and "
            "given names in separate fields",
        )
    return tokens[: splits[0]], tokens[splits[0] :]


def _split_name(name: str, fail: _Fail) -> tuple[list[str], list[str]]:
    """(given-name tokens, surname tokens) of a written name."""
    parts = [p.strip() for p in name.split(",")]
    if len(parts) == 1:
        return _split_without_comma(_tokens(name), fail)
    if len(parts) == 2:
        surname, given = _tokens(parts[0]), _tokens(parts[1])
        _check_given_names(given, fail)
        prefix: list[str] = []
        while len(given) > 1 and _is_tussenvoegsel(given[-1]):
            prefix.insert(0, given.pop())
        return given, prefix + surname
    if len(parts) == 3 and all(_is_tussenvoegsel(t) for t in _tokens(parts[1])):
        given = _tokens(parts[2])
        _check_given_names(given, fail)
        return given, _tokens(parts[1]) + _tokens(parts[0])
    raise fail("name", "person's name has too many commas (use 'Surname, Given names')")


_ISO_DATE: Final = re.compile(r"([0-9]{4})-([0-9]{1,2})-([0-9]{1,2})", re.ASCII)
_DUTCH_DATE: Final = re.compile(r"([0-9]{1,2})([-/.])([0-9]{1,2})\2([0-9]{4})", re.ASCII)
_COMPACT_DATE: Final = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})", re.ASCII)
_EARLIEST_BIRTH_DATE: Final = datetime.date(1900, 1, 1)


def _birth_date(
    value: str | datetime.date, fail: _Fail, today: datetime.date | None
) -> datetime.date:
    if isinstance(value, datetime.datetime):
        value = value.date()
    if isinstance(value, datetime.date):
        date = value
    else:
        text = value.strip()
        if iso := _ISO_DATE.fullmatch(text):
            year, month, day = iso[1], iso[2], iso[3]
        elif dutch := _DUTCH_DATE.fullmatch(text):
            year, month, day = dutch[4], dutch[3], dutch[1]
        elif compact := _COMPACT_DATE.fullmatch(text):
            year, month, day = compact[1], compact[2], compact[3]
        else:
            raise fail(
                "birth_date",
                "date of birth must be written YYYY-MM-DD, DD-MM-YYYY, DD/MM/YYYY, "
                "DD.MM.YYYY or YYYYMMDD",
            )
        try:
            date = datetime.date(int(year), int(month), int(day))
        except ValueError:
            raise fail("birth_date", "date of birth is not a date that exists") from None
    if date < _EARLIEST_BIRTH_DATE:
        raise fail("birth_date", "date of birth is before 1900")
    if date > (today or datetime.date.today()):
        raise fail("birth_date", "date of birth is in the future")
    return date


def _date_value(birth_date: object, fail: _Fail) -> str | datetime.date:
    """A date of birth as given to the API: a date, or a string of bounded size."""
    if isinstance(birth_date, datetime.date):
        return birth_date
    if isinstance(birth_date, str):
        if len(birth_date) > MAX_LENGTH:
            raise fail("too_long", "date of birth is too long")
        return unicodedata.normalize("NFKC", birth_date)
    raise fail("birth_date", "date of birth must be a date or a string")


def _person(
    name: str, birth_date: str | datetime.date, fail: _Fail, today: datetime.date | None
) -> str:
    name = name.strip()
    if not name:
        raise fail("name", "person's name is empty")
    given, surname = _split_name(name, fail)
    if not surname:
        raise fail("name", "person needs a first name or initial as well as a surname")
    core = _surname_core(surname, fail)
    initial = _initial(given, fail)
    date = _birth_date(birth_date, fail, today)
    return f"{core}|{initial}|{date.isoformat()}"


_PARSERS: Final[dict[IdentifierType, Callable[[str, _Fail, bool], str]]] = {
    IdentifierType.BSN: _elfproef_number,
    IdentifierType.RSIN: _elfproef_number,
    IdentifierType.KVK: _kvk,
    IdentifierType.VESTIGING: _vestiging,
    IdentifierType.ADDRESS: _address,
    IdentifierType.BAG: _bag,
    IdentifierType.KENTEKEN: _kenteken,
    IdentifierType.IBAN: _iban,
    IdentifierType.PHONE: _phone,
    IdentifierType.EMAIL: _email,
}
