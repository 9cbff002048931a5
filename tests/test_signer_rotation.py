"""Replacing a signer's key and the timestamp role's key (``covenant replace-signer``,
``covenant set signing.timestamp_ed25519``).

In process: the command's edits and refusals (each naming the field, the draft left as it
was), and what ``covenant verify`` says of versions signed with the old and new keys.
Through the daemons: a broker and two nodes take a version that replaces a signer's key
and go on; a version signed with the old key — by the insider who kept the lost laptop,
published through the broker or put in a node's mailbox by the broker's operator — is
refused by both with nothing stored; so is a version signed by a new signer set without
the held threshold; and after the timestamp key is replaced, timestamps of the old key
are refused and those of the new one taken.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from samenloop.node.daemon.uplink import broker_channel
from samenloop.node.provision import PartySpec, Provisioned, provision
from samenloop.policies import config, crypto, freshness
from samenloop.policies.cli import main as cli_main
from samenloop.policies.covenant import Covenant, Role, covenant_from_toml, covenant_to_toml
from samenloop.policies.crypto import PartyKeys, PublicKeys, SignatureContext
from samenloop.policies.errors import CovenantRejected
from samenloop.policies.freshness import TIMESTAMP_SIGNER, CovenantTimestamp
from samenloop.policies.policy import Level, Signer, VisibilityRule, example_policy
from samenloop.policies.rpc import error_from_rpc
from samenloop.policies.trust import CovenantSignature, SignedCovenant, TrustState
from samenloop.v1 import broker_pb2, broker_pb2_grpc

from daemons import Daemons, cli_command, running_covenant, sqlite_count, sqlite_rows

SPECS = (
    PartySpec("gemeente", "Gemeente Middelburg", Role.GEMEENTE),
    PartySpec("politie", "Politie Zeeland-West-Brabant", Role.POLITIE),
)
PARTIES = tuple(spec.id for spec in SPECS)
RIEC, PARTNERS, TOEZICHT = "beheer-riec", "beheer-partners", "beheer-toezicht"
SEE_ALL = replace(
    example_policy(),
    visibility=tuple(VisibilityRule(role, Level.CATEGORIES) for role in Role),
)
WAIT = 60.0


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: object) -> Result:
        capsys.readouterr()
        code = cli_main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def keygen(directory: Path, signer: str, name: str | None = None) -> tuple[Path, Path]:
    """A signer's key pair as ``covenant signer-keygen --id signer`` makes it."""
    keys = PartyKeys.generate(signer)
    secret = directory / f"{name or signer}.json"
    keys.save(secret)
    public = secret.with_name(f"{name or signer}.public.json")
    public.write_bytes(keys.public().to_json(signer))
    return secret, public


def public_file(directory: Path, owner: str, ed25519: bytes) -> Path:
    """A public keys file of ``owner`` that holds ``ed25519`` (a key reused by mistake)."""
    path = directory / f"reused-{crypto.fingerprint(ed25519)}.public.json"
    x25519 = PartyKeys.generate(owner).public().x25519
    path.write_bytes(PublicKeys(ed25519=ed25519, x25519=x25519).to_json(owner))
    return path


def draft_of(signed: Path, out: Path) -> Path:
    """The draft TOML of a signed covenant, as ``covenant show --toml`` writes it."""
    out.write_bytes(SignedCovenant.from_json(signed.read_bytes(), source="c").body)
    return out


def sign(run, draft: Path, out: Path, signers: dict[str, Path]) -> Path:
    for signer, key in signers.items():
        done = run("covenant", "sign", draft, "--signer", signer, "--key", key, "--out", out)
        assert done.code == 0, done.err
    return out


def forge(source: Path, out: Path, signers: dict[str, Path]) -> Path:
    """Signatures made by hand with these keys under these ids, as an insider holding an old
    key would (``covenant sign`` refuses a key the covenant does not list for the id)."""
    data = source.read_bytes()
    if data.lstrip()[:1] == b"{":
        signed = SignedCovenant.from_json(data, source=str(source))
    else:
        signed = SignedCovenant.of(covenant_from_toml(data, source=str(source)))
    for signer, key in signers.items():
        signature = PartyKeys.load(key).sign(SignatureContext.COVENANT, signed.body)
        signed = signed.with_signature(CovenantSignature(signer=signer, signature=signature))
    out.write_bytes(signed.to_json())
    return out


