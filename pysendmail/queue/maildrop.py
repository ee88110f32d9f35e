"""The maildrop: where callers that do not own the spool leave their messages.

A sticky directory (mode 1733: anyone may create, nobody may list or remove other
people's files). A drop file is: a fixed-size length field, the message body, then
the control-file text (queue.qfile format, recipients as given, no queue id).

Completion is marked as Postfix marks its queue files: the file is created under its
final name with mode 0600, written and fsync'd, then given the owner-execute bit
(0700) and fsync'd again; pickup takes only files with that bit. A submitter cannot
fsync the directory (it may not read it), and needs not: on a journalling file
system the fsync of a newly created file commits its directory entry with it, and no
rename follows that would need another directory commit. Files left incomplete by a
crashed submitter are removed by pickup after a day.

The pickup step (qmgr.pickup), run by root, trusts nothing in a drop but the
file's owner (fstat on the opened file): it re-checks every address, rebuilds the
identity fields, and adds the Received and X-Authentication-Warning fields itself.
"""
import os

from . import qfile
from .spool import fsync_dir

COMPLETE_MODE = 0o700   # owner-execute bit set: the drop file is whole
HEAD_FIELD = 32          # b"PSMDROP1 %022d\n": the body length


def reserve_header(fd):
    """Leave room for the length field; the control text is written after the body."""
    os.write(fd, b" " * HEAD_FIELD)
    return HEAD_FIELD


class Maildrop:
    def __init__(self, path):
        self.path = path

    def create(self):
        name = "%d.%s" % (os.getpid(), os.urandom(6).hex())
        fd = os.open(os.path.join(self.path, name),
                     os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        return name, fd

    def commit(self, name, fd, env, head_len):
        """Append the control text, fill in the length field, fsync, mark complete."""
        body_end = os.lseek(fd, 0, os.SEEK_END)
        control = qfile.dumps(env)
        os.write(fd, control)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"PSMDROP1 %022d\n" % (body_end - head_len))
        os.fsync(fd)
        os.fchmod(fd, COMPLETE_MODE)
        os.fsync(fd)
        os.close(fd)
        try:
            fsync_dir(self.path)          # when the caller may (root, private instances)
        except PermissionError:
            pass

    def abandon(self, name, fd):
        try:
            os.close(fd)
        except OSError:
            pass
        try:
            os.unlink(os.path.join(self.path, name))
        except OSError:
            pass

    @staticmethod
    def poke(socket_path):
        """Wake the pickup service if one listens (a datagram on its socket); best effort."""
        if not os.path.exists(socket_path):
            return
        try:
            import _socket
            s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
            try:
                s.setblocking(False)
                with short_socket_path(socket_path) as usable:
                    s.sendto(b"W", usable)
            finally:
                s.close()
        except OSError:
            pass

    def names(self):
        try:
            return sorted(n for n in os.listdir(self.path) if not n.startswith("."))
        except FileNotFoundError:
            return []


class short_socket_path:
    """A name for an AF_UNIX socket path that fits the kernel's 108-byte limit: the path
    itself, or /proc/self/fd/N/NAME through an open descriptor of its directory."""

    def __init__(self, path):
        self.path = path
        self.fd = None

    def __enter__(self):
        if len(os.fsencode(self.path)) < 100:
            return self.path
        directory, name = os.path.split(self.path)
        self.fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
        return "/proc/self/fd/%d/%s" % (self.fd, name)

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)


class DropFormatError(ValueError):
    pass


def read_drop(fd, max_size):
    """Parse an opened drop file: returns (Envelope, body_offset, body_length)."""
    st = os.fstat(fd)
    if st.st_size > max_size:
        raise DropFormatError("drop file too large (%d bytes)" % st.st_size)
    head = os.pread(fd, HEAD_FIELD, 0)
    if len(head) != HEAD_FIELD or not head.startswith(b"PSMDROP1 "):
        raise DropFormatError("not a drop file")
    try:
        body_len = int(head[9:31])
    except ValueError:
        raise DropFormatError("bad length field")
    if HEAD_FIELD + body_len > st.st_size:
        raise DropFormatError("truncated drop file")
    control = os.pread(fd, st.st_size - HEAD_FIELD - body_len, HEAD_FIELD + body_len)
    try:
        env = qfile.loads(control)
    except (qfile.FormatError, ValueError, UnicodeDecodeError) as e:
        raise DropFormatError("bad control text: %s" % e)
    return env, HEAD_FIELD, body_len
