"""Phase `deliver` (issue 5): messages delivered per second from the queue, pysendmail vs Postfix.

Two cases, each with N messages (BENCH_DELIVER_N, default 2000) of 2048 bytes
(mkmsg.py, the same bytes for both servers):

- maildir: to a local user (BENCH_DELIVER_USER, default root) whose mailbox is a
  Maildir under the bench's work directory;
- relay: to bench@sink.test, routed to an smtp-sink the phase starts on
  127.0.0.1 (BENCH_DELIVER_SINK_PORT, 2637).

Method (that of /work/shared/bench-ref: "release a held queue, count until N are
delivered"). Per run, untimed: the server's queue and mailboxes are emptied, then N
messages are queued WITHOUT being delivered:

- Postfix 3.7 (a private instance, postfix_private.PrivatePostfix under
  bench/.work/postfix-deliver): one SMTP session to its smtpd on 127.0.0.1:2635
  whose `smtpd_client_restrictions = check_client_access inline:{ 127.0.0.1=HOLD }`
  puts every message on hold; the bench waits until the hold queue has N files;
- pysendmail (PYSENDMAIL_ROOT=bench/.work/roots/deliver-<case>, the venv's installed
  `sendmail`): one `sendmail -bs -odq` session on stdin carrying the N messages
  (queue only); the queue must then hold N control files.

Then `sync` (the injection's dirty pages are not written inside the timed window),
and timed: the release, until the work is done:

- Postfix: `postsuper -c ETC -H ALL; postqueue -c ETC -f`;
- pysendmail: `sendmail -q` (one queue run, the administrator's command);
- done = the Maildir holds N messages (new/ + cur/) and the queue is empty (maildir),
  or the queue is empty (relay; afterwards, untimed, the server's log must show N
  deliveries to the sink for the run to count).

Every wait is bounded (BENCH_DELIVER_RUN_TIMEOUT, 120 s, per run). Rounds
(BENCH_DELIVER_RUNS, 3) interleave the servers, in alternating order (A B, B A, ...),
so neither always runs right after the other's fsync burst. rate = N / seconds;
paired ratio = median over rounds of rate(pysendmail) / rate(Postfix) in the same round.

Before the rounds, each server and case gets a one-message probe (queue, release,
wait at most BENCH_DELIVER_PROBE_TIMEOUT = 20 s). A pysendmail case whose probe is
not delivered (e.g. relay while pysendmail has no SMTP delivery agent) is reported
as "not yet deliverable" with what was left in its queue and its log, and skipped;
the other cells are still measured. The cf lines that route the relay case live in
one place: relay_cf() below.

Targets (issue 5): pysendmail >= 1.5x Postfix for Maildir delivery, >= 1.0x for relay
to smtp-sink, on the paired ratio.

Security stance: needs root (Postfix). Loopback only (smtpd and smtp-sink bind
127.0.0.1; the only routes off the box are `error`). Signals only the processes it
started, by pid.
"""
import os
import smtplib
import statistics
import subprocess
import time

import mkmsg
from mta_servers import LA_LIFT, HOST, SmtpSink, _stop_popen, port_free, wait_banner
from phase_common import stop_all
from postfix_private import PrivatePostfix
from target import Instance

POSTSUPER = "/usr/sbin/postsuper"
POSTQUEUE = "/usr/sbin/postqueue"
SENDER = "bench-sender@localhost"
RELAY_DOMAIN = "sink.test"
RELAY_RCPT = "bench@" + RELAY_DOMAIN
RELAY_MAILER = "sinkrelay"
CASES = ("maildir", "relay")
TARGETS = {"maildir": 1.5, "relay": 1.0}
POLL = 0.02
EXIT_GRACE = 3.0     # s: after `sendmail -q` exits, how long its leftovers may still land


def settings():
    return {
        "n": int(os.environ.get("BENCH_DELIVER_N", 2000)),
        "size": int(os.environ.get("BENCH_DELIVER_SIZE", 2048)),
        "runs": int(os.environ.get("BENCH_DELIVER_RUNS", 3)),
        "cases": [c for c in os.environ.get("BENCH_DELIVER_CASES", ",".join(CASES)).split(",") if c in CASES],
        "user": os.environ.get("BENCH_DELIVER_USER", "root"),
        "run_timeout": float(os.environ.get("BENCH_DELIVER_RUN_TIMEOUT", 120)),
        "queue_timeout": float(os.environ.get("BENCH_DELIVER_QUEUE_TIMEOUT", 300)),
        "probe_timeout": float(os.environ.get("BENCH_DELIVER_PROBE_TIMEOUT", 20)),
        "max_seconds": float(os.environ.get("BENCH_DELIVER_MAX_SECONDS", 1200)),
        "postfix_port": int(os.environ.get("BENCH_DELIVER_POSTFIX_PORT", 2635)),
        "sink_port": int(os.environ.get("BENCH_DELIVER_SINK_PORT", 2637)),
    }


