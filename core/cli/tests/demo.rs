//! The demo must finish with every task complete (it exits 0 only then).

use std::process::Command;

#[test]
fn demo_completes_every_task() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tasker-demo"))
        .arg(dir.path())
        .current_dir(dir.path())
        .env_remove("TASKER_DATABASE_URL")
        .env_remove("TASKER_CONFIG")
        .env_remove("TASKER_ENV")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("created=false (deduplicated)"), "{stdout}");
    assert!(stdout.contains("[schema_violation]"), "{stdout}");
    assert!(stdout.contains("retry scheduled"), "{stdout}");
    assert_eq!(stdout.matches(": COMPLETE").count(), 5, "{stdout}");
    assert!(stdout.contains("all 5 tasks complete"), "{stdout}");
    // Each charge step took two attempts.
    let charges: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("charge "))
        .collect();
    assert_eq!(charges.len(), 5, "{stdout}");
    for c in charges {
        let cols: Vec<&str> = c.split_whitespace().collect();
        assert_eq!(cols[1..3], ["complete", "2"], "{c}");
    }
    // A second run on the same directory refuses to reuse the database.
    let again = Command::new(env!("CARGO_BIN_EXE_tasker-demo"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
}

/// The Rust example in README.md is `examples/readme.rs`, which `cargo test` compiles
/// and `tests/readme_example.rs` runs.
#[test]
fn readme_rust_example_is_the_compiled_one() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let start = readme
        .find("```rust\n")
        .expect("README has a ```rust block")
        + 8;
    let len = readme[start..].find("```").unwrap();
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/readme.rs"),
    )
    .unwrap();
    assert_eq!(
        &readme[start..start + len],
        example,
        "README.md's Rust example differs from core/cli/examples/readme.rs"
    );
}
