//! `make install` and the systemd unit: installed into a scratch prefix with the real binary,
//! the unit passes `systemd-analyze verify`, and the installed binary accepts the installed
//! config as the unit's ExecStartPre runs it.

use std::path::Path;
use std::process::Command;

#[test]
fn make_install_puts_a_unit_that_verifies_and_a_config_that_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path();
    let out = Command::new("make")
        .current_dir(root)
        .args(["-s", "install", "CARGO=true", "CREATE_USER=no"])
        .arg(format!("BIN={}", shardray_tests::bin_path().display()))
        .arg(format!("PREFIX={}", prefix.display()))
        .arg(format!("UNITDIR={}", prefix.join("units").display()))
        .output()
        .expect("run make");
    assert!(out.status.success(), "make install: {}", String::from_utf8_lossy(&out.stderr));
    let unit_path = prefix.join("units/shardray.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    let bin = prefix.join("bin/shardray");
    let config = prefix.join("etc/shardray/config.json");
    assert!(unit.contains(&format!(
        "ExecStart={} run -c {} --state /var/lib/shardray",
        bin.display(),
        config.display()
    )));
    for line in [
        "User=shardray",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=shardray",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing from the unit:\n{unit}");
    }
    // The reload checks the config before the signal.
    let check = format!("ExecReload={} test -c {}", bin.display(), config.display());
    assert!(unit.lines().any(|l| l == check), "{check} missing from the unit:\n{unit}");

    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .output()
        .expect("systemd-analyze (Debian's systemd package) must be installed for this test");
    let said = String::from_utf8_lossy(&verify.stderr).into_owned() + &String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success() && !said.contains("shardray.service"), "systemd-analyze verify:\n{said}");

    let check = Command::new(&bin).args(["test", "-c"]).arg(&config).output().unwrap();
    assert!(check.status.success(), "installed config: {}", String::from_utf8_lossy(&check.stderr));
}
