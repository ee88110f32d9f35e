"""The milters of one SMTP session: when the daemon asks them, with which macros, and what
their verdicts do to the replies and to the message that is queued.

Role: the glue between `server.session` (the asyncio driver) and `milter.chain`
(Sendmail's milter_* calls over one connection per filter, reused for every message of
the session).  `SessionMilters` is made only when `O InputMailFilters` names filters; a
session without them never imports this module.  Its coroutines run one at a time (a
lock: the session is paused while it waits, but its end, QUIT or a lost connection, may
come while a stage is under way).

Stages, as srvrsmtp.c calls them: connect (after the connection's own checks: a client
refused by check_relay or the access map is never shown to the filters), helo, MAIL
(after check_mail, with the queue id in `i`: unlike Postfix the id is known from MAIL
on), each RCPT (after check_rcpt; a refused one too, to the filters that asked for
SMFIP_RCPT_REJ, with {rcpt_mailer}=error and the refusal in {rcpt_host}/{rcpt_addr}),
DATA (before the 354), and the end of the message (headers as the client sent them:
the Received, Date and Message-Id fields the daemon adds are not sent, as Sendmail sends
only H_USER headers; then the body).  RSET and a new MAIL abort a message; QUIT ends
the filters' sessions.

The macro values are the policy's (`policy.Policy.define`: {client_addr},
{client_name}, {client_port}, _, the TLS and AUTH macros, {mail_*} and {rcpt_*} from
ruleset 0) plus j, v, i, {daemon_name}, {daemon_addr}, {daemon_port}, {if_name},
{if_addr}, {auth_ssf}, {auth_author} and {msg_id}; each filter gets the names its stage
lists (O Milter.macros.*, or its own SETSYMLIST).

`apply(env, inc, message)` turns the filters' end-of-message changes into the queued
envelope (milter.apply): header edits (the daemon's own fields stay on top), a new body (the df file is
rewritten in place before anything is committed, so a failure leaves no half-edited
message), sender and recipient changes (NOTIFY and ORCPT arguments kept), and a
quarantine reason (the message is committed as hfID: held, listed by mailq, released by
`sendmail -Q -qI<id>`).
"""
import asyncio
import os

from .. import __version__
from ..milter.chain import (ACCEPT, CONTINUE, DISCARD, REJECT, SHUTDOWN, TEMPFAIL, EomResult,
                            Message, MilterChain)
from ..milter.apply import apply_to_envelope, header_pair
from ..proto import milter_codec as mc
from ..proto import smtp_reply

__all__ = ["SessionMilters", "reply_of", "ACCEPT", "CONTINUE", "DISCARD", "REJECT",
           "SHUTDOWN", "TEMPFAIL"]


def reply_of(text):
    """A filter's or the chain's reply text ("550 5.7.1 No", several lines joined by CRLF)
    as a Reply; its enhanced code is the first line's (when every line has one).  A "%%"
    is one "%" (libmilter's smfi_setreply text is a format, as Sendmail prints it)."""
    return smtp_reply.parse(text.replace("%%", "%"))


def _args(addr_raw, params):
    """MAIL/RCPT arguments as the milter gets them: ['<addr>', 'KEY=value', ...]."""
    from ..proto.smtp_client import orcpt_param, xtext
    out = ["<%s>" % addr_raw.strip().strip("<>") if not addr_raw.startswith("<")
           else addr_raw]
    for key, value in params.items():
        if value is True or value is None:
            out.append(key)
        elif key in ("ENVID", "AUTH"):
            out.append("%s=%s" % (key, xtext(value)))
        elif key == "ORCPT":
            out.append(orcpt_param(value))
        else:
            out.append("%s=%s" % (key, value))
    return out


