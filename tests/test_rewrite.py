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
                  canonify=hosts_canonify(), trace=trace, spacesub=".")


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


def test_simple_cf_infinite_loop_in_ruleset_4():
    # /parse "user@example.com, other@example.com" in bt/simple.out
    lines = []
    engine = simple_engine(trace=lines.append)
    toks = "user % example . com , other < @ example . com >".split()
    out, status = engine.rewrite(4, toks)
    assert lines == [
        "4                  input: user % example . com , other < @ example . com >",
        "Infinite loop in ruleset 4, rule 2",
        "4                returns: user % example . com , other @ example . com",
    ]
    assert status == LOOP
    assert engine.messages == [("554 5.3.5", "Infinite loop in ruleset 4, rule 2")]


def test_simple_cf_resolve():
    engine = simple_engine()
    out, _ = engine.run_rulesets([3, 0], tokenize("user@example.com", OPS))
    assert resolve(out) == ("smtp", "example.com", "user<@example.com>")
    out, _ = engine.run_rulesets([3, 0], tokenize("postmaster", OPS))
    assert resolve(out) == ("local", None, "postmaster")
    out, _ = engine.run_rulesets([3, 0], tokenize(".user", OPS))
    assert resolve(out, spacesub=".") == ("error", "5.1.3",
                                          '"553 Cannot parse ".user')
    assert resolve(["user"]) is None


# -------------------------------------------------------------- tokenizer
@pytest.mark.parametrize("text,comments,tokens,errors", [
    ("user@example.com", True, "user @ example . com", []),
    ("John Doe <user@example.com>", True, "John Doe < user @ example . com >", []),
    ('"Doe, John" <u@x>', True, ['"Doe, John"', "<", "u", "@", "x", ">"], []),
    ('"john\\"doe"@x', True, '"john\\"doe" @ x', []),
    ('"unterminated@x', True, '"unterminated@x"', ["553 Unbalanced '\"'"]),
    ("user(comment)@x", True, "user @ x", []),
    ("user(comment)@x", False, "user ( comment ) @ x", []),
    ("(nested (c) here) u@x", True, "u @ x", []),
    ("u@x (unclosed", True, "u @ x", ["553 Unbalanced '('"]),
    ("u)@x", True, "u @ x", ["553 Unbalanced ')'"]),
    ("us\\er@x", True, "us\\er @ x", []),
    ("\\user", True, "\\user", []),
    ("a\\!b", True, "a ! b", []),
    ('"a\\!b"', True, '"a\\!b"', []),
    ("<u@x", True, "< u @ x >", ["553 Unbalanced '<'"]),
    ("<u@x>>", True, "< u @ x >", ["553 Unbalanced '>'"]),
    ("<>", True, "< >", []),
    ("user<>@x", True, "user < > @ x", []),
    ("u@[192.0.2.1]", True, "u @ [ 192 . 0 . 2 . 1 ]", []),
    ("u@[ 127.0.0.1 ]", True, "u @ [ 127 . 0 . 0 . 1 ]", []),
    ("u@[IPv6:::1]", True, "u @ [ IPv6 : : : 1 ]", []),
    ("a!b%c^d/e+f", True, "a ! b % c ^ d / e + f", []),
    ("user=value@x", True, "user=value @ x", []),
    ("u$er@x", True, "u$er @ x", []),
    ("group: a@x, b@x;", True, "group : a @ x , b @ x ;", []),
    ("|/usr/bin/procmail", True, "| / usr / bin / procmail", []),
    ("user@ex ample.com", True, "user @ ex ample . com", []),
    ('a"b"c', True, 'a "b" c', []),
    ('""', True, '""', []),
    ("", True, "", []),
])
def test_tokenizer_golden(text, comments, tokens, errors):
    scan = prescan(text, OPS, comments=comments)
    if isinstance(tokens, str):
        tokens = tokens.split(" ") if tokens else []
    assert scan.tokens == tokens
    assert scan.errors == errors


