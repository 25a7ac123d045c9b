/*
 * Opening and closing the KFD (reference counted), calls before opening, the version, the
 * topology (system, node, memory-bank and IO-link properties) against the configuration in
 * USVM_GPUS / USVM_VRAM / USVM_XGMI_HIVE (defaults: 2 GPUs of 256 MiB, no hive), and the
 * ABI: sizes and offsets of the structs programs depend on, and bit-field positions.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <stddef.h>

/* ---- ABI: sizes and offsets of ROCm's hsakmttypes.h (KFD ioctl 1.17) ----------------- */

#define SIZE(t, n) _Static_assert(sizeof(t) == (n), "sizeof(" #t ") != " #n)
#define OFF(t, f, n) _Static_assert(offsetof(t, f) == (n), "offsetof(" #t ", " #f ") != " #n)

SIZE(HSAuint8, 1);
SIZE(HSAuint16, 2);
SIZE(HSAuint32, 4);
SIZE(HSAuint64, 8);
SIZE(HSAKMT_STATUS, 4);
SIZE(HSA_QUEUE_PRIORITY, 8);
SIZE(HSA_QUEUE_TYPE, 4);
SIZE(HSA_EVENTTYPE, 4);

SIZE(HsaVersionInfo, 8);
OFF(HsaVersionInfo, KernelInterfaceMajorVersion, 0);
OFF(HsaVersionInfo, KernelInterfaceMinorVersion, 4);

SIZE(HsaSystemProperties, 16);
OFF(HsaSystemProperties, NumNodes, 0);
OFF(HsaSystemProperties, PlatformOem, 4);
OFF(HsaSystemProperties, PlatformId, 8);
OFF(HsaSystemProperties, PlatformRev, 12);

SIZE(HSA_CAPABILITY, 4);
SIZE(HSA_ENGINE_ID, 4);
SIZE(HSA_DEBUG_PROPERTIES, 8);
SIZE(HsaNodeProperties, 360);
OFF(HsaNodeProperties, NumCPUCores, 0);
OFF(HsaNodeProperties, NumFComputeCores, 4);
OFF(HsaNodeProperties, NumMemoryBanks, 8);
OFF(HsaNodeProperties, NumCaches, 12);
OFF(HsaNodeProperties, NumIOLinks, 16);
OFF(HsaNodeProperties, CComputeIdLo, 20);
OFF(HsaNodeProperties, FComputeIdLo, 24);
OFF(HsaNodeProperties, Capability, 28);
OFF(HsaNodeProperties, MaxWavesPerSIMD, 32);
OFF(HsaNodeProperties, LDSSizeInKB, 36);
OFF(HsaNodeProperties, GDSSizeInKB, 40);
OFF(HsaNodeProperties, WaveFrontSize, 44);
OFF(HsaNodeProperties, NumShaderBanks, 48);
OFF(HsaNodeProperties, NumArrays, 52);
OFF(HsaNodeProperties, NumCUPerArray, 56);
OFF(HsaNodeProperties, NumSIMDPerCU, 60);
OFF(HsaNodeProperties, MaxSlotsScratchCU, 64);
OFF(HsaNodeProperties, EngineId, 68);
OFF(HsaNodeProperties, OverrideEngineId, 72);
OFF(HsaNodeProperties, VendorId, 76);
OFF(HsaNodeProperties, DeviceId, 78);
OFF(HsaNodeProperties, LocationId, 80);
OFF(HsaNodeProperties, LocalMemSize, 84);
OFF(HsaNodeProperties, MaxEngineClockMhzFCompute, 92);
OFF(HsaNodeProperties, MaxEngineClockMhzCCompute, 96);
OFF(HsaNodeProperties, DrmRenderMinor, 100);
OFF(HsaNodeProperties, MarketingName, 104);
OFF(HsaNodeProperties, AMDName, 232);
OFF(HsaNodeProperties, uCodeEngineVersions, 296);
OFF(HsaNodeProperties, DebugProperties, 300);
OFF(HsaNodeProperties, HiveID, 308);
OFF(HsaNodeProperties, NumSdmaEngines, 316);
OFF(HsaNodeProperties, NumSdmaXgmiEngines, 320);
OFF(HsaNodeProperties, NumSdmaQueuesPerEngine, 324);
OFF(HsaNodeProperties, NumCpQueues, 325);
OFF(HsaNodeProperties, NumGws, 326);
OFF(HsaNodeProperties, Integrated, 327);
OFF(HsaNodeProperties, Domain, 328);
OFF(HsaNodeProperties, UniqueID, 332);
OFF(HsaNodeProperties, VGPRSizePerCU, 340);
OFF(HsaNodeProperties, SGPRSizePerCU, 344);
OFF(HsaNodeProperties, NumXcc, 348);
OFF(HsaNodeProperties, KFDGpuID, 352);
OFF(HsaNodeProperties, FamilyID, 356);

