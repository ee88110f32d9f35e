"""queue role (see docs/ARCHITECTURE.md)."""
