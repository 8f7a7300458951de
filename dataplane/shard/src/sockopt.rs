//! `streamSettings.sockopt` on a socket: an inbound's listeners (control binds them) and an
//! outbound's dialed sockets (the shards' dials, see `outbound::resolve`).

use std::time::Duration;

use shardray_core::spec::SocketOptions;
use socket2::Socket;

/// Which end the socket is: options such as TCP Fast Open mean different calls on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Listener,
    Dialer,
    /// A UDP socket: only the options that are not TCP's (the interface, the mark).
    Datagram,
}

/// Sets `opts` on `socket` before it binds (a listener: the connections it accepts inherit
/// them) or connects (a dialer: an outbound's `sockopt`). Each failure names the option.
pub fn apply(socket: &Socket, opts: &SocketOptions, side: Side) -> std::io::Result<()> {
    let named = |what: &str| {
        let what = what.to_owned();
        move |e: std::io::Error| std::io::Error::new(e.kind(), format!("sockopt {what}: {e}"))
    };
    if let Some(interface) = &opts.interface {
        socket.bind_device(Some(interface.as_bytes())).map_err(named(&format!("interface {interface:?}")))?;
    }
    if opts.v6_only && side == Side::Listener {
        socket.set_only_v6(true).map_err(named("v6only"))?;
    }
    if opts.mark != 0 {
        socket.set_mark(opts.mark).map_err(named("mark"))?;
    }
    if side == Side::Datagram {
        return Ok(());
    }
    if let Some(c) = &opts.congestion {
        socket.set_tcp_congestion(c.as_bytes()).map_err(named(&format!("tcpCongestion {c:?}")))?;
    }
    if opts.keep_alive_idle.is_some() || opts.keep_alive_interval.is_some() {
        let mut keepalive = socket2::TcpKeepalive::new();
        if let Some(idle) = opts.keep_alive_idle {
            keepalive = keepalive.with_time(Duration::from_secs(idle.into()));
        }
        if let Some(interval) = opts.keep_alive_interval {
            keepalive = keepalive.with_interval(Duration::from_secs(interval.into()));
        }
        socket.set_tcp_keepalive(&keepalive).map_err(named("tcpKeepAlive"))?;
    }
    if let Some(ms) = opts.user_timeout_ms {
        socket.set_tcp_user_timeout(Some(Duration::from_millis(ms.into()))).map_err(named("tcpUserTimeout"))?;
    }
    if let Some(mss) = opts.max_segment {
        socket.set_mss(mss).map_err(named("tcpMaxSeg"))?;
    }
    // A listener takes a TFO queue length; a dialer sends its first bytes with the SYN when
    // the server has given it a cookie before.
    let fast_open = match side {
        Side::Listener => (libc::TCP_FASTOPEN, opts.tcp_fast_open),
        Side::Dialer | Side::Datagram => (libc::TCP_FASTOPEN_CONNECT, opts.tcp_fast_open.map(|q| u32::from(q > 0))),
    };
    let int_options =
        [(libc::TCP_WINDOW_CLAMP, opts.window_clamp, "tcpWindowClamp"), (fast_open.0, fast_open.1, "tcpFastOpen")];
    for (option, value, what) in int_options {
        if let Some(value) = value {
            set_tcp_int(socket, option, value).map_err(named(what))?;
        }
    }
    Ok(())
}

/// setsockopt(IPPROTO_TCP, option, value) for the options socket2 has no call for.
fn set_tcp_int(socket: &Socket, option: libc::c_int, value: u32) -> std::io::Result<()> {
    let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: the fd is a live socket owned by `socket`, and the option value is a c_int whose
    // size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::IPPROTO_TCP,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
