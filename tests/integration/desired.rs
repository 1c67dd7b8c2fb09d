//! The desired state read from real git commits: every validation rule, with the exact file,
//! line, column and message a user sees. These need no cluster.

use std::process::Command;

use converge::desired::{self, Diagnostic, Report};
use converge::source::Repo;

use crate::support::git::{write_minimal_stack, GitRepo};

fn load(repo: &GitRepo, rev: &str) -> Result<desired::Loaded, Report> {
    let r = Repo::open(repo.path()).expect("open repository");
    let snap = r.snapshot(rev).expect("resolve revision");
    desired::load(&snap, "desired")
}

fn errors(repo: &GitRepo) -> Vec<Diagnostic> {
    let report = load(repo, "HEAD").expect_err("the desired state should be refused");
    report
        .diagnostics
        .into_iter()
        .filter(|d| d.is_error())
        .collect()
}

/// The one error with `code`, asserting there is exactly one.
fn only(errors: &[Diagnostic], code: &str) -> Diagnostic {
    let found: Vec<_> = errors.iter().filter(|d| d.code == code).collect();
    assert_eq!(found.len(), 1, "expected one `{code}` in {errors:#?}");
    found[0].clone()
}

fn at(d: &Diagnostic) -> (String, usize, usize) {
    (d.file.clone(), d.line, d.column)
}

fn with_component(body: &str) -> GitRepo {
    let repo = GitRepo::new();
    write_minimal_stack(&repo);
    repo.write("desired/extra.yaml", body);
    repo.commit("add a component");
    repo
}

const HEAD: &str =
    "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: extra\nimage:\n  ref: redis:7\n";

#[test]
fn a_valid_stack_loads_with_dependencies_first() {
    let repo = GitRepo::new();
    write_minimal_stack(&repo);
    let commit = repo.commit("stack");
    let loaded = load(&repo, "HEAD").expect("valid");
    assert_eq!(loaded.state.commit, commit);
    let stack = &loaded.state.stacks[0];
    assert_eq!(stack.spec.name, "shop");
    assert_eq!(
        stack.spec.context, "minikube",
        "context defaults to minikube"
    );
    assert_eq!(
        stack.release(),
        "shop",
        "release defaults to the stack name"
    );
    let names: Vec<_> = stack
        .components
        .iter()
        .map(|c| c.spec.name.as_str())
        .collect();
    assert_eq!(names, ["db", "api"]);
    assert!(loaded.report.diagnostics.is_empty());
}

#[test]
fn the_shipped_desired_state_at_head_is_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = Repo::open(root).expect("the project is a git checkout");
    let snap = repo.snapshot("HEAD").expect("HEAD");
    let loaded = desired::load(&snap, "desired").unwrap_or_else(|r| panic!("{}", r.render(false)));
    let stacks: Vec<_> = loaded
        .state
        .stacks
        .iter()
        .map(|s| (s.dir.as_str(), s.spec.namespace.as_str()))
        .collect();
    assert_eq!(
        stacks,
        [
            ("desired/dev", "todo-chatbot"),
            ("desired/staging", "todo-chatbot-staging")
        ]
    );
    for s in &loaded.state.stacks {
        let names: Vec<_> = s.components.iter().map(|c| c.spec.name.as_str()).collect();
        assert_eq!(names, ["postgres", "backend", "frontend"]);
    }
}

#[test]
fn a_typo_in_a_field_name_is_an_unknown_field_with_a_suggestion() {
    let repo = with_component(&format!("{HEAD}replica: 2\n"));
    let e = only(&errors(&repo), "unknown-field");
    assert_eq!(at(&e), ("desired/extra.yaml".into(), 6, 1));
    assert_eq!(e.message, "unknown field `replica`");
    assert_eq!(e.help.as_deref(), Some("did you mean `replicas`?"));
    assert!(e.expected.as_deref().unwrap().contains("`replicas`"));
}

