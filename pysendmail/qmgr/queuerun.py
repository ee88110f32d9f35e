"""The queue run: take due messages from the spool and hand each recipient to its agent.

Used by `sendmail -q`, by the detached child of a background submission, by -odi,
and (later) by the daemon's periodic runner. For each message: lock it (flock on
its df), load its control file, deliver every recipient that is not final,
record each outcome in the control file right after it happens (so a crash never
repeats a finished delivery; the local agent's journal covers the window inside a
delivery), send the DSNs owed, then remove the message or schedule its retry.

Recipients of remote mailers (esmtp, relay, lmtp...) go to qmgr/outbound.py, which
runs the SMTP/LMTP agent for many messages at once; the message is finished (DSNs,
removal or retry) when its last recipient has an outcome.
"""
import os
import time

from .. import log as logfmt
from ..config.options import interval_option
from ..errors import EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE
from ..model import DEFERRED, FAILED, SENT
from ..queue import qfile
from ..queue.spool import Spool
from .bounces import queue_bounce

LOCAL_MAILERS = ("local", "prog", "file")
RETRY_BASE = 300            # first retry after 5 minutes, doubling, capped at RETRY_MAX
RETRY_MAX = 4 * 3600
BATCH_MESSAGES = 256        # messages held for one sync of their Maildir deliveries
RUNNER_MESSAGES = 64        # a run of fewer messages stays in one process


def next_retry(attempts, now):
    return now + min(RETRY_BASE * (2 ** max(attempts - 1, 0)), RETRY_MAX)


