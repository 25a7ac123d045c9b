/*
 * PM4 compute queues driven exactly as kfdtest's PM4Queue and Dispatch drive them (notes:
 * pm4-gfx9.md sections 2 and 3): a 4 KiB ring, a 64-bit write pointer and doorbell counting
 * dwords (never wrapped), the read pointer read as 32 bits and compared with the wrapped
 * write pointer, 0xFFFF1002 padding; each dispatch is kfdtest's 84-dword indirect buffer
 * followed by a RELEASE_MEM that signals the dispatch's event. The shaders are kfdtest's
 * CopyDword and ReadMemory for gfx90a, as machine code (nothing is assembled here). Checks
 * results, events, a dispatch's fatal fault (XNACK off: a memory-exception event with the
 * page), and a packet the engine does not execute (ErrorReason and the queue's event).
 */
#define _GNU_SOURCE
#include "harness.h"

static topology_t T;
static HSAuint32 gpu;

/* CopyDword: *arg2 = *arg1, once per wave. */
static const uint32_t COPY_DWORD[] = {
    0x7e000200, 0x7e020201, 0x7e040202, 0x7e060203, 0xdc530000,
    0x04000000, 0xbf8c0000, 0xdc730000, 0x00000402, 0xbf810000,
};
/* ReadMemory: wave i reads buffer arg1[i] page by page until arg1's first dword is 0x5678,
 * then stores 0x5678 to arg2[i] (which holds the buffer's size). */
static const uint32_t READ_MEMORY[] = {
    0x7e000204, 0x24000082, 0x32080002, 0x7e0a0203, 0xd11c6a05, 0x01a90105, 0x24000081,
    0x32040000, 0x7e060201, 0xd11c6a03, 0x01a90103, 0xdc520000, 0x0b000004, 0xdc560000,
    0x06000002, 0xbf8c0070, 0x7e1002ff, 0x00005678, 0xb0085678, 0xc0030400, 0x00000000,
    0xbf8c0070, 0xbf000810, 0xbf85000e, 0x7e120280, 0x7e1402ff, 0x00001000, 0x7e180306,
    0x7e1a0307, 0xdc560000, 0x0e00000c, 0x32121509, 0x3218150c, 0xd11c6a0d, 0x01a9010d,
    0x7d921709, 0xbf87fff8, 0xbf82ffed, 0xdc700000, 0x00000804, 0xbf8c0070, 0xbf810000,
};

enum { PM4_PAD = 0xFFFF1002u, IB_DWORDS = 84, WAIT_MS = 10000 };

/* kfdtest's HsaMemoryBuffer(4096, node, zero, sys, exec): HostAccess | ExecuteAccess |
 * NoNUMABind (0x11040), mapped to the GPU. */
static void *gpu_page(void) {
    HsaMemFlags f;
    f.Value = 0;
    f.ui32.HostAccess = 1;
    f.ui32.ExecuteAccess = 1;
    f.ui32.NoNUMABind = 1;
    void *p = NULL;
    REQUIRE_OK(hsaKmtAllocMemory(gpu, PAGE, f, &p));
    HsaMemMapFlags mf;
    mf.Value = 0;
    REQUIRE_OK(hsaKmtMapMemoryToGPUNodes(p, PAGE, NULL, mf, 1, &gpu));
    memset(p, 0, PAGE);
    return p;
}

static void free_gpu_page(void *p) {
    CHECK_OK(hsaKmtUnmapMemoryToGPU(p));
    CHECK_OK(hsaKmtFreeMemory(p, PAGE));
}

static uint32_t pm4_rptr(const sdma_queue *q) {
    return __atomic_load_n((volatile uint32_t *)q->res.Queue_read_ptr, __ATOMIC_ACQUIRE);
}

/* kfdtest's PlacePacket + SubmitPacket for PM4 on gfx9: pads with NOPs while the packet
 * would cross the ring's end, then stores the dword count to the write pointer and the
 * doorbell. */
