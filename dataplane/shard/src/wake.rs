//! Wake-ups that cross shards, made as reliable as the control thread's mailbox.
//!
//! A task that waits on a channel fed from another shard (an XHTTP session and the POSTs that
//! reach other shards, each way) is woken by that shard's thread through its `Waker`. glommio
//! 0.9 queues such a foreign wake safely but was seen to lose the notification that should
//! rouse a sleeping shard (see mailbox.rs), leaving the wake unprocessed for seconds. So each
//! shard has a doorbell socket, and a waker made here, when woken from another thread, also
//! rings its own shard's doorbell: the read completing in the shard's ring rouses it, and the
//! reactor drains its queued foreign wakes on every turn. A bell already rung and not yet
//! read is not rung again, so a busy handoff costs one write per wake-up of the shard, not
//! one per message.

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use futures_lite::AsyncReadExt;

/// One shard's doorbell: the writing end, and whether a ring is waiting to be read.
#[derive(Debug)]
struct Doorbell {
    ring: StdUnixStream,
    rung: AtomicBool,
}

impl Doorbell {
    fn ring(&self) {
        // AcqRel pairs with the reader's swap: a waker that finds the bell rung was queued
        // before the reader cleared it, so the reactor drains it on its next turn.
        if !self.rung.swap(true, Ordering::AcqRel) {
            // A full socket already has a ring waiting: nothing is lost by WouldBlock.
            let _ = (&self.ring).write(&[1]);
        }
    }
}

thread_local! {
    /// The doorbell of the shard running on this thread.
    static BELL: RefCell<Option<Arc<Doorbell>>> = const { RefCell::new(None) };
}

/// Gives this shard its doorbell and the task that answers it; called once per shard, on its
/// executor.
pub(crate) fn spawn_doorbell() -> io::Result<()> {
    let (ring, listen) = StdUnixStream::pair()?;
    ring.set_nonblocking(true)?;
    let bell = Arc::new(Doorbell { ring, rung: AtomicBool::new(false) });
    BELL.with(|b| *b.borrow_mut() = Some(bell.clone()));
    // SAFETY: the descriptor is our own connected socket, given up here.
    let mut listen = unsafe { glommio::net::UnixStream::from_raw_fd(listen.into_raw_fd()) };
    glommio::spawn_local(async move {
        let mut rings = [0u8; 64];
        // Reading is all it takes: the shard is awake, and its reactor processes the queued
        // wakes before it sleeps again.
        while let Ok(1..) = listen.read(&mut rings).await {
            bell.rung.swap(false, Ordering::AcqRel);
        }
    })
    .detach();
    Ok(())
}

/// A task's waker that also rings its shard's doorbell when woken from another thread.
struct ShardWaker {
    task: Waker,
    bell: Arc<Doorbell>,
}

impl Wake for ShardWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Queue the wake first, then ring: the ring's read finds it queued.
        self.task.wake_by_ref();
        let home = BELL.with(|b| b.borrow().as_ref().is_some_and(|b| Arc::ptr_eq(b, &self.bell)));
        if !home {
            self.bell.ring();
        }
    }
}

/// The waker to poll a cross-shard channel with, made once and reused while the task's own
/// waker stays the same (no allocation per poll).
#[derive(Default)]
pub(crate) struct CrossShardWaker(Option<(Waker, Waker)>);

impl CrossShardWaker {
    /// The waker for `cx`'s task: its own, wrapped so that a foreign wake rings this shard's
    /// doorbell (its own unchanged off a shard, where there is no doorbell).
    pub(crate) fn get(&mut self, cx: &Context<'_>) -> Waker {
        if let Some((task, wrapped)) = &self.0 {
            if task.will_wake(cx.waker()) {
                return wrapped.clone();
            }
        }
        let Some(bell) = BELL.with(|b| b.borrow().clone()) else { return cx.waker().clone() };
        let task = cx.waker().clone();
        let wrapped = Waker::from(Arc::new(ShardWaker { task: task.clone(), bell }));
        self.0 = Some((task, wrapped.clone()));
        wrapped
    }
}

/// Awaits `f`, which another shard may wake, with a [`CrossShardWaker`].
pub(crate) async fn across_shards<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut waker = CrossShardWaker::default();
    std::future::poll_fn(|cx| {
        let w = waker.get(cx);
        f.as_mut().poll(&mut Context::from_waker(&w))
    })
    .await
}
