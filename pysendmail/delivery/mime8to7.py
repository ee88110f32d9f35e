"""8-bit to 7-bit MIME conversion for a next hop without 8BITMIME (Sendmail's mime8to7).

When the SMTP server does not offer 8BITMIME and the message has 8-bit bytes,
`eight_bit_action` says, as Sendmail's EightBitMode (option 8) does, whether to
convert, send the bytes as they are, or bounce ("5.6.3 ... does not support
8BITMIME"); `convert` then rewrites the message:

  * header fields (list of raw fields, as Envelope.headers, or (name, value)
    pairs) come back as a new list; the body (binary file, LF line ends, seekable)
    is streamed line by line to `out`: memory stays bounded whatever the size;
  * a message without MIME-Version gets "MIME-Version: 1.0" and, without a
    Content-Type, "Content-Type: text/plain; charset=unknown-8bit" (Sendmail's
    defcharset: DefaultCharSet, else RFC 1428's unknown-8bit);
  * multipart/* is walked by boundary (recursively, 20 levels as MAXMIMENESTING;
    preamble and epilogue kept, their 8th bit stripped as Sendmail's
    PXLF_STRIP8BIT does); message/rfc822 is entered once (its header kept, a
    MIME-Version added if it lacks one); multipart/signed (class n), other
    message/* subtypes and parts already encoded (CTE not 7bit/8bit/binary,
    class e) are copied unchanged;
  * each other part is scanned (stopping early once 4096 bytes are read and over
    a quarter of them have the 8th bit): none set -> copied unchanged; more than
    1/8 of the bytes 8-bit, or CTE binary -> base64 (line ends mapped to CRLF,
    lines of 72 characters as Sendmail writes), else quoted-printable;
  * the part's Content-Transfer-Encoding is replaced (moved to the end of its
    header) and followed by "X-MIME-Autoconverted: from 8bit to <cte> by <host>
    id <qid>", Sendmail's exact text.

Quoted-printable per RFC 2045: lines of at most 76 characters (soft breaks "="),
=XX for controls (TAB excepted), DEL, 8-bit bytes and "=", a space or TAB before a
line end encoded, a line that would be a lone "." written "=2E" and a line that
would start "From " written "From=20" (Sendmail does that for F=E mailers only).
Unlike Sendmail, a boundary of an enclosing multipart met inside an unterminated
inner one closes the inner one instead of being taken for its own.
"""

import binascii

MAX_NESTING = 20                  # Sendmail's MAXMIMENESTING
SCAN_EARLY = 4096                 # stop counting 8-bit bytes after this many, if > 1/4
LINE_LIMIT = 65536                # longest piece read at once (longer lines come in pieces)
CHUNK = 1 << 16                   # bytes read at once by the 8-bit check and plain copies
HEADER_LIMIT = 1 << 20            # largest header of a body part kept in memory
BASE64_LINE = 54                  # input bytes per base64 line: 72 characters, as Sendmail
QP_LINE = 76                      # RFC 2045's limit, soft break included

NO_ENCODE_TYPES = ("multipart/signed",)       # class n
MESSAGE_SUBTYPES = ("rfc822",)                # class s
ENCODABLE_CTES = ("7bit", "8bit", "binary")   # class e

_HIGH = bytes(range(128, 256))
_STRIP8 = bytes(list(range(128)) * 2)
_QP_UNSAFE = bytes(c for c in range(256) if c < 32 and c != 9 or c >= 127 or c == 61)
_QP_TABLE = [b"=%02X" % c if c in _QP_UNSAFE else bytes((c,)) for c in range(256)]


class MimeError(Exception):
    """The header or body cannot be processed (a field without a colon, a part's
    header over HEADER_LIMIT, a body that is not a readable seekable file)."""


# -- decisions ---------------------------------------------------------------

def needs_conversion(body):
    """Does the body hold a byte >= 0x80?  Read from the current position in 64 KB
    chunks (bytes.isascii: a few ms for 50 MB); the position is restored.

    env.body_type is no proof either way: "8BITMIME" may stand for 8-bit header
    fields only, and a "-B7BIT" caller may still send 8-bit bytes (Sendmail sets
    EF_HAS8BIT from the bytes it collects)."""
    start = body.tell()
    try:
        while True:
            chunk = body.read(CHUNK)
            if not chunk:
                return False
            if not chunk.isascii():
                return True
    finally:
        body.seek(start)


