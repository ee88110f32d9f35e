"""The SMTP/LMTP delivery agent: asyncio around the sans-I/O client core.

For one destination (mailer, host) the agent works out where to connect (`plan`),
opens connections (`connect`) and carries messages over them (`Connection.deliver`);
qmgr/outbound.py decides how many connections and which messages. The protocol is
proto/smtp_client.py; this module owns sockets, TLS, timeouts and the queue's side:
reading the message (addresses as the mailer writes them, mailer_view.py), 8-bit to
7-bit conversion (mime8to7.py) and turning replies into DeliveryStatus values.

Where to connect comes from the cf's mailer (P=[IPC]):
  A=TCP $h [port]     the host from ruleset 0: MX lookup (mx.py), `[host]` without,
                      `[host]:port` for a port of its own (a smarthost: DS[host]:587)
  A=FILE /path        a Unix socket (LMTP to the post office: FEATURE(local_lmtp))
  F=z                 LMTP (RFC 2033): LHLO, one reply per recipient after the dot
  F=a                 ESMTP at once; without it, EHLO only when the greeting says ESMTP
  F=8                 8-bit bodies go as they are even to a server without 8BITMIME;
                      without it EightBitMode decides (mime8to7.eight_bit_action)
TLS: port 465 is implicit TLS; STARTTLS is used when offered ("may"), and required
("must") on port 587, for a host we have AUTH credentials for (authinfo.py: a
password never goes out in clear), and for hosts listed in `O TLSRequiredHosts`;
`O TLSVerifyHosts` lists hosts whose certificate must verify (CACertFile, else the
system's CAs), opportunistic TLS verifies nothing, as Sendmail and Postfix do.

Failures: a host that cannot be reached or refuses the session (connection refused,
timeout, 4xx/5xx greeting, TLS required and not offered) is recorded in the host
status cache and the next address/MX host is tried; when none is left the
destination fails with the last reason (temporary unless every host said 5xx).
Timeouts are Sendmail's options: Timeout.connect (5m... we use 60s unless set),
Timeout.initial (5m), Timeout.helo (5m), Timeout.mail (10m), Timeout.rcpt (1h),
Timeout.datainit (5m), Timeout.datablock (1h), Timeout.datafinal (1h), Timeout.quit (2m).
"""
import asyncio
import os
import socket
import time

from ..model import DeliveryStatus
from ..proto.smtp_events import NEED_DATA
from ..proto import smtp_client as core
from .hoststat import HostStatus, HostStatusCache, TEMPFAIL

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


class Route:
    """Where and how one destination is reached (the agent's `plan`)."""
    __slots__ = ("mailer", "host", "lmtp", "esmtp", "pass8", "socket_path", "targets",
                 "implicit_tls")

    def __init__(self, mailer, host, lmtp=False, esmtp=True, pass8=False,
                 socket_path=None, targets=(), implicit_tls=False):
        self.mailer = mailer
        self.host = host
        self.lmtp = lmtp
        self.esmtp = esmtp
        self.pass8 = pass8
        self.socket_path = socket_path
        self.targets = list(targets)        # mx.Destination values
        self.implicit_tls = implicit_tls


def _is_ip(text):
    import ipaddress
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _tls_name(host):
    """The name a certificate is checked against: the address of a [literal] (its IP
    SAN; no SNI is sent for an address), else the host name."""
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


def _split_port(host):
    """"[host]:587" -> ("[host]", 587); anything else -> (host, None)."""
    if host.startswith("[") and "]:" in host:
        name, _, port = host.rpartition(":")
        if port.isdigit() and name.endswith("]"):
            return name, int(port)
    return host, None


