//! Drift check: `include/tasker.h` must be exactly what cbindgen generates from
//! `src/lib.rs` with `cbindgen.toml`. Run with `TASKER_BLESS=1` (or `scripts/gen-header`)
//! to rewrite the committed header.

use std::path::PathBuf;

fn generate() -> String {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("ffi-c/cbindgen.toml is readable and valid");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("the header is UTF-8")
}

#[test]
fn committed_header_matches_generated() {
    let header = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../include/tasker.h");
    let generated = generate();
    if std::env::var_os("TASKER_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(header.parent().unwrap()).unwrap();
        std::fs::write(&header, &generated).unwrap();
        eprintln!("wrote {}", header.display());
        return;
    }
    let committed = std::fs::read_to_string(&header).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; run scripts/gen-header",
            header.display()
        )
    });
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || committed.lines().count().min(generated.lines().count()) + 1,
                |i| i + 1,
            );
        panic!(
            "include/tasker.h is out of date (first difference at line {line}); \
             run scripts/gen-header and commit the result"
        );
    }
}
