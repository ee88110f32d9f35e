"""The real callers through the fixed path /usr/sbin/sendmail, after `pysendmail install`.

Root only. Everything happens in one SystemSandbox session (a private mount and PID
namespace with overlays over /usr/sbin, /usr/lib, /usr/bin, /etc, /var/..., /run; the
machine's own files are never touched): the installed `pysendmail install`, then
Debian's cron daemon running a root crontab with MAILTO=root and a crontab of `nobody`,
PHP's mail() with its compiled-in sendmail_path, bsd-mailx `mail -s`, and submissions
as the unprivileged user `nobody` (which land in the maildrop and are picked up by a
root `sendmail -q`). The mail is read back from /var/mail/<user> with `mailbox`.
The session lasts until cron's first minute boundary (at most about 60 s).
"""
import mailbox
import os
import re
import shlex
import subprocess
import tempfile

import pytest

from conftest import IS_ROOT, SystemSandbox, require_program, unavailable

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root")

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

SESSION = r"""
out=$1; pysendmail=$2
exec 2>"$out/session.err"
echo "start $(date -u +%T)" >"$out/times"
"$pysendmail" install >"$out/install.txt" 2>&1; echo $? >"$out/install.rc"

# Submissions as nobody first: they must wait in the maildrop for a root queue run.
cd /
printf 'Subject: from nobody\n\nplain body\n' | "${NOBODY[@]}" /usr/sbin/sendmail -i root
echo $? >"$out/nobody.rc"
printf 'Subject: forged sender\n\nforged body\n' | "${NOBODY[@]}" /usr/sbin/sendmail -i -f alice@example.com root
echo $? >"$out/nobody-f.rc"
ls -ln /var/spool/pysendmail/maildrop >"$out/maildrop-before.txt"

# Debian cron with only our crontabs (no system jobs).
printf 'SHELL=/bin/sh\nPATH=/usr/local/sbin:/usr/local/bin:/sbin:/bin:/usr/sbin:/usr/bin\n' >/etc/crontab
rm -f /etc/cron.d/*
mkdir -p /var/spool/cron/crontabs
printf 'MAILTO=root\n* * * * * echo "cron stdout line"; echo "cron stderr line" >&2\n' \
    >/var/spool/cron/crontabs/root
printf '* * * * * echo "output from the job of nobody"\n' >/var/spool/cron/crontabs/nobody
chown root /var/spool/cron/crontabs/root; chown nobody /var/spool/cron/crontabs/nobody
chmod 600 /var/spool/cron/crontabs/root /var/spool/cron/crontabs/nobody
timeout 90 cron -f -L 15 >"$out/cron.log" 2>&1 &
cronpid=$!

# PHP's mail() with the compiled-in sendmail_path (/usr/sbin/sendmail -t -i).
php -n -r 'echo mail("root", "php default path", "php line 1\n.\nphp line 3", "From: php@example.test") ? "sent" : "failed";' \
    >"$out/php.txt" 2>&1
# bsd-mailx: always /usr/sbin/sendmail -i -t
printf 'mailx body line 1\nline 2\n' | mail -s "mailx subject" root; echo $? >"$out/mailx.rc"
# git send-email's second choice, and the alias rebuild through the installed link
printf 'Subject: via /usr/lib/sendmail\n\nlib body\n' | /usr/lib/sendmail -i root; echo $? >"$out/usrlib.rc"
/usr/bin/newaliases >"$out/newaliases.txt" 2>&1; echo $? >"$out/newaliases.rc"

# Wait (bounded) for cron's two mails, running the queue as root (this also picks up
# the maildrop), then stop cron.
for i in $(seq 1 85); do
    /usr/sbin/sendmail -q
    grep -q '^Subject: Cron <root@' /var/mail/root 2>/dev/null \
        && grep -q '^Subject: Cron <nobody@' /var/mail/nobody 2>/dev/null && break
    sleep 1
done
kill "$cronpid" 2>/dev/null; wait "$cronpid"
/usr/sbin/sendmail -q
ls -ln /var/spool/pysendmail/maildrop >"$out/maildrop-after.txt"
ls /var/spool/pysendmail/queue >"$out/queue-after.txt"
/usr/bin/mailq >"$out/mailq.txt" 2>&1
for u in root nobody; do cp /var/mail/$u "$out/mbox.$u" 2>/dev/null; done
echo "end $(date -u +%T)" >>"$out/times"
"""


class Session:
    def __init__(self, out):
        self.out = out

    def text(self, name):
        with open(os.path.join(self.out, name), encoding="utf-8", errors="replace") as f:
            return f.read()

    def messages(self, user):
        path = os.path.join(self.out, "mbox." + user)
        assert os.path.exists(path), "no mail for %s; session log:\n%s" % (user, self.text("session.err"))
        box = mailbox.mbox(path, create=False)
        try:
            return [box.get_message(k) for k in box.keys()]
        finally:
            box.close()

    def message(self, user, subject_re):
        found = [m for m in self.messages(user) if re.fullmatch(subject_re, m["Subject"] or "", re.S)]
        assert len(found) == 1, "%s: %d messages with Subject %r among %r" % (
            user, len(found), subject_re, [m["Subject"] for m in self.messages(user)])
        return found[0]


