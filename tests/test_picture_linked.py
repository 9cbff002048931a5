"""Linked tables: every table released of one period and measure is a slice of one protected
cube, so that no combination of released tables pins down a suppressed cell (issue 13,
finding 3); and the privacy budget's cost shown, and checked, before anything is spent.

The search below is written apart from the module's own check: every released figure of
every view is an equation over the cube's leaf cells (the true counts, unknown to a
reader); a suppressed figure is pinned down exactly when its vector over the leaves lies
in the span of the released ones (exact rational elimination).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from samenloop.node.daemon.database import MIGRATIONS
from samenloop.node.daemon.models import EnvelopeOutboxItem
from samenloop.node.disclosure.protocol import open_envelope
from samenloop.node.picture import arithmetic as p
from samenloop.node.picture import protocol as pp
from samenloop.node.picture.desk import PictureDesk, ask_of
from samenloop.node.picture.store import PictureStore
from samenloop.node.provision import PartySpec, Provisioned, provision
from samenloop.policies import database
from samenloop.policies.covenant import Covenant, Role
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.errors import InvalidInput
from samenloop.policies.policy import PictureRules, example_policy
from samenloop.v1 import common_pb2, picture_pb2

A, B, C, R, M = (
    p.Dimension.AREA,
    p.Dimension.BRANCH,
    p.Dimension.CATEGORY,
    p.Dimension.ROLE,
    p.Dimension.MONTH,
)
SIGNALS = p.Measure.ACTIVE_SIGNALS
Q4 = p.Period("2026-10", "2026-12")
T = p.TOTAL


# --- the search ------------------------------------------------------------------------------


class _Span:
    """The span of vectors over the leaves, kept in reduced row echelon form (exact)."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[int, Fraction]] = {}  # pivot column -> row

    def reduce(self, vector: dict[int, Fraction]) -> dict[int, Fraction]:
        row = dict(vector)
        for col, prow in self.rows.items():
            factor = row.get(col)
            if factor:
                for c, v in prow.items():
                    new = row.get(c, Fraction(0)) - factor * v
                    if new:
                        row[c] = new
                    else:
                        row.pop(c, None)
        return row

    def add(self, vector: dict[int, Fraction]) -> None:
        row = self.reduce(vector)
        if not row:
            return
        col = min(row)
        lead = row[col]
        row = {c: v / lead for c, v in row.items()}
        for other in self.rows.values():
            factor = other.get(col)
            if factor:
                for c, v in row.items():
                    new = other.get(c, Fraction(0)) - factor * v
                    if new:
                        other[c] = new
                    else:
                        other.pop(c, None)
        self.rows[col] = row


def pinned_down(
    cube_dims: Sequence[p.Dimension],
    axes: Sequence[Sequence[str]],
    views: Sequence[p.ReleasedTable],
) -> list[tuple[tuple[p.Dimension, ...], tuple[str, ...]]]:
    """The suppressed figures of ``views`` that their released figures fix, as (view
    dimensions, values). A view's cell covers the leaves of the cube (dimensions
    ``cube_dims``, values ``axes``) that agree with it where it is not a total; a view
    lists its non-zero figures and its totals, every other value combination is a
    released 0."""
    leaves = list(itertools.product(*axes))
    index = {leaf: i for i, leaf in enumerate(leaves)}

    def vector(dims: Sequence[p.Dimension], values: Sequence[str]) -> dict[int, Fraction]:
        fixed = {cube_dims.index(d): v for d, v in zip(dims, values, strict=True) if v != T}
        return {
            index[leaf]: Fraction(1)
            for leaf in leaves
            if all(leaf[i] == v for i, v in fixed.items())
        }

    span = _Span()
    hidden: list[tuple[tuple[p.Dimension, ...], tuple[str, ...]]] = []
    for released in views:
        dims = released.dimensions
        view_axes = [
            tuple(axes[cube_dims.index(d)]) + ((T,) if d in released.totals_over else ())
            for d in dims
        ]
        for values in itertools.product(*view_axes):
            cell = released.cell(values)
            if cell.quality is p.CellQuality.SUPPRESSED:
                hidden.append((dims, values))
            else:
                span.add(vector(dims, values))
    return [(dims, values) for dims, values in hidden if not span.reduce(vector(dims, values))]


