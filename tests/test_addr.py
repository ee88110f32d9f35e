"""pysendmail.addr: address syntax as Sendmail reads it.

Error texts are Sendmail's (`ADDR... Unbalanced '<'`, see sendmail-ref/formats/07_exit_codes.txt);
route addresses, source routes, groups, quoted commas, comments, domain literals; CR, LF
and NUL never survive into an address. Pure functions: tested directly.
"""
import pytest

from pysendmail import addr
from pysendmail.errors import EX_DATAERR, AddressError


@pytest.mark.parametrize("text, reason", [
    ("bad<addr", "Unbalanced '<'"),
    ("<a@b", "Unbalanced '<'"),
    ("<<a@b>>", "Unbalanced '<'"),
    ("a@b>", "Unbalanced '>'"),
    ("a>b", "Unbalanced '>'"),
    ("(x a@b", "Unbalanced '('"),
    ("a@b (c", "Unbalanced '('"),
    ("a@b (c (d)", "Unbalanced '('"),
    ("x) a@b", "Unbalanced ')'"),
    ("a@b)", "Unbalanced ')'"),
    ('"abc a@b', "Unbalanced '\"'"),
    ('a@b "', "Unbalanced '\"'"),
])
def test_unbalanced_errors_read_like_sendmail(text, reason):
    with pytest.raises(AddressError) as info:
        addr.parse(text)
    err = info.value
    assert err.reason == reason
    assert err.message == "%s... %s" % (text, reason)
    assert err.address == text
    assert err.status == EX_DATAERR
    assert err.dsn == "5.1.3"


def test_sendmail_reference_line_for_bad_addr():
    # sendmail-ref/formats/07_exit_codes.txt: "bad<addr... Unbalanced '<'"
    with pytest.raises(AddressError) as info:
        addr.parse("bad<addr")
    # The unclosed '<' swallows the rest of the list, as in Sendmail's prescan.
    assert info.value.reason == "Unbalanced '<'"
    assert info.value.address.startswith("bad<addr")


@pytest.mark.parametrize("text", [
    '"a<b"@example.com',          # quoted specials do not count
    '"x <y>" <z@example.com>',
    "(a<b) c@example.com",        # nor do those inside comments
    "c@example.com (a>b)",
    '"a)b"@example.com',
    "x@example.com (a(b)c)",      # nested comment
])
def test_specials_inside_quotes_and_comments_are_balanced(text):
    addr.parse(text)


@pytest.mark.parametrize("text, bare", [
    ("Carol <carol@example.net>", "carol@example.net"),
    ('"Doe, John" <john@example.com>', "john@example.com"),
    ('"x <y>" <z@example.com>', "z@example.com"),
    ("<alice@example.com>", "alice@example.com"),
    ("alice@example.com", "alice@example.com"),
    ("  alice@example.com  ", "alice@example.com"),
    ("(c) alice@example.com (d)", "alice@example.com"),
    ("alice@example.com (Alice Example)", "alice@example.com"),
    ("Alice (the boss) <alice@example.com>", "alice@example.com"),
    ("(a<b) c@example.com", "c@example.com"),
    ('"a b"@example.com', '"a b"@example.com'),
    ("root", "root"),
])
def test_route_address_and_full_form(text, bare):
    a = addr.parse(text)
    assert a.bare == bare
    assert a.full == text.strip()


def test_source_routes_are_dropped():
    assert addr.parse("<@relay1.example,@relay2.example:user@example.com>").bare == "user@example.com"
    assert addr.parse("<@relay.example:user@example.com>").bare == "user@example.com"
    assert addr.parse("Name <@a.example:u@c.example>").bare == "u@c.example"


def test_escaped_quote_inside_quoted_display_name():
    # "a\"b" is one quoted string: the '<' after it starts the route address.
    assert addr.parse('"a\\"b" <c@example.com>').bare == "c@example.com"


def test_escaped_angle_bracket_is_a_quoted_pair_not_a_crash():
    # a\<b@c: the '<' is escaped; the balance check accepts it, so the parser must too
    # (an AddressError would also do; a ValueError or IndexError is a crash of the CLI).
    try:
        a = addr.parse("a\\<b@example.com")
    except AddressError:
        return
    assert a.domain == "example.com"


def test_local_and_domain_use_the_last_unquoted_at():
    a = addr.parse('"a@b"@example.com')
    assert a.local == '"a@b"'
    assert a.domain == "example.com"
    a = addr.parse("user@[192.0.2.1]")
    assert (a.local, a.domain) == ("user", "[192.0.2.1]")
    a = addr.parse("root")
    assert (a.local, a.domain) == ("root", "")


@pytest.mark.parametrize("text, domain", [
    ("user@[192.168.0.1]", "[192.168.0.1]"),
    ("me@[IPv6:::1]", "[IPv6:::1]"),
    ("carol@[192.0.2.10]", "[192.0.2.10]"),
])
def test_domain_literals(text, domain):
    a = addr.parse(text)
    assert a.bare == text
    assert a.domain == domain
    assert addr.split_list(text + ", x@example.com") == [text, "x@example.com"]


