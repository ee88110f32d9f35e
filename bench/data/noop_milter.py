#!/usr/bin/env python3
"""A no-op milter for the bench's `milter` phase: CONTINUE to everything, every stage on.

Usage: noop_milter.py PORT [STATS_FILE]

Listens on inet:PORT@127.0.0.1 (pymilter over libmilter, one thread per MTA
connection, listen backlog 1024). Every callback is implemented and answers
CONTINUE (eom too: no action is requested), none is marked @nocallback or
@noreply, so the negotiation asks the MTA for every stage (connect, helo,
mail, rcpt, data, each header, eoh, body chunks, eom) and a reply to each:
the MTA pays one round trip per stage, which is what the phase measures.

STATS_FILE (optional): a thread rewrites it every 0.25 s (write + rename) as
one line of JSON, {"connect": n, "helo": n, ..., "at": <time.time()>}: the
callbacks counted so far, so the bench can check that every stage was
exchanged per message without costing the measured path a write.

Security stance: binds loopback only; when started as root it drops to
nobody/nogroup before it opens the socket (the port is above 1024); it only
answers, never acts on the mail; the stats file is written by the bench's
choice of path (opened, as root, before the drop; nothing else is written).
"""
import json
import os
import sys
import threading
import time

import Milter
import milter as _libmilter

STAGES = ("connect", "helo", "mail", "rcpt", "data", "header", "eoh", "body", "eom", "abort", "close",
          "unknown")
COUNTS = dict.fromkeys(STAGES, 0)
_LOCK = threading.Lock()


def _count(stage):
    with _LOCK:
        COUNTS[stage] += 1


class NoopMilter(Milter.Base):
    """Every callback on, each answers CONTINUE (the _bytes variants: no decoding work)."""

    def connect(self, hostname, family, hostaddr):
        _count("connect")
        return Milter.CONTINUE

    def hello(self, heloname):
        _count("helo")
        return Milter.CONTINUE

    def envfrom(self, f, *params):
        return self.envfrom_bytes()

    def envfrom_bytes(self, *b):
        _count("mail")
        return Milter.CONTINUE

    def envrcpt(self, to, *params):
        return self.envrcpt_bytes()

    def envrcpt_bytes(self, *b):
        _count("rcpt")
        return Milter.CONTINUE

    def data(self):
        _count("data")
        return Milter.CONTINUE

    def header(self, field, value):
        return self.header_bytes(field, value)

    def header_bytes(self, fld, val):
        _count("header")
        return Milter.CONTINUE

    def eoh(self):
        _count("eoh")
        return Milter.CONTINUE

    def body(self, blk):
        _count("body")
        return Milter.CONTINUE

    def unknown(self, cmd):
        _count("unknown")
        return Milter.CONTINUE

    def eom(self):
        _count("eom")
        return Milter.CONTINUE

    def abort(self):
        _count("abort")
        return Milter.CONTINUE

    def close(self):
        _count("close")
        return Milter.CONTINUE


def _stats_writer(fd, period=0.25):
    """Rewrite the stats file (fd opened before the privilege drop) from COUNTS every
    `period` s, in place: a reader that catches a half-written line reads it again."""
    while True:
        with _LOCK:
            snap = dict(COUNTS)
        snap["at"] = time.time()
        data = (json.dumps(snap) + "\n").encode()
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        except OSError:
            pass
        time.sleep(period)


def _drop_privileges():
    """root -> nobody/nogroup (no supplementary groups); anyone else stays as is."""
    if os.getuid() != 0:
        return
    import grp
    import pwd
    pw = pwd.getpwnam("nobody")
    try:
        gid = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        gid = pw.pw_gid
    os.setgroups([])
    os.setgid(gid)
    os.setuid(pw.pw_uid)


def main(argv):
    if len(argv) < 2 or not argv[1].isdigit():
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    port = int(argv[1])
    if len(argv) > 2:
        fd = os.open(argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        threading.Thread(target=_stats_writer, args=(fd,), daemon=True).start()
    _drop_privileges()
    Milter.factory = NoopMilter
    _libmilter.setbacklog(1024)
    print(f"noop_milter: pid {os.getpid()} on inet:{port}@127.0.0.1, pymilter {Milter.__version__}",
          file=sys.stderr, flush=True)
    Milter.runmilter(f"noop{port}", f"inet:{port}@127.0.0.1", 60)
    print("noop_milter: stopped; callbacks " + json.dumps(COUNTS), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
