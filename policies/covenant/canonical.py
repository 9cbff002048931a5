"""The covenant's one canonical serialisation: ``covenant_to_toml``.

The same covenant always gives the same bytes, and parsing them
(:mod:`.parsing`) gives the same covenant. These are the bytes signers sign
(``samenloop.policies.trust``); verifiers check signatures over the bytes they
received and only then parse them. ``toml_literal`` writes one value.
"""

from __future__ import annotations

from datetime import UTC, datetime

from samenloop.policies import crypto
from samenloop.policies.covenant.fields import KIND
from samenloop.policies.covenant.model import Covenant, OprfKeyEpoch
from samenloop.policies.policy import Policy, Role

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
    lines += _epoch_lines("key_epoch", covenant.key_epoch)
    if covenant.next_key_epoch is not None:
        lines += _epoch_lines("next_key_epoch", covenant.next_key_epoch)
    lines += _policy_lines(policy)
    return ("\n".join(lines) + "\n").encode("utf-8")


def _epoch_lines(name: str, epoch: OprfKeyEpoch) -> list[str]:
    lines = [
        "",
        f"[{name}]",
        f"epoch = {toml_literal(epoch.epoch)}",
        f"threshold = {toml_literal(epoch.threshold)}",
        f"group_public_key = {toml_literal(crypto.b64encode(epoch.group_public_key))}",
        f"created_at = {toml_literal(epoch.created_at)}",
        f"retire_after = {toml_literal(epoch.retire_after)}",
    ]
    for seat in epoch.holders:
        lines += [
            "",
            f"[[{name}.holders]]",
            f"index = {toml_literal(seat.index)}",
            f"party = {toml_literal(seat.party)}",
            f"commitment = {toml_literal(crypto.b64encode(seat.commitment))}",
        ]
    return lines


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
    # Only when present: a covenant written before person keys keeps its bytes (and so
    # its signatures).
    person = policy.person_matching
    if person is not None:
        lines += [
            "",
            "[person_matching]",
            f"kinds = {toml_literal(person.kinds)}",
            f"shown_score = {toml_literal(person.shown_score)}",
            f"disclosure_score = {toml_literal(person.disclosure_score)}",
        ]
    if policy.network is not None:  # likewise: older covenants keep their bytes
        lines += [
            "",
            "[network]",
            f"viewers = {toml_literal(tuple(r.value for r in policy.network.viewers))}",
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
