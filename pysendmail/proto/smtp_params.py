"""MAIL/RCPT argument parsing for the SMTP server core: paths, ESMTP parameters, xtext.

`parse_mail_args(text, ext)` and `parse_rcpt_args(text, ext)` take what follows
"MAIL"/"RCPT" on a command line and return `(raw, addr, params)`: the address as
the client wrote it (what Sendmail echoes: "<a@b>... Sender ok"), the bare path
(inside the angle brackets, source route dropped; "" for the null sender), and
a dict of decoded parameters keyed by upper-case name:

    MAIL: SIZE (int), BODY ("7BIT"/"8BITMIME"), SMTPUTF8 (True), RET ("FULL"/"HDRS"),
          ENVID (xtext-decoded str), AUTH (xtext-decoded str)
    RCPT: NOTIFY ("NEVER" or e.g. "SUCCESS,FAILURE"), ORCPT ("rfc822;decoded-address")

`ext` says which extensions are offered (an object with the attributes
`max_size`, `eightbitmime`, `smtputf8`, `dsn`, `auth_param`). Every failure raises
`ReplyError` carrying Sendmail 8.17's reply (srvrsmtp.c: skipword,
mail_esmtp_args, rcpt_esmtp_args; parseaddr's "Unbalanced" family).

Length limits (RFC 5321 4.5.3.1, octets of UTF-8), read from `ext` (0 = none):
`max_path` counts the angle brackets ("553 5.1.0 Address "..." too long (256
bytes max)", Sendmail's parseaddr wording); `max_local_part` ("553 5.1.7
(sender) / 5.1.3 (recipient) <addr>... Local part of address "..." too long (64
bytes max)"); `max_domain`, 255 when `ext` does not say ("553 5.1.8 / 5.1.2
<addr>... Domain of address "..." too long (255 bytes max)"). The RFC makes
these the sizes a server must accept, not must refuse past ("implementation
techniques that impose no limits ... should be used"): the core's defaults
refuse only domains no DNS can hold.

DSN (RFC 3461): ENVID at most 100 characters, ORCPT at most 500, each parameter
at most once ("501 5.5.0 Duplicate X parameter"); ORCPT's utf-8 type takes
RFC 6533 \\x{HEX} escapes of Unicode scalar values only (no surrogates, no
controls, nothing past U+10FFFF).
Pure code.
"""
from .smtp_reply import Reply, show

MAX_PARAMS = 18          # Sendmail: MAXSMTPARGS (20) less the address and the NULL
MAX_PATH = 256           # RFC 5321 4.5.3.1.3, "<" and ">" included
MAX_LOCAL_PART = 64      # RFC 5321 4.5.3.1.1
MAX_DOMAIN = 255         # RFC 5321 4.5.3.1.2 (and RFC 1035's limit on a name)
MAX_ENVID = 100          # RFC 3461 4.4
MAX_ORCPT = 500          # RFC 3461 4.2


class ReplyError(Exception):
    """The client's fault: refuse the command with this reply."""

    def __init__(self, reply):
        super().__init__(str(reply))
        self.reply = reply


def _err(code, enhanced, text):
    return ReplyError(Reply(code, enhanced, text))


# --- xtext (RFC 3461 section 4) ---------------------------------------------

def xtext_ok(value):
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == "+":
            h = value[i + 1:i + 3]
            if len(h) != 2 or any(x not in "0123456789ABCDEFabcdef" for x in h):
                return False
            i += 3
            continue
        if not ("!" <= c <= "~") or c == "=":
            return False
        i += 1
    return True


def xtext_decode(value):
    """Decode xtext; the caller checked it with xtext_ok. Bytes are read as UTF-8."""
    if "+" not in value:
        return value
    out = bytearray()
    i, n = 0, len(value)
    while i < n:
        if value[i] == "+":
            out.append(int(value[i + 1:i + 3], 16))
            i += 3
        else:
            out += value[i].encode("utf-8", "surrogateescape")
            i += 1
    return out.decode("utf-8", "replace")


