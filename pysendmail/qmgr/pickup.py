"""Pickup: moves messages from the maildrop into the queue (Postfix's pickup role).

Runs as root (inside `sendmail -q` or the daemon). Only files marked complete
(owner-execute bit, see queue.maildrop) are taken. Security stance: everything in a
drop file was written by an untrusted local user. The file is opened with
O_NOFOLLOW and checked on the open descriptor (a regular file, one link, size
bounded); its owner uid is the only identity believed. The submitter's envelope
sender is kept (Sendmail lets any user set one) but marked with
X-Authentication-Warning when it is not the user's own; recipients are parsed and
routed afresh; Received is added here. A drop that fails any check is moved to
maildrop/.bad-* for a person to look at, and logged.

Exactly once: before the queue file is published, a marker `mf<dropname>` naming the
new queue id is made durable in the queue directory; a pickup that finds both the
drop file and its marker (a crash between publishing and unlinking) only finishes
the unlink.
"""
import os
import pwd
import time

from .. import log as logfmt
from .. import addr as addrmod
from ..cleanup import headers as hdr
from ..errors import AddressError
from ..model import FAILED, Recipient
from ..queue.maildrop import DropFormatError, Maildrop, read_drop
from ..queue.spool import Spool, fsync_dir

MAX_DROP = 512 * 1024 * 1024
STALE_INCOMPLETE = 86400


def pickup_all(layout, options, ident, log):
    from ..delivery.router import load_rules
    from ..errors import ConfigError
    drop = Maildrop(layout.maildrop)
    spool = Spool(layout.queue)
    spool.ensure()
    count = 0
    names = drop.names()
    if not names:
        return 0
    try:
        load_rules(layout, options, ident.j)    # a broken cf: the files wait in the maildrop
    except ConfigError as e:
        log.err("NOQUEUE", "pickup deferred: %s" % e.message)
        return 0
    for name in names:
        try:
            if pickup_one(layout, options, ident, log, drop, spool, name):
                count += 1
        except OSError as e:
            log.err("NOQUEUE", "pickup of %s failed: %s" % (name, e.strerror))
    return count


def _set_bad(drop, name, log, why):
    log.err("NOQUEUE", "maildrop file %s rejected: %s" % (name, why))
    try:
        os.rename(os.path.join(drop.path, name), os.path.join(drop.path, ".bad-" + name))
    except OSError:
        pass


def pickup_one(layout, options, ident, log, drop, spool, name):
    path = os.path.join(drop.path, name)
    marker = os.path.join(spool.path, "mf" + name)
    if os.path.exists(marker):
        with open(marker) as f:
            qid = f.read().strip()
        if spool.control_path(qid):
            os.unlink(path)
            os.unlink(marker)
            fsync_dir(drop.path)
            return False
        os.unlink(marker)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return False
    except OSError as e:
        _set_bad(drop, name, log, e.strerror)
        return False
    try:
        st = os.fstat(fd)
        import stat as _stat
        if not _stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            _set_bad(drop, name, log, "not a regular file with one link")
            return False
        if not st.st_mode & _stat.S_IXUSR:
            # Still being written, or left incomplete by a crashed submitter.
            if time.time() - st.st_mtime > STALE_INCOMPLETE:
                log.warning("NOQUEUE", "removing incomplete maildrop file %s" % name)
                os.unlink(path)
            return False
        try:
            env_in, body_off, body_len = read_drop(fd, MAX_DROP)
        except DropFormatError as e:
            _set_bad(drop, name, log, str(e))
            return False
        try:
            pw = pwd.getpwuid(st.st_uid)
            user, gecos = pw.pw_name, pw.pw_gecos.split(",")[0]
        except KeyError:
            user, gecos = "uid%d" % st.st_uid, ""
        return _queue(layout, options, ident, log, spool, drop, name, marker, fd, st,
                      env_in, body_off, body_len, user, gecos)
    finally:
        os.close(fd)


