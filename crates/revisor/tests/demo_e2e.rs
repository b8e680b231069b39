//! `revisor demo` from start to end: v2 promoted, v3 rolled back, a summary, nothing left running.

mod common;

#[test]
fn the_demo_promotes_v2_rolls_back_v3_and_cleans_up() {
    let out = std::process::Command::new(common::BIN).arg("demo").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for want in [
        "=> Succeeded: stable is now tabular-00002",
        "=> RolledBack: tabular-00003 rolled back",
        "success-rate",
        "6. Summary",
        "failed (all of them answered by the faulty v3",
        "nothing left running",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let dir = text
        .lines()
        .find_map(|l| l.split("(data in ").nth(1))
        .map(|rest| rest.trim_end_matches(") ...").to_string())
        .expect("the demo names its data dir");
    assert!(!std::path::Path::new(&dir).exists(), "{dir} was removed");
}
