//! Reconcile cost against the testbed (run `tests/testbed/up` first), side by side with
//! `kubectl apply --server-side` and `helm upgrade --install` on the same manifests:
//! a no-op on the shipped stack and on a generated 1,000-object stack, a one-field change,
//! and empty namespace → healthy. Prints figures; asserts nothing.
//!
//! `cargo bench --bench engine`

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use converge::reconcile::{self, Clusters, Options};
use converge::render::Helm;
use support::git::GitRepo;
use support::{testbed, TestNamespace};

const RUNS: usize = 5;

fn copy_dir(src: &Path, repo: &GitRepo, rel: &str) {
    for entry in std::fs::read_dir(src).expect("read chart") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().to_string();
        if entry.path().is_dir() {
            copy_dir(&entry.path(), repo, &format!("{rel}/{name}"));
        } else {
            repo.write(
                &format!("{rel}/{name}"),
                std::fs::read(entry.path()).expect("read"),
            );
        }
    }
}

fn shipped_repo(ns: &str) -> GitRepo {
    let repo = GitRepo::new();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/todo-chatbot"),
        &repo,
        "charts/todo-chatbot",
    );
    repo.write("desired/stack.yaml", format!("apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: bench\nnamespace: {ns}\nrelease: todo-chatbot\nvalues:\n  frontend:\n    service: {{type: ClusterIP, port: 80}}\n"));
    for (name, image, deps) in [
        ("postgres", "postgres:16-alpine", "[]"),
        ("backend", "todo-backend:bench", "[postgres]"),
        ("frontend", "todo-frontend:bench", "[backend]"),
    ] {
        repo.write(
            &format!("desired/{name}.yaml"),
            format!("apiVersion: converge.dev/v1alpha1\nkind: Component\nname: {name}\nimage: {{ref: '{image}'}}\nsecretEnv: []\ndependsOn: {deps}\n"),
        );
    }
    repo.write("desired/backend.yaml", "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: backend\nimage: {ref: 'todo-backend:bench'}\nreplicas: 2\ndependsOn: [postgres]\nsecretEnv: []\n");
    repo.commit("bench stack");
    repo
}

fn generated_repo(ns: &str, n: usize) -> GitRepo {
    let repo = GitRepo::new();
    repo.write(
        "charts/many/Chart.yaml",
        "apiVersion: v2\nname: many\nversion: 0.1.0\n",
    );
    repo.write(
        "charts/many/values.yaml",
        format!("app:\n  enabled: true\ncount: {n}\n"),
    );
    repo.write(
        "charts/many/templates/cms.yaml",
        "{{- range $i := until (int .Values.count) }}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{{ $i }}\n  labels: {app.kubernetes.io/component: app}\ndata:\n  index: \"{{ $i }}\"\n{{- end }}\n",
    );
    repo.write("desired/stack.yaml", format!("apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: many\nnamespace: {ns}\nchart: charts/many\n"));
    repo.write("desired/app.yaml", "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: app\nimage: {ref: 'busybox:1.36'}\n");
    repo.commit("generated");
    repo
}

