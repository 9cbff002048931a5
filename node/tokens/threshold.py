"""Threshold OPRF: the covenant key split t-of-n among key holders.

The key k is Shamir-shared over the ristretto255 scalar field: holder i (for
i = 1..n) holds s_i = f(i) for a random polynomial f of degree t-1 with
f(0) = k, and the covenant publishes each holder's commitment C_i = s_i * G.

A node asks a *responding set* S of exactly t holders to evaluate its blinded
elements. Holder i returns Z_ij = (lambda_i^S * s_i) * B_j with its Lagrange
coefficient for S already applied, plus an RFC 9497 batched DLEQ proof (the
VOPRF proof, mode 1) that the same scalar maps G to lambda_i^S * C_i and every
B_j to Z_ij. The node, who can compute lambda_i^S * C_i from the public
commitments, verifies each proof; the sum over S of Z_ij is then exactly
k * B_j, the single-key evaluation. A holder whose proof fails is reported in
``FaultyHolders`` and the node retries with a set that leaves it out.

Pure functions and a small planner; no I/O. ``evaluate_in_process`` drives the
protocol against in-process holders, for tests, benchmarks and the demo.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from samenloop.node.tokens import oprf
from samenloop.policies.covenant import Covenant, OprfKeyEpoch
from samenloop.policies.errors import (
    InvalidInput,
    InvalidProof,
    MessageTooLarge,
    NotAllowed,
    NotEnoughHolders,
    PeerError,
    SamenloopError,
)
from samenloop.v1 import common_pb2

#: The protocol's limits, from the wire format.
MAX_HOLDERS: int = common_pb2.LIMITS_MAX_KEY_HOLDERS
MAX_ID_BYTES: int = common_pb2.LIMITS_MAX_PARTY_ID_BYTES
MAX_ELEMENTS: int = common_pb2.LIMITS_MAX_BLINDED_ELEMENTS_PER_REQUEST


@dataclass(frozen=True, slots=True, repr=False, eq=False)
class Share:
    """One holder's share s_i of the covenant key for one epoch. Secret: no repr, no ``==``."""

    index: int
    scalar: bytes

    def __repr__(self) -> str:
        return f"Share(index={self.index}, scalar=<redacted>)"

    @property
    def commitment(self) -> bytes:
        return oprf.scalar_mult_gen(self.scalar)


@dataclass(frozen=True, slots=True)
class Holder:
    """A key holder as the covenant publishes it."""

    index: int
    party: str
    commitment: bytes


