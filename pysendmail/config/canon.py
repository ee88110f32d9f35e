"""Host canonicalisation: Sendmail's getcanonname() through the service switch.

`make_canonify(options, services, resolv_confs)` gives `canonify(host)`, what the
rewriting rules' `$[ host $]` and `-bt`'s /canon use: the canonical name of a host, or
None when no service knows it; a temporary failure raises maps.TempFail.  The services
are tried in the order of the `hosts` line of the service switch (the ServiceSwitchFile
option, default /etc/mail/service.switch; without that file Sendmail's own order,
"dns files"):

  files   the HostsFile option (default /etc/hosts): the first name of the line that
          names the host, or of the line of the [address];
  dns     dnspython, as Sendmail's dns_getcanonname(): the name as given, then (option
          RES_DNSRCH, or RES_DEFNAMES for a name without a dot) with the resolver's
          search list; for each, A (AAAA first with ResolverOptions use_inet6), then MX
          unless HasWildcardMX; CNAMEs followed (their target is canonical).  A domain
          literal [addr] is looked up by its PTR record.  Server failures and timeouts
          are temporary (EX_TEMPFAIL: the address is queued and routed again later);
          NXDOMAIN everywhere means "not found".  The resolver configuration is the
          first of resolv_confs that exists (a private instance's etc/resolv.conf, then
          /etc/resolv.conf); ResolverOptions: [+-]DEFNAMES, [+-]DNSRCH, [+-]AAONLY
          (accepted), use_inet6, HasWildcardMX, WorkAroundBrokenAAAA; the timeouts are
          Timeout.resolver.retrans and Timeout.resolver.retry (default: resolv.conf's
          options timeout: and attempts:, else 5 s and 2, as glibc's resolver).

`canonify.dns.mx(host)` is getmxrr() for -bt's /mx.  `canonify.hostent(name)` is the
files service's view of a name (its canonical name,
aliases and IPv4 addresses), which myhostname() uses for $w, $j and $=w.  dnspython is
imported on the first DNS lookup only.
"""
import os

from .maps import TempFail


