"""The "|command" and "/file" deliveries (Sendmail's prog and *file* mailers).

Security stance: neither ever runs as root. When the MTA is root they run as the
recipient's owner: the .forward owner, or for /etc/aliases entries (owner "") the
DefaultUser option (Sendmail's default is mail, else nobody; a DefaultUser that
resolves to uid 0 is replaced by nobody). A non-root instance cannot switch users:
it runs them as itself, which is what that user could do anyway.

|command: /bin/sh -c COMMAND in a new session, as the owner (subprocess does the
setgroups/setgid/setuid in the child before exec), in the owner's home directory (or
/), with a clean environment: HOME, USER, LOGNAME, SHELL=/bin/sh, PATH=/bin:/usr/bin,
SENDER. The message goes to stdin as Sendmail's prog mailer sends it (flags lsDFMoqeu9:
no From_ line, no Return-Path; the envelope sender is in $SENDER). The whole process
group is killed after Timeout.prog (default 1h). Exit status mapping (sysexits, as
Sendmail): 0 -> 2.0.0; 75 -> 4.0.0 Deferred; 71, 74 (and signals) -> temporary;
67 -> 5.1.1 User unknown; others -> 5.3.0 with Sendmail's text, or "unknown mailer
error N". The first line of the program's output (bounded) is added to the reply.

/file: appended in mbox format with the same locks, journal, pending-append record
(FILE.pysendmail-pending, where the owner may write in the file's directory; see
journal.py) and rollback as a mailbox (mbox.append), in a child running as the owner,
so the kernel's permission checks apply. Refused: symlinks (O_NOFOLLOW), non-regular files, files with more than
one link, executable files, and files neither owned by the owner nor world-writable.
A missing file is created 0600 by the owner. "/dev/null" is accepted and discarded,
as Sendmail does. Unlike a mailbox, a program cannot be made exactly-once: one killed
mid-run is run again on the next attempt (as with Sendmail).
"""
import grp
import os
import pwd
import signal
import stat
import time

from ..errors import EX_NOUSER, EX_OK, EX_TEMPFAIL, EXIT_DSN, EXIT_TEXT
from ..model import DeliveryStatus
from . import journal as journal_mod
from . import mbox

CHUNK = 65536
OUTPUT_KEEP = 4096
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value, default, unit="m"):
    """Seconds in a Sendmail time value ("1h", "30m", "1h30m", "90" = minutes)."""
    if not value:
        return default
    total = 0
    num = ""
    for ch in str(value).strip().lower():
        if ch.isdigit():
            num += ch
        elif ch in _UNITS and num:
            total += int(num) * _UNITS[ch]
            num = ""
        else:
            return default
    if num:
        total += int(num) * _UNITS[unit]
    return total


def _lookup(spec):
    """A pwd entry for a login name or numeric uid, or None."""
    try:
        return pwd.getpwuid(int(spec)) if spec.isdigit() else pwd.getpwnam(spec)
    except (KeyError, ValueError):
        return None


def default_user(options):
    """(uid, gid, name, home) of DefaultUser ("user", "user:group" or "uid:gid")."""
    spec = (options.get("DefaultUser") or "mail").strip()
    user, _, group = spec.partition(":")
    pw = _lookup(user) if user else None
    if pw is None or pw.pw_uid == 0:
        pw = _lookup("nobody")
    if pw is None:
        return (65534, 65534, "nobody", "/")
    gid = pw.pw_gid
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            pass
    return (pw.pw_uid, gid if gid != 0 else pw.pw_gid, pw.pw_name, pw.pw_dir)


def owner_identity(owner, options):
    """(uid, gid, name, home) that a prog/file delivery runs as (never root when root)."""
    if os.geteuid() != 0:
        pw = _lookup(str(os.geteuid()))
        name = pw.pw_name if pw else str(os.geteuid())
        return (os.geteuid(), os.getegid(), name, pw.pw_dir if pw else "/")
    pw = _lookup(owner) if owner else None
    if pw is None or pw.pw_uid == 0:
        return default_user(options)
    return (pw.pw_uid, pw.pw_gid, pw.pw_name, pw.pw_dir)


def _groups_of(name, gid):
    try:
        return sorted(set(os.getgrouplist(name, gid)))
    except OSError:
        return [gid]


