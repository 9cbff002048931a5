"""Disclosure, the second step of a hit (design flow 5): ask, decide, approve, answer.

- ``protocol``: the sans-IO rules: requests, the owner's decision, four eyes, answers.
- ``desk``: where requests come and go: the rules' decisions kept in the store, sealed out.
- ``models`` and ``store``: its table and the repository of requests, verdicts and answers.
- ``commands``: ``samenloop disclosure``.
"""