def read_table(path, quiet=False):
    """A text file's lines as lists of words, `#` comments dropped; OSError or [] (quiet)."""
    try:
        with open(path, "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except OSError:
        if quiet:
            return []
        raise
    return [w for w in (ln.split("#", 1)[0].split() for ln in data.splitlines()) if w]


def read_switch(path):
    """The service switch file: {service: [source, ...]} ({} when there is no file)."""
    return {r[0].rstrip(":"): r[1:] for r in read_table(path, quiet=True)}


class HostsFile:
    """The `files` service over one hosts file."""

    def __init__(self, path):
        self.lines = read_table(path, quiet=True)
        self.names, self.addrs = {}, {}
        for parts in self.lines:
            if len(parts) > 1:
                self.addrs.setdefault(parts[0].lower(), parts[1])
                for n in parts[1:]:
                    self.names.setdefault(n.lower(), parts[1])

    def canonical(self, host):
        if host.startswith("[") and host.endswith("]"):
            a = host[1:-1].lower()
            return self.addrs.get(a[5:] if a.startswith("ipv6:") else a)
        return self.names.get(host.lower().rstrip("."))

    def hostent(self, name):
        rows = [r for r in self.lines if ":" not in r[0] and name.lower() in
                (n.lower() for n in r[1:])]
        return rows and (rows[0][1], [a for r in rows for a in r[2:]], [r[0] for r in rows])


def _seconds(text, default):
    from .options import parse_interval
    try:
        return parse_interval(text, "s") if text else default
    except ValueError:
        return default


def _resolv_options(path):
    """(timeout, attempts) from a resolv.conf's options line; glibc's 5 and 2 without."""
    timeout, attempts = 5, 2
    try:
        with open(path or "/etc/resolv.conf") as f:
            for line in f:
                words = line.split()
                if words[:1] != ["options"]:
                    continue
                for w in words[1:]:
                    name, _, value = w.partition(":")
                    if value.isdigit() and name == "timeout":
                        timeout = max(int(value), 1)
                    elif value.isdigit() and name == "attempts":
                        attempts = max(int(value), 1)
    except OSError:
        pass
    return timeout, attempts


def system_resolver(resolv_confs, module=None):
    """A dnspython resolver (module: dns.resolver, or dns.asyncresolver) from the first of
    `resolv_confs` that exists (none: no name server at all, never the machine's), and
    that file's (timeout, attempts): (resolver, timeout, attempts)."""
    if module is None:
        import dns.resolver as module
    conf = next((p for p in resolv_confs if os.path.exists(p)), None)
    r = module.Resolver(filename=conf) if conf else module.Resolver(configure=False)
    timeout, attempts = _resolv_options(conf)
    return r, timeout, attempts


class Dns:
    """The `dns` service (see the module docstring)."""

    def __init__(self, options, resolv_confs):
        self.options = options
        self.resolv_confs = resolv_confs
        self._resolver = None
        flags = {"defnames": True, "dnsrch": True}
        words = (options.get("ResolverOptions") or "").split()
        for w in words:
            sign, name = (w[0], w[1:]) if w[:1] in "+-" else ("+", w)
            flags[name.lower()] = sign == "+"
        self.defnames, self.dnsrch = flags["defnames"], flags["dnsrch"]
        self.inet6 = flags.get("use_inet6", False)
        self.wildcard_mx = flags.get("haswildcardmx", False)

    def resolver(self):
        if self._resolver is None:
            # Unset, the resolver's own settings apply, as for Sendmail (res_init):
            # resolv.conf's "options timeout:N attempts:N", else 5 s and 2 tries.
            r, conf_timeout, conf_attempts = system_resolver(self.resolv_confs)
            retrans = _seconds(self.options.get("Timeout.resolver.retrans"), conf_timeout)
            retry = _seconds(self.options.get("Timeout.resolver.retry"), conf_attempts) or 1
            r.timeout = retrans
            r.lifetime = retrans * retry
            self._resolver = r
        return self._resolver

    def candidates(self, host):
        if host.endswith("."):
            return [host]
        search = [str(d).rstrip(".") for d in (self.resolver().search or [])]
        if "." in host:
            return [host + "."] + ([host + "." + d + "." for d in search] if self.dnsrch else [])
        if self.dnsrch:
            return [host + "." + d + "." for d in search] + [host + "."]
        if self.defnames and search:
            return [host + "." + search[0] + "."]
        return [host + "."]

    def canonical(self, host):
        import dns.exception
        import dns.resolver
        r = self.resolver()
        temp = False
        if host.startswith("[") and host.endswith("]"):
            import dns.reversename
            addr = host[1:-1]
            addr = addr[5:] if addr.lower().startswith("ipv6:") else addr
            try:
                name = dns.reversename.from_address(addr)
                answer = r.resolve(name, "PTR", search=False)
                return str(answer[0].target).rstrip(".")
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, ValueError):
                return None
            except (dns.exception.Timeout, dns.resolver.NoNameservers):
                raise TempFail(host)
        types = (["AAAA"] if self.inet6 else []) + ["A"] + ([] if self.wildcard_mx else ["MX"])
        for name in self.candidates(host):
            for qtype in types:
                try:
                    answer = r.resolve(name, qtype, search=False)
                except dns.resolver.NXDOMAIN:
                    break                       # no such name: the next candidate
                except dns.resolver.NoAnswer:
                    continue                    # the name exists: try the next type
                except (dns.exception.Timeout, dns.resolver.NoNameservers):
                    temp = True
                    break
                except dns.resolver.YXDOMAIN:
                    break
                return str(answer.canonical_name).rstrip(".")
        if temp:
            raise TempFail(host)
        return None

    def mx(self, host):
        """Sendmail's getmxrr(): the MX hosts of *host* by preference (names without the
        trailing dot), [host] when the name exists without MX records, None when it
        does not exist or the name servers failed."""
        import dns.exception
        import dns.resolver
        try:
            answer = self.resolver().resolve(host.rstrip(".") + ".", "MX", search=False)
        except dns.resolver.NoAnswer:
            return [host]
        except dns.exception.DNSException:
            return None
        records = sorted((r.preference, str(r.exchange).rstrip(".").lower()) for r in answer)
        return [name for _pref, name in records]


def make_canonify(options, services=None, resolv_confs=("/etc/resolv.conf",)):
    """canonify(host) -> canonical name or None (see the module docstring)."""
    hosts = HostsFile(options.get("HostsFile") or "/etc/hosts")
    if services is None:
        services = read_switch(options.get("ServiceSwitchFile") or "/etc/mail/service.switch")
    order = services.get("hosts") or ["dns", "files"]
    dns_service = Dns(options, resolv_confs) if "dns" in order else None

    def canonify(host):
        temp = None
        for source in order:
            try:
                if source == "files":
                    name = hosts.canonical(host)
                elif source == "dns":
                    name = dns_service.canonical(host)
                else:
                    continue            # nis, nisplus, netinfo: not here
            except TempFail as e:
                temp = e
                continue
            if name:
                return name
        if temp is not None:
            raise temp
        return None

    canonify.hostent = hosts.hostent
    canonify.services = services
    canonify.dns = dns_service      # None when the switch has no dns: -bt's /mx
    return canonify
