/*
 * KFD memory: hsaKmtAllocMemory on the CPU node and on a GPU node (system memory, and VRAM
 * with NonPaged), mapping to GPUs, AvailableMemory accounting, the VRAM limit, SVM refused
 * over KFD buffers (EADDRINUSE), RegisterMemory / DeregisterMemory of user memory, and the
 * argument checks. A GPU (its SDMA engine) reads and writes mapped buffers and faults on
 * unmapped ones.
 */
#define _GNU_SOURCE
#include "harness.h"

static topology_t T;
static HSAuint32 gpu;

static HsaMemFlags host_flags(int non_paged) {
    HsaMemFlags f;
    f.Value = 0;
    f.ui32.HostAccess = 1;
    f.ui32.NoNUMABind = 1;
    f.ui32.NonPaged = non_paged ? 1 : 0;
    return f;
}

static HSAuint64 available(HSAuint32 node) {
    HSAuint64 a = 0;
    CHECK_OK(hsaKmtAvailableMemory(node, &a));
    return a;
}

static void cpu_rw(void *p, size_t bytes, uint32_t seed) {
    fill_pattern(p, bytes, seed);
    CHECK_PATTERN(p, bytes, seed);
}

/* The GPU copies `bytes` from src to dst through an SDMA queue; 1 when it completed. */
static int gpu_copy(sdma_queue *q, void *dst, const void *src, size_t bytes) {
    uint32_t dw[64];
    uint32_t n = pkt_copy_split(dw, dst, src, bytes);
    return sdma_submit(q, dw, n) && sdma_wait_ms(q, 2000);
}

static void alloc_kinds(void) {
    const size_t N = 2 << 20;
    HsaMemMapFlags mf;
    mf.Value = 0;
    HSAuint64 vram = T.props[gpu].LocalMemSize;
    HSAuint64 before = available(gpu);
    CHECK_EQ(before, vram);

    PHASE("system memory on the CPU node");
    void *sys = NULL;
    REQUIRE_OK(hsaKmtAllocMemory(0, N, host_flags(0), &sys));
    CHECK(sys != NULL && ((uintptr_t)sys & (PAGE - 1)) == 0, "address %p", sys);
    cpu_rw(sys, N, 1);
    CHECK_OK(hsaKmtMapMemoryToGPU(sys, N, NULL));
    CHECK_EQ(available(gpu), before);

    PHASE("system memory on a GPU node (no NonPaged)");
    void *gsys = NULL;
    REQUIRE_OK(hsaKmtAllocMemory(gpu, N, host_flags(0), &gsys));
    cpu_rw(gsys, N, 2);
    CHECK_EQ(available(gpu), before);
    CHECK_OK(hsaKmtMapMemoryToGPUNodes(gsys, N, NULL, mf, 1, &gpu));

    PHASE("VRAM (NonPaged on a GPU node)");
    void *v = NULL;
    REQUIRE_OK(hsaKmtAllocMemory(gpu, N, host_flags(1), &v));
    CHECK(v != sys && v != gsys, "same address twice");
    cpu_rw(v, N, 3);
    CHECK_EQ(available(gpu), before - N);
    if (T.num_gpus > 1) CHECK_EQ(available(T.gpus[1]), T.props[T.gpus[1]].LocalMemSize);
    HSAuint64 alt = 0;
    CHECK_OK(hsaKmtMapMemoryToGPU(v, N, &alt));
    CHECK_EQ(alt, (uintptr_t)v); /* one address space: the GPU address is the CPU's */
    CHECK_OK(hsaKmtMapMemoryToGPUNodes(v, N, NULL, mf, 1, &gpu));
    /* A second VRAM buffer that is not a whole number of pages. */
    void *v2 = NULL;
    REQUIRE_OK(hsaKmtAllocMemory(gpu, 3 * PAGE + 100, host_flags(1), &v2));
    CHECK_EQ(available(gpu), before - N - 4 * PAGE);

    PHASE("the GPU uses the mapped buffers");
    sdma_queue q;
    SDMA_CREATE(&q, gpu);
    CHECK(gpu_copy(&q, v, sys, N), "copy system -> VRAM");
    CHECK_PATTERN(v, N, 1);
    CHECK(gpu_copy(&q, gsys, v, N), "copy VRAM -> system");
    CHECK_PATTERN(gsys, N, 1);
    CHECK_OK(sdma_destroy(&q));

    PHASE("unmap and free");
    CHECK_OK(hsaKmtUnmapMemoryToGPU(v));
    CHECK_OK(hsaKmtUnmapMemoryToGPU(gsys));
    CHECK_OK(hsaKmtUnmapMemoryToGPU(sys));
    CHECK_OK(hsaKmtFreeMemory(v, N));
    CHECK_EQ(available(gpu), before - 4 * PAGE);
    CHECK_OK(hsaKmtFreeMemory(v2, 3 * PAGE + 100));
    CHECK_EQ(available(gpu), before);
    CHECK_OK(hsaKmtFreeMemory(gsys, N));
    CHECK_OK(hsaKmtFreeMemory(sys, N));
    CHECK_STATUS(hsaKmtFreeMemory(sys, N), HSAKMT_STATUS_MEMORY_NOT_REGISTERED);

    PHASE("more VRAM than exists");
    void *big = (void *)1;
    CHECK_STATUS(hsaKmtAllocMemory(gpu, vram + (2 << 20), host_flags(1), &big), HSAKMT_STATUS_NO_MEMORY);
    CHECK_EQ(available(gpu), before);
    /* All of it, then one page more. */
    void *all = NULL;
    if (CHECK_OK(hsaKmtAllocMemory(gpu, vram, host_flags(1), &all))) {
        CHECK_EQ(available(gpu), 0);
        void *more = NULL;
        CHECK_STATUS(hsaKmtAllocMemory(gpu, PAGE, host_flags(1), &more), HSAKMT_STATUS_NO_MEMORY);
        CHECK_OK(hsaKmtFreeMemory(all, vram));
    }
    CHECK_EQ(available(gpu), before);
    /* System memory is not VRAM: it does not count. */
    void *s2 = NULL;
    CHECK_OK(hsaKmtAllocMemory(gpu, vram + (2 << 20), host_flags(0), &s2));
    CHECK_EQ(available(gpu), before);
    CHECK_OK(hsaKmtFreeMemory(s2, vram + (2 << 20)));
}

