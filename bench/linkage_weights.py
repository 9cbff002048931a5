"""Estimate person_score's weights and thresholds on TRAINING data; print the constants.

``.venv/bin/python bench/linkage_weights.py`` prints the ``WEIGHTS`` table and the two
thresholds to paste into node/identifiers/person_score.py. The training data is FEBRL3
(deduplicated within its 5,000 records; it is not the benchmark's FEBRL4) and the Dutch
synthetic set with :data:`TRAIN_SEED` (the benchmark uses another seed). ``m`` and ``u``
per kind are counted from the labels (person_score.estimate).

Thresholds: the kinds are correlated, so a summed score is not a calibrated
likelihood ratio. For each score level (all pairs with the same set of agreeing kinds
have the same score) the training precision of that level is counted; a threshold is
the lowest score such that the pairs scoring at least that much have at least the
target precision (0.99 for shown, 0.999 for disclosure) in *each* training set (the
highest of the per-set thresholds).
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import linkage  # noqa: E402
import linkage_data  # noqa: E402

from samenloop.node.identifiers import person_score as ps  # noqa: E402
from samenloop.node.identifiers.person_keys import PersonKeyKind  # noqa: E402

TRAIN_SEED = 7


def main() -> int:
    match_agree: collections.Counter[PersonKeyKind] = collections.Counter()
    match_compared: collections.Counter[PersonKeyKind] = collections.Counter()
    non_match_agree: collections.Counter[PersonKeyKind] = collections.Counter()
    non_match_compared: collections.Counter[PersonKeyKind] = collections.Counter()
    labelled: list[tuple[str, linkage.Linked, tuple[str, str], bool]] = []
    for ds in (linkage_data.febrl3(), linkage_data.dutch(TRAIN_SEED)):
        linked = linkage.candidates(ds)
        for pair in ds.true_pairs:
            match_agree.update(linked.candidates.get(pair, frozenset()))
            match_compared.update(linked.compared(pair))
        for pair, kinds in linked.candidates.items():
            is_match = pair in ds.true_pairs
            labelled.append((ds.name, linked, pair, is_match))
            if not is_match:
                non_match_agree.update(kinds)
        have_a = collections.Counter(k for kinds in linked.kinds_a.values() for k in kinds)
        have_b = collections.Counter(k for kinds in linked.kinds_b.values() for k in kinds)
        for kind in PersonKeyKind:
            pairs = have_a[kind] * have_b[kind] if ds.b else have_a[kind] * (have_a[kind] - 1) // 2
            non_match_compared[kind] += pairs
        print(f"# {ds.name}: {len(ds.true_pairs)} true pairs, {len(linked.candidates)} candidates")
    for kind in PersonKeyKind:
        non_match_compared[kind] -= match_compared[kind]
    weights = ps.estimate(match_agree, match_compared, non_match_agree, non_match_compared)
    # Score levels per training set: {set name: {score: [true, false]}}.
    levels: dict[str, dict[float, list[int]]] = collections.defaultdict(
        lambda: collections.defaultdict(lambda: [0, 0])
    )
    for name, linked, pair, is_match in labelled:
        levels[name][round(linked.score(pair, weights), 1)][0 if is_match else 1] += 1
    table = [
        f"    PersonKeyKind.{k.name}: KindWeight(m={w.m:.4g}, u={w.u:.4g}),"
        for k, w in weights.items()
    ]
    print("WEIGHTS = {", *table, "}", sep="\n")
    thresholds: dict[str, float] = {}
    for name, target in (("SHOWN_THRESHOLD", 0.99), ("DISCLOSURE_THRESHOLD", 0.999)):
        per_set = [_threshold(set_levels, target) for set_levels in levels.values()]
        thresholds[name] = max(per_set)
        print(f"{name} = {thresholds[name]:.1f}  # per training set: {per_set}")
    for set_name, set_levels in levels.items():
        print(f"# {set_name}: score levels with false pairs (score: true, false):")
        for score in sorted(set_levels, reverse=True):
            tp, fp = set_levels[score]
            if fp:
                print(f"#   {score:7.2f}: {tp} true, {fp} false")
    if "--write" in sys.argv:
        write(table, thresholds)
    return 0


def _threshold(levels: dict[float, list[int]], target: float) -> float:
    """The lowest score at which the pairs scoring at least that much reach ``target``."""
    threshold = float("inf")
    tp_sum = fp_sum = 0
    for score in sorted(levels, reverse=True):
        tp_sum += levels[score][0]
        fp_sum += levels[score][1]
        if tp_sum / (tp_sum + fp_sum) >= target:
            threshold = score
    return threshold


def write(table: list[str], thresholds: dict[str, float]) -> None:
    """Put the estimated constants into person_score.py (between its fmt: off/on)."""
    path = HERE.parent / "node" / "identifiers" / "person_score.py"
    text = path.read_text()
    start = text.index("WEIGHTS: Final")
    end = text.index("# fmt: on")
    block = (
        "WEIGHTS: Final[Mapping[PersonKeyKind, KindWeight]] = {\n"
        + "\n".join(table)
        + "\n}\n"
        + "#: Lowest score at which a hit is shown as probable (training precision >= 0.99).\n"
        + f"SHOWN_THRESHOLD: Final = {thresholds['SHOWN_THRESHOLD']:.1f}\n"
        + "#: Lowest score at which a hit may lead to disclosure (training precision >= 0.999).\n"
        + f"DISCLOSURE_THRESHOLD: Final = {thresholds['DISCLOSURE_THRESHOLD']:.1f}\n"
    )
    path.write_text(text[:start] + block + text[end:])
    print(f"# written {path}")


if __name__ == "__main__":
    raise SystemExit(main())
