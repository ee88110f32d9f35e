"""The aliases file: Sendmail's text format, its statistics, and a fast-lookup database.

Parsing follows Sendmail 8.17's readaliases():

* a line is ``name: value``; a line that starts with a blank continues the previous one
  (its text, blanks included, is appended with the newline removed); a line that ends
  in a backslash is joined to the next one (backslash and newline removed);
* lines that start with ``#`` and empty lines are skipped (``#`` elsewhere is data);
* a non-continuation line starting with a blank, a line without a colon, an illegal
  name and an empty value are errors, reported as ``FILE: line N: MESSAGE``; the other
  entries are still built;
* names are case-insensitive (keys are stored lower-cased); a repeated name gives
  ``Warning: duplicate alias name NAME`` and the later definition wins, as with
  Sendmail's hash maps;
* the value is kept as written (after the colon's leading blanks); `split_value`
  cuts it into addresses at commas outside quotes, <> and () comments.

Statistics are Sendmail's: ``N aliases, longest L bytes, T bytes total`` where N counts
stored entries (duplicates included), L is the longest value (RHS) in bytes and T the
sum over entries of len(name) + len(value). The reference capture (8 aliases, longest 40,
209 total) is reproduced by tests/test_aliases.py with a file whose lengths follow this
rule (``team: root, carol@example.org, bob@example.net`` gives the 40-byte value).

The database (PATH + ".db") is pysendmail's sorted-index file (config.sorted_index,
shared with the maps makemap builds): keys are the lower-cased names, values the raw
alias values, UTF-8; it is read by binary search with pread() and written atomically
(temporary file, fsync, rename, directory fsync), so a reader sees the old or the new
database, never a torn one. Only ``os`` is imported at module level.
"""
import os

from . import sorted_index

MAGIC = sorted_index.MAGIC
_ENC = "utf-8"
_ERRS = "surrogateescape"


class Summary:
    """What a rebuild did: Sendmail's three numbers, error and warning lines."""

    __slots__ = ("path", "count", "longest", "total", "errors", "warnings")

    def __init__(self, path, count=0, longest=0, total=0, errors=None, warnings=None):
        self.path = path
        self.count = count
        self.longest = longest
        self.total = total
        self.errors = errors if errors is not None else []
        self.warnings = warnings if warnings is not None else []

    def line(self):
        """Sendmail's summary line."""
        return (f"{self.path}: {self.count} aliases, longest {self.longest} bytes, "
                f"{self.total} bytes total")

    def __repr__(self):
        return f"Summary({self.line()!r}, errors={len(self.errors)})"


class Parsed:
    """The result of parsing a text file: `aliases` maps lower-cased name -> value."""

    __slots__ = ("aliases", "summary")

    def __init__(self, aliases, summary):
        self.aliases = aliases
        self.summary = summary


def _name_ok(name):
    if not name:
        return False
    for ch in name:
        if ch in ' \t<>()[],;:\\"' or ord(ch) < 32 or ord(ch) == 127:
            return False
    return True


