"""How a node keeps its covenant current: new versions, covenant timestamps, freshness.

A thin adapter around the sans-IO rules of :mod:`samenloop.policies.trust`
(which versions to accept) and :mod:`samenloop.policies.freshness` (which
timestamps to believe, and whether the node is fresh), with the node's store
and the broker as the uplink reaches it:

* **Versions** reach the node in its mailbox (``covenant_update``) or are
  fetched: when ``Hello`` or a timestamp names a version newer than the one
  held, the node asks the broker (``GetCovenant``) for each version after its
  own in turn and verifies each against the one before, as any update. An
  accepted version is stored before it is adopted (its attribute key joins
  the ring first); a refused one is recorded and skipped. The broker's word
  about versions only makes the node ask: it trusts what the signers signed.
* **Timestamps** come with ``Hello``, ``GetCovenant`` and in the mailbox
  (``covenant_timestamp``). The newest verified one is stored (with the
  mailbox cursor, in one transaction) and verified again at start.
* **Freshness**: while no unexpired timestamp vouches for the version held,
  :meth:`CovenantKeeper.require` raises ``CovenantStale``: the node seals and
  releases nothing new (no token entries, no granted disclosures, no case
  messages, picture contributions or requests) until one arrives, and then
  goes on by itself. Each change between fresh and stale is logged once (a
  warning when it goes stale, with why) and audited (``covenant_freshness``), as
  is a start that finds the node stale.

Log lines carry versions, times and reasons, never covenant bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from samenloop.node.daemon.covenants import CovenantStore
from samenloop.policies import covenant as covenant_model
from samenloop.policies.errors import CovenantStale, SamenloopError, Unavailable
from samenloop.policies.freshness import CovenantTimestamp, Freshness, FreshnessState, Observed
from samenloop.policies.trust import HeldCovenant, SignedCovenant
from samenloop.v1 import common_pb2

__all__ = ["CovenantKeeper", "Fetched", "learn_attribute_key"]

log = structlog.get_logger(__name__)

#: Versions fetched in one catch-up at most (a broker naming a far-off version cannot
#: keep the node fetching for ever; the next Hello goes on from there).
MAX_FETCHES = 64


@dataclass(frozen=True, slots=True)
class Fetched:
    """What ``GetCovenant`` returned for one version: the signed covenant, and its newest
    timestamp if the broker holds one."""

    covenant: common_pb2.SignedCovenant
    timestamp: common_pb2.Signed | None


#: Asks the broker for one covenant version; raises ``SamenloopError`` if it cannot.
Fetch = Callable[[int], Fetched]


def learn_attribute_key(
    attribute_keys: covenant_model.AttributeKeyRing, covenant: covenant_model.Covenant
) -> None:
    """Add the attribute key ``covenant`` deals to this party to its ring. A box that does
    not open is logged (never its bytes) and skipped: boxes of that version stay unread,
    and nothing is sealed until a version that opens is held (``current`` raises)."""
    try:
        attribute_keys.learn(covenant)
    except SamenloopError as error:
        log.error(
            "the attribute key dealt to this party does not open",
            covenant_version=covenant.version,
            key_version=covenant.attribute_key_version,
            field=error.field,
        )


def _no_fetch(version: int) -> Fetched:
    raise Unavailable(f"no broker to fetch version {version} from", field="version")


class CovenantKeeper:
    """The node's covenant versions and timestamps, and whether it is fresh."""

    def __init__(
        self,
        *,
        party: str,
        held: HeldCovenant,
        store: CovenantStore,
        attribute_keys: covenant_model.AttributeKeyRing,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        fetch: Fetch = _no_fetch,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        """``fetch`` asks the broker for a version (the uplink's ``GetCovenant``); ``wake``
        tells the uplink that the covenant or the freshness changed."""
        self._party = party
        self._held = held
        self._store = store
        self.attribute_keys = attribute_keys
        self._clock = clock
        self.fetch = fetch
        self.wake = wake
        self._state = FreshnessState()
        # One change at a time: the mailbox and work threads both adopt versions and
        # timestamps (a timestamp may fetch versions, hence re-entrant).
        self._lock = threading.RLock()
        #: Whether the node was fresh when last checked (None: not checked yet).
        self._was_fresh: bool | None = None

    def _now(self) -> datetime:
        return self._clock().astimezone(UTC)

    # --- at start ------------------------------------------------------------------

    def load(self) -> None:
        """Verify the stored timestamp again against the version held, and check freshness
        (a timestamp that no longer verifies is dropped, loudly: the node is then stale)."""
        stored = self._store.covenant_timestamp()
        if stored is not None:
            with self._lock:
                try:
                    self._observe(CovenantTimestamp.parse(stored), self._now())
                except SamenloopError as error:
                    log.error("the stored covenant timestamp does not verify", reason=error.reason)
        self.check()

    # --- versions ------------------------------------------------------------------

    def covenant_update(self, cursor: int, message: common_pb2.SignedCovenant) -> None:
        """A version from the mailbox: verified against the one held, stored with the
        cursor, then adopted; a refused one is recorded and skipped, the held one stays."""
        with self._lock:
            self._adopt(message, cursor)

    def _adopt(
        self, message: common_pb2.SignedCovenant, cursor: int | None
    ) -> covenant_model.Covenant | None:
        """Verify, store and adopt one version; the covenant now held if it changed, else
        None (the version held again, or refused: recorded when it came in the mailbox)."""
        now = self._now()
        try:
            signed = SignedCovenant.from_proto(message)
            covenant = self._held.verify(signed, now=now)
        except SamenloopError as error:
            log.warning(
                "covenant update refused", cursor=cursor, reason=error.reason, why=error.message
            )
            if cursor is not None:
                self._store.reject_covenant(cursor, error.reason, now=now)
            return None
        if covenant is None:  # the version held, again
            if cursor is not None:
                self._store.advance_cursor(cursor)
            return None
        self._store.accept_covenant(
            cursor, covenant.version, signed.body, message.SerializeToString(), now=now
        )
        learn_attribute_key(self.attribute_keys, covenant)  # before it is held: no gap
        self._held.update(signed, now=now)
        log.info("covenant updated", version=covenant.version, fetched=cursor is None)
        if not covenant.is_party(self._party):
            log.error("the new covenant version does not list this party", version=covenant.version)
        self.check()
        self.wake()
        return covenant

    def catch_up(self, version: int) -> None:
        """Fetch and adopt every version after the one held up to ``version``, one by one,
        each verified against the one before; stops at the first that cannot be fetched
        or is refused (the next ``Hello`` tries again). Timestamps that come with them are
        observed as they arrive."""
        with self._lock:
            for _ in range(MAX_FETCHES):
                held = self._held().version
                if held >= version:
                    return
                try:
                    fetched = self.fetch(held + 1)
                except SamenloopError as error:
                    log.warning(
                        "a newer covenant version could not be fetched",
                        version=held + 1,
                        announced=version,
                        reason=error.reason,
                    )
                    return
                if self._adopt(fetched.covenant, None) is None:
                    return
                if fetched.timestamp is not None:
                    self._timestamp(fetched.timestamp, None, fetch=False)

    def hello(self, version: int, timestamp: common_pb2.Signed | None) -> None:
        """What the broker said at ``Hello``: its version (fetched if newer) and its newest
        timestamp for it."""
        if version > self._held().version:
            self.catch_up(version)
        if timestamp is not None:
            self.timestamp(timestamp, cursor=None)

    # --- timestamps ----------------------------------------------------------------

    def timestamp(self, message: common_pb2.Signed, *, cursor: int | None) -> None:
        """A covenant timestamp from the broker (``cursor``: its mailbox item, recorded as
        processed with it). One for a newer version fetches that version first; a refused
        one is logged and skipped."""
        with self._lock:
            self._timestamp(message, cursor, fetch=True)

    def _timestamp(self, message: common_pb2.Signed, cursor: int | None, *, fetch: bool) -> None:
        now = self._now()
        try:
            stamp = CovenantTimestamp.parse(message)
            observed = self._observe(stamp, now)
            if observed is Observed.ANNOUNCES and fetch:
                self.catch_up(stamp.version)
                observed = self._observe(stamp, now)
        except SamenloopError as error:
            log.warning("covenant timestamp refused", cursor=cursor, reason=error.reason)
            observed = None
        if observed is Observed.NEWER:
            self._store.keep_timestamp(
                stamp.signed,
                version=stamp.version,
                issued_at=stamp.issued_at,
                expires_at=stamp.expires_at,
                cursor=cursor,
                now=now,
            )
            log.info(
                "covenant timestamp taken",
                version=stamp.version,
                expires_at=stamp.expires_at.isoformat(),
            )
            self.check()
            return
        if observed is Observed.ANNOUNCES:
            log.warning(
                "a timestamp names a version the broker did not give", version=stamp.version
            )
        if cursor is not None:
            self._store.advance_cursor(cursor)

    def _observe(self, stamp: CovenantTimestamp, now: datetime) -> Observed:
        return self._state.observe(stamp, self._held(), self._held.signed.body, now=now)

    # --- freshness -----------------------------------------------------------------

    def check(self) -> Freshness:
        """Whether the node is fresh now; a change since the last check is logged (once)
        and audited, and wakes the uplink."""
        now = self._now()
        with self._lock:
            freshness = self._state.check(self._held(), self._held.signed.body, now=now)
            changed = freshness.fresh is not self._was_fresh
            first = self._was_fresh is None
            self._was_fresh = freshness.fresh
            if not changed:
                return freshness
            if freshness.fresh:
                log.info(
                    "covenant confirmed current: sealing and releasing go on",
                    version=freshness.version,
                    until=freshness.until.isoformat() if freshness.until else None,
                )
            elif first:  # at start, before the broker was asked: it may well pass one on
                log.info("waiting for a covenant timestamp", version=freshness.version)
            else:
                log.warning(
                    "covenant not confirmed current: nothing is sealed or released",
                    version=freshness.version,
                    why=freshness.reason,
                )
            # Audited: every change, and a start that finds the node stale (it may have been
            # fresh when it stopped); a start that finds it fresh changes nothing on record.
            if not (first and freshness.fresh):
                self._store.note_freshness(
                    fresh=freshness.fresh,
                    version=freshness.version,
                    until=freshness.until,
                    now=now,
                )
        self.wake()
        return freshness

    def require(self) -> None:
        """``CovenantStale`` (saying why) unless the node is fresh: called before anything
        is sealed to another party or released."""
        freshness = self.check()
        if not freshness.fresh:
            raise CovenantStale(freshness.reason, field="covenant")

    def stale_reason(self) -> str | None:
        """Why the node is stale now, or None while it is fresh."""
        freshness = self.check()
        return None if freshness.fresh else freshness.reason