SIZE(HsaMemoryProperties, 32);
OFF(HsaMemoryProperties, HeapType, 0);
OFF(HsaMemoryProperties, SizeInBytes, 4);
OFF(HsaMemoryProperties, ui32.SizeInBytesLow, 4);
OFF(HsaMemoryProperties, ui32.SizeInBytesHigh, 8);
OFF(HsaMemoryProperties, Flags, 12);
OFF(HsaMemoryProperties, Width, 16);
OFF(HsaMemoryProperties, MemoryClockMax, 20);
OFF(HsaMemoryProperties, VirtualBaseAddress, 24);

SIZE(HsaIoLinkProperties, 52);
OFF(HsaIoLinkProperties, IoLinkType, 0);
OFF(HsaIoLinkProperties, VersionMajor, 4);
OFF(HsaIoLinkProperties, VersionMinor, 8);
OFF(HsaIoLinkProperties, NodeFrom, 12);
OFF(HsaIoLinkProperties, NodeTo, 16);
OFF(HsaIoLinkProperties, Weight, 20);
OFF(HsaIoLinkProperties, MinimumLatency, 24);
OFF(HsaIoLinkProperties, MaximumLatency, 28);
OFF(HsaIoLinkProperties, MinimumBandwidth, 32);
OFF(HsaIoLinkProperties, MaximumBandwidth, 36);
OFF(HsaIoLinkProperties, RecTransferSize, 40);
OFF(HsaIoLinkProperties, RecSdmaEngIdMask, 44);
OFF(HsaIoLinkProperties, Flags, 48);

SIZE(HsaMemFlags, 4);
SIZE(HsaMemMapFlags, 4);
SIZE(HsaCacheProperties, 1056);

SIZE(HsaQueueResource, 40);
OFF(HsaQueueResource, QueueId, 0);
OFF(HsaQueueResource, Queue_DoorBell, 8);
OFF(HsaQueueResource, Queue_DoorBell_aql, 8);
OFF(HsaQueueResource, QueueDoorBell, 8);
OFF(HsaQueueResource, Queue_write_ptr, 16);
OFF(HsaQueueResource, Queue_write_ptr_aql, 16);
OFF(HsaQueueResource, QueueWptrValue, 16);
OFF(HsaQueueResource, Queue_read_ptr, 24);
OFF(HsaQueueResource, Queue_read_ptr_aql, 24);
OFF(HsaQueueResource, QueueRptrValue, 24);
OFF(HsaQueueResource, ErrorReason, 32);

SIZE(HsaSyncVar, 16);
SIZE(HsaAccessAttributeFailure, 4);
SIZE(HsaMemoryAccessFault, 20);
SIZE(HsaEventData, 44);
SIZE(HsaEvent, 48);
OFF(HsaEvent, EventId, 0);
OFF(HsaEvent, EventData, 4);
OFF(HsaEvent, EventData.EventType, 4);
OFF(HsaEvent, EventData.EventData, 8);
OFF(HsaEvent, EventData.EventData.SyncVar.SyncVar.UserData, 8);
OFF(HsaEvent, EventData.EventData.SyncVar.SyncVarSize, 16);
OFF(HsaEvent, EventData.EventData.MemoryAccessFault.NodeId, 8);
OFF(HsaEvent, EventData.EventData.MemoryAccessFault.VirtualAddress, 12);
OFF(HsaEvent, EventData.EventData.MemoryAccessFault.Failure, 20);
OFF(HsaEvent, EventData.EventData.MemoryAccessFault.Flags, 24);
OFF(HsaEvent, EventData.HWData1, 28);
OFF(HsaEvent, EventData.HWData2, 36);
OFF(HsaEvent, EventData.HWData3, 44);

SIZE(HsaEventDescriptor, 24);
OFF(HsaEventDescriptor, EventType, 0);
OFF(HsaEventDescriptor, NodeId, 4);
OFF(HsaEventDescriptor, SyncVar, 8);
OFF(HsaEventDescriptor, SyncVar.SyncVar.UserData, 8);
OFF(HsaEventDescriptor, SyncVar.SyncVarSize, 16);

