"""Crash-safety acceptance tests: real SIGKILL at many points of submission and delivery.

Requirement (issue): "kill -9 of `sendmail` and of the queue run at many points during
submission and delivery: no message is delivered partially, none twice, and every
submission that exited 0 is delivered."

Method. The installed `sendmail` runs under strace's fault injection,
    strace -f -e trace=SYSCALL -e inject=SYSCALL:signal=KILL:when=N sendmail ...
which delivers a real SIGKILL on entry to the N-th call of SYSCALL, counted per process
(the queue run's delivery children die at their own N-th call too; `-P FILE` counts
only the calls on FILE). No hooks in the product. An unkilled run is traced first to
count the calls; then N sweeps 1..count: every N for the small syscalls (fsync, rename,
unlink, flock, ftruncate, fchmod, fchown, lchown, link, mkdir), a spread sample for the chunked writes
and for openat (the instance's files, plus a few of the interpreter's imports).

Scenarios: submission with -odq and -odi (recipients root and the alias both = root,
daemon; a 1 MB body); submission by `nobody` through the maildrop; the queue run over
four queued messages for root and daemon, as mbox and as Maildir; the queue run that
picks up maildrop files; the queue run that repairs a partial mbox append; every call
of the delivery children on the mbox dotlocks; and, deterministic, a partial append
followed by other mail for the same mailbox before its retry.

After each kill: a canary message is submitted (mail keeps coming after a crash, and
the leftovers must not hurt it), then `sendmail -q` runs unkilled until the queue is
empty, at most 3 times, and:
  * every submission that exited 0 is in each of its recipients' mailboxes exactly once,
    its body byte for byte (mbox bodies compared >From-quoted);
  * a killed submission is in every recipient's mailbox once, or in none;
  * mbox files are well-framed (each From_ line after a blank line, a blank line at
    the end, Python's `mailbox` counts as many messages as there are From_ lines);
    Maildir files carry their true size in S=, tmp/ is empty;
  * `mailq --json` is empty, no qf/hf/Qf file, no complete or .bad- maildrop file and
    no dotlock is left. Orphans (df, tf, jf, mf, .tmp files of killed runs) are counted
    in the printed summaries, not failed: nothing reads them again.
A randomized variant kills `sendmail` (or its whole process group) from outside after a
random delay (CRASH_SEED=N replays a run). Root only (the second local user, daemon, is
reached through a delivery child that drops privileges); every sweep has a time budget.
"""
import grp
import json
import mailbox
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import IS_ROOT, require_program

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root (delivery to a second local user)")

USERS = ("root", "daemon")          # two local mailboxes; "both" is an alias for them
ALIASES = "# crash-safety test aliases\nboth: root, daemon\n"
RCPTS = ["root", "both"]            # two recipients, one an alias of two users
RECOVERY_OPTS = ["-O", "Timeout.mailboxlock=2s"]   # a stuck mailbox shows up in seconds
MAX_RECOVERY_RUNS = 3
WORKERS = max(1, min(4, os.cpu_count() or 1))
SWEEP_SYSCALLS = ("write", "pwrite64", "fsync", "fdatasync", "rename", "renameat",
                  "renameat2", "unlink", "unlinkat", "openat", "flock", "ftruncate",
                  "link", "linkat", "mkdir", "fchmod", "fchown", "lchown", "fchownat")
MAILDIR_OPTS = ["-O", "MailboxFormat=maildir"]
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


# ---- messages ---------------------------------------------------------------------------

def make_body(tid, size):
    """A deterministic body of about `size` bytes: varied lines, some starting with
    'From ' and '>From ' (mbox quoting), 8-bit bytes; ends with a newline."""
    rnd = random.Random(tid)
    lines = []
    total = 0
    i = 0
    while total < size:
        kind = rnd.randrange(12)
        if kind == 0:
            line = b"From the line %d of %s, quoted in mbox" % (i, tid.encode())
        elif kind == 1:
            line = b">From already quoted %d" % i
        elif kind == 2:
            line = b""
        elif kind == 3:
            line = b"caf\xc3\xa9 \xe9\xff 8-bit %d" % i
        else:
            line = b"%s %06d " % (tid.encode(), i) + bytes(
                rnd.choice(b"abcdefghijklmnopqrstuvwxyz0123456789 .,:-")
                for _ in range(rnd.randrange(10, 90)))
        lines.append(line)
        total += len(line) + 1
        i += 1
    return b"\n".join(lines) + b"\n"


