"""The covenant: who takes part, with which keys, under which rules.

TOML listing the covenant's id, version and validity period, its signers
(``[signing]``), the parties (id, name, role, Ed25519 and X25519 public keys),
the broker (id, address, the Ed25519 key that signs hit notices), the
covenant CA's certificate, the OPRF key epoch with its key holders, the
version of the covenant-wide attribute key, and the rules
(``samenloop.policies.policy``: identifier types, categories, purposes,
matching, visibility, release, retention, quotas). ``covenant_from_toml``
parses it at the boundary into frozen dataclasses with validated fields;
every error is ``InvalidInput`` naming the offending field by its dotted path
(``parties[2].keys.x25519``, ``release[1].purpose``; list positions count from
0, as in every field path of the protocol).

``covenant_to_toml`` writes it back deterministically: the same covenant
always gives the same bytes, and parsing those bytes gives the same covenant.
These are the canonical bytes that signers sign (``samenloop.policies.trust``):
verifiers check the signatures over the bytes they received and only then
parse them.

The attribute key: a covenant-wide 32-byte secretbox key that every party
holds and the broker does not. Nodes seal a token entry's
``MemberAttributes`` (its category) with it; the broker stores the
``SecretBox`` and passes it on in hit notices without being able to read it.
It travels in the covenant itself: each party's entry carries the key of
``attribute_key_version`` in a NaCl sealed box to that party's X25519 key
(``sealed_attribute_key``, framed with the covenant id and key version), so
a new key reaches running nodes with the signed version that deals it, and
the broker, which relays it, cannot open it. ``deal_attribute_key`` deals a
fresh version (whoever runs it knows the key while it runs, as the dealer of
the OPRF key does); a version that removes a party must deal one (checked by
``samenloop.policies.trust``). A node keeps every version it was dealt in an
:class:`AttributeKeyRing`: it seals with the version of the covenant held
and opens a box with the version the box names, so old notices stay
readable, while a removed party, which is dealt no later version, cannot
open boxes sealed after its removal.

Sans-IO apart from ``load_covenant``; imports neither grpc nor a database, and
not ``samenloop.node``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import struct
import threading
import tomllib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from samenloop.policies import certs, crypto
from samenloop.policies.certs import check_id
from samenloop.policies.crypto import PartyKeys, PublicKeys
from samenloop.policies.errors import (
    ConfigurationError,
    DecryptionFailed,
    InvalidInput,
    MessageTooLarge,
    NotAllowed,
    SamenloopError,
)
from samenloop.policies.policy import (
    DEFAULT_ENVELOPE_BYTES_PER_DAY,
    DEFAULT_ENVELOPE_BYTES_WAITING,
    DEFAULT_ENVELOPES_PER_DAY,
    DEFAULT_FRESHNESS_SECONDS,
    DEFAULT_HIT_NOTICE_BYTES_PER_DAY,
    DEFAULT_TOKEN_ENTRIES_HELD,
    DEFAULT_TOKEN_ENTRIES_PER_DAY,
    CaseRules,
    Level,
    Matching,
    PictureRules,
    Policy,
    Purpose,
    Quotas,
    ReleaseRule,
    Retention,
    Role,
    Signer,
    Signing,
    VisibilityRule,
)
from samenloop.policies.policy import (
    check_int as _check_int,
)
from samenloop.v1 import common_pb2

__all__ = [
    "AttributeKey",
    "AttributeKeyRing",
    "BrokerInfo",
    "Covenant",
    "KeyHolderSeat",
    "OprfKeyEpoch",
    "Party",
    "Role",
    "check_address",
    "check_id",
    "covenant_from_toml",
    "covenant_to_toml",
    "deal_attribute_key",
    "load_covenant",
    "new_attribute_key",
    "open_attribute_key",
    "open_attributes",
    "parse_address",
    "seal_attribute_key_for",
    "seal_attributes",
    "sealed_attribute_key_bytes",
    "toml_literal",
    "with_new_attribute_key",
]

KIND = "samenloop.covenant.v1"

MAX_HOLDERS: int = common_pb2.LIMITS_MAX_KEY_HOLDERS
MAX_PARTIES: int = common_pb2.LIMITS_MAX_PARTIES
KEY_BYTES: int = common_pb2.LIMITS_KEY_BYTES
ELEMENT_BYTES: int = common_pb2.LIMITS_ELEMENT_BYTES
MAX_NAME_BYTES = 256
MAX_UINT32 = 2**32 - 1
MAX_UINT63 = 2**63 - 1  # TOML integers are signed 64-bit

_E = TypeVar("_E", bound=SamenloopError)
_T = TypeVar("_T")


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
        _check_name(self.name, field="name")
        if not isinstance(self.role, Role):
            raise InvalidInput(f"must be one of: {', '.join(Role)}", field="role")
        _check_public_keys(self.keys, field="keys")
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
        _check_bytes(self.ed25519, KEY_BYTES, field="ed25519")


@dataclass(frozen=True, slots=True)
class KeyHolderSeat:
    """One key holder's seat in a key epoch: Shamir index, holding party, share commitment."""

    index: int
    party: str
    commitment: bytes

    def __post_init__(self) -> None:
        _check_int(self.index, 1, MAX_HOLDERS, field="index")
        check_id(self.party, field="party")
        _check_bytes(self.commitment, ELEMENT_BYTES, field="commitment")


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
        _check_bytes(self.group_public_key, ELEMENT_BYTES, field="group_public_key")
        _check_time(self.created_at, field="created_at")
        _check_time(self.retire_after, field="retire_after")
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

    def __post_init__(self) -> None:
        check_id(self.id, field="id")
        _check_int(self.version, 1, MAX_UINT63, field="version")
        _check_time(self.valid_from, field="valid_from")
        _check_time(self.valid_until, field="valid_until")
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
        for i, seat in enumerate(self.key_epoch.holders):
            if seat.party not in ids:
                raise InvalidInput(
                    f"{seat.party!r} is not a party of this covenant",
                    field=f"key_epoch.holders[{i}].party",
                )
        # Each holder enforces a share of the OPRF cap (rules.oprf_allowance): a share of 0
        # would leave a party no token at all.
        smallest = self.policy.quotas.smallest_oprf_cap(
            threshold=self.key_epoch.threshold, holders=len(self.key_epoch.holders)
        )
        if self.policy.quotas.oprf_evaluations_per_day < smallest:
            raise InvalidInput(
                f"at least {smallest} with {len(self.key_epoch.holders)} key holders at threshold "
                f"{self.key_epoch.threshold}: each holder allows a party a share of the cap, "
                "and a smaller cap leaves a share of 0",
                field="quotas.oprf_evaluations_per_day",
            )
        _check_pem(self.ca_certificate, field="ca_certificate")

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


