"""The subject network (issue 17): links between hit groups, seen by the coordinator.

- ``graph``: vertices, edges, ranked components and a component's timeline (sans-IO).
- ``links``: which links a node's signals make, whom it may tell, what changed, and the
  ``NetworkLinks`` message (sans-IO).
- ``models`` and ``store``: the links a node reported and the links a viewer was told of.
- ``desk``: reports links when the hit feed moves, receives them, prunes ended ones.
- ``api``: ``NetworkShow`` and ``NetworkComponents`` of the local API.
- ``commands``: ``samenloop network``.
- ``svg``: a force-directed layout and inline SVG of components, for the picture report.
"""
