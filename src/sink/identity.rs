//! The active file's identity (device, inode), checked before every commit: an operator (or a loader)
//! that deletes the active file, or puts another file in its place, while dm-handoff writes it must not
//! make lines written to the old inode count as delivered. `Sink::append` checks after it has written;
//! when the path no longer names the file it wrote, it takes whatever the path names now (a new file if
//! nothing) as the active file and writes the uncommitted lines there again, and warns.
//!
//! The inode is also stored in the [`super::CommitPoint`], so a restart finds an active file that was
//! replaced or recreated while dm-handoff was stopped and reads all of it for reconciliation.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A file as the kernel knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FileId {
    pub(super) dev: u64,
    pub(super) ino: u64,
}

impl FileId {
    pub(super) fn of(file: &File) -> io::Result<FileId> {
        let m = file.metadata()?;
        Ok(FileId { dev: m.dev(), ino: m.ino() })
    }
}

/// What the active file's path names now, compared with the file the sink has open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AtPath {
    /// Still our file.
    Ours,
    /// Nothing: the file was deleted (or moved away).
    Gone,
    /// Another file (or a symlink) was put there.
    Replaced,
}

impl AtPath {
    /// For the warning: what happened to the file.
    pub(super) fn what(self) -> &'static str {
        match self {
            AtPath::Ours => "is unchanged",
            AtPath::Gone => "was deleted or moved away",
            AtPath::Replaced => "was replaced by another file",
        }
    }
}

/// Looks at `path` without following a symlink (a symlink put in its place is a replacement).
pub(super) fn at_path(path: &Path, ours: FileId) -> io::Result<AtPath> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.dev() == ours.dev && m.ino() == ours.ino => Ok(AtPath::Ours),
        Ok(_) => Ok(AtPath::Replaced),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(AtPath::Gone),
        Err(e) => Err(e),
    }
}
