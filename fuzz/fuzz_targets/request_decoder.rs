//! Client bytes through the request decoder, command lookup and key extraction, as a session
//! reads them: no input may panic, and every step must make progress or ask for more.
#![no_main]

use keyward::command::CommandTable;
use keyward::resp::request::{Decoded, RequestDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let mut decoder = RequestDecoder::default();
    let mut keys = Vec::new();
    let mut pos = 0;
    while let Ok(decoded) = decoder.decode(&input[pos..]) {
        match decoded {
            Decoded::Request {
                consumed,
                rewritten,
            } => {
                assert!(consumed > 0);
                let source = rewritten.as_deref().unwrap_or(&input[pos..]);
                let args = decoder.args(source);
                keys.clear();
                CommandTable::global()
                    .lookup(&args)
                    .key_positions(&args, &mut keys);
                assert!(keys.iter().all(|&key| key < args.len()));
                pos += consumed;
            }
            Decoded::Empty { consumed } => {
                assert!(consumed > 0);
                pos += consumed;
            }
            Decoded::Incomplete { needed } => {
                assert!(needed > input.len() - pos);
                break;
            }
        }
    }
});
