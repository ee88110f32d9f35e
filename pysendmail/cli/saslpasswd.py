"""`pysendmail passwd [-d] [-f FILE] USER`: add, change (or with -d delete) an SMTP AUTH
user in the instance's user store (server.auth; see sasl-passwd(5)).

The password is read from the terminal (asked twice, not echoed) or, when stdin is not
a terminal, as the first line of stdin (so scripts can pipe it; never from the command
line, where `ps` would show it). The new entry is an $scrypt$ hash.

Security stance: the file is rewritten atomically (a 0600 temporary file in the same
directory, fsync, rename), so the daemon never reads half a file; an existing file
keeps its owner and group when root edits it, and its mode loses any group/world
write or world read bit. Comments and other entries are kept as they were.
"""
import os
import sys

USAGE = "usage: pysendmail passwd [-d] [-f FILE] USER"


def _err(text):
    sys.stderr.write("pysendmail passwd: %s\n" % text)


def _read_password():
    if sys.stdin.isatty():
        import getpass
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            _err("the passwords differ")
            return None
        return first
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def _valid_user(user):
    return (user and len(user.encode("utf-8")) <= 255 and ":" not in user
            and not user.startswith("#") and user.isprintable() and user.strip() == user)


def _rewrite(path, lines):
    directory = os.path.dirname(path) or "."
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    tmp = os.path.join(directory, ".%s.%d.tmp" % (os.path.basename(path), os.getpid()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600 if st is None else st.st_mode & 0o640)
        if st is not None and os.geteuid() == 0:
            os.fchown(fd, st.st_uid, st.st_gid)
        os.write(fd, "".join(lines).encode("utf-8"))
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def main(argv):
    """Run with the arguments after "passwd"; returns the exit status."""
    from ..errors import EX_CANTCREAT, EX_DATAERR, EX_NOUSER, EX_OK, EX_USAGE
    delete, path, args = False, None, list(argv)
    while args and args[0].startswith("-") and args[0] != "-":
        opt = args.pop(0)
        if opt == "--":
            break
        if opt == "-d":
            delete = True
        elif opt == "-f" and args:
            path = args.pop(0)
        elif opt.startswith("-f") and len(opt) > 2:
            path = opt[2:]
        else:
            _err(USAGE)
            return EX_USAGE
    if len(args) != 1:
        _err(USAGE)
        return EX_USAGE
    user = args[0]
    if not _valid_user(user):
        _err("%r: not a valid user name" % user)
        return EX_DATAERR
    from ..server import auth
    if path is None:
        from .. import layout
        path = auth.default_path(layout.current())
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines(keepends=True)
    except FileNotFoundError:
        lines = []
    except OSError as e:
        _err("%s: %s" % (path, e.strerror))
        return EX_CANTCREAT
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    found = [i for i, line in enumerate(lines)
             if not line.lstrip().startswith("#") and line.partition(":")[0] == user]
    if delete:
        if not found:
            _err("%s: no such user in %s" % (user, path))
            return EX_NOUSER
        lines = [line for i, line in enumerate(lines) if i not in found]
    else:
        password = _read_password()
        if password is None:
            return EX_DATAERR
        if not password or "\0" in password:
            _err("empty password: nothing changed")
            return EX_DATAERR
        entry = "%s:%s\n" % (user, auth.make_hash(password))
        if found:
            lines[found[0]] = entry
            lines = [line for i, line in enumerate(lines) if i not in found[1:]]
        else:
            lines.append(entry)
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        _rewrite(path, lines)
    except OSError as e:
        _err("%s: cannot write: %s" % (path, e.strerror))
        return EX_CANTCREAT
    return EX_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
