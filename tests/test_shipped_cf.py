"""Tests of the shipped configuration, pysendmail/data/sendmail.cf (etc/sendmail.cf links to it).

The installed `sendmail -bt -C CF` answers as Sendmail 8.17 does: `/parse ADDR` prints the
(mailer, host, user) triple of ruleset 0 and of the mailer's rewriting, `/try MAILER ADDR`
(with `/tryflags`) what a mailer writes.  Copies of the cf in tmp_path name tmp files
instead of /etc/mail (virtusertable, virthosts, local-host-names), set $j to
mail.example.com and add its address to $=w, so that nothing depends on this machine's
/etc/mail, names or DNS (-O HostsFile= a tmp hosts file: the $[ $] lookups stay local).
"""
import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(REPO, "pysendmail", "data", "sendmail.cf")

# The options of the cf shipped before it had rulesets: all of them must stay.
OPTIONS = [
    "O DeliveryMode=background", "O ErrorMode=print", "O MailboxFormat=mbox",
    "O ForwardPath=$z/.forward", "O Timeout.queuereturn=5d", "O Timeout.queuewarn=4h",
    "O MinQueueAge=0", "O MaxHeadersLength=32768", "O MaxHopCount=25",
    "O DefaultUser=mail:mail", "O PrivacyOptions=authwarnings", "O SuperSafe=True",
]

VIRTUSERTABLE = """\
# test virtusertable (makemap text source)
info@virt.example\tjane
sales@virt.example\tbob@elsewhere.example
bad@virt.example\terror:5.7.0:550 Address invalid
old@virt.example\terror:nouser User unknown
@virt.example\tcatchall
@fwd.example\t%1@example.net
postmaster@mail.example.com\troot
joe+*@virt2.example\tjoe
@virt2.example\terror:nouser No such user here
"""
VIRTHOSTS = "virt.example\nfwd.example\nvirt2.example\nnomap.example\n"
HOSTS = "127.0.0.1 localhost\n192.0.2.5 mail.example.com mail\n"


def read_shipped():
    with open(SHIPPED, encoding="utf-8") as f:
        return f.read()


