"""gpuscope.probes."""
