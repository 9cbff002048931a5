"""The covenant's ``[person_matching]`` section: parsed, validated naming fields, written
back only when present (older covenants keep their bytes), and in step with the node's
person key kinds and score thresholds."""

from __future__ import annotations

import dataclasses

import pytest

from samenloop.node.identifiers import person_score
from samenloop.node.identifiers.person_keys import PersonKeyKind
from samenloop.policies import covenant as cv
from samenloop.policies.errors import InvalidInput
from samenloop.policies.policy import (
    DEFAULT_DISCLOSURE_SCORE,
    DEFAULT_SHOWN_SCORE,
    PERSON_KEY_KINDS,
    PersonMatching,
)
from tests.test_covenant import EXAMPLE

SECTION = """
[person_matching]
kinds = ["person.phonetic_date", "person.given_date"]
shown_score = 20.0
disclosure_score = 80.5
"""


def test_the_rules_know_the_node_s_kinds_and_thresholds():
    assert tuple(k.value for k in PersonKeyKind) == PERSON_KEY_KINDS
    assert DEFAULT_SHOWN_SCORE == person_score.SHOWN_THRESHOLD
    assert DEFAULT_DISCLOSURE_SCORE == person_score.DISCLOSURE_THRESHOLD


def test_a_covenant_without_the_section_is_unchanged():
    covenant = cv.covenant_from_toml(EXAMPLE.encode(), source="covenant.toml")
    assert covenant.policy.person_matching is None
    data = cv.covenant_to_toml(covenant)
    assert data == EXAMPLE.encode()
    assert b"person_matching" not in data


def test_the_section_parses_and_round_trips_exactly():
    text = EXAMPLE + SECTION
    covenant = cv.covenant_from_toml(text.encode(), source="covenant.toml")
    assert covenant.policy.person_matching == PersonMatching(
        kinds=("person.phonetic_date", "person.given_date"),
        shown_score=20.0,
        disclosure_score=80.5,
    )
    assert cv.covenant_to_toml(covenant) == text.encode()


def test_the_scores_default_to_the_thresholds():
    text = EXAMPLE + '\n[person_matching]\nkinds = ["person.names_year"]\n'
    covenant = cv.covenant_from_toml(text.encode(), source="covenant.toml")
    rules = covenant.policy.person_matching
    assert rules is not None
    assert (rules.shown_score, rules.disclosure_score) == (9.4, 72.7)
    again = cv.covenant_from_toml(cv.covenant_to_toml(covenant), source="again")
    assert again == covenant


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('kinds = ["person.bogus"]', "person_matching.kinds[0]"),
        ('kinds = ["person.given_date", "person.given_date"]', "person_matching.kinds[1]"),
        ('kinds = "person.given_date"', "person_matching.kinds"),
        ("shown_score = -1", "person_matching.shown_score"),
        ("shown_score = nan", "person_matching.shown_score"),
        ("shown_score = inf", "person_matching.shown_score"),
        ('shown_score = "high"', "person_matching.shown_score"),
        ("disclosure_score = 5.0", "person_matching.disclosure_score"),
        ("threshold = 3", "person_matching.threshold"),
    ],
)
def test_bad_values_are_refused_naming_the_field(body, field):
    text = EXAMPLE + f"\n[person_matching]\n{body}\n"
    with pytest.raises(InvalidInput) as caught:
        cv.covenant_from_toml(text.encode(), source="covenant.toml")
    assert caught.value.field == field


def test_kinds_need_person_among_the_matched_types():
    covenant = cv.covenant_from_toml(EXAMPLE.encode(), source="covenant.toml")
    policy = covenant.policy
    matching = dataclasses.replace(
        policy.matching,
        identifier_types=tuple(t for t in policy.matching.identifier_types if t != "person"),
    )
    with pytest.raises(InvalidInput) as caught:
        dataclasses.replace(
            policy, matching=matching, person_matching=PersonMatching(kinds=("person.names_year",))
        )
    assert caught.value.field == "person_matching.kinds"
    # Without kinds the section says nothing about matching: allowed.
    dataclasses.replace(policy, matching=matching, person_matching=PersonMatching())


def test_node_toml_min_disclosure_score():
    from samenloop.policies import config
    from samenloop.policies.errors import ConfigurationError
    from tests.test_config import BASE, NODE_TOML, _node

    assert _node().min_disclosure_score == 0.0
    assert b"min_disclosure_score" not in config.config_to_toml(_node(), relative_to=BASE)
    higher = _node(NODE_TOML + "min_disclosure_score = 80\n")
    assert higher.min_disclosure_score == 80.0
    written = config.config_to_toml(higher, relative_to=BASE)
    assert b"min_disclosure_score = 80.0" in written
    again = config.node_config_from_toml(written, source="node.toml", base_dir=BASE)
    assert again == higher
    for bad in ('"high"', "-1", "true", "1e9"):
        with pytest.raises(ConfigurationError) as caught:
            _node(NODE_TOML + f"min_disclosure_score = {bad}\n")
        assert "min_disclosure_score" in str(caught.value.field)
