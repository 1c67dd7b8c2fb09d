//! minikube's answers, read the way minikube v1.38.1 gives them: the argv of every minikube
//! command converge runs, and pure functions that classify an answer by its exit code first and
//! its reason id second (`Exiting due to ENV_DRIVER_CONFLICT: …`), never by a paraphrase of its
//! text. Runs no process: the engine and doctor run the commands and hand the answers here.
//!
//! What minikube v1.38.1 does, from its source (`k8s.io/minikube@v1.38.1`):
//! - Every fatal exit goes through `exit.Message` (pkg/minikube/exit/exit.go:41-67), which prints
//!   `Exiting due to <ID>: <message>` on stderr and exits with the reason's code
//!   (pkg/minikube/reason/reason.go, pkg/minikube/reason/exitcodes.go). When stdout is not a
//!   terminal, `docker-env` silences stdout and `exit.Code` prints `false exit code <N>` there
//!   (cmd/minikube/cmd/docker-env.go:294-297, exit.go:70-75).
//! - A missing profile or machine exits 85 and a stopped one 83 (pkg/minikube/mustload/
//!   mustload.go:74-77, 118-131); their explanation goes to *stdout*, so a `docker-env` whose
//!   stdout is a pipe says nothing on stderr at all.
//! - `minikube image load`, `image build` and `image ls` skip a node that is not running and
//!   swallow a failed load or build: they exit 0 (pkg/minikube/machine/cache_images.go:204-270,
//!   694-740; pkg/minikube/machine/build_images.go:46-137). A load or build is therefore only
//!   believed once `minikube image ls` lists the image.

use std::fmt;

use serde::Deserialize;

/// The minikube release these answers were read from.
pub const MINIKUBE_VERSION: &str = "v1.38.1";

/// `ExProgramUsage`: bad usage, and `docker-env` refusing a runtime/driver pair
/// (pkg/minikube/reason/exitcodes.go:60).
pub const EX_PROGRAM_USAGE: i32 = 14;
/// `ExDriverConflict`: `docker-env` under the none driver (exitcodes.go:93).
pub const EX_DRIVER_CONFLICT: i32 = 51;
/// `ExGuestError`: `GUEST_STATUS`, `GUEST_IMAGE_LOAD`, `GUEST_IMAGE_BUILD`, `GUEST_IMAGE_LIST`
/// (exitcodes.go:126).
pub const EX_GUEST_ERROR: i32 = 80;
/// `ExGuestConflict`: `docker-env` on a multi-node cluster (exitcodes.go:127).
pub const EX_GUEST_CONFLICT: i32 = 81;
/// `ExGuestNotRunning`: the profile's machine is stopped (exitcodes.go:129).
pub const EX_GUEST_NOT_RUNNING: i32 = 83;
/// `ExGuestNotFound`: no such profile, or its machine does not exist (exitcodes.go:130).
pub const EX_GUEST_NOT_FOUND: i32 = 85;

