"""Appending one message to an mbox file (a /var/mail mailbox or a "/file" recipient).

Format: mboxo, what mail.local writes and Python's mailbox.mbox, mutt and Dovecot read:
a "From SENDER DATE" line, the message with every line starting with "From " written
as ">From ", and a blank line at the end. A mailbox whose last message lacks that
blank line gets one (or two newlines) first, so the new "From " line starts a message.

Locking, all held together while appending (so every reader's convention is honoured):
a dotlock PATH.lock holding "PID HOST" (made atomically by create_atomically:
O_TMPFILE then linkat, else a unique temporary name then link(), so it is never
empty; stale after 5 minutes, or at once when it names a process of this host that
is gone, as after a kill -9; skipped with a log line where the directory is not
writable to us), an fcntl lock (lockf: F_SETLK on the whole file) and a flock lock.
Each is tried without blocking and retried until a bounded deadline (option
Timeout.mailboxlock, 60 s); a mailbox that stays locked is a temporary failure (4.2.0).

Safety: the file is opened with O_NOFOLLOW (a symlink is refused) and checked through
fstat on the open descriptor: a regular file with exactly one link, plus the caller's
owner rule. After locking, the path must still name the same inode (a mail reader may
have replaced the file while we waited). A failed write is rolled back by truncating
to the original size, so a mailbox never holds half a message.

Exactly once: see journal.py. Under the locks, before anything else, the mailbox's
pending-append record is applied (journal.repair_pending: a torn append left by a
killed writer, of whichever message, is truncated away, so the next message never
lands behind it). Then, before writing, the append is described in the queue journal
(offset, pad, length, sha256, From_ stamp) and in the mailbox's pending record; the
record is removed once the append is fsync'd. On a retry with a journal: the full
bytes at that offset match -> already delivered; the file holds only a prefix of them
up to its end -> truncate to the offset and deliver again; anything else -> deliver
again (logged).
"""
import errno
import fcntl
import os
import stat
import time

from ..log import Channel
from ..model import DeliveryStatus
from .journal import StreamDigest, clear_pending, repair_pending, sha256, write_pending

log = Channel()

DOTLOCK_STALE = 300
_HOST = os.uname().nodename or "localhost"
CHUNK = 65536


class MailboxError(Exception):
    def __init__(self, status, reply):
        super().__init__(reply)
        self.status = DeliveryStatus(status, reply)


def fsync_dir(path):
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _status_for_oserror(e, what):
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DeliveryStatus("4.2.2", "%s: mailbox full: %s" % (what, e.strerror))
    return DeliveryStatus("4.3.0", "%s: %s" % (what, e.strerror or e))


# -- locks -------------------------------------------------------------------------------

def _stale(lock):
    """Why the dotlock `lock` is stale (older than 5 minutes, or ours from a process on
    this host that is gone, e.g. killed with -9), or None while it is valid."""
    st = os.lstat(lock)
    age = time.time() - st.st_mtime
    if age > DOTLOCK_STALE:
        return "%d s old" % age
    fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        fst = os.fstat(fd)
        content = os.read(fd, 256)
    finally:
        os.close(fd)
    if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
        return None
    pid, _, host = content.decode("ascii", "replace").strip().partition(" ")
    if host != _HOST or not pid.isdigit() or int(pid) <= 0:
        return None
    if _alive(int(pid)):
        return None
    cur = os.lstat(lock)
    if (cur.st_dev, cur.st_ino) == (st.st_dev, st.st_ino):
        return "process %s is gone" % pid
    return None


