/* The compiled hot path of the trust boundary (optional; taoism/boundary/fastpath.py selects it).
 *
 * Two types, one per direction of a session, each holding an OpenSSL AES-256-GCM context keyed
 * once from the session key (the key schedule is wiped when the context is freed: close() or
 * deallocation):
 *
 *   Sealer.seal(out, kind, tag, seq, request_id, tensors, blob) -> frame_len, or -1
 *       The common send: every tensor an exact torch.Tensor on the CPU, contiguous, of a wire
 *       dtype, the body fitting the slot. Lays out header + body in `out` (the shared slot) and
 *       encrypts the body in place, the tag after it: byte for byte what the Python path writes.
 *       -1 means "not handled here" and nothing was written: the caller takes the Python path,
 *       which handles (or refuses, with its own typed error) everything else.
 *   Opener.open(src, frame_len, max_body, expect_seq, snapshot) -> tuple (see OPEN_* below)
 *       Copies the header out of shared memory once, validates it as channel._recv does, checks
 *       the sequence number, decrypts from shared memory into a fresh private bytearray, and
 *       validates the descriptors there as frame.decode_body_parts does. It raises nothing for a
 *       bad frame: it returns a status, and the Python side raises the typed error (the same
 *       code, hence the same message, as the pure path).
 *
 * Bodies of at most `evp_max` bytes (the constructors' max_body) are encrypted and decrypted
 * here with the system libcrypto; longer ones, where that libcrypto may be slower per byte than
 * the `cryptography` package's own OpenSSL, call the same session's `AESGCM` object
 * (`encrypt_into` / `decrypt_into`, the pure path's very calls) on the same buffers. Without that
 * object (`aead` None) the sealer declines longer bodies (-1) and the opener decrypts them here.
 *
 * An attacker controls `src`: every field is read once from a private copy, and nothing in shared
 * memory is read again after it was validated; all size arithmetic is checked for overflow.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <stdint.h>
#include <string.h>

#define HEADER_SIZE 48
#define TAG_SIZE 16
#define OVERHEAD (HEADER_SIZE + TAG_SIZE)
#define DESC_FIXED 16
#define MAX_NDIM 8
#define MAX_TENSORS 65535u
#define ALIGN 64u
#define MAX_EXTENT (1ull << 62)
#define MAX_FAST_TENSORS 64 /* more tensors in one message: the Python path */
#define N_CODES 10          /* wire dtype codes 1..9 */
#define CHUNK (1 << 30)     /* EVP lengths are ints: longer bodies go in chunks */
#define VERSION 2

static const unsigned char MAGIC[4] = {'T', 'A', 'O', '1'};
static const unsigned ITEMSIZE[N_CODES] = {0, 4, 8, 2, 2, 8, 4, 1, 1, 1};

enum { OPEN_OK = 0, OPEN_BAD_HEADER = 1, OPEN_BAD_SEQ = 2, OPEN_BAD_TAG = 3, OPEN_BAD_BODY = 4 };

/* ------------------------------------------------------------------ little-endian fields */

static inline uint64_t ld64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static inline uint32_t ld32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint16_t ld16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline void st64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static inline void st32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static inline uint64_t align_up(uint64_t n) { return (n + ALIGN - 1) & ~(uint64_t)(ALIGN - 1); }

static void make_nonce(unsigned char nonce[12], const unsigned char prefix[4], uint64_t seq) {
    memcpy(nonce, prefix, 4);
    for (int i = 0; i < 8; i++) nonce[4 + i] = (unsigned char)(seq >> (8 * (7 - i))); /* big endian */
}

/* ------------------------------------------------------------------ the shared context type */

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *ctx; /* NULL once closed */
    unsigned char prefix[4];
    uint64_t max_body;            /* longer bodies: `aead` (or, for a sealer without it, -1) */
    PyObject *aead;               /* the session's cryptography AESGCM of this direction, or NULL */
    PyObject *invalid_tag;        /* Opener only: cryptography.exceptions.InvalidTag */
    PyObject *tensor_type;        /* Sealer only: torch.Tensor */
    PyObject *dtypes[N_CODES];    /* Sealer only: the torch.dtype of each wire code */
} Aead;

