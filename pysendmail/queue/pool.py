"""The file pool: finished queue files kept for reuse instead of unlinked.

`<spool>/pool/` sits beside the queue directory (same file system). `recycle()` moves a
finished file there whole; `take()` renames one into the queue under a new name (a df
or tf), `claim()`/`place()` hand one to a Maildir delivery. A recycled file keeps its
bytes: its taker overwrites it from the start and cuts it to length, so its blocks
are reused rather than freed and allocated again, and no inode is allocated (see
queue/spool.py for why both are dear on ext4). A file taken from the pool is checked
like a new one: regular, one link, ours.

Several processes take from the pool at once (the SMTP workers, Maildir deliveries),
each from a listing of its own; a name another process took first costs a failed
rename. So that this stays rare at thousands of takes a second:
- the SMTP workers share the pool out (`share`: worker k of n takes the names whose
  hash is k modulo n; the workers are forked from one process, so they agree on str
  hashes), and the others' too only when its own share runs short;
- each walks its listing in an order of its own (a per-process mix of the hashes);
- a listing is made again as soon as one runs out, unless the last one found fewer
  than RELIST names: then at most once a second.
A taker that must not replace an existing file renames with RENAME_NOREPLACE
(renameat2), one call where a check and a rename were two.

Imports only os/time: submission goes through here.
"""
import os
import time

POOL_MAX = 4096        # recycled files kept
RELIST = 32            # a listing with fewer names: the next one waits a second

_noreplace = None


def _rename_noreplace_function():
    """renameat2(..., RENAME_NOREPLACE) through ctypes, or False where libc lacks it."""
    global _noreplace
    if _noreplace is None:
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
            fn.restype = ctypes.c_int
            _noreplace = (fn, ctypes)
        except (OSError, AttributeError):
            _noreplace = False
    return _noreplace


AT_FDCWD = -100
RENAME_NOREPLACE = 1


