"""Real milters for tests: pymilter programs (libmilter underneath: Sendmail's own side of
the protocol) started as subprocesses, and the cf lines that make a private instance use them.

    m = start_milter(tmp_path, mode="main")            # tests/milters/test_milter.py MODE
    m.spec                                              # 'inet:PORT@127.0.0.1' or 'unix:/path'
    m.events("eom")                                     # what it saw (JSON lines of its log)
    write_milter_cf(inst, [("m1", m.spec, "T")], options={"Milter.LogLevel": "9"})
    stop(m)
"""
import json
import os
import socket
import subprocess
import sys
import time

from conftest import REPO, unavailable

HERE = os.path.dirname(os.path.abspath(__file__))
MILTER = os.path.join(HERE, "milters", "test_milter.py")
CHAIN_MILTER = os.path.join(HERE, "milters", "chain_milter.py")
PYTHON = sys.executable
CF_SOURCE = os.path.join(REPO, "etc", "sendmail.cf")
MYNAME = "mx.example.test"


def _have_pymilter():
    p = subprocess.run([PYTHON, "-c", "import Milter"], capture_output=True)
    if p.returncode != 0:
        unavailable("pymilter is not installed (tests/run installs PIP_MILTER_PACKAGES)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Milter:
    def __init__(self, spec, log, proc):
        self.spec, self.log, self.proc = spec, log, proc

    def events(self, stage=None, wait=2.0):
        end = time.monotonic() + wait
        while True:
            with open(self.log) as f:
                ev = [json.loads(line) for line in f if line.strip()]
            out = [e for e in ev if stage is None or e["stage"] == stage]
            if out or time.monotonic() > end:
                return out
            time.sleep(0.05)

    def clear(self):
        open(self.log, "w").close()


def start_milter(tmp_path, mode="main", unix=False):
    _have_pymilter()
    log = str(tmp_path / ("milter-%s.log" % mode))
    open(log, "w").close()
    if unix:
        path = str(tmp_path / ("m-%s.sock" % mode))
        spec, lib = "unix:" + path, "unix:" + path
    else:
        port = free_port()
        spec, lib = "inet:%d@127.0.0.1" % port, "inet:%d@127.0.0.1" % port
    proc = subprocess.Popen([PYTHON, MILTER, lib, log, mode], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        try:
            if unix:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(path)
            else:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                raise AssertionError("milter exited %s" % proc.returncode)
            time.sleep(0.05)
    else:
        proc.kill()
        raise AssertionError("milter did not start")
    return Milter(spec, log, proc)


def stop(m):
    if m.proc.poll() is None:
        m.proc.terminate()
        try:
            m.proc.wait(5)
        except subprocess.TimeoutExpired:
            m.proc.kill()
            m.proc.wait(5)




def start_chain_milter(tmp_path, name, conf, unix=False):
    """tests/milters/chain_milter.py configured by `conf` (see its docstring)."""
    _have_pymilter()
    log = str(tmp_path / ("%s.log" % name))
    open(log, "w").close()
    if unix:
        path = str(tmp_path / ("%s.sock" % name))
        spec = "unix:" + path

        def probe():
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
    else:
        port = free_port()
        spec = "inet:%d@127.0.0.1" % port
        probe = lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close()  # noqa: E731
    proc = subprocess.Popen([PYTHON, CHAIN_MILTER, spec, log, json.dumps(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 10
    while True:
        try:
            probe()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > end:
                proc.kill()
                raise AssertionError("milter %s did not start" % name)
            time.sleep(0.05)
    return Milter(spec, log, proc)


def write_milter_cf(inst, milters, options=None, hostname=MYNAME):
    """inst's etc/sendmail.cf: the shipped cf with $j = hostname, an X line per
    (name, spec, flags[, timeouts]) and O InputMailFilters naming them in order;
    options: more O lines ({name: value}).  The inbound authentication checks are off
    (AuthChecks=none) unless options name them: the milter tests see only the filters'
    work."""
    with open(CF_SOURCE) as f:
        text = f.read()
    text = text.replace("#Dj mail.example.com\n", "Dj%s\n" % hostname, 1)
    assert ("Dj%s\n" % hostname) in text
    lines = []
    for entry in milters:
        name, spec, flags = entry[:3]
        timeouts = entry[3] if len(entry) > 3 else "C:5s;S:10s;R:10s;E:30s"
        lines.append("X%s, S=%s, F=%s, T=%s\n" % (name, spec, flags, timeouts))
    opts = {"InputMailFilters": ",".join(e[0] for e in milters), "AuthChecks": "none"}
    opts.update(options or {})
    lines += ["O %s=%s\n" % kv for kv in opts.items()]
    text += "\n# milters of the test\n" + "".join(lines)
    etc = os.path.join(inst.path, "etc")
    os.makedirs(etc, exist_ok=True)
    with open(os.path.join(etc, "sendmail.cf"), "w") as f:
        f.write(text)
