"""The SMTP AUTH user store, the failure throttle, and the log lines fail2ban reads.

User store: a passwd-style file, by default `/etc/pysendmail/sasl-passwd` for the system
instance and `$PYSENDMAIL_ROOT/etc/sasl-passwd` for a private one (`default_path`). One
entry a line, "user:hash"; blank lines and lines starting with "#" are comments; a hash
starting with "!" or "*" locks the entry. Hashes understood:

  $y$...            yescrypt        } verified through the system's libcrypt (libxcrypt)
  $6$...            SHA-512-crypt   } with ctypes: crypt_rn(), thread-safe
  $scrypt$ln=N,r=R,p=P$SALT$HASH    hashlib.scrypt; SALT and HASH unpadded base64;
                                    what `pysendmail passwd` writes (make_hash)

No PAM: there is no PAM binding among our dependencies, so system accounts are not
consulted; only the file's entries can log in. (Python's `crypt` module is deprecated
since 3.11, hence ctypes.)

Security stance: the file must be a regular file owned by root or by the instance's
owner (our effective uid), neither group- nor world-writable, and not world-readable;
otherwise PasswordFile refuses it with an AuthConfigError naming the file (the daemon
answers 454 and logs it). Hash comparison is constant-time (hmac.compare_digest), and
an unknown user costs the same scrypt work as a wrong password, so neither timing nor
the log tells them apart. `check` blocks for the hash's cost (tens of milliseconds):
call it from a worker thread in an event loop.

`load_auth(layout, options)` gives the daemon's `Auth`: the SASL exchange, the check
against this file, the throttle and the log lines, as the sessions use them.
"""
import base64
import hashlib
import hmac
import os
import stat
import time

from ..errors import ConfigError
from .access import relay_field

FILE_NAME = "sasl-passwd"

# make_hash's scrypt cost: N = 2**15, r = 8, p = 1 (32 MiB, about 0.1 s).
SCRYPT_LN, SCRYPT_R, SCRYPT_P = 15, 8, 1
SCRYPT_MAXMEM = 256 * 1024 * 1024
MAX_LINE = 4096


class AuthConfigError(ConfigError):
    """The user store cannot be used (missing, unsafe permissions, unreadable)."""


def default_path(layout):
    """Where the instance's user store lives."""
    if layout.system:
        return "/etc/pysendmail/" + FILE_NAME
    return layout.base.rstrip("/") + "/etc/" + FILE_NAME


# -- hashes ----------------------------------------------------------------------------

def _b64(data):
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text):
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def make_hash(password, ln=SCRYPT_LN, r=SCRYPT_R, p=SCRYPT_P, salt=None):
    """The "$scrypt$ln=15,r=8,p=1$SALT$HASH" form of `password` (str)."""
    salt = os.urandom(16) if salt is None else salt
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=1 << ln, r=r, p=p,
                         maxmem=SCRYPT_MAXMEM, dklen=32)
    return "$scrypt$ln=%d,r=%d,p=%d$%s$%s" % (ln, r, p, _b64(salt), _b64(key))


def _verify_scrypt(password, stored):
    try:
        _, _, params, salt, key = stored.split("$")
        fields = dict(f.split("=", 1) for f in params.split(","))
        ln, r, p = int(fields["ln"]), int(fields["r"]), int(fields["p"])
        if not (1 <= ln <= 24 and 1 <= r <= 64 and 1 <= p <= 16):
            return False
        salt, key = _unb64(salt), _unb64(key)
        got = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=1 << ln, r=r, p=p,
                             maxmem=SCRYPT_MAXMEM, dklen=len(key))
    except (ValueError, KeyError):
        return False
    return hmac.compare_digest(got, key)


_libcrypt = None


def _crypt_library():
    global _libcrypt
    if _libcrypt is None:
        import ctypes
        lib = None
        for name in ("libcrypt.so.1", "libcrypt.so.2", "libcrypt.so"):
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        if lib is None:
            raise AuthConfigError("libcrypt is not installed: cannot verify $y$ or $6$ hashes")
        fn = getattr(lib, "crypt_rn", None)
        size = 32768                           # libxcrypt's sizeof(struct crypt_data)
        if fn is None:
            fn, size = lib.crypt_r, 262144     # glibc's older libcrypt: a larger struct
            fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
        else:
            fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
        fn.restype = ctypes.c_char_p
        _libcrypt = (ctypes, fn, size, fn.__name__ == "crypt_rn")
    return _libcrypt


