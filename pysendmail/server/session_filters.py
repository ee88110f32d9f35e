"""The answers of an SMTP session that wait for something slow besides the disk: the
inbound authentication checks (mailauth, in the worker's thread pool) and the milters
(server.milters).

A mixin of `server.session.SMTPSession`.  `_later(awaitable, finish, event)` pauses the
session (no reading: replies leave in command order) until the awaitable is done, then
sends finish(result) as the answer to `event`; finish may start the next wait instead
(checks, then milters, then the group commit) by returning None.  At the end of a
message: the checks' Authentication-Results goes on top (the forged ones claiming our
name are removed first), their refusal, if the admin asked for one, is the reply; then
the milters see the message; then it is committed.
"""
import asyncio
import os
import time

from ..proto import smtp_events as ev
from ..proto import smtp_reply as R
from ..proto.smtp_reply import Reply


class FilterAnswers:
    __slots__ = ()

    def _later(self, awaitable, finish, event):
        """Answer `event` when `awaitable` is done: finish(its result) gives the Reply (or
        None when it started another wait, as the commit). Input is only kept meanwhile."""
        self.waiting = True
        task = asyncio.ensure_future(awaitable)
        task.add_done_callback(lambda t: self._later_done(t, finish, event))
        return None

    def _later_done(self, task, finish, event):
        if self.conn is None or self.transport is None or self.transport.is_closing():
            return
        try:
            reply = finish(task.result())
        except Exception as e:      # a bug must cost this message, never the session's state
            self.w.log.err(self.log_id, "SYSERR(%s): milter: %s: %s"
                           % (self.w.user, type(e).__name__, e))
            reply = Reply(451, "4.3.0", "Temporary system error")
            if self.incoming is not None and type(event) is ev.MessageComplete:
                self.incoming.abandon()
                self.incoming = None
        if reply is not None:
            self._reply_late(event, reply)

    def _milter_refusal(self, verdict):
        """None when the command goes on (a DISCARD marks the message); else the Reply."""
        from .milters import DISCARD, reply_of
        if verdict.proceeds:
            return None
        if verdict.action == DISCARD:
            self.discard = True
            return None
        return reply_of(verdict.reply)

    def _milter_greeting(self, verdict):
        from .milters import REJECT, SHUTDOWN
        if verdict.action == SHUTDOWN:
            return Reply(421, "4.7.0", "%s closing connection" % self.w.hostname)
        greeting = self.w.greeting()
        if verdict.action == REJECT:        # Sendmail: greet 554, then refuse commands
            return Reply(554, None, greeting.text)
        return greeting                     # TEMPFAIL: MAIL will get 451 4.3.2

    def _milter_data(self, verdict):
        reply = self._milter_refusal(verdict)
        if reply is not None:
            return reply
        self.last_block = 0
        self.deadline = time.monotonic() + self.w.timeout_datablock
        return R.start_data()

    def _milter_eom(self, result, inc, env, facts, event):
        from .milters import DISCARD, reply_of
        verdict = result.verdict
        if self.incoming is not inc or inc.fd is None:
            return Reply(451, "4.3.0", "Error writing data file")
        if verdict.proceeds:
            self.milter.apply(env, inc, result.message)
            if env.recipients:
                if env.hold_reason:
                    self.w.log.info(inc.qid, "quarantine=%s" % env.hold_reason)
                return self._commit(inc, env, facts, event)
            self.w.log.info(inc.qid, "Milter: all recipients removed: discarded")
        elif verdict.action == DISCARD:
            self.w.log.info(inc.qid, "Milter: discarded")
        inc.abandon()
        self.incoming = None
        if verdict.proceeds or verdict.action == DISCARD:
            return R.accepted(inc.qid)
        return reply_of(verdict.reply)

    # -- the inbound checks -----------------------------------------------------------------
    def _run_checks(self, checks, inc):
        w, c, conn = self.w, self.client, self.conn
        args = (checks, c.addr, conn.helo or "", self.sender or "", list(inc.headers),
                os.dup(inc.fd), inc.body_size)      # its own fd: the session may end first
        return asyncio.get_running_loop().run_in_executor(w.check_executor, _check, w.inbound,
                                                          args)

    def _checked(self, outcome, inc, env, facts, event):
        from ..mailauth.results import strip_forged
        w = self.w
        if self.incoming is not inc or inc.fd is None:
            return Reply(451, "4.3.0", "Error writing data file")
        kept, removed = strip_forged(inc.headers, w.hostname)
        own = env.headers[:len(env.headers) - len(inc.headers)]
        if removed:
            w.log.notice(inc.qid, "removed %d Authentication-Results header(s) claiming %s "
                         "from %s" % (len(removed), w.hostname, self.relay_text()))
        inc.headers = kept
        env.headers = [outcome.header] + own + kept
        w.log.info(inc.qid, "auth: %s" % outcome.log)
        if outcome.reply is not None:
            code, enhanced, text = outcome.reply
            w.log.notice(inc.qid, "reject=%d %s %s" % (code, enhanced, text))
            inc.abandon()
            self.incoming = None
            return Reply(code, enhanced, text)
        if outcome.hold:
            env.hold_reason = outcome.hold
        return self._filter_or_commit(inc, env, facts, event)

    def _filter_or_commit(self, inc, env, facts, event):
        if self.milter is not None:
            return self._later(self.milter.end_of_message(inc, env),
                               lambda result: self._milter_eom(result, inc, env, facts, event),
                               event)
        return self._commit(inc, env, facts, event)


def _check(inbound, args):
    """In a pool thread: the body from the df file, then every check."""
    checks, addr, helo, sender, headers, fd, size = args
    try:
        body = os.pread(fd, size, 0) if size else b""
    finally:
        os.close(fd)
    return inbound.run(checks, addr, helo, sender, headers, body)
