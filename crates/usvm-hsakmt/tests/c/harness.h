/*
 * Shared helpers of usvm-hsakmt's C tests: checks that print file:line with the expected
 * and the actual value, and the pieces of kfdtest's queue protocol (SDMA rings, packets,
 * SVM ranges) that several tests use.
 *
 * CHECK_* record a failure and go on; REQUIRE_* record it and end the program at once
 * (for steps that later ones depend on). A program ends with `return finish();`, which
 * exits 1 when any check failed.
 */
#ifndef USVM_HSAKMT_C_TEST_HARNESS_H
#define USVM_HSAKMT_C_TEST_HARNESS_H

#ifndef _GNU_SOURCE
#error "define _GNU_SOURCE before including harness.h"
#endif

#include <hsakmt/hsakmt.h>

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int g_failures;
static const char *g_phase = "";

/* Names the current part of a test in failure messages. */
#define PHASE(name)                                                                        \
    do {                                                                                   \
        g_phase = (name);                                                                  \
        fprintf(stderr, "-- %s\n", g_phase);                                               \
    } while (0)

static inline const char *status_name(HSAKMT_STATUS s) {
    switch (s) {
    case HSAKMT_STATUS_SUCCESS: return "SUCCESS";
    case HSAKMT_STATUS_ERROR: return "ERROR";
    case HSAKMT_STATUS_DRIVER_MISMATCH: return "DRIVER_MISMATCH";
    case HSAKMT_STATUS_INVALID_PARAMETER: return "INVALID_PARAMETER";
    case HSAKMT_STATUS_INVALID_HANDLE: return "INVALID_HANDLE";
    case HSAKMT_STATUS_INVALID_NODE_UNIT: return "INVALID_NODE_UNIT";
    case HSAKMT_STATUS_NO_MEMORY: return "NO_MEMORY";
    case HSAKMT_STATUS_BUFFER_TOO_SMALL: return "BUFFER_TOO_SMALL";
    case HSAKMT_STATUS_NOT_IMPLEMENTED: return "NOT_IMPLEMENTED";
    case HSAKMT_STATUS_NOT_SUPPORTED: return "NOT_SUPPORTED";
    case HSAKMT_STATUS_UNAVAILABLE: return "UNAVAILABLE";
    case HSAKMT_STATUS_OUT_OF_RESOURCES: return "OUT_OF_RESOURCES";
    case HSAKMT_STATUS_KERNEL_IO_CHANNEL_NOT_OPENED: return "KERNEL_IO_CHANNEL_NOT_OPENED";
    case HSAKMT_STATUS_KERNEL_COMMUNICATION_ERROR: return "KERNEL_COMMUNICATION_ERROR";
    case HSAKMT_STATUS_KERNEL_ALREADY_OPENED: return "KERNEL_ALREADY_OPENED";
    case HSAKMT_STATUS_HSAMMU_UNAVAILABLE: return "HSAMMU_UNAVAILABLE";
    case HSAKMT_STATUS_WAIT_FAILURE: return "WAIT_FAILURE";
    case HSAKMT_STATUS_WAIT_TIMEOUT: return "WAIT_TIMEOUT";
    case HSAKMT_STATUS_MEMORY_ALREADY_REGISTERED: return "MEMORY_ALREADY_REGISTERED";
    case HSAKMT_STATUS_MEMORY_NOT_REGISTERED: return "MEMORY_NOT_REGISTERED";
    case HSAKMT_STATUS_MEMORY_ALIGNMENT: return "MEMORY_ALIGNMENT";
    }
    return "(unknown status)";
}

static inline void fail_at(const char *file, int line) {
    g_failures++;
    fprintf(stderr, "%s:%d: FAILED%s%s: ", file, line, *g_phase ? " in " : "", g_phase);
}

/* Exit status of a program (or of a forked child): 1 when any check failed. */
static inline int finish(void) {
    if (g_failures) {
        fprintf(stderr, "%d check(s) failed\n", g_failures);
        return 1;
    }
    fprintf(stderr, "all checks passed\n");
    return 0;
}

#define CHECK_STATUS_(fatal, call, expected)                                               \
    ({                                                                                     \
        HSAKMT_STATUS got_ = (call);                                                       \
        HSAKMT_STATUS want_ = (expected);                                                  \
        int ok_ = got_ == want_;                                                           \
        if (!ok_) {                                                                        \
            int errno_ = errno;                                                            \
            fail_at(__FILE__, __LINE__);                                                   \
            fprintf(stderr, "%s\n    returned %d (%s), expected %d (%s); errno %d (%s)\n",   \
                    #call, (int)got_, status_name(got_), (int)want_, status_name(want_),   \
                    errno_, strerror(errno_));                                             \
            if (fatal) exit(1);                                                            \
        }                                                                                  \
        ok_;                                                                               \
    })

