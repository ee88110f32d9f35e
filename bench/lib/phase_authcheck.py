"""Phase `authcheck`: accepted SMTP messages per second through the pysendmail daemon with
its inbound email-authentication checks (SPF, DKIM, ARC, DMARC) on and off, what the
checks cost per message, and a private Postfix with no checks beside them for scale.

Servers (all started before the rounds, a 5-message preflight each, phase_smtp.start_all):

- pysendmail on: `sendmail -bD` as in phase `smtp` (mta_servers.PysendmailDaemon, the
  discard.test rule), cf + `O AuthChecks=spf, dkim, arc, dmarc`, `O Timeout.authcheck=10s`;
- pysendmail off: the same with `O AuthChecks=none`;
- Postfix: phase `smtp`'s private smtpd (Postfix checks nothing by default).

DNS: a LoopbackDns (tests/dns_helpers.py, dnspython) in a child process run by the bench
venv's python (this file, `dns-server SPEC`), on port 53 of a 127.53.1.N address; it
writes <root>/etc/resolv.conf of both pysendmail instances (layout.resolv_confs), then
drops to nobody.  Zone, for the sender domain sender.test (envelope and From
a@sender.test; smtp-source gets it through smtp_source_sender): SPF
`v=spf1 ip4:127.0.0.0/8 -all`, DMARC `v=DMARC1; p=none`, and a DKIM key (RSA 2048,
selector `bench`) made at start, with which the same process signs the bench message
once (dkimpy, relaxed/relaxed) and checks the signature.  The bench asks it over a pipe
how many questions it has answered: DNS queries per message, per run.  The daemon caches
answers for their TTL (300 s), so after the warm-up most lookups are cache hits.

Cells: (a) smtp-source's unsigned 4 KB messages (phase_smtp.one_run), 20 sessions then 1;
(b) a DKIM-signed ~4 KB message, sent M times by a small bounded asyncio SMTP client in
the bench (one connection per message, 20 sessions): the RSA verification included.
Per cell and server: one untimed warm-up, then BENCH_AUTHCHECK_RUNS rounds, servers
interleaved (order reversed every other round), queues drained (untimed) around every run;
daemon CPU (the process tree, phase_common.tree_cpu_s) and the DNS server's queries over
each run including its drain; the `auth:` lines of pysendmail's maillog tallied per run
(proof that the checks ran, and their results).

Security stance: root (Postfix, port 53); loopback only; every loop and wait bounded;
only processes the bench started are signalled.  `pip install`s dkimpy, pyspf and pytest
into the bench venv when missing (the checks and dns_helpers need them).
"""
import asyncio
import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections import Counter

import phase_smtp
from mta_servers import PostfixSmtpd, PysendmailDaemon, _stop_popen
from phase_common import (ArgvTarget, config_lines, cpu_s, delta, env_list, fmt, maillog_lines, median,
                          medians_text, messages_for, paired, postfix_version, rate_cell, rate_summary,
                          run_rounds, run_settings, stop_all, timed_run, tree_cpu_s, trouble_lines,
                          warmup_messages)
from phase_smtp import one_run, source_argv, start_all

SIZE = 4096
SENDER = "a@sender.test"       # envelope and From: a domain of two labels (see smtp_source_sender)
DOMAIN = SENDER.rpartition("@")[2]
SELECTOR = "bench"
ZONE = {"spf": "v=spf1 ip4:127.0.0.0/8 -all", "dmarc": "v=DMARC1; p=none"}
ON_CHECKS = "spf, dkim, arc, dmarc"
NEEDED = (("dkim", "dkimpy"), ("spf", "pyspf"), ("pytest", "pytest"))   # module, package


def settings():
    cells = [("unsigned", s) for s in env_list("BENCH_AUTHCHECK_SESSIONS", "20,1")]
    if os.environ.get("BENCH_AUTHCHECK_SIGNED", "1") != "0":
        cells.append(("signed", 20))
    return {"cells": cells, "size": SIZE,
            **run_settings("AUTHCHECK", messages_serial=300, postfix_port=2670, pysendmail_port=2671),
            "checks": os.environ.get("BENCH_AUTHCHECK_CHECKS", ON_CHECKS)}


