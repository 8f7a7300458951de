//! dokodemo-door: every connection goes to one configured destination.

use std::rc::Rc;

use futures_lite::{AsyncRead, AsyncWrite};
use shardray_core::spec::DokodemoSpec;

use super::ConnInfo;
use crate::ctx::{InboundRt, ShardCtx};
use crate::outbound::{forward, Session};

pub(super) async fn serve<S>(
    ctx: &Rc<ShardCtx>,
    inbound: &InboundRt,
    spec: &DokodemoSpec,
    mut stream: S,
    info: &ConnInfo,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let session = Session {
        inbound,
        peer: info.peer,
        user: None,
        level: spec.user_level,
        dest: spec.destination.clone(),
        client_fd: info.plain_fd,
    };
    forward(ctx, &mut stream, session, &[], &[]).await;
}