/// What one minikube command answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// The exit code; `None` when it was killed by a signal.
    pub code: Option<i32>,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Answer {
    /// An answer as minikube gave it.
    pub fn new(code: Option<i32>, stdout: &str, stderr: &str) -> Self {
        Self {
            code,
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    /// From a finished process.
    pub fn of(out: &crate::process::Output) -> Self {
        Self::new(out.status.code(), &out.stdout, &out.stderr)
    }

    /// The reason id and message of minikube's `Exiting due to <ID>: <message>` line
    /// (exit.go:64), from stderr (or stdout, where `minikube --output json` puts nothing else).
    pub fn exiting_due_to(&self) -> Option<(&str, &str)> {
        [&self.stderr, &self.stdout].into_iter().find_map(|s| {
            s.lines().find_map(|l| {
                let (_, rest) = l.split_once("Exiting due to ")?;
                let (id, message) = rest.split_once(": ").unwrap_or((rest, ""));
                let id = id.trim();
                let is_id = !id.is_empty()
                    && id
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                is_id.then_some((id, message.trim()))
            })
        })
    }

    fn reason_id(&self) -> Option<&str> {
        self.exiting_due_to().map(|(id, _)| id)
    }

    /// The line worth quoting: minikube's own reason, else the last line of stderr, else of stdout
    /// (minikube's `false exit code N` is not worth quoting).
    pub fn detail(&self) -> String {
        if let Some((id, message)) = self.exiting_due_to() {
            return format!("{id}: {message}");
        }
        let last = |s: &str| {
            s.lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with("false exit code "))
                .map(|l| {
                    l.trim_start_matches(|c: char| !c.is_ascii_alphanumeric() && c != '"')
                        .to_string()
                })
        };
        last(&self.stderr)
            .or_else(|| last(&self.stdout))
            .unwrap_or_default()
    }
}

/// The minikube profile converge asks about: a name, or minikube's active profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile(pub Option<String>);

impl Profile {
    /// `-p <name>` when a profile is named, nothing for minikube's active one.
    pub fn args(&self) -> Vec<String> {
        match &self.0 {
            Some(p) => vec!["-p".into(), p.clone()],
            None => Vec::new(),
        }
    }

    /// `minikube <action>` as minikube itself prints it: `-p <name>` unless the profile is the
    /// default `minikube` (mustload.go:232-238, `ExampleCmd`).
    pub fn command(&self, action: &str) -> String {
        match self.0.as_deref() {
            Some(p) if p != "minikube" => format!("minikube {action} -p {p}"),
            _ => format!("minikube {action}"),
        }
    }
}

impl Profile {
    /// A command as converge runs it: `minikube [-p <name>] <sub>`.
    pub fn invocation(&self, sub: &str) -> String {
        match &self.0 {
            Some(p) => format!("minikube -p {p} {sub}"),
            None => format!("minikube {sub}"),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(p) => write!(f, "minikube profile `{p}`"),
            None => f.write_str("minikube's active profile"),
        }
    }
}

/// Why `minikube docker-env` will not point a Docker CLI at the node: then converge builds with
/// minikube's own image commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Exit 51, `ENV_DRIVER_CONFLICT`: the none driver (docker-env.go:305-307).
    NoneDriver,
    /// Exit 81, `ENV_MULTINODE_CONFLICT`: more than one node (docker-env.go:309-311).
    MultiNode,
    /// Exit 14, `MK_USAGE`: a runtime/driver pair docker-env does not serve — containerd on a
    /// driver other than docker, or cri-o (docker-env.go:312-315, 674-683).
    Runtime {
        /// minikube's message.
        message: String,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoneDriver => {
                f.write_str("the none driver has no docker-env (exit 51, ENV_DRIVER_CONFLICT)")
            }
            Refusal::MultiNode => f.write_str(
                "docker-env does not serve multi-node clusters (exit 81, ENV_MULTINODE_CONFLICT)",
            ),
            Refusal::Runtime { message } => write!(f, "{message} (exit 14, MK_USAGE)"),
        }
    }
}

/// docker-env's refusal of containerd off the docker driver, verbatim (docker-env.go:680).
pub const CONTAINERD_NEEDS_DOCKER_DRIVER: &str =
    "the docker-env command only supports the containerd runtime with the docker driver";

/// What `minikube docker-env --shell none` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerEnv {
    /// Exit 0: the environment pointing a Docker CLI at the node (`DOCKER_HOST`, and for
    /// containerd on the docker driver `SSH_AUTH_SOCK`/`SSH_AGENT_PID` for nerdctld over ssh).
    Env(Vec<(String, String)>),
    /// docker-env is refused for this cluster: use minikube's image commands.
    Refused(Refusal),
}

/// minikube answered that it cannot serve converge: no such profile, stopped, or another failure.
/// Each message names what failed and ends with the command that fixes it (the hint).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MinikubeFailure {
    /// Exit 85: the profile does not exist, or its machine does not.
    #[error("{profile} does not exist or has no machine (`{command}` exited 85); {}", profile.command("start"))]
    NotFound {
        /// The profile asked about.
        profile: Profile,
        /// The command that said so.
        command: String,
    },
    /// Exit 83: the profile's machine is not running.
    #[error("{profile} is not running (`{command}` exited 83); {}", profile.command("start"))]
    NotRunning {
        /// The profile asked about.
        profile: Profile,
        /// The command that said so.
        command: String,
    },
    /// `minikube image ls` exited 0 and listed nothing: minikube skips nodes that are not running
    /// (cache_images.go:711-739), and a running node always holds its own images.
    #[error("`{}` listed no images: minikube lists only running nodes, so {profile} is not running; {}", profile.invocation("image ls"), profile.command("start"))]
    NothingListed {
        /// The profile asked about.
        profile: Profile,
    },
    /// Any other failure, with minikube's reason.
    #[error("`{command}` failed ({code}): {detail}")]
    Failed {
        /// The command.
        command: String,
        /// Its exit code, or "a signal".
        code: String,
        /// minikube's reason (`ID: message`) or its last line.
        detail: String,
    },
}

