"""The broker daemon: authentication, token index, matching, mailboxes and relay.

The broker sees tokens (equal or not), blinded points and ciphertext; never a
raw identifier or a detail.
"""