@dataclass(frozen=True, slots=True)
class KeyEpoch:
    """The public side of one epoch of the covenant's OPRF key.

    ``group_public_key`` is k * G. Rotation is a new epoch with a new key;
    tokens carry the epoch in their derivation, so epochs never mix. The
    threshold is at least 2 and every holder is a different party, so that no
    single party ever holds enough of the key to compute a token.
    """

    covenant_id: str
    epoch: int
    threshold: int
    group_public_key: bytes
    holders: tuple[Holder, ...]
    created_at: datetime
    retire_after: datetime

    def __post_init__(self) -> None:
        if not 0 < len(self.covenant_id.encode("utf-8")) <= MAX_ID_BYTES:
            raise InvalidInput(f"covenant id must be 1..{MAX_ID_BYTES} bytes", field="covenant_id")
        if not 1 <= self.epoch < 2**32:
            raise InvalidInput("key epoch must be 1..2^32-1", field="epoch")
        indices = [h.index for h in self.holders]
        if len(set(indices)) != len(indices) or any(not 1 <= i <= MAX_HOLDERS for i in indices):
            raise InvalidInput(
                f"holder indices must be distinct, 1..{MAX_HOLDERS}", field="holders"
            )
        parties = [h.party for h in self.holders]
        if len(set(parties)) != len(parties):
            raise InvalidInput("a party can hold only one share of a key", field="holders")
        if not 2 <= self.threshold <= len(self.holders):
            raise InvalidInput(
                f"threshold {self.threshold} must be 2..{len(self.holders)}: "
                "one holder alone must never be able to evaluate",
                field="threshold",
            )
        if self.created_at.tzinfo is None or self.retire_after.tzinfo is None:
            raise InvalidInput("key epoch times must be timezone-aware (UTC)", field="created_at")
        if self.retire_after <= self.created_at:
            raise InvalidInput("key epoch must retire after it was created", field="retire_after")
        for h in self.holders:
            oprf.deserialize_element(h.commitment, field=f"holders[{h.index}].commitment")
        oprf.deserialize_element(self.group_public_key, field="group_public_key")

    @classmethod
    def from_covenant(cls, covenant: Covenant) -> KeyEpoch:
        """The covenant's current key epoch, validated as group elements and checked consistent."""
        return cls.of(covenant.id, covenant.key_epoch)

    @classmethod
    def of(cls, covenant_id: str, plain: OprfKeyEpoch) -> KeyEpoch:
        """One of a covenant's key epochs (current or staged), validated and checked consistent."""
        epoch = cls(
            covenant_id=covenant_id,
            epoch=plain.epoch,
            threshold=plain.threshold,
            group_public_key=plain.group_public_key,
            holders=tuple(Holder(s.index, s.party, s.commitment) for s in plain.holders),
            created_at=plain.created_at,
            retire_after=plain.retire_after,
        )
        epoch.check_consistency()
        return epoch

    def check_in_force(self, now: datetime) -> None:
        """Raise ``NotAllowed`` unless ``now`` lies within the epoch's lifetime."""
        if not self.created_at <= now <= self.retire_after:
            raise NotAllowed(
                f"key epoch {self.epoch} is valid from {self.created_at.isoformat()} "
                f"until {self.retire_after.isoformat()}",
                field="key_epoch",
                reason="oprf.epoch_not_in_force",
            )

    def holder(self, index: int) -> Holder:
        for h in self.holders:
            if h.index == index:
                return h
        raise InvalidInput(f"no key holder with index {index}", field="holder_index")

    def check_consistency(self) -> None:
        """Check that the commitments lie on one polynomial whose constant term is the group key.

        Interpolates k * G from the first t commitments and every other
        commitment from them too; a dealer that handed out inconsistent shares
        (or a tampered commitment) is caught here, before anyone relies on them.
        """
        base = self.holders[: self.threshold]
        base_set = tuple(h.index for h in base)
        if _interpolate_at(0, base_set, [h.commitment for h in base]) != self.group_public_key:
            raise InvalidInput(
                "holder commitments do not match the group public key", field="holders"
            )
        for h in self.holders[self.threshold :]:
            if _interpolate_at(h.index, base_set, [b.commitment for b in base]) != h.commitment:
                raise InvalidInput(
                    f"commitment of holder {h.index} is inconsistent", field=f"holders[{h.index}]"
                )


def lagrange_coefficient(index: int, responding_set: Sequence[int], at: int = 0) -> bytes:
    """lambda_i^S evaluated at ``at`` (0 for the secret): prod_{j != i} (at - x_j) / (x_i - x_j)."""
    _check_set(responding_set, index)
    num, den = 1, 1
    for j in responding_set:
        if j != index:
            num = num * (at - j) % oprf.ORDER
            den = den * (index - j) % oprf.ORDER
    return oprf.scalar_mul(
        oprf.scalar_from_int(num), oprf.scalar_inverse(oprf.scalar_from_int(den))
    )


def _check_set(responding_set: Sequence[int], index: int | None = None) -> None:
    if list(responding_set) != sorted(set(responding_set)) or not responding_set:
        raise InvalidInput("responding set must be ascending and distinct", field="responding_set")
    if index is not None and index not in responding_set:
        raise InvalidInput(f"holder {index} is not in the responding set", field="responding_set")


def _interpolate_at(at: int, indices: Sequence[int], elements: Sequence[bytes]) -> bytes:
    total: bytes | None = None
    for i, element in zip(indices, elements, strict=True):
        coefficient = lagrange_coefficient(i, indices, at)
        if coefficient == bytes(oprf.SCALAR_BYTES):
            continue
        term = oprf.scalar_mult(coefficient, element)
        total = term if total is None else oprf.element_add(total, term)
    # The coefficients of distinct indices sum to 1, so they never all vanish.
    assert total is not None
    return total


