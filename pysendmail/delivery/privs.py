"""Acting as a mail recipient for a moment: effective uid/gid switching (Postfix's set_eugid).

The queue run writes Maildir messages in-process as the recipient: setgroups,
setegid, seteuid, the file work, then back to root. The real uid stays root, so the
switch can be undone; between the two, only our own file code runs (no user program,
no interpretation of what the files hold), which is why Postfix's local(8) works the
same way. Programs, /file and mbox deliveries still fork a child that drops root for
good (journal.run_as).

`as_user(creds)` is a context manager; creds = (uid, gid, groups). It does nothing
when the process is not root or creds is None (a private instance delivers as its
owner).
"""
import os


class as_user:
    __slots__ = ("creds", "saved")

    def __init__(self, creds):
        self.creds = creds
        self.saved = None

    def __enter__(self):
        if self.creds is None or os.geteuid() != 0:
            return self
        uid, gid, groups = self.creds
        self.saved = os.getgroups()
        os.setgroups(list(groups))
        os.setegid(gid)
        os.seteuid(uid)
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            try:
                os.seteuid(0)
                os.setegid(0)
                os.setgroups(self.saved)
            except OSError:         # cannot happen with a real uid of 0; never go on as the user
                os._exit(71)
            self.saved = None
        return False


class as_root:
    """Back to root for a moment inside as_user (to take a file from the queue's pool);
    nothing when the real uid is not root."""
    __slots__ = ("euid",)

    def __init__(self):
        self.euid = None

    def __enter__(self):
        if os.getuid() == 0 and os.geteuid() != 0:
            self.euid = os.geteuid()
            os.seteuid(0)
        return self

    def __exit__(self, *exc):
        if self.euid is not None:
            os.seteuid(self.euid)
            self.euid = None
        return False
