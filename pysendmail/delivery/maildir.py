"""Delivering one message into a Maildir (the layout Dovecot, Courier and mutt read).

Steps: create the Maildir (new, cur, tmp; mode 0700) if missing; write tmp/NAME with
O_EXCL; fsync; link it into new/NAME,S=<size>; unlink the tmp name; fsync new/.

Names: "<sec>.M<usec>P<pid>Q<qid>R<index>.<host>,S=<size>". S= is the exact on-disk
size (Dovecot closes the session when it is wrong). "/", ":" and "," in the host
name are written as \\057, \\072 and \\054, as the Maildir convention and Dovecot ask.

Exactly once: the part "Q<qid>R<index>." is the same on every attempt for a given
message and recipient. Before writing, a file in new/ or cur/ whose name holds it
means an earlier attempt finished (perhaps killed before the queue file said so):
nothing is written and the result is 2.0.0. Leftovers of killed attempts in tmp/
(same unique part) are removed. This module runs as the mailbox owner (local.py forks
and drops privileges first when the MTA is root), so it trusts the user's own tree.
"""
import errno
import os
import time

from ..model import DeliveryStatus

CHUNK = 65536


def _host():
    host = os.uname().nodename or "localhost"
    return host.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")


def ensure(maildir, mode=0o700):
    """Create the Maildir (and any missing parents, all `mode`) and its subdirectories."""
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


def unique_part(qid, index):
    return "Q%sR%d" % (qid, index)


def find_delivered(maildir, qid, index):
    """The name of an earlier copy of this (message, recipient) in new/ or cur/, or None."""
    mark = unique_part(qid, index) + "."
    for sub in ("new", "cur"):
        with os.scandir(os.path.join(maildir, sub)) as it:
            for e in it:
                if mark in e.name:
                    return os.path.join(sub, e.name)
    return None


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


def deliver(maildir, source, qid, index, now=None):
    """Put the message of `source` into `maildir` once. Returns a DeliveryStatus."""
    tmp_path = None
    try:
        ensure(maildir)
        found = find_delivered(maildir, qid, index)
        _clean_tmp(maildir, qid, index)
        if found:
            return DeliveryStatus("2.0.0", "Delivered (already in Maildir as %s)" % found)
        t = time.time() if now is None else now
        sec = int(t)
        usec = int((t - sec) * 1000000)
        name = "%d.M%dP%d%s.%s" % (sec, usec, os.getpid(), unique_part(qid, index), _host())
        tmp_path = os.path.join(maildir, "tmp", name)
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        size = 0
        try:
            for chunk in source.chunks(mbox=False):
                view = memoryview(chunk)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                    size += n
            os.fsync(fd)
            if os.fstat(fd).st_size != size:
                raise OSError(errno.EIO, "size changed while writing")
        finally:
            os.close(fd)
        final = os.path.join(maildir, "new", "%s,S=%d" % (name, size))
        try:
            os.link(tmp_path, final)
            os.unlink(tmp_path)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
            os.rename(tmp_path, final)  # file systems without hard links
        tmp_path = None
        _fsync_dir(os.path.join(maildir, "new"))
        return DeliveryStatus("2.0.0", "Delivered")
    except OSError as e:
        if tmp_path:
            try:
                os.unlink(tmp_path)
            except OSError:
                pass
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return DeliveryStatus("4.2.2", "%s: mailbox full: %s" % (maildir, e.strerror))
        return DeliveryStatus("4.3.0", "%s: %s" % (maildir, e.strerror or e))
