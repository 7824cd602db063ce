/* Matrix products straight on ggml blocks: y = x @ W.T without a float32 copy of W.
 *
 * W is a Q4_0, Q4_1 or Q8_0 block tensor [N, K/32, block_bytes] (GGUF layout, rows =
 * outputs), x float32 [M, K], y float32 [M, N]. Each block of 32 weights is decoded
 * into registers with the reference formulas (Q4_0 (q - 8) * d, Q4_1 d * q + m,
 * Q8_0 d * q, float32 operations in that order: the weights equal
 * tiercache.models.quant.dequantize bit for bit) and multiplied by a tile of four
 * rows of x (one row: eight outputs at a time), so each decoded block serves every
 * row of the tile and the float32 matrix is never written to memory. (Tiles of 8 rows
 * x 2 outputs ran 1.3x slower than 4 x 4 at 16 rows on the 2-core VM.) Sums run in another order than a
 * float32 matmul's (per 16-lane accumulators, reduced at the end of a row), so y
 * equals dequantize-then-multiply up to float rounding.
 *
 * An AVX-512 kernel where the CPU has it (chosen at run time), else plain C.
 * Outputs are split between threads (OpenMP); the GIL is released while it runs.
 * Cost: O(M * N * K) multiply-adds, no allocation. Thread-safety: pure; callers
 * must not share one output between concurrent calls.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

enum { Q4_0 = 0, Q4_1 = 1, Q8_0 = 2 };
static const int BLOCK_BYTES[3] = {18, 20, 34};

static float half_to_float(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {  /* subnormal: normalize */
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* ---- plain C: decode a block into 32 floats, then dot products ---- */

static void decode_block(const uint8_t *b, int type, float *w) {
    float d = half_to_float(b);
    if (type == Q8_0) {
        for (int j = 0; j < 32; j++) w[j] = d * (float)(int8_t)b[2 + j];
    } else if (type == Q4_1) {
        float m = half_to_float(b + 2);
        for (int j = 0; j < 16; j++) {
            w[j] = d * (float)(b[4 + j] & 15) + m;
            w[j + 16] = d * (float)(b[4 + j] >> 4) + m;
        }
    } else {
        for (int j = 0; j < 16; j++) {
            w[j] = (float)((b[2 + j] & 15) - 8) * d;
            w[j + 16] = (float)((b[2 + j] >> 4) - 8) * d;
        }
    }
}

static void rows_plain(const float *x, int64_t M, int64_t K, const uint8_t *w, int type,
                       int64_t n0, int64_t n1, float *y, int64_t N) {
    const int64_t nb = K / 32, bb = BLOCK_BYTES[type];
    float wb[32];
    for (int64_t n = n0; n < n1; n++) {
        for (int64_t m = 0; m < M; m++) y[m * N + n] = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            decode_block(w + (n * nb + b) * bb, type, wb);
            for (int64_t m = 0; m < M; m++) {
                const float *xr = x + m * K + b * 32;
                float s = 0.0f;
                for (int j = 0; j < 32; j++) s += wb[j] * xr[j];
                y[m * N + n] += s;
            }
        }
    }
}

#if HAVE_X86
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,f16c,fma")))

/* The block's 32 weights as two vectors (elements 0-15, 16-31). */
AVX512 static inline void decode_avx512(const uint8_t *b, int type, __m512 *lo, __m512 *hi) {
    const __m512 d = _mm512_set1_ps(_cvtsh_ss(*(const uint16_t *)b));
    if (type == Q8_0) {
        __m512i q0 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 2)));
        __m512i q1 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 18)));
        *lo = _mm512_mul_ps(d, _mm512_cvtepi32_ps(q0));
        *hi = _mm512_mul_ps(d, _mm512_cvtepi32_ps(q1));
        return;
    }
    const uint8_t *qs = b + (type == Q4_1 ? 4 : 2);
    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
    __m512i q0 = _mm512_and_si512(v, _mm512_set1_epi32(15));
    __m512i q1 = _mm512_srli_epi32(v, 4);
    if (type == Q4_1) {
        const __m512 m = _mm512_set1_ps(_cvtsh_ss(*(const uint16_t *)(b + 2)));
        *lo = _mm512_add_ps(_mm512_mul_ps(d, _mm512_cvtepi32_ps(q0)), m);
        *hi = _mm512_add_ps(_mm512_mul_ps(d, _mm512_cvtepi32_ps(q1)), m);
    } else {
        const __m512i eight = _mm512_set1_epi32(8);
        *lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(q0, eight)), d);
        *hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(q1, eight)), d);
    }
}

