/* File-system checks shared by the readers and writers of user files, and HDF5
 * set-up shared by the writers of checkpoints and run logs. */
#define _GNU_SOURCE /* F_OFD_SETLK */
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

tl_status tl_check_parent_folder(const char *path, const char *file_kind)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return TL_OK;
    if (slash[1] == '\0')
        return tl_seterr(TL_EINVAL, "cannot create %s '%s': the path ends with '/', so it names "
                                    "a folder, not a file: add a file name", file_kind, path);
    size_t n = slash == path ? 1 : (size_t)(slash - path);
    char *folder = malloc(n + 1);
    if (!folder)
        return tl_seterr(TL_ENOMEM, "no memory for the %s folder", file_kind);
    memcpy(folder, path, n);
    folder[n] = '\0';
    struct stat sb;
    tl_status st = TL_OK;
    if (stat(folder, &sb) != 0)
        st = tl_seterr(TL_ENOTFOUND, "cannot create %s '%s': folder '%s' does not exist; "
                                     "create it or choose another path", file_kind, path, folder);
    else if (!S_ISDIR(sb.st_mode))
        st = tl_seterr(TL_EINVAL, "cannot create %s '%s': '%s' is not a folder; choose a "
                                  "path in an existing folder", file_kind, path, folder);
    free(folder);
    return st;
}

tl_status tl_check_link_target(const char *path, const char *file_kind)
{
    struct stat sb;
    if (lstat(path, &sb) != 0 || !S_ISLNK(sb.st_mode) || stat(path, &sb) == 0)
        return TL_OK;
    int err = errno;
    char target[1024];
    ssize_t n = readlink(path, target, sizeof target - 1);
    if (n < 0)
        n = 0;
    target[n] = '\0';
    if (err == ENOENT)
        return tl_seterr(TL_ENOTFOUND, "%s '%s' is a symbolic link to '%s', which does not "
                                       "exist: give the target's path instead, or remove the "
                                       "link", file_kind, path, target);
    return tl_seterr(TL_EINVAL, "%s '%s' is a symbolic link to '%s' that cannot be followed "
                                "(%s): fix or remove the link, or choose another path",
                     file_kind, path, target, strerror(err));
}

uint64_t tl_file_size_limit(void)
{
    struct rlimit lim;
    if (getrlimit(RLIMIT_FSIZE, &lim) != 0 || lim.rlim_cur == RLIM_INFINITY)
        return UINT64_MAX;
    return (uint64_t)lim.rlim_cur;
}

int tl_probe_create(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd >= 0) {
        close(fd);
        unlink(path);
        return 0;
    }
    if (errno != EEXIST)
        return errno;
    /* O_NONBLOCK keeps the open of a FIFO from waiting for a reader. */
    fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return errno;
    close(fd);
    return 0;
}

int tl_open_temp(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) == 0 &&
        (S_ISLNK(sb.st_mode) || (S_ISREG(sb.st_mode) && sb.st_nlink > 1)) && unlink(path) != 0)
        return -1;
    return open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
}

int tl_lock_for_writing(const char *path, int *fd_out)
{
    *fd_out = -1;
    int fd = tl_open_temp(path);
    if (fd < 0)
        return errno;
#ifdef F_OFD_SETLK
    /* The byte at 2^62, as in the run log's lock: no file grows to it. */
    struct flock lock;
    memset(&lock, 0, sizeof lock);
    lock.l_type = F_WRLCK;
    lock.l_whence = SEEK_SET;
    lock.l_start = (off_t)1 << 62;
    lock.l_len = 1;
    if (fcntl(fd, F_OFD_SETLK, &lock) != 0 && (errno == EAGAIN || errno == EACCES)) {
        close(fd);
        return EAGAIN;
    }
    /* NOTE: on a file system that rejects these locks the file stays
     * unlocked, and two writers are not detected. */
#endif
    *fd_out = fd;
    return 0;
}

const char *tl_create_advice(int err)
{
    if (err == EACCES || err == EPERM || err == EROFS)
        return "make the folder writable or choose another path";
    return "choose another path";
}

/* Names what a non-regular st_mode is, for messages. */
static const char *tl_file_type_name(mode_t mode)
{
    if (S_ISDIR(mode))
        return "a directory";
    if (S_ISCHR(mode))
        return "a character device";
    if (S_ISBLK(mode))
        return "a block device";
    if (S_ISFIFO(mode))
        return "a FIFO (named pipe)";
    if (S_ISSOCK(mode))
        return "a socket";
    return "a special file";
}

tl_status tl_require_regular_file(const char *path, const char *file_kind, mode_t mode)
{
    if (S_ISREG(mode))
        return TL_OK;
    return tl_seterr(TL_EINVAL, "%s '%s' is %s, not a regular file: give the path of a regular "
                                "file instead", file_kind, path, tl_file_type_name(mode));
}

tl_status tl_check_existing_file(const char *path, const char *file_kind)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return TL_OK;
    return tl_require_regular_file(path, file_kind, sb.st_mode);
}

void tl_hdf5_prepare(void)
{
    static atomic_flag once = ATOMIC_FLAG_INIT;
    if (!atomic_flag_test_and_set(&once))
        H5dont_atexit(); /* fails harmlessly when HDF5 is already in use */
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

/* Keeps the first entry of an upward walk, the most specific error. */
static herr_t tl_hdf5_keep_innermost(unsigned n, const H5E_error2_t *err, void *data)
{
    char *text = data;
    (void)n;
    if (text[0] == '\0' && err->desc)
        snprintf(text, TL_HDF5_DETAIL_SIZE, "%s (in %s)", err->desc,
                 err->func_name ? err->func_name : "?");
    return 0;
}

const char *tl_hdf5_error_detail(char text[TL_HDF5_DETAIL_SIZE])
{
    text[0] = '\0';
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, tl_hdf5_keep_innermost, text);
    H5Eclear2(H5E_DEFAULT);
    /* A failed write has a description of several lines, and a message keeps to one. */
    for (char *c = text; *c; c++)
        if (*c == '\n' || *c == '\r')
            *c = ' ';
    return text[0] ? text : "no HDF5 error detail";
}
