"""The node's connection to its broker: the only network traffic a node starts.

Three loops, each in its own thread, each reconnecting with backoff when the
broker is down (the node keeps working offline: signals are stored, the
outbox waits, nothing is lost):

* **work**: tokenise pending identifiers through the key holders (``Evaluate``
  relay; the planner keeps what each holder still allows this party today and
  spreads the requests, and when the holders are out of reach or the day's
  quota is used up, tokenising backs off while the sending goes on), store the
  tokens, their hit proof keys (kept on the node) and their outbox batch in one
  transaction, then send
  the outbox in order (``SubmitTokens`` / ``WithdrawTokens``) and mark each
  batch acknowledged only after the broker's answer. A batch resent after a
  crash carries the same client batch id, so the broker counts it once.
  A batch the broker refuses for one of the covenant's submission quotas stays
  in the outbox, and the outbox waits (in order: a withdrawal must not overtake
  the submission it withdraws) until the next UTC day or ``QUOTA_RETRY``.
  Sealed envelopes (disclosure requests and answers) wait in their own durable
  outbox and go to ``SendEnvelope`` under their message id, so a resend is
  delivered once. One the broker refuses for an envelope quota stays in the
  outbox: for the sender's daily quotas every envelope waits (until the next
  UTC day or ``QUOTA_RETRY``); for a recipient whose mailbox is full, the
  envelopes to that recipient wait ``QUOTA_RETRY``, in order, and the others
  go on.
* **mailbox**: stream the mailbox from the last processed cursor; verify each
  hit notice's broker signature before storing it (with the cursor, in one
  transaction), then acknowledge the cursor to the broker. Envelopes go to the
  :class:`~samenloop.node.disclosure.desk.DisclosureDesk` by the context of the
  signed message inside; covenant updates and covenant timestamps go to the
  :class:`~samenloop.node.daemon.covenant_keeper.CovenantKeeper`, which verifies an
  update against the held version (``HeldCovenant``: threshold, version,
  validity) and stores it before it is adopted (a refused one is recorded and
  skipped: a node does not trust the broker), and keeps the newest verified
  timestamp. An adopted version's attribute key joins the node's
  ``AttributeKeyRing`` at once: categories are sealed under it from then on.
  ``Hello`` reports the broker's version and newest timestamp: a newer version
  is fetched (``GetCovenant``, version by version) and verified before the
  work goes on.
  A ``SetAsideItem`` (the broker could not deliver the item at that cursor: too
  large) is recorded in the audit log and acknowledged, so the node neither
  stalls on it nor misses it silently.
* **holder** (key holders only): keep a ``HolderChannel`` open and answer the
  evaluation requests the broker relays, with ``KeyHolder.answer``; each
  evaluation is counted and entered in the replay cache in one transaction
  that commits before the answer is sent. Refusals, requests answered again
  and relayed bytes that name no requester are not written one by one: they
  are summed per (requester or ``UNVERIFIED``, outcome, day) in a ``Tally``
  (``holder_events``), written at once after a quiet minute and else at most
  once a minute, by the sweep and as the node stops — so a partner or a
  broker that floods a holder with requests it refuses costs it a bounded
  number of audit entries and writes, never one per request.

Every component reads the covenant through the ``HeldCovenant`` on each use,
so an accepted update takes effect at once. If the version held no longer
lists this node's party, the work loop stops submitting and says so in the
status (the broker refuses the party anyway). While no unexpired covenant
timestamp vouches for the version held (the node is stale), nothing new is
tokenised and sealed, and the desks seal nothing to another party but
refusals; what the outbox holds was sealed while fresh and still goes out.

Over 800 lines: the three loops share one connection, one backoff and one wake-up; apart,
each would reach into the others' state.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import grpc
import structlog

from samenloop.node.cases.desk import CaseDesk
from samenloop.node.daemon.api_token import Tally
from samenloop.node.daemon.covenant_keeper import CovenantKeeper, Fetched, learn_attribute_key
from samenloop.node.daemon.failover import BrokerSwitch
from samenloop.node.daemon.metrics import MAILBOX_KINDS, NodeMetrics, reason_label
from samenloop.node.daemon.repositories import Repositories
from samenloop.node.disclosure.desk import DisclosureDesk
from samenloop.node.identifiers import person_hits
from samenloop.node.network.desk import NetworkDesk
from samenloop.node.picture.desk import PictureDesk
from samenloop.node.signals.models import BatchKind, HitKind
from samenloop.node.signals.notices import verify_hit_notice
from samenloop.node.signals.store import OutboxBatch, PendingIdentifier
from samenloop.node.tokens import derive as tokens
from samenloop.node.tokens import evaluation, threshold
from samenloop.node.tokens.evaluation import RefusalReason
from samenloop.node.tokens.holder import UNVERIFIED, HolderEvent, HolderReply, KeyHolder
from samenloop.node.tokens.holders import EpochHolders
from samenloop.node.tokens.store import TokenStore
from samenloop.node.tokens.workers import Workers
from samenloop.policies import covenant as covenant_model
from samenloop.policies import rules
from samenloop.policies.crypto import PartyKeys, SignatureContext
from samenloop.policies.errors import (
    CovenantStale,
    NotEnoughHolders,
    NotFound,
    Replay,
    SamenloopError,
    Unavailable,
)
from samenloop.policies.rpc import error_from_rpc
from samenloop.policies.trust import HeldCovenant
from samenloop.v1 import broker_pb2, broker_pb2_grpc, common_pb2

__all__ = [
    "Uplink",
    "UplinkStatus",
    "broker_channel",
    "learn_attribute_key",
    "record_answer",
    "verify_hit_notice",
]

log = structlog.get_logger(__name__)

SOFTWARE = "samenloop 0.1.0"
MAX_ELEMENTS: int = common_pb2.LIMITS_MAX_BLINDED_ELEMENTS_PER_REQUEST
TOKENISE_CHUNK = 5 * MAX_ELEMENTS
IDLE_SECONDS = 1.0
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 5.0
CALL_TIMEOUT = 30.0
#: How long the outbox waits after the broker refused a batch for a quota of entries
#: held (the broker's own expiry sweep may free room); a daily quota waits for the next
#: UTC day, or this, whichever comes first.
QUOTA_RETRY = timedelta(minutes=10)
QUOTA_ERROR = "broker quota reached"
#: How long a restored node waits before it asks for a resync again, when the broker still
#: holds an earlier one unread.
RESYNC_RETRY_SECONDS = 5.0
#: The broker's quotas that count per UTC day: a refusal for one waits for the next day
#: (or ``QUOTA_RETRY``, whichever comes first).
_DAILY_QUOTAS = frozenset(
    {
        "quota.token_entries_per_day",
        "quota.hit_notice_bytes_per_day",
        "quota.envelopes_per_day",
        "quota.envelope_bytes_per_day",
    }
)
#: The payload kinds a SetAsideItem may name; anything else is recorded as "unknown".
_PAYLOAD_KINDS = frozenset({"hit_notice", "envelope", "covenant_update", "covenant_timestamp"})
_MAX_INT64 = 2**63 - 1

#: Status codes that mean "the broker is not reachable now": wait and retry.
TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)

_KINDS = {
    broker_pb2.HIT_NOTICE_KIND_NEW: HitKind.NEW,
    broker_pb2.HIT_NOTICE_KIND_GROWN: HitKind.GROWN,
    broker_pb2.HIT_NOTICE_KIND_SHRUNK: HitKind.SHRUNK,
    broker_pb2.HIT_NOTICE_KIND_CLOSED: HitKind.CLOSED,
    broker_pb2.HIT_NOTICE_KIND_UPDATED: HitKind.UPDATED,
}


def broker_channel(
    address: str, *, ca_certificate: bytes, private_key: bytes, certificate: bytes
) -> grpc.Channel:
    """An mTLS channel to the broker with the party's own certificate."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_certificate, private_key=private_key, certificate_chain=certificate
    )
    return grpc.secure_channel(
        address,
        credentials,
        options=[
            ("grpc.max_receive_message_length", common_pb2.LIMITS_MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", common_pb2.LIMITS_MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 5_000),
        ],
    )


@dataclass
class UplinkStatus:
    """What ``GetStatus`` reports about the broker connection."""

    connected: bool = False
    last_error: str = ""
    last_contact: datetime | None = None
    batches_sent: int = 0
    notices_accepted: int = 0
    envelopes_sent: int = 0
    holder_channel_open: bool = False
    #: The broker address the uplink dials now (one of ``node.toml: brokers``).
    broker_address: str = ""
    #: False once the covenant held no longer lists this node's party.
    in_covenant: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def update(self, **values: object) -> None:
        with self.lock:
            for name, value in values.items():
                setattr(self, name, value)


class Backoff:
    """Exponential backoff between reconnects, reset after a success.

    ``wait`` sleeps it; ``defer`` only marks the work not ``due`` until then,
    so that a loop can go on with its other work meanwhile.
    """

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._delay = BACKOFF_FIRST
        self._due = 0.0

    def wait(self) -> None:
        self._stop.wait(self._delay)
        self._delay = min(self._delay * 2, BACKOFF_MAX)

    def defer(self) -> None:
        self._due = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, BACKOFF_MAX)

    @property
    def due(self) -> bool:
        return time.monotonic() >= self._due

    def reset(self) -> None:
        self._delay = BACKOFF_FIRST
        self._due = 0.0


