"""The maildrop and pickup: an unprivileged user's message reaches the queue only through
root's pickup, which trusts nothing in the drop file but its owner (root only).

Set-up: a private instance (PYSENDMAIL_ROOT) shaped like the system one: spool/maildrop
is 1733 and spool/queue 0700, both root's. `nobody` (via setpriv) runs the installed
`sendmail` there: it cannot write the queue, so its message goes to the maildrop. Root
then runs `sendmail -q` with the same PYSENDMAIL_ROOT (the queue run picks up first), or
calls pysendmail.qmgr.pickup.pickup_all directly where a step must be isolated.
Checked: the envelope sender is the real user unless -f; X-Authentication-Warning when
nobody sets someone else's sender; a symlink, a hard link, a FIFO and a garbage file in
the maildrop are refused (renamed to .bad-*), never followed nor read; the `mf` marker of
a pickup interrupted after publishing finishes the unlink without a duplicate.
"""
import os
import pwd
import shutil
import stat
import subprocess

import pytest

from conftest import IS_ROOT, require_program

pytestmark = [pytest.mark.root, pytest.mark.skipif(not IS_ROOT, reason="needs root")]

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
MSG = b"Subject: from nobody\n\nplain body\n"


class Drop:
    """A system-shaped private instance under a directory `nobody` can reach."""

    def __init__(self, sm_bin, base):
        self.bin = sm_bin
        self.path = os.path.join(base, "inst")
        self.maildrop = os.path.join(self.path, "spool", "maildrop")
        self.queue = os.path.join(self.path, "spool", "queue")
        os.makedirs(self.maildrop)
        os.makedirs(self.queue)
        for d in (self.path, os.path.join(self.path, "spool")):
            os.chmod(d, 0o755)
        os.chmod(self.maildrop, 0o1733)
        os.chmod(self.queue, 0o700)
        self.env = dict(os.environ, PYSENDMAIL_ROOT=self.path)
        self.nobody = pwd.getpwnam("nobody")

    def as_nobody(self, args, input=b"", prog="sendmail"):
        return subprocess.run(NOBODY + ["env", "PYSENDMAIL_ROOT=" + self.path,
                                        os.path.join(self.bin, prog)] + list(args),
                              input=input, capture_output=True, timeout=60)

    def nobody_sh(self, script):
        p = subprocess.run(NOBODY + ["sh", "-c", script], capture_output=True, timeout=60,
                           text=True)
        assert p.returncode == 0, (script, p.stderr)

    def as_root(self, args, input=b""):
        """Run sendmail as root; where a syslog socket exists, /dev/log is hidden in a private
        mount namespace so the log lines land in <root>/state/log/maillog."""
        argv = [os.path.join(self.bin, "sendmail")] + list(args)
        if os.path.exists("/dev/log"):
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount --bind /dev/null /dev/log && exec "$0" "$@"'] + argv
        return subprocess.run(argv, input=input, capture_output=True, timeout=60, env=self.env)

    def drops(self):
        return sorted(os.listdir(self.maildrop))

    def queued(self):
        return sorted(n for n in os.listdir(self.queue) if n.startswith("qf"))

    def mbox(self, user="root"):
        path = os.path.join(self.path, "mail", user)
        if not os.path.exists(path):
            return []
        with open(path, "rb") as f:
            data = f.read()
        return [m for m in data.split(b"\nFrom ") if m.strip()]

    def layout_parts(self):
        """(layout, options, ident, log) as the CLI builds them for this instance."""
        from pysendmail import layout as layoutmod
        from pysendmail.config import identity, options as optmod
        from pysendmail.log import Logger
        layout = layoutmod.for_root(self.path)
        cf = optmod.read_quick(layout.cf)
        return (layout, dict(cf.options), identity.detect(cf),
                Logger(log_file=layout.log_file, syslog_socket=None))

    def log_text(self):
        path = os.path.join(self.path, "state", "log", "maillog")
        if not os.path.exists(path):
            return ""
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()


@pytest.fixture
def drop(sm_bin, workdir):
    require_program("setpriv")
    d = Drop(sm_bin, workdir)
    probe = subprocess.run(NOBODY + [os.path.join(sm_bin, "sendmail"), "-bx"],
                           capture_output=True, timeout=60)
    if b"Invalid operation mode" not in probe.stdout + probe.stderr:
        pytest.fail("user nobody cannot run %s/sendmail: %r" % (sm_bin, probe.stderr[-300:]))
    return d


def _headers(raw):
    head = raw.split(b"\n\n", 1)[0]
    return head.decode("utf-8", "replace")


# ---- submission as nobody --------------------------------------------------------------------

