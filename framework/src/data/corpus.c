/* Text files and their train/validation split. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data_internal.h"
#include "internal.h"

/* Sets the message for a failed open() of path and returns NULL. */
static char *tl_open_failed(const char *path, const char *file_kind, int err)
{
    char cwd[512];
    if (!getcwd(cwd, sizeof cwd))
        snprintf(cwd, sizeof cwd, "(unknown)");
    if (err == ENOENT)
        tl_seterr(TL_ENOTFOUND, "%s '%s' not found (relative paths start at the current "
                                "directory, %s): check the path",
                  file_kind, path, cwd);
    else
        tl_seterr(TL_EIO, "could not open %s '%s': %s", file_kind, path, strerror(err));
    return NULL;
}

char *tl_read_whole_file(const char *path, const char *file_kind, size_t *len)
{
    if (!path) {
        tl_seterr(TL_EINVAL, "no path given for the %s", file_kind);
        return NULL;
    }
    /* O_NONBLOCK makes the open of a FIFO without a writer return at once, so
     * that fstat can reject it. It has no effect on reads of a regular file. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return tl_open_failed(path, file_kind, errno);
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int err = errno;
        close(fd);
        tl_seterr(TL_EIO, "could not read %s '%s': %s", file_kind, path, strerror(err));
        return NULL;
    }
    if (S_ISDIR(sb.st_mode)) {
        close(fd);
        tl_seterr(TL_EINVAL, "%s '%s' is a directory: give the path of a file in it", file_kind,
                  path);
        return NULL;
    }
    /* A device or a FIFO may never reach its end (/dev/zero fills memory
     * until an allocation fails or the kernel kills the process), so only
     * regular files are read. */
    if (tl_require_regular_file(path, file_kind, sb.st_mode) != TL_OK) {
        close(fd);
        return NULL;
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        int err = errno;
        close(fd);
        tl_seterr(TL_EIO, "could not read %s '%s': %s", file_kind, path, strerror(err));
        return NULL;
    }
    /* The size of the file sizes the buffer, so that a file larger than
     * memory fails in one allocation instead of after reading most of it.
     * The loop below still grows the buffer for files whose size is 0 in
     * stat (those of /proc) or that grow while they are read. */
    char *text = NULL;
    size_t n = 0, cap = 0;
    if (sb.st_size > 0) {
        uint64_t need = (uint64_t)sb.st_size + 2; /* the final '\0' and a read that reaches EOF */
        text = need <= SIZE_MAX ? malloc((size_t)need) : NULL;
        if (!text) {
            fclose(f);
            tl_seterr(TL_ENOMEM, "could not allocate %.2f MiB to read %s '%s': the file is "
                                 "larger than the memory this process can allocate; use a "
                                 "smaller file", (double)need / 1048576.0, file_kind, path);
            return NULL;
        }
        cap = (size_t)need;
    }
    for (;;) {
        if (cap - n < 2) {
            cap = cap ? 2 * cap : 1u << 16;
            char *grown = realloc(text, cap);
            if (!grown) {
                free(text);
                fclose(f);
                tl_seterr(TL_ENOMEM, "could not allocate %zu bytes to read %s '%s'", cap, file_kind, path);
                return NULL;
            }
            text = grown;
        }
        size_t got = fread(text + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    bool failed = ferror(f) != 0;
    int err = errno;
    fclose(f);
    if (failed) {
        free(text);
        tl_seterr(TL_EIO, "could not read %s '%s': %s", file_kind, path, strerror(err));
        return NULL;
    }
    text[n] = '\0';
    *len = n;
    return text;
}

/* Returns the offset of the first byte that breaks UTF-8, or len if none.
 * Rejects overlong forms, surrogates and code points above U+10FFFF. */
static size_t tl_utf8_invalid_at(const unsigned char *t, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned char c = t[i];
        size_t extra;
        unsigned lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            extra = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            extra = 2;
            if (c == 0xe0)
                lo = 0xa0;
            if (c == 0xed)
                hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            extra = 3;
            if (c == 0xf0)
                lo = 0x90;
            if (c == 0xf4)
                hi = 0x8f;
        } else {
            return i;
        }
        if (i + extra >= len) /* truncated at the end of the text */
            return i;
        if (t[i + 1] < lo || t[i + 1] > hi)
            return i;
        for (size_t k = 2; k <= extra; k++)
            if (t[i + k] < 0x80 || t[i + k] > 0xbf)
                return i;
        i += extra + 1;
    }
    return len;
}

