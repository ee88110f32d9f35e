"""Whole-process timing of commands: start-up included, cases interleaved, paired ratios.

The engine behind the `submit` phase (and any later phase that times a
command from exec to exit). Each timed run:

    t0 = monotonic; pid = posix_spawn(argv, env, stdin=<file>, stdout/err=/dev/null)
    wait4(pid) ; t1 = monotonic        -> wall ms, exit code, user/sys CPU ms

No shell sits between the harness and the command; stdin is the message file
opened afresh for each run. All cases run once per round (A B C A B C ...),
so a drift in the machine's speed hits every case alike, and the paired ratio
of case X to reference R is the median over rounds of wall(X)/wall(R).

Peak RSS cannot come from the timed runs: a posix_spawn'ed child's ru_maxrss
includes the high-water mark of the harness's own (Python) address space it
was vforked from. So peak RSS comes from extra interleaved runs under GNU
`/usr/bin/time -f %M` (a small C program; its own floor is ~1 MiB), which
covers the command and the children it waited for (postfix sendmail ->
postdrop), not detached background children.

Bounded: every run is killed after `run_timeout` seconds, the rounds stop
after `max_seconds`, and each case's `settle` (wait for background work,
untimed) has its own bound inside the case.
"""
import os
import signal
import statistics
import tempfile
import time

TIME_BIN = "/usr/bin/time"


class Case:
    """One command to time.

    key      short id used in the report ("a", "b", ...)
    label    human description
    argv     absolute path first; no shell
    stdin    path of the file fed on stdin (None: /dev/null)
    env      full environment of the child
    settle   callable run after every run, untimed; returns True when the
             command's background work is done (False: it gave up waiting)
    count    callable: how many effects (queued files, delivered messages)
             exist now; `clean` removes them. The harness adds count() to
             `effects` before every clean, so the report can say "33/33
             queued" and prove the command really did its job.
    """

    def __init__(self, key, label, argv, stdin=None, env=None, settle=None,
                 count=None, clean=None, note=""):
        self.key, self.label, self.argv, self.stdin = key, label, list(argv), stdin
        self.env = dict(os.environ if env is None else env)
        self.settle, self.count, self.clean, self.note = settle, count, clean, note
        self.walls, self.users, self.syss, self.codes, self.rss_kb = [], [], [], [], []
        self.warm_codes, self.effects, self.runs_total, self.settle_failures = [], 0, 0, 0

    def collect(self):
        """Count the effects of the runs so far, then clean them up."""
        if self.count:
            self.effects += self.count()
        if self.clean:
            self.clean()


class _Killer:
    """SIGALRM -> SIGKILL the child being waited for (bounds every run)."""

    def __init__(self):
        self.pid = None
        signal.signal(signal.SIGALRM, self._fire)

    def _fire(self, signum, frame):
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


_killer = None


def spawn_wait(argv, env, stdin=None, stdout=None, timeout=30.0, stderr=None):
    """Run argv once: returns (wall_ms, exit_code, user_ms, sys_ms, ru_maxrss_kb)."""
    global _killer
    if _killer is None:
        _killer = _Killer()
    null = os.open(os.devnull, os.O_RDWR)
    fin = os.open(stdin, os.O_RDONLY) if stdin else null
    fout = os.open(stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if stdout else null
    ferr = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if stderr else null
    actions = [(os.POSIX_SPAWN_DUP2, fin, 0), (os.POSIX_SPAWN_DUP2, fout, 1),
               (os.POSIX_SPAWN_DUP2, ferr, 2)]
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout)
        t0 = time.monotonic_ns()
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
        _killer.pid = pid
        _, status, ru = os.wait4(pid, 0)
        t1 = time.monotonic_ns()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _killer.pid = None
        for fd in {null, fin, fout, ferr}:
            os.close(fd)
    return ((t1 - t0) / 1e6, os.waitstatus_to_exitcode(status),
            ru.ru_utime * 1000.0, ru.ru_stime * 1000.0, ru.ru_maxrss)


