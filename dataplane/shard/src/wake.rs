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

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::{Duration, Instant};

    use super::*;

    /// A rung bell is not rung again until its reader has taken the ring: one byte per
    /// wake-up of the shard, however many wakes come meanwhile.
    #[test]
    fn a_bell_rings_once_until_it_is_read() {
        let (ring, mut listen) = StdUnixStream::pair().unwrap();
        ring.set_nonblocking(true).unwrap();
        listen.set_nonblocking(true).unwrap();
        let bell = Doorbell { ring, rung: AtomicBool::new(false) };
        for _ in 0..3 {
            bell.ring();
        }
        let mut b = [0u8; 8];
        assert_eq!(listen.read(&mut b).unwrap(), 1);
        bell.rung.swap(false, Ordering::AcqRel);
        bell.ring();
        assert_eq!(listen.read(&mut b).unwrap(), 1);
    }

    /// A task on a glommio executor, woken by another thread through its cross-shard waker,
    /// runs again, and the wake rang the executor's doorbell; the waker made once is reused
    /// for the task's later polls.
    #[test]
    fn a_task_woken_from_another_thread_runs_again_and_rings_its_doorbell() {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().unwrap();
        ex.run(async {
            spawn_doorbell().unwrap();
            let bell = BELL.with(|b| b.borrow().clone()).unwrap();
            let (tx, rx) = std::sync::mpsc::channel::<Waker>();
            // Whether the bell was rung right after each wake (its reader clears it soon
            // after), and whether each waker was the one before.
            let waker_thread = std::thread::spawn(move || {
                let (mut rung, mut same, mut last): (usize, usize, Option<Waker>) = (0, 0, None);
                for waker in rx {
                    std::thread::sleep(Duration::from_millis(20));
                    same += usize::from(last.as_ref().is_some_and(|l| l.will_wake(&waker)));
                    waker.wake_by_ref();
                    rung += usize::from(bell.rung.load(Ordering::Acquire));
                    last = Some(waker);
                }
                (rung, same)
            });
            let mut cache = CrossShardWaker::default();
            for _ in 0..20 {
                let started = Instant::now();
                let mut sent = false;
                std::future::poll_fn(|cx| {
                    if sent {
                        return std::task::Poll::Ready(());
                    }
                    sent = true;
                    tx.send(cache.get(cx)).unwrap();
                    std::task::Poll::Pending
                })
                .await;
                assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
            }
            drop(tx);
            let (rung, same) = waker_thread.join().unwrap();
            assert!(rung > 0, "no wake rang the doorbell");
            assert_eq!(same, 19, "the wrapped waker is made once per task waker");
        });
    }
}
