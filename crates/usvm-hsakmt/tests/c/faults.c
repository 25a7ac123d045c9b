/*
 * Events and GPU VM faults. Signal events: timeouts, Set/Reset/Query, auto and manual
 * reset, a wake-up from another thread, WaitOnMultipleEvents any/all, handles that are not
 * events. Memory-exception events: an SDMA write to a page the CPU made read-only
 * (kfdtest's ReadOnlyRangeTest, XNACK off and on), and with XNACK off to memory no GPU
 * maps (never registered; a KFD buffer after UnmapMemoryToGPU); the fault's type, node,
 * page address and failure bits; the write never lands; the faulted queue can be destroyed.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <pthread.h>

static topology_t T;
static HSAuint32 gpu;

static HsaEvent *create_event(HSA_EVENTTYPE type, HSAuint32 node, bool manual, bool signaled) {
    HsaEventDescriptor d;
    memset(&d, 0, sizeof d);
    d.EventType = type;
    d.NodeId = node;
    HsaEvent *ev = NULL;
    REQUIRE_OK(hsaKmtCreateEvent(&d, manual, signaled, &ev));
    REQUIRE(ev != NULL, "CreateEvent gave no event");
    return ev;
}

struct setter {
    HsaEvent *ev;
    unsigned delay_ms;
    HSAKMT_STATUS status;
};

static void *set_later(void *arg) {
    struct setter *s = arg;
    sleep_ms(s->delay_ms);
    s->status = hsaKmtSetEvent(s->ev);
    return NULL;
}

static void signal_events(void) {
    PHASE("a wait times out");
    HsaEvent *ev = create_event(HSA_EVENTTYPE_SIGNAL, gpu, true, false);
    CHECK_EQ(ev->EventData.EventType, HSA_EVENTTYPE_SIGNAL);
    uint64_t t0 = now_ns();
    CHECK_STATUS(hsaKmtWaitOnEvent(ev, 50), HSAKMT_STATUS_WAIT_TIMEOUT);
    uint64_t ms = (now_ns() - t0) / 1000000;
    CHECK(ms >= 50 && ms < 2000, "the 50 ms wait took %" PRIu64 " ms", ms);
    CHECK_STATUS(hsaKmtWaitOnEvent(ev, 0), HSAKMT_STATUS_WAIT_TIMEOUT);

    PHASE("set, reset, query (manual reset)");
    CHECK_OK(hsaKmtQueryEventState(ev));
    CHECK_OK(hsaKmtSetEvent(ev));
    CHECK_OK(hsaKmtQueryEventState(ev));
    CHECK_OK(hsaKmtWaitOnEvent(ev, 0));
    CHECK_OK(hsaKmtWaitOnEvent(ev, 10)); /* manual reset: still signalled */
    CHECK_OK(hsaKmtResetEvent(ev));
    CHECK_STATUS(hsaKmtWaitOnEvent(ev, 10), HSAKMT_STATUS_WAIT_TIMEOUT);

    PHASE("auto reset, created signalled");
    HsaEvent *au = create_event(HSA_EVENTTYPE_SIGNAL, gpu, false, true);
    CHECK_OK(hsaKmtWaitOnEvent(au, 0));
    CHECK_STATUS(hsaKmtWaitOnEvent(au, 10), HSAKMT_STATUS_WAIT_TIMEOUT);
    CHECK_OK(hsaKmtSetEvent(au));
    CHECK_OK(hsaKmtSetEvent(au)); /* twice: still one wake-up */
    CHECK_OK(hsaKmtWaitOnEvent(au, 100));
    CHECK_STATUS(hsaKmtWaitOnEvent(au, 10), HSAKMT_STATUS_WAIT_TIMEOUT);

    PHASE("woken by another thread");
    {
        struct setter s = {au, 50, HSAKMT_STATUS_ERROR};
        pthread_t th;
        REQUIRE(pthread_create(&th, NULL, set_later, &s) == 0, "pthread_create");
        t0 = now_ns();
        CHECK_OK(hsaKmtWaitOnEvent(au, 5000));
        ms = (now_ns() - t0) / 1000000;
        pthread_join(th, NULL);
        CHECK_OK(s.status);
        CHECK(ms >= 40 && ms < 4000, "woken after %" PRIu64 " ms", ms);
    }

    PHASE("WaitOnMultipleEvents");
    HsaEvent *a = create_event(HSA_EVENTTYPE_SIGNAL, gpu, false, false);
    HsaEvent *b = create_event(HSA_EVENTTYPE_SIGNAL, gpu, false, false);
    CHECK(a->EventId != b->EventId, "two events with id %u", a->EventId);
    HsaEvent *ab[2] = {a, b};
    CHECK_STATUS(hsaKmtWaitOnMultipleEvents(ab, 2, false, 20), HSAKMT_STATUS_WAIT_TIMEOUT);
    CHECK_STATUS(hsaKmtWaitOnMultipleEvents(ab, 2, true, 20), HSAKMT_STATUS_WAIT_TIMEOUT);
    CHECK_OK(hsaKmtSetEvent(b));
    CHECK_OK(hsaKmtWaitOnMultipleEvents(ab, 2, false, 0)); /* any: b */
    CHECK_STATUS(hsaKmtWaitOnEvent(b, 0), HSAKMT_STATUS_WAIT_TIMEOUT); /* consumed */
    CHECK_OK(hsaKmtSetEvent(a));
    CHECK_OK(hsaKmtSetEvent(b));
    CHECK_OK(hsaKmtWaitOnMultipleEvents(ab, 2, true, 0)); /* all */
    CHECK_STATUS(hsaKmtWaitOnMultipleEvents(ab, 2, false, 10), HSAKMT_STATUS_WAIT_TIMEOUT);
    {
        /* All, the second one set by another thread during the wait. */
        CHECK_OK(hsaKmtSetEvent(a));
        struct setter s = {b, 30, HSAKMT_STATUS_ERROR};
        pthread_t th;
        REQUIRE(pthread_create(&th, NULL, set_later, &s) == 0, "pthread_create");
        CHECK_OK(hsaKmtWaitOnMultipleEvents(ab, 2, true, 5000));
        pthread_join(th, NULL);
        CHECK_OK(s.status);
    }

    PHASE("handles that are not events");
    HsaEvent fake;
    memset(&fake, 0, sizeof fake);
    fake.EventId = a->EventId; /* a copy of a real event is still not one */
    const HSAKMT_STATUS BAD = HSAKMT_STATUS_INVALID_HANDLE;
    CHECK_STATUS(hsaKmtSetEvent(&fake), BAD);
    CHECK_STATUS(hsaKmtResetEvent(&fake), BAD);
    CHECK_STATUS(hsaKmtQueryEventState(&fake), BAD);
    CHECK_STATUS(hsaKmtWaitOnEvent(&fake, 0), BAD);
    CHECK_STATUS(hsaKmtDestroyEvent(&fake), BAD);
    CHECK_STATUS(hsaKmtSetEvent(NULL), BAD);
    CHECK_STATUS(hsaKmtWaitOnEvent(NULL, 0), BAD);
    CHECK_STATUS(hsaKmtDestroyEvent(NULL), BAD);
    HsaEvent *mixed[2] = {a, &fake};
    CHECK_STATUS(hsaKmtWaitOnMultipleEvents(mixed, 2, false, 0), BAD);
    CHECK_STATUS(hsaKmtWaitOnMultipleEvents(NULL, 1, false, 0), BAD);
    HsaEventDescriptor d;
    memset(&d, 0, sizeof d);
    HsaEvent *e = NULL;
    CHECK_STATUS(hsaKmtCreateEvent(NULL, true, false, &e), HSAKMT_STATUS_INVALID_PARAMETER);
    CHECK_STATUS(hsaKmtCreateEvent(&d, true, false, NULL), HSAKMT_STATUS_INVALID_PARAMETER);

    PHASE("destroy");
    CHECK_OK(hsaKmtDestroyEvent(ev));
    CHECK_OK(hsaKmtDestroyEvent(au));
    CHECK_OK(hsaKmtDestroyEvent(a));
    CHECK_OK(hsaKmtDestroyEvent(b));
}

