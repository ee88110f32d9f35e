"""The long-running service: `sendmail -bD` (foreground, for systemd), `-bd` (detached),
or `-q30m` alone (a detached periodic queue runner, as in Sendmail).

It runs the pickup and queue-runner roles: it wakes when a submitter (or an SMTP
worker, after a commit) pokes the pickup socket (a datagram on <spool>/public/pickup)
and at least every queue interval, moves maildrop files into the queue and delivers
what is due. With -bd/-bD it also runs the SMTP daemon: daemon.smtp_master binds the
listeners and keeps the SMTP worker processes running (they drop privileges; this
loop stays root for queue runs and local delivery).

Queue runs happen in a child process, one at a time, so the loop keeps taking
submissions on the submit socket (cli.relay) while mail is delivered.

Signals: SIGTERM/SIGINT finish the current message and exit; SIGHUP re-reads the
configuration (a bad one is logged and the old one kept). Runs as root for the
system instance: local delivery must act as each recipient.
"""
import os
import select
import signal
import time

from ..errors import EX_OK, EX_OSERR, EX_TEMPFAIL, MTAError

RUNNER_LINGER = 5.0     # seconds a queue runner woken by submissions waits for more
RUNNER_GAP = 0.05       # seconds at least from the start of one pass to the next: under a
# stream of SMTP commits (a wake-up each), a pass takes what came meanwhile together


def _interval(inv, options):
    from ..config.options import parse_interval
    text = inv.queue_interval or options.get("QueueInterval") or "30m"
    try:
        return max(parse_interval(text, "m"), 1)
    except ValueError:
        return 1800


