//! Long-running streams through a target, alongside what a scenario measures: each runs until
//! stopped, counting its bytes into a [`Meter`] sampled every 50 ms, optionally paced by the
//! client to a fixed rate. `churn` runs them beside its API calls, `throughput
//! --limits-for-others` as the other users' traffic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::client::{self, Client, Meter, StreamOutcome};
use crate::pattern::Request;

/// A request length no run reaches: the stream goes on until it is stopped.
pub const ENDLESS: u64 = 1 << 50;

/// Bytes of every stream at one instant.
pub struct Sample {
    /// When.
    pub at: Instant,
    /// Each stream's bytes so far.
    pub bytes: Vec<u64>,
}

/// Long-running streams through the target, sampled every 50 ms.
pub struct Traffic {
    meters: Vec<Arc<Meter>>,
    workers: Vec<JoinHandle<Result<StreamOutcome>>>,
    sampling: Arc<AtomicBool>,
    sampler: JoinHandle<Vec<Sample>>,
}

const SAMPLE_EVERY: Duration = Duration::from_millis(50);

impl Traffic {
    /// Starts one stream per `(client, request)` (requests of [`ENDLESS`] length run until
    /// stopped), each at nice `nice` and paced to `pace` bytes per second when given; a
    /// stream fails once `bound` has passed.
    pub fn start(streams: Vec<(Client, Request)>, nice: i32, bound: Duration, pace: Option<u64>) -> Result<Traffic> {
        let mut meters = Vec::with_capacity(streams.len());
        let mut workers = Vec::with_capacity(streams.len());
        for (i, (client, req)) in streams.into_iter().enumerate() {
            let meter = Arc::new(pace.map_or_else(Meter::default, Meter::paced));
            let m = Arc::clone(&meter);
            workers.push(thread::Builder::new().name(format!("traffic-{i}")).spawn(move || {
                if nice != 0 {
                    crate::sys::nice_this_thread(nice)?;
                }
                client.run_metered(req, bound, Some(&m))
            })?);
            meters.push(meter);
        }
        let sampling = Arc::new(AtomicBool::new(true));
        let (on, watched) = (Arc::clone(&sampling), meters.clone());
        let deadline = Instant::now() + bound;
        let sampler = thread::Builder::new().name("traffic-sampler".into()).spawn(move || {
            let mut samples = Vec::new();
            while on.load(Ordering::Relaxed) && Instant::now() < deadline {
                samples.push(Sample { at: Instant::now(), bytes: watched.iter().map(|m| m.bytes()).collect() });
                thread::sleep(SAMPLE_EVERY);
            }
            samples
        })?;
        Ok(Traffic { meters, workers, sampling, sampler })
    }

    /// Every stream's bytes so far, in the order they were started.
    pub fn bytes(&self) -> Vec<u64> {
        self.meters.iter().map(|m| m.bytes()).collect()
    }

    /// Stops every stream and the sampler; the samples, and each stream's failure if any.
    pub fn stop(self) -> (Vec<Sample>, Vec<String>) {
        self.sampling.store(false, Ordering::Relaxed);
        let samples = self.sampler.join().unwrap_or_default();
        for m in &self.meters {
            m.stop();
        }
        let mut errors = Vec::new();
        for (i, w) in self.workers.into_iter().enumerate() {
            match w.join() {
                Ok(Err(e)) if client::is_stopped(&e) => {}
                Ok(Err(e)) => errors.push(format!("stream {i}: {e:#}")),
                Ok(Ok(_)) => errors.push(format!("stream {i}: ended before it was stopped")),
                Err(_) => errors.push(format!("stream {i}: panicked")),
            }
        }
        (samples, errors)
    }
}

/// Throughput in Gbit/s between the first sample at or after `from` and the last at or
/// before `to`.
pub fn gbit_s(samples: &[Sample], from: Instant, to: Instant) -> f64 {
    let inside: Vec<&Sample> = samples.iter().filter(|s| s.at >= from && s.at <= to).collect();
    let (Some(first), Some(last)) = (inside.first(), inside.last()) else {
        return 0.0;
    };
    let secs = last.at.duration_since(first.at).as_secs_f64();
    let bytes: u64 = last.bytes.iter().sum::<u64>() - first.bytes.iter().sum::<u64>();
    if secs > 0.0 {
        bytes as f64 * 8.0 / 1e9 / secs
    } else {
        0.0
    }
}

/// The longest time any one stream's byte count stood still, between `from` and `to`.
pub fn longest_stall(samples: &[Sample], from: Instant, to: Instant) -> Duration {
    let inside: Vec<&Sample> = samples.iter().filter(|s| s.at >= from && s.at <= to).collect();
    let streams = inside.first().map_or(0, |s| s.bytes.len());
    let mut longest = Duration::ZERO;
    for i in 0..streams {
        let mut moved_at = inside[0].at;
        for pair in inside.windows(2) {
            if pair[1].bytes[i] != pair[0].bytes[i] {
                moved_at = pair[1].at;
            }
            longest = longest.max(pair[1].at.duration_since(moved_at));
        }
    }
    longest
}