#[test]
fn a_secret_value_cannot_be_written_in_secret_env() {
    let repo = with_component(&format!(
        "{HEAD}secretEnv:\n  - name: API_TOKEN\n    secret: s\n    key: k\n    value: hunter2\n"
    ));
    let e = only(&errors(&repo), "unknown-field");
    assert_eq!(at(&e), ("desired/extra.yaml".into(), 10, 5));
    assert_eq!(e.message, "unknown field `value`");
    let report = load(&repo, "HEAD").unwrap_err();
    assert!(
        !report.render(false).contains("hunter2x"),
        "the value is not echoed beyond its key line"
    );
}

#[test]
fn wrong_types_say_what_was_expected() {
    let repo = with_component(&format!("{HEAD}replicas: two\n"));
    let e = only(&errors(&repo), "wrong-type");
    assert_eq!(at(&e), ("desired/extra.yaml".into(), 6, 11));
    assert_eq!(e.value.as_deref(), Some("two"));
    assert_eq!(e.expected.as_deref(), Some("a whole number"));
}

#[test]
fn negative_and_absurd_replicas_are_out_of_range() {
    for (n, col) in [("-1", 11), ("5000", 11)] {
        let repo = with_component(&format!("{HEAD}replicas: {n}\n"));
        let e = only(&errors(&repo), "out-of-range");
        assert_eq!(at(&e), ("desired/extra.yaml".into(), 6, col));
        assert_eq!(e.value.as_deref(), Some(n));
        assert_eq!(e.expected.as_deref(), Some("a whole number from 0 to 100"));
    }
}

#[test]
fn malformed_quantities_are_named_with_the_accepted_forms() {
    let repo = with_component(&format!(
        "{HEAD}resources:\n  limits:\n    memory: 512MB\n    cpu: 0.5cores\n"
    ));
    let errs = errors(&repo);
    let q: Vec<_> = errs.iter().filter(|d| d.code == "bad-quantity").collect();
    assert_eq!(q.len(), 2, "{errs:#?}");
    assert_eq!(at(q[0]), ("desired/extra.yaml".into(), 8, 13));
    assert_eq!(q[0].message, "`512MB` is not a Kubernetes quantity");
    assert_eq!(at(q[1]), ("desired/extra.yaml".into(), 9, 10));
    assert_eq!(q[1].value.as_deref(), Some("0.5cores"));
    assert!(q[1].expected.as_deref().unwrap().contains("512Mi"));
}

#[test]
fn a_request_above_its_limit_is_refused() {
    let repo = with_component(&format!(
        "{HEAD}resources:\n  requests: {{cpu: '1', memory: 1Gi}}\n  limits: {{cpu: 500m, memory: 2Gi}}\n"
    ));
    let e = only(&errors(&repo), "request-above-limit");
    assert_eq!(at(&e), ("desired/extra.yaml".into(), 7, 19));
    assert_eq!(e.message, "cpu request is above its limit (1 > 500m)");
}

#[test]
fn a_component_defined_in_two_files_is_a_duplicate() {
    let repo = GitRepo::new();
    write_minimal_stack(&repo);
    repo.write("desired/zz-api-copy.yaml", "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: api\nimage: {ref: 'nginx:1.27'}\n");
    repo.commit("dup");
    let e = only(&errors(&repo), "duplicate-component");
    assert_eq!(at(&e), ("desired/zz-api-copy.yaml".into(), 3, 7));
    assert_eq!(e.message, "component `api` is defined twice");
    assert_eq!(
        e.help.as_deref(),
        Some("first defined at desired/api.yaml:3; rename or remove one")
    );
}

#[test]
fn depends_on_an_unknown_component_or_a_cycle_is_refused() {
    let repo = with_component(&format!("{HEAD}dependsOn: [dbb]\n"));
    let e = only(&errors(&repo), "unknown-dependency");
    assert_eq!(at(&e), ("desired/extra.yaml".into(), 6, 13));
    assert_eq!(e.help.as_deref(), Some("did you mean `db`?"));

    let repo = GitRepo::new();
    write_minimal_stack(&repo);
    repo.write("desired/db.yaml", "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: db\nimage: {ref: 'postgres:16'}\ndependsOn: [api]\n");
    repo.commit("cycle");
    let e = only(&errors(&repo), "dependency-cycle");
    assert!(
        e.message.starts_with("`dependsOn` forms a cycle: "),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("api → db → api") || e.message.contains("db → api → db"),
        "{}",
        e.message
    );
}

