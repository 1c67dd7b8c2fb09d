//! The coordination Lease `converge-<stack>` in a stack's namespace: who manages the stack now.
//! A daemon takes it and keeps it (re-creating it when it vanished, say with its namespace);
//! `converge apply` reads it to refuse undoing a running daemon's work.
//!
//! It never takes a Lease another live holder renews: a Lease is taken only when it is free,
//! expired, or was held by an earlier daemon of the same checkout on the same host.
//!
//! In standby mode (replicas of one in-cluster installation, `converge run --standby`) a Lease
//! held by a replica of the same installation (its `converge.dev/instance` annotation) makes this
//! daemon wait as a standby; one held by anyone else refuses it ([`claim`]).

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};

use super::ClusterError;
use crate::vocabulary::{FIELD_MANAGER, LABEL_MANAGED_BY, LABEL_STACK, MANAGED_BY};

/// How long a Lease holds without renewal.
pub const LEASE_SECONDS: i32 = 30;
/// The annotation naming the checkout a Lease holder deploys from.
pub const ANNOTATION_CHECKOUT: &str = "converge.dev/checkout";
/// The annotation naming the installation (`<namespace>/<release>`) of an in-cluster holder.
pub const ANNOTATION_INSTANCE: &str = "converge.dev/instance";

/// How a Lease is held: its duration and how often it is renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a Lease holds without renewal (written into the Lease).
    pub duration: std::time::Duration,
    /// How often the holder renews it.
    pub renew: std::time::Duration,
    /// How long the holder keeps failing to renew before it stops leading; `None`: it keeps
    /// trying (the laptop daemon, which nobody stands by to replace).
    pub renew_deadline: Option<std::time::Duration>,
    /// How soon a failed renewal, or a standby's next try, comes.
    pub retry: std::time::Duration,
}

impl Default for LeaseTiming {
    /// The laptop daemon's: a 30 s Lease renewed every 10 s, failed renewals retried every second
    /// for as long as it runs.
    fn default() -> Self {
        Self {
            duration: std::time::Duration::from_secs(LEASE_SECONDS as u64),
            renew: std::time::Duration::from_secs(10),
            renew_deadline: None,
            retry: std::time::Duration::from_secs(1),
        }
    }
}

impl LeaseTiming {
    /// client-go's leader-election defaults (15 s Lease, 10 s renew deadline, 2 s retry), the
    /// leader renewing every retry period as client-go's does.
    pub fn in_cluster() -> Self {
        Self {
            duration: std::time::Duration::from_secs(15),
            renew: std::time::Duration::from_secs(2),
            renew_deadline: Some(std::time::Duration::from_secs(10)),
            retry: std::time::Duration::from_secs(2),
        }
    }

    /// Refuses settings under which a leader could still write after a standby may take its
    /// Lease (client-go's own checks in `NewLeaderElector`).
    pub fn check(&self) -> Result<(), String> {
        if self.duration.as_secs() < 1 {
            return Err("the Lease duration must be at least 1s".into());
        }
        if self.renew.is_zero() || self.retry.is_zero() {
            return Err("the renew and retry periods must be greater than zero".into());
        }
        if self.renew >= self.duration {
            return Err(format!(
                "the renew period ({:?}) must be shorter than the Lease duration ({:?})",
                self.renew, self.duration
            ));
        }
        if let Some(d) = self.renew_deadline {
            if d >= self.duration {
                return Err(format!("the renew deadline ({d:?}) must be shorter than the Lease duration ({:?}): a leader must stop before a standby may take its Lease", self.duration));
            }
            if d <= self.retry.mul_f64(1.2) {
                return Err(format!(
                    "the renew deadline ({d:?}) must be longer than 1.2 times the retry period ({:?})",
                    self.retry
                ));
            }
        }
        Ok(())
    }

    fn seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

/// Who asks for a Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimant {
    /// The holder identity (`host/pid`; in a Pod, `<pod name>/<pid>`).
    pub identity: String,
    /// The checkout it deploys from.
    pub checkout: String,
    /// Standby mode: the installation this daemon belongs to (`<namespace>/<release>`).
    pub instance: Option<String>,
}