SIZE(HsaClockCounters, 32);
SIZE(HsaPointerInfo, 68);

SIZE(HSA_SVM_ATTRIBUTE, 8);
OFF(HSA_SVM_ATTRIBUTE, type, 0);
OFF(HSA_SVM_ATTRIBUTE, value, 4);

/* Bit-field positions, checked at run time (not constant expressions in C). */
static void check_bitfields(void) {
    PHASE("bit-field positions");
    HSA_CAPABILITY cap;
    cap.Value = 0;
    cap.ui32.SVMAPISupported = 1;
    CHECK_EQ(cap.Value, 1u << 27);
    cap.Value = 0;
    cap.ui32.CoherentHostAccess = 1;
    CHECK_EQ(cap.Value, 1u << 28);
    cap.Value = 0;
    cap.ui32.DoorbellType = 2;
    CHECK_EQ(cap.Value, 2u << 12);

    HSA_ENGINE_ID e;
    e.Value = 0;
    e.ui32.Major = 9;
    e.ui32.Minor = 0;
    e.ui32.Stepping = 10;
    CHECK_EQ(e.Value, 0x0A002400u);

    HsaMemFlags f = ring_flags();
    CHECK_EQ(f.Value, 0x31040u); /* kfdtest's ring flags */
    f.Value = 0;
    f.ui32.NonPaged = 1;
    CHECK_EQ(f.Value, 1u);
    f.Value = 0;
    f.ui32.Contiguous = 1;
    CHECK_EQ(f.Value, 1u << 22);

    HsaAccessAttributeFailure fail;
    memset(&fail, 0, sizeof fail);
    fail.ReadOnly = 1;
    uint32_t w;
    memcpy(&w, &fail, 4);
    CHECK_EQ(w, 2u);
    memset(&fail, 0, sizeof fail);
    fail.NotPresent = 1;
    memcpy(&w, &fail, 4);
    CHECK_EQ(w, 1u);
    memset(&fail, 0, sizeof fail);
    fail.GpuAccess = 1;
    memcpy(&w, &fail, 4);
    CHECK_EQ(w, 8u);

    CHECK_EQ(HSA_SMI_EVENT_MASK_FROM_INDEX(HSA_SMI_EVENT_MIGRATE_START), 1ull << 4);
    CHECK_EQ(HSA_QUEUE_SDMA, 2);
    CHECK_EQ(HSA_QUEUE_SDMA_XGMI, 5);
    CHECK_EQ(HSA_QUEUE_COMPUTE_AQL, 21);
    CHECK_EQ(HSA_EVENTTYPE_MEMORY, 8);
    CHECK_EQ(HSA_HEAPTYPE_FRAME_BUFFER_PUBLIC, 1);
    CHECK_EQ(HSA_SVM_ATTR_GRANULARITY, 7);
}

/* ---- expected configuration ---------------------------------------------------------- */

static uint64_t parse_size(const char *s) {
    char *end;
    uint64_t v = strtoull(s, &end, 10);
    switch (*end) {
    case 'k': case 'K': return v << 10;
    case 'm': case 'M': return v << 20;
    case 'g': case 'G': return v << 30;
    default: return v;
    }
}

