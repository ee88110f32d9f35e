"""Phase `milter`: accepted SMTP messages per second through 0, 1 and 3 no-op milters,
pysendmail's daemon side by side with Postfix, and what each milter costs.

Milters: BENCH_MILTER_COUNTS (`0,1,3`) gives the filter counts; the phase starts
max(counts) processes of bench/data/noop_milter.py (pymilter; CONTINUE to every
callback, every stage negotiated with a reply) with the bench venv's python, on
127.0.0.1:2641, 2642, ... (BENCH_MILTER_PORT), and every server with k filters
uses the first k of them, in order. Both MTAs talk to the SAME milter processes,
one run at a time.

Servers (mta_servers, one per MTA and filter count, all started before the
rounds, each on its own loopback port; a 5-message preflight must pass):

- Postfix k: mta_servers.PostfixSmtpd under bench/.work/postfix-milter<k>
  (port 2650 + i) plus `smtpd_milters = inet:127.0.0.1:P1, ...`,
  `milter_protocol = 6`, `milter_default_action = tempfail` (Postfix's
  default macro lists and timeouts kept).
- pysendmail k: mta_servers.PysendmailDaemon with PYSENDMAIL_ROOT =
  bench/.work/roots/milter<k> (port 2660 + i), its cf followed by
  `Xnoop1, S=inet:P1@127.0.0.1, F=T, T=C:10s;S:10s;R:10s;E:60s` per filter and
  `O InputMailFilters=noop1,...` (Sendmail's syntax; F=T: a failing filter
  tempfails, so a run with a broken filter fails instead of being fast).

Per cell (4 KB, BENCH_MILTER_SESSIONS `20,1`), each server gets phase_smtp's
smtp-source run (one connection per message, M = BENCH_MILTER_MESSAGES 1000 at
20 sessions, BENCH_MILTER_MESSAGES_SERIAL 400 at 1 session): one untimed
warm-up, then BENCH_MILTER_RUNS (5) rounds, servers interleaved round by round,
queues drained (untimed) around every run as in phase_smtp. Per run the phase
also samples the CPU seconds of the milter processes and of the server's
process tree (/proc, utime+stime+children's), and the milters' callback
counters (their stats files), so the report can say that every stage was
exchanged per message and how much CPU a filter costs each side.

Per-milter cost, per MTA and cell, each a median over rounds of a same-round
pairing with that MTA's 0-milter run: rate ratio r_k/r_0; added time per
message per milter (1000/r_k - 1000/r_0)/k ms (at 1 session, latency; at 20,
the inverse of the throughput); rate drop per milter 1 - (r_k/r_0)^(1/k) in %
(each filter taken to scale the rate by the same factor).
BENCH_MILTER_MAX_SECONDS (600) bounds the phase (no new round after it), each
smtp-source run is killed after BENCH_MILTER_RUN_TIMEOUT (120) s.

Security stance: needs root (Postfix); loopback only; stops only the
processes it started (by their pids); the milters drop to nobody.
"""
import json
import os
import subprocess
import time

from mta_servers import HOST, PostfixSmtpd, PysendmailDaemon, _stop_popen, listening, port_free
from phase_common import (ArgvTarget, config_lines, cpu_s, delta, env_list, fmt, maillog_lines, median,
                          median_rate, medians_text, messages_for, paired, postfix_version, rate_cell,
                          rate_summary, run_rounds, run_settings, stop_all, timed_run, tree_cpu_s,
                          trouble_lines, warmup_messages)
from phase_smtp import one_run, source_argv, start_all

SIZE = 4096
STAGES = ("connect", "helo", "mail", "rcpt", "data", "header", "eoh", "body", "eom", "abort", "close")


def settings():
    return {"counts": env_list("BENCH_MILTER_COUNTS", "0,1,3"), "sessions": env_list("BENCH_MILTER_SESSIONS", "20,1"),
            "size": SIZE, "milter_port": int(os.environ.get("BENCH_MILTER_PORT", 2641)),
            **run_settings("MILTER", messages_serial=400, postfix_port=2650, pysendmail_port=2660)}


