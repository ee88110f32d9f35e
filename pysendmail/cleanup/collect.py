"""Reading a message from a file descriptor: headers into memory, body straight to disk.

The header block (bounded by MaxHeadersLength) is parsed into raw header fields;
the body is streamed to the queue's data file in 64 KiB chunks, so a 50 MB message
goes through in bounded memory. Line ends are normalised to LF (CRLF -> LF; PHP
mixes CRLF headers with an LF body); every other body byte, 8-bit and NUL included,
is kept. A bare CR in a header field is dropped (a reader that took it for a line end
would see a forged field). Without -i a line holding only "." ends the message, as in Sendmail.
"""
import os

CHUNK = 65536


class Collected:
    __slots__ = ("headers", "body_size", "eight_bit", "header_overflow", "from_line")

    def __init__(self):
        self.headers = []
        self.body_size = 0
        self.eight_bit = False
        self.header_overflow = False
        self.from_line = None


def is_field_name(name):
    """An RFC 5322 field name: printable ASCII but colon (bytes)."""
    if not name:
        return False
    for b in name:
        if b < 33 or b > 126 or b == 58:
            return False
    return True


class _Input:
    def __init__(self, fd):
        self.fd = fd
        self.buf = b""
        self.eof = False

    def fill(self):
        if self.eof:
            return False
        try:
            data = os.read(self.fd, CHUNK)
        except InterruptedError:
            return True
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def readline(self, limit):
        """One line (with its LF), or a piece of `limit` bytes, or what remains at EOF."""
        while True:
            nl = self.buf.find(b"\n", 0, limit)
            if nl >= 0:
                line, self.buf = self.buf[:nl + 1], self.buf[nl + 1:]
                return line
            if len(self.buf) >= limit or not self.fill():
                line, self.buf = self.buf[:limit], self.buf[limit:]
                return line


def _chomp(line):
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line


def collect(fd, out_fd, ignore_dots=False, max_headers=32768):
    """Read a message from `fd`; write its body to `out_fd`; return a Collected."""
    res = Collected()
    inp = _Input(fd)
    headers = res.headers
    total = 0
    first = True
    pending_body = b""
    while True:
        line = inp.readline(max_headers + 2)
        if not line:
            break
        text = _chomp(line)
        if b"\r" in text:
            text = text.replace(b"\r", b"")      # a bare CR must not split a header field
        if not ignore_dots and text == b".":
            inp.buf = b""
            inp.eof = True
            break
        if first and text.startswith(b"From "):
            res.from_line = text
            first = False
            continue
        first = False
        if text == b"":
            break
        if text[:1] in (b" ", b"\t") and headers:
            if total + len(text) > max_headers:
                res.header_overflow = True
                pending_body = line
                break
            headers[-1] += b"\n" + text
            total += len(text) + 1
            continue
        name, colon, _ = text.partition(b":")
        if colon and is_field_name(name.rstrip(b" \t")) and total + len(text) <= max_headers:
            headers.append(text)
            total += len(text) + 1
            continue
        # Not a header (or the header block is too large): this line starts the body.
        res.header_overflow = bool(colon) and total + len(text) > max_headers
        pending_body = line
        break
    _copy_body(inp, out_fd, pending_body, ignore_dots, res)
    return res


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _copy_body(inp, out_fd, head, ignore_dots, res):
    """Stream the body: CRLF -> LF, stop at a lone "." line unless ignore_dots."""
    pending = head + inp.buf
    inp.buf = b""
    at_line_start = True
    size = 0
    eight = False
    last = b"\n"
    while True:
        if inp.fill():
            pending += inp.buf
            inp.buf = b""
        final = inp.eof
        hold = b""
        if not final:
            tail = pending[pending.rfind(b"\n") + 1:]
            if not ignore_dots and tail in (b".", b".\r") and (len(tail) < len(pending) or at_line_start):
                hold = tail
            elif tail.endswith(b"\r"):
                hold = b"\r"
        data = pending[:len(pending) - len(hold)] if hold else pending
        pending = hold
        data = data.replace(b"\r\n", b"\n")
        end = -1
        if not ignore_dots and data:
            if at_line_start and (data.startswith(b".\n") or (final and data == b".")):
                end = 0
            else:
                pos = data.find(b"\n.\n")
                if pos >= 0:
                    end = pos + 1
                elif final and data.endswith(b"\n."):
                    end = len(data) - 1
        if end >= 0:
            data = data[:end]
            final = True
        if data:
            if not eight:
                eight = not data.isascii()
            _write_all(out_fd, data)
            size += len(data)
            last = data[-1:]
            at_line_start = last == b"\n"
        if final:
            break
    if size and last != b"\n":
        _write_all(out_fd, b"\n")
        size += 1
    res.body_size = size
    res.eight_bit = eight
