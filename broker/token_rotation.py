"""Rotating the OPRF key at the broker: readiness per party, and the switch of key epoch.

While a rotation is staged (the covenant's ``[next_key_epoch]``) the broker takes entries
of the staged epoch that re-state entries held under the current one (see
:meth:`TokenStore.submit`). :meth:`KeyRotation.status` tells, per party, its live refs
under the current epoch without a staged entry yet (0: ready); :meth:`KeyRotation.switch`
runs in the transaction that publishes the version making the staged epoch current:
it refuses unless every party is ready, carries the groups over by (party, ref)
(:func:`samenloop.broker.matching.map_switch`), delivers only real differences, deletes
the retired epoch's entries and open groups without notices and counts each party's
entries held afresh (docs/operations.md "Rotating the OPRF key").

On PostgreSQL the token index's prefix filter keeps the prefixes of the deleted tokens: a
filter may say "maybe" of a token that is not there (it only spares lookups), never "no"
of one that is; the partitioned ``token_entries`` table takes the DELETE as any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, delete, func, select, update

from samenloop.broker import matching
from samenloop.broker.database import BrokerDatabase, Tx, utc
from samenloop.broker.matching import Change, VisibilityRule
from samenloop.broker.models import HitGroup, Party, PartyUsage, TokenEntry
from samenloop.broker.token_index import Loaded
from samenloop.broker.token_store import SignNotice, TokenStore
from samenloop.policies.audit import AuditEvent, AuditKind
from samenloop.policies.errors import CovenantRejected

_CHUNK = 500


@dataclass(frozen=True, slots=True)
class SwitchResult:
    """A switch of the key epoch: the retired epoch's entries deleted, the groups carried
    over (or closed, or formed), and the parties told of real differences."""

    removed: int
    groups: int
    notified: tuple[str, ...] = ()
    notices: int = 0


class KeyRotation:
    """Readiness and the switch of key epoch, over the token store's tables."""

    def __init__(self, database: BrokerDatabase, tokens: TokenStore) -> None:
        self._db = database
        self._tokens = tokens

    def status(
        self, current: int, staged: int, now: datetime, parties: Sequence[str] = ()
    ) -> dict[str, int]:
        """Per party, its live refs under the ``current`` key epoch that have no entry under
        the ``staged`` one yet: what it has left to re-tokenise (0: ready). Every party
        in ``parties`` is listed, 0 if it holds nothing."""
        left = dict.fromkeys(parties, 0)
        with self._db.read() as conn:
            for name, count in conn.execute(_left_query(current, staged, utc(now))):
                left[str(name)] = int(count)
        return left

    def switch(
        self,
        tx: Tx,
        *,
        retired: int,
        current: int,
        parties: Sequence[str],
        min_parties: int,
        now: datetime,
        sign_notice: SignNotice,
        visibility: VisibilityRule,
    ) -> SwitchResult:
        """Make the staged key epoch ``current`` inside a covenant publish's transaction
        (see the module docstring); ``CovenantRejected`` (field ``key_epoch``, reason
        ``covenant.rotation_not_ready``, naming each party and its refs left) and nothing
        changed unless every party re-stated every live entry."""
        now = utc(now)
        conn = tx.conn
        left = {
            str(name): int(count)
            for name, count in conn.execute(_left_query(retired, current, now))
            if count
        }
        if left:
            raise CovenantRejected(
                f"the switch to key epoch {current} waits for every party to re-tokenise; "
                "live refs left: "
                + ", ".join(f"{party} {count}" for party, count in sorted(left.items())),
                field="key_epoch",
                reason="covenant.rotation_not_ready",
            )
        tokens_of: dict[int, list[bytes]] = {}
        for epoch in (retired, current):
            found = conn.execute(
                select(TokenEntry.token).where(TokenEntry.key_epoch == epoch).distinct()
            ).scalars()
            tokens_of[epoch] = sorted({bytes(token) for token in found})
        index = self._tokens.index
        old = index.load(tx, tokens_of[retired])
        staged = index.load(tx, tokens_of[current])
        mapped = matching.map_switch(
            [state for state in old.states if state.group is not None],
            staged.states,
            min_parties=min_parties,
            now=now,
            visibility=visibility,
        )
        for start in range(0, len(mapped.retired), _CHUNK):
            conn.execute(
                delete(HitGroup).where(
                    HitGroup.group_id.in_(mapped.retired[start : start + _CHUNK])
                )
            )
        deleted = conn.execute(delete(TokenEntry).where(TokenEntry.key_epoch == retired))
        removed = int(deleted.rowcount or 0)
        # Every group row of the switch is written anew (the rows it replaces are gone).
        index.apply(tx, Change(groups=mapped.change.groups), Loaded([], {}, set()), held={})
        ids = self._db.ids(tx, list(parties))
        counts: dict[int, int] = {
            int(party_id): int(count)
            for party_id, count in conn.execute(
                select(TokenEntry.party_id, func.count()).group_by(TokenEntry.party_id)
            )
        }
        for party in parties:
            conn.execute(
                update(PartyUsage)
                .where(PartyUsage.party_id == ids[party])
                .values(held=int(counts.get(ids[party], 0)))
            )
        notified = self._tokens.deliver(tx, mapped.change.notices, now, sign_notice)
        switched = AuditEvent(
            AuditKind.COVENANT_PUBLISHED,
            self._db.owner,
            (),
            {
                "key_epoch": current,
                "retired_key_epoch": retired,
                "removed": removed,
                "groups": len(mapped.change.groups),
                "notices": len(mapped.change.notices),
            },
        )
        self._db.audit(tx, [switched, *self._tokens.hit_events(mapped.change)], now)
        return SwitchResult(
            removed=removed,
            groups=len(mapped.change.groups),
            notified=notified,
            notices=len(mapped.change.notices),
        )

    def withdraw_staging(self, tx: Tx, *, staged: int, now: datetime) -> int:
        """Inside the transaction that publishes a version withdrawing (or, after a
        withdrawal, never listing) the staged key epoch ``staged``: delete its entries
        and its groups, telling nobody (nobody was told of them, and nobody's held count
        had them). Left behind they would be storage no quota counts, groups a later
        withdrawal would tell of, and refs counted as re-stated when the epoch is staged
        again under another key. Answers the entries deleted."""
        conn = tx.conn
        tokens = sorted(
            {
                bytes(token)
                for token in conn.execute(
                    select(TokenEntry.token).where(TokenEntry.key_epoch == staged).distinct()
                ).scalars()
            }
        )
        for start in range(0, len(tokens), _CHUNK):
            conn.execute(delete(HitGroup).where(HitGroup.token.in_(tokens[start : start + _CHUNK])))
        deleted = conn.execute(delete(TokenEntry).where(TokenEntry.key_epoch == staged))
        removed = int(deleted.rowcount or 0)
        withdrawn = AuditEvent(
            AuditKind.COVENANT_PUBLISHED,
            self._db.owner,
            (),
            {"staged_key_epoch_withdrawn": staged, "removed": removed},
        )
        self._db.audit(tx, [withdrawn], utc(now))
        return removed


def _left_query(current: int, staged: int, now: datetime) -> Select[str, int]:
    """Per party name, its live entries under ``current`` whose ref has no entry of its
    under ``staged`` (by the ref index: party, bucket and prefix, then the ref)."""
    current_entry = TokenEntry.__table__.alias("current_entry")
    staged_entry = TokenEntry.__table__.alias("staged_entry")
    restated = (
        select(staged_entry.c.id)
        .where(
            staged_entry.c.party_id == current_entry.c.party_id,
            staged_entry.c.ref_bucket == current_entry.c.ref_bucket,
            staged_entry.c.ref_prefix == current_entry.c.ref_prefix,
            staged_entry.c.signal_ref == current_entry.c.signal_ref,
            staged_entry.c.key_epoch == staged,
        )
        .exists()
    )
    return (
        select(Party.name, func.count())
        .select_from(current_entry.join(Party, Party.id == current_entry.c.party_id))
        .where(
            current_entry.c.key_epoch == current,
            current_entry.c.expires_at > now,
            ~restated,
        )
        .group_by(Party.name)
    )
