"""Relay control for the SMTP daemon: who may connect, send, and relay through us.

The daemon asks a `Policy` at each stage of a session and gets a `Verdict` back:

  check_connect(client)                 the connection (Sendmail's check_relay)
  check_helo(client, helo)              always accepts (Sendmail has no HELO ruleset)
  check_mail(client, sender, params)    MAIL FROM (check_mail); sender "" is <>
  check_rcpt(client, sender, rcpt, p)   RCPT TO (check_rcpt, then recipient()'s checks)

Two ways of deciding, as Sendmail 8.17:

* The cf's rulesets.  When the cf defines `Scheck_rcpt`, the cf is in charge: each
  stage runs its ruleset (check_relay gets "${client_name} $| ${client_addr}",
  check_mail "<sender>", check_rcpt "<rcpt>") with the session's macros defined
  ({client_addr} {client_name} {client_port} {client_resolve} {auth_type}
  {auth_authen} {daemon_name} {verify} {cert_subject} ... {mail_from} {mail_addr}
  {rcpt_addr} ...), and a result of `$#error` becomes the reply, `$#discard` a
  discard (rscheck() in parseaddr.c); a stage whose ruleset is missing accepts.
* Otherwise the built-in policy (what m4's access_db, relay_entire_domain-less
  relay-domains and blacklist_recipients give): the access map (Connect:, From:,
  To: keys, also untagged; host names with their parent domains, IP addresses with
  their prefixes; OK RELAY REJECT DISCARD SKIP ERROR:[x.y.z:]NNN text), and relaying
  only for recipients routed to a local mailer or to a host that is (under) a
  relay-domains entry or in $=w, or from loopback, authenticated, relay-domains or
  Connect:...RELAY clients.  Relaying is judged on the mailer and host that rulesets
  3 and 0 route the recipient to, so the %-hack, !-paths, quoted @, source routes,
  user@[IP], trailing dots and upper case are judged on where mail would really go.
  A cf's own check_relay/check_mail rulesets still run at their stages.

In both ways RCPT then does what Sendmail's recipient() does: a recipient routed to
the error mailer fails with its reply, programs, files and :include:s given directly
are refused, and a local user must be an alias or a passwd user (550 5.1.1 User
unknown).  ~/.forward files are never read here (the daemon's worker is not root).

Files: the cf's `K access` map when it defines one, else <etc>/access (a hash map
built by makemap: access.db, or the text source); the cf's class R plus
<etc>/relay-domains; <etc> is /etc/pysendmail for the system instance, the
directory of the aliases file for a private one.  `reload()` reads them again.

Security stance: reads only (maps, aliases, the passwd database); no network of its
own (the cf's rulesets may ask the resolver through $[ $]); a Policy holds one
session's macros at a time, so use one per process or per session, not across
threads.
"""
import os

from ..proto.smtp_reply import Reply, show
from .access import (Access, addr_macro, address_keys, domain_keys, error_reply,
                     is_loopback, relay_field, reply_of_text, split_address, user_keys)

__all__ = ["ClientInfo", "Verdict", "Policy", "Access", "addr_macro", "address_keys",
           "domain_keys", "is_loopback", "split_address", "user_keys"]

LOOPBACK_NAMES = ("localhost",)
# the session macros a Policy defines; all are cleared or set at every check
SESSION_MACROS = ("client_addr", "client_name", "client_port", "client_ptr",
                  "client_resolve", "auth_type", "auth_authen", "auth_ssf",
                  "daemon_name", "daemon_flags", "deliveryMode", "s", "_",
                  "verify", "tls_version", "cipher", "cipher_bits", "cert_subject",
                  "cert_issuer", "cn_subject")
TLS_MACROS = ("tls_version", "cipher", "cipher_bits", "verify", "cert_subject",
              "cert_issuer", "cn_subject")
DIRECT = {"prog": "programs", "*file*": "files", "*include*": ":include:s"}


