"""The subject network through real daemons: a broker and six nodes (mTLS on loopback,
SQLite) under a covenant whose ``[network]`` lets the RIEC and the LIEC see links.

Three partners' signals tie a person (a BSN), an address and two companies (KvK numbers)
across four hit groups: the gemeente's signal holds the BSN and the address, the woco's
the BSN and the first company, the tax office's the address and both companies; the
woco's second signal makes the second company a hit. The RIEC's network is then the one
this test builds from those signals: one component of four groups and five links from
three partners. The politie also ties the BSN to the address: the RIEC sees that link,
the LIEC (whose rule, in this covenant, hides the politie) does not. The broker relays
ciphertext only: no group pair appears in its database or the logs. A restarted
reporter sends nothing twice; a withdrawn signal ends its links, and links go with the
hits they join.

Insiders: a link between groups its reporter is not a member of is refused by the
viewer; a replayed link is stored once; garbage and oversized fields are refused naming
the field, storing nothing. A case on a component gives no invitee the coordinator's
notice of a hit it is not in. A covenant version that hides a reporter from a viewer, or
lowers a viewer's rule below parties, leaves that viewer none of those links.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from samenloop.node.cases import models as case_models
from samenloop.node.daemon import models as daemon_models
from samenloop.node.daemon.envelopes import seal
from samenloop.node.network import links
from samenloop.node.network import models as network_models
from samenloop.node.network.graph import Edge, Vertex, components
from samenloop.node.provision import PartySpec
from samenloop.policies.audit import AuditKind
from samenloop.policies.cli import main
from samenloop.policies.covenant import Role
from samenloop.policies.crypto import SignatureContext
from samenloop.policies.errors import InvalidInput, NotFound
from samenloop.policies.policy import Level, NetworkRules, VisibilityRule, example_policy
from samenloop.v1 import network_pb2

import in_process
from in_process import Cluster, wait_for

RIEC, LIEC, GEMEENTE, WOCO, BELASTING, POLITIE, PROVINCIE = (
    "riec",
    "liec",
    "gemeente",
    "woco",
    "belastingdienst",
    "politie",
    "provincie",
)
SPECS = (
    PartySpec(RIEC, "RIEC Test", Role.RIEC),
    PartySpec(LIEC, "LIEC Test", Role.LIEC),
    PartySpec(GEMEENTE, "Gemeente Test", Role.GEMEENTE),
    PartySpec(WOCO, "Woningcorporatie Test", Role.WONINGCORPORATIE),
    PartySpec(BELASTING, "Belastingdienst Test", Role.BELASTINGDIENST),
    PartySpec(POLITIE, "Politie Test", Role.POLITIE),
    PartySpec(PROVINCIE, "Provincie Test", Role.PROVINCIE),
)
BSN = ("bsn", "111222333")
ADDRESS = ("address", "1234 AB 12")
COMPANY_1 = ("kvk", "12345678")
COMPANY_2 = ("kvk", "01234567")
#: Every party's signals: reference and identifiers.
SIGNALS: dict[str, list[tuple[str, list[tuple[str, str]]]]] = {
    GEMEENTE: [("G-1", [BSN, ADDRESS])],
    WOCO: [("W-1", [BSN, COMPANY_1]), ("W-2", [COMPANY_2])],
    BELASTING: [("B-1", [ADDRESS, COMPANY_1, COMPANY_2])],
    POLITIE: [("P-1", [BSN, ADDRESS])],
}
THREE = {GEMEENTE, WOCO, BELASTING}


def network_policy() -> Any:
    """The example covenant with ``[network] viewers = ["riec", "liec"]``; the LIEC here
    coordinates with the parties shown, and its rule hides the politie."""
    policy = example_policy()
    liec = VisibilityRule(Role.LIEC, Level.PARTIES, (Role.POLITIE,), coordinator=True)
    return dataclasses.replace(
        policy,
        visibility=tuple(liec if r.role is Role.LIEC else r for r in policy.visibility),
        network=NetworkRules(viewers=(Role.RIEC, Role.LIEC)),
        # For the RIEC's picture report: the woco sums the partners' second shares.
        picture=dataclasses.replace(
            policy.picture,
            aggregator=Role.WONINGCORPORATIE,
            areas=("pc4:1234",),
            branches=("56101",),
        ),
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("network")
    with in_process.running_cluster(
        root, "riec-network", SPECS, (GEMEENTE, WOCO), policy=network_policy()
    ) as running:
        for party, signals in SIGNALS.items():
            for reference, identifiers in signals:
                running.clients[party].add_signal(reference, "woonfraude", identifiers)
        yield running


def group_of(cluster: Cluster, party: str, reference: str, kind: str) -> bytes:
    """The group of ``party``'s identifier of type ``kind`` in its signal ``reference``."""

    def found() -> bytes | None:
        for hit in cluster.clients[party].hits():
            for own in hit.own_signals:
                if own.reference == reference and own.identifier_type == kind:
                    return bytes(hit.group_id)
        return None

    return wait_for(f"{party}'s hit on {reference} {kind}", found)  # type: ignore[no-any-return]


