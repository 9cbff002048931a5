"""What signers see: ``covenant show`` and ``covenant diff`` cover every field of the model.

The test walks the covenant's frozen dataclasses (``policies/covenant/model.py`` and
``policies/policy.py``) rather than a list of fields, so a field added to the
model later is checked without changes here: each leaf is set to another valid
value in turn, and ``show`` must print the new value and ``diff`` must report
exactly that field. A leaf that cannot be changed alone with the values tried
here fails the test, so it cannot slip through unchecked: teach
``_candidates`` its type instead.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console

from samenloop.node.tokens import keysetup
from samenloop.policies import certs
from samenloop.policies import covenant as cv
from samenloop.policies.covenant import (
    BrokerInfo,
    Covenant,
    KeyHolderSeat,
    OprfKeyEpoch,
    Party,
    Role,
    covenant_to_toml,
)
from samenloop.policies.covenant_commands.showing import covenant_diff, covenant_tables, shown_value
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.errors import SamenloopError
from samenloop.policies.policy import (
    NetworkRules,
    PersonMatching,
    PictureRules,
    Purpose,
    Signer,
    Signing,
    example_policy,
)

NOW = datetime.now(UTC).replace(microsecond=0)
Path = tuple[str | int, ...]  # attribute names and list positions from the covenant down


@pytest.fixture(scope="module")
def base() -> Covenant:
    """A covenant in which every leaf can change on its own: a party that holds no key
    share, a spare holder seat for the threshold, a purpose no rule names, a privacy
    budget, two signers."""
    keys = [PartyKeys.generate(f"partij-{i}") for i in range(4)]
    epoch, _ = keysetup.deal(
        "review-test", 1, 2, [(k.party, k.public().x25519) for k in keys[:3]], now=NOW
    )
    policy = example_policy()
    policy = dataclasses.replace(
        policy,
        purposes=(*policy.purposes, Purpose("onderzoek", "Research that no rule names yet")),
        picture=PictureRules(
            viewers=(Role.RIEC,),
            min_cell_count=5,
            epsilon_per_period=1.0,
            epsilon_per_request=0.5,
            classification="Departementaal vertrouwelijk",
        ),
        person_matching=PersonMatching(
            kinds=("person.phonetic_date", "person.given_date"),
            shown_score=14.0,
            disclosure_score=75.0,
        ),
        network=NetworkRules(viewers=(Role.RIEC,)),
    )
    roles = (Role.GEMEENTE, Role.POLITIE, Role.RIEC, Role.WONINGCORPORATIE)
    return Covenant(
        id="review-test",
        version=3,
        valid_from=NOW - timedelta(days=1),
        valid_until=NOW + timedelta(days=90),
        signing=Signing(
            2,
            tuple(
                Signer(name, f"Beheer {name}", PartyKeys.generate(name).public().ed25519)
                for name in ("beheer-a", "beheer-b")
            ),
            PartyKeys.generate("timestamp").public().ed25519,
            freshness_seconds=3600,
        ),
        policy=policy,
        broker=BrokerInfo("broker", "localhost:7443", PartyKeys.generate("b").public().ed25519),
        parties=cv.deal_attribute_key(
            "review-test",
            1,
            (
                Party(k.party, f"Partij {i}", role, k.public())
                for i, (k, role) in enumerate(zip(keys, roles, strict=True))
            ),
        ),
        key_epoch=OprfKeyEpoch(
            epoch=1,
            threshold=2,
            group_public_key=epoch.group_public_key,
            holders=tuple(KeyHolderSeat(h.index, h.party, h.commitment) for h in epoch.holders),
            created_at=NOW,
            retire_after=NOW + timedelta(days=365),
        ),
        ca_certificate=certs.CertificateAuthority.create("review-test", now=NOW).cert_pem,
        attribute_key_version=1,
    )


@pytest.fixture(scope="module")
def other_ca() -> bytes:
    return certs.CertificateAuthority.create("review-test", now=NOW).cert_pem


# --- walking the model ---------------------------------------------------------------------


def _is_entries(value: object) -> bool:
    return (
        isinstance(value, tuple)
        and bool(value)
        and all(dataclasses.is_dataclass(v) and not isinstance(v, type) for v in value)
    )


def _leaves(value: object, path: Path = ()) -> Iterator[tuple[Path, object]]:
    """Every leaf below ``value``: nested dataclasses and lists of them are walked."""
    for field in dataclasses.fields(value):  # type: ignore[arg-type]
        item = getattr(value, field.name)
        at = (*path, field.name)
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            yield from _leaves(item, at)
        elif _is_entries(item):
            for i, entry in enumerate(item):
                yield from _leaves(entry, (*at, i))
        else:
            yield at, item


def _entry_lists(value: object, path: Path = ()) -> Iterator[Path]:
    """Every list of entries below ``value``."""
    for field in dataclasses.fields(value):  # type: ignore[arg-type]
        item = getattr(value, field.name)
        at = (*path, field.name)
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            yield from _entry_lists(item, at)
        elif _is_entries(item):
            yield at
            for i, entry in enumerate(item):
                yield from _entry_lists(entry, (*at, i))


def _get(value: Any, path: Path) -> Any:
    for step in path:
        value = value[step] if isinstance(step, int) else getattr(value, step)
    return value


def _with(value: Any, path: Path, new: object) -> Any:
    """``value`` with the leaf at ``path`` replaced; every level is validated again."""
    if not path:
        return new
    step, rest = path[0], path[1:]
    if isinstance(step, int):
        items = list(value)
        items[step] = _with(items[step], rest, new)
        return tuple(items)
    return dataclasses.replace(value, **{step: _with(getattr(value, step), rest, new)})


def _field(path: Path) -> str:
    """A leaf's field, whatever entry it is in: ``parties[*].keys.x25519``."""
    return ".".join("[*]" if isinstance(s, int) else s for s in path).replace(".[*]", "[*]")


