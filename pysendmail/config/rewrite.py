"""Sendmail's rewriting engine: rulesets applied to token lists.  Pure, no I/O.

Interface (the cf parser and ``-bt`` build on it):

  Engine(rulesets, classes, macros, maps, ruleset_names, canonify=None,
         trace=None, operator_chars=".:%@!^/[]+", spacesub=" ")
      rulesets       {number: [(lhs, rhs), ...]}: the raw cf text of each R
                     line's LHS and RHS (comment already cut off).  A ruleset
                     present with [] is empty: a $> call to it is dropped.
      classes        {name: set of str}; name without braces ("w", "VirtHost").
                     Membership is case-insensitive, members may be several
                     tokens ("mail.example.com").
      macros         {name: str}, one-letter and long names without braces.
                     $x in a rule is expanded when the rule is compiled (as
                     Sendmail does when it reads the cf); $&x at run time.
      maps           {name: object with .lookup(key, args) -> str | None};
                     optional attributes: keep_quotes (bool), spacesub (str),
                     tempfail_append (str).  lookup may raise maps.TempFail.
                     The "host" map for $[ $] defaults to maps.HostMap(canonify).
      ruleset_names  {name: number} (S name=number).
      canonify       canonify(host) -> canonical name or None.
      trace          trace(line) -> None: receives Sendmail's -bt lines
                     ("%-16.16s   input: tok tok", "%-16.16s returns: ...") and
                     the text of the engine's errors ("Infinite loop in ...").
      spacesub       BlankSub: joins two atoms (map keys, args, class words).
  engine.rewrite(ruleset, tokens) -> (tokens, status)
      ruleset is a number or a name; status is an int, Sendmail's code:
      OK (0), EX_DATAERR (expansion too long), EX_CONFIG (unknown ruleset,
      recursion, bad $n), EX_TEMPFAIL (a map said so), LOOP (a rule applied
      more than 100 times: Sendmail's rewrite stops there and returns what it
      has).  engine.messages lists (code, text) of the errors of the last call.
  engine.run_rulesets([3, 0], tokens) -> (tokens, status)
  engine.rules(ruleset) -> [(lhs tokens, rhs tokens)] as compiled (for =S).
  engine.add_to_class(name, word): the -bt .C command (classes are cached
      folded; macros are read live by $&x, but $x was expanded at compile).
  engine.class_changed(name): forget the folded copy after changing classes[name].
  resolve(tokens) -> (mailer, host, user) | None for a "$#" result; host is
      None without $@; user is the detokenized $: part.

Tokens are str; operators a rule puts into a token list are tokenize.Meta
(CANONNET "$#", CANONHOST "$@", CANONUSER "$:", CONDELSE "$|" for check_*
inputs, ...), so a "$#" typed in an address is not taken for one.

Limits as Sendmail 8.17: 100 applications of one rule in a row; $> nesting
50; MAXATOM 1000 tokens.  As those do not bound the work (100 applications at
each of 50 levels), a top-level call applies rules at most MAXSTEPS times,
then stops with Sendmail's "Infinite loop" message and status LOOP.
"""

from pysendmail.config.tokenize import (
    DEFAULT_OPERATOR_CHARS, MAXATOM, Meta, detokenize, is_atom, prescan)
from pysendmail.config import maps as _maps
from pysendmail.config.rule_tokens import (  # noqa: F401  (the operators are part of this interface)
    ANY, CALLSUBR, CANONHOST, CANONNET, CANONUSER, CLASS, CONDELSE, DMACRO, HOSTBEGIN,
    HOSTEND, LIT, LOOKUPBEGIN, LOOKUPEND, NCLASS, ONE, ZANY, ZERO, Op, fold, from_plain,
    rule_items, to_plain, _FOLD)
from pysendmail.config.triple import resolve  # noqa: F401  (part of this module's interface)

