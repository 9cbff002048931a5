"""A key holder's seats in the epochs it serves: the current one and, while a rotation is
staged, the next (docs/operations.md "Rotating the OPRF key").

``EpochHolders`` keeps one :class:`~samenloop.node.tokens.holder.KeyHolder` per
epoch it holds a share of, and hands each request to the one of the epoch the
request names. It only routes: that holder makes every check of the protocol
(signature first, then the epoch), so a request for an epoch this node holds no
share of, or a retired one, gets the current holder's UNKNOWN_EPOCH refusal,
as before. Each epoch counts its own daily quota: the re-tokenisation under a
staged epoch does not eat the allowance of ordinary imports under the current
one (the node's ``holder_usage`` rows carry the epoch).

``adopt`` follows the covenant: it starts serving a staged epoch whose share
it is given, and stops serving, and reports, epochs the covenant no longer
lists (the caller deletes their shares). Sans-IO apart from what the caller
passes in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime

from google.protobuf.message import DecodeError

from samenloop.node.tokens import threshold
from samenloop.node.tokens.evaluation import Directory
from samenloop.node.tokens.holder import AnsweredRequest, HolderReply, KeyHolder
from samenloop.node.tokens.threshold import KeyEpoch, Share
from samenloop.policies.covenant import Covenant
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.errors import ConfigurationError
from samenloop.v1 import common_pb2, keyholder_pb2

#: A holder's partial evaluation: ``threshold.evaluate_partial`` or the workers' over cores.
EvaluatePartial = Callable[[Share, Sequence[bytes], Sequence[int]], threshold.PartialEvaluation]


class EpochHolders:
    """This node's key-holder seats, one per key epoch it serves; shared by the node's threads.

    ``shares`` maps each epoch to its share and public epoch; the lowest is
    the current one, which answers requests for an epoch not served.
    ``used_today`` holds each epoch's counts of ``today`` per party.
    """

    def __init__(
        self,
        keys: PartyKeys,
        covenant_id: str,
        directory: Directory | Callable[[], Covenant],
        shares: Mapping[int, tuple[Share, KeyEpoch]],
        *,
        used_today: Mapping[int, Mapping[str, int]] | None = None,
        today: date | None = None,
        answered: Iterable[AnsweredRequest] = (),
        daily_quota: int | None = None,
    ) -> None:
        if not shares:
            raise ConfigurationError("a key holder needs the share of an epoch", field="share")
        self._keys = keys
        self._covenant_id = covenant_id
        self._directory = directory
        self._today = today
        self._daily_quota = daily_quota
        self._answered = tuple(answered)
        self._lock = threading.Lock()
        self._stale: Callable[[], str | None] = lambda: None
        self._holders: dict[int, KeyHolder] = {}
        self._shares: dict[int, Share] = {}
        #: What evaluates, in every seat: ``threshold.evaluate_partial``, or a
        #: ``workers.Workers``' over the cores (set by the daemon).
        self._evaluate_partial: EvaluatePartial = threshold.evaluate_partial
        #: Told the shares served whenever a seat is added or dropped (the worker
        #: processes, which hold the shares, start again with them).
        self.on_shares_changed: Callable[[tuple[Share, ...]], None] = lambda shares: None
        for epoch_number, (share, epoch) in sorted(shares.items()):
            self._add(epoch_number, share, epoch, (used_today or {}).get(epoch_number, {}))

    def _add(self, number: int, share: Share, epoch: KeyEpoch, used: Mapping[str, int]) -> None:
        if epoch.epoch != number:
            raise ConfigurationError(
                f"share of epoch {epoch.epoch} given as {number}", field="share"
            )
        holder = KeyHolder(
            self._keys,
            share,
            epoch,
            self._covenant_id,
            self._directory,
            daily_quota=self._daily_quota,
            used_today=used or None,
            today=self._today if used else None,
            answered=self._answered,
        )
        holder.stale = self._stale
        holder.evaluate_partial = self._evaluate_partial
        self._holders[number] = holder
        self._shares[number] = share

    def __repr__(self) -> str:
        return f"EpochHolders(party={self._keys.party!r}, epochs={self.epochs})"

    @property
    def party(self) -> str:
        return self._keys.party

    @property
    def epochs(self) -> tuple[int, ...]:
        with self._lock:
            return tuple(sorted(self._holders))

    @property
    def seats(self) -> tuple[tuple[int, int], ...]:
        """(key epoch, holder index) of every seat served, for the broker's hello."""
        with self._lock:
            return tuple((n, h.index) for n, h in sorted(self._holders.items()))

    def holder(self, epoch: int) -> KeyHolder:
        with self._lock:
            return self._holders[epoch]

    def shares(self) -> tuple[Share, ...]:
        """The shares of the seats served, by epoch."""
        with self._lock:
            return tuple(share for _, share in sorted(self._shares.items()))

    @property
    def evaluate_partial(self) -> EvaluatePartial:
        return self._evaluate_partial

    @evaluate_partial.setter
    def evaluate_partial(self, evaluate: EvaluatePartial) -> None:
        with self._lock:
            self._evaluate_partial = evaluate
            for holder in self._holders.values():
                holder.evaluate_partial = evaluate

    @property
    def stale(self) -> Callable[[], str | None]:
        return self._stale

    @stale.setter
    def stale(self, stale: Callable[[], str | None]) -> None:
        with self._lock:
            self._stale = stale
            for holder in self._holders.values():
                holder.stale = stale

    # --- requests --------------------------------------------------------------------

    def _route(self, signed_request: bytes) -> tuple[int, KeyHolder]:
        """The holder of the epoch the request names (read before any check: the holder
        checks everything, this only picks which share checks it), else the current one."""
        epoch = 0
        try:
            signed = common_pb2.Signed.FromString(signed_request)
            epoch = keyholder_pb2.EvaluationRequest.FromString(signed.body).key_epoch
        except DecodeError:
            pass
        with self._lock:
            if epoch in self._holders:
                return epoch, self._holders[epoch]
            current = min(self._holders)
            return current, self._holders[current]

    def answer(self, signed_request: bytes, *, now: datetime) -> tuple[int, HolderReply]:
        """``KeyHolder.answer`` by the seat of the request's epoch: the epoch that counts
        it (its quota and ``holder_usage`` row) and the decision."""
        epoch, holder = self._route(signed_request)
        return epoch, holder.answer(signed_request, now=now)

    def handle(self, signed_request: bytes, *, now: datetime) -> bytes:
        return self.answer(signed_request, now=now)[1].reply

    def withdraw(self, reply: HolderReply) -> None:
        with self._lock:
            holders = list(self._holders.values())
        for holder in holders:
            if holder.admitted(reply):
                holder.withdraw(reply)
                return

    # --- following the covenant ------------------------------------------------------

    def adopt(
        self, covenant: Covenant, staged_share: Callable[[KeyEpoch], Share | None]
    ) -> tuple[int, ...]:
        """Serve the epochs ``covenant`` lists and this party holds a seat in: add a staged
        epoch whose share ``staged_share`` finds (None: not accepted yet, tried again next
        time), drop the others. Returns the epochs dropped, whose shares the caller deletes.
        The last epoch is never dropped without a successor served: when the covenant lists
        none of this holder's epochs (the new epoch left it out), that seat stays to refuse
        every request UNKNOWN_EPOCH, and is returned once, so that its share goes too."""
        live = {e.epoch: e for e in covenant.live_epochs}
        with self._lock:
            served = set(self._holders)
        for number, plain in live.items():
            if number in served or not any(s.party == self.party for s in plain.holders):
                continue
            epoch = KeyEpoch.of(covenant.id, plain)
            share = staged_share(epoch)
            if share is not None:
                with self._lock:
                    self._add(number, share, epoch, {})
                served.add(number)
                self.on_shares_changed(self.shares())
        retired = tuple(sorted(n for n in served if n not in live))
        with self._lock:
            if retired and len(retired) == len(served):
                newly = tuple(n for n in retired if not self._holders[n].retired)
                for number in newly:
                    self._holders[number].retired = True
                return newly
            for number in retired:
                del self._holders[number]
                del self._shares[number]
        if retired:
            self.on_shares_changed(self.shares())
        return retired