# -- the milters ------------------------------------------------------------------------------
class NoopMilters:
    """The no-op milter processes: start, callback counters, CPU seconds, stop."""

    def __init__(self, python, script, ports, out):
        self.python, self.script, self.ports, self.out = python, script, ports, out
        self.procs = []
        self.stats_paths = [os.path.join(out, f"milter-{p}.stats") for p in ports]
        self.log_path = os.path.join(out, "milters.log")

    def start(self, timeout=15.0):
        for port, stats in zip(self.ports, self.stats_paths):
            if not port_free(port):
                raise RuntimeError(f"milter port {port} is in use")
            with open(self.log_path, "ab") as err:
                self.procs.append(subprocess.Popen([self.python, "-u", self.script, str(port), stats], cwd="/",
                                                   stdin=subprocess.DEVNULL, stdout=err, stderr=err))
        deadline = time.monotonic() + timeout
        for port, proc in zip(self.ports, self.procs):
            while not listening(port) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if not listening(port):
                tail = open(self.log_path, errors="replace").read()[-800:]
                raise RuntimeError(f"noop milter on port {port} did not listen (exit {proc.poll()}): {tail}")

    def counters(self, not_before=0.0, timeout=3.0):
        """[{stage: n}] per milter, from stats files written at or after `not_before`
        (time.time()); a file that stays older is taken as it is (bounded wait)."""
        deadline = time.monotonic() + timeout
        out = []
        for path in self.stats_paths:
            snap = {}
            while True:
                try:
                    snap = json.loads(open(path).read())
                except (OSError, ValueError):
                    snap = {}
                if snap.get("at", 0) >= not_before or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            out.append(snap)
        return out

    def cpu_s(self):
        """CPU seconds (user+sys) used so far, per milter process."""
        return [cpu_s([p.pid]) for p in self.procs]

    def stop(self):
        for p in self.procs:
            _stop_popen(p, timeout=10)
        self.procs = []

    def describe(self):
        return {"argv": [self.python, "-u", self.script, "PORT", "STATS"], "ports": self.ports,
                "log": self.log_path}


# -- the servers ------------------------------------------------------------------------------
def postfix_milter_main(ports):
    if not ports:
        return ""
    return ("# the milter phase: no-op milters, every stage\n"
            f"smtpd_milters = {', '.join(f'inet:{HOST}:{p}' for p in ports)}\n"
            "milter_protocol = 6\nmilter_default_action = tempfail\n")


def sendmail_milter_cf(ports):
    if not ports:
        return ""
    lines = [f"Xnoop{i}, S=inet:{p}@{HOST}, F=T, T=C:10s;S:10s;R:10s;E:60s" for i, p in enumerate(ports, 1)]
    lines.append("O InputMailFilters=" + ",".join(f"noop{i}" for i in range(1, len(ports) + 1)))
    return "\n# bench milter phase: no-op milters, every stage\n" + "\n".join(lines) + "\n"


class PostfixMilters(PostfixSmtpd):
    def __init__(self, workdir, port, milter_ports):
        super().__init__(workdir, port)
        self.milters = len(milter_ports)
        self.mta = "postfix"
        self.key = f"postfix+{self.milters}"
        self.label = f"Postfix, {self.milters} milters"
        self.pf.extra_main += postfix_milter_main(milter_ports)


class PysendmailMilters(PysendmailDaemon):
    def __init__(self, venv, root, port, milter_ports, log_path):
        super().__init__(venv, root, port=port, log_path=log_path)
        self.milters = len(milter_ports)
        self.mta = "pysendmail"
        self.key = f"pysendmail+{self.milters}"
        self.label = f"pysendmail, {self.milters} milters"
        self.milter_cf = sendmail_milter_cf(milter_ports)

    def write_cf(self):
        check = super().write_cf()
        with open(self.cf, "a") as f:
            f.write(self.milter_cf)
        return check

    def describe(self):
        return dict(super().describe(), cf_milter_lines=[ln for ln in self.milter_cf.splitlines()
                                                         if ln and ln[0] != "#"])


def build(ctx, cfg):
    ports = [cfg["milter_port"] + i for i in range(max(cfg["counts"] or [0]))]
    milters = NoopMilters(ctx.venv.python, os.path.join(ctx.bench, "data", "noop_milter.py"), ports, ctx.out)
    servers = []
    for i, k in enumerate(cfg["counts"]):
        servers.append(PostfixMilters(os.path.join(ctx.work, f"postfix-milter{k}"), cfg["postfix_port"] + i,
                                      ports[:k]))
        servers.append(PysendmailMilters(ctx.venv, os.path.join(ctx.work, "roots", f"milter{k}"),
                                         cfg["pysendmail_port"] + i, ports[:k],
                                         os.path.join(ctx.out, f"pysendmail-daemon.milter{k}.log")))
    return milters, servers


# -- the runs ---------------------------------------------------------------------------------
def measure(srv, milters, sess, m, cfg):
    """One smtp-source run with its drains, CPU and callback deltas: a record."""
    rec, (c0, m0, s0), (s1, m1, c1) = timed_run(
        srv, m, lambda: one_run(srv, sess, m, SIZE, cfg["run_timeout"]), cfg["drain_timeout"], incl_drain=True,
        before=lambda: (milters.counters(), milters.cpu_s(), tree_cpu_s(srv)),
        after=lambda: (tree_cpu_s(srv), milters.cpu_s(), milters.counters(not_before=time.time() + 0.3)))
    rec.update(milter_cpu_s=[round(b - a, 3) for a, b in zip(m0, m1)], server_cpu_s=delta(s0, s1),
               callbacks=[{s: b.get(s, 0) - a.get(s, 0) for s in STAGES} for a, b in zip(c0, c1)])
    return rec


