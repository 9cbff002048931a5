"""Provision a whole covenant in one directory: CA, keys, certificates, key shares, configs.

What the administrators of a real covenant do step by step with the CLI
(``node keygen``, ``keyholder deal`` and ``accept``, certificate issuing), done
at once for the demo and for tests. Every party gets its own directory (0700)
with owner-only secrets (0600) and a data directory (0700) holding the API
token its applications call the node's local API with, so that the tree passes
the daemons' checks at start whatever the umask; the OPRF key is dealt t-of-n
to the holders and never written whole; the covenant lists parties, keys, the
CA, the key epoch, the attribute key (version 1, sealed to each party in its
entry, never written whole), the timestamp key (``ROOT/admin/timestamp.json``: the
covenant's timestamp role, as a timestamp job would hold it) with the freshness
period, and the rules (``example_policy`` unless the caller gives its own), and is
signed by the covenant's signers (``signers``, their keys under ``ROOT/admin/``). The
first covenant timestamp, issued at ``now``, goes to ``ROOT/covenant-timestamp.json``,
which ``broker.toml`` names: the broker hands it out until a newer one is published
(``samenloop covenant timestamp``, from cron).

Layout::

    ROOT/ca/ca.pem, ca.key
    ROOT/admin/<signer>.json (signers' key files), timestamp.json (the timestamp key)
    ROOT/covenant.toml (the draft), covenant.json (signed: what the daemons trust),
         covenant-timestamp.json (the first covenant timestamp)
    ROOT/broker/broker.toml, tls.pem, tls.key, signing-keys.json, data/
    ROOT/<party>/node.toml, tls.pem, tls.key, party-keys.json,
                 key-share.json (holders only), data/api-token
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from samenloop.node.daemon.api_token import ensure_token
from samenloop.node.tokens import keysetup
from samenloop.policies import certs, config, covenant, crypto, freshness, trust
from samenloop.policies.covenant import Covenant
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.policy import (
    DEFAULT_FRESHNESS_SECONDS,
    Policy,
    Signer,
    Signing,
    example_policy,
)

#: The demo's and tests' covenant signers: two administrators, both must sign.
DEFAULT_SIGNERS = (
    ("beheer-riec", "RIEC covenant administrator"),
    ("beheer-partners", "Partners' covenant administrator"),
)


@dataclass(frozen=True, slots=True)
class PartySpec:
    """A partner to provision: its id, display name and role."""

    id: str
    name: str
    role: covenant.Role


@dataclass(frozen=True, slots=True)
class Provisioned:
    """Where everything went."""

    root: Path
    covenant: covenant.Covenant
    broker_config: Path
    node_configs: dict[str, Path]
    signer_keys: dict[str, Path]
    #: The timestamp key's file (``PartyKeys``): what the covenant's timestamp job holds.
    timestamp_key: Path

    def party_dir(self, party: str) -> Path:
        return self.root / party

    @property
    def signed_covenant(self) -> Path:
        return self.root / "covenant.json"

    def sign(self, draft: Covenant) -> trust.SignedCovenant:
        """``draft`` signed by every signer of the held covenant and of ``draft``."""
        signed = trust.SignedCovenant.of(draft)
        for signer in {*draft.signing.signers, *self.covenant.signing.signers}:
            path = self.signer_keys.get(signer.id)
            if path is not None and draft.signing.signer(signer.id) is not None:
                signed = trust.sign_covenant(signed, signer.id, PartyKeys.load(path).signing_key)
        return signed

    def stamp(
        self, draft: Covenant, *, now: datetime, lifetime: timedelta | None = None
    ) -> freshness.CovenantTimestamp:
        """A covenant timestamp for ``draft``, signed with the timestamp key (which must
        be ``draft``'s), issued at ``now``: what the timestamp job makes."""
        key = PartyKeys.load(self.timestamp_key).signing_key
        body = covenant.covenant_to_toml(draft)
        return freshness.issue_timestamp(key, draft, body, now=now, lifetime=lifetime)


def private_dir(path: Path) -> Path:
    """``path`` made, or made again, a directory of this account's alone (0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def free_port(taken: set[int] | None = None) -> int:
    """A TCP port on 127.0.0.1 that is free right now (for loopback tests and the demo),
    and not in ``taken`` (the ports handed out already for daemons not started yet: the
    system may offer a port again once its probe is closed); it is added to ``taken``."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if taken is None:
            return port
        if port not in taken:
            taken.add(port)
            return port


def provision(
    root: Path,
    covenant_id: str,
    parties: Sequence[PartySpec],
    holders: Sequence[str],
    threshold: int,
    *,
    now: datetime,
    min_parties: int = 2,
    policy: Policy | None = None,
    valid_for: timedelta = timedelta(days=365),
    broker_id: str = "broker",
    broker_port: int | None = None,
    api_tcp: bool = False,
    freshness_seconds: int = DEFAULT_FRESHNESS_SECONDS,
) -> Provisioned:
    """Write a complete covenant under ``root`` and return where its files are."""
    root.mkdir(parents=True, exist_ok=True)
    for private in ("ca", "admin", "broker", *(p.id for p in parties)):
        private_dir(root / private)
    taken = {broker_port} if broker_port else set()
    port = broker_port or free_port(taken)
    address = f"localhost:{port}"
    ca = certs.CertificateAuthority.create(covenant_id, now=now)
    ca.save(root / "ca" / "ca.key", root / "ca" / "ca.pem")

    keys = {p.id: PartyKeys.generate(p.id) for p in parties}
    for party_id, party_keys in keys.items():
        party_keys.save(root / party_id / "party-keys.json")
    broker_keys = PartyKeys.generate(broker_id)
    broker_keys.save(root / "broker" / "signing-keys.json")

    key_epoch, sealed = keysetup.deal(
        covenant_id,
        1,
        threshold,
        [(h, keys[h].public().x25519) for h in holders],
        now=now,
        lifetime=timedelta(days=365),
    )
    for share in sealed:
        opened = keysetup.open_share(share, key_epoch, keys[share.holder])
        keysetup.save_share(root / share.holder / "key-share.json", key_epoch, opened)

    signer_keys = {}
    for signer_id, _name in DEFAULT_SIGNERS:
        signer_keys[signer_id] = root / "admin" / f"{signer_id}.json"
        PartyKeys.generate(signer_id).save(signer_keys[signer_id])
    timestamp_key = root / "admin" / "timestamp.json"
    timestamp_keys = PartyKeys.generate(freshness.TIMESTAMP_SIGNER)
    timestamp_keys.save(timestamp_key)
    signing = Signing(
        threshold=len(DEFAULT_SIGNERS),
        signers=tuple(
            Signer(id=i, name=name, ed25519=PartyKeys.load(signer_keys[i]).public().ed25519)
            for i, name in DEFAULT_SIGNERS
        ),
        timestamp_ed25519=timestamp_keys.public().ed25519,
        freshness_seconds=freshness_seconds,
    )

    the_covenant = covenant.Covenant(
        id=covenant_id,
        version=1,
        valid_from=now - timedelta(minutes=5),
        valid_until=now + valid_for,
        signing=signing,
        policy=policy or example_policy(min_parties=min_parties),
        broker=covenant.BrokerInfo(
            id=broker_id, address=address, ed25519=broker_keys.public().ed25519
        ),
        parties=covenant.deal_attribute_key(
            covenant_id,
            1,
            (
                covenant.Party(id=p.id, name=p.name, role=p.role, keys=keys[p.id].public())
                for p in parties
            ),
        ),
        key_epoch=covenant.OprfKeyEpoch(
            epoch=key_epoch.epoch,
            threshold=key_epoch.threshold,
            group_public_key=key_epoch.group_public_key,
            holders=tuple(
                covenant.KeyHolderSeat(index=h.index, party=h.party, commitment=h.commitment)
                for h in key_epoch.holders
            ),
            created_at=key_epoch.created_at,
            retire_after=key_epoch.retire_after,
        ),
        ca_certificate=ca.cert_pem,
        attribute_key_version=1,
    )
    (root / "covenant.toml").write_bytes(covenant.covenant_to_toml(the_covenant))
    signed = trust.SignedCovenant.of(the_covenant)
    for signer_id, path in signer_keys.items():
        signed = trust.sign_covenant(signed, signer_id, PartyKeys.load(path).signing_key)
    covenant_path = root / "covenant.json"
    covenant_path.write_bytes(signed.to_json())
    first_timestamp = root / "covenant-timestamp.json"
    crypto.write_file_atomically(
        first_timestamp,
        freshness.issue_timestamp(
            timestamp_keys.signing_key, the_covenant, signed.body, now=now
        ).to_json(),
    )

    broker_dir = root / "broker"
    issued = ca.issue_broker(broker_id, ["localhost", "127.0.0.1"], now=now)
    certs.save_private_key(broker_dir / "tls.key", issued.key_pem)
    (broker_dir / "tls.pem").write_bytes(issued.cert_pem)
    broker_config = config.BrokerConfig(
        data_dir=broker_dir / "data",
        covenant=covenant_path,
        certificate=broker_dir / "tls.pem",
        private_key=broker_dir / "tls.key",
        signing_keys=broker_dir / "signing-keys.json",
        listen=f"127.0.0.1:{port}",
        covenant_timestamp=first_timestamp,
    )
    private_dir(broker_dir / "data")
    broker_config_path = broker_dir / "broker.toml"
    broker_config_path.write_bytes(config.config_to_toml(broker_config, relative_to=broker_dir))

    node_configs = {}
    for p in parties:
        party_dir = root / p.id
        issued = ca.issue_party(p.id, now=now)
        certs.save_private_key(party_dir / "tls.key", issued.key_pem)
        (party_dir / "tls.pem").write_bytes(issued.cert_pem)
        private_dir(party_dir / "data")
        node_config = config.NodeConfig(
            party=p.id,
            broker=address,
            data_dir=party_dir / "data",
            covenant=covenant_path,
            certificate=party_dir / "tls.pem",
            private_key=party_dir / "tls.key",
            ca_certificate=root / "ca" / "ca.pem",
            party_keys=party_dir / "party-keys.json",
            key_share=party_dir / "key-share.json" if p.id in holders else None,
            api_listen=f"127.0.0.1:{free_port(taken)}" if api_tcp else None,
        )
        assert node_config.api_token is not None
        ensure_token(node_config.api_token)  # the node would make it at start; made here
        # so that the party's applications can connect before the node first ran
        path = party_dir / "node.toml"
        path.write_bytes(config.config_to_toml(node_config, relative_to=party_dir))
        node_configs[p.id] = path
    return Provisioned(
        root=root,
        covenant=the_covenant,
        broker_config=broker_config_path,
        node_configs=node_configs,
        signer_keys=signer_keys,
        timestamp_key=timestamp_key,
    )