impl MinikubeFailure {
    /// What failed, without the fix its message ends with.
    pub fn what(&self) -> String {
        let line = self.to_string();
        match self.fix() {
            Some(fix) => line
                .strip_suffix(&format!("; {fix}"))
                .unwrap_or(&line)
                .to_string(),
            None => line,
        }
    }

    /// The command that fixes it, when there is one.
    pub fn fix(&self) -> Option<String> {
        match self {
            MinikubeFailure::NotFound { profile, .. }
            | MinikubeFailure::NotRunning { profile, .. } => Some(profile.command("start")),
            MinikubeFailure::NothingListed { profile } => Some(profile.command("start")),
            MinikubeFailure::Failed { .. } => None,
        }
    }
}

/// Classifies a failed minikube command by exit code: 85 no profile or machine, 83 stopped,
/// anything else with minikube's own reason. `command` is what converge ran, for the message.
pub fn failure(command: &str, profile: &Profile, answer: &Answer) -> MinikubeFailure {
    match answer.code {
        Some(EX_GUEST_NOT_FOUND) => MinikubeFailure::NotFound {
            profile: profile.clone(),
            command: command.into(),
        },
        Some(EX_GUEST_NOT_RUNNING) => MinikubeFailure::NotRunning {
            profile: profile.clone(),
            command: command.into(),
        },
        // `image` commands load the profile with `config.LoadProfile` and exit 14 MK_USAGE
        // "loading profile: …" when it does not exist (cmd/minikube/cmd/image.go:89-94, 346-350).
        Some(EX_PROGRAM_USAGE)
            if answer
                .exiting_due_to()
                .is_some_and(|(id, m)| id == "MK_USAGE" && m.starts_with("loading profile")) =>
        {
            MinikubeFailure::NotFound {
                profile: profile.clone(),
                command: command.into(),
            }
        }
        code => MinikubeFailure::Failed {
            command: command.into(),
            code: code.map_or_else(|| "killed by a signal".into(), |c| format!("exit {c}")),
            detail: answer.detail(),
        },
    }
}

/// Classifies `minikube docker-env --shell none`: exit 0 is the environment; 51
/// `ENV_DRIVER_CONFLICT`, 81 `ENV_MULTINODE_CONFLICT` and 14 `MK_USAGE` are refusals (fall back
/// to the image commands); anything else is a failure (85 no profile, 83 stopped, …).
pub fn docker_env(profile: &Profile, answer: &Answer) -> Result<DockerEnv, MinikubeFailure> {
    let id = answer.reason_id();
    let refusal = match (answer.code, id) {
        (Some(0), _) => return Ok(DockerEnv::Env(parse_env_lines(&answer.stdout))),
        (Some(EX_DRIVER_CONFLICT), Some("ENV_DRIVER_CONFLICT")) => Refusal::NoneDriver,
        (Some(EX_GUEST_CONFLICT), Some("ENV_MULTINODE_CONFLICT")) => Refusal::MultiNode,
        (Some(EX_PROGRAM_USAGE), Some("MK_USAGE")) => Refusal::Runtime {
            message: answer
                .exiting_due_to()
                .map(|(_, m)| m.to_string())
                .unwrap_or_default(),
        },
        _ => {
            let command = profile.invocation("docker-env");
            return Err(failure(&command, profile, answer));
        }
    };
    Ok(DockerEnv::Refused(refusal))
}

/// Parses `minikube docker-env --shell none` output: `KEY=VALUE` lines (the `none` shell of
/// pkg/minikube/shell/shell.go:136-146 has no prefix, `=` as delimiter and no quotes).
pub fn parse_env_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.trim().split_once('='))
        .filter(|(k, _)| {
            !k.is_empty() && !k.starts_with('#') && !k.contains(' ') && !k.starts_with("false")
        })
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// The images `minikube image ls --format short` listed, or why the list cannot be believed.
pub fn image_list(profile: &Profile, answer: &Answer) -> Result<Vec<String>, MinikubeFailure> {
    if answer.code != Some(0) {
        let command = profile.invocation("image ls");
        return Err(failure(&command, profile, answer));
    }
    let images: Vec<String> = answer
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if images.is_empty() {
        return Err(MinikubeFailure::NothingListed {
            profile: profile.clone(),
        });
    }
    Ok(images)
}

