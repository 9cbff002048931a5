"""Four eyes with officer names that have a space or an accent, through the daemons.

From the second attack review of issue 12. ``docs/disclosure.md`` says officers
are compared after normalising (``Bd-Teamleider-7 `` and ``bd-teamleider-7``
are one officer) and that "the name is stored and shown as given". The local
API passed the approving officer's name unchecked to the audit log, whose actor
allowed only ASCII letters, digits and ``._:@-``: an officer named with a space
or a letter such as ``ü`` could not approve at all, and the refusal named the
field ``actor`` (``INVALID_ARGUMENT``), not ``officer``, the field of the call.

Now the local API takes an officer in any script and with spaces (printable
text of at most 64 bytes, as the wire format allows), the audit log records it
as given, and a name that really is invalid (spaces only, a control or format
character, too long) is refused naming ``officer``, with nothing stored. The
daemons keep serving.
"""

from __future__ import annotations

import itertools

import pytest

from samenloop.policies.errors import SamenloopError

from daemons import sqlite_rows
from harness import CovenantRun

_numbers = itertools.count(44_000_001)


def _pending_bibob_request(run: CovenantRun, tag: str, officer: str) -> bytes:
    """A Bibob request of the gemeente's ``officer`` waiting at the belastingdienst for a
    second officer (four eyes)."""
    subject = ("kvk", f"{next(_numbers):08d}")
    run.add_signal("gemeente", f"G-{tag}", "vastgoedmisbruik", [subject])
    run.add_signal(
        "belastingdienst",
        f"B-{tag}",
        "witwasindicatie",
        [subject],
        details={"naam": "bv", "omschrijving": "x"},
    )
    hit = run.hit_with("gemeente", f"G-{tag}", "belastingdienst")
    ref = next(m for m in hit.members if m.party == "belastingdienst").signal_refs[0]
    asked = run.client("gemeente").request_disclosure(
        hit.group_id, "belastingdienst", ref, "bibob", ["naam"], officer=officer
    )
    owner = run.client("belastingdienst")

    def pending() -> bool:
        return any(
            d.request_id == asked.request_id
            for d in owner.disclosures(direction="incoming", state="pending_approval")
        )

    run.until("the Bibob request pending at the belastingdienst", 60, pending)
    return asked.request_id


def _audit_actors(run: CovenantRun, party: str, request_id: bytes) -> list[str]:
    rows = sqlite_rows(
        run.node_database(party),
        "SELECT actor FROM audit_entries WHERE kind IN ('disclosure_approved', "
        "'disclosure_denied') AND subject = ?",
        request_id.hex(),
    )
    return [actor for (actor,) in rows]


def test_an_officer_name_the_docs_allow_is_taken_or_refused_naming_officer(
    covenant_run: CovenantRun,
) -> None:
    run = covenant_run
    owner = run.client("belastingdienst")
    asked = _pending_bibob_request(run, "OFF", officer="gem-bibob-3")
    answers: dict[str, str] = {}
    for name in ("Bd-Teamleider-7 ", "Jürgen de Vries"):
        try:
            decided = owner.approve_disclosure(asked, officer=name)
        except SamenloopError as error:
            answers[name] = f"refused, field {error.field}"
            continue
        answers[name] = decided.state.value
        break
    # Each name is either taken (the request granted) or refused naming ``officer``; and
    # this name, which the docs use, is taken: the first officer grants it.
    assert set(answers.values()) <= {"granted", "refused, field officer"}, answers
    assert answers == {"Bd-Teamleider-7 ": "granted"}
    shown = owner.disclosure(asked)
    assert [(d.officer, d.approved) for d in shown.decisions] == [("Bd-Teamleider-7 ", True)]
    assert _audit_actors(run, "belastingdienst", asked) == ["Bd-Teamleider-7 "]
    run.assert_serving()


def test_an_officer_with_an_accent_asks_and_another_denies_and_both_are_kept_as_given(
    covenant_run: CovenantRun,
) -> None:
    run = covenant_run
    owner = run.client("belastingdienst")
    asked = _pending_bibob_request(run, "OFF-2", officer="Jürgen de Vries")
    incoming = owner.disclosure(asked)
    assert incoming.requester_officer == "Jürgen de Vries"  # as the gemeente's officer gave it
    with pytest.raises(SamenloopError) as same:  # one person, however written, is not two
        owner.approve_disclosure(asked, officer="JÜRGEN  DE VRIES")
    assert same.value.field == "officer"
    owner.deny_disclosure(asked, officer="Łukasz Żak", reason="lopend onderzoek")
    assert _audit_actors(run, "belastingdienst", asked) == ["Łukasz Żak"]
    run.assert_serving()


#: Names that really are invalid: empty, only spaces, a terminal link (OSC 8), a bidi
#: override, a zero-width character, more than the wire's 64 bytes.
INVALID = ["", "   ", "bd\x1b]8;;http://x\x07-7", "bd\u202e7-redielmaet", "bd\u200b7", "ü" * 33]


def test_an_invalid_officer_is_refused_naming_officer_and_nothing_is_stored(
    covenant_run: CovenantRun,
) -> None:
    run = covenant_run
    owner = run.client("belastingdienst")
    asked = _pending_bibob_request(run, "OFF-3", officer="gem-bibob-4")
    for name in INVALID:
        for decide in (
            lambda n=name: owner.approve_disclosure(asked, officer=n),
            lambda n=name: owner.deny_disclosure(asked, officer=n, reason="nee"),
        ):
            with pytest.raises(SamenloopError) as caught:
                decide()
            assert caught.value.field == "officer", (name, caught.value)
    assert owner.disclosure(asked).state.value == "pending_approval"
    assert _audit_actors(run, "belastingdienst", asked) == []
    run.assert_serving()