static PyObject *s_is_cpu, *s_is_contiguous, *s_dtype, *s_shape, *s_data_ptr; /* interned names */
static PyObject *s_encrypt_into, *s_decrypt_into;

static void aead_wipe(Aead *self);

static int aead_setup(Aead *self, PyObject *args, int encrypt, PyObject **dtypes_out) {
    Py_buffer key, prefix;
    PyObject *tensor_type = NULL, *dtypes = NULL, *aead = Py_None, *invalid_tag = Py_None;
    unsigned long long max_body = MAX_EXTENT;
    int ok = 0;
    if (encrypt) {
        if (!PyArg_ParseTuple(args, "y*y*OO!K|O", &key, &prefix, &tensor_type, &PyTuple_Type,
                              &dtypes, &max_body, &aead))
            return -1;
    } else if (!PyArg_ParseTuple(args, "y*y*|KOO", &key, &prefix, &max_body, &aead,
                                 &invalid_tag)) {
        return -1;
    }
    if (key.len != 32 || prefix.len != 4 || max_body > MAX_EXTENT) {
        PyErr_SetString(PyExc_ValueError,
                        "need a 32-byte key, a 4-byte nonce prefix and max_body <= 2**62");
        goto done;
    }
    if (!encrypt && aead != Py_None && !PyType_Check(invalid_tag)) {
        PyErr_SetString(PyExc_ValueError, "an opener with an aead needs its InvalidTag class");
        goto done;
    }
    if (encrypt && PyTuple_GET_SIZE(dtypes) != N_CODES) {
        PyErr_SetString(PyExc_ValueError, "dtypes must hold one entry per wire code 0..9");
        goto done;
    }
    self->ctx = EVP_CIPHER_CTX_new();
    if (self->ctx == NULL ||
        EVP_CipherInit_ex(self->ctx, EVP_aes_256_gcm(), NULL, key.buf, NULL, encrypt) != 1) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not set up AES-256-GCM");
        aead_wipe(self);
        goto done;
    }
    memcpy(self->prefix, prefix.buf, 4);
    self->max_body = max_body;
    if (aead != Py_None) {
        self->aead = Py_NewRef(aead);
        if (!encrypt) self->invalid_tag = Py_NewRef(invalid_tag);
    }
    if (encrypt) {
        Py_INCREF(tensor_type);
        self->tensor_type = tensor_type;
        *dtypes_out = dtypes;
    }
    ok = 1;
done:
    PyBuffer_Release(&key);
    PyBuffer_Release(&prefix);
    return ok ? 0 : -1;
}

static void aead_wipe(Aead *self) {
    if (self->ctx != NULL) {
        EVP_CIPHER_CTX_free(self->ctx); /* OpenSSL cleanses the key schedule as it frees it */
        self->ctx = NULL;
    }
    Py_CLEAR(self->aead); /* closed: no longer a way to this session's key */
}

/* Release and drop a memoryview over raw memory, so that no reference kept to it can reach that
   memory later (the slot may be remapped); keeps a pending Python error as it was. */
static void release_view(PyObject *view) {
    if (view == NULL) return;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *r = PyObject_CallMethod(view, "release", NULL);
    if (r == NULL) PyErr_Clear(); /* still exported elsewhere: nothing more to do here */
    Py_XDECREF(r);
    Py_DECREF(view);
    PyErr_Restore(type, value, tb);
}

/* aead.<method>(nonce, data, header, out) on raw buffers (data: `in_len` bytes at `in`, out:
   `out_len` bytes at `out`; they may be the same memory); 0, or -1 with the Python error set. */
