//! Decoding client requests: multibulk (what every client library sends) and inline commands
//! (what people type into `nc` or `telnet`).
//!
//! A request is not copied: the decoder records where each argument lies in the read buffer,
//! so the session can forward the original bytes and read only the few arguments it routes on.
//! Limits and error texts follow Redis (`networking.c`), so a client sees the same
//! `Protocol error` it would get from Redis itself.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::find_crlf;
use super::{parse_int, plain_length};

/// Redis's default `proto-max-bulk-len`: the largest single argument.
pub const MAX_BULK_LEN: i64 = 512 * 1024 * 1024;
/// Redis's `PROTO_INLINE_MAX_SIZE`: the longest inline command or header line.
pub const MAX_INLINE_LEN: usize = 64 * 1024;
/// Redis refuses multibulk counts above `INT_MAX`.
const MAX_MULTIBULK_LEN: i64 = i32::MAX as i64;
/// Redis's default `client-query-buffer-limit`: the largest request it buffers.
pub const MAX_REQUEST_LEN: usize = 1024 * 1024 * 1024;

/// A request that breaks the protocol; the connection is closed after the error is sent, as
/// Redis does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl ProtocolError {
    fn new(detail: impl Into<String>) -> Self {
        ProtocolError(detail.into())
    }

    /// The error line Redis sends for this violation, without the trailing CRLF.
    pub fn message(&self) -> String {
        format!("ERR Protocol error: {}", self.0)
    }
}

/// What the front of the read buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A complete request of `consumed` bytes; its arguments are in the decoder.
    Request {
        consumed: usize,
        /// Inline commands are re-encoded as multibulk, because their quoting rules cannot be
        /// forwarded as they are; `None` for multibulk requests, which are forwarded verbatim.
        rewritten: Option<Bytes>,
    },
    /// `consumed` bytes that Redis ignores (an empty line or `*0`): no reply is owed.
    Empty { consumed: usize },
    /// More input is needed; the buffer should hold at least `needed` bytes before trying again,
    /// which lets the reader reserve the whole of a large argument at once.
    Incomplete { needed: usize },
}

/// Decodes requests one at a time, reusing its argument list so that decoding allocates
/// nothing per request.
///
/// A request that arrives over many reads is not parsed again from its start each time: after
/// `Incomplete`, the decoder resumes where it stopped. The caller must then pass the same
/// request again, at the start of the input, with more bytes after it.
#[derive(Default)]
pub struct RequestDecoder {
    ranges: Vec<(usize, usize)>,
    /// Progress through a multibulk request that was incomplete: its argument count and where
    /// the next argument's header starts (`ranges` holds the arguments before it).
    partial: Option<(usize, usize)>,
}

