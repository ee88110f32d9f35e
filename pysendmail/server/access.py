"""The access map's language, shared by the policy's checks: keys and values.

Keys as Sendmail's access_db looks them up: an IP address and its prefixes
(192.0.2.7, 192.0.2, 192.0, 192; IPv6: tagged "IPv6:"), a host name and its parent
domains (mail.example.org, example.org, org), an address with its user@ and
domain forms; values OK, RELAY, REJECT, DISCARD, SKIP and ERROR:[x.y.z:]NNN text,
turned into SMTP replies (`Access.meaning`, `error_reply`, `reply_of_text`).
Pure functions and one small class: no I/O.
"""
from ..proto.smtp_reply import Reply, is_status


_ADDR_MACROS = {}      # addr_macro's answers (a daemon sees few distinct clients at once)


def addr_macro(addr):
    """{client_addr} as Sendmail writes it: dotted IPv4, "IPv6:" + the compressed
    IPv6 text; an IPv4-mapped IPv6 address as its IPv4 form."""
    hit = _ADDR_MACROS.get(addr)
    if hit is None:
        if len(_ADDR_MACROS) > 4096:
            _ADDR_MACROS.clear()
        hit = _ADDR_MACROS[addr] = _addr_macro(addr)
    return hit


def _addr_macro(addr):
    import ipaddress
    a = (addr or "").strip().strip("[]")
    if a[:5].lower() == "ipv6:":
        a = a[5:]
    try:
        ip = ipaddress.ip_address(a.split("%", 1)[0])
    except ValueError:
        return a
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip) if ip.version == 4 else "IPv6:" + ip.compressed


def relay_field(client_name, client_addr, forged=False):
    """Sendmail's $_ and relay= value: "host [192.0.2.1]", "[IPv6:2001:db8::1]",
    "... (may be forged)". The one place the logs, the Received field and the
    rulesets' $_ get it from."""
    literal = "[%s]" % addr_macro(client_addr)
    text = literal
    if client_name and client_name.strip("[]") != client_addr and client_name != literal:
        text = "%s %s" % (client_name, literal)
    if forged:
        text += " (may be forged)"
    return text


def is_loopback(addr):
    import ipaddress
    a = addr_macro(addr)
    try:
        return ipaddress.ip_address(a[5:] if a.startswith("IPv6:") else a).is_loopback
    except ValueError:
        return False


def address_keys(a):
    """Sendmail's LookUpAddress order: 192.0.2.7, 192.0.2, 192.0, 192 (IPv6: the last
    group dropped each time, "::" with it)."""
    keys = [a]
    while True:
        j = len(a)
        while j > 0 and (a[j - 1].isalnum()):
            j -= 1
        head = a[:j]
        for sep in ("::", ":", "."):
            if head.endswith(sep) and len(head) > len(sep) and j < len(a):
                a = head[:-len(sep)]
                keys.append(a)
                break
        else:
            return keys


def domain_keys(host):
    """A host and its parent domains: a.b.example.org, b.example.org, example.org, org."""
    host = host.lower().rstrip(".")
    if not host:
        return []
    if host.startswith("["):
        return [host]
    parts = host.split(".")
    return [".".join(parts[i:]) for i in range(len(parts)) if all(parts[i:])]


def split_address(text):
    """(local, domain) of a bare address: the domain lower-cased, trailing dots and one
    pair of angle brackets removed; domain "" for an unqualified one."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    local, at, domain = text.rpartition("@")
    if not at:
        return text, ""
    return local, domain.lower().rstrip(".")


def user_keys(local, domain, tag_full=True):
    """LookUpFull's (user@domain, user+*@domain, user@domain without +detail) and
    LookUpUser's (user@, user+*@, user@) keys."""
    base, plus, _detail = local.partition("+")
    suffix = "@" + domain if tag_full else "@"
    keys = [local + suffix]
    if plus:
        keys += [base + "+*" + suffix, base + suffix]
    return keys


def error_reply(status, text, prefix=""):
    """buildaddr()'s error mailer: *text* "NNN [x.y.z] words" (quotes dropped) or plain
    words (then 553 and 5.3.0); *status* the $@ part when it is a DSN status."""
    text = (text or "").replace('"', "").strip()
    status = status if is_status(status) else ""
    if len(text) > 4 and text[:3].isdigit() and text[0] in "2345" and text[3] == " ":
        code, rest = int(text[:3]), text[4:].strip()
        word, _, after = rest.partition(" ")
        if is_status(word):
            status, rest = word, after
        elif not status:
            status = text[0] + ".0.0"
    else:
        code, rest = 553, text
        status = status or "5.3.0"
    if code < 400:
        code, status = 553, "5.3.0"
    return Reply(code, status, prefix + rest)


def reply_of_text(reply_text, prefix):
    """A Parsed.reply ("550 5.1.1 User unknown") as a Reply with the "<addr>... " prefix."""
    code, _, rest = reply_text.partition(" ")
    status, _, words = rest.partition(" ")
    if not is_status(status):
        status, words = "", rest
    return error_reply(status, "%s %s" % (code, words) if code.isdigit() else reply_text,
                       prefix)


class Access:
    """What an access-map value means (as m4's rulesets read it): (kind, reply) with kind
    ok, relay, reject, discard, error (reply set) or None (no decision)."""

    @staticmethod
    def meaning(value, prefix, strict=True):
        v = value.strip()
        up = v.upper()
        if up == "OK" or up.startswith("QUARANTINE:"):
            return "ok", None
        if up == "RELAY":
            return "relay", None
        if up == "REJECT":
            return "reject", Reply(550, "5.7.1", prefix + "Access denied")
        if up == "DISCARD":
            return "discard", None
        if up.startswith("ERROR:"):
            rest = v[6:]
            head, sep, tail = rest.partition(":")
            if sep and is_status(head):
                return "error", error_reply(head, tail, prefix)
            return "error", error_reply("", rest, prefix)
        if strict and v:
            return "error", error_reply("", v, prefix)
        return None, None


# ------------------------------------------------------------------ the policy
