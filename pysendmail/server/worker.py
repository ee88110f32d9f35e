"""An SMTP worker process: one asyncio loop serving sessions on the daemon's listeners.

The master (daemon.smtp_master) builds one `Worker` with everything loaded (the cf's
rules, the policy's maps, the TLS context, the password file), binds the listening
sockets, and forks the workers; each drops to the unprivileged user and runs
`Worker.serve(sockets)`. What the sessions share lives here: the ServerConfigs per
listener, the group committer, the connection limits, the client-name cache, the
timeouts, and the log line of each received message.

Signals in a worker: SIGTERM stops accepting, tells idle sessions "421 4.3.2 Shutting
down", lets sessions in a transaction finish (at most Timeout.shutdown, default 60s)
and waits for the last commit; SIGINT the same; SIGHUP is ignored (the master reloads
by starting new workers and stopping these).
"""
import asyncio
import os
import signal
import time

from .. import __version__, dates
from .. import log as logfmt
from ..proto.smtp_server import ServerConfig
from ..queue.spool import Spool
from .clientname import ClientNames
from .commit import GroupCommitter

SWEEP_EVERY = 5.0
POKE_EVERY = 0.05   # wake the queue runner at most this often
SWITCH_INTERVAL = 0.0005    # seconds between GIL hand-overs (CPython's default: 0.005)
DEFAULT_CHECKS = "spf, dkim, arc, dmarc"    # O AuthChecks unset


def _seconds(options, name, default):
    from ..config.options import parse_interval
    try:
        return parse_interval(options.get(name) or "", "s") or default
    except ValueError:
        return default


def _int(options, name, default=0):
    try:
        return int(options.get(name) or default)
    except ValueError:
        return default


