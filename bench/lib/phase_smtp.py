"""Phase `smtp` (issue 4): messages accepted per second over SMTP, pysendmail's daemon vs Postfix.

For each cell (message size x concurrent sessions) every server in turn gets

    smtp-source -s SESSIONS -m M -l SIZE -f a@localhost -t bench@discard.test 127.0.0.1:PORT

(one connection per message; M = max(SESSIONS, min(BENCH_SMTP_MESSAGES=2000,
50 MiB // SIZE)), i.e. 2000 at 4 KB and 512 at 100 KB); rate = M / wall seconds of
smtp-source, which exits non-zero at the first reply that is not 2xx/3xx, so a
run counts only if every message was accepted. One untimed warm-up per server
and cell (min(M, max(2 x sessions, 100)) messages), then BENCH_SMTP_RUNS (3)
rounds interleaved across servers (A B C A B C ...). Before every run (untimed,
at most 30 s) the server's queue is drained, so no run pays for the previous
run's deliveries: the bench waits right after each run until the queue is
empty and records how long that took and how many messages were left when
smtp-source returned, so a server that defers its discard work past the run
shows it; "incl. drain" = M / (run + drain seconds). If pysendmail's queue
count stops moving for 5 s the bench runs `sendmail -q` once (recorded and
reported: a daemon should not leave accepted mail until the next interval). Paired ratio = median
over rounds of rate(server)/rate(postfix) in the same round.

Servers (mta_servers): Postfix 3.7 smtpd of a private instance (queue file
fsynced before 250, then `discard:`), the pysendmail daemon (`sendmail -bD`,
fsync before 250, the discard mailer), and smtp-sink (the load generator's
ceiling; BENCH_SMTP_SINK=0 drops it). A server that fails to start or a
one-message preflight is reported with its error and left out.

Cells run in the order the targets need them (4 KB/20, 100 KB/20 first);
BENCH_SMTP_MAX_SECONDS (420) bounds the phase: cells not reached are listed as
skipped. Every smtp-source run is killed after BENCH_SMTP_RUN_TIMEOUT (120) s.

Targets (issue 4): >= 1.5x Postfix at 4 KB / 20 sessions, >= 1.0x at 100 KB
(judged at 20 sessions; the 1 and 100 session cells are shown beside it).
"""
import os
import shutil
import statistics
import subprocess
import time

from mta_servers import PostfixSmtpd, PysendmailDaemon, SmtpSink
from phase_common import ArgvTarget, env_list, fmt, median_rate, paired, stop_all

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SENDER = "a@localhost"
TARGETS = {(4096, 20): 1.5, (102400, 20): 1.0}
ORDER = [(4096, 20), (102400, 20), (4096, 1), (4096, 100), (102400, 1), (102400, 100)]


def settings():
    sizes = env_list("BENCH_SMTP_SIZES", "4096,102400")
    sessions = env_list("BENCH_SMTP_SESSIONS", "1,20,100")
    cells = [c for c in ORDER if c[0] in sizes and c[1] in sessions]
    cells += [(z, s) for z in sizes for s in sessions if (z, s) not in cells]
    return {
        "cells": cells,
        "messages": int(os.environ.get("BENCH_SMTP_MESSAGES", 2000)),
        "bytes_cap": int(os.environ.get("BENCH_SMTP_BYTES_CAP", 50 * 1024 * 1024)),
        "runs": int(os.environ.get("BENCH_SMTP_RUNS", 3)),
        "max_seconds": float(os.environ.get("BENCH_SMTP_MAX_SECONDS", 420)),
        "run_timeout": float(os.environ.get("BENCH_SMTP_RUN_TIMEOUT", 120)),
        "drain_timeout": float(os.environ.get("BENCH_SMTP_DRAIN_TIMEOUT", 30)),
        "sink": os.environ.get("BENCH_SMTP_SINK", "1") != "0",
    }


def source_argv(srv, sessions, m, size):
    return [SMTP_SOURCE, "-s", str(sessions), "-m", str(m), "-l", str(size), "-f", SENDER,
            "-t", srv.rcpt, srv.target()]


def one_run(srv, sessions, m, size, timeout):
    """One timed smtp-source run: (ok, seconds, error text)."""
    argv = source_argv(srv, sessions, m, size)
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, timeout=timeout)
        dt = time.monotonic() - t0
        err = p.stderr.decode(errors="replace")
        ok = p.returncode == 0 and "fatal" not in err
        return ok, dt, "" if ok else f"exit {p.returncode}: {err.strip()[-300:]}"
    except subprocess.TimeoutExpired:
        return False, time.monotonic() - t0, f"killed after {timeout:.0f} s"