def _unitext_decode(value):
    """RFC 6533 utf-8-addr-xtext/unitext: xtext plus \\x{HEX} escapes."""
    out, i, n = [], 0, len(value)
    while i < n:
        if value.startswith("\\x{", i):
            end = value.find("}", i)
            hexpart = value[i + 3:end] if end > 0 else ""
            if not hexpart or len(hexpart) > 6 or any(
                    x not in "0123456789ABCDEFabcdef" for x in hexpart):
                return None
            point = int(hexpart, 16)
            if point > 0x10FFFF or 0xD800 <= point <= 0xDFFF or point < 0x20:
                return None
            out.append(chr(point))
            i = end + 1
        elif value[i] == "+":
            h = value[i + 1:i + 3]
            if len(h) != 2 or any(x not in "0123456789ABCDEFabcdef" for x in h):
                return None
            out.append(chr(int(h, 16)))
            i += 3
        elif value[i] < "!" or value[i] == "=" or value[i] == "\x7f" or (
                "\ud800" <= value[i] <= "\udfff"):
            return None
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


# --- the path ----------------------------------------------------------------

def skip_word(text, word):
    """Sendmail's skipword: `text` must be "WORD:" then a non-empty rest.
    Returns the rest with leading blanks removed."""
    p = text.lstrip(" \t")
    i = 0
    while i < len(p) and p[i] != ":" and p[i] not in " \t":
        i += 1
    shown = p[:i]
    j = i
    while j < len(p) and p[j] in " \t":
        j += 1
    if j >= len(p) or p[j] != ":" or shown.lower() != word:
        raise _err(501, "5.5.2", "Syntax error in parameters scanning \"%s\"" % show(shown))
    rest = p[j + 1:].lstrip(" \t")
    if not rest:
        raise _err(501, "5.5.2", "Syntax error in parameters scanning \"%s\"" % show(shown))
    return rest


def scan_path(text):
    """Split `text` into (raw address, bare path, rest of line, path as written
    between the brackets, source route included).

    The address ends at the first blank outside <>, quotes and comments. Errors
    read as Sendmail's parseaddr: `553 5.0.0 <bad<addr>... Unbalanced '<'`.
    """
    depth = 0
    parens = 0
    quoted = False
    i, n = 0, len(text)
    start = end = -1           # the innermost <...> last seen
    opened = []
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            i += 2
            continue
        if quoted:
            if c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif parens:
            if c == "(":
                parens += 1
            elif c == ")":
                parens -= 1
        elif c == "(":
            parens += 1
        elif c == ")":
            raise _addr_err(text, "Unbalanced ')'")
        elif c == "<":
            depth += 1
            opened.append(i)
        elif c == ">":
            if depth == 0:
                raise _addr_err(text[:_blank(text, i)], "Unbalanced '>'")
            depth -= 1
            s = opened.pop()
            if end < 0 or s > start:
                start, end = s, i
        elif c in " \t" and depth == 0:
            break
        i += 1
    raw = text[:i]
    if quoted:
        raise _addr_err(raw, "Unbalanced '\"'")
    if parens:
        raise _addr_err(raw, "Unbalanced '('")
    if depth:
        raise _addr_err(raw, "Unbalanced '<'")
    bare = raw[start + 1:end] if start >= 0 else raw
    path = bare
    if bare.startswith("@"):
        # RFC 5321 4.1.2 source route: "@a,@b:user@c" -> "user@c"
        colon = bare.find(":")
        if colon > 0:
            bare = bare[colon + 1:]
    for c in raw:
        if c < " " or c == "\x7f":
            raise _addr_err(raw, "Illegal character in address", "5.1.3")
    return raw, bare.strip(), text[i:].lstrip(" \t"), path


def _octets(text):
    return len(text.encode("utf-8", "surrogateescape"))


