"""Sendmail's map classes for the $( $) and $[ $] lookups of the rewriting engine.

Each map has ``lookup(key, args) -> str | None`` (None: not found; raises
TempFail for a temporary failure).  ``args`` are the $@ arguments of the
lookup; the found value goes through Sendmail's map_rewrite: %0 is the key,
%1.. the arguments, %% a percent sign, then the -a string is appended.
Optional attributes read by the engine: keep_quotes, spacesub,
tempfail_append.

Build maps from a K line with ``make_map(name, mapclass, args, **context)``;
``args`` are the K line's words after the class (flags first, then the file,
pattern or map names).  Flags: -o optional, -f keep key case, -m match only
(return the key), -q keep quotes, -a<str> append, -T<str> tempfail append,
-S<c> space substitute, -N -O (null-byte keys: meaningless for text sources,
accepted), -A, -t, -D (accepted); text: -k<col> -v<col> -z<delim>; regex:
-n -b -s<groups> -d<delim>; user: -v<field>.

Classes: dequote, macro, arith, regex, text, sequence, switch, stab, user,
host, null, and hash/btree (also dbm).  hash/btree maps read ``<file>.db``
when it is pysendmail's sorted index (config.sorted_index, what our
`makemap` builds): binary search with pread(), no full load, re-opened when
the file is replaced.  Without one they read the makemap text source:
``<file>`` if it is a text file, else ``<file>.txt`` ("key value" per line,
# comments).  A Berkeley DB ``<file>.db`` from Sendmail's makemap is not
read (Python has no Berkeley DB reader without a C compiler): open_error
says so and the text source is used.  Sources are re-read when their mtime
changes.
"""

import os
from time import monotonic as _monotonic

RECHECK = 1.0    # seconds a map file's state is trusted before it is looked at again


class TempFail(Exception):
    """A lookup failed temporarily (Sendmail's EX_TEMPFAIL)."""


def stripquotes(s):
    """Sendmail's stripquotes: drop '"', a backslash keeps the next char."""
    out = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        i += 1
        if c == "\\":
            if i < n:
                out.append(s[i])
                i += 1
            continue
        if c == '"':
            continue
        out.append(c)
    return "".join(out)


def _strtol(s):
    """C strtol(s, NULL, 0): leading number with 0x / 0 prefixes, else 0."""
    s = s.lstrip()
    sign = 1
    if s[:1] in "+-" and s:
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    base, digits = 10, "0123456789"
    if s[:2].lower() == "0x":
        base, digits, s = 16, "0123456789abcdef", s[2:]
    elif s[:1] == "0":
        base, digits = 8, "01234567"
    v = 0
    for c in s.lower():
        if c not in digits:
            break
        v = v * base + digits.index(c)
    return sign * v


class Map:
    """Common flags and map_rewrite."""

    keep_quotes = False
    default_fold = True

    def __init__(self, name, flags=None):
        self.name = name
        f = flags or {}
        self.optional = "o" in f
        self.fold = self.default_fold and "f" not in f
        self.match_only = "m" in f
        if "q" in f:
            self.keep_quotes = True
        self.append = f.get("a") or None
        self.tempfail_append = f.get("T") or None
        self.spacesub = f.get("S") or None
        self.flags = f
        self.open_error = None

    def rewrite(self, value, key, args):
        """map_rewrite: %0 key, %1.. args, %% percent; then -a."""
        if self.match_only:
            value = key
        elif args is not None and "%" in value:
            av = [key] + list(args)
            out = []
            i, n = 0, len(value)
            while i < n:
                c = value[i]
                i += 1
                if c != "%":
                    out.append(c)
                    continue
                d = value[i] if i < n else "%"
                i += 1
                if d == "%":
                    out.append("%")
                elif d.isdigit() and d.isascii():
                    k = int(d)
                    if k < len(av):
                        out.append(av[k])
                else:
                    out.append("%" + d)
            value = "".join(out)
        if self.append:
            value += self.append
        return value

    def lookup(self, key, args=()):
        value = self.get(key.lower() if self.fold else key, args)
        if value is None:
            return None
        return self.rewrite(value, key, args)

    def get(self, key, args):
        return None


class NullMap(Map):
    """Never finds anything."""


