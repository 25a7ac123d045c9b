/*
 * Every function of hsakmt.h links (the table below names each one; c_tests.rs checks that
 * it lists every function the header declares), and each one usvm does not implement
 * returns HSAKMT_STATUS_NOT_SUPPORTED without touching its (NULL) arguments. A few
 * implemented calls no other test uses: GetClockCounters, GetNodeCacheProperties,
 * AllocMemoryAlign, CreateQueueExt, the _Ext waits.
 */
#define _GNU_SOURCE
#include "harness.h"

typedef void (*any_fn)(void);
#define FN(f) {#f, (any_fn)(f)}

/* Every function hsakmt.h declares. */
static const struct {
    const char *name;
    any_fn fn;
} all_functions[] = {
    FN(hsaKmtOpenKFD), FN(hsaKmtCloseKFD), FN(hsaKmtGetVersion),
    FN(hsaKmtAcquireSystemProperties), FN(hsaKmtReleaseSystemProperties),
    FN(hsaKmtGetNodeProperties), FN(hsaKmtGetNodeMemoryProperties),
    FN(hsaKmtGetNodeCacheProperties), FN(hsaKmtGetNodeIoLinkProperties),
    FN(hsaKmtCreateEvent), FN(hsaKmtDestroyEvent), FN(hsaKmtSetEvent), FN(hsaKmtResetEvent),
    FN(hsaKmtQueryEventState), FN(hsaKmtWaitOnEvent), FN(hsaKmtWaitOnEvent_Ext),
    FN(hsaKmtWaitOnMultipleEvents), FN(hsaKmtWaitOnMultipleEvents_Ext),
    FN(hsaKmtReportQueue), FN(hsaKmtCreateQueue), FN(hsaKmtCreateQueueExt),
    FN(hsaKmtUpdateQueue), FN(hsaKmtDestroyQueue), FN(hsaKmtSetQueueCUMask),
    FN(hsaKmtGetQueueInfo), FN(hsaKmtSetMemoryPolicy), FN(hsaKmtAllocMemory),
    FN(hsaKmtAllocMemoryAlign), FN(hsaKmtFreeMemory), FN(hsaKmtAvailableMemory),
    FN(hsaKmtRegisterMemory), FN(hsaKmtRegisterMemoryToNodes),
    FN(hsaKmtRegisterMemoryWithFlags), FN(hsaKmtRegisterGraphicsHandleToNodes),
    FN(hsaKmtRegisterGraphicsHandleToNodesExt), FN(hsaKmtExportDMABufHandle),
    FN(hsaKmtShareMemory), FN(hsaKmtRegisterSharedHandle), FN(hsaKmtRegisterSharedHandleToNodes),
    FN(hsaKmtProcessVMRead), FN(hsaKmtProcessVMWrite), FN(hsaKmtDeregisterMemory),
    FN(hsaKmtMapMemoryToGPU), FN(hsaKmtMapMemoryToGPUNodes), FN(hsaKmtUnmapMemoryToGPU),
    FN(hsaKmtMapGraphicHandle), FN(hsaKmtUnmapGraphicHandle), FN(hsaKmtGetAMDGPUDeviceHandle),
    FN(hsaKmtAllocQueueGWS), FN(hsaKmtDbgRegister), FN(hsaKmtDbgUnregister),
    FN(hsaKmtDbgWavefrontControl), FN(hsaKmtDbgAddressWatch), FN(hsaKmtRuntimeEnable),
    FN(hsaKmtRuntimeDisable), FN(hsaKmtGetRuntimeCapabilities), FN(hsaKmtDbgEnable),
    FN(hsaKmtDbgDisable), FN(hsaKmtDbgGetDeviceData), FN(hsaKmtDbgGetQueueData),
    FN(hsaKmtCheckRuntimeDebugSupport), FN(hsaKmtDebugTrapIoctl), FN(hsaKmtGetClockCounters),
    FN(hsaKmtPmcGetCounterProperties), FN(hsaKmtPmcRegisterTrace), FN(hsaKmtPmcUnregisterTrace),
    FN(hsaKmtPmcAcquireTraceAccess), FN(hsaKmtPmcReleaseTraceAccess), FN(hsaKmtPmcStartTrace),
    FN(hsaKmtPmcQueryTrace), FN(hsaKmtPmcStopTrace), FN(hsaKmtSetTrapHandler),
    FN(hsaKmtGetTileConfig), FN(hsaKmtQueryPointerInfo), FN(hsaKmtSetMemoryUserData),
    FN(hsaKmtSPMAcquire), FN(hsaKmtSPMRelease), FN(hsaKmtSPMSetDestBuffer), FN(hsaKmtSVMSetAttr),
    FN(hsaKmtSVMGetAttr), FN(hsaKmtSetXNACKMode), FN(hsaKmtGetXNACKMode), FN(hsaKmtOpenSMI),
    FN(hsaKmtReplaceAsanHeaderPage), FN(hsaKmtReturnAsanHeaderPage), FN(hsaKmtPcSamplingSupport),
    FN(hsaKmtPcSamplingQueryCapabilities), FN(hsaKmtPcSamplingCreate),
    FN(hsaKmtPcSamplingDestroy), FN(hsaKmtPcSamplingStart), FN(hsaKmtPcSamplingStop),
};

