"""The covenant model: the parties, the broker, the OPRF key epoch and its holders,
and the ``Covenant`` that holds them with the signing section and the rules.

Frozen dataclasses that check every field on construction (``InvalidInput``
naming it) and the cross-field rules (distinct parties and keys, holders that are
parties, enough parties for a hit, an OPRF cap every holder can share), so that a
``Covenant`` that exists is a valid one, however it was made.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from samenloop.policies.certs import check_id
from samenloop.policies.covenant.attribute_key import (
    AttributeKey,
    open_attribute_key,
    sealed_attribute_key_bytes,
)
from samenloop.policies.covenant.fields import (
    ELEMENT_BYTES,
    KEY_BYTES,
    MAX_HOLDERS,
    MAX_PARTIES,
    MAX_UINT32,
    MAX_UINT63,
    check_address,
    check_bytes,
    check_name,
    check_pem,
    check_public_keys,
    check_time,
)
from samenloop.policies.crypto import PartyKeys, PublicKeys
from samenloop.policies.errors import InvalidInput, MessageTooLarge, NotAllowed
from samenloop.policies.policy import Policy, Role, Signing
from samenloop.policies.policy import check_int as _check_int

# --- the model -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Party:
    """A partner of the covenant: its id (also in its certificate), display name, role and keys.

    ``sealed_attribute_key`` is the covenant's attribute key of
    ``Covenant.attribute_key_version``, sealed to ``keys.x25519``
    (``deal_attribute_key`` fills it in; empty until then, and a covenant
    refuses a party without one). It sits in the party's own entry, so a
    party removed from the covenant takes no box of a later key with it.
    """

    id: str
    name: str
    role: Role
    keys: PublicKeys
    sealed_attribute_key: bytes = b""

    def __post_init__(self) -> None:
        check_id(self.id, field="id")
        check_name(self.name, field="name")
        if not isinstance(self.role, Role):
            raise InvalidInput(f"must be one of: {', '.join(Role)}", field="role")
        check_public_keys(self.keys, field="keys")
        if not isinstance(self.sealed_attribute_key, bytes):
            raise InvalidInput("must be bytes", field="sealed_attribute_key")


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    """The broker: its id (as in its certificate), its address, the key that signs hit notices."""

    id: str
    address: str
    ed25519: bytes

    def __post_init__(self) -> None:
        check_id(self.id, field="id")
        check_address(self.address, field="address")
        check_bytes(self.ed25519, KEY_BYTES, field="ed25519")


@dataclass(frozen=True, slots=True)
class KeyHolderSeat:
    """One key holder's seat in a key epoch: Shamir index, holding party, share commitment."""

    index: int
    party: str
    commitment: bytes

    def __post_init__(self) -> None:
        _check_int(self.index, 1, MAX_HOLDERS, field="index")
        check_id(self.party, field="party")
        check_bytes(self.commitment, ELEMENT_BYTES, field="commitment")


@dataclass(frozen=True, slots=True)
class OprfKeyEpoch:
    """The public side of one epoch of the covenant's OPRF key, as plain data.

    The node turns it into ``samenloop.node.tokens.threshold.KeyEpoch`` (with the
    covenant id), which also checks that the group key and commitments are
    valid ristretto255 elements on one polynomial.
    """

    epoch: int
    threshold: int
    group_public_key: bytes
    holders: tuple[KeyHolderSeat, ...]
    created_at: datetime
    retire_after: datetime

    def __post_init__(self) -> None:
        _check_int(self.epoch, 1, MAX_UINT32, field="epoch")
        if not isinstance(self.holders, tuple) or not self.holders:
            raise InvalidInput("list at least one key holder", field="holders")
        if len(self.holders) > MAX_HOLDERS:
            raise MessageTooLarge(f"at most {MAX_HOLDERS} key holders", field="holders")
        seen_parties: dict[str, int] = {}
        for i, seat in enumerate(self.holders):
            if not isinstance(seat, KeyHolderSeat):
                raise InvalidInput("must be a key holder seat", field=f"holders[{i}]")
            if i and seat.index <= self.holders[i - 1].index:
                raise InvalidInput(
                    "holders must be listed in ascending order of distinct indices",
                    field=f"holders[{i}].index",
                )
            if seat.party in seen_parties:
                raise InvalidInput(
                    f"party {seat.party!r} already holds seat holders[{seen_parties[seat.party]}]"
                    ": a party can hold only one share of a key",
                    field=f"holders[{i}].party",
                )
            seen_parties[seat.party] = i
        _check_int(self.threshold, 2, len(self.holders), field="threshold")
        check_bytes(self.group_public_key, ELEMENT_BYTES, field="group_public_key")
        check_time(self.created_at, field="created_at")
        check_time(self.retire_after, field="retire_after")
        if self.retire_after <= self.created_at:
            raise InvalidInput("must lie after created_at", field="retire_after")


