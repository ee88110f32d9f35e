"""The layout and import directions of /work/shared/DESIGN.md, checked with `ast`.

Every import statement counts, including the lazy ones inside functions: a lazy import
still is a dependency. Rules:
  * pysendmail.proto imports nothing of pysendmail but model, errors and proto itself,
    and no I/O module of the stdlib (asyncio, socket, os, time, select, ssl and their
    C halves);
  * config and queue import nothing of pysendmail but model, errors and themselves;
  * nobody imports pysendmail.cli but cli itself and the launchers in bin/;
  * the graph of packages (top-level modules count as packages) has no cycle;
  * every module has a docstring; no module is over 600 lines;
  * the submission path (`sendmail -odq -t -i`, run under `python -X importtime`)
    imports none of re, email, dataclasses, getopt, json, socket, datetime, logging,
    asyncio, ssl, subprocess, hashlib.
"""
import ast
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(REPO, "pysendmail")
BIN = os.path.join(REPO, "bin")
MAX_LINES = 600


def _module_files():
    out = {}
    for dirpath, dirnames, filenames in os.walk(PKG):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
            if rel.endswith(".__init__"):
                rel = rel[:-len(".__init__")]
            out[rel] = path
    return out


MODULES = _module_files()


def _parse(path):
    with open(path, "rb") as f:
        return ast.parse(f.read(), path)


def imports_of(module, path):
    """Absolute names of everything `module` imports (module level and lazy)."""
    tree = _parse(path)
    is_pkg = os.path.basename(path) == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module
            for a in node.names:
                sub = base + "." + a.name
                out.add(sub if sub in MODULES else base)
    return out


IMPORTS = {m: imports_of(m, p) for m, p in MODULES.items()}


def unit(name):
    """The package a pysendmail module belongs to ('proto', 'addr', ...; '' for the root)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def own(names):
    return {n for n in names if n == "pysendmail" or n.startswith("pysendmail.")}


def stdlib_top(names):
    return {n.split(".")[0] for n in names if not (n == "pysendmail" or n.startswith("pysendmail."))}


def test_the_tree_was_found():
    assert "pysendmail.proto.smtp_server" in MODULES
    assert "pysendmail.queue.spool" in MODULES
    assert "pysendmail.errors" in IMPORTS["pysendmail.queue.spool"]
    assert "pysendmail.addr" in IMPORTS["pysendmail.submission.submit"]      # `from .. import addr`


PROTO_FORBIDDEN_STDLIB = {"asyncio", "socket", "_socket", "os", "posix", "time", "select",
                          "selectors", "ssl", "_ssl"}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if unit(m) == "proto"))
def test_proto_is_sans_io(module):
    bad_own = {n for n in own(IMPORTS[module])
               if unit(n) not in ("model", "errors", "proto")}
    assert not bad_own, "%s imports %s" % (module, sorted(bad_own))
    bad_std = stdlib_top(IMPORTS[module]) & PROTO_FORBIDDEN_STDLIB
    assert not bad_std, "%s imports I/O modules %s" % (module, sorted(bad_std))


@pytest.mark.parametrize("module", sorted(m for m in MODULES if unit(m) in ("config", "queue")))
def test_config_and_queue_depend_only_on_model_and_errors(module):
    mine = unit(module)
    bad = {n for n in own(IMPORTS[module]) if unit(n) not in ("model", "errors", mine)}
    assert not bad, "%s imports %s" % (module, sorted(bad))


def test_nobody_imports_cli_but_cli_and_bin():
    offenders = {m: sorted(n for n in own(names) if unit(n) == "cli")
                 for m, names in IMPORTS.items() if unit(m) != "cli"}
    offenders = {m: n for m, n in offenders.items() if n}
    assert not offenders
    # the launchers do import it, and nothing else of the package
    for name in ("sendmail", "mailq", "newaliases", "pysendmail"):
        path = os.path.join(BIN, name)
        names = imports_of("bin." + name, path)
        assert own(names) and {unit(n) for n in own(names)} == {"cli"}, (name, names)


def _cycles(graph):
    """Every strongly connected component with more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def package_graph():
    graph = {}
    for m, names in IMPORTS.items():
        src = unit(m)
        for n in own(names):
            dst = unit(n)
            if dst != src and dst != "":          # the root package holds only __version__
                graph.setdefault(src, set()).add(dst)
    return graph


def test_no_circular_imports_between_packages():
    graph = package_graph()
    assert "cli" in graph and "queue" in graph
    cycles = _cycles(graph)
    detail = {c: sorted((m, sorted(n for n in own(IMPORTS[m]) if unit(n) in c))
                        for m in MODULES if unit(m) in c) for c in map(tuple, cycles)}
    assert not cycles, detail


