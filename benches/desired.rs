//! Validation speed: the shipped `desired/` read from a commit, and a generated 500-component stack.
//! Targets (issue 3): under 20 ms and under 200 ms.

use std::process::Command;

use converge::desired;
use converge::source::Repo;
use criterion::{criterion_group, criterion_main, Criterion};

fn git(dir: &std::path::Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(args)
        .current_dir(dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "git {args:?}");
}

fn generated_repo(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    git(p, &["init", "-q", "-b", "main"]);
    std::fs::create_dir_all(p.join("desired")).unwrap();
    std::fs::create_dir_all(p.join("charts/app")).unwrap();
    std::fs::write(
        p.join("charts/app/Chart.yaml"),
        "apiVersion: v2\nname: app\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(
        p.join("desired/stack.yaml"),
        "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: big\nnamespace: big\nchart: charts/app\n",
    )
    .unwrap();
    for i in 0..n {
        let dep = if i > 0 {
            format!("dependsOn: [c{}]\n", i - 1)
        } else {
            String::new()
        };
        std::fs::write(
            p.join(format!("desired/c{i}.yaml")),
            format!(
                "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: c{i}\nimage:\n  ref: nginx:1.27\nreplicas: 2\nresources:\n  requests: {{cpu: 100m, memory: 128Mi}}\n  limits: {{cpu: 500m, memory: 256Mi}}\nports:\n  - {{name: http, containerPort: 8080}}\nenv:\n  LOG_LEVEL: info\nsecretEnv:\n  - {{name: DB_URL, secret: s, key: url}}\n{dep}"
            ),
        )
        .unwrap();
    }
    git(p, &["add", "-A"]);
    git(
        p,
        &[
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b",
            "commit",
            "-q",
            "-m",
            "gen",
        ],
    );
    dir
}

fn bench(c: &mut Criterion) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = Repo::open(root).expect("project checkout");
    c.bench_function("validate shipped desired/ at HEAD", |b| {
        b.iter(|| {
            let snap = repo.snapshot("HEAD").expect("HEAD");
            desired::load(&snap, "desired").expect("valid")
        })
    });
    let big = generated_repo(500);
    let big_repo = Repo::open(big.path()).expect("generated repo");
    c.bench_function("validate 500 components", |b| {
        b.iter(|| {
            let snap = big_repo.snapshot("HEAD").expect("HEAD");
            let l = desired::load(&snap, "desired").expect("valid");
            assert_eq!(l.state.stacks[0].components.len(), 500);
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