@contextlib.contextmanager
def smtp_source_sender(sender):
    """phase_smtp's smtp-source runs (one_run, source_argv, start_all) with `-f sender`:
    its own SENDER, a@localhost, has a one-label domain, for which SPF answers none without
    a lookup (RFC 7208 4.3) and DMARC permerror.  phase_smtp reads SENDER at each call;
    it is restored on the way out."""
    saved = phase_smtp.SENDER
    phase_smtp.SENDER = sender
    try:
        yield
    finally:
        phase_smtp.SENDER = saved


# -- the bench message of cell (b) ------------------------------------------------------------
def bench_message(size=SIZE, signature_room=520):
    """A CRLF message from SENDER to the discard recipient, about `size` bytes once signed."""
    head = (f"From: <{SENDER}>\r\nTo: <bench@discard.test>\r\nSubject: bench authcheck\r\n"
            f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
            f"Message-ID: <authcheck.{os.getpid()}.{int(time.time())}@{DOMAIN}>\r\n\r\n").encode()
    body, n = [], 0
    while len(head) + n < size - signature_room:
        line = (b"bench body line %04d " % len(body)).ljust(76, b"x") + b"\r\n"
        body.append(line)
        n += len(line)
    return head + b"".join(body)


# -- the DNS server (child process, bench venv's python) --------------------------------------
def _quoted(text, width=250):
    """A TXT value in zone-file syntax: quoted strings of at most `width` characters."""
    return " ".join('"%s"' % text[i:i + width] for i in range(0, len(text), width))


