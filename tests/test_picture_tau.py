"""The exact cube's complementary suppression by τ-Argus (node/picture/tau.py), checked and
completed by the project's own rules (``picture.release(complement=...)``), and the desk's
fall-back to the project's own suppression when τ-Argus cannot run."""

from __future__ import annotations

import itertools

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from test_picture_linked import (
    _SHARED,
    DEC,
    GEMEENTE,
    POLITIE,
    RIEC,
    SIGNALS,
    A,
    C,
    Network,
    _facts,
    _world,
    cubes,
    demo_cells,
    pinned_down,
)

from samenloop.node.picture import arithmetic as p
from samenloop.node.picture import protocol as pp
from samenloop.node.picture import tau as picture_tau
from samenloop.policies.covenant import Role
from samenloop.policies.policy import PictureRules

Q4 = p.Period("2026-10", "2026-12")
FALLBACK = "picture suppression by tau-argus failed: the project's own is used"


def _protected(
    cells: dict[tuple[str, ...], int], dims: tuple[p.Dimension, ...], min_count: int
) -> tuple[p.ReleasedTable, frozenset[tuple[str, ...]], set[tuple[str, ...]]]:
    """The cube released with τ-Argus's pattern, the pattern and the primary cells."""
    cube = p.with_totals(p.Table(SIGNALS, dims, Q4, cells))
    primary = p.small_cells(cube, min_count)
    pattern = picture_tau.complement(cells, [cube.axis(d) for d in dims], primary)
    return (
        p.release(cube, min_count=min_count, primary=primary, complement=pattern),
        pattern,
        primary,
    )


@settings(max_examples=25, deadline=None)
@given(cubes(), st.integers(2, 8))
def test_tau_argus_protects_every_view_of_a_random_cube(drawn, min_count):
    """τ-Argus's pattern covers the primary cells, release keeps all of it (no 0 in it),
    and no set of views of the cube pins down a suppressed cell (the search of
    test_picture_linked, written apart from both methods)."""
    dims, axes, cells, orders = drawn
    released, pattern, primary = _protected(cells, dims, min_count)
    suppressed = {c.values for c in released.suppressed}
    assert primary <= pattern <= suppressed
    assert all(released.cell(k).reason is p.SuppressionReason.TOO_FEW for k in primary)
    assert all(
        released.cell(k).reason is p.SuppressionReason.PROTECTS_ANOTHER
        for k in suppressed - primary
    )
    views = [p.view(released, order) for order in orders]
    assert pinned_down(dims, axes, views) == []


def test_release_completes_a_pattern_that_leaves_a_cell_alone_and_drops_a_zero():
    """A pattern is checked, not trusted: a line with one suppressed cell gets a second,
    and a 0 offered as a complement is not taken (it hides nothing)."""
    axes = [("a", "b", "c"), ("x", "y")]
    cells = {("a", "x"): 2, ("a", "y"): 10, ("b", "x"): 12, ("b", "y"): 9, ("c", "y"): 7}
    cube = p.with_totals(p.Table(SIGNALS, (A, C), Q4, cells))
    primary = {("a", "x")}
    given_pattern = {("a", "x"), ("c", "x")}  # ("c", "x") is an exact 0
    released = p.release(cube, min_count=5, primary=primary, complement=given_pattern)
    suppressed = {c.values for c in released.suppressed}
    assert ("c", "x") not in suppressed
    assert released.cell(("c", "x")).count == 0
    # Both lines through ("a", "x") have a second suppressed cell.
    assert any(k in suppressed for k in [("a", "y"), ("a", p.TOTAL)])
    assert any(k in suppressed for k in [("b", "x"), (p.TOTAL, "x")])
    assert pinned_down((A, C), axes, [released]) == []


