"""DKIM: verification of every signature (mailauth.dkim_check), signing from a key table
(mailauth.keytable, mailauth.dkim_sign) and `pysendmail dkim-keygen`, against OpenDKIM
(Debian's, unmodified: tests/opendkim_peer.py) both ways.

* We sign, OpenDKIM verifies: the message goes through our milter client
  (pysendmail.milter.chain, as the SMTP server runs it) from an external client address,
  and OpenDKIM's Authentication-Results must say dkim=pass (fail once tampered with).
  The keys are the fixture's (OpenDKIM's own opendkim-genkey) and ours from dkim-keygen,
  RSA and Ed25519; OpenDKIM reads their records from its TestDNSData file.
* OpenDKIM signs (internal client), we verify: pass; a changed header or body: fail.
  The key records come from a real DNS server on loopback (dns_helpers.LoopbackDns)
  through mailauth.dns.Lookup, where SERVFAIL must give temperror.
* Errors and policy: several signatures (good and bad) give one result each in order,
  no key / revoked / mismatched key give permerror, rsa-sha1 policy, and so on.
"""
import base64
import os
import re
import shutil
import stat
import subprocess
import sys

import pytest

from conftest import REPO
from dns_helpers import LoopbackDns
from opendkim_peer import (OUR_DOMAIN, REMOTE_DOMAIN, SELECTOR, OpenDKIM,  # noqa: F401
                           dkim_key, opendkim)
from peers import peer_dir
from test_opendkim import (EXTERNAL, INTERNAL, chain_session, dkim_results, inbound_message,
                           join_message, outbound_message, split_message, values)

from pysendmail.mailauth import dkim_check, dkim_sign
from pysendmail.mailauth.dns import DnsTempError, Lookup
from pysendmail.mailauth.keytable import KeyTable, KeyTableError

KEYGEN = ("import sys; from pysendmail.cli.dkim_keygen import main; "
          "sys.exit(main(sys.argv[1:]))")


# ---- helpers ---------------------------------------------------------------------------------

def keygen(*args, env=None):
    """Run `pysendmail dkim-keygen ARGS` (the module); CompletedProcess with text."""
    e = dict(os.environ, PYTHONPATH=REPO)
    e.update(env or {})
    return subprocess.run([sys.executable, "-c", KEYGEN] + list(args), capture_output=True,
                          text=True, env=e, timeout=120)


class Generated:
    """A key made by dkim-keygen: private (path), strings (the record's quoted strings),
    value (them joined), table_line (the key table line it printed)."""

    def __init__(self, directory, domain, selector, key_type):
        proc = keygen(domain, selector, "--type", key_type, "--dir", directory)
        assert proc.returncode == 0, proc
        self.out = proc.stdout
        self.domain, self.selector = domain, selector
        self.private = os.path.join(directory, selector + ".private")
        zone = re.search(r'^(\S+) IN TXT \( (.*?) \)$', self.out, re.M | re.S)
        assert zone and zone.group(1) == "%s._domainkey.%s." % (selector, domain), self.out
        self.strings = re.findall(r'"([^"]*)"', zone.group(2))
        self.value = "".join(self.strings)
        self.table_line = [ln for ln in self.out.splitlines()
                           if ln.startswith(domain + " " + selector + " ")][0]

    @property
    def name(self):
        return "%s._domainkey.%s" % (self.selector, self.domain)


def zone_txt(strings):
    """A TXT value in zone-file text: the strings quoted (at most 255 bytes each)."""
    if isinstance(strings, str):
        strings = [strings[i:i + 255] for i in range(0, len(strings), 255)]
    return " ".join('"%s"' % s for s in strings)


def lookup_for(server):
    return Lookup(nameservers=[server.address], port=server.port, timeout=3)


def tamper_header(message):
    out = re.sub(rb"(?m)^Subject: ", b"Subject: RE: ", message, count=1)
    assert out != message
    return out


def tamper_body(message):
    head, sep, body = message.partition(b"\r\n\r\n")
    return head + sep + body.replace(b"Hello", b"Jello", 1)