def _cube(cells: dict[tuple[str, ...], int], dims: Sequence[p.Dimension], min_count: int):
    table = p.Table(SIGNALS, dims, Q4, cells)
    return p.release(p.with_totals(table), min_count=min_count)


# --- the README's own workflow, in the arithmetic ---------------------------------------------

#: The demo's shape: five areas and branches, four partners' categories, and the RIEC's
#: three vacant premises (leegstand) in an area of their own.
DEMO_AREAS = ("pc4:4331", "pc4:4332", "pc4:4333", "pc4:4381", "pc4:4382")
DEMO_BRANCHES = ("5610", "9602", "4520", "5510", "6810")
DEMO_CATEGORIES = ("woonfraude", "vastgoedmisbruik", "witwasindicatie", "ondermijning")


def demo_cells() -> dict[tuple[str, ...], int]:
    """Area, branch, category counts like the demo's: 505 + 505 + 503 + 503 over the
    partners' categories and 3 leegstand, 2019 in all."""
    cells: Counter[tuple[str, ...]] = Counter()
    for n, category in enumerate(DEMO_CATEGORIES):
        total = 505 if n < 2 else 503
        for i in range(total):
            area = DEMO_AREAS[(i * 7 + n) % 5]
            branch = DEMO_BRANCHES[(i * 3 + n * 2) % 5]
            cells[(area, branch, category)] += 1
    cells[("pc4:4461", "6810", "leegstand")] += 3
    return dict(cells)


def _released_as_in_the_issue(cells, dims_of_view, hidden):
    """A breakdown of ``cells`` with totals, ``hidden`` suppressed and every other figure
    shown: how the RIEC's node released the demo's tables one by one (issue 13)."""
    cube_dims = (A, B, C)
    by: Counter[tuple[str, ...]] = Counter()
    for key, value in cells.items():
        leaf = tuple(key[cube_dims.index(d)] for d in dims_of_view)
        for mask in itertools.product((False, True), repeat=len(leaf)):
            by[tuple(T if m else v for v, m in zip(leaf, mask, strict=True))] += value
    axes = tuple(sorted({k[i] for k in by if k[i] != T}) for i in range(len(dims_of_view)))
    released = tuple(
        p.ReleasedCell(k, None, p.CellQuality.SUPPRESSED)
        if k in hidden
        else p.ReleasedCell(k, v, p.CellQuality.EXACT)
        for k, v in sorted(by.items())
    )
    return p.ReleasedTable(SIGNALS, dims_of_view, Q4, axes, released, 5, dims_of_view)


def _axes(cells, dims):
    return [sorted({k[i] for k in cells}) for i in range(len(dims))]


def test_protected_apart_the_readme_breakdowns_give_the_small_cell_away():
    """The reproduction of finding 3, so that the search is known to find such a leak:
    area by category, safe on its own (the leegstand cell, its area and category totals
    and the grand total hidden: two in every line), and the report's area table, safe on
    its own (the area and one more hidden), whose grand total 2019 less the category
    totals 505 + 505 + 503 + 503 gives the leegstand cell's 3 back."""
    cells, dims = demo_cells(), (A, B, C)
    small = ("pc4:4461", "leegstand")
    by_area_category = _released_as_in_the_issue(
        cells, (A, C), {small, (small[0], T), (T, small[1]), (T, T)}
    )
    by_area = _released_as_in_the_issue(cells, (A,), {(small[0],), ("pc4:4382",)})
    assert [by_area_category.cell((T, c)).count for c in DEMO_CATEGORIES] == [505, 505, 503, 503]
    assert by_area.cell((T,)).count == 2019
    assert pinned_down(dims, _axes(cells, dims), [by_area_category]) == []  # safe alone
    assert pinned_down(dims, _axes(cells, dims), [by_area]) == []
    found = pinned_down(dims, _axes(cells, dims), [by_area_category, by_area])
    assert ((A, C), small) in found
    assert ((A, C), (T, T)) in found


