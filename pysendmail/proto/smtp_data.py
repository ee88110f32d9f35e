"""Message content framing for the SMTP server core: DATA and BDAT.

`MessageReader` holds one transaction's content state (size so far, the reply
owed if the message is refused, where a DATA line stands, how much of a BDAT
chunk is left) and turns the connection's input buffer into events:

    read_data(buf)  -> NEED_DATA | DataChunk | MessageComplete | Rejected
    read_chunk(buf) -> NEED_DATA | DataChunk | BdatChunk | MessageComplete | Rejected

It consumes what it uses from `buf` (a bytearray the connection owns). Rules:

* DATA ends only at <CRLF>.<CRLF>. A bare LF, or a CR not followed by LF, ends
  the session: Rejected("554 5.5.2 Bare linefeed (LF) not allowed", close=True)
  (SMTP smuggling, CVE-2023-51764/5/6). A line's leading dot is removed
  (RFC 5321 4.5.2). A text line over `max_text_line` octets (CRLF included)
  or a message over `max_size` is read to its end, then refused with
  "554 5.6.0 Line too long" / "552 5.2.3 Message exceeds maximum fixed size (N)"
  (Sendmail collect.c's words for the latter).
* BDAT octets are taken as sent (RFC 3030: no dot-stuffing, no line checks:
  a chunk is length-framed, so nothing in it can be smuggled as an end or a
  command); a chunk refused up front (no MAIL, no RCPT) or past max_size is
  still read to its end, then refused.

Speed: DATA input is first taken in bulk (`_bulk`): the complete lines up to the
end marker or the last LF are checked with a few C-level scans (every LF part of
a CRLF, every CR part of one, the longest line) and unstuffed with one replace;
anything unusual (a bare CR or LF, the end marker at the start, little input)
goes to the line-by-line reader below, which alone decides how it is refused. A
100 KB message costs a handful of scans instead of ~1,400 Python iterations.
Pure code.
"""
from . import smtp_events as ev
from .smtp_events import NEED_DATA
from .smtp_reply import Reply

CR, LF, DOT = 0x0D, 0x0A, 0x2E
PARTIAL_LINE = 4096   # with no text-line limit, pass partial lines on past this size


