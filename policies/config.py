"""The daemons' configuration files: ``broker.toml`` and ``node.toml``.

Flat TOML files of ``key = "value"`` settings: addresses, file paths, the
database URL and the log level. Relative paths (and the file of a relative
``sqlite:///`` URL) resolve against the directory of the configuration file,
so a configuration directory can be moved as a whole; ``~`` expands to the
home directory. Parsed at the boundary into frozen dataclasses whose paths are
absolute; every error is a ``ConfigurationError`` naming the file and the key
(``node.toml: broker``). ``config_to_toml`` writes either file back, with
paths relative to a directory if asked (the demo writes portable configs).

Example ``node.toml``::

    party = "gemeente-tilburg"
    broker = "broker.riec.example:7443"
    data_dir = "data"
    covenant = "covenant.json"
    certificate = "tls/node.crt"
    private_key = "tls/node.key"
    ca_certificate = "tls/ca.crt"
    party_keys = "keys/party-keys.json"
    api_socket = "data/api.sock"
    api_token = "data/api-token"
    metrics_listen = "127.0.0.1:9464"

``metrics_listen`` (broker and node) is where the daemon serves its Prometheus metrics;
unset, it serves none (docs/operations.md, "Metrics").

A node served by several broker replicas lists them all, in order of preference:
``brokers = ["broker-a.riec.example:7443", "broker-b.riec.example:7443"]`` (``broker``
may then be left out; if set it must be the first).

Sans-IO apart from the two ``load_*`` functions, which read one file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from samenloop.policies.certs import check_id
from samenloop.policies.covenant import parse_address, toml_literal
from samenloop.policies.errors import ConfigurationError, SamenloopError

DEFAULT_BROKER_LISTEN = "127.0.0.1:7443"
DEFAULT_LOG_LEVEL = "info"
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LOG_FORMAT = "console"
LOG_FORMATS = ("console", "json")
DATABASE_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg")
#: Longest path a Unix socket can bind to (``sun_path`` is 108 bytes on Linux).
MAX_SOCKET_PATH_BYTES = 107

_C = TypeVar("_C", "BrokerConfig", "NodeConfig")

#: Settings of earlier versions, with what to do instead.
_RETIRED = {
    "attribute_key": "no longer used: the covenant carries the attribute key, sealed to each "
    "party; remove this line (and the attribute-key.json file)",
}


@dataclass(frozen=True, slots=True, repr=False)
class BrokerConfig:
    """``broker.toml``. Paths are absolute; ``database_url`` defaults to SQLite in ``data_dir``."""

    data_dir: Path
    covenant: Path
    certificate: Path
    private_key: Path
    #: The broker's ``PartyKeys`` file: its Ed25519 key signs hit notices.
    signing_keys: Path
    listen: str = DEFAULT_BROKER_LISTEN
    database_url: str = ""
    log_level: str = DEFAULT_LOG_LEVEL
    #: ``console`` (text for people) or ``json`` (one JSON object per line, for collectors).
    log_format: str = DEFAULT_LOG_FORMAT
    #: ``HOST:PORT`` of the Prometheus endpoint (``/metrics``, plain HTTP); unset: none.
    metrics_listen: str | None = None
    #: A covenant timestamp file (``covenant timestamp --out``) to start with, for a broker
    #: that starts before the timestamp job first publishes one (provisioning writes it).
    #: Taken when it is newer than the one the broker holds; optional.
    covenant_timestamp: Path | None = None

    def __post_init__(self) -> None:
        for name in ("data_dir", "covenant", "certificate", "private_key", "signing_keys"):
            _check_path(getattr(self, name), field=name)
        if self.covenant_timestamp is not None:
            _check_path(self.covenant_timestamp, field="covenant_timestamp")
        _parse_address(self.listen, field="listen", listen=True)
        _init_database_url(self, "broker.db")
        _check_log_level(self.log_level)
        _check_log_format(self.log_format)
        _check_metrics_listen(self.metrics_listen)

    def __repr__(self) -> str:
        return _repr(self)


@dataclass(frozen=True, slots=True, repr=False)
class NodeConfig:
    """``node.toml``. Paths are absolute.

    The local API listens on a Unix socket (``api_socket``, by default
    ``<data_dir>/api.sock``) or on a loopback address (``api_listen``,
    ``127.0.0.1:PORT``), never on another interface. Either way every call
    carries the token in ``api_token`` (by default ``<data_dir>/api-token``,
    0600, made by the node at its first start). ``key_share`` is set only
    when the covenant names this node's party as a key holder.
    """

    party: str
    broker: str
    data_dir: Path
    covenant: Path
    certificate: Path
    private_key: Path
    ca_certificate: Path
    party_keys: Path
    key_share: Path | None = None
    api_socket: Path | None = None
    api_listen: str | None = None
    api_token: Path | None = None
    database_url: str = ""
    log_level: str = DEFAULT_LOG_LEVEL
    #: ``console`` (text for people) or ``json`` (one JSON object per line, for collectors).
    log_format: str = DEFAULT_LOG_FORMAT
    #: Every broker replica the node may dial, in order of preference (``broker`` first);
    #: on ``UNAVAILABLE`` the uplink moves on to the next. ``(broker,)`` when not set.
    brokers: tuple[str, ...] = ()
    #: ``HOST:PORT`` of the Prometheus endpoint (``/metrics``, plain HTTP); unset: none.
    metrics_listen: str | None = None
    #: Processes that tokenise (and, on a key holder, evaluate) in parallel,
    #: ``MIN_WORKERS``..``MAX_WORKERS``; unset: one per core the node may run on.
    workers: int | None = None
    #: The least score (bits) of a probable person hit on which this node, as the owner,
    #: answers a disclosure request: it applies the higher of this and the covenant's
    #: ``[person_matching] disclosure_score``. 0: the covenant's alone.
    min_disclosure_score: float = 0.0

    def __post_init__(self) -> None:
        _wrap(check_id, self.party, field="party")
        if self.workers is not None:
            check_workers(self.workers)
        score = self.min_disclosure_score
        if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1000:
            raise ConfigurationError(
                "must be a number from 0 to 1000", field="min_disclosure_score"
            )
        _parse_address(self.broker, field="broker", listen=False)
        brokers = tuple(self.brokers) or (self.broker,)
        for index, address in enumerate(brokers):
            _parse_address(address, field=f"brokers[{index}]", listen=False)
        if brokers[0] != self.broker:
            raise ConfigurationError(
                "broker must be the first of brokers (or leave it out)", field="broker"
            )
        if len(set(brokers)) != len(brokers):
            raise ConfigurationError("an address is listed twice", field="brokers")
        object.__setattr__(self, "brokers", brokers)
        for name in (
            "data_dir",
            "covenant",
            "certificate",
            "private_key",
            "ca_certificate",
            "party_keys",
        ):
            _check_path(getattr(self, name), field=name)
        if self.key_share is not None:
            _check_path(self.key_share, field="key_share")
        if self.api_socket is not None and self.api_listen is not None:
            raise ConfigurationError("set api_socket or api_listen, not both", field="api_listen")
        if self.api_listen is not None:
            host, _ = _parse_address(self.api_listen, field="api_listen", listen=True)
            if not _is_loopback(host):
                raise ConfigurationError(
                    "the local API listens on a loopback address only (127.0.0.1:PORT)",
                    field="api_listen",
                )
        else:
            socket = self.api_socket if self.api_socket is not None else self.data_dir / "api.sock"
            _check_path(socket, field="api_socket")
            if len(os.fsencode(socket)) > MAX_SOCKET_PATH_BYTES:
                raise ConfigurationError(
                    f"a Unix socket path must be at most {MAX_SOCKET_PATH_BYTES} bytes",
                    field="api_socket",
                )
            object.__setattr__(self, "api_socket", socket)
        token = self.api_token if self.api_token is not None else self.data_dir / "api-token"
        _check_path(token, field="api_token")
        object.__setattr__(self, "api_token", token)
        _init_database_url(self, "node.db")
        _check_log_level(self.log_level)
        _check_log_format(self.log_format)
        _check_metrics_listen(self.metrics_listen)

    def __repr__(self) -> str:
        return _repr(self)


# --- reading ------------------------------------------------------------------------


def load_broker_config(path: Path) -> BrokerConfig:
    """Read and parse ``broker.toml``; relative paths resolve against its directory."""
    path = Path(path).expanduser().absolute()
    return broker_config_from_toml(_read(path), source=str(path), base_dir=path.parent)


def load_node_config(path: Path) -> NodeConfig:
    """Read and parse ``node.toml``; relative paths resolve against its directory."""
    path = Path(path).expanduser().absolute()
    return node_config_from_toml(_read(path), source=str(path), base_dir=path.parent)


def load_config(path: Path) -> BrokerConfig | NodeConfig:
    """Read either file, telling them apart by ``party`` (which only ``node.toml`` has):
    for tools, such as ``samenloop audit``, that work with a node's or the broker's data."""
    path = Path(path).expanduser().absolute()
    data = _read(path)
    settings = _Settings(data, source=str(path), base_dir=path.parent)
    if "party" in settings.doc:
        return node_config_from_toml(data, source=str(path), base_dir=path.parent)
    return broker_config_from_toml(data, source=str(path), base_dir=path.parent)


def broker_config_from_toml(data: bytes, *, source: str, base_dir: Path) -> BrokerConfig:
    """Parse ``broker.toml`` bytes; ``source`` names the file in errors."""
    settings = _Settings(data, source=source, base_dir=base_dir)
    return settings.build(
        BrokerConfig,
        data_dir=settings.path("data_dir"),
        covenant=settings.path("covenant"),
        certificate=settings.path("certificate"),
        private_key=settings.path("private_key"),
        signing_keys=settings.path("signing_keys"),
        listen=settings.string("listen", DEFAULT_BROKER_LISTEN),
        database_url=settings.database_url(),
        log_level=settings.string("log_level", DEFAULT_LOG_LEVEL),
        log_format=settings.string("log_format", DEFAULT_LOG_FORMAT),
        metrics_listen=settings.optional_string("metrics_listen"),
        covenant_timestamp=settings.optional_path("covenant_timestamp"),
    )


def node_config_from_toml(data: bytes, *, source: str, base_dir: Path) -> NodeConfig:
    """Parse ``node.toml`` bytes; ``source`` names the file in errors."""
    settings = _Settings(data, source=source, base_dir=base_dir)
    brokers = settings.strings("brokers")
    return settings.build(
        NodeConfig,
        party=settings.string("party"),
        broker=brokers[0]
        if brokers and "broker" not in settings.doc
        else settings.string("broker"),
        brokers=brokers,
        data_dir=settings.path("data_dir"),
        covenant=settings.path("covenant"),
        certificate=settings.path("certificate"),
        private_key=settings.path("private_key"),
        ca_certificate=settings.path("ca_certificate"),
        party_keys=settings.path("party_keys"),
        key_share=settings.optional_path("key_share"),
        api_socket=settings.optional_path("api_socket"),
        api_listen=settings.optional_string("api_listen"),
        api_token=settings.optional_path("api_token"),
        database_url=settings.database_url(),
        log_level=settings.string("log_level", DEFAULT_LOG_LEVEL),
        log_format=settings.string("log_format", DEFAULT_LOG_FORMAT),
        metrics_listen=settings.optional_string("metrics_listen"),
        workers=settings.optional_int("workers"),
        min_disclosure_score=settings.number("min_disclosure_score", 0.0),
    )


class _Settings:
    """The flat table of one configuration file, read key by key with errors naming the key."""

    def __init__(self, data: bytes, *, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = Path(base_dir)
        if not self.base_dir.is_absolute():
            raise ConfigurationError("base directory must be absolute", field="base_dir")
        try:
            self.doc: dict[str, Any] = tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise ConfigurationError(f"not valid TOML: {error}", field=source) from error
        self.read: set[str] = set()

    def _error(self, key: str, message: str) -> ConfigurationError:
        return ConfigurationError(message, field=f"{self.source}: {key}")

    def optional_string(self, key: str) -> str | None:
        self.read.add(key)
        value = self.doc.get(key)
        if value is not None and not isinstance(value, str):
            raise self._error(key, "must be a string")
        return value

    def number(self, key: str, default: float) -> float:
        self.read.add(key)
        value = self.doc.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._error(key, "must be a number")
        return float(value)

    def string(self, key: str, default: str | None = None) -> str:
        value = self.optional_string(key)
        if value is None:
            if default is None:
                raise self._error(key, "missing")
            return default
        return value

    def optional_int(self, key: str) -> int | None:
        self.read.add(key)
        value = self.doc.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise self._error(key, "must be a whole number")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        """A list of strings; empty when the key is absent."""
        self.read.add(key)
        value = self.doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._error(key, "must be a list of strings")
        if key in self.doc and not value:
            raise self._error(key, "must not be empty")
        return tuple(value)

    def optional_path(self, key: str) -> Path | None:
        value = self.optional_string(key)
        if value is None:
            return None
        if not value or "\x00" in value:
            raise self._error(key, "must be a file path")
        return self._resolve(value)

    def path(self, key: str) -> Path:
        value = self.optional_path(key)
        if value is None:
            raise self._error(key, "missing")
        return value

    def database_url(self) -> str:
        url = self.optional_string("database_url")
        if url is None:
            return ""
        scheme, sep, rest = url.partition(":///")
        if scheme == "sqlite" and sep:
            file, query_sep, query = rest.partition("?")
            if file and file != ":memory:":
                return f"sqlite:///{self._resolve(file)}{query_sep}{query}"
        return url

    def _resolve(self, text: str) -> Path:
        return Path(os.path.normpath(self.base_dir / Path(text).expanduser()))

    def build(self, cls: type[_C], **values: Any) -> _C:
        unknown = sorted(set(self.doc) - self.read)
        if unknown:
            raise self._error(unknown[0], _RETIRED.get(unknown[0], "unknown setting"))
        try:
            return cls(**values)
        except SamenloopError as error:
            raise ConfigurationError(
                error.message, field=f"{self.source}: {error.field}", reason=error.reason
            ) from error


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigurationError(
            f"cannot read {path}: {error.strerror}", field=str(path)
        ) from error


# --- writing --------------------------------------------------------------------------


def config_to_toml(config: BrokerConfig | NodeConfig, *, relative_to: Path | None = None) -> bytes:
    """Write either configuration as TOML, in a fixed key order.

    With ``relative_to`` (the directory the file will live in), paths inside
    that directory are written relative to it, so the directory can move.
    Parsing the output with ``base_dir=relative_to`` gives an equal config.
    """
    lines = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value is None:
            continue
        if field.name == "brokers":
            if len(value) > 1:  # one address is ``broker`` alone
                listed = ", ".join(toml_literal(address) for address in value)
                lines.append(f"brokers = [{listed}]")
            continue
        if field.name == "min_disclosure_score":
            if value:  # 0 (the covenant's score alone) is the default: not written
                lines.append(f"{field.name} = {toml_literal(float(value))}")
            continue
        if isinstance(value, int):
            lines.append(f"{field.name} = {value}")
            continue
        if isinstance(value, Path):
            text = _relative(value, relative_to)
        elif field.name == "database_url":
            text = _relative_url(value, relative_to)
        else:
            text = str(value)
        lines.append(f"{field.name} = {toml_literal(text)}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _relative(path: Path, base: Path | None) -> str:
    if base is not None:
        try:
            return path.relative_to(base).as_posix() or "."
        except ValueError:
            pass
    return str(path)


def _relative_url(url: str, base: Path | None) -> str:
    scheme, sep, rest = url.partition(":///")
    if scheme != "sqlite" or not sep or base is None:
        return url
    file, query_sep, query = rest.partition("?")
    if not file.startswith("/"):
        return url
    return f"sqlite:///{_relative(Path(file), base)}{query_sep}{query}"


# --- field rules ------------------------------------------------------------------------


def _wrap(check: Callable[..., object], value: object, *, field: str) -> None:
    try:
        check(value, field=field)
    except SamenloopError as error:
        raise ConfigurationError(error.message, field=field) from error


def _parse_address(text: object, *, field: str, listen: bool) -> tuple[str, int]:
    try:
        return parse_address(text, field=field, allow_port_zero=listen)
    except SamenloopError as error:
        raise ConfigurationError(error.message, field=field) from error


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: The bounds of a node's ``workers`` setting.
MIN_WORKERS, MAX_WORKERS = 1, 256


def check_workers(value: object, *, field: str = "workers") -> int:
    """A valid ``workers`` setting (a whole number 1..256); ``ConfigurationError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError("must be a whole number", field=field)
    if not MIN_WORKERS <= value <= MAX_WORKERS:
        raise ConfigurationError(f"must be {MIN_WORKERS}..{MAX_WORKERS}, not {value}", field=field)
    return value


