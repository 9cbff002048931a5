"""Where the node's group arithmetic runs, as ``evaluation.tokenise`` sees it.

``Arithmetic`` is what the pipeline asks of it: blind a chunk, check the holders'
proofs and add their evaluations, unblind; each handed over and collected later
(``Outcome.result``), so that an adapter may run it beside the caller.
``IN_PROCESS`` calls ``derive`` and ``threshold`` in the caller's thread; the
daemon's adapter, ``workers.Workers``, runs the same in slices over processes.
Sans-IO.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from samenloop.node.tokens import derive as tokens
from samenloop.node.tokens import threshold
from samenloop.node.tokens.derive import TokenDomain, Tokenisable
from samenloop.node.tokens.threshold import KeyEpoch, PartialEvaluation

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)


class Outcome(Protocol[_T_co]):
    """A result there already, or still being computed: ``result`` waits for it."""

    def result(self) -> _T_co: ...


class Arithmetic(Protocol):
    """Where the node's group arithmetic runs: here (``IN_PROCESS``), or in slices over
    worker processes (``workers.Workers``, the daemon's adapter). The same results.

    ``parallel``: whether work handed over runs beside the caller; only then does the
    node ask a request before the proofs of the one before are checked.
    """

    @property
    def parallel(self) -> bool: ...

    def start_later(
        self, domain: TokenDomain, identifiers: Sequence[Tokenisable], /
    ) -> Outcome[tokens.PendingTokens]:
        """``derive.start``: blind every identifier."""
        ...

    def finish_later(
        self, pending: tokens.PendingTokens, evaluated: Sequence[bytes], /
    ) -> Outcome[list[tokens.TokenKeys]]:
        """``derive.finish_with_proof_keys``: unblind, finalise, derive."""
        ...

    def combine_later(
        self,
        epoch: KeyEpoch,
        responding_set: Sequence[int],
        blinded: Sequence[bytes],
        partials: Mapping[int, PartialEvaluation],
        /,
    ) -> Outcome[list[bytes]]:
        """``threshold.combine``: check every proof, add the evaluations; ``result``
        raises ``FaultyHolders`` as ``combine`` does."""
        ...


@dataclass(frozen=True, slots=True)
class _Ready(Generic[_T]):
    value: _T

    def result(self) -> _T:
        return self.value


class _Lazy(Generic[_T]):
    """Computed when asked for, once (so that an error is raised by ``result``)."""

    def __init__(self, compute: Callable[[], _T]) -> None:
        self._compute = compute

    def result(self) -> _T:
        return self._compute()


class InProcess:
    """The ``Arithmetic`` of this thread: ``derive`` and ``threshold`` called directly."""

    parallel = False

    def start_later(
        self, domain: TokenDomain, identifiers: Sequence[Tokenisable], /
    ) -> _Ready[tokens.PendingTokens]:
        return _Ready(tokens.start(domain, identifiers))

    def finish_later(
        self, pending: tokens.PendingTokens, evaluated: Sequence[bytes], /
    ) -> _Ready[list[tokens.TokenKeys]]:
        return _Ready(tokens.finish_with_proof_keys(pending, evaluated))

    def combine_later(
        self,
        epoch: KeyEpoch,
        responding_set: Sequence[int],
        blinded: Sequence[bytes],
        partials: Mapping[int, PartialEvaluation],
        /,
    ) -> _Lazy[list[bytes]]:
        return _Lazy(lambda: threshold.combine(epoch, responding_set, blinded, partials))


IN_PROCESS = InProcess()
