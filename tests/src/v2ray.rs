//! V2Ray 4.45.2 as a real client: a socks inbound on a free loopback port whose connections
//! leave through one outbound of V2Ray's own JSON config.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::singbox::{free_port, socks5_connect};

/// A running V2Ray, killed on drop.
pub struct V2Ray {
    child: Option<Child>,
    /// Where its socks inbound listens.
    pub socks: SocketAddr,
    dir: tempfile::TempDir,
}

impl V2Ray {
    /// Starts V2Ray with a socks inbound on a free port and `outbound` (V2Ray's JSON) as its
    /// only outbound; panics with V2Ray's log if the socks port does not accept within 10 s.
    pub fn start(outbound: Value) -> V2Ray {
        V2Ray::start_routed(json!([outbound]), json!({}))
    }

    /// Like `start`, with several `outbounds` (the first the default) and a `routing` object.
    pub fn start_routed(outbounds: Value, routing: Value) -> V2Ray {
        let inbounds = json!([{ "listen": "127.0.0.1", "port": free_port(), "protocol": "socks",
                                "settings": { "auth": "noauth", "udp": false } }]);
        V2Ray::start_full(inbounds, outbounds, routing)
    }

    /// Starts V2Ray with `inbounds` as given (each on 127.0.0.1 with a `port`; the first one's
    /// is `socks`, and V2Ray is up once that one accepts), `outbounds` and `routing`.
    pub fn start_full(inbounds: Value, outbounds: Value, routing: Value) -> V2Ray {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = inbounds[0]["port"].as_u64().and_then(|p| u16::try_from(p).ok()).expect("inbounds[0].port");
        let config = json!({
            "log": { "loglevel": "warning" },
            "inbounds": inbounds,
            "outbounds": outbounds,
            "routing": routing,
        });
        let config_path = dir.path().join("v2ray.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let log = std::fs::File::create(dir.path().join("v2ray.log")).unwrap();
        let child = Command::new(crate::peers::v2ray())
            .arg("-config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn v2ray");
        let mut peer = V2Ray { child: Some(child), socks: SocketAddr::from(([127, 0, 0, 1], port)), dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect_timeout(&peer.socks, Duration::from_millis(200)).is_ok() {
                return peer;
            }
            if let Some(Ok(Some(status))) = peer.child.as_mut().map(|c| c.try_wait()) {
                panic!("v2ray exited ({status}) before listening:\n{}", peer.log());
            }
            if Instant::now() > deadline {
                panic!("v2ray did not open {} in time:\n{}", peer.socks, peer.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What V2Ray printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("v2ray.log")).unwrap_or_default()
    }

    /// Opens a SOCKS5 CONNECT through this V2Ray to `dest`.
    pub fn connect(&self, dest: SocketAddr) -> io::Result<TcpStream> {
        socks5_connect(self.socks, dest)
    }
}

impl Drop for V2Ray {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