static int aead_call(Aead *self, PyObject *method, const unsigned char nonce[12],
                     const unsigned char *aad, const unsigned char *in, uint64_t in_len,
                     PyObject *out_obj) {
    PyObject *n = PyBytes_FromStringAndSize((const char *)nonce, 12);
    PyObject *a = PyBytes_FromStringAndSize((const char *)aad, HEADER_SIZE);
    PyObject *d = PyMemoryView_FromMemory((char *)in, (Py_ssize_t)in_len, PyBUF_READ);
    PyObject *r = NULL;
    if (n != NULL && a != NULL && d != NULL)
        r = PyObject_CallMethodObjArgs(self->aead, method, n, d, a, out_obj, NULL);
    Py_XDECREF(n);
    Py_XDECREF(a);
    release_view(d);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

static void aead_dealloc(Aead *self) {
    aead_wipe(self);
    Py_XDECREF(self->tensor_type);
    Py_XDECREF(self->aead);
    Py_XDECREF(self->invalid_tag);
    for (int i = 0; i < N_CODES; i++) Py_XDECREF(self->dtypes[i]);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *aead_close(Aead *self, PyObject *unused) {
    aead_wipe(self);
    Py_RETURN_NONE;
}

static int check_open(Aead *self) {
    if (self->ctx == NULL) {
        PyErr_SetString(PyExc_ValueError, "the AES-GCM context is closed");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ Sealer */

static int sealer_init(Aead *self, PyObject *args, PyObject *kwds) {
    PyObject *dtypes = NULL;
    if (self->ctx != NULL) {
        PyErr_SetString(PyExc_TypeError, "already initialised");
        return -1;
    }
    if (aead_setup(self, args, 1, &dtypes) < 0) return -1;
    for (int i = 0; i < N_CODES; i++) {
        PyObject *d = PyTuple_GET_ITEM(dtypes, i);
        Py_INCREF(d);
        self->dtypes[i] = d;
    }
    return 0;
}

typedef struct {
    const void *data;
    uint64_t shape[MAX_NDIM];
    uint64_t nbytes, offset;
    unsigned char code, ndim;
} TensorInfo;

/* 1: `v` is an int in [0, max]; 0: it is not (no exception left set). */
static int as_u64(PyObject *v, uint64_t max, uint64_t *out) {
    if (!PyLong_Check(v)) return 0;
    unsigned long long x = PyLong_AsUnsignedLongLong(v);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (x > max) return 0;
    *out = x;
    return 1;
}

/* 1: the attribute (or method result) `name` of `t` is True; 0 otherwise; -1 on an error. */
static int attr_true(PyObject *t, PyObject *name, int call) {
    PyObject *v = call ? PyObject_CallMethodNoArgs(t, name) : PyObject_GetAttr(t, name);
    if (v == NULL) return -1;
    int r = v == Py_True;
    Py_DECREF(v);
    return r;
}

/* 1: `t` is an exact tensor of a wire dtype and non-empty (code, ndim, shape, nbytes filled in);
   0: it is not; -1: a Python error. */
static int tensor_meta(Aead *self, PyObject *t, TensorInfo *info) {
    if ((PyObject *)Py_TYPE(t) != self->tensor_type) return 0;
    PyObject *dtype = PyObject_GetAttr(t, s_dtype);
    if (dtype == NULL) return -1;
    int code = 0;
    for (int c = 1; c < N_CODES; c++)
        if (self->dtypes[c] == dtype) code = c;
    Py_DECREF(dtype);
    if (!code) return 0;
    PyObject *shape = PyObject_GetAttr(t, s_shape);
    if (shape == NULL) return -1;
    int r = 0;
    Py_ssize_t ndim = PyTuple_Check(shape) ? PyTuple_GET_SIZE(shape) : MAX_NDIM + 1;
    if (ndim > MAX_NDIM) goto done;
    uint64_t numel = 1;
    int overflow = 0;
    for (Py_ssize_t i = 0; i < ndim; i++) {
        if (!as_u64(PyTuple_GET_ITEM(shape, i), UINT64_MAX, &info->shape[i])) goto done;
        overflow |= __builtin_mul_overflow(numel, info->shape[i], &numel);
    }
    /* An empty tensor needs the extent check (and its refusal message): the Python path. */
    if (numel == 0 || overflow || __builtin_mul_overflow(numel, ITEMSIZE[code], &info->nbytes))
        goto done;
    info->code = (unsigned char)code;
    info->ndim = (unsigned char)ndim;
    r = 1;
done:
    Py_DECREF(shape);
    return r;
}

/* 1: `t` is a contiguous CPU tensor (info->data filled in); 0: it is not; -1: a Python error. */
static int tensor_data(PyObject *t, TensorInfo *info) {
    int r;
    if ((r = attr_true(t, s_is_cpu, 0)) != 1) return r;
    if ((r = attr_true(t, s_is_contiguous, 1)) != 1) return r;
    PyObject *ptr = PyObject_CallMethodNoArgs(t, s_data_ptr);
    if (ptr == NULL) return -1;
    info->data = PyLong_AsVoidPtr(ptr);
    Py_DECREF(ptr);
    if (info->data == NULL) return PyErr_Occurred() ? -1 : 0;
    return 1;
}

static int encrypt_in_place(EVP_CIPHER_CTX *ctx, const unsigned char nonce[12],
                            const unsigned char *aad, unsigned char *body, uint64_t body_len) {
    int outl;
    if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1) return -1;
    if (EVP_EncryptUpdate(ctx, NULL, &outl, aad, HEADER_SIZE) != 1) return -1;
    for (uint64_t pos = 0; pos < body_len; pos += CHUNK) {
        int n = (int)(body_len - pos < CHUNK ? body_len - pos : CHUNK);
        if (EVP_EncryptUpdate(ctx, body + pos, &outl, body + pos, n) != 1) return -1;
    }
    if (EVP_EncryptFinal_ex(ctx, body + body_len, &outl) != 1) return -1;
    return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_SIZE, body + body_len) == 1 ? 0 : -1;
}

static PyObject *sealer_seal_tensors(Aead *self, PyObject *const *args, PyObject *tensors,
                                     PyObject *blob, uint64_t kind, uint64_t tag, uint64_t seq,
                                     uint64_t rid);

static PyObject *sealer_seal(Aead *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "seal(out, kind, tag, seq, request_id, tensors, blob)");
        return NULL;
    }
    if (check_open(self) < 0) return NULL;
    uint64_t kind, tag, seq, rid;
    PyObject *tensors = args[5], *blob = args[6];
    if (!as_u64(args[1], 0xFFFF, &kind) || !as_u64(args[2], 0xFFFFFFFF, &tag) ||
        !as_u64(args[3], UINT64_MAX, &seq) || !as_u64(args[4], UINT64_MAX, &rid) ||
        !PyBytes_CheckExact(blob) || !(PyList_CheckExact(tensors) || PyTuple_CheckExact(tensors)))
        return PyLong_FromLong(-1);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(tensors);
    if (n > MAX_FAST_TENSORS) return PyLong_FromLong(-1);
    /* our own references: Python code run by a tensor's getters cannot free one under us */
    tensors = PyList_CheckExact(tensors) ? PyList_AsTuple(tensors) : Py_NewRef(tensors);
    if (tensors == NULL) return NULL;
    PyObject *r = sealer_seal_tensors(self, args, tensors, blob, kind, tag, seq, rid);
    Py_DECREF(tensors);
    return r;
}