def three_signers(root: Path, held: Covenant, keys: dict[str, Path]) -> Covenant:
    """The hand edit of the runbook's first step: a third signer, threshold 2 of 3 (with two
    signers that must both sign, one lost key would leave no way on)."""
    secret, public = keygen(root, TOEZICHT)
    keys[TOEZICHT] = secret
    added = Signer(
        TOEZICHT, "Toezicht beheer", PublicKeys.from_json(public.read_bytes())[1].ed25519
    )
    signing = replace(held.signing, threshold=2, signers=(*held.signing.signers, added))
    return replace(held, version=held.version + 1, signing=signing)


@pytest.fixture
def prov(tmp_path: Path) -> Provisioned:
    return provision(tmp_path / "prov", "riec-signers", SPECS, PARTIES, 2, now=datetime.now(UTC))


@pytest.fixture
def v2(run, prov: Provisioned, tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """Version 2, with three signers (threshold 2), signed by all three: its file and the
    signers' secret key files."""
    keys = dict(prov.signer_keys)
    draft = tmp_path / "v2.toml"
    draft.write_bytes(covenant_to_toml(three_signers(tmp_path, prov.covenant, keys)))
    signed = sign(run, draft, tmp_path / "v2.json", keys)
    assert run("covenant", "verify", signed, "--previous", prov.signed_covenant).code == 0
    return signed, keys


# --- the command, in process ------------------------------------------------------------


def test_replacing_a_lost_key_under_the_same_id(run, v2, tmp_path: Path) -> None:
    held, keys = v2
    draft = draft_of(held, tmp_path / "v3.toml")
    new_secret, new_public = keygen(tmp_path, PARTNERS, "partners-new")
    done = run("covenant", "replace-signer", "--draft", draft, "--signer", PARTNERS,
               "--public-keys", new_public)  # fmt: skip
    assert done.code == 0, done.err
    assert f"sign it by 2 of {RIEC}, {TOEZICHT}" in done.out
    v3 = covenant_from_toml(draft.read_bytes(), source="v3")
    assert v3.version == 3
    listed = v3.signing.signer(PARTNERS)
    assert listed is not None
    assert listed.ed25519 == PartyKeys.load(new_secret).public().ed25519
    assert listed.name == "Partners' covenant administrator"
    assert [s.id for s in v3.signing.signers] == [RIEC, PARTNERS, TOEZICHT]

    # The other two carry it; the replaced signer's signature, with either key, spoils it.
    signed = sign(run, draft, tmp_path / "v3.json", {RIEC: keys[RIEC], TOEZICHT: keys[TOEZICHT]})
    ok = run("covenant", "verify", signed, "--previous", held)
    assert ok.code == 0, ok.err
    for key in (new_secret, keys[PARTNERS]):
        spoiled = forge(signed, tmp_path / f"spoiled-{key.stem}.json", {PARTNERS: key})
        refused = run("covenant", "verify", spoiled, "--previous", held)
        assert (refused.code, "covenant.bad_signature" in refused.err) == (2, True), refused.err

    # The next version: the old key signs nothing any more, the new one counts.
    v4 = draft_of(signed, tmp_path / "v4.toml")
    assert run("covenant", "set", v4, "retention.default_days", "200").code == 0
    cli_refuses = run("covenant", "sign", v4, "--signer", PARTNERS, "--key", keys[PARTNERS])
    assert (cli_refuses.code, "error: key:" in cli_refuses.err) == (1, True), cli_refuses.err
    forged = forge(v4, tmp_path / "v4-old.json", {PARTNERS: keys[PARTNERS], RIEC: keys[RIEC]})
    refused = run("covenant", "verify", forged, "--previous", signed)
    assert (refused.code, "covenant.bad_signature" in refused.err) == (2, True), refused.err
    good = sign(run, v4, tmp_path / "v4.json", {PARTNERS: new_secret, RIEC: keys[RIEC]})
    ok = run("covenant", "verify", good, "--previous", signed)
    assert ok.code == 0, ok.err
    assert f"signed by {RIEC}, {PARTNERS}: 2 of threshold 2" in ok.out


def test_replacing_a_key_under_a_new_id(run, v2, tmp_path: Path) -> None:
    held, keys = v2
    draft = draft_of(held, tmp_path / "v3.toml")
    new_secret, new_public = keygen(tmp_path, "beheer-partners-2")
    done = run("covenant", "replace-signer", "--draft", draft, "--signer", PARTNERS,
               "--public-keys", new_public, "--new-id", "beheer-partners-2",
               "--name", "Partners (new administrator)")  # fmt: skip
    assert done.code == 0, done.err
    v3 = covenant_from_toml(draft.read_bytes(), source="v3")
    assert [s.id for s in v3.signing.signers] == [RIEC, "beheer-partners-2", TOEZICHT]
    assert v3.signing.signers[1].name == "Partners (new administrator)"

    # The new signer set without the held threshold: one held signer is not enough.
    new_only = sign(run, draft, tmp_path / "v3-new.json",
                    {"beheer-partners-2": new_secret, RIEC: keys[RIEC]})  # fmt: skip
    refused = run("covenant", "verify", new_only, "--previous", held)
    assert (refused.code, "covenant.under_signed" in refused.err) == (2, True), refused.err
    assert "held version 2" in refused.err
    # The leaving administrator still has the old key: it counts for the held version.
    both = forge(new_only, tmp_path / "v3-new.json", {PARTNERS: keys[PARTNERS]})
    ok = run("covenant", "verify", both, "--previous", held)
    assert ok.code == 0, ok.err

    # That file carries a signature its own signer list does not name: it verifies as the
    # successor of version 2 (how the broker and the nodes take it), not on its own.
    alone = run("covenant", "verify", both)
    assert (alone.code, "covenant.unknown_signer" in alone.err) == (2, True), alone.err

    # After it, the old key under the old id is nobody's.
    v4 = draft_of(both, tmp_path / "v4.toml")
    assert run("covenant", "set", v4, "retention.default_days", "200").code == 0
    forged = forge(v4, tmp_path / "v4-old.json", {PARTNERS: keys[PARTNERS], RIEC: keys[RIEC]})
    state = TrustState(SignedCovenant.from_json(held.read_bytes(), source="v2"))
    now = datetime.now(UTC)
    assert state.update(SignedCovenant.from_json(both.read_bytes(), source="v3"), now=now).changed
    with pytest.raises(CovenantRejected) as refused:
        state.verify(SignedCovenant.from_json(forged.read_bytes(), source="v4"), now=now)
    assert refused.value.reason == "covenant.under_signed"
    assert state.covenant.version == 3


def test_replace_signer_refusals_name_the_field_and_change_nothing(
    run, prov: Provisioned, v2, tmp_path: Path
) -> None:
    held, _keys = v2
    covenant = SignedCovenant.from_json(held.read_bytes(), source="v2").unverified()
    draft = draft_of(held, tmp_path / "v3.toml")
    before = draft.read_bytes()
    _, fresh = keygen(tmp_path, PARTNERS, "fresh")

    def refused(*extra: object, public: Path = fresh) -> Result:
        done = run("covenant", "replace-signer", "--draft", draft, "--public-keys", public, *extra)
        assert done.code != 0
        assert draft.read_bytes() == before
        return done

    cases = [
        (covenant.signing.signers[0].ed25519, "signing.signers[0].ed25519"),
        (covenant.signing.signers[2].ed25519, "signing.signers[2].ed25519"),
        (covenant.signing.signers[1].ed25519, "already holds"),
        (covenant.signing.timestamp_ed25519, "signing.timestamp_ed25519"),
        (covenant.broker.ed25519, "broker.ed25519"),
        (covenant.parties[1].keys.ed25519, "parties[1].keys.ed25519"),
    ]
    for key, named in cases:
        done = refused("--signer", PARTNERS, public=public_file(tmp_path, PARTNERS, key))
        assert "error: --public-keys:" in done.err, done.err
        assert named in done.err, done.err
        assert "covenant.key_reused" not in done.err  # the reason is for machines, not said

    done = refused("--signer", "beheer-niemand")
    assert "error: --signer:" in done.err, done.err
    assert "not a signer" in done.err
    done = refused("--signer", PARTNERS, "--new-id", TOEZICHT)
    assert "error: --new-id:" in done.err
    done = refused("--signer", PARTNERS, "--new-id", "Not An Id")
    assert "--new-id" in done.err
    done = refused("--signer", PARTNERS, public=keygen(tmp_path, RIEC, "riec-new")[1])
    assert "error: --public-keys:" in done.err
    assert f"not {PARTNERS!r}" in done.err
    done = refused("--signer", PARTNERS, public=tmp_path / "missing.public.json")
    assert "missing.public.json" in done.err
    done = run("covenant", "replace-signer", "--draft", draft, "--signer", PARTNERS,
               "--public-keys", fresh)  # fmt: skip
    assert done.code == 0, done.err  # the refusals above were for what they named

    # Two signers who must both sign: keeping the id, nobody could sign the replacement.
    two = prov.root / "covenant.toml"
    two_before = two.read_bytes()
    done = run("covenant", "replace-signer", "--draft", two, "--signer", PARTNERS,
               "--public-keys", fresh)  # fmt: skip
    assert done.code == 1
    assert "error: --signer:" in done.err, done.err
    assert "--new-id" in done.err
    assert two.read_bytes() == two_before


def test_set_refuses_a_timestamp_key_in_use_naming_it(run, prov: Provisioned, tmp_path) -> None:
    draft = tmp_path / "v2.toml"
    draft.write_bytes((prov.root / "covenant.toml").read_bytes())
    before = draft.read_bytes()
    covenant = prov.covenant
    for key, named in (
        (covenant.parties[0].keys.ed25519, "parties[0].keys.ed25519"),
        (covenant.broker.ed25519, "broker.ed25519"),
        (covenant.signing.signers[1].ed25519, "signing.signers[1].ed25519"),
        (covenant.signing.timestamp_ed25519, "already holds"),
    ):
        done = run("covenant", "set", draft, "signing.timestamp_ed25519", crypto.b64encode(key))
        assert done.code == 1
        assert "error: signing.timestamp_ed25519:" in done.err, done.err
        assert named in done.err, done.err
        assert draft.read_bytes() == before


# --- through the daemons ------------------------------------------------------------------


def cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_command(*(str(a) for a in args)), capture_output=True, text=True, timeout=120
    )


