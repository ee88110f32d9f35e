"""Local delivery agent: mbox, Maildir, |prog and /file, with real files and processes.

Messages are queued with Spool.allocate/commit, delivered with delivery.local.deliver,
and read back with the stdlib `mailbox` module and byte by byte. Crash windows are
recreated on disk (journal left, append missing or cut short) and delivery is run again.
"""
import grp
import hashlib
import mailbox
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib

import pytest

from pysendmail import layout as layout_mod
from pysendmail.delivery import journal as journal_mod
from pysendmail.delivery.local import deliver
from pysendmail.model import Envelope, Recipient
from pysendmail.queue.spool import Spool

ROOT = os.geteuid() == 0
PY = sys.executable
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ME = pwd.getpwuid(os.geteuid()).pw_name
HEADERS = [b"From: Alice <alice@example.com>", b"To: bob@example.org",
           b"Subject: test\n\tfolded", b"X-Eight: caf\xc3\xa9"]
BODY = b"Hello\nFrom the start of a line\n>From already quoted\n \xe9\xff 8-bit\nFrom\nend"


def _queue(base, body=BODY, sender="alice@example.com", rcpts=None, headers=HEADERS):
    lay = layout_mod.for_root(str(base))
    spool = Spool(lay.queue)
    spool.ensure()
    env = Envelope(sender=sender, created=int(time.time()), headers=list(headers),
                   recipients=rcpts or [Recipient(ME, mailer="local", user=ME)])
    qid, fd = spool.allocate()
    env.qid = qid
    if isinstance(body, bytes):
        os.write(fd, body)
    else:
        for chunk in body:
            os.write(fd, chunk)
    spool.commit(env, fd)
    os.close(fd)
    return env, spool, lay


def _message(env, body, return_path=True):
    rp = b"Return-Path: <%s>\n" % env.sender.encode() if return_path else b""
    return rp + env.header_block() + b"\n" + body


def _quoted(data):
    out = []
    for line in data.split(b"\n"):
        out.append(b">" + line if line.startswith(b"From ") else line)
    return b"\n".join(out)


def _mbox_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def _jf(spool, env, index=0):
    return os.path.join(spool.path, "jf%s.%d" % (env.qid, index))


# -- mbox ---------------------------------------------------------------------------------

def test_mbox_message_read_back(tmp_path):
    env, spool, lay = _queue(tmp_path)
    st = deliver(env, 0, spool, lay, {})
    assert st.status == "2.0.0", st
    path = os.path.join(lay.mail_dir, ME)
    raw = _mbox_bytes(path)
    first, rest = raw.split(b"\n", 1)
    assert first.startswith(b"From alice@example.com ")
    time.strptime(first.decode()[len("From alice@example.com "):], "%a %b %d %H:%M:%S %Y")
    expected = _quoted(_message(env, BODY) + b"\n") + b"\n"
    assert rest == expected
    # mboxo: only "From " is quoted; ">From " and a bare "From" stay as they are
    assert b"\n>From the start" in rest and b"\n>From already" in rest
    assert b">>From" not in rest and b"\nFrom\nend" in rest
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    box = mailbox.mbox(path, create=False)
    try:
        msgs = list(box)
        assert len(msgs) == 1
        m = msgs[0]
        assert m["Return-Path"] == "<alice@example.com>"
        assert m["Subject"].replace("\n", "") == "test\tfolded"
        assert m["To"] == "bob@example.org"
        assert m.get_from().startswith("alice@example.com ")
        assert b"8-bit" in box.get_bytes(0)
        assert box.get_bytes(0).endswith(b"\nFrom\nend\n")
        assert b" \xe9\xff 8-bit" in box.get_bytes(0)
    finally:
        box.close()


def test_mbox_null_sender_and_second_message(tmp_path):
    env, spool, lay = _queue(tmp_path, sender="")
    assert deliver(env, 0, spool, lay, {}).ok
    env2, _, _ = _queue(tmp_path, body=b"second\n")
    assert deliver(env2, 0, spool, lay, {}).ok
    path = os.path.join(lay.mail_dir, ME)
    raw = _mbox_bytes(path)
    assert raw.startswith(b"From MAILER-DAEMON ")
    assert b"\nReturn-Path: <>\n" in raw
    box = mailbox.mbox(path, create=False)
    try:
        assert len(box) == 2
        assert box.get_bytes(1).endswith(b"\n\nsecond\n")
        assert box[0].get_from().startswith("MAILER-DAEMON ")
    finally:
        box.close()


def test_mbox_pads_mailbox_without_final_blank_line(tmp_path):
    env, spool, lay = _queue(tmp_path)
    os.makedirs(lay.mail_dir)
    path = os.path.join(lay.mail_dir, ME)
    with open(path, "wb") as f:
        f.write(b"From x Thu Nov 26 14:45:26 2026\nSubject: old\n\nno final newline")
    os.chmod(path, 0o600)
    assert deliver(env, 0, spool, lay, {}).ok
    box = mailbox.mbox(path, create=False)
    try:
        assert len(box) == 2
        assert box[0]["Subject"] == "old"
        assert box[1]["Subject"].startswith("test")
    finally:
        box.close()


def test_unknown_user(tmp_path):
    env, spool, lay = _queue(tmp_path, rcpts=[Recipient("nosuchuserxyz", mailer="local",
                                                        user="nosuchuserxyz")])
    st = deliver(env, 0, spool, lay, {})
    assert (st.status, st.reply) == ("5.1.1", "User unknown")
    st = deliver(env, 0, spool, lay, {"MailboxFormat": "maildir"})
    assert st.status == "5.1.1"


def test_symlinked_mailbox_refused(tmp_path):
    env, spool, lay = _queue(tmp_path)
    os.makedirs(lay.mail_dir)
    target = tmp_path / "target"
    target.write_bytes(b"precious\n")
    os.symlink(str(target), os.path.join(lay.mail_dir, ME))
    st = deliver(env, 0, spool, lay, {})
    assert st.status[0] in "45", st
    assert target.read_bytes() == b"precious\n"
    assert not os.path.exists(_jf(spool, env))


