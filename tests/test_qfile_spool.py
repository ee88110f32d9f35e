"""pysendmail.queue.qfile and pysendmail.queue.spool: the control file and the spool.

Control files must round-trip whatever an address, a name or a header holds (spaces,
'+', '=', newlines, 8-bit) and never let a value forge a line or end the file; a file
without its final '.' is refused. Queue ids look like Sendmail's and stay unique; a
commit leaves df and qf and no tf, with the fsyncs before the rename (checked with
strace); the df lock excludes a second process and dies with its holder; hold,
release, set_aside and remove leave exactly the files they should.
"""
import calendar
import errno
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from pysendmail.model import Envelope, Recipient
from pysendmail.queue import pool as poolmod, qfile
from pysendmail.queue.pool import cut_to
from pysendmail.queue.spool import QUEUE_ID_CHARS, Spool, make_qid

HOSTILE = [
    "with space", "plus+sign", "equals=sign", "new\nline", "cr\rlf\r\n", "nul\0byte",
    "déjà vu ✓", "\xff surrogate-free 8bit é", "+41=", "R addr=evil@example.com",
    "\n.\n", ".", "H Bcc: forged", "tab\there", "%s%d", "back\\slash", "", "  lead/trail  ",
]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hostile_envelope():
    env = Envelope(qid="6AQEjQR0019689", created=1795704326, sender="we ird+=\n@example.com",
                   uid=1000, user="us er+=é", full_name="Cron \"Daemon\"\n<x> = +",
                   body_type="8BITMIME", envid="env id+=\n.", ret="HDRS", priority=30025,
                   attempts=3, last_attempt=1795704400, next_attempt=1795705000,
                   hold_reason="held\nfor + review", size=12345, protocol="ESMTP x",
                   relay="a b@localhost", warned=True, error_mode="m", flags="-f")
    env.macros = {"_": "root@localhost", "{client addr}": "1.2.3.4 + =", "x\n": "\n.\n"}
    for i, text in enumerate(HOSTILE):
        env.recipients.append(Recipient(
            "Name %d <%s@example.com>" % (i, text), "%s@example.com" % text, state="deferred",
            notify="SUCCESS,FAILURE", orcpt="rfc822;" + text, mailer="local", host=text,
            user=text, status="4.0.0", diag="451 " + text, attempts=i, parent=text,
            owner=text, reported=text))
    env.headers = [
        b"Subject: plain",
        b"X-Folded: a\n .\n b",                           # a lone dot inside a folded header
        b"X-Folded2: x\n\t.\n\tR addr=evil@example.com\n\t.",
        b"X-8bit: \xe9t\xe9 \xff\x00 \r bare cr",
        b"X-Spaces:    many   spaces   ",
        b"X-Plus: a+b=c",
    ]
    return env


def assert_same(a, b):
    for name in Envelope.__slots__:
        if name == "recipients":
            continue
        assert getattr(a, name) == getattr(b, name), name
    assert len(a.recipients) == len(b.recipients)
    for ra, rb in zip(a.recipients, b.recipients):
        for name in Recipient.__slots__:
            assert getattr(ra, name) == getattr(rb, name), (name, getattr(ra, name))


# ---- control file --------------------------------------------------------------------------

def test_round_trip_with_hostile_values():
    env = hostile_envelope()
    data = qfile.dumps(env)
    back = qfile.loads(data)
    assert_same(env, back)
    assert qfile.dumps(back) == data


def test_no_value_forges_a_line():
    data = qfile.dumps(hostile_envelope())
    lines = data.split(b"\n")
    assert lines[0] == qfile.VERSION_LINE
    assert lines[-2:] == [b".", b""]
    assert lines.count(b".") == 1
    # one R line per recipient, one S line, and every line starts with a known tag or a blank
    assert sum(1 for l in lines if l.startswith(b"R ")) == len(HOSTILE)
    assert sum(1 for l in lines if l.startswith(b"S ")) == 1
    for l in lines[1:-2]:
        assert l[:1] in b" \tVITKNWPFBZXEpsQDfuSwMRH", l
        if not l.startswith((b"H ", b" ", b"\t")):
            assert re.fullmatch(rb"[A-Za-z] [\x21-\x7e ]*", l), l
            assert b"\r" not in l and b"\0" not in l


