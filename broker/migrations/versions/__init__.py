"""The broker's migration revisions, oldest first."""
