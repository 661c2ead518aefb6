"""Host-side scoring of relaxations: pure functions over structures and tables."""
