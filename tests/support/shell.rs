//! Reading command lines as printed (converge's advice, the docs) the way a shell would, for
//! the tests that parse them with the real command line.

/// Splits like a shell for the simple quoting converge's advice and the docs use.
pub fn shell_words(cmd: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in cmd.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true
            }
            (None, c) if c.is_whitespace() => {
                if !cur.is_empty() || any {
                    words.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            (None, c) => cur.push(c),
        }
    }
    if !cur.is_empty() || any {
        words.push(cur);
    }
    words
}

/// The command with each `<placeholder>` (which may hold spaces: `<your checkout>`) as `x`, a
/// value every argument that takes a name or a path accepts.
pub fn fill_placeholders(cmd: &str) -> String {
    let mut filled = String::new();
    let mut depth = 0;
    for c in cmd.chars() {
        match c {
            '<' => {
                if depth == 0 {
                    filled.push('x');
                }
                depth += 1;
            }
            '>' if depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            c => filled.push(c),
        }
    }
    filled
}
