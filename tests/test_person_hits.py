"""Person keys at the node: derived from a ``person`` identifier, stored as identifiers of
their own, and combined from the hit inbox into scored probable hits (pure, then through
the store on SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime

import pytest

from samenloop.node.identifiers import person_hits, person_score
from samenloop.node.identifiers.normalise import parse
from samenloop.node.identifiers.person_hits import (
    HIDDEN_PARTY,
    Agreement,
    PersonKey,
    combine,
    derived_keys,
    parts_of_person,
    party_labels,
)
from samenloop.node.identifiers.person_keys import PersonKeyKind as K
from samenloop.node.signals.models import HitKind, IdentifierState
from samenloop.node.signals.store import NewSignal
from samenloop.policies.errors import InvalidInput
from samenloop.policies.policy import PERSON_KEY_KINDS
from tests import test_node_store as _store_tests
from tests.test_node_store import LATER, NOW, group, token

# The store's fixtures: a migrated database (SQLite and PostgreSQL) and its repositories.
engine = _store_tests.engine
node = _store_tests.node

TODAY = datetime.date(2026, 12, 7)
ALL = PERSON_KEY_KINDS


def keys(value: str, kinds=ALL) -> dict[K, str]:
    return {k.type: k.canonical for k in derived_keys(parts_of_person(value, today=TODAY), kinds)}


def test_a_prefix_written_apart_and_a_swapped_date_meet_where_the_exact_key_misses():
    a, b = "Terhorst, Jan;1980-03-15", "Ter Horst, J.;15-03-1980"
    assert parse("person", a).canonical != parse("person", b).canonical
    ka, kb = keys(a), keys(b)
    agreeing = {k for k in ka.keys() & kb.keys() if ka[k] == kb[k]}
    assert agreeing == {K.PHONETIC_DATE, K.NAMES_YEAR_MONTH}
    # An initial alone gives no given-name key.
    assert K.GIVEN_DATE in ka
    assert K.GIVEN_DATE not in kb


def test_only_the_kinds_turned_on_are_derived_in_declaration_order():
    made = derived_keys(
        parts_of_person("Terhorst, Jan;1980-03-15", today=TODAY),
        ["person.names_year", "person.phonetic_date", "person.bogus"],
    )
    assert [k.type for k in made] == [K.PHONETIC_DATE, K.NAMES_YEAR]
    assert "hrst" not in repr(made[0])


def test_parts_refuse_what_the_exact_parser_refuses_naming_the_field():
    with pytest.raises(InvalidInput) as caught:
        parts_of_person("Jansen, Jan", field="identifiers[0].value")
    assert caught.value.field == "identifiers[0].value"


def test_party_labels():
    assert party_labels(False, [("politie", "politie")]) == []
    assert party_labels(True, []) == [HIDDEN_PARTY]
    assert party_labels(True, [("politie", None), (None, "gemeente"), (None, None)]) == [
        "",
        "politie",
        "role:gemeente",
    ]


SCORES = {"shown_score": 13.8, "disclosure_score": 72.7}


def test_combine_counts_kinds_once_per_signal_and_party():
    many = [Agreement(1, "b", K.PHONETIC_DATE) for _ in range(50)]
    found = combine(
        [*many, Agreement(1, "b", K.NAMES_YEAR_MONTH), Agreement(1, "c", K.NAMES_YEAR_MONTH)],
        own_kinds={1: (K.PHONETIC_DATE, K.NAMES_YEAR_MONTH)},
        shown_score=30.0,
        disclosure_score=72.7,
    )
    b, c = found[(1, "b")], found[(1, "c")]
    assert b.kinds == (K.PHONETIC_DATE, K.NAMES_YEAR_MONTH)  # heaviest first
    assert b.score == pytest.approx(person_score.score([K.PHONETIC_DATE, K.NAMES_YEAR_MONTH]))
    assert (b.shown, b.disclosable) == (True, False)
    assert c.kinds == (K.NAMES_YEAR_MONTH,)
    assert (c.shown, c.disclosable) == (False, False)
    strong = combine(
        [Agreement(2, "b", kind) for kind in K],
        own_kinds={2: tuple(K)},
        shown_score=13.8,
        disclosure_score=72.7,
    )
    assert strong[(2, "b")].disclosable


def test_combine_counts_the_own_kinds_that_did_not_agree_against_the_hit():
    agreeing = [Agreement(1, "b", K.PHONETIC_DATE), Agreement(1, "b", K.NAMES_YEAR_MONTH)]
    alone = combine(agreeing, own_kinds={1: (K.PHONETIC_DATE, K.NAMES_YEAR_MONTH)}, **SCORES)
    everything = combine(agreeing, own_kinds={1: tuple(K)}, **SCORES)
    both = (K.PHONETIC_DATE, K.NAMES_YEAR_MONTH)
    assert alone[(1, "b")].score == pytest.approx(person_score.score(both))
    assert everything[(1, "b")].score == pytest.approx(person_score.score(both, tuple(K)))
    assert everything[(1, "b")].score < alone[(1, "b")].score
    # A kind the covenant turned off is not matched: its absence is no evidence.
    turned_on = (K.PHONETIC_DATE.value, K.NAMES_YEAR_MONTH.value, K.GIVEN_DATE.value)
    some = combine(agreeing, own_kinds={1: tuple(K)}, turned_on=turned_on, **SCORES)
    assert some[(1, "b")].score == pytest.approx(
        person_score.score(both, [K(k) for k in turned_on])
    )
    assert alone[(1, "b")].score > some[(1, "b")].score > everything[(1, "b")].score


# --- through the store ----------------------------------------------------------------


def person_signal(reference: str, value: str) -> NewSignal:
    return NewSignal(
        reference=reference,
        category="vastgoedmisbruik",
        identifiers=[parse("person", value, today=TODAY)],
        expires_at=LATER,
        person_keys=derived_keys(parts_of_person(value, today=TODAY), ALL),
    )


def test_person_keys_are_identifiers_of_their_own(node):
    (record,) = node.signals.add_signals(
        [person_signal("P-1", "Terhorst, Jan;1980-03-15")], now=NOW
    )
    assert [i.identifier.type.value for i in record.identifiers] == ["person"]
    assert [k.key.type for k in record.person_keys] == [
        K.PHONETIC_DATE,
        K.GIVEN_DATE,
        K.NAMES_YEAR_MONTH,
        K.NAMES_YEAR,
        K.NAMES_MONTH_DAY,
    ]
    refs = {i.signal_ref for i in record.identifiers} | {k.signal_ref for k in record.person_keys}
    assert len(refs) == 6  # a fresh ref each
    pending = node.signals.pending_identifiers(100, now=NOW)
    assert {p.identifier.type for p in pending} == {
        "person",
        *(k.key.type for k in record.person_keys),
    }
    assert isinstance(pending[1].identifier, PersonKey)
    only = node.signals.pending_identifiers(100, now=NOW, types=["person", "person.given_date"])
    assert len(only) == 2
    # The same signal again is unchanged: the derived keys are not part of its content.
    (again,) = node.signals.add_signals([person_signal("P-1", "Terhorst, Jan;1980-03-15")], now=NOW)
    assert again.unchanged
    # Withdrawn with the signal, like every identifier.
    node.signals.record_tokens({p.id: token(p.id) for p in pending}, 1, now=NOW)
    node.signals.withdraw_signal("P-1", now=NOW)
    withdrawn = node.signals.signal_by_id(record.id)
    assert withdrawn is not None
    assert {k.state for k in withdrawn.person_keys} == {IdentifierState.WITHDRAW_PENDING}


def test_hits_on_person_keys_carry_their_agreements(node):
    (record,) = node.signals.add_signals(
        [person_signal("P-1", "Terhorst, Jan;1980-03-15")], now=NOW
    )
    by_kind = {k.key.type: k.signal_ref for k in record.person_keys}
    exact_ref = record.identifiers[0].signal_ref

    def deliver(cursor, n, kind, parties, hit_kind=HitKind.NEW, revision=1, ref=None):
        assert node.signals.accept_notice(
            cursor,
            group(n),
            revision,
            hit_kind,
            b"signed",
            [ref or by_kind[kind]],
            NOW,
            NOW,
            now=NOW,
            other_parties=parties,
        )

    deliver(1, 1, K.PHONETIC_DATE, ["politie"])
    deliver(2, 2, K.NAMES_YEAR_MONTH, ["politie", "gemeente-b"])
    # 20 groups of one kind with the same party: still one kind.
    for n in range(3, 23):
        deliver(n, n, K.NAMES_YEAR, ["gemeente-b"])
    deliver(30, 30, None, ["politie"], ref=exact_ref)
    hits = {h.group_id: h for h in node.signals.hits()}
    exact = hits[group(30)]
    assert exact.person_agreements == ()
    assert exact.own_signals[0].person_kind is None
    first = hits[group(1)]
    assert first.own_signals[0].person_kind is K.PHONETIC_DATE
    assert first.own_signals[0].identifier_type.value == "person"
    # Every kind its parts allow: a NAME;DATE value has no address.
    no_address = {K.NAMES_ADDRESS, K.NAMES_POSTCODE, K.GIVEN_ADDRESS, K.ADDRESS_DATE}
    assert first.person_own_kinds == {record.id: frozenset(K) - no_address}
    found = combine(first.person_agreements, own_kinds=first.person_own_kinds, **SCORES)
    assert set(found) == {(record.id, "politie")}
    assert found[(record.id, "politie")].kinds == (K.PHONETIC_DATE, K.NAMES_YEAR_MONTH)
    second = combine(
        hits[group(2)].person_agreements, own_kinds=hits[group(2)].person_own_kinds, **SCORES
    )
    assert second[(record.id, "gemeente-b")].kinds == (K.NAMES_YEAR_MONTH, K.NAMES_YEAR)
    # A closed group no longer agrees.
    deliver(40, 1, K.PHONETIC_DATE, ["politie"], hit_kind=HitKind.CLOSED, revision=2)
    again = node.signals.hit(group(2))
    assert again is not None
    after = combine(again.person_agreements, own_kinds=again.person_own_kinds, **SCORES)
    assert after[(record.id, "politie")].kinds == (K.NAMES_YEAR_MONTH,)
    assert person_hits.HIDDEN_PARTY == ""


def test_person_keys_are_re_tokenised_under_a_staged_epoch(node):
    (record,) = node.signals.add_signals(
        [person_signal("P-1", "Terhorst, Jan;1980-03-15")], now=NOW
    )
    pending = node.signals.pending_identifiers(100, now=NOW)
    node.signals.record_tokens({p.id: token(p.id) for p in pending}, 1, now=NOW)
    for batch in node.signals.outbox():
        node.signals.mark_acked(batch.client_batch_id, now=NOW)
    candidates = node.signals.restate_candidates(1, 2, 100, now=NOW)
    kinds = {c.identifier.type for c in candidates}
    assert kinds == {"person", *(k.key.type for k in record.person_keys)}
    assert any(isinstance(c.identifier, PersonKey) for c in candidates)


def test_the_picture_counts_exact_hits_not_groups_on_person_keys(node):
    from samenloop.v1 import broker_pb2, common_pb2

    (record,) = node.signals.add_signals(
        [person_signal("P-1", "Terhorst, Jan;1980-03-15")], now=NOW
    )
    refs = [record.identifiers[0].signal_ref, *(k.signal_ref for k in record.person_keys[:2])]
    signed = common_pb2.Signed(
        body=broker_pb2.HitNotice(revision=1, picture_reporter=True).SerializeToString()
    ).SerializeToString()
    for n, ref in enumerate(refs, start=1):
        node.signals.accept_notice(
            n, group(n), 1, HitKind.NEW, signed, [ref], NOW, NOW, now=NOW, other_parties=["b"]
        )
    month = f"{NOW:%Y-%m}"
    facts = node.picture.picture_hit_group_facts(month, month)
    assert len(facts) == 1  # the exact key's group; the two person key groups are not counted
