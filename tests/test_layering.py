"""House rules that keep the core sans-IO and the daemons apart, checked rather than hoped for."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine

ROOT = Path(__file__).parents[1]

# policies' adapters: errors to gRPC statuses, errors to exit codes, the database plumbing,
# the audit log's tables (both stores and the audit CLI use them) and that CLI,
# the covenant admin CLI (it publishes a covenant to the broker over gRPC), the daemons'
# Prometheus endpoint and gRPC call metrics, and the daemons' database backups
ADAPTERS = {
    "rpc",
    "cli",
    "database",
    "audit_store",
    "audit_commands",
    "covenant_commands",
    "metrics",
    "backup",
}


def _policies_module(path: Path) -> tuple[str, ...]:
    """``policies/covenant/model.py`` as ``("covenant", "model")``; a package as its name."""
    parts = path.relative_to(ROOT / "policies").with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" else parts


SANS_IO = [
    *(
        "samenloop.policies." + ".".join(parts)
        for parts in map(_policies_module, sorted((ROOT / "policies").rglob("*.py")))
        if parts and parts[0] not in ADAPTERS
    ),
    "samenloop.node.tokens.oprf",
    "samenloop.node.tokens.threshold",
    "samenloop.node.tokens.derive",
    "samenloop.node.identifiers.normalise",
    "samenloop.node.tokens.keysetup",
    "samenloop.node.tokens.evaluation",
    "samenloop.node.tokens.arithmetic",
    "samenloop.node.tokens.holder",
    "samenloop.node.signals.notices",
    "samenloop.node.disclosure.protocol",
    "samenloop.node.cases.machine",
    "samenloop.node.picture.arithmetic",
    "samenloop.node.picture.report",
    "samenloop.node.picture.map",
    "samenloop.node.picture.protocol",
    "samenloop.node.daemon.envelopes",
    "samenloop.broker.matching",
    "samenloop.broker.mailbox",
]


def test_core_modules_import_neither_grpc_nor_a_database():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in SANS_IO)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'sqlalchemy'))\n"
        + "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    ("folder", "forbidden"), [("node", "samenloop.broker"), ("broker", "samenloop.node")]
)
def test_node_and_broker_never_import_each_other(folder, forbidden):
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / folder).rglob("*.py")
        if any(name == forbidden or name.startswith(forbidden + ".") for name in _imports(path))
    ]
    assert offenders == []


def test_policies_imports_neither_daemon():
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "policies").rglob("*.py")
        if any(name.startswith(("samenloop.node", "samenloop.broker")) for name in _imports(path))
    ]
    assert offenders == []


# --- every crypto primitive behind the crypto modules ------------------------------------

#: Libraries that implement cryptographic primitives (signatures, boxes, hashes, MACs, curves).
#: ``secrets`` is not among them: it draws random ids and the local API token, never a key.
PRIMITIVE_LIBRARIES = frozenset({"nacl", "rbcl", "hashlib", "hmac", "cryptography", "Crypto"})

#: The only modules that may import them, and which: ``policies/crypto.py`` is the crypto
#: module; ``policies/certs.py`` does the X.509 work (certificates, requests, chain checks) with
#: pyca/cryptography's x509 API; ``node/tokens/oprf.py`` is the RFC 9497 composition over
#: libsodium's ristretto255, a crypto module of its own checked against the RFC's vectors.
CRYPTO_MODULES = {
    "policies/crypto.py": {"nacl", "cryptography", "hashlib", "hmac"},
    "policies/certs.py": {"cryptography"},
    "node/tokens/oprf.py": {"rbcl", "hashlib", "hmac"},
}


def _imported_roots(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports, wherever in the file: import
    statements, and ``importlib.import_module`` / ``__import__`` with a literal name."""
    roots = {name.split(".")[0] for name in _imports(path)}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            roots.add(node.args[0].value.split(".")[0])
    return roots


def test_crypto_primitives_are_imported_only_by_the_crypto_modules():
    offenders = []
    for folder in ("policies", "node", "broker"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            name = str(path.relative_to(ROOT))
            allowed = CRYPTO_MODULES.get(name, set())
            for library in sorted((_imported_roots(path) & PRIMITIVE_LIBRARIES) - allowed):
                offenders.append(f"{name} imports {library}")
    assert offenders == []


def test_the_crypto_modules_exist_and_use_what_they_are_allowed():
    # An allowance for a module that no longer needs it is a hole for the next import.
    for name, allowed in CRYPTO_MODULES.items():
        assert allowed <= _imported_roots(ROOT / name), name


def test_the_primitive_check_catches_a_stray_import(tmp_path):
    stray = tmp_path / "stray.py"
    stray.write_text(
        "import json\nfrom hashlib import sha256\n"
        "def f():\n    import nacl.signing\n    return __import__('hmac')\n"
    )
    assert _imported_roots(stray) & PRIMITIVE_LIBRARIES == {"hashlib", "nacl", "hmac"}


CAPABILITIES = ["identifiers", "tokens", "signals", "disclosure", "picture", "cases"]


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_a_capability_uses_only_its_own_repository(capability):
    """Issue 14: each capability owns its queries. Its modules reach the database through
    their own ``store`` and the shared ``daemon.database`` only: never another
    capability's repository, nor ``daemon.repositories`` (every repository, which only the
    daemon opens)."""
    own = f"samenloop.node.{capability}.store"
    foreign = {f"samenloop.node.{other}.store" for other in CAPABILITIES} - {own}
    foreign.add("samenloop.node.daemon.repositories")
    offenders = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / "node" / capability).rglob("*.py")
        for name in _imports(path)
        if name in foreign
    )
    assert offenders == []


