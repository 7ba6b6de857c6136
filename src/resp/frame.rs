//! Delimiting reply frames from Redis without decoding them.
//!
//! keyward forwards Redis's replies byte for byte, so all it needs is where each frame ends.
//! Nested aggregates are walked with a single counter of values still owed rather than
//! recursion, so no reply shape can exhaust the stack.

use bytes::Bytes;

use super::{parse_int, plain_length};

/// Why a byte stream is not valid RESP2/RESP3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(pub String);

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FrameError {}

/// The length of the first complete frame in `buf`, `Ok(None)` if more bytes are needed.
///
/// A RESP3 attribute (`|`) is delimited together with the value it annotates, because a client
/// reads the two as one reply.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    FrameScanner::default().scan(buf)
}

/// The complete frames at the start of `buf`, one after another (stopping at an incomplete or
/// malformed one).
pub fn frames(mut buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let len = complete_len(buf)?;
        let (frame, rest) = buf.split_at(len);
        buf = rest;
        Some(frame)
    })
}

/// `count` replies of one frame each, split off one at a time: by `lengths` when they are the
/// lengths of them all (as a connection measures them), else by walking each frame. The last
/// is whatever is left; a frame that cannot be walked splits off empty.
pub fn replies<'a>(
    mut rest: &'a [u8],
    lengths: &'a [u32],
    count: usize,
) -> impl Iterator<Item = &'a [u8]> {
    let measured = lengths.len() == count;
    (0..count).map(move |nth| {
        let len = if nth + 1 == count {
            rest.len()
        } else if measured {
            lengths[nth] as usize
        } else {
            complete_len(rest).unwrap_or(0)
        };
        let (reply, after) = rest.split_at(len.min(rest.len()));
        rest = after;
        reply
    })
}

/// The length of the complete frame at the start of `buf`; `None` if it is incomplete or
/// malformed.
pub fn complete_len(buf: &[u8]) -> Option<usize> {
    frame_len(buf).ok().flatten()
}

/// The elements of `reply` if it is an array of exactly `expected` elements (as an `MGET`
/// reply is, one per key).
pub fn array_elements(reply: &[u8], expected: usize) -> Option<impl Iterator<Item = &[u8]>> {
    Some(frames(array_body(reply, expected)?).take(expected))
}

/// What follows the header of `reply` if it is an array of `expected` elements.
pub fn array_body(reply: &[u8], expected: usize) -> Option<&[u8]> {
    let count = reply.strip_prefix(b"*")?;
    let rest = count.strip_prefix(itoa::Buffer::new().format(expected).as_bytes())?;
    rest.strip_prefix(b"\r\n")
}

/// Delimits one frame across partial reads without walking again what it already walked, so
/// that a reply of millions of elements arriving in many reads costs linear time.
///
/// Between calls, the frame must stay at the start of the buffer (more bytes appended).
#[derive(Debug, Clone, Copy)]
pub struct FrameScanner {
    /// Where the next value header starts.
    pos: usize,
    /// Values still owed before the frame is complete.
    owed: u64,
}

impl Default for FrameScanner {
    fn default() -> Self {
        FrameScanner { pos: 0, owed: 1 }
    }
}

impl FrameScanner {
    /// The frame's length once complete (the scanner is then reset for the next frame).
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        if self.pos == 0 && self.owed == 1 {
            if let Some(len) = simple_frame_len(buf) {
                return Ok(Some(len));
            }
        }
        let scanned = self.walk(buf);
        if !matches!(scanned, Ok(None)) {
            *self = FrameScanner::default();
        }
        scanned
    }

    fn walk(&mut self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        while self.owed > 0 {
            let start = self.pos;
            let Some(&kind) = buf.get(start) else {
                return Ok(None);
            };
            let counted = matches!(kind, b'$' | b'!' | b'=' | b'*' | b'~' | b'>' | b'%' | b'|');
            let (line_end, len) = match counted.then(|| plain_length(buf, start + 1)).flatten() {
                Some(read) => read,
                None => {
                    let Some(line_end) = find_crlf(buf, start + 1) else {
                        return Ok(None);
                    };
                    let header = &buf[start + 1..line_end];
                    (line_end, if counted { length(header, kind)? } else { 0 })
                }
            };
            let mut next = line_end + 2;
            let mut owed = self.owed - 1;
            match kind {
                b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {}
                b'$' | b'!' | b'=' => {
                    if len >= 0 {
                        next = (len as usize)
                            .checked_add(next + 2)
                            .ok_or_else(|| too_large(kind))?;
                        if buf.len() < next {
                            return Ok(None);
                        }
                    }
                }
                b'*' | b'~' | b'>' => owed = owing(owed, len, 1, 0, kind)?,
                b'%' => owed = owing(owed, len, 2, 0, kind)?,
                b'|' => owed = owing(owed, len, 2, 1, kind)?,
                other => {
                    return Err(FrameError(format!(
                        "unexpected byte {:?} at the start of a reply",
                        char::from(other)
                    )));
                }
            }
            self.pos = next;
            self.owed = owed;
        }
        Ok(Some(self.pos))
    }
}

