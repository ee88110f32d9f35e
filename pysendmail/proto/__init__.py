"""proto role (see docs/ARCHITECTURE.md)."""
