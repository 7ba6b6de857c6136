//! A staged key's entry: most of the key's hash and its counts since the last flush, in one
//! 128-bit word.
//!
//! Every staged command updates one entry at random among the stage's, so the stage's table is most
//! of what a staged command touches in memory and most of what it misses in the cache: 16 bytes an
//! entry halve what a field per count took. Five counters side by side in one word, each with a
//! spare bit above it, take one addition and one test per command: the spare bit of a counter that
//! would overflow is set by its carry, and the entry's counts then move, whole and exact, to the
//! stage's side map of spilled counts.

use std::ops::AddAssign;

/// One command's counts for one of its keys.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    /// Bytes it brought in for the key and took back out.
    pub inbound: u64,
    pub outbound: u64,
    pub write: bool,
}

impl Counts {
    /// Bytes in and out together: what ranks a key by bytes, and what the sketch weighs.
    #[inline]
    pub fn bytes(self) -> u64 {
        self.inbound.saturating_add(self.outbound)
    }

    /// A command's counts, in the order tests write them.
    #[cfg(test)]
    pub fn of(write: bool, inbound: u64, outbound: u64) -> Counts {
        Counts {
            inbound,
            outbound,
            write,
        }
    }
}

/// A key's counts at full width: an entry's, with what it spilled.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sums {
    pub requests: u64,
    /// Of `requests`, from commands that write.
    pub writes: u64,
    /// Bytes in and out together, of all commands and of those that write, and of `bytes`,
    /// what went out with replies.
    pub bytes: u64,
    pub write_bytes: u64,
    pub outbound: u64,
}

impl From<Counts> for Sums {
    fn from(counts: Counts) -> Sums {
        let bytes = counts.bytes();
        let writes = u64::from(counts.write);
        Sums {
            requests: 1,
            writes,
            bytes,
            write_bytes: bytes * writes,
            outbound: counts.outbound,
        }
    }
}

impl AddAssign for Sums {
    fn add_assign(&mut self, other: Sums) {
        self.requests += other.requests;
        self.writes += other.writes;
        self.bytes += other.bytes;
        self.write_bytes += other.write_bytes;
        self.outbound += other.outbound;
    }
}

impl Sums {
    /// These counts `times` over: what a command sampled one in `times` stands for.
    pub fn times(self, times: u64) -> Sums {
        Sums {
            requests: self.requests * times,
            writes: self.writes * times,
            bytes: self.bytes.saturating_mul(times),
            write_bytes: self.write_bytes.saturating_mul(times),
            outbound: self.outbound.saturating_mul(times),
        }
    }
}

/// A counter's place in an entry: its lowest bit and its width, below its spare bit.
struct Field {
    shift: u32,
    width: u32,
}

impl Field {
    /// The field that starts above this one's spare bit.
    const fn next(&self, width: u32) -> Field {
        Field {
            shift: self.shift + self.width + 1,
            width,
        }
    }

    const fn spare_bit(&self) -> u128 {
        1 << (self.shift + self.width)
    }

    fn read(&self, word: u128) -> u64 {
        ((word >> self.shift) & ((1 << self.width) - 1)) as u64
    }

    fn place(&self, value: u64) -> u128 {
        u128::from(value) << self.shift
    }
}

/// The counters' widths: a key's counts fit whole for a period with up to 1,023 requests,
/// 64 KiB in and out together and 32 KiB out (about 460 GETs of a 64-byte value); a busier
/// key spills once every few hundred commands, each time to the same 48 bytes in the map.
const REQUESTS: Field = Field {
    shift: 0,
    width: 10,
};
const WRITES: Field = REQUESTS.next(10);
const BYTES: Field = WRITES.next(16);
const WRITE_BYTES: Field = BYTES.next(16);
const OUTBOUND: Field = WRITE_BYTES.next(15);
/// Where the key's identity starts: the 56 bits of its hash left above the counters.
const IDENTITY_SHIFT: u32 = OUTBOUND.shift + OUTBOUND.width + 1;
const SPARE_BITS: u128 = REQUESTS.spare_bit()
    | WRITES.spare_bit()
    | BYTES.spare_bit()
    | WRITE_BYTES.spare_bit()
    | OUTBOUND.spare_bit();
const _: () = assert!(IDENTITY_SHIFT == 128 - 56);

/// A command whose bytes (in and out together) reach this goes straight to the spilled
/// counts (one map update, beside that many bytes copied): below it, each of its byte counts
/// fits every byte counter.
const NARROW_BYTES: u64 = 1 << OUTBOUND.width;

/// The bits of a key's hash an entry leaves out (8 of them, from bit 32): above any bit a
/// table of up to 2^32 slots places a key by, and below the 7 top bits hashbrown marks each
/// slot with, so that [`placement`] gives the table all it reads of a hash from what the
/// entry keeps.
const LEFT_OUT: u64 = 0xff << 32;

/// The part of a key's 64-bit hash an entry keeps, as 56 bits.
pub fn identity(hash: u64) -> u64 {
    (hash & 0xffff_ffff) | ((hash >> 40) << 32)
}

/// The hash a stage's table places an entry by: the key's hash with the bits the entry
/// leaves out cleared, so that it can be found again from the entry alone when the table
/// grows.
pub fn placement(hash: u64) -> u64 {
    hash & !LEFT_OUT
}

