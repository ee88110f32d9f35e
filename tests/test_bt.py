"""Tests of `sendmail -bt` (pysendmail/cli/addrtest.py): the installed command replays the
inputs Sendmail 8.17 was captured with (tests/data/bt/NAME.in, from the reference data) under
the capture's conditions, and must print the same bytes (NAME.out) and exit as it did (NAME.rc).

The conditions: host name mail.example.com and tests/data/bt/hosts over /etc/hosts, in private
UTS and mount namespaces (`unshare --uts --mount`, root only: CI runs as root); an empty
/etc/mail; no `smmta` user (the capture's machine had none: Sendmail warned about
TrustedUser=smmta); run from tests/data/bt with `-C NAME.cf` and the capture's -O options.
Plus unit tests of the session's commands, in-process.
"""
import io
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conftest import IN_CI, IS_ROOT  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "bt")
CFS = ("simple", "debian", "nullclient")
OPTIONS = ["-O", "ServiceSwitchFile=service.switch", "-O", "HostsFile=hosts",
           "-O", "DontProbeInterfaces=True", "-O", "ResolverOptions=-DNSRCH -DEFNAMES"]
# Lines of NAME.out matched when this was written (all of them): a regression guard.
MIN_SCORE = {"simple": 1918, "debian": 3138, "nullclient": 2926}
BANNER = ["ADDRESS TEST MODE (ruleset 3 NOT automatically invoked)",
          "Enter <ruleset> <address>"]

NS_SCRIPT = r"""
set -e
hostname mail.example.com
mount --bind "$BT_HOSTS" /etc/hosts
mount --bind "$BT_PASSWD" /etc/passwd
if [ -d /etc/mail ]; then mount --bind "$BT_EMPTY" /etc/mail; fi
cd "$BT_DATA"
exec "$@"
"""


