"""The ``samenloop.v1.Broker`` servicer: protobuf in, store and relay calls, protobuf out.

A thin adapter: matching and mailbox rules live in ``matching`` and
``mailbox``, persistence in the repositories of ``store``, the OPRF switchboard in
``relay``.
Every method starts from ``caller(context)``, the party in the verified client
certificate, and checks each field that names the caller against it. Errors
are raised as ``SamenloopError``s and mapped to statuses by the one
interceptor in ``samenloop.policies.rpc``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import structlog
from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError

from samenloop.broker import mailbox, matching
from samenloop.broker.auth import caller
from samenloop.broker.covenant_store import TimestampRecord
from samenloop.broker.mailbox import ItemKind
from samenloop.broker.mailbox_store import StoredItem
from samenloop.broker.metrics import BrokerMetrics
from samenloop.broker.notify import MailboxBell
from samenloop.broker.relay import Channel, Switchboard
from samenloop.broker.store import BrokerStore
from samenloop.policies import covenant as covenant_model
from samenloop.policies import crypto
from samenloop.policies.covenant import Covenant
from samenloop.policies.crypto import PartyKeys, SignatureContext
from samenloop.policies.errors import (
    ConfigurationError,
    InvalidInput,
    MessageTooLarge,
    NotAllowed,
    NotFound,
    SamenloopError,
)
from samenloop.policies.freshness import CovenantTimestamp, verify_current
from samenloop.policies.times import received_time
from samenloop.policies.trust import HeldCovenant, SignedCovenant, check_validity
from samenloop.v1 import broker_pb2, broker_pb2_grpc, common_pb2, keyholder_pb2

log = structlog.get_logger(__name__)

SOFTWARE = "samenloop 0.1.0"
HEARTBEAT_SECONDS = 15.0
EVALUATE_TIMEOUT_SECONDS = 10
MAX_MESSAGE_BYTES: int = common_pb2.LIMITS_MAX_MESSAGE_BYTES
MAX_ENVELOPE_BYTES: int = common_pb2.LIMITS_MAX_ENVELOPE_BYTES
MAX_KEY_HOLDERS: int = common_pb2.LIMITS_MAX_KEY_HOLDERS
ID_BYTES: int = common_pb2.LIMITS_ID_BYTES


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _from_timestamp(stamp: timestamp_pb2.Timestamp, field: str) -> datetime:
    if stamp.seconds == 0 and stamp.nanos == 0:
        raise InvalidInput("timestamp is missing", field=field)
    return received_time(stamp, field=field)


@dataclass
class BrokerContext:
    """What the servicer works with, passed in so tests can build one directly."""

    covenant: Callable[[], covenant_model.Covenant]
    store: BrokerStore
    keys: PartyKeys
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    switchboard: Switchboard | None = None
    bell: MailboxBell | None = None
    evaluate_timeout: float = EVALUATE_TIMEOUT_SECONDS
    heartbeat_seconds: float = HEARTBEAT_SECONDS
    trust: HeldCovenant | None = None
    #: The longest retention, in days, of the covenant versions held before the one in
    #: force (``server.build_server`` finds it as it replays them): entries may expire
    #: that far ahead too, so that tokens made under an earlier, longer rule are taken.
    held_retention_days: int = 0
    #: The root covenant the broker was configured with, served by ``GetCovenant`` for its
    #: version (later versions come from the store).
    root: SignedCovenant | None = None
    #: The counters the servicer increments (``server`` serves their registry when
    #: ``metrics_listen`` is set); a servicer without one keeps its own, never served.
    metrics: BrokerMetrics | None = None


class BrokerService(broker_pb2_grpc.BrokerServicer):
    """The broker's gRPC face."""

    def __init__(self, context: BrokerContext) -> None:
        self._covenant = context.covenant
        # Its repositories (store.tokens, .mailboxes, .covenants): each call one transaction.
        self._store = context.store
        self._keys = context.keys
        self._clock = context.clock
        self._switchboard = context.switchboard or Switchboard()
        self._bell = context.bell or MailboxBell()
        self._evaluate_timeout = context.evaluate_timeout
        self._heartbeat = context.heartbeat_seconds
        self._trust = context.trust
        self._held_retention_days = context.held_retention_days
        self._root = context.root
        self._publish_lock = threading.Lock()
        self._ending = threading.Event()  # set by end_streams
        self.metrics = context.metrics or BrokerMetrics(
            context.store, context.covenant, context.clock
        )

    def end_streams(self) -> None:
        """The broker stops: end every mailbox stream and holder channel now. They never
        end by themselves, so a graceful stop would wait out its grace period for them."""
        self._ending.set()
        self._switchboard.close_all()
        self._bell.ring_all()

    # --- session and covenant ------------------------------------------------------

    def _in_force(self) -> Covenant:
        """The covenant, if now lies in its validity period; else ``CovenantRejected``
        (``covenant.expired``): after it ends nothing new is matched, evaluated or relayed
        until administrators publish a new version (withdrawals and mailboxes go on)."""
        covenant = self._covenant()
        check_validity(covenant, self._clock())
        return covenant

    def _submission_rules(self, covenant: Covenant | None = None) -> matching.SubmissionRules:
        """What the covenant lets a party submit: its quotas and how far ahead an entry
        may expire (the longest retention of this version and those held before)."""
        return matching.SubmissionRules.of(
            covenant or self._covenant(), held_retention_days=self._held_retention_days
        )

    def _limits(self) -> broker_pb2.BrokerLimits:
        lifetime = self._submission_rules().longest_lifetime
        quotas = self._covenant().policy.quotas
        return broker_pb2.BrokerLimits(
            max_tokens_per_batch=common_pb2.LIMITS_MAX_TOKENS_PER_BATCH,
            max_refs_per_withdrawal=common_pb2.LIMITS_MAX_REFS_PER_WITHDRAWAL,
            max_blinded_elements_per_request=common_pb2.LIMITS_MAX_BLINDED_ELEMENTS_PER_REQUEST,
            max_envelope_bytes=MAX_ENVELOPE_BYTES,
            max_message_bytes=MAX_MESSAGE_BYTES,
            max_mailbox_items_per_fetch=common_pb2.LIMITS_MAX_MAILBOX_ITEMS_PER_FETCH,
            evaluate_timeout_seconds=int(self._evaluate_timeout),
            max_sealed_attributes_bytes=matching.MAX_SEALED_ATTRIBUTES_BYTES,
            max_refs_per_token=matching.MAX_REFS_PER_TOKEN,
            max_sealed_attributes_per_notice=matching.MAX_SEALED_ATTRIBUTES_PER_NOTICE,
            max_entry_lifetime_seconds=int(lifetime.total_seconds()),
            envelopes_per_day=quotas.envelopes_per_day,
            envelope_bytes_per_day=quotas.envelope_bytes_per_day,
            envelope_bytes_waiting=quotas.envelope_bytes_waiting,
            hit_notice_bytes_per_day=quotas.hit_notice_bytes_per_day,
            max_sealed_bytes=mailbox.MAX_SEALED_BYTES,
        )

    def Hello(
        self, request: broker_pb2.HelloRequest, context: grpc.ServicerContext
    ) -> broker_pb2.HelloResponse:
        party = caller(context)
        if request.party != party:
            raise NotAllowed("party does not match the client certificate", field="party")
        covenant = self._covenant()
        if request.covenant_id and request.covenant_id != covenant.id:
            raise InvalidInput(f"this broker serves covenant {covenant.id}", field="covenant_id")
        state = self._store.mailboxes.mailbox_state(party)
        log.info("hello", party=party, software=request.software_version[:64])
        response = broker_pb2.HelloResponse(
            broker=covenant.broker.id,
            covenant_id=covenant.id,
            covenant_version=covenant.version,
            server_time=timestamp(self._clock()),
            limits=self._limits(),
            acked_cursor=state.acked_cursor,
            head_cursor=state.head_cursor,
        )
        stamp = self._store.covenants.covenant_timestamp(covenant.version)
        if stamp is not None:
            response.covenant_timestamp.ParseFromString(stamp.signed)
        return response

    def GetCovenant(
        self, request: broker_pb2.GetCovenantRequest, context: grpc.ServicerContext
    ) -> broker_pb2.GetCovenantResponse:
        """A version the broker holds (0: the current one), with its newest timestamp. Nodes
        walk the versions after theirs one by one, each verified against the one before."""
        if self._trust is None:
            raise ConfigurationError(
                "this broker was started without a trust state", field="covenant"
            )
        current = self._trust.signed
        version = current.unverified().version
        if request.version in (0, version):
            message = current.to_proto()
            version_sent = version
        else:
            stored = self._store.covenants.covenant_version(request.version)
            if stored is not None:
                message = common_pb2.SignedCovenant.FromString(stored)
            elif self._root is not None and self._root.unverified().version == request.version:
                message = self._root.to_proto()
            else:
                raise NotFound(
                    f"this broker holds no version {request.version} (current: {version})",
                    field="version",
                )
            version_sent = request.version
        response = broker_pb2.GetCovenantResponse(covenant=message)
        stamp = self._store.covenants.covenant_timestamp(version_sent)
        if stamp is not None:
            response.covenant_timestamp.ParseFromString(stamp.signed)
        return response

    def _timestamp_for(
        self, message: common_pb2.Signed, signed: SignedCovenant, covenant: Covenant, now: datetime
    ) -> TimestampRecord:
        """A covenant timestamp checked as the nodes will (``freshness.verify_current``):
        the broker hands out only what the timestamp key signed for the version it holds."""
        stamp = CovenantTimestamp.parse(message)
        verify_current(stamp, covenant, signed.body, now=now)
        return TimestampRecord(stamp.version, stamp.signed, stamp.issued_at, stamp.expires_at)

    def PublishTimestamp(
        self, request: broker_pb2.PublishTimestampRequest, context: grpc.ServicerContext
    ) -> broker_pb2.PublishTimestampResponse:
        """Take a covenant timestamp for the version in force and deliver it to every party.

        Any party may deliver one (the timestamp job runs with a node's certificate): its
        authority is the timestamp key's signature, which the broker checks as every node
        will. The newest is kept, with its mailbox items, in one transaction."""
        publisher = caller(context)
        if self._trust is None:
            raise ConfigurationError(
                "this broker was started without a trust state", field="covenant"
            )
        if not request.HasField("covenant_timestamp"):
            raise InvalidInput("missing", field="covenant_timestamp")
        with self._publish_lock:
            now = self._clock()
            covenant, signed = self._trust(), self._trust.signed
            record = self._timestamp_for(request.covenant_timestamp, signed, covenant, now)
            stored = self._store.covenants.publish_timestamp(
                record, recipients=sorted(covenant.party_ids), now=now
            )
            newest = self._store.covenants.covenant_timestamp(covenant.version)
        if stored:
            self._bell.ring(sorted(covenant.party_ids))
        log.info(
            "covenant timestamp published",
            version=record.version,
            expires_at=record.expires_at.isoformat(),
            stored=stored,
            by=publisher,
        )
        assert newest is not None
        return broker_pb2.PublishTimestampResponse(
            version=newest.version, expires_at=timestamp(newest.expires_at), stored=stored
        )

    def PublishCovenant(
        self, request: broker_pb2.PublishCovenantRequest, context: grpc.ServicerContext
    ) -> broker_pb2.PublishCovenantResponse:
        """Accept a new covenant version and deliver it to every party.

        Any party may deliver a version: its authority comes from the signers'
        signatures, which the broker checks as every node will (TUF's rules). The
        version, its delivery and the cut-off of removed parties commit together.
        """
        publisher = caller(context)
        if self._trust is None:
            raise ConfigurationError(
                "this broker was started without a trust state", field="covenant"
            )
        if not request.HasField("covenant"):
            raise InvalidInput("missing", field="covenant")
        signed = SignedCovenant.from_proto(request.covenant)
        with self._publish_lock:
            now = self._clock()
            new = self._trust.verify(signed, now=now)
            if new is None:  # the version in force, once more: only its timestamp is news
                held = self._trust()
                if request.HasField("covenant_timestamp"):
                    record = self._timestamp_for(request.covenant_timestamp, signed, held, now)
                    if self._store.covenants.publish_timestamp(
                        record, recipients=sorted(held.party_ids), now=now
                    ):
                        self._bell.ring(sorted(held.party_ids))
                return broker_pb2.PublishCovenantResponse(
                    version=held.version, published_at=timestamp(now)
                )
            previous = self._trust()
            removed = sorted(previous.party_ids - new.party_ids)
            stamp = (
                self._timestamp_for(request.covenant_timestamp, signed, new, now)
                if request.HasField("covenant_timestamp")
                else None
            )
            removals = self._store.covenants.publish_covenant(
                version=new.version,
                signed=signed.to_proto().SerializeToString(),
                recipients=sorted(new.party_ids),
                removed=removed,
                min_parties=new.min_parties,
                now=now,
                sign_notice=lambda draft: self._sign_notice(draft, new),
                visibility=matching.CovenantVisibility(new, former=previous),
                timestamp=stamp,
                switch=(
                    (previous.key_epoch.epoch, new.key_epoch.epoch)
                    if new.key_epoch.epoch != previous.key_epoch.epoch
                    else None
                ),
                staged_epoch=_staged_epoch(new),
                parties=sorted(previous.party_ids | new.party_ids),
                unstaged=_unstaged_epoch(previous, new),
            )
            self._trust.update(signed, now=now)
            for removal in removals:
                self.metrics.tokens.labels("removed").inc(removal.removed)
                self.metrics.hit_notices.labels("removal").inc(removal.notices)
            # Tokens made under the version replaced may still arrive: keep its retention.
            self._held_retention_days = max(
                self._held_retention_days, previous.policy.retention.longest_days
            )
        for party in removed:  # end their open streams now; new calls are refused already
            self._switchboard.close_party(party)
        self._bell.ring(sorted(previous.party_ids | new.party_ids))
        log.info(
            "covenant published",
            version=new.version,
            previous=previous.version,
            removed=len(removed),
            by=publisher,
        )
        return broker_pb2.PublishCovenantResponse(version=new.version, published_at=timestamp(now))

    def adopt_published(self) -> int:
        """Covenant versions another broker replica accepted (PostgreSQL: heard through its
        NOTIFY, or found by the sweep): taken from the store in order, checked again as at
        start (signatures and order; validity was checked by the replica that accepted
        it), and the channels here of the parties they removed closed. Answers how many."""
        if self._trust is None:
            return 0
        taken = 0
        with self._publish_lock:
            for stored in self._store.covenants.covenant_versions():
                previous = self._trust()
                signed = SignedCovenant.from_proto(common_pb2.SignedCovenant.FromString(stored))
                if signed.unverified().version <= previous.version:
                    continue
                new = self._trust.replay(signed).covenant
                self._held_retention_days = max(
                    self._held_retention_days, previous.policy.retention.longest_days
                )
                for party in sorted(previous.party_ids - new.party_ids):
                    self._switchboard.close_party(party)
                self._bell.ring(sorted(previous.party_ids | new.party_ids))
                log.info("covenant version taken from another replica", version=new.version)
                taken += 1
        return taken

    # --- OPRF relay -------------------------------------------------------------------

    def Evaluate(
        self, request: broker_pb2.EvaluateRequest, context: grpc.ServicerContext
    ) -> broker_pb2.EvaluateResponse:
        party = caller(context)
        if not 1 <= len(request.requests) <= MAX_KEY_HOLDERS:
            raise InvalidInput(f"1..{MAX_KEY_HOLDERS} requests", field="requests")
        covenant = self._in_force()
        by_index: dict[int, common_pb2.Signed] = {}
        epochs = set()
        for i, signed in enumerate(request.requests):
            field = f"requests[{i}]"
            if signed.signer != party or signed.context != SignatureContext.OPRF_REQUEST.value:
                raise NotAllowed("requests must be the caller's own OPRF requests", field=field)
            body = _parse_evaluation_request(signed.body, field)
            if body.requester != party or body.covenant_id != covenant.id:
                raise NotAllowed("request names another requester or covenant", field=field)
            if body.holder_index in by_index:
                raise InvalidInput("two requests for one holder", field=f"{field}.holder_index")
            by_index[body.holder_index] = signed
            epochs.add(body.key_epoch)
        if len(epochs) != 1:
            raise InvalidInput("requests must share one key epoch", field="requests")
        (key_epoch,) = epochs
        replies = self._switchboard.relay(key_epoch, by_index, timeout=self._evaluate_timeout)
        self.metrics.oprf_requests.inc(len(by_index))
        return broker_pb2.EvaluateResponse(
            replies=[replies[index] for index in by_index],  # in the order of the requests
            connected_holders=self._switchboard.connected(key_epoch),
        )

    def HolderChannel(
        self,
        request_iterator: Iterator[broker_pb2.HolderChannelRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[broker_pb2.HolderChannelResponse]:
        party = caller(context)
        first = next(request_iterator, None)
        if first is None or not first.HasField("hello"):
            raise InvalidInput("a holder channel starts with a hello", field="hello")
        covenant = self._covenant()
        # Seats of a retired epoch are left out: a holder that has not yet heard of the
        # switch still names them, and serves the new epoch all the same.
        seats = frozenset(
            (s.key_epoch, s.holder_index)
            for s in first.hello.seats
            if s.key_epoch >= covenant.key_epoch.epoch
        )
        held = {(epoch, seat.index) for epoch, seat in covenant.seats_in_live_epochs(party)}
        if not seats or not seats <= held:
            raise NotAllowed(f"{party} does not hold these key-holder seats", field="hello.seats")
        channel = self._switchboard.open(party, seats)
        if self._ending.is_set():  # opened as the broker stops: no request will come
            self._switchboard.close(channel)
        log.info("holder channel open", party=party, seats=sorted(seats))
        reader = threading.Thread(
            target=self._read_answers, args=(channel, request_iterator), daemon=True
        )
        reader.start()
        context.add_callback(lambda: self._switchboard.close(channel))
        try:
            # A first heartbeat at once: the holder learns that its seats are registered
            # (its status shows the channel open) without waiting for an idle period.
            yield broker_pb2.HolderChannelResponse(heartbeat=timestamp(self._clock()))
            for item in channel.requests(self._heartbeat):
                if isinstance(item, str):
                    yield broker_pb2.HolderChannelResponse(heartbeat=timestamp(self._clock()))
                elif item is not None:
                    yield broker_pb2.HolderChannelResponse(evaluation=item)
        finally:
            self._switchboard.close(channel)
            log.info("holder channel closed", party=party)

    def _read_answers(
        self, channel: Channel, request_iterator: Iterator[broker_pb2.HolderChannelRequest]
    ) -> None:
        try:
            for message in request_iterator:
                if message.HasField("answer"):
                    self._switchboard.answer(
                        channel, message.answer.relay_id, message.answer.response
                    )
        except (grpc.RpcError, SamenloopError) as error:  # call ended, or garbage upstream
            log.info(
                "holder channel reader stopped", party=channel.party, error=type(error).__name__
            )
        finally:
            self._switchboard.close(channel)

    # --- tokens ----------------------------------------------------------------------

    def _sign_notice(self, draft: matching.NoticeDraft, covenant: Covenant | None = None) -> bytes:
        covenant = covenant or self._covenant()
        notice = broker_pb2.HitNotice(
            covenant_id=covenant.id,
            covenant_version=covenant.version,
            hit_group_id=draft.group_id,
            # The group's last change time in microseconds: it orders the notices of a group
            # (last_seen only moves forward) without counting changes the recipient was not
            # told of, which a plain revision number would betray.
            revision=_micros(draft.last_seen),
            kind=broker_pb2.HitNoticeKind.ValueType(int(draft.kind)),
            recipient=draft.recipient,
            visibility=broker_pb2.HitVisibility(
                party_count=draft.view.visibility.party_count,
                roles=draft.view.visibility.roles,
                parties=draft.view.visibility.parties,
                categories=draft.view.visibility.categories,
            ),
            own_signal_refs=list(draft.own_refs),
            # A recipient some member is hidden from learns only when it was told, not when
            # the group (perhaps with only that member) first formed.
            first_seen=timestamp(draft.last_seen if draft.partial else draft.first_seen),
            last_seen=timestamp(draft.last_seen),
            issued_at=timestamp(self._clock()),
            picture_reporter=draft.picture_reporter,
        )
        if draft.view.party_count is not None:
            notice.party_count = draft.view.party_count
        for member in draft.view.members:
            shown = notice.members.add()
            if member.party is not None:
                shown.party = member.party
            if member.role is not None:
                shown.role = member.role
            shown.signal_refs.extend(member.signal_refs)
            for sealed in member.sealed_attributes:
                shown.sealed_attributes.add().ParseFromString(sealed)
        body = notice.SerializeToString()
        return common_pb2.Signed(
            body=body,
            signer=covenant.broker.id,
            context=SignatureContext.HIT_NOTICE.value,
            signature=self._keys.sign(SignatureContext.HIT_NOTICE, body),
        ).SerializeToString()

    def _visibility(self) -> matching.VisibilityRule:
        return matching.CovenantVisibility(self._covenant())

    def SubmitTokens(
        self, request: broker_pb2.SubmitTokensRequest, context: grpc.ServicerContext
    ) -> broker_pb2.SubmitTokensResponse:
        party = caller(context)
        covenant = self._in_force()
        staged = _staged_epoch(covenant)
        if request.key_epoch not in (covenant.key_epoch.epoch, staged):
            raise InvalidInput(
                f"key epoch {request.key_epoch} is neither the covenant's current epoch "
                f"({covenant.key_epoch.epoch}) nor its staged one"
                + ("" if staged is None else f" ({staged})"),
                field="key_epoch",
            )
        if len(request.entries) > common_pb2.LIMITS_MAX_TOKENS_PER_BATCH:
            raise MessageTooLarge(
                f"at most {common_pb2.LIMITS_MAX_TOKENS_PER_BATCH} entries per batch",
                field="entries",
            )
        entries = [
            matching.Entry(
                party=party,
                token=self._store.tokens.lanes.held_token(request.key_epoch, entry.token),
                signal_ref=entry.signal_ref,
                key_epoch=request.key_epoch,
                expires_at=_from_timestamp(entry.expires_at, f"entries[{i}].expires_at"),
                sealed_attributes=(
                    entry.sealed_attributes.SerializeToString()
                    if entry.HasField("sealed_attributes")
                    else None
                ),
            )
            for i, entry in enumerate(request.entries)
        ]
        result = self._store.tokens.submit(
            party,
            request.client_batch_id,
            request.key_epoch,
            entries,
            min_parties=covenant.min_parties,
            now=self._clock(),
            new_group_id=lambda: os.urandom(ID_BYTES),
            sign_notice=self._sign_notice,
            visibility=self._visibility(),
            rules=self._submission_rules(covenant),
            staged_epoch=staged,
            covenant_version=covenant.version,
        )
        self._bell.ring(result.notified)
        self.metrics.count_batch(
            "submit",
            replayed=result.replayed,
            notices=result.notices,
            stored=result.stored,
            unchanged=result.unchanged,
        )
        return broker_pb2.SubmitTokensResponse(
            client_batch_id=result.client_batch_id,
            stored=result.stored,
            unchanged=result.unchanged,
            replayed=result.replayed,
            accepted_at=timestamp(result.accepted_at),
        )

    def WithdrawTokens(
        self, request: broker_pb2.WithdrawTokensRequest, context: grpc.ServicerContext
    ) -> broker_pb2.WithdrawTokensResponse:
        party = caller(context)
        covenant = self._covenant()
        if len(request.signal_refs) > common_pb2.LIMITS_MAX_REFS_PER_WITHDRAWAL:
            raise MessageTooLarge(
                f"at most {common_pb2.LIMITS_MAX_REFS_PER_WITHDRAWAL} refs per withdrawal",
                field="signal_refs",
            )
        result = self._store.tokens.withdraw(
            party,
            request.client_batch_id,
            list(request.signal_refs),
            min_parties=covenant.min_parties,
            now=self._clock(),
            sign_notice=self._sign_notice,
            visibility=self._visibility(),
            rules=self._submission_rules(covenant),
            staged_epoch=_staged_epoch(covenant),
            covenant_version=covenant.version,
        )
        self._bell.ring(result.notified)
        self.metrics.count_batch(
            "withdraw",
            replayed=result.replayed,
            notices=result.notices,
            withdrawn=result.withdrawn,
            unknown=result.unknown,
        )
        return broker_pb2.WithdrawTokensResponse(
            client_batch_id=result.client_batch_id,
            withdrawn=result.withdrawn,
            unknown=result.unknown,
            replayed=result.replayed,
        )

    def expire(self) -> int:
        """Drop expired token entries (the broker's own retention sweep); returns how many."""
        covenant = self._covenant()
        removed = 0
        while True:
            result = self._store.tokens.expire(
                self._clock(),
                min_parties=covenant.min_parties,
                sign_notice=self._sign_notice,
                visibility=self._visibility(),
                staged_epoch=_staged_epoch(covenant),
                covenant_version=covenant.version,
            )
            removed += result.removed
            self._bell.ring(result.notified)
            self.metrics.tokens.labels("expired").inc(result.removed)
            self.metrics.hit_notices.labels("expiry").inc(result.notices)
            if not result.more:
                break
        keep = self._submission_rules(covenant).longest_lifetime
        while self._store.retention.prune_closed_groups(self._clock(), keep=keep).more:
            pass
        return removed

    # --- mailbox -----------------------------------------------------------------------

    @staticmethod
    def _item(stored: StoredItem) -> broker_pb2.MailboxItem:
        item = broker_pb2.MailboxItem(
            cursor=stored.cursor, enqueued_at=timestamp(stored.enqueued_at)
        )
        if stored.kind is ItemKind.HIT_NOTICE:
            item.hit_notice.ParseFromString(stored.payload)
        elif stored.kind is ItemKind.ENVELOPE:
            item.envelope.ParseFromString(stored.payload)
        elif stored.kind is ItemKind.SET_ASIDE:
            item.set_aside.ParseFromString(stored.payload)
        elif stored.kind is ItemKind.COVENANT_TIMESTAMP:
            item.covenant_timestamp.ParseFromString(stored.payload)
        else:
            item.covenant_update.ParseFromString(stored.payload)
        return item

    def FetchMailbox(
        self, request: broker_pb2.FetchMailboxRequest, context: grpc.ServicerContext
    ) -> broker_pb2.FetchMailboxResponse:
        party = caller(context)
        fetched = self._store.mailboxes.fetch(
            party, request.after_cursor, request.max_items, now=self._clock(), parses=mailbox.parses
        )
        self.metrics.mailbox_items.inc(len(fetched.items))
        return broker_pb2.FetchMailboxResponse(
            items=[self._item(stored) for stored in fetched.items],
            head_cursor=fetched.head_cursor,
            acked_cursor=fetched.acked_cursor,
        )

    def StreamMailbox(
        self, request: broker_pb2.StreamMailboxRequest, context: grpc.ServicerContext
    ) -> Iterator[broker_pb2.StreamMailboxResponse]:
        party = caller(context)
        after = request.after_cursor
        rings = self._bell.count(party)
        # When the call ends (the node went away, the server stops), end the wait below at
        # once rather than after a heartbeat period: a waiting stream holds a worker thread.
        context.add_callback(lambda: self._bell.ring([party]))
        while context.is_active() and not self._ending.is_set():
            if not self._covenant().is_party(party):  # removed by a new covenant version
                raise NotAllowed(
                    f"{party} is no longer a party of this covenant",
                    field="party",
                    reason="covenant.unknown_party",
                )
            fetched = self._store.mailboxes.fetch(
                party, after, 0, now=self._clock(), parses=mailbox.parses
            )
            for stored in fetched.items:
                yield broker_pb2.StreamMailboxResponse(item=self._item(stored))
                self.metrics.mailbox_items.inc()
                after = stored.cursor
            if fetched.items:
                continue
            seen = rings
            rings = self._bell.wait(party, seen, self._heartbeat)
            if rings == seen:
                yield broker_pb2.StreamMailboxResponse(heartbeat=timestamp(self._clock()))

    def AckMailbox(
        self, request: broker_pb2.AckMailboxRequest, context: grpc.ServicerContext
    ) -> broker_pb2.AckMailboxResponse:
        party = caller(context)
        return broker_pb2.AckMailboxResponse(
            acked_cursor=self._store.mailboxes.ack(party, request.cursor)
        )

    def ResyncHits(
        self, request: broker_pb2.ResyncHitsRequest, context: grpc.ServicerContext
    ) -> broker_pb2.ResyncHitsResponse:
        """The caller's latest notice of every group, in its mailbox again: a node restored
        from an older backup catches up with what it had acknowledged since."""
        party = caller(context)
        if not self._covenant().is_party(party):
            raise NotAllowed(
                f"{party} is no longer a party of this covenant",
                field="party",
                reason="covenant.unknown_party",
            )
        notices, head = self._store.mailboxes.resync(party, self._clock())
        if notices:
            self._bell.ring([party])
        log.info("hit notices resent", party=party, notices=notices)
        return broker_pb2.ResyncHitsResponse(notices=notices, head_cursor=head)

    # --- envelopes ---------------------------------------------------------------------

    def SendEnvelope(
        self, request: broker_pb2.SendEnvelopeRequest, context: grpc.ServicerContext
    ) -> broker_pb2.SendEnvelopeResponse:
        party = caller(context)
        sealed = request.envelope
        if sealed.sender != party:
            raise NotAllowed("envelope sender must be the caller", field="envelope.sender")
        covenant = self._in_force()
        if not covenant.is_party(sealed.recipient):
            raise NotAllowed("recipient is not a party of the covenant", field="envelope.recipient")
        mailbox.check_sealed(sealed)
        now = self._clock()
        relayed = broker_pb2.RelayedEnvelope(
            client_message_id=request.client_message_id,
            accepted_at=timestamp(now),
            sealed=sealed,
        )
        receipt = self._store.mailboxes.relay_envelope(
            party,
            request.client_message_id,
            crypto.digest(sealed.SerializeToString(deterministic=True)),
            recipient=sealed.recipient,
            payload=relayed.SerializeToString(),
            now=now,
            rules=mailbox.EnvelopeRules.of(covenant),
        )
        if not receipt.replayed:
            self._bell.ring([sealed.recipient])
        self.metrics.envelopes.labels("replayed" if receipt.replayed else "relayed").inc()
        return broker_pb2.SendEnvelopeResponse(
            client_message_id=request.client_message_id,
            replayed=receipt.replayed,
            accepted_at=timestamp(receipt.accepted_at),
        )


def _parse_evaluation_request(body: bytes, field: str) -> keyholder_pb2.EvaluationRequest:
    request = keyholder_pb2.EvaluationRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as error:
        raise InvalidInput("not an EvaluationRequest", field=field) from error
    return request


def _unstaged_epoch(previous: Covenant, new: Covenant) -> int | None:
    """The epoch ``previous`` staged that ``new`` neither keeps staged (the same key) nor
    makes current: a staging withdrawn, whose entries the broker deletes."""
    staged = previous.next_key_epoch
    if staged is None or new.key_epoch.epoch == staged.epoch:
        return None
    following = new.next_key_epoch
    if following is not None and following.group_public_key == staged.group_public_key:
        return None
    return staged.epoch


def _staged_epoch(covenant: Covenant) -> int | None:
    """The key epoch a rotation has staged in ``covenant``, if any."""
    staged = covenant.next_key_epoch
    return None if staged is None else staged.epoch
