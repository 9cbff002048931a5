"""``samenloop covenant``: the administrators' commands, end to end through the CLI."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from samenloop.node.provision import PartySpec, Provisioned, provision
from samenloop.policies import certs, cli, crypto
from samenloop.policies.covenant import Role, covenant_from_toml, covenant_to_toml
from samenloop.policies.crypto import PartyKeys, SignatureContext
from samenloop.policies.freshness import CovenantTimestamp, verify_current
from samenloop.policies.rpc import ErrorInterceptor
from samenloop.policies.trust import SignedCovenant, TrustState
from samenloop.v1 import broker_pb2, broker_pb2_grpc

PARTIES = (
    PartySpec("gemeente-tilburg", "Gemeente Tilburg", Role.GEMEENTE),
    PartySpec("politie-zwb", "Politie Zeeland-West-Brabant", Role.POLITIE),
    PartySpec("riec-zwb", "RIEC Zeeland-West-Brabant", Role.RIEC),
)
HOLDERS = ["politie-zwb", "riec-zwb"]
SIGNERS = ("beheer-riec", "beheer-partners")


@pytest.fixture(autouse=True)
def commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI with the covenant commands, whether or not the entry point is installed yet;
    wide output, so that tables do not fold the words the tests look for."""
    real = metadata.entry_points
    ours = {"covenant": "samenloop.policies.covenant_commands:register"}

    def entry_points(*, group: str) -> list[metadata.EntryPoint]:
        found = [e for e in real(group=group) if e.name not in ours]
        return found + [metadata.EntryPoint(n, v, group) for n, v in ours.items()]

    monkeypatch.setattr(cli, "entry_points", entry_points)
    monkeypatch.setenv("COLUMNS", "200")


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]):
    def run(*args: object) -> Result:
        capsys.readouterr()
        code = cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def prov(tmp_path: Path) -> Provisioned:
    """A provisioned covenant in force now, signed by both signers (threshold 2)."""
    return provision(tmp_path / "prov", "riec-zwb", PARTIES, HOLDERS, 2, now=datetime.now(UTC))


def sign_all(run, prov: Provisioned, draft: Path, out: Path) -> None:
    for signer in SIGNERS:
        result = run(
            "covenant", "sign", draft, "--signer", signer, "--key", prov.signer_keys[signer],
            "--out", out,
        )  # fmt: skip
        assert result.code == 0, result.err


def new_version(run, prov: Provisioned, tmp_path: Path) -> tuple[Path, Path]:
    """Version 2 of the provisioned covenant (retention changed), signed by both."""
    draft = tmp_path / "v2.toml"
    draft.write_bytes((prov.root / "covenant.toml").read_bytes())
    assert run("covenant", "set", draft, "retention.default_days", "400").code == 0
    signed = tmp_path / "v2.json"
    sign_all(run, prov, draft, signed)
    return draft, signed


# --- from nothing: init, sign, verify -------------------------------------------------


@pytest.fixture
def material(tmp_path: Path, run) -> Path:
    """What administrators collect before ``covenant init``: keys, CA, key epoch."""
    keys = tmp_path / "keys"
    for party in (*[p.id for p in PARTIES], "broker", "riec-admin"):
        assert run("node", "keygen", "--party", party, "--out", keys / f"{party}.json").code == 0
    for signer in (*SIGNERS, "timestamp"):
        result = run("covenant", "signer-keygen", "--id", signer, "--out", keys / f"{signer}.json")
        assert result.code == 0, result.err
    deal = ["keyholder", "deal", "--covenant", "riec-zwb", "--epoch", "1", "--threshold", "2"]
    for holder in HOLDERS:
        deal += ["--holder", f"{holder}={keys / f'{holder}.public.json'}"]
    deal += ["--admin-keys", keys / "riec-admin.json", "--out", tmp_path / "epoch"]
    assert run(*deal).code == 0
    ca = ["covenant", "ca-init", "--id", "riec-zwb"]
    result = run(
        *ca, "--ca-key", tmp_path / "ca" / "ca.key", "--ca-cert", tmp_path / "ca" / "ca.pem"
    )
    assert result.code == 0, result.err
    return tmp_path


def init_args(tmp: Path, **override: object) -> list[object]:
    keys = tmp / "keys"
    args: dict[str, object] = {
        "--id": "riec-zwb",
        "--out": tmp / "covenant.toml",
        "--ca-cert": tmp / "ca" / "ca.pem",
        "--broker-id": "broker",
        "--broker-address": "broker.riec-zwb.nl:7443",
        "--broker-key": keys / "broker.public.json",
        "--threshold": "2",
        "--key-epoch": tmp / "epoch" / "key-epoch-1.json",
        "--key-epoch-admin": keys / "riec-admin.public.json",
        "--valid-days": "30",
        "--timestamp-key": keys / "timestamp.public.json",
    }
    args.update(override)
    flat: list[object] = ["covenant", "init"]
    for key, value in args.items():
        if value is not None:
            flat += [key, value]
    for signer, name in zip(SIGNERS, ("RIEC beheer", "Beheer: partners"), strict=True):
        flat += ["--signer", f"{signer}:{name}:{keys / f'{signer}.public.json'}"]
    for p in PARTIES:
        flat += ["--party", f"{p.id}:{p.name}:{p.role.value}:{keys / f'{p.id}.public.json'}"]
    return flat


