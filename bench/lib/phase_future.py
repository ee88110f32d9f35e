"""Phases to come: the delivery rate (the SMTP accept rate and memory phases are in
phase_smtp.py and phase_mem.py, their servers in mta_servers.py).

Hooks only, until pysendmail has SMTP delivery. Each is a
class with `run(ctx) -> dict` and `report(dict) -> markdown`, like the other
phases; today run() returns a "skipped" record so `bench/run deliver` says what
is missing instead of failing. The method to follow is the one the peer
baselines used (/work/shared/bench-ref/README.md), with a private Postfix
(postfix_private.PrivatePostfix: extra_master can add an smtpd on a loopback
port, extra_main a discard transport or a Maildir) as the reference
measured in the same run:

- deliver: N messages queued on hold (or queue-only), then released; time
  until N messages are in the Maildir/mbox (local) or the queue is empty
  (relay to `smtp-sink` on 127.0.0.1); bounded by a timeout per run.
"""


class _Pending:
    name = "?"
    needs = "?"

    @classmethod
    def run(cls, ctx):
        ctx.log(f"phase {cls.name}: not implemented yet ({cls.needs})")
        return {"phase": cls.name, "skipped": cls.needs}

    @classmethod
    def report(cls, data):
        return f"## {cls.name}: not measured yet ({data['skipped']})\n"


class Deliver(_Pending):
    name = "deliver"
    needs = "needs the daemon's queue runner and SMTP delivery"
