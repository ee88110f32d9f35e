"""Milters for locally submitted mail (cron, PHP, mailx: `sendmail` on the command line),
when the cf says so: `O Milter.submission=True` with `O InputMailFilters`.

Role: what the filters see and do for a message that did not come by SMTP.  Under
Sendmail such a message goes from the MSP (submit.cf) over SMTP to the MTA on
127.0.0.1, and the MTA's filters see that session; so here the filters get the same
simulated session: connect from "localhost" [127.0.0.1] with {daemon_name} MTA, HELO
with this host's $j (what the MSP says), MAIL with the envelope sender and `i` (the
queue id), one RCPT per recipient, DATA, then every header (the MSP's added Date,
Message-Id, From and Received are ordinary headers to the MTA, so all are shown) and
the body.

With submission filters on, every submission goes through the maildrop, and the pickup
step (qmgr.pickup, in the service or `sendmail -q`) has the cleanup role
(cleanup.milters) call `filter_message` before it commits the queue file: a submitter never talks to a filter itself, and a filter that
is down delays the message (the drop file waits for the next pickup) instead of losing
it or letting it through unfiltered.

Outcomes (`Outcome.action`): ACCEPT (changes applied to the envelope and df, maybe a
quarantine reason), DISCARD, REJECT (the caller fails every recipient with the reply: the
queue run returns it to the sender as a DSN, as the MSP would) or TEMPFAIL.
"""
# The verdicts (milter.chain's values; not imported from there: `enabled` is called on the
# submission path, which must not pay for asyncio).
ACCEPT, CONTINUE, REJECT, TEMPFAIL, DISCARD = "accept", "continue", "reject", "tempfail", "discard"


def enabled(options):
    """Cheap test on the options alone (the submission path must not load the cf)."""
    from ..config.options import truthy         # already loaded on that path
    return bool((options.get("InputMailFilters") or "").strip()) and \
        truthy(options.get("Milter.submission") or "")


class Outcome:
    """action: ACCEPT, DISCARD, REJECT or TEMPFAIL; reply: the filter's reply text (for
    REJECT/TEMPFAIL); milter: the filter that decided."""
    __slots__ = ("action", "reply", "milter")

    def __init__(self, action, reply=None, milter=None):
        self.action, self.reply, self.milter = action, reply, milter

    def __repr__(self):
        return "Outcome(%s%s)" % (self.action, ", %r" % self.reply if self.reply else "")


def _macros(env, hostname, more=None):
    values = {"j": hostname, "_": "localhost [127.0.0.1]", "daemon_name": "MTA",
              "daemon_addr": "127.0.0.1", "if_addr": "127.0.0.1", "if_name": hostname,
              "client_addr": "127.0.0.1", "client_name": "localhost", "client_port": "0",
              "client_resolve": "OK", "s": hostname, "i": env.qid, "mail_mailer": "local",
              "mail_host": "", "mail_addr": env.sender}
    if env.sender and "@" in env.sender:
        values.update({"mail_mailer": "esmtp", "mail_host": env.sender.rsplit("@", 1)[1]})
    values.update(more or {})
    return values


def _outcome(verdict):
    if verdict.action not in (ACCEPT, REJECT, TEMPFAIL, DISCARD):      # SHUTDOWN
        return Outcome(TEMPFAIL, verdict.reply, verdict.milter)
    return Outcome(verdict.action, verdict.reply, verdict.milter)


async def _session(chain, env, body, hostname):
    from ..proto import milter_codec as mc
    try:
        steps = [lambda: chain.connect("localhost", mc.SMFIA_INET, 0, "127.0.0.1",
                                       _macros(env, hostname)),
                 lambda: chain.helo(hostname, _macros(env, hostname)),
                 lambda: chain.mail(["<%s>" % env.sender], _macros(env, hostname))]
        for step in steps:
            verdict = await step()
            if not verdict.proceeds:
                return verdict, None
        for r in env.recipients:
            if r.final:
                continue
            more = {"rcpt_mailer": r.mailer or "local", "rcpt_host": r.host or "",
                    "rcpt_addr": r.user or r.addr}
            verdict = await chain.rcpt(["<%s>" % r.addr], _macros(env, hostname, more))
            if not verdict.proceeds and verdict.action != DISCARD:
                return verdict, None
        verdict = await chain.data(_macros(env, hostname))
        if not verdict.proceeds and verdict.action != DISCARD:
            return verdict, None
        msgid = env.header("Message-Id")
        more = {"msg_id": msgid.decode("utf-8", "replace") if msgid else ""}
        from .apply import header_pair
        result = await chain.end_of_message([header_pair(h) for h in env.headers], body,
                                            _macros(env, hostname, more))
        return result.verdict, result.message
    finally:
        await chain.quit()


def filter_message(config, env, df_fd, body_size, hostname, log=None):
    """Run the filters of `config` over a locally submitted message (env with its qid,
    sender, routed recipients and fixed-up headers; its body in df_fd).  On ACCEPT the
    changes are applied to env and the df file.  Returns an Outcome."""
    import asyncio
    import os
    from .apply import apply_to_envelope
    from .chain import MilterChain
    body = os.pread(df_fd, body_size, 0) if body_size else b""
    chain = MilterChain.from_config(config, hostname=hostname,
                                    log=(lambda text: log.info(env.qid, text)) if log else None)
    verdict, message = asyncio.run(_session(chain, env, body, hostname))
    if verdict.action in (ACCEPT, CONTINUE):
        apply_to_envelope(env, message, df_fd)
        return Outcome(ACCEPT)
    return _outcome(verdict)
