"""Rewrite the addresses in address header fields as a message is written for a mailer.

Sendmail's putheader() hands every sender field (H_FROM) and recipient field (H_RCPT)
to commaize(): the value is split into its list elements, each element is translated by
the mailer's rulesets (remotename(): crackaddr plus rulesets 3, 1/2, S=/R=, 4), and the
field is written again as "Name: e1, e2" folded to the mailer's line limit.  This module
is that split-translate-refold step; the translation itself is the caller's `rewrite`
callback, so it is pure (no I/O, no configuration) and the delivery agents share it.

What it keeps from Sendmail (headers.c commaize(), conf.c HdrInfo, 8.14-8.17):
  - the field table below (return-receipt-to is H_RECEIPTTO there, not an address field);
  - elements split at commas outside quoted strings, comments and angle brackets,
    surrounding white space stripped, empty elements dropped, an element the rewrite
    empties dropped too;
  - the output "Name:" + the value's leading white space as that many spaces + elements
    joined by ", "; before an element that would take the line past omax columns (omax =
    the mailer's L= minus 2, at most 78) the line ends with "," and the next begins with
    eight spaces.  The first element never moves, and a folded line may end at column 79
    with its comma (Sendmail counts the comma after the fold decision: same here);
  - line breaks inside an element become nothing (RFC 5322 unfolding) before the rewrite;
    a line break in what the rewrite returns becomes a space (Sendmail's denlstring()).

Where it differs, by design:
  - groups.  Sendmail's prescan splits "g: a@x, b@y;" into "g: a@x" and "b@y;" and
    crackaddr copes.  Here a group is recognised (a top-level ':' whose phrase has no '@'
    and no '<', later closed by a top-level ';'): its phrase is kept as written, each member
    goes to the rewrite alone, and it is written "phrase: m1, m2;" ("phrase:;" when empty,
    so "undisclosed-recipients:;" is unchanged).  Text after the ';' up to the next comma
    (a comment, say) is kept after it.  A ':' never closed by ';' is no group: the value is
    split as if the ':' were an ordinary character, like Sendmail;
  - a value that does not parse (unbalanced quote, comment or angle bracket, a trailing
    backslash) leaves the field exactly as it was (Sendmail would write its best guess).

Bytes that are not UTF-8 go through as surrogate escapes and come back out unchanged.
Which fields Sendmail leaves out at this point (Bcc: truncated or deleted, Resent-* without
EF_RESENT, ?F? conditions) is putheader()'s business, not this module's: the caller drops
or empties those fields first.
"""

# Sendmail 8.17 conf.c HdrInfo: the fields commaize() rewrites.  H_FROM fields are
# rewritten as senders (RF_SENDERADDR), H_RCPT ones as recipients.
FROM = "from"
RCPT = "rcpt"
FIELD_KINDS = {
    "resent-sender": FROM,
    "resent-from": FROM,
    "resent-reply-to": FROM,
    "sender": FROM,
    "from": FROM,
    "reply-to": FROM,
    "errors-to": FROM,
    "disposition-notification-to": FROM,
    "to": RCPT,
    "resent-to": RCPT,
    "cc": RCPT,
    "resent-cc": RCPT,
    "bcc": RCPT,
    "resent-bcc": RCPT,
    "apparently-to": RCPT,
}
# H_BCC in the same table: putheader() truncates ("Bcc:") or deletes these before commaize.
BCC_FIELDS = frozenset({"bcc", "resent-bcc"})

DEFAULT_OMAX = 78           # commaize's ceiling on the output column
CONTINUATION = " " * 8      # what commaize starts a continuation line with
_WSP = " \t\r\n\f\v"        # what C's isspace() takes for white space (ASCII)


class Group:
    """An RFC 5322 group in an address list: `phrase: members;tail`."""

    __slots__ = ("phrase", "members", "tail")

    def __init__(self, phrase, members=None, tail=""):
        self.phrase = phrase
        self.members = members if members is not None else []
        self.tail = tail

    def __eq__(self, other):
        return (isinstance(other, Group) and self.phrase == other.phrase
                and self.members == other.members and self.tail == other.tail)

    def __repr__(self):
        return "Group(%r, %r, %r)" % (self.phrase, self.members, self.tail)


