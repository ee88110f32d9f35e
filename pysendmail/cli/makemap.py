"""`makemap`: build the keyed maps of sendmail.cf K lines, like Sendmail 8.17's makemap(8).

    makemap [-C cffile] [-N] [-c cachesize] [-D commentchar] [-d] [-e] [-f] [-i type]
            [-L] [-l] [-o] [-r] [-s] [-t delim] [-u] [-v] [-x] maptype mapname

Reads ``key value`` lines from standard input and writes ``mapname.db`` (a name that
already ends in ``.db`` is used as it is) for map types ``hash`` and ``btree``, both
in pysendmail's sorted-index format (config.sorted_index), which config.maps.HashMap
reads. ``dbm`` and ``cdb`` are Sendmail types this build does not have; ``cf``/``CF``
take the type from the K line of sendmail.cf whose file is mapname (full path for cf,
base name without extension for CF), ``-i type`` being the fallback.

Input, as in Sendmail: a line is cut at the first separator (white space, or the
``-t`` character) into key and value; separators after the key are skipped; the
value is the rest of the line, kept as it is. Keys are folded to lower case (ASCII
letters only) unless -f. Empty lines and lines starting with the comment character
(``#``, or ``-D``) are skipped. Errors, each on stderr as ``makemap: MAP: line N:
...`` and making the exit status 65 (EX_DATAERR) while the other lines are still
stored: ``syntax error (leading space)``, ``no RHS for LHS KEY`` (unless -e),
``line too long (1024 bytes max)`` (Sendmail's line buffer), ``key KEY: duplicate key``
(the first value is kept; -r replaces it silently, -d keeps both and lookups find the
first). -o adds to an existing map instead of starting an empty one. -u prints the
map as ``key<TAB>value`` (the -t character instead of the tab) in key order. -v prints
``key=`K', val=`V'`` for each entry stored. -l lists the types (hash, btree), -L also
cf and CF, -x the types with their file extension. -N (null byte in keys: Berkeley DB
only) and -c (cache size) are accepted and do nothing here.

Exit status (sysexits, as Sendmail's): 0 done; 64 usage; 65 bad input lines or a map
not found in sendmail.cf for type cf; 66 the configuration file cannot be read; 73 the
map cannot be opened or created (unknown or unsupported type, missing map for -u or
-o, no write access, a symlink or hard link without -s); 74 the map could not be
written at the end.

Security: runs as its caller and writes only mapname.db, through a temporary file in
the same directory renamed into place; an existing map keeps its mode (a new one is
0640 less the umask) and, when root runs it, its owner. Without -s it refuses a map
that is a symbolic link, a hard link or not a regular file (with -s a symbolic link's
target is replaced). As root, the configuration file's TrustedUser becomes the owner,
as in Sendmail.
"""
import os
import sys

EX_OK, EX_USAGE, EX_DATAERR, EX_NOINPUT = 0, 64, 65, 66
EX_SOFTWARE, EX_CANTCREAT, EX_IOERR = 70, 73, 74

OPTIONS = "C:D:Nc:defi:Llorst:uvx"
TYPES = ("hash", "btree")
EXTENSION = "db"
UNSUPPORTED = {"dbm": "NDBM", "cdb": "CDB"}     # Sendmail types this build lacks
LINE_MAX = 1024                                 # Sendmail's input buffer, NUL included
NEW_MODE = 0o640                                # Sendmail's DBMMODE
_SPACE = b" \t\n\v\f\r"


class Exit(Exception):
    """Leave with this status (messages already written)."""

    def __init__(self, status):
        super().__init__(status)
        self.status = status


class Opts:
    __slots__ = ("cf", "null", "cache", "dup", "empty", "fold", "fallback", "notrunc",
                 "replace", "unsafe", "sep", "unmake", "verbose", "comment")

    def __init__(self):
        self.cf = None
        self.null = self.dup = self.empty = self.notrunc = self.replace = False
        self.unsafe = self.unmake = self.verbose = False
        self.cache = 1024 * 1024
        self.fold = True
        self.fallback = None
        self.sep = None
        self.comment = b"#"