def groups(cluster: Cluster) -> dict[tuple[str, str], bytes]:
    """Each shared identifier's hit group, as its holders' hits name it."""
    return {
        BSN: group_of(cluster, GEMEENTE, "G-1", "bsn"),
        ADDRESS: group_of(cluster, GEMEENTE, "G-1", "address"),
        COMPANY_1: group_of(cluster, WOCO, "W-1", "kvk"),
        COMPANY_2: group_of(cluster, WOCO, "W-2", "kvk"),
    }


def expected_edges(
    ids: dict[tuple[str, str], bytes], reporters: set[str]
) -> set[tuple[bytes, bytes, str, int]]:
    """The links the signals of ``reporters`` make: (a, b, reporter, count)."""
    counts: dict[tuple[bytes, bytes, str], int] = {}
    for party in reporters:
        for _, identifiers in SIGNALS.get(party, []):
            tied = sorted({ids[i] for i in identifiers if i in ids})
            for i, a in enumerate(tied):
                for b in tied[i + 1 :]:
                    counts[(a, b, party)] = counts.get((a, b, party), 0) + 1
    return {(a, b, party, n) for (a, b, party), n in counts.items()}


def edge_set(edges: list[Edge]) -> set[tuple[bytes, bytes, str, int]]:
    return {(e.a, e.b, e.reporter, e.count) for e in edges}


def network_of(cluster: Cluster, party: str, want: set[tuple[bytes, bytes, str, int]]) -> Any:
    def found() -> Any:
        vertices, edges = cluster.clients[party].network()
        return (vertices, edges) if edge_set(edges) == want else None

    try:
        return wait_for(f"{party}'s network", found)
    except AssertionError as error:
        held = edge_set(cluster.clients[party].network()[1])
        missing, extra = _short(want - held), _short(held - want)
        raise AssertionError(f"{error}: missing {missing}, extra {extra}") from None


def _short(edges: set[tuple[bytes, bytes, str, int]]) -> list[tuple[str, str, str, int]]:
    return sorted((a.hex()[:6], b.hex()[:6], r, n) for a, b, r, n in edges)


def test_the_riecs_network_is_the_one_the_signals_make(cluster: Cluster) -> None:
    ids = groups(cluster)
    want = expected_edges(ids, THREE | {POLITIE})
    assert len(want) == 6  # five from the three partners, one from the politie
    vertices, edges = network_of(cluster, RIEC, want)
    by_id: dict[bytes, Vertex] = {v.group_id: v for v in vertices}
    assert set(ids.values()) <= set(by_id)
    # The RIEC holds no signal: each group's type is the one its reporters gave.
    assert {by_id[g].identifier_type for g in ids.values()} == {"bsn", "address", "kvk"}
    assert by_id[ids[BSN]].identifier_type == "bsn"
    assert by_id[ids[ADDRESS]].parties == {GEMEENTE, BELASTING, POLITIE}
    ranked = components(vertices, edges)
    top = ranked[0]
    assert top.group_ids == frozenset(ids.values())
    assert top.partners == THREE | {POLITIE}
    # Through the API as well, ranked the same.
    listed = cluster.clients[RIEC].network_components()
    assert listed[0].group_ids == top.group_ids
    assert {(e.a, e.b, e.reporter) for e in listed[0].edges} == {w[:3] for w in want}
    # One group's component through NetworkShow.
    _, shown = cluster.clients[RIEC].network(ids[COMPANY_2])
    assert edge_set(shown) == want