class SessionMilters:
    """The filters of one session.  Every stage returns a milter.chain.Verdict."""

    __slots__ = ("w", "chain", "client", "lock", "extra", "qid", "data_sent")

    def __init__(self, worker, client, sockname=None):
        self.w = worker
        self.client = client
        self.qid = None
        self.chain = MilterChain.from_config(worker.milters, log=self._log,
                                             hostname=worker.hostname)
        self.lock = asyncio.Lock()
        self.data_sent = False
        addr, port = (sockname or ("", 0))[:2]
        self.extra = {"j": worker.hostname, "v": __version__,
                      "daemon_name": client.daemon_name or "", "daemon_addr": addr,
                      "daemon_port": str(port), "if_addr": addr,
                      "if_name": worker.hostname}

    def _log(self, text):
        self.w.log.info(self.qid or "NOQUEUE", "Milter: " + text
                        if not text.startswith(("Milter", "milter")) else text)

    def values(self, more=None):
        """The macro values now: the policy's (defined for this client) and ours."""
        policy = self.w.policy
        policy.define(self.client)
        out = dict(policy.rules.macros)
        out.update(self.extra)
        if self.qid:
            out["i"] = self.qid
        if self.client.auth_type:
            out["auth_ssf"] = "0"
        if more:
            out.update(more)
        return out

    # ------------------------------------------------------------ stages

    async def connect(self):
        c = self.client
        family = mc.SMFIA_INET6 if ":" in c.addr else mc.SMFIA_INET
        async with self.lock:
            return await self.chain.connect(self.w.policy.client_name(c), family,
                                            c.port or 0, c.addr, self.values())

    async def helo(self, name):
        async with self.lock:
            return await self.chain.helo(name, self.values())

    async def mail(self, event, qid):
        """After check_mail accepted MAIL; `qid` is the new message's id."""
        self.qid = qid
        self.data_sent = False
        more = {}
        if event.params.get("AUTH"):
            more["auth_author"] = event.params["AUTH"]
        macros = self.values(more)
        if not event.addr:
            macros.update({"mail_mailer": "local", "mail_host": "", "mail_addr": ""})
        async with self.lock:
            return await self.chain.mail(_args(event.raw, event.params), macros)

    def wants_rejected(self):
        """Does a filter want the recipients the MTA refused (SMFIP_RCPT_REJ)?"""
        return any(c.negotiated is not None and c.negotiated.protocol & mc.SMFIP_RCPT_REJ
                   for c in self.chain.clients)

    async def rcpt(self, event, refusal=None):
        """After check_rcpt; refusal: its Reply when it refused the recipient."""
        more = None
        if refusal is not None:
            more = {"rcpt_mailer": "error", "rcpt_host": refusal.enhanced or
                    str(refusal.code), "rcpt_addr": " ".join(refusal.lines)}
        async with self.lock:
            return await self.chain.rcpt(_args(event.raw, event.params), self.values(more),
                                         rejected=refusal is not None)

    async def unknown(self, line):
        async with self.lock:
            return await self.chain.unknown(line, self.values())

    async def data(self):
        self.data_sent = True
        async with self.lock:
            return await self.chain.data(self.values())

    async def end_of_message(self, inc, env):
        """The headers the client sent and the body (from the df file) to every filter;
        returns the chain's EomResult (its Message carries the changes).  After BDAT the
        filters get their DATA stage here first."""
        if not self.data_sent:
            verdict = await self.data()
            if not verdict.proceeds:
                return EomResult(verdict, Message())
        headers = [header_pair(h) for h in inc.headers]
        body = os.pread(inc.fd, inc.body_size, 0) if inc.body_size else b""
        msgid = env.header("Message-Id")
        more = {"msg_id": msgid.decode("utf-8", "replace").strip() if msgid else ""}
        async with self.lock:
            return await self.chain.end_of_message(headers, body, self.values(more))

    async def abort(self):
        async with self.lock:
            await self.chain.abort()

    async def quit(self):
        async with self.lock:
            await self.chain.quit()

    # ------------------------------------------------------------ the message

    def apply(self, env, inc, message):
        """The filters' changes into env (and the df file); see milter.apply."""
        apply_to_envelope(env, message, inc.fd, own_headers=len(env.headers) - len(inc.headers))
        if "body" in message.changed:
            inc.body_size = env.size
            self._log("milter_replbody: %d bytes" % env.size)
        return env
