//! shoes 0.3.2 (crates.io `shoes`, installed by `perf/peers.sh shoes`) as a REALITY client:
//! a SOCKS inbound whose connections go out as VLESS over REALITY.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::singbox::free_port;

/// The shoes binary: `$SHOES_BIN`, else where `perf/peers.sh shoes` installs it.
pub fn shoes_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SHOES_BIN") {
        return p.into();
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.peers/shoes/bin/shoes");
    if !path.exists() {
        panic!("shoes not found at {}: run `perf/peers.sh shoes` (make test does), or set SHOES_BIN", path.display());
    }
    path
}

/// What a shoes REALITY client presents.
pub struct RealityClient<'a> {
    /// The server's public key (unpadded base64url).
    pub public_key: &'a str,
    /// The short id, hex.
    pub short_id: &'a str,
    /// The server name sent.
    pub sni: &'a str,
    /// The VLESS user id.
    pub uuid: &'a str,
    /// XTLS Vision on the VLESS session.
    pub vision: bool,
    /// Trojan with this password inside REALITY instead of VLESS.
    pub trojan: Option<&'a str>,
}

/// A running shoes, killed on drop.
pub struct Shoes {
    child: Option<Child>,
    /// Where its listener (SOCKS, or the forwarding port) listens.
    pub socks: SocketAddr,
    dir: tempfile::TempDir,
}

impl Shoes {
    /// Starts shoes with a SOCKS inbound on a free port that sends everything to `server` as
    /// VLESS over REALITY; panics with its log if the port does not accept within 20 s.
    pub fn reality_client(server: SocketAddr, c: &RealityClient<'_>) -> Shoes {
        let inner = match c.trojan {
            Some(password) => format!("            type: trojan\n            password: {password:?}"),
            None => format!("            type: vless\n            user_id: \"{}\"", c.uuid),
        };
        Shoes::run("type: socks", server, c, &inner)
    }

    /// Starts shoes as a REALITY tunnel: every connection to its port (`socks` here) goes to
    /// `server` inside REALITY, its bytes passed through as they are (for a protocol shoes does
    /// not speak, such as gRPC from another client).
    pub fn reality_forwarder(server: SocketAddr, c: &RealityClient<'_>) -> Shoes {
        let listen = format!("type: portforward\n    targets: \"{server}\"");
        Shoes::run(&listen, server, c, "            type: portforward")
    }

    /// shoes with one listener (`listen`: its protocol lines) whose connections all go to
    /// `server` over REALITY (`c`) with the `inner` client protocol lines.
    fn run(listen: &str, server: SocketAddr, c: &RealityClient<'_>, inner: &str) -> Shoes {
        let port = free_port();
        let config = format!(
            r#"- address: "127.0.0.1:{port}"
  protocol:
    {listen}
  rules:
    - masks: "0.0.0.0/0"
      action: allow
      client_chain:
        address: "{server}"
        protocol:
          type: reality
          public_key: "{pbk}"
          short_id: "{sid}"
          sni_hostname: "{sni}"
          vision: {vision}
          protocol:
{inner}
"#,
            pbk = c.public_key,
            sid = c.short_id,
            sni = c.sni,
            vision = c.vision,
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("shoes.yaml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("shoes.log")).unwrap();
        let child = Command::new(shoes_bin())
            .args(["-t", "1", "--no-reload"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn shoes");
        let mut shoes = Shoes { child: Some(child), socks: SocketAddr::from(([127, 0, 0, 1], port)), dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect_timeout(&shoes.socks, Duration::from_millis(200)).is_ok() {
                return shoes;
            }
            if let Some(Ok(Some(status))) = shoes.child.as_mut().map(|c| c.try_wait()) {
                panic!("shoes exited ({status}) before listening:\n{}", shoes.log());
            }
            if Instant::now() > deadline {
                panic!("shoes did not open {} within 20 s:\n{}", shoes.socks, shoes.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What shoes printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("shoes.log")).unwrap_or_default()
    }
}

impl Drop for Shoes {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
