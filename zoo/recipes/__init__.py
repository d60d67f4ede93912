"""Training recipes that more than one plugin uses (a plugin never imports another)."""
