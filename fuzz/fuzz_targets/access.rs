//! libFuzzer target: CPU / GPU accesses, kernels, prefetches, attribute changes and
//! munmap / mmap / madvise, checked against a byte model of the memory.
#![no_main]

libfuzzer_sys::fuzz_target!(
    // usvm's warnings go to stderr: a crash by signal (a CPU fault that got SIGBUS) then
    // says why.
    init: {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
            .with_writer(std::io::stderr)
            .try_init();
    },
    |data: &[u8]| usvm_fuzz::access_case(data)
);