def rename_noreplace(src, dst):
    """Rename src to dst unless dst exists (FileExistsError). Atomic where the kernel
    and file system have renameat2; else a check, then a rename."""
    found = _rename_noreplace_function()
    if found:
        fn, ctypes = found
        if fn(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (22, 38):         # EINVAL (file system), ENOSYS (kernel): fall back
            raise OSError(err, os.strerror(err), src, None, dst)
    if os.path.lexists(dst):
        raise FileExistsError(17, os.strerror(17), dst)
    os.rename(src, dst)


class FilePool:
    """The pool beside one queue directory."""

    def __init__(self, queue_path):
        self.queue_path = queue_path
        self.path = os.path.join(os.path.dirname(queue_path.rstrip("/")) or ".", "pool")
        self._names = []        # names seen in the pool, not yet tried
        self._listed = 0.0      # when the pool was last listed
        self._seq = 0
        self._count = None      # files in the pool, counted once per process
        self._counted = 0.0     # when it was last counted
        self._owner = None      # (uid, gid) the pool's files get, or False
        self._owner_seen = 0.0
        self._found = 0         # names the last listing found
        self.share = None       # (k, n): this process is taker k of n (the SMTP workers)

    def forget(self):
        """Forget the last listing (the next take lists the pool again)."""
        self._names = []
        self._listed = 0.0
        self._found = 0

    # -- taking --------------------------------------------------------------------------
    def take(self, path, check=True, keep=False):
        """A file renamed from the pool to `path`, open O_RDWR at offset 0; None when
        the pool has nothing usable (then the caller creates the file). `path` must not
        exist (checked unless `check` is false: a name derived from a df we created).
        It is emptied, unless `keep`: then it holds old bytes and the caller, which
        overwrites it from the start, cuts it to its length when done (cut_to)."""
        while True:
            name = self._next_name()
            if name is None:
                return None
            src = os.path.join(self.path, name)
            try:
                if check:
                    rename_noreplace(src, path)
                else:
                    os.rename(src, path)
            except FileNotFoundError:
                continue                    # another process took it
            except OSError:
                return None                 # path exists, or the pool is unusable
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
            except OSError:
                _unlink_quietly(path)
                continue
            st = os.fstat(fd)
            if st.st_nlink != 1 or (st.st_mode & 0o170000) != 0o100000:
                os.close(fd)
                _unlink_quietly(path)
                continue
            if st.st_uid != os.geteuid() and os.geteuid() != 0:
                os.close(fd)                # not ours to reuse: back where it was
                try:
                    os.rename(path, src)
                except OSError:
                    _unlink_quietly(path)
                return None
            if st.st_size and not keep:
                os.ftruncate(fd, 0)
            if st.st_mode & 0o777 != 0o600:
                os.fchmod(fd, 0o600)
            return fd

    def _next_name(self):
        """The next name offered in the pool (dot names are being worked on), from a
        listing made at most once a second; None when there is none."""
        if not self._names:
            now = time.monotonic()
            if self._found < RELIST and now - self._listed < 1.0:
                return None
            self._listed = now
            try:
                names = [n for n in os.listdir(self.path) if not n.startswith(".")]
            except OSError:
                names = []
            self._found = len(names)
            if not names:
                return None
            # An order of this process's own (popped from the end: its share last):
            # hash() of a str is seeded per interpreter, the pid tells apart the
            # workers forked from one.
            mix = (os.getpid() * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
            if self.share is not None:
                k, n = self.share
                own = [name for name in names if hash(name) % n == k]
                if len(own) >= RELIST:
                    names = own     # the others' would mostly be gone by their turn
            names.sort(key=lambda name: hash(name) ^ mix)
            self._names = names
        return self._names.pop()

    # -- giving back ---------------------------------------------------------------------
    def recycle(self, path):
        """Keep a finished file in the pool (or unlink it if the pool is full or the
        file is not a plain one of ours). False when there was no such file."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return False
        except OSError:
            _unlink_quietly(path)
            return True
        try:
            st = os.fstat(fd)
            ok = st.st_nlink == 1 and (st.st_mode & 0o170000) == 0o100000
            if ok and self._room():
                # kept whole: emptying it would free its blocks, which the next writer
                # would allocate again (ext4 pays for both); the taker overwrites it
                # and cuts it to length. Made the pool's owner's first, then moved, so
                # a taker never gets a file this process still changes.
                owner = self._pool_owner()
                if owner and (st.st_uid, st.st_gid) != owner:
                    os.fchown(fd, owner[0], owner[1])
                self._seq += 1
                os.rename(path, os.path.join(self.path, "%d.%d.%d" % (
                    os.getpid(), int(time.time() * 1000) % 100000000, self._seq)))
                return True
        except OSError:
            pass
        finally:
            os.close(fd)
        _unlink_quietly(path)
        return True

    def _room(self):
        if self._count is None:
            try:
                self._count = len(os.listdir(self.path))
            except FileNotFoundError:
                try:
                    os.mkdir(self.path, 0o700)
                    owner = self._pool_owner()
                    if owner and os.geteuid() == 0:
                        os.chown(self.path, owner[0], owner[1])
                except OSError:
                    return False
                self._count = 0
            except OSError:
                return False
        if self._count >= POOL_MAX:
            # others take files out (SMTP workers, Maildir deliveries): count again,
            # at most once a second
            now = time.monotonic()
            if now - self._counted < 1.0:
                return False
            self._counted = now
            try:
                self._count = len(os.listdir(self.path))
            except OSError:
                return False
            if self._count >= POOL_MAX:
                return False
        self._count += 1
        return True

    def _pool_owner(self):
        """Files in the pool belong to the queue directory's owner (the SMTP workers' user
        when the daemon drops privileges), so that whoever writes the queue can reuse
        them. False when not root (then they are ours anyway). Looked up once a minute."""
        now = time.monotonic()
        if self._owner is None or now - self._owner_seen >= 60.0:
            self._owner_seen = now
            self._owner = False
            if os.geteuid() == 0:
                try:
                    st = os.stat(self.queue_path)
                    self._owner = (st.st_uid, st.st_gid)
                except OSError:
                    pass
        return self._owner

    # -- Maildir deliveries ----------------------------------------------------------------
    def claim(self, uid, gid):
        """An old file of the pool claimed for a Maildir delivery: renamed to a dot name
        in the pool (no other taker sees it), made uid:gid's and 0600, still holding
        its old bytes (the caller overwrites it and cuts it to length, which reuses its
        blocks; emptying it first would free them). Returns (fd, token) or None.
        place() moves it out, unclaim() gives it back."""
        try:
            pool_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            for _ in range(8):
                src = self._next_name()
                if src is None:
                    return None
                self._seq += 1
                claimed = ".taken.%d.%d" % (os.getpid(), self._seq)
                try:
                    os.rename(src, claimed, src_dir_fd=pool_fd, dst_dir_fd=pool_fd)
                except OSError:
                    continue                # another process took it
                fd = None
                try:
                    fd = os.open(claimed, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 dir_fd=pool_fd)
                    st = os.fstat(fd)
                    if st.st_nlink != 1 or (st.st_mode & 0o170000) != 0o100000:
                        os.close(fd)
                        os.unlink(claimed, dir_fd=pool_fd)
                        continue
                    if (st.st_uid, st.st_gid) != (uid, gid):
                        os.fchown(fd, uid, gid)
                    if st.st_mode & 0o7777 != 0o600:
                        os.fchmod(fd, 0o600)
                    return fd, (claimed, src)
                except OSError:
                    if fd is not None:
                        os.close(fd)
                    self.unclaim((claimed, src))
                    return None
            return None
        finally:
            os.close(pool_fd)

    def place(self, token, dir_fd, name):
        """Move a claimed file to `name` in the directory `dir_fd` (same file system);
        False when it cannot (EXDEV...)."""
        try:
            os.rename(os.path.join(self.path, token[0]), name, dst_dir_fd=dir_fd)
        except OSError:
            return False
        return True

    def unclaim(self, token):
        """Give a claimed file back to the pool (emptied: it may hold a message
        meant for someone else by now)."""
        path = os.path.join(self.path, token[0])
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)
            os.rename(path, os.path.join(self.path, token[1]))
        except OSError:
            _unlink_quietly(path)


def cut_to(fd, length):
    """End a file written from offset 0 at `length` (a reused one may be longer)."""
    if os.fstat(fd).st_size > length:
        os.ftruncate(fd, length)


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass
