"""Where everything lives: the embedded default paths and their relocation.

With no configuration, root uses the usual system places and any other user a
private instance under ~/.local/state/pysendmail. PYSENDMAIL_ROOT=DIR moves every
path (spool, mailboxes, aliases, logs, pid and socket files) under DIR, so tests
and users can run private instances.

It imports only the builtin `posix`, not `os`: this runs on every submission, and
`os` costs about a millisecond to import (it builds os.environ as a MutableMapping),
which the submission client (cli.relay) would otherwise pay for a handful of joins.
"""
import posix


def _join(*parts):
    out = parts[0]
    for p in parts[1:]:
        out = p if p.startswith("/") else (out.rstrip("/") + "/" + p if out else p)
    return out


def _exists(path):
    try:
        posix.stat(path)
        return True
    except OSError:
        return False


def _isdir(path):
    try:
        return posix.stat(path).st_mode & 0o170000 == 0o040000
    except OSError:
        return False


def _abspath(path):
    if not path.startswith("/"):
        path = posix.getcwd() + "/" + path
    parts = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
        else:
            parts.append(part)
    return "/" + "/".join(parts)


def getenv(name, environ=None):
    """An environment variable as str (posix.environ holds bytes)."""
    if environ is not None:
        return environ.get(name)
    value = posix.environ.get(name.encode())
    return None if value is None else value.decode("utf-8", "surrogateescape")


PACKAGE_DIR = _abspath(__file__).rpartition("/")[0]
DEFAULT_CF = _join(PACKAGE_DIR, "data", "sendmail.cf")
DEFAULT_ALIASES = _join(PACKAGE_DIR, "data", "aliases")


class Layout:
    """The paths of one instance. `system` is True for the root-owned system instance."""

    __slots__ = (
        "base", "system", "spool", "queue", "maildrop", "mail_dir", "aliases",
        "cf", "log_dir", "log_file", "run_dir", "pid_file", "pickup_socket",
        "state_dir", "hoststat_dir", "submit_socket", "cache_dir", "resolv_confs",
    )

    def __init__(self, base, system, spool, mail_dir, aliases, cf, state_dir, run_dir):
        self.base = base
        self.system = system
        self.spool = spool
        self.queue = _join(spool, "queue")
        self.maildrop = _join(spool, "maildrop")
        self.mail_dir = mail_dir
        self.aliases = aliases
        self.cf = cf
        self.state_dir = state_dir
        self.log_dir = _join(state_dir, "log")
        self.log_file = _join(self.log_dir, "maillog")
        self.hoststat_dir = _join(state_dir, "hoststat")
        self.cache_dir = _join(state_dir, "cache")     # the compiled sendmail.cf
        # the resolver's configuration: the first that exists (a private instance may
        # have its own, as a chrooted Postfix has its copy); PYSENDMAIL_RESOLV_CONF
        # replaces the system's /etc/resolv.conf (a test suite points it at loopback)
        system_conf = getenv("PYSENDMAIL_RESOLV_CONF") or "/etc/resolv.conf"
        self.resolv_confs = (system_conf,) if system else (
            _join(base, "etc", "resolv.conf"), system_conf)
        self.run_dir = run_dir
        self.pid_file = _join(run_dir, "sendmail.pid")
        self.pickup_socket = _join(spool, "public", "pickup")
        self.submit_socket = _join(spool, "public", "submit")

    def __repr__(self):
        return f"Layout(base={self.base!r}, system={self.system}, spool={self.spool!r})"


def _cf_under(etc):
    cf = _join(etc, "sendmail.cf")
    return cf if _exists(cf) else DEFAULT_CF


def for_root(base):
    """A private instance: everything under `base` (PYSENDMAIL_ROOT or the user's state dir)."""
    etc = _join(base, "etc")
    return Layout(
        base=base,
        system=False,
        spool=_join(base, "spool"),
        mail_dir=_join(base, "mail"),
        aliases=_join(etc, "aliases"),
        cf=_cf_under(etc),
        state_dir=_join(base, "state"),
        run_dir=_join(base, "run"),
    )


def system():
    """The system instance used by root (and reached through the maildrop by everyone else)."""
    return Layout(
        base="/",
        system=True,
        spool="/var/spool/pysendmail",
        mail_dir="/var/mail",
        aliases="/etc/aliases",
        cf=_cf_under("/etc/pysendmail"),
        state_dir="/var/lib/pysendmail",
        run_dir="/run/pysendmail",
    )


def user_state_dir(home=None):
    xdg = getenv("XDG_STATE_HOME")
    if xdg and xdg.startswith("/"):
        return _join(xdg, "pysendmail")
    if not home:
        home = getenv("HOME")
        if not home:
            import pwd
            home = pwd.getpwuid(posix.getuid()).pw_dir
    return _join(home, ".local", "state", "pysendmail")


def current(environ=None):
    """The layout for this process: PYSENDMAIL_ROOT, else the system one for root and for
    callers of an installed system instance, else the caller's private state directory."""
    base = getenv("PYSENDMAIL_ROOT", environ)
    if base:
        return for_root(_abspath(base))
    if posix.geteuid() == 0:
        return system()
    # A non-root caller on a host where pysendmail is the system MTA submits to the
    # system instance's maildrop; otherwise it runs a private instance of its own.
    if _isdir("/var/spool/pysendmail/maildrop"):
        return system()
    return for_root(user_state_dir())