def test_tokenizer_operator_chars_option():
    assert tokenize("user=value@x", OPS + "=") == ["user", "=", "value", "@", "x"]
    # the pre-8.7 default has no % ! /
    assert tokenize("a%b!c", ".:@[]") == ["a%b!c"]


def test_tokenizer_delimiter_and_limits():
    scan = prescan("a@x, b@y", OPS, delim=",")
    assert scan.tokens == ["a", "@", "x"] and scan.end == 3
    scan = prescan("<a@x, b@y>", OPS, delim=",")
    assert scan.errors == ["553 Unbalanced '<'"]
    assert scan.tokens == ["<", "a", "@", "x", ">"]
    scan = prescan("<@r:a@x, b>", OPS, delim=",")        # route syntax
    assert scan.errors == [] and scan.tokens[-1] == ">"
    # 1,199 one-character tokens need more than the 1,256-byte buffer
    scan = prescan(".".join(["a"] * 600), OPS)
    assert scan.tokens is None and scan.errors == ["553 5.1.1 Address too long"]
    assert len(prescan(".".join(["a"] * 300), OPS).tokens) == 599
    scan = prescan("x" * 300, OPS)
    assert scan.tokens is None and scan.errors == ["553 5.1.0 prescan: token too long"]
    assert tokenize(".".join(["a"] * 600), OPS) == []


def test_detokenize():
    assert detokenize("user < @ example . com >".split()) == "user<@example.com>"
    assert detokenize(["ex", "ample", ".", "com"]) == "ex ample.com"
    assert detokenize(["ex", "ample", ".", "com"], ".") == "ex.ample.com"
    assert detokenize(['"553 x "', ".", "u"]) == '"553 x ".u'
    assert detokenize(["a", "b"], "") == "ab"
    assert detokenize([]) == ""


# ------------------------------------------------------------------ engine
def make(rules, classes=None, macros=None, maps=None, names=None, **kw):
    """An engine from {ruleset: ["LHS<TAB>RHS", ...]}."""
    rulesets = {rs: [tuple(r.split("\t")) for r in rs_rules]
                for rs, rs_rules in rules.items()}
    return Engine(rulesets, classes or {}, macros or {}, maps or {},
                  names or {}, **kw)


def rw(engine, rs, text):
    out, status = engine.rewrite(rs, tokenize(text, OPS))
    return " ".join(out), status


@pytest.mark.parametrize("lhs,text,result", [
    ("$*", "", "< >"),
    ("$*", "a b", "< a b >"),
    ("$+", "", None),
    ("$+", "a . b", "< a . b >"),
    ("$-", "a", "< a >"),
    ("$-", "a . b", None),
    ("$@", "", ""),
    ("$@", "a", None),
    ("$* @ $*", "a @ b @ c", "< a > < b @ c >"),   # $* binds as few as it can
    ("$* @ $* @ $*", "a @ b @ c", "< a > < b > < c >"),
    ("$+ @ $+", "a @ b @ c", "< a > < b @ c >"),
    ("$- . $-", "a . b", "< a > < b >"),
    ("$* . $+", "a . b . c", "< a > < b . c >"),
    ("$+ . $-", "a . b . c", "< a . b > < c >"),  # backtracking
    ("USER", "user", ""),                          # literals: case-insensitive
    ("$=w", "mail", "< mail >"),
    ("$=w", "MAIL", "< MAIL >"),
    ("$=w", "mail . example . com", "< mail . example . com >"),
    ("$* @ $=w", "u @ mail . example . com", "< u > < mail . example . com >"),
    ("$=w", "other", None),
    ("$~w", "other", "< other >"),
    ("$~w", "mail", None),
    ("$~w", "a b", None),
    ("$* $=w $*", "x mail y", "< x > < mail > < y >"),
])
def test_lhs_operators(lhs, text, result):
    n = lhs.count("$") - lhs.count("$@")
    rhs = "$@ " + " ".join("< $%d >" % i for i in range(1, n + 1)) + " !"
    engine = make({1: [lhs + "\t" + rhs]},
                  classes={"w": {"mail", "mail.example.com"}})
    out, status = rw(engine, 1, text)
    assert status == OK
    if result is None:
        assert out == " ".join(tokenize(text, OPS))
    else:
        assert out == (result + " !").strip()