def test_hardlinked_mailbox_refused(tmp_path):
    env, spool, lay = _queue(tmp_path)
    os.makedirs(lay.mail_dir)
    other = tmp_path / "other"
    other.write_bytes(b"precious\n")
    os.chmod(other, 0o600)
    os.link(str(other), os.path.join(lay.mail_dir, ME))
    st = deliver(env, 0, spool, lay, {})
    assert st.status[0] in "45", st
    assert "link" in st.reply
    assert other.read_bytes() == b"precious\n"


def test_mbox_not_owned_by_recipient_refused(tmp_path):
    if not ROOT:
        pytest.skip("needs root to make a file owned by someone else")
    env, spool, lay = _queue(tmp_path)
    os.makedirs(lay.mail_dir)
    path = os.path.join(lay.mail_dir, ME)
    with open(path, "wb") as f:
        f.write(b"")
    os.chown(path, 65534, 65534)
    st = deliver(env, 0, spool, lay, {})
    assert st.status.startswith("5.2"), st
    assert os.path.getsize(path) == 0


# -- journal replay (the kill -9 windows) ----------------------------------------------------

def _one_message(path, env):
    box = mailbox.mbox(path, create=False)
    try:
        assert len(box) == 1
        assert box.get_bytes(0) == _quoted(_message(env, BODY) + b"\n")
    finally:
        box.close()


def test_replay_after_complete_append_does_not_duplicate(tmp_path):
    env, spool, lay = _queue(tmp_path)
    assert deliver(env, 0, spool, lay, {}).ok
    jf = _jf(spool, env)
    entry = journal_mod.Journal(spool.path, env.qid, 0).load()
    assert entry is not None and entry["O"] == 0
    path = os.path.join(lay.mail_dir, ME)
    assert entry["L"] == os.path.getsize(path)
    # killed before the qf said "sent": the queue runs it again
    st = deliver(env, 0, spool, lay, {})
    assert st.ok and "already" in st.reply
    _one_message(path, env)
    # a later message appended after ours does not confuse the check
    env2, _, _ = _queue(tmp_path, body=b"later\n")
    assert deliver(env2, 0, spool, lay, {}).ok
    assert deliver(env, 0, spool, lay, {}).reply.endswith("(already in mailbox)")
    box = mailbox.mbox(path, create=False)
    assert len(box) == 2
    box.close()
    assert os.path.exists(jf)
    spool.remove(env.qid)
    assert not os.path.exists(jf)


def test_replay_journal_written_nothing_appended(tmp_path):
    env, spool, lay = _queue(tmp_path)
    path = os.path.join(lay.mail_dir, ME)
    env0, _, _ = _queue(tmp_path, body=b"earlier\n")
    assert deliver(env0, 0, spool, lay, {}).ok
    size0 = os.path.getsize(path)
    assert deliver(env, 0, spool, lay, {}).ok
    os.truncate(path, size0)  # killed after the journal, before the append
    st = deliver(env, 0, spool, lay, {})
    assert st.reply == "Delivered"
    box = mailbox.mbox(path, create=False)
    try:
        assert len(box) == 2
        assert box.get_bytes(1) == _quoted(_message(env, BODY) + b"\n")
    finally:
        box.close()


@pytest.mark.parametrize("cut", [1, 40, 0.5, -1])
def test_replay_truncates_partial_append(tmp_path, cut):
    env0, spool, lay = _queue(tmp_path, body=b"earlier\n")
    assert deliver(env0, 0, spool, lay, {}).ok
    path = os.path.join(lay.mail_dir, ME)
    size0 = os.path.getsize(path)
    env, _, _ = _queue(tmp_path)
    assert deliver(env, 0, spool, lay, {}).ok
    full = os.path.getsize(path)
    length = full - size0
    keep = int(length * cut) if isinstance(cut, float) else (cut if cut > 0 else length + cut)
    os.truncate(path, size0 + keep)  # killed in the middle of the append
    st = deliver(env, 0, spool, lay, {})
    assert st.reply == "Delivered", st
    raw = _mbox_bytes(path)
    assert len(raw) == size0 + length
    box = mailbox.mbox(path, create=False)
    try:
        assert len(box) == 2
        assert box.get_bytes(1) == _quoted(_message(env, BODY) + b"\n")
    finally:
        box.close()


def test_replay_mailbox_changed_delivers_again(tmp_path):
    env, spool, lay = _queue(tmp_path)
    assert deliver(env, 0, spool, lay, {}).ok
    path = os.path.join(lay.mail_dir, ME)
    os.truncate(path, 30)  # partial, then another writer appended something else
    with open(path, "ab") as f:
        f.write(b"\nFrom other Thu Nov 26 14:45:26 2026\nSubject: other\n\nx\n\n")
    st = deliver(env, 0, spool, lay, {})
    assert st.reply == "Delivered"
    assert _mbox_bytes(path).endswith(_quoted(_message(env, BODY) + b"\n") + b"\n")


def test_write_error_rolls_back(tmp_path):
    """A real write failure (RLIMIT_FSIZE) mid-append leaves the mailbox as it was."""
    env0, spool, lay = _queue(tmp_path, body=b"earlier\n")
    assert deliver(env0, 0, spool, lay, {}).ok
    path = os.path.join(lay.mail_dir, ME)
    before = _mbox_bytes(path)
    env, _, _ = _queue(tmp_path, body=b"x" * 300000 + b"\n")
    script = textwrap.dedent("""
        import resource, signal, sys
        sys.path.insert(0, %r)
        from pysendmail import layout
        from pysendmail.delivery.local import deliver
        from pysendmail.queue.spool import Spool
        lay = layout.for_root(%r)
        spool = Spool(lay.queue)
        env = spool.load(%r)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (%d, %d))
        st = deliver(env, 0, spool, lay, {})
        print(st.status, st.reply)
    """) % (REPO, str(tmp_path), env.qid, len(before) + 100000, len(before) + 100000)
    out = subprocess.run([PY, "-c", script], capture_output=True, timeout=60, check=True)
    status = out.stdout.decode().split()[0]
    assert status.startswith("4."), out
    assert _mbox_bytes(path) == before
    assert not os.path.exists(_jf(spool, env))
    assert deliver(env, 0, spool, lay, {}).reply == "Delivered"