class Uplink:
    """Runs the work, mailbox and holder loops against one broker channel."""

    def __init__(
        self,
        *,
        party: str,
        channel: grpc.Channel | BrokerSwitch,
        covenant: HeldCovenant,
        keys: PartyKeys,
        repositories: Repositories,
        attribute_keys: covenant_model.AttributeKeyRing,
        holder: EpochHolders | None = None,
        holder_shares: Callable[[threshold.KeyEpoch], threshold.Share | None] | None = None,
        retire_share: Callable[[int, int], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_hit: Callable[[], None] = lambda: None,
        work_dir: Path | None = None,
        min_disclosure_score: float = 0.0,
        metrics: NodeMetrics | None = None,
        workers: Workers | None = None,
    ) -> None:
        self._party = party
        #: The processes that blind, check proofs and unblind (and evaluate, for a holder);
        #: closed with the uplink.
        self.workers = workers if workers is not None else Workers(1)
        # Where the next responding set starts among the holders (``HolderPlanner.turn``):
        # at random, so that the nodes of a covenant do not all start with the same ones.
        self._holder_turn = secrets.randbelow(threshold.MAX_HOLDERS)
        #: The broker replicas and the one in use (one broker: a switch of one address).
        self.brokers = channel if isinstance(channel, BrokerSwitch) else BrokerSwitch.of(channel)
        #: The counters the loops increment (served when ``metrics_listen`` is set).
        self.metrics = metrics or NodeMetrics()
        self._covenant = covenant
        self._keys = keys
        self._repositories = repositories
        self._signals = repositories.signals
        self._shared = repositories.shared
        #: Every attribute key version this party was dealt; updates add theirs as they arrive.
        self.attribute_keys = attribute_keys
        self._holder = holder
        #: Finds the accepted share of a staged epoch, and deletes a retired one (key holders).
        self._holder_shares = holder_shares
        self._retire_share = retire_share
        self._clock = clock
        #: What the holder refused or answered again, summed for the audit log.
        self.holder_events: Tally[HolderEvent] = Tally(
            lambda counts, now: repositories.tokens.count_holder_events(counts, now=now), clock
        )
        self._on_hit = on_hit
        self._epoch_of: tuple[int, threshold.KeyEpoch] | None = None
        self._use_of: tuple[int, threshold.DailyUse] | None = None
        #: The staged key epoch and what its holders still evaluate today (a rotation).
        self._staged_of: tuple[int, threshold.KeyEpoch, threshold.DailyUse] | None = None
        #: The key epoch and staging this node's tokens last followed (see _follow_rotation).
        self._rotation_seen: tuple[int, int | None] | None = None
        self.wake = threading.Event()
        #: New versions and covenant timestamps, and whether the node is fresh.
        self.covenant_keeper = CovenantKeeper(
            party=party,
            held=covenant,
            store=repositories.covenants,
            attribute_keys=attribute_keys,
            clock=clock,
            fetch=self._fetch_covenant,
            wake=self.wake.set,
        )
        stale = self.covenant_keeper.stale_reason
        if holder is not None:  # a stale holder evaluates for nobody (COVENANT_STALE)
            holder.stale = stale
        self.disclosures = DisclosureDesk(
            keys=keys,
            covenant=covenant,
            store=repositories.disclosures,
            clock=clock,
            wake=self.wake.set,
            stale=stale,
            min_person_score=min_disclosure_score,
        )
        self.cases = CaseDesk(
            keys=keys,
            covenant=covenant,
            store=repositories.cases,
            clock=clock,
            wake=self.wake.set,
            stale=stale,
        )
        self.disclosures.handlers[SignatureContext.CASE_MESSAGE] = self.cases.receive
        self.pictures = PictureDesk(
            keys=keys,
            covenant=covenant,
            store=repositories.picture,
            clock=clock,
            wake=self.wake.set,
            stale=stale,
            work_dir=work_dir,
        )
        self.pictures.register(self.disclosures.handlers)
        self.network = NetworkDesk(
            keys=keys,
            covenant=covenant,
            store=repositories.network,
            feed_seq=repositories.signals.last_feed_seq,
            hit=repositories.signals.hit,
            clock=clock,
            wake=self.wake.set,
            stale=stale,
        )
        self.disclosures.handlers[SignatureContext.NETWORK_LINK] = self.network.receive
        self.status = UplinkStatus(broker_address=self.brokers.address)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._calls: set[grpc.Call] = set()
        self._calls_lock = threading.Lock()
        #: Since when (monotonic) the broker is unreachable, and how many calls failed: an
        #: outage is logged as one warning when it starts and one line when it ends.
        self._outage_lock = threading.Lock()
        #: Another loop lost the broker: the work loop says hello again.
        self._hello_again = threading.Event()
        self._down_since: float | None = None
        self._failed_calls = 0
        #: The outbox waits until then: the broker refused a batch for a quota.
        self._outbox_waits_until: datetime | None = None
        #: Envelopes wait until then: the broker refused one for the sender's daily quota.
        self._envelopes_wait_until: datetime | None = None
        #: Envelopes to these recipients wait until then: their mailboxes were full.
        self._recipients_wait_until: dict[str, datetime] = {}
        #: Restored from a backup: ask the broker to resend the latest hit notices
        #: (``ResyncHits``) after the next hello, then catch up to the head it answered.
        self._resync_due = False
        self._resync_head: int | None = None
        self._resync_not_before = 0.0
        #: The holder channel open now, and whether it is being ended on purpose: a new
        #: covenant version changed the key epochs this node holds seats in (see
        #: ``_follow_holder_seats``); the covenant version whose seats were compared last.
        self._holder_call: grpc.Call | None = None
        self._reseat = threading.Event()
        self._seats_checked = 0

    @property
    def _broker(self) -> broker_pb2_grpc.BrokerStub:
        """The stub of the broker address in use now."""
        return self.brokers.stub()

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        feed = self._signals.feed_state()
        if feed.catching_up:
            self._resync_due = feed.resync_head is None
            self._resync_head = feed.resync_head
            self._caught_up(self._shared.mailbox_cursor())
        self._seats_checked = self._covenant().version  # the holder loop adopts these
        loops: list[tuple[str, Callable[[], None]]] = [
            ("uplink-work", self._work_loop),
            ("uplink-mailbox", self._mailbox_loop),
        ]
        if self._holder is not None:
            loops.append(("uplink-holder", self._holder_loop))
        for name, target in loops:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.wake.set()
        with self._calls_lock:
            for call in list(self._calls):
                cast(Any, call).cancel()  # grpc's stubs leave Call.cancel untyped
        for thread in self._threads:
            thread.join(timeout)
        self.holder_events.flush()
        self.workers.close()

    def _track(self, call: grpc.Call) -> None:
        with self._calls_lock:
            self._calls.add(call)

    def _untrack(self, call: grpc.Call) -> None:
        with self._calls_lock:
            self._calls.discard(call)

    def _crashed(self, where: str, error: Exception) -> None:
        """An error no loop expects: say where (never what a message held), keep the loop
        alive, and try again after the backoff — an item that keeps failing is retried,
        not dropped, so that nothing acknowledged is lost."""
        self.status.update(last_error=f"{where}: {type(error).__name__}")
        log.error("uplink loop error", where=where, error=type(error).__name__, exc_info=True)

    def _failed(self, where: str, error: Exception, index: int) -> None:
        """A loop lost the broker at address ``index``: say so, and on ``UNAVAILABLE`` move on
        to the next broker address (once, however many loops saw it)."""
        if isinstance(error, grpc.Call):
            reason = f"{error.code().name}: {error.details()}"
            code = error.code().name
        else:
            reason = f"{type(error).__name__}: {error}"
            code = "UNKNOWN"
        self.metrics.broker_failures.labels(where, code).inc()
        self.status.update(connected=False, last_error=f"{where}: {reason}")
        if self._stop.is_set():
            return
        unavailable = isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.UNAVAILABLE
        if unavailable and self.brokers.unavailable(index):
            self.status.update(broker_address=self.brokers.address)
        if where != "work":
            self._hello_again.set()
            self.wake.set()
        with self._outage_lock:
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
                self._failed_calls = 0
            self._failed_calls += 1
        if first:  # one line an operator can alert on; the retries are debug
            log.warning(
                "broker unreachable: retrying with backoff",
                where=where,
                reason=reason,
                backoff_max_seconds=BACKOFF_MAX,
            )
        else:
            log.debug("broker call failed", where=where, reason=reason)

    def _reachable(self) -> None:
        """The broker answered (a hello, a mailbox event, a holder message): the node is
        connected, and an outage, if one was logged, is over. Any loop's answer counts: an
        idle work loop makes no call that would fail, so after a broker restart the
        mailbox stream may be the first to hear from it."""
        if not self.status.connected:
            self.status.update(connected=True)
        if self._down_since is None:  # the common case, without the lock
            return
        with self._outage_lock:
            if self._down_since is None:
                return
            seconds = time.monotonic() - self._down_since
            failed, self._down_since = self._failed_calls, None
        log.info("broker reachable again", after_seconds=round(seconds, 1), failed_calls=failed)

    # --- work: tokenise and send ------------------------------------------------------------

    def _work_loop(self) -> None:
        backoff = Backoff(self._stop)
        tokenising = Backoff(self._stop)
        restating = Backoff(self._stop)
        hello_done = False
        while not self._stop.is_set():
            index = self.brokers.index
            try:
                if not hello_done or self._hello_again.is_set():
                    # Also after another loop lost the broker: an idle work loop makes no
                    # call that would fail, and a broker that restarted gets a hello (the
                    # covenant version checked, the node connected again) all the same.
                    self._hello_again.clear()
                    self._hello()
                    hello_done = True
                if self._resync_due:
                    self._resync()
                if not self._still_a_party():
                    self.wake.wait(IDLE_SECONDS)
                    self.wake.clear()
                    continue
                busy = False
                self._follow_rotation()
                self._follow_holder_seats()
                # Stale: nothing new is sealed (the status and the log say why, once).
                if tokenising.due and self.covenant_keeper.check().fresh:
                    try:
                        busy = self._tokenise_some()
                        tokenising.reset()
                    except CovenantStale:  # went stale between the check and the sealing
                        tokenising.defer()
                    except NotEnoughHolders as error:
                        # Holders offline or the quota used up today: try again later, with
                        # all of them; what is tokenised and the envelopes still go out.
                        self.status.update(last_error=f"tokenise: {type(error).__name__}: {error}")
                        log.info("tokenising held back", reason=str(error))
                        tokenising.defer()
                # A rotation's re-tokenisation has its own holders' seats and allowance, and
                # its own backoff: it never holds back ordinary imports.
                if restating.due and self.covenant_keeper.check().fresh:
                    try:
                        busy = self._restate_some() or busy
                        restating.reset()
                    except CovenantStale:
                        restating.defer()
                    except NotEnoughHolders as error:
                        log.info("re-tokenising held back", reason=str(error))
                        restating.defer()
                busy = self._send_outbox() or busy
                # The links this node's signals make among its hits, once the feed moved.
                busy = self.network.tick() or busy
                busy = self._send_envelopes() or busy
                backoff.reset()
                if not busy:
                    self.wake.wait(IDLE_SECONDS)
                    self.wake.clear()
            except grpc.RpcError as error:
                self._failed("work", error, index)
                hello_done = False
                backoff.wait()
            except Exception as error:  # a bug or a database outage: keep serving
                self._crashed("work", error)
                hello_done = False
                backoff.wait()

    def _still_a_party(self) -> bool:
        """Whether the covenant held lists this node; if not, stop submitting and say so."""
        covenant = self._covenant()
        if covenant.is_party(self._party):
            if not self.status.in_covenant:
                self.status.update(in_covenant=True, last_error="")
            return True
        if self.status.in_covenant:
            log.error(
                "this party is not in the covenant held: submitting stopped",
                covenant_version=covenant.version,
            )
        self.status.update(
            in_covenant=False,
            last_error=f"covenant version {covenant.version} no longer lists {self._party}: "
            "nothing is submitted",
        )
        return False

    def _key_epoch(self, covenant: covenant_model.Covenant) -> threshold.KeyEpoch:
        """The key epoch of the covenant held, rebuilt only when the version changes."""
        if self._epoch_of is None or self._epoch_of[0] != covenant.version:
            self._epoch_of = (covenant.version, threshold.KeyEpoch.from_covenant(covenant))
        return self._epoch_of[1]

    def _daily_use(
        self, covenant: covenant_model.Covenant, epoch: threshold.KeyEpoch
    ) -> threshold.DailyUse:
        """What each holder still evaluates for this node today, kept across tokenise calls
        (so the planner spreads the load) and started afresh with each covenant version."""
        if self._use_of is None or self._use_of[0] != covenant.version:
            use = evaluation.daily_use(covenant.policy.quotas, epoch, self._party)
            self._use_of = (covenant.version, use)
        return self._use_of[1]

    def _hello(self) -> None:
        covenant = self._covenant()
        answer = self._broker.Hello(
            broker_pb2.HelloRequest(
                party=self._party,
                covenant_id=covenant.id,
                covenant_version=covenant.version,
                software_version=SOFTWARE,
            ),
            timeout=CALL_TIMEOUT,
        )
        # A newer version is fetched and verified, and the broker's newest timestamp taken,
        # before the work goes on.
        self.covenant_keeper.hello(
            answer.covenant_version,
            answer.covenant_timestamp if answer.HasField("covenant_timestamp") else None,
        )
        self.status.update(connected=True, last_error="", last_contact=self._clock())
        self._reachable()
        log.info(
            "connected to broker",
            broker=answer.broker,
            address=self.brokers.address,
            covenant_version=answer.covenant_version,
        )

    def _resync(self) -> None:
        """Restored from a backup: have the broker put the latest notice of every group in
        the mailbox again, and record the head it answered; the mailbox loop ends the
        catching up once it has processed that cursor (:meth:`SignalStore.finish_catch_up`)."""
        if time.monotonic() < self._resync_not_before:
            return
        try:
            answer = self._broker.ResyncHits(broker_pb2.ResyncHitsRequest(), timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            if error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                # An earlier resync (its answer lost) still waits in the mailbox: once the
                # mailbox loop has acknowledged it, the broker takes this one.
                self._resync_not_before = time.monotonic() + RESYNC_RETRY_SECONDS
                log.info("the broker resends hit notices once the last resend is read")
                return
            if error.code() is not grpc.StatusCode.UNIMPLEMENTED:
                raise
            self._resync_due = False  # asked again at the next start
            self.status.update(last_error="the broker cannot resend hit notices (ResyncHits)")
            log.error("restored from a backup, but the broker cannot resend hit notices")
            return
        feed = self._signals.record_resync(answer.head_cursor)
        self._resync_due = False
        self._resync_head = feed.resync_head if feed.catching_up else None
        # The mailbox loop may have passed the head while the answer was on its way.
        self._caught_up(self._shared.mailbox_cursor())
        log.info(
            "restored from a backup: the broker resent the latest hit notices",
            notices=answer.notices,
            caught_up=not feed.catching_up,
        )

    def _caught_up(self, cursor: int) -> None:
        """After a restore: once the mailbox is processed up to the resync head, the hit
        feed holds every notice the application may have seen before."""
        head = self._resync_head
        if head is None or cursor < head:
            return
        self._resync_head = None
        if self._signals.finish_catch_up():
            log.info("restored from a backup: caught up with the broker")

    def _fetch_covenant(self, version: int) -> Fetched:
        """One covenant version from the broker (``GetCovenant``), with its newest timestamp;
        ``NotFound`` or ``Unavailable`` if the broker does not give it."""
        try:
            answer = self._broker.GetCovenant(
                broker_pb2.GetCovenantRequest(version=version), timeout=CALL_TIMEOUT
            )
        except grpc.RpcError as error:
            if isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"the broker holds no version {version}", field="version") from None
            raise Unavailable(f"GetCovenant failed: {type(error).__name__}") from None
        return Fetched(
            covenant=answer.covenant,
            timestamp=(
                answer.covenant_timestamp if answer.HasField("covenant_timestamp") else None
            ),
        )

    def _relay(self, requests: Mapping[int, bytes]) -> dict[int, bytes]:
        response = self._broker.Evaluate(
            broker_pb2.EvaluateRequest(
                requests=[common_pb2.Signed.FromString(r) for r in requests.values()]
            ),
            timeout=CALL_TIMEOUT,
        )
        return {
            reply.holder_index: reply.response.SerializeToString()
            for reply in response.replies
            if reply.HasField("response")
        }

    def _seal_category(self, category: str) -> bytes:
        """Seal under the attribute key of the covenant held now: never an older version,
        which a removed party may hold (if this party's box does not open, this raises and
        the entries wait); and only while the node is fresh (else ``CovenantStale``: a newer
        version with a new key may be withheld)."""
        self.covenant_keeper.require()
        key = self.attribute_keys.current(self._covenant())
        plaintext = common_pb2.MemberAttributes(category=category).SerializeToString()
        nonce, ciphertext = covenant_model.seal_attributes(key, plaintext)
        return common_pb2.SecretBox(
            key_version=key.version, nonce=nonce, ciphertext=ciphertext
        ).SerializeToString()

    def _tokenise_some(self) -> bool:
        now = self._clock()
        covenant = self._covenant()
        matched = [
            kind
            for kind in covenant.policy.identifier_types
            if rules.counts_for_matching(covenant, kind)
        ]
        person = covenant.policy.person_matching
        if person is not None and "person" in matched:
            matched += person.kinds  # the person keys the covenant turns on
        pending = self._signals.pending_identifiers(TOKENISE_CHUNK, now=now, types=matched)
        if not pending:
            return False
        epoch = self._key_epoch(covenant)
        use = self._daily_use(covenant, epoch)
        self._tokenise_and_record(covenant, epoch, use, pending, now, self._signals.record_tokens)
        return True

    def _follow_rotation(self) -> None:
        """Follow the covenant's key epochs in the store: once it switched, each
        identifier's staged token becomes its token (and one without goes back to
        pending); once a staging is withdrawn, the staged tokens go. Done when the
        covenant held changes them (and once at start: it is idempotent)."""
        covenant = self._covenant()
        staged = covenant.next_key_epoch
        seen = (covenant.key_epoch.epoch, None if staged is None else staged.epoch)
        if seen == self._rotation_seen:
            return
        switched, again = self._signals.switch_key_epoch(
            covenant.key_epoch.epoch, None if staged is None else staged.epoch
        )
        if switched or again:
            log.info(
                "key epoch switched: staged tokens made current",
                key_epoch=covenant.key_epoch.epoch,
                switched=switched,
                tokenised_again=again,
            )
        if staged is not None:
            log.info("key epoch staged: re-tokenising", staged_key_epoch=staged.epoch)
        self._rotation_seen = seen

    def _restate_some(self) -> bool:
        """While a rotation is staged: re-tokenise a chunk of identifiers the broker holds
        under the staged epoch and put them in the outbox under their own refs."""
        covenant = self._covenant()
        staged = covenant.next_key_epoch
        if staged is None:
            return False
        now = self._clock()
        current = covenant.key_epoch.epoch
        candidates = self._signals.restate_candidates(
            current, staged.epoch, TOKENISE_CHUNK, now=now
        )
        if not candidates:
            return False
        if self._staged_of is None or self._staged_of[0] != covenant.version:
            epoch = threshold.KeyEpoch.of(covenant.id, staged)
            use = evaluation.daily_use(covenant.policy.quotas, epoch, self._party)
            self._staged_of = (covenant.version, epoch, use)
        _, epoch, use = self._staged_of
        done = self._tokenise_and_record(
            covenant, epoch, use, candidates, now, self._signals.record_restated
        )
        return bool(done)

    def _tokenise_and_record(
        self,
        covenant: covenant_model.Covenant,
        epoch: threshold.KeyEpoch,
        use: threshold.DailyUse | None,
        identifiers: Sequence[PendingIdentifier],
        now: datetime,
        record: Callable[..., object],
    ) -> Sequence[PendingIdentifier]:
        """Tokenise ``identifiers`` under ``epoch`` through the key holders (on the
        workers, the responding sets taking turns) and ``record`` the tokens made, with
        their hit proof keys, in the outbox; answers those tokenised. Fewer than given
        when the holders ran out midway (the quota is used up): the rest wait, and the
        next round says why in the status."""
        planner = threshold.HolderPlanner(epoch, use=use, turn=self._holder_turn)
        made = evaluation.tokenise_with_proof_keys(
            self._keys,
            covenant,
            tokens.TokenDomain(covenant.id, epoch.epoch),
            epoch,
            [p.identifier for p in identifiers],
            self._relay,
            now=now,
            planner=planner,
            workers=self.workers,
        )
        self._holder_turn = planner.turn
        done = identifiers[: len(made)]
        record(
            {p.id: m.token for p, m in zip(done, made, strict=True)},
            epoch.epoch,
            now=self._clock(),
            seal_attributes=self._seal_category,
            proof_keys={p.id: m.hit_proof_key for p, m in zip(done, made, strict=True)},
        )
        self.metrics.tokenised.inc(len(done))
        return done

    def _send_outbox(self) -> bool:
        waits = self._outbox_waits_until
        if waits is not None:
            if self._clock() < waits:
                return False
            self._outbox_waits_until = None
        batches = self._signals.outbox(limit=16)
        for batch in batches:
            if not self._send(batch):
                return False  # the rest waits, in order
            if waits is not None:  # the quota had room again: the status need not say it
                waits = None
                with self.status.lock:
                    if self.status.last_error.startswith(QUOTA_ERROR):
                        self.status.last_error = ""
        return bool(batches)

    def _send(self, batch: OutboxBatch) -> bool:
        """Send one outbox batch; False if the broker refused it for a quota (it stays)."""
        try:
            if batch.kind is BatchKind.SUBMIT:
                request = broker_pb2.SubmitTokensRequest(
                    client_batch_id=batch.client_batch_id, key_epoch=batch.key_epoch or 0
                )
                for entry in batch.entries:
                    sent = request.entries.add(token=entry.token, signal_ref=entry.signal_ref)
                    if entry.expires_at is not None:
                        sent.expires_at.FromDatetime(entry.expires_at)
                    if entry.sealed_attributes is not None:
                        sent.sealed_attributes.ParseFromString(entry.sealed_attributes)
                self._broker.SubmitTokens(request, timeout=CALL_TIMEOUT)
            else:
                self._broker.WithdrawTokens(
                    broker_pb2.WithdrawTokensRequest(
                        client_batch_id=batch.client_batch_id,
                        signal_refs=[e.signal_ref for e in batch.entries],
                    ),
                    timeout=CALL_TIMEOUT,
                )
        except grpc.RpcError as error:
            if isinstance(error, grpc.Call) and error.code() not in TRANSIENT:
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    reason = error_from_rpc(error).reason
                    if reason.startswith("quota."):
                        self.metrics.batches.labels(batch.kind.value, "quota").inc()
                        self._wait_for_quota(reason, error.details() or "")
                        return False
                # The broker refused the batch for good: do not resend it forever.
                log.warning(
                    "broker refused an outbox batch",
                    kind=batch.kind.value,
                    status=error.code().name,
                    details=error.details(),
                )
                self._signals.reject_batch(batch.client_batch_id, now=self._clock())
                self.metrics.batches.labels(batch.kind.value, "refused").inc()
                return True
            raise
        self._signals.mark_acked(batch.client_batch_id, now=self._clock())
        self.metrics.batches.labels(batch.kind.value, "accepted").inc()
        self.metrics.entries.labels(batch.kind.value).inc(len(batch.entries))
        with self.status.lock:
            self.status.batches_sent += 1
            self.status.last_contact = self._clock()
        return True

    def _wait_for_quota(self, reason: str, details: str) -> None:
        """The broker refused a batch for one of the covenant's quotas: keep it, and let
        the outbox wait until the quota may have room again."""
        now = self._clock()
        until = now + QUOTA_RETRY
        if reason in _DAILY_QUOTAS:
            tomorrow = datetime.combine(
                now.astimezone(UTC).date() + timedelta(days=1), datetime.min.time(), UTC
            )
            until = min(until, tomorrow)
        self._outbox_waits_until = until
        log.warning("broker quota reached: the outbox waits", reason=reason, until=until)
        self.status.update(last_error=f"{QUOTA_ERROR} ({reason}): {details}")

    def _envelope_quota(self, reason: str, recipient: str, details: str) -> None:
        """The broker refused an envelope for an envelope quota: keep it, and let the
        envelopes wait — all of them for the sender's daily quotas, those to ``recipient``
        for its full mailbox — until the quota may have room again."""
        now = self._clock()
        until = now + QUOTA_RETRY
        if reason in _DAILY_QUOTAS:
            tomorrow = datetime.combine(
                now.astimezone(UTC).date() + timedelta(days=1), datetime.min.time(), UTC
            )
            self._envelopes_wait_until = min(until, tomorrow)
        else:
            self._recipients_wait_until[recipient] = until
        log.warning("broker quota reached: envelopes wait", reason=reason, until=until)
        self.status.update(last_error=f"{QUOTA_ERROR} ({reason}): {details}")

    def _send_envelopes(self) -> bool:
        """Send the envelope outbox in order; each is marked sent only after the broker's
        answer, and a resend under the same message id is delivered once. Envelopes held
        back by a quota stay, in order (see :meth:`_envelope_quota`)."""
        now = self._clock()
        if self._envelopes_wait_until is not None:
            if now < self._envelopes_wait_until:
                return False
            self._envelopes_wait_until = None
        waiting = {r for r, until in self._recipients_wait_until.items() if now < until}
        self._recipients_wait_until = {r: self._recipients_wait_until[r] for r in waiting}
        envelopes = self._shared.envelope_outbox(limit=16)
        moved = False  # an envelope left the outbox: there may be more to send at once
        for envelope in envelopes:
            if envelope.recipient in waiting:
                continue  # its mailbox is full: keep the order to that recipient
            request = broker_pb2.SendEnvelopeRequest(
                client_message_id=envelope.message_id,
                envelope=common_pb2.Sealed.FromString(envelope.sealed),
            )
            try:
                self._broker.SendEnvelope(request, timeout=CALL_TIMEOUT)
            except grpc.RpcError as error:
                if isinstance(error, grpc.Call) and error.code() not in TRANSIENT:
                    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        reason = error_from_rpc(error).reason
                        if reason.startswith("quota."):
                            self._envelope_quota(reason, envelope.recipient, error.details() or "")
                            if reason in _DAILY_QUOTAS:
                                return moved
                            waiting.add(envelope.recipient)
                            continue
                    log.warning(
                        "broker refused an envelope",
                        status=error.code().name,
                        details=error.details(),
                    )
                    self._shared.settle_envelope(envelope.message_id, sent=False, now=self._clock())
                    moved = True
                    continue
                raise
            self._shared.settle_envelope(envelope.message_id, sent=True, now=self._clock())
            moved = True
            with self.status.lock:
                self.status.envelopes_sent += 1
                self.status.last_contact = self._clock()
                if self.status.last_error.startswith(QUOTA_ERROR) and not (
                    self._outbox_waits_until or self._recipients_wait_until
                ):
                    self.status.last_error = ""
        return moved

    # --- mailbox ---------------------------------------------------------------------------

    def _mailbox_loop(self) -> None:
        backoff = Backoff(self._stop)
        while not self._stop.is_set():
            index = self.brokers.index
            try:
                self._stream_mailbox(backoff)
            except grpc.RpcError as error:
                if self._stop.is_set():
                    return
                self._failed("mailbox", error, index)
                backoff.wait()
            except Exception as error:  # a bug or a database outage: keep serving
                self._crashed("mailbox", error)
                backoff.wait()

    def _stream_mailbox(self, backoff: Backoff) -> None:
        stream = self._broker.StreamMailbox(
            broker_pb2.StreamMailboxRequest(after_cursor=self._shared.mailbox_cursor())
        )
        self._track(stream)
        try:
            for event in stream:
                backoff.reset()
                self._reachable()
                self.status.update(last_contact=self._clock())
                if event.HasField("item"):
                    self._process(event.item)
                    self._caught_up(event.item.cursor)
                    self._broker.AckMailbox(
                        broker_pb2.AckMailboxRequest(cursor=event.item.cursor), timeout=CALL_TIMEOUT
                    )
        finally:
            self._untrack(stream)

    def _process(self, item: broker_pb2.MailboxItem) -> None:
        payload = item.WhichOneof("payload")
        self.metrics.mailbox_items.labels(payload if payload in MAILBOX_KINDS else "unknown").inc()
        if item.HasField("hit_notice"):
            try:
                notice = verify_hit_notice(self._covenant(), self._party, item.hit_notice)
                kind = _KINDS[notice.kind]
                first_seen = notice.first_seen.ToDatetime(tzinfo=UTC)
                last_seen = notice.last_seen.ToDatetime(tzinfo=UTC)
                accepted = self._signals.accept_notice(
                    item.cursor,
                    notice.hit_group_id,
                    notice.revision,
                    kind,
                    item.hit_notice.SerializeToString(),
                    list(notice.own_signal_refs),
                    first_seen,
                    last_seen,
                    now=self._clock(),
                    other_parties=person_hits.party_labels(
                        bool(notice.own_signal_refs),
                        (
                            (
                                m.party if m.HasField("party") else None,
                                m.role if m.HasField("role") else None,
                            )
                            for m in notice.members
                        ),
                    ),
                )
            except (SamenloopError, KeyError, ValueError, OverflowError) as error:
                log.warning("hit notice refused", cursor=item.cursor, reason=type(error).__name__)
                self._shared.advance_cursor(item.cursor)
                self.metrics.hit_notices.labels("refused").inc()
                return
            self.metrics.hit_notices.labels("accepted" if accepted else "unchanged").inc()
            if accepted:
                with self.status.lock:
                    self.status.notices_accepted += 1
                self._on_hit()
                self.wake.set()  # the work loop reports the links the hit makes
            return
        if item.HasField("envelope"):
            self.disclosures.receive(item.cursor, item.envelope.sealed)
            return
        if item.HasField("covenant_update"):
            self.covenant_keeper.covenant_update(item.cursor, item.covenant_update)
            return
        if item.HasField("covenant_timestamp"):
            self.covenant_keeper.timestamp(item.covenant_timestamp, cursor=item.cursor)
            return
        if item.HasField("set_aside"):
            aside = item.set_aside
            missed = aside.kind if aside.kind in _PAYLOAD_KINDS else "unknown"
            size = min(aside.size_bytes, _MAX_INT64)
            log.warning(
                "the broker set aside a mailbox item too large to deliver",
                cursor=item.cursor,
                kind=missed,
                size=size,
            )
            self._shared.note_set_aside(item.cursor, missed, size, now=self._clock())
            return
        log.info("mailbox item of an unknown kind skipped", cursor=item.cursor)
        self._shared.advance_cursor(item.cursor)

    # --- key holder ---------------------------------------------------------------------------

    def _holder_loop(self) -> None:
        backoff = Backoff(self._stop)
        while not self._stop.is_set():
            index = self.brokers.index
            try:
                self._serve_holder_channel(backoff)
            except grpc.RpcError as error:
                if self._stop.is_set():
                    return
                if self._reseat.is_set():  # ended here, for the new seats: no failure
                    continue
                self._failed("holder", error, index)
            except Exception as error:  # a bug or a database outage: keep serving
                self._crashed("holder", error)
            self.status.update(holder_channel_open=False)
            backoff.wait()

    def follow_key_epochs(self) -> bool:
        """Serve the key epochs the covenant held lists: start a staged epoch once its share
        is accepted, drop a retired one and delete its share. Whether the seats changed."""
        holder = self._holder
        if holder is None or self._holder_shares is None:
            return False
        covenant = self._covenant()
        before = holder.seats
        retired = holder.adopt(covenant, self._holder_shares)
        for epoch in retired:
            if self._retire_share is not None:
                self._retire_share(epoch, covenant.key_epoch.epoch)
            log.info("key epoch retired: its share is deleted", key_epoch=epoch)
        if holder.seats != before:
            log.info("key-holder seats", seats=[list(seat) for seat in holder.seats])
            return True
        return False

    def _follow_holder_seats(self) -> None:
        """Once per covenant version (work loop): if the version lists other key epochs
        with a seat of this node than the holder serves (one staged, or one retired), end
        the holder channel, so that the holder loop adopts them and tells the broker its
        seats now — not at the broker's next heartbeat, up to a quarter of a minute on."""
        holder = self._holder
        covenant = self._covenant()
        if holder is None or covenant.version == self._seats_checked:
            return
        self._seats_checked = covenant.version
        listed = {
            epoch.epoch
            for epoch in covenant.live_epochs
            if any(seat.party == self._party for seat in epoch.holders)
        }
        if listed != {epoch for epoch, _ in holder.seats}:
            self._reseat.set()
            call = self._holder_call
            if call is not None:
                cast(Any, call).cancel()  # grpc leaves Call.cancel untyped

    def _serve_holder_channel(self, backoff: Backoff) -> None:
        holder = self._holder
        assert holder is not None
        self._reseat.clear()  # what it asked for is adopted here
        self.follow_key_epochs()
        seats = holder.seats
        outbound: _Outbound = _Outbound(self._stop)
        outbound.put(
            broker_pb2.HolderChannelRequest(
                hello=broker_pb2.HolderHello(
                    seats=[
                        broker_pb2.HolderSeat(key_epoch=epoch, holder_index=index)
                        for epoch, index in seats
                    ]
                )
            )
        )
        call = self._broker.HolderChannel(outbound.messages())
        self._track(call)
        self._holder_call = call
        if self._reseat.is_set():  # the seats changed since they were adopted above
            cast(Any, call).cancel()
        try:
            for message in call:
                backoff.reset()
                self._reachable()
                self.status.update(holder_channel_open=True, last_contact=self._clock())
                if not message.HasField("evaluation"):
                    # Between requests: a staged epoch to serve or a retired one to give
                    # up changes the seats, which a new hello tells the broker.
                    if self.follow_key_epochs():
                        cast(Any, call).cancel()  # grpc leaves Call.cancel untyped
                        return
                    continue
                now = self._clock()
                try:
                    epoch, decided = holder.answer(
                        message.evaluation.request.SerializeToString(), now=now
                    )
                except SamenloopError:  # no requester to answer: drop it, summed
                    self.holder_events.add(
                        HolderEvent(UNVERIFIED, RefusalReason.MALFORMED_REQUEST.name, now.date())
                    )
                    self.metrics.oprf_refused.labels(
                        reason_label(RefusalReason.MALFORMED_REQUEST)
                    ).inc()
                    continue
                # Counted and entered in the replay cache durably before the answer leaves:
                # a crash in between must neither hand out evaluations that the quota never
                # saw nor let the request be counted again after a restart.
                if not record_answer(
                    self._repositories.tokens,
                    holder,
                    decided,
                    now=now,
                    summed=self.holder_events,
                    key_epoch=epoch,
                ):
                    continue
                self._count_answer(decided)
                outbound.put(
                    broker_pb2.HolderChannelRequest(
                        answer=broker_pb2.HolderAnswer(
                            relay_id=message.evaluation.relay_id,
                            response=common_pb2.Signed.FromString(decided.reply),
                        )
                    )
                )
        finally:
            self._holder_call = None
            outbound.close()
            self._untrack(call)

    def _count_answer(self, decided: HolderReply) -> None:
        if decided.refused is not None:
            self.metrics.oprf_refused.labels(reason_label(decided.refused)).inc()
        elif decided.answered is None:  # an identical request answered again
            self.metrics.oprf_evaluated.labels("true").inc()
        else:
            self.metrics.oprf_evaluated.labels("false").inc()
            self.metrics.oprf_elements.inc(decided.elements)


def record_answer(
    store: TokenStore,
    holder: EpochHolders | KeyHolder,
    decided: HolderReply,
    *,
    now: datetime,
    summed: Tally[HolderEvent],
    key_epoch: int = 0,
) -> bool:
    """Commit a key holder's count and replay-cache entry of an evaluation, or add a
    refusal or an answer given again to ``summed``; whether to send the reply.

    An evaluation is committed in one transaction, before the reply leaves: a
    crash before the commit sends nothing, a crash after it has counted the
    answer and will not count it again. If the commit fails the admission is
    undone and the error propagates; an entry the store already holds (only
    possible if another process serves this seat) is not answered again.
    A refusal or a repeat costs no quota and changes no replay cache: it is
    only summed (``Tally``: at most one write a minute per requester and outcome).
    """
    if decided.summed is not None:
        summed.add(decided.summed)
        return True
    try:
        store.count_evaluation(
            decided.requester,
            now=now,
            elements=decided.elements,
            answered=decided.answered,
            key_epoch=key_epoch,
        )
    except Replay:
        holder.withdraw(decided)
        log.warning("evaluation request answered before: not answered again")
        return False
    except BaseException:
        holder.withdraw(decided)
        raise
    return True


class _Outbound:
    """The upstream half of a HolderChannel: a queue the answers go into."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._items: list[broker_pb2.HolderChannelRequest | None] = []
        self._ready = threading.Condition()

    def put(self, item: broker_pb2.HolderChannelRequest | None) -> None:
        with self._ready:
            self._items.append(item)
            self._ready.notify()

    def close(self) -> None:
        self.put(None)

    def messages(self) -> Iterator[broker_pb2.HolderChannelRequest]:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: bool(self._items) or self._stop.is_set(), 1.0)
                if self._stop.is_set() and not self._items:
                    return
                if not self._items:
                    continue
                item = self._items.pop(0)
            if item is None:
                return
            yield item