def test_the_pattern_is_as_tau_argus_gives_it_when_it_holds():
    """Where τ-Argus's pattern passes the project's checks, release adds nothing to it: the
    cube shown is τ-Argus's, not the project's own (which differs on this table)."""
    cells = {
        ("v0", "v0"): 1,
        ("v0", "v1"): 20,
        ("v1", "v0"): 2,
        ("v2", "v0"): 20,
        ("v2", "v1"): 1,
    }
    released, pattern, _ = _protected(cells, (A, C), 5)
    own = p.release(p.with_totals(p.Table(SIGNALS, (A, C), Q4, cells)), min_count=5)
    assert {c.values for c in released.suppressed} == pattern
    assert {c.values for c in own.suppressed} != pattern


def test_an_engine_that_runs_too_long_is_given_up_naming_the_time():
    cells = {(a, c): 1 + i for i, (a, c) in enumerate(itertools.product("abc", "xy"))}
    with pytest.raises(picture_tau.TauArgusUnavailable, match=r"longer than 0\.001 s"):
        picture_tau.complement(cells, [("a", "b", "c"), ("x", "y")], {("a", "x")}, timeout=0.001)


def test_an_engine_that_fails_is_reported_with_its_last_words(monkeypatch):
    monkeypatch.setattr(picture_tau, "_MODULE", "samenloop.node.no_such_module")
    with pytest.raises(picture_tau.TauArgusUnavailable, match=r"exited with 1: .*no_such_module"):
        picture_tau.complement({("a", "x"): 1, ("b", "x"): 9}, [("a", "b"), ("x",)], {("a", "x")})


@pytest.fixture(scope="module")
def exact_world(tmp_path_factory: pytest.TempPathFactory):
    rules = PictureRules(viewers=(Role.RIEC,), min_cell_count=5, **_SHARED)
    return _world(tmp_path_factory.mktemp("tau-exact"), rules)


def _show_once(world, tmp_path) -> tuple[p.ReleasedTable, list[dict[str, object]]]:
    cells = demo_cells()
    gemeente = {k: v for k, v in cells.items() if k[2] == "leegstand"}
    politie = {k: v for k, v in cells.items() if k not in gemeente}
    net = Network(world, tmp_path, {GEMEENTE: _facts(gemeente), POLITIE: _facts(politie)})
    try:
        riec = net.desks[RIEC]
        riec.collect(pp.PictureAsk(DEC, (SIGNALS,), (A, C)), officer="analist@riec")
        net.ferry()
        with structlog.testing.capture_logs() as logged:
            shown = riec.show(measure=SIGNALS, dimensions=(A, C), period=DEC)
    finally:
        net.close()
    return shown.table, logged


def test_the_desk_protects_the_cube_with_tau_argus(exact_world, tmp_path):
    table, logged = _show_once(exact_world, tmp_path)
    assert table.suppressed  # the demo's small leegstand cell and its complements
    assert not [e for e in logged if e["event"] == FALLBACK]


def test_without_tau_argus_the_desk_falls_back_and_says_so(exact_world, tmp_path, monkeypatch):
    """The project's own suppression is complete on its own: a failing engine costs more
    loss, never a cell."""
    monkeypatch.setattr(picture_tau, "_MODULE", "samenloop.node.no_such_module")
    table, logged = _show_once(exact_world, tmp_path)
    (warning,) = [e for e in logged if e["event"] == FALLBACK]
    assert warning["log_level"] == "warning"
    assert "no_such_module" in str(warning["why"])
    assert table.cell(("pc4:4461", "leegstand")).quality is p.CellQuality.SUPPRESSED


def test_the_engine_works_in_the_directory_given_and_leaves_nothing_there(tmp_path):
    """The cube's counts go to τ-Argus as files: in the node's owner-only data directory
    (``work_dir``), removed when it is done."""
    cells = {("a", "x"): 2, ("a", "y"): 10, ("b", "x"): 12, ("b", "y"): 9}
    pattern = picture_tau.complement(
        cells, [("a", "b"), ("x", "y")], {("a", "x")}, work_dir=tmp_path
    )
    assert ("a", "x") in pattern
    assert len(pattern) >= 4
    assert list(tmp_path.iterdir()) == []
