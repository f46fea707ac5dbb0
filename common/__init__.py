"""Helpers every layer may use (raft, node, cluster, chaos); this package imports none of them."""