def run(ctx):
    cfg = settings()
    t_start = time.monotonic()
    milters, servers = build(ctx, cfg)
    kept, failed, cells = [], [], []
    try:
        milters.start()
        ctx.log(f"milter: {len(milters.ports)} no-op milters on ports {milters.ports}")
        kept, failed = start_all(ctx, servers)
        for sess in cfg["sessions"]:
            m = messages_for(cfg, sess)
            cell = {"size": SIZE, "sessions": sess, "messages": m, "servers": {}}
            for srv in kept:
                ok, dt, err = one_run(srv, sess, warmup_messages(m, sess), SIZE, cfg["run_timeout"])
                srv.drain(cfg["drain_timeout"])
                cell["servers"][srv.key] = {"mta": srv.mta, "milters": srv.milters, "runs": [],
                                            "warmup": {"ok": ok, "seconds": round(dt, 3), "error": err}}
            run_rounds(ctx, "milter", cell, kept, cfg, t_start,
                       lambda srv: measure(srv, milters, sess, m, cfg), what=f"{sess} sessions")
            cell["rounds"] = len(next(iter(cell["servers"].values()))["runs"]) if cell["servers"] else 0
            summarize(cell)
            ctx.log(f"milter: {sess} sessions, M={m}: msgs/s median {medians_text(cell)}")
            cells.append(cell)
    finally:
        stop_all(ctx, "milter", servers)
        milters.stop()
    return {"phase": "milter", "seconds": round(time.monotonic() - t_start, 1), "settings": cfg,
            "milters": milters.describe(), "servers": [dict(s.describe(), mta=s.mta, milters=s.milters)
                                                       for s in servers],
            "measured": [s.key for s in kept], "failed": failed, "cells": cells}


def summarize(cell):
    """Medians, paired ratios to the same round's Postfix (same k) and per-milter costs
    (paired with the same MTA's 0-milter run)."""
    srvs = cell["servers"]
    for key, rec in srvs.items():
        runs = rec["runs"]
        rates = rate_summary(rec)
        rec["median_incl_drain"] = median_rate([x["rate_incl_drain"] for x in runs])
        m, k = cell["messages"], rec["milters"]
        rec["milter_cpu_ms_per_msg"] = median([sum(x["milter_cpu_s"][:k]) * 1000 / m / k if k else None
                                               for x in runs if x["ok"]])
        rec["server_cpu_ms_per_msg"] = median([x["server_cpu_s"] * 1000 / m if x["server_cpu_s"] is not None
                                               else None for x in runs if x["ok"]])
        calls = [c for x in runs if x["ok"] for c in x["callbacks"][:k]]
        rec["callbacks_per_msg"] = {s: median([c[s] / m for c in calls], 2) for s in STAGES} if calls else None
        ref = srvs.get(f"postfix+{k}")
        rec["paired_vs_postfix"] = paired(rates, ref["rates"] if ref else [])
        base = srvs.get(f"{rec['mta']}+0")
        if k and base:
            pairs = [(a, b) for a, b in zip(rates, base["rates"]) if a and b]
            rec["vs_0"] = paired(rates, base["rates"])
            rec["added_ms_per_milter"] = median([(1000 / a - 1000 / b) / k for a, b in pairs])
            rec["drop_pct_per_milter"] = median([(1 - (a / b) ** (1 / k)) * 100 for a, b in pairs], 1)
            rec["server_cpu_ms_added_per_milter"] = (
                round((rec["server_cpu_ms_per_msg"] - base["server_cpu_ms_per_msg"]) / k, 3)
                if rec["server_cpu_ms_per_msg"] is not None and base.get("server_cpu_ms_per_msg") is not None
                else None)