/* y[m0:m0+MR, n0:n0+NR] for MR rows and NR outputs: MR * NR accumulators. */
#define TILE(MR, NR)                                                                    \
    AVX512 static void tile_##MR##x##NR(const float *x, int64_t K, const uint8_t *w,  \
                                        int type, int64_t m0, int64_t n0, float *y,    \
                                        int64_t N) {                                   \
        const int64_t nb = K / 32, bb = BLOCK_BYTES[type];                             \
        __m512 acc[MR][NR];                                                            \
        for (int i = 0; i < MR; i++)                                                   \
            for (int j = 0; j < NR; j++) acc[i][j] = _mm512_setzero_ps();              \
        for (int64_t b = 0; b < nb; b++) {                                             \
            __m512 lo[NR], hi[NR];                                                     \
            for (int j = 0; j < NR; j++)                                               \
                decode_avx512(w + ((n0 + j) * nb + b) * bb, type, &lo[j], &hi[j]);     \
            for (int i = 0; i < MR; i++) {                                             \
                const float *xr = x + (m0 + i) * K + b * 32;                           \
                __m512 x0 = _mm512_loadu_ps(xr), x1 = _mm512_loadu_ps(xr + 16);        \
                for (int j = 0; j < NR; j++) {                                         \
                    acc[i][j] = _mm512_fmadd_ps(lo[j], x0, acc[i][j]);                 \
                    acc[i][j] = _mm512_fmadd_ps(hi[j], x1, acc[i][j]);                 \
                }                                                                      \
            }                                                                          \
        }                                                                              \
        for (int i = 0; i < MR; i++)                                                   \
            for (int j = 0; j < NR; j++)                                               \
                y[(m0 + i) * N + n0 + j] = _mm512_reduce_add_ps(acc[i][j]);            \
    }

TILE(4, 4)
TILE(2, 4)
TILE(1, 8)
TILE(4, 1)
TILE(2, 1)
TILE(1, 1)

/* Outputs in chunks of CHUNK (a chunk's blocks stay in L2 while every tile of rows
 * passes over them: the 49152-output head is read from memory once, not once per
 * four rows). */
#define CHUNK 64

AVX512 static void rows_avx512(const float *x, int64_t M, int64_t K, const uint8_t *w,
                               int type, int64_t n0, int64_t n1, float *y, int64_t N) {
    for (int64_t c0 = n0; c0 < n1; c0 += CHUNK) {
        const int64_t c1 = c0 + CHUNK < n1 ? c0 + CHUNK : n1;
        int64_t m = 0;
        for (; m + 4 <= M; m += 4) {
            int64_t n = c0;
            for (; n + 4 <= c1; n += 4) tile_4x4(x, K, w, type, m, n, y, N);
            for (; n < c1; n++) tile_4x1(x, K, w, type, m, n, y, N);
        }
        for (; m + 2 <= M; m += 2) {
            int64_t n = c0;
            for (; n + 4 <= c1; n += 4) tile_2x4(x, K, w, type, m, n, y, N);
            for (; n < c1; n++) tile_2x1(x, K, w, type, m, n, y, N);
        }
        for (; m < M; m++) {
            int64_t n = c0;
            for (; n + 8 <= c1; n += 8) tile_1x8(x, K, w, type, m, n, y, N);
            for (; n < c1; n++) tile_1x1(x, K, w, type, m, n, y, N);
        }
    }
}

static int cpu_has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512dq");
}
#else
static int cpu_has_avx512(void) { return 0; }
#endif

static int use_avx512 = 0;

