"""One SMTP/LMTP session with a peer: the asyncio driver of proto/smtp_client.

A Connection is opened by the agent (smtp_agent.py: where to connect, TLS contexts,
credentials) and then carries message after message: `setup()` until the core is
Ready (greeting, EHLO/LHLO, STARTTLS, AUTH), `deliver(env, indices)` for each message
(the addresses as the mailer writes them, 8-bit to 7-bit conversion when the peer
lacks 8BITMIME, the body streamed from the queue with back-pressure), `close()` with
QUIT. Replies become DeliveryStatus values with the peer's text, as the DSNs and mailq
show them. Timeouts are per awaited reply (STATE_TIMEOUT), Sendmail's option names.
"""
import asyncio
import os
import time

from ..model import DeliveryStatus
from ..proto import smtp_client as core
from ..proto.smtp_events import NEED_DATA
from .hoststat import HostStatus

CHUNK = 65536

TIMEOUTS = {            # option -> default seconds
    "Timeout.connect": 60, "Timeout.initial": 300, "Timeout.helo": 300,
    "Timeout.mail": 600, "Timeout.rcpt": 3600, "Timeout.datainit": 300,
    "Timeout.datablock": 3600, "Timeout.datafinal": 3600, "Timeout.quit": 120,
    "Timeout.starttls": 3600,
}
# The client core's states -> the timeout for the reply awaited in them. In a
# transaction the longest of MAIL/RCPT/DATA/final dot applies (the core pipelines them).
STATE_TIMEOUT = {"GREETING": ("Timeout.initial",), "SETUP": ("Timeout.helo",),
                 "TLS_WAIT": ("Timeout.starttls",), "READY": ("Timeout.mail",),
                 "TXN": ("Timeout.mail", "Timeout.rcpt", "Timeout.datainit",
                         "Timeout.datafinal"),
                 "BODY": ("Timeout.datablock",), "QUITTING": ("Timeout.quit",)}


class DeliveryFailure(Exception):
    """Nothing could be delivered to a destination: `status` (a DeliveryStatus)
    applies to every recipient of it."""

    def __init__(self, status):
        super().__init__(status.reply)
        self.status = status


def _fail(status, text, mta=""):
    return DeliveryFailure(DeliveryStatus(status, text, mta=mta))


def _seconds(options, name):
    from ..config.options import parse_interval
    value = options.get(name)
    if value:
        try:
            return max(parse_interval(value, "s"), 1)
        except ValueError:
            pass
    return TIMEOUTS[name]


def _words(options, name):
    return {w.lower().rstrip(".") for w in (options.get(name) or "").replace(",", " ").split()}


def _tls_name(host):
    """The name a certificate is checked against: the address of a [literal] (its IP
    SAN; no SNI is sent for an address), else the host name."""
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


