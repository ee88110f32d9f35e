"""delivery role (see docs/ARCHITECTURE.md)."""