class Agent:
    """The agent of one queue run: the cf's mailers, the resolver, TLS contexts,
    credentials and the host status cache, shared by its connections."""

    def __init__(self, layout, options, ident, log):
        self.layout = layout
        self.options = options
        self.ident = ident
        self.log = log
        self.hoststat = HostStatusCache(layout.hoststat_dir,
                                        _hoststat_timeout(options))
        self._rules = None
        self._resolver = None
        self._tls = {}
        self._authinfo = None
        self._views = {}
        self._timeouts = None
        self.helo_name = options.get("HeloName") or ident.j

    # -- configuration ---------------------------------------------------------------
    def rules(self):
        if self._rules is None:
            from .router import load_rules
            self._rules = load_rules(self.layout, self.options, self.ident.j)
        return self._rules

    def view(self, mailer):
        if mailer not in self._views:
            from .mailer_view import MailerView
            self._views[mailer] = MailerView(self.rules(), mailer)
        return self._views[mailer]

    def destination_key(self, rcpt):
        return (rcpt.mailer, rcpt.host.strip().rstrip(".").lower() if rcpt.host else "")

    def _mailer(self, name):
        from ..errors import ConfigError
        try:
            m = self.rules().mailer(name)
        except ConfigError as e:
            raise _fail("4.3.5", "configuration error: %s" % e.message) from None
        if m is None:
            raise _fail("4.3.5", "no mailer %s in the configuration" % name)
        return m

    # -- where to connect --------------------------------------------------------------
    async def plan(self, key):
        mailer_name, host = key
        m = self._mailer(mailer_name)
        if (m.path or "").strip() != "[IPC]":
            raise _fail("4.3.5", "mailer %s (P=%s) is not an IPC mailer"
                        % (mailer_name, m.path))
        flags = m.flags
        argv = (m.argv or "TCP $h").split()
        route = Route(mailer_name, host, lmtp="z" in flags, esmtp="a" in flags,
                      pass8="8" in flags)
        kind = argv[0].upper() if argv else "TCP"
        if kind == "FILE":
            if len(argv) < 2:
                raise _fail("4.3.5", "mailer %s: A=FILE without a path" % mailer_name)
            route.socket_path = argv[1]
            route.host = "localhost"
            return route
        if kind != "TCP":
            raise _fail("4.3.5", "mailer %s: A=%s is not TCP or FILE"
                        % (mailer_name, " ".join(argv)))
        port = 25
        if len(argv) > 2 and argv[2] != "$h":
            if not argv[2].isdigit():
                raise _fail("4.3.5", "mailer %s: bad port %s" % (mailer_name, argv[2]))
            port = int(argv[2])
        if len(argv) > 1 and argv[1] != "$h":
            host = argv[1]      # A=TCP fixed.host.example
            if _is_ip(host):    # A=TCP 127.0.0.1 24 (an LMTP server): that address, no DNS
                host = "[%s]" % host
        host, own_port = _split_port(host)
        if own_port:
            port = own_port
        if not host:
            raise _fail("5.1.2", "Host unknown (no host for mailer %s)" % mailer_name)
        route.host = host
        route.implicit_tls = port == 465
        loop = asyncio.get_running_loop()
        route.targets = await loop.run_in_executor(None, self._resolve, host, port)
        return route

    def _resolve(self, host, port):
        from . import mx
        if self._resolver is None:
            self._resolver = mx.resolver_context(self.options, self.layout.resolv_confs)
        own = set()
        try:
            own = {w.lower() for w in self.rules().classes.get("w", ())}
        except Exception:
            pass
        try:
            return mx.resolve_destinations(host, self._resolver, port=port, own_names=own,
                                           my_name=self.ident.j)
        except mx.DestinationError as e:
            status = e.dsn or ("4.4.3" if e.temporary else "5.1.2")
            text = e.message
            if text.startswith("Deferred: "):   # the queue run says "Deferred: " itself
                text = text[len("Deferred: "):]
            raise _fail(status, text) from None

    # -- TLS and AUTH ----------------------------------------------------------------
    def tls_context(self, verify):
        ctx = self._tls.get(verify)
        if ctx is None:
            import ssl
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if verify:
                cafile = self.options.get("CACertFile")
                capath = self.options.get("CACertPath")
                if cafile or capath:
                    ctx.load_verify_locations(cafile=cafile or None, capath=capath or None)
                else:
                    ctx.load_default_certs()
            else:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            cert, key = self.options.get("ClientCertFile"), self.options.get("ClientKeyFile")
            if cert and key:
                ctx.load_cert_chain(cert, key)
            self._tls[verify] = ctx
        return ctx

    def credentials(self, host, address):
        """(user, password[, authzid]) for `host` from the authinfo map, or None."""
        path = self.options.get("AuthInfoFile") or self._authinfo_default()
        if not path:
            return None
        from . import authinfo
        try:
            creds = authinfo.lookup(path, host, address)
        except authinfo.AuthInfoError as e:
            self.log.err(None, "authinfo %s: %s" % (path, e))
            return None
        if creds is None:
            return None
        return (creds.user, creds.password) + ((creds.authid,) if creds.authid and
                                               creds.authid != creds.user else ())

    def _authinfo_default(self):
        path = os.path.join(os.path.dirname(self.layout.cf), "authinfo")
        return path if os.path.exists(path) else None

    # -- connections -----------------------------------------------------------------
    async def connect(self, key, route):
        """An open, greeted (and maybe TLS/AUTH'd) Connection to the first host of
        `route` that takes us; DeliveryFailure when none does."""
        if route.socket_path:
            return await self._open(route, route.socket_path, None, "localhost", None)
        last = None
        all_permanent = True
        now = time.time()
        for target in route.targets:
            # a service of its own on another port (a smarthost's 587 beside the MX's 25)
            # has a status of its own
            status_key = target.host if target.port in (None, 25) else \
                "%s:%d" % (target.host, target.port)
            cached = self.hoststat.failed_recently(status_key, now)
            if cached is not None:
                last = DeliveryStatus(cached.status or "4.4.1", cached.reply or
                                      "host %s is down" % target.host)
                all_permanent = all_permanent and last.permanent
                continue
            for address in target.addresses:
                try:
                    return await self._open(route, None, address, target.host, target.port)
                except DeliveryFailure as e:
                    last = e.status
                    all_permanent = all_permanent and last.permanent
            if last is not None:
                self.hoststat.record(HostStatus(
                    status_key, TEMPFAIL if last.temporary else 69, last.status, last.reply,
                    updated=int(time.time())))
        if last is None:
            raise _fail("4.4.3", "no host to connect to for %s" % route.host)
        if not all_permanent and last.permanent:
            last = DeliveryStatus("4" + last.status[1:], last.reply, mta=last.mta)
        raise DeliveryFailure(last)

    async def _open(self, route, path, address, host, port):
        connect_timeout = _seconds(self.options, "Timeout.connect")
        tls_hosts = _words(self.options, "TLSRequiredHosts")
        verify_hosts = _words(self.options, "TLSVerifyHosts")
        verify = host.lower() in verify_hosts or _tls_name(host).lower() in verify_hosts
        mta = "%s [%s]" % (host, address) if address else host
        creds = None if path else self.credentials(host, address)
        must_tls = bool(creds) or port == 587 or host.lower() in tls_hosts or verify
        ssl_ctx = self.tls_context(verify) if route.implicit_tls else None
        try:
            if path:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(path, limit=1 << 20), connect_timeout)
            else:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    address, port, ssl=ssl_ctx,
                    server_hostname=_tls_name(host) if ssl_ctx else None,
                    limit=1 << 20), connect_timeout)
        except asyncio.TimeoutError:
            raise _fail("4.4.1", "Connection timed out with %s" % host, mta) from None
        except ConnectionRefusedError:
            raise _fail("4.4.1", "Connection refused by %s" % host, mta) from None
        except OSError as e:
            raise _fail("4.4.1", "%s: %s" % (host, e.strerror or e), mta) from None
        client = core.SMTPClientConnection(
            self.helo_name, lmtp=route.lmtp, esmtp=True,
            starttls="never" if route.implicit_tls or path else ("must" if must_tls else "may"),
            credentials=creds, auth_plaintext=bool(path) or route.implicit_tls)
        conn = Connection(self, route, client, reader, writer, host, mta, verify)
        if route.implicit_tls:
            client.tls = True
        await conn.setup()
        return conn

    def timeouts(self):
        if self._timeouts is None:
            self._timeouts = {state: max(_seconds(self.options, n) for n in names)
                              for state, names in STATE_TIMEOUT.items()}
        return self._timeouts

    async def close(self):
        pass


def _hoststat_timeout(options):
    from ..config.options import parse_interval
    try:
        return parse_interval(options.get("Timeout.hoststatus") or "30m", "m")
    except ValueError:
        return 1800


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
