"""The plain covenant file: a realistic example, exact round trips, every validation rule.

Table-driven: each bad value must be rejected with ``InvalidInput`` naming the
offending field by its dotted path. The attribute key: sealing to parties,
padded secretboxes, and one exception for every failure to open.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from samenloop.node.tokens import keysetup, threshold
from samenloop.policies import certs, crypto
from samenloop.policies import covenant as cv
from samenloop.policies.covenant import (
    AttributeKey,
    AttributeKeyRing,
    Covenant,
    KeyHolderSeat,
    OprfKeyEpoch,
    Party,
    Role,
)
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.errors import (
    ConfigurationError,
    DecryptionFailed,
    InvalidInput,
    MessageTooLarge,
    NotAllowed,
)
from samenloop.policies.policy import Signer, Signing, example_policy
from samenloop.v1 import common_pb2

# A regional covenant as an administrator writes it: five partners, the broker run
# for the RIEC, and the OPRF key shared 2-of-3 by police, the tax office and the RIEC.
# It is in canonical form: writing the parsed covenant gives these exact bytes.
EXAMPLE = """\
kind = "samenloop.covenant.v1"
id = "riec-zwb-2026"
version = 1
valid_from = 2026-01-05T09:00:00Z
valid_until = 2027-01-05T09:00:00Z
attribute_key_version = 1
identifier_types = [
    "bsn",
    "rsin",
    "kvk",
    "vestiging",
    "address",
    "bag",
    "kenteken",
    "iban",
    "phone",
    "email",
    "person",
]
categories = [
    "vastgoedmisbruik",
    "woonfraude",
    "witwasindicatie",
    "drugsproductie",
    "katvanger",
    "risicobranche",
    "bedrijventerrein",
    "buitengebied",
    "leegstand",
]
detail_fields = [
    "naam",
    "adres",
    "omschrijving",
    "dossier",
    "contactpersoon",
]
ca_certificate = '''
-----BEGIN CERTIFICATE-----
MIIB2DCCAX6gAwIBAgIUV63VOVQFJ0B7pTYtyppBsaCDdCcwCgYIKoZIzj0EAwIw
ODEeMBwGA1UECgwVU2FtZW5sb29wIGNvdmVuYW50IENBMRYwFAYDVQQDDA1yaWVj
LXp3Yi0yMDI2MB4XDTI2MDEwNTA4NTkwMFoXDTM2MDEwMzA5MDAwMFowODEeMBwG
A1UECgwVU2FtZW5sb29wIGNvdmVuYW50IENBMRYwFAYDVQQDDA1yaWVjLXp3Yi0y
MDI2MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEJdjoVCVDmS1EANWZxpqHMraI
v19zJy97fye+acHCrLbhPP3cQtMC+yYHiO/NzUNdJ02IEo7W7xRPsJ5VqeMUlaNm
MGQwEgYDVR0TAQH/BAgwBgEB/wIBADAOBgNVHQ8BAf8EBAMCAQYwHQYDVR0OBBYE
FPNGucerzf8vSzz6ku6vC2tjMB4IMB8GA1UdIwQYMBaAFPNGucerzf8vSzz6ku6v
C2tjMB4IMAoGCCqGSM49BAMCA0gAMEUCIQDAw9rOaQ63I0MoV20Xc55bNJTraAI2
s9T0FdsS2OYNCAIgaH1EwjlrxNGRH9EMgAN/X6fmuKrYTlXATL++cIDQaM8=
-----END CERTIFICATE-----
'''

[signing]
threshold = 2
timestamp_ed25519 = "uQXWvYtkFO7OlLzt0FtbpzttjylYo5czpZnE7RqQECI="
freshness_seconds = 86400

[[signing.signers]]
id = "beheer-riec"
name = "RIEC Zeeland-West-Brabant, covenant administrator"
ed25519 = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="

[[signing.signers]]
id = "beheer-gemeente-tilburg"
name = "Gemeente Tilburg, covenant administrator"
ed25519 = "ebVWLo/mVPlAeLES6KmLp5AfhTrmlb7X4OORC60ElmQ="

[broker]
id = "broker-riec-zwb"
address = "samenloop.riec-zwb.example:7443"
ed25519 = "McIbUEhmNdheDDnsRTQeKx1pjTawMqGNP+P++NDzbCQ="

[[parties]]
id = "gemeente-tilburg"
name = "Gemeente Tilburg"
role = "gemeente"
sealed_attribute_key = "<sealed box 1>"

[parties.keys]
ed25519 = "/d7wLwBA105J6d/mC0cjo44qa7i/CwFiuGo0os6X8/k="
x25519 = "WrDMEPOE9VFyVk+rXKMIBjm+2tS+va31oUkRvr9MbmU="

[[parties]]
id = "politie-zeeland-west-brabant"
name = "Politie Eenheid Zeeland-West-Brabant"
role = "politie"
sealed_attribute_key = "<sealed box 2>"

[parties.keys]
ed25519 = "zrdaYryXN7AiA5fyoKwYHRl/Vcf682h60cwr0EyB/EU="
x25519 = "4SjjhlpK8NLoiku9piHTZeF+87GJ3eJBOmRRktCvXUk="

[[parties]]
id = "belastingdienst"
name = "Belastingdienst"
role = "belastingdienst"
sealed_attribute_key = "<sealed box 3>"

[parties.keys]
ed25519 = "lp5XJCztUBqvyTHs/cAxKWEdYpOSsHXw+O+qsk34zgI="
x25519 = "SElhAHutTK1yYAOhejCdJUxgxcz389HL1OJ78cT2qVY="

[[parties]]
id = "wonenbreburg"
name = "WonenBreburg"
role = "woningcorporatie"
sealed_attribute_key = "<sealed box 4>"

[parties.keys]
ed25519 = "8FIVKDe1h3UTr3iv0eRkrHDUcPKhDUbj3utk9uTjsOI="
x25519 = "PRdlrNPBPy96sQI/eZMMBnd3pdmtNzEgNKfBzzY9fGs="

[[parties]]
id = "riec-zeeland-west-brabant"
name = "RIEC Zeeland-West-Brabant"
role = "riec"
sealed_attribute_key = "<sealed box 5>"