def our_message(tag, domain=REMOTE_DOMAIN):
    return ("From: Sender <sender@%s>\r\n"
            "To: someone@%s\r\n"
            "Cc: other@%s\r\n"
            "Subject: signed by pysendmail (%s)\r\n"
            "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
            "Message-ID: <%s@%s>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
            "Received: from somewhere by nowhere\r\n"
            "\r\n"
            "Hello, signed   world.  \r\n"
            ".a dot-led line\r\n"
            "\r\n\r\n" % (domain, OUR_DOMAIN, OUR_DOMAIN, tag, tag, domain)).encode()


def results(rs):
    return [r.result for r in rs]


# ---- fixtures --------------------------------------------------------------------------------

class OpenDKIMWith(OpenDKIM):
    """OpenDKIM with more TestDNSData records and, optionally, another signing key."""

    def __init__(self, directory, key, records=(), keyfile=None, selector=None,
                 algorithm=None, **kw):
        super().__init__(directory, key, **kw)
        self.records, self.keyfile, self.selector = list(records), keyfile, selector
        self.algorithm = algorithm

    def _write_config(self):
        super()._write_config()
        with open(self.testdns, "a") as f:
            for name, value in self.records:
                f.write("%s %s\n" % (name, value))
        if self.keyfile:
            with open(self.config) as f:
                text = f.read()
            text = re.sub(r"(?m)^KeyFile\s+.*$", "KeyFile                 " + self.keyfile, text)
            text = re.sub(r"(?m)^Selector\s+.*$", "Selector                " + self.selector,
                          text)
            if self.algorithm:
                text += "SignatureAlgorithm      %s\n" % self.algorithm
            with open(self.config, "w") as f:
                f.write(text)


@pytest.fixture(scope="module")
def ours():
    """Keys from dkim-keygen for remote.test (pyrsa: RSA 2048, pyed: Ed25519) and one
    Ed25519 key for example.test (edsig) that OpenDKIM signs with."""
    directory = os.path.join(peer_dir("dkim-ours"), "keys")
    keys = {"rsa": Generated(directory, REMOTE_DOMAIN, "pyrsa", "rsa"),
            "ed25519": Generated(directory, REMOTE_DOMAIN, "pyed", "ed25519"),
            "edsig": Generated(directory, OUR_DOMAIN, "edsig", "ed25519")}
    yield keys
    shutil.rmtree(os.path.dirname(directory), ignore_errors=True)


@pytest.fixture(scope="module")
def opendkim_ours(dkim_key, ours):
    """An OpenDKIM that also knows the records of our dkim-keygen keys."""
    dk = OpenDKIMWith(peer_dir("opendkim-ours"), dkim_key,
                      records=[(k.name, k.value) for k in ours.values()]).start()
    yield dk
    dk.close()
    shutil.rmtree(dk.directory, ignore_errors=True)


@pytest.fixture
def dns(dkim_key, ours):
    """A loopback DNS server with the key records of the fixture key and ours."""
    server = LoopbackDns()
    for domain in (OUR_DOMAIN, REMOTE_DOMAIN):
        server.add("%s._domainkey.%s" % (SELECTOR, domain), "TXT",
                   zone_txt(dkim_key.txt.decode()))
    for k in ours.values():
        server.add(k.name, "TXT", zone_txt(k.strings))
    yield server
    server.stop()


def fixture_table(dkim_key, tmp_path):
    path = tmp_path / "keytable"
    path.write_text("# the fixture's key signs for the remote domain\n"
                    "%s %s %s   # opendkim-genkey's\n" % (REMOTE_DOMAIN, SELECTOR,
                                                          dkim_key.private))
    return KeyTable.load(str(path))


# ---- keygen ----------------------------------------------------------------------------------

def test_keygen_writes_private_key_and_prints_record(ours):
    for key_type, k in (("rsa", ours["rsa"]), ("ed25519", ours["ed25519"])):
        st = os.stat(k.private)
        assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
        with open(k.private, "rb") as f:
            assert f.read().startswith(b"-----BEGIN PRIVATE KEY-----")
        assert all(len(s.encode()) <= 255 for s in k.strings), k.strings
        assert k.value.startswith("v=DKIM1; k=%s; p=" % key_type), k.value
        assert k.private in k.out and "key table" in k.out
        with open(os.path.join(os.path.dirname(k.private), k.selector + ".txt")) as f:
            assert k.value == "".join(re.findall(r'"([^"]*)"', f.read()))
    assert len(ours["rsa"].strings) == 2          # 2048 bits: 392 characters, two strings
    assert ours["rsa"].table_line.split() == [REMOTE_DOMAIN, "pyrsa", ours["rsa"].private]
    assert ours["ed25519"].table_line.split()[3:] == ["ed25519"]


