"""Hit notices as a node checks them: the broker's signature first, then the notice itself.

Shared by the uplink (which verifies each notice before storing it) and the
disclosure core (which verifies the notice a requester attaches as its proof),
so that both apply exactly one rule. Sans-IO.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from samenloop.policies import crypto
from samenloop.policies.covenant import Covenant
from samenloop.policies.crypto import SignatureContext
from samenloop.policies.errors import InvalidSignature
from samenloop.v1 import broker_pb2, common_pb2

__all__ = ["verify_hit_notice"]


def verify_hit_notice(
    covenant: Covenant, party: str, signed: common_pb2.Signed
) -> broker_pb2.HitNotice:
    """Check the broker's signature over the bytes received, then parse and check the notice:
    for ``covenant`` and addressed to ``party``. ``InvalidSignature`` on any failure."""
    if signed.signer != covenant.broker.id or signed.context != SignatureContext.HIT_NOTICE.value:
        raise InvalidSignature("hit notice is not signed by the broker", field="hit_notice")
    crypto.verify(
        covenant.broker.ed25519,
        SignatureContext.HIT_NOTICE,
        signed.body,
        signed.signature,
        field="hit_notice.signature",
    )
    try:
        notice = broker_pb2.HitNotice.FromString(signed.body)
    except DecodeError as error:
        raise InvalidSignature("hit notice does not parse", field="hit_notice") from error
    if notice.covenant_id != covenant.id or notice.recipient != party:
        raise InvalidSignature("hit notice is for another covenant or party", field="hit_notice")
    return notice
