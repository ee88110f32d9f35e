"""Phase `mem` (issue 4): daemon memory idle and under many idle SMTP sessions, vs Postfix.

Per run (BENCH_MEM_RUNS, 3), servers in turn, each started fresh:

1. start; ready = its LISTEN socket exists (/proc/net/tcp: no session served
   before the idle figure); wait BENCH_MEM_SETTLE (2) s;
2. idle: sum of VmRSS and of Pss (/proc/PID/smaps_rollup) over the process
   tree under the pid the bench started (pysendmail) or the master's pid file
   (Postfix): the master and every child, found by walking /proc/*/stat;
3. for each N in BENCH_MEM_CONNS (1000,10000): idle_clients.hold() opens N
   sessions (paced at BENCH_MEM_RATE=2000 connects/s, sources 127.0.0.2...,
   each reads the banner and sends EHLO), the tree is sampled while they are
   held, then (after a 3 s hold) the sessions still open are counted and all
   are closed; then the server is sampled again ("after": memory kept);
4. stop.

Per-session cost = (RSS with N sessions - idle RSS) / N (and the same for
Pss); for Postfix, whose master runs at most default_process_limit = 100
smtpd at a time, the sessions beyond are not served (they wait in the listen
queue or their SYN is dropped): the table gives how many were served and the
cost per served session as well.

Targets (issue 4) for pysendmail: idle RSS <= 40 MiB, <= 50 KiB RSS per idle
session (at 1,000 sessions, all served), 10,000 concurrent sessions held
with none refused, reset or left without a banner. Judged on the median over
runs for the memory figures, on every run for the 10,000 sessions.
"""
import os
import statistics
import time

import idle_clients
import proctree
from mta_servers import PostfixSmtpd, PysendmailDaemon, SmtpSink

TARGET_IDLE_MIB = 40.0
TARGET_PER_CONN_KIB = 50.0
TARGET_HELD = 10000


def settings():
    return {
        "runs": int(os.environ.get("BENCH_MEM_RUNS", 3)),
        "conns": [int(x) for x in os.environ.get("BENCH_MEM_CONNS", "1000,10000").split(",") if x.strip()],
        "rate": float(os.environ.get("BENCH_MEM_RATE", 2000)),
        "deadline": float(os.environ.get("BENCH_MEM_DEADLINE", 8)),
        "settle": float(os.environ.get("BENCH_MEM_SETTLE", 2)),
        "hold": float(os.environ.get("BENCH_MEM_HOLD", 3)),
        "max_seconds": float(os.environ.get("BENCH_MEM_MAX_SECONDS", 300)),
        "sink": os.environ.get("BENCH_MEM_SINK", "0") == "1",
    }


def _sysctl(name):
    try:
        return open("/proc/sys/" + name.replace(".", "/")).read().split()
    except OSError:
        return None


def one_run(ctx, srv, cfg):
    rec = {"stages": []}
    srv.start(probe="listen")
    try:
        time.sleep(cfg["settle"])
        root = srv.root_pid()
        rec["root_pid"] = root
        if hasattr(srv, "pid_file_pid"):
            rec["pid_file_pid"] = srv.pid_file_pid()
        rec["idle"] = proctree.sample(root)
        ctx.log(f"mem: {srv.key} idle: {_mib(rec['idle']['rss_kb'])} MiB RSS, {_mib(rec['idle']['pss_kb'])} MiB PSS, "
                f"{rec['idle']['procs']} processes {rec['idle']['names']}")
        for n in cfg["conns"]:
            st = idle_clients.hold(srv.host, srv.port, n, on_held=lambda: proctree.sample(root),
                                   rate=cfg["rate"], deadline=cfg["deadline"], settle=cfg["settle"],
                                   hold=cfg["hold"], log=ctx.log)
            time.sleep(cfg["settle"])
            st["after"] = proctree.sample(root)
            held = st["held"]
            st["rss_per_conn_kib"] = (held["rss_kb"] - rec["idle"]["rss_kb"]) / n
            st["pss_per_conn_kib"] = (held["pss_kb"] - rec["idle"]["pss_kb"]) / n
            st["rss_per_ready_kib"] = (held["rss_kb"] - rec["idle"]["rss_kb"]) / st["ready"] if st["ready"] else None
            st["pss_per_ready_kib"] = (held["pss_kb"] - rec["idle"]["pss_kb"]) / st["ready"] if st["ready"] else None
            ctx.log(f"mem: {srv.key} {n} sessions held: {_mib(held['rss_kb'])} MiB RSS, {_mib(held['pss_kb'])} MiB "
                    f"PSS, {held['procs']} processes; {st['rss_per_conn_kib']:.1f} KiB RSS per session; after: "
                    f"{_mib(st['after']['rss_kb'])} MiB RSS")
            rec["stages"].append(st)
            if srv.root_pid() is None:
                rec["died"] = f"the server exited during the {n}-session stage"
                ctx.log(f"mem: {srv.key}: {rec['died']}")
                break
    finally:
        srv.stop()
    return rec


