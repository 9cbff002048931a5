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

The package, by what each module holds: ``model`` (the dataclasses), ``parsing``
(TOML in), ``canonical`` (TOML out, the bytes that are signed), ``fields`` (limits
and shared field checks), ``attribute_key`` (the key and its boxes) and
``dealing`` (dealing it per version, the node's key ring). Importers use the names
re-exported here.
"""

from samenloop.policies.certs import check_id
from samenloop.policies.covenant.attribute_key import (
    ATTRIBUTE_KEY_BYTES,
    MAX_ATTRIBUTES_BYTES,
    AttributeKey,
    new_attribute_key,
    open_attribute_key,
    open_attributes,
    seal_attribute_key_for,
    seal_attributes,
    sealed_attribute_key_bytes,
)
from samenloop.policies.covenant.canonical import covenant_to_toml, toml_literal
from samenloop.policies.covenant.dealing import (
    AttributeKeyRing,
    deal_attribute_key,
    with_new_attribute_key,
)
from samenloop.policies.covenant.fields import KIND, MAX_UINT32, check_address, parse_address
from samenloop.policies.covenant.model import (
    BrokerInfo,
    Covenant,
    KeyHolderSeat,
    OprfKeyEpoch,
    Party,
)
from samenloop.policies.covenant.parsing import covenant_from_toml, load_covenant
from samenloop.policies.policy import Role

__all__ = [
    "ATTRIBUTE_KEY_BYTES",
    "KIND",
    "MAX_ATTRIBUTES_BYTES",
    "MAX_UINT32",
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
