"""The node process: start-up, the uplink to the broker, the local API, the store.

- ``process``: ``build_node``: checks a partner's set-up and starts the node.
- ``uplink``: the only connection a node starts: to its broker (submit, mailbox, OPRF relay).
- ``covenant_keeper``: new covenant versions and timestamps; whether the node is fresh.
- ``api`` and ``api_token``: the local ``NodeApi`` servicer and who may call it.
- ``envelopes``: sealed envelopes, how a node's messages to another node travel.
- ``database``: what every capability's repository shares: the engine, the transaction
  helper, the mailbox cursor, the envelope outbox, the audit log.
- ``covenants``: the repository of covenant versions and timestamps.
- ``repositories``: ``Repositories``, one repository per capability over one engine;
  ``models``: the ``Base`` of every capability's tables and the shared ones;
  ``migrations``: Alembic.
- ``commands``: ``samenloop node``.
"""
