//! Loads a desired state from a real git commit built from the input, through the same entry
//! point `converge validate` and the daemon use (`desired::load` on a `Snapshot`).
//!
//! The input is split at `\0` into up to eight files: `desired/stack.yaml`, then
//! `desired/c1.yaml`…, the last ones one directory down (`desired/sub/…`), beside a chart stub.
//! Checked: no panic; an accepted state has a stack with components; a refused one has an
//! error, and every located finding points inside a file of the commit; rendering never panics.
#![no_main]

use std::sync::OnceLock;

use converge::desired;
use converge::source::Repo;
use git2::{Mempack, ObjectType, Odb, Oid, Repository};
use libfuzzer_sys::fuzz_target;

/// A repository whose objects live in memory, emptied after every input.
struct Store {
    repo: Repo,
    odb: &'static Odb<'static>,
    mempack: Mempack<'static>,
}

// libFuzzer runs the target on one thread; the store is only touched from there.
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

fn store() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| {
        let odb: &'static Odb<'static> = Box::leak(Box::new(Odb::new().expect("odb")));
        let mempack = odb.add_new_mempack_backend(1000).expect("mempack");
        // A bare repository on disk only for its path (git2 needs one); every object goes to
        // the in-memory backend that replaces its object database.
        let dir = std::env::temp_dir().join(format!("converge-fuzz-{}", std::process::id()));
        let repo = Repository::init_bare(&dir).expect("repository");
        repo.set_odb(odb).expect("set odb");
        Store {
            repo: Repo::from_repository(repo),
            odb,
            mempack,
        }
    })
}

/// A tree object from `(mode, name, id)` entries (git wants them sorted by name).
fn tree(odb: &Odb<'_>, mut entries: Vec<(&str, String, Oid)>) -> Oid {
    entries.sort_by(|a, b| {
        let key = |e: &(&str, String, Oid)| {
            let mut k = e.1.clone().into_bytes();
            if e.0 == "40000" {
                k.push(b'/');
            }
            k
        };
        key(a).cmp(&key(b))
    });
    let mut raw = Vec::new();
    for (mode, name, id) in entries {
        raw.extend_from_slice(mode.as_bytes());
        raw.push(b' ');
        raw.extend_from_slice(name.as_bytes());
        raw.push(0);
        raw.extend_from_slice(id.as_bytes());
    }
    odb.write(ObjectType::Tree, &raw).expect("tree")
}

fuzz_target!(|data: &[u8]| {
    let s = store();
    let odb = s.odb;
    let blob = |bytes: &[u8]| odb.write(ObjectType::Blob, bytes).expect("blob");
    let mut top = Vec::new();
    let mut sub = Vec::new();
    for (i, chunk) in data.split(|&b| b == 0).take(8).enumerate() {
        let name = if i == 0 {
            "stack.yaml".to_string()
        } else {
            format!("c{i}.yaml")
        };
        let entry = ("100644", name, blob(chunk));
        if i >= 6 {
            sub.push(entry);
        } else {
            top.push(entry);
        }
    }
    if !sub.is_empty() {
        top.push(("40000", "sub".to_string(), tree(odb, sub)));
    }
    let desired_tree = tree(odb, top);
    let chart = tree(
        odb,
        vec![(
            "100644",
            "Chart.yaml".into(),
            blob(b"apiVersion: v2\nname: todo-chatbot\nversion: 0.1.0\n"),
        )],
    );
    let charts = tree(odb, vec![("40000", "todo-chatbot".into(), chart)]);
    let root = tree(
        odb,
        vec![
            ("40000", "desired".into(), desired_tree),
            ("40000", "charts".into(), charts),
        ],
    );
    let commit =
        format!("tree {root}\nauthor f <f@f> 0 +0000\ncommitter f <f@f> 0 +0000\n\nfuzz\n");
    let commit = odb
        .write(ObjectType::Commit, commit.as_bytes())
        .expect("commit");

    let snapshot = s.repo.snapshot(&commit.to_string()).expect("snapshot");
    match desired::load(&snapshot, "desired") {
        Ok(loaded) => {
            assert!(
                !loaded.state.stacks.is_empty(),
                "an accepted state has a stack"
            );
            for stack in &loaded.state.stacks {
                assert!(
                    !stack.components.is_empty(),
                    "an accepted stack has components"
                );
            }
            assert!(!loaded.report.has_errors());
        }
        Err(report) => {
            assert!(report.has_errors(), "a refusal says why");
            let files: Vec<Vec<u8>> = data
                .split(|&b| b == 0)
                .take(8)
                .map(<[u8]>::to_vec)
                .collect();
            for d in &report.diagnostics {
                if d.line == 0 || d.file.is_empty() {
                    continue;
                }
                let Some(i) = file_index(&d.file) else {
                    panic!("finding in a file that is not in the commit: {d:?}");
                };
                // YAML breaks lines at `\n`, `\r\n` and a lone `\r`.
                let f = &files[i];
                let lines = 1 + f
                    .iter()
                    .enumerate()
                    .filter(|&(j, &b)| b == b'\n' || (b == b'\r' && f.get(j + 1) != Some(&b'\n')))
                    .count();
                assert!(
                    d.line <= lines + 1,
                    "line {} past the end of {}: {d:?}",
                    d.line,
                    d.file
                );
            }
            let _ = report.render(false);
        }
    }
    drop(snapshot);
    s.mempack.reset().expect("reset");
});

/// The chunk number a file of the commit came from.
fn file_index(file: &str) -> Option<usize> {
    let name = file.strip_prefix("desired/")?;
    let name = name.strip_prefix("sub/").unwrap_or(name);
    if name == "stack.yaml" {
        return Some(0);
    }
    name.strip_prefix('c')?.strip_suffix(".yaml")?.parse().ok()
}
