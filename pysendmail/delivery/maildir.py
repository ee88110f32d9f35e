"""Delivering one message into a Maildir (the layout Dovecot, Courier and mutt read).

Steps: create the Maildir (new, cur, tmp; mode 0700) if missing; write tmp/NAME with
O_EXCL; fsync; link it into new/NAME,S=<size>; unlink the tmp name; fsync new/.
`deliver` does them for one message; a queue run splits them (`prepare` writes tmp/,
maildir_batch.py syncs many at once, then `publish` links each into new/), so a name
in new/ always stands for complete data.

Names: "<queued sec>.Q<qid>R<index>.<host>,S=<size>": time, unique part, host as the
Maildir convention has them; the queue id is unique on this host and the recipient
index within the message, so the name is unique and the same on every attempt. S= is
the exact on-disk size (Dovecot closes the session when it is wrong). "/", ":" and ","
in the host name are written as \\057, \\072 and \\054, as the Maildir convention
and Dovecot ask.

Exactly once: before writing, new/NAME,S=SIZE existing means an earlier attempt
finished (perhaps killed before the queue file said so): nothing is written and the
result is 2.0.0; a message tried before (`retry`) also looks in cur/, where a mail
reader moves what it has seen. A leftover tmp/NAME of a killed attempt is replaced.
The check costs one lstat, not a directory scan per delivery. This module runs as
the mailbox owner (local.py forks and drops privileges first when the MTA is root
and the owner is not), so it trusts the user's own tree.
"""
import errno
import os
import time

from ..model import DeliveryStatus

CHUNK = 65536


def _host():
    host = os.uname().nodename or "localhost"
    return host.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")


_ENSURED = set()     # Maildirs this process has seen complete (new, cur, tmp)


def ensure(maildir, mode=0o700):
    """Create the Maildir (and any missing parents, all `mode`) and its subdirectories."""
    if maildir in _ENSURED:
        return
    missing = []
    cur = os.path.abspath(maildir)
    while not os.path.isdir(cur):
        missing.append(cur)
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        cur = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            pass
    for sub in ("new", "cur", "tmp"):
        try:
            os.mkdir(os.path.join(maildir, sub), mode)
        except FileExistsError:
            pass
    _ENSURED.add(maildir)


def unique_part(qid, index):
    return "Q%sR%d" % (qid, index)


def base_name(created, qid, index):
    """The file's name before ",S=": the same on every attempt of this (message,
    recipient), so a retry finds what an earlier attempt delivered."""
    return "%d.%s.%s" % (created, unique_part(qid, index), _host())


def find_delivered(maildir, qid, index):
    """The name of an earlier copy of this (message, recipient) in new/ or cur/, or None
    (a scan of both directories: what a retry does)."""
    mark = "." + unique_part(qid, index) + "."
    old_mark = unique_part(qid, index) + "."       # names of earlier versions: ...P<pid>Q..
    for sub in ("new", "cur"):
        with os.scandir(os.path.join(maildir, sub)) as it:
            for e in it:
                if mark in e.name or old_mark in e.name:
                    return os.path.join(sub, e.name)
    return None


def delivered_parts(maildir):
    """The unique parts ("Q<qid>R<n>") of every message in new/ and cur/: one scan that
    a queue run keeps to answer "delivered before?" for all its messages."""
    parts = set()
    for sub in ("new", "cur"):
        try:
            it = os.scandir(os.path.join(maildir, sub))
        except FileNotFoundError:
            continue
        with it:
            for e in it:
                for piece in e.name.split(",", 1)[0].split(":", 1)[0].split("."):
                    q = piece.find("Q")
                    if q >= 0 and "R" in piece[q:]:
                        parts.add(piece[q:])
    return parts


def _clean_tmp(maildir, qid, index):
    mark = unique_part(qid, index) + "."
    tmp = os.path.join(maildir, "tmp")
    with os.scandir(tmp) as it:
        names = [e.name for e in it if mark in e.name]
    for name in names:
        try:
            os.unlink(os.path.join(tmp, name))
        except FileNotFoundError:
            pass


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Prepared:
    """A message written to tmp/ (not yet synced, not yet in new/): publish() ends it."""
    __slots__ = ("maildir", "tmp", "final")

    def __init__(self, maildir, tmp, final):
        self.maildir = maildir
        self.tmp = tmp
        self.final = final


def _error(maildir, e):
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DeliveryStatus("4.2.2", "%s: mailbox full: %s" % (maildir, e.strerror))
    return DeliveryStatus("4.3.0", "%s: %s" % (maildir, e.strerror or e))


