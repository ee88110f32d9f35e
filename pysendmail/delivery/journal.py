"""Exactly-once bookkeeping for local deliveries, and the child that delivers as a user.

Why: the queue runner may be killed (kill -9) at any point between "bytes appended to
a mailbox" and "recipient marked done in the qf". A retry must then neither deliver a
second copy nor leave half a message. Two mechanisms:

* Maildir (see maildir.py) needs no file here: the message file name carries the
  deterministic unique part "Q<qid>R<index>", so a retry sees the finished file in
  new/ or cur/ and stops.
* mbox and /file appends write a journal entry `<queue dir>/jf<QID>.<index>` durably
  (temp file, fsync, rename, fsync dir) under the mailbox lock, *before* appending.
  It holds the mailbox path, device and inode, the start offset, the blank-line pad,
  the length and the sha256 of the exact bytes to append, and the From_ time stamp
  (so the same bytes can be generated again). The replay rules live in mbox.append().
  The entry is deleted with the message (Spool.remove removes jf<QID>.*), or at once
  when an append failed and was rolled back. Limit: a mailbox that a mail reader
  rewrote between the crash and the retry no longer shows our bytes at the offset, so
  it gets a second copy: the rule errs towards a duplicate, never a loss.

Privilege separation: when the MTA runs as root, the mailbox and /file work happens
in a fork()ed child that has dropped to the recipient (setgroups, setgid, setuid) and
cannot regain root. The queue directory is root-only, so the child cannot write the
journal itself: it asks its parent over a pipe ("R <entry>" -> parent writes the
journal durably -> "K") and only appends after the answer. A child whose parent died
(EOF instead of "K") appends nothing. The final status travels back the same way.

Entry format (one "key value" per line, after "V pysendmail-jf 1", ending with "."):
P hex of the path bytes, D dev, I inode, O offset, A pad, L length, H sha256 hex, T stamp.

Pending-append record (one per mailbox, whichever message). The journal above only
helps the retry of the same message; when another message reaches the mailbox first
(a new submission, -odi, another queue entry), a torn append must still go before it
is buried. So the writer also records its append next to the mailbox, in
`<mailbox>.pysendmail-pending`, and EVERY writer reads that record under the mailbox
locks before it appends (repair_pending): mailbox size between offset and
offset+length and the bytes there a verified prefix of the recorded append -> truncate
to the offset (a torn append); anything else -> the record is only removed. The
writer removes its record once its append is fsync'd. Verification of a torn tail:
the recorded head (pad + From_ line) matches, every complete 16 KB block matches its
recorded CRC-32 (it detects other bytes; a forger would have to be the mailbox's
owner, who can rewrite the mailbox anyway), and the unverified rest holds no line
starting with "From " (our mbox stream has none after its From_ line). A record
is written (create O_EXCL, fsync, fsync dir) by the process that appends, i.e. the
recipient's uid (the child that dropped privileges): in /var/mail (root:mail 2775)
through the mail group, in a private mail directory as its owner. Security stance:
opened with O_NOFOLLOW, used only if a regular single-link file owned by the same
uid and naming the open mailbox's device and inode (else it is removed: unlink never
follows a symlink); 0600. Where the directory is not writable (a /file recipient in a
foreign directory) there is no record, and only the same message's retry repairs.
Record format: "V pysendmail-pending 1", then D dev, I inode, O offset, L length,
B block size, F hex of the head, K comma-separated block CRC-32s (8 hex), ".".
"""
import errno
import os
from zlib import crc32           # built in; 10x faster than _sha256 for the block sums

try:
    from _sha256 import sha256   # hashlib would load OpenSSL (start-up cost)
except ImportError:              # a CPython built without its own hashes
    from hashlib import sha256

from ..log import Channel
from ..model import DeliveryStatus
from ..queue.spool import fsync_dir, write_durably

log = Channel()

VERSION = "pysendmail-jf 1"
_INT_KEYS = ("D", "I", "O", "A", "L", "T")
_KEYS = ("P",) + _INT_KEYS + ("H",)


def encode_entry(entry):
    """The journal entry as bytes (without the version line)."""
    out = []
    for key in _KEYS:
        value = entry[key]
        if key == "P":
            value = os.fsencode(value).hex()
        out.append("%s %s" % (key, value))
    return "\n".join(out).encode("ascii")


def decode_entry(data):
    """Parse what encode_entry() wrote; None if it is not a complete, valid entry."""
    entry = {}
    try:
        for line in data.decode("ascii").split("\n"):
            if not line or line == "." or line.startswith("V "):
                continue
            key, _, value = line.partition(" ")
            if key == "P":
                entry[key] = os.fsdecode(bytes.fromhex(value))
            elif key in _INT_KEYS:
                entry[key] = int(value)
            elif key == "H":
                entry[key] = value
    except (ValueError, UnicodeDecodeError):
        return None
    return entry if all(k in entry for k in _KEYS) else None


