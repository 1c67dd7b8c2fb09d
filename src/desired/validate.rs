//! Rules that need more than one document's schema: ownership of components by stacks, names,
//! quantities, images and paths in the commit, credentials in plain env, and `dependsOn`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::diagnostic::Pos;
use super::diagnostic::{Diagnostic, Report};
use super::quantity::{Quantity, QUANTITY_EXPECTED};
use super::schema::{ComponentSpec, QuantityText, ResourceList, StackSpec};
use super::yaml::{escape, looks_like_credential};
use super::{Component, Parsed, Stack};
use crate::source::{join_within, EntryKind, Snapshot};

/// Groups documents into stacks, checks every rule, and returns the stacks when nothing failed
/// structurally (errors in the report still make the caller refuse the state).
pub(crate) fn assemble(
    snapshot: &Snapshot<'_>,
    dir: &str,
    stacks: Vec<Parsed<StackSpec>>,
    components: Vec<Parsed<ComponentSpec>>,
    broken_stacks: &[String],
    report: &mut Report,
) -> Option<Vec<Stack>> {
    // A stack owns the directory of its file and everything below it, down to the next stack.
    let mut by_dir: BTreeMap<String, Parsed<StackSpec>> = BTreeMap::new();
    for s in stacks {
        let d = parent(&s.file).to_string();
        if let Some(first) = by_dir.get(&d) {
            let pos = key_pos(&s, "/kind");
            report.push(
                Diagnostic::error("duplicate-stack", &s.file, pos, "a second stack in the same directory")
                    .at_path("/kind")
                    .value(s.spec.name.clone())
                    .help(format!(
                        "stack `{}` is already defined in {}; put each stack in its own directory (e.g. {dir}/dev/, {dir}/staging/)",
                        first.spec.name, first.file
                    )),
            );
            continue;
        }
        by_dir.insert(d, s);
    }
    let mut owned: BTreeMap<String, Vec<Parsed<ComponentSpec>>> = BTreeMap::new();
    for c in components {
        let owner = by_dir
            .keys()
            .filter(|d| is_within(&c.file, d))
            .max_by_key(|d| d.len())
            .cloned();
        let under_broken_stack = broken_stacks.iter().any(|f| is_within(&c.file, parent(f)));
        match owner {
            Some(d) => owned.entry(d).or_default().push(c),
            None if under_broken_stack => {}
            None => report.push(
                Diagnostic::error(
                    "orphan-component",
                    &c.file,
                    key_pos(&c, "/kind"),
                    format!("component `{}` belongs to no stack", c.spec.name),
                )
                .at_path("/kind")
                .help(format!(
                    "put it in the directory of a `kind: Stack` file, or in a directory below one (under {dir}/)"
                )),
            ),
        }
    }
    check_stack_conflicts(&by_dir, report);

    let mut out = Vec::new();
    for (d, stack) in by_dir {
        let comps = owned.remove(&d).unwrap_or_default();
        if let Some(s) = check_stack(snapshot, d, stack, comps, report) {
            out.push(s);
        }
    }
    if out.is_empty() {
        return None;
    }
    Some(out)
}

fn check_stack_conflicts(by_dir: &BTreeMap<String, Parsed<StackSpec>>, report: &mut Report) {
    let mut seen: HashMap<(String, String), &Parsed<StackSpec>> = HashMap::new();
    for s in by_dir.values() {
        let release = s
            .spec
            .release
            .clone()
            .unwrap_or_else(|| s.spec.name.clone());
        let key = (s.spec.namespace.clone(), release.clone());
        if let Some(first) = seen.get(&key) {
            report.push(
                Diagnostic::error(
                    "stack-conflict",
                    &s.file,
                    value_pos(s, "/namespace"),
                    format!(
                        "release `{release}` in namespace `{}` is also deployed by {}",
                        key.0, first.file
                    ),
                )
                .at_path("/namespace")
                .value(key.0.clone())
                .help("two stacks that share a namespace and release would undo each other; give one a different namespace or release"),
            );
        } else {
            seen.insert(key, s);
        }
    }
}

