//! Inbounds: the accept loop of each listener and the protocol handshakes behind it.

mod dokodemo;
mod fallback;
mod vless;

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

use futures_lite::{AsyncRead, AsyncWrite};
use futures_rustls::TlsAcceptor;
use glommio::net::{TcpListener, TcpStream};
use shardray_core::spec::LogLevel;

use crate::ctx::{InboundKind, InboundRt, LiveGuard, ShardCtx};

/// What an inbound handler knows about the connection beyond its bytes.
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    /// The TLS server name the client sent, if any.
    pub(crate) sni: Option<String>,
    /// The ALPN protocol agreed, if any.
    pub(crate) alpn: Option<Vec<u8>>,
    /// The client's socket when the protocol reads it directly (no TLS), so that the relay may
    /// splice it; `None` when anything transforms the bytes in between.
    pub(crate) plain_fd: Option<RawFd>,
}

/// Accepts connections on one inbound's listener until the task is cancelled.
pub(crate) async fn accept_loop(ctx: Rc<ShardCtx>, inbound: Rc<InboundRt>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                // Boxed once here, so the layers above the relay pass a pointer down instead
                // of each keeping its own copy of the stream in the session's task.
                let stream = Box::new(stream);
                let ctx = ctx.clone();
                let inbound = inbound.clone();
                glommio::spawn_local(async move {
                    let _live = LiveGuard::new(&ctx);
                    serve(&ctx, &inbound, stream).await;
                })
                .detach();
            }
            Err(e) => {
                // Out of descriptors or memory: back off briefly instead of spinning.
                ctx.log.error(LogLevel::Warning, format_args!("[{}] accept failed: {}", inbound.tag, e));
                glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Runs one accepted connection: TLS if configured, then the inbound's protocol.
async fn serve(ctx: &Rc<ShardCtx>, inbound: &InboundRt, stream: Box<TcpStream>) {
    let (peer, local) = match (stream.peer_addr(), stream.local_addr()) {
        (Ok(p), Ok(l)) => (p, l),
        _ => return,
    };
    let _ = stream.set_nodelay(true);
    let info = ConnInfo { peer, local, sni: None, alpn: None, plain_fd: Some(stream.as_raw_fd()) };
    match &inbound.tls {
        None => dispatch(ctx, inbound, stream, &info).await,
        // Boxed: a TLS session's state is several times a plain one's, and a plain session
        // would otherwise carry room for it for as long as it lives.
        Some(acceptor) => Box::pin(serve_tls(ctx, inbound, acceptor, stream, info)).await,
    }
}

/// The TLS handshake (bounded by the level-0 handshake timeout), then the inbound's protocol.
async fn serve_tls(
    ctx: &Rc<ShardCtx>,
    inbound: &InboundRt,
    acceptor: &TlsAcceptor,
    stream: Box<TcpStream>,
    info: ConnInfo,
) {
    let peer = info.peer;
    let handshake = ctx.policy(0).handshake;
    // Records out in one syscall, and in by large reads (see `TlsTcp`).
    let stream = crate::transport::tls_tcp::TlsTcp::new(stream);
    let accepted = futures_lite::future::or(async { Some(acceptor.accept(stream).await) }, async {
        glommio::timer::sleep(handshake).await;
        None
    })
    .await;
    match accepted {
        Some(Ok(tls)) => {
            let (_, conn) = tls.get_ref();
            let info = ConnInfo {
                sni: conn.server_name().map(str::to_owned),
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                plain_fd: None,
                ..info
            };
            dispatch(ctx, inbound, tls, &info).await
        }
        Some(Err(e)) => {
            ctx.log.error(LogLevel::Info, format_args!("[{}] {} TLS handshake failed: {}", inbound.tag, peer, e))
        }
        None => ctx.log.error(LogLevel::Info, format_args!("[{}] {} TLS handshake timed out", inbound.tag, peer)),
    }
}

async fn dispatch<S>(ctx: &Rc<ShardCtx>, inbound: &InboundRt, stream: S, info: &ConnInfo)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match &inbound.kind {
        InboundKind::Vless { users, fallbacks } => vless::serve(ctx, inbound, users, fallbacks, stream, info).await,
        InboundKind::Dokodemo(spec) => dokodemo::serve(ctx, inbound, spec, stream, info).await,
    }
}