def publish(
    daemons: Daemons, signed: Path, timestamp_key: Path
) -> subprocess.CompletedProcess[str]:
    """``covenant publish`` through the gemeente's node's TLS identity, with a timestamp."""
    config_file = daemons.provisioned.node_configs["gemeente"]
    return cli(
        "covenant", "publish", signed, "--node", config_file, "--timestamp-key", timestamp_key
    )


def sign_cli(draft: Path, out: Path, signers: dict[str, Path]) -> Path:
    for signer, key in signers.items():
        done = cli("covenant", "sign", draft, "--signer", signer, "--key", key, "--out", out)
        assert done.returncode == 0, done.stderr
    return out


def wait_version(daemons: Daemons, version: int) -> None:
    for party in PARTIES:
        daemons.until(
            f"{party} on version {version} and fresh",
            WAIT,
            lambda p=party: (
                (s := daemons.status(p)) is not None
                and s.covenant_version == version
                and s.covenant_fresh is True
            ),
        )


def broker_version(daemons: Daemons) -> int:
    return sqlite_count(daemons.broker_database, "SELECT max(version) FROM covenant_versions")


def node_versions(daemons: Daemons, party: str) -> list[int]:
    rows = sqlite_rows(daemons.node_database(party), "SELECT version FROM covenant_versions")
    return sorted(int(row[0]) for row in rows)


