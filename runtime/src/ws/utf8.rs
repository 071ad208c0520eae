//! Incremental UTF-8 validation: a text message is checked piece by piece as it
//! streams through, a code point may be split anywhere, and an invalid sequence
//! is reported at the first byte that makes it certain.

/// The validator's state between pieces: how many continuation bytes the current
/// code point still needs, and the range the next one must fall in (narrower than
/// `80..=BF` right after some lead bytes, to refuse overlong forms, surrogates and
/// code points above U+10FFFF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Utf8 {
    need: u8,
    lo: u8,
    hi: u8,
}

/// The bytes seen so far cannot be the start of valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Invalid;

impl Utf8 {
    pub(super) const fn new() -> Self {
        Self {
            need: 0,
            lo: 0x80,
            hi: 0xBF,
        }
    }

    /// Whether the bytes pushed so far end on a code point boundary.
    pub(super) const fn is_complete(&self) -> bool {
        self.need == 0
    }

    /// Checks the next bytes of the text.
    pub(super) fn push(&mut self, mut bytes: &[u8]) -> Result<(), Invalid> {
        // Finish a code point left open by the previous piece (at most 3 bytes).
        while self.need > 0 {
            let Some((&b, rest)) = bytes.split_first() else {
                return Ok(());
            };
            self.byte(b)?;
            bytes = rest;
        }
        // The rest in one go; only an unfinished sequence at the end is carried.
        match std::str::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(Invalid),
            Err(e) => bytes[e.valid_up_to()..]
                .iter()
                .try_for_each(|&b| self.byte(b)),
        }
    }

    fn byte(&mut self, b: u8) -> Result<(), Invalid> {
        if self.need > 0 {
            if b < self.lo || b > self.hi {
                return Err(Invalid);
            }
            *self = Self {
                need: self.need - 1,
                ..Self::new()
            };
            return Ok(());
        }
        let (need, lo, hi) = match b {
            0x00..=0x7F => return Ok(()),
            0xC2..=0xDF => (1, 0x80, 0xBF),
            0xE0 => (2, 0xA0, 0xBF),
            0xED => (2, 0x80, 0x9F),
            0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
            0xF0 => (3, 0x90, 0xBF),
            0xF1..=0xF3 => (3, 0x80, 0xBF),
            0xF4 => (3, 0x80, 0x8F),
            _ => return Err(Invalid),
        };
        *self = Self { need, lo, hi };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pushes `text` split at `at` and says whether it is valid and complete.
    fn valid_split(text: &[u8], at: usize) -> bool {
        let mut v = Utf8::new();
        v.push(&text[..at]).is_ok() && v.push(&text[at..]).is_ok() && v.is_complete()
    }

    #[test]
    fn agrees_with_std_at_every_split() {
        let samples: &[&[u8]] = &[
            "κόσμε".as_bytes(),
            "a€b𝄞c".as_bytes(),
            b"\xed\x9f\xbf",     // U+D7FF, last before the surrogates
            b"\xed\xa0\x80",     // a surrogate
            b"\xf4\x8f\xbf\xbf", // U+10FFFF
            b"\xf4\x90\x80\x80", // above U+10FFFF
            b"\xc0\xaf",         // overlong '/'
            b"\xe0\x80\xaf",     // overlong '/'
            b"\xf0\x80\x80\xaf", // overlong '/'
            b"\xce\xba\xe1\xbd", // ends inside a code point
            b"\xff",
            b"\x80",
        ];
        for text in samples {
            let expected = std::str::from_utf8(text).is_ok();
            for at in 0..=text.len() {
                assert_eq!(valid_split(text, at), expected, "{text:x?} split at {at}");
            }
        }
    }

    #[test]
    fn fails_at_the_first_byte_that_makes_it_certain() {
        let mut v = Utf8::new();
        assert_eq!(v.push(b"ok \xf4"), Ok(()));
        assert_eq!(v.push(b"\x90"), Err(Invalid));
        let mut v = Utf8::new();
        assert_eq!(v.push(b"\xe0"), Ok(()));
        assert_eq!(v.push(b"\x9f"), Err(Invalid));
    }
}