/// What a daemon may do about a Lease as read (see [`claim`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Take it (create, take over or keep it).
    Take,
    /// Another live daemon outside standby mode rules holds it (the laptop refusal).
    Held {
        /// Its identity.
        holder: String,
    },
    /// A replica of the same installation holds it: wait as a standby.
    Standby {
        /// The leader's identity.
        holder: String,
    },
    /// A daemon of another installation (or a laptop daemon) holds it: never write.
    Refused {
        /// Its identity.
        holder: String,
        /// Its installation, or how it runs when it names none.
        instance: String,
    },
}

/// Failures taking, keeping or reading a Lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another daemon holds the stack's Lease.
    #[error("another converge daemon manages stack `{stack}`: Lease {namespace}/{name} is held by {holder} (renewed {renewed}); stop it first, or wait {LEASE_SECONDS}s after it stopped")]
    Held {
        /// The stack.
        stack: String,
        /// The namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// The holder's identity (`host/pid`) and checkout.
        holder: String,
        /// When it was last renewed.
        renewed: String,
    },
    /// The Lease was taken by someone else while this daemon held it.
    #[error("lost Lease {namespace}/{name} to {holder}")]
    Lost {
        /// The namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// The new holder.
        holder: String,
    },
    /// The API server failed, did not answer in time, or refused (its namespace is being
    /// deleted, say): the typed cluster error, naming the Lease or namespace.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl LeaseError {
    /// Whether the Lease could not be written because its namespace is being deleted: it can
    /// be created again the moment the namespace is gone.
    pub fn namespace_terminating(&self) -> bool {
        matches!(
            self,
            LeaseError::Cluster(ClusterError::NamespaceTerminating { .. })
        )
    }
}

/// The name of a stack's Lease.
pub fn lease_name(stack: &str) -> String {
    format!("converge-{stack}")
}

/// Awaits one call on Lease `name` in `ns` (or on namespace `ns` when `name` is empty); the
/// deadline is the client's, the error typed by [`ClusterError::from_kube`].
async fn call<T>(
    action: &'static str,
    ns: &str,
    name: &str,
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, LeaseError> {
    let object = if name.is_empty() {
        format!("Namespace/{ns}")
    } else {
        format!("Lease {ns}/{name}")
    };
    fut.await
        .map_err(|e| LeaseError::Cluster(ClusterError::from_kube(action, object, e)))
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// Creates the stack's namespace when missing (labelled like the reconcile labels it), so the
/// Lease has somewhere to live before the first reconcile.
pub async fn ensure_namespace(
    client: &kube::Client,
    namespace: &str,
    stack: &str,
) -> Result<(), LeaseError> {
    let api: Api<Namespace> = Api::all(client.clone());
    if call("reading", namespace, "", api.get_opt(namespace))
        .await?
        .is_some()
    {
        return Ok(());
    }
    let ns = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace, "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_STACK: stack}},
    });
    call(
        "creating",
        namespace,
        "",
        api.patch(
            namespace,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&ns),
        ),
    )
    .await?;
    Ok(())
}

/// The checkout a Lease's holder recorded.
pub fn checkout_of(lease: &Lease) -> Option<&str> {
    lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_CHECKOUT))
        .map(String::as_str)
}

/// The holder of a Lease that is held and not expired at `now` (pure): `host/pid`.
pub fn live_holder(lease: &Lease, now: Timestamp) -> Option<String> {
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.filter(|h| !h.is_empty())?;
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
    match spec.renew_time.or(spec.acquire_time) {
        Some(MicroTime(t)) if now.as_second() <= t.as_second() + duration => Some(holder),
        _ => None,
    }
}

