//! Key patterns in Redis's glob syntax, as `KEYS` and `SCAN MATCH` read them (`stringmatchlen`
//! in Redis): `*`, `?`, `[abc]`, `[^a-z]`, and `\` to escape.
//!
//! Keys come from clients, so matching must not blow up on hostile input: `*` is handled by
//! resuming after the last star (the classic wildcard algorithm), which is linear in practice
//! and never exponential, unlike a naive recursive matcher.

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Box<[u8]>,
    /// Bytes every match starts with, checked first: most patterns are `prefix:*`.
    literal_prefix: usize,
    /// The pattern is `prefix*`, matched by its prefix alone.
    prefix_star: bool,
    /// A literal prefix of at most eight bytes as a little-endian word (zeros after it), and
    /// the mask of its bytes: most prefixes (`user:`, `session:`) are checked against a key of
    /// eight bytes or more with one comparison of words, without calling `memcmp`.
    short_prefix: Option<(u64, u64)>,
}

impl Glob {
    /// Compiles a pattern; an unterminated `[` is refused, since in a config file it is almost
    /// certainly a typo (Redis would silently read it as a class running to the end).
    pub fn new(pattern: &str) -> Result<Glob, String> {
        let bytes = pattern.as_bytes();
        let mut index = 0;
        while index < bytes.len() {
            match bytes[index] {
                b'\\' => index += 2,
                b'[' => {
                    index += 1;
                    loop {
                        match bytes.get(index) {
                            None => return Err(format!("unterminated [ in pattern {pattern:?}")),
                            Some(b'\\') => index += 2,
                            Some(b']') => break,
                            Some(_) => index += 1,
                        }
                    }
                    index += 1;
                }
                _ => index += 1,
            }
        }
        let literal_prefix = bytes
            .iter()
            .position(|byte| matches!(byte, b'*' | b'?' | b'[' | b'\\'))
            .unwrap_or(bytes.len());
        let prefix_star = literal_prefix + 1 == bytes.len() && bytes.last() == Some(&b'*');
        let short_prefix = (literal_prefix <= 8).then(|| {
            let mut word = [0; 8];
            word[..literal_prefix].copy_from_slice(&bytes[..literal_prefix]);
            let mask = u64::MAX.checked_shr(64 - 8 * literal_prefix as u32);
            (u64::from_le_bytes(word), mask.unwrap_or(0))
        });
        Ok(Glob {
            pattern: bytes.into(),
            literal_prefix,
            prefix_star,
            short_prefix,
        })
    }

    /// Whether every key this pattern matches is also matched by `other`, as far as a simple
    /// test can tell: the same pattern, `*`, or a `prefix*` covering this one's literal prefix.
    pub fn covered_by(&self, other: &Glob) -> bool {
        if other.pattern == self.pattern || &*other.pattern == b"*" {
            return true;
        }
        other.prefix_star
            && self.literal_prefix >= other.literal_prefix
            && self
                .pattern
                .starts_with(&other.pattern[..other.literal_prefix])
    }

    /// Inlined for the prefix test, which decides nearly every match; the rest of the
    /// pattern is matched out of line.
    #[inline]
    pub fn matches(&self, text: &[u8]) -> bool {
        let prefix = &self.pattern[..self.literal_prefix];
        let starts = match (self.short_prefix, text.first_chunk::<8>()) {
            (Some((word, mask)), Some(head)) => u64::from_le_bytes(*head) & mask == word,
            _ => text.starts_with(prefix),
        };
        if !starts {
            return false;
        }
        self.prefix_star || matches(&self.pattern[prefix.len()..], &text[prefix.len()..])
    }
}

#[inline(never)]
fn matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: (pattern after it, text position it absorbs up to).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        // The end of the pattern with text left over is a mismatch too.
        match step(pattern, p, text[t]).unwrap_or(Step::Mismatch) {
            Step::Star => {
                star = Some((p + 1, t));
                p += 1;
            }
            Step::Matched(next) => {
                p = next;
                t += 1;
            }
            Step::Mismatch => {
                let Some((after_star, absorbed)) = star else {
                    return false;
                };
                p = after_star;
                t = absorbed + 1;
                star = Some((after_star, absorbed + 1));
            }
        }
    }
    pattern[p..].iter().all(|&byte| byte == b'*')
}

enum Step {
    Star,
    /// The byte matched; the pattern continues at this index.
    Matched(usize),
    Mismatch,
}

