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
import time

from ..model import DeliveryStatus
from .hoststat import HostStatus, HostStatusCache, TEMPFAIL
from .smtp_connection import (STATE_TIMEOUT, Connection, DeliveryFailure, _fail, _seconds,
                              _tls_name, _words)
from ..proto import smtp_client as core

__all__ = ["Agent", "Connection", "DeliveryFailure", "Route"]


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
        self._outbound_auth = None
        self.helo_name = options.get("HeloName") or ident.j

    # -- configuration ---------------------------------------------------------------
    def rules(self):
        if self._rules is None:
            from .router import load_rules
            self._rules = load_rules(self.layout, self.options, self.ident.j)
        return self._rules

    def outbound_auth(self):
        """The DKIM signer / ARC sealer (delivery.outbound_auth), or None without keys."""
        if self._outbound_auth is None:
            from .outbound_auth import OutboundAuth
            self._outbound_auth = OutboundAuth(self.options, self.ident.j, self.log)
        return self._outbound_auth or None

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
        """(authentication id, password[, authorization id]) and the mechanisms allowed
        (authinfo's I:, P:, U:, M:) for `host`, or (None, None)."""
        path = self.options.get("AuthInfoFile") or self._authinfo_default()
        if not path:
            return None, None
        from . import authinfo
        try:
            creds = authinfo.lookup(path, host, address)
        except authinfo.AuthInfoError as e:
            self.log.err(None, "authinfo %s: %s" % (path, e))
            return None, None
        if creds is None:
            return None, None
        login = creds.authid or creds.user
        authz = (creds.user,) if creds.user and creds.user != login else ()
        return (login, creds.password) + authz, creds.mechanisms or None

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
        creds, mechanisms = (None, None) if path else self.credentials(host, address)
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
            credentials=creds, auth_plaintext=bool(path) or route.implicit_tls,
            mechanisms=mechanisms)
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