[parties.keys]
ed25519 = "LH89jQZ8ERtz6JjF/AFEYDmR9HgmHFFLtBidHqXihCk="
x25519 = "ydll+LwCoWCS7tdk0BbhZOG1gU5pK5lWyGJHDMpBA3Y="

[key_epoch]
epoch = 1
threshold = 2
group_public_key = "DopPuWivKcfIzczXrWtMD3qSiFs/lBkcFeMMTh8FXHE="
created_at = 2026-01-05T09:00:00Z
retire_after = 2027-01-05T09:00:00Z

[[key_epoch.holders]]
index = 1
party = "politie-zeeland-west-brabant"
commitment = "GBQ8OXCjJrqL4C+nvyg8vAWuwc+B8XzVmR5CTXoStmQ="

[[key_epoch.holders]]
index = 2
party = "belastingdienst"
commitment = "IOTbctRZsDzyZxzQOQZRvoD8snhgh3TcW8JHApum/SY="

[[key_epoch.holders]]
index = 3
party = "riec-zeeland-west-brabant"
commitment = "phbbJcXmPLMXPfEG8Xq/TXBzCtY62LeaWXY0NJEDZA0="

[[purposes]]
id = "bibob"
description = "Bibob screening of a permit applicant (Wet Bibob)"

[[purposes]]
id = "adresfraude"
description = "Tackling housing and address fraud (woon- en adresfraude)"

[[purposes]]
id = "casusvoorbereiding"
description = "Preparing a case for the RIEC case meeting"

[matching]
min_parties = 2
identifier_types = [
    "bsn",
    "rsin",
    "kvk",
    "vestiging",
    "address",
    "bag",
    "kenteken",
    "iban",
    "phone",
    "email",
    "person",
]

[[visibility]]
role = "riec"
level = "categories"
hidden_roles = []
coordinator = true

[[visibility]]
role = "liec"
level = "count"
hidden_roles = []
coordinator = true

[[visibility]]
role = "politie"
level = "categories"
hidden_roles = []
coordinator = false

[[visibility]]
role = "om"
level = "categories"
hidden_roles = []
coordinator = false

[[visibility]]
role = "fiod"
level = "categories"
hidden_roles = []
coordinator = false

[[visibility]]
role = "gemeente"
level = "categories"
hidden_roles = ["politie", "fiod", "om"]
coordinator = false

[[visibility]]
role = "belastingdienst"
level = "categories"
hidden_roles = ["politie", "fiod", "om"]
coordinator = false

[[visibility]]
role = "woningcorporatie"
level = "parties"
hidden_roles = ["politie", "fiod", "om"]
coordinator = false

[[visibility]]
role = "provincie"
level = "count"
hidden_roles = ["politie", "fiod", "om"]
coordinator = false

[[release]]
role = "gemeente"
category = "*"
purpose = "bibob"
fields = ["naam", "omschrijving"]
four_eyes = true
max_per_period = 50
period_days = 30

[[release]]
role = "gemeente"
category = "woonfraude"
purpose = "adresfraude"
fields = ["naam", "adres"]
four_eyes = false
max_per_period = 0
period_days = 30

[[release]]
role = "woningcorporatie"
category = "woonfraude"
purpose = "adresfraude"
fields = ["adres", "omschrijving"]
four_eyes = false
max_per_period = 0
period_days = 30

[[release]]
role = "riec"
category = "*"
purpose = "casusvoorbereiding"
fields = ["naam", "omschrijving", "dossier", "contactpersoon"]
four_eyes = false
max_per_period = 0
period_days = 30

[retention]
default_days = 365

[retention.categories]
"vastgoedmisbruik" = 730

[quotas]
oprf_evaluations_per_day = 1000000
disclosure_requests_per_day = 200
token_entries_per_day = 1000000
token_entries_held = 5000000
hit_notice_bytes_per_day = 268435456
envelopes_per_day = 10000
envelope_bytes_per_day = 67108864
envelope_bytes_waiting = 536870912

[picture]
viewers = ["riec"]
min_cell_count = 5
epsilon_per_period = 0.0
epsilon_per_request = 0.0
aggregator = ""
min_contributors = 2
min_cell_contributors = 1
dominance_share = 1.0
areas = []
branches = []

