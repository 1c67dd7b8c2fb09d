//! The reconcile engine against the testbed's real control plane: the shipped chart deployed
//! from a real git commit, changes, drift, conflicts, pruning, failures, request counts.

use std::time::Duration;

use converge::reconcile::{self, Clusters, Options, StackReport};
use converge::render::Helm;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use kube::api::{Api, Patch, PatchParams};

use crate::support::git::{copy_project_dir, GitRepo};
use crate::support::{kubectl, run_ok, testbed, TestNamespace};

/// Copies the project's chart into `repo` and writes the todo-chatbot stack for namespace `ns`,
/// with prebuilt image references (the bed's kwok node never pulls images) and the frontend on
/// a ClusterIP Service so parallel tests do not fight over NodePort 30080.
fn stack_repo(ns: &str) -> GitRepo {
    let repo = GitRepo::new();
    copy_project_dir(&repo, "charts/todo-chatbot", "charts/todo-chatbot");
    repo.write(
        "desired/stack.yaml",
        format!(
            "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: todo\nnamespace: {ns}\nrelease: todo-chatbot\nvalues:\n  frontend:\n    service: {{type: ClusterIP, port: 80}}\n"
        ),
    );
    repo.write(
        "desired/postgres.yaml",
        component(
            "postgres",
            "postgres:16-alpine",
            1,
            "[]",
            "- {name: POSTGRES_PASSWORD, secret: todo-secrets, key: postgres-password}",
        ),
    );
    repo.write(
        "desired/backend.yaml",
        component(
            "backend",
            "todo-backend:test",
            2,
            "[postgres]",
            "- {name: DATABASE_URL, secret: todo-secrets, key: database-url}\n  - {name: JWT_SECRET, secret: todo-secrets, key: jwt-secret}",
        ),
    );
    repo.write(
        "desired/frontend.yaml",
        component(
            "frontend",
            "todo-frontend:test",
            2,
            "[backend]",
            "- {name: JWT_SECRET, secret: todo-secrets, key: jwt-secret}",
        ),
    );
    repo.commit("todo-chatbot stack");
    repo
}

fn component(name: &str, image: &str, replicas: u32, deps: &str, secrets: &str) -> String {
    format!(
        "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: {name}\nimage:\n  ref: {image}\nreplicas: {replicas}\nsecretEnv:\n  {secrets}\ndependsOn: {deps}\n"
    )
}

async fn create_secret(ns: &TestNamespace, keys: &[&str]) {
    crate::support::create_secret(ns, "todo-secrets", keys).await;
}

const ALL_KEYS: &[&str] = &["postgres-password", "database-url", "jwt-secret"];

fn options() -> Options {
    let bed = testbed();
    Options {
        kubeconfig: Some(bed.kubeconfig.clone()),
        context: Some(crate::support::current_context()),
        timeout: Duration::from_secs(180),
        fail_fast: Duration::from_secs(3),
        ..Options::default()
    }
}

async fn reconcile(repo: &GitRepo, opts: &Options) -> StackReport {
    let helm = Helm::at(&testbed().helm);
    let mut clusters = Clusters::default();
    let mut reports = reconcile::reconcile_commit(repo.path(), "HEAD", opts, &helm, &mut clusters)
        .await
        .expect("reconcile");
    assert_eq!(reports.len(), 1);
    reports.remove(0)
}

/// Reconciles and asserts the stack ended healthy, showing the whole report when not.
async fn ready(repo: &GitRepo, opts: &Options) -> StackReport {
    let r = reconcile(repo, opts).await;
    assert!(r.ready, "expected a healthy stack: {r:#?}");
    r
}

