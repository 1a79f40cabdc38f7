/* Declarations shared by the framework's source files; not installed. */
#ifndef THINKLAB_INTERNAL_H
#define THINKLAB_INTERNAL_H

#include <stdint.h>
#include <sys/types.h>

#include "thinklab/thinklab.h"

enum { TL_NODE_MAX_INPUTS = 4, TL_NODE_MAX_INTS = 8, TL_NODE_MAX_FLOATS = 4, TL_NODE_MAX_SAVED = 4 };

/* A recorded op: out = op(in...), with whatever backward needs. */
struct tl_node {
    tl_op op;
    tl_tensor *out;
    tl_tensor *in[TL_NODE_MAX_INPUTS];
    int n_in;
    int64_t ints[TL_NODE_MAX_INTS];
    float floats[TL_NODE_MAX_FLOATS];
    void *saved[TL_NODE_MAX_SAVED]; /* arena buffers kept for backward */
    tl_node *prev;                  /* previous node on the tape */
};

typedef void (*tl_backward_fn)(tl_ctx *ctx, tl_node *node);

typedef struct tl_op_desc {
    const char *name;
    tl_backward_fn backward;
} tl_op_desc;

extern const tl_op_desc tl_op_table[TL_OP_COUNT];

/* Records out = op(in[0..n_in)) when gradients are enabled and some input
 * requires a gradient: marks out as requiring one and returns the node.
 * Returns NULL when nothing needs recording (the op then saves nothing). */
tl_node *tl_record(tl_ctx *ctx, tl_op op, tl_tensor *out, int n_in, tl_tensor *const *in);

/* Adds to the forward or backward FLOP count, and to the per-op count. */
void tl_count_flops(tl_ctx *ctx, tl_op op, double flops);
bool tl_ctx_in_backward(const tl_ctx *ctx);

/* Tape and backward state, owned by context.c. */
tl_node **tl_ctx_tape(tl_ctx *ctx);
void tl_ctx_set_backward(tl_ctx *ctx, bool in_backward, bool done);
bool tl_ctx_backward_done(const tl_ctx *ctx);
bool tl_ctx_alloc_failed(const tl_ctx *ctx);
/* tl_grad without zeroing: when the buffer is new, *fresh is set and the
 * caller must write every element of it instead of adding. */
float *tl_grad_dst(tl_ctx *ctx, tl_tensor *t, bool *fresh);
/* Moves from's gradient buffer to t, for an op whose gradient for t equals
 * its output's (an add of equal shapes). Call it only in the backward of
 * from's node, after which nothing reads from->grad. Moves only when t has no
 * buffer yet and backward owns from's (made during backward, not kept), and
 * returns whether it did; from->grad is then NULL. */
bool tl_grad_take(tl_tensor *t, tl_tensor *from);
/* Hands a gradient buffer of size bytes back for reuse within this step. */
void tl_ctx_release(tl_ctx *ctx, void *p, size_t size);
/* tl_ctx_alloc, preferring a released buffer of the same rounded size. */
void *tl_ctx_alloc_reuse(tl_ctx *ctx, size_t size);

/* Sends the parameter gradients this context accumulates to grads, a buffer
 * laid out like tl_params_grads(p), instead of the store's own; NULL undoes
 * it. Data-parallel shards use this to backpropagate at the same time. */
void tl_ctx_redirect_grads(tl_ctx *ctx, const tl_params *p, float *grads);
/* Gradient buffer of parameter t under the redirection above. */
float *tl_ctx_param_grad(const tl_ctx *ctx, const tl_tensor *t);

/* Arena tensor with the shape of x (dtype float32). */
tl_tensor *tl_new_like(tl_ctx *ctx, const tl_tensor *x);

/* Checks that the folder that is to contain path exists. If it does not,
 * sets TL_ENOTFOUND with a message that names file_kind ("checkpoint"),
 * path and the folder, and tells the user to create it or choose another path. A
 * folder part that names a file, and a path that ends with '/', fail with
 * TL_EINVAL. A path without a '/' is in the working folder, which passes. */
tl_status tl_check_parent_folder(const char *path, const char *file_kind);

/* Fails when path is a symbolic link that stat() cannot follow: a link to a
 * missing file (TL_ENOTFOUND) or a loop of links (TL_EINVAL). The message
 * names file_kind, path and the link's target. Other paths pass. HDF5
 * creates a new run log with O_EXCL (H5F_ACC_EXCL), which fails on such a
 * link with only "File exists". */
tl_status tl_check_link_target(const char *path, const char *file_kind);

/* Returns TL_OK when mode (st_mode of path) is a regular file. Otherwise sets
 * TL_EINVAL with a message that names file_kind ("text file"), path and what
 * the path is ("a FIFO"), with the advice to give a regular file. Reading
 * a character device such as /dev/zero never ends, and opening a FIFO blocks
 * until another process opens it for writing. */
tl_status tl_require_regular_file(const char *path, const char *file_kind, mode_t mode);

/* Runs tl_require_regular_file() on path when it exists, following
 * symbolic links. A missing path passes, so that the caller reports it. */
tl_status tl_check_existing_file(const char *path, const char *file_kind);

/* Returns the process's file size limit (ulimit -f) in bytes, or UINT64_MAX
 * when there is none. A write past it raises SIGXFSZ, whose default action
 * kills the process. */
uint64_t tl_file_size_limit(void);

