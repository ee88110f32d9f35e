"""The sendmail.cf parser (pysendmail/config/cf.py, sendmail_cf.lark, cf_model.py):
the three reference cfs, golden lines, warnings, errors with file:line:column and a caret,
exit statuses, and the cache (a hit does not import lark; a corrupted cache is rebuilt)."""
import marshal
import os
import subprocess
import sys

import pytest

from pysendmail.config import cf, cf_cache
from pysendmail.errors import ConfigError

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "cf")
CFS = ("simple", "debian", "nullclient")


def cf_path(name):
    return os.path.join(DATA, name + ".cf")


def physical_lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().split("\n")


def count_independently(path):
    """Counts from the raw lines, without the parser: S, R, M, K, P, H lines, class names."""
    lines = physical_lines(path)
    counts = {k: sum(1 for line in lines if line[:1] == k) for k in "SRMKPH"}
    classes = set()
    for line in lines:
        if line[:1] in ("C", "F"):
            classes.add(line[2:line.index("}")] if line[1] == "{" else line[1])
        elif line[:1] == "T":
            classes.add("t")
    counts["classes"] = classes
    return counts


@pytest.mark.parametrize("name", CFS)
def test_reference_cfs_parse_without_warnings_and_counts_match(name):
    path = cf_path(name)
    seen = []
    config = cf.parse(path, warn=seen.append)
    assert seen == [] and config.warnings == []
    counts = count_independently(path)
    assert len(config.rulesets) == counts["S"]      # no cf here defines a ruleset twice
    assert sum(len(rs.rules) for rs in config.rulesets.values()) == counts["R"]
    assert len(config.mailers) == counts["M"]
    assert len(config.maps) == counts["K"]
    assert len(config.precedences) == counts["P"]
    assert len(config.headers) == counts["H"]
    assert set(config.classes) == counts["classes"]
    assert config.version == "10/Berkeley"
    # every rule keeps its file and the line of its R
    lines = physical_lines(path)
    for rs in config.rulesets.values():
        for rule in rs.rules:
            assert rule.file == path and lines[rule.line - 1].startswith("R")


def test_expected_sizes():
    sizes = {name: cf.parse(cf_path(name)) for name in CFS}
    assert [len(sizes[n].rulesets) for n in CFS] == [12, 67, 50]
    assert [sum(len(r.rules) for r in sizes[n].rulesets.values()) for n in CFS] == [31, 550, 317]


def test_simple_cf_golden():
    config = cf.parse(cf_path("simple"))
    assert config.macros["w"] == "mail" and config.macros["j"] == "mail.example.com"
    # raw, as munchstring() leaves it: the space after the macro name is part of the value
    assert config.macros["l"] == " From $g $d"
    assert config.macros["e"] == "$j Sendmail $v; $b"
    assert config.classes["w"] == ["localhost", "mail", "mail.example.com", "[127.0.0.1]"]
    assert config.classes["O"] == ["@", "%", "!"]
    assert [tuple(c) for c in config.class_files] == [
        ("V", "/nonexistent/heldout-vip-list", True, "%s")]
    assert config.options["OperatorChars"] == ".:%@!^/[]+"
    assert config.options["SevenBitInput"] == "False"
    assert config.origins[("O", "BlankSub")] == (cf_path("simple"), 28)

    rs3 = config.rulesets[3]
    assert rs3.name is None and rs3.line == 52
    first = rs3.rules[0]
    assert (first.lhs, first.rhs, first.comment, first.line) == (
        "$@", "$@ <@>", "null address", 53)
    rs0 = config.ruleset("0")
    literal = rs0.rules[3]
    assert literal.lhs == "$* < @ [ $+ ] > $*"
    assert literal.rhs == "$#smtp $@ [ $2 ] $: $1 < @ [ $2 ] > $3"
    assert literal.comment == "IP literal"
    last = rs0.rules[-1]
    assert last.rhs == '$#error $@ 5.1.3 $: "553 Cannot parse " $1' and last.comment == ""
    assert config.rulesets[5].rules[0].rhs == "$: $(dequote $1 $)"
    assert config.rulesets[1].rules == [] and config.rulesets[40].rules == []

    local = config.mailers["local"]
    assert local.path == "/usr/lib/sm.bin/mail.local"
    assert local.flags == "lsDFMAw5:/|@qPSXfmnz9"
    assert local.argv == "mail.local -l"
    assert local.eol == "\r\n"     # no E= and no $u in A=: makemailer() defaults to CRLF
    assert config.mailers["prog"].eol == "\n"     # A=sh -c $u
    assert local.equate["S"] == "10/30" and local.equate["R"] == "20/40"
    assert local.equate["T"] == "DNS/RFC822/X-Unix"
    assert config.mailers["prog"].equate["D"] == "$z:/"
    smtp = config.mailers["smtp"]
    assert smtp.eol == "\r\n" and smtp.equate["E"] == "\\r\\n" and smtp.equate["L"] == "990"
    assert list(config.mailers) == ["local", "prog", "smtp", "relay"]

    ret = config.headers[0]
    assert tuple(ret) == ("P", "Return-Path", "<$g>", None) and ret.line == 38
    assert tuple(config.headers[1])[:2] == (None, "Received")
    dequote = config.maps["dequote"]
    assert (dequote.name, dequote.mclass, dequote.args, dequote.line) == (
        "dequote", "dequote", "", 35)


