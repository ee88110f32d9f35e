"""Submission role: `sendmail [flags] [recipients] < message` (-bm, the default mode).

Reads the message from stdin, applies the cleanup role's header fix-ups, resolves
the recipients through the router, and commits the message to the queue durably
before it exits 0. Then, per the delivery mode: -odi delivers now, -odb (the
default) hands delivery to a detached child, -odq/-odd leave it to a queue run.

Security stance: this runs as whoever calls it (cron jobs as their owners, PHP as
www-data) and is never setuid. A caller that owns the spool (root for the system
instance, the user for a private one) writes the queue directly; anyone else
writes one file into the sticky maildrop directory, which the root-run pickup step
validates and queues (qmgr.pickup), trusting nothing in it but the file owner.
"""
import os
import pwd
import time

from .. import log as logfmt
from .. import addr as addrmod
from ..errors import (EX_CANTCREAT, EX_NOUSER, EX_OK, EX_SOFTWARE, EX_USAGE, AddressError,
                      MTAError)
from ..model import FAILED, Envelope, Recipient
from ..cleanup import headers as hdr
from ..cleanup.collect import collect
from ..queue.spool import Spool

TRUSTED_USERS = ("root", "daemon", "uucp")


class Caller:
    """Who is submitting: uid, login, full name (GECOS), home."""

    __slots__ = ("uid", "login", "gecos", "home")

    def __init__(self, uid=None):
        self.uid = os.getuid() if uid is None else uid
        try:
            pw = pwd.getpwuid(self.uid)
            self.login, self.gecos, self.home = pw.pw_name, pw.pw_gecos.split(",")[0], pw.pw_dir
        except KeyError:
            self.login, self.gecos, self.home = "uid%d" % self.uid, "", "/"


def envelope_sender(inv, caller, ident):
    """The envelope sender: -f/-r (with '<>' and '' meaning the null sender), else the caller."""
    if not inv.sender_given:
        return caller.login
    text = addrmod.strip_crlf(inv.sender).strip()
    if text in ("", "<>"):
        return ""
    a = addrmod.parse(text)
    return a.bare


def priority(size, nrcpts):
    """Sendmail's initial priority: message size + 30000 per recipient (WkRecipFact)."""
    return size + 30000 * nrcpts


def _insert_by_host(recipients, new):
    """Insert before the first recipient whose host sorts after the new one's."""
    key = new.host.lower()
    for i, r in enumerate(recipients):
        if r.state != FAILED and r.host.lower() > key:
            recipients.insert(i, new)
            return
    recipients.append(new)


def _argv_recipients(inv):
    out = []
    for word in inv.recipients:
        for item in addrmod.split_list(word):
            out.append(item)
    return out