def _queue(layout, options, ident, log, spool, drop, name, marker, fd, st, env_in,
           body_off, body_len, user, gecos):
    from ..delivery.router import RouteContext, resolve, to_recipient
    now = int(time.time())
    qid, df = spool.allocate(now)
    committed = False
    try:
        off = body_off
        remaining = body_len
        while remaining:
            chunk = os.pread(fd, min(remaining, 1 << 20), off)
            if not chunk:
                break
            os.write(df, chunk)
            off += len(chunk)
            remaining -= len(chunk)
        env = env_in
        env.qid = qid
        env.uid = st.st_uid
        env.user = user
        env.relay = user + "@localhost"
        env.macros = {"_": user + "@localhost"}
        env.created = now
        env.attempts = env.last_attempt = env.next_attempt = 0
        env.hold_reason = ""
        env.size = body_len
        sender = env.sender
        if sender:
            try:
                sender = addrmod.parse(sender).bare
            except AddressError:
                sender = user
        elif "-f" not in env.flags:
            sender = user
        env.sender = sender
        ctx = RouteContext(layout, options, ident, lambda m: log.info(qid, m))
        texts = [(r.address, r.notify) for r in env.recipients]
        env.recipients = []
        seen = set()
        for text, notify in texts:
            try:
                targets = resolve(text, ctx)
            except AddressError as e:
                log.info(qid, e.message)
                env.recipients.append(Recipient(text, text, state=FAILED, status="5.1.3",
                                                diag="553 5.1.3 " + e.reason, mailer="error"))
                continue
            for t in targets:
                if t.key() in seen:
                    continue
                seen.add(t.key())
                if t.mailer == "discard":
                    log.info(qid, "%s... discarded" % (t.address or text))
                    continue
                env.recipients.append(to_recipient(t, text, notify=notify))
        warning = None
        if "-f" in env.flags and sender.split("@", 1)[0] != user and user not in ("root",):
            warning = "%s set sender to %s using -f" % (user, sender or "<>")
        headers = env.headers
        single = env.recipients[0].address if len(env.recipients) == 1 else None
        from_addr = sender if "@" in sender else ("%s@%s" % (sender, ident.j) if sender else "")
        env.headers = hdr.fix_up(headers, qid=qid, hostname=ident.j, now=now, user=user,
                                 from_address=from_addr, full_name=env.full_name or gecos,
                                 single_rcpt=single, auth_warning=warning)
        env.priority = body_len + 30000 * len(env.recipients)
        verdict = "queue"
        from ..cleanup import milters as cleanup_milters
        if env.recipients and cleanup_milters.enabled(options):
            verdict = cleanup_milters.filter_submission(ctx.rules, options, ident, log, env, df,
                                                        body_len, name)
        if verdict != "queue":
            spool.discard(qid, df)
            df = None
            if verdict == "drop":
                os.unlink(os.path.join(drop.path, name))
                fsync_dir(drop.path)
            return False                # "wait": the drop file waits for the next pickup
        if not env.recipients:
            spool.discard(qid, df)
            df = None
            os.unlink(os.path.join(drop.path, name))
            fsync_dir(drop.path)
            log.info("NOQUEUE", "maildrop file %s from %s had no recipients" % (name, user))
            return False
        with open(marker, "w") as m:
            m.write(qid + "\n")
            m.flush()
            os.fsync(m.fileno())
        fsync_dir(spool.path)
        spool.commit(env, df)
        committed = True
        os.unlink(os.path.join(drop.path, name))
        fsync_dir(drop.path)
        os.unlink(marker)
        msgid = env.header("Message-Id")
        log.info(qid, logfmt.from_line(env, len(env.recipients),
                                    msgid.decode("utf-8", "replace") if msgid else "",
                                    relay=env.relay, size=body_len))
        return True
    finally:
        if df is not None:
            if not committed:
                spool.discard(qid, df)
            else:
                os.close(df)