class ClientInfo:
    """The SMTP client as the policy sees it.  `name` is its host name when known
    (else "": {client_name} is then "[addr]"); `resolve` is Sendmail's
    {client_resolve} (OK, FAIL, FORGED, TEMP; None: OK with a name, FAIL without)."""

    __slots__ = ("addr", "port", "name", "helo", "auth_type", "auth_authen", "tls",
                 "daemon_name", "resolve", "cache")

    def __init__(self, addr, port, name="", daemon_name="MTA"):
        self.addr = addr
        self.port = port
        self.name = name or ""
        self.helo = None
        self.auth_type = None
        self.auth_authen = None
        self.tls = {}
        self.daemon_name = daemon_name
        self.resolve = None
        self.cache = {}             # what the policy worked out for this session
    def __repr__(self):
        return "ClientInfo(%r, %r, name=%r, auth=%r)" % (self.addr, self.port, self.name,
                                                        self.auth_type)


class Verdict:
    """A decision: `reply` None accepts with the default reply, else the reply to give;
    `discard` accept and drop the whole message (Sendmail's EF_DISCARD); `relay` the
    recipient goes to a remote mailer rather than a local one."""

    __slots__ = ("reply", "discard", "relay")

    def __init__(self, reply=None, discard=False, relay=False):
        self.reply = reply
        self.discard = discard
        self.relay = relay

    @property
    def accepted(self):
        return self.reply is None or self.reply.code < 400

    def __repr__(self):
        return "Verdict(%r, discard=%r, relay=%r)" % (self.reply, self.discard, self.relay)


