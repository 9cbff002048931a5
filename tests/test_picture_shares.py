"""The picture's secure aggregation and primary suppression rules (issue 13), as units.

The additive shares (``crypto.additive_shares``), the vector encoding over a public
domain with its band indicators (``picture_shares``), the aggregator's and the
viewer's checks (``picture_protocol.decide_sum``/``parse_sum``), the rules that decide
which cells are sensitive (``picture.primary_sensitive``) and the covenant settings.
Through the daemons: ``tests/test_picture_end_to_end.py``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samenloop.node.picture import arithmetic as p
from samenloop.node.picture import protocol as pp
from samenloop.node.picture import shares as ps
from samenloop.policies import crypto
from samenloop.policies.errors import InvalidInput, MessageTooLarge
from samenloop.policies.policy import PictureRules, Role

A, C = p.Dimension.AREA, p.Dimension.CATEGORY
SIGNALS = p.Measure.ACTIVE_SIGNALS
OCT = p.Period("2026-10", "2026-10")
DOMAIN = ps.Domain.of(
    (A, C),
    period=OCT,
    roles=("gemeente", "politie"),
    categories=("woonfraude", "leegstand"),
    areas=("pc4:5038", "pc4:5041"),
    branches=(),
)

# --- additive shares ----------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-(2**62), 2**62), max_size=40))
def test_two_shares_add_up_to_the_values(values):
    s1, s2 = crypto.additive_shares(values)
    assert len(s1) == len(s2) == 8 * len(values)
    total = crypto.add_shares([s1, s2], length=len(values))
    assert crypto.share_values(total) == values


def test_a_share_alone_is_fresh_randomness_whatever_the_values():
    zeros = [0] * 64
    first, _ = crypto.additive_shares(zeros)
    second, _ = crypto.additive_shares(zeros)
    assert first != second  # drawn anew each time (2^-4096 to collide)
    # Each bit of the viewer's share is about as often 1 as 0 (a coarse check of the CSPRNG).
    ones = sum(bin(b).count("1") for b in first + second)
    assert 0.4 < ones / (2 * 64 * 64) < 0.6


def test_shares_of_another_length_are_refused_naming_the_field():
    s1, _ = crypto.additive_shares([1, 2])
    with pytest.raises(InvalidInput) as caught:
        crypto.add_shares([s1, s1[:8]], length=2, field="sum")
    assert caught.value.field == "sum"


# --- bands and the vector -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "band", "top"),
    [
        (0, None, None),
        (-3, None, None),
        (1, 0, 1),
        (2, 1, 3),
        (3, 1, 3),
        (4, 2, 7),
        (7, 2, 7),
        (8, 3, 15),
        (2047, 10, 2047),
        (2048, 11, None),
        (10**9, 11, None),
    ],
)
def test_bands_are_powers_of_two_the_last_open(count, band, top):
    assert ps.band_of(count) == band
    if band is not None:
        assert ps.band_top(band) == top
        if top is not None:
            assert 2**band <= count <= top


def _table(cells):
    return p.Table(SIGNALS, (A, C), OCT, cells)


CELL = st.sampled_from(
    [("pc4:5038", "woonfraude"), ("pc4:5041", "leegstand"), ("pc4:9999", "woonfraude")]
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.dictionaries(CELL, st.integers(1, 300), max_size=3), min_size=1, max_size=5))
def test_the_sum_of_vectors_gives_the_sum_and_the_band_counts_only(contributions):
    """Summed vectors decode into the sum of the tables (areas outside the list folded
    into overig) and, per cell with totals, how many contributors fall in each band."""
    vectors = [ps.encode([_table(c)], DOMAIN, (SIGNALS,), exact=True) for c in contributions]
    total = [sum(column) for column in zip(*vectors, strict=True)]
    (summed,) = ps.decode(total, DOMAIN, (SIGNALS,), exact=True)
    expected: Counter[tuple[str, ...]] = Counter()
    for cells in contributions:
        for key, value in cells.items():
            expected[DOMAIN.fold(key)] += value
    assert {k: v for k, v in summed.counts.items() if v} == dict(expected)
    for key, counted in summed.bands.items():
        own = [
            p.with_totals(_table({DOMAIN.fold(k): v for k, v in c.items()})) for c in contributions
        ]
        bands = Counter(ps.band_of(t.get(key, 0)) for t in own)
        assert counted == tuple(bands.get(b, 0) for b in range(ps.BANDS))


def test_a_breakdown_too_large_to_share_is_refused_naming_the_field():
    many = tuple(f"pc4:{n}" for n in range(1000, 5000))
    domain = ps.Domain.of(
        (A, p.Dimension.BRANCH, C),
        period=OCT,
        roles=(),
        categories=tuple("abcdefghij"),
        areas=many,
        branches=tuple(str(n) for n in range(10, 60)),
    )
    assert ps.MAX_VALUES < domain.leaves <= ps.MAX_TOTAL_VALUES  # in parts without bands
    with pytest.raises(MessageTooLarge) as caught:
        ps.vector_length(domain, 1, exact=True)
    assert (caught.value.field, caught.value.reason) == ("dimensions", "picture.too_large")
    assert ps.vector_length(domain, 1, exact=False) == domain.leaves  # noisy: no bands


@given(st.lists(st.integers(0, 5000), min_size=1, max_size=ps.BAND_BASE - 1), st.data())
def test_packed_bands_sum_to_the_band_counts_for_up_to_every_party(counts, data):
    """The band indicators packed seven to a value (base 257) decode, summed over as many
    contributors as a covenant can have, to exactly how many fall in each band."""
    if data.draw(st.booleans()):
        counts = [4000] * (ps.BAND_BASE - 1)  # every party in the open band: the top digit
    summed = [0] * ps.BAND_WORDS
    for count in counts:
        for i, word in enumerate(ps._packed(ps.band_of(count))):
            summed[i] += word
    assert all(0 <= w < 2**63 for w in summed)
    expected = Counter(b for b in map(ps.band_of, counts) if b is not None)
    assert ps._unpacked(summed) == tuple(expected.get(b, 0) for b in range(ps.BANDS))


def test_an_area_breakdown_needs_the_covenants_list_of_areas():
    with pytest.raises(InvalidInput) as caught:
        ps.Domain.of((C, A), period=OCT, roles=(), categories=("a",), areas=(), branches=())
    assert (caught.value.field, caught.value.reason) == ("dimensions[1]", "picture.no_domain")


# --- primary suppression ------------------------------------------------------------------

RULES = p.SensitivityRules(min_count=3, min_contributors=2, dominance_share=0.8)


def test_padding_with_the_viewers_own_counts_does_not_make_a_cell_safe():
    # The cell shows 5 (3 the viewer's own), but the others hold 2: sensitive.
    assert p.primary_sensitive({("x",): p.CellFacts(2, 1, 3)}, p.SensitivityRules(3)) == {("x",)}
    # Only the viewer's own counts: nothing of a partner to protect.
    assert p.primary_sensitive({("x",): p.CellFacts(0, 0, None)}, RULES) == set()


@pytest.mark.parametrize(
    ("facts", "sensitive"),
    [
        (p.CellFacts(10, 1, 15), True),  # one contributor other than the viewer
        (p.CellFacts(10, 2, 7), False),  # the largest is at most 7 of 10 (0.7 <= 0.8)
        (p.CellFacts(10, 2, 15), True),  # the largest may be up to all of it
        (p.CellFacts(5000, 3, None), True),  # open band: bounded by the sum, conservative
        (p.CellFacts(2, 2, 1), True),  # below min_count
        (p.CellFacts(-4), False),  # a noisy sum below zero
        (p.CellFacts(4), False),  # noisy mode: no contributors known, min_count only
    ],
)
def test_minimum_contributors_and_dominance(facts, sensitive):
    assert (p.primary_sensitive({("x",): facts}, RULES) == {("x",)}) is sensitive


def test_cell_facts_read_the_band_counts():
    others = p.with_totals(_table({("pc4:5038", "woonfraude"): 9}))
    bands = {("pc4:5038", "woonfraude"): (1, 0, 1) + (0,) * (ps.BANDS - 3)}
    facts = ps.cell_facts(others, bands)
    assert facts[("pc4:5038", "woonfraude")] == p.CellFacts(9, 2, 7)
    assert facts[(p.TOTAL, p.TOTAL)] == p.CellFacts(9)  # no bands given: unknown


def test_release_takes_the_primary_cells_it_is_given():
    table = p.with_totals(_table({("pc4:5038", "woonfraude"): 5, ("pc4:5041", "woonfraude"): 9}))
    default = p.release(table, min_count=3)
    assert default.suppressed == ()
    given = p.release(table, min_count=3, primary={("pc4:5038", "woonfraude")})
    hidden = {c.values for c in given.suppressed}
    assert ("pc4:5038", "woonfraude") in hidden
    assert len(hidden) >= 2


# --- the aggregator and the viewer --------------------------------------------------------


def _held(party, values, digest=b"d" * 32):
    s1, s2 = crypto.additive_shares(values)
    return s1, pp.HeldShare(party, digest, s2)


class _Covenant:
    """The one attribute decide_sum reads."""

    class policy:  # noqa: N801
        picture = PictureRules(viewers=(Role.RIEC,), min_cell_count=3, aggregator=Role.POLITIE)


def test_the_aggregator_waits_sums_and_refuses_too_few():
    ask = pp.IncomingSumRequest(bytes(16), "riec", ("gemeente", "woco"))
    s1_g, held_g = _held("gemeente", [1, 2, 3])
    s1_w, held_w = _held("woco", [10, 20, 30])
    assert pp.decide_sum(_Covenant(), ask, [held_g]) is None  # woco's share is on its way
    verdict = pp.decide_sum(_Covenant(), ask, [held_g, held_w])
    assert verdict is not None
    assert verdict.refusal is None
    assert verdict.contributors == ("gemeente", "woco")
    total = crypto.add_shares([verdict.total, s1_g, s1_w], length=3)
    assert crypto.share_values(total) == [11, 22, 33]
    lone = pp.decide_sum(_Covenant(), pp.IncomingSumRequest(bytes(16), "riec", ("woco",)), [held_w])
    assert lone is not None
    assert lone.refusal is pp.PictureRefusal.INVALID_REQUEST
    assert lone.message.startswith("contributors:")
    # The viewer's own name does not count towards the minimum.
    with_viewer = pp.IncomingSumRequest(bytes(16), "riec", ("woco", "riec"))
    _, held_r = _held("riec", [0, 0, 0])
    refused = pp.decide_sum(_Covenant(), with_viewer, [held_w, held_r])
    assert refused is not None
    assert refused.refusal is not None
    mixed = pp.decide_sum(_Covenant(), ask, [held_g, dataclasses.replace(held_w, digest=b"e" * 32)])
    assert mixed is not None
    assert mixed.refusal is pp.PictureRefusal.INVALID_REQUEST


def test_the_aggregator_sums_every_share_it_holds_not_the_viewers_choice():
    ask = pp.IncomingSumRequest(bytes(16), "riec", ("gemeente", "woco"))
    s1_g, held_g = _held("gemeente", [1])
    s1_w, held_w = _held("woco", [10])
    s1_x, held_x = _held("politie", [100])
    verdict = pp.decide_sum(_Covenant(), ask, [held_g, held_w, held_x])
    assert verdict is not None
    assert verdict.contributors == ("gemeente", "politie", "woco")
    total = crypto.add_shares([verdict.total, s1_g, s1_w, s1_x], length=1)
    assert crypto.share_values(total) == [111]


@pytest.mark.parametrize(
    ("before", "now", "party"),
    [
        ([{"a", "b", "c"}], {"a", "b"}, "c"),  # a partner dropped out: the difference is c
        ([{"a", "b"}], {"a", "b", "c"}, "c"),  # or came back
        ([{"a", "b"}, {"b", "c"}], {"a", "c"}, "a"),  # three pairs solve for each one
        ([{"a", "b", "c"}], {"a", "b", "c"}, None),  # the same set again: nothing new
        ([{"a", "b"}], {"a", "b", "c", "d"}, None),  # two more: only their sum
    ],
)
def test_a_sum_that_would_single_out_a_partner_is_found(before, now, party):
    past = [pp.PastSum(frozenset(s), frozenset({"2026-10"})) for s in before]
    found = pp.singled_out(frozenset(now), ["2026-10"], past)
    assert (found[1] if found else None) == party
    assert pp.singled_out(frozenset(now), ["2026-11"], past) is None  # another month


def test_the_aggregator_refuses_a_sum_that_singles_out_a_partner():
    ask = pp.IncomingSumRequest(bytes(16), "riec", ("gemeente", "woco"))
    _, held_g = _held("gemeente", [1])
    _, held_w = _held("woco", [10])
    past = [pp.PastSum(frozenset({"gemeente", "woco", "politie"}), frozenset({"2026-10"}))]
    verdict = pp.decide_sum(_Covenant(), ask, [held_g, held_w], months=["2026-10"], past=past)
    assert verdict is not None
    assert verdict.refusal is pp.PictureRefusal.INVALID_REQUEST
    assert "single out" in verdict.message


def _sum(contributors, total=b"\0" * 24, digest=b"d" * 32):
    message = pp.picture_pb2.PictureSum(
        request_id=bytes(16),
        aggregator="politie",
        contributors=contributors,
        request_digest=digest,
        sum=total,
    )
    return message


@pytest.mark.parametrize(
    ("message", "sender", "field"),
    [
        (_sum(["gemeente", "woco"]), "woco", "aggregator"),
        (_sum(["gemeente", "woco", "stranger"]), "politie", "contributors"),  # no share held
        (_sum(["gemeente"]), "politie", "contributors"),  # too few
        (_sum(["gemeente", "riec"]), "politie", "contributors"),  # the viewer itself
        (_sum(["gemeente", "woco"], digest=b"e" * 32), "politie", "request_digest"),
        (_sum(["gemeente", "woco"], total=b"\0" * 16), "politie", "sum"),
    ],
)
def test_the_viewer_refuses_a_sum_it_cannot_account_for(message, sender, field):
    with pytest.raises(InvalidInput) as caught:
        pp.parse_sum(
            message,
            sender=sender,
            aggregator="politie",
            me="riec",
            digest=b"d" * 32,
            values=3,
            held=["gemeente", "woco"],
            min_contributors=2,
        )
    assert caught.value.field == field
    good = pp.parse_sum(
        _sum(["gemeente", "woco"]),
        sender="politie",
        aggregator="politie",
        me="riec",
        digest=b"d" * 32,
        values=3,
        held=["gemeente", "woco"],
        min_contributors=2,
    )
    assert good.contributors == ("gemeente", "woco")


# --- the covenant's settings --------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"aggregator": Role.RIEC}, "aggregator"),
        ({"min_contributors": 1}, "min_contributors"),
        ({"min_cell_contributors": 0}, "min_cell_contributors"),
        ({"dominance_share": 0.3}, "dominance_share"),
        ({"areas": ("5038",)}, "areas[0]"),
        ({"branches": ("56101", "x")}, "branches[1]"),
        ({"areas": ("pc4:5038", "pc4:5038")}, "areas"),
    ],
)
def test_bad_picture_settings_are_refused_naming_the_field(change, field):
    with pytest.raises(InvalidInput) as caught:
        PictureRules(viewers=(Role.RIEC,), min_cell_count=3, **change)
    assert caught.value.field == field


def test_the_picture_settings_survive_the_covenant_text(tmp_path):
    from datetime import UTC, datetime

    from samenloop.node.provision import PartySpec, provision
    from samenloop.policies import covenant as cov
    from samenloop.policies.policy import example_policy

    rules = PictureRules(
        viewers=(Role.RIEC,),
        min_cell_count=3,
        aggregator=Role.BELASTINGDIENST,
        min_contributors=3,
        min_cell_contributors=2,
        dominance_share=0.85,
        areas=("pc4:4331", "wijk:WK068701"),
        branches=("5610",),
    )
    specs = (
        PartySpec("riec", "RIEC", Role.RIEC),
        PartySpec("bd", "Belastingdienst", Role.BELASTINGDIENST),
    )
    provisioned = provision(
        tmp_path,
        "c",
        specs,
        ["riec", "bd"],
        2,
        now=datetime.now(UTC),
        policy=dataclasses.replace(example_policy(), picture=rules),
    )
    text = cov.covenant_to_toml(provisioned.covenant)
    assert b'aggregator = "belastingdienst"' in text
    assert cov.covenant_from_toml(text, source="test").policy.picture == rules
