//! Echo runs through a proxy client (sing-box, V2Ray): byte-exact round trips of many sizes,
//! then a user's exact counters, read through the API.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use crate::api::ApiClient;
use crate::servers::EchoServer;
use crate::vless::payload;
use crate::{wait_until, Shardray};

/// Sends `data` through `stream` (writing on a second thread) and reads as many bytes back,
/// then half-closes and reads to the end (nothing more may come). sing-box's VMess client
/// closes the whole connection once its upload ends (no half-close through VMess), so the echo
/// is read before the client side finishes.
pub fn exchange(stream: TcpStream, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut write_half = stream.try_clone()?;
    let owned = data.to_vec();
    let writer = std::thread::spawn(move || -> io::Result<()> { write_half.write_all(&owned) });
    let mut got = vec![0u8; data.len()];
    let read = (&stream).read_exact(&mut got);
    writer.join().expect("writer thread")?;
    read?;
    stream.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    let _ = (&stream).read_to_end(&mut rest);
    got.extend_from_slice(&rest);
    Ok(got)
}

/// Echoes every size through `connect` (some one after another, the rest on 3 threads), every
/// byte checked; then user `email`'s counters must equal the payload, exactly.
pub fn echo_and_count(
    server: &Shardray,
    email: &str,
    sizes: &[usize],
    connect: &(dyn Fn(SocketAddr) -> io::Result<TcpStream> + Sync),
    log: &(dyn Fn() -> String + Sync),
) {
    let echo = EchoServer::start();
    let once = |i: usize| {
        let data = payload(sizes[i], i as u64);
        let got = connect(echo.addr())
            .and_then(|s| exchange(s, &data))
            .unwrap_or_else(|e| panic!("{email}: connection {i} ({} bytes): {e}\n{}", sizes[i], log()));
        assert_eq!(got.len(), data.len(), "{email}: connection {i}: echoed length\n{}", log());
        assert!(got == data, "{email}: connection {i}: echoed bytes differ");
    };
    let half = sizes.len() / 2;
    (0..half).for_each(once);
    std::thread::scope(|s| {
        for t in 0..3 {
            let once = &once;
            s.spawn(move || (half..sizes.len()).filter(|i| i % 3 == t).for_each(once));
        }
    });
    let total: i64 = sizes.iter().map(|&n| n as i64).sum();
    let api = ApiClient::connect(server.api.unwrap());
    let (up, down) = (format!("user>>>{email}>>>traffic>>>uplink"), format!("user>>>{email}>>>traffic>>>downlink"));
    let mut last = Default::default();
    let settled = wait_until(Duration::from_secs(5), || {
        last = api.query(&format!("user>>>{email}>>>traffic"), false);
        last.get(&up) == Some(&total) && last.get(&down) == Some(&total)
    });
    assert!(settled, "{email}'s counters should be {total} each way, got {last:?}");
}