/* qmatmul(x, blocks, out, type, M, K, N, threads, plain) */
static PyObject *qmatmul(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "qmatmul takes 9 arguments");
        return NULL;
    }
    long type = PyLong_AsLong(args[3]);
    long long M = PyLong_AsLongLong(args[4]), K = PyLong_AsLongLong(args[5]),
              N = PyLong_AsLongLong(args[6]);
    long threads = PyLong_AsLong(args[7]);
    int plain = PyObject_IsTrue(args[8]);
    if (PyErr_Occurred()) return NULL;
    if (type < 0 || type > 2 || M < 0 || K < 0 || N < 0 || K % 32 || threads < 1) {
        PyErr_SetString(PyExc_ValueError, "qmatmul: bad type, shape or thread count");
        return NULL;
    }
    Py_buffer xb, wb, yb;
    if (PyObject_GetBuffer(args[0], &xb, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (PyObject_GetBuffer(args[1], &wb, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&xb);
        return NULL;
    }
    if (PyObject_GetBuffer(args[2], &yb, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&xb);
        PyBuffer_Release(&wb);
        return NULL;
    }
    const int64_t bb = BLOCK_BYTES[type];
    if (xb.len != (Py_ssize_t)(M * K * 4) || wb.len != (Py_ssize_t)(N * (K / 32) * bb)
        || yb.len != (Py_ssize_t)(M * N * 4)) {
        PyBuffer_Release(&xb);
        PyBuffer_Release(&wb);
        PyBuffer_Release(&yb);
        PyErr_SetString(PyExc_ValueError, "qmatmul: buffer sizes do not match the shape");
        return NULL;
    }
    const float *x = (const float *)xb.buf;
    const uint8_t *w = (const uint8_t *)wb.buf;
    float *y = (float *)yb.buf;
    const int fast = use_avx512 && !plain;
    Py_BEGIN_ALLOW_THREADS
    /* chunks of outputs, multiples of 8, at most one per thread */
    int64_t chunk = (N + threads - 1) / threads;
    chunk = (chunk + 7) / 8 * 8;
    int parts = (int)((N + chunk - 1) / (chunk ? chunk : 1));
    if (parts < 1) parts = 1;
#pragma omp parallel for num_threads(parts) schedule(static, 1) if (parts > 1)
    for (int p = 0; p < parts; p++) {
        int64_t n0 = p * chunk, n1 = n0 + chunk < N ? n0 + chunk : N;
#if HAVE_X86
        if (fast) rows_avx512(x, M, K, w, (int)type, n0, n1, y, N);
        else
#endif
        rows_plain(x, M, K, w, (int)type, n0, n1, y, N);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&xb);
    PyBuffer_Release(&wb);
    PyBuffer_Release(&yb);
    Py_RETURN_NONE;
}

/* ---- attention of one new token per row over a KV cache ---- */

/* out[b, h] = softmax(scale * q[b, h] . [keys[b, g] | k_new[b, g]] + [mask[b] | 0])
 *             @ [values[b, g] | v_new[b, g]], g = h / (H / KV): grouped-query attention
 * of a one-token step. q [B, H, D], k_new / v_new [B, KV, D], keys [B, KV, D, S]
 * (positions last), values [B, KV, S, D], mask [B, S] (additive: 0 or -inf), out
 * [B, H, D]. scores: scratch of S + 1 floats per (b, h). */
static void attend_one(const float *q, const float *k_new, const float *v_new,
                       const float *keys, const float *values, const float *mask,
                       float *out, int64_t b, int64_t h, int64_t H, int64_t KV, int64_t D,
                       int64_t S, float scale, float *scores) {
    const int64_t g = h / (H / KV);
    const float *qr = q + (b * H + h) * D;
    const float *kc = keys + (b * KV + g) * D * S, *vc = values + (b * KV + g) * S * D;
    const float *kn = k_new + (b * KV + g) * D, *vn = v_new + (b * KV + g) * D;
    for (int64_t j = 0; j < S; j++) scores[j] = 0.0f;
    for (int64_t d = 0; d < D; d++) {  /* positions last: one row of keys per dimension */
        const float qd = qr[d], *row = kc + d * S;
        for (int64_t j = 0; j < S; j++) scores[j] += qd * row[j];
    }
    float own = 0.0f;
    for (int64_t d = 0; d < D; d++) own += qr[d] * kn[d];
    const float *m = mask + b * S;
    for (int64_t j = 0; j < S; j++) scores[j] = scores[j] * scale + m[j];
    scores[S] = own * scale;
    float top = scores[S];
    for (int64_t j = 0; j < S; j++) top = scores[j] > top ? scores[j] : top;
    float total = 0.0f;
    for (int64_t j = 0; j <= S; j++) {
        scores[j] = expf(scores[j] - top);
        total += scores[j];
    }
    float *o = out + (b * H + h) * D;
    for (int64_t d = 0; d < D; d++) o[d] = 0.0f;
    for (int64_t j = 0; j < S; j++) {
        const float p = scores[j] / total, *row = vc + j * D;
        if (p == 0.0f) continue;  /* a masked position */
        for (int64_t d = 0; d < D; d++) o[d] += p * row[d];
    }
    const float p = scores[S] / total;
    for (int64_t d = 0; d < D; d++) o[d] += p * vn[d];
}

/* attend(q, k_new, v_new, keys, values, mask, out, B, H, KV, D, S, scale, threads) */
static PyObject *attend(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 14) {
        PyErr_SetString(PyExc_TypeError, "attend takes 14 arguments");
        return NULL;
    }
    long long B = PyLong_AsLongLong(args[7]), H = PyLong_AsLongLong(args[8]),
              KV = PyLong_AsLongLong(args[9]), D = PyLong_AsLongLong(args[10]),
              S = PyLong_AsLongLong(args[11]);
    double scale = PyFloat_AsDouble(args[12]);
    long threads = PyLong_AsLong(args[13]);
    if (PyErr_Occurred()) return NULL;
    if (B < 1 || H < 1 || KV < 1 || H % KV || D < 1 || S < 0 || threads < 1) {
        PyErr_SetString(PyExc_ValueError, "attend: bad shape");
        return NULL;
    }
    const Py_ssize_t want[7] = {B * H * D, B * KV * D, B * KV * D, B * KV * D * S,
                                B * KV * S * D, B * S, B * H * D};
    Py_buffer buf[7];
    int held = 0, ok = 1;
    for (; held < 7; held++) {
        int flags = PyBUF_C_CONTIGUOUS | (held == 6 ? PyBUF_WRITABLE : 0);
        if (PyObject_GetBuffer(args[held], &buf[held], flags) < 0) { ok = 0; break; }
        if (buf[held].len != want[held] * 4) {
            held++;
            PyErr_SetString(PyExc_ValueError, "attend: buffer sizes do not match the shape");
            ok = 0;
            break;
        }
    }
    if (ok) {
        const float *q = buf[0].buf, *kn = buf[1].buf, *vn = buf[2].buf, *keys = buf[3].buf,
                    *values = buf[4].buf, *mask = buf[5].buf;
        float *out = buf[6].buf;
        const float sc = (float)scale;
        int failed = 0;
        Py_BEGIN_ALLOW_THREADS
        const int64_t pairs = B * H;
#pragma omp parallel num_threads((int)threads) if (pairs > 1 && threads > 1)
        {
            float *scores = malloc((size_t)(S + 1) * sizeof(float));
            /* every thread meets the loop (a work-sharing construct); without scratch
             * it only records the failure, and the call raises MemoryError */
#pragma omp for schedule(static)
            for (int64_t i = 0; i < pairs; i++) {
                if (scores == NULL) {
#pragma omp atomic write
                    failed = 1;
                    continue;
                }
                attend_one(q, kn, vn, keys, values, mask, out, i / H, i % H, H, KV, D, S,
                           sc, scores);
            }
            free(scores);
        }
        Py_END_ALLOW_THREADS
        if (failed) {
            PyErr_NoMemory();
            ok = 0;
        }
    }
    for (int i = 0; i < held; i++) PyBuffer_Release(&buf[i]);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

static PyObject *has_avx512(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyBool_FromLong(use_avx512);
}

static PyMethodDef methods[] = {
    {"qmatmul", (PyCFunction)(void (*)(void))qmatmul, METH_FASTCALL,
     "qmatmul(x, blocks, out, type, M, K, N, threads, plain): out = x @ W.T"},
    {"attend", (PyCFunction)(void (*)(void))attend, METH_FASTCALL,
     "attend(q, k_new, v_new, keys, values, mask, out, B, H, KV, D, S, scale, threads): "
     "one-token "
     "grouped-query attention over a KV cache"},
    {"has_avx512", has_avx512, METH_NOARGS, "Whether the AVX-512 kernel runs here."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_qmatmul", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__qmatmul(void) {
    use_avx512 = cpu_has_avx512();
    return PyModule_Create(&module);
}
