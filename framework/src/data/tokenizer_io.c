/* Tokenizer text format, for files and for embedding in checkpoints:
 *
 *   thinklab-tokenizer 1
 *   kind char|byte|bpe
 *   vocab_size V
 *   symbols 0a 20 21 ...      (char only: the V bytes of ids 0..V-1, in hex)
 *   merges M                  (bpe only, M = V - 256, then M lines)
 *   left right                (merge r makes id 256 + r)
 *   end
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data_internal.h"
#include "internal.h"

#define TL_TOKENIZER_MAGIC "thinklab-tokenizer"

/* ---- writing ------------------------------------------------------------ */

typedef struct tl_strbuf {
    char *data;
    size_t len, cap;
    bool oom;
} tl_strbuf;

static void tl_strbuf_printf(tl_strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void tl_strbuf_printf(tl_strbuf *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->data ? b->data + b->len : NULL, b->data ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = true;
            return;
        }
        if (b->data && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? 2 * b->cap : 4096;
        while (cap < b->len + (size_t)n + 1)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) {
            b->oom = true;
            return;
        }
        b->data = grown;
        b->cap = cap;
    }
}

char *tl_tokenizer_to_string(const tl_tokenizer *tok, size_t *len)
{
    tl_strbuf b = {0};
    tl_strbuf_printf(&b, "%s %d\nkind %s\nvocab_size %d\n", TL_TOKENIZER_MAGIC,
                     TL_TOKENIZER_FORMAT_VERSION, tl_tokenizer_kind_name(tok->kind),
                     tok->vocab_size);
    if (tok->kind == TL_TOKENIZER_CHAR) {
        tl_strbuf_printf(&b, "symbols");
        for (int id = 0; id < tok->vocab_size; id++)
            tl_strbuf_printf(&b, " %02x", tok->symbols[id]);
        tl_strbuf_printf(&b, "\n");
    }
    if (tok->kind == TL_TOKENIZER_BPE) {
        tl_strbuf_printf(&b, "merges %d\n", tok->n_merges);
        for (int r = 0; r < tok->n_merges; r++)
            tl_strbuf_printf(&b, "%d %d\n", (int)tok->merges[2 * r], (int)tok->merges[2 * r + 1]);
    }
    tl_strbuf_printf(&b, "end\n");
    if (b.oom) {
        free(b.data);
        tl_seterr(TL_ENOMEM, "could not allocate the serialised %s tokenizer",
                  tl_tokenizer_kind_name(tok->kind));
        return NULL;
    }
    if (len)
        *len = b.len;
    return b.data;
}

/* Checks that a save may replace what is at path: nothing, an empty file or
 * a thinklab tokenizer file. The rename at the end of a save replaces any
 * file, also a corpus or a device node, and an open of a FIFO at tmp blocks. */
static tl_status tl_check_tokenizer_target(const char *path, const char *tmp)
{
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
        return tl_seterr(TL_EINVAL, "tokenizer file '%s' is a directory; give a file path such "
                                    "as '%s/tokenizer.txt'", path, path);
    if (tl_check_existing_file(path, "tokenizer file") != TL_OK ||
        tl_check_existing_file(tmp, "temporary tokenizer file") != TL_OK)
        return tl_lasterr();
    if (stat(path, &sb) != 0 || sb.st_size == 0)
        return TL_OK;
    char head[sizeof TL_TOKENIZER_MAGIC] = "";
    FILE *f = fopen(path, "rb");
    size_t got = f ? fread(head, 1, sizeof head - 1, f) : 0;
    if (f)
        fclose(f);
    if (got == sizeof head - 1 && memcmp(head, TL_TOKENIZER_MAGIC, got) == 0)
        return TL_OK;
    return tl_seterr(TL_EINVAL, "tokenizer file '%s' exists and is not a thinklab tokenizer "
                                "file; saving would destroy it: choose another path or delete "
                                "the file", path);
}