def test_lhs_long_class_name_and_deferred_macro():
    engine = make({1: ["$={VirtHost}\t$@ virtual", "$&x\t$@ macro x",
                       "$*\t$@ none"]},
                  classes={"VirtHost": {"v.example"}}, macros={"x": "a.b"})
    assert rw(engine, 1, "V.Example") == ("virtual", OK)
    assert rw(engine, 1, "a . b") == ("macro x", OK)
    engine.macros["x"] = "c"
    assert rw(engine, 1, "a . b") == ("none", OK)
    assert rw(engine, 1, "c") == ("macro x", OK)


def test_rhs_forms():
    engine = make({
        1: ["$- @ $+\t$2 ! $1",            # applied again and again? no:
            "$* ! $*\t$: $2 < $1 >",        # $: applies once
            "$* < $* >\t$@ [ $1 ] $2"],     # $@ returns
        2: ["$*\t$: < $1 >", "< $* >\t$@ second $1"],
        3: ["$+\t$: $&x $1 $j"],
    }, macros={"x": "de ferred", "j": "mail.example.com"})
    assert rw(engine, 1, "u@h") == ("[ u ] h", OK)
    assert rw(engine, 2, "a") == ("second a", OK)
    engine.macros["j"] = "changed"                # $j was expanded at compile
    assert rw(engine, 3, "u") == ("de ferred u mail . example . com", OK)


def test_rhs_subroutine_calls():
    trace = []
    engine = make({
        0: ["$*\t$: $>5 $1", "$*\t$: x $>sub $1 $>5 y"],
        5: ["$* a\t$1 b"],
        6: [],
        7: ["$*\t$@ $>6 z $1"],
        8: ["$*\t$@ $>nosuch $1"],
    }, names={"sub": 5}, trace=trace.append)
    assert rw(engine, 0, "a") == ("x b y", OK)
    # a named ruleset is traced by its name; the calls of one RHS run
    # right to left, each on the tail after it
    assert trace == ["0                  input: a",
                     "sub                input: a",
                     "sub              returns: b",
                     "sub                input: y",
                     "sub              returns: y",
                     "sub                input: b y",
                     "sub              returns: b y",
                     "0                returns: x b y"]
    trace.clear()
    assert rw(engine, 7, "q") == ("z q", OK)       # empty ruleset: dropped
    assert [t for t in trace if t.startswith("6")] == []
    assert rw(engine, 8, "q") == ("$> nosuch q", EX_CONFIG)
    assert engine.messages == [("554 5.3.5", "Unknown ruleset nosuch")]


def test_named_ruleset_trace_is_truncated_to_16():
    trace = []
    engine = make({9: ["$*\t$@ ok"]}, names={"AVeryLongRulesetName": 9},
                  trace=trace.append)
    assert engine.rewrite("AVeryLongRulesetName", ["x"])[0] == ["ok"]
    assert trace == ["AVeryLongRuleset   input: x",
                     "AVeryLongRuleset returns: ok"]


def test_host_canonicalisation():
    engine = make({3: ["$* < @ $+ > $*\t$: $1 < @ $[ $2 $] > $3"],
                   4: ["$* < @ $* >\t$@ $[ $2 $: unknown $1 $]"]},
                  canonify=hosts_canonify())
    assert rw(engine, 3, "u<@www>") == ("u < @ www . example . org . >", OK)
    assert rw(engine, 3, "u<@nosuchhost>x") == ("u < @ nosuchhost > x", OK)
    assert rw(engine, 4, "u<@nosuchhost>") == ("unknown u", OK)
    assert rw(engine, 4, "u<@localhost>") == ("mail . example . com .", OK)
    e2 = make({3: ["$*\t$@ $[ $1 $]"]}, canonify=hosts_canonify())
    assert rw(e2, 3, "www") == ("www . example . org .", OK)
    assert rw(e2, 3, "[192.0.2.10]") == ("mailhub . example . net .", OK)
    assert rw(e2, 3, "[300.1.1.1]") == ("[ 300 . 1 . 1 . 1 ]", OK)
    e3 = make({3: ["$*\t$@ $[ $1 $]"]})          # no canonify: unchanged
    assert rw(e3, 3, "www") == ("www", OK)