def test_keygen_record_verifies_what_its_key_signs(ours, dns, tmp_path):
    (tmp_path / "kt").write_text("\n".join(k.table_line for k in ours.values()) + "\n")
    table = KeyTable.load(str(tmp_path / "kt"))
    assert [e.algorithm for e in table.entries] == ["rsa-sha256", "ed25519-sha256",
                                                     "ed25519-sha256"]
    msg = our_message("keygen")
    sigs = dkim_sign.sign(msg, table)
    assert sigs.count(b"DKIM-Signature:") == 2
    got = dkim_check.verify_all(sigs + msg, lookup_for(dns))
    assert [(r.result, r.selector, r.algorithm) for r in got] == [
        ("pass", "pyrsa", "rsa-sha256"), ("pass", "pyed", "ed25519-sha256")], got
    assert got[0].keybits == 2048 and got[1].keybits == 256
    bad = dkim_check.verify_all(sigs + tamper_body(msg), lookup_for(dns))
    assert [(r.result, r.reason) for r in bad] == [("fail", "body hash mismatch")] * 2


def test_keygen_default_dir_overwrite_and_usage(tmp_path):
    env = {"PYSENDMAIL_ROOT": str(tmp_path / "inst")}
    proc = keygen("Example.COM", "s1", "--type", "ed25519", env=env)
    assert proc.returncode == 0, proc
    path = tmp_path / "inst" / "etc" / "dkim" / "example.com" / "s1.private"
    first = path.read_bytes()
    assert str(path) in proc.stdout
    assert str(tmp_path / "inst" / "etc" / "dkim" / "keytable") in proc.stdout
    again = keygen("example.com", "s1", "--type", "ed25519", env=env)
    assert again.returncode == 73 and "exists" in again.stderr and path.read_bytes() == first
    forced = keygen("example.com", "s1", "--type", "ed25519", "--force", env=env)
    assert forced.returncode == 0 and path.read_bytes() != first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for bad in (["example.com"], ["example.com", "s1", "--type", "dsa"],
                ["example.com", "s1", "--bits", "512"], ["exa mple", "s1"],
                ["example.com", "s1", "--type", "ed25519", "--bits", "2048"],
                ["example.com", "s1", "--frobnicate"]):
        proc = keygen(*bad, env=env)
        assert proc.returncode == 64 and "usage:" in proc.stderr, (bad, proc)


# ---- we sign, OpenDKIM verifies --------------------------------------------------------------

def opendkim_verdicts(dk, raw):
    """OpenDKIM's dkim= results for `raw` sent from an external client."""
    result = chain_session(dk.spec, EXTERNAL, raw, "sender@" + REMOTE_DOMAIN,
                           "someone@" + OUR_DOMAIN)
    return dkim_results(result.message.headers), result.message.headers


@pytest.mark.peer
def test_we_sign_with_the_fixture_key_and_opendkim_verifies(opendkim, dkim_key, tmp_path):
    table = fixture_table(dkim_key, tmp_path)
    msg = our_message("fixture-key")
    sig = dkim_sign.sign(msg, table)
    tags = dict(t.strip().split("=", 1) for t in
                re.sub(r"\s+", "", sig.decode().partition(":")[2]).split(";"))
    assert (tags["a"], tags["c"], tags["d"], tags["s"]) == (
        "rsa-sha256", "relaxed/relaxed", REMOTE_DOMAIN, SELECTOR)
    assert tags["h"].split(":") == ["from", "to", "cc", "subject", "date", "message-id",
                                    "mime-version", "content-type", "from"]
    assert sig.endswith(b"\r\n") and all(len(ln) <= 78 for ln in sig.split(b"\r\n"))
    assert dkim_key.verify(sig + msg)                  # dkimpy agrees
    got, headers = opendkim_verdicts(opendkim, sig + msg)
    assert got == ["pass"], (got, headers, opendkim.log_text())
    ar = values(headers, "Authentication-Results")[0]
    assert "header.d=%s" % REMOTE_DOMAIN in ar and "header.s=%s" % SELECTOR in ar, ar
    assert opendkim_verdicts(opendkim, sig + tamper_body(msg))[0] == ["fail"]
    assert opendkim_verdicts(opendkim, sig + tamper_header(msg))[0] == ["fail"]


