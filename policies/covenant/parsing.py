"""Reading a covenant: TOML in, frozen dataclasses out.

``covenant_from_toml`` parses at the boundary; every error is ``InvalidInput``
naming the offending field by its dotted path (``parties[2].keys.x25519``,
``release[1].purpose``; list positions count from 0). ``_Table`` reads one
table with typed getters and refuses keys it does not know.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from samenloop.policies import crypto
from samenloop.policies.covenant.fields import ELEMENT_BYTES, KEY_BYTES, KIND
from samenloop.policies.covenant.model import (
    BrokerInfo,
    Covenant,
    KeyHolderSeat,
    OprfKeyEpoch,
    Party,
)
from samenloop.policies.crypto import PublicKeys
from samenloop.policies.errors import ConfigurationError, InvalidInput, SamenloopError
from samenloop.policies.policy import (
    DEFAULT_DISCLOSURE_SCORE,
    DEFAULT_ENVELOPE_BYTES_PER_DAY,
    DEFAULT_ENVELOPE_BYTES_WAITING,
    DEFAULT_ENVELOPES_PER_DAY,
    DEFAULT_FRESHNESS_SECONDS,
    DEFAULT_HIT_NOTICE_BYTES_PER_DAY,
    DEFAULT_SHOWN_SCORE,
    DEFAULT_TOKEN_ENTRIES_HELD,
    DEFAULT_TOKEN_ENTRIES_PER_DAY,
    CaseRules,
    Level,
    Matching,
    NetworkRules,
    PersonMatching,
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

_E = TypeVar("_E", bound=SamenloopError)
_T = TypeVar("_T")


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

    key_epoch = _read_epoch(top.table("key_epoch"))
    next_key_epoch = (
        _read_epoch(top.table("next_key_epoch")) if "next_key_epoch" in top.names() else None
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
        next_key_epoch=next_key_epoch,
        ca_certificate=ca_certificate,
        attribute_key_version=attribute_key_version,
        valid_from=valid_from,
        valid_until=valid_until,
        signing=signing,
        policy=policy,
    )


def _read_epoch(epoch_table: _Table) -> OprfKeyEpoch:
    holders = [
        table.build(
            KeyHolderSeat,
            index=table.integer("index"),
            party=table.string("party"),
            commitment=table.key("commitment", ELEMENT_BYTES),
        )
        for table in epoch_table.tables("holders")
    ]
    return epoch_table.build(
        OprfKeyEpoch,
        epoch=epoch_table.integer("epoch"),
        threshold=epoch_table.integer("threshold"),
        group_public_key=epoch_table.key("group_public_key", ELEMENT_BYTES),
        holders=tuple(holders),
        created_at=epoch_table.time("created_at"),
        retire_after=epoch_table.time("retire_after"),
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
    person_matching = None
    if top.has("person_matching"):
        person_table = top.table("person_matching")
        person_matching = person_table.build(
            PersonMatching,
            kinds=person_table.strings("kinds", default=()),
            shown_score=person_table.number("shown_score", default=DEFAULT_SHOWN_SCORE),
            disclosure_score=person_table.number(
                "disclosure_score", default=DEFAULT_DISCLOSURE_SCORE
            ),
        )
    network = None
    if top.has("network"):
        network_table = top.table("network")
        network = network_table.build(NetworkRules, viewers=network_table.roles("viewers"))
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
            person_matching=person_matching,
            network=network,
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

    def has(self, key: str) -> bool:
        """Whether ``key`` is present (an optional section)."""
        return key in self._doc

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