def libcrypt(password, setting):
    """crypt(3) of `password` (str) with `setting` (a full hash or a salt), or None."""
    ctypes, fn, size, sized = _crypt_library()
    buf = ctypes.create_string_buffer(size)
    args = (password.encode("utf-8"), setting.encode("ascii"), buf)
    out = fn(*(args + (size,) if sized else args))
    if not out or out.startswith(b"*"):
        return None
    return out.decode("ascii", "replace")


def verify_hash(password, stored):
    """Does `password` (str) match `stored`? False for locked entries and unknown forms."""
    if not stored or stored[0] in "!*":
        return False
    if stored.startswith("$scrypt$"):
        return _verify_scrypt(password, stored)
    if stored.startswith(("$y$", "$6$", "$7$", "$gy$", "$2b$", "$5$")):
        if "\0" in password:
            return False
        got = libcrypt(password, stored)
        return got is not None and hmac.compare_digest(got.encode(), stored.encode())
    return False


# A hash of a random password, checked when the user does not exist (same work).
_DUMMY = None


def _dummy_hash():
    global _DUMMY
    if _DUMMY is None:
        _DUMMY = make_hash(_b64(os.urandom(12)))
    return _DUMMY


# -- the file ----------------------------------------------------------------------------

def check_file_safety(path, st, euid=None):
    """Raise AuthConfigError unless `st` (os.stat of `path`) is a safe user store."""
    euid = os.geteuid() if euid is None else euid
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode):
        raise AuthConfigError("%s: not a regular file; refusing to use it" % path)
    if st.st_uid not in (0, euid):
        raise AuthConfigError("%s: owned by uid %d, not by root or uid %d; refusing to use it"
                              % (path, st.st_uid, euid))
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise AuthConfigError("%s: group- or world-writable (mode %04o); refusing to use it"
                              % (path, mode))
    if mode & stat.S_IROTH:
        raise AuthConfigError("%s: world-readable (mode %04o): it holds password hashes; "
                              "refusing to use it (chmod o-r)" % (path, mode))


def parse(text):
    """{user: hash} from the file's text, and [(line number, complaint)]."""
    users, complaints = {}, []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user or not hashed or len(line) > MAX_LINE:
            complaints.append((number, "not user:hash"))
            continue
        if user in users:
            complaints.append((number, "duplicate entry for %s (the first one counts)" % user))
            continue
        users[user] = hashed.strip()
    return users, complaints


def serialize(users, header=None):
    """The file's text for {user: hash} (kept in the given order)."""
    lines = ["# " + h for h in (header or [])]
    lines += ["%s:%s" % item for item in users.items()]
    return "\n".join(lines) + "\n"