# -- the report -------------------------------------------------------------------------------
def report(data):
    cfg = data["settings"]
    counts = cfg["counts"]
    for cell in data["cells"]:          # from the raw runs again: a re-render follows a formula change
        summarize(cell)
    pfv = postfix_version(data)
    out = ["## Milters: SMTP accept rate through 0, 1 and 3 no-op milters, pysendmail vs Postfix", "",
           f"`smtp-source` (one connection per message, 4 KB, -t bench@discard.test) against each server; "
           f"{cfg['runs']} rounds after one untimed warm-up, servers interleaved round by round, queues drained "
           f"(untimed) around every run. The milters: {len(data['milters']['ports'])} process(es) of "
           f"`bench/data/noop_milter.py` (pymilter, CONTINUE to every callback, every stage negotiated with a "
           f"reply), shared by both MTAs, one run at a time. Postfix {pfv} (private, `smtpd_milters`, "
           f"milter_protocol 6, default action tempfail); pysendmail `sendmail -bD` (X lines, F=T, "
           f"InputMailFilters). Phase took {data['seconds']} s.", "",
           "Rates: median [min-max] msgs/s, ok runs; `vs Postfix` = paired ratio to Postfix with as many "
           "milters in the same round.", "",
           "| sessions | M | milters | Postfix | pysendmail | pysendmail vs Postfix |", "|---|---|---|---|---|---|"]
    for cell in data["cells"]:
        for k in counts:
            pf, ps = cell["servers"].get(f"postfix+{k}"), cell["servers"].get(f"pysendmail+{k}")
            row = [str(cell["sessions"]), str(cell["messages"]), str(k)]
            row += [rate_cell(pf), rate_cell(ps)]
            row.append(f"{fmt(ps['paired_vs_postfix'], '%.2f')}x" if ps else "-")
            out.append("| " + " | ".join(row) + " |")
    out += ["", "Per-milter cost, each the median over rounds of a pairing with the same MTA's 0-milter run "
            "in the same round: `rate vs 0` = r_k/r_0; `added ms/msg/milter` = (1000/r_k - 1000/r_0)/k (at 1 "
            "session the added latency; at 20 the inverse throughput); `drop/milter` = 1 - (r_k/r_0)^(1/k) "
            "(each filter scaling the rate by the same factor); "
            "`milter CPU` = user+sys ms of one milter process per message; `MTA CPU` = the server's process "
            "tree, ms per message (approximate: /proc utime+stime plus reaped children), and what each milter "
            "adds to it.", "",
           "| MTA | sessions | milters | rate vs 0 | added ms/msg/milter | drop/milter | milter CPU ms/msg | "
           "MTA CPU ms/msg (+/milter) |", "|---|---|---|---|---|---|---|---|"]
    for mta in ("postfix", "pysendmail"):
        for cell in data["cells"]:
            for k in counts:
                rec = cell["servers"].get(f"{mta}+{k}")
                if not rec:
                    continue
                add = rec.get("server_cpu_ms_added_per_milter")
                out.append(f"| {mta} | {cell['sessions']} | {k} | {fmt(rec.get('vs_0'), '%.2f')}"
                           f"{'x' if rec.get('vs_0') else ''} | {fmt(rec.get('added_ms_per_milter'), '%.2f')} | "
                           f"{fmt(rec.get('drop_pct_per_milter'), '%.1f%%')} | "
                           f"{fmt(rec['milter_cpu_ms_per_msg'], '%.2f')} | {fmt(rec['server_cpu_ms_per_msg'], '%.2f')}"
                           + (f" ({add:+.2f})" if add is not None else "") + " |")
    out += ["", "Callbacks each milter answered per message in the timed runs (median over the runs and the "
            "milters; header = headers per message, body = body chunks):", ""]
    shown = [s for s in STAGES if s != "abort"]
    out += ["| server | sessions | " + " | ".join(shown) + " | abort |", "|---|---|" + "---|" * (len(shown) + 1)]
    odd = []
    for cell in data["cells"]:
        for key, rec in cell["servers"].items():
            cb = rec.get("callbacks_per_msg")
            if not rec["milters"] or not cb:
                continue
            out.append(f"| {key} | {cell['sessions']} | " + " | ".join(fmt(cb[s], "%.2f") for s in shown)
                       + f" | {fmt(cb['abort'], '%.2f')} |")
            if not cb["eom"] or cb["eom"] < 0.99:
                odd.append(f"{key} at {cell['sessions']} sessions: {fmt(cb['eom'], '%.2f')} end-of-message "
                           f"callbacks per message (the milters were not consulted for every message)")
    out.append("")
    for o in odd:
        out.append(f"- **check**: {o}")
    out += trouble_lines(data, lambda c: f"{c['sessions']} sessions")
    out += maillog_lines(data, skip=("daemon",), count_other=True)
    out += config_lines(data, lambda d: "; main.cf adds `" + "; ".join(
        ln for ln in (d.get("main_cf_extra") or "").splitlines() if ln and ln[0] != "#") + "`",
        lambda d: d.get("cf_milter_lines") or ["(no milter lines)"])
    out.append(f"- smtp-source: `{' '.join(source_argv(ArgvTarget(), 'S', 'M', SIZE))}`; milters: "
               f"`{' '.join(data['milters']['argv'])}`")
    return "\n".join(out) + "\n"