def test_xtext():
    assert qfile.xtext("a b+c=d") == "a+20b+2Bc+3Dd"
    assert qfile.xtext("é") == "+C3+A9"
    assert qfile.unxtext(qfile.xtext("a b+c=d\n\0é")) == "a b+c=d\n\0é"
    assert qfile.xtext(b"\xff") == "+FF"
    assert qfile.unxtext("+FF") == "\udcff"                       # surrogateescape round trip
    assert qfile.xtext(qfile.unxtext("+FF")) == "+FF"


def test_null_sender_and_no_user():
    env = Envelope(qid="X", sender="", user="")
    back = qfile.loads(qfile.dumps(env))
    assert back.sender == "" and back.user == ""
    env = Envelope(qid="X", sender="<>")
    assert qfile.loads(qfile.dumps(env)).sender == ""


def test_header_with_an_unfolded_newline_cannot_corrupt_the_file():
    """A header holding a bare LF followed by a non-blank (a contract breach by some
    producer, e.g. a future milter) must either be refused by dumps or round-trip
    unchanged: it must never add a recipient, end the file early or make it unreadable."""
    for bad in (b"X-Evil: a\nR addr=evil@example.com", b"X-Evil: a\n.\n b", b"X-Evil: a\n.",
                b"X-Evil: a\nS evil@example.com"):
        env = Envelope(qid="X", sender="a@b", recipients=[Recipient("root")], headers=[bad])
        try:
            data = qfile.dumps(env)
        except ValueError:
            continue
        back = qfile.loads(data)
        assert [r.address for r in back.recipients] == ["root"], bad
        assert back.sender == "a@b", bad
        assert back.headers == [bad], bad


def test_every_truncation_is_refused():
    data = qfile.dumps(hostile_envelope())
    for k in range(len(data)):
        with pytest.raises(qfile.FormatError):
            qfile.loads(data[:k])


def test_foreign_and_broken_files_are_refused():
    for data in (b"", b"\n", b"V pysendmail-qf 2\n.\n", b"garbage\n.\n", b"V1\nI x\n.\n",
                 qfile.VERSION_LINE + b"\n ghost continuation\n.\n",
                 qfile.VERSION_LINE + b"\n? unknown\n.\n",
                 qfile.VERSION_LINE + b"\nI abc\n.\nextra\n",
                 qfile.VERSION_LINE + b"\nI abc\n."):
        with pytest.raises(qfile.FormatError):
            qfile.loads(data)


# ---- queue ids -----------------------------------------------------------------------------

def test_queue_id_matches_sendmail_shape():
    now = calendar.timegm((2026, 11, 26, 14, 45, 26))
    assert make_qid(now, 19689, 27 * 60) == "6AQEjQR0019689"      # sendmail-ref's id
    assert make_qid(now, 1234567, 0) == "6AQEjQ00234567"


def test_queue_ids_unique_under_2000_rapid_allocations(tmp_path):
    spool = Spool(str(tmp_path / "q"))
    spool.ensure()
    ids = []
    fds = []
    try:
        for _ in range(2000):
            qid, fd = spool.allocate()
            ids.append(qid)
            fds.append(fd)
    finally:
        for fd in fds:
            os.close(fd)
    assert len(set(ids)) == 2000
    pattern = re.compile("[%s]{8}[0-9]{6}" % re.escape(QUEUE_ID_CHARS))
    for qid in ids:
        assert len(qid) == 14 and pattern.fullmatch(qid), qid
        assert qid.endswith("%06d" % (os.getpid() % 1000000))
    assert sorted(os.listdir(spool.path)) == sorted("df" + q for q in ids)


def test_queue_ids_unique_across_processes_in_the_same_second(tmp_path):
    path = str(tmp_path / "q")
    Spool(path).ensure()
    code = ("import sys, os\nfrom pysendmail.queue.spool import Spool\n"
            "s = Spool(sys.argv[1])\nfor _ in range(300):\n"
            "    q, fd = s.allocate(now=1795704326)\n    os.close(fd)\n    print(q)\n")
    env = dict(os.environ, PYTHONPATH=REPO)
    procs = [subprocess.Popen([sys.executable, "-c", code, path], stdout=subprocess.PIPE, env=env)
             for _ in range(4)]
    ids = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        ids += out.decode().split()
    assert len(ids) == 1200 and len(set(ids)) == 1200


# ---- commit ----------------------------------------------------------------------------------

