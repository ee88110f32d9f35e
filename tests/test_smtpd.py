"""The SMTP daemon (`sendmail -bD`) with clients no one here wrote: Python's smtplib.

Each test starts a private instance's daemon on a free loopback port (-odq, so what
was accepted stays in the queue to be inspected), talks to it and checks the queue,
the replies and the log.
"""
import os
import smtplib
import socket
import time

from smtpd_helpers import SMTPDaemon, queued, read_df, read_qf, wait_for

MSG = (b"From: alice@example.org\r\nTo: root@localhost\r\nSubject: hello\r\n\r\n"
       b"line one\r\n.starts with a dot\r\nend\r\n")


def test_smtplib_message_is_queued_with_received_and_envelope(daemon, sm_root):
    d = daemon()
    with smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.example") as s:
        code, lines = s.ehlo()
        assert code == 250
        for kw in (b"PIPELINING", b"8BITMIME", b"SIZE", b"DSN", b"SMTPUTF8", b"CHUNKING",
                   b"ENHANCEDSTATUSCODES", b"STARTTLS", b"HELP"):
            assert kw in lines, (kw, lines)
        refused = s.sendmail("alice@example.org", ["root@localhost"], MSG,
                             mail_options=["BODY=8BITMIME", "ENVID=env+2B1", "RET=HDRS"],
                             rcpt_options=["NOTIFY=SUCCESS,FAILURE",
                                           "ORCPT=rfc822;root@localhost"])
        assert refused == {}
    qids = queued(sm_root)
    assert len(qids) == 1
    qf = read_qf(sm_root, qids[0]).decode()
    assert "S alice@example.org" in qf
    assert "notify=SUCCESS,FAILURE" in qf
    assert "orcpt=rfc822;root@localhost" in qf
    assert "Z env+2B1" in qf and "X HDRS" in qf     # ENVID env+1, xtext in the qf
    assert "H Received: from client.example (localhost [127.0.0.1])" in qf
    assert "with ESMTP id %s" % qids[0] in qf
    assert "H Message-Id: " in qf and "H Date: " in qf      # added when missing
    assert read_df(sm_root, qids[0]) == b"line one\n.starts with a dot\nend\n"
    log = d.log_text()
    assert "%s: from=<alice@example.org>, size=" % qids[0] in log
    assert "proto=ESMTP, daemon=MTA, relay=localhost [127.0.0.1]" in log


def test_several_messages_on_one_connection_and_rset(daemon, sm_root):
    d = daemon()
    with smtplib.SMTP("127.0.0.1", d.port) as s:
        for i in range(5):
            s.sendmail("a@example.org", ["root@localhost"], b"Subject: %d\r\n\r\nx\r\n" % i)
        s.mail("b@example.org")
        s.rset()
        assert s.noop()[0] == 250
    assert len(queued(sm_root)) == 5