[cases]
coordinators = ["riec"]
"""
# Each party's sealed attribute key: 126 bytes for this covenant id (the model cannot open them).
EXAMPLE = re.sub(
    r"<sealed box (\d)>", lambda m: crypto.b64encode(bytes([int(m[1])]) * 126), EXAMPLE
)


def _edit(text: str, header: str | None, index: int, key: str, value: str | None) -> str:
    """Set (or with ``None`` delete) ``key`` in the ``index``-th section named ``header``.

    ``header`` None is the top level. A key the section lacks is added right
    after its header line.
    """
    lines = text.split("\n")
    if header is None:
        start = -1
    else:
        starts = [n for n, line in enumerate(lines) if line == header]
        start = starts[index]
    n = start + 1
    while n < len(lines) and not (header is None and lines[n].startswith("[")):
        if header is not None and lines[n].startswith("["):
            break
        if lines[n].startswith(f"{key} = "):
            if lines[n].endswith("["):  # a multi-line array: drop its items and "]" too
                end = lines.index("]", n)
                del lines[n + 1 : end + 1]
            if value is None:
                del lines[n]
            else:
                lines[n] = f"{key} = {value}"
            return "\n".join(lines)
        n += 1
    assert value is not None, f"{key} not found in {header}[{index}]"
    lines.insert(start + 1, f"{key} = {value}")
    return "\n".join(lines)


ZERO_KEY = '"' + crypto.b64encode(bytes(32)) + '"'
SHORT_KEY = '"' + crypto.b64encode(bytes(31)) + '"'
TOP, BROKER, PARTY, KEYS, EPOCH, HOLDER = (
    None,
    "[broker]",
    "[[parties]]",
    "[parties.keys]",
    "[key_epoch]",
    "[[key_epoch.holders]]",
)
SIGNING, SIGNER, MATCHING, VISIBILITY, RELEASE = (
    "[signing]",
    "[[signing.signers]]",
    "[matching]",
    "[[visibility]]",
    "[[release]]",
)
RETENTION, RETENTION_CATEGORIES, QUOTAS = "[retention]", "[retention.categories]", "[quotas]"
PICTURE, CASES = "[picture]", "[cases]"

# (section, index, key, new value or None to delete, the field the error must name)
BAD_VALUES = [
    (TOP, 0, "kind", '"samenloop.covenant.v9"', "kind"),
    (TOP, 0, "id", '"RIEC-ZWB"', "id"),
    (TOP, 0, "id", '"-riec"', "id"),
    (TOP, 0, "id", '"' + "r" * 65 + '"', "id"),
    (TOP, 0, "id", '""', "id"),
    (TOP, 0, "id", "2026", "id"),
    (TOP, 0, "id", None, "id"),
    (TOP, 0, "version", "0", "version"),
    (TOP, 0, "version", '"1"', "version"),
    (TOP, 0, "version", "true", "version"),
    (TOP, 0, "valid_until", "2026-01-05T09:00:00Z", "valid_until"),
    (TOP, 0, "valid_from", '"yesterday"', "valid_from"),
    (TOP, 0, "categories", "[]", "categories"),
    (TOP, 0, "categories", '["vastgoedmisbruik", "vastgoedmisbruik"]', "categories[1]"),
    (TOP, 0, "categories", '["Woon- en adresfraude"]', "categories[0]"),
    (TOP, 0, "identifier_types", '["bsn", "paspoort"]', "identifier_types[1]"),
    (SIGNING, 0, "threshold", "0", "signing.threshold"),
    (SIGNING, 0, "threshold", "3", "signing.threshold"),
    (SIGNING, 0, "timestamp_ed25519", None, "signing.timestamp_ed25519"),
    (SIGNING, 0, "timestamp_ed25519", SHORT_KEY, "signing.timestamp_ed25519"),
    (
        SIGNING,
        0,
        "timestamp_ed25519",
        '"A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="',
        "signing.timestamp_ed25519",
    ),
    (SIGNING, 0, "freshness_seconds", "59", "signing.freshness_seconds"),
    (SIGNING, 0, "freshness_seconds", '"1h"', "signing.freshness_seconds"),
    (SIGNER, 1, "ed25519", None, "signing.signers[1].ed25519"),
    (SIGNER, 1, "id", '"beheer-riec"', "signing.signers[1].id"),
    (MATCHING, 0, "min_parties", "1", "matching.min_parties"),
    (MATCHING, 0, "min_parties", "6", "matching.min_parties"),
    (MATCHING, 0, "identifier_types", '["bsn", "bsn"]', "matching.identifier_types[1]"),
    (VISIBILITY, 0, "level", '"everything"', "visibility[0].level"),
    (VISIBILITY, 0, "level", '"nothing"', "visibility[0].level"),
    (VISIBILITY, 1, "role", '"riec"', "visibility[1].role"),
    (VISIBILITY, 5, "hidden_roles", '["marechaussee"]', "visibility[5].hidden_roles"),
    (VISIBILITY, 5, "coordinator", '"yes"', "visibility[5].coordinator"),
    (RELEASE, 0, "purpose", '"nieuwsgierigheid"', "release[0].purpose"),
    (RELEASE, 1, "category", '"fietsendiefstal"', "release[1].category"),
    (RELEASE, 1, "fields", '["naam", "bsn"]', "release[1].fields[1]"),
    (RELEASE, 1, "fields", "[]", "release[1].fields"),
    (RELEASE, 2, "role", '"gemeente"', "release[2]"),
    (RELEASE, 0, "max_per_period", "-1", "release[0].max_per_period"),
    (RELEASE, 0, "period_days", "0", "release[0].period_days"),
    (RETENTION, 0, "default_days", "0", "retention.default_days"),
    (RETENTION_CATEGORIES, 0, '"fietsendiefstal"', "30", "retention.categories.fietsendiefstal"),
    (QUOTAS, 0, "oprf_evaluations_per_day", "0", "quotas.oprf_evaluations_per_day"),
    # 3 key holders at threshold 2: a cap of 1 leaves each holder a share of 0 for another holder
    (QUOTAS, 0, "oprf_evaluations_per_day", "1", "quotas.oprf_evaluations_per_day"),
    (QUOTAS, 0, "disclosure_requests_per_day", None, "quotas.disclosure_requests_per_day"),
    (QUOTAS, 0, "token_entries_per_day", "9999", "quotas.token_entries_per_day"),
    (QUOTAS, 0, "token_entries_held", "true", "quotas.token_entries_held"),
    (QUOTAS, 0, "token_entries_held", "1000000001", "quotas.token_entries_held"),
    (QUOTAS, 0, "hit_notice_bytes_per_day", "1048575", "quotas.hit_notice_bytes_per_day"),
    (QUOTAS, 0, "envelopes_per_day", "0", "quotas.envelopes_per_day"),
    # below two maximal envelopes: the largest envelope a node makes could never be sent
    (QUOTAS, 0, "envelope_bytes_per_day", "2097151", "quotas.envelope_bytes_per_day"),
    (QUOTAS, 0, "envelope_bytes_waiting", "1024", "quotas.envelope_bytes_waiting"),
    (PICTURE, 0, "viewers", '["marechaussee"]', "picture.viewers"),
    (PICTURE, 0, "min_cell_count", "0", "picture.min_cell_count"),
    (PICTURE, 0, "epsilon_per_period", "-1.0", "picture.epsilon_per_period"),
    (PICTURE, 0, "epsilon_per_period", '"veel"', "picture.epsilon_per_period"),
    (PICTURE, 0, "epsilon_per_request", "0.5", "picture.epsilon_per_request"),
    (PICTURE, 0, "classification", "1", "picture.classification"),
    (PICTURE, 0, "classification", '"Vertrouwelijk\\n"', "picture.classification"),
    (PICTURE, 0, "classification", '" Vertrouwelijk"', "picture.classification"),
    (CASES, 0, "coordinators", '["riec", "riec"]', "cases.coordinators[1]"),
    (CASES, 0, "coordinators", None, "cases.coordinators"),
    (TOP, 0, "attribute_key_version", "0", "attribute_key_version"),
    (TOP, 0, "attribute_key_version", "4294967296", "attribute_key_version"),
    (TOP, 0, "colour", '"oranje"', "colour"),
    (BROKER, 0, "id", '"Broker"', "broker.id"),
    (BROKER, 0, "id", '"gemeente-tilburg"', "parties[0].id"),
    (BROKER, 0, "address", '"samenloop.riec-zwb.example"', "broker.address"),
    (BROKER, 0, "address", '"samenloop.riec-zwb.example:0"', "broker.address"),
    (BROKER, 0, "address", '"samenloop.riec-zwb.example:65536"', "broker.address"),
    (BROKER, 0, "address", '"under_score.example:7443"', "broker.address"),
    (BROKER, 0, "address", '"[::1:7443"', "broker.address"),
    (BROKER, 0, "ed25519", SHORT_KEY, "broker.ed25519"),
    (BROKER, 0, "ed25519", '"not base64!"', "broker.ed25519"),
    (BROKER, 0, "ed25519", None, "broker.ed25519"),
    (PARTY, 0, "name", '""', "parties[0].name"),
    (PARTY, 0, "name", '" Gemeente Tilburg"', "parties[0].name"),
    (PARTY, 0, "name", '"Gemeente\\nTilburg"', "parties[0].name"),
    (PARTY, 1, "role", '"marechaussee"', "parties[1].role"),
    (PARTY, 1, "role", '"Politie"', "parties[1].role"),
    (PARTY, 3, "id", '"gemeente-tilburg"', "parties[3].id"),
    (PARTY, 3, "id", '"wonen breburg"', "parties[3].id"),
    (PARTY, 4, "id", None, "parties[4].id"),
    (PARTY, 0, "website", '"https://www.tilburg.nl"', "parties[0].website"),
    (KEYS, 2, "x25519", SHORT_KEY, "parties[2].keys.x25519"),
    (KEYS, 2, "x25519", ZERO_KEY, "parties[2].keys.x25519"),
    (KEYS, 2, "x25519", "42", "parties[2].keys.x25519"),
    (KEYS, 4, "ed25519", None, "parties[4].keys.ed25519"),
    (KEYS, 0, "rsa", '"AAAA"', "parties[0].keys.rsa"),
    (EPOCH, 0, "epoch", "0", "key_epoch.epoch"),
    (EPOCH, 0, "epoch", "4294967296", "key_epoch.epoch"),
    (EPOCH, 0, "threshold", "1", "key_epoch.threshold"),
    (EPOCH, 0, "threshold", "4", "key_epoch.threshold"),
    (EPOCH, 0, "group_public_key", SHORT_KEY, "key_epoch.group_public_key"),
    (EPOCH, 0, "created_at", "2026-01-05T09:00:00", "key_epoch.created_at"),
    (EPOCH, 0, "created_at", "2026-01-05", "key_epoch.created_at"),
    (EPOCH, 0, "created_at", '"2026-01-05T09:00:00Z"', "key_epoch.created_at"),
    (EPOCH, 0, "retire_after", "2026-01-05T09:00:00Z", "key_epoch.retire_after"),
    (EPOCH, 0, "retire_after", "2025-01-05T09:00:00+01:00", "key_epoch.retire_after"),
    (HOLDER, 0, "index", "0", "key_epoch.holders[0].index"),
    (HOLDER, 2, "index", "17", "key_epoch.holders[2].index"),
    (HOLDER, 1, "index", "1", "key_epoch.holders[1].index"),
    (HOLDER, 1, "party", '"gemeente-eindhoven"', "key_epoch.holders[1].party"),
    (HOLDER, 2, "party", '"belastingdienst"', "key_epoch.holders[2].party"),
    (HOLDER, 0, "party", '"Politie"', "key_epoch.holders[0].party"),
    (HOLDER, 0, "commitment", SHORT_KEY, "key_epoch.holders[0].commitment"),
    (HOLDER, 0, "commitment", None, "key_epoch.holders[0].commitment"),
]


@pytest.mark.parametrize(
    ("section", "index", "key", "value", "field"),
    BAD_VALUES,
    ids=[f"{f}={v}"[:60] for _, _, _, v, f in BAD_VALUES],
)
def test_every_bad_value_is_rejected_naming_its_field(section, index, key, value, field):
    bad = _edit(EXAMPLE, section, index, key, value)
    assert bad != EXAMPLE
    with pytest.raises(InvalidInput) as caught:
        cv.covenant_from_toml(bad.encode(), source="covenant.toml")
    assert caught.value.field == field, str(caught.value)


def _with_ca(value: str) -> bytes:
    start = EXAMPLE.index("ca_certificate = ")
    end = EXAMPLE.index("[signing]")
    return (EXAMPLE[:start] + f"ca_certificate = {value}\n\n" + EXAMPLE[end:]).encode()


def _multiline(text: str) -> str:
    return "'''\n" + text + "'''"


def _party_certificate() -> str:
    ca = certs.CertificateAuthority.create("riec-zwb-2026", now=datetime.now(UTC))
    return ca.issue_party("gemeente-tilburg", now=datetime.now(UTC)).cert_pem.decode()


EXAMPLE_CA = EXAMPLE.split("'''")[1].lstrip("\n")

BAD_CA = [
    ("text", lambda: '"not a certificate"'),
    ("bad base64", lambda: '"-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n"'),
    ("two", lambda: _multiline(EXAMPLE_CA * 2)),
    ("junk before", lambda: _multiline("hello\n" + EXAMPLE_CA)),
    ("not a CA", lambda: _multiline(_party_certificate())),
    ("a number", lambda: "42"),
]


@pytest.mark.parametrize(("name", "value"), BAD_CA, ids=[n for n, _ in BAD_CA])
def test_a_bad_ca_certificate_is_rejected(name, value):
    with pytest.raises(InvalidInput) as caught:
        cv.covenant_from_toml(_with_ca(value()), source="covenant.toml")
    assert caught.value.field == "ca_certificate"


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [
        ("[broker]", "[[parties]]", "broker"),
        ("[key_epoch]", None, "key_epoch"),
        ("\n[[key_epoch.holders]]", None, "key_epoch.holders"),
    ],
)
def test_a_missing_section_is_named(start, end, field):
    text = EXAMPLE[: EXAMPLE.index(start)] + (EXAMPLE[EXAMPLE.index(end) :] if end else "")
    with pytest.raises(InvalidInput) as caught:
        cv.covenant_from_toml(text.encode(), source="covenant.toml")
    assert caught.value.field == field


def test_no_parties_at_all():
    text = EXAMPLE.split("[[parties]]")[0] + "[key_epoch]" + EXAMPLE.split("[key_epoch]")[1]
    with pytest.raises(InvalidInput) as caught:
        cv.covenant_from_toml(text.encode(), source="covenant.toml")
    assert caught.value.field == "parties"


@pytest.mark.parametrize(
    "data", [b"id = ", b"\xff\xfe", b"[broker]\n[broker]\n"], ids=["syntax", "utf8", "dup"]
)
def test_a_broken_file_names_its_source(data):
    with pytest.raises(InvalidInput) as caught:
        cv.covenant_from_toml(data, source="riec.toml")
    assert "riec.toml" in str(caught.value)
    assert caught.value.reason == "covenant.syntax"


# --- the example ------------------------------------------------------------------


def test_example_parses_into_the_model():
    covenant = cv.covenant_from_toml(EXAMPLE.encode(), source="covenant.toml")
    assert covenant.id == "riec-zwb-2026"
    assert (covenant.version, covenant.min_parties, covenant.attribute_key_version) == (1, 2, 1)
    assert covenant.broker.id == "broker-riec-zwb"
    assert covenant.broker.address == "samenloop.riec-zwb.example:7443"
    assert [p.role for p in covenant.parties] == [
        Role.GEMEENTE,
        Role.POLITIE,
        Role.BELASTINGDIENST,
        Role.WONINGCORPORATIE,
        Role.RIEC,
    ]
    assert covenant.key_epoch.threshold == 2
    assert covenant.key_epoch.created_at == datetime(2026, 1, 5, 9, tzinfo=UTC)
    assert [s.party for s in covenant.key_epoch.holders] == [
        "politie-zeeland-west-brabant",
        "belastingdienst",
        "riec-zeeland-west-brabant",
    ]
    assert certs.load_certificate(covenant.ca_certificate, field="ca").subject.rfc4514_string()
    assert covenant.ca_certificate.startswith(b"-----BEGIN CERTIFICATE-----\n")


def test_writing_the_example_gives_its_exact_bytes():
    covenant = cv.covenant_from_toml(EXAMPLE.encode(), source="covenant.toml")
    assert cv.covenant_to_toml(covenant) == EXAMPLE.encode()
    assert cv.covenant_from_toml(cv.covenant_to_toml(covenant), source="again") == covenant


def test_a_draft_without_the_broker_s_quotas_gets_the_defaults():
    text = EXAMPLE
    for name in (
        "token_entries_per_day",
        "token_entries_held",
        "hit_notice_bytes_per_day",
        "envelopes_per_day",
        "envelope_bytes_per_day",
        "envelope_bytes_waiting",
    ):
        text = _edit(text, QUOTAS, 0, name, None)
    quotas = cv.covenant_from_toml(text.encode(), source="older draft").policy.quotas
    assert (quotas.token_entries_per_day, quotas.token_entries_held) == (1_000_000, 5_000_000)
    assert quotas.hit_notice_bytes_per_day == 256 * 2**20
    assert (quotas.envelopes_per_day, quotas.envelope_bytes_per_day) == (10_000, 64 * 2**20)
    assert quotas.envelope_bytes_waiting == 512 * 2**20


# The sections of a covenant that hold its rules (samenloop.policies.policy), as TOML keys.
POLICY_KEYS = (
    "identifier_types",
    "categories",
    "detail_fields",
    "purposes",
    "matching",
    "visibility",
    "release",
    "retention",
    "quotas",
    "picture",
    "cases",
)


def test_the_example_has_the_rules_covenant_init_starts_from():
    """The example above, the complete example in docs/covenant.md and ``example_policy()``
    (what ``covenant init`` writes) state the same rules, value for value."""
    covenant = cv.covenant_from_toml(EXAMPLE.encode(), source="covenant.toml")
    assert covenant.policy == example_policy()
    docs = (Path(__file__).parent.parent / "docs" / "covenant.md").read_text(encoding="utf-8")
    block = docs.split("## A complete example", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    documented, ours = tomllib.loads(block), tomllib.loads(EXAMPLE)
    assert {k: documented[k] for k in POLICY_KEYS} == {k: ours[k] for k in POLICY_KEYS}


def test_non_utc_offsets_and_crlf_are_normalised_to_the_same_covenant():
    covenant = cv.covenant_from_toml(EXAMPLE.encode(), source="covenant.toml")
    text = EXAMPLE.replace(
        "created_at = 2026-01-05T09:00:00Z", "created_at = 2026-01-05T10:00:00+01:00"
    )
    other = cv.covenant_from_toml(text.replace("\n", "\r\n").encode(), source="windows.toml")
    assert other == covenant
    assert cv.covenant_to_toml(other) == EXAMPLE.encode()


def test_the_key_epoch_slots_into_the_nodes_threshold_key_epoch():
    covenant = cv.covenant_from_toml(EXAMPLE.encode(), source="covenant.toml")
    epoch = covenant.key_epoch
    key_epoch = threshold.KeyEpoch(
        covenant_id=covenant.id,
        epoch=epoch.epoch,
        threshold=epoch.threshold,
        group_public_key=epoch.group_public_key,
        holders=tuple(threshold.Holder(s.index, s.party, s.commitment) for s in epoch.holders),
        created_at=epoch.created_at,
        retire_after=epoch.retire_after,
    )
    key_epoch.check_consistency()


def test_lookups():
    covenant = cv.covenant_from_toml(EXAMPLE.encode(), source="covenant.toml")
    assert covenant.party("belastingdienst").name == "Belastingdienst"
    assert covenant.is_party("gemeente-tilburg")
    assert not covenant.is_party("broker-riec-zwb")
    assert not covenant.is_party("gemeente-breda")
    assert "riec-zeeland-west-brabant" in covenant.party_ids
    with pytest.raises(NotAllowed) as caught:
        covenant.party("gemeente-breda")
    assert caught.value.field == "party"
    assert [s.index for s in covenant.holder_seats_for("belastingdienst")] == [2]
    assert covenant.holder_seats_for("gemeente-tilburg") == ()


def test_load_covenant(tmp_path):
    path = tmp_path / "covenant.toml"
    path.write_text(EXAMPLE)
    assert cv.load_covenant(path).id == "riec-zwb-2026"
    with pytest.raises(ConfigurationError):
        cv.load_covenant(tmp_path / "missing.toml")


# --- constructing a covenant in code (as the demo does) --------------------------------


NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def _covenant(parties: int = 4, holders: int = 3) -> Covenant:
    keys = [PartyKeys.generate(f"partij-{i}") for i in range(parties)]
    ids = [k.party for k in keys]
    epoch, _ = keysetup.deal(
        "test-covenant", 1, 2, [(k.party, k.public().x25519) for k in keys[:holders]], now=NOW
    )
    return Covenant(
        id="test-covenant",
        version=7,
        valid_from=NOW,
        valid_until=NOW + timedelta(days=90),
        signing=Signing(
            1,
            (Signer("beheer", "Beheer", PartyKeys.generate("s").public().ed25519),),
            PartyKeys.generate("timestamp").public().ed25519,
        ),
        policy=example_policy(),
        broker=cv.BrokerInfo("broker", "localhost:7443", PartyKeys.generate("b").public().ed25519),
        parties=cv.deal_attribute_key(
            "test-covenant",
            3,
            (
                Party(i, f'Partij {n} — \u2019s-Hertogenbosch "quoted"', list(Role)[n], k.public())
                for n, (i, k) in enumerate(zip(ids, keys, strict=True))
            ),
        ),
        key_epoch=OprfKeyEpoch(
            epoch=1,
            threshold=2,
            group_public_key=epoch.group_public_key,
            holders=tuple(KeyHolderSeat(h.index, h.party, h.commitment) for h in epoch.holders),
            created_at=NOW,
            retire_after=NOW + timedelta(days=365, microseconds=250),
        ),
        ca_certificate=certs.CertificateAuthority.create("test-covenant", now=NOW).cert_pem,
        attribute_key_version=3,
    )


def test_a_constructed_covenant_round_trips():
    covenant = _covenant()
    data = cv.covenant_to_toml(covenant)
    assert cv.covenant_from_toml(data, source="generated") == covenant
    assert cv.covenant_to_toml(cv.covenant_from_toml(data, source="generated")) == data


def test_the_picture_classification_round_trips_and_is_optional():
    covenant = _covenant()
    assert covenant.policy.picture.classification == ""
    assert b"classification" not in cv.covenant_to_toml(covenant)
    marked = dataclasses.replace(
        covenant,
        policy=dataclasses.replace(
            covenant.policy,
            picture=dataclasses.replace(
                covenant.policy.picture, classification="Departementaal vertrouwelijk"
            ),
        ),
    )
    data = cv.covenant_to_toml(marked)
    assert b'classification = "Departementaal vertrouwelijk"' in data
    assert cv.covenant_from_toml(data, source="generated") == marked


def test_construction_validates_too():
    covenant = _covenant()
    party = covenant.parties[0]
    with pytest.raises(InvalidInput) as caught:
        replace(party, role="gemeente")
    assert caught.value.field == "role"
    with pytest.raises(InvalidInput) as caught:
        replace(covenant, parties=covenant.parties[:1])
    assert caught.value.field == "parties"
    with pytest.raises(InvalidInput) as caught:
        replace(covenant, parties=(*covenant.parties, covenant.parties[1]))
    assert caught.value.field == "parties[4].id"
    twin = replace(covenant.parties[1], id="tweeling")
    with pytest.raises(InvalidInput) as caught:
        replace(covenant, parties=(*covenant.parties, twin))
    assert caught.value.field == "parties[4].keys.ed25519"
    with pytest.raises(InvalidInput) as caught:
        replace(covenant.key_epoch, created_at=datetime(2026, 1, 1))
    assert caught.value.field == "created_at"


def test_at_most_sixteen_key_holders():
    seats = tuple(KeyHolderSeat(min(i, 16), f"partij-{i}", bytes(32)) for i in range(1, 18))
    with pytest.raises(MessageTooLarge) as caught:
        OprfKeyEpoch(1, 2, bytes(32), seats, NOW, NOW + timedelta(days=1))
    assert caught.value.field == "holders"
    assert common_pb2.LIMITS_MAX_KEY_HOLDERS == 16


def test_at_most_the_limit_of_parties():
    covenant = _covenant()
    limit = common_pb2.LIMITS_MAX_PARTIES
    more = tuple(
        Party(f"extra-{i}", f"Extra {i}", Role.GEMEENTE, PartyKeys.generate(f"e{i}").public())
        for i in range(limit - len(covenant.parties))
    )
    dealt = cv.deal_attribute_key("test-covenant", 3, (*covenant.parties, *more))
    assert len(replace(covenant, parties=dealt).parties) == limit
    one_more = Party("extra-x", "Extra X", Role.GEMEENTE, PartyKeys.generate("x").public())
    too_many = cv.deal_attribute_key("test-covenant", 3, (*dealt, one_more))
    with pytest.raises(MessageTooLarge) as caught:
        replace(covenant, parties=too_many)
    assert caught.value.field == "parties"


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("broker.example.nl:7443", "broker.example.nl", 7443),
        ("127.0.0.1:1", "127.0.0.1", 1),
        ("[::1]:65535", "::1", 65535),
        ("Broker-1.Example:443", "Broker-1.Example", 443),
    ],
)
def test_addresses(text, host, port):
    assert cv.parse_address(text, field="a") == (host, port)


@pytest.mark.parametrize(
    "text",
    ["", "host", ":7443", "host:", "host:-1", "host:07443x", "::1:7443", "[nope]:1", "a b:1"],
)
def test_bad_addresses(text):
    with pytest.raises(InvalidInput) as caught:
        cv.parse_address(text, field="broker.address")
    assert caught.value.field == "broker.address"


# --- the attribute key ------------------------------------------------------------------


def _attributes(category: str) -> bytes:
    return common_pb2.MemberAttributes(category=category).SerializeToString()


def test_attributes_round_trip_and_hide_the_category_length():
    key = cv.new_attribute_key("riec-zwb-2026", 1)
    boxes = {c: cv.seal_attributes(key, _attributes(c)) for c in ("drugs", "vastgoedmisbruik", "")}
    for category, (nonce, ciphertext) in boxes.items():
        assert len(nonce) == common_pb2.LIMITS_NONCE_BYTES
        assert len(ciphertext) == 32 + 16
        plaintext = cv.open_attributes(key, nonce, ciphertext)
        parsed = common_pb2.MemberAttributes.FromString(plaintext)
        assert parsed.category == category
    nonce, ciphertext = cv.seal_attributes(key, _attributes("k" * 40))
    assert len(ciphertext) == 64 + 16


def test_attributes_of_maximum_size_and_beyond():
    key = cv.new_attribute_key("riec-zwb-2026", 1)
    nonce, ciphertext = cv.seal_attributes(key, bytes(cv.MAX_ATTRIBUTES_BYTES))
    assert cv.open_attributes(key, nonce, ciphertext) == bytes(cv.MAX_ATTRIBUTES_BYTES)
    with pytest.raises(MessageTooLarge):
        cv.seal_attributes(key, bytes(cv.MAX_ATTRIBUTES_BYTES + 1))


def _bad_boxes(key: AttributeKey) -> list[tuple[str, bytes, bytes]]:
    nonce, ciphertext = cv.seal_attributes(key, _attributes("drugs"))
    flipped = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    unpadded = crypto.secretbox_seal(key.key, b"\x00\x05drugs")
    dirty = crypto.secretbox_seal(key.key, b"\x00\x05drugs" + bytes(24) + b"\x01")
    overlong = crypto.secretbox_seal(key.key, b"\x00\x05drugs" + bytes(57))
    too_short = crypto.secretbox_seal(key.key, b"\x00\x40drugs" + bytes(25))
    return [
        ("tampered", nonce, flipped),
        ("other nonce", bytes(24), ciphertext),
        ("short nonce", nonce[:10], ciphertext),
        ("truncated", nonce, ciphertext[:-1]),
        ("not padded", *unpadded),
        ("non-zero padding", *dirty),
        ("padding beyond a block", *overlong),
        ("length beyond the end", *too_short),
    ]


def test_every_bad_box_fails_the_same_way():
    key = cv.new_attribute_key("riec-zwb-2026", 1)
    other = cv.new_attribute_key("riec-zwb-2026", 1)
    nonce, ciphertext = cv.seal_attributes(key, _attributes("drugs"))
    cases = [*_bad_boxes(key), ("other key", nonce, ciphertext)]
    for name, bad_nonce, bad_ciphertext in cases:
        opener = other if name == "other key" else key
        with pytest.raises(DecryptionFailed) as caught:
            cv.open_attributes(opener, bad_nonce, bad_ciphertext, field="entries[3].sealed")
        assert caught.value.field == "entries[3].sealed", name
        assert str(caught.value) == "entries[3].sealed: cannot open sealed message", name


def test_a_fixed_nonce_is_deterministic():
    key = AttributeKey("riec-zwb-2026", 1, bytes(range(32)))
    assert cv.seal_attributes(key, b"x", nonce=bytes(24)) == cv.seal_attributes(
        key, b"x", nonce=bytes(24)
    )


def test_the_attribute_key_is_sealed_to_each_party():
    gemeente, politie = PartyKeys.generate("gemeente"), PartyKeys.generate("politie")
    key = cv.new_attribute_key("riec-zwb-2026", 2)
    sealed = cv.seal_attribute_key_for(gemeente.public(), key)
    opened = cv.open_attribute_key(gemeente, sealed, covenant_id="riec-zwb-2026", version=2)
    assert opened.key == key.key
    assert (opened.covenant_id, opened.version) == ("riec-zwb-2026", 2)
    with pytest.raises(DecryptionFailed):
        cv.open_attribute_key(politie, sealed, covenant_id="riec-zwb-2026", version=2)
    for covenant_id, version in (("riec-zwb-2026", 1), ("riec-zwb-2027", 2)):
        with pytest.raises(InvalidInput) as caught:
            cv.open_attribute_key(gemeente, sealed, covenant_id=covenant_id, version=version)
        assert caught.value.field == "attribute_key"


def _dealt(parties: int = 3, version: int = 1) -> tuple[Covenant, list[PartyKeys]]:
    """A covenant dealing its attribute key to its parties, and the parties' keys."""
    keys = [PartyKeys.generate(f"partij-{i}") for i in range(parties)]
    epoch, _ = keysetup.deal(
        "test-covenant", 1, 2, [(k.party, k.public().x25519) for k in keys[:2]], now=NOW
    )
    covenant = Covenant(
        id="test-covenant",
        version=1,
        valid_from=NOW,
        valid_until=NOW + timedelta(days=90),
        signing=Signing(
            1,
            (Signer("beheer", "Beheer", PartyKeys.generate("s").public().ed25519),),
            PartyKeys.generate("timestamp").public().ed25519,
        ),
        policy=example_policy(),
        broker=cv.BrokerInfo("broker", "localhost:7443", PartyKeys.generate("b").public().ed25519),
        parties=cv.deal_attribute_key(
            "test-covenant",
            version,
            (Party(k.party, k.party, Role.GEMEENTE, k.public()) for k in keys),
        ),
        key_epoch=OprfKeyEpoch(
            epoch=1,
            threshold=2,
            group_public_key=epoch.group_public_key,
            holders=tuple(KeyHolderSeat(h.index, h.party, h.commitment) for h in epoch.holders),
            created_at=NOW,
            retire_after=NOW + timedelta(days=365),
        ),
        ca_certificate=certs.CertificateAuthority.create("test-covenant", now=NOW).cert_pem,
        attribute_key_version=version,
    )
    return covenant, keys