@dataclass(frozen=True, slots=True)
class Covenant:
    """The plain (not yet signed) covenant. Construct it, or parse it with ``covenant_from_toml``.

    Every field is validated on construction; cross-field rules (distinct
    parties and keys, holders that are parties, enough parties for a hit) too.
    """

    id: str
    version: int
    broker: BrokerInfo
    parties: tuple[Party, ...]
    key_epoch: OprfKeyEpoch
    ca_certificate: bytes
    #: The version of the attribute key that every party's ``sealed_attribute_key`` holds.
    attribute_key_version: int
    valid_from: datetime
    valid_until: datetime
    signing: Signing
    policy: Policy
    #: The staged next epoch of the OPRF key (``key_epoch.epoch + 1``) while the
    #: nodes re-tokenise under it; ``covenant switch-key-epoch`` makes it current.
    next_key_epoch: OprfKeyEpoch | None = None

    def __post_init__(self) -> None:
        check_id(self.id, field="id")
        _check_int(self.version, 1, MAX_UINT63, field="version")
        check_time(self.valid_from, field="valid_from")
        check_time(self.valid_until, field="valid_until")
        if self.valid_until <= self.valid_from:
            raise InvalidInput("must lie after valid_from", field="valid_until")
        if not isinstance(self.signing, Signing):
            raise InvalidInput("must be the signing section", field="signing")
        if not isinstance(self.policy, Policy):
            raise InvalidInput("must be the covenant's rules", field="policy")
        _check_int(self.attribute_key_version, 1, MAX_UINT32, field="attribute_key_version")
        if not isinstance(self.broker, BrokerInfo):
            raise InvalidInput("must be the broker's entry", field="broker")
        if not isinstance(self.parties, tuple) or len(self.parties) < 2:
            raise InvalidInput("list at least two parties", field="parties")
        if len(self.parties) > MAX_PARTIES:
            # Hit notices list the members of a group: this bounds their size.
            raise MessageTooLarge(f"at most {MAX_PARTIES} parties", field="parties")
        ids: dict[str, int] = {}
        # The broker's key is no other key of the covenant: not a party's, and not the
        # timestamp key (whose statements the broker only relays).
        signing_keys: dict[bytes, str] = {
            self.broker.ed25519: "broker.ed25519",
            self.signing.timestamp_ed25519: "signing.timestamp_ed25519",
        }
        if self.broker.ed25519 == self.signing.timestamp_ed25519:
            raise InvalidInput(
                "the broker's key: the broker must not be able to sign covenant timestamps",
                field="signing.timestamp_ed25519",
            )
        sealing_keys: dict[bytes, str] = {}
        box_bytes = sealed_attribute_key_bytes(self.id)
        for i, party in enumerate(self.parties):
            at = f"parties[{i}]"
            if not isinstance(party, Party):
                raise InvalidInput("must be a party", field=at)
            if len(party.sealed_attribute_key) != box_bytes:
                raise InvalidInput(
                    f"must be the attribute key sealed to this party ({box_bytes} bytes): "
                    "'samenloop covenant add-party' and 'rotate-attribute-key' deal it",
                    field=f"{at}.sealed_attribute_key",
                )
            if party.id in ids:
                raise InvalidInput(
                    f"duplicate party id {party.id!r} (also parties[{ids[party.id]}])",
                    field=f"{at}.id",
                )
            if party.id == self.broker.id:
                raise InvalidInput(f"party id {party.id!r} is the broker's id", field=f"{at}.id")
            ids[party.id] = i
            for keys, key, name in (
                (signing_keys, party.keys.ed25519, "ed25519"),
                (sealing_keys, party.keys.x25519, "x25519"),
            ):
                if key in keys:
                    raise InvalidInput(
                        f"same key as {keys[key]}: every party needs its own keys",
                        field=f"{at}.keys.{name}",
                    )
                keys[key] = f"{at}.keys.{name}"
        _check_int(self.min_parties, 2, len(self.parties), field="matching.min_parties")
        if not isinstance(self.key_epoch, OprfKeyEpoch):
            raise InvalidInput("must be a key epoch", field="key_epoch")
        self._check_epoch(self.key_epoch, ids, field="key_epoch")
        if self.next_key_epoch is not None:
            if not isinstance(self.next_key_epoch, OprfKeyEpoch):
                raise InvalidInput("must be a key epoch", field="next_key_epoch")
            if self.next_key_epoch.epoch != self.key_epoch.epoch + 1:
                raise InvalidInput(
                    f"must be epoch {self.key_epoch.epoch + 1}, the one after key_epoch",
                    field="next_key_epoch.epoch",
                )
            if self.next_key_epoch.group_public_key == self.key_epoch.group_public_key:
                raise InvalidInput(
                    "same group key as key_epoch: deal a fresh key", field="next_key_epoch"
                )
            self._check_epoch(self.next_key_epoch, ids, field="next_key_epoch")
        check_pem(self.ca_certificate, field="ca_certificate")

    def _check_epoch(self, epoch: OprfKeyEpoch, ids: dict[str, int], *, field: str) -> None:
        for i, seat in enumerate(epoch.holders):
            if seat.party not in ids:
                raise InvalidInput(
                    f"{seat.party!r} is not a party of this covenant",
                    field=f"{field}.holders[{i}].party",
                )
        # Each holder enforces a share of the OPRF cap (rules.oprf_allowance): a share of 0
        # would leave a party no token at all.
        smallest = self.policy.quotas.smallest_oprf_cap(
            threshold=epoch.threshold, holders=len(epoch.holders)
        )
        if self.policy.quotas.oprf_evaluations_per_day < smallest:
            raise InvalidInput(
                f"at least {smallest} with {len(epoch.holders)} key holders at threshold "
                f"{epoch.threshold}" + ("" if field == "key_epoch" else f" ({field})") + ": "
                "each holder allows a party a share of the cap, "
                "and a smaller cap leaves a share of 0",
                field="quotas.oprf_evaluations_per_day",
            )

    # Lookups.

    def party(self, party_id: str) -> Party:
        """The party with this id; ``NotAllowed`` (field ``party``) if the covenant has none."""
        for party in self.parties:
            if party.id == party_id:
                return party
        raise NotAllowed(
            f"{party_id!r} is not a party of covenant {self.id} version {self.version}",
            field="party",
            reason="covenant.unknown_party",
        )

    def is_party(self, party_id: str) -> bool:
        return any(party.id == party_id for party in self.parties)

    def public_keys(self, party_id: str) -> PublicKeys:
        """A party's public keys; ``NotAllowed`` for a party the covenant does not list."""
        return self.party(party_id).keys

    def attribute_key_for(self, party_keys: PartyKeys) -> AttributeKey:
        """Open the attribute key this covenant deals to ``party_keys``' party.

        ``NotAllowed`` if the covenant does not list the party;
        ``DecryptionFailed`` or ``InvalidInput`` (field
        ``parties[i].sealed_attribute_key``) if its box was not sealed to
        these keys or holds another covenant's or version's key.
        """
        for i, party in enumerate(self.parties):
            if party.id == party_keys.party:
                return open_attribute_key(
                    party_keys,
                    party.sealed_attribute_key,
                    covenant_id=self.id,
                    version=self.attribute_key_version,
                    field=f"parties[{i}].sealed_attribute_key",
                )
        self.party(party_keys.party)  # raises NotAllowed
        raise AssertionError("unreachable")

    def holder_seats_for(self, party_id: str) -> tuple[KeyHolderSeat, ...]:
        """The key-holder seats that ``party_id`` holds in the current key epoch (maybe none)."""
        return tuple(seat for seat in self.key_epoch.holders if seat.party == party_id)

    @property
    def live_epochs(self) -> tuple[OprfKeyEpoch, ...]:
        """The key epochs holders serve: the current one, then the staged one if any."""
        if self.next_key_epoch is None:
            return (self.key_epoch,)
        return (self.key_epoch, self.next_key_epoch)

    def live_epoch(self, epoch: int) -> OprfKeyEpoch | None:
        """The current or staged key epoch numbered ``epoch``; None for any other."""
        return next((e for e in self.live_epochs if e.epoch == epoch), None)

    def seats_in_live_epochs(self, party_id: str) -> tuple[tuple[int, KeyHolderSeat], ...]:
        """(epoch, seat) of every seat ``party_id`` holds in the current and staged epochs."""
        return tuple(
            (epoch.epoch, seat)
            for epoch in self.live_epochs
            for seat in epoch.holders
            if seat.party == party_id
        )

    @property
    def party_ids(self) -> frozenset[str]:
        return frozenset(party.id for party in self.parties)

    @property
    def min_parties(self) -> int:
        """The minimum number of distinct parties whose tokens form a hit."""
        return self.policy.matching.min_parties

    def role_of(self, party_id: str) -> Role:
        return self.party(party_id).role

    def covers(self, now: datetime) -> bool:
        """Whether ``now`` lies in the covenant's validity period [valid_from, valid_until)."""
        return self.valid_from <= now < self.valid_until