static PyObject *sealer_seal_tensors(Aead *self, PyObject *const *args, PyObject *tensors,
                                     PyObject *blob, uint64_t kind, uint64_t tag, uint64_t seq,
                                     uint64_t rid) {
    Py_ssize_t n = PyTuple_GET_SIZE(tensors);
    if (n > MAX_FAST_TENSORS) return PyLong_FromLong(-1);
    TensorInfo infos[MAX_FAST_TENSORS];
    uint64_t desc_len = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int r = tensor_meta(self, PyTuple_GET_ITEM(tensors, i), &infos[i]);
        if (r < 0) return NULL;
        if (r == 0) return PyLong_FromLong(-1);
        desc_len += DESC_FIXED + 8u * infos[i].ndim;
    }
    uint64_t blob_len = (uint64_t)PyBytes_GET_SIZE(blob);
    uint64_t end = desc_len + blob_len;
    uint64_t limit = self->aead != NULL ? MAX_EXTENT : self->max_body;
    for (Py_ssize_t i = 0; i < n; i++) { /* end <= limit <= 2**62 before each step: no wrap */
        if (end > limit) return PyLong_FromLong(-1);
        infos[i].offset = align_up(end);
        if (__builtin_add_overflow(infos[i].offset, infos[i].nbytes, &end))
            return PyLong_FromLong(-1);
    }
    uint64_t body_len = end;
    if (body_len > limit) return PyLong_FromLong(-1);
    for (Py_ssize_t i = 0; i < n; i++) { /* only now the (dearer) device and layout checks */
        int r = tensor_data(PyTuple_GET_ITEM(tensors, i), &infos[i]);
        if (r < 0) return NULL;
        if (r == 0) return PyLong_FromLong(-1);
    }
    Py_buffer out;
    if (PyObject_GetBuffer(args[0], &out, PyBUF_WRITABLE) < 0) return NULL;
    if (out.len < OVERHEAD || body_len > (uint64_t)out.len - OVERHEAD) {
        PyBuffer_Release(&out);
        return PyLong_FromLong(-1); /* does not fit the slot: the Python path grows it */
    }
    /* Everything is known to fit: write the header, then the body, then encrypt it in place. */
    unsigned char header[HEADER_SIZE];
    memcpy(header, MAGIC, 4);
    header[4] = VERSION, header[5] = 0;
    header[6] = (unsigned char)kind, header[7] = (unsigned char)(kind >> 8);
    st32(header + 8, (uint32_t)tag);
    st32(header + 12, (uint32_t)n);
    st64(header + 16, seq);
    st64(header + 24, blob_len);
    st64(header + 32, body_len);
    st64(header + 40, rid);
    unsigned char *dst = out.buf, *body = dst + HEADER_SIZE;
    memcpy(dst, header, HEADER_SIZE);
    uint64_t pos = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char *d = body + pos;
        memset(d, 0, DESC_FIXED);
        d[0] = infos[i].code;
        d[1] = infos[i].ndim;
        st64(d + 8, infos[i].nbytes);
        for (int k = 0; k < infos[i].ndim; k++) st64(d + DESC_FIXED + 8 * k, infos[i].shape[k]);
        pos += DESC_FIXED + 8u * infos[i].ndim;
    }
    memcpy(body + pos, PyBytes_AS_STRING(blob), blob_len);
    pos += blob_len;
    for (Py_ssize_t i = 0; i < n; i++) {
        memset(body + pos, 0, infos[i].offset - pos);
        memcpy(body + infos[i].offset, infos[i].data, infos[i].nbytes);
        pos = infos[i].offset + infos[i].nbytes;
    }
    unsigned char nonce[12];
    make_nonce(nonce, self->prefix, seq);
    int failed, ext = body_len > self->max_body;
    if (ext) { /* the session's AESGCM, in place in the slot, as the pure path calls it */
        PyObject *dst_view =
            PyMemoryView_FromMemory((char *)body, (Py_ssize_t)(body_len + TAG_SIZE), PyBUF_WRITE);
        failed = dst_view == NULL ||
                 aead_call(self, s_encrypt_into, nonce, header, body, body_len, dst_view) < 0;
        release_view(dst_view);
    } else {
        failed = encrypt_in_place(self->ctx, nonce, header, body, body_len);
    }
    if (failed) OPENSSL_cleanse(body, body_len); /* no plaintext stays in shared memory */
    PyBuffer_Release(&out);
    if (failed) {
        if (!ext) PyErr_SetString(PyExc_RuntimeError, "AES-GCM encryption failed (OpenSSL)");
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(body_len + OVERHEAD);
}

