//! Request bodies: `Content-Length` counting and `chunked` decoding, one byte of
//! framing at a time so any split of the input decodes the same.

use std::ops::Range;

use super::Rejection;

/// Bytes of a chunk-size line, extensions included.
const MAX_CHUNK_LINE_BYTES: usize = 1024;

/// What one [`BodyDecoder::decode`] call found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// Body bytes at this range of the input.
    Data(Range<usize>),
    /// The input ran out before the next body byte or the end.
    Need,
    /// The body is complete; the input after it belongs to the next request.
    Done,
}

/// Decodes one request body.
#[derive(Debug, Clone, Copy)]
pub(super) enum BodyDecoder {
    /// `Content-Length` (0 when the request has no body): bytes still to come.
    Length(u64),
    Chunked(Chunked),
}

impl BodyDecoder {
    /// Consumes framing and at most `max` body bytes from the front of `input`.
    /// Returns how many input bytes were consumed and what they held.
    pub(super) fn decode(&mut self, input: &[u8], max: usize) -> Result<(usize, Step), Rejection> {
        match self {
            Self::Length(0) => Ok((0, Step::Done)),
            Self::Length(remaining) => {
                let n = clamp(*remaining, input.len().min(max));
                if n == 0 {
                    return Ok((0, Step::Need));
                }
                *remaining -= n as u64;
                Ok((n, Step::Data(0..n)))
            }
            Self::Chunked(chunked) => chunked.decode(input, max),
        }
    }

    /// Whether the body is complete without any more input.
    pub(super) fn is_done(&self) -> bool {
        matches!(
            self,
            Self::Length(0)
                | Self::Chunked(Chunked {
                    state: State::Done,
                    ..
                })
        )
    }
}

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the chunk-size hex digits; `digits` seen so far.
    Size {
        digits: u8,
    },
    /// Whitespace after the size, before `;` or CR.
    SizeWs,
    /// In chunk extensions (ignored), until CR.
    Ext,
    /// CR seen at the end of the size line.
    SizeLf,
    /// In chunk data.
    Data,
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final blank line).
    TrailerStart,
    /// In a trailer line (ignored), until CR.
    Trailer,
    /// CR seen at the end of a trailer line.
    TrailerLf,
    /// CR seen on the final blank line.
    FinalLf,
    Done,
}

/// `Transfer-Encoding: chunked` decoder (RFC 9112 §7.1). Extensions and trailers
/// are consumed and ignored; CRLF is required everywhere.
#[derive(Debug, Clone, Copy)]
pub(super) struct Chunked {
    state: State,
    /// Size of the current chunk, then its bytes still to come.
    size: u64,
    /// Bytes of the current size line, or of the trailer section.
    line: usize,
    /// Body bytes declared so far.
    total: u64,
    max_body: u64,
    max_trailers: usize,
}

impl Chunked {
    pub(super) const fn new(max_body: u64, max_trailers: usize) -> Self {
        Self {
            state: State::Size { digits: 0 },
            size: 0,
            line: 0,
            total: 0,
            max_body,
            max_trailers,
        }
    }

    fn decode(&mut self, input: &[u8], max: usize) -> Result<(usize, Step), Rejection> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Data {
                let n = clamp(self.size, (input.len() - i).min(max));
                if n == 0 {
                    // `max` is at least 1, so only the input can have run out.
                    break;
                }
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                return Ok((i + n, Step::Data(i..i + n)));
            }
            self.framing_byte(input[i])?;
            i += 1;
            if self.state == State::Done {
                return Ok((i, Step::Done));
            }
        }
        if self.state == State::Done {
            return Ok((i, Step::Done));
        }
        Ok((i, Step::Need))
    }

    fn framing_byte(&mut self, b: u8) -> Result<(), Rejection> {
        if matches!(self.state, State::Size { .. } | State::SizeWs | State::Ext) {
            self.line += 1;
            if self.line > MAX_CHUNK_LINE_BYTES {
                return Err(Rejection::new(400, "chunk-size line too long"));
            }
        }
        if matches!(
            self.state,
            State::TrailerStart | State::Trailer | State::TrailerLf
        ) {
            self.line += 1;
            if self.line > self.max_trailers {
                return Err(Rejection::new(431, "chunked trailers too large"));
            }
        }
        let bare_lf = Rejection::new(400, "bare LF in chunk framing");
        let lone_cr = Rejection::new(400, "CR not followed by LF in chunk framing");
        let bad_size = Rejection::new(400, "invalid chunk size");
        let no_crlf = Rejection::new(400, "missing CRLF after chunk data");
        self.state = match self.state {
            State::Size { digits } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    if digits >= 16 {
                        return Err(Rejection::new(400, "chunk size overflows"));
                    }
                    let d = char::from(b).to_digit(16).unwrap_or(0);
                    self.size = (self.size << 4) | u64::from(d);
                    State::Size { digits: digits + 1 }
                }
                _ if digits == 0 => return Err(bad_size),
                b' ' | b'\t' => State::SizeWs,
                b';' => State::Ext,
                b'\r' => State::SizeLf,
                b'\n' => return Err(bare_lf),
                _ => return Err(bad_size),
            },
            // Whitespace after the size is only allowed before an extension (BWS).
            State::SizeWs => match b {
                b' ' | b'\t' => State::SizeWs,
                b';' => State::Ext,
                b'\n' => return Err(bare_lf),
                _ => return Err(bad_size),
            },
            State::Ext => match b {
                b'\r' => State::SizeLf,
                b'\n' => return Err(bare_lf),
                _ => State::Ext,
            },
            State::SizeLf if b == b'\n' => self.end_size_line()?,
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataLf if b == b'\n' => State::Size { digits: 0 },
            State::DataCr | State::DataLf => return Err(no_crlf),
            State::TrailerStart | State::Trailer => match b {
                b'\r' if self.state == State::TrailerStart => State::FinalLf,
                b'\r' => State::TrailerLf,
                b'\n' => return Err(bare_lf),
                _ => State::Trailer,
            },
            State::TrailerLf if b == b'\n' => State::TrailerStart,
            State::FinalLf if b == b'\n' => State::Done,
            State::SizeLf | State::TrailerLf | State::FinalLf => return Err(lone_cr),
            State::Data | State::Done => self.state,
        };
        Ok(())
    }

    /// The size line is complete: start the chunk's data, or the trailers after the
    /// last chunk.
    fn end_size_line(&mut self) -> Result<State, Rejection> {
        self.line = 0;
        if self.size == 0 {
            return Ok(State::TrailerStart);
        }
        self.total = self.total.saturating_add(self.size);
        if self.total > self.max_body {
            return Err(Rejection::new(413, "request body too large"));
        }
        Ok(State::Data)
    }
}