def make_message(tid, size):
    body = make_body(tid, size)
    head = ("From: Crash Tester <root@localhost>\nTo: root\nSubject: crash test %s\n"
            "X-Test-Id: %s\n" % (tid, tid)).encode()
    return head + b"\n" + body, body


def mbox_quoted(body):
    return b"\n".join(b">" + line if line.startswith(b"From ") else line
                      for line in body.split(b"\n"))


class Expect:
    """A message that may be in the mailboxes: its body, its users, and whether it must."""

    __slots__ = ("body", "users", "must")

    def __init__(self, body, users, must):
        self.body = body
        self.users = tuple(users)
        self.must = must


# ---- instances ----------------------------------------------------------------------------

class Crashbed:
    """Private instances (PYSENDMAIL_ROOT) under one 0755 directory, so that the delivery
    child running as `daemon` can reach its mailbox."""

    def __init__(self, sm_bin):
        self.sm = os.path.join(sm_bin, "sendmail")
        self.mailq = os.path.join(sm_bin, "mailq")
        self.top = tempfile.mkdtemp(prefix="pysm-crash-")
        os.chmod(self.top, 0o755)
        self._n = 0
        self._lock = threading.Lock()
        self.leftovers = {}

    def note_leftovers(self, scenario, names):
        """Count what a recovered queue directory still holds (orphans of killed runs:
        df, tf, jf, mf, .tmp files: harmless, never picked up again), by kind, for the
        sweep summaries."""
        with self._lock:
            counts = self.leftovers.setdefault(scenario, {})
            for name in names:
                if name.startswith(("qf", "hf", "Qf")):
                    continue        # not orphans: reported as problems
                kind = ".tmp" if name.startswith(".tmp") else name[:2]
                counts[kind] = counts.get(kind, 0) + 1

    def leftover_text(self, scenario):
        counts = self.leftovers.get(scenario, {})
        return ", ".join("%s %d" % kv for kv in sorted(counts.items())) or "none"

    def close(self):
        shutil.rmtree(self.top, ignore_errors=True)

    def fresh_dir(self, tag):
        with self._lock:
            self._n += 1
            n = self._n
        d = os.path.join(self.top, "%s-%d" % (tag, n))
        os.mkdir(d, 0o755)
        return d

    def new_instance(self, tag):
        """An empty instance: aliases file, mail directory root:mail 2775 (like /var/mail)."""
        base = os.path.join(self.fresh_dir(tag), "i")
        os.makedirs(os.path.join(base, "etc"))
        with open(os.path.join(base, "etc", "aliases"), "w") as f:
            f.write(ALIASES)
        mail = os.path.join(base, "mail")
        os.mkdir(mail)
        os.chown(mail, 0, grp.getgrnam("mail").gr_gid)
        os.chmod(mail, 0o2775)
        return base

    def clone(self, template, tag):
        """A copy of instance `template` (owners kept: cp -a as root)."""
        base = os.path.join(self.fresh_dir(tag), "i")
        subprocess.run(["cp", "-a", template, base], check=True)
        return base

    def env(self, base):
        return dict(os.environ, PYSENDMAIL_ROOT=base)

    def run(self, base, args, data=b"", prefix=(), timeout=120):
        return subprocess.run(list(prefix) + [self.sm] + list(args), input=data,
                              capture_output=True, env=self.env(base), timeout=timeout)

    def submit(self, base, args, data):
        p = self.run(base, args, data)
        assert p.returncode == 0, "sendmail %s: %d %r %r" % (args, p.returncode, p.stdout, p.stderr)


def strace_prefix(log, syscall, n, path=None, user=None):
    """strace arguments that SIGKILL a tracee on entry to its n-th `syscall` (only
    calls on `path` if given; the command runs as `user` if given)."""
    pre = ["strace", "-f", "-o", log, "-e", "trace=" + syscall,
           "-e", "inject=%s:signal=KILL:when=%d" % (syscall, n)]
    if path:
        pre += ["-P", path]
    if user:
        pre += ["-u", user]
    return pre


def was_killed(log):
    try:
        with open(log, "rb") as f:
            return b"+++ killed by SIGKILL" in f.read()
    except FileNotFoundError:
        return False


# ---- checks ---------------------------------------------------------------------------------

_TID = re.compile(rb"^X-Test-Id: *(\S+)", re.M | re.I)


