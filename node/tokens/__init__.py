"""From identifier to token: the threshold OPRF and the key-holder role (design flow 2).

- ``oprf``: RFC 9497 OPRF, ristretto255-SHA512, on libsodium.
- ``threshold``: the covenant key split t-of-n; combining the holders' evaluations.
- ``keysetup``: dealing a key epoch to its holders (``keyholder deal|accept|show``).
- ``evaluation``: the requesting node's signed evaluation requests and their answers.
- ``holder``: the key-holder role: check, count against the quota, evaluate.
- ``derive``: the token a node submits to the broker, derived from the OPRF output.
- ``models`` and ``store``: the key holder's tables and repository: usage counters and
  the replay cache.
- ``commands``: ``samenloop keyholder``.
"""