/* Waits for the memory event and checks the fault it reports. */
static void expect_fault(HsaEvent *mem, HsaEvent *sig, HSAuint32 node, const void *page,
                         int read_only) {
    if (!CHECK_OK(hsaKmtWaitOnEvent(mem, 10000))) return;
    HsaMemoryAccessFault *f = &mem->EventData.EventData.MemoryAccessFault;
    CHECK_EQ(mem->EventData.EventType, HSA_EVENTTYPE_MEMORY);
    CHECK_EQ(f->VirtualAddress, (uintptr_t)page);
    CHECK_EQ(f->NodeId, node);
    unsigned want_read_only = read_only ? 1 : 0, want_not_present = read_only ? 0 : 1;
    CHECK_EQ(f->Failure.ReadOnly, want_read_only);
    CHECK_EQ(f->Failure.NotPresent, want_not_present);
    /* Manual reset: it stays signalled until reset. */
    CHECK_OK(hsaKmtWaitOnEvent(mem, 0));
    CHECK_OK(hsaKmtResetEvent(mem));
    CHECK_STATUS(hsaKmtWaitOnEvent(mem, 0), HSAKMT_STATUS_WAIT_TIMEOUT);
    /* Faults signal memory events only. */
    CHECK_STATUS(hsaKmtWaitOnEvent(sig, 0), HSAKMT_STATUS_WAIT_TIMEOUT);
}

