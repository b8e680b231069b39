//! Locates Knative's reference material (CRDs, configmaps, example manifests) for the conformance tests.

use std::path::PathBuf;

/// The reference directory: `$REVISOR_REFERENCE_DIR`, else `../shared/reference` beside the repository.
/// Panics with a message naming what is missing, so a run without it fails instead of skipping.
pub fn reference_dir() -> PathBuf {
    let dir = std::env::var_os("REVISOR_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference"));
    assert!(
        dir.join("knative").is_dir(),
        "the Knative reference material is missing at {} (set REVISOR_REFERENCE_DIR)",
        dir.display()
    );
    dir
}

/// Every example manifest, as (file name, text).
pub fn examples() -> Vec<(String, String)> {
    let dir = reference_dir().join("knative/examples");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), text)
        })
        .collect();
    out.sort();
    out
}

/// The `_example` block of a Knative ConfigMap, as key -> value (comments dropped).
pub fn configmap_example(name: &str) -> Vec<(String, String)> {
    let path = reference_dir().join("knative/configmaps").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("configmap parses");
    let example = doc["data"]["_example"].as_str().expect("configmap has data._example");
    example
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let v = v.split(" #").next().unwrap_or("").trim().trim_matches('"');
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}