def a_hit(daemons: Daemons, subject: str, tag: str) -> None:
    daemons.clients["gemeente"].add_signal(f"G-{tag}", "vastgoedmisbruik", [("bsn", subject)])
    daemons.clients["politie"].add_signal(f"P-{tag}", "drugsproductie", [("bsn", subject)])
    daemons.until(
        f"a hit on {tag} at both nodes",
        WAIT,
        lambda: all(
            any(s.reference.endswith(tag) for h in daemons.clients[p].hits() for s in h.own_signals)
            for p in PARTIES
        ),
    )


def into_mailbox(daemons: Daemons, party: str, items: list[tuple[str, bytes]]) -> None:
    """The broker's operator, broker stopped, puts items in ``party``'s mailbox by hand:
    how a version or a timestamp the broker itself refused would reach a node."""
    daemons.stop("broker")
    connection = sqlite3.connect(daemons.broker_database)
    try:
        with connection:
            (party_id,) = connection.execute(
                "SELECT id FROM parties WHERE name = ?", (party,)
            ).fetchone()
            (head,) = connection.execute(
                "SELECT head_cursor FROM mailbox_heads WHERE party_id = ?", (party_id,)
            ).fetchone()
            for offset, (kind, payload) in enumerate(items, start=1):
                connection.execute(
                    "INSERT INTO mailbox_items (party_id, cursor, kind, payload, enqueued_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        party_id,
                        head + offset,
                        kind,
                        payload,
                        datetime.now(UTC).replace(tzinfo=None),
                    ),
                )
            connection.execute(
                "UPDATE mailbox_heads SET head_cursor = ? WHERE party_id = ?",
                (head + len(items), party_id),
            )
    finally:
        connection.close()
    daemons.start("broker")
    daemons.wait_ready()