fn check_stack(
    snapshot: &Snapshot<'_>,
    dir: String,
    stack: Parsed<StackSpec>,
    comps: Vec<Parsed<ComponentSpec>>,
    report: &mut Report,
) -> Option<Stack> {
    let before = report.error_count();
    let chart = stack.spec.chart.trim_end_matches('/');
    match join_within("", chart) {
        Some(p) if snapshot.entry(&format!("{p}/Chart.yaml")).is_some() => {}
        _ => report.push(
            Diagnostic::error(
                "missing-chart",
                &stack.file,
                value_pos(&stack, "/chart"),
                "no Helm chart at this path in the commit",
            )
            .at_path("/chart")
            .value(stack.spec.chart.clone())
            .expected("a repository directory holding `Chart.yaml`"),
        ),
    }
    for (i, vf) in stack.spec.values_files.iter().enumerate() {
        let path = format!("/valuesFiles/{i}");
        let found = join_within("", vf).and_then(|p| snapshot.entry(&p));
        if !found.is_some_and(|e| matches!(e.kind, EntryKind::File | EntryKind::Executable)) {
            report.push(
                Diagnostic::error(
                    "missing-file",
                    &stack.file,
                    value_pos(&stack, &path),
                    "values file not found in the commit",
                )
                .at_path(&path)
                .value(vf.clone())
                .expected("a repository path of a committed YAML file"),
            );
        }
    }
    if comps.is_empty() {
        report.push(
            Diagnostic::error(
                "no-components",
                &stack.file,
                key_pos(&stack, "/kind"),
                format!("stack `{}` has no components", stack.spec.name),
            )
            .at_path("/kind")
            .help(format!(
                "add `kind: Component` files under {}/; an empty desired state is refused rather than taken to mean \"delete everything\"",
                if dir.is_empty() { "." } else { &dir }
            )),
        );
        return None;
    }

    let mut names: HashMap<&str, &Parsed<ComponentSpec>> = HashMap::new();
    for c in &comps {
        if let Some(first) = names.get(c.spec.name.as_str()) {
            let line = first.doc.span("/name").value.line;
            report.push(
                Diagnostic::error(
                    "duplicate-component",
                    &c.file,
                    value_pos(c, "/name"),
                    format!("component `{}` is defined twice", c.spec.name),
                )
                .at_path("/name")
                .value(c.spec.name.clone())
                .help(format!(
                    "first defined at {}:{line}; rename or remove one",
                    first.file
                )),
            );
        } else {
            names.insert(&c.spec.name, c);
        }
    }
    for c in &comps {
        check_component(snapshot, c, report);
    }
    check_local_urls(&stack, &comps, report);
    let order = dependency_order(&comps, report);
    if report.error_count() > before {
        return None;
    }
    let mut comps: Vec<Option<Parsed<ComponentSpec>>> = comps.into_iter().map(Some).collect();
    let components = order
        .into_iter()
        .filter_map(|i| comps[i].take())
        .map(|c| Component {
            spec: c.spec,
            file: c.file,
        })
        .collect();
    Some(Stack {
        spec: stack.spec,
        file: stack.file,
        dir,
        components,
    })
}

