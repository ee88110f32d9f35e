"""The SMTP daemon against clients no one here wrote: swaks (TLS, AUTH, pipelining, bare
LF), Postfix's smtp-source, Python's ssl/smtplib for implicit TLS, and raw sockets for
the attacks (STARTTLS injection) that well-behaved clients never make.
"""
import os
import socket
import ssl
import smtplib
import subprocess

import pytest

from smtpd_helpers import queued, read_qf, wait_for

PASSWORD = "s3cret pass"


@pytest.fixture
def with_user(sm_root):
    """A password file with user `alice` (written by `pysendmail passwd`)."""
    os.makedirs(os.path.join(sm_root.path, "etc"), exist_ok=True)
    sm_root.run(["passwd", "alice"], prog="pysendmail", input=(PASSWORD + "\n").encode(),
                check=True)
    path = os.path.join(sm_root.path, "etc", "sasl-passwd")
    assert os.stat(path).st_mode & 0o777 == 0o600
    return path


def swaks(require_program, *args, timeout=60):
    exe = require_program("swaks")
    return subprocess.run([exe, "--silent", "1", "--hide-all", "-n"] + list(args),
                          capture_output=True, timeout=timeout)


def swaks_full(require_program, *args, timeout=60):
    exe = require_program("swaks")
    return subprocess.run([exe] + list(args), capture_output=True, timeout=timeout)


# -- TLS and AUTH ---------------------------------------------------------------------------

def test_swaks_starttls_and_auth_plain(daemon, sm_root, with_user, require_program):
    d = daemon()
    p = swaks_full(require_program, "--server", "127.0.0.1:%d" % d.port,
                   "--from", "alice@example.org", "--to", "root@localhost", "--tls",
                   "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", PASSWORD)
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0, out + p.stderr.decode(errors="replace")
    assert "TLS started with cipher" in out
    assert "235 2.0.0 OK Authenticated" in out
    qids = queued(sm_root)
    assert len(qids) == 1
    qf = read_qf(sm_root, qids[0]).decode()
    assert "with ESMTPSA id %s" % qids[0] in qf
    assert "(version=TLSv1.3 cipher=" in qf
    log = d.log_text()
    assert "STARTTLS=server, relay=localhost [127.0.0.1], version=TLSv1.3" in log
    assert "AUTH=server, relay=localhost [127.0.0.1], authid=alice, mech=PLAIN" in log


def test_swaks_auth_login_and_a_wrong_password(daemon, sm_root, with_user, require_program):
    d = daemon()
    ok = swaks(require_program, "--server", "127.0.0.1:%d" % d.port, "--from", "a@example.org",
               "--to", "root@localhost", "--tls", "--auth", "LOGIN", "--auth-user", "alice",
               "--auth-password", PASSWORD)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = swaks_full(require_program, "--server", "127.0.0.1:%d" % d.port, "--from",
                     "a@example.org", "--to", "root@localhost", "--tls", "--auth", "LOGIN",
                     "--auth-user", "alice", "--auth-password", "wrong")
    assert bad.returncode != 0
    assert b"535 5.7.0 authentication failed" in bad.stdout
    assert len(queued(sm_root)) == 1


def test_auth_is_offered_only_over_tls_to_outside_clients(daemon, with_user):
    d = daemon()
    with smtplib.SMTP("127.0.0.1", d.port, source_address=("127.0.0.2", 0)) as s:
        s.ehlo("outside.example")
        assert not s.has_extn("auth")
        s.starttls(context=_client_context())
        s.ehlo("outside.example")
        assert sorted(s.esmtp_features["auth"].split()) == ["LOGIN", "PLAIN"]
        assert not s.has_extn("starttls")
    with smtplib.SMTP("127.0.0.1", d.port) as s:              # loopback: without TLS too
        s.ehlo()
        assert s.has_extn("auth")


def test_authenticated_outside_client_may_relay_and_others_may_not(daemon, sm_root, with_user):
    d = daemon()
    with smtplib.SMTP("127.0.0.1", d.port, source_address=("127.0.0.2", 0)) as s:
        s.starttls(context=_client_context())
        s.ehlo("outside.example")
        s.mail("a@example.org")
        code, text = s.rcpt("friend@elsewhere.example")
        assert code == 550
        assert text == b"5.7.1 <friend@elsewhere.example>... Relaying denied. Proper " \
                       b"authentication required."
        s.rset()
        s.login("alice", PASSWORD)
        s.sendmail("alice@example.org", ["friend@elsewhere.example"], b"Subject: r\r\n\r\nx\r\n")
    assert len(queued(sm_root)) == 1


def test_auth_failures_are_throttled_and_match_fail2ban(daemon, sm_root, with_user,
                                                          require_program):
    d = daemon()
    for _ in range(3):                  # three connections, one wrong password each
        with smtplib.SMTP("127.0.0.1", d.port) as s:
            s.ehlo()
            code, text = s.docmd("AUTH", "PLAIN " + _plain("alice", "nope"))
            assert code == 535
    with smtplib.SMTP("127.0.0.1", d.port) as s:   # counted over all workers: refused
        s.ehlo()
        code, text = s.docmd("AUTH", "PLAIN " + _plain("alice", PASSWORD))
        assert code == 421 and b"Too many AUTH failures" in text
    regex = require_program("fail2ban-regex")
    assert wait_for(lambda: d.log_text().count("AUTH failure (") >= 3, 5)
    p = subprocess.run([regex, d.log, "/etc/fail2ban/filter.d/sendmail-auth.conf"],
                       capture_output=True, timeout=60)
    out = p.stdout.decode(errors="replace")
    assert "Failregex: 3 total" in out and "3 matched" in out, out[-3000:]