static int pm4_submit(sdma_queue *q, const uint32_t *dw, uint32_t n) {
    const uint32_t Q = RING_DWORDS;
    uint32_t wr = (uint32_t)(q->wptr_dw % Q);
    uint32_t required = n + (wr + n > Q ? Q - wr : 0);
    for (int waited = 0; (pm4_rptr(q) - 1 - wr + Q) % Q < required; waited++) {
        if (waited > WAIT_MS) return 0;
        sleep_ms(1);
    }
    while (wr + n > Q) {
        q->ring[wr] = PM4_PAD;
        wr = (wr + 1) % Q;
        q->wptr_dw++;
    }
    for (uint32_t i = 0; i < n; i++) __atomic_store_n(&q->ring[wr + i], dw[i], __ATOMIC_RELAXED);
    q->wptr_dw += n;
    __sync_synchronize();
    *q->res.Queue_write_ptr_aql = q->wptr_dw;
    __sync_synchronize();
    *q->res.Queue_DoorBell_aql = q->wptr_dw;
    return 1;
}

/* Wait4PacketConsumption: rptr == wptr % ring dwords. */
static int pm4_wait(const sdma_queue *q) {
    uint64_t deadline = now_ns() + (uint64_t)WAIT_MS * 1000000ull;
    while (pm4_rptr(q) != (uint32_t)(q->wptr_dw % RING_DWORDS)) {
        if (now_ns() > deadline) return 0;
        sleep_ms(1);
    }
    return 1;
}

#define PM4_SUBMIT(q, dw, n) CHECK(pm4_submit((q), (dw), (n)), "no room in the ring after 10 s")
#define PM4_WAIT(q)                                                                        \
    CHECK(pm4_wait(q), "the ring was not consumed in 10 s (rptr %u, wptr %" PRIu64 ")",   \
          pm4_rptr(q), (q)->wptr_dw)

static uint32_t pkt_set_sh(uint32_t *dw, uint32_t reg, const uint32_t *v, uint32_t n) {
    dw[0] = 0xC0007602u | (n << 16); /* count: the offset and n values, minus one */
    dw[1] = reg - 0x2C00;
    memcpy(dw + 2, v, n * 4);
    return n + 2;
}

/* kfdtest's IndirectBuffer for one dispatch of `isa` over dim_x one-work-item groups. */
static uint32_t build_ib(uint32_t *ib, const void *isa, const void *a0, const void *a1,
                         uint32_t dim_x) {
    uint64_t pgm = (uint64_t)(uintptr_t)isa >> 8;
    uint32_t n = 0;
    const uint32_t acquire[7] = {0xC0055802, 0x28C00000, 0xFFFFFFFF, 0, 0, 0, 4};
    memcpy(ib, acquire, sizeof acquire);
    n += 7;
    const uint32_t start[8] = {0, 0, 0, 1, 1, 1, 0, 0};
    n += pkt_set_sh(ib + n, 0x2E04, start, 8);
    const uint32_t prog[6] = {(uint32_t)pgm, (uint32_t)(pgm >> 32), 0, 0, 0, 0};
    n += pkt_set_sh(ib + n, 0x2E0C, prog, 6);
    const uint32_t rsrc[2] = {0x000C0084, 0x000028C8}, rsrc3 = 9, zero[4] = {0, 0, 0, 0};
    n += pkt_set_sh(ib + n, 0x2E12, rsrc, 2);
    n += pkt_set_sh(ib + n, 0x2E2D, &rsrc3, 1);
    n += pkt_set_sh(ib + n, 0x2E15, zero, 1);
    n += pkt_set_sh(ib + n, 0x2E18, zero, 1);
    n += pkt_set_sh(ib + n, 0x2E1B, zero, 4);
    uint32_t user[16] = {lo32(a0), hi32(a0), lo32(a1), hi32(a1)};
    n += pkt_set_sh(ib + n, 0x2E40, user, 16);
    const uint32_t dispatch[5] = {0xC0031502, dim_x, 1, 1, 0x21};
    memcpy(ib + n, dispatch, sizeof dispatch);
    n += 5;
    uint32_t *fence = ib + n + 1;
    ib[n++] = 0xC0001002; /* NOP whose payload is the fence word */
    ib[n++] = 0;
    const uint32_t release[8] = {0xC0064902, 0x00028514, 0x23000000, lo32(fence), hi32(fence),
                                 0xDEADBEEF, 0, 0xDEADBEEF};
    memcpy(ib + n, release, sizeof release);
    n += 8;
    const uint32_t wait[7] = {0xC0053C02, 0x13, lo32(fence), hi32(fence), 0xDEADBEEF,
                              0xFFFFFFFF, 0x80000004};
    memcpy(ib + n, wait, sizeof wait);
    return n + 7;
}