fn check_component(snapshot: &Snapshot<'_>, c: &Parsed<ComponentSpec>, report: &mut Report) {
    let file = c.file.as_str();
    let spec = &c.spec;
    match (&spec.image.reference, &spec.image.build) {
        (Some(_), Some(_)) | (None, None) => report.push(
            Diagnostic::error("bad-image", file, key_pos(c, "/image"), "`image` needs exactly one of `ref` or `build`")
                .at_path("/image")
                .expected("`ref: postgres:16-alpine` for a prebuilt image, or `build: {context, repository}` for one converge builds"),
        ),
        (Some(r), None) => check_image_ref(c, r, report),
        (None, Some(b)) => {
            let ctx_path = "/image/build/context";
            match join_within("", &b.context) {
                None => report.push(
                    Diagnostic::error("context-outside-repo", file, value_pos(c, ctx_path), "build context is outside the repository")
                        .at_path(ctx_path)
                        .value(b.context.clone())
                        .expected("a directory inside the repository, relative to its root"),
                ),
                Some(ctx) if !snapshot.is_dir(&ctx) => report.push(
                    Diagnostic::error("missing-context", file, value_pos(c, ctx_path), "build context is not a directory in this commit")
                        .at_path(ctx_path)
                        .value(b.context.clone())
                        .expected("a committed directory, relative to the repository root")
                        .help("build inputs are read from the commit: `git add` and commit the directory"),
                ),
                Some(ctx) => {
                    let df_path = "/image/build/dockerfile";
                    let df = join_within(&ctx, &b.dockerfile);
                    let found = df.as_deref().and_then(|p| snapshot.entry(p));
                    if !found.is_some_and(|e| matches!(e.kind, EntryKind::File | EntryKind::Executable)) {
                        let pos = if c.doc.has_span(df_path) {
                            value_pos(c, df_path)
                        } else {
                            key_pos(c, "/image/build")
                        };
                        let shown = df.unwrap_or_else(|| b.dockerfile.clone());
                        report.push(
                            Diagnostic::error("missing-dockerfile", file, pos, format!("Dockerfile `{shown}` is not in this commit"))
                                .at_path(df_path)
                                .expected("a committed file, relative to the build context")
                                .help("build inputs are read from the commit: `git add` and commit the Dockerfile"),
                        );
                    }
                }
            }
            for name in b.args.keys() {
                if looks_like_credential(name) {
                    let p = format!("/image/build/args/{}", escape(name));
                    report.push(
                        Diagnostic::error("credential-in-build-arg", file, key_pos(c, &p), format!("build arg `{name}` looks like a credential"))
                            .at_path(&p)
                            .value(name.clone())
                            .help("build args are stored in the image's history; pass credentials with BuildKit secrets, or at run time through `secretEnv`"),
                    );
                }
            }
        }
    }

    if let Some(res) = &spec.resources {
        let req = res.requests.clone().unwrap_or_default();
        let lim = res.limits.clone().unwrap_or_default();
        let mut parsed =
            |list: &ResourceList, which: &str| -> Vec<(&'static str, Option<Quantity>)> {
                resource_fields(list)
                    .into_iter()
                    .map(|(name, q)| {
                        (
                            name,
                            q.and_then(|q| {
                                quantity(c, &format!("/resources/{which}/{name}"), q, report)
                            }),
                        )
                    })
                    .collect()
            };
        let reqs = parsed(&req, "requests");
        let lims = parsed(&lim, "limits");
        for ((name, r), (_, l)) in reqs.iter().zip(lims.iter()) {
            if let (Some(r), Some(l)) = (r, l) {
                if r > l {
                    let p = format!("/resources/requests/{name}");
                    let rt = field_text(&req, name);
                    let lt = field_text(&lim, name);
                    report.push(
                        Diagnostic::error("request-above-limit", file, value_pos(c, &p), format!("{name} request is above its limit ({rt} > {lt})"))
                            .at_path(&p)
                            .value(rt.clone())
                            .expected(format!("at most the limit `{lt}`"))
                            .help("Kubernetes refuses a Pod whose request exceeds its limit; lower the request or raise the limit"),
                    );
                }
            }
        }
    }
    if let Some(st) = &spec.storage {
        if let Some(q) = quantity(c, "/storage/size", &st.size, report) {
            if q.is_zero() {
                report.push(
                    Diagnostic::error(
                        "bad-quantity",
                        file,
                        value_pos(c, "/storage/size"),
                        "storage size must be above zero",
                    )
                    .at_path("/storage/size")
                    .value(st.size.0.clone())
                    .expected("a size such as `1Gi`"),
                );
            }
        }
    }

    let mut ports: HashMap<i64, usize> = HashMap::new();
    let mut port_names: HashMap<&str, usize> = HashMap::new();
    for (i, p) in spec.ports.iter().enumerate() {
        if let Some(first) = ports.insert(p.container_port, i) {
            let path = format!("/ports/{i}/containerPort");
            report.push(
                Diagnostic::error(
                    "duplicate-port",
                    file,
                    value_pos(c, &path),
                    format!("port {} is listed twice", p.container_port),
                )
                .at_path(&path)
                .value(p.container_port.to_string())
                .help(format!("also at ports[{first}]")),
            );
        }
        if let Some(first) = port_names.insert(&p.name, i) {
            let path = format!("/ports/{i}/name");
            report.push(
                Diagnostic::error(
                    "duplicate-port",
                    file,
                    value_pos(c, &path),
                    format!("port name `{}` is used twice", p.name),
                )
                .at_path(&path)
                .value(p.name.clone())
                .help(format!("also at ports[{first}]")),
            );
        }
    }

    let env_name_ok = |n: &str| {
        let mut chars = n.chars();
        chars
            .next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
            && chars.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
    };
    for name in spec.env.keys() {
        let p = format!("/env/{}", escape(name));
        if !env_name_ok(name) {
            report.push(
                Diagnostic::error(
                    "bad-env-name",
                    file,
                    key_pos(c, &p),
                    format!("`{name}` is not a valid environment variable name"),
                )
                .at_path(&p)
                .value(name.clone())
                .expected("letters, digits and `_`, not starting with a digit"),
            );
        }
        if looks_like_credential(name) {
            let secret = format!("{}-secrets", spec.name);
            let key = name.to_lowercase().replace('_', "-");
            report.push(
                Diagnostic::error("credential-in-env", file, key_pos(c, &p), format!("`{name}` looks like a credential but is a plain env value"))
                    .at_path(&p)
                    .value(name.clone())
                    .expected("a `secretEnv` reference; secret values never live in git")
                    .help(format!(
                        "remove it from `env` and add `secretEnv: [{{name: {name}, secret: {secret}, key: {key}}}]`, then `kubectl create secret generic {secret} --from-literal={key}=...`"
                    )),
            );
        }
    }
    let mut secret_names: HashMap<&str, usize> = HashMap::new();
    for (i, s) in spec.secret_env.iter().enumerate() {
        let p = format!("/secretEnv/{i}/name");
        if spec.env.contains_key(&s.name) {
            report.push(
                Diagnostic::error(
                    "duplicate-env",
                    file,
                    value_pos(c, &p),
                    format!("`{}` is set both in `env` and in `secretEnv`", s.name),
                )
                .at_path(&p)
                .value(s.name.clone()),
            );
        }
        if let Some(first) = secret_names.insert(&s.name, i) {
            report.push(
                Diagnostic::error(
                    "duplicate-env",
                    file,
                    value_pos(c, &p),
                    format!("`{}` is listed twice in `secretEnv`", s.name),
                )
                .at_path(&p)
                .value(s.name.clone())
                .help(format!("also at secretEnv[{first}]")),
            );
        }
    }
}