def relay_cf(sink_port):
    """The pysendmail cf lines that send RELAY_DOMAIN to the sink: (rules put at the top
    of ParseLocal, lines appended at the end). The one place to change when the SMTP
    delivery agent settles how a mailer names a port: here a copy of the shipped relay
    mailer whose A= line carries it (`A=TCP $h PORT`, as in Sendmail)."""
    rules = [f"R$* < @ {RELAY_DOMAIN} $* > $*\t$#{RELAY_MAILER} $@ [{HOST}] $: $1 < @ {RELAY_DOMAIN} . >"
             "\tbench: to the smtp-sink"]
    tail = [f"M{RELAY_MAILER},\tP=[IPC], F=mDFMuXa8, S=EnvFromSMTP/HdrFromSMTP, R=MasqSMTP, E=\\r\\n, L=2040,",
            "\t\tT=DNS/RFC822/SMTP,",
            f"\t\tA=TCP $h {sink_port}"]
    return rules, tail


def maildir_cf():
    """The cf lines making a local user's mailbox a Maildir (<mail_dir>/<user>/Maildir)."""
    return ["O MailboxFormat=maildir"]


def _count_dir(d):
    try:
        with os.scandir(d) as it:
            return sum(1 for e in it if not e.name.startswith("."))
    except FileNotFoundError:
        return 0


def maildir_count(md):
    return _count_dir(os.path.join(md, "new")) + _count_dir(os.path.join(md, "cur"))


def empty_maildir(md):
    for sub in ("new", "cur", "tmp"):
        d = os.path.join(md, sub)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            continue
        for n in names:
            try:
                os.unlink(os.path.join(d, n))
            except (FileNotFoundError, IsADirectoryError):
                pass


def wait_for(pred, timeout, poll=POLL):
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)


def rcpt_for(case, user):
    return f"{user}@localhost" if case == "maildir" else RELAY_RCPT


