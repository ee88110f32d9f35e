"""Recipient expansion: aliases, :include: files and ~/.forward, down to final targets.

`expand(addr, ctx)` turns one envelope recipient into the list of `Target`s it is
delivered to, following Sendmail 8.17's alias()/forward()/include() rules:

* every address is routed by the cf's rulesets 3 and 0 (ctx.route); what the local
  mailer gets is a name, looked up in the aliases
  (case-insensitive; ``user+detail`` tries ``user+detail``, ``user+*``, then ``user``);
  values are expanded recursively, each alias, :include: or .forward level counting one
  towards MaxAliasRecursion (default 10): deeper gives the error target
  ``554 5.4.6 aliasing/forwarding loop broken (N aliases deep; 10 max)``;
* a name met again inside its own expansion (``root: root, other``) is delivered to
  that user's mailbox if it is a passwd user (Sendmail's self reference); otherwise the
  loop is broken with the same 5.4.6 error target rather than losing the mail;
* ``\\user`` delivers to the mailbox with no aliasing and no .forward;
* a local user with a safe ~/.forward (ForwardPath option, default ``$z/.forward``;
  "" disables) gets its entries instead of the mailbox; an empty .forward keeps the
  mailbox. Safe means: a regular file, not a symlink, owned by the user or root, not
  group/world-writable, in a home directory that is not group/world-writable. Unsafe
  files are ignored and logged through ctx.log (``forward PATH: REASON``);
* ``:include:/path`` reads addresses from a file that must be regular, not a symlink,
  not group/world-writable, in a directory that is not group/world-writable and owned
  by root or the owner of the including context (any owner from /etc/aliases);
  programs and files it names run as its owner when that is not root;
* programs (``|cmd`` or ``"|cmd args"``) and files (``/path``) from aliases run with
  the default identity (owner ""); from a .forward as the user, who must have a shell
  listed in /etc/shells. Given directly as a recipient they are refused;
* ``error:CODE text`` gives an error target (``error:5.1.1:550 User unknown``,
  ``error:nouser No such user``);
* ``postmaster`` with no alias goes to root; an unknown name gives the error target
  ``550 5.1.1 User unknown``; an address ruleset 0 gives another mailer (esmtp,
  relay, discard) a target of that mailer and host, and one it refuses ($#error) an
  error target with its reply;
* each final target is delivered once (duplicates, by mailer and user, are dropped).

Security: reading .forward and :include: files checks ownership and modes with lstat/
fstat on the opened descriptor (O_NOFOLLOW) so a symlink swapped in is not followed.
Nothing here delivers; `owner` tells the delivery agent whose identity to take.
"""
import os
import pwd

from pysendmail.config import aliases as _aliases

MAX_ALIAS_RECURSION = 10

_EXIT_NAMES = {
    "usage": 64, "dataerr": 65, "noinput": 66, "nouser": 67, "nohost": 68,
    "unavailable": 69, "software": 70, "oserr": 71, "osfile": 72, "cantcreat": 73,
    "ioerr": 74, "tempfail": 75, "protocol": 76, "noperm": 77, "config": 78,
}


class Target:
    """One final destination. `mailer` is local, prog, file, error, discard or the cf's
    name of a remote mailer (esmtp, relay, ...) with `host` its destination; `user`
    the login (local), command without '|' (prog), path (file) or address (remote);
    `owner` the login a prog/file delivery runs as ("" for the default); `parent` the
    alias chain from the outermost name, joined by '>' ("" if none); `errors_to` the
    owner-LIST address of the innermost list that has one ("" if none); `detail` the
    +detail of a plussed local user."""

    __slots__ = ("address", "mailer", "user", "owner", "parent", "status", "diag",
                 "errors_to", "detail", "host")

    def __init__(self, address, mailer, user, owner="", parent="", status="", diag="",
                 errors_to="", detail="", host=""):
        self.address = address
        self.mailer = mailer
        self.user = user
        self.owner = owner
        self.parent = parent
        self.status = status
        self.diag = diag
        self.errors_to = errors_to
        self.detail = detail
        self.host = host

    def key(self):
        if self.mailer not in ("local", "prog", "file", "error", "discard"):
            # Sendmail's sameaddr(): the domain without case, the local part with it
            local, at, dom = self.user.rpartition("@")
            return (self.mailer, self.host.lower(), local if at else dom,
                    dom.lower() if at else "")
        if self.mailer == "error":
            return ("error", self.address.lower())
        if self.mailer == "local":
            return ("local", self.user, self.detail)
        return (self.mailer, self.user, self.owner)

    def __eq__(self, other):
        if not isinstance(other, Target):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in self.__slots__)

    def __hash__(self):
        return hash(self.key())

    def __repr__(self):
        extra = f", status={self.status!r}, diag={self.diag!r}" if self.mailer == "error" else ""
        return (f"Target({self.address!r}, mailer={self.mailer!r}, user={self.user!r}, "
                f"owner={self.owner!r}, parent={self.parent!r}{extra})")