def _tid(message):
    head = message.partition(b"\n\n")[0]
    m = _TID.search(head)
    return m.group(1).decode("ascii", "replace") if m else None


def _first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def read_mbox(path):
    """[(test id, body bytes as stored)] of an mbox file, and framing problems."""
    problems = []
    if not os.path.exists(path):
        return [], problems
    with open(path, "rb") as f:
        raw = f.read()
    if not raw:
        return [], problems
    if not raw.startswith(b"From "):
        problems.append("%s does not start with a From_ line: %r" % (path, raw[:60]))
    if not raw.endswith(b"\n\n"):
        problems.append("%s does not end with a blank line (torn tail %r)" % (path, raw[-60:]))
    seps = 1 + raw.count(b"\nFrom ")
    unframed = raw.count(b"\nFrom ") - raw.count(b"\n\nFrom ")
    if unframed:
        problems.append("%s: %d From_ lines not preceded by a blank line" % (path, unframed))
    box = mailbox.mbox(path, create=False)
    try:
        out = []
        for key in box.keys():
            data = box.get_bytes(key)
            out.append((_tid(data), data.partition(b"\n\n")[2]))
    finally:
        box.close()
    if len(out) != seps:
        problems.append("%s: mailbox module sees %d messages, %d From_ lines" % (path, len(out), seps))
    return out, problems


def read_maildir(path):
    problems = []
    if not os.path.isdir(path):
        return [], problems
    missing = [sub for sub in ("new", "cur", "tmp") if not os.path.isdir(os.path.join(path, sub))]
    if missing:
        return [], ["%s is incomplete: no %s" % (path, ", ".join(missing))]
    for sub in ("new", "cur"):
        for name in os.listdir(os.path.join(path, sub)):
            m = re.search(r",S=(\d+)", name)
            size = os.path.getsize(os.path.join(path, sub, name))
            if not m or int(m.group(1)) != size:
                problems.append("%s/%s/%s: S= does not match the size %d" % (path, sub, name, size))
    left = os.listdir(os.path.join(path, "tmp"))
    if left:
        problems.append("%s/tmp holds leftovers: %s" % (path, left))
    box = mailbox.Maildir(path, factory=None, create=False)
    out = []
    for key in box.keys():
        data = box.get_bytes(key)
        out.append((_tid(data), data.partition(b"\n\n")[2]))
    return out, problems


def check_mailboxes(base, fmt, expected):
    """Problems (strings) with the mailboxes of `base` against `expected` {tid: Expect}."""
    problems = []
    counts = {}
    for user in USERS:
        if fmt == "maildir":
            got, probs = read_maildir(os.path.join(base, "mail", user, "Maildir"))
        else:
            got, probs = read_mbox(os.path.join(base, "mail", user))
        problems += probs
        for tid, body in got:
            exp = expected.get(tid)
            if exp is None:
                problems.append("%s: unexpected message (X-Test-Id %s, %d body bytes)"
                                % (user, tid, len(body)))
                continue
            want = exp.body if fmt == "maildir" else mbox_quoted(exp.body)
            if body != want:
                problems.append("%s: message %s is partial or corrupt: %d body bytes, want %d, "
                                "first difference at %d" % (user, tid, len(body), len(want),
                                                            _first_diff(body, want)))
            counts[(tid, user)] = counts.get((tid, user), 0) + 1
    for tid, exp in expected.items():
        seen = {u: counts.get((tid, u), 0) for u in USERS}
        for u in USERS:
            if u not in exp.users and seen[u]:
                problems.append("%s: message %s delivered to a non-recipient" % (u, tid))
        mine = [seen[u] for u in exp.users]
        if exp.must and mine != [1] * len(mine):
            problems.append("message %s (submission exited 0) delivered %s times, want once each"
                            % (tid, dict(zip(exp.users, mine))))
        elif not exp.must and set(mine) not in ({0}, {1}):
            problems.append("message %s (killed submission) delivered %s times: want once to "
                            "every recipient or to none" % (tid, dict(zip(exp.users, mine))))
    return problems


def queue_files(base):
    try:
        return sorted(os.listdir(os.path.join(base, "spool", "queue")))
    except FileNotFoundError:
        return []


def queued(base):
    return [n for n in queue_files(base) if n[:2] in ("qf", "hf")]


# ---- one kill point ---------------------------------------------------------------------------

