//! Table-driven admission tests: each invalid manifest must be refused with the expected field path.

use revisor_api::{admit_service, read_documents, Defaults};

const BASE: &str = r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: svc
spec:
  template:
    spec:
      containers:
        - image: example.com/model:v1
"#;

/// Admits a YAML Service and returns its errors as `path: message` lines.
fn errors(yaml: &str) -> Vec<String> {
    let docs = read_documents(yaml).expect("test manifest parses");
    match admit_service(&docs[0].value, &Defaults::default()) {
        Ok(_) => vec![],
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

/// The base manifest with `spec:` extended by `extra` lines (indented under spec).
fn with_spec(template_spec_extra: &str, traffic: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: svc\nspec:\n  template:\n    spec:\n{template_spec_extra}{traffic}"
    )
}

#[test]
fn the_base_manifest_is_valid() {
    assert_eq!(errors(BASE), Vec::<String>::new());
}

#[test]
fn invalid_manifests_are_refused_with_their_paths() {
    let c = "      containers:\n        - image: img\n";
    let cases: Vec<(&str, String, &str)> = vec![
        ("percent above 100", with_spec(c, "  traffic:\n    - latestRevision: true\n      percent: 120\n"), "spec.traffic[0].percent: must be in [0, 100], got 120"),
        ("negative percent", with_spec(c, "  traffic:\n    - latestRevision: true\n      percent: -10\n    - revisionName: svc-00001\n      percent: 110\n"), "spec.traffic[0].percent: must be in [0, 100], got -10"),
        ("sum below 100", with_spec(c, "  traffic:\n    - latestRevision: true\n      percent: 90\n"), "spec.traffic: traffic targets sum to 90, want 100"),
        ("sum above 100", with_spec(c, "  traffic:\n    - latestRevision: true\n      percent: 60\n    - revisionName: svc-00001\n      percent: 50\n"), "spec.traffic: traffic targets sum to 110, want 100"),
        ("both revisionName and latestRevision", with_spec(c, "  traffic:\n    - latestRevision: true\n      revisionName: svc-00001\n      percent: 100\n"), "spec.traffic[0]: set revisionName or latestRevision: true, not both"),
        ("latestRevision false without a name", with_spec(c, "  traffic:\n    - latestRevision: false\n      percent: 100\n"), "spec.traffic[0].revisionName: missing field(s)"),
        ("tag not DNS-1035", with_spec(c, "  traffic:\n    - latestRevision: true\n      percent: 100\n      tag: Canary_1\n"), "spec.traffic[0].tag: \"Canary_1\" is not a DNS-1035 label"),
        ("tag starting with a digit", with_spec(c, "  traffic:\n    - latestRevision: true\n      percent: 100\n      tag: 1st\n"), "spec.traffic[0].tag: \"1st\" is not a DNS-1035 label"),
        ("duplicate tags", with_spec(c, "  traffic:\n    - latestRevision: true\n      percent: 50\n      tag: a\n    - revisionName: svc-00001\n      percent: 50\n      tag: a\n"), "spec.traffic[1].tag: duplicate tag \"a\""),
        ("configurationName in a Service", with_spec(c, "  traffic:\n    - configurationName: svc\n      percent: 100\n"), "spec.traffic[0].configurationName: must not set the field(s)"),
        ("url in spec", with_spec(c, "  traffic:\n    - latestRevision: true\n      percent: 100\n      url: http://x\n"), "spec.traffic[0].url: must not set the field(s)"),
        ("revisionName not DNS-1035", with_spec(c, "  traffic:\n    - revisionName: Svc_1\n      percent: 100\n"), "spec.traffic[0].revisionName: \"Svc_1\" is not a DNS-1035 label"),
        ("no containers", with_spec("      containers: []\n", ""), "spec.template.spec.containers: missing field(s)"),
        ("container without image", with_spec("      containers:\n        - name: a\n", ""), "spec.template.spec.containers[0].image: missing field(s)"),
        ("containerConcurrency above 1000", with_spec("      containerConcurrency: 1001\n      containers:\n        - image: img\n", ""), "spec.template.spec.containerConcurrency: must be in [0, 1000], got 1001"),
        ("negative containerConcurrency", with_spec("      containerConcurrency: -1\n      containers:\n        - image: img\n", ""), "spec.template.spec.containerConcurrency: must be in [0, 1000], got -1"),
        ("timeoutSeconds above 600", with_spec("      timeoutSeconds: 601\n      containers:\n        - image: img\n", ""), "spec.template.spec.timeoutSeconds: must be in [0, 600], got 601"),
        ("negative timeoutSeconds", with_spec("      timeoutSeconds: -5\n      containers:\n        - image: img\n", ""), "spec.template.spec.timeoutSeconds: must be in [0, 600], got -5"),
        ("unknown container field", with_spec("      containers:\n        - image: img\n          imagee: x\n", ""), "spec.template.spec.containers[0].imagee: unknown field \"imagee\""),
        ("unknown spec field", "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: svc\nspec:\n  replicas: 3\n  template:\n    spec:\n      containers:\n        - image: img\n".into(), "spec.replicas: unknown field \"replicas\""),
        ("unknown traffic field", with_spec(c, "  traffic:\n    - latestRevision: true\n      percentage: 100\n      percent: 100\n"), "spec.traffic[0].percentage: unknown field \"percentage\""),
        ("wrong type", with_spec(c, "  traffic:\n    - latestRevision: true\n      percent: all\n"), "spec.traffic[0].percent: invalid type: string \"all\""),
        ("service name not DNS-1035", BASE.replace("name: svc", "name: My_Svc"), "metadata.name: \"My_Svc\" is not a DNS-1035 label"),
        ("service name too long", BASE.replace("name: svc", &format!("name: {}", "a".repeat(60))), "metadata.name: must be no more than 57 characters"),
        ("missing name", BASE.replace("  name: svc\n", "  labels: {a: b}\n"), "metadata.name: missing field(s)"),
        ("bad namespace", BASE.replace("name: svc", "name: svc\n  namespace: Bad_NS"), "metadata.namespace: \"Bad_NS\" is not a DNS-1123 label"),
        ("BYO name without the service prefix", with_spec(c, "").replace("  template:\n", "  template:\n    metadata:\n      name: other-v1\n"), "spec.template.metadata.name: \"other-v1\" must have prefix \"svc-\""),
        ("BYO name not DNS-1035", with_spec(c, "").replace("  template:\n", "  template:\n    metadata:\n      name: svc-V1\n"), "spec.template.metadata.name: \"svc-V1\" is not a DNS-1035 label"),
        ("autoscaling annotation on the service", BASE.replace("name: svc", "name: svc\n  annotations:\n    autoscaling.knative.dev/min-scale: \"1\""), "metadata.annotations.autoscaling.knative.dev/min-scale: autoscaling annotations must be put under `spec.template.metadata.annotations`"),
        ("min-scale not an integer", with_spec(c, "").replace("  template:\n", "  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/min-scale: \"one\"\n"), "spec.template.metadata.annotations.autoscaling.knative.dev/min-scale: \"one\" is not an integer"),
        ("max below min", with_spec(c, "").replace("  template:\n", "  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/min-scale: \"5\"\n        autoscaling.knative.dev/max-scale: \"2\"\n"), "spec.template.metadata.annotations.autoscaling.knative.dev/max-scale: max-scale=2 is less than min-scale=5"),
        ("window too short", with_spec(c, "").replace("  template:\n", "  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/window: 2s\n"), "spec.template.metadata.annotations.autoscaling.knative.dev/window: must be between"),
        ("unknown metric", with_spec(c, "").replace("  template:\n", "  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/metric: latency\n"), "spec.template.metadata.annotations.autoscaling.knative.dev/metric: must be \"concurrency\" or \"rps\""),
        ("both spellings of min-scale", with_spec(c, "").replace("  template:\n", "  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/min-scale: \"1\"\n        autoscaling.knative.dev/minScale: \"1\"\n"), "spec.template.metadata.annotations.autoscaling.knative.dev/minScale: set only one of"),
        ("utilization above 100", with_spec(c, "").replace("  template:\n", "  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/target-utilization-percentage: \"150\"\n"), "spec.template.metadata.annotations.autoscaling.knative.dev/target-utilization-percentage: must be in [1, 100], got 150"),
        ("two ports on a container", with_spec("      containers:\n        - image: img\n          ports:\n            - containerPort: 8080\n            - containerPort: 8081\n", ""), "spec.template.spec.containers[0].ports: a container may declare at most one port, got 2"),
        ("reserved port", with_spec("      containers:\n        - image: img\n          ports:\n            - containerPort: 8012\n", ""), "spec.template.spec.containers[0].ports[0].containerPort: 8012 is a reserved port"),
        ("port name", with_spec("      containers:\n        - image: img\n          ports:\n            - containerPort: 8080\n              name: grpc\n", ""), "spec.template.spec.containers[0].ports[0].name: must be empty, \"http1\" or \"h2c\""),
        ("multi-container without a port", with_spec("      containers:\n        - image: a\n        - image: b\n", ""), "spec.template.spec.containers: with several containers exactly one (the serving container) must declare a port, got 0"),
        ("probe with two handlers", with_spec("      containers:\n        - image: img\n          readinessProbe:\n            tcpSocket: {}\n            httpGet: {path: /}\n", ""), "spec.template.spec.containers[0].readinessProbe: set exactly one of httpGet, tcpSocket, grpc or exec, got 2"),
        ("env value and valueFrom", with_spec("      containers:\n        - image: img\n          env:\n            - name: A\n              value: x\n              valueFrom:\n                secretKeyRef: {name: s, key: k}\n", ""), "spec.template.spec.containers[0].env[0]: set value or valueFrom, not both"),
        ("env without a name", with_spec("      containers:\n        - image: img\n          env:\n            - value: x\n", ""), "spec.template.spec.containers[0].env[0].name: missing field(s)"),
        ("bad quantity", with_spec("      containers:\n        - image: img\n          resources:\n            requests:\n              cpu: lots\n", ""), "spec.template.spec.containers[0].resources.requests.cpu: \"lots\" is not a quantity"),
        ("request above limit", with_spec("      containers:\n        - image: img\n          resources:\n            requests: {memory: 1Gi}\n            limits: {memory: 512Mi}\n", ""), "spec.template.spec.containers[0].resources.requests.memory: must be less than or equal to the memory limit"),
        ("mount of a missing volume", with_spec("      containers:\n        - image: img\n          volumeMounts:\n            - name: data\n              mountPath: /data\n", ""), "spec.template.spec.containers[0].volumeMounts[0].name: no volume named \"data\""),
        ("unmounted volume", with_spec("      containers:\n        - image: img\n      volumes:\n        - name: data\n          emptyDir: {}\n", ""), "spec.template.spec.volumes[0].name: volume \"data\" is not mounted"),
        ("reserved mount path", with_spec("      containers:\n        - image: img\n          volumeMounts:\n            - name: data\n              mountPath: /tmp\n      volumes:\n        - name: data\n          emptyDir: {}\n", ""), "spec.template.spec.containers[0].volumeMounts[0].mountPath: \"/tmp\" is a reserved path"),
        ("duplicate container names", with_spec("      containers:\n        - image: a\n          name: app\n          ports: [{containerPort: 8080}]\n        - image: b\n          name: app\n", ""), "spec.template.spec.containers[1].name: duplicate container name \"app\""),
        ("wrong kind", BASE.replace("kind: Service", "kind: Deployment"), "kind: unsupported resource serving.knative.dev/v1/Deployment"),
        ("missing apiVersion", BASE.replace("apiVersion: serving.knative.dev/v1\n", ""), "apiVersion: missing field(s)"),
        ("bad label key", BASE.replace("name: svc", "name: svc\n  labels:\n    \"bad key!\": x"), "metadata.labels.bad key!: \"bad key!\" is not a qualified name"),
        ("bad rollout-duration", BASE.replace("name: svc", "name: svc\n  annotations:\n    serving.knative.dev/rollout-duration: soon"), "metadata.annotations.serving.knative.dev/rollout-duration: \"soon\" is not a duration"),
    ];
    assert!(cases.len() >= 30, "the issue asks for at least 30 invalid cases");
    let mut failures = Vec::new();
    for (name, yaml, want) in &cases {
        let got = errors(yaml);
        if !got.iter().any(|e| e.starts_with(want)) {
            failures.push(format!("{name}: want an error starting {want:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_problem_is_reported_together() {
    let yaml = with_spec(
        "      containerConcurrency: 5000\n      containers:\n        - image: img\n          bogus: 1\n",
        "  traffic:\n    - latestRevision: true\n      percent: 120\n      tag: Bad\n",
    );
    // Unknown fields are found during decoding; fix it and the rest are reported together.
    assert_eq!(
        errors(&yaml),
        vec!["spec.template.spec.containers[0].bogus: unknown field \"bogus\""]
    );
    let got = errors(&yaml.replace("          bogus: 1\n", ""));
    assert_eq!(got.len(), 4, "{got:?}");
}

#[test]
fn syntax_errors_name_the_document() {
    let err = read_documents("apiVersion: v1\n---\nkind: [unclosed\n").unwrap_err();
    assert_eq!(err.index, 2);
    assert!(err.message.contains("invalid YAML"), "{}", err.message);
}

/// Issue 14: inputs an outside test sent that were accepted or misreported.
#[test]
fn huge_probe_fields_huge_quantities_a_bom_and_an_empty_name_are_named() {
    let c = "      containers:\n        - image: img\n";
    let probe = format!(
        "{c}          readinessProbe:\n            periodSeconds: 9223372036854775807\n            \
         initialDelaySeconds: 2147483648\n            tcpSocket: {{port: 8080}}\n"
    );
    let errs = errors(&with_spec(&probe, ""));
    assert!(
        errs.iter()
            .any(|e| e.contains("readinessProbe.periodSeconds") && e.contains("at most 2147483647")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.contains("readinessProbe.initialDelaySeconds")),
        "{errs:?}"
    );
    let cpu = format!("{c}          resources:\n            limits:\n              cpu: \"1e400\"\n");
    let errs = errors(&with_spec(&cpu, ""));
    assert!(
        errs.iter()
            .any(|e| e.contains("resources.limits.cpu") && e.contains("too large")),
        "{errs:?}"
    );
    // A byte order mark before the first document: one document, admitted.
    let bom = format!("\u{feff}{BASE}");
    let docs = read_documents(&bom).unwrap();
    assert_eq!(docs.len(), 1);
    assert_eq!(errors(&bom), Vec::<String>::new());
    // A Go duration longer than Go allows, in an annotation.
    let window = BASE.replace(
        "  template:\n",
        "  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/window: 99999999999999999999h\n",
    );
    let errs = errors(&window);
    assert!(
        errs.iter()
            .any(|e| e.contains("autoscaling.knative.dev/window") && e.contains("292 years")),
        "{errs:?}"
    );
    // An empty name says so.
    let errs = errors(&BASE.replace("name: svc", "name: \"\""));
    assert!(
        errs.iter()
            .any(|e| e.contains("metadata.name") && !e.contains("unknown field")),
        "{errs:?}"
    );
}

/// YAML that says a key twice is refused (which value was meant?), wherever the key is, and names
/// the key; the same holds for JSON's objects read as YAML's flow mappings.
#[test]
fn a_key_given_twice_is_refused_with_its_name() {
    for (yaml, key) in [
        (
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: svc\n  name: other\nspec:\n  template:\n    spec:\n      containers:\n        - image: img\n",
            "name",
        ),
        (
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: svc}\nspec:\n  template:\n    spec:\n      containers:\n        - image: a\n          image: b\n",
            "image",
        ),
        ("apiVersion: v1\nkind: Service\nkind: Rollout\n", "kind"),
    ] {
        let err = read_documents(yaml).unwrap_err();
        assert_eq!(err.index, 1);
        assert!(
            err.message.contains("duplicate") && err.message.contains(key),
            "{key}: {}",
            err.message
        );
    }
}