/* ------------------------------------------------------------------ Opener */

static int opener_init(Aead *self, PyObject *args, PyObject *kwds) {
    if (self->ctx != NULL) {
        PyErr_SetString(PyExc_TypeError, "already initialised");
        return -1;
    }
    return aead_setup(self, args, 0, NULL);
}

static int decrypt(EVP_CIPHER_CTX *ctx, const unsigned char nonce[12], const unsigned char *aad,
                   const unsigned char *src, unsigned char *dst, uint64_t len,
                   unsigned char tag[TAG_SIZE]) {
    int outl;
    if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1) return -1;
    if (EVP_DecryptUpdate(ctx, NULL, &outl, aad, HEADER_SIZE) != 1) return -1;
    for (uint64_t pos = 0; pos < len; pos += CHUNK) {
        int n = (int)(len - pos < CHUNK ? len - pos : CHUNK);
        if (EVP_DecryptUpdate(ctx, dst + pos, &outl, src + pos, n) != 1) return -1;
    }
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_SIZE, tag) != 1) return -1;
    return EVP_DecryptFinal_ex(ctx, dst + len, &outl) == 1 ? 0 : -1;
}

/* Validate the descriptors of a private, decrypted body exactly as frame.decode_body_parts does
   (the body is private memory: reading it twice is safe). Returns a tuple of (code, shape,
   offset, non_empty) per tensor; NULL with *bad set and no error when the body is malformed;
   NULL with a Python error on a failed allocation. */
