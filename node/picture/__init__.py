"""The regional picture (integraal ondermijningsbeeld, design flow 8).

- ``arithmetic``: counting, noise and budget, combining, disclosure control (sans-IO).
- ``tau``: the exact cube's complementary suppression by τ-Argus, in a child process.
- ``shares``: secure aggregation: encode, split into additive shares, sum, decode.
- ``protocol``: the messages and decisions of asking for and answering a picture.
- ``models`` and ``store``: the tables and repository of collections, answers, budget,
  shares, sums and parts.
- ``desk``: where requests, shares and sums come and go, kept in the store.
- ``api``: ``PictureCollect`` and ``PictureShow`` of the local API.
- ``commands``: ``samenloop picture``; ``report`` and ``map``: the HTML report and its map.
"""