# -- Maildir -----------------------------------------------------------------------------------

def test_maildir_delivery_idempotent_and_sized(tmp_path):
    env, spool, lay = _queue(tmp_path)
    opts = {"MailboxFormat": "maildir", "MaildirPath": str(tmp_path / "md" / "%u")}
    st = deliver(env, 0, spool, lay, opts)
    assert st.status == "2.0.0", st
    md = tmp_path / "md" / ME
    for sub in ("new", "cur", "tmp"):
        assert stat.S_IMODE(os.stat(md / sub).st_mode) == 0o700
    names = os.listdir(md / "new")
    assert len(names) == 1
    name = names[0]
    data = (md / "new" / name).read_bytes()
    assert data == _message(env, BODY)
    assert name.endswith(",S=%d" % len(data))
    assert "Q%sR0." % env.qid in name
    box = mailbox.Maildir(str(md), create=False)
    (key,) = box.keys()
    assert box.get_bytes(key) == data
    assert box[key]["X-Eight"] is not None
    # again (killed before the qf was updated): nothing new
    st = deliver(env, 0, spool, lay, opts)
    assert st.ok and "already" in st.reply
    assert len(os.listdir(md / "new")) == 1
    # read by an IMAP server: moved to cur/ with flags; a stale tmp file of ours is cleaned
    os.rename(md / "new" / name, md / "cur" / (name + ":2,S"))
    (md / "tmp" / ("1.M1P1Q%sR0.host" % env.qid)).write_bytes(b"half")
    assert deliver(env, 0, spool, lay, opts).ok
    assert os.listdir(md / "new") == [] and os.listdir(md / "tmp") == []
    # another recipient index of the same message is a different delivery
    env.recipients.append(Recipient(ME, mailer="local", user=ME))
    assert deliver(env, 1, spool, lay, opts).reply == "Delivered"
    assert len(os.listdir(md / "new")) == 1
    assert len(mailbox.Maildir(str(md), create=False)) == 2


def test_maildir_default_private_path(tmp_path):
    env, spool, lay = _queue(tmp_path)
    assert deliver(env, 0, spool, lay, {"MailboxFormat": "maildir"}).ok
    md = os.path.join(lay.mail_dir, ME, "Maildir")
    assert len(mailbox.Maildir(md, create=False)) == 1


# -- big messages in bounded memory ---------------------------------------------------------

BIG_SCRIPT = """
import hashlib, os, resource, sys, time
sys.path.insert(0, %(repo)r)
from pysendmail import layout
from pysendmail.delivery.local import deliver
from pysendmail.model import Envelope, Recipient
from pysendmail.queue.spool import Spool
lay = layout.for_root(%(base)r)
spool = Spool(lay.queue); spool.ensure()
me = %(me)r
env = Envelope(sender="big@example.com", headers=[b"Subject: big"],
               recipients=[Recipient(me, mailer="local", user=me)])
qid, fd = spool.allocate(); env.qid = qid
line = b"0123456789 abcdefghijklmnopqrstuvwxyz \\xe9\\xe8 ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\\n"
block = (line * 99 + b"From a line that needs quoting\\n")
n = 0
while n < 50 * 1024 * 1024:
    os.write(fd, block); n += len(block)
spool.commit(env, fd); os.close(fd)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
st = deliver(env, 0, spool, lay, %(opts)r)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(st.status, n, before, after, kids)
"""