/// Whether a listing names `image`: minikube lists what the runtime holds, normalised
/// (`todo-backend:1` as `docker.io/library/todo-backend:1`).
pub fn lists(images: &[String], image: &str) -> bool {
    let forms = [
        image.to_string(),
        format!("docker.io/{image}"),
        format!("docker.io/library/{image}"),
    ];
    images.iter().any(|l| forms.iter().any(|f| f == l))
}

/// How `--build-opt` values reach the runtime's builder: minikube prefixes each with `--` and
/// hands it to `docker build` (docker, pkg/minikube/cruntime/docker.go:362-375), `podman build`
/// (cri-o) or `buildctl build` (containerd, pkg/minikube/cruntime/containerd.go:382-420).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildDialect {
    /// `docker build` / `podman build`: `--build-arg=K=V`, `--target=T`, `--platform=P`.
    Docker,
    /// `buildctl build`: `--opt=build-arg:K=V`, `--opt=target=T`, `--opt=platform=P`.
    Buildctl,
}

impl BuildDialect {
    /// The dialect of a container runtime as minikube names it.
    pub fn of_runtime(runtime: &str) -> Self {
        if runtime == "containerd" {
            BuildDialect::Buildctl
        } else {
            BuildDialect::Docker
        }
    }

    /// `--build-opt` values for a build arg, a target and a platform.
    pub fn opts(
        self,
        args: &[(&str, &str)],
        target: Option<&str>,
        platform: Option<&str>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        match self {
            BuildDialect::Docker => {
                out.extend(target.map(|t| format!("--build-opt=target={t}")));
                out.extend(platform.map(|p| format!("--build-opt=platform={p}")));
                out.extend(
                    args.iter()
                        .map(|(k, v)| format!("--build-opt=build-arg={k}={v}")),
                );
            }
            BuildDialect::Buildctl => {
                out.extend(target.map(|t| format!("--build-opt=opt=target={t}")));
                out.extend(platform.map(|p| format!("--build-opt=opt=platform={p}")));
                out.extend(
                    args.iter()
                        .map(|(k, v)| format!("--build-opt=opt=build-arg:{k}={v}")),
                );
            }
        }
        out
    }
}

/// A profile's driver and runtime, from `minikube profile list -o json --light`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileFacts {
    /// The profile's name.
    pub name: String,
    /// Its driver (`docker`, `none`, `kvm2`, …).
    pub driver: String,
    /// Its container runtime (`docker`, `containerd`, `crio`).
    pub runtime: String,
}