@pytest.mark.peer
@pytest.mark.parametrize("which", ["rsa", "ed25519"])
def test_we_sign_with_keygen_keys_and_opendkim_verifies(opendkim_ours, ours, which, tmp_path):
    k = ours[which]
    table = KeyTable.load(k.table_line + "\n")
    msg = our_message("keygen-" + which)
    sig = dkim_sign.sign(msg, table)
    assert b"a=%s-sha256;" % which.encode() in sig
    got, headers = opendkim_verdicts(opendkim_ours, sig + msg)
    assert got == ["pass"], (got, headers, opendkim_ours.log_text())
    assert opendkim_verdicts(opendkim_ours, sig + tamper_body(msg))[0] == ["fail"]


@pytest.mark.peer
def test_dual_signature_rsa_and_ed25519_both_pass_at_opendkim(opendkim_ours, ours):
    table = KeyTable.load("%s\n%s\n" % (ours["rsa"].table_line, ours["ed25519"].table_line))
    msg = our_message("dual")
    sigs = dkim_sign.sign(msg, table)
    got, headers = opendkim_verdicts(opendkim_ours, sigs + msg)
    assert sorted(got) == ["pass", "pass"], (got, headers, opendkim_ours.log_text())


# ---- OpenDKIM signs, we verify ---------------------------------------------------------------

def opendkim_signed(dk, tag):
    result = chain_session(dk.spec, INTERNAL, outbound_message(tag), "sender@" + OUR_DOMAIN,
                           "someone@" + REMOTE_DOMAIN)
    assert values(result.message.headers, "DKIM-Signature"), result.message.headers
    return join_message(result.message.headers, result.message.body)


@pytest.mark.peer
def test_opendkim_signs_we_verify(opendkim, dns):
    raw = opendkim_signed(opendkim, "we-verify")
    lookup = lookup_for(dns)
    got = dkim_check.verify_all(raw, lookup)
    assert len(got) == 1 and got[0].result == "pass", got
    r = got[0]
    assert (r.domain, r.selector, r.algorithm, r.identity) == (
        OUR_DOMAIN, SELECTOR, "rsa-sha256", "@" + OUR_DOMAIN), r
    b = re.sub(r"\s+", "", re.search(r"\bb=([^;]+)", values(
        split_message(raw)[0], "DKIM-Signature")[0]).group(1))
    assert len(r.header_b) >= 8 and b.startswith(r.header_b)
    assert r.ar_text().startswith("dkim=pass header.d=%s header.i=@%s header.s=%s"
                                  % (OUR_DOMAIN, OUR_DOMAIN, SELECTOR)), r.ar_text()
    for changed in (tamper_header(raw), tamper_body(raw)):
        bad = dkim_check.verify_all(changed, lookup)
        assert results(bad) == ["fail"], bad
    assert dkim_check.verify_all(tamper_body(raw), lookup)[0].reason == "body hash mismatch"
    assert dkim_check.verify_all(tamper_header(raw), lookup)[0].reason == \
        "signature did not verify"
    # a second From added above the signed one: fails (the verifier counts one more From)
    forged = raw.replace(b"From: Sender", b"From: evil@attacker.test\r\nFrom: Sender", 1)
    assert results(dkim_check.verify_all(forged, lookup)) == ["fail"]
    # with LF line ends, as a message may be stored
    assert results(dkim_check.verify_all(raw.replace(b"\r\n", b"\n"), lookup)) == ["pass"]


@pytest.mark.peer
def test_opendkim_signs_ed25519_we_verify(dkim_key, ours, dns):
    """OpenDKIM 2.11 signing with an Ed25519 key written by dkim-keygen (PKCS#8 PEM)."""
    k = ours["edsig"]
    dk = OpenDKIMWith(peer_dir("opendkim-ed"), dkim_key, keyfile=k.private,
                      selector=k.selector, algorithm="ed25519-sha256").start()
    try:
        raw = opendkim_signed(dk, "ed25519")
    finally:
        dk.close()
        shutil.rmtree(dk.directory, ignore_errors=True)
    got = dkim_check.verify_all(raw, lookup_for(dns))
    assert [(r.result, r.algorithm, r.selector) for r in got] == [
        ("pass", "ed25519-sha256", "edsig")], (got, raw)
    assert results(dkim_check.verify_all(tamper_body(raw), lookup_for(dns))) == ["fail"]
    assert results(dkim_check.verify_all(tamper_header(raw), lookup_for(dns))) == ["fail"]


