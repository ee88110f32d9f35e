"""Group commit for local Maildir deliveries: many messages made durable by one sync.

A queue run prepares each Maildir delivery (maildir.prepare: the message written to
tmp/, as the recipient, not synced) and holds the message's queue files. commit():

    1. syncfs once per file system that holds prepared files (elsewhere: fsync each);
    2. link each tmp/NAME into new/NAME,S=SIZE and unlink tmp/NAME, as its recipient;
    3. fsync each new/ directory once;

and only then does the queue run record the outcomes and remove the queue files. So a
name in new/ always stands for complete data (a crash before step 2 leaves only tmp/
files, which the retry replaces), and the queue never forgets a message that is not
durably in its Maildir. One sync for a batch instead of two per message is what lets a
queue run deliver local mail faster than one flush per message allows, as the SMTP
daemon's group commit (server/commit.py) does for receiving.
"""
import os

from ..model import DeliveryStatus
from ..queue.spool import syncfs_function
from . import maildir as maildir_mod
from .privs import as_user


class MaildirBatch:
    def __init__(self):
        self.items = []         # (key, Prepared, creds or None)
        self.listings = {}      # Maildir -> unique parts already there (maildir.prepare)
        self.syncfs = syncfs_function()

    def __len__(self):
        return len(self.items)

    def add(self, key, item, creds):
        self.items.append((key, item, creds))

    def commit(self):
        """Steps 1-3 for every prepared message. Returns {key: DeliveryStatus} for the
        ones that failed (temporary failures: the message stays queued)."""
        items, self.items = self.items, []
        failed = {}
        if not items:
            return failed
        try:
            self._sync([item for _, item, _ in items])
        except OSError as e:
            for key, item, creds in items:
                failed[key] = DeliveryStatus("4.3.0", "%s: sync failed: %s"
                                             % (item.maildir, e.strerror or e))
                _discard(item, creds)
            return failed
        new_dirs = {}
        items.sort(key=lambda t: t[2] or ())
        i = 0
        while i < len(items):           # one switch of identity per recipient
            creds = items[i][2]
            with as_user(creds):
                while i < len(items) and items[i][2] == creds:
                    key, item, _ = items[i]
                    i += 1
                    try:
                        maildir_mod.publish(item)
                        new_dirs[os.path.dirname(item.final)] = creds
                    except OSError as e:
                        failed[key] = maildir_mod._error(item.maildir, e)
                        _unlink(item.tmp)
        for path, creds in new_dirs.items():
            try:
                with as_user(creds):
                    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:
                pass    # the files are synced; a lost name is found again by the retry
        return failed

    def _sync(self, prepared):
        if self.syncfs is None:
            for item in prepared:
                fd = os.open(item.tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            return
        seen = set()
        for tmp_dir in {os.path.dirname(item.tmp) for item in prepared}:
            fd = os.open(tmp_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                dev = os.fstat(fd).st_dev
                if dev not in seen:
                    seen.add(dev)
                    self.syncfs(fd)
            finally:
                os.close(fd)


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _discard(item, creds):
    with as_user(creds):
        _unlink(item.tmp)