tl_status tl_tokenizer_save(const tl_tokenizer *tok, const char *path)
{
    if (!path || !path[0])
        return tl_seterr(TL_EINVAL, "the tokenizer file path is empty; give a file path such as "
                                    "'tokenizer.txt'");
    if (tl_check_parent_folder(path, "tokenizer file") != TL_OK)
        return tl_lasterr();
    size_t tmp_len = strlen(path) + 5;
    char *tmp = malloc(tmp_len);
    if (!tmp)
        return tl_seterr(TL_ENOMEM, "could not allocate a path");
    snprintf(tmp, tmp_len, "%s.tmp", path);
    if (tl_check_tokenizer_target(path, tmp) != TL_OK) {
        free(tmp);
        return tl_lasterr();
    }
    size_t len;
    char *text = tl_tokenizer_to_string(tok, &len);
    if (!text) {
        free(tmp);
        return tl_lasterr();
    }

    tl_status status = TL_OK;
    int fd = tl_open_temp(tmp);
    if (fd >= 0 && ftruncate(fd, 0) != 0) {
        int err = errno;
        close(fd);
        fd = -1;
        errno = err;
    }
    FILE *f = fd >= 0 ? fdopen(fd, "wb") : NULL;
    if (!f) {
        int err = errno;
        if (fd >= 0)
            close(fd);
        status = tl_seterr(TL_EIO, "could not create tokenizer file '%s': %s; check that the "
                                   "directory exists and is writable", tmp, strerror(err));
    } else {
        bool ok = fwrite(text, 1, len, f) == len;
        ok = (fclose(f) == 0) && ok;
        if (!ok)
            status = tl_seterr(TL_EIO, "could not write tokenizer file '%s': %s", tmp, strerror(errno));
        else if (rename(tmp, path) != 0)
            status = tl_seterr(TL_EIO, "could not rename '%s' to '%s': %s", tmp, path, strerror(errno));
        if (status != TL_OK)
            remove(tmp);
    }
    free(tmp);
    free(text);
    return status;
}

/* ---- reading ------------------------------------------------------------ */

typedef struct tl_line_reader {
    const char *text;
    size_t len, at;
    int line_no;
    bool at_end;   /* the last tl_next_line found no line */
    bool too_long; /* the last tl_next_line found a line longer than line[] takes */
    char line[4096];
} tl_line_reader;

/* Copies the next line, without its newline, into r->line. Returns false at
 * the end of the text or on a line too long for the buffer; line_no then
 * names the line that is missing or too long. */
static bool tl_next_line(tl_line_reader *r)
{
    r->line[0] = '\0';
    r->line_no++;
    r->at_end = r->at >= r->len;
    if (r->at_end)
        return false;
    size_t end = r->at;
    while (end < r->len && r->text[end] != '\n')
        end++;
    size_t n = end - r->at;
    if (n > 0 && r->text[r->at + n - 1] == '\r')
        n--; /* a file saved with Windows line ends */
    r->too_long = n >= sizeof r->line;
    if (r->too_long)
        return false;
    memcpy(r->line, r->text + r->at, n);
    r->line[n] = '\0';
    r->at = end < r->len ? end + 1 : end;
    return true;
}

/* Reads n decimal integers separated by single spaces from s, which must
 * contain nothing else. Rejects signs other than '-', empty fields, trailing
 * text and values outside int. */
static bool tl_read_ints(const char *s, int n, int *out)
{
    for (int i = 0; i < n; i++) {
        if (i > 0 && *s++ != ' ')
            return false;
        if (!(isdigit((unsigned char)*s) || (*s == '-' && isdigit((unsigned char)s[1]))))
            return false;
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno == ERANGE || v < INT_MIN || v > INT_MAX)
            return false;
        out[i] = (int)v;
        s = end;
    }
    return *s == '\0';
}

/* Reads "key <int>" from line into *value. */
static bool tl_read_keyed_int(const char *line, const char *key, int *value)
{
    size_t k = strlen(key);
    return strncmp(line, key, k) == 0 && line[k] == ' ' && tl_read_ints(line + k + 1, 1, value);
}

static tl_tokenizer *tl_format_error(const tl_line_reader *r, const char *expected)
{
    char found[96];
    if (r->at_end)
        snprintf(found, sizeof found, "the end of the text");
    else if (r->too_long)
        snprintf(found, sizeof found, "a line longer than %zu bytes", sizeof r->line - 1);
    else
        snprintf(found, sizeof found, "'%.60s'", r->line);
    tl_seterr(TL_EFORMAT, "tokenizer text, line %d: expected %s, found %s: the file is not a "
                          "thinklab tokenizer or is truncated",
              r->line_no, expected, found);
    return NULL;
}

static tl_tokenizer *tl_read_char(tl_line_reader *r, int vocab_size)
{
    if (!tl_next_line(r) || strncmp(r->line, "symbols", 7) != 0 ||
        (r->line[7] != ' ' && r->line[7] != '\0'))
        return tl_format_error(r, "'symbols' and the hex bytes");
    char *texts[1];
    unsigned char bytes[256];
    const char *p = r->line + 7;
    for (int id = 0; id < vocab_size; id++) {
        if (p[0] == '\0') {
            char expected[64];
            snprintf(expected, sizeof expected, "vocab_size = %d symbols, not %d", vocab_size, id);
            return tl_format_error(r, expected);
        }
        /* " hh": a space, then two hex digits. */
        if (p[0] != ' ' || !isxdigit((unsigned char)p[1]) || !isxdigit((unsigned char)p[2]) ||
            (p[3] != ' ' && p[3] != '\0'))
            return tl_format_error(r, "one hex byte per symbol, as ' 61'");
        char hex[3] = {p[1], p[2], '\0'};
        unsigned value = (unsigned)strtoul(hex, NULL, 16);
        if (id > 0 && value <= bytes[id - 1])
            return tl_format_error(r, "symbols in increasing byte order");
        bytes[id] = (unsigned char)value;
        p += 3;
    }
    if (*p != '\0')
        return tl_format_error(r, "exactly vocab_size symbols");
    texts[0] = (char *)bytes;
    size_t n = (size_t)vocab_size;
    return tl_tokenizer_char_new_multi((const char *const *)texts, &n, 1);
}