@pytest.mark.peer
def test_one_good_one_bad_signature_two_results(opendkim, dkim_key, ours, dns, tmp_path):
    raw = opendkim_signed(opendkim, "two-sigs")
    # a signature by our Ed25519 key under a selector whose record is another key's
    other = KeyTable.load("%s wrongsel %s\n" % (OUR_DOMAIN, ours["edsig"].private))
    dns.add("wrongsel._domainkey." + OUR_DOMAIN, "TXT", zone_txt(ours["ed25519"].strings))
    both = dkim_sign.sign(raw, other) + raw
    got = dkim_check.verify_all(both, lookup_for(dns))
    assert [(r.result, r.selector) for r in got] == [("fail", "wrongsel"),
                                                     ("pass", SELECTOR)], got
    assert got[0].reason == "signature did not verify"
    assert got[0].header_b != got[1].header_b
    # and dkimpy-signed remote mail (the fixture key, relaxed/simple) on top: three
    three = dkim_key.sign(both, domain=REMOTE_DOMAIN)
    assert results(dkim_check.verify_all(three, lookup_for(dns))) == ["pass", "fail", "pass"]


# ---- DNS and key record errors ---------------------------------------------------------------

def signed_by(key_line, msg=None):
    msg = msg or our_message("errors")
    return dkim_sign.sign(msg, KeyTable.load(key_line + "\n")) + msg


def test_servfail_is_temperror_and_missing_key_permerror(ours, dns):
    raw = signed_by(ours["rsa"].table_line)
    dns.servfail.add(ours["rsa"].name)
    got = dkim_check.verify_all(raw, lookup_for(dns))
    assert results(got) == ["temperror"] and "key lookup" in got[0].reason, got
    dns.servfail.clear()
    assert results(dkim_check.verify_all(raw, lookup_for(dns))) == ["pass"]
    raw2 = signed_by("%s nokey %s" % (REMOTE_DOMAIN, ours["rsa"].private))
    got = dkim_check.verify_all(raw2, lookup_for(dns))
    assert results(got) == ["permerror"] and got[0].reason.startswith("no key"), got


def test_key_record_problems_are_permerror(ours):
    raw = signed_by(ours["ed25519"].table_line)
    p = ours["ed25519"].value.partition("p=")[2]
    rsa_p = ours["rsa"].value.partition("p=")[2]
    cases = {
        "v=DKIM1; k=ed25519; p=": "key revoked",
        "v=DKIM1; k=rsa; p=" + rsa_p: "key type rsa does not match a=ed25519-sha256",
        "v=DKIM1; k=ed25519; h=sha1; p=" + p: "key record h= excludes sha256",
        "v=DKIM1; k=ed25519; s=tlsrpt; p=" + p: "key not for email (s=)",
        "v=DKIM2; k=ed25519; p=" + p: "key record v= is not DKIM1",
        "v=DKIM1; k=ed25519; p=AAAA": "Ed25519 public key is not 32 bytes",
        "v=DKIM1; k=ed25519; p=" + p + "; t=y": None,
    }
    for record, reason in cases.items():
        got = dkim_check.verify_all(raw, lambda name, timeout=5, r=record: r.encode())
        if reason is None:
            assert results(got) == ["pass"] and got[0].testing, (record, got)
        else:
            assert (got[0].result, got[0].reason) == ("permerror", reason), (record, got)