def parse_text(text, path="aliases"):
    """Parse aliases text the way Sendmail's readaliases() does. Returns a `Parsed`."""
    aliases = {}
    summary = Summary(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    n = len(lines)
    i = 0
    skipping = False

    def error(lineno, msg):
        summary.errors.append(f"{path}: line {lineno}: {msg}")

    while i < n:
        line = lines[i].rstrip("\r")
        i += 1
        lineno = i
        # A trailing backslash joins the next physical line.
        while line.endswith("\\") and i < n:
            line = line[:-1] + lines[i].rstrip("\r")
            i += 1
            lineno = i
        if line == "" or line[0] == "#":
            skipping = False
            continue
        if line[0] in " \t":
            if not skipping:
                error(lineno, "Non-continuation line starts with space")
            skipping = True
            continue
        skipping = False
        colon = line.find(":")
        if colon < 0:
            error(lineno, "missing colon")
            continue
        lhs = line[:colon].strip()
        if "@" in lhs:
            # name@localhost style: the local part is the alias name.
            lhs = lhs[:lhs.rfind("@")].strip()
        if not _name_ok(lhs):
            error(lineno, f"{line[:40]}... illegal alias name")
            continue
        rhs = line[colon + 1:].lstrip(" \t\r\n\v\f")
        # Continuation lines: appended as they are, newline removed.
        while i < n and lines[i][:1] in (" ", "\t"):
            rhs += lines[i].rstrip("\r")
            i += 1
            lineno = i
        if lhs.lower() == "postmaster":
            lhs = "postmaster"
        if rhs.strip(" \t\r\n\v\f") == "":
            error(lineno, f"{lhs[:40]}... missing value for alias")
            continue
        key = lhs.lower()
        if key in aliases:
            summary.warnings.append(f"Warning: duplicate alias name {key}")
        aliases[key] = rhs
        size = len(rhs.encode(_ENC, _ERRS))
        summary.count += 1
        summary.total += len(lhs.encode(_ENC, _ERRS)) + size
        if size > summary.longest:
            summary.longest = size
    return Parsed(aliases, summary)


def parse_file(path):
    """Parse the aliases file at `path` (OSError if it cannot be read)."""
    with open(path, "rb") as f:
        data = f.read()
    return parse_text(data.decode(_ENC, _ERRS), path)


def split_value(value):
    """Cut an alias value into its addresses: commas split except inside "quotes",
    <angle brackets> or (comments); backslash escapes the next character."""
    items = []
    cur = []
    quote = False
    angle = 0
    paren = 0
    esc = False
    for ch in value:
        if esc:
            cur.append(ch)
            esc = False
            continue
        if ch == "\\":
            cur.append(ch)
            esc = True
            continue
        if quote:
            cur.append(ch)
            if ch == '"':
                quote = False
            continue
        if ch == '"' and not paren:
            quote = True
        elif ch == "(":
            paren += 1
        elif ch == ")" and paren:
            paren -= 1
        elif ch == "<" and not paren:
            angle += 1
        elif ch == ">" and angle and not paren:
            angle -= 1
        elif ch in ",\n" and not angle and not paren:
            item = "".join(cur).strip(" \t\r\n")
            if item:
                items.append(item)
            cur = []
            continue
        cur.append(ch)
    item = "".join(cur).strip(" \t\r\n")
    if item:
        items.append(item)
    return items


# -- database ---------------------------------------------------------------------
# The file format and its atomic writing live in config.sorted_index (shared with the
# hash/btree maps that makemap builds); here: str <-> bytes and the key folding.

_KIND = "alias database"


def db_path_for(path):
    return path + ".db"


def _db_pairs(aliases):
    return [(k.encode(_ENC, _ERRS), v.encode(_ENC, _ERRS)) for k, v in aliases.items()]


def _encode_db(aliases):
    return sorted_index.encode(_db_pairs(aliases))


def write_db(db_path, aliases, mode=0o644):
    """Write the database atomically: temp file, fsync, rename, fsync the directory."""
    sorted_index.write(db_path, _db_pairs(aliases), mode)


class Locked(Exception):
    """Another process holds the aliases file's lock (it is being rebuilt)."""


def rebuild(path, db_path=None, wait=True):
    """Parse the text file at `path` and write its database; returns the `Summary`.

    The text file is flock()ed for the duration, as Sendmail does, so rebuilds do not
    interleave; with wait=False a held lock raises `Locked`. Bad lines are reported in
    summary.errors and skipped; the rest is built. OSError propagates if the text file
    cannot be read or the database written."""
    import fcntl
    with open(path, "rb") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise Locked(f"Alias file {path} is locked (maybe being rebuilt)") from None
        parsed = parse_text(f.read().decode(_ENC, _ERRS), path)
        mode = os.fstat(f.fileno()).st_mode & 0o644
        write_db(db_path or db_path_for(path), parsed.aliases, mode or 0o600)
    return parsed.summary


def db_get(db_path, name):
    """Look `name` up in a database file by binary search with pread(); the value
    string or None. OSError if absent; ValueError if the file is not a database of
    this format or is cut short. (No mmap: a file truncated under a mapping would
    kill the reader with SIGBUS.)"""
    value = sorted_index.get(db_path, name.lower().encode(_ENC, _ERRS), _KIND)
    return None if value is None else value.decode(_ENC, _ERRS)


def db_items(db_path):
    """All (name, value) pairs of a database, in key order."""
    return [(k.decode(_ENC, _ERRS), v.decode(_ENC, _ERRS))
            for k, v in sorted_index.items(db_path, _KIND)]


# -- lookup -----------------------------------------------------------------------

_text_cache = {}


def _parsed_cached(path, st):
    stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    hit = _text_cache.get(path)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    parsed = parse_file(path)
    _text_cache[path] = (stamp, parsed)
    return parsed


_FILE_CLASSES = ("hash", "btree", "dbm", "implicit", "text", "pysm")


def aliases_paths(layout_or_path, options=None):
    """The aliases files, in lookup order: the AliasFile option (Sendmail's
    comma-separated list, each entry optionally ``class:path``; classes that are not
    files, such as nis or ldap, are skipped) if set, else layout.aliases (or a path)."""
    if options:
        spec = options.get("AliasFile") or options.get("A")
        if spec:
            out = []
            for item in spec.split(","):
                item = item.strip()
                if not item:
                    continue
                if not item.startswith("/") and ":" in item:
                    cls, item = item.split(":", 1)
                    if cls.strip().lower() not in _FILE_CLASSES:
                        continue
                    item = item.strip()
                    if item.startswith("-"):
                        # map flags before the file name, e.g. "hash:-N /etc/aliases"
                        item = item.split()[-1]
                if item:
                    out.append(item)
            if out:
                return out
    if isinstance(layout_or_path, (list, tuple)):
        return list(layout_or_path)
    if isinstance(layout_or_path, str):
        return [layout_or_path]
    return [layout_or_path.aliases]


def aliases_path(layout_or_path, options=None):
    """The first (main) aliases file; see `aliases_paths`."""
    return aliases_paths(layout_or_path, options)[0]


def _lookup_one(path, name, warn):
    db = db_path_for(path)
    try:
        text_st = os.stat(path)
    except OSError:
        text_st = None
    try:
        db_st = os.stat(db)
    except OSError:
        db_st = None
    if db_st is not None and (text_st is None or db_st.st_mtime_ns >= text_st.st_mtime_ns):
        try:
            return db_get(db, name)
        except (OSError, ValueError) as exc:
            if warn:
                warn(f"alias database {db} unusable: {exc}")
    if text_st is None:
        return None
    if warn:
        warn(f"Warning: alias database {db} out of date")
    try:
        parsed = _parsed_cached(path, text_st)
    except OSError as exc:
        if warn:
            warn(f"cannot open {path}: {exc.strerror}")
        return None
    return parsed.aliases.get(name.lower())


def lookup_value(layout_or_path, name, warn=None, options=None):
    """The raw value of alias `name` (case-insensitive), or None; the first file of
    `aliases_paths` that defines it wins.

    A file's PATH.db is used when it is at least as new as the text file; otherwise
    the text is parsed (and cached by mtime) and warn("Warning: alias database PATH.db
    out of date") is called, as Sendmail's aliaswait() says."""
    for path in aliases_paths(layout_or_path, options):
        value = _lookup_one(path, name, warn)
        if value is not None:
            return value
    return None


def lookup(layout_or_path, name, warn=None, options=None):
    """The addresses alias `name` expands to (one level), or None if it is no alias."""
    value = lookup_value(layout_or_path, name, warn, options)
    if value is None:
        return None
    return split_value(value)
