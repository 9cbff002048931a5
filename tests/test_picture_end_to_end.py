"""The regional picture (DESIGN flow 8) end to end: a real broker and four real nodes.

The RIEC collects; the gemeente, the woningcorporatie and the politie answer
through the broker's relay. Shown here: in exact mode the RIEC's picture equals
the sum computed directly from the test data (by area and category; each hit
group once, however many members it has); a party without picture rights is
refused, locally and at every node that gets a hand-sealed request from it; a
suppressed cell stays hidden in ``show``, ``--json`` and the HTML report; in
noisy mode figures are marked noisy with their scale and a request beyond the
budget is refused with the reason; the broker's database and logs hold no area,
branch or count in the clear; bad input is named by field. The arithmetic
itself is tested in the core's own tests.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from samenloop.node.client import Picture, SignalInput
from samenloop.node.demo.daemons import DEMO_AREAS
from samenloop.node.picture import models as picture_models
from samenloop.node.picture import protocol as picture_protocol
from samenloop.node.picture import report as picture_report
from samenloop.node.picture.arithmetic import (
    TOTAL,
    CellQuality,
    Dimension,
    Measure,
    Period,
    SuppressionReason,
)
from samenloop.node.picture.commands import build_report
from samenloop.node.picture.protocol import PictureAsk
from samenloop.node.provision import PartySpec
from samenloop.policies.audit import AuditKind
from samenloop.policies.cli import main
from samenloop.policies.covenant import Covenant, Role
from samenloop.policies.crypto import PartyKeys, SignatureContext
from samenloop.policies.errors import InvalidInput, NotAllowed, NotFound, QuotaExceeded
from samenloop.policies.policy import PictureRules, example_policy
from samenloop.v1 import picture_pb2

import in_process
from in_process import wait_for

RIEC, GEMEENTE, WOCO, POLITIE = "riec", "gemeente", "woco", "politie"
SPECS = (
    PartySpec(RIEC, "RIEC Test", Role.RIEC),
    PartySpec(GEMEENTE, "Gemeente Test", Role.GEMEENTE),
    PartySpec(WOCO, "Woningcorporatie Test", Role.WONINGCORPORATIE),
    PartySpec(POLITIE, "Politie Test", Role.POLITIE),
)
MIN_COUNT = 3
WAIT = 30.0
MONTH = datetime.now(UTC).strftime("%Y-%m")
PERIOD = Period(MONTH, MONTH)
BRANCHES = ("56101", "96021", "45201")
#: The covenant's public list of areas that tables by area are shared over.
AREAS = ("pc4:5038", "pc4:5041", "pc4:4334")

# (party, reference, category, postcode, house number, branch, shared bsn or None)
ROWS: list[tuple[str, str, str, str, int, str, str | None]] = []
for i in range(6):  # the gemeente: 6 in 5038 woonfraude, 2 in 5041 vastgoedmisbruik
    ROWS.append((GEMEENTE, f"G-{i}", "woonfraude", "5038", i + 1, BRANCHES[i % 2], None))
for i in range(2):
    ROWS.append((GEMEENTE, f"G-V{i}", "vastgoedmisbruik", "5041", i + 1, BRANCHES[2], None))
for i in range(4):  # the woco: 4 more in 5038 woonfraude
    ROWS.append((WOCO, f"W-{i}", "woonfraude", "5038", 20 + i, BRANCHES[0], None))
# Three subjects that both the gemeente and the politie know: three hit groups.
for i, bsn in enumerate(("111222333", "123456782", "100000009")):
    ROWS.append((GEMEENTE, f"G-H{i}", "witwasindicatie", "5041", 40 + i, BRANCHES[1], bsn))
    ROWS.append((POLITIE, f"P-H{i}", "witwasindicatie", "5041", 60 + i, BRANCHES[1], bsn))


def policy(*, noisy: bool = False) -> Any:
    rules = PictureRules(
        viewers=(Role.RIEC,),
        min_cell_count=MIN_COUNT,
        epsilon_per_period=1.0 if noisy else 0.0,
        epsilon_per_request=0.5 if noisy else 0.0,
        aggregator=Role.WONINGCORPORATIE,
        areas=AREAS,
        branches=BRANCHES,
    )
    return dataclasses.replace(example_policy(), picture=rules)


class Cluster(in_process.Cluster):
    """The picture's covenant, running in this process."""

    def publish(self, draft: Covenant) -> None:
        """Deliver a new covenant version, and a covenant timestamp for it, to every node
        through its mailbox."""
        from samenloop.broker.mailbox import ItemKind

        payload = self.provisioned.sign(draft).to_proto().SerializeToString()
        stamp = self.provisioned.stamp(draft, now=datetime.now(UTC)).signed
        for party in self.nodes:
            self.broker.store.mailboxes.enqueue(
                party, payload, ItemKind.COVENANT_UPDATE, datetime.now(UTC)
            )
            self.broker.store.mailboxes.enqueue(
                party, stamp, ItemKind.COVENANT_TIMESTAMP, datetime.now(UTC)
            )
        self.broker.service._bell.ring(list(self.nodes))
        for party in self.nodes:
            wait_for(
                f"{party} on v{draft.version}, fresh",
                lambda p=party: (
                    (s := self.clients[p].status()).covenant_version == draft.version
                    and s.covenant_fresh is True
                ),
            )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("picture-e2e")
    cluster = in_process.start_cluster(
        root, "riec-picture", SPECS, [RIEC, GEMEENTE], policy=policy(), cluster=Cluster
    )
    try:
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
            report = cluster.clients[party].import_signals(rows)
            assert report.rejected == 0, report.errors
        wait_for(
            "three hit groups at the politie", lambda: len(cluster.clients[POLITIE].hits()) >= 3
        )
        yield cluster
    finally:
        cluster.close()


