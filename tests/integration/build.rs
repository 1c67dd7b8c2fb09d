//! Image builds on the testbed's real Docker engine, from real git repositories, with
//! `FROM scratch` fixtures (nothing is pulled). Every test uses its own repository names, so runs
//! never see each other's images, and removes them when done.

use converge::build::{
    self, Action, BuildOptions, BuildOutcome, CallCounts, DigestCache, Engine, ImagePlan,
};
use converge::desired::{self, schema::BuilderKind, Stack};
use converge::source::Repo;

use crate::support::git::GitRepo;
use crate::support::{self, run_ok, unique_name};

/// A repository with a stack of two built components, `api` and `web`, and the image repository
/// names they use (unique per test).
struct Fixture {
    repo: GitRepo,
    api: String,
    web: String,
}

impl Fixture {
    fn new() -> Self {
        let f = Self {
            repo: GitRepo::new(),
            api: unique_name("conv-api"),
            web: unique_name("conv-web"),
        };
        // A label of this fixture's own first: the legacy builder's layer cache is shared by
        // every test on the engine, and another fixture's clean-up (`docker rmi -f`) could delete a
        // cached layer this build is reusing ("unable to find image sha256:…").
        let api_dockerfile = format!(
            "FROM scratch\nLABEL converge.test.fixture={}\nCOPY hello /hello\n",
            f.api
        );
        let web_dockerfile = format!(
            "FROM scratch\nLABEL converge.test.fixture={}\nCOPY index.html /index.html\n",
            f.web
        );
        f.repo
            .write("charts/app/Chart.yaml", "apiVersion: v2\nname: app\nversion: 0.1.0\n")
            .write("apps/api/Dockerfile", api_dockerfile)
            .write("apps/api/hello", "api v1\n")
            .write("apps/api/.dockerignore", "*.log\n")
            .write("apps/api/debug.log", "noise\n")
            .write("apps/web/Dockerfile", web_dockerfile)
            .write("apps/web/index.html", "<p>web v1</p>\n")
            .write(
                "desired/stack.yaml",
                "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: shop\nnamespace: shop\nchart: charts/app\nbuilder: docker\n",
            );
        f.component("api", "apps/api", "Dockerfile", &f.api, "");
        f.component("web", "apps/web", "Dockerfile", &f.web, "");
        f.repo.commit("initial");
        f
    }

    fn component(
        &self,
        name: &str,
        context: &str,
        dockerfile: &str,
        repository: &str,
        extra: &str,
    ) {
        self.repo.write(
            &format!("desired/{name}.yaml"),
            format!(
                "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: {name}\nimage:\n  build:\n    context: {context}\n    dockerfile: {dockerfile}\n    repository: {repository}\n{extra}resources:\n  requests: {{cpu: 10m, memory: 16Mi}}\n  limits: {{cpu: 100m, memory: 64Mi}}\n"
            ),
        );
    }

    /// The stack and its plans at `rev`, computed from the commit.
    fn plan(&self, rev: &str) -> (Stack, Vec<ImagePlan>, String) {
        let repo = Repo::open(self.repo.path()).expect("open repo");
        let snapshot = repo.snapshot(rev).expect("snapshot");
        let loaded = desired::load(&snapshot, "desired")
            .unwrap_or_else(|r| panic!("invalid desired state:\n{}", r.render(false)));
        let stack = loaded.state.stacks.into_iter().next().expect("one stack");
        let plans = build::plan(&snapshot, &stack, &DigestCache::new()).expect("plan");
        (stack, plans, snapshot.commit().to_string())
    }

    /// Plans HEAD and ensures its images on the bed with a fresh engine; returns the outcomes
    /// (keyed by component) and the engine's call counts.
    async fn ensure(&self) -> (Vec<BuildOutcome>, CallCounts) {
        self.ensure_with(docker_opts()).await.expect("ensure")
    }

