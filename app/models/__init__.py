"""The Models pane (library, details, downloads) and the first-run screen."""
