"""STARTTLS and SMTP AUTH pieces of the daemon (issue 4): server.tls, server.auth,
proto.smtp_sasl and the `pysendmail passwd` tool.

Real handshakes between Python's ssl client and our server context over a socketpair,
real certificates made here with `cryptography`, real hashes from `mkpasswd` and
`openssl passwd`, and fail2ban's own `fail2ban-regex` reading log lines written by
pysendmail's Logger.
"""
import base64
import datetime
import hashlib
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import IS_ROOT, require_program
from pysendmail import layout as layoutmod
from pysendmail.errors import ConfigError
from pysendmail.log import Logger
from pysendmail.proto import smtp_events as ev
from pysendmail.proto.smtp_reply import Reply
from pysendmail.proto.smtp_sasl import (BADPROT, NOAUTHZ, Challenge, Credentials, Failure,
                                        SaslExchange)
from pysendmail.proto.smtp_server import ServerConfig, SMTPServerConnection
from pysendmail.queue.spool import make_qid
from pysendmail.server import auth, tls

HOST = "mx.example.org"


# ---- helpers ------------------------------------------------------------------------------

def _name(cn, org=None):
    attrs = []
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def make_cert(directory, stem, subject, issuer=None, issuer_key=None, ca=False):
    """A certificate (and key) written as stem.pem / stem.key; returns (cert, key, paths)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer or subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    cert_path = os.path.join(directory, stem + ".pem")
    key_path = os.path.join(directory, stem + ".key")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert, key, cert_path, key_path


def handshake(server_ctx, client_ctx, server_hostname=None):
    """TLS over a socketpair; returns (server macros, client cipher()) or raises the
    server's exception. Both ends time out after 10 s."""
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    result = {}

    def serve():
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                result["macros"] = tls.tls_macros(s)
                s.sendall(b"ok")
        except Exception as e:          # reported to the test below
            result["error"] = e

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=server_hostname) as c:
            c.recv(2)
            cipher = c.cipher()
    except (ssl.SSLError, OSError) as e:
        cipher = e
    t.join(15)
    assert not t.is_alive()
    if "error" in result:
        raise result["error"]
    return result["macros"], cipher