static void calls_before_open(void) {
    PHASE("calls before OpenKFD");
    const HSAKMT_STATUS NOT_OPEN = HSAKMT_STATUS_KERNEL_IO_CHANNEL_NOT_OPENED;
    HsaVersionInfo v;
    HsaSystemProperties sys;
    HsaNodeProperties np;
    HsaMemoryProperties mp;
    HsaIoLinkProperties lp;
    char page[2 * PAGE];
    void *aligned = (void *)(((uintptr_t)page + PAGE - 1) & ~(uintptr_t)(PAGE - 1));
    HSA_SVM_ATTRIBUTE a = {HSA_SVM_ATTR_PREFETCH_LOC, 0};
    HSAint32 x;
    void *mem;
    HsaMemFlags mf;
    mf.Value = 0;
    mf.ui32.HostAccess = 1;
    HsaQueueResource res;
    HsaEventDescriptor d = {HSA_EVENTTYPE_SIGNAL, 0, {{NULL}, 0}};
    HsaEvent *ev;
    int fd;
    HSAuint64 avail;

    CHECK_STATUS(hsaKmtGetVersion(&v), NOT_OPEN);
    CHECK_STATUS(hsaKmtAcquireSystemProperties(&sys), NOT_OPEN);
    CHECK_STATUS(hsaKmtGetNodeProperties(0, &np), NOT_OPEN);
    CHECK_STATUS(hsaKmtGetNodeMemoryProperties(0, 1, &mp), NOT_OPEN);
    CHECK_STATUS(hsaKmtGetNodeIoLinkProperties(0, 1, &lp), NOT_OPEN);
    CHECK_STATUS(hsaKmtSVMSetAttr(aligned, PAGE, 1, &a), NOT_OPEN);
    CHECK_STATUS(hsaKmtSVMGetAttr(aligned, PAGE, 1, &a), NOT_OPEN);
    CHECK_STATUS(hsaKmtSetXNACKMode(0), NOT_OPEN);
    CHECK_STATUS(hsaKmtGetXNACKMode(&x), NOT_OPEN);
    CHECK_STATUS(hsaKmtAllocMemory(0, PAGE, mf, &mem), NOT_OPEN);
    CHECK_STATUS(hsaKmtAvailableMemory(1, &avail), NOT_OPEN);
    CHECK_STATUS(hsaKmtRegisterMemory(aligned, PAGE), NOT_OPEN);
    CHECK_STATUS(hsaKmtCreateQueue(1, HSA_QUEUE_SDMA, 100, HSA_QUEUE_PRIORITY_NORMAL, aligned,
                                   PAGE, NULL, &res),
                 NOT_OPEN);
    CHECK_STATUS(hsaKmtDestroyQueue(1), NOT_OPEN);
    CHECK_STATUS(hsaKmtCreateEvent(&d, true, false, &ev), NOT_OPEN);
    CHECK_STATUS(hsaKmtOpenSMI(1, &fd), NOT_OPEN);
    CHECK_STATUS(hsaKmtCloseKFD(), NOT_OPEN);
    /* libhsakmt's ReleaseSystemProperties never checks (kfdtest's TearDown expects it). */
    CHECK_OK(hsaKmtReleaseSystemProperties());
}

static void open_close(void) {
    PHASE("open with a bad USVM_VRAM");
    const char *old = getenv("USVM_VRAM");
    char *saved = old ? strdup(old) : NULL;
    setenv("USVM_VRAM", "lots", 1);
    CHECK_STATUS(hsaKmtOpenKFD(), HSAKMT_STATUS_ERROR);
    if (saved) {
        setenv("USVM_VRAM", saved, 1);
        free(saved);
    } else {
        unsetenv("USVM_VRAM");
    }
    HsaVersionInfo v;
    CHECK_STATUS(hsaKmtGetVersion(&v), HSAKMT_STATUS_KERNEL_IO_CHANNEL_NOT_OPENED);

    PHASE("reference counting");
    CHECK_OK(hsaKmtOpenKFD());
    CHECK_STATUS(hsaKmtOpenKFD(), HSAKMT_STATUS_KERNEL_ALREADY_OPENED);
    CHECK_OK(hsaKmtGetVersion(&v));
    CHECK_OK(hsaKmtCloseKFD());
    CHECK_OK(hsaKmtGetVersion(&v)); /* still open once */
    CHECK_OK(hsaKmtCloseKFD());
    CHECK_STATUS(hsaKmtCloseKFD(), HSAKMT_STATUS_KERNEL_IO_CHANNEL_NOT_OPENED);
    CHECK_STATUS(hsaKmtGetVersion(&v), HSAKMT_STATUS_KERNEL_IO_CHANNEL_NOT_OPENED);
    /* Open again after a full close: a fresh first open. */
    CHECK_OK(hsaKmtOpenKFD());

    PHASE("version");
    memset(&v, 0xee, sizeof v);
    CHECK_OK(hsaKmtGetVersion(&v));
    CHECK_EQ(v.KernelInterfaceMajorVersion, 1);
    CHECK_EQ(v.KernelInterfaceMinorVersion, 17);
}

