"""A server's processes and their memory: the process tree under one pid, VmRSS and Pss sums.

tree(pid) walks /proc/*/stat (the ppid field) and returns the pid and all its
descendants (a forking server's children: Postfix's smtpd/qmgr/pickup under
its master, a daemon's per-connection or queue-run children). memory(pids)
sums VmRSS (/proc/PID/status) and Pss (/proc/PID/smaps_rollup: shared pages
divided among the processes that map them, so the sum counts them once) and
names the processes (comm) with their counts.

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


def _field_kb(path, key):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory(pids):
    """{'procs', 'rss_kb', 'pss_kb', 'names': {comm: count}} summed over pids."""
    rss = pss = n = 0
    names = {}
    for pid in pids:
        r = _field_kb(f"/proc/{pid}/status", "VmRSS:")
        if r is None:
            continue
        p = _field_kb(f"/proc/{pid}/smaps_rollup", "Pss:")
        st = _stat(pid)
        n += 1
        rss += r
        pss += p or 0
        if st:
            names[st[0]] = names.get(st[0], 0) + 1
    return {"procs": n, "rss_kb": rss, "pss_kb": pss, "names": names}


def sample(root_pid):
    """memory() of root_pid's tree now."""
    return memory(tree(root_pid))