def test_as_slices_of_one_cube_the_readme_breakdowns_pin_down_nothing():
    cells, dims = demo_cells(), (A, B, C)
    cube = _cube(cells, dims, 5)
    views = [
        p.view(cube, (A, C)),  # picture show --by area,category
        p.view(cube, (A,)),  # the report's areas
        p.view(cube, (B, C)),  # the report's branch by category
        p.view(cube, (C,)),
        p.view(cube, ()),
    ]
    assert pinned_down(dims, _axes(cells, dims), views) == []
    area_category = views[0]
    assert area_category.cell(("pc4:4461", "leegstand")).quality is p.CellQuality.SUPPRESSED
    assert area_category.cell(("pc4:4461", "leegstand")).reason is p.SuppressionReason.TOO_FEW
    # The subtraction of the issue: category totals against the grand total.
    shown = [area_category.cell((T, c)).count for c in (*DEMO_CATEGORIES, "leegstand")]
    grand = [v.cell((T,) * len(v.dimensions)).count for v in views]
    assert None in shown or None in grand  # one of the figures it needs is withheld
    # ... and every view agrees with the cube on each figure it shares with it.
    for v in views:
        for cell in v.cells:
            full = tuple(
                cell.values[v.dimensions.index(d)] if d in v.dimensions else T for d in dims
            )
            # The same figure, quality and noise, and for a suppressed one the same why.
            assert cube.cell(full) == p.ReleasedCell(
                full, cell.count, cell.quality, cell.noise_scale, cell.reason
            )
            assert (cell.reason is not None) == (cell.quality is p.CellQuality.SUPPRESSED)


# --- the property -----------------------------------------------------------------------------


@st.composite
def cubes(draw):
    ndims = draw(st.integers(2, 3))
    dims = (A, B, C)[:ndims]
    sizes = [draw(st.integers(1, 3 if ndims == 3 else 4)) for _ in range(ndims)]
    axes = [tuple(f"v{i}" for i in range(n)) for n in sizes]
    cells = {}
    for key in itertools.product(*axes):
        value = draw(st.sampled_from([0, 0, 1, 2, 3, 4, 6, 9, 20]))
        if value:
            cells[key] = value
    subsets = [s for r in range(ndims + 1) for s in itertools.combinations(dims, r)]
    chosen = draw(st.lists(st.sampled_from(subsets), min_size=1, max_size=5))
    orders = [tuple(draw(st.permutations(list(s)))) for s in chosen]
    return dims, axes, cells, orders


@settings(max_examples=120, deadline=None)
@given(cubes(), st.integers(2, 8))
def test_no_set_of_views_of_one_period_pins_down_a_suppressed_cell(drawn, min_count):
    """Random breakdowns of one period (views, as ``picture show --by``, the report and
    ``--json`` release them), searched together by exact linear algebra."""
    dims, axes, cells, orders = drawn
    cube = _cube(cells, dims, min_count)
    views = [p.view(cube, order) for order in orders]
    assert pinned_down(dims, axes, views) == []
    for v in views:
        for cell in v.cells:
            if cell.count is not None:
                assert not 0 < cell.count < min_count, cell