class Journal:
    """The journal entry of one (message, recipient) in the queue directory."""

    def __init__(self, queue_dir, qid, index):
        self.queue_dir = queue_dir
        self.path = os.path.join(queue_dir, "jf%s.%d" % (qid, index))

    def load(self):
        """The recorded entry (a dict) or None. A torn file cannot exist (rename commit)."""
        try:
            with open(self.path, "rb") as f:
                data = f.read(65536)
        except FileNotFoundError:
            return None
        if not data.startswith(("V " + VERSION + "\n").encode()) or not data.endswith(b"\n.\n"):
            return None
        return decode_entry(data)

    def record(self, entry):
        """Durably store `entry`; returns only once it is on disk."""
        write_durably(self.path, ("V " + VERSION + "\n").encode() + encode_entry(entry) + b"\n.\n")

    def discard(self):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        fsync_dir(self.queue_dir)


class NullJournal:
    """For deliveries that need none (Maildir)."""

    def load(self):
        return None

    def record(self, entry):
        pass

    def discard(self):
        pass


class _ChildJournal:
    """The journal as seen from the unprivileged child: requests go to the parent."""

    def __init__(self, loaded, wfd, rfile):
        self._loaded = loaded
        self._wfd = wfd
        self._rfile = rfile

    def load(self):
        return self._loaded

    def _ask(self, line):
        _write_all(self._wfd, line + b"\n")
        answer = self._rfile.readline()
        if answer != b"K\n":
            raise OSError("journal not written by parent: %r" % answer[:200])

    def record(self, entry):
        self._ask(b"R " + encode_entry(entry).replace(b"\n", b"\t"))
        self._loaded = dict(entry)

    def discard(self):
        self._ask(b"D")


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _drop(creds):
    uid, gid, groups = creds
    os.setgroups(list(groups))
    os.setgid(gid)
    os.setuid(uid)
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise OSError("could not drop root privileges")
    if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid:
        raise OSError("privilege drop to %d:%d failed" % (uid, gid))


def run_as(creds, fn, journal):
    """Run fn(journal_like) -> DeliveryStatus in a child with `creds` = (uid, gid, groups).

    The parent serves the child's journal requests and returns the child's status; a
    child that died without a status gives a temporary failure."""
    loaded = journal.load()
    c2p_r, c2p_w = os.pipe()
    p2c_r, p2c_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into the caller's code
        code = 0
        try:
            os.close(c2p_r)
            os.close(p2c_w)
            rfile = os.fdopen(p2c_r, "rb", buffering=0)
            try:
                _drop(creds)
                status = fn(_ChildJournal(loaded, c2p_w, rfile))
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                status = DeliveryStatus("4.3.0", "local delivery error: %s" % e)
            reply = status.reply.replace("\n", " ").encode("utf-8", "replace")
            _write_all(c2p_w, b"S " + status.status.encode() + b" " + reply + b"\n")
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(c2p_w)
    os.close(p2c_r)
    status = None
    try:
        with os.fdopen(c2p_r, "rb") as rfile:
            for line in rfile:
                if line.startswith(b"S "):
                    code, _, text = line[2:].rstrip(b"\n").partition(b" ")
                    status = DeliveryStatus(code.decode("ascii", "replace"),
                                            text.decode("utf-8", "replace"))
                    break
                answer = b"K\n"
                try:
                    if line.startswith(b"R "):
                        entry = decode_entry(line[2:].rstrip(b"\n").replace(b"\t", b"\n"))
                        if entry is None:
                            raise ValueError("bad journal entry from child")
                        journal.record(entry)
                    elif line == b"D\n":
                        journal.discard()
                    else:
                        raise ValueError("bad request from child")
                except (OSError, ValueError) as e:
                    answer = b"E " + str(e).encode("utf-8", "replace")[:200] + b"\n"
                try:
                    _write_all(p2c_w, answer)
                except BrokenPipeError:
                    break
    finally:
        os.close(p2c_w)
        os.waitpid(pid, 0)
    if status is None:
        status = DeliveryStatus("4.3.0", "local delivery process died")
    return status


# -- the per-mailbox pending-append record ---------------------------------------------------

PENDING_SUFFIX = ".pysendmail-pending"
PENDING_VERSION = b"V pysendmail-pending 1\n"
HEAD_MAX = 1024
_MAX_RECORD = 1 << 20


BLOCK = 16384      # 9 bytes of record per 16 KB appended


class StreamDigest:
    """One pass over the bytes to append: length, sha256, head (pad + From_ line) and
    the CRC-32 of every complete block."""

    def __init__(self, block=BLOCK):
        self.block = block
        self.length = 0
        self.blocks = []
        self.head = b""
        self._head_done = False
        self._full = sha256()
        self._cur = 0
        self._fill = 0

    def update(self, data):
        self._full.update(data)
        if not self._head_done:
            start = len(self.head)
            self.head += data[:HEAD_MAX - start]
            body = self.head.lstrip(b"\n")
            nl = body.find(b"\n")
            if nl >= 0:
                self.head = self.head[:len(self.head) - len(body) + nl + 1]
                self._head_done = True
            elif len(self.head) >= HEAD_MAX:
                self._head_done = True
        self.length += len(data)
        view = memoryview(data)
        while view:
            take = min(len(view), self.block - self._fill)
            self._cur = crc32(view[:take], self._cur)
            self._fill += take
            view = view[take:]
            if self._fill == self.block:
                self.blocks.append("%08x" % self._cur)
                self._cur = 0
                self._fill = 0

    def hexdigest(self):
        return self._full.hexdigest()


