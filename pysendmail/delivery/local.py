"""The local delivery agent: one queued message to one local recipient.

    deliver(env, rcpt_index, spool, layout, options) -> DeliveryStatus

rcpt.mailer "local" -> the user's mailbox (mbox in layout.mail_dir/USER, or a Maildir
when MailboxFormat=maildir, path from MaildirPath: %h home, %u user, %m mail_dir);
"prog" -> "|command" (prog.py); "file" -> "/path" (prog.py).

The message is "Return-Path: <SENDER>" + the queued header block + blank line + the
body (sender and header addresses as the cf's mailer writes them: mailer_view.py), streamed from the df file in 64 KB pieces (bounded memory for any size); mbox
adds the From_ line, >From quoting and the final blank line (mbox.py).

Security stance. Running as root (system instance), mailbox work is done by a fork()ed
child that has dropped to the recipient: setgroups([mail]), setgid(user's group),
setuid(user) (journal.run_as). Root itself only does what the user cannot: it creates
a missing /var/mail/USER, 0600, owner USER, group mail (Debian's /var/mail is root:mail
2775) in one step (an unnamed file, fchown, then linked to the name, which never
follows a symlink nor replaces a file), and for a missing Maildir whose nearest
existing path is like %m/%u/Maildir it makes the missing shared levels (root-owned)
and the level named after the user (mkdir 0700, then fchown), only inside root-owned
directories: mkdir never follows a symlink and the user cannot touch those parents.
A kill between that mkdir and its chown (or an older version's mailbox create and
chown) leaves an empty root-owned 0700 directory (0600 file): the next run hands
exactly such a leftover to the user, fstat-checked on an O_NOFOLLOW descriptor.
Everything else (open with O_NOFOLLOW, fstat checks: regular, one link, owned by the
user; locks; writes) runs with the user's rights, so quotas and permissions apply and a
planted symlink or hard link cannot make root write anywhere. prog and file deliveries
never run as root (prog.py). A private instance (not root) delivers as itself to
layout.mail_dir/USER for any USER known to passwd.

Exactly once across kill -9: journal.py (mbox, /file) and maildir.py (unique names).

Options read: MailboxFormat (mbox | maildir), MaildirPath, DefaultUser, Timeout.prog,
and Timeout.mailboxlock (ours: how long to wait for a locked mailbox, default 60s).
"""
import grp
import os
import pwd
import stat
import time

from ..log import Channel
from ..model import DeliveryStatus
from . import journal as journal_mod
from . import maildir as maildir_mod
from . import mbox
from . import prog
from .privs import as_root, as_user

log = Channel()

CHUNK = 65536


