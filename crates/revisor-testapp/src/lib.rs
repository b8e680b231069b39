//! Finds the test upstream binary for other crates' tests: it is built into the same target directory
//! as the test executable that asks (scripts/test.sh builds it first).

use std::path::PathBuf;

/// `revisor-test-upstream` beside the running test (`target/<profile>/deps/<test>` -> `target/<profile>/`).
/// Panics, saying how to build it, when it is missing.
pub fn upstream_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps");
    let p = dir.join("revisor-test-upstream");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p revisor-testapp` (scripts/test.sh does)",
        p.display()
    );
    p
}
