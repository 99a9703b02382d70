/* y = x W^T + b for a pruned weight W in one of two compact formats (made by
   admmprune/export/cpu_kernels.py).

   Batch-1 decoding is bound by the bytes of weight read per token. Dense reads 4 bytes per
   weight and CSR 8 per kept weight (value + 32-bit column). The bitmask format reads 1/8 byte
   per weight plus 4 per kept weight, so it pays from about 50% sparsity; the index16 format
   reads 6 bytes per kept weight (16-bit column + value) and, with AVX-512 gathers, runs
   fastest from about 85-90% sparsity, where the bitmask's fixed cost per 16 columns
   dominates.

   Bitmask layout (made by admmprune/export/bitmask.py): the columns are cut into blocks of
   `block_words` 16-bit words (16 columns per word) so that the slice of x a block reads stays
   in L1 while the weights stream past it. For each block, for each output row: the row's
   words of that block, and (in a second array) its kept values in column order. One pointer
   walks each array from start to end (one per thread, each from its first row; with OpenMP the
   rows are shared among torch's threads: the library links the libgomp torch loaded).
   `values` carries 16 floats of padding at its end
   because the vector path reads 16 floats at a time. */
#include <stdint.h>
#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

int admmprune_sparse_simd(void) {
#if defined(__AVX512F__)
    return 1;
#else
    return 0;
#endif
}

/* Adds the dot product of one row's block (words m, values v) with x to *acc; returns the
   position of the next row's values. */
static inline const float* block_dot(const uint16_t* m, int64_t words, const float* v,
                                     const float* x, float* acc) {
#if defined(__AVX512F__)
    /* expand puts the next popcount(k) values into the lanes whose bit is set; four
       accumulators hide the latency of the fused multiply-adds */
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 4 <= words; c += 4) {
        __mmask16 k0 = m[c], k1 = m[c + 1], k2 = m[c + 2], k3 = m[c + 3];
        __m512 w0 = _mm512_maskz_expand_ps(k0, _mm512_loadu_ps(v));
        v += __builtin_popcount(k0);
        __m512 w1 = _mm512_maskz_expand_ps(k1, _mm512_loadu_ps(v));
        v += __builtin_popcount(k1);
        __m512 w2 = _mm512_maskz_expand_ps(k2, _mm512_loadu_ps(v));
        v += __builtin_popcount(k2);
        __m512 w3 = _mm512_maskz_expand_ps(k3, _mm512_loadu_ps(v));
        v += __builtin_popcount(k3);
        /* masked loads: lanes without a weight are not read, so x needs no padding */
        a0 = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(k0, x + 16 * c), a0);
        a1 = _mm512_fmadd_ps(w1, _mm512_maskz_loadu_ps(k1, x + 16 * c + 16), a1);
        a2 = _mm512_fmadd_ps(w2, _mm512_maskz_loadu_ps(k2, x + 16 * c + 32), a2);
        a3 = _mm512_fmadd_ps(w3, _mm512_maskz_loadu_ps(k3, x + 16 * c + 48), a3);
    }
    for (; c < words; ++c) {
        __mmask16 k = m[c];
        __m512 w = _mm512_maskz_expand_ps(k, _mm512_loadu_ps(v));
        v += __builtin_popcount(k);
        a0 = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(k, x + 16 * c), a0);
    }
    *acc += _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#else
    float s = 0.0f;
    for (int64_t c = 0; c < words; ++c) {
        unsigned k = m[c];
        while (k) {
            s += *v++ * x[16 * c + __builtin_ctz(k)];
            k &= k - 1;
        }
    }
    *acc += s;
#endif
    return v;
}

/* Rows [r0, r1) of thread `part` of `parts` (contiguous, balanced). */
static inline void share(int64_t rows, int part, int parts, int64_t* r0, int64_t* r1) {
    *r0 = rows * part / parts;
    *r1 = rows * (part + 1) / parts;
}

/* Layers smaller than this many weights run on one thread: waking the others costs more. */
#define PARALLEL_WEIGHTS (1 << 18)

/* x: [batch, x_stride] row-major (only the first in_features columns are read);
   y: [batch, out_features]; bias may be NULL; row_offsets[block * out_features + r]: where
   row r's values of that block start (so that threads can start mid-stream). Each row of x
   streams the whole weight, so batches beyond a few rows are better served by a dense or
   CSR product. */
void admmprune_bitmask_linear(const float* x, int64_t batch, int64_t x_stride,
                              const uint16_t* mask, const float* values,
                              const int64_t* row_offsets, int64_t words, int64_t block_words,
                              const float* bias, float* y, int64_t out_features, int threads) {
    (void)threads;  /* without OpenMP */
    if (out_features * words * 16 < PARALLEL_WEIGHTS) threads = 1;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
#if defined(_OPENMP)
        int part = omp_get_thread_num(), parts = omp_get_num_threads();
#else
        int part = 0, parts = 1;
#endif
        int64_t r0, r1;
        share(out_features, part, parts, &r0, &r1);
        for (int64_t b = 0; b < batch; ++b) {
            const float* xb = x + b * x_stride;
            float* yb = y + b * out_features;
            for (int64_t r = r0; r < r1; ++r) yb[r] = bias ? bias[r] : 0.0f;
            for (int64_t c0 = 0, block = 0; c0 < words; c0 += block_words, ++block) {
                int64_t n = words - c0 < block_words ? words - c0 : block_words;
                const uint16_t* m = mask + out_features * c0 + r0 * n;
                const float* v = values + row_offsets[block * out_features + r0];
                for (int64_t r = r0; r < r1; ++r, m += n)
                    v = block_dot(m, n, v, xb + 16 * c0, yb + r);
            }
        }
    }
}

/* index16: each row's kept values in column order and their columns as uint16;
   row_start[r] .. row_start[r + 1] delimit row r in both arrays. */
void admmprune_index16_linear(const float* x, int64_t batch, int64_t x_stride,
                              const uint16_t* columns, const float* values,
                              const int64_t* row_start, const float* bias, float* y,
                              int64_t out_features, int threads) {
    (void)threads;  /* without OpenMP */
    if (row_start[out_features] * 8 < PARALLEL_WEIGHTS) threads = 1;  /* ~ weights at 87.5% */
    for (int64_t b = 0; b < batch; ++b) {
        const float* xb = x + b * x_stride;
        float* yb = y + b * out_features;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
#endif
        for (int64_t r = 0; r < out_features; ++r) {
            int64_t i = row_start[r], end = row_start[r + 1];
            float s = 0.0f;
#if defined(__AVX512F__)
            __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
            for (; i + 32 <= end; i += 32) {
                __m512i j0 = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(columns + i)));
                __m512i j1 = _mm512_cvtepu16_epi32(
                    _mm256_loadu_si256((const __m256i*)(columns + i + 16)));
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(values + i), _mm512_i32gather_ps(j0, xb, 4),
                                     a0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(values + i + 16),
                                     _mm512_i32gather_ps(j1, xb, 4), a1);
            }
            if (i + 16 <= end) {
                __m512i j = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(columns + i)));
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(values + i), _mm512_i32gather_ps(j, xb, 4),
                                     a0);
                i += 16;
            }
            s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#endif
            for (; i < end; ++i) s += values[i] * xb[columns[i]];
            yb[r] = bias ? s + bias[r] : s;
        }
    }
}