def _sign(message):
    """(DKIM key record, signed message): a fresh RSA 2048 key; dkimpy signs."""
    import base64

    import dkim
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    record = "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
    sig = dkim.sign(message, SELECTOR.encode(), DOMAIN.encode(), pem,
                    canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return record, sig + message


def serve(spec_path):
    """The child: LoopbackDns with the zone, resolv.conf files, the signed message; then
    answers `count` on stdin with one JSON line; ends at EOF or `quit`."""
    spec = json.load(open(spec_path))
    stub = spec["stub_dir"]         # dns_helpers imports `unavailable` from the tests' conftest
    os.makedirs(stub, exist_ok=True)
    with open(os.path.join(stub, "conftest.py"), "w") as f:
        f.write('"""Stub for bench: dns_helpers imports unavailable() from conftest."""\n\n\n'
                "def unavailable(message):\n    raise RuntimeError(message)\n")
    sys.path[:0] = [stub, spec["tests_dir"]]
    from dns_helpers import LoopbackDns
    import dkim
    server = LoopbackDns()
    zone = {(DOMAIN, "TXT"): _quoted(ZONE["spf"]), (f"_dmarc.{DOMAIN}", "TXT"): _quoted(ZONE["dmarc"])}
    info = {"address": server.address, "port": server.port, "zone": {f"{n} {t}": v for (n, t), v in zone.items()}}
    if spec.get("message"):
        record, signed = _sign(open(spec["message"], "rb").read())
        zone[(f"{SELECTOR}._domainkey.{DOMAIN}", "TXT")] = _quoted(record)
        with open(spec["signed"], "wb") as f:
            f.write(signed)
        info.update(signed=spec["signed"], signed_bytes=len(signed), key_bits=2048,
                    dkim_record=f"{SELECTOR}._domainkey.{DOMAIN} TXT {record[:40]}...")
    server.load(zone)
    for path in spec["resolv_confs"]:
        server.write_resolv_conf(path)
    if os.geteuid() == 0:           # the files written, port 53 bound: nothing more needs root
        import pwd
        nobody = pwd.getpwnam("nobody")
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
    if spec.get("message"):
        def dnsfunc(name, timeout=5):
            vals = server.zone.get((name.decode().lower().rstrip(".") + ".", "TXT")) or [""]
            return "".join(part for part in vals[0].split('"')[1::2]).encode()
        info["dkimpy_verifies"] = bool(dkim.verify(signed, dnsfunc=dnsfunc))
    server.clear()
    print(json.dumps(info), flush=True)
    for _ in range(1_000_000):      # one command per line, bounded
        line = sys.stdin.readline()
        if not line or line.strip() == "quit":
            break
        with server.lock:
            qs = list(server.queries)
        by = Counter(f"{t} {tr}" for _n, t, tr in qs)
        names = Counter(n for n, _t, _tr in qs)
        print(json.dumps({"n": len(qs), "by": by, "names": dict(names.most_common(12))}), flush=True)
    server.stop()


class DnsServer:
    """The bench's side of the DNS child: start, count(), cpu_s(), stop()."""

    def __init__(self, ctx, resolv_confs, message=None):
        self.python = ctx.venv.python
        self.dir = os.path.join(ctx.work, "authcheck")
        os.makedirs(self.dir, exist_ok=True)
        self.spec = {"stub_dir": os.path.join(self.dir, "stub"),
                     "tests_dir": os.path.join(ctx.project, "tests"), "resolv_confs": resolv_confs}
        if message is not None:
            self.spec["message"] = os.path.join(self.dir, "message.eml")
            self.spec["signed"] = os.path.join(self.dir, "signed.eml")
            with open(self.spec["message"], "wb") as f:
                f.write(message)
        self.spec_path = os.path.join(self.dir, "spec.json")
        self.log_path = os.path.join(ctx.out, "authcheck-dns.log")
        self.argv = [self.python, "-u", os.path.abspath(__file__), "dns-server", self.spec_path]
        self.proc, self.info = None, {}

    def start(self, timeout=60.0):
        with open(self.spec_path, "w") as f:
            json.dump(self.spec, f)
        with open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(self.argv, cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err)
        self.info = self._reply(timeout)
        if not self.info:
            code = self.proc.poll()
            self.stop()
            tail = open(self.log_path, errors="replace").read()[-1200:]
            raise RuntimeError(f"the DNS server did not start (exit {code}): {tail.strip()}")
        return self.info

    def _reply(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        return json.loads(line) if line else None

    def count(self):
        """{"n": questions answered so far, "by": {"TYPE transport": n}, "names": {...}}."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        self.proc.stdin.write(b"count\n")
        self.proc.stdin.flush()
        return self._reply(10)

    def cpu_s(self):
        return cpu_s([self.proc.pid]) if self.proc else None

    def stop(self):
        if self.proc is None:
            return
        try:
            self.proc.stdin.write(b"quit\n")
            self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        _stop_popen(self.proc, timeout=5)
        self.proc = None


def ensure_packages(ctx):
    """What the checks (dkimpy, pyspf) and dns_helpers (pytest) import, in the bench venv."""
    missing = [pkg for mod, pkg in NEEDED
               if subprocess.run([ctx.venv.python, "-c", f"import {mod}"], capture_output=True,
                                 cwd="/", timeout=60).returncode]
    if missing:
        ctx.log(f"authcheck: pip install {' '.join(missing)} into the bench venv")
        r = subprocess.run([os.path.join(ctx.venv.bin, "pip"), "install", "-q", "--disable-pip-version-check",
                            *missing], capture_output=True, text=True, timeout=600, cwd="/")
        if r.returncode:
            ctx.log(f"authcheck: pip failed: {r.stderr.strip()[-400:]}")
    return missing


# -- the servers ------------------------------------------------------------------------------
class AuthDaemon(PysendmailDaemon):
    """Phase smtp's daemon with O AuthChecks set; tallies the maillog's `auth:` lines."""

    def __init__(self, venv, root, port, checks, log_path):
        super().__init__(venv, root, port=port, log_path=log_path)
        self.checks = checks
        self.mta = "pysendmail"
        self.on = checks.strip().lower() != "none"
        self.key = "pysendmail-on" if self.on else "pysendmail-off"
        self.label = f"pysendmail, checks {'on' if self.on else 'off'}"
        self.resolv_conf = os.path.join(self.root, "etc", "resolv.conf")
        self.cf_lines = [f"O AuthChecks={checks}", "O Timeout.authcheck=10s"]
        self._offset = 0

    def write_cf(self):
        check = super().write_cf()
        with open(self.cf, "a") as f:
            f.write("\n# bench authcheck phase\n" + "\n".join(self.cf_lines) + "\n")
        return check

    def start(self, *args, **kw):
        self._offset = 0            # start() truncates the maillog
        return super().start(*args, **kw)

    def auth_results(self):
        """{summary: count} of the `auth: ...` log lines written since the last call."""
        tally = Counter()
        try:
            with open(self.inst.log_file, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return tally
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            i = line.find(b": auth: ")
            if i >= 0:
                tally[line[i + 8:].decode(errors="replace").strip()] += 1
        return dict(tally)

    def describe(self):
        return dict(super().describe(), cf_lines=self.cf_lines, resolv_conf=self.resolv_conf)


class ScalePostfix(PostfixSmtpd):
    def __init__(self, workdir, port):
        super().__init__(workdir, port)
        self.mta, self.on = "postfix", False

    def auth_results(self):
        return None


def build(ctx, cfg):
    pf = ScalePostfix(os.path.join(ctx.work, "postfix-authcheck"), cfg["postfix_port"])
    off = AuthDaemon(ctx.venv, os.path.join(ctx.work, "roots", "authcheck-off"), cfg["pysendmail_port"] + 1,
                     "none", os.path.join(ctx.out, "pysendmail-daemon.authcheck-off.log"))
    on = AuthDaemon(ctx.venv, os.path.join(ctx.work, "roots", "authcheck-on"), cfg["pysendmail_port"],
                    cfg["checks"], os.path.join(ctx.out, "pysendmail-daemon.authcheck-on.log"))
    return [pf, off, on]


# -- the asyncio client of cell (b) -----------------------------------------------------------
async def _reply(reader, what):
    lines = []
    for _ in range(100):
        line = await reader.readline()
        if not line:
            raise RuntimeError(f"{what}: connection closed")
        lines.append(line)
        if line[3:4] != b"-":
            break
    return lines[-1][:1], b" / ".join(x.strip() for x in lines).decode(errors="replace")


async def _one_message(host, port, helo, rcpt, data):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        steps = [(None, b"2"), (b"EHLO " + helo, b"2"), (b"MAIL FROM:<%s>" % SENDER.encode(), b"2"),
                 (b"RCPT TO:<%s>" % rcpt, b"2"), (b"DATA", b"3"), (data + b".", b"2"), (b"QUIT", b"2")]
        for cmd, want in steps:
            if cmd is not None:
                writer.write(cmd + b"\r\n")
            got, text = await _reply(reader, (cmd or b"banner")[:20].decode())
            if got != want:
                raise RuntimeError(f"{(cmd or b'banner')[:20].decode()}: {text[:200]}")
    finally:
        writer.close()


async def _send_all(host, port, rcpt, data, sessions, m, timeout):
    left, errors = [m], []
    helo = os.uname().nodename.encode()     # smtp-source's HELO name too

    async def session():
        while left[0] > 0 and not errors:
            left[0] -= 1
            try:
                await _one_message(host, port, helo, rcpt, data)
            except Exception as e:      # noqa: BLE001 - the run fails with it
                errors.append(f"{type(e).__name__}: {e}")

    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(session() for _ in range(min(sessions, m))))
    except TimeoutError:
        return f"stopped after {timeout:.0f} s"
    return errors[0] if errors else ""


def wire_form(message):
    """The DATA payload: CRLF lines, dot-stuffed, ending in CRLF."""
    lines = message.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)


def send_signed(srv, sessions, m, data, timeout):
    """m copies of `data` (wire form) over `sessions` connections, one per message, as
    smtp-source does: (ok, seconds, error); any reply not 2xx/3xx fails the run."""
    t0 = time.monotonic()
    try:
        err = asyncio.run(_send_all(srv.host, srv.port, srv.rcpt.encode(), data, sessions, m, timeout))
    except Exception as e:          # noqa: BLE001
        err = f"{type(e).__name__}: {e}"
    return not err, time.monotonic() - t0, err


# -- the runs ---------------------------------------------------------------------------------
def _send(kind, srv, sess, m, cfg, data):
    if kind == "signed":
        return send_signed(srv, sess, m, data, cfg["run_timeout"])
    with smtp_source_sender(SENDER):
        return one_run(srv, sess, m, SIZE, cfg["run_timeout"])


def _dns_delta(a, b):
    if not a or not b:
        return None
    return {"n": b["n"] - a["n"], "by": {k: v - a["by"].get(k, 0) for k, v in b["by"].items()
                                         if v - a["by"].get(k, 0)}}


def measure(srv, dns, kind, sess, m, cfg, data):
    """One run with its drains, daemon and DNS CPU, DNS questions and auth results: a record."""
    # auth_results() first: what came before this run is not counted
    rec, (_, q0, s0, d0), (s1, d1, q1) = timed_run(
        srv, m, lambda: _send(kind, srv, sess, m, cfg, data), cfg["drain_timeout"],
        before=lambda: (srv.auth_results(), dns.count(), tree_cpu_s(srv), dns.cpu_s()),
        after=lambda: (tree_cpu_s(srv), dns.cpu_s(), dns.count()))
    rec.update(server_cpu_s=delta(s0, s1), dns_cpu_s=delta(d0, d1), dns=_dns_delta(q0, q1),
               auth=srv.auth_results())
    return rec


def run(ctx):
    cfg = settings()
    t_start = time.monotonic()
    installed = ensure_packages(ctx)
    servers = build(ctx, cfg)
    message = bench_message()
    dns = DnsServer(ctx, [s.resolv_conf for s in servers if s.mta == "pysendmail"],
                    message if any(k == "signed" for k, _ in cfg["cells"]) else None)
    kept, failed, cells = [], [], []
    signed = None
    with smtp_source_sender(SENDER):
        argv = source_argv(ArgvTarget(), "S", "M", SIZE)
    try:
        info = dns.start()
        ctx.log(f"authcheck: DNS server on {info['address']}:{info['port']}; zone {info['zone']}"
                + (f"; signed message {info['signed_bytes']} B, dkimpy verifies: {info['dkimpy_verifies']}"
                   if info.get("signed") else ""))
        if info.get("signed"):
            signed = wire_form(open(info["signed"], "rb").read())
        with smtp_source_sender(SENDER):
            kept, failed = start_all(ctx, servers)
        for kind, sess in cfg["cells"]:
            if time.monotonic() - t_start > cfg["max_seconds"]:
                ctx.log(f"authcheck: over {cfg['max_seconds']:.0f} s: cell {kind}/{sess} skipped")
                continue
            if kind == "signed" and signed is None:
                continue
            m = messages_for(cfg, sess)
            cell = {"kind": kind, "sessions": sess, "messages": m, "servers": {},
                    "bytes": len(signed) if kind == "signed" else None}
            for srv in kept:
                mw = warmup_messages(m, sess)
                q0 = dns.count()
                ok, dt, err = _send(kind, srv, sess, mw, cfg, signed)
                srv.drain(cfg["drain_timeout"])
                cell["servers"][srv.key] = {
                    "mta": srv.mta, "on": srv.on, "runs": [],
                    "warmup": {"ok": ok, "messages": mw, "seconds": round(dt, 3), "error": err,
                               "dns": _dns_delta(q0, dns.count()), "auth": srv.auth_results()}}
            run_rounds(ctx, "authcheck", cell, kept, cfg, t_start,
                       lambda srv: measure(srv, dns, kind, sess, m, cfg, signed),
                       what=f"{kind}/{sess}", tag=f"{kind}/{sess} ", alternate=True)
            summarize(cell)
            ctx.log(f"authcheck: {kind} x {sess} sessions, M={m}: msgs/s median {medians_text(cell)}")
            cells.append(cell)
    finally:
        stop_all(ctx, "authcheck", servers)
        dns_total = dns.count()
        dns.stop()
    return {"phase": "authcheck", "seconds": round(time.monotonic() - t_start, 1), "settings": cfg,
            "installed": installed, "dns": dict(dns.info, argv=dns.argv),
            "servers": [dict(s.describe(), mta=s.mta, on=s.on) for s in servers],
            "measured": [s.key for s in kept], "failed": failed, "cells": cells, "smtp_source": argv,
            "dns_total": dns_total}


# -- figures ----------------------------------------------------------------------------------
def summarize(cell):
    """Medians; paired (same round) ratios to Postfix and, for checks on, to checks off:
    on/off, added wall ms/msg = 1000/r_on - 1000/r_off, added daemon CPU ms/msg."""
    srvs, m = cell["servers"], cell["messages"]
    for rec in srvs.values():
        runs = rec["runs"]
        rate_summary(rec)
        rec["cpu_ms"] = [x["server_cpu_s"] * 1000 / m if x["ok"] and x["server_cpu_s"] is not None else None
                         for x in runs]
        rec["cpu_ms_per_msg"] = median(rec["cpu_ms"])
        rec["dns_per_msg"] = median([x["dns"]["n"] / m for x in runs if x["ok"] and x["dns"]], 3)
        rec["dns_cpu_ms_per_msg"] = median([x["dns_cpu_s"] * 1000 / m for x in runs
                                            if x["ok"] and x["dns_cpu_s"] is not None])
        auth = Counter()
        for x in runs:
            auth.update(x.get("auth") or {})
        rec["auth_total"] = dict(auth)
    pf, off = srvs.get("postfix"), srvs.get("pysendmail-off")
    for key, rec in srvs.items():
        if pf and key != "postfix":
            rec["paired_vs_postfix"] = paired(rec["rates"], pf["rates"])
        if key == "pysendmail-on" and off:
            pairs = [(a, b) for a, b in zip(rec["rates"], off["rates"]) if a and b]
            rec["vs_off"] = paired(rec["rates"], off["rates"])
            rec["added_ms_per_msg"] = median([1000 / a - 1000 / b for a, b in pairs])
            rec["added_cpu_ms_per_msg"] = median([a - b for a, b in zip(rec["cpu_ms"], off["cpu_ms"])
                                                  if a is not None and b is not None])


def report(data):
    cfg = data["settings"]
    for cell in data["cells"]:          # from the raw runs again: a re-render follows a formula change
        summarize(cell)
    pfv = postfix_version(data)
    dns = data.get("dns") or {}
    out = ["## Inbound authentication checks: SMTP accept rate with the checks on and off", "",
           f"pysendmail's daemon (`sendmail -bD`, phase `smtp`'s cf) with `O AuthChecks={cfg['checks']}` (on) "
           f"and `O AuthChecks=none` (off), and Postfix {pfv} (private smtpd, no checks: its default) for "
           f"scale. DNS from a loopback server (tests/dns_helpers.py LoopbackDns on "
           f"{dns.get('address', '?')}:{dns.get('port', '?')}, named by each instance's etc/resolv.conf): "
           f"for `{DOMAIN}` SPF `{ZONE['spf']}`, DMARC `{ZONE['dmarc']}`, a DKIM RSA 2048 key (selector "
           f"`{SELECTOR}`). Unsigned: smtp-source 4 KB messages (`-f {SENDER}`; SPF and DMARC lookups, "
           f"dkim=none); signed: one message of {dns.get('signed_bytes', '?')} bytes signed once by dkimpy "
           f"(relaxed/relaxed, dkimpy verifies: {dns.get('dkimpy_verifies', '?')}), sent by the bench's "
           f"asyncio client. One connection per message; {cfg['runs']} rounds after one untimed warm-up, "
           f"servers interleaved, queues drained (untimed) around every run; a run counts only if every "
           f"message got 250. The daemon caches DNS answers for their TTL (300 s): after the warm-up most "
           f"lookups are cache hits. Phase took {data['seconds']} s.", "",
           "Rates: median [min-max] msgs/s, ok runs. `on/off` = median over rounds of r_on/r_off in the "
           "same round; `+ms/msg` = median of 1000/r_on - 1000/r_off (at 1 session the latency the checks "
           "add; at 20 the inverse throughput); CPU = the daemon's process tree, ms per message, off -> on "
           "(+ the paired difference); DNS q/msg = questions the loopback server answered per message "
           "during the run and its drain (on; off in brackets).", "",
           "| messages | sessions | M | Postfix (no checks) | pysendmail off | pysendmail on | on/off | "
           "+ms/msg wall | daemon CPU ms/msg off -> on (+) | DNS q/msg on (off) | on vs Postfix |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for cell in data["cells"]:
        s = cell["servers"]
        pf, off, on = s.get("postfix"), s.get("pysendmail-off"), s.get("pysendmail-on")
        kind = "unsigned (smtp-source)" if cell["kind"] == "unsigned" else \
            f"DKIM-signed, {cell.get('bytes')} B (asyncio client)"
        row = [kind, str(cell["sessions"]), str(cell["messages"]), rate_cell(pf), rate_cell(off), rate_cell(on)]
        if on and off:
            add = on.get("added_cpu_ms_per_msg")
            row += [f"{fmt(on.get('vs_off'), '%.2f')}x", fmt(on.get("added_ms_per_msg"), "%.2f"),
                    f"{fmt(off['cpu_ms_per_msg'], '%.2f')} -> {fmt(on['cpu_ms_per_msg'], '%.2f')}"
                    + (f" ({add:+.2f})" if add is not None else ""),
                    f"{fmt(on['dns_per_msg'], '%.3f')} ({fmt(off['dns_per_msg'], '%.3f')})",
                    f"{fmt(on.get('paired_vs_postfix'), '%.2f')}x"]
        else:
            row += ["-"] * 5
        out.append("| " + " | ".join(row) + " |")
    out += ["", "What the checks said (the `auth:` lines of the on daemon's maillog, timed runs), the DNS "
            "questions seen during the warm-up (cold caches) and the DNS server's own CPU:", ""]
    for cell in data["cells"]:
        on = cell["servers"].get("pysendmail-on")
        if not on:
            continue
        ok_msgs = cell["messages"] * on["ok_runs"]
        got = sum(on["auth_total"].values())
        tally = "; ".join(f"`{k}` x{v}" for k, v in sorted(on["auth_total"].items(), key=lambda kv: -kv[1])[:4])
        wdns = (on["warmup"].get("dns") or {})
        out.append(f"- {cell['kind']}/{cell['sessions']}: {got} results for {ok_msgs} messages accepted"
                   f"{' (**check**: not every message was checked)' if got < ok_msgs else ''}: {tally or '-'}; "
                   f"warm-up {on['warmup']['messages']} msgs: {wdns.get('n', '?')} DNS questions "
                   f"({', '.join(f'{k} {v}' for k, v in (wdns.get('by') or {}).items())}); DNS server CPU "
                   f"{fmt(on['dns_cpu_ms_per_msg'], '%.3f')} ms/msg")
        off = cell["servers"].get("pysendmail-off")
        if off and off["auth_total"]:
            out.append(f"  - **check**: the off daemon logged auth results: {off['auth_total']}")
    tot = data.get("dns_total")
    if tot:
        out.append(f"- the DNS server answered {tot['n']} questions over the whole phase (preflights and "
                   f"warm-ups included): " + ", ".join(f"{k} {v}" for k, v in tot["names"].items()))
    out.append("")
    out += trouble_lines(data, lambda c: f"{c['kind']}/{c['sessions']}")
    out += maillog_lines(data, skip=("daemon", ": auth: "))
    if data.get("installed"):
        out.append(f"- installed into the bench venv for this phase: {', '.join(data['installed'])}")
    out += config_lines(data, lambda d: " (phase smtp's main.cf)", lambda d: d.get("cf_lines") or [],
                        lambda d: f"; `{d.get('resolv_conf')}`")
    out.append(f"- unsigned: `{' '.join(data.get('smtp_source') or [])}`; DNS server: "
               f"`{' '.join(dns.get('argv') or [])}`")
    return "\n".join(out) + "\n"


if __name__ == "__main__" and sys.argv[1:2] == ["dns-server"]:
    serve(sys.argv[2])