@pytest.fixture(scope="module")
def session(sm_bin, tmp_path_factory):
    for program in ("php", "mail", "cron", "setpriv", "timeout"):
        require_program(program)
    probe = subprocess.run(NOBODY + ["test", "-x", os.path.join(sm_bin, "sendmail")])
    if probe.returncode != 0:
        unavailable("user nobody cannot run %s/sendmail (a parent directory is not o+x)"
                    % sm_bin)
    base = str(tmp_path_factory.mktemp("system-callers"))
    mode = SystemSandbox.check_available(base)
    sandbox = SystemSandbox(os.path.join(base, "sandbox"), mode)
    sandbox.forget_pysendmail()
    out = tempfile.mkdtemp(dir=base)
    os.chmod(out, 0o755)
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
           "HOME": "/root"}
    script = "NOBODY=(%s)\nset -- %s %s\n%s" % (
        " ".join(NOBODY), shlex.quote(out), shlex.quote(os.path.join(sm_bin, "pysendmail")), SESSION)
    sandbox.run(script, env=env, timeout=240)
    return Session(out)


def envelope_local_part(msg):
    rp = msg["Return-Path"]
    assert rp and rp.startswith("<") and rp.endswith(">"), rp
    return rp[1:-1].split("@")[0]


def test_install_made_pysendmail_the_system_mta(session):
    assert session.text("install.rc").strip() == "0", session.text("install.txt")
    assert "link /usr/sbin/sendmail -> " in session.text("install.txt")


def test_php_default_sendmail_path(session):
    assert session.text("php.txt") == "sent"
    msg = session.message("root", "php default path")
    assert msg["From"] == "php@example.test" and msg["To"] == "root"
    assert msg.get_payload() == "php line 1\n.\nphp line 3\n"
    assert envelope_local_part(msg) == "root"
    assert msg["Message-ID"] and msg["Date"] and msg["Received"]


def test_bsd_mailx(session):
    assert session.text("mailx.rc").strip() == "0"
    msg = session.message("root", "mailx subject")
    assert msg.get_payload() == "mailx body line 1\nline 2\n"
    assert msg["Content-Transfer-Encoding"] == "8bit"
    assert envelope_local_part(msg) == "root"


def test_cron_mails_root_job_output(session):
    msg = session.message("root", r"Cron <root@[^>]+> .*cron stdout line.*")
    assert msg["From"] == "root (Cron Daemon)"
    assert msg["To"] == "root"
    assert "cron stdout line\n" in msg.get_payload() and "cron stderr line\n" in msg.get_payload()
    assert msg.get_all("X-Cron-Env")
    assert envelope_local_part(msg) == "root"


def test_cron_job_of_nobody_is_mailed_as_nobody(session):
    """cron runs sendmail as the crontab's owner: through the maildrop, sender nobody."""
    msg = session.message("nobody", r"Cron <nobody@[^>]+> .*")
    assert msg.get_payload() == "output from the job of nobody\n"
    assert msg["From"] == "root (Cron Daemon)"  # what cron writes; the envelope is the truth
    assert envelope_local_part(msg) == "nobody"


def test_nonroot_submission_goes_through_the_maildrop(session):
    assert session.text("nobody.rc").strip() == "0"
    assert session.text("nobody-f.rc").strip() == "0"
    before = [line.split() for line in session.text("maildrop-before.txt").splitlines()[1:]]
    assert len(before) >= 2 and all(f[2] == "65534" for f in before), session.text("maildrop-before.txt")
    assert session.text("maildrop-after.txt").splitlines()[1:] == []
    msg = session.message("root", "from nobody")
    assert msg.get_payload() == "plain body\n"
    assert envelope_local_part(msg) == "nobody"
    assert "nobody" in (msg["From"] or "")


def test_nonroot_f_is_flagged(session):
    msg = session.message("root", "forged sender")
    assert msg.get_payload() == "forged body\n"
    warning = msg["X-Authentication-Warning"] or ""
    assert "nobody" in warning and "alice@example.com" in warning, msg.as_string()


def test_queue_is_empty_at_the_end(session):
    assert [f for f in session.text("queue-after.txt").split() if f.startswith("qf")] == []


def test_usr_lib_sendmail_and_newaliases_links(session):
    assert session.text("usrlib.rc").strip() == "0"
    msg = session.message("root", "via /usr/lib/sendmail")
    assert msg.get_payload() == "lib body\n"
    assert session.text("newaliases.rc").strip() == "0", session.text("newaliases.txt")
    assert session.text("newaliases.txt").startswith("/etc/aliases: ")