def as_proto(signed: Path) -> bytes:
    """A signed covenant file as the broker keeps it and hands it out (``SignedCovenant``)."""
    return (
        SignedCovenant.from_json(signed.read_bytes(), source=str(signed))
        .to_proto()
        .SerializeToString()
    )


def stored_timestamp(daemons: Daemons, party: str) -> bytes | None:
    """The covenant timestamp a node keeps (its one row), as the signed bytes."""
    rows = sqlite_rows(daemons.node_database(party), "SELECT signed FROM covenant_timestamp")
    return bytes(rows[0][0]) if rows else None


def broker_refuses(daemons: Daemons, signed: Path) -> str:
    """Send a signed covenant to the broker with a raw stub (an insider does not need the
    CLI, which checks the signatures itself first); the reason the broker refuses it."""
    request = broker_pb2.PublishCovenantRequest(
        covenant=SignedCovenant.from_json(signed.read_bytes(), source=str(signed)).to_proto()
    )
    with broker_stub(daemons) as stub, pytest.raises(grpc.RpcError) as refused:
        stub.PublishCovenant(request, timeout=10)
    return error_from_rpc(refused.value).reason


def timestamp_refusals(daemons: Daemons, party: str) -> list[bytes]:
    return [
        line for line in daemons.log(party).splitlines() if b"covenant timestamp refused" in line
    ]


def audited_rejections(daemons: Daemons, party: str) -> list[str]:
    rows = sqlite_rows(
        daemons.node_database(party),
        "SELECT details FROM audit_entries WHERE kind = 'covenant_rejected' ORDER BY seq",
    )
    return [json.loads(row[0])["reason"] for row in rows]