class Scenario:
    """What runs killed: `args`/`data` on an instance made by `prepare(bed)` ->
    (base, expected). `submitted` is the (tid, body) of the message the run submits."""

    def __init__(self, name, args, prepare, fmt="mbox", data=b"", submitted=None, opts=(),
                 canary_first=True, user=None):
        self.name = name
        self.args = list(args)
        self.prepare = prepare
        self.fmt = fmt
        self.data = data
        self.submitted = submitted
        self.opts = list(opts)
        self.canary_first = canary_first
        self.user = user                # run the killed command as this user (strace -u)


def recover_and_check(bed, sc, base, expected, label):
    """Canary, bounded recovery runs, then every check. Returns a list of problems.
    The canary is submitted before the recovery runs (mail keeps arriving after a crash),
    or after them when `sc.canary_first` is False."""
    problems = []
    if sc.canary_first:
        problems += _canary(bed, sc, base, expected)
    runs = []
    for _ in range(MAX_RECOVERY_RUNS):
        p = bed.run(base, sc.opts + RECOVERY_OPTS + ["-q"])
        runs.append(p.returncode)
        if not queued(base):
            break
    if not sc.canary_first:
        problems += _canary(bed, sc, base, expected)
        p = bed.run(base, sc.opts + RECOVERY_OPTS + ["-q"])
        runs.append(p.returncode)
    p = subprocess.run([bed.mailq, "--json"], capture_output=True, env=bed.env(base), timeout=60)
    if p.returncode != 0:
        problems.append("mailq --json exited %d: %r" % (p.returncode, p.stderr[-300:]))
    else:
        listing = json.loads(p.stdout)
        if listing["total"]:
            problems.append("queue not empty after %d recovery runs (exit %s): %s" % (
                len(runs), runs, [(m["id"], [(r["address"], r["state"], r["error"])
                                             for r in m["recipients"]])
                                  for m in listing["messages"]]))
    lost = [n for n in queue_files(base) if n.startswith(("Qf", "qf", "hf"))]
    if lost:
        problems.append("control files left in the queue: %s" % lost)
    drop = os.path.join(base, "spool", "maildrop")
    if os.path.isdir(drop):
        # A complete drop file (owner-execute bit) must have been picked up; an
        # incomplete one (a killed submitter's) may wait for pickup's day-old cleanup.
        for name in os.listdir(drop):
            mode = os.lstat(os.path.join(drop, name)).st_mode
            if name.startswith(".bad-") or mode & 0o100:
                problems.append("maildrop file left after recovery: %s (mode %o)" % (name, mode))
    locks = [n for n in os.listdir(os.path.join(base, "mail")) if n.endswith(".lock")]
    if locks:
        problems.append("dotlocks left in the mail directory: %s" % locks)
    problems += check_mailboxes(base, sc.fmt, expected)
    bed.note_leftovers(sc.name, queue_files(base))
    return ["%s: %s" % (label, pr) for pr in problems]


def _canary(bed, sc, base, expected):
    """Submit the canary (later mail must not be hurt by the leftovers of a kill)."""
    msg, body = make_message("canary", 2000)
    p = bed.run(base, sc.opts + ["-odq"] + RCPTS, msg)
    if p.returncode != 0:
        return ["canary submission after the kill exited %d: %r" % (p.returncode, p.stderr[-300:])]
    expected["canary"] = Expect(body, USERS, True)
    return []


def run_point(bed, sc, syscall, n, path=None):
    """Kill `sc` at the n-th `syscall` (optionally only calls on `path`), recover, check.
    Returns (killed, problems)."""
    base, expected = sc.prepare(bed)
    log = os.path.join(os.path.dirname(base), "strace.log")
    target = os.path.join(base, path) if path else None
    p = bed.run(base, sc.opts + sc.args, sc.data,
                prefix=strace_prefix(log, syscall, n, target, sc.user))
    killed = was_killed(log)
    label = "%s kill at %s #%d%s (exit %d)" % (sc.name, syscall, n,
                                                 " on %s" % path if path else "", p.returncode)
    problems = []
    if not killed and p.returncode != 0:
        problems.append("%s: unkilled run failed: %r" % (label, p.stderr[-300:]))
    if sc.submitted:
        tid, body = sc.submitted
        expected[tid] = Expect(body, USERS, p.returncode == 0)
    problems += recover_and_check(bed, sc, base, expected, label)
    if not problems:
        shutil.rmtree(os.path.dirname(base), ignore_errors=True)
    return killed, problems


# ---- counting and planning ----------------------------------------------------------------