def run(ctx):
    cfg = settings()
    t0 = time.monotonic()
    nofile = idle_clients.raise_nofile(max(cfg["conns"] + [0]) + 256)
    servers = [PostfixSmtpd(os.path.join(ctx.work, "postfix-smtp")),
               PysendmailDaemon(ctx.venv, os.path.join(ctx.work, "roots", "smtpd"),
                                log_path=os.path.join(ctx.out, "pysendmail-daemon.mem.log"))]
    if cfg["sink"]:
        servers.append(SmtpSink(log_path=os.path.join(ctx.out, "smtp-sink.log")))
    results = {s.key: {"runs": [], "failed": []} for s in servers}
    for r in range(cfg["runs"]):
        if r and time.monotonic() - t0 > cfg["max_seconds"]:
            ctx.log(f"mem: over {cfg['max_seconds']:.0f} s: stopping after {r} runs")
            break
        for srv in servers:
            if results[srv.key]["failed"]:
                continue            # a server that failed once is not tried again (bounded phase)
            try:
                results[srv.key]["runs"].append(one_run(ctx, srv, cfg))
            except Exception as e:
                ctx.log(f"mem: {srv.key} run {r + 1} failed: {type(e).__name__}: {e}")
                results[srv.key]["failed"].append(f"{type(e).__name__}: {str(e)[-1200:]}")
    return {"phase": "mem", "seconds": round(time.monotonic() - t0, 1), "settings": cfg,
            "nofile": nofile, "client_nofile_note": "the bench's client process; the servers inherit it",
            "sysctl": {k: _sysctl(k) for k in ("net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog",
                                                 "net.ipv4.tcp_syncookies", "net.ipv4.ip_local_port_range")},
            "servers": [s.describe() for s in servers], "results": results,
            "targets": {"idle_rss_mib": TARGET_IDLE_MIB, "rss_per_conn_kib": TARGET_PER_CONN_KIB,
                        "held": TARGET_HELD}}


def _mib(kb):
    return "-" if kb is None else "%.1f" % (kb / 1024)


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _rng(xs, fmt):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"**{fmt % statistics.median(xs)}** [{fmt % min(xs)}-{fmt % max(xs)}]" if len(xs) > 1 \
        else f"**{fmt % xs[0]}**"