#[derive(Deserialize)]
struct ProfileList {
    #[serde(default)]
    valid: Vec<ProfileEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProfileEntry {
    name: String,
    #[serde(default)]
    active: bool,
    config: Option<ProfileConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProfileConfig {
    #[serde(default)]
    driver: String,
    kubernetes_config: Option<KubernetesConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KubernetesConfig {
    #[serde(default)]
    container_runtime: String,
}

/// Finds `profile` (or the active one) in `minikube profile list -o json --light` output: a JSON
/// object `{"invalid": [...], "valid": [{"Name", "Status", "Config": {"Driver",
/// "KubernetesConfig": {"ContainerRuntime"}}, "Active"}]}` (cmd/minikube/cmd/config/
/// profile_list.go:231-247; pkg/minikube/config/types.go:27-77, 116-125).
pub fn profile_facts(profile: &Profile, stdout: &str) -> Option<ProfileFacts> {
    let list: ProfileList = serde_json::from_str(stdout.trim()).ok()?;
    let entry = list.valid.into_iter().find(|p| match &profile.0 {
        Some(name) => &p.name == name,
        None => p.active,
    })?;
    let config = entry.config?;
    Some(ProfileFacts {
        name: entry.name,
        driver: config.driver,
        runtime: config
            .kubernetes_config
            .map(|k| k.container_runtime)
            .unwrap_or_default(),
    })
}

/// How converge gets an image into minikube once `docker-env` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Build with the Docker engine on this machine, then `minikube image load --daemon`.
    LoadFromDocker,
    /// `minikube image build` in the node's own runtime.
    ImageBuild,
}

/// Chooses the fallback: a Docker engine that answers here builds (its failures have exit codes
/// and converge's own context handling), and `minikube image load` copies the result; without
/// one, `minikube image build` builds in the node. Either is believed only once `minikube image
/// ls` lists the image.
pub fn fallback(local_docker_answers: bool) -> Fallback {
    if local_docker_answers {
        Fallback::LoadFromDocker
    } else {
        Fallback::ImageBuild
    }
}

/// What `minikube status --format {{.Host}}` says (cmd/minikube/cmd/status.go:80-178): exit 0
/// running; bits 1, 2, 4 of the code for host, cluster and Kubernetes not running; 85 no profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Exit 0: everything runs.
    Running,
    /// Exit 1–7: something is stopped; the host's state as printed.
    NotRunning {
        /// The host state (`Stopped`, `Running` with the apiserver down, …).
        host: String,
        /// The exit code's bits.
        code: i32,
    },
    /// A failure (85 no profile, …).
    Failed(MinikubeFailure),
}

/// Classifies `minikube status --format {{.Host}}`.
pub fn status(profile: &Profile, answer: &Answer) -> Status {
    match answer.code {
        Some(0) => Status::Running,
        // The host's state is the first line; minikube may add a stale-kubeconfig warning below
        // it (status.go:193-209).
        Some(code @ 1..=7) => Status::NotRunning {
            host: answer
                .stdout
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
            code,
        },
        _ => {
            let command = profile.invocation("status");
            Status::Failed(failure(&command, profile, answer))
        }
    }
}

/// The one line saying a load or build was not believed: `minikube image ls` does not list it.
pub fn not_listed(what: &str, image: &str, profile: &Profile) -> String {
    format!(
        "`{what}` exited 0 but `{}` does not list {image}: minikube reports a failed {} only in its log (`{}`)",
        profile.invocation("image ls"),
        if what.contains("image build") { "build" } else { "load" },
        profile.command("logs --file=minikube.log")
    )
}

#[cfg(test)]
mod tests {
    //! Every answer below is minikube v1.38.1's own, byte for byte: captured from a binary built
    //! from `k8s.io/minikube@v1.38.1` with stdout and stderr piped, as converge runs it (`X ` and
    //! `* ` are minikube's 7-bit prefixes when the output is not a terminal; style.go:25-33).
    //! Answers that need a running cluster were captured with a hand-written profile and machine
    //! config under a throwaway `MINIKUBE_HOME` and a stub driver CLI answering the state query
    //! (`podman`/`docker container inspect … running`), so minikube's own code ran from
    //! `mustload.Running` to the check that refused; the source line is named at each.

    use super::*;

    fn mk() -> Profile {
        Profile(Some("minikube".into()))
    }

    /// docker-env.go:305-307 (exit.Message, reason.go:471 → exitcodes.go:93): none driver.
    const NONE_DRIVER: (i32, &str, &str) = (
        51,
        "false exit code 51\n",
        "X Exiting due to ENV_DRIVER_CONFLICT: 'none' driver does not support 'minikube docker-env' command\n",
    );
    /// docker-env.go:312-315 and 678-681 (reason.go:66 → exitcodes.go:60): containerd on the
    /// podman driver (the same for kvm2, qemu2, …).
    const CONTAINERD_OFF_DOCKER: (i32, &str, &str) = (
        14,
        "false exit code 14\n",
        "X Exiting due to MK_USAGE: the docker-env command only supports the containerd runtime with the docker driver\n",
    );
    /// docker-env.go:674-677: cri-o on the docker driver.
    const CRIO: (i32, &str, &str) = (
        14,
        "false exit code 14\n",
        "X Exiting due to MK_USAGE: the docker-env command only supports the docker and containerd runtimes\n",
    );
    /// docker-env.go:309-311 (reason.go:473 → exitcodes.go:127): two nodes.
    const MULTI_NODE: (i32, &str, &str) = (
        81,
        "false exit code 81\n",
        "X Exiting due to ENV_MULTINODE_CONFLICT: The docker-env command is incompatible with multi-node clusters. Use the 'registry' add-on: https://minikube.sigs.k8s.io/docs/handbook/registry/\n",
    );
    /// mustload.go:74-77 with exit.go:70-75: no profile (empty MINIKUBE_HOME, or `-p nosuch`);
    /// docker-env silences stdout (docker-env.go:294-297), so stderr is empty.
    const NO_CLUSTER: (i32, &str, &str) = (85, "false exit code 85\n", "");
    /// mustload.go:127-131: the none profile with its kubelet stopped.
    const STOPPED: (i32, &str, &str) = (83, "false exit code 83\n", "");
    /// mustload.go:109-113 (reason.go:394 → exitcodes.go:126): the driver cannot tell the state.
    const GUEST_STATUS: (i32, &str, &str) = (
        80,
        "false exit code 80\n",
        "X Exiting due to GUEST_STATUS: Unable to get control-plane node minikube host status: state: unknown state \"minikube\": docker container inspect minikube --format={{.State.Status}}: exit status 1\nstdout:\n\n\nstderr:\nCannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?\n",
    );

