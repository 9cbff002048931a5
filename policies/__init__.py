"""The covenant and the trust it defines, shared by node and broker.

Holds what both daemons need: the error hierarchy, the crypto module for
signatures and sealing, and (as the covenant lands) the covenant model and its
decision functions. These core modules do no I/O and import neither grpc nor a
database. The two adapters are the exception, by design: ``rpc`` (the one
place errors become gRPC statuses) and ``cli`` (the one place they become exit
codes); ``tests/test_layering.py`` checks every other module.
"""
