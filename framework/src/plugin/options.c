/* Plugin option values, validation against a schema, and accessors. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../internal.h"
#include "thinklab/plugin.h"

static const char *const tl_opt_type_names[TL_OPT_TYPE_COUNT] = {
    "bool", "int", "float", "string", "float list", "enum",
};
_Static_assert(sizeof tl_opt_type_names / sizeof tl_opt_type_names[0] == TL_OPT_TYPE_COUNT,
               "one name per option type");

const char *tl_opt_type_name(tl_opt_type type)
{
    return (unsigned)type < TL_OPT_TYPE_COUNT ? tl_opt_type_names[type] : "invalid type";
}

tl_opt_value tl_optv_bool(bool b) { return (tl_opt_value){.type = TL_OPT_BOOL, .b = b}; }
tl_opt_value tl_optv_int(int64_t i) { return (tl_opt_value){.type = TL_OPT_INT, .i = i}; }
tl_opt_value tl_optv_float(double f) { return (tl_opt_value){.type = TL_OPT_FLOAT, .f = f}; }

tl_opt_value tl_optv_string(const char *s)
{
    tl_opt_value v = {.type = TL_OPT_STRING};
    snprintf(v.s, sizeof v.s, "%s", s ? s : "");
    return v;
}

tl_opt_value tl_optv_list(int n, const double *values)
{
    tl_opt_value v = {.type = TL_OPT_FLOAT_LIST, .n = n};
    for (int k = 0; k < n && k < TL_OPT_LIST_MAX; k++)
        v.list[k] = values[k];
    return v;
}

char *tl_opt_value_str(const tl_opt_value *v, char *buf, size_t size)
{
    switch (v->type) {
    case TL_OPT_BOOL: snprintf(buf, size, "%s", v->b ? "true" : "false"); break;
    case TL_OPT_INT: snprintf(buf, size, "%lld", (long long)v->i); break;
    case TL_OPT_FLOAT: snprintf(buf, size, "%g", v->f); break;
    case TL_OPT_STRING:
    case TL_OPT_ENUM: snprintf(buf, size, "\"%s\"", v->s); break;
    case TL_OPT_FLOAT_LIST: {
        size_t used = 0;
        int w = snprintf(buf, size, "{");
        used = w > 0 ? (size_t)w : 0;
        for (int k = 0; k < v->n && k < TL_OPT_LIST_MAX && used < size; k++) {
            w = snprintf(buf + used, size - used, "%s%g", k ? ", " : "", v->list[k]);
            used += w > 0 ? (size_t)w : 0;
        }
        if (used < size)
            snprintf(buf + used, size - used, "}");
        break;
    }
    default: snprintf(buf, size, "?"); break;
    }
    return buf;
}

static int tl_spec_index(const tl_plugin *p, const char *key)
{
    for (int k = 0; k < p->n_options; k++)
        if (strcmp(p->options[k].name, key) == 0)
            return k;
    return -1;
}

static bool tl_in_range(const tl_opt_spec *o, double x) { return x >= o->min && x <= o->max; }

/* Converts v to the spec's type where thinklab allows it (int to float,
 * string to enum, ints inside float lists are floats already), then checks
 * the range or choices. */
