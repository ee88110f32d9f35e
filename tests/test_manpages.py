"""The manual pages in man/: they render without warnings, and they stay true to the code.

* every page renders with `man --warnings -E UTF-8 -l PAGE` and with `groff -man -ww -z`
  without a single warning, and man-db's `lexgrog` finds its NAME line (what `whatis`
  and `apropos` show);
* sendmail.8 has an entry for every flag of cmdline.OPTION_STRING and every -b mode
  of cmdline.VALID_MODES (checked in the roff source and in the rendered text), and no
  entry for a flag that the command line would refuse;
* sendmail.cf.5 has an entry for every option name the code reads (options.get("X")
  and the Timeout.* names looked up by the queue runner);
* cross references between our pages use the right section numbers.

The checkers are plain functions; the last tests feed them a page with an entry
removed, to show they do notice.
"""
import os
import re
import subprocess

import pytest

from pysendmail.config import cmdline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAN = os.path.join(REPO, "man")
PAGES = {
    "sendmail.8": ("sendmail", "8"),
    "mailq.1": ("mailq", "1"),
    "newaliases.8": ("newaliases", "8"),
    "aliases.5": ("aliases", "5"),
    "sendmail.cf.5": ("sendmail.cf", "5"),
    "pysendmail.8": ("pysendmail", "8"),
    "makemap.8": ("makemap", "8"),
}


def page_path(name):
    return os.path.join(MAN, name)


def read_page(name):
    with open(page_path(name), encoding="utf-8") as f:
        return f.read()