def test_signer_keygen_is_owner_only_and_prints_only_the_public_key(run, tmp_path):
    result = run("covenant", "signer-keygen", "--id", "beheer-x", "--out", tmp_path / "x.json")
    assert result.code == 0
    secret = PartyKeys.load(tmp_path / "x.json")
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o600
    assert crypto.b64encode(secret.public().ed25519) in result.out
    assert crypto.b64encode(secret.ed25519_seed) not in result.out + result.err
    public = json.loads((tmp_path / "x.public.json").read_text())
    assert public["party"] == "beheer-x"
    assert "ed25519_seed" not in public
    again = run("covenant", "signer-keygen", "--id", "beheer-x", "--out", tmp_path / "x.json")
    assert again.code == 2
    assert "refusing to overwrite" in again.err


def test_init_sign_by_each_signer_then_verify(run, material):
    result = run(*init_args(material))
    assert result.code == 0, result.err
    draft = material / "covenant.toml"
    covenant = covenant_from_toml(draft.read_bytes(), source="draft")
    assert covenant.version == 1
    assert [s.id for s in covenant.signing.signers] == list(SIGNERS)
    assert covenant.signing.signer("beheer-partners").name == "Beheer: partners"
    assert [seat.party for seat in covenant.key_epoch.holders] == HOLDERS
    assert covenant.broker.address == "broker.riec-zwb.nl:7443"
    assert covenant_to_toml(covenant) == draft.read_bytes()  # canonical

    signed = material / "covenant.json"
    keys = material / "keys"
    first = run(
        "covenant", "sign", draft, "--signer", "beheer-riec", "--key", keys / "beheer-riec.json"
    )
    assert first.code == 0, first.err
    assert "1 of threshold 2" in first.out
    under = run("covenant", "verify", signed)
    assert under.code == 2
    assert "covenant.under_signed" in under.err

    second = run(
        "covenant", "sign", draft, "--signer", "beheer-partners",
        "--key", keys / "beheer-partners.json", "--out", signed,
    )  # fmt: skip
    assert second.code == 0, second.err
    assert "2 of threshold 2" in second.out
    ok = run("covenant", "verify", signed)
    assert ok.code == 0, ok.err
    assert "OK" in ok.out
    assert "version 1" in ok.out
    assert "beheer-riec, beheer-partners: 2 of threshold 2" in ok.out
    secrets = [PartyKeys.load(keys / f"{s}.json").ed25519_seed for s in SIGNERS]
    for secret in secrets:
        assert crypto.b64encode(secret) not in signed.read_text()


def test_init_refuses_bad_input_naming_the_field(run, material):
    keys = material / "keys"
    bad_role = init_args(material)
    bad_role[-1] = f"riec-zwb:RIEC:detective:{keys / 'riec-zwb.public.json'}"
    result = run(*bad_role)
    assert result.code == 1
    assert "parties[2].role" in result.err
    assert "detective" in result.err

    result = run(*init_args(material, **{"--broker-key": None, "--broker-ed25519": "bm9wZQ=="}))
    assert result.code == 1
    assert "--broker-ed25519" in result.err

    result = run(*init_args(material, **{"--threshold": "3"}))
    assert result.code == 1
    assert "signing.threshold" in result.err

    result = run(*init_args(material, **{"--key-epoch": material / "missing.json"}))
    assert result.code == 2
    assert "missing.json" in result.err

    # The key epoch was dealt by riec-admin, not by whoever this is.
    result = run(*init_args(material, **{"--key-epoch-admin": keys / "broker.public.json"}))
    assert result.code == 4
    assert "key-epoch-1.json" in result.err

    # A party whose public keys file belongs to someone else.
    wrong = init_args(material)
    wrong[-1] = f"riec-zwb:RIEC:riec:{keys / 'broker.public.json'}"
    result = run(*wrong)
    assert result.code == 1
    assert "--party[2]" in result.err

    # The CA that 'covenant ca-init' made for another covenant, and a file that is no certificate.
    other = material / "other-ca"
    made = run("covenant", "ca-init", "--id", "riec-elders", "--ca-key", other / "ca.key",
               "--ca-cert", other / "ca.pem")  # fmt: skip
    assert made.code == 0, made.err
    result = run(*init_args(material, **{"--ca-cert": other / "ca.pem"}))
    assert result.code == 1
    assert "error: --ca-cert:" in result.err
    assert "'riec-elders', not 'riec-zwb'" in result.err
    result = run(*init_args(material, **{"--ca-cert": keys / "broker.public.json"}))
    assert result.code == 1
    assert "error: --ca-cert: not a PEM X.509 certificate" in result.err
    assert not (material / "covenant.toml").exists()