def _strings(covenant: Covenant) -> list[str]:
    found: dict[str, None] = {}
    for _, value in _leaves(covenant):
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if isinstance(item, str):
                found[item] = None
            elif isinstance(item, tuple) and item and isinstance(item[0], str):
                found[item[0]] = None
    return list(found)


def _candidates(value: object, strings: list[str], other_ca: bytes) -> Iterator[object]:
    """Other values of the leaf's type, to try until one makes a valid covenant."""
    if isinstance(value, bool):
        yield not value
    elif isinstance(value, enum.Enum):
        yield from (member for member in type(value) if member is not value)
    elif isinstance(value, int):
        yield from (value + 1, value - 1)
    elif isinstance(value, float):
        yield from (value * 2, value / 2, value + 1)
    elif isinstance(value, datetime):
        yield from (value - timedelta(days=1), value + timedelta(days=1))
    elif isinstance(value, str):
        yield value[:-1] + ("a" if value[-1:] != "a" else "b")  # same length
        yield from ("x" + value, value + "x")
        yield from (s for s in strings if s != value)
    elif isinstance(value, bytes):
        if value.startswith(b"-----BEGIN CERTIFICATE-----"):
            yield other_ca
        else:
            yield os.urandom(len(value))
    elif isinstance(value, tuple) and value and all(isinstance(v, tuple) for v in value):
        yield ((value[0][0], value[0][1] + 1), *value[1:])  # a mapping: another value
        yield value[:-1]
        yield from ((*value, (s, 30)) for s in strings if s not in dict(value))
    elif isinstance(value, tuple):
        if len(value) > 1:
            yield tuple(reversed(value))
        if value:
            yield value[:-1]
        if not value or isinstance(value[0], enum.Enum):
            yield from ((*value, role) for role in Role if role not in value)
        if not value or isinstance(value[0], str):
            yield from ((*value, s) for s in strings if s not in value)
            # Codes of a kind the covenant checks: the picture's areas and branches.
            yield from ((*value, s) for s in ("pc4:4331", "5610") if s not in value)
    elif value is None:  # an optional role (the picture's aggregator)
        yield from Role
    else:
        raise AssertionError(f"no candidate values for a {type(value).__name__}")


def _changed(base: Covenant, field: str, other_ca: bytes) -> Iterator[tuple[Path, Covenant]]:
    """For each leaf of ``field`` in turn, the first other value that makes a valid covenant."""
    strings = _strings(base)
    for path, value in _leaves(base):
        if _field(path) != field:
            continue
        for candidate in _candidates(value, strings, other_ca):
            if candidate == value:
                continue
            try:
                yield path, _with(base, path, candidate)
            except SamenloopError:
                continue
            return


