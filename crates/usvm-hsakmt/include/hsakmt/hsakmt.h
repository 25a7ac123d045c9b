/*
 * usvm-hsakmt: functions of the ROCm thunk (libhsakmt) interface.
 *
 * Written for usvm. The prototypes match the libhsakmt ABI (names,
 * parameter types and order, return type), so programs written for the
 * ROCm headers build unchanged against this file. Every function returns
 * an HSAKMT_STATUS.
 */

#ifndef _HSAKMT_H_
#define _HSAKMT_H_

#include "hsakmttypes.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Kernel argument block of the debug-trap ioctl (see linux/kfd_ioctl.h). */
struct kfd_ioctl_dbg_trap_args;

/* ---- Driver session ---------------------------------------------------- */

/* Open the driver; reference counted (later calls: KERNEL_ALREADY_OPENED). */
HSAKMT_STATUS HSAKMTAPI hsaKmtOpenKFD(void);

/* Drop one reference taken by hsaKmtOpenKFD. */
HSAKMT_STATUS HSAKMTAPI hsaKmtCloseKFD(void);

/* Report the kernel interface version. */
HSAKMT_STATUS HSAKMTAPI hsaKmtGetVersion(HsaVersionInfo *VersionInfo);

/* ---- Topology ---------------------------------------------------------- */

/* Take a topology snapshot and return its summary. */
HSAKMT_STATUS HSAKMTAPI hsaKmtAcquireSystemProperties(HsaSystemProperties *SystemProperties);

/* Release the topology snapshot. */
HSAKMT_STATUS HSAKMTAPI hsaKmtReleaseSystemProperties(void);

/* Properties of one node. */
HSAKMT_STATUS HSAKMTAPI hsaKmtGetNodeProperties(HSAuint32 NodeId,
                                                HsaNodeProperties *NodeProperties);

/* The first NumBanks memory banks of a node. */
HSAKMT_STATUS HSAKMTAPI hsaKmtGetNodeMemoryProperties(HSAuint32 NodeId, HSAuint32 NumBanks,
                                                      HsaMemoryProperties *MemoryProperties);

/* The first NumCaches caches of a node. */
HSAKMT_STATUS HSAKMTAPI hsaKmtGetNodeCacheProperties(HSAuint32 NodeId, HSAuint32 ProcessorId,
                                                     HSAuint32 NumCaches,
                                                     HsaCacheProperties *CacheProperties);

/* The first NumIoLinks links of a node. */
HSAKMT_STATUS HSAKMTAPI hsaKmtGetNodeIoLinkProperties(HSAuint32 NodeId, HSAuint32 NumIoLinks,
                                                      HsaIoLinkProperties *IoLinkProperties);

/* ---- Events ------------------------------------------------------------ */

/* Create an event; *Event receives a library-owned object. */
HSAKMT_STATUS HSAKMTAPI hsaKmtCreateEvent(HsaEventDescriptor *EventDesc, bool ManualReset,
                                          bool IsSignaled, HsaEvent **Event);

/* Destroy an event made by hsaKmtCreateEvent. */
HSAKMT_STATUS HSAKMTAPI hsaKmtDestroyEvent(HsaEvent *Event);

/* Signal an event. */
HSAKMT_STATUS HSAKMTAPI hsaKmtSetEvent(HsaEvent *Event);

/* Clear an event. */
HSAKMT_STATUS HSAKMTAPI hsaKmtResetEvent(HsaEvent *Event);

/* Poll an event's state. */
HSAKMT_STATUS HSAKMTAPI hsaKmtQueryEventState(HsaEvent *Event);

/* Wait for one event, up to Milliseconds. */
HSAKMT_STATUS HSAKMTAPI hsaKmtWaitOnEvent(HsaEvent *Event, HSAuint32 Milliseconds);

/* As hsaKmtWaitOnEvent, with an in/out event age. */
HSAKMT_STATUS HSAKMTAPI hsaKmtWaitOnEvent_Ext(HsaEvent *Event, HSAuint32 Milliseconds,
                                              uint64_t *event_age);

