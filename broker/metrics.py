"""The broker's Prometheus metrics (``metrics_listen`` in ``broker.toml``).

Events are counters, incremented where they happen (the servicer): batches, token
entries, hit notices, envelopes, OPRF requests relayed, mailbox items handed out, and,
through :class:`~samenloop.policies.metrics.RpcMetricsInterceptor`, every call by
method and status with the latency of those that answer once. None of them costs a
database query. State is read from the store when Prometheus scrapes
(:class:`StoreCollector`): each party's mailbox depth and the age of its oldest item,
the entries it holds, its use of each quota of the covenant, and the open hit groups;
a handful of grouped queries, no scan of the token index.

Labels carry only party ids of the covenant, method names, status codes and fixed
names (``kind``, ``outcome``, ``cause``, ``quota``): never a token, ref, group or batch
id, nor anything a node sealed. The operator of the broker sees all of this anyway; the
endpoint makes it visible to whoever can reach ``metrics_listen``
(docs/threat-model.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

import structlog
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from samenloop.broker import mailbox, matching
from samenloop.broker.store import BrokerStore
from samenloop.policies.covenant import Covenant
from samenloop.policies.metrics import RpcMetrics, StoreFigures

log = structlog.get_logger(__name__)

NAMESPACE = "samenloop_broker"

#: The covenant's per-party quotas the broker enforces, as the ``quota`` label names them.
QUOTAS = (
    "token_entries_per_day",
    "token_entries_held",
    "hit_notice_bytes_per_day",
    "envelopes_per_day",
    "envelope_bytes_per_day",
    "envelope_bytes_waiting",
)


class BrokerMetrics:
    """The broker's registry and the counters the servicer increments."""

    def __init__(
        self, store: BrokerStore, covenant: Callable[[], Covenant], clock: Callable[[], datetime]
    ) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.rpc = RpcMetrics(registry, NAMESPACE, "broker")
        self.batches = Counter(
            f"{NAMESPACE}_batches",
            "Token batches accepted, by kind (submit, withdraw) and outcome (accepted, "
            "replayed: the same batch again, answered as before)",
            ["kind", "outcome"],
            registry=registry,
        )
        self.tokens = Counter(
            f"{NAMESPACE}_token_entries",
            "Token entries by what happened to them: stored, unchanged (held already), "
            "withdrawn, unknown (withdrawn but not held), expired, removed (with their party)",
            ["outcome"],
            registry=registry,
        )
        self.hit_notices = Counter(
            f"{NAMESPACE}_hit_notices",
            "Hit notices put in parties' mailboxes, by cause (submit, withdraw, expiry, "
            "removal: a party removed by a covenant version)",
            ["cause"],
            registry=registry,
        )
        self.envelopes = Counter(
            f"{NAMESPACE}_envelopes",
            "Sealed envelopes relayed, by outcome (relayed, replayed)",
            ["outcome"],
            registry=registry,
        )
        self.oprf_requests = Counter(
            f"{NAMESPACE}_oprf_requests_relayed",
            "OPRF evaluation requests relayed to key holders and answered",
            registry=registry,
        )
        self.mailbox_items = Counter(
            f"{NAMESPACE}_mailbox_items_delivered",
            "Mailbox items handed to their parties (fetched or streamed; again after a "
            "reconnect until acknowledged)",
            registry=registry,
        )
        for kind in ("submit", "withdraw"):
            for outcome in ("accepted", "replayed"):
                self.batches.labels(kind, outcome)
        for outcome in ("stored", "unchanged", "withdrawn", "unknown", "expired", "removed"):
            self.tokens.labels(outcome)
        for cause in ("submit", "withdraw", "expiry", "removal"):
            self.hit_notices.labels(cause)
        for outcome in ("relayed", "replayed"):
            self.envelopes.labels(outcome)
        registry.register(StoreCollector(store, covenant, clock))

    def count_batch(self, kind: str, *, replayed: bool, notices: int, **entries: int) -> None:
        """A submit or withdraw batch answered: a replay counts only as one; an accepted
        batch counts its entries by outcome (``stored=``, ``withdrawn=``, ...) and the
        notices it caused."""
        if replayed:
            self.batches.labels(kind, "replayed").inc()
            return
        self.batches.labels(kind, "accepted").inc()
        for outcome, count in entries.items():
            self.tokens.labels(outcome).inc(count)
        self.hit_notices.labels(kind).inc(notices)


class StoreCollector(StoreFigures):
    """The broker's state, read from the store at each scrape."""

    def __init__(
        self, store: BrokerStore, covenant: Callable[[], Covenant], clock: Callable[[], datetime]
    ) -> None:
        self._store = store
        self._covenant = covenant
        self._clock = clock

    def _figures(self) -> Iterator[Metric]:
        now = self._clock()
        covenant = self._covenant()
        parties = sorted(p.id for p in covenant.parties)
        depths = self._store.mailboxes.depths()
        usages = self._store.tokens.usages()
        envelopes = self._store.mailboxes.envelope_usages()
        shown = sorted(set(parties) | set(depths))

        items = GaugeMetricFamily(
            f"{NAMESPACE}_mailbox_items",
            "Items waiting in a party's mailbox, not yet acknowledged",
            labels=["party"],
        )
        age = GaugeMetricFamily(
            f"{NAMESPACE}_mailbox_oldest_item_age_seconds",
            "Age of the oldest item waiting in a party's mailbox (0 when it is empty)",
            labels=["party"],
        )
        for party in shown:
            count, oldest = depths.get(party, (0, now))
            items.add_metric([party], count)
            age.add_metric([party], max(0.0, (now - oldest).total_seconds()))
        yield items
        yield age

        held = GaugeMetricFamily(
            f"{NAMESPACE}_party_token_entries",
            "Token entries a party holds at the broker (live, or expired and not yet swept)",
            labels=["party"],
        )
        used = GaugeMetricFamily(
            f"{NAMESPACE}_quota_used",
            "A party's use of a quota of the covenant (daily ones: today, UTC)",
            labels=["party", "quota"],
        )
        token_day = matching.utc_day(now)
        envelope_day = mailbox.utc_day(now)
        for party in sorted(set(parties) | set(usages) | set(envelopes)):
            usage = usages.get(party, matching.Usage())
            sent = envelopes.get(party, mailbox.EnvelopeUsage())
            today = usage.day == token_day
            sent_today = sent.day == envelope_day
            held.add_metric([party], usage.held)
            figures = {
                "token_entries_per_day": usage.submitted if today else 0,
                "token_entries_held": usage.held,
                "hit_notice_bytes_per_day": usage.notice_bytes if today else 0,
                "envelopes_per_day": sent.sent if sent_today else 0,
                "envelope_bytes_per_day": sent.sent_bytes if sent_today else 0,
                "envelope_bytes_waiting": sent.waiting_bytes,
            }
            for quota in QUOTAS:
                used.add_metric([party, quota], figures[quota])
        yield held
        yield used

        limit = GaugeMetricFamily(
            f"{NAMESPACE}_quota_limit",
            "Each party's limit under a quota of the covenant in force",
            labels=["quota"],
        )
        quotas = covenant.policy.quotas
        for quota in QUOTAS:
            limit.add_metric([quota], getattr(quotas, quota))
        yield limit

        yield GaugeMetricFamily(
            f"{NAMESPACE}_hit_groups_open",
            "Open hit groups (tokens that at least two parties hold)",
            value=self._store.tokens.count_groups(),
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_covenant_version",
            "The version of the covenant in force",
            value=covenant.version,
        )
