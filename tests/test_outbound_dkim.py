"""DKIM signing and ARC sealing of mail leaving by SMTP: keys made by the installed
`pysendmail dkim-keygen`, named by the instance's key table (ETC/dkim/keytable), the
message caught by a Postfix smtp-sink smart host and verified here with our own checker
(mailauth.dkim_check, mailauth.arc) against the TXT records keygen printed.
"""
import os
import re
import smtplib
import subprocess

from dns_helpers import dns_zone  # noqa: F401  (fixture)
from peers import smtp_sink  # noqa: F401  (fixture)
from smtpd_helpers import SMTPDaemon
from test_outbound_smtp import MYNAME, sm, submit, write_cf
from pysendmail.mailauth import arc, dkim_check
from pysendmail.mailauth.dns import Lookup


def keygen(inst, domain, selector, kind="rsa"):
    """Run the installed dkim-keygen; returns the TXT record's text (v=DKIM1; ...)."""
    out = subprocess.run([inst.command("pysendmail"), "dkim-keygen", domain, selector,
                          "--type", kind, "--dir", os.path.join(inst.path, "etc", "dkim")],
                         capture_output=True, env=inst.env, timeout=60)
    assert out.returncode == 0, out
    text = out.stdout.decode()
    record = "".join(re.findall(r'"([^"]*)"', text.split("IN TXT", 1)[1].split(")", 1)[0]))
    assert record.startswith("v=DKIM1;"), text
    return record


def keytable(inst, lines):
    path = os.path.join(inst.path, "etc", "dkim", "keytable")
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))


def publish(zone, records):
    """The TXT records on the loopback DNS server; a Lookup that asks it."""
    for name, value in records.items():
        zone.add(name, "TXT", " ".join('"%s"' % value[i:i + 250]
                                       for i in range(0, len(value), 250)))
    return Lookup(nameservers=[zone.address], port=zone.port)


def crlf(data):
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def test_mail_from_a_hosted_domain_is_signed_rsa_and_ed25519(sm_root, smtp_sink, dns_zone):  # noqa: F811
    sink = smtp_sink()
    write_cf(sm_root, smarthost="[127.0.0.1]:%d" % sink.port)
    rsa = keygen(sm_root, MYNAME, "rsa1")
    ed = keygen(sm_root, MYNAME, "ed1", "ed25519")
    keytable(sm_root, ["%s rsa1 rsa1.private" % MYNAME, "%s ed1 ed1.private" % MYNAME])
    submit(sm_root, ["user@remote.test"], body="signed body\n", subject="sign me")
    sm(sm_root, ["-q"])
    [m] = sink.messages()
    message = crlf(m.data)
    assert message.count(b"DKIM-Signature:") == 2
    dns = publish(dns_zone, {"rsa1._domainkey." + MYNAME: rsa, "ed1._domainkey." + MYNAME: ed})
    results = dkim_check.verify_all(message, dns)
    assert sorted((r.result, r.algorithm) for r in results) == [
        ("pass", "ed25519-sha256"), ("pass", "rsa-sha256")]
    tampered = message.replace(b"signed body", b"signed b0dy")
    assert {r.result for r in dkim_check.verify_all(tampered, dns)} == {"fail"}


def test_other_domains_are_not_signed(sm_root, smtp_sink):  # noqa: F811
    sink = smtp_sink()
    write_cf(sm_root, smarthost="[127.0.0.1]:%d" % sink.port)
    keygen(sm_root, "elsewhere.test", "s1")
    keytable(sm_root, ["elsewhere.test s1 s1.private"])
    submit(sm_root, ["user@remote.test"])
    sm(sm_root, ["-q"])
    [m] = sink.messages()
    assert b"DKIM-Signature:" not in m.data


def test_forwarded_mail_is_arc_sealed(sm_root, smtp_sink, dns_zone):  # noqa: F811
    """Received by the daemon (its checks put our Authentication-Results on top), relayed
    to another host: an ARC set signed with the key of $j's domain, which verifies."""
    sink = smtp_sink()
    write_cf(sm_root, smarthost="[127.0.0.1]:%d" % sink.port,
             options={"AuthChecks": "spf, dkim, arc, dmarc"})
    rsa = keygen(sm_root, MYNAME, "arc1")
    keytable(sm_root, ["%s arc1 arc1.private" % MYNAME])
    d = SMTPDaemon(sm_root, ["-odq"])
    try:
        with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
            s.sendmail("alice@outside.test", ["user@remote.test"],
                       b"From: alice@outside.test\r\nSubject: forwarded\r\n\r\nhello\r\n")
    finally:
        d.stop()
    sm(sm_root, ["-q"])
    [m] = sink.messages()
    message = crlf(m.data)
    assert message.startswith(b"ARC-Seal:")
    got = arc.verify(message, publish(dns_zone, {"arc1._domainkey." + MYNAME: rsa}))
    assert (got.result, got.chain_length) == ("pass", 1), got.reason
    assert b"ARC-Authentication-Results: i=1; %s;" % MYNAME.encode() in message


def test_local_mail_is_not_arc_sealed(sm_root, smtp_sink):  # noqa: F811
    """A local user's own Authentication-Results claiming us is not what we seal."""
    sink = smtp_sink()
    write_cf(sm_root, smarthost="[127.0.0.1]:%d" % sink.port)
    keygen(sm_root, MYNAME, "arc1")
    keytable(sm_root, ["%s arc1 arc1.private" % MYNAME])
    submit(sm_root, ["user@remote.test"],
           headers="Authentication-Results: %s; spf=pass smtp.mailfrom=x@bank.test\n" % MYNAME)
    sm(sm_root, ["-q"])
    [m] = sink.messages()
    assert b"ARC-Seal:" not in m.data