# ------------------------------------------------------------------------------------------
class PostfixDeliver:
    key, label = "postfix", "Postfix 3.7 (private instance: qmgr + local(8) / smtp(8))"
    QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")

    def __init__(self, work, cfg):
        self.cfg = cfg
        self.dir = os.path.join(work, "postfix-deliver")
        self.maildirs = os.path.join(self.dir, "maildirs")
        self.maillog = os.path.join(self.dir, "maillog")
        self.port = cfg["postfix_port"]
        self.pf = PrivatePostfix(self.dir, disable_pickup=False, extra_main=self._main_extra(),
                                 extra_master=f"{HOST}:{self.port} inet n - n - - smtpd\n")
        self._log_offset = 0

    def _main_extra(self):
        return (
            "# the deliver phase: an smtpd on loopback that puts every message on hold;\n"
            "# local mailboxes are Maildirs under mail_spool_directory (trailing /);\n"
            "# sink.test goes to the phase's smtp-sink; everything else stays `error`\n"
            "mynetworks = 127.0.0.0/8\n"
            "smtpd_relay_restrictions = permit_mynetworks, reject\n"
            f"smtpd_client_restrictions = check_client_access inline:{{ {HOST}=HOLD }}\n"
            f"mail_spool_directory = {self.maildirs}/\n"
            "home_mailbox =\n"
            "mailbox_command =\n"
            f"transport_maps = inline:{{ {RELAY_DOMAIN}=smtp:[{HOST}]:{self.cfg['sink_port']} }}\n"
            "smtp_tls_security_level = none\n"
            f"maillog_file = {self.maillog}\n"
            f"maillog_file_prefixes = {self.dir}\n")

    def maildir(self, user):
        return os.path.join(self.maildirs, user)

    def start(self):
        if self.pf.master_pid():
            self.pf.stop()
        if not port_free(self.port):
            raise RuntimeError(f"port {self.port} is in use")
        os.makedirs(self.maildirs, exist_ok=True)
        # local(8) writes root's mail with default_privs (nobody): a shared, sticky base
        os.chmod(self.maildirs, 0o1777)
        self.pf.start()
        self.clean()
        if not wait_banner(HOST, self.port, 20, lambda: self.pf.master_pid() is not None):
            self.pf.stop()
            raise RuntimeError(f"private postfix smtpd did not answer on port {self.port}")

    def stop(self):
        self.pf.stop()

    def _files(self, queues):
        n = 0
        for q in queues:
            for _, _, files in os.walk(os.path.join(self.pf.queue, q)):
                n += len(files)
        return n

    def remaining(self):
        return self._files(self.QUEUES)

    def held(self):
        return self._files(("hold",))

    def clean(self):
        subprocess.run([POSTSUPER, "-c", self.pf.etc, "-d", "ALL"], capture_output=True, timeout=120)
        for user in os.listdir(self.maildirs) if os.path.isdir(self.maildirs) else []:
            empty_maildir(self.maildir(user))

    def queue(self, case, n, msg, timeout):
        """Untimed: n messages over one SMTP session, all put on hold. Returns held count."""
        rcpt = rcpt_for(case, self.cfg["user"])
        deadline = time.monotonic() + timeout
        with smtplib.SMTP(HOST, self.port, timeout=60) as s:
            s.ehlo("bench.localhost")
            for _ in range(n):
                s.sendmail(SENDER, [rcpt], msg)
                if time.monotonic() > deadline:
                    break
        wait_for(lambda: self.held() >= n, max(1.0, deadline - time.monotonic()), 0.05)
        return self.held()

    def release_argv(self):
        return [[POSTSUPER, "-c", self.pf.etc, "-H", "ALL"], [POSTQUEUE, "-c", self.pf.etc, "-f"]]

    def mark_log(self):
        try:
            self._log_offset = os.path.getsize(self.maillog)
        except OSError:
            self._log_offset = 0

    def log_since_mark(self):
        try:
            with open(self.maillog, errors="replace") as f:
                f.seek(self._log_offset)
                return f.read().splitlines()
        except OSError:
            return []

    def sent_to_sink(self):
        port = f"[{HOST}]:{self.cfg['sink_port']}"
        return sum(1 for ln in self.log_since_mark() if "status=sent" in ln and port in ln)

    def timed_release(self, case, n, timeout):
        """Timed: release, then poll until done. Returns (ok, seconds, detail)."""
        md = self.maildir(self.cfg["user"])
        t0 = time.monotonic()
        for argv in self.release_argv():
            subprocess.run(argv, capture_output=True, timeout=timeout)
        if case == "maildir":
            ok = wait_for(lambda: maildir_count(md) >= n and self.remaining() == 0, timeout)
        else:
            ok = wait_for(lambda: self.remaining() == 0, timeout)
        dt = time.monotonic() - t0
        got = maildir_count(md) if case == "maildir" else None
        if case == "relay":     # untimed check: every message reached the sink (log may lag a little)
            wait_for(lambda: self.sent_to_sink() >= n, 5, 0.1)
            got = self.sent_to_sink()
            ok = ok and got >= n
        detail = "" if ok else (f"after {dt:.0f} s: {got} delivered, {self.remaining()} queued; log: "
                                + " / ".join(ln[-160:] for ln in self.log_since_mark()
                                             if "status=sent" not in ln)[-600:])
        return ok, dt, got, detail

    def describe(self):
        return {"key": self.key, "label": self.label, "version": self.pf.known_version(), "config": self.pf.etc,
                "smtpd": f"{HOST}:{self.port}", "main_cf_extra": self.pf.extra_main,
                "master_cf_extra": self.pf.extra_master, "maildir": self.maildir(self.cfg["user"]),
                "queue_how": f"one SMTP session to {HOST}:{self.port} (smtplib), N x MAIL/RCPT/DATA; "
                             "held by check_client_access HOLD",
                "release": [" ".join(a) for a in self.release_argv()]}


