//! Writes `pkgconfig/libhsakmt.pc` beside the built libraries (`target/<profile>/`), so
//! that `PKG_CONFIG_PATH=target/release/pkgconfig pkg-config --cflags --libs libhsakmt`
//! finds this crate's header and library.

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    // OUT_DIR is target/<profile>/build/<pkg>-<hash>/out.
    let Some(profile_dir) = out.ancestors().nth(3) else { return };
    let include = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir")).join("include");
    let pc = format!(
        "prefix={prefix}\nlibdir={prefix}\nincludedir={include}\n\nName: libhsakmt\n\
         Description: usvm's libhsakmt: the SVM subset of ROCm's thunk on emulated GPUs\n\
         Version: 1.0.6\nLibs: -L${{libdir}} -Wl,-rpath,${{libdir}} -lhsakmt\n\
         Libs.private: -lpthread -ldl -lm\nCflags: -I${{includedir}}\n",
        prefix = profile_dir.display(),
        include = include.display()
    );
    let dir = profile_dir.join("pkgconfig");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("libhsakmt.pc"), pc);
    println!("cargo:rerun-if-changed=build.rs");
}