def status_for_exit(code, output=b""):
    """DeliveryStatus for a program's exit status (negative: killed by that signal)."""
    first = output.strip().split(b"\n", 1)[0].decode("utf-8", "replace")[:200] if output else ""

    def with_output(text):
        return "%s: %s" % (text, first) if first else text

    if code == EX_OK:
        return DeliveryStatus("2.0.0", "Delivered")
    if code < 0:
        return DeliveryStatus("4.0.0", with_output("mailer died with signal %d" % -code))
    text = EXIT_TEXT.get(code, "unknown mailer error %d" % code)
    if code == EX_TEMPFAIL:
        return DeliveryStatus("4.0.0", with_output(text))
    if code == EX_NOUSER:
        return DeliveryStatus("5.1.1", with_output(text))
    if EXIT_DSN.get(code, "5").startswith("4"):
        return DeliveryStatus(EXIT_DSN[code], with_output(text))
    return DeliveryStatus("5.3.0", with_output(text))


def deliver_prog(command, source, sender, owner, options):
    """Run `command` with the message on stdin. Returns a DeliveryStatus."""
    import subprocess           # only prog deliveries pay for subprocess and selectors
    command = command[1:] if command.startswith("|") else command
    if not command.strip():
        return DeliveryStatus("5.3.5", "empty program")
    uid, gid, name, home = owner_identity(owner, options)
    timeout = parse_duration(options.get("Timeout.prog"), 3600)
    cwd = home if home and os.path.isdir(home) and os.access(home, os.X_OK) else "/"
    env = {"HOME": home or "/", "USER": name, "LOGNAME": name, "SHELL": "/bin/sh",
           "PATH": "/bin:/usr/bin", "SENDER": sender or "<>"}
    kwargs = {}
    if os.geteuid() == 0:
        kwargs = {"user": uid, "group": gid, "extra_groups": _groups_of(name, gid)}
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd,
                                env=env, close_fds=True, start_new_session=True, **kwargs)
    except OSError as e:
        return DeliveryStatus("4.3.0", "cannot run program: %s" % e.strerror)
    output, timed_out = _feed(proc, source.chunks(mbox=False), time.monotonic() + timeout)
    if timed_out:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        return DeliveryStatus("4.4.2", "timeout waiting for program (%d s)" % timeout)
    return status_for_exit(proc.wait(), output)


def _feed(proc, chunks, deadline):
    import selectors
    """Write the message to stdin while keeping the output; (output, timed_out)."""
    sel = selectors.DefaultSelector()
    out = proc.stdout
    inp = proc.stdin
    os.set_blocking(inp.fileno(), False)
    sel.register(out, selectors.EVENT_READ)
    sel.register(inp, selectors.EVENT_WRITE)
    kept = bytearray()
    pending = memoryview(b"")
    writing = True
    try:
        exited_at = None
        while True:
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                return bytes(kept), True
            if not sel.get_map():
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now  # a background child may keep the pipes open: 1 s grace
            if exited_at is not None and now - exited_at > 1.0:
                break
            for key, _ in sel.select(min(left, 1.0)):
                if key.fileobj is out:
                    data = os.read(out.fileno(), CHUNK)
                    if not data:
                        sel.unregister(out)
                    elif len(kept) < OUTPUT_KEEP:
                        kept += data[:OUTPUT_KEEP - len(kept)]
                elif writing:
                    if not pending:
                        nxt = next(chunks, None)
                        if nxt is None:
                            sel.unregister(inp)
                            inp.close()
                            writing = False
                            continue
                        pending = memoryview(nxt)
                    try:
                        n = os.write(inp.fileno(), pending)
                        pending = pending[n:]
                    except BlockingIOError:
                        pass
                    except (BrokenPipeError, ConnectionResetError):
                        sel.unregister(inp)
                        inp.close()
                        writing = False
        while proc.poll() is None:
            if time.monotonic() >= deadline:
                return bytes(kept), True
            time.sleep(0.01)
        return bytes(kept), False
    finally:
        sel.close()
        if writing:
            try:
                inp.close()
            except OSError:
                pass
        out.close()


def _file_check(uid):
    def check(st):
        if st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH):
            return "executable file, not delivering"
        if st.st_uid != uid and not st.st_mode & stat.S_IWOTH:
            return "not owned by %d" % uid
        return None
    return check


def deliver_file(path, source, journal, owner, options, lock_timeout=60.0):
    """Append the message to the file `path` in mbox format, as the owner."""
    if not os.path.isabs(path):
        return DeliveryStatus("5.1.3", "%s: not an absolute path" % path)
    if path == "/dev/null":  # Sendmail discards these ("nobody: /dev/null" aliases)
        return DeliveryStatus("2.0.0", "Delivered (discarded to /dev/null)")
    uid, gid, name, _ = owner_identity(owner, options)

    def work(jrnl):
        return mbox.append(path, source, jrnl, check=_file_check(uid), create_mode=0o600,
                           lock_timeout=lock_timeout)

    if os.geteuid() == 0:
        return journal_mod.run_as((uid, gid, _groups_of(name, gid)), work, journal)
    return work(journal)
