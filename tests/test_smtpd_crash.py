"""`kill -9` of the whole SMTP daemon while clients send: every message that got its
250 is in the queue (group commit never answers early) and is delivered exactly once."""
import getpass
import os
import signal
import smtplib
import threading
import time

from smtpd_helpers import SMTPDaemon, queued, read_qf, wait_for


def _sender(port, tag, acked, stop):
    i = 0
    while not stop.is_set() and i < 400:
        subject = "crash-%s-%d" % (tag, i)
        i += 1
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.ehlo()
                s.mail("load@example.org")
                s.rcpt("root@localhost")
                code, text = s.data(("Subject: %s\r\n\r\nbody %s\r\n" % (subject, subject))
                                    .encode())
                if code == 250:
                    acked.append((subject, text.split()[1].decode()))
        except (OSError, smtplib.SMTPException):
            if stop.is_set():
                return
            time.sleep(0.01)


def _gone(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_kill_9_while_clients_send(sm_root):
    d = SMTPDaemon(sm_root, ["-odq", "-O", "DaemonWorkers=2"])
    acked, stop = [], threading.Event()
    threads = [threading.Thread(target=_sender, args=(d.port, t, acked, stop))
               for t in range(8)]
    for t in threads:
        t.start()
    try:
        assert wait_for(lambda: len(acked) >= 60, 30), "no load reached the daemon"
        victims = [d.pid] + d.children()
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        d.proc.wait(10)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        d.stop()
    for pid in victims:
        assert wait_for(lambda: _gone(pid), 5)
    in_queue = set(queued(sm_root))
    lost = [(s, q) for s, q in acked if q not in in_queue]
    assert lost == [], "acknowledged but not in the queue: %r" % lost[:5]
    for subject, qid in acked:
        assert ("Subject: %s" % subject).encode() in read_qf(sm_root, qid)
    # a queue run delivers what is there; every acknowledged message exactly once
    sm_root.run(["-q"], check=True, timeout=300)
    me = getpass.getuser()
    subjects = [m["Subject"] for m in sm_root.messages(me)]
    for subject, _ in acked:
        assert subjects.count(subject) == 1, subject
    assert len(subjects) == len(set(subjects)), "a message was delivered twice"
    assert queued(sm_root) == []