/// The length of a complete bulk string, status or integer at the start of `buf`: most replies
/// are one of these, and are delimited here without the general walk's bookkeeping. `None` for
/// anything else, or for one not complete yet, which the walk then reads.
#[inline]
fn simple_frame_len(buf: &[u8]) -> Option<usize> {
    match *buf.first()? {
        b'$' => {
            let (line_end, len) = plain_length(buf, 1)?;
            let end = usize::try_from(len).ok()?.checked_add(line_end + 4)?;
            (end <= buf.len()).then_some(end)
        }
        b'+' | b':' => find_crlf(buf, 1).map(|line_end| line_end + 2),
        _ => None,
    }
}

/// Whether a complete frame is a RESP3 push (out-of-band data such as a pub/sub message or a
/// tracking invalidation) rather than the reply to a command.
pub fn is_push(frame: &[u8]) -> bool {
    frame.first() == Some(&b'>')
}

/// Whether a reply is a nil (RESP2 null bulk or array, RESP3 null).
pub fn is_nil(frame: &[u8]) -> bool {
    frame.starts_with(b"$-1\r\n") || frame.starts_with(b"*-1\r\n") || frame.starts_with(b"_\r\n")
}

/// The value of an integer reply.
pub fn integer(frame: &[u8]) -> Option<i64> {
    let line = frame.strip_prefix(b":")?;
    parse_int(&line[..find_crlf(line, 0)?])
}

/// The value of a bulk string reply (`None` for a nil, an error or any other type).
pub fn bulk(frame: &Bytes) -> Option<Bytes> {
    let header_end = find_crlf(frame, 0)?;
    let len = usize::try_from(parse_int(frame.get(1..header_end)?)?).ok()?;
    let start = header_end + 2;
    (frame.first() == Some(&b'$') && frame.len() >= start + len)
        .then(|| frame.slice(start..start + len))
}

/// Where the next CRLF starts. Most lines searched are headers a few bytes long (`$64`, `*2`),
/// for which a plain loop beats setting up a vectorised search; longer lines get `memchr`.
pub(crate) fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    const SHORT_LINE: usize = 16;
    let mut start = from;
    loop {
        let rest = buf.get(start..)?;
        let found = start
            + match rest.iter().take(SHORT_LINE).position(|&b| b == b'\r') {
                Some(at) => at,
                None if rest.len() <= SHORT_LINE => return None,
                None => SHORT_LINE + memchr::memchr(b'\r', &rest[SHORT_LINE..])?,
            };
        match buf.get(found + 1) {
            Some(b'\n') => return Some(found),
            Some(_) => start = found + 1,
            None => return None,
        }
    }
}

/// `owed` plus the values an aggregate header announces (`per_entry` per entry, plus `extra`).
///
/// A header can announce up to `i64::MAX` entries, so a few nested ones could overflow the
/// counter; no real reply comes near that, so it is refused as malformed.
fn owing(owed: u64, len: i64, per_entry: u64, extra: u64, kind: u8) -> Result<u64, FrameError> {
    (len.max(0) as u64)
        .checked_mul(per_entry)
        .and_then(|values| values.checked_add(extra))
        .and_then(|values| values.checked_add(owed))
        .ok_or_else(|| too_large(kind))
}

fn too_large(kind: u8) -> FrameError {
    FrameError(format!(
        "a {:?} reply announces more data than can exist",
        char::from(kind)
    ))
}

