"""Sans-I/O codec of Sendmail's milter protocol, version 6 (the MTA side).

Role: turn MTA commands into bytes and the milter's bytes into small response objects.
No sockets, no clock, no asyncio: `pysendmail.milter.client` does the I/O.

Wire format (libmilter's mfdef.h): every packet is a 4-byte big-endian length, then one
command byte, then length-1 bytes of data.  Integers inside packets are 32-bit big-endian
(16-bit for the port of SMFIC_CONNECT).  Strings are NUL-terminated.

Peer input never raises: `ResponseReader.feed()` yields response objects or one
`ProtocolError` (after which the reader stays broken), and `negotiate()` returns a
`Negotiated` or a `ProtocolError`.
"""

SMFI_PROT_VERSION = 6          # the version we speak
MILTER_LEN_BYTES = 4
MILTER_CHUNK_SIZE = 65535      # default body chunk size
MDS_64K = 64 * 1024 - 1
MDS_256K = 256 * 1024 - 1
MDS_1M = 1024 * 1024 - 1
MAX_PACKET = MDS_1M + 1 + 64   # the largest response packet we take (length field value)

# address families of SMFIC_CONNECT
SMFIA_UNKNOWN, SMFIA_UNIX, SMFIA_INET, SMFIA_INET6 = b"U", b"L", b"4", b"6"

# actions the milter may take (SMFIF_*)
SMFIF_ADDHDRS, SMFIF_CHGBODY, SMFIF_ADDRCPT, SMFIF_DELRCPT = 0x001, 0x002, 0x004, 0x008
SMFIF_CHGHDRS, SMFIF_QUARANTINE, SMFIF_CHGFROM, SMFIF_ADDRCPT_PAR = 0x010, 0x020, 0x040, 0x080
SMFIF_SETSYMLIST = 0x100
SMFI_CURR_ACTS = 0x1FF

# protocol steps (SMFIP_*): NO* = do not send the step, NR_* = the milter does not reply
SMFIP_NOCONNECT, SMFIP_NOHELO, SMFIP_NOMAIL, SMFIP_NORCPT = 0x01, 0x02, 0x04, 0x08
SMFIP_NOBODY, SMFIP_NOHDRS, SMFIP_NOEOH, SMFIP_NR_HDR = 0x10, 0x20, 0x40, 0x80
SMFIP_NOUNKNOWN, SMFIP_NODATA, SMFIP_SKIP, SMFIP_RCPT_REJ = 0x100, 0x200, 0x400, 0x800
SMFIP_NR_CONN, SMFIP_NR_HELO, SMFIP_NR_MAIL, SMFIP_NR_RCPT = 0x1000, 0x2000, 0x4000, 0x8000
SMFIP_NR_DATA, SMFIP_NR_UNKN, SMFIP_NR_EOH, SMFIP_NR_BODY = 0x10000, 0x20000, 0x40000, 0x80000
SMFIP_HDR_LEADSPC, SMFIP_MDS_256K, SMFIP_MDS_1M = 0x100000, 0x10000000, 0x20000000
SMFI_CURR_PROT = 0x001FFFFF
SMFI_INTERNAL = 0x70000000

# macro stages of SETSYMLIST (SMFIM_*), and the command byte whose D packet carries them
SMFIM_CONNECT, SMFIM_HELO, SMFIM_ENVFROM, SMFIM_ENVRCPT, SMFIM_DATA, SMFIM_EOM, SMFIM_EOH = range(7)
STAGE_NAMES = ("connect", "helo", "envfrom", "envrcpt", "data", "eom", "eoh")
STAGE_COMMANDS = (b"C", b"H", b"M", b"R", b"T", b"E", b"N")

# per command: (flag that skips it, flag that says the milter sends no reply)
STAGE_FLAGS = {
    b"C": (SMFIP_NOCONNECT, SMFIP_NR_CONN), b"H": (SMFIP_NOHELO, SMFIP_NR_HELO),
    b"M": (SMFIP_NOMAIL, SMFIP_NR_MAIL), b"R": (SMFIP_NORCPT, SMFIP_NR_RCPT),
    b"T": (SMFIP_NODATA, SMFIP_NR_DATA), b"L": (SMFIP_NOHDRS, SMFIP_NR_HDR),
    b"N": (SMFIP_NOEOH, SMFIP_NR_EOH), b"B": (SMFIP_NOBODY, SMFIP_NR_BODY),
    b"U": (SMFIP_NOUNKNOWN, SMFIP_NR_UNKN),
}


