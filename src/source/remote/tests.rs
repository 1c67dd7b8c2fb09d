use super::*;

// What ssh prints, assembled from openssh-portable's own format strings (sshconnect.c
// warn_changed_key and check_host_key, sshconnect2.c, authfile.c sshkey_perm_ok, ssh.c) and
// what git adds (connect.c die_initial_contact), as `git fetch` shows them.
const CLOSING: &str = "fatal: Could not read from remote repository.\n\nPlease make sure you have the correct access rights\nand the repository exists.\n";

fn host_key_changed() -> String {
    format!(
        "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\n\
Someone could be eavesdropping on you right now (man-in-the-middle attack)!\n\
It is also possible that a host key has just been changed.\n\
The fingerprint for the ED25519 key sent by the remote host is\n\
SHA256:zyHJmAYc0eO2rzyb2cKmHnFNg6dbTtOgLKIAW03MASo.\n\
Please contact your system administrator.\n\
Add correct host key in /etc/converge/known_hosts to get rid of this message.\n\
Offending ED25519 key in /etc/converge/known_hosts:1\n\
Host key for [10.0.0.5]:2222 has changed and you have requested strict checking.\n\
Host key verification failed.\n{CLOSING}"
    )
}

#[test]
fn a_changed_host_key_is_told_apart_from_an_unknown_one() {
    let changed = host_key_changed();
    assert_eq!(
        FetchFailure::classify(&changed),
        FetchFailure::HostKeyChanged
    );
    assert_eq!(
        telling_line(&changed),
        "Host key for [10.0.0.5]:2222 has changed and you have requested strict checking."
    );

    let unknown = format!("No ED25519 host key is known for [10.0.0.5]:2222 and you have requested strict checking.\nHost key verification failed.\n{CLOSING}");
    assert_eq!(
        FetchFailure::classify(&unknown),
        FetchFailure::UnknownHostKey
    );
    assert!(telling_line(&unknown).starts_with("No ED25519 host key is known for"));

    let other = format!("Host key verification failed.\n{CLOSING}");
    assert_eq!(
        FetchFailure::classify(&other),
        FetchFailure::HostKeyRejected
    );
    assert_eq!(telling_line(&other), "Host key verification failed.");
}

#[test]
fn ssh_failures_are_classified_from_ssh_and_git_words() {
    let cases = [
        (
            // sshconnect2.c: fatal("%s@%s: Permission denied (%s).", …)
            format!("git@10.0.0.5: Permission denied (publickey).\n{CLOSING}"),
            FetchFailure::AuthDenied,
            "git@10.0.0.5: Permission denied (publickey).",
        ),
        (
            // sshconnect.c: error("ssh: connect to host %s port %s: %s", …), real output.
            format!("ssh: connect to host 127.0.0.1 port 1: Connection refused\n{CLOSING}"),
            FetchFailure::Unreachable,
            "ssh: connect to host 127.0.0.1 port 1: Connection refused",
        ),
        (
            format!("ssh: connect to host 10.0.0.5 port 2222: Connection timed out\n{CLOSING}"),
            FetchFailure::Unreachable,
            "ssh: connect to host 10.0.0.5 port 2222: Connection timed out",
        ),
        (
            format!("ssh: Could not resolve hostname nonexistent.invalid: Name or service not known\n{CLOSING}"),
            FetchFailure::Unreachable,
            "ssh: Could not resolve hostname nonexistent.invalid: Name or service not known",
        ),
        (
            // builtin/upload-pack.c, run by the server for a path with no repository.
            format!("fatal: '/srv/git/nope.git' does not appear to be a git repository\n{CLOSING}"),
            FetchFailure::RepoNotFound,
            "'/srv/git/nope.git' does not appear to be a git repository",
        ),
        (
            // A forge's own words (GitHub over SSH).
            format!("ERROR: Repository not found.\n{CLOSING}"),
            FetchFailure::RepoNotFound,
            "ERROR: Repository not found.",
        ),
        (
            // remote-curl.c: die(_("repository '%s' not found"), …)
            "remote: Repository not found.\nfatal: repository 'https://example.com/org/nope.git/' not found\n".into(),
            FetchFailure::RepoNotFound,
            "remote: Repository not found.",
        ),
        (
            // remote.c: die(_("couldn't find remote ref %s"), name), real output.
            "fatal: couldn't find remote ref main\n".into(),
            FetchFailure::BranchNotFound,
            "couldn't find remote ref main",
        ),
        (
            "fatal: could not read Username for 'https://example.com': terminal prompts disabled\n".into(),
            FetchFailure::AuthDenied,
            "could not read Username for 'https://example.com': terminal prompts disabled",
        ),
        (
            "fatal: something nobody foresaw\n".into(),
            FetchFailure::Other,
            "something nobody foresaw",
        ),
    ];
    for (stderr, kind, line) in cases {
        assert_eq!(FetchFailure::classify(&stderr), kind, "{stderr}");
        assert_eq!(telling_line(&stderr), line, "{stderr}");
    }
}