def default_workers() -> int:
    """The ``workers`` a node runs when the setting is unset: the cores it may run on."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(MIN_WORKERS, min(MAX_WORKERS, cores))


def _check_path(value: object, *, field: str) -> None:
    if not isinstance(value, Path) or not value.is_absolute():
        raise ConfigurationError("must be an absolute path", field=field)


def _check_log_level(value: object) -> None:
    if value not in LOG_LEVELS:
        raise ConfigurationError(f"must be one of: {', '.join(LOG_LEVELS)}", field="log_level")


def _check_log_format(value: object) -> None:
    if value not in LOG_FORMATS:
        raise ConfigurationError(f"must be one of: {', '.join(LOG_FORMATS)}", field="log_format")


def _check_metrics_listen(value: object) -> None:
    if value is not None:
        _parse_address(value, field="metrics_listen", listen=True)


def _init_database_url(config: BrokerConfig | NodeConfig, default_file: str) -> None:
    url = config.database_url
    if url == "":
        object.__setattr__(config, "database_url", f"sqlite:///{config.data_dir / default_file}")
        return
    if not isinstance(url, str):
        raise ConfigurationError("must be a string", field="database_url")
    scheme, sep, _ = url.partition("://")
    if scheme not in DATABASE_SCHEMES or not sep:
        raise ConfigurationError(
            "must be sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DATABASE",
            field="database_url",
        )
    if scheme == "sqlite":
        file = url.partition(":///")[2].partition("?")[0]
        if not url.startswith("sqlite:///") or not Path(file).is_absolute() or file == "/":
            raise ConfigurationError(
                "a SQLite URL needs an absolute file path: sqlite:////PATH/TO/FILE.db",
                field="database_url",
            )
    elif not urlsplit(url).path.strip("/"):
        raise ConfigurationError("a PostgreSQL URL needs a database name", field="database_url")


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (``None`` for PostgreSQL or in memory)."""
    scheme, sep, rest = url.partition(":///")
    file = rest.partition("?")[0]
    if scheme != "sqlite" or not sep or not file or file == ":memory:":
        return None
    return Path(file)