/* Wait for any or all of several events. */
HSAKMT_STATUS HSAKMTAPI hsaKmtWaitOnMultipleEvents(HsaEvent *Events[], HSAuint32 NumEvents,
                                                   bool WaitOnAll, HSAuint32 Milliseconds);

/* As hsaKmtWaitOnMultipleEvents, with per-event ages. */
HSAKMT_STATUS HSAKMTAPI hsaKmtWaitOnMultipleEvents_Ext(HsaEvent *Events[], HSAuint32 NumEvents,
                                                       bool WaitOnAll, HSAuint32 Milliseconds,
                                                       uint64_t *event_age);

/* ---- Queues ------------------------------------------------------------ */

/* Legacy queue report (declared only; not exported by libhsakmt). */
HSAKMT_STATUS HSAKMTAPI hsaKmtReportQueue(HSA_QUEUEID QueueId, HsaQueueReport *QueueReport);

/* Create a user-mode queue on a ring buffer owned by the caller. */
HSAKMT_STATUS HSAKMTAPI hsaKmtCreateQueue(HSAuint32 NodeId, HSA_QUEUE_TYPE Type,
                                          HSAuint32 QueuePercentage,
                                          HSA_QUEUE_PRIORITY Priority, void *QueueAddress,
                                          HSAuint64 QueueSizeInBytes, HsaEvent *Event,
                                          HsaQueueResource *QueueResource);

/* As hsaKmtCreateQueue, choosing the SDMA engine. */
HSAKMT_STATUS HSAKMTAPI hsaKmtCreateQueueExt(HSAuint32 NodeId, HSA_QUEUE_TYPE Type,
                                             HSAuint32 QueuePercentage,
                                             HSA_QUEUE_PRIORITY Priority,
                                             HSAuint32 SdmaEngineId, void *QueueAddress,
                                             HSAuint64 QueueSizeInBytes, HsaEvent *Event,
                                             HsaQueueResource *QueueResource);

/* Change the ring, share or priority of a queue. */
HSAKMT_STATUS HSAKMTAPI hsaKmtUpdateQueue(HSA_QUEUEID QueueId, HSAuint32 QueuePercentage,
                                          HSA_QUEUE_PRIORITY Priority, void *QueueAddress,
                                          HSAuint64 QueueSize, HsaEvent *Event);

/* Destroy a queue. */
HSAKMT_STATUS HSAKMTAPI hsaKmtDestroyQueue(HSA_QUEUEID QueueId);

/* Restrict a queue to a set of compute units. */
HSAKMT_STATUS HSAKMTAPI hsaKmtSetQueueCUMask(HSA_QUEUEID QueueId, HSAuint32 CUMaskCount,
                                             HSAuint32 *QueueCUMask);

/* Query a queue's state. */
HSAKMT_STATUS HSAKMTAPI hsaKmtGetQueueInfo(HSA_QUEUEID QueueId, HsaQueueInfo *QueueInfo);

/* ---- Memory ------------------------------------------------------------ */

/* Set the default and alternate cache policy of a node's apertures. */
HSAKMT_STATUS HSAKMTAPI hsaKmtSetMemoryPolicy(HSAuint32 Node, HSAuint32 DefaultPolicy,
                                              HSAuint32 AlternatePolicy,
                                              void *MemoryAddressAlternate,
                                              HSAuint64 MemorySizeInBytes);

/* Allocate memory near a node. */
HSAKMT_STATUS HSAKMTAPI hsaKmtAllocMemory(HSAuint32 PreferredNode, HSAuint64 SizeInBytes,
                                          HsaMemFlags MemFlags, void **MemoryAddress);

/* As hsaKmtAllocMemory, with an explicit alignment. */
HSAKMT_STATUS HSAKMTAPI hsaKmtAllocMemoryAlign(HSAuint32 PreferredNode, HSAuint64 SizeInBytes,
                                               HSAuint64 Alignment, HsaMemFlags MemFlags,
                                               void **MemoryAddress);