fn converge(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_converge"))
        .args(args)
        .env("KUBECONFIG", &testbed().kubeconfig)
        .env("CONVERGE_HELM", &testbed().helm)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn the_shipped_stack_deploys_healthy_and_a_second_apply_makes_zero_writes() {
    let ns = TestNamespace::new("engine-deploy").await;
    create_secret(&ns, ALL_KEYS).await;
    let repo = stack_repo(ns.name());
    let opts = options();
    let first = reconcile(&repo, &opts).await;
    assert!(first.ready, "{first:#?}");
    let health: Vec<_> = first
        .status
        .components
        .iter()
        .map(|c| (c.name.as_str(), c.health.as_str(), c.ready))
        .collect();
    assert_eq!(
        health,
        [
            ("postgres", "Healthy", 1),
            ("backend", "Healthy", 2),
            ("frontend", "Healthy", 2)
        ]
    );
    let pvcs = ns
        .api::<PersistentVolumeClaim>()
        .list(&Default::default())
        .await
        .unwrap();
    assert_eq!(pvcs.items.len(), 1, "postgres got its volume");

    let second = reconcile(&repo, &opts).await;
    assert!(second.ready);
    assert!(second.applied.is_empty(), "{:?}", second.applied);
    assert_eq!(
        second.requests.writes, 0,
        "a no-op reconcile writes nothing: {:?}",
        second.requests
    );
    assert_eq!(second.requests.dry_runs, 0);

    let ctx = crate::support::current_context();
    let (code, out) = converge(&[
        "diff",
        "--repo",
        repo.path().to_str().unwrap(),
        "--context",
        &ctx,
    ]);
    assert_eq!(code, 0, "a freshly applied stack diffs as empty: {out}");

    let (code, out) = converge(&["status", "--context", &ctx, "--stack", "todo", "-o", "json"]);
    assert!(code == 0 || code == 1, "{out}");
    assert!(
        out.contains(ns.name()),
        "status lists the stack's namespace: {out}"
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn a_replicas_change_patches_only_that_deployment() {
    let ns = TestNamespace::new("engine-replicas").await;
    create_secret(&ns, ALL_KEYS).await;
    let repo = stack_repo(ns.name());
    let opts = options();
    ready(&repo, &opts).await;
    repo.write(
        "desired/backend.yaml",
        std::fs::read_to_string(repo.file("desired/backend.yaml"))
            .unwrap()
            .replace("replicas: 2", "replicas: 3"),
    );
    repo.commit("scale backend");
    let r = reconcile(&repo, &opts).await;
    assert!(r.ready, "{r:#?}");
    assert_eq!(
        r.applied,
        [format!(
            "Deployment/todo-chatbot-backend (namespace {})",
            ns.name()
        )]
    );
    assert_eq!(r.status.components[1].ready, 3);
    ns.cleanup().await;
}

/// A claim the chart renders itself (not one a StatefulSet makes from its volumeClaimTemplates,
/// which is never in the inventory): only the prune guard keeps it when its component goes.
const RENDERED_CLAIM: &str = "{{- if .Values.postgres.enabled }}\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {{ .Release.Name }}-postgres-backup\n  namespace: {{ .Release.Namespace }}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 64Mi\n{{- end }}\n";

#[tokio::test]
async fn a_removed_component_is_pruned_while_its_volumes_stay() {
    let ns = TestNamespace::new("engine-prune").await;
    create_secret(&ns, ALL_KEYS).await;
    let repo = stack_repo(ns.name());
    repo.write(
        "charts/todo-chatbot/templates/postgres-backup-pvc.yaml",
        RENDERED_CLAIM,
    );
    repo.commit("postgres gets a backup claim rendered by the chart");
    let opts = options();
    let first = ready(&repo, &opts).await;
    let claim = format!(
        "PersistentVolumeClaim/todo-chatbot-postgres-backup (namespace {})",
        ns.name()
    );
    assert!(
        first.applied.contains(&claim),
        "the rendered claim is applied, so it is in the inventory: {:?}",
        first.applied
    );
    repo.remove("desired/postgres.yaml");
    repo.write(
        "desired/backend.yaml",
        std::fs::read_to_string(repo.file("desired/backend.yaml"))
            .unwrap()
            .replace("dependsOn: [postgres]", "dependsOn: []"),
    );
    repo.commit("drop postgres");
    let r = reconcile(&repo, &opts).await;
    assert!(r.ready, "{r:#?}");
    assert!(
        r.pruned
            .iter()
            .any(|p| p.starts_with("StatefulSet/todo-chatbot-postgres")),
        "{:?}",
        r.pruned
    );
    assert!(
        r.pruned
            .iter()
            .any(|p| p.starts_with("Service/todo-chatbot-postgres")),
        "{:?}",
        r.pruned
    );
    assert!(
        !r.pruned
            .iter()
            .any(|p| p.starts_with("PersistentVolumeClaim/")),
        "no claim is pruned: {:?}",
        r.pruned
    );
    assert!(
        r.kept.iter().any(|k| k.starts_with(&claim)),
        "the rendered claim is kept, with why: {:?}",
        r.kept
    );
    let pvcs = ns
        .api::<PersistentVolumeClaim>()
        .list(&Default::default())
        .await
        .unwrap();
    let mut live: Vec<_> = pvcs
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect();
    live.sort();
    assert_eq!(
        live,
        [
            "data-todo-chatbot-postgres-0",
            "todo-chatbot-postgres-backup"
        ],
        "neither the StatefulSet's nor the chart's data volume is ever pruned"
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn a_missing_secret_blocks_only_its_component_with_the_command_to_fix_it() {
    let ns = TestNamespace::new("engine-secret").await;
    create_secret(&ns, &["postgres-password", "database-url"]).await;
    let repo = stack_repo(ns.name());
    let r = reconcile(&repo, &options()).await;
    assert!(!r.ready);
    let health: Vec<_> = r
        .status
        .components
        .iter()
        .map(|c| (c.name.as_str(), c.health.as_str()))
        .collect();
    assert_eq!(
        health,
        [
            ("postgres", "Healthy"),
            ("backend", "Blocked"),
            ("frontend", "Blocked")
        ]
    );
    let why = r.blocked["backend"].why();
    assert!(
        why.contains("has no key `jwt-secret`")
            && why.contains("kubectl patch secret todo-secrets"),
        "{why}"
    );
    assert!(
        !why.contains("not-a-real-value"),
        "secret values never appear"
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn a_conflict_with_another_field_manager_is_reported_with_its_name() {
    let ns = TestNamespace::new("engine-conflict").await;
    create_secret(&ns, ALL_KEYS).await;
    let repo = stack_repo(ns.name());
    let mut opts = options();
    ready(&repo, &opts).await;
    let cms: Api<ConfigMap> = ns.api();
    let patch =
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"DB_NAME": "theirs"}});
    cms.patch(
        "todo-chatbot-backend-config",
        &PatchParams::apply("other-tool").force(),
        &Patch::Apply(&patch),
    )
    .await
    .unwrap();
    let r = reconcile(&repo, &opts).await;
    assert!(!r.ready);
    let msg = r.errors.join("\n");
    assert!(
        msg.contains("conflict with field manager other-tool") && msg.contains(".data.DB_NAME"),
        "{msg}"
    );
    assert!(msg.contains("--force-conflicts"), "{msg}");
    opts.force_conflicts = true;
    ready(&repo, &opts).await;
    let cm = cms.get("todo-chatbot-backend-config").await.unwrap();
    assert_eq!(cm.data.unwrap()["DB_NAME"], "todo");
    ns.cleanup().await;
}

#[tokio::test]
async fn a_hand_scale_is_undone_and_kubectl_loses_ownership() {
    let ns = TestNamespace::new("engine-drift").await;
    create_secret(&ns, ALL_KEYS).await;
    let repo = stack_repo(ns.name());
    let opts = options();
    ready(&repo, &opts).await;
    run_ok(kubectl().args([
        "-n",
        ns.name(),
        "scale",
        "deployment/todo-chatbot-backend",
        "--replicas=5",
    ]));
    run_ok(kubectl().args([
        "-n",
        ns.name(),
        "annotate",
        "deployment/todo-chatbot-backend",
        "--overwrite",
        "kubectl.kubernetes.io/last-applied-configuration={}",
    ]));
    let r = reconcile(&repo, &opts).await;
    assert!(r.ready, "{r:#?}");
    assert_eq!(
        r.applied,
        [format!(
            "Deployment/todo-chatbot-backend (namespace {})",
            ns.name()
        )]
    );
    let d = ns
        .api::<Deployment>()
        .get("todo-chatbot-backend")
        .await
        .unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(2));
    let managers: Vec<String> = d
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        !managers.iter().any(|m| m.starts_with("kubectl")),
        "{managers:?}"
    );
    assert!(!d
        .metadata
        .annotations
        .unwrap_or_default()
        .contains_key("kubectl.kubernetes.io/last-applied-configuration"));
    ns.cleanup().await;
}

#[tokio::test]
async fn a_rollout_that_never_becomes_ready_fails_fast_with_the_pods_reason() {
    let ns = TestNamespace::new("engine-crash").await;
    create_secret(&ns, ALL_KEYS).await;
    let repo = stack_repo(ns.name());
    let backend = std::fs::read_to_string(repo.file("desired/backend.yaml")).unwrap();
    repo.write(
        "desired/backend.yaml",
        format!("{backend}values:\n  podLabels: {{converge.test/fail: crashloop}}\n"),
    );
    repo.commit("crashing backend");
    let started = std::time::Instant::now();
    let r = reconcile(&repo, &options()).await;
    assert!(!r.ready);
    assert_eq!(r.reason, "HealthCheckFailed");
    assert_eq!(r.failed_step, Some("health"));
    let msg = r.errors.join("\n");
    assert!(
        msg.contains("CrashLoopBackOff") && msg.contains("pod todo-chatbot-backend-"),
        "{msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "failed fast, not after the timeout"
    );
    assert_eq!(
        r.status.components[2].health, "Blocked",
        "the frontend waits for its dependency"
    );
    assert!(r.pruned.is_empty());
    ns.cleanup().await;
}

#[tokio::test]
async fn an_immutable_selector_change_is_explained_and_recreate_replaces_what_holds_no_data() {
    let ns = TestNamespace::new("engine-immutable").await;
    create_secret(&ns, ALL_KEYS).await;
    let repo = stack_repo(ns.name());
    let mut opts = options();
    ready(&repo, &opts).await;
    let stack = std::fs::read_to_string(repo.file("desired/stack.yaml")).unwrap();
    repo.write(
        "desired/stack.yaml",
        format!("{stack}  nameOverride: todo\n"),
    );
    repo.commit("rename: changes selector labels");
    let r = reconcile(&repo, &opts).await;
    assert!(!r.ready);
    let msg = r.errors.join("\n");
    assert!(
        msg.contains("StatefulSet/todo-chatbot-postgres")
            && msg.contains("cannot be changed in place"),
        "{msg}"
    );
    assert!(
        msg.contains("holds data"),
        "a StatefulSet is never re-created: {msg}"
    );

    // Without the StatefulSet, the Deployments' selector change can be replaced safely.
    repo.remove("desired/postgres.yaml");
    repo.write(
        "desired/backend.yaml",
        std::fs::read_to_string(repo.file("desired/backend.yaml"))
            .unwrap()
            .replace("dependsOn: [postgres]", "dependsOn: []"),
    );
    repo.commit("no database");
    let r = reconcile(&repo, &opts).await;
    let msg = r.errors.join("\n");
    assert!(
        msg.contains("`spec.selector` cannot be changed in place") && msg.contains("--recreate"),
        "{msg}"
    );
    opts.recreate = true;
    let r = reconcile(&repo, &opts).await;
    assert!(r.ready, "{r:#?}");
    let d = ns
        .api::<Deployment>()
        .get("todo-chatbot-backend")
        .await
        .unwrap();
    assert_eq!(
        d.spec.unwrap().selector.match_labels.unwrap()["app.kubernetes.io/name"],
        "todo"
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn an_invalid_commit_changes_nothing_in_the_cluster() {
    let ns = TestNamespace::new("engine-invalid").await;
    create_secret(&ns, ALL_KEYS).await;
    let repo = stack_repo(ns.name());
    let opts = options();
    ready(&repo, &opts).await;
    let before = ns
        .api::<Deployment>()
        .get("todo-chatbot-backend")
        .await
        .unwrap()
        .metadata
        .resource_version;
    repo.write(
        "desired/backend.yaml",
        std::fs::read_to_string(repo.file("desired/backend.yaml"))
            .unwrap()
            .replace("replicas: 2", "replica: 9"),
    );
    repo.commit("typo");
    let helm = Helm::at(&testbed().helm);
    let err =
        reconcile::reconcile_commit(repo.path(), "HEAD", &opts, &helm, &mut Clusters::default())
            .await
            .unwrap_err();
    assert_eq!(err.reason(), "ValidationFailed");
    let after = ns
        .api::<Deployment>()
        .get("todo-chatbot-backend")
        .await
        .unwrap()
        .metadata
        .resource_version;
    assert_eq!(before, after);
    // `converge apply` records the invalid commit as the daemon does: `converge status` says
    // why, where, and that the cluster still runs the last good commit.
    let client = ns.client();
    let s = converge::status::load(&client, ns.name(), "todo")
        .await
        .unwrap()
        .expect("a status record");
    assert!(!s.ready);
    assert_eq!(s.reason, "ValidationFailed");
    assert!(
        s.message.contains("desired/backend.yaml:") && s.message.contains("replica"),
        "{}",
        s.message
    );
    assert_eq!(s.last_applied_commit, s.last_healthy_commit);
    assert_ne!(s.last_applied_commit, repo.head());
    ns.cleanup().await;
}

#[tokio::test]
async fn an_unreachable_cluster_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: nowhere, context: {cluster: c, user: u}}]\ncurrent-context: nowhere\n").unwrap();
    let repo = stack_repo("unreachable");
    let opts = Options {
        kubeconfig: Some(kc),
        context: Some("nowhere".into()),
        ..Options::default()
    };
    let err = reconcile::reconcile_commit(
        repo.path(),
        "HEAD",
        &opts,
        &Helm::at(&testbed().helm),
        &mut Clusters::default(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot reach the API server at https://127.0.0.1:1 (kube context nowhere)"),
        "{err}"
    );
    let opts = Options {
        context: Some("minikube".into()),
        kubeconfig: Some(testbed().kubeconfig.clone()),
        ..Options::default()
    };
    let err = reconcile::reconcile_commit(
        repo.path(),
        "HEAD",
        &opts,
        &Helm::at(&testbed().helm),
        &mut Clusters::default(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("kube context `minikube` is not in the kubeconfig"),
        "{err}"
    );
}

/// A repository with the `hooks` fixture chart and a one-component stack in `ns`.
fn hooks_repo(ns: &str, fail: bool, greeting: &str) -> GitRepo {
    let repo = GitRepo::new();
    copy_project_dir(&repo, "tests/fixtures/charts/hooks", "charts/hooks");
    write_hooks_stack(&repo, ns, fail, greeting);
    repo
}

fn write_hooks_stack(repo: &GitRepo, ns: &str, fail: bool, greeting: &str) {
    repo.write(
        "desired/stack.yaml",
        format!("apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: hooks\nnamespace: {ns}\nchart: charts/hooks\nvalues:\n  failHook: {fail}\n  data: {{greeting: {greeting}}}\n"),
    );
    repo.write("desired/app.yaml", "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: app\nimage: {ref: 'busybox:1.36'}\n");
    repo.commit("hooks stack");
}

#[tokio::test]
async fn helm_hooks_run_in_order_and_a_failed_hook_applies_nothing_after_it() {
    let ns = TestNamespace::new("engine-hooks").await;
    let repo = hooks_repo(ns.name(), false, "hello");
    let opts = options();
    let r = reconcile(&repo, &opts).await;
    assert!(r.ready, "{r:#?}");
    let cms: Api<ConfigMap> = ns.api();
    assert_eq!(
        cms.get("app-config").await.unwrap().data.unwrap()["greeting"],
        "hello"
    );
    assert!(
        cms.get_opt("post-install-marker").await.unwrap().is_some(),
        "post-install hook ran after the release was healthy"
    );
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = ns.api();
    assert!(
        jobs.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "hook-succeeded Jobs are deleted"
    );

    write_hooks_stack(&repo, ns.name(), true, "changed");
    let r = reconcile(&repo, &opts).await;
    assert!(!r.ready);
    assert_eq!(r.reason, "HookFailed");
    // The migration hook runs before the upgrade: nothing after it was applied.
    assert_eq!(r.failed_step, Some("pre-hooks"));
    let msg = r.errors.join("\n");
    assert!(
        msg.contains("hook Job/migrate") && msg.contains("BackoffLimitExceeded"),
        "{msg}"
    );
    assert_eq!(
        cms.get("app-config").await.unwrap().data.unwrap()["greeting"],
        "hello",
        "nothing is applied after a failed pre-upgrade hook"
    );
    ns.cleanup().await;
}

/// `(hook, action, detail)` of each hook a report names.
fn hook_actions(r: &StackReport) -> Vec<(String, String, String)> {
    r.hooks
        .iter()
        .map(|h| {
            let action = serde_json::to_value(h.action).unwrap();
            (
                h.hook.clone(),
                action.as_str().unwrap().to_string(),
                h.detail.clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_hook_unchanged_since_its_last_success_is_skipped_and_a_changed_one_runs_again() {
    let ns = TestNamespace::new("engine-hook-skip").await;
    let repo = hooks_repo(ns.name(), false, "hello");
    let first = repo.head();
    let opts = options();
    let r = ready(&repo, &opts).await;
    let ran: Vec<_> = hook_actions(&r)
        .into_iter()
        .map(|(h, a, _)| (h, a))
        .collect();
    assert_eq!(
        ran,
        [
            ("Job/prepare".to_string(), "ran".to_string()),
            ("Job/migrate".to_string(), "ran".to_string()),
            (
                "ConfigMap/post-install-marker".to_string(),
                "ran".to_string()
            ),
        ],
        "{r:#?}"
    );
    let inv = converge::cluster::inventory::load(&ns.client(), ns.name(), "hooks")
        .await
        .unwrap();
    let recorded: Vec<&str> = inv.hooks.runs.iter().map(|h| h.hook.as_str()).collect();
    assert!(
        recorded.contains(&"Job/migrate") && inv.hooks.runs.iter().all(|h| h.commit == first),
        "each successful hook is recorded with its commit: {:?}",
        inv.hooks
    );
    assert_eq!(inv.hooks.settled, first, "the install's hooks all ran");

    // A commit that changes only what the hooks do not render: applied, hooks skipped.
    write_hooks_stack(&repo, ns.name(), false, "changed");
    let r = ready(&repo, &opts).await;
    let cms: Api<ConfigMap> = ns.api();
    assert_eq!(
        cms.get("app-config").await.unwrap().data.unwrap()["greeting"],
        "changed"
    );
    let short = &first[..7];
    for (hook, action, detail) in hook_actions(&r) {
        assert_eq!(action, "skipped", "{hook}: {r:#?}");
        assert_eq!(detail, format!("unchanged since {short}"), "{hook}");
    }
    assert_eq!(hook_actions(&r).len(), 3, "{r:#?}");

    // A no-op reconcile and a drift correction are not deploys: no hook is even considered.
    let r = ready(&repo, &opts).await;
    assert!(r.hooks.is_empty(), "{r:#?}");
    // As `kubectl edit` would: a merge patch under kubectl's field manager.
    let by_hand = kube::api::PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..Default::default()
    };
    cms.patch(
        "app-config",
        &by_hand,
        &kube::api::Patch::Merge(serde_json::json!({"data": {"greeting": "by hand"}})),
    )
    .await
    .unwrap();
    let r = ready(&repo, &opts).await;
    assert_eq!(
        r.applied.len(),
        1,
        "the drifted ConfigMap is re-applied: {r:#?}"
    );
    assert!(
        r.hooks.is_empty(),
        "a drift correction runs no hook: {r:#?}"
    );

    // A commit that changes a hook's render runs the phase again.
    write_hooks_stack(&repo, ns.name(), true, "changed");
    let r = reconcile(&repo, &opts).await;
    assert_eq!(r.reason, "HookFailed", "{r:#?}");
    assert!(
        hook_actions(&r)
            .iter()
            .any(|(h, a, _)| h == "Job/migrate" && a == "failed"),
        "{r:#?}"
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn a_missing_helm_binary_says_how_to_install_it() {
    let err = Helm::at("/nonexistent/helm")
        .check()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("helm was not found") && err.contains("install Helm v3.8"),
        "{err}"
    );
}

/// A stack with one component, `backend`, built by converge from a `FROM scratch` context.
fn built_backend_repo(ns: &str) -> GitRepo {
    let repo = GitRepo::new();
    copy_project_dir(&repo, "charts/todo-chatbot", "charts/todo-chatbot");
    repo.write(
        "desired/stack.yaml",
        format!("apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: built\nnamespace: {ns}\nrelease: todo-chatbot\nbuilder: docker\nvalues:\n  migrations: {{enabled: false}}\n"),
    );
    repo.write(
        "desired/backend.yaml",
        "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: backend\nimage:\n  build: {context: app, repository: converge-test/revert}\nreplicas: 1\nsecretEnv: []\n",
    );
    repo.write("app/Dockerfile", "FROM scratch\nCOPY version /version\n");
    // Unique per test run: the bed's Docker engine outlives a run, and the same content would
    // (rightly) find its image already there.
    repo.write("app/version", format!("v1 {ns}\n"));
    repo.commit("v1");
    repo
}

fn built_options() -> Options {
    let mut opts = options();
    opts.build.docker_host = testbed().docker_host.clone();
    opts
}

#[tokio::test]
async fn git_revert_brings_back_the_previous_image_without_building_it() {
    let ns = TestNamespace::new("engine-revert").await;
    let repo = built_backend_repo(ns.name());
    let opts = built_options();
    let image = |r: &StackReport| {
        r.builds
            .iter()
            .map(|b| (b.image.clone(), format!("{:?}", b.action)))
            .collect::<Vec<_>>()
    };
    let v1 = ready(&repo, &opts).await;
    let (tag1, action) = image(&v1)[0].clone();
    assert_eq!(action, "Built");
    repo.write("app/version", format!("v2 {}\n", ns.name()));
    repo.commit("v2");
    let v2 = ready(&repo, &opts).await;
    let (tag2, action) = image(&v2)[0].clone();
    assert_ne!(tag1, tag2, "a changed input is a new tag");
    assert_eq!(action, "Built");
    repo.git(&["revert", "--no-edit", "HEAD"]);
    let reverted = ready(&repo, &opts).await;
    assert_eq!(
        image(&reverted),
        [(tag1.clone(), "Exists".to_string())],
        "the revert reuses the old image: zero builds"
    );
    let d = ns
        .api::<Deployment>()
        .get("todo-chatbot-backend")
        .await
        .unwrap();
    let running = d.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone()
        .unwrap();
    assert_eq!(running, tag1);
    ns.cleanup().await;
}

/// [`built_backend_repo`] with the chart's migration hook on (it runs the backend image, as in the
/// shipped chart) before anything is applied, `builder`, and `values` lines added.
fn with_migrations(repo: &GitRepo, ns: &str, builder: &str, values: &str) {
    repo.write(
        "desired/stack.yaml",
        format!("apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: built\nnamespace: {ns}\nrelease: todo-chatbot\nbuilder: {builder}\nvalues:\n  migrations: {{enabled: true, hooks: 'pre-install,pre-upgrade'}}\n  postgres: {{enabled: false}}\n{values}"),
    );
    repo.commit("migrations on");
}

#[tokio::test]
async fn a_failed_build_starts_no_hook_with_the_image_that_was_not_built_and_says_build_failed() {
    let ns = TestNamespace::new("engine-build-hook").await;
    create_secret(&ns, ALL_KEYS).await;
    let repo = built_backend_repo(ns.name());
    with_migrations(&repo, ns.name(), "docker", "");
    let opts = built_options();
    let v1 = ready(&repo, &opts).await;
    let old_image = v1.builds[0].image.clone();
    assert!(
        hook_actions(&v1)
            .iter()
            .any(|(h, a, _)| h == "Job/todo-chatbot-migrations" && a == "ran"),
        "{v1:#?}"
    );

    repo.write(
        "app/Dockerfile",
        "FROM scratch\nCOPY version /version\nRUN [\"/bin/sh\", \"-c\", \"exit 3\"]\n",
    );
    repo.write("app/version", format!("v2 {}\n", ns.name()));
    repo.commit("a broken Dockerfile");
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = ns.api();
    let r = reconcile(&repo, &opts).await;
    assert!(!r.ready);
    assert_eq!(r.reason, "BuildFailed", "{r:#?}");
    assert_eq!(r.failed_step, Some("build"));
    let new_image = r.builds[0].image.clone();
    assert_ne!(new_image, old_image);
    let msg = r.errors.join("\n");
    assert!(
        msg.contains("backend") && msg.contains(&new_image) && msg.contains("hook"),
        "the reason names the component, the image and the hook held back: {msg}"
    );
    assert!(
        hook_actions(&r).iter().all(|(_, a, _)| a == "held"),
        "{r:#?}"
    );
    assert!(
        jobs.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "no hook Job was started with {new_image}"
    );
    let running = ns
        .api::<Deployment>()
        .get("todo-chatbot-backend")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .image
        .clone()
        .unwrap();
    assert_eq!(running, old_image, "the previous version keeps serving");
    ns.cleanup().await;
}

#[tokio::test]
async fn with_the_none_builder_an_image_no_node_holds_is_not_applied_and_the_reason_says_so() {
    let ns = TestNamespace::new("engine-none-missing").await;
    create_secret(&ns, ALL_KEYS).await;
    let repo = built_backend_repo(ns.name());
    // Built elsewhere (never, here), run only from a node's store, as on minikube.
    with_migrations(
        &repo,
        ns.name(),
        "none",
        "  backend: {image: {pullPolicy: Never}}\n",
    );
    let r = reconcile(&repo, &options()).await;
    assert!(!r.ready);
    assert_eq!(r.reason, "BuildFailed", "{r:#?}");
    let image = r.builds[0].image.clone();
    let msg = r.errors.join("\n");
    assert!(
        msg.contains(&format!("image {image} is on no node")) && msg.contains("`none` builder"),
        "{msg}"
    );
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = ns.api();
    assert!(
        jobs.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "no hook Job was started with {image}"
    );
    assert!(
        ns.api::<Deployment>()
            .get_opt("todo-chatbot-backend")
            .await
            .unwrap()
            .is_none(),
        "no Deployment runs {image}"
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn kill_9_mid_apply_then_removing_the_half_created_component_prunes_what_it_had_created() {
    let ns = TestNamespace::new("engine-kill").await;
    create_secret(&ns, ALL_KEYS).await;
    let repo = stack_repo(ns.name());
    let ctx = crate::support::current_context();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_converge"))
        .args([
            "apply",
            "--repo",
            repo.path().to_str().unwrap(),
            "--context",
            &ctx,
        ])
        .env("KUBECONFIG", &testbed().kubeconfig)
        .env("CONVERGE_HELM", &testbed().helm)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the StatefulSet exists: every Service is created by then (they go before
    // workloads), while the backend and frontend Deployments still wait on postgres. The
    // frontend is half-created: its Service exists, its Deployment does not.
    let sts: Api<k8s_openapi::api::apps::v1::StatefulSet> = ns.api();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sts
        .get_opt("todo-chatbot-postgres")
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "apply never reached the StatefulSet"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let services: Api<k8s_openapi::api::core::v1::Service> = ns.api();
    assert!(
        services
            .get_opt("todo-chatbot-frontend")
            .await
            .unwrap()
            .is_some(),
        "the frontend was not half-created when the apply was killed"
    );
    let deployments: Api<Deployment> = ns.api();
    assert!(
        deployments
            .get_opt("todo-chatbot-frontend")
            .await
            .unwrap()
            .is_none(),
        "killed too late: the frontend was fully created"
    );

    // The user drops the half-created component: only a record made before the create (the
    // write-ahead inventory) lets the next reconcile find and prune what the killed run made.
    repo.remove("desired/frontend.yaml");
    repo.commit("drop frontend");
    let r = ready(&repo, &options()).await;
    assert!(
        r.pruned
            .iter()
            .any(|p| p.starts_with("Service/todo-chatbot-frontend")),
        "{:?}",
        r.pruned
    );
    let left = crate::support::run_ok(crate::support::kubectl().args([
        "-n",
        ns.name(),
        "get",
        "all,cm,sa,pdb",
        "-l",
        "app.kubernetes.io/component=frontend",
        "-o",
        "name",
    ]));
    assert_eq!(left.trim(), "", "orphans of the killed apply");
    ns.cleanup().await;
}
