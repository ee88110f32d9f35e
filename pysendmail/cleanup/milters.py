"""The cleanup role's milter step for locally submitted mail (Postfix's cleanup runs its
non_smtpd_milters the same way): the pickup hands over each message it is queueing from
the maildrop, and what the filters decide says whether it is queued (with their changes),
waits in the maildrop, or is dropped.  See milter.submission for the session the
filters see and why submissions go through the maildrop when they are filtered.
"""
from ..milter.submission import enabled
from ..model import FAILED

__all__ = ["enabled", "filter_submission"]


def filter_submission(rules, options, ident, log, env, df, body_len, name):
    """The submission milters (milter.submission) over a message the pickup is queueing
    (env routed and fixed up, its body in the df `df`), `rules` the cf's: "queue" (go on,
    with the filters' changes applied; a REJECT fails every recipient with the filter's
    reply, so the queue run returns the message to its sender), "wait" (TEMPFAIL: the drop
    file stays for the next pickup) or "drop" (DISCARD)."""
    from ..milter import submission
    from ..milter.config import load_milters
    try:
        config = load_milters(rules, options).check()
        if not config:
            return "queue"
        outcome = submission.filter_message(config, env, df, body_len, ident.j, log)
    except Exception as e:          # a bad X line, a bug: the message waits, nothing is lost
        log.err(env.qid, "maildrop file %s: milters: %s" % (name, getattr(e, "message", e)))
        return "wait"
    if outcome.action == submission.TEMPFAIL:
        log.notice(env.qid, "maildrop file %s: Milter: tempfail%s; it waits for the next pickup"
                   % (name, ", reply=%s" % outcome.reply if outcome.reply else ""))
        return "wait"
    if outcome.action == submission.DISCARD:
        log.info(env.qid, "maildrop file %s: Milter: discarded" % name)
        return "drop"
    if outcome.action == submission.REJECT:
        from ..proto.smtp_reply import parse
        reply = (outcome.reply or "554 5.7.1 Command rejected").replace("\r\n", " ")
        status = parse(reply).enhanced or "5.7.1"
        for r in env.recipients:
            if not r.final:
                r.state, r.status, r.diag, r.mailer = FAILED, status, reply, "error"
        log.info(env.qid, "Milter: reject=%s" % reply)
    elif env.hold_reason:
        log.info(env.qid, "quarantine=%s" % env.hold_reason)
    return "queue"
