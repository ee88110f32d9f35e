"""STARTTLS for the SMTP daemon: the server's ssl.SSLContext, its certificate, and the
macros Sendmail defines after the handshake.

Options (Sendmail's names): ServerCertFile, ServerKeyFile (the key may also sit in the
certificate file), CACertFile, CACertPath (trusted issuers of client certificates),
CipherList (OpenSSL cipher string for TLS 1.2; TLS 1.3 suites are OpenSSL's defaults).
With no ServerCertFile, `ensure_self_signed` makes a certificate on first start under
`layout.state_dir/tls/` (cert.pem, key.pem mode 0600; CN and a SAN dNSName of the host
name $j), and reuses it while it is valid for that name, so STARTTLS works out of the box.

Client certificates, as Sendmail's default (no "verify" restriction): the server asks
for one and accepts any, trusted or not; the outcome goes into {verify} (OK, NO when
none was sent, FAIL when it did not verify against CACertFile/CACertPath). Python's
ssl cannot "ask but accept any", so on CPython we install an always-accept OpenSSL
verify callback with ctypes on the context's SSL_CTX, and read SSL_get_verify_result
after the handshake; the pointers are located through the _ssl objects' layout and
checked against each other before use. When that is not possible, the context does
not ask for client certificates at all ({verify} NOT) rather than refuse clients.

Security stance: TLS 1.2 at least, no compression, server cipher preference; a
certificate or key that cannot be loaded is a ConfigError naming the file. The private
key is written 0600 with O_EXCL and renamed into place under a lock, so two starting
daemons never pair one's key with the other's certificate.
"""
import os
import ssl

from ..errors import ConfigError

CERT_NAME = "cert.pem"
KEY_NAME = "key.pem"
VALID_DAYS = 3650
RENEW_DAYS = 30           # a self-signed certificate this close to its end is replaced


# -- the self-signed certificate ------------------------------------------------------------

def _san_for(hostname):
    import ipaddress
    from cryptography import x509
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname.strip("[]")))
    except ValueError:
        return x509.DNSName(hostname)


def _usable(cert_path, key_path, hostname):
    """Is the stored pair readable, matching, for `hostname`, and not about to expire?
    Checked with the ssl module (OpenSSL) alone: importing cryptography costs a
    long-running process ~17 MiB, so it is used only to make a new pair."""
    import time
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_path, key_path)       # the key must match
        info = ssl._ssl._test_decode_cert(cert_path)   # CPython's own PEM decoder
    except (OSError, ssl.SSLError, ValueError, AttributeError):
        return False
    names = [v for k, v in info.get("subjectAltName", ()) if k in ("DNS", "IP Address")]
    want = hostname.strip("[]")
    if want not in names and want.lower() not in (n.lower() for n in names):
        return False
    try:
        expires = ssl.cert_time_to_seconds(info["notAfter"])
    except (KeyError, ValueError):
        return False
    return expires - time.time() > RENEW_DAYS * 86400