def test_a_view_is_a_slice_and_refuses_what_the_cube_does_not_count():
    cells = {("a", "x"): 5, ("a", "y"): 1, ("b", "x"): 7, ("b", "y"): 9}
    cube = _cube(cells, (A, C), 3)
    by_category = p.view(cube, (C,))
    assert by_category.dimensions == (C,)
    assert by_category.totals_over == (C,)
    assert by_category.axes == (("x", "y"),)
    assert [c.values for c in by_category.cells] == [("x",), ("y",), (T,)]
    assert by_category.cell(("x",)).count == 12
    swapped = p.view(cube, (C, A))
    assert swapped.cell(("y", "a")).quality is p.CellQuality.SUPPRESSED
    assert swapped.cell((T, T)).count == 22
    with pytest.raises(InvalidInput) as other:
        p.view(cube, (M,))
    assert (other.value.field, other.value.reason) == ("dimensions", "picture.dimension")
    with pytest.raises(InvalidInput) as twice:
        p.view(cube, (A, A))
    assert twice.value.field == "dimensions"
    partial = p.release(p.with_totals(p.Table(SIGNALS, (A, C), Q4, cells), over=(C,)), min_count=3)
    with pytest.raises(InvalidInput) as not_a_cube:
        p.view(partial, (C,))
    assert not_a_cube.value.field == "cube"


def test_every_measure_has_one_cube_and_mixed_cubes_are_refused_naming_the_field():
    assert p.CUBE_DIMENSIONS[SIGNALS] == (A, B, C, R, M)
    assert p.cube_dimensions([SIGNALS, p.Measure.HIT_GROUPS]) == (A, B, C, R, M)
    assert p.cube_dimensions([p.Measure.CASES_OPENED, p.Measure.CASES_CLOSED]) == (R, M)
    for measure, dims in p.CUBE_DIMENSIONS.items():
        assert set(dims) == measure.allowed_dimensions
    with pytest.raises(InvalidInput) as mixed:
        p.cube_dimensions([SIGNALS, p.Measure.CASES_OPENED])
    assert (mixed.value.field, mixed.value.reason) == ("measures", "picture.measure")
    assert "active_signals" in mixed.value.message
    assert "cases_opened" in mixed.value.message


# --- through the desk: the README workflow ----------------------------------------------------

RIEC, GEMEENTE, POLITIE = "riec", "gemeente", "politie"
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
DEC = p.Period("2026-12", "2026-12")

#: The covenant's public lists the partners share their counts over (secure aggregation):
#: every demo area (the leegstand area too), every demo branch but 5510, which is counted as
#: ``overig`` (the same cube, one value by another name: with 5510 listed the period's cube
#: of area, branch, category, role and month, band indicators included, would exceed the
#: 98,304 values a partner's shared vector may hold), and the demo's categories.
LISTED_AREAS = (*DEMO_AREAS, "pc4:4461")
LISTED_BRANCHES = tuple(b for b in DEMO_BRANCHES if b != "5510")
LISTED_CATEGORIES = (*DEMO_CATEGORIES, "leegstand")


def _world(root: Path, rules: PictureRules) -> tuple[Provisioned, dict[str, PartyKeys]]:
    import dataclasses

    specs = (
        PartySpec(RIEC, "RIEC Test", Role.RIEC),
        PartySpec(GEMEENTE, "Gemeente Test", Role.GEMEENTE),
        PartySpec(POLITIE, "Politie Test", Role.POLITIE),
    )
    policy = dataclasses.replace(example_policy(), categories=LISTED_CATEGORIES, picture=rules)
    provisioned = provision(
        root, "riec-linked", specs, [GEMEENTE, POLITIE], 2, now=NOW, policy=policy
    )
    keys = {s.id: PartyKeys.load(root / s.id / "party-keys.json") for s in specs}
    return provisioned, keys


#: The politie sums the second shares (and contributes too), as in test_picture.py.
_SHARED = {"aggregator": Role.POLITIE, "areas": LISTED_AREAS, "branches": LISTED_BRANCHES}


@pytest.fixture(scope="module")
def exact_world(tmp_path_factory: pytest.TempPathFactory):
    rules = PictureRules(viewers=(Role.RIEC,), min_cell_count=5, **_SHARED)
    return _world(tmp_path_factory.mktemp("linked-exact"), rules)


