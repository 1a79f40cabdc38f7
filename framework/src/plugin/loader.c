/* Finding, opening and checking plugin shared objects. */
#define _GNU_SOURCE /* dladdr */
#include <dirent.h>
#include <dlfcn.h>
#include <limits.h>
#include <errno.h>
#include <inttypes.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../internal.h"
#include "thinklab/plugin.h"

#ifndef TL_PLUGIN_BUILD_DIR
#define TL_PLUGIN_BUILD_DIR ""
#endif
#ifndef TL_PLUGIN_INSTALL_DIR
#define TL_PLUGIN_INSTALL_DIR ""
#endif
#ifndef TL_LIBRARY_BUILD_DIR
#define TL_LIBRARY_BUILD_DIR ""
#endif

enum { TL_PATH_MAX = 4096, TL_SEARCH_MAX = 64 };

struct tl_plugin_lib {
    void *handle;
    const tl_plugin *desc;
    char file[TL_PATH_MAX];
};

/* The search folders in order, split into dirs[] (pointing into buf). */
static int tl_search_dirs(const char **dirs, int max, char *buf, size_t size)
{
    size_t len = tl_plugin_search_path(buf, size);
    if (len >= size)
        buf[size - 1] = '\0';
    int n = 0;
    char *save = NULL;
    for (char *d = strtok_r(buf, ":", &save); d && n < max; d = strtok_r(NULL, ":", &save))
        if (*d)
            dirs[n++] = d;
    return n;
}

/* Writes the folder of the libthinklab file this code runs from, with
 * symbolic links resolved, into buf (TL_PATH_MAX bytes). */
static bool tl_library_dir(char *buf)
{
    static const char anchor; /* any object inside libthinklab */
    Dl_info info;
    if (!dladdr(&anchor, &info) || !info.dli_fname ||
        !realpath(info.dli_fname, buf))
        return false;
    char *slash = strrchr(buf, '/');
    if (!slash)
        return false;
    *slash = '\0';
    return true;
}

/* The build tree's library searches the build's plugin folder and the
 * configured install folder. An installed library searches thinklab/plugins
 * beside itself, where the install put the plugins, because the prefix given
 * to `cmake --install --prefix` is unknown when the library is compiled. */
size_t tl_plugin_search_path(char *buf, size_t size)
{
    const char *env = getenv("THINKLAB_PLUGIN_PATH");
    const char *sep = env && *env ? ":" : "", *extra = env && *env ? env : "";
    char here[TL_PATH_MAX], build[TL_PATH_MAX];
    bool installed = tl_library_dir(here) &&
                     !(realpath(TL_LIBRARY_BUILD_DIR, build) && strcmp(here, build) == 0);
    int n;
    if (installed)
        n = snprintf(buf, size, "%s/thinklab/plugins%s%s", here, sep, extra);
    else
        n = snprintf(buf, size, "%s:%s%s%s", TL_PLUGIN_BUILD_DIR, TL_PLUGIN_INSTALL_DIR, sep,
                     extra);
    return n < 0 ? 0 : (size_t)n;
}

static bool tl_file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* A shared object on the platforms thinklab builds for is an ELF file. */
static bool tl_is_elf(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    unsigned char magic[4] = {0};
    size_t got = fread(magic, 1, 4, f);
    fclose(f);
    return got == 4 && magic[0] == 0x7f && magic[1] == 'E' && magic[2] == 'L' && magic[3] == 'F';
}

/* Checks that the program headers and every segment they describe lie
 * inside the file. dlopen maps segments past the end of a truncated file
 * (an interrupted copy or build) and the process then dies of SIGBUS when it
 * touches them, so a short file must be rejected before dlopen. An ELF file
 * of another class or byte order is left to dlopen, which reports it. On
 * failure sets the message and returns false. */