def test_a_signers_key_and_the_timestamp_key_replaced_while_everything_runs(
    tmp_path: Path,
) -> None:
    with running_covenant(
        tmp_path / "c", "riec-signers", SPECS, PARTIES, 2, now=datetime.now(UTC), policy=SEE_ALL
    ) as daemons:
        provisioned = daemons.provisioned
        work = tmp_path / "admin"
        work.mkdir()
        keys = dict(provisioned.signer_keys)
        old_timestamp = provisioned.timestamp_key

        # Version 2: a third signer, 2 of 3 (a hand edit, signed by all three).
        v2_draft = work / "v2.toml"
        v2_draft.write_bytes(covenant_to_toml(three_signers(work, provisioned.covenant, keys)))
        v2 = sign_cli(v2_draft, work / "v2.json", keys)
        done = publish(daemons, v2, old_timestamp)
        assert done.returncode == 0, done.stderr
        wait_version(daemons, 2)

        # Version 3: the partners' administrator lost the laptop; the others replace its key.
        v3_draft = draft_of(v2, work / "v3.toml")
        partners_new, partners_public = keygen(work, PARTNERS, "partners-new")
        done = cli("covenant", "replace-signer", "--draft", v3_draft, "--signer", PARTNERS,
                   "--public-keys", partners_public)  # fmt: skip
        assert done.returncode == 0, done.stderr
        v3 = sign_cli(v3_draft, work / "v3.json", {RIEC: keys[RIEC], TOEZICHT: keys[TOEZICHT]})
        done = publish(daemons, v3, old_timestamp)
        assert done.returncode == 0, done.stderr
        wait_version(daemons, 3)
        a_hit(daemons, "111222333", "AFTER-V3")

        # Whoever has the lost laptop signs a version with the old key: the broker refuses.
        stolen_draft = draft_of(v3, work / "v4-stolen.toml")
        done = cli("covenant", "set", stolen_draft, "retention.default_days", "200")
        assert done.returncode == 0, done.stderr
        stolen = forge(stolen_draft, work / "v4-stolen.json", {PARTNERS: keys[PARTNERS]})
        done = publish(daemons, stolen, old_timestamp)
        assert done.returncode != 0  # the CLI checks first
        assert "REJECTED (covenant.bad_signature)" in done.stderr, done.stderr
        assert broker_refuses(daemons, stolen) == "covenant.bad_signature"
        assert broker_version(daemons) == 3

        # Version 4 replaces the toezicht's signer under a new id. Signed by the new key and
        # by one held signer only (the new signer set, without the held threshold): refused.
        v4_draft = draft_of(v3, work / "v4.toml")
        toezicht_new, toezicht_public = keygen(work, "beheer-toezicht-2")
        done = cli("covenant", "replace-signer", "--draft", v4_draft, "--signer", TOEZICHT,
                   "--public-keys", toezicht_public, "--new-id", "beheer-toezicht-2")  # fmt: skip
        assert done.returncode == 0, done.stderr
        v4 = sign_cli(v4_draft, work / "v4.json",
                      {"beheer-toezicht-2": toezicht_new, PARTNERS: partners_new})  # fmt: skip
        assert broker_refuses(daemons, v4) == "covenant.under_signed"
        assert broker_version(daemons) == 3
        # With the riec's signature too it has the held threshold: taken.
        sign_cli(v4, v4, {RIEC: keys[RIEC]})
        done = publish(daemons, v4, old_timestamp)
        assert done.returncode == 0, done.stderr
        wait_version(daemons, 4)

        # The old toezicht key, under its old id, is nobody's now.
        v5_draft = draft_of(v4, work / "v5.toml")
        assert cli("covenant", "set", v5_draft, "retention.default_days", "150").returncode == 0
        gone = forge(v5_draft, work / "v5-gone.json", {TOEZICHT: keys[TOEZICHT]})
        assert broker_refuses(daemons, gone) == "covenant.under_signed"
        assert broker_version(daemons) == 4

        # A version 5 that replaces the toezicht-2 signer again, signed by its new key and the
        # partners' (the new signer set's threshold, not the held one's): refused.
        new_set_draft = draft_of(v4, work / "v5-new-set.toml")
        toezicht_3, toezicht_3_public = keygen(work, "beheer-toezicht-3")
        done = cli("covenant", "replace-signer", "--draft", new_set_draft, "--signer",
                   "beheer-toezicht-2", "--public-keys", toezicht_3_public,
                   "--new-id", "beheer-toezicht-3")  # fmt: skip
        assert done.returncode == 0, done.stderr
        new_set = sign_cli(new_set_draft, work / "v5-new-set.json",
                           {"beheer-toezicht-3": toezicht_3, PARTNERS: partners_new})  # fmt: skip
        assert broker_refuses(daemons, new_set) == "covenant.under_signed"
        assert broker_version(daemons) == 4

        # The broker's operator, colluding, hands the gemeente's node the three refused
        # versions (each a version 5: newer than the one held) in its mailbox: each refused
        # with its reason and recorded, nothing stored, the node stays on version 4.
        v5_stolen = forge(v5_draft, work / "v5-stolen.json", {PARTNERS: keys[PARTNERS]})
        forged = [("covenant_update", as_proto(f)) for f in (v5_stolen, gone, new_set)]
        into_mailbox(daemons, "gemeente", forged)
        daemons.until(
            "the gemeente's node refusing all three",
            WAIT,
            lambda: len(audited_rejections(daemons, "gemeente")) == 3,
        )
        assert audited_rejections(daemons, "gemeente") == [
            "covenant.bad_signature",
            "covenant.under_signed",
            "covenant.under_signed",
        ]
        assert node_versions(daemons, "gemeente") == [2, 3, 4]
        gemeente = daemons.status("gemeente")
        assert gemeente is not None
        assert gemeente.covenant_version == 4
        log = daemons.log("gemeente")
        assert log.count(b"covenant update refused") == 3

        # Version 5 replaces the timestamp key (signed by the riec and the new partners key).
        new_timestamp, timestamp_public = keygen(work, TIMESTAMP_SIGNER, "timestamp-new")
        new_key = PublicKeys.from_json(timestamp_public.read_bytes())[1].ed25519
        done = cli("covenant", "set", v5_draft, "signing.timestamp_ed25519",
                   crypto.b64encode(new_key), "--no-bump")  # fmt: skip
        assert done.returncode == 0, done.stderr
        v5 = sign_cli(v5_draft, work / "v5.json", {RIEC: keys[RIEC], PARTNERS: partners_new})
        done = publish(daemons, v5, new_timestamp)
        assert done.returncode == 0, done.stderr
        wait_version(daemons, 5)

        # The timestamp job with the old key: the CLI refuses it, naming the key; signed by
        # hand and sent to the broker, the broker refuses it; the new key's is taken.
        done = cli("covenant", "timestamp", "--covenant", v5, "--key", old_timestamp,
                   "--node", provisioned.node_configs["gemeente"])  # fmt: skip
        assert done.returncode != 0
        assert "error: --key: this key is not the timestamp key" in done.stderr, done.stderr
        covenant5 = SignedCovenant.from_json(v5.read_bytes(), source="v5")
        old_stamp = old_key_timestamp(covenant5, old_timestamp)
        with broker_stub(daemons) as stub, pytest.raises(grpc.RpcError) as refused:
            stub.PublishTimestamp(
                broker_pb2.PublishTimestampRequest(covenant_timestamp=old_stamp.to_proto()),
                timeout=10,
            )
        assert error_from_rpc(refused.value).reason == "timestamp.bad_signature"
        done = cli("covenant", "timestamp", "--covenant", v5, "--key", new_timestamp,
                   "--node", provisioned.node_configs["gemeente"])  # fmt: skip
        assert done.returncode == 0, done.stderr
        taken = brokers_timestamp(daemons)
        freshness.verify_timestamp(
            taken, covenant5.unverified(), covenant5.body, now=datetime.now(UTC)
        )  # signed with the new key: the covenant's now

        # And by a node, when the operator puts one of the old key in its mailbox.
        stored_before = stored_timestamp(daemons, "politie")
        seen = len(timestamp_refusals(daemons, "politie"))
        into_mailbox(daemons, "politie", [("covenant_timestamp", old_stamp.signed)])
        daemons.until(
            "the politie's node refusing the old key's timestamp",
            WAIT,
            lambda: len(timestamp_refusals(daemons, "politie")) > seen,
        )
        (refusal,) = timestamp_refusals(daemons, "politie")[seen:]
        assert b"timestamp.bad_signature" in refusal, refusal
        assert stored_timestamp(daemons, "politie") in (stored_before, taken.signed)
        assert stored_timestamp(daemons, "politie") != old_stamp.signed

        # Everything still works: a hit after it all.
        wait_version(daemons, 5)
        a_hit(daemons, "123456782", "AFTER-V5")