class Service:
    def __init__(self, inv, layout, options, ident, log):
        self.inv = inv
        self.layout = layout
        self.options = options
        self.ident = ident
        self.log = log
        self.interval = _interval(inv, options)
        self.stop = False
        self.reload = False
        self.sock = None
        self.runner = 0          # pid of the queue-run child, 0 when none runs
        self.runner_pipe = None  # its wake-up pipe when it lingers (run_once)
        self.rerun = False
        self.submitters = set()  # pids of children serving other users' submissions
        self.smtp = None         # daemon.smtp_master.SMTPMaster with -bd/-bD
        self.smtp_generation = None

    def prepare_smtp(self):
        """-bd/-bD: bind the SMTP listeners and load what the workers need, before the
        service detaches, so that a bad configuration is told to whoever started it."""
        from .smtp_master import SMTPMaster
        self.smtp = SMTPMaster(self.inv, self.layout, self.options, self.ident, self.log)
        self.smtp_generation = self.smtp.prepare()

    def _bind(self):
        import _socket
        from ..queue.maildrop import short_socket_path
        path = self.layout.pickup_socket
        os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        with short_socket_path(path) as usable:
            s.bind(usable)
        os.chmod(path, 0o666)
        s.setblocking(False)
        self.sock = s
        # The submit socket of cli.relay: stream; 0600 for a private instance (its owner
        # only), 0666 for the system instance (every local user; see daemon.submitd).
        path = self.layout.submit_socket
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        import socket
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            with short_socket_path(path) as usable:
                listener.bind(usable)
        finally:
            os.umask(old)
        if self.layout.system and os.geteuid() == 0:
            os.chmod(path, 0o666)
        listener.listen(64)
        listener.setblocking(False)
        self.listener = listener
        # Signals wake the select() at once (PEP 475 would otherwise resume it).
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)

    def _write_pid(self):
        os.makedirs(self.layout.run_dir, 0o755, exist_ok=True)
        tmp = self.layout.pid_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % os.getpid())
        os.rename(tmp, self.layout.pid_file)

    def _on_signal(self, signum, frame):
        if signum == signal.SIGHUP:
            self.reload = True
        else:
            self.stop = True

    def _reload(self):
        from ..config import identity, options as optmod
        self._release_runner()          # a lingering runner has the old settings
        try:
            cf = optmod.read_quick(self.inv.cf or self.layout.cf)
            options = dict(cf.options)
            options.update(self.inv.options)
            ident = identity.detect(cf)
            if self.smtp is not None and not self.smtp.reload(options, ident):
                return
            self.options = options
            self.ident = ident
            self.interval = _interval(self.inv, options)
            self.log.info(None, "restarting %s due to signal" % (self.inv.cf or self.layout.cf))
        except MTAError as e:
            self.log.err(None, "configuration not reloaded, keeping the old one: %s" % e.message)

    def run_once(self, linger=False):
        """Start a queue run in a child process (as Sendmail does), so that the loop stays
        free to take submissions; at most one runs at a time. A run woken by a submitter
        (`linger`) stays for RUNNER_LINGER seconds after its pass, and each later wake-up
        (a byte on its pipe) starts another pass in the same process: under a stream of
        SMTP commits the cf's rules are loaded once, not once per pass (~0.1 s each).
        Otherwise a wake-up during a run is remembered and served when it ends."""
        if self.runner:
            if self.runner_pipe is not None:
                try:
                    os.write(self.runner_pipe, b"W")
                except OSError:
                    pass                # full: a wake-up is pending anyway
            else:
                self.rerun = True
            return
        r = w = None
        if linger:
            r, w = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(w, False)
        pid = os.fork()
        if pid:
            self.runner = pid
            if r is not None:
                os.close(r)
                self.runner_pipe = w
            return
        status = 0
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            if w is not None:
                os.close(w)
            from ..qmgr.queuerun import QueueRun
            # One process unless MaxRunnersPerQueue says more: the service's runs share
            # the CPUs with the SMTP workers, whose accepting comes first.
            runners = None if self.options.get("MaxRunnersPerQueue") else 1
            from ..profiling import profiled
            qrun = QueueRun(self.layout, self.options, self.ident, self.log)
            with profiled("runner"):
                while True:
                    started = time.monotonic()
                    qrun.run(force=False, runners=runners)
                    if r is None:
                        break
                    ready, _, _ = select.select([r], [], [], RUNNER_LINGER)
                    if not ready or not os.read(r, 4096):
                        break           # nothing more to do, or the service closed the pipe
                    pause = started + RUNNER_GAP - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
        except BaseException as e:
            self.log.err(None, "queue run failed: %r" % (e,))
            status = 1
        os._exit(status)

    def _release_runner(self):
        """Tell a lingering runner to end after its pass (EOF on its pipe)."""
        if self.runner_pipe is not None:
            try:
                os.close(self.runner_pipe)
            except OSError:
                pass
            self.runner_pipe = None

    def _reap(self):
        """Reap every child that ended (queue runs, and anything else forked)."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.runner = 0
                break
            if pid == 0:
                break
            self.submitters.discard(pid)
            if self.smtp is not None and self.smtp.owns(pid):
                self.smtp.reaped(pid, os.waitstatus_to_exitcode(_))
                continue
            if pid == self.runner:
                self.runner = 0
                self._release_runner()
                if self.rerun:
                    self.rerun = False
                    self.run_once(linger=True)

    def _serve_submissions(self):
        """Take every pending connection on the submit socket, one after the other."""
        import socket
        import struct
        from .submitd import handle
        while True:
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                return
            if self._peer_is_other(conn):
                self._serve_in_child(conn, handle)
                continue
            try:
                # Blocking, as the submission role reads it with os.read; a stalled
                # client times out after 5 minutes (SO_RCVTIMEO) instead of hanging us.
                conn.setblocking(True)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 300, 0))
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 300, 0))
                handle(conn, self.layout, self.options, self.ident, self.log)
            except OSError as e:
                self.log.warning(None, "submit socket: %s" % e)
            finally:
                conn.close()

    @staticmethod
    def _peer_is_other(conn):
        from .submitd import peer_uid
        try:
            return peer_uid(conn) != os.geteuid()
        except OSError:
            return True

    def _serve_in_child(self, conn, handle):
        """Another user's submission is served by a child: a stalled peer delays nobody.
        At most MaxDaemonChildren (default 40) at once; past that the connection is closed
        before anything is read, and the command submits through the maildrop instead."""
        import socket
        import struct
        try:
            limit = int(self.options.get("MaxDaemonChildren") or 40)
        except ValueError:
            limit = 40
        if limit > 0 and len(self.submitters) >= limit:
            conn.close()
            return
        pid = os.fork()
        if pid:
            self.submitters.add(pid)
            conn.close()
            return
        status = 0
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            self.listener.close()
            conn.setblocking(True)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 300, 0))
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 300, 0))
            handle(conn, self.layout, self.options, self.ident, self.log)
        except BaseException as e:
            self.log.warning(None, "submit socket: %r" % (e,))
            status = 1
        os._exit(status)

    def serve(self):
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)   # wakes select()
        self._bind()
        if self.smtp is not None:
            self.smtp.start(self.smtp_generation)
            self.smtp_generation = None
        self._write_pid()
        self.log.info(None, "starting daemon (pysendmail): queueing@%ds" % self.interval)
        next_run = 0
        try:
            while not self.stop:
                self._reap()
                if self.reload:
                    self.reload = False
                    self._reload()
                if self.smtp is not None:
                    self.smtp.tick()
                now = time.monotonic()
                woke = poked = False
                if now >= next_run:
                    woke = True
                else:
                    try:
                        ready, _, _ = select.select([self.sock, self.wake_r, self.listener],
                                                    [], [], min(next_run - now,
                                                                1 if self.smtp else 5))
                    except InterruptedError:
                        continue
                    if self.wake_r in ready:
                        try:
                            while os.read(self.wake_r, 64):
                                pass
                        except BlockingIOError:
                            pass
                        ready = [r for r in ready if r is not self.wake_r]
                        if self.stop or self.reload:
                            continue
                    if self.listener in ready:
                        self._serve_submissions()
                        ready = [r for r in ready if r is not self.listener]
                    if ready:
                        try:
                            while self.sock.recv(64):
                                pass
                        except (BlockingIOError, InterruptedError):
                            pass
                        woke = poked = True
                if woke and not self.stop:
                    self.run_once(linger=poked)
                    if time.monotonic() >= next_run:
                        next_run = time.monotonic() + self.interval
        finally:
            if self.smtp is not None:
                self.smtp.stop()
            self._release_runner()
            if self.runner:
                try:
                    os.waitpid(self.runner, 0)      # let the current run finish its message
                except ChildProcessError:
                    pass
            for path in (self.layout.pickup_socket, self.layout.submit_socket):
                try:
                    os.unlink(path)
                except OSError:
                    pass
            try:
                os.unlink(self.layout.pid_file)
            except OSError:
                pass
            self.log.info(None, "stopping daemon, reason=signal")
        return EX_OK


def main(inv, layout, options, ident, log):
    svc = Service(inv, layout, options, ident, log)
    if layout.system and os.geteuid() != 0:
        os.write(2, b"sendmail: the daemon of the system instance must run as root\n")
        return 77
    foreground = inv.mode == "D" or options.get("QueueForeground")
    if inv.mode in ("d", "D"):
        try:
            svc.prepare_smtp()
        except MTAError as e:
            os.write(2, ("sendmail: %s\n" % e.message).encode("utf-8", "replace"))
            log.err(None, "daemon not started: %s" % e.message)
            return e.status
        except OSError as e:
            os.write(2, ("sendmail: cannot start the SMTP daemon: %s\n" % e).encode())
            log.err(None, "daemon not started: %s" % e)
            return EX_OSERR
    if not foreground:
        pid = os.fork()
        if pid:
            return EX_OK
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
    try:
        return svc.serve()
    except OSError as e:
        log.err(None, "daemon: %s" % e)
        return EX_OSERR if foreground else EX_TEMPFAIL