_CALL = re.compile(r"^(\d+) +(\w+)\((.*)")


def count_calls(bed, sc, paths=()):
    """Trace an unkilled run: {syscall: {pid: [argument text, ...]}}; also checks the run.
    With `paths` (relative to the instance): every syscall on those files, keyed
    (syscall, path)."""
    base, expected = sc.prepare(bed)
    log = os.path.join(os.path.dirname(base), "count.log")
    prefix = ["strace", "-f", "-y", "-s", "300", "-o", log]
    if paths:
        for path in paths:
            prefix += ["-P", os.path.join(base, path)]
    else:
        prefix += ["-e", "trace=" + ",".join("?" + s for s in SWEEP_SYSCALLS)]
    if sc.user:
        prefix += ["-u", sc.user]
    p = bed.run(base, sc.opts + sc.args, sc.data, prefix=prefix)
    assert p.returncode == 0, "unkilled %s exited %d: %r" % (sc.name, p.returncode, p.stderr)
    calls = {}
    with open(log, errors="replace") as f:
        for line in f:
            m = _CALL.match(line)
            if m and "resumed>" not in line:
                key = m.group(2)
                if paths:
                    key = (key, next(pt for pt in paths if os.path.join(base, pt) in m.group(3)))
                calls.setdefault(key, {}).setdefault(m.group(1), []).append(m.group(3))
    if sc.submitted:
        tid, body = sc.submitted
        expected[tid] = Expect(body, USERS, True)
    problems = recover_and_check(bed, sc, base, expected, sc.name + " unkilled")
    assert not problems, "\n".join(problems)
    return calls, base


def _spread(items, k):
    """At most k of `items`, evenly spread, first and last included."""
    if len(items) <= k:
        return list(items)
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


def plan(calls, base, write_samples=30, open_samples=24, other_samples=4):
    """The (syscall, n) kill points: every n for small counts; for write, the first six and
    a spread sample; for openat, a spread of the calls on the instance's files plus a few
    import-time ones."""
    points = []
    for syscall, per_pid in sorted(calls.items()):
        count = max(len(v) for v in per_pid.values())
        if syscall == "openat":
            mine = sorted({i + 1 for v in per_pid.values() for i, a in enumerate(v) if base in a})
            others = [n for n in range(1, count + 1) if n not in mine]
            ns = sorted(set(_spread(mine, open_samples)) | set(_spread(others, other_samples)))
        elif syscall in ("write", "pwrite64") and count > write_samples:
            ns = sorted(set(range(1, 7)) | set(_spread(list(range(1, count + 1)), write_samples)))
        else:
            ns = list(range(1, count + 1))
        points += [(syscall, n) for n in ns]
    return points


def sweep(bed, sc, budget, required=("write", "fsync", "rename", "openat", "flock"),
          write_samples=30, open_samples=24):
    """Count, plan, run every point (in parallel, within `budget` seconds); assert."""
    calls, base = count_calls(bed, sc)
    for s in required:
        assert s in calls, "%s: no %s calls seen in an unkilled run" % (sc.name, s)
    points = plan(calls, base, write_samples=write_samples, open_samples=open_samples)
    return run_points(bed, sc, points, budget, required)


def run_points(bed, sc, points, budget, required=()):
    """Run the kill points (syscall, n[, path]) in parallel within `budget` seconds;
    assert that none shows a problem and that a kill at each `required` syscall fired."""
    deadline = time.monotonic() + budget
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = [(pt, pool.submit(_timed_point, bed, sc, pt, deadline)) for pt in points]
        results = [(pt, fut.result()) for pt, fut in futures]
    skipped = [pt for pt, r in results if r is None]
    done = [(pt, r) for pt, r in results if r is not None]
    problems = [pr for _, (_, probs) in done for pr in probs]
    killed = {pt for pt, (k, _) in done if k}
    per = {}
    for pt in points:
        per[pt[0]] = per.get(pt[0], 0) + 1
    summary = "%s: %d kill points planned (%s), %d run, %d killed, %d over budget" % (
        sc.name, len(points), ", ".join("%s %d" % kv for kv in sorted(per.items())),
        len(done), len(killed), len(skipped))
    print(summary + "; files left in the queue directories after recovery: "
          + bed.leftover_text(sc.name))
    assert not problems, summary + "\n" + "\n".join(problems)
    assert not skipped, summary + ": the sweep ran out of its %d s budget" % budget
    for s in required:
        assert any(pt[0] == s for pt in killed), "%s: no kill at %s fired" % (sc.name, s)
    return killed


