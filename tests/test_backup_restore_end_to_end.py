"""A node restored from an older backup catches up, through real daemons.

The broker and three nodes run as processes (``tests/daemons.py``); the gemeente's
application follows its node's hits with ``watch_hits``, keeping its position (feed epoch
and sequence) and the revision it applied per group, as the client library says to. The
test backs the gemeente's node up while it runs, then lets more happen: a group grows (a
revision change of a group the backup holds), another closes, and a new group forms on a
signal the gemeente added after the backup. The application sees all of it. The node is
stopped, the backup restored (``samenloop node restore``) and the node started again:

* the broker had deleted the notices the node acknowledged after the backup; the
  restored node asks for the latest of every group again and ends with exactly what it
  held before the restore: nothing lost;
* the application is told that the feed was restored, every change it is shown again is
  marked ``restated`` (it applied each (group, revision) once), and it ends with every
  group at its latest revision;
* changes after the catching up come once and unmarked, among them the one the operator's
  re-import of the lost signal causes;
* the broker's database and log hold none of the raw values.
"""

from __future__ import annotations

import random
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from samenloop.node.client import FeedRestored, HitState, HitWatch, NodeClient
from samenloop.node.provision import PartySpec
from samenloop.policies.covenant import Role
from samenloop.policies.errors import LocalError
from samenloop.policies.policy import Level, VisibilityRule, example_policy

from daemons import Daemons, cli_command, running_covenant, sqlite_rows

SPECS = (
    PartySpec("gemeente", "Gemeente Middelburg", Role.GEMEENTE),
    PartySpec("politie", "Politie Zeeland-West-Brabant", Role.POLITIE),
    PartySpec("belastingdienst", "Belastingdienst", Role.BELASTINGDIENST),
)
PARTIES = tuple(spec.id for spec in SPECS)
CATEGORIES = {
    "gemeente": "vastgoedmisbruik",
    "politie": "drugsproductie",
    "belastingdienst": "witwasindicatie",
}
SEE_ALL = replace(
    example_policy(),
    visibility=tuple(VisibilityRule(role, Level.CATEGORIES) for role in Role),
)
RESTORED = "gemeente"
WAIT = 60.0


def valid_bsns(count: int, seed: int = 15) -> list[str]:
    """``count`` distinct BSNs that pass the 11-test."""
    rng = random.Random(seed)
    found: list[str] = []
    while len(found) < count:
        digits = [rng.randrange(1, 10)] + [rng.randrange(10) for _ in range(7)]
        check = sum(d * w for d, w in zip(digits, range(9, 1, -1), strict=True)) % 11
        bsn = "".join(map(str, digits)) + str(check)
        if check < 10 and bsn not in found:
            found.append(bsn)
    return found


class Application:
    """A partner's application following its node's hits: it keeps its position (epoch and
    sequence) and, per group, the revision it applied; a change at a revision it holds
    already is not applied again (that is what ``restated`` asks of it)."""

    def __init__(self, config: Path) -> None:
        self._client = NodeClient.from_config(config, timeout=5)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watch: HitWatch | None = None
        self.epoch = 0
        self.sequence = 0
        self.held: dict[bytes, int] = {}
        self.states: dict[bytes, HitState] = {}
        #: (group, revision, restated) of each change applied, in order.
        self.applied: list[tuple[bytes, int, bool]] = []
        #: (group, revision, restated) of each change shown again and not applied.
        self.repeated: list[tuple[bytes, int, bool]] = []
        self.restored: list[FeedRestored] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="application", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    watch = self._client.watch_hits(
                        after_feed_seq=self.sequence, feed_epoch=self.epoch
                    )
                    self._watch = watch
                    if self._stop.is_set():
                        watch.cancel()
                for hit in watch:
                    assert hit.sequence is not None
                    assert hit.feed_epoch is not None
                    with self._lock:
                        if watch.restored is not None and watch.restored not in self.restored:
                            self.restored.append(watch.restored)
                        seen = (hit.group_id, hit.revision, hit.restated)
                        if hit.revision > self.held.get(hit.group_id, 0):
                            self.held[hit.group_id] = hit.revision
                            self.states[hit.group_id] = hit.state
                            self.applied.append(seen)
                        else:
                            self.repeated.append(seen)
                        self.epoch, self.sequence = hit.feed_epoch, hit.sequence
            except LocalError:  # the node is down or restarting: resume where it was
                self._stop.wait(0.1)
            except BaseException as error:  # reported by the test
                self.error = error
                return

    def snapshot(self) -> dict[bytes, int]:
        with self._lock:
            return dict(self.held)

    def position(self) -> tuple[int, int]:
        with self._lock:
            return self.epoch, self.sequence

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._watch is not None:
                self._watch.cancel()
        self._thread.join(10)
        self._client.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Daemons]:
    with running_covenant(
        tmp_path / "covenant",
        "riec-restore",
        SPECS,
        PARTIES,
        2,
        now=datetime.now(UTC) - timedelta(minutes=5),
        policy=SEE_ALL,
    ) as running:
        yield running


