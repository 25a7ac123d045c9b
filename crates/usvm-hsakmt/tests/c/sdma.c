/*
 * SDMA user queues driven exactly as kfdtest drives them (notes section c): a 4 KiB ring
 * from AllocMemory(HostAccess | NoNUMABind | Uncached | ExecuteAccess) mapped with
 * MapMemoryToGPUNodes, a 64-bit byte write pointer that never wraps stored to
 * Queue_write_ptr_aql then Queue_DoorBell_aql, completion seen in the low 32 bits of the
 * read pointer, NOP padding at the end of the ring. Every packet kind the engine executes:
 * COPY_LINEAR, CONST_FILL (dword and byte), WRITE_UNTILED, FENCE, TRAP (a signal event),
 * POLL_REGMEM, TIMESTAMP; hundreds of submissions around the ring; two queues on two GPUs
 * at once; SDMA_XGMI queues; queue errors; with XNACK off and on.
 */
#define _GNU_SOURCE
#include "harness.h"

static topology_t T;
static HSAuint32 gpu;

enum { MIB = 1 << 20 };

static void create_and_errors(void) {
    PHASE("CreateQueue fills the resource");
    sdma_queue q;
    memset(&q, 0, sizeof q);
    void *ring = NULL;
    REQUIRE_OK(hsaKmtAllocMemory(gpu, RING_BYTES, ring_flags(), &ring));
    memset(ring, 0, RING_BYTES); /* CPU-writable */
    HsaMemMapFlags mf;
    mf.Value = 0;
    REQUIRE_OK(hsaKmtMapMemoryToGPUNodes(ring, RING_BYTES, NULL, mf, 1, &gpu));
    HsaQueueResource res;
    memset(&res, 0xff, sizeof res);
    res.ErrorReason = NULL;
    REQUIRE_OK(hsaKmtCreateQueue(gpu, HSA_QUEUE_SDMA, 100, HSA_QUEUE_PRIORITY_NORMAL, ring,
                                 RING_BYTES, NULL, &res));
    CHECK(res.QueueId != ~0ull, "QueueId not written");
    REQUIRE(res.Queue_read_ptr_aql != NULL && res.Queue_read_ptr_aql != (HSAuint64 *)~0ull,
            "read pointer %p", (void *)res.Queue_read_ptr_aql);
    REQUIRE(res.Queue_write_ptr_aql != NULL && res.Queue_write_ptr_aql != (HSAuint64 *)~0ull,
            "write pointer %p", (void *)res.Queue_write_ptr_aql);
    REQUIRE(res.Queue_DoorBell_aql != NULL && res.Queue_DoorBell_aql != (HSAuint64 *)~0ull,
            "doorbell %p", (void *)res.Queue_DoorBell_aql);
    CHECK(res.Queue_read_ptr_aql != res.Queue_write_ptr_aql, "read and write pointer alike");
    CHECK_EQ(*res.Queue_read_ptr_aql, 0);
    CHECK_EQ(*res.Queue_write_ptr_aql, 0);
    CHECK(res.ErrorReason == NULL, "ErrorReason changed");
    /* A second queue gets another id and other pointers. */
    HsaQueueResource res2;
    memset(&res2, 0, sizeof res2);
    void *ring2 = NULL;
    REQUIRE_OK(hsaKmtAllocMemory(gpu, RING_BYTES, ring_flags(), &ring2));
    REQUIRE_OK(hsaKmtMapMemoryToGPUNodes(ring2, RING_BYTES, NULL, mf, 1, &gpu));
    REQUIRE_OK(hsaKmtCreateQueue(gpu, HSA_QUEUE_SDMA, 100, HSA_QUEUE_PRIORITY_NORMAL, ring2,
                                 RING_BYTES, NULL, &res2));
    CHECK(res2.QueueId != res.QueueId, "two queues with id %" PRIu64, (uint64_t)res.QueueId);
    CHECK(res2.Queue_read_ptr_aql != res.Queue_read_ptr_aql, "shared read pointer");
    CHECK(res2.Queue_DoorBell_aql != res.Queue_DoorBell_aql, "shared doorbell");

    PHASE("queue errors");
    CHECK_STATUS(hsaKmtDestroyQueue(0xDEAD0000ull), HSAKMT_STATUS_INVALID_HANDLE);
    CHECK_OK(hsaKmtDestroyQueue(res2.QueueId));
    CHECK_STATUS(hsaKmtDestroyQueue(res2.QueueId), HSAKMT_STATUS_INVALID_HANDLE);
    CHECK_OK(hsaKmtDestroyQueue(res.QueueId));
    CHECK_STATUS(hsaKmtDestroyQueue(res.QueueId), HSAKMT_STATUS_INVALID_HANDLE);
    CHECK_STATUS(hsaKmtCreateQueue(gpu, HSA_QUEUE_SDMA, 100, HSA_QUEUE_PRIORITY_NORMAL, ring,
                                   RING_BYTES, NULL, NULL),
                 HSAKMT_STATUS_INVALID_PARAMETER);
    CHECK_STATUS(hsaKmtCreateQueue(0, HSA_QUEUE_SDMA, 100, HSA_QUEUE_PRIORITY_NORMAL, ring,
                                   RING_BYTES, NULL, &res),
                 HSAKMT_STATUS_INVALID_NODE_UNIT);
    CHECK_STATUS(hsaKmtCreateQueue(T.num_nodes, HSA_QUEUE_SDMA, 100, HSA_QUEUE_PRIORITY_NORMAL,
                                   ring, RING_BYTES, NULL, &res),
                 HSAKMT_STATUS_INVALID_NODE_UNIT);
    CHECK_OK(hsaKmtUnmapMemoryToGPU(ring2));
    CHECK_OK(hsaKmtFreeMemory(ring2, RING_BYTES));
    CHECK_OK(hsaKmtUnmapMemoryToGPU(ring));
    CHECK_OK(hsaKmtFreeMemory(ring, RING_BYTES));
}