/* Free memory from hsaKmtAllocMemory. */
HSAKMT_STATUS HSAKMTAPI hsaKmtFreeMemory(void *MemoryAddress, HSAuint64 SizeInBytes);

/* Bytes still available for allocation on a node. */
HSAKMT_STATUS HSAKMTAPI hsaKmtAvailableMemory(HSAuint32 Node, HSAuint64 *AvailableBytes);

/* Register user memory for GPU access. */
HSAKMT_STATUS HSAKMTAPI hsaKmtRegisterMemory(void *MemoryAddress, HSAuint64 MemorySizeInBytes);

/* Register user memory for a set of nodes. */
HSAKMT_STATUS HSAKMTAPI hsaKmtRegisterMemoryToNodes(void *MemoryAddress,
                                                    HSAuint64 MemorySizeInBytes,
                                                    HSAuint64 NumberOfNodes,
                                                    HSAuint32 *NodeArray);

/* Register user memory with allocation flags. */
HSAKMT_STATUS HSAKMTAPI hsaKmtRegisterMemoryWithFlags(void *MemoryAddress,
                                                      HSAuint64 MemorySizeInBytes,
                                                      HsaMemFlags MemFlags);

/* Import a graphics buffer for a set of nodes. */
HSAKMT_STATUS HSAKMTAPI hsaKmtRegisterGraphicsHandleToNodes(
    HSAuint64 GraphicsResourceHandle, HsaGraphicsResourceInfo *GraphicsResourceInfo,
    HSAuint64 NumberOfNodes, HSAuint32 *NodeArray);

/* As hsaKmtRegisterGraphicsHandleToNodes, with flags. */
HSAKMT_STATUS HSAKMTAPI hsaKmtRegisterGraphicsHandleToNodesExt(
    HSAuint64 GraphicsResourceHandle, HsaGraphicsResourceInfo *GraphicsResourceInfo,
    HSAuint64 NumberOfNodes, HSAuint32 *NodeArray, HSA_REGISTER_MEM_FLAGS RegisterFlags);

/* Export memory as a dma-buf file descriptor. */
HSAKMT_STATUS HSAKMTAPI hsaKmtExportDMABufHandle(void *MemoryAddress,
                                                 HSAuint64 MemorySizeInBytes, int *DMABufFd,
                                                 HSAuint64 *Offset);

/* Make a handle another process can import. */
HSAKMT_STATUS HSAKMTAPI hsaKmtShareMemory(void *MemoryAddress, HSAuint64 SizeInBytes,
                                          HsaSharedMemoryHandle *SharedMemoryHandle);

/* Import memory shared by another process. */
HSAKMT_STATUS HSAKMTAPI hsaKmtRegisterSharedHandle(const HsaSharedMemoryHandle *SharedMemoryHandle,
                                                   void **MemoryAddress, HSAuint64 *SizeInBytes);

/* As hsaKmtRegisterSharedHandle, for a set of nodes. */
HSAKMT_STATUS HSAKMTAPI hsaKmtRegisterSharedHandleToNodes(
    const HsaSharedMemoryHandle *SharedMemoryHandle, void **MemoryAddress,
    HSAuint64 *SizeInBytes, HSAuint64 NumberOfNodes, HSAuint32 *NodeArray);

/* Copy from another process's GPU memory. */
HSAKMT_STATUS HSAKMTAPI hsaKmtProcessVMRead(HSAuint32 Pid, HsaMemoryRange *LocalMemoryArray,
                                            HSAuint64 LocalMemoryArrayCount,
                                            HsaMemoryRange *RemoteMemoryArray,
                                            HSAuint64 RemoteMemoryArrayCount,
                                            HSAuint64 *SizeCopied);

/* Copy into another process's GPU memory. */
HSAKMT_STATUS HSAKMTAPI hsaKmtProcessVMWrite(HSAuint32 Pid, HsaMemoryRange *LocalMemoryArray,
                                             HSAuint64 LocalMemoryArrayCount,
                                             HsaMemoryRange *RemoteMemoryArray,
                                             HSAuint64 RemoteMemoryArrayCount,
                                             HSAuint64 *SizeCopied);

