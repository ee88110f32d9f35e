"""The SMTP side of the service: bind the listeners, fork the workers, keep them running.

Runs inside the long-running service (daemon.service, `sendmail -bd` / `-bD`):

- `SMTPMaster.prepare()` does what needs privilege or may fail, before a worker is
  replaced: the listeners (server.listeners; ports below 1024 need root), the user
  to run as, the shared connection limits (server.limits), the log file opened for
  keeps; and it has a child build one whole worker (the cf's rules, the policy's
  maps, the TLS context with its self-signed certificate made on first start, the
  AUTH password file), so a bad configuration is found while this process stays
  small (no asyncio, ssl or cryptography here: the idle daemon's memory). A failure
  raises MTAError with the reason.
- `start()` forks one worker; `tick()` adds workers while the sessions outnumber
  SCALE_SESSIONS per worker, up to `DaemonWorkers` (default: the number of CPUs, at
  most 4), and stops the extra ones after a minute without sessions. All workers
  accept on the same listening sockets. Each builds itself as root, then drops to
  the unprivileged user (RunAsUser; default the `pysendmail` user for the system
  instance, the instance directory's owner for a private one).
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
    """One configuration: its listening sockets, shared limits, and the workers running it."""

    def __init__(self, options, ident, specs, sockets, limits, uid, gid, user, count):
        self.options = options
        self.ident = ident
        self.specs = specs
        self.sockets = sockets        # [(spec, socket)]: every worker accepts on all of them
        self.limits = limits
        self.uid, self.gid, self.user = uid, gid, user
        self.count = count            # at most this many workers (DaemonWorkers)
        self.pids = {}                # pid -> worker index
        self.scaled_down = set()      # pids told to stop because the load went
        self.respawns = []
        self.last_spawn = 0.0
        self.idle_since = None


SCALE_SESSIONS = 4      # another worker when the sessions outnumber 4 per running worker
IDLE_RETIRE = 60.0      # extra workers stop after this long without any session


class SMTPMaster:
    def __init__(self, inv, layout, options, ident, log):
        self.inv = inv
        self.layout = layout
        self.options = options
        self.ident = ident
        self.log = log
        self.current = None
        self.retired = []             # older generations still finishing their sessions
        self.bound = {}               # (name, addr, port, family) -> socket
        self.stopping = False

    # -- preparing -------------------------------------------------------------------------
    def prepare(self, options=None, ident=None):
        """Everything that needs privilege or may fail, in this (root, light) process:
        the user to run as, the listeners, the shared limits; then a child builds a
        whole worker (cf, policy maps, TLS, AUTH) to prove the configuration works
        without this process importing any of it."""
        options = dict(self.options if options is None else options)
        ident = ident or self.ident
        from ..server import listeners as lst
        from ..server.limits import ConnectionLimits
        layout = self.layout
        count = _workers(options)
        uid, gid, user = run_as(options, layout)
        specs = lst.configured(self.inv.cf or layout.cf, self.inv.options.get("DaemonPortOptions"),
                               layout.system, warn=lambda m: self.log.warning(None, m))
        os.makedirs(layout.run_dir, 0o755, exist_ok=True)
        limits = ConnectionLimits(options, lock_dir=layout.run_dir)
        self._validate(options, ident, specs)
        sockets = []
        for spec in specs:
            key = (spec.name, spec.bind_address(), spec.port, spec.family)
            sock = self.bound.get(key)
            if sock is None:
                try:
                    sock = lst.bind(spec, 1)[0]
                except OSError as e:
                    if spec.optional:
                        self.log.warning(None, "daemon %s: cannot bind %s:%d: %s (optional, "
                                         "skipped)" % (spec.name, spec.bind_address(),
                                                       spec.port, e.strerror))
                        continue
                    raise MTAError("daemon %s: cannot bind %s port %d: %s" % (
                        spec.name, spec.bind_address(), spec.port, e.strerror), 71)
                self.bound[key] = sock
            sockets.append((spec, sock))
        self._give_queue(uid, gid)
        self.log.keep_open()
        return Generation(options, ident, specs, sockets, limits, uid, gid, user, count)

    def _build(self, gen_or_parts):
        """A whole worker (in a child process, still privileged)."""
        from ..delivery.router import RouteContext
        from ..server.worker import build
        options, ident, specs, limits, user = gen_or_parts
        ctx = RouteContext(self.layout, options, ident)
        return build(self.layout, options, ident, self.log, specs, limits, user,
                     self.inv.delivery_mode, self._poker(), ctx)

    def _validate(self, options, ident, specs):
        """Build a worker in a child and report what went wrong, if anything."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            status = 0
            try:
                signal.set_wakeup_fd(-1)
                self._build((options, ident, specs, None, "root"))
            except BaseException as e:
                status = 1
                text = getattr(e, "message", None) or "%s: %s" % (type(e).__name__, e)
                code = getattr(e, "status", EX_CONFIG)
                os.write(w, ("%d %s" % (code, text)).encode("utf-8", "replace")[:4000])
            os._exit(status)
        os.close(w)
        chunks = []
        while True:
            data = os.read(r, 4096)
            if not data:
                break
            chunks.append(data)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            text = b"".join(chunks).decode("utf-8", "replace")
            code, _, message = text.partition(" ")
            raise MTAError(message or "the SMTP worker could not be built (status %d)"
                           % status, int(code) if code.isdigit() else EX_CONFIG)

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

        def poke():
            from ..queue.maildrop import Maildrop
            Maildrop.poke(path)
        return poke

    # -- running ---------------------------------------------------------------------------
    def start(self, generation=None):
        """Start a generation with one worker; tick() adds more as sessions come."""
        gen = generation or self.prepare()
        self._spawn(gen, 0)
        self.current = gen
        names = ", ".join("%s %s:%d" % (spec.name, spec.bind_address(), spec.port)
                          for spec, _ in gen.sockets)
        self.log.info(None, "SMTP daemon: up to %d worker(s) as %s on %s" % (
            gen.count, gen.user, names))

    def _spawn(self, gen, index):
        gen.last_spawn = time.monotonic()
        pid = os.fork()
        if pid:
            gen.pids[pid] = index
            return
        status = 0
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            mine = [s for _, s in gen.sockets]
            for s in self.bound.values():
                if s not in mine:
                    s.close()                 # an older generation's port
            gen.limits.worker = index
            w = self._build((gen.options, gen.ident, gen.specs, gen.limits, gen.user))
            w.spool.files.share = (index, gen.count)    # the file pool shared out
            from ..server.worker import drop_privileges
            drop_privileges(gen.uid, gen.gid)
            _raise_nofile()
            w.serve(gen.sockets)
        except BaseException as e:
            try:
                self.log.err(None, "SMTP worker failed: %r" % (e,))
            except Exception:
                pass
            status = 1
        os._exit(status)

    def tick(self):
        """Called by the service's loop (at least once a second): one more worker while
        the sessions outnumber SCALE_SESSIONS per worker, up to DaemonWorkers; extra
        workers stop after IDLE_RETIRE seconds without sessions."""
        gen = self.current
        if gen is None or self.stopping:
            return
        now = time.monotonic()
        running = [p for p in gen.pids if p not in gen.scaled_down]
        sessions = gen.limits.sessions()
        if sessions > SCALE_SESSIONS * len(running) and len(running) < gen.count \
                and now - gen.last_spawn > 0.5:
            used = {gen.pids[p] for p in running}
            self._spawn(gen, min(i for i in range(gen.count) if i not in used))
        if sessions:
            gen.idle_since = None
        elif gen.idle_since is None:
            gen.idle_since = now
        elif now - gen.idle_since > IDLE_RETIRE and len(running) > 1:
            pid = max(running, key=lambda p: gen.pids[p])
            gen.scaled_down.add(pid)
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            gen.idle_since = now

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
        gen.limits.forget_worker(index)
        if pid in gen.scaled_down:
            gen.scaled_down.discard(pid)
            return
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
            keep = {id(s) for _, s in gen.sockets}
            for key, s in list(self.bound.items()):
                if id(s) not in keep:          # a listener the new cf no longer has
                    del self.bound[key]
                    s.close()
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
        for s in self.bound.values():
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
