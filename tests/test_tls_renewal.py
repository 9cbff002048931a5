"""TLS certificates renewed without downtime.

The broker takes a replaced certificate and key for new connections without a restart,
refuses a bad replacement (another CA, a key that is not the certificate's) with one error
line and keeps serving the pair before; a node reads its files again for each new channel.
The end-to-end test runs the real daemons and looks at what the broker's port presents.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from samenloop.broker.tls import ServingCertificate
from samenloop.node.provision import PartySpec
from samenloop.policies import certs
from samenloop.policies.config import load_broker_config
from samenloop.policies.covenant import Role
from samenloop.policies.errors import ConfigurationError
from samenloop.policies.policy import Level, VisibilityRule, example_policy

from daemons import Daemons, cli_command, running_covenant

SPECS = (
    PartySpec("gemeente", "Gemeente Middelburg", Role.GEMEENTE),
    PartySpec("politie", "Politie Zeeland-West-Brabant", Role.POLITIE),
)
WAIT = 60.0
SWEEP_WAIT = 150.0  # a node's sweep runs once a minute
SEE_ALL = replace(
    example_policy(),
    visibility=tuple(VisibilityRule(role, Level.CATEGORIES) for role in Role),
)
REFUSED = b"the replaced TLS certificate is refused"


# --- the pair check and the fetcher, in process -------------------------------------


def _write_pair(directory: Path, issued: certs.IssuedCertificate) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    certs.save_private_key(directory / "tls.key", issued.key_pem)
    (directory / "tls.pem").write_bytes(issued.cert_pem)
    return directory / "tls.pem", directory / "tls.key"


def _replace(source: Path, target: Path) -> None:
    """As an operator does with ``mv``: the new file takes the old one's name at once."""
    os.replace(source, target)


