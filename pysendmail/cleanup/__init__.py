"""Cleanup role: read a submitted message, fix its headers, find its recipients."""
