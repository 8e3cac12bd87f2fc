//! Who holds a file lock: the one place that reads `/proc/locks`, so every "held by another process"
//! message can name the holder's PID, also when the holder left no PID file behind (the state's `LOCK`
//! was deleted and sled's own lock on its database is what refused us, or the active file of an output
//! folder is locked by a process with another state directory). A leaf: Linux only, best effort, None
//! when it cannot tell.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The PID of a process (not this one) holding a `flock` or POSIX lock on `path`, if `/proc/locks` says.
pub fn holder(path: &Path) -> Option<u32> {
    let meta = std::fs::metadata(path).ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    holder_in(&locks, meta.dev(), meta.ino(), std::process::id())
}

/// [`holder`] over the text of `/proc/locks` (`1: FLOCK  ADVISORY  WRITE 4242 fd:01:131090 0 EOF`): the
/// device is `major:minor` in hex, the inode in decimal; lines of waiters (`->`) are skipped.
fn holder_in(locks: &str, dev: u64, ino: u64, me: u32) -> Option<u32> {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    locks.lines().filter(|l| !l.contains("->")).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let pid: u32 = fields.get(4)?.parse().ok()?;
        let mut id = fields.get(5)?.split(':');
        let ma = u32::from_str_radix(id.next()?, 16).ok()?;
        let mi = u32::from_str_radix(id.next()?, 16).ok()?;
        let i: u64 = id.next()?.parse().ok()?;
        (ma == major && mi == minor && i == ino && pid != me).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_holder_of_one_inode() {
        let dev = libc::makedev(0xfd, 0x01);
        let text = "1: POSIX  ADVISORY  WRITE 99 08:01:5 0 EOF\n\
                    2: FLOCK  ADVISORY  WRITE 4242 fd:01:131090 0 EOF\n\
                    2: -> FLOCK  ADVISORY  WRITE 77 fd:01:131090 0 EOF\n";
        assert_eq!(holder_in(text, dev, 131_090, 1), Some(4242));
        assert_eq!(holder_in(text, dev, 131_090, 4242), None, "never ourselves");
        assert_eq!(holder_in(text, dev, 7, 1), None);
    }

    #[test]
    fn finds_a_real_lock_of_another_process() {
        // Our own lock is not "another process": the function never names us.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = std::fs::File::create(&path).unwrap();
        assert!(fs4::fs_std::FileExt::try_lock_exclusive(&f).unwrap());
        assert_eq!(holder(&path), None);
    }
}
