"""milter role (see docs/ARCHITECTURE.md)."""
