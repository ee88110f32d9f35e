"""Sendmail's crackaddr(): an address as written becomes a template around `$g`.

A header address ("Joe <joe@x>", "joe@x (Joe)") keeps its phrase, comments and angle
brackets; the address proper is replaced by `$g`, so that a mailer's rewriting of the
address can be put back in the same place (Sendmail's remotename()).  `-bt`'s /parse
prints it ("Cracked address = $g"); header rewriting at delivery fills it in.  Pure.
"""

MUST_QUOTE_BASE = "@,;:\\()[]"
MAXNAME = 256


def crackaddr(addr, must_quote=".'", colon_ok=False):
    """Sendmail's crackaddr(): the address proper becomes $g; phrase, angle brackets and
    comments are kept, a phrase holding MustQuoteChars (or a stray `>`, a second `<`, a
    backslash) quoted, unclosed quotes, comments and angles closed; too long: `<$g>`."""
    specials = MUST_QUOTE_BASE + must_quote
    n = len(addr) - len(addr.lstrip())
    out = list(addr[:n])        # leading white space is kept
    head = addrhead = i = n     # where the current part starts in out / in addr
    copying = cmt = realcmt = brack = angle = 0
    quoting = realquote = addangle = putg = quoteit = gotangle = gotcolon = False

    def phrase(end_char):
        # out from head becomes addr[addrhead:i], quoted when quoteit, through end_char
        nonlocal i
        del out[head:]
        j = i
        if quoteit:
            out.append('"')
            j -= 1
            while j > n and addr[j - 1].isspace():
                j -= 1
        for ch in addr[addrhead:j]:
            out.extend(("\\", ch) if quoteit and ch == '"' else ch)
        if quoteit:
            out.pop() if len(out) == head + 1 else out.append('"')
            k = addr.index(end_char, j) + 1
            out.extend(addr[j:k])
            j = k
        i = j

    while i < len(addr):
        c = addr[i]
        i += 1
        if copying > 0:
            out.append(c)
        real = quoting and c != '"'
        if c == "\\":
            quoteit = quoteit or (cmt <= 0 and not quoting)
            if i < len(addr):
                if copying > 0:
                    out.append(addr[i])
                i += 1
            real = True
        elif c == '"' and cmt <= 0:
            quoting = not quoting
            realquote = realquote != (copying > 0)
            continue
        if not real:
            if c == "(":
                cmt, realcmt = cmt + 1, realcmt + 1
                if copying <= 0:
                    out.extend((" (" if len(out) != head else "("))
                copying += 1
            if cmt > 0:
                if c == ")":
                    cmt, copying, realcmt = cmt - 1, copying - 1, realcmt - 1
                continue
            if c == ")" and copying > 0 and len(out) > head:
                out.pop()
            brack += (c == "[") - (c == "]")
            if c == ":" and angle <= 0 and brack <= 0 and not gotcolon and not colon_ok:
                if i < len(addr) and addr[i] in ":.":       # DECnet host::user
                    quoteit = True
                    if copying > 0:
                        out.extend((c, addr[i]))
                    i += 1
                else:
                    gotcolon = True
                    phrase(":")
                    while i < len(addr) and addr[i].isspace():
                        out.append(addr[i])
                        i += 1
                    copying = 0
                    putg = quoteit = False
                    head, addrhead = len(out), i
                    continue
            else:
                if c == ";" and copying <= 0 and not colon_ok:
                    out.append(c)
                quoteit = quoteit or (c in specials and cmt <= 0)
                if c == "<":
                    quoteit = quoteit or gotangle
                    gotangle = addangle = True
                    angle = 1
                    phrase("<")
                    copying = 0
                    putg = quoteit = False
                    continue
                if c == ">":
                    if angle <= 0:                          # stray: dropped
                        if copying > 0 and len(out) > head:
                            out.pop()
                        quoteit = True
                        continue
                    angle -= 1
                    addangle = False
                    if copying <= 0:
                        out.append(c)
                    copying += 1
                    continue
        if copying <= 0 and not putg:
            out.extend((" $g" if out and out[-1] == ")" else "$g"))
            putg = True
    text = "".join(out) + ('"' if realquote else "") + ")" * max(realcmt, 0) \
        + (">" if addangle else "")
    return "<$g>" if len(text) >= MAXNAME else text


# ------------------------------------------------------------------ the session
