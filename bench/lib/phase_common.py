"""What the SMTP accept-rate phases (smtp, milter, authcheck; deliver for stopping) share:
settings read from the environment, CPU seconds from /proc, medians and paired ratios,
the timed run with its untimed drains, the rounds loop, stopping the servers, and the
report lines those phases print alike.  Each phase keeps its own cases, its own figures
and its own report text; this module owns only what was the same in them.

Security stance: starts no process and signals none; reads /proc/<pid>/stat of the
servers the phases started and calls those servers' own methods.
"""
import os
import statistics
import time

import proctree
from mta_servers import HOST

CLK = os.sysconf("SC_CLK_TCK")


# -- settings ---------------------------------------------------------------------------------
def env_list(name, default):
    """A comma-separated list of integers from the environment."""
    return [int(x) for x in os.environ.get(name, default).split(",") if x.strip()]


def run_settings(prefix, messages_serial, postfix_port, pysendmail_port):
    """The knobs every accept-rate phase has, read from BENCH_<prefix>_*."""
    def env(name, default):
        return os.environ.get(f"BENCH_{prefix}_{name}", default)
    return {
        "messages": int(env("MESSAGES", 1000)),
        "messages_serial": int(env("MESSAGES_SERIAL", messages_serial)),
        "runs": int(env("RUNS", 5)),
        "max_seconds": float(env("MAX_SECONDS", 600)),
        "run_timeout": float(env("RUN_TIMEOUT", 120)),
        "drain_timeout": float(env("DRAIN_TIMEOUT", 30)),
        "postfix_port": int(env("POSTFIX_PORT", postfix_port)),
        "pysendmail_port": int(env("PYSENDMAIL_PORT", pysendmail_port)),
    }


def messages_for(cfg, sessions):
    """M of a cell: `messages` with many sessions, `messages_serial` with one, at least one per session."""
    return max(sessions, cfg["messages"] if sessions > 1 else cfg["messages_serial"])


def warmup_messages(m, sessions):
    return min(m, max(2 * sessions, 100))


# -- CPU seconds ------------------------------------------------------------------------------
def cpu_s(pids, children=False):
    """utime+stime (+ the reaped children's, when asked) of the pids, in seconds."""
    ticks = 0
    for pid in pids:
        try:
            data = open(f"/proc/{pid}/stat", "rb").read()
        except OSError:
            continue
        f = data[data.rfind(b")") + 2:].split()
        ticks += int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if children else 0)
    return ticks / CLK


def tree_cpu_s(srv):
    """CPU seconds of a server's process tree (children's included), None when it has no pid."""
    pid = srv.root_pid()
    return cpu_s(proctree.tree(pid), children=True) if pid else None


def delta(a, b):
    """b - a, rounded to ms, or None when either sample is missing."""
    return round(b - a, 3) if a is not None and b is not None else None


# -- figures ----------------------------------------------------------------------------------
def median(xs, nd=3):
    """Median of the values that are not None, rounded to nd places; None when there are none."""
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), nd) if xs else None


def median_rate(xs):
    """Median of the rates of the runs that counted (None or 0 did not), to 0.1 msg/s."""
    good = [x for x in xs if x]
    return round(statistics.median(good), 1) if good else None


def paired(xs, ys):
    """Median over rounds of x/y in the same round (rounds where either failed left out)."""
    return median([a / b for a, b in zip(xs, ys) if a and b])


def rate_summary(rec):
    """rates, median, min, max and ok_runs of a server's record, from its runs; returns the rates."""
    rates = [x["rate"] for x in rec["runs"]]
    good = [x for x in rates if x]
    rec.update(rates=rates, median=median_rate(rates), min=min(good) if good else None,
               max=max(good) if good else None, ok_runs=len(good))
    return rates


def fmt(x, spec="%.0f"):
    return "-" if x is None else spec % x


# -- the runs ---------------------------------------------------------------------------------
def timed_run(srv, m, send, drain_timeout, before=lambda: None, after=lambda: None, incl_drain=False):
    """One timed run of `send() -> (ok, seconds, error)` for m messages, the queue drained
    (untimed) before it and after it; `before()` is sampled after the first drain and
    `after()` after the second; with incl_drain the record has rate_incl_drain, m / (run +
    drain seconds).  Returns (record, before's value, after's value)."""
    srv.drain(drain_timeout)
    b = before()
    ok, dt, err = send()
    left = srv.remaining()
    dok, ds, _ = srv.drain(drain_timeout)
    a = after()
    rec = {"ok": ok, "seconds": round(dt, 3), "rate": round(m / dt, 1) if ok else None, "error": err,
           "left_at_end": left, "drain_s": round(ds, 3), "drained": dok}
    if incl_drain:
        rec["rate_incl_drain"] = round(m / (dt + ds), 1) if ok and dok else None
    return rec, b, a


