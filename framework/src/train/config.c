/* Training configuration: defaults, validation and the JSON form stored in
 * logs and checkpoints. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/train_internal.h"

tl_train_config tl_train_config_default(void)
{
    return (tl_train_config){
        .batch_size = 16,
        .context = 128,
        .steps = 1000,
        .optim = tl_optim_default(),
        .schedule = {.kind = TL_SCHEDULE_WARMUP_COSINE, .lr = 3e-4f, .min_lr = 3e-5f,
                     .warmup = 100, .total = 1000},
        .clip_norm = 1.0,
        .eval_every = 200,
        .eval_batches = 20,
        .eval_calibration_batches = 4,
        .seed = 1,
        .shards = true,
        .log_token_seqs = 1,
        .log_routing_every = 10,
        .progress_every = 10,
        .callback_every = 1,
    };
}

tl_status tl_train_config_resolve(tl_train_config *c)
{
    if (c->batch_size < 1)
        return tl_seterr(TL_EINVAL, "batch_size %lld must be >= 1", (long long)c->batch_size);
    if (c->context < 1)
        return tl_seterr(TL_EINVAL, "context %lld must be >= 1", (long long)c->context);
    if (c->batch_size > INT32_MAX || c->context > INT32_MAX)
        return tl_seterr(TL_EINVAL, "batch_size %lld or context %lld exceeds 2^31-1",
                         (long long)c->batch_size, (long long)c->context);
    if (c->steps < 0 || c->token_budget < 0)
        return tl_seterr(TL_EINVAL, "steps %lld and token_budget %lld must be >= 0",
                         (long long)c->steps, (long long)c->token_budget);
    if (c->steps == 0) {
        if (c->token_budget == 0)
            return tl_seterr(TL_EINVAL, "set steps or token_budget: both are 0");
        /* Tokens of one step over all ranks (world 0 counts as 1). */
        int64_t per_step = c->batch_size * c->context * (c->world > 1 ? c->world : 1);
        c->steps = (c->token_budget + per_step - 1) / per_step;
    }
    c->schedule.total = c->steps;
    tl_status st = tl_optim_validate(&c->optim);
    if (st != TL_OK)
        return st;
    st = tl_schedule_validate(&c->schedule);
    if (st != TL_OK)
        return st;
    if (!(c->clip_norm >= 0) || !isfinite(c->clip_norm))
        return tl_seterr(TL_EINVAL, "clip_norm %g must be finite and >= 0 (0 disables clipping)",
                         c->clip_norm);
    if (c->eval_every < 0 || c->eval_batches < 0 || c->eval_calibration_batches < 0)
        return tl_seterr(TL_EINVAL, "eval_every %lld, eval_batches %lld and "
                                    "eval_calibration_batches %lld must be >= 0",
                         (long long)c->eval_every, (long long)c->eval_batches,
                         (long long)c->eval_calibration_batches);
    if (c->threads < 0)
        return tl_seterr(TL_EINVAL, "threads %d must be >= 0 (0 = all cores)", c->threads);
    if (c->log_flush_every < 0)
        return tl_seterr(TL_EINVAL, "log_flush_every %d must be >= 0", c->log_flush_every);
    if (c->log_grads_every < 0)
        return tl_seterr(TL_EINVAL, "log_grads_every %lld must be >= 0",
                         (long long)c->log_grads_every);
    if (c->log_routing_every < 0)
        return tl_seterr(TL_EINVAL, "log_routing_every %lld must be >= 0",
                         (long long)c->log_routing_every);
    if (c->log_token_seqs < 0 || c->log_token_seqs > c->batch_size)
        return tl_seterr(TL_EINVAL, "log_token_seqs %lld must lie in [0, batch_size = %lld]",
                         (long long)c->log_token_seqs, (long long)c->batch_size);
    if (c->checkpoint_every < 0)
        return tl_seterr(TL_EINVAL, "checkpoint_every %lld must be >= 0",
                         (long long)c->checkpoint_every);
    if (c->progress_every < 0)
        return tl_seterr(TL_EINVAL, "progress_every %lld must be >= 0",
                         (long long)c->progress_every);
    if (c->experiment_json && c->experiment_json[0]) {
        const char *first = c->experiment_json + strspn(c->experiment_json, " \t\r\n");
        size_t len = strlen(first);
        while (len > 0 && strchr(" \t\r\n", first[len - 1]))
            len--;
        if (len == 0 || first[0] != '{' || first[len - 1] != '}')
            return tl_seterr(TL_EINVAL, "experiment_json must be a JSON object, from '{' to "
                                        "'}'; it starts with '%.20s'", first);
    }
    if (c->callback && c->callback_every < 1)
        return tl_seterr(TL_EINVAL, "callback_every %lld must be >= 1 when a callback is set",
                         (long long)c->callback_every);
    return TL_OK;
}