/// `min(a, b)` as `usize`.
fn clamp(a: u64, b: usize) -> usize {
    usize::try_from(a).map_or(b, |a| a.min(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; returns the body.
    fn decode_in_steps(input: &[u8], step: usize) -> Result<Vec<u8>, Rejection> {
        let mut decoder = BodyDecoder::Chunked(Chunked::new(1 << 20, 4096));
        let mut body = Vec::new();
        let mut fed = 0;
        let mut pos = 0;
        loop {
            let (used, found) = decoder.decode(&input[pos..fed], 4)?;
            pos += used;
            match found {
                Step::Data(range) => {
                    let start = pos - used;
                    body.extend_from_slice(&input[start + range.start..start + range.end]);
                }
                Step::Done => return Ok(body),
                Step::Need if fed == input.len() => panic!("ran out at {pos}"),
                Step::Need => fed = (fed + step).min(input.len()),
            }
        }
    }

    #[test]
    fn chunked_decoding_is_the_same_for_any_input_step() {
        let input = b"3\r\nabc\r\nA;x=\"y\"\r\n0123456789\r\n0\r\nT: 1\r\n\r\n";
        for step in 1..=input.len() {
            assert_eq!(
                decode_in_steps(input, step).unwrap(),
                b"abc0123456789",
                "step {step}"
            );
        }
    }

    #[test]
    fn chunk_size_accepts_sixteen_hex_digits_and_not_seventeen() {
        let mut d = Chunked::new(u64::MAX, 4096);
        assert!(d.decode(b"000000000000000F\r\n", 1).is_ok());
        let mut d = Chunked::new(u64::MAX, 4096);
        let err = d.decode(b"00000000000000000F\r\n", 1).unwrap_err();
        assert_eq!(err.reason, "chunk size overflows");
    }

    #[test]
    fn whitespace_after_chunk_size_needs_an_extension() {
        assert!(decode_in_steps(b"1 ;e\r\nx\r\n0\r\n\r\n", 64).is_ok());
        assert_eq!(
            decode_in_steps(b"1 \r\nx\r\n0\r\n\r\n", 64)
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn long_extensions_and_trailers_are_bounded() {
        let mut line = b"1;".to_vec();
        line.resize(MAX_CHUNK_LINE_BYTES + 1, b'e');
        line.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert_eq!(
            decode_in_steps(&line, 64).unwrap_err().reason,
            "chunk-size line too long"
        );
        let mut d = Chunked::new(1 << 20, 8);
        assert_eq!(
            d.decode(b"0\r\nX-Big: 123\r\n\r\n", 64).unwrap_err().status,
            431
        );
    }

    #[test]
    fn content_length_decoding_stops_at_the_length() {
        let mut d = BodyDecoder::Length(3);
        assert_eq!(d.decode(b"abcdef", 2), Ok((2, Step::Data(0..2))));
        assert_eq!(d.decode(b"cdef", 2), Ok((1, Step::Data(0..1))));
        assert_eq!(d.decode(b"def", 2), Ok((0, Step::Done)));
        assert!(d.is_done());
    }
}
