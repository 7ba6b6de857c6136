//! Folding keys into patterns (`user:1234:profile` → `user:*:profile`), so that a hot family
//! of keys shows up even when no single key in it is hot.
//!
//! Keys are cut at the usual separators (`:` `/` `.` `|` `#` `=` `,`). A part that is a UUID, a
//! number, or a run of 8 or more hex digits becomes `*`; inside other parts, `-` and `_`
//! separated numbers and hex runs fold the same way (`session-9f8e7d6c5b4a` → `session-*`).

/// Writes the pattern of `key` into `out`.
///
/// One pass over the key, a piece at a time (the bytes up to the next separator or joiner),
/// classifying each byte by table: this runs for every key counted, so it must cost a few
/// instructions per byte. A piece is emitted as soon as it ends; a part that turns out to be
/// a UUID replaces what its pieces emitted.
pub fn fold(key: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut part_start = 0;
    let mut part_out = 0;
    let mut start = 0;
    loop {
        // What the piece's bytes all are, and where it ends.
        let mut classes = DIGIT | HEX;
        let mut end = start;
        while let Some(&byte) = key.get(end) {
            let class = CLASSES[byte as usize];
            if class & (SEPARATOR | JOINER) != 0 {
                break;
            }
            classes &= class;
            end += 1;
        }
        emit_piece(&key[start..end], classes, out);
        let Some(&delimiter) = key.get(end) else {
            break;
        };
        if CLASSES[delimiter as usize] & SEPARATOR != 0 {
            fold_uuid(&key[part_start..end], part_out, out);
            out.push(delimiter);
            part_start = end + 1;
            part_out = out.len();
        } else {
            out.push(delimiter);
        }
        start = end + 1;
    }
    fold_uuid(&key[part_start..], part_out, out);
}

/// Writes a piece whose bytes are all of `classes`: a number or a run of 8 or more hex digits
/// as `*`, any other as it is.
#[inline]
fn emit_piece(piece: &[u8], classes: u8, out: &mut Vec<u8>) {
    if piece.is_empty() {
        return;
    }
    let variable = classes & DIGIT != 0 || (classes & HEX != 0 && piece.len() >= 8);
    if variable {
        out.push(b'*');
    } else {
        out.extend_from_slice(piece);
    }
}

fn fold_uuid(part: &[u8], written_from: usize, out: &mut Vec<u8>) {
    if is_uuid(part) {
        out.truncate(written_from);
        out.push(b'*');
    }
}

const SEPARATOR: u8 = 1;
/// `-` and `_`, which join the pieces of one part.
const JOINER: u8 = 2;
const DIGIT: u8 = 4;
const HEX: u8 = 8;

static CLASSES: [u8; 256] = {
    let mut classes = [0; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        classes[byte] = match b {
            b':' | b'/' | b'.' | b'|' | b'#' | b'=' | b',' => SEPARATOR,
            b'-' | b'_' => JOINER,
            b'0'..=b'9' => DIGIT | HEX,
            b'a'..=b'f' | b'A'..=b'F' => HEX,
            _ => 0,
        };
        byte += 1;
    }
    classes
};

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