/// The minimal stack with `localUrls` lines appended to its `kind: Stack` document.
fn with_local_urls(lines: &str) -> GitRepo {
    let repo = GitRepo::new();
    write_minimal_stack(&repo);
    repo.write(
        "desired/stack.yaml",
        format!("apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: shop\nnamespace: shop\nchart: charts/app\nlocalUrls:\n{lines}"),
    );
    repo.commit("local urls");
    repo
}

#[test]
fn local_urls_name_a_component_a_port_in_range_and_no_local_port_twice() {
    let repo = with_local_urls("  - {component: api, localPort: 3000}\n  - {component: db, port: 5432, localPort: 15432}\n");
    let loaded = load(&repo, "HEAD").expect("valid local URLs");
    let urls = &loaded.state.stacks[0].spec.local_urls;
    assert_eq!(urls.len(), 2);
    assert_eq!(
        (urls[1].component.as_str(), urls[1].port, urls[1].local_port),
        ("db", Some(5432), 15432)
    );

    let repo = with_local_urls("  - {component: apii, localPort: 3000}\n");
    let e = only(&errors(&repo), "unknown-component");
    assert_eq!(at(&e), ("desired/stack.yaml".into(), 7, 17));
    assert_eq!(e.help.as_deref(), Some("did you mean `api`?"));

    let repo = with_local_urls(
        "  - {component: api, localPort: 3000}\n  - {component: db, localPort: 3000}\n",
    );
    let e = only(&errors(&repo), "duplicate-local-port");
    assert_eq!(at(&e), ("desired/stack.yaml".into(), 8, 32));
    assert_eq!(e.message, "local port 3000 is used twice");

    for bad in ["0", "65536", "-1"] {
        let repo = with_local_urls(&format!("  - {{component: api, localPort: {bad}}}\n"));
        let e = only(&errors(&repo), "out-of-range");
        assert_eq!(e.path, "/localUrls/0/localPort", "{e:#?}");
    }
    let repo = with_local_urls("  - {component: api, localPort: 3000, port: 70000}\n");
    only(&errors(&repo), "out-of-range");
}

#[test]
fn a_build_context_outside_the_repository_is_refused() {
    let repo = with_component(
        "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: extra\nimage:\n  build:\n    context: ../elsewhere\n    repository: x\n",
    );
    let e = only(&errors(&repo), "context-outside-repo");
    assert_eq!(at(&e), ("desired/extra.yaml".into(), 6, 14));
}

#[test]
fn a_dockerfile_only_in_the_working_tree_is_missing_from_the_commit() {
    let repo = with_component(
        "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: extra\nimage:\n  build:\n    context: apps/api\n    dockerfile: Dockerfile.prod\n    repository: x\n",
    );
    repo.write("apps/api/Dockerfile.prod", "FROM scratch\n");
    let e = only(&errors(&repo), "missing-dockerfile");
    assert_eq!(at(&e), ("desired/extra.yaml".into(), 7, 17));
    assert_eq!(
        e.message,
        "Dockerfile `apps/api/Dockerfile.prod` is not in this commit"
    );
}

#[test]
fn a_mutable_tag_is_a_warning_not_an_error() {
    let repo = with_component("apiVersion: converge.dev/v1alpha1\nkind: Component\nname: extra\nimage:\n  ref: redis:latest\n");
    let loaded = load(&repo, "HEAD").expect("warnings do not refuse the state");
    let w = &loaded.report.diagnostics;
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].code, "mutable-tag");
    assert_eq!((w[0].line, w[0].column), (5, 8));

    let repo = with_component(
        "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: extra\nimage:\n  ref: redis\n",
    );
    let loaded = load(&repo, "HEAD").expect("valid");
    assert_eq!(
        loaded.report.diagnostics[0].message,
        "image `redis` has no tag, which can change under the same name"
    );
}