fn check_image_ref(c: &Parsed<ComponentSpec>, r: &str, report: &mut Report) {
    let p = "/image/ref";
    let pos = value_pos(c, p);
    match parse_image_ref(r) {
        Err(why) => report.push(
            Diagnostic::error(
                "bad-image",
                &c.file,
                pos,
                format!("`{r}` is not a valid image reference: {why}"),
            )
            .at_path(p)
            .value(r.to_string())
            .expected("`[registry/]name[:tag][@sha256:<64 hex>]`, e.g. `postgres:16-alpine`"),
        ),
        Ok(ImageRef { tag, digest }) => {
            if digest.is_none() && tag.as_deref().is_none_or(|t| t == "latest") {
                let found = if tag.is_none() {
                    "no tag"
                } else {
                    "the `latest` tag"
                };
                report.push(
                    Diagnostic::warning("mutable-tag", &c.file, pos, format!("image `{r}` has {found}, which can change under the same name"))
                        .at_path(p)
                        .value(r.to_string())
                        .expected("a fixed tag such as `postgres:16-alpine`, or a digest")
                        .help("a mutable tag makes the deployed image depend on when a node pulled it, and converge cannot see it change"),
                );
            }
        }
    }
}

struct ImageRef {
    tag: Option<String>,
    digest: Option<String>,
}

fn parse_image_ref(r: &str) -> Result<ImageRef, &'static str> {
    let (name_tag, digest) = match r.split_once('@') {
        Some((n, d)) => {
            let hex = d
                .strip_prefix("sha256:")
                .ok_or("the digest must start with `sha256:`")?;
            if hex.len() != 64
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                return Err("a sha256 digest is 64 lowercase hex digits");
            }
            (n, Some(d.to_string()))
        }
        None => (r, None),
    };
    let last_slash = name_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            return Err("a tag is up to 128 letters, digits, `_`, `.` and `-`");
        }
    }
    if name.is_empty() {
        return Err("the name is empty");
    }
    let mut parts = name.split('/').peekable();
    let first = parts.next().unwrap_or("");
    let is_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    for (i, part) in name.split('/').enumerate() {
        if i == 0 && is_registry {
            continue;
        }
        let ok = !part.is_empty()
            && part.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && part
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && part
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_alphanumeric());
        if !ok {
            return Err("name parts are lowercase letters, digits and separators `.`, `_`, `-`");
        }
    }
    Ok(ImageRef {
        tag: tag.map(str::to_string),
        digest,
    })
}

