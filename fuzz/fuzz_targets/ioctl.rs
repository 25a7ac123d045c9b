//! libFuzzer target: arbitrary `svm_ioctl` calls against the SET_ATTR / GET_ATTR model.
#![no_main]

libfuzzer_sys::fuzz_target!(init: usvm_fuzz::log_warnings(), |data: &[u8]| usvm_fuzz::ioctl_case(data));
