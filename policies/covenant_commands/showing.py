"""``covenant show`` and ``covenant diff``: every field of the model, found by walking
its frozen dataclasses, so a field added to the model shows without changes here.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from rich.console import Console
from rich.table import Table
from rich.text import Text

from samenloop.policies import certs, crypto
from samenloop.policies.covenant import Covenant, KeyHolderSeat, Party, covenant_to_toml
from samenloop.policies.covenant_commands.common import load_any, valid_signers
from samenloop.policies.policy import Policy, Purpose, ReleaseRule, Signer, VisibilityRule
from samenloop.policies.terminal import show_table
from samenloop.policies.trust import SignedCovenant

#: How a signer tells the entries of a list apart, by the entry's type; the model refuses two
#: entries with the same identity. Entries of other lists are told apart by position.
_IDENTITY: Final[dict[type, Callable[[Any], str]]] = {
    Signer: lambda signer: signer.id,
    Party: lambda party: party.id,
    KeyHolderSeat: lambda seat: str(seat.index),
    Purpose: lambda purpose: purpose.id,
    VisibilityRule: lambda rule: rule.role.value,
    ReleaseRule: lambda rule: f"{rule.role.value} {rule.category} {rule.purpose}",
}


#: Characters that would let covenant text steer a terminal or hide what it says (control
#: and format characters: C0/C1 controls, bidirectional overrides, zero-width characters).
_HIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cf"})


def _is_record(value: object) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _is_records(value: object) -> bool:
    """A non-empty list of model entries (parties, rules, ...)."""
    return isinstance(value, tuple) and bool(value) and all(_is_record(v) for v in value)


def _is_mapping(value: object) -> bool:
    """A non-empty list of (name, value) pairs (``retention.categories``)."""
    return (
        isinstance(value, tuple)
        and bool(value)
        and all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value)
    )


def _members(value: object) -> list[tuple[str, object]]:
    """A model value's fields in declaration order, by name; the covenant's rules
    (``Policy``) sit at its top level, as in the TOML."""
    members: list[tuple[str, object]] = []
    for field in dataclasses.fields(value):  # type: ignore[arg-type]
        item = getattr(value, field.name)
        if isinstance(item, Policy):
            members += _members(item)
        else:
            members.append((field.name, item))
    return members


def _leaves(value: object, prefix: str = "") -> list[tuple[str, object]]:
    """A model value's fields with nested values flattened to dotted names (``keys.x25519``);
    lists stay whole."""
    leaves: list[tuple[str, object]] = []
    for name, item in _members(value):
        if _is_record(item):
            leaves += _leaves(item, f"{prefix}{name}.")
        else:
            leaves.append((f"{prefix}{name}", item))
    return leaves


def _plain(text: str) -> str:
    """Covenant text as inert characters: control and format characters written as escapes."""
    return "".join(
        f"\\u{ord(char):04x}"
        if char != "\n" and unicodedata.category(char) in _HIDDEN_CATEGORIES
        else char
        for char in text
    )


def shown_value(value: object) -> str:
    """One value as a signer reads it: keys and sealed boxes by fingerprint, the CA by its
    certificate's fingerprint, lists joined, entries as their fields."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, bytes):
        if value.startswith(b"-----BEGIN CERTIFICATE-----"):
            return f"certificate {certs.certificate_fingerprint(value)}"
        return crypto.fingerprint(value)
    if isinstance(value, float):
        return repr(value)
    if _is_record(value):
        return "; ".join(f"{name}={shown_value(item)}" for name, item in _leaves(value))
    if isinstance(value, tuple):
        if not value:
            return "(none)"
        if _is_records(value):
            return " | ".join(shown_value(item) for item in value)
        if _is_mapping(value):
            return ", ".join(f"{name} = {shown_value(item)}" for name, item in value)
        return ", ".join(shown_value(item) for item in value)
    return str(value)


def _keyed(items: tuple[Any, ...]) -> dict[str, Any]:
    """Entries by identity (by position where their type has none, or it repeats)."""
    identity = _IDENTITY.get(type(items[0])) if items else None
    if identity is not None:
        keyed = {identity(item): item for item in items}
        if len(keyed) == len(items):
            return keyed
    return {str(i): item for i, item in enumerate(items)}


def make_console() -> Console:
    return Console(highlight=False, emoji=False)


