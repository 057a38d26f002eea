//! Owner-only files and directories, whatever the process umask: the data dir, the SQLite
//! files and the secrets are created with modes 0700 (dirs) and 0600 (files), and ones found
//! with looser modes are tightened, with a warning saying so.

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode bits that give the group or others any access.
const GROUP_OTHER: u32 = 0o077;
const STICKY: u32 = 0o1000;

/// Creates `dir` (and missing parents) with mode 0700, and tightens it if it already existed
/// with group or other access. A sticky dir (such as `/tmp`) is shared by design: it is
/// reported, never changed.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    tighten(dir, 0o700)
}

/// Creates `file` empty with mode 0600 if it does not exist, and tightens it if it exists
/// with group or other access. Never truncates.
pub fn private_file(file: &Path) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(file)?;
    tighten(file, 0o600)
}

/// Tightens `path` to `mode` when it grants the group or others anything; a path that does
/// not exist is fine (nothing to protect yet).
pub fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let found = meta.permissions().mode() & 0o7777;
    if found & GROUP_OTHER == 0 {
        return Ok(());
    }
    if meta.is_dir() && found & STICKY != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{found:o}"),
            "a shared (sticky) directory holds carapace files; give them a directory of their own");
        return Ok(());
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        Ok(()) => {
            tracing::warn!(path = %path.display(), was = format!("{found:o}"),
                now = format!("{mode:o}"), "tightened a mode that let others read carapace's files");
            Ok(())
        }
        // A read-only mount (a secrets volume) cannot be changed; say so and go on.
        Err(e) => {
            tracing::warn!(path = %path.display(), mode = format!("{found:o}"), error = %e,
                "carapace's files are readable by others and the mode cannot be tightened");
            Ok(())
        }
    }
}
