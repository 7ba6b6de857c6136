//! Streams of keys drawn from a Zipf distribution, as real key popularity tends to be: the
//! input the hot-key summaries are tested against.

/// A Zipf(s = 1.0) stream over `keys` keys, from a fixed seed.
pub fn zipf_stream(keys: usize, length: usize, mut seed: u64) -> Vec<usize> {
    let mut cumulative = Vec::with_capacity(keys);
    let total: f64 = (1..=keys).map(|rank| 1.0 / rank as f64).sum();
    let mut sum = 0.0;
    for rank in 1..=keys {
        sum += 1.0 / rank as f64 / total;
        cumulative.push(sum);
    }
    (0..length)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let draw = (seed >> 11) as f64 / (1u64 << 53) as f64;
            cumulative.partition_point(|&c| c < draw).min(keys - 1)
        })
        .collect()
}
