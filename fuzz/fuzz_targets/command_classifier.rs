//! Arbitrary commands through everything that reads a command's arguments: the command table,
//! key extraction, the cache's and the lock queue's readers, pattern folding and the hot-key
//! recorder. The input is split at zero bytes into arguments, so the fuzzer explores names
//! and arguments rather than RESP framing (which `request_decoder` covers).
#![no_main]

use bytes::BytesMut;
use keyward::command::{cacheable, CommandTable};
use keyward::policy::hotkeys::fold::fold;
use keyward::policy::hotkeys::record::Recorder;
use keyward::policy::lock::attempt;
use keyward::resp::request::{encode_command, Decoded, RequestDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let words: Vec<&[u8]> = input.split(|&byte| byte == 0).take(64).collect();
    let mut request = BytesMut::new();
    encode_command(&words, &mut request);
    let mut decoder = RequestDecoder::default();
    let Ok(Decoded::Request {
        consumed,
        rewritten,
    }) = decoder.decode(&request)
    else {
        panic!("a well-formed request was not decoded whole");
    };
    assert_eq!(consumed, request.len());
    let source = rewritten.as_deref().unwrap_or(&request);
    let args = decoder.args(source);
    assert!(args.iter().eq(words.iter().copied()));
    let info = CommandTable::global().lookup(&args);
    let mut keys = Vec::new();
    info.key_positions(&args, &mut keys);
    assert!(keys.iter().all(|&key| key < args.len()));
    let _ = cacheable::request_kind(info, &args);
    if let Some(set) = attempt::set_nx(&args) {
        assert!(words.iter().any(|word| *word == set.key));
    }
    let mut pattern = Vec::new();
    for &key in &keys {
        fold(args.get(key).unwrap_or_default(), &mut pattern);
    }
    let mut recorder = Recorder::default();
    if let Some(pending) = recorder.start(info, &args, &keys, consumed) {
        recorder.finish(pending, input);
    }
});