    fn answer((code, stdout, stderr): (i32, &str, &str)) -> Answer {
        Answer::new(Some(code), stdout, stderr)
    }

    #[test]
    fn docker_env_under_the_none_driver_is_a_refusal_not_an_unreachable_cluster() {
        assert_eq!(
            docker_env(&mk(), &answer(NONE_DRIVER)),
            Ok(DockerEnv::Refused(Refusal::NoneDriver))
        );
    }

    #[test]
    fn docker_env_refusing_containerd_off_the_docker_driver_falls_back() {
        let got = docker_env(&mk(), &answer(CONTAINERD_OFF_DOCKER));
        assert_eq!(
            got,
            Ok(DockerEnv::Refused(Refusal::Runtime {
                message: CONTAINERD_NEEDS_DOCKER_DRIVER.into()
            }))
        );
        assert!(matches!(
            docker_env(&mk(), &answer(CRIO)),
            Ok(DockerEnv::Refused(Refusal::Runtime { .. }))
        ));
        assert_eq!(
            docker_env(&mk(), &answer(MULTI_NODE)),
            Ok(DockerEnv::Refused(Refusal::MultiNode))
        );
    }

    #[test]
    fn the_text_minikube_removed_in_v1_31_is_not_what_converge_reads() {
        // v1.30.1's docker-env.go:291 said `The docker-env command is only compatible with the
        // "docker" runtime…`; v1.38.1 never prints it. The exit code and reason id decide.
        assert!(!answer(CONTAINERD_OFF_DOCKER)
            .stderr
            .contains("only compatible with the \"docker\" runtime"));
        // A refusal-looking sentence under another exit code is not a refusal.
        let odd = Answer::new(
            Some(1),
            "",
            "the docker-env command only supports the containerd runtime with the docker driver\n",
        );
        assert!(docker_env(&mk(), &odd).is_err());
    }

    #[test]
    fn docker_env_with_no_cluster_exits_85_and_says_so_only_on_stdout() {
        let e = docker_env(&mk(), &answer(NO_CLUSTER)).unwrap_err();
        assert!(matches!(e, MinikubeFailure::NotFound { .. }), "{e:?}");
        let line = e.to_string();
        assert_eq!(
            line,
            "minikube profile `minikube` does not exist or has no machine (`minikube -p minikube docker-env` exited 85); minikube start"
        );
        assert!(!line.contains("unreachable"));
        assert_eq!(e.fix().as_deref(), Some("minikube start"));
        let other = Profile(Some("dev".into()));
        let e = docker_env(&other, &answer(NO_CLUSTER)).unwrap_err();
        assert_eq!(e.fix().as_deref(), Some("minikube start -p dev"));
    }

    #[test]
    fn docker_env_of_a_stopped_cluster_exits_83_and_names_minikube_start() {
        let e = docker_env(&mk(), &answer(STOPPED)).unwrap_err();
        assert!(matches!(e, MinikubeFailure::NotRunning { .. }), "{e:?}");
        assert!(e.to_string().ends_with("; minikube start"), "{e}");
    }

    #[test]
    fn another_docker_env_failure_quotes_minikubes_reason() {
        let e = docker_env(&mk(), &answer(GUEST_STATUS)).unwrap_err();
        assert_eq!(e.fix(), None);
        assert!(e.to_string().starts_with("`minikube -p minikube docker-env` failed (exit 80): GUEST_STATUS: Unable to get control-plane node minikube host status"), "{e}");
    }