@pytest.fixture(scope="module")
def noisy_world(tmp_path_factory: pytest.TempPathFactory):
    rules = PictureRules(
        viewers=(Role.RIEC,),
        min_cell_count=5,
        epsilon_per_period=1.0,
        epsilon_per_request=0.5,
        **_SHARED,
    )
    return _world(tmp_path_factory.mktemp("linked-noisy"), rules)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PictureStore]:
    engine = database.make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    database.upgrade(engine, MIGRATIONS)
    yield PictureStore(engine)
    engine.dispose()


def _desk(world, store) -> PictureDesk:
    provisioned, keys = world
    return PictureDesk(
        keys=keys[RIEC], covenant=lambda: provisioned.covenant, store=store, clock=lambda: NOW
    )


class Network:
    """Three desks, each with its own store and its own signals, and the relay between
    them: ``ferry`` opens every queued envelope for its recipient and hands it to the
    recipient's desk, as the broker and the uplinks do (as in test_picture.py)."""

    def __init__(self, world, tmp_path: Path, facts: dict[str, list[p.SignalFacts]]) -> None:
        provisioned, keys = world
        self.covenant: Covenant = provisioned.covenant
        self.keys: dict[str, PartyKeys] = keys
        self.stores: dict[str, PictureStore] = {}
        self.desks: dict[str, PictureDesk] = {}
        self.handlers: dict[str, dict] = {}
        self.cursor = 0
        for party in (RIEC, GEMEENTE, POLITIE):
            engine = database.make_engine(f"sqlite:///{tmp_path / (party + '.db')}")
            database.upgrade(engine, MIGRATIONS)
            store = PictureStore(engine)
            self.stores[party] = store
            self.signals(party, facts.get(party, []))
            self.desks[party] = PictureDesk(
                keys=keys[party], covenant=lambda: self.covenant, store=store, clock=lambda: NOW
            )
            self.handlers[party] = {}
            self.desks[party].register(self.handlers[party])

    def signals(self, party: str, facts: list[p.SignalFacts]) -> None:
        """What ``party``'s node counts from now on."""
        self.stores[party].picture_signal_facts = lambda first, last: facts  # type: ignore[method-assign]

    def ferry(self) -> int:
        """Deliver until nothing is queued; how many envelopes were delivered."""
        delivered = 0
        while True:
            moved = 0
            for sender, store in self.stores.items():
                with store.engine.begin() as conn:
                    rows = conn.execute(sa.select(EnvelopeOutboxItem.sealed)).all()
                    conn.execute(sa.delete(EnvelopeOutboxItem))
                for row in rows:
                    sealed = common_pb2.Sealed.FromString(row.sealed)
                    to = sealed.recipient
                    context, body = open_envelope(self.keys[to], self.covenant, sealed)
                    self.cursor += 1
                    moved += 1
                    self.handlers[to][context](self.cursor, sender, body, self.covenant)
            delivered += moved
            if not moved:
                return delivered

    def close(self) -> None:
        for store in self.stores.values():
            store.engine.dispose()


def _facts(cells: dict[tuple[str, ...], int]) -> list[p.SignalFacts]:
    """A node's signals of December, counted by (area, branch, category) as ``cells``."""
    return [p.SignalFacts(a, b, c, DEC.first_month, n) for (a, b, c), n in cells.items()]


def _as_shared(cells: dict[tuple[str, ...], int]) -> dict[tuple[str, ...], int]:
    """``cells`` as the partners share them: a branch the covenant does not list is
    ``overig``."""
    folded: Counter[tuple[str, ...]] = Counter()
    for (area, branch, category), v in cells.items():
        folded[(area, branch if branch in LISTED_BRANCHES else p.OTHER, category)] += v
    return dict(folded)


