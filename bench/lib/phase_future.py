"""Phases to come: SMTP accept rate, delivery rate, memory under many connections.

Hooks only, until pysendmail has an SMTP daemon (and SMTP delivery). Each is a
class with `run(ctx) -> dict` and `report(dict) -> markdown`, like the other
phases; today run() returns a "skipped" record so `bench/run smtp` says what
is missing instead of failing. The method to follow is the one the peer
baselines used (/work/shared/bench-ref/README.md), with a private Postfix
(postfix_private.PrivatePostfix: extra_master can add an smtpd on a loopback
port, extra_main a discard transport or a Maildir) as the reference
measured in the same run:

- smtp: `smtp-source -s SESSIONS -m M -l SIZE -f a@localhost -t RCPT
  127.0.0.1:PORT` against the pysendmail daemon and the private Postfix
  smtpd, one warm-up, then rounds interleaved across servers; rate = M /
  wall seconds; queues drained (bounded wait) before every round.
- deliver: N messages queued on hold (or queue-only), then released; time
  until N messages are in the Maildir/mbox (local) or the queue is empty
  (relay to `smtp-sink` on 127.0.0.1); bounded by a timeout per run.
- mem: sum of VmRSS and Pss (/proc/PID/smaps_rollup) over the daemon's
  processes, idle and with K idle sessions that read the banner and sent
  EHLO (K = 200; sessions bounded, closed at the end).
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


class Smtp(_Pending):
    name = "smtp"
    needs = "needs the pysendmail SMTP daemon"


class Deliver(_Pending):
    name = "deliver"
    needs = "needs the daemon's queue runner and SMTP delivery"


class Mem(_Pending):
    name = "mem"
    needs = "needs the pysendmail SMTP daemon"
