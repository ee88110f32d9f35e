"""The SMTP client's host name ({client_name}, the Received field, relay=): as Sendmail.

The address is looked up through the service switch's `hosts` order: `files` (the
HostsFile, default /etc/hosts: 127.0.0.1 is "localhost") and `dns` (a PTR lookup,
then the name's A/AAAA records must contain the address again, else the name is
"may be forged": Sendmail's forward-confirmed reverse DNS). Loopback addresses are
never sent to a name server. Answers are cached (bounded, 10 minutes), so a busy
client costs one lookup per cache period; the DNS lookup is asynchronous (dnspython's
asyncio resolver), so a slow name server delays only its own client's greeting.
A client without a name is shown as "[addr]" (Sendmail's {client_name} then).
"""
import asyncio
import os
import time

from ..config.canon import HostsFile, read_switch

CACHE_MAX = 10000
CACHE_TTL = 600.0
LOOKUP_TIMEOUT = 5.0


def is_loopback(addr):
    return addr.startswith("127.") or addr == "::1"


class ClientNames:
    def __init__(self, options, resolv_confs):
        self.options = options
        self.resolv_confs = resolv_confs
        self.hosts_path = options.get("HostsFile") or "/etc/hosts"
        services = read_switch(options.get("ServiceSwitchFile") or "/etc/mail/service.switch")
        self.order = services.get("hosts") or ["dns", "files"]
        self._hosts = None
        self._hosts_stamp = None
        self._hosts_checked = 0.0
        self.cache = {}
        self._resolver = None

    def _hosts_file(self):
        now = time.monotonic()
        if self._hosts is None or now - self._hosts_checked > 5:
            self._hosts_checked = now
            try:
                st = os.stat(self.hosts_path)
                stamp = (st.st_mtime_ns, st.st_size)
            except OSError:
                stamp = None
            if stamp != self._hosts_stamp or self._hosts is None:
                self._hosts_stamp = stamp
                self._hosts = HostsFile(self.hosts_path)
        return self._hosts

    def cached(self, addr):
        """The name if it is known without waiting ("" for none), else None."""
        hit = self.cache.get(addr)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        if "files" in self.order or is_loopback(addr):
            name = self._hosts_file().canonical("[%s]" % addr)
            if name:
                return name
        if is_loopback(addr) or "dns" not in self.order:
            return ""
        return None

    async def lookup(self, addr):
        name = self.cached(addr)
        if name is not None:
            return name
        try:
            name = await asyncio.wait_for(self._dns(addr), LOOKUP_TIMEOUT)
        except (asyncio.TimeoutError, Exception):
            name = ""
        if len(self.cache) >= CACHE_MAX:
            self.cache.clear()
        self.cache[addr] = (name, time.monotonic() + CACHE_TTL)
        return name

    def resolver(self):
        if self._resolver is None:
            import dns.asyncresolver
            from ..config.canon import system_resolver
            r = system_resolver(self.resolv_confs, dns.asyncresolver)[0]
            r.timeout = 2.0
            r.lifetime = LOOKUP_TIMEOUT
            self._resolver = r
        return self._resolver

    async def _dns(self, addr):
        import dns.exception
        import dns.reversename
        r = self.resolver()
        try:
            answer = await r.resolve(dns.reversename.from_address(addr), "PTR", search=False)
        except dns.exception.DNSException:
            return ""
        name = str(answer[0].target).rstrip(".")
        qtype = "AAAA" if ":" in addr else "A"
        try:
            forward = await r.resolve(name + ".", qtype, search=False)
        except dns.exception.DNSException:
            return ""
        if any(rr.address == addr for rr in forward):
            return name
        return ""