def test_the_readme_workflow_through_the_desk_pins_down_nothing(exact_world, tmp_path):
    """``picture collect --by area,category``, ``picture show --by area,category``, then
    ``picture report`` (which collects again, by month, area and branch by category):
    every table released is a slice of the first collection's protected cube, and all of
    them together pin down no suppressed cell; the 2016-against-2019 subtraction fails.
    The partners' counts reach the RIEC only as the aggregator's sum of their shares."""
    cells = demo_cells()
    gemeente = {
        k: v for k, v in cells.items() if k[2] in DEMO_CATEGORIES[:2] or k[2] == "leegstand"
    }
    politie = {k: v for k, v in cells.items() if k not in gemeente}
    net = Network(exact_world, tmp_path, {GEMEENTE: _facts(gemeente), POLITIE: _facts(politie)})
    try:
        riec, store = net.desks[RIEC], net.stores[RIEC]
        ask = pp.PictureAsk(DEC, (SIGNALS,), (A, C))
        first, asked = riec.collect(ask, officer="analist@riec")
        assert set(asked) == {RIEC, GEMEENTE, POLITIE}
        # The cube of the partners' counts: every dimension but role (a role's cells would
        # be one partner's own counts).
        assert ask_of(store.picture_collection(first)).dimensions == (A, B, C, M)  # type: ignore[arg-type]
        net.ferry()
        shown = [riec.show(measure=SIGNALS, dimensions=(A, C), period=DEC)]
        # A signal more at the gemeente since. The report collects again: the period's
        # cube is counted already, so no one is asked and nothing new is counted.
        one_more = p.SignalFacts("pc4:4331", "5610", "woonfraude", DEC.first_month)
        net.signals(GEMEENTE, [*_facts(gemeente), one_more])
        for dims in ((M,), (A,), (B, C)):
            again, _ = riec.collect(pp.PictureAsk(DEC, (SIGNALS,), dims), officer="analist@riec")
            assert net.ferry() == 0
            view = riec.show(measure=SIGNALS, dimensions=dims, request_id=again)
            assert view.request_id == first  # derived from the period's one cube
            shown.append(view)
        # The first request relayed to the gemeente once more: its second answer (with the
        # signal more) changes nothing released.
        record = store.picture_collection(first)
        assert record is not None
        assert record.request_body is not None
        message = picture_pb2.PictureRequest.FromString(record.request_body)
        envelope = pp.build_request(
            net.keys[RIEC], net.covenant, message, recipient=GEMEENTE, message_id=bytes(16)
        )
        _, body = open_envelope(net.keys[GEMEENTE], net.covenant, envelope.sealed)
        net.handlers[GEMEENTE][pp.SignatureContext.PICTURE_REQUEST](900, RIEC, body, net.covenant)
        net.ferry()
        for v in shown:
            assert riec.show(measure=SIGNALS, dimensions=v.table.dimensions, period=DEC) == v
        assert all(set(v.contributors) == {RIEC, GEMEENTE, POLITIE} for v in shown)
        assert all(v.missing == () and v.refusals == () for v in shown)
    finally:
        net.close()
    tables = [v.table for v in shown]
    shared = _as_shared(cells)
    cube_dims = (A, B, C, M)
    axes = [
        sorted({k[0] for k in shared}),
        sorted({k[1] for k in shared}),
        sorted({k[2] for k in shared}),
        ["2026-12"],
    ]
    assert pinned_down(cube_dims, axes, tables) == []
    by_area_category, by_month, by_area, by_branch_category = tables
    assert by_area_category.cell(("pc4:4461", "leegstand")).quality is p.CellQuality.SUPPRESSED
    assert by_area.cell(("pc4:4461",)).quality is p.CellQuality.SUPPRESSED  # the same 3
    assert by_branch_category.cell(("6810", "leegstand")).quality is p.CellQuality.SUPPRESSED
    totals = [by_area_category.cell((T, c)).count for c in (*DEMO_CATEGORIES, "leegstand")]
    grands = {t.cell((T,) * len(t.dimensions)).count for t in tables}
    assert len(grands) == 1  # one grand total everywhere, or withheld everywhere
    (grand,) = grands
    if grand is not None:
        assert grand == 2019
        assert sum(1 for v in totals if v is None) >= 2  # two unknowns, one equation
    # The month view is the same figures as the grand total (one month).
    assert by_month.cell(("2026-12",)).count == grand


