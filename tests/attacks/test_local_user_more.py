"""Another account on a node's host: raw identifiers on the command line, an open node.toml.

From the second attack review of issue 12. Finding 4 closed the node's data
directory and secret files to other accounts (``test_local_user.py``); two ways
around it remained:

* ``samenloop signal add`` took the raw identifiers and details only as
  arguments (``--id bsn=…``, ``--detail naam=…``), and every account on a Linux
  host reads every process's arguments in ``/proc/<pid>/cmdline`` (``ps -ef``).
  Now the command reads them with ``--from FILE`` or ``--from -`` (standard
  input): the other account, reading the command line while the command runs,
  finds neither, and cannot open the process's standard input either. The
  argument form stays, and what it exposes is said, not hidden: a warning on
  stderr, the help and the docs.
* ``node.toml`` says where the node keeps its data (``data_dir``,
  ``database_url``), which covenant it trusts and which CA. A ``node.toml``
  that other accounts may write was taken as it was, so whoever could write it
  chose, at the next start, the database the node writes raw identifiers to.
  Now the node refuses to start, as ssh refuses such a configuration, when
  ``node.toml``, the covenant file or the CA certificate may be written by
  another account; reading them stays open, they are not secret.

The other account is ``nobody`` (uid 65534) when the tests run as root;
otherwise it is the tests' own account, which reads the same world-readable
``cmdline`` (the attempt on the process's standard input then needs root, and
is skipped, saying so).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from daemons import cli_command
from harness import CovenantRun

NOBODY = 65534
AS_ROOT = os.geteuid() == 0
#: BSNs that pass the 11-test, one per way of adding a signal.
BSN_SAFE = "123456782"
BSN_ARGUMENT = "111222333"
WARNING = (
    "samenloop: warning: command-line arguments are visible to every account on this host "
    "while the command runs (/proc/PID/cmdline, ps) and stay in the shell's history"
)


def _as_other(command: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
    other = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if AS_ROOT else {}
    return subprocess.run(
        list(command), capture_output=True, timeout=30, check=False, stdin=subprocess.DEVNULL,
        **other,  # type: ignore[call-overload]
    )  # fmt: skip


def _watched(
    command: list[str], stdin: bytes, *, look: Sequence[str]
) -> tuple[subprocess.CompletedProcess[bytes], dict[str, subprocess.CompletedProcess[bytes]]]:
    """Run ``command`` as the partner's officer does, holding it still (SIGSTOP, right
    after exec) while the other account tries each file of ``/proc/<pid>/`` in ``look``;
    then let it finish with ``stdin``."""
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    seen: dict[str, subprocess.CompletedProcess[bytes]] = {}
    try:
        os.kill(process.pid, signal.SIGSTOP)
        for name in look:
            # ``timeout``: a pipe that did open would wait for data that the stopped
            # process never reads; the refusal comes at once.
            seen[name] = _as_other(["timeout", "5", "cat", f"/proc/{process.pid}/{name}"])
    finally:
        os.kill(process.pid, signal.SIGCONT)
        out, err = process.communicate(stdin, timeout=60)
    done = subprocess.CompletedProcess(command, process.returncode, out, err)
    return done, seen


def test_another_account_cannot_read_raw_identifiers_from_the_command_line(
    covenant_run: CovenantRun,
) -> None:
    run = covenant_run
    node = str(run.provisioned.node_configs["gemeente"])
    secret = f"naam-{os.urandom(4).hex()}"
    # The safe form: the values on standard input, the command line without them.
    look = ["cmdline", "fd/0", "environ"] if AS_ROOT else ["cmdline"]
    safe = cli_command(
        "signal", "add", "--node", node, "--reference", "G-ARGV-1",
        "--category", "vastgoedmisbruik", "--from", "-",
    )  # fmt: skip
    values = f"id bsn={BSN_SAFE}\ndetail naam={secret}\n".encode()
    done, seen = _watched(safe, values, look=look)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert WARNING.encode() not in done.stderr
    cmdline = seen["cmdline"]
    assert cmdline.returncode == 0, cmdline
    assert b"G-ARGV-1" in cmdline.stdout, cmdline
    assert BSN_SAFE.encode() not in cmdline.stdout, "the BSN was on the command line"
    assert secret.encode() not in cmdline.stdout, "a detail was on the command line"
    if AS_ROOT:  # the pipe it reads and its environment are its own account's alone
        for name in ("fd/0", "environ"):
            assert seen[name].returncode != 0, name
            assert seen[name].stdout == b"", name
            assert b"Permission denied" in seen[name].stderr, name
    stored = run.client("gemeente").signal("G-ARGV-1")
    assert [i.type.value for i in stored.identifiers] == ["bsn"]
    assert dict(stored.details) == {"naam": secret}

    # The argument form is kept for convenience, and says what it exposes: the other
    # account reads the BSN (as the warning, the help and docs/identifiers.md say).
    argument = cli_command(
        "signal", "add", "--node", node, "--reference", "G-ARGV-2",
        "--category", "vastgoedmisbruik", "--id", f"bsn={BSN_ARGUMENT}",
    )  # fmt: skip
    done, seen = _watched(argument, b"", look=["cmdline"])
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stderr.decode().startswith(WARNING)
    assert BSN_ARGUMENT.encode() in seen["cmdline"].stdout
    docs = Path(__file__).parents[2] / "docs" / "identifiers.md"
    assert "/proc/PID/cmdline" in docs.read_text()
    if not AS_ROOT:
        pytest.skip(
            "the command line was read by this account; the attempts on the process's "
            "standard input and environment need root to become nobody (uid 65534)"
        )
    run.assert_serving()


def _refused_start(run: CovenantRun, party: str) -> tuple[bool, int | None]:
    """Start the party's node once more and see whether it serves or exits."""
    before = run.log(party).count(b"node running")  # its earlier runs said so too
    run.start(party, wait=False)
    process = run.processes[party]
    deadline = time.monotonic() + 30
    while process.poll() is None and run.log(party).count(b"node running") == before:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    started = process.poll() is None
    if started:
        run.stop(party)
    del run.processes[party]
    return started, process.returncode


def test_a_node_whose_config_other_accounts_may_write_refuses_to_start(
    covenant_run: CovenantRun,
) -> None:
    run = covenant_run
    party = "belastingdienst"
    config = run.provisioned.node_configs[party]
    node = run.node_config(party)
    orders = [
        ("--node", config, "configuration file"),
        ("covenant", node.covenant, "covenant file"),
        ("ca_certificate", node.ca_certificate, "ca_certificate file"),
    ]
    modes = {path: stat.S_IMODE(path.stat().st_mode) for _, path, _ in orders}
    for path, mode in modes.items():
        assert not mode & 0o022, f"provisioning left {path} writable by others ({mode:o})"
    run.stop(party)
    del run.processes[party]  # stopped on purpose
    serving = False
    try:
        for setting, path, what in orders:
            path.chmod(0o666)  # an administrator's slip, as a data directory left 0755 is
            try:
                started, code = _refused_start(run, party)
            finally:
                path.chmod(modes[path])
            assert not started, f"the node started with {path} writable by every account"
            assert code == 2
            assert (
                f"samenloop: error: {setting}: {what} {path} may be written by others "
                f"(mode 666); run chmod go-w {path}"
            ).encode() in run.log(party)
        # Readable by every account is fine: none of them is secret.
        for path in modes:
            path.chmod(0o644)
        run.start(party)
        run.wait_ready([party])
        serving = True
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
        if not serving:
            run.start(party)
            run.wait_ready([party])
    run.assert_serving()
