"""The DKIM signing configuration: which key signs the mail of which From domain.

Role: outbound signing (mailauth.dkim_sign) asks `key_for(domain)` / `keys_for(domain)`;
`pysendmail dkim-keygen` prints the line to add here.  The table is read once (at start
or on reload) and the key files with it, so a bad line or an unreadable key is reported
then, not when the first message goes out.

pysendmail's own format (dkim-keytable(5)), one line per signing key:

    # domain        selector  key file                            [algorithm]
    example.com     sel1      /etc/pysendmail/dkim/example.com/sel1.private
    example.com     ed1       example.com/ed1.private             ed25519
    .example.org    mail      /etc/pysendmail/dkim/example.org/mail.private

  * Blank lines and `#` comments (whole line or trailing) are ignored.
  * domain: the From domain signed for, case-insensitive (non-ASCII names are stored as
    A-labels).  A leading dot makes a wildcard: `.example.org` matches every subdomain
    of example.org (at any depth, not example.org itself) and signs with d=example.org.
    An exact entry wins over a wildcard, and the nearest wildcard over a farther one.
  * Several lines for one domain sign with each key, in file order (RSA and Ed25519
    side by side, as RFC 8463 advises); key_for() gives the first.
  * key file: a PEM private key (PKCS#1 or PKCS#8 RSA of 1024 bits or more, PKCS#8
    Ed25519) or, for Ed25519, the base64 32-byte seed dkimpy and rspamd write.  A
    relative path is relative to the table's directory.
  * algorithm: rsa / rsa-sha256 / ed25519 / ed25519-sha256; by default what the key is.

OpenDKIM's pair is read too: `KeyTable.load_opendkim(keytable, signingtable)`, KeyTable
lines `NAME domain:selector:keyfile`, SigningTable lines `PATTERN NAME` where PATTERN is
`domain`, `*@domain`, or a wildcard `*@*.domain` / `*@.domain` / `*.domain` / `.domain`
(per-address patterns such as `user@domain` are refused: pysendmail signs per domain).

Security stance: key files are read by the process that loads the table (root before it
drops privileges, or the daemon's user) and should be 0600 (dkim-keygen writes them so);
the keys are kept in memory as unencrypted PKCS#8 PEM bytes and never logged.
"""
import os


class KeyTableError(ValueError):
    """A line of the table (or its key file) is wrong: the message names file and line."""


RSA, ED25519 = "rsa-sha256", "ed25519-sha256"
_ALGORITHMS = {"rsa": RSA, "rsa-sha256": RSA, "ed25519": ED25519, "ed25519-sha256": ED25519}
MIN_RSA_BITS = 1024


def etc_dir(environ=None):
    """The configuration directory of this caller's instance: PYSENDMAIL_ROOT/etc, else
    /etc/pysendmail for root, else the user's private instance's etc."""
    from .. import layout
    base = layout.getenv("PYSENDMAIL_ROOT", environ)
    if base:
        return os.path.join(os.path.abspath(base), "etc")
    if os.geteuid() == 0:
        return "/etc/pysendmail"
    return os.path.join(layout.user_state_dir(), "etc")


def default_path(environ=None):
    """Where the daemon looks for the key table by default: ETC/dkim/keytable."""
    return os.path.join(etc_dir(environ), "dkim", "keytable")


def normalize_domain(domain):
    """Lower case, no trailing dot, A-labels (IDNA) for non-ASCII names."""
    domain = domain.strip().rstrip(".").lower()
    if domain and not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    return domain


def _valid_name(name):
    labels = name.split(".")
    return bool(name) and len(name) <= 253 and all(
        0 < len(lab) <= 63 and all(c.isalnum() or c in "-_" for c in lab) for lab in labels)


