"""The demo (``make demo``).

- ``inprocess``: ``samenloop demo``: the protocol core at work in one process.
- ``daemons``: the full demo: a signed covenant of five partners, a broker and five nodes as
  processes on loopback, with ``areas.geojson`` (schematic areas for the report's map).
"""