OK = 0
EX_DATAERR = 65
EX_TEMPFAIL = 75
EX_CONFIG = 78
LOOP = 70            # EX_SOFTWARE: the status of a syserr'd infinite loop
MAXRULERECURSION = 50
MAXLOOP = 100
MAX_SUBR = 16
MAX_MAP_ARGS = 10
MAXSTEPS = 20000     # ours: rule applications per top-level call (see below)

def _is_meta(tok):
    return isinstance(tok, Meta)


def _key(tok):
    """A token as a literal of the LHS compares: folded, metas apart."""
    return "\0" + tok if isinstance(tok, Meta) else tok.translate(_FOLD)


class _Abort(Exception):
    """The work budget of one top-level call is spent."""


class Engine:
    """Compiles rules lazily and applies rulesets as Sendmail's rewrite()."""

    def __init__(self, rulesets, classes, macros, maps, ruleset_names,
                 canonify=None, trace=None,
                 operator_chars=DEFAULT_OPERATOR_CHARS, spacesub=" "):
        self.rulesets = rulesets
        self.classes = classes
        self.macros = macros
        self.maps = dict(maps)
        if "host" not in self.maps:
            self.maps["host"] = _maps.HostMap("host", canonify=canonify)
        self.ruleset_names = ruleset_names
        self.numbers_to_names = {v: k for k, v in ruleset_names.items()}
        self.canonify = canonify
        self.trace = trace
        self.operator_chars = operator_chars
        self.spacesub = spacesub
        self.messages = []
        self._steps = 0
        self._compiled = {}
        self._keys = {}
        self._required = {}
        self._folded = {}
        self._plain = {}

    # ---- compilation -------------------------------------------------
    def _items(self, text, lhs):
        return rule_items(text, lhs, self.macros)

    def _compile(self, number):
        if not self._compiled:
            # all at once, on first use: $x takes the value macros had then,
            # as Sendmail expands $x when it reads the cf
            self._compiled[None] = []
            for other in self.rulesets:
                self._compile(other)
        rules = self._compiled.get(number)
        if rules is None and number in self._plain:
            rules = self._from_plain(number)
        elif rules is None:
            rules = []
            for lhs, rhs in self.rulesets.get(number) or ():
                lt = prescan(self._items(lhs, True), self.operator_chars,
                             comments=False, ignore=True).tokens or []
                rt = prescan(self._items(rhs, False), self.operator_chars,
                             comments=False, ignore=True).tokens or []
                rules.append((lt, rt))
        if number not in self._compiled:
            self._compiled[number] = rules
            # per rule: the literal keys of its LHS (None for operators) and
            # the set of them, which must all be in a list the rule matches
            keys = [[None if isinstance(t, Op) else _key(t) for t in lt]
                    for lt, rt in rules]
            self._keys[number] = keys
            self._required[number] = [frozenset(k for k in ks if k is not None)
                                      for ks in keys]
        return rules

    def export_compiled(self):
        """Every ruleset compiled, as plain data (str, tuples) that marshal can store:
        an operator is (0, text, kind, arg), another meta token (1, text)."""
        self._compile(None)
        return {n: [([to_plain(t) for t in lt], [to_plain(t) for t in rt]) for lt, rt in rules]
                for n, rules in self._compiled.items() if n is not None}

    def import_compiled(self, data):
        """Take the rules export_compiled() gave (for the same rules, macros and
        OperatorChars) instead of compiling them; each ruleset is rebuilt on first use."""
        self._compiled = {None: []}
        self._plain = dict(data)

    def _from_plain(self, number):
        return [([from_plain(t) for t in lt], [from_plain(t) for t in rt])
                for lt, rt in self._plain.pop(number)]

    def rules(self, ruleset):
        """The compiled rules of a ruleset: [(lhs tokens, rhs tokens)], the
        operators as Sendmail prints them ("$*", "$=w", "$#", "$1", ...),
        so that =S is "R" + "".join(t + " " for t in lhs) + "\t\t" + ..."""
        number = self.ruleset_number(ruleset)
        return [] if number is None else self._compile(number)

    # ---- helpers -----------------------------------------------------
    def _error(self, code, text):
        if len(self.messages) < 100:
            self.messages.append((code, text))
        if self.trace is not None:
            self.trace(text)

    def _members(self, name):
        members = self._folded.get(name)
        if members is None:
            members = {fold(m) for m in self.classes.get(name, ())}
            self._folded[name] = members
        return members

    def _in_class(self, name, word):
        return fold(word) in self._members(name)

    def add_to_class(self, name, word):
        """Add a word to a class (the -bt .C command)."""
        self.classes.setdefault(name, set()).add(word)
        self._members(name).add(fold(word))

    def class_changed(self, name):
        """Forget the folded copy of class *name*, whose members the caller changed."""
        self._folded.pop(name, None)

    def ruleset_number(self, ruleset):
        """A ruleset number from a number, a digit string or a name; None."""
        if isinstance(ruleset, int):
            return ruleset
        ruleset = str(ruleset)
        if ruleset.isdigit():
            return int(ruleset)
        return self.ruleset_names.get(ruleset)

    def _rulename(self, number):
        return self.numbers_to_names.get(number, str(number))

    def _trace(self, name, what, tokens):
        if self.trace is not None:
            self.trace("%-16.16s %s:%s" % (name, what,
                                           "".join(" " + t for t in tokens)))

    # ---- matching ----------------------------------------------------
    def _match(self, lhs, lkeys, pvp, pkeys):
        """Sendmail's left-to-right match with backtracking; the list of
        (first, last) bindings of $* $+ $- $=X $~X, or None."""
        n, m = len(pvp), len(lhs)
        mlist = []          # [pattern index, first, last]
        rv = av = 0
        while av < n or rv < m:
            ok = rv < m
            if ok:
                rp = lhs[rv]
                kind = rp.kind if isinstance(rp, Op) else LIT
                if av >= n and kind not in (ZANY, ZERO):
                    ok = False
                elif kind == CLASS:
                    last = self._extend_class(rp.arg, pvp, av, av)
                    if last is None:
                        ok = False
                    else:
                        mlist.append([rv, av, last])
                        av = last + 1
                elif kind in (NCLASS, ONE, ANY):
                    if kind == NCLASS and self._in_class(rp.arg, pvp[av]):
                        ok = False
                    else:
                        mlist.append([rv, av, av])
                        av += 1
                elif kind == ZANY:
                    mlist.append([rv, av, av - 1])
                elif kind == ZERO:
                    pass
                elif kind == DMACRO:
                    nav = self._match_macro(rp.arg, pvp, av)
                    if nav is None:
                        ok = False
                    else:
                        av = nav
                else:
                    if pkeys[av] != lkeys[rv]:
                        ok = False
                    else:
                        av += 1
            if ok:
                rv += 1
                continue
            # back up
            while mlist:
                ent = mlist[-1]
                rv = ent[0]
                rp = lhs[rv]
                av = ent[2] + 1
                if av >= n:
                    mlist.pop()
                    continue
                if rp.kind in (ANY, ZANY):
                    ent[2] = av
                    av += 1
                    rv += 1
                    break
                if rp.kind == CLASS:
                    last = self._extend_class(rp.arg, pvp, ent[1], av)
                    if last is not None:
                        ent[2] = last
                        av = last + 1
                        rv += 1
                        break
                mlist.pop()
            else:
                return None
        return [(e[1], e[2]) for e in mlist]

    def _extend_class(self, name, pvp, first, start):
        """The first last >= start such that pvp[first:last+1] is in the
        class, or None."""
        members = self._members(name)
        if not members:
            return None
        ops = self.operator_chars
        word = fold(detokenize(pvp[first:start], self.spacesub, ops))
        prev_atom = start > first and is_atom(pvp[start - 1], ops)
        for last in range(start, len(pvp)):
            tok = pvp[last]
            atom = is_atom(tok, ops)
            if prev_atom and atom:
                word += self.spacesub
            word += fold(tok)
            prev_atom = atom
            if word in members:
                return last
        return None

    def _match_macro(self, name, pvp, av):
        value = self.macros.get(name)
        if value is None:
            return av
        rest = fold(value)
        while rest:
            if av >= len(pvp) or not pvp[av] or \
                    not rest.startswith(fold(pvp[av])):
                return None
            rest = rest[len(pvp[av]):]
            av += 1
        return av

    # ---- rewriting -----------------------------------------------------
    def rewrite(self, ruleset, tokens):
        """Apply one ruleset (number or name) to *tokens*."""
        self.messages = []
        number = self.ruleset_number(ruleset)
        if number is None:
            self._error("554 5.3.5", "Unknown ruleset %s" % ruleset)
            return list(tokens), EX_CONFIG
        pvp = list(tokens)
        self._steps = 0
        try:
            status = self._rewrite(pvp, number, 0, MAXATOM)
        except _Abort:
            status = LOOP
        return pvp, status

    def run_rulesets(self, rulesets, tokens):
        """Apply several rulesets in turn (the -bt "3,0" list); stops at
        the first one that fails with other than OK/LOOP."""
        pvp, status = list(tokens), OK
        messages = []
        for rs in rulesets:
            pvp, st = self.rewrite(rs, pvp)
            messages.extend(self.messages)
            if st != OK:
                status = st
                if st != LOOP:
                    break
        self.messages = messages
        return pvp, status

    def _rewrite(self, pvp, number, reclevel, maxatom):
        """Rewrite the list *pvp* in place; returns the status."""
        name = self._rulename(number)
        self._trace(name, "  input", pvp)
        if reclevel > MAXRULERECURSION:
            self._error("554 5.3.0", "rewrite: excessive recursion (max %d), "
                        "ruleset %s" % (MAXRULERECURSION, name))
            return EX_CONFIG
        reclevel += 1
        rules = self._compile(number)
        allkeys, required = self._keys[number], self._required[number]
        have = pkeys = None
        rstat = OK
        ruleno, loopcount = 0, 0
        while ruleno < len(rules):
            if pvp and _is_meta(pvp[0]) and pvp[0] == "$#":
                break
            lhs, rhs = rules[ruleno]
            loopcount += 1
            self._steps += 1
            if loopcount > MAXLOOP or self._steps > MAXSTEPS:
                self._error("554 5.3.5", "Infinite loop in ruleset %s, rule %d"
                            % (name, ruleno + 1))
                if self._steps > MAXSTEPS:
                    raise _Abort()
                rstat = LOOP if rstat == OK else rstat
                break
            if have is None:
                pkeys = [_key(t) for t in pvp]
                have = set(pkeys)
            binds = None
            if required[ruleno] <= have:
                binds = self._match(lhs, allkeys[ruleno], pvp, pkeys)
            if binds is None:
                ruleno += 1
                loopcount = 0
                continue
            rvp, nxt = rhs, ruleno
            if rvp and rvp[0] is CANONUSER:
                rvp = rvp[1:]
                nxt = ruleno + 1
            elif rvp and rvp[0] is CANONHOST:
                rvp = rvp[1:]
                nxt = len(rules)
            npvp = []
            for rp in rvp:
                if isinstance(rp, Op) and rp.kind == "repl":
                    if rp.arg < 1 or rp.arg > len(binds):
                        self._error("554 5.3.5", "rewrite: ruleset %s: "
                                    "replacement $%d out of bounds"
                                    % (name, rp.arg))
                        return EX_CONFIG
                    first, last = binds[rp.arg - 1]
                    npvp.extend(pvp[first:last + 1])
                elif isinstance(rp, Op) and rp.kind == DMACRO:
                    value = self.macros.get(rp.arg)
                    if value:
                        scan = prescan(value, self.operator_chars)
                        if scan.tokens is None:
                            return EX_DATAERR
                        npvp.extend(scan.tokens)
                else:
                    npvp.append(rp)
                if len(npvp) > maxatom:
                    return self._toolong()
            st, npvp = self._lookups(npvp, maxatom)
            if st is None:
                return self._toolong()
            if st != OK and rstat == OK:
                rstat = st
            st = self._callsubr(npvp, reclevel)
            if rstat == OK or st == EX_TEMPFAIL:
                rstat = st
            pvp[:] = npvp
            have = None
            if nxt != ruleno:
                ruleno = nxt
                loopcount = 0
        self._trace(name, "returns", pvp)
        return rstat

    def _toolong(self):
        self._error("554 5.3.0", "rewrite: expansion too long")
        return EX_DATAERR

    def _lookups(self, npvp, maxatom):
        """Replace $[ host $] and $( map key $@ arg $: default $) in place.
        -> (status, tokens); status None when the result is too long."""
        status = OK
        i = 0
        while i < len(npvp):
            tok = npvp[i]
            if tok is HOSTBEGIN:
                end, mapname, k = HOSTEND, "host", i + 1
            elif tok is LOOKUPBEGIN and i + 1 < len(npvp):
                end, mapname, k = LOOKUPEND, npvp[i + 1], i + 2
            else:
                i += 1
                continue
            j = k
            while j < len(npvp) and npvp[j] is not end:
                j += 1
            inner = npvp[k:j]
            key, args, default = [], [], None
            cur = key
            for t in inner:
                if t is CANONHOST:
                    cur = []
                    args.append(cur)
                elif t is CANONUSER:
                    cur = []
                    default = cur
                else:
                    cur.append(t)
            repl, st = self._map_lookup(mapname, key, args)
            if st != OK and status == OK:
                status = st
            if repl is None and default is not None:
                text = detokenize(default, self.spacesub, self.operator_chars)
                scan = prescan(text, self.operator_chars)
                new = scan.tokens or []
            elif repl is None:
                new = key
            else:
                scan = prescan(repl, self.operator_chars)
                if scan.tokens is None:
                    return EX_DATAERR, npvp
                new = scan.tokens
            npvp[i:j + 1] = new
            if len(npvp) >= maxatom:
                return None, npvp
            i += len(new)
        return status, npvp

    def _map_lookup(self, mapname, key_tokens, arg_lists):
        """Sendmail's map_lookup: -> (replacement or None, status)."""
        m = self.maps.get(mapname)
        if m is None:
            self._error("554 5.3.0", "rewrite: map %s not found" % mapname)
            return None, OK
        spacesub = getattr(m, "spacesub", None)
        if spacesub is None:
            spacesub = self.spacesub
        key = detokenize(key_tokens, spacesub, self.operator_chars)
        if not getattr(m, "keep_quotes", False):
            key = _maps.stripquotes(key)
        args = [detokenize(a, self.spacesub, self.operator_chars)
                for a in arg_lists[:MAX_MAP_ARGS - 2]]
        try:
            return m.lookup(key, args), OK
        except _maps.TempFail:
            app = getattr(m, "tempfail_append", None)
            if app:
                return key + app, EX_TEMPFAIL
            return None, EX_TEMPFAIL

    def _callsubr(self, pvp, reclevel):
        """Run the $> calls of *pvp* right to left, each on its tail."""
        calls = []
        j = 0
        while j < len(pvp):
            if pvp[j] is CALLSUBR and j + 1 < len(pvp):
                target = _maps.stripquotes(pvp[j + 1])
                number = self.ruleset_number(target)
                if number is None or number < 0:
                    self._error("554 5.3.5", "Unknown ruleset %s" % target)
                    return EX_CONFIG
                if not self.rulesets.get(number):
                    del pvp[j:j + 2]
                    continue
                if len(calls) + 1 >= MAX_SUBR:
                    self._error("554 5.3.0", "Too many subroutine calls "
                                "(%d max)" % MAX_SUBR)
                    return EX_CONFIG
                calls.append((number, j))
            j += 1
        rstat = OK
        for number, j in reversed(calls):
            tail = pvp[j + 2:]
            st = self._rewrite(tail, number, reclevel, MAXATOM - j)
            pvp[j:] = tail
            if st not in (OK, EX_TEMPFAIL, LOOP):
                return st
            if rstat == OK or st == EX_TEMPFAIL:
                rstat = st
        return rstat