def check_lengths(raw, bare, path, ext, sender):
    """RFC 5321 4.5.3.1.1-3 as `ext` sets them (0 = no limit): the path between
    the angle brackets (source route included) plus 2, the local part, the domain."""
    max_path = getattr(ext, "max_path", 0)
    if max_path and _octets(path) + 2 > max_path:
        raise _err(553, "5.1.0", "Address \"%s\" too long (%d bytes max)"
                   % (show(raw), max_path))
    at = bare.rfind("@")
    if at < 0:
        return
    local, domain = bare[:at], bare[at + 1:]
    max_local = getattr(ext, "max_local_part", 0)
    if max_local and _octets(local) > max_local:
        raise _err(553, "5.1.7" if sender else "5.1.3",
                   "%s... Local part of address \"%s\" too long (%d bytes max)"
                   % (show(raw), show(local), max_local))
    max_domain = getattr(ext, "max_domain", MAX_DOMAIN)
    if max_domain and _octets(domain) > max_domain:
        raise _err(553, "5.1.8" if sender else "5.1.2",
                   "%s... Domain of address \"%s\" too long (%d bytes max)"
                   % (show(raw), show(domain), max_domain))


def _blank(text, i):
    while i < len(text) and text[i] not in " \t":
        i += 1
    return i


def _addr_err(raw, reason, enhanced="5.0.0"):
    return _err(553, enhanced, "%s... %s" % (show(raw), reason))


# --- ESMTP parameters ----------------------------------------------------------

def _split_params(rest):
    out = []
    for token in rest.split():
        key, eq, value = token.partition("=")
        if not key or not all(c.isascii() and (c.isalnum() or c == "-") for c in key):
            raise _err(555, "5.5.4", "%s parameter unrecognized" % show(token))
        out.append((key, value if eq else None))
    if len(out) > MAX_PARAMS:
        raise _err(501, "5.5.4", "Too many parameters")
    return out


def _size(value, params, ext):
    if value is None:
        raise _err(501, "5.5.2", "SIZE requires a value")
    if "SIZE" in params:
        raise _err(501, "5.5.0", "Duplicate SIZE parameter")
    if not value.isdigit() or not value.isascii():
        raise _err(552, "5.2.3", "Message size invalid")
    size = int(value)
    if size >= 2 ** 63:
        raise _err(552, "5.2.3", "Message size exceeds maximum value")
    if ext.max_size and size > ext.max_size:
        raise _err(552, "5.2.3", "Message size exceeds fixed maximum message size (%d)"
                   % ext.max_size)
    params["SIZE"] = size


def _body(value, params, ext):
    if value is None:
        raise _err(501, "5.5.2", "BODY requires a value")
    if "BODY" in params:
        raise _err(501, "5.5.0", "Duplicate BODY parameter")
    upper = value.upper()
    if upper not in ("7BIT", "8BITMIME") or (upper == "8BITMIME" and not ext.eightbitmime):
        raise _err(501, "5.5.4", "Unknown BODY type %s" % show(value))
    params["BODY"] = upper


def _envid(value, params, ext):
    if not ext.dsn:
        raise _err(504, "5.7.0", "Sorry, ENVID not supported, we do not allow DSN")
    if value is None:
        raise _err(501, "5.5.2", "ENVID requires a value")
    if not xtext_ok(value) or len(value) > MAX_ENVID:
        raise _err(501, "5.5.4", "Syntax error in ENVID parameter value")
    if "ENVID" in params:
        raise _err(501, "5.5.0", "Duplicate ENVID parameter")
    params["ENVID"] = xtext_decode(value)


def _ret(value, params, ext):
    if not ext.dsn:
        raise _err(504, "5.7.0", "Sorry, RET not supported, we do not allow DSN")
    if value is None:
        raise _err(501, "5.5.2", "RET requires a value")
    if "RET" in params:
        raise _err(501, "5.5.0", "Duplicate RET parameter")
    if value.upper() not in ("FULL", "HDRS"):
        raise _err(501, "5.5.2", "Bad argument \"%s\" to RET" % show(value))
    params["RET"] = value.upper()


def _smtputf8(value, params, ext):
    if not ext.smtputf8:
        raise _err(504, "5.7.0", "Sorry, SMTPUTF8 not supported")
    params["SMTPUTF8"] = True