/* Undo a registration. */
HSAKMT_STATUS HSAKMTAPI hsaKmtDeregisterMemory(void *MemoryAddress);

/* Map memory into the GPU address space of every node. */
HSAKMT_STATUS HSAKMTAPI hsaKmtMapMemoryToGPU(void *MemoryAddress, HSAuint64 MemorySizeInBytes,
                                             HSAuint64 *AlternateVAGPU);

/* Map memory for a set of nodes. */
HSAKMT_STATUS HSAKMTAPI hsaKmtMapMemoryToGPUNodes(void *MemoryAddress,
                                                  HSAuint64 MemorySizeInBytes,
                                                  HSAuint64 *AlternateVAGPU,
                                                  HsaMemMapFlags MemMapFlags,
                                                  HSAuint64 NumberOfNodes,
                                                  HSAuint32 *NodeArray);

/* Remove the GPU mappings of memory. */
HSAKMT_STATUS HSAKMTAPI hsaKmtUnmapMemoryToGPU(void *MemoryAddress);

/* Map a graphics resource (legacy). */
HSAKMT_STATUS HSAKMTAPI hsaKmtMapGraphicHandle(HSAuint32 NodeId, HSAuint64 GraphicDeviceHandle,
                                               HSAuint64 GraphicResourceHandle,
                                               HSAuint64 GraphicResourceOffset,
                                               HSAuint64 GraphicResourceSize,
                                               HSAuint64 *FlatMemoryAddress);

/* Unmap a graphics resource (legacy). */
HSAKMT_STATUS HSAKMTAPI hsaKmtUnmapGraphicHandle(HSAuint32 NodeId, HSAuint64 FlatMemoryAddress,
                                                 HSAuint64 SizeInBytes);

/* The amdgpu device handle of a node. */
HSAKMT_STATUS HSAKMTAPI hsaKmtGetAMDGPUDeviceHandle(HSAuint32 NodeId,
                                                    HsaAMDGPUDeviceHandle *DeviceHandle);

/* Give a queue global wave sync resources. */
HSAKMT_STATUS HSAKMTAPI hsaKmtAllocQueueGWS(HSA_QUEUEID QueueId, HSAuint32 nGWS,
                                            HSAuint32 *firstGWS);

/* ---- Debugging --------------------------------------------------------- */

/* Legacy debugger: attach to a node. */
HSAKMT_STATUS HSAKMTAPI hsaKmtDbgRegister(HSAuint32 NodeId);

/* Legacy debugger: detach from a node. */
HSAKMT_STATUS HSAKMTAPI hsaKmtDbgUnregister(HSAuint32 NodeId);

/* Legacy debugger: control waves. */
HSAKMT_STATUS HSAKMTAPI hsaKmtDbgWavefrontControl(HSAuint32 NodeId, HSA_DBG_WAVEOP Operand,
                                                  HSA_DBG_WAVEMODE Mode, HSAuint32 TrapId,
                                                  HsaDbgWaveMessage *DbgWaveMsgRing);

/* Legacy debugger: set address watch points. */
HSAKMT_STATUS HSAKMTAPI hsaKmtDbgAddressWatch(HSAuint32 NodeId, HSAuint32 NumWatchPoints,
                                              HSA_DBG_WATCH_MODE WatchMode[],
                                              void *WatchAddress[], HSAuint64 WatchMask[],
                                              HsaEvent *WatchEvent[]);

/* Tell the driver the runtime is ready for a debugger. */
HSAKMT_STATUS HSAKMTAPI hsaKmtRuntimeEnable(void *rDebug, bool setupTtmp);

/* Undo hsaKmtRuntimeEnable. */
HSAKMT_STATUS HSAKMTAPI hsaKmtRuntimeDisable(void);