def is_mime(header, body_type=""):
    """Sendmail's EF_IS_MIME: declared BODY=8BITMIME or a MIME-Version field."""
    return body_type.upper() == "8BITMIME" or _value(_fields(header), "mime-version") is not None


def dont_mime(header, body_type=""):
    """Sendmail's EF_DONT_MIME from the header: not MIME, and a Content-Type of
    RFC 1049 form (no "/" before any ";")."""
    if is_mime(header, body_type):
        return False
    ctype = _value(_fields(header), "content-type")
    if ctype is None:
        return False
    for ch in ctype:
        if ch in ";/":
            return ch == ";"
    return True


def eight_bit_action(mode, header, body_type="", has_8bit=True):
    """What to send to a server without 8BITMIME (usersmtp.c's smtpmailfrom):
    "pass" (as it is), "convert" (run `convert`) or "bounce" (5.6.3).

    mode is EightBitMode: "m" convert any 8-bit message (MIME-ifying plain ones),
    "p" (Sendmail's default) convert MIME messages and pass the others, "s" strict
    (convert; plain 8-bit messages were refused when they came in)."""
    mode = (mode or "p")[:1].lower()
    if mode not in "mps":
        raise ValueError("Unknown 8-bit mode %s" % mode)
    if not has_8bit:
        return "pass"
    mime = is_mime(header, body_type)
    if not dont_mime(header, body_type) and (mode != "p" or mime):
        return "convert"
    return "pass" if mode == "p" else "bounce"


# -- header fields -----------------------------------------------------------

def _fields(header):
    """Input fields -> raw bytes fields b"Name: value" (folded lines LF-joined)."""
    out = []
    for f in header:
        if isinstance(f, (tuple, list)):
            name, value = f
            name = name.encode("latin-1") if isinstance(name, str) else bytes(name)
            value = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
            out.append(name + b": " + value.lstrip(b" "))
        else:
            out.append(bytes(f).rstrip(b"\n"))
    return out


def _like(header, raw):
    """Raw fields back into the form the caller gave (tuples of str/bytes, or raw)."""
    first = header[0] if header else None
    if not isinstance(first, (tuple, list)):
        return raw
    as_str = isinstance(first[0], str)
    out = []
    for f in raw:
        name, _, value = f.partition(b":")
        value = value[1:] if value[:1] == b" " else value
        if as_str:
            out.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))
        else:
            out.append((name, value))
    return out


def _name(field):
    name, colon, _ = field.partition(b":")
    if not colon:
        raise MimeError("header field without a colon: %r" % field[:60])
    return name.strip().lower().decode("latin-1")


def _value(raw_fields, name):
    """The first field called `name`, unfolded, as str; or None."""
    for f in raw_fields:
        if _name(f) == name:
            v = f.partition(b":")[2].replace(b"\r", b"").replace(b"\n", b"")
            return v.strip().decode("latin-1")
    return None


def _strip_comments(text):
    out, depth, quoted, esc = [], 0, False, False
    for ch in text:
        if esc:
            esc = False
            if depth == 0:
                out.append(ch)
            continue
        if ch == "\\":
            esc = True
            if depth == 0:
                out.append(ch)
        elif quoted:
            quoted = ch != '"'
            out.append(ch)
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif depth == 0:
            quoted = ch == '"'
            out.append(ch)
    return "".join(out)


def _split_params(text):
    """"a; b=c; d=\"e;f\"" -> ["a", "b=c", "d=\"e;f\""] (quotes respected)."""
    parts, cur, quoted, esc = [], [], False, False
    for ch in text:
        if esc:
            esc = False
        elif ch == "\\":
            esc = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def _unquote(value):
    """Sendmail's stripquotes: drop '"', a backslash keeps the next character."""
    out, esc = [], False
    for ch in value:
        if esc:
            out.append(ch)
            esc = False
        elif ch == "\\":
            esc = True
        elif ch != '"':
            out.append(ch)
    return "".join(out)


