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
mail_esmtp_args, rcpt_esmtp_args; parseaddr's "Unbalanced" family). Pure code.
"""
from .smtp_reply import Reply, show

MAX_PARAMS = 18          # Sendmail: MAXSMTPARGS (20) less the address and the NULL


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
            out.append(chr(int(hexpart, 16)))
            i = end + 1
        elif value[i] == "+":
            h = value[i + 1:i + 3]
            if len(h) != 2 or any(x not in "0123456789ABCDEFabcdef" for x in h):
                return None
            out.append(chr(int(h, 16)))
            i += 3
        elif value[i] < "!" or value[i] == "=" or value[i] == "\x7f":
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
    """Split `text` into (raw address, bare path, rest of line).

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
    if bare.startswith("@"):
        # RFC 5321 4.1.2 source route: "@a,@b:user@c" -> "user@c"
        colon = bare.find(":")
        if colon > 0:
            bare = bare[colon + 1:]
    for c in raw:
        if c < " " or c == "\x7f":
            raise _addr_err(raw, "Illegal character in address", "5.1.3")
    return raw, bare.strip(), text[i:].lstrip(" \t")


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
    upper = value.upper()
    if upper not in ("7BIT", "8BITMIME") or (upper == "8BITMIME" and not ext.eightbitmime):
        raise _err(501, "5.5.4", "Unknown BODY type %s" % show(value))
    params["BODY"] = upper


def _envid(value, params, ext):
    if not ext.dsn:
        raise _err(504, "5.7.0", "Sorry, ENVID not supported, we do not allow DSN")
    if value is None:
        raise _err(501, "5.5.2", "ENVID requires a value")
    if not xtext_ok(value) or len(value) > 100:
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
    if not semi or not kind or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in kind):
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
    raw, bare, rest = scan_path(rest)
    params = _apply(MAIL_PARAMS, rest, ext)
    _check_utf8(raw, params)
    return raw, bare, params


def parse_rcpt_args(text, ext, smtputf8=False):
    """`text` is what follows the RCPT verb; `smtputf8` whether MAIL asked for it."""
    rest = skip_word(text, "to")
    raw, bare, rest = scan_path(rest)
    if not bare:
        raise _err(501, "5.0.0", "Missing recipient")
    params = _apply(RCPT_PARAMS, rest, ext)
    _check_utf8(raw, {"SMTPUTF8": smtputf8})
    return raw, bare, params