def _all_fields(covenant: Covenant) -> list[str]:
    return sorted({_field(path) for path, _ in _leaves(covenant)})


# --- what show and diff print ---------------------------------------------------------------


def _shown(covenant: Covenant) -> str:
    """What ``covenant show`` prints of the covenant's fields (wide: nothing folds)."""
    console = Console(file=io.StringIO(), width=400, highlight=False, emoji=False)
    for table in covenant_tables(covenant):
        console.print(table)
    file = console.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


def _top(line: str) -> str:
    """The top-level field a diff line is about: ``~ picture.epsilon: ...`` -> ``picture``."""
    match = re.match(r"[~+-] ([a-z_0-9]+)", line)
    assert match, line
    return match[1]


def _top_of(path: Path) -> str:
    """The top-level field of a path as the covenant's TOML names it (its rules inlined)."""
    return str(path[1]) if path[0] == "policy" else str(path[0])


def test_the_walk_finds_the_covenant_s_fields(base: Covenant) -> None:
    fields = _all_fields(base)
    for expected in (
        "version",
        "parties[*].name",
        "parties[*].keys.x25519",
        "parties[*].sealed_attribute_key",
        "key_epoch.holders[*].commitment",
        "signing.signers[*].name",
        "policy.picture.epsilon_per_period",
        "policy.cases.coordinators",
        "policy.release[*].fields",
        "policy.retention.categories",
    ):
        assert expected in fields
    assert len(fields) > 50


def test_every_leaf_is_shown_and_diffed(base: Covenant, other_ca: bytes) -> None:
    shown_before = _shown(base)
    assert covenant_diff(base, base) == []
    unchangeable, not_shown, not_diffed = [], [], []
    for field in _all_fields(base):
        changed = list(_changed(base, field, other_ca))
        if not changed:
            unchangeable.append(field)
            continue
        ((path, after),) = changed
        new_value = _get(after, path)
        shown = _shown(after)
        if shown == shown_before or shown_value(new_value) not in shown:
            not_shown.append(field)
        lines = covenant_diff(base, after)
        name = next(str(s) for s in reversed(path) if isinstance(s, str))
        if (
            not lines
            or any(_top(line) != _top_of(path) for line in lines)
            or not any(name in line for line in lines)
        ):
            not_diffed.append(f"{field}: {lines}")
        # The change is real: it changes the canonical bytes that signers sign.
        assert covenant_to_toml(after) != covenant_to_toml(base), field
    # A staged key epoch is a whole section or none (its epoch number follows key_epoch's):
    # test_a_staged_key_epoch_is_shown_and_diffed covers it.
    assert unchangeable == ["next_key_epoch"], "fields the test could not change alone"
    assert not_shown == [], "fields covenant show does not show"
    assert not_diffed == [], "fields covenant diff does not report"


def test_a_staged_key_epoch_is_shown_and_diffed(base: Covenant) -> None:
    keys = [
        (seat.party, PartyKeys.generate(seat.party).public().x25519)
        for seat in base.key_epoch.holders
    ]
    dealt, _ = keysetup.deal("review-test", 2, 2, keys, now=NOW)
    staged_epoch = OprfKeyEpoch(
        epoch=2,
        threshold=2,
        group_public_key=dealt.group_public_key,
        holders=tuple(KeyHolderSeat(h.index, h.party, h.commitment) for h in dealt.holders),
        created_at=NOW,
        retire_after=NOW + timedelta(days=365),
    )
    staged = dataclasses.replace(base, version=base.version + 1, next_key_epoch=staged_epoch)
    shown = _shown(staged)
    assert "[next_key_epoch]" in shown
    assert "[[next_key_epoch.holders]] (3)" in shown
    assert shown_value(dealt.group_public_key) in shown
    lines = covenant_diff(base, staged)
    assert any(line.startswith("~ next_key_epoch: None -> epoch=2;") for line in lines), lines
    switched = dataclasses.replace(
        staged, version=staged.version + 1, key_epoch=staged_epoch, next_key_epoch=None
    )
    lines = covenant_diff(staged, switched)
    assert "~ key_epoch.epoch: 1 -> 2" in lines
    assert any(line.startswith("~ next_key_epoch: epoch=2;") for line in lines), lines