static PyObject *parse_descriptors(const unsigned char *body, uint64_t n, uint64_t blob_len,
                                   uint64_t body_len, uint64_t *blob_pos, int *bad) {
    uint64_t pos = 0;
    for (uint64_t i = 0; i < n; i++) { /* first pass: each descriptor on its own */
        if (pos + DESC_FIXED > body_len) goto malformed;
        const unsigned char *d = body + pos;
        unsigned code = d[0], ndim = d[1];
        unsigned itemsize = code < N_CODES ? ITEMSIZE[code] : 0;
        if (!itemsize || ndim > MAX_NDIM || ld16(d + 2) || ld32(d + 4)) goto malformed;
        uint64_t end = pos + DESC_FIXED + 8u * ndim;
        if (end > body_len) goto malformed;
        uint64_t numel = 1, size, extent = itemsize;
        int zero = 0, overflow = 0;
        for (unsigned k = 0; k < ndim; k++) {
            uint64_t dim = ld64(d + DESC_FIXED + 8 * k);
            zero |= dim == 0;
            overflow |= __builtin_mul_overflow(numel, dim, &numel);
        }
        if (zero) numel = 0, overflow = 0;
        /* an exact product above 2**64 - 1 cannot equal nbytes: the Python check refuses it too */
        if (overflow || __builtin_mul_overflow(numel, itemsize, &size) || size != ld64(d + 8))
            goto malformed;
        if (!numel)
            for (unsigned k = 0; k < ndim; k++) {
                uint64_t dim = ld64(d + DESC_FIXED + 8 * k);
                if (dim > 1 && (__builtin_mul_overflow(extent, dim, &extent) || extent > MAX_EXTENT))
                    goto malformed;
            }
        pos = end;
    }
    *blob_pos = pos;
    uint64_t total = pos + blob_len; /* pos <= body_len and blob_len <= body_len: no overflow */
    for (uint64_t i = 0, dpos = 0; i < n; i++) { /* second pass: the layout */
        const unsigned char *d = body + dpos;
        if (__builtin_add_overflow(align_up(total), ld64(d + 8), &total) || total > body_len)
            goto malformed;
        dpos += DESC_FIXED + 8u * d[1];
    }
    if (total != body_len) goto malformed;
    PyObject *specs = PyTuple_New((Py_ssize_t)n);
    if (specs == NULL) return NULL;
    total = pos + blob_len;
    for (uint64_t i = 0, dpos = 0; i < n; i++) { /* everything is valid: the specs */
        const unsigned char *d = body + dpos;
        unsigned ndim = d[1];
        uint64_t off = align_up(total);
        total = off + ld64(d + 8);
        PyObject *shape = PyTuple_New(ndim);
        if (shape == NULL) goto error;
        int empty = 0;
        for (unsigned k = 0; k < ndim; k++) {
            uint64_t dim = ld64(d + DESC_FIXED + 8 * k);
            empty |= dim == 0;
            PyObject *v = PyLong_FromUnsignedLongLong(dim);
            if (v == NULL) {
                Py_DECREF(shape);
                goto error;
            }
            PyTuple_SET_ITEM(shape, k, v);
        }
        PyObject *spec = Py_BuildValue("(INKi)", (unsigned)d[0], shape, (unsigned long long)off, !empty);
        if (spec == NULL) goto error;
        PyTuple_SET_ITEM(specs, (Py_ssize_t)i, spec);
        dpos += DESC_FIXED + 8u * ndim;
    }
    return specs;
error:
    Py_DECREF(specs);
    return NULL;
malformed:
    *bad = 1;
    return NULL;
}

