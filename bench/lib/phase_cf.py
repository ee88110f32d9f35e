"""Phase `cf` (issue 3): sendmail.cf parsing and rewriting speed, in the bench venv.

- parse: `pysendmail.config.cf.load` of Debian's 1,941-line cf in a fresh interpreter,
  cold (no cache: lark imported, grammar built, file parsed, cache written) and from
  the cache (lark never imported), each as the whole process's wall time, median of
  ROUNDS runs, next to `python -I -S -c pass` as the floor;
- rewrite: addresses per second through `3,0` of that cf with the rewriting engine,
  in one process (after a warm-up), over a fixed list of addresses.
"""
import os
import shutil
import statistics
import subprocess
import tempfile
import time

ROUNDS = 15
CF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "debian.cf")

LOAD = ("import sys; sys.path.insert(0, %(site)r)\n"
        "from pysendmail.config import cf\n"
        "c = cf.load(%(cf)r, cache_dir=%(cache)r)\n"
        "assert c.rulesets and ('lark' in sys.modules) == %(cold)r, sorted(sys.modules)\n")

REWRITE = r"""
import sys, time
sys.path.insert(0, %(site)r)
from pysendmail.config import cf
from pysendmail.config.rewrite import Engine
from pysendmail.config.tokenize import tokenize
c = cf.load(%(cf)r, cache_dir=%(cache)r)
rulesets = {n: [(r.lhs, r.rhs) for r in rs.rules] for n, rs in c.rulesets.items()}
classes = {k: set(v) for k, v in c.classes.items()}
classes.setdefault("w", set()).update({"mail", "mail.example.com", "localhost", "[127.0.0.1]"})
macros = dict(c.macros, w="mail", j="mail.example.com", m="example.com")
ops = c.options.get("OperatorChars", ".:%%@!^/[]+")
eng = Engine(rulesets, classes, macros, {}, c.ruleset_names, operator_chars=ops, spacesub=".")
addrs = ["user@example.com", "root", "John Doe <john@example.org>", "user%%host@relay.example.net",
         "a!b!c", "<@route.example:u@example.com>", "postmaster", "\"q u\"@example.com",
         "user@[192.0.2.1]", "first.last@sub.domain.example.co.uk"]
for a in addrs:
    eng.run_rulesets([3, 0], tokenize(a, ops))
n = 0
t0 = time.perf_counter()
while time.perf_counter() - t0 < 3 and n < 200000:
    for a in addrs:
        eng.run_rulesets([3, 0], tokenize(a, ops))
    n += len(addrs)
print(n / (time.perf_counter() - t0))
"""


def _wall(argv):
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, timeout=60)
    return (time.perf_counter() - t0) * 1000


def run(ctx):
    py = ctx.venv.python
    site = ctx.venv.site_packages()
    cache = tempfile.mkdtemp(prefix="bench-cf-")
    try:
        cold, warm, floor = [], [], []
        for _ in range(ROUNDS):
            shutil.rmtree(cache)
            os.makedirs(cache)
            cold.append(_wall([py, "-I", "-S", "-c", LOAD % dict(site=site, cf=CF, cache=cache, cold=True)]))
            warm.append(_wall([py, "-I", "-S", "-c", LOAD % dict(site=site, cf=CF, cache=cache, cold=False)]))
            floor.append(_wall([py, "-I", "-S", "-c", "pass"]))
        out = subprocess.run([py, "-I", "-S", "-c", REWRITE % dict(site=site, cf=CF, cache=cache)],
                             check=True, capture_output=True, text=True, timeout=120).stdout
        rate = float(out.strip().splitlines()[-1])
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    data = {"phase": "cf", "cf_lines": sum(1 for _ in open(CF, "rb")),
            "cold_ms": statistics.median(cold), "cached_ms": statistics.median(warm),
            "floor_ms": statistics.median(floor), "rewrite_per_s": rate, "rounds": ROUNDS}
    ctx.log("cf: cold %(cold_ms).1f ms, cached %(cached_ms).1f ms, floor %(floor_ms).1f ms, "
            "3,0: %(rewrite_per_s).0f addresses/s" % data)
    return data


def report(data):
    return ("## cf: sendmail.cf parsing and rewriting (issue 3)\n\n"
            "Debian's cf (%(cf_lines)d lines), whole process, median of %(rounds)d runs:\n\n"
            "| path | wall ms |\n|---|---|\n"
            "| `python -I -S -c pass` (floor) | %(floor_ms).1f |\n"
            "| cf.load, cold (lark, grammar, parse, cache written) | %(cold_ms).1f |\n"
            "| cf.load from the cache (no lark) | %(cached_ms).1f |\n\n"
            "Rewriting throughput through `3,0`: **%(rewrite_per_s).0f addresses/s** "
            "(one process, 10 varied addresses, 3 s).\n" % data)
