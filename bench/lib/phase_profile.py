"""Phase `profile`: where pysendmail's submission time goes (and phase `hyperfine`).

For `sendmail -odq -t -i < msg` (case b of the submit phase), plus the default
mode and Postfix's sendmail for comparison:

1. Split of the wall time, interleaved like the submit phase (fewer rounds):
   python -I -S -c pass  |  + import pysendmail.cli.main  |  whole submission.
2. `python -X importtime -I -S` of the ideal shim (case h: no `site`, no fallback),
   repeated, median per module:
   the imports by self time, the cumulative cost of each top-level import, and
   any module the submission path must not import (re, email, json, ...).
3. `strace -f -c`: syscalls by count and time; `strace -f -T` on the
   durability calls (fsync, rename, flock, clone/execve): how many fsyncs
   and what each cost. strace slows syscalls down: read its times as
   relative, its counts as exact.

Phase `hyperfine` (class Hyperfine): the same cases through the public tool,
`hyperfine -w 3 -r N 'CMD < msg'` (through sh; hyperfine subtracts the
shell's start-up), as a cross-check of proc_time.py's figures.
"""
import json
import os
import re
import statistics
import subprocess
import tempfile

import proc_time
from phase_submit import build_cases

FORBIDDEN = ("re", "email", "dataclasses", "getopt", "json", "socket", "datetime", "logging",
             "ssl", "smtplib", "subprocess", "asyncio", "selectors", "typing", "enum", "locale",
             "argparse", "tempfile", "shutil", "random", "hashlib", "base64", "lark")
DURABILITY = "fsync,fdatasync,sync_file_range,rename,renameat,renameat2,flock,fcntl,clone,clone3,fork,vfork,execve,wait4"