class Out:
    """Byte-level stdout/stderr (keys are bytes as read)."""

    def __init__(self, stdout=None, stderr=None):
        self.out = stdout if stdout is not None else sys.stdout.buffer
        self.err = stderr if stderr is not None else sys.stderr.buffer

    def o(self, text):
        self.out.write(text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape"))

    def e(self, text):
        self.out.flush()
        self.err.write(text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape"))
        self.err.flush()


def usage(prog, io):
    pad = " " * len(prog)
    io.e("Usage: %s [-C cffile] [-N] [-c cachesize] [-D commentchar]\n"
         "       %s [-d] [-e] [-f] [-l] [-o] [-r] [-s] [-t delimiter]\n"
         "       %s [-u] [-v] type mapname\n" % (prog, pad, pad))
    raise Exit(EX_USAGE)


def list_types(io, ext=False, cf=False):
    for t in TYPES:
        io.o("%s:%s\n" % (t, EXTENSION) if ext else t + "\n")
    if cf:
        io.o("cf\nCF\n")
    raise Exit(EX_OK)


def parse_args(argv, io):
    """glibc getopt over OPTIONS (options may follow the operands; `--` ends them).
    Returns (opts, operands); -l, -L, -x list the types and leave at once."""
    argv0 = argv[0] if argv else "makemap"
    prog = argv0.rpartition("/")[2]
    opts = Opts()
    operands = []
    args = list(argv[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            operands.extend(args[i:])
            break
        if not arg.startswith("-") or arg == "-":
            operands.append(arg)
            continue
        j = 1
        while j < len(arg):
            c = arg[j]
            j += 1
            pos = OPTIONS.find(c)
            if c == ":" or pos < 0:
                io.e("%s: invalid option -- '%s'\n" % (argv0, c))
                usage(prog, io)
            value = None
            if OPTIONS[pos + 1:pos + 2] == ":":
                if j < len(arg):
                    value = arg[j:]
                elif i < len(args):
                    value = args[i]
                    i += 1
                else:
                    io.e("%s: option requires an argument -- '%s'\n" % (argv0, c))
                    usage(prog, io)
                j = len(arg)
            _apply(opts, c, value, io)
    return prog, opts, operands


def _apply(opts, c, value, io):
    if c == "C":
        opts.cf = value
    elif c == "N":
        opts.null = True
    elif c == "c":
        opts.cache = _atol(value)
    elif c == "d":
        opts.dup = True
    elif c == "e":
        opts.empty = True
    elif c == "f":
        opts.fold = False
    elif c == "i":
        opts.fallback = value
    elif c == "D":
        opts.comment = value.encode("utf-8", "surrogateescape")[:1] or None
    elif c == "L":
        list_types(io, cf=True)
    elif c == "l":
        list_types(io)
    elif c == "x":
        list_types(io, ext=True)
    elif c == "o":
        opts.notrunc = True
    elif c == "r":
        opts.replace = True
    elif c == "s":
        opts.unsafe = True
    elif c == "t":
        if not value:
            io.e("Invalid separator\n")
        else:
            opts.sep = value.encode("utf-8", "surrogateescape")[:1]
    elif c == "u":
        opts.unmake = True
    elif c == "v":
        opts.verbose = True


def _atol(text):
    text = text.strip()
    n = 0
    for k, ch in enumerate(text):
        if ch.isdigit() and ch.isascii():
            n = n * 10 + int(ch)
        elif not (k == 0 and ch in "+-"):
            break
    return -n if text.startswith("-") else n


# -- sendmail.cf: TrustedUser and the K line of a map --------------------------------

def read_cf(path, mapfile, fullpath, io):
    """(TrustedUser uid or 0, class of the K line naming `mapfile` or "") from the
    configuration file, as Sendmail's makemap reads it; exits 66 if unreadable."""
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "surrogateescape").split("\n")
    except OSError as exc:
        io.e("makemap: %s: %s\n" % (path, exc.strerror or exc))
        raise Exit(EX_NOINPUT) from None
    uid = 0
    klass = ""
    want = mapfile
    if want and not fullpath:
        want = want.rpartition("/")[2]
        if "." in want:
            want = want[:want.rfind(".")]
    for line in lines:
        if line.startswith("O") and line[1:13].lower() == " trusteduser" \
                and not line[13:14].isalnum():
            eq = line.find("=")
            if eq < 0:
                continue
            who = line[eq + 1:].strip()
            uid = _trusted_uid(who, io)
        elif line.startswith("K") and want and not klass:
            klass = _k_line_class(line.rstrip(), want, fullpath)
    return uid, klass


def _trusted_uid(who, io):
    if who[:1].isdigit():
        return _atol(who)
    import pwd
    try:
        return pwd.getpwnam(who).pw_uid
    except KeyError:
        io.e("TrustedUser: unknown user %s\n" % who)
        return 0


def _k_line_class(line, want, fullpath):
    """The map class of K line `line` if its last word is the map file `want`."""
    sp = line.rfind(" ")
    if sp < 0:
        return ""
    last = line[sp + 1:]
    at = last.find(want)
    if at < 0:
        return ""
    b = last[at:]
    if not fullpath and "." in b:
        b = b[:b.rfind(".")]
    if b != want:
        return ""
    before = (line[:sp + 1] + last[:at])[-1:]
    if fullpath and not before.isspace():
        return ""
    if not fullpath and not (before == "/" or before.isspace()):
        return ""
    words = line[1:].split()
    if len(words) < 2 or not words[0][:1].isalnum() or not words[1][:1].isalnum():
        return ""
    klass = ""
    for ch in words[1]:
        if not ch.isalnum():
            break
        klass += ch
    return klass


# -- the map file --------------------------------------------------------------------

def db_file(mapname):
    suffix = "." + EXTENSION
    return mapname if mapname.endswith(suffix) else mapname + suffix


def open_error(prog, typename, mapname, reason, io):
    io.e("%s: error opening type %s map %s: %s\n" % (prog, typename, mapname, reason))
    raise Exit(EX_CANTCREAT)


def check_file(path, unsafe):
    """Sendmail's safefile() checks on the map file (unless -s): the reason it is
    refused, or None. Returns also the path to write (a symlink's target with -s)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None, path
    import stat
    if stat.S_ISLNK(st.st_mode):
        if not unsafe:
            return "Symbolic links not allowed", path
        path = os.path.realpath(path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None, path
    if not stat.S_ISREG(st.st_mode):
        return "Regular files only", path
    if st.st_nlink > 1 and not unsafe:
        return "Hard links not allowed", path
    return None, path


class Builder:
    """The entries of the map being built, with Sendmail's put() rules: a repeated
    key is refused with a message unless -r (replace) or -d (keep both)."""

    def __init__(self, old, mapname, prog, opts, io):
        self.pairs = list(old)
        self.where = {}
        for i, (k, _v) in enumerate(self.pairs):
            self.where.setdefault(k, i)
        self.head = b"%s: %s: " % (prog.encode(), mapname.encode("utf-8", "surrogateescape"))
        self.opts = opts
        self.io = io

    def put(self, n, key, value):
        """Store one entry; returns its exit status (0, or 65 for a refused key)."""
        if self.opts.verbose:
            self.io.o(b"key=`%s', val=`%s'\n" % (key, value))
        if self.opts.dup or key not in self.where:
            self.where.setdefault(key, len(self.pairs))
            self.pairs.append((key, value))
        elif self.opts.replace:
            self.pairs[self.where[key]] = (key, value)
        else:
            self.io.e(self.head + b"line %d: key %s: duplicate key\n" % (n, key))
            return EX_DATAERR
        return EX_OK


def read_entries(data, builder, opts, io):
    """Parse makemap input bytes into `builder`, reporting bad lines as Sendmail
    does; returns the exit status the lines give (0 or 65)."""
    status = EX_OK
    sep = opts.sep
    head = builder.head
    lines = data.split(b"\n")
    last_has_nl = data.endswith(b"\n")
    if last_has_nl:
        lines.pop()
    for n, line in enumerate(lines, 1):
        limit = LINE_MAX - 2 if (n < len(lines) or last_has_nl) else LINE_MAX - 1
        if len(line) > limit:
            io.e(head + b"line %d: line too long (%d bytes max)\n" % (n, LINE_MAX))
            status = EX_DATAERR
            continue
        line = line.split(b"\0", 1)[0]            # C strings end at a NUL
        if not line or (opts.comment is not None and line[:1] == opts.comment):
            continue
        if sep is None and line[:1] in (b" ", b"\t", b"\v", b"\f", b"\r"):
            io.e(head + b"line %d: syntax error (leading space)\n" % n)
            status = EX_DATAERR
            continue
        if sep is None:
            cut = len(line)
            for k, ch in enumerate(line):
                if ch in _SPACE:
                    cut = k
                    break
            key, rest = line[:cut], line[cut + 1:]
            value = rest.lstrip(_SPACE)
        else:
            cut = line.find(sep)
            if cut < 0:
                key, rest = line, b""
            else:
                key, rest = line[:cut], line[cut + 1:]
            value = rest.lstrip(sep)
        if opts.fold:
            key = key.lower()                     # bytes.lower folds ASCII only
        if not value and not opts.empty:
            io.e(head + b"line %d: no RHS for LHS %s\n" % (n, key))
            status = EX_DATAERR
            continue
        status = max(status, builder.put(n, key, value))
    return status


def run(argv, stdin=None, io=None, cf_default=None):
    io = io or Out()
    prog, opts, operands = parse_args(argv, io)
    if len(operands) != 2:
        usage(prog, io)
    typename, mapname = operands
    euid = os.geteuid()
    trusted = 0
    from_cf = typename.lower() == "cf"
    if euid == 0 or from_cf:
        cf = opts.cf or cf_default or _default_cf()
        trusted, klass = read_cf(cf, mapname if from_cf else None, typename == "cf", io)
        if from_cf:
            typename = klass
            if not typename:
                if opts.fallback:
                    typename = opts.fallback
                    if opts.verbose:
                        io.e("%s: mapfile %s: not found in %s, using fallback %s\n"
                             % (prog, mapname, cf, opts.fallback))
                else:
                    io.e("%s: mapfile %s: not found in %s\n" % (prog, mapname, cf))
                    raise Exit(EX_DATAERR)
    if typename not in TYPES:
        if typename in UNSUPPORTED:
            io.e("%s: Need to recompile with -D%s for %s support\n"
                 % (prog, UNSUPPORTED[typename], typename))
            raise Exit(EX_CANTCREAT)
        open_error(prog, typename, mapname, "Unknown database type", io)
    from ..config import sorted_index
    path = db_file(mapname)
    refused, path = check_file(path, opts.unsafe)
    if refused:
        open_error(prog, typename, mapname, refused, io)
    if opts.unmake:
        return unmake(path, prog, typename, mapname, opts, io, sorted_index)
    old = []
    mode = NEW_MODE & ~_umask()
    owner = None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        open_error(prog, typename, mapname, exc.strerror or str(exc), io)
    if opts.notrunc:
        if st is None:
            open_error(prog, typename, mapname, os.strerror(2), io)
        try:
            old = sorted_index.items(path, "map database")
        except OSError as exc:
            open_error(prog, typename, mapname, exc.strerror or str(exc), io)
        except ValueError:
            open_error(prog, typename, mapname,
                       "not a pysendmail map database (rebuild it without -o)", io)
    if st is not None:
        mode = st.st_mode & 0o7777
        if euid == 0:
            owner = (st.st_uid, st.st_gid)
    if euid == 0 and trusted:
        owner = (trusted, owner[1] if owner else -1)
    try:
        writer = sorted_index.Writer(path, mode, owner)
    except OSError as exc:
        open_error(prog, typename, mapname, exc.strerror or str(exc), io)
    try:
        data = (stdin if stdin is not None else sys.stdin.buffer).read()
        builder = Builder(old, mapname, prog, opts, io)
        status = read_entries(data, builder, opts, io)
        io.out.flush()
    except BaseException:
        writer.abort()
        raise
    try:
        writer.commit(builder.pairs)
    except (OSError, ValueError) as exc:
        io.e("%s: close(%s): %s\n" % (prog, mapname, getattr(exc, "strerror", None) or exc))
        return EX_IOERR
    return status


def unmake(path, prog, typename, mapname, opts, io, sorted_index):
    try:
        pairs = sorted_index.items(path, "map database")
    except OSError as exc:
        open_error(prog, typename, mapname, exc.strerror or str(exc), io)
    except ValueError:
        open_error(prog, typename, mapname, "not a pysendmail map database", io)
    sep = opts.sep or b"\t"
    for key, value in pairs:
        io.o(key + sep + value + b"\n")
    io.out.flush()
    return EX_OK


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _default_cf():
    from .. import layout
    return layout.current().cf


def main(argv=None, stdin=None, stdout=None, stderr=None):
    """The makemap command; returns the exit status."""
    io = Out(stdout, stderr)
    try:
        return run(list(sys.argv if argv is None else argv), stdin, io)
    except Exit as e:
        try:
            io.out.flush()
        except (OSError, ValueError):
            pass
        return e.status
    except BrokenPipeError:
        return EX_IOERR
    except KeyboardInterrupt:
        return 75
