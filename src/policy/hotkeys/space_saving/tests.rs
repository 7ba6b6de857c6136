use super::*;
use crate::policy::hotkeys::zipf::zipf_stream;
use rustc_hash::FxHashMap;

/// These tests place keys by an unseeded hash, so that which keys share a filter cell is
/// the same in every run; the summaries take whatever hash they are given.
fn key_hash(key: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(key)
}

fn observe_one(summary: &mut SpaceSaving, key: &[u8], write: bool) {
    let tally = Tally {
        count: 1,
        writes: u64::from(write),
        ..Tally::default()
    };
    summary.observe(key, key_hash(key), tally);
}

/// Checks every guarantee of `summary` against the exact counts of what it saw.
fn assert_within_bound(summary: &SpaceSaving, exact: &FxHashMap<Vec<u8>, u64>) {
    let bound = summary.bound();
    let mut held = 0;
    for counted in summary.counters() {
        let truth = exact.get(counted.key).copied().unwrap_or(0);
        let Tally { count, error, .. } = counted.tally;
        assert!(
            count >= truth && count - error <= truth,
            "{counted:?} vs {truth}"
        );
        assert!(error <= bound, "error {error} over the bound {bound}");
        held += 1;
    }
    for (key, &truth) in exact {
        if summary.counters().all(|counted| counted.key != &key[..]) {
            assert!(truth <= bound, "a key not held had {truth} > {bound}");
        }
    }
    assert!(held > 0);
}

fn top(summary: &SpaceSaving, n: usize) -> Vec<Vec<u8>> {
    let mut counted: Vec<Counted> = summary.counters().collect();
    counted.sort_by_key(|c| std::cmp::Reverse(c.tally.count));
    counted[..n].iter().map(|c| c.key.to_vec()).collect()
}

fn true_top(exact: &FxHashMap<Vec<u8>, u64>, n: usize) -> Vec<Vec<u8>> {
    let mut all: Vec<(&Vec<u8>, &u64)> = exact.iter().collect();
    all.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    all[..n].iter().map(|(key, _)| key.to_vec()).collect()
}

#[test]
fn finds_the_true_top_20_of_a_zipf_stream_within_its_bound() {
    let stream = zipf_stream(1_000_000, 2_000_000, 0x5eed_1234_abcd_ef01);
    let mut exact: FxHashMap<Vec<u8>, u64> = FxHashMap::default();
    let mut summary = SpaceSaving::new(1024);
    for &key in &stream {
        let key = format!("key:{key}").into_bytes();
        observe_one(&mut summary, &key, false);
        *exact.entry(key).or_default() += 1;
    }
    let wanted = true_top(&exact, 20);
    let reported = top(&summary, 20);
    let found = wanted.iter().filter(|key| reported.contains(key)).count();
    assert!(found >= 19, "only {found} of the true top 20 reported");
    assert!(summary.bound() <= summary.total() / 1024);
    assert_within_bound(&summary, &exact);
}

#[test]
fn a_window_absorbed_from_periods_keeps_its_bound() {
    let stream = zipf_stream(1_000_000, 1_200_000, 0x0bad_cafe_f00d_0001);
    let mut exact: FxHashMap<Vec<u8>, u64> = FxHashMap::default();
    let mut window = SpaceSaving::new(1024);
    for period in stream.chunks(200_000) {
        let mut summary = SpaceSaving::new(1024);
        for &key in period {
            let key = format!("key:{key}").into_bytes();
            observe_one(&mut summary, &key, false);
            *exact.entry(key).or_default() += 1;
        }
        window.absorb(&summary);
    }
    assert_eq!(window.total(), 1_200_000);
    assert!(window.bound() <= 3 * window.total() / 1024);
    assert_within_bound(&window, &exact);
    let wanted = true_top(&exact, 20);
    let reported = top(&window, 20);
    let found = wanted.iter().filter(|key| reported.contains(key)).count();
    assert!(found >= 19, "only {found} of the true top 20 reported");
}

/// Periods whose keys each left up to a share of their weight unobserved (as the stage's
/// sketch keeps the commands of light keys) still give upper bounds within the stated bound,
/// in each period and in the window absorbed from them.
#[test]
fn weight_counted_unstaged_keeps_counts_within_the_bound() {
    let stream = zipf_stream(1_000_000, 1_200_000, 0x0bad_cafe_f00d_0002);
    let mut exact: FxHashMap<Vec<u8>, u64> = FxHashMap::default();
    let mut window = SpaceSaving::new(1024);
    for period in stream.chunks(200_000) {
        let share = period.len() as u64 / 2048;
        let mut summary = SpaceSaving::new(1024);
        let mut kept: FxHashMap<Vec<u8>, u64> = FxHashMap::default();
        let mut unstaged = 0;
        let mut period_exact: FxHashMap<Vec<u8>, u64> = FxHashMap::default();
        for &key in period {
            let key = format!("key:{key}").into_bytes();
            *exact.entry(key.clone()).or_default() += 1;
            *period_exact.entry(key.clone()).or_default() += 1;
            let kept = kept.entry(key.clone()).or_default();
            if *kept < share {
                *kept += 1;
                unstaged += 1;
            } else {
                observe_one(&mut summary, &key, false);
            }
        }
        summary.count_unstaged(unstaged, share);
        assert_eq!(summary.total(), period.len() as u64);
        assert!(summary.bound() <= summary.total() * 3 / 2 / 1024);
        assert_within_bound(&summary, &period_exact);
        window.absorb(&summary);
    }
    assert_eq!(window.total(), 1_200_000);
    assert!(window.bound() <= window.total() * 9 / 2 / 1024);
    assert_within_bound(&window, &exact);
}

