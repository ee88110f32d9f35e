"""cli role (see docs/ARCHITECTURE.md)."""