# --- TOML in -----------------------------------------------------------------------


def load_covenant(path: Path) -> Covenant:
    """Read and parse a covenant file; ``ConfigurationError`` if it cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigurationError(
            f"cannot read covenant {path}: {error.strerror}", field=str(path)
        ) from error
    return covenant_from_toml(data, source=str(path))


def covenant_from_toml(data: bytes, *, source: str) -> Covenant:
    """Parse a covenant file. Every error is ``InvalidInput`` naming the field's dotted path."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise InvalidInput(f"{source} is not UTF-8 text", reason="covenant.syntax") from error
    except tomllib.TOMLDecodeError as error:
        raise InvalidInput(f"{source} is not valid TOML: {error}", reason="covenant.syntax") from (
            error
        )
    top = _Table(doc, "")
    kind = top.string("kind")
    if kind != KIND:
        raise InvalidInput(f"{source} is not a covenant: expected {KIND!r}", field="kind")
    covenant_id = top.string("id")
    version = top.integer("version")
    valid_from = top.time("valid_from")
    valid_until = top.time("valid_until")
    attribute_key_version = top.integer("attribute_key_version")
    ca_certificate = top.string("ca_certificate").replace("\r\n", "\n").encode("ascii", "replace")

    broker_table = top.table("broker")
    broker = broker_table.build(
        BrokerInfo,
        id=broker_table.string("id"),
        address=broker_table.string("address"),
        ed25519=broker_table.key("ed25519", KEY_BYTES),
    )

    parties = []
    for table in top.tables("parties"):
        keys_table = table.table("keys")
        keys = PublicKeys(
            ed25519=keys_table.key("ed25519", KEY_BYTES), x25519=keys_table.key("x25519", KEY_BYTES)
        )
        keys_table.done()
        party = table.build(
            Party,
            id=table.string("id"),
            name=table.string("name"),
            role=table.role("role"),
            keys=keys,
            sealed_attribute_key=table.base64(
                "sealed_attribute_key",
                missing="missing: 'samenloop covenant add-party' adds a party with the "
                "attribute key sealed to it",
            ),
        )
        parties.append(party)

    epoch_table = top.table("key_epoch")
    holders = [
        table.build(
            KeyHolderSeat,
            index=table.integer("index"),
            party=table.string("party"),
            commitment=table.key("commitment", ELEMENT_BYTES),
        )
        for table in epoch_table.tables("holders")
    ]
    key_epoch = epoch_table.build(
        OprfKeyEpoch,
        epoch=epoch_table.integer("epoch"),
        threshold=epoch_table.integer("threshold"),
        group_public_key=epoch_table.key("group_public_key", ELEMENT_BYTES),
        holders=tuple(holders),
        created_at=epoch_table.time("created_at"),
        retire_after=epoch_table.time("retire_after"),
    )
    signing = _read_signing(top.table("signing"))
    policy = _read_policy(top)
    top.done()

    return top.build(
        Covenant,
        id=covenant_id,
        version=version,
        broker=broker,
        parties=tuple(parties),
        key_epoch=key_epoch,
        ca_certificate=ca_certificate,
        attribute_key_version=attribute_key_version,
        valid_from=valid_from,
        valid_until=valid_until,
        signing=signing,
        policy=policy,
    )