/// Matches one text byte against the pattern element at `p`; `None` at the pattern's end.
fn step(pattern: &[u8], p: usize, byte: u8) -> Option<Step> {
    let element = *pattern.get(p)?;
    Some(match element {
        b'*' => Step::Star,
        b'?' => Step::Matched(p + 1),
        b'[' => {
            let (matched, next) = class(pattern, p, byte);
            if matched {
                Step::Matched(next)
            } else {
                Step::Mismatch
            }
        }
        b'\\' if p + 1 < pattern.len() => {
            if pattern[p + 1] == byte {
                Step::Matched(p + 2)
            } else {
                Step::Mismatch
            }
        }
        literal if literal == byte => Step::Matched(p + 1),
        _ => Step::Mismatch,
    })
}

/// Matches `byte` against the class starting at `pattern[open]` (a `[`); returns whether it
/// matched and where the pattern continues.
fn class(pattern: &[u8], open: usize, byte: u8) -> (bool, usize) {
    let mut index = open + 1;
    let negate = pattern.get(index) == Some(&b'^');
    if negate {
        index += 1;
    }
    let mut matched = false;
    loop {
        match pattern.get(index) {
            None => break,
            Some(b']') => {
                index += 1;
                break;
            }
            Some(b'\\') if index + 1 < pattern.len() => {
                matched |= pattern[index + 1] == byte;
                index += 2;
            }
            Some(&low) if index + 2 < pattern.len() && pattern[index + 1] == b'-' => {
                let high = pattern[index + 2];
                let (low, high) = if low <= high {
                    (low, high)
                } else {
                    (high, low)
                };
                matched |= (low..=high).contains(&byte);
                index += 3;
            }
            Some(&literal) => {
                matched |= literal == byte;
                index += 1;
            }
        }
    }
    (matched != negate, index)
}

#[cfg(test)]
mod tests {
    use super::Glob;

    /// Each (pattern, key, whether it matches).
    fn assert_cases(cases: &[(&str, &str, bool)]) {
        for &(pattern, text, expected) in cases {
            let matched = Glob::new(pattern).unwrap().matches(text.as_bytes());
            assert_eq!(matched, expected, "{pattern:?} vs {text:?}");
        }
    }

    #[test]
    fn matches_like_redis() {
        let cases = [
            ("*", "", true),
            ("*", "anything", true),
            ("user:*:profile", "user:1234:profile", true),
            ("user:*:profile", "user:1234:settings", false),
            ("user:*", "user:", true),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[b-a]llo", "hallo", true),
            ("h[a-b]llo", "hcllo", false),
            ("h\\*llo", "h*llo", true),
            ("h\\*llo", "hello", false),
            ("*a*b", "xxaxxbxxb", true),
            ("*a*b", "xxaxxbxxc", false),
            ("a*", "b", false),
            ("**", "x", true),
            ("lock:*", "lock:", true),
            ("[\\]]", "]", true),
        ];
        assert_cases(&cases);
    }

    /// Prefixes of up to eight bytes are compared as words against keys of eight bytes or
    /// more, and byte by byte against shorter keys: both must agree with the pattern.
    #[test]
    fn prefixes_match_whatever_their_length_and_the_key_length() {
        let cases = [
            ("*", "12345678", true),
            ("k*", "key:0001", true),
            ("k*", "Key:0001", false),
            ("key:*", "key:000000001234", true),
            ("key:*", "kez:000000001234", false),
            ("key:*", "key;000000001234", false),
            ("key:*", "key:", true),
            ("key:*", "key", false),
            ("session:*", "session:", true),
            ("session:*", "session:1", true),
            ("session:*", "sessionX1", false),
            ("session:1*", "session:12", true),
            ("session:1*", "session:21", false),
            ("session:1*", "session:1", true),
            ("ab", "ab", true),
            ("ab", "abcdefghij", false),
            ("user:????", "user:1234", true),
            ("user:????", "usEr:1234", false),
            ("user:id:*:x", "user:id:7:x", true),
            ("user:id:*:x", "user:iD:7:x", false),
        ];
        assert_cases(&cases);
    }

    #[test]
    fn hostile_keys_do_not_blow_up() {
        let pattern = Glob::new("*a*a*a*a*a*a*a*a*b").unwrap();
        assert!(!pattern.matches(&[b'a'; 10_000]));
    }

    #[test]
    fn refuses_unterminated_classes() {
        assert!(Glob::new("user:[0-9").is_err());
        assert!(Glob::new("user:\\[").is_ok());
    }

    #[test]
    fn knows_when_one_pattern_covers_another() {
        let covered = |a: &str, b: &str| Glob::new(a).unwrap().covered_by(&Glob::new(b).unwrap());
        assert!(covered("user:*:profile", "*"));
        assert!(covered("user:*:profile", "user:*"));
        assert!(covered("user:1", "user:1"));
        assert!(!covered("user:*", "user:*:profile"));
        assert!(!covered("session:*", "user:*"));
    }
}