def _u32(n):
    return (n & 0xFFFFFFFF).to_bytes(4, "big")


def _b(s):
    return s if isinstance(s, bytes) else str(s).encode("utf-8", "surrogateescape")


def _s(b):
    return b.decode("utf-8", "surrogateescape")


def _z(s):
    """A NUL-terminated string (a NUL inside would cut it: it is refused)."""
    b = _b(s)
    if b"\0" in b:
        raise ValueError("NUL inside a milter string: %r" % (b,))
    return b + b"\0"


def packet(code, data=b""):
    """One packet: length (command byte + data), command byte, data."""
    return _u32(len(data) + 1) + code + data


class _Msg:
    """Base of commands and responses: fields are the (nearest) __slots__, set in order by
    __init__ (missing trailing ones from DEFAULTS); equality and repr from them."""
    __slots__ = ()
    CODE = b""
    DEFAULTS = ()
    MODIFICATION = False           # an end-of-message action that edits the message

    def __init__(self, *args):
        names = self.__slots__
        if len(args) > len(names) or len(args) + len(self.DEFAULTS) < len(names):
            raise TypeError("%s takes %s" % (type(self).__name__, names))
        if len(args) < len(names):
            args += self.DEFAULTS[len(args) - len(names):]
        for n, v in zip(names, args):
            object.__setattr__(self, n, v)

    def _fields(self):
        return tuple(getattr(self, n) for n in self.__slots__)

    def __eq__(self, other):
        return type(other) is type(self) and other._fields() == self._fields()

    def __hash__(self):
        return hash((type(self), self._fields()))

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__,
                           ", ".join("%s=%r" % (n, getattr(self, n)) for n in self.__slots__))


# ---------------------------------------------------------------- commands (MTA -> milter)

class Command(_Msg):
    """Base of the MTA's commands: encode() gives the packet."""
    __slots__ = ()

    def payload(self):
        return b""

    def encode(self):
        return packet(self.CODE, self.payload())


class OptNeg(Command):
    """SMFIC_OPTNEG 'O': version, actions, protocol flags; the milter's reply adds
    macros {SMFIM_*: names} (SMFIR_SETSYMLIST's lists)."""
    __slots__ = ("version", "actions", "protocol", "macros")
    CODE = b"O"
    DEFAULTS = (SMFI_PROT_VERSION, SMFI_CURR_ACTS, SMFI_CURR_PROT, {})

    def payload(self):
        out = _u32(self.version) + _u32(self.actions) + _u32(self.protocol)
        for stage in sorted(self.macros):
            out += _u32(stage) + _z(" ".join(self.macros[stage]))
        return out


class Connect(Command):
    """SMFIC_CONNECT 'C': hostname, family ('4', '6', 'L', 'U'), port, address."""
    __slots__ = ("hostname", "family", "port", "address")
    CODE = b"C"
    DEFAULTS = (SMFIA_UNKNOWN, 0, "")

    def payload(self):
        out = _z(self.hostname) + self.family
        if self.family != SMFIA_UNKNOWN:
            out += (self.port & 0xFFFF).to_bytes(2, "big") + _z(self.address)
        return out


class Helo(Command):
    """SMFIC_HELO 'H': the HELO/EHLO argument."""
    __slots__ = ("name",)
    CODE = b"H"

    def payload(self):
        return _z(self.name)


class Mail(Command):
    """SMFIC_MAIL 'M': args = (sender with <>, ESMTP arguments...)."""
    __slots__ = ("args",)
    CODE = b"M"

    def payload(self):
        return b"".join(_z(a) for a in self.args)


class Rcpt(Mail):
    """SMFIC_RCPT 'R': args = (recipient with <>, ESMTP arguments...)."""
    CODE = b"R"