def build_servers(ctx):
    servers = [PostfixSmtpd(os.path.join(ctx.work, "postfix-smtp")),
               PysendmailDaemon(ctx.venv, os.path.join(ctx.work, "roots", "smtpd"),
                                log_path=os.path.join(ctx.out, "pysendmail-daemon.smtp.log"))]
    if settings()["sink"]:
        servers.append(SmtpSink(log_path=os.path.join(ctx.out, "smtp-sink.log")))
    return servers


def start_all(ctx, servers):
    """Start each server and run a 5-message preflight; returns (kept, failed records)."""
    kept, failed = [], []
    for srv in servers:
        try:
            srv.start()
            ok, dt, err = one_run(srv, 1, 5, 4096, 60)
            if not ok:
                raise RuntimeError(f"preflight `{' '.join(source_argv(srv, 1, 5, 4096))}` failed: {err}")
            drained = srv.drain(60)
            ctx.log(f"smtp: {srv.key} ready on {srv.target()} (preflight 5 msgs {dt:.2f} s, "
                    f"drained {drained[0]} in {drained[1]:.1f} s)")
            kept.append(srv)
        except Exception as e:          # left out, reported; the others are still measured
            ctx.log(f"smtp: {srv.key} LEFT OUT: {e}")
            failed.append({"key": srv.key, "label": srv.label, "error": str(e)[-1500:]})
            try:
                srv.stop()
            except Exception:
                pass
    return kept, failed