def collect_and_wait(
    cluster: Cluster, measure: Measure, dims: tuple[Dimension, ...], **kwargs: Any
) -> Picture:
    started = cluster.clients[RIEC].picture_collect(
        PERIOD, kwargs.pop("measures", (measure,)), dims, officer="analist@riec"
    )
    assert set(started.asked) == {RIEC, GEMEENTE, WOCO, POLITIE} or not kwargs.get("all", True)
    return wait_for(
        "every party's answer",
        lambda: (
            (
                shown := cluster.clients[RIEC].picture_show(
                    measure=measure, dimensions=dims, request_id=started.request_id
                )
            )
            and not shown.missing
            and shown
        ),
    )


def expected_signals() -> Counter[tuple[str, str]]:
    return Counter((f"pc4:{pc}", category) for _, _, category, pc, _, _, _ in ROWS)


def leaves(shown: Picture) -> dict[tuple[str, ...], int | None]:
    return {c.values: c.count for c in shown.table.cells if TOTAL not in c.values}


def test_exact_picture_equals_the_sum_of_the_test_data(cluster: Cluster) -> None:
    dims = (Dimension.AREA, Dimension.CATEGORY)
    shown = collect_and_wait(cluster, Measure.ACTIVE_SIGNALS, dims)
    assert set(shown.contributors) == {RIEC, GEMEENTE, WOCO, POLITIE}
    assert shown.refusals == ()
    expected = expected_signals()
    cells = {c.values: c for c in shown.table.cells}
    for key, value in expected.items():
        cell = cells[key]
        if value < MIN_COUNT:
            assert cell.quality is CellQuality.SUPPRESSED, key
        else:  # shown exactly, or suppressed to protect a small cell (complementary)
            assert cell.count in (value, None), key
    # The RIEC's node released τ-Argus's pattern (the one that gives up less here), and
    # its audit log says so.
    shown_events = [
        dict(e.details)
        for e in cluster.nodes[RIEC].repositories.shared.audit_entries(kind=AuditKind.PICTURE_EVENT)
        if e.details.get("event") == "picture_shown"
    ]
    assert shown_events[-1]["suppression"] == "tau-argus"
    # Every released figure, totals too, is either the true one or withheld: the grand
    # total may be given up to protect the small cell (τ-Argus's pattern hides 18 where
    # the project's own hides 6, 2 and their totals: less loss, so it is released).
    grand = cells[(TOTAL, TOTAL)]
    assert grand.count in (sum(expected.values()), None)
    assert grand.count is not None or grand.reason is SuppressionReason.PROTECTS_ANOTHER
    for key, cell in cells.items():
        if cell.quality is CellQuality.EXACT:
            assert cell.count == sum(
                v
                for leaf, v in expected.items()
                if all(k in (TOTAL, x) for k, x in zip(key, leaf, strict=True))
            ), key


