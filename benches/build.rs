//! Build-input hashing speed (issue 6): the shipped app contexts (`apps/backend`, `apps/frontend` at
//! HEAD of this repository) and a generated 10,000-file context. Target: under 300 ms warm (the
//! blob-hash cache filled), which is how the daemon runs after its first reconcile.

use std::process::Command;
use std::time::Instant;

use converge::build::{plan_one, DigestCache};
use converge::desired::BuildSpec;
use converge::source::Repo;
use criterion::{criterion_group, criterion_main, Criterion};

fn git(dir: &std::path::Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "git {args:?}");
}

fn spec(context: &str) -> BuildSpec {
    BuildSpec {
        context: context.into(),
        dockerfile: "Dockerfile".into(),
        repository: "bench".into(),
        args: [(
            "MODE".to_string(),
            converge::desired::schema::EnvValue("x".into()),
        )]
        .into(),
        target: None,
        platform: None,
        push: false,
    }
}

/// A repository whose `ctx/` holds `n` files in 100 directories, with a `.dockerignore` that
/// excludes a tenth of them and re-includes some.
fn generated_repo(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    git(p, &["init", "-q", "-b", "main"]);
    git(p, &["config", "user.email", "bench@converge.invalid"]);
    git(p, &["config", "user.name", "bench"]);
    let ctx = p.join("ctx");
    std::fs::create_dir_all(&ctx).expect("mkdir");
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY . /\n").expect("write");
    std::fs::write(ctx.join(".dockerignore"), "**/*.log\nd0*\n!d01\n**/tmp\n").expect("write");
    for i in 0..n {
        let d = ctx.join(format!("d{:02}", i % 100));
        std::fs::create_dir_all(&d).expect("mkdir");
        let name = if i % 10 == 0 {
            format!("f{i}.log")
        } else {
            format!("f{i}.txt")
        };
        std::fs::write(d.join(name), format!("file {i}\n").repeat(20)).expect("write");
    }
    git(p, &["add", "-A"]);
    git(p, &["commit", "-q", "-m", "generated"]);
    dir
}

fn bench(c: &mut Criterion) {
    let here =
        Repo::open(std::path::Path::new(env!("CARGO_MANIFEST_DIR"))).expect("this repository");
    let head = here.snapshot("HEAD").expect("HEAD");
    let cache = DigestCache::new();
    for app in ["apps/backend", "apps/frontend"] {
        let s = spec(app);
        let files = converge::build::digest::resolve_context(&head, app, &s)
            .expect("context")
            .files
            .len();
        let t = Instant::now();
        plan_one(&head, app, &s, &DigestCache::new()).expect("cold plan");
        eprintln!("{app}: {files} files sent; cold hash {:?}", t.elapsed());
        c.bench_function(&format!("hash {app} (warm)"), |b| {
            b.iter(|| plan_one(&head, app, &s, &cache).expect("plan"))
        });
    }

    let repo_dir = generated_repo(10_000);
    let repo = Repo::open(repo_dir.path()).expect("generated repo");
    let snap = repo.snapshot("HEAD").expect("HEAD");
    let s = spec("ctx");
    let files = converge::build::digest::resolve_context(&snap, "ctx", &s)
        .expect("context")
        .files
        .len();
    let cache = DigestCache::new();
    let t = Instant::now();
    plan_one(&snap, "ctx", &s, &cache).expect("cold plan");
    eprintln!(
        "generated: 10000 files committed, {files} sent; cold hash {:?}",
        t.elapsed()
    );
    let mut g = c.benchmark_group("generated");
    g.sample_size(20);
    g.bench_function("hash 10,000-file context (warm)", |b| {
        b.iter(|| plan_one(&snap, "ctx", &s, &cache).expect("plan"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