/* The queue stopped at the faulting packet and runs nothing after it. */
static void expect_halted(sdma_queue *q, volatile uint32_t *marker) {
    sleep_ms(20);
    CHECK(sdma_rptr32(q) != (uint32_t)(q->wptr_dw * 4), "the faulting packet was consumed");
    CHECK_EQ(*marker, 0);
    CHECK_OK(sdma_destroy(q));
}

/* kfdtest's ReadOnlyRangeTest, in this process. */
static void read_only_page(HsaEvent *mem, HsaEvent *sig) {
    char *in = new_svm(2 * PAGE, gpu, 0);
    memset(in, 0x55, PAGE);
    memset(in + PAGE, 0x66, PAGE);
    REQUIRE(mprotect(in, PAGE, PROT_READ) == 0, "mprotect: %s", strerror(errno));
    char *out = new_svm(PAGE, gpu, 0);
    volatile uint32_t *marker = (volatile uint32_t *)(out + 64);
    sdma_queue q;
    SDMA_CREATE(&q, gpu);

    /* Reading the read-only page is fine. */
    uint32_t dw[16];
    SDMA_SUBMIT(&q, dw, pkt_copy(dw, out, in, PAGE));
    SDMA_WAIT(&q);
    CHECK_EQ(((volatile uint8_t *)out)[0], 0x55);
    CHECK_EQ(((volatile uint8_t *)out)[PAGE - 1], 0x55);
    CHECK_STATUS(hsaKmtWaitOnEvent(mem, 0), HSAKMT_STATUS_WAIT_TIMEOUT);

    /* Writing it faults; the FENCE after it never runs. */
    memset(out, 0xAA, PAGE);
    *marker = 0;
    uint32_t n = pkt_copy(dw, in, out, PAGE);
    n += pkt_fence(dw + n, marker, 0x1234);
    SDMA_SUBMIT(&q, dw, n);
    expect_fault(mem, sig, gpu, in, 1);
    for (size_t i = 0; i < PAGE; i++)
        if (!CHECK_EQ(((volatile uint8_t *)in)[i], 0x55)) break;
    CHECK_EQ(((volatile uint8_t *)in)[PAGE], 0x66);
    expect_halted(&q, marker);
    munmap(in, 2 * PAGE);
    munmap(out, PAGE);
}

