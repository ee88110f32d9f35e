"""Submission role: take a message from a local caller, clean it up, commit it to the queue."""
