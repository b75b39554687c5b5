"""gpuscope.collector."""