def _env(qid, **kw):
    return Envelope(qid=qid, created=int(time.time()), sender="alice@example.com",
                    recipients=[Recipient("root", mailer="local", user="root")],
                    headers=[b"Subject: t"], **kw)


def test_commit_leaves_df_and_qf_and_no_tf(tmp_path):
    spool = Spool(str(tmp_path / "q"))
    spool.ensure()
    qid, fd = spool.allocate()
    os.write(fd, b"body\n")
    env = _env(qid)
    spool.commit(env, fd)
    os.close(fd)
    assert sorted(os.listdir(spool.path)) == ["df" + qid, "qf" + qid]
    with open(spool.df(qid), "rb") as f:
        assert f.read() == b"body\n"
    assert_same(spool.load(qid), env)
    assert spool.entries() == [(qid, "queued")]
    assert os.stat(spool.qf(qid)).st_mode & 0o777 == 0o600
    assert os.stat(spool.df(qid)).st_mode & 0o777 == 0o600


def test_commit_fsyncs_before_publishing(tmp_path, require_program):
    strace = require_program("strace")
    path = str(tmp_path / "q")
    code = ("import os, sys\nfrom pysendmail.queue.spool import Spool\nfrom pysendmail.model import "
            "Envelope, Recipient\ns = Spool(sys.argv[1]); s.ensure()\nqid, fd = s.allocate()\n"
            "os.write(fd, b'body\\n')\nos.write(2, b'COMMIT ' + qid.encode() + b'\\n')\n"
            "s.commit(Envelope(qid=qid, recipients=[Recipient('root')]), fd)\n"
            "os.write(2, b'DONE\\n')\n")
    log = str(tmp_path / "trace")
    subprocess.run([strace, "-f", "-o", log, "-e",
                    "trace=openat,write,fsync,fdatasync,rename,renameat,renameat2,close",
                    sys.executable, "-c", code, path], check=True, capture_output=True,
                   env=dict(os.environ, PYTHONPATH=REPO), timeout=60)
    with open(log) as f:
        lines = f.read().splitlines()
    start = next(i for i, l in enumerate(lines) if "COMMIT" in l)
    end = next(i for i, l in enumerate(lines) if "DONE" in l)
    calls = lines[start + 1:end]
    qid = re.search(r"COMMIT (\w+)", lines[start]).group(1)

    def index(pred, what):
        for i, l in enumerate(calls):
            if pred(l):
                return i
        raise AssertionError("no %s in %s" % (what, "\n".join(calls)))

    first_fsync = index(lambda l: "fsync(" in l, "fsync of df")
    tf_open = index(lambda l: "openat(" in l and "/tf" + qid in l, "open of tf")
    rename = index(lambda l: "rename" in l and "qf" + qid in l, "rename tf -> qf")
    tf_fsync = max(i for i, l in enumerate(calls[:rename]) if "fsync(" in l)
    assert first_fsync < tf_open < tf_fsync < rename
    dir_fsync = [i for i, l in enumerate(calls) if "fsync(" in l and i > rename]
    assert dir_fsync, "directory not fsync'd after the rename"


def test_discard_removes_everything(tmp_path):
    spool = Spool(str(tmp_path / "q"))
    spool.ensure()
    qid, fd = spool.allocate()
    spool.discard(qid, fd)
    assert os.listdir(spool.path) == []


# ---- locking -------------------------------------------------------------------------------

LOCK_CODE = ("import sys\nfrom pysendmail.queue.spool import Spool\n"
             "fd = Spool(sys.argv[1]).lock(sys.argv[2])\nprint('none' if fd is None else 'locked')\n")


