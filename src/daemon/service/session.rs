//! The unit `service install` writes for a checkout, from the installing session: the checkout's
//! paths, the account and groups a system unit runs as, and what [`capture`] keeps of the
//! environment. This file reads the machine (environment, `/etc/passwd`, `/etc/group`, file
//! owners); the rules it applies are [`capture`]'s pure functions.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::capture::{self, Captured};
use super::{normalize, CheckoutPaths, Manager, Places, Unit};
use crate::daemon::refs::GitDirs;
use crate::source::SourceError;

/// The checkout's paths: through libgit2, or (for root installing a unit for a checkout another
/// account owns, which libgit2 refuses to open) by walking up to `.git`.
pub fn checkout(repo: &Path) -> Result<CheckoutPaths, SourceError> {
    match GitDirs::discover(repo) {
        Ok(d) => Ok(CheckoutPaths {
            root: d.root,
            git_dir: d.git_dir,
            common_dir: d.common_dir,
        }),
        Err(e) => super::locate_checkout(repo).ok_or(e),
    }
}

/// The unit for `dirs` under `manager`, running `converge run` with `args`; a system unit runs
/// as `run_as`, else as the owner of the git directory (which the daemon must write). Also
/// returns what was captured, for the install report.
pub fn unit_for(
    dirs: &CheckoutPaths,
    run_as: Option<&str>,
    args: &[String],
    manager: Manager,
    places: &Places,
) -> Result<(Unit, Captured), io::Error> {
    let cwd = std::env::current_dir()?;
    // Only variables whose name and value are text can go in a unit file.
    let vars = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    let captured = capture::capture(vars, &cwd);
    let system = manager == Manager::SystemdSystem;
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let (user, home) = if system {
        let owner = std::fs::metadata(&dirs.git_dir)?.uid();
        let user = match run_as {
            Some(u) => u.to_string(),
            None => capture::account_by_uid(&passwd, owner)
                .map(|(name, _)| name)
                // systemd takes a numeric UID for an account not in /etc/passwd (NSS).
                .unwrap_or_else(|| owner.to_string()),
        };
        let home = capture::home_of(&passwd, &user).unwrap_or_else(|| places.home.clone());
        (Some(user), home)
    } else {
        (None, places.home.clone())
    };
    let mut groups = Vec::new();
    if system && user.as_deref() != Some("root") {
        if let Some(meta) =
            capture::docker_socket(&captured).and_then(|s| std::fs::metadata(s).ok())
        {
            if meta.gid() != 0 && meta.mode() & 0o060 == 0o060 {
                let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
                groups.push(
                    capture::group_name(&group, meta.gid())
                        .unwrap_or_else(|| meta.gid().to_string()),
                );
            }
        }
    }
    let minikube = capture::on_path(captured.get("PATH"), "minikube").is_some();
    let (git_dir, common_dir) = (normalize(&dirs.git_dir), normalize(&dirs.common_dir));
    let writable = capture::writable_paths(&git_dir, &common_dir, &captured, &home, minikube);
    let unit = Unit {
        exe: std::env::current_exe()?,
        checkout: normalize(&dirs.root),
        args: args.to_vec(),
        user,
        groups,
        env: captured.env.clone(),
        writable,
        sandbox: manager != Manager::SystemdUser || capture::user_namespaces_allowed_here(),
    };
    Ok((unit, captured))
}