class MessageSource:
    """The message of one delivery, generated again on each call of chunks()."""

    def __init__(self, env, df_path, view=None):
        """view: a mailer_view.MailerView writing the sender and header addresses as the
        cf's mailer does (None: as queued)."""
        self.sender = view.sender(env.sender) if view is not None else env.sender
        self.return_path = b"Return-Path: <" + _clean(self.sender).encode("utf-8", "surrogateescape") + b">\n"
        headers = view.headers(env.headers) if view is not None else env.headers
        self.headers = b"".join(h + b"\n" for h in headers)
        # Opened here, by the parent: a child that dropped to the user cannot open
        # the root-only queue directory, but reads the inherited descriptor.
        self.fd = os.open(df_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def size(self, with_return_path=True):
        """The size of what chunks(mbox=False) yields."""
        return (len(self.return_path) if with_return_path else 0) + len(self.headers) + 1 \
            + os.fstat(self.fd).st_size

    def _body(self):
        """A fresh buffered reader of the body from its start (own descriptor)."""
        f = open(os.dup(self.fd), "rb", buffering=CHUNK)
        f.seek(0)
        return f

    def from_line(self, stamp):
        who = _clean(self.sender).replace(" ", "_").replace("\t", "_") or "MAILER-DAEMON"
        return ("From %s %s\n" % (who, time.asctime(time.localtime(stamp)))).encode(
            "utf-8", "surrogateescape")

    def chunks(self, mbox=False, stamp=0, with_return_path=True):
        """Yield the message bytes; mbox=True adds From_, quoting and the end blank line."""
        head = (self.return_path if with_return_path else b"") + self.headers + b"\n"
        if not mbox:
            yield head
            pos = 0
            while True:
                data = os.pread(self.fd, CHUNK, pos)
                if not data:
                    return
                pos += len(data)
                yield data
        yield self.from_line(stamp)
        out = []
        size = 0
        last = b"\n"
        for piece in _lines(head, self._body()):
            if piece.startswith(b"From ") and last.endswith(b"\n"):
                out.append(b">")
            out.append(piece)
            last = piece
            size += len(piece)
            if size >= CHUNK:
                yield b"".join(out)
                out = []
                size = 0
        if not last.endswith(b"\n"):
            out.append(b"\n")
        out.append(b"\n")
        yield b"".join(out)


def _lines(head, body):
    """Lines of the message (pieces of at most CHUNK bytes; only the first piece of a
    line can start a line, and it is whole up to 5 bytes unless the line is shorter)."""
    for line in head.splitlines(keepends=True):
        yield line
    with body as f:
        while True:
            piece = f.readline(CHUNK)
            if not piece:
                return
            yield piece


def _clean(address):
    return "".join(ch for ch in (address or "") if ch not in "\r\n\0<>")


_CACHE_TTL = 30.0    # seconds a looked-up account is trusted by a queue run
_mail_group = [None, 0.0]
_accounts = {}


def _mail_gid():
    now = time.monotonic()
    if now - _mail_group[1] > _CACHE_TTL:
        try:
            _mail_group[0] = grp.getgrnam("mail").gr_gid
        except KeyError:
            _mail_group[0] = None
        _mail_group[1] = now
    return _mail_group[0]


def _account(name):
    """pwd.getpwnam, remembered for a few seconds (a queue run delivers many messages
    to the same few users; each lookup reads /etc/passwd)."""
    now = time.monotonic()
    hit = _accounts.get(name)
    if hit is not None and now - hit[1] <= _CACHE_TTL:
        return hit[0]
    pw = pwd.getpwnam(name)         # KeyError: no such user (not remembered)
    if len(_accounts) > 1024:
        _accounts.clear()
    _accounts[name] = (pw, now)
    return pw


def _expand(template, layout, pw):
    out = []
    i = 0
    while i < len(template):
        ch = template[i]
        if ch == "%" and i + 1 < len(template):
            code = template[i + 1]
            out.append({"h": pw.pw_dir, "u": pw.pw_name, "m": layout.mail_dir, "%": "%"}
                       .get(code, "%" + code))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _template(options, layout):
    return options.get("MaildirPath") or ("%h/Maildir" if layout.system else "%m/%u/Maildir")


def maildir_path(options, layout, pw):
    """The recipient's Maildir: the MaildirPath template expanded."""
    return _expand(_template(options, layout), layout, pw)


def _prepare_user_root(options, layout, pw):
    """As root, for a template like %m/%u/Maildir: create the missing shared levels
    above the user's own directory (root-owned, 0755) and the first level named after
    the user (mkdir 0700, then chown to the user). Only inside root-owned real
    directories, so a user cannot steer these mkdirs. Under %h the user does it all.
    The walk stops at the user's level, existing or not; one that a killed run left
    root-owned (made, not yet chowned) is handed over to the user (_repair_root_dir)."""
    parts = _template(options, layout).split("/")
    cur = ""
    for raw in parts:
        if "%h" in raw:
            return
        comp = _expand(raw, layout, pw)
        if not comp:
            cur = cur or "/"
            continue
        parent = cur or "/"
        cur = os.path.join(parent, comp)
        user_level = "%u" in raw
        try:
            os.lstat(cur)
        except FileNotFoundError:
            pass
        else:
            if user_level:
                _repair_root_dir(cur, pw.pw_uid, pw.pw_gid)
                return
            continue
        pst = os.lstat(parent)
        if pst.st_uid != 0 or not stat.S_ISDIR(pst.st_mode):
            return
        try:
            os.mkdir(cur, 0o700 if user_level else 0o755)
        except FileExistsError:
            if user_level:
                _repair_root_dir(cur, pw.pw_uid, pw.pw_gid)
            return
        if user_level:
            _repair_root_dir(cur, pw.pw_uid, pw.pw_gid)
            return


def _repair_root_dir(path, uid, gid):
    """As root: give `path` to uid:gid if it is what our mkdir makes before its chown:
    an empty real directory (no symlink followed), owned by root, mode 0700."""
    if uid == 0:
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if st.st_uid == 0 and st.st_mode & 0o777 == 0o700 and not os.listdir(fd):
            os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


def _create_mailbox(path, uid, gid):
    """As root: create a missing mailbox 0600 owned by the user, in one step
    (mbox.create_atomically: a kill never leaves it root-owned), never via a symlink.
    An empty root-owned 0600 mailbox (what a killed older version could leave between
    its create and its chown) is handed over to the user."""
    os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
    try:
        mbox.create_atomically(path, b"", 0o600, (uid, gid))
    except FileExistsError:
        _repair_root_file(path, uid, gid)
        return
    mbox.fsync_dir(os.path.dirname(path))


def _repair_root_file(path, uid, gid):
    if uid == 0:
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                     | os.O_CLOEXEC)
    except OSError:
        return          # a symlink or worse: the user's child refuses it later
    try:
        st = os.fstat(fd)
        if (stat.S_ISREG(st.st_mode) and st.st_uid == 0 and st.st_size == 0
                and st.st_nlink == 1 and stat.S_IMODE(st.st_mode) == 0o600):
            os.fchown(fd, uid, gid)
            log.warning("%s: empty root-owned mailbox handed over to uid %d", path, uid)
    finally:
        os.close(fd)


