"""Routing by the cf's ruleset 0, end to end through the installed `sendmail`.

Each test builds a private instance whose etc/sendmail.cf is the shipped cf with its
/etc/mail paths pointed at files of the test (virtusertable, virtual hosts, local host
names), submits with `sendmail` as cron and PHP do, and checks where the message lands:
a local mailbox, an alias's members, a program's output, a file, an error reply with the
cf's status and text, or the queue for the SMTP agent with the relay host.  `-bv` shows the
same (mailer, host, user) triples.  A few tests use a hand-written cf for the mailers the
shipped one does not produce (discard) and for routing failures.
"""
import os
import pwd
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_CF = os.path.join(REPO, "pysendmail", "data", "sendmail.cf")
ME = pwd.getpwuid(os.geteuid()).pw_name


class Site:
    """A private instance in a 0755 work dir, with the shipped cf and its map files."""

    def __init__(self, sm_bin, base, extra_cf="", virtuser="", virthosts="", aliases=""):
        self.bin = sm_bin
        self.base = base
        self.etc = os.path.join(base, "etc")
        self.out = os.path.join(base, "out")
        os.makedirs(self.etc)
        os.makedirs(self.out)
        os.chmod(self.out, 0o1777)      # programs and files of aliases may run as DefaultUser
        self.env = dict(os.environ, PYSENDMAIL_ROOT=base)
        paths = {}
        for name, text in (("virtusertable", virtuser), ("virthosts", virthosts),
                           ("local-host-names", "")):
            paths[name] = os.path.join(self.etc, name)
            with open(paths[name], "w") as f:
                f.write(text)
        with open(SHIPPED_CF) as f:
            cf = f.read()
        for name, path in paths.items():
            cf = cf.replace("/etc/mail/" + name, path)
        lines = cf.split("\n")
        extra = [ln for ln in extra_cf.split("\n") if ln]
        for ln in extra:        # a D or O line given by the test replaces the shipped one
            key = ln.split("=")[0] if ln.startswith("O") else ln[:2]
            lines = [x for x in lines if not (x.startswith(key) and
                                              (x.startswith("O") or len(x) >= 2))]
        with open(os.path.join(self.etc, "sendmail.cf"), "w") as f:
            f.write("\n".join(lines + extra) + "\n")
        with open(os.path.join(self.etc, "aliases"), "w") as f:
            f.write("postmaster: %s\n%s" % (ME, aliases))
        self.run(["-bi"], prog="sendmail", check=0)

    def run(self, args, input=b"", prog="sendmail", check=None):
        proc = subprocess.run([os.path.join(self.bin, prog)] + args, input=input,
                              capture_output=True, env=self.env, timeout=60)
        if check is not None:
            assert proc.returncode == check, (args, proc.returncode, proc.stdout, proc.stderr)
        return proc

    def send(self, *rcpts, subject="routing", check=0, mode="-odi"):
        msg = ("From: tester@example.com\nSubject: %s\n\nbody of %s\n" % (subject, subject))
        return self.run([mode, "-oi", "-f", "tester@example.com"] + list(rcpts),
                        input=msg.encode(), check=check)

    def mailbox(self, user=ME):
        path = os.path.join(self.base, "mail", user)
        if not os.path.exists(path):
            return ""
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def verify(self, *addrs):
        p = self.run(["-bv"] + list(addrs))
        return p.returncode, p.stdout.decode().splitlines()

    def queued(self):
        """(mailer, host, user) of each queued recipient, from the control files."""
        from pysendmail.queue.spool import Spool
        spool = Spool(os.path.join(self.base, "spool", "queue"))
        out = []
        for qid, _state in spool.entries():
            env = spool.load(qid)
            out.extend((r.mailer, r.host, r.user, r.state) for r in env.recipients)
        return out


@pytest.fixture
def site(sm_bin, workdir):
    def make(**kw):
        return Site(sm_bin, os.path.join(workdir, "site%d" % len(os.listdir(workdir))), **kw)
    return make


VIRT = ("info@hosted.example\tteam\n"
        "bob@hosted.example\t%s\n"
        "bad@hosted.example\terror:nouser 550 No such user here\n"
        "gone@hosted.example\terror:5.1.6:550 This mailbox has moved\n"
        "away@hosted.example\tsomeone@elsewhere.example\n"
        "@catchall.example\t%s\n"
        "@forward.example\t%%1@elsewhere.example\n" % (ME, ME))


