/* Tokenizers, corpora and batch sampling on the corpora in experiments/data. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gradcheck.h"

#ifndef TL_SOURCE_DIR
#error "TL_SOURCE_DIR must name the source tree (set in tests/data.cmake)"
#endif
#define DATA_DIR TL_SOURCE_DIR "/experiments/data/"

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static char *read_data(const char *name, size_t *len)
{
    char path[1024];
    snprintf(path, sizeof path, "%s%s", DATA_DIR, name);
    char *text = tl_text_read(path, len);
    CHECK_MSG(text != NULL, "%s", tl_errmsg());
    return text;
}

/* Encodes and decodes text and checks that the bytes come back unchanged.
 * Returns the number of ids, or -1 on failure. */
static int64_t check_round_trip(const char *label, const tl_tokenizer *tok, const char *text,
                                size_t len)
{
    tl_tokens ids;
    tl_status status = tl_tokenizer_encode(tok, text, len, &ids);
    CHECK_MSG(status == TL_OK, "%s: %s", label, tl_errmsg());
    if (status != TL_OK)
        return -1;
    int vocab = tl_tokenizer_vocab_size(tok);
    int64_t out_of_range = 0;
    for (int64_t i = 0; i < ids.n; i++)
        out_of_range += ids.ids[i] < 0 || ids.ids[i] >= vocab;
    CHECK_MSG(out_of_range == 0, "%s: %lld ids outside [0, %d)", label, (long long)out_of_range, vocab);
    size_t back_len = 0;
    char *back = tl_tokenizer_decode(tok, ids.ids, ids.n, &back_len);
    CHECK_MSG(back != NULL, "%s: %s", label, tl_errmsg());
    CHECK_MSG(back && back_len == len && memcmp(back, text, len) == 0,
              "%s: decode(encode(text)) differs from text (%zu bytes back, %zu expected)", label,
              back_len, len);
    free(back);
    int64_t n = ids.n;
    tl_tokens_free(&ids);
    return n;
}

static void test_byte_tokenizer(void)
{
    tl_tokenizer *tok = tl_tokenizer_byte_new();
    CHECK(tok != NULL);
    CHECK(tl_tokenizer_vocab_size(tok) == 256);
    CHECK(tl_tokenizer_kind_of(tok) == TL_TOKENIZER_BYTE);
    char all[512];
    for (int i = 0; i < 512; i++)
        all[i] = (char)(255 - i % 256);
    CHECK(check_round_trip("byte all values", tok, all, sizeof all) == 512);

    tl_tokens ids;
    CHECK(tl_tokenizer_encode(tok, "\xff" "A", 2, &ids) == TL_OK);
    CHECK(ids.n == 2);
    CHECK(ids.ids[0] == 255);
    CHECK(ids.ids[1] == 65);
    tl_tokens_free(&ids);

    int32_t bad[2] = {3, 256};
    CHECK(tl_tokenizer_decode(tok, bad, 2, NULL) == NULL);
    CHECK(strstr(tl_errmsg(), "token id 256 at position 1") != NULL);
    tl_tokenizer_free(tok);
}

