"""The demo (``make demo``).

- ``commands``: the arguments of ``samenloop demo``.
- ``inprocess``: ``samenloop demo --core``: the protocol core at work in one process.
- ``daemons``: the full demo: a signed covenant of five partners, a broker and five nodes as
  processes on loopback, with ``areas.geojson`` (schematic areas for the report's map).
"""