@contextlib.contextmanager
def broker_stub(daemons: Daemons) -> Iterator[broker_pb2_grpc.BrokerStub]:
    """A raw broker stub with the gemeente's TLS identity."""
    node = config.load_node_config(daemons.provisioned.node_configs["gemeente"])
    with broker_channel(
        node.broker,
        ca_certificate=node.ca_certificate.read_bytes(),
        private_key=crypto.read_secret_file(node.private_key),
        certificate=node.certificate.read_bytes(),
    ) as channel:
        yield broker_pb2_grpc.BrokerStub(channel)


def brokers_timestamp(daemons: Daemons) -> CovenantTimestamp:
    """The newest covenant timestamp the broker hands out (``Hello``, as the gemeente)."""
    with broker_stub(daemons) as stub:
        hello = stub.Hello(broker_pb2.HelloRequest(party="gemeente"), timeout=10)
    assert hello.HasField("covenant_timestamp")
    return CovenantTimestamp.parse(hello.covenant_timestamp)


def old_key_timestamp(signed: SignedCovenant, old_key: Path) -> CovenantTimestamp:
    """A timestamp over ``signed``'s bytes signed with the replaced timestamp key, as whoever
    kept that key would make it (``issue_timestamp`` itself refuses a key the covenant does
    not name: it is told the old key is the covenant's)."""
    keys = PartyKeys.load(old_key)
    covenant = signed.unverified()
    claimed = replace(
        covenant, signing=replace(covenant.signing, timestamp_ed25519=keys.public().ed25519)
    )
    return freshness.issue_timestamp(keys.signing_key, claimed, signed.body, now=datetime.now(UTC))