static void test_char_tokenizer(void)
{
    size_t len;
    char *text = read_data("tinyshakespeare.txt", &len);
    if (!text)
        return;
    tl_tokenizer *tok = tl_tokenizer_char_new(text, len);
    CHECK(tok != NULL);
    if (!tok) {
        free(text);
        return;
    }
    CHECK(tl_tokenizer_kind_of(tok) == TL_TOKENIZER_CHAR);
    /* 65 distinct bytes, as counted by the corpus's publishers and nanoGPT. */
    CHECK_MSG(tl_tokenizer_vocab_size(tok) == 65, "vocab %d", tl_tokenizer_vocab_size(tok));
    CHECK(check_round_trip("char tinyshakespeare", tok, text, len) == (int64_t)len);

    /* Ids follow byte order: '\n' (0x0a) is the smallest byte, then ' '. */
    size_t piece;
    const char *first = tl_tokenizer_token_bytes(tok, 0, &piece);
    CHECK(first != NULL);
    CHECK(piece == 1);
    CHECK(first && first[0] == '\n');
    CHECK(tl_tokenizer_token_bytes(tok, 1, &piece)[0] == ' ');

    /* The only digit in Tiny Shakespeare is '3', so '7' is outside. */
    tl_tokens ids = {(int32_t *)1, 99};
    CHECK(tl_tokenizer_encode(tok, "act 7", 5, &ids) == TL_EINVAL);
    CHECK(ids.ids == NULL);
    CHECK(ids.n == 0);
    const char *msg = tl_errmsg();
    CHECK_MSG(strstr(msg, "'7'") && strstr(msg, "0x37") && strstr(msg, "offset 4"), "%s", msg);
    CHECK_MSG(strstr(msg, "every text it encodes") && strstr(msg, "byte tokenizer"), "%s", msg);
    tl_tokenizer_free(tok);

    /* Unprintable bytes appear escaped. */
    tok = tl_tokenizer_char_new("abc", 3);
    CHECK(tl_tokenizer_encode(tok, "ab\n", 3, &ids) == TL_EINVAL);
    CHECK_MSG(strstr(tl_errmsg(), "'\\n' (byte 0x0a) at byte offset 2"), "%s", tl_errmsg());
    CHECK(tl_tokenizer_encode(tok, "a\xc3", 2, &ids) == TL_EINVAL);
    CHECK_MSG(strstr(tl_errmsg(), "'\\xc3' (byte 0xc3) at byte offset 1"), "%s", tl_errmsg());
    tl_tokenizer_free(tok);
    CHECK(tl_tokenizer_char_new("", 0) == NULL);
    free(text);

    /* WikiText-2 test has characters that valid lacks, so the vocabulary
     * must come from both files. */
    size_t valid_len, test_len;
    char *valid = read_data("wikitext2_valid.txt", &valid_len);
    char *test = read_data("wikitext2_test.txt", &test_len);
    if (!valid || !test) {
        free(valid);
        free(test);
        return;
    }
    tl_tokenizer *from_valid = tl_tokenizer_char_new(valid, valid_len);
    CHECK(tl_tokenizer_encode(from_valid, test, test_len, &ids) == TL_EINVAL);
    const char *texts[2] = {valid, test};
    size_t lens[2] = {valid_len, test_len};
    tl_tokenizer *both = tl_tokenizer_char_new_multi(texts, lens, 2);
    CHECK(both != NULL);
    CHECK(both && tl_tokenizer_vocab_size(both) > tl_tokenizer_vocab_size(from_valid));
    CHECK(check_round_trip("char wikitext test", both, test, test_len) == (int64_t)test_len);
    tl_tokenizer_free(from_valid);
    tl_tokenizer_free(both);
    free(valid);
    free(test);
}

static void test_pretokens(void)
{
    /* A space before a word joins the word, other whitespace forms its own
     * pre-token, and letters, digits and punctuation split apart. */
    const char *text = "Hello, world  42\n\tyes";
    const char *expected[] = {"Hello", ",", " world", " ", " 42", "\n\t", "yes"};
    size_t len = strlen(text), start = 0;
    int n = 0;
    while (start < len && n < 7) {
        size_t end = tl_pretoken_end(text, len, start);
        CHECK_MSG(end - start == strlen(expected[n]) &&
                      memcmp(text + start, expected[n], end - start) == 0,
                  "pre-token %d is '%.*s', expected '%s'", n, (int)(end - start), text + start,
                  expected[n]);
        start = end;
        n++;
    }
    CHECK(n == 7);
    CHECK(start == len);
}