def make_cf(directory, ds=None, dm=None, masq_envelope=False, name="sendmail.cf"):
    """A copy of the shipped cf in *directory* whose files are tmp files, with $j set."""
    d = str(directory)
    text = read_shipped()
    for etc, mine in (("/etc/mail/virtusertable", "virtusertable"),
                      ("/etc/mail/mailertable", "mailertable"),
                      ("/etc/mail/virthosts", "virthosts"),
                      ("/etc/mail/local-host-names", "local-host-names")):
        assert text.count(etc) >= 1, etc
        text = text.replace(" " + etc + "\n", " " + os.path.join(d, mine) + "\n")
    for mine, content in (("virtusertable", VIRTUSERTABLE), ("virthosts", VIRTHOSTS),
                          ("local-host-names", "mail.example.com\n# comment\nmail\n"),
                          ("hosts", HOSTS)):
        with open(os.path.join(d, mine), "w", encoding="utf-8") as f:
            f.write(content)
    text = text.replace("\n#Dj mail.example.com\n", "\nDjmail.example.com\nCw [192.0.2.5]\n")
    for macro, value in (("S", ds), ("M", dm), ("{MasqEnvelope}", "yes" if masq_envelope
                                                 else None)):
        if value is not None:
            assert "\nD%s\n" % macro in text
            text = text.replace("\nD%s\n" % macro, "\nD%s%s\n" % (macro, value))
    assert "/etc/mail" not in re.sub(r"(?m)^#.*$", "", text)
    path = os.path.join(d, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def bt(sm_bin, cf, commands, root, hosts=None):
    """Run the installed `sendmail -bt -C cf` on *commands*: (stdout, stderr, status)."""
    args = [os.path.join(sm_bin, "sendmail"), "-bt", "-C", cf]
    if hosts:
        args += ["-O", "HostsFile=" + hosts]
    env = dict(os.environ, PYSENDMAIL_ROOT=str(root))
    proc = subprocess.run(args, input="\n".join(commands) + "\n", capture_output=True,
                          text=True, env=env, timeout=60)
    return proc.stdout, proc.stderr, proc.returncode


def results(stdout):
    """The result lines: `mailer ...` of /parse, `Rcode ...` of /try, `ADDR... text` errors."""
    out = []
    for line in stdout.splitlines():
        line = re.sub(r"^(> )+", "", line)
        if re.match(r"mailer \S+, |Rcode = |\S+\.\.\. ", line):
            out.append(line)
    return out


@pytest.fixture(scope="module")
def run_cf(sm_bin, tmp_path_factory):
    """run_cf(commands, **make_cf options) -> result lines (see results()); no warnings."""
    def run(commands, **kw):
        d = tmp_path_factory.mktemp("cf")
        root = d / "root"
        root.mkdir()
        cf = make_cf(d, **kw)
        stdout, stderr, _status = bt(sm_bin, cf, commands, root, hosts=str(d / "hosts"))
        assert stderr == "", stderr
        return results(stdout)
    return run


# ---------------------------------------------------------------- the file itself
def test_etc_link_is_the_shipped_cf():
    link = os.path.join(REPO, "etc", "sendmail.cf")
    assert os.path.islink(link)
    assert os.path.realpath(link) == os.path.realpath(SHIPPED)


def test_keeps_the_options_and_defaults():
    lines = read_shipped().splitlines()
    for option in OPTIONS:
        assert option in lines, option
    for line in ("Cw localhost localhost.localdomain", "Fw -o /etc/mail/local-host-names",
                 "DS", "DM", "Kvirtuser hash -o /etc/mail/virtusertable",
                 "F{VirtHost} -o /etc/mail/virthosts", "V10/Berkeley"):
        assert line in lines, line
    assert not [x for x in lines if x.startswith("Dj")]     # $j comes from the host


def test_shipped_cf_loads_without_warnings_and_lists_its_mailers(sm_bin, tmp_path):
    stdout, stderr, status = bt(sm_bin, SHIPPED, ["=M", "/parse root",
                                                  "/parse user@[192.0.2.9]"], tmp_path)
    assert stderr == ""
    assert status == 0
    mailers = re.findall(r"^(?:> )*mailer (\d+) \((\S+)\): (.*)$", stdout, re.M)
    assert [(n, name) for n, name, _ in mailers] == [
        ("0", "local"), ("1", "prog"), ("2", "smtp"), ("3", "esmtp"), ("4", "smtp8"),
        ("5", "dsmtp"), ("6", "relay")]
    desc = {name: rest for _n, name, rest in mailers}
    assert desc["local"].startswith("P=[LOCAL] S=EnvFromL/HdrFromL R=EnvToL/HdrToL ")
    local_flags = re.search(r" F=(\S+) ", desc["local"]).group(1)
    assert set(":|/@lsw5") <= set(local_flags)
    assert desc["local"].endswith(" A=mail.local -l")
    assert desc["prog"].startswith("P=/bin/sh ") and desc["prog"].endswith(" A=sh -c $u")
    for name in ("smtp", "esmtp", "smtp8", "dsmtp", "relay"):
        assert desc[name].startswith("P=[IPC] S=EnvFromSMTP/HdrFromSMTP R=")
        assert desc[name].endswith(" A=TCP $h")
    assert " R=MasqSMTP/MasqSMTP " in desc["relay"]
    assert re.search(r" F=\S*a\S* ", desc["esmtp"]) and "%" in desc["dsmtp"]
    assert results(stdout) == ["mailer local, user root",
                               "mailer esmtp, host [192.0.2.9], user user@[192.0.2.9]"]


def test_class_w_and_macros(sm_bin, tmp_path):
    cf = make_cf(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    stdout, stderr, status = bt(sm_bin, cf, ["$j", "$=w", "$S", "$M", "$={VirtHost}"], root,
                                hosts=str(tmp_path / "hosts"))
    assert stderr == "" and status == 0
    assert "> mail.example.com\n" in stdout
    for name in ("localhost", "localhost.localdomain", "mail.example.com", "mail",
                 "[192.0.2.5]"):
        assert "\n%s\n" % name in stdout, name
    assert "virt2.example" in stdout and "nomap.example" in stdout
    assert "Undefined" not in stdout


# ---------------------------------------------------------------- recipients: /parse
PARSE = [
    ("user", "mailer local, user user"),
    ("user+detail", "mailer local, user user+detail"),
    ("root", "mailer local, user root"),
    ("user@localhost", "mailer local, user user"),
    ("user@localhost.localdomain", "mailer local, user user"),
    ("user@mail.example.com", "mailer local, user user"),
    ("user+tag@mail.example.com", "mailer local, user user+tag"),
    ("USER@MAIL.EXAMPLE.COM", "mailer local, user user"),
    ("user@mail.example.com.", "mailer local, user user"),
    ("user@mail", "mailer local, user user"),
    ("Jane Doe <jane@mail.example.com>", "mailer local, user jane"),
    ("<@mail.example.com:user@mail.example.com>", "mailer local, user user"),
    ("user@[192.0.2.5]", "mailer local, user user"),
    ("user@[127.0.0.1]", "mailer local, user user"),
    ("user@example.org", "mailer esmtp, host example.org, user user@example.org"),
    ("user@example.org.", "mailer esmtp, host example.org., user user@example.org"),
    ("John Doe <user@example.org>", "mailer esmtp, host example.org, user user@example.org"),
    ("<@a.example,@b.example:user@example.org>",
     "mailer esmtp, host example.org, user user@example.org"),
    ("user%example.org@mail.example.com",
     "mailer esmtp, host example.org, user user@example.org"),
    ("user@[192.0.2.9]", "mailer esmtp, host [192.0.2.9], user user@[192.0.2.9]"),
    ("<>", "mailer local, user "),
    ("|/usr/bin/procmail", "mailer prog, user |/usr/bin/procmail"),
    ('"|/usr/bin/vacation jane"', 'mailer prog, user "|/usr/bin/vacation jane"'),
    ("/var/mail/archive", "mailer *file*, user /var/mail/archive"),
    (":include:/etc/mail/staff", "mailer *include*, user /etc/mail/staff"),
    # virtusertable
    ("info@virt.example", "mailer local, user jane"),
    ("sales@virt.example", "mailer esmtp, host elsewhere.example, user bob@elsewhere.example"),
    ("someone@virt.example", "mailer local, user catchall"),
    ("someone+x@virt.example", "mailer local, user catchall"),
    ("anna@fwd.example", "mailer esmtp, host example.net, user anna@example.net"),
    ("joe+foo@virt2.example", "mailer local, user joe"),
    ("postmaster@mail.example.com", "mailer local, user root"),
    ("postmaster@localhost", "mailer local, user root"),
    ("other@mail.example.com", "mailer local, user other"),
]

PARSE_ERRORS = [
    ("bad@virt.example", ["bad@virt.example... Address invalid",
                          "mailer *error*, host 5.7.0, user 550 Address invalid"]),
    ("old@virt.example", ["old@virt.example... User unknown",
                          "mailer *error*, host nouser, user User unknown"]),
    ("jim@virt2.example", ["jim@virt2.example... No such user here",
                           "mailer *error*, host nouser, user No such user here"]),
    ("x@nomap.example", ["x@nomap.example... User unknown",
                         'mailer *error*, host 5.1.1, user "550 User unknown"']),
    ("user@", ["user@... Hostname required",
               'mailer *error*, host 5.1.3, user "553 Hostname required"']),
    ("@example.org", ["@example.org... User address required",
                      'mailer *error*, host 5.1.3, user "553 User address required"']),
    ("user@.example.org", ["user@.example.org... Invalid host name",
                           'mailer *error*, host 5.1.2, user "553 Invalid host name"']),
]


def test_parse_recipients(run_cf):
    got = run_cf(["/parse " + addr for addr, _ in PARSE])
    assert got == [want for _, want in PARSE]


def test_parse_errors(run_cf):
    got = run_cf(["/parse " + addr for addr, _ in PARSE_ERRORS])
    assert got == [line for _, lines in PARSE_ERRORS for line in lines]


def test_parse_without_virtusertable(sm_bin, tmp_path):
    """The map is optional: without its file, names of $=w are local users."""
    cf = make_cf(tmp_path)
    os.unlink(os.path.join(str(tmp_path), "virtusertable"))
    root = tmp_path / "root"
    root.mkdir()
    stdout, stderr, status = bt(sm_bin, cf, ["/parse postmaster@mail.example.com",
                                             "/parse x@nomap.example"], root,
                                hosts=str(tmp_path / "hosts"))
    assert stderr == ""
    assert results(stdout) == ["mailer local, user postmaster",
                               "x@nomap.example... User unknown",
                               'mailer *error*, host 5.1.1, user "550 User unknown"']


SMART = ["/parse user@example.org", "/parse user@[192.0.2.9]", "/parse user",
         "/parse sales@virt.example", "/parse user@mail.example.com"]


@pytest.mark.parametrize("ds, host, mailer", [
    ("smarthost.example", "smarthost.example", "relay"),
    ("[smarthost.example]", "[smarthost.example]", "relay"),
    ("[192.0.2.25]", "[192.0.2.25]", "relay"),
    ("esmtp:[smart.example]", "[smart.example]", "esmtp"),
])
def test_smart_host(run_cf, ds, host, mailer):
    got = run_cf(SMART, ds=ds)
    assert got == [
        "mailer %s, host %s, user user@example.org" % (mailer, host),
        "mailer esmtp, host [192.0.2.9], user user@[192.0.2.9]",    # literals go direct
        "mailer local, user user",
        "mailer %s, host %s, user bob@elsewhere.example" % (mailer, host),
        "mailer local, user user",
    ]


def test_smart_host_is_read_at_run_time(run_cf):
    got = run_cf(["/parse user@example.org", ".DS smarthost.example",
                  "/parse user@example.org", ".DS", "/parse user@example.org"])
    assert got == ["mailer esmtp, host example.org, user user@example.org",
                   "mailer relay, host smarthost.example, user user@example.org",
                   "mailer esmtp, host example.org, user user@example.org"]


# ---------------------------------------------------------------- senders, headers: /try
TRY = ["/tryflags hs", "/try esmtp user", "/try esmtp user@mail.example.com",
       "/try esmtp root@localhost", "/try esmtp user@other.example", "/try esmtp <>",
       "/try relay user", "/try local user", "/try local user@mail.example.com",
       "/tryflags es", "/try esmtp user", "/try esmtp user@mail.example.com",
       "/try esmtp <>", "/try relay user", "/try local user", "/try local <>",
       "/tryflags hr", "/try esmtp user", "/try local user",
       "/tryflags er", "/try esmtp user", "/try esmtp user@example.org",
       "/try local user+x", "/try local user@mail.example.com", "/try relay user"]


def try_expect(hdr_domain, env_domain, local_hdr_domain):
    return ["Rcode = 0, addr = " + a for a in [
        # header senders
        "user@" + hdr_domain, "user@" + hdr_domain, "root@" + hdr_domain,
        "user@other.example", "<>", "user@" + hdr_domain, "user",
        "user@" + local_hdr_domain,
        # envelope senders
        "user@" + env_domain, "user@" + env_domain, "<>", "user@" + env_domain, "user", "<>",
        # header recipients
        "user@mail.example.com", "user",
        # envelope recipients
        "user@mail.example.com", "user@example.org", "user+x", "user",
        "user@mail.example.com"]]


def test_try_without_masquerading(run_cf):
    assert run_cf(TRY) == try_expect("mail.example.com", "mail.example.com",
                                     "mail.example.com")


def test_try_masquerading_headers(run_cf):
    assert run_cf(TRY, dm="example.com") == try_expect("example.com", "mail.example.com",
                                                       "example.com")


def test_try_masquerading_envelope(run_cf):
    assert run_cf(TRY, dm="example.com", masq_envelope=True) == try_expect(
        "example.com", "example.com", "example.com")


def test_masquerade_classes_at_run_time(run_cf):
    """$M is read when the rules run; class E users stay exposed, class N domains too."""
    got = run_cf([".DM example.com", "/tryflags hs", "/try esmtp root",
                  ".CE root", "/try esmtp root", "/try esmtp user",
                  ".CM other.example", "/try esmtp u@other.example",
                  ".Cw other2.example", ".CN other2.example", "/try esmtp u@other2.example",
                  ".DM", "/try esmtp user"])
    assert got == ["Rcode = 0, addr = " + a for a in [
        "root@example.com", "root@mail.example.com", "user@example.com",
        "u@example.com", "u@other2.example", "user@mail.example.com"]]


def test_readme_site_rule_example(sm_bin, tmp_path):
    """etc/README's ParseLocal example, added to the cf, routes that domain as it says."""
    with open(os.path.join(REPO, "etc", "README"), encoding="utf-8") as f:
        rules = [line.strip() + "\n" for line in f if line.startswith("  R$* < @ partner")]
    assert len(rules) == 2 and all("\t" in r for r in rules)
    cf = make_cf(tmp_path)
    with open(cf, encoding="utf-8") as f:
        text = f.read()
    assert "\nSParseLocal=98\n" in text
    with open(cf, "w", encoding="utf-8") as f:
        f.write(text.replace("\nSParseLocal=98\n", "\nSParseLocal=98\n" + "".join(rules)))
    with open(os.path.join(str(tmp_path), "hosts"), "a", encoding="utf-8") as f:
        f.write("192.0.2.7 partner.example\n")          # $[ $] adds the trailing dot
    root = tmp_path / "root"
    root.mkdir()
    stdout, stderr, _status = bt(sm_bin, cf, [
        "/parse a@partner.example", "/parse a@sub.partner.example",
        "/map virtuser info@virt.example"], root, hosts=str(tmp_path / "hosts"))
    assert stderr == ""
    assert results(stdout) == [
        "mailer esmtp, host [mx.partner.example], user a@partner.example",
        "mailer esmtp, host sub.partner.example, user a@sub.partner.example"]
    assert "map_lookup: virtuser (info@virt.example) returns jane (0)" in stdout
