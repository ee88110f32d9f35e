"""Removing finished messages from the queue in a thread, while the queue run goes on.

Taking a message's files out of the queue (unlink or recycle its qf and df) is file
system work that can cost more than delivering it (hundreds of microseconds per file
on a busy ext4). A queue run hands each finished message here together with its lock
(the df's descriptor): a worker thread removes the files, then closes the descriptor,
so no other runner can take the message before it is gone. The thread releases the
GIL in those system calls, so the run keeps delivering meanwhile.

The backlog is bounded (BACKLOG messages; a full queue makes the run wait): a crash
(kill -9) can repeat at most those deliveries, like a crash between a delivery and the
removal of its queue file always could. `close()` waits for the backlog to be done.
"""
import os
import queue
import threading

from ..queue.spool import Spool

BACKLOG = 64


class Remover:
    def __init__(self, queue_dir, log):
        self.spool = Spool(queue_dir)       # its own: the pool counters are not shared
        self.log = log
        self.jobs = queue.Queue(BACKLOG)
        self.thread = threading.Thread(target=self._work, name="queue-remover", daemon=True)
        self.thread.start()

    def remove(self, qid, nrcpts, lock_fd):
        """Remove message `qid` (nrcpts recipients), then close `lock_fd`."""
        self.jobs.put((qid, nrcpts, lock_fd))

    def _work(self):
        while True:
            job = self.jobs.get()
            if job is None:
                return
            qid, nrcpts, fd = job
            try:
                self.spool.remove(qid, nrcpts)
            except OSError as e:
                self.log.err(qid, "cannot remove the delivered message: %s" % e)
            finally:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def close(self):
        self.jobs.put(None)
        self.thread.join()
