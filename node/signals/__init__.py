"""A partner's signals in and its hits out (design flows 3 and 4).

- ``notices``: hit notices as a node checks them (the broker's signature, then the notice).
- ``commands``: ``samenloop signal`` and ``samenloop hits``.

- ``models`` and ``store``: the tables and repository of signals, the token outbox and
  the hit inbox and feed.
"""