class Table(M.Map):
    def __init__(self, table, **flags):
        super().__init__("t", flags)
        self.table = table

    def get(self, key, args):
        if key == "tempfail":
            raise M.TempFail(key)
        return self.table.get(key)


def test_map_lookup_in_rhs():
    maps = {"t": Table({"k": "v %1 %0 %2 %% %x", "empty": "",
                        "two": "a b"})}
    engine = make({1: ["$*\t$@ $(t $1 $@ A1 $@ A2 $: dflt $1 $)"],
                   2: ["$*\t$@ [ $(t $1 $) ]"],
                   3: ["$*\t$@ $(nomap $1 $: d $)"]}, maps=maps)
    assert rw(engine, 1, "K") == ("v A1 K A2 % % x", OK)
    assert rw(engine, 1, "empty") == ("", OK)
    assert rw(engine, 1, "two") == ("a b", OK)
    assert rw(engine, 1, "x") == ("dflt x", OK)
    assert rw(engine, 2, "x . y") == ("[ x . y ]", OK)
    assert rw(engine, 2, "tempfail") == ("[ tempfail ]", EX_TEMPFAIL)
    maps["t"].tempfail_append = ".TMP"
    assert rw(engine, 2, "tempfail") == ("[ tempfail . TMP ]", EX_TEMPFAIL)
    assert rw(engine, 3, "x") == ("d", OK)
    assert engine.messages == [("554 5.3.0", "rewrite: map nomap not found")]
    # quotes are stripped from the key unless the map keeps them
    assert rw(engine, 2, '"k"') == ("[ v k % % x ]", OK)
    maps["t"].keep_quotes = True
    assert rw(engine, 2, '"k"') == ('[ "k" ]', OK)


def test_loop_recursion_and_length_limits():
    trace = []
    engine = make({1: ["$*\t$1"], 2: ["$*\t$: $>2 $1"],
                   3: ["$*\t$1 $1"], 4: ["$*\t$2"]}, trace=trace.append)
    assert rw(engine, 1, "a") == ("a", LOOP)
    assert trace[-2:] == ["Infinite loop in ruleset 1, rule 1",
                          "1                returns: a"]
    trace.clear()
    out, status = engine.rewrite(2, ["a"])
    assert status == EX_CONFIG
    assert ("554 5.3.0", "rewrite: excessive recursion (max 50), ruleset 2") \
        in engine.messages
    assert sum(1 for t in trace if t.endswith("input: a")) == 52
    out, status = engine.rewrite(3, ["a"])
    assert status == EX_DATAERR
    assert engine.messages == [("554 5.3.0", "rewrite: expansion too long")]
    assert len(out) <= 1000
    out, status = engine.rewrite(4, ["a"])
    assert status == EX_CONFIG
    assert engine.messages == [
        ("554 5.3.5", "rewrite: ruleset 4: replacement $2 out of bounds")]
    assert engine.rewrite("nosuch", ["a"]) == (["a"], EX_CONFIG)


def test_canonical_result_stops_ruleset():
    engine = make({0: ["$+\t$# local $: $1", "$*\tnever"]})
    out, status = engine.rewrite(0, ["$#"])    # typed "$#" is no meta token
    assert " ".join(out) == "$# local $: $#"
    assert resolve(out) == ("local", None, "$#")
    out, _ = engine.rewrite(0, ["u", "@", "h"])
    assert resolve(out) == ("local", None, "u@h")