def test_a_collection_by_other_dimensions_counts_the_cube(exact_world, store):
    riec = _desk(exact_world, store)
    request_id, _ = riec.collect(pp.PictureAsk(DEC, (SIGNALS,), (C,)), officer="a@riec")
    record = store.picture_collection(request_id)
    assert record is not None
    assert record.dimensions == ("area", "branch", "category", "month")  # role left out
    with pytest.raises(InvalidInput) as by_role:  # exact mode: a partner's own counts
        riec.collect(pp.PictureAsk(DEC, (SIGNALS,), (A, R)), officer="a@riec")
    assert (by_role.value.field, by_role.value.reason) == ("dimensions", "picture.role_exact")
    with pytest.raises(InvalidInput) as mixed:
        riec.collect(pp.PictureAsk(DEC, (SIGNALS, p.Measure.CASES_OPENED), (M,)), officer="a@r")
    assert mixed.value.field == "measures"
    assert len(store.picture_collections()) == 1  # nothing stored for the refused one
    # A covenant that lists no branches: the partners cannot share a table by branch, so
    # the period's cube leaves the branch out (and the area, were no areas listed).
    import dataclasses

    covenant = exact_world[0].covenant
    rules = dataclasses.replace(covenant.policy.picture, branches=())
    unlisted = dataclasses.replace(
        covenant, policy=dataclasses.replace(covenant.policy, picture=rules)
    )
    riec = PictureDesk(
        keys=exact_world[1][RIEC], covenant=lambda: unlisted, store=store, clock=lambda: NOW
    )
    nov = p.Period("2026-11", "2026-11")
    both = (SIGNALS, p.Measure.HIT_GROUPS)
    request_id, _ = riec.collect(pp.PictureAsk(nov, both, (C,)), officer="a@riec")
    record = store.picture_collection(request_id)
    assert record is not None
    assert record.measures == tuple(m.value for m in both)
    assert record.dimensions == tuple(d.value for d in p.cube_dimensions(both) if d not in (B, R))


# --- the budget -------------------------------------------------------------------------------


def test_the_cost_is_shown_before_and_a_collection_that_does_not_fit_spends_nothing(
    noisy_world, store
):
    riec = _desk(noisy_world, store)
    cost = riec.cost(DEC, planned_requests=4)
    assert (cost.noisy, cost.needed, cost.remaining, cost.fits) == (True, 2.0, 1.0, False)
    assert cost.describe() == "2026-12 needs epsilon 2 on each of its months (4 requests), 1 left"
    ask = pp.PictureAsk(DEC, (SIGNALS,), (C,))
    with pytest.raises(p.BudgetExhausted) as refused:
        riec.collect(ask, officer="analist@riec", planned_requests=4)
    assert refused.value.field == "period"
    assert "needs epsilon 2" in refused.value.message
    assert "1 left" in refused.value.message
    assert "nothing was spent" in refused.value.message
    assert store.picture_collections() == []
    assert store.picture_ledger(["2026-12"]).spent("2026-12") == 0
    riec.collect(ask, officer="analist@riec", planned_requests=2)  # fits: spends one request
    assert store.picture_ledger(["2026-12"]).spent("2026-12") == 0.5
    riec.collect(ask, officer="analist@riec")
    with pytest.raises(p.BudgetExhausted):  # spent: refused here, no one else asked
        riec.collect(ask, officer="analist@riec")
    assert len(store.picture_collections()) == 2
    with pytest.raises(InvalidInput) as planned:
        riec.cost(DEC, planned_requests=0)
    assert planned.value.field == "planned_requests"


def test_a_quarter_is_charged_on_each_of_its_months(noisy_world, store):
    riec = _desk(noisy_world, store)
    riec.collect(pp.PictureAsk(DEC, (SIGNALS,), (C,)), officer="analist@riec")
    riec.collect(pp.PictureAsk(Q4, (SIGNALS,), (C,)), officer="analist@riec")  # 0.5 left on Dec
    ledger = store.picture_ledger(Q4.months())
    assert [ledger.spent(m) for m in Q4.months()] == [0.5, 0.5, 1.0]
    assert riec.cost(Q4).describe() == (
        "2026-10..2026-12 needs epsilon 0.5 on each of its months (1 request), 0 left"
    )


