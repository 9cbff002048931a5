"""The key-setup commands end to end: keygen, deal, accept, show; and the demo."""

from __future__ import annotations

import base64
import json
import stat

import pytest

from samenloop.node.tokens import keysetup, threshold
from samenloop.policies.cli import main
from samenloop.policies.crypto import PartyKeys, PublicKeys

HOLDERS = ("politie", "belastingdienst", "riec")


@pytest.fixture
def workdir(tmp_path):
    for party in (*HOLDERS, "riec-admin"):
        assert (
            main(["node", "keygen", "--party", party, "--out", str(tmp_path / f"{party}.json")])
            == 0
        )
    return tmp_path


def deal(tmp_path):
    args = ["keyholder", "deal", "--covenant", "riec-test", "--epoch", "1", "--threshold", "2"]
    for party in HOLDERS:
        args += ["--holder", f"{party}={tmp_path / f'{party}.public.json'}"]
    args += ["--admin-keys", str(tmp_path / "riec-admin.json")]
    return main([*args, "--out", str(tmp_path / "epoch")])


def epoch_args(tmp_path, admin="riec-admin"):
    return [
        "--epoch-file", str(tmp_path / "epoch" / "key-epoch-1.json"),
        "--admin-public-keys", str(tmp_path / f"{admin}.public.json"),
    ]  # fmt: skip


def accept(tmp_path, party, keys=None, admin="riec-admin"):
    return main([
        "keyholder", "accept", *epoch_args(tmp_path, admin),
        "--share", str(tmp_path / "epoch" / f"share-1-{party}.json"),
        "--keys", str(tmp_path / f"{keys or party}.json"),
        "--out", str(tmp_path / "accepted" / f"{party}.json"),
    ])  # fmt: skip


def test_keygen_writes_owner_only_secret_and_public_file(workdir):
    secret = workdir / "politie.json"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    public = json.loads((workdir / "politie.public.json").read_text())
    assert public["party"] == "politie"
    assert "ed25519_seed" not in public


def test_keygen_refuses_to_overwrite(workdir, capsys):
    assert (
        main(["node", "keygen", "--party", "politie", "--out", str(workdir / "politie.json")]) == 2
    )
    assert "refusing to overwrite" in capsys.readouterr().err


def test_deal_accept_show_and_no_secret_written_by_deal(workdir, capsys):
    assert deal(workdir) == 0
    admin, admin_keys = PublicKeys.from_json((workdir / "riec-admin.public.json").read_bytes())
    epoch = keysetup.verify_key_epoch(
        (workdir / "epoch" / "key-epoch-1.json").read_bytes(), admin, admin_keys
    )
    assert [h.party for h in epoch.holders] == list(HOLDERS)
    for party in HOLDERS:
        assert accept(workdir, party) == 0
        assert stat.S_IMODE((workdir / "accepted" / f"{party}.json").stat().st_mode) == 0o600
    shares = [keysetup.load_share(workdir / "accepted" / f"{p}.json", epoch) for p in HOLDERS]
    key = threshold.recover_key(shares[:2])
    # Nothing deal wrote contains a share or the key, in any encoding.
    secrets = [key] + [s.scalar for s in shares]
    written = b"".join(path.read_bytes() for path in (workdir / "epoch").iterdir())
    for secret in secrets:
        for encoded in (secret, secret.hex().encode(), base64.b64encode(secret)):
            assert encoded not in written
    capsys.readouterr()
    assert main(["keyholder", "show", *epoch_args(workdir), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["threshold"] == 2
    assert shown["verified"] is True


def test_accept_with_the_wrong_keys_fails_cleanly(workdir, capsys):
    assert deal(workdir) == 0
    assert accept(workdir, "politie", keys="riec") == 1
    assert "share.holder" in capsys.readouterr().err
    assert not (workdir / "accepted" / "politie.json").exists()


def test_accept_refuses_an_epoch_not_signed_by_the_trusted_administrator(workdir, capsys):
    assert deal(workdir) == 0
    assert accept(workdir, "politie", admin="gemeente-admin-missing") == 2  # no such key file
    capsys.readouterr()
    assert (
        main(["node", "keygen", "--party", "riec-admin", "--out", str(workdir / "x" / "a.json")])
        == 0
    )
    impostor = workdir / "x" / "a.public.json"
    args = ["keyholder", "accept", "--epoch-file", str(workdir / "epoch" / "key-epoch-1.json")]
    args += [
        "--admin-public-keys",
        str(impostor),
        "--share",
        str(workdir / "epoch" / "share-1-politie.json"),
    ]
    args += ["--keys", str(workdir / "politie.json"), "--out", str(workdir / "accepted" / "p.json")]
    assert main(args) == 4  # UNAUTHENTICATED: same administrator name, other key
    assert "signature" in capsys.readouterr().err
    assert not (workdir / "accepted" / "p.json").exists()


def test_deal_rejects_mismatched_holder_file(workdir, capsys):
    args = ["keyholder", "deal", "--covenant", "c", "--epoch", "1", "--threshold", "2"]
    args += ["--holder", f"politie={workdir / 'riec.public.json'}", "--out", str(workdir / "e")]
    args += ["--admin-keys", str(workdir / "riec-admin.json")]
    assert main(args) == 1
    assert "--holder" in capsys.readouterr().err


@pytest.mark.parametrize("t", ["1", "4"])
def test_deal_rejects_bad_threshold(workdir, capsys, t):
    args = ["keyholder", "deal", "--covenant", "c", "--epoch", "1", "--threshold", t]
    for party in HOLDERS:
        args += ["--holder", f"{party}={workdir / f'{party}.public.json'}"]
    args += ["--admin-keys", str(workdir / "riec-admin.json")]
    assert main([*args, "--out", str(workdir / "e")]) == 1
    assert "threshold" in capsys.readouterr().err


def test_demo_finds_every_shared_subject_and_catches_the_liar(capsys):
    assert main(["demo", "--core", "--signals", "20"]) == 0
    out = capsys.readouterr().out
    assert "7 shared subjects found" in out
    assert "as expected" in out
    assert "caught lying and skipped" in out
    assert "2 refused" in out


def test_party_keys_used_by_the_cli_round_trip(workdir):
    keys = PartyKeys.load(workdir / "politie.json")
    party, public = PublicKeys.from_json((workdir / "politie.public.json").read_bytes())
    assert party == keys.party
    assert public == keys.public()
