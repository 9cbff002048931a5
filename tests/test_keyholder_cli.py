"""The key-setup commands end to end: keygen, deal, accept, show; and the demo."""

from __future__ import annotations

import json
import stat

import pytest

from samenloop.node import keysetup
from samenloop.policies.cli import main


@pytest.fixture
def holders(tmp_path):
    for party in ("politie", "belastingdienst", "riec"):
        assert (
            main(["node", "keygen", "--party", party, "--out", str(tmp_path / f"{party}.json")])
            == 0
        )
    return tmp_path


def deal(tmp_path, *extra):
    args = ["keyholder", "deal", "--covenant", "riec-test", "--epoch", "1", "--threshold", "2"]
    for party in ("politie", "belastingdienst", "riec"):
        args += ["--holder", f"{party}={tmp_path / f'{party}.public.json'}"]
    return main([*args, "--out", str(tmp_path / "epoch"), *extra])


def test_keygen_writes_owner_only_secret_and_public_file(holders):
    secret = holders / "politie.json"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    public = json.loads((holders / "politie.public.json").read_text())
    assert public["party"] == "politie"
    assert "ed25519_seed" not in public


def test_keygen_refuses_to_overwrite(holders, capsys):
    assert (
        main(["node", "keygen", "--party", "politie", "--out", str(holders / "politie.json")]) == 2
    )
    assert "refusing to overwrite" in capsys.readouterr().err


def test_deal_accept_show(holders, capsys):
    assert deal(holders) == 0
    epoch_file = holders / "epoch" / "key-epoch-1.json"
    epoch = keysetup.key_epoch_from_json(epoch_file.read_bytes())
    assert [h.party for h in epoch.holders] == ["politie", "belastingdienst", "riec"]
    out = holders / "accepted" / "politie.json"
    args = [
        "keyholder", "accept", "--epoch-file", str(epoch_file),
        "--share", str(holders / "epoch" / "share-1-politie.json"),
        "--keys", str(holders / "politie.json"), "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert keysetup.load_share(out, epoch).index == 1
    # Nothing that deal wrote contains a private scalar: the epoch file is public, shares sealed.
    for written in (holders / "epoch").iterdir():
        doc = json.loads(written.read_text())
        assert "share" not in doc
    capsys.readouterr()
    assert main(["keyholder", "show", str(epoch_file), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["threshold"] == 2
    assert shown["consistent"] is True


def test_accept_with_the_wrong_keys_fails_cleanly(holders, capsys):
    assert deal(holders) == 0
    args = [
        "keyholder", "accept", "--epoch-file", str(holders / "epoch" / "key-epoch-1.json"),
        "--share", str(holders / "epoch" / "share-1-politie.json"),
        "--keys", str(holders / "riec.json"), "--out", str(holders / "x.json"),
    ]  # fmt: skip
    assert main(args) == 1
    assert "share.party" in capsys.readouterr().err
    assert not (holders / "x.json").exists()


def test_deal_rejects_mismatched_holder_file(holders, capsys):
    args = ["keyholder", "deal", "--covenant", "c", "--epoch", "1", "--threshold", "2"]
    args += ["--holder", f"politie={holders / 'riec.public.json'}", "--out", str(holders / "e")]
    assert main(args) == 1
    assert "--holder" in capsys.readouterr().err


def test_deal_rejects_bad_threshold(holders, capsys):
    args = ["keyholder", "deal", "--covenant", "c", "--epoch", "1", "--threshold", "4"]
    for party in ("politie", "belastingdienst", "riec"):
        args += ["--holder", f"{party}={holders / f'{party}.public.json'}"]
    assert main([*args, "--out", str(holders / "e")]) == 1
    assert "threshold" in capsys.readouterr().err


def test_demo_finds_every_shared_subject_and_catches_the_liar(capsys):
    assert main(["demo", "--signals", "20"]) == 0
    out = capsys.readouterr().out
    assert "7 shared subjects found" in out
    assert "as expected" in out
    assert "caught lying and skipped" in out
    assert "2 refused" in out