def run(ctx):
    cfg = settings()
    servers = build_servers(ctx)
    t_start = time.monotonic()
    kept, failed = start_all(ctx, servers)
    cells, skipped = [], []
    try:
        for size, sess in cfg["cells"]:
            if time.monotonic() - t_start > cfg["max_seconds"]:
                skipped.append([size, sess])
                continue
            m = max(sess, min(cfg["messages"], cfg["bytes_cap"] // size))
            mw = min(m, max(2 * sess, 100))
            cell = {"size": size, "sessions": sess, "messages": m, "warmup_messages": mw, "servers": {}}
            for srv in kept:
                srv.drain(cfg["drain_timeout"])
                ok, dt, err = one_run(srv, sess, mw, size, cfg["run_timeout"])
                cell["servers"][srv.key] = {"rates": [], "rates_incl_drain": [], "seconds": [], "errors": [],
                                            "left_at_end": [],
                                            "drain_s": [], "drain_timeouts": 0,
                                            "warmup": {"ok": ok, "seconds": round(dt, 3), "error": err},
                                            "argv": source_argv(srv, sess, m, size)}
            done = 0
            for r in range(cfg["runs"]):
                if r and time.monotonic() - t_start > cfg["max_seconds"]:
                    ctx.log(f"smtp: over {cfg['max_seconds']:.0f} s: cell {size}/{sess} stops after {r} rounds")
                    break
                for srv in kept:
                    rec = cell["servers"][srv.key]
                    srv.drain(cfg["drain_timeout"])     # normally a no-op: drained after its last run
                    ok, dt, err = one_run(srv, sess, m, size, cfg["run_timeout"])
                    rec["left_at_end"].append(srv.remaining())
                    dok, ds, left = srv.drain(cfg["drain_timeout"])
                    rec["drain_s"].append(round(ds, 3))
                    if not dok:
                        rec["drain_timeouts"] += 1
                        ctx.log(f"smtp: {srv.key}: {left} messages still queued {ds:.0f} s after the run")
                    rec["seconds"].append(round(dt, 3))
                    rec["rates"].append(round(m / dt, 1) if ok else None)
                    rec["rates_incl_drain"].append(round(m / (dt + ds), 1) if ok and dok else None)
                    if err:
                        rec["errors"].append(err)
                        ctx.log(f"smtp: {srv.key} run failed: {err}")
                done += 1
            cell["rounds"] = done
            line = ", ".join(f"{k} {median_rate(v['rates'])}" for k, v in cell["servers"].items())
            ctx.log(f"smtp: {size} B x {sess} sessions, M={m}: msgs/s median {line}")
            cells.append(cell)
    finally:
        stop_all(ctx, "smtp", servers)
    for cell in cells:
        ref = cell["servers"].get("postfix", {}).get("rates")
        for key, rec in cell["servers"].items():
            good = [x for x in rec["rates"] if x]
            rec.update(median=median_rate(rec["rates"]), min=min(good) if good else None, max=max(good) if good else None,
                       ok_runs=len(good))
            rec["paired_vs_postfix"] = paired(rec["rates"], ref or [])
            rec["median_incl_drain"] = median_rate(rec["rates_incl_drain"])
            ref_d = cell["servers"].get("postfix", {}).get("rates_incl_drain") or []
            rec["paired_incl_drain"] = paired(rec["rates_incl_drain"], ref_d)
    return {"phase": "smtp", "seconds": round(time.monotonic() - t_start, 1), "settings": cfg,
            "sender": SENDER, "servers": [s.describe() for s in servers],
            "measured": [s.key for s in kept], "failed": failed, "cells": cells, "skipped_cells": skipped,
            "targets": {f"{z}/{s}": v for (z, s), v in TARGETS.items()}}


def _size(z):
    return f"{z // 1024} KB" if z % 1024 == 0 else f"{z} B"


def report(data):
    keys = [d["key"] for d in data["servers"]]
    labels = {d["key"]: d["label"] for d in data["servers"]}
    pfv = next((d.get("version") for d in data["servers"] if d["key"] == "postfix"), "?")
    cfg = data["settings"]
    out = ["## SMTP accept rate: `smtp-source`, messages/s (issue 4)", "",
           f"{cfg['runs']} rounds per cell after one untimed warm-up per server, servers interleaved round by "
           f"round, queues drained before every run (untimed). One connection per message; rate = M / wall "
           f"seconds of smtp-source; a run counts only if smtp-source exited 0 (every message got 250). "
           f"Postfix {pfv} private instance, smtpd on loopback, queue file fsynced before 250, then `discard:`. "
           f"Phase took {data['seconds']} s.", "",
           "Cells: median [min-max] msgs/s, (paired ratio to Postfix), ok runs; `left` = messages still queued "
           "when smtp-source returned (median); `incl. drain` = M / (smtp-source seconds + the seconds until the "
           "queue was empty after it): accepted AND disposed of, so a server that defers its delivery work "
           "past the run is not flattered (median, paired ratio).", "",
           "| size | sessions | M | " + " | ".join(labels[k] for k in keys if k in data["measured"]) + " |",
           "|---|---|---|" + "---|" * len(data["measured"])]
    for cell in sorted(data["cells"], key=lambda c: (c["size"], c["sessions"])):
        row = [_size(cell["size"]), str(cell["sessions"]), str(cell["messages"])]
        for k in keys:
            if k not in data["measured"]:
                continue
            rec = cell["servers"].get(k)
            if not rec:
                row.append("-")
                continue
            n = len(rec["rates"])
            txt = f"**{fmt(rec['median'])}** [{fmt(rec['min'])}-{fmt(rec['max'])}]"
            if k != "postfix":
                txt += f" ({fmt(rec['paired_vs_postfix'], '%.2f')}x)"
            txt += f" {rec['ok_runs']}/{n}"
            left = [x for x in rec["left_at_end"] if x is not None]
            if left and statistics.median(left):
                txt += f", left {statistics.median(left):.0f}"
            if k != "sink" and rec.get("median_incl_drain"):
                txt += f"; incl. drain {fmt(rec['median_incl_drain'])}"
                if k != "postfix":
                    txt += f" ({fmt(rec.get('paired_incl_drain'), '%.2f')}x)"
            if rec["drain_timeouts"]:
                txt += f", {rec['drain_timeouts']} drain timeouts"
            row.append(txt)
        out.append("| " + " | ".join(row) + " |")
    for z, s in data["skipped_cells"]:
        out.append(f"| {_size(z)} | {s} | - | skipped: the phase reached BENCH_SMTP_MAX_SECONDS |"
                   + " |" * (len(data["measured"]) - 1))
    out += [""]
    for f in data["failed"]:
        out.append(f"- **{f['key']} not measured**: {f['error']}")
    errs = [(c, k, e) for c in data["cells"] for k, r in c["servers"].items() for e in r["errors"]]
    for c, k, e in errs[:10]:
        out.append(f"- run failed: {k} at {_size(c['size'])}/{c['sessions']}: {e}")
    for d in data["servers"]:
        logs = d.get("maillog") or []
        if d["key"] == "pysendmail" and logs and "pysendmail" in data["measured"]:
            sent = 5 + sum(c["warmup_messages"] * bool(c["servers"]["pysendmail"]["warmup"]["ok"])
                           + c["messages"] * c["servers"]["pysendmail"]["ok_runs"]
                           for c in data["cells"] if "pysendmail" in c["servers"])
            got = sum(x["received"] for x in logs)
            other = [ln for x in logs for ln in x["other"]]
            kicks = d.get("queue_run_kicks") or []
            if kicks:
                out.append(f"- pysendmail left messages queued with nothing moving for 5 s {len(kicks)} times; the "
                           f"bench then ran `sendmail -q` once each time (counted in the drain time): "
                           + "; ".join(f"{k['at']} {k['left']} left ({', '.join(k['files'][:3])})" for k in kicks[:5]))
            out.append(f"- pysendmail's maillog: {got} messages received (smtp-source sent {sent} in the runs that "
                       f"succeeded), {sum(x['discarded'] for x in logs)} discarded, "
                       f"{sum(x['other_lines'] for x in logs)} other lines"
                       + (": " + " / ".join(f"`{ln[-160:]}`" for ln in other[:6]) if other else ""))
    out += ["", "Targets (issue 4), judged on the paired ratio (ratio of medians in brackets):", ""]
    for (z, s), want in TARGETS.items():
        cell = next((c for c in data["cells"] if c["size"] == z and c["sessions"] == s), None)
        rec = cell["servers"].get("pysendmail") if cell else None
        pf = cell["servers"].get("postfix") if cell else None
        if not rec or rec["paired_vs_postfix"] is None:
            out.append(f"- {_size(z)}, {s} sessions: pysendmail >= {want}x Postfix -> NOT MEASURED")
            continue
        of_med = rec["median"] / pf["median"] if pf and pf["median"] and rec["median"] else None
        verdict = "PASS" if rec["paired_vs_postfix"] >= want and rec["ok_runs"] == len(rec["rates"]) else "FAIL"
        out.append(f"- {_size(z)}, {s} sessions: pysendmail {fmt(rec['median'])} vs Postfix {fmt(pf['median'])} "
                   f"msgs/s = {rec['paired_vs_postfix']:.2f}x ({fmt(of_med, '%.2f')}x), target >= {want}x -> "
                   f"**{verdict}**" + ("" if rec["ok_runs"] == len(rec["rates"]) else " (failed runs)")
                   + f"; including the drain {fmt(rec.get('paired_incl_drain'), '%.2f')}x")
    others = [(c["size"], c["sessions"], c["servers"]["pysendmail"]["paired_vs_postfix"]) for c in data["cells"]
              if c["size"] == 102400 and c["sessions"] != 20 and "pysendmail" in c["servers"]]
    if others:
        out.append("- 100 KB at the other session counts (>= 1.0x): " + ", ".join(
            f"{s} sessions {fmt(r, '%.2f')}x {'ok' if r and r >= 1.0 else 'below'}" for _, s, r in others))
    out += ["", "Commands (per cell, M and -s vary):", ""]
    for d in data["servers"]:
        if d["key"] not in data["measured"]:
            continue
        cmd = " ".join(source_argv(ArgvTarget(d["target"]), "S", "M", "SIZE"))
        how = {"postfix": f"private Postfix, `postfix -c {d.get('config')}`; master.cf adds "
                          f"`{(d.get('master_cf_extra') or '').strip()}`; main.cf adds "
                          f"`{'; '.join(ln for ln in (d.get('main_cf_extra') or '').splitlines() if ln[:1] != '#')}`",
               "pysendmail": f"`PYSENDMAIL_ROOT={d.get('env', {}).get('PYSENDMAIL_ROOT')} "
                             f"{' '.join(d.get('argv') or [])}`, cf `{d.get('cf')}` (shipped cf + "
                             f"`{d.get('cf_rule')}` in ParseLocal + {', '.join(d.get('cf_options_added') or [])}; "
                             f"-bt check: `{(d.get('cf_check') or {}).get('parse_returns')}`)",
               "sink": f"`{' '.join(d.get('argv') or [])}`"}.get(d["key"], "")
        out.append(f"- {d['key']}: `{cmd}`; {how}")
    return "\n".join(out) + "\n"