#[test]
fn an_unprotected_key_is_named_before_the_denial_it_causes() {
    // authfile.c sshkey_perm_ok, then the server refuses since no key was offered.
    let stderr = format!(
        "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
@         WARNING: UNPROTECTED PRIVATE KEY FILE!          @\n\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
Permissions 0644 for '/keys/id_ed25519' are too open.\n\
It is required that your private key files are NOT accessible by others.\n\
This private key will be ignored.\n\
Load key \"/keys/id_ed25519\": bad permissions\n\
git@10.0.0.5: Permission denied (publickey).\n{CLOSING}"
    );
    assert_eq!(FetchFailure::classify(&stderr), FetchFailure::KeyTooOpen);
    assert_eq!(
        telling_line(&stderr),
        "Permissions 0644 for '/keys/id_ed25519' are too open."
    );
    let fix = FetchFailure::KeyTooOpen.fix(&SshAuth {
        key: Some("/keys/id_ed25519".into()),
        known_hosts: None,
    });
    assert!(fix.contains("chmod 600 /keys/id_ed25519"), "{fix}");
}

#[test]
fn every_failure_says_what_and_the_fix_on_one_line() {
    let ssh = SshAuth {
        key: Some("/k/id".into()),
        known_hosts: Some("/k/known_hosts".into()),
    };
    for f in [
        FetchFailure::HostKeyChanged,
        FetchFailure::UnknownHostKey,
        FetchFailure::HostKeyRejected,
        FetchFailure::KeyTooOpen,
        FetchFailure::AuthDenied,
        FetchFailure::Unreachable,
        FetchFailure::RepoNotFound,
        FetchFailure::BranchNotFound,
        FetchFailure::Other,
    ] {
        let (what, fix) = (f.what("main"), f.fix(&ssh));
        assert!(!what.contains('\n') && !fix.contains('\n'), "{f:?}");
        assert!(!fix.is_empty() && !f.label().is_empty());
    }
    assert!(FetchFailure::UnknownHostKey
        .fix(&ssh)
        .contains("/k/known_hosts"));
    assert!(FetchFailure::AuthDenied.fix(&ssh).contains("/k/id"));
    assert!(FetchFailure::BranchNotFound.what("prod").contains("`prod`"));
}