class Macro(Command):
    """SMFIC_MACRO 'D': the command byte the macros belong to, then (name, value) pairs."""
    __slots__ = ("command", "pairs")
    CODE = b"D"

    def payload(self):
        return self.command + b"".join(_z(n) + _z(v) for n, v in self.pairs)


class Header(Command):
    """SMFIC_HEADER 'L': name, value."""
    __slots__ = ("name", "value")
    CODE = b"L"

    def payload(self):
        return _z(self.name) + _z(self.value)


class Body(Command):
    """SMFIC_BODY 'B': one body chunk (CRLF line ends)."""
    __slots__ = ("chunk",)
    CODE = b"B"

    def payload(self):
        return bytes(self.chunk)


class EndOfMessage(Body):
    """SMFIC_BODYEOB 'E' (may carry a last chunk; Sendmail sends none)."""
    CODE = b"E"
    DEFAULTS = (b"",)


class Unknown(Command):
    """SMFIC_UNKNOWN 'U': an SMTP command line the MTA does not know."""
    __slots__ = ("line",)
    CODE = b"U"

    def payload(self):
        return _z(self.line)


class Data(Command):
    """SMFIC_DATA 'T'."""
    CODE = b"T"


class EndOfHeaders(Command):
    """SMFIC_EOH 'N'."""
    CODE = b"N"


class Abort(Command):
    """SMFIC_ABORT 'A': forget the current message (the connection stays)."""
    CODE = b"A"


class Quit(Command):
    """SMFIC_QUIT 'Q': end of the connection."""
    CODE = b"Q"


class QuitNewConnection(Command):
    """SMFIC_QUIT_NC 'K': end of this SMTP session; another one follows on this socket."""
    CODE = b"K"


# ---------------------------------------------------------------- responses (milter -> MTA)

class Response(_Msg):
    """Base of the milter's responses."""
    __slots__ = ()


class Modification(Response):
    """Base of the end-of-message actions that edit the message or its envelope."""
    __slots__ = ()
    MODIFICATION = True


def _plain(name, code, doc):
    return type(name, (Response,), {"__doc__": doc, "__slots__": (), "CODE": code,
                                    "__module__": __name__})


Accept = _plain("Accept", b"a", "SMFIR_ACCEPT 'a': accept; nothing more for this message "
                "(at connect/helo: for this connection).")
Continue = _plain("Continue", b"c", "SMFIR_CONTINUE 'c'.")
Discard = _plain("Discard", b"d", "SMFIR_DISCARD 'd': accept the message, then drop it.")
Reject = _plain("Reject", b"r", "SMFIR_REJECT 'r': 5xx.")
Tempfail = _plain("Tempfail", b"t", "SMFIR_TEMPFAIL 't': 4xx.")
Skip = _plain("Skip", b"s", "SMFIR_SKIP 's': send no more body chunks.")
Progress = _plain("Progress", b"p", "SMFIR_PROGRESS 'p': still working (restarts the read timer).")
ConnFail = _plain("ConnFail", b"f", "SMFIR_CONN_FAIL 'f': cause a connection failure (bogus "
                  "from a milter, as Sendmail says).")
Shutdown = _plain("Shutdown", b"4", "SMFIR_SHUTDOWN '4': 421 (internal to Sendmail; bogus "
                  "from a milter).")


class ReplyCode(Response):
    """SMFIR_REPLYCODE 'y': a full SMTP reply, maybe multi-line ("550-5.7.1 a\\r\\n550 5.7.1 b")."""
    __slots__ = ("text",)
    CODE = b"y"

    @property
    def valid(self):
        """Sendmail's check: 3 digits starting with 4 or 5, no lone '%'."""
        t = self.text
        if len(t) < 3 or t[0] not in "45" or not t[1:3].isdigit() or not t[1:3].isascii():
            return False
        return "%" not in t.replace("%%", "")

    @property
    def code(self):
        return int(self.text[:3]) if self.valid else 0

    def lines(self):
        """The reply's lines without the code and separator ('%%' read as '%')."""
        return [line[4:].replace("%%", "%") if line[:3].isdigit() else line
                for line in self.text.replace("\r\n", "\n").split("\n") if line]