def test_address_equality_ignores_case_and_display_name():
    assert addr.parse("Alice <Alice@Example.COM>") == addr.parse("alice@example.com")
    assert len({addr.parse("A <a@x>"), addr.parse("a@X"), addr.parse("b@x")}) == 2
    assert addr.parse("a@x") != "a@x"


@pytest.mark.parametrize("text", ["a@b\r\nBcc: victim@example.com", "a@b\nX: y", "a@b\rX", "a\0@b"])
def test_cr_lf_nul_are_stripped(text):
    a = addr.parse(text)
    for ch in "\r\n\0":
        assert ch not in a.full
        assert ch not in a.bare
    for item in addr.split_list(text + ", c@d"):
        assert not set(item) & set("\r\n\0")


def test_strip_crlf():
    assert addr.strip_crlf("a\r\nb\0c\rd\ne") == "abcde"
    assert addr.strip_crlf("plain") == "plain"


def test_empty_address():
    with pytest.raises(AddressError) as info:
        addr.parse("")
    assert info.value.reason == "User address required"
    with pytest.raises(AddressError):
        addr.parse("   ")
    with pytest.raises(AddressError):
        addr.parse("(only a comment)")
    assert addr.parse("", allow_empty=True).bare == ""
    assert addr.parse("<>").bare == ""
    assert addr.parse("<>").full == "<>"


@pytest.mark.parametrize("text, items", [
    ("a@x, b@y", ["a@x", "b@y"]),
    ("a@x,b@y,,c@z,", ["a@x", "b@y", "c@z"]),
    ('"Doe, John" <j@x>, k@y', ['"Doe, John" <j@x>', "k@y"]),
    ('"A. Person" <p@x>, "B: C" <q@y>', ['"A. Person" <p@x>', '"B: C" <q@y>']),
    ("a@b (comment, here), c@d", ["a@b (comment, here)", "c@d"]),
    ("<a,b@x>, c@y", ["<a,b@x>", "c@y"]),
    ("team: a@x, b@y;", ["a@x", "b@y"]),
    ("team: a@x, b@y;, c@z", ["a@x", "b@y", "c@z"]),
    ('List: a@b (x, y), "q, r" <c@d>;', ["a@b (x, y)", '"q, r" <c@d>']),
    ("undisclosed-recipients:;", []),
    ("Group:;", []),
    ("x: <a@b>, c@d;, e@f", ["<a@b>", "c@d", "e@f"]),
    ("<@r1,@r2:u@h>, v@h", ["<@r1,@r2:u@h>", "v@h"]),
    ("user@[192.0.2.1], x@y", ["user@[192.0.2.1]", "x@y"]),
    ('"a\\"b, c" <d@e>, f@g', ['"a\\"b, c" <d@e>', "f@g"]),
    ("", []),
    (" , ", []),
])
def test_split_list(text, items):
    assert addr.split_list(text) == items


def test_parse_list_gives_route_addresses_and_stops_at_the_first_bad_one():
    got = addr.parse_list('"Doe, John" <j@x>, team: a@x, Bee <b@y>;, <@r:c@z>')
    assert [a.bare for a in got] == ["j@x", "a@x", "b@y", "c@z"]
    with pytest.raises(AddressError) as info:
        addr.parse_list("ok@x, bad<addr, fine@y")
    # The unclosed '<' swallows the rest of the list (Sendmail's prescan does the same).
    assert info.value.reason == "Unbalanced '<'"
    assert info.value.address.startswith("bad<addr")


# ---- through the installed command --------------------------------------------------------

def test_installed_escaped_quote_in_display_name_reaches_the_recipient(sm_root):
    msg = b'To: "a\\"b" <root>\nSubject: escaped quote\n\nbody\n'
    p = sm_root.run(["-odq", "-oeq", "-t"], input=msg)      # -oeq: no ~/dead.letter
    assert p.returncode == 0, (p.stdout, p.stderr)
    import os
    from pysendmail.queue import qfile
    q = os.path.join(sm_root.path, "spool", "queue")
    qfs = [n for n in os.listdir(q) if n.startswith("qf")]
    assert len(qfs) == 1
    with open(os.path.join(q, qfs[0]), "rb") as f:
        env = qfile.loads(f.read())
    assert [(r.mailer, r.user) for r in env.recipients] == [("local", "root")]


def test_installed_escaped_angle_bracket_is_no_traceback(sm_root):
    p = sm_root.run(["-odq", "-oeq", "a\\<b@example.com"], input=b"Subject: x\n\nbody\n")
    assert b"Traceback" not in p.stderr, p.stderr[-500:]
    assert p.returncode in (0, 64, 65, 67), p.returncode