def _timed_point(bed, sc, pt, deadline):
    if time.monotonic() > deadline:
        return None
    return run_point(bed, sc, *pt)


# ---- scenarios ----------------------------------------------------------------------------------

BIG = 1_000_000


@pytest.fixture(scope="module")
def bed(sm_bin):
    require_program("strace")
    require_program("setpriv")
    b = Crashbed(sm_bin)
    yield b
    b.close()


@pytest.fixture(scope="module")
def templates(bed):
    """Instances built once and cloned for every kill point:
    'sub': root's mailbox already holds one message (appends go after it);
    'mbox' / 'maildir': that, plus four queued messages for root and daemon;
    'q2only': 'sub' plus one queued 1 MB message for root and daemon."""
    out = {}
    for fmt, opts in (("mbox", []), ("maildir", MAILDIR_OPTS)):
        base = bed.new_instance("template-" + fmt)
        expected = {}
        msg, body = make_message("old", 5000)
        bed.submit(base, opts + ["-odi", "root"], msg)
        expected["old"] = Expect(body, ("root",), True)
        if fmt == "mbox":
            out["sub"] = (base, dict(expected))
            base = bed.clone(base, "template-queue")
        for tid, size, rcpts, users in (("q1", 3000, ["root"], ("root",)),
                                        ("q2", BIG, RCPTS, USERS),
                                        ("q3", 150_000, ["daemon", "root"], USERS),
                                        ("q4", 800, ["daemon"], ("daemon",))):
            msg, body = make_message(tid, size)
            bed.submit(base, opts + ["-odq"] + rcpts, msg)
            expected[tid] = Expect(body, users, True)
        assert len(queued(base)) == 4
        out[fmt] = (base, expected)
    # 'q2only': root's old message, and q2 (1 MB, root and daemon) queued.
    base, expected = out["sub"]
    base = bed.clone(base, "template-q2")
    expected = dict(expected)
    msg, body = make_message("q2", BIG)
    bed.submit(base, ["-odq"] + RCPTS, msg)
    expected["q2"] = Expect(body, USERS, True)
    out["q2only"] = (base, expected)
    # 'drop-sub': 'sub' with a system-shaped spool: maildrop 1733, queue 0700 (root's),
    # so that `nobody` submits through the maildrop; 'drop': that plus two complete
    # drop files written by nobody (q2, 1 MB, for root and daemon; q4 for daemon).
    base, expected = out["sub"]
    base = bed.clone(base, "template-drop-sub")
    spool = os.path.join(base, "spool")
    os.makedirs(os.path.join(spool, "queue"), 0o700, exist_ok=True)
    os.chmod(spool, 0o755)
    os.mkdir(os.path.join(spool, "maildrop"))
    os.chmod(os.path.join(spool, "maildrop"), 0o1733)
    out["drop-sub"] = (base, dict(expected))
    base = bed.clone(base, "template-drop")
    expected = dict(expected)
    for tid, size, rcpts, users in (("q2", BIG, RCPTS, USERS), ("q4", 800, ["daemon"], ("daemon",))):
        msg, body = make_message(tid, size)
        p = bed.run(base, rcpts, msg, prefix=NOBODY)
        assert p.returncode == 0, (p.stdout, p.stderr)
        expected[tid] = Expect(body, users, True)
    drops = os.listdir(os.path.join(base, "spool", "maildrop"))
    assert len(drops) == 2 and not queued(base), drops
    out["drop"] = (base, expected)
    return out


def _from_template(templates, key):
    def prepare(bed):
        base, expected = templates[key]
        return bed.clone(base, key), dict(expected)
    return prepare


def submission_scenario(templates, mode):
    msg, body = make_message("sub", BIG)
    return Scenario("submission " + mode, [mode] + RCPTS, _from_template(templates, "sub"),
                    data=msg, submitted=("sub", body))


def test_kill_submission_odq(bed, templates):
    """sendmail -odq root both < 1 MB: killed at every write/fsync/rename/unlink/openat/flock."""
    sweep(bed, submission_scenario(templates, "-odq"), budget=40)


def test_kill_submission_odi(bed, templates):
    """sendmail -odi root both < 1 MB: killed while queueing and while delivering."""
    sweep(bed, submission_scenario(templates, "-odi"), budget=50, write_samples=24)