static PyObject *opener_open(Aead *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "open(src, frame_len, max_body, expect_seq, snapshot)");
        return NULL;
    }
    if (check_open(self) < 0) return NULL;
    uint64_t frame_len, max_body, expect;
    if (!as_u64(args[1], UINT64_MAX, &frame_len) || !as_u64(args[2], UINT64_MAX >> 2, &max_body) ||
        !as_u64(args[3], UINT64_MAX, &expect)) {
        PyErr_SetString(PyExc_ValueError, "frame_len, max_body and expect_seq must be u64");
        return NULL;
    }
    int snapshot = PyObject_IsTrue(args[4]);
    if (snapshot < 0) return NULL;
    Py_buffer src;
    if (PyObject_GetBuffer(args[0], &src, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *result = NULL, *body = NULL, *blob = NULL, *specs = NULL;
    int status = OPEN_OK;
    unsigned char header[HEADER_SIZE], tag_bytes[TAG_SIZE];
    if (src.len < HEADER_SIZE || frame_len > (uint64_t)src.len) {
        PyErr_SetString(PyExc_ValueError, "the frame does not lie inside the buffer");
        goto done;
    }
    memcpy(header, src.buf, HEADER_SIZE); /* the one read of the header: all checks use the copy */
    uint32_t n = ld32(header + 12);
    uint64_t seq = ld64(header + 16), blob_len = ld64(header + 24), body_len = ld64(header + 32);
    if (memcmp(header, MAGIC, 4) != 0 || ld16(header + 4) != VERSION || body_len > max_body ||
        n > MAX_TENSORS || (uint64_t)n * DESC_FIXED > body_len ||
        blob_len > body_len - (uint64_t)n * DESC_FIXED || body_len + OVERHEAD != frame_len) {
        status = OPEN_BAD_HEADER;
        body = PyBytes_FromStringAndSize((const char *)header, HEADER_SIZE);
        if (body == NULL) goto done;
        goto build;
    }
    if (seq != expect) {
        status = OPEN_BAD_SEQ;
        goto build;
    }
    body = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)body_len); /* bounded by max_body */
    if (body == NULL) goto done;
    unsigned char *plain = (unsigned char *)PyByteArray_AS_STRING(body);
    const unsigned char *cipher = (const unsigned char *)src.buf + HEADER_SIZE;
    unsigned char nonce[12];
    make_nonce(nonce, self->prefix, seq);
    if (body_len > self->max_body && self->aead != NULL) {
        /* the session's AESGCM, as the pure path calls it: ciphertext + tag in, body out */
        PyObject *snap = NULL;
        if (snapshot) { /* a private copy of ciphertext and tag first */
            snap = PyBytes_FromStringAndSize((const char *)cipher, (Py_ssize_t)(body_len + TAG_SIZE));
            if (snap == NULL) goto done;
            cipher = (const unsigned char *)PyBytes_AS_STRING(snap);
        }
        int failed = aead_call(self, s_decrypt_into, nonce, header, cipher, body_len + TAG_SIZE, body);
        Py_XDECREF(snap);
        if (failed) {
            OPENSSL_cleanse(plain, body_len);
            Py_CLEAR(body);
            if (!PyErr_ExceptionMatches(self->invalid_tag)) goto done;
            PyErr_Clear();
            status = OPEN_BAD_TAG;
            goto build;
        }
    } else {
        memcpy(tag_bytes, cipher + body_len, TAG_SIZE);
        if (snapshot) { /* copy the ciphertext out of shared memory first, then decrypt in place */
            memcpy(plain, cipher, body_len);
            cipher = plain;
        }
        if (decrypt(self->ctx, nonce, header, cipher, plain, body_len, tag_bytes) < 0) {
            OPENSSL_cleanse(plain, body_len);
            Py_CLEAR(body);
            status = OPEN_BAD_TAG;
            goto build;
        }
    }
    int bad = 0;
    uint64_t blob_pos = 0;
    specs = parse_descriptors(plain, n, blob_len, body_len, &blob_pos, &bad);
    if (specs == NULL) {
        if (!bad) goto done;
        status = OPEN_BAD_BODY;
    } else {
        blob = PyBytes_FromStringAndSize((const char *)plain + blob_pos, (Py_ssize_t)blob_len);
        if (blob == NULL) goto done;
    }
