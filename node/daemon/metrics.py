"""A node's Prometheus metrics (``metrics_listen`` in ``node.toml``).

Events are counters, incremented where they happen (the uplink's loops): batches sent
to the broker and how it took them, token entries and refs they carried, identifiers
tokenised, hit notices received, mailbox items by kind, the key holder's OPRF requests
evaluated and refused by reason, and failed calls to the broker by status; through
:class:`~samenloop.policies.metrics.RpcMetricsInterceptor`, every local API call by method
and status, with the latency of those that answer once. State is read from the store
when Prometheus scrapes (:class:`StoreCollector`): signals by state, identifiers waiting
for tokens, the outbox, hits, disclosure requests by direction and state (their
outcome), picture collections and answers, a key holder's evaluations today for each
party, and the uplink's connection.

Labels carry only fixed names (states, kinds, outcomes, reasons, status codes, method
names) and, on a key holder's node, the party ids of the covenant: never a signal's
reference, an identifier, a category, a hit group, a request id, an officer or a purpose.
Counts are still facts about a partner's work: who can reach ``metrics_listen`` learns
them (docs/threat-model.md, "Whoever can reach a metrics endpoint").
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from datetime import datetime

import structlog
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from samenloop.node.daemon.repositories import Repositories
from samenloop.node.disclosure.models import DisclosureDirection, DisclosureState
from samenloop.node.picture.models import PictureAnswerOutcome
from samenloop.node.signals.models import SignalState
from samenloop.node.tokens.evaluation import RefusalReason
from samenloop.policies.metrics import RpcMetrics, StoreFigures

log = structlog.get_logger(__name__)

NAMESPACE = "samenloop_node"

#: The kinds of mailbox item, as the ``kind`` label names them.
MAILBOX_KINDS = (
    "hit_notice",
    "envelope",
    "covenant_update",
    "covenant_timestamp",
    "set_aside",
    "unknown",
)


def reason_label(reason: RefusalReason) -> str:
    """A refusal reason as a label value: its name in lower case (``quota_exceeded``)."""
    return reason.name.lower()


class NodeMetrics:
    """A node's registry and the counters its uplink increments."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.rpc = RpcMetrics(registry, NAMESPACE, "local API")
        self.batches = Counter(
            f"{NAMESPACE}_batches_sent",
            "Outbox batches sent to the broker, by kind (submit, withdraw) and outcome "
            "(accepted; refused for good; quota: kept, to be sent when the quota allows)",
            ["kind", "outcome"],
            registry=registry,
        )
        self.entries = Counter(
            f"{NAMESPACE}_batch_entries_accepted",
            "Entries of batches the broker accepted: tokens submitted (submit), refs "
            "withdrawn (withdraw)",
            ["kind"],
            registry=registry,
        )
        self.tokenised = Counter(
            f"{NAMESPACE}_identifiers_tokenised",
            "Identifiers turned into tokens (through the key holders' OPRF evaluations)",
            registry=registry,
        )
        self.hit_notices = Counter(
            f"{NAMESPACE}_hit_notices",
            "Hit notices from the mailbox, by outcome (accepted: new to the node; "
            "unchanged: known already; refused: did not verify)",
            ["outcome"],
            registry=registry,
        )
        self.mailbox_items = Counter(
            f"{NAMESPACE}_mailbox_items",
            "Mailbox items processed, by kind",
            ["kind"],
            registry=registry,
        )
        self.oprf_evaluated = Counter(
            f"{NAMESPACE}_oprf_requests_evaluated",
            "OPRF evaluation requests this key holder answered with evaluations (again: an "
            "identical request answered again, counted once against the quota)",
            ["again"],
            registry=registry,
        )
        self.oprf_elements = Counter(
            f"{NAMESPACE}_oprf_elements_evaluated",
            "Blinded elements this key holder evaluated (first answers only)",
            registry=registry,
        )
        self.oprf_refused = Counter(
            f"{NAMESPACE}_oprf_requests_refused",
            "OPRF evaluation requests this key holder refused, by reason",
            ["reason"],
            registry=registry,
        )
        self.broker_failures = Counter(
            f"{NAMESPACE}_broker_call_failures",
            "Calls to the broker that failed, by loop (work, mailbox, holder) and status code",
            ["loop", "code"],
            registry=registry,
        )
        for kind in ("submit", "withdraw"):
            self.entries.labels(kind)
            for outcome in ("accepted", "refused", "quota"):
                self.batches.labels(kind, outcome)
        for outcome in ("accepted", "unchanged", "refused"):
            self.hit_notices.labels(outcome)
        for kind in MAILBOX_KINDS:
            self.mailbox_items.labels(kind)
        for again in ("false", "true"):
            self.oprf_evaluated.labels(again)
        for reason in RefusalReason:
            self.oprf_refused.labels(reason_label(reason))

    def watch(
        self,
        repositories: Repositories,
        connection: Callable[[], tuple[bool, datetime | None]],
        clock: Callable[[], datetime],
        parties: Callable[[], Collection[str]] = frozenset,
        rotation: Callable[[], tuple[int, int] | None] = lambda: None,
    ) -> None:
        """Add the state read at each scrape: ``connection`` gives whether the uplink is
        connected and when it last heard from the broker, ``parties`` the parties of the
        covenant held (the only party ids a label may carry), ``rotation`` the (current,
        staged) key epochs while a rotation of the OPRF key is staged."""
        self.registry.register(StoreCollector(repositories, connection, clock, parties, rotation))