/* kfdtest's MigrateTest pattern: 16 MiB copied in 2 MiB packets (one 56-dword block),
 * between a range prefetched to VRAM and one in system memory, both ways. */
static void copy_16m(sdma_queue *q, uint32_t seed) {
    const size_t N = 16 * MIB;
    char *src = map_anon(N);
    fill_pattern(src, N, seed);
    CHECK_OK(register_svm(src, N, q->node, q->node, 3)); /* migrates to VRAM */
    char *dst = new_svm(N, q->node, 0);
    char *back = new_svm(N, q->node, q->node);
    uint32_t dw[64];
    uint32_t n = pkt_copy_split(dw, dst, src, N);
    CHECK_EQ(n, 56);
    CHECK_EQ(dw[0], 1);
    CHECK_EQ(dw[1], 0x1FFFFF);
    SDMA_SUBMIT(q, dw, n);
    SDMA_WAIT(q);
    CHECK_PATTERN(dst, N, seed);
    /* system -> VRAM, then checked after a prefetch back. */
    n = pkt_copy_split(dw, back, dst, N);
    SDMA_SUBMIT(q, dw, n);
    SDMA_WAIT(q);
    CHECK_OK(prefetch_svm(back, N, 0));
    CHECK_PATTERN(back, N, seed);
    CHECK_PATTERN(src, N, seed); /* the source is unchanged */
    munmap(src, N);
    munmap(dst, N);
    munmap(back, N);
}

