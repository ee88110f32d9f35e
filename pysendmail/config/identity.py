"""The host's identity: $w (short name), $j (canonical name), $m (domain), without DNS.

Sendmail asks the resolver for the canonical name; the submission path must not
(it costs a `socket` import and may hang without DNS). We use the node name, and
when that is unqualified, the first qualified alias of it in /etc/hosts — the
"files" half of Sendmail's lookup. The cf's `Dj` overrides.
"""
import os


def _hosts_fqdn(short, hosts_file="/etc/hosts"):
    try:
        with open(hosts_file, "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    for line in data.splitlines():
        names = line.split("#", 1)[0].split()[1:]
        lowered = [n.lower() for n in names]
        if short.lower() in lowered or any(n.split(".", 1)[0] == short.lower() for n in lowered):
            for n in names:
                if "." in n and n.split(".", 1)[0].lower() == short.lower():
                    return n
    return None


class Identity:
    __slots__ = ("w", "j", "m", "local_names", "smart_host")

    def __init__(self, j, smart_host=""):
        self.smart_host = smart_host
        self.j = j.rstrip(".")
        self.w = self.j.split(".", 1)[0]
        self.m = self.j.split(".", 1)[1] if "." in self.j else ""
        self.local_names = {self.j.lower(), self.w.lower(), "localhost",
                            "localhost.localdomain", "[127.0.0.1]", "[ipv6:::1]"}

    def is_local(self, domain):
        d = domain.lower().rstrip(".")
        return d == "" or d in self.local_names


def detect(cf=None, hosts_file="/etc/hosts"):
    j = None
    if cf is not None:
        j = cf.macros.get("j")
        if j and "$" in j:
            j = None
    if not j:
        node = os.uname().nodename or "localhost"
        j = node if "." in node else (_hosts_fqdn(node, hosts_file) or node)
    ident = Identity(j, (cf.macros.get("S") or "").strip() if cf is not None else "")
    if cf is not None:
        for name in cf.class_w:
            ident.local_names.add(name.lower())
        for path in cf.class_w_files:
            try:
                with open(path, "rb") as f:
                    for line in f.read().decode("utf-8", "replace").splitlines():
                        line = line.split("#", 1)[0].strip()
                        if line:
                            ident.local_names.add(line.lower())
            except OSError:
                pass
    return ident
