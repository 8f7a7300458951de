//! sing-box as a real VLESS client: a socks inbound on a free loopback port whose connections
//! leave through one VLESS outbound, plus a small SOCKS5 client to drive it.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long sing-box gets to open its socks port.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A sing-box VLESS outbound to `server` for user `uuid`; `tls` is merged in as the outbound's
/// `tls` object when given.
pub fn vless_outbound(server: SocketAddr, uuid: &str, tls: Option<Value>) -> Value {
    let mut out = json!({
        "type": "vless",
        "tag": "vless-out",
        "server": server.ip().to_string(),
        "server_port": server.port(),
        "uuid": uuid,
    });
    if let Some(tls) = tls {
        out["tls"] = tls;
    }
    out
}

/// A sing-box Trojan outbound to `server` for the user with `password`; `tls` is merged in as
/// the outbound's `tls` object when given.
pub fn trojan_outbound(server: SocketAddr, password: &str, tls: Option<Value>) -> Value {
    let mut out = json!({
        "type": "trojan",
        "tag": "trojan-out",
        "server": server.ip().to_string(),
        "server_port": server.port(),
        "password": password,
    });
    if let Some(tls) = tls {
        out["tls"] = tls;
    }
    out
}

/// A sing-box VMess outbound (alterId 0) to `server` for user `uuid` with `security`;
/// `extra` fields (`global_padding`, `authenticated_length`, `tls`) are merged in.
pub fn vmess_outbound(server: SocketAddr, uuid: &str, security: &str, extra: Value) -> Value {
    let mut out = json!({
        "type": "vmess",
        "tag": "vmess-out",
        "server": server.ip().to_string(),
        "server_port": server.port(),
        "uuid": uuid,
        "security": security,
        "alter_id": 0,
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        out[k] = v.clone();
    }
    out
}

/// A sing-box Shadowsocks outbound to `server` with `method` and `password` (for a 2022
/// multi-user server, `serverPSK:userPSK`).
pub fn shadowsocks_outbound(server: SocketAddr, method: &str, password: &str) -> Value {
    json!({
        "type": "shadowsocks",
        "tag": "ss-out",
        "server": server.ip().to_string(),
        "server_port": server.port(),
        "method": method,
        "password": password,
    })
}

/// The `tls` object of a sing-box outbound that skips verification and sends `server_name`.
pub fn insecure_tls(server_name: &str) -> Value {
    json!({ "enabled": true, "insecure": true, "server_name": server_name })
}

/// A running sing-box, killed on drop.
pub struct SingBox {
    child: Option<Child>,
    /// Where its socks inbound listens.
    pub socks: SocketAddr,
    dir: tempfile::TempDir,
}

impl SingBox {
    /// Starts sing-box with a socks inbound on a free port and `outbound` as its only outbound;
    /// panics with sing-box's log if the socks port does not accept within 10 s.
    pub fn start(outbound: Value) -> SingBox {
        let port = free_port();
        let config = json!({
            "log": { "level": "warn" },
            "inbounds": [
                { "type": "socks", "tag": "socks-in", "listen": "127.0.0.1", "listen_port": port }
            ],
            "outbounds": [outbound],
        });
        SingBox::run(config, port)
    }

    /// Starts sing-box as a server: `inbound` (its `listen_port` set to a free port here) and
    /// a direct outbound. `socks` is then the inbound's address.
    pub fn serve(mut inbound: Value) -> SingBox {
        let port = free_port();
        inbound["listen"] = json!("127.0.0.1");
        inbound["listen_port"] = json!(port);
        let config = json!({
            "log": { "level": "warn" },
            "inbounds": [inbound],
            "outbounds": [{ "type": "direct", "tag": "direct" }],
        });
        SingBox::run(config, port)
    }

    /// Runs sing-box with `config` until `port` on 127.0.0.1 accepts.
    fn run(config: Value, port: u16) -> SingBox {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("sing-box.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let log = std::fs::File::create(dir.path().join("sing-box.log")).unwrap();
        let child = Command::new(crate::peers::sing_box())
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .arg("-D")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn sing-box");
        let mut sb = SingBox { child: Some(child), socks: SocketAddr::from(([127, 0, 0, 1], port)), dir };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&sb.socks, Duration::from_millis(200)).is_ok() {
                return sb;
            }
            if let Some(Ok(Some(status))) = sb.child.as_mut().map(|c| c.try_wait()) {
                panic!("sing-box exited ({status}) before listening:\n{}", sb.log());
            }
            if Instant::now() > deadline {
                panic!("sing-box did not open {} within {START_TIMEOUT:?}:\n{}", sb.socks, sb.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What sing-box printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sing-box.log")).unwrap_or_default()
    }

    /// Opens a SOCKS5 CONNECT through this sing-box to `dest`.
    pub fn connect(&self, dest: SocketAddr) -> io::Result<TcpStream> {
        socks5_connect(self.socks, dest)
    }
}

impl Drop for SingBox {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SOCKS5 without authentication: greets `proxy`, asks it to CONNECT to the IPv4 `dest`, and
/// returns the stream once the proxy answered success (read and write timeouts set to 20 s).
pub fn socks5_connect(proxy: SocketAddr, dest: SocketAddr) -> io::Result<TcpStream> {
    let IpAddr::V4(ip) = dest.ip() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "IPv4 destinations only"));
    };
    let mut s = TcpStream::connect_timeout(&proxy, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_write_timeout(Some(Duration::from_secs(20)))?;
    s.set_nodelay(true)?;
    s.write_all(&[5, 1, 0])?;
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice)?;
    if choice != [5, 0] {
        return Err(io::Error::other(format!("socks greeting refused: {choice:?}")));
    }
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&ip.octets());
    req.extend_from_slice(&dest.port().to_be_bytes());
    s.write_all(&req)?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply)?;
    if reply[0] != 5 || reply[1] != 0 {
        return Err(io::Error::other(format!("socks connect failed: {reply:?}")));
    }
    if reply[3] != 1 {
        return Err(io::Error::other(format!("socks reply with address type {} (expected IPv4)", reply[3])));
    }
    Ok(s)
}
