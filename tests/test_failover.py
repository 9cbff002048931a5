"""A node's broker addresses: the uplink moves on to the next replica once per outage."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from samenloop.node.daemon.failover import BrokerSwitch
from samenloop.node.provision import PartySpec, free_port
from samenloop.policies import config
from samenloop.policies.covenant import Role

from daemons import running_covenant


def _switch(addresses: list[str], made: list[str]) -> BrokerSwitch:
    def connect(address: str) -> grpc.Channel:
        made.append(address)
        return grpc.insecure_channel(address)

    return BrokerSwitch(addresses, connect)


def test_an_outage_seen_by_several_loops_moves_on_once():
    made: list[str] = []
    switch = _switch(["a:7443", "b:7443", "c:7443"], made)
    switch.stub()
    assert (switch.index, switch.address, made) == (0, "a:7443", ["a:7443"])
    seen_by_work, seen_by_mailbox = switch.index, switch.index
    assert switch.unavailable(seen_by_work)
    assert not switch.unavailable(seen_by_mailbox)  # left behind already
    assert switch.address == "b:7443"
    switch.stub()
    assert made == ["a:7443", "b:7443"]
    assert switch.unavailable(1)
    switch.stub()
    assert switch.unavailable(2)  # around to the first again, its channel kept
    switch.stub()
    assert (switch.address, made) == ("a:7443", ["a:7443", "b:7443", "c:7443"])
    switch.close()


def test_renew_makes_new_channels_from_the_next_call_on():
    made: list[str] = []
    switch = _switch(["a:7443", "b:7443"], made)
    first = switch.stub()
    assert switch.stub() is first
    switch.renew()  # the node's certificate was renewed
    assert switch.stub() is not first
    assert made == ["a:7443", "a:7443"]
    switch.close()


def test_one_address_never_moves():
    switch = _switch(["a:7443"], [])
    assert not switch.unavailable(0)
    assert switch.address == "a:7443"


def test_no_address_is_a_programming_error():
    with pytest.raises(ValueError, match="at least one"):
        BrokerSwitch([], grpc.insecure_channel)


# --- with the daemons ----------------------------------------------------------------


def test_a_node_dials_past_an_address_where_no_broker_answers(tmp_path: Path) -> None:
    """The node's first address has no broker: it moves on to the next, connects, and says
    in its status which one it dials."""
    specs = (
        PartySpec("gemeente", "Gemeente Middelburg", Role.GEMEENTE),
        PartySpec("politie", "Politie Zeeland-West-Brabant", Role.POLITIE),
    )
    with running_covenant(
        tmp_path, "riec-failover", specs, ("gemeente", "politie"), 2, now=datetime.now(UTC)
    ) as daemons:
        path = daemons.provisioned.node_configs["politie"]
        live = config.load_node_config(path).broker
        nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
        daemons.stop("politie")
        text = path.read_text().replace(f'broker = "{live}"\n', "")
        path.write_text(text + f'brokers = ["{nowhere}", "{live}"]\n')
        assert config.load_node_config(path).brokers == (nowhere, live)
        daemons.start("politie")
        daemons.wait_ready(["politie"])
        status = daemons.status("politie")
        assert status is not None
        assert status.broker_address == live
        assert b"broker unavailable: trying the next address" in daemons.log("politie")