class _PoolPlacer:
    """maildir.prepare's placer: recycled queue files (spool.files.claim) for a recipient's
    Maildir. Claimed and written in the root-only pool, then moved into the
    recipient's tmp/ directory, opened as the recipient (their view of the path, no
    symlink at its end) and required to be theirs; only the pool work is done as root,
    through descriptors."""

    def __init__(self, spool, uid, gid):
        self.spool, self.uid, self.gid = spool, uid, gid

    def claim(self):
        with as_root():
            return self.spool.files.claim(self.uid, self.gid)

    def place(self, token, tmp_dir, name):
        try:
            dir_fd = os.open(tmp_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                             | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            if os.fstat(dir_fd).st_uid != self.uid:
                return False
            with as_root():
                return self.spool.files.place(token, dir_fd, name)
        finally:
            os.close(dir_fd)

    def release(self, token):
        with as_root():
            self.spool.files.unclaim(token)


def _deliver_mailbox(env, index, rcpt, spool, layout, options, source, batch=None):
    try:
        pw = _account(rcpt.user)
    except KeyError:
        return DeliveryStatus("5.1.1", "User unknown")
    root = os.geteuid() == 0
    lock_timeout = float(prog.parse_duration(options.get("Timeout.mailboxlock"), 60, "s"))
    fmt = (options.get("MailboxFormat") or "mbox").strip().lower()
    mail_gid = _mail_gid()
    groups = [mail_gid] if mail_gid is not None else []
    creds = (pw.pw_uid, pw.pw_gid, groups)
    if fmt == "maildir":
        path = maildir_path(options, layout, pw)
        if not os.path.isabs(path):
            return DeliveryStatus("5.3.5", "MaildirPath is not absolute: %s" % path)

        retry = env.attempts > 1 or rcpt.attempts > 0

        def work(_jrnl):
            # one message: new/ and cur/ are scanned for an earlier copy, whatever the
            # queue file says (it may not have recorded an attempt killed after its link)
            return maildir_mod.deliver(path, source, env.qid, index, created=env.created,
                                       retry=True)

        if root:
            try:
                _prepare_user_root(options, layout, pw)
            except OSError as e:
                return DeliveryStatus("4.3.0", "%s: %s" % (path, e.strerror))
        if batch is not None:
            # A queue run: written to tmp/ now as the recipient, synced and moved into
            # new/ with the others of the batch (maildir_batch.py).
            who = creds if root and pw.pw_uid != 0 else None
            with as_user(who):
                status, item = maildir_mod.prepare(
                    path, source, env.qid, index, created=env.created, retry=retry,
                    listings=batch.listings,
                    placer=_PoolPlacer(spool, pw.pw_uid, pw.pw_gid))
            if item is not None:
                batch.add((env.qid, index), item, who)
            return status
        if root and pw.pw_uid != 0:     # root's own Maildir needs no child
            return journal_mod.run_as(creds, work, journal_mod.NullJournal())
        return work(None)
    if fmt != "mbox":
        return DeliveryStatus("4.3.5", "unknown MailboxFormat %s" % fmt)
    path = os.path.join(layout.mail_dir, pw.pw_name)
    jrnl = journal_mod.Journal(spool.path, env.qid, index)
    if root:
        try:
            _create_mailbox(path, pw.pw_uid, mail_gid if mail_gid is not None else pw.pw_gid)
        except OSError as e:
            return DeliveryStatus("4.3.0", "%s: cannot create mailbox: %s" % (path, e.strerror))
        want = pw.pw_uid
    else:
        try:
            os.makedirs(layout.mail_dir, 0o700, exist_ok=True)
        except OSError as e:
            return DeliveryStatus("4.3.0", "%s: %s" % (layout.mail_dir, e.strerror))
        want = os.geteuid()

    def check(st):
        return None if st.st_uid == want else "owned by uid %d, not %d" % (st.st_uid, want)

    def work(j):
        return mbox.append(path, source, j, check=check,
                           create_mode=None if root else 0o600, lock_timeout=lock_timeout)

    if root:
        return journal_mod.run_as(creds, work, jrnl)
    return work(jrnl)


def deliver(env, rcpt_index, spool, layout, options, view=None, batch=None):
    """Deliver message `env` to env.recipients[rcpt_index] (mailer local, prog or file);
    `view` (mailer_view.MailerView) writes its addresses as the cf's mailer does.
    With `batch` (maildir_batch.MaildirBatch), a Maildir delivery is only prepared:
    the batch's commit() makes it durable and final."""
    options = options or {}
    rcpt = env.recipients[rcpt_index]
    try:
        source = MessageSource(env, spool.df(env.qid), view)
    except OSError as e:
        return DeliveryStatus("4.3.0", "cannot open queued body: %s" % e.strerror)
    try:
        if rcpt.mailer == "local":
            status = _deliver_mailbox(env, rcpt_index, rcpt, spool, layout, options, source,
                                      batch)
        elif rcpt.mailer == "prog":
            status = prog.deliver_prog(rcpt.user, _ProgSource(source), source.sender,
                                       rcpt.owner, options)
        elif rcpt.mailer == "file":
            jrnl = journal_mod.Journal(spool.path, env.qid, rcpt_index)
            lock_timeout = float(prog.parse_duration(options.get("Timeout.mailboxlock"), 60, "s"))
            status = prog.deliver_file(rcpt.user, source, jrnl, rcpt.owner, options,
                                       lock_timeout=lock_timeout)
        else:
            status = DeliveryStatus("5.3.5", "not a local mailer: %s" % rcpt.mailer)
    except OSError as e:
        status = DeliveryStatus("4.3.0", "local delivery error: %s" % (e.strerror or e))
    finally:
        source.close()
    # The queue run logs the outcome in Sendmail's to= form; nothing to add here.
    return status


class _ProgSource:
    """Sendmail's prog mailer has no P flag: the message without Return-Path."""

    def __init__(self, source):
        self._source = source

    def chunks(self, mbox=False, stamp=0):
        return self._source.chunks(mbox=mbox, stamp=stamp, with_return_path=False)