def _box(key: AttributeKey, category: str) -> tuple[bytes, bytes]:
    return cv.seal_attributes(key, _attributes(category))


def test_the_covenant_deals_one_attribute_key_sealed_to_each_party():
    covenant, keys = _dealt(version=4)
    opened = [covenant.attribute_key_for(k) for k in keys]
    assert {(k.covenant_id, k.version) for k in opened} == {("test-covenant", 4)}
    assert len({k.key for k in opened}) == 1  # one key, every party
    boxes = [p.sealed_attribute_key for p in covenant.parties]
    assert len(set(boxes)) == 3  # each sealed to its own party
    assert {len(b) for b in boxes} == {cv.sealed_attribute_key_bytes("test-covenant")}
    # The boxes round-trip through the canonical TOML.
    again = cv.covenant_from_toml(cv.covenant_to_toml(covenant), source="t")
    assert [p.sealed_attribute_key for p in again.parties] == boxes
    # Nobody else opens a party's box; a party not listed is told so.
    swapped = replace(
        covenant,
        parties=(
            replace(covenant.parties[0], sealed_attribute_key=boxes[1]),
            *covenant.parties[1:],
        ),
    )
    with pytest.raises(DecryptionFailed) as caught:
        swapped.attribute_key_for(keys[0])
    assert caught.value.field == "parties[0].sealed_attribute_key"
    with pytest.raises(NotAllowed):
        covenant.attribute_key_for(PartyKeys.generate("buitenstaander"))