def test_person_matching_is_shown_and_diffed_as_a_whole_section(base: Covenant) -> None:
    without = dataclasses.replace(
        base, policy=dataclasses.replace(base.policy, person_matching=None)
    )
    assert "person.phonetic_date" not in _shown(without)
    shown = _shown(base)
    assert "person.phonetic_date" in shown
    lines = covenant_diff(without, base)
    assert any(
        line.startswith("~ person_matching: None -> kinds=person.phonetic_date") for line in lines
    ), lines


def test_the_network_section_is_shown_and_diffed_as_a_whole(base: Covenant) -> None:
    without = dataclasses.replace(base, policy=dataclasses.replace(base.policy, network=None))
    assert "[network]" not in _shown(without)
    assert "[network]" in _shown(base)
    lines = covenant_diff(without, base)
    assert any(line.startswith("~ network: None -> viewers=riec") for line in lines), lines


def test_every_entry_added_or_removed_is_shown_and_diffed(base: Covenant) -> None:
    shown_before = _shown(base)
    checked = []
    for path in _entry_lists(base):
        entries = _get(base, path)
        try:
            fewer = _with(base, path, entries[:-1])
        except SamenloopError:
            continue  # this list cannot lose an entry (parties referenced elsewhere, ...)
        checked.append(".".join(map(str, path)))
        assert _shown(fewer) != shown_before, path
        removed = [line for line in covenant_diff(base, fewer) if line.startswith("- ")]
        assert removed, path
        added = [line for line in covenant_diff(fewer, base) if line.startswith("+ ")]
        assert added, path
    assert {"policy.purposes", "policy.visibility", "policy.release"} <= set(checked)


def test_text_from_the_covenant_is_shown_as_plain_text(base: Covenant) -> None:
    name = "Gemeente [bold]X[/bold] :smile: [link=https://evil.example]klik[/link] \u202eNEGAB"
    parties = list(base.parties)
    parties[3] = dataclasses.replace(parties[3], name=name)
    odd = dataclasses.replace(base, parties=tuple(parties))
    shown = _shown(odd)
    assert "Gemeente [bold]X[/bold] :smile: [link=https://evil.example]klik[/link]" in shown
    assert "\u202e" not in shown
    assert "\\u202eNEGAB" in shown
    lines = covenant_diff(base, odd)
    assert lines == [
        f"~ parties[{parties[3].id}].name: Partij 3 -> {name}".replace("\u202e", "\\u202e")
    ]


def test_a_field_added_to_a_section_later_is_shown_and_diffed(base: Covenant) -> None:
    """As when ``[quotas]`` gains a broker submission quota: no change to show or diff."""
    quotas_with_more = dataclasses.make_dataclass(
        "QuotasWithMore",
        [("submissions_per_day", int, dataclasses.field(default=500))],
        bases=(type(base.policy.quotas),),
        frozen=True,
    )
    quotas = quotas_with_more(**dataclasses.asdict(base.policy.quotas))
    before = dataclasses.replace(base, policy=dataclasses.replace(base.policy, quotas=quotas))
    after = dataclasses.replace(
        before,
        policy=dataclasses.replace(
            before.policy, quotas=dataclasses.replace(quotas, submissions_per_day=750)
        ),
    )
    assert "submissions_per_day" in _shown(before)
    assert re.search(r"submissions_per_day\s*│\s*750", _shown(after))
    assert covenant_diff(before, after) == ["~ quotas.submissions_per_day: 500 -> 750"]


def test_a_narrow_terminal_shows_each_wide_list_entry_field_by_field(base: Covenant) -> None:
    """At 80 columns the parties' table would fold every id and key into fragments: each
    entry gets a table of its own instead, and every value stays whole and readable."""
    console = Console(file=io.StringIO(), width=80, highlight=False, emoji=False)
    tables = covenant_tables(base, console.width)
    for table in tables:
        console.print(table)
    file = console.file
    assert isinstance(file, io.StringIO)
    shown = file.getvalue()
    assert max(len(line) for line in shown.splitlines()) <= 80
    titles = [str(t.title) for t in tables]
    count = len(base.parties)
    assert [t for t in titles if t.startswith("[[parties]]")] == [
        f"[[parties]] {i} of {count}" for i in range(1, count + 1)
    ]
    for party in base.parties:
        assert re.search(rf"│ id\s+│ {re.escape(party.id)}\s+│", shown), party.id
    # a narrow list stays one table
    assert any(t.startswith("[[purposes]] (") for t in titles)