def test_local_user_and_alias_land_in_the_mailbox(site):
    s = site(aliases="team: %s\n" % ME)
    s.send(ME, subject="direct")
    s.send("team", subject="alias")
    s.send("%s@localhost" % ME, subject="localhost")
    box = s.mailbox()
    assert "Subject: direct" in box and "Subject: alias" in box
    assert "Subject: localhost" in box
    rc, lines = s.verify(ME, "team")
    assert rc == 0
    assert lines == ["%s... deliverable: mailer local, user %s" % (ME, ME)]


def test_program_and_file_recipients_from_aliases(site):
    s = site()
    prog_out = os.path.join(s.out, "prog.out")
    file_out = os.path.join(s.out, "archive")
    with open(os.path.join(s.etc, "aliases"), "a") as f:
        f.write('pipe: "|/bin/sh -c \'cat > %s\'"\narchive: %s\n' % (prog_out, file_out))
    s.run(["-bi"], check=0)
    s.send("pipe", "archive", subject="to programs")
    with open(prog_out) as f:
        assert "Subject: to programs" in f.read()
    with open(file_out) as f:
        text = f.read()
    assert text.startswith("From tester@example.com ") and "Subject: to programs" in text
    rc, lines = s.verify("pipe", "archive")
    assert rc == 0
    assert lines[0] == "\"|/bin/sh -c 'cat > %s'\"... deliverable: mailer prog, " \
                       "user |/bin/sh -c 'cat > %s'" % (prog_out, prog_out)
    assert lines[1] == "%s... deliverable: mailer *file*, user %s" % (file_out, file_out)


def test_virtusertable_hosted_domains(site):
    s = site(virtuser=VIRT, virthosts="hosted.example\ncatchall.example\nforward.example\n",
             aliases="team: %s\n" % ME)
    s.send("info@hosted.example", subject="virt-alias")
    s.send("bob@hosted.example", subject="virt-user")
    s.send("anything@catchall.example", subject="virt-catchall")
    box = s.mailbox()
    for subject in ("virt-alias", "virt-user", "virt-catchall"):
        assert "Subject: %s" % subject in box
    rc, lines = s.verify("away@hosted.example", "x@forward.example")
    assert rc == 0
    assert lines == [
        "away@hosted.example... deliverable: mailer esmtp, host elsewhere.example, "
        "user someone@elsewhere.example",
        "x@forward.example... deliverable: mailer esmtp, host elsewhere.example, "
        "user x@elsewhere.example"]


def test_error_mailer_reply_and_exit_status(site):
    s = site(virtuser=VIRT, virthosts="hosted.example\n")
    p = s.send("bad@hosted.example", check=67)
    assert b"bad@hosted.example... No such user here" in p.stdout
    p = s.send("gone@hosted.example", check=67, mode="-odq")
    assert b"gone@hosted.example... This mailbox has moved" in p.stdout
    rc, lines = s.verify("bad@hosted.example")
    assert rc == 67 and lines == ["bad@hosted.example... No such user here"]
    # -oem: the failure comes back as a DSN with the cf's status, nothing else is lost
    s.run(["-odi", "-oem", "-oi", "-f", ME, "gone@hosted.example"],
          input=b"Subject: moved\n\nx\n", check=0)
    box = s.mailbox()
    assert "Status: 5.1.6" in box and "This mailbox has moved" in box


def test_remote_goes_to_esmtp_or_to_the_smart_host(site):
    s = site()
    rc, lines = s.verify("user@example.org", "user@[192.0.2.9]")
    assert rc == 0
    assert lines == ["user@example.org... deliverable: mailer esmtp, host example.org, "
                     "user user@example.org",
                     "user@[192.0.2.9]... deliverable: mailer esmtp, host [192.0.2.9], "
                     "user user@[192.0.2.9]"]
    relay = site(extra_cf="DSsmarthost.example")
    rc, lines = relay.verify("user@example.org", "user@[192.0.2.9]")
    assert rc == 0
    assert lines[0] == ("user@example.org... deliverable: mailer relay, "
                        "host smarthost.example, user user@example.org")
    assert "mailer esmtp, host [192.0.2.9]" in lines[1]      # literals go direct
    relay.send("user@example.org", mode="-odq")
    assert ("relay", "smarthost.example", "user@example.org", "pending") in relay.queued()
    assert "user@example.org" in relay.run([], prog="mailq", check=0).stdout.decode()


