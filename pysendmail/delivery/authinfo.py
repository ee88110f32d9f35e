"""Client-side SMTP AUTH credentials: Sendmail's authinfo map and DefaultAuthInfo file.

FEATURE(`authinfo') adds ``Kauthinfo hash /etc/mail/authinfo`` and a ruleset that
looks up ``AuthInfo:<server name>``, then ``AuthInfo:<server address>``, then
``AuthInfo:`` (the default), exactly (no domain or net searches). An entry's value
is a list of quoted items ``"TDtext"``: T a tag (U user/authorization id, I
authentication id, P password, R realm, M mechanisms separated by spaces; either
case), D ":" for plain text or "=" for base64, e.g.

    AuthInfo:smtp.example.com "U:user" "I:authid" "P:secret" "R:example.com" "M:PLAIN LOGIN"
    AuthInfo:192.0.2.1 "U:user" "P=c2VjcmV0"

As Sendmail's getauth: a user or authentication id and a password are needed; a
missing one of U/I takes the other's value; the realm defaults to $j and the
mechanisms to AuthMechanisms (the caller's defaults). Sendmail drops an entry it
cannot parse (logging "authinfo failed"); here `parse_entry` raises AuthInfoError
saying what is wrong. Besides Sendmail's bare-address key, ``AuthInfo:[address]``
is also tried (the server name is that when relaying to a [literal]).

The deprecated DefaultAuthInfo file (`read_default_authinfo`) holds the user id,
authentication id, password, realm and mechanisms on lines of their own ("#" lines
skipped); fewer than three lines is an error.

Security: these files hold passwords. A file is refused (AuthInfoError) unless it
is a regular file (not reached through a symbolic link), owned by the reading uid,
root or a given trusted uid, neither group- nor world-readable or -writable, in
directories no other user can write (sticky ones excepted): Sendmail's safefopen
flags for DefaultAuthInfo (SFF_REGONLY, SFF_NOWLINK, SFF_SAFEDIRPATH,
SFF_NOGWFILES, SFF_NOWWFILES, SFF_NOWRFILES, SFF_NOGRFILES unless
DontBlameSendmail=GroupReadableAuthInfoFile). Sendmail leaves the authinfo map's
modes to the administrator; pysendmail checks the map's files the same way: the
`.db` and its text source alike (either would give the passwords away).
"""

import errno
import os
import stat

TAGS = {"u": "user", "i": "authid", "p": "password", "r": "realm", "m": "mechanisms"}
MAX_ITEMS = 5                     # Sendmail's SASL_ENTRIES
KEY = "AuthInfo:"


class AuthInfoError(Exception):
    """An authinfo entry or file that cannot be used (syntax, permissions)."""


class Credentials:
    """What the SMTP client authenticates with. `mechanisms` is a list (upper case)."""

    __slots__ = ("user", "authid", "password", "realm", "mechanisms")

    def __init__(self, user="", authid="", password="", realm="", mechanisms=()):
        self.user = user
        self.authid = authid
        self.password = password
        self.realm = realm
        self.mechanisms = list(mechanisms)

    def __eq__(self, other):
        return isinstance(other, Credentials) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self):      # never the password
        return "Credentials(user=%r, authid=%r, realm=%r, mechanisms=%r)" % (
            self.user, self.authid, self.realm, self.mechanisms)


def _items(value):
    """The quoted items of an entry's value; a backslash inside quotes keeps the
    next character (both are kept, as Sendmail's tokenizer leaves them)."""
    items, i, n = [], 0, len(value)
    while i < n:
        c = value[i]
        if c in " \t":
            i += 1
            continue
        if c != '"':
            raise AuthInfoError('authinfo: expected a quoted "T:text" item at %r'
                                % value[i:i + 20])
        j = i + 1
        while j < n and value[j] != '"':
            j += 2 if value[j] == "\\" else 1
        if j >= n:
            raise AuthInfoError("authinfo: unbalanced quote in %r" % value[i:i + 20])
        items.append(value[i + 1:j])
        i = j + 1
    return items