@pytest.mark.parametrize("fmt", ["mbox", "maildir"])
def test_50mb_message_bounded_memory(tmp_path, fmt):
    opts = {"MailboxFormat": fmt}
    if fmt == "maildir":
        opts["MaildirPath"] = str(tmp_path / "md")
    script = BIG_SCRIPT % {"repo": REPO, "base": str(tmp_path), "me": ME, "opts": opts}
    out = subprocess.run([PY, "-c", script], capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    status, n, before, after, kids = out.stdout.decode().split()
    n, before, after, kids = int(n), int(before), int(after), int(kids)
    assert status == "2.0.0"
    assert after - before < 30 * 1024, (before, after)  # KB
    assert kids < before + 30 * 1024, (before, kids)
    line = (b"0123456789 abcdefghijklmnopqrstuvwxyz \xe9\xe8 ABCDEFGHIJKLMNOPQRSTUVWXYZ"
            b" 0123456789\n")
    block = line * 99 + b"From a line that needs quoting\n"
    head = b"Return-Path: <big@example.com>\nSubject: big\n\n"
    h = hashlib.sha256()
    if fmt == "mbox":
        path = os.path.join(str(tmp_path), "mail", ME)
        qblock = line * 99 + b">From a line that needs quoting\n"
        with open(path, "rb") as f:
            first = f.readline()
            assert first.startswith(b"From big@example.com ")
            size = len(first)
            h2 = hashlib.sha256()
            while True:
                data = f.read(1 << 20)
                if not data:
                    break
                h2.update(data)
                size += len(data)
        h.update(head)
        for _ in range(n // len(block)):
            h.update(qblock)
        h.update(b"\n")
        assert h2.hexdigest() == h.hexdigest()
        assert size == len(first) + len(head) + (n // len(block)) * len(qblock) + 1
    else:
        (name,) = os.listdir(tmp_path / "md" / "new")
        path = tmp_path / "md" / "new" / name
        size = os.path.getsize(path)
        assert size == len(head) + n
        assert name.endswith(",S=%d" % size)


# -- prog and file ---------------------------------------------------------------------------

def _world_dir():
    d = tempfile.mkdtemp(prefix="pysm-ld-")
    os.chmod(d, 0o777)
    return d


def _prog_env(tmp_path, command, owner="", body=BODY):
    return _queue(tmp_path, body=body,
                  rcpts=[Recipient("|" + command, mailer="prog", user=command, owner=owner)])


def test_prog_gets_message_on_stdin(tmp_path):
    d = _world_dir()
    try:
        out = os.path.join(d, "out")
        cmd = "cat > %s; printf '%%s %%s %%s %%s' \"$SENDER\" \"$(id -u)\" \"$PATH\" \"$SHELL\" > %s.env" \
            % (out, out)
        env, spool, lay = _prog_env(tmp_path, cmd)
        st = deliver(env, 0, spool, lay, {})
        assert st.status == "2.0.0", st
        with open(out, "rb") as f:
            assert f.read() == _message(env, BODY, return_path=False)
        with open(out + ".env") as f:
            sender, uid, path, shell = f.read().split()
        assert sender == "alice@example.com" and path == "/bin:/usr/bin" and shell == "/bin/sh"
        if ROOT:
            assert int(uid) == pwd.getpwnam("mail").pw_uid  # DefaultUser, never root
        else:
            assert int(uid) == os.geteuid()
    finally:
        shutil.rmtree(d)


@pytest.mark.parametrize("code,status,text", [
    (75, "4.0.0", "Deferred"), (67, "5.1.1", "User unknown"), (64, "5.3.0", "Bad usage"),
    (3, "5.3.0", "unknown mailer error 3"), (74, "4.3.0", "I/O error")])
def test_prog_exit_status(tmp_path, code, status, text):
    env, spool, lay = _prog_env(tmp_path, "cat >/dev/null; echo oops; exit %d" % code)
    st = deliver(env, 0, spool, lay, {})
    assert st.status == status
    assert st.reply == "%s: oops" % text


def test_prog_not_reading_stdin_big_message(tmp_path):
    env, spool, lay = _prog_env(tmp_path, "exit 0", body=b"y" * 5000000)
    assert deliver(env, 0, spool, lay, {}).status == "2.0.0"


def test_prog_background_child_keeps_pipe_open(tmp_path):
    env, spool, lay = _prog_env(tmp_path, "cat >/dev/null; (sleep 20 &) ; exit 0")
    t = time.monotonic()
    assert deliver(env, 0, spool, lay, {}).status == "2.0.0"
    assert time.monotonic() - t < 10


def test_prog_timeout(tmp_path):
    env, spool, lay = _prog_env(tmp_path, "sleep 30")
    t = time.monotonic()
    st = deliver(env, 0, spool, lay, {"Timeout.prog": "1s"})
    assert st.temporary
    assert time.monotonic() - t < 10


def test_file_delivery(tmp_path):
    d = _world_dir()
    try:
        path = os.path.join(d, "log.mbox")
        env, spool, lay = _queue(tmp_path, rcpts=[Recipient(path, mailer="file", user=path)])
        assert deliver(env, 0, spool, lay, {}).status == "2.0.0"
        assert deliver(env, 0, spool, lay, {}).reply.endswith("(already in mailbox)")
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o600
        if ROOT:
            assert st.st_uid == pwd.getpwnam("mail").pw_uid
        box = mailbox.mbox(path, create=False)
        assert len(box) == 1 and box.get_bytes(0) == _quoted(_message(env, BODY) + b"\n")
        box.close()
        # symlink and executable file refused
        target = os.path.join(d, "target")
        with open(target, "wb") as f:
            f.write(b"keep")
        link = os.path.join(d, "link")
        os.symlink(target, link)
        env2, spool2, lay2 = _queue(tmp_path / "b", rcpts=[Recipient(link, mailer="file", user=link)])
        assert not deliver(env2, 0, spool2, lay2, {}).ok
        with open(target, "rb") as f:
            assert f.read() == b"keep"
        env4, spool4, lay4 = _queue(tmp_path / "d", rcpts=[Recipient("/dev/null", mailer="file",
                                                                     user="/dev/null")])
        assert deliver(env4, 0, spool4, lay4, {}).status == "2.0.0"
        assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
        os.chmod(target, 0o777)
        env3, spool3, lay3 = _queue(tmp_path / "c", rcpts=[Recipient(target, mailer="file",
                                                                     user=target)])
        st3 = deliver(env3, 0, spool3, lay3, {})
        assert st3.status.startswith("5") and "executable" in st3.reply
    finally:
        shutil.rmtree(d)


# -- as root, to a real other user ------------------------------------------------------------

# One throwaway user per test process: several suites may run at once on one machine.
TEST_USER = "pysm-test%d" % (os.getpid() % 1000000)


@pytest.fixture
def other_user():
    if not ROOT:
        pytest.skip("needs root")
    subprocess.run(["userdel", TEST_USER], capture_output=True)
    for _ in range(10):  # /etc/passwd may be locked by another test's useradd for a moment
        r = subprocess.run(["useradd", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin",
                            TEST_USER], capture_output=True)
        if r.returncode == 0:
            break
        time.sleep(0.5)
    else:
        pytest.fail("useradd %s: %s" % (TEST_USER, r.stderr.decode()))
    try:
        yield pwd.getpwnam(TEST_USER)
    finally:
        for _ in range(10):
            if subprocess.run(["userdel", TEST_USER], capture_output=True).returncode in (0, 6):
                break
            time.sleep(0.5)


@pytest.fixture
def open_base():
    d = tempfile.mkdtemp(prefix="pysm-ld-")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def test_root_delivers_as_user(tmp_path, other_user, open_base):
    mail_gid = grp.getgrnam("mail").gr_gid
    lay = layout_mod.for_root(str(tmp_path))
    lay.mail_dir = os.path.join(open_base, "mail")
    os.mkdir(lay.mail_dir)
    os.chown(lay.mail_dir, 0, mail_gid)
    os.chmod(lay.mail_dir, 0o2775)  # like Debian's /var/mail
    rc = [Recipient(TEST_USER, mailer="local", user=TEST_USER)]
    env, spool, _ = _queue(tmp_path, rcpts=rc)
    st = deliver(env, 0, spool, lay, {})
    assert st.status == "2.0.0", st
    path = os.path.join(lay.mail_dir, TEST_USER)
    s = os.stat(path)
    assert (s.st_uid, s.st_gid, stat.S_IMODE(s.st_mode)) == (other_user.pw_uid, mail_gid, 0o600)
    env2, _, _ = _queue(tmp_path, rcpts=rc, body=b"two\n")
    assert deliver(env2, 0, spool, lay, {}).ok
    assert deliver(env, 0, spool, lay, {}).reply.endswith("(already in mailbox)")
    box = mailbox.mbox(path, create=False)
    assert len(box) == 2 and box.get_bytes(0) == _quoted(_message(env, BODY) + b"\n")
    box.close()
    assert not os.path.exists(path + ".lock")
    # a mailbox the user does not own is refused: the kernel says no (0600), or our
    # owner check does (0666), and nothing is written
    size = os.path.getsize(path)
    os.chown(path, 0, 0)
    env3, _, _ = _queue(tmp_path, rcpts=rc)
    assert deliver(env3, 0, spool, lay, {}).status.startswith("4.")
    os.chmod(path, 0o666)
    st = deliver(env3, 0, spool, lay, {})
    assert st.status.startswith("5.2") and "owned by uid 0" in st.reply, st
    assert os.path.getsize(path) == size
    # Maildir under a root-owned directory: root makes one level, the user the rest
    opts = {"MailboxFormat": "maildir", "MaildirPath": "%m/md/%u/Maildir"}
    os.chmod(lay.mail_dir, 0o755)
    st = deliver(env, 0, spool, lay, opts)
    assert st.ok, st
    md = os.path.join(lay.mail_dir, "md", TEST_USER, "Maildir")
    for p in (os.path.dirname(md), md, md + "/new", md + "/tmp"):
        s = os.stat(p)
        assert s.st_uid == other_user.pw_uid and stat.S_IMODE(s.st_mode) == 0o700, p
    (name,) = os.listdir(md + "/new")
    s = os.stat(os.path.join(md, "new", name))
    assert s.st_uid == other_user.pw_uid and stat.S_IMODE(s.st_mode) == 0o600
    # prog and file run as the owner
    out = os.path.join(open_base, "w")
    os.mkdir(out)
    os.chmod(out, 0o777)
    cmd = "id -u > %s/uid" % out
    envp, _, _ = _queue(tmp_path, rcpts=[Recipient("|" + cmd, mailer="prog", user=cmd,
                                                   owner=TEST_USER)])
    assert deliver(envp, 0, spool, lay, {}).ok
    with open(os.path.join(out, "uid")) as f:
        assert int(f.read()) == other_user.pw_uid
    fpath = os.path.join(out, "f.mbox")
    envf, _, _ = _queue(tmp_path, rcpts=[Recipient(fpath, mailer="file", user=fpath,
                                                   owner=TEST_USER)])
    assert deliver(envf, 0, spool, lay, {}).ok
    assert os.stat(fpath).st_uid == other_user.pw_uid


def test_private_instance_as_plain_user(other_user, open_base):
    """A non-root private instance delivers as itself, with no fork or privileges."""
    base = os.path.join(open_base, "inst")
    os.mkdir(base)
    os.chown(base, other_user.pw_uid, other_user.pw_gid)
    script = textwrap.dedent("""
        import os, sys, mailbox
        sys.path.insert(0, %r)
        from pysendmail import layout
        from pysendmail.delivery.local import deliver
        from pysendmail.model import Envelope, Recipient
        from pysendmail.queue.spool import Spool
        lay = layout.for_root(%r)
        spool = Spool(lay.queue); spool.ensure()
        env = Envelope(sender="s@example.com", headers=[b"Subject: p"],
                       recipients=[Recipient("root", mailer="local", user="root")])
        qid, fd = spool.allocate(); env.qid = qid
        os.write(fd, b"From x\\n"); spool.commit(env, fd)
        a = deliver(env, 0, spool, lay, {}); b = deliver(env, 0, spool, lay, {})
        box = mailbox.mbox(os.path.join(lay.mail_dir, "root"), create=False)
        print(a.status, b.reply.replace(" ", "_"), len(box), os.stat(box._path).st_uid)
    """) % (REPO, base)
    py = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else PY
    out = subprocess.run([py, "-c", script], capture_output=True, timeout=60,
                         user=other_user.pw_uid, group=other_user.pw_gid, extra_groups=[],
                         cwd="/")
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    a, b, n, uid = out.stdout.decode().split()
    assert a == "2.0.0" and b.endswith("(already_in_mailbox)") and n == "1"
    assert int(uid) == other_user.pw_uid


# -- kill -9 at many points, then run again: one complete copy each ----------------------

KILL_SCRIPT = """
import os, sys
sys.path.insert(0, %(repo)r)
from pysendmail import layout, log
from pysendmail.delivery.local import deliver


class StderrLogger:
    def __getattr__(self, severity):
        return lambda qid, text: sys.stderr.write("%%s: %%s\\n" %% (severity, text))


log.set_default(StderrLogger())
from pysendmail.queue.spool import Spool
lay = layout.for_root(%(base)r)
spool = Spool(lay.queue)
env = spool.load(sys.argv[1])
st = deliver(env, 0, spool, lay, %(opts)r)
print(st.status, st.reply)
"""


def _chown_tree(top, uid, gid):
    for d, dirs, files in os.walk(top):
        for name in [d] + [os.path.join(d, n) for n in dirs + files]:
            os.lchown(name, uid, gid)


@pytest.mark.parametrize("fmt", ["mbox", "maildir"])
@pytest.mark.parametrize("who", ["self", "user"])
def test_kill9_at_many_points_exactly_once(fmt, who, open_base, request):
    """SIGKILL the delivering process at spread-out moments (before, during and after
    the append), then deliver again: every message is there once and whole."""
    base = os.path.join(open_base, "inst")
    user = ME
    run_kw = {}
    py = PY
    if who == "user":
        if not ROOT:
            pytest.skip("needs root")
        pw = request.getfixturevalue("other_user")
        user = pw.pw_name
        py = "/usr/bin/python3"
        run_kw = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [], "cwd": "/"}
    opts = {"MailboxFormat": fmt, "MaildirPath": os.path.join(base, "md")}
    body = b"".join(b"line %07d From here\nFrom there %d\n" % (i, i) for i in range(300000))
    msgs = []
    for _ in range(12):
        env, spool, lay = _queue(base, body=body,
                                 rcpts=[Recipient(user, mailer="local", user=user)])
        msgs.append(env)
    if who == "user":
        _chown_tree(base, pw.pw_uid, pw.pw_gid)
    script = KILL_SCRIPT % {"repo": REPO, "base": base, "opts": opts}
    for i, env in enumerate(msgs):
        delay = i * 0.6 / len(msgs)
        p = subprocess.Popen([py, "-c", script, env.qid], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True, **run_kw)
        time.sleep(delay)
        if i % 2:
            os.killpg(p.pid, signal.SIGKILL)  # the runner and its delivery child
        else:
            p.kill()  # the runner only: an orphaned child may finish the append
        p.communicate(timeout=60)
        again = subprocess.run([py, "-c", script, env.qid], capture_output=True,
                               timeout=120, **run_kw)
        assert again.stdout.startswith(b"2.0.0"), again
    if fmt == "mbox":
        box = mailbox.mbox(os.path.join(lay.mail_dir, user), create=False)
    else:
        box = mailbox.Maildir(opts["MaildirPath"], create=False)
    try:
        assert len(box) == len(msgs)
        got = sorted(box.get_bytes(k) for k in box.keys())
    finally:
        box.close()
    one = _message(msgs[0], body)
    if fmt == "mbox":
        one = _quoted(one)  # the body ends with a newline; the blank line is the separator
    wanted = sorted(one.replace(msgs[0].sender.encode(), env.sender.encode()) for env in msgs)
    assert got == wanted


# -- locking ---------------------------------------------------------------------------------

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
getattr(fcntl, sys.argv[2])(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[3]))
"""


@pytest.mark.parametrize("how", ["lockf", "flock"])
def test_waits_for_a_kernel_lock_then_gives_up(tmp_path, how):
    env, spool, lay = _queue(tmp_path)
    os.makedirs(lay.mail_dir)
    path = os.path.join(lay.mail_dir, ME)
    with open(path, "wb"):
        pass
    os.chmod(path, 0o600)
    holder = subprocess.Popen([PY, "-c", HOLD, path, how, "1.5"], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"locked\n"
        t = time.monotonic()
        st = deliver(env, 0, spool, lay, {"Timeout.mailboxlock": "10s"})
        assert st.status == "2.0.0" and time.monotonic() - t > 1.0
    finally:
        holder.communicate(timeout=30)
    holder = subprocess.Popen([PY, "-c", HOLD, path, how, "2.5"], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"locked\n"
        env2, _, _ = _queue(tmp_path, body=b"two\n")
        st = deliver(env2, 0, spool, lay, {"Timeout.mailboxlock": "1s"})
        assert st.status == "4.2.0" and "locked" in st.reply
    finally:
        holder.communicate(timeout=30)
    assert not os.path.exists(_jf(spool, env2))
    box = mailbox.mbox(path, create=False)
    assert len(box) == 1
    box.close()


def test_dotlock_live_holder_waits_dead_holder_removed(tmp_path):
    env, spool, lay = _queue(tmp_path)
    os.makedirs(lay.mail_dir)
    lock = os.path.join(lay.mail_dir, ME + ".lock")
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        with open(lock, "w") as f:
            f.write("%d %s\n" % (sleeper.pid, os.uname().nodename))
        st = deliver(env, 0, spool, lay, {"Timeout.mailboxlock": "1s"})
        assert st.status == "4.2.0" and "dotlock" in st.reply
        assert os.path.exists(lock)
    finally:
        sleeper.kill()
        sleeper.wait()
    st = deliver(env, 0, spool, lay, {"Timeout.mailboxlock": "5s"})  # its holder is gone
    assert st.status == "2.0.0"
    assert not os.path.exists(lock)
    # an old dotlock of unknown origin is stale after 5 minutes
    with open(lock, "w") as f:
        f.write("")
    os.utime(lock, (time.time() - 400, time.time() - 400))
    env2, _, _ = _queue(tmp_path, body=b"two\n")
    assert deliver(env2, 0, spool, lay, {"Timeout.mailboxlock": "5s"}).ok
    box = mailbox.mbox(os.path.join(lay.mail_dir, ME), create=False)
    assert len(box) == 2
    box.close()


# -- a real reader: Dovecot's imap in PREAUTH mode over stdin ---------------------------------

DOVECOT_CONF = """base_dir = {d}/base
state_dir = {d}/state
log_path = {d}/dovecot.log
instance_name = pysm-ld
ssl = no
mail_location = {loc}
mail_privileged_group = mail
first_valid_uid = 100
passdb {{
  driver = passwd-file
  args = {d}/users
}}
userdb {{
  driver = passwd-file
  args = {d}/users
}}
"""


@pytest.mark.peer
@pytest.mark.parametrize("fmt", ["maildir", "mbox"])
def test_dovecot_reads_what_we_deliver(tmp_path, fmt, other_user, open_base):
    from conftest import IN_CI, require_program
    require_program("dovecot")
    imap = "/usr/lib/dovecot/imap"
    if not os.path.exists(imap):
        (pytest.fail if IN_CI else pytest.skip)("%s is missing" % imap)
    user, mail_gid = other_user.pw_name, grp.getgrnam("mail").gr_gid
    lay = layout_mod.for_root(str(tmp_path))
    lay.mail_dir = os.path.join(open_base, "mail")
    os.mkdir(lay.mail_dir)
    os.chown(lay.mail_dir, 0, mail_gid)
    os.chmod(lay.mail_dir, 0o2775)
    opts = {"MailboxFormat": fmt, "MaildirPath": "%m/md/%u/Maildir"}
    rc = [Recipient(user, mailer="local", user=user)]
    env, spool, _ = _queue(tmp_path, rcpts=rc)
    env2, _, _ = _queue(tmp_path, rcpts=rc, body=b"second \xc3\xa9\nFrom x\n")
    for e in (env, env2, env):
        assert deliver(e, 0, spool, lay, opts).ok
    d = os.path.join(open_base, "dovecot")
    os.mkdir(d)
    if fmt == "maildir":
        loc = "maildir:%s/md/%%u/Maildir" % lay.mail_dir
    else:
        root = os.path.join(open_base, "mroot")
        os.mkdir(root)
        os.chown(root, other_user.pw_uid, other_user.pw_gid)
        loc = "mbox:%s:INBOX=%s/%%u" % (root, lay.mail_dir)
    with open(os.path.join(d, "dovecot.conf"), "w") as f:
        f.write(DOVECOT_CONF.format(d=d, loc=loc))
    with open(os.path.join(d, "users"), "w") as f:
        f.write("%s::%d:%d::%s::\n" % (user, other_user.pw_uid, other_user.pw_gid, open_base))
    cmds = b"a SELECT INBOX\r\nb FETCH 1:* (RFC822.SIZE BODY.PEEK[])\r\nc LOGOUT\r\n"
    r = subprocess.run([imap, "-c", os.path.join(d, "dovecot.conf")], input=cmds,
                       capture_output=True, timeout=60, user=other_user.pw_uid,
                       group=other_user.pw_gid, extra_groups=[mail_gid], cwd="/",
                       env={"USER": user, "HOME": open_base, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r
    assert b"Error" not in r.stderr, r.stderr
    out = r.stdout
    assert b"* 2 EXISTS\r\n" in out and b"b OK Fetch completed" in out, out
    for e, body in ((env, BODY), (env2, b"second \xc3\xa9\nFrom x\n")):
        msg = _message(e, body)
        if fmt == "mbox":
            msg = _quoted(msg if msg.endswith(b"\n") else msg + b"\n")
        crlf = msg.replace(b"\n", b"\r\n")
        assert b"RFC822.SIZE %d BODY[] {%d}\r\n" % (len(crlf), len(crlf)) + crlf in out, (crlf, out)


# -- SIGKILL at the N-th system call (strace fault injection), then run again -----------------

SWEEP = [("write", n) for n in range(1, 13)] + [("fsync", n) for n in (1, 2, 3, 4)] + \
    [("linkat", 1), ("linkat", 2), ("rename", 1), ("rename", 2), ("ftruncate", 1),
     ("unlink", 1), ("unlink", 2)]


def test_killed_at_each_syscall_exactly_once(tmp_path):
    """Each delivery is killed (SIGKILL from strace, in the runner and in its delivery
    child alike) at its N-th call of a syscall; a plain retry must then leave exactly one
    whole copy, repair partial appends, and leave no dotlock."""
    from conftest import require_program
    strace = require_program("strace")
    script = KILL_SCRIPT % {"repo": REPO, "base": str(tmp_path), "opts": {}}
    body = b"".join(b"line %06d\nFrom x %d\n" % (i, i) for i in range(20000))
    msgs = []
    outcomes = set()
    for sc, n in SWEEP:
        env, spool, lay = _queue(tmp_path, body=body)
        msgs.append(env)
        killed = subprocess.run([strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=" + sc,
                                 "-e", "inject=%s:signal=KILL:when=%d" % (sc, n),
                                 PY, "-c", script, env.qid], capture_output=True, timeout=120)
        again = subprocess.run([PY, "-c", script, env.qid], capture_output=True, timeout=120)
        assert again.stdout.startswith(b"2.0.0"), (sc, n, killed, again)
        outcomes.add(b"partial" in again.stderr)
    path = os.path.join(lay.mail_dir, ME)
    box = mailbox.mbox(path, create=False)
    try:
        got = [box.get_bytes(k) for k in box.keys()]
    finally:
        box.close()
    assert len(got) == len(msgs)
    assert got == [_quoted(_message(e, body)) for e in msgs]
    assert outcomes == {True, False}  # some kills did cut an append short, and were repaired
    assert not os.path.exists(path + ".lock")


# -- a torn append is removed by the next writer, whichever message it brings -----------------

def _kill_in_append(strace, script, mailbox_path, qid, nth=3):
    """Run the delivery of `qid`, SIGKILLed at its nth write() to the mailbox."""
    subprocess.run([strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=write",
                    "-e", "inject=write:signal=KILL:when=%d" % nth, "-P", mailbox_path,
                    PY, "-c", script, qid], capture_output=True, timeout=120)


def test_torn_append_removed_before_another_message(tmp_path):
    """Killed mid-append (strace SIGKILL), then ANOTHER message for the mailbox comes
    first, then the retry: two whole messages, no torn copy, no record left."""
    from conftest import require_program
    strace = require_program("strace")
    script = KILL_SCRIPT % {"repo": REPO, "base": str(tmp_path), "opts": {}}
    env0, spool, lay = _queue(tmp_path, body=b"earlier\n")
    assert deliver(env0, 0, spool, lay, {}).ok
    path = os.path.join(lay.mail_dir, ME)
    size0 = os.path.getsize(path)
    big = b"".join(b"line %06d\nFrom x %d\n" % (i, i) for i in range(20000))
    env, _, _ = _queue(tmp_path, body=big)
    _kill_in_append(strace, script, path, env.qid)
    assert size0 < os.path.getsize(path) < size0 + len(big)          # torn
    assert os.path.exists(path + journal_mod.PENDING_SUFFIX)
    env2, _, _ = _queue(tmp_path, body=b"new mail\n")
    out = subprocess.run([PY, "-c", script, env2.qid], capture_output=True, timeout=120)
    assert out.stdout.startswith(b"2.0.0") and b"partial append" in out.stderr, out
    assert os.path.getsize(path) > size0
    out = subprocess.run([PY, "-c", script, env.qid], capture_output=True, timeout=120)
    assert out.stdout.startswith(b"2.0.0"), out
    box = mailbox.mbox(path, create=False)
    try:
        got = [box.get_bytes(k) for k in box.keys()]
    finally:
        box.close()
    assert got == [_quoted(_message(e, b))
                   for e, b in ((env0, b"earlier\n"), (env2, b"new mail\n"), (env, big))]
    assert not os.path.exists(path + journal_mod.PENDING_SUFFIX)
    assert not os.path.exists(path + ".lock")


def test_pending_record_never_cuts_foreign_data(tmp_path):
    """A torn append followed by another program's message (not ours, no record check):
    the next delivery must not truncate anything, only drop the record."""
    from conftest import require_program
    strace = require_program("strace")
    script = KILL_SCRIPT % {"repo": REPO, "base": str(tmp_path), "opts": {}}
    big = b"".join(b"line %06d\n" % i for i in range(20000))
    env, spool, lay = _queue(tmp_path, body=big)
    path = os.path.join(lay.mail_dir, ME)
    _kill_in_append(strace, script, path, env.qid, nth=2)
    foreign = b"\n\nFrom other@example.org Thu Nov 26 14:45:26 2026\nSubject: other\n\nx\n\n"
    with open(path, "ab") as f:
        f.write(foreign)
    before = _mbox_bytes(path)
    env2, _, _ = _queue(tmp_path, body=b"new mail\n")
    assert deliver(env2, 0, spool, lay, {}).ok
    after = _mbox_bytes(path)
    assert after.startswith(before) and len(after) > len(before)
    assert not os.path.exists(path + journal_mod.PENDING_SUFFIX)


def test_pending_record_symlink_not_followed(tmp_path):
    env, spool, lay = _queue(tmp_path)
    path = os.path.join(lay.mail_dir, ME)
    assert deliver(env, 0, spool, lay, {}).ok
    target = tmp_path / "target"
    target.write_bytes(b"V pysendmail-pending 1\nkeep me\n.\n")
    os.symlink(target, path + journal_mod.PENDING_SUFFIX)
    before = _mbox_bytes(path)
    env2, _, _ = _queue(tmp_path, body=b"second\n")
    assert deliver(env2, 0, spool, lay, {}).ok
    assert _mbox_bytes(path).startswith(before)
    assert target.read_bytes() == b"V pysendmail-pending 1\nkeep me\n.\n"
    assert not os.path.lexists(path + journal_mod.PENDING_SUFFIX)


def test_stream_digest_blocks_and_head():
    d = journal_mod.StreamDigest(block=4)
    for piece in (b"\n", b"From a b\nxy", b"zw", b"uvq"):
        d.update(piece)
    assert d.head == b"\nFrom a b\n" and d.length == 17
    assert d.blocks == ["%08x" % zlib.crc32(b) for b in (b"\nFro", b"m a ", b"b\nxy", b"zwuv")]
    assert d.hexdigest() == hashlib.sha256(b"\nFrom a b\nxyzwuvq").hexdigest()


# -- as root: leftovers of a kill between creating and chowning --------------------------------

def test_root_repairs_unchowned_mailbox_and_maildir_level(tmp_path, other_user, open_base):
    """What a kill between root's create (mkdir) and its chown leaves, an empty root-owned
    0600 mailbox or 0700 user directory, is handed over to the user on the next delivery."""
    base = os.path.join(open_base, "inst")
    rc = [Recipient(TEST_USER, mailer="local", user=TEST_USER)]
    env, spool, lay = _queue(base, rcpts=rc)
    mail_gid = grp.getgrnam("mail").gr_gid
    os.makedirs(lay.mail_dir, exist_ok=True)
    os.chown(lay.mail_dir, 0, mail_gid)
    os.chmod(lay.mail_dir, 0o2775)
    box = os.path.join(lay.mail_dir, TEST_USER)
    fd = os.open(box, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    os.chmod(box, 0o600)
    assert deliver(env, 0, spool, lay, {}).ok
    assert os.stat(box).st_uid == other_user.pw_uid
    os.mkdir(os.path.join(lay.mail_dir, "md"), 0o755)
    udir = os.path.join(lay.mail_dir, "md", TEST_USER)
    os.mkdir(udir, 0o700)
    opts = {"MailboxFormat": "maildir", "MaildirPath": "%m/md/%u/Maildir"}
    st = deliver(env, 0, spool, lay, opts)
    assert st.ok, st
    assert os.stat(udir).st_uid == other_user.pw_uid
    assert os.stat(os.path.join(udir, "Maildir")).st_uid == other_user.pw_uid
    # a non-empty root-owned directory is not the leftover: left alone (and refused)
    os.mkdir(os.path.join(lay.mail_dir, "md2"), 0o755)
    odir = os.path.join(lay.mail_dir, "md2", TEST_USER)
    os.mkdir(odir, 0o700)
    open(os.path.join(odir, "keep"), "w").close()
    opts["MaildirPath"] = "%m/md2/%u/Maildir"
    assert not deliver(env, 0, spool, lay, opts).ok
    assert os.stat(odir).st_uid == 0
