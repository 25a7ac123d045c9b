/*
 * fork: the parent has the KFD open, an SVM range prefetched to a GPU and an SDMA queue.
 * A child finds the KFD not open, closes what it inherited, opens a fresh one, reads the
 * parent's data (every byte), and uses SVM with a queue of its own. The parent's range and
 * queue keep working after the child exits, after children that exit without closing
 * (some with queues of their own), and across a fork while its queue is busy.
 */
#define _GNU_SOURCE
#include "harness.h"

static topology_t T;
static HSAuint32 gpu;

enum { N = 4 << 20, SEED = 0xF00D, CHILD_MS = 20000 };

static char *src, *dst;
static sdma_queue q;

/* The parent's queue copies src to a buffer and the CPU checks it. */
static void parent_copy_works(const char *when) {
    PHASE(when);
    memset(dst, 0, N);
    uint32_t dw[32];
    SDMA_SUBMIT(&q, dw, pkt_copy_split(dw, dst, src, N));
    SDMA_WAIT(&q);
    CHECK_PATTERN(dst, N, SEED);
    HSA_SVM_ATTRIBUTE a = {HSA_SVM_ATTR_PREFETCH_LOC, 0};
    CHECK_OK(hsaKmtSVMGetAttr(src, N, 1, &a));
    CHECK_EQ(a.value, gpu);
}

static int child_uses_svm(void) {
    PHASE("child: the inherited KFD is not open here");
    const HSAKMT_STATUS NOT_OPEN = HSAKMT_STATUS_KERNEL_IO_CHANNEL_NOT_OPENED;
    HsaVersionInfo v;
    HsaSystemProperties sys;
    HSAint32 x;
    HSA_SVM_ATTRIBUTE a = {HSA_SVM_ATTR_PREFETCH_LOC, 0};
    CHECK_STATUS(hsaKmtGetVersion(&v), NOT_OPEN);
    CHECK_STATUS(hsaKmtAcquireSystemProperties(&sys), NOT_OPEN);
    CHECK_STATUS(hsaKmtGetXNACKMode(&x), NOT_OPEN);
    CHECK_STATUS(hsaKmtSVMGetAttr(src, N, 1, &a), NOT_OPEN);
    CHECK_STATUS(hsaKmtDestroyQueue(q.res.QueueId), NOT_OPEN);
    CHECK_OK(hsaKmtReleaseSystemProperties());

    PHASE("child: close the inherited one, open a fresh one");
    CHECK_OK(hsaKmtCloseKFD());
    CHECK_OK(hsaKmtOpenKFD()); /* SUCCESS, not KERNEL_ALREADY_OPENED */
    CHECK_STATUS(hsaKmtOpenKFD(), HSAKMT_STATUS_KERNEL_ALREADY_OPENED);
    CHECK_OK(hsaKmtCloseKFD());
    get_topology(&T);
    CHECK_OK(hsaKmtGetVersion(&v));
    CHECK_OK(hsaKmtGetXNACKMode(&x));
    CHECK_EQ(x, 0);
    /* Fresh state: the parent's range is unknown to the child's KFD. */
    CHECK_OK(hsaKmtSVMGetAttr(src, N, 1, &a));
    CHECK_EQ(a.value, INVALID_NODEID);
    /* And so is the parent's queue. */
    CHECK_STATUS(hsaKmtDestroyQueue(q.res.QueueId), HSAKMT_STATUS_INVALID_HANDLE);

    PHASE("child: the parent's data is there");
    CHECK_PATTERN(src, N, SEED);
    CHECK_PATTERN(dst, N, SEED);

    PHASE("child: SVM and a queue of its own");
    CHECK_OK(register_svm(src, N, gpu, 0, 3));
    char *mine = new_svm(N, gpu, gpu);
    sdma_queue cq;
    SDMA_CREATE(&cq, gpu);
    uint32_t dw[32];
    SDMA_SUBMIT(&cq, dw, pkt_copy_split(dw, mine, src, N));
    SDMA_WAIT(&cq);
    CHECK_PATTERN(mine, N, SEED);
    /* Its writes stay in the child (copy-on-write), also the GPU's. */
    fill_pattern(mine, N, 0xC41D);
    CHECK_OK(prefetch_svm(mine, N, gpu));
    SDMA_SUBMIT(&cq, dw, pkt_copy_split(dw, src, mine, N));
    SDMA_WAIT(&cq);
    CHECK_PATTERN(src, N, 0xC41D);
    CHECK_OK(sdma_destroy(&cq));
    munmap(mine, N);
    CHECK_OK(hsaKmtCloseKFD());
    CHECK_STATUS(hsaKmtCloseKFD(), HSAKMT_STATUS_KERNEL_IO_CHANNEL_NOT_OPENED);
    return finish();
}

