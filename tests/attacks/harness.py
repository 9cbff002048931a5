"""The insiders' test bench: a running covenant whose parties a test may turn against it.

Each attack module gets its own covenant (``covenant_run`` in ``conftest.py``):
the demo's five parties — gemeente, politie, belastingdienst, woningcorporatie
and the RIEC — under the demo's rules (``example_policy``: police signals count
but are hidden from the municipality; the RIEC coordinates), the OPRF key dealt
2-of-3 to the gemeente, politie and belastingdienst, and ``samenloop broker
serve`` and five ``samenloop node serve`` as processes on loopback with mTLS
and SQLite, exactly as a covenant runs in production.

A test plays an insider with what that insider really holds:

* a **partner** its own party keys (:meth:`CovenantRun.party_keys`), its own
  certificate for raw calls to the broker (:meth:`CovenantRun.broker_stub`),
  its node's files and database;
* the **broker operator** the broker's signing keys
  (:meth:`CovenantRun.broker_keys`) and its database
  (:attr:`~daemons.Daemons.broker_database`);
* a **key holder** its key-share file (``provisioned.party_dir(p) / "key-share.json"``);
* a **local user** on a node's host the files under ``provisioned.party_dir(p)``
  and the node's local API address.

Every attack test asserts the refusal (or the bound) *and* that the daemons
keep serving (:meth:`CovenantRun.assert_serving`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from samenloop.node.client import Hit, NodeClient, Signal
from samenloop.node.daemon.uplink import broker_channel
from samenloop.node.demo.daemons import HOLDERS, SPECS
from samenloop.policies import config, crypto
from samenloop.policies.covenant import Covenant, covenant_to_toml
from samenloop.policies.crypto import PartyKeys
from samenloop.v1 import broker_pb2, broker_pb2_grpc

from daemons import Daemons, cli_command

__all__ = ["COVENANT_ID", "HOLDERS", "PARTIES", "SPECS", "CovenantRun"]

COVENANT_ID = "riec-attacks"
PARTIES = tuple(spec.id for spec in SPECS)
#: How long a test waits for something the daemons do on their own (a hit, an answer).
WAIT_SECONDS = 60.0


@dataclass
class CovenantRun(Daemons):
    """The running covenant of one attack module (see the module docstring)."""

    #: Every covenant version :meth:`publish` published, in order.
    published: list[Covenant] = field(default_factory=list)

    def client(self, party: str) -> NodeClient:
        """The party's own application's connection to its node's local API."""
        return self.clients[party]

    # --- what insiders hold ----------------------------------------------------------

    def party_keys(self, party: str) -> PartyKeys:
        """The party's Ed25519 and X25519 keys, from its key file."""
        return PartyKeys.load(self.provisioned.party_dir(party) / "party-keys.json")

    def broker_keys(self) -> PartyKeys:
        """The broker's hit-notice signing keys: what the broker's operator holds."""
        path = config.load_broker_config(self.provisioned.broker_config).signing_keys
        return PartyKeys.load(path)

    def node_config(self, party: str) -> config.NodeConfig:
        return config.load_node_config(self.provisioned.node_configs[party])

    def broker_channel(self, party: str) -> grpc.Channel:
        """An mTLS channel to the broker with ``party``'s own certificate: the party
        speaking to the broker directly, with whatever software it likes."""
        node = self.node_config(party)
        return broker_channel(
            node.broker,
            ca_certificate=node.ca_certificate.read_bytes(),
            private_key=crypto.read_secret_file(node.private_key),
            certificate=node.certificate.read_bytes(),
        )

    def broker_stub(self, party: str) -> broker_pb2_grpc.BrokerStub:
        """A raw ``samenloop.v1.Broker`` stub as ``party`` (see :meth:`broker_channel`)."""
        return broker_pb2_grpc.BrokerStub(self.broker_channel(party))

    # --- the CLI ---------------------------------------------------------------------

    def cli(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``samenloop ARGS`` as an operator would; never raises on a non-zero exit."""
        return subprocess.run(
            cli_command(*args),
            capture_output=True,
            text=True,
            env=None if env is None else dict(env),
            timeout=timeout,
            check=False,
        )

    def node_cli(self, party: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``samenloop ARGS --node <party's node.toml>``: a command of the party's staff."""
        return self.cli(*args, "--node", str(self.provisioned.node_configs[party]))

    # --- the covenant ----------------------------------------------------------------

    @property
    def covenant(self) -> Covenant:
        """The covenant in force: the provisioned one, or the last one :meth:`publish` made."""
        return self.published[-1] if self.published else self.provisioned.covenant

    def publish(self, draft: Covenant, *, name: str) -> Path:
        """Sign ``draft`` by every signer and publish it through the broker with a covenant
        timestamp for it, as the administrators do with the CLI; returns the signed file.
        Fails the test if the broker refuses it."""
        signed = self.provisioned.sign(draft)
        path = self.provisioned.root / f"{name}.json"
        path.write_bytes(signed.to_json())
        (self.provisioned.root / f"{name}.toml").write_bytes(covenant_to_toml(draft))
        done = self.cli(
            "covenant",
            "publish",
            str(path),
            "--node",
            str(self.provisioned.node_configs[self.parties[0]]),
            "--timestamp-key",
            str(self.provisioned.timestamp_key),
        )
        assert done.returncode == 0, done.stderr + done.stdout
        self.published.append(draft)
        return path

    def timestamp(self) -> None:
        """What the administrators' hourly timestamp job does: a fresh covenant timestamp for
        the version in force, published through the broker, which puts it in every mailbox
        and so wakes every mailbox stream: an item the operator put in a mailbox by hand is
        read now rather than at the stream's next heartbeat (15 s)."""
        stamp = self.provisioned.stamp(self.covenant, now=datetime.now(UTC))
        self.broker_stub(self.parties[0]).PublishTimestamp(
            broker_pb2.PublishTimestampRequest(covenant_timestamp=stamp.to_proto()), timeout=10
        )

    # --- signals and hits ------------------------------------------------------------

    def add_signal(
        self,
        party: str,
        reference: str,
        category: str,
        identifiers: Sequence[tuple[str, str]],
        *,
        details: Mapping[str, str] | None = None,
    ) -> Signal:
        return self.client(party).add_signal(reference, category, identifiers, details=details)

    def wait_hit(
        self, party: str, matches: Callable[[Hit], bool], what: str, seconds: float = WAIT_SECONDS
    ) -> Hit:
        """The first hit of ``party`` that ``matches``, waiting for it to arrive."""
        found: list[Hit] = []

        def arrived() -> bool:
            found[:] = [hit for hit in self.client(party).hits() if matches(hit)]
            return bool(found)

        self.until(f"{party}: {what}", seconds, arrived)
        return found[0]

    def hit_with(self, party: str, reference: str, *others: str) -> Hit:
        """``party``'s hit on its signal ``reference`` that shows every party in ``others``."""
        return self.wait_hit(
            party,
            lambda hit: (
                any(s.reference == reference for s in hit.own_signals)
                and set(others) <= {m.party for m in hit.members}
            ),
            f"hit on {reference} with {', '.join(others)}",
        )

    # --- still serving ---------------------------------------------------------------

    def assert_serving(self) -> None:
        """Every daemon is alive and answers: the broker's health service over mTLS,
        every node's local API and, for the parties of the covenant in force, its broker
        connection (a party removed from it is cut off by design)."""
        self.check_alive()
        with self.broker_channel(self.parties[0]) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        listed = self.covenant.party_ids
        for party in self.parties:
            if party in listed:
                self.until(f"{party} connected to the broker", 30, lambda p=party: self.ready(p))
            else:  # removed from the covenant: cut off, its node still serves its own staff
                self.until(f"{party}'s node answering", 30, lambda p=party: bool(self.status(p)))