static void small_packets(sdma_queue *q) {
    const size_t N = 256 * 1024;
    char *buf = new_svm(N, q->node, 0);
    volatile uint32_t *w = (volatile uint32_t *)buf;
    uint32_t dw[64];

    PHASE("CONST_FILL, dword fill");
    fill_pattern(buf, N, 11);
    SDMA_SUBMIT(q, dw, pkt_fill(dw, buf + 4096, 0xA5A55A5Au, 64 * 1024, 1));
    CHECK_EQ(dw[0], 0x8000000Bu);
    SDMA_WAIT(q);
    CHECK_EQ(w[1023], pattern_word(1023, 11));
    CHECK_EQ(w[1024 + 16 * 1024], pattern_word(1024 + 16 * 1024, 11));
    for (size_t i = 1024; i < 1024 + 16 * 1024; i++)
        if (!CHECK_EQ(w[i], 0xA5A55A5Au)) break;

    PHASE("CONST_FILL, byte fill");
    fill_pattern(buf, N, 12);
    SDMA_SUBMIT(q, dw, pkt_fill(dw, buf + 1, 0x123456ABu, 4093, 0));
    CHECK_EQ(dw[0], 11);
    SDMA_WAIT(q);
    CHECK_EQ(((volatile uint8_t *)buf)[0], (uint8_t)pattern_word(0, 12));
    for (size_t i = 1; i < 4094; i++)
        if (!CHECK_EQ(((volatile uint8_t *)buf)[i], 0xAB)) break;
    CHECK_EQ(((volatile uint8_t *)buf)[4094], (uint8_t)(pattern_word(4094 / 4, 12) >> 16));
    CHECK_EQ(w[1024], pattern_word(1024, 12));

    PHASE("WRITE_UNTILED");
    fill_pattern(buf, N, 13);
    uint32_t data[9] = {0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99};
    SDMA_SUBMIT(q, dw, pkt_write(dw, buf + 12, data, 9));
    SDMA_WAIT(q);
    CHECK_EQ(w[2], pattern_word(2, 13));
    for (int i = 0; i < 9; i++) CHECK_EQ(w[3 + i], data[i]);
    CHECK_EQ(w[12], pattern_word(12, 13));

    PHASE("FENCE");
    SDMA_SUBMIT(q, dw, pkt_fence(dw, &w[100], 0xFEEDF00Du));
    SDMA_WAIT(q);
    CHECK_EQ(w[100], 0xFEEDF00Du);
    CHECK_EQ(w[101], pattern_word(101, 13));

    PHASE("TIMESTAMP");
    volatile uint64_t *ts = (volatile uint64_t *)(buf + 8192); /* 32-byte aligned */
    ts[0] = 0;
    ts[4] = 0;
    SDMA_SUBMIT(q, dw, pkt_timestamp(dw, &ts[0]));
    SDMA_WAIT(q);
    sleep_ms(2);
    SDMA_SUBMIT(q, dw, pkt_timestamp(dw, &ts[4]));
    SDMA_WAIT(q);
    CHECK(ts[0] != 0, "no timestamp written");
    CHECK(ts[4] > ts[0], "timestamps %" PRIu64 " then %" PRIu64, ts[0], ts[4]);

    PHASE("POLL_REGMEM stalls the queue until the CPU writes the value");
    volatile uint32_t *flag = &w[4096];
    volatile uint32_t *after = &w[4100];
    *flag = 0;
    *after = 0;
    uint32_t n = pkt_poll_eq(dw, flag, 0xC0FFEEu, 0xFFFFFFFFu, 10);
    CHECK_EQ(dw[0], 0xB0000008u);
    n += pkt_fence(dw + n, after, 0x600Du);
    SDMA_SUBMIT(q, dw, n);
    sleep_ms(100);
    CHECK_EQ(*after, 0);
    CHECK(sdma_rptr32(q) != (uint32_t)(q->wptr_dw * 4), "the queue went past the poll");
    *flag = 0xC0FFEE;
    SDMA_WAIT(q);
    CHECK_EQ(*after, 0x600D);
    /* With a mask: only the low byte is compared. */
    *flag = 0;
    n = pkt_poll_eq(dw, flag, 0x42, 0xFF, 10);
    n += pkt_fence(dw + n, after, 0x700D);
    SDMA_SUBMIT(q, dw, n);
    sleep_ms(30);
    *flag = 0x1143; /* low byte 0x43: not yet */
    sleep_ms(30);
    CHECK_EQ(*after, 0x600D);
    *flag = 0x7742;
    SDMA_WAIT(q);
    CHECK_EQ(*after, 0x700D);

    munmap(buf, N);
}

