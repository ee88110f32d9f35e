"""A server's processes and their memory: the process tree under one pid, VmRSS and Pss sums.

tree(pid) walks /proc/*/stat (the ppid field) and returns the pid and all its
descendants (a forking server's children: Postfix's smtpd/qmgr/pickup under
its master, a daemon's workers and queue-run children). memory(pids) sums
VmRSS (/proc/PID/status: pages shared between forked processes are counted in
each), Pss (/proc/PID/smaps_rollup: shared pages divided among the processes
that map them, so the sum counts them once) and USS (private pages), and names
the processes (comm) with their counts and the largest ones.

Read-only: it only reads /proc; a process that exits while it is read is
skipped.
"""
import os


def _stat(pid):
    """(comm, ppid) of a pid, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm is in parentheses and may hold spaces or ')': split at the LAST ')'
    lp, rp = data.find(b"("), data.rfind(b")")
    fields = data[rp + 2:].split()
    return data[lp + 1:rp].decode(errors="replace"), int(fields[1])


def tree(root_pid):
    """root_pid and every descendant alive now (sorted); [] when root_pid is gone."""
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(name)
            if st:
                parent[int(name)] = st[1]
    if root_pid not in parent:
        return []
    children = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root_pid]
    while todo and len(out) < 100000:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return sorted(out)


def _fields_kb(path, keys):
    """{key: KiB} for the lines of a /proc file that start with one of keys."""
    out = {}
    try:
        with open(path) as f:
            for line in f:
                k = line.split(":", 1)[0]
                if k in keys:
                    out[k] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return out


def memory(pids, detail=12):
    """{'procs', 'rss_kb', 'pss_kb', 'uss_kb', 'names': {comm: count}, 'top': [...]} summed over
    pids; USS = Private_Clean + Private_Dirty (what the process alone holds); `top` lists
    the `detail` largest processes by RSS (pid, comm, rss_kb, pss_kb, uss_kb)."""
    rss = pss = uss = n = 0
    names, each = {}, []
    for pid in pids:
        r = _fields_kb(f"/proc/{pid}/status", ("VmRSS",)).get("VmRSS")
        if r is None:
            continue
        roll = _fields_kb(f"/proc/{pid}/smaps_rollup", ("Pss", "Private_Clean", "Private_Dirty"))
        p = roll.get("Pss", 0)
        u = roll.get("Private_Clean", 0) + roll.get("Private_Dirty", 0)
        st = _stat(pid)
        comm = st[0] if st else "?"
        n += 1
        rss, pss, uss = rss + r, pss + p, uss + u
        names[comm] = names.get(comm, 0) + 1
        each.append({"pid": pid, "comm": comm, "rss_kb": r, "pss_kb": p, "uss_kb": u})
    each.sort(key=lambda e: -e["rss_kb"])
    return {"procs": n, "rss_kb": rss, "pss_kb": pss, "uss_kb": uss, "names": names, "top": each[:detail]}


def sample(root_pid):
    """memory() of root_pid's tree now."""
    return memory(tree(root_pid))