def read(name, ext):
    with open(os.path.join(DATA, name + "." + ext), "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def replays(sm_bin, tmp_path_factory):
    """{cf name: (stdout bytes, exit status)} of the installed sendmail -bt."""
    if not IS_ROOT:
        if IN_CI:
            pytest.fail("the -bt replay needs root (unshare) and CI runs as root")
        pytest.skip("the -bt replay needs root (unshare --uts --mount)")
    base = tmp_path_factory.mktemp("bt")
    root = base / "root"
    root.mkdir()
    empty = base / "etc-mail"
    empty.mkdir()
    passwd = base / "passwd"
    with open("/etc/passwd", "rb") as f:
        lines = [ln for ln in f.read().split(b"\n") if not ln.startswith(b"smmta:")]
    passwd.write_bytes(b"\n".join(lines))
    env = dict(os.environ, PYSENDMAIL_ROOT=str(root), BT_HOSTS=os.path.join(DATA, "hosts"),
               BT_PASSWD=str(passwd), BT_EMPTY=str(empty), BT_DATA=DATA)
    out = {}
    for name in CFS:
        proc = subprocess.run(
            ["unshare", "--uts", "--mount", "sh", "-c", NS_SCRIPT, "bt",
             os.path.join(sm_bin, "sendmail"), "-bt", "-C", name + ".cf"] + OPTIONS,
            input=read(name, "in"), capture_output=True, env=env, timeout=120)
        assert proc.stderr == b"", proc.stderr.decode("utf-8", "replace")[-2000:]
        out[name] = (proc.stdout, proc.returncode)
    return out


def score(got, want):
    g = got.decode("utf-8", "replace").split("\n")
    w = want.decode("utf-8", "replace").split("\n")
    good = sum(1 for a, b in zip(g, w) if a == b)
    return good, max(len(g), len(w))


@pytest.mark.parametrize("name", CFS)
def test_replay(replays, name):
    got, rc = replays[name]
    want = read(name, "out")
    good, total = score(got, want)
    print("%s: %d/%d lines match" % (name, good, total))
    if got == want:
        assert rc == int(read(name, "rc")), "%s: exit %d" % (name, rc)
    assert good >= MIN_SCORE[name], "%s: %d/%d lines match (was %d)" % (
        name, good, total, MIN_SCORE[name])


def test_golden_lines(replays):
    for name in CFS:
        lines = replays[name][0].decode().split("\n")
        start = lines.index(BANNER[0])
        assert lines[start:start + 2] == BANNER
        # the first command is $j: its answer follows the prompts of "# comment" and "$j"
        assert lines[start + 2] == "> > mail.example.com"
    simple = replays["simple"][0].decode().split("\n")
    i = simple.index("> > 3                  input: user @ example . com")
    assert simple[i:i + 6] == [
        "> > 3                  input: user @ example . com",
        "3                returns: user < @ example . com >",
        "0                  input: user < @ example . com >",
        "5                  input: user < @ example . com >",
        "5                returns: user < @ example . com >",
        "0                returns: $# smtp $@ example . com $: user < @ example . com >"]
    assert "mailer smtp, host example.com, user user@example.com" in simple
    assert "mailer local, user boss" in simple          # local lower-cases (no F=u)
    assert "mailer smtp, host example.com, user John.Doe@Example.COM" in simple
    assert "<user@example.com... Unbalanced '<'" in simple
    debian = replays["debian"][0].decode().split("\n")
    assert debian[0] == ("debian.cf: line 100: fileclass: cannot open "
                         "'/etc/mail/local-host-names': No such file or directory")
    assert "mailer prog, user |/usr/bin/procmail" in debian
    assert "mailer *file*, user /var/mail/user" in debian
    assert replays["simple"][0].endswith(b"\n> ")


# ------------------------------------------------------------ in-process
@pytest.fixture(scope="module")
def simple_cf():
    from pysendmail.config import cf as cfmod
    return cfmod.load(os.path.join(DATA, "simple.cf"))


def session(cf, text, hostname="mail.example.com"):
    from pysendmail.cli import addrtest
    out = io.StringIO()
    opts = {"HostsFile": os.path.join(DATA, "hosts"),
            "ServiceSwitchFile": os.path.join(DATA, "service.switch")}
    rc = addrtest.run(cf, opts, io.StringIO(text), out, hostname=hostname)
    text = out.getvalue()
    assert text.startswith(addrtest.BANNER)
    return text[len(addrtest.BANNER):], rc


def test_prompts_blank_and_comment_lines(simple_cf):
    assert session(simple_cf, "") == ("> ", 0)
    assert session(simple_cf, "\n# comment\n   \n") == ("> > > > ", 0)


def test_macros_and_classes(simple_cf):
    out, rc = session(simple_cf, "$j\n$w\n$m\n.Dxhello $w\n$x\n$q\n$Z\n.Cz one two\n$=z\n"
                      ".D{long}v\n${long}\n")
    assert out == ("> mail.example.com\n> mail\n> example.com\n> > hello $w\n> <$g>\n"
                   "> Undefined\n> > one\ntwo\n> > v\n> ")
    assert rc == 0


def test_class_w_and_host_name_from_hosts_file(simple_cf):
    # simple.cf sets Dj: the host name does not change $j; $=w gets the host's entry in
    # the hosts file (name, aliases, address) besides the cf's Cw words, listed in the order
    # of Sendmail's symbol table buckets
    from pysendmail.cli.addrtest import stab_hash
    out, _ = session(simple_cf, "$j\n$=w\n", hostname="other")
    lines = out.split("\n")
    assert lines[0] == "> mail.example.com"
    members = [lines[1][2:]] + lines[2:-1]
    assert set(members) == {"other.example.com", "other", "[192.0.2.40]", "localhost",
                            "mail", "mail.example.com", "[127.0.0.1]"}
    assert members == sorted(members, key=stab_hash)
    out, _ = session(simple_cf, "$=w\n")
    assert out == "> mail.example.com\nmail\nlocalhost\n[127.0.0.1]\n> "


def test_ruleset_list_by_number_and_name(simple_cf):
    out, _ = session(simple_cf, "3,4 boss\n9x user\n3,0\n")
    assert out == ("> 3                  input: boss\n3                returns: boss\n"
                   "4                  input: boss\n4                returns: boss\n"
                   "> Undefined ruleset 9x\n> No address!\n> ")


def test_show_ruleset(simple_cf):
    # a ruleset number without rules prints nothing; an unknown name is undefined
    out, _ = session(simple_cf, "=S4\n=S99\n=Snosuch\n=\n=X\n")
    assert out == ("> R$* < $+ > $* \t\t$1 $2 $3 \nR$* % $* @ $* \t\t$1 % $2 @ $3 \n"
                   "> > Undefined ruleset nosuch\n> Usage: =Sruleset or =M\n"
                   "> Unknown \"=\" command =X\n> ")


def test_canon_map_and_tryflags(simple_cf):
    out, _ = session(simple_cf, "/canon www\n/canon nosuch\n/map dequote \"a b\"\n"
                     "/map nomap x\n/tryflags es\n/try smtp user\n")
    lines = out.split("\n")
    assert lines[0] == "> getcanonname(www) returns www.example.org"
    assert lines[1] == "> getcanonname(nosuch) returns nosuch"
    assert lines[2] == '> map_lookup: dequote ("a b") no match (0)'
    assert lines[3] == '> Map named "nomap" not found'
    assert lines[4] == "> > Trying envelope sender address user for mailer smtp"
    assert lines[-2] == "Rcode = 0, addr = user@example.com"


def test_usage_messages_and_quit(simple_cf):
    out, rc = session(simple_cf, "/\n/parse\n/try smtp\n/canon  \n/map dequote\n/bogus x\n"
                      ".\n.X\n-\n-d0-99.1\n/quit\n$j\n")
    assert out == ("> Usage: /[canon|map|mx|parse|try|tryflags]\n> Usage: /parse address\n"
                   "> Usage: /try mailer address\n> Usage: /canon address\n"
                   "> No key specified\n> Unknown \"/\" command /bogus\n"
                   "> Usage: .[DC]macro value(s)\n> Unknown \".\" command .X\n"
                   "> Usage: -d{debug arguments}\n> > ")
    assert rc == 0


def test_mx_without_name_server(simple_cf, tmp_path):
    # the capture's switch has "hosts files": Sendmail does not ask DNS, the host is its MX
    out, _ = session(simple_cf, "/mx example.com\n")
    assert out == "> getmxrr(example.com) returns 1 value(s):\n\texample.com\n> "
    from pysendmail.cli import addrtest
    switch = tmp_path / "switch"
    switch.write_text("hosts dns files\n")
    buf = io.StringIO()
    # a resolver with no name server configured (no resolv.conf): the lookup fails
    addrtest.run(simple_cf, {"ServiceSwitchFile": str(switch)}, io.StringIO("/mx example.com\n"),
                 buf, hostname="mail.example.com", resolv_confs=(str(tmp_path / "none"),))
    assert buf.getvalue().endswith("> getmxrr(example.com) returns -1 value(s):\n> ")


def test_parse_errors_and_exit_status(simple_cf):
    out, rc = session(simple_cf, "/parse user!@example.com\n/parse < >\n")
    assert "user!@example.com... UUCP is not supported here\n" in out
    assert 'mailer *error*, host 5.1.2, user "553 UUCP is not supported here"\n' in out
    assert "buildaddr: no mailer in parsed address\nmailer *error*, user \n" in out
    assert rc == 68         # the first error's status sticks (the syserr's 71 comes later)
    out, rc = session(simple_cf, "/parse < >\n")
    assert rc == 71


@pytest.mark.parametrize("addr, template", [
    ("user@example.com", "$g"),
    ("user@example.com (John Doe)", "$g (John Doe)"),
    ("user(comment)@example.com", "$g (comment)"),
    ("(nested (comment) here) user@example.com", "(nested (comment) here) $g"),
    ("John Doe <user@example.com>", "John Doe <$g>"),
    ('"Doe, John" <user@example.com>', '"Doe, John" <$g>'),
    ("<user@example.com> (trailing comment)", "<$g> (trailing comment)"),
    ("<user@example.com", "<$g>"),
    ("<user@example.com>>", "<$g>"),
    ("< >", "<$g>"),
    ("<", "<>"),
    ("user<>@example.com", "user<>@example.com"),
    ("((user@example.com))", "((user@example.com))"),
    ("group: a@example.com, b@example.com;", "group: $g;"),
    ("@a.example,@b.example:user@example.com", '"@a.example,@b.example":$g'),
    ("user@example.com:25", '"user@example.com":$g'),
    ("user@[IPv6:::1]", "$g"),
    ('""', ""),
    ("John Q. Public <jqp@example.com>", '"John Q. Public" <$g>'),   # MustQuoteChars .
    ("a@b (unclosed", "$g (unclosed)"),
    (";", ";$g"),
])
def test_crackaddr(addr, template):
    from pysendmail.config.crackaddr import crackaddr
    assert crackaddr(addr) == template


def test_named_rulesets_as_numbers():
    # debian.cf: S3 is "canonify", S0 is "parse": "canonify,parse ADDR" traces as "3,0 ADDR"
    from pysendmail.config import cf as cfmod
    cf = cfmod.load(os.path.join(DATA, "debian.cf"))
    by_name, _ = session(cf, "canonify,parse user@example.com\n")
    by_number, _ = session(cf, "3,0 user@example.com\n")
    assert by_name == by_number
    assert by_name.startswith("> canonify           input: user @ example . com\n")
    assert by_name.endswith(
        "parse            returns: $# esmtp $@ example . com $: user < @ example . com >\n> ")


def test_parse_buildaddr_special_mailers_and_sender():
    # buildaddr: F=: and a ":include:" user give *include* without further rewriting; a V10
    # cf rewrites a sender through 2, the mailer's envelope R= and 4 (as a recipient)
    from pysendmail.config import cf as cfmod
    cf = cfmod.load(os.path.join(DATA, "debian.cf"))
    out, _ = session(cf, "/parse :include:/etc/list\n/tryflags es\n/parse user\n")
    assert ("parse            returns: $# local $: : include : / etc / list\n"
            "mailer *include*, user /etc/list\n") in out
    sender = out[out.index("Parsing envelope sender address"):].split("\n")
    assert sender[-2:] == ["mailer local, user user", "> "]
    assert [ln.split()[0] for ln in sender if ln.endswith("input: user")][-3:] == [
        "2", "EnvToL", "final"]


def test_ruleset_list_stops_at_an_undefined_name_and_try_keeps_the_phrase(simple_cf):
    out, _ = session(simple_cf, "3,nosuch,0 boss\n/tryflags h\n/try smtp Joe <user@example.com>\n")
    lines = out.split("\n")
    assert lines[:3] == ["> 3                  input: boss", "3                returns: boss",
                         "Undefined ruleset nosuch,0"]
    assert lines[3] == "> > Trying header recipient address Joe <user@example.com> for mailer smtp"
    assert lines[-2:] == ["Rcode = 0, addr = Joe <user@example.com>", "> "]


def test_a_message_on_stdin(simple_cf):
    # `sendmail -bt < message` (Sendmail 8.17's answer in the reference exit-code capture)
    out, rc = session(simple_cf, "From: nobody@example.com\nSubject: no recipients\n\nbody\n")
    assert (out, rc) == ("> Undefined ruleset From:\n> Undefined ruleset Subject:\n> > No address!"
                         "\n> ", 0)


def test_cf_complaints_and_builtin_host_map(tmp_path):
    from pysendmail.config import cf as cfmod
    path = tmp_path / "t.cf"
    path.write_text("V10/Berkeley\nZjunk here\nS0\nR$*\t$#local $: $1\n")
    cf = cfmod.load(str(path))
    from pysendmail.cli import addrtest
    out = io.StringIO()
    rc = addrtest.run(cf, {"HostsFile": os.path.join(DATA, "hosts")},
                      io.StringIO("/map host mail\n"), out, hostname="mail.example.com",
                      warn=lambda m: out.write(m + "\n"))
    assert out.getvalue() == ('%s: line 2: unknown configuration line "Zjunk here"\n' % path
                              + addrtest.BANNER
                              + "> map_lookup: host (mail) returns mail.example.com. (0)\n> ")
    assert rc == 71


def test_show_mailers(simple_cf):
    # printmailer(): envelope/header rulesets (the header one is the envelope one when the cf
    # gives one), flags in ASCII order, T= parts, A= words
    out, _ = session(simple_cf, "=M\n")
    lines = out.split("\n")
    assert lines[2] == ("mailer 2 (smtp): P=[IPC] S=11/31 R=21/21 M=0 U=0:0 F=DFMXamu L=990 "
                        "E=\\r\\n T=DNS/RFC822/SMTP r=100 A=TCP $h")
    assert len(lines) == 5 and lines[-1] == "> "
