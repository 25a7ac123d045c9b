//! Faults: CPU accesses to data that is not in RAM ([`cpu`]). GPU retry faults are
//! handled in `instance/gpu_fault.rs` (`restore_pages`), called from the device-access path.

pub mod cpu;
