"""asyncio client of one milter (Sendmail's milter protocol v6, the MTA side).

Role: one `MilterClient` per milter per SMTP session.  It connects to the socket of an X
line's S= (`inet:port@host`, `inet6:port@host`, `unix:/path`, `local:/path`), negotiates,
then sends each SMTP stage with the macros of that stage and returns the milter's verdict
as a `Result`.  The connection is an asyncio Protocol (`_Wire`), not streams: each stage
is one write and one awaited answer, and streams cost a task per wait (measured: a third
of the client's CPU per message).  The connection is reused for every message of the session: ABORT ends an
unfinished message, QUIT (or QUIT_NC) the session.  The bytes are `proto.milter_codec`'s.

Failures never escape as exceptions: a milter that is down, slow (T= timeouts C:, S:, R:,
E:), answers garbage or closes mid-message gives a Result with action FAILED (and `error`,
a text for the log); the client is then in error state and answers FAILED to every later
call, so the caller applies the X line's F=R (reject), F=T (tempfail) or neither (carry on
without this milter).  Security stance: the milter is a peer we do not trust for sizes
(packets over the codec's maximum are refused) nor for well-formed data.
"""
import asyncio

from ..proto import milter_codec as mc

# ---------------------------------------------------------------- X line facts

# Sendmail's cf defaults (cfhead.m4) for O Milter.macros.<stage>
DEFAULT_MACROS = {
    "connect": ("j", "_", "{daemon_name}", "{if_name}", "{if_addr}"),
    "helo": ("{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}"),
    "envfrom": ("i", "{auth_type}", "{auth_authen}", "{auth_ssf}", "{auth_author}",
                "{mail_mailer}", "{mail_host}", "{mail_addr}"),
    "envrcpt": ("{rcpt_mailer}", "{rcpt_host}", "{rcpt_addr}"),
    "data": (), "eoh": (),
    "eom": ("{msg_id}",),
}

def parse_socket_spec(spec):
    """S= of an X line: ('inet', host, port) | ('inet6', host, port) | ('unix', path, None),
    or None when malformed.  'local:' is 'unix:'; host defaults to localhost."""
    kind, sep, rest = spec.strip().partition(":")
    kind = kind.lower()
    if not sep or not rest:
        return None
    if kind in ("unix", "local"):
        return ("unix", rest, None) if rest.startswith("/") else None
    if kind in ("inet", "inet6"):
        port, _, host = rest.partition("@")
        if not port.isdigit() or not 0 < int(port) < 65536:
            return None
        host = host.strip("[]") or ("127.0.0.1" if kind == "inet" else "::1")
        return (kind, host, int(port))
    return None


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DEFAULT_TIMEOUTS = {"C": 300.0, "S": 10.0, "R": 10.0, "E": 300.0}


def parse_time(text, unit="s"):
    """Sendmail's convtime: '5m', '1h30m', '10' (seconds); None when malformed."""
    text = text.strip().lower()
    if text == "now":
        return 0.0
    total, num = 0, ""
    for ch in text:
        if ch.isdigit():
            num += ch
        elif ch in _UNITS and num:
            total, num = total + int(num) * _UNITS[ch], ""
        else:
            return None
    if num:
        total += int(num) * _UNITS[unit]
    return float(total) if text else None


def parse_timeouts(spec):
    """T= of an X line ('C:5m;S:10s;R:10s;E:5m'): dict with keys C, S, R, E (seconds; 0 = none),
    Sendmail's defaults filled in; None when malformed."""
    out = dict(DEFAULT_TIMEOUTS)
    for field in spec.split(";"):
        field = field.strip()
        if not field:
            continue
        key, sep, value = field.partition(":")
        key = key.strip().upper()
        t = parse_time(value) if sep else None
        if key not in out or t is None:
            return None
        out[key] = t
    return out


# ---------------------------------------------------------------- results

CONTINUE, ACCEPT, REJECT, TEMPFAIL = "continue", "accept", "reject", "tempfail"
DISCARD, REPLY, SKIP, FAILED = "discard", "reply", "skip", "failed"

_VERDICTS = {mc.Continue: CONTINUE, mc.Accept: ACCEPT, mc.Reject: REJECT,
             mc.Tempfail: TEMPFAIL, mc.Discard: DISCARD, mc.ReplyCode: REPLY, mc.Skip: SKIP}

