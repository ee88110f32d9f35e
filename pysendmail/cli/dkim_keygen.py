"""`pysendmail dkim-keygen [--type rsa|ed25519] [--bits N] [--dir DIR] [--force] DOMAIN
SELECTOR`: make a DKIM signing key, and print the DNS TXT record to publish and the key
table line (mailauth.keytable) that signs DOMAIN's mail with it.

The key goes to DIR/SELECTOR.private (PKCS#8 PEM); the record is also written beside it
as DIR/SELECTOR.txt.  DIR defaults to ETC/dkim/DOMAIN, ETC being /etc/pysendmail for root,
PYSENDMAIL_ROOT/etc for a private instance (else the user's private instance's etc).
RSA keys are 2048 bits unless told (1024 to 4096; RFC 8301); Ed25519 keys (RFC 8463)
have no size.  The record is printed in zone-file syntax, its value cut into strings of
at most 255 bytes (the most one TXT string holds), e.g.

    sel1._domainkey.example.com. IN TXT ( "v=DKIM1; k=rsa; p=MIIBIjAN..."
            "...IDAQAB" )

Security stance: the private key file is created 0600 with O_EXCL|O_NOFOLLOW (a key is
never overwritten without --force, and then replaced by an atomic rename), under a
directory created 0700 when missing; its text is never printed.  Exit status: 0, 64 bad
usage, 73 cannot create the files.
"""
import os
import sys

USAGE = ("usage: pysendmail dkim-keygen [--type rsa|ed25519] [--bits N] [--dir DIR] [--force]"
         " DOMAIN SELECTOR")
EX_USAGE, EX_CANTCREAT = 64, 73
TXT_CHUNK = 255


def _err(text):
    sys.stderr.write("pysendmail dkim-keygen: %s\n" % text)


def _parse(argv):
    """-> dict of the options, or a usage message (str)."""
    opts = {"type": "rsa", "bits": None, "dir": None, "force": False}
    args = []
    it = iter(argv)
    for arg in it:
        if arg in ("--type", "--bits", "--dir") or arg.startswith(("--type=", "--bits=", "--dir=")):
            name, eq, value = arg.partition("=")
            if not eq:
                value = next(it, None)
                if value is None:
                    return "%s needs a value" % name
            opts[name[2:]] = value
        elif arg == "--force":
            opts["force"] = True
        elif arg in ("-h", "--help"):
            return ""
        elif arg.startswith("-") and arg != "-":
            return "unknown option %s" % arg
        else:
            args.append(arg)
    if len(args) != 2:
        return "DOMAIN and SELECTOR are needed"
    from ..mailauth.keytable import _valid_name, normalize_domain
    opts["domain"], opts["selector"] = normalize_domain(args[0]), args[1].lower()
    if not _valid_name(opts["domain"]) or "." not in opts["domain"]:
        return "bad domain %r" % args[0]
    if not _valid_name(opts["selector"]):
        return "bad selector %r" % args[1]
    opts["type"] = opts["type"].lower()
    if opts["type"] not in ("rsa", "ed25519"):
        return "--type is rsa or ed25519"
    if opts["bits"] is not None:
        if opts["type"] != "rsa":
            return "--bits is for RSA keys"
        if not opts["bits"].isdigit() or not 1024 <= int(opts["bits"]) <= 4096:
            return "--bits is from 1024 to 4096"
    opts["bits"] = int(opts["bits"] or 2048)
    return opts


def generate(key_type="rsa", bits=2048):
    """(private key PEM bytes, TXT record value str) of a new key."""
    import base64
    from cryptography.hazmat.primitives import serialization as ser
    if key_type == "rsa":
        from cryptography.hazmat.primitives.asymmetric import rsa
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        public = key.public_key().public_bytes(ser.Encoding.DER,
                                               ser.PublicFormat.SubjectPublicKeyInfo)
    else:
        from cryptography.hazmat.primitives.asymmetric import ed25519
        key = ed25519.Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    return pem, "v=DKIM1; k=%s; p=%s" % (key_type, base64.b64encode(public).decode("ascii"))


def zone_record(domain, selector, value):
    """The record in zone-file syntax, the value in strings of at most 255 bytes."""
    chunks = [value[i:i + TXT_CHUNK] for i in range(0, len(value), TXT_CHUNK)]
    return "%s._domainkey.%s. IN TXT ( %s )" % (
        selector, domain, "\n\t".join('"%s"' % c for c in chunks))


def _write(path, data, force):
    """Create `path` 0600 with `data`; with force, replace it atomically."""
    target = path
    if force:
        path = os.path.join(os.path.dirname(path), ".%s.%d.tmp" % (os.path.basename(path),
                                                                   os.getpid()))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if force:
        os.replace(path, target)


def main(argv):
    opts = _parse(list(argv))
    if isinstance(opts, str):
        if opts:
            _err(opts)
        sys.stderr.write(USAGE + "\n")
        return EX_USAGE if opts else 0
    from ..mailauth.keytable import default_path, etc_dir
    domain, selector = opts["domain"], opts["selector"]
    directory = os.path.abspath(opts["dir"] or os.path.join(etc_dir(), "dkim", domain))
    private = os.path.join(directory, selector + ".private")
    txt_file = os.path.join(directory, selector + ".txt")
    pem, value = generate(opts["type"], opts["bits"])
    record = zone_record(domain, selector, value)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        _write(private, pem, opts["force"])
    except FileExistsError:
        _err("%s exists (--force replaces it)" % private)
        return EX_CANTCREAT
    except OSError as e:
        _err("%s: %s" % (private, e.strerror or e))
        return EX_CANTCREAT
    try:
        with open(txt_file, "w") as f:
            f.write(record + "\n")
    except OSError as e:
        _err("%s: %s" % (txt_file, e.strerror or e))
    algo = "" if opts["type"] == "rsa" else " ed25519"
    sys.stdout.write("%s\n; private key (%s%s): %s\n; key table line (%s):\n%s %s %s%s\n" % (
        record, opts["type"], " %d bits" % opts["bits"] if opts["type"] == "rsa" else "",
        private, default_path(), domain, selector, private, algo))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