def make_table(title: str, *columns: str) -> Table:
    table = Table(title=Text(_plain(title)), title_justify="left")
    for column in columns:
        table.add_column(Text(_plain(column)), overflow="fold")
    return table


def add_row(table: Table, *cells: object) -> None:
    """Add a row of plain text: covenant text is never markup."""
    table.add_row(*(Text(_plain(str(cell))) for cell in cells))


def _signature_state(signed: SignedCovenant | None, covenant: Covenant) -> dict[str, str]:
    if signed is None:
        return {s.id: "draft: not signed" for s in covenant.signing.signers}
    good = set(valid_signers(signed, covenant.signing))
    present = {s.signer for s in signed.signatures}
    return {
        s.id: "signed" if s.id in good else "BAD SIGNATURE" if s.id in present else "-"
        for s in covenant.signing.signers
    }


def covenant_tables(covenant: Covenant, width: int | None = None) -> list[Table]:
    """Every field of ``covenant`` as tables: its own values, then one table per section
    (a section's values as rows) and per list (its entries as rows, their fields as
    columns), in the model's order. A list too wide for ``width`` columns (a narrow
    terminal) shows each entry as a table of its own, field by field, rather than folding
    every cell into fragments."""
    tables: list[Table] = []
    top = make_table(f"covenant {covenant.id}", "field", "value")
    sections: list[tuple[str, object]] = []
    for name, value in _members(covenant):
        if _is_record(value) or _is_records(value):
            sections.append((name, value))
        else:
            add_row(top, name, shown_value(value))
    tables.append(top)
    for name, value in sections:
        tables += _section_tables(name, value, width)
    return tables


def _section_tables(path: str, value: object, width: int | None) -> list[Table]:
    if _is_records(value):
        assert isinstance(value, tuple)
        return _list_tables(path, value, width)
    table = make_table(f"[{path}]", "field", "value")
    lists: list[Table] = []
    for name, item in _leaves(value):
        if _is_records(item):
            assert isinstance(item, tuple)
            lists += _list_tables(f"{path}.{name}", item, width)
        else:
            add_row(table, name, shown_value(item))
    return [table, *lists]


def _list_tables(path: str, items: tuple[Any, ...], width: int | None) -> list[Table]:
    rows = [{name: shown_value(v) for name, v in _leaves(item)} for item in items]
    columns = list(dict.fromkeys(name for row in rows for name in row))
    # What the table needs unfolded: each column's widest cell, plus rich's borders.
    needed = 1 + sum(
        3 + max(len(column), *(len(row.get(column, "")) for row in rows)) for column in columns
    )
    if width is not None and needed > width and len(columns) > 2:
        tables = []
        for i, row in enumerate(rows, 1):
            table = make_table(f"[[{path}]] {i} of {len(rows)}", "field", "value")
            for column in columns:
                add_row(table, column, row.get(column, ""))
            tables.append(table)
        return tables
    table = make_table(f"[[{path}]] ({len(items)})", *columns)
    for row in rows:
        add_row(table, *(row.get(c, "") for c in columns))
    return [table]


def show_command(args: argparse.Namespace) -> int:
    covenant, signed = load_any(args.file)
    if args.toml:
        body = signed.body if signed is not None else covenant_to_toml(covenant)
        print(body.decode("utf-8"), end="")
        return 0
    console = make_console()
    now = datetime.now(UTC)
    in_force = "in force now" if covenant.covers(now) else "NOT in force now"
    console.print(
        f"covenant {covenant.id} version {covenant.version}"
        f" ({'signed' if signed is not None else 'draft'}), valid "
        f"{covenant.valid_from.isoformat()} to {covenant.valid_until.isoformat()} ({in_force})",
        markup=False,
        style="bold",
    )
    states = _signature_state(signed, covenant)
    signatures = make_table(
        f"signatures (threshold {covenant.signing.threshold})", "signer", "signature"
    )
    for signer in covenant.signing.signers:
        add_row(signatures, signer.id, states[signer.id])
    if signed is not None:
        listed = {s.id for s in covenant.signing.signers}
        for signature in signed.signatures:
            if signature.signer not in listed:
                add_row(signatures, signature.signer, "UNKNOWN SIGNER")
    show_table(console, signatures)
    for table in covenant_tables(covenant, console.width):
        show_table(console, table)
    ruled = {rule.role.value for rule in covenant.policy.visibility}
    unruled = sorted({party.role.value for party in covenant.parties} - ruled)
    if unruled:
        console.print(f"no visibility rule (told of no hits): {', '.join(unruled)}", markup=False)
    console.print(
        "keys and sealed boxes are shown by fingerprint (the first 16 hex digits of their "
        "SHA-256); 'covenant show --toml' prints them whole",
        markup=False,
    )
    if signed is not None:
        console.print(
            "signatures checked against the signers this file lists; "
            "'covenant verify' decides trust",
            markup=False,
        )
    return 0