def load_private_key(data, algorithm=None, where="key"):
    """(algorithm, PEM bytes) of a private key file's bytes; KeyTableError if unusable."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    key = None
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise KeyTableError("%s: not a usable PEM private key (%s)" % (where, e)) from None
    else:
        import base64
        import binascii
        try:
            raw = base64.b64decode(b"".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) == 32:
            key = ed25519.Ed25519PrivateKey.from_private_bytes(raw)
        else:
            try:
                key = serialization.load_der_private_key(data, password=None)
            except (ValueError, TypeError):
                raise KeyTableError("%s: neither PEM, DER nor a base64 Ed25519 seed"
                                    % where) from None
    if isinstance(key, rsa.RSAPrivateKey):
        found = RSA
        if key.key_size < MIN_RSA_BITS:
            raise KeyTableError("%s: RSA key of %d bits (at least %d: RFC 8301)"
                                % (where, key.key_size, MIN_RSA_BITS))
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        found = ED25519
    else:
        raise KeyTableError("%s: a %s key: DKIM signs with RSA or Ed25519"
                            % (where, type(key).__name__))
    if algorithm is not None and algorithm != found:
        raise KeyTableError("%s: the table says %s, the key is for %s" % (where, algorithm, found))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return found, pem


class Entry:
    """One signing key: domain (as written, a leading dot for a wildcard), selector,
    keyfile, algorithm (rsa-sha256 / ed25519-sha256), key (PEM bytes), where (file:line)."""

    __slots__ = ("domain", "selector", "keyfile", "algorithm", "key", "where", "d")

    def __init__(self, domain, selector, keyfile, algorithm, key, where="", d=None):
        self.domain, self.selector, self.keyfile = domain, selector, keyfile
        self.algorithm, self.key, self.where = algorithm, key, where
        self.d = d          # the d= when it is not the domain's own (OpenDKIM tables)

    @property
    def wildcard(self):
        return self.domain.startswith(".")

    @property
    def signing_domain(self):
        """The d= this entry signs with."""
        return self.d or self.domain.lstrip(".")

    def as_tuple(self):
        return (self.signing_domain, self.selector, self.key, self.algorithm)

    def __repr__(self):
        return "Entry(%r, %r, %r, %r)" % (self.domain, self.selector, self.keyfile,
                                          self.algorithm)


def _read_key(path, algorithm, where):
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as e:
        raise KeyTableError("%s: key file %s: %s" % (where, path, e.strerror or e)) from None
    return load_private_key(data, algorithm, "%s: key file %s" % (where, path))


def _make_entry(domain, selector, keyfile, algorithm, base_dir, where):
    wildcard = domain.startswith(".")
    name = normalize_domain(domain.lstrip("."))
    if not _valid_name(name) or (wildcard and "." not in name):
        raise KeyTableError("%s: bad domain %r" % (where, domain))
    if not _valid_name(selector):
        raise KeyTableError("%s: bad selector %r" % (where, selector))
    if algorithm is not None:
        if algorithm.lower() not in _ALGORITHMS:
            raise KeyTableError("%s: unknown algorithm %r (rsa or ed25519)" % (where, algorithm))
        algorithm = _ALGORITHMS[algorithm.lower()]
    path = keyfile if os.path.isabs(keyfile) else os.path.join(base_dir, keyfile)
    algorithm, pem = _read_key(path, algorithm, where)
    return Entry(("." if wildcard else "") + name, selector.lower(), path, algorithm, pem, where)


def _lines(text):
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            yield number, line


def _read_text(path):
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError as e:
        raise KeyTableError("%s: %s" % (path, e.strerror or e)) from None


class KeyTable:
    """Signing keys by From domain (see the module docstring).  `source` names where the
    table came from; `entries` is the list of Entry in file order."""

    def __init__(self, entries=(), source=None):
        self.source = source
        self.entries = list(entries)
        self._exact, self._wild = {}, {}
        for e in self.entries:
            table = self._wild if e.wildcard else self._exact
            table.setdefault(e.domain.lstrip("."), []).append(e)

    # ---- reading ---------------------------------------------------------------------

    @classmethod
    def load(cls, source):
        """A table from a file path, or from the text itself when `source` holds a newline
        (relative key paths are then relative to the current directory)."""
        if "\n" in source:
            return cls.parse(source)
        path = os.path.abspath(source)
        return cls.parse(_read_text(path), origin=path, base_dir=os.path.dirname(path))

    @classmethod
    def parse(cls, text, origin="<keytable>", base_dir=None):
        """A table from its text: `domain selector keyfile [algorithm]` lines."""
        base_dir = base_dir or os.getcwd()
        entries = []
        for number, line in _lines(text):
            where = "%s:%d" % (origin, number)
            fields = line.split()
            if len(fields) not in (3, 4):
                raise KeyTableError("%s: expected `domain selector keyfile [algorithm]`, got %r"
                                    % (where, line))
            entries.append(_make_entry(fields[0], fields[1], fields[2],
                                       fields[3] if len(fields) == 4 else None, base_dir, where))
        return cls(entries, origin)

    @classmethod
    def load_opendkim(cls, keytable, signingtable):
        """A table from OpenDKIM's KeyTable and SigningTable files (paths; a `file:` or
        `refile:` prefix is dropped)."""
        def strip(p):
            for prefix in ("refile:", "file:"):
                if p.startswith(prefix):
                    return p[len(prefix):]
            return p
        kpath, spath = os.path.abspath(strip(keytable)), os.path.abspath(strip(signingtable))
        keys = {}
        for number, line in _lines(_read_text(kpath)):
            where = "%s:%d" % (kpath, number)
            fields = line.split(None, 1)
            parts = fields[1].strip().split(":", 2) if len(fields) == 2 else []
            if len(parts) != 3:
                raise KeyTableError("%s: expected `NAME domain:selector:keyfile`" % where)
            keys[fields[0]] = (parts, where)
        entries = []
        for number, line in _lines(_read_text(spath)):
            where = "%s:%d" % (spath, number)
            fields = line.split()
            if len(fields) != 2:
                raise KeyTableError("%s: expected `PATTERN KEYNAME`" % where)
            pattern, name = fields
            if name not in keys:
                raise KeyTableError("%s: key %r is not in %s" % (where, name, kpath))
            if pattern.startswith("*@"):
                pattern = pattern[2:]
            if pattern.startswith("*."):
                pattern = pattern[1:]
            if "@" in pattern or "*" in pattern:
                raise KeyTableError("%s: pattern %r: only per-domain signing is supported"
                                    % (where, fields[0]))
            (kdomain, selector, keyfile), kwhere = keys[name]
            entry = _make_entry(kdomain, selector, keyfile, None, os.path.dirname(kpath), kwhere)
            wildcard = pattern.startswith(".")
            pat = normalize_domain(pattern.lstrip("."))
            if not _valid_name(pat):
                raise KeyTableError("%s: bad pattern %r" % (where, fields[0]))
            entry.d = entry.signing_domain          # the key's own d=, whatever matched
            entry.domain = ("." if wildcard else "") + pat
            entries.append(entry)
        return cls(entries, "%s + %s" % (kpath, spath))

    # ---- lookups ---------------------------------------------------------------------

    def entries_for(self, from_domain):
        """The Entry objects that sign mail From `from_domain` ([] when none)."""
        name = normalize_domain(from_domain or "")
        if not name:
            return []
        if name in self._exact:
            return list(self._exact[name])
        labels = name.split(".")
        for i in range(1, len(labels)):
            hit = self._wild.get(".".join(labels[i:]))
            if hit:
                return list(hit)
        return []

    def keys_for(self, from_domain):
        """[(domain, selector, private key PEM bytes, algorithm)] for `from_domain`."""
        return [e.as_tuple() for e in self.entries_for(from_domain)]

    def key_for(self, from_domain):
        """(domain, selector, private key PEM bytes, algorithm) or None."""
        keys = self.keys_for(from_domain)
        return keys[0] if keys else None

    def __len__(self):
        return len(self.entries)

    def __repr__(self):
        return "KeyTable(%r, %d entries)" % (self.source, len(self.entries))