def test_bdat_chunking(daemon, sm_root):
    d = daemon()
    body = b"Subject: chunks\r\n\r\n" + b"0123456789\r\n" * 1000
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as c:
        f = c.makefile("rb")
        assert f.readline().startswith(b"220")
        c.sendall(b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<root@localhost>\r\n")
        replies = [f.readline() for _ in range(1)]
        while not replies[-1].startswith(b"250 "):
            replies.append(f.readline())
        assert f.readline().startswith(b"250 2.1.0")
        assert f.readline().startswith(b"250 2.1.5")
        half = len(body) // 2
        c.sendall(b"BDAT %d\r\n" % half + body[:half])
        assert f.readline().startswith(b"250 2.0.0 %d octets" % half)
        c.sendall(b"BDAT %d LAST\r\n" % (len(body) - half) + body[half:])
        line = f.readline()
        assert line.startswith(b"250 2.0.0 ") and b"Message accepted" in line, line
        c.sendall(b"QUIT\r\n")
    qids = queued(sm_root)
    assert len(qids) == 1
    assert read_df(sm_root, qids[0]) == b"0123456789\n" * 1000


def test_pipelined_transaction_replies_in_order(daemon, sm_root):
    d = daemon()
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as c:
        f = c.makefile("rb")
        assert f.readline().startswith(b"220")
        c.sendall(b"EHLO x\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        c.sendall(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<root@localhost>\r\n"
                  b"RCPT TO:<nosuchuser@localhost>\r\nRCPT TO:<root@localhost>\r\nDATA\r\n")
        got = [f.readline() for _ in range(5)]
        assert got[0].startswith(b"250 2.1.0")
        assert got[1].startswith(b"250 2.1.5")
        assert got[2].startswith(b"550 5.1.1"), got
        assert got[3].startswith(b"250 2.1.5")
        assert got[4].startswith(b"354")
        c.sendall(b"Subject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        assert f.readline().startswith(b"250 2.0.0")
        assert f.readline().startswith(b"221 2.0.0")
    assert len(queued(sm_root)) == 1


def test_commands_pipelined_past_the_end_of_data_wait_for_the_commit(daemon, sm_root):
    """What a client sends after the final dot, before its 250 (the commit waits for
    the disk): a second transaction and more than the 64 KiB kept meanwhile (reading
    stops, then goes on) is all answered, in order, after the first 250."""
    import threading
    d = daemon()
    noops = 20000                       # 120 000 octets of NOOP
    with socket.create_connection(("127.0.0.1", d.port), timeout=30) as c:
        f = c.makefile("rb")
        assert f.readline().startswith(b"220")
        c.sendall(b"EHLO x\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        got = []
        reader = threading.Thread(target=lambda: got.extend(
            f.readline() for _ in range(8 + noops + 1)))
        reader.start()
        c.sendall(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<root@localhost>\r\nDATA\r\n")
        time.sleep(0.2)
        c.sendall(b"Subject: one\r\n\r\nfirst\r\n.\r\n"
                  b"MAIL FROM:<b@example.org>\r\nRCPT TO:<root@localhost>\r\nDATA\r\n")
        time.sleep(0.2)
        c.sendall(b"Subject: two\r\n\r\nsecond\r\n.\r\n" + b"NOOP\r\n" * noops
                  + b"QUIT\r\n")
        reader.join(30)
    assert [line[:3] for line in got[:8]] == [b"250", b"250", b"354", b"250", b"250",
                                              b"250", b"354", b"250"], got[:8]
    assert got[3].startswith(b"250 2.0.0 ") and got[7].startswith(b"250 2.0.0 "), got[:8]
    assert all(line.startswith(b"250 2.0.0 OK") for line in got[8:8 + noops]), got[8:12]
    assert got[-1].startswith(b"221 2.0.0"), got[-1]
    assert sorted(read_df(sm_root, q) for q in queued(sm_root)) == [b"first\n", b"second\n"]


def test_message_size_limit(daemon, sm_root):
    d = daemon(["-O", "MaxMessageSize=2000"])
    with smtplib.SMTP("127.0.0.1", d.port) as s:
        s.ehlo()
        assert "2000" in s.esmtp_features["size"]
        code, text = s.mail("a@example.org", ["SIZE=5000"])
        assert code == 552 and text.startswith(b"5.2.3 Message size exceeds"), (code, text)
        s.rset()
        assert s.mail("a@example.org")[0] == 250          # no SIZE: found out at the end
        assert s.rcpt("root@localhost")[0] == 250
        code, text = s.data(b"Subject: big\r\n\r\n" + (b"y" * 70 + b"\r\n") * 100)
        assert code == 552 and b"5.2.3" in text
        s.rset()
        s.sendmail("a@example.org", ["root@localhost"], b"Subject: small\r\n\r\nok\r\n")
    assert len(queued(sm_root)) == 1
    # nothing of the refused message is left in the queue directory
    names = os.listdir(os.path.join(sm_root.path, "spool", "queue"))
    assert sorted(n[:2] for n in names) == ["df", "qf"]


def test_recipient_limit(daemon, sm_root):
    d = daemon(["-O", "MaxRecipientsPerMessage=3"])
    with smtplib.SMTP("127.0.0.1", d.port) as s:
        s.ehlo()
        s.mail("a@example.org")
        for _ in range(3):
            assert s.rcpt("root@localhost")[0] == 250
        code, text = s.rcpt("root@localhost")
        assert code == 452 and b"4.5.3" in text


def test_vrfy_and_expn_are_off(daemon):
    d = daemon()
    with smtplib.SMTP("127.0.0.1", d.port) as s:
        assert s.verify("root")[0] == 252
        s.putcmd("EXPN", "root")
        assert s.getreply()[0] == 502
        code, text = s.docmd("HELP")
        assert code == 214


def test_relay_denied_for_outside_client_and_logged_for_fail2ban(daemon, sm_root):
    d = daemon()
    # 127.0.0.2 has no name in /etc/hosts: an outside client as far as relaying goes
    with smtplib.SMTP("127.0.0.1", d.port, source_address=("127.0.0.2", 0)) as s:
        s.ehlo("outside.example")
        s.mail("a@example.org")
        code, text = s.rcpt("victim@elsewhere.example")
        assert code == 550 and b"5.7.1" in text and b"Relaying denied" in text
        assert s.rcpt("root@localhost")[0] == 250
    assert wait_for(lambda: "reject=550 5.7.1 <victim@elsewhere.example>" in d.log_text(), 5)
    assert "relay=[127.0.0.2]" in d.log_text()


def test_loopback_client_may_relay(daemon, sm_root):
    d = daemon()
    with smtplib.SMTP("127.0.0.1", d.port) as s:
        s.sendmail("a@example.org", ["friend@elsewhere.example"], b"Subject: r\r\n\r\nx\r\n")
    assert len(queued(sm_root)) == 1


def test_sigterm_lets_a_transaction_finish(daemon, sm_root):
    d = daemon()
    c = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    f = c.makefile("rb")
    assert f.readline().startswith(b"220")
    c.sendall(b"HELO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<root@localhost>\r\nDATA\r\n")
    for want in (b"250", b"250", b"250", b"354"):
        assert f.readline().startswith(want)
    idle = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    idle_f = idle.makefile("rb")
    assert idle_f.readline().startswith(b"220")
    d.signal(15)
    # the idle session is told at once; the one in DATA may finish its message
    assert idle_f.readline().startswith(b"421 4.3.2")
    c.sendall(b"Subject: last\r\n\r\nfinished\r\n.\r\n")
    assert f.readline().startswith(b"250 2.0.0")
    assert f.readline().startswith(b"421 4.3.2")
    c.close()
    idle.close()
    d.proc.wait(20)
    assert len(queued(sm_root)) == 1


def test_a_killed_worker_is_replaced(daemon, sm_root):
    import signal as sig
    d = daemon(["-O", "DaemonWorkers=2"])
    # one worker while nobody is connected (a queue run's child may come and go)
    assert wait_for(lambda: len(d.children()) == 1, 10), d.children()
    workers = d.children()
    os.kill(workers[0], sig.SIGKILL)
    assert wait_for(lambda: set(d.children()) - set(workers), 10)
    with smtplib.SMTP("127.0.0.1", d.port) as s:
        s.sendmail("a@example.org", ["root@localhost"], b"Subject: after\r\n\r\nx\r\n")
    assert len(queued(sm_root)) == 1
    assert "SMTP worker 0 (pid %d) ended with status -9; restarting" % workers[0] \
        in d.log_text() or "ended with status" in d.log_text()


def test_workers_are_added_while_sessions_outnumber_them(daemon, sm_root):
    d = daemon(["-O", "DaemonWorkers=3"])
    assert wait_for(lambda: len(d.children()) == 1, 10), d.children()
    held = []
    try:
        for _ in range(10):                  # more than 4 sessions per worker
            c = socket.create_connection(("127.0.0.1", d.port), timeout=10)
            c.makefile("rb").readline()
            held.append(c)
        assert wait_for(lambda: len(d.children()) >= 2, 10), d.children()
        assert wait_for(lambda: len(d.children()) == 3, 10), d.children()
        time.sleep(1.5)
        assert len(d.children()) == 3        # never more than DaemonWorkers
    finally:
        for c in held:
            c.close()


def test_timeout_closes_a_silent_client(daemon):
    d = daemon(["-O", "Timeout.command=2s"])
    with socket.create_connection(("127.0.0.1", d.port), timeout=20) as c:
        f = c.makefile("rb")
        assert f.readline().startswith(b"220")
        c.sendall(b"HELO x\r\nMAIL FROM:<a@exa")         # a command dripped, never ended
        assert f.readline().startswith(b"250")
        t0 = time.monotonic()
        line = f.readline()
        assert line.startswith(b"421 4.4.2"), line
        assert time.monotonic() - t0 < 12
        assert f.readline() == b""


def test_accepted_mail_is_delivered_through_aliases_by_the_root_queue_run(sm_root):
    """Without -odq the worker's commit wakes the service, whose queue run routes the
    recipients the daemon queued as given (aliases read there), and delivers."""
    os.makedirs(os.path.join(sm_root.path, "etc"), exist_ok=True)
    with open(os.path.join(sm_root.path, "etc", "aliases"), "w") as f:
        f.write("team: root\n")
    sm_root.run(["-bi"], prog="sendmail", check=True)
    d = SMTPDaemon(sm_root)
    try:
        with smtplib.SMTP("127.0.0.1", d.port) as s:
            s.sendmail("alice@example.org", ["team@localhost"],
                       b"Subject: via smtp\r\n\r\ndelivered\r\n")
        import getpass
        me = getpass.getuser()
        assert wait_for(lambda: sm_root.messages(me), 15), d.log_text()
        msg = sm_root.messages(me)[0]
        assert msg["Subject"] == "via smtp"
        assert msg.get_payload() == "delivered\n"
        assert "from alice@example.org" in msg.get_from() or msg["Return-Path"]
        assert wait_for(lambda: not queued(sm_root), 10)
    finally:
        d.stop()


def test_command_right_after_the_tls_handshake_is_answered(daemon):
    """A client that sends EHLO the moment its TLS handshake ends (TLS 1.3: in the same
    flight as its Finished) gets the answer: the decrypted bytes can reach the session
    before its own handshake step resumes, and must wait for it, not be dropped as
    pre-handshake input. 30 sessions from an asyncio client (smtplib is slower to
    speak and hid this)."""
    import asyncio
    import ssl
    d = daemon()

    async def one():
        r, w = await asyncio.open_connection("127.0.0.1", d.port)

        async def reply():
            while True:
                line = await asyncio.wait_for(r.readline(), 5)
                if line[3:4] != b"-":
                    return line
        await reply()
        w.write(b"EHLO client.example\r\n")
        await reply()
        w.write(b"STARTTLS\r\n")
        assert (await reply()).startswith(b"220")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        await asyncio.wait_for(w.start_tls(ctx), 5)
        w.write(b"EHLO client.example\r\n")
        assert (await reply()).startswith(b"250 ")
        w.write(b"QUIT\r\n")
        assert (await reply()).startswith(b"221")
        w.close()
        await w.wait_closed()

    async def main():
        for _ in range(30):
            await one()
    asyncio.run(main())