class DequoteMap(Map):
    """Removes quotes from an address that needs none; None otherwise."""

    keep_quotes = True
    default_fold = False

    def lookup(self, key, args=()):
        out = []
        angle = cmnt = quotes = spaces = 0
        quotemode = bslash = False
        sub = self.spacesub
        for c in key:
            if bslash:
                bslash = False
                out.append(c)
                continue
            if c == " " and sub:
                c = sub
            if c == "\\":
                bslash = True
            elif c == "(":
                cmnt += 1
            elif c == ")":
                if cmnt <= 0:
                    return None
                cmnt -= 1
            elif c in " \t":
                spaces += 1
            if cmnt > 0:
                out.append(c)
                continue
            if c == '"':
                quotemode = not quotemode
                quotes += 1
                continue
            if c == "<":
                angle += 1
            elif c == ">":
                if angle <= 0:
                    return None
                angle -= 1
            out.append(c)
        if angle or cmnt or bslash or quotemode or quotes <= 0 or spaces:
            return None
        return self.rewrite("".join(out), key, None)


class MacroMap(Map):
    """$(macro {name} $@ value $) sets (or, without a value, clears) a
    macro and returns the empty string."""

    default_fold = False

    def __init__(self, name, flags=None, macros=None):
        super().__init__(name, flags)
        self.macros = macros if macros is not None else {}

    def lookup(self, key, args=()):
        name = key[1:-1] if key.startswith("{") and key.endswith("}") else key
        if args and args[0]:
            self.macros[name] = args[0]
        else:
            self.macros.pop(name, None)
        return ""


class ArithMap(Map):
    """key is the operator (+ - * / % | & l = r), args the two operands."""

    default_fold = False

    def lookup(self, key, args=()):
        if len(args) < 2 or not key:
            return None
        a, b = _strtol(args[0]), _strtol(args[1])
        op = key[0]
        if op in "/%" and b == 0:
            return None
        if op == "l":
            return "TRUE" if a < b else "FALSE"
        if op == "=":
            return "TRUE" if a == b else "FALSE"
        if op == "r":
            if b - a + 1 <= 0:
                return None
            import random
            return str(random.randrange(a, b + 1))
        ops = {"+": a + b, "-": a - b, "*": a * b, "|": a | b, "&": a & b}
        if op == "/":
            r = abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1)
        elif op == "%":
            r = abs(a) % abs(b) * (-1 if a < 0 else 1)
        elif op in ops:
            r = ops[op]
        else:
            return None
        return str(r)


class RegexMap(Map):
    """Extended regular expression, case-insensitive unless -f; -n
    inverts; -s1,2 returns those groups joined by -d (default space);
    found without -s: the empty string (+ -a), or the key with -m."""

    default_fold = False

    def __init__(self, name, flags=None, pattern=""):
        super().__init__(name, flags)
        import re
        f = self.flags
        self.invert = "n" in f
        self.delim = f.get("d") or " "
        self.groups = [int(g) for g in (f.get("s") or "").split(",")
                       if g.strip().isdigit()]
        icase = 0 if "f" in f else re.IGNORECASE
        try:
            self.regex = re.compile(pattern, icase)
        except re.error as exc:
            self.regex = None
            self.open_error = "pattern-compile-error: %s" % exc

    def lookup(self, key, args=()):
        if self.regex is None:
            return None
        m = self.regex.search(key)
        if (m is None) != self.invert:
            return None
        if self.match_only:
            return self.rewrite(key, key, None)
        if m is not None and self.groups:
            parts = [m.group(g) or "" for g in self.groups
                     if g <= (self.regex.groups or 0)]
            return self.rewrite(self.delim.join(parts), key, None)
        return self.rewrite("", key, None)


class FileMap(Map):
    """A key/value table read from a text file, re-read when it changes."""

    def __init__(self, name, flags=None, path=None):
        super().__init__(name, flags)
        self.path = path
        self._stamp = None
        self._table = {}
        self._loaded_until = 0.0    # _load: trusted until then (RECHECK)

    def source(self):
        return self.path

    def parse(self, text):
        table = {}
        for line in text.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.split(None, 1)
            key = parts[0]
            if self.fold:
                key = key.lower()
            value = parts[1].strip() if len(parts) > 1 else ""
            if key in table and "A" in self.flags:
                table[key] += "," + value
            else:
                table.setdefault(key, value)
        return table

    def _load(self):
        now = _monotonic()
        if now < self._loaded_until:
            return
        self._loaded_until = now + RECHECK
        path = self.source()
        try:
            st = os.stat(path)
        except (OSError, TypeError):
            if not self.optional:
                self.open_error = "%s: cannot open %s" % (self.name, path)
            self._table = {}
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                with open(path, encoding="utf-8",
                          errors="surrogateescape") as fh:
                    self._table = self.parse(fh.read())
            except OSError as exc:
                if not self.optional:
                    self.open_error = "%s: %s" % (self.name, exc)
                self._table = {}
                return
            self._stamp = stamp

    def get(self, key, args):
        self._load()
        return self._table.get(key)


