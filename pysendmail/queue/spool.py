"""The spool: the one durable hand-off between roles.

Layout of `<spool>/queue/` (Sendmail's names, so sysadmins recognise them):
    dfID    the message body, written once, never changed
    tfID    a control file being written (state: incoming)
    qfID    the control file of a queued message (ready, or deferred until its W time)
    hfID    the control file of a held (quarantined) message
    QfID    a control file that failed to parse, set aside for a person (lost)
    jfID.N  a delivery journal entry for recipient N (see delivery.journal)

Commit protocol (OpenSMTPD queue_fs.c, Postfix mail_queue.c): write dfID and
fsync it; write tfID, fsync it, rename it to qfID, fsync the directory. Only
then may the caller hear success. Every later rewrite of a control file goes
through the same tf -> rename -> fsync-dir step, so a crash leaves either the
old or the new file, never a torn one.

A message is locked by an exclusive flock on its dfID (which is never
replaced), so two queue runs never deliver the same message. The lock dies
with its process: `kill -9` frees it.

Finished messages' files are recycled rather than unlinked: `remove()` moves them
into `<spool>/pool/` (beside the queue, same file system; queue/pool.py), and
`allocate()`, the SMTP daemon's control files and Maildir deliveries take one out.
A recycled file keeps its bytes: its taker overwrites it from the start and cuts it
to length, so its blocks are reused rather than freed and allocated again (freeing a
block costs ten times a write over it here). The pool belongs to the queue's owner
(0700), who may read the queue anyway. Creating a file costs an inode allocation, and
on ext4 without a journal (this project's test machine) the allocator skips every
inode freed in the last minutes, so a busy queue that deletes a message per message
makes each creation slower; a rename costs neither. A recycled file is checked like
a new one (regular, one link, ours).

A message that cannot be queued gives EX_CANTCREAT (73), never EX_TEMPFAIL: PHP's
mail() takes 75 for "queued, will retry", which would lose the message silently.

Imports only os/fcntl/time: submission goes through here on every message.
"""
import errno
import fcntl
import os
import time

from ..errors import EX_CANTCREAT, QueueError
from . import qfile

QUEUE_ID_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwx"
STATE_PREFIX = {"qf": "queued", "hf": "held", "tf": "incoming", "Qf": "lost"}


