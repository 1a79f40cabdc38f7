/* The writer's lock on a run log: one process writes a log at a time.
 *
 * Because the writer turns HDF5 file locking off, so that readers can open
 * the log during a run, HDF5 does not stop a second writer. Two writers, such
 * as a resume started while the interrupted run still goes on, damage the
 * file beyond what HDF5 can read. The writer therefore holds a Linux
 * open-file-description lock (F_OFD_SETLK) on one byte far past the end of
 * the file. Readers take no such lock: HDF5 1.10 and later lock with
 * flock(), which Linux keeps apart from these locks on local file systems.
 * The kernel releases the lock when the writer exits, also after SIGKILL.
 *
 * NOTE: the Linux NFS client turns flock() into a whole-file lock of this
 * kind, so there a reader with HDF5 locking on may fail to open the log
 * while the run goes on; HDF5_USE_FILE_LOCKING=FALSE avoids that. This was
 * not tried on an NFS mount. */
#define _GNU_SOURCE /* F_OFD_SETLK */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log_internal.h"

/* 2^62: no log grows to it, so the lock never covers a byte a reader reads. */
#define TL_LOG_LOCK_OFFSET ((off_t)1 << 62)

tl_status tl_log_lock(const char *path, int *fd_out)
{
    *fd_out = -1;
#ifdef F_OFD_SETLK
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        /* A missing file has no writer to collide with. */
        if (err == ENOENT)
            return TL_OK;
        /* HDF5 would fail on the same open with only "H5Fopen failed". */
        const char *fix = NULL;
        struct stat sb;
        if (err == EACCES && stat(path, &sb) == 0 && sb.st_uid != geteuid())
            return tl_seterr(TL_EIO, "run log '%s' exists but cannot be opened for writing "
                                     "(%s): it belongs to another user (uid %u), so ask its "
                                     "owner to make it writable, or choose another log path",
                             path, strerror(err), (unsigned)sb.st_uid);
        if (err == EACCES)
            fix = "make it writable, for example with chmod u+w";
        else if (err == EPERM)
            fix = "make it writable (an immutable or append-only attribute stops writes: "
                  "see lsattr and chattr -i -a)";
        else if (err == EROFS)
            fix = "make it writable (its file system is mounted read-only)";
        if (fix)
            return tl_seterr(TL_EIO, "run log '%s' exists but cannot be opened for writing "
                                     "(%s): %s, or choose another log path",
                             path, strerror(err), fix);
        return tl_seterr(TL_EIO, "cannot open run log '%s' for writing: %s; check the path or "
                                 "choose another log path", path, strerror(err));
    }
    struct flock lock;
    memset(&lock, 0, sizeof lock);
    lock.l_type = F_WRLCK;
    lock.l_whence = SEEK_SET;
    lock.l_start = TL_LOG_LOCK_OFFSET;
    lock.l_len = 1;
    if (fcntl(fd, F_OFD_SETLK, &lock) == 0) {
        *fd_out = fd;
        return TL_OK;
    }
    int err = errno;
    close(fd);
    if (err == EAGAIN || err == EACCES)
        return tl_seterr(TL_ESTATE, "run log '%s' is being written by another open log, in "
                                    "this or another process, such as the run it belongs to or "
                                    "another resume of it; stop or close that writer first or "
                                    "give this run a new log path", path);
    /* NOTE: on a file system that rejects these locks the log is written
     * without the check. */
    return TL_OK;
#else
    (void)path;
    return TL_OK;
#endif
}

void tl_log_unlock(int fd)
{
    if (fd >= 0)
        close(fd);
}