typedef struct {
    uint32_t *isa, *ib;
    HsaEvent *ev;
} dispatch_t;

static void dispatch_init(dispatch_t *d, const uint32_t *code, size_t bytes) {
    d->isa = gpu_page();
    memcpy(d->isa, code, bytes);
    d->ib = gpu_page();
    HsaEventDescriptor desc;
    memset(&desc, 0, sizeof desc);
    desc.EventType = HSA_EVENTTYPE_SIGNAL;
    desc.NodeId = gpu;
    REQUIRE_OK(hsaKmtCreateEvent(&desc, true, false, &d->ev));
}

static void dispatch_fini(dispatch_t *d) {
    CHECK_OK(hsaKmtDestroyEvent(d->ev));
    free_gpu_page(d->isa);
    free_gpu_page(d->ib);
}

/* Dispatch::Submit: the IB packet, then RELEASE_MEM(interrupt, HWData2, EventId), each
 * with its own doorbell ring. */
static void dispatch_submit(dispatch_t *d, sdma_queue *q, const void *a0, const void *a1,
                            uint32_t dim_x) {
    CHECK_EQ(build_ib(d->ib, d->isa, a0, a1, dim_x), IB_DWORDS);
    const uint32_t ibp[4] = {0xC0023F02, lo32(d->ib), hi32(d->ib) & 0xFFFF, 0x20800000 | IB_DWORDS};
    PM4_SUBMIT(q, ibp, 4);
    uint64_t slot = d->ev->EventData.HWData2;
    const uint32_t rel[8] = {0xC0064902, 0x00028514, 0x22000000, (uint32_t)slot,
                             (uint32_t)(slot >> 32), d->ev->EventId, 0, d->ev->EventId};
    PM4_SUBMIT(q, rel, 8);
}

static void copy_dword(sdma_queue *q, int vram) {
    PHASE(vram ? "CopyDword through a VRAM range (BasicVramTest)" : "CopyDword (BasicSystemMemTest)");
    dispatch_t d;
    dispatch_init(&d, COPY_DWORD, sizeof COPY_DWORD);
    volatile uint32_t *src = new_svm(PAGE, gpu, 0), *dst = new_svm(PAGE, gpu, 0);
    volatile uint32_t *loc = new_svm(PAGE, gpu, gpu);
    src[0] = 0x01010101;
    dispatch_submit(&d, q, (void *)src, vram ? (void *)loc : (void *)dst, 1);
    PM4_WAIT(q);
    CHECK_OK(hsaKmtWaitOnEvent(d.ev, WAIT_MS));
    CHECK_OK(hsaKmtResetEvent(d.ev));
    if (vram) {
        dispatch_submit(&d, q, (void *)loc, (void *)dst, 1);
        PM4_WAIT(q);
        CHECK_OK(hsaKmtWaitOnEvent(d.ev, WAIT_MS));
    }
    CHECK_EQ(dst[0], 0x01010101);
    CHECK_EQ(d.ib[68], 0xDEADBEEF); /* the IB's own fence word */
    CHECK_EQ(*(volatile uint32_t *)(uintptr_t)d.ev->EventData.HWData2, d.ev->EventId);
    dispatch_fini(&d);
    munmap((void *)src, PAGE);
    munmap((void *)dst, PAGE);
    munmap((void *)loc, PAGE);
}

