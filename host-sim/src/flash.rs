//! The simulated device's flash: a folder on the host, one file per blob.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use wasmgate::store::{Flash, FlashError};

/// A [`Flash`] kept in a directory. Blob names are plain file names.
#[derive(Debug)]
pub struct DirFlash {
    dir: PathBuf,
}

impl DirFlash {
    /// Uses `dir`, creating it if needed.
    ///
    /// # Errors
    ///
    /// The OS error creating the directory, with its path.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create flash folder {}: {e}", dir.display()),
            )
        })?;
        Ok(DirFlash {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, name: &str) -> Result<PathBuf, FlashError> {
        let plain = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            && !name.starts_with('.');
        if plain {
            Ok(self.dir.join(name))
        } else {
            Err(FlashError::Io(format!("invalid blob name `{name}`")))
        }
    }
}

fn io_error(path: &Path, e: io::Error) -> FlashError {
    FlashError::Io(format!("{}: {e}", path.display()))
}

impl Flash for DirFlash {
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, FlashError> {
        let path = self.path(name)?;
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(&path, e)),
        }
    }

    fn write(&mut self, name: &str, data: &[u8]) -> Result<(), FlashError> {
        let path = self.path(name)?;
        // Written through to the disk before the store writes the record that
        // points at it: the store's ordering is only as good as the disk's.
        let write = || -> io::Result<()> {
            let mut file = fs::File::create(&path)?;
            io::Write::write_all(&mut file, data)?;
            file.sync_all()
        };
        write().map_err(|e| io_error(&path, e))
    }

    fn remove(&mut self, name: &str) -> Result<(), FlashError> {
        let path = self.path(name)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&path, e)),
        }
    }

    fn list(&self) -> Result<Vec<String>, FlashError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| io_error(&self.dir, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&self.dir, e))?;
            if let Some(name) = entry.file_name().to_str()
                && entry.file_type().is_ok_and(|t| t.is_file())
            {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }
}