static void trap(sdma_queue *q) {
    PHASE("FENCE + TRAP signal an event");
    HsaEventDescriptor d;
    memset(&d, 0, sizeof d);
    d.EventType = HSA_EVENTTYPE_SIGNAL;
    d.NodeId = q->node;
    HsaEvent *ev = NULL;
    REQUIRE_OK(hsaKmtCreateEvent(&d, false, false, &ev));
    REQUIRE(ev != NULL, "no event");
    CHECK_EQ(ev->EventData.EventType, HSA_EVENTTYPE_SIGNAL);
    CHECK(ev->EventData.HWData2 != 0, "HWData2 is 0");
    volatile uint32_t *slot = (volatile uint32_t *)(uintptr_t)ev->EventData.HWData2;
    CHECK_STATUS(hsaKmtWaitOnEvent(ev, 0), HSAKMT_STATUS_WAIT_TIMEOUT);
    for (int round = 0; round < 3; round++) {
        uint32_t dw[8];
        uint32_t n = pkt_fence(dw, slot, ev->EventId);
        n += pkt_trap(dw + n, ev->EventId);
        SDMA_SUBMIT(q, dw, n);
        CHECK_OK(hsaKmtWaitOnEvent(ev, 10000));
        CHECK_EQ(*slot, ev->EventId);
        /* Auto-reset: the wait consumed the signal. */
        CHECK_STATUS(hsaKmtWaitOnEvent(ev, 10), HSAKMT_STATUS_WAIT_TIMEOUT);
        SDMA_WAIT(q);
        *slot = 0;
    }
    CHECK_OK(hsaKmtDestroyEvent(ev));
}

/* Hundreds of blocks of varying length, submitted without waiting for completion (only
 * for room, as kfdtest's PlacePacket counts it): the ring wraps many times, with NOP
 * padding; every block must run exactly once. */
static void wrap(sdma_queue *q, unsigned blocks) {
    PHASE("wrapping the ring");
    const size_t N = 64 * 1024;
    uint32_t *buf = new_svm(N, q->node, 0);
    memset(buf, 0, N);
    uint64_t start = q->wptr_dw;
    unsigned off = 0, pads = 0;
    for (unsigned i = 0; i < blocks; i++) {
        uint32_t data[16], dw[32];
        uint32_t k = 1 + i % 13;
        for (uint32_t j = 0; j < k; j++) data[j] = (i << 8) | (j + 1);
        uint32_t n = pkt_write(dw, &buf[off], data, k);
        if (i % 7 == 3) n += pkt_fence(dw + n, &buf[N / 4 - 1], i);
        uint64_t before = q->wptr_dw;
        if (!SDMA_SUBMIT(q, dw, n)) break;
        if (q->wptr_dw - before != n) pads++;
        off += k;
    }
    SDMA_WAIT(q);
    unsigned laps = (unsigned)((q->wptr_dw - start) / RING_DWORDS);
    fprintf(stderr, "   %u blocks, %u ring laps, %u paddings\n", blocks, laps, pads);
    CHECK(laps >= 5 && pads >= 5, "the ring did not wrap enough");
    off = 0;
    for (unsigned i = 0; i < blocks; i++) {
        uint32_t k = 1 + i % 13;
        for (uint32_t j = 0; j < k; j++)
            if (!CHECK_EQ(buf[off + j], (i << 8) | (j + 1))) {
                i = blocks;
                break;
            }
        off += k;
    }
    CHECK_EQ(buf[N / 4 - 1], blocks - 1 - (blocks - 1 + 7 - 3) % 7);
    munmap(buf, N);
}