def test_each_hit_group_counts_once(cluster: Cluster) -> None:
    shown = collect_and_wait(cluster, Measure.HIT_GROUPS, (Dimension.CATEGORY,))
    cells = {c.values: c for c in shown.table.cells}
    # Three groups of two members each: three, not six; and no other category.
    assert cells[("witwasindicatie",)].count == 3
    assert cells[(TOTAL,)].count == 3
    assert {k for k in cells if TOTAL not in k} == {("witwasindicatie",)}


def test_a_party_without_picture_rights_is_refused(cluster: Cluster) -> None:
    with pytest.raises(NotAllowed) as local:
        cluster.clients[POLITIE].picture_collect(PERIOD, officer="agent@politie")
    assert local.value.field == "party"
    # A request the politie seals by hand is refused by every node that gets it.
    covenant = cluster.provisioned.covenant
    cursor = cluster.nodes[POLITIE].repositories.shared.mailbox_cursor()
    keys = PartyKeys.load(cluster.provisioned.party_dir(POLITIE) / "party-keys.json")
    request_id = secrets.token_bytes(16)
    ask = PictureAsk(PERIOD, (Measure.ACTIVE_SIGNALS,), (Dimension.AREA,))
    message = picture_protocol.request_message(
        covenant, POLITIE, ask, request_id=request_id, now=datetime.now(UTC)
    )
    for party in (GEMEENTE, WOCO):
        envelope = picture_protocol.build_request(
            keys, covenant, message, recipient=party, message_id=secrets.token_bytes(16)
        )
        cluster.queue(POLITIE, envelope.sealed.SerializeToString(), party)

    def answered(party: str) -> list[dict[str, Any]]:
        entries = cluster.nodes[party].repositories.shared.audit_entries(
            kind=AuditKind.PICTURE_EVENT, subject=request_id.hex()
        )
        return [dict(e.details) for e in entries]

    for party in (GEMEENTE, WOCO):
        (entry,) = wait_for(f"{party}'s refusal", lambda p=party: answered(p))
        assert (entry["outcome"], entry["reason"]) == ("refused", "not_allowed")
        assert entry["epsilon_spent"] == "0"
    # The refusals reach the politie, which asked for nothing and drops them (waited for
    # here, so that its log line does not land in a later test's output).
    wait_for(
        "the refusals at the politie",
        lambda: cluster.nodes[POLITIE].repositories.shared.mailbox_cursor() >= cursor + 2,
    )


def test_a_breakdown_by_role_is_refused_in_exact_mode_by_the_viewer_and_every_partner(
    cluster: Cluster,
) -> None:
    """Issue 13, finding 2: a role is mostly one partner's, so a table of the partners'
    counts by role would be each partner's own counts. The RIEC's node refuses to ask for
    one (naming ``dimensions``); a request the RIEC seals by hand is refused by every
    partner on its own, which sends no share; the daemons keep serving."""
    dims = (Dimension.AREA, Dimension.ROLE)
    with pytest.raises(InvalidInput) as local:
        cluster.clients[RIEC].picture_collect(
            PERIOD, (Measure.ACTIVE_SIGNALS,), dims, officer="analist@riec"
        )
    assert (local.value.field, local.value.reason) == ("dimensions", "picture.role_exact")
    covenant = cluster.provisioned.covenant
    cursor = cluster.nodes[RIEC].repositories.shared.mailbox_cursor()
    keys = PartyKeys.load(cluster.provisioned.party_dir(RIEC) / "party-keys.json")
    request_id = secrets.token_bytes(16)
    ask = PictureAsk(PERIOD, (Measure.ACTIVE_SIGNALS,), dims)
    message = picture_protocol.request_message(
        covenant, RIEC, ask, request_id=request_id, now=datetime.now(UTC)
    )
    partners = (GEMEENTE, WOCO, POLITIE)
    for party in partners:
        envelope = picture_protocol.build_request(
            keys, covenant, message, recipient=party, message_id=secrets.token_bytes(16)
        )
        cluster.queue(RIEC, envelope.sealed.SerializeToString(), party)
    for party in partners:

        def answered(p: str = party) -> list[dict[str, Any]]:
            entries = cluster.nodes[p].repositories.shared.audit_entries(
                kind=AuditKind.PICTURE_EVENT, subject=request_id.hex()
            )
            return [dict(e.details) for e in entries]

        (entry,) = wait_for(f"{party}'s refusal", answered)
        assert (entry["outcome"], entry["reason"]) == ("refused", "invalid_request")
        assert cluster.nodes[party].repositories.picture.picture_shares_held(request_id) == []
    # The refusals reach the RIEC (waited for, so that its log lines do not land in a
    # later test's output).
    wait_for(
        "the refusals at the RIEC",
        lambda: cluster.nodes[RIEC].repositories.shared.mailbox_cursor() >= cursor + len(partners),
    )
    again = collect_and_wait(cluster, Measure.ACTIVE_SIGNALS, (Dimension.CATEGORY,))
    assert set(again.contributors) == {RIEC, GEMEENTE, WOCO, POLITIE}


