//! The functions of `hsakmt.h` usvm does not implement: exported with their C signatures, so
//! that any program written against libhsakmt links, and returning
//! `HSAKMT_STATUS_NOT_SUPPORTED` without touching their arguments.

use crate::types::{HSAKMT_STATUS, HSAKMT_STATUS_NOT_SUPPORTED};
use std::ffi::c_void;

macro_rules! not_supported {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            #[doc = concat!("`", stringify!($name), "`: not supported by usvm.")]
            #[unsafe(no_mangle)]
            pub extern "C" fn $name($($arg: $ty),*) -> HSAKMT_STATUS {
                HSAKMT_STATUS_NOT_SUPPORTED
            }
        )*
        /// The names of the functions above (for the export test).
        #[cfg(test)]
        pub const NAMES: &[&str] = &[$(stringify!($name)),*];
    };
}

not_supported! {
    hsaKmtReportQueue(_queue_id: u64, _queue_report: *mut c_void);
    hsaKmtUpdateQueue(_queue_id: u64, _queue_percentage: u32, _priority: i64, _queue_address: *mut c_void, _queue_size: u64, _event: *mut c_void);
    hsaKmtSetQueueCUMask(_queue_id: u64, _cu_mask_count: u32, _queue_c_u_mask: *mut c_void);
    hsaKmtGetQueueInfo(_queue_id: u64, _queue_info: *mut c_void);
    hsaKmtSetMemoryPolicy(_node: u32, _default_policy: u32, _alternate_policy: u32, _memory_address_alternate: *mut c_void, _memory_size_in_bytes: u64);
    hsaKmtRegisterGraphicsHandleToNodes(_graphics_resource_handle: u64, _graphics_resource_info: *mut c_void, _number_of_nodes: u64, _node_array: *mut c_void);
    hsaKmtRegisterGraphicsHandleToNodesExt(_graphics_resource_handle: u64, _graphics_resource_info: *mut c_void, _number_of_nodes: u64, _node_array: *mut c_void, _register_flags: u32);
    hsaKmtExportDMABufHandle(_memory_address: *mut c_void, _memory_size_in_bytes: u64, _dmabuf_fd: *mut c_void, _offset: *mut c_void);
    hsaKmtShareMemory(_memory_address: *mut c_void, _size_in_bytes: u64, _shared_memory_handle: *mut c_void);
    hsaKmtRegisterSharedHandle(_shared_memory_handle: *mut c_void, _memory_address: *mut c_void, _size_in_bytes: *mut c_void);
    hsaKmtRegisterSharedHandleToNodes(_shared_memory_handle: *mut c_void, _memory_address: *mut c_void, _size_in_bytes: *mut c_void, _number_of_nodes: u64, _node_array: *mut c_void);
    hsaKmtProcessVMRead(_pid: u32, _local_memory_array: *mut c_void, _local_memory_array_count: u64, _remote_memory_array: *mut c_void, _remote_memory_array_count: u64, _size_copied: *mut c_void);
    hsaKmtProcessVMWrite(_pid: u32, _local_memory_array: *mut c_void, _local_memory_array_count: u64, _remote_memory_array: *mut c_void, _remote_memory_array_count: u64, _size_copied: *mut c_void);
    hsaKmtMapGraphicHandle(_node_id: u32, _graphic_device_handle: u64, _graphic_resource_handle: u64, _graphic_resource_offset: u64, _graphic_resource_size: u64, _flat_memory_address: *mut c_void);
    hsaKmtUnmapGraphicHandle(_node_id: u32, _flat_memory_address: u64, _size_in_bytes: u64);
    hsaKmtGetAMDGPUDeviceHandle(_node_id: u32, _device_handle: *mut c_void);
    hsaKmtAllocQueueGWS(_queue_id: u64, _ngws: u32, _first_gws: *mut c_void);
    hsaKmtDbgRegister(_node_id: u32);
    hsaKmtDbgUnregister(_node_id: u32);
    hsaKmtDbgWavefrontControl(_node_id: u32, _operand: u32, _mode: u32, _trap_id: u32, _dbg_wave_msg_ring: *mut c_void);
    hsaKmtDbgAddressWatch(_node_id: u32, _num_watch_points: u32, _watch_mode: *mut c_void, _watch_address: *mut c_void, _watch_mask: *mut c_void, _watch_event: *mut c_void);
    hsaKmtRuntimeEnable(_rdebug: *mut c_void, _setup_ttmp: bool);
    hsaKmtRuntimeDisable();
    hsaKmtGetRuntimeCapabilities(_caps_mask: *mut c_void);
    hsaKmtDbgEnable(_runtime_info: *mut c_void, _data_size: *mut c_void);
    hsaKmtDbgDisable();
    hsaKmtDbgGetDeviceData(_data: *mut c_void, _n_entries: *mut c_void, _entry_size: *mut c_void);
    hsaKmtDbgGetQueueData(_data: *mut c_void, _n_entries: *mut c_void, _entry_size: *mut c_void, _suspend_queues: bool);
    hsaKmtCheckRuntimeDebugSupport();
    hsaKmtDebugTrapIoctl(_arg: *mut c_void, _queues: *mut c_void, _debug_return: *mut c_void);
    hsaKmtPmcGetCounterProperties(_node_id: u32, _counter_properties: *mut c_void);
    hsaKmtPmcRegisterTrace(_node_id: u32, _number_of_counters: u32, _counters: *mut c_void, _trace_root: *mut c_void);
    hsaKmtPmcUnregisterTrace(_node_id: u32, _trace_id: u64);
    hsaKmtPmcAcquireTraceAccess(_node_id: u32, _trace_id: u64);
    hsaKmtPmcReleaseTraceAccess(_node_id: u32, _trace_id: u64);
    hsaKmtPmcStartTrace(_trace_id: u64, _trace_buffer: *mut c_void, _trace_buffer_size_bytes: u64);
    hsaKmtPmcQueryTrace(_trace_id: u64);
    hsaKmtPmcStopTrace(_trace_id: u64);
    hsaKmtSetTrapHandler(_node_id: u32, _trap_handler_base_address: *mut c_void, _trap_handler_size_in_bytes: u64, _trap_buffer_base_address: *mut c_void, _trap_buffer_size_in_bytes: u64);
    hsaKmtGetTileConfig(_node_id: u32, _config: *mut c_void);
    hsaKmtSetMemoryUserData(_pointer: *mut c_void, _user_data: *mut c_void);
    hsaKmtSPMAcquire(_preferred_node: u32);
    hsaKmtSPMRelease(_preferred_node: u32);
    hsaKmtSPMSetDestBuffer(_preferred_node: u32, _size_in_bytes: u32, _timeout: *mut c_void, _size_copied: *mut c_void, _dest_memory_address: *mut c_void, _is_spm_data_loss: *mut c_void);
    hsaKmtReplaceAsanHeaderPage(_addr: *mut c_void);
    hsaKmtReturnAsanHeaderPage(_addr: *mut c_void);
    hsaKmtPcSamplingSupport();
    hsaKmtPcSamplingQueryCapabilities(_node_id: u32, _sample_info: *mut c_void, _sample_info_sz: u32, _sz_needed: *mut c_void);
    hsaKmtPcSamplingCreate(_node_id: u32, _sample_info: *mut c_void, _trace_id: *mut c_void);
    hsaKmtPcSamplingDestroy(_node_id: u32, _trace_id: u32);
    hsaKmtPcSamplingStart(_node_id: u32, _trace_id: u32);
    hsaKmtPcSamplingStop(_node_id: u32, _trace_id: u32);
    hsaKmtQueryPointerInfo(_pointer: *mut c_void, _pointer_info: *mut c_void);
}

#[cfg(test)]
mod tests {
    /// Every function `include/hsakmt/hsakmt.h` declares.
    fn declared() -> Vec<String> {
        let h = include_str!("../include/hsakmt/hsakmt.h");
        let mut names: Vec<String> = h
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("hsaKmt"))
            .map(str::to_string)
            .collect();
        names.sort();
        names.dedup();
        names
    }

    #[test]
    fn the_header_declares_the_91_functions_and_the_stubs_are_among_them() {
        let names = declared();
        assert_eq!(names.len(), 91, "{names:?}");
        for s in super::NAMES {
            assert!(names.iter().any(|n| n == s), "{s} is not in hsakmt.h");
        }
        assert_eq!(super::NAMES.len(), 53, "unimplemented functions");
    }
}