def parse_entry(value, default_realm="", default_mechanisms=()):
    """One authinfo map value -> Credentials; AuthInfoError on bad syntax."""
    import binascii
    got = {}
    items = _items(value.strip())
    if not items:
        raise AuthInfoError("authinfo: empty entry")
    for item in items[:MAX_ITEMS]:
        if len(item) < 3:
            raise AuthInfoError('authinfo: item "%s" too short (needs "T:text")' % item)
        tag, delim, text = item[0].lower(), item[1], item[2:]
        if tag not in TAGS:
            raise AuthInfoError('authinfo: unknown tag %r in "%s" (U, I, P, R or M)'
                                % (item[0], item[:2]))
        if delim == ":":
            got[TAGS[tag]] = text
        elif delim == "=":
            try:
                got[TAGS[tag]] = binascii.a2b_base64(text.encode("ascii")).decode(
                    "utf-8", "surrogateescape")
            except (binascii.Error, UnicodeEncodeError):
                raise AuthInfoError('authinfo: "%s=...": bad base64' % item[0]) from None
        else:
            raise AuthInfoError('authinfo: "%s": the delimiter after %s must be ":" or "="'
                                % (item[:2], item[0]))
    if not (got.get("user") or got.get("authid")):
        raise AuthInfoError("authinfo: no user (U:) nor authentication id (I:)")
    if not got.get("password"):
        raise AuthInfoError("authinfo: no password (P:)")
    user = got.get("user") or got["authid"]
    mechs = got.get("mechanisms", "").split()
    return Credentials(user=user, authid=got.get("authid") or user,
                       password=got["password"],
                       realm=got.get("realm") or default_realm,
                       mechanisms=[m.upper() for m in mechs] or list(default_mechanisms))


# -- file safety -------------------------------------------------------------

def check_secret_file(path, trusted_uid=None, allow_group_readable=False):
    """Raise AuthInfoError unless `path` is safe to take passwords from (see the
    module docstring); return its os.stat_result."""
    path = os.path.abspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise AuthInfoError("%s: refusing a symbolic link for secrets" % path) from None
        raise AuthInfoError("%s: cannot open: %s" % (path, exc.strerror)) from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        raise AuthInfoError("%s: not a regular file" % path)
    owners = {os.geteuid(), 0}
    if trusted_uid is not None:
        owners.add(trusted_uid)
    if st.st_uid not in owners:
        raise AuthInfoError("%s: owned by uid %d, not by uid %d or root"
                            % (path, st.st_uid, os.geteuid()))
    bad = stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH
    if not allow_group_readable:
        bad |= stat.S_IRGRP
    if st.st_mode & bad:
        raise AuthInfoError("%s: mode %04o: it holds passwords; must not be readable or "
                            "writable by group or others (chmod 600)"
                            % (path, stat.S_IMODE(st.st_mode)))
    d = os.path.dirname(path)
    while True:
        try:
            dst = os.stat(d)
        except OSError as exc:
            raise AuthInfoError("%s: %s" % (d, exc.strerror)) from None
        if dst.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not dst.st_mode & stat.S_ISVTX:
            raise AuthInfoError("%s: directory %s is writable by group or others"
                                % (path, d))
        parent = os.path.dirname(d)
        if parent == d:
            return st
        d = parent


# -- the map -----------------------------------------------------------------