impl RequestDecoder {
    /// Decodes the first request in `input`.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, ProtocolError> {
        let resume = self.partial.take();
        if resume.is_none() {
            self.ranges.clear();
        }
        let decoded = match input.first() {
            None => Ok(Decoded::Incomplete { needed: 1 }),
            Some(b'*') => self.decode_multibulk(input, resume),
            Some(_) => self.decode_inline(input),
        };
        if let Ok(Decoded::Incomplete { needed }) = &decoded {
            if *needed > MAX_REQUEST_LEN {
                self.partial = None;
                return Err(ProtocolError::new("request exceeds the query buffer limit"));
            }
        } else {
            self.partial = None;
        }
        decoded
    }

    /// The arguments of the request just decoded. `input` is the buffer given to `decode`
    /// (or the rewritten bytes for an inline command).
    pub fn args<'a>(&'a self, input: &'a [u8]) -> Args<'a> {
        Args {
            source: input,
            ranges: &self.ranges,
        }
    }

    fn decode_multibulk(
        &mut self,
        input: &[u8],
        resume: Option<(usize, usize)>,
    ) -> Result<Decoded, ProtocolError> {
        let (count, mut pos) = match resume {
            Some(progress) => progress,
            None => {
                let header = header_number(input, 0, "too big mbulk count string");
                let Some((count, pos)) = header.map_err(ProtocolError::new)? else {
                    return Ok(Decoded::Incomplete {
                        needed: input.len() + 1,
                    });
                };
                match count {
                    Some(count) if count <= 0 => return Ok(Decoded::Empty { consumed: pos }),
                    Some(count) if count <= MAX_MULTIBULK_LEN => (count as usize, pos),
                    _ => return Err(ProtocolError::new("invalid multibulk length")),
                }
            }
        };
        while self.ranges.len() < count {
            match input.get(pos) {
                None => return Ok(self.incomplete(count, pos, pos + 1)),
                Some(b'$') => {}
                Some(&other) => {
                    return Err(ProtocolError::new(format!(
                        "expected '$', got '{}'",
                        char::from(other)
                    )))
                }
            }
            let header = header_number(input, pos, "too big bulk count string");
            let Some((len, data_start)) = header.map_err(ProtocolError::new)? else {
                return Ok(self.incomplete(count, pos, input.len() + 1));
            };
            let len = match len {
                Some(len) if (0..=MAX_BULK_LEN).contains(&len) => len as usize,
                _ => return Err(ProtocolError::new("invalid bulk length")),
            };
            let end = data_start + len + 2;
            if input.len() < end {
                return Ok(self.incomplete(count, pos, end));
            }
            self.ranges.push((data_start, data_start + len));
            pos = end;
        }
        Ok(Decoded::Request {
            consumed: pos,
            rewritten: None,
        })
    }

    /// Remembers how far an incomplete multibulk request got.
    fn incomplete(&mut self, count: usize, pos: usize, needed: usize) -> Decoded {
        self.partial = Some((count, pos));
        Decoded::Incomplete { needed }
    }

    fn decode_inline(&mut self, input: &[u8]) -> Result<Decoded, ProtocolError> {
        let Some(newline) = memchr::memchr(b'\n', input) else {
            if input.len() > MAX_INLINE_LEN {
                return Err(ProtocolError::new("too big inline request"));
            }
            return Ok(Decoded::Incomplete {
                needed: input.len() + 1,
            });
        };
        let line = &input[..newline];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let words =
            split_inline(line).ok_or_else(|| ProtocolError::new("unbalanced quotes in request"))?;
        if words.is_empty() {
            return Ok(Decoded::Empty {
                consumed: newline + 1,
            });
        }
        let mut encoded = BytesMut::with_capacity(line.len() + 16 * words.len());
        super::put_header(&mut encoded, b'*', words.len());
        for word in &words {
            super::put_header(&mut encoded, b'$', word.len());
            let start = encoded.len();
            encoded.put_slice(word);
            self.ranges.push((start, encoded.len()));
            encoded.put_slice(b"\r\n");
        }
        Ok(Decoded::Request {
            consumed: newline + 1,
            rewritten: Some(encoded.freeze()),
        })
    }
}

/// The arguments of one request, borrowed from the buffer they were decoded from.
#[derive(Clone, Copy)]
pub struct Args<'a> {
    source: &'a [u8],
    /// The decoder's list itself, not a slice of it: a slice made right after decoding reads
    /// the list's address and its length in one load, and a load spanning a write still on its
    /// way to the cache (the length, just set) waits for it. Read where an argument is wanted,
    /// the length is taken on its own, from the write.
    ranges: &'a Vec<(usize, usize)>,
}

impl<'a> Args<'a> {
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<&'a [u8]> {
        let &(start, end) = self.ranges.get(index)?;
        Some(&self.source[start..end])
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.ranges
            .iter()
            .map(|&(start, end)| &self.source[start..end])
    }
}

/// The number in the header line at `start` (`None` inside if it is not one) and where the
/// line after it starts; `None` while the line is incomplete. Plain digits, nearly every
/// header, are read in one pass here; anything else is found and checked in full by
/// [`any_header_number`]. The error is `too_big`, a static text, so that this small result is
/// all the hot path carries (a `ProtocolError` holds a `String`).
#[inline]
fn header_number(
    input: &[u8],
    start: usize,
    too_big: &'static str,
) -> Result<Option<(Option<i64>, usize)>, &'static str> {
    match plain_length(input, start + 1) {
        Some((end, number)) => Ok(Some((Some(number), end + 2))),
        None => any_header_number(input, start, too_big),
    }
}