class HashMap(FileMap):
    """hash/btree/dbm maps: ``<file>.db`` when it is pysendmail's sorted index (what
    our makemap builds), looked up by binary search and re-opened when the file is
    replaced; else the makemap text source. A ``.db`` of another format (Berkeley DB
    from Sendmail's makemap) is not read: open_error says so, once, and the text
    source is used."""

    def __init__(self, name, flags=None, path=None):
        super().__init__(name, flags, path)
        self._index = None          # an open sorted_index.Reader
        self._foreign = None        # stat stamp of a .db that is not ours
        self._fresh_until = 0.0     # _reader: the files were looked at; next look after this

    def base(self):
        path = self.path or ""
        return path[:-3] if path.endswith(".db") else path

    def source(self):
        path = self.base()
        if os.path.isfile(path) and not _looks_binary(path):
            return path
        return path + ".txt"

    def _reader(self):
        """The open index of <file>.db, re-opened if the file changed; None when
        there is no usable one (then the text source is read). A long-running process
        (the SMTP daemon) looks at the files at most once a second, not per lookup."""
        now = _monotonic()
        if now < self._fresh_until:
            return self._index
        self._fresh_until = now + RECHECK
        from . import sorted_index
        idx = self._index
        if idx is not None and not idx.changed():
            return idx
        if idx is not None:
            idx.close()
            self._index = None
        db = self.base() + ".db"
        try:
            st = os.stat(db)
        except (OSError, ValueError):
            return None
        stamp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._foreign:
            return None
        try:
            self._index = sorted_index.Reader(db, "map database")
            self._foreign = None
            return self._index
        except ValueError:
            self._foreign = stamp
            if self.open_error is None:
                self.open_error = (
                    "%s: %s is not a pysendmail map database (a Berkeley DB file from "
                    "Sendmail's makemap?); using the text source %s instead; rebuild it "
                    "with pysendmail's makemap" % (self.name, db, self.source()))
        except OSError as exc:
            if not self.optional and self.open_error is None:
                self.open_error = "%s: cannot open %s: %s" % (
                    self.name, db, exc.strerror or exc)
        return None

    def get(self, key, args):
        idx = self._reader()
        if idx is not None:
            try:
                value = idx.get(key.encode("utf-8", "surrogateescape"))
            except (OSError, ValueError) as exc:
                if self.open_error is None:
                    self.open_error = "%s: %s" % (self.name, exc)
                return None
            return None if value is None else value.decode("utf-8", "surrogateescape")
        if self._foreign is not None and not self._text_exists():
            return None
        return super().get(key, args)

    def _text_exists(self):
        try:
            os.stat(self.source())
            return True
        except OSError:
            return False


def _looks_binary(path):
    try:
        with open(path, "rb") as fh:
            return b"\0" in fh.read(4096)
    except OSError:
        return True


class TextMap(FileMap):
    """Sendmail's text map: columns -k (key, 0) and -v (value, 1) split by
    -z (default white space)."""

    def parse(self, text):
        kcol = int(self.flags.get("k") or 0)
        vcol = int(self.flags.get("v") or 1)
        delim = self.flags.get("z") or None
        table = {}
        for line in text.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            cols = line.split(delim)
            if kcol >= len(cols) or vcol >= len(cols):
                continue
            key = cols[kcol].lower() if self.fold else cols[kcol]
            table.setdefault(key, cols[vcol])
        return table


class StabMap(Map):
    """Sendmail's symbol table map: a dict given by the caller."""

    def __init__(self, name, flags=None, table=None):
        super().__init__(name, flags)
        self.table = {k.lower(): v for k, v in (table or {}).items()}

    def get(self, key, args):
        return self.table.get(key.lower())