def test_debian_cf_golden():
    path = cf_path("debian")
    config = cf.parse(path)
    names = config.ruleset_names
    # numbered names as given; unnumbered ones from 199 down, in the order they appear
    assert (names["canonify"], names["parse"], names["final"], names["localaddr"]) == (3, 0, 4, 5)
    assert (names["Canonify2"], names["Recurse"], names["ParseLocal"]) == (96, 97, 98)
    assert (names["Parse0"], names["Parse1"], names["Local_localaddr"]) == (199, 198, 197)
    assert names["MasqRelay"] == 143 and min(n for n in names.values() if n > 99) == 143
    assert config.rulesets[3].name == "canonify" and config.ruleset("Parse0").number == 199
    assert config.ruleset("NoSuchSet") is None

    # a rule continued on the next line (TABs start line 855)
    rule = [r for rs in config.rulesets.values() for r in rs.rules if r.line == 854]
    assert len(rule) == 1 and config.ruleset("Parse0").rules.index(rule[0]) == 24
    assert rule[0].lhs == "$* $=O $* < @ *LOCAL* >"
    assert rule[0].rhs == "$@ $>Parse0 $>canonify $1 $2 $3"
    assert rule[0].comment == "...@*LOCAL* -> ..."

    received = [h for h in config.headers if h.name == "Received"][0]
    assert received.line == 643 and received.flags is None
    assert received.value.startswith("$?sfrom $s $.$?_($?s$|from $.$_)\n\t$.$?{auth_type}")
    assert received.value.endswith("\n\tfor $u; $|;\n\t$.$b")
    assert [tuple(h)[:2] for h in config.headers[:3]] == [
        ("P", "Return-Path"), (None, "Received"), ("D", "Resent-Date")]

    local = config.mailers["local"]
    assert local.line == 1841
    assert local.equate == {
        "P": "/usr/sbin/sensible-mda", "F": "lsDFMAw5:/|@qPn9S", "S": "EnvFromL/HdrFromL",
        "R": "EnvToL/HdrToL", "T": "DNS/RFC822/X-Unix",
        "A": "sensible-mda $g $u $h ${client_addr}"}
    assert config.mailers["relay"].equate["R"] == "MasqSMTP"
    assert config.mailers["relay"].maxsize is None

    assert config.macros["S"] == "" and config.macros["Z"] == "8.17.1.9/Debian-2+deb12u2"
    assert config.classes["Accept"] == ["OK", "RELAY"]
    assert config.classes["."] == ["."] and config.classes["["] == ["["]
    assert [tuple(c) for c in config.class_files] == [
        ("w", "/etc/mail/local-host-names", False, "%[^#]"),
        ("R", "/etc/mail/relay-domains", True, "%[^#]")]
    access = config.maps["access"]
    assert (access.mclass, access.args, access.line) == ("hash", "-T<TMPF> /etc/mail/access", 163)
    assert config.maps["resolve"].args == "-a<OKR> -T<TEMP>"
    assert config.precedences == {"first-class": 0, "special-delivery": 100, "list": -30,
                                  "bulk": -60, "junk": -100}
    assert config.trusted_users == ["root", "daemon", "uucp"] == config.classes["t"]
    dpo = [v for n, v, f, line in config.option_list if n == "DaemonPortOptions"]
    assert dpo == ["Family=inet,  Name=MTA-v4, Port=smtp, Addr=127.0.0.1",
                   "Family=inet,  Name=MSP-v4, Port=submission, M=Ea, Addr=127.0.0.1"]
    assert config.options["DaemonPortOptions"] == dpo[-1]
    assert config.options["Timeout.queuereturn"] == "5d"
    assert config.options["MustQuoteChars"] == ".'"


