"""A picture share in parts, end to end: a broker and four nodes as processes.

The covenant lists 200 areas and 20 branches, so one month's cube of both signal
measures (area x branch x category x month, each axis with ``onbekend`` and
``overig``) is 2 x 202 x 22 x 11 x 2 = 195,536 values: more than one message carries
(``LIMITS_MAX_PICTURE_SHARE_VALUES``, 98,304), so every partner's share to the RIEC
and to the aggregator, and the aggregator's sum, travel in two parts each, through
the broker's relay, with mTLS and SQLite, as ``make demo`` runs them. The RIEC's
view equals the sum computed directly from the test data, with its small cells
protected; every part held on the way is gone once the sum is in. Parts dropped,
reordered or replayed by the broker's operator, and a partner's parts that do not
fit together: ``tests/attacks/test_split_shares.py``. The core:
``tests/test_picture_parts.py``.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_picture_end_to_end import GEMEENTE, MIN_COUNT, POLITIE, RIEC, SPECS, WOCO

from samenloop.node.client import Picture, SignalInput
from samenloop.node.picture import shares as picture_shares
from samenloop.node.picture.arithmetic import (
    TOTAL,
    CellQuality,
    Dimension,
    Measure,
    Period,
    cube_dimensions,
)
from samenloop.node.picture.protocol import PictureAsk, domain_of
from samenloop.policies import crypto
from samenloop.policies.covenant import Role
from samenloop.policies.policy import PictureRules, example_policy
from samenloop.v1 import picture_pb2

from daemons import Daemons, running_covenant, sqlite_count, sqlite_rows

WAIT = 120.0
MONTH = datetime.now(UTC).strftime("%Y-%m")
PERIOD = Period(MONTH, MONTH)
#: 200 areas (postcode-4 5000..5199) and 20 branches (three SBI codes of the data and
#: the divisions 10..26).
AREAS = tuple(f"pc4:{5000 + n}" for n in range(200))
BRANCHES = ("56101", "96021", "45201", *(str(n) for n in range(10, 27)))
MEASURES = (Measure.ACTIVE_SIGNALS, Measure.HIT_GROUPS)

# (party, reference, category, postcode, house number, branch, shared bsn or None)
ROWS: list[tuple[str, str, str, str, int, str, str | None]] = []
for i in range(6):
    ROWS.append((GEMEENTE, f"G-{i}", "woonfraude", "5038", i + 1, BRANCHES[i % 2], None))
for i in range(2):
    ROWS.append((GEMEENTE, f"G-V{i}", "vastgoedmisbruik", "5041", i + 1, BRANCHES[2], None))
for i in range(4):
    ROWS.append((WOCO, f"W-{i}", "woonfraude", "5038", 20 + i, BRANCHES[0], None))
for i in range(3):
    ROWS.append((WOCO, f"W-L{i}", "leegstand", "5199", 30 + i, "26", None))
for i, bsn in enumerate(("111222333", "123456782", "100000009")):
    ROWS.append((GEMEENTE, f"G-H{i}", "witwasindicatie", "5041", 40 + i, BRANCHES[1], bsn))
    ROWS.append((POLITIE, f"P-H{i}", "witwasindicatie", "5041", 60 + i, BRANCHES[1], bsn))


def policy() -> object:
    rules = PictureRules(
        viewers=(Role.RIEC,),
        min_cell_count=MIN_COUNT,
        aggregator=Role.WONINGCORPORATIE,
        areas=AREAS,
        branches=BRANCHES,
    )
    return dataclasses.replace(example_policy(), picture=rules)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemons]:
    root = tmp_path_factory.mktemp("picture-parts")
    with running_covenant(
        root, "riec-parts", SPECS, [RIEC, GEMEENTE], 2, now=datetime.now(UTC), policy=policy()
    ) as running:
        for party in (GEMEENTE, WOCO, POLITIE):
            rows = [
                SignalInput(
                    reference=ref,
                    category=category,
                    identifiers=[("address", f"{pc} AB {number}")]
                    + ([("bsn", bsn)] if bsn else []),
                    branch=branch,
                )
                for who, ref, category, pc, number, branch, bsn in ROWS
                if who == party
            ]
            assert running.clients[party].import_signals(rows).rejected == 0
        running.until(
            "three hit groups at the politie",
            WAIT,
            lambda: len(running.clients[POLITIE].hits()) >= 3,
        )
        yield running


def test_the_cube_needs_two_parts(run: Daemons) -> None:
    dims = cube_dimensions(MEASURES, without=(Dimension.ROLE,))
    domain = domain_of(run.provisioned.covenant, PictureAsk(PERIOD, MEASURES, dims))
    values = picture_shares.vector_length(domain, len(MEASURES), exact=False)
    assert values == 2 * 202 * 22 * 11 * 2 == 195_536
    assert picture_shares.parts_needed(values) == 2


def _shown(run: Daemons, measure: Measure, request_id: bytes) -> Picture:
    found: list[Picture] = []

    def complete() -> bool:
        shown = run.clients[RIEC].picture_show(
            measure=measure, dimensions=(Dimension.AREA,), request_id=request_id
        )
        found[:] = [shown]
        return not shown.missing and set(shown.contributors) == {RIEC, GEMEENTE, WOCO, POLITIE}

    run.until("every partner summed", WAIT, complete)
    return found[0]


def _events(database: Path, event: str) -> list[dict[str, str]]:
    return [
        json.loads(details)
        for (details,) in sqlite_rows(
            database,
            "SELECT details FROM audit_entries WHERE kind = 'picture_event'"
            " AND json_extract(details, '$.event') = ?",
            event,
        )
    ]


def test_the_riecs_view_equals_the_protected_sum_of_the_test_data(run: Daemons) -> None:
    started = run.clients[RIEC].picture_collect(
        PERIOD, MEASURES, (Dimension.AREA,), officer="analist@riec"
    )
    assert set(started.asked) == {RIEC, GEMEENTE, WOCO, POLITIE}
    shown = _shown(run, Measure.ACTIVE_SIGNALS, started.request_id)
    assert shown.refusals == ()
    expected = Counter(f"pc4:{pc}" for _, _, _, pc, _, _, _ in ROWS)
    cells = {c.values[0]: c for c in shown.table.cells}
    for area, value in expected.items():
        if value < MIN_COUNT:
            assert cells[area].quality is CellQuality.SUPPRESSED, area
        else:  # exact, or withheld to protect a small cell
            assert cells[area].count in (value, None), area
    for area, cell in cells.items():
        if area != TOTAL and cell.quality is CellQuality.EXACT:
            assert cell.count == expected[area], area
    assert cells[TOTAL].count in (len(ROWS), None)  # exact, or withheld by the complement
    # Before disclosure control: the partners' sum the RIEC added up from the parts (its
    # own shares plus the aggregator's sum) is exactly the data's, cell by cell.
    ((body, aggregate),) = sqlite_rows(
        run.node_database(RIEC),
        "SELECT request_body, aggregate FROM picture_collections WHERE request_id = ?",
        started.request_id,
    )
    request = picture_pb2.PictureRequest.FromString(body)
    dims = tuple(Dimension.from_proto(d) for d in request.dimensions)
    domain = picture_shares.Domain.from_proto(request.domain, dims)
    summed = picture_shares.decode(crypto.share_values(aggregate), domain, MEASURES, exact=False)
    by_area: Counter[str] = Counter()
    for key, value in summed[0].counts.items():
        by_area[key[dims.index(Dimension.AREA)]] += value
    assert +by_area == expected
    hit_groups = sum(summed[1].counts.values())
    assert hit_groups == 3
    groups = _shown(run, Measure.HIT_GROUPS, started.request_id)
    assert groups.table.cell((TOTAL,)).count in (3, None)  # each hit group once

    # It travelled in parts: the RIEC kept one part of each partner's share before the
    # other completed it, and one of the aggregator's sum; the aggregator one part of the
    # share of each partner but itself. None is left once the sum is in.
    riec_db, woco_db = run.node_database(RIEC), run.node_database(WOCO)
    kept = [(e["of"], e["part"]) for e in _events(riec_db, "part_kept")]
    assert sorted(kept) == [("contribution", "1/2")] * 3 + [("sum", "1/2")]
    assert [e["of"] for e in _events(woco_db, "part_kept")] == ["share", "share"]
    for database in (riec_db, woco_db):
        assert sqlite_count(database, "SELECT count(*) FROM picture_parts") == 0
