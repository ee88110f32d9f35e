"""Connection limits of the SMTP daemon, shared by all its worker processes.

Options (Sendmail's names where Sendmail has them; 0 means no limit):

    MaxDaemonChildren        SMTP sessions at once, over all listeners and workers
    ConnectionRateThrottle   new connections per second, overall; past it a connection
                             waits for the next second before its greeting (Sendmail
                             sleeps the same way)
    ClientRate               connections per client address per ConnectionRateWindowSize
                             (default 60s): "421 4.3.2 Connection rate limit exceeded."
    ClientConn               sessions at once per client address:
                             "421 4.3.2 Too many open connections."

Workers are separate processes that accept on the same ports, so the counters live
in one anonymous shared mapping made before the workers are forked: a global slot and
a small open-addressing table keyed by a hash of the client address. Every update
happens under a POSIX record lock (fcntl), which the kernel drops if a worker dies
holding it; a worker that dies with sessions open is accounted for by the master
calling `forget_worker()`, so no count leaks.
"""
import fcntl
import mmap
import os
import struct
import time

SLOTS = 8192
PROBE = 8
# A client slot: key (8 bytes), open sessions, window start (s), connections in window.
_SLOT = struct.Struct("=Qiii")
# The global slot: open sessions, current second, connections in that second.
_GLOBAL = struct.Struct("=iii")
# Per-worker open-session counts (so a dead worker's sessions can be given back).
MAX_WORKERS = 64
_WORKER = struct.Struct("=i")
# AUTH failures per client address: key, window start (s), failures in the window.
AUTH_SLOTS = 4096
_AUTH = struct.Struct("=Qii")


def _key(addr):
    h = 1469598103934665603
    for b in addr.encode("ascii", "replace"):
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h or 1


class Refusal(Exception):
    def __init__(self, code, enhanced, text):
        super().__init__(text)
        self.code, self.enhanced, self.text = code, enhanced, text


