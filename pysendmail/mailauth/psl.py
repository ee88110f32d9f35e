"""The public suffix list, and the organizational domain of a name (RFC 7489 3.2).

Role: DMARC's relaxed alignment and its policy discovery ask "which domain is the
registered, organizational one?": the public suffix of the name ("co.uk", "com",
"s3.amazonaws.com") plus one more label.  The list comes from Debian's package
`publicsuffix` (/usr/share/publicsuffix/public_suffix_list.dat, kept fresh by apt); it
is parsed once, lazily, and cached per path (about 10,000 rules, a few milliseconds).

The algorithm is the one https://publicsuffix.org/list/ describes, done by hand on
that file (no library: the file is small, the algorithm is twenty lines, and the
PyPI packages either ship a stale copy of the list or fetch it from the network):
  * a rule is a name ("com", "co.uk"), a wildcard ("*.ck": any one label under ck)
    or an exception ("!www.ck": www.ck is not a public suffix, though *.ck says so);
  * the prevailing rule is the exception that matches, else the matching rule with
    the most labels; when nothing matches, the implicit rule "*" (the TLD) prevails;
  * the public suffix is what the prevailing rule matches (for an exception: the
    rule without its leftmost label).
Both sections of the file (ICANN and PRIVATE) are used, as OpenDMARC does: a name
under a private suffix such as blogspot.com belongs to its own organization.
Internationalized rules are kept in both forms (U-label and A-label "xn--").

Without the file (a system without the package, or an unreadable copy) the list is
empty and only the implicit "*" rule is left: the organizational domain is the last
two labels — RFC 7489's rule of thumb, which is wrong for multi-label suffixes such as
co.uk (example.co.uk and other.co.uk would then share the organization co.uk).
`PublicSuffixList.complete` is False then, so a caller can log it once.

    org_domain("mail.example.co.uk")  -> "example.co.uk"
    public_suffix("mail.example.co.uk") -> "co.uk"
    PublicSuffixList.load(path)        -> a cached list (tests pass their own file)
"""
import threading

DEFAULT_PATHS = ("/usr/share/publicsuffix/public_suffix_list.dat",
                 "/usr/share/publicsuffix/effective_tld_names.dat")

_cache = {}
_cache_lock = threading.Lock()


def to_ascii(name):
    """`name` with every non-ASCII label in its A-label ("xn--", punycode) form, or
    None when a label cannot be encoded (no IDNA mapping beyond lower case)."""
    if name.isascii():
        return name
    try:
        return ".".join(label if label.isascii() else
                        "xn--" + label.encode("punycode").decode("ascii")
                        for label in name.split("."))
    except UnicodeError:
        return None


class PublicSuffixList:
    """The rules of one public suffix list file (see the module docstring)."""

    def __init__(self, lines=(), complete=True, source=None):
        self.rules, self.wildcards, self.exceptions = set(), set(), set()
        self.complete = complete
        self.source = source
        for line in lines:
            self._add(line)

    def _add(self, line):
        line = line.strip()
        if not line or line.startswith("//"):
            return
        rule = line.split()[0].lower().rstrip(".")
        target = self.rules
        if rule.startswith("!"):
            target, rule = self.exceptions, rule[1:]
        elif rule.startswith("*."):
            target, rule = self.wildcards, rule[2:]
        if not rule or "*" in rule:
            return                      # a wildcard elsewhere than leftmost: not in use
        target.add(rule)
        ascii_form = to_ascii(rule)
        if ascii_form and ascii_form != rule:
            target.add(ascii_form)

    @classmethod
    def load(cls, path=None):
        """The list in `path` (default: Debian's copy), parsed once per path and
        cached; an empty, incomplete list when no file can be read."""
        paths = (path,) if path else DEFAULT_PATHS
        key = paths
        with _cache_lock:
            hit = _cache.get(key)
        if hit is not None:
            return hit
        psl = None
        for p in paths:
            try:
                with open(p, encoding="utf-8", errors="replace") as f:
                    psl = cls(f, complete=True, source=p)
                break
            except OSError:
                continue
        if psl is None or not psl.rules:
            psl = cls((), complete=False, source=None)
        with _cache_lock:
            _cache[key] = psl
        return psl

    def public_suffix(self, domain):
        """The public suffix of `domain` (lower case, no trailing dot), or None for an
        empty name or one with an empty label."""
        name = _normalize(domain)
        if name is None:
            return None
        labels = name.split(".")
        n = len(labels)
        best = 1                        # the implicit "*" rule: the last label
        for i in range(n):
            suffix = ".".join(labels[i:])
            size = n - i
            if suffix in self.exceptions:
                return ".".join(labels[i + 1:])      # an exception prevails at once
            if size > best and suffix in self.rules:
                best = size
            if size + 1 > best and i > 0 and suffix in self.wildcards:
                best = size + 1
        return ".".join(labels[n - best:])

    def org_domain(self, domain):
        """The organizational domain of `domain`: its public suffix plus one label (the
        name itself when it is a public suffix), or None for a malformed name."""
        name = _normalize(domain)
        if name is None:
            return None
        suffix = self.public_suffix(name)
        labels, size = name.split("."), suffix.count(".") + 1
        if len(labels) <= size:
            return name
        return ".".join(labels[-(size + 1):])


def _normalize(domain):
    if not domain:
        return None
    name = str(domain).strip().lower().rstrip(".")
    if not name or "" in name.split("."):
        return None
    return name


def public_suffix(domain, psl=None):
    """The public suffix of `domain` (see PublicSuffixList.public_suffix)."""
    return (psl or PublicSuffixList.load()).public_suffix(domain)


def org_domain(domain, psl=None):
    """The organizational domain of `domain` (see PublicSuffixList.org_domain)."""
    return (psl or PublicSuffixList.load()).org_domain(domain)