fn options() -> Options {
    let bed = testbed();
    let ctx = kube::config::Kubeconfig::read_from(&bed.kubeconfig)
        .ok()
        .and_then(|k| k.current_context)
        .unwrap_or_default();
    Options {
        kubeconfig: Some(bed.kubeconfig.clone()),
        context: Some(ctx),
        allow_mass_prune: false,
        ..Options::default()
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Writes the objects converge applied (as the live cluster holds them, minus server-owned and
/// allocated fields), moved to namespace `to`, so kubectl works on the same manifests without
/// touching converge's objects.
fn dump_manifests(ns: &str, stack: &str, to: &str, out: &Path) {
    let o = support::kubectl()
        .args([
            "-n",
            ns,
            "get",
            "deploy,sts,svc,cm,sa,pdb",
            "-l",
            &format!("converge.dev/stack={stack}"),
            "-o",
            "yaml",
        ])
        .output()
        .expect("kubectl get");
    let mut list: serde_json::Value = serde_yaml_ng::from_slice(&o.stdout).expect("yaml");
    if let Some(items) = list.get_mut("items").and_then(|i| i.as_array_mut()) {
        for it in items.iter_mut() {
            let mut v = converge::cluster::diff::normalize(it);
            v["metadata"]["namespace"] = serde_json::json!(to);
            if let Some(spec) = v.get_mut("spec").and_then(|s| s.as_object_mut()) {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
            *it = v;
        }
    }
    std::fs::write(out, serde_yaml_ng::to_string(&list).expect("yaml")).expect("write");
}

/// Times `kubectl apply --server-side` and counts its API requests (from `-v=6` request lines).
fn kubectl_apply(file: &Path) -> (Duration, usize) {
    let start = Instant::now();
    let o = support::kubectl()
        .args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=converge",
            "-v=6",
            "-f",
        ])
        .arg(file)
        .output()
        .expect("kubectl apply");
    let took = start.elapsed();
    let requests = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| l.contains("Response") || l.contains(" in ") && l.contains("milliseconds"))
        .count();
    (took, requests)
}

async fn converge_noop(repo: &GitRepo, opts: &Options, helm: &Helm) -> (Duration, u64, u64) {
    let mut clusters = Clusters::default();
    let mut times = Vec::new();
    let mut reads = 0;
    let mut writes = 0;
    for _ in 0..RUNS {
        let start = Instant::now();
        let r = reconcile::reconcile_commit(repo.path(), "HEAD", opts, helm, &mut clusters)
            .await
            .expect("reconcile");
        times.push(start.elapsed());
        reads = r[0].requests.reads;
        writes = r[0].requests.writes;
    }
    (median(times), reads, writes)
}

fn main() {
    // `cargo test --all-targets` runs bench binaries too: there, say how to run it and stop.
    if !std::env::args().any(|a| a == "--bench") {
        println!("engine bench: run it with `cargo bench --bench engine`");
        return;
    }
    if std::env::var_os("CONVERGE_TESTBED_ENV").is_none()
        && !Path::new("/tmp/converge-testbed/env").exists()
    {
        println!("engine bench skipped: the testbed is not running (tests/testbed/up)");
        return;
    }
    // TestNamespace::new selects the bed's kwok node: fake Pods, Ready at once. These are the
    // engine's own costs (requests, diff, apply); the app really starting is benches/realnode.py.
    println!("engine bench: figures from the kwok node (fake Pods: Ready at once, nothing runs)");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let helm = Helm::at(&testbed().helm);
        let opts = options();

        // Shipped stack: empty namespace → healthy, then no-ops.
        let ns = TestNamespace::new("bench-shipped").await;
        let repo = shipped_repo(ns.name());
        let start = Instant::now();
        let r = reconcile::reconcile_commit(repo.path(), "HEAD", &opts, &helm, &mut Clusters::default()).await.expect("first apply");
        println!("shipped stack: empty namespace -> healthy: {:?} (ready={}, {} objects, {} writes)", start.elapsed(), r[0].ready, r[0].applied.len(), r[0].requests.writes);
        let (t, reads, writes) = converge_noop(&repo, &opts, &helm).await;
        println!("shipped stack: converge no-op (median of {RUNS}): {t:?}, {reads} reads, {writes} writes");
        // One-field change, before anything else touches the stack.
        let backend = std::fs::read_to_string(repo.file("desired/backend.yaml")).expect("read");
        repo.write("desired/backend.yaml", backend.replace("replicas: 2", "replicas: 3"));
        repo.commit("scale");
        let start = Instant::now();
        let r = reconcile::reconcile_commit(repo.path(), "HEAD", &opts, &helm, &mut Clusters::default()).await.expect("change");
        println!("shipped stack: one-field change to applied and healthy: {:?} ({} object applied, {} writes, ready={})", start.elapsed(), r[0].applied.len(), r[0].requests.writes, r[0].ready);

        let tmp = tempfile::tempdir().expect("tmp");
        let kns = TestNamespace::new("bench-kubectl").await;
        let file = tmp.path().join("shipped.yaml");
        dump_manifests(ns.name(), "bench", kns.name(), &file);
        kubectl_apply(&file);
        let mut kt = Vec::new();
        let mut kreq = 0;
        for _ in 0..RUNS {
            let (t, n) = kubectl_apply(&file);
            kt.push(t);
            kreq = n;
        }
        println!("shipped stack: kubectl apply --server-side no-op (median of {RUNS}): {:?}, ~{kreq} requests", median(kt));

        // helm upgrade --install on its own namespace, same chart and values.
        let hns = TestNamespace::new("bench-helm").await;
        let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/todo-chatbot");
        let helm_run = || {
            let start = Instant::now();
            let o = support::helm()
                .args(["upgrade", "--install", "todo-chatbot"])
                .arg(&chart)
                .args(["-n", hns.name(), "--set", "frontend.service.type=ClusterIP", "--set", "migrations.enabled=false"])
                .output()
                .expect("helm");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            start.elapsed()
        };
        helm_run();
        let ht: Vec<Duration> = (0..RUNS).map(|_| helm_run()).collect();
        println!("shipped stack: helm upgrade --install no-op (median of {RUNS}): {:?}", median(ht));
        ns.cleanup().await;
        kns.cleanup().await;
        hns.cleanup().await;

        // 1,000 generated objects.
        let ns = TestNamespace::new("bench-many").await;
        let repo = generated_repo(ns.name(), 1000);
        let start = Instant::now();
        reconcile::reconcile_commit(repo.path(), "HEAD", &opts, &helm, &mut Clusters::default()).await.expect("first");
        println!("1000 objects: first apply: {:?}", start.elapsed());
        let (t, reads, writes) = converge_noop(&repo, &opts, &helm).await;
        println!("1000 objects: converge no-op (median of {RUNS}): {t:?}, {reads} reads, {writes} writes");
        let file = tmp.path().join("many.yaml");
        let kns = TestNamespace::new("bench-kubectl-many").await;
        dump_manifests(ns.name(), "many", kns.name(), &file);
        kubectl_apply(&file);
        let mut kt = Vec::new();
        let mut kreq = 0;
        for _ in 0..3 {
            let (t, n) = kubectl_apply(&file);
            kt.push(t);
            kreq = n;
        }
        println!("1000 objects: kubectl apply --server-side no-op (median of 3): {:?}, ~{kreq} requests", median(kt));
        ns.cleanup().await;
        kns.cleanup().await;
    });
}
