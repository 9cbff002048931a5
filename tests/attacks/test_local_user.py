"""Another account on a node's host: neither the node's data at rest nor its local API.

The attacker has a shell on the machine where a partner's node runs, under an
account of its own (``nobody``, uid 65534, as the tests run as root), and
tries what issue 12 found open: read ``node.db``, its WAL and the key files,
and call the local API — list hits, read granted details, approve a four-eyes
request, tokenise a guess — without the node's API token (on a loopback port,
and on the Unix socket). A node whose data directory is open to others refuses
to start. Every test runs twice: nodes on Unix sockets, and on 127.0.0.1.

The other account is a real process: ``cat`` and ``curl`` (gRPC over HTTP/2
cleartext, ``--http2-prior-knowledge``) run with ``user=65534``. Not as root, a
second account is not available: the modes are checked and the read attempts
skipped (saying so); the API attempts then come from a process of the tests'
own account without the token, which the node cannot tell apart.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.rpc import error_details_pb2, status_pb2

from samenloop.node.daemon.api_token import read_token
from samenloop.v1 import common_pb2, node_pb2

from daemons import sqlite_rows
from harness import CovenantRun

NOBODY = 65534
AS_ROOT = os.geteuid() == 0
API = "samenloop.v1.NodeApi"
#: A BSN that passes the 11-test: what the attacker would like to tokenise, and a subject.
GUESS = "111222333"
SUBJECT = "123456782"


@pytest.fixture(scope="module", params=[False, True], ids=["socket", "tcp"])
def attack_api_tcp(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture(scope="module")
def attack_root(attack_api_tcp: bool) -> Iterator[Path]:
    """A covenant under /tmp that other accounts may pass through (0711, as /var/lib is
    0755) but not list: whatever stops them is the node's own doing."""
    root = Path(tempfile.mkdtemp(prefix="sl-local-", dir="/tmp"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def as_other(command: Sequence[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """``command`` run by another account (nobody) when the tests run as root, else by
    this one."""
    other = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if AS_ROOT else {}
    return subprocess.run(
        list(command), input=stdin, capture_output=True, timeout=60, check=False, **other
    )


@dataclass(frozen=True)
class Answer:
    """What a raw gRPC call over curl got: curl's exit code, and the call's status."""

    exit_code: int
    status: int | None
    field: str | None
    reason: str | None
    stderr: str


def grpc_call(
    address: str,
    method: str,
    request: bytes,
    *,
    token: str | None = None,
    account: str = "other",
) -> Answer:
    """One unary call of the local API, as ``curl`` sends it (no gRPC library needed)."""
    framed = b"\x00" + len(request).to_bytes(4, "big") + request
    command = ["curl", "--http2-prior-knowledge", "-sS", "-D", "-", "-o", "/dev/null"]
    command += ["--max-time", "20", "--data-binary", "@-"]
    command += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    if token is not None:
        command += ["-H", f"authorization: Bearer {token}"]
    if address.startswith("unix:"):
        command += ["--unix-socket", address.removeprefix("unix:"), f"http://localhost/{method}"]
    else:
        command += [f"http://{address}/{method}"]
    if account == "other":
        done = as_other(command, framed)
    else:
        done = subprocess.run(command, input=framed, capture_output=True, timeout=60, check=False)
    headers = done.stdout.decode(errors="replace")
    found = re.search(r"^grpc-status: (\d+)", headers, flags=re.MULTILINE)
    details = re.search(r"^grpc-status-details-bin: (\S+)", headers, flags=re.MULTILINE)
    field = reason = None
    if details is not None:
        encoded = details.group(1)
        rich = status_pb2.Status.FromString(base64.b64decode(encoded + "=" * (-len(encoded) % 4)))
        for detail in rich.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                field = bad.field_violations[0].field
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
    return Answer(
        done.returncode,
        None if found is None else int(found.group(1)),
        field,
        reason,
        done.stderr.decode(errors="replace"),
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- (a) data at rest -------------------------------------------------------------------------


def test_another_account_cannot_read_the_nodes_data_or_keys(covenant_run: CovenantRun) -> None:
    party = "gemeente"
    covenant_run.add_signal(party, "GEM-LOCAL-1", "vastgoedmisbruik", [("bsn", SUBJECT)])
    party_dir = covenant_run.provisioned.party_dir(party)
    data = party_dir / "data"
    database = covenant_run.node_database(party)
    secret_files = [
        database,
        Path(f"{database}-wal"),
        Path(f"{database}-shm"),
        data / "api-token",
        party_dir / "party-keys.json",
        party_dir / "tls.key",
        party_dir / "key-share.json",
    ]
    # What the node and its provisioning made: files 0600, the data directory 0700.
    assert _mode(data) == 0o700
    for path in secret_files:
        assert _mode(path) == 0o600, path
    config = covenant_run.node_config(party)
    if config.api_socket is not None:
        assert _mode(config.api_socket) == 0o600
    if not AS_ROOT:
        pytest.skip(
            "reading as another account needs root to become nobody (uid 65534); "
            "the modes above were checked"
        )
    # Let the other account through the party's directory, as through /etc: from here on
    # only the data directory's and the files' own modes stand in its way. A file left
    # open there is read: the control shows that the attempt reaches the files.
    control = party_dir / "control.txt"
    control.write_bytes(b"public\n")
    control.chmod(0o644)
    party_dir.chmod(0o711)
    try:
        assert as_other(["cat", str(control)]).stdout == b"public\n"
        for path in [data, *secret_files]:
            attempt = as_other(["cat", str(path)] if path != data else ["ls", str(path)])
            assert attempt.returncode != 0, path
            assert attempt.stdout == b"", path
            assert b"Permission denied" in attempt.stderr, path
    finally:
        party_dir.chmod(0o700)
        control.unlink()
    covenant_run.assert_serving()


# --- (b) the local API ----------------------------------------------------------------------------


def _calls(request_id: bytes, group: bytes) -> list[tuple[str, bytes]]:
    """What the attacker tries: hits, details, a four-eyes approval, tokenising a guess."""
    guess = node_pb2.Signal(
        reference="GUESS-1",
        category="vastgoedmisbruik",
        identifiers=[node_pb2.Identifier(type=common_pb2.IDENTIFIER_TYPE_BSN, value=GUESS)],
    )
    return [
        ("ListHits", node_pb2.ListHitsRequest().SerializeToString()),
        ("GetHit", node_pb2.GetHitRequest(hit_group_id=group).SerializeToString()),
        (
            "GetDisclosure",
            node_pb2.GetDisclosureRequest(request_id=request_id).SerializeToString(),
        ),
        (
            "ListDisclosures",
            node_pb2.ListDisclosuresRequest().SerializeToString(),
        ),
        (
            "ApproveDisclosure",
            node_pb2.ApproveDisclosureRequest(
                request_id=request_id, officer="bd-teamleider-7"
            ).SerializeToString(),
        ),
        ("AddSignal", node_pb2.AddSignalRequest(signal=guess).SerializeToString()),
        ("ImportSignals", node_pb2.ImportSignalsRequest(signals=[guess]).SerializeToString()),
        ("WatchHits", node_pb2.WatchHitsRequest().SerializeToString()),
    ]


def _refused_calls(covenant_run: CovenantRun, party: str) -> int:
    rows = sqlite_rows(
        covenant_run.node_database(party),
        "SELECT details FROM audit_entries WHERE kind = 'local_api_refused'",
    )
    return sum(int(json.loads(details)["refused_calls"]) for (details,) in rows)


def test_another_account_cannot_use_the_local_api_without_the_token(
    covenant_run: CovenantRun,
) -> None:
    # Something worth stealing: a hit of the gemeente and the belastingdienst, and a Bibob
    # request waiting at the belastingdienst for a second officer (four eyes).
    reference = f"GEM-API-{secrets.token_hex(3)}"
    bsn = "100000009"
    covenant_run.add_signal("gemeente", reference, "vastgoedmisbruik", [("bsn", bsn)])
    covenant_run.add_signal("belastingdienst", f"BD-{reference}", "witwasindicatie", [("bsn", bsn)])
    hit = covenant_run.hit_with("gemeente", reference, "belastingdienst")
    ref = next(m.signal_refs[0] for m in hit.members if m.party == "belastingdienst")
    asked = covenant_run.client("gemeente").request_disclosure(
        hit.group_id, "belastingdienst", ref, "bibob", ["naam"], officer="gem-bibob-3"
    )
    owner = covenant_run.client("belastingdienst")

    def pending() -> bool:
        incoming = owner.disclosures(direction="incoming", state="pending_approval")
        return any(d.request_id == asked.request_id for d in incoming)

    covenant_run.until("the Bibob request pending at the belastingdienst", 60, pending)
    before = {p: covenant_run.client(p).status().active_signals for p in covenant_run.parties}
    refused_before = {p: _refused_calls(covenant_run, p) for p in ("gemeente", "belastingdienst")}
    wrong = secrets.token_urlsafe(32)
    reached = dict.fromkeys(refused_before, 0)

    for party in ("gemeente", "belastingdienst"):
        config = covenant_run.node_config(party)
        address = config.api_listen or f"unix:{config.api_socket}"
        for method, request in _calls(asked.request_id, hit.group_id):
            for token in (None, wrong):
                answer = grpc_call(address, f"{API}/{method}", request, token=token)
                if address.startswith("unix:") and AS_ROOT:
                    # The socket lies in the node's 0700 data directory: nobody cannot
                    # even connect. The token check behind it is tried below.
                    assert answer.status is None
                    assert answer.exit_code == 7, answer
                    assert "Couldn't connect" in answer.stderr
                    answer = grpc_call(
                        address, f"{API}/{method}", request, token=token, account="own"
                    )
                assert answer.status == 16, (method, answer)  # UNAUTHENTICATED
                assert answer.field == "authorization"
                assert answer.reason == (
                    "api_token.missing" if token is None else "api_token.wrong"
                )
                reached[party] += 1

    # Nothing was done: no signal added (no guess tokenised), the request still waits.
    assert {p: covenant_run.client(p).status().active_signals for p in before} == before
    assert pending()
    # Every refusal is on record (summed; a stop writes what the minute held back), with
    # neither the node's token nor the one tried.
    for party in ("gemeente", "belastingdienst"):
        covenant_run.restart(party)
        assert _refused_calls(covenant_run, party) - refused_before[party] == reached[party]
        token_file = covenant_run.node_config(party).api_token
        assert token_file is not None
        token = read_token(token_file)
        log = covenant_run.log(party).decode(errors="replace")
        assert wrong not in log
        assert token not in log
        rows = sqlite_rows(covenant_run.node_database(party), "SELECT details FROM audit_entries")
        assert not any(wrong in d or token in d for (d,) in rows)
    # The node's own officer still approves: the node kept serving.
    owner.approve_disclosure(asked.request_id, officer="bd-teamleider-7")
    covenant_run.assert_serving()


# --- (c) an open data directory -------------------------------------------------------------------


def test_a_node_with_an_open_data_directory_refuses_to_start(covenant_run: CovenantRun) -> None:
    party = "woningcorporatie"
    config_path = covenant_run.provisioned.node_configs[party]
    data = covenant_run.provisioned.party_dir(party) / "data"
    key = covenant_run.provisioned.party_dir(party) / "tls.key"
    covenant_run.stop(party)
    try:
        data.chmod(0o755)  # as installs made it before issue 12
        refused = covenant_run.cli("node", "serve", "--node", str(config_path))
        assert refused.returncode == 2
        assert refused.stderr.splitlines()[-1] == (
            f"samenloop: error: data_dir: data directory {data} is accessible by others "
            f"(mode 755); run chmod 700 {data}"
        )
        data.chmod(0o700)
        key.chmod(0o644)
        refused = covenant_run.cli("node", "serve", "--node", str(config_path))
        assert refused.returncode == 2
        assert refused.stderr.splitlines()[-1] == (
            f"samenloop: error: private_key: secret file {key} is accessible by others "
            f"(mode 644); run chmod 600 {key}"
        )
    finally:
        data.chmod(0o700)
        key.chmod(0o600)
    covenant_run.start(party)
    covenant_run.wait_ready([party])
    covenant_run.assert_serving()