def test_dnsfunc_stub_temperror_and_dnsfunc_for_lookup(ours, dns):
    raw = signed_by(ours["ed25519"].table_line)
    asked = []

    def failing(name, timeout=5):
        asked.append(name)
        raise DnsTempError("SERVFAIL")
    got = dkim_check.verify_all(raw, failing)
    assert results(got) == ["temperror"] and asked == [b"pyed._domainkey.remote.test."]
    # dkimpy itself (as ARC would use it) over our Lookup: the temporary failure passes
    # through dkimpy instead of becoming a plain False
    import dkim
    lookup = lookup_for(dns)
    rsa_raw = signed_by(ours["rsa"].table_line)
    assert dkim.verify(rsa_raw, dnsfunc=dkim_check.dnsfunc_for(lookup))
    dns.servfail.add(ours["rsa"].name)
    with pytest.raises(DnsTempError):
        dkim.verify(rsa_raw, dnsfunc=dkim_check.dnsfunc_for(lookup_for(dns)))


# ---- signature-level errors and policy ------------------------------------------------------

def test_unsigned_and_malformed_and_policy(dkim_key, ours, dns):
    import dkim
    lookup = lookup_for(dns)
    msg = our_message("policy")
    assert dkim_check.verify_all(msg, lookup) == []
    rsa = ours["rsa"]
    with open(rsa.private, "rb") as f:
        pem = f.read()
    sha1 = dkim.sign(msg, b"pyrsa", REMOTE_DOMAIN.encode(), pem,
                     signature_algorithm=b"rsa-sha1", include_headers=[b"from", b"subject"])
    got = dkim_check.verify_all(sha1 + msg, lookup)
    assert results(got) == ["policy"] and "RFC 8301" in got[0].reason
    no_from = dkim.sign(msg, b"pyrsa", REMOTE_DOMAIN.encode(), pem,
                        include_headers=[b"from", b"subject"]).replace(
                            b"h=from : subject", b"h=subject")
    got = dkim_check.verify_all(no_from + msg, lookup)
    assert (got[0].result, got[0].reason) == ("permerror", "From is not signed"), got
    garbage = b"DKIM-Signature: v=1; a=rsa-sha256; this is not a tag list\r\n"
    got = dkim_check.verify_all(garbage + msg, lookup)
    assert results(got) == ["neutral"], got
    missing = b"DKIM-Signature: v=1; a=rsa-sha256; d=remote.test; s=pyrsa; h=from; b=AAAA\r\n"
    got = dkim_check.verify_all(missing + msg, lookup)
    assert (got[0].result, got[0].reason, got[0].domain) == (
        "neutral", "signature without bh=", REMOTE_DOMAIN), got
    unknown = (b"DKIM-Signature: v=1; a=rsa-sha512; d=remote.test; s=pyrsa; h=from; "
               b"bh=AAAA; b=AAAA\r\n")
    assert results(dkim_check.verify_all(unknown + msg, lookup)) == ["neutral"]
    expired = signed_by(rsa.table_line).replace(b"t=", b"x=1000000000; t=", 1)
    got = dkim_check.verify_all(expired, lookup)
    assert got[0].result == "permerror" and "x=" in got[0].reason, got
    # more signatures than the limit: the rest are not checked (no DNS query for them)
    one = dkim_sign.sign(msg, KeyTable.load(rsa.table_line + "\n"))
    got = dkim_check.verify_all(one * 4 + msg, lookup, max_signatures=2)
    assert results(got) == ["pass", "pass", "policy", "policy"], got
    assert "not checked" in got[3].reason and got[3].selector == "pyrsa"
    assert got[0].header_b == got[0].b      # identical signatures: the whole b=, no more


def test_verify_all_from_threads(ours, dns):
    from concurrent.futures import ThreadPoolExecutor
    lookup = lookup_for(dns)
    raws = [signed_by(ours["rsa" if i % 2 else "ed25519"].table_line, our_message("t%d" % i))
            for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda raw: results(dkim_check.verify_all(raw, lookup)), raws))
    assert got == [["pass"]] * 8
    # threads may miss the cache together; once filled, no more queries
    first = lookup.lookups
    assert 2 <= first <= 8
    assert [results(dkim_check.verify_all(raw, lookup)) for raw in raws] == [["pass"]] * 8
    assert lookup.lookups == first


# ---- the key table ---------------------------------------------------------------------------