#[test]
fn a_credential_in_plain_env_points_to_secret_references() {
    let repo = with_component(&format!(
        "{HEAD}env:\n  LOG_LEVEL: debug\n  DB_PASSWORD: hunter2\n"
    ));
    let e = only(&errors(&repo), "credential-in-env");
    assert_eq!(at(&e), ("desired/extra.yaml".into(), 8, 3));
    assert!(e.help.as_deref().unwrap().contains("secretEnv"));
    let rendered = load(&repo, "HEAD").unwrap_err().render(false);
    assert!(rendered.contains("DB_PASSWORD"));
}

#[test]
fn a_missing_or_empty_desired_directory_is_an_error_never_an_empty_state() {
    let repo = GitRepo::new();
    repo.write("README.md", "hi\n");
    repo.commit("nothing");
    let e = only(&errors(&repo), "missing-desired");
    assert_eq!(e.file, "desired");

    let repo = GitRepo::new();
    repo.write("desired/notes.txt", "later\n");
    repo.commit("empty");
    only(&errors(&repo), "no-stack");

    let repo = GitRepo::new();
    write_minimal_stack(&repo);
    repo.remove("desired/db.yaml").remove("desired/api.yaml");
    repo.commit("no components");
    let e = only(&errors(&repo), "no-components");
    assert_eq!(e.file, "desired/stack.yaml");
}

#[test]
fn yaml_syntax_errors_point_at_the_line() {
    let repo = with_component(&format!("{HEAD}env: {{A: 1\n"));
    let e = only(&errors(&repo), "yaml-syntax");
    assert_eq!(e.file, "desired/extra.yaml");
    assert!(e.line >= 6, "{e:?}");
}

#[test]
fn non_utf8_oversized_and_escaping_symlink_files_are_refused() {
    let repo = GitRepo::new();
    write_minimal_stack(&repo);
    repo.write(
        "desired/latin1.yaml",
        b"# caf\xe9\nkind: Component\n".as_slice(),
    );
    repo.write("desired/huge.yaml", "#".repeat(desired::MAX_FILE_BYTES + 1));
    std::os::unix::fs::symlink("/etc/hostname", repo.file("desired/link.yaml")).unwrap();
    repo.commit("bad files");
    let errs = errors(&repo);
    let e = only(&errs, "not-utf8");
    assert_eq!(
        (e.file.as_str(), e.line, e.column),
        ("desired/latin1.yaml", 1, 6)
    );
    assert_eq!(only(&errs, "file-too-large").file, "desired/huge.yaml");
    assert_eq!(only(&errs, "symlink-escapes").file, "desired/link.yaml");
}

#[test]
fn every_error_in_every_file_is_reported_at_once() {
    let repo = GitRepo::new();
    write_minimal_stack(&repo);
    repo.write(
        "desired/a.yaml",
        format!("{HEAD}replica: 1\n").replace("extra", "a"),
    );
    repo.write(
        "desired/b.yaml",
        format!("{HEAD}env: {{SECRET_THING: x}}\n").replace("extra", "b"),
    );
    repo.write(
        "desired/c.yaml",
        format!("{HEAD}dependsOn: [nope]\n").replace("extra", "c"),
    );
    repo.commit("three problems");
    let errs = errors(&repo);
    let codes: Vec<_> = errs.iter().map(|d| (d.file.as_str(), d.code)).collect();
    assert_eq!(
        codes,
        [
            ("desired/a.yaml", "unknown-field"),
            ("desired/b.yaml", "credential-in-env"),
            ("desired/c.yaml", "unknown-dependency")
        ]
    );
}

#[test]
fn uncommitted_edits_in_the_working_tree_are_never_read() {
    let repo = GitRepo::new();
    write_minimal_stack(&repo);
    repo.commit("valid");
    // A broken, unstaged edit: the commit is still what counts.
    repo.write("desired/api.yaml", "kind: [broken\n");
    assert!(load(&repo, "HEAD").is_ok());
    // And a staged-but-uncommitted fix of a broken commit does not make it valid.
    repo.commit("broken");
    write_minimal_stack(&repo);
    repo.git(&["add", "-A"]);
    assert!(load(&repo, "HEAD").is_err());
}