def unfold(text):
    """RFC 5322 unfolding: a line break before white space goes, any other becomes a space."""
    if "\n" not in text:
        return text
    out = []
    parts = text.split("\n")
    out.append(parts[0])
    for part in parts[1:]:
        if out[-1].endswith("\r"):
            out[-1] = out[-1][:-1]
        out.append(part if part[:1] in (" ", "\t") else " " + part)
    return "".join(out)


def _element(chars):
    """An element's text without its surrounding white space (but a backslash at its end
    keeps the white space it quotes)."""
    text = "".join(chars).lstrip(_WSP)
    stripped = text.rstrip(_WSP)
    slashes = len(stripped) - len(stripped.rstrip("\\"))
    if slashes % 2 and len(stripped) < len(text):
        stripped = text[:len(stripped) + 1]
    return stripped


def _scan(value, groups, oldstyle):
    """One pass over `value`; the list of items (str or Group), or None if unbalanced,
    or False if a group was opened and never closed (the caller scans again without)."""
    items = []
    cur = []
    quoted = False
    comment = angle = 0
    has_at = has_angle = False
    group = None            # the open Group (mode "group") or the closed one (mode "tail")
    mode = "plain"
    i, n = 0, len(value)

    def end_element():
        nonlocal cur, has_at, has_angle, group, mode
        text = _element(cur)
        if mode == "plain":
            if text:
                items.append(text)
        elif mode == "group":
            if text:
                group.members.append(text)
        else:
            group.tail = text
            items.append(group)
            group = None
            mode = "plain"
        cur = []
        has_at = has_angle = False

    while i < n:
        c = value[i]
        i += 1
        if c == "\\":
            if i >= n:
                return None
            cur.append(c)
            cur.append(value[i])
            i += 1
            continue
        if quoted:
            if c == '"':
                quoted = False
            cur.append(c)
            continue
        if comment:
            if c == "(":
                comment += 1
            elif c == ")":
                comment -= 1
            cur.append(c)
            continue
        if c == '"':
            quoted = True
        elif c == "(":
            comment = 1
        elif c == ")":
            return None
        elif c == "<":
            angle += 1
            has_angle = True
        elif c == ">":
            if not angle:
                return None
            angle -= 1
        elif c == "@":
            has_at = True
        elif angle:
            pass
        elif c == ",":
            end_element()
            continue
        elif oldstyle and c in _WSP:
            # old-style lists are split at white space, but "a @ b" stays one address
            j = i
            while j < n and value[j] in _WSP:
                j += 1
            last = _element(cur)
            if (j < n and value[j] == "@") or last.endswith("@") or not last:
                cur.append(c)
            else:
                end_element()
            continue
        elif c == ":" and groups and mode == "plain":
            phrase = _element(cur)
            if (phrase and not has_at and not has_angle and value[i:i + 1] != ":"
                    and not phrase.endswith(":")):
                group = Group(phrase)
                mode = "group"
                cur = []
                continue
        elif c == ";" and mode == "group":
            end_element()
            mode = "tail"
            continue
        cur.append(c)
    if quoted or comment or angle:
        return None
    if mode == "group":
        return False
    end_element()
    return items


def split_address_list(value, oldstyle=False):
    """The items of an address header's value: each a str (one element, as written but
    unfolded and stripped) or a Group; None if the value does not parse.

    `oldstyle`: Sendmail's OldStyleHeaders for a recipient field without commas: white
    space separates the elements too (no groups then)."""
    value = unfold(value)
    items = _scan(value, not oldstyle, oldstyle)
    if items is False:
        items = _scan(value, False, oldstyle)
    return items


def address_elements(value, oldstyle=False):
    """The addresses of `value` (group members in place of their groups), or None."""
    items = split_address_list(value, oldstyle)
    if items is None:
        return None
    out = []
    for item in items:
        if isinstance(item, Group):
            out.extend(item.members)
        else:
            out.append(item)
    return out


