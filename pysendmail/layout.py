"""Where everything lives: the embedded default paths and their relocation.

With no configuration, root uses the usual system places and any other user a
private instance under ~/.local/state/pysendmail. PYSENDMAIL_ROOT=DIR moves every
path (spool, mailboxes, aliases, logs, pid and socket files) under DIR, so tests
and users can run private instances. Imports only `os`: this runs on every
submission.
"""
import os

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CF = os.path.join(PACKAGE_DIR, "data", "sendmail.cf")
DEFAULT_ALIASES = os.path.join(PACKAGE_DIR, "data", "aliases")


class Layout:
    """The paths of one instance. `system` is True for the root-owned system instance."""

    __slots__ = (
        "base", "system", "spool", "queue", "maildrop", "mail_dir", "aliases",
        "cf", "log_dir", "log_file", "run_dir", "pid_file", "pickup_socket",
        "state_dir", "hoststat_dir",
    )

    def __init__(self, base, system, spool, mail_dir, aliases, cf, state_dir, run_dir):
        self.base = base
        self.system = system
        self.spool = spool
        self.queue = os.path.join(spool, "queue")
        self.maildrop = os.path.join(spool, "maildrop")
        self.mail_dir = mail_dir
        self.aliases = aliases
        self.cf = cf
        self.state_dir = state_dir
        self.log_dir = os.path.join(state_dir, "log")
        self.log_file = os.path.join(self.log_dir, "maillog")
        self.hoststat_dir = os.path.join(state_dir, "hoststat")
        self.run_dir = run_dir
        self.pid_file = os.path.join(run_dir, "sendmail.pid")
        self.pickup_socket = os.path.join(spool, "public", "pickup")

    def __repr__(self):
        return f"Layout(base={self.base!r}, system={self.system}, spool={self.spool!r})"


def _cf_under(etc):
    cf = os.path.join(etc, "sendmail.cf")
    return cf if os.path.exists(cf) else DEFAULT_CF


def for_root(base):
    """A private instance: everything under `base` (PYSENDMAIL_ROOT or the user's state dir)."""
    etc = os.path.join(base, "etc")
    return Layout(
        base=base,
        system=False,
        spool=os.path.join(base, "spool"),
        mail_dir=os.path.join(base, "mail"),
        aliases=os.path.join(etc, "aliases"),
        cf=_cf_under(etc),
        state_dir=os.path.join(base, "state"),
        run_dir=os.path.join(base, "run"),
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
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "pysendmail")
    return os.path.join(home or os.path.expanduser("~"), ".local", "state", "pysendmail")


def current(environ=None):
    """The layout for this process: PYSENDMAIL_ROOT, else the system one for root and for
    callers of an installed system instance, else the caller's private state directory."""
    env = os.environ if environ is None else environ
    base = env.get("PYSENDMAIL_ROOT")
    if base:
        return for_root(os.path.abspath(base))
    if os.geteuid() == 0:
        return system()
    # A non-root caller on a host where pysendmail is the system MTA submits to the
    # system instance's maildrop; otherwise it runs a private instance of its own.
    if os.path.isdir("/var/spool/pysendmail/maildrop"):
        return system()
    return for_root(user_state_dir())
