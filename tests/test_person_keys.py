"""Person keys: Dutch phonetics, which key kinds a person's parts give, and their properties."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samenloop.node.identifiers.person_keys import (
    ALL_KINDS,
    PersonKeyKind,
    dutch_phonetic,
    person_keys,
    person_parts,
)
from samenloop.policies.errors import InvalidIdentifier

TODAY = datetime.date(2026, 12, 7)
BORN = datetime.date(1980, 3, 15)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("Meijer", "Meyer"),  # ij/y
        ("Dijkstra", "Dykstra"),  # ij/y
        ("Heijnen", "Heinen"),  # ei/ij
        ("Meijer", "Meier"),  # ei/ij
        ("Bouman", "Bauman"),  # ou/au
        ("Bouwman", "Bouman"),  # ouw/ou
        ("Lachman", "Lagman"),  # ch/g
        ("Visscher", "Visser"),  # sch
        ("Schouten", "Souten"),  # sch
        ("Claassen", "Klaassen"),  # c/k
        ("Cornelissen", "Kornelissen"),  # c/k
        ("Smidt", "Smit"),  # dt/t
        ("Brand", "Brant"),  # final d/t
        ("Janssen", "Jansen"),  # doubled letters
        ("Huygens", "Huijgens"),  # uy/uij
        ("Ter Horst", "Terhorst"),  # tussenvoegsel apart/together
        ("Van Dijk", "Vandijk"),
        ("van den Berg", "Vandenberg"),
        ("de Vries", "Devries"),
        ("ter Horst", "Horst"),  # tussenvoegsel dropped
        ("Müller", "Muller"),  # diacritics
        ("in 't Veld", "Veld"),
    ],
)
def test_dutch_spellings_of_one_name_meet(one: str, other: str) -> None:
    assert dutch_phonetic(one) == dutch_phonetic(other)
    assert dutch_phonetic(one)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("Jansen", "Bakker"),
        ("de Vries", "de Jong"),
        ("Visser", "Smit"),
        ("Meijer", "Mulder"),
        ("van Dijk", "van Dam"),
        ("Horst", "Hoorn"),
    ],
)
def test_different_names_stay_apart(one: str, other: str) -> None:
    assert dutch_phonetic(one) != dutch_phonetic(other)


def test_given_names_keep_their_first_word() -> None:
    # Not a surname: "de" is not dropped, and nothing is taken for a glued prefix.
    assert dutch_phonetic("Dennis", surname=False) != dutch_phonetic("Nis", surname=False)
    assert dutch_phonetic("", surname=False) == ""


def _parts(**overrides: object) -> object:
    values: dict[str, object] = {
        "surname": "Vries",
        "given_names": "Jan Willem",
        "birth_date": BORN,
        "prefix": "de",
        "gender": "m",
        "postcode": "1234 AB",
        "house_number": "12a",
        "today": TODAY,
    }
    values.update(overrides)
    surname = values.pop("surname")
    given_names = values.pop("given_names")
    birth_date = values.pop("birth_date")
    return person_parts(surname, given_names, birth_date, **values)  # type: ignore[arg-type]


def test_full_parts_give_every_kind_with_its_parts() -> None:
    keys = person_keys(_parts())  # type: ignore[arg-type]
    assert set(keys) == ALL_KINDS
    surname, given = dutch_phonetic("de Vries"), dutch_phonetic("Jan", surname=False)
    pair = "|".join(sorted((surname, given)))
    assert keys == {
        PersonKeyKind.PHONETIC_DATE: f"{surname}|j|1980-03-15",
        PersonKeyKind.GIVEN_DATE: f"{given}|1980-03-15",
        PersonKeyKind.NAMES_YEAR_MONTH: f"{surname}|j|1980-03",
        PersonKeyKind.NAMES_YEAR: f"{pair}|1980",
        PersonKeyKind.NAMES_MONTH_DAY: f"{pair}|03-15",
        PersonKeyKind.NAMES_ADDRESS: f"{surname}|j|1234ab|12",
        PersonKeyKind.NAMES_POSTCODE: f"{pair}|1234ab",
        PersonKeyKind.GIVEN_ADDRESS: f"{given}|1234ab|12",
        PersonKeyKind.ADDRESS_DATE: "1234ab|12|1980-03-15",
    }


def test_missing_parts_leave_out_the_kinds_that_need_them() -> None:
    no_address = person_keys(_parts(postcode=None, house_number=None))  # type: ignore[arg-type]
    assert not {
        PersonKeyKind.NAMES_ADDRESS,
        PersonKeyKind.NAMES_POSTCODE,
        PersonKeyKind.GIVEN_ADDRESS,
        PersonKeyKind.ADDRESS_DATE,
    } & set(no_address)
    no_date = person_keys(_parts(birth_date=None))  # type: ignore[arg-type]
    assert set(no_date) == {
        PersonKeyKind.NAMES_ADDRESS,
        PersonKeyKind.NAMES_POSTCODE,
        PersonKeyKind.GIVEN_ADDRESS,
    }
    # An initial alone is not keyed as a given name.
    initials = person_keys(_parts(given_names="J.W."))  # type: ignore[arg-type]
    assert PersonKeyKind.GIVEN_DATE not in initials
    assert PersonKeyKind.NAMES_YEAR not in initials
    assert PersonKeyKind.NAMES_YEAR_MONTH in initials
    no_surname = person_keys(_parts(surname=None, prefix=""))  # type: ignore[arg-type]
    assert set(no_surname) == {
        PersonKeyKind.GIVEN_DATE,
        PersonKeyKind.GIVEN_ADDRESS,
        PersonKeyKind.ADDRESS_DATE,
    }


def test_kinds_can_be_chosen() -> None:
    only = person_keys(_parts(), kinds={PersonKeyKind.ADDRESS_DATE})  # type: ignore[arg-type]
    assert set(only) == {PersonKeyKind.ADDRESS_DATE}


def test_each_kind_survives_its_error() -> None:
    base = person_keys(_parts())  # type: ignore[arg-type]
    swapped_date = person_keys(_parts(birth_date=datetime.date(1980, 3, 5)))  # type: ignore[arg-type]
    written_swapped = person_keys(_parts(birth_date=datetime.date(1980, 5, 3)))  # type: ignore[arg-type]
    assert swapped_date[PersonKeyKind.PHONETIC_DATE] == written_swapped[PersonKeyKind.PHONETIC_DATE]
    typo_day = person_keys(_parts(birth_date=datetime.date(1980, 3, 16)))  # type: ignore[arg-type]
    assert typo_day[PersonKeyKind.NAMES_YEAR_MONTH] == base[PersonKeyKind.NAMES_YEAR_MONTH]
    assert typo_day[PersonKeyKind.PHONETIC_DATE] != base[PersonKeyKind.PHONETIC_DATE]
    typo_year = person_keys(_parts(birth_date=datetime.date(1981, 3, 15)))  # type: ignore[arg-type]
    assert typo_year[PersonKeyKind.NAMES_MONTH_DAY] == base[PersonKeyKind.NAMES_MONTH_DAY]
    glued = person_keys(_parts(surname="Devries", prefix=""))  # type: ignore[arg-type]
    assert glued[PersonKeyKind.PHONETIC_DATE] == base[PersonKeyKind.PHONETIC_DATE]
    other_surname = person_keys(_parts(surname="Bakker", prefix=""))  # type: ignore[arg-type]
    assert other_surname[PersonKeyKind.GIVEN_DATE] == base[PersonKeyKind.GIVEN_DATE]
    assert other_surname[PersonKeyKind.ADDRESS_DATE] == base[PersonKeyKind.ADDRESS_DATE]
    crossed = person_keys(_parts(surname="Jan", prefix="", given_names="Bakker"))  # type: ignore[arg-type]
    assert crossed[PersonKeyKind.NAMES_YEAR] == other_surname[PersonKeyKind.NAMES_YEAR]
    assert crossed[PersonKeyKind.NAMES_MONTH_DAY] == other_surname[PersonKeyKind.NAMES_MONTH_DAY]
    moved = person_keys(_parts(postcode="9999ZZ", house_number="1"))  # type: ignore[arg-type]
    assert moved[PersonKeyKind.PHONETIC_DATE] == base[PersonKeyKind.PHONETIC_DATE]
    assert moved[PersonKeyKind.NAMES_ADDRESS] != base[PersonKeyKind.NAMES_ADDRESS]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"surname": None, "prefix": "", "given_names": None}, "person.name"),
        ({"postcode": None}, "person.address"),
        ({"house_number": "a"}, "person.address"),
        ({"house_number": "0"}, "person.address"),
        ({"postcode": " - "}, "person.address"),
        ({"gender": "q"}, "person.gender"),
        ({"birth_date": "1980-02-30"}, "person.birth_date"),
        ({"surname": "Vries, Jan"}, "person.name"),
        ({"given_names": "de"}, "person.given_name"),
    ],
)
def test_bad_parts_are_refused_naming_the_rule(overrides: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        _parts(field="person", **overrides)
    assert caught.value.reason == reason
    assert caught.value.field == "person"


def test_parts_hide_their_values() -> None:
    parts = _parts()
    assert "vries" not in repr(parts).lower()
    assert "1234" not in repr(parts)


def test_gender_and_house_number_forms() -> None:
    parts = _parts(gender="Vrouw", house_number=12)
    assert parts.gender == "v"  # type: ignore[attr-defined]
    assert parts.house_number == "12"  # type: ignore[attr-defined]
    assert _parts(gender="").gender is None  # type: ignore[attr-defined]
    assert _parts(house_number="012-2").house_number == "12"  # type: ignore[attr-defined]


_LETTERS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=12)
_ACCENTS = str.maketrans({"e": "é", "u": "ü", "o": "ö", "a": "à", "i": "ï", "c": "ç"})


@settings(max_examples=150, deadline=None)
@given(
    surname=_LETTERS,
    first=_LETTERS,
    prefix=st.sampled_from(["", "de", "van der", "ter", "in 't"]),
    born=st.dates(datetime.date(1900, 1, 1), TODAY),
    house=st.integers(1, 99999),
)
def test_keys_are_deterministic_and_ignore_case_accents_and_spacing(
    surname: str, first: str, prefix: str, born: datetime.date, house: int
) -> None:
    plain = person_parts(
        surname,
        f"{first} Maria",
        born,
        prefix=prefix,
        postcode="1234AB",
        house_number=house,
        today=TODAY,
    )
    dressed = person_parts(
        f"  {surname.upper().translate(_ACCENTS)} ",
        f" {first.title().translate(_ACCENTS)}   MARIA",
        born.strftime("%d-%m-%Y"),
        prefix=f" {prefix.upper()} ",
        postcode=" 1234 ab ",
        house_number=f" {house} ",
        today=TODAY,
    )
    keys = person_keys(plain)
    assert keys == person_keys(plain)
    assert keys == person_keys(dressed)
    # Every key has the fixed number of parts of its kind, none of them empty, so that
    # "|" has one reading.
    arity = {
        PersonKeyKind.PHONETIC_DATE: 3,
        PersonKeyKind.GIVEN_DATE: 2,
        PersonKeyKind.NAMES_YEAR_MONTH: 3,
        PersonKeyKind.NAMES_YEAR: 3,
        PersonKeyKind.NAMES_MONTH_DAY: 3,
        PersonKeyKind.NAMES_ADDRESS: 4,
        PersonKeyKind.NAMES_POSTCODE: 3,
        PersonKeyKind.GIVEN_ADDRESS: 3,
        PersonKeyKind.ADDRESS_DATE: 3,
    }
    for kind, key in keys.items():
        fields = key.split("|")
        assert len(fields) == arity[kind]
        assert all(fields)
        assert all(c.isascii() and (c.isalnum() or c == "-") for f in fields for c in f)


def test_keys_and_scores_import_without_grpc_or_sqlalchemy() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('grpc', 'sqlalchemy'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import samenloop.node.identifiers.person_keys\n"
        "import samenloop.node.identifiers.person_score\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
