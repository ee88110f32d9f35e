"""daemon role (see docs/ARCHITECTURE.md)."""