static void topology(HSAuint32 want_gpus, uint64_t want_vram, int hive) {
    PHASE("system properties");
    HsaSystemProperties sys;
    memset(&sys, 0xee, sizeof sys);
    REQUIRE_OK(hsaKmtAcquireSystemProperties(&sys));
    REQUIRE(CHECK_EQ(sys.NumNodes, 1 + want_gpus), "cannot go on with another node count");
    REQUIRE(sys.NumNodes <= MAX_NODES, "too many nodes");

    HsaNodeProperties p[MAX_NODES];
    for (HSAuint32 n = 0; n < sys.NumNodes; n++) {
        memset(&p[n], 0xee, sizeof p[n]);
        REQUIRE_OK(hsaKmtGetNodeProperties(n, &p[n]));
    }

    PHASE("CPU node 0");
    CHECK(p[0].NumCPUCores > 0, "NumCPUCores %u", p[0].NumCPUCores);
    CHECK_EQ(p[0].NumFComputeCores, 0);
    CHECK_EQ(p[0].KFDGpuID, 0);
    CHECK(p[0].NumMemoryBanks >= 1, "NumMemoryBanks %u", p[0].NumMemoryBanks);
    {
        HsaMemoryProperties m[4];
        memset(m, 0xee, sizeof m);
        HSAuint32 nb = p[0].NumMemoryBanks < 4 ? p[0].NumMemoryBanks : 4;
        CHECK_OK(hsaKmtGetNodeMemoryProperties(0, nb, m));
        CHECK_EQ(m[0].HeapType, HSA_HEAPTYPE_SYSTEM);
        CHECK(m[0].SizeInBytes > 0, "system heap size 0");
        /* kfdtest's GetSysMemSize reads bank 0 of node 0 alone. */
        HsaMemoryProperties one;
        CHECK_OK(hsaKmtGetNodeMemoryProperties(0, 1, &one));
        CHECK_EQ(one.SizeInBytes, m[0].SizeInBytes);
    }

    PHASE("GPU nodes");
    for (HSAuint32 n = 1; n < sys.NumNodes; n++) {
        HsaNodeProperties *g = &p[n];
        fprintf(stderr, "   node %u: gpu_id %#x, %u SIMDs, %" PRIu64 " bytes VRAM, %u banks, %u links\n",
                n, g->KFDGpuID, g->NumFComputeCores, (uint64_t)g->LocalMemSize,
                g->NumMemoryBanks, g->NumIOLinks);
        CHECK(g->NumFComputeCores > 0, "node %u: NumFComputeCores 0", n);
        CHECK_EQ(g->NumCPUCores, 0);
        CHECK_EQ(g->Integrated, 0);
        CHECK_EQ(g->EngineId.ui32.Major, 9);
        CHECK_EQ(g->EngineId.ui32.Minor, 0);
        CHECK_EQ(g->EngineId.ui32.Stepping, 10);
        CHECK_EQ(g->Capability.ui32.SVMAPISupported, 1);
        CHECK(g->KFDGpuID != 0, "node %u: KFDGpuID 0", n);
        for (HSAuint32 o = 1; o < n; o++)
            CHECK(p[o].KFDGpuID != g->KFDGpuID, "nodes %u and %u share gpu id %#x", o, n,
                  g->KFDGpuID);
        CHECK(g->NumSdmaEngines > 0, "node %u: NumSdmaEngines 0", n);
        CHECK(g->NumSdmaQueuesPerEngine > 0, "node %u: NumSdmaQueuesPerEngine 0", n);
        CHECK_EQ(g->LocalMemSize, want_vram);
        CHECK(g->NumMemoryBanks >= 1, "node %u: no memory bank", n);

        /* kfdtest's GetVramSize: the first FRAME_BUFFER bank of the node's banks. */
        HsaMemoryProperties m[8];
        HSAuint32 nb = g->NumMemoryBanks < 8 ? g->NumMemoryBanks : 8;
        memset(m, 0xee, sizeof m);
        CHECK_OK(hsaKmtGetNodeMemoryProperties(n, nb, m));
        int found = 0;
        for (HSAuint32 b = 0; b < nb && !found; b++) {
            if (m[b].HeapType == HSA_HEAPTYPE_FRAME_BUFFER_PUBLIC ||
                m[b].HeapType == HSA_HEAPTYPE_FRAME_BUFFER_PRIVATE) {
                found = 1;
                CHECK_EQ(m[b].HeapType, HSA_HEAPTYPE_FRAME_BUFFER_PUBLIC);
                CHECK_EQ(m[b].SizeInBytes, want_vram);
            }
        }
        CHECK(found, "node %u: no FRAME_BUFFER heap", n);

        if (hive) {
            CHECK(g->HiveID != 0, "node %u: HiveID 0 in a hive", n);
            CHECK_EQ(g->HiveID, p[1].HiveID);
        } else {
            CHECK_EQ(g->HiveID, 0);
        }
    }

    PHASE("IO links");
    for (HSAuint32 n = 0; n < sys.NumNodes; n++) {
        HSAuint32 nl = p[n].NumIOLinks;
        if (!CHECK(nl >= 1 && nl <= 16, "node %u: %u IO links", n, nl)) continue;
        HsaIoLinkProperties l[16];
        memset(l, 0xee, sizeof l);
        CHECK_OK(hsaKmtGetNodeIoLinkProperties(n, nl, l));
        int to[MAX_NODES] = {0};
        for (HSAuint32 i = 0; i < nl; i++) {
            CHECK_EQ(l[i].NodeFrom, n);
            if (!CHECK(l[i].NodeTo < sys.NumNodes && l[i].NodeTo != n, "node %u link %u to %u", n,
                       i, l[i].NodeTo))
                continue;
            to[l[i].NodeTo]++;
            CHECK(l[i].Weight > 0, "node %u link %u: weight 0", n, i);
            int gpu_to_gpu = n != 0 && l[i].NodeTo != 0;
            CHECK_EQ(l[i].IoLinkType, gpu_to_gpu ? HSA_IOLINK_TYPE_XGMI : HSA_IOLINKTYPE_PCIEXPRESS);
        }
        for (HSAuint32 m = 0; m < sys.NumNodes; m++) {
            if (m == n) continue;
            int expect = n == 0 || m == 0 || hive; /* CPU <-> every GPU; GPU <-> GPU in a hive */
            CHECK_EQ(to[m], expect);
        }
    }

    PHASE("bad node ids and null pointers");
    HsaNodeProperties np;
    HsaMemoryProperties mp;
    HsaIoLinkProperties lp;
    HSAuint32 bad = sys.NumNodes;
    CHECK_STATUS(hsaKmtGetNodeProperties(bad, &np), HSAKMT_STATUS_INVALID_NODE_UNIT);
    CHECK_STATUS(hsaKmtGetNodeProperties(0xFFFFFFFF, &np), HSAKMT_STATUS_INVALID_NODE_UNIT);
    CHECK_STATUS(hsaKmtGetNodeMemoryProperties(bad, 1, &mp), HSAKMT_STATUS_INVALID_NODE_UNIT);
    CHECK_STATUS(hsaKmtGetNodeIoLinkProperties(bad, 1, &lp), HSAKMT_STATUS_INVALID_NODE_UNIT);
    CHECK_STATUS(hsaKmtGetVersion(NULL), HSAKMT_STATUS_INVALID_PARAMETER);
    CHECK_STATUS(hsaKmtAcquireSystemProperties(NULL), HSAKMT_STATUS_INVALID_PARAMETER);
    CHECK_STATUS(hsaKmtGetNodeProperties(0, NULL), HSAKMT_STATUS_INVALID_PARAMETER);
    CHECK_STATUS(hsaKmtGetNodeProperties(1, NULL), HSAKMT_STATUS_INVALID_PARAMETER);
    CHECK_STATUS(hsaKmtGetNodeMemoryProperties(0, 1, NULL), HSAKMT_STATUS_INVALID_PARAMETER);
    CHECK_STATUS(hsaKmtGetNodeIoLinkProperties(1, 1, NULL), HSAKMT_STATUS_INVALID_PARAMETER);
    CHECK_OK(hsaKmtReleaseSystemProperties());
}

int main(void) {
    check_bitfields();
    const char *g = getenv("USVM_GPUS");
    const char *v = getenv("USVM_VRAM");
    const char *h = getenv("USVM_XGMI_HIVE");
    HSAuint32 want_gpus = g ? (HSAuint32)strtoul(g, NULL, 10) : 2;
    uint64_t want_vram = v ? parse_size(v) : 256ull << 20;
    int hive = h && strcmp(h, "1") == 0;
    fprintf(stderr, "expecting %u GPUs of %" PRIu64 " bytes VRAM%s\n", want_gpus, want_vram,
            hive ? " in one XGMI hive" : "");

    calls_before_open();
    open_close();
    topology(want_gpus, want_vram, hive);

    PHASE("close");
    CHECK_OK(hsaKmtCloseKFD());
    CHECK_STATUS(hsaKmtCloseKFD(), HSAKMT_STATUS_KERNEL_IO_CHANNEL_NOT_OPENED);
    return finish();
}