def test_a_hidden_reporter_adds_no_edge_for_a_viewer_it_is_hidden_from(cluster: Cluster) -> None:
    ids = groups(cluster)
    # The LIEC's rule hides the politie: it gets the three partners' links only.
    want = expected_edges(ids, THREE)
    vertices, edges = network_of(cluster, LIEC, want)
    assert all(e.reporter != POLITIE for e in edges)
    assert all(POLITIE not in v.parties for v in vertices)
    # The politie told the RIEC and nobody else; no other party holds another's link
    # (each sees its own: the gemeente its BSN-address link).
    for party in (GEMEENTE, WOCO, BELASTING, POLITIE, PROVINCIE):
        assert all(e.reporter == party for e in cluster.clients[party].network()[1]), party
    own = cluster.clients[GEMEENTE].network(ids[BSN])[1]
    assert [(e.reporter, e.count) for e in own] == [(GEMEENTE, 1)]
    sent = cluster.nodes[POLITIE].repositories.network.sent_links()
    assert {s.recipient for s in sent} == {RIEC}


def test_the_broker_sees_no_group_pair(cluster: Cluster, capfd: pytest.CaptureFixture[str]) -> None:
    ids = groups(cluster)
    network_of(cluster, RIEC, expected_edges(ids, THREE | {POLITIE}))
    files = [
        cluster.broker_database,
        cluster.broker_database.with_name(cluster.broker_database.name + "-wal"),
    ]
    scanned = b"".join(p.read_bytes() for p in files if p.exists())
    assert scanned
    logged = capfd.readouterr()
    text = logged.out + logged.err
    for a, b, _, _ in expected_edges(ids, THREE | {POLITIE}):
        # A pair in the clear would be the two ids side by side, or a NetworkLink's
        # encoding of its first end (field 1 holding field 1 of 16 bytes: the group).
        for encoded in (a + b, b + a, a.hex().encode() + b.hex().encode(), b"\x0a\x10" + a):
            assert encoded not in scanned
        assert not any(a.hex() in line and b.hex() in line for line in text.splitlines())


def _send(cluster: Cluster, sender: str, recipient: str, body: bytes) -> None:
    uplink = cluster.nodes[sender].uplink  # the sender's own keys: an insider
    envelope = seal(
        uplink._keys,
        uplink._covenant(),
        recipient,
        SignatureContext.NETWORK_LINK,
        body,
        secrets.token_bytes(16),
    )
    cluster.queue(sender, envelope.sealed.SerializeToString(), recipient)


def _link(a: bytes, b: bytes, count: int, revision: int) -> links.LinkChange:
    return links.LinkChange(
        RIEC, links.LinkEnd(min(a, b), "kvk"), links.LinkEnd(max(a, b), "kvk"), count, revision
    )


def _network_events(cluster: Cluster, actor: str) -> list[dict[str, Any]]:
    entries = cluster.nodes[RIEC].repositories.shared.audit_entries(
        kind=AuditKind.NETWORK_EVENT, actor=actor
    )
    return [dict(e.details) for e in entries]


