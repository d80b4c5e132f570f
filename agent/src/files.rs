//! The agent's files on disk (checkpoints, the conflist, max pods): written so that a crash at
//! any moment leaves the old file or the new one, with times in unix milliseconds.

use std::{
    fs,
    io::Write,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

/// Writes `body` to `path` through a temporary file, fsync, rename and a directory fsync: a
/// crash at any moment leaves the old file or the new one, never a torn one.
pub fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(body)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    fs::File::open(dir).and_then(|d| d.sync_all())
}

/// Wall-clock milliseconds since the epoch: what the checkpoints record times in.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}