/* ---- JSON writer ---------------------------------------------------------- */

/* Appends formatted text; len keeps counting past size so the caller learns
 * the length the full text needs. */
static void json_printf(tl_json *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void json_printf(tl_json *j, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t room = j->len < j->size ? j->size - j->len : 0;
    int n = vsnprintf(room ? j->buf + j->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        j->len += (size_t)n;
}

/* Separates a value from the previous member or array element. */
static void json_separate(tl_json *j)
{
    json_printf(j, "%s", j->first ? "" : ", ");
    j->first = false;
}

static void json_key(tl_json *j, const char *key)
{
    json_separate(j);
    tl_json_string(j, key);
    json_printf(j, ": ");
}

void tl_json_init(tl_json *j, char *buf, size_t size)
{
    *j = (tl_json){.buf = buf, .size = size, .first = true};
    if (size)
        buf[0] = '\0';
}

void tl_json_begin(tl_json *j, const char *key)
{
    if (key)
        json_key(j, key);
    else
        json_separate(j);
    json_printf(j, "{");
    j->first = true;
}

void tl_json_end(tl_json *j)
{
    json_printf(j, "}");
    j->first = false;
}

void tl_json_begin_array(tl_json *j, const char *key)
{
    json_key(j, key);
    json_printf(j, "[");
    j->first = true;
}

void tl_json_end_array(tl_json *j)
{
    json_printf(j, "]");
    j->first = false;
}

void tl_json_string(tl_json *j, const char *s)
{
    json_printf(j, "\"");
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        if (*p == '"' || *p == '\\')
            json_printf(j, "\\%c", *p);
        else if (*p == '\n')
            json_printf(j, "\\n");
        else if (*p < 0x20)
            json_printf(j, "\\u%04x", *p);
        else
            json_printf(j, "%c", *p);
    }
    json_printf(j, "\"");
}

void tl_json_key_string(tl_json *j, const char *key, const char *s)
{
    json_key(j, key);
    if (s)
        tl_json_string(j, s);
    else
        json_printf(j, "null");
}

void tl_json_key_int(tl_json *j, const char *key, int64_t v)
{
    json_key(j, key);
    json_printf(j, "%lld", (long long)v);
}

void tl_json_key_uint(tl_json *j, const char *key, uint64_t v)
{
    json_key(j, key);
    json_printf(j, "%llu", (unsigned long long)v);
}

/* JSON has no NaN or infinity; they become null. %.17g round-trips a double. */
void tl_json_key_double(tl_json *j, const char *key, double v)
{
    json_key(j, key);
    if (isfinite(v))
        json_printf(j, "%.17g", v);
    else
        json_printf(j, "null");
}

/* The shortest decimal that reads back as the same float, so 0.9f prints
 * as 0.9 rather than 0.89999997615814209. */
void tl_json_key_float(tl_json *j, const char *key, float v)
{
    json_key(j, key);
    if (!isfinite(v)) {
        json_printf(j, "null");
        return;
    }
    char text[32];
    for (int digits = 6; digits <= 9; digits++) {
        snprintf(text, sizeof text, "%.*g", digits, (double)v);
        if (strtof(text, NULL) == v)
            break;
    }
    json_printf(j, "%s", text);
}

void tl_json_key_bool(tl_json *j, const char *key, bool v)
{
    json_key(j, key);
    json_printf(j, "%s", v ? "true" : "false");
}

/* Inserts already formatted JSON (an object or array) as the value of key. */
void tl_json_key_raw(tl_json *j, const char *key, const char *json)
{
    json_key(j, key);
    json_printf(j, "%s", json);
}

static const char *optim_kind_name(tl_optim_kind k)
{
    switch (k) {
    case TL_OPTIM_ADAMW: return "adamw";
    case TL_OPTIM_SGD: return "sgd";
    default: return "unknown";
    }
}

static const char *schedule_kind_name(tl_schedule_kind k)
{
    switch (k) {
    case TL_SCHEDULE_CONSTANT: return "constant";
    case TL_SCHEDULE_WARMUP_COSINE: return "warmup_cosine";
    default: return "unknown";
    }
}

void tl_train_config_json_into(tl_json *j, const char *key, const tl_train_config *c)
{
    tl_json_begin(j, key);
    tl_json_key_int(j, "batch_size", c->batch_size);
    tl_json_key_int(j, "context", c->context);
    /* Ranks of a data-parallel run: the global batch is batch_size x world. */
    tl_json_key_int(j, "world", c->world > 1 ? c->world : 1);
    tl_json_key_int(j, "steps", c->steps);
    tl_json_key_int(j, "token_budget", c->token_budget);

    tl_json_begin(j, "optim");
    tl_json_key_string(j, "kind", optim_kind_name(c->optim.kind));
    tl_json_key_float(j, "beta1", c->optim.beta1);
    tl_json_key_float(j, "beta2", c->optim.beta2);
    tl_json_key_float(j, "eps", c->optim.eps);
    tl_json_key_float(j, "weight_decay", c->optim.weight_decay);
    tl_json_key_float(j, "momentum", c->optim.momentum);
    tl_json_end(j);

    tl_json_begin(j, "schedule");
    tl_json_key_string(j, "kind", schedule_kind_name(c->schedule.kind));
    tl_json_key_float(j, "lr", c->schedule.lr);
    tl_json_key_float(j, "min_lr", c->schedule.min_lr);
    tl_json_key_int(j, "warmup", c->schedule.warmup);
    tl_json_key_int(j, "total", c->schedule.total);
    tl_json_end(j);

    tl_json_key_double(j, "clip_norm", c->clip_norm);
    tl_json_key_int(j, "eval_every", c->eval_every);
    tl_json_key_int(j, "eval_batches", c->eval_batches);
    tl_json_key_int(j, "eval_calibration_batches", c->eval_calibration_batches);
    tl_json_key_uint(j, "seed", c->seed);
    tl_json_key_int(j, "threads", c->threads);
    tl_json_key_bool(j, "shards", c->shards);
    tl_json_key_string(j, "log_path", c->log_path);
    tl_json_key_int(j, "log_flush_every", c->log_flush_every);
    tl_json_key_int(j, "log_grads_every", c->log_grads_every);
    tl_json_key_int(j, "log_routing_every", c->log_routing_every);
    tl_json_key_int(j, "log_token_seqs", c->log_token_seqs);
    tl_json_key_string(j, "checkpoint_path", c->checkpoint_path);
    tl_json_key_int(j, "checkpoint_every", c->checkpoint_every);
    tl_json_key_int(j, "progress_every", c->progress_every);
    tl_json_key_bool(j, "reduce_grads", c->reduce_grads != NULL);
    tl_json_end(j);
}

size_t tl_train_config_json(const tl_train_config *c, char *buf, size_t size)
{
    tl_json j;
    tl_json_init(&j, buf, size);
    tl_train_config_json_into(&j, NULL, c);
    return j.len;
}