/* Checks the merge order on a corpus small enough to count by hand. */
static void test_bpe_hand_example(void)
{
    /* Pre-tokens "ab", " ab", " ab", " cd". Counts: (a,b) 3, (' ',a) 2,
     * (' ',c) 1, (c,d) 1. Merges: (a,b) -> 256, then (' ',256) -> 257 with
     * count 2, then the tie at count 1 goes to the smaller pair (' ',c) -> 258
     * before (c,d); last (258,d) -> 259. Then no pair remains. */
    const char *text = "ab ab ab cd";
    tl_tokenizer *tok = tl_tokenizer_bpe_train(text, strlen(text), 260);
    CHECK_MSG(tok != NULL, "%s", tl_errmsg());
    if (!tok)
        return;
    char *s = tl_tokenizer_to_string(tok, NULL);
    const char *expected = "thinklab-tokenizer 1\nkind bpe\nvocab_size 260\nmerges 4\n"
                           "97 98\n32 256\n32 99\n258 100\nend\n";
    CHECK_MSG(s && strcmp(s, expected) == 0, "got:\n%s", s);
    free(s);
    tl_tokens ids;
    CHECK(tl_tokenizer_encode(tok, text, strlen(text), &ids) == TL_OK);
    const int32_t expected_ids[4] = {256, 257, 257, 259};
    CHECK(ids.n == 4);
    CHECK(ids.n == 4 && memcmp(ids.ids, expected_ids, sizeof expected_ids) == 0);
    tl_tokens_free(&ids);
    tl_tokenizer_free(tok);

    CHECK(tl_tokenizer_bpe_train(text, strlen(text), 261) == NULL);
    CHECK_MSG(strstr(tl_errmsg(), "ran out of pairs after 4 merges"), "%s", tl_errmsg());
    CHECK(tl_tokenizer_bpe_train(text, strlen(text), 255) == NULL);
    CHECK(tl_tokenizer_bpe_train("", 0, 300) == NULL);
}

static bool is_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

