"""``samenloop demo``: the protocol core at work, in-process.

Four partners (gemeente, politie, belastingdienst, woningcorporatie) hold
signals; three key holders (politie, belastingdienst, RIEC) share the
covenant's OPRF key 2-of-3. The demo goes through the real steps and files:
party keys, dealing the key epoch, each holder accepting its sealed share,
each partner checking and tokenising its identifiers, and finally finding the
tokens that several partners hold. The identifiers that overlap are written
differently at each partner. One key holder lies in the second round and is
caught by its DLEQ proof and skipped.

The full demo with broker and node daemons replaces this one in the next
issue; this one shows the core on its own.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from samenloop.node.identifiers import normalise as identifiers
from samenloop.node.tokens import derive as tokens
from samenloop.node.tokens import keysetup, oprf, threshold
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.errors import InvalidIdentifier
from samenloop.policies.terminal import show_table

COVENANT = "riec-zeeland-west-brabant-demo"
PARTNERS = ("gemeente", "politie", "belastingdienst", "woningcorporatie")
HOLDERS = ("politie", "belastingdienst", "riec")
LEADING_ZEROS_DROPPED = frozenset({"gemeente"})


@dataclass(frozen=True)
class RawSignal:
    partner: str
    reference: str
    type: str
    value: str


# Subjects that several partners hold, each written the way that partner writes it.
SHARED: list[tuple[str, dict[str, str]]] = [
    (
        "bsn",
        {"gemeente": "123456782", "politie": "1234.56.782", "woningcorporatie": "12 34 56 782"},
    ),
    ("bsn", {"belastingdienst": "012345672", "gemeente": "12345672"}),  # leading zero dropped
    ("kvk", {"gemeente": "KvK 1234 5678", "belastingdienst": "12345678"}),
    ("iban", {"belastingdienst": "NL91 ABNA 0417 1643 00", "politie": "nl91abna0417164300"}),
    ("kenteken", {"politie": "AB-123-C", "gemeente": "ab123c"}),
    (
        "address",
        {"woningcorporatie": "1234 AB 12-a", "gemeente": "1234ab 12 A", "politie": "1234AB|12|A"},
    ),
    (
        "person",
        {"politie": "Jan de Vries;1980-03-15", "woningcorporatie": "DE VRIES, J.;15-03-1980"},
    ),
]

# What a partner's spreadsheet also contains: mistakes the import must refuse.
INVALID: list[RawSignal] = [
    RawSignal("gemeente", "GEM-ERR-1", "bsn", "123456789"),
    RawSignal("woningcorporatie", "WC-ERR-1", "address", "0123 AB 5"),
]


def _valid_bsn(rng: random.Random) -> str:
    while True:
        digits = [rng.randrange(10) for _ in range(8)]
        check = sum(d * w for d, w in zip(digits, range(9, 1, -1), strict=True)) % 11
        if check < 10:
            return "".join(map(str, digits)) + str(check)


def synthetic_signals(per_partner: int, seed: int = 2026) -> list[RawSignal]:
    """The shared subjects plus ``per_partner`` signals each that no one else holds."""
    rng = random.Random(seed)  # noqa: S311 - synthetic demo data, not a secret
    signals = [
        RawSignal(partner, f"{partner[:3].upper()}-{n:04d}", kind, value)
        for n, (kind, holders) in enumerate(SHARED)
        for partner, value in holders.items()
    ]
    seen = {s.value for s in signals}
    for partner in PARTNERS:
        for n in range(per_partner):
            bsn = _valid_bsn(rng)
            while bsn in seen:  # unshared means unshared: no chance overlaps
                bsn = _valid_bsn(rng)
            seen.add(bsn)
            signals.append(RawSignal(partner, f"{partner[:3].upper()}-{1000 + n:04d}", "bsn", bsn))
    return signals + INVALID


def run(args: argparse.Namespace) -> int:
    console = Console()
    workdir: Path = (args.workdir or Path(tempfile.mkdtemp(prefix="samenloop-demo-"))).resolve()
    try:
        if args.core:
            _demo(console, workdir, args.signals)
            return 0
        from samenloop.node.demo.daemons import run_demo

        return run_demo(console, workdir, args.signals)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _demo(console: Console, workdir: Path, per_partner: int) -> None:
    console.rule("[bold]Samenloop demo: threshold OPRF tokens")
    parties = sorted(set(PARTNERS) | set(HOLDERS))
    keys = {}
    for party in parties:
        keys[party] = PartyKeys.generate(party)
        keys[party].save(workdir / "keys" / f"{party}.json")
    console.print(
        f"1. party keys for {', '.join(parties)} (owner-only files in {workdir / 'keys'})"
    )

    admin = keys["riec"]  # the RIEC's administrator deals the key and signs the epoch
    dealt, sealed = keysetup.deal(
        COVENANT, 1, 2, [(h, keys[h].public().x25519) for h in HOLDERS], now=datetime.now(UTC)
    )
    (workdir / "key-epoch-1.json").write_bytes(keysetup.sign_key_epoch(dealt, admin))
    # Each holder trusts the epoch only as signed by the administrator it knows.
    epoch = keysetup.verify_key_epoch(
        (workdir / "key-epoch-1.json").read_bytes(), admin.party, admin.public()
    )
    shares = {}
    for s in sealed:
        share = keysetup.open_share(s, epoch, keys[s.holder])
        keysetup.save_share(workdir / "shares" / f"{s.holder}.json", epoch, share)
        shares[share.index] = share
    console.print(
        "2. key epoch 1 dealt 2-of-3 to "
        + ", ".join(f"{h.party} (holder {h.index})" for h in epoch.holders)
        + "; the epoch is signed by the RIEC administrator; each holder checked that signature,"
        " opened its sealed share and checked it against its commitment;"
        " the whole key was never written"
    )

    raw = synthetic_signals(per_partner)
    parsed: dict[str, list[tuple[RawSignal, identifiers.Identifier]]] = defaultdict(list)
    rejected: list[tuple[RawSignal, InvalidIdentifier]] = []
    for signal in raw:
        try:
            # The gemeente's spreadsheet stored BSNs as numbers and dropped leading zeros;
            # it imports that column with leading zeros restored, the others need not.
            restore = signal.partner in LEADING_ZEROS_DROPPED
            ident = identifiers.parse(signal.type, signal.value, leading_zero_dropped=restore)
            parsed[signal.partner].append((signal, ident))
        except InvalidIdentifier as refusal:
            rejected.append((signal, refusal))
    console.print(
        f"3. partners checked {len(raw)} identifiers: {len(raw) - len(rejected)} valid, "
        f"{len(rejected)} refused:"
    )
    for signal, why in rejected:
        console.print(
            f"   {signal.partner} {signal.reference} ({signal.type}): {why.message} [{why.reason}]"
        )

    domain = tokens.TokenDomain(COVENANT, 1)
    honest: dict[int, threshold.HolderFunction] = {i: _honest_holder(s) for i, s in shares.items()}
    liar = dict(honest)
    liar[1] = _lying_holder(shares[1])

    by_token: dict[bytes, list[tuple[str, RawSignal]]] = defaultdict(list)
    started = time.perf_counter()
    count = 0
    for n, partner in enumerate(PARTNERS):
        items = parsed[partner]
        # The second partner meets a lying holder 1: its proof fails, holder 3 stands in.
        evaluators = liar if n == 1 else honest
        planner = threshold.HolderPlanner(epoch)
        pending = tokens.start(domain, [ident for _, ident in items])
        evaluated = threshold.evaluate_in_process(
            epoch, evaluators, pending.blinded_elements, planner
        )
        for (signal, _), token in zip(items, tokens.finish(pending, evaluated), strict=True):
            by_token[token].append((partner, signal))
        count += len(items)
        skipped = (
            f"; holder(s) {sorted(planner.excluded)} caught lying and skipped"
            if planner.excluded
            else ""
        )
        console.print(f"4. {partner}: {len(items)} tokens{skipped}")
    elapsed = time.perf_counter() - started
    console.print(
        f"   {count} tokens in {elapsed:.2f} s ({count / elapsed:,.0f} tokens/s, one process)"
    )

    table = Table(title="5. samenloop: tokens held by more than one partner")
    table.add_column("type")
    table.add_column("partners and their own references")
    table.add_column("as each partner wrote it")
    hits = [group for group in by_token.values() if len({p for p, _ in group}) > 1]
    for group in sorted(hits, key=lambda g: (g[0][1].type, g[0][1].reference)):
        table.add_row(
            group[0][1].type,
            ", ".join(f"{p} {s.reference}" for p, s in group),
            " | ".join(repr(s.value) for _, s in group),
        )
    show_table(console, table)
    expected = len(SHARED)
    status = "as expected" if len(hits) == expected else f"EXPECTED {expected}"
    console.print(
        f"{len(hits)} shared subjects found among {len(by_token)} distinct tokens ({status})."
    )
    if len(hits) != expected:
        raise SystemExit(1)


def _honest_holder(share: threshold.Share) -> threshold.HolderFunction:
    def evaluate(blinded: Sequence[bytes], rset: Sequence[int]) -> threshold.PartialEvaluation:
        return threshold.evaluate_partial(share, blinded, rset)

    return evaluate


def _lying_holder(share: threshold.Share) -> threshold.HolderFunction:
    def evaluate(blinded: Sequence[bytes], rset: Sequence[int]) -> threshold.PartialEvaluation:
        honest = threshold.evaluate_partial(share, blinded, rset)
        wrong = oprf.scalar_mult(oprf.random_scalar(), blinded[0])
        return threshold.PartialEvaluation(
            honest.holder_index, (wrong, *honest.evaluated_elements[1:]), honest.proof
        )

    return evaluate