def test_nobody_submission_exits_0_and_waits_in_the_maildrop(drop):
    p = drop.as_nobody(["-i", "root"], input=MSG)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert p.stdout == b"" and p.stderr == b""
    names = drop.drops()
    assert len(names) == 1 and not names[0].startswith(".")
    st = os.lstat(os.path.join(drop.maildrop, names[0]))
    assert st.st_uid == drop.nobody.pw_uid
    assert stat.S_IMODE(st.st_mode) & 0o077 == 0          # nobody else may read it
    assert drop.queued() == []


def test_nobody_cannot_read_or_list_the_spool(drop):
    drop.as_nobody(["-i", "root"], input=MSG)
    p = subprocess.run(NOBODY + ["ls", drop.maildrop], capture_output=True, timeout=30)
    assert p.returncode != 0
    p = subprocess.run(NOBODY + ["ls", drop.queue], capture_output=True, timeout=30)
    assert p.returncode != 0


def test_root_queue_run_picks_up_and_delivers(drop):
    drop.as_nobody(["-i", "root"], input=MSG)
    assert len(drop.drops()) == 1
    p = drop.as_root(["-q"])
    assert p.returncode == 0, p.stderr
    assert drop.drops() == []
    assert drop.queued() == []
    msgs = drop.mbox()
    assert len(msgs) == 1
    head = _headers(msgs[0])
    assert "Return-Path: <nobody>" in head
    assert "Received: (from nobody@localhost)" in head
    assert "X-Authentication-Warning" not in head
    assert msgs[0].endswith(b"\n\nplain body\n") or msgs[0].endswith(b"\n\nplain body\n\n")


def test_forged_sender_is_kept_but_flagged(drop):
    drop.as_nobody(["-i", "-f", "someone@example.com", "root"],
                   input=b"Subject: forged\n\nforged body\n")
    drop.as_root(["-q"])
    msgs = drop.mbox()
    assert len(msgs) == 1
    head = _headers(msgs[0])
    assert "Return-Path: <someone@example.com>" in head
    assert "X-Authentication-Warning: " in head
    assert ": nobody set sender to someone@example.com using -f" in head


def test_own_address_with_f_is_not_flagged(drop):
    drop.as_nobody(["-i", "-f", "nobody", "root"], input=b"Subject: own\n\nbody\n")
    drop.as_root(["-q"])
    msgs = drop.mbox()
    assert len(msgs) == 1
    assert "X-Authentication-Warning" not in _headers(msgs[0])
    assert "Return-Path: <nobody>" in _headers(msgs[0])


def test_identity_fields_in_the_drop_are_not_believed(drop):
    """The control text of a drop is the user's to write: a uid, user or relay in it must
    be replaced by the file owner's."""
    from pysendmail.queue import maildrop as md
    from pysendmail.model import Envelope, Recipient
    env = Envelope(sender="", uid=0, user="root", relay="root@localhost",
                   recipients=[Recipient("root")], headers=[b"Subject: spoofed identity"])
    body = b"spoof body\n"
    data = bytearray(b" " * md.HEAD_FIELD) + body
    data[:md.HEAD_FIELD] = b"PSMDROP1 %022d\n" % len(body)
    from pysendmail.queue import qfile
    data += qfile.dumps(env)
    tmp = os.path.join(os.path.dirname(drop.path), "spoof")
    with open(tmp, "wb") as f:
        f.write(bytes(data))
    os.chown(tmp, drop.nobody.pw_uid, drop.nobody.pw_gid)
    os.chmod(tmp, 0o644)
    drop.nobody_sh("cat %s > %s/spoofdrop && chmod 700 %s/spoofdrop"
                   % (tmp, drop.maildrop, drop.maildrop))
    drop.as_root(["-q"])
    msgs = drop.mbox()
    assert len(msgs) == 1
    head = _headers(msgs[0])
    assert "Received: (from nobody@localhost)" in head
    assert "Return-Path: <nobody>" in head
    assert "from root@localhost" not in head


# ---- hostile files in the maildrop -------------------------------------------------------------

def _valid_drop_elsewhere(drop, sm_bin, workdir):
    """A valid drop file made by nobody in a second system-shaped instance; its path."""
    other = Drop(sm_bin, os.path.join(workdir, "other"))
    other.as_nobody(["-i", "root"], input=b"Subject: smuggled\n\nsmuggled body\n")
    names = other.drops()
    assert len(names) == 1
    return os.path.join(other.maildrop, names[0])


