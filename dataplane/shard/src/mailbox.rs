//! The control thread's way into a shard: a command queue plus a doorbell socket.
//!
//! The shard sleeps in io_uring; a command is pushed on the queue and one byte is written to
//! the doorbell, whose read completes in the shard's ring and wakes it. (Waking a glommio task
//! from a foreign thread through its `Waker` alone was seen to be lost under load in glommio
//! 0.9, leaving a command unapplied for seconds; a socket read cannot be missed.)

use std::io::{self, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;

use crossbeam_channel::{unbounded, Receiver, Sender, TryRecvError};
use futures_lite::AsyncReadExt;

use crate::ShardCommand;

/// The shard is gone: its queue or doorbell is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardGone;

/// The control thread's end: cloneable, `Send`.
#[derive(Debug, Clone)]
pub struct ShardMailbox {
    tx: Sender<ShardCommand>,
    bell: Arc<StdUnixStream>,
}

/// The shard's end before it reaches its executor: `Send`.
#[derive(Debug)]
pub struct MailboxReceiver {
    rx: Receiver<ShardCommand>,
    bell: StdUnixStream,
}

/// A new mailbox.
pub fn mailbox() -> io::Result<(ShardMailbox, MailboxReceiver)> {
    let (ring, listen) = StdUnixStream::pair()?;
    // A full doorbell already has a wake-up pending: the control side never blocks on it.
    ring.set_nonblocking(true)?;
    let (tx, rx) = unbounded();
    Ok((ShardMailbox { tx, bell: Arc::new(ring) }, MailboxReceiver { rx, bell: listen }))
}

impl ShardMailbox {
    /// Queues a command and rings the doorbell.
    pub fn send(&self, command: ShardCommand) -> Result<(), ShardGone> {
        self.tx.send(command).map_err(|_| ShardGone)?;
        match (&*self.bell).write(&[1]) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(_) => Err(ShardGone),
        }
    }
}

/// The shard's end on its executor.
pub(crate) struct ConnectedMailbox {
    rx: Receiver<ShardCommand>,
    bell: glommio::net::UnixStream,
}

impl MailboxReceiver {
    /// Binds the receiving end to the current shard's executor.
    pub(crate) fn connect(self) -> ConnectedMailbox {
        // SAFETY: the descriptor is our own connected socket, given up here.
        let bell = unsafe { glommio::net::UnixStream::from_raw_fd(self.bell.into_raw_fd()) };
        ConnectedMailbox { rx: self.rx, bell }
    }
}

impl ConnectedMailbox {
    /// The next command, or `None` once the control side is gone.
    pub(crate) async fn recv(&mut self) -> Option<ShardCommand> {
        let mut rings = [0u8; 64];
        loop {
            match self.rx.try_recv() {
                Ok(command) => return Some(command),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            // Queue first, doorbell second: a command pushed after the check above has its
            // byte waiting, so this read returns at once.
            match self.bell.read(&mut rings).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}