/* The call returns exactly `expected`. Evaluates to 1 when it did. */
#define CHECK_STATUS(call, expected) CHECK_STATUS_(0, call, expected)
#define REQUIRE_STATUS(call, expected) CHECK_STATUS_(1, call, expected)
#define CHECK_OK(call) CHECK_STATUS_(0, call, HSAKMT_STATUS_SUCCESS)
#define REQUIRE_OK(call) CHECK_STATUS_(1, call, HSAKMT_STATUS_SUCCESS)

/* The call returns HSAKMT_STATUS_ERROR and leaves errno == err. */
#define CHECK_ERRNO(call, err)                                                             \
    ({                                                                                     \
        errno = 0;                                                                         \
        HSAKMT_STATUS got_ = (call);                                                       \
        int errno_ = errno;                                                                \
        int ok_ = got_ == HSAKMT_STATUS_ERROR && errno_ == (err);                          \
        if (!ok_) {                                                                        \
            fail_at(__FILE__, __LINE__);                                                   \
            fprintf(stderr,                                                                \
                    "%s\n    returned %d (%s) with errno %d (%s), expected ERROR with "    \
                    "errno %d (%s)\n",                                                     \
                    #call, (int)got_, status_name(got_), errno_, strerror(errno_), (err),  \
                    strerror(err));                                                        \
        }                                                                                  \
        ok_;                                                                               \
    })