def _alive(pid):
    """Is process `pid` running? A zombie (killed, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            state = f.read(512).rpartition(b")")[2].split()[:1]
    except OSError:
        return True
    return state not in ([b"Z"], [b"X"])


def create_atomically(path, content=b"", mode=0o600, owner=None):
    """Create the file `path` (never replacing one) with its content, mode and owner
    (uid, gid) in one step: a process killed at any point leaves either no file or the
    finished one, never an empty or root-owned one. Linux: an unnamed O_TMPFILE file in
    the directory, linked to the name through /proc/self/fd (a process may always use
    its own fds there, also after dropping privileges); elsewhere a uniquely named
    temporary file linked to the name, then unlinked. FileExistsError if `path` exists."""
    directory = os.path.dirname(path) or "."
    tmpfile = getattr(os, "O_TMPFILE", 0)
    if tmpfile:
        try:
            fd = os.open(directory, tmpfile | os.O_WRONLY | os.O_CLOEXEC, mode)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            fd = None  # file system without O_TMPFILE
        if fd is not None:
            procfd = None
            try:
                _fill(fd, content, mode, owner)
                procfd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                # linkat(procfd, "N", AT_FDCWD, path, AT_SYMLINK_FOLLOW): the dir fd
                # makes Python use linkat with the flag (plain link() would not follow)
                os.link(str(fd), path, src_dir_fd=procfd, follow_symlinks=True)
                return
            except OSError as e:
                if isinstance(e, FileExistsError) or e.errno not in (
                        errno.ENOENT, errno.EXDEV, errno.EPERM, errno.EINVAL, errno.EACCES):
                    raise
            finally:
                os.close(fd)
                if procfd is not None:
                    os.close(procfd)
    tmp = "%s.%s.%d.%d.tmp" % (path, _HOST.replace("/", "_"), os.getpid(), time.monotonic_ns())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        _fill(fd, content, mode, owner)
        os.link(tmp, path)
    finally:
        os.close(fd)
        os.unlink(tmp)


def _fill(fd, content, mode, owner):
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view):]
    if owner is not None:
        os.fchown(fd, owner[0], owner[1])
    os.fchmod(fd, mode)


def _create_lock(lock):
    """Create `lock` holding "PID HOST" atomically (never an empty lock, which could
    only expire after 5 minutes). Raises FileExistsError if it exists."""
    create_atomically(lock, ("%d %s\n" % (os.getpid(), _HOST)).encode())


def _dotlock(path, deadline):
    """Create PATH.lock; returns its path, None when the directory does not let us
    (then only the kernel locks protect the file). Raises MailboxError on timeout."""
    lock = path + ".lock"
    while True:
        try:
            _create_lock(lock)
        except FileExistsError:
            try:
                why = _stale(lock)
                if why:
                    os.unlink(lock)
                    log.warning("removed stale lock %s (%s)", lock, why)
                    continue
            except FileNotFoundError:
                continue
            except OSError:
                pass
        except (PermissionError, OSError) as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                log.info("no dotlock for %s: %s", path, e.strerror)
                return None
            raise
        else:
            return lock
        if time.monotonic() >= deadline:
            raise MailboxError("4.2.0", "%s: mailbox is locked (dotlock)" % path)
        time.sleep(0.1)


def _kernel_locks(fd, path, deadline):
    for name, take in (("fcntl", lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)),
                       ("flock", lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB))):
        while True:
            try:
                take()
                break
            except (BlockingIOError, PermissionError):
                if time.monotonic() >= deadline:
                    raise MailboxError("4.2.0", "%s: mailbox is locked (%s)" % (path, name))
                time.sleep(0.05)


# -- bytes ---------------------------------------------------------------------------------

def _read_at(fd, offset, length):
    """Yield the file's bytes [offset, offset+length) in chunks (less at EOF)."""
    while length > 0:
        data = os.pread(fd, min(CHUNK, length), offset)
        if not data:
            return
        yield data
        offset += len(data)
        length -= len(data)


def _append_stream(pad, source, stamp):
    if pad:
        yield b"\n" * pad
    yield from source.chunks(mbox=True, stamp=stamp)


def _digest(chunks):
    h = sha256()
    n = 0
    for c in chunks:
        h.update(c)
        n += len(c)
    return n, h.hexdigest()


def _stream_digest(chunks):
    d = StreamDigest()
    for c in chunks:
        d.update(c)
    return d


def _is_prefix(fd, offset, size, expected_chunks):
    """Do the file's bytes from `offset` to EOF (`size`) equal the start of expected?"""
    want = size - offset
    got = _read_at(fd, offset, want)
    buf = b""
    for chunk in expected_chunks:
        if want <= 0:
            break
        chunk = chunk[:want]
        want -= len(chunk)
        while len(buf) < len(chunk):
            more = next(got, None)
            if more is None:
                return False
            buf += more
        if buf[:len(chunk)] != chunk:
            return False
        buf = buf[len(chunk):]
    return want == 0


def _pad_for(fd, size):
    if size == 0:
        return 0
    tail = os.pread(fd, 2, max(0, size - 2))
    if tail.endswith(b"\n\n") or tail == b"\n":
        return 0
    return 1 if tail.endswith(b"\n") else 2


def _write_all(fd, chunks):
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            n = os.write(fd, view)
            view = view[n:]


# -- the append ------------------------------------------------------------------------------