class Submission:
    """One run of the submission role; `run()` returns the exit status."""

    def __init__(self, inv, layout, options, ident, log, stdin_fd=0, stderr=None, caller=None):
        self.inv = inv
        self.layout = layout
        self.options = options
        self.ident = ident
        self.log = log
        self.stdin_fd = stdin_fd
        self.caller = caller or Caller()
        self.status = EX_OK
        self.followups = []   # queue ids of DSNs queued by this submission
        self.quiet = False    # -bs: nothing but SMTP replies may reach stdout
        self.rcpt_params = {} # -bs: ESMTP parameters of each RCPT (NOTIFY, ORCPT)
        self.qid = None
        self.output = None    # a list: collect stdout lines instead (the service's relay)
        self.home = None      # the caller's $HOME when it is not ours (the relay)
        self.defer_background = False  # the relay: answer first, then start_background()
        self.pending = None
        self._route_ctx = None
        self.discarded = 0    # recipients the cf sent to the discard mailer

    def say(self, line):
        if self.quiet:
            return
        if self.output is not None:
            self.output.append(line)
            return
        os.write(1, (line + "\n").encode("utf-8", "surrogateescape"))

    def error_mode(self):
        return self.inv.error_mode or (self.options.get("ErrorMode") or "p")[:1]

    def delivery_mode(self):
        return self.inv.delivery_mode or (self.options.get("DeliveryMode") or "b")[:1]

    def run(self):
        inv = self.inv
        words = _argv_recipients(inv)
        if not words and not inv.read_recipients:
            self.say("Recipient names must be specified")
            self._log_unsent()
            return EX_USAGE
        try:
            sender = envelope_sender(inv, self.caller, self.ident)
        except AddressError as e:
            # Sendmail prints the complaint twice (parse, then the envelope check) and gives up.
            self.say(e.message)
            self.say(e.message)
            return EX_USAGE
        try:
            if self._trusted() and not self._filtered():
                self.route_context().rules      # a broken cf fails now, before the message is read
                return self._submit_to_queue(sender, words)
            return self._submit_to_maildrop(sender, words)
        except OSError as e:
            where = e.filename or self.layout.spool
            self.say("queueing: cannot create a queue file in %s: %s" % (
                os.path.dirname(where) if e.filename else where, e.strerror))
            self.log.err(None, "SYSERR(%s): cannot queue message: %s" % (self.caller.login, e))
            return EX_CANTCREAT

    def _log_unsent(self):
        """Sendmail still reads a message it will not queue, and logs its from= line
        (nrcpts=0). Nothing is lost: the caller keeps the message (exit 64)."""
        from ..queue.spool import make_qid
        if os.isatty(self.stdin_fd):
            return              # a person at a terminal: do not wait for a message
        now = int(time.time())
        qid = make_qid(now, os.getpid(), int.from_bytes(os.urandom(2), "big") % 3600)
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            got = collect(self.stdin_fd, null, self.inv.ignore_dots,
                          int(self.options.get("MaxHeadersLength") or 32768))
        except OSError:
            return
        finally:
            os.close(null)
        size = sum(len(h) + 1 for h in got.headers) + got.body_size
        if got.headers and got.body_size:
            size += 1
        env = Envelope(qid=qid, created=now, sender=self.caller.login, headers=got.headers,
                       relay=self.caller.login + "@localhost")
        msgid = env.header("Message-Id")
        msgid = msgid.decode("utf-8", "replace") if msgid else hdr.message_id(qid, self.ident.j, now)
        self.log.info(qid, logfmt.from_line(env, 0, msgid, relay=env.relay, size=size))

    def _trusted(self):
        """May this caller write the queue directly?"""
        q = self.layout.queue
        if os.path.isdir(q):
            return os.access(q, os.W_OK | os.X_OK)
        if self.layout.system and os.geteuid() != 0:
            return False
        try:
            os.makedirs(q, 0o700)
            return True
        except OSError:
            return False

    # ------------------------------------------------------------------------------------
    def _filtered(self):
        """Submissions go to the milters (O Milter.submission): then always by the maildrop,
        whose pickup runs them (milter.submission), trusted caller or not.  Without
        InputMailFilters (the usual case) nothing more is imported: cron and PHP pay it."""
        if not self.options.get("InputMailFilters"):
            return False
        from ..milter.submission import enabled
        return enabled(self.options)

    def _submit_to_queue(self, sender, words):
        inv = self.inv
        now = int(time.time())
        spool = Spool(self.layout.queue)
        qid, df_fd = spool.allocate(now)
        self.qid = qid
        committed = False
        try:
            max_headers = int(self.options.get("MaxHeadersLength") or 32768)
            got = collect(self.stdin_fd, df_fd, inv.ignore_dots, max_headers)
            headers = got.headers
            if got.header_overflow:
                self.log.warning(qid, "headers too large (%d max) from %s during message collect; "
                                 "the rest is kept as body" % (max_headers, self.caller.login))
            texts = list(words)
            header_lists = []
            if inv.read_recipients:
                for value in hdr.recipient_texts(headers):
                    items = addrmod.split_list(value)
                    header_lists.append(items)
                    texts.extend(items)
            headers = hdr.strip_bcc(headers)      # never shown to recipients, -t or not
            submitted = sum(len(h) + 1 for h in got.headers) + got.body_size
            if got.headers and got.body_size:
                submitted += 1                      # the blank line between them
            env = self._envelope(qid, now, sender, headers, got)
            self._add_recipients(env, words, header_lists)
            if not texts and inv.read_recipients:
                self.say("No recipient addresses found in header")
            good = [r for r in env.recipients if r.state != FAILED]
            single = env.recipients[0].address if len(env.recipients) == 1 else None
            env.headers = hdr.fix_up(
                headers, qid=qid, hostname=self.ident.j, now=now, user=self.caller.login,
                from_address=self._from_address(sender), full_name=self._full_name(),
                single_rcpt=single, auth_warning=self._auth_warning(sender))
            size = submitted
            env.size = got.body_size
            env.priority = priority(size, len(env.recipients))
            msgid = env.header("Message-Id")
            failed = [r for r in env.recipients if r.state == FAILED]
            if failed:
                self._report_failures(env, failed, spool)
            if not good:
                self.log.info(qid, logfmt.from_line(
                    env, len(env.recipients), msgid.decode("utf-8", "replace") if msgid else "",
                    relay=env.relay, size=size))
                if not env.recipients and not self.discarded:
                    self._save_dead_letter(env, spool, quiet=False)   # nobody took it
                spool.discard(qid, df_fd)
                return self._deliver(spool, None, None)
            spool.commit(env, df_fd)
            committed = True
            self._log_queued(env, size, msgid)
        except MTAError:
            if not committed:
                spool.discard(qid, df_fd)
            raise
        except BaseException:
            if not committed:
                spool.discard(qid, df_fd)
            raise
        return self._deliver(spool, env.qid, df_fd)

    def _submit_to_maildrop(self, sender, words):
        """An untrusted caller: one file into the sticky maildrop directory; the pickup step
        (run by root) checks it, resolves its recipients and queues it."""
        from ..queue import maildrop
        inv = self.inv
        now = int(time.time())
        drop = maildrop.Maildrop(self.layout.maildrop)
        if self._trusted() and not os.path.isdir(drop.path):
            os.makedirs(drop.path, exist_ok=True)   # a private instance's first filtered one
            os.chmod(drop.path, 0o1733)
        name, fd = drop.create()
        try:
            head_len = maildrop.reserve_header(fd)
            max_headers = int(self.options.get("MaxHeadersLength") or 32768)
            got = collect(self.stdin_fd, fd, inv.ignore_dots, max_headers)
            headers = got.headers
            texts = list(words)
            if inv.read_recipients:
                for value in hdr.recipient_texts(headers):
                    texts.extend(addrmod.split_list(value))
            headers = hdr.strip_bcc(headers)
            for text in texts:
                addrmod.parse(text)       # syntax errors are the caller's to hear now
            env = self._envelope("", now, sender, headers, got)
            env.recipients = [Recipient(t, t, notify=inv.notify) for t in texts]
            env.flags = "-f" if inv.sender_given else ""
            env.size = got.body_size
            drop.commit(name, fd, env, head_len)
        except AddressError as e:
            drop.abandon(name, fd)
            self.say(e.message)
            self.say("%s... User unknown" % e.address)
            return EX_NOUSER
        except BaseException:
            drop.abandon(name, fd)
            raise
        if not texts:
            self.say("No recipient addresses found in header")
        drop.poke(self.layout.pickup_socket)
        return EX_OK

    def _envelope(self, qid, now, sender, headers, got):
        inv = self.inv
        body_type = inv.body_type
        if body_type == "8BITMIME" and not got.eight_bit:
            body_type = "7BIT"
        return Envelope(
            qid=qid, created=now, sender=sender, headers=headers, uid=self.caller.uid,
            user=self.caller.login, full_name=inv.full_name or "", body_type=body_type,
            envid=inv.envid, ret=inv.ret, protocol=inv.protocol or "",
            relay=self.caller.login + "@localhost", error_mode=self.error_mode(),
            macros={"_": self.caller.login + "@localhost"})

    def _from_address(self, sender):
        """The From: address Sendmail writes: the envelope sender as given (a local user
        stays unqualified; the mailer's header rewriting qualifies it per destination)."""
        return sender

    def _full_name(self):
        if self.inv.full_name is not None:
            return addrmod.strip_crlf(self.inv.full_name)
        if self.inv.sender_given and self.inv.sender.split("@", 1)[0] != self.caller.login:
            return ""
        return self.caller.gecos

    def _auth_warning(self, sender):
        """Sendmail's X-Authentication-Warning when an untrusted user sets the sender."""
        if not self.inv.sender_given or self.caller.login in TRUSTED_USERS:
            return None
        if self.caller.uid == os.geteuid() and not self.layout.system:
            return None     # a private instance: its owner is trusted
        if sender.split("@", 1)[0] == self.caller.login:
            return None
        return "%s set sender to %s using -f" % (self.caller.login, sender or "<>")

    def _add_recipients(self, env, words, header_lists=()):
        """Resolve each recipient; failures are told at once, as Sendmail does.

        The order is Sendmail 8.17's: argv addresses in order; the addresses of each
        -t header field in reverse (sendtolist), each inserted after the last queued
        recipient with the same host (recipient() sorting by host when queueing)."""
        from ..delivery.router import resolve, to_recipient
        ctx = self.route_context(env.qid)
        seen = set()
        work = [(text, False) for text in words]
        for items in header_lists:
            work.extend((text, True) for text in reversed(items))
        for text, from_header in work:
            params = self.rcpt_params.get(text, {})
            notify = params.get("NOTIFY", self.inv.notify)
            orcpt = params.get("ORCPT", "")
            try:
                targets = resolve(text, ctx)
            except AddressError as e:
                self.say(e.message)
                self.log.info(env.qid, e.message)
                self._failed(env, Recipient(text, text, state=FAILED, status="5.1.1",
                                            diag="550 5.1.1 User unknown", mailer="local"))
                continue
            for t in targets:
                if t.key() in seen:
                    continue
                seen.add(t.key())
                if t.mailer == "discard":
                    self.discarded += 1
                    self.log.info(env.qid, "%s... discarded" % (t.address or text))
                    continue
                r = to_recipient(t, text, notify=notify, orcpt=orcpt)
                if r.state == FAILED:
                    self._failed(env, r)
                elif from_header:
                    _insert_by_host(env.recipients, r)
                else:
                    env.recipients.append(r)

    def route_context(self, qid=None):
        """The router's context for this submission (the cf is loaded once)."""
        if self._route_ctx is None:
            from ..delivery.router import RouteContext
            self._route_ctx = RouteContext(
                self.layout, self.options, self.ident,
                lambda msg: self.log.info(self.qid, msg), self.inv.no_alias)
        return self._route_ctx

    def _failed(self, env, r):
        text = r.diag.split(" ", 2)[-1] if r.diag else "User unknown"
        self.say("%s... %s" % (r.address, text))
        self.log.info(env.qid, "%s... %s" % (r.address, text))
        self.log.info(env.qid, logfmt.to_line([r.address], 0, "local" if r.mailer == "error" else r.mailer,
                                              0, text, dsn=r.status, reply=r.diag))
        env.recipients.append(r)

    def _report_failures(self, env, failed, spool):
        """Act on recipients that failed at submission (already told on stdout), per the
        error mode: -oep save to dead.letter, -oem mail a DSN back (and exit 0)."""
        self.status = EX_NOUSER
        mode = self.error_mode()
        if mode in ("m", "w", "e"):
            from ..qmgr.bounces import queue_bounce
            qid = queue_bounce(self.layout, self.options, self.ident, self.log, env, failed, spool)
            if qid:
                self.followups.append(qid)
            if mode == "m":
                self.status = EX_OK
        elif mode == "p":
            self._save_dead_letter(env, spool, quiet=False)
        for r in failed:
            r.reported = "failure"      # told now: the queue run owes no DSN for these

    def _dead_letter_path(self):
        """$HOME/dead.letter when $HOME is the caller's own directory, else the passwd home."""
        home = self.home if self.home is not None else os.environ.get("HOME")
        try:
            if home and os.path.isabs(home) and os.stat(home).st_uid == self.caller.uid:
                return os.path.join(home, "dead.letter")
        except OSError:
            pass
        return os.path.join(self.caller.home or "/", "dead.letter")

    def _save_dead_letter(self, env, spool, quiet):
        from ..delivery.deadletter import save_dead_letter
        path = self._dead_letter_path()
        try:
            headers = env.headers
            if not any(h.lower().startswith(b"received:") for h in headers):
                single = env.recipients[0].address if len(env.recipients) == 1 else None
                env.headers = hdr.fix_up(headers, qid=env.qid, hostname=self.ident.j,
                                         now=env.created, user=self.caller.login,
                                         from_address=self._from_address(env.sender),
                                         full_name=self._full_name(), single_rcpt=single)
            if self.caller.uid == os.geteuid():
                save_dead_letter(env, spool.df(env.qid), path, env.created)
            else:
                self._save_as_caller(save_dead_letter, env, spool.df(env.qid), path)
            if not quiet:
                self.say("%s... Saved message in %s" % (path, path))
        except OSError as e:
            # Nothing is lost: what cannot be saved is mailed back to the sender.
            self.say("%s... cannot save message: %s" % (path, e.strerror))
            failed = [r for r in env.recipients if r.state == FAILED]
            qid = None
            if failed and env.sender:
                from ..qmgr.bounces import queue_bounce
                qid = queue_bounce(self.layout, self.options, self.ident, self.log, env,
                                   failed, spool)
            if qid:
                self.followups.append(qid)
                self.say("%s... returned to sender" % (env.sender,))
            else:
                self.status = EX_SOFTWARE

    def _save_as_caller(self, save, env, body_path, path):
        """The service writes a relayed caller's dead.letter as that caller: a child opens
        the body (root-only, in the queue) first, then drops to the caller's uid."""
        body_fd = os.open(body_path, os.O_RDONLY)
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                pw = pwd.getpwuid(self.caller.uid)
                os.setgroups([])
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)
                save(env, body_fd, path, env.created)
                status = 0
            except BaseException:
                status = 1
            os._exit(status)
        os.close(body_fd)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise OSError(13, "Permission denied")

    def _log_queued(self, env, size, msgid):
        log = self.log
        good = [r for r in env.recipients if r.state != FAILED]
        log.info(env.qid, logfmt.from_line(env, len(env.recipients), msgid.decode("utf-8", "replace") if msgid else "",
                                         relay=env.relay, size=size))
        if self.delivery_mode() in ("q", "d"):
            for r in good:
                log.info(env.qid, logfmt.to_line([r.address], 0, r.mailer, env.priority, "queued"))

    # ------------------------------------------------------------------------------------
    def _deliver(self, spool, qid, df_fd):
        """Deliver the new message (locked by df_fd) and any DSN this submission queued,
        as the delivery mode says: now (-odi), in a detached child (-odb), or not (-odq)."""
        mode = self.delivery_mode()
        if mode in ("q", "d") or (qid is None and not self.followups):
            if df_fd is not None:
                os.close(df_fd)
            return self.status
        if mode == "i":
            from ..qmgr.queuerun import QueueRun
            run = QueueRun(self.layout, self.options, self.ident, self.log, verbose=self.inv.verbose)
            run.followups.extend(self.followups)
            if qid is not None:
                result = run.deliver_locked(spool, qid, df_fd)
                os.close(df_fd)
            else:
                run.deliver_followups(spool)
                result = EX_OK
            if self.status == EX_OK and result not in (EX_OK, None):
                return result
            return self.status
        # background: the parent reports success now; a detached child delivers.
        if self.defer_background:
            self.pending = (spool, qid, df_fd)
            return self.status
        return self._fork_delivery(spool, qid, df_fd)

    def start_background(self):
        """Fork the delivery that -odb deferred (the service calls it after answering)."""
        if self.pending is not None:
            spool, qid, df_fd = self.pending
            self.pending = None
            self._fork_delivery(spool, qid, df_fd)

    def _fork_delivery(self, spool, qid, df_fd):
        """A detached grandchild delivers; the first child exits at once and is reaped
        here (the service is long-running: no zombies)."""
        pid = os.fork()
        if pid:
            if df_fd is not None:
                os.close(df_fd)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            return self.status
        try:
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.close(null)
            if os.fork():
                os._exit(0)
            from ..qmgr.queuerun import QueueRun
            run = QueueRun(self.layout, self.options, self.ident, self.log)
            run.followups.extend(self.followups)
            if qid is not None:
                run.deliver_locked(spool, qid, df_fd)
            else:
                run.deliver_followups(spool)
        except BaseException:
            os._exit(EX_SOFTWARE)
        os._exit(0)
