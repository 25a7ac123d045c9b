//! libFuzzer target: CPU / GPU accesses, kernels, prefetches, attribute changes and
//! munmap / mmap / madvise, checked against a byte model of the memory.
#![no_main]

libfuzzer_sys::fuzz_target!(init: usvm_fuzz::log_warnings(), |data: &[u8]| usvm_fuzz::access_case(data));
