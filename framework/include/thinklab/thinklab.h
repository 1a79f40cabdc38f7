/* The thinklab C API: include this one header. */
#ifndef THINKLAB_H
#define THINKLAB_H

#define TL_VERSION_MAJOR 0
#define TL_VERSION_MINOR 1
#define TL_VERSION_PATCH 0
#define TL_VERSION_STRING "0.1.0"

#include "thinklab/status.h"
#include "thinklab/tensor.h"
#include "thinklab/ops.h"
#include "thinklab/rng.h"
#include "thinklab/params.h"
#include "thinklab/optim.h"
#include "thinklab/threads.h"
#include "thinklab/shards.h"
#include "thinklab/data.h"
#include "thinklab/log.h"
#include "thinklab/linalg.h"
#include "thinklab/train.h"

#endif
