"""dead.letter: keep a message nobody could take, in mbox form.

    save_dead_letter(env, body_path, path, now) -> path

Appends the message as Sendmail's file mailer writes it (savemail.c ESM_DEADLETTER,
M*file* with the E flag):

    From SENDER Thu Nov 26 14:45:26 2026
    Return-Path: <SENDER>
    <the message's header fields>

    <the body, with lines starting "From " written ">From ">
    <blank line>

Security stance: the caller runs this with the identity that owns `path` (the
submitting user for ~/dead.letter; root only for the DeadLetterDrop file).
The file is opened O_APPEND|O_NOFOLLOW|O_CREAT with mode 0600 and must be a
regular file with a single link (a symlink or a hard link planted by someone else
is refused with OSError). The append happens under an exclusive flock, is
fsync'ed, and if any write fails the file is cut back to its old length so the
mailbox is never left with half a message. Memory stays bounded: the body is
copied in pieces of at most 64 KB.
"""
import os
import time

from .. import dates

CHUNK = 65536
ctime = dates.ctime


def _envelope_sender(sender):
    """The sender as one token for the From_ line ("MAILER-DAEMON" for <>)."""
    sender = "".join(ch if ord(ch) > 32 and ord(ch) != 127 else "_" for ch in sender.strip())
    return sender or "MAILER-DAEMON"


def _return_path(sender):
    sender = "".join(ch for ch in sender if ord(ch) >= 32 and ord(ch) != 127).strip()
    if sender.startswith("<") and sender.endswith(">"):
        return sender
    return "<%s>" % sender


def message_head(env, now):
    """The From_ line, Return-Path and header block, ending with the blank line."""
    head = ["From %s %s\n" % (_envelope_sender(env.sender), ctime(now)),
            "Return-Path: %s\n" % _return_path(env.sender)]
    data = "".join(head).encode("utf-8", "surrogateescape")
    for h in env.headers:
        if h[:12].lower() == b"return-path:":
            continue
        data += h + b"\n"
    return data + b"\n"


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _copy_body(fd, body_path):
    """Copy the body with mbox "From " escaping; returns the last byte written."""
    last = b"\n"
    at_line_start = True
    with open(body_path, "rb") as f:
        while True:
            # readline(CHUNK) never returns more than CHUNK bytes, and a piece that
            # starts a line holds the whole "From " if the line has one.
            piece = f.readline(CHUNK)
            if not piece:
                break
            if at_line_start and piece.startswith(b"From "):
                piece = b">" + piece
            _write_all(fd, piece)
            last = piece[-1:]
            at_line_start = last == b"\n"
    return last


def save_dead_letter(env, body_path, path, now=None):
    """Append `env`'s message (header from env.headers, body from `body_path`)
    to the mbox file `path`; returns `path`. Raises OSError on any failure,
    leaving the file as it was."""
    import fcntl
    import stat

    if now is None:
        now = time.time()
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
    fd = os.open(path, flags | os.O_NONBLOCK, 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(1, "not a regular file", path)
        if st.st_nlink != 1:
            raise OSError(1, "file has more than one link", path)
        os.set_blocking(fd, True)
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, message_head(env, now))
            last = _copy_body(fd, body_path) if body_path else b"\n"
            _write_all(fd, b"\n" if last == b"\n" else b"\n\n")
            os.fsync(fd)
        except BaseException:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)
    return path