/// A key's entry: its counters in the low 72 bits, its [`identity`] in the high 56. Keys of
/// one stage are told apart by those 56 bits of a seeded 64-bit hash: two of a full stage's
/// 16,384 keys agree in them about once in 500 million stages (and are then counted as one),
/// and nobody sending keys can pick keys that do.
#[derive(Debug, Clone, Copy)]
pub struct Staged(u128);

const _: () = assert!(std::mem::size_of::<Staged>() == 16);

impl Staged {
    /// An entry with nothing counted for the key of `hash`.
    pub fn new(hash: u64) -> Staged {
        Staged(u128::from(identity(hash)) << IDENTITY_SHIFT)
    }

    /// The key's hash, with the bits the entry leaves out cleared (its [`placement`]).
    pub fn placement(self) -> u64 {
        let identity = (self.0 >> IDENTITY_SHIFT) as u64;
        (identity & 0xffff_ffff) | ((identity >> 32) << 40)
    }

    /// Whether this is the entry of the key whose [`identity`] is `identity`.
    #[inline]
    pub fn is(self, identity: u64) -> bool {
        (self.0 >> IDENTITY_SHIFT) as u64 == identity
    }

    /// Adds a command's counts, unless a counter would overflow or the command is too big for
    /// them; then the entry is left as it was, and the caller spills.
    #[inline]
    pub fn try_add(&mut self, counts: Counts) -> bool {
        let sums = Sums::from(counts);
        if sums.bytes >= NARROW_BYTES {
            return false;
        }
        // Each counter holds less than its width allows, and so does each part of `step`
        // (the other counts are at most `bytes`): their sum carries at most into the counter's
        // spare bit, never into the next one.
        let step = REQUESTS.place(sums.requests)
            | WRITES.place(sums.writes)
            | BYTES.place(sums.bytes)
            | WRITE_BYTES.place(sums.write_bytes)
            | OUTBOUND.place(sums.outbound);
        let sum = self.0 + step;
        if sum & SPARE_BITS != 0 {
            return false;
        }
        self.0 = sum;
        true
    }

    /// The entry's counts, which it then no longer holds.
    pub fn take(&mut self) -> Sums {
        let sums = self.sums();
        self.0 &= !((1 << IDENTITY_SHIFT) - 1);
        sums
    }

    pub fn sums(self) -> Sums {
        Sums {
            requests: REQUESTS.read(self.0),
            writes: WRITES.read(self.0),
            bytes: BYTES.read(self.0),
            write_bytes: WRITE_BYTES.read(self.0),
            outbound: OUTBOUND.read(self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_keeps_its_keys_identity_and_placement() {
        for hash in [0, u64::MAX, 0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210] {
            let mut staged = Staged::new(hash);
            assert!(staged.try_add(Counts::of(true, 100, 200)));
            assert!(staged.is(identity(hash)));
            assert!(!staged.is(identity(hash ^ 1)));
            assert!(!staged.is(identity(hash ^ (1 << 63))));
            assert_eq!(staged.placement(), placement(hash));
            assert_eq!(placement(hash) & LEFT_OUT, 0);
        }
    }

    #[test]
    fn counts_add_up_until_a_counter_would_overflow() {
        let mut staged = Staged::new(7);
        let mut expected = Sums::default();
        for n in 0..1023 {
            let command = Counts::of(n % 3 == 0, 30, 2);
            assert!(staged.try_add(command), "command {n}");
            expected += Sums::from(command);
        }
        assert_eq!(staged.sums(), expected);
        let before = staged.sums();
        assert!(
            !staged.try_add(Counts::of(false, 1, 1)),
            "the 1,024th request"
        );
        assert_eq!(staged.sums(), before, "a refused command changes nothing");
        assert_eq!(staged.take(), expected);
        assert_eq!(staged.sums(), Sums::default());
        assert!(staged.is(identity(7)), "taking the counts keeps the key");
    }

    #[test]
    fn each_byte_counter_refuses_what_would_not_fit() {
        let mut reads = Staged::new(1);
        assert!(reads.try_add(Counts::of(false, 0, NARROW_BYTES - 1)));
        assert!(!reads.try_add(Counts::of(false, 0, 1)), "bytes out");
        let mut writes = Staged::new(2);
        for _ in 0..2 {
            assert!(writes.try_add(Counts::of(true, NARROW_BYTES - 1, 0)));
        }
        assert!(!writes.try_add(Counts::of(true, 2, 0)), "bytes written");
        assert!(
            writes.try_add(Counts::of(false, 1, 0)),
            "bytes read still fit"
        );
        let mut bytes_alone = Staged::new(4);
        for _ in 0..326 {
            assert!(bytes_alone.try_add(Counts::of(false, 200, 1)));
        }
        assert!(
            !bytes_alone.try_add(Counts::of(false, 200, 1)),
            "bytes in all"
        );
        assert_eq!(bytes_alone.sums().bytes, 326 * 201);
        let mut big = Staged::new(3);
        assert!(
            !big.try_add(Counts::of(false, NARROW_BYTES, 0)),
            "one big command"
        );
        assert_eq!(big.sums(), Sums::default());
    }
}