def test_init_takes_a_ca_certificate_made_outside_samenloop(run, material):
    """An organisation's own CA names no covenant: 'init' takes it as it is."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Beheer PKI")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    own = material / "own-ca.pem"
    own.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    result = run(*init_args(material, **{"--ca-cert": own}))
    assert result.code == 0, result.err
    draft = covenant_from_toml((material / "covenant.toml").read_bytes(), source="draft")
    assert draft.ca_certificate == own.read_bytes()


# --- trust: rejections and their reasons ---------------------------------------------


def test_provisioned_covenant_verifies(run, prov):
    result = run("covenant", "verify", prov.signed_covenant)
    assert result.code == 0, result.err
    assert "2 of threshold 2" in result.out


def test_tampered_covenant_is_rejected_as_bad_signature(run, prov, tmp_path):
    doc = json.loads(prov.signed_covenant.read_text())
    assert "Gemeente Tilburg" in doc["covenant"]
    doc["covenant"] = doc["covenant"].replace("Gemeente Tilburg", "Gemeente Tilburh")
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc))
    result = run("covenant", "verify", tampered)
    assert result.code == 2
    assert "covenant.bad_signature" in result.err


def test_successor_verifies_and_an_older_version_is_a_rollback(run, prov, tmp_path):
    _draft, v2 = new_version(run, prov, tmp_path)
    ok = run("covenant", "verify", v2, "--previous", prov.signed_covenant)
    assert ok.code == 0, ok.err
    assert "version 2" in ok.out
    assert "successor of version 1" in ok.out
    back = run("covenant", "verify", prov.signed_covenant, "--previous", v2)
    assert back.code == 2
    assert "covenant.rollback" in back.err
    same = run("covenant", "verify", v2, "--previous", v2)
    assert same.code == 0
    assert "same" in same.out


def test_expired_and_not_yet_valid(run, prov):
    covenant = prov.covenant
    late = (covenant.valid_until + timedelta(seconds=1)).isoformat()
    result = run("covenant", "verify", prov.signed_covenant, "--at", late)
    assert result.code == 2
    assert "covenant.expired" in result.err
    early = (covenant.valid_from - timedelta(days=1)).isoformat()
    result = run("covenant", "verify", prov.signed_covenant, "--at", early)
    assert result.code == 2
    assert "covenant.not_yet_valid" in result.err


def test_signature_by_an_unknown_signer_is_rejected(run, prov, tmp_path):
    stranger = PartyKeys.generate("beheer-onbekend")
    signed = SignedCovenant.from_json(prov.signed_covenant.read_bytes(), source="c")
    doc = json.loads(signed.to_json())
    doc["signatures"].append(
        {
            "signer": "beheer-onbekend",
            "signature": crypto.b64encode(stranger.sign(SignatureContext.COVENANT, signed.body)),
        }
    )
    path = tmp_path / "extra.json"
    path.write_text(json.dumps(doc))
    result = run("covenant", "verify", path)
    assert result.code == 2
    assert "covenant.unknown_signer" in result.err


def test_sign_refuses_a_wrong_key_and_a_foreign_out_file(run, prov, tmp_path):
    draft = prov.root / "covenant.toml"
    result = run(
        "covenant", "sign", draft, "--signer", "beheer-riec",
        "--key", prov.signer_keys["beheer-partners"], "--out", tmp_path / "s.json",
    )  # fmt: skip
    assert result.code == 1
    assert "key" in result.err
    result = run(
        "covenant", "sign", draft, "--signer", "beheer-x",
        "--key", prov.signer_keys["beheer-partners"], "--out", tmp_path / "s.json",
    )  # fmt: skip
    assert result.code == 1
    assert "signer" in result.err
    v2_draft, _ = new_version(run, prov, tmp_path)
    result = run(
        "covenant", "sign", v2_draft, "--signer", "beheer-riec",
        "--key", prov.signer_keys["beheer-riec"], "--out", prov.signed_covenant,
    )  # fmt: skip
    assert result.code == 2
    assert "another covenant" in result.err
    assert run("covenant", "verify", prov.signed_covenant).code == 0  # untouched


def test_signing_a_signed_file_keeps_the_other_signatures(run, prov, tmp_path):
    signed = tmp_path / "one.json"
    run(
        "covenant", "sign", prov.root / "covenant.toml", "--signer", "beheer-riec",
        "--key", prov.signer_keys["beheer-riec"], "--out", signed,
    )  # fmt: skip
    result = run(
        "covenant", "sign", signed, "--signer", "beheer-partners",
        "--key", prov.signer_keys["beheer-partners"],
    )  # fmt: skip
    assert result.code == 0, result.err
    assert run("covenant", "verify", signed).code == 0


# --- editing a draft -----------------------------------------------------------------


def test_add_and_remove_party_bump_the_version_and_round_trip(run, prov, tmp_path):
    draft = tmp_path / "draft.toml"
    draft.write_bytes((prov.root / "covenant.toml").read_bytes())
    run("node", "keygen", "--party", "woonbron", "--out", tmp_path / "woonbron.json")
    result = run(
        "covenant", "add-party", draft, "--id", "woonbron", "--name", "Woonbron",
        "--role", "woningcorporatie", "--keys", tmp_path / "woonbron.public.json",
    )  # fmt: skip
    assert result.code == 0, result.err
    added = covenant_from_toml(draft.read_bytes(), source="draft")
    assert added.version == 2
    assert added.party("woonbron").role is Role.WONINGCORPORATIE
    assert added.public_keys("woonbron") == PartyKeys.load(tmp_path / "woonbron.json").public()
    assert covenant_to_toml(added) == draft.read_bytes()

    shown = run("covenant", "show", draft)
    assert shown.code == 0, shown.err
    assert "woonbron" in shown.out
    assert "woningcorporatie" in shown.out
    assert "version 2" in shown.out
    diff = run("covenant", "diff", prov.root / "covenant.toml", draft)
    assert diff.code == 0
    assert "~ version: 1 -> 2" in diff.out
    assert "+ parties[woonbron]: id=woonbron; name=Woonbron; role=woningcorporatie" in diff.out
    assert "~ attribute_key_version: 1 -> 2" in diff.out

    result = run("covenant", "remove-party", draft, "--id", "gemeente-tilburg")
    assert result.code == 0, result.err
    assert "cut off" in result.out
    removed = covenant_from_toml(draft.read_bytes(), source="draft")
    assert removed.version == 3
    assert not removed.is_party("gemeente-tilburg")
    assert covenant_to_toml(removed) == draft.read_bytes()
    diff = run("covenant", "diff", prov.signed_covenant, draft)
    assert "- parties[gemeente-tilburg]: id=gemeente-tilburg; name=Gemeente Tilburg" in diff.out
    text = run("covenant", "diff", prov.signed_covenant, draft, "--text")
    assert '-name = "Gemeente Tilburg"' in text.out
    assert "+version = 3" in text.out


def test_remove_party_deals_a_new_attribute_key_to_the_parties_that_remain(run, prov, tmp_path):
    draft = tmp_path / "draft.toml"
    draft.write_bytes((prov.root / "covenant.toml").read_bytes())
    result = run("covenant", "remove-party", draft, "--id", "gemeente-tilburg")
    assert result.code == 0, result.err
    assert "attribute key version 2" in result.out
    removed = covenant_from_toml(draft.read_bytes(), source="draft")
    assert removed.attribute_key_version == 2
    keys = {p.id: PartyKeys.load(prov.root / p.id / "party-keys.json") for p in PARTIES}
    new = {removed.attribute_key_for(keys[p]).key for p in ("politie-zwb", "riec-zwb")}
    assert len(new) == 1
    assert new != {prov.covenant.attribute_key_for(keys["gemeente-tilburg"]).key}
    signed = tmp_path / "v2.json"
    sign_all(run, prov, draft, signed)
    result = run("covenant", "verify", signed, "--previous", prov.signed_covenant)
    assert result.code == 0, result.err


def test_a_hand_removed_party_is_refused_until_a_new_attribute_key_is_dealt(run, prov, tmp_path):
    """An administrator who deletes a party's entry by hand keeps the key it holds:
    the successor check names the field, and rotate-attribute-key deals a new one."""
    text = (prov.root / "covenant.toml").read_text()
    start = text.index('[[parties]]\nid = "gemeente-tilburg"')
    end = text.index("[[parties]]", start + 1)
    draft = tmp_path / "draft.toml"
    edited = text[:start] + text[end:]
    draft.write_text(edited.replace("\nversion = 1\n", "\nversion = 2\n", 1))
    signed = tmp_path / "v2.json"
    sign_all(run, prov, draft, signed)
    result = run("covenant", "verify", signed, "--previous", prov.signed_covenant)
    assert result.code == 2
    assert "covenant.attribute_key_kept" in result.err
    assert "v2.json: attribute_key_version" in result.err
    assert "gemeente-tilburg" in result.err
    assert "rotate-attribute-key" in result.err

    result = run("covenant", "rotate-attribute-key", draft)
    assert result.code == 0, result.err
    rotated = covenant_from_toml(draft.read_bytes(), source="draft")
    assert (rotated.version, rotated.attribute_key_version) == (3, 2)
    signed.unlink()
    sign_all(run, prov, draft, signed)
    result = run("covenant", "verify", signed, "--previous", prov.signed_covenant)
    assert result.code == 0, result.err


def test_diff_names_a_privacy_budget_and_new_case_coordinators(run, prov, tmp_path):
    draft = tmp_path / "v2.toml"
    text = (prov.root / "covenant.toml").read_text()
    draft.write_text(
        text.replace("\nversion = 1\n", "\nversion = 2\n", 1)
        .replace("epsilon_per_period = 0.0", "epsilon_per_period = 1.0")
        .replace("epsilon_per_request = 0.0", "epsilon_per_request = 0.25")
        .replace('coordinators = ["riec"]', 'coordinators = ["riec", "politie"]')
    )
    result = run("covenant", "diff", prov.signed_covenant, draft)
    assert result.code == 0, result.err
    assert result.out.splitlines()[1:] == [
        "  ~ version: 1 -> 2",
        "  ~ picture.epsilon_per_period: 0.0 -> 1.0",
        "  ~ picture.epsilon_per_request: 0.0 -> 0.25",
        "  + cases.coordinators: politie",
    ]


def test_remove_party_refuses_a_key_holder_and_too_few_parties(run, prov, tmp_path):
    draft = tmp_path / "draft.toml"
    original = (prov.root / "covenant.toml").read_bytes()
    draft.write_bytes(original)
    result = run("covenant", "remove-party", draft, "--id", "politie-zwb")
    assert result.code == 1
    assert "--id" in result.err
    assert "key-holder seat" in result.err
    assert "keyholder deal" in result.err
    assert run("covenant", "set", draft, "matching.min_parties", "3").code == 0
    result = run("covenant", "remove-party", draft, "--id", "gemeente-tilburg")
    assert result.code == 1
    assert "min_parties" in result.err
    result = run("covenant", "remove-party", draft, "--id", "nobody")
    assert result.code == 1
    assert "not a party" in result.err
    result = run("covenant", "add-party", draft, "--id", "x", "--name", "X", "--role", "spion",
                 "--keys", prov.root / "riec-zwb" / "party-keys.json")  # fmt: skip
    assert result.code == 1
    assert "--role" in result.err
    result = run("covenant", "add-party", draft, "--id", "x", "--name", "X", "--role", "gemeente",
                 "--keys", tmp_path / "absent.public.json")  # fmt: skip
    assert result.code == 2
    assert "absent.public.json" in result.err
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"kind": "samenloop.public-keys.v1", "party": "x", "ed25519": "AAAA"}')
    result = run("covenant", "add-party", draft, "--id", "x", "--name", "X", "--role", "gemeente",
                 "--keys", garbage)  # fmt: skip
    assert result.code == 2
    assert "garbage.json" in result.err
    assert covenant_from_toml(draft.read_bytes(), source="d").version == 2  # only the set


def test_set_values_and_bump(run, prov, tmp_path):
    draft = tmp_path / "draft.toml"
    draft.write_bytes((prov.root / "covenant.toml").read_bytes())
    until = "2030-01-01T00:00:00Z"
    assert run("covenant", "set", draft, "valid_until", until).code == 0
    assert run("covenant", "set", draft, "quotas.oprf_evaluations_per_day", "5000").code == 0
    assert run("covenant", "set", draft, "signing.threshold", "1", "--no-bump").code == 0
    assert run("covenant", "set", draft, "quotas.token_entries_per_day", "20000").code == 0
    assert (
        run("covenant", "set", draft, "quotas.token_entries_held", "30000", "--no-bump").code == 0
    )
    covenant = covenant_from_toml(draft.read_bytes(), source="d")
    assert covenant.version == 4
    quotas = covenant.policy.quotas
    assert (quotas.token_entries_per_day, quotas.token_entries_held) == (20_000, 30_000)
    assert covenant.valid_until == datetime(2030, 1, 1, tzinfo=UTC)
    assert covenant.policy.quotas.oprf_evaluations_per_day == 5000
    assert covenant.signing.threshold == 1
    diff = run("covenant", "diff", prov.root / "covenant.toml", draft)
    assert "~ quotas.oprf_evaluations_per_day: 1000000 -> 5000" in diff.out
    assert "~ signing.threshold: 2 -> 1" in diff.out

    result = run("covenant", "set", draft, "signing.threshold", "3")
    assert result.code == 1
    assert "signing.threshold" in result.err
    result = run("covenant", "set", draft, "quotas.token_entries_held", "9999")
    assert result.code == 1
    assert "token_entries_held" in result.err
    for key, value in [
        ("quotas.hit_notice_bytes_per_day", 2**21),
        ("quotas.envelopes_per_day", 50),
        ("quotas.envelope_bytes_per_day", 2**22),
        ("quotas.envelope_bytes_waiting", 2**23),
    ]:
        assert run("covenant", "set", draft, key, str(value), "--no-bump").code == 0
        set_to = getattr(covenant_from_toml(draft.read_bytes(), source="d").policy.quotas, key[7:])
        assert set_to == value
    result = run("covenant", "set", draft, "quotas.envelope_bytes_waiting", "1024")
    assert result.code == 1
    assert "envelope_bytes_waiting" in result.err
    result = run("covenant", "set", draft, "quotas.disclosure_requests_per_day", "many")
    assert result.code == 1
    assert "quotas.disclosure_requests_per_day" in result.err
    result = run("covenant", "set", draft, "valid_until", "soon")
    assert result.code == 1
    assert "valid_until" in result.err
    result = run("covenant", "set", draft, "visibility", "none")
    assert result.code == 1
    assert "edit the TOML" in result.err
    result = run("covenant", "set", prov.signed_covenant, "retention.default_days", "9")
    assert result.code == 1
    assert "signed covenant" in result.err
    assert covenant_from_toml(draft.read_bytes(), source="d").version == 4


def test_show_signed_and_toml(run, prov):
    result = run("covenant", "show", prov.signed_covenant)
    assert result.code == 0, result.err
    for text in ("riec-zwb version 1 (signed)", "beheer-riec", "signed", "politie-zwb",
                 "hidden_roles", "bibob", "four_eyes", "[retention]", "[picture]",
                 "epsilon_per_period", "[cases]", "coordinators", "sealed_attribute_key",
                 "disclosure_requests_per_day │ 200"):  # fmt: skip
        assert text in result.out, text
    toml = run("covenant", "show", prov.signed_covenant, "--toml")
    assert toml.out.encode() == (prov.root / "covenant.toml").read_bytes()


# --- certificates and publishing -----------------------------------------------------


def test_ca_init_makes_the_covenant_ca_with_an_owner_only_key(run, tmp_path):
    key, cert = tmp_path / "ca" / "ca.key", tmp_path / "ca" / "ca.pem"
    result = run("covenant", "ca-init", "--id", "riec-zwb", "--ca-key", key, "--ca-cert", cert,
                 "--days", "30")  # fmt: skip
    assert result.code == 0, result.err
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    ca = certs.CertificateAuthority.load(key, cert)  # checks that it is a CA and the key its own
    assert ca.covenant_id == "riec-zwb"
    until = certs.load_certificate(cert.read_bytes(), field="ca").not_valid_after_utc
    assert timedelta(days=29) < until - datetime.now(UTC) <= timedelta(days=30)
    assert certs.certificate_fingerprint(cert.read_bytes()) in result.out
    assert "offline" in result.out
    assert "BEGIN" not in result.out + result.err  # the key is never printed


@pytest.mark.parametrize("existing", ["--ca-key", "--ca-cert"])
def test_ca_init_refuses_to_overwrite_either_file(run, tmp_path, existing):
    files = {"--ca-key": tmp_path / "ca.key", "--ca-cert": tmp_path / "ca.pem"}
    files[existing].write_bytes(b"the CA of record")
    args = [a for option, path in files.items() for a in (option, path)]
    result = run("covenant", "ca-init", "--id", "riec-zwb", *args)
    assert result.code == 2
    assert f"error: {existing}:" in result.err
    assert "refusing to overwrite" in result.err
    assert files[existing].read_bytes() == b"the CA of record"
    assert [p for p in files.values() if p.exists()] == [files[existing]]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--id", "RIEC zwb"], "--id"),
        (["--id", "riec-zwb", "--days", "0"], "--days"),
        (["--id", "riec-zwb", "--days", "36501"], "--days"),
    ],
)
def test_ca_init_names_the_wrong_input(run, tmp_path, args, field):
    key, cert = tmp_path / "ca.key", tmp_path / "ca.pem"
    result = run("covenant", "ca-init", *args, "--ca-key", key, "--ca-cert", cert)
    assert result.code == 1
    assert f"error: {field}:" in result.err
    assert not key.exists()
    assert not cert.exists()


def test_ca_init_needs_two_files(run, tmp_path):
    same = tmp_path / "ca.pem"
    result = run("covenant", "ca-init", "--id", "riec-zwb", "--ca-key", same, "--ca-cert", same)
    assert result.code == 1
    assert "error: --ca-cert:" in result.err
    assert not same.exists()


def test_issue_certs_for_parties_and_broker(run, prov, tmp_path):
    out = tmp_path / "certs"
    result = run(
        "covenant", "issue-certs", "--covenant", prov.signed_covenant,
        "--ca-key", prov.root / "ca" / "ca.key", "--ca-cert", prov.root / "ca" / "ca.pem",
        "--out", out, "--broker-hostname", "127.0.0.1",
    )  # fmt: skip
    assert result.code == 0, result.err
    ca_pem = (prov.root / "ca" / "ca.pem").read_bytes()
    now = datetime.now(UTC)
    for party in PARTIES:
        cert = (out / party.id / "tls.pem").read_bytes()
        assert certs.verify_certificate(cert, ca_pem, now=now) == party.id
        assert stat.S_IMODE((out / party.id / "tls.key").stat().st_mode) == 0o600
    broker_cert = (out / "broker" / "tls.pem").read_bytes()
    assert certs.broker_from_certificate(broker_cert) == "broker"
    with pytest.raises(certs.CertificateRejected):
        certs.verify_certificate(broker_cert, ca_pem, now=now)  # a server, not a party
    again = run(
        "covenant", "issue-certs", "--covenant", prov.signed_covenant,
        "--ca-key", prov.root / "ca" / "ca.key", "--ca-cert", prov.root / "ca" / "ca.pem",
        "--out", out, "--party", "riec-zwb",
    )  # fmt: skip
    assert again.code == 2
    assert "--force" in again.err
    unknown = run(
        "covenant", "issue-certs", "--covenant", prov.signed_covenant,
        "--ca-key", prov.root / "ca" / "ca.key", "--ca-cert", prov.root / "ca" / "ca.pem",
        "--out", tmp_path / "other", "--party", "nobody",
    )  # fmt: skip
    assert unknown.code == 1
    assert "--party[0]" in unknown.err


def test_issue_certs_refuses_another_ca(run, prov, tmp_path):
    other = certs.CertificateAuthority.create("riec-zwb", now=datetime.now(UTC))
    other.save(tmp_path / "o.key", tmp_path / "o.pem")
    result = run(
        "covenant", "issue-certs", "--covenant", prov.root / "covenant.toml",
        "--ca-key", tmp_path / "o.key", "--ca-cert", tmp_path / "o.pem", "--out", tmp_path / "c",
    )  # fmt: skip
    assert result.code == 2
    assert "--ca-cert" in result.err
    assert not (tmp_path / "c").exists()


def test_publish_reports_an_unreachable_broker(run, prov):
    config = prov.node_configs["riec-zwb"]
    result = run("covenant", "publish", prov.signed_covenant, "--config", config,
                 "--timeout", "2")  # fmt: skip
    assert result.code == 3  # UNAVAILABLE: try again later
    assert "broker localhost:" in result.err
    assert "unavailable" in result.err.lower()


def test_publish_refuses_an_under_signed_covenant_before_dialing(run, prov, tmp_path):
    one = tmp_path / "one.json"
    run(
        "covenant", "sign", prov.root / "covenant.toml", "--signer", "beheer-riec",
        "--key", prov.signer_keys["beheer-riec"], "--out", one,
    )  # fmt: skip
    result = run("covenant", "publish", one, "--config", prov.node_configs["riec-zwb"])
    assert result.code == 2
    assert "covenant.under_signed" in result.err
    result = run("covenant", "publish", prov.signed_covenant)
    assert result.code == 2
    assert "--node" in result.err


class _FakeBroker(broker_pb2_grpc.BrokerServicer):
    """PublishCovenant and PublishTimestamp, deciding with ``TrustState`` and
    ``freshness.verify_current`` as a broker does; records the callers and the timestamps."""

    def __init__(self, root: SignedCovenant) -> None:
        self.state = TrustState(root)
        self.callers: list[str] = []
        self.stamps: list[CovenantTimestamp] = []

    def _take(self, message) -> None:
        stamp = CovenantTimestamp.parse(message)
        verify_current(stamp, self.state.covenant, self.state.signed.body, now=datetime.now(UTC))
        self.stamps.append(stamp)

    def PublishCovenant(self, request, context):
        self.callers.append(
            certs.party_from_certificate(context.auth_context()["x509_pem_cert"][0])
        )
        update = self.state.update(
            SignedCovenant.from_proto(request.covenant), now=datetime.now(UTC)
        )
        if request.HasField("covenant_timestamp"):
            self._take(request.covenant_timestamp)
        response = broker_pb2.PublishCovenantResponse(version=update.covenant.version)
        response.published_at.FromDatetime(datetime.now(UTC))
        return response

    def PublishTimestamp(self, request, context):
        self.callers.append(
            certs.party_from_certificate(context.auth_context()["x509_pem_cert"][0])
        )
        self._take(request.covenant_timestamp)
        response = broker_pb2.PublishTimestampResponse(version=self.stamps[-1].version, stored=True)
        response.expires_at.FromDatetime(self.stamps[-1].expires_at)
        return response


@pytest.fixture
def fake_broker(prov: Provisioned) -> Iterator[_FakeBroker]:
    """A broker stand-in on the provisioned address, over mTLS with the covenant's CA."""
    broker_dir = prov.root / "broker"
    credentials = grpc.ssl_server_credentials(
        [((broker_dir / "tls.key").read_bytes(), (broker_dir / "tls.pem").read_bytes())],
        root_certificates=(prov.root / "ca" / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    servicer = _FakeBroker(SignedCovenant.from_json(prov.signed_covenant.read_bytes(), source="c"))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2), interceptors=[ErrorInterceptor()]
    )
    broker_pb2_grpc.add_BrokerServicer_to_server(servicer, server)
    port = prov.covenant.broker.address.rsplit(":", 1)[1]
    assert server.add_secure_port(f"127.0.0.1:{port}", credentials)
    server.start()
    try:
        yield servicer
    finally:
        server.stop(None)


