"""Phase `whatif`: what each part of pysendmail's `-odq` submission costs, by removal.

The same submission (`sendmail -odq -t -i < msg`) through variants of the ideal
shim (target.IdealShim: `#!python -IS`, path baked in), each of which patches
one thing out at run time before calling pysendmail.cli.main.main, all timed
interleaved with Postfix's sendmail and `python -IS -c pass`:

  full        the ideal shim as is
  os_exit     main(), then os._exit(status): no interpreter finalization
  no_fsync    os.fsync replaced by a no-op (what the 3 fsyncs cost; not durable!)
  no_log      pysendmail.log.Logger.log replaced by a no-op
  no_alias    `-n` added (no alias / .forward expansion at submission)
  lean        os_exit + no_fsync + no_log together
  import_only imports pysendmail.cli.main and pysendmail.submission.submit, then exits

The difference of a variant's median from `full` is what that part costs (the
variants share one machine state, round by round). A patch whose target is
gone (the code changed) is reported, not silently skipped. Durability is off
in no_fsync and lean: they are measurements, not proposals.
"""
import os

import proc_time
from postfix_private import PrivatePostfix
from target import BASE_ENV, Instance

_TRY = "try:\n    {0}\nexcept (ImportError, AttributeError):\n    sys.stderr.write('whatif: patch not applied: {1}\\n'); sys.exit(99)\n"
PATCH_FSYNC = _TRY.format("import os; os.fsync = lambda fd: None", "os.fsync")
PATCH_LOG = _TRY.format("from pysendmail import log as _l; _l.Logger.log; _l.Logger.log = lambda *a, **k: None",
                        "pysendmail.log.Logger.log")
MAIN = "from pysendmail.cli.main import main\n"
RUN = "sys.exit(main(sys.argv))\n"
RUN_EXIT = "import os\nrc = main(sys.argv)\nsys.stdout.flush(); sys.stderr.flush()\nos._exit(rc or 0)\n"

VARIANTS = [
    ("full", MAIN + RUN, []),
    ("os_exit", MAIN + RUN_EXIT, []),
    ("no_fsync", PATCH_FSYNC + MAIN + RUN, []),
    ("no_log", PATCH_LOG + MAIN + RUN, []),
    ("no_alias", MAIN + RUN, ["-n"]),
    ("lean", PATCH_FSYNC + PATCH_LOG + MAIN + RUN_EXIT, []),
    ("import_only", MAIN + "from pysendmail.cli import submit\n", None),
]


def build(ctx):
    venv = ctx.venv
    sp = venv.site_packages()
    msg = os.path.join(ctx.work, "msg2k.txt")
    if not os.path.exists(msg):
        import mkmsg
        with open(msg, "wb") as f:
            f.write(mkmsg.make_message(2048, to=ctx.rcpt))
    pf = PrivatePostfix(os.path.join(ctx.work, "postfix"))
    cases = [proc_time.Case("a", "postfix sendmail -t -i (reference)", pf.sendmail_argv("-t", "-i"), msg, BASE_ENV,
                            count=pf.maildrop_count, clean=pf.maildrop_clean),
             proc_time.Case("floor", "python -IS -c pass", [venv.python, "-IS", "-c", "pass"], None, BASE_ENV)]
    for name, body, extra in VARIANTS:
        d = os.path.join(ctx.work, "whatif", name)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "sendmail")          # the CLI dispatches on its basename
        with open(path, "w") as f:
            f.write(f"#!{venv.python} -IS\nimport sys\nsys.path.append({sp!r})\n" + body)
        os.chmod(path, 0o755)
        inst = Instance(venv, os.path.join(ctx.work, "roots", "whatif-" + name))
        if extra is None:
            cases.append(proc_time.Case(name, name, [path], None, inst.env))
        else:
            cases.append(proc_time.Case(name, name, [path] + extra + ["-odq", "-t", "-i"], msg, inst.env,
                                        count=inst.queued, clean=inst.clean))
    return pf, cases


def run(ctx):
    pf, cases = build(ctx)
    pf.start()
    try:
        bad = []
        for c in cases:
            code = proc_time.spawn_wait(c.argv, c.env, c.stdin)[1]
            if code != 0:
                bad.append((c.key, code))
                ctx.log(f"whatif: {c.key} exits {code} (99 = patch target gone); left out")
        kept = [c for c in cases if c.key not in dict(bad)]
        secs = proc_time.run_interleaved(kept, rounds=ctx.rounds, warmup=ctx.warmup, rss_runs=0,
                                         max_seconds=ctx.max_seconds, log=ctx.log)
    finally:
        pf.stop()
    by = {c.key: c for c in kept}
    refs = {"postfix": by.get("a"), "full": by.get("full"), "floor": by.get("floor")}
    return {"phase": "whatif", "seconds": round(secs, 1), "rounds": ctx.rounds,
            "results": [proc_time.summary(c, refs) for c in kept], "left_out": bad}


def report(data):
    res = {r["key"]: r for r in data["results"]}
    full = res.get("full")
    floor = res.get("floor")
    out = ["## What-if: cost of each part of `sendmail -odq -t -i` (by removal)", "",
           f"{data['rounds']} interleaved rounds; each variant is the ideal shim with one thing patched out "
           "(see lib/phase_whatif.py). `vs full` = median over rounds of (variant - full), paired: negative = "
           "what the removed part costs. `over floor` = the same against `python -IS -c pass`.", "",
           "| variant | wall ms median | min | CPU user+sys ms | vs full (ms) | over floor (ms) | vs postfix (paired) | effect |",
           "|---|---|---|---|---|---|---|---|"]
    for r in data["results"]:
        m = r["wall_ms_median"]
        df = (r["ratios"].get("full") or {}).get("diff_ms")
        dfl = (r["ratios"].get("floor") or {}).get("diff_ms")
        d_full = "" if df is None or r["key"] in ("a", "full") else "%+.2f" % df
        d_floor = "" if dfl is None or r["key"] == "a" else "%+.2f" % dfl
        vp = (r["ratios"].get("postfix") or {}).get("paired")
        eff = "-" if r["effects"] is None else f"{r['effects']}/{r['runs']}"
        out.append(f"| {r['key']} | {m:.2f} | {r['wall_ms_min']:.2f} | {r['user_ms_median']:.1f}+"
                   f"{r['sys_ms_median']:.1f} | {d_full} | {d_floor} | "
                   f"{'reference' if r['key'] == 'a' else '%.2fx' % vp if vp else '-'} | {eff} |")
    for k, code in data["left_out"]:
        out.append(f"| {k} | left out: exit {code} | | | | | | |")
    if full and floor and res.get("a"):
        fl = floor["ratios"]["postfix"]["paired"]
        over = full["ratios"]["floor"]["diff_ms"]
        budget = res["a"]["wall_ms_median"] * (1.25 - fl)
        out += ["", f"Budget: the bare interpreter is already {fl:.2f}x postfix (paired), so 1.25x postfix "
                    f"({res['a']['wall_ms_median']:.2f} ms median) leaves about {budget:.2f} ms above it; `full` "
                    f"uses {over:.2f} ms above it."]
    return "\n".join(out) + "\n"