static void two_gpus(void) {
    PHASE("two queues on two GPUs at once");
    const size_t N = 8 * MIB;
    HSAuint32 g1 = T.gpus[0], g2 = T.gpus[1];
    char *src1 = map_anon(N), *src2 = map_anon(N);
    fill_pattern(src1, N, 21);
    fill_pattern(src2, N, 22);
    CHECK_OK(register_svm(src1, N, g1, g1, 3));
    CHECK_OK(register_svm(src2, N, g2, g2, 3));
    char *dst1 = new_svm(N, g1, g1), *dst2 = new_svm(N, g2, 0);
    sdma_queue q1, q2;
    SDMA_CREATE(&q1, g1);
    SDMA_CREATE(&q2, g2);
    uint32_t dw[64];
    SDMA_SUBMIT(&q1, dw, pkt_copy_split(dw, dst1, src1, N));
    SDMA_SUBMIT(&q2, dw, pkt_copy_split(dw, dst2, src2, N));
    SDMA_WAIT(&q1);
    SDMA_WAIT(&q2);
    CHECK_PATTERN(dst1, N, 21);
    CHECK_PATTERN(dst2, N, 22);
    /* And a second queue on the same GPU, both busy. */
    sdma_queue q3;
    SDMA_CREATE(&q3, g1);
    CHECK(q3.res.QueueId != q1.res.QueueId, "same queue id");
    SDMA_SUBMIT(&q1, dw, pkt_fill(dw, dst1, 0x01010101, 2 * MIB, 1));
    SDMA_SUBMIT(&q3, dw, pkt_fill(dw, dst1 + 2 * MIB, 0x03030303, 2 * MIB, 1));
    SDMA_WAIT(&q1);
    SDMA_WAIT(&q3);
    CHECK_EQ(((volatile uint32_t *)dst1)[MIB / 2 - 1], 0x01010101);
    CHECK_EQ(((volatile uint32_t *)dst1)[MIB / 2], 0x03030303);
    CHECK_OK(sdma_destroy(&q3));
    CHECK_OK(sdma_destroy(&q1));
    CHECK_OK(sdma_destroy(&q2));
    munmap(src1, N);
    munmap(src2, N);
    munmap(dst1, N);
    munmap(dst2, N);
}

static void xgmi_queue(void) {
    PHASE("an SDMA_XGMI queue");
    const size_t N = 2 * MIB;
    HSAuint32 g = T.gpus[T.num_gpus - 1];
    char *src = map_anon(N);
    fill_pattern(src, N, 31);
    CHECK_OK(register_svm(src, N, g, g, 3));
    char *dst = new_svm(N, g, 0);
    sdma_queue q;
    REQUIRE_OK(sdma_create_type(&q, g, HSA_QUEUE_SDMA_XGMI));
    CHECK_EQ(*q.res.Queue_read_ptr_aql, 0);
    uint32_t dw[16];
    SDMA_SUBMIT(&q, dw, pkt_copy_split(dw, dst, src, N));
    SDMA_WAIT(&q);
    CHECK_PATTERN(dst, N, 31);
    CHECK_OK(sdma_destroy(&q));
    munmap(src, N);
    munmap(dst, N);
}

/* With XNACK on, the GPU reaches memory nobody registered (retry faults). */
static void xnack_unregistered(sdma_queue *q) {
    PHASE("XNACK on: a copy between buffers never registered");
    const size_t N = 1 * MIB;
    char *src = map_anon(N), *dst = map_anon(N);
    fill_pattern(src, N, 41);
    uint32_t dw[16];
    SDMA_SUBMIT(q, dw, pkt_copy_split(dw, dst, src, N));
    SDMA_WAIT(q);
    CHECK_PATTERN(dst, N, 41);
    munmap(src, N);
    munmap(dst, N);
}

static void run_all(int xnack) {
    sdma_queue q;
    SDMA_CREATE(&q, gpu);
    PHASE(xnack ? "16 MiB copies, XNACK on" : "16 MiB copies, XNACK off");
    copy_16m(&q, xnack ? 0x1111 : 0x2222);
    small_packets(&q);
    trap(&q);
    wrap(&q, xnack ? 600 : 800);
    if (xnack) xnack_unregistered(&q);
    CHECK_OK(sdma_destroy(&q));
    if (T.num_gpus > 1) two_gpus();
    xgmi_queue();
}

int main(void) {
    open_kfd(&T);
    gpu = T.gpus[0];
    create_and_errors();
    run_all(0);
    PHASE("switching XNACK on (no queue left)");
    REQUIRE_OK(hsaKmtSetXNACKMode(1));
    run_all(1);
    CHECK_OK(hsaKmtSetXNACKMode(0));
    CHECK_OK(hsaKmtCloseKFD());
    return finish();
}
