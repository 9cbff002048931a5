"""The wire format: generated code is fresh, importable, and the schema keeps its rules.

The .proto files under proto/samenloop/v1 are the one source of the wire
format; these tests make sure the committed generated code matches them and
that every message, field, enum value, service and method is documented and
named the buf way.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from samenloop.v1 import broker_pb2, common_pb2

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
PROTO_DIR = PROTO_ROOT / "samenloop" / "v1"
PROTOCOL_DOC = REPO / "docs" / "protocol.md"


def _load_generator() -> ModuleType:
    """proto/generate.py is a script, not a package module: load it by path."""
    spec = importlib.util.spec_from_file_location(
        "samenloop_proto_generate", PROTO_ROOT / "generate.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _load_generator()


@pytest.fixture(scope="module")
def descriptors() -> list[descriptor_pb2.FileDescriptorProto]:
    files = descriptor_pb2.FileDescriptorSet.FromString(generate.describe()).file
    return list(files)


# --- (a) the committed generated code is what the .proto files produce -----


def test_generated_code_is_fresh() -> None:
    problems = generate.check()
    assert not problems, (
        "generated code does not match the .proto files (run `make proto`):\n" + "\n".join(problems)
    )


def test_check_names_stale_missing_and_extra_files(tmp_path: Path) -> None:
    root = tmp_path / "proto"
    shutil.copytree(PROTO_DIR, root / "samenloop" / "v1")
    assert generate.check(root) == []

    common = root / "samenloop" / "v1" / "common.proto"
    common.write_text(
        common.read_text().replace(
            "  bytes signature = 4;\n}",
            "  bytes signature = 4;\n  // Added to make the code stale.\n  bytes extra = 5;\n}",
            1,
        )
    )
    (root / "samenloop" / "v1" / "keyholder_pb2.pyi").unlink()
    (root / "samenloop" / "v1" / "gone_pb2.py").write_text("# left over\n")

    problems = generate.check(root)
    assert "stale: samenloop/v1/common_pb2.py" in problems
    assert "stale: samenloop/v1/common_pb2.pyi" in problems
    assert "missing: samenloop/v1/keyholder_pb2.pyi" in problems
    assert "extra: samenloop/v1/gone_pb2.py" in problems
    assert not any("broker_pb2" in p for p in problems)


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = generate.generate(tmp_path / "a")
    second = generate.generate(tmp_path / "b")
    assert first == second
    for rel in first:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


# --- (b) every generated module imports ----------------------------------


def _generated_module_names() -> list[str]:
    stems = sorted(p.stem for p in PROTO_DIR.glob("*.proto"))
    return [f"samenloop.v1.{stem}{suffix}" for stem in stems for suffix in ("_pb2", "_pb2_grpc")]


def test_there_is_a_proto_file_per_part() -> None:
    stems = {p.stem for p in PROTO_DIR.glob("*.proto")}
    assert {"common", "keyholder", "broker", "node"} <= stems
    assert not (PROTO_ROOT / "__init__.py").exists(), "proto/ must not be a package"


@pytest.mark.parametrize("name", _generated_module_names())
def test_generated_module_imports(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__name__ == name


def test_services_have_stubs_and_servicers() -> None:
    from samenloop.v1 import broker_pb2_grpc, node_pb2_grpc

    assert hasattr(broker_pb2_grpc, "BrokerStub")
    assert hasattr(broker_pb2_grpc, "add_BrokerServicer_to_server")
    assert hasattr(node_pb2_grpc, "NodeApiStub")
    assert hasattr(node_pb2_grpc, "add_NodeApiServicer_to_server")


# --- (c) schema invariants -------------------------------------------------

# Field numbers of FileDescriptorProto / DescriptorProto / ... used in
# SourceCodeInfo location paths (descriptor.proto).
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MSG_FIELD, _MSG_NESTED, _MSG_ENUM, _MSG_ONEOF = 2, 3, 4, 8
_ENUM_VALUE = 2
_SERVICE_METHOD = 2


def _documented_elements(
    file: descriptor_pb2.FileDescriptorProto,
) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Every element that must carry a leading comment: (full name, location path)."""

    def enum(
        e: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], scope: str
    ) -> Iterator[tuple[str, tuple[int, ...]]]:
        yield f"{scope}.{e.name}", path
        for i, value in enumerate(e.value):
            yield f"{scope}.{e.name}.{value.name}", (*path, _ENUM_VALUE, i)

    def message(
        m: descriptor_pb2.DescriptorProto, path: tuple[int, ...], scope: str
    ) -> Iterator[tuple[str, tuple[int, ...]]]:
        name = f"{scope}.{m.name}"
        if m.options.map_entry:
            return
        yield name, path
        for i, field in enumerate(m.field):
            yield f"{name}.{field.name}", (*path, _MSG_FIELD, i)
        for i, oneof in enumerate(m.oneof_decl):
            if not oneof.name.startswith("_"):  # synthetic oneofs of proto3 `optional`
                yield f"{name}.{oneof.name}", (*path, _MSG_ONEOF, i)
        for i, nested in enumerate(m.nested_type):
            yield from message(nested, (*path, _MSG_NESTED, i), name)
        for i, nested_enum in enumerate(m.enum_type):
            yield from enum(nested_enum, (*path, _MSG_ENUM, i), name)

    scope = file.package
    for i, m in enumerate(file.message_type):
        yield from message(m, (_FILE_MESSAGE, i), scope)
    for i, e in enumerate(file.enum_type):
        yield from enum(e, (_FILE_ENUM, i), scope)
    for i, service in enumerate(file.service):
        yield f"{scope}.{service.name}", (_FILE_SERVICE, i)
        for j, method in enumerate(service.method):
            yield f"{scope}.{service.name}.{method.name}", (_FILE_SERVICE, i, _SERVICE_METHOD, j)


