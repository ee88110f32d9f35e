"""Phase `submit`: submission latency and peak memory of `sendmail -t -i < 2 KB message`.

Cases, timed interleaved round by round by proc_time.run_interleaved:

  a  Postfix's /usr/sbin/sendmail -C <private>/etc -t -i   (reference: queue-only,
     pickup disabled, so it ends as one fsynced file in maildrop/)
  b  pysendmail sendmail -odq -t -i    queue-only (PYSENDMAIL_ROOT=.work/roots/odq)
  c  pysendmail sendmail -odi -t -i    immediate local delivery to an mbox
  d  pysendmail sendmail -t -i         default mode: background delivery, the parent
                                       exits after the durable commit; between runs the
                                       harness waits (untimed) until the queue is empty
  e  <venv python> -c pass             CPython floor with site
  f  <venv python> -I -S -c pass       CPython floor as the shim starts it
  g  <venv python> -I -S -c "import pysendmail.cli.main"  (start-up + imports only)
  s  b with the instance's service running (`sendmail -bD`): the command hands the
     message to it over the submit socket (cli.relay), the production set-up
  t  d with the service running (the service forks the delivering child)
  u  c with the service running (the service delivers before it answers)
  h  b through an "ideal" shim the bench writes (target.IdealShim): `#!<venv python> -IS`,
     the venv's site-packages appended by absolute path, then pysendmail.cli.main. The
     installed shim can differ: pip rewrites `#!python -I -S` to `#!<venv python>` (flags
     dropped), and under -S in a venv sys.prefix is the base interpreter's, not the venv's.

A preflight runs every case once with stderr captured: a pysendmail case that
fails (CLI not there yet, crash) is reported with its error and left out of the
rounds, so the reference figures are still taken.

Targets (issue 2): b, c and d median wall time <= 1.25x case a in the same run;
peak RSS <= 12 MiB.
"""
import os
import subprocess
import tempfile
import time

import mkmsg
import proc_time
from postfix_private import PrivatePostfix
from target import BASE_ENV, IdealShim, Instance

TARGET_RATIO = 1.25
TARGET_RSS_MIB = 12.0


def preflight(case, timeout=30.0):
    """Run once, stderr captured. Returns (exit_code, stderr_tail)."""
    with tempfile.NamedTemporaryFile("r", prefix="bench-pre-") as tf:
        code = proc_time.spawn_wait(case.argv, case.env, case.stdin, timeout=timeout, stderr=tf.name)[1]
        err = open(tf.name, errors="replace").read()
    if case.settle:
        case.settle()
    return code, err[-1500:]