SYNTHETIC = """\
V10/Berkeley
# a comment line
  continued comment
D{daemon_flags}cc
Dxvalue  # an on-line comment
Dya\\#b $#c
F{x} -o /etc/mail/x %s
Fw|/bin/echo a b
OL9
Odbackground
OIWorkAroundBrokenAAAA
OMzmacroval
O SevenBitInput
O  AliasFile = /etc/aliases
HSubject: $>+CheckSubject
HX-Check: $>CheckX
H?${ClientIP}?X-IP: ${client_addr}
H?P?Return-Path: <$g>
Sfoo
R$*\t$: $1\t\tjust a comment
Sbar=12
R$+\t$#local $: $1
S7
R$*\t\t$@ $1
Mtest, P=/bin/true, F=lsD, S=Env/Hdr, R=foo, M=100000, A=true $u,
\tT=X-Unix, W=10m
Qq1, P=/var/spool/mqueue/q1, F=f, I=1m
Xmilter1, S=local:/run/m.sock, F=T, T=S:1m;R:2m;E:5m
Pnormal=0
Troot smmsp
ETZ=Europe/Paris
ELANG
Lload average line
Glookup class
Kmymap hash -o /etc/mail/mymap
"""


def write(tmp_path, text, name="test.cf"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_synthetic_line_forms(tmp_path):
    path = write(tmp_path, SYNTHETIC)
    seen = []
    config = cf.parse(path, warn=seen.append)
    assert seen == []
    assert config.macros["daemon_flags"] == "cc"
    assert config.macros["x"] == "value"
    assert config.macros["y"] == "a#b $#c"
    assert config.macros["z"] == "macroval"
    assert [tuple(c) for c in config.class_files] == [
        ("x", "/etc/mail/x", True, "%s"), ("w", "|/bin/echo a b", False, "%s")]
    assert config.options["LogLevel"] == "9"
    assert config.options["DeliveryMode"] == "background"
    assert config.options["ResolverOptions"] == "WorkAroundBrokenAAAA"
    assert config.options["SevenBitInput"] == ""
    assert config.options["AliasFile"] == "/etc/aliases"
    subject, check, ip, ret = config.headers
    assert tuple(subject) == (None, "Subject", "$>+CheckSubject", "CheckSubject")
    assert subject.check_raw and not check.check_raw and check.ruleset_check == "CheckX"
    assert tuple(ip) == ("${ClientIP}", "X-IP", "${client_addr}", None)
    assert tuple(ret) == ("P", "Return-Path", "<$g>", None)
    # Sfoo takes 199; the mailer's S=Env/Hdr enters Env 198 and Hdr 197; R=foo is foo
    assert config.ruleset_names == {"foo": 199, "bar": 12, "Env": 198, "Hdr": 197}
    assert [(r.lhs, r.rhs, r.comment) for r in config.rulesets[199].rules] == [
        ("$*", "$: $1", "just a comment")]
    assert config.rulesets[12].name == "bar" and config.rulesets[7].rules[0].rhs == "$@ $1"
    test = config.mailers["test"]
    assert test.equate["W"] == "10m" and test.equate["T"] == "X-Unix"
    assert test.maxsize == 100000 and test.argv == "true $u" and test.flags == "lsD"
    assert test.eol == "\n"        # no E=: "\n" because A= holds $u
    assert config.queue_groups["q1"].equate == {"P": "/var/spool/mqueue/q1", "F": "f", "I": "1m"}
    assert config.milters["milter1"].equate["T"] == "S:1m;R:2m;E:5m"
    assert config.milters["milter1"].field("S") == "local:/run/m.sock"
    assert config.precedences == {"normal": 0}
    assert config.trusted_users == ["root", "smmsp"]
    assert config.environ == {"TZ": "Europe/Paris", "LANG": None}
    assert [k for k, *_ in config.other_lines] == ["L", "G"]
    assert config.maps["mymap"].args == "-o /etc/mail/mymap"
    assert config.origins[("D", "x")] == (path, 5)
    assert test.line == 25


def test_unsupported_lines_warn_with_file_and_line(tmp_path):
    path = write(tmp_path, "V10\nZunknown line\nDxok\nPnoequals\n\tcontinued\nOQ/var/q\n"
                           "Mm, P=/bin/true, Zq=1, A=true\n")
    seen = []
    config = cf.parse(path, warn=seen.append)
    assert seen == [
        "%s:2: unknown configuration line: Zunknown line" % path,
        "%s:4: unknown configuration line: Pnoequals\n\tcontinued" % path,
        "%s:7: Mm: unknown mailer equate Z=: Mm, P=/bin/true, Zq=1, A=true" % path,
    ]
    assert [w[:3] for w in config.warnings] == [
        (path, 2, "unknown configuration line"), (path, 4, "unknown configuration line"),
        (path, 7, "Mm: unknown mailer equate Z=")]
    # the lines around them are read
    assert config.macros["x"] == "ok" and config.options["QueueDirectory"] == "/var/q"
    assert config.mailers["m"].equate["Zq"] == "1"
    # no callback: still recorded, no crash
    assert len(cf.parse(path).warnings) == 3


ERRORS = [
    # (cf text, line, column, message)
    ("V10\nMbad, P=/bin/true, Fxyz\n", 2, 24, "mailer bad: `=' expected"),
    ("V10\nM, P=/bin/true\n", 2, 2, "name required for mailer"),
    ("S0\nR$* no tab here\n", 2, 16, "invalid rewrite line (tab expected)"),
    ("S0\nR\t$@ x\n", 2, 2, "R line: null LHS"),
    ("R$*\t$@ $1\n", 1, 1, 'missing valid ruleset for "R$*\t$@ $1"'),
    ("S100\n", 1, 2, "bad ruleset 100 (100 max)"),
    ("Sname=150\n", 1, 7, 'bad ruleset number 150 in "name" (100 max)'),
    ("Sname=5\nSname=6\n", 2, 2, "name: ruleset changed value (old 5, new 6)"),
    ("Kfoo\n", 1, 5, "readcf: config K line, map foo: no map class"),
    ("HNoColon\n", 1, 9, "header syntax error (no colon)"),
    ("D{unclosed\n", 1, 2, "syntax error in D (macro) line: unexpected '{'"),
    ("V10\nMx, P=/bin/true,\n\tF=lsD, Abad\n", 3, 13, "mailer x: `=' expected"),
]


@pytest.mark.parametrize("text,line,column,message", ERRORS)
def test_errors_give_file_line_column_caret_and_ex_config(tmp_path, text, line, column,
                                                          message):
    path = write(tmp_path, text)
    with pytest.raises(cf.CfError) as info:
        cf.parse(path)
    err = info.value
    assert isinstance(err, ConfigError) and err.status == 78
    assert (err.file, err.line, err.column, err.reason) == (path, line, column, message)
    first, shown, caret = err.message.split("\n")
    assert first == "%s:%d:%d: %s" % (path, line, column, message)
    assert shown == text.split("\n")[line - 1]
    assert caret == " " * (column - 1) + "^"


def test_missing_file_is_ex_osfile_with_sendmails_text(tmp_path):
    path = str(tmp_path / "nonexistent.cf")
    for call in (cf.parse, cf.load, lambda p: cf.load(p, cache_dir=str(tmp_path / "c"))):
        with pytest.raises(ConfigError) as info:
            call(path)
        assert info.value.status == 72
        assert info.value.message == "%s: line 0: cannot open: No such file or directory" % path


def test_load_without_cache_dir_parses(tmp_path):
    config = cf.load(cf_path("simple"))
    assert len(config.rulesets) == 12 and not os.listdir(tmp_path)


def run_fresh(code, *args):
    """Run code in a new interpreter (the installed pysendmail) and return its stdout."""
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    return out.stdout


FRESH_LOAD = """
import sys
from pysendmail.config import cf
seen = []
c = cf.load(sys.argv[1], warn=seen.append, cache_dir=sys.argv[2])
print('lark' in sys.modules, len(c.rulesets), sum(len(r.rules) for r in c.rulesets.values()),
      len(seen))
"""


def test_cache_hit_avoids_lark_and_gives_the_same_config(tmp_path):
    cache = str(tmp_path / "cache")
    path = cf_path("debian")
    first = cf.load(path, cache_dir=cache)
    where = cf_cache.cache_file(path, cache)
    assert os.listdir(cache) == [os.path.basename(where)]
    assert run_fresh(FRESH_LOAD, path, cache).split() == ["False", "67", "550", "0"]
    again = cf.load(path, cache_dir=cache)
    assert again.to_plain() == first.to_plain() == cf.parse(path).to_plain()
    assert again.mailers["local"].argv == "sensible-mda $g $u $h ${client_addr}"
    assert again.ruleset("Parse0").rules[0].line == 827


def test_cache_miss_parses_with_lark_in_a_fresh_process(tmp_path):
    cache = str(tmp_path / "cache")
    assert run_fresh(FRESH_LOAD, cf_path("simple"), cache).split() == ["True", "12", "31", "0"]
    assert run_fresh(FRESH_LOAD, cf_path("simple"), cache).split() == ["False", "12", "31", "0"]


def test_cache_follows_the_contents_and_replays_warnings(tmp_path):
    cache = str(tmp_path / "cache")
    path = write(tmp_path, "V10\nDxone\nZbad\n")
    seen = []
    assert cf.load(path, warn=seen.append, cache_dir=cache).macros["x"] == "one"
    assert run_fresh(FRESH_LOAD, path, cache).split() == ["False", "0", "0", "1"]
    st = os.stat(path)
    with open(path, "w") as f:                  # same size, same mtime: only the hash differs
        f.write("V10\nDxtwo\nZbad\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = []
    assert cf.load(path, warn=again.append, cache_dir=cache).macros["x"] == "two"
    assert seen == again == ["%s:3: unknown configuration line: Zbad" % path]


@pytest.mark.parametrize("garbage", [b"", b"not marshal at all", b"\xe3\x00\x01",
                                     marshal.dumps(("pysendmail-cf", 1, "0" * 64, {})),
                                     marshal.dumps([1, 2, 3])])
def test_corrupted_cache_is_ignored_and_rebuilt(tmp_path, garbage):
    cache = str(tmp_path / "cache")
    path = cf_path("simple")
    good = cf.load(path, cache_dir=cache).to_plain()
    where = cf_cache.cache_file(path, cache)
    with open(where, "rb") as f:
        digest = marshal.loads(f.read())[2]
    blob = garbage
    if garbage == marshal.dumps(("pysendmail-cf", 1, "0" * 64, {})):
        blob = marshal.dumps(("pysendmail-cf", 1, digest, {"path": path}))   # right key, bad body
    with open(where, "wb") as f:
        f.write(blob)
    assert cf.load(path, cache_dir=cache).to_plain() == good
    with open(where, "rb") as f:
        rebuilt = marshal.loads(f.read())
    assert rebuilt[2] == digest and rebuilt[3] == good
    assert not [n for n in os.listdir(cache) if n.endswith(".tmp")]


def test_unwritable_cache_dir_is_not_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = cf.load(cf_path("simple"), cache_dir=str(blocker / "cache"))
    assert len(config.rulesets) == 12


def test_submission_side_modules_do_not_import_lark():
    out = run_fresh("import sys\nimport pysendmail.config.cf, pysendmail.config.cf_model\n"
                    "print(sorted(m for m in ('lark', 're', 'hashlib', 'pickle') "
                    "if m in sys.modules))")
    assert out.strip() == "[]"


def test_eight_bit_and_crlf_lines_survive_the_cache(tmp_path):
    cache = str(tmp_path / "cache")
    path = tmp_path / "latin1.cf"
    path.write_bytes(b"V10\r\nDxcaf\xe9 \r\nS0\r\nR$*\t$@ caf\xe9\t# \xe9\r\n")
    first = cf.load(str(path), cache_dir=cache)
    assert os.path.exists(cf_cache.cache_file(str(path), cache))      # marshal keeps surrogates
    again = cf.load(str(path), cache_dir=cache)
    assert first.macros["x"] == again.macros["x"] == "caf\udce9"
    rule = again.rulesets[0].rules[0]
    assert (rule.lhs, rule.rhs, rule.comment) == ("$*", "$@ caf\udce9", "")
    assert rule.rhs.encode("utf-8", "surrogateescape") == b"$@ caf\xe9"