def private_directories(config: BrokerConfig | NodeConfig) -> list[tuple[str, Path]]:
    """The directories where a daemon keeps data, each with the setting it comes from:
    ``data_dir``, and the directories of a SQLite database and of the local API's socket
    where they lie elsewhere. Each must be the daemon's account's alone (0700)."""
    found = [("data_dir", config.data_dir)]
    database = sqlite_file(config.database_url)
    if database is not None:
        found.append(("database_url", database.parent))
    if isinstance(config, NodeConfig) and config.api_socket is not None:
        found.append(("api_socket", config.api_socket.parent))
    unique: dict[Path, str] = {}
    for setting, path in found:
        unique.setdefault(path, setting)
    return [(setting, path) for path, setting in unique.items()]


def secret_files(config: BrokerConfig | NodeConfig) -> list[tuple[str, Path]]:
    """The files of a daemon that hold secrets, each with its setting: every one must be
    the daemon's account's alone (0600)."""
    if isinstance(config, BrokerConfig):
        return [("private_key", config.private_key), ("signing_keys", config.signing_keys)]
    found = [
        ("party_keys", config.party_keys),
        ("private_key", config.private_key),
    ]
    if config.key_share is not None:
        found.append(("key_share", config.key_share))
    assert config.api_token is not None  # set by __post_init__
    found.append(("api_token", config.api_token))
    return found


def trusted_files(config: BrokerConfig | NodeConfig) -> list[tuple[str, Path]]:
    """The files a daemon takes its orders from that are not secret, each with its setting:
    the covenant it trusts and (a node's) the CA that names the broker. Others may read
    them; only the daemon's account (or root) may write them. A PostgreSQL
    ``database_url`` names no file; a SQLite one is a private directory."""
    found = [("covenant", config.covenant)]
    if isinstance(config, NodeConfig):
        found.append(("ca_certificate", config.ca_certificate))
    return found


def redact_url(url: str) -> str:
    """A database URL fit for logs: any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def _repr(config: BrokerConfig | NodeConfig) -> str:
    fields = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name == "database_url":
            value = redact_url(value)
        fields.append(f"{field.name}={value!r}")
    return f"{type(config).__name__}({', '.join(fields)})"