class AuthInfoMap:
    """The authinfo map: a hash/btree map (pysendmail's makemap `.db`, or its text
    source when there is none) through config.maps, or a plain text source file
    ("text": ``key value`` lines, as makemap reads them). Files are checked with
    check_secret_file when first used and whenever they change."""

    def __init__(self, path, maptype="hash", default_realm="", default_mechanisms=(),
                 trusted_uid=None, allow_group_readable=False):
        self.path = path
        self.maptype = maptype
        self.default_realm = default_realm
        self.default_mechanisms = list(default_mechanisms)
        self._check = {"trusted_uid": trusted_uid,
                       "allow_group_readable": allow_group_readable}
        self._checked = {}             # file -> stat stamp found safe
        if maptype in ("hash", "btree", "dbm"):
            from ..config import maps
            self._map = maps.make_map("authinfo", maptype, [path])
        elif maptype == "text":
            self._map = None
            self._table, self._stamp = {}, None
        else:
            raise AuthInfoError("authinfo: unknown map type %r (hash, btree, dbm, text)"
                                % maptype)

    def _files(self):
        """The files a lookup reads (all of them that exist, so none escapes the check)."""
        if self._map is None:
            return [self.path]
        base = self.path[:-3] if self.path.endswith(".db") else self.path
        found = [f for f in (base + ".db", base, base + ".txt") if os.path.isfile(f)]
        if not found:
            raise AuthInfoError("authinfo: %s: no such map (%s.db or its text source)"
                                % (base, base))
        return found

    def _secure(self):
        for f in self._files():
            try:
                st = os.lstat(f)
            except OSError as exc:
                raise AuthInfoError("authinfo: %s: %s" % (f, exc.strerror)) from None
            stamp = (st.st_ino, st.st_mtime_ns, st.st_mode, st.st_uid)
            if self._checked.get(f) != stamp:
                check_secret_file(f, **self._check)
                self._checked[f] = stamp

    def _text_get(self, key):
        st = os.stat(self.path)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            table = {}
            with open(self.path, encoding="utf-8", errors="surrogateescape") as fh:
                for line in fh:
                    line = line.rstrip("\n")
                    if not line.strip() or line.startswith("#"):
                        continue
                    parts = line.split(None, 1)
                    table.setdefault(parts[0].lower(), parts[1] if len(parts) > 1 else "")
            self._table, self._stamp = table, stamp
        return self._table.get(key.lower())

    def get(self, key):
        """The raw value stored under `key` ("AuthInfo:host"), or None."""
        self._secure()
        if self._map is None:
            return self._text_get(key)
        return self._map.lookup(key, ())

    def lookup(self, host="", addr=""):
        """Credentials for a server: AuthInfo:<host>, AuthInfo:<addr>,
        AuthInfo:[<addr>], then AuthInfo: (the default); None when no entry
        exists. An entry that is found but broken raises AuthInfoError."""
        keys = []
        if host:
            keys.append(KEY + host)
        if addr:
            bare = addr.strip("[]")
            keys += [KEY + bare, KEY + "[" + bare + "]"]
        keys.append(KEY)
        for key in keys:
            value = self.get(key)
            if value is not None:
                return parse_entry(value, self.default_realm, self.default_mechanisms)
        return None


def lookup(path, host="", addr="", maptype="hash", **kw):
    """One-shot: open the authinfo map at `path` and look the server up."""
    return AuthInfoMap(path, maptype, **kw).lookup(host, addr)


def read_default_authinfo(path, default_realm="", default_mechanisms=(), trusted_uid=None,
                          allow_group_readable=False):
    """The DefaultAuthInfo file: user id, authentication id, password, realm,
    mechanisms, one a line ("#" lines skipped), after the safety check."""
    check_secret_file(path, trusted_uid, allow_group_readable)
    names = ("user id", "authentication id", "password", "realm", "mechlist")
    values = []
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            if line.startswith("#"):
                continue
            values.append(line.rstrip("\n"))
            if len(values) == len(names):
                break
    if len(values) < 3:
        raise AuthInfoError("AUTH=client, error: can't read %s from %s"
                            % (names[len(values)], path))
    user, authid, password = values[:3]
    realm = values[3] if len(values) > 3 and values[3] else default_realm
    mechs = values[4].split() if len(values) > 4 else []
    if not password or not (user or authid):
        raise AuthInfoError("%s: no password, or neither user id nor authentication id" % path)
    return Credentials(user or authid, authid or user, password, realm,
                       [m.upper() for m in mechs] or list(default_mechanisms))
