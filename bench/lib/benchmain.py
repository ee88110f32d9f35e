"""The bench driver: runs the named phases, writes results/<UTC stamp>/, prints the report.

Called by `bench/run` (which checks root, installs the tools and the venv):

    benchmain.py [--rounds N] [--warmup N] [--rss-runs N] [PHASES...]

Phases live in PHASES below: a name -> module with `run(ctx) -> dict` (raw
data, saved as <phase>.json) and `report(dict) -> markdown`. A new phase is
a module and one line here.

Each run writes bench/results/<stamp>/: meta.json (machine, versions, git
commit, load average before/after), <phase>.json (every raw figure),
log.txt, report.md. Nothing is sent beyond loopback; every loop is bounded.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import phase_authcheck  # noqa: E402
import phase_cf  # noqa: E402
import phase_deliver  # noqa: E402
import phase_mem  # noqa: E402
import phase_milter  # noqa: E402
import phase_profile  # noqa: E402
import phase_smtp  # noqa: E402
import phase_submit  # noqa: E402
import phase_whatif  # noqa: E402
from target import Venv  # noqa: E402

PHASES = {
    "submit": phase_submit,        # issue 2: CLI submission latency + peak RSS
    "profile": phase_profile,      # where the pysendmail submission time goes
    "whatif": phase_whatif,        # what each part of the submission costs, by removal
    "hyperfine": phase_profile.Hyperfine,   # public-tool cross-check of `submit`
    "cf": phase_cf,                # issue 3: cf parse (cold, cached), rewriting throughput
    "smtp": phase_smtp,            # issue 4: SMTP accept rate vs Postfix smtpd (smtp-source)
    "mem": phase_mem,              # issue 4: daemon memory idle, 1,000 and 10,000 idle sessions
    "deliver": phase_deliver,      # issue 5: delivery rate from the queue (Maildir, relay) vs Postfix
    "milter": phase_milter,        # accept rate through 0, 1, 3 no-op milters vs Postfix; cost per milter
    "authcheck": phase_authcheck,  # accept rate with the inbound SPF/DKIM/ARC/DMARC checks on and off; cost per message
}
DEFAULT_PHASES = ["submit"]


class Context:
    def __init__(self, args, out):
        self.bench = os.path.dirname(HERE)
        self.project = os.path.dirname(self.bench)
        self.work = os.path.join(self.bench, ".work")
        self.out = out
        self.venv = Venv(os.path.join(self.work, "venv"))
        self.rounds, self.warmup, self.rss_runs = args.rounds, args.warmup, args.rss_runs
        self.max_seconds = args.max_seconds
        self.rcpt = args.rcpt
        self._log = open(os.path.join(out, "log.txt"), "a")

    def log(self, msg):
        line = time.strftime("%H:%M:%S ") + msg
        print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()


def _cmd(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def meta(ctx):
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "git_head": _cmd(["git", "-C", ctx.project, "rev-parse", "--short", "HEAD"]),
        "git_dirty": bool(_cmd(["git", "-C", ctx.project, "status", "--porcelain", "--untracked-files=no"])),
        "venv_python": ctx.venv.real_python(),
        "python_version": _cmd([ctx.venv.python, "-c", "import sys; print(sys.version.split()[0])"]),
        "sendmail_shebang": ctx.venv.shebang(ctx.venv.sendmail),
        "pysendmail": ctx.venv.pysendmail_version(),
    }


def header(stamp, m):
    return [f"# pysendmail bench {stamp}", "",
            f"Machine: {m['host']}, {m['cpus']} CPUs, kernel {m['kernel']}; load average at start "
            f"{' '.join('%.2f' % x for x in m['loadavg'])}. Python {m['python_version']} ({m['venv_python']}); "
            f"pysendmail git {m['git_head']}{' (dirty tree)' if m['git_dirty'] else ''}, installed in "
            f"bench/.work/venv; shim line `{m['sendmail_shebang']}`.", ""]


def footer(m, where):
    return (f"Load average at the end: {' '.join('%.2f' % x for x in m.get('loadavg_end', []))}. "
            f"Raw data: `{where}/`.\n")


def rerender(out):
    """Write report.md again from a results directory's JSON files (after a report change)."""
    m = json.load(open(os.path.join(out, "meta.json")))
    parts = header(os.path.basename(os.path.normpath(out)), m)
    for name, mod in PHASES.items():
        p = os.path.join(out, f"{name}.json")
        if os.path.exists(p):
            parts.append(mod.report(json.load(open(p))))
    parts.append(footer(m, os.path.normpath(out)))
    text = "\n".join(parts)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