/// A window filled from one full period holds its counters and takes its bound, not twice it:
/// the smallest count it copied already bounds the keys the period lost.
#[test]
fn a_window_filled_from_one_period_keeps_the_periods_bound() {
    let mut period = SpaceSaving::new(64);
    for &key in &zipf_stream(10_000, 50_000, 0x0f11_ed00_0000_0001) {
        observe_one(&mut period, format!("key:{key}").as_bytes(), false);
    }
    period.count_unstaged(1_000, 7);
    let mut window = SpaceSaving::new(64);
    window.absorb(&period);
    assert!(period.bound() > 7);
    assert_eq!(window.bound(), period.bound());
    let mut smaller = SpaceSaving::new(32);
    smaller.absorb(&period);
    assert!(
        smaller.bound() >= 2 * period.bound(),
        "takeovers: the credit stays"
    );
}

#[test]
fn keeps_exact_counts_and_parts_while_under_capacity() {
    let mut summary = SpaceSaving::new(4);
    for (key, times) in [("a", 5), ("b", 3), ("c", 1)] {
        for _ in 0..times {
            observe_one(&mut summary, key.as_bytes(), key == "b");
        }
    }
    let b = Tally {
        count: 4,
        outbound: 4,
        ..Tally::default()
    };
    summary.observe(b"b", key_hash(b"b"), b);
    let mut counted: Vec<Counted> = summary.counters().collect();
    counted.sort_by_key(|c| std::cmp::Reverse(c.tally.count));
    assert_eq!((counted[0].key, counted[0].tally.count), (&b"b"[..], 7));
    assert_eq!(
        counted[0].tally,
        Tally {
            count: 7,
            error: 0,
            writes: 3,
            outbound: 4
        }
    );
    assert_eq!(summary.bound(), 0);
}

#[test]
fn a_slot_fills_one_cache_line() {
    assert_eq!(std::mem::size_of::<Slot>(), 64);
}

#[test]
fn a_new_key_takes_over_the_smallest_counter_once_its_cell_outweighs_it() {
    let mut summary = SpaceSaving::new(2);
    let held = |summary: &SpaceSaving| -> Vec<(Vec<u8>, Tally)> {
        let mut counted: Vec<(Vec<u8>, Tally)> = summary
            .counters()
            .map(|c| (c.key.to_vec(), c.tally))
            .collect();
        counted.sort_by(|a, b| a.0.cmp(&b.0));
        counted
    };
    for key in ["a", "a", "b", "c"] {
        observe_one(&mut summary, key.as_bytes(), false);
    }
    let keys: Vec<Vec<u8>> = held(&summary).into_iter().map(|(key, _)| key).collect();
    assert_eq!(
        keys,
        [b"a".to_vec(), b"b".to_vec()],
        "c only reached its cell"
    );
    assert_eq!(summary.bound(), 1);
    observe_one(&mut summary, b"c", false);
    let counted = held(&summary);
    assert_eq!(counted[0].0, b"a");
    assert_eq!(counted[1].0, b"c");
    assert_eq!((counted[1].1.count, counted[1].1.error), (2, 1));
    assert_eq!(summary.bound(), 2);
    // b's count stayed in its cell: seen again, it does not outweigh the smallest counter.
    observe_one(&mut summary, b"b", false);
    assert_eq!(held(&summary), counted);
}

#[test]
fn observing_after_absorbing_keeps_the_bound() {
    let stream = zipf_stream(10_000, 60_000, 0xabad_1dea_0000_0001);
    let mut exact: FxHashMap<Vec<u8>, u64> = FxHashMap::default();
    let mut period = SpaceSaving::new(64);
    let mut summary = SpaceSaving::new(64);
    let (first, second) = stream.split_at(30_000);
    for &key in first {
        let key = format!("key:{key}").into_bytes();
        observe_one(&mut period, &key, false);
        *exact.entry(key).or_default() += 1;
    }
    // Filled, with takeovers, before it has a filter; then observed.
    summary.absorb(&period);
    for &key in second {
        let key = format!("key:{key}").into_bytes();
        observe_one(&mut summary, &key, false);
        *exact.entry(key).or_default() += 1;
    }
    assert_within_bound(&summary, &exact);
}

#[test]
fn an_even_stream_wider_than_the_summary_keeps_its_bound() {
    let mut exact: FxHashMap<Vec<u8>, u64> = FxHashMap::default();
    let mut summary = SpaceSaving::new(64);
    let mut seed = 0x1234_5678_9abc_def1_u64;
    for _ in 0..100_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let key = format!("key:{}", seed % 1000).into_bytes();
        observe_one(&mut summary, &key, false);
        *exact.entry(key).or_default() += 1;
    }
    assert!(summary.bound() <= summary.total() / 64);
    assert_within_bound(&summary, &exact);
}