def test_insiders_lie_replay_and_send_garbage_in_vain(cluster: Cluster) -> None:
    ids = groups(cluster)
    want = expected_edges(ids, THREE | {POLITIE})
    network_of(cluster, RIEC, want)
    now = datetime.now(UTC)
    # The gemeente claims to tie the two companies: it is a member of neither.
    lie = links.to_message(GEMEENTE, [_link(ids[COMPANY_1], ids[COMPANY_2], 3, 99)], now=now)
    _send(cluster, GEMEENTE, RIEC, lie)
    refused = wait_for(
        "the RIEC's refusal of the lie",
        lambda: [e for e in _network_events(cluster, GEMEENTE) if e.get("not_a_member")],
    )
    assert refused[0]["not_a_member"] == 1
    assert edge_set(cluster.clients[RIEC].network()[1]) == want

    # The belastingdienst's real link message, replayed: nothing changes, it is a repeat.
    b_link = next(w for w in want if w[2] == BELASTING)
    replay = links.to_message(BELASTING, [_link(b_link[0], b_link[1], b_link[3], 1)], now=now)
    _send(cluster, BELASTING, RIEC, replay)
    repeated = wait_for(
        "the RIEC's verdict on the replay",
        lambda: [e for e in _network_events(cluster, BELASTING) if e.get("repeated")],
    )
    assert repeated[0]["repeated"] == 1
    assert edge_set(cluster.clients[RIEC].network()[1]) == want

    # Garbage: not a message, a score out of range, too many links. Each is dropped and
    # recorded naming the field; nothing is stored.
    bad_score = network_pb2.NetworkLinks.FromString(replay)
    bad_score.links[0].revision = 50
    bad_score.links[0].a.person_score = float("nan")
    too_many = network_pb2.NetworkLinks.FromString(replay)
    for _ in range(links.MAX_LINKS_PER_MESSAGE):
        too_many.links.add().CopyFrom(too_many.links[0])
    for body in (
        b"\x0a\xff\xff\xff\xff\x0f",
        bad_score.SerializeToString(),
        too_many.SerializeToString(),
    ):
        _send(cluster, BELASTING, RIEC, body)
    dropped = wait_for(
        "three dropped link messages",
        lambda: (
            found
            if len(
                found := [
                    dict(e.details)
                    for e in cluster.nodes[RIEC].repositories.shared.audit_entries(
                        kind=AuditKind.DISCLOSURE_RECEIVED
                    )
                    if e.details.get("dropped") == "malformed"
                ]
            )
            >= 3
            else None
        ),
    )
    assert [d["field"] for d in dropped[-3:]] == ["body", "links[0].a.person_score", "links"]
    assert edge_set(cluster.clients[RIEC].network()[1]) == want


def test_a_restarted_reporter_sends_nothing_twice(cluster: Cluster) -> None:
    ids = groups(cluster)
    network_of(cluster, RIEC, expected_edges(ids, THREE | {POLITIE}))
    e = daemon_models.EnvelopeOutboxItem

    def queued() -> int:
        with cluster.nodes[BELASTING].repositories.engine.connect() as conn:
            query = sa.select(sa.func.count()).where(e.recipient == RIEC)
            return int(conn.execute(query).scalar_one())

    before = queued()
    assert before >= 1
    cluster.stop(BELASTING)
    cluster.start(BELASTING)
    # Its desk runs once after the start (it keeps no memory of the last run) ...
    wait_for(
        "the restarted node's first network run",
        lambda: cluster.nodes[BELASTING].uplink.network._done is not None,
    )
    # ... and finds every link told already: nothing new is queued or received.
    assert queued() == before
    assert edge_set(cluster.clients[RIEC].network()[1]) == expected_edges(ids, THREE | {POLITIE})


