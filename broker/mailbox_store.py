"""The broker's mailboxes: one per party, items in cursor order, read and acknowledged by
their party (see :mod:`mailbox` for the rules), and the envelopes relayed into them.

Every public method is one database transaction, and returns only after it committed.
Other repositories put items in mailboxes inside their own transactions, through the
helpers that take a :class:`~samenloop.broker.database.Tx` (:meth:`MailboxStore.put`,
:meth:`MailboxStore.deliver`, :meth:`MailboxStore.close`, :meth:`MailboxStore.require_open`):
matching delivers its signed notices, and a covenant version its update, in the
transaction that causes them. Mailbox reads are not serialized with matching: they run
beside writers.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

import structlog
from sqlalchemy import Connection, bindparam, case, delete, func, insert, select, update

from samenloop.broker import mailbox
from samenloop.broker.database import BrokerDatabase, Tx, check_id, check_party, utc
from samenloop.broker.mailbox import EnvelopeRules, EnvelopeUsage, ItemKind, MailboxState, SetAside
from samenloop.broker.matching import NoticeDraft
from samenloop.broker.models import (
    LatestNotice,
    MailboxHead,
    MailboxItem,
    Party,
    PartyEnvelopeUsage,
    RelayedEnvelope,
    Resync,
    SetAsideItem,
)
from samenloop.broker.notify import MAILBOX_CHANNEL
from samenloop.policies.audit import AuditEvent, AuditKind
from samenloop.policies.errors import NotAllowed, QuotaExceeded, Replay

log = structlog.get_logger(__name__)

DIGEST_BYTES: Final = 32

# Plain SQL of the hot path (constants only, never built from input).
_SQLITE_HEADS: Final = (
    "SELECT party_id, head_cursor, acked_cursor, closed FROM mailbox_heads"
    " WHERE party_id IN ({}) ORDER BY party_id"
)
_SQLITE_MOVE_HEAD: Final = "UPDATE mailbox_heads SET head_cursor = ? WHERE party_id = ?"
_SQLITE_INSERT_ITEMS: Final = (
    "INSERT INTO mailbox_items (party_id, cursor, kind, payload, enqueued_at)"
    " VALUES (?, ?, ?, ?, ?)"
)
_PG_LOCK_HEADS: Final = (
    "SELECT party_id, head_cursor, acked_cursor, closed FROM mailbox_heads"
    " WHERE party_id = ANY(%s::bigint[]) ORDER BY party_id FOR UPDATE"
)
_PG_MOVE_HEADS: Final = (
    "UPDATE mailbox_heads AS h SET head_cursor = v.head_cursor"
    " FROM unnest(%s::bigint[], %s::bigint[]) AS v(party_id, head_cursor)"
    " WHERE h.party_id = v.party_id"
)
# Wakes the recipients' streams on every broker replica, once this commits (see notify).
_PG_NOTIFY: Final = f"SELECT pg_notify('{MAILBOX_CHANNEL}', p) FROM unnest(%s::text[]) AS p"  # noqa: S608 (constants)
_PG_INSERT_ITEMS: Final = (
    "INSERT INTO mailbox_items (party_id, cursor, kind, payload, enqueued_at)"
    " VALUES (%s, %s, %s, %s, %s)"
)

# A mailbox's window (see MailboxStore.fetch): each item's size, with the payloads of the
# small ones. Built once: SQLAlchemy would otherwise rebuild it on every fetch.
_MAILBOX_SIZE = func.length(MailboxItem.payload)
_MAILBOX_WINDOW: Final = (
    select(
        MailboxItem.cursor,
        MailboxItem.kind,
        _MAILBOX_SIZE,
        MailboxItem.enqueued_at,
        case((bindparam("small") >= _MAILBOX_SIZE, MailboxItem.payload), else_=None),
    )
    .where(MailboxItem.party_id == bindparam("party_id"), MailboxItem.cursor > bindparam("after"))
    .order_by(MailboxItem.cursor)
    .limit(bindparam("limit"))
)


@dataclass(frozen=True, slots=True)
class StoredItem:
    """A mailbox item as stored: the service wraps it in a ``MailboxItem``."""

    cursor: int
    kind: ItemKind
    payload: bytes
    enqueued_at: datetime


@dataclass(frozen=True, slots=True)
class Fetched:
    """A page of a mailbox, with its head and acknowledged cursors."""

    items: tuple[StoredItem, ...]
    head_cursor: int
    acked_cursor: int


@dataclass(frozen=True, slots=True)
class EnvelopeReceipt:
    """Where a relayed envelope went, when it was first accepted, and whether this was a repeat."""

    cursor: int
    accepted_at: datetime
    replayed: bool


class MailboxStore:
    """The parties' mailboxes, their envelope quota counts and the relayed envelopes."""

    def __init__(self, database: BrokerDatabase) -> None:
        self._db = database

    def enqueue(self, party: str, payload: bytes, kind: ItemKind, now: datetime) -> int:
        """Put one item in a party's mailbox; returns its cursor."""
        check_party(party)
        now = utc(now)
        with self._db.write() as tx:
            cursors = self.put(tx, {party: [(kind, payload)]}, now, skip_closed=False)
        return cursors[party][0]

    def fetch(
        self,
        party: str,
        after_cursor: int,
        max_items: int = 0,
        *,
        now: datetime,
        budget: int = mailbox.MAX_MESSAGE_BYTES,
        parses: Callable[[ItemKind, bytes], bool] | None = None,
    ) -> Fetched:
        """Items after a cursor, in cursor order: as many whole items as fit in one message
        of ``budget`` bytes (:func:`mailbox.page`), and at least one if any waits.

        An item that fits in no message, or (given ``parses``: the service passes
        :func:`mailbox.parses`) whose stored bytes do not parse as its kind, is set aside
        first (:meth:`_set_aside`, its own transaction, at ``now``) and its marker comes
        in its place: no item stops a mailbox. One query reads the window's sizes, with the
        payloads of the small items (at most ``budget`` bytes of them in all); the larger
        payloads of the page, if any, come in a second. A page never loads an item it will
        not send.
        """
        check_party(party)
        now = utc(now)
        tried: tuple[int, ...] = ()
        while True:
            with self._db.read() as conn:
                party_id = self._db.party(conn, party)
                state = self._head(conn, party, party_id)
                window = mailbox.fetch(state, after_cursor, max_items)
                if party_id is None:
                    return Fetched((), state.head_cursor, state.acked_cursor)
                rows = conn.execute(
                    _MAILBOX_WINDOW,
                    {
                        "party_id": party_id,
                        "after": window.after,
                        "small": budget // window.limit,
                        "limit": window.limit,
                    },
                ).all()
                plan = mailbox.page([(row[0], row[2]) for row in rows], budget=budget)
                aside = dict.fromkeys(plan.set_aside, SetAside.TOO_LARGE)
                if not aside:
                    sent = rows[: plan.count]
                    large = [row[0] for row in sent if row[4] is None]
                    payloads = (
                        dict(
                            conn.execute(
                                select(MailboxItem.cursor, MailboxItem.payload).where(
                                    MailboxItem.party_id == party_id, MailboxItem.cursor.in_(large)
                                )
                            ).all()
                        )
                        if large
                        else {}
                    )
                    items = tuple(
                        StoredItem(
                            cursor,
                            ItemKind(kind),
                            payload if payload is not None else payloads[cursor],
                            enqueued_at,
                        )
                        for cursor, kind, _, enqueued_at, payload in sent
                        if payload is not None or cursor in payloads  # unless acknowledged
                    )
                    aside = {
                        item.cursor: SetAside.MALFORMED
                        for item in items
                        if parses is not None and not parses(item.kind, item.payload)
                    }
                    if not aside:
                        return Fetched(items, state.head_cursor, state.acked_cursor)
            if tuple(aside) == tried:  # only a row altered by hand again meanwhile gets here
                raise LookupError(f"cannot set aside mailbox items {tried} of {party}")
            tried = tuple(aside)
            self._set_aside(party, party_id, aside, now)

    def _set_aside(
        self, party: str, party_id: int, cursors: Mapping[int, SetAside], now: datetime
    ) -> None:
        """Move undeliverable items out of a mailbox, durably and in one transaction: each to
        ``set_aside_items`` (kept for the operator), a marker in its place at its cursor,
        an audit entry saying why (``cursors``: too large for any message, or stored bytes
        that do not parse). Items another reader set aside meanwhile, or that were
        acknowledged, are skipped. A marker whose own bytes do not parse is replaced by a
        new one (there is nothing in it to keep)."""
        with self._db.write() as tx:
            conn = tx.conn
            self._head(conn, party, party_id, lock=True)  # one at a time per mailbox
            rows = conn.execute(
                select(
                    MailboxItem.cursor,
                    MailboxItem.kind,
                    MailboxItem.payload,
                    MailboxItem.enqueued_at,
                ).where(MailboxItem.party_id == party_id, MailboxItem.cursor.in_(list(cursors)))
            ).all()
            events = []
            released = 0
            for cursor, kind, payload, enqueued_at in rows:
                reason = cursors[cursor]
                if kind == ItemKind.SET_ASIDE.value:
                    if mailbox.parses(ItemKind.SET_ASIDE, payload):
                        continue  # another reader set it aside meanwhile
                else:
                    conn.execute(
                        insert(SetAsideItem).values(
                            party_id=party_id,
                            cursor=cursor,
                            kind=kind,
                            payload=payload,
                            enqueued_at=enqueued_at,
                            set_aside_at=now,
                        )
                    )
                if kind == ItemKind.ENVELOPE.value:
                    released += len(payload)
                conn.execute(
                    update(MailboxItem)
                    .where(MailboxItem.party_id == party_id, MailboxItem.cursor == cursor)
                    .values(
                        kind=ItemKind.SET_ASIDE.value,
                        payload=mailbox.marker(ItemKind(kind), len(payload), now),
                    )
                )
                events.append(
                    AuditEvent(
                        AuditKind.MAILBOX_ITEM_SET_ASIDE,
                        self._db.owner,
                        (),
                        {
                            "party": party,
                            "cursor": cursor,
                            "kind": kind,
                            "bytes": len(payload),
                            "reason": reason.value,
                        },
                    )
                )
                log.warning(
                    "mailbox item set aside",
                    party=party,
                    cursor=cursor,
                    kind=kind,
                    size=len(payload),
                    reason=reason.value,
                )
            if released:
                self._release_envelopes(tx, party_id, released)
            if events:
                self._db.audit(tx, events, now)

    def ack(self, party: str, cursor: int) -> int:
        """Acknowledge a party's items up to and including ``cursor`` (and delete them);
        returns the acknowledged cursor."""
        check_party(party)
        with self._db.write() as tx:
            party_id = self._db.party(tx.conn, party)
            state = self._head(tx.conn, party, party_id, lock=True)
            acked = mailbox.ack(state, cursor)
            if acked != state and party_id is not None:
                tx.conn.execute(
                    update(MailboxHead)
                    .where(MailboxHead.party_id == party_id)
                    .values(acked_cursor=acked.acked_cursor)
                )
                read = tx.conn.execute(
                    select(func.coalesce(func.sum(_MAILBOX_SIZE), 0)).where(
                        MailboxItem.party_id == party_id,
                        MailboxItem.cursor <= acked.acked_cursor,
                        MailboxItem.kind == ItemKind.ENVELOPE.value,
                    )
                ).scalar_one()
                if read:
                    self._release_envelopes(tx, party_id, int(read))
                tx.conn.execute(
                    delete(MailboxItem).where(
                        MailboxItem.party_id == party_id,
                        MailboxItem.cursor <= acked.acked_cursor,
                    )
                )
        return acked.acked_cursor

    def envelope_usage(self, party: str) -> EnvelopeUsage:
        """A party's envelope quota counts: its last counted UTC day, the envelopes and bytes
        it sent then, the envelope bytes waiting in its mailbox (zeros for a party never
        seen)."""
        row = self._db.party_row(
            party,
            PartyEnvelopeUsage.party_id,
            (
                PartyEnvelopeUsage.day,
                PartyEnvelopeUsage.sent,
                PartyEnvelopeUsage.sent_bytes,
                PartyEnvelopeUsage.waiting_bytes,
            ),
        )
        return EnvelopeUsage() if row is None else EnvelopeUsage(*row)

    def depths(self) -> dict[str, tuple[int, datetime]]:
        """Per party with items waiting: how many, and when the oldest was put there (for
        the metrics, at scrape time; parties with an empty mailbox are absent)."""
        query = (
            select(Party.name, func.count(), func.min(MailboxItem.enqueued_at))
            .join(Party, Party.id == MailboxItem.party_id)
            .group_by(Party.name)
        )
        with self._db.read() as conn:
            return {name: (int(count), utc(oldest)) for name, count, oldest in conn.execute(query)}

    def envelope_usages(self) -> dict[str, EnvelopeUsage]:
        """Every party's envelope quota counts, as ``envelope_usage`` (for the metrics)."""
        query = select(
            Party.name,
            PartyEnvelopeUsage.day,
            PartyEnvelopeUsage.sent,
            PartyEnvelopeUsage.sent_bytes,
            PartyEnvelopeUsage.waiting_bytes,
        ).join(Party, Party.id == PartyEnvelopeUsage.party_id)
        with self._db.read() as conn:
            return {name: EnvelopeUsage(*counts) for name, *counts in conn.execute(query)}

    def mailbox_state(self, party: str) -> MailboxState:
        """A party's head and acknowledged cursors (zeros for a party never seen)."""
        check_party(party)
        with self._db.read() as conn:
            return self._head(conn, party, self._db.party(conn, party))

    def close_mailbox(self, party: str) -> None:
        """Close a party's mailbox for good and drop what it still held."""
        check_party(party)
        with self._db.write() as tx:
            self.close(tx, party, self._db.ids(tx, [party])[party])

    def relay_envelope(
        self,
        sender: str,
        client_message_id: bytes,
        digest: bytes,
        *,
        recipient: str,
        payload: bytes,
        now: datetime,
        rules: EnvelopeRules | None = None,
    ) -> EnvelopeReceipt:
        """Record a relayed envelope and put it in the recipient's mailbox, atomically.

        Idempotent by (sender, ``client_message_id``): the same digest again is
        acknowledged with the first receipt (``replayed``) and delivered once;
        another digest is a :class:`Replay` error. With ``rules`` (the broker always
        passes the covenant's) a new envelope counts against the sender's daily
        quotas and the recipient's room, in this transaction: one beyond a quota is
        refused (``QuotaExceeded``) and stores nothing. Its bytes wait in the
        recipient's room until it acknowledges them.
        """
        check_party(sender, "envelope.sender")
        check_party(recipient, "envelope.recipient")
        check_id(client_message_id, "client_message_id")
        if len(digest) != DIGEST_BYTES:
            raise ValueError(f"envelope digests are {DIGEST_BYTES} bytes")
        now = utc(now)
        with self._db.write() as tx:
            ids = self._db.ids(tx, [sender, recipient])
            self.require_open(tx, sender, ids[sender])
            prior = tx.conn.execute(
                select(
                    RelayedEnvelope.digest, RelayedEnvelope.cursor, RelayedEnvelope.accepted_at
                ).where(
                    RelayedEnvelope.sender_id == ids[sender],
                    RelayedEnvelope.client_message_id == client_message_id,
                )
            ).first()
            if prior is not None:
                if prior.digest != digest:
                    raise Replay(
                        "this message id was used for another envelope",
                        field="client_message_id",
                    )
                return EnvelopeReceipt(prior.cursor, prior.accepted_at, replayed=True)
            if self._head(tx.conn, recipient, ids[recipient], lock=True).closed:
                raise NotAllowed(
                    f"{recipient} no longer takes envelopes",
                    field="envelope.recipient",
                    reason="mailbox.closed",
                )
            usage = self._envelope_usage(tx, [ids[sender], ids[recipient]])
            size = len(payload)
            if rules is not None:
                usage[ids[sender]] = mailbox.charge_sent(
                    usage[ids[sender]], size, rules=rules, now=now
                )
                usage[ids[recipient]] = mailbox.charge_waiting(
                    usage[ids[recipient]], size, rules=rules
                )
            else:
                usage[ids[recipient]] = replace(
                    usage[ids[recipient]], waiting_bytes=usage[ids[recipient]].waiting_bytes + size
                )
            for party_id, counted in usage.items():
                self._store_envelope_usage(tx, party_id, counted)
            cursor = self.put(
                tx, {recipient: [(ItemKind.ENVELOPE, payload)]}, now, skip_closed=False
            )[recipient][0]
            tx.conn.execute(
                insert(RelayedEnvelope).values(
                    sender_id=ids[sender],
                    client_message_id=client_message_id,
                    digest=digest,
                    recipient_id=ids[recipient],
                    cursor=cursor,
                    accepted_at=now,
                )
            )
        return EnvelopeReceipt(cursor, now, replayed=False)

    # --- in a transaction of any repository ---------------------------------------

    def _head(
        self, conn: Connection, party: str, party_id: int | None, *, lock: bool = False
    ) -> MailboxState:
        if party_id is None:
            return MailboxState(party)
        query = select(MailboxHead.head_cursor, MailboxHead.acked_cursor, MailboxHead.closed).where(
            MailboxHead.party_id == party_id
        )
        if lock:
            query = query.with_for_update()
        row = conn.execute(query).one()
        return MailboxState(party, row.head_cursor, row.acked_cursor, row.closed)

    def require_open(self, tx: Tx, party: str, party_id: int) -> None:
        """``NotAllowed`` if the party's mailbox is closed: it was removed."""
        if self._head(tx.conn, party, party_id).closed:
            raise NotAllowed(f"{party} was removed from the covenant", reason="party.removed")

    def close(self, tx: Tx, party: str, party_id: int) -> None:
        """Close a party's mailbox and drop what it held (and the room its envelopes took)."""
        closed = mailbox.close(self._head(tx.conn, party, party_id, lock=True))
        tx.conn.execute(
            update(MailboxHead).where(MailboxHead.party_id == party_id).values(closed=closed.closed)
        )
        tx.conn.execute(delete(MailboxItem).where(MailboxItem.party_id == party_id))
        tx.conn.execute(delete(LatestNotice).where(LatestNotice.party_id == party_id))
        tx.conn.execute(delete(Resync).where(Resync.party_id == party_id))
        tx.conn.execute(
            update(PartyEnvelopeUsage)
            .where(PartyEnvelopeUsage.party_id == party_id)
            .values(waiting_bytes=0)
        )

    def _envelope_usage(self, tx: Tx, party_ids: Collection[int]) -> dict[int, EnvelopeUsage]:
        """The envelope quota counts of these parties, locked (PostgreSQL) in party id order:
        always after the mailbox head, so that these locks cannot deadlock."""
        rows = tx.conn.execute(
            select(
                PartyEnvelopeUsage.party_id,
                PartyEnvelopeUsage.day,
                PartyEnvelopeUsage.sent,
                PartyEnvelopeUsage.sent_bytes,
                PartyEnvelopeUsage.waiting_bytes,
            )
            .where(PartyEnvelopeUsage.party_id.in_(sorted(set(party_ids))))
            .order_by(PartyEnvelopeUsage.party_id)
            .with_for_update()
        ).all()
        found = {row[0]: EnvelopeUsage(*row[1:]) for row in rows}
        if len(found) != len(set(party_ids)):
            raise LookupError("envelope quota counts are missing")
        return found

    def _store_envelope_usage(self, tx: Tx, party_id: int, usage: EnvelopeUsage) -> None:
        tx.conn.execute(
            update(PartyEnvelopeUsage)
            .where(PartyEnvelopeUsage.party_id == party_id)
            .values(
                day=usage.day,
                sent=usage.sent,
                sent_bytes=usage.sent_bytes,
                waiting_bytes=usage.waiting_bytes,
            )
        )

    def _release_envelopes(self, tx: Tx, party_id: int, size: int) -> None:
        """Envelopes of ``size`` bytes left a party's mailbox: give their room back."""
        usage = self._envelope_usage(tx, [party_id])[party_id]
        self._store_envelope_usage(tx, party_id, mailbox.released(usage, size))

    def deliver(
        self,
        tx: Tx,
        by_party: dict[str, list[tuple[ItemKind, bytes]]],
        now: datetime,
        notices: Sequence[NoticeDraft] = (),
    ) -> tuple[str, ...]:
        """Put signed notices in their recipients' mailboxes; closed ones are skipped.
        ``notices`` are their drafts, in the order of each recipient's items: each notice
        is kept as its recipient's latest of its group too (:meth:`resync`)."""
        if not by_party:
            return ()
        delivered = self.put(tx, by_party, now, skip_closed=True)
        if notices:
            self._keep_latest(tx, {party: by_party[party] for party in delivered}, notices)
        return tuple(sorted(delivered))

    def _keep_latest(
        self,
        tx: Tx,
        by_party: Mapping[str, list[tuple[ItemKind, bytes]]],
        notices: Sequence[NoticeDraft],
    ) -> None:
        """Keep each signed notice as its recipient's latest of its group, unless a newer
        one is kept already (by the group's revision count, which grows with each change)."""
        drafts: dict[str, list[NoticeDraft]] = {}
        for draft in notices:
            drafts.setdefault(draft.recipient, []).append(draft)
        ids = self._db.ids(tx, by_party)
        latest: dict[tuple[int, bytes], tuple[int, bytes]] = {}
        for party, items in by_party.items():
            for draft, (_, payload) in zip(drafts.get(party, ()), items, strict=True):
                key = (ids[party], draft.group_id)
                if key not in latest or latest[key][0] < draft.revision:
                    latest[key] = (draft.revision, payload)
        if not latest:
            return
        statement = self._db.insert(LatestNotice)
        statement = statement.on_conflict_do_update(
            index_elements=["party_id", "group_id"],
            set_={"revision": statement.excluded.revision, "payload": statement.excluded.payload},
            where=statement.excluded.revision > LatestNotice.revision,
        )
        tx.conn.execute(
            statement,
            [
                {"party_id": party_id, "group_id": group_id, "revision": revision, "payload": body}
                for (party_id, group_id), (revision, body) in sorted(latest.items())
            ],
        )

    def forget_groups(self, tx: Tx, group_ids: Sequence[bytes]) -> int:
        """Drop the latest notices kept of these groups, for every party; returns how many."""
        result = tx.conn.execute(delete(LatestNotice).where(LatestNotice.group_id.in_(group_ids)))
        return int(result.rowcount)

    def resync(self, party: str, now: datetime) -> tuple[int, int]:
        """Put in a party's mailbox again its latest notice of every group it was told of
        (for a node restored from an older backup); returns how many, and the mailbox's
        head cursor after them. One transaction; ``NotAllowed`` if the mailbox is closed,
        ``QuotaExceeded`` (``quota.resync_pending``) while the party has not acknowledged
        the notices of its last resync: at most one copy waits in its mailbox."""
        check_party(party)
        now = utc(now)
        with self._db.write() as tx:
            party_id = self._db.ids(tx, [party])[party]
            state = self._head(tx.conn, party, party_id, lock=True)
            if state.closed:
                raise NotAllowed(f"{party} was removed from the covenant", reason="party.removed")
            previous = tx.conn.execute(
                select(Resync.head_cursor).where(Resync.party_id == party_id)
            ).scalar_one_or_none()
            if previous is not None and state.acked_cursor < previous:
                raise QuotaExceeded(
                    f"the notices of the last resync wait in the mailbox up to cursor {previous}"
                    f" ({state.acked_cursor} acknowledged): acknowledge them first",
                    field="party",
                    reason="quota.resync_pending",
                )
            payloads = list(
                tx.conn.execute(
                    select(LatestNotice.payload)
                    .where(LatestNotice.party_id == party_id)
                    .order_by(LatestNotice.revision, LatestNotice.group_id)
                ).scalars()
            )
            if payloads:
                self.put(
                    tx,
                    {party: [(ItemKind.HIT_NOTICE, bytes(p)) for p in payloads]},
                    now,
                    skip_closed=False,
                )
            head = self._head(tx.conn, party, party_id).head_cursor
            tx.conn.execute(delete(Resync).where(Resync.party_id == party_id))
            tx.conn.execute(
                insert(Resync).values(party_id=party_id, head_cursor=head, resynced_at=now)
            )
            self._db.audit(
                tx,
                [
                    AuditEvent(
                        AuditKind.HIT_NOTICE,
                        self._db.owner,
                        (),
                        {"party": party, "resent": len(payloads), "head_cursor": head},
                    )
                ],
                now,
            )
        return len(payloads), head

    def put(
        self,
        tx: Tx,
        items: dict[str, list[tuple[ItemKind, bytes]]],
        now: datetime,
        *,
        skip_closed: bool,
    ) -> dict[str, list[int]]:
        """Hand out cursors and store the items, in four statements whatever the number
        of parties; the heads are read (PostgreSQL: locked) in one statement, in party id
        order: a fixed order, so that row locks cannot deadlock."""
        ids = self._db.ids(tx, items)
        names = {ids[party]: party for party in items}
        wanted = sorted(names)
        driver = self._db.driver(tx)
        if self._db.postgres:
            heads = driver.execute(_PG_LOCK_HEADS, (wanted,)).fetchall()
        else:
            marks = ", ".join(["?"] * len(wanted))
            heads = driver.execute(_SQLITE_HEADS.format(marks), wanted).fetchall()
        if len(heads) != len(names):
            raise LookupError("a mailbox head is missing")
        enqueued_at = self._db.stamp(now)
        rows: list[tuple[Any, ...]] = []
        cursors: dict[str, list[int]] = {}
        moved: list[tuple[int, int]] = []
        for party_id, head_cursor, acked_cursor, closed in heads:
            party = names[party_id]
            state = MailboxState(party, head_cursor, acked_cursor, bool(closed))
            if state.closed and skip_closed:
                continue
            state, handed_out = mailbox.enqueue(state, len(items[party]))
            moved.append((party_id, state.head_cursor))
            cursors[party] = list(handed_out)
            rows.extend(
                (party_id, cursor, kind.value, payload, enqueued_at)
                for cursor, (kind, payload) in zip(handed_out, items[party], strict=True)
            )
        if not moved:  # else rows too: each party moved gets items
            return cursors
        if self._db.postgres:
            with driver.pipeline(), driver.cursor() as cursor:  # one round trip for all three
                cursor.execute(
                    _PG_MOVE_HEADS, ([party_id for party_id, _ in moved], [h for _, h in moved])
                )
                cursor.executemany(_PG_INSERT_ITEMS, rows)
                cursor.execute(_PG_NOTIFY, ([names[party_id] for party_id, _ in moved],))
        else:
            driver.executemany(_SQLITE_MOVE_HEAD, [(h, party_id) for party_id, h in moved])
            driver.executemany(_SQLITE_INSERT_ITEMS, rows)
        return cursors