static void stubs(HSAuint32 gpu) {
    PHASE("unimplemented functions return NOT_SUPPORTED");
    const HSAKMT_STATUS NS = HSAKMT_STATUS_NOT_SUPPORTED;
    HsaMemFlags mf;
    mf.Value = 0;
    HSA_REGISTER_MEM_FLAGS rf;
    rf.Value = 0;

    CHECK_STATUS(hsaKmtReportQueue(1, NULL), NS);
    CHECK_STATUS(hsaKmtUpdateQueue(1, 100, HSA_QUEUE_PRIORITY_NORMAL, NULL, 0, NULL), NS);
    CHECK_STATUS(hsaKmtSetQueueCUMask(1, 0, NULL), NS);
    CHECK_STATUS(hsaKmtGetQueueInfo(1, NULL), NS);
    CHECK_STATUS(hsaKmtSetMemoryPolicy(gpu, 0, 0, NULL, 0), NS);
    CHECK_STATUS(hsaKmtRegisterGraphicsHandleToNodes(0, NULL, 0, NULL), NS);
    CHECK_STATUS(hsaKmtRegisterGraphicsHandleToNodesExt(0, NULL, 0, NULL, rf), NS);
    CHECK_STATUS(hsaKmtExportDMABufHandle(NULL, 0, NULL, NULL), NS);
    CHECK_STATUS(hsaKmtShareMemory(NULL, 0, NULL), NS);
    CHECK_STATUS(hsaKmtRegisterSharedHandle(NULL, NULL, NULL), NS);
    CHECK_STATUS(hsaKmtRegisterSharedHandleToNodes(NULL, NULL, NULL, 0, NULL), NS);
    CHECK_STATUS(hsaKmtProcessVMRead(0, NULL, 0, NULL, 0, NULL), NS);
    CHECK_STATUS(hsaKmtProcessVMWrite(0, NULL, 0, NULL, 0, NULL), NS);
    CHECK_STATUS(hsaKmtMapGraphicHandle(gpu, 0, 0, 0, 0, NULL), NS);
    CHECK_STATUS(hsaKmtUnmapGraphicHandle(gpu, 0, 0), NS);
    CHECK_STATUS(hsaKmtGetAMDGPUDeviceHandle(gpu, NULL), NS);
    CHECK_STATUS(hsaKmtAllocQueueGWS(1, 1, NULL), NS);
    CHECK_STATUS(hsaKmtDbgRegister(gpu), NS);
    CHECK_STATUS(hsaKmtDbgUnregister(gpu), NS);
    CHECK_STATUS(hsaKmtDbgWavefrontControl(gpu, HSA_DBG_WAVEOP_HALT, HSA_DBG_WAVEMODE_SINGLE, 0, NULL), NS);
    CHECK_STATUS(hsaKmtDbgAddressWatch(gpu, 0, NULL, NULL, NULL, NULL), NS);
    CHECK_STATUS(hsaKmtRuntimeEnable(NULL, false), NS);
    CHECK_STATUS(hsaKmtRuntimeDisable(), NS);
    CHECK_STATUS(hsaKmtGetRuntimeCapabilities(NULL), NS);
    CHECK_STATUS(hsaKmtDbgEnable(NULL, NULL), NS);
    CHECK_STATUS(hsaKmtDbgDisable(), NS);
    CHECK_STATUS(hsaKmtDbgGetDeviceData(NULL, NULL, NULL), NS);
    CHECK_STATUS(hsaKmtDbgGetQueueData(NULL, NULL, NULL, false), NS);
    CHECK_STATUS(hsaKmtCheckRuntimeDebugSupport(), NS);
    CHECK_STATUS(hsaKmtDebugTrapIoctl(NULL, NULL, NULL), NS);
    CHECK_STATUS(hsaKmtPmcGetCounterProperties(gpu, NULL), NS);
    CHECK_STATUS(hsaKmtPmcRegisterTrace(gpu, 0, NULL, NULL), NS);
    CHECK_STATUS(hsaKmtPmcUnregisterTrace(gpu, 0), NS);
    CHECK_STATUS(hsaKmtPmcAcquireTraceAccess(gpu, 0), NS);
    CHECK_STATUS(hsaKmtPmcReleaseTraceAccess(gpu, 0), NS);
    CHECK_STATUS(hsaKmtPmcStartTrace(0, NULL, 0), NS);
    CHECK_STATUS(hsaKmtPmcQueryTrace(0), NS);
    CHECK_STATUS(hsaKmtPmcStopTrace(0), NS);
    CHECK_STATUS(hsaKmtSetTrapHandler(gpu, NULL, 0, NULL, 0), NS);
    CHECK_STATUS(hsaKmtGetTileConfig(gpu, NULL), NS);
    CHECK_STATUS(hsaKmtQueryPointerInfo(NULL, NULL), NS);
    CHECK_STATUS(hsaKmtSetMemoryUserData(NULL, NULL), NS);
    CHECK_STATUS(hsaKmtSPMAcquire(gpu), NS);
    CHECK_STATUS(hsaKmtSPMRelease(gpu), NS);
    CHECK_STATUS(hsaKmtSPMSetDestBuffer(gpu, 0, NULL, NULL, NULL, NULL), NS);
    CHECK_STATUS(hsaKmtReplaceAsanHeaderPage(NULL), NS);
    CHECK_STATUS(hsaKmtReturnAsanHeaderPage(NULL), NS);
    CHECK_STATUS(hsaKmtPcSamplingSupport(), NS);
    CHECK_STATUS(hsaKmtPcSamplingQueryCapabilities(gpu, NULL, 0, NULL), NS);
    CHECK_STATUS(hsaKmtPcSamplingCreate(gpu, NULL, NULL), NS);
    CHECK_STATUS(hsaKmtPcSamplingDestroy(gpu, 0), NS);
    CHECK_STATUS(hsaKmtPcSamplingStart(gpu, 0), NS);
    CHECK_STATUS(hsaKmtPcSamplingStop(gpu, 0), NS);
    /* With real arguments too: a pointer the library knows, a real queue id. */
    void *p = NULL;
    mf.ui32.HostAccess = 1;
    if (CHECK_OK(hsaKmtAllocMemory(0, PAGE, mf, &p))) {
        HsaPointerInfo info;
        memset(&info, 0x5a, sizeof info);
        CHECK_STATUS(hsaKmtQueryPointerInfo(p, &info), NS);
        CHECK_EQ(info.Type, 0x5a5a5a5au); /* untouched */
        CHECK_OK(hsaKmtFreeMemory(p, PAGE));
    }
}