#[test]
fn branches_and_amended_commits_are_read_by_revision() {
    let repo = GitRepo::new();
    write_minimal_stack(&repo);
    let first = repo.commit("v1");
    repo.git(&["checkout", "-q", "-b", "feature"]);
    repo.write("desired/api.yaml", "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: api\nimage: {ref: 'nginx:1.27'}\nreplicas: 7\n");
    repo.commit("feature");
    let replicas = |rev: &str| {
        let l = load(&repo, rev).expect("valid");
        l.state.stacks[0].component("api").unwrap().spec.replicas
    };
    assert_eq!(replicas("feature"), Some(7));
    assert_eq!(replicas("main"), Some(2));
    repo.write("desired/api.yaml", "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: api\nimage: {ref: 'nginx:1.27'}\nreplicas: 9\n");
    repo.git(&["commit", "-q", "-a", "--amend", "-m", "feature v2"]);
    assert_eq!(replicas("feature"), Some(9));
    assert_eq!(load(&repo, &first).unwrap().state.commit, first);
}

fn converge(args: &[&str], dir: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_converge"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run converge");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn validate_exits_0_when_valid_1_when_invalid_2_on_repository_errors() {
    let repo = GitRepo::new();
    write_minimal_stack(&repo);
    repo.commit("valid");
    let (code, out) = converge(&["validate"], repo.path());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("desired state is valid"), "{out}");

    repo.write("desired/api.yaml", "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: api\nimage: {ref: 'nginx:1.27'}\nreplica: 2\n");
    repo.commit("typo");
    let (code, out) = converge(&["validate"], repo.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error[unknown-field]: unknown field `replica`"),
        "{out}"
    );
    assert!(out.contains("--> desired/api.yaml:5:1"), "{out}");
    assert!(out.contains("5 | replica: 2"), "{out}");
    assert!(out.contains("nothing will be applied"), "{out}");

    let (code, out) = converge(&["validate", "-o", "json"], repo.path());
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["valid"], false);
    assert_eq!(v["diagnostics"][0]["file"], "desired/api.yaml");
    assert_eq!(v["diagnostics"][0]["line"], 5);
    assert_eq!(v["diagnostics"][0]["column"], 1);
    assert_eq!(v["diagnostics"][0]["code"], "unknown-field");

    let (code, out) = converge(&["validate", "--rev", "no-such-branch"], repo.path());
    assert_eq!(code, 2);
    assert!(out.contains("unknown revision `no-such-branch`"), "{out}");

    let empty = tempfile::tempdir().unwrap();
    let (code, out) = converge(&["validate"], empty.path());
    assert_eq!(code, 2);
    assert!(out.contains("is not a git repository"), "{out}");
}

#[test]
fn the_shipped_json_schema_matches_the_types() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = std::fs::read_to_string(root.join("docs/schema/desired.schema.json"))
        .expect("docs/schema/desired.schema.json");
    let shipped: serde_json::Value = serde_json::from_str(&shipped).unwrap();
    assert_eq!(
        shipped,
        converge::desired::schema::document_schema(),
        "regenerate with `cargo run -- schema > docs/schema/desired.schema.json`"
    );
}

#[test]
fn components_of_an_invalid_stack_are_not_called_orphans() {
    let repo = GitRepo::new();
    write_minimal_stack(&repo);
    repo.write("desired/stack.yaml", "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: shop\nnamespace: Shop\nchart: charts/app\n");
    repo.commit("bad namespace");
    let errs = errors(&repo);
    let e = only(&errs, "bad-value");
    assert_eq!(at(&e), ("desired/stack.yaml".into(), 4, 12));
    assert!(
        errs.iter().all(|d| d.code != "orphan-component"),
        "{errs:#?}"
    );
}

#[test]
fn a_component_outside_any_stack_directory_is_an_orphan() {
    let repo = GitRepo::new();
    write_minimal_stack(&repo);
    repo.commit("stack");
    std::fs::create_dir_all(repo.file("desired/dev")).unwrap();
    repo.git(&["mv", "desired/stack.yaml", "desired/dev/stack.yaml"]);
    repo.commit("stack moved below its components");
    let errs = errors(&repo);
    assert_eq!(
        errs.iter().filter(|d| d.code == "orphan-component").count(),
        2,
        "{errs:#?}"
    );
}