/* A child that reopens, starts a queue, and exits with both alive. */
static int child_exits_with_a_queue(void) {
    CHECK_OK(hsaKmtCloseKFD());
    CHECK_OK(hsaKmtOpenKFD());
    char *mine = new_svm(PAGE, gpu, 0);
    sdma_queue cq;
    SDMA_CREATE(&cq, gpu);
    uint32_t dw[8];
    SDMA_SUBMIT(&cq, dw, pkt_fence(dw, mine, 0xC0DE));
    SDMA_WAIT(&cq);
    CHECK_EQ(*(volatile uint32_t *)mine, 0xC0DE);
    return finish();
}

static void run_child(int (*body)(void), int how, const char *what) {
    PHASE(what);
    fflush(stderr);
    pid_t pid = fork();
    REQUIRE(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        int rc = body ? body() : 0;
        if (how == 0) exit(rc); /* atexit handlers and library destructors run */
        _exit(rc);
    }
    int rc = wait_child(pid, CHILD_MS);
    CHECK(rc == 0, "%s: the child ended with %d", what, rc);
}

int main(void) {
    open_kfd(&T);
    gpu = T.gpus[0];
    src = map_anon(N);
    fill_pattern(src, N, SEED);
    REQUIRE_OK(register_svm(src, N, gpu, gpu, 3)); /* prefetched to VRAM */
    dst = new_svm(N, gpu, 0);
    SDMA_CREATE(&q, gpu);
    parent_copy_works("parent before any fork");

    run_child(child_uses_svm, 0, "a child that reopens and uses SVM");
    parent_copy_works("parent after that child");
    CHECK_PATTERN(src, N, SEED); /* untouched by the child's writes */

    run_child(NULL, 0, "a child that exits at once, without closing");
    parent_copy_works("parent after a child exited without closing");

    run_child(child_exits_with_a_queue, 0, "a child that exits with its own queue alive");
    run_child(child_exits_with_a_queue, 1, "a child that _exits with its own queue alive");
    parent_copy_works("parent after children with queues");

    PHASE("a fork while the parent's queue copies");
    {
        char *big_src = map_anon(16 << 20), *big_dst = new_svm(16 << 20, gpu, gpu);
        fill_pattern(big_src, 16 << 20, 0xB16);
        CHECK_OK(register_svm(big_src, 16 << 20, gpu, gpu, 3));
        uint32_t dw[64];
        SDMA_SUBMIT(&q, dw, pkt_copy_split(dw, big_dst, big_src, 16 << 20));
        fflush(stderr);
        pid_t pid = fork();
        REQUIRE(pid >= 0, "fork");
        if (pid == 0) {
            CHECK_OK(hsaKmtCloseKFD());
            exit(finish());
        }
        SDMA_WAIT(&q);
        CHECK_EQ(wait_child(pid, CHILD_MS), 0);
        CHECK_PATTERN(big_dst, 16 << 20, 0xB16);
        munmap(big_src, 16 << 20);
        munmap(big_dst, 16 << 20);
    }
    parent_copy_works("parent at the end");

    CHECK_OK(sdma_destroy(&q));
    CHECK_OK(hsaKmtCloseKFD());
    return finish();
}
