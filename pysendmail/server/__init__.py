"""server role (see docs/ARCHITECTURE.md)."""