# --- the CLI: no data, and a refusal is not success -------------------------------------------


class _FakeClient:
    """A node client that answers ``picture_show`` with one prepared picture."""

    def __init__(self, shown) -> None:
        self.shown = shown

    def __enter__(self) -> _FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def picture_show(self, *args: object, **kwargs: object):
        return self.shown


def _picture(contributors, refusals):
    from samenloop.node.client import Picture, PictureRefusalNote

    table = p.release(p.with_totals(p.Table(SIGNALS, (C,), DEC, {})), min_count=5)
    notes = tuple(PictureRefusalNote(party, "budget_exhausted", "spent") for party in refusals)
    return Picture(table=table, contributors=contributors, missing=(), refusals=notes)


@pytest.mark.parametrize("as_json", [False, True])
def test_show_says_no_data_and_exits_5_when_every_party_refused(monkeypatch, capsys, as_json):
    from samenloop.node.picture import commands as picture_commands
    from samenloop.policies.cli import main

    shown = _picture((), (RIEC, GEMEENTE))
    monkeypatch.setattr(picture_commands, "open_client", lambda args: _FakeClient(shown))
    args = ["picture", "show", "--period", "2026-12", "--by", "category", "--wait", "0"]
    assert main([*args, "--json"] if as_json else args) == picture_commands.EXIT_REFUSED == 5
    out = capsys.readouterr().out
    if as_json:
        import json

        printed = json.loads(out)
        assert printed["no_data"] is True
        assert printed["cells"] == []
    else:
        assert "no data" in out
        assert "totaal" not in out
        assert "refused by riec: budget_exhausted" in out


def test_show_exits_0_with_every_contribution_and_5_with_one_refusal(monkeypatch, capsys):
    from samenloop.node.picture import commands as picture_commands
    from samenloop.policies.cli import main

    args = ["picture", "show", "--period", "2026-12", "--by", "category", "--wait", "0"]
    for refusals, code in (((), 0), ((POLITIE,), 5)):
        shown = _picture((RIEC, GEMEENTE), refusals)
        monkeypatch.setattr(picture_commands, "open_client", lambda args, s=shown: _FakeClient(s))
        assert main(args) == code
        out = capsys.readouterr().out
        assert "no data" not in out
        assert "totaal" in out


def test_a_plan_checks_the_ask_and_stores_nothing(exact_world, noisy_world, store):
    from samenloop.policies.errors import NotAllowed

    riec = _desk(noisy_world, store)
    cost = riec.plan(pp.PictureAsk(DEC, (SIGNALS,), (C,)), planned_requests=5)
    assert (cost.needed, cost.remaining, cost.fits) == (2.5, 1.0, False)
    exact = _desk(exact_world, store).plan(pp.PictureAsk(DEC, (SIGNALS,), (C,)))
    assert (exact.noisy, exact.fits) == (False, True)
    assert exact.describe() == "2026-12: exact mode, no privacy budget to spend"
    provisioned, keys = noisy_world
    gemeente = PictureDesk(
        keys=keys[GEMEENTE], covenant=lambda: provisioned.covenant, store=store, clock=lambda: NOW
    )
    with pytest.raises(NotAllowed):
        gemeente.plan(pp.PictureAsk(DEC, (SIGNALS,), (C,)))
    with pytest.raises(InvalidInput) as bad:
        riec.plan(pp.PictureAsk(DEC, (p.Measure.HIT_GROUPS,), (p.Dimension.INTERVENTION_TYPE,)))
    assert bad.value.field == "dimensions"
    assert store.picture_collections() == []
    assert store.picture_ledger(["2026-12"]).spent("2026-12") == 0