# ------------------------------------------------------------------ addresses and keys
class Policy:
    """Relay control over a RouteContext (see the module docstring)."""

    def __init__(self, ctx, options, log=None):
        self.ctx = ctx
        self.options = dict(options or {})
        self._log = log
        self.reload()

    # ---- set-up
    def etc_dir(self):
        layout = self.ctx.layout
        if getattr(layout, "system", False):
            return "/etc/pysendmail"
        return os.path.dirname(layout.aliases)

    def reload(self):
        """Read the cf (if it changed), the access map and relay-domains again."""
        if hasattr(self.ctx, "_rules"):         # RouteContext: let it load the cf again
            self.ctx._rules = None
            self.ctx._routes = {}
        rules = self.rules = self.ctx.rules
        self._defined = None            # the session macros last put in rules.macros
        rulesets = rules.cf.rulesets
        self.has = {}
        for name in ("check_relay", "check_mail", "check_rcpt"):
            number = rules.engine.ruleset_number(name)
            self.has[name] = number is not None and number in rulesets
        self.cf_mode = self.has["check_rcpt"]
        etc = self.etc_dir()
        self.access = rules.maps.get("access")
        self._access_files = ()         # our own etc/access: skipped while it does not exist
        self._access_seen = (0.0, True)
        if self.access is None:
            from ..config.maps import HashMap
            path = os.path.join(etc, "access")
            self.access = HashMap("access", {"o": True}, path)
            self._access_files = (path, path + ".db", path + ".txt")
        self.relay_domains = {w.lower().rstrip(".") for w in rules.classes.get("R", ())}
        from ..config.canon import read_table
        for row in read_table(os.path.join(etc, "relay-domains"), quiet=True):
            self.relay_domains.update(w.lower().rstrip(".") for w in row)
        opts = dict(rules.options)
        opts.update(self.options)
        self.relay_text = "Relaying denied"
        if rules.classes.get("TrustAuthMech") or opts.get("AuthMechanisms"):
            self.relay_text = "Relaying denied. Proper authentication required."
        self.delivery_mode = (opts.get("DeliveryMode") or "b")[:1].lower()

    def log(self, text):
        if self._log is None:
            return
        if hasattr(self._log, "notice"):
            self._log.notice(None, text)
        else:
            self._log(text)

    def local_names(self):
        return {w.lower() for w in self.rules.classes.get("w", ())}

    # ---- macros
    @staticmethod
    def client_name(client):
        if client.name:
            return client.name
        a = addr_macro(client.addr)
        return "[%s]" % a

    @staticmethod
    def relay_name(client):
        """$_ as the logs show the client: "name [addr]" or "[addr]"."""
        return relay_field(client.name, client.addr)

    def define(self, client):
        """The session's macros, as srvrsmtp.c defines them (computed once per state of
        the session: its name, HELO, AUTH and TLS can change, nothing else)."""
        m = self.rules.macros
        key = (client.name, client.helo, client.auth_type, client.auth_authen,
               client.resolve, id(client.tls), len(client.tls or ()))
        cached = client.cache.get("macros")
        if cached is None or cached[0] != key:
            values = {
                "client_addr": addr_macro(client.addr),
                "client_name": self.client_name(client),
                "client_ptr": self.client_name(client),
                "client_port": str(client.port or 0),
                "client_resolve": client.resolve or ("OK" if client.name else "FAIL"),
                "daemon_name": client.daemon_name or "",
                "daemon_flags": "",
                "deliveryMode": self.delivery_mode,
                "_": self.relay_name(client),
                "auth_type": client.auth_type,
                "auth_authen": client.auth_authen,
                "s": client.helo,
            }
            for name in TLS_MACROS:
                values[name] = (client.tls or {}).get(name)
            cached = (key, {k: str(v) for k, v in values.items() if v is not None})
            client.cache["macros"] = cached
        if self._defined is cached[1]:
            return                      # the same session in the same state as last time
        for name in SESSION_MACROS:
            m.pop(name, None)
        m.update(cached[1])
        self._defined = cached[1]

    def define_triple(self, prefix, p):
        m = self.rules.macros
        ok = p is not None and p.mailer != "error"
        m[prefix + "_mailer"] = p.mailer if p is not None else ""
        m[prefix + "_host"] = (p.host or "localhost") if ok else ""
        m[prefix + "_addr"] = p.user if ok else ""

    # ---- running a check_* ruleset (rscheck)
    def rscheck(self, ruleset, p1, p2=None, client=None, prefix=""):
        """Run *ruleset* on p1 [$| p2]: None (no objection), "discard", or a Reply."""
        from ..config.rule_tokens import CONDELSE
        from ..config.triple import resolve
        from ..config.tokenize import detokenize
        rules = self.rules
        toks = list(rules.tokens(p1, True).tokens or [])
        if p2 is not None:
            toks += [CONDELSE] + list(rules.tokens(p2, True).tokens or [])
        out, _status = rules.engine.rewrite(ruleset, toks)
        parts = resolve(out, rules.spacesub, rules.operator_chars)
        if parts is None:
            return None
        mailer, host, _user = parts
        what = ""
        result = None
        if mailer == "discard":
            result, what = "discard", "discard"
        elif mailer == "error" and (host or "").lower() == "quarantine":
            what = "quarantine=%s" % _user
        elif mailer == "error":
            k = next((k for k, t in enumerate(out) if t == "$:" and type(t) is not str), -1)
            text = detokenize(out[k + 1:], " ", rules.operator_chars) if k >= 0 else ""
            result = error_reply(host or "", text, prefix)
            what = "reject=%s" % result
        else:
            return None
        self.log("ruleset=%s, arg1=%s%s, relay=%s, %s" % (
            ruleset, p1, ", arg2=%s" % p2 if p2 is not None else "",
            self.relay_name(client) if client is not None else "", what))
        return result

    def _verdict(self, result, relay=False):
        if result == "discard":
            return Verdict(discard=True, relay=relay)
        return Verdict(result, relay=relay)

    # ---- access map
    def lookup(self, tag, keys):
        """The first access value for tag:key or key (Sendmail's "+" lookups), in key
        order; SKIP ends the search with nothing found."""
        from ..config.maps import TempFail
        if self._access_files and not self._access_exists():
            return None
        for key in keys:
            for k in ("%s:%s" % (tag, key), key):
                try:
                    value = self.access.lookup(k)
                except TempFail:
                    return "ERROR:4.3.0:451 Temporary system failure. Please try again later."
                if value is None:
                    continue
                if value.strip().upper() == "SKIP":
                    return None
                return value
        return None

    def _access_exists(self):
        import time
        now = time.monotonic()
        checked, exists = self._access_seen
        if now - checked >= 1.0:
            exists = any(os.path.exists(p) for p in self._access_files)
            self._access_seen = (now, exists)
        return exists

    def connect_value(self, client):
        """The access map's Connect: value for the client (looked up once per name)."""
        hit = client.cache.get("connect")
        if hit is not None and hit[0] == client.name:
            return hit[1]
        name_keys = domain_keys(client.name) if client.name else []
        value = self.lookup("Connect", name_keys)
        if value is None:
            value = self.lookup("Connect", address_keys(addr_macro(client.addr)))
        client.cache["connect"] = (client.name, value)
        return value

    def reject_log(self, ruleset, arg, client, verdict):
        what = "discard" if verdict.discard else "reject=%s" % verdict.reply
        self.log("ruleset=%s, arg1=%s, relay=%s, %s" % (ruleset, arg, self.relay_name(client),
                                                        what))

    # ---- the stages
    def check_connect(self, client):
        self.define(client)
        if self.has["check_relay"]:
            return self._verdict(self.rscheck("check_relay", self.client_name(client),
                                              addr_macro(client.addr), client))
        if self.cf_mode:
            return Verdict()
        value = self.connect_value(client)
        if value is None:
            return Verdict()
        kind, reply = Access.meaning(value, "")
        v = Verdict(reply, discard=kind == "discard")
        if reply is not None or v.discard:
            self.reject_log("check_relay", self.client_name(client), client, v)
        return v

    def check_helo(self, client, helo):
        client.helo = helo
        return Verdict()

    def check_mail(self, client, sender, params=None):
        self.define(client)
        m = self.rules.macros
        shown = "<%s>" % show(sender)
        m["mail_from"] = "<%s>" % sender
        m["f"] = sender or "<>"
        p = None
        if sender:
            p = self._parse(sender, True)
            if p.kind in ("unparsable", "syserr"):
                return Verdict(reply_of_text(p.reply, shown + "... "))
        self.define_triple("mail", p)
        m["addr_type"] = "e s"
        try:
            if self.has["check_mail"]:
                return self._verdict(self.rscheck("check_mail", "<%s>" % sender,
                                                  client=client, prefix=shown + "... "))
            if self.cf_mode or not sender:
                return Verdict()        # RFC 1123: <> is always accepted
            v = self.builtin_mail(client, sender, shown + "... ")
            if v.reply is not None or v.discard:
                self.reject_log("check_mail", "<%s>" % sender, client, v)
            return v
        finally:
            m.pop("addr_type", None)

    def builtin_mail(self, client, sender, prefix):
        local, domain = split_address(sender)
        if domain:
            value = self.lookup("From", user_keys(local, domain)
                                + user_keys(local, "", False) + domain_keys(domain))
        else:
            value = self.lookup("From", user_keys(local, "", False))
            if value is None and not self.client_may_relay(client):
                return Verdict(Reply(553, "5.5.4", prefix + "Domain name required for "
                                     "sender address " + show(sender)))
        if value is None:
            return Verdict()
        kind, reply = Access.meaning(value, prefix)
        return Verdict(reply, discard=kind == "discard")

    def check_rcpt(self, client, sender, rcpt, params=None):
        self.define(client)
        m = self.rules.macros
        m["mail_from"] = "<%s>" % (sender or "")
        m["f"] = sender or "<>"
        prefix = "<%s>... " % show(rcpt)
        if not rcpt.strip() or rcpt.strip() == "<>":
            return Verdict(Reply(553, "5.0.0", prefix + "User address required"))
        p = self._parse(rcpt, False)
        if p.kind in ("unparsable", "syserr"):
            return Verdict(reply_of_text(p.reply, prefix))
        self.define_triple("rcpt", p)
        relay = self.is_remote(p)
        m["addr_type"] = "e r"
        try:
            if self.cf_mode:
                result = self.rscheck("check_rcpt", "<%s>" % rcpt, client=client,
                                      prefix=prefix)
                if result is not None:
                    return self._verdict(result, relay)
            else:
                v = self.builtin_rcpt(client, rcpt, p, relay, prefix)
                if v is not None:
                    self.reject_log("check_rcpt", "<%s>" % rcpt, client, v)
                    return v
        finally:
            m.pop("addr_type", None)
        return self.recipient(p, relay, prefix)

    def _parse(self, addr, sender):
        """rules.parse; remembered by the router's context when the built-in policy
        decides (then no session macro can change the result)."""
        if self.cf_mode:
            return self.rules.parse(addr, sender=sender)
        return self.ctx.route(addr, sender)

    # ---- built-in relay decision
    def is_remote(self, p):
        if p.mailer in ("error", "discard") or p.mailer in DIRECT:
            return False
        return "l" not in (p.flags or "")

    def client_may_relay(self, client):
        """Loopback, authenticated, in $=w or relay-domains (address or name), or
        Connect:...RELAY."""
        if addr_macro(client.addr) in ("127.0.0.1", "IPv6:::1") or client.auth_type:
            return True
        a = addr_macro(client.addr)
        local = self.local_names()
        if "[%s]" % a.lower() in local:
            return True
        if any(k.lower() in self.relay_domains for k in address_keys(a)):
            return True
        if client.name and (client.resolve or "OK") == "OK":
            names = domain_keys(client.name)
            if names and names[0] in local:
                return True
            if any(k in self.relay_domains for k in names):
                return True
        value = self.connect_value(client)
        return value is not None and value.strip().upper() == "RELAY"

    def builtin_rcpt(self, client, rcpt, p, relay, prefix):
        """To: lookups and the relay rule; None when the recipient may go on."""
        local, domain = split_address(rcpt)
        if relay:
            host = (p.host or "").lower().rstrip(".")
            dest_local, dest_domain = split_address(p.user) if "@" in p.user else (p.user, host)
            dest_domain = dest_domain or host
        else:
            host, dest_local, dest_domain = "", local, domain
        keys = []
        if dest_domain:
            keys += user_keys(dest_local, dest_domain)
        keys += user_keys(dest_local, "", False)
        keys += domain_keys(dest_domain or "")
        if host and host != dest_domain:
            keys += domain_keys(host)
        value = self.lookup("To", keys)
        kind, reply = Access.meaning(value, prefix, strict=False) if value else (None, None)
        if kind in ("reject", "error"):
            return Verdict(reply, relay=relay)
        if kind == "discard":
            return Verdict(discard=True, relay=relay)
        if not relay or kind == "relay":
            return None
        local_names = self.local_names()
        hosts = domain_keys(host)
        if hosts and hosts[0] in local_names:
            return None
        if any(h in self.relay_domains for h in hosts):
            return None
        if self.client_may_relay(client):
            return None
        return Verdict(self.relay_denied(client, prefix), relay=True)

    def relay_denied(self, client, prefix):
        """m4's Basic_check_rcpt words: with AUTH, "Proper authentication required.";
        else after {client_resolve}: TEMP 450, FORGED/FAIL name the client."""
        text = self.relay_text
        if text == "Relaying denied":
            resolve = client.resolve or ("OK" if client.name else "FAIL")
            if resolve == "TEMP":
                return Reply(450, "4.4.0", prefix + "Relaying temporarily denied. Cannot "
                             "resolve PTR record for " + addr_macro(client.addr))
            if resolve == "FORGED":
                text += ". IP name possibly forged " + self.client_name(client)
            elif resolve == "FAIL":
                text += ". IP name lookup failed " + self.client_name(client)
        return Reply(550, "5.7.1", prefix + text)

    # ---- recipient(): what delivery would refuse anyway
    def recipient(self, p, relay, prefix):
        if p.mailer == "error":
            return Verdict(reply_of_text(p.reply or "550 5.1.1 User unknown", prefix))
        if p.mailer in DIRECT:
            return Verdict(Reply(550, "5.7.1", prefix + "Cannot mail directly to "
                                 + DIRECT[p.mailer]))
        if not relay and "l" in (p.flags or "") and not self.local_user_known(p.user):
            return Verdict(Reply(550, "5.1.1", prefix + "User unknown"))
        return Verdict(relay=relay)

    def local_user_known(self, user):
        """An alias (also user+* and the user without +detail) or a passwd user; never
        ~/.forward."""
        import pwd
        from ..config import aliases
        name = user.strip().lstrip("\\").strip('"')
        if not name:
            return False
        base, plus, _detail = name.partition("+")
        if base.lower() == "postmaster":
            return True
        paths = aliases.aliases_paths(self.ctx.layout, self.ctx.options or self.options)
        for cand in ([name, base + "+*", base] if plus else [name]):
            if aliases.lookup_value(paths, cand) is not None:
                return True
        for cand in {name, name.lower(), base, base.lower()}:
            try:
                pwd.getpwnam(cand)
                return True
            except (KeyError, ValueError):
                continue
        return False