/// Whether a Lease may be taken by `identity` (pure): free, expired, already ours, or held by an
/// earlier daemon of the same checkout on the same host.
pub fn may_take(lease: &Lease, identity: &str, checkout: &str, now: Timestamp) -> bool {
    let Some(holder) = live_holder(lease, now) else {
        return true;
    };
    if holder == identity {
        return true;
    }
    let same_host =
        holder.rsplit_once('/').map(|(h, _)| h) == identity.rsplit_once('/').map(|(h, _)| h);
    same_host && checkout_of(lease) == Some(checkout)
}

/// The installation a Lease's holder recorded.
pub fn instance_of(lease: &Lease) -> Option<&str> {
    lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_INSTANCE))
        .map(String::as_str)
}

/// Decides what `me` may do about a Lease as read (`None`: it does not exist) at `now` (pure).
/// Outside standby mode this is [`may_take`]; in standby mode the same-host rule does not
/// apply (replicas share no file lock), a live holder of the same installation makes a standby
/// and any other live holder a refusal.
pub fn claim(existing: Option<&Lease>, me: &Claimant, now: Timestamp) -> Claim {
    let Some(l) = existing else {
        return Claim::Take;
    };
    let Some(mine) = me.instance.as_deref() else {
        return if may_take(l, &me.identity, &me.checkout, now) {
            Claim::Take
        } else {
            Claim::Held {
                holder: live_holder(l, now).unwrap_or_default(),
            }
        };
    };
    let Some(holder) = live_holder(l, now) else {
        return Claim::Take;
    };
    if holder == me.identity {
        return Claim::Take;
    }
    match instance_of(l) {
        Some(theirs) if theirs == mine => Claim::Standby { holder },
        Some(theirs) => Claim::Refused {
            holder,
            instance: theirs.to_string(),
        },
        None => Claim::Refused {
            holder,
            instance: format!(
                "none: a `converge run` outside the cluster (checkout {})",
                checkout_of(l).unwrap_or("unknown")
            ),
        },
    }
}

/// What a holder does at a renewal (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Ours: move the renew time.
    Renew,
    /// Gone (deleted by hand or with its namespace): create it again, still ours. Nobody else
    /// took it, since this daemon never released it.
    Recreate,
    /// Someone else holds it now.
    Lost(String),
}

/// Decides a renewal from the Lease as read (`None`: it does not exist).
pub fn renewal(existing: Option<&Lease>, identity: &str) -> Renewal {
    let Some(l) = existing else {
        return Renewal::Recreate;
    };
    let holder = l
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default();
    // An emptied holder is someone releasing it on our behalf; take it back.
    if holder == identity || holder.is_empty() {
        Renewal::Renew
    } else {
        Renewal::Lost(holder)
    }
}

/// Who holds the Lease of `stack` in `namespace` now, if a live daemon does: `(host/pid,
/// checkout)`. One read; a missing namespace or Lease is `None`.
pub async fn holder_of(
    client: &kube::Client,
    namespace: &str,
    stack: &str,
) -> Result<Option<(String, String)>, LeaseError> {
    let name = lease_name(stack);
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let Some(l) = call("reading", namespace, &name, api.get_opt(&name)).await? else {
        return Ok(None);
    };
    Ok(live_holder(&l, Timestamp::now())
        .map(|h| (h, checkout_of(&l).unwrap_or_default().to_string())))
}

/// A held Lease.
#[derive(Clone)]
pub struct LeaseGuard {
    api: Api<Lease>,
    client: kube::Client,
    stack: String,
    namespace: String,
    name: String,
    identity: String,
    checkout: String,
    instance: Option<String>,
    timing: LeaseTiming,
}

/// The result of one try at a Lease.
pub enum Acquired {
    /// Taken: this daemon leads the stack.
    Taken(Box<LeaseGuard>),
    /// Not taken, and why ([`Claim::Held`], [`Claim::Standby`] or [`Claim::Refused`]).
    Waiting(Claim),
}