DISCARD_CF = """V10/test
Cw localhost
O AliasFile={aliases}
Mlocal, P=[LOCAL], F=lsDFMAw5:/|@qSPfhn9, S=0, R=0, A=mail.local -l
Mesmtp, P=[IPC], F=mDFMuXa, S=0, R=0, E=\\r\\n, A=TCP $h
S3
R$* < $* > $*\t$2
R$+ @ $+\t$1 < @ $2 >
S0
R$* < @ drop.example > $*\t$#discard $: discard
R$* < @ later.example > $*\t$#error $@ 4.3.0 $: "451 Try again later"
R$* < @ $+ > $*\t$#esmtp $@ $2 $: $1 @ $2
R$+\t$#local $: $1
"""


def test_discard_and_temporary_errors(sm_bin, workdir):
    base = os.path.join(workdir, "inst")
    os.makedirs(os.path.join(base, "etc"))
    aliases = os.path.join(base, "etc", "aliases")
    with open(aliases, "w") as f:
        f.write("postmaster: %s\n" % ME)
    with open(os.path.join(base, "etc", "sendmail.cf"), "w") as f:
        f.write(DISCARD_CF.format(aliases=aliases))
    env = dict(os.environ, PYSENDMAIL_ROOT=base)
    sm = os.path.join(sm_bin, "sendmail")
    subprocess.run([sm, "-bi"], env=env, check=True, capture_output=True)
    p = subprocess.run([sm, "-odi", "-oi", "x@drop.example", ME], env=env,
                       input=b"Subject: some dropped\n\nx\n", capture_output=True)
    assert p.returncode == 0, p
    with open(os.path.join(base, "mail", ME)) as f:
        assert "Subject: some dropped" in f.read()
    # a 4xx from ruleset 0 keeps the message queued, routed again at each run
    p = subprocess.run([sm, "-odq", "-oi", "y@later.example"], env=env,
                       input=b"Subject: later\n\nx\n", capture_output=True)
    assert p.returncode == 0, p
    q = subprocess.run([os.path.join(sm_bin, "mailq")], env=env, capture_output=True)
    assert b"y@later.example" in q.stdout
    subprocess.run([sm, "-q"], env=env, check=True, capture_output=True)
    q = subprocess.run([os.path.join(sm_bin, "mailq")], env=env, capture_output=True)
    assert b"y@later.example" in q.stdout and b"Try again later" in q.stdout


def test_broken_cf_fails_before_reading_and_loses_nothing(sm_bin, workdir):
    base = os.path.join(workdir, "broken")
    os.makedirs(os.path.join(base, "etc"))
    cf = os.path.join(base, "etc", "sendmail.cf")
    with open(cf, "w") as f:
        f.write("V10/test\nS0\nR$+\t$#local $: $1\nKbad nosuchclass arg\nS3\nR$* $( \t$1\n")
    env = dict(os.environ, PYSENDMAIL_ROOT=base)
    p = subprocess.run([os.path.join(sm_bin, "sendmail"), "-oi", ME], env=env,
                       input=b"Subject: x\n\nx\n", capture_output=True)
    assert p.returncode == 78, p
    assert cf.encode() + b":" in p.stdout + p.stderr


def test_masquerading_rewrites_header_senders_at_delivery(site):
    s = site(extra_cf="Djmail.example.com\nDMmasq.example")
    msg = (b"From: Tester <tester@mail.example.com>\nTo: %s@mail.example.com, "
           b"Other <other@example.org>\nSubject: masq\n\nbody\n" % ME.encode())
    s.run(["-odi", "-oi", "-f", "tester@mail.example.com", ME], input=msg, check=0)
    box = s.mailbox()
    assert "From: Tester <tester@masq.example>" in box      # HdrFromL masquerades
    assert "Return-Path: <tester@mail.example.com>" in box  # the envelope is not
    assert "Other <other@example.org>" in box               # recipients stay as written
    plain = site()
    plain.run(["-odi", "-oi", ME], input=msg, check=0)
    assert "From: Tester <tester@mail.example.com>" in plain.mailbox()
