"""The Prometheus endpoints of broker and node (issue 15, item 2).

End to end: a broker and four nodes run in this process with ``metrics_listen`` set
(port 0) in their TOML files; signals make tokens, a hit, a disclosure and a picture
collection, one bad call goes to each server and one OPRF request the key holders
refuse; both endpoints are scraped over HTTP and every figure is checked against what
happened (and against the stores' own counts), and no label or value carries a
reference, identifier, category, group, ref or request id. The same, smaller, through
``broker serve`` and ``node serve`` as processes (the port each logs). Also: no
``metrics_listen``, no endpoint; a bad one refused naming the setting; the interceptor's
status and latency figures, and the collectors, on their own.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from concurrent import futures
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import grpc
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from samenloop.broker import metrics as broker_metrics
from samenloop.broker import models as broker_models
from samenloop.broker.mailbox import ItemKind
from samenloop.broker.matching import Entry
from samenloop.broker.metrics import QUOTAS
from samenloop.broker.store import BrokerStore
from samenloop.node.daemon.database import SealedEnvelope
from samenloop.node.daemon.metrics import NodeMetrics
from samenloop.node.daemon.process import build_node
from samenloop.node.daemon.repositories import Repositories
from samenloop.node.disclosure.models import DisclosureState
from samenloop.node.provision import PartySpec, Provisioned
from samenloop.node.tokens import evaluation, threshold
from samenloop.node.tokens.evaluation import RefusalReason
from samenloop.policies import database
from samenloop.policies.config import load_node_config
from samenloop.policies.covenant import Covenant, Role
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.errors import ConfigurationError, InvalidInput
from samenloop.policies.metrics import RpcMetrics, RpcMetricsInterceptor, serve_registry
from samenloop.policies.policy import PictureRules, example_policy
from samenloop.policies.rpc import ErrorInterceptor
from samenloop.v1 import broker_pb2, common_pb2

import in_process
from daemons import Daemons, running_covenant
from in_process import Cluster, wait_for

RIEC, GEMEENTE, WOCO, POLITIE = "riec", "gemeente", "woco", "politie"
SPECS = (
    PartySpec(RIEC, "RIEC Test", Role.RIEC),
    PartySpec(GEMEENTE, "Gemeente Test", Role.GEMEENTE),
    PartySpec(WOCO, "Woningcorporatie Test", Role.WONINGCORPORATIE),
    PartySpec(POLITIE, "Politie Test", Role.POLITIE),
)
PARTIES = tuple(spec.id for spec in SPECS)
SHARED_BSN, POLITIE_BSN, WOCO_KVK = "111222333", "123456782", "01234567"
#: (party, reference, category, identifiers): one hit, between the gemeente and the woco.
SIGNALS = (
    (WOCO, "W-METRICS-1", "woonfraude", [("bsn", SHARED_BSN)]),
    (WOCO, "W-METRICS-2", "woonfraude", [("kvk", WOCO_KVK)]),
    (GEMEENTE, "G-METRICS-1", "vastgoedmisbruik", [("bsn", SHARED_BSN)]),
    (POLITIE, "P-METRICS-1", "witwasindicatie", [("bsn", POLITIE_BSN)]),
)
DETAILS = {"naam": "J. de Vries", "adres": "Dorpsstraat 1"}
MONTH = datetime.now(UTC).strftime("%Y-%m")
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=365)
#: The example rules, with a picture the RIEC may collect (the woco sums the shares).
POLICY = dataclasses.replace(
    example_policy(),
    picture=PictureRules(viewers=(Role.RIEC,), min_cell_count=3, aggregator=Role.WONINGCORPORATIE),
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        return str(response.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (a series never incremented reads 0)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


# --- the endpoint --------------------------------------------------------------------


def test_a_registry_is_served_over_http_until_stopped() -> None:
    registry = CollectorRegistry()
    Counter("samenloop_test_things", "Things", registry=registry).inc(3)
    endpoint = serve_registry(registry, "127.0.0.1:0")
    try:
        assert value(parse(scrape_text(endpoint.port)), "samenloop_test_things_total") == 3
    finally:
        endpoint.stop()
    with pytest.raises(urllib.error.URLError):
        scrape_text(endpoint.port)


def test_a_port_in_use_is_refused_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError) as refused:
            serve_registry(CollectorRegistry(), f"127.0.0.1:{port}")
    assert refused.value.field == "metrics_listen"


def test_a_bad_metrics_listen_is_refused_naming_the_file_and_setting(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        'party = "gemeente"\nbroker = "localhost:7443"\ndata_dir = "data"\n'
        'covenant = "covenant.json"\ncertificate = "node.crt"\nprivate_key = "node.key"\n'
        'ca_certificate = "ca.crt"\nparty_keys = "party-keys.json"\n'
        'metrics_listen = "localhost"\n'
    )
    with pytest.raises(ConfigurationError) as refused:
        load_node_config(path)
    assert refused.value.field == f"{path}: metrics_listen"
    assert "host:port" in refused.value.message


# --- the parts on their own ---------------------------------------------------------------


def test_the_interceptor_counts_each_call_by_status_and_times_single_answers() -> None:
    registry = CollectorRegistry()
    metrics = RpcMetrics(registry, "samenloop_test", "test server")
    ticks = itertools.count()

    def clock() -> float:  # each call reads it twice: every answer takes 0.25 s
        return next(ticks) * 0.25

    def refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
        raise InvalidInput("refused", field="request")

    def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield request
        yield request

    handlers = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Ok": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
            "Refused": grpc.unary_unary_rpc_method_handler(refuse),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        interceptors=[RpcMetricsInterceptor(metrics, clock=clock), ErrorInterceptor()],
    )
    server.add_generic_rpc_handlers((handlers,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            for _ in range(2):
                assert channel.unary_unary("/test.Echo/Ok")(b"x", timeout=10) == b"x"
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary("/test.Echo/Refused")(b"x", timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert list(channel.unary_stream("/test.Echo/Stream")(b"x", timeout=10)) == [b"x"] * 2
            with pytest.raises(grpc.RpcError) as unknown:
                channel.unary_unary("/test.Echo/NoSuchMethod")(b"x", timeout=10)
            assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(None).wait()
    samples = parse(generate_latest(registry).decode())
    calls = {
        dict(labels)["method"] + " " + dict(labels)["code"]: count
        for (name, labels), count in samples.items()
        if name == "samenloop_test_rpc_calls_total"
    }
    assert calls == {
        "test.Echo/Ok OK": 2,
        "test.Echo/Refused INVALID_ARGUMENT": 1,
        "test.Echo/Stream OK": 1,
    }  # a method the server does not serve makes no series
    assert total(samples, "samenloop_test_rpc_errors_total") == 1
    assert value(samples, "samenloop_test_rpc_errors_total", code="INVALID_ARGUMENT") == 1
    ok = "test.Echo/Ok"
    assert value(samples, "samenloop_test_rpc_duration_seconds_count", method=ok) == 2
    assert value(samples, "samenloop_test_rpc_duration_seconds_sum", method=ok) == 0.5
    assert value(samples, "samenloop_test_rpc_duration_seconds_bucket", method=ok, le="0.25") == 2
    assert value(samples, "samenloop_test_rpc_duration_seconds_bucket", method=ok, le="0.1") == 0
    refused_method = "test.Echo/Refused"
    assert value(samples, "samenloop_test_rpc_duration_seconds_count", method=refused_method) == 1
    # A stream's length is how long the peer stayed, not a latency: not timed.
    assert (
        total(samples, "samenloop_test_rpc_duration_seconds_count", method="test.Echo/Stream") == 0
    )


def _entry(party: str, n: int) -> Entry:
    return Entry(party, bytes([n]) * 32, bytes([n, ord(party[0])]) * 8, 1, LATER, None)


def test_the_broker_collector_reads_depth_age_holdings_and_groups(database_url: str) -> None:
    engine = database.make_engine(database_url)
    database.upgrade(engine, "samenloop.broker.migrations")
    store = BrokerStore(engine)
    try:
        ids = itertools.count(1)
        for number, (party, entries) in enumerate(
            (("a", [_entry("a", 1), _entry("a", 2)]), ("b", [_entry("b", 1)])), start=1
        ):
            result = store.tokens.submit(
                party,
                number.to_bytes(16, "big"),
                1,
                entries,
                min_parties=2,
                now=NOW,
                new_group_id=lambda: next(ids).to_bytes(16, "big"),
                sign_notice=lambda draft: b"notice for " + draft.recipient.encode(),
            )
        assert result.notices == 2  # the group formed: a notice to each member
        store.mailboxes.enqueue("c", b"older", ItemKind.ENVELOPE, NOW - timedelta(seconds=60))
        covenant = cast(
            Covenant,
            SimpleNamespace(
                parties=[SimpleNamespace(id=p) for p in ("a", "b", "c", "d")],
                policy=example_policy(),
                version=3,
            ),
        )
        moment = NOW + timedelta(seconds=90)
        collector = broker_metrics.StoreCollector(store, lambda: covenant, lambda: moment)
        registry = CollectorRegistry()
        registry.register(collector)
        samples = parse(generate_latest(registry).decode())
        depth = {"a": 1, "b": 1, "c": 1, "d": 0}
        age = {"a": 90, "b": 90, "c": 150, "d": 0}
        held = {"a": 2, "b": 1, "c": 0, "d": 0}
        for party in "abcd":
            assert value(samples, "samenloop_broker_mailbox_items", party=party) == depth[party]
            assert (
                value(samples, "samenloop_broker_mailbox_oldest_item_age_seconds", party=party)
                == age[party]
            )
            assert (
                value(samples, "samenloop_broker_party_token_entries", party=party) == held[party]
            )
            quota = "token_entries_held"
            assert (
                value(samples, "samenloop_broker_quota_used", party=party, quota=quota)
                == (held[party])
            )
        assert value(samples, "samenloop_broker_hit_groups_open") == 1
        assert value(samples, "samenloop_broker_covenant_version") == 3
        limits = example_policy().quotas
        assert value(samples, "samenloop_broker_quota_limit", quota="envelopes_per_day") == (
            limits.envelopes_per_day
        )
        store.mailboxes.ack("c", store.mailboxes.mailbox_state("c").head_cursor)
        samples = parse(generate_latest(registry).decode())
        assert value(samples, "samenloop_broker_mailbox_items", party="c") == 0
        assert value(samples, "samenloop_broker_mailbox_oldest_item_age_seconds", party="c") == 0
    finally:
        with engine.begin() as conn:  # the PostgreSQL database lives for the module
            for table in reversed(broker_models.Base.metadata.sorted_tables):
                conn.execute(table.delete())
        engine.dispose()


def test_the_node_collector_of_an_empty_store_and_its_connection(sqlite_url: str) -> None:
    engine = database.make_engine(sqlite_url)
    database.upgrade(engine, "samenloop.node.daemon.migrations")
    metrics = NodeMetrics()
    connection: list[tuple[bool, datetime | None]] = [(False, None)]
    repositories = Repositories.open(engine)
    metrics.watch(repositories, lambda: connection[0], lambda: NOW)
    try:
        samples = parse(generate_latest(metrics.registry).decode())
        assert value(samples, "samenloop_node_signals", state="active") == 0
        assert ("samenloop_node_outbox_envelopes", ()) in samples
        assert value(samples, "samenloop_node_outbox_envelopes") == 0
        with engine.begin() as conn:  # an envelope queued as a capability's transaction does
            repositories.shared._queue_envelope(conn, SealedEnvelope(b"m" * 16, "woco", b"s"), NOW)
        samples = parse(generate_latest(metrics.registry).decode())
        assert value(samples, "samenloop_node_outbox_envelopes") == 1
        assert repositories.shared.settle_envelope(b"m" * 16, sent=True, now=NOW)
        samples = parse(generate_latest(metrics.registry).decode())
        assert value(samples, "samenloop_node_outbox_envelopes") == 0
        assert (
            value(samples, "samenloop_node_disclosures", direction="incoming", state="granted") == 0
        )
        assert value(samples, "samenloop_node_picture_collections") == 0
        assert value(samples, "samenloop_node_broker_connected") == 0
        assert not [name for name, _ in samples if "last_contact" in name]  # never heard from
        connection[0] = (True, NOW - timedelta(seconds=12))
        samples = parse(generate_latest(metrics.registry).decode())
        assert value(samples, "samenloop_node_broker_connected") == 1
        assert value(samples, "samenloop_node_broker_last_contact_age_seconds") == 12
        check_labels(samples)
    finally:
        engine.dispose()


def test_a_store_that_cannot_be_read_leaves_the_counters_served(tmp_path: Path) -> None:
    engine = database.make_engine(f"sqlite:///{tmp_path / 'not-migrated.db'}")
    metrics = NodeMetrics()
    metrics.watch(Repositories.open(engine), lambda: (True, NOW), lambda: NOW)
    metrics.tokenised.inc(3)
    endpoint = serve_registry(metrics.registry, "127.0.0.1:0")
    try:
        samples = parse(scrape_text(endpoint.port))  # answers, with what it has
    finally:
        endpoint.stop()
        engine.dispose()
    assert value(samples, "samenloop_node_identifiers_tokenised_total") == 3
    assert not [name for name, _ in samples if name == "samenloop_node_signals"]


# --- end to end ------------------------------------------------------------------------


def with_metrics(provisioned: Provisioned) -> None:
    """Rewrite the provisioned TOML files: every daemon serves metrics on a free port."""
    for path in (provisioned.broker_config, *provisioned.node_configs.values()):
        text = path.read_text()
        assert "metrics_listen" not in text  # off unless configured
        path.write_text(text + 'metrics_listen = "127.0.0.1:0"\n')


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("metrics-e2e")
    running = in_process.start_cluster(
        root, "riec-metrics", SPECS, [GEMEENTE, WOCO], policy=POLICY, configure=with_metrics
    )
    try:
        yield running
    finally:
        running.close()


def broker_port(cluster: Cluster) -> int:
    assert cluster.broker.metrics is not None
    return int(cluster.broker.metrics.port)


def node_port(cluster: Cluster, party: str) -> int:
    endpoint = cluster.nodes[party].metrics
    assert endpoint is not None
    return endpoint.port


def settled(cluster: Cluster) -> bool:
    """Nothing is in flight: the broker's mailboxes are empty, then every node has sent
    all it made, then the broker's mailboxes are still empty and it took nothing new in
    between. A node acknowledges a mailbox item in the transaction that queues what the
    item made it send (a picture share to the aggregator, a sum request), so an empty
    mailbox before empty outboxes, with no new message after them, is a fixed point."""

    def broker_side() -> tuple[float, ...] | None:
        samples = parse(scrape_text(broker_port(cluster)))
        if total(samples, "samenloop_broker_mailbox_items"):
            return None
        return (
            total(samples, "samenloop_broker_envelopes_total"),
            total(samples, "samenloop_broker_hit_notices_total"),
            total(samples, "samenloop_broker_mailbox_items_delivered_total"),
        )

    before = broker_side()
    if before is None:
        return False
    for party in PARTIES:
        samples = parse(scrape_text(node_port(cluster, party)))
        if any(
            value(samples, name)
            for name in (
                "samenloop_node_identifiers_pending",
                "samenloop_node_outbox_batches",
                "samenloop_node_outbox_envelopes",
            )
        ):
            return False
    return broker_side() == before


def run_the_story(cluster: Cluster) -> dict[str, object]:
    """Signals, a hit, a granted disclosure, a picture collection, a refused call at each
    server; returns the ids the run made, which no scrape may show."""
    for party, reference, category, identifiers in SIGNALS:
        cluster.clients[party].add_signal(
            reference, category, identifiers, details=DETAILS if party == WOCO else None
        )
    hits = wait_for(
        "the gemeente's hit with the woco",
        lambda: [
            h for h in cluster.clients[GEMEENTE].hits() if any(m.party == WOCO for m in h.members)
        ],
    )
    wait_for("the woco's hit", lambda: cluster.clients[WOCO].hits())
    (member,) = [m for m in hits[0].members if m.party == WOCO]
    asked = cluster.clients[GEMEENTE].request_disclosure(
        hits[0].group_id, WOCO, member.signal_refs[0], "adresfraude", ["naam"], officer="a@g"
    )
    wait_for(
        "the disclosure granted",
        lambda: (
            cluster.clients[GEMEENTE].disclosure(asked.request_id).state is DisclosureState.GRANTED
        ),
    )
    with pytest.raises(InvalidInput):  # refused by the local API: counted there
        cluster.clients[GEMEENTE].request_disclosure(
            hits[0].group_id, WOCO, member.signal_refs[0], "no-such-purpose", ["naam"], officer="a"
        )
    stub = cluster.nodes[POLITIE].uplink.brokers.stub()
    with pytest.raises(grpc.RpcError) as refused:  # refused by the broker: counted there
        stub.SubmitTokens(broker_pb2.SubmitTokensRequest(key_epoch=999, client_batch_id=b"x" * 16))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A request the key holders refuse: a well-signed one whose element is not a point.
    keys = PartyKeys.load(load_node_config(cluster.provisioned.node_configs[POLITIE]).party_keys)
    epoch = threshold.KeyEpoch.from_covenant(cluster.provisioned.covenant)
    requests = evaluation.build_requests(
        keys,
        epoch.covenant_id,
        epoch,
        (1, 2),
        [b"\xff" * 32],
        request_id=evaluation.new_request_id(),
        now=datetime.now(UTC),
    )
    answered = stub.Evaluate(
        broker_pb2.EvaluateRequest(
            requests=[common_pb2.Signed.FromString(requests[i]) for i in sorted(requests)]
        ),
        timeout=30,
    )
    assert len(answered.replies) == 2
    collection = cluster.clients[RIEC].picture_collect(MONTH, officer="analist@riec")
    wait_for(
        "every party's answer to the picture request",
        lambda: all(
            total(
                parse(scrape_text(node_port(cluster, p))),
                "samenloop_node_picture_requests_answered",
            )
            == 1
            for p in (GEMEENTE, WOCO, POLITIE)
        ),
    )
    wait_for("the daemons settled", lambda: settled(cluster))
    return {
        "group": hits[0].group_id.hex(),
        "ref": member.signal_refs[0].hex(),
        "request": asked.request_id.hex(),
        "collection": collection.request_id.hex(),
    }


def test_both_endpoints_count_what_happened_and_show_no_identifier(cluster: Cluster) -> None:
    made = run_the_story(cluster)
    broker_text = scrape_text(broker_port(cluster))
    node_texts = {party: scrape_text(node_port(cluster, party)) for party in PARTIES}
    broker = parse(broker_text)
    nodes = {party: parse(text) for party, text in node_texts.items()}

    def nodes_total(name: str, **labels: str) -> float:
        return sum(total(samples, name, **labels) for samples in nodes.values())

    # Tokens: one per identifier, each tokenised once, stored once at the broker.
    identifiers = sum(len(ids) for *_, ids in SIGNALS)
    assert nodes_total("samenloop_node_identifiers_tokenised_total") == identifiers
    assert value(broker, "samenloop_broker_token_entries_total", outcome="stored") == identifiers
    assert nodes_total("samenloop_node_batch_entries_accepted_total", kind="submit") == identifiers
    # Batches: what the nodes had accepted is what the broker accepted.
    accepted = nodes_total("samenloop_node_batches_sent_total", kind="submit", outcome="accepted")
    assert accepted >= len(PARTIES) - 1  # the RIEC has no signals
    assert value(broker, "samenloop_broker_batches_total", kind="submit", outcome="accepted") == (
        accepted
    )
    assert nodes_total("samenloop_node_batches_sent_total", outcome="refused") == 0
    # The hit: one group, a notice to each of its two members and to the RIEC (the example
    # rules show it every hit), each taken once.
    assert value(broker, "samenloop_broker_hit_groups_open") == 1
    assert value(broker, "samenloop_broker_hit_notices_total", cause="submit") == 3
    assert nodes_total("samenloop_node_mailbox_items_total", kind="hit_notice") == 3
    for party in (GEMEENTE, WOCO, RIEC):
        assert value(nodes[party], "samenloop_node_hit_notices_total", outcome="accepted") == 1
        assert value(nodes[party], "samenloop_node_hits", state="open") == 1
    assert nodes_total("samenloop_node_hit_notices_total", outcome="refused") == 0
    # Held entries and quota use, per party, as the store counts them.
    held = {WOCO: 2, GEMEENTE: 1, POLITIE: 1, RIEC: 0}
    for party, count in held.items():
        assert value(broker, "samenloop_broker_party_token_entries", party=party) == count
        assert (
            value(broker, "samenloop_broker_quota_used", party=party, quota="token_entries_held")
            == count
        )
        assert (
            value(broker, "samenloop_broker_quota_used", party=party, quota="token_entries_per_day")
            == count
        )
        assert value(broker, "samenloop_broker_mailbox_items", party=party) == 0
        assert value(broker, "samenloop_broker_mailbox_oldest_item_age_seconds", party=party) == 0
    usage = cluster.broker.store.tokens.usage(WOCO)
    assert usage.held == held[WOCO]
    assert {
        q for (n, ls), _ in broker.items() if n == "samenloop_broker_quota_limit" for _, q in ls
    }
    for quota in QUOTAS:
        assert value(broker, "samenloop_broker_quota_limit", quota=quota) > 0
    # The disclosure: a request and its answer through the broker, granted on both sides.
    assert value(broker, "samenloop_broker_envelopes_total", outcome="relayed") >= 2
    assert (
        value(nodes[GEMEENTE], "samenloop_node_disclosures", direction="outgoing", state="granted")
        == 1
    )
    assert (
        value(nodes[WOCO], "samenloop_node_disclosures", direction="incoming", state="granted") == 1
    )
    assert nodes_total("samenloop_node_disclosures", state="refused") == 0
    # The picture: one collection at the RIEC, answered by every other party.
    assert value(nodes[RIEC], "samenloop_node_picture_collections") == 1
    assert nodes_total("samenloop_node_picture_collections") == 1
    # The OPRF: each holder's figures are its store's durable counts; the broker relayed
    # every request a holder answered; only the hand-made one was refused.
    relayed = 0.0
    for party in (GEMEENTE, WOCO):
        totals = cluster.nodes[party].repositories.tokens.holder_totals()
        samples = nodes[party]
        assert value(samples, "samenloop_node_oprf_requests_evaluated_total", again="false") == (
            totals.requests_served
        )
        assert value(samples, "samenloop_node_oprf_elements_evaluated_total") == (
            totals.elements_evaluated
        )
        assert totals.elements_evaluated >= identifiers  # each holder saw every identifier
        by_party = {
            p: value(samples, "samenloop_node_oprf_elements_evaluated_today", party=p)
            for p in PARTIES
        }
        assert sum(by_party.values()) == totals.elements_evaluated  # all of it today
        assert by_party[RIEC] == 0  # the RIEC has nothing to tokenise
        assert by_party[WOCO] >= 2  # the woco's two identifiers
        relayed += total(samples, "samenloop_node_oprf_requests_evaluated_total")
    for party in (GEMEENTE, WOCO):  # the hand-made request, refused by each holder
        refusals = nodes[party]
        assert total(refusals, "samenloop_node_oprf_requests_refused_total") == 1
        reason = "invalid_element"
        assert value(refusals, "samenloop_node_oprf_requests_refused_total", reason=reason) == 1
        relayed += 1
    assert total(nodes[POLITIE], "samenloop_node_oprf_elements_evaluated_today") == 0
    assert not [n for n, _ in nodes[POLITIE] if n.endswith("evaluated_today")]  # no holder
    for reason in RefusalReason:  # every reason is a series, at 0 until it happens
        assert (
            "samenloop_node_oprf_requests_refused_total",
            (("reason", reason.name.lower()),),
        ) in nodes[GEMEENTE]
    assert value(broker, "samenloop_broker_oprf_requests_relayed_total") == relayed
    # Calls by method and status, with the latency of each answered call.
    submit = "samenloop.v1.Broker/SubmitTokens"
    assert value(broker, "samenloop_broker_rpc_calls_total", method=submit, code="OK") == accepted
    assert (
        value(broker, "samenloop_broker_rpc_calls_total", method=submit, code="INVALID_ARGUMENT")
        == 1
    )
    assert value(broker, "samenloop_broker_rpc_errors_total", code="INVALID_ARGUMENT") == 1
    assert value(broker, "samenloop_broker_rpc_duration_seconds_count", method=submit) == (
        accepted + 1
    )
    ask = "samenloop.v1.NodeApi/RequestDisclosure"
    gemeente = nodes[GEMEENTE]
    assert value(gemeente, "samenloop_node_rpc_calls_total", method=ask, code="OK") == 1
    assert (
        value(gemeente, "samenloop_node_rpc_calls_total", method=ask, code="INVALID_ARGUMENT") == 1
    )
    assert value(gemeente, "samenloop_node_rpc_errors_total", code="INVALID_ARGUMENT") == 1
    assert value(gemeente, "samenloop_node_rpc_duration_seconds_count", method=ask) == 2
    for party in PARTIES:
        assert value(nodes[party], "samenloop_node_broker_connected") == 1
        signals = sum(1 for p, *_ in SIGNALS if p == party)
        assert value(nodes[party], "samenloop_node_signals", state="active") == signals

    # Nothing of the run's data, anywhere in a scrape; labels only from the allow-list.
    secrets = [
        SHARED_BSN,
        POLITIE_BSN,
        WOCO_KVK,
        *(reference for _, reference, _, _ in SIGNALS),
        *(category for _, _, category, _ in SIGNALS),
        *DETAILS.values(),
        "a@g",
        "analist@riec",
        "adresfraude",
        *(str(made[key]) for key in ("group", "ref", "request", "collection")),
        *(str(made[key])[:16] for key in ("group", "ref", "request", "collection")),
    ]
    for name, text in {"broker": broker_text, **node_texts}.items():
        for secret in secrets:
            assert secret.lower() not in text.lower(), (name, secret)
        check_labels(parse(text))


#: The label values a metric may carry: party ids, method names, status codes, fixed names.
ALLOWED: Mapping[str, re.Pattern[str]] = {
    "party": re.compile("|".join(PARTIES)),
    "method": re.compile(r"(samenloop\.v1\.(Broker|NodeApi)|grpc\.health\.v1\.Health)/[A-Z]\w+"),
    "code": re.compile("|".join(code.name for code in grpc.StatusCode)),
    "quota": re.compile("|".join(QUOTAS)),
    "kind": re.compile(
        "submit|withdraw|hit_notice|envelope|covenant_update|covenant_timestamp|set_aside|unknown"
    ),
    "outcome": re.compile(
        "accepted|replayed|refused|quota|unchanged|stored|withdrawn|unknown|expired|removed"
        "|relayed|contributed"
    ),
    "cause": re.compile("submit|withdraw|expiry|removal"),
    "state": re.compile(
        "active|withdrawn|expired|open|closed|sent|pending_approval|granted|refused"
    ),
    "direction": re.compile("outgoing|incoming"),
    "reason": re.compile("|".join(reason.name.lower() for reason in RefusalReason)),
    "again": re.compile("true|false"),
    "loop": re.compile("work|mailbox|holder"),
    "le": re.compile(r"[0-9.]+|\+Inf"),
}


def check_labels(samples: Samples) -> None:
    for name, labels in samples:
        assert name.startswith(("samenloop_broker_", "samenloop_node_")), name
        for label, text in labels:
            assert label in ALLOWED, (name, label)
            assert ALLOWED[label].fullmatch(text), (name, label, text)


def test_a_stopped_node_serves_no_metrics_and_without_the_setting_none_at_all(
    cluster: Cluster,
) -> None:
    config = load_node_config(cluster.provisioned.node_configs[RIEC])
    assert config.metrics_listen == "127.0.0.1:0"
    endpoint = cluster.nodes[RIEC].metrics
    assert endpoint is not None
    cluster.stop(RIEC)
    try:
        with pytest.raises(urllib.error.URLError):  # the endpoint stopped with its node
            scrape_text(endpoint.port)
        node = build_node(dataclasses.replace(config, metrics_listen=None), clock=cluster.clock)
        try:
            assert node.metrics is None
        finally:
            node.stop(None)
    finally:
        cluster.start(RIEC)


# --- through the daemons, as processes ------------------------------------------------------


def logged_port(daemons: Daemons, name: str) -> int:
    """The port a daemon says it serves its metrics on (it was given port 0)."""
    found = re.search(rb"metrics served\b[^\n]*\bport=(\d+)", daemons.log(name))
    assert found is not None, daemons.log(name)[-2000:]
    return int(found.group(1))


def test_broker_serve_and_node_serve_expose_metrics_that_match_their_work() -> None:
    root = Path(tempfile.mkdtemp(prefix="sl-met-", dir="/tmp"))  # short: sockets live here
    specs = tuple(spec for spec in SPECS if spec.id in (GEMEENTE, WOCO))
    try:
        with running_covenant(
            root,
            "riec-metrics-daemons",
            specs,
            [GEMEENTE, WOCO],
            2,
            now=datetime.now(UTC) - timedelta(minutes=5),
            configure=with_metrics,
        ) as daemons:
            ports = {name: logged_port(daemons, name) for name in ("broker", GEMEENTE, WOCO)}
            daemons.clients[WOCO].add_signal("W-DAEMON-1", "woonfraude", [("bsn", SHARED_BSN)])
            daemons.clients[GEMEENTE].add_signal(
                "G-DAEMON-1", "vastgoedmisbruik", [("bsn", SHARED_BSN)]
            )

            def settled() -> bool:
                scraped = {name: parse(scrape_text(port)) for name, port in ports.items()}
                return (
                    all(
                        value(scraped[party], "samenloop_node_hits", state="open") == 1
                        and value(scraped[party], "samenloop_node_outbox_batches") == 0
                        for party in (GEMEENTE, WOCO)
                    )
                    and total(scraped["broker"], "samenloop_broker_mailbox_items") == 0
                )

            wait_for("both hits, nothing waiting", settled)
            texts = {name: scrape_text(port) for name, port in ports.items()}
    finally:
        shutil.rmtree(root)
    broker = parse(texts["broker"])
    nodes = {party: parse(texts[party]) for party in (GEMEENTE, WOCO)}
    accepted = sum(
        value(samples, "samenloop_node_batches_sent_total", kind="submit", outcome="accepted")
        for samples in nodes.values()
    )
    assert accepted >= 2
    assert value(broker, "samenloop_broker_batches_total", kind="submit", outcome="accepted") == (
        accepted
    )
    assert value(broker, "samenloop_broker_token_entries_total", outcome="stored") == 2
    assert value(broker, "samenloop_broker_hit_notices_total", cause="submit") == 2
    assert value(broker, "samenloop_broker_hit_groups_open") == 1
    for party, samples in nodes.items():
        assert value(samples, "samenloop_node_identifiers_tokenised_total") == 1
        assert value(samples, "samenloop_node_hit_notices_total", outcome="accepted") == 1
        assert value(broker, "samenloop_broker_party_token_entries", party=party) == 1
    for name, text in texts.items():
        for secret in (SHARED_BSN, "W-DAEMON-1", "G-DAEMON-1", "woonfraude", "vastgoedmisbruik"):
            assert secret not in text, (name, secret)
        check_labels(parse(text))