#define CHECK_(fatal, cond, ...)                                                           \
    ({                                                                                     \
        int ok_ = !!(cond);                                                                \
        if (!ok_) {                                                                        \
            fail_at(__FILE__, __LINE__);                                                   \
            fprintf(stderr, "%s: ", #cond);                                                \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fputc('\n', stderr);                                                           \
            if (fatal) exit(1);                                                            \
        }                                                                                  \
        ok_;                                                                               \
    })

/* A condition, with a printf-style explanation when it does not hold. */
#define CHECK(cond, ...) CHECK_(0, cond, __VA_ARGS__)
#define REQUIRE(cond, ...) CHECK_(1, cond, __VA_ARGS__)

/* Two unsigned integers are equal (printed in decimal and hex). */
#define CHECK_EQ(actual, expected)                                                         \
    ({                                                                                     \
        uint64_t a_ = (uint64_t)(actual), e_ = (uint64_t)(expected);                      \
        int ok_ = a_ == e_;                                                                \
        if (!ok_) {                                                                        \
            fail_at(__FILE__, __LINE__);                                                   \
            fprintf(stderr, "%s == %s\n    got %" PRIu64 " (0x%" PRIx64 "), expected %"    \
                            PRIu64 " (0x%" PRIx64 ")\n",                                   \
                    #actual, #expected, a_, a_, e_, e_);                                   \
        }                                                                                  \
        ok_;                                                                               \
    })

/* ---- time ---------------------------------------------------------------------------- */

static inline uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static inline void sleep_ms(unsigned ms) {
    struct timespec t = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {
    }
}

/* ---- topology ------------------------------------------------------------------------ */

enum { MAX_NODES = 16 };

/* What SetUp in kfdtest learns: the nodes, which of them are GPUs. */
typedef struct {
    HSAuint32 num_nodes;
    HsaNodeProperties props[MAX_NODES];
    HSAuint32 gpus[MAX_NODES]; /* node ids of the GPU nodes */
    HSAuint32 num_gpus;
} topology_t;

static inline void get_topology(topology_t *t) {
    HsaSystemProperties sys;
    memset(t, 0, sizeof *t);
    REQUIRE_OK(hsaKmtAcquireSystemProperties(&sys));
    REQUIRE(sys.NumNodes > 0 && sys.NumNodes <= MAX_NODES, "NumNodes %u", sys.NumNodes);
    t->num_nodes = sys.NumNodes;
    for (HSAuint32 n = 0; n < sys.NumNodes; n++) {
        REQUIRE_OK(hsaKmtGetNodeProperties(n, &t->props[n]));
        if (t->props[n].NumFComputeCores > 0) t->gpus[t->num_gpus++] = n;
    }
    REQUIRE(t->num_gpus > 0, "no GPU node");
}

/* OpenKFD (must be the first open) and the topology. */
static inline void open_kfd(topology_t *t) {
    REQUIRE_OK(hsaKmtOpenKFD());
    get_topology(t);
}

/* ---- memory -------------------------------------------------------------------------- */

enum { PAGE = 4096 };

static inline void *map_anon(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED, "mmap of %zu bytes: %s", bytes, strerror(errno));
    return p;
}

/* The word at index i of a test pattern (seeded). */
static inline uint32_t pattern_word(size_t i, uint32_t seed) {
    uint32_t x = (uint32_t)i * 2654435761u ^ seed;
    x ^= x >> 15;
    x *= 0x2c1b3c6dU;
    x ^= x >> 12;
    return x;
}

static inline void fill_pattern(void *p, size_t bytes, uint32_t seed) {
    uint32_t *w = p;
    for (size_t i = 0; i < bytes / 4; i++) w[i] = pattern_word(i, seed);
}

/* Index of the first word that differs from the pattern, or -1. */
static inline long first_bad_word(const void *p, size_t bytes, uint32_t seed) {
    const volatile uint32_t *w = p;
    for (size_t i = 0; i < bytes / 4; i++)
        if (w[i] != pattern_word(i, seed)) return (long)i;
    return -1;
}

#define CHECK_PATTERN(p, bytes, seed)                                                      \
    ({                                                                                     \
        long bad_ = first_bad_word((p), (bytes), (seed));                                  \
        if (bad_ >= 0) {                                                                   \
            fail_at(__FILE__, __LINE__);                                                   \
            fprintf(stderr, "pattern %#x in %s (%zu bytes): word %ld is %#x, expected %#x\n", \
                    (unsigned)(seed), #p, (size_t)(bytes), bad_,                           \
                    ((const volatile uint32_t *)(p))[bad_], pattern_word((size_t)bad_, (seed))); \
        }                                                                                  \
        bad_ < 0;                                                                          \
    })

/* kfdtest's RegisterSVMRange: one SetAttr with PREFETCH_LOC, PREFERRED_LOC = loc,
 * SET_FLAGS = flags, ACCESS = gpu. */
static inline HSAKMT_STATUS register_svm(void *p, size_t bytes, HSAuint32 gpu, HSAuint32 loc,
                                         HSAuint32 flags) {
    HSA_SVM_ATTRIBUTE a[4] = {
        {HSA_SVM_ATTR_PREFETCH_LOC, loc},
        {HSA_SVM_ATTR_PREFERRED_LOC, loc},
        {HSA_SVM_ATTR_SET_FLAGS, flags},
        {HSA_SVM_ATTR_ACCESS, gpu},
    };
    return hsaKmtSVMSetAttr(p, bytes, 4, a);
}

static inline HSAKMT_STATUS prefetch_svm(void *p, size_t bytes, HSAuint32 node) {
    HSA_SVM_ATTRIBUTE a = {HSA_SVM_ATTR_PREFETCH_LOC, node};
    return hsaKmtSVMSetAttr(p, bytes, 1, &a);
}

/* A new anonymous mapping registered as an SVM range of `gpu`, at `loc`. */
static inline void *new_svm(size_t bytes, HSAuint32 gpu, HSAuint32 loc) {
    void *p = map_anon(bytes);
    REQUIRE_OK(register_svm(p, bytes, gpu, loc, HSA_SVM_FLAG_HOST_ACCESS | HSA_SVM_FLAG_COHERENT));
    return p;
}

/* ---- SDMA queues, as kfdtest drives them ---------------------------------------------- */

enum { RING_BYTES = 4096, RING_DWORDS = RING_BYTES / 4, SDMA_WAIT_MS = 10000 };

typedef struct {
    HSAuint32 node;
    uint32_t *ring;
    HsaQueueResource res;
    uint64_t wptr_dw; /* kfdtest's m_pendingWptr64: dwords placed, never wrapped */
} sdma_queue;

/* kfdtest's ring memory flags: HostAccess | NoNUMABind | Uncached | ExecuteAccess. */
static inline HsaMemFlags ring_flags(void) {
    HsaMemFlags f;
    f.Value = 0;
    f.ui32.HostAccess = 1;
    f.ui32.NoNUMABind = 1;
    f.ui32.Uncached = 1;
    f.ui32.ExecuteAccess = 1;
    return f;
}

/* Allocates and maps the ring, creates the queue; SUCCESS or the failing call's status. */
static inline HSAKMT_STATUS sdma_create_type(sdma_queue *q, HSAuint32 node, HSA_QUEUE_TYPE type) {
    memset(q, 0, sizeof *q);
    q->node = node;
    void *ring = NULL;
    HSAKMT_STATUS s = hsaKmtAllocMemory(node, RING_BYTES, ring_flags(), &ring);
    if (s != HSAKMT_STATUS_SUCCESS) return s;
    HsaMemMapFlags mf;
    mf.Value = 0;
    s = hsaKmtMapMemoryToGPUNodes(ring, RING_BYTES, NULL, mf, 1, &node);
    if (s != HSAKMT_STATUS_SUCCESS) return s;
    memset(ring, 0, RING_BYTES);
    q->ring = ring;
    s = hsaKmtCreateQueue(node, type, 100, HSA_QUEUE_PRIORITY_NORMAL, ring, RING_BYTES, NULL,
                          &q->res);
    return s;
}

#define SDMA_CREATE(q, node) REQUIRE_OK(sdma_create_type((q), (node), HSA_QUEUE_SDMA))

/* The engine's read pointer as kfdtest sees it: the low 32 bits. */
static inline uint32_t sdma_rptr32(const sdma_queue *q) {
    return __atomic_load_n((volatile uint32_t *)q->res.Queue_read_ptr, __ATOMIC_ACQUIRE);
}

/* kfdtest's PlacePacket + SubmitPacket: waits (10 s at most) for room as kfdtest counts it,
 * pads the ring's end with NOPs when the block would reach it, copies the block, stores the
 * byte write pointer to Queue_write_ptr_aql and then to Queue_DoorBell_aql. 0 on timeout. */
static inline int sdma_submit(sdma_queue *q, const uint32_t *dw, uint32_t n) {
    const uint32_t Q = RING_DWORDS;
    if (n >= Q) return 0;
    uint32_t wr = (uint32_t)(q->wptr_dw % Q);
    uint32_t required = n + (wr + n > Q ? Q - wr : 0);
    for (int waited = 0;; waited++) {
        uint32_t rd = (sdma_rptr32(q) % RING_BYTES) / 4;
        uint32_t avail = (rd - 1 - wr + Q) % Q;
        if (avail >= required) break;
        if (waited > SDMA_WAIT_MS * 10) return 0;
        struct timespec t = {0, 100000};
        nanosleep(&t, NULL);
    }
    if (wr + n >= Q) {
        for (uint32_t i = wr; i < Q; i++) __atomic_store_n(&q->ring[i], 0u, __ATOMIC_RELAXED);
        q->wptr_dw += Q - wr;
        wr = 0;
    }
    for (uint32_t i = 0; i < n; i++) __atomic_store_n(&q->ring[wr + i], dw[i], __ATOMIC_RELAXED);
    q->wptr_dw += n;
    uint64_t bytes = q->wptr_dw * 4;
    __sync_synchronize();
    *q->res.Queue_write_ptr_aql = bytes;
    __sync_synchronize();
    *q->res.Queue_DoorBell_aql = bytes;
    return 1;
}

/* kfdtest's Wait4PacketConsumption: polls the low 32 bits of the read pointer every
 * millisecond until they equal the low 32 bits of the write pointer. 1 when they did. */
static inline int sdma_wait_ms(const sdma_queue *q, unsigned timeout_ms) {
    uint32_t want = (uint32_t)(q->wptr_dw * 4);
    uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000ull;
    while (sdma_rptr32(q) != want) {
        if (now_ns() > deadline) return 0;
        sleep_ms(1);
    }
    return 1;
}

#define SDMA_SUBMIT(q, dw, n) CHECK(sdma_submit((q), (dw), (n)), "no room in the ring after 10 s")
#define SDMA_WAIT(q)                                                                       \
    CHECK(sdma_wait_ms((q), SDMA_WAIT_MS), "the SDMA queue did not consume its packets in 10 s " \
          "(rptr %#x, wptr %#" PRIx64 ")", sdma_rptr32(q), (q)->wptr_dw * 4)

static inline HSAKMT_STATUS sdma_destroy(sdma_queue *q) {
    HSAKMT_STATUS s = hsaKmtDestroyQueue(q->res.QueueId);
    if (q->ring) {
        hsaKmtUnmapMemoryToGPU(q->ring);
        hsaKmtFreeMemory(q->ring, RING_BYTES);
        q->ring = NULL;
    }
    return s;
}

/* ---- SDMA packets (gfx9 / SDMA 4 encodings; byte counts are count - 1) ---------------- */

static inline uint32_t lo32(const volatile void *p) { return (uint32_t)(uintptr_t)p; }
static inline uint32_t hi32(const volatile void *p) { return (uint32_t)((uint64_t)(uintptr_t)p >> 32); }

enum { SDMA_MAX_COPY = 1 << 21 };

/* COPY_LINEAR (op 1): 7 dwords. */
static inline uint32_t pkt_copy(uint32_t *dw, void *dst, const void *src, uint32_t bytes) {
    dw[0] = 1;
    dw[1] = bytes - 1;
    dw[2] = 0;
    dw[3] = lo32(src);
    dw[4] = hi32(src);
    dw[5] = lo32(dst);
    dw[6] = hi32(dst);
    return 7;
}

/* kfdtest's split copy: packets of at most 2 MiB, back to back. */
static inline uint32_t pkt_copy_split(uint32_t *dw, void *dst, const void *src, size_t bytes) {
    uint32_t n = 0;
    for (size_t off = 0; off < bytes; off += SDMA_MAX_COPY) {
        size_t len = bytes - off < SDMA_MAX_COPY ? bytes - off : SDMA_MAX_COPY;
        n += pkt_copy(dw + n, (char *)dst + off, (const char *)src + off, (uint32_t)len);
    }
    return n;
}

/* CONST_FILL (op 11): 5 dwords; dword fill (fill size 2) or byte fill (0). */
static inline uint32_t pkt_fill(uint32_t *dw, void *dst, uint32_t data, uint32_t bytes, int dword) {
    dw[0] = 11u | (dword ? 2u << 30 : 0u);
    dw[1] = lo32(dst);
    dw[2] = hi32(dst);
    dw[3] = data;
    dw[4] = bytes - 1;
    return 5;
}

/* WRITE_UNTILED (op 2): 4 + n dwords of inline data. */
static inline uint32_t pkt_write(uint32_t *dw, void *dst, const uint32_t *data, uint32_t n) {
    dw[0] = 2;
    dw[1] = lo32(dst);
    dw[2] = hi32(dst);
    dw[3] = n - 1;
    memcpy(dw + 4, data, n * 4);
    return 4 + n;
}

/* FENCE (op 5): writes a 32-bit value. 4 dwords. */
static inline uint32_t pkt_fence(uint32_t *dw, volatile void *addr, uint32_t data) {
    dw[0] = 5;
    dw[1] = lo32(addr);
    dw[2] = hi32(addr);
    dw[3] = data;
    return 4;
}

/* TRAP (op 6): interrupt with context id = an event id. 2 dwords. */
static inline uint32_t pkt_trap(uint32_t *dw, uint32_t event_id) {
    dw[0] = 6;
    dw[1] = event_id & 0x0fffffff;
    return 2;
}

/* POLL_REGMEM (op 8) on memory (bit 31), function "equal" (3, bits 28-30): waits until
 * (*addr & mask) == ref, retrying for ever (0xfff) every `interval`. 6 dwords. */
static inline uint32_t pkt_poll_eq(uint32_t *dw, volatile void *addr, uint32_t ref, uint32_t mask,
                                   uint32_t interval) {
    dw[0] = 8u | (3u << 28) | (1u << 31);
    dw[1] = lo32(addr);
    dw[2] = hi32(addr);
    dw[3] = ref;
    dw[4] = mask;
    dw[5] = (interval & 0xffff) | (0xfffu << 16);
    return 6;
}

/* TIMESTAMP (op 13, sub-op 2: get global timestamp): writes 64 bits. 3 dwords. */
static inline uint32_t pkt_timestamp(uint32_t *dw, volatile void *addr) {
    dw[0] = 13u | (2u << 8);
    dw[1] = lo32(addr);
    dw[2] = hi32(addr);
    return 3;
}

/* ---- processes ----------------------------------------------------------------------- */

/* Waits (at most timeout_ms) for child `pid`; its exit status, or -1 when it was killed by
 * a signal or hung (then it is killed). */
static inline int wait_child(pid_t pid, unsigned timeout_ms) {
    uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000ull;
    for (;;) {
        int st = 0;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            if (WIFEXITED(st)) return WEXITSTATUS(st);
            fprintf(stderr, "child %d ended by signal %d\n", (int)pid,
                    WIFSIGNALED(st) ? WTERMSIG(st) : -1);
            return -1;
        }
        if (r < 0) {
            fprintf(stderr, "waitpid(%d): %s\n", (int)pid, strerror(errno));
            return -1;
        }
        if (now_ns() > deadline) {
            fprintf(stderr, "child %d still runs after %u ms: killed\n", (int)pid, timeout_ms);
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        sleep_ms(2);
    }
}

#endif /* USVM_HSAKMT_C_TEST_HARNESS_H */
