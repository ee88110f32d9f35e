"""`mailq` / `sendmail -bp`: the queue listing in Sendmail's format (and --json for scripts).

Formats from Sendmail 8.17's printqueue:
    \t\t/var/spool/mqueue (2 requests)
    -----Q-ID----- --Size-- -----Q-Time----- ------------Sender/Recipient-----------
    6AQEjQR0019689        6 Thu Nov 26 14:45 alice@example.com
                     (reason of the last failure)
    \t\t\t\t\t bob@example.org
    \t\t\t\t\t   (its own last error, when it differs from the message's)
    \t\tTotal requests: 2
"""
import os
import time

from ..queue import qfile
from ..queue.spool import Spool

from ..dates import DAYS as _DAYS, MONTHS as _MONTHS


def _qtime(created, long_form=True):
    t = time.localtime(created)
    core = "%s %2d %02d:%02d" % (_MONTHS[t.tm_mon - 1], t.tm_mday, t.tm_hour, t.tm_min)
    return "%s %s" % (_DAYS[t.tm_wday], core) if long_form else core


def _reason(diag):
    """'550 5.1.1 User unknown' -> 'User unknown' (codes stripped, as mailq shows it)."""
    parts = diag.split(" ", 2)
    if len(parts) == 3 and parts[0].isdigit() and parts[1][:1].isdigit() and "." in parts[1]:
        return parts[2]
    return diag


def load_entries(layout, filters=()):
    from ..qmgr.queuerun import matches
    spool = Spool(layout.queue)
    out = []
    for qid, state in spool.entries():
        try:
            env = spool.load(qid)
        except (FileNotFoundError, qfile.FormatError, ValueError, UnicodeDecodeError):
            continue
        if filters and not matches(env, filters):
            continue
        out.append((env, spool.body_size(qid), state))
    out.sort(key=lambda e: (e[0].priority, e[0].created, e[0].qid))
    return out


def rcpt_error(r):
    """A recipient's last error as mailq shows it ("" when none)."""
    if not r.diag or r.state == "sent":
        return ""
    reason = _reason(r.diag)
    if r.state == "deferred" and not reason.startswith("Deferred"):
        reason = "Deferred: " + reason
    return reason


def last_error(env):
    for r in env.recipients:
        err = rcpt_error(r)
        if err:
            return err
    return ""


def format_listing(layout, entries, verbose=False):
    lines = []
    n = len(entries)
    if not n:
        return "%s is empty\n\t\tTotal requests: 0\n" % layout.queue
    lines.append("\t\t%s (%d request%s)" % (layout.queue, n, "" if n == 1 else "s"))
    if verbose:
        lines.append("-----Q-ID----- --Size-- -Priority- ---Q-Time--- --------Sender/Recipient--------")
    else:
        lines.append("-----Q-ID----- --Size-- -----Q-Time----- ------------Sender/Recipient-----------")
    for env, size, state in entries:
        sender = env.sender or "<>"
        if verbose:
            lines.append("%-14s %8d %10d %s %s" % (env.qid, size, env.priority,
                                                    _qtime(env.created, False), sender))
        else:
            lines.append("%-14s %8d %s %s" % (env.qid, size, _qtime(env.created), sender))
        if env.body_type:
            lines.append("    %10.10s" % env.body_type)
        if env.hold_reason:
            lines.append("     QUARANTINE: %s" % env.hold_reason)
        err = last_error(env)
        if err:
            lines.append("                 (%s)" % err)
        prefix = "\t\t\t\t\t\t" if verbose else "\t\t\t\t\t "
        last_ctl = ""
        for r in env.recipients:
            if r.final:
                continue
            if verbose:
                # Sendmail's -v shows the controlling address (the alias a recipient came
                # from) once before the recipients it expanded to.
                ctl = r.parent.rsplit(">", 1)[-1] if r.parent else ""
                if ctl and ctl != last_ctl:
                    lines.append(prefix + "(---:%s---)" % ctl)
                last_ctl = ctl
            lines.append(prefix + r.address)
            own = rcpt_error(r)
            if own and own != err:      # recipients that fared differently say how
                lines.append(prefix + "  (%s)" % own)
    lines.append("\t\tTotal requests: %d" % n)
    return "\n".join(lines) + "\n"


def format_json(layout, entries):
    import json
    out = {"queue": layout.queue, "total": len(entries), "messages": []}
    for env, size, state in entries:
        out["messages"].append({
            "id": env.qid, "size": size, "priority": env.priority, "queued_at": env.created,
            "state": "held" if env.hold_reason else ("deferred" if env.attempts else "queued"),
            "hold_reason": env.hold_reason or None, "sender": env.sender,
            "body_type": env.body_type or None, "attempts": env.attempts,
            "next_attempt": env.next_attempt or None, "error": last_error(env) or None,
            "recipients": [{"address": r.address, "state": r.state, "mailer": r.mailer,
                            "status": r.status or None, "error": rcpt_error(r) or None}
                           for r in env.recipients if not r.final],
        })
    return json.dumps(out, indent=2) + "\n"


def main(inv, layout):
    entries = load_entries(layout, inv.queue_filters)
    text = format_json(layout, entries) if inv.json else format_listing(layout, entries, inv.verbose)
    os.write(1, text.encode("utf-8", "surrogateescape"))
    return 0