def render_text(path):
    """The page as plain text (groff, ASCII, no overstriking), and groff's stderr."""
    proc = subprocess.run(["groff", "-man", "-Tascii", "-P-c", "-P-b", "-P-u", "-P-o", path],
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    return proc.stdout.decode("ascii", "replace"), proc.stderr.decode("utf-8", "replace")


# -- reading the roff source ----------------------------------------------------------

def sections(source):
    """{section title: [lines]} from the .SH headings of a roff source."""
    out = {}
    current = None
    for line in source.split("\n"):
        if line.startswith(".SH "):
            current = line[4:].strip().strip('"')
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return out


def tag_flags(lines):
    """The first argument of every top-level .TP tag line (e.g. `\\-q` for
    `.BR \\-q [\\fItime\\fP]`), with roff's `\\-` written as `-`. Tags nested in
    .RS/.RE (such as -oi under -o) are not top-level entries."""
    flags = []
    take = False
    depth = 0
    for line in lines:
        if line.startswith(".RS"):
            depth += 1
            continue
        if line.startswith(".RE"):
            depth = max(depth - 1, 0)
            continue
        if line.startswith(".TP"):
            take = depth == 0
            continue
        if take:
            if line.startswith('.\\"'):
                continue
            take = False
            words = line.split()
            if line.startswith(".") and len(words) > 1:
                flags.append(words[1].replace("\\-", "-"))
            elif not line.startswith("."):
                flags.append(words[0].replace("\\-", "-") if words else "")
    return flags


def rendered_section(text, title):
    """The lines of one section of the rendered page (a heading is a line in capitals
    starting in column 0)."""
    out = []
    inside = False
    for line in text.split("\n"):
        if line and not line[0].isspace():
            inside = line.strip() == title
            continue
        if inside:
            out.append(line)
    return out


def missing_flags(source, text, option_string, modes):
    """What sendmail.8 fails to document: ["-X (source)", "-X (rendered)", "-bX ...",
    "extra -X"] for flags absent from the source's OPTIONS tags or the rendered OPTIONS
    section, -b modes absent from OPERATION MODES, and OPTIONS entries for letters the
    command line does not accept."""
    letters = list(cmdline._spec(option_string))
    secs = sections(source)
    opt_tags = tag_flags(secs.get("OPTIONS", []))
    mode_tags = tag_flags(secs.get("OPERATION MODES", []))
    opt_text = rendered_section(text, "OPTIONS")
    mode_text = rendered_section(text, "OPERATION MODES")
    problems = []
    for letter in letters:
        if "-" + letter not in opt_tags:
            problems.append("-%s (source)" % letter)
        pat = re.compile(r"^ {7}-" + re.escape(letter))
        if not any(pat.match(line) for line in opt_text):
            problems.append("-%s (rendered)" % letter)
    for tag in opt_tags:
        if not (len(tag) == 2 and tag[0] == "-" and tag[1] in letters):
            problems.append("extra %s" % tag)
    for mode in modes:
        if "-b" + mode not in mode_tags:
            problems.append("-b%s (source)" % mode)
        pat = re.compile(r"^ {7}-b" + re.escape(mode) + r"(\s|$)")
        if not any(pat.match(line) for line in mode_text):
            problems.append("-b%s (rendered)" % mode)
    for tag in mode_tags:
        if not (len(tag) == 3 and tag.startswith("-b") and tag[2] in modes):
            problems.append("extra mode %s" % tag)
    return problems


_OPTION_READS = (
    re.compile(r"options\.get\(\s*\"([A-Za-z][A-Za-z0-9.]+)\""),
    re.compile(r"options\[\s*\"([A-Za-z][A-Za-z0-9.]+)\"\s*\](?!\s*=[^=])"),   # not a store
    re.compile(r"(?:_interval|interval_option)\(\s*(?:self\.)?options\s*,\s*"
               r"\"([A-Za-z][A-Za-z0-9.]+)\""),
)


def options_read_by_code():
    """Every option name the package reads (one-letter names such as "A" excluded)."""
    names = set()
    for top, _dirs, files in os.walk(os.path.join(REPO, "pysendmail")):
        for name in files:
            if not name.endswith(".py"):
                continue
            with open(os.path.join(top, name), encoding="utf-8") as f:
                text = f.read()
            for pat in _OPTION_READS:
                names.update(n for n in pat.findall(text) if len(n) > 1)
    return names


def undocumented_options(source, names):
    tags = set(tag_flags(sections(source).get("OPTIONS", [])))
    return sorted(n for n in names if n not in tags)


# -- rendering ------------------------------------------------------------------------

@pytest.mark.parametrize("page", sorted(PAGES))
def test_man_renders_without_warnings(page, require_program):
    man = require_program("man")
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8", MANPAGER="cat", PAGER="cat")
    proc = subprocess.run([man, "--warnings", "-E", "UTF-8", "-l", page_path(page)],
                          capture_output=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b"", proc.stderr.decode("utf-8", "replace")
    name, section = PAGES[page]
    out = re.sub(rb".\x08", b"", proc.stdout).decode("utf-8", "replace")
    assert out.lstrip().startswith("%s(%s)" % (name.upper(), section)), out[:200]
    assert "NAME" in out and "SEE ALSO" in out


@pytest.mark.parametrize("page", sorted(PAGES))
@pytest.mark.parametrize("width", ["65n", "78n", "100n"])
def test_groff_renders_without_warnings(page, width, require_program):
    groff = require_program("groff")
    proc = subprocess.run([groff, "-man", "-ww", "-z", "-rLL=" + width, page_path(page)],
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b"", proc.stderr.decode("utf-8", "replace")


@pytest.mark.parametrize("page", sorted(PAGES))
def test_whatis_line(page, require_program):
    """The .TH matches the file name, and lexgrog reads `name - description` from NAME."""
    lexgrog = require_program("lexgrog")
    name, section = PAGES[page]
    source = read_page(page)
    th = [line for line in source.split("\n") if line.startswith(".TH ")]
    assert len(th) == 1
    words = th[0].split()
    assert words[1].lower() == name and words[2] == section, th[0]
    proc = subprocess.run([lexgrog, page_path(page)], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = proc.stdout.decode("utf-8", "replace").strip()
    assert line.startswith('%s: "%s - ' % (page_path(page), name)), line


@pytest.mark.parametrize("page", sorted(PAGES))
def test_source_is_ascii(page):
    """Plain ASCII roff (special characters as \\(xx escapes): any formatter reads it."""
    data = read_page(page)
    bad = [(i + 1, line) for i, line in enumerate(data.split("\n"))
           if any(ord(c) > 126 or (ord(c) < 32 and c != "\t") for c in line)]
    assert not bad, bad[:5]


# -- the pages against the code ---------------------------------------------------------

def test_sendmail8_documents_every_flag_and_mode(require_program):
    require_program("groff")
    text, errors = render_text(page_path("sendmail.8"))
    assert errors == ""
    problems = missing_flags(read_page("sendmail.8"), text, cmdline.OPTION_STRING,
                             cmdline.VALID_MODES)
    assert problems == []
    # and the page's own examples of what is refused are what the parser refuses
    assert "Z" not in cmdline._spec(cmdline.OPTION_STRING)
    assert "z" not in cmdline.VALID_MODES


def test_sendmail_cf5_documents_every_option_read():
    names = options_read_by_code()
    # the scan must find the options this page was written for; if it finds none, the
    # patterns above no longer match the code and the test would prove nothing
    assert {"DeliveryMode", "ErrorMode", "MailboxFormat", "MaildirPath", "ForwardPath",
            "Timeout.queuereturn", "Timeout.queuewarn", "MaxHeadersLength",
            "AliasFile"} <= names, names
    assert undocumented_options(read_page("sendmail.cf.5"), names) == []


def test_cross_references_use_our_sections():
    ours = {name: section for name, section in PAGES.values()}
    ref = re.compile(r"^\.BR ([A-Za-z.]+) \((\d)\)")
    wrong = []
    for page in PAGES:
        for lineno, line in enumerate(read_page(page).split("\n"), 1):
            m = ref.match(line)
            if m and m.group(1) in ours and ours[m.group(1)] != m.group(2):
                wrong.append("%s:%d: %s" % (page, lineno, line))
    assert wrong == []


# -- the checkers notice what is missing ------------------------------------------------

def _without_entry(source, tag_line):
    """`source` with the .TP entry whose tag line is `tag_line` removed (up to the next .TP)."""
    lines = source.split("\n")
    i = lines.index(tag_line)
    assert lines[i - 1] == ".TP"
    j = i + 1
    while not lines[j].startswith((".TP", ".SH")):
        j += 1
    return "\n".join(lines[:i - 1] + lines[j:])


def _render_source(source, tmp_path):
    path = tmp_path / "page.8"
    path.write_text(source, encoding="utf-8")
    text, _ = render_text(str(path))
    return text


def test_checker_notices_a_missing_flag(tmp_path, require_program):
    require_program("groff")
    source = _without_entry(read_page("sendmail.8"), ".B \\-U")
    problems = missing_flags(source, _render_source(source, tmp_path), cmdline.OPTION_STRING,
                             cmdline.VALID_MODES)
    assert problems == ["-U (source)", "-U (rendered)"]


def test_checker_notices_a_missing_mode_and_an_extra_flag(tmp_path, require_program):
    require_program("groff")
    source = _without_entry(read_page("sendmail.8"), ".B \\-bP")
    source = source.replace(".SH OPTIONS\n", ".SH OPTIONS\n.TP\n.B \\-Z\nNot a flag.\n", 1)
    problems = missing_flags(source, _render_source(source, tmp_path), cmdline.OPTION_STRING,
                             cmdline.VALID_MODES)
    assert problems == ["extra -Z", "-bP (source)", "-bP (rendered)"]


def test_checker_notices_an_undocumented_option():
    source = _without_entry(read_page("sendmail.cf.5"), ".B MaildirPath")
    assert undocumented_options(source, {"MaildirPath", "DeliveryMode"}) == ["MaildirPath"]