def test_a_party_without_its_sealed_attribute_key_is_refused():
    covenant, _ = _dealt()
    bare = replace(covenant.parties[2], sealed_attribute_key=b"")
    with pytest.raises(InvalidInput) as caught:
        replace(covenant, parties=(*covenant.parties[:2], bare))
    assert caught.value.field == "parties[2].sealed_attribute_key"
    text = cv.covenant_to_toml(covenant).decode()
    missing = re.sub(r"sealed_attribute_key = .*\n", "", text, count=1)
    with pytest.raises(InvalidInput) as caught:
        cv.covenant_from_toml(missing.encode(), source="covenant.toml")
    assert caught.value.field == "parties[0].sealed_attribute_key"
    assert "add-party" in caught.value.message
    short = re.sub(r"(sealed_attribute_key = \")....", r"\1", text, count=1)
    with pytest.raises(InvalidInput) as caught:
        cv.covenant_from_toml(short.encode(), source="covenant.toml")
    assert caught.value.field == "parties[0].sealed_attribute_key"


def test_a_new_attribute_key_is_dealt_only_to_the_parties_listed():
    v1, keys = _dealt()
    removed = keys[2]
    v2 = cv.with_new_attribute_key(v1, v1.parties[:2], version=2)
    assert (v2.version, v2.attribute_key_version) == (2, 2)
    assert not v2.is_party(removed.party)
    new_keys = [v2.attribute_key_for(k) for k in keys[:2]]
    old_key = v1.attribute_key_for(removed)
    assert new_keys[0].key == new_keys[1].key != old_key.key
    # The removed party's old key opens nothing sealed under the new version.
    nonce, ciphertext = _box(new_keys[0], "woonfraude")
    with pytest.raises(DecryptionFailed):
        cv.open_attributes(AttributeKey("test-covenant", 2, old_key.key), nonce, ciphertext)
    # Nor does it open another party's box of the new key.
    for party in v2.parties:
        with pytest.raises(DecryptionFailed):
            cv.open_attribute_key(removed, party.sealed_attribute_key, covenant_id=v2.id, version=2)
    with pytest.raises(InvalidInput) as caught:
        cv.with_new_attribute_key(replace(v1, attribute_key_version=cv.MAX_UINT32))
    assert caught.value.field == "attribute_key_version"