class UserMap(Map):
    """The password file: -v name|passwd|uid|gid|gecos|dir|shell (or a
    column number); without -v the user name."""

    default_fold = False

    def get(self, key, args):
        import pwd
        try:
            pw = pwd.getpwnam(key)
        except (KeyError, ValueError):
            return None
        field = (self.flags.get("v") or "").lower()
        fields = ["name", "passwd", "uid", "gid", "gecos", "dir", "shell"]
        values = [pw.pw_name, pw.pw_passwd, str(pw.pw_uid), str(pw.pw_gid),
                  pw.pw_gecos, pw.pw_dir, pw.pw_shell]
        if field.isdigit() and int(field) < len(values):
            return values[int(field)]
        if field in fields:
            return values[fields.index(field)]
        return pw.pw_name


class HostMap(Map):
    """$[ host $]: canonify(host) -> name or None (may raise TempFail);
    a found name is returned with a trailing dot."""

    default_fold = False

    def __init__(self, name="host", flags=None, canonify=None):
        super().__init__(name, flags)
        self.canonify = canonify

    def get(self, key, args):
        if self.canonify is None:
            return None
        name = self.canonify(key)
        if not name:
            return None
        return name if name.endswith(".") else name + "."


class SequenceMap(Map):
    """Tries its maps in turn; the first found wins.  A temporary failure
    is raised only when no map found the key."""

    default_fold = False

    def __init__(self, name, flags=None, names=(), maps=None):
        super().__init__(name, flags)
        self.names = list(names)
        self.maps = maps if maps is not None else {}

    def members(self):
        return [self.maps[n] for n in self.names if n in self.maps]

    def lookup(self, key, args=()):
        tempfail = False
        for m in self.members():
            try:
                value = m.lookup(key, args)
            except TempFail:
                tempfail = True
                continue
            if value is not None:
                return self.rewrite(value, key, None) if self.append \
                    else value
        if tempfail:
            raise TempFail(key)
        return None


class SwitchMap(SequenceMap):
    """A sequence of "<name>.<service>" maps, services from the service
    switch (e.g. ["files", "dns"] for hosts)."""

    def __init__(self, name, flags=None, services=(), maps=None):
        super().__init__(name, flags, ["%s.%s" % (name, s) for s in services],
                         maps)


_CLASSES = {"dequote": DequoteMap, "macro": MacroMap, "arith": ArithMap,
            "regex": RegexMap, "text": TextMap, "sequence": SequenceMap,
            "switch": SwitchMap, "stab": StabMap, "user": UserMap,
            "host": HostMap, "null": NullMap, "hash": HashMap,
            "btree": HashMap, "dbm": HashMap}
_VALUE_FLAGS = set("aTSkvzsdC")


def parse_flags(words):
    """K line words -> (flags dict, remaining words)."""
    flags = {}
    i = 0
    while i < len(words) and words[i].startswith("-") and len(words[i]) > 1:
        w = words[i]
        letter = w[1]
        flags[letter] = w[2:] if letter in _VALUE_FLAGS else True
        for extra in ("" if letter in _VALUE_FLAGS else w[2:]):
            flags[extra] = True
        i += 1
    return flags, words[i:]


def make_map(name, mapclass, words=(), macros=None, maps=None,
             canonify=None, services=None, stab=None):
    """A map from a K line: ``K<name> <mapclass> <words...>``.  *maps* is
    the dict of all maps (for sequence/switch), *services* the service
    switch {service: [sources]}, *stab* the table of a stab map.  Unknown
    classes give None."""
    cls = _CLASSES.get(mapclass)
    if cls is None:
        return None
    flags, rest = parse_flags(list(words))
    if cls is MacroMap:
        return MacroMap(name, flags, macros)
    if cls is RegexMap:
        return RegexMap(name, flags, " ".join(rest))
    if cls is SequenceMap:
        return SequenceMap(name, flags, rest, maps)
    if cls is SwitchMap:
        service = rest[0] if rest else ""
        return SwitchMap(name, flags, (services or {}).get(service, ()), maps)
    if cls is StabMap:
        return StabMap(name, flags, stab)
    if cls is HostMap:
        return HostMap(name, flags, canonify)
    if issubclass(cls, FileMap):
        return cls(name, flags, rest[0] if rest else None)
    return cls(name, flags)
