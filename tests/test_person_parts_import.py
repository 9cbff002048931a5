"""A person's postcode, house number and gender beside the person identifier: read at the
boundary (``signal import`` in both layouts, ``signal add``, the client, the local API's
``parse_signal``) into the node's ``PersonParts``, each error naming its field or column
and row; the address kinds are derived from them, the parts themselves are not kept.

Through the daemons: ``tests/test_person_address_daemons.py``.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from samenloop.node.client import GivenParts, SignalInput, _signal_message
from samenloop.node.daemon.api import parse_signal
from samenloop.node.identifiers.normalise import IdentifierType as T
from samenloop.node.identifiers.person_hits import (
    GIVEN_PARTS,
    check_given_parts,
    derived_keys,
    parts_of_person,
)
from samenloop.node.identifiers.person_keys import PersonKeyKind as K
from samenloop.node.provision import PartySpec, provision
from samenloop.node.signals import commands
from samenloop.node.signals.commands import ColumnMapping, Problem, rows_to_signals
from samenloop.policies import cli
from samenloop.policies.covenant import Covenant, Role
from samenloop.policies.errors import InvalidInput
from samenloop.policies.policy import PERSON_KEY_KINDS, PersonMatching, example_policy
from samenloop.v1 import common_pb2, node_pb2

TODAY = datetime.date(2026, 12, 7)
NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
PERSON = "Jansen, Jan;1980-03-15"
ADDRESS_KINDS = {K.NAMES_ADDRESS, K.NAMES_POSTCODE, K.GIVEN_ADDRESS, K.ADDRESS_DATE}
FIELDS = {part: f"f.{part}" for part in GIVEN_PARTS}


# --- reading the parts ---------------------------------------------------------------------


def test_parts_are_normalised_and_blanks_are_not_given() -> None:
    read = check_given_parts(GivenParts(" 1234 ab ", "0005-bis", "Vrouw"), fields=FIELDS)
    assert (read.postcode, read.house_number, read.gender) == ("1234ab", "5", "v")
    blank = check_given_parts(GivenParts("", "  ", ""), fields=FIELDS)
    assert (blank.postcode, blank.house_number, blank.gender) == (None, None, None)
    assert GivenParts("", None, " ").empty
    assert "1234" not in repr(GivenParts("1234 AB", "5", "m"))
    assert repr(GivenParts("1234 AB", "5")) == "GivenParts(postcode, house_number)"


@pytest.mark.parametrize(
    ("given", "field", "reason"),
    [
        (GivenParts(postcode="1234AB"), "f.house_number", "person.address"),
        (GivenParts(postcode="1234AB", house_number=" "), "f.house_number", "person.address"),
        (GivenParts(house_number="5"), "f.postcode", "person.address"),
        (GivenParts("1234AB", "huis"), "f.house_number", "person.address"),
        (GivenParts("1234AB", "100000"), "f.house_number", "person.address"),
        (GivenParts("!!", "5"), "f.postcode", "person.address"),
        (GivenParts("12345678901", "5"), "f.postcode", "person.address"),
        (GivenParts(gender="q"), "f.gender", "person.gender"),
    ],
)
def test_a_bad_part_is_refused_naming_its_field(given: GivenParts, field: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_given_parts(given, fields=FIELDS)
    assert (caught.value.field, caught.value.reason) == (field, reason)
    assert "1234" not in caught.value.message


def test_the_parts_give_the_address_kinds_and_no_other_key_changes() -> None:
    bare = parts_of_person(PERSON, today=TODAY)
    full = parts_of_person(PERSON, today=TODAY, given=GivenParts("1234 AB", "5", "m"))
    assert (full.postcode, full.house_number, full.gender) == ("1234ab", "5", "m")
    without = {k.type: k.canonical for k in derived_keys(bare, PERSON_KEY_KINDS)}
    with_parts = {k.type: k.canonical for k in derived_keys(full, PERSON_KEY_KINDS)}
    assert not ADDRESS_KINDS & without.keys()
    assert with_parts.keys() - without.keys() == ADDRESS_KINDS
    assert {k: with_parts[k] for k in without} == without
    # Gender is read but no key uses it.
    other = parts_of_person(PERSON, today=TODAY, given=GivenParts("1234 AB", "5", "v"))
    assert {k.type: k.canonical for k in derived_keys(other, PERSON_KEY_KINDS)} == with_parts


def test_a_part_error_names_the_person_s_field_by_default() -> None:
    with pytest.raises(InvalidInput) as caught:
        parts_of_person(PERSON, field="identifiers[0].value", given=GivenParts(postcode="1234"))
    assert caught.value.field == "identifiers[0].value.house_number"


# --- signal import: the wide layout -----------------------------------------------------------

WIDE = ColumnMapping(
    reference_column="ref",
    identifiers=((T.PERSON, "Naam"),),
    category="woonfraude",
    person_parts=(("postcode", "Postcode"), ("house_number", "Huisnummer"), ("gender", "G")),
)
WIDE_HEADER = ["ref", "Naam", "Postcode", "Huisnummer", "G"]


def problems(found: Sequence[Problem]) -> set[tuple[int, str, str]]:
    return {(p.row, p.column, p.reason) for p in found}


def test_the_wide_layout_sends_the_parts_with_the_person() -> None:
    rows = [(2, ["A", PERSON, "1234 AB", "5", "V"]), (3, ["B", PERSON, "", "", ""])]
    prepared, found = rows_to_signals(WIDE_HEADER, rows, WIDE, today=TODAY)
    assert found == []
    first, second = prepared
    assert first.signal.person_parts == GivenParts(postcode="1234 AB", house_number="5", gender="V")
    assert first.part_places == {
        "postcode": (2, "Postcode"),
        "house_number": (2, "Huisnummer"),
        "gender": (2, "G"),
    }
    assert second.signal.person_parts is None  # empty cells: no parts


def test_the_wide_layout_refuses_bad_parts_naming_row_and_column() -> None:
    rows = [
        (2, ["A", PERSON, "1234 AB", "", ""]),  # postcode without house number
        (3, ["B", "", "1234 AB", "5", ""]),  # parts without a person
        (4, ["C", PERSON, "", "", "onzijdig"]),  # a gender that is none
        (5, ["D", PERSON, "1234 AB", "geen", ""]),  # a house number that is none
        (6, ["E", "J. Jansen", "1234 AB", "5", "m"]),  # a bad person and good parts
    ]
    prepared, found = rows_to_signals(WIDE_HEADER, rows, WIDE, today=TODAY)
    assert prepared == []
    assert problems(found) >= {
        (2, "Huisnummer", "person.address"),
        (3, "Huisnummer", "person.parts_without_person"),
        (4, "G", "person.gender"),
        (5, "Huisnummer", "person.address"),
        (6, "Naam", "person.format"),
    }
    (missing,) = [p for p in found if p.row == 2]
    assert "person.house_number is not given" in missing.message
    assert all("1234" not in p.message for p in found)


def test_two_person_columns_leave_the_parts_without_their_person() -> None:
    mapping = dataclasses.replace(WIDE, identifiers=((T.PERSON, "Naam"), (T.PERSON, "Partner")))
    header = [*WIDE_HEADER, "Partner"]
    rows = [(2, ["A", PERSON, "1234 AB", "5", "", "Jansen, Els;1981-01-01"])]
    _, found = rows_to_signals(header, rows, mapping, today=TODAY)
    assert problems(found) == {(2, "Huisnummer", "person.parts_ambiguous")}


def test_a_part_the_node_refuses_is_reported_at_its_row_and_column() -> None:
    rows = [(2, ["A", PERSON, "1234 AB", "5", "m"])]
    (prepared,), _ = rows_to_signals(WIDE_HEADER, rows, WIDE, today=TODAY)
    field = "identifiers[0].person_parts.gender"
    assert commands._column_of(field, prepared, WIDE) == "G"
    assert commands._row_of(field, prepared) == 2
    assert commands._column_of("identifiers[0].value", prepared, WIDE) == "Naam"


# --- signal import: the long layout -----------------------------------------------------------

LONG = ColumnMapping(
    reference_column="ref",
    identifiers=(),
    category="woonfraude",
    type_column="type",
    value_column="value",
)
LONG_HEADER = ["ref", "type", "value"]


def test_the_long_layout_joins_part_rows_to_the_reference_s_person() -> None:
    rows = [
        (2, ["A", "person", PERSON]),
        (3, ["A", "Person.Postcode", "1234 AB"]),
        (4, ["A", "bsn", "111222333"]),
        (5, ["A", "person.house_number", "5"]),
        (6, ["A", "person.gender", "m"]),
    ]
    (prepared,), found = rows_to_signals(LONG_HEADER, rows, LONG, today=TODAY)
    assert found == []
    assert prepared.signal.person_parts == GivenParts("1234 AB", "5", "m")
    assert [t for t, _ in prepared.signal.identifiers] == [T.PERSON, T.BSN]
    assert prepared.part_places["house_number"] == (5, "value")


def test_the_long_layout_refuses_bad_parts_naming_the_row() -> None:
    rows = [
        (2, ["A", "bsn", "111222333"]),
        (3, ["A", "person.postcode", "1234AB"]),  # no person in A
        (4, ["A", "person.house_number", "5"]),
        (5, ["B", "person", PERSON]),
        (6, ["B", "person.postcode", "1234AB"]),  # no house number in B
        (7, ["C", "person", PERSON]),
        (8, ["C", "person.house_number", "5"]),
        (9, ["C", "person.postcode", "1234AB"]),
        (10, ["C", "person.postcode", "9999ZZ"]),  # two postcodes in C
        (11, ["D", "person.house_number", "5"]),  # parts alone: no identifier either
        (12, ["D", "person.postcode", "1234AB"]),
    ]
    prepared, found = rows_to_signals(LONG_HEADER, rows, LONG, today=TODAY)
    assert prepared == []
    assert problems(found) >= {
        (3, "value", "person.parts_without_person"),
        (2, "*", "signal.refused_with_its_rows"),
        (6, "value", "person.address"),
        (10, "value", "signal.rows_differ"),
        (11, "value", "person.parts_without_person"),
    }
    assert any(p.reason == "signal.identifiers_missing" and p.reference == "D" for p in found)


# --- the command line --------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def test_import_maps_are_checked_before_anything_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The file does not exist and no node runs: these are refused first.
    base = ["signal", "import", str(tmp_path / "none.csv"), "--reference-column", "ref"]
    base += ["--category-column", "cat", "--socket", str(tmp_path / "no.sock")]
    person = ["--map", "person=Naam"]
    for argv, expected in [
        ([*person, "--map", "person.postcode=P"], "give --map person.house_number=COLUMN too"),
        ([*person, "--map", "person.house_number=H"], "give --map person.postcode=COLUMN too"),
        (["--map", "bsn=B", "--map", "person.gender=G"], "give --map person=COLUMN"),
        ([*person, "--map", "person=N2", "--map", "person.gender=G"], "--map names 2"),
        ([*person, "--map", "person.gender=G", "--map", "person.gender=X"], "mapped twice"),
        ([*person, "--map", "person.adres=A"], "unknown person part 'person.adres'"),
        (
            ["--type-column", "t", "--value-column", "v", "--map", "person.gender=G"],
            "rows of their own",
        ),
    ]:
        code, err = run(capsys, *base, *argv)
        assert code == 2, argv
        assert err.startswith("samenloop: error: --map: "), err
        assert expected in err, err


def test_signal_add_checks_the_parts_before_it_connects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["signal", "add", "--reference", "R", "--category", "woonfraude"]
    base += ["--socket", str(tmp_path / "no.sock"), "--from", "-"]
    for lines, expected in [
        ("id bsn=111222333\nid person.gender=m\n", "give --id person=NAME;DATE"),
        (f"id person={PERSON}\nid person.postcode=1234 AB\n", "--id person.house_number: a "),
        (f"id person={PERSON}\nid person.gender=m\nid person.gender=v\n", "given twice"),
        (f"id person={PERSON}\nid person.huis=5\n", "unknown person part"),
    ]:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("sys.stdin", _Stdin(lines))
            code, err = run(capsys, *base)
        assert code == 2, lines
        assert err.startswith("samenloop: error: --id: "), err
        assert expected in err, err
        assert "1234" not in err


class _Stdin:
    def __init__(self, text: str) -> None:
        import io

        self.buffer = io.BytesIO(text.encode())

    def isatty(self) -> bool:
        return False


def test_the_command_names_match_the_node_s_parts() -> None:
    assert tuple(commands.PERSON_PARTS.values()) == GIVEN_PARTS
    assert set(commands.PERSON_PARTS) == {f"person.{p}" for p in GIVEN_PARTS}


# --- the client --------------------------------------------------------------------------------


def test_the_client_puts_the_parts_on_the_one_person_identifier() -> None:
    row = SignalInput(
        "R",
        "woonfraude",
        [("bsn", "111222333"), ("person", PERSON)],
        person_parts=GivenParts("1234 AB", "5"),
    )
    message = _signal_message(row)
    bsn, person = message.identifiers
    assert not bsn.HasField("person_parts")
    assert (person.person_parts.postcode, person.person_parts.house_number) == ("1234 AB", "5")
    assert person.person_parts.gender == ""
    for identifiers, reason in [
        ([("bsn", "111222333")], "person.parts_without_person"),
        ([("person", PERSON), ("person", "Jansen, Els;1981-01-01")], "person.parts_ambiguous"),
    ]:
        with pytest.raises(InvalidInput) as caught:
            _signal_message(dataclasses.replace(row, identifiers=identifiers), "signal.")
        assert (caught.value.field, caught.value.reason) == ("signal.person_parts", reason)


# --- the local API -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def covenants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Covenant]:
    """Two covenants: with every person key kind on, and with none."""
    found = {}
    for name, matching in [
        ("kinds", PersonMatching(kinds=PERSON_KEY_KINDS)),
        ("none", None),
    ]:
        policy = dataclasses.replace(example_policy(), person_matching=matching)
        provisioned = provision(
            tmp_path_factory.mktemp(name),
            f"riec-{name}",
            [
                PartySpec("gemeente", "G", Role.GEMEENTE),
                PartySpec("woco", "W", Role.WONINGCORPORATIE),
            ],
            ["gemeente", "woco"],
            2,
            now=NOW - datetime.timedelta(days=1),
            policy=policy,
        )
        found[name] = provisioned.covenant
    return found


def signal(*identifiers: Any) -> node_pb2.Signal:
    return node_pb2.Signal(reference="R", category="woonfraude", identifiers=list(identifiers))


def parts(**given: str) -> node_pb2.PersonParts:
    return node_pb2.PersonParts(**given)


PERSON_TYPE = common_pb2.IDENTIFIER_TYPE_PERSON
BSN_TYPE = common_pb2.IDENTIFIER_TYPE_BSN


def test_the_api_derives_the_address_kinds_and_keeps_the_exact_key(
    covenants: dict[str, Covenant],
) -> None:
    bare, errors = parse_signal(
        signal(node_pb2.Identifier(type=PERSON_TYPE, value=PERSON)),
        now=NOW,
        covenant=covenants["kinds"],
    )
    assert errors == []
    given = node_pb2.Identifier(
        type=PERSON_TYPE,
        value=PERSON,
        person_parts=parts(postcode="1234 AB", house_number="5-a", gender="man"),
    )
    full, errors = parse_signal(signal(given), now=NOW, covenant=covenants["kinds"])
    assert errors == []
    assert bare is not None
    assert full is not None
    assert full.identifiers == bare.identifiers  # the exact key: name and date only
    kinds = {k.type for k in full.person_keys}
    assert kinds - {k.type for k in bare.person_keys} == ADDRESS_KINDS
    (names_address,) = [k for k in full.person_keys if k.type is K.NAMES_ADDRESS]
    assert names_address.canonical.endswith("|1234ab|5")
    # Without kinds turned on the parts are still checked, and no key is made.
    none, errors = parse_signal(signal(given), now=NOW, covenant=covenants["none"])
    assert errors == []
    assert none is not None
    assert none.person_keys == ()


def test_the_api_refuses_bad_parts_naming_each_field(covenants: dict[str, Covenant]) -> None:
    message = signal(
        node_pb2.Identifier(type=BSN_TYPE, value="111222333", person_parts=parts(gender="m")),
        node_pb2.Identifier(type=PERSON_TYPE, value=PERSON, person_parts=parts(postcode="1234")),
        node_pb2.Identifier(
            type=PERSON_TYPE, value="J. Jansen", person_parts=parts(gender="onzijdig")
        ),
    )
    for name in ("kinds", "none"):
        found, errors = parse_signal(message, now=NOW, covenant=covenants[name])
        assert found is None
        assert {(e.field, e.reason) for e in errors} == {
            ("identifiers[0].person_parts", "person.parts_without_person"),
            ("identifiers[1].person_parts.house_number", "person.address"),
            ("identifiers[2].person_parts.gender", "person.gender"),
            ("identifiers[2].value", "person.format"),
        }
