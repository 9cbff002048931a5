"""The identifiers a partner holds, each in one canonical form.

- ``normalise``: every identifier type (BSN, KvK, IBAN, address, licence plate, ...) parsed
  and normalised, so that two partners' spellings of one subject become one token.
- ``attributes``: a signal's coarse attributes for the regional picture (area, branch, month).
- ``commands``: ``samenloop identifier check|types``.
"""