def test_the_riec_lists_the_component_and_opens_a_case_on_it_from_the_cli(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = groups(cluster)
    network_of(cluster, RIEC, expected_edges(ids, THREE | {POLITIE}))
    riec = str(cluster.provisioned.node_configs[RIEC])

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([*argv, "--node", riec])
        printed = capsys.readouterr()
        return code, printed.out, printed.err

    code, out, _ = run("network", "components", "--json")
    assert code == 0
    shown = json.loads(out[out.index("[\n") :])  # after any of the nodes' log lines
    assert shown[0]["rank"] == 1
    assert {v["hit_group_id"] for v in shown[0]["vertices"]} == {g.hex() for g in ids.values()}
    assert shown[0]["partners"] == sorted(THREE | {POLITIE})
    code, out, _ = run("network", "components")
    assert code == 0
    assert "component 1: 4 group(s), 4 partner(s)" in out
    assert all(len(line) <= 80 for line in out.splitlines()), out
    code, out, _ = run("network", "show", "--group", ids[BSN].hex()[:8])
    assert code == 0
    assert ids[COMPANY_2].hex()[:12] in out
    assert "timeline:" in out
    code, out, _ = run("network", "show", "--group", ids[BSN].hex(), "--json")
    assert code == 0
    component = json.loads(out[out.index("{\n") :])
    linked = [e for e in component["timeline"] if e["event"] == "linked"]
    assert len(linked) == len(expected_edges(ids, THREE | {POLITIE}))
    code, _, err = run("network", "show", "--group", "zz")
    assert code != 0
    assert "--group" in err

    # A case on the component: every partner of its hits is invited but the politie,
    # whose role the gemeente's rule hides (a case with both would tip it off).
    code, out, err = run(
        "case", "open", "--component", "1", "--title", "Netwerk", "--officer", "a", "--json"
    )
    assert code == 0, err
    assert "not invited: politie" in err
    case = json.loads(out[out.index("{\n") :])
    assert sorted(case["members"]) == sorted({RIEC} | THREE)
    case_id = bytes.fromhex(case["case_id"])
    for party in THREE:  # each partner's node took the OPEN: it is a party of one of the hits
        wait_for(f"{party}'s copy of the case", lambda p=party: _holds(cluster, p, case_id))
    assert set(cluster.clients[WOCO].case(case_id).members) == {RIEC} | THREE
    # The coordinator's copy names the component's other hits. (The notices went to no
    # member: each shows the politie, whom every member's rule hides.)
    opened = cluster.clients[RIEC].case(case_id)
    assert {opened.hit_group_id, *opened.linked_hit_group_ids} == set(ids.values())
    # Neither HIT nor --component, or both: refused naming HIT.
    code, _, err = run("case", "open", "--title", "x", "--officer", "a")
    assert code != 0
    assert "HIT" in err


def test_the_riecs_picture_report_draws_the_network(cluster: Cluster, tmp_path: Path) -> None:
    """``picture report`` at the RIEC adds the network section with the component of
    four hits; ``--no-network`` leaves it out; no identifier appears in either."""
    ids = groups(cluster)
    network_of(cluster, RIEC, expected_edges(ids, THREE | {POLITIE}))
    riec = str(cluster.provisioned.node_configs[RIEC])
    month = datetime.now(UTC).strftime("%Y-%m")
    out, bare = tmp_path / "beeld.html", tmp_path / "zonder.html"
    args = ["picture", "report", "--node", riec, "--period", month, "--wait", "20"]
    assert main([*args, "--out", str(out)]) in (0, 1)  # 1: a party answered no data
    assert main([*args, "--out", str(bare), "--no-network"]) in (0, 1)
    html, without = out.read_text(encoding="utf-8"), bare.read_text(encoding="utf-8")
    assert 'class="network"' in html
    assert "Netwerk 1: 4 samenlopen, 4 partners" in html
    assert all(g.hex()[:8] in html for g in ids.values())
    assert 'class="network"' not in without
    for identifier in (BSN, ADDRESS, COMPANY_1, COMPANY_2):
        assert identifier[1] not in html


def _holds(cluster: Cluster, party: str, case_id: bytes) -> bool:
    try:
        cluster.clients[party].case(case_id)
    except NotFound:
        return False
    return True


def test_a_withdrawn_signal_ends_its_links_and_links_go_with_their_hits(cluster: Cluster) -> None:
    ids = groups(cluster)
    network_of(cluster, RIEC, expected_edges(ids, THREE | {POLITIE}))
    # The politie withdraws P-1: its link ends, the groups stay (each keeps two parties
    # every member still sees). The woco withdraws W-2: the second company's group keeps
    # only the tax office and closes, with the tax office's links to it.
    cluster.clients[POLITIE].withdraw_signal("P-1")
    cluster.clients[WOCO].withdraw_signal("W-2")
    closed = ids[COMPANY_2]
    want = {w for w in expected_edges(ids, THREE) if closed not in w[:2]}
    assert len(want) == 3
    vertices, _ = network_of(cluster, RIEC, want)
    assert closed not in {v.group_id for v in vertices}

    def sent(party: str) -> dict[tuple[bytes, bytes], int]:
        found = cluster.nodes[party].repositories.network.sent_links()
        return {(s.a, s.b): s.count for s in found if s.recipient == RIEC}

    # Each reporter told the RIEC its ended links (count 0), once.
    police_pair = min(ids[BSN], ids[ADDRESS]), max(ids[BSN], ids[ADDRESS])
    wait_for("the politie's ended link", lambda: sent(POLITIE) == {police_pair: 0})
    wait_for(
        "the tax office's ended links",
        lambda: sorted(n for pair, n in sent(BELASTING).items() if closed in pair) == [0, 0],
    )

    def rows_naming(group: bytes) -> int:
        n = network_models.NetworkLink
        with cluster.nodes[RIEC].repositories.engine.connect() as conn:
            query = sa.select(sa.func.count()).where(sa.or_(n.group_a == group, n.group_b == group))
            return int(conn.execute(query).scalar_one())

    # The RIEC's store keeps no row naming the closed group.
    wait_for("the RIEC to remove the closed group's links", lambda: rows_naming(closed) == 0)
    assert rows_naming(ids[COMPANY_1]) > 0
    removed = [e for e in _network_events(cluster, RIEC) if e.get("event") == "links_removed"]
    assert removed
    assert removed[-1]["links"] >= 1


def test_the_parser_names_every_bad_field() -> None:
    a, b = bytes(16), bytes([1]) * 16
    good = links.to_message(WOCO, [_link(a, b, 1, 1)], now=datetime.now(UTC))
    assert links.parse(good, sender=WOCO).links[0].count == 1
    cases = {
        "links[0].a.hit_group_id": lambda m: setattr(m.links[0].a, "hit_group_id", b"short"),
        "links[0].b.identifier_type": lambda m: setattr(m.links[0].b, "identifier_type", "x" * 99),
        "links[0]": lambda m: m.links[0].b.__setattr__("hit_group_id", a),
        "links[0].count": lambda m: setattr(m.links[0], "count", links.MAX_LINK_COUNT + 1),
        "links[0].revision": lambda m: setattr(m.links[0], "revision", 0),
        "reporter": lambda m: setattr(m, "reporter", GEMEENTE),
    }
    for field, spoil in cases.items():
        message = network_pb2.NetworkLinks.FromString(good)
        spoil(message)
        with pytest.raises(InvalidInput if field != "reporter" else Exception) as refused:
            links.parse(message.SerializeToString(), sender=WOCO)
        assert getattr(refused.value, "field", None) == field, field


def _three_groups(cluster: Cluster) -> dict[tuple[str, str], bytes]:
    """The network once the politie withdrew P-1 and the woco W-2 (idempotent): three
    groups of two partners each, every partner in two of them and not in the third."""
    ids = groups(cluster)
    cluster.clients[POLITIE].withdraw_signal("P-1")
    cluster.clients[WOCO].withdraw_signal("W-2")
    want = {w for w in expected_edges(ids, THREE) if ids[COMPANY_2] not in w[:2]}
    network_of(cluster, RIEC, want)
    return {k: v for k, v in ids.items() if k != COMPANY_2}


def test_a_component_case_tells_no_invitee_of_a_hit_it_is_not_in(cluster: Cluster) -> None:
    """Attack: a case on a component carries the coordinator's notices of all its hits.
    The gemeente and the tax office see categories, so each notice fits their level; but
    each is a party of two of the three hits only, and a partner learns of a hit only if
    it holds a signal in it. No invitee gets the notices (nor the other hits' ids)."""
    ids = _three_groups(cluster)
    hit, *linked = ids.values()
    opened = cluster.clients[RIEC].open_case(
        hit, "Netwerk drie", officer="a", invite=sorted(THREE), linked=linked
    )
    assert set(opened.linked_hit_group_ids) == set(linked)
    c = case_models.Case
    for party in sorted(THREE):
        wait_for(f"{party}'s copy", lambda p=party: _holds(cluster, p, opened.case_id))
        held = cluster.clients[party].case(opened.case_id)
        assert set(held.members) == {RIEC} | THREE
        assert list(held.linked_hit_group_ids) == [], party
        with cluster.nodes[party].repositories.engine.connect() as conn:
            row = conn.execute(
                sa.select(c.hit_notice, c.linked_group_ids).where(c.case_id == opened.case_id)
            ).one()
        assert row.hit_notice is None, party
        assert not row.linked_group_ids, party


def _publish(cluster: Cluster, draft: Any) -> None:
    """Deliver a new covenant version and a timestamp for it to every node."""
    from samenloop.broker.mailbox import ItemKind

    payload = cluster.provisioned.sign(draft).to_proto().SerializeToString()
    stamp = cluster.provisioned.stamp(draft, now=datetime.now(UTC)).signed
    for party in cluster.nodes:
        cluster.broker.store.mailboxes.enqueue(
            party, payload, ItemKind.COVENANT_UPDATE, datetime.now(UTC)
        )
        cluster.broker.store.mailboxes.enqueue(
            party, stamp, ItemKind.COVENANT_TIMESTAMP, datetime.now(UTC)
        )
    cluster.broker.service._bell.ring(list(cluster.nodes))
    for party in cluster.nodes:
        wait_for(
            f"{party} on v{draft.version}, fresh",
            lambda p=party: (
                (s := cluster.clients[p].status()).covenant_version == draft.version
                and s.covenant_fresh is True
            ),
        )


def test_a_reporter_the_viewer_may_no_longer_see_leaves_no_edge(cluster: Cluster) -> None:
    """Attack on retention: a new covenant version makes the RIEC's rule hide the tax
    office. Its node ends its links to the RIEC, but the RIEC refuses anything from a
    reporter it may not see, so the ends never land: the RIEC itself must drop that
    reporter's links (as it must those of a party the covenant removed, whose node the
    broker cuts off). Its store keeps no row of the tax office's.

    The same version lowers the LIEC's rule to counts: a link names its reporter as a
    member of both groups, which counts withhold, so the LIEC is no viewer any more. No
    partner goes on telling it links, and it keeps none."""
    ids = _three_groups(cluster)
    three = {w for w in expected_edges(ids, THREE) if set(w[:2]) <= set(ids.values())}
    network_of(cluster, LIEC, three)

    def rows_of(reporter: str) -> int:
        n = network_models.NetworkLink
        with cluster.nodes[RIEC].repositories.engine.connect() as conn:
            query = sa.select(sa.func.count()).where(n.reporter == reporter, n.count > 0)
            return int(conn.execute(query).scalar_one())

    assert rows_of(BELASTING) >= 1
    covenant = cluster.provisioned.covenant
    policy = covenant.policy
    riec = VisibilityRule(Role.RIEC, Level.CATEGORIES, (Role.BELASTINGDIENST,), coordinator=True)
    liec = VisibilityRule(Role.LIEC, Level.COUNT, (Role.POLITIE,), coordinator=True)
    changed = {Role.RIEC: riec, Role.LIEC: liec}
    hiding = dataclasses.replace(
        policy, visibility=tuple(changed.get(r.role, r) for r in policy.visibility)
    )
    _publish(cluster, dataclasses.replace(covenant, version=covenant.version + 1, policy=hiding))
    # Each group now shows the RIEC one partner it may see, which makes no hit: the
    # gemeente and the woco end their links too (their ends land), and no edge is left.
    network_of(cluster, RIEC, set())
    assert rows_of(BELASTING) == 0
    n = network_models.NetworkLink
    with cluster.nodes[RIEC].repositories.engine.connect() as conn:
        left = conn.execute(sa.select(sa.func.count()).where(n.reporter == BELASTING)).scalar_one()
    assert left == 0
    network_of(cluster, LIEC, set())
    with cluster.nodes[LIEC].repositories.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(n)).scalar_one() == 0
