"""The address kinds end to end: postcode, house number and gender given beside the person
identifier through ``signal add``, ``signal import`` (wide and long layout), the client and
the local API, through real daemons (a broker and three nodes, mTLS on loopback, SQLite).

The three records share surname, given name, postcode and house number but not one birth
date: no date kind can meet, and without the address parts there would be no hit at all.
The gemeente adds its record with ``signal add --from`` (``id person.postcode=...``), the
woningcorporatie imports a register export in the wide layout (``--map
person.postcode=Postcode``), the tax office one in the long layout (rows of type
``person.postcode``). Each sees probable hits with the others on the three address kinds
that its parts allow, and no node stores the parts as they were written.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from samenloop.node.client import Hit, NodeClient
from samenloop.node.identifiers import person_score
from samenloop.node.identifiers.person_keys import PersonKeyKind as K
from samenloop.node.provision import PartySpec
from samenloop.policies import cli
from samenloop.policies.covenant import Role
from samenloop.policies.errors import NotFound
from samenloop.policies.policy import PERSON_KEY_KINDS, PersonMatching, example_policy

import in_process
from in_process import Cluster, wait_for

GEMEENTE, WOCO, BELASTING = "gemeente", "woco", "belastingdienst"
SPECS = (
    PartySpec(GEMEENTE, "Gemeente Test", Role.GEMEENTE),
    PartySpec(WOCO, "Woningcorporatie Test", Role.WONINGCORPORATIE),
    PartySpec(BELASTING, "Belastingdienst Test", Role.BELASTINGDIENST),
)
SHOWN = 30.0  # above any one kind's weight: one kind alone is not shown
ADDRESS_KINDS = {K.NAMES_ADDRESS.value, K.NAMES_POSTCODE.value, K.GIVEN_ADDRESS.value}
# Each node scores against its own record's kinds: every record here has all nine, so the
# six that did not agree (the date kinds and address_date) count against the hit.
SCORE = person_score.score([K(kind) for kind in ADDRESS_KINDS], tuple(K))
# As each source writes them; none of these may be stored as written.
WRITTEN = ("1234 ab", "5-bis", "onbekend", "Vrouw")


def address_policy() -> Any:
    return dataclasses.replace(
        example_policy(),
        person_matching=PersonMatching(kinds=PERSON_KEY_KINDS, shown_score=SHOWN),
    )


def config(cluster: Cluster, party: str) -> str:
    return str(cluster.provisioned.node_configs[party])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("person-address")
    files = tmp_path_factory.mktemp("files")
    with in_process.running_cluster(
        root, "riec-address", SPECS, (GEMEENTE, WOCO), policy=address_policy()
    ) as running:
        added = files / "signal.txt"
        added.write_text(
            "id person=Jansen, Jan;1980-03-15\n"
            "id person.postcode=1234 ab\n"
            "id person.house_number=5-bis\n"
            "id person.gender=onbekend\n"
        )
        assert (
            cli.main(
                [
                    "signal", "add", "--node", config(running, GEMEENTE), "--reference", "G-1",
                    "--category", "woonfraude", "--from", str(added),
                ]
            )
            == 0
        )  # fmt: skip
        wide = files / "brp.csv"
        # The export keeps name and birth date in one column, as NAME;DATE.
        wide.write_text(
            "Dossier,Naam,Postcode,Huisnummer,Geslacht\n"
            'W-1,"Jansen, Jan;1975-07-02",1234AB,5,Vrouw\n'
        )
        assert (
            cli.main(
                [
                    "signal", "import", str(wide), "--node", config(running, WOCO),
                    "--reference-column", "Dossier", "--category", "woonfraude",
                    "--map", "person=Naam", "--map", "person.postcode=Postcode",
                    "--map", "person.house_number=Huisnummer", "--map", "person.gender=Geslacht",
                ]
            )
            == 0
        )  # fmt: skip
        long = files / "export.csv"
        long.write_text(
            "reference,type,value\n"
            'B-1,person,"Jansen, Jan;1962-11-30"\n'
            "B-1,person.postcode,1234 AB\n"
            "B-1,person.house_number,0005\n"
        )
        assert (
            cli.main(
                [
                    "signal", "import", str(long), "--node", config(running, BELASTING),
                    "--reference-column", "reference", "--category", "woonfraude",
                    "--type-column", "type", "--value-column", "value",
                ]
            )
            == 0
        )  # fmt: skip
        yield running


def person_hits(client: NodeClient) -> list[Hit]:
    return [h for h in client.hits() if h.probable_hits]


def probable(client: NodeClient, parties: int) -> set[tuple[str, frozenset[str], float]]:
    """Wait until the node's probable hits name ``parties`` parties on every address kind."""

    def found() -> set[tuple[str, frozenset[str], float]]:
        seen = {
            (p.party, frozenset(p.agreeing_kinds), p.score)
            for h in person_hits(client)
            for p in h.probable_hits
        }
        complete = {s for s in seen if s[1] == ADDRESS_KINDS}
        return seen if len(complete) == parties else set()

    return wait_for(f"probable hits with {parties} parties", found)