# -- helpers ----------------------------------------------------------------------

def _getpw(name):
    for candidate in (name, name.lower()):
        try:
            return pwd.getpwnam(candidate)
        except (KeyError, ValueError):
            continue
    return None


def _valid_shells():
    try:
        with open("/etc/shells") as f:
            return {ln.strip() for ln in f if ln.strip() and not ln.startswith("#")}
    except OSError:
        return None


def _strip_comments(s):
    out = []
    depth = 0
    quote = False
    esc = False
    for ch in s:
        if esc:
            esc = False
            if not depth:
                out.append(ch)
            continue
        if ch == "\\":
            esc = True
            if not depth:
                out.append(ch)
            continue
        if quote:
            out.append(ch)
            if ch == '"':
                quote = False
            continue
        if ch == "(":
            depth += 1
            continue
        if ch == ")" and depth:
            depth -= 1
            continue
        if depth:
            continue
        if ch == '"':
            quote = True
        out.append(ch)
    return "".join(out).strip()


def _route(s):
    """The route address of an entry: text inside <> if any, comments removed."""
    s = _strip_comments(s)
    lt = s.rfind("<")
    if lt >= 0 and s.endswith(">") and not (s.startswith('"') and s.count('"') % 2):
        inner = s[lt + 1:-1].strip()
        if inner:
            return inner
    return s


def _split_at(addr):
    """(local, domain or None): the last '@' outside quotes."""
    quote = False
    esc = False
    at = -1
    for i, ch in enumerate(addr):
        if esc:
            esc = False
        elif ch == "\\":
            esc = True
        elif ch == '"':
            quote = not quote
        elif ch == "@" and not quote:
            at = i
    if at < 0:
        return addr, None
    return addr[:at], addr[at + 1:]


def _unquote(s):
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        inner = s[1:-1]
        out = []
        esc = False
        for ch in inner:
            if esc:
                out.append(ch)
                esc = False
            elif ch == "\\":
                esc = True
            else:
                out.append(ch)
        return "".join(out)
    return s


def error_target(address, spec, parent="", errors_to=""):
    """The Target for an ``error:`` alias value such as ``error:5.1.1:550 User unknown``."""
    from pysendmail import errors
    body = spec[6:].strip()
    status = ""
    text = ""
    reply = ""
    head, sep, rest = body.partition(":")
    parts = head.split(".")
    if sep and len(parts) == 3 and all(p.isdigit() for p in parts):
        status = head
        text = rest.strip()
    else:
        word, _, text = body.partition(" ")
        text = text.strip()
        word = _unquote(word).lower()
        code = None
        if word in _EXIT_NAMES:
            code = _EXIT_NAMES[word]
        elif word.isdigit():
            num = int(word)
            if 400 <= num < 600:
                reply = word
            else:
                code = num
        if code is not None:
            status = errors.EXIT_DSN.get(code, "5.0.0")
            if not text:
                text = errors.EXIT_TEXT.get(code, "Unknown error")
    first = text.split(" ", 1)[0]
    if len(first) == 3 and first.isdigit() and first[0] in "45":
        reply = first
        text = text[4:].strip()
    w2 = text.split(" ", 1)
    p = w2[0].split(".") if w2 and w2[0] else []
    if len(p) == 3 and all(x.isdigit() for x in p):
        status = status or w2[0]
        text = w2[1].strip() if len(w2) > 1 else ""
    if not status:
        status = reply[0] + ".0.0" if reply else "5.0.0"
    if not reply:
        reply = "451" if status.startswith("4") else "550"
    if not text:
        text = "Service unavailable" if status.startswith("5") else "Deferred"
    return Target(address, "error", address, parent=parent, status=status,
                  diag=f"{reply} {status} {text}", errors_to=errors_to)


