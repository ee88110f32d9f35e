"""pysendmail: a Sendmail-compatible mail transfer agent.

Nothing is imported here on purpose: the `sendmail` command's start-up time is
paid by cron and PHP on every message, so each role imports only what it uses.
"""
__version__ = "0.1.0"
