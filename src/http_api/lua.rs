//! Upstash's Lua dialect. `@upstash/ratelimit` starts its scripts with
//! `#!lua flags=allow-key-locking`, a flag only Upstash's server knows: Redis refuses such a
//! script (`Unexpected flag in script shebang`). keyward drops Upstash's flags from the
//! shebang before Redis sees a script, and remembers the SHA the client computed (over the
//! text it sent) for the SHA Redis stored (over the text Redis got), so that the client's
//! `EVALSHA` finds the script.
//!
//! Only Upstash's own flags are dropped: any other flag Redis does not know is still Redis's
//! to refuse. A SHA keyward does not know is passed on as it is, so Redis answers `NOSCRIPT`
//! exactly as it would (after `SCRIPT FLUSH`, or when keyward restarted since the script was
//! sent: the client then sends the script again, as it would to Redis).

use quick_cache::sync::Cache;
use sha1::{Digest, Sha1};

/// Shebang flags that only Upstash's server takes.
const UPSTASH_ONLY_FLAGS: &[&str] = &["allow-key-locking"];

/// SHAs remembered at most: scripts are few, clients that send endless distinct ones are not
/// let grow memory without bound.
const REMEMBERED: usize = 10_000;

/// The dialect's scripts seen: the client's SHA of each, and the SHA Redis stored it under.
pub struct Scripts {
    stored_sha: Cache<String, String>,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            stored_sha: Cache::new(REMEMBERED),
        }
    }
}

impl Scripts {
    /// Rewrites a command (its name, then its arguments) where it uses the dialect: a script
    /// sent (`EVAL`, `EVAL_RO`, `SCRIPT LOAD`) loses Upstash's flags, and a SHA of such a
    /// script (`EVALSHA`, `EVALSHA_RO`, `SCRIPT EXISTS`) becomes the one Redis knows.
    pub fn translate(&self, words: &mut [Vec<u8>]) {
        let Some((name, arguments)) = words.split_first_mut() else {
            return;
        };
        match name.to_ascii_lowercase().as_slice() {
            b"eval" | b"eval_ro" => self.rewrite_script(arguments.first_mut()),
            b"evalsha" | b"evalsha_ro" => self.translate_shas(arguments.iter_mut().take(1)),
            b"script" => match subcommand(arguments) {
                Some((load, rest)) if load == b"load" => self.rewrite_script(rest.first_mut()),
                Some((exists, rest)) if exists == b"exists" => self.translate_shas(rest.iter_mut()),
                _ => {}
            },
            _ => {}
        }
    }

    fn rewrite_script(&self, script: Option<&mut Vec<u8>>) {
        let Some(script) = script else { return };
        let Some(rewritten) = without_upstash_flags(script) else {
            return;
        };
        self.stored_sha
            .insert(sha1_hex(script), sha1_hex(&rewritten));
        *script = rewritten;
    }

    fn translate_shas<'a>(&self, shas: impl Iterator<Item = &'a mut Vec<u8>>) {
        for sha in shas {
            // Redis takes a SHA in either case.
            let client_sha = String::from_utf8_lossy(sha).to_ascii_lowercase();
            if let Some(stored) = self.stored_sha.get(&client_sha) {
                *sha = stored.into_bytes();
            }
        }
    }
}

/// A command's subcommand, lowercase, and the arguments after it.
fn subcommand(arguments: &mut [Vec<u8>]) -> Option<(Vec<u8>, &mut [Vec<u8>])> {
    let (first, rest) = arguments.split_first_mut()?;
    Some((first.to_ascii_lowercase(), rest))
}

/// The script without Upstash's flags in its shebang line; `None` when it has none of them.
/// The rest of the script is left as it is, byte for byte.
fn without_upstash_flags(script: &[u8]) -> Option<Vec<u8>> {
    if !script.starts_with(b"#!") {
        return None;
    }
    let line_end = memchr::memchr(b'\n', script).unwrap_or(script.len());
    let line = std::str::from_utf8(&script[..line_end]).ok()?;
    let mut dropped = false;
    let parts: Vec<String> = line
        .split(' ')
        .filter(|part| !part.is_empty())
        .filter_map(|part| {
            let Some(flags) = part.strip_prefix("flags=") else {
                return Some(part.to_string());
            };
            let kept: Vec<&str> = flags
                .split(',')
                .filter(|flag| {
                    let upstash_only = UPSTASH_ONLY_FLAGS.contains(flag);
                    dropped |= upstash_only;
                    !upstash_only
                })
                .collect();
            (!kept.is_empty()).then(|| format!("flags={}", kept.join(",")))
        })
        .collect();
    if !dropped {
        return None;
    }
    let mut rewritten = parts.join(" ").into_bytes();
    rewritten.extend_from_slice(&script[line_end..]);
    Some(rewritten)
}

/// A script's SHA as Redis names it: SHA-1 in lowercase hex.
fn sha1_hex(script: &[u8]) -> String {
    Sha1::digest(script)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(script: &str) -> Option<String> {
        without_upstash_flags(script.as_bytes()).map(|bytes| String::from_utf8(bytes).unwrap())
    }

    #[test]
    fn drops_only_upstash_flags_from_the_shebang() {
        assert_eq!(
            rewritten("#!lua flags=allow-key-locking\n  return 1\n").as_deref(),
            Some("#!lua\n  return 1\n")
        );
        assert_eq!(
            rewritten("#!lua  flags=no-writes,allow-key-locking,allow-stale\nreturn 1").as_deref(),
            Some("#!lua flags=no-writes,allow-stale\nreturn 1")
        );
        assert_eq!(rewritten("#!lua flags=no-writes\nreturn 1"), None);
        assert_eq!(
            rewritten("#!lua flags=made-up\nreturn 1"),
            None,
            "Redis's to refuse"
        );
        assert_eq!(rewritten("return 1 -- flags=allow-key-locking"), None);
        assert_eq!(
            rewritten("#!lua flags=allow-key-locking").as_deref(),
            Some("#!lua")
        );
    }

    #[test]
    fn the_clients_sha_finds_the_stored_script() {
        let scripts = Scripts::default();
        let original = "#!lua flags=allow-key-locking\nreturn ARGV[1]";
        let words = |list: &[&str]| -> Vec<Vec<u8>> {
            list.iter().map(|word| word.as_bytes().to_vec()).collect()
        };
        let mut eval = words(&["EVAL", original, "0", "x"]);
        scripts.translate(&mut eval);
        assert_eq!(eval, words(&["EVAL", "#!lua\nreturn ARGV[1]", "0", "x"]));
        let client_sha = sha1_hex(original.as_bytes());
        let stored_sha = sha1_hex(b"#!lua\nreturn ARGV[1]");
        let mut evalsha = words(&["evalsha", &client_sha.to_uppercase(), "0", "y"]);
        scripts.translate(&mut evalsha);
        assert_eq!(evalsha, words(&["evalsha", &stored_sha, "0", "y"]));
        let unknown = "0123456789012345678901234567890123456789";
        let mut exists = words(&["SCRIPT", "EXISTS", &client_sha, unknown]);
        scripts.translate(&mut exists);
        assert_eq!(exists, words(&["SCRIPT", "EXISTS", &stored_sha, unknown]));
        let mut load = words(&["script", "load", "#!lua flags=allow-key-locking\nreturn 2"]);
        scripts.translate(&mut load);
        assert_eq!(load, words(&["script", "load", "#!lua\nreturn 2"]));
        let mut plain = words(&["EVAL", "return 1", "0"]);
        scripts.translate(&mut plain);
        assert_eq!(plain, words(&["EVAL", "return 1", "0"]));
    }
}