static void other_entry_points(HSAuint32 gpu) {
    PHASE("GetClockCounters");
    HsaClockCounters c1, c2;
    memset(&c1, 0, sizeof c1);
    CHECK_OK(hsaKmtGetClockCounters(gpu, &c1));
    sleep_ms(2);
    CHECK_OK(hsaKmtGetClockCounters(gpu, &c2));
    CHECK(c1.GPUClockCounter != 0 && c1.CPUClockCounter != 0 && c1.SystemClockCounter != 0,
          "a counter is 0");
    CHECK(c1.SystemClockFrequencyHz > 0, "frequency 0");
    CHECK(c2.SystemClockCounter > c1.SystemClockCounter, "the clock did not advance");
    CHECK_STATUS(hsaKmtGetClockCounters(gpu, NULL), HSAKMT_STATUS_INVALID_PARAMETER);
    topology_t T;
    get_topology(&T);
    CHECK_STATUS(hsaKmtGetClockCounters(T.num_nodes, &c1), HSAKMT_STATUS_INVALID_NODE_UNIT);

    PHASE("GetNodeCacheProperties");
    CHECK_EQ(T.props[gpu].NumCaches, 0);
    CHECK_OK(hsaKmtGetNodeCacheProperties(gpu, 0, 0, NULL));
    HsaCacheProperties cp;
    CHECK_STATUS(hsaKmtGetNodeCacheProperties(T.num_nodes, 0, 0, &cp),
                 HSAKMT_STATUS_INVALID_NODE_UNIT);

    PHASE("AllocMemoryAlign");
    HsaMemFlags mf;
    mf.Value = 0;
    mf.ui32.HostAccess = 1;
    void *p = NULL;
    CHECK_OK(hsaKmtAllocMemoryAlign(0, 3 * PAGE, PAGE, mf, &p));
    CHECK(((uintptr_t)p & (PAGE - 1)) == 0, "%p", p);
    if (p) CHECK_OK(hsaKmtFreeMemory(p, 3 * PAGE));

    PHASE("CreateQueueExt and the _Ext waits");
    void *ring = NULL;
    HsaMemFlags rfl = ring_flags();
    REQUIRE_OK(hsaKmtAllocMemory(gpu, RING_BYTES, rfl, &ring));
    HsaMemMapFlags mmf;
    mmf.Value = 0;
    CHECK_OK(hsaKmtMapMemoryToGPUNodes(ring, RING_BYTES, NULL, mmf, 1, &gpu));
    memset(ring, 0, RING_BYTES);
    sdma_queue q;
    memset(&q, 0, sizeof q);
    q.node = gpu;
    q.ring = ring;
    REQUIRE_OK(hsaKmtCreateQueueExt(gpu, HSA_QUEUE_SDMA, 100, HSA_QUEUE_PRIORITY_NORMAL, 1, ring,
                                    RING_BYTES, NULL, &q.res));
    HsaEventDescriptor d;
    memset(&d, 0, sizeof d);
    d.EventType = HSA_EVENTTYPE_SIGNAL;
    d.NodeId = gpu;
    HsaEvent *ev = NULL;
    REQUIRE_OK(hsaKmtCreateEvent(&d, false, false, &ev));
    uint32_t dw[8];
    uint32_t n = pkt_fence(dw, (volatile void *)(uintptr_t)ev->EventData.HWData2, ev->EventId);
    n += pkt_trap(dw + n, ev->EventId);
    SDMA_SUBMIT(&q, dw, n);
    uint64_t age = 0;
    CHECK_OK(hsaKmtWaitOnEvent_Ext(ev, 10000, &age));
    CHECK(age >= 1, "event age %" PRIu64 " after one signal", age);
    SDMA_SUBMIT(&q, dw, n);
    HsaEvent *evs[1] = {ev};
    uint64_t ages[1] = {0};
    CHECK_OK(hsaKmtWaitOnMultipleEvents_Ext(evs, 1, true, 10000, ages));
    CHECK(ages[0] > age, "event age %" PRIu64 " after %" PRIu64, ages[0], age);
    SDMA_WAIT(&q);
    CHECK_OK(hsaKmtDestroyEvent(ev));
    CHECK_OK(sdma_destroy(&q));
}

int main(void) {
    size_t n = sizeof all_functions / sizeof all_functions[0];
    CHECK_EQ(n, 91);
    for (size_t i = 0; i < n; i++) CHECK(all_functions[i].fn != NULL, "%s", all_functions[i].name);

    topology_t T;
    open_kfd(&T);
    stubs(T.gpus[0]);
    other_entry_points(T.gpus[0]);
    CHECK_OK(hsaKmtCloseKFD());
    return finish();
}