class Connection:
    """One open session with a peer, carrying one message after another."""

    def __init__(self, agent, route, client, reader, writer, host, mta, verify):
        self.agent = agent
        self.route = route
        self.client = client
        self.reader = reader
        self.writer = writer
        self.host = host
        self.mta = mta
        self.verify = verify
        self.usable = False
        self._timeouts = agent.timeouts()

    async def _flush(self):
        data = self.client.data_to_send()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def _event(self):
        """The core's next event, reading as needed (with the stage's timeout)."""
        while True:
            ev = self.client.next_event()
            try:
                await self._flush()
            except (OSError, ConnectionError):
                self.client.receive_data(b"")
                continue
            if ev is not NEED_DATA:
                return ev
            timeout = self._timeouts.get(self.client.state) or self._timeouts["TXN"]
            try:
                data = await asyncio.wait_for(self.reader.read(CHUNK), timeout)
            except asyncio.TimeoutError:
                self.client.abort("timeout waiting for input from %s" % self.host,
                                  421, "4.4.2")
                continue
            except (OSError, ConnectionError):
                data = b""
            self.client.receive_data(data)

    async def setup(self):
        """Greeting, EHLO, STARTTLS, AUTH: until the core is Ready."""
        while True:
            ev = await self._event()
            if isinstance(ev, core.Ready):
                self.usable = True
                self.agent.hoststat.record(HostStatus(self.host, 0, "2.0.0", "",
                                                      updated=int(time.time())))
                return
            if isinstance(ev, core.TlsUpgrade):
                try:
                    await asyncio.wait_for(self.writer.start_tls(
                        self.agent.tls_context(self.verify),
                        server_hostname=_tls_name(self.host) if self.verify else None),
                        _seconds(self.agent.options, "Timeout.starttls"))
                except (OSError, ConnectionError, asyncio.TimeoutError) as e:
                    self.client.abort("TLS handshake with %s failed: %s" % (self.host, e),
                                      421, "4.7.5")
                    continue
                self.client.tls_started()
                continue
            if isinstance(ev, core.ConnectionClosed):
                await self._close_transport()
                o = ev.outcome
                text = "%s: %s" % (self.host, o.text) if o.reply is None else \
                    "%d %s %s (%s)" % (o.code, o.status, o.text, self.host)
                status = o.status if o.code >= 400 else "4.4.2"
                raise _fail(status, text, self.mta)
            raise RuntimeError("unexpected %r during setup" % (ev,))

    # -- one message --------------------------------------------------------------------
    async def deliver(self, env, indices):
        """Send message `env` to its recipients `indices`; one DeliveryStatus each."""
        from .local import MessageSource
        from ..queue.spool import Spool
        agent = self.agent
        view = agent.view(self.route.mailer)
        spool = Spool(agent.layout.queue)
        try:
            source = MessageSource(env, spool.df(env.qid), view)
        except OSError as e:
            return [DeliveryStatus("4.3.0", "cannot open queued body: %s"
                                   % e.strerror)] * len(indices)
        body_tmp = None
        try:
            headers = source.headers
            body_8bit = (env.body_type or "").upper() == "8BITMIME"
            if self.client.needs_7bit(body_8bit):
                action = "pass" if self.route.pass8 else _eight_bit_action(
                    agent.options, env.headers, env.body_type)
                if action == "bounce":
                    return [DeliveryStatus(
                        "5.6.3", "554 5.6.3 %s does not support 8BITMIME" % self.host,
                        mta=self.mta)] * len(indices)
                if action == "convert":
                    headers, body_tmp = _convert(env, headers, source, agent.ident.j)
                body_8bit = False
            signer = None if self.route.lmtp else agent.outbound_auth()
            if signer is not None:
                headers = signer.apply(headers, lambda: _body_bytes(body_tmp, source),
                                       env.qid)
            rcpts = []
            for i in indices:
                r = env.recipients[i]
                rcpts.append((_bare(r.user or r.addr), r.notify or None,
                              r.orcpt or None))
            sender = _bare(source.sender)
            size = len(headers) + 1 + (os.fstat(body_tmp.fileno()).st_size if body_tmp
                                       else os.fstat(source.fd).st_size)
            self.client.send_message(sender, rcpts, size=size, body_8bit=body_8bit,
                                     ret=env.ret or None, envid=env.envid or None)
            while True:
                ev = await self._event()
                if isinstance(ev, core.RcptReply):
                    continue
                if isinstance(ev, core.SendBody):
                    await self._send_body(headers, body_tmp, source)
                    continue
                if isinstance(ev, core.TransactionDone):
                    statuses = [self._status(o) for o in ev.outcomes]
                    if "DSN" in self.client.extensions and self.route.mailer != "local":
                        for i, st in zip(indices, statuses):  # it got NOTIFY and owes the
                            r = env.recipients[i]             # receipt (RFC 3461 5.2.2)
                            if st.ok and r.wants("SUCCESS") and "success" not in r.reported:
                                r.reported = ",".join(filter(None, [r.reported, "success"]))
                    return statuses
                if isinstance(ev, core.ConnectionClosed):
                    self.usable = False
                    await self._close_transport()
                    return [self._status(ev.outcome, lost=True)] * len(indices)
                if isinstance(ev, core.Ready):
                    continue
                raise RuntimeError("unexpected %r in a transaction" % (ev,))
        finally:
            source.close()
            if body_tmp is not None:
                body_tmp.close()

    async def _send_body(self, headers, body_tmp, source):
        client, writer = self.client, self.writer
        client.send_body(headers + b"\n")
        if body_tmp is not None:
            body_tmp.seek(0)
            f = body_tmp
            close = False
        else:
            f = source._body()
            close = True
        try:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                client.send_body(chunk)
                data = client.data_to_send()
                if data:
                    writer.write(data)
                    if writer.transport.get_write_buffer_size() > 4 * CHUNK:
                        await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            if close:
                f.close()
        client.end_body()

    def _status(self, outcome, lost=False):
        """A core Outcome as the queue's DeliveryStatus (reply text with the codes,
        as the DSN's Diagnostic-Code and mailq show them)."""
        if outcome.ok:
            return DeliveryStatus(outcome.status if outcome.status[:1] == "2" else "2.0.0",
                                  outcome.text, mta=self.mta)
        if outcome.reply is None:
            text = "%s with %s" % (outcome.text, self.host)
            reply = text if lost or outcome.transient else \
                "%d %s %s" % (outcome.code, outcome.status, text)
        else:
            reply = "%d %s %s" % (outcome.code, outcome.status, outcome.text)
        status = outcome.status
        if status[:1] not in "45":
            status = "4.0.0" if outcome.transient else "5.0.0"
        return DeliveryStatus(status, reply, mta=self.mta)

    async def close(self):
        if self.usable:
            try:
                self.client.quit()
                await asyncio.wait_for(self._quit(), _seconds(self.agent.options,
                                                               "Timeout.quit"))
            except (asyncio.TimeoutError, OSError, ConnectionError, Exception):
                pass
        self.usable = False
        await self._close_transport()

    async def _quit(self):
        while True:
            ev = await self._event()
            if isinstance(ev, core.ConnectionClosed):
                return

    async def _close_transport(self):
        w = self.writer
        if w is None:
            return
        self.writer = None
        try:
            w.close()
            await asyncio.wait_for(w.wait_closed(), 5)
        except (OSError, ConnectionError, asyncio.TimeoutError, Exception):
            pass


def _body_bytes(body_tmp, source):
    """The body as it will be sent (converted or queued), read whole for signing."""
    if body_tmp is not None:
        body_tmp.seek(0)
        return body_tmp.read()
    f = source._body()
    try:
        return f.read()
    finally:
        f.close()


def _bare(address):
    a = (address or "").strip()
    if a.startswith("<") and a.endswith(">"):
        a = a[1:-1]
    return a


def _eight_bit_action(options, headers, body_type):
    from .mime8to7 import eight_bit_action
    return eight_bit_action(options.get("EightBitMode") or "p", headers, body_type)


def _convert(env, headers, source, host):
    """The message converted to 7 bit: (header bytes, temporary body file)."""
    import tempfile
    from .mime8to7 import convert
    fields = [h for h in headers.split(b"\n") if h]
    raw = []
    for line in fields:                 # refold: continuation lines join their field
        if line[:1] in (b" ", b"\t") and raw:
            raw[-1] += b"\n" + line
        else:
            raw.append(line)
    out = tempfile.TemporaryFile()
    with source._body() as body:
        new = convert(raw, body, out, host=host, qid=env.qid)
    return b"".join(h + b"\n" for h in new), out