def covenant_diff(old: Covenant, new: Covenant) -> list[str]:
    """Every difference from ``old`` to ``new``, field by field: ``+`` added, ``-`` removed,
    ``~`` changed; list entries named by their identity (``parties[politie-zwb].name``)."""
    lines: list[str] = []
    _diff_value("", old, new, lines)
    return [_plain(line).replace("\n", "\\n") for line in lines]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _diff_value(path: str, old: object, new: object, lines: list[str]) -> None:
    if _is_record(old) and type(old) is type(new):
        for (name, before), (_, after) in zip(_members(old), _members(new), strict=True):
            _diff_value(_join(path, name), before, after, lines)
    elif isinstance(old, tuple) and isinstance(new, tuple) and (old or new):
        sample = old or new
        if _is_records(sample):
            _diff_entries(path, old, new, lines)
        elif _is_mapping(sample):
            _diff_mapping(path, old, new, lines)
        else:
            _diff_items(path, old, new, lines)
    elif old != new:
        lines.append(f"~ {path}: {shown_value(old)} -> {shown_value(new)}")


def _diff_order(path: str, old: list[str], new: list[str], lines: list[str]) -> None:
    """The order of the entries both sides hold, if it changed."""
    kept_old = [key for key in old if key in new]
    kept_new = [key for key in new if key in old]
    if kept_old != kept_new:
        lines.append(f"~ {path}: order {', '.join(kept_old)} -> {', '.join(kept_new)}")


def _diff_entries(path: str, old: tuple[Any, ...], new: tuple[Any, ...], lines: list[str]) -> None:
    old_by, new_by = _keyed(old), _keyed(new)
    lines += [f"+ {path}[{k}]: {shown_value(v)}" for k, v in new_by.items() if k not in old_by]
    lines += [f"- {path}[{k}]: {shown_value(v)}" for k, v in old_by.items() if k not in new_by]
    for key, after in new_by.items():
        if key in old_by:
            _diff_value(f"{path}[{key}]", old_by[key], after, lines)
    _diff_order(path, list(old_by), list(new_by), lines)


def _diff_mapping(path: str, old: tuple[Any, ...], new: tuple[Any, ...], lines: list[str]) -> None:
    old_by, new_by = dict(old), dict(new)
    lines += [f"+ {path}.{k}: {shown_value(v)}" for k, v in new_by.items() if k not in old_by]
    lines += [f"- {path}.{k}: {shown_value(v)}" for k, v in old_by.items() if k not in new_by]
    for key, after in new_by.items():
        if key in old_by:
            _diff_value(f"{path}.{key}", old_by[key], after, lines)
    _diff_order(path, list(old_by), list(new_by), lines)


def _diff_items(path: str, old: tuple[Any, ...], new: tuple[Any, ...], lines: list[str]) -> None:
    lines += [f"+ {path}: {shown_value(item)}" for item in new if item not in old]
    lines += [f"- {path}: {shown_value(item)}" for item in old if item not in new]
    _diff_order(path, [shown_value(i) for i in old], [shown_value(i) for i in new], lines)


def diff_command(args: argparse.Namespace) -> int:
    old, _ = load_any(args.old)
    new, _ = load_any(args.new)
    if args.text:
        lines = difflib.unified_diff(
            covenant_to_toml(old).decode("utf-8").splitlines(keepends=True),
            covenant_to_toml(new).decode("utf-8").splitlines(keepends=True),
            fromfile=str(args.old),
            tofile=str(args.new),
        )
        print(_plain("".join(lines)), end="")
        return 0
    changes = covenant_diff(old, new)
    print(f"covenant {old.id} version {old.version} -> {new.id} version {new.version}")
    for line in changes:
        print(f"  {line}")
    if not changes:
        print("  no differences")
    return 0
