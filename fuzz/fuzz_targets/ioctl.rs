//! libFuzzer target: arbitrary `svm_ioctl` calls against the SET_ATTR / GET_ATTR model.
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
    |data: &[u8]| usvm_fuzz::ioctl_case(data)
);
