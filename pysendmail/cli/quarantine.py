"""`sendmail -Q`: quarantine queued messages, change the reason, or release them.

Sendmail 8.17's queue quarantine command (main.c, queue.c quarantine_queue()):

    sendmail -Qreason [-qI..|-qR..|-qS..]   quarantine the matching queued messages
    sendmail -Qreason -qQ[..]               change the reason of quarantined ones
    sendmail -Q [-qI..]                     release the matching quarantined messages

A bare -Q (or -Q.) releases; releasing, or a -qQ filter, looks at quarantined
messages, else at the normal queue. Nothing is delivered: the command only changes
quarantine state, then exits 0. A quarantined message is the spool's hfID control
file (Spool.hold / Spool.release); mailq shows it as "QUARANTINE: reason", queue runs
skip it. Exit status: 0, or EX_CANTCREAT when a control file could not be rewritten,
EX_NOPERM/EX_OSFILE when the queue directory cannot be read, EX_USAGE with a -b mode.

Each message is changed under its lock (the flock on its dfID the queue runner takes,
non-blocking): a message being delivered is skipped with Sendmail's "Skipping QID:
Could not lock ..." line, never changed under the delivery, and its control file is
read again once locked (another command may have changed it since the listing).

Security: runs as its caller, with the caller's rights on the queue directory (the
system queue is root's); the reason is cleaned of control characters (newlines
first) so it cannot forge a control-file field, a log line or a mailq line.
"""
import os
import posix

from ..errors import (EX_CANTCREAT, EX_NOPERM, EX_OK, EX_OSFILE, EX_USAGE, MTAError,
                      UsageError)

RELEASE = (None, "", ".")       # -Q alone (Sendmail makes it "-Q."): unquarantine


def clean_reason(text):
    """The reason as stored: newlines and other control characters removed (a tab
    becomes a space), surrounding blanks stripped."""
    out = []
    for ch in text:
        if ch == "\t":
            out.append(" ")
        elif ord(ch) >= 32 and ord(ch) != 127:
            out.append(ch)
    return "".join(out).strip()


def _say(text):
    posix.write(1, (text + "\n").encode("utf-8", "surrogateescape"))


def check_mode(inv):
    """-Q goes only with the default mode (-bm) or a queue run: Sendmail's usage error."""
    if inv.mode != "m":
        raise UsageError("Can not use -Q with -b%s" % inv.mode)


def candidates(spool, held, filters):
    """[(created, qid, Envelope)] of the messages to look at: the quarantined ones
    (`held`) or the normal queue, matching the -q filters, oldest first. Raises
    MTAError when the queue directory cannot be read (a missing one is empty)."""
    from ..qmgr.queuerun import matches
    from ..queue import qfile
    try:
        names = os.listdir(spool.path)
    except FileNotFoundError:
        return []
    except OSError as e:
        status = EX_NOPERM if isinstance(e, PermissionError) else EX_OSFILE
        raise MTAError("cannot open queue directory %s: %s" % (spool.path, e.strerror),
                       status) from None
    prefix = "hf" if held else "qf"
    out = []
    for name in names:
        if name[:2] != prefix:
            continue
        qid = name[2:]
        try:
            env = spool.load(qid)
        except (FileNotFoundError, qfile.FormatError, ValueError, UnicodeDecodeError):
            continue
        except PermissionError as e:
            raise MTAError("cannot read %s: %s" % (os.path.join(spool.path, name), e.strerror),
                           EX_NOPERM) from None
        if matches(env, filters):
            out.append((env.created, qid, env))
    out.sort(key=lambda item: item[:2])
    return out


def change(spool, qid, reason, held, filters, log, verbose):
    """Quarantine (reason) or release (reason None) message `qid` under its lock.
    Returns True when its state changed."""
    from ..qmgr.queuerun import matches
    from ..queue import qfile
    fd = spool.lock(qid)
    if fd is None:
        if os.path.exists(spool.df(qid)):
            _say("Skipping %s: Could not lock %s" % (qid, spool.control_path(qid)
                                                     or spool.df(qid)))
        return False
    try:
        path = spool.control_path(qid)
        if path is None or (path == spool.hf(qid)) != held:
            return False                # gone, or changed state since the listing
        try:
            env = spool.load(qid)
        except (FileNotFoundError, qfile.FormatError, ValueError, UnicodeDecodeError):
            return False
        if not matches(env, filters):
            return False
        old = env.hold_reason
        if reason is None:
            if not old:
                return False
            spool.release(qid)
            if verbose:
                _say('%s: Removed quarantine of "%s"' % (qid, old))
            log.info(qid, "unquarantine")
            return True
        if old == reason:
            if verbose:
                _say('%s: Already quarantined with "%s"' % (qid, reason))
            return False
        spool.hold(qid, reason)
        if verbose:
            if old:
                _say('%s: Quarantine changed from "%s" to "%s"' % (qid, old, reason))
            else:
                _say('%s: Quarantined with "%s"' % (qid, reason))
        log.info(qid, "quarantine=%s" % reason)
        return True
    finally:
        os.close(fd)


def detached_reason(inv):
    """Sendmail takes `-Q reason` (the reason as the next argument, when it does not
    start with '-') as -Qreason; our getopt reads a bare -Q and stops at the operand.
    Read the reason and the options after it here (only -q filters and -v may follow),
    so `sendmail -Q spam -qIabc` quarantines abc and never releases the whole queue."""
    if inv.quarantine != "" or not inv.recipients:
        return
    from ..config import cmdline
    reason, rest = inv.recipients[0], inv.recipients[1:]
    more = cmdline.parse(rest, inv.prog)
    if (more.recipients or more.mode != inv.mode or more.options or more.cf
            or more.quarantine is not None):
        raise UsageError("Can not use -Q with recipients: put the options before the reason")
    inv.quarantine = reason
    inv.queue_filters = inv.queue_filters + more.queue_filters
    inv.verbose = inv.verbose or more.verbose
    inv.recipients = []


def main(inv, layout, log):
    """Run `sendmail -Q...`: returns the exit status."""
    from ..queue.spool import Spool
    check_mode(inv)
    detached_reason(inv)
    if inv.recipients:
        raise UsageError("Can not use -Q with recipients")
    if inv.quarantine in RELEASE:
        reason = None
    else:
        reason = clean_reason(inv.quarantine)
        if not reason:
            raise MTAError("-Q: the quarantine reason is empty once cleaned", EX_USAGE)
    filters = inv.queue_filters
    held = reason is None or any(k == "Q" and not neg for k, _, neg in filters)
    spool = Spool(layout.queue)
    items = candidates(spool, held, filters)
    if not items:
        if inv.verbose:
            _say("%s: no matches" % spool.path)
        return EX_OK
    if inv.verbose:
        _say("Processing %s:" % spool.path)
    status = EX_OK
    for _created, qid, _env in items:
        try:
            change(spool, qid, reason, held, filters, log, inv.verbose)
        except OSError as e:
            _say("%s: cannot change its quarantine: %s" % (qid, e.strerror))
            log.err(qid, "quarantine change failed: %s" % e.strerror)
            status = EX_CANTCREAT
    return status