class ConnectionLimits:
    def __init__(self, options, lock_dir=None):
        def num(name, default=0):
            try:
                return int(options.get(name) or default)
            except ValueError:
                return default
        from ..config.options import parse_interval
        self.max_sessions = num("MaxDaemonChildren")
        self.rate_throttle = num("ConnectionRateThrottle")
        self.client_rate = num("ClientRate")
        self.client_conn = num("ClientConn")
        try:
            self.window = max(parse_interval(options.get("ConnectionRateWindowSize") or "60s"), 1)
        except ValueError:
            self.window = 60
        size = _GLOBAL.size + MAX_WORKERS * _WORKER.size + SLOTS * _SLOT.size \
            + AUTH_SLOTS * _AUTH.size
        self.mem = mmap.mmap(-1, size)           # MAP_SHARED | MAP_ANONYMOUS: fork shares it
        self._base = _GLOBAL.size + MAX_WORKERS * _WORKER.size
        self._auth_base = self._base + SLOTS * _SLOT.size
        try:            # an unnamed file for the record lock (nothing to clean up)
            fd = os.open(lock_dir or "/tmp", os.O_TMPFILE | os.O_RDWR, 0o600)
        except (AttributeError, OSError):
            import tempfile
            fd, path = tempfile.mkstemp(prefix=".limits.", dir=lock_dir)
            os.unlink(path)
        self.lock_fd = fd
        self.worker = 0          # this process's index (set in each worker)

    # -- locking ------------------------------------------------------------------------------
    def _lock(self):
        fcntl.lockf(self.lock_fd, fcntl.LOCK_EX)

    def _unlock(self):
        fcntl.lockf(self.lock_fd, fcntl.LOCK_UN)

    def _find(self, key, create):
        for i in range(PROBE):
            at = self._base + ((key + i) % SLOTS) * _SLOT.size
            k, conns, start, count = _SLOT.unpack_from(self.mem, at)
            if k == key:
                return at, conns, start, count
            if create and (k == 0 or (conns <= 0 and start + 3600 < time.time())):
                _SLOT.pack_into(self.mem, at, key, 0, 0, 0)
                return at, 0, 0, 0
        return None

    # -- the interface -----------------------------------------------------------------------
    @property
    def active(self):
        return bool(self.max_sessions or self.rate_throttle or self.client_rate
                    or self.client_conn)

    def open(self, addr, now=None):
        """Account for a new session from `addr`. Returns the seconds to wait before the
        greeting (ConnectionRateThrottle), or raises Refusal. Without any limit set only
        the session count is kept (the master starts workers by it)."""
        now = int(now if now is not None else time.time())
        if not self.active:
            # Only this worker writes its own slot: no lock needed (sessions() sums them).
            w = _GLOBAL.size + self.worker * _WORKER.size
            _WORKER.pack_into(self.mem, w, _WORKER.unpack_from(self.mem, w)[0] + 1)
            return 0.0
        key = _key(addr)
        self._lock()
        try:
            sessions, second, in_second = _GLOBAL.unpack_from(self.mem, 0)
            if self.max_sessions and sessions >= self.max_sessions:
                raise Refusal(421, "4.3.2", "Too many concurrent SMTP connections; "
                              "please try again later")
            slot = self._find(key, True)
            if slot is not None:
                at, conns, start, count = slot
                if self.client_conn and conns >= self.client_conn:
                    raise Refusal(421, "4.3.2", "Too many open connections.")
                if now - start >= self.window:
                    start, count = now, 0
                if self.client_rate and count >= self.client_rate:
                    raise Refusal(421, "4.3.2", "Connection rate limit exceeded.")
                _SLOT.pack_into(self.mem, at, key, conns + 1, start, count + 1)
            wait = 0.0
            if second != now:
                second, in_second = now, 0
            in_second += 1
            if self.rate_throttle and in_second > self.rate_throttle:
                wait = float((in_second - 1) // self.rate_throttle)
            _GLOBAL.pack_into(self.mem, 0, sessions + 1, second, in_second)
            w = _GLOBAL.size + self.worker * _WORKER.size
            _WORKER.pack_into(self.mem, w, _WORKER.unpack_from(self.mem, w)[0] + 1)
            return wait
        finally:
            self._unlock()

    def close(self, addr):
        if not self.active:
            w = _GLOBAL.size + self.worker * _WORKER.size
            _WORKER.pack_into(self.mem, w, max(_WORKER.unpack_from(self.mem, w)[0] - 1, 0))
            return
        key = _key(addr)
        self._lock()
        try:
            sessions, second, in_second = _GLOBAL.unpack_from(self.mem, 0)
            _GLOBAL.pack_into(self.mem, 0, max(sessions - 1, 0), second, in_second)
            w = _GLOBAL.size + self.worker * _WORKER.size
            _WORKER.pack_into(self.mem, w, max(_WORKER.unpack_from(self.mem, w)[0] - 1, 0))
            slot = self._find(key, False)
            if slot is not None:
                at, conns, start, count = slot
                _SLOT.pack_into(self.mem, at, key, max(conns - 1, 0), start, count)
        finally:
            self._unlock()

    def sessions(self):
        """Open sessions over all workers (with limits set, the locked global count;
        without, the sum of the workers' own counts)."""
        if self.active:
            return _GLOBAL.unpack_from(self.mem, 0)[0]
        return sum(_WORKER.unpack_from(self.mem, _GLOBAL.size + i * _WORKER.size)[0]
                   for i in range(MAX_WORKERS))

    def forget_worker(self, index):
        """The master: worker `index` died; give back the sessions it held. Which clients
        they came from is not known here, so every client's open-session count starts
        from zero again (ClientConn is looser for a while after a crash, never stuck)."""
        self._lock()
        try:
            w = _GLOBAL.size + index * _WORKER.size
            lost = _WORKER.unpack_from(self.mem, w)[0]
            _WORKER.pack_into(self.mem, w, 0)
            sessions, second, in_second = _GLOBAL.unpack_from(self.mem, 0)
            _GLOBAL.pack_into(self.mem, 0, max(sessions - lost, 0), second, in_second)
            if lost:
                for i in range(SLOTS):
                    at = self._base + i * _SLOT.size
                    k, conns, start, count = _SLOT.unpack_from(self.mem, at)
                    if k:
                        _SLOT.pack_into(self.mem, at, k, 0, start, count)
        finally:
            self._unlock()


class SharedAuthThrottle:
    """AUTH failures per client address, counted over all workers (the same interface as
    server.auth.AuthThrottle): after `max_failures` in `window` seconds a client may not
    try again until the window has passed."""

    def __init__(self, limits, max_failures=3, window=300):
        self.limits = limits
        self.max_failures = max_failures
        self.window = int(window)

    def _slot(self, addr, create):
        mem, key = self.limits.mem, _key(addr)
        now = int(time.time())
        for i in range(PROBE):
            at = self.limits._auth_base + ((key + i) % AUTH_SLOTS) * _AUTH.size
            k, start, count = _AUTH.unpack_from(mem, at)
            if k == key:
                if now - start >= self.window:
                    start, count = now, 0
                return at, key, start, count
            if create and (k == 0 or now - start >= self.window):
                return at, key, now, 0
        return None

    def allowed(self, addr):
        slot = self._slot(addr, False)
        return slot is None or slot[3] < self.max_failures

    def failed(self, addr):
        lim = self.limits
        lim._lock()
        try:
            slot = self._slot(addr, True)
            if slot is not None:
                at, key, start, count = slot
                _AUTH.pack_into(lim.mem, at, key, start, count + 1)
        finally:
            lim._unlock()

    def succeeded(self, addr):
        lim = self.limits
        lim._lock()
        try:
            slot = self._slot(addr, False)
            if slot is not None:
                _AUTH.pack_into(lim.mem, slot[0], slot[1], int(time.time()), 0)
        finally:
            lim._unlock()