/// [`header_number`] for a header that is not plain digits, or not complete yet.
#[cold]
fn any_header_number(
    input: &[u8],
    start: usize,
    too_big: &'static str,
) -> Result<Option<(Option<i64>, usize)>, &'static str> {
    match find_crlf(input, start + 1) {
        Some(end) if end - start <= MAX_INLINE_LEN => {
            Ok(Some((parse_int(&input[start + 1..end]), end + 2)))
        }
        Some(_) => Err(too_big),
        None if input.len() - start > MAX_INLINE_LEN => Err(too_big),
        None => Ok(None),
    }
}

/// Splits an inline command into words with the quoting rules of Redis's `sdssplitargs`:
/// double quotes take C-like escapes (`\n`, `\xHH`, …), single quotes only `\'`, and a closing
/// quote must be followed by a space or the end of the line. `None` means unbalanced quotes.
fn split_inline(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut words = Vec::new();
    let mut pos = 0;
    loop {
        while pos < line.len() && line[pos].is_ascii_whitespace() {
            pos += 1;
        }
        if pos == line.len() {
            return Some(words);
        }
        let mut word = Vec::new();
        match line[pos] {
            b'"' => (word, pos) = quoted(line, pos + 1, b'"', double_quote_escape)?,
            b'\'' => (word, pos) = quoted(line, pos + 1, b'\'', single_quote_escape)?,
            _ => {
                while pos < line.len() && !line[pos].is_ascii_whitespace() {
                    word.push(line[pos]);
                    pos += 1;
                }
            }
        }
        words.push(word);
    }
}

/// Reads the escape sequence at a backslash in a quoted word: the byte it stands for and its
/// length, or `None` when the backslash is a plain character.
type EscapeReader = fn(&[u8], usize) -> Option<(u8, usize)>;

/// Reads a quoted word from just after its opening quote to just after its closing one, which
/// must end the word.
fn quoted(
    line: &[u8],
    mut pos: usize,
    quote: u8,
    escape: EscapeReader,
) -> Option<(Vec<u8>, usize)> {
    let mut word = Vec::new();
    loop {
        let byte = *line.get(pos)?;
        if byte == quote {
            closing_quote_ends_word(line, pos + 1)?;
            return Some((word, pos + 1));
        }
        if byte == b'\\' {
            if let Some((escaped, len)) = escape(line, pos) {
                word.push(escaped);
                pos += len;
                continue;
            }
        }
        word.push(byte);
        pos += 1;
    }
}

/// Double quotes take C-like escapes: `\n`, `\r`, `\t`, `\b`, `\a`, `\xHH`, and `\` before
/// any other character stands for that character.
fn double_quote_escape(line: &[u8], pos: usize) -> Option<(u8, usize)> {
    let next = *line.get(pos + 1)?;
    if next == b'x' {
        let hex = line.get(pos + 2..pos + 4)?;
        if hex.iter().all(u8::is_ascii_hexdigit) {
            let hex = std::str::from_utf8(hex).ok()?;
            return Some((u8::from_str_radix(hex, 16).ok()?, 4));
        }
    }
    let escaped = match next {
        b'n' => b'\n',
        b'r' => b'\r',
        b't' => b'\t',
        b'b' => 8,
        b'a' => 7,
        other => other,
    };
    Some((escaped, 2))
}

/// Single quotes take only `\'`.
fn single_quote_escape(line: &[u8], pos: usize) -> Option<(u8, usize)> {
    (line.get(pos + 1) == Some(&b'\'')).then_some((b'\'', 2))
}

fn closing_quote_ends_word(line: &[u8], pos: usize) -> Option<()> {
    match line.get(pos) {
        None => Some(()),
        Some(byte) if byte.is_ascii_whitespace() => Some(()),
        Some(_) => None,
    }
}