def _other_process_lock(path, qid):
    p = subprocess.run([sys.executable, "-c", LOCK_CODE, path, qid], capture_output=True,
                       env=dict(os.environ, PYTHONPATH=REPO), timeout=60, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_lock_excludes_a_second_process(tmp_path):
    spool = Spool(str(tmp_path / "q"))
    spool.ensure()
    qid, fd = spool.allocate()          # allocate returns the df locked
    spool.commit(_env(qid), fd)
    assert _other_process_lock(spool.path, qid) == "none"
    os.close(fd)
    assert _other_process_lock(spool.path, qid) == "locked"
    fd2 = spool.lock(qid)
    assert fd2 is not None
    assert _other_process_lock(spool.path, qid) == "none"
    os.close(fd2)
    assert spool.lock("NOSUCHQUEUEID0") is None


def test_lock_dies_with_a_killed_holder(tmp_path):
    spool = Spool(str(tmp_path / "q"))
    spool.ensure()
    qid, fd = spool.allocate()
    spool.commit(_env(qid), fd)
    os.close(fd)
    code = ("import sys, time\nfrom pysendmail.queue.spool import Spool\n"
            "fd = Spool(sys.argv[1]).lock(sys.argv[2])\nprint('held' if fd else 'no', flush=True)\n"
            "time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, spool.path, qid], stdout=subprocess.PIPE,
                              env=dict(os.environ, PYTHONPATH=REPO), text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert spool.lock(qid) is None
        assert spool.is_locked(qid) is True
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        holder.stdout.close()
    fd = spool.lock(qid)
    assert fd is not None
    os.close(fd)


def test_lock_does_not_follow_a_symlinked_df(tmp_path):
    spool = Spool(str(tmp_path / "q"))
    spool.ensure()
    target = tmp_path / "target"
    target.write_bytes(b"x")
    os.symlink(target, spool.df("SYMLINKEDQID00"))
    try:
        fd = spool.lock("SYMLINKEDQID00")
    except OSError as e:
        assert e.errno == errno.ELOOP
    else:
        assert fd is None, "lock() followed a symlinked df"


def test_load_does_not_read_through_a_symlinked_qf(tmp_path):
    """A control file that is a link is refused as unreadable (a queue run sets it
    aside), never read through."""
    spool = Spool(str(tmp_path / "q"))
    spool.ensure()
    qid, fd = spool.allocate()
    os.write(fd, b"body\n")
    spool.commit(_env(qid), fd)
    os.close(fd)
    target = tmp_path / "elsewhere"
    os.rename(spool.qf(qid), target)
    os.symlink(target, spool.qf(qid))
    with pytest.raises(qfile.FormatError):
        spool.load(qid)
    with pytest.raises(qfile.FormatError):
        spool.load_stamped(qid)


# ---- hold, release, set aside, remove ----------------------------------------------------------

def _queued(tmp_path):
    spool = Spool(str(tmp_path / "q"))
    spool.ensure()
    qid, fd = spool.allocate()
    os.write(fd, b"body\n")
    spool.commit(_env(qid), fd)
    os.close(fd)
    return spool, qid


def test_hold_and_release(tmp_path):
    spool, qid = _queued(tmp_path)
    spool.hold(qid, "spam\nsuspect")
    assert sorted(os.listdir(spool.path)) == ["df" + qid, "hf" + qid]
    assert spool.entries() == [(qid, "held")]
    assert spool.entries(include_held=False) == []
    env = spool.load(qid)
    assert env.hold_reason == "spam\nsuspect"
    env.attempts = 5
    spool.save(env)                                  # saving a held message keeps it held
    assert sorted(os.listdir(spool.path)) == ["df" + qid, "hf" + qid]
    spool.release(qid)
    assert sorted(os.listdir(spool.path)) == ["df" + qid, "qf" + qid]
    env = spool.load(qid)
    assert env.hold_reason == "" and env.attempts == 5
    assert spool.entries() == [(qid, "queued")]
    spool.hold(qid, "")
    assert spool.load(qid).hold_reason == "held"


def test_set_aside(tmp_path):
    spool, qid = _queued(tmp_path)
    with open(spool.qf(qid), "wb") as f:
        f.write(b"V pysendmail-qf 1\nI " + qid.encode() + b"\n")      # truncated
    with pytest.raises(qfile.FormatError):
        spool.load(qid)
    spool.set_aside(qid)
    assert sorted(os.listdir(spool.path)) == ["Qf" + qid, "df" + qid]
    assert spool.entries() == []
    with pytest.raises(FileNotFoundError):
        spool.load(qid)


@pytest.mark.parametrize("held", (False, True))
def test_remove_leaves_no_file(tmp_path, held):
    spool, qid = _queued(tmp_path)
    qid2, fd2 = spool.allocate()
    spool.commit(_env(qid2), fd2)
    os.close(fd2)
    if held:
        spool.hold(qid, "x")
    for n in (0, 1, 12):
        with open(os.path.join(spool.path, "jf%s.%d" % (qid, n)), "w") as f:
            f.write("x")
    spool.remove(qid)
    assert sorted(os.listdir(spool.path)) == ["df" + qid2, "qf" + qid2]
    assert spool.control_path(qid) is None
    spool.remove(qid)                                # idempotent
    spool.remove(qid2)
    assert os.listdir(spool.path) == []


def test_body_size_and_missing_directory(tmp_path):
    spool, qid = _queued(tmp_path)
    assert spool.body_size(qid) == 5
    assert spool.body_size("NOSUCHQUEUEID0") == 0
    assert Spool(str(tmp_path / "absent")).entries() == []


def test_sweep_orphans_removes_only_old_leftovers(tmp_path):
    """What killed processes leave (an uncommitted df, tf, .tmp, journals of gone
    messages, pickup markers) is removed once older than the grace time; a committed
    message, a locked df being written and young files are kept."""
    import fcntl
    import time as _time

    spool = Spool(str(tmp_path / "q"))
    spool.ensure()
    qid, fd = spool.allocate()
    spool.commit(Envelope(qid=qid, sender="a@b", recipients=[Recipient("root")]), fd)
    os.close(fd)
    writing, wfd = spool.allocate()              # a submission still writing: locked
    names = ["dfORPHAN00000001", "tfORPHAN00000001", ".tmp.1.qfX", "jfGONE0000000001.0",
             "jf%s.0" % qid, "mfdrop.1"]
    for name in names:
        with open(os.path.join(spool.path, name), "w") as f:
            f.write("x")
    old = _time.time() - 7200
    for name in os.listdir(spool.path):
        os.utime(os.path.join(spool.path, name), (old, old))
    young = os.path.join(spool.path, "dfYOUNG000000001")
    with open(young, "w") as f:
        f.write("x")
    removed = spool.sweep_orphans(_time.time())
    assert sorted(removed) == sorted(["dfORPHAN00000001", "tfORPHAN00000001", ".tmp.1.qfX",
                                      "jfGONE0000000001.0", "mfdrop.1"])
    left = set(os.listdir(spool.path))
    assert {"qf" + qid, "df" + qid, "jf%s.0" % qid, "df" + writing, "dfYOUNG000000001"} <= left
    os.close(wfd)


# -- the pool keeps recycled files whole; takers overwrite and cut them -------------------

def _pool_file(spool, name, data):
    os.makedirs(spool.pool, 0o700, exist_ok=True)
    with open(os.path.join(spool.pool, name), "wb") as f:
        f.write(data)


def test_recycled_file_keeps_its_bytes_and_the_taker_cuts_it(tmp_path):
    spool = Spool(str(tmp_path / "queue"), use_pool=True)
    os.makedirs(spool.path, 0o700)
    old = b"an old message nobody should see again\n" * 300
    _pool_file(spool, "1.1.1", old)
    qid, fd = spool.allocate()
    try:
        assert os.fstat(fd).st_size == len(old)        # blocks kept for reuse
        os.write(fd, b"new body\n")
        cut_to(fd, len(b"new body\n"))
    finally:
        os.close(fd)
    with open(spool.df(qid), "rb") as f:
        assert f.read() == b"new body\n"
    assert os.listdir(spool.pool) == []
    # removal recycles whole (no truncation), so the next taker again gets old bytes
    env = Envelope(qid=qid, created=int(time.time()), sender="a@x",
                   recipients=[Recipient("b@y")], headers=[b"Subject: s"])
    spool._write_control(spool.qf(qid), env)
    spool.remove(qid, 1)
    sizes = sorted(os.path.getsize(os.path.join(spool.pool, n)) for n in os.listdir(spool.pool))
    assert len(sizes) == 2 and len(b"new body\n") in sizes and all(s > 0 for s in sizes)


@pytest.mark.parametrize("renameat2", [True, False])
def test_pool_file_never_replaces_an_existing_file(tmp_path, monkeypatch, renameat2):
    """take() with check: a name that exists is left alone (RENAME_NOREPLACE, or a check
    and a rename where libc has no renameat2), and the pool file stays in the pool."""
    if not renameat2:
        monkeypatch.setattr(poolmod, "_noreplace", False)
    spool = Spool(str(tmp_path / "queue"), use_pool=True)
    os.makedirs(spool.path, 0o700)
    _pool_file(spool, "1.1.1", b"old\n")
    with open(spool.df("TAKEN"), "wb") as f:
        f.write(b"a message being written\n")
    assert spool.files.take(spool.df("TAKEN")) is None
    with open(spool.df("TAKEN"), "rb") as f:
        assert f.read() == b"a message being written\n"
    assert os.listdir(spool.pool) == ["1.1.1"]
    spool.files.forget()
    fd = spool.files.take(spool.df("FREE"))
    assert fd is not None and os.fstat(fd).st_size == 0    # emptied (no keep)
    os.close(fd)
    assert os.listdir(spool.pool) == []
    with pytest.raises(FileExistsError):
        poolmod.rename_noreplace(spool.df("FREE"), spool.df("TAKEN"))
    with pytest.raises(FileNotFoundError):
        poolmod.rename_noreplace(spool.df("GONE"), spool.df("NEW"))


def test_pool_takers_walk_the_pool_in_orders_of_their_own(tmp_path, monkeypatch):
    """Two SMTP workers (forked from one process: the same str hashes) take from the
    pool in different orders, so they seldom reach for the same file."""
    spool = Spool(str(tmp_path / "queue"), use_pool=True)
    os.makedirs(spool.path, 0o700)
    for i in range(128):
        _pool_file(spool, "1.1.%d" % i, b"")
    orders = []
    for pid in (4242, 4243):
        monkeypatch.setattr(os, "getpid", lambda pid=pid: pid)
        files = poolmod.FilePool(spool.path)
        orders.append([files._next_name() for _ in range(8)])
    assert orders[0] != orders[1]
    assert len(set(orders[0]) & set(orders[1])) < 8
    # shared out (worker k of 2): each takes only its own half while that is well
    # stocked (32 or more), and all of the pool when it is not
    takes = []
    for k in (0, 1):
        files = poolmod.FilePool(spool.path)
        files.share = (k, 2)
        takes.append(set(files._names or [files._next_name()] + files._names))
    assert takes[0] | takes[1] == set(os.listdir(spool.pool))
    assert all(hash(n) % 2 == k for k in (0, 1) for n in takes[k])
    # a listing that ran out is made again at once while the pool was well stocked,
    # a second later when it was not
    files = poolmod.FilePool(spool.path)
    assert None not in [files._next_name() for _ in range(129)]
    for name in sorted(os.listdir(spool.pool))[24:]:
        os.unlink(os.path.join(spool.pool, name))
    files = poolmod.FilePool(spool.path)
    files.share = (0, 2)
    assert len([files._next_name()] + files._names) == 24
    assert None not in [files._next_name() for _ in range(23)]
    assert files._next_name() is None


def test_maildir_file_from_the_pool_never_shows_old_bytes(tmp_path):
    """A Maildir delivery reuses a pool file: written in the pool, cut to length, then
    moved into tmp/ and new/; a tmp/ directory that is not the recipient's gets a new
    file instead."""
    from pysendmail.delivery import local, maildir
    spool = Spool(str(tmp_path / "queue"))
    os.makedirs(spool.path, 0o700)
    old = b"SECRET of another message\n" * 500
    _pool_file(spool, "1.1.1", old)

    class Source:
        data = b"Subject: hi\n\nshort\n"

        def size(self):
            return len(self.data)

        def chunks(self, mbox=False):
            yield self.data

    md = str(tmp_path / "Maildir")
    placer = local._PoolPlacer(spool, os.getuid(), os.getgid())
    status, item = maildir.prepare(md, Source(), "QID1", 0, created=1, retry=False,
                                   placer=placer)
    assert status.ok and item is not None
    maildir.publish(item)
    with open(item.final, "rb") as f:
        assert f.read() == Source.data
    assert item.final.endswith(",S=%d" % len(Source.data))
    assert os.listdir(spool.pool) == []                # the pool file became the message
    # a tmp/ owned by someone else: no placement (a new file), the pool file stays put
    _pool_file(spool, "2.2.2", old)
    spool.files.forget()
    other = local._PoolPlacer(spool, os.getuid() + 1, os.getgid())
    assert other.place(("nothing", "nothing"), os.path.join(md, "tmp"), "x") is False
    status, item = maildir.prepare(md, Source(), "QID2", 0, created=1, retry=False,
                                   placer=other)
    assert status.ok
    maildir.publish(item)
    with open(item.final, "rb") as f:
        assert f.read() == Source.data
    left = os.listdir(spool.pool)
    assert len(left) == 1 and not left[0].startswith(".")
    with open(os.path.join(spool.pool, left[0]), "rb") as f:
        assert f.read() == b""      # given back emptied: it had been written