def client_context(cafile=None, certfile=None, keyfile=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile:
        ctx.load_verify_locations(cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if certfile:
        ctx.load_cert_chain(certfile, keyfile)
    return ctx


@pytest.fixture
def instance(tmp_path):
    return layoutmod.for_root(str(tmp_path / "inst"))


# ---- the self-signed certificate -----------------------------------------------------------

def test_self_signed_made_once_then_reused(tmp_path):
    d = str(tmp_path / "tls")
    cert_path, key_path = tls.ensure_self_signed(d, HOST)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    with open(cert_path, "rb") as f:
        first = f.read()
    key_first = os.stat(key_path)
    cert = x509.load_pem_x509_certificate(first)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == HOST
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [HOST]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc > datetime.timedelta(days=3000)

    assert tls.ensure_self_signed(d, HOST) == (cert_path, key_path)
    with open(cert_path, "rb") as f:
        assert f.read() == first
    again = os.stat(key_path)
    assert (again.st_ino, again.st_mtime_ns) == (key_first.st_ino, key_first.st_mtime_ns)

    # another host name: a new certificate for it
    tls.ensure_self_signed(d, "other.example.org")
    with open(cert_path, "rb") as f:
        other = x509.load_pem_x509_certificate(f.read())
    assert other.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == \
        "other.example.org"


def test_broken_self_signed_pair_is_replaced(tmp_path):
    d = str(tmp_path / "tls")
    cert_path, key_path = tls.ensure_self_signed(d, HOST)
    with open(key_path, "wb") as f:
        f.write(b"garbage\n")
    tls.ensure_self_signed(d, HOST)
    with open(key_path, "rb") as f:
        serialization.load_pem_private_key(f.read(), password=None)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600


def test_default_context_lives_in_the_state_dir_and_verifies_for_the_host(instance, tmp_path):
    log_file = str(tmp_path / "maillog")
    log = Logger(log_file=log_file, syslog_socket=None)
    ctx = tls.make_server_context({}, instance, HOST, log=log)
    cert_path = os.path.join(instance.state_dir, "tls", "cert.pem")
    assert os.path.isfile(cert_path)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    with open(log_file) as f:
        assert "generated a self-signed certificate for %s" % HOST in f.read()
    # A client that trusts the certificate and checks the name accepts it.
    macros, cipher = handshake(ctx, client_context(cafile=cert_path), server_hostname=HOST)
    assert not isinstance(cipher, Exception), cipher
    # a second context reuses the pair
    with open(cert_path, "rb") as f:
        before = f.read()
    tls.make_server_context({}, instance, HOST)
    with open(cert_path, "rb") as f:
        assert f.read() == before


# ---- handshakes and macros -------------------------------------------------------------------

def test_macros_without_client_certificate(instance):
    ctx = tls.make_server_context({}, instance, HOST)
    macros, cipher = handshake(ctx, client_context())
    assert macros["tls_version"] == "TLSv1.3" == cipher[1]
    assert macros["cipher"] == cipher[0]
    assert macros["cipher_bits"] == str(cipher[2]) and int(macros["cipher_bits"]) >= 128
    assert macros["verify"] == "NO"          # asked for one, none came
    for key in ("cert_subject", "cert_issuer", "cn_subject", "cn_issuer", "cert_md5"):
        assert macros[key] == ""
    assert tls.tls_macros(None) == {}


def test_self_signed_client_certificate_is_accepted_as_fail(instance, tmp_path):
    ctx = tls.make_server_context({}, instance, HOST)
    cert, _, cpath, kpath = make_cert(str(tmp_path), "client", _name("client.example"))
    macros, cipher = handshake(ctx, client_context(certfile=cpath, keyfile=kpath))
    assert not isinstance(cipher, Exception), cipher
    assert macros["verify"] == "FAIL"        # untrusted, yet the session goes on
    assert macros["cert_subject"] == "/CN=client.example"
    assert macros["cert_issuer"] == "/CN=client.example"
    assert macros["cn_subject"] == "client.example"
    der = cert.public_bytes(serialization.Encoding.DER)
    want = ":".join("%02X" % b for b in hashlib.md5(der).digest())
    assert macros["cert_md5"] == want


def test_client_certificate_from_a_trusted_ca_is_ok(instance, tmp_path):
    ca, ca_key, ca_path, _ = make_cert(str(tmp_path), "ca", _name("Test CA", "Test CA"), ca=True)
    _, _, cpath, kpath = make_cert(str(tmp_path), "client", _name("relay.example", "Ex (Org)"),
                                   issuer=ca.subject, issuer_key=ca_key)
    ctx = tls.make_server_context({"CACertFile": ca_path}, instance, HOST)
    macros, _ = handshake(ctx, client_context(certfile=cpath, keyfile=kpath))
    assert macros["verify"] == "OK"
    assert macros["cert_issuer"] == "/O=Test+20CA/CN=Test+20CA"
    assert macros["cert_subject"] == "/O=Ex+20+28Org+29/CN=relay.example"
    assert macros["cn_issuer"] == "Test+20CA"
    # and a certificate from elsewhere still gets in, as FAIL
    _, _, opath, okey = make_cert(str(tmp_path), "other", _name("other.example"))
    macros, cipher = handshake(ctx, client_context(certfile=opath, keyfile=okey))
    assert macros["verify"] == "FAIL" and not isinstance(cipher, Exception)


def test_configured_certificate_and_cipher_list(instance, tmp_path):
    _, _, cpath, kpath = make_cert(str(tmp_path), "server", _name(HOST))
    ctx = tls.make_server_context({"ServerCertFile": cpath, "ServerKeyFile": kpath,
                                   "CipherList": "ECDHE-ECDSA-AES128-GCM-SHA256"},
                                  instance, HOST)
    assert not os.path.exists(os.path.join(instance.state_dir, "tls"))
    client = client_context(cafile=cpath)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    macros, cipher = handshake(ctx, client, server_hostname=HOST)
    assert macros["cipher"] == "ECDHE-ECDSA-AES128-GCM-SHA256" == cipher[0]
    assert macros["tls_version"] == "TLSv1.2"
    assert macros["cipher_bits"] == "128"


def test_old_protocols_are_refused(instance):
    ctx = tls.make_server_context({}, instance, HOST)
    client = client_context()
    client.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client.minimum_version = ssl.TLSVersion.TLSv1
        client.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError) as info:       # raised by the server's side
        handshake(ctx, client)
    assert "UNSUPPORTED_PROTOCOL" in str(info.value)


def test_unloadable_certificate_or_key_names_the_file(instance, tmp_path):
    _, _, cpath, kpath = make_cert(str(tmp_path), "server", _name(HOST))
    _, _, _, other_key = make_cert(str(tmp_path), "other", _name("x"))
    junk = str(tmp_path / "junk.pem")
    with open(junk, "w") as f:
        f.write("not a certificate\n")
    cases = [
        ({"ServerCertFile": junk, "ServerKeyFile": kpath}, junk),
        ({"ServerCertFile": cpath, "ServerKeyFile": junk}, junk),
        ({"ServerCertFile": cpath, "ServerKeyFile": str(tmp_path / "missing.key")},
         "missing.key: cannot read"),
        ({"ServerCertFile": cpath, "ServerKeyFile": other_key}, "cannot use them together"),
        ({"ServerKeyFile": kpath}, "ServerCertFile is not"),
        ({"CACertFile": str(tmp_path / "none.pem")}, "CACertFile="),
        ({"CipherList": "NO-SUCH-CIPHER"}, "CipherList=NO-SUCH-CIPHER"),
    ]
    for options, needle in cases:
        with pytest.raises(ConfigError) as info:
            tls.make_server_context(options, instance, HOST)
        assert needle in info.value.message, (options, info.value.message)


def test_xtextify_is_sendmails():
    assert tls.xtextify("/C=US/O=A+B <x>") == "/C=US/O=A+2BB+20+3Cx+3E"
    assert tls.xtextify('a"b)c(d\\e') == "a+22b+29c+28d+5Ce"
    assert tls.xtextify("é") == "+C3+A9"


# ---- SASL exchanges ----------------------------------------------------------------------

def test_plain_with_initial_response():
    x = SaslExchange("PLAIN", b"\0alice\0s3cret")
    step = x.step(None)
    assert isinstance(step, Credentials)
    assert (step.mechanism, step.authzid, step.authcid, step.password) == \
        ("PLAIN", "", "alice", "s3cret")
    assert "s3cret" not in repr(step)
    assert x.finish(True) == Reply(235, "2.0.0", "OK Authenticated")


def test_plain_without_initial_response_and_bad_password():
    x = SaslExchange("PLAIN", None)
    step = x.step(None)
    assert isinstance(step, Challenge)
    assert step.reply.to_bytes() == b"334 \r\n"
    step = x.step(b"alice\0alice\0wrong")
    assert isinstance(step, Credentials) and step.authzid == "alice"
    assert x.finish(False).to_bytes() == b"535 5.7.0 authentication failed\r\n"
    with pytest.raises(ValueError):
        x.step(b"more")


def test_plain_refuses_other_authzid_and_malformed_messages():
    step = SaslExchange("PLAIN", b"root\0alice\0s3cret").step(None)
    assert isinstance(step, Failure) and step.reason == NOAUTHZ and step.user == "alice"
    assert step.reply.to_bytes() == b"535 5.7.0 authentication failed\r\n"
    for bad in (b"alice s3cret", b"\0alice\0", b"\0\0pw", b"\0al\xffice\0pw", b"a\0b\0c\0d"):
        step = SaslExchange("PLAIN", bad).step(None)
        assert isinstance(step, Failure) and step.reason == BADPROT, bad


def test_login_exchange_sendmail_wording():
    x = SaslExchange("login", None)
    first = x.step(None)
    assert first.reply.to_bytes() == b"334 VXNlcm5hbWU6\r\n"
    second = x.step(b"alice")
    assert second.reply.to_bytes() == b"334 UGFzc3dvcmQ6\r\n"
    done = x.step(b"s3cret")
    assert isinstance(done, Credentials) and (done.authcid, done.password) == ("alice", "s3cret")
    # the initial response is the user name
    x = SaslExchange("LOGIN", b"bob")
    assert x.step(None).data == b"Password:"
    assert x.step(b"pw").authcid == "bob"
    # empty user name or password fails
    assert isinstance(SaslExchange("LOGIN", b"").step(None), Failure)
    x = SaslExchange("LOGIN", b"bob")
    x.step(None)
    assert isinstance(x.step(b""), Failure)
    with pytest.raises(ValueError):
        SaslExchange("CRAM-MD5", None)


def _drive(conn, lines, answer):
    """Feed command lines to the real SMTP core; `answer(event)` gives each reply."""
    out = []
    conn.receive_data(b"".join(line + b"\r\n" for line in lines))
    for _ in range(50):
        event = conn.next_event()
        if event is ev.NEED_DATA or isinstance(event, ev.ConnectionClosed):
            break
        if getattr(event, "needs_reply", False):
            out.append(conn.send(answer(event)))
    return b"".join(out)


def test_exchanges_through_the_smtp_core():
    users = {"alice": "s3cret"}
    state = {}

    def answer(event):
        if isinstance(event, ev.Greeting):
            return Reply(220, None, "ready")
        if isinstance(event, ev.Helo):
            return Reply(250, None, "hi")
        if isinstance(event, ev.Rejected):
            state.pop("x", None)            # the core ended the exchange
            return event.reply
        if isinstance(event, ev.Auth):
            state["x"] = SaslExchange(event.mechanism, event.initial)
            step = state["x"].step(None)
        else:
            step = state["x"].step(event.data)
        if isinstance(step, Credentials):
            return state["x"].finish(users.get(step.authcid) == step.password)
        return step.reply

    def session(*lines):
        conn = SMTPServerConnection(ServerConfig(HOST, auth_mechanisms=("LOGIN", "PLAIN"),
                                                 auth_requires_tls=False))
        return conn, _drive(conn, [b"EHLO client"] + list(lines), answer)

    b64 = lambda s: base64.b64encode(s)        # noqa: E731
    conn, out = session(b"AUTH LOGIN", b64(b"alice"), b64(b"s3cret"))
    assert out.endswith(b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.0.0 OK Authenticated\r\n")
    assert conn.authenticated
    conn, out = session(b"AUTH PLAIN " + b64(b"\0alice\0bad"))
    assert out.endswith(b"535 5.7.0 authentication failed\r\n") and not conn.authenticated
    conn, out = session(b"AUTH LOGIN", b"!!notbase64!!")
    assert out.endswith(b"334 VXNlcm5hbWU6\r\n501 5.5.4 cannot BASE64 decode '!!notbase64!!'\r\n")
    assert "x" not in state
    conn, out = session(b"AUTH LOGIN", b"*")
    assert out.endswith(b"501 5.0.0 AUTH aborted\r\n")
    conn, out = session(b"AUTH PLAIN", b64(b"\0alice\0s3cret"))
    assert out.endswith(b"334 \r\n235 2.0.0 OK Authenticated\r\n")


# ---- hashes and the user store -------------------------------------------------------------

def _write(path, text, mode=0o600):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def test_hash_formats(tmp_path):
    mkpasswd = require_program("mkpasswd")
    openssl = require_program("openssl")
    y = subprocess.run([mkpasswd, "-m", "yescrypt", "--stdin"], input="hunter2\n",
                       capture_output=True, text=True, check=True).stdout.strip()
    six = subprocess.run([openssl, "passwd", "-6", "-stdin"], input="hunter2\n",
                         capture_output=True, text=True, check=True).stdout.strip()
    assert y.startswith("$y$") and six.startswith("$6$")
    ours = auth.make_hash("hunter2")
    assert ours.startswith("$scrypt$ln=15,r=8,p=1$")
    for stored in (y, six, ours):
        assert auth.verify_hash("hunter2", stored), stored
        assert not auth.verify_hash("hunter3", stored), stored
        assert not auth.verify_hash("", stored), stored
    assert not auth.verify_hash("hunter2", "!" + six)
    assert not auth.verify_hash("hunter2", "plaintext")
    assert not auth.verify_hash("hunter2", "$scrypt$ln=99,r=8,p=1$AAAA$AAAA")
    assert auth.make_hash("x", salt=b"0" * 16) == auth.make_hash("x", salt=b"0" * 16)
    assert auth.make_hash("x") != auth.make_hash("x")


def test_password_file_reads_and_rereads(tmp_path):
    six = subprocess.run([require_program("openssl"), "passwd", "-6", "-stdin"],
                         input="pw6\n", capture_output=True, text=True, check=True).stdout.strip()
    path = str(tmp_path / "sasl-passwd")
    _write(path, "# users\n\nalice:%s\nbob:%s\nbroken line\ncarol:!%s\n"
           % (auth.make_hash("pwA", ln=10), six, six))
    pf = auth.PasswordFile(path)
    assert pf.check("alice", "pwA") and pf.check("bob", "pw6")
    assert not pf.check("alice", "pw6") and not pf.check("carol", "pw6")
    assert not pf.check("nobody", "pwA")
    assert pf.complaints == [(5, "not user:hash")]
    st = os.stat(path)
    _write(path, "alice:%s\n" % auth.make_hash("new", ln=10))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert pf.check("alice", "new") and not pf.check("bob", "pw6")
    os.unlink(path)
    with pytest.raises(auth.AuthConfigError):
        pf.check("alice", "new")
    assert pf.check_loaded("alice", "new") and not pf.check_loaded("alice", "pwA")


def test_unsafe_password_files_are_refused(tmp_path):
    path = str(tmp_path / "sasl-passwd")
    _write(path, "alice:%s\n" % auth.make_hash("pw", ln=10))
    assert auth.PasswordFile(path).check("alice", "pw")
    for mode, words in ((0o620, "group- or world-writable (mode 0620)"),
                        (0o602, "group- or world-writable"), (0o604, "world-readable")):
        os.chmod(path, mode)
        with pytest.raises(auth.AuthConfigError) as info:
            auth.PasswordFile(path).check("alice", "pw")
        assert path in info.value.message and words in info.value.message
    os.chmod(path, 0o640)
    assert auth.PasswordFile(path).check("alice", "pw")
    if IS_ROOT:
        os.chown(path, 65534, 65534)
        pf = auth.PasswordFile(path)
    else:
        pf = auth.PasswordFile(path, euid=os.geteuid() + 1)
    with pytest.raises(auth.AuthConfigError) as info:
        pf.check("alice", "pw")
    assert "not by root or uid" in info.value.message
    link = str(tmp_path / "link")
    os.symlink(path, link)
    with pytest.raises(auth.AuthConfigError):
        auth.PasswordFile(link).check("alice", "pw")
    with pytest.raises(auth.AuthConfigError) as info:
        auth.PasswordFile(str(tmp_path / "absent")).check("alice", "pw")
    assert "cannot open" in info.value.message


def test_default_path(tmp_path):
    assert auth.default_path(layoutmod.system()) == "/etc/pysendmail/sasl-passwd"
    assert auth.default_path(layoutmod.for_root(str(tmp_path))) == \
        str(tmp_path / "etc" / "sasl-passwd")


# ---- the throttle ----------------------------------------------------------------------------

def test_throttle():
    now = [1000.0]
    t = auth.AuthThrottle(max_failures=3, window=300.0, clock=lambda: now[0])
    for _ in range(2):
        t.failed("192.0.2.1")
        assert t.allowed("192.0.2.1")
    t.failed("192.0.2.1")
    assert not t.allowed("192.0.2.1") and t.allowed("192.0.2.2")
    now[0] += 299
    assert not t.allowed("192.0.2.1")
    now[0] += 2
    assert t.allowed("192.0.2.1") and len(t) == 0
    t.failed("192.0.2.3")
    t.succeeded("192.0.2.3")
    assert len(t) == 0
    small = auth.AuthThrottle(max_failures=1, window=60.0, clock=lambda: now[0], max_entries=100)
    for i in range(250):
        small.failed("10.0.%d.%d" % (i // 256, i % 256))
    assert len(small) == 100
    assert small.allowed("10.0.0.0") and not small.allowed("10.0.0.249")


# ---- the passwd tool ---------------------------------------------------------------------

def _passwd(args, password="", env=None):
    return subprocess.run([sys.executable, "-m", "pysendmail.cli.saslpasswd"] + args,
                          input=password, capture_output=True, text=True, timeout=60,
                          env=env)


def test_passwd_tool(tmp_path):
    path = str(tmp_path / "etc" / "sasl-passwd")
    assert _passwd(["-f", path, "alice"], "first\n").returncode == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert _passwd(["-f", path, "bob"], "bobpw\n").returncode == 0
    assert auth.PasswordFile(path).check("alice", "first")
    with open(path, "a") as f:
        f.write("# a comment\n")
    assert _passwd(["-f", path, "alice"], "second\n").returncode == 0
    with open(path) as f:
        text = f.read()
    assert text.count("alice:$scrypt$") == 1 and "# a comment\n" in text
    pf = auth.PasswordFile(path)
    assert pf.check("alice", "second") and not pf.check("alice", "first")
    assert pf.check("bob", "bobpw")
    assert _passwd(["-d", "-f", path, "bob"]).returncode == 0
    assert not auth.PasswordFile(path).check("bob", "bobpw")
    assert _passwd(["-d", "-f", path, "bob"]).returncode == 67
    assert _passwd(["-f", path, "a:b"], "x\n").returncode == 65
    assert _passwd(["-f", path, "carol"], "\n").returncode == 65
    usage = _passwd(["-x"])
    assert usage.returncode == 64 and "usage: pysendmail passwd" in usage.stderr
    assert os.listdir(os.path.dirname(path)) == ["sasl-passwd"]
    # default file: the instance's etc/
    root = tmp_path / "inst"
    env = dict(os.environ, PYSENDMAIL_ROOT=str(root))
    assert _passwd(["dave"], "d\n", env=env).returncode == 0
    assert auth.PasswordFile(str(root / "etc" / "sasl-passwd")).check("dave", "d")


# ---- log lines and fail2ban ----------------------------------------------------------------

def test_log_line_formats():
    assert auth.auth_failure_line("LOGIN", "bob", "host.example", "192.0.2.1") == (
        "AUTH failure (LOGIN): authentication failure (-13) SASL(-13): authentication "
        "failure: checkpass failed, user=bob, relay=host.example [192.0.2.1]")
    assert auth.auth_failure_line("PLAIN", None, "[2001:db8::1]", "2001:db8::1") == (
        "AUTH failure (PLAIN): authentication failure (-13) SASL(-13): authentication "
        "failure: checkpass failed, relay=[IPv6:2001:db8::1]")
    assert auth.reject_line("check_rcpt", "<x@y>", "h", "192.0.2.1", "550 5.7.1 <x@y>... "
                            "Relaying denied", forged=True) == (
        "ruleset=check_rcpt, arg1=<x@y>, relay=h [192.0.2.1] (may be forged), "
        "reject=550 5.7.1 <x@y>... Relaying denied")


def _fail2ban(log_file, filter_name):
    regex = require_program("fail2ban-regex")
    conf = "/etc/fail2ban/filter.d/%s.conf" % filter_name
    if not os.path.exists(conf):
        pytest.fail("%s is missing (fail2ban installs it)" % conf)
    proc = subprocess.run([regex, "-o", "ip", log_file, conf], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return sorted(proc.stdout.split())


def _logger(path):
    return Logger(tag="sendmail", log_file=str(path), syslog_socket=None, pid=4242)


def test_fail2ban_sendmail_auth_matches_our_lines(tmp_path):
    log_file = tmp_path / "maillog"
    log = _logger(log_file)
    qid = make_qid(1700000000, 4242, 1)
    log.warning(qid, auth.auth_failure_line("LOGIN", "bob", "host.example", "192.0.2.1"))
    log.warning(qid, auth.auth_failure_line("PLAIN", "a, b", "[192.0.2.2]", "192.0.2.2",
                                            forged=True))
    log.warning("", auth.auth_failure_line("LOGIN", None, "h.example", "2001:db8::7"))
    log.warning(qid, auth.auth_failure_line(
        "PLAIN", "eve\nFeb 1 00:00:00 x sendmail[1]: AUTH failure", "h", "192.0.2.9"))
    log.info(qid, auth.auth_success_line("PLAIN", "alice", "ok.example", "192.0.2.50"))
    with open(log_file) as f:
        assert f.read().count("\n") == 5          # the forged newline stayed escaped
    assert _fail2ban(str(log_file), "sendmail-auth") == [
        "192.0.2.1", "192.0.2.2", "192.0.2.9", "2001:db8::7"]


def test_fail2ban_sendmail_reject_matches_our_lines(tmp_path):
    log_file = tmp_path / "maillog"
    log = _logger(log_file)
    qid = make_qid(1700000000, 4242, 2)
    msg = "550 5.7.1 <x@y.example>... Relaying denied. Proper authentication required."
    log.notice(qid, auth.reject_line("check_rcpt", "<x@y.example>", "spam.example",
                                     "198.51.100.7", msg))
    log.notice(qid, auth.reject_line("check_rcpt", "<u@y.example>", "[198.51.100.8]",
                                     "198.51.100.8", "550 5.7.1 <u@y.example>... User unknown"))
    assert _fail2ban(str(log_file), "sendmail-reject") == ["198.51.100.7", "198.51.100.8"]
    # The cf's text without AUTH ("550 Relaying denied", no ". Proper authentication
    # required.") is not in fail2ban's filter: the daemon offering AUTH must say it whole.
    plain = tmp_path / "plain"
    _logger(plain).notice(qid, auth.reject_line(
        "check_rcpt", "<x@y.example>", "spam.example", "198.51.100.9",
        "550 5.7.1 <x@y.example>... Relaying denied"))
    assert _fail2ban(str(plain), "sendmail-reject") == []