class Quarantine(Response):
    """SMFIR_QUARANTINE 'q': hold the message in the queue, with this reason."""
    __slots__ = ("reason",)
    CODE = b"q"


class AddHeader(Modification):
    """SMFIR_ADDHEADER 'h': append a header."""
    __slots__ = ("name", "value")
    CODE = b"h"


class InsHeader(Modification):
    """SMFIR_INSHEADER 'i': insert a header at index (0 = first)."""
    __slots__ = ("index", "name", "value")
    CODE = b"i"


class ChgHeader(Modification):
    """SMFIR_CHGHEADER 'm': change the index-th (1-based, per name) header; '' deletes it."""
    __slots__ = ("index", "name", "value")
    CODE = b"m"

    @property
    def delete(self):
        return self.value == ""


class AddRcpt(Modification):
    """SMFIR_ADDRCPT '+': add a recipient."""
    __slots__ = ("rcpt",)
    CODE = b"+"


class AddRcptPar(Modification):
    """SMFIR_ADDRCPT_PAR '2': add a recipient with ESMTP arguments."""
    __slots__ = ("rcpt", "args")
    CODE = b"2"
    DEFAULTS = ((),)


class DelRcpt(Modification):
    """SMFIR_DELRCPT '-': remove a recipient."""
    __slots__ = ("rcpt",)
    CODE = b"-"


class ChgFrom(Modification):
    """SMFIR_CHGFROM 'e': change the envelope sender (with ESMTP arguments)."""
    __slots__ = ("sender", "args")
    CODE = b"e"
    DEFAULTS = ((),)


class ReplBody(Modification):
    """SMFIR_REPLBODY 'b': a chunk of the new body (the chunks of one EOM are joined)."""
    __slots__ = ("chunk",)
    CODE = b"b"


class ProtocolError(_Msg):
    """Not a response: the milter broke the protocol (why: text for the log).  Falsy."""
    __slots__ = ("why",)

    def __bool__(self):
        return False


def _strings(data, count, what):
    """Exactly `count` NUL-terminated strings filling data, or a ProtocolError."""
    parts = data.split(b"\0")
    if len(parts) != count + 1 or parts[-1] != b"":
        return ProtocolError("%s: want %d NUL-terminated strings" % (what, count))
    return [_s(p) for p in parts[:-1]]


def _argv(data, what):
    if not data.endswith(b"\0") or data.startswith(b"\0"):
        return ProtocolError("%s: malformed argument list" % what)
    return [_s(p) for p in data[:-1].split(b"\0")]


def _indexed(cls, data):
    if len(data) < 4:
        return ProtocolError("%s: too short" % cls.__name__)
    parts = _strings(data[4:], 2, cls.__name__)
    if not parts:
        return parts
    if not parts[0]:
        return ProtocolError("%s: empty header name" % cls.__name__)
    return cls(int.from_bytes(data[:4], "big"), parts[0], parts[1])


_PLAIN = {c.CODE: c for c in (Accept, Continue, Discard, Reject, Tempfail, Skip, Progress,
                               ConnFail, Shutdown)}


def decode_response(code, data):
    """The response object for one packet, or a ProtocolError.  Plain replies take no data
    (libmilter sends none; trailing data is tolerated as Sendmail does)."""
    if code in _PLAIN:
        return _PLAIN[code]()
    if code == b"O":
        return decode_optneg(data)
    if code in (b"y", b"q"):
        if not data.endswith(b"\0") or b"\0" in data[:-1]:
            return ProtocolError("%r: want one NUL-terminated string" % code)
        return ReplyCode(_s(data[:-1])) if code == b"y" else Quarantine(_s(data[:-1]))
    if code == b"h":
        parts = _strings(data, 2, "AddHeader")
        if parts and not parts[0]:
            return ProtocolError("AddHeader: empty header name")
        return AddHeader(*parts) if parts else parts
    if code == b"i":
        return _indexed(InsHeader, data)
    if code == b"m":
        return _indexed(ChgHeader, data)
    if code in (b"+", b"-"):
        parts = _strings(data, 1, "rcpt")
        if parts and not parts[0]:
            return ProtocolError("%r: empty address" % code)
        return ((AddRcpt if code == b"+" else DelRcpt)(parts[0])) if parts else parts
    if code in (b"2", b"e"):
        argv = _argv(data, "AddRcptPar" if code == b"2" else "ChgFrom")
        if not argv:
            return argv
        return (AddRcptPar if code == b"2" else ChgFrom)(argv[0], tuple(" ".join(argv[1:]).split()))
    if code == b"b":
        return ReplBody(data)
    return ProtocolError("unknown response %r" % code)


