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
"""
import os

from ..model import DeliveryStatus
from ..queue.spool import fsync_dir, write_durably

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
