//! The files of Unix-socket listeners (the API, the metrics endpoint, inbounds): a socket file
//! left by an earlier run is replaced, one a live server still answers on is never taken.

use std::io;
use std::path::Path;

/// Makes `path` free to bind: a stale socket file (nothing accepts on it) is removed; a socket
/// a live server answers on (`AddrInUse`) or a file that is not a socket is an error.
pub fn clear_stale(path: &Path) -> io::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(()) };
    if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, "it exists and is not a socket"));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(io::ErrorKind::AddrInUse, "another process is serving on it"));
    }
    std::fs::remove_file(path).map_err(|e| io::Error::new(e.kind(), format!("removing the stale socket: {e}")))
}

/// Sets the permission bits of the socket file at `path`.
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io::Error::new(e.kind(), format!("setting the mode of {}: {e}", path.display())))
}
