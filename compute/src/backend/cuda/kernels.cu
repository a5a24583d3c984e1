// The CUDA backend's kernels, compiled once by NVRTC when a `CudaBackend` is created.
//
// Every kernel mirrors one operation of the CPU backend (compute/src/backend/cpu.rs) and
// performs the same floating-point operations in the same order per element, so that with
// FMA contraction off (`--fmad=false`) the elementwise results are bit-identical to the CPU's
// and only exp/log/tanh (a few ulp) and the order of summation differ. Reductions that the
// CPU accumulates in f64 (losses, sum of squares) accumulate in double here too.
//
// Rules that must stay true:
// - Counts and indices are 64-bit (`u64`), so no tensor size overflows an index.
// - Every loop is grid-stride (or block-stride inside one row), so any grid size is
//   correct; the host picks sizes for speed only.
// - Block sizes are powers of two of at most BLOCK (the tree reductions rely on both).
// - A kernel that writes an output writes every element of it: outputs are allocated
//   uninitialised.

typedef unsigned long long u64;

#define BLOCK 256

// -infinity, without relying on <math.h>'s INFINITY (NVRTC includes no standard headers).
#define NEG_INF __int_as_float(0xff800000)

// Activation codes, as `CudaBackend::activation_code` numbers them.
#define ACT_IDENTITY 0
#define ACT_RELU 1
#define ACT_TANH 2

__device__ __forceinline__ u64 global_index() {
    return (u64)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ u64 grid_stride() {
    return (u64)gridDim.x * blockDim.x;
}

// The sum of `v` over the block, returned to every thread. `s` holds blockDim.x values.
__device__ double block_sum_f64(double v, double* s) {
    s[threadIdx.x] = v;
    __syncthreads();
    for (unsigned k = blockDim.x / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) s[threadIdx.x] += s[threadIdx.x + k];
        __syncthreads();
    }
    double r = s[0];
    __syncthreads();  // `s` may be reused right after
    return r;
}

__device__ float block_sum_f32(float v, float* s) {
    s[threadIdx.x] = v;
    __syncthreads();
    for (unsigned k = blockDim.x / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) s[threadIdx.x] += s[threadIdx.x + k];
        __syncthreads();
    }
    float r = s[0];
    __syncthreads();
    return r;
}

// fmaxf ignores a NaN operand, as Rust's f32::max does in the CPU backend's folds.
__device__ float block_max_f32(float v, float* s) {
    s[threadIdx.x] = v;
    __syncthreads();
    for (unsigned k = blockDim.x / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) s[threadIdx.x] = fmaxf(s[threadIdx.x], s[threadIdx.x + k]);
        __syncthreads();
    }
    float r = s[0];
    __syncthreads();
    return r;
}

// The max and the log-sum-exp of row `x[0..cols] / temperature`, as `log_softmax_rows`
// computes them: max + ln(sum(exp(v / T - max))).
__device__ void row_max_lse(const float* x, u64 cols, float temperature, float* s,
                            float* max_out, float* lse_out) {
    float m = NEG_INF;
    for (u64 j = threadIdx.x; j < cols; j += blockDim.x) m = fmaxf(m, x[j] / temperature);
    m = block_max_f32(m, s);
    float acc = 0.0f;
    for (u64 j = threadIdx.x; j < cols; j += blockDim.x) acc += expf(x[j] / temperature - m);
    acc = block_sum_f32(acc, s);
    *max_out = m;
    *lse_out = m + logf(acc);
}

// z <- act(z + bias[col]) over a rows x cols matrix of n elements.
extern "C" __global__ void bias_activation(float* z, const float* bias, u64 n, u64 cols,
                                           int act) {
    for (u64 i = global_index(); i < n; i += grid_stride()) {
        float v = z[i] + bias[i % cols];
        if (act == ACT_RELU) v = fmaxf(v, 0.0f);
        else if (act == ACT_TANH) v = tanhf(v);
        z[i] = v;
    }
}