def content_type(value, default="text/plain"):
    """A Content-Type value -> (type, subtype, params) lower-cased, params a dict
    of lower-case names to unquoted values; Sendmail's "-none-" for a missing part."""
    parts = _split_params(_strip_comments(value if value is not None else default))
    ctype, _, sub = parts[0].partition("/")
    params = {}
    for p in parts[1:]:
        name, eq, val = p.partition("=")
        if name.strip() and eq:
            params.setdefault(name.strip().lower(), _unquote(val.strip()))
    return (ctype.strip().lower() or "-none-", sub.strip().lower() or "-none-", params)


def _cte(raw_fields):
    v = _value(raw_fields, "content-transfer-encoding")
    if v is None:
        return None
    v = "".join(_strip_comments(v).split()).lower()
    return v or None


# -- encoders ----------------------------------------------------------------

class _Base64:
    """Base64 of the part's bytes, LF mapped to CRLF (Sendmail's MapNLtoCRLF)."""

    def __init__(self, out, crlf=True):
        self.out, self.crlf, self.buf = out, crlf, b""

    def write(self, data):
        if self.crlf:
            data = data.replace(b"\n", b"\r\n")
        data = self.buf + data
        whole = len(data) - len(data) % BASE64_LINE
        if whole:
            self.out.write(b"".join(binascii.b2a_base64(data[i:i + BASE64_LINE])
                                    for i in range(0, whole, BASE64_LINE)))
        self.buf = data[whole:]

    def close(self, in_multipart):
        self.out.write(binascii.b2a_base64(self.buf))


class _QuotedPrintable:
    """Quoted-printable, streaming: `pending` is the encoded current output line."""

    def __init__(self, out):
        self.out = out
        self.pending = b""        # encoded, not yet written (current output line)
        self.held = b""           # a raw space/TAB that may turn out to end the line

    def write(self, data):
        lines = data.split(b"\n")
        for i, piece in enumerate(lines):
            if i:
                self._end_line()
            if piece:
                self._add(self.held + piece)

    def _add(self, raw):
        self.held = b""
        if raw[-1:] in (b" ", b"\t"):
            self.held, raw = raw[-1:], raw[:-1]
        enc = raw.translate(None, _QP_UNSAFE)
        if len(enc) != len(raw):
            enc = b"".join([_QP_TABLE[c] for c in raw])
        self.pending += enc
        self._wrap(final=False)

    def _wrap(self, final):
        """Write the full output lines of `pending` (all of it when final)."""
        p, off, segs = self.pending, 0, []
        while True:
            if p[off:off + 5] == b"From ":
                p = p[off:off + 4] + b"=20" + p[off + 5:]
                off = 0
            if len(p) - off <= QP_LINE if final else len(p) - off < QP_LINE:
                break
            cut = off + QP_LINE - 1
            if p[cut - 1:cut] == b"=":
                cut -= 1
            elif p[cut - 2:cut - 1] == b"=":
                cut -= 2
            segs.append(p[off:cut] + b"=\n")
            off = cut
        if segs:
            self.out.write(b"".join(segs))
        self.pending = p[off:]

    def _end_line(self):
        if self.held:
            self.pending += b"=%02X" % self.held[0]
            self.held = b""
        self._wrap(final=True)
        line = self.pending
        if line == b".":
            line = b"=2E"
        self.out.write(line + b"\n")
        self.pending = b""

    def close(self, in_multipart):
        if self.pending or self.held or in_multipart:
            self._end_line()


# -- the walk ----------------------------------------------------------------

class _Reader:
    """Pieces of the body: whole lines, or pieces of LINE_LIMIT bytes of longer
    ones; `bol` says whether a piece starts a line (only those can be boundaries)."""

    def __init__(self, fp):
        self.fp = fp
        self.back = None
        self.bol = True

    def next(self):
        if self.back is not None:
            item, self.back = self.back, None
            return item
        piece = self.fp.readline(LINE_LIMIT)
        if not piece:
            return None
        item = (piece, self.bol)
        self.bol = piece[-1:] == b"\n"
        return item

    def push(self, item):
        self.back = item

    def mark(self):
        return (self.fp.tell(), self.back, self.bol)

    def reset(self, mark):
        pos, self.back, self.bol = mark
        self.fp.seek(pos)


