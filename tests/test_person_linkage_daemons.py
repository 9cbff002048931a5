"""Scored person hits through real daemons: a broker and three nodes (mTLS on loopback,
SQLite) under a covenant that turns person key kinds on.

The gemeente holds ``Terhorst, Jan;1980-03-15``; the woningcorporatie the same person as
``Ter Horst, J.;15-03-1980``, which today's exact key misses (``terhorst`` against
``horst``); the tax office ``Jansen, Jan;1980-03-15``, who shares only the given name and the
date with the gemeente's. Both the gemeente and the woco see one probable hit with its
score and agreeing kinds; the tax office's weak agreement (one kind, under ``shown_score``)
is listed nowhere. Insiders: more refs of the same person raise no score (it counts
kinds, not refs); a disclosure request on a probable hit under ``disclosure_score`` is
refused by the owner.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest

from samenloop.node.client import Hit, NodeClient
from samenloop.node.identifiers import person_score
from samenloop.node.identifiers.person_keys import PersonKeyKind as K
from samenloop.node.provision import PartySpec
from samenloop.policies.covenant import Role
from samenloop.policies.policy import PERSON_KEY_KINDS, PersonMatching, example_policy

import in_process
from in_process import Cluster, wait_for

GEMEENTE, WOCO, BELASTING = "gemeente", "woco", "belastingdienst"
SPECS = (
    PartySpec(GEMEENTE, "Gemeente Test", Role.GEMEENTE),
    PartySpec(WOCO, "Woningcorporatie Test", Role.WONINGCORPORATIE),
    PartySpec(BELASTING, "Belastingdienst Test", Role.BELASTINGDIENST),
)
SHOWN = 30.0  # above any one kind's weight (about 18 to 23 bits): one kind alone is not shown
AGREEING = (K.PHONETIC_DATE.value, K.NAMES_YEAR_MONTH.value)
#: Each node scores the agreeing kinds against its own record's kinds. The gemeente's record
#: has a given name, so five kinds (no address); the three of them that did not agree count
#: against the hit. The woco's has an initial only: two kinds, both agreed.
GEMEENTE_KINDS = (
    K.PHONETIC_DATE,
    K.GIVEN_DATE,
    K.NAMES_YEAR_MONTH,
    K.NAMES_YEAR,
    K.NAMES_MONTH_DAY,
)
GEMEENTE_SCORE = person_score.score([K.PHONETIC_DATE, K.NAMES_YEAR_MONTH], GEMEENTE_KINDS)
WOCO_SCORE = person_score.score([K.PHONETIC_DATE, K.NAMES_YEAR_MONTH])
DETAILS = {"naam": "J. ter Horst", "adres": "Dorpsstraat 1"}


def person_policy() -> Any:
    policy = example_policy()
    return dataclasses.replace(
        policy,
        person_matching=PersonMatching(kinds=PERSON_KEY_KINDS, shown_score=SHOWN),
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("person-linkage")
    with in_process.running_cluster(
        root, "riec-person", SPECS, (GEMEENTE, WOCO), policy=person_policy()
    ) as running:
        clients = running.clients
        clients[GEMEENTE].add_signal("G-1", "woonfraude", [("person", "Terhorst, Jan;1980-03-15")])
        clients[WOCO].add_signal(
            "W-1", "woonfraude", [("person", "Ter Horst, J.;15-03-1980")], details=DETAILS
        )
        clients[BELASTING].add_signal("P-1", "woonfraude", [("person", "Jansen, Jan;1980-03-15")])
        yield running


def person_hits(client: NodeClient) -> list[Hit]:
    return [h for h in client.hits() if h.probable_hits]


def open_hits(client: NodeClient, count: int) -> None:
    """Wait until the node holds ``count`` open hits, listed or not (its status counts all)."""
    wait_for(f"{count} open hits", lambda: client.status().open_hits >= count)


def test_a_hit_despite_a_typo_is_one_probable_hit_with_its_score(cluster: Cluster) -> None:
    gemeente = cluster.clients[GEMEENTE]
    hits = wait_for(
        "the gemeente's probable hit on both kinds",
        lambda: [
            h
            for h in person_hits(gemeente)
            if any(p.agreeing_kinds == AGREEING for p in h.probable_hits)
        ],
    )
    probable = {p for h in hits for p in h.probable_hits}
    assert len(probable) == 1  # one probable hit, whichever of its groups shows it
    (found,) = probable
    assert found.party == WOCO
    assert found.score == pytest.approx(GEMEENTE_SCORE)
    assert GEMEENTE_SCORE < WOCO_SCORE
    assert found.score >= SHOWN
    assert not found.disclosable  # shown, not enough for a disclosure
    assert found.signal_id == gemeente.signal("G-1").signal_id
    assert {o.person_kind for h in hits for o in h.own_signals} <= set(AGREEING)
    # The exact key missed: no hit on the person identifier itself.
    assert not [h for h in gemeente.hits() if any(o.person_kind is None for o in h.own_signals)]
    woco = cluster.clients[WOCO]
    seen = wait_for(
        "the woco's probable hit",
        lambda: [
            p for h in person_hits(woco) for p in h.probable_hits if p.agreeing_kinds == AGREEING
        ],
    )
    assert len({(p.signal_id, p.party) for p in seen}) == 1
    assert all(p.score == pytest.approx(WOCO_SCORE) for p in seen)


def test_a_weak_agreement_is_listed_nowhere(cluster: Cluster) -> None:
    # The tax office's record agrees with the gemeente's on the given name and date only: one
    # group each holds (given_date), beside the gemeente's two with the woco.
    gemeente, belasting = cluster.clients[GEMEENTE], cluster.clients[BELASTING]
    open_hits(belasting, 1)
    open_hits(gemeente, 3)
    assert all(p.party != BELASTING for h in gemeente.hits() for p in h.probable_hits)
    assert belasting.hits() == []
    assert [h for h in belasting.watch_hits(until_caught_up=True)] == []


def test_more_refs_of_the_same_person_raise_no_score(cluster: Cluster) -> None:
    """An insider that submits the same person many times (fresh refs each) adds members
    to the same groups, not kinds: the score is unchanged."""
    woco, gemeente = cluster.clients[WOCO], cluster.clients[GEMEENTE]
    for n in range(2, 6):
        woco.add_signal(f"W-{n}", "woonfraude", [("person", "Ter Horst, J.;15-03-1980")])

    def grown() -> list[Hit]:
        return [
            h
            for h in person_hits(gemeente)
            if sum(len(m.signal_refs) for m in h.members if m.party == WOCO) >= 5
        ]

    hits = wait_for("the woco's five refs in the gemeente's groups", grown)
    assert all(p.score == pytest.approx(GEMEENTE_SCORE) for h in hits for p in h.probable_hits)
    assert {p.agreeing_kinds for h in hits for p in h.probable_hits} == {AGREEING}


def test_a_disclosure_under_the_disclosure_score_is_refused_by_the_owner(
    cluster: Cluster,
) -> None:
    gemeente, woco = cluster.clients[GEMEENTE], cluster.clients[WOCO]
    hits = wait_for("the gemeente's probable hit", lambda: person_hits(gemeente))
    hit = hits[0]
    (member,) = [m for m in hit.members if m.party == WOCO]
    asked = gemeente.request_disclosure(
        hit.group_id, WOCO, member.signal_refs[0], "adresfraude", ["naam"], officer="a@gemeente"
    )

    def answered() -> Any:
        found = gemeente.disclosure(asked.request_id)
        return found if found.refusal_reason else None

    refused = wait_for("the woco's answer", answered)
    assert refused.refusal_reason == "score_too_low"
    assert f"{WOCO_SCORE:.1f} bits" in refused.refusal_message  # the owner's own score
    assert f"{person_score.DISCLOSURE_THRESHOLD:.1f}" in refused.refusal_message
    assert dict(refused.released_fields) == {}
    # The owner's record says the request was on a probable hit, with the requester's score.
    (incoming,) = [d for d in woco.disclosures() if d.request_id == asked.request_id]
    assert incoming.refusal_reason == "score_too_low"
    assert f"the requester's: {GEMEENTE_SCORE:.1f}" in incoming.refusal_message


def test_hits_list_shows_the_score_and_the_agreeing_kinds(
    cluster: Cluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from samenloop.policies import cli

    wait_for("the gemeente's probable hit", lambda: person_hits(cluster.clients[GEMEENTE]))
    monkeypatch.setenv("COLUMNS", "80")
    config = str(cluster.provisioned.node_configs[GEMEENTE])
    assert cli.main(["hits", "list", "--node", config]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    flat = " ".join(out.split())
    assert f"probable {GEMEENTE_SCORE:.1f} bits" in flat
    assert "phonetic_date" in flat
    assert "names_year_month" in flat
    assert cli.main(["hits", "list", "--json", "--node", config]) == 0
    listed = json.loads(capsys.readouterr().out)
    shown = [p for h in listed for p in h["probable_hits"]]
    assert shown
    assert {(p["party"], tuple(p["agreeing_kinds"]), p["score"]) for p in shown} == {
        (WOCO, AGREEING, round(GEMEENTE_SCORE, 1))
    }
    assert all(not p["disclosable"] for p in shown)


def test_the_owner_sees_the_requester_s_score_of_a_probable_hit(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    from samenloop.policies import cli

    gemeente, woco = cluster.clients[GEMEENTE], cluster.clients[WOCO]
    hit = wait_for("the gemeente's probable hit", lambda: person_hits(gemeente))[0]
    (member,) = [m for m in hit.members if m.party == WOCO]
    asked = gemeente.request_disclosure(
        hit.group_id, WOCO, member.signal_refs[0], "adresfraude", ["naam"], officer="a@gemeente"
    )
    assert asked.person_score == pytest.approx(GEMEENTE_SCORE)
    incoming = wait_for(
        "the woco's record",
        lambda: [d for d in woco.disclosures() if d.request_id == asked.request_id],
    )
    assert incoming[0].person_score == pytest.approx(GEMEENTE_SCORE)
    config = str(cluster.provisioned.node_configs[WOCO])
    assert cli.main(["disclosure", "show", asked.request_hex, "--node", config]) == 0
    assert f"on a probable person hit: {GEMEENTE_SCORE:.1f} bits" in capsys.readouterr().out