def _write_new(path, data, mode):
    tmp = "%s.new.%d" % (path, os.getpid())
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def generate_self_signed(hostname, days=VALID_DAYS):
    """(cert PEM, key PEM) of a new self-signed RSA-2048 certificate for `hostname`."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([_san_for(hostname)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def ensure_self_signed(directory, hostname, log=None):
    """The (cert_path, key_path) of the self-signed pair in `directory`, made (or remade,
    when broken, for another name, or near its end) if need be."""
    import fcntl
    os.makedirs(directory, mode=0o700, exist_ok=True)
    cert_path = os.path.join(directory, CERT_NAME)
    key_path = os.path.join(directory, KEY_NAME)
    lock = os.open(os.path.join(directory, ".lock"),
                   os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _usable(cert_path, key_path, hostname):
            if os.stat(key_path).st_mode & 0o077:
                os.chmod(key_path, 0o600)
            return cert_path, key_path
        cert_pem, key_pem = generate_self_signed(hostname)
        _write_new(key_path, key_pem, 0o600)
        _write_new(cert_path, cert_pem, 0o644)
        if log is not None:
            log.notice("", "STARTTLS=server, generated a self-signed certificate for %s in %s"
                       % (hostname, directory))
        return cert_path, key_path
    finally:
        os.close(lock)


# -- the context ----------------------------------------------------------------------------

def _readable(option, path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError("%s=%s: cannot read: %s" % (option, path, e.strerror)) from None


def _load_pair(ctx, cert_path, key_path):
    """Load the pair into `ctx`, telling a missing certificate, a bad key and a key that
    does not match apart (with OpenSSL through ssl alone: no cryptography import)."""
    cert_data = _readable("ServerCertFile", cert_path)
    key_data = _readable("ServerKeyFile", key_path)
    try:
        if b"-----BEGIN CERTIFICATE-----" not in cert_data:
            raise ValueError
        ssl._ssl._test_decode_cert(cert_path)
    except (ValueError, ssl.SSLError, OSError):
        raise ConfigError("ServerCertFile=%s: no PEM certificate in it" % cert_path) from None
    try:
        ctx.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as e:
        reason = (e.reason or "").upper()
        if "MISMATCH" in reason or (b"PRIVATE KEY-----" in key_data
                                     and reason not in ("PEM_LIB", "NO_START_LINE", "")):
            raise ConfigError("ServerCertFile=%s, ServerKeyFile=%s: cannot use them "
                              "together: %s" % (cert_path, key_path, e.reason or e)) from None
        raise ConfigError("ServerKeyFile=%s: no usable PEM private key in it (%s)"
                          % (key_path, e.reason or e)) from None


def make_server_context(options, layout, hostname, log=None):
    """The SSLContext for STARTTLS, from the options (a dict of Sendmail option names)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    cert_path = (options.get("ServerCertFile") or "").strip()
    key_path = (options.get("ServerKeyFile") or "").strip()
    if not cert_path:
        if key_path:
            raise ConfigError("ServerKeyFile=%s is set but ServerCertFile is not" % key_path)
        cert_path, key_path = ensure_self_signed(
            os.path.join(layout.state_dir, "tls"), hostname, log)
    _load_pair(ctx, cert_path, key_path or cert_path)
    cafile = (options.get("CACertFile") or "").strip() or None
    capath = (options.get("CACertPath") or "").strip() or None
    if cafile:
        _readable("CACertFile", cafile)
    if capath and not os.path.isdir(capath):
        raise ConfigError("CACertPath=%s: not a directory" % capath)
    if cafile or capath:
        try:
            ctx.load_verify_locations(cafile=cafile, capath=capath)
        except ssl.SSLError as e:
            raise ConfigError("CACertFile=%s: cannot load: %s" % (cafile, e.reason or e)) from None
    ciphers = (options.get("CipherList") or "").strip()
    if ciphers:
        try:
            ctx.set_ciphers(ciphers)
        except ssl.SSLError:
            raise ConfigError("CipherList=%s: no cipher can be selected" % ciphers) from None
    if not _accept_any_client_cert(ctx) and log is not None:
        log.warning("", "STARTTLS=server, cannot ask for client certificates "
                    "without refusing untrusted ones: not asking")
    return ctx


# -- asking for any client certificate (ctypes on CPython's _ssl objects) ------------------

_openssl = None          # (ctypes, libssl, callback) once set up; False if unavailable


def _libssl():
    global _openssl
    if _openssl is None:
        _openssl = False
        try:
            import ctypes
            import sys
            if sys.implementation.name != "cpython":
                return False
            import _ssl  # noqa: F401  (so that its libssl is mapped)
            path = None
            with open("/proc/self/maps") as f:
                for line in f:
                    name = line.rstrip("\n").rpartition(" ")[2]
                    if "/libssl.so" in name:
                        path = name
                        break
            if path is None:
                return False
            lib = ctypes.CDLL(path)
            verify_cb = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
            lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, verify_cb]
            lib.SSL_CTX_set_verify.restype = None
            lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
            lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
            lib.SSL_get_SSL_CTX.argtypes = [ctypes.c_void_p]
            lib.SSL_get_SSL_CTX.restype = ctypes.c_void_p
            lib.SSL_get_verify_result.argtypes = [ctypes.c_void_p]
            lib.SSL_get_verify_result.restype = ctypes.c_long
            callback = verify_cb(lambda preverify_ok, store_ctx: 1)
            _openssl = (ctypes, lib, callback)
        except (OSError, AttributeError, ImportError):
            _openssl = False
    return _openssl


def _pointer(obj, slot):
    """The pointer in word `slot` after the object header of CPython object `obj`."""
    ctypes = _openssl[0]
    return ctypes.c_void_p.from_address(
        id(obj) + object.__basicsize__ + slot * ctypes.sizeof(ctypes.c_void_p)).value


def _ssl_pointer(ssl_object):
    """The SSL* of an ssl.SSLObject / SSLSocket, or None if the layout is not the known one:
    _ssl._SSLSocket is {HEAD; Socket weakref; SSL *ssl; PySSLContext *ctx; ...}."""
    if not _libssl():
        return None
    inner = getattr(ssl_object, "_sslobj", None)
    if inner is None or type(inner).__name__ != "_SSLSocket":
        return None
    if _pointer(inner, 2) != id(inner.context):
        return None
    return _pointer(inner, 1)


