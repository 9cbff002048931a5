"""Case coordination (casusregie, design flow 9): a plan of approach per hit.

- ``machine``: the sans-IO state machine driven by signed case messages.
- ``desk``: its transitions kept in the store and sealed out to the case's partners.
- ``api``: the ``Case*`` calls of the local API.
- ``models`` and ``store``: the tables and repository of cases, members, actions and
  the message log.
- ``commands``: ``samenloop case``.
"""