def test_kill_queue_run_mbox(bed, templates):
    """sendmail -q over four messages for root and daemon (mbox)."""
    sc = Scenario("queue run mbox", ["-q"], _from_template(templates, "mbox"))
    sweep(bed, sc, budget=70, write_samples=24)


def test_kill_queue_run_maildir(bed, templates):
    """sendmail -O MailboxFormat=maildir -q over four messages for root and daemon."""
    sc = Scenario("queue run maildir", ["-q"], _from_template(templates, "maildir"),
                  fmt="maildir", opts=MAILDIR_OPTS)
    sweep(bed, sc, budget=50, required=("write", "fsync", "rename", "openat", "flock", "link"),
          write_samples=24)


def test_kill_submission_through_the_maildrop(bed, templates):
    """`nobody` runs sendmail root both < 1 MB (it cannot write the queue: the message
    goes to the maildrop, complete once fsync'd and marked +x); killed at every step.
    Root's recovery queue runs pick it up and deliver it."""
    msg, body = make_message("sub", BIG)
    sc = Scenario("submission as nobody", RCPTS, _from_template(templates, "drop-sub"),
                  data=msg, submitted=("sub", body), user="nobody")
    sweep(bed, sc, budget=25, required=("write", "fsync", "fchmod", "openat"), write_samples=20)


def test_kill_queue_run_picking_up(bed, templates):
    """Root's sendmail -q picking up two drop files (mf marker, df, qf, unlink of the
    drop) and delivering them; killed at every step."""
    sc = Scenario("pickup queue run", ["-q"], _from_template(templates, "drop"))
    sweep(bed, sc, budget=40, write_samples=20, open_samples=20)


# ---- a queue run killed while it repairs a partial append ---------------------------------------

def _kill_append_midway(bed, base, user="root", nth_write=6):
    """Run `sendmail -q` with the delivery child SIGKILLed at its nth write to the mbox of
    `user` (a 1 MB message is then partly appended; the queue run itself goes on)."""
    log = os.path.join(os.path.dirname(base), "midway.log")
    box = os.path.join(base, "mail", user)
    bed.run(base, ["-q"], prefix=strace_prefix(log, "write", nth_write, box))
    assert was_killed(log), "the append to %s was not killed" % box


def _partial_q2(templates):
    """An instance whose root mailbox ends with a partial copy of q2 (1 MB), with its
    journal; q2 is queued for root again (deferred), its copy for daemon delivered."""
    def prepare(bed):
        base, expected = templates["q2only"]
        base = bed.clone(base, "repair")
        _kill_append_midway(bed, base)
        return base, dict(expected)
    return prepare


def test_kill_queue_run_repairing_partial_append(bed, templates):
    """The retry that truncates a partial mbox append (ftruncate) and appends again,
    killed at every step. The canary comes after the recovery runs here, so that the
    repair itself is what is tested (see the next test for mail arriving before it)."""
    sc = Scenario("repair run mbox", ["-q"], _partial_q2(templates), canary_first=False)
    sweep(bed, sc, budget=40, required=("write", "fsync", "ftruncate", "openat", "flock"),
          write_samples=12)


def test_partial_append_is_removed_before_the_next_delivery(bed, templates):
    """A delivery child killed mid-append leaves part of q2 at the end of root's mbox.
    The next message for root (sendmail -odi, exit 0) is appended after it, and then
    the retry of q2: the mailbox must not keep the partial copy."""
    base, expected = templates["q2only"]
    base = bed.clone(base, "partial-then-new")
    expected = dict(expected)
    _kill_append_midway(bed, base)
    msg, body = make_message("new", 4000)
    bed.submit(base, ["-odi", "root"], msg)
    expected["new"] = Expect(body, ("root",), True)
    sc = Scenario("partial then new mail", ["-q"], None, canary_first=False)
    problems = recover_and_check(bed, sc, base, expected, sc.name)
    assert not problems, "\n".join(problems)


def test_killed_dotlock_holder_does_not_block_the_mailbox(bed, templates):
    """The delivery children are SIGKILLed at each of their calls on root.lock and
    daemon.lock (the link of the finished lock file into place, its unlink: the lock is
    written as an unnamed O_TMPFILE first, so no kill can leave it empty). The next queue
    runs must still deliver: Timeout.mailboxlock is 2 s in the recovery runs, while a
    dotlock is only taken for stale after 5 minutes unless its process is known gone."""
    sc = Scenario("dotlock holder", ["-q"], _from_template(templates, "q2only"))
    locks = ("mail/root.lock", "mail/daemon.lock")
    calls, _ = count_calls(bed, sc, paths=locks)
    points = [(syscall, n, path) for (syscall, path), per_pid in sorted(calls.items())
              for n in range(1, max(len(v) for v in per_pid.values()) + 1)]
    assert {path for _, _, path in points} == set(locks), calls.keys()
    run_points(bed, sc, points, budget=40, required=("linkat", "unlink"))


