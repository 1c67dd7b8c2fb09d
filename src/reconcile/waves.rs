//! The order components are applied in, and when one is held back: pure functions over the
//! desired state, so the dependency policy is unit-tested without a cluster.
//!
//! Stack-wide objects (ConfigMaps, Services, claims…) go first, in kind order. Then workloads,
//! component by component: a component's workloads are applied once every component it
//! `dependsOn` is healthy; a dependency that failed or was held back holds it back too, and
//! nothing it depends on is waited for again.

use std::collections::BTreeSet;

/// One component's turn: apply its workloads once `after` are healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wave {
    /// The component.
    pub component: String,
    /// The components it waits for, in the order they are awaited.
    pub after: Vec<String>,
}

/// The waves of a stack: its `components` (name and `dependsOn`) so that each comes after what it depends on (the
/// declared order otherwise), then components only the chart names (`workload_components`
/// holds the component label of every rendered workload), which wait for nothing.
pub fn plan<'a>(
    components: impl IntoIterator<Item = (&'a str, &'a [String])>,
    workload_components: impl IntoIterator<Item = &'a str>,
) -> Vec<Wave> {
    let declared: Vec<(&str, Vec<&str>)> = components
        .into_iter()
        .map(|(name, deps)| (name, deps.iter().map(String::as_str).collect()))
        .collect();
    let names: BTreeSet<&str> = declared.iter().map(|(n, _)| *n).collect();
    // Kahn's algorithm, always taking the first ready component in declared order: validation
    // already orders them and rejects cycles, so this only guards the invariant.
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut waves = Vec::new();
    while done.len() < declared.len() {
        let next = declared.iter().find(|(n, deps)| {
            !done.contains(n) && deps.iter().all(|d| done.contains(d) || !names.contains(d))
        });
        // A cycle: take the rest in declared order rather than loop.
        let Some((name, deps)) = next.or_else(|| declared.iter().find(|(n, _)| !done.contains(n)))
        else {
            break;
        };
        done.insert(name);
        waves.push(Wave {
            component: name.to_string(),
            after: deps.iter().map(|d| d.to_string()).collect(),
        });
    }
    for extra in workload_components {
        if !waves.iter().any(|w| w.component == extra) {
            waves.push(Wave {
                component: extra.to_string(),
                after: Vec::new(),
            });
        }
    }
    waves
}

/// What a wave does, given why each component already failed or was held back (`problem`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// It failed or was held back itself: nothing to do.
    Skip,
    /// A dependency failed or was held back: held back, with why.
    Blocked(String),
    /// Wait for these dependencies' health, in order, then apply.
    WaitFor(Vec<String>),
}

/// Decides a wave before any waiting: skipped, held back by a known problem of a dependency,
/// or waiting for its dependencies.
pub fn gate(wave: &Wave, problem: impl Fn(&str) -> Option<String>) -> Gate {
    if problem(&wave.component).is_some() {
        return Gate::Skip;
    }
    for dep in &wave.after {
        if let Some(why) = problem(dep) {
            return Gate::Blocked(blocked_by(dep, &why));
        }
    }
    Gate::WaitFor(wave.after.clone())
}

/// Why a component is held back by `dep`.
pub fn blocked_by(dep: &str, why: &str) -> String {
    format!("waits for `{dep}`, which is not healthy: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn stack(components: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        components
            .iter()
            .map(|(n, deps)| (n.to_string(), deps.iter().map(|d| d.to_string()).collect()))
            .collect()
    }

    fn waves<'a>(s: &'a [(String, Vec<String>)], extra: &[&'a str]) -> Vec<Wave> {
        plan(
            s.iter().map(|(n, d)| (n.as_str(), d.as_slice())),
            extra.iter().copied(),
        )
    }

    #[test]
    fn components_come_after_what_they_depend_on_and_chart_extras_last() {
        let s = stack(&[
            ("frontend", &["backend"]),
            ("backend", &["postgres"]),
            ("postgres", &[]),
        ]);
        let waves = waves(&s, &["frontend", "metrics", "postgres"]);
        let order: Vec<&str> = waves.iter().map(|w| w.component.as_str()).collect();
        assert_eq!(order, ["postgres", "backend", "frontend", "metrics"]);
        assert_eq!(waves[1].after, ["postgres"]);
        assert!(waves[3].after.is_empty());
    }

    #[test]
    fn a_cycle_does_not_loop_forever() {
        let s = stack(&[("a", &["b"]), ("b", &["a"])]);
        assert_eq!(waves(&s, &[]).len(), 2);
    }

    #[test]
    fn a_failed_dependency_holds_its_dependents_back_and_says_why() {
        let s = stack(&[
            ("postgres", &[]),
            ("backend", &["postgres"]),
            ("frontend", &["backend"]),
        ]);
        let waves = waves(&s, &[]);
        let mut problems: BTreeMap<String, String> = BTreeMap::new();
        problems.insert("postgres".into(), "pod p is CrashLoopBackOff".into());
        let lookup = |p: &BTreeMap<String, String>, c: &str| p.get(c).cloned();
        assert_eq!(gate(&waves[0], |c| lookup(&problems, c)), Gate::Skip);
        let Gate::Blocked(why) = gate(&waves[1], |c| lookup(&problems, c)) else {
            panic!("backend must be held back");
        };
        assert_eq!(
            why,
            "waits for `postgres`, which is not healthy: pod p is CrashLoopBackOff"
        );
        problems.insert("backend".into(), why);
        // Held back in turn: a chain names the first link's cause.
        let Gate::Blocked(why) = gate(&waves[2], |c| lookup(&problems, c)) else {
            panic!("frontend must be held back");
        };
        assert!(why.starts_with("waits for `backend`"), "{why}");
    }

    #[test]
    fn a_healthy_chain_waits_for_each_dependency() {
        let s = stack(&[("postgres", &[]), ("backend", &["postgres"])]);
        let waves = waves(&s, &[]);
        assert_eq!(
            gate(&waves[1], |_| None),
            Gate::WaitFor(vec!["postgres".into()])
        );
        assert_eq!(gate(&waves[0], |_| None), Gate::WaitFor(vec![]));
    }
}
