//! The storage the module store runs on: named blobs, bytes in and bytes out.
//! [`MemFlash`] keeps them in memory and can simulate a power cut at any byte.

use std::collections::BTreeMap;

/// Bytes in, bytes out: named blobs. A write may be cut by power loss at any
/// byte: the blob then holds only a prefix of the new data (the old content is
/// gone). A write that returned `Ok` is durable; a remove is atomic.
pub trait Flash {
    /// The blob called `name`, `None` if there is none.
    ///
    /// # Errors
    ///
    /// The device's error.
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, FlashError>;

    /// Replaces (or creates) the blob called `name`.
    ///
    /// # Errors
    ///
    /// The device's error; after [`FlashError::PowerCut`] the blob may hold any
    /// prefix of `data`.
    fn write(&mut self, name: &str, data: &[u8]) -> Result<(), FlashError>;

    /// Removes the blob called `name`; removing a missing blob is not an error.
    ///
    /// # Errors
    ///
    /// The device's error.
    fn remove(&mut self, name: &str) -> Result<(), FlashError>;

    /// The names of all blobs.
    ///
    /// # Errors
    ///
    /// The device's error.
    fn list(&self) -> Result<Vec<String>, FlashError>;
}

impl<F: Flash + ?Sized> Flash for Box<F> {
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, FlashError> {
        (**self).read(name)
    }

    fn write(&mut self, name: &str, data: &[u8]) -> Result<(), FlashError> {
        (**self).write(name, data)
    }

    fn remove(&mut self, name: &str) -> Result<(), FlashError> {
        (**self).remove(name)
    }

    fn list(&self) -> Result<Vec<String>, FlashError> {
        (**self).list()
    }
}

/// A flash operation that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlashError {
    /// The device reported an error.
    Io(String),
    /// Power was lost during the operation.
    PowerCut,
    /// No space left.
    Full,
}

impl std::fmt::Display for FlashError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "flash error: {e}"),
            Self::PowerCut => f.write_str("power lost while writing to flash"),
            Self::Full => f.write_str("flash is full"),
        }
    }
}

impl std::error::Error for FlashError {}

/// Flash in memory, for tests and for devices without flash (the store then
/// lasts until restart). Clone it to snapshot the flash and "reboot" from the
/// copy.
#[derive(Debug, Clone, Default)]
pub struct MemFlash {
    blobs: BTreeMap<String, Vec<u8>>,
    /// Bytes that may still be written before the power goes.
    budget: Option<usize>,
    power_lost: bool,
    written: usize,
}

impl MemFlash {
    /// Cuts the power after `bytes` more bytes have been written, across all
    /// writes: the write in progress then keeps only its prefix and returns
    /// [`FlashError::PowerCut`], and every later write or remove fails the same
    /// way without effect. A remove attempted once the budget is used up is
    /// cut too (it is the next step). `None`: never.
    pub fn cut_after(&mut self, bytes: Option<usize>) {
        self.budget = bytes;
    }

    /// Power is back: writes work again, no cut is scheduled.
    pub fn restore_power(&mut self) {
        self.budget = None;
        self.power_lost = false;
    }

    /// Bytes written so far (a cut write counts its prefix).
    pub fn bytes_written(&self) -> usize {
        self.written
    }
}

impl Flash for MemFlash {
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, FlashError> {
        Ok(self.blobs.get(name).cloned())
    }

    fn write(&mut self, name: &str, data: &[u8]) -> Result<(), FlashError> {
        if self.power_lost {
            return Err(FlashError::PowerCut);
        }
        match self.budget {
            Some(left) if data.len() > left => {
                self.blobs.insert(name.to_string(), data[..left].to_vec());
                self.written += left;
                self.budget = Some(0);
                self.power_lost = true;
                Err(FlashError::PowerCut)
            }
            _ => {
                self.blobs.insert(name.to_string(), data.to_vec());
                self.written += data.len();
                self.budget = self.budget.map(|left| left - data.len());
                Ok(())
            }
        }
    }

    fn remove(&mut self, name: &str) -> Result<(), FlashError> {
        if self.power_lost || self.budget == Some(0) {
            self.power_lost = true;
            return Err(FlashError::PowerCut);
        }
        self.blobs.remove(name);
        Ok(())
    }

    fn list(&self) -> Result<Vec<String>, FlashError> {
        Ok(self.blobs.keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_write_keeps_a_prefix_and_later_writes_fail() {
        let mut f = MemFlash::default();
        f.write("a", b"old").unwrap();
        f.cut_after(Some(5));
        f.write("b", b"abc").unwrap();
        assert_eq!(f.write("a", b"new!"), Err(FlashError::PowerCut));
        assert_eq!(f.read("a").unwrap().unwrap(), b"ne");
        assert_eq!(f.write("c", b""), Err(FlashError::PowerCut));
        assert_eq!(f.remove("b"), Err(FlashError::PowerCut));
        assert_eq!(f.list().unwrap(), ["a", "b"]);
        assert_eq!(f.bytes_written(), 3 + 3 + 2);
        f.restore_power();
        f.write("a", b"again").unwrap();
        assert_eq!(f.read("a").unwrap().unwrap(), b"again");
    }

    #[test]
    fn cut_at_zero_bytes_empties_the_blob() {
        let mut f = MemFlash::default();
        f.write("a", b"old").unwrap();
        f.cut_after(Some(0));
        assert_eq!(f.write("a", b"new"), Err(FlashError::PowerCut));
        assert_eq!(f.read("a").unwrap().unwrap(), b"");
    }

    #[test]
    fn clone_is_a_snapshot() {
        let mut f = MemFlash::default();
        f.write("a", b"1").unwrap();
        let snap = f.clone();
        f.write("a", b"2").unwrap();
        assert_eq!(snap.read("a").unwrap().unwrap(), b"1");
    }
}
