/*
 * hsaKmtOpenSMI: a real descriptor of a GPU's SMI events. As kfdtest's HMMProfilingEvent:
 * write the 8-byte mask (MIGRATE_START), prefetch a 16 KiB range the CPU never touched to
 * the GPU, poll, read one line and parse it with kfdtest's sscanf format. A mask without
 * the event gets no record; each GPU's file reports the migrations to and from that GPU
 * only. Bad nodes and a null fd.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <poll.h>

static topology_t T;
static HSAuint32 gpu;

static int open_smi(HSAuint32 node, uint64_t mask) {
    int fd = -1;
    REQUIRE_OK(hsaKmtOpenSMI(node, &fd));
    REQUIRE(fd >= 0, "OpenSMI gave fd %d", fd);
    ssize_t w = write(fd, &mask, sizeof mask);
    CHECK(w == 8, "write of the mask returned %zd (%s)", w, w < 0 ? strerror(errno) : "");
    return fd;
}

/* poll(fd, POLLIN, ms): > 0 when a record is there. */
static int readable(int fd, int ms) {
    struct pollfd p = {fd, POLLIN, 0};
    return poll(&p, 1, ms);
}

/* Everything the file holds within 1 s (then 50 ms of quiet), NUL-terminated in buf;
 * the number of lines. */
static int read_records(int fd, char *buf, size_t size) {
    memset(buf, 0, size);
    size_t len = 0;
    int wait = 1000;
    while (len + 1 < size && readable(fd, wait) > 0) {
        ssize_t n = read(fd, buf + len, size - 1 - len);
        if (n <= 0) break;
        len += (size_t)n;
        wait = 50;
    }
    buf[len] = 0;
    int lines = 0;
    for (size_t i = 0; i < len; i++) lines += buf[i] == '\n';
    if (lines != 1) fprintf(stderr, "   records: %s", buf);
    return lines;
}