build:
    result = Py_BuildValue("(iKKKKKKKOOO)", status, (unsigned long long)ld16(header + 6),
                           (unsigned long long)ld32(header + 8), (unsigned long long)seq,
                           (unsigned long long)ld64(header + 40), (unsigned long long)n,
                           (unsigned long long)blob_len, (unsigned long long)body_len,
                           body ? body : Py_None, blob ? blob : Py_None, specs ? specs : Py_None);
done:
    Py_XDECREF(body);
    Py_XDECREF(blob);
    Py_XDECREF(specs);
    PyBuffer_Release(&src);
    return result;
}

/* ------------------------------------------------------------------ types and module */

static PyMethodDef sealer_methods[] = {
    {"seal", (PyCFunction)(void (*)(void))sealer_seal, METH_FASTCALL,
     "seal(out, kind, tag, seq, request_id, tensors, blob) -> frame_len, or -1 (not handled)"},
    {"close", (PyCFunction)aead_close, METH_NOARGS, "Free the context (wipes the key schedule)."},
    {NULL, NULL, 0, NULL}};

static PyMethodDef opener_methods[] = {
    {"open", (PyCFunction)(void (*)(void))opener_open, METH_FASTCALL,
     "open(src, frame_len, max_body, expect_seq, snapshot) -> (status, kind, tag, seq, "
     "request_id, n_tensors, blob_len, body_len, body, blob, specs)"},
    {"close", (PyCFunction)aead_close, METH_NOARGS, "Free the context (wipes the key schedule)."},
    {NULL, NULL, 0, NULL}};

static PyTypeObject SealerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "taoism.boundary._fastpath.Sealer",
    .tp_basicsize = sizeof(Aead),
    .tp_dealloc = (destructor)aead_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Sealer(key, prefix, tensor_type, dtypes, max_body, aead=None): AES-256-GCM, one "
              "direction, sending (bodies over max_body: aead.encrypt_into, or -1 without it).",
    .tp_methods = sealer_methods,
    .tp_init = (initproc)sealer_init,
    .tp_new = PyType_GenericNew,
};

static PyTypeObject OpenerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "taoism.boundary._fastpath.Opener",
    .tp_basicsize = sizeof(Aead),
    .tp_dealloc = (destructor)aead_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Opener(key, prefix, max_body=2**62, aead=None, invalid_tag=None): AES-256-GCM, one "
              "direction, receiving (bodies over max_body: aead.decrypt_into where given).",
    .tp_methods = opener_methods,
    .tp_init = (initproc)opener_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT, "_fastpath", "Compiled hot path of the trust boundary.", -1, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&SealerType) < 0 || PyType_Ready(&OpenerType) < 0) return NULL;
    if (!(s_is_cpu = PyUnicode_InternFromString("is_cpu")) ||
        !(s_is_contiguous = PyUnicode_InternFromString("is_contiguous")) ||
        !(s_dtype = PyUnicode_InternFromString("dtype")) ||
        !(s_shape = PyUnicode_InternFromString("shape")) ||
        !(s_data_ptr = PyUnicode_InternFromString("data_ptr")) ||
        !(s_encrypt_into = PyUnicode_InternFromString("encrypt_into")) ||
        !(s_decrypt_into = PyUnicode_InternFromString("decrypt_into")))
        return NULL;
    PyObject *m = PyModule_Create(&fastpath_module);
    if (m == NULL) return NULL;
    Py_INCREF(&SealerType);
    Py_INCREF(&OpenerType);
    if (PyModule_AddObject(m, "Sealer", (PyObject *)&SealerType) < 0 ||
        PyModule_AddObject(m, "Opener", (PyObject *)&OpenerType) < 0 ||
        PyModule_AddIntConstant(m, "OPEN_OK", OPEN_OK) < 0 ||
        PyModule_AddIntConstant(m, "OPEN_BAD_HEADER", OPEN_BAD_HEADER) < 0 ||
        PyModule_AddIntConstant(m, "OPEN_BAD_SEQ", OPEN_BAD_SEQ) < 0 ||
        PyModule_AddIntConstant(m, "OPEN_BAD_TAG", OPEN_BAD_TAG) < 0 ||
        PyModule_AddIntConstant(m, "OPEN_BAD_BODY", OPEN_BAD_BODY) < 0 ||
        PyModule_AddStringConstant(m, "OPENSSL_VERSION", OpenSSL_version(OPENSSL_VERSION)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