def decode_optneg(data):
    """The milter's SMFIC_OPTNEG reply: OptNeg(version, actions, protocol, macros)."""
    if len(data) < 12:
        return ProtocolError("option negotiation reply too short (%d bytes)" % len(data))
    version, actions, protocol = (int.from_bytes(data[i:i + 4], "big") for i in (0, 4, 8))
    macros, off = {}, 12
    while off < len(data):
        if off + 4 >= len(data):
            return ProtocolError("symbol list truncated")
        stage = int.from_bytes(data[off:off + 4], "big")
        end = data.find(b"\0", off + 4)
        if stage > SMFIM_EOH or end < 0 or end == off + 4:
            return ProtocolError("bad symbol list for stage %d" % stage)
        macros[stage] = tuple(_s(data[off + 4:end]).replace(",", " ").split())
        off = end + 1
    return OptNeg(version, actions, protocol, macros)


_COMMANDS_NO_DATA = {c.CODE: c for c in (Data, EndOfHeaders, Abort, Quit, QuitNewConnection)}


def decode_command(code, data):
    """The command object of one packet (the milter's side; tests and fakes use it)."""
    if code in _COMMANDS_NO_DATA:
        return _COMMANDS_NO_DATA[code]() if not data else ProtocolError("data after %r" % code)
    if code == b"O":
        return decode_optneg(data)
    if code == b"C":
        host, sep, rest = data.partition(b"\0")
        if not sep or not rest:
            return ProtocolError("connect: malformed")
        family = rest[:1]
        if family == SMFIA_UNKNOWN:
            return Connect(_s(host), family) if len(rest) == 1 else ProtocolError("connect")
        if len(rest) < 4 or not rest.endswith(b"\0") or b"\0" in rest[3:-1]:
            return ProtocolError("connect: malformed address")
        return Connect(_s(host), family, int.from_bytes(rest[1:3], "big"), _s(rest[3:-1]))
    if code in (b"H", b"U"):
        parts = _strings(data, 1, "helo/unknown")
        return ((Helo if code == b"H" else Unknown)(parts[0])) if parts else parts
    if code in (b"M", b"R"):
        argv = _argv(data, "mail/rcpt")
        return ((Mail if code == b"M" else Rcpt)(tuple(argv))) if argv else argv
    if code == b"D":
        if not data:
            return ProtocolError("macro: empty")
        rest = data[1:]
        parts = rest.split(b"\0")[:-1] if rest else []
        if (rest and not rest.endswith(b"\0")) or len(parts) % 2:
            return ProtocolError("macro: odd name/value list")
        return Macro(data[:1], [(_s(parts[i]), _s(parts[i + 1])) for i in range(0, len(parts), 2)])
    if code == b"L":
        parts = _strings(data, 2, "header")
        return Header(*parts) if parts else parts
    if code == b"B":
        return Body(data)
    if code == b"E":
        return EndOfMessage(data)
    return ProtocolError("unknown command %r" % code)