def split_key(
    secret: bytes, threshold: int, holders: int, *, coefficients: Sequence[bytes] | None = None
) -> list[Share]:
    """Shamir-split ``secret`` t-of-n. ``coefficients`` (t-1 scalars) only for tests."""
    oprf.deserialize_scalar(secret, field="secret")
    if not 1 <= threshold <= holders <= MAX_HOLDERS:
        raise InvalidInput(f"need 1 <= t <= n <= {MAX_HOLDERS}", field="threshold")
    coeffs = [secret] + (
        list(coefficients)
        if coefficients is not None
        else [oprf.random_scalar() for _ in range(threshold - 1)]
    )
    if len(coeffs) != threshold:
        raise InvalidInput("need exactly t-1 coefficients", field="coefficients")
    shares = []
    for i in range(1, holders + 1):
        x = oprf.scalar_from_int(i)
        acc = coeffs[-1]
        for c in reversed(coeffs[:-1]):  # Horner's rule
            acc = oprf.scalar_add(oprf.scalar_mul(acc, x), c)
        shares.append(Share(index=i, scalar=acc))
    return shares


def recover_key(shares: Sequence[Share]) -> bytes:
    """Interpolate k from t shares. Only tests use this: no component ever rebuilds the key."""
    indices = sorted(s.index for s in shares)
    total = bytes(oprf.SCALAR_BYTES)
    for s in shares:
        total = oprf.scalar_add(
            total, oprf.scalar_mul(lagrange_coefficient(s.index, indices), s.scalar)
        )
    return total


# --- holder side ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartialEvaluation:
    """A holder's answer: its weighted partial evaluations and their DLEQ proof."""

    holder_index: int
    evaluated_elements: tuple[bytes, ...]
    proof: bytes


def evaluate_partial(
    share: Share,
    blinded_elements: Sequence[bytes],
    responding_set: Sequence[int],
    *,
    r: bytes | None = None,
) -> PartialEvaluation:
    """What a key holder computes: (lambda_i^S * s_i) * B_j for every B_j, with a proof.

    Every blinded element is validated (RFC 9497 DeserializeElement) first.
    """
    if not blinded_elements:
        raise InvalidInput("no blinded elements", field="blinded_elements")
    if len(blinded_elements) > MAX_ELEMENTS:
        raise MessageTooLarge(
            f"{len(blinded_elements)} blinded elements; at most {MAX_ELEMENTS} per request",
            field="blinded_elements",
        )
    elements = [
        oprf.deserialize_element(b, field=f"blinded_elements[{j}]")
        for j, b in enumerate(blinded_elements)
    ]
    k = oprf.scalar_mul(lagrange_coefficient(share.index, responding_set), share.scalar)
    evaluated = tuple(oprf.scalar_mult(k, b) for b in elements)
    proof = oprf.generate_proof(
        k, oprf.GENERATOR, oprf.scalar_mult_gen(k), elements, evaluated, r=r
    )
    return PartialEvaluation(holder_index=share.index, evaluated_elements=evaluated, proof=proof)


# --- node side -------------------------------------------------------------------


class FaultyHolders(PeerError):
    """One or more holders returned a partial evaluation whose proof fails."""

    default_reason = "oprf.faulty_holder"

    def __init__(self, indices: Iterable[int]):
        self.indices = frozenset(indices)
        super().__init__(
            f"key holder(s) {sorted(self.indices)} returned invalid partial evaluations",
            field="holder_index",
        )


def verify_partial(
    epoch: KeyEpoch,
    responding_set: Sequence[int],
    blinded_elements: Sequence[bytes],
    partial: PartialEvaluation,
) -> None:
    """Check one holder's proof against lambda_i^S * C_i; raise ``InvalidProof`` if wrong."""
    field = f"holders[{partial.holder_index}]"
    if len(partial.evaluated_elements) != len(blinded_elements):
        raise InvalidProof("wrong number of evaluated elements", field=field)
    evaluated = [
        oprf.deserialize_element(z, field=f"{field}.evaluated_elements[{j}]")
        for j, z in enumerate(partial.evaluated_elements)
    ]
    weighted_commitment = oprf.scalar_mult(
        lagrange_coefficient(partial.holder_index, responding_set),
        epoch.holder(partial.holder_index).commitment,
    )
    oprf.verify_proof(
        oprf.GENERATOR, weighted_commitment, blinded_elements, evaluated, partial.proof, field=field
    )