class Worker:
    def __init__(self, layout, options, ident, log, policy, listeners, tls_context=None,
                 auth=None, limits=None, user="", queue_poke=None):
        self.layout = layout
        self.options = options
        self.ident = ident
        self.log = log
        self.hostname = ident.j
        self.policy = policy
        self.listeners = listeners
        self.tls_context = tls_context
        self.auth = auth
        self.limits = limits            # shared: counts every session (the master scales)
        self.user = user or "root"
        self.queue_poke = queue_poke
        self.milters = None             # milter.config.MilterConfig with filters, or None
        self.inbound = None             # mailauth.inbound.InboundChecks, made on first use
        self.check_executor = None
        self._checks = {}
        self.spool = Spool(layout.queue, use_pool=True)
        self.names = ClientNames(options, layout.resolv_confs)
        self.sessions = set()
        self.max_headers = _int(options, "MaxHeadersLength", 32768)
        self.timeout_command = _seconds(options, "Timeout.command", 300)
        self.timeout_datablock = _seconds(options, "Timeout.datablock", 180)
        self.timeout_starttls = _seconds(options, "Timeout.starttls", 60)
        self.timeout_shutdown = _seconds(options, "Timeout.shutdown", 60)
        self.greeting_text = options.get("SmtpGreetingMessage") or ""
        self._configs = {}
        self.committer = None
        self.auth_executor = None
        self.servers = []
        self.stopping = False
        self.delivery_mode = (options.get("DeliveryMode") or "b")[:1]
        self._poke_pending = False
        self._last_poke = 0.0
        self._greeting = None

    # -- what sessions ask -------------------------------------------------------------------
    def new_client(self, addr, port, daemon_name):
        from .policy import ClientInfo
        return ClientInfo(addr, port, "", daemon_name)

    def config_for(self, listener, addr, tls):
        """The ServerConfig of a listener, for a loopback client or not (AUTH is offered
        without TLS only on loopback)."""
        key = (listener.name, addr in ("127.0.0.1", "::1"))    # this host itself
        config = self._configs.get(key)
        if config is None:
            o = self.options
            mechanisms = ()
            if self.auth is not None and listener.auth_offered:
                mechanisms = self.auth.mechanisms
            config = ServerConfig(
                self.hostname, max_size=_int(o, "MaxMessageSize"),
                starttls=self.tls_context is not None and listener.starttls_offered,
                auth_mechanisms=mechanisms, auth_requires_tls=not key[1],
                auth_required=listener.auth_required,   # M=a without AUTH: 530 to all
                max_rcpts=_int(o, "MaxRecipientsPerMessage") or _int(o, "MaxRcptsPerMessage"),
                expn=False)
            self._configs[key] = config
        return config

    def checks_for(self, listener):
        """The inbound authentication checks of a listener (a frozenset, maybe empty)."""
        got = self._checks.get(listener.name)
        if got is None:
            from ..mailauth.inbound import parse_list
            text = listener.checks
            if text is None:
                text = "none" if listener.auth_required else \
                    self.options.get("AuthChecks", DEFAULT_CHECKS)
            got = self._checks[listener.name] = parse_list(text)
            if got and self.inbound is None:
                self._start_checks()
        return got

    def _start_checks(self):
        from concurrent.futures import ThreadPoolExecutor
        from ..mailauth.dns import Lookup
        from ..mailauth.inbound import InboundChecks
        lookup = Lookup(resolv_confs=self.layout.resolv_confs,
                        timeout=_seconds(self.options, "Timeout.authcheck", 10))
        reject = (self.options.get("AuthReject") or "").replace(",", " ").lower().split()
        self.inbound = InboundChecks(self.hostname, lookup, reject,
                                     log=lambda text: self.log.warning(None, text))
        self.check_executor = ThreadPoolExecutor(
            max_workers=_int(self.options, "AuthCheckThreads", 8),
            thread_name_prefix="authcheck")

    def tls_macros(self, ssl_object):
        from .tls import tls_macros
        try:
            return tls_macros(ssl_object)
        except Exception:
            return {}

    def greeting(self):
        now = int(time.time())
        cached = self._greeting
        if cached is not None and cached[0] == now:
            return cached[1]            # the date changes once a second
        reply = self._make_greeting(now)
        self._greeting = (now, reply)
        return reply

    def _make_greeting(self, now):
        from ..proto.smtp_reply import Reply
        text = self.greeting_text
        if text:
            text = text.replace("$j", self.hostname).replace("$v", __version__) \
                .replace("$Z", __version__).replace("$b", dates.rfc5322(now))
            if "ESMTP" not in text:
                first, _, rest = text.partition(" ")
                text = "%s ESMTP %s" % (first, rest)
        else:
            text = "%s ESMTP pysendmail %s; %s" % (self.hostname, __version__,
                                                   dates.rfc5322(now))
        return Reply(220, None, text)

    def log_received(self, env, facts, daemon):
        msgid = env.header("Message-Id")
        self.log.info(env.qid, logfmt.from_line(
            env, len(env.recipients), msgid.decode("utf-8", "replace") if msgid else "",
            relay=facts.relay, proto=facts.protocol, daemon=daemon,
            bodytype=env.body_type or None))

    # -- running -------------------------------------------------------------------------------
    def _poke(self, qids):
        """After a commit: wake the service's queue runner, at most every POKE_EVERY; a wake-up
        inside that time is sent when it ends, never dropped (the last messages of a
        burst must not wait for the queue interval)."""
        if self.delivery_mode in ("q", "d") or self.queue_poke is None:
            return
        if self._poke_pending:
            return
        now = time.monotonic()
        wait = self._last_poke + POKE_EVERY - now
        if wait <= 0:
            self._last_poke = now
            self.queue_poke()
            return
        self._poke_pending = True
        asyncio.get_event_loop().call_later(wait, self._poke_later)

    def _poke_later(self):
        self._poke_pending = False
        self._last_poke = time.monotonic()
        self.queue_poke()

    def serve(self, sockets):
        """Run the loop until SIGTERM; `sockets` is [(ListenerSpec, socket), ...], shared
        with the other workers (each accepts what it can)."""
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        # The commit thread must get the GIL back quickly when its sync returns, or every
        # session waiting for that batch waits up to the default 5 ms switch interval.
        import sys
        sys.setswitchinterval(SWITCH_INTERVAL)
        from concurrent.futures import ThreadPoolExecutor
        self.committer = GroupCommitter(
            loop, self.layout.queue,
            super_safe=(self.options.get("SuperSafe") or "true").lower() not in
            ("false", "f", "no", "0"), on_commit=self._poke,
            executor=ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit"))
        if self.auth is not None:
            self.auth_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="auth")
        from .session import SMTPSession
        for spec, sock in sockets:
            ssl_ctx = self.tls_context if spec.implicit_tls else None
            server = loop.run_until_complete(loop.create_server(
                lambda spec=spec: SMTPSession(self, spec), sock=sock, ssl=ssl_ctx,
                backlog=spec.backlog,
                ssl_handshake_timeout=self.timeout_starttls if ssl_ctx else None))
            self.servers.append(server)
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        loop.call_later(SWEEP_EVERY, self._sweep)
        from ..profiling import profiled
        with profiled("worker"):
            try:
                loop.run_forever()
            finally:
                loop.close()

    def _sweep(self):
        now = time.monotonic()
        for s in list(self.sessions):
            s.timed_out(now)
        loop = asyncio.get_event_loop()
        if self.stopping:
            if (not self.sessions and self.committer.idle) or now > self._stop_by:
                for s in list(self.sessions):
                    if s.transport is not None:
                        s.transport.abort()
                if self.committer.idle:
                    loop.stop()
                    return
            loop.call_later(0.2, self._sweep)
            return
        loop.call_later(SWEEP_EVERY, self._sweep)

    def stop(self):
        if self.stopping:
            return
        self.stopping = True
        self._stop_by = time.monotonic() + self.timeout_shutdown
        for server in self.servers:
            server.close()
        for s in list(self.sessions):
            s.shut_down()
        loop = asyncio.get_event_loop()
        loop.call_soon(self._sweep)