def _read_signing(table: _Table) -> Signing:
    signers = tuple(
        t.build(
            Signer, id=t.string("id"), name=t.string("name"), ed25519=t.key("ed25519", KEY_BYTES)
        )
        for t in table.tables("signers")
    )
    return table.build(
        Signing,
        threshold=table.integer("threshold"),
        signers=signers,
        timestamp_ed25519=table.key(
            "timestamp_ed25519",
            KEY_BYTES,
            missing="missing: the Ed25519 public key of the covenant's timestamp role "
            "('samenloop covenant signer-keygen --id timestamp' makes one)",
        ),
        freshness_seconds=table.integer("freshness_seconds", default=DEFAULT_FRESHNESS_SECONDS),
    )


def _read_policy(top: _Table) -> Policy:
    """The rule sections, read from the covenant's top level."""
    purposes = tuple(
        t.build(Purpose, id=t.string("id"), description=t.string("description"))
        for t in top.tables("purposes")
    )
    matching_table = top.table("matching")
    matching = matching_table.build(
        Matching,
        min_parties=matching_table.integer("min_parties"),
        identifier_types=matching_table.strings("identifier_types"),
    )
    visibility = tuple(
        t.build(
            VisibilityRule,
            role=t.role("role"),
            level=t.level("level"),
            hidden_roles=tuple(t.roles("hidden_roles", default=())),
            coordinator=t.boolean("coordinator", default=False),
        )
        for t in top.tables("visibility")
    )
    release = tuple(
        t.build(
            ReleaseRule,
            role=t.role("role"),
            category=t.string("category"),
            purpose=t.string("purpose"),
            fields=t.strings("fields"),
            four_eyes=t.boolean("four_eyes", default=False),
            max_per_period=t.integer("max_per_period", default=0),
            period_days=t.integer("period_days", default=30),
        )
        for t in top.tables("release", default=[])
    )
    retention_table = top.table("retention")
    per_category = retention_table.table("categories", default={})
    retention = retention_table.build(
        Retention,
        default_days=retention_table.integer("default_days"),
        categories=tuple((name, per_category.integer(name)) for name in per_category.names()),
    )
    per_category.done()
    quotas_table = top.table("quotas")
    quotas = quotas_table.build(
        Quotas,
        oprf_evaluations_per_day=quotas_table.integer("oprf_evaluations_per_day"),
        disclosure_requests_per_day=quotas_table.integer("disclosure_requests_per_day"),
        token_entries_per_day=quotas_table.integer(
            "token_entries_per_day", default=DEFAULT_TOKEN_ENTRIES_PER_DAY
        ),
        token_entries_held=quotas_table.integer(
            "token_entries_held", default=DEFAULT_TOKEN_ENTRIES_HELD
        ),
        hit_notice_bytes_per_day=quotas_table.integer(
            "hit_notice_bytes_per_day", default=DEFAULT_HIT_NOTICE_BYTES_PER_DAY
        ),
        envelopes_per_day=quotas_table.integer(
            "envelopes_per_day", default=DEFAULT_ENVELOPES_PER_DAY
        ),
        envelope_bytes_per_day=quotas_table.integer(
            "envelope_bytes_per_day", default=DEFAULT_ENVELOPE_BYTES_PER_DAY
        ),
        envelope_bytes_waiting=quotas_table.integer(
            "envelope_bytes_waiting", default=DEFAULT_ENVELOPE_BYTES_WAITING
        ),
    )
    picture_table = top.table("picture")
    picture = picture_table.build(
        PictureRules,
        viewers=picture_table.roles("viewers"),
        min_cell_count=picture_table.integer("min_cell_count"),
        epsilon_per_period=picture_table.number("epsilon_per_period"),
        epsilon_per_request=picture_table.number("epsilon_per_request"),
        classification=picture_table.string("classification", default=""),
        aggregator=picture_table.optional_role("aggregator"),
        min_contributors=picture_table.integer("min_contributors", default=2),
        min_cell_contributors=picture_table.integer("min_cell_contributors", default=1),
        dominance_share=picture_table.number("dominance_share", default=1.0),
        areas=picture_table.strings("areas", default=()),
        branches=picture_table.strings("branches", default=()),
    )
    cases_table = top.table("cases")
    cases = cases_table.build(CaseRules, coordinators=cases_table.roles("coordinators"))
    with _at(""):
        return Policy(
            identifier_types=top.strings("identifier_types"),
            categories=top.strings("categories"),
            detail_fields=top.strings("detail_fields", default=()),
            purposes=purposes,
            matching=matching,
            visibility=visibility,
            release=release,
            retention=retention,
            quotas=quotas,
            picture=picture,
            cases=cases,
        )