def test_symlink_hardlink_fifo_and_garbage_are_refused(drop, sm_bin, workdir):
    good = _valid_drop_elsewhere(drop, sm_bin, workdir)
    root_copy = os.path.join(workdir, "root-owned-drop")
    shutil.copyfile(good, root_copy)              # a root-owned valid drop: following it
    os.chmod(root_copy, 0o644)                    # would queue a message as root
    with open(root_copy, "rb") as f:
        root_copy_bytes = f.read()
    md = drop.maildrop
    # garbage and short are marked complete (mode 0700, the owner-execute bit that the
    # submission sets last): a finished-looking file that is not a drop file
    drop.nobody_sh("ln -s %s %s/symlink && ln %s %s/hardlink && mkfifo %s/fifo && "
                   "printf 'garbage\\n' > %s/garbage && printf 'PSMDROP1 99999\\n' > %s/short"
                   " && chmod 700 %s/garbage %s/short"
                   % (root_copy, md, good, md, md, md, md, md, md))
    assert sorted(drop.drops()) == ["fifo", "garbage", "hardlink", "short", "symlink"]
    p = drop.as_root(["-q"])                      # must not hang on the FIFO (timeout 60 s)
    assert p.returncode == 0, p.stderr
    assert sorted(drop.drops()) == [".bad-fifo", ".bad-garbage", ".bad-hardlink", ".bad-short",
                                    ".bad-symlink"]
    assert os.path.islink(os.path.join(md, ".bad-symlink"))          # moved, not followed
    assert stat.S_ISFIFO(os.lstat(os.path.join(md, ".bad-fifo")).st_mode)
    assert os.path.exists(good) and os.stat(good).st_nlink == 2
    with open(root_copy, "rb") as f:
        assert f.read() == root_copy_bytes
    assert drop.queued() == []
    assert drop.mbox() == []
    log = drop.log_text()
    for name in ("symlink", "hardlink", "fifo", "garbage", "short"):
        assert "maildrop file %s rejected" % name in log


def test_a_bad_file_does_not_block_good_ones(drop):
    drop.nobody_sh("printf 'junk' > %s/0-junk && chmod 700 %s/0-junk"
                   % (drop.maildrop, drop.maildrop))
    drop.as_nobody(["-i", "root"], input=MSG)
    drop.as_root(["-q"])
    assert len(drop.mbox()) == 1
    assert drop.drops() == [".bad-0-junk"]


# ---- exactly once: the mf marker ---------------------------------------------------------------

def _save(path):
    st = os.lstat(path)
    with open(path, "rb") as f:
        return f.read(), st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def _restore(path, saved):
    data, uid, gid, mode = saved
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, data)
    os.close(fd)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def test_marker_with_existing_qf_finishes_the_unlink_without_a_duplicate(drop):
    from pysendmail.qmgr.pickup import pickup_all
    drop.as_nobody(["-i", "root"], input=MSG)
    (name,) = drop.drops()
    path = os.path.join(drop.maildrop, name)
    saved = _save(path)
    layout, options, ident, log = drop.layout_parts()
    assert pickup_all(layout, options, ident, log) == 1
    (qf,) = drop.queued()
    assert drop.drops() == []
    # a crash after publishing qf, before the drop was unlinked: drop and marker both there
    _restore(path, saved)
    with open(os.path.join(drop.queue, "mf" + name), "w") as f:
        f.write(qf[2:] + "\n")
    assert pickup_all(layout, options, ident, log) == 0
    assert drop.drops() == []
    assert drop.queued() == [qf]
    assert not os.path.exists(os.path.join(drop.queue, "mf" + name))
    drop.as_root(["-q"])
    assert len(drop.mbox()) == 1


def test_marker_without_qf_means_pick_up_again(drop):
    from pysendmail.qmgr.pickup import pickup_all
    drop.as_nobody(["-i", "root"], input=MSG)
    (name,) = drop.drops()
    with open(os.path.join(drop.queue, "mf" + name), "w") as f:
        f.write("6AQGMkk0012834\n")                 # crash before the qf was published
    layout, options, ident, log = drop.layout_parts()
    assert pickup_all(layout, options, ident, log) == 1
    assert drop.drops() == []
    assert len(drop.queued()) == 1
    assert [n for n in os.listdir(drop.queue) if n.startswith("mf")] == []
    drop.as_root(["-q"])
    assert len(drop.mbox()) == 1


def test_pickup_runs_for_a_private_instance_queue_run(drop):
    """`sendmail -q` of a non-system layout picks up when the maildrop has files and the
    caller can write the queue."""
    drop.as_nobody(["-i", "root"], input=MSG)
    drop.as_nobody(["-i", "root"], input=MSG)
    assert len(drop.drops()) == 2
    drop.as_root(["-q", "-v"])
    assert drop.drops() == []
    assert len(drop.mbox()) == 2


def test_a_drop_still_being_written_is_left_alone(drop):
    """A drop file without the owner-execute bit is incomplete (its writer may still be
    at work): pickup neither takes it nor calls it bad."""
    drop.nobody_sh("printf 'PSMDROP1 partial' > %s/inprogress" % drop.maildrop)
    drop.as_root(["-q"])
    assert drop.drops() == ["inprogress"]
    assert drop.queued() == [] and drop.mbox() == []