def run_rounds(ctx, phase, cell, servers, cfg, t_start, timed, what, tag="", alternate=False):
    """cfg["runs"] rounds of `timed(srv) -> record` over the servers in turn (the order reversed
    every other round when `alternate`), each record appended to cell["servers"][key]["runs"];
    no new round once cfg["max_seconds"] have passed since t_start."""
    for r in range(cfg["runs"]):
        if r and time.monotonic() - t_start > cfg["max_seconds"]:
            ctx.log(f"{phase}: over {cfg['max_seconds']:.0f} s: {what} stops after {r} rounds")
            break
        for srv in (servers[::-1] if alternate and r % 2 else servers):
            rec = timed(srv)
            cell["servers"][srv.key]["runs"].append(rec)
            if rec["error"]:
                ctx.log(f"{phase}: {srv.key} {tag}run failed: {rec['error']}")


def medians_text(cell):
    return ", ".join(f"{k} {v['median']}" for k, v in cell["servers"].items())


def stop_all(ctx, phase, servers):
    """Stop every server; one that fails to stop is logged and the others are still stopped."""
    for srv in servers:
        try:
            srv.stop()
        except Exception as e:
            ctx.log(f"{phase}: stopping {srv.key}: {e}")


# -- the report -------------------------------------------------------------------------------
class ArgvTarget:
    """Stands in for a server in phase_smtp.source_argv when only the command is printed."""
    rcpt = "bench@discard.test"

    def __init__(self, target=f"{HOST}:PORT"):
        self._target = target

    def target(self):
        return self._target


def postfix_version(data):
    return next((d.get("version") for d in data["servers"] if d["mta"] == "postfix"), "?")


def rate_cell(rec):
    """`**median** [min-max] ok/runs` of a server's record, or `not measured`."""
    return (f"**{fmt(rec['median'])}** [{fmt(rec['min'])}-{fmt(rec['max'])}] {rec['ok_runs']}/{len(rec['runs'])}"
            if rec else "not measured")


def trouble_lines(data, where):
    """The servers left out and the first ten failed runs; `where(cell)` names a cell."""
    out = [f"- **{f['key']} not measured**: {f['error']}" for f in data["failed"]]
    errs = [(c, k, x["error"]) for c in data["cells"] for k, r in c["servers"].items() for x in r["runs"]
            if x["error"]]
    out += [f"- run failed: {k} at {where(c)}: {e}" for c, k, e in errs[:10]]
    return out


def maillog_lines(data, skip, count_other=False):
    """Per measured pysendmail daemon: its maillog's received and discarded counts, the
    `sendmail -q` kicks, and the first other lines (those containing none of `skip`)."""
    out = []
    for d in data["servers"]:
        if d["mta"] != "pysendmail" or d["key"] not in data["measured"]:
            continue
        logs = d.get("maillog") or []
        other = [ln for x in logs for ln in x["other"] if not any(s in ln for s in skip)]
        kicks = d.get("queue_run_kicks") or []
        out.append(f"- {d['key']}: maillog {sum(x['received'] for x in logs)} received, "
                   f"{sum(x['discarded'] for x in logs)} discarded"
                   + (f", {sum(x['other_lines'] for x in logs)} other lines" if count_other else "")
                   + (f", {len(kicks)} `sendmail -q` kicks" if kicks else "")
                   + (": " + " / ".join(f"`{ln[-160:]}`" for ln in other[:4]) if other else ""))
    return out


def config_lines(data, postfix_tail, cf_added, pysendmail_tail=lambda d: ""):
    """The `Configuration:` section: how each measured server ran.  postfix_tail(d) follows
    `postfix -c DIR` on ADDR; cf_added(d) lists the cf lines the phase adds."""
    out = ["", "Configuration:", ""]
    for d in data["servers"]:
        if d["key"] not in data["measured"]:
            continue
        if d["mta"] == "postfix":
            out.append(f"- {d['key']}: `postfix -c {d.get('config')}` on {d['target']}{postfix_tail(d)}")
        else:
            out.append(f"- {d['key']}: `PYSENDMAIL_ROOT={d['env']['PYSENDMAIL_ROOT']} {' '.join(d['argv'])}`; "
                       f"cf `{d['cf']}` + `{'; '.join(cf_added(d))}`{pysendmail_tail(d)}")
    return out
