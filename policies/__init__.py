"""The covenant and the trust it defines, shared by node and broker.

Holds what both daemons need: the error hierarchy, the crypto module for
signatures and sealing, and (as the covenant lands) the covenant model and its
decision functions. The core modules here do no I/O.
"""
