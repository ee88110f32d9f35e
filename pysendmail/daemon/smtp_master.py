"""The SMTP side of the service: bind the listeners, fork the workers, keep them running.

Runs inside the long-running service (daemon.service, `sendmail -bd` / `-bD`):

- `SMTPMaster.prepare()` does everything that needs privilege or may fail, before any
  worker exists: the listeners (server.listeners; ports below 1024 need root), the
  cf's rules and the policy's maps (server.policy), the TLS context (server.tls; a
  self-signed certificate is made on first start when none is configured), the AUTH
  password file (server.auth), the shared connection limits (server.limits), and the
  log file opened for keeps. A failure raises MTAError with the reason.
- `start()` forks `DaemonWorkers` workers (default: the number of CPUs, at most 4);
  each drops to the unprivileged user (RunAsUser; default the `pysendmail` user for
  the system instance, the instance directory's owner for a private one) and serves
  with server.worker.
  The queue directory is given to that user (0700), as Postfix's queue belongs to
  `postfix`: the workers write messages there and nowhere else; queue runs and local
  delivery stay with the root service.
- `reaped(pid)` respawns a worker that died (at most 10 in a minute, then it gives
  up and logs why); `stop()` sends SIGTERM and waits while sessions finish;
  `reload()` prepares a new generation first (a bad configuration leaves the running
  workers alone and says why), then starts it and stops the old one.
"""
import os
import pwd
import signal
import time

from ..errors import ConfigError, EX_CONFIG, EX_NOUSER, MTAError


def _workers(options):
    text = options.get("DaemonWorkers") or ""
    try:
        n = int(text) if text else min(os.cpu_count() or 1, 4)
    except ValueError:
        raise ConfigError("DaemonWorkers: not a number: %s" % text, EX_CONFIG)
    return max(1, min(n, 64))


def run_as(options, layout):
    """(uid, gid, name) the workers run as: the RunAsUser option ("user[:group]"); else
    the `pysendmail` user for the system instance (which must exist: `pysendmail
    install` makes it); else, for a private instance started by root, the owner of the
    instance's directory. A process that is not root keeps its own identity."""
    if os.geteuid() != 0:
        pw = pwd.getpwuid(os.geteuid())
        return pw.pw_uid, pw.pw_gid, pw.pw_name
    wanted = (options.get("RunAsUser") or "").strip()
    if not wanted:
        if layout.system:
            wanted = "pysendmail"
        else:
            try:
                wanted = str(os.stat(layout.base).st_uid)
            except OSError:
                wanted = "0"
    user, _, group = wanted.partition(":")
    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise ConfigError("RunAsUser: no user %s to run the SMTP daemon as (run `pysendmail "
                          "install`, or set O RunAsUser=)" % user, EX_NOUSER)
    gid = pw.pw_gid
    if group:
        import grp
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError("RunAsUser: unknown group %s" % group, EX_NOUSER)
    return pw.pw_uid, gid, pw.pw_name


class Generation:
    """One configuration's prepared state and the workers running it."""

    def __init__(self, worker, sockets, count):
        self.worker = worker          # the server.worker.Worker template (fork copies it)
        self.sockets = sockets        # [(spec, [socket per worker])]
        self.count = count
        self.pids = {}                # pid -> worker index
        self.respawns = []


