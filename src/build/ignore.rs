//! `.dockerignore` semantics, as the Docker CLI applies them when it sends a build context: the
//! file format, the pattern language and the directory walk. Pure string logic; it never reads
//! files or talks to an engine.
//!
//! The behaviour follows moby's `patternmatcher` (and its `ignorefile` reader) and the directory
//! walk of the archive code the CLI uses (`TarWithOptions`), rule by rule:
//!
//! - lines starting with `#` (before trimming) are comments; a UTF-8 BOM on the first line is
//!   dropped; surrounding whitespace is trimmed; empty lines are skipped;
//! - each pattern is cleaned like Go's `filepath.Clean` (`./a` → `a`, `a/../b` → `b`, `a/` → `a`)
//!   and one leading `/` is removed, so `/a` and `a` are the same;
//! - `!` makes an exception (re-includes); the last matching pattern wins;
//! - `*` matches any run of non-`/` characters, `?` one non-`/` character, `[...]` a class,
//!   `\x` the character `x`; `**` matches any number of directories (also zero);
//! - a pattern that matches a directory excludes everything under it; a file under an excluded
//!   directory comes back only through an exception whose text starts with that directory's path
//!   (the CLI skips the whole directory otherwise);
//! - malformed patterns (`[` unclosed, a trailing `\`, a lone `!`) are errors, as in Docker.
//!
//! Two corners of Docker's regexp translation are deliberately not reproduced, because they are
//! accidents of the translation rather than rules: `*` or `?` inside `[...]`, and `\` before a
//! letter that Go's regexp reads as a class (`\d`). Here those mean what `filepath.Match` says.

/// A pattern that Docker would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// A lone `!`.
    #[error("illegal exclusion pattern: \"!\"")]
    LoneBang,
    /// Bad `filepath.Match` syntax.
    #[error("syntax error in pattern `{0}`")]
    Syntax(String),
}

/// Reads a `.dockerignore` file into its cleaned patterns (exceptions keep their `!`), like
/// moby's `ignorefile.ReadAll`.
pub fn read_patterns(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = Vec::new();
    for (n, raw) in text.split('\n').enumerate() {
        // bufio.ScanLines drops one trailing `\r`.
        let mut line = raw.strip_suffix('\r').unwrap_or(raw);
        if n == 0 {
            line = line.strip_prefix('\u{feff}').unwrap_or(line);
        }
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = go_clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        if invert {
            cleaned.insert(0, '!');
        }
        out.push(cleaned);
    }
    out
}

/// Go's `filepath.Clean` for `/`-separated paths: the shortest equivalent path, lexically.
pub fn go_clean(path: &str) -> String {
    if path.is_empty() {
        return ".".into();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// One compiled pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    exclusion: bool,
    dirs: usize,
    kind: MatchKind,
}

#[derive(Debug, Clone)]
enum MatchKind {
    /// The path equals the pattern.
    Exact,
    /// The pattern is literal up to a trailing `**`: a prefix test.
    Prefix(String),
    /// The pattern is `**` then literal text: a suffix test.
    Suffix(String),
    /// Anything else: a token match equivalent to Docker's regexp.
    Tokens(Vec<Token>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Lit(char),
    /// `*`: any run of non-`/`.
    Star,
    /// `?`: one non-`/`.
    Any,
    /// `**` (followed by more): `(.*/)?`.
    AnyDirs,
    /// `**` at the end: `.*`.
    Rest,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Pattern {
    /// Compiles one pattern as moby's `patternmatcher.New` does (trim, clean, `!`, syntax check).
    /// `Ok(None)` for an empty line.
    pub fn new(raw: &str) -> Result<Option<Self>, PatternError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        let mut p = go_clean(trimmed);
        let mut exclusion = false;
        if let Some(rest) = p.strip_prefix('!') {
            if rest.is_empty() {
                return Err(PatternError::LoneBang);
            }
            exclusion = true;
            p = rest.to_string();
        }
        validate_glob(&p).map_err(|()| PatternError::Syntax(p.clone()))?;
        let kind = compile(&p);
        Ok(Some(Self {
            dirs: p.split('/').count(),
            text: p,
            exclusion,
            kind,
        }))
    }

    /// The cleaned pattern, without its `!`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the pattern matches `path` itself (not its parents).
    pub fn matches(&self, path: &str) -> bool {
        match &self.kind {
            MatchKind::Exact => path == self.text,
            MatchKind::Prefix(prefix) => path.starts_with(prefix.as_str()),
            MatchKind::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|rest| path == rest)
            }
            MatchKind::Tokens(tokens) => {
                let chars: Vec<char> = path.chars().collect();
                match_tokens(tokens, &chars)
            }
        }
    }
}