static tl_tokenizer *tl_read_bpe(tl_line_reader *r, int vocab_size)
{
    int n_merges = -1;
    if (!tl_next_line(r) || !tl_read_keyed_int(r->line, "merges", &n_merges) ||
        n_merges != vocab_size - 256)
        return tl_format_error(r, "'merges <vocab_size - 256>'");
    int32_t *merges = malloc((2 * (size_t)n_merges + 1) * sizeof *merges);
    if (!merges) {
        tl_seterr(TL_ENOMEM, "could not allocate %d BPE merges", n_merges);
        return NULL;
    }
    for (int m = 0; m < n_merges; m++) {
        int pair[2];
        if (!tl_next_line(r) || !tl_read_ints(r->line, 2, pair)) {
            free(merges);
            return tl_format_error(r, "a merge as 'left right'");
        }
        merges[2 * m] = pair[0];
        merges[2 * m + 1] = pair[1];
    }
    tl_tokenizer *tok = tl_bpe_from_merges(merges, n_merges);
    free(merges);
    return tok;
}

tl_tokenizer *tl_tokenizer_from_string(const char *text, size_t len)
{
    tl_line_reader r = {.text = text, .len = text ? len : 0};
    int version = -1;
    if (!tl_next_line(&r) || !tl_read_keyed_int(r.line, TL_TOKENIZER_MAGIC, &version))
        return tl_format_error(&r, "'" TL_TOKENIZER_MAGIC " <version>'");
    if (version != TL_TOKENIZER_FORMAT_VERSION) {
        tl_seterr(TL_EFORMAT, "tokenizer format version %d, but this thinklab reads version %d: "
                              "use the thinklab that wrote it or retrain the tokenizer",
                  version, TL_TOKENIZER_FORMAT_VERSION);
        return NULL;
    }

    char kind_name[16] = "";
    int kind = -1, vocab_size = -1;
    if (!tl_next_line(&r) || strncmp(r.line, "kind ", 5) != 0 ||
        strlen(r.line + 5) >= sizeof kind_name)
        return tl_format_error(&r, "'kind char|byte|bpe'");
    snprintf(kind_name, sizeof kind_name, "%s", r.line + 5);
    for (int k = 0; k < TL_TOKENIZER_KIND_COUNT; k++)
        if (strcmp(kind_name, tl_tokenizer_kind_name((tl_tokenizer_kind)k)) == 0)
            kind = k;
    if (kind < 0)
        return tl_format_error(&r, "a kind of char, byte or bpe");
    if (!tl_next_line(&r) || strncmp(r.line, "vocab_size ", 11) != 0)
        return tl_format_error(&r, "'vocab_size <V>'");
    /* A value that is not an int (too large, say) falls to the kind's range below. */
    if (!tl_read_keyed_int(r.line, "vocab_size", &vocab_size))
        vocab_size = -1;

    tl_tokenizer *tok = NULL;
    if (kind == TL_TOKENIZER_CHAR) {
        if (vocab_size < 1 || vocab_size > 256)
            return tl_format_error(&r, "a char vocab_size in [1, 256]");
        tok = tl_read_char(&r, vocab_size);
    } else if (kind == TL_TOKENIZER_BYTE) {
        if (vocab_size != 256)
            return tl_format_error(&r, "vocab_size 256 for the byte kind");
        tok = tl_tokenizer_byte_new();
    } else {
        if (vocab_size < 256 || vocab_size > (1 << 24))
            return tl_format_error(&r, "a bpe vocab_size in [256, 16777216]");
        tok = tl_read_bpe(&r, vocab_size);
    }
    if (!tok)
        return NULL;
    if (!tl_next_line(&r) || strcmp(r.line, "end") != 0) {
        tl_tokenizer_free(tok);
        return tl_format_error(&r, "'end'");
    }
    return tok;
}

tl_tokenizer *tl_tokenizer_load(const char *path)
{
    size_t len;
    char *text = tl_read_whole_file(path, "tokenizer file", &len);
    if (!text)
        return NULL;
    tl_tokenizer *tok = tl_tokenizer_from_string(text, len);
    free(text);
    if (!tok) {
        char message[1024];
        snprintf(message, sizeof message, "%s", tl_errmsg());
        tl_seterr(tl_lasterr(), "%s: %s", path, message);
    }
    return tok;
}
