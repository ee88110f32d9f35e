"""`newaliases` and `sendmail -bi`: rebuild the alias database from the text file.

Output follows Sendmail 8.17: the summary line ``PATH: N aliases, longest L bytes,
T bytes total`` on stdout; each bad line as ``PATH: line N: MESSAGE`` on stderr (the
rest is still built) and the exit status is then 70 (EX_SOFTWARE), as Sendmail's
syserr() makes it. Duplicate names give ``Warning: duplicate alias name NAME`` on
stdout. A missing or unreadable aliases file prints Sendmail's
``newaliases: cannot open PATH: REASON`` and, as in Sendmail (message() does not set
the exit status), exits 0 without touching an existing database. Failing to write
the database prints ``Cannot create database for alias file PATH: REASON`` and exits 73
(EX_CANTCREAT). While another rebuild holds the file's lock it prints Sendmail's
``Alias file PATH is locked (maybe being rebuilt)`` and exits 0.

Security: runs as its caller; it writes only PATH.db next to the aliases file, by
atomic rename, so the caller needs write access to that directory.
"""
import sys


def main(argv, layout, options=None, stdout=None, stderr=None, log=None):
    """Rebuild the aliases database; returns the exit status. `argv` is ignored
    (Sendmail ignores newaliases' arguments too); the path comes from
    options["AliasFile"] if set (each file of its comma-separated list is rebuilt, one
    summary line each), else layout.aliases."""
    from pysendmail import errors
    from pysendmail.config import aliases

    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    status = errors.EX_OK
    for path in aliases.aliases_paths(layout, options or {}):
        status = max(status, _one(path, out, err, errors, aliases, log))
    return status


def _login():
    import os
    import pwd
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return "uid%d" % os.getuid()


def _one(path, out, err, errors, aliases, log=None):
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        out.flush()
        err.write(f"newaliases: cannot open {path}: {exc.strerror or exc}\n")
        err.flush()
        return errors.EX_OK
    try:
        summary = aliases.rebuild(path, wait=False)
    except aliases.Locked as exc:
        # Sendmail says so with message(), which leaves the exit status at 0.
        out.write(f"{exc}\n")
        out.flush()
        return errors.EX_OK
    except OSError as exc:
        err.write(f"Cannot create database for alias file {path}: {exc.strerror or exc}\n")
        err.flush()
        return errors.EX_CANTCREAT
    status = errors.EX_OK
    user = _login()
    if log is not None:
        log.notice("", "alias database %s rebuilt by %s" % (path, user))
    for warning in summary.warnings:
        out.write(warning + "\n")
    out.flush()
    for line in summary.errors:
        err.write(line + "\n")
        if log is not None:
            log.syserr(None, user, line)
        status = errors.EX_SOFTWARE
    err.flush()
    out.write(summary.line() + "\n")
    out.flush()
    if log is not None:
        log.info("", summary.line())
    return status