def make_qid(now, pid, seq):
    """A Sendmail-style queue id: year, month, day, hour, minute, second, two
    sequence characters, then the pid in six digits (e.g. 6AQEjQR0019689)."""
    t = time.gmtime(now)
    c = QUEUE_ID_CHARS
    return "%s%s%s%s%s%s%s%s%06d" % (
        c[(t.tm_year - 1900) % 60], c[t.tm_mon - 1], c[t.tm_mday], c[t.tm_hour],
        c[t.tm_min], c[t.tm_sec], c[(seq // 60) % 60], c[seq % 60], pid % 1000000)


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_syncfs = None


def syncfs_function():
    """libc's syncfs(2) (flush one file system, given an fd on it) through ctypes, or
    None where it does not exist. Loaded on first use (ctypes costs ~5 ms)."""
    global _syncfs
    if _syncfs is None:
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.syncfs
            fn.argtypes = [ctypes.c_int]
            fn.restype = ctypes.c_int

            def call(fd, fn=fn, ctypes=ctypes):
                if fn(fd) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            _syncfs = call
        except (OSError, AttributeError):
            _syncfs = False
    return _syncfs or None


def write_durably(path, data, mode=0o600):
    """Write bytes to `path` through a temp file, fsync, rename, fsync the directory."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, ".tmp.%d.%s" % (os.getpid(), name))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    fsync_dir(directory)


class Spool:
    """One spool directory. All paths and file operations on the queue go through here."""

    def __init__(self, path, use_pool=False):
        self.path = path
        self.use_pool = use_pool   # allocate() from the pool (long-running processes: the
        # SMTP workers; a one-shot command would pay a listing of the pool for one file)
        self._dir = os.path.join(path, "")      # "path/": the files' names go after it
        self._files = None

    @property
    def files(self):
        """The FilePool beside this queue (queue/pool.py), made on first use: a
        submission (cron, PHP) never recycles a file, so it does not import it."""
        if self._files is None:
            from .pool import FilePool
            self._files = FilePool(self.path)
        return self._files

    @property
    def pool(self):
        return self.files.path

    # -- paths ---------------------------------------------------------------------------
    def df(self, qid):
        return self._dir + "df" + qid

    def qf(self, qid):
        return self._dir + "qf" + qid

    def hf(self, qid):
        return self._dir + "hf" + qid

    def control_path(self, qid):
        """The qf or hf file of `qid`, whichever exists (None if neither)."""
        for path in (self.qf(qid), self.hf(qid)):
            if os.path.exists(path):
                return path
        return None

    def ensure(self, mode=0o700):
        if not os.path.isdir(self.path):
            try:
                os.makedirs(self.path, mode)
            except FileExistsError:
                pass
            except OSError as e:
                raise QueueError("cannot create queue directory %s: %s" % (self.path, e.strerror),
                                 EX_CANTCREAT)

    # -- submission ------------------------------------------------------------------------
    def allocate(self, now=None):
        """Create a new, locked dfID. Returns (qid, fd) with the fd open for writing at
        offset 0; from the pool (use_pool) it may hold old bytes: the writer calls
        pool.cut_to(fd, length) when done."""
        now = int(now if now is not None else time.time())
        pid = os.getpid()
        seq = int.from_bytes(os.urandom(2), "big") % 3600
        for _ in range(3600):
            qid = make_qid(now, pid, seq)
            fd = self.files.take(self.df(qid), keep=True) if self.use_pool else None
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
                return qid, fd
            try:
                fd = os.open(self.df(qid), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except FileExistsError:
                seq = (seq + 1) % 3600
                continue
            except OSError as e:
                raise QueueError("cannot create %s: %s" % (self.df(qid), e.strerror), EX_CANTCREAT)
            fcntl.flock(fd, fcntl.LOCK_EX)
            return qid, fd
        raise QueueError("no free queue id in %s" % self.path, EX_CANTCREAT)

    def commit(self, env, df_fd):
        """Make a message durable: fsync its body, write its control file (hfID for a
        message with a hold reason), fsync the directory. After this returns, and only
        then, may the submitter report success."""
        try:
            os.fsync(df_fd)
            self._write_control((self.hf if env.hold_reason else self.qf)(env.qid), env)
        except OSError as e:
            raise QueueError("cannot queue message: %s" % e.strerror, EX_CANTCREAT)

    def discard(self, qid, df_fd=None):
        """Remove a message that was never committed (or is finished)."""
        for path in (self.qf(qid), self.hf(qid), os.path.join(self.path, "tf" + qid), self.df(qid)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        if df_fd is not None:
            os.close(df_fd)

    # -- control files ------------------------------------------------------------------------
    def _write_control(self, path, env):
        tf = os.path.join(self.path, "tf" + env.qid)
        fd = os.open(tf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, qfile.dumps(env))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tf, path)
        fsync_dir(self.path)

    def save(self, env):
        """Durably replace the control file of a queued message (qf, or hf while held)."""
        path = self.hf(env.qid) if os.path.exists(self.hf(env.qid)) else self.qf(env.qid)
        self._write_control(path, env)

    def stamp(self, qid):
        """What identifies the current content of qid's control file (None if there is none)."""
        for path in (self.qf(qid), self.hf(qid)):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            return (path, st.st_ino, st.st_mtime_ns, st.st_size)
        raise FileNotFoundError(self.qf(qid))

    def load_stamped(self, qid):
        """(Envelope, stamp): load() and the stamp of the file it read (one open, one
        fstat and the reads: a queue run does this for every message it lists)."""
        for path in (self.qf(qid), self.hf(qid)):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            except OSError as e:
                if e.errno == errno.ELOOP:      # never read through a link in the queue
                    raise qfile.FormatError("%s is a symbolic link" % path)
                raise
            try:
                st = os.fstat(fd)
                chunks = []
                want = st.st_size + 1           # the +1 sees a file that grew meanwhile
                while True:
                    chunk = os.read(fd, want)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    want = 65536
            finally:
                os.close(fd)
            env = qfile.loads(b"".join(chunks))
            if path != self.qf(qid) and not env.hold_reason:
                env.hold_reason = "held"
            return env, (path, st.st_ino, st.st_mtime_ns, st.st_size)
        raise FileNotFoundError(self.qf(qid))

    def sweep_due(self, now, every=300):
        """Is it time for sweep_orphans (at most every `every` seconds; a marker file
        beside the queue remembers the last sweep)? Frequent queue runs then do not
        stat every file of the queue each time."""
        marker = os.path.join(os.path.dirname(self.path.rstrip("/")) or ".", ".swept")
        try:
            if now - os.stat(marker).st_mtime < every:
                return False
        except FileNotFoundError:
            pass
        except OSError:
            return True
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            os.close(fd)
            os.utime(marker, (now, now))
        except OSError:
            pass
        return True

    def load(self, qid):
        """The Envelope of `qid` (from qf or hf). Raises FileNotFoundError or qfile.FormatError."""
        return self.load_stamped(qid)[0]

    def remove(self, qid, nrcpts=None):
        """Forget a finished message: control file first (so a crash leaves an orphan df,
        which is harmless, never a qf without its body); its files go to the pool.
        `nrcpts`: its recipients, whose journals jfID.0.. are removed (else the
        directory is searched for them)."""
        if not self.files.recycle(self.qf(qid)):
            self.files.recycle(self.hf(qid))      # a held message has an hf instead
        if nrcpts is None:
            names = [n for n in os.listdir(self.path) if n.startswith("jf" + qid + ".")]
        else:
            names = ["jf%s.%d" % (qid, i) for i in range(nrcpts)]
        for name in names:
            try:
                os.unlink(os.path.join(self.path, name))
            except OSError:
                pass
        self.files.recycle(self.df(qid))
        # No directory sync: a removal lost in a power cut brings back the control file
        # as last saved; its recipients are tried again, and the agents' idempotence
        # (Maildir names, mbox journals) keeps mailbox deliveries from repeating.

    def hold(self, qid, reason):
        env = self.load(qid)
        env.hold_reason = reason or "held"
        self._write_control(self.hf(qid), env)
        try:
            os.unlink(self.qf(qid))
        except FileNotFoundError:
            pass
        fsync_dir(self.path)

    def release(self, qid):
        env = self.load(qid)
        env.hold_reason = ""
        self._write_control(self.qf(qid), env)
        try:
            os.unlink(self.hf(qid))
        except FileNotFoundError:
            pass
        fsync_dir(self.path)

    def set_aside(self, qid):
        """Rename an unreadable qf to Qf (Sendmail's 'lost' queue file)."""
        os.rename(self.qf(qid), os.path.join(self.path, "Qf" + qid))
        fsync_dir(self.path)

    # -- locking -----------------------------------------------------------------------------
    def lock(self, qid, block=False):
        """Lock message `qid` for delivery; returns the lock fd, or None if another
        process holds it or the message is gone."""
        try:
            fd = os.open(self.df(qid), os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def is_locked(self, qid):
        fd = self.lock(qid)
        if fd is None:
            return os.path.exists(self.df(qid))
        os.close(fd)
        return False

    # -- housekeeping ------------------------------------------------------------------------
    def sweep_orphans(self, now, grace=3600):
        """Remove what crashed processes left behind, once it is older than `grace`:
        a df with no control file and no lock holder (a submission killed before its
        commit), tf and .tmp files (control files never renamed), journals and pickup
        markers of messages that are gone. Returns the names removed."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        present = set(names)
        removed = []
        for name in names:
            path = os.path.join(self.path, name)
            try:
                age = now - os.lstat(path).st_mtime
            except FileNotFoundError:
                continue
            if age < grace:
                continue
            prefix, rest = name[:2], name[2:]
            orphan = False
            if prefix == "df":
                if "qf" + rest not in present and "hf" + rest not in present:
                    fd = self.lock(rest)
                    if fd is not None:          # nobody is writing it
                        os.close(fd)
                        orphan = True
            elif prefix == "tf" or name.startswith(".tmp.") or name.startswith(".dsn."):
                orphan = True
            elif prefix == "jf":
                qid = rest.rsplit(".", 1)[0]
                orphan = "df" + qid not in present
            elif prefix == "mf":
                orphan = True       # a pickup marker: live ones last seconds, not an hour
            if orphan:
                try:
                    os.unlink(path)
                    removed.append(name)
                except FileNotFoundError:
                    pass
        if removed:
            fsync_dir(self.path)
        return removed

    # -- listing -----------------------------------------------------------------------------
    def entries(self, include_held=True):
        """(qid, state) for every queued message, in directory order."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            prefix = name[:2]
            if prefix == "qf" or (include_held and prefix == "hf"):
                out.append((name[2:], STATE_PREFIX[prefix]))
        return out

    def body_size(self, qid):
        try:
            return os.stat(self.df(qid)).st_size
        except FileNotFoundError:
            return 0