/* Runtime debug capability bits. */
HSAKMT_STATUS HSAKMTAPI hsaKmtGetRuntimeCapabilities(HSAuint32 *caps_mask);

/* Enable debugging of this process. */
HSAKMT_STATUS HSAKMTAPI hsaKmtDbgEnable(void **runtime_info, HSAuint32 *data_size);

/* Disable debugging of this process. */
HSAKMT_STATUS HSAKMTAPI hsaKmtDbgDisable(void);

/* Debugger snapshot of the devices. */
HSAKMT_STATUS HSAKMTAPI hsaKmtDbgGetDeviceData(void **data, HSAuint32 *n_entries,
                                               HSAuint32 *entry_size);

/* Debugger snapshot of the queues. */
HSAKMT_STATUS HSAKMTAPI hsaKmtDbgGetQueueData(void **data, HSAuint32 *n_entries,
                                              HSAuint32 *entry_size, bool suspend_queues);

/* Whether the driver supports runtime debugging. */
HSAKMT_STATUS HSAKMTAPI hsaKmtCheckRuntimeDebugSupport(void);

/* Pass a debug-trap request to the driver. */
HSAKMT_STATUS HSAKMTAPI hsaKmtDebugTrapIoctl(struct kfd_ioctl_dbg_trap_args *arg,
                                             HSA_QUEUEID *Queues, HSAuint64 *DebugReturn);

/* ---- Clocks and performance counters ----------------------------------- */

/* Read correlated clocks of a node. */
HSAKMT_STATUS HSAKMTAPI hsaKmtGetClockCounters(HSAuint32 NodeId, HsaClockCounters *Counters);

/* Describe a node's performance counters. */
HSAKMT_STATUS HSAKMTAPI hsaKmtPmcGetCounterProperties(HSAuint32 NodeId,
                                                      HsaCounterProperties **CounterProperties);

/* Register a counter trace. */
HSAKMT_STATUS HSAKMTAPI hsaKmtPmcRegisterTrace(HSAuint32 NodeId, HSAuint32 NumberOfCounters,
                                               HsaCounter *Counters,
                                               HsaPmcTraceRoot *TraceRoot);

/* Unregister a counter trace. */
HSAKMT_STATUS HSAKMTAPI hsaKmtPmcUnregisterTrace(HSAuint32 NodeId, HSATraceId TraceId);

/* Take exclusive access to a trace's counters. */
HSAKMT_STATUS HSAKMTAPI hsaKmtPmcAcquireTraceAccess(HSAuint32 NodeId, HSATraceId TraceId);

/* Release access taken by hsaKmtPmcAcquireTraceAccess. */
HSAKMT_STATUS HSAKMTAPI hsaKmtPmcReleaseTraceAccess(HSAuint32 NodeId, HSATraceId TraceId);

/* Start a trace into a buffer. */
HSAKMT_STATUS HSAKMTAPI hsaKmtPmcStartTrace(HSATraceId TraceId, void *TraceBuffer,
                                            HSAuint64 TraceBufferSizeBytes);

/* Update a trace's buffer with current values. */
HSAKMT_STATUS HSAKMTAPI hsaKmtPmcQueryTrace(HSATraceId TraceId);

/* Stop a trace. */
HSAKMT_STATUS HSAKMTAPI hsaKmtPmcStopTrace(HSATraceId TraceId);

/* ---- Miscellaneous ----------------------------------------------------- */

/* Install a trap handler and its buffer for a node. */
HSAKMT_STATUS HSAKMTAPI hsaKmtSetTrapHandler(HSAuint32 NodeId, void *TrapHandlerBaseAddress,
                                             HSAuint64 TrapHandlerSizeInBytes,
                                             void *TrapBufferBaseAddress,
                                             HSAuint64 TrapBufferSizeInBytes);

/* Tiling configuration of a node. */
HSAKMT_STATUS HSAKMTAPI hsaKmtGetTileConfig(HSAuint32 NodeId, HsaGpuTileConfig *config);