_MISSING = object()


class _Table:
    """A TOML table being read: typed getters that name the field, and a check for unknown keys."""

    def __init__(self, doc: dict[str, Any], path: str) -> None:
        self._doc = doc
        self._path = path
        self._read: set[str] = set()

    def _field(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _get(self, key: str, default: object = _MISSING, *, missing: str = "missing") -> object:
        self._read.add(key)
        if key not in self._doc:
            if default is not _MISSING:
                return default
            raise InvalidInput(missing, field=self._field(key))
        return self._doc[key]

    def names(self) -> list[str]:
        return list(self._doc)

    def string(self, key: str, *, missing: str = "missing", default: str | None = None) -> str:
        value = self._get(key, _MISSING if default is None else default, missing=missing)
        if not isinstance(value, str):
            raise InvalidInput("must be a string", field=self._field(key))
        return value

    def integer(self, key: str, default: int | None = None) -> int:
        value = self._get(key, _MISSING if default is None else default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput("must be an integer", field=self._field(key))
        return value

    def number(self, key: str, default: float | None = None) -> float:
        value = self._get(key, _MISSING if default is None else default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput("must be a number", field=self._field(key))
        return float(value)

    def boolean(self, key: str, default: bool | None = None) -> bool:
        value = self._get(key, _MISSING if default is None else default)
        if not isinstance(value, bool):
            raise InvalidInput("must be true or false", field=self._field(key))
        return value

    def strings(self, key: str, default: tuple[str, ...] | None = None) -> tuple[str, ...]:
        value = self._get(key, _MISSING if default is None else list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidInput("must be a list of strings", field=self._field(key))
        return tuple(value)

    def roles(self, key: str, default: tuple[Role, ...] | None = None) -> tuple[Role, ...]:
        texts = self.strings(key, None if default is None else tuple(r.value for r in default))
        try:
            return tuple(Role(text) for text in texts)
        except ValueError as error:
            raise InvalidInput(
                f"must list roles among: {', '.join(Role)}", field=self._field(key)
            ) from error

    def optional_role(self, key: str) -> Role | None:
        """A role, or None where the key is absent or empty."""
        text = self._get(key, "")
        if text == "":
            return None
        if not isinstance(text, str):
            raise InvalidInput("must be a string", field=self._field(key))
        try:
            return Role(text)
        except ValueError as error:
            raise InvalidInput(
                f"must be a role among: {', '.join(Role)}", field=self._field(key)
            ) from error

    def level(self, key: str) -> Level:
        text = self.string(key)
        try:
            return Level(text)
        except ValueError as error:
            raise InvalidInput(
                f"must be one of: {', '.join(Level)}", field=self._field(key)
            ) from error

    def key(self, key: str, length: int, *, missing: str = "missing") -> bytes:
        text = self.string(key, missing=missing)
        try:
            return crypto.b64decode(text, length)
        except ValueError as error:
            raise InvalidInput(
                f"must be standard base64 of {length} bytes", field=self._field(key)
            ) from error

    def base64(self, key: str, *, missing: str = "missing") -> bytes:
        """Standard base64 of any length (the model checks the length it needs)."""
        text = self.string(key, missing=missing)
        try:
            return crypto.b64decode(text)
        except ValueError as error:
            raise InvalidInput("must be standard base64", field=self._field(key)) from error

    def time(self, key: str) -> datetime:
        value = self._get(key)
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise InvalidInput(
                "must be a date-time with an offset, like 2026-01-01T00:00:00Z",
                field=self._field(key),
            )
        return value.astimezone(UTC)

    def role(self, key: str) -> Role:
        text = self.string(key)
        try:
            return Role(text)
        except ValueError as error:
            raise InvalidInput(
                f"must be one of: {', '.join(Role)}", field=self._field(key)
            ) from error

    def table(self, key: str, default: dict[str, Any] | None = None) -> _Table:
        value = self._get(key, _MISSING if default is None else default)
        if not isinstance(value, dict):
            raise InvalidInput("must be a table", field=self._field(key))
        return _Table(value, self._field(key))

    def tables(self, key: str, default: list[Any] | None = None) -> list[_Table]:
        value = self._get(key, _MISSING if default is None else default)
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise InvalidInput("must be an array of tables", field=self._field(key))
        return [_Table(v, f"{self._field(key)}[{i}]") for i, v in enumerate(value)]

    def build(self, cls: Callable[..., _T], **values: object) -> _T:
        """Construct ``cls`` from values read from this table, errors prefixed with its path."""
        with _at(self._path):
            built = cls(**values)
        self.done()
        return built

    def done(self) -> None:
        unknown = sorted(set(self._doc) - self._read)
        if unknown:
            raise InvalidInput("unknown key", field=self._field(unknown[0]))


@contextmanager
def _at(prefix: str) -> Iterator[None]:
    """Re-raise validation errors of a nested value with their full dotted path."""
    try:
        yield
    except SamenloopError as error:
        raise _prefixed(error, prefix) from error


def _prefixed(error: _E, prefix: str) -> _E:
    if not prefix:
        return error
    field = f"{prefix}.{error.field}" if error.field else prefix
    return type(error)(error.message, field=field, reason=error.reason)


# --- TOML out ----------------------------------------------------------------------


def covenant_to_toml(covenant: Covenant) -> bytes:
    """The covenant as TOML: deterministic, and parsed back to an equal ``Covenant``."""
    policy = covenant.policy
    lines = [
        f"kind = {toml_literal(KIND)}",
        f"id = {toml_literal(covenant.id)}",
        f"version = {toml_literal(covenant.version)}",
        f"valid_from = {toml_literal(covenant.valid_from)}",
        f"valid_until = {toml_literal(covenant.valid_until)}",
        f"attribute_key_version = {toml_literal(covenant.attribute_key_version)}",
        f"identifier_types = {toml_literal(policy.identifier_types)}",
        f"categories = {toml_literal(policy.categories)}",
        f"detail_fields = {toml_literal(policy.detail_fields)}",
        f"ca_certificate = '''\n{covenant.ca_certificate.decode('ascii')}'''",
        "",
        "[signing]",
        f"threshold = {toml_literal(covenant.signing.threshold)}",
        f"timestamp_ed25519 = {toml_literal(crypto.b64encode(covenant.signing.timestamp_ed25519))}",
        f"freshness_seconds = {toml_literal(covenant.signing.freshness_seconds)}",
    ]
    for signer in covenant.signing.signers:
        lines += [
            "",
            "[[signing.signers]]",
            f"id = {toml_literal(signer.id)}",
            f"name = {toml_literal(signer.name)}",
            f"ed25519 = {toml_literal(crypto.b64encode(signer.ed25519))}",
        ]
    lines += [
        "",
        "[broker]",
        f"id = {toml_literal(covenant.broker.id)}",
        f"address = {toml_literal(covenant.broker.address)}",
        f"ed25519 = {toml_literal(crypto.b64encode(covenant.broker.ed25519))}",
    ]
    for party in covenant.parties:
        lines += [
            "",
            "[[parties]]",
            f"id = {toml_literal(party.id)}",
            f"name = {toml_literal(party.name)}",
            f"role = {toml_literal(party.role.value)}",
            f"sealed_attribute_key = {toml_literal(crypto.b64encode(party.sealed_attribute_key))}",
            "",
            "[parties.keys]",
            f"ed25519 = {toml_literal(crypto.b64encode(party.keys.ed25519))}",
            f"x25519 = {toml_literal(crypto.b64encode(party.keys.x25519))}",
        ]
    epoch = covenant.key_epoch
    lines += [
        "",
        "[key_epoch]",
        f"epoch = {toml_literal(epoch.epoch)}",
        f"threshold = {toml_literal(epoch.threshold)}",
        f"group_public_key = {toml_literal(crypto.b64encode(epoch.group_public_key))}",
        f"created_at = {toml_literal(epoch.created_at)}",
        f"retire_after = {toml_literal(epoch.retire_after)}",
    ]
    for seat in epoch.holders:
        lines += [
            "",
            "[[key_epoch.holders]]",
            f"index = {toml_literal(seat.index)}",
            f"party = {toml_literal(seat.party)}",
            f"commitment = {toml_literal(crypto.b64encode(seat.commitment))}",
        ]
    lines += _policy_lines(policy)
    return ("\n".join(lines) + "\n").encode("utf-8")


def _policy_lines(policy: Policy) -> list[str]:
    lines: list[str] = []
    for purpose in policy.purposes:
        lines += [
            "",
            "[[purposes]]",
            f"id = {toml_literal(purpose.id)}",
            f"description = {toml_literal(purpose.description)}",
        ]
    lines += [
        "",
        "[matching]",
        f"min_parties = {toml_literal(policy.matching.min_parties)}",
        f"identifier_types = {toml_literal(policy.matching.identifier_types)}",
    ]
    for rule in policy.visibility:
        lines += [
            "",
            "[[visibility]]",
            f"role = {toml_literal(rule.role.value)}",
            f"level = {toml_literal(rule.level.value)}",
            f"hidden_roles = {toml_literal(tuple(r.value for r in rule.hidden_roles))}",
            f"coordinator = {toml_literal(rule.coordinator)}",
        ]
    for release in policy.release:
        lines += [
            "",
            "[[release]]",
            f"role = {toml_literal(release.role.value)}",
            f"category = {toml_literal(release.category)}",
            f"purpose = {toml_literal(release.purpose)}",
            f"fields = {toml_literal(release.fields)}",
            f"four_eyes = {toml_literal(release.four_eyes)}",
            f"max_per_period = {toml_literal(release.max_per_period)}",
            f"period_days = {toml_literal(release.period_days)}",
        ]
    lines += [
        "",
        "[retention]",
        f"default_days = {toml_literal(policy.retention.default_days)}",
        "",
        "[retention.categories]",
        *(
            f"{toml_literal(name)} = {toml_literal(days)}"
            for name, days in policy.retention.categories
        ),
        "",
        "[quotas]",
        f"oprf_evaluations_per_day = {toml_literal(policy.quotas.oprf_evaluations_per_day)}",
        f"disclosure_requests_per_day = {toml_literal(policy.quotas.disclosure_requests_per_day)}",
        f"token_entries_per_day = {toml_literal(policy.quotas.token_entries_per_day)}",
        f"token_entries_held = {toml_literal(policy.quotas.token_entries_held)}",
        f"hit_notice_bytes_per_day = {toml_literal(policy.quotas.hit_notice_bytes_per_day)}",
        f"envelopes_per_day = {toml_literal(policy.quotas.envelopes_per_day)}",
        f"envelope_bytes_per_day = {toml_literal(policy.quotas.envelope_bytes_per_day)}",
        f"envelope_bytes_waiting = {toml_literal(policy.quotas.envelope_bytes_waiting)}",
        "",
        "[picture]",
        f"viewers = {toml_literal(tuple(r.value for r in policy.picture.viewers))}",
        f"min_cell_count = {toml_literal(policy.picture.min_cell_count)}",
        f"epsilon_per_period = {toml_literal(policy.picture.epsilon_per_period)}",
        f"epsilon_per_request = {toml_literal(policy.picture.epsilon_per_request)}",
        *(
            [f"classification = {toml_literal(policy.picture.classification)}"]
            if policy.picture.classification
            else []
        ),
        f"aggregator = {toml_literal(_role_or_empty(policy.picture.aggregator))}",
        f"min_contributors = {toml_literal(policy.picture.min_contributors)}",
        f"min_cell_contributors = {toml_literal(policy.picture.min_cell_contributors)}",
        f"dominance_share = {toml_literal(policy.picture.dominance_share)}",
        f"areas = {toml_literal(policy.picture.areas)}",
        f"branches = {toml_literal(policy.picture.branches)}",
        "",
        "[cases]",
        f"coordinators = {toml_literal(tuple(r.value for r in policy.cases.coordinators))}",
    ]
    return lines


def _role_or_empty(role: Role | None) -> str:
    return "" if role is None else role.value


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f"}
_TOML_ESCAPES["\r"] = "\\r"


def toml_literal(value: str | int | float | bool | datetime | tuple[str, ...]) -> str:
    """One TOML value as text: a basic string, an integer, a boolean, a UTC offset
    date-time, or an array of strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        items = [toml_literal(item) for item in value]
        one_line = "[" + ", ".join(items) + "]"
        if len(one_line) <= 60:
            return one_line
        return "[\n" + "".join(f"    {item},\n" for item in items) + "]"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("only finite numbers are written")
        return repr(value)  # the shortest text that reads back as the same float
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("only timezone-aware date-times are written")
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    out = []
    for char in value:
        if char in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


# --- field rules -----------------------------------------------------------------------

_PEM_CHARS = re.compile(r"[A-Za-z0-9+/=\n -]*\Z")
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def parse_address(text: object, *, field: str, allow_port_zero: bool = False) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6); raise ``InvalidInput`` naming ``field``.

    ``host`` is a DNS name or an IP address; ``port`` 1..65535 (0 too with
    ``allow_port_zero``, for addresses to listen on: the system picks one).
    Returns the host without brackets.
    """
    if not isinstance(text, str):
        raise InvalidInput("must be a string host:port", field=field)
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not port_text.isascii():
        raise InvalidInput("must be host:port, e.g. broker.example.nl:7443", field=field)
    port = int(port_text)
    if not (0 if allow_port_zero else 1) <= port <= 65535 or len(port_text) > 5:
        raise InvalidInput("port must be 1..65535", field=field)
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1])), port
        except ValueError as error:
            raise InvalidInput("not a valid IPv6 address", field=field) from error
    try:
        return str(ipaddress.IPv4Address(host)), port
    except ValueError:
        pass
    if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in host.split(".")):
        raise InvalidInput(
            "host must be a DNS name, an IPv4 address or [IPv6] address", field=field
        )
    return host, port


