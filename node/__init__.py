"""The node daemon: a partner's own signals, tokenising and the key-holder role.

Raw identifiers and details live only here. What leaves a node is blinded
points, tokens, and sealed envelopes.
"""