static void test_bpe_corpus(void)
{
    size_t len;
    char *text = read_data("tinyshakespeare.txt", &len);
    if (!text)
        return;
    /* Train on the first 200 kB, test on the 100 kB after it. */
    const size_t train_len = 200000, held_len = 100000;
    const int vocab = 512;
    tl_tokenizer *tok = tl_tokenizer_bpe_train(text, train_len, vocab);
    CHECK_MSG(tok != NULL, "%s", tl_errmsg());
    if (!tok) {
        free(text);
        return;
    }
    CHECK(tl_tokenizer_kind_of(tok) == TL_TOKENIZER_BPE);
    CHECK(tl_tokenizer_vocab_size(tok) == vocab);

    int64_t n_train = check_round_trip("bpe train part", tok, text, train_len);
    int64_t n_held = check_round_trip("bpe held-out part", tok, text + train_len, held_len);
    /* Byte-level ids would number one per byte; 512 ids must do better. */
    CHECK_MSG(n_held > 0 && n_held < (int64_t)held_len, "%lld ids for %zu bytes",
              (long long)n_held, held_len);
    printf("bpe %d on 200 kB of tinyshakespeare: %.3f ids/byte on the training part, %.3f held out\n",
           vocab, (double)n_train / (double)train_len, (double)n_held / (double)held_len);

    /* No token crosses a word boundary: whitespace never follows a
     * non-whitespace byte inside one token. */
    int crossing = 0;
    for (int id = 256; id < vocab; id++) {
        size_t piece;
        const char *bytes = tl_tokenizer_token_bytes(tok, id, &piece);
        for (size_t k = 1; k < piece; k++)
            crossing += is_space(bytes[k]) && !is_space(bytes[k - 1]);
    }
    CHECK_MSG(crossing == 0, "%d tokens cross a word boundary", crossing);

    /* Non-ASCII and control bytes fall back to byte ids and come back. */
    const char *odd = "caf\xc3\xa9 \x01\xff  \n\n  end";
    CHECK(check_round_trip("bpe unseen bytes", tok, odd, strlen(odd)) > 0);

    /* Training is deterministic. */
    tl_tokenizer *again = tl_tokenizer_bpe_train(text, train_len, vocab);
    char *s1 = tl_tokenizer_to_string(tok, NULL);
    char *s2 = again ? tl_tokenizer_to_string(again, NULL) : NULL;
    CHECK(again != NULL);
    CHECK(s1 && s2 && strcmp(s1, s2) == 0);
    tl_tokenizer_free(again);
    free(s2);

    /* Save and load give the same merges and the same ids. */
    char path[] = "/tmp/tl_test_data_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd >= 0)
        close(fd);
    CHECK_MSG(tl_tokenizer_save(tok, path) == TL_OK, "%s", tl_errmsg());
    tl_tokenizer *loaded = tl_tokenizer_load(path);
    CHECK_MSG(loaded != NULL, "%s", tl_errmsg());
    if (loaded) {
        char *s3 = tl_tokenizer_to_string(loaded, NULL);
        CHECK(s3 != NULL);
        CHECK(s3 && strcmp(s1, s3) == 0);
        free(s3);
        tl_tokens a, b;
        CHECK(tl_tokenizer_encode(tok, text + train_len, held_len, &a) == TL_OK);
        CHECK(tl_tokenizer_encode(loaded, text + train_len, held_len, &b) == TL_OK);
        CHECK(a.n == b.n);
        CHECK(a.n == b.n && memcmp(a.ids, b.ids, (size_t)a.n * sizeof *a.ids) == 0);
        tl_tokens_free(&a);
        tl_tokens_free(&b);
        tl_tokenizer_free(loaded);
    }
    /* A path.tmp left as a symbolic link or a hard link to another file: the
     * save replaces the link, not the file it points to. */
    char tmp_path[64], victim[] = "/tmp/tl_test_data_victimXXXXXX";
    snprintf(tmp_path, sizeof tmp_path, "%s.tmp", path);
    int vfd = mkstemp(victim);
    CHECK(vfd >= 0);
    if (vfd >= 0) {
        CHECK(write(vfd, "victim\n", 7) == 7);
        close(vfd);
    }
    for (int hard = 0; hard < 2; hard++) {
        remove(tmp_path);
        CHECK(hard ? link(victim, tmp_path) == 0 : symlink(victim, tmp_path) == 0);
        CHECK_MSG(tl_tokenizer_save(tok, path) == TL_OK, "%s", tl_errmsg());
        char head[16] = "";
        FILE *vf = fopen(victim, "rb");
        size_t got = vf ? fread(head, 1, sizeof head - 1, vf) : 0;
        if (vf)
            fclose(vf);
        CHECK_MSG(got == 7 && memcmp(head, "victim\n", 7) == 0,
                  "the save wrote through the %s link '%s'", hard ? "hard" : "symbolic",
                  tmp_path);
    }
    remove(tmp_path);
    remove(victim);
    remove(path);

    /* A save to a folder or into a missing folder names the path and writes nothing. */
    char folder[] = "/tmp/tl_test_data_dirXXXXXX";
    CHECK(mkdtemp(folder) != NULL);
    CHECK(tl_tokenizer_save(tok, folder) == TL_EINVAL);
    CHECK_MSG(strstr(tl_errmsg(), "is a directory; give a file path such as"), "%s", tl_errmsg());
    CHECK_MSG(strstr(tl_errmsg(), folder), "%s", tl_errmsg());
    char missing[64];
    snprintf(missing, sizeof missing, "%s/no_such_folder/tok.txt", folder);
    CHECK(tl_tokenizer_save(tok, missing) == TL_ENOTFOUND);
    CHECK_MSG(strstr(tl_errmsg(), "folder '"), "%s", tl_errmsg());
    CHECK_MSG(strstr(tl_errmsg(), "/no_such_folder' does not exist"), "%s", tl_errmsg());
    CHECK_MSG(strstr(tl_errmsg(), ".tmp") == NULL, "%s", tl_errmsg());
    char leftover[64];
    snprintf(leftover, sizeof leftover, "%s.tmp", folder);
    CHECK(access(leftover, F_OK) != 0);
    CHECK(rmdir(folder) == 0);

    free(s1);
    tl_tokenizer_free(tok);
    free(text);
}