# ---- SIGKILL from outside after a random delay -----------------------------------------------------

RANDOM_ITERATIONS = 50


def test_random_external_kill(bed, templates):
    """50 times: start `sendmail -odi root both < 1 MB` or a queue run (mbox, Maildir),
    SIGKILL it (or, every other time, its whole process group) from outside after a
    random delay, let its orphans finish, recover, check. The delay is drawn from
    [0, max(30 ms, duration of an unkilled run)] so kills land all along the run."""
    seed = int(os.environ.get("CRASH_SEED") or random.randrange(1 << 30))
    rnd = random.Random(seed)
    msg, body = make_message("sub", BIG)
    kinds = {
        "odi": Scenario("random -odi", ["-odi"] + RCPTS, _from_template(templates, "sub"),
                        data=msg, submitted=("sub", body)),
        "mbox": Scenario("random -q mbox", ["-q"], _from_template(templates, "mbox")),
        "maildir": Scenario("random -q maildir", ["-q"], _from_template(templates, "maildir"),
                            fmt="maildir", opts=MAILDIR_OPTS),
    }
    durations = {}
    for name, sc in kinds.items():
        base, _ = sc.prepare(bed)
        t0 = time.monotonic()
        p = bed.run(base, sc.opts + sc.args, sc.data)
        durations[name] = time.monotonic() - t0
        assert p.returncode == 0, (name, p.stderr)
    plan_ = []
    for i in range(RANDOM_ITERATIONS):
        name = ("odi", "mbox", "maildir")[i % 3]
        delay = rnd.uniform(0, max(0.030, durations[name]))
        plan_.append((i, name, delay, bool(i % 2)))
    deadline = time.monotonic() + 60
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(lambda it: _random_point(bed, kinds[it[1]], *it, deadline=deadline),
                                plan_))
    problems = [pr for r in results if r for pr in r[1]]
    killed = sum(1 for r in results if r and r[0])
    summary = "random kills (seed %d, CRASH_SEED=%d to replay): %d iterations, %d run, " \
              "%d killed mid-run" % (seed, seed, len(plan_), sum(1 for r in results if r), killed)
    print(summary)
    assert not problems, summary + "\n" + "\n".join(problems)
    assert all(results), summary + ": out of the 60 s budget"
    assert killed >= RANDOM_ITERATIONS // 4, summary + ": too few kills landed mid-run"


def _random_point(bed, sc, i, name, delay, whole_group, deadline):
    if time.monotonic() > deadline:
        return None
    base, expected = sc.prepare(bed)
    stdin_path = os.path.join(os.path.dirname(base), "stdin")
    with open(stdin_path, "wb") as f:
        f.write(sc.data)
    with open(stdin_path, "rb") as stdin:
        p = subprocess.Popen([bed.sm] + sc.opts + sc.args, stdin=stdin,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=bed.env(base), start_new_session=True)
    time.sleep(delay)
    killed = p.poll() is None
    if killed:     # not yet reaped, so the pid (and group id) cannot have been reused
        if whole_group:
            os.killpg(p.pid, signal.SIGKILL)
        else:
            os.kill(p.pid, signal.SIGKILL)
    rc = p.wait()
    # An orphaned delivery child may still be appending (it holds the message's lock):
    # wait until nothing of the group is left.
    limit = time.monotonic() + 30
    while time.monotonic() < limit:
        try:
            os.killpg(p.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    else:
        return killed, ["%s #%d: processes of the killed run still alive after 30 s" % (name, i)]
    if sc.submitted:
        tid, body = sc.submitted
        expected[tid] = Expect(body, USERS, rc == 0)
    label = "%s #%d: %s after %.1f ms (exit %d)" % (
        sc.name, i, "killpg" if whole_group else "kill", delay * 1000, rc)
    problems = recover_and_check(bed, sc, base, expected, label)
    if not problems:
        shutil.rmtree(os.path.dirname(base), ignore_errors=True)
    return killed, problems
