"""Fixtures of the insider attack suite (``make test-attacks``; also part of ``make test``).

``covenant_run`` starts one covenant of real daemons per test module (see
``harness.py``). A module changes the covenant it gets by defining its own
``attack_policy`` fixture (the rules, e.g. a small OPRF quota) or
``attack_api_tcp`` (serve the nodes' local API on 127.0.0.1 instead of a Unix
socket), or ``attack_root`` (the directory to provision it in, for attacks that
need other accounts to reach it), or ``attack_freshness_seconds`` (the covenant's
freshness period, for attacks that wait for covenant timestamps to expire).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from samenloop.policies.policy import DEFAULT_FRESHNESS_SECONDS, Policy

from daemons import running_covenant
from harness import COVENANT_ID, HOLDERS, SPECS, CovenantRun


@pytest.fixture(scope="module")
def attack_policy() -> Policy | None:
    """The covenant's rules; None: the demo's (``example_policy``)."""
    return None


@pytest.fixture(scope="module")
def attack_api_tcp() -> bool:
    """Whether the nodes serve their local API on 127.0.0.1 (else on a Unix socket)."""
    return False


@pytest.fixture(scope="module")
def attack_freshness_seconds() -> int:
    """How long a covenant timestamp may vouch for a version (``signing.freshness_seconds``);
    the first one is issued at provisioning, five minutes before the daemons start."""
    return DEFAULT_FRESHNESS_SECONDS


@pytest.fixture(scope="module")
def attack_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The (empty) directory the covenant is provisioned in."""
    return tmp_path_factory.mktemp("attack")


@pytest.fixture(scope="module")
def covenant_run(
    attack_root: Path,
    attack_policy: Policy | None,
    attack_api_tcp: bool,
    attack_freshness_seconds: int,
) -> Iterator[CovenantRun]:
    with running_covenant(
        attack_root,
        COVENANT_ID,
        SPECS,
        HOLDERS,
        2,
        now=datetime.now(UTC) - timedelta(minutes=5),
        policy=attack_policy,
        api_tcp=attack_api_tcp,
        daemons=CovenantRun,
        freshness_seconds=attack_freshness_seconds,
    ) as running:
        assert isinstance(running, CovenantRun)
        yield running