def peak_rss_kb(case, timeout=30.0):
    """One run of the case under GNU time -f %M: the peak RSS in KiB (-1 if unknown)."""
    with tempfile.NamedTemporaryFile("r", prefix="bench-rss-") as tf:
        argv = [TIME_BIN, "-o", tf.name, "-f", "%M"] + case.argv
        spawn_wait(argv, case.env, case.stdin, timeout=timeout)
        words = open(tf.name).read().split()
    return int(words[-1]) if words and words[-1].isdigit() else -1


def _after_run(case):
    case.runs_total += 1
    if case.settle and not case.settle():
        case.settle_failures += 1


def run_interleaved(cases, rounds=30, warmup=3, rss_runs=5, clean_every=10,
                    max_seconds=600.0, run_timeout=30.0, log=print):
    """Time every case `rounds` times after `warmup` untimed rounds, interleaved.

    Returns the elapsed seconds. Results are left on the Case objects.
    """
    start = time.monotonic()
    for c in cases:
        if c.clean:
            c.clean()
    for i in range(warmup):
        for c in cases:
            c.warm_codes.append(spawn_wait(c.argv, c.env, c.stdin, timeout=run_timeout)[1])
            _after_run(c)
    for c in cases:           # warm-up effects do not count
        if c.clean:
            c.clean()
        c.runs_total = 0
    done = 0
    for r in range(rounds):
        for c in cases:
            wall, code, user, sys_, _ = spawn_wait(c.argv, c.env, c.stdin, timeout=run_timeout)
            c.walls.append(wall)
            c.users.append(user)
            c.syss.append(sys_)
            c.codes.append(code)
            _after_run(c)
        done += 1
        if clean_every and done % clean_every == 0:
            for c in cases:
                c.collect()
        if time.monotonic() - start > max_seconds:
            log(f"proc_time: stopping after {done} rounds: over {max_seconds:.0f} s")
            break
    for c in cases:
        c.collect()
    for r in range(rss_runs):
        for c in cases:
            c.rss_kb.append(peak_rss_kb(c, run_timeout))
            if c.settle and not c.settle():
                c.settle_failures += 1
    for c in cases:
        if c.clean:
            c.clean()
    return time.monotonic() - start


def paired_ratio(xs, refs):
    """Median over rounds of x/ref (rounds with a zero reference are skipped)."""
    rs = [x / y for x, y in zip(xs, refs) if y > 0]
    return statistics.median(rs) if rs else None


def paired_diff(xs, refs):
    """Median over rounds of x - ref, in the walls' unit."""
    ds = [x - y for x, y in zip(xs, refs)]
    return statistics.median(ds) if ds else None


def summary(case, refs=None):
    """A JSON-able dict for one case; refs maps a name to a reference Case."""
    w = case.walls
    out = {
        "key": case.key, "label": case.label, "argv": case.argv, "note": case.note,
        "stdin": case.stdin, "runs": len(w),
        "wall_ms": [round(x, 3) for x in w],
        "wall_ms_median": statistics.median(w) if w else None,
        "wall_ms_mean": statistics.fmean(w) if w else None,
        "wall_ms_min": min(w) if w else None, "wall_ms_max": max(w) if w else None,
        "user_ms_median": statistics.median(case.users) if w else None,
        "sys_ms_median": statistics.median(case.syss) if w else None,
        "exit_codes": sorted(set(case.codes)), "warmup_exit_codes": sorted(set(case.warm_codes)),
        "rss_kb": case.rss_kb,
        "rss_kb_median": statistics.median(case.rss_kb) if case.rss_kb else None,
        "rss_kb_max": max(case.rss_kb) if case.rss_kb else None,
        "effects": case.effects if case.count else None,
        "settle_failures": case.settle_failures,
        "ratios": {},
    }
    for name, ref in (refs or {}).items():
        if ref is not None and ref.walls:
            out["ratios"][name] = {
                "paired": paired_ratio(w, ref.walls),
                "of_medians": (statistics.median(w) / statistics.median(ref.walls)) if w else None,
                "diff_ms": paired_diff(w, ref.walls),
            }
    return out