    async fn ensure_with(
        &self,
        opts: BuildOptions,
    ) -> Result<(Vec<BuildOutcome>, CallCounts), build::BuildError> {
        let (stack, plans, commit) = self.plan("HEAD");
        let engine = Engine::new(&opts).expect("engine");
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let outcomes = build::ensure_with(
            &engine,
            self.repo.path(),
            &commit,
            &plans,
            &stack,
            &opts,
            rx,
        )
        .await?;
        Ok((outcomes, engine.calls()))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for repository in [&self.api, &self.web] {
            let ids = support::docker()
                .args([
                    "image",
                    "ls",
                    "--format",
                    "{{.Repository}}:{{.Tag}}",
                    repository,
                ])
                .output();
            if let Ok(out) = ids {
                for r in String::from_utf8_lossy(&out.stdout).lines() {
                    let _ = support::docker().args(["rmi", "-f", r]).output();
                }
            }
        }
    }
}

fn docker_opts() -> BuildOptions {
    BuildOptions {
        docker_host: Some(support::docker_host().to_string()),
        ..BuildOptions::new(BuilderKind::Docker)
    }
}

fn action<'a>(outcomes: &'a [BuildOutcome], component: &str) -> &'a Action {
    &outcomes
        .iter()
        .find(|o| o.component == component)
        .unwrap_or_else(|| panic!("no outcome for {component}: {outcomes:?}"))
        .action
}

fn tag<'a>(plans: &'a [ImagePlan], component: &str) -> &'a str {
    &plans
        .iter()
        .find(|p| p.component == component)
        .unwrap_or_else(|| panic!("no plan for {component}"))
        .image
}

/// The bytes of `path` inside `image` (a `FROM scratch` image cannot run, so copy it out).
fn file_in_image(image: &str, path: &str) -> String {
    let id = run_ok(support::docker().args(["create", image, "/none"]));
    let id = id.trim();
    let out = support::docker()
        .args(["cp", &format!("{id}:{path}"), "-"])
        .output()
        .expect("docker cp");
    let _ = support::docker().args(["rm", id]).output();
    let mut archive = tar::Archive::new(out.stdout.as_slice());
    let mut entry = archive
        .entries()
        .expect("tar")
        .next()
        .expect("one entry")
        .expect("entry");
    let mut s = String::new();
    std::io::Read::read_to_string(&mut entry, &mut s).expect("utf-8 file");
    s
}

#[tokio::test]
async fn first_run_builds_every_image_and_a_no_change_run_makes_one_check_per_image_and_zero_builds(
) {
    let f = Fixture::new();
    let (first, calls) = f.ensure().await;
    assert_eq!(action(&first, "api"), &Action::Built);
    assert_eq!(action(&first, "web"), &Action::Built);
    assert_eq!((calls.checks, calls.builds), (2, 2));

    let (second, calls) = f.ensure().await;
    assert_eq!(action(&second, "api"), &Action::Exists);
    assert_eq!(action(&second, "web"), &Action::Exists);
    assert_eq!(
        calls,
        CallCounts {
            checks: 2,
            builds: 0,
            pushes: 0,
            loads: 0,
            other: 0
        },
        "a no-change run is one existence check per image and nothing else"
    );
}

#[tokio::test]
async fn changing_one_file_rebuilds_only_that_image() {
    let f = Fixture::new();
    f.ensure().await;
    let (_, before, _) = f.plan("HEAD");
    f.repo.write("apps/api/hello", "api v2\n");
    f.repo.commit("api v2");
    let (_, after, _) = f.plan("HEAD");
    assert_ne!(tag(&before, "api"), tag(&after, "api"));
    assert_eq!(tag(&before, "web"), tag(&after, "web"));

    let (outcomes, calls) = f.ensure().await;
    assert_eq!(action(&outcomes, "api"), &Action::Built);
    assert_eq!(action(&outcomes, "web"), &Action::Exists);
    assert_eq!(calls.builds, 1);
    assert_eq!(file_in_image(tag(&after, "api"), "/hello"), "api v2\n");
}

#[tokio::test]
async fn changing_an_ignored_file_rebuilds_nothing() {
    let f = Fixture::new();
    f.ensure().await;
    let (_, before, _) = f.plan("HEAD");
    f.repo.write("apps/api/debug.log", "other noise\n");
    f.repo.write("apps/api/new.log", "new noise\n");
    f.repo.commit("logs");
    let (_, after, _) = f.plan("HEAD");
    assert_eq!(before, after);
    let (outcomes, calls) = f.ensure().await;
    assert!(
        outcomes.iter().all(|o| o.action == Action::Exists),
        "{outcomes:?}"
    );
    assert_eq!(calls.builds, 0);
}