impl LeaseGuard {
    /// Takes the Lease of `stack` in `namespace` for `me`, or names its holder.
    pub async fn acquire(
        client: &kube::Client,
        namespace: &str,
        stack: &str,
        me: &Claimant,
        timing: LeaseTiming,
    ) -> Result<Self, LeaseError> {
        let name = lease_name(stack);
        let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
        match Self::try_acquire(client, namespace, stack, me, timing).await? {
            Acquired::Taken(g) => Ok(*g),
            Acquired::Waiting(why) => {
                let l = call("reading", namespace, &name, api.get_opt(&name))
                    .await?
                    .unwrap_or_default();
                let spec = l.spec.clone().unwrap_or_default();
                let instance = instance_of(&l)
                    .map(|i| format!(", instance {i}"))
                    .unwrap_or_default();
                let holder = match why {
                    Claim::Held { holder }
                    | Claim::Standby { holder }
                    | Claim::Refused { holder, .. } => holder,
                    Claim::Take => spec.holder_identity.clone().unwrap_or_default(),
                };
                Err(LeaseError::Held {
                    stack: stack.into(),
                    namespace: namespace.into(),
                    name,
                    holder: format!(
                        "{holder} (checkout {}{instance})",
                        checkout_of(&l).unwrap_or_default()
                    ),
                    renewed: spec
                        .renew_time
                        .map(|t| t.0.to_string())
                        .unwrap_or_else(|| "never".into()),
                })
            }
        }
    }

    /// One try at the Lease of `stack` in `namespace` for `me`: taken, or what holds it. A
    /// concurrent taker makes the write fail on the resource version (a conflict error), never
    /// two holders.
    pub async fn try_acquire(
        client: &kube::Client,
        namespace: &str,
        stack: &str,
        me: &Claimant,
        timing: LeaseTiming,
    ) -> Result<Acquired, LeaseError> {
        let name = lease_name(stack);
        let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
        let guard = Self {
            api,
            client: client.clone(),
            stack: stack.into(),
            namespace: namespace.into(),
            name,
            identity: me.identity.clone(),
            checkout: me.checkout.clone(),
            instance: me.instance.clone(),
            timing,
        };
        let ns = guard.namespace.clone();
        let name = guard.name.clone();
        let existing = call("reading", &ns, &name, guard.api.get_opt(&name)).await?;
        match claim(existing.as_ref(), me, Timestamp::now()) {
            Claim::Take => {}
            other => return Ok(Acquired::Waiting(other)),
        }
        match existing {
            None => guard.create().await?,
            Some(l) => {
                let spec = l.spec.clone().unwrap_or_default();
                let ours = spec.holder_identity.as_deref() == Some(guard.identity.as_str());
                let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
                let lease = guard.lease(l.metadata.resource_version.clone(), transitions);
                call(
                    "taking",
                    &ns,
                    &name,
                    guard.api.replace(&name, &PostParams::default(), &lease),
                )
                .await?;
            }
        }
        Ok(Acquired::Taken(Box::new(guard)))
    }

    async fn create(&self) -> Result<(), LeaseError> {
        let lease = self.lease(None, 0);
        call(
            "creating",
            &self.namespace,
            &self.name,
            self.api.create(&PostParams::default(), &lease),
        )
        .await?;
        Ok(())
    }