# Sendmail's replacement for a malformed SMFIR_REPLYCODE, per stage
_DEFAULT_REPLY = {b"C": "554 Command rejected", b"H": "550 Command rejected",
                  b"B": "554 5.7.1 Command rejected", b"E": "554 5.7.1 Command rejected"}


class Result:
    """What one milter said about one stage.

    action        CONTINUE, ACCEPT, REJECT, TEMPFAIL, DISCARD, REPLY (see reply), SKIP, FAILED
    reply         mc.ReplyCode for REPLY (its .code, .lines(), .text), else None
    error         why FAILED (for the log), else None
    modifications end of message only: the mc.Modification objects in the milter's order
                  (AddHeader, InsHeader, ChgHeader, AddRcpt, AddRcptPar, DelRcpt, ChgFrom,
                  ReplBody chunks)
    quarantine    end of message only: the SMFIR_QUARANTINE reason, or None
    """
    __slots__ = ("action", "reply", "error", "modifications", "quarantine")

    def __init__(self, action, reply=None, error=None, modifications=(), quarantine=None):
        self.action, self.reply, self.error = action, reply, error
        self.modifications, self.quarantine = list(modifications), quarantine

    @property
    def failed(self):
        return self.action == FAILED

    @property
    def body(self):
        """The replacement body (the ReplBody chunks joined), or None."""
        chunks = [m.chunk for m in self.modifications if isinstance(m, mc.ReplBody)]
        return b"".join(chunks) if chunks else None

    def __repr__(self):
        return "Result(%s%s%s%s%s)" % (
            self.action, ", reply=%r" % self.reply.text if self.reply else "",
            ", error=%r" % self.error if self.error else "",
            ", modifications=%r" % self.modifications if self.modifications else "",
            ", quarantine=%r" % self.quarantine if self.quarantine is not None else "")


_CONTINUE = Result(CONTINUE)

# client states (Sendmail's SMFS_*)
CLOSED, OPEN, INMSG, DONE, ERROR = "closed", "open", "inmsg", "done", "error"


class _Failure(Exception):
    """Internal: a broken milter connection; turned into a FAILED Result at the API."""


def _macro_value(values, name):
    if name in values:
        return values[name]
    bare = name[1:-1] if name.startswith("{") and name.endswith("}") else name
    for key in (bare, "{%s}" % bare):
        if key in values:
            return values[key]
    return None


_TIMEOUT = object()
READ_SIZE = 65536


def _expire(waiter):
    if not waiter.done():
        waiter.set_result(_TIMEOUT)


class _Wire(asyncio.Protocol):
    """The milter connection's transport side: bytes go to the client's decoder, and the
    one coroutine waiting (a read or a drain) is woken.  A Protocol rather than asyncio
    streams: a stage is one write and one read, and streams cost a task per wait."""
    __slots__ = ("client", "transport", "waiter", "drained", "paused", "closed")

    def __init__(self, client):
        self.client = client
        self.transport = self.waiter = self.drained = None
        self.paused = self.closed = False

    def connection_made(self, transport):
        self.transport = transport
        # asyncio reads up to 256 KiB at a time: a fresh mmap'd buffer per read (and an
        # munmap after). Milter answers are small; body replacements come in 64 KiB chunks.
        transport.max_size = READ_SIZE

    def data_received(self, data):
        self.client._received(data)
        self._wake()

    def eof_received(self):
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc):
        self.closed = True
        self._wake()
        self._resumed()

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False
        self._resumed()

    def _wake(self):
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _resumed(self):
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)


