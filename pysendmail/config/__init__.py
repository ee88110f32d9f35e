"""config role (see docs/ARCHITECTURE.md)."""