class StoreCollector(StoreFigures):
    """A node's state, read from its store at each scrape."""

    def __init__(
        self,
        repositories: Repositories,
        connection: Callable[[], tuple[bool, datetime | None]],
        clock: Callable[[], datetime],
        parties: Callable[[], Collection[str]] = frozenset,
        rotation: Callable[[], tuple[int, int] | None] = lambda: None,
    ) -> None:
        self._repositories = repositories
        self._connection = connection
        self._clock = clock
        self._parties = parties
        self._rotation = rotation

    def _figures(self) -> Iterator[Metric]:
        epochs = self._rotation()
        if epochs is not None:
            restated, live = self._repositories.signals.rotation_progress(*epochs)
            yield GaugeMetricFamily(
                f"{NAMESPACE}_rotation_identifiers_left",
                "Live identifiers not yet re-tokenised under the staged key epoch",
                value=live - restated,
            )
        counts = self._repositories.signals.status_counts()
        signals = GaugeMetricFamily(
            f"{NAMESPACE}_signals", "Signals held, by state", labels=["state"]
        )
        for signal_state in SignalState:
            signals.add_metric([signal_state.value], counts.signals.get(signal_state, 0))
        yield signals
        yield GaugeMetricFamily(
            f"{NAMESPACE}_identifiers_pending",
            "Identifiers of signals waiting to be tokenised",
            value=counts.identifiers_pending,
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_outbox_batches",
            "Batches waiting in the outbox for the broker",
            value=counts.outbox_batches,
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_outbox_entries",
            "Entries of the batches waiting in the outbox",
            value=counts.outbox_entries,
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_outbox_envelopes",
            "Sealed envelopes (disclosures, picture parts, cases) waiting for the broker",
            value=self._repositories.shared.envelopes_waiting(),
        )
        hits = GaugeMetricFamily(f"{NAMESPACE}_hits", "Hits held, by state", labels=["state"])
        hits.add_metric(["open"], counts.open_hits)
        hits.add_metric(["closed"], counts.closed_hits)
        yield hits

        disclosures = GaugeMetricFamily(
            f"{NAMESPACE}_disclosures",
            "Disclosure requests by direction (outgoing: asked by this node; incoming: "
            "asked of it) and state (granted and refused are the outcomes)",
            labels=["direction", "state"],
        )
        by_state = self._repositories.disclosures.counts()
        for direction in DisclosureDirection:
            for state in DisclosureState:
                count = by_state.get((direction.value, state.value), 0)
                disclosures.add_metric([direction.value, state.value], count)
        yield disclosures

        collections, answers = self._repositories.picture.counts()
        yield GaugeMetricFamily(
            f"{NAMESPACE}_picture_collections",
            "Picture collections this node started as a viewer",
            value=collections,
        )
        answered = GaugeMetricFamily(
            f"{NAMESPACE}_picture_requests_answered",
            "Picture requests this node answered, by outcome",
            labels=["outcome"],
        )
        for outcome in PictureAnswerOutcome:
            answered.add_metric([outcome.value], answers.get(outcome.value, 0))
        yield answered

        evaluated = GaugeMetricFamily(
            f"{NAMESPACE}_oprf_elements_evaluated_today",
            "Blinded elements this key holder evaluated today (UTC) for each party: what "
            "its share of the party's oprf_evaluations_per_day counts",
            labels=["party"],
        )
        today = self._repositories.tokens.evaluations_by_party(self._clock().date())
        for party in sorted(self._parties()):
            evaluated.add_metric([party], today.get(party, 0))
        yield evaluated

        connected, last_contact = self._connection()
        yield GaugeMetricFamily(
            f"{NAMESPACE}_broker_connected",
            "1 while the uplink is connected to the broker, else 0",
            value=1 if connected else 0,
        )
        since = GaugeMetricFamily(
            f"{NAMESPACE}_broker_last_contact_age_seconds",
            "Seconds since the broker last answered (absent before the first answer)",
        )
        if last_contact is not None:
            since.add_metric([], max(0.0, (self._clock() - last_contact).total_seconds()))
        yield since
