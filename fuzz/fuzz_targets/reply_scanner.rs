//! Upstream bytes through the reply scanner, whole and split in two: no input may panic, and a
//! split frame must be delimited exactly as the whole one.
#![no_main]

use keyward::resp::frame::{frame_len, FrameScanner};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&cut, input)) = input.split_first() else {
        return;
    };
    let whole = frame_len(input);
    let cut = usize::from(cut).min(input.len());
    let mut scanner = FrameScanner::default();
    if let Ok(None) = scanner.scan(&input[..cut]) {
        if let (Ok(split), Ok(whole)) = (scanner.scan(input), whole) {
            assert_eq!(split, whole);
        }
    }
});