/* What the library knows about a pointer. */
HSAKMT_STATUS HSAKMTAPI hsaKmtQueryPointerInfo(const void *Pointer, HsaPointerInfo *PointerInfo);

/* Attach user data to an allocation. */
HSAKMT_STATUS HSAKMTAPI hsaKmtSetMemoryUserData(const void *Pointer, void *UserData);

/* Take the streaming performance monitor of a node. */
HSAKMT_STATUS HSAKMTAPI hsaKmtSPMAcquire(HSAuint32 PreferredNode);

/* Release the streaming performance monitor. */
HSAKMT_STATUS HSAKMTAPI hsaKmtSPMRelease(HSAuint32 PreferredNode);

/* Set the destination buffer of the streaming performance monitor. */
HSAKMT_STATUS HSAKMTAPI hsaKmtSPMSetDestBuffer(HSAuint32 PreferredNode, HSAuint32 SizeInBytes,
                                               HSAuint32 *timeout, HSAuint32 *SizeCopied,
                                               void *DestMemoryAddress, bool *isSPMDataLoss);

/* ---- Shared virtual memory --------------------------------------------- */

/* Set attributes of a page-aligned SVM range. */
HSAKMT_STATUS HSAKMTAPI hsaKmtSVMSetAttr(void *start_addr, HSAuint64 size, unsigned int nattr,
                                         HSA_SVM_ATTRIBUTE *attrs);

/* Read attributes of a page-aligned SVM range (values filled in). */
HSAKMT_STATUS HSAKMTAPI hsaKmtSVMGetAttr(void *start_addr, HSAuint64 size, unsigned int nattr,
                                         HSA_SVM_ATTRIBUTE *attrs);

/* Turn retry-on-fault (XNACK) off (0) or on (1) for the process. */
HSAKMT_STATUS HSAKMTAPI hsaKmtSetXNACKMode(HSAint32 enable);

/* Current XNACK mode (0 or 1). */
HSAKMT_STATUS HSAKMTAPI hsaKmtGetXNACKMode(HSAint32 *enable);

/* Open a file descriptor that delivers SMI events of a GPU node. */
HSAKMT_STATUS HSAKMTAPI hsaKmtOpenSMI(HSAuint32 NodeId, int *fd);

/* ---- Address sanitizer support ----------------------------------------- */

/* Replace the page at addr with an ASAN header page. */
HSAKMT_STATUS HSAKMTAPI hsaKmtReplaceAsanHeaderPage(void *addr);

/* Give back the page replaced by hsaKmtReplaceAsanHeaderPage. */
HSAKMT_STATUS HSAKMTAPI hsaKmtReturnAsanHeaderPage(void *addr);

/* ---- PC sampling ------------------------------------------------------- */

/* Whether PC sampling is available. */
HSAKMT_STATUS HSAKMTAPI hsaKmtPcSamplingSupport(void);

/* List the PC sampling configurations of a node. */
HSAKMT_STATUS HSAKMTAPI hsaKmtPcSamplingQueryCapabilities(HSAuint32 NodeId, void *sample_info,
                                                          HSAuint32 sample_info_sz,
                                                          HSAuint32 *sz_needed);

/* Create a PC sampling session. */
HSAKMT_STATUS HSAKMTAPI hsaKmtPcSamplingCreate(HSAuint32 node_id, HsaPcSamplingInfo *sample_info,
                                               HsaPcSamplingTraceId *traceId);

/* Destroy a PC sampling session. */
HSAKMT_STATUS HSAKMTAPI hsaKmtPcSamplingDestroy(HSAuint32 NodeId, HsaPcSamplingTraceId traceId);

/* Start a PC sampling session. */
HSAKMT_STATUS HSAKMTAPI hsaKmtPcSamplingStart(HSAuint32 NodeId, HsaPcSamplingTraceId traceId);

/* Stop a PC sampling session. */
HSAKMT_STATUS HSAKMTAPI hsaKmtPcSamplingStop(HSAuint32 NodeId, HsaPcSamplingTraceId traceId);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* _HSAKMT_H_ */
