"""provenance-zoo plugin."""