/* XNACK off: an SDMA write to memory no GPU maps. */
static void not_mapped(HsaEvent *mem, HsaEvent *sig) {
    uint32_t dw[16];
    char *marks = new_svm(PAGE, gpu, 0);
    volatile uint32_t *marker = (volatile uint32_t *)marks;

    PHASE("a write to memory never registered (XNACK off)");
    char *plain = map_anon(4 * PAGE);
    memset(plain, 0x77, 4 * PAGE);
    sdma_queue q;
    SDMA_CREATE(&q, gpu);
    *marker = 0;
    uint32_t n = pkt_fence(dw, plain + 2 * PAGE + 0x40, 0xBAD);
    n += pkt_fence(dw + n, marker, 1);
    SDMA_SUBMIT(&q, dw, n);
    expect_fault(mem, sig, gpu, plain + 2 * PAGE, 0);
    CHECK_EQ(((volatile uint32_t *)plain)[(2 * PAGE + 0x40) / 4], 0x77777777);
    expect_halted(&q, marker);
    munmap(plain, 4 * PAGE);

    PHASE("a write to a KFD buffer after UnmapMemoryToGPU (XNACK off)");
    HsaMemFlags f;
    f.Value = 0;
    f.ui32.HostAccess = 1;
    void *buf = NULL;
    REQUIRE_OK(hsaKmtAllocMemory(gpu, 2 * PAGE, f, &buf));
    memset(buf, 0, 2 * PAGE);
    HsaMemMapFlags mf;
    mf.Value = 0;
    CHECK_OK(hsaKmtMapMemoryToGPUNodes(buf, 2 * PAGE, NULL, mf, 1, &gpu));
    volatile uint32_t *w = buf;
    SDMA_CREATE(&q, gpu);
    SDMA_SUBMIT(&q, dw, pkt_fence(dw, &w[PAGE / 4 + 3], 0x600D));
    SDMA_WAIT(&q);
    CHECK_EQ(w[PAGE / 4 + 3], 0x600D);
    CHECK_STATUS(hsaKmtWaitOnEvent(mem, 0), HSAKMT_STATUS_WAIT_TIMEOUT);
    CHECK_OK(hsaKmtUnmapMemoryToGPU(buf));
    *marker = 0;
    n = pkt_fence(dw, &w[PAGE / 4 + 5], 0xBAD);
    n += pkt_fence(dw + n, marker, 1);
    SDMA_SUBMIT(&q, dw, n);
    expect_fault(mem, sig, gpu, (char *)buf + PAGE, 0);
    CHECK_EQ(w[PAGE / 4 + 5], 0);
    expect_halted(&q, marker);
    CHECK_OK(hsaKmtFreeMemory(buf, 2 * PAGE));
    munmap(marks, PAGE);
}

int main(void) {
    open_kfd(&T);
    gpu = T.gpus[0];
    signal_events();

    HsaEvent *mem = create_event(HSA_EVENTTYPE_MEMORY, gpu, true, false);
    HsaEvent *sig = create_event(HSA_EVENTTYPE_SIGNAL, gpu, true, false);
    CHECK_EQ(mem->EventData.EventType, HSA_EVENTTYPE_MEMORY);
    CHECK_STATUS(hsaKmtWaitOnEvent(mem, 0), HSAKMT_STATUS_WAIT_TIMEOUT);

    PHASE("a write to a read-only page (XNACK off)");
    read_only_page(mem, sig);
    not_mapped(mem, sig);

    PHASE("a write to a read-only page (XNACK on)");
    REQUIRE_OK(hsaKmtSetXNACKMode(1));
    read_only_page(mem, sig);
    CHECK_OK(hsaKmtSetXNACKMode(0));

    CHECK_OK(hsaKmtDestroyEvent(mem));
    CHECK_OK(hsaKmtDestroyEvent(sig));
    CHECK_OK(hsaKmtCloseKFD());
    return finish();
}
