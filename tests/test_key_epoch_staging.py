"""Staging and switching the OPRF key epoch in the covenant: the model, the canonical form,
``covenant stage-key-epoch`` / ``switch-key-epoch``, and the successor rule that keeps
the rotation in order (docs/covenant.md, docs/operations.md "Rotating the OPRF key")."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import pytest

from samenloop.node.provision import PartySpec, Provisioned, provision
from samenloop.policies import cli
from samenloop.policies.covenant import Role, covenant_from_toml, covenant_to_toml
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.errors import CovenantRejected, InvalidInput
from samenloop.policies.trust import SignedCovenant, TrustState, sign_covenant

PARTIES = (
    PartySpec("gemeente-tilburg", "Gemeente Tilburg", Role.GEMEENTE),
    PartySpec("politie-zwb", "Politie Zeeland-West-Brabant", Role.POLITIE),
    PartySpec("riec-zwb", "RIEC Zeeland-West-Brabant", Role.RIEC),
)
HOLDERS = ["politie-zwb", "riec-zwb"]


@pytest.fixture(autouse=True)
def commands(monkeypatch: pytest.MonkeyPatch) -> None:
    real = metadata.entry_points
    ours = {
        "covenant": "samenloop.policies.covenant_commands:register",
        "keyholder": "samenloop.node.tokens.commands:register",
    }

    def entry_points(*, group: str) -> list[metadata.EntryPoint]:
        found = [e for e in real(group=group) if e.name not in ours]
        return found + [metadata.EntryPoint(n, v, group) for n, v in ours.items()]

    monkeypatch.setattr(cli, "entry_points", entry_points)
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]):
    def run(*args: object) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def prov(tmp_path: Path) -> Provisioned:
    return provision(tmp_path / "prov", "riec-zwb", PARTIES, HOLDERS, 2, now=datetime.now(UTC))


def deal_epoch(run, prov: Provisioned, tmp_path: Path, epoch: int, covenant: str = "riec-zwb"):
    """``keyholder deal`` of ``epoch`` to the provisioned holders, by administrator riec-admin."""
    admin = PartyKeys.generate("riec-admin")
    admin.save(tmp_path / "riec-admin.json")
    (tmp_path / "riec-admin.public.json").write_bytes(admin.public().to_json("riec-admin"))
    deal = ["keyholder", "deal", "--covenant", covenant, "--epoch", epoch, "--threshold", 2]
    for holder in HOLDERS:
        public = tmp_path / f"{holder}.public.json"
        keys = PartyKeys.load(prov.root / holder / "party-keys.json")
        public.write_bytes(keys.public().to_json(holder))
        deal += ["--holder", f"{holder}={public}"]
    deal += ["--admin-keys", tmp_path / "riec-admin.json", "--out", tmp_path / "epochs"]
    code, _, err = run(*deal)
    assert code == 0, err
    return tmp_path / "epochs" / f"key-epoch-{epoch}.json", tmp_path / "riec-admin.public.json"


def signed(prov: Provisioned, draft: Path) -> SignedCovenant:
    covenant = covenant_from_toml(draft.read_bytes(), source="draft")
    result = SignedCovenant.of(covenant)
    for signer, key in prov.signer_keys.items():
        result = sign_covenant(result, signer, PartyKeys.load(key).signing_key)
    return result


def test_stage_then_switch_bumps_the_version_and_round_trips(run, prov, tmp_path):
    epoch_file, admin = deal_epoch(run, prov, tmp_path, 2)
    draft = tmp_path / "draft.toml"
    draft.write_bytes((prov.root / "covenant.toml").read_bytes())
    before = covenant_from_toml(draft.read_bytes(), source="draft")

    code, out, err = run(
        "covenant", "stage-key-epoch", draft, "--key-epoch", epoch_file, "--key-epoch-admin", admin
    )
    assert code == 0, err
    assert "staged key epoch 2" in out
    staged = covenant_from_toml(draft.read_bytes(), source="draft")
    assert staged.version == before.version + 1
    assert staged.key_epoch == before.key_epoch
    assert staged.next_key_epoch is not None
    assert staged.next_key_epoch.epoch == 2
    assert [e.epoch for e in staged.live_epochs] == [1, 2]
    assert staged.live_epoch(2) == staged.next_key_epoch
    assert staged.live_epoch(3) is None
    assert covenant_to_toml(staged) == draft.read_bytes()
    assert b"[next_key_epoch]" in draft.read_bytes()
    assert b"[[next_key_epoch.holders]]" in draft.read_bytes()

    # A second stage while one is staged is refused, and changes nothing.
    code, _, err = run(
        "covenant", "stage-key-epoch", draft, "--key-epoch", epoch_file, "--key-epoch-admin", admin
    )
    assert code == 1
    assert "next_key_epoch" in err
    assert covenant_from_toml(draft.read_bytes(), source="d") == staged

    code, out, err = run("covenant", "switch-key-epoch", draft)
    assert code == 0, err
    switched = covenant_from_toml(draft.read_bytes(), source="draft")
    assert switched.version == staged.version + 1
    assert switched.key_epoch == staged.next_key_epoch
    assert switched.next_key_epoch is None
    assert b"next_key_epoch" not in draft.read_bytes()

    code, _, err = run("covenant", "switch-key-epoch", draft)
    assert code == 1
    assert "stage-key-epoch" in err

    # The successor rule accepts the stage and then the switch, in order.
    state = TrustState(SignedCovenant.from_json(prov.signed_covenant.read_bytes(), source="v1"))
    staged_draft = tmp_path / "staged.toml"
    staged_draft.write_bytes(covenant_to_toml(staged))
    now = datetime.now(UTC)
    assert state.update(signed(prov, staged_draft), now=now).covenant.next_key_epoch is not None
    assert state.update(signed(prov, draft), now=now).covenant.key_epoch.epoch == 2


def test_stage_refuses_a_wrong_epoch_a_foreign_covenant_and_a_wrong_admin(run, prov, tmp_path):
    draft = tmp_path / "draft.toml"
    original = (prov.root / "covenant.toml").read_bytes()
    draft.write_bytes(original)
    epoch_file, admin = deal_epoch(run, prov, tmp_path, 3)
    code, _, err = run(
        "covenant", "stage-key-epoch", draft, "--key-epoch", epoch_file, "--key-epoch-admin", admin
    )
    assert code == 1
    assert "next_key_epoch.epoch" in err
    assert "must be epoch 2" in err

    foreign, admin = deal_epoch(run, prov, tmp_path / "other", 2, covenant="riec-elders")
    code, _, err = run(
        "covenant", "stage-key-epoch", draft, "--key-epoch", foreign, "--key-epoch-admin", admin
    )
    assert code == 1
    assert "--key-epoch" in err

    good, _ = deal_epoch(run, prov, tmp_path / "good", 2)
    code, _, err = run(
        "covenant", "stage-key-epoch", draft, "--key-epoch", good, "--key-epoch-admin", admin
    )
    assert code != 0
    assert "signer" in err or "signature" in err
    assert draft.read_bytes() == original


def test_the_model_checks_the_staged_epochs_holders_and_number(prov):
    covenant = SignedCovenant.from_json(prov.signed_covenant.read_bytes(), source="v1").unverified()
    current = covenant.key_epoch
    with pytest.raises(InvalidInput) as caught:
        replace(covenant, next_key_epoch=current)
    assert caught.value.field == "next_key_epoch.epoch"
    with pytest.raises(InvalidInput) as caught:
        replace(covenant, next_key_epoch=replace(current, epoch=2))
    assert caught.value.field == "next_key_epoch"  # the same group key
    stranger = replace(current.holders[0], party="nobody")
    bad = replace(
        current,
        epoch=2,
        group_public_key=current.holders[0].commitment,
        holders=(stranger, *current.holders[1:]),
    )
    with pytest.raises(InvalidInput) as caught:
        replace(covenant, next_key_epoch=bad)
    assert caught.value.field == "next_key_epoch.holders[0].party"
    # Parsing names the nested field too.
    text = covenant_to_toml(covenant).decode()
    epoch_section = text.split("[key_epoch]")[1].split("\n[[purposes]]")[0]
    epoch_section = epoch_section.replace("[[key_epoch.holders]]", "[[next_key_epoch.holders]]")
    broken = text + "\n[next_key_epoch]" + epoch_section.replace("epoch = 1", "epoch = 7", 1)
    with pytest.raises(InvalidInput) as caught:
        covenant_from_toml(broken.encode(), source="t")
    assert caught.value.field == "next_key_epoch.epoch"


def test_successors_must_stage_before_switching_and_keep_the_staged_epoch(run, prov, tmp_path):
    v1 = SignedCovenant.from_json(prov.signed_covenant.read_bytes(), source="v1")
    epoch2, admin = deal_epoch(run, prov, tmp_path, 2)
    now = datetime.now(UTC)
    # A version that replaces the key epoch without staging it is refused.
    draft = tmp_path / "direct.toml"
    draft.write_bytes((prov.root / "covenant.toml").read_bytes())
    assert run("covenant", "stage-key-epoch", draft, "--key-epoch", epoch2,
               "--key-epoch-admin", admin)[0] == 0  # fmt: skip
    assert run("covenant", "switch-key-epoch", draft)[0] == 0
    state = TrustState(v1)
    with pytest.raises(CovenantRejected) as caught:
        state.update(signed(prov, draft), now=now)
    assert caught.value.reason == "covenant.key_epoch_unstaged"
    assert caught.value.field == "key_epoch"
    assert state.covenant.version == 1

    # Staged, the staged epoch cannot be swapped for another epoch 2.
    staged = tmp_path / "staged.toml"
    staged.write_bytes((prov.root / "covenant.toml").read_bytes())
    assert run("covenant", "stage-key-epoch", staged, "--key-epoch", epoch2,
               "--key-epoch-admin", admin)[0] == 0  # fmt: skip
    state.update(signed(prov, staged), now=now)
    other, admin2 = deal_epoch(run, prov, tmp_path / "again", 2)
    swapped = tmp_path / "swapped.toml"
    swapped.write_bytes((prov.root / "covenant.toml").read_bytes())
    assert run("covenant", "set", swapped, "retention.default_days", "400")[0] == 0
    assert run("covenant", "stage-key-epoch", swapped, "--key-epoch", other,
               "--key-epoch-admin", admin2)[0] == 0  # fmt: skip
    with pytest.raises(CovenantRejected) as caught:
        state.update(signed(prov, swapped), now=now)
    assert caught.value.reason == "covenant.key_epoch_restaged"
    assert caught.value.field == "next_key_epoch"
    assert state.covenant.version == 2