def test_records_that_share_only_names_and_address_are_a_probable_hit(cluster: Cluster) -> None:
    gemeente = cluster.clients[GEMEENTE]
    seen = probable(gemeente, 2)
    assert {party for party, _, _ in seen} == {WOCO, BELASTING}
    assert all(kinds == ADDRESS_KINDS for _, kinds, _ in seen)
    assert all(score == pytest.approx(SCORE) for _, _, score in seen)
    assert SCORE >= SHOWN
    (hit, *_) = person_hits(gemeente)
    assert {o.person_kind for h in person_hits(gemeente) for o in h.own_signals} <= ADDRESS_KINDS
    assert hit.own_signals[0].signal_id == gemeente.signal("G-1").signal_id
    # No exact-key hit and no date kind: the dates differ entirely.
    assert not [h for h in gemeente.hits() if any(o.person_kind is None for o in h.own_signals)]


def test_each_layout_s_record_finds_the_others(cluster: Cluster) -> None:
    woco, belasting = cluster.clients[WOCO], cluster.clients[BELASTING]
    assert {party for party, _, _ in probable(woco, 2)} == {GEMEENTE, BELASTING}
    assert {party for party, _, _ in probable(belasting, 2)} == {GEMEENTE, WOCO}


def stored_text(cluster: Cluster, party: str) -> list[str]:
    """Every text value in every table of the party's node database."""
    engine = cluster.nodes[party].repositories.engine
    found: list[str] = []
    with engine.connect() as conn:
        for table in sa.inspect(engine).get_table_names():
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                found += [v for v in row if isinstance(v, str)]
    return found


def test_the_parts_are_not_stored_as_written(cluster: Cluster) -> None:
    probable(cluster.clients[GEMEENTE], 2)
    for party in (GEMEENTE, WOCO, BELASTING):
        text = "\n".join(stored_text(cluster, party)).casefold()
        assert "jansen|j|" in text  # the search sees the stored keys
        for written in WRITTEN:
            assert written.casefold() not in text, (party, written)
        signal = cluster.nodes[party].repositories.signals.signal(
            {GEMEENTE: "G-1", WOCO: "W-1", BELASTING: "B-1"}[party]
        )
        assert signal is not None
        assert [i.identifier.type.value for i in signal.identifiers] == ["person"]
        kinds = {k.key.type.value for k in signal.person_keys}
        assert kinds >= ADDRESS_KINDS
        assert not kinds & {"person.postcode", "person.house_number", "person.gender"}


def test_the_stored_person_key_is_the_one_without_parts(cluster: Cluster) -> None:
    signal = cluster.clients[GEMEENTE].signal("G-1")
    assert [(i.type.value, i.canonical) for i in signal.identifiers] == [
        ("person", "jansen|j|1980-03-15")
    ]


def test_a_file_with_parts_but_no_person_is_refused_naming_row_and_column(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "export.csv"
    source.write_text(
        "reference,type,value\n"
        "B-2,bsn,111222333\n"
        "B-2,person.postcode,1234AB\n"
        "B-2,person.house_number,5\n"
        'B-3,person,"Jansen, Jan;1962-11-30"\n'
        "B-3,person.postcode,1234AB\n"
    )
    code = cli.main(
        [
            "signal", "import", str(source), "--node", config(cluster, BELASTING),
            "--reference-column", "reference", "--category", "woonfraude",
            "--type-column", "type", "--value-column", "value", "--json",
        ]
    )  # fmt: skip
    assert code == 1
    report = json.loads(capsys.readouterr().out)
    assert report["imported"] == 0
    found = {(p["row"], p["column"], p["reason"]) for p in report["problems"]}
    assert (3, "value", "person.parts_without_person") in found
    assert (6, "value", "person.address") in found
    assert "1234AB" not in json.dumps(report)
    with pytest.raises(NotFound):
        cluster.clients[BELASTING].signal("B-3")