/// Encodes a command as a RESP multibulk, for the few commands keyward sends on its own.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A], out: &mut BytesMut) {
    super::put_header(out, b'*', args.len());
    for arg in args {
        let arg = arg.as_ref();
        super::put_header(out, b'$', arg.len());
        out.put_slice(arg);
        out.put_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut decoder = RequestDecoder::default();
        let mut requests = Vec::new();
        let mut pos = 0;
        loop {
            match decoder.decode(&input[pos..])? {
                Decoded::Request {
                    consumed,
                    rewritten,
                } => {
                    let source = rewritten.as_deref().unwrap_or(&input[pos..]);
                    requests.push(decoder.args(source).iter().map(<[u8]>::to_vec).collect());
                    pos += consumed;
                }
                Decoded::Empty { consumed } => pos += consumed,
                Decoded::Incomplete { .. } => return Ok(requests),
            }
        }
    }

    fn words(request: &[&str]) -> Vec<Vec<u8>> {
        request.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn decodes_pipelined_multibulk() {
        let input = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET";
        assert_eq!(
            decode_all(input).unwrap(),
            vec![words(&["GET", "k"]), words(&["PING"])]
        );
    }

    #[test]
    fn reports_how_much_a_large_argument_needs() {
        let mut decoder = RequestDecoder::default();
        let input = b"*2\r\n$3\r\nSET\r\n$1000\r\nabc";
        assert_eq!(
            decoder.decode(input),
            Ok(Decoded::Incomplete {
                needed: 13 + 7 + 1002
            })
        );
    }

    #[test]
    fn resumes_a_request_split_over_many_reads() {
        let request = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n";
        let mut decoder = RequestDecoder::default();
        for cut in 1..request.len() {
            assert!(matches!(
                decoder.decode(&request[..cut]),
                Ok(Decoded::Incomplete { .. })
            ));
        }
        assert!(matches!(
            decoder.decode(request),
            Ok(Decoded::Request { consumed, .. }) if consumed == request.len()
        ));
        let args: Vec<&[u8]> = decoder.args(request).iter().collect();
        assert_eq!(args, [&b"SET"[..], b"k", b"value"]);
    }

    #[test]
    fn refuses_requests_beyond_the_query_buffer_limit() {
        let mut decoder = RequestDecoder::default();
        let header = format!("${MAX_BULK_LEN}\r\n");
        let mut input = format!("*3\r\n{header}").into_bytes();
        input.resize(input.len() + MAX_BULK_LEN as usize + 2, b'x');
        assert!(matches!(
            decoder.decode(&input),
            Ok(Decoded::Incomplete { .. })
        ));
        input.extend_from_slice(header.as_bytes());
        assert_eq!(
            decoder.decode(&input).unwrap_err().message(),
            "ERR Protocol error: request exceeds the query buffer limit"
        );
    }

    #[test]
    fn skips_empty_requests() {
        assert_eq!(
            decode_all(b"*0\r\n\r\n*-1\r\nPING\r\n").unwrap(),
            vec![words(&["PING"])]
        );
    }

    #[test]
    fn splits_inline_commands_like_redis() {
        assert_eq!(
            decode_all(b"SET k \"a b\\x41\\n\" 'it\\'s'\n").unwrap(),
            vec![words(&["SET", "k", "a bA\n", "it's"])]
        );
        assert_eq!(decode_all(b"  PING  \r\n").unwrap(), vec![words(&["PING"])]);
    }

    #[test]
    fn protocol_errors_use_redis_wording() {
        let error = |input: &[u8]| decode_all(input).unwrap_err().message();
        assert_eq!(
            error(b"*x\r\n"),
            "ERR Protocol error: invalid multibulk length"
        );
        assert_eq!(
            error(b"*1\r\n+PING\r\n"),
            "ERR Protocol error: expected '$', got '+'"
        );
        assert_eq!(
            error(b"*1\r\n$-3\r\n"),
            "ERR Protocol error: invalid bulk length"
        );
        assert_eq!(
            error(b"*1\r\n$536870913\r\n"),
            "ERR Protocol error: invalid bulk length"
        );
        assert_eq!(
            error(b"SET k \"open\r\n"),
            "ERR Protocol error: unbalanced quotes in request"
        );
        assert_eq!(
            error(b"SET k \"a\"b\r\n"),
            "ERR Protocol error: unbalanced quotes in request"
        );
        assert_eq!(
            error(&vec![b'a'; MAX_INLINE_LEN + 1]),
            "ERR Protocol error: too big inline request"
        );
        let mut long_count = b"*".to_vec();
        long_count.extend(vec![b'1'; MAX_INLINE_LEN + 1]);
        assert_eq!(
            error(&long_count),
            "ERR Protocol error: too big mbulk count string"
        );
    }
}