static tl_status tl_opt_check(const char *plugin, const tl_opt_spec *o, const tl_opt_value *v,
                              tl_opt_value *out)
{
    char shown[512];
    tl_opt_value_str(v, shown, sizeof shown);
    *out = *v;
    out->type = o->type;
    bool ok = v->type == o->type || (o->type == TL_OPT_FLOAT && v->type == TL_OPT_INT) ||
              (o->type == TL_OPT_ENUM && v->type == TL_OPT_STRING) ||
              (o->type == TL_OPT_FLOAT_LIST && (v->type == TL_OPT_FLOAT || v->type == TL_OPT_INT));
    if (!ok)
        return tl_seterr(TL_EINVAL, "plugin '%s' option '%s' expects type %s, got %s %s; %s", plugin,
                         o->name, tl_opt_type_name(o->type), tl_opt_type_name(v->type), shown,
                         o->doc ? o->doc : "");
    if (o->type == TL_OPT_FLOAT && v->type == TL_OPT_INT)
        out->f = (double)v->i;
    if (o->type == TL_OPT_FLOAT_LIST && v->type != TL_OPT_FLOAT_LIST) {
        out->n = 1;
        out->list[0] = v->type == TL_OPT_INT ? (double)v->i : v->f;
    }

    switch (o->type) {
    case TL_OPT_INT:
        if (!tl_in_range(o, (double)out->i))
            return tl_seterr(TL_EINVAL, "plugin '%s' option '%s' = %s is outside [%.15g, %.15g]",
                             plugin, o->name, shown, o->min, o->max);
        break;
    case TL_OPT_FLOAT:
        if (!isfinite(out->f) || !tl_in_range(o, out->f))
            return tl_seterr(TL_EINVAL, "plugin '%s' option '%s' = %s is outside [%.15g, %.15g]",
                             plugin, o->name, shown, o->min, o->max);
        break;
    case TL_OPT_FLOAT_LIST:
        if (out->n < 1 || out->n > TL_OPT_LIST_MAX)
            return tl_seterr(TL_EINVAL, "plugin '%s' option '%s' has %d entries; give 1 to %d",
                             plugin, o->name, out->n, TL_OPT_LIST_MAX);
        for (int k = 0; k < out->n; k++)
            if (!isfinite(out->list[k]) || !tl_in_range(o, out->list[k]))
                return tl_seterr(TL_EINVAL,
                                 "plugin '%s' option '%s' entry %d = %.15g is outside "
                                 "[%.15g, %.15g]",
                                 plugin, o->name, k + 1, out->list[k], o->min, o->max);
        break;
    case TL_OPT_ENUM: {
        for (int c = 0; c < TL_OPT_CHOICES_MAX && o->choices[c]; c++)
            if (strcmp(o->choices[c], out->s) == 0)
                return TL_OK;
        char allowed[256] = "";
        size_t used = 0;
        for (int c = 0; c < TL_OPT_CHOICES_MAX && o->choices[c]; c++) {
            int w = snprintf(allowed + used, sizeof allowed - used, "%s\"%s\"", c ? ", " : "",
                             o->choices[c]);
            if (w > 0 && (size_t)w < sizeof allowed - used)
                used += (size_t)w;
        }
        return tl_seterr(TL_EINVAL, "plugin '%s' option '%s' = %s is not one of %s", plugin,
                         o->name, shown, allowed);
    }
    default: break;
    }
    return TL_OK;
}

/* Describes the first mistake in option k of p in problem and returns true,
 * or returns false when the option is valid. */
static bool tl_spec_problem(const tl_plugin *p, int k, char *problem, size_t size)
{
    const tl_opt_spec *o = &p->options[k];
    if (!o->name || !o->name[0]) {
        snprintf(problem, size, "option %d has no name", k + 1);
        return true;
    }
    for (int m = 0; m < k; m++) {
        if (p->options[m].name && strcmp(p->options[m].name, o->name) == 0) {
            snprintf(problem, size, "option '%s' is declared twice", o->name);
            return true;
        }
    }
    if ((unsigned)o->type >= TL_OPT_TYPE_COUNT) {
        snprintf(problem, size, "option '%s' has type %d, which is not a tl_opt_type", o->name,
                 (int)o->type);
        return true;
    }
    if (o->def.type != o->type) {
        snprintf(problem, size, "option '%s' is of type %s, but its default is of type %s", o->name,
                 tl_opt_type_name(o->type), tl_opt_type_name(o->def.type));
        return true;
    }
    bool ranged = o->type == TL_OPT_INT || o->type == TL_OPT_FLOAT ||
                  o->type == TL_OPT_FLOAT_LIST;
    if (ranged && !(o->min <= o->max)) {
        snprintf(problem, size, "option '%s' has the range [%.15g, %.15g], which is empty", o->name,
                 o->min, o->max);
        return true;
    }
    bool text = o->type == TL_OPT_STRING || o->type == TL_OPT_ENUM;
    if (text && !memchr(o->def.s, '\0', sizeof o->def.s)) {
        snprintf(problem, size, "option '%s' has a default string of %d bytes or more", o->name,
                 TL_OPT_STRING_MAX);
        return true;
    }
    if (o->type == TL_OPT_ENUM && !o->choices[0]) {
        snprintf(problem, size, "enum option '%s' has no choices", o->name);
        return true;
    }
    /* An empty list default is allowed: create() may read it as "unset". */
    if (o->type == TL_OPT_FLOAT_LIST && o->def.n == 0)
        return false;
    tl_opt_value checked;
    if (tl_opt_check(p->header.name, o, &o->def, &checked) != TL_OK) {
        snprintf(problem, size, "the default fails its own check: %s", tl_errmsg());
        return true;
    }
    return false;
}