static bool tl_elf_complete(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        tl_seterr(TL_EIO, "plugin file %s could not be opened: %s", path, strerror(errno));
        return false;
    }
    struct stat st;
    ElfW(Ehdr) eh;
    bool ok = fstat(fileno(f), &st) == 0;
    uint64_t size = ok ? (uint64_t)st.st_size : 0;
    uint64_t need = sizeof eh;
    if (ok && size >= need && fread(&eh, sizeof eh, 1, f) == 1) {
        bool native = eh.e_ident[EI_CLASS] == (sizeof(void *) == 8 ? ELFCLASS64 : ELFCLASS32) &&
                      eh.e_ident[EI_DATA] == (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
                                                  ? ELFDATA2LSB
                                                  : ELFDATA2MSB);
        if (!native || eh.e_phentsize != sizeof(ElfW(Phdr))) {
            fclose(f);
            return true;
        }
        need = (uint64_t)eh.e_phoff + (uint64_t)eh.e_phnum * sizeof(ElfW(Phdr));
        if (need <= size && fseeko(f, (off_t)eh.e_phoff, SEEK_SET) == 0) {
            for (int i = 0; i < eh.e_phnum && need <= size; i++) {
                ElfW(Phdr) ph;
                if (fread(&ph, sizeof ph, 1, f) != 1) {
                    ok = false;
                    break;
                }
                uint64_t end = (uint64_t)ph.p_offset + (uint64_t)ph.p_filesz;
                if (ph.p_type != PT_NULL && end > need)
                    need = end;
            }
        }
    }
    fclose(f);
    if (!ok) {
        tl_seterr(TL_EIO, "plugin file %s could not be read; check the file", path);
        return false;
    }
    if (need > size) {
        tl_seterr(TL_EFORMAT,
                  "plugin file %s is truncated: it has %" PRIu64 " bytes, but its ELF headers "
                  "describe %" PRIu64 "; rebuild the plugin or copy it again",
                  path, size, need);
        return false;
    }
    return true;
}

static bool tl_has_plugin_suffix(const char *name)
{
    size_t len = strlen(name), suffix = strlen(TL_PLUGIN_SUFFIX);
    return len > suffix && strcmp(name + len - suffix, TL_PLUGIN_SUFFIX) == 0;
}

/* Finds name.so in the search folders. On failure the message lists every
 * file tried. */
static bool tl_plugin_find(const char *name, char *file, size_t size)
{
    char buf[TL_PATH_MAX];
    const char *dirs[TL_SEARCH_MAX];
    int n = tl_search_dirs(dirs, TL_SEARCH_MAX, buf, sizeof buf);
    char tried[2048] = "";
    size_t used = 0;
    for (int i = 0; i < n; i++) {
        snprintf(file, size, "%s/%s%s", dirs[i], name, TL_PLUGIN_SUFFIX);
        if (tl_file_exists(file))
            return true;
        int w = snprintf(tried + used, sizeof tried - used, "%s%s", used ? ", " : "", file);
        if (w > 0 && (size_t)w < sizeof tried - used)
            used += (size_t)w;
    }
    tl_seterr(TL_ENOTFOUND,
              "plugin '%s' not found; tried %s; build it, add its folder to THINKLAB_PLUGIN_PATH, "
              "or give the path to %s%s",
              name, used ? tried : "no folder (the search path is empty)", name, TL_PLUGIN_SUFFIX);
    return false;
}

