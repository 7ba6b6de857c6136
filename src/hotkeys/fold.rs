//! Folding keys into patterns (`user:1234:profile` → `user:*:profile`), so that a hot family
//! of keys shows up even when no single key in it is hot.
//!
//! Keys are cut at the usual separators (`:` `/` `.` `|` `#` `=` `,`). A part that is a UUID, a
//! number, or a run of 8 or more hex digits becomes `*`; inside other parts, `-` and `_`
//! separated numbers and hex runs fold the same way (`session-9f8e7d6c5b4a` → `session-*`).

/// Writes the pattern of `key` into `out`.
pub fn fold(key: &[u8], out: &mut Vec<u8>) {
    out.clear();
    for_each_piece(key, is_separator, |part, separator| {
        if is_uuid(part) {
            out.push(b'*');
        } else {
            for_each_piece(
                part,
                |b| b == b'-' || b == b'_',
                |piece, separator| {
                    if is_variable(piece) {
                        out.push(b'*');
                    } else {
                        out.extend_from_slice(piece);
                    }
                    out.extend(separator);
                },
            );
        }
        out.extend(separator);
    });
}

/// Calls `visit` with each piece of `bytes` between separators, and the separator after it.
fn for_each_piece(
    bytes: &[u8],
    separates: impl Fn(u8) -> bool,
    mut visit: impl FnMut(&[u8], Option<u8>),
) {
    let mut start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        if separates(byte) {
            visit(&bytes[start..index], Some(byte));
            start = index + 1;
        }
    }
    visit(&bytes[start..], None);
}

fn is_separator(byte: u8) -> bool {
    matches!(byte, b':' | b'/' | b'.' | b'|' | b'#' | b'=' | b',')
}

fn is_variable(piece: &[u8]) -> bool {
    !piece.is_empty()
        && (piece.iter().all(u8::is_ascii_digit)
            || (piece.len() >= 8 && piece.iter().all(u8::is_ascii_hexdigit)))
}

/// 8-4-4-4-12 hex digits. Checked in place: it runs for every part of every key counted.
fn is_uuid(part: &[u8]) -> bool {
    const DASHES: [usize; 4] = [8, 13, 18, 23];
    part.len() == 36
        && part.iter().enumerate().all(|(index, &byte)| {
            if DASHES.contains(&index) {
                byte == b'-'
            } else {
                byte.is_ascii_hexdigit()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::fold;

    fn folded(key: &str) -> String {
        let mut out = Vec::new();
        fold(key.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn folds_numbers_uuids_and_hex_runs() {
        assert_eq!(folded("user:1234:profile"), "user:*:profile");
        assert_eq!(
            folded("order:550e8400-e29b-41d4-a716-446655440000"),
            "order:*"
        );
        assert_eq!(folded("session-9f8e7d6c5b4a"), "session-*");
        // Not UUIDs: a group too long, a dash misplaced; their hex runs still fold.
        assert_eq!(
            folded("550e8400e-29b-41d4-a716-446655440000"),
            "*-29b-41d4-a716-*"
        );
        assert_eq!(
            folded("550e8400-e29b-41d4-a716-44665544000x"),
            "*-e29b-41d4-a716-44665544000x"
        );
        assert_eq!(folded("cache/v2/page.42"), "cache/v2/page.*");
        assert_eq!(folded("lock:booking_17"), "lock:booking_*");
        assert_eq!(folded("config"), "config");
        assert_eq!(folded("deadbeef:cafe"), "*:cafe");
        assert_eq!(folded("a::b"), "a::b");
        assert_eq!(folded(""), "");
    }
}
