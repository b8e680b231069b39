//! `revisor-fakekube DIR`: runs the fake Kubernetes API server until killed and writes its kubeconfig
//! to `DIR/kubeconfig`, to try `revisor serve --backend knative` (or the real-cluster test) without a
//! cluster.

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| ".".into());
    let fake = revisor_fakekube::FakeCluster::start();
    let path = fake.kubeconfig(std::path::Path::new(&dir));
    println!("fake Kubernetes API at {}; kubeconfig: {}", fake.url(), path.display());
    loop {
        std::thread::park();
    }
}
