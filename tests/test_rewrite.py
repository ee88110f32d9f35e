"""Tests of Sendmail's address tokenizer, rewriting engine and maps
(pysendmail/config/tokenize.py, rewrite.py, maps.py)."""

import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pysendmail.config import maps as M  # noqa: E402
from pysendmail.config.rewrite import (  # noqa: E402
    EX_CONFIG, EX_DATAERR, EX_TEMPFAIL, LOOP, OK, Engine, resolve)
from pysendmail.config.tokenize import (  # noqa: E402
    detokenize, prescan, tokenize)

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                    "rewrite")
OPS = ".:%@!^/[]+"


# ---------------------------------------------------------------- helpers
def load_simple_cf():
    """Macros, classes and rulesets of the R/S/D/C lines in simple_rules.txt."""
    macros, classes, rulesets, names = {}, {}, {}, {}
    current = None
    with open(os.path.join(DATA, "simple_rules.txt")) as fh:
        for line in fh.read().splitlines():
            if not line or line.startswith("#"):
                continue
            kind, rest = line[0], line[1:]
            if kind == "D":
                macros[rest[0]] = rest[1:]
            elif kind == "C":
                classes.setdefault(rest[0], set()).update(rest[1:].split())
            elif kind == "S":
                if "=" in rest:
                    name, num = rest.split("=")
                    names[name.strip()] = current = int(num)
                else:
                    current = int(rest.strip())
                rulesets.setdefault(current, [])
            elif kind == "R":
                fields = [f for f in rest.split("\t") if f]
                rulesets[current].append((fields[0], fields[1]))
    return macros, classes, rulesets, names


def hosts_canonify(path=os.path.join(DATA, "hosts")):
    names, addrs = {}, {}
    with open(path) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 2:
                continue
            addrs.setdefault(parts[1 - 1].lower(), parts[1])
            for n in parts[1:]:
                names.setdefault(n.lower(), parts[1])

    def canonify(host):
        if host.startswith("[") and host.endswith("]"):
            a = host[1:-1]
            if a.lower().startswith("ipv6:"):
                a = a[5:]
            return addrs.get(a.lower())
        return names.get(host.lower().rstrip("."))
    return canonify


def simple_engine(trace=None):
    macros, classes, rulesets, names = load_simple_cf()
    maps = {"dequote": M.make_map("dequote", "dequote", [])}
    return Engine(rulesets, classes, macros, maps, names,
                  canonify=hosts_canonify(), trace=trace)


def bt_30(engine, text):
    """What -bt prints for "3,0 text" (without prescan's error lines)."""
    rest = text
    while True:
        scan = prescan(rest, OPS, comments=False, delim=",")
        if scan.tokens is not None:
            engine.run_rulesets([3, 0], scan.tokens)
        if scan.end >= len(rest):
            break
        rest = rest[scan.end + 1:]
        if not rest.strip():
            break


def expected_blocks():
    blocks, cur = [], None
    with open(os.path.join(DATA, "simple_30.txt")) as fh:
        for line in fh.read().split("\n"):
            if line.startswith("@@ "):
                cur = [line[3:], []]
                blocks.append(cur)
            elif cur is not None and line:
                cur[1].append(line)
    return blocks


# ------------------------------------------------------------ simple.cf
def test_simple_cf_3_0_replay():
    blocks = expected_blocks()
    assert len(blocks) == 89
    lines = []
    engine = simple_engine(trace=lines.append)
    good, bad = 0, []
    for addr, want in blocks:
        lines.clear()
        bt_30(engine, addr)
        if lines == want:
            good += 1
        else:
            bad.append((addr, want, list(lines)))
    print("simple.cf 3,0: %d/%d addresses match byte for byte" % (good, 89))
    assert not bad, bad[:3]
