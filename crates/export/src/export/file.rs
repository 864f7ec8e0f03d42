//! An export's file: the default name, and a hidden partial file that becomes the file
//! only when it is complete and synced (never over an existing one unless forced).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use tally_store::Result;

use super::{ExportFormat, io};

/// The default file name: `usage_YYYYMMDD_HHMMSS.<ext>` (UTC).
pub fn default_file_name(format: ExportFormat, now: DateTime<Utc>) -> PathBuf {
    PathBuf::from(format!(
        "usage_{}.{}",
        now.format("%Y%m%d_%H%M%S"),
        format.extension()
    ))
}

fn exists_error(path: &Path) -> tally_store::Error {
    tally_store::Error::from(tally_core::Error::Invalid {
        field: "output",
        value: path.display().to_string(),
        reason: "exists; choose another name or pass --force to replace it".into(),
    })
}

/// Whether `path` names a character device or a FIFO: a destination to stream into
/// rather than a file written whole under its name.
pub(super) fn is_stream(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| {
        let t = m.file_type();
        t.is_char_device() || t.is_fifo()
    })
}

/// An export file being written: a temporary file beside its destination, removed
/// unless [`Pending::commit`] puts it in place.
pub(super) struct Pending {
    pub(super) file: std::fs::File,
    pub(super) tmp: PathBuf,
    pub(super) dest: PathBuf,
    pub(super) force: bool,
    pub(super) done: bool,
}

impl Pending {
    /// Refuses an existing `dest` (unless `force`) before any work, and creates the
    /// temporary file in `dest`'s directory (so the rename stays on one filesystem).
    pub(super) fn create(dest: &Path, force: bool) -> Result<Pending> {
        if !force && std::fs::symlink_metadata(dest).is_ok() {
            return Err(exists_error(dest));
        }
        let name = dest.file_name().ok_or_else(|| {
            tally_store::Error::from(tally_core::Error::Invalid {
                field: "output",
                value: dest.display().to_string(),
                reason: "is not a file name".into(),
            })
        })?;
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let mut attempt = 0u32;
        loop {
            let tmp = dir.join(format!(
                ".{}.{}-{stamp}-{attempt}.partial",
                name.to_string_lossy(),
                std::process::id()
            ));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
            {
                Ok(file) => {
                    return Ok(Pending {
                        file,
                        tmp,
                        dest: dest.to_owned(),
                        force,
                        done: false,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                }
                Err(e) => return Err(io(&format!("creating {}", tmp.display()))(e).into()),
            }
        }
    }

    /// Syncs the complete file and gives it its name: a rename over the old file
    /// with `force`, else a link that fails if a file appeared meanwhile (never a
    /// clobber); then syncs the directory so the name survives a crash.
    pub(super) fn commit(mut self) -> Result<()> {
        let ctx = format!("writing {}", self.dest.display());
        self.file.sync_all().map_err(io(&ctx))?;
        if self.force {
            std::fs::rename(&self.tmp, &self.dest).map_err(io(&ctx))?;
        } else {
            match std::fs::hard_link(&self.tmp, &self.dest) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(exists_error(&self.dest));
                }
                // A filesystem without hard links: check, then rename (a narrow race).
                Err(_) if std::fs::symlink_metadata(&self.dest).is_err() => {
                    std::fs::rename(&self.tmp, &self.dest).map_err(io(&ctx))?;
                }
                Err(e) => return Err(io(&ctx)(e).into()),
            }
            let _ = std::fs::remove_file(&self.tmp);
        }
        self.done = true;
        if let Some(dir) = self.dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&ctx))?;
        }
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