def _importtime(case, runs):
    """Median self/cumulative microseconds per module over `runs` runs of the case."""
    # run the shim file through the interpreter with -X importtime; the shim's own
    # line says -I -S, so pass them too
    py = _shim_python(case.argv[0])
    argv = [py, "-X", "importtime", "-I", "-S", case.argv[0]] + case.argv[1:]
    per = {}
    order = []
    for _ in range(runs):
        with tempfile.NamedTemporaryFile("r", prefix="bench-imp-") as tf:
            code = proc_time.spawn_wait(argv, case.env, case.stdin, stderr=tf.name)[1]
            text = open(tf.name, errors="replace").read()
        if case.settle:
            case.settle()
        for line in text.splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
            if m:
                name = m.group(4)
                if name not in per:
                    order.append(name)
                    per[name] = {"self": [], "cum": [], "depth": len(m.group(3)) // 2}
                per[name]["self"].append(int(m.group(1)))
                per[name]["cum"].append(int(m.group(2)))
    mods = [{"name": n, "self_us": statistics.median(per[n]["self"]), "cum_us": statistics.median(per[n]["cum"]),
             "depth": per[n]["depth"]} for n in order]
    with tempfile.NamedTemporaryFile("r", prefix="bench-imp-") as tf:
        proc_time.spawn_wait([py, "-X", "importtime", "-I", "-S", "-c", "pass"], case.env, None, stderr=tf.name)
        floor = sorted({m.group(1) for m in re.finditer(r"\| *(\S+)\n", open(tf.name).read())})
    return {"argv": argv, "exit": code, "modules": mods, "floor_modules": floor}


def _shim_python(script):
    with open(script, "rb") as f:
        first = f.readline().decode().strip()
    return first[2:].split()[0] if first.startswith("#!") else "/usr/bin/python3"


def _strace_summary(case, out_dir, tag):
    """strace -f -c: rows of (syscall, calls, errors, seconds) plus totals."""
    path = os.path.join(out_dir, f"strace-c-{tag}.txt")
    argv = ["/usr/bin/strace", "-f", "-c", "-o", path] + case.argv
    proc_time.spawn_wait(argv, case.env, case.stdin, timeout=60)
    if case.settle:
        case.settle()
    rows = []
    for line in open(path, errors="replace"):
        p = line.split()
        if len(p) >= 5 and p[0].replace(".", "").isdigit() and p[-1] != "total":
            calls = int(p[3])
            errs = int(p[4]) if len(p) == 6 else 0
            rows.append({"syscall": p[-1], "calls": calls, "errors": errs, "seconds": float(p[1])})
    rows.sort(key=lambda r: -r["calls"])
    return {"file": os.path.basename(path), "total_calls": sum(r["calls"] for r in rows), "rows": rows}


def _strace_durability(case, out_dir, tag):
    """strace -f -T on the durability calls: each call with its duration."""
    path = os.path.join(out_dir, f"strace-T-{tag}.txt")
    argv = ["/usr/bin/strace", "-f", "-T", "-e", "trace=" + DURABILITY, "-o", path] + case.argv
    proc_time.spawn_wait(argv, case.env, case.stdin, timeout=60)
    if case.settle:
        case.settle()
    calls = []
    for line in open(path, errors="replace"):
        m = re.match(r"(?:\[pid\s+\d+\]\s+|\d+\s+)?(\w+)\((.*)<(\d+\.\d+)>\s*$", line.strip())
        if m:
            calls.append({"call": m.group(1), "args": m.group(2)[:140], "seconds": float(m.group(3))})
    by = {}
    for c in calls:
        b = by.setdefault(c["call"], {"n": 0, "seconds": 0.0})
        b["n"] += 1
        b["seconds"] += c["seconds"]
    return {"file": os.path.basename(path), "by_call": by, "calls": calls[:60]}


def run(ctx):
    pf, cases, msg = build_cases(ctx)
    by = {c.key: c for c in cases}
    pf.start()
    try:
        for c in cases:
            if c.clean:
                c.clean()
        split = [by["f"], by["g"], by["h"], by["b"], by["a"]]
        secs = proc_time.run_interleaved(split, rounds=max(10, ctx.rounds // 2), warmup=ctx.warmup, rss_runs=0,
                                         max_seconds=ctx.max_seconds, log=ctx.log)
        ctx.log(f"profile: split timing done in {secs:.1f} s")
        imp = _importtime(by["h"], runs=7)     # the ideal shim: pysendmail's imports, no site fallback
        by["h"].clean()
        ctx.log(f"profile: importtime: {len(imp['modules'])} modules")
        st = {}
        for key, tag in (("a", "postfix"), ("b", "odq"), ("d", "default"), ("c", "odi")):
            st[tag] = {"summary": _strace_summary(by[key], ctx.out, tag),
                       "durability": _strace_durability(by[key], ctx.out, tag)}
            if by[key].clean:
                by[key].clean()
        ctx.log("profile: strace done")
    finally:
        pf.stop()
    return {"phase": "profile", "split": [proc_time.summary(c, {"python_IS": by["f"], "postfix": by["a"]})
                                           for c in split],
            "importtime": imp, "strace": st}


def report(data):
    out = ["## Profile of `pysendmail sendmail -odq -t -i < msg`", "",
           "Wall-time split (interleaved, paired):", "",
           "| step | wall ms median | min-max | CPU user+sys ms | minus previous step (medians) |", "|---|---|---|---|---|"]
    prev = None
    for r in data["split"]:
        d = "" if prev is None or r["key"] == "a" else "+%.1f ms" % (r["wall_ms_median"] - prev)
        out.append(f"| {r['key']} {r['label']} | {r['wall_ms_median']:.1f} | {r['wall_ms_min']:.1f}-"
                   f"{r['wall_ms_max']:.1f} | {r['user_ms_median']:.1f}+{r['sys_ms_median']:.1f} | {d} |")
        if r["key"] != "a":
            prev = r["wall_ms_median"]
    imp = data["importtime"]
    mods = imp["modules"]
    total = sum(m["self_us"] for m in mods)
    out += ["", f"`-X importtime -I -S` of the ideal shim (case h; median of 7 runs; exit {imp['exit']}): "
                f"{len(mods)} modules imported, "
                f"{total / 1000:.1f} ms of import time in all.", "",
            "Top-level imports by cumulative time (what each `import` in the shim / CLI costs):", "",
            "| module | cumulative ms | self ms |", "|---|---|---|"]
    tops = [m for m in mods if m["depth"] == 0]
    for m in sorted(tops, key=lambda m: -m["cum_us"])[:15]:
        out.append(f"| {m['name']} | {m['cum_us'] / 1000:.2f} | {m['self_us'] / 1000:.2f} |")
    out += ["", "Modules by self time (top 20):", "", "| module | self ms | cumulative ms |", "|---|---|---|"]
    for m in sorted(mods, key=lambda m: -m["self_us"])[:20]:
        out.append(f"| {m['name']} | {m['self_us'] / 1000:.2f} | {m['cum_us'] / 1000:.2f} |")
    floor = set(imp.get("floor_modules", []))
    extra = [m for m in mods if m["name"] not in floor]
    own = [m for m in extra if m["name"].startswith("pysendmail")]
    std = [m for m in extra if not m["name"].startswith("pysendmail")]
    out += ["", f"Beyond what `python -I -S -c pass` imports: {len(own)} pysendmail modules "
                f"({sum(m['self_us'] for m in own) / 1000:.2f} ms self time in all) and {len(std)} other modules "
                f"({sum(m['self_us'] for m in std) / 1000:.2f} ms: "
                + ", ".join(f"`{m['name']}` {m['self_us'] / 1000:.2f}" for m in sorted(std, key=lambda m: -m["self_us"]))
                + "). Each module also costs at exit (finalization) and in peak RSS."]
    names = {m["name"] for m in mods}
    bad = [n for n in FORBIDDEN if n in names]
    out += ["", "Heavy or banned modules on the submission path: "
            + (", ".join(f"`{n}`" for n in bad) if bad else "none") + "."]
    pk = [m["name"] for m in mods if m["name"].startswith("pysendmail")]
    out += ["", "pysendmail modules imported: " + ", ".join(f"`{n}`" for n in pk) + ".", ""]
    out += ["strace (counts exact; times inflated by strace):", "",
            "| command | syscalls | top syscalls by count | durability calls: n (strace s) |", "|---|---|---|---|"]
    for tag, s in data["strace"].items():
        top = ", ".join(f"{r['syscall']} {r['calls']}" for r in s["summary"]["rows"][:8])
        dur = ", ".join(f"{k} {v['n']} ({v['seconds'] * 1000:.1f} ms)" for k, v in sorted(s["durability"]["by_call"].items()))
        out.append(f"| {tag} | {s['summary']['total_calls']} | {top} | {dur} |")
    out.append("")
    out.append("Raw strace output: `strace-c-*.txt`, `strace-T-*.txt` in this results directory.")
    return "\n".join(out) + "\n"


class Hyperfine:
    """Phase `hyperfine`: public-tool cross-check of the submit cases (through sh)."""

    @staticmethod
    def run(ctx):
        pf, cases, msg = build_cases(ctx)
        pf.start()
        path = os.path.join(ctx.out, "hyperfine.json")
        try:
            cmds = []
            for c in cases:
                env = " ".join(f"{k}={v}" for k, v in c.env.items() if k == "PYSENDMAIL_ROOT")
                cmd = " ".join(_q(a) for a in c.argv) + (f" < {_q(c.stdin)}" if c.stdin else "")
                cmds.append(f"env {env} {cmd}" if env else cmd)
            # queues stay bounded: 3 + N runs per case (clean afterwards)
            subprocess.run(["hyperfine", "-w", str(ctx.warmup), "-r", str(ctx.rounds),
                            "-i", "--export-json", path, "--style", "basic"] + cmds,
                           timeout=ctx.max_seconds, capture_output=True)
        finally:
            pf.stop()
            for c in cases:
                if c.clean:
                    c.clean()
        data = json.load(open(path))
        return {"phase": "hyperfine", "labels": [c.key + " " + c.label for c in cases],
                "results": [{"command": r["command"], "mean_ms": r["mean"] * 1000, "median_ms": r["median"] * 1000,
                             "min_ms": r["min"] * 1000, "max_ms": r["max"] * 1000,
                             "user_ms": r["user"] * 1000, "system_ms": r["system"] * 1000}
                            for r in data["results"]]}

    @staticmethod
    def report(data):
        out = ["## hyperfine cross-check (through sh; hyperfine subtracts the shell's start-up)", "",
               "hyperfine runs each command's rounds back to back (not interleaved) and does not wait for "
               "case d's background delivery between runs.", "",
               "| case | median ms | mean ms | min-max | user+sys ms |", "|---|---|---|---|---|"]
        for label, r in zip(data["labels"], data["results"]):
            out.append(f"| {label} | {r['median_ms']:.1f} | {r['mean_ms']:.1f} | {r['min_ms']:.1f}-{r['max_ms']:.1f} "
                       f"| {r['user_ms']:.1f}+{r['system_ms']:.1f} |")
        return "\n".join(out) + "\n"


def _q(s):
    import shlex
    return shlex.quote(s)
