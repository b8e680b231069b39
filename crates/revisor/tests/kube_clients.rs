//! Issue 16: Kubernetes client libraries nobody here wrote use the admin API as they use Kubernetes,
//! with the kubeconfig `revisor kubeconfig` prints: PyPI's `kubernetes` (scripts/test.sh installs it
//! in the test venv; the test fails, not skips, without it) and kube-rs, each listing, watching and
//! patching Services and Rollouts.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{apply, upstream_service, wait_ready, Server};
use futures_util::{StreamExt, TryStreamExt};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::Discovery;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

/// A server with one Ready service, `hello`, and the kubeconfig revisor prints for it.
fn server_with_hello(dir: &std::path::Path) -> (Server, String) {
    let server = Server::start(&dir.join("data"));
    apply(
        &server.admin,
        dir,
        "hello.yaml",
        &upstream_service("hello", &[], &[], ""),
    );
    wait_ready(&server.admin, "hello", &["hello-00001"]);
    let kubeconfig = common::ok(&server.admin, &["kubeconfig"]);
    (server, kubeconfig)
}

#[test]
fn the_python_kubernetes_client_lists_watches_and_patches() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, kubeconfig) = server_with_hello(tmp.path());
    let path = tmp.path().join("kubeconfig");
    std::fs::write(&path, kubeconfig).unwrap();
    let python = std::env::var("REVISOR_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/python_kubernetes.py");
    let out = Command::new(&python)
        .arg(script)
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} ({e}): run the suite with ./scripts/test.sh"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("No module named 'kubernetes'"),
        "{python} has no `kubernetes` package: run the suite with ./scripts/test.sh, which installs it"
    );
    assert!(out.status.success() && text.trim_end().ends_with("ok"), "{text}");
}

#[test]
fn kube_rs_discovers_lists_watches_and_applies() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, kubeconfig) = server_with_hello(tmp.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let kc = Kubeconfig::from_yaml(&kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap();
        let client = kube::Client::try_from(config).unwrap();

        // Discovery finds both groups, and `ksvc` resolves to Knative's Service.
        let discovery = Discovery::new(client.clone()).run().await.unwrap();
        let (services, caps) = discovery
            .groups()
            .flat_map(|g| g.recommended_resources())
            .find(|(r, _)| r.kind == "Service" && r.group == "serving.knative.dev")
            .expect("serving.knative.dev Service discovered");
        assert!(caps.supports_operation(kube::discovery::verbs::WATCH));
        let (rollouts, _) = discovery
            .groups()
            .flat_map(|g| g.recommended_resources())
            .find(|(r, _)| r.kind == "Rollout")
            .expect("revisor.dev Rollout discovered");

        let svc: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &services);
        let list = svc.list(&ListParams::default()).await.unwrap();
        let names: Vec<_> = list.items.iter().filter_map(|o| o.metadata.name.clone()).collect();
        assert_eq!(names, ["hello"]);
        let version = list.metadata.resource_version.clone().unwrap();

        // A watch from the list's version sees a merge patch made after it.
        let mut events = svc
            .watch(&WatchParams::default().timeout(20), &version)
            .await
            .unwrap()
            .boxed();
        svc.patch(
            "hello",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "from": "kube-rs" } } })),
        )
        .await
        .unwrap();
        let modified = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(e) = events.try_next().await.unwrap() {
                if let WatchEvent::Modified(o) = e {
                    return o;
                }
            }
            panic!("the watch ended without the change");
        })
        .await
        .unwrap();
        assert_eq!(modified.labels().get("from").map(String::as_str), Some("kube-rs"));

        // Server-side apply creates a Rollout; kube's watcher (list, then watch with bookmarks)
        // sees it through a label selector.
        let ro: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &rollouts);
        let mut seen = watcher(ro.clone(), watcher::Config::default().labels("team=ml")).boxed();
        let rollout = json!({
            "apiVersion": "revisor.dev/v1alpha1",
            "kind": "Rollout",
            "metadata": { "name": "hello", "labels": { "team": "ml" } },
            "spec": { "serviceRef": { "name": "hello" }, "strategy": { "canary": { "steps": [{ "setWeight": 10 }, { "pause": {} }] } } },
        });
        ro.patch("hello", &PatchParams::apply("kube-rs-test"), &Patch::Apply(&rollout))
            .await
            .unwrap();
        let applied = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match seen.try_next().await.unwrap() {
                    Some(watcher::Event::Apply(o)) | Some(watcher::Event::InitApply(o)) => return o,
                    Some(_) => continue,
                    None => panic!("the watcher ended"),
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(applied.metadata.name.as_deref(), Some("hello"));

        // A refused write is the server's Status, as kube reports Kubernetes' own.
        let err = svc
            .patch(
                "hello",
                &PatchParams::default(),
                &Patch::Json::<()>(serde_json::from_value(json!([{ "op": "remove", "path": "/metadata/labels/nope" }])).unwrap()),
            )
            .await
            .unwrap_err();
        match err {
            kube::Error::Api(status) => {
                assert_eq!(status.code, 422);
                assert!(status.message.contains("/metadata/labels/nope"), "{}", status.message);
            }
            other => panic!("{other}"),
        }
    });
}