class Service:
    """`sendmail -bD -q1h` for one instance, started before the rounds, stopped after."""

    def __init__(self, inst):
        self.inst = inst
        self.proc = None

    def start(self):
        sock = os.path.join(self.inst.root, "spool", "public", "submit")
        # -bD is also the SMTP daemon: each instance's listener on its own free port
        import socket
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        self.proc = subprocess.Popen(self.inst.argv(
            "-bD", "-q1h", "-O", "DaemonPortOptions=Port=%d,Addr=127.0.0.1" % port),
            env=self.inst.env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not os.path.exists(sock):
            raise RuntimeError("the service of %s did not start" % self.inst.root)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def build_cases(ctx):
    """The case list; ctx carries paths and knobs (see benchmain.Context)."""
    msg = os.path.join(ctx.work, "msg2k.txt")
    with open(msg, "wb") as f:
        f.write(mkmsg.make_message(2048, to=ctx.rcpt, sender="bench-sender@localhost"))
    pf = PrivatePostfix(os.path.join(ctx.work, "postfix"))
    venv = ctx.venv
    roots = os.path.join(ctx.work, "roots")
    odq = Instance(venv, os.path.join(roots, "odq"))
    odi = Instance(venv, os.path.join(roots, "odi"))
    odb = Instance(venv, os.path.join(roots, "odb"))
    odq_is = Instance(venv, os.path.join(roots, "odq-IS"))
    s_odq = Instance(venv, os.path.join(roots, "svc-odq"))
    s_odb = Instance(venv, os.path.join(roots, "svc-odb"))
    s_odi = Instance(venv, os.path.join(roots, "svc-odi"))
    ctx.services = [Service(i) for i in (s_odq, s_odb, s_odi)]
    ideal = IdealShim(venv, os.path.join(ctx.work, "ideal"))
    py = venv.python
    sp = venv.site_packages()
    cases = [
        proc_time.Case("a", "postfix sendmail (queue-only, reference)",
                       pf.sendmail_argv("-t", "-i"), msg, BASE_ENV,
                       count=pf.maildrop_count, clean=pf.maildrop_clean,
                       note="effect = files in the private maildrop/"),
        proc_time.Case("b", "pysendmail -odq (queue-only)", odq.argv("-odq", "-t", "-i"), msg, odq.env,
                       count=odq.queued, clean=odq.clean, note="effect = control files queued"),
        proc_time.Case("h", "pysendmail -odq, ideal shim (`#!python -IS`, path baked in)",
                       ideal.argv("-odq", "-t", "-i"), msg, odq_is.env, count=odq_is.queued,
                       clean=odq_is.clean, note="a shim the bench writes: the installed package, started "
                                                "with -I -S and its site-packages path hard-coded"),
        proc_time.Case("c", "pysendmail -odi (deliver to mbox, then exit)", odi.argv("-odi", "-t", "-i"), msg,
                       odi.env, settle=odi.settle, count=odi.delivered, clean=odi.clean,
                       note="effect = messages in the private mailbox"),
        proc_time.Case("d", "pysendmail default (background delivery)", odb.argv("-t", "-i"), msg, odb.env,
                       settle=odb.settle, count=odb.delivered, clean=odb.clean,
                       note="effect = messages delivered by the background child; the harness "
                            "waits (untimed) for the queue to empty after each run"),
        proc_time.Case("s", "pysendmail -odq, service running (submit socket)",
                       s_odq.argv("-odq", "-t", "-i"), msg, s_odq.env, count=s_odq.queued,
                       clean=s_odq.clean, note="effect = control files queued by the service"),
        proc_time.Case("t", "pysendmail default, service running", s_odb.argv("-t", "-i"), msg,
                       s_odb.env, settle=s_odb.settle, count=s_odb.delivered, clean=s_odb.clean,
                       note="effect = messages delivered by the service's child"),
        proc_time.Case("u", "pysendmail -odi, service running", s_odi.argv("-odi", "-t", "-i"), msg,
                       s_odi.env, settle=s_odi.settle, count=s_odi.delivered, clean=s_odi.clean,
                       note="effect = messages in the private mailbox, delivered by the service"),
        proc_time.Case("e", "python -c pass (venv, site)", [py, "-c", "pass"], None, BASE_ENV),
        proc_time.Case("f", "python -I -S -c pass (CPython floor)", [py, "-I", "-S", "-c", "pass"], None,
                       BASE_ENV),
        proc_time.Case("g", "python -I -S: import pysendmail.cli.main only",
                       [py, "-I", "-S", "-c", f"import sys; sys.path.append({sp!r}); import pysendmail.cli.main"],
                       None, BASE_ENV),
    ]
    return pf, cases, msg


def run(ctx):
    pf, cases, msg = build_cases(ctx)
    ctx.log(f"submit: starting private postfix in {pf.dir}")
    pf.start()
    for svc in ctx.services:
        svc.inst.clean()
        svc.start()
    try:
        kept, failed = [], []
        for c in cases:
            if c.clean:
                c.clean()
            code, err = preflight(c)
            eff = c.count() if c.count else None
            ctx.log(f"preflight {c.key}: exit {code}, effect {eff}  {' '.join(c.argv)[:120]}")
            if code != 0 or (c.count and eff == 0 and c.key != "a"):
                ctx.log("  stderr: " + (err.strip().replace("\n", "\n          ") or "(empty)"))
            if code != 0 and c.key not in ("a", "e", "f"):
                failed.append({"key": c.key, "label": c.label, "argv": c.argv, "exit": code, "stderr": err})
            else:
                kept.append(c)
        ctx.log(f"submit: {len(kept)} cases x {ctx.rounds} rounds (+{ctx.warmup} warm-up, "
                f"+{ctx.rss_runs} peak-RSS runs under {proc_time.TIME_BIN})")
        secs = proc_time.run_interleaved(kept, rounds=ctx.rounds, warmup=ctx.warmup, rss_runs=ctx.rss_runs,
                                         clean_every=10, max_seconds=ctx.max_seconds, log=ctx.log)
    finally:
        pf.stop()
        for svc in ctx.services:
            svc.stop()
    by = {c.key: c for c in kept}
    refs = {"postfix": by.get("a"), "python_IS": by.get("f")}
    results = [proc_time.summary(c, refs) for c in kept]
    return {
        "phase": "submit", "seconds": round(secs, 1), "message": msg, "message_bytes": os.path.getsize(msg),
        "rcpt": ctx.rcpt, "postfix_version": pf.version(), "rounds": ctx.rounds, "warmup": ctx.warmup,
        "rss_runs": ctx.rss_runs, "targets": {"ratio_vs_postfix": TARGET_RATIO, "rss_mib": TARGET_RSS_MIB},
        "results": results, "failed": failed, "shebang": ctx.venv.shebang(ctx.venv.sendmail),
    }


def _f(x, fmt="%.1f"):
    return "-" if x is None else fmt % x


def report(data):
    """Markdown for the phase's data (as returned by run)."""
    out = ["## Submission latency: `sendmail -t -i < %d-byte message` (To: %s)" % (data["message_bytes"], data["rcpt"]),
           "",
           f"{data['rounds']} timed rounds after {data['warmup']} warm-ups, cases interleaved round by round, "
           f"posix_spawn + wait4 (no shell); peak RSS from {data['rss_runs']} runs under GNU time -f %M. "
           f"Postfix {data['postfix_version']} private instance, pickup disabled (queue-only). "
           f"Phase took {data['seconds']} s.", "",
           "| case | what | wall ms median | min-max | CPU user+sys ms | peak RSS MiB median (max) "
           "| vs postfix: paired (of medians) | vs python -I -S: paired | exit | effect |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["results"]:
        rp = r["ratios"].get("postfix") or {}
        rf = r["ratios"].get("python_IS") or {}
        rss_med = r["rss_kb_median"] / 1024 if r["rss_kb_median"] else None
        rss_max = r["rss_kb_max"] / 1024 if r["rss_kb_max"] else None
        eff = "-" if r["effects"] is None else f"{r['effects']}/{r['runs']}"
        if r["settle_failures"]:
            eff += f" ({r['settle_failures']} settle timeouts)"
        vs_pf = "reference" if r["key"] == "a" else f"{_f(rp.get('paired'), '%.2f')}x ({_f(rp.get('of_medians'), '%.2f')}x)"
        vs_py = "reference" if r["key"] == "f" else f"{_f(rf.get('paired'), '%.2f')}x"
        out.append(f"| {r['key']} | {r['label']} | **{_f(r['wall_ms_median'])}** | {_f(r['wall_ms_min'])}-"
                   f"{_f(r['wall_ms_max'])} | {_f(r['user_ms_median'])}+{_f(r['sys_ms_median'])} | "
                   f"{_f(rss_med)} ({_f(rss_max)}) | {vs_pf} | {vs_py} | {','.join(map(str, r['exit_codes']))} | {eff} |")
    for f in data["failed"]:
        out.append(f"| {f['key']} | {f['label']} | not measured: exit {f['exit']} in preflight | | | | | | | |")
    sb = data.get("shebang") or ""
    flags = sb.split()[1:]
    out += ["", f"Installed shim's first line: `{sb}`" + ("" if "-I" in flags and "-S" in flags else
            " -- the `-I -S` of bin/sendmail's `#!python -I -S` is LOST (pip rewrites `#!python...` to the bare "
            "interpreter path): the installed command imports `site` and runs the .pth files; compare b with h "
            "(h = the same package through a shim with `-I -S` and the path baked in).")]
    out += ["", "Commands:", ""]
    for r in data["results"]:
        out.append(f"- {r['key']}: `{' '.join(r['argv'])}`" + (" < msg" if r["stdin"] else "")
                   + (f" ({r['note']})" if r["note"] else ""))
    for f in data["failed"]:
        err = f["stderr"].strip().splitlines()[-3:] if f["stderr"].strip() else ["(no stderr)"]
        out.append(f"- {f['key']} FAILED preflight: `{' '.join(f['argv'])}`: exit {f['exit']}: "
                   + " / ".join(e.strip() for e in err))
    t = data["targets"]
    out += ["", f"Targets (issue 2): wall time <= {t['ratio_vs_postfix']}x postfix, judged on the paired ratio "
                f"(median of per-round ratios: robust to the machine's drift; the ratio of medians is given too), "
                f"peak RSS <= {t['rss_mib']} MiB. CPU = ratio of median user+sys CPU times (insensitive to waiting "
                f"for the disk or for other jobs):", ""]
    ref = next((r for r in data["results"] if r["key"] == "a"), None)
    ref_cpu = (ref["user_ms_median"] + ref["sys_ms_median"]) if ref else None
    for r in data["results"]:
        if r["key"] not in ("b", "c", "d", "h", "s", "t", "u"):
            continue
        rp = r["ratios"].get("postfix") or {}
        paired = rp.get("paired") or 0
        rss = (r["rss_kb_max"] or 0) / 1024
        ok_t = 0 < paired <= t["ratio_vs_postfix"]
        ok_m = 0 < rss <= t["rss_mib"]
        cpu = (r["user_ms_median"] + r["sys_ms_median"]) / ref_cpu if ref_cpu else None
        valid = r["exit_codes"] == [0] and (r["effects"] is None or r["effects"] >= r["runs"])
        out.append(f"- {r['key']} {r['label']}: time {paired:.2f}x (of medians {_f(rp.get('of_medians'), '%.2f')}x, "
                   f"CPU {_f(cpu, '%.2f')}x) -> {'PASS' if ok_t else 'FAIL'}; "
                   f"peak RSS {rss:.1f} MiB -> {'PASS' if ok_m else 'FAIL'}"
                   + ("" if valid else "; RUNS NOT VALID (non-zero exit or missing effects)"))
    for f in data["failed"]:
        if f["key"] in ("b", "c", "d"):
            out.append(f"- {f['key']} {f['label']}: NOT MEASURED (preflight exit {f['exit']})")
    return "\n".join(out) + "\n"