def test_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


LOWER_THAN = {     # a package may not import these (DESIGN.md: the arrows point one way)
    "model": {"*"}, "errors": {"*"},
    "delivery": {"daemon", "cli", "server", "milter", "qmgr", "submission"},
    "server": {"daemon", "cli", "delivery"},
    "milter": {"daemon", "cli", "server", "delivery"},
    "qmgr": {"daemon", "cli", "server", "milter", "submission"},     # the queue manager
    "submission": {"daemon", "cli", "server"},                        # the submission role
    "daemon": {"cli"},
}


def test_drivers_do_not_import_upwards():
    graph = package_graph()
    bad = {}
    for src, forbidden in LOWER_THAN.items():
        hit = graph.get(src, set())
        hit = hit if "*" in forbidden else hit & forbidden
        if hit:
            bad[src] = sorted(hit)
    assert not bad


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_has_a_docstring(module):
    doc = ast.get_docstring(_parse(MODULES[module]))
    assert doc and doc.strip(), "%s has no docstring" % module


def test_no_module_over_600_lines():
    long = {}
    for m, path in MODULES.items():
        with open(path, "rb") as f:
            n = f.read().count(b"\n")
        if n > MAX_LINES:
            long[m] = n
    assert not long, "modules over %d lines: %s" % (MAX_LINES, long)


SLOW_MODULES = ("re", "email", "dataclasses", "getopt", "json", "socket", "datetime", "logging",
                "asyncio", "ssl", "subprocess", "hashlib")


def _importtime(python, argv, env, input):
    p = subprocess.run([python, "-X", "importtime"] + argv, input=input, capture_output=True,
                       env=env, timeout=60)
    names = set()
    for line in p.stderr.decode("utf-8", "replace").splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.add(name)
    return p, names


def test_submission_path_imports(sm_bin, sm_root):
    python = os.path.join(sm_bin, "python")
    if not os.path.exists(python):
        python = sys.executable
    msg = b"To: root\nCc: postmaster\nBcc: root\nSubject: importtime\n\nbody\n"
    p, names = _importtime(python, [os.path.join(sm_bin, "sendmail"), "-odq", "-t", "-i"],
                           sm_root.env, msg)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "pysendmail.submission.submit" in names and "pysendmail.queue.spool" in names
    bad = sorted(n for n in names if n.split(".")[0] in SLOW_MODULES)
    assert not bad, "the submission path imports %s" % bad
    q = os.path.join(sm_root.path, "spool", "queue")
    assert any(n.startswith("qf") for n in os.listdir(q))


def test_importtime_probe_sees_slow_modules(sm_bin, sm_root):
    """The probe itself works: a run that imports json shows it."""
    python = os.path.join(sm_bin, "python")
    if not os.path.exists(python):
        python = sys.executable
    p, names = _importtime(python, ["-c", "import json"], sm_root.env, b"")
    assert p.returncode == 0
    assert "json" in names


@pytest.mark.root
def test_maildrop_submission_path_imports(sm_bin, require_program):
    """The path of a non-root caller (cron jobs of users, PHP as www-data): the maildrop."""
    if os.geteuid() != 0:
        pytest.skip("needs root (to act as nobody)")
    require_program("setpriv")
    import shutil
    import tempfile
    base = tempfile.mkdtemp(prefix="psm", dir="/tmp")
    try:
        os.chmod(base, 0o755)
        for d, mode in (("spool", 0o755), ("spool/maildrop", 0o1733), ("spool/queue", 0o700)):
            os.mkdir(os.path.join(base, d))
            os.chmod(os.path.join(base, d), mode)
        python = os.path.join(sm_bin, "python")
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "env",
                "PYSENDMAIL_ROOT=" + base, python, "-X", "importtime",
                os.path.join(sm_bin, "sendmail"), "-t", "-i"]
        p = subprocess.run(argv, input=b"To: root\nSubject: x\n\nbody\n", capture_output=True,
                           timeout=60)
        names = {line.rsplit("|", 1)[1].strip() for line in
                 p.stderr.decode("utf-8", "replace").splitlines()
                 if line.startswith("import time:") and line.count("|") == 2}
        assert p.returncode == 0, p.stderr[-2000:]
        assert "pysendmail.queue.maildrop" in names
        bad = sorted(n for n in names if n.split(".")[0] in SLOW_MODULES)
        assert not bad, "the maildrop submission path imports %s" % bad
    finally:
        shutil.rmtree(base, ignore_errors=True)