fn length(header: &[u8], kind: u8) -> Result<i64, FrameError> {
    match parse_int(header) {
        Some(len) if len >= -1 => Ok(len),
        _ => Err(FrameError(format!(
            "invalid length {:?} in a {:?} reply",
            String::from_utf8_lossy(header),
            char::from(kind)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_frames_and_array_elements() {
        let run = b"+OK\r\n$2\r\nhi\r\n:1";
        assert_eq!(
            frames(run).collect::<Vec<_>>(),
            [&b"+OK\r\n"[..], b"$2\r\nhi\r\n"]
        );
        let mget = b"*2\r\n$-1\r\n$3\r\nabc\r\n";
        let elements: Vec<&[u8]> = array_elements(mget, 2).unwrap().collect();
        assert_eq!(elements, [&b"$-1\r\n"[..], b"$3\r\nabc\r\n"]);
        assert!(array_elements(mget, 3).is_none());
        assert!(array_elements(b"+OK\r\n", 1).is_none());
    }

    #[test]
    fn reads_nils_integers_and_bulk_strings() {
        assert!(is_nil(b"$-1\r\n") && is_nil(b"*-1\r\n") && is_nil(b"_\r\n"));
        assert!(!is_nil(b"$0\r\n\r\n") && !is_nil(b"+OK\r\n"));
        assert_eq!(integer(b":-2\r\n"), Some(-2));
        assert_eq!(integer(b":1500\r\n"), Some(1500));
        assert_eq!(integer(b"+1\r\n"), None);
        assert_eq!(integer(b":1x\r\n"), None);
        let token = Bytes::from_static(b"$5\r\ntoken\r\n");
        assert_eq!(bulk(&token).as_deref(), Some(&b"token"[..]));
        assert_eq!(bulk(&Bytes::from_static(b"$-1\r\n")), None);
        assert_eq!(bulk(&Bytes::from_static(b"$9\r\nshort\r\n")), None);
        assert_eq!(bulk(&Bytes::from_static(b":5\r\n")), None);
    }

    fn complete(frame: &[u8]) {
        assert_eq!(frame_len(frame), Ok(Some(frame.len())), "{frame:?}");
        for cut in 0..frame.len() {
            assert_eq!(frame_len(&frame[..cut]), Ok(None), "{frame:?} cut at {cut}");
        }
    }

    #[test]
    fn delimits_every_reply_type() {
        complete(b"+OK\r\n");
        complete(b"-ERR no\r\n");
        complete(b":42\r\n");
        complete(b"$5\r\nhe\r\no\r\n");
        complete(b"$-1\r\n");
        complete(b"*-1\r\n");
        complete(b"*2\r\n$1\r\na\r\n:1\r\n");
        complete(b"%1\r\n+k\r\n*1\r\n_\r\n");
        complete(b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n");
        complete(b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n");
        complete(b"=8\r\ntxt:abcd\r\n");
        complete(b",1.5\r\n#t\r\n(1\r\n_\r\n"[..6].as_ref());
    }

    #[test]
    fn resumes_where_it_stopped() {
        let frame = b"*3\r\n$3\r\nabc\r\n:1\r\n*1\r\n+x\r\n";
        let mut scanner = FrameScanner::default();
        for cut in 0..frame.len() {
            assert_eq!(scanner.scan(&frame[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(scanner.scan(frame), Ok(Some(frame.len())));
        assert_eq!(
            scanner.scan(b"+OK\r\n"),
            Ok(Some(5)),
            "reset for the next frame"
        );
    }

    #[test]
    fn finds_crlf_in_short_and_long_lines() {
        for at in [0, 1, 15, 16, 17, 40] {
            let mut line = vec![b'x'; at];
            line.extend_from_slice(b"\r\nrest\r\n");
            assert_eq!(find_crlf(&line, 0), Some(at), "at {at}");
        }
        let bare = b"\r\r\rxxxxxxxxxxxxxxxxxxxx\rx\r\n";
        assert_eq!(find_crlf(bare, 0), Some(bare.len() - 2));
        assert_eq!(find_crlf(b"abc\r", 0), None);
        assert_eq!(find_crlf(&[b'\r'; 100], 0), None);
        assert_eq!(find_crlf(b"ab\r\n", 3), None);
        assert_eq!(find_crlf(b"ab", 5), None);
    }

    #[test]
    fn refuses_lengths_the_one_pass_reader_leaves_to_the_full_check() {
        assert_eq!(frame_len(b"$01\r\nx\r\n").map_err(|_| ()), Err(()));
        assert_eq!(
            frame_len(b"*99999999999999999999\r\n").map_err(|_| ()),
            Err(())
        );
    }

    #[test]
    fn stops_after_the_first_frame() {
        assert_eq!(frame_len(b"+OK\r\n:1\r\n"), Ok(Some(5)));
    }

    #[test]
    fn deep_nesting_needs_no_stack() {
        let mut frame = b"*1\r\n".repeat(1_000_000);
        frame.extend_from_slice(b":1\r\n");
        assert_eq!(frame_len(&frame), Ok(Some(frame.len())));
    }

    #[test]
    fn rejects_garbage() {
        assert!(frame_len(b"hello\r\n").is_err());
        assert!(frame_len(b"$-5\r\n").is_err());
        assert!(frame_len(b"*x\r\n").is_err());
    }

    #[test]
    fn rejects_lengths_no_reply_can_have() {
        let huge = format!("%{}\r\n", i64::MAX);
        assert!(frame_len(format!("{huge}{huge}").as_bytes()).is_err());
        assert!(frame_len(format!("|{}\r\n{huge}", i64::MAX).as_bytes()).is_err());
        let mut scanner = FrameScanner::default();
        assert!(scanner
            .scan(format!("*2\r\n{huge}{huge}").as_bytes())
            .is_err());
        assert_eq!(
            scanner.scan(b"+OK\r\n"),
            Ok(Some(5)),
            "reset after an error"
        );
    }
}
