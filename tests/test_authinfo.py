"""delivery/authinfo: the client's SMTP AUTH credentials from Sendmail's authinfo map
(text source and a map built by our makemap) and the DefaultAuthInfo file."""
import io
import os

import pytest

from pysendmail.delivery.authinfo import (AuthInfoError, AuthInfoMap, Credentials,
                                          check_secret_file, lookup, parse_entry,
                                          read_default_authinfo)

SOURCE = """\
# client credentials
AuthInfo:smtp.example.com "U:user" "I:authid" "P:secret" "M:PLAIN LOGIN" "R:example.com"
AuthInfo:relay.example.net "U:bob" "P=c2VjcmV0IHdpdGggc3BhY2U="
AuthInfo:192.0.2.1 "I:byaddr" "P:addrpass"
AuthInfo:[192.0.2.7] "U:literal" "P:litpass" "m:cram-md5"
AuthInfo: "U:fallback" "P:defpass"
"""


def write(path, text, mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_parse_each_form():
    c = parse_entry('"U:user" "I:authid" "P:secret" "M:PLAIN LOGIN" "R:example.com"')
    assert c == Credentials("user", "authid", "secret", "example.com", ["PLAIN", "LOGIN"])
    # "=": base64; missing I takes U, missing realm/mechanisms take the defaults
    c = parse_entry('"U:bob" "P=c2VjcmV0"', default_realm="mx.local",
                    default_mechanisms=["CRAM-MD5"])
    assert (c.user, c.authid, c.password, c.realm, c.mechanisms) == (
        "bob", "bob", "secret", "mx.local", ["CRAM-MD5"])
    # missing U takes I; tags in either case
    c = parse_entry('"i:only" "p:pw" "r:realm"')
    assert (c.user, c.authid, c.password, c.realm) == ("only", "only", "pw", "realm")
    assert "pw" not in repr(c)


@pytest.mark.parametrize("value, words", [
    ('', "empty"),
    ('"U:user"', "no password"),
    ('"P:secret"', "no user"),
    ('U:user "P:x"', "quoted"),
    ('"U:user" "P:x', "unbalanced"),
    ('"X:foo" "U:a" "P:b"', "unknown tag"),
    ('"U-user" "P:b"', "delimiter"),
    ('"U:" "P:b"', "too short"),
    ('"U:a" "P=!!notbase64"', "bad base64"),
])
def test_bad_syntax(value, words):
    with pytest.raises(AuthInfoError, match=words):
        parse_entry(value)


def test_text_map_lookup_order(tmp_path):
    path = write(tmp_path / "authinfo", SOURCE)
    m = AuthInfoMap(path, "text", default_realm="mx.local")
    c = m.lookup("SMTP.Example.COM", "198.51.100.9")
    assert (c.user, c.authid, c.password, c.mechanisms) == ("user", "authid", "secret",
                                                            ["PLAIN", "LOGIN"])
    assert m.lookup("relay.example.net").password == "secret with space"
    by_addr = m.lookup("unknown.example", "192.0.2.1")
    assert (by_addr.user, by_addr.password, by_addr.realm) == ("byaddr", "addrpass", "mx.local")
    lit = m.lookup("unknown.example", "192.0.2.7")
    assert (lit.user, lit.mechanisms) == ("literal", ["CRAM-MD5"])
    assert m.lookup("[192.0.2.7]").user == "literal"
    assert m.lookup("other.example", "203.0.113.5").user == "fallback"
    no_default = write(tmp_path / "nodefault", SOURCE.replace('AuthInfo: "U:fallback"', "#"))
    assert AuthInfoMap(no_default, "text").lookup("other.example", "203.0.113.5") is None


def test_broken_entry_found_is_an_error(tmp_path):
    path = write(tmp_path / "authinfo", 'AuthInfo:bad.example "U:user"\n')
    with pytest.raises(AuthInfoError, match="no password"):
        lookup(path, "bad.example", maptype="text")


def test_permissions(tmp_path):
    path = write(tmp_path / "authinfo", SOURCE, 0o644)
    with pytest.raises(AuthInfoError, match="mode 0644"):
        lookup(path, "smtp.example.com", maptype="text")
    os.chmod(path, 0o640)
    with pytest.raises(AuthInfoError, match="group or others"):
        lookup(path, "smtp.example.com", maptype="text")
    # DontBlameSendmail=GroupReadableAuthInfoFile
    assert lookup(path, "smtp.example.com", maptype="text",
                  allow_group_readable=True).user == "user"
    os.chmod(path, 0o600)
    assert lookup(path, "smtp.example.com", maptype="text").user == "user"
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(AuthInfoError, match="symbolic link"):
        check_secret_file(str(link))
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    inside = write(shared / "authinfo", SOURCE)
    with pytest.raises(AuthInfoError, match="writable by group or others"):
        check_secret_file(inside)
    with pytest.raises(AuthInfoError, match="cannot open"):
        check_secret_file(str(tmp_path / "missing"))


def test_permissions_change_is_noticed(tmp_path):
    path = write(tmp_path / "authinfo", SOURCE)
    m = AuthInfoMap(path, "text")
    assert m.lookup("smtp.example.com").user == "user"
    os.chmod(path, 0o604)
    with pytest.raises(AuthInfoError, match="mode 0604"):
        m.lookup("smtp.example.com")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a file as another uid")
def test_foreign_owner_refused(tmp_path):
    path = write(tmp_path / "authinfo", SOURCE)
    os.chown(path, 12345, -1)
    with pytest.raises(AuthInfoError, match="owned by uid 12345"):
        check_secret_file(path)
    assert check_secret_file(path, trusted_uid=12345).st_uid == 12345


def makemap(tmp_path, base):
    """Build base.db with the project's makemap, as an administrator would."""
    from pysendmail.cli import makemap as cli
    err = io.StringIO()
    with open(base, "rb") as src:
        status = cli.main(["makemap", "hash", base], stdin=src, stdout=io.StringIO(),
                          stderr=err)
    assert status == 0, err.getvalue()
    return base + ".db"


def test_makemap_hash_map(tmp_path):
    base = write(tmp_path / "authinfo", SOURCE)
    db = makemap(tmp_path, base)
    from pysendmail.config import sorted_index
    assert sorted_index.is_index(db)
    # the text source must go for the .db to be the one read: prove it is
    os.unlink(base)
    os.chmod(db, 0o640)          # makemap's Sendmail mode, less the umask: group-readable
    with pytest.raises(AuthInfoError, match="group or others"):
        lookup(base, "smtp.example.com")
    os.chmod(db, 0o600)
    m = AuthInfoMap(base, "hash", default_mechanisms=["PLAIN"])
    c = m.lookup("smtp.example.com", "198.51.100.1")
    assert (c.user, c.authid, c.password, c.realm) == ("user", "authid", "secret", "example.com")
    assert m.lookup("x.example", "192.0.2.1").user == "byaddr"
    assert m.lookup("x.example", "192.0.2.7").user == "literal"
    assert m.lookup("x.example").user == "fallback"
    assert m.lookup("x.example").mechanisms == ["PLAIN"]


def test_hash_map_checks_text_source_too(tmp_path):
    base = write(tmp_path / "authinfo", SOURCE)
    makemap(tmp_path, base)
    os.chmod(base + ".db", 0o600)
    os.chmod(base, 0o644)
    with pytest.raises(AuthInfoError, match="mode 0644"):
        lookup(base, "smtp.example.com")
    os.chmod(base, 0o600)
    assert lookup(base + ".db", "smtp.example.com").user == "user"
    with pytest.raises(AuthInfoError, match="no such map"):
        lookup(str(tmp_path / "absent"), "smtp.example.com")
    with pytest.raises(AuthInfoError, match="unknown map type"):
        AuthInfoMap(base, "ldap")


def test_default_authinfo_file(tmp_path):
    path = write(tmp_path / "default-auth-info",
                 "# DefaultAuthInfo\nuser\nauthid\npass word\n\nDIGEST-MD5 plain\n")
    c = read_default_authinfo(path, default_realm="mx.local")
    assert c == Credentials("user", "authid", "pass word", "mx.local", ["DIGEST-MD5", "PLAIN"])
    short = write(tmp_path / "short", "user\nauthid\n")
    with pytest.raises(AuthInfoError, match="can't read password from"):
        read_default_authinfo(short)
    loose = write(tmp_path / "loose", "user\nauthid\npw\n", 0o604)
    with pytest.raises(AuthInfoError, match="mode 0604"):
        read_default_authinfo(loose)
