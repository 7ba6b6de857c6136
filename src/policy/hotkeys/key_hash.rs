//! How hot keys hash a key: the stage, and the summaries it is flushed into, find keys by the
//! same hash.

use std::hash::BuildHasher;
use std::sync::LazyLock;

/// The hash the summaries and the stage find a key by. Seeded at random once per process, so
/// that nobody sending keys can pick many that agree in the bits a table places them by:
/// each of those would be compared with all the others on every update.
pub fn key_hash(key: &[u8]) -> u64 {
    static SEEDED: LazyLock<foldhash::quality::RandomState> =
        LazyLock::new(foldhash::quality::RandomState::default);
    SEEDED.hash_one(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys picked to agree in the low bits of an unseeded hash, as anyone sending keys could
    /// pick them, are spread by the seeded one.
    #[test]
    fn keys_picked_to_collide_are_spread() {
        let unseeded = |key: &str| rustc_hash::FxBuildHasher.hash_one(key.as_bytes()) & 1023;
        let picked: Vec<String> = (0u64..)
            .map(|n| format!("user:{n}"))
            .filter(|key| unseeded(key) == 0)
            .take(200)
            .collect();
        let places: std::collections::HashSet<u64> = picked
            .iter()
            .map(|key| key_hash(key.as_bytes()) & 1023)
            .collect();
        assert!(places.len() > 100, "200 keys in {} places", places.len());
    }
}
