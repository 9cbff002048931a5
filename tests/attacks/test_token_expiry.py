"""A partner that keeps its tokens at the broker beyond the covenant's retention: refused.

Before issue 12 the broker took any future expiry, so a partner with a client of
its own could keep a token matching (and every later hit on the subject
notified) for a hundred years, whatever the covenant's retention rules say. Now
an entry may expire at most the covenant's longest retention (the broker cannot
see categories) plus the clock skew allowed; an honest node, whose expiries come
from those rules, is never refused.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from samenloop.policies import rpc
from samenloop.v1 import broker_pb2

from daemons import sqlite_count
from harness import CovenantRun


def held_by(run: CovenantRun, party: str) -> int:
    return sqlite_count(
        run.broker_database,
        "SELECT count(*) FROM token_entries t JOIN parties p ON p.id = t.party_id WHERE p.name = ?",
        party,
    )


def test_an_expiry_a_hundred_years_ahead_is_refused(covenant_run: CovenantRun) -> None:
    before = held_by(covenant_run, "woningcorporatie")
    entry = broker_pb2.TokenEntry(token=os.urandom(32), signal_ref=os.urandom(16))
    entry.expires_at.FromDatetime(datetime.now(UTC) + timedelta(days=365 * 100))
    request = broker_pb2.SubmitTokensRequest(
        client_batch_id=os.urandom(16),
        key_epoch=covenant_run.covenant.key_epoch.epoch,
        entries=[entry],
    )
    with pytest.raises(grpc.RpcError) as refused:
        covenant_run.broker_stub("woningcorporatie").SubmitTokens(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = rpc.error_from_rpc(refused.value)
    assert (error.field, error.reason) == ("entries[0].expires_at", "retention.exceeded")
    assert held_by(covenant_run, "woningcorporatie") == before
    covenant_run.assert_serving()


def test_an_honest_node_s_longest_retention_is_taken(covenant_run: CovenantRun) -> None:
    """The category with the covenant's longest retention, its expiry as late as the rule
    allows: the node's tokens reach the broker."""
    retention = covenant_run.covenant.policy.retention
    category, days = max(retention.categories, key=lambda pair: pair[1])
    assert days == retention.longest_days
    before = held_by(covenant_run, "gemeente")
    covenant_run.add_signal("gemeente", "G-LONG", category, [("bsn", "111222333")])
    covenant_run.until(
        "the gemeente's token at the broker, its batch acknowledged",
        60,
        lambda: (
            held_by(covenant_run, "gemeente") == before + 1
            and (status := covenant_run.status("gemeente")) is not None
            and status.outbox_pending == 0
        ),
    )
    covenant_run.assert_serving()