char *tl_text_read(const char *path, size_t *len)
{
    size_t n;
    char *text = tl_read_whole_file(path, "text file", &n);
    if (!text)
        return NULL;
    if (n == 0) {
        free(text);
        tl_seterr(TL_EFORMAT, "text file '%s' is empty: a corpus needs text to train on", path);
        return NULL;
    }
    size_t bad = tl_utf8_invalid_at((const unsigned char *)text, n);
    if (bad < n) {
        tl_seterr(TL_EFORMAT, "text file '%s' is not valid UTF-8 at byte offset %zu (byte 0x%02x): "
                              "convert it to UTF-8, e.g. with iconv",
                  path, bad, (unsigned char)text[bad]);
        free(text);
        return NULL;
    }
    *len = n;
    return text;
}

static char *tl_copy_bytes(const char *src, size_t n)
{
    char *dst = malloc(n + 1);
    if (!dst)
        return NULL;
    memcpy(dst, src, n);
    dst[n] = '\0';
    return dst;
}

tl_corpus *tl_corpus_load(const char *path, double val_fraction)
{
    if (!(val_fraction > 0.0 && val_fraction < 1.0)) {
        tl_seterr(TL_EINVAL, "validation fraction %g is outside (0, 1): use e.g. %g, or "
                             "tl_corpus_load_split for separate files",
                  val_fraction, TL_CORPUS_VAL_FRACTION);
        return NULL;
    }
    size_t len;
    char *text = tl_text_read(path, &len);
    if (!text)
        return NULL;

    /* Never split inside a UTF-8 character: continuation bytes are 10xxxxxx. */
    size_t cut = (size_t)((double)len * (1.0 - val_fraction));
    while (cut < len && ((unsigned char)text[cut] & 0xc0) == 0x80)
        cut++;
    if (cut == 0 || cut == len) {
        tl_seterr(TL_EINVAL, "splitting the %zu bytes of '%s' with validation fraction %g leaves "
                             "%s split empty: use a larger file or another fraction",
                  len, path, val_fraction, cut == 0 ? "the training" : "the validation");
        free(text);
        return NULL;
    }

    tl_corpus *c = calloc(1, sizeof *c);
    if (c) {
        c->train = tl_copy_bytes(text, cut);
        c->val = tl_copy_bytes(text + cut, len - cut);
        c->train_len = cut;
        c->val_len = len - cut;
    }
    free(text);
    if (!c || !c->train || !c->val) {
        tl_corpus_free(c);
        tl_seterr(TL_ENOMEM, "could not allocate the %zu-byte corpus '%s'", len, path);
        return NULL;
    }
    return c;
}

tl_corpus *tl_corpus_load_split(const char *train_path, const char *val_path)
{
    tl_corpus *c = calloc(1, sizeof *c);
    if (!c) {
        tl_seterr(TL_ENOMEM, "could not allocate a corpus");
        return NULL;
    }
    c->train = tl_text_read(train_path, &c->train_len);
    if (c->train)
        c->val = tl_text_read(val_path, &c->val_len);
    if (!c->train || !c->val) {
        tl_corpus_free(c);
        return NULL;
    }
    return c;
}

void tl_corpus_free(tl_corpus *corpus)
{
    if (!corpus)
        return;
    free(corpus->train);
    free(corpus->val);
    free(corpus);
}

tl_status tl_corpus_encode(const tl_corpus *corpus, const tl_tokenizer *tok, tl_tokens *train,
                           tl_tokens *val)
{
    val->ids = NULL;
    val->n = 0;
    tl_status status = tl_tokenizer_encode(tok, corpus->train, corpus->train_len, train);
    if (status != TL_OK) {
        char message[1024];
        snprintf(message, sizeof message, "%s", tl_errmsg());
        return tl_seterr(status, "training split: %s", message);
    }
    status = tl_tokenizer_encode(tok, corpus->val, corpus->val_len, val);
    if (status != TL_OK) {
        char message[1024];
        snprintf(message, sizeof message, "%s", tl_errmsg());
        tl_tokens_free(train);
        return tl_seterr(status, "validation split: %s", message);
    }
    return TL_OK;
}