def combine(
    epoch: KeyEpoch,
    responding_set: Sequence[int],
    blinded_elements: Sequence[bytes],
    partials: Mapping[int, PartialEvaluation],
) -> list[bytes]:
    """Verify every partial and add them up: the single-key evaluation of each element.

    Raises ``FaultyHolders`` naming every holder whose answer is wrong (all are
    checked, so one retry can leave them all out).
    """
    _check_set(responding_set)
    if len(responding_set) != epoch.threshold or set(partials) != set(responding_set):
        raise InvalidInput("need exactly one answer from each holder in the set", field="partials")
    faulty = set()
    for index in responding_set:
        if partials[index].holder_index != index:  # a copied or misrouted answer
            faulty.add(index)
            continue
        try:
            verify_partial(epoch, responding_set, blinded_elements, partials[index])
        except (InvalidProof, InvalidInput):
            faulty.add(index)
    if faulty:
        raise FaultyHolders(faulty)
    combined = list(partials[responding_set[0]].evaluated_elements)
    for index in responding_set[1:]:
        combined = [
            oprf.element_add(a, b)
            for a, b in zip(combined, partials[index].evaluated_elements, strict=True)
        ]
    return combined


#: The planner moves on to another responding set once a seat of the one it uses has this
#: fraction of the smallest daily allowance fewer left than a seat outside it (see ``DailyUse``).
SPREAD_FRACTION = 16


@dataclass
class DailyUse:
    """What a requesting node knows of what each holder seat still evaluates for it today.

    ``allowance`` maps each seat's index to the elements it evaluates for this
    node per UTC day (``rules.oprf_allowance``: its share of the covenant's
    cap). ``spend`` counts an answered request; ``learn`` takes what a holder's
    signed answer says remains (``remaining_today``), which also covers
    requests made before this node restarted. Each UTC day starts afresh.

    ``window`` is how many elements the node risks in one request. Holders
    count what they answer before the answer leaves, and the broker may drop
    it (or spoil it), so an answer lost costs quota without a token. It is
    ``MAX_ELEMENTS`` until a round loses answers (``lost``), then 1, growing by
    the elements of every round whose answers all arrived (``answered``): so it
    at most doubles per round, and a round that loses answers asks at most
    1 + the elements answered since the last loss (docs/crypto.md).
    """

    allowance: Mapping[int, int]
    day: date | None = None
    remaining: dict[int, int] = field(default_factory=dict)
    window: int = MAX_ELEMENTS
    #: Rounds that lost answers so far: a request asked before the last loss does not grow
    #: the window when it is answered later (the node checks one request while it asks the
    #: next).
    losses: int = 0

    def left(self, index: int, day: date) -> int:
        """Elements seat ``index`` still evaluates for this node on ``day``, as far as known."""
        self._turn(day)
        return self.remaining.get(index, self.allowance.get(index, 0))

    def spend(self, index: int, count: int, day: date) -> None:
        self._turn(day)
        self.remaining[index] = max(0, self.left(index, day) - count)

    def learn(self, index: int, remaining: int, day: date) -> None:
        self._turn(day)
        self.remaining[index] = max(0, min(remaining, self.allowance.get(index, 0)))

    def lost(self) -> None:
        """A round lost answers that holders may have counted: risk one element next."""
        self.window = 1
        self.losses += 1

    def answered(self, count: int) -> None:
        """A round of ``count`` elements got every answer: risk that many more next."""
        self.window = min(MAX_ELEMENTS, self.window + max(0, count))

    def _turn(self, day: date) -> None:
        if day != self.day:
            self.day = day
            self.remaining = {}