def prepare(maildir, source, qid, index, created=None, retry=True, sync=False,
            listings=None, placer=None):
    """Write the message of `source` to tmp/ (fsync'd only with `sync`).
    Returns (DeliveryStatus, Prepared or None): None when it is already delivered
    or failed (the status says which).

    The name is base_name(created, qid, index) + ",S=<size>", the size known before
    writing (the header block plus the queued body); `placer` (claim/place/release)
    may give a recycled queue file, written while still out of the user's sight and
    then moved to tmp/ (no inode to allocate), instead of a new file. A file of that
    name in new/ means
    an earlier attempt finished: nothing is written. Then new/ and cur/ (where a mail
    reader moves what it has seen) are looked at: through `listings` (a dict the
    caller keeps for a run: Maildir -> delivered_parts, scanned once), or, without
    it, scanned when `retry` (the message was tried before)."""
    tmp_path = None
    try:
        ensure(maildir)
        created = int(time.time()) if created is None else int(created)
        name = base_name(created, qid, index)
        size = source.size() if hasattr(source, "size") else None
        found = None
        if size is not None:
            try:
                os.lstat(os.path.join(maildir, "new", "%s,S=%d" % (name, size)))
                found = "new/%s,S=%d" % (name, size)
            except FileNotFoundError:
                pass
        if found is None and listings is not None:
            parts = listings.get(maildir)
            if parts is None:
                parts = listings[maildir] = delivered_parts(maildir)
            if unique_part(qid, index) in parts:
                found = "cur/ or new/ (%s)" % unique_part(qid, index)
        elif found is None and (retry or size is None):
            found = find_delivered(maildir, qid, index)
            _clean_tmp(maildir, qid, index)     # leftovers of killed attempts, any name
        if found:
            # an attempt killed between its link and its unlink leaves tmp/NAME too
            try:
                os.unlink(os.path.join(maildir, "tmp", name))
            except FileNotFoundError:
                pass
            return DeliveryStatus("2.0.0", "Delivered (already in Maildir as %s)"
                                  % found), None
        tmp_path = os.path.join(maildir, "tmp", name)
        written = None
        if placer is not None:
            written = _write_placed(placer, source, os.path.join(maildir, "tmp"), name, sync)
        if written is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(tmp_path, flags, 0o600)
            except FileExistsError:     # left by a killed attempt
                os.unlink(tmp_path)
                fd = os.open(tmp_path, flags, 0o600)
            try:
                written = _write(fd, source, sync)
            finally:
                os.close(fd)
        final = os.path.join(maildir, "new", "%s,S=%d" % (name, written))
        return DeliveryStatus("2.0.0", "Delivered"), Prepared(maildir, tmp_path, final)
    except OSError as e:
        if tmp_path:
            try:
                os.unlink(tmp_path)
            except OSError:
                pass
        return _error(maildir, e), None


def _write(fd, source, sync):
    """The message into `fd` from offset 0, cut to its length; returns the length."""
    written = 0
    for chunk in source.chunks(mbox=False):
        view = memoryview(chunk)
        while view:
            n = os.write(fd, view)
            view = view[n:]
            written += n
    if os.fstat(fd).st_size > written:
        os.ftruncate(fd, written)           # a recycled file held more
    if sync:
        os.fsync(fd)
    if os.fstat(fd).st_size != written:
        raise OSError(errno.EIO, "size changed while writing")
    return written


def _write_placed(placer, source, tmp_dir, name, sync):
    """Write the message into a file the placer claims (a recycled queue file, still
    out of the user's sight) and only then move it to tmp/NAME. None when the placer
    has none or cannot move it there (the caller creates the file)."""
    claimed = placer.claim()
    if claimed is None:
        return None
    fd, token = claimed
    placed = False
    try:
        written = _write(fd, source, sync)
        placed = placer.place(token, tmp_dir, name)
    finally:
        os.close(fd)
        if not placed:
            placer.release(token)
    return written if placed else None


def publish(item):
    """Move a prepared (and by now synced) message from tmp/ into new/. The caller
    fsyncs new/ afterwards (once for many messages)."""
    try:
        os.link(item.tmp, item.final)
        os.unlink(item.tmp)
    except FileExistsError:
        os.unlink(item.tmp)         # the same message, delivered before
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        os.rename(item.tmp, item.final)     # file systems without hard links


def deliver(maildir, source, qid, index, created=None, retry=True):
    """Put the message of `source` into `maildir` once, durably (one message: fsync the
    file, link it into new/, fsync new/). Returns a DeliveryStatus."""
    status, item = prepare(maildir, source, qid, index, created, retry, sync=True)
    if item is None:
        return status
    try:
        publish(item)
        _fsync_dir(os.path.join(maildir, "new"))
    except OSError as e:
        try:
            os.unlink(item.tmp)
        except OSError:
            pass
        return _error(maildir, e)
    return status
