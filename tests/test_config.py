"""broker.toml and node.toml: defaults, relative paths, exact round trips, every validation rule."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from samenloop.policies import config
from samenloop.policies.config import BrokerConfig, NodeConfig
from samenloop.policies.errors import ConfigurationError

BASE = Path("/srv/samenloop/gemeente-tilburg")

# A node's configuration as the demo writes it (canonical: written back byte for byte).
NODE_TOML = """\
party = "gemeente-tilburg"
broker = "samenloop.riec-zwb.example:7443"
data_dir = "data"
covenant = "covenant.toml"
certificate = "tls/node.crt"
private_key = "tls/node.key"
ca_certificate = "tls/ca.crt"
party_keys = "keys/party-keys.json"
key_share = "keys/share-epoch-1.json"
api_socket = "data/api.sock"
api_token = "data/api-token"
database_url = "sqlite:///data/node.db"
log_level = "info"
log_format = "console"
metrics_listen = "127.0.0.1:9464"
"""

BROKER_TOML = """\
data_dir = "data"
covenant = "covenant.toml"
certificate = "tls/broker.crt"
private_key = "tls/broker.key"
signing_keys = "keys/broker-keys.json"
listen = "0.0.0.0:7443"
database_url = "postgresql+psycopg://samenloop:geheim@db.riec.example:5432/broker"
log_level = "warning"
log_format = "json"
metrics_listen = "[::]:9464"
"""

MINIMAL_NODE = """\
party = "politie-zeeland-west-brabant"
broker = "localhost:7443"
data_dir = "/var/lib/samenloop"
covenant = "covenant.toml"
certificate = "node.crt"
private_key = "node.key"
ca_certificate = "ca.crt"
party_keys = "party-keys.json"
"""

MINIMAL_BROKER = """\
data_dir = "data"
covenant = "covenant.toml"
certificate = "broker.crt"
private_key = "broker.key"
signing_keys = "broker-keys.json"
"""


def _node(text: str = NODE_TOML) -> NodeConfig:
    return config.node_config_from_toml(text.encode(), source="node.toml", base_dir=BASE)


def _broker(text: str = BROKER_TOML) -> BrokerConfig:
    return config.broker_config_from_toml(text.encode(), source="broker.toml", base_dir=BASE)


def _set(text: str, key: str, value: str | None) -> str:
    """Set (or with None delete) one setting of a flat TOML file."""
    lines = [line for line in text.splitlines() if not line.startswith(f"{key} = ")]
    if value is not None:
        lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


# --- reading -----------------------------------------------------------------------


def test_node_paths_resolve_against_the_config_directory():
    node = _node()
    assert node.party == "gemeente-tilburg"
    assert node.broker == "samenloop.riec-zwb.example:7443"
    assert node.data_dir == BASE / "data"
    assert node.certificate == BASE / "tls/node.crt"
    assert node.key_share == BASE / "keys/share-epoch-1.json"
    assert node.api_socket == BASE / "data/api.sock"
    assert node.api_listen is None
    assert node.api_token == BASE / "data/api-token"
    assert node.database_url == f"sqlite:///{BASE}/data/node.db"
    assert node.database_url.startswith("sqlite:////srv/")


def test_node_defaults():
    node = _node(MINIMAL_NODE)
    assert node.data_dir == Path("/var/lib/samenloop")
    assert node.covenant == BASE / "covenant.toml"
    assert node.database_url == "sqlite:////var/lib/samenloop/node.db"
    assert node.api_socket == Path("/var/lib/samenloop/api.sock")
    assert node.api_token == Path("/var/lib/samenloop/api-token")  # beside the data
    assert node.key_share is None
    assert node.log_level == "info"


def test_one_broker_is_a_list_of_one():
    assert _node().brokers == ("samenloop.riec-zwb.example:7443",)


def test_several_brokers_in_order_with_broker_the_first():
    listed = '["a.riec.example:7443", "b.riec.example:7443"]'
    without = _node(_set(_set(NODE_TOML, "broker", None), "brokers", listed))
    assert without.broker == "a.riec.example:7443"
    assert without.brokers == ("a.riec.example:7443", "b.riec.example:7443")
    both = _node(_set(_set(NODE_TOML, "broker", '"a.riec.example:7443"'), "brokers", listed))
    assert both == without
    written = config.config_to_toml(without, relative_to=BASE).decode()
    assert 'brokers = ["a.riec.example:7443", "b.riec.example:7443"]' in written
    assert _node(written) == without


def test_broker_settings_and_defaults():
    broker = _broker()
    assert broker.listen == "0.0.0.0:7443"
    assert broker.signing_keys == BASE / "keys/broker-keys.json"
    assert broker.database_url.startswith("postgresql+psycopg://samenloop:geheim@")
    minimal = _broker(MINIMAL_BROKER)
    assert minimal.listen == "127.0.0.1:7443"
    assert minimal.database_url == f"sqlite:///{BASE}/data/broker.db"
    assert minimal.log_level == "info"


def test_home_directory_and_dot_segments():
    node = _node(_set(MINIMAL_NODE, "covenant", '"~/covenant.toml"'))
    assert node.covenant == Path.home() / "covenant.toml"
    node = _node(_set(MINIMAL_NODE, "certificate", '"../common/./node.crt"'))
    assert node.certificate == BASE.parent / "common/node.crt"


def test_api_on_loopback():
    for address in ("127.0.0.1:7444", "127.0.0.1:0", "[::1]:7444"):
        node = _node(_set(_set(NODE_TOML, "api_socket", None), "api_listen", f'"{address}"'))
        assert node.api_listen == address
        assert node.api_socket is None
        assert node.api_token == BASE / "data/api-token"  # a port needs the token too
    elsewhere = _node(_set(NODE_TOML, "api_token", '"/etc/samenloop/api-token"'))
    assert elsewhere.api_token == Path("/etc/samenloop/api-token")


def test_sqlite_url_variants():
    node = _node(_set(NODE_TOML, "database_url", '"sqlite:////abs/node.db?timeout=30"'))
    assert node.database_url == "sqlite:////abs/node.db?timeout=30"
    node = _node(_set(NODE_TOML, "database_url", '"sqlite:///rel/node.db?timeout=30"'))
    assert node.database_url == f"sqlite:///{BASE}/rel/node.db?timeout=30"
    url = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    assert _node(_set(NODE_TOML, "database_url", f'"{url}"')).database_url == url


def test_no_password_in_repr():
    broker = _broker()
    assert "geheim" not in repr(broker)
    assert "samenloop:***@db.riec.example:5432/broker" in repr(broker)
    assert config.redact_url("postgresql://u@h/db") == "postgresql://u@h/db"


# --- every rule ---------------------------------------------------------------------

NODE_CASES = [
    ("party", '"Gemeente Tilburg"', "party"),
    ("party", '"-gemeente"', "party"),
    ("party", None, "party"),
    ("party", "42", "party"),
    ("broker", '"samenloop.riec-zwb.example"', "broker"),
    ("broker", '"samenloop.riec-zwb.example:0"', "broker"),
    ("broker", '"samenloop.riec-zwb.example:70000"', "broker"),
    ("broker", '"https://broker:7443"', "broker"),
    ("broker", None, "broker"),
    ("brokers", "[]", "brokers"),
    ("brokers", '"a.example:7443"', "brokers"),
    ("brokers", '["a.example:7443", 7443]', "brokers"),
    ("brokers", '["samenloop.riec-zwb.example:7443", "b.example"]', "brokers[1]"),
    (
        "brokers",
        '["samenloop.riec-zwb.example:7443", "samenloop.riec-zwb.example:7443"]',
        "brokers",
    ),
    ("brokers", '["b.example:7443", "samenloop.riec-zwb.example:7443"]', "broker"),
    ("data_dir", None, "data_dir"),
    ("data_dir", '""', "data_dir"),
    ("data_dir", "7", "data_dir"),
    ("covenant", None, "covenant"),
    ("certificate", None, "certificate"),
    ("private_key", None, "private_key"),
    ("ca_certificate", None, "ca_certificate"),
    ("party_keys", None, "party_keys"),
    ("attribute_key", '"attribute-key.json"', "attribute_key"),  # retired: in the covenant
    ("key_share", '""', "key_share"),
    ("key_share", "true", "key_share"),
    ("api_listen", '"127.0.0.1:7444"', "api_listen"),  # together with api_socket
    ("api_socket", '"' + "s" * 120 + '.sock"', "api_socket"),
    ("database_url", '"mysql://localhost/node"', "database_url"),
    ("database_url", '"sqlite://node.db"', "database_url"),
    ("database_url", '"sqlite:///"', "database_url"),
    ("database_url", '"postgresql+psycopg://localhost"', "database_url"),
    ("database_url", '"node.db"', "database_url"),
    ("database_url", '"sqlite:///:memory:"', "database_url"),
    ("log_level", '"verbose"', "log_level"),
    ("log_level", '"INFO"', "log_level"),
    ("log_format", '"text"', "log_format"),
    ("log_format", '"JSON"', "log_format"),
    ("metrics_listen", '"9464"', "metrics_listen"),
    ("metrics_listen", '"127.0.0.1:65536"', "metrics_listen"),
    ("metrics_listen", '"http://127.0.0.1:9464/metrics"', "metrics_listen"),
    ("metrics_listen", "9464", "metrics_listen"),
    ("colour", '"oranje"', "colour"),
]

API_LISTEN_CASES = [
    '"0.0.0.0:7444"',
    '"192.168.1.10:7444"',
    '"localhost:7444"',
    '"[::]:7444"',
    '"127.0.0.1"',
    '"127.0.0.1:99999"',
]


@pytest.mark.parametrize(("key", "value", "field"), NODE_CASES)
def test_node_rules(key, value, field):
    with pytest.raises(ConfigurationError) as caught:
        _node(_set(NODE_TOML, key, value))
    assert caught.value.field == f"node.toml: {field}", str(caught.value)


def test_the_retired_attribute_key_setting_says_what_to_do():
    with pytest.raises(ConfigurationError) as caught:
        _node(_set(NODE_TOML, "attribute_key", '"attribute-key.json"'))
    assert caught.value.field == "node.toml: attribute_key"
    assert "the covenant carries the attribute key" in caught.value.message


@pytest.mark.parametrize("value", API_LISTEN_CASES)
def test_the_local_api_listens_on_loopback_only(value):
    text = _set(_set(NODE_TOML, "api_socket", None), "api_listen", value)
    with pytest.raises(ConfigurationError) as caught:
        _node(text)
    assert caught.value.field == "node.toml: api_listen"


BROKER_CASES = [
    ("listen", '"7443"', "listen"),
    ("listen", '"0.0.0.0:65536"', "listen"),
    ("listen", '"*:7443"', "listen"),
    ("signing_keys", None, "signing_keys"),
    ("private_key", None, "private_key"),
    ("database_url", '"postgresql+psycopg://db.riec.example/"', "database_url"),
    ("log_level", '"trace"', "log_level"),
    ("log_format", '"syslog"', "log_format"),
    ("metrics_listen", '"*:9464"', "metrics_listen"),
    ("metrics_listen", '"0.0.0.0"', "metrics_listen"),
    ("party", '"broker"', "party"),
]


@pytest.mark.parametrize(("key", "value", "field"), BROKER_CASES)
def test_broker_rules(key, value, field):
    with pytest.raises(ConfigurationError) as caught:
        _broker(_set(BROKER_TOML, key, value))
    assert caught.value.field == f"broker.toml: {field}", str(caught.value)


def test_broker_may_listen_on_port_zero():
    assert _broker(_set(BROKER_TOML, "listen", '"127.0.0.1:0"')).listen == "127.0.0.1:0"


def test_metrics_are_off_unless_configured():
    assert _node(MINIMAL_NODE).metrics_listen is None
    assert _broker(MINIMAL_BROKER).metrics_listen is None
    assert "metrics_listen" not in config.config_to_toml(_node(MINIMAL_NODE)).decode()
    assert _node().metrics_listen == "127.0.0.1:9464"
    assert _broker().metrics_listen == "[::]:9464"
    text = _set(BROKER_TOML, "metrics_listen", '"127.0.0.1:0"')
    assert _broker(text).metrics_listen == "127.0.0.1:0"  # tests: any free port


def test_a_broken_file():
    with pytest.raises(ConfigurationError) as caught:
        _node("party = ")
    assert caught.value.field == "node.toml"
    assert str(caught.value).startswith("node.toml: not valid TOML")


def test_constructed_configs_need_absolute_paths():
    node = _node()
    with pytest.raises(ConfigurationError) as caught:
        dataclasses.replace(node, covenant=Path("covenant.toml"))
    assert caught.value.field == "covenant"
    with pytest.raises(ConfigurationError) as caught:
        config.broker_config_from_toml(b"", source="broker.toml", base_dir=Path("relative"))
    assert caught.value.field == "base_dir"


# --- files and writing --------------------------------------------------------------


def test_load_from_a_file_resolves_against_its_directory(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "node.toml").write_text(NODE_TOML)
    node = config.load_node_config(tmp_path / "etc" / "node.toml")
    assert node.certificate == tmp_path / "etc" / "tls" / "node.crt"
    (tmp_path / "etc" / "broker.toml").write_text(MINIMAL_BROKER)
    assert config.load_broker_config(tmp_path / "etc" / "broker.toml").data_dir == (
        tmp_path / "etc" / "data"
    )
    with pytest.raises(ConfigurationError) as caught:
        config.load_node_config(tmp_path / "missing.toml")
    assert caught.value.field == str(tmp_path / "missing.toml")
    (tmp_path / "etc" / "bad.toml").write_text(_set(NODE_TOML, "broker", '"nope"'))
    with pytest.raises(ConfigurationError) as caught:
        config.load_node_config(tmp_path / "etc" / "bad.toml")
    assert caught.value.field == f"{tmp_path / 'etc' / 'bad.toml'}: broker"


@pytest.mark.parametrize("text", [NODE_TOML, BROKER_TOML], ids=["node", "broker"])
def test_canonical_files_are_written_back_byte_for_byte(text):
    parsed = _node(text) if text is NODE_TOML else _broker(text)
    assert config.config_to_toml(parsed, relative_to=BASE).decode() == text


@pytest.mark.parametrize(
    "parsed",
    [
        _node(),
        _node(MINIMAL_NODE),
        _node(_set(_set(NODE_TOML, "api_socket", None), "api_listen", '"127.0.0.1:0"')),
        _broker(),
        _broker(MINIMAL_BROKER),
    ],
    ids=["node", "minimal-node", "api-listen", "broker", "minimal-broker"],
)
def test_round_trips(parsed):
    reparse = (
        config.node_config_from_toml
        if isinstance(parsed, NodeConfig)
        else config.broker_config_from_toml
    )
    for relative_to, base in ((BASE, BASE), (None, Path("/elsewhere"))):
        data = config.config_to_toml(parsed, relative_to=relative_to)
        assert reparse(data, source="again.toml", base_dir=base) == parsed


def test_writing_relative_paths_only_inside_the_directory():
    node = _node(MINIMAL_NODE)
    text = config.config_to_toml(node, relative_to=BASE).decode()
    assert 'covenant = "covenant.toml"' in text
    assert 'data_dir = "/var/lib/samenloop"' in text
    assert 'database_url = "sqlite:////var/lib/samenloop/node.db"' in text
