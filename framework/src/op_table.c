/* The op descriptor table, indexed by tl_op. */
#include "internal.h"

const tl_op_desc tl_op_table[] = {
    [TL_OP_MATMUL] = {"matmul", tl_matmul_backward},
    [TL_OP_ADD] = {"add", tl_add_backward},
    [TL_OP_MUL] = {"mul", tl_mul_backward},
    [TL_OP_SCALE] = {"scale", tl_scale_backward},
    [TL_OP_SUM] = {"sum", tl_sum_backward},
    [TL_OP_MEAN] = {"mean", tl_mean_backward},
    [TL_OP_EMBEDDING] = {"embedding", tl_embedding_backward},
    [TL_OP_GATHER_ROWS] = {"gather_rows", tl_gather_rows_backward},
    [TL_OP_SCATTER_ADD_ROWS] = {"scatter_add_rows", tl_scatter_add_rows_backward},
    [TL_OP_RMSNORM] = {"rmsnorm", tl_rmsnorm_backward},
    [TL_OP_LAYERNORM] = {"layernorm", tl_layernorm_backward},
    [TL_OP_SOFTMAX] = {"softmax", tl_softmax_backward},
    [TL_OP_ATTENTION] = {"attention", tl_attention_backward},
    [TL_OP_SILU] = {"silu", tl_silu_backward},
    [TL_OP_GELU] = {"gelu", tl_gelu_backward},
    [TL_OP_SIGMOID] = {"sigmoid", tl_sigmoid_backward},
    [TL_OP_TANH] = {"tanh", tl_tanh_backward},
    [TL_OP_SWIGLU] = {"swiglu", tl_swiglu_backward},
    [TL_OP_CROSS_ENTROPY] = {"cross_entropy", tl_cross_entropy_backward},
    [TL_OP_BCE_LOGITS] = {"bce_logits", tl_bce_logits_backward},
};
_Static_assert(sizeof(tl_op_table) / sizeof(tl_op_table[0]) == TL_OP_COUNT,
               "tl_op_table needs one entry per tl_op");

const char *tl_op_name(tl_op op)
{
    if ((unsigned)op >= TL_OP_COUNT)
        return "unknown op";
    return tl_op_table[op].name;
}