@dataclass
class HolderPlanner:
    """Chooses responding sets and remembers which holders misbehaved or failed.

    A small state machine: ``exclude`` records a faulty, refusing or
    unreachable holder, left out from then on; ``plan`` proposes a set of t
    holders not excluded and how many elements to ask of it now.

    ``own``: the requesting party's own seat, if it holds one. It is in every
    set, so that its own holder counts each of its tokens against its whole
    cap, and the other holders' shares for it (t-1 per token) last as long.
    ``use``: what each seat still allows today. With it the other seats are
    taken most-remaining first (the lowest index on a tie), a seat with
    nothing left is skipped, and a request is cut so that no seat is asked for
    more than it has left, and so that the remainders stay within
    ``DailyUse.step`` of each other: an honest party spreads its load over all
    holders and reaches its cap; and no request asks more than ``use.window``.
    ``turn``: where the choice among the other usable seats starts, in index
    order, wrapping around; ``advance`` (after every answered round) moves it
    on by one. Without ``use`` the seats are taken from there, so that the
    rounds go round all holders and each carries an equal share; with ``use``
    it breaks ties between seats with as much left. A daemon keeps ``turn``
    across its planners and starts it at random, so that nodes do not all
    begin with the same holders.
    """

    epoch: KeyEpoch
    excluded: set[int] = field(default_factory=set)
    own: int | None = None
    use: DailyUse | None = None
    turn: int = 0

    def plan(self, wanted: int, *, day: date | None = None) -> tuple[tuple[int, ...], int]:
        """A responding set and how many of ``wanted`` elements (1..``MAX_ELEMENTS``) to ask it.

        Raises ``NotEnoughHolders`` when no set of t usable holders is left
        (with the own seat when there is one), naming seats with no quota left.
        """
        if wanted < 1:
            raise InvalidInput("nothing to evaluate", field="wanted")
        left = (
            {h.index: self.use.left(h.index, day) for h in self.epoch.holders}
            if self.use is not None and day is not None
            else None
        )
        used_up = sorted(i for i, n in (left or {}).items() if n <= 0 and i not in self.excluded)
        usable = [
            h.index
            for h in self.epoch.holders
            if h.index not in self.excluded and h.index not in used_up
        ]
        need = self.epoch.threshold
        chosen: list[int] = []
        if self.own is not None:
            if self.own not in usable:
                why = "has no quota left today" if self.own in used_up else "is not usable"
                raise NotEnoughHolders(
                    f"this party's own key-holder seat {self.own} {why}; "
                    "every evaluation it asks includes it",
                    field="holders",
                )
            chosen.append(self.own)
            need -= 1
        others = [i for i in usable if i != self.own]
        if others:
            start = self.turn % len(others)
            others = others[start:] + others[:start]
        if left is not None:
            others.sort(key=lambda i: -left[i])  # stable: ties keep the turn's order
        if len(others) < need:
            quota = f"; no quota left today at holder(s) {used_up}" if used_up else ""
            raise NotEnoughHolders(
                f"only {len(usable)} usable key holders, threshold is {self.epoch.threshold}"
                + quota,
                field="holders",
            )
        picked = others[:need]
        chosen.extend(picked)
        count = min(wanted, MAX_ELEMENTS)
        if self.use is not None:
            count = min(count, max(1, self.use.window))
        if left is not None and self.use is not None:
            count = min(count, *(left[i] for i in chosen))
            if picked and len(others) > need:
                # Keep to this set until its seats have a step fewer left than the next seat;
                # the step shrinks with what is left, so the remainders end level.
                following = left[others[need]]
                step = max(1, min(MAX_ELEMENTS, following // SPREAD_FRACTION))
                count = min(count, min(left[i] for i in picked) - following + step)
        return tuple(sorted(chosen)), count

    def next_set(self) -> tuple[int, ...]:
        """The set ``plan`` proposes now, ignoring the daily use."""
        return self.plan(1)[0]

    def exclude(self, indices: Iterable[int]) -> None:
        self.excluded.update(indices)

    def advance(self) -> None:
        """A round was answered: start the next choice at the following seat."""
        self.turn += 1

    def all_sets(self) -> list[tuple[int, ...]]:
        indices = sorted(h.index for h in self.epoch.holders)
        return list(itertools.combinations(indices, self.epoch.threshold))


HolderFunction = Callable[[Sequence[bytes], Sequence[int]], PartialEvaluation]


def evaluate_in_process(
    epoch: KeyEpoch,
    holders: Mapping[int, HolderFunction],
    blinded_elements: Sequence[bytes],
    planner: HolderPlanner | None = None,
) -> list[bytes]:
    """Run the threshold evaluation against holders that are plain callables.

    Skips holders that raise (any ``SamenloopError``: a refusal, an unreachable
    holder) or return an invalid proof, and retries with the next responding
    set until t honest holders answered.
    """
    planner = planner or HolderPlanner(epoch)
    planner.exclude(h.index for h in epoch.holders if h.index not in holders)
    while True:
        responding_set = planner.next_set()
        partials: dict[int, PartialEvaluation] = {}
        failed: set[int] = set()
        for index in responding_set:
            try:
                partials[index] = holders[index](blinded_elements, responding_set)
            except SamenloopError:  # refused, unreachable, malformed: leave it out
                failed.add(index)
        if failed:
            planner.exclude(failed)
            continue
        try:
            combined = combine(epoch, responding_set, blinded_elements, partials)
        except FaultyHolders as faulty:
            planner.exclude(faulty.indices)
            continue
        planner.advance()
        return combined