def _accept_any_client_cert(ctx):
    """Make `ctx` ask for a client certificate and accept any; False if not possible."""
    if not _libssl():
        return False
    ctypes, lib, callback = _openssl
    probe = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    ssl_ptr = _ssl_pointer(probe)
    ctx_ptr = _pointer(ctx, 0)           # PySSLContext is {HEAD; SSL_CTX *ctx; ...}
    if not ssl_ptr or not ctx_ptr or lib.SSL_get_SSL_CTX(ssl_ptr) != ctx_ptr:
        return False
    ctx.verify_mode = ssl.CERT_OPTIONAL
    lib.SSL_CTX_set_verify(ctx_ptr, lib.SSL_CTX_get_verify_mode(ctx_ptr), callback)
    return True


# -- the macros -----------------------------------------------------------------------------

# OpenSSL's short names (OBJ_nid2sn) for X509_NAME_oneline.
_SHORT = {
    "2.5.4.3": "CN", "2.5.4.6": "C", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O",
    "2.5.4.11": "OU", "2.5.4.4": "SN", "2.5.4.42": "GN", "2.5.4.12": "title",
    "2.5.4.5": "serialNumber", "2.5.4.9": "street", "2.5.4.17": "postalCode",
    "2.5.4.41": "name", "2.5.4.43": "initials", "2.5.4.46": "dnQualifier",
    "2.5.4.65": "pseudonym", "2.5.4.15": "businessCategory",
    "1.2.840.113549.1.9.1": "emailAddress", "0.9.2342.19200300.100.1.25": "DC",
    "0.9.2342.19200300.100.1.1": "UID",
}


def xtextify(text, taboo='<>")'):
    """Sendmail's xtextify: "+", "\\", "(", the taboo characters and anything outside
    "!".."~" become +HH (xtext, RFC 3461)."""
    out = []
    for byte in text.encode("utf-8", "surrogateescape"):
        c = chr(byte)
        if byte < 0x21 or byte > 0x7e or c in "+\\(" or c in taboo:
            out.append("+%02X" % byte)
        else:
            out.append(c)
    return "".join(out)


def name_oneline(name):
    """OpenSSL's X509_NAME_oneline of a cryptography Name: "/C=US/O=Example/CN=host"."""
    parts = []
    for rdn in name.rdns:
        items = []
        for attr in rdn:
            value = attr.value if isinstance(attr.value, str) else attr.value.decode("latin-1")
            shown = "".join(chr(b) if 0x20 <= b <= 0x7e else "\\x%02X" % b
                            for b in value.encode("utf-8"))
            items.append("%s=%s" % (_SHORT.get(attr.oid.dotted_string, attr.oid.dotted_string),
                                    shown))
        parts.append("+".join(items))
    return "".join("/" + p for p in parts)


def _common_name(name):
    from cryptography.x509.oid import NameOID
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not values:
        return ""
    value = values[0].value
    return value if isinstance(value, str) else value.decode("latin-1")


def verify_result(ssl_object):
    """OpenSSL's SSL_get_verify_result for the connection (0 is X509_V_OK), or None."""
    ptr = _ssl_pointer(ssl_object)
    if not ptr:
        return None
    return _openssl[1].SSL_get_verify_result(ptr)


def tls_macros(ssl_object):
    """Sendmail's macros after STARTTLS (tls.c tls_get_info), without braces: tls_version,
    cipher, cipher_bits, alg_bits, verify, cert_subject, cert_issuer, cn_subject,
    cn_issuer, cert_md5. {} when `ssl_object` is None (no TLS: Sendmail's server leaves
    them undefined)."""
    if ssl_object is None:
        return {}
    import hashlib
    cipher = ssl_object.cipher() or ("", "UNKNOWN", 0)
    macros = {"cipher": cipher[0], "cipher_bits": str(cipher[2] or 0),
              "alg_bits": str(cipher[2] or 0), "tls_version": cipher[1] or "UNKNOWN"}
    der = ssl_object.getpeercert(binary_form=True)
    if der:
        from cryptography import x509
        cert = x509.load_der_x509_certificate(der)
        macros["cert_subject"] = xtextify(name_oneline(cert.subject))
        macros["cert_issuer"] = xtextify(name_oneline(cert.issuer))
        macros["cn_subject"] = xtextify(_common_name(cert.subject))
        macros["cn_issuer"] = xtextify(_common_name(cert.issuer))
        macros["cert_md5"] = ":".join("%02X" % b for b in hashlib.md5(der).digest())
    else:
        for key in ("cert_subject", "cert_issuer", "cn_subject", "cn_issuer", "cert_md5"):
            macros[key] = ""
    result = verify_result(ssl_object)
    if result is None:          # no ctypes access: a cert we got was verified by ssl itself
        result = 0
    if result != 0:
        macros["verify"] = "FAIL"
    elif der:
        macros["verify"] = "OK"
    else:
        asked = ssl_object.context.verify_mode != ssl.CERT_NONE
        macros["verify"] = "NO" if asked else "NOT"
    return macros