class SMTPMaster:
    def __init__(self, inv, layout, options, ident, log):
        self.inv = inv
        self.layout = layout
        self.options = options
        self.ident = ident
        self.log = log
        self.current = None
        self.retired = []             # older generations still finishing their sessions
        self.bound = {}               # (name, addr, port, family) -> [sockets]
        self.stopping = False

    # -- preparing -------------------------------------------------------------------------
    def prepare(self, options=None, ident=None):
        options = dict(self.options if options is None else options)
        ident = ident or self.ident
        from ..delivery.router import RouteContext
        from ..server import listeners as lst
        from ..server.policy import Policy
        from ..server.worker import Worker
        layout = self.layout
        count = _workers(options)
        uid, gid, user = run_as(options, layout)
        specs = lst.configured(self.inv.cf or layout.cf, self.inv.options.get("DaemonPortOptions"),
                               layout.system, warn=lambda m: self.log.warning(None, m))
        ctx = RouteContext(layout, options, ident)
        try:
            ctx.rules                    # the cf must load before anything changes
        except MTAError:
            raise
        tls_context = self._tls(options, ident)
        auth = self._auth(options)
        if auth is not None:            # the policy words its relay refusal for AUTH
            options["AuthMechanisms"] = " ".join(auth.mechanisms)
        policy = Policy(ctx, options, None)      # the sessions log rejections (with the qid)
        from ..server.limits import ConnectionLimits, SharedAuthThrottle
        os.makedirs(layout.run_dir, 0o755, exist_ok=True)
        limits = ConnectionLimits(options, lock_dir=layout.run_dir)
        if auth is not None:
            auth.throttle = SharedAuthThrottle(limits)
        sockets = []
        for spec in specs:
            key = (spec.name, spec.bind_address(), spec.port, spec.family, count)
            socks = self.bound.get(key)
            if socks is None:
                try:
                    socks = lst.bind(spec, count)
                except OSError as e:
                    if spec.optional:
                        self.log.warning(None, "daemon %s: cannot bind %s:%d: %s (optional, "
                                         "skipped)" % (spec.name, spec.bind_address(),
                                                       spec.port, e.strerror))
                        continue
                    raise MTAError("daemon %s: cannot bind %s port %d: %s" % (
                        spec.name, spec.bind_address(), spec.port, e.strerror), 71)
                self.bound[key] = socks
            sockets.append((spec, socks))
        worker = Worker(layout, options, ident, self.log, policy, specs, tls_context, auth,
                        limits, user, queue_poke=self._poker())
        worker.uid, worker.gid = uid, gid
        worker.delivery_mode = (self.inv.delivery_mode or options.get("DeliveryMode") or "b")[:1]
        self._give_queue(uid, gid)
        self.log.keep_open()
        return Generation(worker, sockets, count)

    def _tls(self, options, ident):
        if (options.get("TLSSrvOptions") or "").strip().upper() in ("V", "NONE"):
            return None
        from ..server import tls
        return tls.make_server_context(options, self.layout, ident.j, self.log)

    def _auth(self, options):
        mechs = [m.upper() for m in (options.get("AuthMechanisms") or "PLAIN LOGIN").split()
                 if m.upper() in ("PLAIN", "LOGIN")]
        from ..server import auth as authmod
        path = options.get("AuthPasswordFile") or authmod.default_path(self.layout)
        if not mechs or not os.path.exists(path):
            return None
        from ..server.worker import Auth
        passwords = authmod.PasswordFile(path)
        passwords.load()              # unsafe or unreadable: the daemon does not start
        return Auth(passwords, authmod.AuthThrottle(), tuple(mechs))

    def _give_queue(self, uid, gid):
        q = self.layout.queue
        os.makedirs(q, 0o700, exist_ok=True)
        if os.geteuid() == 0 and uid != 0:
            st = os.stat(q)
            if st.st_uid != uid or st.st_gid != gid:
                os.chown(q, uid, gid)
            os.chmod(q, 0o700)

    def _poker(self):
        path = self.layout.pickup_socket
        state = {"last": 0.0}

        def poke():
            now = time.monotonic()
            if now - state["last"] < 0.05:
                return
            state["last"] = now
            from ..queue.maildrop import Maildrop
            Maildrop.poke(path)
        return poke

    # -- running ---------------------------------------------------------------------------
    def start(self, generation=None):
        gen = generation or self.prepare()
        for index in range(gen.count):
            self._spawn(gen, index)
        self.current = gen
        names = ", ".join("%s %s:%d" % (spec.name, spec.bind_address(), spec.port)
                          for spec, _ in gen.sockets)
        self.log.info(None, "SMTP daemon: %d worker(s) as %s on %s" % (
            gen.count, gen.worker.user, names))

    def _spawn(self, gen, index):
        pid = os.fork()
        if pid:
            gen.pids[pid] = index
            return
        status = 0
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            w = gen.worker
            if w.limits is not None:
                w.limits.worker = index
            mine = [(spec, socks[index]) for spec, socks in gen.sockets]
            for key, socks in self.bound.items():      # close the others' copies
                for i, s in enumerate(socks):
                    if s not in (m[1] for m in mine):
                        s.close()
            from ..server.worker import drop_privileges
            drop_privileges(w.uid, w.gid)
            _raise_nofile()
            w.serve(mine)
        except BaseException as e:
            try:
                self.log.err(None, "SMTP worker failed: %r" % (e,))
            except Exception:
                pass
            status = 1
        os._exit(status)

    def owns(self, pid):
        return any(pid in g.pids for g in [self.current] + self.retired if g is not None)

    def reaped(self, pid, status=0):
        """A child ended: if it was a current worker that should still run, replace it."""
        for gen in self.retired:
            gen.pids.pop(pid, None)
        self.retired = [g for g in self.retired if g.pids]
        gen = self.current
        if gen is None or pid not in gen.pids:
            return
        index = gen.pids.pop(pid)
        if gen.worker.limits is not None:
            gen.worker.limits.forget_worker(index)
        if self.stopping:
            return
        now = time.monotonic()
        gen.respawns = [t for t in gen.respawns if now - t < 60] + [now]
        if len(gen.respawns) > 10:
            self.log.err(None, "SMTP worker %d keeps dying; not restarted" % index)
            return
        self.log.warning(None, "SMTP worker %d (pid %d) ended with status %d; restarting"
                         % (index, pid, status))
        self._spawn(gen, index)

    def reload(self, options, ident):
        """Start a new generation with the new configuration, then retire the old one."""
        try:
            gen = self.prepare(options, ident)
        except (MTAError, OSError, ValueError) as e:
            msg = getattr(e, "message", None) or str(e)
            self.log.err(None, "SMTP daemon: configuration not reloaded, keeping the old "
                         "one: %s" % msg)
            return False
        old = self.current
        self.start(gen)
        if old is not None:
            self._signal(old, signal.SIGTERM)
            self.retired.append(old)
        self.options, self.ident = options, ident
        return True

    def _signal(self, gen, sig):
        for pid in list(gen.pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                gen.pids.pop(pid, None)

    def stop(self, wait=90.0):
        """SIGTERM every worker and wait (bounded) for them to finish their sessions."""
        self.stopping = True
        gens = [g for g in [self.current] + self.retired if g is not None]
        for g in gens:
            self._signal(g, signal.SIGTERM)
        deadline = time.monotonic() + wait
        while any(g.pids for g in gens) and time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.05)
                continue
            for g in gens:
                g.pids.pop(pid, None)
        for g in gens:
            self._signal(g, signal.SIGKILL)
        for socks in self.bound.values():
            for s in socks:
                s.close()
        self.bound.clear()


def _raise_nofile():
    """As many descriptors as the hard limit allows: 10,000 sessions need more than 1024."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
