/*
 * hsaKmtGetXNACKMode / hsaKmtSetXNACKMode: off by default, switchable while the process
 * has no queue, refused (ERROR, errno EBUSY) while any queue exists, even to the mode it
 * is already in (kfdtest's XNACKModeTest): with a compute queue on each GPU, with an SDMA
 * queue, and with an SDMA_XGMI queue.
 */
#define _GNU_SOURCE
#include "harness.h"

static HSAint32 mode(void) {
    HSAint32 x = -1;
    CHECK_OK(hsaKmtGetXNACKMode(&x));
    return x;
}

/* A compute queue on its kfdtest-style ring (nothing is submitted). */
typedef struct {
    void *ring;
    HsaQueueResource res;
} compute_queue;

static void compute_create(compute_queue *q, HSAuint32 node) {
    memset(q, 0, sizeof *q);
    REQUIRE_OK(hsaKmtAllocMemory(node, RING_BYTES, ring_flags(), &q->ring));
    HsaMemMapFlags mf;
    mf.Value = 0;
    REQUIRE_OK(hsaKmtMapMemoryToGPUNodes(q->ring, RING_BYTES, NULL, mf, 1, &node));
    REQUIRE_OK(hsaKmtCreateQueue(node, HSA_QUEUE_COMPUTE, 100, HSA_QUEUE_PRIORITY_NORMAL, q->ring,
                                 RING_BYTES, NULL, &q->res));
    CHECK(q->res.Queue_read_ptr != NULL && q->res.Queue_write_ptr != NULL &&
              q->res.Queue_DoorBell != NULL,
          "CreateQueue left a pointer null");
}

static void compute_destroy(compute_queue *q) {
    CHECK_OK(hsaKmtDestroyQueue(q->res.QueueId));
    CHECK_OK(hsaKmtUnmapMemoryToGPU(q->ring));
    CHECK_OK(hsaKmtFreeMemory(q->ring, RING_BYTES));
}

/* With some queue alive, both modes are refused with EBUSY and the mode stays. */
static void refused(HSAint32 current) {
    CHECK_ERRNO(hsaKmtSetXNACKMode(current), EBUSY);
    CHECK_ERRNO(hsaKmtSetXNACKMode(!current), EBUSY);
    CHECK_EQ(mode(), current);
}

int main(void) {
    topology_t T;
    open_kfd(&T);
    HSAuint32 gpu = T.gpus[0];

    PHASE("default and switching without queues");
    CHECK_EQ(mode(), 0);
    CHECK_OK(hsaKmtSetXNACKMode(0)); /* the same mode: nothing to do */
    CHECK_EQ(mode(), 0);
    CHECK_OK(hsaKmtSetXNACKMode(1));
    CHECK_EQ(mode(), 1);
    CHECK_OK(hsaKmtSetXNACKMode(1));
    CHECK_EQ(mode(), 1);
    CHECK_OK(hsaKmtSetXNACKMode(0));
    CHECK_EQ(mode(), 0);
    CHECK_STATUS(hsaKmtGetXNACKMode(NULL), HSAKMT_STATUS_INVALID_PARAMETER);

    /* kfdtest's XNACKModeTest: toggle twice; after each successful toggle, a compute queue
     * on every GPU node makes SetXNACKMode(same mode) fail. */
    for (int round = 0; round < 2; round++) {
        PHASE(round == 0 ? "compute queues, XNACK on" : "compute queues, XNACK off");
        HSAint32 want = round == 0 ? 1 : 0;
        CHECK_OK(hsaKmtSetXNACKMode(want));
        CHECK_EQ(mode(), want);
        for (HSAuint32 i = 0; i < T.num_gpus; i++) {
            compute_queue q;
            compute_create(&q, T.gpus[i]);
            CHECK_ERRNO(hsaKmtSetXNACKMode(want), EBUSY);
            compute_destroy(&q);
        }
        /* Queues on every GPU at once: refused until the last one goes. */
        compute_queue qs[MAX_NODES];
        for (HSAuint32 i = 0; i < T.num_gpus; i++) compute_create(&qs[i], T.gpus[i]);
        for (HSAuint32 i = 0; i < T.num_gpus; i++) {
            refused(want);
            compute_destroy(&qs[i]);
        }
        CHECK_OK(hsaKmtSetXNACKMode(want));
    }

    PHASE("an SDMA queue");
    for (HSAint32 want = 1; want >= 0; want--) {
        CHECK_OK(hsaKmtSetXNACKMode(want));
        sdma_queue q;
        SDMA_CREATE(&q, gpu);
        refused(want);
        CHECK_OK(sdma_destroy(&q));
        CHECK_OK(hsaKmtSetXNACKMode(!want));
        CHECK_EQ(mode(), !want);
    }

    PHASE("an SDMA_XGMI queue");
    {
        sdma_queue q;
        REQUIRE_OK(sdma_create_type(&q, gpu, HSA_QUEUE_SDMA_XGMI));
        refused(mode());
        CHECK_OK(sdma_destroy(&q));
    }

    PHASE("a queue destroyed by closing the KFD");
    CHECK_OK(hsaKmtSetXNACKMode(0));
    {
        sdma_queue q;
        SDMA_CREATE(&q, gpu);
        refused(0);
        CHECK_OK(hsaKmtCloseKFD());
        CHECK_OK(hsaKmtOpenKFD());
        /* A new KFD: no queue, the configured mode (off). */
        CHECK_EQ(mode(), 0);
        CHECK_OK(hsaKmtSetXNACKMode(1));
        CHECK_EQ(mode(), 1);
        CHECK_OK(hsaKmtSetXNACKMode(0));
    }

    CHECK_OK(hsaKmtCloseKFD());
    return finish();
}