#[tokio::test]
async fn a_revert_reuses_the_old_tag_with_zero_builds() {
    let f = Fixture::new();
    f.ensure().await;
    let (_, v1, _) = f.plan("HEAD");
    f.repo.write("apps/web/index.html", "<p>web v2</p>\n");
    f.repo.commit("web v2");
    let (outcomes, _) = f.ensure().await;
    assert_eq!(action(&outcomes, "web"), &Action::Built);

    f.repo.git(&["revert", "--no-edit", "HEAD"]);
    let (_, reverted, _) = f.plan("HEAD");
    assert_eq!(
        v1, reverted,
        "a revert means the same inputs, so the same tags"
    );
    let (outcomes, calls) = f.ensure().await;
    assert!(
        outcomes.iter().all(|o| o.action == Action::Exists),
        "{outcomes:?}"
    );
    assert_eq!(calls.builds, 0);
}

#[tokio::test]
async fn a_broken_dockerfile_fails_naming_the_step_while_the_other_image_builds() {
    let f = Fixture::new();
    f.repo.write(
        "apps/api/Dockerfile",
        "FROM scratch\nCOPY hello /hello\nCOPY missing-file /x\n",
    );
    f.repo.commit("broken api");
    let (outcomes, _) = f.ensure().await;
    match action(&outcomes, "api") {
        Action::Failed { reason, log_tail } => {
            assert!(
                reason.contains("Step 3/3 : COPY missing-file /x"),
                "reason: {reason}"
            );
            assert!(reason.contains("missing-file"), "reason: {reason}");
            assert!(log_tail.lines().count() <= 40);
            assert!(log_tail.contains("Step 1/3"), "tail: {log_tail}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(action(&outcomes, "web"), &Action::Built);
}

#[tokio::test]
async fn a_build_arg_change_rebuilds() {
    let f = Fixture::new();
    f.repo.write(
        "apps/api/Dockerfile",
        "FROM scratch\nARG FLAVOUR\nLABEL flavour=$FLAVOUR\nCOPY hello /hello\n",
    );
    f.component(
        "api",
        "apps/api",
        "Dockerfile",
        &f.api,
        "    args: {FLAVOUR: mild}\n",
    );
    f.repo.commit("arg mild");
    f.ensure().await;
    let (_, mild, _) = f.plan("HEAD");

    f.component(
        "api",
        "apps/api",
        "Dockerfile",
        &f.api,
        "    args: {FLAVOUR: hot}\n",
    );
    f.repo.commit("arg hot");
    let (_, hot, _) = f.plan("HEAD");
    assert_ne!(tag(&mild, "api"), tag(&hot, "api"));
    let (outcomes, calls) = f.ensure().await;
    assert_eq!(action(&outcomes, "api"), &Action::Built);
    assert_eq!(calls.builds, 1);
    let label = run_ok(support::docker().args([
        "image",
        "inspect",
        "--format",
        "{{index .Config.Labels \"flavour\"}}",
        tag(&hot, "api"),
    ]));
    assert_eq!(label.trim(), "hot");
}

#[tokio::test]
async fn two_components_sharing_a_context_with_different_dockerfiles_hash_apart() {
    let f = Fixture::new();
    f.repo.write(
        "apps/api/Dockerfile.debug",
        "FROM scratch\nCOPY hello /debug-hello\n",
    );
    f.component("web", "apps/api", "Dockerfile.debug", &f.web, "");
    f.repo.commit("web shares api's context");
    let (_, plans, _) = f.plan("HEAD");
    let digest = |c: &str| {
        plans
            .iter()
            .find(|p| p.component == c)
            .map(|p| p.digest.clone())
    };
    assert_ne!(digest("api"), digest("web"));
    let web = tag(&plans, "web");
    let (outcomes, _) = f.ensure().await;
    assert!(
        outcomes.iter().all(|o| o.action == Action::Built),
        "{outcomes:?}"
    );
    assert_eq!(file_in_image(web, "/debug-hello"), "api v1\n");
}

#[tokio::test]
async fn uncommitted_working_tree_edits_never_affect_the_hash_or_the_image() {
    let f = Fixture::new();
    let (_, committed, _) = f.plan("HEAD");
    f.repo.write("apps/api/hello", "uncommitted edit\n");
    f.repo.write("apps/api/extra", "untracked\n");
    f.repo.git(&["add", "apps/api/extra"]); // staged but not committed: still not the commit
    let (_, dirty, _) = f.plan("HEAD");
    assert_eq!(committed, dirty);
    let (outcomes, _) = f.ensure().await;
    assert_eq!(action(&outcomes, "api"), &Action::Built);
    assert_eq!(file_in_image(tag(&committed, "api"), "/hello"), "api v1\n");
}

#[tokio::test]
async fn an_unreachable_engine_error_names_the_socket_and_the_fix() {
    let f = Fixture::new();
    let opts = BuildOptions {
        docker_host: Some("unix:///tmp/converge-no-such-engine.sock".into()),
        ..BuildOptions::new(BuilderKind::Docker)
    };
    let err = f.ensure_with(opts).await.expect_err("no engine there");
    let msg = err.to_string();
    assert!(
        msg.contains("unix:///tmp/converge-no-such-engine.sock"),
        "{msg}"
    );
    assert!(msg.contains("eval $(minikube docker-env)"), "{msg}");
}

#[tokio::test]
async fn the_none_builder_computes_tags_without_calling_an_engine() {
    let f = Fixture::new();
    let (outcomes, calls) = f
        .ensure_with(BuildOptions::new(BuilderKind::None))
        .await
        .expect("none never fails");
    assert!(outcomes.iter().all(|o| o.action == Action::Skipped));
    assert_eq!(calls, CallCounts::default());
}

#[tokio::test]
async fn pruning_keeps_the_newest_tags_the_protected_one_and_those_containers_use() {
    let f = Fixture::new();
    let mut tags = Vec::new();
    for v in 1..=4 {
        f.repo.write("apps/api/hello", format!("api v{v}\n"));
        f.repo.commit(&format!("api v{v}"));
        let (outcomes, _) = f.ensure().await;
        // Every tag must exist before pruning is judged: a failed build would look like a
        // prune that removed nothing.
        assert_eq!(action(&outcomes, "api"), &Action::Built, "{outcomes:?}");
        tags.push(tag(&f.plan("HEAD").1, "api").to_string());
        // Creation times have one-second resolution in `docker image ls`.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    let opts = BuildOptions {
        keep: 1,
        ..docker_opts()
    };
    let container = run_ok(support::docker().args(["create", &tags[1], "/none"]));
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let report = build::prune_old(&opts, std::slice::from_ref(&f.api), &[tags[0].clone()], rx)
        .await
        .expect("prune");
    let _ = support::docker().args(["rm", container.trim()]).output();
    assert_eq!(report.removed, vec![tags[2].clone()], "{report:?}");
    assert_eq!(report.protected, vec![tags[0].clone()]);
    assert_eq!(report.in_use, vec![tags[1].clone()]);
    let left = run_ok(support::docker().args([
        "image",
        "ls",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        &f.api,
    ]));
    let mut left: Vec<&str> = left.lines().collect();
    left.sort();
    let mut want = vec![tags[0].as_str(), tags[1].as_str(), tags[3].as_str()];
    want.sort();
    assert_eq!(left, want);
}

#[test]
fn the_build_command_prints_each_components_tag_and_action() {
    let f = Fixture::new();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_converge"))
        .args([
            "build",
            "--builder",
            "docker",
            "--docker-host",
            support::docker_host(),
            "-o",
            "json",
            "--repo",
        ])
        .arg(f.repo.path())
        .output()
        .expect("run converge build");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json output");
    let images = v["stacks"][0]["images"].as_array().expect("images");
    assert_eq!(images.len(), 2);
    assert!(images.iter().all(|i| i["action"] == "built"), "{images:?}");
}