class MessageReader:
    def __init__(self, max_size=0, max_text_line=1000):
        self.max_size = max_size
        self.max_text_line = max_text_line
        self.size = 0
        self.failure = None        # the Reply owed at the end instead of acceptance
        self.chunked = False       # a BDAT chunk has been taken in this transaction
        self._midline = False      # DATA: part of the current line already passed on
        self._line_len = 0
        self._chunk_left = 0
        self._chunk_size = 0
        self._chunk_last = False

    # --- DATA -----------------------------------------------------------------
    def start_data(self):
        self.size = 0
        self.failure = None
        self._midline = False
        self._line_len = 0

    def _bulk(self, buf):
        """The fast path of read_data (see the module docstring); None: use the slow one."""
        last = buf.rfind(b"\n")
        if last < 256 or (not self._midline and buf[:3] == b".\r\n"):
            return None
        stop = buf.find(b"\r\n.\r\n", 0, last + 1)
        cut = stop + 2 if stop >= 0 else last + 1
        blk = bytes(buf[:cut])
        crlf = blk.count(b"\r\n")
        if blk.count(b"\n") != crlf or blk.count(b"\r") != crlf or blk[-2:] != b"\r\n":
            return None
        limit = self.max_text_line or 0
        if limit and self.failure is None and len(blk) + self._line_len > limit:
            lines = blk.split(b"\r\n")
            longest = len(lines[0]) + self._line_len
            if len(lines) > 2:
                longest = max(longest, max(map(len, lines[1:-1])))
            if longest + 2 > limit:
                return None         # the line-by-line reader refuses it, in its order
        if not self._midline and blk[:1] == b".":
            blk = blk[1:]
        if b"\r\n." in blk:
            blk = blk.replace(b"\r\n.", b"\r\n")
        out = bytearray()
        self._take(out, blk)
        self._midline = False
        self._line_len = 0
        del buf[:cut]
        if stop >= 0:
            del buf[:3]                                          # ".\r\n"
            return self._end_of_data(buf, out)
        return ev.DataChunk(bytes(out)) if out else NEED_DATA

    def read_data(self, buf):
        fast = self._bulk(buf)
        if fast is not None:
            return fast
        out = bytearray()
        limit = self.max_text_line or 0
        pos = 0
        while True:
            nl = buf.find(b"\n", pos)
            cr = buf.find(b"\r", pos)
            if 0 <= cr < (nl if nl >= 0 else len(buf)) and cr + 1 < len(buf) and cr + 1 != nl:
                return self._smuggling(buf, "carriage return (CR)")
            if nl < 0:
                break
            if nl == pos or buf[nl - 1] != CR:
                return self._smuggling(buf, "linefeed (LF)")
            start = pos
            if not self._midline:
                if nl - pos == 2 and buf[pos] == DOT:              # ".\r\n"
                    del buf[:nl + 1]
                    return self._end_of_data(buf, out)
                if buf[pos] == DOT:                                 # dot-stuffing
                    start += 1
            self._count_line(nl + 1 - pos, limit)
            self._take(out, buf[start:nl + 1])
            self._midline = False
            self._line_len = 0
            pos = nl + 1
        # An unfinished line: pass on what can be neither an end marker nor half a CRLF.
        rest = len(buf) - pos
        hold = 1 if rest and buf[-1] == CR else 0
        if rest - hold > (limit or PARTIAL_LINE) or (self._midline and rest - hold > 0):
            start = pos + (1 if not self._midline and buf[pos] == DOT else 0)
            self._count_line(len(buf) - hold - pos, limit)
            self._take(out, buf[start:len(buf) - hold])
            self._midline = True
            pos = len(buf) - hold
        del buf[:pos]
        return ev.DataChunk(bytes(out)) if out else NEED_DATA

    def _count_line(self, n, limit):
        self._line_len += n
        if limit and self._line_len > limit and self.failure is None:
            self.failure = Reply(554, "5.6.0", "Line too long")

    def _end_of_data(self, buf, out):
        if out and self.failure is None:
            # hand over the last bytes first; the end is seen again on the next call
            buf[:0] = b".\r\n"
            return ev.DataChunk(bytes(out))
        if self.failure is not None:
            return ev.Rejected(self.failure)
        return ev.MessageComplete(self.size)

    def _smuggling(self, buf, what):
        buf.clear()
        return ev.Rejected(Reply(554, "5.5.2", "Bare %s not allowed" % what), close=True)

    def _take(self, out, piece):
        self.size += len(piece)
        if self.max_size and self.size > self.max_size and self.failure is None:
            self.failure = Reply(552, "5.2.3", "Message exceeds maximum fixed size (%d)"
                                 % self.max_size)
        if self.failure is None:
            out += piece

    # --- BDAT -------------------------------------------------------------------
    def start_chunk(self, size, last, refusal=None):
        """A BDAT command: `size` octets follow; `refusal` is a Reply if the
        command itself is refused (its octets are read anyway)."""
        self._chunk_left = self._chunk_size = size
        self._chunk_last = last
        if refusal is not None and self.failure is None:
            self.failure = refusal
        self.chunked = True

    def read_chunk(self, buf):
        if self._chunk_left:
            if not buf:
                return NEED_DATA
            n = min(self._chunk_left, len(buf))
            piece = bytes(buf[:n])
            del buf[:n]
            self._chunk_left -= n
            out = bytearray()
            self._take(out, piece)
            if out:
                return ev.DataChunk(bytes(out))
            if self._chunk_left:
                return NEED_DATA
        if self.failure is not None:
            return ev.Rejected(self.failure)
        if self._chunk_last:
            return ev.MessageComplete(self.size, chunked=True)
        return ev.BdatChunk(self._chunk_size)