def _safe_open(path, owners, what):
    """Open `path` for reading after Sendmail's safefile checks. Returns (file, uid)
    or raises OSError/PermissionError with Sendmail's reason text in .strerror."""
    import errno
    import stat
    directory = os.path.dirname(path) or "."
    dst = os.stat(directory)
    if dst.st_mode & 0o002:
        raise OSError(errno.EPERM, "World writable directory")
    if dst.st_mode & 0o020:
        raise OSError(errno.EPERM, "Group writable directory")
    try:
        lst = os.lstat(path)
    except OSError:
        raise
    if stat.S_ISLNK(lst.st_mode):
        raise OSError(errno.ELOOP, "Symbolic links not allowed")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EPERM, "Not a regular file")
        if (st.st_dev, st.st_ino) != (lst.st_dev, lst.st_ino):
            raise OSError(errno.EPERM, "File changed after open")
        if st.st_mode & 0o002:
            raise OSError(errno.EPERM, "World writable file")
        if st.st_mode & 0o020:
            raise OSError(errno.EPERM, "Group writable file")
        if owners is not None and st.st_uid != 0 and st.st_uid not in owners:
            raise OSError(errno.EPERM, f"{what} not owned by the user or root")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return f, st.st_uid


def _file_entries(data):
    """Addresses in a .forward or :include: file: '#' lines skipped, commas and
    newlines separate."""
    text = data.decode("utf-8", "surrogateescape")
    out = []
    for line in text.split("\n"):
        line = line.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        out.extend(_aliases.split_value(line))
    return out


def owner_of(list_name, ctx):
    """The errors-to address for list `list_name`: "owner-LIST" if that alias exists."""
    name = f"owner-{list_name}"
    paths = _aliases.aliases_paths(ctx.layout, getattr(ctx, "options", None) or {})
    if _aliases.lookup_value(paths, name, None) is not None:
        return name
    return None


# -- the expansion ------------------------------------------------------------------