static void svm_over_kfd_memory(void) {
    PHASE("SVM over KFD buffers is EADDRINUSE");
    const size_t N = 16 * PAGE;
    void *sys = NULL, *v = NULL;
    REQUIRE_OK(hsaKmtAllocMemory(0, N, host_flags(0), &sys));
    REQUIRE_OK(hsaKmtAllocMemory(gpu, N, host_flags(1), &v));
    CHECK_ERRNO(prefetch_svm(sys, N, gpu), EADDRINUSE);
    CHECK_ERRNO(register_svm(v, N, gpu, gpu, 3), EADDRINUSE);
    CHECK_ERRNO(prefetch_svm((char *)v + 4 * PAGE, PAGE, 0), EADDRINUSE);
    CHECK_OK(hsaKmtFreeMemory(sys, N));
    CHECK_OK(hsaKmtFreeMemory(v, N));

    PHASE("RegisterMemory / DeregisterMemory");
    char *u = map_anon(N);
    fill_pattern(u, N, 7);
    CHECK_OK(hsaKmtRegisterMemory(u, N));
    CHECK_STATUS(hsaKmtRegisterMemory(u, N), HSAKMT_STATUS_MEMORY_ALREADY_REGISTERED);
    CHECK_STATUS(hsaKmtRegisterMemory(u + 4 * PAGE, PAGE), HSAKMT_STATUS_MEMORY_ALREADY_REGISTERED);
    CHECK_ERRNO(register_svm(u, N, gpu, 0, 3), EADDRINUSE);
    CHECK_ERRNO(prefetch_svm(u + PAGE, PAGE, gpu), EADDRINUSE);
    /* Registered user memory is not KFD-allocated: FreeMemory does not take it. */
    CHECK_STATUS(hsaKmtFreeMemory(u, N), HSAKMT_STATUS_MEMORY_NOT_REGISTERED);
    /* Mapped, the GPU reads it. */
    HsaMemMapFlags mf;
    mf.Value = 0;
    CHECK_OK(hsaKmtMapMemoryToGPUNodes(u, N, NULL, mf, 1, &gpu));
    {
        void *dst = new_svm(N, gpu, gpu);
        sdma_queue q;
        SDMA_CREATE(&q, gpu);
        CHECK(gpu_copy(&q, dst, u, N), "copy of registered memory");
        CHECK_PATTERN(dst, N, 7);
        CHECK_OK(sdma_destroy(&q));
        munmap(dst, N);
    }
    CHECK_OK(hsaKmtUnmapMemoryToGPU(u));
    CHECK_OK(hsaKmtDeregisterMemory(u));
    CHECK_STATUS(hsaKmtDeregisterMemory(u), HSAKMT_STATUS_MEMORY_NOT_REGISTERED);
    CHECK_PATTERN(u, N, 7); /* the application's memory is left alone */
    CHECK_OK(register_svm(u, N, gpu, gpu, 3));
    CHECK_PATTERN(u, N, 7);
    /* Now an SVM range: registering it as KFD memory is refused in turn. */
    CHECK_ERRNO(hsaKmtRegisterMemory(u, N), EADDRINUSE);
    munmap(u, N);

    /* Other registration calls. */
    u = map_anon(N);
    CHECK_OK(hsaKmtRegisterMemoryToNodes(u, N, 1, &gpu));
    CHECK_OK(hsaKmtDeregisterMemory(u));
    HSAuint32 cpu = 0;
    CHECK_STATUS(hsaKmtRegisterMemoryToNodes(u, N, 1, &cpu), HSAKMT_STATUS_INVALID_NODE_UNIT);
    CHECK_OK(hsaKmtRegisterMemoryWithFlags(u, N, host_flags(0)));
    CHECK_OK(hsaKmtDeregisterMemory(u));
    /* Unmapped memory cannot be registered. */
    munmap(u, N);
    CHECK_STATUS(hsaKmtRegisterMemory(u, N), HSAKMT_STATUS_ERROR);
}