def _clean(text):
    return _element(text.replace("\r\n", " ").replace("\n", " "))


def _units(items, rewrite, sender):
    """The output pieces: rewritten elements, a group spread over its members."""
    units = []
    for item in items:
        if isinstance(item, Group):
            members = [m for m in (_clean(rewrite(m, sender)) for m in item.members) if m]
            tail = (" " + item.tail) if item.tail else ""
            if not members:
                units.append(item.phrase + ":;" + tail)
                continue
            members[0] = item.phrase + ": " + members[0]
            members[-1] = members[-1] + ";" + tail
            units.extend(members)
        else:
            text = _clean(rewrite(item, sender))
            if text:
                units.append(text)
    return units


def _blen(text):
    return len(text.encode("utf-8", "surrogateescape"))


def fold(name, lead, units, omax=DEFAULT_OMAX):
    """commaize's output: "name:" + `lead` spaces + units joined by ", ", a unit that would
    end past column `omax` starting a new line of eight spaces after a ","."""
    out = [name, ":", " " * lead]
    opos = _blen(name) + 1 + lead
    first = True
    for unit in units:
        size = _blen(unit)
        opos += size if first else size + 2
        if first:
            out.append(unit)
        elif opos > omax:
            out.append(",\n" + CONTINUATION + unit)
            opos = len(CONTINUATION) + size
        else:
            out.append(", " + unit)
        first = False
    return "".join(out)


def omax_for(line_limit):
    """commaize's omax for a mailer's L= (None or <= 0: no limit set)."""
    if line_limit is None:
        return DEFAULT_OMAX
    omax = line_limit - 2
    return DEFAULT_OMAX if omax < 0 or omax > DEFAULT_OMAX else omax


def rewrite_field(field, rewrite, sender, *, omax=DEFAULT_OMAX, oldstyle=False):
    """One address field (bytes, "Name: value" with "\\n"-joined folded lines) rewritten;
    the same object back when the value does not parse or nothing changed."""
    text = field.decode("utf-8", "surrogateescape")
    colon = text.find(":")
    if colon <= 0:
        return field
    name = text[:colon].rstrip(_WSP)
    value = unfold(text[colon + 1:])
    items = split_address_list(value, oldstyle and not sender)
    if items is None:
        return field
    lead = len(value) - len(value.lstrip(_WSP))
    out = fold(name, lead, _units(items, rewrite, sender), omax)
    new = out.encode("utf-8", "surrogateescape")
    return field if new == field else new


def field_kind(name, extra_flags=None):
    """FROM, RCPT or None for a field name (any case), the cf's additions included."""
    key = name.strip().lower()
    if extra_flags and key in extra_flags:
        return extra_flags[key] or None
    return FIELD_KINDS.get(key)


def rewrite_headers(headers, rewrite, extra_flags=None, *, line_limit=None, oldstyle=False):
    """The header list with the addresses of every sender and recipient field rewritten.

    headers: raw fields as bytes (Envelope.headers).  rewrite(element, sender) -> str:
    one list element as written -> its replacement ("" drops it).  extra_flags:
    {lower-case name: "from" | "rcpt" (None: not an address field)} added to FIELD_KINDS.
    line_limit: the mailer's L= (commaize folds at min(L-2, 78)).  oldstyle: Sendmail's
    EF_OLDSTYLE for this envelope (recipient fields split at white space as well).
    Other fields come back as the very same objects."""
    omax = omax_for(line_limit)
    out = []
    for field in headers:
        colon = field.find(b":")
        kind = None
        if colon > 0:
            try:
                kind = field_kind(field[:colon].decode("ascii"), extra_flags)
            except UnicodeDecodeError:
                kind = None
        if kind is None:
            out.append(field)
        else:
            out.append(rewrite_field(field, rewrite, kind == FROM, omax=omax,
                                     oldstyle=oldstyle))
    return out