def pending_path(mailbox):
    return mailbox + PENDING_SUFFIX


def _encode_pending(rec):
    lines = [b"D %d" % rec["D"], b"I %d" % rec["I"], b"O %d" % rec["O"], b"L %d" % rec["L"],
             b"B %d" % rec["B"], b"F " + rec["F"].hex().encode(),
             b"K " + ",".join(rec["K"]).encode()]
    return PENDING_VERSION + b"\n".join(lines) + b"\n.\n"


def _decode_pending(data):
    if not data.startswith(PENDING_VERSION) or not data.endswith(b"\n.\n"):
        return None
    rec = {}
    try:
        for line in data[len(PENDING_VERSION):-3].decode("ascii").split("\n"):
            key, _, value = line.partition(" ")
            if key in ("D", "I", "O", "L", "B"):
                rec[key] = int(value)
            elif key == "F":
                rec[key] = bytes.fromhex(value)
            elif key == "K":
                rec[key] = value.split(",") if value else []
    except (ValueError, UnicodeDecodeError):
        return None
    if len(rec) != 7 or rec["B"] <= 0 or rec["L"] <= 0:
        return None
    return rec


def write_pending(mailbox, st, offset, digest):
    """Record the append about to be made (durably). False where the directory does not
    let us write (then there is no record)."""
    path = pending_path(mailbox)
    data = _encode_pending({"D": st.st_dev, "I": st.st_ino, "O": offset, "L": digest.length,
                            "B": digest.block, "F": digest.head, "K": digest.blocks})
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(2):
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            _unlink(path)   # left by a writer that has no right to it (see repair_pending)
            continue
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                log.debug("%s: no pending-append record: %s", mailbox, e.strerror)
                return False
            raise
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            _unlink(path)
            raise
        finally:
            os.close(fd)
        fsync_dir(os.path.dirname(path) or ".")
        return True
    return False


def clear_pending(mailbox, durable=False):
    """Remove the record (the append it describes is complete, or was undone)."""
    if _unlink(pending_path(mailbox)) and durable:
        fsync_dir(os.path.dirname(mailbox) or ".")


def _unlink(path):
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return False
        raise


def _load_pending(mailbox):
    """The record of `mailbox` if trustworthy; ("untrusted", None) to remove it."""
    path = pending_path(mailbox)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                     | os.O_CLOEXEC)
    except FileNotFoundError:
        return False, None
    except OSError as e:
        log.warning("%s: unusable pending-append record: %s", path, e.strerror or e)
        return True, None
    try:
        st = os.fstat(fd)
        if not (st.st_mode & 0o170000 == 0o100000 and st.st_nlink == 1
                and st.st_uid == os.geteuid() and st.st_size <= _MAX_RECORD):
            log.warning("%s: pending-append record not ours (uid %d), ignored",
                        path, st.st_uid)
            return True, None
        data = os.pread(fd, _MAX_RECORD, 0)
    finally:
        os.close(fd)
    return True, _decode_pending(data)


def _is_torn(fd, size, rec):
    """Are the bytes from the record's offset to `size` a prefix of the recorded append?"""
    off, length, block, head = rec["O"], rec["L"], rec["B"], rec["F"]
    have = size - off
    if not 0 < have < length:
        return False
    got = os.pread(fd, min(have, len(head)), off)
    if got != head[:len(got)]:
        return False
    full = have // block
    if full > len(rec["K"]):
        return False
    for i in range(full):
        data = os.pread(fd, block, off + i * block)
        if len(data) != block or "%08x" % crc32(data) != rec["K"][i]:
            return False
    start = max(off + full * block, off + len(head))
    if start >= size:
        return True
    rest = os.pread(fd, size - start + 1, start - 1)
    return b"\nFrom " not in rest


def repair_pending(fd, st, mailbox):
    """Under the mailbox locks, before any append: apply and remove the pending-append
    record of the mailbox (open as `fd`, fstat `st`). Truncates a torn append."""
    present, rec = _load_pending(mailbox)
    if not present:
        return
    durable = False
    if rec is not None and (rec["D"], rec["I"]) == (st.st_dev, st.st_ino):
        size = os.fstat(fd).st_size
        if _is_torn(fd, size, rec):
            log.warning("%s: removing a partial append of %d bytes at offset %d (pending record)",
                        mailbox, size - rec["O"], rec["O"])
            os.ftruncate(fd, rec["O"])
            os.fsync(fd)
            durable = True
    clear_pending(mailbox, durable=durable)