def report(data):
    cfg = data["settings"]
    labels = {d["key"]: d["label"] for d in data["servers"]}
    out = ["## Daemon memory: idle and with idle SMTP sessions (issue 4)", "",
           f"{cfg['runs']} runs, each server started fresh per run; memory = sum over the server's process tree "
           f"(master and every child) of VmRSS and of Pss (smaps_rollup: shared pages counted once). Sessions "
           f"read the banner and sent EHLO, opened at {cfg['rate']:.0f}/s from 127.0.0.2..., sampled "
           f"{cfg['settle']:.0f} s after the last one came up (or {cfg['deadline']:.0f} s after the last connect "
           f"started), held {cfg['hold']:.0f} s more. RLIMIT_NOFILE {data['nofile']}; sysctl "
           + ", ".join(f"{k.split('.')[-1]} {' '.join(v or ['?'])}" for k, v in data["sysctl"].items())
           + f". Phase took {data['seconds']} s. Median [min-max] over runs.", "",
           "| server | state | processes | RSS MiB | PSS MiB | RSS KiB per session | PSS KiB per session "
           "| sessions: ready / waiting / connect timeout / refused / reset / rejected | still open after hold "
           "| time to ready ms (median, p99) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for key, res in data["results"].items():
        runs = res["runs"]
        if not runs:
            out.append(f"| {labels[key]} | not measured: {(res['failed'] or ['?'])[0][:300]} | | | | | | | | |")
            continue
        idle = [r["idle"] for r in runs]
        out.append(f"| {labels[key]} | idle (fresh start) | {_rng([i['procs'] for i in idle], '%d')} | "
                   f"{_rng([i['rss_kb'] / 1024 for i in idle], '%.1f')} | "
                   f"{_rng([i['pss_kb'] / 1024 for i in idle], '%.1f')} | | | | | |")
        for j, n in enumerate(cfg["conns"]):
            sts = [r["stages"][j] for r in runs if len(r["stages"]) > j]
            if not sts:
                continue
            h = [s["held"] for s in sts]
            cnt = " / ".join(_rng([s[k] for s in sts], "%d").replace("**", "")
                             for k in ("ready", "waiting", "connect_timeout", "refused", "reset", "rejected"))
            per = _rng([s["rss_per_conn_kib"] for s in sts], "%.1f")
            per_p = _rng([s["pss_per_conn_kib"] for s in sts], "%.1f")
            if any(s["ready"] < n for s in sts):
                per += " (per served: " + _rng([s["rss_per_ready_kib"] for s in sts], "%.0f").replace("**", "") + ")"
                per_p += " (per served: " + _rng([s["pss_per_ready_kib"] for s in sts], "%.0f").replace("**", "") + ")"
            out.append(f"| {labels[key]} | {n} sessions | {_rng([x['procs'] for x in h], '%d')} | "
                       f"{_rng([x['rss_kb'] / 1024 for x in h], '%.1f')} | {_rng([x['pss_kb'] / 1024 for x in h], '%.1f')} "
                       f"| {per} | {per_p} | {cnt} | {_rng([s['still_open'] for s in sts], '%d').replace('**', '')} | "
                       f"{_f(_med([s['ready_ms_median'] for s in sts]))}, {_f(_med([s['ready_ms_p99'] for s in sts]))} |")
            a = [s["after"] for s in sts]
            out.append(f"| {labels[key]} | after the {n} sessions closed | {_rng([x['procs'] for x in a], '%d')} | "
                       f"{_rng([x['rss_kb'] / 1024 for x in a], '%.1f')} | {_rng([x['pss_kb'] / 1024 for x in a], '%.1f')} "
                       f"| | | | | |")
        for f in res["failed"]:
            out.append(f"| {labels[key]} | a run FAILED: {f[:300]} | | | | | | | | |")
    out += [""]
    for key, res in data["results"].items():
        if not res["runs"]:
            continue
        r0 = res["runs"][0]
        names = r0["stages"][0]["held"]["names"] if r0["stages"] else {}
        extra = ""
        if key == "pysendmail":
            pf = [r.get("pid_file_pid") for r in res["runs"]]
            started = [r["root_pid"] for r in res["runs"]]
            extra = ("; <root>/run/sendmail.pid holds the started pid" if pf == started
                     else f"; pid file {pf} vs started {started}")
        out.append(f"- {key}: processes idle {r0['idle']['names']}, with sessions {names}{extra}")
        top = r0["idle"].get("top") or []
        if top:
            out.append("  - idle, run 1, by process (RSS / PSS / USS MiB): " + "; ".join(
                f"{e['comm']} {e['pid']}: {_mib(e['rss_kb'])} / {_mib(e['pss_kb'])} / {_mib(e['uss_kb'])}"
                for e in top[:6]))
    out += ["", "Targets (issue 4), pysendmail daemon:", ""]
    res = data["results"].get("pysendmail") or {"runs": [], "failed": []}
    runs = res["runs"]
    if not runs:
        out.append("- NOT MEASURED: " + ((res["failed"] or ["no run"])[0][:500]))
        return "\n".join(out) + "\n"
    t = data["targets"]
    idle = _med([r["idle"]["rss_kb"] / 1024 for r in runs])
    idle_p = _med([r["idle"]["pss_kb"] / 1024 for r in runs])
    procs = _med([r["idle"]["procs"] for r in runs])
    out.append(f"- idle RSS {idle:.1f} MiB (median; sum over {procs:.0f} processes), target <= "
               f"{t['idle_rss_mib']:.0f} MiB -> **{'PASS' if idle <= t['idle_rss_mib'] else 'FAIL'}**"
               + ("" if procs <= 1 else f" (the RSS sum counts the pages the forked processes share once per "
                  f"process; PSS, which counts them once: {idle_p:.1f} MiB -> "
                  f"{'within' if idle_p <= t['idle_rss_mib'] else 'over'} {t['idle_rss_mib']:.0f} MiB)"))
    j1 = cfg["conns"].index(1000) if 1000 in cfg["conns"] else None
    if j1 is not None:
        sts = [r["stages"][j1] for r in runs if len(r["stages"]) > j1]
        per = _med([s["rss_per_conn_kib"] for s in sts])
        all_ready = all(s["ready"] == 1000 for s in sts)
        ok = per is not None and per <= t["rss_per_conn_kib"] and all_ready
        out.append(f"- RSS per idle session at 1,000 sessions {_f(per, '%.1f')} KiB (median; PSS "
                   f"{_f(_med([s['pss_per_conn_kib'] for s in sts]), '%.1f')} KiB), target <= "
                   f"{t['rss_per_conn_kib']:.0f} KiB -> **{'PASS' if ok else 'FAIL'}**"
                   + ("" if all_ready else " (not every session was served: "
                      + ", ".join(str(s["ready"]) for s in sts) + " of 1000)"))
    jh = cfg["conns"].index(t["held"]) if t["held"] in cfg["conns"] else None
    if jh is not None:
        sts = [r["stages"][jh] for r in runs if len(r["stages"]) > jh]
        ok = bool(sts) and len(sts) == len(runs) and all(s["ready"] == t["held"] and s["still_open"] == t["held"]
                                                         for s in sts)
        out.append(f"- {t['held']:,} concurrent sessions held: ready " + ", ".join(str(s["ready"]) for s in sts)
                   + "; still open after the hold " + ", ".join(str(s["still_open"]) for s in sts)
                   + "; refused " + ", ".join(str(s["refused"]) for s in sts)
                   + f" (per run) -> **{'PASS' if ok else 'FAIL'}**")
    else:
        out.append(f"- {t['held']:,} sessions: not measured (BENCH_MEM_CONNS)")
    return "\n".join(out) + "\n"


def _f(x, fmt="%.0f"):
    return "-" if x is None else fmt % x