def test_a_pair_is_checked_before_use(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    ca = certs.CertificateAuthority.create("riec-tls", now=now)
    other = certs.CertificateAuthority.create("riec-tls", now=now)
    good = ca.issue_broker("broker", ["localhost"], now=now)
    second = ca.issue_broker("broker", ["localhost"], now=now)
    certs.check_key_pair(good.cert_pem, good.key_pem, ca.cert_pem, now=now, field="certificate")
    with pytest.raises(ConfigurationError, match="not the certificate's") as mismatch:
        certs.check_key_pair(
            good.cert_pem, second.key_pem, ca.cert_pem, now=now, field="certificate"
        )
    assert mismatch.value.field == "certificate"
    assert mismatch.value.reason == certs.KEY_MISMATCH  # the broker waits for its other file
    foreign = other.issue_broker("broker", ["localhost"], now=now)
    with pytest.raises(ConfigurationError, match="not issued by this covenant's CA"):
        certs.check_key_pair(
            foreign.cert_pem, foreign.key_pem, ca.cert_pem, now=now, field="certificate"
        )
    with pytest.raises(ConfigurationError, match="not now"):
        certs.check_key_pair(
            good.cert_pem, good.key_pem, ca.cert_pem, now=now + timedelta(days=400),
            field="certificate",
        )  # fmt: skip
    expires = certs.load_certificate(good.cert_pem, field="c").not_valid_after_utc
    assert certs.expires_soon(expires, now=now) is None
    assert certs.expires_soon(expires, now=expires - timedelta(days=10, hours=1)) == 10


def test_the_fetcher_takes_a_good_replacement_once_and_refuses_a_bad_one(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    ca = certs.CertificateAuthority.create("riec-tls", now=now)
    cert_path, key_path = _write_pair(
        tmp_path / "live", ca.issue_broker("b", ["localhost"], now=now)
    )
    serving = ServingCertificate(cert_path, key_path, ca.cert_pem)
    assert serving.fetch() is None  # nothing changed

    other = certs.CertificateAuthority.create("riec-tls", now=now)
    bad_cert, bad_key = _write_pair(tmp_path / "bad", other.issue_broker("b", ["x"], now=now))
    before = serving.fingerprint
    _replace(bad_key, key_path)
    _replace(bad_cert, cert_path)
    assert serving.fetch() is None
    assert serving.fingerprint == before

    renewed = ca.issue_broker("b", ["localhost"], now=now)
    new_cert, new_key = _write_pair(tmp_path / "new", renewed)
    _replace(new_key, key_path)
    _replace(new_cert, cert_path)
    assert serving.fetch() is not None
    assert serving.fingerprint == certs.certificate_fingerprint(renewed.cert_pem)
    assert serving.fetch() is None  # taken once


def test_the_broker_warns_when_its_certificate_expires_soon(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    ca = certs.CertificateAuthority.create("riec-tls", now=now)
    issued = ca.issue_broker("b", ["localhost"], now=now, days=40)
    clock = [now]
    serving = ServingCertificate(*_write_pair(tmp_path, issued), ca.cert_pem, lambda: clock[0])
    with capture_logs() as quiet:
        serving.check_expiry()
    assert quiet == []
    clock[0] = now + timedelta(days=20)
    with capture_logs() as warned:
        serving.check_expiry()
    (line,) = warned
    assert line["log_level"] == "warning"
    assert line["event"] == "the TLS certificate expires soon; renew it"
    left = (serving.not_valid_after - clock[0]).days  # 19 or 20: the seconds cut off
    assert (line["setting"], line["days_left"]) == ("certificate", left)
    assert left in (19, 20)


def test_a_bad_pair_stops_the_start_naming_the_setting(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    ca = certs.CertificateAuthority.create("riec-tls", now=now)
    other = certs.CertificateAuthority.create("riec-tls", now=now)
    cert_path, key_path = _write_pair(tmp_path, other.issue_broker("b", ["localhost"], now=now))
    with pytest.raises(ConfigurationError, match="CA") as refused:
        ServingCertificate(cert_path, key_path, ca.cert_pem)
    assert refused.value.field == "certificate"


# --- with the daemons ------------------------------------------------------------------


def presented(daemons: Daemons) -> str:
    """The fingerprint of the certificate the broker presents to a new TLS connection (a
    client with the gemeente's certificate, as a node connects)."""
    provisioned = daemons.provisioned
    host, port = load_broker_config(provisioned.broker_config).listen.rsplit(":", 1)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(provisioned.root / "ca" / "ca.pem")
    party = provisioned.party_dir("gemeente")
    context.load_cert_chain(party / "tls.pem", party / "tls.key")
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return certs.certificate_fingerprint(der)


def issue(daemons: Daemons, out: Path, *names: str) -> None:
    """``samenloop covenant issue-certs`` for ``names``, as the runbook says."""
    provisioned = daemons.provisioned
    words = [
        "covenant", "issue-certs", "--covenant", str(provisioned.signed_covenant),
        "--ca-key", str(provisioned.root / "ca" / "ca.key"),
        "--ca-cert", str(provisioned.root / "ca" / "ca.pem"),
        "--out", str(out), "--broker-hostname", "localhost", "--broker-hostname", "127.0.0.1",
    ]  # fmt: skip
    for name in names:
        words += ["--party", name]
    result = subprocess.run(cli_command(*words), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def install(issued: Path, target: Path) -> None:
    """The issued pair moved over the files a daemon uses (same file system: atomic)."""
    _replace(issued / "tls.key", target / "tls.key")
    _replace(issued / "tls.pem", target / "tls.pem")


def test_certificates_are_renewed_while_everything_runs(tmp_path: Path) -> None:
    with running_covenant(
        tmp_path / "c",
        "riec-tls",
        SPECS,
        ("gemeente", "politie"),
        2,
        now=datetime.now(UTC),
        policy=SEE_ALL,
    ) as daemons:
        provisioned = daemons.provisioned
        broker_id = provisioned.covenant.broker.id
        broker_dir = provisioned.broker_config.parent
        broker_pid = daemons.processes["broker"].pid
        first = presented(daemons)
        assert first == certs.certificate_fingerprint((broker_dir / "tls.pem").read_bytes())

        # A certificate of another CA: refused with one error line; the old one serves on.
        foreign = certs.CertificateAuthority.create("riec-tls", now=datetime.now(UTC))
        stray = foreign.issue_broker(broker_id, ["localhost"], now=datetime.now(UTC))
        install(_write_pair(tmp_path / "x", stray)[0].parent, broker_dir)
        daemons.until(
            "the foreign certificate refused",
            WAIT,
            # A new handshake is what makes the broker look at its files.
            lambda: presented(daemons) == first and REFUSED in daemons.log("broker"),
        )
        assert presented(daemons) == first
        assert presented(daemons) == first
        assert daemons.log("broker").count(REFUSED) == 1
        (line,) = [line for line in daemons.log("broker").splitlines() if REFUSED in line]
        assert b"certificate" in line.split(REFUSED)[1]  # the setting named

        # A key that is not the certificate's: refused too (once the files settled).
        issue(daemons, tmp_path / "k", broker_id)
        issue(daemons, tmp_path / "m", broker_id)
        mismatched = tmp_path / "m" / broker_id
        _replace(tmp_path / "k" / broker_id / "tls.key", mismatched / "tls.key")
        install(mismatched, broker_dir)
        daemons.until(
            "the mismatched key refused",
            WAIT,
            lambda: presented(daemons) == first and daemons.log("broker").count(REFUSED) == 2,
        )

        # The renewal: new certificates for the broker and the politie, while all runs.
        issue(daemons, tmp_path / "n", broker_id, "politie")
        renewed_broker = certs.certificate_fingerprint(
            (tmp_path / "n" / broker_id / "tls.pem").read_bytes()
        )
        renewed_politie = certs.certificate_fingerprint(
            (tmp_path / "n" / "politie" / "tls.pem").read_bytes()
        )
        install(tmp_path / "n" / broker_id, broker_dir)
        install(tmp_path / "n" / "politie", provisioned.party_dir("politie"))
        daemons.until(
            "the new broker certificate served", WAIT, lambda: presented(daemons) == renewed_broker
        )
        assert b"TLS certificate renewed: served to new connections" in daemons.log("broker")
        assert daemons.log("broker").count(REFUSED) == 2

        # The politie's node, not restarted, takes its new pair at its next sweep (once a
        # minute) and makes new channels with it; the gemeente's node, restarted, connects
        # to the broker's new certificate.
        politie_pid = daemons.processes["politie"].pid
        daemons.until(
            "the politie's node taking its new certificate",
            SWEEP_WAIT,
            lambda: b"TLS certificate renewed: new connections" in daemons.log("politie"),
        )
        daemons.restart("gemeente")
        assert daemons.alive("broker")
        assert daemons.processes["broker"].pid == broker_pid

        # Hits still flow between both nodes.
        bsn = "111222333"
        daemons.clients["gemeente"].add_signal("GEM-TLS", "vastgoedmisbruik", [("bsn", bsn)])
        daemons.clients["politie"].add_signal("POL-TLS", "drugsproductie", [("bsn", bsn)])
        daemons.until(
            "a hit at both nodes",
            WAIT,
            lambda: all(len(daemons.clients[p].hits()) == 1 for p in ("gemeente", "politie")),
        )
        made = [line for line in daemons.log("politie").splitlines() if b"channel made" in line]
        assert renewed_politie.encode() in made[-1]  # its calls since run on a new channel
        assert daemons.processes["politie"].pid == politie_pid
        assert daemons.processes["broker"].pid == broker_pid