    #[test]
    fn docker_env_that_works_is_an_environment() {
        // docker driver + docker runtime: the TCP template, docker-env.go:58-91, in the `none`
        // shell of shell.go:136-146 (no quotes, no usage hint). Needs a running node: from source.
        let tcp = "DOCKER_TLS_VERIFY=1\nDOCKER_HOST=tcp://192.168.49.2:2376\nDOCKER_CERT_PATH=/root/.minikube/certs\nMINIKUBE_ACTIVE_DOCKERD=minikube\n";
        let Ok(DockerEnv::Env(env)) = docker_env(&mk(), &Answer::new(Some(0), tcp, "")) else {
            panic!("exit 0 is an environment");
        };
        assert!(env.contains(&("DOCKER_HOST".into(), "tcp://192.168.49.2:2376".into())));
        assert_eq!(env.len(), 4);
        // docker driver + containerd works in v1.38.1 (docker-env.go:317-339): nerdctld over
        // ssh, with a warning on stderr (docker-env.go:319, out.WarningT → `! `).
        let ssh = "DOCKER_HOST=ssh://docker@127.0.0.1:32772\nMINIKUBE_ACTIVE_DOCKERD=minikube\nSSH_AUTH_SOCK=/tmp/ssh-x/agent.1\nSSH_AGENT_PID=4242\n";
        let warn = "! Using the docker-env command with the containerd runtime is a highly experimental feature, please provide feedback or contribute to make it better\n";
        let Ok(DockerEnv::Env(env)) = docker_env(&mk(), &Answer::new(Some(0), ssh, warn)) else {
            panic!("exit 0 is an environment, whatever stderr says");
        };
        assert!(env.contains(&("SSH_AUTH_SOCK".into(), "/tmp/ssh-x/agent.1".into())));
    }

    #[test]
    fn image_commands_without_the_profile_exit_14_loading_profile() {
        // image.go:346-350 (and 89-94 for load, 289-293 for build): config.LoadProfile fails;
        // stdout is two empty lines, stderr the reason and a boxed "please file an issue".
        let stderr = "X Exiting due to MK_USAGE: loading profile: cluster \"minikube\" does not exist\n* \n╭──╮\n│    * If the above advice does not help, please let us know:  │\n╰──╯\n";
        let a = Answer::new(Some(14), "\n\n", stderr);
        let e = image_list(&mk(), &a).unwrap_err();
        assert!(matches!(e, MinikubeFailure::NotFound { .. }), "{e:?}");
        assert_eq!(e.fix().as_deref(), Some("minikube start"));
    }

    #[test]
    fn an_empty_image_list_from_a_stopped_node_is_not_believed() {
        // cache_images.go:711-739, 776-781: a node that is not running is skipped and the list
        // printed is "\n", exit 0 (captured from the stopped none profile).
        let e = image_list(&mk(), &Answer::new(Some(0), "\n", "")).unwrap_err();
        assert!(matches!(e, MinikubeFailure::NothingListed { .. }));
        assert!(e.to_string().ends_with("; minikube start"), "{e}");
    }

    #[test]
    fn image_ls_lists_normalised_references() {
        // `--format short`: repo tags sorted in reverse, one a line (cache_images.go:776-781);
        // crictl files a short name under docker.io/library.
        let out = "registry.k8s.io/pause:3.10.1\nregistry.k8s.io/etcd:3.6.6-0\ndocker.io/library/todo-backend:0123456789ab\n";
        let images = image_list(&mk(), &Answer::new(Some(0), out, "")).expect("a listing");
        assert!(lists(&images, "todo-backend:0123456789ab"));
        assert!(!lists(&images, "todo-backend:ffffffffffff"));
    }

    #[test]
    fn image_load_that_loaded_nothing_fails_with_one_line() {
        // pkg/minikube/image/cache.go:74-77 (image not in the daemon: a warning, nil) and
        // cache_images.go:262-269 ("Live pushes are not considered a failure"): `minikube image
        // load` exits 0 regardless. The listing afterwards does not name it, so converge says so.
        let ls = image_list(
            &mk(),
            &Answer::new(Some(0), "registry.k8s.io/pause:3.10.1\n", ""),
        )
        .expect("a listing");
        assert!(!lists(&ls, "todo-backend:0123456789ab"));
        let line = not_listed(
            "minikube -p minikube image load --daemon todo-backend:0123456789ab",
            "todo-backend:0123456789ab",
            &mk(),
        );
        assert!(!line.contains('\n'));
        assert!(line.starts_with("`minikube -p minikube image load --daemon todo-backend:0123456789ab` exited 0 but `minikube -p minikube image ls` does not list todo-backend:0123456789ab"), "{line}");
    }

