"""pysendmail as installed for the bench: a venv, private instances, their effects.

The bench measures the INSTALLED commands (what cron and PHP run): `bench/run`
makes `bench/.work/venv` and `pip install`s the project into it
(non-editable), so `venv/bin/sendmail` is the real shim with its
`#!... -I -S` line. Each bench case gets its own private instance
(PYSENDMAIL_ROOT=bench/.work/roots/<name>), whose paths are asked from the
installed package itself (pysendmail.layout), so the bench follows the
layout if it moves.

Instance offers what the harness needs around a timed run: the environment,
`count()` of effects (queued control files, delivered messages), `clean()`,
and `settle()` (wait, bounded, until background delivery emptied the queue).

Security stance: runs the installed commands as the bench's user (root) with
PYSENDMAIL_ROOT set, so nothing outside bench/.work is written.
"""
import json
import os
import shutil
import subprocess
import time

BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root", "USER": "root", "LOGNAME": "root", "LANG": "C.UTF-8",
}


class Venv:
    def __init__(self, path):
        self.path = os.path.abspath(path)
        self.bin = os.path.join(self.path, "bin")
        names = sorted(n for n in os.listdir(self.bin) if n.startswith("python3."))
        # venv/bin/python3.X is a symlink to the real interpreter (no shell shim)
        self.python = os.path.join(self.bin, names[0] if names else "python3")
        self.sendmail = os.path.join(self.bin, "sendmail")

    def real_python(self):
        return os.path.realpath(self.python)

    def site_packages(self):
        return subprocess.run([self.python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, timeout=30, cwd="/").stdout.strip()

    def shebang(self, script):
        try:
            with open(script, "rb") as f:
                return f.readline().decode(errors="replace").strip()
        except OSError:
            return None

    def pysendmail_version(self):
        r = subprocess.run([self.python, "-c", "import pysendmail, os; print(getattr(pysendmail, '__version__', '?'),"
                            " os.path.dirname(pysendmail.__file__))"],
                           capture_output=True, text=True, timeout=30, cwd="/")
        return r.stdout.strip() or r.stderr.strip()[-300:]


class Instance:
    """One private pysendmail instance under `root`."""

    def __init__(self, venv, root, mail_user="root"):
        self.venv, self.root, self.mail_user = venv, os.path.abspath(root), mail_user
        os.makedirs(self.root, exist_ok=True)
        self.env = dict(BASE_ENV, PYSENDMAIL_ROOT=self.root)
        code = ("import json, pysendmail.layout as l; L = l.for_root(%r); "
                "print(json.dumps({'queue': L.queue, 'maildrop': L.maildrop, 'mail_dir': L.mail_dir,"
                " 'spool': L.spool, 'log_file': L.log_file}))" % self.root)
        r = subprocess.run([venv.python, "-c", code], capture_output=True, text=True, timeout=30, cwd="/")
        if r.returncode == 0:
            paths = json.loads(r.stdout)
        else:                       # package missing or layout changed: the documented defaults
            paths = {"queue": os.path.join(self.root, "spool", "queue"),
                     "maildrop": os.path.join(self.root, "spool", "maildrop"),
                     "mail_dir": os.path.join(self.root, "mail"),
                     "spool": os.path.join(self.root, "spool"),
                     "log_file": os.path.join(self.root, "state", "log", "maillog")}
        self.queue, self.maildrop = paths["queue"], paths["maildrop"]
        self.mail_dir, self.spool, self.log_file = paths["mail_dir"], paths["spool"], paths["log_file"]
        self._settle_failures = 0

    def argv(self, *args):
        return [self.venv.sendmail, *args]

    # -- what the runs left behind -------------------------------------------------------------
    @staticmethod
    def _files(d, prefixes=None):
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return []
        return [n for n in names if prefixes is None or n.startswith(prefixes)]

    def queued(self):
        """Control files in the queue (qf queued, hf held, tf incoming, Qf lost)."""
        return len(self._files(self.queue, ("qf", "hf", "tf", "Qf")))

    def delivered(self):
        """Messages in the private mail dir: mbox files ("From " separators) and Maildirs."""
        n = 0
        for dirpath, dirs, files in os.walk(self.mail_dir):
            base = os.path.basename(dirpath)
            for f in files:
                p = os.path.join(dirpath, f)
                if base in ("new", "cur"):
                    n += 1
                elif base != "tmp":
                    with open(p, "rb") as fh:
                        data = fh.read()
                    n += data.startswith(b"From ") + data.count(b"\n\nFrom ")
        return n

    def clean(self):
        """Empty the queue, the maildrop and the mailboxes (the spool layout stays)."""
        for d in (self.queue, self.maildrop):
            for n in self._files(d):
                p = os.path.join(d, n)
                if os.path.isdir(p):
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    try:
                        os.unlink(p)
                    except FileNotFoundError:
                        pass
        if os.path.isdir(self.mail_dir):
            shutil.rmtree(self.mail_dir, ignore_errors=True)
            os.makedirs(self.mail_dir, exist_ok=True)
        if os.path.exists(self.log_file):
            os.truncate(self.log_file, 0)

    def settle(self, timeout=10.0, poll=0.002, give_up_after=3):
        """Wait until no data or control file is left in the queue (background delivery
        done). Untimed by the harness. After `give_up_after` timeouts it stops waiting."""
        if self._settle_failures >= give_up_after:
            return False
        deadline = time.monotonic() + timeout
        while self._files(self.queue, ("qf", "tf", "df")):
            if time.monotonic() > deadline:
                self._settle_failures += 1
                return False
            time.sleep(poll)
        return True


class IdealShim:
    """A sendmail shim as it should be installed: `#!<python> -IS` (Linux passes everything after
    the interpreter as ONE argument, so `-I -S` would reach Python as "-I -S"), the package's
    site-packages by absolute path (under -S, a venv's sys.prefix is the base
    interpreter's, so the shipped shim's `sys.prefix` guess misses it), no fallback."""

    def __init__(self, venv, directory):
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, "sendmail")
        with open(self.path, "w") as f:
            f.write(f"#!{venv.python} -IS\n"
                    "# written by bench/lib/target.py: the ideal start-up of the sendmail command\n"
                    "import sys\n"
                    f"sys.path.append({venv.site_packages()!r})\n"
                    "from pysendmail.cli.main import main\n"
                    "sys.exit(main(sys.argv))\n")
        os.chmod(self.path, 0o755)

    def argv(self, *args):
        return [self.path, *args]
