"""A covenant change slipped past the signers: every changed field is shown by the CLI.

Whoever prepares a new version (an administrator, or an insider who hands the
signers a file) could hope that a change the review does not show gets signed
unnoticed: before, ``covenant diff`` printed only ``~ version: 2 -> 3`` for a
version that set a privacy budget, and ``covenant show`` left out ``[picture]``
and ``[cases]``. The signers run the real CLI on the files they are sent; every
field that differs must be named, and the version, once signed and published,
reaches the running daemons, which keep serving.
"""

from __future__ import annotations

import dataclasses
import os

from samenloop.policies.covenant import Covenant
from samenloop.policies.policy import CaseRules, Role

from harness import CovenantRun


def _changed_fields(old: object, new: object, path: str = "") -> list[str]:
    """The TOML paths of the leaves that differ (the covenant's rules sit at its top level)."""
    if dataclasses.is_dataclass(old) and not isinstance(old, type):
        changed: list[str] = []
        for field in dataclasses.fields(old):
            name = "" if field.name == "policy" else field.name
            inner = f"{path}.{name}" if path and name else path or name
            changed += _changed_fields(getattr(old, field.name), getattr(new, field.name), inner)
        return changed
    return [] if old == new else [path]


def test_diff_names_every_field_of_a_version_that_sets_a_privacy_budget(
    covenant_run: CovenantRun,
) -> None:
    held = covenant_run.covenant
    policy = held.policy
    draft: Covenant = dataclasses.replace(
        held,
        version=held.version + 1,
        policy=dataclasses.replace(
            policy,
            picture=dataclasses.replace(
                policy.picture, epsilon_per_period=1.0, epsilon_per_request=0.25
            ),
            cases=CaseRules(coordinators=(Role.RIEC, Role.POLITIE)),
        ),
    )
    expected = _changed_fields(held, draft)
    assert sorted(expected) == [
        "cases.coordinators",
        "picture.epsilon_per_period",
        "picture.epsilon_per_request",
        "version",
    ]
    # The administrators sign and publish it; the signers review the signed file.
    signed = covenant_run.publish(draft, name="covenant-budget")
    root = covenant_run.provisioned.signed_covenant
    review = covenant_run.cli("covenant", "diff", str(root), str(signed))
    assert review.returncode == 0, review.stderr
    lines = [line.strip() for line in review.stdout.splitlines()[1:]]
    assert lines == [
        f"~ version: {held.version} -> {draft.version}",
        "~ picture.epsilon_per_period: 0.0 -> 1.0",
        "~ picture.epsilon_per_request: 0.0 -> 0.25",
        "+ cases.coordinators: politie",
    ]
    for field in expected:
        assert any(line.split(":")[0].endswith(field) for line in lines), field

    shown = covenant_run.cli("covenant", "show", str(signed), env={**os.environ, "COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    for text in ("[picture]", "epsilon_per_period", "1.0", "0.25", "[cases]", "riec, politie"):
        assert text in shown.stdout, text

    # The published version reaches the running nodes, which keep serving.
    for party in covenant_run.parties:
        covenant_run.until(
            f"{party} on version {draft.version}",
            60,
            lambda p=party: (
                (s := covenant_run.status(p)) is not None and s.covenant_version == draft.version
            ),
        )
    covenant_run.assert_serving()