    fn lease(&self, resource_version: Option<String>, transitions: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version,
                labels: Some(
                    [
                        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
                        (LABEL_STACK.to_string(), self.stack.clone()),
                    ]
                    .into(),
                ),
                annotations: Some(
                    std::iter::once((ANNOTATION_CHECKOUT.to_string(), self.checkout.clone()))
                        .chain(
                            self.instance
                                .iter()
                                .map(|i| (ANNOTATION_INSTANCE.to_string(), i.clone())),
                        )
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.timing.seconds()),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(transitions),
                ..Default::default()
            }),
        }
    }

    /// Renews the Lease, re-creating it (and its namespace) when it vanished; fails with
    /// [`LeaseError::Lost`] when someone else holds it.
    pub async fn keep(&self) -> Result<Renewal, LeaseError> {
        let (ns, name) = (&self.namespace, &self.name);
        let existing = call("reading", ns, name, self.api.get_opt(name)).await?;
        let action = renewal(existing.as_ref(), &self.identity);
        match (&action, existing) {
            (Renewal::Lost(holder), _) => {
                return Err(LeaseError::Lost {
                    namespace: ns.clone(),
                    name: name.clone(),
                    holder: holder.clone(),
                })
            }
            (Renewal::Recreate, _) => {
                ensure_namespace(&self.client, ns, &self.stack).await?;
                if let Err(e) = self.create().await {
                    // Created by someone else between our read and our create.
                    if let Some(l) = call("reading", ns, name, self.api.get_opt(name)).await? {
                        if let Renewal::Lost(holder) = renewal(Some(&l), &self.identity) {
                            return Err(LeaseError::Lost {
                                namespace: ns.clone(),
                                name: name.clone(),
                                holder,
                            });
                        }
                    }
                    return Err(e);
                }
            }
            (Renewal::Renew, Some(mut l)) => {
                let spec = l.spec.get_or_insert_with(Default::default);
                spec.holder_identity = Some(self.identity.clone());
                spec.lease_duration_seconds = Some(self.timing.seconds());
                spec.renew_time = Some(now());
                call(
                    "renewing",
                    ns,
                    name,
                    self.api.replace(name, &PostParams::default(), &l),
                )
                .await?;
            }
            (Renewal::Renew, None) => {}
        }
        Ok(action)
    }

    /// Frees the Lease (best effort), so the next daemon need not wait for it to expire: no
    /// holder, a 1 s duration from now, as client-go's `ReleaseOnCancel` writes it, so its
    /// electors see it free too.
    pub async fn release(&self) {
        let (ns, name) = (&self.namespace, &self.name);
        let Ok(Some(mut l)) = call("reading", ns, name, self.api.get_opt(name)).await else {
            return;
        };
        let spec = l.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        spec.acquire_time = Some(now());
        let _ = call(
            "releasing",
            ns,
            name,
            self.api.replace(name, &PostParams::default(), &l),
        )
        .await;
    }

    /// The stack.
    pub fn stack(&self) -> &str {
        &self.stack
    }

    /// The Lease's API, for watching it.
    pub fn api(&self) -> &Api<Lease> {
        &self.api
    }

    /// The Lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Lease's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// How it is held.
    pub fn timing(&self) -> LeaseTiming {
        self.timing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;

    fn lease(holder: Option<&str>, renewed: Timestamp, checkout: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                annotations: Some([(ANNOTATION_CHECKOUT.to_string(), checkout.to_string())].into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: Some(30),
                renew_time: Some(MicroTime(renewed)),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_live_lease_of_another_daemon_is_not_taken() {
        let now = Timestamp::now();
        let l = lease(Some("laptop/100"), now, "/src/a");
        assert!(!may_take(&l, "desktop/200", "/src/a", now));
        assert!(!may_take(&l, "laptop/200", "/src/b", now));
        assert_eq!(live_holder(&l, now).as_deref(), Some("laptop/100"));
    }

    #[test]
    fn an_expired_free_or_own_checkout_lease_is_taken() {
        let now = Timestamp::now();
        let old = now - SignedDuration::from_secs(31);
        assert!(may_take(
            &lease(Some("laptop/100"), old, "/src/a"),
            "desktop/200",
            "/src/b",
            now
        ));
        assert_eq!(
            live_holder(&lease(Some("laptop/100"), old, "/a"), now),
            None
        );
        assert!(may_take(
            &lease(None, now, "/src/a"),
            "desktop/200",
            "/src/b",
            now
        ));
        // The same checkout on the same host: the earlier daemon died (this one holds its file lock).
        assert!(may_take(
            &lease(Some("laptop/100"), now, "/src/a"),
            "laptop/200",
            "/src/a",
            now
        ));
    }

    fn standby(identity: &str, instance: &str) -> Claimant {
        Claimant {
            identity: identity.into(),
            checkout: "/var/lib/converge/checkout".into(),
            instance: Some(instance.into()),
        }
    }

    fn held_by(holder: &str, instance: Option<&str>, renewed: Timestamp) -> Lease {
        let mut l = lease(Some(holder), renewed, "/var/lib/converge/checkout");
        if let Some(i) = instance {
            l.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(ANNOTATION_INSTANCE.into(), i.into());
        }
        l
    }

    #[test]
    fn a_replica_of_the_same_installation_waits_as_a_standby() {
        let now = Timestamp::now();
        let me = standby("converge-b/1", "converge/converge");
        let l = held_by("converge-a/1", Some("converge/converge"), now);
        assert_eq!(
            claim(Some(&l), &me, now),
            Claim::Standby {
                holder: "converge-a/1".into()
            }
        );
        // Same checkout path, different Pods: the laptop's same-host rule must not let it steal.
        assert!(!may_take(
            &l,
            "converge-b/1",
            "/var/lib/converge/checkout",
            now
        ));
    }

    #[test]
    fn a_standby_takes_a_released_or_expired_lease_and_its_own_restarted_one() {
        let now = Timestamp::now();
        let me = standby("converge-b/1", "converge/converge");
        assert_eq!(claim(None, &me, now), Claim::Take);
        let mut released = held_by("", Some("converge/converge"), now);
        released.spec.as_mut().unwrap().holder_identity = None;
        assert_eq!(claim(Some(&released), &me, now), Claim::Take);
        let expired = held_by(
            "converge-a/1",
            Some("converge/converge"),
            now - SignedDuration::from_secs(31),
        );
        assert_eq!(claim(Some(&expired), &me, now), Claim::Take);
        let mine = held_by("converge-b/1", Some("converge/converge"), now);
        assert_eq!(claim(Some(&mine), &me, now), Claim::Take);
    }

    #[test]
    fn a_second_installation_is_refused_while_the_first_leads() {
        let now = Timestamp::now();
        let me = standby("converge-x/1", "other/converge");
        let l = held_by("converge-a/1", Some("converge/converge"), now);
        assert_eq!(
            claim(Some(&l), &me, now),
            Claim::Refused {
                holder: "converge-a/1".into(),
                instance: "converge/converge".into()
            }
        );
        // A laptop daemon (no instance) refuses an in-cluster one too.
        let laptop = held_by("laptop/100", None, now);
        assert!(matches!(
            claim(Some(&laptop), &me, now),
            Claim::Refused { holder, .. } if holder == "laptop/100"
        ));
        // Once the first one is uninstalled (its leader released the Lease), it takes over.
        let mut gone = l.clone();
        gone.spec.as_mut().unwrap().holder_identity = None;
        assert_eq!(claim(Some(&gone), &me, now), Claim::Take);
    }

    #[test]
    fn outside_standby_mode_the_laptop_rules_are_unchanged() {
        let now = Timestamp::now();
        let me = Claimant {
            identity: "desktop/200".into(),
            checkout: "/src/a".into(),
            instance: None,
        };
        assert_eq!(
            claim(Some(&lease(Some("laptop/100"), now, "/src/a")), &me, now),
            Claim::Held {
                holder: "laptop/100".into()
            }
        );
        let same_host = Claimant {
            identity: "laptop/200".into(),
            ..me
        };
        assert_eq!(
            claim(
                Some(&lease(Some("laptop/100"), now, "/src/a")),
                &same_host,
                now
            ),
            Claim::Take
        );
    }

    #[test]
    fn a_vanished_lease_is_recreated_by_its_holder_and_a_taken_one_is_lost() {
        let now = Timestamp::now();
        assert_eq!(renewal(None, "laptop/1"), Renewal::Recreate);
        assert_eq!(
            renewal(Some(&lease(Some("laptop/1"), now, "/a")), "laptop/1"),
            Renewal::Renew
        );
        assert_eq!(
            renewal(Some(&lease(Some("desk/2"), now, "/b")), "laptop/1"),
            Renewal::Lost("desk/2".into())
        );
    }
}
