"""The remote half of a queue run: many messages to many destinations at once.

The queue run (queuerun.py) does each message's local work in order; the recipients
of remote mailers (esmtp, smtp, relay, lmtp...) come here as jobs: one job per
message and destination, a destination being (mailer, host) as ruleset 0 gave them.
Each destination has its own line of jobs and opens connections as the line grows,
up to `MaxHostConnections` (default 20, Postfix's destination concurrency) and
`MaxOutboundConnections` over all destinations (default 100); a connection carries
job after job (connection reuse) until its line is empty and the run has no more
messages. The agent (delivery/smtp_agent.py) does the talking.

Outcomes are recorded per recipient as each job ends; a message with jobs still
out has its control file saved after each job (a crash then repeats only the
jobs not recorded), and is finished (DSNs, removal or retry) by the queue run
when its last job ends. When a destination cannot be reached (every MX host
down, DNS failing), the jobs waiting for it in this run are deferred at once with
the same reason instead of each paying the timeouts again; the host status cache
(delivery/hoststat.py) carries that over to the next runs.

At most MAX_MESSAGES messages are out at once (each holds its lock and its
envelope), so a queue of 100,000 messages runs in bounded memory.
"""
import asyncio
import time
from collections import deque

MAX_MESSAGES = 500


def _int_option(options, name, default):
    try:
        value = int(str(options.get(name) or default).strip())
    except ValueError:
        return default
    return value if value > 0 else default


class _Message:
    __slots__ = ("attempt", "fd", "pending", "finish")

    def __init__(self, attempt, fd, pending, finish):
        self.attempt = attempt
        self.fd = fd
        self.pending = pending
        self.finish = finish


class Job:
    """Some recipients (indices into env.recipients) of one message, for one destination."""
    __slots__ = ("message", "indices", "started")

    def __init__(self, message, indices):
        self.message = message
        self.indices = indices
        self.started = time.time()

    @property
    def env(self):
        return self.message.attempt.env


class Outbound:
    """The scheduler: destinations, connection limits, job outcomes."""

    def __init__(self, qrun, spool, agent):
        self.qrun = qrun
        self.spool = spool
        self.agent = agent
        options = qrun.options
        self.max_total = _int_option(options, "MaxOutboundConnections", 100)
        self.max_per_host = _int_option(options, "MaxHostConnections", 20)
        self.open = 0
        self.destinations = {}
        self.closing = False
        self.tasks = set()
        self.slots = asyncio.Semaphore(MAX_MESSAGES)
        self.idle = asyncio.Event()     # set when no message is out
        self.idle.set()
        self.out = 0

    # -- messages in ---------------------------------------------------------------
    async def submit(self, attempt, fd, finish=True):
        """Hand the remote recipients of `attempt` over; the message is finished (with
        `finish`) and its lock `fd` closed when its last job ends."""
        await self.slots.acquire()
        groups = {}
        for index in attempt.remote:
            key = self.agent.destination_key(attempt.env.recipients[index])
            groups.setdefault(key, []).append(index)
        message = _Message(attempt, fd, len(groups), finish)
        self.out += 1
        self.idle.clear()
        for key, indices in groups.items():
            dest = self.destinations.get(key)
            if dest is None:
                dest = self.destinations[key] = Destination(self, key)
            dest.add(Job(message, indices))

    def job_done(self, job, statuses):
        """Record a job's outcomes (one DeliveryStatus per recipient of the job)."""
        message = job.message
        attempt = message.attempt
        for index, status in zip(job.indices, statuses):
            self.qrun.record(attempt, index, status, job.started)
        message.pending -= 1
        if message.pending or not message.finish:
            self.spool.save(attempt.env)        # durable before the next job's outcome
        if message.pending:
            return
        try:
            if message.finish:
                self.qrun.finish_or_hold(self.spool, attempt, message.fd)
        finally:
            self.out -= 1
            if not self.out:
                self.idle.set()
            self.slots.release()

    # -- connections -----------------------------------------------------------------
    def start_connection(self, dest):
        self.open += 1
        dest.connections += 1
        task = asyncio.get_running_loop().create_task(dest.run_connection())
        self.tasks.add(task)
        task.add_done_callback(lambda t: self._connection_ended(t, dest))

    def _connection_ended(self, task, dest):
        self.tasks.discard(task)
        error = task.exception() if not task.cancelled() else None
        if error is not None:
            # A bug, not the peer: this run defers the destination rather than hang.
            from ..model import DeliveryStatus
            self.qrun.log.err(None, "SYSERR: remote delivery to %s: %r" % (dest.key[1], error))
            dest.fail_all(DeliveryStatus("4.3.0", "internal error in remote delivery"))
        # A connection slot is free: a destination still waiting for one gets it.
        for dest in self.destinations.values():
            if self.open >= self.max_total:
                break
            dest.maybe_connect()

    async def drain(self):
        """No more messages for now: let the connections finish their lines and end,
        and every message out be finished."""
        self.closing = True
        for dest in self.destinations.values():
            dest.wake_all()
        while self.out:
            await self.idle.wait()
        while self.tasks:
            await asyncio.wait(list(self.tasks))
        self.closing = False