#[test]
fn credentials_in_urls_are_never_shown() {
    assert_eq!(
        redact("https://user:ghp_s3cr3t@github.com/org/repo.git"),
        "https://***@github.com/org/repo.git"
    );
    assert_eq!(
        redact("https://ghp_s3cr3t@github.com/org/repo.git"),
        "https://***@github.com/org/repo.git"
    );
    // The user of an SSH URL is an account name, not a secret; a password is.
    assert_eq!(
        redact("ssh://git@10.0.0.5:2222/srv/git/app.git"),
        "ssh://git@10.0.0.5:2222/srv/git/app.git"
    );
    assert_eq!(
        redact("ssh://git:hunter2@host/app.git"),
        "ssh://git:***@host/app.git"
    );
    // Inside a message, several times, and an `@` in the path is not userinfo.
    assert_eq!(
        redact("fetching 'https://a:b@h/x' then HTTPS://c@h2/y@z"),
        "fetching 'https://***@h/x' then HTTPS://***@h2/y@z"
    );
    for s in [
        "",
        "no url here",
        "git@github.com:org/repo.git",
        "://",
        "https://",
    ] {
        assert_eq!(redact(s), s);
    }
    let r = Remote::parse("https://bot:t0ken@example.com/r.git").unwrap();
    assert!(!r.to_string().contains("t0ken"));
    assert!(!format!("{r:?}").contains("t0ken"));
    assert_eq!(r.fetch_arg(), "https://bot:t0ken@example.com/r.git");
}

#[test]
fn a_remote_is_a_configured_name_or_else_a_url() {
    for name in ["origin", "upstream", "my-remote", "a.b_c"] {
        let r = Remote::parse(name).unwrap();
        assert!(!r.is_url());
        assert_eq!(r.name(), name);
    }
    for url in [
        "ssh://git@10.0.0.5:2222/srv/git/app.git",
        "git@github.com:org/repo.git",
        "https://github.com/org/repo.git",
        "/srv/git/app.git",
        "../app.git",
        "file:///srv/git/app.git",
    ] {
        let r = Remote::parse(url).unwrap();
        assert!(r.is_url(), "{url}");
        // A URL cannot be part of a ref name.
        assert_eq!(r.name(), URL_REMOTE_NAME, "{url}");
    }
    assert!(matches!(Remote::parse("  "), Err(RemoteError::Empty)));
}

#[test]
fn the_ssh_command_pins_the_key_and_known_hosts_and_never_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id key");
    let kh = dir.path().join("known hosts");
    std::fs::write(&key, "k").unwrap();
    std::fs::write(&kh, "h").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let ssh = SshAuth::new(Some(&key), Some(&kh)).unwrap();
    let cmd = ssh.ssh_command().unwrap();
    assert_eq!(
        cmd,
        format!(
            "ssh -i '{}' -o IdentitiesOnly=yes -o 'UserKnownHostsFile=\"{}\"' -o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout=20",
            key.display(),
            kh.display()
        )
    );
    let env = ssh.git_env();
    assert!(env.contains(&("GIT_TERMINAL_PROMPT", "0".into())));
    assert!(env
        .iter()
        .any(|(k, v)| *k == "GIT_SSH_COMMAND" && *v == cmd));
    // Without files git keeps the user's own ssh, and still never prompts.
    let none = SshAuth::new(None, None).unwrap();
    assert_eq!(none.git_env(), vec![("GIT_TERMINAL_PROMPT", "0".into())]);
}

#[cfg(unix)]
#[test]
fn a_key_readable_by_others_is_refused_as_ssh_would() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id");
    std::fs::write(&key, "k").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = SshAuth::new(Some(&key), None).unwrap_err();
    assert!(
        matches!(e, RemoteError::KeyTooOpen { mode: 0o644, .. }),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("UNPROTECTED PRIVATE KEY FILE"), "{msg}");
    assert!(msg.contains("chmod 600"), "{msg}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert!(SshAuth::new(Some(&key), None).is_ok());
}

#[test]
fn paths_ssh_would_expand_or_that_do_not_exist_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["kh%d", "kh${HOME}", "kh\"q", "kh'q", "kh\\b", "kh\nx"] {
        let p = dir.path().join(bad);
        let _ = std::fs::write(&p, "h");
        let e = SshAuth::new(None, Some(&p)).unwrap_err();
        assert!(matches!(e, RemoteError::UnsafePath { .. }), "{bad}: {e}");
    }
    let e = SshAuth::new(None, Some(&dir.path().join("missing"))).unwrap_err();
    assert!(matches!(e, RemoteError::Unreadable { .. }), "{e}");
    assert!(e.to_string().contains("ssh-keyscan"), "{e}");
}