def test_relay_rejections_match_fail2bans_sendmail_reject(daemon, require_program):
    d = daemon()
    with smtplib.SMTP("127.0.0.1", d.port, source_address=("127.0.0.3", 0)) as s:
        s.ehlo("outside.example")
        s.mail("a@example.org")
        assert s.rcpt("victim@elsewhere.example")[0] == 550
    regex = require_program("fail2ban-regex")
    assert wait_for(lambda: "Relaying denied" in d.log_text(), 5)
    p = subprocess.run([regex, d.log, "/etc/fail2ban/filter.d/sendmail-reject.conf"],
                       capture_output=True, timeout=60)
    out = p.stdout.decode(errors="replace")
    assert "Failregex: 1 total" in out and "1 matched" in out, out[-2000:]


def test_implicit_tls_listener_with_python_ssl(daemon, sm_root):
    d = daemon(modifiers="s", name="SMTPS")
    with smtplib.SMTP_SSL("127.0.0.1", d.port, context=_client_context()) as s:
        s.ehlo()
        assert not s.has_extn("starttls")
        s.sendmail("a@example.org", ["root@localhost"], b"Subject: smtps\r\n\r\nx\r\n")
    qids = queued(sm_root)
    assert len(qids) == 1
    assert "with ESMTPS id" in read_qf(sm_root, qids[0]).decode()


def test_msa_with_m_a_requires_auth(daemon, sm_root, with_user):
    d = daemon(modifiers="Ea", name="MSA")
    with smtplib.SMTP("127.0.0.1", d.port) as s:
        s.ehlo()
        code, text = s.mail("a@example.org")
        assert code == 530 and text.startswith(b"5.7.0")
        s.login("alice", PASSWORD)
        s.sendmail("a@example.org", ["root@localhost"], b"Subject: msa\r\n\r\nx\r\n")
    assert len(queued(sm_root)) == 1


# -- attacks -----------------------------------------------------------------------------------

def test_starttls_command_injection_is_discarded(daemon, sm_root):
    """CVE-2011-0411: commands sent with STARTTLS in one packet must not run after TLS."""
    d = daemon()
    raw = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    f = raw.makefile("rb")
    assert f.readline().startswith(b"220")
    raw.sendall(b"EHLO x\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    raw.sendall(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<root@localhost>\r\n")
    assert f.readline().startswith(b"220 2.0.0")
    tls = _client_context().wrap_socket(raw, server_hostname="localhost")
    tf = tls.makefile("rb")
    tls.sendall(b"EHLO x\r\n")
    while not tf.readline().startswith(b"250 "):
        pass
    tls.sendall(b"RCPT TO:<root@localhost>\r\n")
    line = tf.readline()
    assert line.startswith(b"503 5.0.0 Need MAIL"), line      # the injected MAIL never ran
    tls.sendall(b"QUIT\r\n")
    tls.close()
    assert queued(sm_root) == []


def test_swaks_bare_lf_is_refused_and_nothing_queued(daemon, sm_root, tmp_path,
                                                      require_program):
    d = daemon()
    msg = tmp_path / "bare.eml"
    msg.write_bytes(b"Subject: bare LF\nFrom: s@example.org\n\nline\n.\nMAIL FROM:<x@y>\r\n.")
    p = swaks_full(require_program, "--server", "127.0.0.1:%d" % d.port, "--from",
                   "s@example.org", "--to", "root@localhost", "--data", str(msg),
                   "--no-data-fixup")
    out = p.stdout.decode(errors="replace")
    assert "554 5.5.2 Bare linefeed (LF) not allowed" in out, out
    assert queued(sm_root) == []


def test_swaks_pipelining(daemon, sm_root, require_program):
    d = daemon()
    p = swaks_full(require_program, "--server", "127.0.0.1:%d" % d.port, "--from",
                   "a@example.org", "--to", "root@localhost,postmaster@localhost",
                   "--pipeline")
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0, out
    assert "PIPELINING" in out
    assert len(queued(sm_root)) == 1


def test_smtp_source_200_messages_over_10_sessions(daemon, sm_root, require_program):
    d = daemon()
    src = require_program("smtp-source")
    p = subprocess.run([src, "-s", "10", "-m", "200", "-l", "4096", "-f", "a@example.org",
                        "-t", "root@localhost", "127.0.0.1:%d" % d.port],
                       capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert len(queued(sm_root)) == 200
    assert d.log_text().count("daemon=MTA, relay=localhost [127.0.0.1]") == 200   # smtp-source says HELO


# -- helpers -----------------------------------------------------------------------------------

def _client_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE            # the daemon's self-signed certificate
    return ctx


def _plain(user, password):
    import base64
    return base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()