def test_the_key_ring_keeps_every_version_and_seals_with_the_current_one():
    v1, keys = _dealt()
    v2 = cv.with_new_attribute_key(v1, v1.parties[:2], version=2)
    v3 = replace(v2, version=3, policy=example_policy(min_parties=2))  # same key version
    staying, removed = AttributeKeyRing(keys[0]), AttributeKeyRing(keys[2])
    for ring in (staying, removed):
        assert ring.learn(v1) is not None
    old_box = _box(staying.current(v1), "vastgoedmisbruik")
    for covenant in (v2, v3):
        staying.learn(covenant)
        assert removed.learn(covenant) is None  # dealt nothing: no longer a party
    assert staying.versions == (1, 2)
    assert removed.versions == (1,)
    current = staying.current(v3)
    assert current.version == 2
    assert current.key == v2.attribute_key_for(keys[1]).key
    new_box = _box(current, "woonfraude")
    # Old boxes open with the version they name, new ones with the new version.
    assert _category(staying.get(1), *old_box) == "vastgoedmisbruik"
    assert _category(staying.get(2), *new_box) == "woonfraude"
    assert removed.get(2) is None
    with pytest.raises(DecryptionFailed):
        cv.open_attributes(removed.get(1), *new_box)
    with pytest.raises(NotAllowed):
        removed.current(v2)  # a removed party seals nothing new
    # An update picked up lazily: current() learns a version it had not seen.
    fresh = AttributeKeyRing(keys[1])
    assert fresh.current(v3).version == 2
    assert fresh.versions == (2,)
    assert "key=" not in repr(staying)
    assert current.key.hex() not in repr(staying)


def _category(key: AttributeKey | None, nonce: bytes, ciphertext: bytes) -> str:
    assert key is not None
    plaintext = cv.open_attributes(key, nonce, ciphertext)
    return common_pb2.MemberAttributes.FromString(plaintext).category


def test_no_secret_in_any_repr():
    key = cv.new_attribute_key("riec-zwb-2026", 1)
    assert key.key.hex() not in repr(key)
    assert repr(key) == "AttributeKey(covenant_id='riec-zwb-2026', version=1, key=<redacted>)"
    assert key != AttributeKey(key.covenant_id, key.version, key.key)  # no == on secrets
    with pytest.raises(InvalidInput):
        AttributeKey("riec-zwb-2026", 1, bytes(16))