static void test_tokenizer_strings(void)
{
    /* Each kind survives the string form unchanged. */
    tl_tokenizer *kinds[2] = {tl_tokenizer_char_new("hello world", 11), tl_tokenizer_byte_new()};
    for (int k = 0; k < 2; k++) {
        char *s = tl_tokenizer_to_string(kinds[k], NULL);
        tl_tokenizer *back = tl_tokenizer_from_string(s, strlen(s));
        CHECK_MSG(back != NULL, "%s", tl_errmsg());
        if (back) {
            char *s2 = tl_tokenizer_to_string(back, NULL);
            CHECK(strcmp(s, s2) == 0);
            CHECK(tl_tokenizer_kind_of(back) == tl_tokenizer_kind_of(kinds[k]));
            CHECK(check_round_trip("string form", back, "hello world", 11) == 11);
            free(s2);
        }
        tl_tokenizer_free(back);
        free(s);
        tl_tokenizer_free(kinds[k]);
    }

    const char *wrong_magic = "gpt2-merges 1\nkind byte\nvocab_size 256\nend\n";
    CHECK(tl_tokenizer_from_string(wrong_magic, strlen(wrong_magic)) == NULL);
    CHECK(tl_lasterr() == TL_EFORMAT);
    const char *future = "thinklab-tokenizer 9\nkind byte\nvocab_size 256\nend\n";
    CHECK(tl_tokenizer_from_string(future, strlen(future)) == NULL);
    CHECK_MSG(strstr(tl_errmsg(), "version 9") && strstr(tl_errmsg(), "reads version 1"), "%s",
              tl_errmsg());
    const char *truncated = "thinklab-tokenizer 1\nkind bpe\nvocab_size 258\nmerges 2\n97 98\n";
    CHECK(tl_tokenizer_from_string(truncated, strlen(truncated)) == NULL);
    const char *forward = "thinklab-tokenizer 1\nkind bpe\nvocab_size 257\nmerges 1\n97 256\nend\n";
    CHECK(tl_tokenizer_from_string(forward, strlen(forward)) == NULL);
    CHECK_MSG(strstr(tl_errmsg(), "corrupt"), "%s", tl_errmsg());
    const char *extra = "thinklab-tokenizer 1\nkind char\nvocab_size 2\nsymbols 61 62 63\nend\n";
    CHECK(tl_tokenizer_from_string(extra, strlen(extra)) == NULL);
    const char *short_list = "thinklab-tokenizer 1\nkind char\nvocab_size 5\nsymbols 61 62 63\nend\n";
    CHECK(tl_tokenizer_from_string(short_list, strlen(short_list)) == NULL);
    CHECK_MSG(strstr(tl_errmsg(), "line 4: expected vocab_size = 5 symbols, not 3, found "
                                  "'symbols 61 62 63'"),
              "%s", tl_errmsg());
    const char *unsorted = "thinklab-tokenizer 1\nkind char\nvocab_size 2\nsymbols 62 61\nend\n";
    CHECK(tl_tokenizer_from_string(unsorted, strlen(unsorted)) == NULL);
    CHECK(tl_tokenizer_load("/nonexistent/tok.txt") == NULL);
    CHECK(tl_lasterr() == TL_ENOTFOUND);

    /* Fields are read strictly: no signs on hex bytes, no text after the
     * numbers, no values outside int. */
    const char *signed_byte = "thinklab-tokenizer 1\nkind char\nvocab_size 1\nsymbols -1\nend\n";
    CHECK(tl_tokenizer_from_string(signed_byte, strlen(signed_byte)) == NULL);
    CHECK_MSG(strstr(tl_errmsg(), "line 4: expected one hex byte per symbol"), "%s", tl_errmsg());
    const char *junk = "thinklab-tokenizer 1\nkind bpe\nvocab_size 257\nmerges 1\n97 98 x\nend\n";
    CHECK(tl_tokenizer_from_string(junk, strlen(junk)) == NULL);
    CHECK_MSG(strstr(tl_errmsg(), "line 5: expected a merge as 'left right', found '97 98 x'"),
              "%s", tl_errmsg());
    const char *huge = "thinklab-tokenizer 1\nkind bpe\nvocab_size 99999999999\nend\n";
    CHECK(tl_tokenizer_from_string(huge, strlen(huge)) == NULL);
    CHECK_MSG(strstr(tl_errmsg(), "line 3: expected a bpe vocab_size in [256, 16777216]"), "%s",
              tl_errmsg());
    /* A missing line is named by its own number. */
    const char *no_end = "thinklab-tokenizer 1\nkind char\nvocab_size 1\nsymbols 61\n";
    CHECK(tl_tokenizer_from_string(no_end, strlen(no_end)) == NULL);
    CHECK_MSG(strstr(tl_errmsg(), "line 5: expected 'end', found the end of the text"), "%s",
              tl_errmsg());
    /* Windows line ends read as Unix ones. */
    const char *crlf = "thinklab-tokenizer 1\r\nkind char\r\nvocab_size 2\r\nsymbols 61 62\r\nend\r\n";
    tl_tokenizer *from_crlf = tl_tokenizer_from_string(crlf, strlen(crlf));
    CHECK_MSG(from_crlf != NULL, "%s", tl_errmsg());
    if (from_crlf)
        CHECK(tl_tokenizer_vocab_size(from_crlf) == 2);
    tl_tokenizer_free(from_crlf);
}