// grad <- grad * act'(y), the derivative written in terms of the forward output y.
extern "C" __global__ void activation_backward(float* grad, const float* y, u64 n, int act) {
    for (u64 i = global_index(); i < n; i += grid_stride()) {
        float d = 1.0f;
        if (act == ACT_RELU) d = y[i] > 0.0f ? 1.0f : 0.0f;
        else if (act == ACT_TANH) d = 1.0f - y[i] * y[i];
        grad[i] *= d;
    }
}

// Column sums of chunks of SUM_ROWS_CHUNK rows: out is ceil(rows / chunk) x cols, out[c][j]
// the sum of rows [c * chunk, (c + 1) * chunk) of column j. The host applies it again to
// `out` until one row is left, so a tall matrix is summed by many blocks at once, and
// deterministically (no atomics). Blocks are 32 columns x 8 row lanes (BLOCK threads).
#define SUM_ROWS_CHUNK 256
extern "C" __global__ void sum_rows_chunked(const float* x, float* out, u64 rows, u64 cols) {
    __shared__ float s[8][32];
    unsigned lane = threadIdx.x % 32;
    unsigned group = threadIdx.x / 32;
    u64 chunks = (rows + SUM_ROWS_CHUNK - 1) / SUM_ROWS_CHUNK;
    for (u64 chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
        u64 first = chunk * SUM_ROWS_CHUNK;
        u64 last = first + SUM_ROWS_CHUNK < rows ? first + SUM_ROWS_CHUNK : rows;
        for (u64 c0 = (u64)blockIdx.x * 32; c0 < cols; c0 += (u64)gridDim.x * 32) {
            u64 col = c0 + lane;
            float acc = 0.0f;
            if (col < cols) {
                for (u64 r = first + group; r < last; r += 8) acc += x[r * cols + col];
            }
            s[group][lane] = acc;
            __syncthreads();
            if (group == 0 && col < cols) {
                float total = 0.0f;
                for (int g = 0; g < 8; ++g) total += s[g][lane];
                out[chunk * cols + col] = total;
            }
            __syncthreads();
        }
    }
}