class Destination:
    """One (mailer, host) destination of this run: its line of jobs and connections."""

    def __init__(self, outbound, key):
        self.ob = outbound
        self.key = key
        self.jobs = deque()
        self.waiters = deque()
        self.connections = 0
        self.failure = None     # DeliveryStatus: every job of this run gets it
        self.plan = None        # the agent's route (a future shared by the connections)

    def add(self, job):
        if self.failure is not None:
            self.ob.job_done(job, [self.failure] * len(job.indices))
            return
        self.jobs.append(job)
        if self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        else:
            self.maybe_connect()

    def maybe_connect(self):
        if (self.jobs and self.failure is None and len(self.jobs) > len(self.waiters)
                and self.connections < self.ob.max_per_host
                and self.ob.open < self.ob.max_total):
            self.ob.start_connection(self)

    def wake_all(self):
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def fail_all(self, status):
        self.failure = status
        while self.jobs:
            job = self.jobs.popleft()
            self.ob.job_done(job, [status] * len(job.indices))

    async def next_job(self):
        while True:
            if self.jobs:
                return self.jobs.popleft()
            if self.ob.closing or self.failure is not None:
                return None
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            await waiter

    async def run_connection(self):
        agent = self.ob.agent
        from ..delivery.smtp_agent import DeliveryFailure
        try:
            if self.plan is None:
                self.plan = asyncio.ensure_future(agent.plan(self.key))
            try:
                route = await asyncio.shield(self.plan)
            except DeliveryFailure as e:
                self.fail_all(e.status)
                return
            while self.jobs:
                try:
                    conn = await agent.connect(self.key, route)
                except DeliveryFailure as e:
                    self.fail_all(e.status)
                    return
                try:
                    while True:
                        job = await self.next_job()
                        if job is None:
                            return
                        try:
                            statuses = await conn.deliver(job.env, job.indices)
                        except BaseException:
                            # a bug, not the peer: this job is deferred, never left open
                            from ..model import DeliveryStatus
                            self.ob.job_done(job, [DeliveryStatus(
                                "4.3.0", "internal error in remote delivery")]
                                * len(job.indices))
                            raise
                        self.ob.job_done(job, statuses)
                        if not conn.usable:
                            break       # the peer closed (421) or broke: a new one
                finally:
                    await conn.close()
        finally:
            self.connections -= 1
            self.ob.open -= 1


# ---------------------------------------------------------------------------------------
async def _run(qrun, spool, qids):
    from ..delivery.smtp_agent import Agent
    agent = Agent(qrun.layout, qrun.options, qrun.ident, qrun.log)
    ob = Outbound(qrun, spool, agent)
    handled = 0
    try:
        while qids:
            for qid in qids:
                taken = qrun.take(spool, qid)
                if taken is not None:
                    handled += 1
                    attempt, fd = taken
                    if attempt.remote:
                        await ob.submit(attempt, fd)
                    else:
                        qrun.finish_or_hold(spool, attempt, fd)
                await asyncio.sleep(0)      # let the connections move
            await ob.drain()
            qrun.flush(spool)
            qids = qrun.followups[:]        # the DSNs of this run go out in it
            qrun.followups.clear()
    finally:
        await ob.drain()
        qrun.flush(spool)
        await agent.close()
    return handled


def run_queue(qrun, spool, qids):
    """Deliver messages `qids` (lock, local part, remote part, finish), and the DSNs
    this queues. Returns how many messages were handled."""
    from ..delivery.maildir_batch import MaildirBatch
    qrun.batch = MaildirBatch()
    try:
        return asyncio.run(_run(qrun, spool, list(qids)))
    finally:
        qrun.batch = None


def deliver_remote(qrun, spool, attempts):
    """Only the remote part of `attempts` (begun and locked by the caller, who also
    finishes them)."""
    async def main():
        from ..delivery.smtp_agent import Agent
        agent = Agent(qrun.layout, qrun.options, qrun.ident, qrun.log)
        ob = Outbound(qrun, spool, agent)
        try:
            for attempt in attempts:
                await ob.submit(attempt, None, finish=False)
        finally:
            await ob.drain()
            await agent.close()
    asyncio.run(main())
