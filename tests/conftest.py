"""Shared test fixtures: the installed commands, private instances, peers and root sandboxes.

The suite tests the *installed* commands (tests/run does `pip install .` into .venv):
`sm_bin` is the directory holding them. Fixtures and helpers:

  sm_bin              directory of the installed `sendmail`, `mailq`, `newaliases`, `pysendmail`
  sm_root             a fresh private instance (PYSENDMAIL_ROOT) with .run() / .mailq() / .mailbox()
  daemon              starts SMTP daemons (smtpd_helpers.SMTPDaemon, -odq) on sm_root, stops them after
  require_program     fixture returning require_program(name) -> path (fails under CI=true, else skips)
  root_only           decorator: skip unless running as root (also marks the test `root`)
  workdir             a fresh 0755 directory under the checkout's run/ (for peers that refuse /tmp)
  system_sandbox      a copy-on-write view of the system directories, entered with unshare
                      (root only), so tests can install pysendmail as the system MTA safely

Helpers that are plain functions (require_program, root_only) can also be imported with
`from conftest import ...`.
"""
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
IS_ROOT = os.geteuid() == 0


def _loopback_resolver():
    """Every pysendmail the tests start resolves through a resolv.conf naming only
    127.0.0.1 (PYSENDMAIL_RESOLV_CONF replaces /etc/resolv.conf), so no test can send
    a DNS query off this host; tests that need DNS start their own server
    (dns_helpers.py) and write the instance's etc/resolv.conf."""
    import tempfile
    path = os.path.join(tempfile.gettempdir(), "pysendmail-tests-resolv.conf")
    text = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
    try:
        with open(path) as f:
            if f.read() == text:
                return path
    except OSError:
        pass
    tmp = "%s.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


os.environ["PYSENDMAIL_RESOLV_CONF"] = _loopback_resolver()


@pytest.fixture(scope="session", autouse=True)
def _failing_resolver():
    """As root, the resolver of every pysendmail the tests start is a DNS server on
    loopback that answers SERVFAIL to every question: a lookup nobody prepared fails at
    once, as a temporary failure, instead of waiting for a timeout (the daemon's
    authentication checks ask DNS about every message).  Tests that need answers start
    their own server (dns_helpers.py) and write the instance's resolv.conf."""
    if not IS_ROOT:
        yield None
        return
    import shutil
    import tempfile
    from dns_helpers import LoopbackDns
    server = LoopbackDns()
    server.servfail_all = True
    where = tempfile.mkdtemp(prefix="pysendmail-resolver-")     # readable by `nobody` too
    os.chmod(where, 0o755)
    path = server.write_resolv_conf(os.path.join(where, "resolv.conf"))
    os.chmod(path, 0o644)
    before = os.environ["PYSENDMAIL_RESOLV_CONF"]
    os.environ["PYSENDMAIL_RESOLV_CONF"] = path
    yield server
    os.environ["PYSENDMAIL_RESOLV_CONF"] = before
    server.stop()
    shutil.rmtree(where, ignore_errors=True)

root_only = pytest.mark.skipif(not IS_ROOT, reason="needs root")