/* Tries what a writer of path will do: creates path with O_EXCL and removes
 * it again, or opens an existing path for writing without truncating it.
 * Returns 0 when that works, else the errno, so that a save at the end of a
 * run can be rejected before the run instead. */
int tl_probe_create(const char *path);

/* Opens the temporary file path, written and then renamed over its target,
 * for writing: creates it if missing, never truncates it. A symbolic link or
 * a file with other hard links left at path is unlinked first, and the open
 * does not follow links, so the write cannot reach another file. Returns the
 * descriptor, or -1 with errno set. */
int tl_open_temp(const char *path);

/* Opens path with tl_open_temp() and takes a Linux open-file-description
 * write lock on it, so that two processes cannot write the same temporary
 * file at once. Stores the descriptor, which holds the lock until it is
 * closed, in *fd_out. Returns 0, EAGAIN when another open file holds the
 * lock, or the errno of the open. */
int tl_lock_for_writing(const char *path, int *fd_out);

/* Returns the next step to suggest after a create failed with errno err. */
const char *tl_create_advice(int err);

/* Prepares HDF5 before the library uses it: turns off its error printing,
 * since failures reach the caller through tl_errmsg(), and, when called before
 * HDF5's first use in the process, its clean-up at exit. That clean-up closes
 * files again whose close failed (after a write to a full disk), which
 * crashes HDF5 1.10.8; the library closes its own files. */
void tl_hdf5_prepare(void);

/* Bytes of the text tl_hdf5_error_detail() fills. */
enum { TL_HDF5_DETAIL_SIZE = 512 };
/* Copies HDF5's innermost error description, and the function that raised it,
 * into text on one line, clears HDF5's error stack and returns text, or
 * "no HDF5 error detail" when the stack is empty. */
const char *tl_hdf5_error_detail(char text[TL_HDF5_DETAIL_SIZE]);

/* Checks a plugin's option table when it loads (plugin/options.c): names
 * present and unique, known types, ranges, and defaults of the option's
 * type that its own validation accepts. file names the plugin in the
 * message. */
struct tl_plugin;
tl_status tl_plugin_check_schema(const struct tl_plugin *plugin, const char *file);

/* Argument checks that set a message naming the op and the argument. */
bool tl_check_f32(const char *op, const char *arg, const tl_tensor *t);
bool tl_check_i32(const char *op, const char *arg, const tl_tensor *t);

/* Backward functions, one per op, defined beside the op's forward. */
void tl_matmul_backward(tl_ctx *ctx, tl_node *node);
void tl_add_backward(tl_ctx *ctx, tl_node *node);
void tl_mul_backward(tl_ctx *ctx, tl_node *node);
void tl_scale_backward(tl_ctx *ctx, tl_node *node);
void tl_sum_backward(tl_ctx *ctx, tl_node *node);
void tl_mean_backward(tl_ctx *ctx, tl_node *node);
void tl_embedding_backward(tl_ctx *ctx, tl_node *node);
void tl_gather_rows_backward(tl_ctx *ctx, tl_node *node);
void tl_scatter_add_rows_backward(tl_ctx *ctx, tl_node *node);
void tl_rmsnorm_backward(tl_ctx *ctx, tl_node *node);
void tl_layernorm_backward(tl_ctx *ctx, tl_node *node);
void tl_softmax_backward(tl_ctx *ctx, tl_node *node);
void tl_attention_backward(tl_ctx *ctx, tl_node *node);
void tl_silu_backward(tl_ctx *ctx, tl_node *node);
void tl_gelu_backward(tl_ctx *ctx, tl_node *node);
void tl_sigmoid_backward(tl_ctx *ctx, tl_node *node);
void tl_tanh_backward(tl_ctx *ctx, tl_node *node);
void tl_swiglu_backward(tl_ctx *ctx, tl_node *node);
void tl_cross_entropy_backward(tl_ctx *ctx, tl_node *node);
void tl_bce_logits_backward(tl_ctx *ctx, tl_node *node);

/* Hot loops are compiled three times, for x86-64-v4 (AVX-512), x86-64-v3
 * (AVX2 and FMA) and baseline x86-64, and the dynamic loader picks the best
 * version the CPU runs (an ifunc). The default build thus runs on any x86-64
 * and still gets wide vectors. When the whole build already targets AVX-512
 * (TL_NATIVE on such a CPU) one version is enough. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && \
    !defined(__AVX512F__)
#define TL_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TL_MULTIVERSION
#endif

/* Allocates bytes (zeroed when zero is true) on a 64-byte cache line. Blocks
 * of 2 MiB and more start on a 2 MiB boundary and ask for transparent huge
 * pages, which cut TLB misses where ops stream through tens of megabytes.
 * With them the step benchmark went from 47.5 to 46.2 ms at one thread and
 * from 24.9 to 24.5 ms at two. Release with free(). NULL when out of memory. */
void *tl_alloc_large(size_t bytes, bool zero);

/* The calling thread's share [*lo, *hi) of n elements inside a parallel
 * region: contiguous, in thread order, and split at multiples of 16
 * elements, so a 64-byte aligned float array splits on cache-line bounds. */
void tl_thread_range(int64_t n, int64_t *lo, int64_t *hi);

#define TL_ANY_NULL2(a, b) ((a) == NULL || (b) == NULL)
#define TL_ANY_NULL3(a, b, c) ((a) == NULL || (b) == NULL || (c) == NULL)

#endif
