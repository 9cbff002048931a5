"""The daemon demo, end to end: it is also the test that the regional picture the RIEC sees
through the daemons equals the counts computed directly from the demo's data (exact mode),
with every other check the demo makes (visibility, disclosures, a case, covenant versions,
the audit log). A short run: 20 unshared signals per partner."""

from __future__ import annotations

from pathlib import Path

import pytest

from samenloop.policies.cli import main


def test_the_daemon_demo_passes_every_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--signals", "20", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "every check held" in out
    assert "equals the direct count of the demo's data (yes)" in " ".join(out.split())
    report = (tmp_path / "beeld.html").read_text()
    assert "Verantwoording: casussen en interventies" in report
    assert '<html lang="nl">' in report
    assert 'class="map"' in report  # the demo's schematic areas
    assert '"Departementaal vertrouwelijk"' in report  # the covenant's, on every page
    assert "http" not in report