static void migrate_start_record(void) {
    PHASE("a MIGRATE_START record (kfdtest's HMMProfilingEvent)");
    const size_t N = 16 * 1024;
    int fd = open_smi(gpu, HSA_SMI_EVENT_MASK_FROM_INDEX(HSA_SMI_EVENT_MIGRATE_START));
    /* Registered with prefetch and preferred location 0: nothing migrates yet. */
    char *p = new_svm(N, gpu, 0);
    CHECK_EQ(readable(fd, 50), 0);
    CHECK_OK(prefetch_svm(p, N, gpu));
    int r = readable(fd, 1000);
    if (!CHECK(r > 0, "poll returned %d: no record within 1 s", r)) {
        close(fd);
        munmap(p, N);
        return;
    }
    char msg[HSA_SMI_EVENT_MSG_SIZE + 1];
    memset(msg, 0, sizeof msg);
    ssize_t got = read(fd, msg, HSA_SMI_EVENT_MSG_SIZE);
    CHECK(got > 0, "read returned %zd", got);
    fprintf(stderr, "   record: %s", msg);
    unsigned id = 0, to = 0, prefetch = 0, from_gpu = 0, np = 0;
    long ts = 0;
    int pid = 0, size = 0, from = -1, preferred = -1, trigger = -1;
    unsigned long addr = 0;
    int fields = sscanf(msg, "%x %ld -%d @%lx(%d) %d->%x %x:%d %d\n", &id, &ts, &pid, &addr,
                        &size, &from, &to, &prefetch, &preferred, &trigger);
    CHECK_EQ(fields, 10);
    CHECK_EQ(id, HSA_SMI_EVENT_MIGRATE_START);
    CHECK(ts > 0, "timestamp %ld", ts);
    CHECK_EQ(pid, getpid());
    CHECK_EQ(addr << 12, (uintptr_t)p);
    CHECK_EQ((unsigned long)size << 12, N);
    CHECK_EQ(from, 0);                       /* system memory */
    CHECK_EQ(to, T.props[gpu].KFDGpuID);     /* gpu ids, not node ids */
    CHECK_EQ(prefetch, T.props[gpu].KFDGpuID);
    CHECK_EQ(preferred, 0);
    CHECK_EQ(trigger, HSA_MIGRATE_TRIGGER_PREFETCH);
    CHECK(strchr(msg, '\n') != NULL, "the record is not a line");

    PHASE("back to RAM; another GPU's migrations go to its own file");
    CHECK_OK(prefetch_svm(p, N, 0));
    CHECK_EQ(read_records(fd, msg, sizeof msg), 1); /* gpu -> 0 */
    CHECK_EQ(sscanf(msg, "%x %ld -%d @%lx(%x) %x->%x", &id, &ts, &pid, &addr, &np, &from_gpu,
                    &to),
             7);
    CHECK_EQ(id, HSA_SMI_EVENT_MIGRATE_START);
    CHECK_EQ(np, 4);
    CHECK_EQ(from_gpu, T.props[gpu].KFDGpuID);
    CHECK_EQ(to, 0);
    if (T.num_gpus > 1) {
        HSAuint32 gpu2 = T.gpus[1];
        int fd2 = open_smi(gpu2, HSA_SMI_EVENT_MASK_FROM_INDEX(HSA_SMI_EVENT_MIGRATE_START));
        char *p2 = new_svm(N, gpu2, 0);
        CHECK_OK(prefetch_svm(p2, N, gpu2));
        CHECK_EQ(read_records(fd2, msg, sizeof msg), 1);
        CHECK_EQ(sscanf(msg, "%x %ld -%d @%lx(%x) %x->%x", &id, &ts, &pid, &addr, &np, &from_gpu,
                        &to),
                 7);
        CHECK_EQ(id, HSA_SMI_EVENT_MIGRATE_START);
        CHECK_EQ(addr << 12, (uintptr_t)p2);
        CHECK_EQ(from_gpu, 0);
        CHECK_EQ(to, T.props[gpu2].KFDGpuID);
        CHECK_EQ(readable(fd, 100), 0);
        close(fd2);
        munmap(p2, N);
    }
    /* To the GPU again: a second record, as the first. */
    CHECK_OK(prefetch_svm(p, N, gpu));
    if (CHECK(readable(fd, 1000) > 0, "no second record")) {
        memset(msg, 0, sizeof msg);
        got = read(fd, msg, HSA_SMI_EVENT_MSG_SIZE);
        fields = sscanf(msg, "%x %ld -%d @%lx(%d) %d->%x %x:%d %d\n", &id, &ts, &pid, &addr, &size,
                        &from, &to, &prefetch, &preferred, &trigger);
        CHECK_EQ(fields, 10);
        CHECK_EQ(id, HSA_SMI_EVENT_MIGRATE_START);
        CHECK_EQ(addr << 12, (uintptr_t)p);
        CHECK_EQ(to, T.props[gpu].KFDGpuID);
    }
    CHECK(close(fd) == 0, "close");
    munmap(p, N);
}

static void masked_out(void) {
    PHASE("a mask without MIGRATE_START gets no record");
    const size_t N = 16 * 1024;
    int fd = open_smi(gpu, HSA_SMI_EVENT_MASK_FROM_INDEX(HSA_SMI_EVENT_THERMAL_THROTTLE));
    char *p = new_svm(N, gpu, 0);
    CHECK_OK(prefetch_svm(p, N, gpu));
    CHECK_EQ(readable(fd, 300), 0);
    /* A new mask takes effect for later events. */
    uint64_t mask = HSA_SMI_EVENT_MASK_FROM_INDEX(HSA_SMI_EVENT_MIGRATE_START);
    CHECK(write(fd, &mask, 8) == 8, "second mask");
    CHECK_OK(prefetch_svm(p, N, 0));
    CHECK_OK(prefetch_svm(p, N, gpu));
    CHECK(readable(fd, 1000) > 0, "no record after the mask changed");
    close(fd);
    munmap(p, N);
}

int main(void) {
    open_kfd(&T);
    gpu = T.gpus[0];
    migrate_start_record();
    masked_out();

    PHASE("bad arguments");
    int fd = -1;
    CHECK_STATUS(hsaKmtOpenSMI(0, &fd), HSAKMT_STATUS_INVALID_NODE_UNIT);
    CHECK_STATUS(hsaKmtOpenSMI(T.num_nodes, &fd), HSAKMT_STATUS_INVALID_NODE_UNIT);
    CHECK_STATUS(hsaKmtOpenSMI(gpu, NULL), HSAKMT_STATUS_INVALID_PARAMETER);
    CHECK_OK(hsaKmtCloseKFD());
    return finish();
}