def unavailable(message):
    """Something a test needs is missing here: a failure under CI=true (tests/run provides
    everything), else a skip."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_program(name):
    """The path of program `name`; a missing one fails the test under CI=true, else skips it."""
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path:
        return path
    unavailable("%s is not installed (tests/run installs it as root)" % name)


def check_peer_ancestors(path):
    """Peers (Postfix, Dovecot, OpenDKIM, smtp-sink) run parts of themselves as other users
    and refuse unsafe parents: every ancestor of `path` must be searchable by others and
    writable only by its owner."""
    import stat
    parent = path
    while True:
        mode = os.stat(parent).st_mode
        if not mode & stat.S_IXOTH or mode & (stat.S_IWGRP | stat.S_IWOTH):
            unavailable("%s (mode %04o) does not suit peers' work dirs: the checkout must "
                        "live under directories that are o+x and not group/world-writable"
                        % (parent, stat.S_IMODE(mode)))
        if parent == "/":
            return
        parent = os.path.dirname(parent)


@pytest.fixture(name="require_program")
def require_program_fixture():
    return require_program


@pytest.fixture(scope="session")
def sm_bin():
    """Directory of the installed commands: the bin dir of the running interpreter's prefix
    (tests/run runs pytest with .venv's Python), else the checkout's .venv/bin when pytest
    runs under another interpreter (then run tests/run first: that install may be stale)."""
    bindir = os.path.join(sys.prefix, "bin")
    if not os.path.isfile(os.path.join(bindir, "sendmail")):
        bindir = os.path.join(REPO, ".venv", "bin")
    for command in ("sendmail", "mailq", "newaliases", "pysendmail"):
        if not os.path.isfile(os.path.join(bindir, command)):
            pytest.fail("%s/%s is missing: run the tests with tests/run (it installs pysendmail "
                        "into .venv), or with the Python of a prefix where it is installed"
                        % (bindir, command))
    return bindir


class Instance:
    """A private pysendmail instance under `path` (PYSENDMAIL_ROOT=path). It lives under
    pytest's tmp_path, whose 0700 ancestors other users cannot enter: deliver only to the
    invoking user (root in CI) there; use `workdir` for instances other users must reach."""

    def __init__(self, bindir, path):
        self.bindir = bindir
        self.path = str(path)
        self.env = dict(os.environ, PYSENDMAIL_ROOT=self.path)

    def command(self, name="sendmail"):
        return os.path.join(self.bindir, name)

    def run(self, args, input=b"", check=None, prog="sendmail", timeout=60, env=None):
        """Run an installed command (default `sendmail`) with `args` and stdin bytes `input`.
        check=None: any exit status; True: must be 0; an int: must be that status.
        Returns the CompletedProcess (stdout and stderr as bytes)."""
        proc = subprocess.run([self.command(prog)] + list(args), input=input, capture_output=True,
                              env=env or self.env, timeout=timeout)
        if check is not None:
            want = 0 if check is True else check
            assert proc.returncode == want, "%s %s exited %d, not %d\nstdout: %r\nstderr: %r" % (
                prog, " ".join(args), proc.returncode, want, proc.stdout, proc.stderr)
        return proc

    def mailq(self, *args):
        """The text `mailq` prints (exit status 0 required)."""
        return self.run(list(args), prog="mailq", check=True).stdout.decode("utf-8", "replace")

    def mailbox(self, user):
        """Path of the mbox mailbox of local user `user`."""
        return os.path.join(self.path, "mail", user)

    def messages(self, user):
        """The messages delivered to `user`, as a list of mailbox.mboxMessage (may be empty)."""
        import mailbox

        path = self.mailbox(user)
        if not os.path.exists(path):
            return []
        box = mailbox.mbox(path, create=False)
        try:
            return [box.get_message(key) for key in box.keys()]
        finally:
            box.close()


@pytest.fixture
def sm_root(sm_bin, tmp_path):
    """A fresh private instance directory; see `Instance`."""
    base = tmp_path / "pysendmail"
    base.mkdir()
    return Instance(sm_bin, base)


@pytest.fixture
def daemon(sm_root):
    """daemon(extra=(), **kw) -> a running smtpd_helpers.SMTPDaemon of `sm_root` (-odq);
    every one started is stopped when the test ends."""
    from smtpd_helpers import SMTPDaemon
    started = []

    def start(extra=(), **kw):
        d = SMTPDaemon(sm_root, ["-odq"] + list(extra), **kw)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def workdir(request):
    """A fresh directory run/<test name>/ in the checkout, mode 0755. Peers such as OpenDKIM
    refuse group/world-writable ancestors and Postfix/Dovecot hand work to other users, so
    every ancestor must be searchable by others and writable only by its owner."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in request.node.nodeid)[-120:]
    path = os.path.join(REPO, "run", name)
    check_peer_ancestors(REPO)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    os.chmod(os.path.join(REPO, "run"), 0o755)
    os.chmod(path, 0o755)
    return path


# ---- root sandboxes ------------------------------------------------------------------------

SANDBOX_DIRS = ("/usr/sbin", "/usr/lib", "/usr/bin", "/etc", "/var/spool", "/var/lib",
                "/var/mail", "/run")


class SystemSandbox:
    """Copy-on-write views (overlayfs) of the system directories that installing an MTA
    touches. Each run() enters a new private mount and PID namespace (`unshare`), mounts
    an overlay over each of SANDBOX_DIRS and runs a bash script there; the changes persist
    under `base` from one run() to the next, and the machine's own files are never touched.
    When the script ends, every process it left behind dies with the PID namespace.

    Mode "overlay": the upper layers live in `base`. Mode "tmpfs" (where `base` cannot
    hold upper layers, e.g. a container whose root is itself an overlay): they live on a
    tmpfs inside the namespace and are carried from run to run in base/state.tar (whiteouts
    and opaque-directory xattrs included). PYSENDMAIL_TEST_SANDBOX=tmpfs forces it."""

    def __init__(self, base, mode="overlay"):
        self.base = str(base)
        self.mode = mode
        os.makedirs(self.base, exist_ok=True)
        layers = self.base if mode == "overlay" else os.path.join(self.base, "tmpfs")
        self.state = os.path.join(self.base, "state.tar")
        self.prelude = ["set -e"]
        if mode == "tmpfs":
            os.makedirs(layers, exist_ok=True)
            self.prelude += [
                "mount -t tmpfs -o mode=0700 pysendmail-sandbox %s" % layers,
                "if [ -e %s ]; then tar --xattrs --xattrs-include='*' -xpf %s -C %s; fi"
                % (self.state, self.state, layers)]
        for d in SANDBOX_DIRS:
            name = d.strip("/").replace("/", "_")
            upper, work = (os.path.join(layers, kind, name) for kind in ("upper", "work"))
            self.prelude.append("mkdir -p %s %s" % (upper, work))
            self.prelude.append("mount -t overlay overlay -o lowerdir=%s,upperdir=%s,workdir=%s %s"
                                % (d, upper, work, d))
        self.prelude.append("set +e")
        self.epilogue = []
        if mode == "tmpfs":
            self.epilogue = ["tar --xattrs --xattrs-include='*' -cpf %s.new -C %s upper && mv %s.new %s"
                             % (self.state, layers, self.state, self.state)]

    @staticmethod
    def check_available(base):
        """The mode that works here ("overlay" or "tmpfs"); fails (CI) or skips if none does."""
        if not IS_ROOT:
            pytest.skip("needs root")
        require_program("unshare")
        p = os.path.join(base, "probe")
        for d in ("u", "w", "m", "t"):
            os.makedirs(os.path.join(p, d), exist_ok=True)
        probes = {
            "overlay": "mount -t overlay overlay -o lowerdir=/usr/sbin,upperdir={p}/u,workdir={p}/w {p}/m",
            "tmpfs": "mount -t tmpfs probe {p}/t && mkdir {p}/t/u {p}/t/w && mount -t overlay overlay "
                     "-o lowerdir=/usr/sbin,upperdir={p}/t/u,workdir={p}/t/w {p}/m",
        }
        wanted = os.environ.get("PYSENDMAIL_TEST_SANDBOX")
        errors = []
        for mode, probe in probes.items():
            if wanted and mode != wanted:
                continue
            proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                   probe.format(p=p)], capture_output=True, text=True)
            if proc.returncode == 0:
                shutil.rmtree(p, ignore_errors=True)
                return mode
            errors.append("%s: %s" % (mode, proc.stderr.strip()))
        shutil.rmtree(p, ignore_errors=True)
        unavailable("overlay mounts do not work here: %s" % "; ".join(errors))

    def run(self, script, env=None, timeout=180, check=True, input=None):
        """Run bash `script` inside the sandbox; returns the CompletedProcess (text)."""
        body = "\n".join(self.prelude + ["(", script, ")", "rc=$?"] + self.epilogue + ["exit $rc", ""])
        cmd = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc",
               "bash", "-c", body]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                              input=input)
        if check and proc.returncode != 0:
            raise AssertionError("sandbox script exited %d\n--- script\n%s\n--- stdout\n%s\n"
                                 "--- stderr\n%s" % (proc.returncode, script, proc.stdout, proc.stderr))
        return proc

    def changes(self):
        """Every path the sandbox holds changed (its upper layers), with type, mode, owner,
        size and mtime: equal lists mean nothing at all was written in between."""
        layers = self.base if self.mode == "overlay" else os.path.join(self.base, "tmpfs")
        out = self.run("cd %s/upper && find . -printf '%%p %%y %%m %%u %%s %%T@\\n' | sort" % layers).stdout
        return out.splitlines()

    def forget_pysendmail(self):
        """Hide any pysendmail system state the machine itself has (spool, state, run dir,
        unit), so the sandbox starts as a machine where pysendmail was never installed."""
        self.run("rm -rf /var/spool/pysendmail /var/lib/pysendmail /run/pysendmail "
                 "/etc/systemd/system/pysendmail.service")

    def python(self, code, *args, env=None):
        """Run Python `code` in the sandbox with this interpreter; returns its stdout."""
        import shlex

        return self.run(" ".join(shlex.quote(a) for a in [sys.executable, "-c", code] + list(args)),
                        env=env).stdout

    def snapshot(self, paths):
        """{path: description} as seen inside the sandbox: type, mode, uid, gid, symlink
        target, size and sha256 of regular files; None for a missing path."""
        import json

        return json.loads(self.python(_SNAPSHOT_CODE, *paths))

    def read(self, path):
        """The bytes of `path` inside the sandbox, or None if it does not exist."""
        import base64
        import json

        data = json.loads(self.python(
            "import base64,json,sys\ntry:\n d=base64.b64encode(open(sys.argv[1],'rb').read()).decode()\n"
            "except FileNotFoundError:\n d=None\nprint(json.dumps(d))", path))
        return None if data is None else base64.b64decode(data)


_SNAPSHOT_CODE = """
import hashlib, json, os, stat, sys
out = {}
for p in sys.argv[1:]:
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        out[p] = None
        continue
    d = {"mode": "%04o" % stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
    if stat.S_ISLNK(st.st_mode):
        d.update(type="symlink", target=os.readlink(p))
    elif stat.S_ISREG(st.st_mode):
        d.update(type="file", size=st.st_size,
                 sha256=hashlib.sha256(open(p, "rb").read()).hexdigest(), mtime_ns=st.st_mtime_ns)
    elif stat.S_ISDIR(st.st_mode):
        d.update(type="directory")
    else:
        d.update(type="other")
    out[p] = d
print(json.dumps(out))
"""


@pytest.fixture
def system_sandbox(tmp_path):
    """A fresh SystemSandbox (root only; skips or, under CI, fails without overlayfs)."""
    mode = SystemSandbox.check_available(str(tmp_path))
    sandbox = SystemSandbox(tmp_path / "sandbox", mode)
    sandbox.forget_pysendmail()
    return sandbox