def test_publish_sends_the_signed_covenant_over_mtls(run, prov, tmp_path, fake_broker):
    _draft, v2 = new_version(run, prov, tmp_path)
    result = run("covenant", "publish", v2, "--config", prov.node_configs["riec-zwb"])
    assert result.code == 0, result.err
    assert "now holds version 2" in result.out
    assert fake_broker.callers == ["riec-zwb"]
    assert fake_broker.state.covenant.version == 2
    # The broker's refusal comes back with its reason and exit code.
    back = run(
        "covenant", "publish", prov.signed_covenant, "--config", prov.node_configs["riec-zwb"]
    )
    assert back.code == 2
    assert "covenant.rollback" in back.err


# --- covenant timestamps ------------------------------------------------------------------


def _stamp(run, prov: Provisioned, covenant: Path, *extra: object):
    return run("covenant", "timestamp", "--covenant", covenant, "--key", prov.timestamp_key, *extra)


def test_timestamp_signs_and_publishes_what_the_broker_verifies(run, prov, tmp_path, fake_broker):
    out = tmp_path / "ts.json"
    config = prov.node_configs["riec-zwb"]
    result = _stamp(run, prov, prov.signed_covenant, "--config", config, "--out", out)
    assert result.code == 0, result.err
    assert "version 1: fresh until" in result.out
    (sent,) = fake_broker.stamps
    assert fake_broker.callers == ["riec-zwb"]
    assert CovenantTimestamp.from_json(out.read_bytes(), source="ts.json") == sent
    assert sent.expires_at - sent.issued_at == timedelta(seconds=86400)  # the covenant's period
    shorter = _stamp(run, prov, prov.signed_covenant, "--config", config, "--lifetime", "600")
    assert shorter.code == 0, shorter.err
    assert fake_broker.stamps[-1].expires_at - fake_broker.stamps[-1].issued_at == timedelta(
        seconds=600
    )