/// Decides the match strategy the way moby's compiler does: literal patterns compare exactly, a
/// trailing `**` after literal text is a prefix test, a leading `**` followed by literal text is a
/// suffix test (which, unlike the regexp, also matches `xfoo` for `**foo`), the rest tokens.
fn compile(p: &str) -> MatchKind {
    #[derive(PartialEq, Clone, Copy)]
    enum Detected {
        Exact,
        Prefix,
        Suffix,
        Regexp,
    }
    let chars: Vec<char> = p.chars().collect();
    let mut tokens = Vec::new();
    let mut detected = Detected::Exact;
    let mut i = 0;
    let mut iteration = 0;
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        match ch {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i >= chars.len() {
                    if detected == Detected::Exact {
                        detected = Detected::Prefix;
                    } else {
                        tokens.push(Token::Rest);
                        detected = Detected::Regexp;
                    }
                } else {
                    tokens.push(Token::AnyDirs);
                    detected = Detected::Regexp;
                }
                if iteration == 0 {
                    detected = Detected::Suffix;
                }
            }
            '*' => {
                tokens.push(Token::Star);
                detected = Detected::Regexp;
            }
            '?' => {
                tokens.push(Token::Any);
                detected = Detected::Regexp;
            }
            '\\' => {
                if let Some(&next) = chars.get(i) {
                    i += 1;
                    tokens.push(Token::Lit(next));
                    detected = Detected::Regexp;
                } else {
                    tokens.push(Token::Lit('\\'));
                }
            }
            '[' => {
                let (class, used) = parse_class(&chars[i..]);
                tokens.push(class);
                i += used;
                detected = Detected::Regexp;
            }
            c => tokens.push(Token::Lit(c)),
        }
        iteration += 1;
    }
    match detected {
        Detected::Exact => MatchKind::Exact,
        // The prefix test strips the last two characters of the cleaned pattern (the `**`).
        Detected::Prefix => MatchKind::Prefix(p[..p.len() - 2].to_string()),
        Detected::Suffix => MatchKind::Suffix(p[2..].to_string()),
        Detected::Regexp => {
            // When a leading `**` became a regexp, moby's regexp already has `(.*/)?` first.
            MatchKind::Tokens(tokens)
        }
    }
}

/// Parses a class body after `[` (already validated); returns the token and characters used,
/// including the closing `]`.
fn parse_class(chars: &[char]) -> (Token, usize) {
    let mut i = 0;
    let negated = chars.first() == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    while i < chars.len() {
        if chars[i] == ']' && !first {
            i += 1;
            break;
        }
        first = false;
        let (lo, used) = class_char(&chars[i..]);
        i += used;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|c| *c != ']') {
            let (h, used) = class_char(&chars[i + 1..]);
            hi = h;
            i += 1 + used;
        }
        ranges.push((lo, hi));
    }
    (Token::Class { negated, ranges }, i)
}

fn class_char(chars: &[char]) -> (char, usize) {
    match chars {
        ['\\', c, ..] => (*c, 2),
        [c, ..] => (*c, 1),
        [] => ('\0', 0),
    }
}