static void test_corpus(void)
{
    tl_corpus *c = tl_corpus_load(DATA_DIR "tinyshakespeare.txt", TL_CORPUS_VAL_FRACTION);
    CHECK_MSG(c != NULL, "%s", tl_errmsg());
    if (c) {
        /* The 90/10 split nanoGPT uses: 1,003,854 + 111,540 bytes. */
        CHECK(c->train_len == 1003854);
        CHECK(c->val_len == 111540);
        CHECK(c->train[c->train_len] == '\0');
        CHECK(c->val[c->val_len] == '\0');
        tl_tokenizer *tok = tl_tokenizer_char_new(c->train, c->train_len);
        tl_tokens train, val;
        CHECK_MSG(tl_corpus_encode(c, tok, &train, &val) == TL_OK, "%s", tl_errmsg());
        CHECK(train.n == 1003854);
        CHECK(val.n == 111540);
        tl_tokens_free(&train);
        tl_tokens_free(&val);
        tl_tokenizer_free(tok);
        tl_corpus_free(c);
    }

    c = tl_corpus_load_split(DATA_DIR "wikitext2_valid.txt", DATA_DIR "wikitext2_test.txt");
    CHECK_MSG(c != NULL, "%s", tl_errmsg());
    if (c) {
        CHECK(c->train_len == 1121681);
        CHECK(c->val_len == 1256449);
        /* A vocabulary from the training file alone misses test characters,
         * and the message names the split that failed. */
        tl_tokenizer *tok = tl_tokenizer_char_new(c->train, c->train_len);
        tl_tokens train = {0}, val = {0};
        CHECK(tl_corpus_encode(c, tok, &train, &val) == TL_EINVAL);
        CHECK_MSG(strstr(tl_errmsg(), "validation split: character"), "%s", tl_errmsg());
        CHECK(train.ids == NULL);
        CHECK(val.ids == NULL);
        tl_tokenizer_free(tok);
        tl_corpus_free(c);
    }

    CHECK(tl_corpus_load("/nonexistent/corpus.txt", 0.1) == NULL);
    CHECK(tl_lasterr() == TL_ENOTFOUND);
    CHECK_MSG(strstr(tl_errmsg(), "'/nonexistent/corpus.txt' not found"), "%s", tl_errmsg());

    char path[] = "/tmp/tl_test_data_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd >= 0)
        close(fd);
    CHECK(tl_corpus_load(path, 0.1) == NULL);
    CHECK_MSG(strstr(tl_errmsg(), "is empty") && strstr(tl_errmsg(), path), "%s", tl_errmsg());

    FILE *f = fopen(path, "wb");
    fputs("ok \xc3\x28 bad", f);
    fclose(f);
    CHECK(tl_corpus_load(path, 0.1) == NULL);
    CHECK_MSG(strstr(tl_errmsg(), "not valid UTF-8 at byte offset 3"), "%s", tl_errmsg());

    /* The split point moves past UTF-8 continuation bytes: 10 bytes with
     * fraction 0.5 would cut inside the second e-acute. */
    f = fopen(path, "wb");
    fputs("abc\xc3\xa9" "d\xc3\xa9" "fg", f);
    fclose(f);
    c = tl_corpus_load(path, 0.5);
    CHECK(c != NULL);
    if (c) {
        CHECK(c->train_len == 5);
        CHECK(c->val_len == 5);
        CHECK(memcmp(c->val, "d\xc3\xa9" "fg", 5) == 0);
    }
    tl_corpus_free(c);
    CHECK(tl_corpus_load(path, 1.0) == NULL);
    CHECK(tl_corpus_load(path, 0.0) == NULL);
    remove(path);
}

enum { B = 4, T = 16, WORLD = 3 };