class QueueRun:
    def __init__(self, layout, options, ident, log, verbose=False, out=None):
        self.layout = layout
        self.options = options
        self.ident = ident
        self.log = log
        self.verbose = verbose
        self.out = out
        self.followups = []      # DSNs queued during this run, delivered right after
        self._views = {}         # mailer name -> MailerView
        self._route_ctx = None   # the router's context, shared by the messages of this run
        self._listed = {}        # qid -> (file stamp, Envelope) read while listing the queue
        self._routing_qid = None
        self._local_ipc = None   # is the local mailer LMTP (P=[IPC])? known on first use
        self.batch = None        # MaildirBatch of a run over several messages
        self._held = []          # (Attempt, lock fd) waiting for the batch's sync
        self._spool = None       # the Spool, kept from pass to pass (its pool counts)
        logfmt.set_default(log)  # the delivery agents' messages go to the same log

    def say(self, text):
        if self.verbose:
            os.write(1, (text + "\n").encode("utf-8", "surrogateescape"))

    # ----------------------------------------------------------------------------------
    def run(self, filters=(), force=True, include_held=False, runners=None):
        """One pass over the queue. Returns the number of messages handled. `runners`:
        how many processes may share it (None: MaxRunnersPerQueue, else the CPUs).
        A QueueRun may make several passes (the service's lingering runner): what it
        learnt (the cf's routes, the spool's pool) is kept from one to the next."""
        if os.path.isdir(self.layout.maildrop) and os.access(self.layout.queue, os.W_OK | os.X_OK):
            from .pickup import pickup_all
            pickup_all(self.layout, self.options, self.ident, self.log)
        if self._spool is None:
            self._spool = Spool(self.layout.queue)
        spool = self._spool
        self._listed.clear()
        self._views.clear()             # the mailers as the cf says now
        self._local_ipc = None
        if self._route_ctx is not None:
            self._route_ctx.refresh()
        now = int(time.time())
        if spool.sweep_due(now):
            for name in spool.sweep_orphans(now):
                self.log.info(None, "removed %s left by an interrupted process" % name)
        todo = []
        min_age = interval_option(self.options, "MinQueueAge", "0")
        for qid, state in spool.entries(include_held=include_held):
            if state == "held" and not include_held:
                continue
            try:
                env, stamp = spool.load_stamped(qid)
            except FileNotFoundError:
                continue
            except (qfile.FormatError, ValueError, UnicodeDecodeError) as e:
                self.log.err(qid, "unreadable control file set aside as Qf%s: %s" % (qid, e))
                try:
                    spool.set_aside(qid)
                except OSError:
                    pass
                continue
            if not matches(env, filters):
                continue
            if not force and env.next_attempt > now:
                continue
            if min_age and env.last_attempt and now - env.last_attempt < min_age:
                continue
            todo.append((env.priority, env.created, qid))
            self._listed[qid] = (stamp, env)
        todo.sort()
        qids = [qid for _, _, qid in todo]
        if len(qids) > 1:
            self.log.keep_open()    # one open of the log for the run, not one per line
        children = []
        runners = self._runners(len(qids), runners)
        if runners > 1:
            # Sendmail's MaxRunnersPerQueue: the queue split among processes (each
            # message is still locked by whoever delivers it), so a long run uses every
            # CPU, as Postfix's several delivery agents do.
            shards = [qids[i::runners] for i in range(runners)]
            qids = shards[0]
            for shard in shards[1:]:
                pid = os.fork()
                if pid == 0:
                    status = 0
                    try:
                        self._run_shard(spool, shard)
                    except BaseException:
                        status = 70
                    finally:
                        os._exit(status)
                children.append(pid)
        try:
            return self._run_shard(spool, qids)
        finally:
            for pid in children:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass

    def _runners(self, count, want=None):
        """How many processes share a run of `count` messages: `want`, else
        MaxRunnersPerQueue, else the CPUs (at most 4); only for runs long enough to gain
        from it."""
        if count < RUNNER_MESSAGES:
            return 1
        if want is None:
            try:
                want = int(str(self.options.get("MaxRunnersPerQueue") or 0).strip())
            except ValueError:
                want = 0
        if want <= 0:
            want = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                       else (os.cpu_count() or 1), 4)
        return max(1, min(want, count // (RUNNER_MESSAGES // 2)))

    def _run_shard(self, spool, qids):
        if any(self._may_go_remote(self._listed[qid][1]) for qid in qids):
            from .outbound import run_queue
            return run_queue(self, spool, qids)
        from ..delivery.maildir_batch import MaildirBatch
        handled = 0
        self.batch = MaildirBatch() if len(qids) > 1 else None
        try:
            for qid in qids:
                taken = self.take(spool, qid)
                if taken is not None:
                    handled += 1
                    self.finish_or_hold(spool, *taken)
        finally:
            self.flush(spool)
            self.batch = None
        self.deliver_followups(spool)
        return handled

    def take(self, spool, qid):
        """Lock message `qid` and do the local part of its attempt (begin()): returns
        (Attempt, lock fd), or None when another runner has it or there is nothing
        to do (the lock is then released)."""
        fd = spool.lock(qid)
        if fd is None:
            return None
        try:
            attempt = self.begin(spool, qid)
        except BaseException:
            os.close(fd)
            raise
        if attempt is None:
            os.close(fd)
            return None
        return attempt, fd

    # ----------------------------------------------------------------------------------
    def deliver_locked(self, spool, qid, lock_fd):
        """Deliver message `qid`, whose lock the caller holds. Returns a sysexits status."""
        batch, self.batch = self.batch, None    # one message: each delivery synced alone
        try:
            attempt = self.begin(spool, qid)
            if attempt is None:
                return EX_OK
            if attempt.remote:
                from .outbound import deliver_remote
                deliver_remote(self, spool, [attempt])
            return self.finish(spool, attempt)
        finally:
            self.batch = batch

    def finish_or_hold(self, spool, attempt, fd):
        """finish() the attempt and close its lock `fd` (None: the caller keeps it), or,
        when some of its Maildir deliveries wait for the batch's sync, hold both until
        flush()."""
        if attempt.prepared:
            self._held.append((attempt, fd))
            if len(self._held) >= BATCH_MESSAGES:
                self.flush(spool)
            return
        attempt.fd = fd
        try:
            self.finish(spool, attempt)
        finally:
            if attempt.fd is not None:
                os.close(attempt.fd)

    def flush(self, spool):
        """Make the batch's Maildir deliveries durable (maildir_batch.py), then record
        their outcomes and finish the messages held for them."""
        if not self._held:
            return
        held, self._held = self._held, []
        failed = self.batch.commit() if self.batch is not None else {}
        for attempt, fd in held:
            attempt.fd = fd
            try:
                prepared, attempt.prepared = attempt.prepared, []
                for index, status, started in prepared:
                    self.record(attempt, index, failed.get((attempt.qid, index), status),
                                started)
                self.finish(spool, attempt)
            finally:
                if attempt.fd is not None:
                    os.close(attempt.fd)

    def begin(self, spool, qid):
        """The local part of one delivery attempt of message `qid` (locked by the caller):
        route what is not routed, deliver the local recipients, recording each outcome.
        Returns an Attempt whose `remote` lists the recipients (indices) left for the
        SMTP/LMTP agent, or None when there is nothing to do."""
        listed = self._listed.pop(qid, None)
        try:
            if listed is not None and spool.stamp(qid) == listed[0]:
                env = listed[1]         # unchanged since the listing read it
            else:
                env = spool.load(qid)
        except FileNotFoundError:
            return None
        if env.hold_reason:
            return None
        now = int(time.time())
        attempt = Attempt(qid, env, now)
        env.attempts += 1
        env.last_attempt = now
        if self._reroute(env) and any(not r.final and r.mailer in LOCAL_MAILERS
                                      for r in env.recipients):
            spool.save(env)     # the routed list is durable before anything is delivered
        for index, rcpt in enumerate(env.recipients):
            if rcpt.final:
                continue
            if rcpt.mailer == "local" and self._local_is_lmtp():
                attempt.remote.append(index)    # FEATURE(local_lmtp): the post office's LMTP
                continue
            if rcpt.mailer not in LOCAL_MAILERS:
                if rcpt.mailer == "error":
                    if rcpt.status.startswith("4"):
                        attempt.deferred = True         # routed again at the next run
                    else:
                        rcpt.state = FAILED
                elif rcpt.mailer:
                    attempt.remote.append(index)
                continue
            started = time.time()
            before = len(self.batch) if self.batch is not None else 0
            status = self._deliver_one(env, index, spool)
            if self.batch is not None and len(self.batch) > before:
                # prepared, not durable yet: recorded by flush() after the batch's sync
                attempt.prepared.append((index, status, started))
                continue
            self.record(attempt, index, status, started)
            if any(not r.final for r in env.recipients):
                spool.save(env)      # the outcome is durable before the next recipient
            # else finish() removes the message or saves it; a crash before that repeats
            # this delivery, which the agents make idempotent (Maildir names, mbox journal)
        return attempt

    def record(self, attempt, index, status, started):
        """Set recipient `index`'s outcome from `status` (a DeliveryStatus), log it."""
        env = attempt.env
        rcpt = env.recipients[index]
        rcpt.attempts += 1
        rcpt.status = status.status
        rcpt.diag = status.reply
        if status.ok:
            rcpt.state = SENT
            stat = "Sent" + (" (%s)" % status.reply if status.mta and status.reply else "")
            self.say("%s... Sent" % rcpt.address)
        elif status.temporary:
            rcpt.state = DEFERRED
            attempt.deferred = True
            stat = "Deferred: " + (status.reply or "temporary failure")
            self.say("%s... %s" % (rcpt.address, stat))
        else:
            rcpt.state = FAILED
            attempt.failed_now = True
            stat = status.reply or "Service unavailable"
            self.say("%s... %s" % (rcpt.address, stat))
        self.log.info(env.qid, logfmt.to_line(
            [rcpt.address], attempt.now - env.created, rcpt.mailer, env.priority, stat,
            dsn=status.status, xdelay=int(time.time() - started),
            relay=status.mta or None))

    def finish(self, spool, attempt):
        """The end of an attempt: expiry, DSNs, then remove the message or schedule its
        retry. Returns the attempt's sysexits status."""
        env, now = attempt.env, attempt.now
        self._expire(env, now)
        self._send_dsns(env, spool, now)
        if env.done:
            spool.remove(env.qid, len(env.recipients))
        else:
            pending = [r for r in env.recipients if not r.final and r.mailer]
            env.next_attempt = next_retry(env.attempts, now) if pending else 0
            spool.save(env)
        if attempt.deferred:
            return EX_TEMPFAIL
        if attempt.failed_now:
            return EX_UNAVAILABLE
        return EX_OK

    def _reroute(self, env):
        """Recipients not routed yet (the SMTP daemon queues them as the client gave them:
        aliases and .forward files are read here, as root) and those the cf could not
        route for now (a map's temporary failure, a $#error with a 4.x.x status) are
        routed, replaced by what they give. Recipients of remote mailers are routed again
        too, as Sendmail parses every queued recipient at each run: a changed smart host
        (DS) or mailertable applies to mail already queued. True when the list changed."""
        pending = [r for r in env.recipients if not r.final and (
            (not r.parent and (r.mailer == "" or (r.mailer == "error" and r.state == DEFERRED)))
            or r.mailer not in LOCAL_MAILERS + ("error", ""))]
        if not pending:
            return False
        from ..delivery.router import RouteContext, resolve, to_recipient
        from ..errors import AddressError, ConfigError
        ctx = self._route_ctx
        if ctx is None:         # one per QueueRun: the cf is loaded and each address routed
            # once (a minute), also over the passes of the service's lingering runner
            ctx = self._route_ctx = RouteContext(
                self.layout, self.options, self.ident,
                lambda m: self.log.info(self._routing_qid, m))
        self._routing_qid = env.qid
        changed = False
        for r in pending:
            remote = r.mailer not in LOCAL_MAILERS + ("error", "")
            try:
                targets = resolve(r.addr, ctx)
            except AddressError as e:
                r.state, r.status, r.diag = FAILED, "5.1.3", "553 5.1.3 " + e.reason
                changed = True
                continue
            except ConfigError as e:
                self.log.err(env.qid, e.message)
                return True
            if remote and len(targets) == 1 and targets[0].mailer not in LOCAL_MAILERS + (
                    "error", "discard"):
                t = targets[0]      # still remote: the same recipient, maybe a new route
                if (t.mailer, t.host, t.user) != (r.mailer, r.host, r.user):
                    r.mailer, r.host, r.user = t.mailer, t.host, t.user
                    changed = True
                continue
            changed = True
            new = [to_recipient(t, r.addr, notify=r.notify, orcpt=r.orcpt)
                   for t in targets if t.mailer != "discard"]
            for n in new:
                n.attempts = r.attempts
                if remote and not n.parent:
                    n.parent, n.owner = r.parent, r.owner
            for t in targets:
                if t.mailer == "discard":
                    self.log.info(env.qid, "%s... discarded" % (t.address or r.addr))
            at = env.recipients.index(r)
            env.recipients[at:at + 1] = new
        return changed

    def deliver_followups(self, spool):
        """Deliver the DSNs this run queued (a bounce should not wait for the next run)."""
        while self.followups:
            qid = self.followups.pop(0)
            fd = spool.lock(qid)
            if fd is None:
                continue
            try:
                self.deliver_locked(spool, qid, fd)
            finally:
                os.close(fd)

    def _view(self, mailer):
        """The MailerView of a mailer for this run (None when the cf cannot be loaded:
        the message then goes out as queued, the error is logged once)."""
        if mailer not in self._views:
            from ..delivery.mailer_view import MailerView
            from ..delivery.router import load_rules
            from ..errors import ConfigError
            try:
                rules = load_rules(self.layout, self.options, self.ident.j)
            except ConfigError as e:
                if not self._views:
                    self.log.err(None, e.message)
                rules = None
            self._views[mailer] = MailerView(rules, mailer) if rules else None
        return self._views[mailer]

    def _may_go_remote(self, env):
        """Does this message have a recipient the remote agent may have to deliver
        (routed to a remote mailer, not routed yet, local by LMTP)?"""
        for r in env.recipients:
            if r.final:
                continue
            if r.mailer not in LOCAL_MAILERS + ("error",):
                return True
            if r.mailer == "local" and self._local_is_lmtp():
                return True
        return False

    def _local_is_lmtp(self):
        """Is the cf's local mailer an IPC one (P=[IPC], LMTP to the post office)?"""
        if self._local_ipc is None:
            view = self._view("local")
            m = view.mailer if view is not None else None
            self._local_ipc = bool(m is not None and (m.path or "").strip() == "[IPC]")
        return self._local_ipc

    def _deliver_one(self, env, index, spool):
        from ..delivery.local import deliver
        from ..model import DeliveryStatus
        try:
            return deliver(env, index, spool, self.layout, self.options,
                           self._view(env.recipients[index].mailer), batch=self.batch)
        except OSError as e:
            return DeliveryStatus("4.3.0", "local delivery failed: %s" % e.strerror)

    def _expire(self, env, now):
        """Timeout.queuereturn: give up on recipients deferred for too long."""
        limit = interval_option(self.options, "Timeout.queuereturn", "5d")
        if now - env.created < limit:
            return
        for r in env.recipients:
            if not r.final and r.state == DEFERRED:
                r.state = FAILED
                r.status = "4.4.7"
                r.diag = "Deferred: %s; message could not be delivered for %s" % (
                    r.diag or "temporary failure", _human(limit))

    def _queued(self, qid):
        if qid:
            self.followups.append(qid)

    def _send_dsns(self, env, spool, now):
        owed = [r for r in env.recipients
                if r.state == FAILED and "failure" not in r.reported]
        succ = [r for r in env.recipients
                if r.state == SENT and "success" not in r.reported and r.wants("SUCCESS")]
        if not env.warned and now - env.created >= interval_option(
                self.options, "Timeout.queuewarn", "4h"):
            late = [r for r in env.recipients if r.state == DEFERRED]
            if late:
                env.warned = True       # once per message, as Sendmail
                self._queued(queue_bounce(self.layout, self.options, self.ident, self.log,
                                          env, late, spool, kind="delay"))
                for r in late:
                    r.reported = _add_kind(r.reported, "delay")
        if owed:
            self._queued(queue_bounce(self.layout, self.options, self.ident, self.log, env,
                                      owed, spool))
            for r in owed:
                r.reported = _add_kind(r.reported, "failure")
        if succ:
            self._queued(queue_bounce(self.layout, self.options, self.ident, self.log, env,
                                      succ, spool, kind="success"))
            for r in succ:
                r.reported = _add_kind(r.reported, "success")
        if owed or succ:
            spool.save(env)


class Attempt:
    """One delivery attempt of one message: its envelope, when it started, the
    recipients left for the remote agent, and what happened so far."""
    __slots__ = ("qid", "env", "now", "remote", "prepared", "deferred", "failed_now", "fd")

    def __init__(self, qid, env, now):
        self.fd = None          # the lock, closed by the caller of finish()
        self.qid = qid
        self.env = env
        self.now = now
        self.remote = []
        self.prepared = []      # (index, status, started) of Maildir deliveries not synced
        self.deferred = False
        self.failed_now = False


def _add_kind(reported, kind):
    return ",".join(filter(None, [reported, kind]))




def _human(seconds):
    days, rest = divmod(seconds, 86400)
    return "%d days" % days if days and not rest else "%d hours" % (seconds // 3600)


def matches(env, filters):
    """-qI / -qR / -qS filters (substring, case-insensitive; '!' negates)."""
    for kind, value, negated in filters:
        v = value.lower()
        if kind == "I":
            hit = v in env.qid.lower()
        elif kind == "R":
            hit = any(v in r.address.lower() or v in r.addr.lower() for r in env.recipients
                      if not r.final)
        elif kind == "S":
            hit = v in (env.sender or "<>").lower()
        elif kind == "Q":
            hit = bool(env.hold_reason) and v in env.hold_reason.lower()
        else:
            hit = True
        if hit == negated:
            return False
    return True