class PacketReader:
    """Frames a byte stream: feed(bytes) -> [(code, data), ...] or a ProtocolError at the end.
    A length of 0 or above max_packet is an error as soon as its 4 bytes are in."""

    def __init__(self, max_packet=MAX_PACKET, decode=None):
        self.max_packet, self.buf = max_packet, bytearray()
        self.error = None
        self._decode = decode

    def feed(self, data):
        if self.error is not None:
            return []
        self.buf += data
        out = []
        while len(self.buf) >= 4:
            n = int.from_bytes(self.buf[:4], "big")
            if n < 1 or n > self.max_packet:
                self.error = ProtocolError("packet length %d out of range (1..%d)"
                                           % (n, self.max_packet))
                out.append(self.error)
                self.buf.clear()
                return out
            if len(self.buf) < 4 + n:
                break
            code, data = bytes(self.buf[4:5]), bytes(self.buf[5:4 + n])
            del self.buf[:4 + n]
            item = self._decode(code, data) if self._decode else (code, data)
            out.append(item)
            if isinstance(item, ProtocolError):
                self.error = item
                self.buf.clear()
                break
        return out

    @property
    def pending(self):
        return bool(self.buf)          # an incomplete packet is waiting


class ResponseReader(PacketReader):
    """The MTA's reader: feed(bytes) -> response objects (a ProtocolError ends the stream)."""

    def __init__(self, max_packet=MAX_PACKET):
        super().__init__(max_packet, decode_response)


def command_reader(max_packet=MAX_PACKET):
    """The milter's reader (for tests and fake milters): feed(bytes) -> command objects."""
    return PacketReader(max_packet, decode_command)


# ---------------------------------------------------------------- negotiation

class Negotiated(_Msg):
    """The outcome of option negotiation with one milter: its version, actions and protocol
    flags, data_size (the largest body chunk to send), macros {SMFIM_*: names} it asked for."""
    __slots__ = ("version", "actions", "protocol", "data_size", "macros")

    def skips(self, code):
        """The milter asked not to get this command (SMFIP_NO*)."""
        flags = STAGE_FLAGS.get(code)
        return bool(flags and self.protocol & flags[0])

    def no_reply(self, code):
        """The milter sends no reply to this command (SMFIP_NR_*)."""
        flags = STAGE_FLAGS.get(code)
        return bool(flags and self.protocol & flags[1])


def offer(actions=SMFI_CURR_ACTS, protocol=SMFI_CURR_PROT, data_size=MDS_64K):
    """The MTA's SMFIC_OPTNEG (the MDS bit says which data size we would take)."""
    if data_size >= MDS_1M:
        protocol |= SMFIP_MDS_1M
    elif data_size >= MDS_256K:
        protocol |= SMFIP_MDS_256K
    return OptNeg(SMFI_PROT_VERSION, actions, protocol)


def negotiate(offered, reply):
    """Check the milter's reply against our offer (Sendmail's rules): its actions and steps
    must be a subset of ours; versions 2..6 are taken.  Returns Negotiated or ProtocolError."""
    if isinstance(reply, ProtocolError):
        return reply
    if not isinstance(reply, OptNeg):
        return ProtocolError("negotiate: answered %r instead of 'O'" % (reply.CODE,))
    if reply.version < 2 or reply.version > SMFI_PROT_VERSION:
        return ProtocolError("negotiate: milter version %d not in 2..%d"
                             % (reply.version, SMFI_PROT_VERSION))
    if reply.actions & ~offered.actions:
        return ProtocolError("negotiate: milter actions %#x exceed ours %#x"
                             % (reply.actions, offered.actions))
    size = MDS_64K
    if reply.protocol & SMFIP_MDS_1M and offered.protocol & SMFIP_MDS_1M:
        size = MDS_1M
    elif reply.protocol & SMFIP_MDS_256K and offered.protocol & (SMFIP_MDS_256K | SMFIP_MDS_1M):
        size = MDS_256K
    protocol = reply.protocol & ~SMFI_INTERNAL
    if protocol & ~(offered.protocol & ~SMFI_INTERNAL):
        return ProtocolError("negotiate: milter protocol %#x exceeds ours %#x"
                             % (protocol, offered.protocol))
    if reply.version <= 2:
        protocol |= SMFIP_NOUNKNOWN
    if reply.version <= 3:
        protocol |= SMFIP_NODATA
    macros = dict(reply.macros)
    if macros and not offered.actions & SMFIF_SETSYMLIST:
        macros = {}
    return Negotiated(reply.version, reply.actions, protocol, size, macros)
