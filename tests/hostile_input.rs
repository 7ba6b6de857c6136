//! Property tests of the code that reads bytes from the network: whatever arrives, decoding
//! never panics, always makes progress or asks for more, and valid input is read exactly, in
//! one piece or split anywhere.

use keyward::command::CommandTable;
use keyward::resp::frame::{frame_len, FrameScanner};
use keyward::resp::request::{Decoded, RequestDecoder};
use proptest::prelude::*;

fn encode(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Decodes a whole buffer the way a session does; returns the requests or the first error.
fn decode_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, String> {
    let mut decoder = RequestDecoder::default();
    let mut requests = Vec::new();
    let mut pos = 0;
    loop {
        match decoder.decode(&input[pos..]).map_err(|e| e.message())? {
            Decoded::Request {
                consumed,
                rewritten,
            } => {
                assert!(consumed > 0, "no progress");
                let source = rewritten.as_deref().unwrap_or(&input[pos..]);
                let args = decoder.args(source);
                let info = CommandTable::global().lookup(&args);
                let mut keys = Vec::new();
                info.key_positions(&args, &mut keys);
                assert!(
                    keys.iter().all(|&k| k < args.len()),
                    "a key outside the arguments"
                );
                requests.push(args.iter().map(<[u8]>::to_vec).collect());
                pos += consumed;
            }
            Decoded::Empty { consumed } => {
                assert!(consumed > 0, "no progress");
                pos += consumed;
            }
            Decoded::Incomplete { needed } => {
                assert!(needed > input.len() - pos, "asked for bytes it has");
                return Ok(requests);
            }
        }
    }
}

/// Bytes that look like RESP often enough to reach deep into the decoders.
fn resp_like() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            Just(b'*'),
            Just(b'$'),
            Just(b'\r'),
            Just(b'\n'),
            Just(b'-'),
            Just(b':'),
            Just(b'+'),
            Just(b'%'),
            Just(b'>'),
            Just(b'|'),
            Just(b'"'),
            Just(b'\''),
            Just(b'\\'),
            Just(b' '),
            b'0'..=b'9',
            any::<u8>(),
        ],
        0..512,
    )
}

fn command_args() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let name = prop_oneof![
        Just(b"GET".to_vec()),
        Just(b"SET".to_vec()),
        Just(b"MGET".to_vec()),
        Just(b"EVAL".to_vec()),
        Just(b"XREAD".to_vec()),
        Just(b"SORT".to_vec()),
        Just(b"MIGRATE".to_vec()),
        Just(b"ZUNIONSTORE".to_vec()),
        Just(b"CLIENT".to_vec()),
        prop::collection::vec(any::<u8>(), 0..12),
    ];
    (
        name,
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..8),
    )
        .prop_map(|(name, mut rest)| {
            rest.insert(0, name);
            rest
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn random_bytes_never_panic_the_request_decoder(input in resp_like()) {
        let _ = decode_all(&input);
    }

    #[test]
    fn random_bytes_never_panic_the_reply_scanner(input in resp_like()) {
        let _ = frame_len(&input);
        let mut scanner = FrameScanner::default();
        for cut in [input.len() / 3, input.len() / 2, input.len()] {
            if scanner.scan(&input[..cut]).is_err() {
                break;
            }
        }
    }

    #[test]
    fn valid_requests_are_read_exactly_however_they_are_split(
        requests in prop::collection::vec(command_args(), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
    ) {
        let input: Vec<u8> = requests.iter().flat_map(|args| encode(args)).collect();
        prop_assert_eq!(&decode_all(&input).unwrap(), &requests);
        // Feed it in pieces, as reads would deliver it, resuming each time.
        let mut boundaries: Vec<usize> = cuts.iter().map(|cut| cut.index(input.len() + 1)).collect();
        boundaries.push(input.len());
        boundaries.sort_unstable();
        let mut decoder = RequestDecoder::default();
        let (mut start, mut decoded) = (0, Vec::new());
        for end in boundaries {
            loop {
                match decoder.decode(&input[start..end]).unwrap() {
                    Decoded::Request { consumed, .. } => {
                        decoded.push(decoder.args(&input[start..end]).iter().map(<[u8]>::to_vec).collect::<Vec<_>>());
                        start += consumed;
                    }
                    Decoded::Empty { consumed } => start += consumed,
                    Decoded::Incomplete { .. } => break,
                }
            }
        }
        prop_assert_eq!(decoded, requests);
    }

    #[test]
    fn valid_replies_are_delimited_exactly_however_they_are_split(
        values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..30), 1..10),
        cut in any::<prop::sample::Index>(),
    ) {
        // An array of bulk strings, a map, and a push: the shapes replies take.
        let mut frame = format!("*{}\r\n", values.len()).into_bytes();
        for value in &values {
            frame.extend_from_slice(format!("${}\r\n", value.len()).as_bytes());
            frame.extend_from_slice(value);
            frame.extend_from_slice(b"\r\n");
        }
        frame.extend_from_slice(b"%1\r\n+k\r\n>2\r\n:1\r\n_\r\n");
        let first_len = frame.len() - b"%1\r\n+k\r\n>2\r\n:1\r\n_\r\n".len();
        prop_assert_eq!(frame_len(&frame), Ok(Some(first_len)));
        let mut scanner = FrameScanner::default();
        let cut = cut.index(first_len);
        prop_assert_eq!(scanner.scan(&frame[..cut]), Ok(None));
        prop_assert_eq!(scanner.scan(&frame), Ok(Some(first_len)));
    }
}