def test_timestamp_refusals_name_the_option_and_publish_nothing(run, prov, tmp_path, fake_broker):
    config = prov.node_configs["riec-zwb"]
    too_long = _stamp(run, prov, prov.signed_covenant, "--config", config, "--lifetime", "90000")
    assert (too_long.code, "--lifetime" in too_long.err) == (1, True)
    signer_key = run(
        "covenant", "timestamp", "--covenant", prov.signed_covenant,
        "--key", prov.signer_keys["beheer-riec"], "--config", config,
    )  # fmt: skip
    assert (signer_key.code, "--key" in signer_key.err) == (1, True)
    nowhere = _stamp(run, prov, prov.signed_covenant)
    assert (nowhere.code, "--out" in nowhere.err) == (2, True)
    # A version the broker does not hold: refused, naming what to do.
    _draft, v2 = new_version(run, prov, tmp_path)
    ahead = _stamp(run, prov, v2, "--config", config)
    assert ahead.code == 2
    assert "timestamp.unknown_version" in ahead.err
    assert "publish version 2 first" in ahead.err
    assert fake_broker.stamps == []


def test_publish_with_the_timestamp_key_sends_a_timestamp_of_the_new_version(
    run, prov, tmp_path, fake_broker
):
    _draft, v2 = new_version(run, prov, tmp_path)
    config = prov.node_configs["riec-zwb"]
    alone = run("covenant", "publish", v2, "--config", config, "--lifetime", "60")
    assert (alone.code, "--lifetime" in alone.err) == (1, True)
    result = run(
        "covenant", "publish", v2, "--config", config, "--timestamp-key", prov.timestamp_key
    )
    assert result.code == 0, result.err
    assert "with a covenant timestamp valid until" in result.out
    (sent,) = fake_broker.stamps
    assert (sent.version, fake_broker.state.covenant.version) == (2, 2)


