"""Moved: the hooks that lived here are real phases now.

The delivery rate (`bench/run deliver`, issue 5) is phase_deliver.py; the SMTP
accept rate and memory phases are phase_smtp.py and phase_mem.py, their servers
in mta_servers.py. Nothing imports this module any more; it stays only so an old
reference finds where things went.
"""