#define TL_CHECK_SIZE(field, type)                                                              \
    do {                                                                                        \
        if (h->field != sizeof(type)) {                                                         \
            tl_seterr(TL_EABI,                                                                  \
                      "plugin '%s' (%s) was built with sizeof(%s) = %u, this thinklab has %zu: " \
                      "rebuild the plugin against this thinklab's headers",                     \
                      name, file, #type, (unsigned)h->field, sizeof(type));                     \
            return false;                                                                       \
        }                                                                                       \
    } while (0)

/* Checks the ABI version first, because the rest of the header may have
 * another layout in another ABI. */
static bool tl_plugin_check_header(const tl_plugin *p, const char *file)
{
    const tl_plugin_header *h = &p->header;
    const char *name = h->name ? h->name : "?";
    if (h->abi_version != TL_PLUGIN_ABI_VERSION) {
        tl_seterr(TL_EABI, "plugin '%s' (%s) built for ABI %u, this thinklab is ABI %d: rebuild "
                           "the plugin",
                  name, file, (unsigned)h->abi_version, TL_PLUGIN_ABI_VERSION);
        return false;
    }
    TL_CHECK_SIZE(header_size, tl_plugin_header);
    TL_CHECK_SIZE(size_plugin, tl_plugin);
    TL_CHECK_SIZE(size_tensor, tl_tensor);
    TL_CHECK_SIZE(size_opt_value, tl_opt_value);
    TL_CHECK_SIZE(size_opt_spec, tl_opt_spec);
    TL_CHECK_SIZE(size_opt_table, tl_opt_table);
    TL_CHECK_SIZE(size_layer_dims, tl_layer_dims);
    TL_CHECK_SIZE(size_layer_args, tl_layer_args);
    TL_CHECK_SIZE(size_routing_stats, tl_routing_stats);
    TL_CHECK_SIZE(size_block_config, tl_block_config);
    TL_CHECK_SIZE(size_float, float);
    TL_CHECK_SIZE(size_double, double);
    TL_CHECK_SIZE(size_int, int);
    TL_CHECK_SIZE(size_long, long);
    TL_CHECK_SIZE(size_pointer, void *);
    TL_CHECK_SIZE(size_bool, bool);
    if (!h->name || !*h->name || !p->create || !p->forward || !p->destroy ||
        !p->flops_per_token || p->n_options < 0 || p->n_options > TL_PLUGIN_MAX_OPTIONS ||
        (p->n_options > 0 && !p->options)) {
        tl_seterr(TL_EFORMAT, "plugin file %s has an incomplete descriptor (name, create, forward, "
                              "flops_per_token and destroy are required, at most %d options): "
                              "fix the plugin",
                  file, TL_PLUGIN_MAX_OPTIONS);
        return false;
    }
    if (!p->set_thresholds != !p->thresholds || (p->set_thresholds && !p->stats)) {
        tl_seterr(TL_EFORMAT, "plugin '%s' (%s) has set_thresholds without thresholds, or the "
                              "reverse, or the pair without stats: set all three or leave "
                              "set_thresholds and thresholds NULL",
                  name, file);
        return false;
    }
    return true;
}

tl_plugin_lib *tl_plugin_open(const char *name_or_path)
{
    if (!name_or_path || !*name_or_path) {
        tl_seterr(TL_EINVAL, "plugin name is empty; give a name such as 'transformer' or a path");
        return NULL;
    }
    tl_plugin_lib *lib = calloc(1, sizeof *lib);
    if (!lib) {
        tl_seterr(TL_ENOMEM, "could not allocate a plugin handle");
        return NULL;
    }
    if (strchr(name_or_path, '/')) {
        snprintf(lib->file, sizeof lib->file, "%s", name_or_path);
        struct stat st;
        if (stat(lib->file, &st) == 0 && S_ISDIR(st.st_mode)) {
            tl_seterr(TL_EINVAL, "plugin path '%s' is a directory; give the %s file", lib->file,
                      TL_PLUGIN_SUFFIX);
            goto fail;
        }
        if (tl_check_existing_file(lib->file, "plugin file") != TL_OK)
            goto fail;
        if (!tl_file_exists(lib->file)) {
            tl_seterr(TL_ENOTFOUND, "plugin file %s not found; check the path", lib->file);
            goto fail;
        }
    } else if (tl_has_plugin_suffix(name_or_path)) {
        /* The search would look for name.so.so, so a file name without a
         * folder gets advice instead. */
        int stem = (int)(strlen(name_or_path) - strlen(TL_PLUGIN_SUFFIX));
        tl_seterr(TL_EINVAL,
                  "plugin '%s' is a file name without a folder: give the path './%s' for the "
                  "file in the current folder, or the name '%.*s' to search the plugin folders",
                  name_or_path, name_or_path, stem, name_or_path);
        goto fail;
    } else if (!tl_plugin_find(name_or_path, lib->file, sizeof lib->file)) {
        goto fail;
    }

    if (!tl_is_elf(lib->file)) {
        tl_seterr(TL_EFORMAT, "plugin file %s is not a shared object; build the plugin as a "
                              "CMake MODULE library",
                  lib->file);
        goto fail;
    }
    if (!tl_elf_complete(lib->file))
        goto fail;
    dlerror();
    lib->handle = dlopen(lib->file, RTLD_NOW | RTLD_LOCAL);
    if (!lib->handle) {
        const char *why = dlerror();
        tl_seterr(TL_EFORMAT, "plugin file %s could not be loaded (%s); rebuild it for this "
                              "machine and check that its libraries are installed",
                  lib->file, why ? why : "unknown reason");
        goto fail;
    }
    dlerror();
    void *sym = dlsym(lib->handle, TL_PLUGIN_ENTRY_SYMBOL);
    if (!sym) {
        tl_seterr(TL_ENOTFOUND, "plugin file %s exports no symbol '%s'; define it with "
                                "TL_PLUGIN_EXPORT(descriptor)",
                  lib->file, TL_PLUGIN_ENTRY_SYMBOL);
        goto fail;
    }
    /* POSIX guarantees that a dlsym result converts to a function pointer. */
    tl_plugin_entry_fn entry;
    memcpy(&entry, &sym, sizeof entry);
    lib->desc = entry();
    if (!lib->desc) {
        tl_seterr(TL_EFORMAT, "plugin file %s: %s() returned NULL; fix the plugin", lib->file,
                  TL_PLUGIN_ENTRY_SYMBOL);
        goto fail;
    }
    if (!tl_plugin_check_header(lib->desc, lib->file) ||
        tl_plugin_check_schema(lib->desc, lib->file) != TL_OK)
        goto fail;
    return lib;

fail:
    if (lib->handle)
        dlclose(lib->handle);
    free(lib);
    return NULL;
}

void tl_plugin_close(tl_plugin_lib *lib)
{
    if (!lib)
        return;
    if (lib->handle)
        dlclose(lib->handle);
    free(lib);
}

const tl_plugin *tl_plugin_desc(const tl_plugin_lib *lib) { return lib->desc; }
const char *tl_plugin_file(const tl_plugin_lib *lib) { return lib->file; }

/* ---- listing ----------------------------------------------------------------- */

static void tl_print_option(FILE *out, const tl_opt_spec *o)
{
    char def[512];
    tl_opt_value_str(&o->def, def, sizeof def);
    fprintf(out, "    %-16s %-10s default %s", o->name, tl_opt_type_name(o->type), def);
    /* %.15g prints integer bounds below 10^15 exactly, where %g would show
     * 1048576 as 1.04858e+06. */
    if (o->type == TL_OPT_INT || o->type == TL_OPT_FLOAT || o->type == TL_OPT_FLOAT_LIST)
        fprintf(out, ", range [%.15g, %.15g]", o->min, o->max);
    if (o->type == TL_OPT_ENUM) {
        fprintf(out, ", one of");
        for (int c = 0; c < TL_OPT_CHOICES_MAX && o->choices[c]; c++)
            fprintf(out, "%s %s", c ? "," : "", o->choices[c]);
    }
    fprintf(out, "\n        %s\n", o->doc ? o->doc : "");
}

static int tl_name_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Prints the plugins of one folder in name order; a name already printed from
 * an earlier folder is shadowed and listed as such. */
static int tl_print_dir(FILE *out, const char *dir, char (*seen)[256], int *n_seen, int max_seen)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    enum { TL_LIST_MAX = 256 };
    char *names[TL_LIST_MAX];
    int n = 0;
    bool truncated = false;
    struct dirent *e;
    size_t suffix = strlen(TL_PLUGIN_SUFFIX);
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len <= suffix || strcmp(e->d_name + len - suffix, TL_PLUGIN_SUFFIX) != 0)
            continue;
        if (n == TL_LIST_MAX) {
            truncated = true;
            break;
        }
        /* A failed strdup leaves the name out, so qsort never compares NULL. */
        char *name = strdup(e->d_name);
        if (name)
            names[n++] = name;
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], tl_name_cmp);
    if (truncated)
        fprintf(out, "%s contains more than %d plugins; only %d of them are listed\n\n", dir,
                TL_LIST_MAX, TL_LIST_MAX);

    int loaded = 0;
    for (int i = 0; i < n; i++) {
        char file[TL_PATH_MAX];
        snprintf(file, sizeof file, "%s/%s", dir, names[i]);
        names[i][strlen(names[i]) - suffix] = '\0';
        bool shadowed = false;
        for (int s = 0; s < *n_seen; s++)
            shadowed = shadowed || strcmp(seen[s], names[i]) == 0;
        if (shadowed) {
            fprintf(out, "%s (%s): shadowed by an earlier folder of the search path\n\n", names[i],
                    file);
            free(names[i]);
            continue;
        }
        if (*n_seen < max_seen)
            snprintf(seen[(*n_seen)++], 256, "%s", names[i]);
        tl_plugin_lib *lib = tl_plugin_open(file);
        if (!lib) {
            fprintf(out, "%s (%s): not loaded: %s\n\n", names[i], file, tl_errmsg());
            free(names[i]);
            continue;
        }
        const tl_plugin *p = lib->desc;
        fprintf(out, "%s %s (%s)\n  %s\n", p->header.name, p->version ? p->version : "",
                file, p->description ? p->description : "");
        if (p->n_options == 0)
            fprintf(out, "    (no options)\n");
        for (int k = 0; k < p->n_options; k++)
            tl_print_option(out, &p->options[k]);
        fprintf(out, "\n");
        tl_plugin_close(lib);
        loaded++;
        free(names[i]);
    }
    return loaded;
}

int tl_plugins_print(FILE *out)
{
    char buf[TL_PATH_MAX];
    const char *dirs[TL_SEARCH_MAX];
    int n = tl_search_dirs(dirs, TL_SEARCH_MAX, buf, sizeof buf);
    char (*seen)[256] = calloc(256, sizeof *seen);
    int n_seen = 0, loaded = 0;
    if (!seen)
        return 0;
    fprintf(out, "plugin search path, in order:\n");
    for (int i = 0; i < n; i++)
        fprintf(out, "  %s\n", dirs[i]);
    fprintf(out, "\n");
    for (int i = 0; i < n; i++)
        loaded += tl_print_dir(out, dirs[i], seen, &n_seen, 256);
    free(seen);
    return loaded;
}