def check_address(text: object, *, field: str) -> str:
    """Return ``text`` if it is a valid ``host:port`` to dial; else raise ``InvalidInput``."""
    parse_address(text, field=field)
    assert isinstance(text, str)
    return text


def _check_bytes(value: object, length: int, *, field: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        raise InvalidInput(f"must be {length} bytes", field=field)
    return value


def _check_name(value: object, *, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("must be a non-empty string", field=field)
    if len(value.encode("utf-8")) > MAX_NAME_BYTES or value != value.strip():
        raise InvalidInput(
            f"must be at most {MAX_NAME_BYTES} bytes, without surrounding spaces", field=field
        )
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise InvalidInput("must not contain control characters", field=field)
    return value


def _check_public_keys(keys: object, *, field: str) -> PublicKeys:
    if not isinstance(keys, PublicKeys):
        raise InvalidInput("must be the party's public keys", field=field)
    _check_bytes(keys.ed25519, KEY_BYTES, field=f"{field}.ed25519")
    crypto.check_x25519_public(keys.x25519, field=f"{field}.x25519")
    return keys


def _check_time(value: object, *, field: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput("must be a timezone-aware date-time (UTC)", field=field)
    return value


def _check_pem(value: object, *, field: str) -> bytes:
    if not isinstance(value, bytes):
        raise InvalidInput("must be PEM bytes", field=field)
    if not _PEM_CHARS.match(value.decode("ascii", "replace")):
        raise InvalidInput("must be one PEM certificate and nothing else", field=field)
    if value.count(b"-----BEGIN") != 1 or not value.startswith(b"-----BEGIN CERTIFICATE-----"):
        raise InvalidInput("must be one PEM certificate and nothing else", field=field)
    certs.check_ca_certificate(value, field=field)
    return value


# --- the attribute key ---------------------------------------------------------------

ATTRIBUTE_KEY_BYTES = 32
#: Sealed attributes are padded to a multiple of this, so that their length
#: does not tell which category they hold.
ATTRIBUTES_BLOCK_BYTES = 32
MAX_ATTRIBUTES_BYTES: int = common_pb2.LIMITS_MAX_TEXT_BYTES
_ATTRIBUTE_KEY_DOMAIN = b"samenloop/v1 attribute key\x00"


@dataclass(frozen=True, slots=True, repr=False, eq=False)
class AttributeKey:
    """The covenant-wide secretbox key for ``MemberAttributes``. Secret: no repr, no ``==``."""

    covenant_id: str
    version: int
    key: bytes

    def __post_init__(self) -> None:
        check_id(self.covenant_id, field="covenant_id")
        _check_int(self.version, 1, MAX_UINT32, field="version")
        _check_bytes(self.key, ATTRIBUTE_KEY_BYTES, field="key")

    def __repr__(self) -> str:
        return (
            f"AttributeKey(covenant_id={self.covenant_id!r}, version={self.version}, "
            "key=<redacted>)"
        )


def new_attribute_key(covenant_id: str, version: int) -> AttributeKey:
    """A fresh random attribute key for ``covenant_id`` at ``version``."""
    return AttributeKey(covenant_id=covenant_id, version=version, key=os.urandom(32))


def _attribute_key_plaintext(covenant_id: str, version: int, key: bytes) -> bytes:
    cid = covenant_id.encode("utf-8")
    return (
        _ATTRIBUTE_KEY_DOMAIN + struct.pack(">H", len(cid)) + cid + struct.pack(">I", version) + key
    )


def seal_attribute_key_for(party_keys: PublicKeys, key: AttributeKey) -> bytes:
    """Seal ``key`` to a party's X25519 key (NaCl sealed box), framed with covenant and version."""
    return crypto.seal_anonymous(
        party_keys.x25519, _attribute_key_plaintext(key.covenant_id, key.version, key.key)
    )


def open_attribute_key(
    party_keys: PartyKeys,
    sealed: bytes,
    *,
    covenant_id: str,
    version: int,
    field: str = "attribute_key",
) -> AttributeKey:
    """Open a sealed attribute key and check it is for ``covenant_id`` at ``version``.

    ``DecryptionFailed`` if it was not sealed to ``party_keys``; ``InvalidInput``
    if it belongs to another covenant or key version.
    """
    plaintext = crypto.open_anonymous(party_keys.x25519_secret, sealed, field=field)
    key = plaintext[-ATTRIBUTE_KEY_BYTES:]
    expected = _attribute_key_plaintext(covenant_id, version, key)
    if len(plaintext) != len(expected) or not crypto.equal(plaintext, expected):
        raise InvalidInput(
            f"attribute key is not for covenant {covenant_id} key version {version}", field=field
        )
    return AttributeKey(covenant_id=covenant_id, version=version, key=key)


def seal_attributes(
    key: AttributeKey, plaintext: bytes, *, nonce: bytes | None = None
) -> tuple[bytes, bytes]:
    """Encrypt serialized ``MemberAttributes`` under the attribute key: (nonce, ciphertext).

    The plaintext is framed (2-byte big-endian length, the bytes) and
    zero-padded to a multiple of 32 bytes before sealing, as ``SecretBox``
    requires. ``nonce`` is for tests only.
    """
    if not isinstance(plaintext, bytes):
        raise InvalidInput("must be bytes", field="attributes")
    if len(plaintext) > MAX_ATTRIBUTES_BYTES:
        raise MessageTooLarge(f"at most {MAX_ATTRIBUTES_BYTES} bytes", field="attributes")
    framed = struct.pack(">H", len(plaintext)) + plaintext
    padded = framed + bytes(-len(framed) % ATTRIBUTES_BLOCK_BYTES)
    return crypto.secretbox_seal(key.key, padded, nonce=nonce)


def open_attributes(
    key: AttributeKey, nonce: bytes, ciphertext: bytes, *, field: str = "sealed_attributes"
) -> bytes:
    """Decrypt and unpad sealed attributes; ``DecryptionFailed`` on any failure, whatever it is."""
    padded = crypto.secretbox_open(key.key, nonce, ciphertext, field=field)
    if len(padded) < 2 or len(padded) % ATTRIBUTES_BLOCK_BYTES:
        raise DecryptionFailed("cannot open sealed message", field=field)
    (length,) = struct.unpack(">H", padded[:2])
    end = 2 + length
    expected_size = end + (-end % ATTRIBUTES_BLOCK_BYTES)
    if expected_size != len(padded) or any(padded[end:]):
        raise DecryptionFailed("cannot open sealed message", field=field)
    return padded[2:end]


def deal_attribute_key(
    covenant_id: str, version: int, parties: Iterable[Party]
) -> tuple[Party, ...]:
    """``parties``, each with a fresh attribute key of ``version`` sealed to it.

    The key exists only in this call's memory: whoever runs it (an
    administrator's ``covenant`` command, provisioning) knows it while it
    runs, as the dealer of the OPRF key knows that key, and nobody keeps it.
    """
    key = new_attribute_key(covenant_id, version)
    return tuple(
        replace(party, sealed_attribute_key=seal_attribute_key_for(party.keys, key))
        for party in parties
    )


def with_new_attribute_key(
    covenant: Covenant, parties: Iterable[Party] | None = None, **changes: Any
) -> Covenant:
    """``covenant`` listing ``parties`` (default: its own), each dealt a fresh attribute key one
    version higher, with ``changes`` (``version=...``) applied too: what a version that removes
    or adds a party, or replaces a party's key, must carry. ``InvalidInput`` (field
    ``attribute_key_version``) past the highest version."""
    version = covenant.attribute_key_version + 1
    if version > MAX_UINT32:
        raise InvalidInput(
            f"the attribute key version cannot go above {MAX_UINT32}", field="attribute_key_version"
        )
    dealt = deal_attribute_key(
        covenant.id, version, covenant.parties if parties is None else parties
    )
    return replace(covenant, attribute_key_version=version, parties=dealt, **changes)


def sealed_attribute_key_bytes(covenant_id: str) -> int:
    """The exact size of an attribute key of ``covenant_id`` sealed to a party."""
    return crypto.SEALED_BOX_OVERHEAD + len(_attribute_key_plaintext(covenant_id, 1, bytes(32)))


class AttributeKeyRing:
    """Every attribute key version one party was dealt, by version; shared by a node's threads.

    A node shows it every covenant version it adopts (``learn``): from its
    root and its stored history at start, and each update as it arrives, so
    a new version is picked up without a restart. It seals with the version
    of the covenant held (``current``) and opens a box with the version the
    box names (``get``), so notices sealed under older versions stay
    readable. The keys live in memory only; at rest they are the sealed boxes
    in the covenant versions the node keeps, which only its own X25519 key
    opens. No repr of a key.
    """

    def __init__(self, party_keys: PartyKeys) -> None:
        self._party_keys = party_keys
        self._keys: dict[int, AttributeKey] = {}
        self._lock = threading.Lock()

    def learn(self, covenant: Covenant) -> AttributeKey | None:
        """Open this party's attribute key in ``covenant``, once per key version.

        ``None`` if the covenant does not list this party (it was removed: it
        is dealt no key of this version). Raises like
        ``Covenant.attribute_key_for`` if its box does not open.
        """
        version = covenant.attribute_key_version
        with self._lock:
            known = self._keys.get(version)
        if known is not None:
            return known
        if not covenant.is_party(self._party_keys.party):
            return None
        key = covenant.attribute_key_for(self._party_keys)
        with self._lock:
            return self._keys.setdefault(version, key)

    def current(self, covenant: Covenant) -> AttributeKey:
        """The key to seal with under ``covenant``: the version it deals to this party.

        ``NotAllowed`` (field ``party``) if the covenant no longer lists this
        party: a removed party seals nothing new.
        """
        key = self.learn(covenant)
        if key is None:
            covenant.party(self._party_keys.party)  # raises NotAllowed
            raise AssertionError("unreachable")
        return key

    def get(self, version: int) -> AttributeKey | None:
        """The key of ``version``, if this party was dealt it."""
        with self._lock:
            return self._keys.get(version)

    @property
    def versions(self) -> tuple[int, ...]:
        with self._lock:
            return tuple(sorted(self._keys))

    def __repr__(self) -> str:
        return f"AttributeKeyRing(party={self._party_keys.party!r}, versions={self.versions})"