def _auth(value, params, ext):
    if not ext.auth_param:
        raise _err(555, "5.5.4", "AUTH parameter unrecognized")
    if value is None:
        raise _err(501, "5.5.2", "AUTH= requires a value")
    if "AUTH" in params:
        raise _err(501, "5.5.0", "Duplicate AUTH parameter")
    if not xtext_ok(value):
        raise _err(501, "5.5.4", "Syntax error in AUTH parameter value")
    params["AUTH"] = xtext_decode(value)


def _notify(value, params, ext):
    if not ext.dsn:
        raise _err(504, "5.7.0", "Sorry, NOTIFY not supported, we do not allow DSN")
    if value is None:
        raise _err(501, "5.5.2", "NOTIFY requires a value")
    if "NOTIFY" in params:
        raise _err(501, "5.5.0", "Duplicate NOTIFY parameter")
    words = value.upper().split(",")
    if words == ["NEVER"]:
        params["NOTIFY"] = "NEVER"
        return
    for word, given in zip(words, value.split(",")):
        if word not in ("SUCCESS", "FAILURE", "DELAY"):
            # Sendmail's text, double blank included.
            raise _err(501, "5.5.4", "Bad argument \"%s\"  to NOTIFY" % show(given))
    params["NOTIFY"] = ",".join(dict.fromkeys(words))


def _orcpt(value, params, ext):
    if not ext.dsn:
        raise _err(504, "5.7.0", "Sorry, ORCPT not supported, we do not allow DSN")
    if value is None:
        raise _err(501, "5.5.2", "ORCPT requires a value")
    if "ORCPT" in params:
        raise _err(501, "5.5.0", "Duplicate ORCPT parameter")
    kind, semi, addr = value.partition(";")
    bad = _err(501, "5.5.4", "Syntax error in ORCPT parameter value")
    if len(value) > MAX_ORCPT or not semi or not kind or not all(
            c.isascii() and (c.isalnum() or c in "-_.") for c in kind):
        raise bad
    if kind.lower() == "utf-8":
        decoded = _unitext_decode(addr)
        if decoded is None:
            raise _err(501, "5.5.4", "Syntax error in UTF-8 ORCPT parameter value")
    else:
        if not xtext_ok(addr):
            raise bad
        decoded = xtext_decode(addr)
    params["ORCPT"] = "%s;%s" % (kind, decoded)


# The parameter tables: keyword -> handler (data, not code paths).
MAIL_PARAMS = {"SIZE": _size, "BODY": _body, "ENVID": _envid, "RET": _ret,
               "SMTPUTF8": _smtputf8, "AUTH": _auth}
RCPT_PARAMS = {"NOTIFY": _notify, "ORCPT": _orcpt}


def _apply(table, rest, ext):
    params = {}
    for key, value in _split_params(rest):
        handler = table.get(key.upper())
        if handler is None:
            raise _err(555, "5.5.4", "%s parameter unrecognized" % show(key))
        handler(value, params, ext)
    return params


def _check_utf8(raw, params):
    if raw.isascii():
        return
    if not params.get("SMTPUTF8"):
        raise _err(553, "5.6.7", "Address requires SMTPUTF8")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise _err(553, "5.6.7", "Address not valid UTF8") from None


def parse_mail_args(text, ext):
    """`text` is what follows the MAIL verb: " FROM:<a@b> SIZE=10"."""
    rest = skip_word(text, "from")
    raw, bare, rest, path = scan_path(rest)
    check_lengths(raw, bare, path, ext, True)
    params = _apply(MAIL_PARAMS, rest, ext)
    _check_utf8(raw, params)
    return raw, bare, params


def parse_rcpt_args(text, ext, smtputf8=False):
    """`text` is what follows the RCPT verb; `smtputf8` whether MAIL asked for it."""
    rest = skip_word(text, "to")
    raw, bare, rest, path = scan_path(rest)
    if not bare:
        raise _err(501, "5.0.0", "Missing recipient")
    check_lengths(raw, bare, path, ext, False)
    params = _apply(RCPT_PARAMS, rest, ext)
    _check_utf8(raw, {"SMTPUTF8": smtputf8})
    return raw, bare, params