// Row-wise softmax(x / temperature); one block per row.
extern "C" __global__ void softmax_rows(const float* x, float* out, u64 rows, u64 cols,
                                        float temperature) {
    __shared__ float s[BLOCK];
    for (u64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* xr = x + row * cols;
        float* yr = out + row * cols;
        float m = NEG_INF;
        for (u64 j = threadIdx.x; j < cols; j += blockDim.x) m = fmaxf(m, xr[j] / temperature);
        m = block_max_f32(m, s);
        float acc = 0.0f;
        for (u64 j = threadIdx.x; j < cols; j += blockDim.x) {
            float e = expf(xr[j] / temperature - m);
            yr[j] = e;
            acc += e;
        }
        acc = block_sum_f32(acc, s);
        // Each thread reads back only the elements it wrote itself: no barrier needed.
        for (u64 j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = yr[j] / acc;
    }
}

// Softmax cross-entropy; one block per row. row_loss[r] = -log_softmax(x_r)[label_r];
// grad = softmax(x) * inv - (j == label) * inv, where inv = 1 / rows (the mean's scale).
// Labels are checked on the host before the launch.
extern "C" __global__ void cross_entropy_rows(const float* logits, const unsigned* labels,
                                              float* grad, double* row_loss, u64 rows,
                                              u64 cols, float inv) {
    __shared__ float s[BLOCK];
    for (u64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* xr = logits + row * cols;
        float* gr = grad + row * cols;
        unsigned label = labels[row];
        float m, lse;
        row_max_lse(xr, cols, 1.0f, s, &m, &lse);
        for (u64 j = threadIdx.x; j < cols; j += blockDim.x) {
            float g = expf(xr[j] / 1.0f - lse) * inv;
            if (j == label) g -= inv;
            gr[j] = g;
        }
        if (threadIdx.x == 0) row_loss[row] = -(double)(xr[label] / 1.0f - lse);
    }
}

// T^2 KL(softmax(t / T) || softmax(s / T)); one block per row. row_kl[r] is the row's
// sum of p * (log p - log q) (each term in f32, summed in double, as on the CPU);
// grad = scale * (q - p) with scale = T / rows.
extern "C" __global__ void kl_rows(const float* student, const float* teacher, float* grad,
                                   double* row_kl, u64 rows, u64 cols, float temperature,
                                   float scale) {
    __shared__ float s[BLOCK];
    __shared__ double sd[BLOCK];
    for (u64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* sr = student + row * cols;
        const float* tr = teacher + row * cols;
        float* gr = grad + row * cols;
        float mq, lse_q, mp, lse_p;
        row_max_lse(sr, cols, temperature, s, &mq, &lse_q);
        row_max_lse(tr, cols, temperature, s, &mp, &lse_p);
        double acc = 0.0;
        for (u64 j = threadIdx.x; j < cols; j += blockDim.x) {
            float lq = sr[j] / temperature - lse_q;
            float lp = tr[j] / temperature - lse_p;
            acc += (double)(expf(lp) * (lp - lq));
            gr[j] = scale * (expf(lq) - expf(lp));
        }
        acc = block_sum_f64(acc, sd);
        if (threadIdx.x == 0) row_kl[row] = acc;
    }
}

// The sum of in[0..n], written to out[0]; launched as a single block.
extern "C" __global__ void sum_f64(const double* in, u64 n, double* out) {
    __shared__ double s[BLOCK];
    double acc = 0.0;
    for (u64 i = threadIdx.x; i < n; i += blockDim.x) acc += in[i];
    acc = block_sum_f64(acc, s);
    if (threadIdx.x == 0) out[0] = acc;
}

// Per-block partial sums of x^2 in double: partial[blockIdx.x]. `sum_f64` finishes them.
extern "C" __global__ void squares_partial(const float* x, u64 n, double* partial) {
    __shared__ double s[BLOCK];
    double acc = 0.0;
    for (u64 i = global_index(); i < n; i += grid_stride()) {
        double v = (double)x[i];
        acc += v * v;
    }
    acc = block_sum_f64(acc, s);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// Mean squared error: grad = 2 d / n with d = p - t, and per-block partial sums of d^2
// in double.
extern "C" __global__ void mse_partial(const float* prediction, const float* target,
                                       float* grad, u64 n, float count, double* partial) {
    __shared__ double s[BLOCK];
    double acc = 0.0;
    for (u64 i = global_index(); i < n; i += grid_stride()) {
        float d = prediction[i] - target[i];
        acc += (double)d * (double)d;
        grad[i] = 2.0f * d / count;
    }
    acc = block_sum_f64(acc, s);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

extern "C" __global__ void scale(float* x, u64 n, float s) {
    for (u64 i = global_index(); i < n; i += grid_stride()) x[i] = x[i] * s;
}

// y <- y + a x
extern "C" __global__ void add_scaled(float* y, const float* x, u64 n, float a) {
    for (u64 i = global_index(); i < n; i += grid_stride()) y[i] = y[i] + a * x[i];
}

// One AdamW step over every element, the bias corrections c1, c2 and the decay factor
// 1 - lr * weight_decay computed on the host exactly as the CPU backend does.
extern "C" __global__ void adamw(float* param, const float* grad, float* m, float* v, u64 n,
                                 float lr, float beta1, float beta2, float eps, float c1,
                                 float c2, float decay) {
    for (u64 i = global_index(); i < n; i += grid_stride()) {
        float g = grad[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float m_hat = mi / c1;
        float v_hat = vi / c2;
        param[i] = param[i] * decay - lr * m_hat / (sqrtf(v_hat) + eps);
    }
}