/* QueueTest in small: 8 waves spin over their buffers until the host writes the flag. */
static void read_memory(sdma_queue *q) {
    PHASE("ReadMemory: 8 waves spin until the host writes the flag");
    enum { WAVES = 8, BUF = 64 * 1024 };
    dispatch_t d;
    dispatch_init(&d, READ_MEMORY, sizeof READ_MEMORY);
    uint64_t *addrs = gpu_page();
    uint32_t *result = gpu_page();
    void *bufs[WAVES];
    for (int i = 0; i < WAVES; i++) {
        bufs[i] = new_svm(BUF, gpu, gpu);
        addrs[i] = (uint64_t)(uintptr_t)bufs[i];
        result[i] = BUF;
    }
    dispatch_submit(&d, q, addrs, result, WAVES);
    sleep_ms(100);
    CHECK_STATUS(hsaKmtWaitOnEvent(d.ev, 0), HSAKMT_STATUS_WAIT_TIMEOUT);
    for (int i = 0; i < PAGE / 4; i++) ((volatile uint32_t *)addrs)[i] = 0x5678;
    CHECK_OK(hsaKmtWaitOnEvent(d.ev, 120000));
    PM4_WAIT(q);
    for (int i = 0; i < WAVES; i++) CHECK_EQ(((volatile uint32_t *)result)[i], 0x5678);
    for (int i = 0; i < WAVES; i++) munmap(bufs[i], BUF);
    free_gpu_page(addrs);
    free_gpu_page(result);
    dispatch_fini(&d);
}

/* 100 dispatches, each waited for as BasicSystemMemTest does: the ring wraps (with
 * padding: a 2-dword NOP shifts kfdtest's 12-dword pattern), the read pointer with it. */
static void around_the_ring(sdma_queue *q) {
    PHASE("dispatches around the ring");
    dispatch_t d;
    dispatch_init(&d, COPY_DWORD, sizeof COPY_DWORD);
    volatile uint32_t *src = new_svm(PAGE, gpu, 0), *dst = new_svm(PAGE, gpu, 0);
    const uint32_t nop[2] = {0xC0001002, 0};
    PM4_SUBMIT(q, nop, 2);
    unsigned pads = 0;
    for (uint32_t i = 0; i < 100; i++) {
        src[i] = 0x1000 + i;
        uint64_t before = q->wptr_dw;
        dispatch_submit(&d, q, (void *)(src + i), (void *)(dst + i), 1);
        pads += q->wptr_dw - before != 12;
        if (!PM4_WAIT(q) || !CHECK_OK(hsaKmtWaitOnEvent(d.ev, WAIT_MS))) break;
        CHECK_OK(hsaKmtResetEvent(d.ev));
        if (!CHECK_EQ(dst[i], 0x1000 + i)) break;
    }
    CHECK(q->wptr_dw > RING_DWORDS && pads > 0, "the ring did not wrap (%" PRIu64 " dwords, %u pads)",
          q->wptr_dw, pads);
    dispatch_fini(&d);
    munmap((void *)src, PAGE);
    munmap((void *)dst, PAGE);
}

static HsaEvent *new_event(HSA_EVENTTYPE type) {
    HsaEventDescriptor desc;
    memset(&desc, 0, sizeof desc);
    desc.EventType = type;
    desc.NodeId = gpu;
    HsaEvent *ev = NULL;
    REQUIRE_OK(hsaKmtCreateEvent(&desc, true, false, &ev));
    return ev;
}

/* A queue whose halts are reported to `err` and `*reason`. */
static void create_reporting(sdma_queue *q, HsaEvent *err, volatile HSAint64 *reason) {
    memset(q, 0, sizeof *q);
    q->node = gpu;
    void *ring = NULL;
    REQUIRE_OK(hsaKmtAllocMemory(gpu, RING_BYTES, ring_flags(), &ring));
    HsaMemMapFlags mf;
    mf.Value = 0;
    REQUIRE_OK(hsaKmtMapMemoryToGPUNodes(ring, RING_BYTES, NULL, mf, 1, &gpu));
    memset(ring, 0, RING_BYTES);
    q->ring = ring;
    q->res.ErrorReason = reason;
    REQUIRE_OK(hsaKmtCreateQueue(gpu, HSA_QUEUE_COMPUTE, 100, HSA_QUEUE_PRIORITY_NORMAL, ring,
                                 RING_BYTES, err, &q->res));
}

