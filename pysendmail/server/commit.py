"""Group commit: many received messages made durable by one sync, never a 250 too early.

The SMTP driver writes each message's df and tf files without syncing them and hands
them here. Batches form by themselves: while one batch is being synced (in a worker
thread, so the event loop keeps reading), everything that arrives waits for the next
one. For a batch:

    1. syncfs(queue directory): every df and tf of the batch (and their inodes) on disk,
       one call (Linux; elsewhere each file is fsync'd, in parallel threads);
    2. rename each tfID to qfID;
    3. fsync the queue directory: the renames on disk;
    4. close each df (its flock goes, so a queue run may take the message);

and only then does each waiting session get its answer (the future's result). A
failure anywhere fails the batch's messages (the session answers 451 and removes
them). `SuperSafe=False` skips the syncs (Sendmail's meaning: do not fsync).

This is why the durable-acceptance rate grows with concurrency instead of being one
disk flush per message: Postfix's cleanup fsyncs each queue file; ext4 then merges
concurrent flushes, but one process cannot have more than one in flight.
"""
import os

from ..queue.spool import syncfs_function as _load_syncfs


class Pending:
    """One message waiting for its commit."""

    __slots__ = ("qid", "df_fd", "tf", "qf", "future", "error")

    def __init__(self, qid, df_fd, tf, qf, future):
        self.qid = qid
        self.df_fd = df_fd
        self.tf = tf
        self.qf = qf
        self.future = future
        self.error = None


class GroupCommitter:
    def __init__(self, loop, queue_dir, super_safe=True, on_commit=None, executor=None):
        self.loop = loop
        self.queue_dir = queue_dir
        self.super_safe = super_safe
        self.on_commit = on_commit      # called with the list of committed qids
        self.executor = executor
        self.waiting = []
        self.busy = False
        self.batches = 0
        self.committed = 0
        self.syncfs = _load_syncfs() if super_safe else None

    def submit(self, qid, df_fd, tf_path, held=False):
        """Queue a written message for the next batch; returns a future that gets None
        once the message is durable, or an OSError. held=True: the control file becomes
        hfID (quarantined by a milter: kept, listed, not delivered until released)."""
        fut = self.loop.create_future()
        qf = os.path.join(self.queue_dir, ("hf" if held else "qf") + qid)
        self.waiting.append(Pending(qid, df_fd, tf_path, qf, fut))
        if not self.busy:
            self._start()
        return fut

    @property
    def idle(self):
        return not self.busy and not self.waiting

    def _start(self):
        batch, self.waiting = self.waiting, []
        self.busy = True
        job = self.loop.run_in_executor(self.executor, self._commit_batch, batch)
        job.add_done_callback(lambda f: self._done(batch, f))

    def _commit_batch(self, batch):
        """Runs in a thread: the steps of the module docstring."""
        dirfd = os.open(self.queue_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if self.super_safe:
                try:
                    if self.syncfs is not None:
                        self.syncfs(dirfd)
                    else:
                        for p in batch:
                            os.fsync(p.df_fd)
                            fd = os.open(p.tf, os.O_RDONLY | os.O_NOFOLLOW)
                            try:
                                os.fsync(fd)
                            finally:
                                os.close(fd)
                except OSError as e:
                    for p in batch:
                        p.error = e
                    return
            renamed = False
            for p in batch:
                try:
                    os.rename(p.tf, p.qf)
                    renamed = True
                except OSError as e:
                    p.error = e
            if renamed and self.super_safe:
                try:
                    os.fsync(dirfd)
                except OSError as e:
                    for p in batch:
                        p.error = p.error or e
        finally:
            os.close(dirfd)

    def _done(self, batch, job):
        exc = job.exception()
        committed = []
        for p in batch:
            error = p.error or exc
            if error is None:
                committed.append(p.qid)
            else:
                self._remove(p)
            try:
                os.close(p.df_fd)           # releases the message's lock
            except OSError:
                pass
            if not p.future.done():
                if error is None:
                    p.future.set_result(None)
                else:
                    p.future.set_exception(error if isinstance(error, OSError)
                                           else OSError(5, str(error)))
        self.batches += 1
        self.committed += len(committed)
        self.busy = False
        if committed and self.on_commit is not None:
            try:
                self.on_commit(committed)
            except Exception:
                pass
        if self.waiting:
            self._start()

    def _remove(self, p):
        """A message that could not be committed leaves nothing behind."""
        for path in (p.qf, p.tf, os.path.join(self.queue_dir, "df" + p.qid)):  # qf: or hf
            try:
                os.unlink(path)
            except OSError:
                pass
