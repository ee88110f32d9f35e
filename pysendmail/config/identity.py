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
    """$j (canonical name), $w (short name), $m (domain) for headers and logs; which names
    are local ($=w) is decided by the cf's rules (config/rules.py)."""

    __slots__ = ("w", "j", "m")

    def __init__(self, j):
        self.j = j.rstrip(".")
        self.w = self.j.split(".", 1)[0]
        self.m = self.j.split(".", 1)[1] if "." in self.j else ""


def detect(cf=None, hosts_file="/etc/hosts"):
    j = None
    if cf is not None:
        j = cf.macros.get("j")
        if j and "$" in j:
            j = None
    if not j:
        node = os.uname().nodename or "localhost"
        j = node if "." in node else (_hosts_fqdn(node, hosts_file) or node)
    return Identity(j)
