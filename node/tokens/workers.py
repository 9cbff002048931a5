"""The OPRF's group arithmetic spread over the machine's cores.

Tokenising is CPU-bound: per element the node blinds (a hash to the group and a
scalar multiplication), checks each holder's DLEQ proof (two multiplications per
element and holder for the composites) and unblinds (one more), and each key
holder evaluates (one multiplication) and proves (one more). ``Workers`` does
this work in slices of a batch: in the calling thread when ``workers`` is 1, in
a pool of ``workers`` processes otherwise, created once per daemon (lazily, at the
first batch). It is the daemon's ``evaluation.Arithmetic``: the ``…_later`` calls
hand work to the pool and return at once, so that the node checks one request's
proofs, blinds the next chunk and unblinds the last one while the holders
evaluate the next request.

The pool is an adapter around pure functions over bytes (the ``_…_slice``
functions below): a slice goes out with its elements and comes back with its
results, and the proofs are split by their composites, which are sums over the
elements (``oprf.composites_part``), so every slice is independent and the
results are exactly those of the one-process functions. A slice is at least
``MIN_SLICE`` elements, so that the pickling is small against the arithmetic.

Secrets: the node's blinds go to a worker and back (they must, to unblind
there). A key holder's share goes to each worker once, through the pool's
initializer, never as a task's argument; tasks name the share by its public
commitment. Nothing here logs an element, a blind or a share.

A worker process that dies (killed, out of memory) breaks the pool: the call
is retried once on a new pool, then fails with ``Unavailable`` naming
``workers``; the daemon's loops log it and go on.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Generic, TypeVar, cast

from samenloop.node.tokens import derive, oprf, threshold
from samenloop.node.tokens.derive import PendingTokens, TokenDomain, Tokenisable, TokenKeys
from samenloop.node.tokens.threshold import (
    FaultyHolders,
    KeyEpoch,
    PartialEvaluation,
    Share,
)
from samenloop.policies.config import check_workers
from samenloop.policies.errors import (
    InvalidInput,
    InvalidProof,
    MessageTooLarge,
    Unavailable,
)

logger = logging.getLogger(__name__)

#: The fewest elements worth sending to another process.
MIN_SLICE = 64

_T = TypeVar("_T")
_S = TypeVar("_S")


def slices(count: int, parts: int) -> list[tuple[int, int]]:
    """``[first, end)`` ranges cutting ``count`` elements in at most ``parts`` slices, each
    at least ``MIN_SLICE`` long (but one), as equal as can be."""
    parts = max(1, min(parts, count // MIN_SLICE))
    size, extra = divmod(count, parts)
    out, first = [], 0
    for n in range(parts):
        end = first + size + (1 if n < extra else 0)
        out.append((first, end))
        first = end
    return out


# --- the pure functions a worker runs ---------------------------------------------------

#: The key holder's shares in a worker process, by commitment (set by ``_init``).
_SHARES: dict[bytes, Share] = {}


def _init(shares: Sequence[tuple[int, bytes]]) -> None:
    """The pool's initializer: keep the holder's shares (index, scalar) in this process."""
    _SHARES.clear()
    for index, scalar in shares:
        share = Share(index=index, scalar=scalar)
        _SHARES[share.commitment] = share


def _blind_slice(inputs: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
    """(blind, blinded element) of each OPRF input."""
    return [oprf.blind(x) for x in inputs]


def _finish_slice(
    domain: TokenDomain,
    types: Sequence[str],
    inputs: Sequence[bytes],
    blinds: Sequence[bytes],
    evaluated: Sequence[bytes],
) -> list[TokenKeys]:
    """Unblind, finalise and derive the tokens and hit proof keys of one slice."""
    pending = PendingTokens(domain, tuple(types), tuple(inputs), tuple(blinds), ())
    return derive.finish_with_proof_keys(pending, evaluated)


def _check_slice(
    first: int,
    blinded: Sequence[bytes],
    answers: Sequence[tuple[int, bytes, Sequence[bytes]]],
) -> tuple[dict[int, tuple[bytes, bytes]], set[int], list[bytes]]:
    """For each holder's answer (index, B = its weighted commitment, its evaluations of
    this slice): the slice's part of the proof's composites (M, Z), or the holder as
    faulty when an element is not valid; and the sum of the evaluations when none is."""
    parts: dict[int, tuple[bytes, bytes]] = {}
    faulty: set[int] = set()
    for index, b, evaluated in answers:
        try:
            checked = [
                oprf.deserialize_element(z, field=f"evaluated_elements[{first + j}]")
                for j, z in enumerate(evaluated)
            ]
            m, z = oprf.composites_part(b, blinded, checked, first=first)
        except (InvalidInput, RuntimeError, ValueError):
            faulty.add(index)
            continue
        assert z is not None
        parts[index] = (m, z)
    combined: list[bytes] = []
    if not faulty:
        combined = list(answers[0][2])
        for _, _, evaluated in answers[1:]:
            combined = [oprf.element_add(a, e) for a, e in zip(combined, evaluated, strict=True)]
    return parts, faulty, combined


def _evaluate_slice(
    commitment: bytes, responding_set: Sequence[int], first: int, blinded: Sequence[bytes]
) -> tuple[list[bytes], bytes]:
    """A key holder's weighted evaluations of one slice of (valid) blinded elements, and
    the slice's part of its proof's composite M."""
    share = _SHARES[commitment]
    k = oprf.scalar_mul(threshold.lagrange_coefficient(share.index, responding_set), share.scalar)
    evaluated = [oprf.scalar_mult(k, e) for e in blinded]
    m, _ = oprf.composites_part(
        oprf.scalar_mult_gen(k), blinded, evaluated, first=first, prover=True
    )
    return evaluated, m


def _sum(elements: Iterable[bytes]) -> bytes:
    total: bytes | None = None
    for e in elements:
        total = e if total is None else oprf.element_add(total, e)
    assert total is not None
    return total


# --- the adapter ------------------------------------------------------------------------


class Later(Generic[_T]):
    """A result of the workers, there already or still being computed; ``result`` waits."""

    __slots__ = ("_collect", "_done", "_value")

    def __init__(self, *, value: _T | None = None, collect: Callable[[], _T] | None = None) -> None:
        self._collect = collect
        self._done = collect is None
        self._value = value

    def result(self) -> _T:
        if not self._done:
            assert self._collect is not None
            self._value, self._done, self._collect = self._collect(), True, None
        return cast(_T, self._value)


class Workers:
    """The node's tokenising and a key holder's evaluating, in ``workers`` processes.

    ``shares``: the key holder's shares, handed to each worker process once. With
    ``workers`` 1 nothing is started and every slice runs in the caller's thread.
    Thread-safe: the uplink's work and holder loops share one.
    """

    def __init__(self, workers: int, *, shares: Sequence[Share] = ()) -> None:
        self.workers = check_workers(workers)
        self._shares = tuple((s.index, s.scalar) for s in shares)
        self._commitments = frozenset(s.commitment for s in shares)
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"Workers(workers={self.workers}, shares={len(self._shares)})"

    def set_shares(self, shares: Sequence[Share]) -> None:
        """Hold these shares from now on (a staged epoch's added, a retired one's dropped):
        the running pool, whose processes hold the old ones, is let go, and the next slice
        starts a new one. Until then a share the pool lacks is evaluated here, so no
        answer waits for it."""
        commitments = frozenset(s.commitment for s in shares)
        with self._lock:
            if commitments == self._commitments:
                return
            self._shares = tuple((s.index, s.scalar) for s in shares)
            self._commitments = commitments
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=False)

    @property
    def parallel(self) -> bool:
        """Whether work runs beside the caller (in worker processes)."""
        return self.workers > 1

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pids(self) -> list[int]:
        """The worker processes' ids (for tests and status); empty before the first call."""
        with self._lock:
            pool = self._pool
        processes: Mapping[int, Any] = getattr(pool, "_processes", None) or {}
        return sorted(processes)

    # --- the node's side ----------------------------------------------------------------

    def start(self, domain: TokenDomain, identifiers: Sequence[Tokenisable]) -> PendingTokens:
        """``derive.start``: blind every identifier."""
        return self.start_later(domain, identifiers).result()

    def start_later(
        self, domain: TokenDomain, identifiers: Sequence[Tokenisable]
    ) -> Later[PendingTokens]:
        """``start`` under way in the workers (done at once with one worker): the node
        blinds its next batch while the holders evaluate this one."""
        if not identifiers:
            raise InvalidInput("no identifiers to tokenise", field="identifiers")
        inputs = tuple(derive.oprf_input(i) for i in identifiers)
        types = tuple(str(i.type) for i in identifiers)

        def merge(done: list[list[tuple[bytes, bytes]]]) -> PendingTokens:
            blinded = [pair for part in done for pair in part]
            return PendingTokens(
                domain=domain,
                types=types,
                inputs=inputs,
                blinds=tuple(r for r, _ in blinded),
                blinded_elements=tuple(e for _, e in blinded),
            )

        cuts = slices(len(inputs), self.workers)
        return self._later(_blind_slice, [(inputs[a:b],) for a, b in cuts], merge)

    def finish(self, pending: PendingTokens, evaluated: Sequence[bytes]) -> list[TokenKeys]:
        """``derive.finish_with_proof_keys``: unblind, finalise, derive."""
        return self.finish_later(pending, evaluated).result()

    def finish_later(
        self, pending: PendingTokens, evaluated: Sequence[bytes]
    ) -> Later[list[TokenKeys]]:
        """``finish`` under way in the workers (done at once with one worker): the node
        unblinds a batch while the holders evaluate the next."""
        if len(evaluated) != len(pending.inputs):
            raise InvalidInput("wrong number of evaluated elements", field="evaluated_elements")
        cuts = slices(len(evaluated), self.workers)
        calls = [
            (
                pending.domain,
                pending.types[a:b],
                pending.inputs[a:b],
                pending.blinds[a:b],
                tuple(evaluated[a:b]),
            )
            for a, b in cuts
        ]
        return self._later(_finish_slice, calls, lambda done: [t for part in done for t in part])

    def combine(
        self,
        epoch: KeyEpoch,
        responding_set: Sequence[int],
        blinded: Sequence[bytes],
        partials: Mapping[int, PartialEvaluation],
    ) -> list[bytes]:
        """``threshold.combine``: verify every holder's proof, then add the evaluations.

        Raises ``FaultyHolders`` naming every holder whose answer is wrong.
        """
        return self.combine_later(epoch, responding_set, blinded, partials).result()

    def combine_later(
        self,
        epoch: KeyEpoch,
        responding_set: Sequence[int],
        blinded: Sequence[bytes],
        partials: Mapping[int, PartialEvaluation],
    ) -> Later[list[bytes]]:
        """``combine`` under way in the workers (with one worker: computed when asked for,
        so that ``result`` raises ``FaultyHolders``): the node checks one request's
        proofs while it asks the next."""
        rset = tuple(responding_set)
        if (
            list(rset) != sorted(set(rset))
            or len(rset) != epoch.threshold
            or set(partials) != set(rset)
        ):
            raise InvalidInput(
                "need exactly one answer from each holder in the set", field="partials"
            )
        faulty = {
            i
            for i in rset
            if partials[i].holder_index != i
            or len(partials[i].evaluated_elements) != len(blinded)
            or len(partials[i].proof) != oprf.PROOF_BYTES
        }
        checked = [i for i in rset if i not in faulty]
        weighted = {
            i: oprf.scalar_mult(threshold.lagrange_coefficient(i, rset), epoch.holder(i).commitment)
            for i in checked
        }
        cuts = slices(len(blinded), self.workers)
        calls = [
            (
                a,
                tuple(blinded[a:b]),
                [(i, weighted[i], partials[i].evaluated_elements[a:b]) for i in checked],
            )
            for a, b in cuts
        ]

        def verify(
            done: list[tuple[dict[int, tuple[bytes, bytes]], set[int], list[bytes]]],
        ) -> list[bytes]:
            combined: list[bytes] = []
            for _, bad, part in done:
                faulty.update(bad)
                combined.extend(part)
            for i in checked:
                if i in faulty:
                    continue
                try:
                    oprf.verify_with_composites(
                        oprf.GENERATOR,
                        weighted[i],
                        _sum(parts[i][0] for parts, _, _ in done),
                        _sum(parts[i][1] for parts, _, _ in done),
                        partials[i].proof,
                        field=f"holders[{i}]",
                    )
                except (InvalidProof, InvalidInput):
                    faulty.add(i)
            if faulty:
                raise FaultyHolders(faulty)
            return combined

        return self._later(_check_slice, calls, verify)

    # --- the key holder's side ----------------------------------------------------------

    def evaluate_partial(
        self,
        share: Share,
        blinded: Sequence[bytes],
        responding_set: Sequence[int],
        *,
        r: bytes | None = None,
    ) -> PartialEvaluation:
        """``threshold.evaluate_partial`` (same evaluations, a proof as valid, the very same
        with the same ``r``), the slices in the workers, which hold the share."""
        cuts = slices(len(blinded), self.workers)
        if len(cuts) == 1 or share.commitment not in self._commitments:
            return threshold.evaluate_partial(share, blinded, responding_set, r=r)
        if len(blinded) > threshold.MAX_ELEMENTS:
            raise MessageTooLarge(
                f"{len(blinded)} blinded elements; at most {threshold.MAX_ELEMENTS} per request",
                field="blinded_elements",
            )
        elements = tuple(
            oprf.deserialize_element(b, field=f"blinded_elements[{j}]")
            for j, b in enumerate(blinded)
        )
        rset = tuple(responding_set)
        k = oprf.scalar_mul(threshold.lagrange_coefficient(share.index, rset), share.scalar)
        commitment = share.commitment
        done = self._map(
            _evaluate_slice,
            [(commitment, rset, a, elements[a:b]) for a, b in cuts],
        )
        evaluated = tuple(e for part, _ in done for e in part)
        m = _sum(m for _, m in done)
        proof = oprf.proof_from_composites(
            k, oprf.GENERATOR, oprf.scalar_mult_gen(k), m, oprf.scalar_mult(k, m), r=r
        )
        return PartialEvaluation(
            holder_index=share.index, evaluated_elements=evaluated, proof=proof
        )

    # --- running slices -----------------------------------------------------------------

    def _later(
        self,
        function: Callable[..., _S],
        calls: Sequence[tuple[Any, ...]],
        merge: Callable[[list[_S]], _T],
    ) -> Later[_T]:
        """``merge`` of ``function`` over ``calls``: submitted to the pool now, collected
        by ``Later.result``; with one worker or one call, computed here by ``result``."""
        if self.workers == 1 or len(calls) == 1:
            return Later(collect=lambda: merge([function(*args) for args in calls]))
        pool = self._the_pool()
        try:
            futures = [pool.submit(function, *args) for args in calls]
        except BrokenProcessPool:
            self._discard(pool)
            logger.warning("a crypto worker process died: starting the workers again")
            return Later(value=merge(self._map(function, calls)))

        def collect() -> _T:
            try:
                return merge([f.result() for f in futures])
            except BrokenProcessPool:
                self._discard(pool)
                logger.warning("a crypto worker process died: starting the workers again")
                return merge(self._map(function, calls))

        return Later(collect=collect)

    def _map(self, function: Callable[..., _T], calls: Sequence[tuple[Any, ...]]) -> list[_T]:
        """``function`` over ``calls``, in order: here when there is one call or one worker,
        else in the pool; once more on a new pool when a worker process died."""
        if self.workers == 1 or len(calls) == 1:
            return [function(*args) for args in calls]
        for attempt in (1, 2):
            pool = self._the_pool()
            try:
                futures: list[Future[_T]] = [pool.submit(function, *args) for args in calls]
                return [f.result() for f in futures]
            except BrokenProcessPool:
                self._discard(pool)
                if attempt == 1:
                    logger.warning("a crypto worker process died: starting the workers again")
        raise Unavailable(
            "the crypto worker processes died twice in a row; see the log", field="workers"
        )

    def _the_pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init,
                    initargs=(self._shares,),
                )
            return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)
