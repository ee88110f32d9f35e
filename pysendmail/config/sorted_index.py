"""pysendmail's own key/value database file: a sorted index read by binary search.

It stands in for the Berkeley DB files of Sendmail (``aliases.db``, the ``.db`` maps
that makemap(8) builds), which Python cannot read or write without a compiled
extension. The alias database (config.aliases) and the hash/btree maps
(config.maps.HashMap, built by `makemap`) share it.

Layout, all numbers big-endian unsigned 32-bit:

* the magic ``PYSMADB1\\n`` (9 bytes), then the entry count N;
* N index entries of four numbers each: key offset, key length, value offset, value
  length (offsets from the start of the file; a value follows its key);
* the key and value bytes.

Entries are sorted by key bytes; equal keys (makemap -d) keep the order they were
given in and a lookup returns the first of them. A reader needs O(log N) pread()
calls per lookup and never loads the file: no mmap either, since a file truncated
under a mapping would kill the reader with SIGBUS.

Writing is atomic: a temporary file in the same directory, fsync, rename over the
old file, fsync of the directory; a reader sees the old or the new file, never a torn
one, and a reader holding the old file open keeps reading it consistently.

API: `encode(items)`, `write(path, items, mode, owner)`, `Writer` (create the
temporary file first, commit later), `is_index(path)`, `Reader(path)` with
``get(key)``, ``items()``, ``changed()``, ``close()``; `get(path, key)` and
`items(path)` for one-shot use. Keys and values are bytes. Errors: OSError from the
file system; ValueError when a file is not of this format, cut short or corrupt.
Only ``os`` is imported at module level.
"""
import os

MAGIC = b"PYSMADB1\n"
_HEAD = len(MAGIC) + 4
_ENTRY = 16


def _noun(kind):
    return ("an " if kind[:1] in "aeiou" else "a ") + kind


def encode(items):
    """The file's bytes for an iterable of (key, value) byte strings (any order;
    equal keys keep their relative order)."""
    import struct
    pairs = sorted(items, key=lambda kv: kv[0])
    off = _HEAD + _ENTRY * len(pairs)
    index = []
    blob = []
    for k, v in pairs:
        index.append(struct.pack(">IIII", off, len(k), off + len(k), len(v)))
        blob.append(k)
        blob.append(v)
        off += len(k) + len(v)
    if off > 0xFFFFFFFF:
        raise ValueError("database over 4 GiB")
    return b"".join([MAGIC, struct.pack(">I", len(pairs))] + index + blob)


class Writer:
    """An atomic replacement of `path`, in two steps: the constructor creates the
    temporary file next to it (OSError if the directory does not let us, so callers
    can report that before reading their input), `commit(items)` writes, fsyncs and
    renames it into place, `abort()` removes it. `mode` is applied exactly (no
    umask); `owner` is (uid, gid) for fchown (-1 keeps one), or None."""

    def __init__(self, path, mode=0o644, owner=None):
        self.path = path
        self.mode = mode
        self.owner = owner
        self.tmp = f"{path}.tmp{os.getpid()}.{os.urandom(6).hex()}"
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)

    def commit(self, items=None, data=None):
        """Write `items` (or the already encoded `data`) and rename into place."""
        if data is None:
            data = encode(items)
        fd, self.fd = self.fd, None
        try:
            try:
                view = memoryview(data)
                while view:
                    done = os.write(fd, view)
                    view = view[done:]
                if self.owner is not None:
                    os.fchown(fd, self.owner[0], self.owner[1])
                os.fchmod(fd, self.mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.tmp, self.path)
        except BaseException:
            self._unlink()
            raise
        dfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def abort(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            self._unlink()

    def _unlink(self):
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


def write(path, items, mode=0o644, owner=None):
    """Write the database atomically: temp file, fsync, rename, fsync the directory."""
    data = encode(items)
    Writer(path, mode, owner).commit(data=data)


def is_index(path):
    """True if `path` starts with this format's magic (False if not; OSError if it
    cannot be read)."""
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


class Reader:
    """An open database: `get(key)` by binary search with pread(); `items()`;
    `changed()` tells whether `path` now names another file (rebuilt) than the one
    open; `close()`. ValueError if the file is not of this format."""

    def __init__(self, path, kind="sorted-index database"):
        import struct
        self._struct = struct
        self.path = path
        self.kind = kind
        self.fd = os.open(path, os.O_RDONLY)
        try:
            st = os.fstat(self.fd)
            self.stamp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            self.size = st.st_size
            head = os.pread(self.fd, _HEAD, 0)
            if len(head) < _HEAD or head[:len(MAGIC)] != MAGIC:
                raise ValueError(f"{path}: not {_noun(kind)}")
            (self.count,) = struct.unpack_from(">I", head, len(MAGIC))
            if _HEAD + _ENTRY * self.count > self.size:
                raise ValueError(f"{path}: truncated {kind}")
        except BaseException:
            self.close()
            raise

    def close(self):
        fd, self.fd = getattr(self, "fd", None), None
        if fd is not None:
            os.close(fd)

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def changed(self):
        """True if the path is gone or names a different (or modified) file."""
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size) != self.stamp

    def _entry(self, i):
        ent = os.pread(self.fd, _ENTRY, _HEAD + _ENTRY * i)
        if len(ent) != _ENTRY:
            raise ValueError(f"{self.path}: truncated {self.kind}")
        koff, klen, voff, vlen = self._struct.unpack(">IIII", ent)
        if koff + klen > self.size or voff + vlen > self.size or voff != koff + klen:
            raise ValueError(f"{self.path}: corrupt {self.kind}")
        rec = os.pread(self.fd, klen + vlen, koff)
        if len(rec) != klen + vlen:
            raise ValueError(f"{self.path}: truncated {self.kind}")
        return rec[:klen], rec[klen:]

    def get(self, key):
        """The value (bytes) of the first entry whose key is `key`, or None."""
        lo, hi = 0, self.count
        found = None
        while lo < hi:
            mid = (lo + hi) // 2
            k, v = self._entry(mid)
            if k < key:
                lo = mid + 1
            else:
                if k == key:
                    found = v
                hi = mid
        return found

    def items(self):
        """All (key, value) pairs in file order (sorted by key)."""
        return [self._entry(i) for i in range(self.count)]


def get(path, key, kind="sorted-index database"):
    """One lookup in the database at `path`: the value bytes or None."""
    with Reader(path, kind) as r:
        return r.get(key)


def items(path, kind="sorted-index database"):
    """All (key, value) byte pairs of the database at `path`, in key order."""
    with Reader(path, kind) as r:
        return r.items()
