"""The compiled form of a sendmail.cf: parsed once, then read back without the parser.

Two places hold it, both `marshal`led plain data (CfConfig.to_plain) keyed on the
SHA-256 of the cf's contents and on CACHE_VERSION (bump it whenever the parser or the
model changes):

* `<cf>.compiled` next to the cf, written ahead of time (`compile_to`): `pip install`
  writes it for the shipped default cf (setup.py), so that no installed command ever
  imports the parser for it;
* `cache_dir/cf-<sha256 of the absolute path>.cache`, written by cf.load() on a miss
  (the instance's state/cache directory), for any other cf;
* `cache_dir/rules-<sha256 of the absolute path>.cache`: the cf's rewriting rules
  compiled (config/rules.py), keyed on the rules, the macros they were compiled with
  and OperatorChars.

Keying on the contents is safer than size + mtime: an edit within the same second and a
file replaced by one of the same size are both seen.  A hit hashes the cf (about 0.2 ms
for Debian's 80 KB cf) and unmarshals: lark, re, hashlib and pickle are not imported.
An unreadable, corrupted or stale entry is ignored (and rewritten in the cache
directory); a cache directory that cannot be written is not an error.
"""
import marshal
import os

from .cf_model import CfConfig

try:
    from _sha2 import sha256 as _sha256          # Python 3.12+
except ImportError:
    try:
        from _sha256 import sha256 as _sha256    # 3.11: the builtin, without OpenSSL
    except ImportError:
        from hashlib import sha256 as _sha256

CACHE_VERSION = 2
_MAGIC = "pysendmail-cf"


def digest(data):
    return _sha256(data).hexdigest()


def cache_file(path, cache_dir, kind="cf"):
    """Where the compiled form of the cf at path is kept: kind "cf" (cf.load()) or
    "rules" (config/rules.py); a changed cf replaces its entries."""
    key = _sha256(os.path.abspath(path).encode("utf-8", "surrogateescape")).hexdigest()
    return os.path.join(cache_dir, "%s-%s.cache" % (kind, key[:32]))


def compiled_file(path):
    """The compiled form written ahead of time next to the cf."""
    return path + ".compiled"


def lookup(path, data, cache_dir=None, warn=None):
    """The compiled form of the cf at *path* whose contents are *data*: `<path>.compiled`,
    then the cache in cache_dir; None when neither was made from these contents."""
    key = digest(data)
    cf = read(compiled_file(path), key, path, warn, same_path=False)
    if cf is None and cache_dir is not None:
        cf = read(cache_file(path, cache_dir), key, path, warn)
    return cf


def read(where, key, path, warn, same_path=True):
    """The CfConfig stored at *where* if it is the compiled form of contents *key*, else
    None.  same_path: the entry must have been made from *path* (the per-path cache);
    a compiled sibling made elsewhere (at build time) takes the cf's path now."""
    plain = read_blob(where, key)
    if plain is None:
        return None
    try:
        cf = CfConfig.from_plain(plain)
    except Exception:       # a corrupted entry: parse again
        return None
    if cf.path != path:
        if same_path:
            return None
        cf.path = path
    if warn is not None:
        for file, line, message, text in cf.warnings:
            warn("%s:%d: %s: %s" % (file, line, message, text))
    return cf


def write(where, key, cf):
    """Store the compiled form atomically (temporary name, rename); False on failure."""
    return write_blob(where, key, cf.to_plain())


def read_blob(where, key):
    """Plain data stored by write_blob() under *key*, or None."""
    try:
        with open(where, "rb") as f:
            magic, version, stored, data = marshal.loads(f.read())
    except Exception:       # absent, unreadable, corrupted
        return None
    if magic != _MAGIC or version != CACHE_VERSION or stored != key:
        return None
    return data


def write_blob(where, key, data):
    """Store plain data atomically (temporary name, rename); False on failure."""
    tmp = "%s.%d.tmp" % (where, os.getpid())
    try:
        os.makedirs(os.path.dirname(where) or ".", exist_ok=True)
        blob = marshal.dumps((_MAGIC, CACHE_VERSION, key, data))
        with open(tmp, "wb") as f:
            f.write(blob)
        os.replace(tmp, where)
        return True
    except (OSError, ValueError):
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False