/// Go's `filepath.Match` syntax check (on Unix): classes closed and non-empty, ranges complete,
/// no trailing `\`.
fn validate_glob(p: &str) -> Result<(), ()> {
    let chars: Vec<char> = p.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                if i + 1 >= chars.len() {
                    return Err(());
                }
                i += 2;
            }
            '[' => {
                i += 1;
                if chars.get(i) == Some(&'^') {
                    i += 1;
                }
                let mut n = 0;
                loop {
                    match chars.get(i) {
                        None => return Err(()),
                        Some(']') if n > 0 => {
                            i += 1;
                            break;
                        }
                        _ => {}
                    }
                    i = class_item_end(&chars, i)?;
                    if chars.get(i) == Some(&'-') {
                        i = class_item_end(&chars, i + 1)?;
                    }
                    n += 1;
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// One class character at `i` (Go's `getEsc`): not `-` or `]`, `\x` escapes; returns the index
/// after it.
fn class_item_end(chars: &[char], i: usize) -> Result<usize, ()> {
    match chars.get(i) {
        None | Some('-') | Some(']') => Err(()),
        Some('\\') => {
            if i + 1 >= chars.len() {
                Err(())
            } else {
                Ok(i + 2)
            }
        }
        Some(_) => Ok(i + 1),
    }
}

/// Whether `tokens` match all of `s`: the set of reachable positions is carried token by token
/// (only over the window where it is non-empty), so nothing recurses and time is at most tokens
/// × characters, like Go's regexp. A backtracking matcher took exponential time on patterns like
/// `*a*a*a…b` and overflowed the stack on a pattern of 100,000 tokens: both found by fuzzing,
/// both reachable from a committed `.dockerignore`.
fn match_tokens(tokens: &[Token], s: &[char]) -> bool {
    let n = s.len();
    // cur[p]: the tokens so far match s[..p] exactly; every true entry lies in lo..=hi.
    let mut cur = vec![false; n + 1];
    let mut next = vec![false; n + 1];
    cur[0] = true;
    let (mut lo, mut hi) = (0, 0);
    for token in tokens {
        let (mut nlo, mut nhi) = (usize::MAX, 0);
        let mut mark = |p: usize, next: &mut [bool]| {
            next[p] = true;
            nlo = nlo.min(p);
            nhi = nhi.max(p);
        };
        match token {
            Token::Lit(_) | Token::Any | Token::Class { .. } => {
                for p in lo..=hi.min(n.saturating_sub(1)) {
                    if p < n && cur[p] && one(token, s[p]) {
                        mark(p + 1, &mut next);
                    }
                }
            }
            // Any run of non-`/`: extend every reached position rightwards up to a `/`.
            Token::Star => {
                let mut prev = false;
                for p in lo..=n {
                    let reach = cur[p] || (prev && s[p - 1] != '/');
                    if !reach && p > hi {
                        break;
                    }
                    if reach {
                        mark(p, &mut next);
                    }
                    prev = reach;
                }
            }
            // `(.*/)?`: stay, or move past any later `/`.
            Token::AnyDirs => {
                let mut seen = false;
                for p in lo..=n {
                    if cur[p] || (seen && s[p - 1] == '/') {
                        mark(p, &mut next);
                    }
                    seen |= cur[p];
                }
            }
            // `.*` at the end: everything from the first reached position on.
            Token::Rest => {
                for p in lo..=n {
                    mark(p, &mut next);
                }
            }
        }
        cur[lo..=hi].iter_mut().for_each(|x| *x = false);
        std::mem::swap(&mut cur, &mut next);
        if nlo == usize::MAX {
            return false;
        }
        (lo, hi) = (nlo, nhi);
    }
    cur[n]
}

/// Whether a one-character token accepts `c`.
fn one(token: &Token, c: char) -> bool {
    match token {
        Token::Lit(l) => *l == c,
        Token::Any => c != '/',
        Token::Class { negated, ranges } => {
            ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negated
        }
        Token::Star | Token::AnyDirs | Token::Rest => false,
    }
}

/// A compiled pattern list (moby's `PatternMatcher`).
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

/// Per-pattern "matched the parent directory" flags, carried down a directory walk.
pub type ParentInfo = Vec<bool>;

impl Matcher {
    /// Compiles patterns (as `read_patterns` returns them, or raw).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, PatternError> {
        let mut out = Vec::new();
        for p in patterns {
            if let Some(p) = Pattern::new(p.as_ref())? {
                out.push(p);
            }
        }
        Ok(Self {
            exclusions: out.iter().any(|p| p.exclusion),
            patterns: out,
        })
    }

    /// Whether there are no patterns at all.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// moby's `MatchesOrParentMatches`: `path` or one of its parent directories matches, and no
    /// later exception re-includes it. The daemon uses this to drop an excluded Dockerfile or
    /// `.dockerignore` from the context after reading them.
    pub fn matches_or_parent_matches(&self, path: &str) -> bool {
        let parents = parent_prefixes(path);
        let mut matched = false;
        for p in &self.patterns {
            if p.exclusion != matched {
                continue;
            }
            let hit = p.matches(path) || parents.iter().any(|d| p.matches(d));
            if hit {
                matched = !p.exclusion;
            }
        }
        matched
    }

    /// moby's deprecated `Matches`, which checks only the parent at the pattern's own depth. The
    /// CLI still uses it to decide whether to force the Dockerfile and `.dockerignore` into the
    /// context, so it is kept for exactly that.
    pub fn matches_legacy(&self, path: &str) -> bool {
        let file = go_clean(path);
        if file == "." {
            return false;
        }
        let parent = match file.rfind('/') {
            Some(i) => &file[..i],
            None => ".",
        };
        let parent_dirs: Vec<&str> = parent.split('/').collect();
        let mut matched = false;
        for p in &self.patterns {
            if p.exclusion != matched {
                continue;
            }
            let mut hit = p.matches(&file);
            if !hit && parent != "." && p.dirs <= parent_dirs.len() {
                hit = p.matches(&parent_dirs[..p.dirs].join("/"));
            }
            if hit {
                matched = !p.exclusion;
            }
        }
        matched
    }

    /// moby's `MatchesUsingParentResults`: whether `path` is excluded, given what the patterns
    /// did for its parent directory (`None` at the top of the walk).
    pub fn matches_with_parent(
        &self,
        path: &str,
        parent: Option<&ParentInfo>,
    ) -> (bool, ParentInfo) {
        let mut info = vec![false; self.patterns.len()];
        let mut matched = false;
        for (i, p) in self.patterns.iter().enumerate() {
            let mut hit = parent.is_some_and(|pi| pi.get(i).copied().unwrap_or(false));
            if !hit {
                if p.exclusion != matched {
                    continue;
                }
                hit = p.matches(path);
                if !hit && parent.is_none() {
                    hit = parent_prefixes(path).iter().any(|d| p.matches(d));
                }
            }
            info[i] = hit;
            if hit {
                matched = !p.exclusion;
            }
        }
        (matched, info)
    }

    /// Whether the CLI walks into an excluded directory: only when an exception's text starts with
    /// the directory's path (otherwise the whole directory is skipped).
    pub fn may_reinclude_under(&self, dir: &str) -> bool {
        if !self.exclusions {
            return false;
        }
        let dir_slash = format!("{dir}/");
        self.patterns
            .iter()
            .filter(|p| p.exclusion)
            .any(|p| format!("{}/", p.text).starts_with(&dir_slash))
    }
}

fn parent_prefixes(path: &str) -> Vec<&str> {
    path.match_indices('/').map(|(i, _)| &path[..i]).collect()
}

/// Selects the paths (relative to the context, `/`-separated, any order) the CLI would send, by
/// replaying its directory walk: directories are visited top-down with the parent's per-pattern
/// results, excluded directories are skipped unless an exception may re-include something in
/// them.
pub fn select<'a>(matcher: &Matcher, paths: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    use std::collections::HashMap;
    /// `None`: the walk skipped this directory.
    type DirState = Option<ParentInfo>;
    let mut dirs: HashMap<String, DirState> = HashMap::new();
    let mut out = Vec::new();
    if matcher.is_empty() {
        return paths.into_iter().collect();
    }
    'files: for path in paths {
        let mut parent: Option<ParentInfo> = None;
        for (i, _) in path.match_indices('/') {
            let dir = &path[..i];
            let state = match dirs.get(dir) {
                Some(s) => s.clone(),
                None => {
                    let (skip, info) = matcher.matches_with_parent(dir, parent.as_ref());
                    let state = if skip && !matcher.may_reinclude_under(dir) {
                        None
                    } else {
                        Some(info)
                    };
                    dirs.insert(dir.to_string(), state.clone());
                    state
                }
            };
            match state {
                None => continue 'files,
                Some(info) => parent = Some(info),
            }
        }
        let (skip, _) = matcher.matches_with_parent(path, parent.as_ref());
        if !skip {
            out.push(path);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(ignore: &str, files: &[&'static str]) -> Vec<&'static str> {
        let m = Matcher::new(&read_patterns(ignore.as_bytes())).expect("valid patterns");
        let mut out = select(&m, files.iter().copied());
        out.sort();
        out
    }

    const TREE: &[&str] = &[
        "Dockerfile",
        "README.md",
        "src/main.go",
        "src/util/helper.go",
        "src/util/helper_test.go",
        "docs/a.md",
        "docs/deep/b.md",
        "node_modules/x/index.js",
        "node_modules/keep.js",
        "build/out.bin",
        "xfoo",
        "a/foo",
    ];

    #[test]
    fn comments_blank_lines_bom_and_crlf_are_handled_like_the_ignorefile_reader() {
        let got =
            read_patterns(b"\xef\xbb\xbf# comment\r\n\r\n  spaced  \r\n  # not a comment\n!keep\n");
        assert_eq!(got, vec!["spaced", "# not a comment", "!keep"]);
    }

    #[test]
    fn patterns_are_cleaned_and_a_leading_slash_is_dropped() {
        let got = read_patterns(b"./a/\n/b/c\na/../d\n! /e/\n/\n");
        assert_eq!(got, vec!["a", "b/c", "d", "!e", "/"]);
    }

    #[test]
    fn go_clean_matches_filepath_clean() {
        assert_eq!(go_clean(""), ".");
        assert_eq!(go_clean("a//b/./c/.."), "a/b");
        assert_eq!(go_clean("../a"), "../a");
        assert_eq!(go_clean("/../a"), "/a");
        assert_eq!(go_clean("a/.."), ".");
        assert_eq!(go_clean("/"), "/");
    }

    #[test]
    fn a_lone_bang_and_bad_globs_are_errors() {
        assert_eq!(Matcher::new(&["!"]).unwrap_err(), PatternError::LoneBang);
        for bad in ["[", "a[", "[]", "[^]", "a\\", "[a-]", "[-a]", "[a-\\"] {
            assert!(Matcher::new(&[bad]).is_err(), "{bad} should be refused");
        }
        for good in ["[a-z]", "[^a]", "\\*", "[\\]]", "a]b", "[[]"] {
            assert!(Matcher::new(&[good]).is_ok(), "{good} should be accepted");
        }
    }

    #[test]
    fn a_literal_pattern_excludes_that_path_and_everything_under_it() {
        let got = sel("docs\nREADME.md", TREE);
        assert!(!got.contains(&"docs/a.md") && !got.contains(&"docs/deep/b.md"));
        assert!(!got.contains(&"README.md"));
        assert!(got.contains(&"src/main.go"));
    }

    #[test]
    fn a_pattern_is_anchored_at_the_context_root() {
        // `foo` matches only the top-level `foo`, never `a/foo` (unlike .gitignore).
        let got = sel("foo", &["foo", "a/foo"]);
        assert_eq!(got, vec!["a/foo"]);
    }

    #[test]
    fn star_and_question_mark_stay_within_one_path_segment() {
        let got = sel("*.md\nsrc/*/h?lper.go", TREE);
        assert!(!got.contains(&"README.md"));
        // `*.md` is anchored: docs/a.md is not matched by it.
        assert!(got.contains(&"docs/a.md"));
        assert!(!got.contains(&"src/util/helper.go"));
        assert!(got.contains(&"src/util/helper_test.go"));
    }

    #[test]
    fn double_star_matches_any_number_of_directories() {
        let got = sel("**/*.md", TREE);
        assert!(!got.contains(&"README.md") && !got.contains(&"docs/a.md"));
        assert!(!got.contains(&"docs/deep/b.md"));
        let got = sel("src/**/*_test.go", TREE);
        assert_eq!(got.iter().filter(|p| p.ends_with("_test.go")).count(), 0);
        assert!(got.contains(&"src/util/helper.go"));
    }

    #[test]
    fn a_trailing_double_star_is_a_prefix_test() {
        let m = Matcher::new(&["docs/**"]).expect("valid");
        assert!(m.matches_or_parent_matches("docs/a.md"));
        assert!(!m.matches_or_parent_matches("docsx/a.md"));
        // `a**` is a plain prefix: it also matches `ab/...`.
        let m = Matcher::new(&["a**"]).expect("valid");
        assert!(m.matches_or_parent_matches("ab/c"));
    }

    #[test]
    fn a_leading_double_star_followed_by_text_is_a_suffix_test() {
        // Docker's fast path: `**foo` matches `xfoo` (its regexp would not).
        let got = sel("**foo", TREE);
        assert!(!got.contains(&"xfoo") && !got.contains(&"a/foo"));
        // `**/foo` matches `foo` at the root and at any depth.
        let m = Matcher::new(&["**/foo"]).expect("valid");
        assert!(m.matches_or_parent_matches("foo"));
        assert!(m.matches_or_parent_matches("a/b/foo"));
        assert!(!m.matches_or_parent_matches("a/xfoo"));
    }

    #[test]
    fn a_lone_double_star_excludes_everything() {
        assert!(sel("**", TREE).is_empty());
        assert!(sel("*", TREE).is_empty());
    }

    #[test]
    fn character_classes_and_escapes_follow_filepath_match() {
        let m = Matcher::new(&["file[0-9].txt", "[^a]x", "\\*lit"]).expect("valid");
        assert!(m.matches_or_parent_matches("file3.txt"));
        assert!(!m.matches_or_parent_matches("fileA.txt"));
        assert!(m.matches_or_parent_matches("bx"));
        assert!(!m.matches_or_parent_matches("ax"));
        assert!(m.matches_or_parent_matches("*lit"));
        assert!(!m.matches_or_parent_matches("xlit"));
    }

    #[test]
    fn regexp_special_characters_are_literal() {
        let m = Matcher::new(&["a.b+(c)*"]).expect("valid");
        assert!(m.matches_or_parent_matches("a.b+(c)xyz"));
        assert!(!m.matches_or_parent_matches("axb+(c)"));
    }

    #[test]
    fn the_last_matching_pattern_wins_and_exceptions_reinclude() {
        let got = sel("*.md\n!README.md", TREE);
        assert!(got.contains(&"README.md"));
        let got = sel("!README.md\n*.md", TREE);
        assert!(!got.contains(&"README.md"));
    }

    #[test]
    fn an_exception_under_an_excluded_directory_works_when_it_names_that_directory() {
        let got = sel("node_modules\n!node_modules/keep.js", TREE);
        assert!(got.contains(&"node_modules/keep.js"));
        assert!(!got.contains(&"node_modules/x/index.js"));
    }

    #[test]
    fn a_wildcard_exception_cannot_reach_into_an_excluded_directory() {
        // The CLI skips `node_modules` entirely: `!**/keep.js` does not start with its path.
        let got = sel("node_modules\n!**/keep.js", TREE);
        assert!(!got.contains(&"node_modules/keep.js"));
        // Without the directory exclusion, the same exception applies.
        let got = sel("**/*.js\n!**/keep.js", TREE);
        assert!(got.contains(&"node_modules/keep.js"));
    }

    #[test]
    fn excluding_everything_then_reincluding_a_directory_keeps_only_it() {
        let got = sel("*\n!src", TREE);
        assert_eq!(
            got,
            vec![
                "src/main.go",
                "src/util/helper.go",
                "src/util/helper_test.go"
            ]
        );
    }

    #[test]
    fn dot_and_slash_patterns_exclude_nothing() {
        assert_eq!(sel(".\n/", TREE).len(), TREE.len());
    }

    #[test]
    fn the_legacy_matcher_checks_only_the_parent_at_the_patterns_depth() {
        let m = Matcher::new(&["a"]).expect("valid");
        assert!(m.matches_legacy("a/b/Dockerfile"));
        let m = Matcher::new(&["b"]).expect("valid");
        assert!(!m.matches_legacy("a/b/Dockerfile"));
        assert!(m.matches_or_parent_matches("b/Dockerfile"));
    }

    /// Runs `f` on a thread and fails the test if it has not answered within `secs` (a liveness
    /// bound for matching that used to take exponential time, not a speed target).
    fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(secs))
            .expect("matching did not finish: it backtracks exponentially")
    }

    #[test]
    fn many_stars_match_in_polynomial_time() {
        let pattern = format!("{}b", "*a".repeat(30));
        let path = "a".repeat(200);
        let m = Matcher::new(std::slice::from_ref(&pattern)).expect("valid");
        assert!(!within(30, move || m.matches_or_parent_matches(&path)));
        let hit = format!("{}b", "a".repeat(40));
        let m = Matcher::new(&[pattern]).expect("valid");
        assert!(within(30, move || m.matches_or_parent_matches(&hit)));
        // `**` runs too: a long path of directories against many `**/` segments.
        let pattern = format!("{}z", "**/a".repeat(20));
        let path = "a/".repeat(100) + "y";
        let m = Matcher::new(&[pattern]).expect("valid");
        assert!(!within(30, move || m.matches_or_parent_matches(&path)));
    }

    #[test]
    fn a_pattern_of_a_hundred_thousand_tokens_does_not_overflow_the_stack() {
        let pattern = format!("{}*", "a".repeat(100_000));
        let path = format!("{}tail", "a".repeat(100_000));
        // Within the window, a literal prefix keeps a single reachable position: linear time.
        let m = Matcher::new(&[pattern]).expect("valid");
        assert!(m.matches_or_parent_matches(&path));
    }
}