def test_every_repository_shares_the_one_database():
    """One engine, one transaction helper: what makes a change across two capabilities
    (a hit notice and the mailbox cursor, a disclosure and its envelope) one transaction."""
    from samenloop.node.cases.store import CaseStore
    from samenloop.node.daemon.covenants import CovenantStore
    from samenloop.node.daemon.database import Database
    from samenloop.node.daemon.repositories import Repositories
    from samenloop.node.disclosure.store import DisclosureStore
    from samenloop.node.network.store import NetworkStore
    from samenloop.node.picture.store import PictureStore
    from samenloop.node.signals.store import SignalStore
    from samenloop.node.tokens.store import TokenStore

    repositories = (
        SignalStore,
        TokenStore,
        DisclosureStore,
        PictureStore,
        CaseStore,
        CovenantStore,
        NetworkStore,
    )
    assert all(issubclass(r, Database) for r in repositories)
    # No repository redefines what the base holds (the transaction, the cursor, the outbox).
    shared = {n for n in vars(Database) if not n.startswith(("__", "_abc_"))}
    for repository in repositories:
        assert shared.isdisjoint(vars(repository)), repository.__name__

    # What the daemon opens: every repository, each over the one engine and keeping no
    # state of its own beyond the base's, so that several over one engine are as one.
    engine = create_engine("sqlite://")
    opened = Repositories.open(engine, owner="gemeente-a")
    held = [getattr(opened, f.name) for f in dataclasses.fields(opened)]
    assert {type(r) for r in held} == {*repositories, Database}
    base_state = set(vars(opened.shared))
    for repository in held:
        assert repository.engine is engine
        assert set(vars(repository)) == base_state, type(repository).__name__
    engine.dispose()


#: The broker's repositories, each over the ones before it: a module may import only those
#: listed before it (``store`` composes them all).
BROKER_REPOSITORIES = [
    "database",
    "mailbox_store",
    "token_index",
    "staged_epoch",
    "token_store",
    "group_retention",
    "covenant_store",
    "store",
]


@pytest.mark.parametrize("position", range(len(BROKER_REPOSITORIES)))
def test_the_broker_repositories_import_only_those_beneath_them(position):
    """Issue 14: the broker's store split by capability. ``database`` holds the one engine
    and transaction helper; ``mailbox_store`` knows no matching, ``token_store`` no
    covenant versions; none of them knows gRPC or the servicer."""
    module = BROKER_REPOSITORIES[position]
    above = {f"samenloop.broker.{name}" for name in BROKER_REPOSITORIES[position + 1 :]}
    above |= {"samenloop.broker.service", "samenloop.broker.server", "samenloop.broker.relay"}
    imported = _imports(ROOT / "broker" / f"{module}.py")
    offenders = sorted(name for name in imported if name in above or name.split(".")[0] == "grpc")
    assert offenders == []


def test_the_broker_repositories_share_one_database():
    """One engine, one transaction helper, one party cache: each repository holds the same
    ``BrokerDatabase`` (composed, not inherited), so that matching's notices and a covenant's
    removals commit with the mailboxes they fill, and what one commits the others know."""
    import sqlalchemy as sa

    from samenloop.broker.database import BrokerDatabase
    from samenloop.broker.store import BrokerStore

    engine = sa.create_engine("sqlite://")
    try:
        store = BrokerStore(engine)
    finally:
        engine.dispose()
    repositories = (store.tokens, store.tokens.index, store.mailboxes, store.covenants)
    assert all(r._db is store.database for r in repositories)
    assert store.audit is store.database
    assert store.tokens._mailboxes is store.mailboxes is store.covenants._mailboxes
    assert store.covenants._tokens is store.tokens
    assert not any(isinstance(r, BrokerDatabase) for r in repositories)
    assert not isinstance(store, BrokerDatabase)


# --- module size ------------------------------------------------------------------------------

#: A module a reader can hold; beyond it, the module says at its top why it is one.
MODULE_LINES = 800


def test_a_module_over_800_lines_says_why_at_its_top() -> None:
    long = []
    for folder in ("node", "broker", "policies"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            text = path.read_text()
            if text.count("\n") <= MODULE_LINES:
                continue
            doc = ast.get_docstring(ast.parse(text)) or ""
            if f"Over {MODULE_LINES} lines" not in doc:
                long.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    assert long == [], "say why at the top, or split: " + ", ".join(long)