def test_a_suppressed_cell_stays_hidden_in_show_json_and_html(
    cluster: Cluster, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dims = (Dimension.AREA, Dimension.CATEGORY)
    collect_and_wait(cluster, Measure.ACTIVE_SIGNALS, dims)
    small = ("pc4:5041", "vastgoedmisbruik")  # two signals: below the minimum of three
    assert expected_signals()[small] == 2
    node = str(cluster.provisioned.node_configs[RIEC])
    args = ["picture", "show", "--node", node, "--period", MONTH, "--by", "area,category"]
    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    (cell,) = [c for c in shown["cells"] if tuple(c["values"]) == small]
    assert (cell["count"], cell["quality"], cell["suppression"]) == (None, "suppressed", "too_few")
    assert main(args) == 0
    text = capsys.readouterr().out
    (line,) = [row for row in text.splitlines() if "pc4:5041" in row and "vastgoed" in row]
    assert picture_report.SUPPRESSED_MARK in line
    assert "2" not in line.split("│")[-2]

    report = build_report(cluster.clients[RIEC], PERIOD, officer="analist@riec", wait=WAIT)
    html = picture_report.render(report)
    assert "http://" not in html
    assert "https://" not in html
    heat = report.heat
    assert heat is not None
    for released in (heat, report.areas):
        assert released is not None
        for c in released.suppressed:
            assert c.count is None
    out = tmp_path / "beeld.html"
    areas = DEMO_AREAS
    args = ["picture", "report", "--node", node, "--period", MONTH, "--out", str(out)]
    assert main([*args, "--areas", str(areas)]) == 0
    written = out.read_text(encoding="utf-8")
    assert written.startswith('<!DOCTYPE html>\n<html lang="nl">')
    assert 'class="map"' in written
    assert 'class="network"' not in written  # no [network] section: no links, no drawing
    # the node tells the report the covenant's categories (and classification, none here)
    status = cluster.clients[RIEC].status()
    assert "vastgoedmisbruik" in status.categories
    assert status.picture_classification == ""
    assert "@top-center" not in written


def test_the_readme_workflow_releases_no_table_that_recovers_a_suppressed_cell(
    cluster: Cluster,
) -> None:
    """README step 11: ``picture collect --by area,category``, ``picture show``, then
    ``picture report`` for the same period. Every table released (the shown one and the
    report's areas, branch by category and trend) is a slice of the period's one
    protected cube: searched together by exact linear algebra, they pin down no
    suppressed cell, so no subtraction of category totals from a grand total works
    (issue 13, finding 3)."""
    from test_picture_linked import pinned_down

    dims = (Dimension.AREA, Dimension.CATEGORY)
    shown = collect_and_wait(cluster, Measure.ACTIVE_SIGNALS, dims)
    small = ("pc4:5041", "vastgoedmisbruik")
    assert shown.table.cell(small).quality is CellQuality.SUPPRESSED
    report = build_report(cluster.clients[RIEC], PERIOD, officer="analist@riec", wait=WAIT)
    assert report.areas is not None
    assert report.heat is not None
    tables = [shown.table, report.areas, report.heat, report.trend[0]]
    cube = (Dimension.AREA, Dimension.BRANCH, Dimension.CATEGORY, Dimension.MONTH)
    axes = [
        sorted({f"pc4:{row[3]}" for row in ROWS}),
        sorted({row[5] for row in ROWS}),
        sorted({row[2] for row in ROWS}),
        [MONTH],
    ]
    assert pinned_down(cube, axes, tables) == []
    grand = {t.cell((TOTAL,) * len(t.dimensions)).count for t in tables}
    assert len(grand) == 1  # the same grand total everywhere (or withheld everywhere)


def test_the_broker_sees_no_area_branch_or_count(
    cluster: Cluster, capfd: pytest.CaptureFixture[str]
) -> None:
    collect_and_wait(cluster, Measure.ACTIVE_SIGNALS, (Dimension.BRANCH, Dimension.AREA))
    logged = capfd.readouterr()
    broker_dir = cluster.root / "broker"
    blobs = [p.read_bytes() for p in broker_dir.rglob("*") if p.is_file() and "data" in p.parts]
    assert blobs
    # In the broker's files the picture's figures would appear as the cell values of a
    # PictureTable: "pc4:NNNN" and the branch codes as length-prefixed protobuf strings.
    # (A bare 4- or 5-digit code turns up by chance in megabytes of ciphertext and random
    # tokens; these forms do not.)
    in_files = [b"pc4:5038", b"pc4:5041", *(bytes([0x0A, len(b)]) + b.encode() for b in BRANCHES)]
    in_files += [b"woonfraude", b"vastgoedmisbruik", b"witwasindicatie"]
    for blob in blobs:
        for value in in_files:
            assert value not in blob, value
    # Log lines are text: there even the bare codes must not appear.
    in_logs = ["pc4:", "5038", "5041", *BRANCHES, "woonfraude", "vastgoedmisbruik"]
    for text in in_logs:
        assert text not in logged.out + logged.err, text
    assert "count=" not in logged.err


def test_bad_input_is_named_by_field(cluster: Cluster) -> None:
    client = cluster.clients[RIEC]
    with pytest.raises(InvalidInput) as bad_period:
        client.picture_collect("2026-13", officer="analist@riec")
    assert bad_period.value.field == "period"
    with pytest.raises(InvalidInput) as dimension:
        client.picture_collect(PERIOD, dimensions=["wijk"], officer="analist@riec")
    assert dimension.value.field == "dimensions[0]"
    with pytest.raises(InvalidInput) as measure:
        client.picture_collect(PERIOD, measures=["signalen"], officer="analist@riec")
    assert measure.value.field == "measures[0]"
    with pytest.raises(InvalidInput) as mismatch:
        client.picture_collect(
            PERIOD, measures=["hit_groups"], dimensions=["intervention_type"], officer="a@riec"
        )
    assert mismatch.value.field == "dimensions"
    for officer in ("", "analist\x1b[2J", "ü" * 33):
        with pytest.raises(InvalidInput) as bad_officer:
            client.picture_collect(PERIOD, officer=officer)
        assert bad_officer.value.field == "officer"
    with pytest.raises(NotFound) as never:  # (any breakdown of a collected period is a view)
        client.picture_show("2020-01", "active_signals", ["role"])
    assert never.value.field == "period"
    for argv in (
        ["--period", "2026-10..2026-01"],
        ["--period", MONTH, "--by", "straat"],
        ["--period", MONTH, "--measure", "zaken"],
    ):
        riec = str(cluster.provisioned.node_configs[RIEC])
        assert main(["picture", "collect", "--node", riec, *argv]) != 0


def test_an_overlapping_period_is_refused_in_exact_mode(cluster: Cluster) -> None:
    """Sep..Oct next to an Oct already collected would give Sep..Oct minus Oct = Sep's
    suppressed cells away: refused, naming the period (docs/picture.md)."""
    collect_and_wait(cluster, Measure.ACTIVE_SIGNALS, (Dimension.AREA,))
    year, month = int(MONTH[:4]), int(MONTH[5:])
    before = f"{year - (month == 1):04d}-{(month - 2) % 12 + 1:02d}"
    with pytest.raises(InvalidInput) as overlapping:
        cluster.clients[RIEC].picture_collect(
            Period(before, MONTH), (Measure.ACTIVE_SIGNALS,), (), officer="analist@riec"
        )
    assert (overlapping.value.field, overlapping.value.reason) == (
        "period",
        "picture.overlapping_period",
    )
    collect_and_wait(cluster, Measure.ACTIVE_SIGNALS, (Dimension.CATEGORY,))  # equal: fine


# --- issue 13: the viewer learns no partner's own counts -----------------------------------


def _aggregator_events(cluster: Cluster, request_id: bytes) -> list[dict[str, Any]]:
    entries = cluster.nodes[WOCO].repositories.shared.audit_entries(
        kind=AuditKind.PICTURE_EVENT, subject=request_id.hex()
    )
    return [dict(e.details) for e in entries]


def _seal_sum_request(cluster: Cluster, request_id: bytes, contributors: list[str]) -> None:
    keys = PartyKeys.load(cluster.provisioned.party_dir(RIEC) / "party-keys.json")
    message = picture_protocol.sum_request_message(
        request_id, RIEC, contributors, now=datetime.now(UTC)
    )
    envelope = picture_protocol.seal_message(
        keys,
        cluster.provisioned.covenant,
        SignatureContext.PICTURE_SUM_REQUEST,
        message.SerializeToString(),
        recipient=WOCO,
        message_id=secrets.token_bytes(16),
    )
    cluster.queue(RIEC, envelope.sealed.SerializeToString(), WOCO)


def test_the_aggregator_answers_a_viewer_once_and_never_for_too_few(cluster: Cluster) -> None:
    """Attack (c): the RIEC asks the aggregator (the woningcorporatie) again for a request
    it was answered, and for a sum over one contributor: both refused, and the daemons
    keep serving."""
    started = cluster.clients[RIEC].picture_collect(
        PERIOD, (Measure.ACTIVE_SIGNALS,), (Dimension.CATEGORY,), officer="analist@riec"
    )
    request_id = started.request_id
    wait_for(
        "the sum answered",
        lambda: any(e["event"] == "sum_answered" for e in _aggregator_events(cluster, request_id)),
    )
    _seal_sum_request(cluster, request_id, [GEMEENTE, POLITIE])

    def asked_again() -> list[dict[str, Any]] | None:
        found = _aggregator_events(cluster, request_id)
        return found if any(x["event"] == "sum_asked_again" for x in found) else None

    events = wait_for("the second ask recorded", asked_again)
    assert [x["event"] for x in events].count("sum_answered") == 1
    lone = secrets.token_bytes(16)
    _seal_sum_request(cluster, lone, [GEMEENTE])
    (answered,) = wait_for(
        "the lone ask refused",
        lambda: [e for e in _aggregator_events(cluster, lone) if e["event"] == "sum_answered"],
    )
    assert (answered["outcome"], answered["reason"]) == ("refused", "invalid_request")
    assert answered["contributors"] == 0
    # Still serving: a new collection is answered and summed.
    again = collect_and_wait(cluster, Measure.ACTIVE_SIGNALS, (Dimension.CATEGORY,))
    assert set(again.contributors) == {RIEC, GEMEENTE, WOCO, POLITIE}


def _partner_tables(dims: tuple[Dimension, ...]) -> dict[str, Counter[tuple[str, ...]]]:
    tables: dict[str, Counter[tuple[str, ...]]] = {}
    for who, _, category, pc, _, branch, _ in ROWS:
        values = {Dimension.AREA: f"pc4:{pc}", Dimension.CATEGORY: category}
        values[Dimension.BRANCH] = branch
        values[Dimension.ROLE] = next(s.role.value for s in SPECS if s.id == who)
        tables.setdefault(who, Counter())[tuple(values[d] for d in dims)] += 1
    return tables


def test_the_viewers_database_holds_no_partners_own_counts(cluster: Cluster) -> None:
    """Attack (b), finding 2: decode every picture row the RIEC's node stores. No partner's
    contribution holds a table; what it kept of a partner is a random share (erased once
    summed) or the sum over at least two partners, which equals no one partner's table."""
    from samenloop.node.picture import shares as picture_shares
    from samenloop.node.picture.desk import remote_ask
    from samenloop.policies import crypto

    dims = (Dimension.AREA, Dimension.CATEGORY)
    collect_and_wait(cluster, Measure.ACTIVE_SIGNALS, dims)
    repositories = cluster.nodes[RIEC].repositories
    engine = repositories.engine
    partners = _partner_tables(dims)
    summed_here = 0
    with engine.connect() as conn:
        for row in conn.execute(sa.select(picture_models.PictureContribution.__table__)):
            if row.contributor == RIEC or row.body == b"-":
                continue
            message = picture_pb2.PictureContribution.FromString(row.body)
            assert not message.tables, row.contributor
        ids = conn.execute(sa.select(picture_models.PictureCollection.request_id)).scalars().all()
    for request_id in ids:
        record = repositories.picture.picture_collection(request_id)
        assert record is not None
        if record.aggregate is None:
            continue
        assert len(record.aggregate_contributors) >= 2
        assert RIEC not in record.aggregate_contributors
        remote = remote_ask(record)
        assert remote is not None
        assert remote.domain is not None
        for shared in picture_shares.decode(
            crypto.share_values(record.aggregate),
            remote.domain,
            remote.measures,
            exact=cluster.provisioned.covenant.policy.picture.band_marks,
        ):
            if shared.measure is Measure.ACTIVE_SIGNALS and set(dims) <= set(remote.dimensions):
                # The period's cube (linked tables), seen by these dimensions.
                at = [remote.dimensions.index(d) for d in dims]
                projected: Counter[tuple[str, ...]] = Counter()
                for key, value in shared.counts.items():
                    projected[tuple(key[i] for i in at)] += value
                counts = {k: v for k, v in projected.items() if v}
                summed_here += 1
                for party, own in partners.items():
                    assert counts != dict(own), party
                assert counts == dict(sum(partners.values(), Counter()))
    assert summed_here >= 1


def _rank(rows: list[list[Fraction]]) -> int:
    rows = [list(r) for r in rows]
    rank = 0
    for col in range(len(rows[0]) if rows else 0):
        pivot = next((i for i in range(rank, len(rows)) if rows[i][col] != 0), None)
        if pivot is None:
            continue
        rows[rank], rows[pivot] = rows[pivot], rows[rank]
        for i in range(len(rows)):
            if i != rank and rows[i][col] != 0:
                f = rows[i][col] / rows[rank][col]
                rows[i] = [x - f * y for x, y in zip(rows[i], rows[rank], strict=True)]
        rank += 1
    return rank


def test_padding_a_cell_with_the_viewers_own_signals_gives_nothing_away(cluster: Cluster) -> None:
    """Attack (a), finding 1: the gemeente has 2 signals in pc4:5041 vastgoedmisbruik; the
    RIEC imports 3 of its own there and collects. The cell (5 in all) is judged on the
    others' 2 and stays hidden, and no released figure, less the RIEC's own counts, pins
    it or any other hidden cell down (linear algebra over the released figures)."""
    target = ("pc4:5041", "vastgoedmisbruik")
    riec = cluster.clients[RIEC]
    padding = [
        SignalInput(
            reference=f"R-{i}",
            category="vastgoedmisbruik",
            identifiers=[("address", f"5041 AB {80 + i}")],
        )
        for i in range(3)
    ]
    assert riec.import_signals(padding).rejected == 0
    try:
        dims = (Dimension.AREA, Dimension.CATEGORY)
        shown = collect_and_wait(cluster, Measure.ACTIVE_SIGNALS, dims)
        cell = shown.table.cell(target)
        assert (cell.count, cell.quality) == (None, CellQuality.SUPPRESSED)
        areas, categories = shown.table.axes
        leaves = [(a, c) for a in areas for c in categories]

        def form(key: tuple[str, ...]) -> list[Fraction]:
            return [Fraction(key[0] in (a, TOTAL) and key[1] in (c, TOTAL)) for a, c in leaves]

        # Unknowns: the others' counts per leaf; the RIEC's own are known, so every
        # released figure is one equation on them.
        known = [
            form(c.values) for c in shown.table.cells if c.quality is not CellQuality.SUPPRESSED
        ]
        known += [form(k) for k in leaves if k not in {c.values for c in shown.table.cells}]
        base = _rank(known)
        hidden = [c.values for c in shown.table.cells if c.quality is CellQuality.SUPPRESSED]
        assert target in hidden
        for key in hidden:
            assert _rank([*known, form(key)]) > base, key
    finally:
        for i in range(3):
            riec.withdraw_signal(f"R-{i}", reason="test", officer="analist@riec")


def test_noisy_mode_marks_figures_and_refuses_beyond_the_budget(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    covenant = cluster.provisioned.covenant
    noisy_covenant = dataclasses.replace(covenant, version=2, policy=policy(noisy=True))
    cluster.publish(noisy_covenant)
    dims = (Dimension.CATEGORY,)
    noisy = collect_and_wait(cluster, Measure.ACTIVE_SIGNALS, dims)
    assert noisy.refusals == ()
    figures = [c for c in noisy.table.cells if c.quality is not CellQuality.SUPPRESSED]
    assert figures
    assert all(c.quality is CellQuality.NOISY for c in figures)
    assert all(c.noise_scale > 0 for c in noisy.table.cells)
    riec = str(cluster.provisioned.node_configs[RIEC])
    # The report needs five requests (ε 2.5), 0.5 is left: it says so and asks no one.
    out = tmp_path / "beeld.html"
    capsys.readouterr()
    assert main(["picture", "report", "--node", riec, "--period", MONTH, "--out", str(out)]) == 1
    assert (
        "needs epsilon 2.5 on each of its months (5 requests), 0.5 left" in capsys.readouterr().err
    )
    assert not out.exists()
    args = ["picture", "report", "--node", riec, "--period", MONTH, "--out", str(out), "--dry-run"]
    assert main(args) == 0
    assert "needs epsilon 2.5 on each of its months at every node, 0.5 left" in (
        capsys.readouterr().out
    )
    assert cluster.nodes[GEMEENTE].repositories.picture.picture_ledger([MONTH]).spent(MONTH) == 0.5
    collect_and_wait(cluster, Measure.ACTIVE_SIGNALS, dims)  # the period's second half
    with pytest.raises(QuotaExceeded) as spent:  # the RIEC's own node refuses a third ...
        cluster.clients[RIEC].picture_collect(
            PERIOD, (Measure.ACTIVE_SIGNALS,), dims, officer="analist@riec"
        )
    assert (spent.value.field, spent.value.reason) == ("period", "picture.budget_exhausted")
    assert "needs epsilon 0.5 on each of its months (1 request), 0 left" in spent.value.message
    assert "nothing was spent" in spent.value.message
    # ... and every partner decides on its own: a request sealed by hand is refused.
    keys = PartyKeys.load(cluster.provisioned.party_dir(RIEC) / "party-keys.json")
    request_id = secrets.token_bytes(16)
    ask = PictureAsk(PERIOD, (Measure.ACTIVE_SIGNALS,), dims)
    message = picture_protocol.request_message(
        noisy_covenant,
        RIEC,
        ask,
        request_id=request_id,
        now=datetime.now(UTC),
    )
    for party in (GEMEENTE, WOCO, POLITIE):
        envelope = picture_protocol.build_request(
            keys,
            noisy_covenant,
            message,
            recipient=party,
            message_id=secrets.token_bytes(16),
        )
        cluster.queue(RIEC, envelope.sealed.SerializeToString(), party)
    for party in (GEMEENTE, WOCO, POLITIE):

        def answered(p: str = party) -> list[dict[str, Any]]:
            entries = cluster.nodes[p].repositories.shared.audit_entries(
                kind=AuditKind.PICTURE_EVENT, subject=request_id.hex()
            )
            return [dict(e.details) for e in entries]

        (entry,) = wait_for(f"{party}'s refusal", answered)
        assert (entry["outcome"], entry["reason"]) == ("refused", "budget_exhausted")
        assert entry["epsilon_spent"] == "0"
    # The ledger never goes beyond the covenant's budget.
    for party in (RIEC, GEMEENTE):
        ledger = cluster.nodes[party].repositories.picture.picture_ledger([MONTH])
        assert ledger.spent(MONTH) == pytest.approx(1.0)


def test_import_maps_coarse_attributes_and_reports_bad_ones_by_row_and_column() -> None:
    from samenloop.node.identifiers.normalise import IdentifierType
    from samenloop.node.signals.commands import ColumnMapping, rows_to_signals
    from samenloop.node.signals.models import AreaKind

    header = ["Dossier", "BSN", "Buurt", "SBI", "Datum"]
    rows = [
        (2, ["D-1", "111222333", "BU08550101", "56101", "2026-10-15"]),
        (3, ["D-2", "123456782", "wijk 7", "0412", "2026-13"]),
        (4, ["D-3", "100000009", "", "", ""]),
    ]
    mapping = ColumnMapping(
        reference_column="Dossier",
        identifiers=((IdentifierType.BSN, "BSN"),),
        category="woonfraude",
        area_column="Buurt",
        branch_column="SBI",
        month_column="Datum",
    )
    prepared, problems = rows_to_signals(header, rows, mapping)
    first, empty = (p.signal for p in prepared)
    assert (first.area_kind, first.area_code, first.branch, first.month) == (
        AreaKind.CBS_BUURT,
        "BU08550101",
        "56101",
        "2026-10",
    )
    assert (empty.area_code, empty.branch, empty.month) == (None, None, None)
    assert [(p.row, p.column, p.reason) for p in problems] == [
        (3, "Buurt", "area.code"),
        (3, "SBI", "branch.division"),
        (3, "Datum", "month.format"),
    ]
