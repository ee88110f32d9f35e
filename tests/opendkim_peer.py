"""OpenDKIM (Debian's /usr/sbin/opendkim, unmodified) as a third-party milter for the tests.

    from opendkim_peer import dkim_key, opendkim, opendkim_factory     # fixtures
    from opendkim_peer import OpenDKIM, DkimKey

* `DkimKey.generate(directory)` makes a 2048-bit RSA key with `opendkim-genkey` (selector
  sel1); `.txt` is its TXT record value (bytes), `.dnsfunc` answers dkimpy's lookups of
  sel1._domainkey.<any of DOMAINS> with it (no network), `.sign(message, domain)` signs with
  dkimpy.  One key serves every domain of DOMAINS: example.test (ours: OpenDKIM signs for
  it) and remote.test (a remote signer whose mail OpenDKIM verifies).
* `OpenDKIM(directory, key, internal=("127.0.0.1",)).start()` runs `opendkim -f -x CONF` on
  inet:<free port>@127.0.0.1 (or a unix socket, unix=True) in Mode sv: mail whose client
  address is in `internal` and whose From domain is example.test is signed (d=example.test,
  s=sel1, relaxed/simple), the rest is verified, with an Authentication-Results header from
  AuthservID mta.example.test (AlwaysAddARHeader: also "dkim=none").  Keys are looked up in
  the config's TestDNSData file only: OpenDKIM never sends a DNS query.  `.spec` is the
  socket as an X line's S= takes it; `.log_text()` OpenDKIM's syslog lines (LogWhy: why it
  signed or verified), captured when running as root (see _syslog_argv); `.stop()` TERMs
  the PID this module started.
* `dkim_key` (session scope): a DkimKey.  `opendkim` (session scope): one started OpenDKIM
  on an inet port with that key, shared by the tests (it keeps no state between sessions).
  `opendkim_factory(**kw)` (function scope) starts more (e.g. unix=True), stopped after.

OpenDKIM refuses a config, key or socket under a group/world-writable directory (/tmp), so
everything lives in a 0755 directory under the checkout's run/peers/ (peers.peer_dir).  A
missing opendkim or opendkim-genkey fails the test under CI=true, else skips it.
"""
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading

import pytest

from conftest import IS_ROOT, require_program, unavailable
from peers import peer_dir, read_text, stop_process
from smtpd_helpers import free_port, wait_for

SELECTOR = "sel1"
OUR_DOMAIN = "example.test"          # OpenDKIM signs for it
REMOTE_DOMAIN = "remote.test"        # a remote signer (dkimpy) whose mail OpenDKIM verifies
DOMAINS = (OUR_DOMAIN, REMOTE_DOMAIN)
AUTHSERV_ID = "mta.example.test"


class DkimKey:
    """An RSA key pair for selector SELECTOR: private (path of the PEM file, 0600), txt (the
    TXT record value, bytes: 'v=DKIM1; h=sha256; k=rsa; p=...')."""

    def __init__(self, private, txt):
        self.private, self.txt = private, txt
        with open(private, "rb") as f:
            self.pem = f.read()

    @classmethod
    def generate(cls, directory, bits=2048):
        genkey = require_program("opendkim-genkey")
        proc = subprocess.run([genkey, "-b", str(bits), "-D", directory, "-d", OUR_DOMAIN,
                               "-s", SELECTOR], capture_output=True, timeout=60)
        if proc.returncode != 0:
            pytest.fail("opendkim-genkey failed: %r %r" % (proc.stdout, proc.stderr))
        private = os.path.join(directory, SELECTOR + ".private")
        os.chmod(private, 0o600)
        with open(os.path.join(directory, SELECTOR + ".txt"), "rb") as f:
            zone = f.read()         # a BIND snippet: the value is its quoted strings joined
        txt = b"".join(re.findall(rb'"([^"]*)"', zone)).strip()
        assert txt.startswith(b"v=DKIM1;") and b"p=" in txt, zone
        return cls(private, txt)

    def record_names(self):
        return ["%s._domainkey.%s" % (SELECTOR, d) for d in DOMAINS]

    def dnsfunc(self, name, timeout=5):
        """dkimpy's dnsfunc: the TXT value for our record names (dkimpy asks with a trailing
        dot), None for anything else; never the network."""
        if isinstance(name, bytes):
            name = name.decode("ascii")
        return self.txt if name.rstrip(".").lower() in self.record_names() else None

    def sign(self, message, domain=REMOTE_DOMAIN,
             headers=(b"from", b"to", b"subject", b"date", b"message-id")):
        """`message` (bytes) with a DKIM-Signature (relaxed/simple, d=domain, s=sel1)
        prepended, as a remote signer would send it."""
        import dkim
        sig = dkim.sign(message, SELECTOR.encode(), domain.encode(), self.pem,
                        canonicalize=(b"relaxed", b"simple"), include_headers=list(headers))
        return sig + message

    def verify(self, message):
        """dkimpy's verdict on the first DKIM-Signature of `message` (bytes), with dnsfunc."""
        import dkim
        return dkim.verify(message, dnsfunc=self.dnsfunc)