tl_status tl_plugin_check_schema(const tl_plugin *p, const char *file)
{
    char problem[1024];
    for (int k = 0; k < p->n_options; k++)
        if (tl_spec_problem(p, k, problem, sizeof problem))
            return tl_seterr(TL_EFORMAT, "plugin '%s' (%s) has an invalid option table: %s; fix "
                                         "the plugin",
                             p->header.name, file, problem);
    return TL_OK;
}

tl_status tl_plugin_options(const tl_plugin *p, const tl_opt_setting *settings, int n,
                            tl_opt_table *out)
{
    const char *plugin = p->header.name;
    memset(out, 0, sizeof *out);
    out->plugin = plugin;
    out->specs = p->options;
    out->n = p->n_options;
    for (int k = 0; k < p->n_options; k++)
        out->values[k] = p->options[k].def;

    for (int j = 0; j < n; j++) {
        const char *key = settings[j].key ? settings[j].key : "";
        int k = tl_spec_index(p, key);
        if (k < 0) {
            char valid[1024] = "";
            size_t used = 0;
            for (int m = 0; m < p->n_options; m++) {
                int w = snprintf(valid + used, sizeof valid - used, "%s%s", m ? ", " : "",
                                 p->options[m].name);
                if (w > 0 && (size_t)w < sizeof valid - used)
                    used += (size_t)w;
            }
            return tl_seterr(TL_EINVAL, "plugin '%s' has no option '%s'; valid options: %s",
                             plugin, key, p->n_options ? valid : "none");
        }
        if (out->set[k])
            return tl_seterr(TL_EINVAL, "plugin '%s' option '%s' is set twice; keep one setting",
                             plugin, key);
        tl_status st = tl_opt_check(plugin, &p->options[k], &settings[j].value, &out->values[k]);
        if (st != TL_OK)
            return st;
        out->set[k] = true;
    }
    return TL_OK;
}

/* ---- accessors for create() ---------------------------------------------------- */

static const tl_opt_value *tl_opt_find(const tl_opt_table *t, const char *name, tl_opt_type type,
                                       int *index)
{
    for (int k = 0; k < t->n; k++) {
        if (strcmp(t->specs[k].name, name) == 0) {
            if (index)
                *index = k;
            return t->values[k].type == type ? &t->values[k] : NULL;
        }
    }
    return NULL;
}

bool tl_opt_bool(const tl_opt_table *t, const char *name)
{
    const tl_opt_value *v = tl_opt_find(t, name, TL_OPT_BOOL, NULL);
    return v ? v->b : false;
}

int64_t tl_opt_int(const tl_opt_table *t, const char *name)
{
    const tl_opt_value *v = tl_opt_find(t, name, TL_OPT_INT, NULL);
    return v ? v->i : 0;
}

double tl_opt_float(const tl_opt_table *t, const char *name)
{
    const tl_opt_value *v = tl_opt_find(t, name, TL_OPT_FLOAT, NULL);
    return v ? v->f : 0.0;
}

const char *tl_opt_string(const tl_opt_table *t, const char *name)
{
    const tl_opt_value *v = tl_opt_find(t, name, TL_OPT_STRING, NULL);
    if (!v)
        v = tl_opt_find(t, name, TL_OPT_ENUM, NULL);
    return v ? v->s : "";
}

int tl_opt_list(const tl_opt_table *t, const char *name, const double **values)
{
    const tl_opt_value *v = tl_opt_find(t, name, TL_OPT_FLOAT_LIST, NULL);
    *values = v ? v->list : NULL;
    return v ? v->n : 0;
}

int tl_opt_choice(const tl_opt_table *t, const char *name)
{
    int k = -1;
    const tl_opt_value *v = tl_opt_find(t, name, TL_OPT_ENUM, &k);
    if (!v)
        return -1;
    for (int c = 0; c < TL_OPT_CHOICES_MAX && t->specs[k].choices[c]; c++)
        if (strcmp(t->specs[k].choices[c], v->s) == 0)
            return c;
    return -1;
}

bool tl_opt_is_set(const tl_opt_table *t, const char *name)
{
    for (int k = 0; k < t->n; k++)
        if (strcmp(t->specs[k].name, name) == 0)
            return t->set[k];
    return false;
}

tl_status tl_layer_args_add_aux(tl_ctx *ctx, tl_layer_args *args, tl_tensor *term)
{
    if (!term)
        return tl_lasterr() != TL_OK ? tl_lasterr() : TL_EINVAL;
    tl_tensor *sum = args->aux_loss ? tl_add(ctx, args->aux_loss, term) : term;
    if (!sum)
        return tl_lasterr();
    args->aux_loss = sum;
    args->n_aux_terms++;
    return TL_OK;
}
