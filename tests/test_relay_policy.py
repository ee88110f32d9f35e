"""Relay control (pysendmail/server/policy.py): who may connect, send and relay.

A private instance is built per module: the shipped cf with its /etc/mail paths pointed
at the test's files, local-host-names, aliases (rebuilt), relay-domains, and an access
map built by the installed `makemap` (only access.db exists: the sorted index is what is
read).  A battery of recipients x client situations (external, loopback v4/v6,
authenticated, Connect: RELAY, relay-domains client) runs through the built-in policy,
with the classic open-relay tricks; then the key cases run against Debian's sendmail.cf
(tests/data/policy-debian.cf, from the Sendmail 8.17 reference), whose check_relay and
check_rcpt rulesets decide, and against a small cf whose check_rcpt reads the session
macros.  Host names come from a private hosts file (service switch "hosts files"): no DNS.
"""
import os
import pwd
import re
import subprocess

import pytest

from pysendmail import layout as layout_mod
from pysendmail.config import aliases as aliases_mod
from pysendmail.config.identity import Identity
from pysendmail.delivery.router import RouteContext
from pysendmail.server.policy import (ClientInfo, Policy, Verdict, address_keys, addr_macro,
                                      domain_keys)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_CF = os.path.join(REPO, "pysendmail", "data", "sendmail.cf")
DEBIAN_CF = os.path.join(REPO, "tests", "data", "policy-debian.cf")
ME = pwd.getpwuid(os.geteuid()).pw_name

ACCESS = """\
Connect:192.0.2.66\tREJECT
Connect:spammer.example\tREJECT
Connect:192.0.2.99\tERROR:4.7.1:421 Come back later
Connect:192.0.2.98\tDISCARD
Connect:198.51.100\tRELAY
Connect:192.0.2.77\tRELAY
From:spam.example\tREJECT
From:bad@sender.example\tERROR:5.7.1:550 We do not want your mail
From:quiet.example\tDISCARD
From:nice.spam.example\tOK
To:partner.example\tRELAY
To:victim@mail.example.com\tREJECT
To:moved@mail.example.com\tERROR:"550 5.1.6 This mailbox has moved"
old.example\tREJECT
"""


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def build_instance(base, cf_source, sm_bin, access=ACCESS):
    """A private instance under base with the cf's /etc/mail files in base/etc."""
    etc = os.path.join(base, "etc")
    os.makedirs(etc)
    with open(cf_source) as f:
        cf = f.read().replace("/etc/mail/", etc + "/")
    write(os.path.join(etc, "sendmail.cf"), cf)
    write(os.path.join(etc, "local-host-names"), "mail.example.com\nexample.com\n[192.0.2.10]\n")
    write(os.path.join(etc, "relay-domains"), "relay.example\n203.0.113\n")
    write(os.path.join(etc, "hosts"), "127.0.0.1 localhost\n192.0.2.10 mail.example.com mail\n"
          "198.51.100.5 sender.example\n198.51.100.6 spam.example\n")
    write(os.path.join(etc, "service.switch"), "hosts files\n")
    for name in ("virtusertable", "virthosts"):
        write(os.path.join(etc, name), "")
    aliases_path = write(os.path.join(etc, "aliases"),
                         "postmaster: root\ninfo: %s\nsales: info, someone@example.org\n" % ME)
    aliases_mod.rebuild(aliases_path)
    makemap(sm_bin, os.path.join(etc, "access"), access)
    return etc


