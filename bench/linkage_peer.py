"""Peer linkers for bench/linkage.py, run in their own venvs (see linkage_peer_env.py).

Reads two CSV files (``a.csv``, ``b.csv``; column ``rec_id`` plus the data set's fields)
from ``--dir`` and prints one JSON object: ``{"pairs": [[id_a, id_b, score], ...]}``,
every candidate pair the method scores, so that the caller computes precision and
recall the same way for every method.

* ``anonlink``: CLKs (clkhash, 1024-bit Bloom filters, bigrams of strings, positional
  unigrams of numbers, the FEBRL schema of clkhash's own tutorial without
  ``soc_sec_id``), candidate pairs by Sørensen-Dice >= 0.5 and anonlink's greedy 1-1
  solver; the score is the Dice coefficient.
* ``splink``: raw data (the non-private upper bound), DuckDB; blocking on pairs of
  columns, Jaro-Winkler levels for names and address, date-of-birth levels, u by random
  sampling, m by EM on two blocking passes; the score is the match probability; one-to-one
  greedy on the best score.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import sys
from pathlib import Path

STRING_COLUMNS = ("given_name", "surname", "address_1", "address_2", "suburb")
NUMBER_COLUMNS = ("street_number", "postcode", "date_of_birth")


def read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def anonlink_pairs(directory: Path) -> list[tuple[str, str, float]]:
    import anonlink
    from clkhash import clk
    from clkhash.schema import from_json_dict

    header, rows_a = read(directory / "a.csv")
    _, rows_b = read(directory / "b.csv")
    features: list[dict[str, object]] = [{"identifier": "rec_id", "ignored": True}]
    for column in header[1:]:
        if column in STRING_COLUMNS:
            features.append(
                {
                    "identifier": column,
                    "format": {"type": "string", "encoding": "utf-8"},
                    "hashing": {
                        "comparison": {"type": "ngram", "n": 2},
                        "strategy": {"bitsPerFeature": 300 if "name" in column else 200},
                        "hash": {"type": "doubleHash"},
                        "missingValue": {"sentinel": ""},
                    },
                }
            )
        else:
            features.append(
                {
                    "identifier": column,
                    "format": {"type": "string", "encoding": "utf-8"},
                    "hashing": {
                        "comparison": {"type": "ngram", "n": 1, "positional": True},
                        "strategy": {"bitsPerFeature": 300 if column == "date_of_birth" else 200},
                        "hash": {"type": "doubleHash"},
                        "missingValue": {"sentinel": ""},
                    },
                }
            )
    schema = from_json_dict(
        {
            "version": 3,
            "clkConfig": {
                "l": 1024,
                "kdf": {
                    "type": "HKDF",
                    "hash": "SHA256",
                    "info": base64.b64encode(b"samenloop-bench").decode(),
                    "salt": base64.b64encode(b"samenloop-bench-salt" * 3).decode(),
                    "keySize": 64,
                },
            },
            "features": features,
        }
    )
    secret = "samenloop linkage bench shared secret"

    def clks(rows: list[dict[str, str]]) -> list[object]:
        table = [[row[c] for c in header] for row in rows]
        return clk.generate_clks(table, schema, secret)

    clks_a = clks(rows_a)
    clks_b = clks(rows_b)
    candidates = anonlink.candidate_generation.find_candidate_pairs(
        [clks_a, clks_b], anonlink.similarities.dice_coefficient_accelerated, 0.5
    )
    solution = anonlink.solving.greedy_solve(candidates)
    sims, _dset_is, (rec_a, rec_b) = candidates
    score = {(int(i), int(j)): float(s) for s, i, j in zip(sims, rec_a, rec_b, strict=True)}
    out = []
    for group in solution:
        members = {dset: rec for dset, rec in group}
        if 0 in members and 1 in members:
            i, j = members[0], members[1]
            out.append((rows_a[i]["rec_id"], rows_b[j]["rec_id"], score[(i, j)]))
    return out


def splink_pairs(directory: Path) -> list[tuple[str, str, float]]:
    import pandas as pd
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    a = pd.read_csv(directory / "a.csv", dtype=str, keep_default_na=False).replace("", None)
    b = pd.read_csv(directory / "b.csv", dtype=str, keep_default_na=False).replace("", None)
    columns = set(a.columns)
    comparisons = [
        cl.NameComparison("given_name"),
        cl.NameComparison("surname"),
        cl.DateOfBirthComparison(
            "date_of_birth",
            input_is_string=True,
            datetime_format="%Y%m%d",
            invalid_dates_as_null=True,
        ),
        cl.DamerauLevenshteinAtThresholds("street_number", [1]),
        cl.DamerauLevenshteinAtThresholds("postcode", [1, 2]),
    ]
    for column in ("address_1", "address_2", "suburb"):
        if column in columns:
            comparisons.append(cl.JaroWinklerAtThresholds(column, [0.9, 0.7]))
    for column in ("state", "gender"):
        if column in columns:
            comparisons.append(cl.ExactMatch(column))
    blocking = [
        block_on("given_name", "surname"),
        block_on("surname", "date_of_birth"),
        block_on("given_name", "date_of_birth"),
        block_on("postcode", "street_number"),
        block_on("postcode", "surname"),
        block_on("date_of_birth"),
        block_on("surname"),
        block_on("given_name"),
        block_on("postcode"),
    ]
    settings = SettingsCreator(
        link_type="link_only",
        unique_id_column_name="rec_id",
        blocking_rules_to_generate_predictions=blocking,
        comparisons=comparisons,
        retain_intermediate_calculation_columns=False,
        retain_matching_columns=False,
    )
    db_api = DuckDBAPI()
    linker = Linker([db_api.register(a), db_api.register(b)], settings)
    linker.training.estimate_probability_two_random_records_match(
        [block_on("given_name", "surname", "date_of_birth")], recall=0.6
    )
    linker.training.estimate_u_using_random_sampling(max_pairs=2e6, seed=1)
    linker.training.estimate_parameters_using_expectation_maximisation(
        block_on("date_of_birth"), estimate_without_term_frequencies=True
    )
    linker.training.estimate_parameters_using_expectation_maximisation(
        block_on("surname"), estimate_without_term_frequencies=True
    )
    predictions = linker.inference.predict(threshold_match_probability=0.01).as_pandas_dataframe()
    ranked = sorted(
        zip(
            predictions["rec_id_l"],
            predictions["rec_id_r"],
            predictions["match_probability"],
            predictions["source_dataset_l"],
            strict=True,
        ),
        key=lambda row: -float(row[2]),
    )
    # One-to-one, greedy on the best probability (as anonlink's solver does).
    used_a: set[str] = set()
    used_b: set[str] = set()
    ids_a = set(a["rec_id"])
    out = []
    for left, right, probability, _source in ranked:
        x, y = (left, right) if left in ids_a else (right, left)
        if x in used_a or y in used_b:
            continue
        used_a.add(x)
        used_b.add(y)
        out.append((str(x), str(y), float(probability)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("method", choices=("anonlink", "splink"))
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    pairs = anonlink_pairs(args.dir) if args.method == "anonlink" else splink_pairs(args.dir)
    sys.stdout.write(json.dumps({"pairs": pairs}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