class PasswordFile:
    """The user store at `path`, read again whenever its mtime, size or inode changes."""

    def __init__(self, path, euid=None):
        self.path = path
        self.euid = euid
        self.users = {}
        self.complaints = []
        self._key = None

    def load(self):
        """(Re)read the file if it changed; raise AuthConfigError if it cannot be used."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise AuthConfigError("%s: cannot open: %s" % (self.path, e.strerror)) from None
        try:
            st = os.fstat(fd)
            check_file_safety(self.path, st, self.euid)
            key = (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size)
            if key == self._key:
                return
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read()
        finally:
            os.close(fd)
        self.users, self.complaints = parse(data.decode("utf-8", "replace"))
        self._key = key

    def check(self, user, password):
        """Is `password` right for `user`? Raises AuthConfigError if the file is unusable."""
        self.load()
        return self.check_loaded(user, password)

    def check_loaded(self, user, password):
        """`check` against the entries last loaded, without looking at the file (for a
        process that can no longer open it); an unknown user costs the same work."""
        stored = self.users.get(user)
        if stored is None:
            verify_hash(password, _dummy_hash())
            return False
        return verify_hash(password, stored)


# -- throttling --------------------------------------------------------------------------

class AuthThrottle:
    """At most `max_failures` failed AUTH attempts per client address in `window` seconds;
    then `allowed` is False until the oldest failure leaves the window. Holds at most
    `max_entries` addresses (the least recently failed are forgotten first)."""

    def __init__(self, max_failures=3, window=300.0, clock=time.monotonic, max_entries=10000):
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        self.max_entries = max_entries
        self._failures = {}          # addr -> [times], dict order = least recent first

    def _recent(self, addr, now):
        times = self._failures.get(addr)
        if times is None:
            return None
        times[:] = [t for t in times if now - t < self.window]
        if not times:
            del self._failures[addr]
            return None
        return times

    def allowed(self, client_addr):
        times = self._recent(client_addr, self.clock())
        return times is None or len(times) < self.max_failures

    def failed(self, client_addr):
        now = self.clock()
        times = self._recent(client_addr, now) or []
        self._failures.pop(client_addr, None)
        times.append(now)
        del times[:-self.max_failures]
        self._failures[client_addr] = times
        while len(self._failures) > self.max_entries:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, client_addr):
        self._failures.pop(client_addr, None)

    def __len__(self):
        return len(self._failures)


# -- log lines ---------------------------------------------------------------------------

def auth_failure_line(mechanism, user, client_name, client_addr, forged=False,
                      reason="authentication failure", detail="checkpass failed"):
    """What Sendmail logs (LOG_WARNING, after "QID: ") when AUTH fails, e.g. "AUTH failure
    (LOGIN): authentication failure (-13) SASL(-13): authentication failure: checkpass
    failed, user=bob, relay=host [192.0.2.1]". fail2ban's sendmail-auth matches it."""
    code = {"authentication failure": -13, "authorization failure": -14,
            "bad protocol / cancel": -5}.get(reason, -13)
    text = "AUTH failure (%s): %s (%d) SASL(%d): %s: %s" % (
        mechanism, reason, code, code, reason, detail.replace(",", ";"))
    if user:
        text += ", user=%s" % user.replace(",", "_").replace(" ", "_")
    return text + ", relay=" + relay_field(client_name, client_addr, forged)


def auth_success_line(mechanism, user, client_name, client_addr, bits=0):
    """Sendmail's LogLevel > 8 line for a successful AUTH (NOQID, LOG_INFO)."""
    return "AUTH=server, relay=%s, authid=%.128s, mech=%.16s, bits=%d" % (
        relay_field(client_name, client_addr), user, mechanism, bits)


def reject_line(ruleset, arg1, client_name, client_addr, reply_text, forged=False):
    """Sendmail's log line for a rejection by a check_* ruleset, e.g. "ruleset=check_rcpt,
    arg1=<x@y>, relay=host [192.0.2.1], reject=550 5.7.1 <x@y>... Relaying denied.
    Proper authentication required." (`reply_text` is the whole reject= value)."""
    return "ruleset=%s, arg1=%s, relay=%s, reject=%s" % (
        ruleset, arg1, relay_field(client_name, client_addr, forged), reply_text)


class Auth:
    """What the SMTP sessions use for AUTH: SASL exchanges, the password file, the
    throttle, the log lines."""

    def __init__(self, passwords, throttle, mechanisms):
        self.passwords = passwords
        self.throttle = throttle
        self.mechanisms = mechanisms

    def exchange(self, mechanism, initial):
        from ..proto.smtp_sasl import SaslExchange
        return SaslExchange(mechanism, initial)

    def check(self, user, password):
        """The file is read again when it changed; a worker that may no longer open it
        (it dropped privileges) checks against what the master loaded."""
        try:
            return self.passwords.check(user, password)
        except AuthConfigError:
            if not self.passwords.users:
                raise
            return self.passwords.check_loaded(user, password)

    def failure_line(self, mech, user, name, addr, reason=None, detail=None):
        kw = {}
        if reason:
            kw["reason"] = reason
        if detail:
            kw["detail"] = detail
        return auth_failure_line(mech, user, name, addr, **kw)

    def success_line(self, mech, user, name, addr):
        return auth_success_line(mech, user, name, addr)


def load_auth(layout, options):
    """The daemon's Auth, or None when no mechanism is offered or there is no password
    file (AuthMechanisms, AuthPasswordFile). An unsafe or unreadable file raises
    AuthConfigError: the daemon does not start."""
    mechs = [m.upper() for m in (options.get("AuthMechanisms") or "PLAIN LOGIN").split()
             if m.upper() in ("PLAIN", "LOGIN")]
    path = options.get("AuthPasswordFile") or default_path(layout)
    if not mechs or not os.path.exists(path):
        return None
    passwords = PasswordFile(path)
    passwords.load()
    return Auth(passwords, AuthThrottle(), tuple(mechs))