def wait_quiet(ctx, load, seconds):
    """Bounded wait for a quieter machine (other jobs share the 2 cores)."""
    if seconds <= 0 or os.getloadavg()[0] < load:
        return
    ctx.log(f"waiting up to {seconds:.0f} s for the load average to drop below {load} "
            f"(now {os.getloadavg()[0]:.2f})")
    deadline = time.monotonic() + seconds
    while os.getloadavg()[0] >= load and time.monotonic() < deadline:
        time.sleep(2)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("phases", nargs="*", default=DEFAULT_PHASES, help="|".join(PHASES))
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 30)))
    ap.add_argument("--warmup", type=int, default=int(os.environ.get("BENCH_WARMUP", 3)))
    ap.add_argument("--rss-runs", type=int, default=int(os.environ.get("BENCH_RSS_RUNS", 5)))
    ap.add_argument("--max-seconds", type=float, default=float(os.environ.get("BENCH_MAX_SECONDS", 600)))
    ap.add_argument("--rcpt", default=os.environ.get("BENCH_RCPT", "root@localhost"))
    ap.add_argument("--out", default=os.environ.get("BENCH_OUT"))
    ap.add_argument("--quiet-load", type=float, default=float(os.environ.get("BENCH_QUIET_LOAD", 1.0)),
                    help="before each phase, wait until the 1-minute load average is below this ...")
    ap.add_argument("--quiet-wait", type=float, default=float(os.environ.get("BENCH_QUIET_WAIT", 90)),
                    help="... for at most this many seconds (0: do not wait)")
    ap.add_argument("--report", metavar="RESULTS_DIR", help="only re-render RESULTS_DIR/report.md from its JSON")
    args = ap.parse_args(argv)
    if args.report:
        return rerender(args.report)
    bad = [p for p in args.phases if p not in PHASES]
    if bad:
        ap.error(f"unknown phase(s) {bad}; known: {' '.join(PHASES)}")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.out or os.path.join(os.path.dirname(HERE), "results", stamp)
    os.makedirs(out, exist_ok=True)
    ctx = Context(args, out)
    # spawned commands inherit the cwd: keep the source tree off their sys.path
    os.makedirs(ctx.work, exist_ok=True)
    os.chdir(ctx.work)
    m = meta(ctx)
    ctx.log(f"bench {stamp}: phases {' '.join(args.phases)}; pysendmail {m['pysendmail']} "
            f"(git {m['git_head']}{' dirty' if m['git_dirty'] else ''}); load {m['loadavg']}")
    parts = header(stamp, m)
    status = 0
    for name in args.phases:
        mod = PHASES[name]
        wait_quiet(ctx, args.quiet_load, args.quiet_wait)
        ctx.log(f"== phase {name} (load {' '.join('%.2f' % x for x in os.getloadavg())})")
        try:
            data = mod.run(ctx)
        except Exception as e:      # one broken phase must not lose the others' figures
            ctx.log(f"phase {name} failed: {type(e).__name__}: {e}")
            import traceback
            traceback.print_exc()
            parts.append(f"## {name}: FAILED ({type(e).__name__}: {e})\n")
            status = 1
            continue
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(data, f, indent=1)
        parts.append(mod.report(data))
    m["loadavg_end"] = os.getloadavg()
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(m, f, indent=1)
    parts.append(footer(m, os.path.relpath(out, ctx.project)))
    text = "\n".join(parts)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    print("\n" + text)
    return status


if __name__ == "__main__":
    sys.exit(main())
