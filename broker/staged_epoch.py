"""What a staged key epoch adds to the token store: the broker's own lane for the tokens
of every epoch after the first, the rule that a staged batch only re-states what a party
holds, and the check that a call still acts under the newest covenant version.

Split from :mod:`token_store` (which uses all three) so that module stays one screenful of
capability; see docs/operations.md "Rotating the OPRF key".
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from sqlalchemy import func, select

from samenloop.broker import matching
from samenloop.broker.database import BrokerDatabase, Tx, utc
from samenloop.broker.matching import Entry
from samenloop.broker.models import BrokerSecret, CovenantVersion
from samenloop.broker.token_index import TokenIndex
from samenloop.policies import crypto
from samenloop.policies.errors import InvalidInput, Unavailable


class TokenLanes:
    """The broker's keyed lane per key epoch (the key read once, from migration 0010)."""

    def __init__(self, database: BrokerDatabase) -> None:
        self._db = database
        self._lane_key: bytes | None = None

    def held_token(self, key_epoch: int, token: bytes) -> bytes:
        """The token as the broker holds it: the first key epoch's as sent, every later
        epoch's as HMAC-SHA256 under the broker's own ``token_lane`` key (migration 0010)
        of the epoch and the token. No party holds that key, so no value it sends under
        one epoch can meet a token held under another: a refusal of another epoch's token
        (``token.other_epoch``) cannot tell it whether anyone holds a guessed subject, nor
        can it take a value another party will send under its own epoch. Equal tokens of
        one epoch stay equal. ``SubmitTokens`` passes every token through this; a token
        of the wrong size is left as it is, for the batch's checks to name."""
        if key_epoch <= 1 or len(token) != matching.TOKEN_BYTES:
            return token
        if self._lane_key is None:
            with self._db.read() as conn:
                self._lane_key = bytes(
                    conn.execute(
                        select(BrokerSecret.value).where(BrokerSecret.name == "token_lane")
                    ).scalar_one()
                )
        return crypto.mac(self._lane_key, b"samenloop token lane\0%d\0" % key_epoch + token)


def newest_version(tx: Tx) -> int | None:
    """The newest covenant version published (None: only the root covenant)."""
    newest = tx.conn.execute(select(func.max(CovenantVersion.version))).scalar_one()
    return None if newest is None else int(newest)


def check_restated(
    index: TokenIndex, tx: Tx, batch: matching.Batch, party_id: int, now: datetime
) -> matching.Batch:
    """A staged-epoch batch re-states refs the party holds live under the current
    epoch, each with one token, and is kept no longer than they are: the staged epoch
    adds nothing to what a party holds. Answers the batch with each entry's expiry
    capped at the latest of its ref's current entries (an honest node sends its
    signal's, the same)."""
    current = batch.key_epoch - 1
    refs = [e.signal_ref for e in batch.entries]
    held = index.live_by_ref(tx, party_id, refs, current, now)
    staged = index.tokens_by_ref(tx, party_id, refs, batch.key_epoch)
    capped: list[Entry] = []
    for entry, position in zip(batch.entries, batch.positions, strict=True):
        if entry.signal_ref not in held:
            raise InvalidInput(
                f"the staged key epoch {batch.key_epoch} only re-states entries held "
                f"under key epoch {current}: this ref has none (submit it under "
                f"{current} first)",
                field=f"entries[{position}].signal_ref",
                reason="token.not_restated",
            )
        held_tokens, latest = held[entry.signal_ref]
        tokens = staged.setdefault(entry.signal_ref, set())
        tokens.add(entry.token)
        if len(tokens) > len(held_tokens):
            raise InvalidInput(
                f"this ref is re-stated under key epoch {batch.key_epoch} already, with "
                "another token",
                field=f"entries[{position}].signal_ref",
                reason="token.restated_twice",
            )
        latest = utc(latest)
        capped.append(entry if entry.expires_at <= latest else replace(entry, expires_at=latest))
    return replace(batch, entries=tuple(capped))


def check_version(checked: int | None, newest: int | None) -> None:
    """``Unavailable`` if a covenant version newer than the one a call was ``checked``
    against was published (by this broker while the call waited for the matching lock,
    or by another replica that this one has not heard yet): its key epoch, staged
    epoch or parties may differ. Read under the matching lock, which a publish holds."""
    if checked is None or newest is None or newest <= checked:
        return
    raise Unavailable(
        f"covenant version {newest} was published after this call was checked against "
        f"version {checked}: try again",
        field="covenant_version",
        reason="covenant.changed",
    )