def _tls(layout, options, ident, log):
    if (options.get("TLSSrvOptions") or "").strip().upper() in ("V", "NONE"):
        return None
    from . import tls
    return tls.make_server_context(options, layout, ident.j, log)


def build(layout, options, ident, log, specs, limits, user, delivery_mode, poke, ctx):
    """A whole Worker for these listeners: the policy over the router's context `ctx`
    (the cf's rules), TLS, AUTH. Runs in a child of the master, before it drops
    privileges (keys and the password file are root's). `limits` None: only checking
    that everything loads."""
    from .policy import Policy
    options = dict(options)
    ctx.rules                               # the cf must load
    tls_context = _tls(layout, options, ident, log)
    from .auth import load_auth
    auth = load_auth(layout, options)
    if auth is not None:                    # the policy words its relay refusal for AUTH
        options["AuthMechanisms"] = " ".join(auth.mechanisms)
    policy = Policy(ctx, options, None)     # the sessions log rejections (with the qid)
    if auth is not None and limits is not None:
        from .limits import SharedAuthThrottle
        auth.throttle = SharedAuthThrottle(limits)
    worker = Worker(layout, options, ident, log, policy, specs, tls_context, auth, limits,
                    user, queue_poke=poke)
    worker.delivery_mode = (delivery_mode or options.get("DeliveryMode") or "b")[:1]
    from ..milter.config import load_milters
    milters = load_milters(ctx.rules, options).check()      # a bad X line: EX_CONFIG
    worker.milters = milters if milters else None
    return worker


def drop_privileges(uid, gid):
    """Become uid/gid for good (the worker after its sockets are bound)."""
    if os.geteuid() != 0 or uid == 0:
        return
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