def cli(*words: str) -> str:
    result = subprocess.run(cli_command(*words), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def node_hits(cluster: Daemons, party: str) -> dict[bytes, int]:
    return {hit.group_id: hit.revision for hit in cluster.clients[party].hits()}


def test_a_node_restored_from_an_older_backup_catches_up_and_its_application_sees_each_hit_once(
    cluster: Daemons, tmp_path: Path
) -> None:
    a, b, c = valid_bsns(3)
    sent: list[tuple[str, str, str, str]] = []  # party, reference, value, detail

    def add(party: str, reference: str, bsn: str) -> None:
        detail = f"restore-detail {reference}"
        cluster.clients[party].add_signal(
            reference, CATEGORIES[party], [("bsn", bsn)], details={"toelichting": detail}
        )
        sent.append((party, reference, bsn, detail))

    app = Application(cluster.provisioned.node_configs[RESTORED])
    try:
        # Before the backup: two groups, each with the gemeente in it.
        add("gemeente", "GEM-A", a)
        add("politie", "POL-A", a)
        add("gemeente", "GEM-B", b)
        add("belastingdienst", "BD-B", b)
        cluster.until("two hits at the application", WAIT, lambda: len(app.snapshot()) == 2)
        (group_b,) = [h.group_id for h in cluster.clients["belastingdienst"].hits()]
        (group_a,) = set(app.snapshot()) - {group_b}

        backup = tmp_path / "gemeente-node.db"
        printed = cli(
            "node", "backup", "--config", str(cluster.provisioned.node_configs[RESTORED]),
            "--out", str(backup),
        )  # fmt: skip
        assert "backed up" in printed
        assert backup.stat().st_mode & 0o777 == 0o600

        # After the backup: group A grows, group B closes, group C forms on a signal the
        # gemeente adds now (its backup will not hold it).
        add("belastingdienst", "BD-A", a)
        cluster.clients["belastingdienst"].withdraw_signal("BD-B", reason="test")
        add("gemeente", "GEM-C", c)
        add("politie", "POL-C", c)

        def after_the_backup() -> bool:
            held = app.snapshot()
            return (
                len(held) == 3
                and held == node_hits(cluster, RESTORED)
                and app.states.get(group_b) is HitState.CLOSED
                and any(r > 0 for g, r, _ in app.applied[2:] if g == group_a)
            )

        cluster.until("the changes after the backup at the application", WAIT, after_the_backup)
        before = app.snapshot()
        (group_c,) = set(before) - {group_a, group_b}
        broker_db = cluster.broker_database

        def all_acknowledged() -> bool:
            ((head, acked),) = sqlite_rows(
                broker_db,
                "SELECT head_cursor, acked_cursor FROM mailbox_heads JOIN parties"
                " ON parties.id = mailbox_heads.party_id WHERE parties.name = ?",
                RESTORED,
            )
            return bool(head == acked)

        # The broker has deleted the notices the node acknowledged after the backup.
        cluster.until("the gemeente's mailbox acknowledged", WAIT, all_acknowledged)
        applied_before = len(app.applied)

        # The disk dies: the node is stopped and restored from the backup.
        cluster.stop(RESTORED)
        printed = cli(
            "node", "restore", "--config", str(cluster.provisioned.node_configs[RESTORED]),
            "--from", str(backup),
        )  # fmt: skip
        assert "database restored" in printed
        node_db = cluster.node_database(RESTORED)
        assert not sqlite_rows(node_db, "SELECT 1 FROM signals WHERE reference = 'GEM-C'")
        ((epoch, base_seq),) = sqlite_rows(node_db, "SELECT feed_epoch, base_seq FROM feed_restore")
        cluster.start(RESTORED)
        cluster.wait_ready([RESTORED])

        def caught_up() -> bool:
            ((until,),) = sqlite_rows(node_db, "SELECT restated_until_seq FROM feed_restore")
            at_epoch, at_sequence = app.position()
            return until is not None and at_epoch == epoch and at_sequence >= until

        cluster.until("the restored node caught up and its application with it", WAIT, caught_up)
        # Nothing lost: the node holds every group at the revision it held before.
        assert node_hits(cluster, RESTORED) == before
        assert app.snapshot() == before
        # The application was told, and shown again only what it may have seen, marked.
        assert app.restored == [FeedRestored(feed_epoch=epoch, resumed_after=base_seq)]
        assert app.repeated, "the restored node re-read the changes after the backup"
        assert all(restated for _, _, restated in app.repeated)
        assert len(app.applied) == applied_before  # nothing applied twice, nothing new
        # The hit on the signal added after the backup names a ref the node does not hold.
        hit_c = cluster.clients[RESTORED].hit(group_c)
        assert [own.reference for own in hit_c.own_signals] == [None]

        # After the catching up: a new group, and the operator re-imports the lost signal.
        add("politie", "POL-B", b)
        add("gemeente", "GEM-C", c)

        def new_changes() -> bool:
            held = app.snapshot()
            return len(held) == 4 and held.get(group_c, 0) > before[group_c]

        cluster.until("the changes after the catching up", WAIT, new_changes)
        assert app.error is None
        new = app.applied[applied_before:]
        assert len(new) == 2
        assert not any(restated for _, _, restated in new)
        hit_c = cluster.clients[RESTORED].hit(group_c)
        assert sorted(own.reference or "" for own in hit_c.own_signals) == ["", "GEM-C"]
        # Every (group, revision) reached the application exactly once.
        counts = Counter((group, revision) for group, revision, _ in app.applied)
        assert set(counts.values()) == {1}
        assert app.snapshot() == node_hits(cluster, RESTORED)
    finally:
        app.stop()
    assert app.error is None

    # The broker's database and log name none of the raw values, the resent notices
    # included.
    needles = {c.encode() for c in CATEGORIES.values()}
    for _, reference, value, detail in sent:
        needles |= {reference.encode(), value.encode(), detail.encode()}
    files = [broker_db.with_name(broker_db.name + s) for s in ("", "-wal", "-shm")]
    scanned = {path.name: path.read_bytes() for path in files if path.exists()}
    scanned["broker.log"] = cluster.log("broker")
    assert sqlite_rows(broker_db, "SELECT count(*) FROM latest_notices")[0][0] >= 4
    for name, data in scanned.items():
        leaked = sorted(needle for needle in needles if needle in data)
        assert not leaked, f"{name} holds raw values: {leaked[:5]}"