CONF = """\
# A private OpenDKIM for pysendmail's tests: nothing here reads /etc/opendkim*.
Mode                    sv
Socket                  {socket}
Domain                  {domain}
Selector                {selector}
KeyFile                 {keyfile}
Canonicalization        relaxed/simple
InternalHosts           {internal}
AuthservID              {authserv}
TestDNSData             file:{testdns}
AlwaysAddARHeader       yes
Syslog                  {syslog}
SyslogSuccess           yes
LogWhy                  yes
UMask                   007
"""


class OpenDKIM:
    """See the module docstring.  Attributes: directory, key, spec, port (None for unix),
    socket_path (unix only), config, out (stdout/stderr file), proc, pid."""

    def __init__(self, directory, key, internal=("127.0.0.1",), unix=False, capture_log=None):
        self.exe = require_program("opendkim")
        self.directory, self.key = directory, key
        self.internal = tuple(internal)
        self.unix = unix
        self.capture_log = IS_ROOT and bool(shutil.which("unshare")) if capture_log is None \
            else capture_log
        self.config = os.path.join(directory, "opendkim.conf")
        self.testdns = os.path.join(directory, "testdns")
        self.out = os.path.join(directory, "opendkim.out")
        self.port = self.socket_path = None
        self.proc = None
        self._log_lines, self._log_sock, self._log_thread = [], None, None
        self._closing = False

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def spec(self):
        if self.socket_path:
            return "unix:" + self.socket_path
        return "inet:%d@127.0.0.1" % self.port

    def _write_config(self):
        with open(self.testdns, "w") as f:
            for name in self.key.record_names():
                f.write("%s %s\n" % (name, self.key.txt.decode("ascii")))
        if self.unix:
            self.socket_path = os.path.join(self.directory, "opendkim.sock")
            listen = "local:" + self.socket_path
        else:
            self.port = free_port()
            listen = "inet:%d@127.0.0.1" % self.port
        with open(self.config, "w") as f:
            f.write(CONF.format(socket=listen, domain=OUR_DOMAIN, selector=SELECTOR,
                                keyfile=self.key.private, internal=", ".join(self.internal),
                                authserv=AUTHSERV_ID, testdns=self.testdns,
                                syslog="yes" if self.capture_log else "no"))

    def _connect(self):
        if self.socket_path:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(2)
            try:
                s.connect(self.socket_path)
            except OSError:
                s.close()
                raise
            return s
        return socket.create_connection(("127.0.0.1", self.port), timeout=2)

    def _ready(self):
        """A milter answers our option negotiation (SMFIC_OPTNEG: version 6, every action
        and protocol bit) with its own: something else holding the port does not."""
        try:
            with self._connect() as s:
                s.sendall(struct.pack(">IcIII", 13, b"O", 6, 0x1FF, 0x1FFFFF))
                reply = b""
                while len(reply) < 5:
                    chunk = s.recv(64)
                    if not chunk:
                        return False
                    reply += chunk
                return reply[4:5] == b"O"
        except OSError:
            return False

    def _poke(self):
        """A connection, to wake libmilter's listener."""
        try:
            self._connect().close()
        except OSError:
            pass

    def start(self, timeout=15, tries=3):
        """Start it; a port taken between free_port() and OpenDKIM's bind is retried."""
        for attempt in range(tries):
            self._write_config()
            argv = [self.exe, "-f", "-x", self.config]
            if self.capture_log:
                argv = self._syslog_argv(argv)
            with open(self.out, "ab") as out:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=subprocess.STDOUT, cwd=self.directory)
            if wait_for(lambda: self.proc.poll() is not None or self._ready(), timeout, 0.02) \
                    and self.proc.poll() is None:
                return self
            self.stop()
            if "smfi_opensocket" not in read_text(self.out) or attempt == tries - 1:
                break
        pytest.fail("opendkim did not start (status %r)\n--- %s\n%s\n--- log\n%s" % (
            self.proc.returncode, self.config, read_text(self.config), read_text(self.out)
            + self.log_text()))

    # ---- syslog capture -----------------------------------------------------------------

    def _syslog_argv(self, argv):
        """OpenDKIM logs only through syslog(3), i.e. to /dev/log, and this machine may have
        no syslog daemon.  As root, run it in a private mount namespace whose /dev is a
        tmpfs holding the real null/zero/random/urandom and, as `log`, a datagram socket
        this module reads: the host's /dev is never touched."""
        path = os.path.join(self.directory, "log.sock")
        if self._log_sock is None:
            self._log_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._log_sock.bind(path)
            self._log_thread = threading.Thread(target=self._read_log, daemon=True)
            self._log_thread.start()
        real = os.path.join(self.directory, "realdev")
        os.makedirs(real, exist_ok=True)
        script = ("set -e; mount --bind /dev {real}; mount -t tmpfs -o mode=0755 odkdev /dev; "
                  "for d in null zero random urandom; do touch /dev/$d; "
                  "mount --bind {real}/$d /dev/$d; done; "
                  "touch /dev/log; mount --bind {sock} /dev/log; umount -l {real}; "
                  'exec "$0" "$@"').format(real=real, sock=path)
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script] + argv

    def _read_log(self):
        sock = self._log_sock
        sock.settimeout(0.2)
        while not self._closing:
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            self._log_lines.append(data.decode("utf-8", "replace"))

    def log_text(self):
        """The syslog lines OpenDKIM sent so far (empty when not captured)."""
        return "\n".join(self._log_lines)

    def stop(self):
        """TERM the PID we started, KILL it after 10 s.  libmilter's listener notices the
        signal only when its poll() returns (every 5 s): a connection wakes it at once."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)

        def gone():
            if self.proc.poll() is not None:
                return True
            self._poke()            # wakes the listener
            return False
        wait_for(gone, 2, 0.05)
        stop_process(self.proc)

    def close(self):
        """stop(), and end the syslog reader."""
        self.stop()
        self._closing = True
        if self._log_thread is not None:
            self._log_thread.join(5)
            self._log_sock.close()


@pytest.fixture(scope="session")
def dkim_key():
    """A DkimKey (generated once per session) in its own run/peers/ directory."""
    try:
        import dkim  # noqa: F401
    except ImportError:
        unavailable("dkimpy is not installed (tests/run installs it)")
    directory = peer_dir("dkimkey")
    yield DkimKey.generate(directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def opendkim(dkim_key):
    """A started OpenDKIM (Mode sv, InternalHosts 127.0.0.1) with dkim_key, on an inet port."""
    dk = OpenDKIM(peer_dir("opendkim"), dkim_key).start()
    yield dk
    dk.close()
    shutil.rmtree(dk.directory, ignore_errors=True)


@pytest.fixture
def opendkim_factory(dkim_key):
    """opendkim_factory(**kw) -> a started OpenDKIM(peer dir, dkim_key, **kw); all stopped
    and removed when the test ends."""
    started = []

    def start(**kw):
        dk = OpenDKIM(peer_dir("opendkim"), dkim_key, **kw)
        started.append(dk)
        return dk.start()
    yield start
    for dk in started:
        dk.close()
        shutil.rmtree(dk.directory, ignore_errors=True)