static void test_sampler(void)
{
    int32_t data[1000];
    for (int i = 0; i < 1000; i++)
        data[i] = i;
    tl_tokens tokens = {data, 1000};

    /* Same seed, same batches; targets are inputs shifted by one; each row is
     * a window of the split. */
    tl_sampler s1, s2;
    CHECK(tl_sampler_init(&s1, &tokens, B, T, 0, 1) == TL_OK);
    CHECK(tl_sampler_init(&s2, &tokens, B, T, 0, 1) == TL_OK);
    tl_rng r1, r2;
    tl_rng_seed(&r1, 7);
    tl_rng_seed(&r2, 7);
    int32_t x1[B * T], y1[B * T], x2[B * T], y2[B * T];
    for (int step = 0; step < 5; step++) {
        CHECK(tl_sampler_next(&s1, &r1, x1, y1) == TL_OK);
        CHECK(tl_sampler_next(&s2, &r2, x2, y2) == TL_OK);
        CHECK(memcmp(x1, x2, sizeof x1) == 0);
        CHECK(memcmp(y1, y2, sizeof y1) == 0);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                CHECK(y1[b * T + t] == x1[b * T + t] + 1);
                CHECK(t == 0 || x1[b * T + t] == x1[b * T + t - 1] + 1);
                CHECK(x1[b * T] >= 0);
                CHECK(y1[b * T + T - 1] < 1000);
            }
    }
    CHECK(s1.batches_drawn == 5);

    /* Resume: restore the rng words and the counter, get the same batch. */
    tl_rng saved = r1;
    int64_t saved_drawn = s1.batches_drawn;
    CHECK(tl_sampler_next(&s1, &r1, x1, y1) == TL_OK);
    tl_sampler resumed;
    CHECK(tl_sampler_init(&resumed, &tokens, B, T, 0, 1) == TL_OK);
    resumed.batches_drawn = saved_drawn;
    tl_rng restored = saved;
    CHECK(tl_sampler_next(&resumed, &restored, x2, y2) == TL_OK);
    CHECK(memcmp(x1, x2, sizeof x1) == 0);
    CHECK(resumed.batches_drawn == 6);

    /* WORLD ranks with B rows each see exactly the rows of one rank with
     * WORLD*B rows, and every rng ends in the same state. */
    tl_sampler whole;
    CHECK(tl_sampler_init(&whole, &tokens, WORLD * B, T, 0, 1) == TL_OK);
    tl_rng rw;
    tl_rng_seed(&rw, 11);
    int32_t xw[WORLD * B * T], yw[WORLD * B * T];
    CHECK(tl_sampler_next(&whole, &rw, xw, yw) == TL_OK);
    for (int rank = 0; rank < WORLD; rank++) {
        tl_sampler part;
        CHECK(tl_sampler_init(&part, &tokens, B, T, rank, WORLD) == TL_OK);
        tl_rng rr;
        tl_rng_seed(&rr, 11);
        CHECK(tl_sampler_next(&part, &rr, x1, y1) == TL_OK);
        CHECK(memcmp(x1, xw + rank * B * T, sizeof x1) == 0);
        CHECK(memcmp(y1, yw + rank * B * T, sizeof y1) == 0);
        CHECK(memcmp(rr.s, rw.s, sizeof rr.s) == 0);
        if (rank == 1)
            CHECK(memcmp(x1, xw, sizeof x1) != 0); /* ranks differ */
    }

    /* Errors name the numbers and the fix. */
    tl_tokens small = {data, 10};
    CHECK(tl_sampler_init(&s1, &small, B, 10, 0, 1) == TL_EINVAL);
    CHECK_MSG(strstr(tl_errmsg(), "context + 1 = 11 tokens") && strstr(tl_errmsg(), "the 10 tokens") &&
                  strstr(tl_errmsg(), "at most 9"),
              "%s", tl_errmsg());
    CHECK(tl_sampler_init(&s1, &small, B, 9, 0, 1) == TL_OK);
    CHECK(tl_sampler_init(&s1, &tokens, 0, T, 0, 1) == TL_EINVAL);
    CHECK_MSG(strstr(tl_errmsg(), "batch size 0"), "%s", tl_errmsg());
    CHECK(tl_sampler_init(&s1, &tokens, B, 0, 0, 1) == TL_EINVAL);
    CHECK(tl_sampler_init(&s1, &tokens, B, T, 2, 2) == TL_EINVAL);
    CHECK_MSG(strstr(tl_errmsg(), "rank 2 is outside [0, 2)"), "%s", tl_errmsg());
    CHECK(tl_sampler_init(&s1, &tokens, B, T, 0, 0) == TL_EINVAL);
}