def test_keytable_format_matching_and_errors(ours, tmp_path):
    rsa, ed = ours["rsa"], ours["ed25519"]
    os.symlink(rsa.private, tmp_path / "rel.private")
    text = ("# comment\n\n"
            "Example.COM  s1  %s\n"
            "example.com  s2  %s  ed25519   # dual-signed\n"
            ".example.com w1  rel.private rsa-sha256\n"
            ".sub.example.com w2 %s\n" % (rsa.private, ed.private, ed.private))
    (tmp_path / "kt").write_text(text)
    table = KeyTable.load(str(tmp_path / "kt"))
    assert len(table) == 4
    d, s, pem, alg = table.key_for("EXAMPLE.com.")
    assert (d, s, alg) == ("example.com", "s1", "rsa-sha256") and b"PRIVATE KEY" in pem
    assert [k[1] for k in table.keys_for("example.com")] == ["s1", "s2"]
    assert table.key_for("mail.example.com")[:2] == ("example.com", "w1")
    assert table.key_for("a.b.example.com")[:2] == ("example.com", "w1")
    assert table.key_for("x.sub.example.com")[:2] == ("sub.example.com", "w2")
    assert table.key_for("sub.example.com")[:2] == ("example.com", "w1")
    assert table.key_for("example.org") is None and table.key_for("") is None
    assert table.entries[2].keyfile == str(tmp_path / "rel.private")
    for bad, message in (
            ("example.com s1\n", "kt:1: expected"),
            ("example.com s1 %s dsa\n" % rsa.private, "unknown algorithm"),
            ("example.com s1 %s ed25519\n" % rsa.private, "the table says ed25519-sha256"),
            ("example.com s1 /nonexistent/key\n", "key file /nonexistent/key"),
            ("exa_mple..com s1 %s\n" % rsa.private, "bad domain"),
            ("# ok\nexample.com s1 %s\n" % (tmp_path / "kt"), "kt:2: key file")):
        (tmp_path / "kt").write_text(bad)
        with pytest.raises(KeyTableError, match=re.escape(message)):
            KeyTable.load(str(tmp_path / "kt"))


def test_keytable_opendkim_pair_and_raw_ed25519_seed(ours, tmp_path):
    from cryptography.hazmat.primitives import serialization as ser
    with open(ours["ed25519"].private, "rb") as f:
        key = ser.load_pem_private_key(f.read(), None)
    seed = key.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
    (tmp_path / "seed.key").write_bytes(base64.b64encode(seed) + b"\n")
    (tmp_path / "KeyTable").write_text(
        "rsakey example.net:mail:%s\nedkey example.net:ed:%s/seed.key\n"
        % (ours["rsa"].private, tmp_path))
    (tmp_path / "SigningTable").write_text(
        "*@example.net rsakey\nexample.net edkey\n*@*.example.net rsakey\n")
    table = KeyTable.load_opendkim("refile:%s" % (tmp_path / "KeyTable"),
                                   str(tmp_path / "SigningTable"))
    assert [(d, s, a) for d, s, _p, a in table.keys_for("example.net")] == [
        ("example.net", "mail", "rsa-sha256"), ("example.net", "ed", "ed25519-sha256")]
    assert table.key_for("lists.example.net")[:2] == ("example.net", "mail")
    (tmp_path / "SigningTable").write_text("user@example.net rsakey\n")
    with pytest.raises(KeyTableError, match="per-domain"):
        KeyTable.load_opendkim(str(tmp_path / "KeyTable"), str(tmp_path / "SigningTable"))


def test_sign_picks_the_from_domain(ours, dns):
    table = KeyTable.load(ours["rsa"].table_line + "\n")
    msg = our_message("from")
    assert dkim_sign.sign(msg, table) is not None
    other = msg.replace(b"sender@remote.test", b"sender@elsewhere.test")
    assert dkim_sign.sign(other, table) is None
    assert dkim_sign.sign(other, table, from_domain=REMOTE_DOMAIN) is not None
    two = msg.replace(b"From: Sender <sender@remote.test>",
                      b"From: a@remote.test, b@elsewhere.test")
    assert dkim_sign.sign(two, table) is None
    assert dkim_sign.sign(b"To: x@y\r\n\r\nbody\r\n", table) is None
    lf = dkim_sign.sign(msg.replace(b"\r\n", b"\n"), table, linesep=b"\n")
    assert b"\r" not in lf
    assert results(dkim_check.verify_all(lf + msg.replace(b"\r\n", b"\n"),
                                         lookup_for(dns))) == ["pass"]