class _Expander:
    def __init__(self, ctx):
        self.ctx = ctx
        self.options = getattr(ctx, "options", None) or {}
        self.paths = _aliases.aliases_paths(ctx.layout, self.options)
        try:
            self.max_depth = int(self.options.get("MaxAliasRecursion", MAX_ALIAS_RECURSION))
        except (TypeError, ValueError):
            self.max_depth = MAX_ALIAS_RECURSION
        self.targets = []
        self.seen = set()
        self.expanded = set()
        self._warned = False
        self._shells = None
        self._check_passwd = None

    def check_passwd(self):
        """Must a local user be in the passwd file? Only when the cf's local mailer has
        F=w, as Sendmail; without it (an LMTP local mailer handing mail to a post office
        with virtual users) any name is a local target, without a .forward."""
        if self._check_passwd is None:
            self._check_passwd = True
            try:
                rules = getattr(self.ctx, "rules", None)     # RouteContext.rules: a property
                m = rules.mailer("local") if rules is not None else None
            except Exception:   # no usable cf: Sendmail's default, users must exist
                m = None
            if m is not None:
                self._check_passwd = "w" in m.flags
        return self._check_passwd

    def log(self, msg):
        log = getattr(self.ctx, "log", None)
        if log:
            log(msg)

    def _warn_once(self, msg):
        if not self._warned:
            self._warned = True
            self.log(msg)

    def add(self, t):
        k = t.key()
        if k not in self.seen:
            self.seen.add(k)
            self.targets.append(t)

    def alias_value(self, name):
        return _aliases.lookup_value(self.paths, name, self._warn_once)

    def loop_error(self, address, depth, parent, errors_to):
        msg = (f"aliasing/forwarding loop broken ({depth} aliases deep; "
               f"{self.max_depth} max)")
        self.log(f"{address}... {msg}")
        self.add(Target(address, "error", address, parent=parent, status="5.4.6",
                        diag=f"554 5.4.6 {msg}", errors_to=errors_to))

    # One entry (an address as written) at alias depth `depth`.
    def entry(self, raw, depth, chain, owner, errors_to, direct=False):
        parent = ">".join(chain)
        item = raw.strip()
        if not item:
            return
        low = item.lower()
        if low.startswith(":include:"):
            if direct:
                return self.add(Target(item, "error", item, status="5.7.1",
                                       diag="550 5.7.1 Cannot mail directly to :include:s"))
            return self.include(item, item[9:].strip(), depth, chain, owner, errors_to)
        if low.startswith("error:"):
            return self.add(error_target(item, item, parent, errors_to))
        route = _route(item)
        plain = _unquote(route)
        if plain.startswith("|"):
            if direct:
                return self.add(Target(item, "error", item, status="5.7.1",
                                       diag="550 5.7.1 Cannot mail directly to programs"))
            if not self.shell_ok(owner, item, "programs", parent, errors_to):
                return
            return self.add(Target(route, "prog", plain[1:].strip(), owner=owner,
                                   parent=parent, errors_to=errors_to))
        if plain.startswith("/"):
            if direct:
                return self.add(Target(item, "error", item, status="5.7.1",
                                       diag="550 5.7.1 Cannot mail directly to files"))
            if not self.shell_ok(owner, item, "files", parent, errors_to):
                return
            return self.add(Target(route, "file", plain, owner=owner, parent=parent,
                                   errors_to=errors_to))
        noalias = False
        if route.startswith("\\"):
            noalias = True
            route = route[1:]
        p = self.ctx.route(route)
        if p.kind != "ok":
            return self.add(parsed_error(route, p, parent, errors_to))
        if p.temporary:     # a map (the host map: DNS) failed for now: route it again later
            return self.add(Target(route, "error", route, parent=parent, status="4.4.3",
                                   diag="451 4.4.3 %s... Host map lookup failed for now"
                                   % route, errors_to=errors_to))
        if p.mailer == "local":
            return self.local(p.user, route, depth, chain, owner, errors_to, noalias)
        if p.mailer in ("prog", "*file*", "*include*"):
            spec = (":include:" if p.mailer == "*include*" else "") + p.user
            if spec != item:
                return self.entry(spec, depth, chain, owner, errors_to, direct)
            return self.add(Target(item, "error", item, status="5.3.5",
                                   diag="554 5.3.5 Cannot route %s" % item))
        return self.add(Target(route, p.mailer, p.user, parent=parent, errors_to=errors_to,
                               host=p.host or ""))

    def shell_ok(self, owner, item, kind, parent, errors_to):
        if not owner:
            return True
        pw = _getpw(owner)
        if self._shells is None:
            self._shells = _valid_shells() or set()
        if pw is None or (self._shells and pw.pw_shell not in self._shells):
            msg = f"User {owner} doesn't have a valid shell for mailing to {kind}"
            self.log(f"{item}... {msg}")
            self.add(Target(item, "error", item, owner=owner, parent=parent, status="5.7.1",
                            diag=f"550 5.7.1 {msg}", errors_to=errors_to))
            return False
        return True

    def local(self, name, address, depth, chain, owner, errors_to, noalias):
        parent = ">".join(chain)
        name = _unquote(name.strip())
        key = name.lower()
        base, plus, detail = name.partition("+")
        if noalias:
            return self.mailbox(name, address, parent, errors_to, base, detail, plus)
        lower_chain = [c.lower() for c in chain]
        if key in lower_chain:
            # Self reference: deliver to the user's mailbox if there is one.
            if self.mailbox(name, address, parent, errors_to, base, detail, plus,
                            quiet=True):
                return
            return self.loop_error(address, depth, parent, errors_to)
        if key in self.expanded:
            return
        value = None
        found = None
        for cand in ([key, f"{base.lower()}+*", base.lower()] if plus else [key]):
            value = self.alias_value(cand)
            if value is not None:
                found = cand
                break
        if value is not None:
            if depth >= self.max_depth:
                return self.loop_error(address, depth + 1, parent, errors_to)
            self.expanded.add(key)
            inner_errors = errors_to
            if self.alias_value(f"owner-{found}") is not None:
                inner_errors = f"owner-{found}"
            for item in _aliases.split_value(value):
                self.entry(item, depth + 1, chain + [name], "", inner_errors)
            return
        if key == "postmaster":
            return self.local("root", "root", depth, chain, owner, errors_to, False)
        pw = _getpw(name) or (_getpw(base) if plus else None)
        if pw is None:
            if not self.check_passwd():
                return self.add(Target(address, "local", name, parent=parent,
                                       errors_to=errors_to, detail=detail))
            return self.add(Target(address, "error", address, parent=parent, status="5.1.1",
                                   diag="550 5.1.1 User unknown", errors_to=errors_to))
        if self.forward(pw, name, address, depth, chain, errors_to, detail):
            return
        self.add(Target(address, "local", pw.pw_name, parent=parent, errors_to=errors_to,
                        detail=detail))

    def mailbox(self, name, address, parent, errors_to, base, detail, plus, quiet=False):
        pw = _getpw(name) or (_getpw(base) if plus else None)
        if pw is None:
            if not quiet:
                self.add(Target(address, "error", address, parent=parent, status="5.1.1",
                                diag="550 5.1.1 User unknown", errors_to=errors_to))
            return False
        self.add(Target(address, "local", pw.pw_name, parent=parent, errors_to=errors_to,
                        detail=detail))
        return True

    def forward_paths(self, pw, detail):
        spec = self.options.get("ForwardPath")
        if spec is None:
            spec = "$z/.forward"
        if not spec:
            return []
        out = []
        for part in spec.split(":"):
            p = (part.replace("$z", pw.pw_dir).replace("$u", pw.pw_name)
                 .replace("$h", detail).replace("$w", "").replace("$$", "$"))
            if p:
                out.append(p)
        return out

    def forward(self, pw, name, address, depth, chain, errors_to, detail):
        """Expand the user's .forward; True if it replaced mailbox delivery."""
        for path in self.forward_paths(pw, detail):
            try:
                home = os.stat(pw.pw_dir)
                if home.st_mode & 0o022:
                    what = "World" if home.st_mode & 0o002 else "Group"
                    raise OSError(1, f"{what} writable directory")
                f, _uid = _safe_open(path, {pw.pw_uid}, "file")
            except FileNotFoundError:
                continue
            except OSError as exc:
                self.log(f"forward {path}: {exc.strerror or exc}")
                continue
            with f:
                data = f.read(1 << 20)
            entries = _file_entries(data)
            if not entries:
                return False
            if depth >= self.max_depth:
                self.loop_error(address, depth + 1, ">".join(chain), errors_to)
                return True
            self.expanded.add(name.lower())
            for item in entries:
                self.entry(item, depth + 1, chain + [name], pw.pw_name, errors_to)
            return True
        return False

    def include(self, item, path, depth, chain, owner, errors_to):
        parent = ">".join(chain)
        if depth >= self.max_depth:
            return self.loop_error(item, depth + 1, parent, errors_to)
        ikey = ":include:" + path
        if ikey in chain:
            return
        owners = None
        if owner:
            pw = _getpw(owner)
            owners = {pw.pw_uid} if pw else set()
        try:
            if not os.path.isabs(path):
                import errno
                raise OSError(errno.ENOENT, "Not an absolute path")
            f, uid = _safe_open(path, owners, "file")
        except OSError as exc:
            import errno
            reason = exc.strerror or str(exc)
            self.log(f"{item}... Cannot open {path}: {reason}")
            transient = exc.errno in (errno.EAGAIN, errno.EIO, errno.ENFILE, errno.EMFILE,
                                      errno.ETIMEDOUT, errno.ENOMEM)
            status, reply = ("4.2.4", "451") if transient else ("5.2.4", "550")
            return self.add(Target(item, "error", item, owner=owner, parent=parent,
                                   status=status, diag=f"{reply} {status} Cannot open {path}: "
                                   f"{reason}", errors_to=errors_to))
        with f:
            data = f.read(1 << 22)
        inc_owner = owner
        if uid != 0:
            try:
                inc_owner = pwd.getpwuid(uid).pw_name
            except KeyError:
                inc_owner = owner
        for entry in _file_entries(data):
            self.entry(entry, depth + 1, chain + [ikey], inc_owner, errors_to)


def parsed_error(address, p, parent="", errors_to=""):
    """The error Target of an address ruleset 0 refused (config.rules.Parsed)."""
    return Target(address, "error", address, parent=parent, status=p.status,
                  diag=p.reply, errors_to=errors_to)


def expand(addr, ctx, noalias=False):
    """Expand one recipient address into its final delivery targets (see module doc).
    ctx is a router.RouteContext (route(), log(), layout, options)."""
    ex = _Expander(ctx)
    if noalias and not addr.startswith("\\"):
        addr = "\\" + addr
    ex.entry(addr, 0, [], "", "", direct=True)
    return ex.targets