class MilterClient:
    """One milter connection for one SMTP session.

    name       the X line's name (for the log)
    spec       S= ('inet:8894@127.0.0.1', 'inet6:...', 'unix:/path', 'local:/path')
    timeouts   dict C, S, R, E in seconds (parse_timeouts); 0 = no limit
    macros     {stage name: macro names} (O Milter.macros.*); DEFAULT_MACROS by default;
               the milter's own lists (SETSYMLIST) replace them
    actions, protocol, data_size   what we offer in the negotiation
    """

    def __init__(self, name, spec, timeouts=None, macros=None, actions=mc.SMFI_CURR_ACTS,
                 protocol=mc.SMFI_CURR_PROT, data_size=mc.MDS_64K, max_packet=mc.MAX_PACKET):
        self.name, self.spec = name, spec
        self.timeouts = dict(DEFAULT_TIMEOUTS)
        self.timeouts.update(timeouts or {})
        self.macros = dict(DEFAULT_MACROS)
        self.macros.update(macros or {})
        self.offer = mc.offer(actions, protocol, data_size)
        self.max_packet = max_packet
        self.negotiated = None
        self.state = CLOSED
        self.error = None
        self._wire = None
        self._decoder = None
        self._queue = []

    # ------------------------------------------------------------ I/O

    @staticmethod
    def _limit(seconds):
        return seconds if seconds and seconds > 0 else None

    async def open(self):
        """Connect (C: timeout) and negotiate.  Result CONTINUE or FAILED."""
        if self.state != CLOSED:
            return self._fail_result() if self.state == ERROR else _CONTINUE
        where = parse_socket_spec(self.spec)
        if where is None:
            return self._fail("bad socket spec %r" % self.spec)
        kind, host, port = where
        loop = asyncio.get_running_loop()
        self._decoder = mc.ResponseReader(self.max_packet)
        try:
            if kind == "unix":
                coro = loop.create_unix_connection(lambda: _Wire(self), host)
            else:
                coro = loop.create_connection(lambda: _Wire(self), host, port)
            _, self._wire = await asyncio.wait_for(coro, self._limit(self.timeouts["C"]))
        except asyncio.TimeoutError:
            return self._fail("connect to %s: timeout" % self.spec)
        except (OSError, ValueError) as e:
            return self._fail("connect to %s: %s" % (self.spec, e))
        self.state = OPEN
        try:
            await self._send(self.offer)
            reply = await self._read("negotiate")
        except _Failure as e:
            return self._fail(str(e))
        got = mc.negotiate(self.offer, reply)
        if isinstance(got, mc.ProtocolError):
            return self._fail(got.why)
        self.negotiated = got
        return _CONTINUE

    async def _send(self, command, before=b""):
        """Write `before` (encoded macros) and the command in one write."""
        await self._write(before + command.encode() if before else command.encode(),
                          type(command).__name__)

    async def _write(self, data, what):
        """One write (the packets of a stage leave together); past the transport's high
        water mark, wait (S:) until the milter has read."""
        wire = self._wire
        if wire is None or wire.transport is None or wire.closed:
            raise _Failure("write error (%s): connection closed" % what)
        wire.transport.write(data)
        if wire.paused:
            waiter = wire.drained = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(waiter, self._limit(self.timeouts["S"]))
            except asyncio.TimeoutError:
                raise _Failure("write timeout (%s)" % what) from None
            if wire.closed:
                raise _Failure("write error (%s): connection closed" % what)

    async def _read(self, where, deadline=None):
        """The next response; raises _Failure on EOF, timeout or garbage."""
        wire = self._wire
        if not self._queue:
            loop = asyncio.get_running_loop()
            timeout = self._limit(self.timeouts["R"])
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    raise _Failure("%s: end-of-message timeout (E:)" % where)
                timeout = left if timeout is None else min(timeout, left)
            while not self._queue:
                if wire is None or wire.closed:
                    raise _Failure("%s: connection closed by the milter" % where)
                waiter = wire.waiter = loop.create_future()
                timer = loop.call_later(timeout, _expire, waiter) if timeout else None
                try:
                    await waiter
                finally:
                    wire.waiter = None
                    if timer is not None:
                        timer.cancel()
                if waiter.result() is _TIMEOUT:
                    if deadline is not None and deadline - loop.time() <= 0:
                        raise _Failure("%s: end-of-message timeout (E:)" % where)
                    raise _Failure("%s: read timeout" % where)
        item = self._queue.pop(0)
        if isinstance(item, mc.ProtocolError):
            raise _Failure("%s: %s" % (where, item.why))
        return item

    def _received(self, data):
        """_Wire's data: decoded responses queue up for _read."""
        self._queue.extend(self._decoder.feed(data))

    def _drop(self):
        wire, self._wire = self._wire, None
        if wire is not None and wire.transport is not None:
            wire.transport.abort() if wire.closed else wire.transport.close()
        self._queue = []

    def _fail(self, why):
        self._drop()
        self.state, self.error = ERROR, why
        return self._fail_result()

    def _fail_result(self):
        return Result(FAILED, error="milter %s: %s" % (self.name, self.error))

    # ------------------------------------------------------------ stages

    def stage_macros(self, stage):
        """The macro names sent at SMFIM_* `stage`: the milter's list if it set one."""
        if self.negotiated is not None and stage in self.negotiated.macros:
            return self.negotiated.macros[stage]
        return tuple(self.macros.get(mc.STAGE_NAMES[stage], ()))

    def _macros(self, stage, values):
        """The encoded SMFIC_MACRO packet of `stage` (b"" when there is nothing to send);
        it goes out in the same write as the stage's command."""
        if not values:
            return b""
        pairs = []
        for name in self.stage_macros(stage):
            v = _macro_value(values, name)
            if v is not None:
                pairs.append((name, v))
        return mc.Macro(mc.STAGE_COMMANDS[stage], pairs).encode() if pairs else b""

    def _verdict(self, code, reply):
        """Map a response to a stage to its Result; a bogus one raises _Failure."""
        kind = _VERDICTS.get(type(reply))
        if kind is None:
            raise _Failure("%r: bogus response %r" % (code, reply))
        if kind == REPLY and not reply.valid:
            reply = mc.ReplyCode(_DEFAULT_REPLY.get(code, "550 5.7.1 Command rejected"))
        return Result(kind, reply if kind == REPLY else None)

    async def _command(self, command, stage=None, values=None):
        """Sendmail's milter_command for one milter: macros, command, reply."""
        if self.state == ERROR:
            return self._fail_result()
        if self.state not in (OPEN, INMSG):
            return _CONTINUE
        code = command.CODE
        try:
            before = self._macros(stage, values) if stage is not None else b""
            if self.negotiated.skips(code):
                if before:
                    await self._write(before, "Macro")      # the macros still go
                return _CONTINUE
            await self._send(command, before)
            if self.negotiated.no_reply(code):
                return _CONTINUE
            while True:
                reply = await self._read(type(command).__name__)
                if not isinstance(reply, mc.Progress):
                    break
            result = self._verdict(code, reply)
        except _Failure as e:
            return self._fail(str(e))
        if result.action == ACCEPT:
            self.state = CLOSED if code in (b"C", b"H") else DONE
            if code in (b"C", b"H"):
                await self._quit_quietly()
        elif result.action == CONTINUE and code == b"M":
            self.state = INMSG
        elif result.action in (REJECT, TEMPFAIL, DISCARD, REPLY):
            if code == b"C":
                await self._quit_quietly()
                self.state = CLOSED
            elif code not in (b"H", b"R", b"U"):
                self.state = DONE
        return result

    async def connect(self, hostname, family=mc.SMFIA_UNKNOWN, port=0, address="", macros=None):
        """SMFIC_CONNECT: hostname, family (b'4', b'6', b'L', b'U'), port, address."""
        if self.state == CLOSED and self._wire is None and self.negotiated is None:
            opened = await self.open()
            if opened.failed:
                return opened
        return await self._command(mc.Connect(hostname, family, port, address),
                                   mc.SMFIM_CONNECT, macros)

    async def helo(self, name, macros=None):
        return await self._command(mc.Helo(name), mc.SMFIM_HELO, macros)

    async def mail(self, args, macros=None):
        """SMFIC_MAIL: args = ['<sender>', 'ESMTP=arg', ...].  Starts a new message."""
        if self.state == INMSG:
            await self.abort()
        if self.state == DONE:
            self.state = OPEN
        return await self._command(mc.Mail(tuple(args)), mc.SMFIM_ENVFROM, macros)

    async def rcpt(self, args, macros=None, rejected=False):
        """SMFIC_RCPT: args = ['<rcpt>', 'ESMTP=arg', ...].  A recipient the MTA rejected
        (rejected=True) is sent only when the milter asked for SMFIP_RCPT_REJ."""
        if rejected and not (self.negotiated and self.negotiated.protocol & mc.SMFIP_RCPT_REJ):
            return self._fail_result() if self.state == ERROR else _CONTINUE
        return await self._command(mc.Rcpt(tuple(args)), mc.SMFIM_ENVRCPT, macros)

    async def data(self, macros=None):
        return await self._command(mc.Data(), mc.SMFIM_DATA, macros)

    async def unknown(self, line, macros=None):
        """SMFIC_UNKNOWN: an SMTP command line the MTA does not know."""
        return await self._command(mc.Unknown(line))

    async def header(self, name, value):
        """SMFIC_HEADER: value as it follows the colon (one leading space is dropped unless
        the milter asked for SMFIP_HDR_LEADSPC)."""
        leadspc = self.negotiated and self.negotiated.protocol & mc.SMFIP_HDR_LEADSPC
        if value.startswith(" ") and not leadspc:
            value = value[1:]
        return await self._command(mc.Header(name, value))

    async def eoh(self, macros=None):
        if self.negotiated is not None and self.negotiated.skips(b"N"):
            return _CONTINUE            # Sendmail sends no EOH macros then
        return await self._command(mc.EndOfHeaders(), mc.SMFIM_EOH, macros)

    async def body(self, data, chunk_size=None):
        """SMFIC_BODY chunks of at most the negotiated data size (bare LF sent as CRLF).
        SKIP stops the chunks (the Result is CONTINUE)."""
        if self.negotiated is None or self.state not in (OPEN, INMSG):
            return self._fail_result() if self.state == ERROR else _CONTINUE
        data = bytes(data).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        size = min(chunk_size or self.negotiated.data_size, self.negotiated.data_size)
        for off in range(0, len(data), size):
            result = await self._command(mc.Body(data[off:off + size]))
            if result.action == SKIP:
                return _CONTINUE
            if result.action != CONTINUE:
                return result
        return _CONTINUE

    async def eom(self, macros=None):
        """SMFIC_BODYEOB, then the milter's modifications until its final verdict (E: is
        the limit for all of it; PROGRESS restarts only the R: timer).  The Result's action
        is ACCEPT (for accept or continue), REJECT, TEMPFAIL, DISCARD or REPLY, with
        .modifications and .quarantine; a body replacement without SMFIF_CHGBODY makes it
        TEMPFAIL as in Sendmail."""
        if self.state == ERROR:
            return self._fail_result()
        if self.state not in (OPEN, INMSG):
            return _CONTINUE
        mods, quarantine, replfailed = [], None, False
        try:
            await self._send(mc.EndOfMessage(), self._macros(mc.SMFIM_EOM, macros))
            loop = asyncio.get_running_loop()
            limit = self._limit(self.timeouts["E"])
            deadline = loop.time() + limit if limit else None
            while True:
                reply = await self._read("eom", deadline)
                if isinstance(reply, mc.Progress):
                    continue
                if isinstance(reply, mc.Quarantine):
                    quarantine = reply.reason
                elif isinstance(reply, mc.ReplBody) and not self.negotiated.actions & mc.SMFIF_CHGBODY:
                    replfailed = True
                elif reply.MODIFICATION:
                    mods.append(reply)
                elif isinstance(reply, (mc.Continue, mc.Accept)):
                    result = Result(TEMPFAIL if replfailed else ACCEPT)
                    break
                elif isinstance(reply, mc.Skip):
                    raise _Failure("eom: bogus response %r" % reply)
                else:
                    result = self._verdict(b"E", reply)
                    break
        except _Failure as e:
            return self._fail(str(e))
        self.state = DONE
        result.modifications, result.quarantine = mods, quarantine
        return result

    async def message(self, headers, body, eoh_macros=None, eom_macros=None):
        """Sendmail's milter_data for this milter: each (name, value) header, EOH, the body,
        EOM.  An ACCEPT before EOM ends it (no modifications); any other verdict ends it."""
        for name, value in headers:
            if self.negotiated is not None and self.negotiated.skips(b"L"):
                break
            result = await self.header(name, value)
            if result.action != CONTINUE:
                return result
        for step in (lambda: self.eoh(eoh_macros), lambda: self.body(body)):
            result = await step()
            if result.action != CONTINUE:
                return result
        return await self.eom(eom_macros)

    # ------------------------------------------------------------ ends

    async def abort(self):
        """SMFIC_ABORT when a message is under way (RSET, rejected DATA, end of a message
        whose EOM the milter did not get).  The connection stays for the next message."""
        if self.state == INMSG:
            try:
                await self._send(mc.Abort())
            except _Failure as e:
                return self._fail(str(e))
            self.state = DONE
        return self._fail_result() if self.state == ERROR else _CONTINUE

    async def _quit_quietly(self, command=None):
        try:
            if self._wire is not None:
                await self._send(command or mc.Quit())
        except _Failure:
            pass
        self._drop()

    async def quit(self, new_connection=False):
        """SMFIC_QUIT (or SMFIC_QUIT_NC) and close.  Never fails."""
        if self.state != ERROR:
            await self._quit_quietly(mc.QuitNewConnection() if new_connection else None)
            self.state = CLOSED
        self._drop()

    async def close(self):
        """Close without a word (the milter sees the connection end)."""
        self._drop()
        if self.state != ERROR:
            self.state = CLOSED