def test_set_changes_the_timestamp_key_and_the_freshness_period(run, prov, tmp_path):
    draft = tmp_path / "v2.toml"
    draft.write_bytes((prov.root / "covenant.toml").read_bytes())
    assert run("covenant", "set", draft, "signing.freshness_seconds", "3600").code == 0
    new_key = PartyKeys.generate("timestamp").public().ed25519
    done = run("covenant", "set", draft, "signing.timestamp_ed25519", crypto.b64encode(new_key))
    assert done.code == 0, done.err
    edited = covenant_from_toml(draft.read_bytes(), source="v2.toml")
    assert (edited.signing.freshness_seconds, edited.signing.timestamp_ed25519) == (3600, new_key)
    assert edited.version == prov.covenant.version + 2
    short = run("covenant", "set", draft, "signing.freshness_seconds", "30")
    assert (short.code, "signing.freshness_seconds" in short.err) == (1, True)
    bad = run("covenant", "set", draft, "signing.timestamp_ed25519", "not base64")
    assert (bad.code, "signing.timestamp_ed25519" in bad.err) == (1, True)
    signer = prov.covenant.signing.signers[0].ed25519
    same = run("covenant", "set", draft, "signing.timestamp_ed25519", crypto.b64encode(signer))
    assert (same.code, "signing.timestamp_ed25519" in same.err) == (1, True)
