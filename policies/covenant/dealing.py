"""Dealing the attribute key in a covenant version, and holding what was dealt.

``deal_attribute_key`` / ``with_new_attribute_key`` seal a fresh key to every
party of a version (whoever runs them knows the key while they run, as the dealer
of the OPRF key does); a node's ``AttributeKeyRing`` opens its box of every
version it adopts and keeps the keys in memory by version.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from samenloop.policies.covenant.attribute_key import (
    AttributeKey,
    new_attribute_key,
    seal_attribute_key_for,
)
from samenloop.policies.covenant.fields import MAX_UINT32
from samenloop.policies.covenant.model import Covenant, Party
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.errors import InvalidInput


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
