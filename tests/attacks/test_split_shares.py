"""The broker's operator and a partner against a picture share that travels in parts.

The covenant lists 200 areas and 20 branches, so a month's cube of both signal
measures is 195,536 values, more than one message carries: every share to the
RIEC and to the aggregator (the belastingdienst), and the aggregator's sum, go in
two sealed parts, each naming its request, index, count, the vector's length and
its digest inside the signed content.

* **The operator drops, replays and reorders a part.** With the RIEC's node down,
  the partners answer and their parts wait in its mailbox; the operator takes one
  of the gemeente's parts out of the broker's database. The RIEC's node keeps the
  other part and nothing usable: the gemeente is not answered, no sum is asked.
  The node is killed (SIGKILL) and the operator puts the part back at the end of
  the mailbox, twice, with a repeat of another partner's part: after the restart
  the held part completes the share, the repeats change nothing, and the RIEC's
  figures equal the data's.
* **A partner splices its parts.** The woningcorporatie, with its own keys and
  certificate and its node stopped, answers with part 0 of one share and part 1
  of another, each well-formed alone: the RIEC's node refuses its contribution
  naming ``part``, counts it nowhere, and sums the others.

The daemons keep serving throughout.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from collections import Counter
from datetime import UTC, datetime

import pytest

from samenloop.node.client import Picture, SignalInput
from samenloop.node.picture import protocol as picture_protocol
from samenloop.node.picture import shares as picture_shares
from samenloop.node.picture.arithmetic import TOTAL, Dimension, Measure, Period
from samenloop.policies import crypto
from samenloop.policies.covenant import Role
from samenloop.policies.database import sqlite_stamp
from samenloop.policies.policy import PictureRules, Policy, example_policy
from samenloop.v1 import broker_pb2, picture_pb2

from daemons import sqlite_count, sqlite_rows
from harness import WAIT_SECONDS, CovenantRun

RIEC, GEMEENTE, POLITIE = "riec", "gemeente", "politie"
BD, WOCO = "belastingdienst", "woningcorporatie"
PARTNERS = (GEMEENTE, POLITIE, BD, WOCO)
AREAS = tuple(f"pc4:{5000 + n}" for n in range(200))
BRANCHES = tuple(str(n) for n in range(10, 30))
MEASURES = (Measure.ACTIVE_SIGNALS, Measure.HIT_GROUPS)
THIS_MONTH = datetime.now(UTC).strftime("%Y-%m")
#: Each partner's signals: (postcode, how many).
SIGNALS = {GEMEENTE: ("5038", 5), POLITIE: ("5038", 4), BD: ("5199", 3), WOCO: ("5199", 6)}


@pytest.fixture(scope="module")
def attack_policy() -> Policy:
    rules = PictureRules(
        viewers=(Role.RIEC,),
        min_cell_count=3,
        aggregator=Role.BELASTINGDIENST,
        areas=AREAS,
        branches=BRANCHES,
    )
    return dataclasses.replace(example_policy(), picture=rules)


@pytest.fixture(scope="module")
def signals(covenant_run: CovenantRun) -> CovenantRun:
    for party, (postcode, count) in SIGNALS.items():
        rows = [
            SignalInput(
                reference=f"{party}-{i}",
                category="woonfraude",
                identifiers=[("address", f"{postcode} AB {i + 1}")],
                branch="10",
            )
            for i in range(count)
        ]
        assert covenant_run.client(party).import_signals(rows).rejected == 0
    return covenant_run


def _envelopes(run: CovenantRun, party: str) -> list[tuple[int, bytes, str, int]]:
    """The envelopes waiting in ``party``'s mailbox at the broker, as its operator reads
    them: cursor, payload, the sender (in the clear on a ``Sealed``) and the size."""
    rows = sqlite_rows(
        run.broker_database,
        "SELECT m.cursor, m.payload FROM mailbox_items m JOIN parties p ON p.id = m.party_id"
        " WHERE p.name = ? AND m.kind = 'envelope' ORDER BY m.cursor",
        party,
    )
    out = []
    for cursor, payload in rows:
        relayed = broker_pb2.RelayedEnvelope.FromString(bytes(payload))
        out.append((cursor, bytes(payload), relayed.sealed.sender, len(relayed.sealed.ciphertext)))
    return out


def _take_out(run: CovenantRun, party: str, cursor: int) -> None:
    connection = sqlite3.connect(run.broker_database, timeout=30, isolation_level=None)
    try:
        connection.execute(
            "DELETE FROM mailbox_items WHERE cursor = ? AND party_id ="
            " (SELECT id FROM parties WHERE name = ?)",
            (cursor, party),
        )
    finally:
        connection.close()


def _put_back(run: CovenantRun, party: str, payload: bytes) -> None:
    """Append an item to ``party``'s mailbox, as the operator would by hand."""
    connection = sqlite3.connect(run.broker_database, timeout=30, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        ((party_id, head),) = connection.execute(
            "SELECT h.party_id, h.head_cursor FROM mailbox_heads h"
            " JOIN parties p ON p.id = h.party_id WHERE p.name = ?",
            (party,),
        ).fetchall()
        connection.execute(
            "INSERT INTO mailbox_items (party_id, cursor, kind, payload, enqueued_at)"
            " VALUES (?, ?, 'envelope', ?, ?)",
            (party_id, head + 1, payload, sqlite_stamp(datetime.now(UTC))),
        )
        connection.execute(
            "UPDATE mailbox_heads SET head_cursor = ? WHERE party_id = ?", (head + 1, party_id)
        )
        connection.execute("COMMIT")
    finally:
        connection.close()


def _down(run: CovenantRun, party: str, *, kill: bool = False) -> None:
    """Stop (or SIGKILL) a node and leave it down until :meth:`CovenantRun.start`."""
    (run.kill if kill else run.stop)(party)
    del run.processes[party]  # down on purpose: not a daemon that died


def _riec_parts(run: CovenantRun, sender: str) -> int:
    return sqlite_count(
        run.node_database(RIEC), "SELECT count(*) FROM picture_parts WHERE sender = ?", sender
    )


def _contributors(run: CovenantRun, request_id: bytes) -> set[str]:
    return {
        str(c)
        for (c,) in sqlite_rows(
            run.node_database(RIEC),
            "SELECT contributor FROM picture_contributions WHERE request_id = ?",
            request_id,
        )
    }


def _summed(run: CovenantRun, request_id: bytes) -> Picture:
    found: list[Picture] = []

    def done() -> bool:
        found[:] = [
            run.client(RIEC).picture_show(
                measure=Measure.ACTIVE_SIGNALS, dimensions=(Dimension.AREA,), request_id=request_id
            )
        ]
        return not found[0].missing and len(found[0].contributors) > 1

    run.until("the sum at the RIEC", WAIT_SECONDS, done)
    return found[0]


def test_a_part_the_operator_holds_back_replays_and_reorders_changes_nothing(
    signals: CovenantRun,
) -> None:
    run = signals
    for party in PARTNERS:
        _down(run, party)
    started = run.client(RIEC).picture_collect(
        Period(THIS_MONTH, THIS_MONTH), MEASURES, (Dimension.AREA,), officer="analist@riec"
    )
    request_id = started.request_id
    # The request waits in the RIEC's outbox until its uplink sends it: only once every
    # partner's mailbox holds it may the RIEC go down (else it is not sent until it is back).
    run.until(
        "the request in every partner's mailbox",
        WAIT_SECONDS,
        lambda: all(_envelopes(run, party) for party in PARTNERS),
    )
    _down(run, RIEC)
    for party in PARTNERS:
        run.start(party)
    run.wait_ready(PARTNERS)
    # Every partner answers in two parts: eight envelopes wait for the RIEC. Counting,
    # sharing and sealing 200 areas by 20 branches takes each partner seconds of CPU,
    # so on a loaded 2-core machine this wait gets three times the usual bound.
    run.until("eight parts for the RIEC", 3 * WAIT_SECONDS, lambda: len(_envelopes(run, RIEC)) >= 8)
    waiting = _envelopes(run, RIEC)
    assert Counter(sender for _, _, sender, _ in waiting) == {p: 2 for p in PARTNERS}
    assert all(size <= 1_048_576 for *_, size in waiting)
    held_cursor, held, _, _ = next(w for w in waiting if w[2] == GEMEENTE)
    politie_part = next(w[1] for w in waiting if w[2] == POLITIE)
    _take_out(run, RIEC, held_cursor)  # the operator drops one of the gemeente's parts

    run.start(RIEC)
    run.wait_ready([RIEC])
    run.until(
        "the RIEC holding three answers and one part",
        WAIT_SECONDS,
        lambda: (
            _contributors(run, request_id) == {RIEC, POLITIE, BD, WOCO}
            and _riec_parts(run, GEMEENTE) == 1
        ),
    )
    # Nothing usable of the gemeente: no answer kept, no sum asked, the gemeente missing.
    (asked,) = sqlite_rows(
        run.node_database(RIEC),
        "SELECT sum_requested_at FROM picture_collections WHERE request_id = ?",
        request_id,
    )
    assert asked == (None,)
    shown = run.client(RIEC).picture_show(
        measure=Measure.ACTIVE_SIGNALS, dimensions=(Dimension.AREA,), request_id=request_id
    )
    assert shown.contributors == (RIEC,)  # nothing summed: the others wait with the gemeente
    assert set(shown.missing) == set(PARTNERS)

    _down(run, RIEC, kill=True)  # no chance to finish anything: the part it holds is on disk
    for payload in (held, politie_part, held):  # put back late, with repeats
        _put_back(run, RIEC, payload)
    run.start(RIEC)
    run.wait_ready([RIEC])
    shown = _summed(run, request_id)
    assert set(shown.contributors) == {RIEC, *PARTNERS}
    assert shown.refusals == ()
    cells = {c.values[0]: c.count for c in shown.table.cells}
    assert cells["pc4:5038"] == 9
    assert cells["pc4:5199"] == 9
    assert cells[TOTAL] == 18
    assert sqlite_count(run.node_database(RIEC), "SELECT count(*) FROM picture_parts") == 0
    run.assert_serving()


def test_a_partner_that_splices_its_parts_is_refused_naming_the_field(
    signals: CovenantRun,
) -> None:
    run = signals
    _down(run, WOCO)
    # A month of its own (disjoint from the first test's, so a new collection, not the cube).
    year, month = int(THIS_MONTH[:4]), int(THIS_MONTH[5:])
    earlier = f"{year - (month == 1):04d}-{(month - 2) % 12 + 1:02d}"
    started = run.client(RIEC).picture_collect(
        Period(earlier, earlier), MEASURES, (Dimension.AREA,), officer="analist@riec"
    )
    request_id = started.request_id  # the woningcorporatie reads it in the request it got
    covenant = run.covenant
    keys = run.party_keys(WOCO)
    values = 2 * 202 * 22 * 11 * 2
    first = picture_shares.split(os.urandom(values * crypto.SHARE_WORD_BYTES))
    second = picture_shares.split(os.urandom(values * crypto.SHARE_WORD_BYTES))
    assert len(first) == len(second) == 2
    stub = run.broker_stub(WOCO)
    verdict = picture_protocol.PictureVerdict(None)
    for part in (first[0], second[1]):  # each alone a well-formed part of a 2-part share
        message = picture_protocol.contribution(
            covenant,
            WOCO,
            request_id,
            verdict,
            (),
            period=picture_pb2.Period(first_month=earlier, last_month=earlier),
            now=datetime.now(UTC),
            part=part,
        )
        envelope = picture_protocol.seal_contribution(
            keys, covenant, message, requester=RIEC, message_id=os.urandom(16)
        )
        stub.SendEnvelope(
            broker_pb2.SendEnvelopeRequest(
                client_message_id=envelope.message_id, envelope=envelope.sealed
            ),
            timeout=30,
        )
    shown = _summed(run, request_id)
    refusals = {note.contributor: note.message for note in shown.refusals}
    assert refusals[WOCO].startswith("rejected by the viewer: part: parts of different vectors")
    assert set(shown.contributors) == {RIEC, GEMEENTE, POLITIE, BD}
    assert _riec_parts(run, WOCO) == 0
    # Its node back, the honest answer comes late: dropped, the sum stays as it was.
    run.start(WOCO)
    run.wait_ready([WOCO])
    run.until(
        "the late parts dropped at the RIEC",
        WAIT_SECONDS,
        lambda: (
            sqlite_count(
                run.node_database(RIEC),
                "SELECT count(*) FROM audit_entries WHERE actor = ? AND subject = ?"
                " AND json_extract(details, '$.event') = 'part_dropped'",
                WOCO,
                request_id.hex(),
            )
            >= 1
        ),
    )
    run.assert_serving()
    again = run.client(RIEC).picture_show(
        measure=Measure.ACTIVE_SIGNALS, dimensions=(Dimension.AREA,), request_id=request_id
    )
    assert again.contributors == shown.contributors