static void test_eval_iter(void)
{
    enum { N = 1000 };
    int32_t data[N];
    for (int i = 0; i < N; i++)
        data[i] = i;
    tl_tokens tokens = {data, N};
    const int64_t windows = (N - 1) / T; /* 62 */

    /* One rank: windows in order, each target once. */
    tl_eval_iter it;
    CHECK(tl_eval_iter_init(&it, &tokens, B, T, 0, 1, 0) == TL_OK);
    CHECK(it.n_windows == windows);
    int32_t x[B * T], y[B * T];
    int rows, calls = 0;
    int64_t seen = 0;
    while (tl_eval_iter_next(&it, x, y, &rows)) {
        for (int r = 0; r < rows; r++) {
            CHECK(x[r * T] == (seen + r) * T);
            CHECK(y[r * T + T - 1] == (seen + r) * T + T);
        }
        seen += rows;
        calls++;
    }
    CHECK(seen == windows);
    CHECK(calls == (windows + B - 1) / B);

    /* WORLD ranks: disjoint windows, together all of them, same call count. */
    int64_t covered = 0;
    for (int rank = 0; rank < WORLD; rank++) {
        CHECK(tl_eval_iter_init(&it, &tokens, B, T, rank, WORLD, 0) == TL_OK);
        int rank_calls = 0;
        while (tl_eval_iter_next(&it, x, y, &rows)) {
            for (int r = 0; r < rows; r++) {
                int64_t window = x[r * T] / T;
                CHECK(window / B % WORLD == rank);
                covered++;
            }
            rank_calls++;
        }
        CHECK(rank_calls == (windows + WORLD * B - 1) / (WORLD * B));
    }
    CHECK(covered == windows);

    /* A limit stops the pass; reset starts it again. */
    CHECK(tl_eval_iter_init(&it, &tokens, B, T, 0, 1, 2) == TL_OK);
    calls = 0;
    while (tl_eval_iter_next(&it, x, y, &rows))
        calls++;
    CHECK(calls == 2);
    tl_eval_iter_reset(&it);
    CHECK(tl_eval_iter_next(&it, x, y, &rows) == 1);
    CHECK(rows == B);
    CHECK(x[0] == 0);

    tl_tokens small = {data, 16};
    CHECK(tl_eval_iter_init(&it, &small, B, 16, 0, 1, 0) == TL_EINVAL);
    CHECK_MSG(strstr(tl_errmsg(), "validation split"), "%s", tl_errmsg());
}

/* Times BPE training on the full KJV (4.3 MB) to 2048 ids. It prints the time
 * and does not assert on it, because the time depends on the machine. */
static void measure_bpe_kjv(void)
{
    size_t len;
    char *text = read_data("kjv_bible.txt", &len);
    if (!text)
        return;
    double t0 = seconds_now();
    tl_tokenizer *tok = tl_tokenizer_bpe_train(text, len, 2048);
    double t1 = seconds_now();
    CHECK_MSG(tok && tl_tokenizer_vocab_size(tok) == 2048, "%s", tl_errmsg());
    if (tok) {
        int64_t n = check_round_trip("bpe kjv", tok, text, len);
        double t2 = seconds_now();
        printf("bpe 2048 on kjv_bible.txt (%zu bytes): train %.2f s, encode+decode %.2f s, "
               "%lld ids (%.3f ids/byte)\n",
               len, t1 - t0, t2 - t1, (long long)n, (double)n / (double)len);
    }
    tl_tokenizer_free(tok);
    free(text);
}

int main(void)
{
    test_byte_tokenizer();
    test_char_tokenizer();
    test_pretokens();
    test_bpe_hand_example();
    test_bpe_corpus();
    test_tokenizer_strings();
    test_corpus();
    test_sampler();
    test_eval_iter();
    measure_bpe_kjv();
    return gc_finish("data");
}