def makemap(sm_bin, path, text):
    p = subprocess.run([os.path.join(sm_bin, "makemap"), "hash", path], input=text.encode(),
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr


def make_policy(base, options=None, log=None):
    etc = os.path.join(base, "etc")
    opts = {"DontProbeInterfaces": "True", "ServiceSwitchFile": os.path.join(etc, "service.switch"),
            "HostsFile": os.path.join(etc, "hosts"), "AliasFile": os.path.join(etc, "aliases")}
    opts.update(options or {})
    ctx = RouteContext(layout_mod.for_root(base), opts, Identity("mail.example.com"))
    return Policy(ctx, opts, log=log)


def client(kind):
    """The client situations of the battery."""
    c = {"ext": ClientInfo("192.0.2.7", 40001, "client.example.net"),
         "lo4": ClientInfo("127.0.0.1", 40002),
         "lo6": ClientInfo("::1", 40003),
         "auth": ClientInfo("192.0.2.7", 40004, "client.example.net"),
         "connrelay": ClientInfo("198.51.100.20", 40005, "partner-mx.example.org"),
         "rdclient": ClientInfo("203.0.113.5", 40006),
         "rejected": ClientInfo("192.0.2.66", 40007, "bad.example.net"),
         "unresolved": ClientInfo("192.0.2.200", 40008)}[kind]
    if kind == "auth":
        c.auth_type, c.auth_authen = "PLAIN", "bob"
    if c.name:
        c.resolve = "OK"
    return c


@pytest.fixture(scope="module")
def builtin(sm_bin, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("builtin"))
    build_instance(base, SHIPPED_CF, sm_bin)
    return base


@pytest.fixture(scope="module")
def debian(sm_bin, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("debian"))
    build_instance(base, DEBIAN_CF, sm_bin)
    return base


LOCAL, RELAY, DENIED, UNKNOWN = "local", "relay", "denied", "unknown"

# (recipient, client, expectation): LOCAL/RELAY accepted (relay False/True), DENIED
# "550 5.7.1 <rcpt>... Relaying denied", UNKNOWN "550 5.1.1 <rcpt>... User unknown",
# or the exact reply text.
BATTERY = [
    ("root@mail.example.com", "ext", LOCAL),
    ("ROOT@MAIL.EXAMPLE.COM.", "ext", LOCAL),
    ("info@mail.example.com", "ext", LOCAL),              # an alias
    ("info+tag@mail.example.com", "ext", LOCAL),          # alias without +detail
    ("sales@example.com", "ext", LOCAL),                  # second local domain
    ("root@[192.0.2.10]", "ext", LOCAL),                  # our own literal
    ("postmaster", "ext", LOCAL),
    ("nosuchuser@mail.example.com", "ext", UNKNOWN),
    ("nosuchuser@mail.example.com", "lo4", UNKNOWN),
    ("nosuchuser+x@mail.example.com", "auth", UNKNOWN),
    ("u@example.org", "ext", DENIED),
    ("u@example.org", "lo4", RELAY),
    ("u@example.org", "lo6", RELAY),
    ("u@example.org", "auth", RELAY),
    ("u@example.org", "connrelay", RELAY),
    ("u@example.org", "rdclient", RELAY),
    ("u@example.org", "unresolved", "550 5.7.1 <u@example.org>... Relaying denied. "
                                    "IP name lookup failed [192.0.2.200]"),
    ("U@EXAMPLE.ORG.", "ext", DENIED),
    ("u%example.org@mail.example.com", "ext", DENIED),    # %-hack
    ("u%example.org%mail.example.com@mail.example.com", "ext", DENIED),
    ("u%example.org@mail.example.com", "lo4", RELAY),
    ('"u@example.org"@mail.example.com', "ext", DENIED),  # quoted @
    ("@mail.example.com:u@example.org", "ext", DENIED),   # source route
    ("<@mail.example.com,@mail.example.com:u@example.org>", "ext", DENIED),
    ("u@[192.0.2.1]", "ext", DENIED),                     # foreign literal
    ("u@mail.example.com.example.org", "ext", DENIED),
    ("u@relay.example", "ext", RELAY),                    # relay-domains
    ("u@sub.relay.example", "ext", RELAY),                # ... and its subdomains
    ("u@notrelay.example", "ext", DENIED),                # not a label boundary
    ("u%relay.example@mail.example.com", "ext", RELAY),   # routed to relay.example
    ("u%example.org@relay.example", "ext", RELAY),        # relay.example's business
    ("u@partner.example", "ext", RELAY),                  # To: RELAY
    ("u@mx.partner.example", "ext", RELAY),
    ("u@partner.example.evil.example", "ext", DENIED),
    ("victim@mail.example.com", "ext", "550 5.7.1 <victim@mail.example.com>... Access denied"),
    ("victim@mail.example.com", "lo4", "550 5.7.1 <victim@mail.example.com>... Access denied"),
    ("moved@mail.example.com", "ext",
     "550 5.1.6 <moved@mail.example.com>... This mailbox has moved"),
    ("u@old.example", "lo4", "550 5.7.1 <u@old.example>... Access denied"),   # bare key
    ("|/bin/sh -c id", "lo4", "550 5.7.1 <|/bin/sh -c id>... Cannot mail directly to programs"),
    ("/etc/passwd", "ext", "550 5.7.1 </etc/passwd>... Cannot mail directly to files"),
    ("u@mail.example.com@example.org", "ext",
     "553 5.1.3 <u@mail.example.com@example.org>... Invalid route address"),
    ("example.org!u@mail.example.com", "ext", UNKNOWN),  # !-path: a local user name here
]


def expect(verdict, rcpt, want, text=None):
    __tracebackhide__ = True
    if want == LOCAL:
        assert verdict.reply is None and not verdict.relay and not verdict.discard, verdict
    elif want == RELAY:
        assert verdict.reply is None and verdict.relay and not verdict.discard, verdict
    elif want == DENIED:
        assert str(verdict.reply) == "550 5.7.1 <%s>... %s" % (rcpt, text or "Relaying denied")
        assert verdict.relay is True
    elif want == UNKNOWN:
        assert str(verdict.reply) == "550 5.1.1 <%s>... User unknown" % rcpt
        assert not verdict.relay
    else:
        assert str(verdict.reply) == want


@pytest.mark.parametrize("rcpt,who,want", BATTERY)
def test_builtin_battery(builtin, rcpt, who, want):
    pol = make_policy(builtin)
    assert not pol.cf_mode
    expect(pol.check_rcpt(client(who), "sender@sender.example", rcpt, {}), rcpt, want)


def test_connect_checks(builtin):
    pol = make_policy(builtin)
    assert pol.check_connect(client("ext")).reply is None
    assert str(pol.check_connect(client("rejected")).reply) == "550 5.7.1 Access denied"
    named = ClientInfo("192.0.2.50", 1, "host1.spammer.example")       # a parent domain
    assert str(pol.check_connect(named).reply) == "550 5.7.1 Access denied"
    later = pol.check_connect(ClientInfo("192.0.2.99", 2))
    assert (later.reply.code, later.reply.enhanced, later.reply.text) == (
        421, "4.7.1", "Come back later")
    assert pol.check_connect(ClientInfo("192.0.2.98", 3)).discard is True
    assert pol.check_connect(ClientInfo("198.51.100.20", 4)) .reply is None   # RELAY: fine
    assert pol.check_helo(client("ext"), "client.example.net").reply is None


def test_mail_checks(builtin):
    pol = make_policy(builtin)
    ext = client("ext")
    assert pol.check_mail(ext, "", {}).reply is None
    assert pol.check_mail(ext, "a@sender.example", {}).reply is None
    assert str(pol.check_mail(ext, "a@spam.example", {}).reply) == \
        "550 5.7.1 <a@spam.example>... Access denied"
    assert str(pol.check_mail(ext, "a@deep.sub.spam.example", {}).reply) == \
        "550 5.7.1 <a@deep.sub.spam.example>... Access denied"
    assert pol.check_mail(ext, "a@nice.spam.example", {}).reply is None    # OK wins below
    assert str(pol.check_mail(ext, "bad@sender.example", {}).reply) == \
        "550 5.7.1 <bad@sender.example>... We do not want your mail"
    assert str(pol.check_mail(ext, "bad+list@sender.example", {}).reply) == \
        "550 5.7.1 <bad+list@sender.example>... We do not want your mail"
    v = pol.check_mail(ext, "x@quiet.example", {})
    assert v.reply is None and v.discard is True
    assert str(pol.check_mail(ext, "x@old.example", {}).reply) == \
        "550 5.7.1 <x@old.example>... Access denied"
    assert str(pol.check_mail(ext, "joe", {}).reply) == \
        "553 5.5.4 <joe>... Domain name required for sender address joe"
    assert pol.check_mail(client("lo4"), "joe", {}).reply is None


def test_proper_authentication_text_and_fail2ban_log_line(builtin):
    lines = []
    pol = make_policy(builtin, {"AuthMechanisms": "PLAIN LOGIN"}, log=lines.append)
    v = pol.check_rcpt(client("ext"), "s@sender.example", "x@remote.example", {})
    expect(v, "x@remote.example", DENIED, "Relaying denied. Proper authentication required.")
    assert lines == ["ruleset=check_rcpt, arg1=<x@remote.example>, relay=client.example.net "
                     "[192.0.2.7], reject=550 5.7.1 <x@remote.example>... Relaying denied. "
                     "Proper authentication required."]
    # fail2ban's sendmail-reject failregex (filter.d/sendmail-reject.conf) matches it
    rx = (r"^ruleset=check_rcpt, arg1=(?P<email><\S+@\S+>), relay=(\S+ )?\[192\.0\.2\.7\], "
          r"reject=550 5\.7\.1(?: (?P=email)\.\.\.)?(?: Relaying denied\.)? "
          r"Proper authentication required\.$")
    assert re.match(rx, lines[0])


def test_access_db_is_read_and_reloaded(builtin, sm_bin, tmp_path):
    base = str(tmp_path / "inst")
    etc = build_instance(base, SHIPPED_CF, sm_bin, access="Connect:192.0.2.7\tREJECT\n")
    assert os.path.exists(os.path.join(etc, "access.db"))
    assert not os.path.exists(os.path.join(etc, "access"))     # only the makemap database
    pol = make_policy(base)
    assert str(pol.check_connect(client("ext")).reply) == "550 5.7.1 Access denied"
    assert pol.check_rcpt(client("ext"), "", "u@new.example", {}).reply is not None
    makemap(sm_bin, os.path.join(etc, "access"), "To:new.example\tRELAY\n")
    write(os.path.join(etc, "relay-domains"), "other.example\n")
    pol.reload()
    assert pol.check_connect(client("ext")).reply is None
    expect(pol.check_rcpt(client("ext"), "", "u@new.example", {}), "u@new.example", RELAY)
    expect(pol.check_rcpt(client("ext"), "", "u@other.example", {}), "u@other.example", RELAY)
    expect(pol.check_rcpt(client("ext"), "", "u@relay.example", {}), "u@relay.example", DENIED)


def test_keys_and_addresses():
    assert addr_macro("::1") == "IPv6:::1"
    assert addr_macro("::ffff:192.0.2.7") == "192.0.2.7"
    assert addr_macro("2001:DB8:0::1") == "IPv6:2001:db8::1"
    assert address_keys("192.0.2.7") == ["192.0.2.7", "192.0.2", "192.0", "192"]
    assert address_keys("IPv6:2001:db8::1") == ["IPv6:2001:db8::1", "IPv6:2001:db8",
                                                "IPv6:2001", "IPv6"]
    assert domain_keys("A.B.Example.ORG.") == ["a.b.example.org", "b.example.org",
                                               "example.org", "org"]
    v = Verdict()
    assert v.accepted and v.reply is None and not v.discard and not v.relay
    c = ClientInfo("192.0.2.7", 25)
    assert (c.name, c.helo, c.auth_type, c.auth_authen, c.tls, c.daemon_name) == (
        "", None, None, None, {}, "MTA")
    with pytest.raises(AttributeError):
        c.other = 1


# ---- Debian's cf: its check_relay / check_rcpt rulesets decide ----------------------------
DEBIAN_CASES = [
    ("root@mail.example.com", "ext", LOCAL),
    ("info@mail.example.com", "ext", LOCAL),
    ("nosuchuser@mail.example.com", "ext", UNKNOWN),
    ("u@example.org", "ext", DENIED),
    ("U@EXAMPLE.ORG.", "ext", DENIED),
    ("u%example.org@mail.example.com", "ext", DENIED),
    ('"u@example.org"@mail.example.com', "ext", DENIED),
    ("@mail.example.com:u@example.org", "ext", DENIED),
    ("u@[192.0.2.1]", "ext", DENIED),
    ("u@example.org", "lo4", RELAY),
    ("u@example.org", "lo6", RELAY),
    ("u@example.org", "connrelay", RELAY),
    ("u@example.org", "rdclient", RELAY),
    ("u@sub.relay.example", "ext", RELAY),
    ("u@partner.example", "ext", RELAY),
    # Debian's cf trusts no SASL mechanism (no TRUST_AUTH_MECH): authenticated is not enough
    ("u@example.org", "auth", DENIED),
    ("root@mail.example.com", "rejected", "550 5.7.1 <root@mail.example.com>... Access denied"),
    ("u@example.org", "unresolved",
     "550 5.7.1 <u@example.org>... Relaying denied. IP name lookup failed [192.0.2.200]"),
    ("|/bin/sh", "lo4", "550 5.7.1 <|/bin/sh>... Cannot mail directly to programs"),
]


@pytest.mark.parametrize("rcpt,who,want", DEBIAN_CASES)
def test_debian_cf_check_rcpt(debian, rcpt, who, want):
    pol = make_policy(debian)
    assert pol.cf_mode and pol.has["check_rcpt"] and pol.has["check_relay"]
    expect(pol.check_rcpt(client(who), "s@sender.example", rcpt, {}), rcpt, want)


def test_debian_cf_delayed_sender_checks(debian):
    lines = []
    pol = make_policy(debian, log=lines.append)
    ext = client("ext")
    assert pol.check_connect(ext).reply is None
    # delay_checks: MAIL is accepted, the sender is judged at RCPT by the cf
    assert pol.check_mail(ext, "a@spam.example", {}).reply is None
    assert str(pol.check_rcpt(ext, "a@spam.example", "root@mail.example.com", {}).reply) == \
        "550 5.7.1 <root@mail.example.com>... Access denied"
    assert str(pol.check_rcpt(ext, "s@nowhere.invalid", "root@mail.example.com", {}).reply) == \
        ("553 5.1.8 <root@mail.example.com>... Domain of sender address s@nowhere.invalid "
         "does not exist")
    assert lines[-1].startswith("ruleset=check_rcpt, arg1=<root@mail.example.com>, "
                                "relay=client.example.net [192.0.2.7], reject=553 5.1.8 ")


SMALL_CF_RULES = """
Scheck_relay
R$* $| $*\t\t$: $2
R192.0.2.13\t\t$#error $@ 4.3.2 $: "421 Too many open connections."

Scheck_rcpt
R$*\t\t$: $&{auth_authen} $| $&{daemon_name}
Rbob $| $*\t\t$# OK
Rcarol $| $*\t\t$#discard $: discard
R$* $| MSA\t\t$#error $@ 5.7.0 $: "530 Authentication required"
R$*\t\t$#error $@ 5.7.1 $: "550 Only bob " $&{client_addr} " " $&{rcpt_host}
"""


def test_cf_rulesets_see_the_session_macros(sm_bin, tmp_path):
    base = str(tmp_path / "small")
    etc = build_instance(base, SHIPPED_CF, sm_bin)
    with open(os.path.join(etc, "sendmail.cf"), "a") as f:
        f.write(SMALL_CF_RULES)
    pol = make_policy(base)
    assert pol.cf_mode and not pol.has["check_mail"]
    c = ClientInfo("192.0.2.13", 2525)
    assert str(pol.check_connect(c).reply) == "421 4.3.2 Too many open connections."
    assert pol.check_connect(client("ext")).reply is None
    ext = client("ext")
    assert str(pol.check_rcpt(ext, "", "u@example.org", {}).reply) == \
        "550 5.7.1 <u@example.org>... Only bob 192.0.2.7 example.org"
    bob = client("auth")
    expect(pol.check_rcpt(bob, "", "u@example.org", {}), "u@example.org", RELAY)
    bob.auth_authen = "carol"
    v = pol.check_rcpt(bob, "", "u@example.org", {})
    assert v.discard and v.reply is None
    msa = ClientInfo("192.0.2.8", 587, daemon_name="MSA")
    assert str(pol.check_rcpt(msa, "", "u@example.org", {}).reply) == \
        "530 5.7.0 <u@example.org>... Authentication required"
    # no check_mail in this cf: MAIL is not judged (as Sendmail), whatever the access map says
    assert pol.check_mail(ext, "a@spam.example", {}).reply is None
    # recipient()'s checks still apply after the ruleset said OK
    bob.auth_authen = "bob"
    expect(pol.check_rcpt(bob, "", "nosuchuser@mail.example.com", {}),
           "nosuchuser@mail.example.com", UNKNOWN)