    #[test]
    fn the_fallback_builds_locally_when_a_docker_engine_answers() {
        assert_eq!(fallback(true), Fallback::LoadFromDocker);
        assert_eq!(fallback(false), Fallback::ImageBuild);
    }

    #[test]
    fn build_opts_follow_the_nodes_builder() {
        let args = [("A", "1")];
        assert_eq!(
            BuildDialect::of_runtime("docker").opts(&args, Some("prod"), None),
            ["--build-opt=target=prod", "--build-opt=build-arg=A=1"]
        );
        // containerd.go:413-420: each opt becomes `--<opt>` of `buildctl build`.
        assert_eq!(
            BuildDialect::of_runtime("containerd").opts(&args, Some("prod"), Some("linux/amd64")),
            [
                "--build-opt=opt=target=prod",
                "--build-opt=opt=platform=linux/amd64",
                "--build-opt=opt=build-arg:A=1"
            ]
        );
    }

    #[test]
    fn profile_list_names_the_driver_and_runtime() {
        // Captured from `minikube profile list -o json --light` (profile_list.go:231-247),
        // shortened to the fields read; with no profile it prints `{"invalid":[],"valid":[]}`.
        let json = r#"{"invalid":[],"valid":[{"Name":"minikube","Status":"Skipped","Config":{"Name":"minikube","Driver":"none","KubernetesConfig":{"KubernetesVersion":"v1.35.1","ClusterName":"minikube","ContainerRuntime":"containerd"},"Nodes":[{"Name":"","IP":"10.99.0.1","Port":8443}]},"Active":true,"ActiveKubeContext":false}]}"#;
        let f = profile_facts(&Profile(None), json).expect("the active profile");
        assert_eq!(
            (f.driver.as_str(), f.runtime.as_str()),
            ("none", "containerd")
        );
        assert!(profile_facts(&Profile(Some("dev".into())), json).is_none());
        assert!(profile_facts(&mk(), r#"{"invalid":[],"valid":[]}"#).is_none());
    }

    #[test]
    fn status_reads_the_exit_code_bits_and_85() {
        // status.go:154, 160-178: the stopped none profile printed `Stopped` (no newline), exit 7.
        assert_eq!(
            status(&mk(), &Answer::new(Some(7), "Stopped", "")),
            Status::NotRunning {
                host: "Stopped".into(),
                code: 7
            }
        );
        // mustload.go:74-77 via status.go:97: no profile.
        let none = "* Profile \"minikube\" not found. Run \"minikube profile list\" to view all profiles.\n  To start a cluster, run: \"minikube start\"\n";
        assert!(matches!(
            status(&mk(), &Answer::new(Some(85), none, "")),
            Status::Failed(MinikubeFailure::NotFound { .. })
        ));
        assert_eq!(
            status(&mk(), &Answer::new(Some(0), "Running\n", "")),
            Status::Running
        );
        // The none profile with a stale kubeconfig: exit 6, the warning under the host's state.
        let stale = "Running\nWARNING: Your kubectl is pointing to stale minikube-vm.\nTo fix the kubectl context, run `minikube update-context`\n";
        assert_eq!(
            status(&mk(), &Answer::new(Some(6), stale, "")),
            Status::NotRunning {
                host: "Running".into(),
                code: 6
            }
        );
    }

    #[test]
    fn the_reason_id_is_read_from_minikubes_exiting_line_only() {
        let a = answer(NONE_DRIVER);
        assert_eq!(
            a.exiting_due_to(),
            Some((
                "ENV_DRIVER_CONFLICT",
                "'none' driver does not support 'minikube docker-env' command"
            ))
        );
        assert_eq!(answer(NO_CLUSTER).exiting_due_to(), None);
        assert_eq!(answer(NO_CLUSTER).detail(), "");
    }

    #[test]
    fn env_lines_skip_minikubes_false_exit_code_line() {
        assert!(parse_env_lines("false exit code 85\n").is_empty());
    }
}