static void bad_arguments(void) {
    PHASE("argument checks");
    const HSAKMT_STATUS INVAL = HSAKMT_STATUS_INVALID_PARAMETER;
    void *p = NULL;
    HsaMemMapFlags mf;
    mf.Value = 0;
    char stack_page[2 * PAGE];
    void *unknown = (void *)(((uintptr_t)stack_page + PAGE - 1) & ~(uintptr_t)(PAGE - 1));

    CHECK_STATUS(hsaKmtAllocMemory(0, PAGE, host_flags(0), NULL), INVAL);
    CHECK_STATUS(hsaKmtAllocMemory(gpu, 0, host_flags(1), &p), INVAL);
    CHECK_STATUS(hsaKmtAllocMemory(0, 0, host_flags(0), &p), INVAL);
    CHECK_STATUS(hsaKmtAllocMemory(T.num_nodes, PAGE, host_flags(0), &p),
                 HSAKMT_STATUS_INVALID_NODE_UNIT);
    CHECK_STATUS(hsaKmtFreeMemory(NULL, PAGE), INVAL);
    CHECK_STATUS(hsaKmtFreeMemory(unknown, PAGE), HSAKMT_STATUS_MEMORY_NOT_REGISTERED);
    CHECK_STATUS(hsaKmtAvailableMemory(gpu, NULL), INVAL);
    CHECK_STATUS(hsaKmtAvailableMemory(T.num_nodes, &(HSAuint64){0}), HSAKMT_STATUS_INVALID_NODE_UNIT);
    CHECK_STATUS(hsaKmtMapMemoryToGPU(NULL, PAGE, NULL), INVAL);
    CHECK_STATUS(hsaKmtMapMemoryToGPUNodes(NULL, PAGE, NULL, mf, 1, &gpu), INVAL);
    CHECK_STATUS(hsaKmtUnmapMemoryToGPU(NULL), INVAL);
    CHECK_STATUS(hsaKmtRegisterMemory(NULL, PAGE), INVAL);
    CHECK_STATUS(hsaKmtRegisterMemory(unknown, 0), INVAL);
    CHECK_STATUS(hsaKmtMapMemoryToGPU(unknown, PAGE, NULL), HSAKMT_STATUS_MEMORY_NOT_REGISTERED);
    CHECK_STATUS(hsaKmtUnmapMemoryToGPU(unknown), HSAKMT_STATUS_MEMORY_NOT_REGISTERED);
    CHECK_STATUS(hsaKmtDeregisterMemory(unknown), HSAKMT_STATUS_MEMORY_NOT_REGISTERED);
    /* Mapping a buffer on a CPU node or a node that does not exist. */
    if (CHECK_OK(hsaKmtAllocMemory(0, PAGE, host_flags(0), &p))) {
        HSAuint32 cpu = 0, beyond = T.num_nodes;
        CHECK_STATUS(hsaKmtMapMemoryToGPUNodes(p, PAGE, NULL, mf, 1, &cpu),
                     HSAKMT_STATUS_INVALID_NODE_UNIT);
        CHECK_STATUS(hsaKmtMapMemoryToGPUNodes(p, PAGE, NULL, mf, 1, &beyond),
                     HSAKMT_STATUS_INVALID_NODE_UNIT);
        CHECK_OK(hsaKmtFreeMemory(p, PAGE));
    }
}

int main(void) {
    open_kfd(&T);
    gpu = T.gpus[0];
    alloc_kinds();
    svm_over_kfd_memory();
    bad_arguments();

    PHASE("closing frees what is left");
    void *v = NULL;
    CHECK_OK(hsaKmtAllocMemory(gpu, 4 << 20, host_flags(1), &v));
    CHECK_OK(hsaKmtCloseKFD());
    CHECK_OK(hsaKmtOpenKFD());
    CHECK_EQ(available(gpu), T.props[gpu].LocalMemSize);
    CHECK_OK(hsaKmtCloseKFD());
    return finish();
}