def _open(path, create_mode, check):
    flags = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if create_mode is None:
            raise MailboxError("4.3.0", "%s: mailbox does not exist" % path)
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, create_mode)
        except FileExistsError:
            fd = os.open(path, flags)
        else:
            fsync_dir(os.path.dirname(path))  # the new name survives a power cut too
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise MailboxError("5.2.0", "%s: is a symbolic link, not delivering" % path)
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise MailboxError("5.2.0", "%s: irregular file" % path)
        if st.st_nlink != 1:
            raise MailboxError("5.2.0", "%s: linked file (%d links)" % (path, st.st_nlink))
        problem = check(st) if check else None
        if problem:
            raise MailboxError("5.2.0", "%s: %s" % (path, problem))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def append(path, source, journal, check=None, create_mode=0o600, lock_timeout=60.0,
           now=None):
    """Append the message of `source` to the mbox file `path` exactly once.

    `check(stat_result)` returns a reason to refuse the file, or None. Returns a
    DeliveryStatus; never raises for mailbox trouble."""
    stamp = int(now if now is not None else time.time())
    deadline = time.monotonic() + lock_timeout
    fd = None
    lock = None
    try:
        for _ in range(5):
            fd, st = _open(path, create_mode, check)
            lock = _dotlock(path, deadline)
            _kernel_locks(fd, path, deadline)
            try:
                cur = os.lstat(path)
            except FileNotFoundError:
                cur = None
            if cur is not None and (cur.st_dev, cur.st_ino) == (st.st_dev, st.st_ino):
                break
            os.close(fd)  # replaced while we waited: start again on the new file
            fd = None
            if lock:
                os.unlink(lock)
                lock = None
        else:
            return DeliveryStatus("4.2.0", "%s: mailbox keeps being replaced" % path)
        st = os.fstat(fd)
        if st.st_nlink != 1:
            return DeliveryStatus("5.2.0", "%s: linked file" % path)
        repair_pending(fd, st, path)     # a torn append of ANY message goes first
        done = _replay(fd, st, path, source, journal)
        if done is not None:
            return done
        size = os.fstat(fd).st_size
        pad = _pad_for(fd, size)
        digest = _stream_digest(_append_stream(pad, source, stamp))
        length = digest.length
        journal.record({"P": path, "D": st.st_dev, "I": st.st_ino, "O": size, "A": pad,
                        "L": length, "H": digest.hexdigest(), "T": stamp})
        pending = write_pending(path, st, size, digest)
        try:
            _write_all(fd, _append_stream(pad, source, stamp))
            os.fsync(fd)
        except OSError as e:
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
                journal.discard()
                if pending:
                    clear_pending(path)
            except OSError as e2:
                log.error("%s: could not roll back a failed append: %s", path, e2)
            return _status_for_oserror(e, path)
        if pending:
            clear_pending(path)
        written = os.fstat(fd).st_size - size
        if written != length:
            log.error("%s: append wrote %d bytes, expected %d", path, written, length)
        return DeliveryStatus("2.0.0", "Delivered")
    except MailboxError as e:
        return e.status
    except OSError as e:
        return _status_for_oserror(e, path)
    finally:
        if fd is not None:
            os.close(fd)  # releases the fcntl and flock locks
        if lock:
            try:
                os.unlink(lock)
            except OSError:
                pass


def _replay(fd, st, path, source, journal):
    """Apply a journal left by an earlier attempt. Returns a status when the message
    is already in the mailbox, else None (after truncating a partial copy)."""
    entry = journal.load()
    if entry is None:
        return None
    if entry["P"] != path or (entry["D"], entry["I"]) != (st.st_dev, st.st_ino):
        log.warning("%s: journal names another file (%s); delivering again", path, entry["P"])
        return None
    size = st.st_size
    off, length = entry["O"], entry["L"]
    if size >= off + length:
        n, digest = _digest(_read_at(fd, off, length))
        if n == length and digest == entry["H"]:
            log.info("%s: message already appended at offset %d (journal)", path, off)
            return DeliveryStatus("2.0.0", "Delivered (already in mailbox)")
        log.warning("%s: bytes at offset %d do not match the journal; delivering again", path, off)
        return None
    if size <= off:
        return None
    if _is_prefix(fd, off, size, _append_stream(entry["A"], source, entry["T"])):
        log.warning("%s: removing a partial append of %d bytes at offset %d",
                    path, size - off, off)
        os.ftruncate(fd, off)
        os.fsync(fd)
        return None
    log.warning("%s: mailbox changed after a partial append at %d; delivering again", path, off)
    return None
