"""The node's migration revisions, oldest first."""
