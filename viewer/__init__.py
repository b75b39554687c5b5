"""gpuscope.viewer."""
