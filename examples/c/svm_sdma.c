/*
 * A short C program against usvm's libhsakmt, written as one would for ROCm's:
 * open the KFD, find a GPU node, register a buffer as SVM memory and prefetch it to the
 * GPU's VRAM, have the GPU's SDMA engine copy it into a second buffer through a user
 * queue, and read the copy on the CPU.
 *
 * Build and run (from the repository root, after cargo build --release -p usvm-hsakmt):
 *   cc -std=c11 -Icrates/usvm-hsakmt/include examples/c/svm_sdma.c \
 *      -Ltarget/release -Wl,-rpath,$PWD/target/release -lhsakmt -o svm_sdma
 *   ./svm_sdma
 */
#define _GNU_SOURCE
#include <hsakmt/hsakmt.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define CHECK(call)                                                              \
    do {                                                                         \
        HSAKMT_STATUS s_ = (call);                                               \
        if (s_ != HSAKMT_STATUS_SUCCESS) {                                       \
            fprintf(stderr, "%s:%d: %s failed with status %d\n", __FILE__,       \
                    __LINE__, #call, (int)s_);                                   \
            return 1;                                                            \
        }                                                                        \
    } while (0)

enum { BUF = 4 << 20, RING = 4096 };

int main(void) {
    CHECK(hsaKmtOpenKFD());
    HsaSystemProperties sys;
    CHECK(hsaKmtAcquireSystemProperties(&sys));
    HSAuint32 gpu = 0;
    for (HSAuint32 n = 0; n < sys.NumNodes && !gpu; n++) {
        HsaNodeProperties p;
        CHECK(hsaKmtGetNodeProperties(n, &p));
        if (p.NumFComputeCores > 0 && p.Capability.ui32.SVMAPISupported) gpu = n;
    }
    if (!gpu) {
        fprintf(stderr, "no GPU node with the SVM API\n");
        return 1;
    }

    /* Two ordinary buffers of this process, registered as SVM memory on the GPU node,
     * the source prefetched to its VRAM. */
    uint32_t *src = mmap(NULL, BUF, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint32_t *dst = mmap(NULL, BUF, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (src == MAP_FAILED || dst == MAP_FAILED) return 1;
    for (size_t i = 0; i < BUF / 4; i++) src[i] = (uint32_t)i * 2654435761u;
    HSA_SVM_ATTRIBUTE attrs[] = {
        {HSA_SVM_ATTR_ACCESS, gpu},
        {HSA_SVM_ATTR_PREFETCH_LOC, gpu},
    };
    CHECK(hsaKmtSVMSetAttr(src, BUF, 2, attrs));
    CHECK(hsaKmtSVMSetAttr(dst, BUF, 1, attrs));
    HSA_SVM_ATTRIBUTE where = {HSA_SVM_ATTR_PREFETCH_LOC, 0};
    CHECK(hsaKmtSVMGetAttr(src, BUF, 1, &where));
    printf("source prefetched to node %u\n", where.value);

    /* An SDMA queue: its ring in GPU-mapped memory. */
    HsaMemFlags flags = {0};
    flags.ui32.HostAccess = 1;
    flags.ui32.NoNUMABind = 1;
    flags.ui32.Uncached = 1;
    uint32_t *ring;
    CHECK(hsaKmtAllocMemory(gpu, RING, flags, (void **)&ring));
    CHECK(hsaKmtMapMemoryToGPUNodes(ring, RING, NULL, (HsaMemMapFlags){0}, 1, &gpu));
    memset(ring, 0, RING);
    HsaQueueResource q;
    memset(&q, 0, sizeof q);
    CHECK(hsaKmtCreateQueue(gpu, HSA_QUEUE_SDMA, 100, HSA_QUEUE_PRIORITY_NORMAL, ring, RING, NULL, &q));

    /* COPY_LINEAR packets of at most 2 MiB: op 1, byte count - 1, source, destination. */
    uint32_t n = 0;
    for (size_t off = 0; off < BUF; off += 2 << 20) {
        uint64_t s = (uint64_t)(uintptr_t)src + off, d = (uint64_t)(uintptr_t)dst + off;
        uint32_t pkt[7] = {1, (2 << 20) - 1, 0, (uint32_t)s, (uint32_t)(s >> 32), (uint32_t)d, (uint32_t)(d >> 32)};
        memcpy(ring + n, pkt, sizeof pkt);
        n += 7;
    }
    uint64_t wptr = n * 4;
    __atomic_store_n(q.Queue_write_ptr_aql, wptr, __ATOMIC_RELEASE);
    __atomic_store_n(q.Queue_DoorBell_aql, wptr, __ATOMIC_RELEASE);
    /* The engine notices the doorbell by itself; wait for the read pointer. */
    for (int ms = 0; __atomic_load_n(q.Queue_read_ptr_aql, __ATOMIC_ACQUIRE) != wptr; ms++) {
        if (ms > 10000) {
            fprintf(stderr, "the SDMA copy did not complete\n");
            return 1;
        }
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    }

    for (size_t i = 0; i < BUF / 4; i++) {
        if (dst[i] != (uint32_t)i * 2654435761u) {
            fprintf(stderr, "word %zu differs\n", i);
            return 1;
        }
    }
    printf("SDMA copied %d MiB from VRAM; the CPU reads every word back\n", BUF >> 20);

    CHECK(hsaKmtDestroyQueue(q.QueueId));
    CHECK(hsaKmtUnmapMemoryToGPU(ring));
    CHECK(hsaKmtFreeMemory(ring, RING));
    munmap(src, BUF);
    munmap(dst, BUF);
    CHECK(hsaKmtCloseKFD());
    return 0;
}