/* XNACK off: CopyDword from memory no GPU maps. */
static void fatal_fault(void) {
    PHASE("a dispatch's fatal fault raises the memory exception");
    HsaEvent *mem = new_event(HSA_EVENTTYPE_MEMORY), *err = new_event(HSA_EVENTTYPE_SIGNAL);
    volatile HSAint64 reason = 0;
    sdma_queue q;
    create_reporting(&q, err, &reason);
    dispatch_t d;
    dispatch_init(&d, COPY_DWORD, sizeof COPY_DWORD);
    char *src = map_anon(2 * PAGE);
    volatile uint32_t *dst = new_svm(PAGE, gpu, 0);
    dst[0] = 77;
    dispatch_submit(&d, &q, src + PAGE + 16, (void *)dst, 1);
    if (CHECK_OK(hsaKmtWaitOnEvent(mem, WAIT_MS))) {
        HsaMemoryAccessFault *f = &mem->EventData.EventData.MemoryAccessFault;
        CHECK_EQ(f->VirtualAddress, (uintptr_t)(src + PAGE));
        CHECK_EQ(f->NodeId, gpu);
        CHECK_EQ(f->Failure.NotPresent, 1);
    }
    CHECK_OK(hsaKmtWaitOnEvent(err, WAIT_MS));
    CHECK_EQ(reason, 1u << 4); /* KFD_EC_MASK(EC_QUEUE_WAVE_MEMORY_VIOLATION) */
    CHECK_STATUS(hsaKmtWaitOnEvent(d.ev, 50), HSAKMT_STATUS_WAIT_TIMEOUT);
    CHECK_EQ(dst[0], 77);
    CHECK(pm4_rptr(&q) != (uint32_t)q.wptr_dw, "the faulting dispatch was consumed");
    CHECK_OK(sdma_destroy(&q));
    dispatch_fini(&d);
    CHECK_OK(hsaKmtDestroyEvent(mem));
    CHECK_OK(hsaKmtDestroyEvent(err));
    munmap(src, 2 * PAGE);
    munmap((void *)dst, PAGE);
}

static void unknown_packet(void) {
    PHASE("an unknown packet halts the queue, visibly");
    HsaEvent *err = new_event(HSA_EVENTTYPE_SIGNAL);
    volatile HSAint64 reason = 0;
    sdma_queue q;
    create_reporting(&q, err, &reason);
    volatile uint32_t *buf = new_svm(PAGE, gpu, 0);
    const uint32_t ev_write[2] = {0xC0004602, 0x407}; /* EVENT_WRITE: not emulated */
    const uint32_t write[5] = {0xC0033702, 5u << 8, lo32(buf), hi32(buf), 0x600D};
    PM4_SUBMIT(&q, write, 5);
    PM4_WAIT(&q);
    CHECK_EQ(buf[0], 0x600D);
    uint32_t at = pm4_rptr(&q);
    PM4_SUBMIT(&q, ev_write, 2);
    const uint32_t later[5] = {0xC0033702, 5u << 8, lo32(buf + 1), hi32(buf + 1), 0xBAD};
    PM4_SUBMIT(&q, later, 5);
    CHECK_OK(hsaKmtWaitOnEvent(err, WAIT_MS));
    CHECK_EQ(reason, 1u << 19); /* KFD_EC_MASK(EC_QUEUE_PACKET_UNSUPPORTED) */
    sleep_ms(20);
    CHECK_EQ(pm4_rptr(&q), at);
    CHECK_EQ(buf[1], 0);
    CHECK_OK(sdma_destroy(&q));
    CHECK_OK(hsaKmtDestroyEvent(err));
    munmap((void *)buf, PAGE);
}

int main(void) {
    open_kfd(&T);
    gpu = T.gpus[0];
    HSAint32 xnack = 0;
    REQUIRE_OK(hsaKmtGetXNACKMode(&xnack));
    fprintf(stderr, "XNACK %s\n", xnack ? "on" : "off");
    sdma_queue q;
    REQUIRE_OK(sdma_create_type(&q, gpu, HSA_QUEUE_COMPUTE));
    CHECK_EQ(pm4_rptr(&q), 0);
    copy_dword(&q, 0);
    copy_dword(&q, 1);
    read_memory(&q);
    around_the_ring(&q);
    CHECK_OK(sdma_destroy(&q));
    if (!xnack) fatal_fault();
    unknown_packet();
    CHECK_OK(hsaKmtCloseKFD());
    return finish();
}
