"""The host status cache: what the last connection to each remote host gave (Sendmail's hoststat).

After a remote host fails (connection refused, timeout, 4xx greeting), messages for it
are not tried again until `Timeout.hoststatus` (default 30 minutes, as Sendmail) has
passed: they are deferred at once with the remembered error, so a dead MX does not
cost every queued message a connect timeout. A success clears the entry. The cache
lives in the instance's hoststat directory, one small file per host, written with
Sendmail's fields (mci.c's persistent host status):

    V0            version
    E<errno>      the Unix error of the connection (0: none)
    H<h_errno>    the resolver's error (0: none)
    S<sysexits>   the outcome (0 ok, 75 temporary, 69/68 permanent)
    D<status>     the enhanced status code (4.4.1)
    R<reply>      the peer's reply or our diagnostic ("421 4.3.2 Try later")
    U<time>       when it was recorded (epoch seconds)
    .             end

Files are named after the host (lower case; "[ip]" literals as given) in one flat
directory; a name that is not a plain host name is never used as a path. Writes go
through a temporary file and a rename (no fsync: losing a status costs one retry).

`sendmail -bh` (hoststat) lists the cache in Sendmail's format; `-bH` (purgestat)
empties it.
"""
import os
import time

OK, TEMPFAIL = 0, 75
DEFAULT_TIMEOUT = 1800

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_[]:")


def _file_name(host):
    name = host.strip().lower().rstrip(".")
    if not name or name in (".", "..") or not set(name) <= _NAME_CHARS or len(name) > 255:
        return None
    return name.replace(":", "_")       # IPv6 literals: no colons in file names


class HostStatus:
    __slots__ = ("host", "errno", "herrno", "exitstat", "status", "reply", "updated")

    def __init__(self, host, exitstat=OK, status="", reply="", errno=0, herrno=0,
                 updated=0):
        self.host = host
        self.exitstat = exitstat
        self.status = status
        self.reply = reply
        self.errno = errno
        self.herrno = herrno
        self.updated = updated

    @property
    def failed(self):
        return self.exitstat != OK

    def encode(self):
        def clean(text):
            return " ".join(text.split())[:200]
        lines = ["V0", "E%d" % self.errno, "H%d" % self.herrno, "S%d" % self.exitstat]
        if self.status:
            lines.append("D" + clean(self.status))
        if self.reply:
            lines.append("R" + clean(self.reply))
        lines += ["U%d" % self.updated, "."]
        return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")

    @classmethod
    def decode(cls, host, data):
        st = cls(host)
        ended = False
        for line in data.decode("utf-8", "surrogateescape").splitlines():
            key, value = line[:1], line[1:]
            try:
                if key == "E":
                    st.errno = int(value)
                elif key == "H":
                    st.herrno = int(value)
                elif key == "S":
                    st.exitstat = int(value)
                elif key == "D":
                    st.status = value
                elif key == "R":
                    st.reply = value
                elif key == "U":
                    st.updated = int(value)
                elif key == ".":
                    ended = True
            except ValueError:
                return None
        return st if ended else None


class HostStatusCache:
    """Host statuses in `directory` (created 0700 on the first write)."""

    def __init__(self, directory, timeout=DEFAULT_TIMEOUT):
        self.directory = directory
        self.timeout = timeout
        self._memo = {}

    def _path(self, host):
        name = _file_name(host)
        return None if name is None else os.path.join(self.directory, name)

    def read(self, host):
        path = self._path(host)
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        return HostStatus.decode(host, data)

    def failed_recently(self, host, now=None):
        """The host's failure status if it failed less than `timeout` seconds ago."""
        if self.timeout <= 0:
            return None
        now = time.time() if now is None else now
        st = self._memo.get(host.lower())
        if st is None:
            st = self.read(host)
        if st is None or not st.failed or now - st.updated >= self.timeout:
            return None
        return st

    def record(self, status):
        """Remember `status` (a HostStatus). A success over a success is not rewritten."""
        key = status.host.lower()
        old = self._memo.get(key)
        self._memo[key] = status
        if not status.failed and (old is None or not old.failed) and self.read(status.host) is None:
            return
        path = self._path(status.host)
        if path is None:
            return
        try:
            os.makedirs(self.directory, 0o700, exist_ok=True)
            tmp = "%s.%d.tmp" % (path, os.getpid())
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, status.encode())
            finally:
                os.close(fd)
            os.rename(tmp, path)
        except OSError:
            pass        # a status not kept costs one more attempt, nothing else

    def entries(self):
        """Every readable status, by host name."""
        out = []
        try:
            names = sorted(os.listdir(self.directory))
        except OSError:
            return out
        for name in names:
            if name.endswith(".tmp"):
                continue
            host = name.replace("_", ":")
            st = self.read(host)
            if st is not None:
                out.append(st)
        return out

    def purge(self):
        """Forget every status (purgestat). Returns how many were removed."""
        n = 0
        try:
            names = os.listdir(self.directory)
        except OSError:
            return 0
        for name in names:
            try:
                os.unlink(os.path.join(self.directory, name))
                n += 1
            except OSError:
                pass
        self._memo.clear()
        return n


def _ago(seconds):
    """Sendmail's pintvl(…, brief): "00:05:12" or "2+03:00:00"."""
    seconds = max(int(seconds), 0)
    days, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    text = "%02d:%02d:%02d" % (h, m, s)
    return "%d+%s" % (days, text) if days else text


def format_listing(cache, now=None, verbose=False):
    """`hoststat`'s output, as Sendmail's mci_print_persistent writes it."""
    now = time.time() if now is None else now
    entries = cache.entries()
    if not entries:
        return "Host status directory empty\n" if os.path.isdir(cache.directory) else \
            "Host status directory not configured\n"
    width = 78 if verbose else 25
    lines = [" -------------- Hostname --------------- How long ago ---------Results---------"]
    for st in entries:
        if st.reply:
            result = st.reply[:width]
        elif st.exitstat == TEMPFAIL and st.errno:
            result = "Deferred: " + os.strerror(st.errno)[:width - 10]
        elif st.exitstat:
            result = "Unknown mailer error %d" % st.exitstat
        else:
            result = "OK"
        lines.append(" %-39s %12s %s" % (st.host, _ago(now - st.updated), result))
    return "\n".join(lines) + "\n"