# ------------------------------------------------------------------------------------------
class PysendmailDeliver:
    key, label = "pysendmail", "pysendmail (`sendmail -q`)"

    def __init__(self, ctx, cfg):
        self.ctx, self.cfg, self.venv = ctx, cfg, ctx.venv
        self.inst = {}
        self.cf_check = {}
        self.last_q = {}

    def root(self, case):
        return os.path.join(self.ctx.work, "roots", f"deliver-{case}")

    def instance(self, case):
        if case not in self.inst:
            self.inst[case] = Instance(self.venv, self.root(case))
        return self.inst[case]

    def maildir(self, case):
        return os.path.join(self.instance(case).mail_dir, self.cfg["user"], "Maildir")

    def shipped_cf(self):
        r = subprocess.run([self.venv.python, "-c", "import pysendmail.layout as l; print(l.DEFAULT_CF)"],
                           capture_output=True, text=True, timeout=30, cwd="/")
        path = r.stdout.strip()
        if r.returncode or not os.path.exists(path):
            raise RuntimeError("cannot find the installed shipped sendmail.cf: " + r.stderr.strip()[-300:])
        return path

    def cf_additions(self, case):
        rules, tail = relay_cf(self.cfg["sink_port"]) if case == "relay" else ([], [])
        return rules, tail + maildir_cf() + LA_LIFT.strip().splitlines()

    def write_cf(self, case):
        """<root>/etc/sendmail.cf: the shipped cf plus cf_additions(case); checked with -bt."""
        inst = self.instance(case)
        src = self.shipped_cf()
        rules, tail = self.cf_additions(case)
        out, added = [], not rules
        with open(src) as f:
            for line in f:
                out.append(line)
                if not added and line.split("=")[0].strip() == "SParseLocal":
                    out.extend(r + "\n" for r in rules)
                    added = True
        if not added:
            raise RuntimeError(f"no SParseLocal ruleset in {src}")
        out.append("\n# bench deliver phase\n" + "\n".join(tail) + "\n")
        cf = os.path.join(inst.root, "etc", "sendmail.cf")
        os.makedirs(os.path.dirname(cf), exist_ok=True)
        with open(cf, "w") as f:
            f.writelines(out)
        rcpt = rcpt_for(case, self.cfg["user"])
        want = "$# local" if case == "maildir" else f"$# {RELAY_MAILER}"
        r = subprocess.run([self.venv.sendmail, "-bt", "-C", cf], input=f"3,0 {rcpt}\n", capture_output=True,
                           text=True, timeout=60, env=inst.env, cwd="/")
        res = [ln for ln in r.stdout.splitlines() if "returns:" in ln and ln.lstrip().startswith("parse")]
        got = res[-1].split("returns:")[1].strip() if res else None
        self.cf_check[case] = {"input": f"3,0 {rcpt}", "parse_returns": got, "want": want, "cf": cf,
                               "added": rules + tail}
        if not got or want not in got:
            raise RuntimeError(f"`sendmail -bt -C {cf}`: 3,0 {rcpt} does not give {want}: "
                               f"{r.stdout[-500:]} {r.stderr[-300:]}")

    def start(self):
        if not os.path.exists(self.venv.sendmail):
            raise RuntimeError(f"{self.venv.sendmail} is missing (pysendmail not installed in the venv)")
        for case in self.cfg["cases"]:
            self.write_cf(case)
            self.instance(case).clean()

    def stop(self):
        for inst in self.inst.values():
            inst.clean()

    def remaining(self, case):
        inst = self.instance(case)
        return inst.queued() + len(inst._files(inst.maildrop))

    def clean(self, case):
        self.instance(case).clean()

    @staticmethod
    def transcript(rcpt, msg, n):
        body = msg.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        body = b"\r\n".join((b"." + ln if ln.startswith(b".") else ln) for ln in body.split(b"\r\n"))
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        one = (f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode() + body + b".\r\n")
        return b"EHLO bench.localhost\r\n" + one * n + b"QUIT\r\n"

    def queue_argv(self):
        return [self.venv.sendmail, "-bs", "-odq"]

    def queue(self, case, n, msg, timeout):
        inst = self.instance(case)
        rcpt = rcpt_for(case, self.cfg["user"])
        r = subprocess.run(self.queue_argv(), input=self.transcript(rcpt, msg, n), capture_output=True,
                           timeout=timeout, env=inst.env, cwd="/")
        if r.returncode != 0:
            raise RuntimeError(f"`sendmail -bs -odq` exit {r.returncode}: {r.stderr.decode(errors='replace')[-400:]}")
        return inst.queued()

    def release_argv(self):
        return [self.venv.sendmail, "-q"]

    def log_lines(self, case):
        try:
            with open(self.instance(case).log_file, errors="replace") as f:
                return f.read().splitlines()
        except OSError:
            return []

    def _gave_up(self, proc, grace=EXIT_GRACE):
        """The queue run has exited `grace` seconds ago and nothing else will deliver
        (no daemon runs in the bench's instance): the rest stays queued."""
        if proc.poll() is None:
            self._exited_at = None
            return False
        if self._exited_at is None:
            self._exited_at = time.monotonic()
        return time.monotonic() - self._exited_at > grace

    def timed_release(self, case, n, timeout):
        self._exited_at = None
        inst = self.instance(case)
        md = self.maildir(case)
        t0 = time.monotonic()
        proc = subprocess.Popen(self.release_argv(), env=inst.env, cwd="/", stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            if case == "maildir":
                done = lambda: maildir_count(md) >= n and self.remaining(case) == 0  # noqa: E731
            else:
                done = lambda: self.remaining(case) == 0  # noqa: E731
            ok = wait_for(lambda: done() or self._gave_up(proc), timeout) and done()
            dt = time.monotonic() - t0
            try:        # untimed: the queue run's own end (it may still be closing files)
                out = proc.communicate(timeout=10 if ok else 1)[0]
            except subprocess.TimeoutExpired:
                out = b""
        finally:
            _stop_popen(proc, 5)
        self.last_q[case] = {"exit": proc.returncode, "output": out.decode(errors="replace")[-400:]}
        got = maildir_count(md) if case == "maildir" else None
        if case == "relay":
            got = sum(1 for ln in self.log_lines(case) if "stat=Sent" in ln and RELAY_DOMAIN in ln)
            ok = ok and got >= n
        detail = ""
        if not ok:
            other = [ln for ln in self.log_lines(case) if "stat=Sent" not in ln and "from=<" not in ln]
            files = sorted(inst._files(inst.queue))[:6]
            detail = (f"after {dt:.0f} s: {got} delivered, {self.remaining(case)} queued ({', '.join(files)}); "
                      f"`sendmail -q` exit {proc.returncode} {self.last_q[case]['output'].strip()[-200:]}; log: "
                      + " / ".join(ln[-200:] for ln in other[-4:]))
        return ok, dt, got, detail

    def describe(self):
        return {"key": self.key, "label": self.label, "pysendmail": self.venv.pysendmail_version(),
                "roots": {c: self.root(c) for c in self.cfg["cases"]},
                "maildir": {c: self.maildir(c) for c in self.cfg["cases"] if c == "maildir"},
                "cf_check": self.cf_check, "queue_how": " ".join(self.queue_argv())
                + " < transcript (EHLO, N x MAIL/RCPT/DATA, QUIT; pipelined)",
                "release": " ".join(self.release_argv())}


# ------------------------------------------------------------------------------------------
def one_run(ctx, srv, case, n, msg, cfg):
    """Clean, queue n (untimed), sync, release and time. A result record."""
    _clean(srv, case)
    t0 = time.monotonic()
    try:
        queued = srv.queue(case, n, msg, cfg["queue_timeout"])
    except Exception as e:
        return {"ok": False, "queued": None, "error": f"queueing failed: {type(e).__name__}: {e}"}
    tq = time.monotonic() - t0
    if queued < n:
        return {"ok": False, "queued": queued, "queue_s": round(tq, 2),
                "error": f"only {queued} of {n} queued after {tq:.0f} s"}
    os.sync()
    if srv.key == "postfix":
        srv.mark_log()
    ok, dt, got, detail = srv.timed_release(case, n, cfg["run_timeout"])
    rec = {"ok": ok, "queued": queued, "queue_s": round(tq, 2), "seconds": round(dt, 3),
           "delivered": got, "rate": round(n / dt, 1) if ok else None}
    if detail:
        rec["error"] = detail
    return rec


def probe(ctx, srv, case, msg, cfg):
    """A one-message check that the server delivers this case at all."""
    rec = one_run(ctx, srv, case, 1, msg, dict(cfg, run_timeout=cfg["probe_timeout"], queue_timeout=60))
    _clean(srv, case)
    return rec


def _clean(srv, case):
    if srv.key == "postfix":
        srv.clean()
    else:
        srv.clean(case)


def run(ctx):
    cfg = settings()
    n = cfg["n"]
    t_start = time.monotonic()
    msgs = {c: mkmsg.make_message(cfg["size"], to=rcpt_for(c, cfg["user"]), sender=SENDER) for c in cfg["cases"]}
    sink = SmtpSink(port=cfg["sink_port"], log_path=os.path.join(ctx.out, "smtp-sink.deliver.log"))
    pf = PostfixDeliver(ctx.work, cfg)
    py = PysendmailDeliver(ctx, cfg)
    servers = [pf, py]
    kept, failed = [], []
    cells = {c: {"servers": {}, "probe": {}, "not_deliverable": {}} for c in cfg["cases"]}
    try:
        if "relay" in cfg["cases"]:
            sink.start()
        for srv in servers:
            try:
                srv.start()
                kept.append(srv)
            except Exception as e:
                ctx.log(f"deliver: {srv.key} LEFT OUT: {e}")
                failed.append({"key": srv.key, "error": str(e)[-1500:]})
        for case in cfg["cases"]:
            for srv in kept:
                p = probe(ctx, srv, case, msgs[case], cfg)
                cells[case]["probe"][srv.key] = p
                if p["ok"]:
                    cells[case]["servers"][srv.key] = {"runs": []}
                    ctx.log(f"deliver: {case}: {srv.key} probe delivered 1 message in {p['seconds']:.2f} s")
                else:
                    cells[case]["not_deliverable"][srv.key] = p.get("error", "?")
                    ctx.log(f"deliver: {case}: {srv.key} NOT YET DELIVERABLE: {p.get('error')}")
        rounds = 0
        for r in range(cfg["runs"]):
            if r and time.monotonic() - t_start > cfg["max_seconds"]:
                ctx.log(f"deliver: over {cfg['max_seconds']:.0f} s: stops after {r} rounds")
                break
            for case in cfg["cases"]:
                order = [s for s in kept if s.key in cells[case]["servers"]]
                if r % 2:
                    order.reverse()
                for srv in order:
                    rec = one_run(ctx, srv, case, n, msgs[case], cfg)
                    cells[case]["servers"][srv.key]["runs"].append(rec)
                    ctx.log(f"deliver: round {r + 1} {case} {srv.key}: "
                            + (f"{rec['rate']} msg/s ({rec['seconds']} s; queued in {rec['queue_s']} s)"
                               if rec["ok"] else f"FAILED: {rec.get('error')}"))
            rounds += 1
    finally:
        stop_all(ctx, "deliver", servers)
        sink.stop()
    for case, cell in cells.items():
        ref = [x["rate"] for x in cell["servers"].get("postfix", {}).get("runs", [])]
        for key, rec in cell["servers"].items():
            rates = [x["rate"] for x in rec["runs"]]
            good = [x for x in rates if x]
            rec.update(rates=rates, median=_med(rates), min=min(good) if good else None,
                       max=max(good) if good else None, ok_runs=len(good))
            pairs = [x / y for x, y in zip(rates, ref) if x and y]
            rec["paired_vs_postfix"] = round(statistics.median(pairs), 3) if pairs else None
    return {"phase": "deliver", "seconds": round(time.monotonic() - t_start, 1), "settings": cfg,
            "rounds": rounds, "servers": [s.describe() for s in servers], "sink": sink.describe(),
            "measured": [s.key for s in kept], "failed": failed, "cells": cells, "targets": TARGETS}


def _med(xs):
    good = [x for x in xs if x]
    return round(statistics.median(good), 1) if good else None


def _f(x, fmt="%.0f"):
    return "-" if x is None else fmt % x


CASE_TITLE = {"maildir": "local Maildir", "relay": f"relay to smtp-sink ({RELAY_RCPT})"}


def report(data):
    cfg = data["settings"]
    desc = {d["key"]: d for d in data["servers"]}
    pf = desc.get("postfix", {})
    out = ["## Delivery rate from the queue: messages/s, release to delivered (issue 5)", "",
           f"N = {cfg['n']} messages of {cfg['size']} bytes per run, queued untimed without delivery, then "
           f"released and timed until all were delivered (Maildir: N files in new/+cur/ and the queue empty; "
           f"relay: the queue empty, and the log showing N deliveries to the sink). {data['rounds']} rounds, "
           f"servers interleaved in alternating order, queues and mailboxes emptied before every run, every run "
           f"bounded ({cfg['run_timeout']:.0f} s). Postfix {pf.get('version', '?')}, private instance. Phase took "
           f"{data['seconds']} s.", "",
           "Cells: median [min-max] msgs/s, (paired ratio to Postfix), ok runs.", "",
           "| case | Postfix | pysendmail |", "|---|---|---|"]
    for case, cell in data["cells"].items():
        row = [CASE_TITLE.get(case, case)]
        for key in ("postfix", "pysendmail"):
            if key not in data["measured"]:
                row.append("not measured")
                continue
            if key in cell["not_deliverable"]:
                row.append("**not yet deliverable** (1-message probe not delivered; see below)")
                continue
            rec = cell["servers"].get(key)
            if not rec:
                row.append("-")
                continue
            txt = f"**{_f(rec['median'])}** [{_f(rec['min'])}-{_f(rec['max'])}]"
            if key != "postfix":
                txt += f" ({_f(rec['paired_vs_postfix'], '%.2f')}x)"
            txt += f" {rec['ok_runs']}/{len(rec['rates'])}"
            row.append(txt)
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    for f in data["failed"]:
        out.append(f"- **{f['key']} not measured**: {f['error']}")
    for case, cell in data["cells"].items():
        for key, err in cell["not_deliverable"].items():
            out.append(f"- {key}, {case}: not yet deliverable: {err[-700:]}")
        for key, rec in cell["servers"].items():
            for i, x in enumerate(rec["runs"]):
                if not x["ok"]:
                    out.append(f"- run {i + 1} failed: {key}, {case}: {x.get('error', '?')[-400:]}")
            qs = [x["queue_s"] for x in rec["runs"] if x.get("queue_s")]
            if qs:
                out.append(f"- {key}, {case}: queueing N (untimed) took {statistics.median(qs):.1f} s (median)")
    out += ["", "Targets (issue 5), judged on the paired ratio (ratio of medians in brackets):", ""]
    for case, want in TARGETS.items():
        cell = data["cells"].get(case)
        rec = cell["servers"].get("pysendmail") if cell else None
        ref = cell["servers"].get("postfix") if cell else None
        if cell and "pysendmail" in cell["not_deliverable"]:
            out.append(f"- {CASE_TITLE[case]}: pysendmail >= {want}x Postfix -> **NOT YET DELIVERABLE**")
            continue
        if not rec or rec["paired_vs_postfix"] is None:
            out.append(f"- {CASE_TITLE.get(case, case)}: pysendmail >= {want}x Postfix -> NOT MEASURED")
            continue
        of_med = rec["median"] / ref["median"] if ref and ref["median"] and rec["median"] else None
        full = rec["ok_runs"] == len(rec["rates"])
        verdict = "PASS" if rec["paired_vs_postfix"] >= want and full else "FAIL"
        out.append(f"- {CASE_TITLE[case]}: pysendmail {_f(rec['median'])} vs Postfix {_f(ref['median'])} msgs/s = "
                   f"{rec['paired_vs_postfix']:.2f}x ({_f(of_med, '%.2f')}x), target >= {want}x -> **{verdict}**"
                   + ("" if full else " (failed runs)"))
    py = desc.get("pysendmail", {})
    out += ["", "Commands:", "",
            f"- Postfix: `postfix -c {pf.get('config')}`; master.cf adds `{(pf.get('master_cf_extra') or '').strip()}`; "
            f"main.cf adds `{'; '.join(ln for ln in (pf.get('main_cf_extra') or '').splitlines() if ln[:1] != '#')}`. "
            f"Queue (untimed): {pf.get('queue_how')}. Timed: `{'; '.join(pf.get('release') or [])}`. "
            f"Maildir: `{pf.get('maildir')}`.",
            f"- pysendmail: `PYSENDMAIL_ROOT={(py.get('roots') or {}).get('maildir', '<root>')}` (and "
            f"`deliver-relay`); queue (untimed): `{py.get('queue_how')}`; timed: `{py.get('release')}`; "
            f"Maildir: `{(py.get('maildir') or {}).get('maildir')}`."]
    for case, chk in (py.get("cf_check") or {}).items():
        out.append(f"  - cf for {case}: `{chk.get('cf')}` = shipped cf + `{' | '.join(chk.get('added') or [])}`; "
                   f"-bt `{chk.get('input')}` -> `{chk.get('parse_returns')}`")
    if data.get("sink"):
        out.append(f"- sink: `{' '.join(data['sink'].get('argv') or [])}`")
    out.append("- before each timed release: `sync` (the queueing's dirty pages are not flushed in the timed window).")
    return "\n".join(out) + "\n"