def test_every_element_has_a_leading_comment(
    descriptors: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    undocumented = []
    for file in descriptors:
        comments = {
            tuple(loc.path): loc.leading_comments.strip() for loc in file.source_code_info.location
        }
        for name, path in _documented_elements(file):
            if not comments.get(path):
                undocumented.append(f"{file.name}: {name}")
    assert not undocumented, "elements without a leading // comment:\n" + "\n".join(undocumented)


def test_files_are_in_package_samenloop_v1(
    descriptors: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    for file in descriptors:
        assert file.package == "samenloop.v1", file.name
        assert file.name.startswith("samenloop/v1/"), file.name
        assert file.syntax == "proto3", file.name


def _upper_snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()


def _all_enums(
    file: descriptor_pb2.FileDescriptorProto,
) -> Iterator[descriptor_pb2.EnumDescriptorProto]:
    def nested(m: descriptor_pb2.DescriptorProto) -> Iterator[descriptor_pb2.EnumDescriptorProto]:
        yield from m.enum_type
        for n in m.nested_type:
            yield from nested(n)

    yield from file.enum_type
    for m in file.message_type:
        yield from nested(m)


def _all_messages(
    file: descriptor_pb2.FileDescriptorProto,
) -> Iterator[descriptor_pb2.DescriptorProto]:
    def walk(m: descriptor_pb2.DescriptorProto) -> Iterator[descriptor_pb2.DescriptorProto]:
        yield m
        for n in m.nested_type:
            yield from walk(n)

    for m in file.message_type:
        yield from walk(m)


def test_enums_follow_buf_style(descriptors: list[descriptor_pb2.FileDescriptorProto]) -> None:
    for file in descriptors:
        for e in _all_enums(file):
            prefix = _upper_snake(e.name) + "_"
            zero = [v for v in e.value if v.number == 0]
            assert [v.name for v in zero] == [prefix + "UNSPECIFIED"], e.name
            for value in e.value:
                assert value.name.startswith(prefix), f"{e.name}.{value.name} lacks prefix {prefix}"
                assert re.fullmatch(r"[A-Z][A-Z0-9_]*", value.name), value.name


def test_names_follow_buf_style(descriptors: list[descriptor_pb2.FileDescriptorProto]) -> None:
    seen_types: set[str] = set()
    for file in descriptors:
        for m in _all_messages(file):
            if m.options.map_entry:
                continue
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]*", m.name), m.name
            for field in m.field:
                assert re.fullmatch(r"[a-z][a-z0-9_]*", field.name), f"{m.name}.{field.name}"
        for service in file.service:
            for method in service.method:
                request = method.input_type.rsplit(".", 1)[-1]
                response = method.output_type.rsplit(".", 1)[-1]
                assert request == f"{method.name}Request", f"{service.name}.{method.name}"
                assert response == f"{method.name}Response", f"{service.name}.{method.name}"
                assert request not in seen_types, f"{request} is used by two RPCs"
                assert response not in seen_types, f"{response} is used by two RPCs"
                seen_types.update((request, response))


# The limits that the issues and the design name, with their values.
EXPECTED_LIMITS = {
    "LIMITS_ID_BYTES": 16,
    "LIMITS_TOKEN_BYTES": 32,
    "LIMITS_ELEMENT_BYTES": 32,
    "LIMITS_SIGNATURE_BYTES": 64,
    "LIMITS_PROOF_BYTES": 64,
    "LIMITS_NONCE_BYTES": 24,
    "LIMITS_MAX_TOKENS_PER_BATCH": 10_000,
    "LIMITS_MAX_BLINDED_ELEMENTS_PER_REQUEST": 1_000,
    "LIMITS_MAX_ENVELOPE_BYTES": 1_048_576,
    "LIMITS_MAX_MESSAGE_BYTES": 4_194_304,
    "LIMITS_MAX_SIGNALS_PER_IMPORT_CALL": 10_000,
}


def _limits() -> dict[str, int]:
    return {v.name: v.number for v in common_pb2.Limits.DESCRIPTOR.values if v.number != 0}


def test_limits_have_the_specified_values() -> None:
    limits = _limits()
    for name, value in EXPECTED_LIMITS.items():
        assert limits.get(name) == value, name
        assert getattr(common_pb2, name) == value, name


def test_limits_match_the_protocol_document() -> None:
    documented = {}
    for line in PROTOCOL_DOC.read_text(encoding="utf-8").splitlines():
        row = re.match(r"^\|\s*`(LIMITS_[A-Z0-9_]+)`\s*\|\s*([0-9][0-9 ,_]*)\s*\|", line)
        if row:
            documented[row.group(1)] = int(re.sub(r"[ ,_]", "", row.group(2)))
    assert documented == _limits()


def test_a_full_token_batch_fits_in_one_message() -> None:
    # A maximal entry: the sealed category padded to 96 bytes plus the 16-byte MAC.
    entry = broker_pb2.TokenEntry(
        token=b"\xff" * common_pb2.LIMITS_TOKEN_BYTES,
        signal_ref=b"\xff" * common_pb2.LIMITS_ID_BYTES,
        expires_at=Timestamp(seconds=2**40, nanos=999_999_999),
        sealed_attributes=common_pb2.SecretBox(
            key_version=2**31,
            nonce=b"\xff" * common_pb2.LIMITS_NONCE_BYTES,
            ciphertext=b"\xff" * 112,
        ),
    )
    batch = broker_pb2.SubmitTokensRequest(
        client_batch_id=b"\xff" * 16,
        key_epoch=2**31,
        entries=[entry] * common_pb2.LIMITS_MAX_TOKENS_PER_BATCH,
    )
    assert batch.ByteSize() < common_pb2.LIMITS_MAX_MESSAGE_BYTES


def test_a_maximal_envelope_fits_in_one_message() -> None:
    envelope = broker_pb2.SendEnvelopeRequest(
        client_message_id=b"\xff" * 16,
        envelope=common_pb2.Sealed(
            sender="x" * common_pb2.LIMITS_MAX_PARTY_ID_BYTES,
            recipient="y" * common_pb2.LIMITS_MAX_PARTY_ID_BYTES,
            covenant_version=2**63,
            nonce=b"\xff" * common_pb2.LIMITS_NONCE_BYTES,
            ciphertext=b"\xff" * common_pb2.LIMITS_MAX_ENVELOPE_BYTES,
        ),
    )
    item = broker_pb2.MailboxItem(
        cursor=2**63, envelope=broker_pb2.RelayedEnvelope(sealed=envelope.envelope)
    )
    assert envelope.ByteSize() < common_pb2.LIMITS_MAX_MESSAGE_BYTES
    assert item.ByteSize() < common_pb2.LIMITS_MAX_MESSAGE_BYTES


def test_identifier_types_match_the_python_names() -> None:
    names = {
        v.name.removeprefix("IDENTIFIER_TYPE_").lower()
        for v in common_pb2.IdentifierType.DESCRIPTOR.values
        if v.number != 0
    }
    assert names == {
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
    }


# --- (d) round trips ---------------------------------------------------------


def test_signed_round_trip_keeps_the_body_bytes() -> None:
    notice = broker_pb2.HitNotice(
        covenant_id="riec-zuid",
        covenant_version=3,
        hit_group_id=bytes(range(16)),
        revision=2,
        kind=broker_pb2.HIT_NOTICE_KIND_GROWN,
        recipient="gemeente-tilburg",
        visibility=broker_pb2.HitVisibility(party_count=True, roles=True),
        own_signal_refs=[b"\x01" * 16],
        party_count=3,
        members=[broker_pb2.HitMember(role="woningcorporatie")],
        issued_at=Timestamp(seconds=1_790_000_000),
    )
    body = notice.SerializeToString()
    signed = common_pb2.Signed(
        body=body, signer="broker", context="hit-notice", signature=b"\x07" * 64
    )

    wire = signed.SerializeToString()
    back = common_pb2.Signed.FromString(wire)
    assert back == signed
    assert back.body == body  # verifiers check the signature over exactly these bytes
    parsed = broker_pb2.HitNotice.FromString(back.body)
    assert parsed == notice
    assert parsed.HasField("party_count")
    assert not parsed.members[0].HasField("party")  # hidden by visibility, not merely empty


def test_mailbox_item_round_trip_for_every_payload() -> None:
    signed = common_pb2.Signed(
        body=b"notice", signer="broker", context="hit-notice", signature=b"s" * 64
    )
    sealed = common_pb2.Sealed(
        sender="politie",
        recipient="riec",
        covenant_version=4,
        nonce=b"n" * 24,
        ciphertext=b"c" * 80,
    )
    covenant = common_pb2.SignedCovenant(
        body=b"covenant",
        signatures=[common_pb2.CovenantSignature(signer="riec", signature=b"x" * 64)],
    )
    items = [
        broker_pb2.MailboxItem(cursor=1, hit_notice=signed),
        broker_pb2.MailboxItem(
            cursor=2,
            envelope=broker_pb2.RelayedEnvelope(client_message_id=b"m" * 16, sealed=sealed),
        ),
        broker_pb2.MailboxItem(cursor=5, covenant_update=covenant),
    ]
    kinds = []
    for item in items:
        item.enqueued_at.FromSeconds(1_790_000_000)
        back = broker_pb2.MailboxItem.FromString(item.SerializeToString())
        assert back == item
        kinds.append(back.WhichOneof("payload"))
    assert kinds == ["hit_notice", "envelope", "covenant_update"]
    assert [i.cursor for i in items] == sorted({i.cursor for i in items})


def test_garbage_does_not_parse_as_a_mailbox_item() -> None:
    from google.protobuf.message import DecodeError

    with pytest.raises(DecodeError):
        broker_pb2.MailboxItem.FromString(b"\xff\xff\xff\xff")
