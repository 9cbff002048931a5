"""A partner that speaks for another partner: refused by the broker and the key holders.

The municipality, with its own certificate and keys but software of its own,
tries to pass as the police: a sealed envelope naming the police as sender,
and OPRF requests in the police's name (to spend the police's quota, or to
have its guesses evaluated under another party's name). The broker checks
every field that names the caller against the caller's certificate; the key
holders check the requester's signature themselves.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import grpc
import pytest

from samenloop.node.identifiers.normalise import parse
from samenloop.node.tokens import derive as tokens
from samenloop.node.tokens.evaluation import build_requests, new_request_id
from samenloop.node.tokens.threshold import KeyEpoch
from samenloop.policies.crypto import PartyKeys
from samenloop.v1 import broker_pb2, common_pb2, keyholder_pb2

from harness import CovenantRun


def test_an_envelope_in_another_partys_name_is_refused(covenant_run: CovenantRun) -> None:
    stub = covenant_run.broker_stub("gemeente")
    forged = common_pb2.Sealed(
        sender="politie",
        recipient="belastingdienst",
        covenant_version=covenant_run.covenant.version,
        nonce=os.urandom(24),
        ciphertext=os.urandom(200),
    )
    with pytest.raises(grpc.RpcError) as refused:
        stub.SendEnvelope(
            broker_pb2.SendEnvelopeRequest(client_message_id=os.urandom(16), envelope=forged),
            timeout=10,
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    covenant_run.assert_serving()


def test_oprf_requests_in_another_partys_name_are_not_evaluated(
    covenant_run: CovenantRun,
) -> None:
    covenant = covenant_run.covenant
    epoch = KeyEpoch.from_covenant(covenant)
    gemeente = covenant_run.party_keys("gemeente")
    # The gemeente signs with its own key but names the police as the requester ...
    posing = PartyKeys(
        party="politie", ed25519_seed=gemeente.ed25519_seed, x25519_secret=gemeente.x25519_secret
    )
    pending = tokens.start(
        tokens.TokenDomain(covenant.id, epoch.epoch), [parse("bsn", "123456782")]
    )
    responding_set = tuple(h.index for h in epoch.holders[: epoch.threshold])
    requests = build_requests(
        posing,
        covenant.id,
        epoch,
        responding_set,
        pending.blinded_elements,
        request_id=new_request_id(),
        now=datetime.now(UTC),
    )
    stub = covenant_run.broker_stub("gemeente")
    # ... which the broker refuses: the signer is not the caller.
    with pytest.raises(grpc.RpcError) as refused:
        stub.Evaluate(
            broker_pb2.EvaluateRequest(
                requests=[common_pb2.Signed.FromString(r) for r in requests.values()]
            ),
            timeout=30,
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The police's own certificate cannot help the gemeente either: signed with the
    # gemeente's key in the police's name, every holder refuses the signature.
    police_stub = covenant_run.broker_stub("politie")
    answer = police_stub.Evaluate(
        broker_pb2.EvaluateRequest(
            requests=[common_pb2.Signed.FromString(r) for r in requests.values()]
        ),
        timeout=30,
    )
    assert len(answer.replies) == len(responding_set)
    for reply in answer.replies:
        assert reply.HasField("response"), reply
        response = keyholder_pb2.EvaluationResponse.FromString(reply.response.body)
        assert response.WhichOneof("result") == "refusal"
        assert response.refusal.reason == keyholder_pb2.EVALUATION_REFUSAL_REASON_BAD_SIGNATURE
        assert not response.HasField("evaluation")
    covenant_run.assert_serving()
