"""A private Postfix instance for the bench: the reference MTA, system Postfix untouched.

PrivatePostfix(workdir) writes `workdir/etc/{main,master}.cf` with its own
queue and data directories, and runs it with `postfix -c workdir/etc`; its
sendmail is `/usr/sbin/sendmail -C workdir/etc` (postdrop inherits the
config directory). The system instance in /etc/postfix is only read (for the
stock master.cf service list), never changed, started or stopped.

Mode "queue-only" (the submit phase): the pickup service is disabled
(`master_service_disable = pickup.unix`), so a submission ends as one
fsynced file in `maildrop/` and nothing reads it: the same state Postfix's
sendmail leaves behind on a busy system before pickup runs. Nothing listens
on the network (no smtpd line in master.cf); `default_transport = error`
keeps anything from leaving the machine even if pickup were enabled.
Later phases can ask for other modes (an smtpd on a loopback port,
delivery to a Maildir) through `extra_main` and `extra_master`.

Security stance: needs root (postfix start); touches only `workdir` and
processes it started (its own master, found through its own pid file).
"""
import os
import shutil
import subprocess
import time

POSTFIX = "/usr/sbin/postfix"
SENDMAIL = "/usr/sbin/sendmail"
SYSTEM_MASTER_CF = "/etc/postfix/master.cf"


class PrivatePostfix:
    def __init__(self, workdir, extra_main="", extra_master="", disable_pickup=True):
        self.dir = os.path.abspath(workdir)
        self.etc = os.path.join(self.dir, "etc")
        self.queue = os.path.join(self.dir, "queue")
        self.data = os.path.join(self.dir, "data")
        self.maildrop = os.path.join(self.queue, "maildrop")
        self.pid_file = os.path.join(self.queue, "pid", "master.pid")
        self.extra_main, self.extra_master = extra_main, extra_master
        self.disable_pickup = disable_pickup

    # -- configuration ---------------------------------------------------------------------
    def _master_cf(self):
        """The stock service list minus any network listener, chroot off (private paths)."""
        lines = []
        with open(SYSTEM_MASTER_CF) as f:
            for line in f:
                if not line.strip() or line[0] in "# \t":
                    continue
                f5 = line.split()
                if len(f5) < 8 or f5[1] not in ("unix", "unix-dgram", "fifo", "pass"):
                    continue          # drops smtp inet, submission, ... and continuation lines
                if f5[7] in ("pipe", "spawn"):
                    continue          # their argv= continuation lines were dropped above
                f5[4] = "n"           # chroot off: the chroot would need private copies of /etc files
                lines.append("%-10s %-6s %-3s %-3s %-3s %-7s %-3s %s" % tuple(f5[:8])
                             + ("" if len(f5) == 8 else " " + " ".join(f5[8:])))
        return "\n".join(lines) + "\n" + self.extra_master

    def _main_cf(self):
        return f"""# written by bench/lib/postfix_private.py
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {self.data}
syslog_name = postfix-bench
myhostname = localhost
mydomain = localdomain
myorigin = $myhostname
mydestination = localhost
inet_interfaces = loopback-only
inet_protocols = ipv4
default_transport = error
relay_transport = error
relayhost =
alias_maps =
alias_database =
biff = no
smtp_dns_support_level = disabled
{"master_service_disable = pickup.unix" if self.disable_pickup else ""}
{self.extra_main}
"""

    def write_config(self):
        for d in (self.etc, self.queue, self.data):
            os.makedirs(d, exist_ok=True)
        shutil.chown(self.data, "postfix")
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(self._main_cf())
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(self._master_cf())

    # -- processes -------------------------------------------------------------------------
    def master_pid(self):
        try:
            pid = int(open(self.pid_file).read().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def start(self, timeout=20.0):
        self.write_config()
        if self.master_pid():
            self.stop()
        # postfix prints its errors to a tty only; capture both streams anyway
        r = subprocess.run([POSTFIX, "-c", self.etc, "start"], capture_output=True,
                           text=True, timeout=timeout)
        deadline = time.monotonic() + timeout
        while not self.master_pid():
            if time.monotonic() > deadline:
                raise RuntimeError(f"private postfix did not start: {r.stdout}{r.stderr}")
            time.sleep(0.05)
        return self.master_pid()

    def stop(self, timeout=20.0):
        pid = self.master_pid()
        if not pid:
            return
        subprocess.run([POSTFIX, "-c", self.etc, "stop"], capture_output=True, timeout=timeout)
        deadline = time.monotonic() + timeout
        while self.master_pid() == pid and time.monotonic() < deadline:
            time.sleep(0.05)

    # -- submission ------------------------------------------------------------------------
    def sendmail_argv(self, *args):
        return [SENDMAIL, "-C", self.etc, *args]

    def maildrop_count(self):
        try:
            return sum(1 for n in os.listdir(self.maildrop) if not n.startswith("."))
        except FileNotFoundError:
            return 0

    def maildrop_clean(self):
        try:
            names = os.listdir(self.maildrop)
        except FileNotFoundError:
            return
        for n in names:
            try:
                os.unlink(os.path.join(self.maildrop, n))
            except FileNotFoundError:
                pass

    def version(self):
        r = subprocess.run(["/usr/sbin/postconf", "-c", self.etc, "-h", "mail_version"],
                           capture_output=True, text=True, timeout=10)
        return r.stdout.strip()

    def known_version(self):
        """version() for a report: "?" when postconf cannot run."""
        try:
            return self.version()
        except (OSError, subprocess.SubprocessError):
            return "?"
