//! `fnmatch(3)` with no flags, which is what kmod uses to match the patterns
//! in modules.alias (`usb:v13FDp3940d0[0-2]*dc*...`) and softdep module names.

/// Whether `s` needs [`matches`] rather than plain string equality.
pub fn is_pattern(s: &str) -> bool {
    s.bytes().any(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
}

/// Matches `text` against a shell pattern: `*`, `?`, `[...]` (with `!`/`^`
/// negation and ranges) and `\` escapes. As with flags 0, `*` also matches
/// `/` and a leading `.` is not special.
pub fn matches(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0, 0);
    // Where to resume after the most recent `*`: (pattern after it, text
    // position it currently swallows up to). One backtrack point suffices
    // because every other token matches exactly one byte.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if let Some(next) = p.get(pi).and_then(|_| step(p, pi, t[ti])) {
            match next {
                Step::Star => {
                    star = Some((pi + 1, ti));
                    pi += 1;
                }
                Step::Consumed(n) => {
                    pi = n;
                    ti += 1;
                }
            }
            continue;
        }
        match star {
            Some((after_star, swallowed)) => {
                pi = after_star;
                ti = swallowed + 1;
                star = Some((after_star, swallowed + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

enum Step {
    Star,
    /// The token matched one text byte; the next token starts here.
    Consumed(usize),
}

/// Tries the token at `p[pi]` against one text byte `c`.
fn step(p: &[u8], pi: usize, c: u8) -> Option<Step> {
    match p[pi] {
        b'*' => Some(Step::Star),
        b'?' => Some(Step::Consumed(pi + 1)),
        b'[' => match bracket(p, pi, c) {
            Some((true, next)) => Some(Step::Consumed(next)),
            Some((false, _)) => None,
            // An unterminated `[` is an ordinary character, as in glibc.
            None => (c == b'[').then_some(Step::Consumed(pi + 1)),
        },
        b'\\' if pi + 1 < p.len() => (p[pi + 1] == c).then_some(Step::Consumed(pi + 2)),
        lit => (lit == c).then_some(Step::Consumed(pi + 1)),
    }
}

/// Evaluates the bracket expression starting at `p[start] == b'['` for byte
/// `c`: `Some((matched, index after ']'))`, or `None` if it is unterminated.
fn bracket(p: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let &b = p.get(i)?;
        // A `]` right after the opening is a literal member.
        if b == b']' && !first {
            break;
        }
        first = false;
        let (lo, after_lo) = escaped(p, i)?;
        i = after_lo;
        if p.get(i) == Some(&b'-') && p.get(i + 1).is_some_and(|&n| n != b']') {
            let (hi, after_hi) = escaped(p, i + 1)?;
            i = after_hi;
            matched |= lo <= c && c <= hi;
        } else {
            matched |= lo == c;
        }
    }
    Some((matched != negate, i + 1))
}

/// The byte at `p[i]`, honouring a `\` escape, and the index after it.
fn escaped(p: &[u8], i: usize) -> Option<(u8, usize)> {
    match p.get(i)? {
        b'\\' => p.get(i + 1).map(|&b| (b, i + 2)),
        &b => Some((b, i + 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_wildcards() {
        assert!(matches("crypto_aes", "crypto_aes"));
        assert!(!matches("crypto_aes", "crypto_aes_x"));
        assert!(matches("crypto_aes*", "crypto_aes"));
        assert!(matches("crypto_aes*", "crypto_aes_generic"));
        assert!(matches("c?ypto", "crypto"));
        assert!(!matches("c?ypto", "cypto"));
        assert!(matches("*", ""));
        assert!(matches("a*b*c", "aXXbYYbc"));
        assert!(!matches("a*b*c", "aXXbYYb"));
        assert!(matches("a/*", "a/b/c"));
    }

    #[test]
    fn device_alias_patterns() {
        let pat = "usb:v13FDp3940d0[0-2]*dc*dsc*dp*ic*isc*ip*in*";
        assert!(matches(
            pat,
            "usb:v13FDp3940d0100dc00dsc00dp00ic08isc06ip50in00"
        ));
        assert!(!matches(
            pat,
            "usb:v13FDp3940d0300dc00dsc00dp00ic08isc06ip50in00"
        ));
        assert!(matches(
            "pci:v00001AF4d*sv*",
            "pci:v00001AF4d00001001sv00001AF4"
        ));
    }

    #[test]
    fn brackets_negation_escapes() {
        assert!(matches("[!a]x", "bx"));
        assert!(!matches("[^a]x", "ax"));
        assert!(matches("[]a]", "]"));
        assert!(matches("[a-]", "-"));
        assert!(matches("x\\*", "x*"));
        assert!(!matches("x\\*", "xy"));
        // Unterminated bracket is literal.
        assert!(matches("a[b", "a[b"));
        assert!(is_pattern("a[b") && !is_pattern("dm_crypt"));
    }
}
