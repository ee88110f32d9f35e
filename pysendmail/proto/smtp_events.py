"""Events of the SMTP server core: what the client did, as values.

`SMTPServerConnection.next_event()` returns one of these (or NEED_DATA). An
event whose class has `needs_reply = True` is a command waiting for the
driver's answer: the driver passes a Reply to `conn.send()` before asking for
the next event. `DataChunk` and `ConnectionClosed` need none.

`Rejected` is the core answering for itself: the client broke syntax or order
(its fault), and the event carries the reply to send (h11's "whose fault"
lesson). `close=True` means the connection ends after that reply (bare LF in
DATA, a 421). `LocalProtocolError` is the driver's fault, a bug: it is raised.
"""


class LocalProtocolError(Exception):
    """The driver misused the core (e.g. next_event() with a reply still owed)."""


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")


class Event:
    __slots__ = ()
    needs_reply = True

    def _fields(self):
        return {k: getattr(self, k) for k in self.__slots__}

    def __eq__(self, other):
        return type(self) is type(other) and self._fields() == other._fields()

    def __repr__(self):
        inner = ", ".join("%s=%r" % kv for kv in self._fields().items())
        return "%s(%s)" % (type(self).__name__, inner)


class Greeting(Event):
    """The connection opened: the driver sends its 220 banner (or 421/554)."""
    __slots__ = ()


class Helo(Event):
    """HELO or EHLO (`esmtp` True). Answer 250; for EHLO list conn.ehlo_keywords()."""
    __slots__ = ("name", "esmtp")

    def __init__(self, name, esmtp):
        self.name = name
        self.esmtp = esmtp


class MailFrom(Event):
    """MAIL FROM. `addr` the bare path ("" = null sender), `raw` as written, `params` decoded."""
    __slots__ = ("addr", "params", "raw")

    def __init__(self, addr, params, raw):
        self.addr = addr
        self.params = params
        self.raw = raw


class RcptTo(Event):
    """RCPT TO, as MailFrom."""
    __slots__ = ("addr", "params", "raw")

    def __init__(self, addr, params, raw):
        self.addr = addr
        self.params = params
        self.raw = raw


class DataStart(Event):
    """DATA with a sender and a recipient: answer 354 to receive the message."""
    __slots__ = ()


class DataChunk(Event):
    """Message bytes (DATA: dot-unstuffed, CRLF line ends; BDAT: as sent)."""
    __slots__ = ("data",)
    needs_reply = False

    def __init__(self, data):
        self.data = data


class BdatChunk(Event):
    """A BDAT chunk (not the LAST) has been received in full: answer 250."""
    __slots__ = ("size",)

    def __init__(self, size):
        self.size = size


class MessageComplete(Event):
    """End of the message (<CRLF>.<CRLF> or BDAT LAST): answer 250 QID, 4xx or 5xx."""
    __slots__ = ("size", "chunked")

    def __init__(self, size, chunked=False):
        self.size = size
        self.chunked = chunked


class Rset(Event):
    __slots__ = ()


class Noop(Event):
    __slots__ = ()


class Quit(Event):
    __slots__ = ()


class Vrfy(Event):
    __slots__ = ("arg",)

    def __init__(self, arg):
        self.arg = arg


class Expn(Event):
    __slots__ = ("arg",)

    def __init__(self, arg):
        self.arg = arg


class Help(Event):
    __slots__ = ("topic",)

    def __init__(self, topic):
        self.topic = topic


class StartTls(Event):
    """STARTTLS: answer 220, do the handshake, then call conn.tls_started()."""
    __slots__ = ()


class Auth(Event):
    """AUTH. `initial` is the decoded initial response (bytes) or None.
    Answer 334 (challenge), 235 (done) or a 4xx/5xx."""
    __slots__ = ("mechanism", "initial")

    def __init__(self, mechanism, initial):
        self.mechanism = mechanism
        self.initial = initial


class AuthResponse(Event):
    """The client's (base64-decoded) answer to a 334 challenge."""
    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data


class Rejected(Event):
    """The core refuses a command or message; send `reply` as it is. `unknown`: the
    command line, when the command is one the server does not know."""
    __slots__ = ("reply", "close", "unknown")

    def __init__(self, reply, close=False, unknown=None):
        self.reply = reply
        self.close = close
        self.unknown = unknown


class ConnectionClosed(Event):
    """End of input (or the session is over): no reply."""
    __slots__ = ()
    needs_reply = False
