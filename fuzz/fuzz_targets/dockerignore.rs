//! The `.dockerignore` matcher (moby's semantics): patterns from the first part of the input
//! (up to a `\0`), paths to match from the rest, one per line. Checked: no panic, no runaway
//! time (libFuzzer's -timeout), and the invariants the build context relies on.
#![no_main]

use converge::build::ignore::{go_clean, read_patterns, Matcher};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (patterns, paths) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let patterns = read_patterns(patterns);
    let Ok(matcher) = Matcher::new(&patterns) else {
        return;
    };
    let exclusions = patterns.iter().any(|p| p.starts_with('!'));
    for path in String::from_utf8_lossy(paths).lines().take(64) {
        let clean = go_clean(path);
        assert_eq!(
            go_clean(&clean),
            clean,
            "go_clean is idempotent for {path:?}"
        );
        // The context walk only ever asks about clean relative paths.
        if clean.starts_with('/') || clean == "." || clean.starts_with("../") || clean == ".." {
            continue;
        }
        let m = matcher.matches_or_parent_matches(&clean);
        let _ = matcher.matches_legacy(&clean);
        if matcher.is_empty() {
            assert!(!m, "no pattern, no match: {clean:?}");
        }
        // Without `!` exceptions, an excluded directory excludes everything below it.
        if m && !exclusions {
            let child = format!("{clean}/x");
            assert!(
                matcher.matches_or_parent_matches(&child),
                "{clean:?} matches, {child:?} not"
            );
        }
    }
});
