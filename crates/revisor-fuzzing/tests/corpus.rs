//! Replays every kept fuzz input (`fuzz/corpus/<target>/*`, what libFuzzer found interesting, and the
//! seeds) through its target, so what the fuzzers once reached stays covered on stable Rust in CI.

use std::path::PathBuf;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

#[test]
fn every_kept_input_runs_through_its_target() {
    for (name, run) in revisor_fuzzing::TARGETS {
        let dir = corpus_dir(name);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("the corpus of {name} is missing at {}: {e}", dir.display()));
        let mut n = 0;
        for e in entries {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{name} failed on {}", path.display());
            n += 1;
        }
        assert!(n > 0, "the corpus of {name} at {} is empty", dir.display());
        eprintln!("{name}: {n} inputs");
    }
}

#[test]
fn the_targets_check_what_they_claim() {
    // A manifest that is admitted, one that is not.
    revisor_fuzzing::manifest(
        b"apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: a}\nspec:\n  template:\n    spec:\n      containers: [{image: x}]\n",
    );
    revisor_fuzzing::manifest(b"kind: Service\n");
    revisor_fuzzing::units(b"1h30m");
    revisor_fuzzing::traffic(b"t:svc-00002=30\nt:@latest=70\n");
    // The gateway target reaches the upstream through the gateway's own handling.
    let ok = revisor_fuzzing::gateway_exchange(b"GET / HTTP/1.1\r\nHost: svc.default.localhost\r\n\r\n");
    let ok = String::from_utf8_lossy(&ok);
    assert!(ok.starts_with("HTTP/1.1 200") && ok.ends_with("ok\n"), "{ok}");
    // The inference target reaches the model: a well-formed JSON request gets the model's output.
    let mut req = vec![0u8];
    req.extend_from_slice(
        br#"{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}"#,
    );
    let (status, body) = revisor_fuzzing::infer_exchange(&req);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("outputs"));
    let (status, _) = revisor_fuzzing::infer_exchange(b"\x00{\"inputs\": [{\"name\": \"features\", \"data\": [NaN]}]}");
    assert_eq!(status, 400);
    let bad = revisor_fuzzing::gateway_exchange(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    assert!(String::from_utf8_lossy(&bad).starts_with("HTTP/1.1 400"));
}
