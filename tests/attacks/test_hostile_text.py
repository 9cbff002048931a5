"""A partner whose text attacks the other partners' terminals: shown as text, nothing runs.

The RIEC, turned malicious, holds what every party holds: the covenant's
attribute key (its sealed attribute-key file, opened with its party keys) and
its own certificate for the broker. It seals rich markup (``[/bold]``, a
``[link=…]``) and an OSC 8 hyperlink as the *categories* of extra token entries
under a token it shares with the gemeente, and submits them with software of
its own; as the coordinator it also opens a case on that hit with a title, a
measure and an officer name of the same kind, through its own node (a case's
text is its author's own). Before, ``hits list``, ``case list`` and ``case
show`` at the gemeente ended in a rich ``MarkupError`` traceback, and a
terminal would have shown the link. Now the gemeente's node shows only the
covenant's categories and counts the others, and its commands print other
parties' text as text; the daemons keep serving.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from datetime import UTC, datetime, timedelta

from samenloop.node.client import Hit
from samenloop.policies import covenant as covenant_model
from samenloop.policies import terminal
from samenloop.policies.covenant import AttributeKey
from samenloop.v1 import broker_pb2, common_pb2

from daemons import sqlite_rows
from harness import CovenantRun

ATTACKER = "riec"
VICTIM = "gemeente"
BSN = "111222333"
#: What the RIEC seals as categories: none is one of the covenant's.
CATEGORIES = (
    "[/bold]",
    "[link=https://evil.example]klik[/link]",
    "\x1b]8;;https://evil.example\x1b\\klik\x1b]8;;\x1b\\",
)
#: Case text passes the cases' own check (no C0 controls), so C1 and bidi are tried there.
TITLE = "[link=https://evil.example]Casus[/link] \u202egnp.exe \x9b31m[/bold]"
MEASURE = '[/bold]=HYPERLINK("https://evil.example")'
OFFICER = "[link=https://evil.example]analist[/link]"
SGR = re.compile(r"\x1b\[[0-9;]*m")  # the commands' own colours: the only escapes allowed
TERMINAL = {**os.environ, "COLUMNS": "250", "FORCE_COLOR": "1"}


def attribute_key(run: CovenantRun, party: str) -> AttributeKey:
    """The covenant's attribute key, as ``party`` holds it: its box in the covenant, opened."""
    return run.covenant.attribute_key_for(run.party_keys(party))


def sealed_category(key: AttributeKey, category: str) -> common_pb2.SecretBox:
    plaintext = common_pb2.MemberAttributes(category=category).SerializeToString()
    nonce, ciphertext = covenant_model.seal_attributes(key, plaintext)
    return common_pb2.SecretBox(key_version=key.version, nonce=nonce, ciphertext=ciphertext)


def shown_as_text(done: subprocess.CompletedProcess[str]) -> str:
    """The command's output, checked: exit 0, no traceback, and nothing a terminal would
    act on besides the command's own colours (no OSC, no cursor moves, no bidi)."""
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    plain = SGR.sub("", done.stdout)
    assert [c for c in plain if c != "\n" and not terminal.is_safe(c)] == []
    assert "\x1b]" not in done.stdout
    return plain


def test_hostile_categories_and_case_text_are_shown_as_text(covenant_run: CovenantRun) -> None:
    run = covenant_run
    run.add_signal(VICTIM, "G-TEXT", "woonfraude", [("bsn", BSN)])
    run.add_signal(ATTACKER, "R-TEXT", "woonfraude", [("bsn", BSN)])
    group = run.hit_with(VICTIM, "G-TEXT", ATTACKER).group_id

    # The RIEC's token for the subject, from its own node's database, and extra entries
    # under it whose sealed "categories" are markup and terminal controls.
    ((token, epoch),) = sqlite_rows(
        run.node_database(ATTACKER),
        "select token, key_epoch from signal_identifiers where canonical = ? and token is not null",
        BSN,
    )
    key = attribute_key(run, ATTACKER)
    expires = datetime.now(UTC) + timedelta(days=30)
    entries = []
    for category in CATEGORIES:
        entry = broker_pb2.TokenEntry(
            token=token,
            signal_ref=secrets.token_bytes(16),
            sealed_attributes=sealed_category(key, category),
        )
        entry.expires_at.FromDatetime(expires)
        entries.append(entry)
    run.broker_stub(ATTACKER).SubmitTokens(
        broker_pb2.SubmitTokensRequest(
            client_batch_id=secrets.token_bytes(16), key_epoch=epoch, entries=entries
        ),
        timeout=30,
    )

    def grown(hit: Hit) -> bool:
        riec = [m for m in hit.members if m.party == ATTACKER]
        return hit.group_id == group and bool(riec) and riec[0].unknown_categories > 0

    hit = run.wait_hit(VICTIM, grown, "the grown hit with the RIEC's extra entries")
    (riec,) = [m for m in hit.members if m.party == ATTACKER]
    assert (riec.categories, riec.unknown_categories) == (("woonfraude",), len(CATEGORIES))

    # As coordinator, the RIEC opens a case on the hit with hostile text of its own.
    riec_group = run.hit_with(ATTACKER, "R-TEXT", VICTIM).group_id
    client = run.client(ATTACKER)
    case = client.open_case(riec_group, TITLE, officer=OFFICER, invite=[VICTIM])
    client.add_action(
        case.case_id,
        owner=VICTIM,
        intervention_type="bestuurlijk",
        measure=MEASURE,
        deadline=datetime.now(UTC) + timedelta(days=14),
        officer=OFFICER,
    )
    run.until(
        "the gemeente's copy of the case with its action",
        60,
        lambda: any(c.case_id == case.case_id and c.actions for c in run.client(VICTIM).cases()),
    )

    # The gemeente's staff look, on a terminal that takes colours.
    def gemeente(*args: str) -> subprocess.CompletedProcess[str]:
        return run.cli(*args, "--node", str(run.provisioned.node_configs[VICTIM]), env=TERMINAL)

    listed = shown_as_text(gemeente("hits", "list"))
    assert "riec (riec): woonfraude, (3 unknown categories)" in listed
    assert "evil.example" not in listed
    assert "[/bold]" not in listed
    watched = shown_as_text(gemeente("hits", "watch", "--count", "1"))
    assert "(3 unknown categories)" in watched
    assert "evil.example" not in watched

    title = terminal.printable(TITLE)
    assert title == "[link=https://evil.example]Casus[/link] \\u202egnp.exe \\x9b31m[/bold]"
    assert title in shown_as_text(gemeente("case", "list"))
    shown = shown_as_text(gemeente("case", "show", case.case_hex))
    for text in (title, MEASURE, OFFICER):
        assert text in shown

    # JSON keeps the parties' text exactly; the unknown categories stay unnamed.
    exact = gemeente("case", "show", case.case_hex, "--json")
    assert exact.returncode == 0, exact.stderr
    held = json.loads(exact.stdout)
    assert (held["title"], held["actions"][0]["measure"]) == (TITLE, MEASURE)
    hits = json.loads(gemeente("hits", "list", "--json").stdout)
    assert hits[0]["members"][0]["unknown_categories"] == len(CATEGORIES)
    assert "evil.example" not in json.dumps(hits)
    run.assert_serving()