class _Walk:
    """One conversion: the body reader, the output, the stack of boundaries."""

    def __init__(self, body, out, host, qid, errors, classes):
        self.reader = _Reader(body)
        self.out = out
        self.host, self.qid = host, qid
        self.errors = errors
        self.no_encode, self.message_subtypes, self.encodable, self.qp_types, \
            self.binary_types = classes
        self.boundaries = []          # bytes, outermost first
        self.too_deep = False

    def error(self, text):
        if self.errors is not None:
            self.errors.append(text)

    def boundary(self, item):
        """(kind, depth) if the piece is a delimiter of a pending boundary, else None;
        kind "intermed" or "final", depth the index in self.boundaries."""
        piece, bol = item
        if not bol or piece[:2] != b"--" or not self.boundaries:
            return None
        line = piece.rstrip(b"\n").rstrip(b" \t\r")[2:]
        for depth in range(len(self.boundaries) - 1, -1, -1):
            b = self.boundaries[depth]
            if line == b:
                return ("intermed", depth)
            if line == b + b"--":
                return ("final", depth)
        return None

    def read_header(self):
        """A body part's header: raw fields up to the empty line (consumed) or up to
        a line that is no field (pushed back: it starts the body)."""
        fields, size = [], 0
        while True:
            item = self.reader.next()
            if item is None:
                return fields
            piece, bol = item
            if piece in (b"\n", b"\r\n") and bol:
                return fields
            if bol and piece[:1] in (b" ", b"\t") and fields:
                fields[-1] += b"\n" + piece.rstrip(b"\r\n")
            elif (bol and self.boundary(item) is None and b":" in piece
                  and piece.split(b":", 1)[0].strip()
                  and b" " not in piece.split(b":", 1)[0].strip()):
                fields.append(piece.rstrip(b"\r\n"))
            elif not bol and fields:
                fields[-1] += piece.rstrip(b"\r\n")
            else:
                self.reader.push(item)
                return fields
            size += len(piece)
            if size > HEADER_LIMIT:
                raise MimeError("a body part's header is over %d bytes" % HEADER_LIMIT)

    def copy_until_boundary(self, strip8=False):
        """Copy pieces as they are up to a delimiter; the delimiter found or None (EOF)."""
        out = self.out
        while True:
            item = self.reader.next()
            if item is None:
                return None
            found = self.boundary(item)
            if found:
                return found
            out.write(item[0].translate(_STRIP8) if strip8 else item[0])

    def entity(self, fields, emit, level, digest=False):
        """Convert one entity whose header `fields` is read; `emit(fields)` writes or
        keeps its header. Returns the delimiter that ended it, or None at EOF."""
        if level > MAX_NESTING and not self.too_deep:
            self.error("mime8to7: recursion level %d exceeded" % level)
            self.too_deep = True
        cte = _cte(fields)
        ct_value = _value(fields, "content-type")
        if ct_value is None:
            ct_value = "message/rfc822" if digest else "text/plain"
        ctype, sub, params = content_type(ct_value)
        full = ctype + "/" + sub
        no8bit = full in self.no_encode or (cte is not None and cte not in self.encodable)
        without_cte = [f for f in fields if _name(f) != "content-transfer-encoding"]

        if ctype == "multipart" and not no8bit and not self.too_deep:
            return self.multipart(without_cte, emit, params, ct_value, level, sub == "digest")
        if ctype == "message":
            if sub in self.message_subtypes and not self.too_deep:
                emit(without_cte)
                inner = self.read_header()
                if _value(inner, "mime-version") is None:
                    inner.append(b"MIME-Version: 1.0")
                return self.entity(inner, self.write_header, level + 1)
            no8bit = True
        return self.leaf(fields, without_cte, emit, cte, full, ctype, no8bit)

    def write_header(self, fields):
        self.out.write(b"".join(f + b"\n" for f in fields) + b"\n")

    def multipart(self, fields, emit, params, ct_value, level, digest):
        bnd = params.get("boundary")
        if not bnd:
            self.error('mime8to7: Content-Type: "%s": %s boundary'
                       % (ct_value, "missing" if "boundary" not in params else "bogus"))
            bnd = "---"
        bnd = bnd.encode("latin-1", "replace")
        if len(bnd) > 127:
            self.error('mime8to7: multipart boundary "%s" too long' % bnd.decode("latin-1"))
            bnd = bnd[:127]
        if len(self.boundaries) >= MAX_NESTING:
            self.error("mime8to7: multipart nesting boundary too deep")
            self.too_deep = True
            return self.leaf(fields, fields, emit, None, "multipart/x", "multipart", True)
        emit(fields)
        depth = len(self.boundaries)
        self.boundaries.append(bnd)
        out = self.out
        try:
            found = self.copy_until_boundary(strip8=True)          # preamble
            while found == ("intermed", depth):
                out.write(b"--" + bnd + b"\n")
                found = self.entity(self.read_header(), self.write_header, level + 1, digest)
            out.write(b"--" + bnd + b"--\n")
            if found == ("final", depth):
                found = self.copy_until_boundary(strip8=True)      # epilogue
        finally:
            self.boundaries.pop()
        return found

    def scan(self):
        """Sendmail's count of bytes and 8-bit bytes up to the next delimiter (with
        its early stop); the reader is put back where it was."""
        mark = self.reader.mark()
        size = high = 0
        while True:
            item = self.reader.next()
            if item is None or self.boundary(item):
                break
            piece = item[0]
            size += len(piece)
            high += len(piece) - len(piece.translate(None, _HIGH))
            if size >= SCAN_EARLY and high > size // 4:
                break
        self.reader.reset(mark)
        return size, high

    def leaf(self, fields, without_cte, emit, cte, full, ctype, no8bit):
        size, high = (0, 0) if no8bit else self.scan()
        if cte == "binary":
            size = high
        if high == 0:
            emit(fields)
            return self.copy_until_boundary()
        crlf = full not in self.binary_types and ctype not in self.binary_types
        qp = full in self.qp_types or ctype in self.qp_types
        name = "base64" if (not crlf or (size // 8 < high and not qp)) else "quoted-printable"
        emit(without_cte + [
            b"Content-Transfer-Encoding: " + name.encode(),
            ("X-MIME-Autoconverted: from 8bit to %s by %s id %s"
             % (name, self.host, self.qid)).encode("utf-8", "surrogateescape")])
        enc = _Base64(self.out, crlf) if name == "base64" else _QuotedPrintable(self.out)
        newline = False           # a line end held back: before a delimiter it is the delimiter's
        while True:
            item = self.reader.next()
            found = None if item is None else self.boundary(item)
            if item is None or found:
                break
            piece = item[0]
            if newline:
                enc.write(b"\n")
            newline = piece[-1:] == b"\n"
            enc.write(piece[:-1] if newline else piece)
        if newline and not found:
            enc.write(b"\n")
        enc.close(bool(self.boundaries))
        return found


def convert(header, body, out, host="localhost", qid="", *, default_charset=None,
            errors=None, no_encode_types=NO_ENCODE_TYPES, message_subtypes=MESSAGE_SUBTYPES,
            encodable_ctes=ENCODABLE_CTES, qp_types=(), binary_types=()):
    """Convert a message to 7 bit as Sendmail's mime8to7 and return its new header.

    header: the message's header fields (raw b"Name: value" fields as in
    Envelope.headers, or (name, value) pairs of str or bytes); the result has the
    same form. body: binary file with LF line ends, read from its current position
    (seekable: parts are scanned before they are encoded). out: binary file the
    new body is written to. host, qid: $j and the queue id for X-MIME-Autoconverted.
    default_charset: DefaultCharSet (None: unknown-8bit). errors: a list receiving
    Sendmail's complaints about broken MIME (the message is still converted).
    The class arguments are Sendmail's classes n, s, e, q and b (lower case).
    A body without 8-bit bytes comes out byte for byte as it was."""
    raw = _fields(header)
    try:
        start = body.tell()
        body.seek(start)
    except (AttributeError, OSError, ValueError) as exc:
        raise MimeError("the body must be a seekable binary file: %s" % exc) from None
    if not needs_conversion(body):
        while True:
            chunk = body.read(CHUNK)
            if not chunk:
                return _like(header, raw)
            out.write(chunk)
    if _value(raw, "mime-version") is None:
        raw.append(b"MIME-Version: 1.0")
    if _value(raw, "content-type") is None:
        raw.append(("Content-Type: text/plain; charset=%s"
                    % (default_charset or "unknown-8bit")).encode("latin-1"))
    classes = tuple(tuple(word.lower() for word in c) for c in (
        no_encode_types, message_subtypes, encodable_ctes, qp_types, binary_types))
    walk = _Walk(body, out, host, qid, errors, classes)
    result = []
    walk.entity(raw, result.extend, 0)
    return _like(header, result)