fn quantity(
    c: &Parsed<ComponentSpec>,
    path: &str,
    q: &QuantityText,
    report: &mut Report,
) -> Option<Quantity> {
    match Quantity::parse(&q.0) {
        Ok(v) if v.is_negative() => {
            report.push(
                Diagnostic::error(
                    "bad-quantity",
                    &c.file,
                    value_pos(c, path),
                    format!("`{}` is negative", q.0),
                )
                .at_path(path)
                .value(q.0.clone())
                .expected("zero or more"),
            );
            None
        }
        Ok(v) => Some(v),
        Err(e) => {
            report.push(
                Diagnostic::error("bad-quantity", &c.file, value_pos(c, path), e.to_string())
                    .at_path(path)
                    .value(q.0.clone())
                    .expected(QUANTITY_EXPECTED),
            );
            None
        }
    }
}

fn resource_fields(l: &ResourceList) -> [(&'static str, Option<&QuantityText>); 3] {
    [
        ("cpu", l.cpu.as_ref()),
        ("memory", l.memory.as_ref()),
        ("ephemeral-storage", l.ephemeral_storage.as_ref()),
    ]
}

fn field_text(l: &ResourceList, name: &str) -> String {
    resource_fields(l)
        .into_iter()
        .find(|(n, _)| *n == name)
        .and_then(|(_, q)| q.map(|q| q.0.clone()))
        .unwrap_or_default()
}

/// Orders components so each comes after what it depends on; reports unknown names and cycles.
/// `localUrls`: each names a component of the stack, and no two share a local port (the daemon
/// could serve only one of them).
fn check_local_urls(
    stack: &Parsed<StackSpec>,
    comps: &[Parsed<ComponentSpec>],
    report: &mut Report,
) {
    let names: Vec<&str> = comps.iter().map(|c| c.spec.name.as_str()).collect();
    let mut ports: HashMap<i64, usize> = HashMap::new();
    for (i, u) in stack.spec.local_urls.iter().enumerate() {
        let p = format!("/localUrls/{i}/component");
        if !names.contains(&u.component.as_str()) {
            let mut d = Diagnostic::error(
                "unknown-component",
                &stack.file,
                value_pos(stack, &p),
                format!("`{}` is not a component of this stack", u.component),
            )
            .at_path(&p)
            .value(u.component.clone())
            .expected(format!(
                "one of {}",
                names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            if let Some(best) = names
                .iter()
                .find(|n| strsim::damerau_levenshtein(n, &u.component) <= 2)
            {
                d = d.help(format!("did you mean `{best}`?"));
            }
            report.push(d);
        }
        let p = format!("/localUrls/{i}/localPort");
        if let Some(first) = ports.get(&u.local_port) {
            report.push(
                Diagnostic::error(
                    "duplicate-local-port",
                    &stack.file,
                    value_pos(stack, &p),
                    format!("local port {} is used twice", u.local_port),
                )
                .at_path(&p)
                .value(u.local_port.to_string())
                .help(format!(
                    "`localUrls[{first}]` already listens on it; choose another `localPort`"
                )),
            );
        } else {
            ports.insert(u.local_port, i);
        }
    }
}

fn dependency_order(comps: &[Parsed<ComponentSpec>], report: &mut Report) -> Vec<usize> {
    let index: HashMap<&str, usize> = comps
        .iter()
        .enumerate()
        .map(|(i, c)| (c.spec.name.as_str(), i))
        .collect();
    let names: Vec<String> = comps.iter().map(|c| c.spec.name.clone()).collect();
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); comps.len()];
    for (i, c) in comps.iter().enumerate() {
        for (j, dep) in c.spec.depends_on.iter().enumerate() {
            let p = format!("/dependsOn/{j}");
            match index.get(dep.as_str()) {
                Some(&d) => edges[i].push(d),
                None => {
                    let mut d = Diagnostic::error(
                        "unknown-dependency",
                        &c.file,
                        value_pos(c, &p),
                        format!("`{dep}` is not a component of this stack"),
                    )
                    .at_path(&p)
                    .value(dep.clone())
                    .expected(format!(
                        "one of {}",
                        names
                            .iter()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    if let Some(best) = names
                        .iter()
                        .find(|n| strsim::damerau_levenshtein(n, dep) <= 2)
                    {
                        d = d.help(format!("did you mean `{best}`?"));
                    }
                    report.push(d);
                }
            }
        }
    }
    // Depth-first search in name order: finds every cycle once and yields a stable order.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut marks = vec![Mark::New; comps.len()];
    let mut order = Vec::new();
    let mut reported: BTreeSet<Vec<usize>> = BTreeSet::new();
    let mut by_name: Vec<usize> = (0..comps.len()).collect();
    by_name.sort_by(|a, b| comps[*a].spec.name.cmp(&comps[*b].spec.name));
    fn visit(
        n: usize,
        edges: &[Vec<usize>],
        marks: &mut [Mark],
        path: &mut Vec<usize>,
        order: &mut Vec<usize>,
        cycles: &mut Vec<Vec<usize>>,
    ) {
        marks[n] = Mark::Active;
        path.push(n);
        let mut deps = edges[n].clone();
        deps.sort();
        for d in deps {
            match marks[d] {
                Mark::New => visit(d, edges, marks, path, order, cycles),
                Mark::Active => {
                    let start = path.iter().position(|&p| p == d).unwrap_or(0);
                    cycles.push(path[start..].to_vec());
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[n] = Mark::Done;
        order.push(n);
    }
    let mut cycles = Vec::new();
    for n in by_name {
        if marks[n] == Mark::New {
            visit(
                n,
                &edges,
                &mut marks,
                &mut Vec::new(),
                &mut order,
                &mut cycles,
            );
        }
    }
    for cycle in cycles {
        let mut key = cycle.clone();
        key.sort();
        if !reported.insert(key) {
            continue;
        }
        let first = cycle[0];
        let last = *cycle.last().unwrap_or(&first);
        let c = &comps[last];
        let j = c
            .spec
            .depends_on
            .iter()
            .position(|d| d == &comps[first].spec.name)
            .unwrap_or(0);
        let p = format!("/dependsOn/{j}");
        let mut chain: Vec<&str> = cycle.iter().map(|&i| comps[i].spec.name.as_str()).collect();
        chain.push(&comps[first].spec.name);
        report.push(
            Diagnostic::error(
                "dependency-cycle",
                &c.file,
                value_pos(c, &p),
                format!("`dependsOn` forms a cycle: {}", chain.join(" → ")),
            )
            .at_path(&p)
            .value(comps[first].spec.name.clone())
            .help("a component cannot wait for itself; remove one of these dependencies"),
        );
    }
    order
}

fn parent(file: &str) -> &str {
    file.rfind('/').map(|i| &file[..i]).unwrap_or("")
}

fn is_within(file: &str, dir: &str) -> bool {
    dir.is_empty() || file.starts_with(&format!("{dir}/"))
}

fn value_pos<T>(p: &Parsed<T>, pointer: &str) -> Pos {
    p.doc.span(pointer).value
}

fn key_pos<T>(p: &Parsed<T>, pointer: &str) -> Pos {
    let s = p.doc.span(pointer);
    s.key.unwrap_or(s.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_refs_parse_like_docker() {
        assert!(parse_image_ref("postgres:16-alpine").unwrap().tag.is_some());
        assert!(parse_image_ref("localhost:5000/team/app:1.2").is_ok());
        let d = format!("postgres@sha256:{}", "a".repeat(64));
        assert!(parse_image_ref(&d).unwrap().digest.is_some());
        assert!(parse_image_ref("postgres").unwrap().tag.is_none());
        assert!(parse_image_ref("Postgres:16").is_err());
        assert!(parse_image_ref("postgres@sha256:abc").is_err());
        assert!(parse_image_ref("postgres:bad tag").is_err());
    }
}
