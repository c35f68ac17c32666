//! A small fixed pool of threads for the store's CPU-bound work (chunking, hashing,
//! compressing, sealing and decoding blobs), one thread per core.
//!
//! Tokio's blocking pool grows to as many threads as there are blocking calls waiting (up to
//! 512), and every thread that allocates gets its own glibc malloc arena (up to 8 per core)
//! and its own zstd contexts; freed chunk buffers then stay cached in many arenas. Running the
//! chunk work on `available_parallelism()` long-lived threads bounds both, and never runs more
//! CPU-bound jobs at once than there are cores. I/O stays on tokio's blocking pool.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, OnceLock};

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Two queues: a thread takes an urgent job (one a task is waiting for: cutting a writer's
/// buffer, sealing a pack, decoding a blob) before a background one (compressing blobs
/// already claimed), so writers get their chunk ids back while compression keeps the
/// threads busy.
#[derive(Default)]
struct Queues {
    urgent: VecDeque<Job>,
    background: VecDeque<Job>,
}

struct Pool {
    queues: Mutex<Queues>,
    ready: Condvar,
}

static POOL: OnceLock<Pool> = OnceLock::new();

/// Threads in the pool: the cores this process may use (1 if unknown).
pub(crate) fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        for i in 0..threads() {
            std::thread::Builder::new()
                .name(format!("m365bk-store-cpu-{i}"))
                .spawn(work)
                .expect("spawning a store compute thread");
        }
        Pool {
            queues: Mutex::new(Queues::default()),
            ready: Condvar::new(),
        }
    })
}

/// A pool thread: takes one job at a time, urgent first, and runs it without the lock.
fn work() {
    let pool = pool();
    loop {
        let job = {
            let mut queues = pool.queues.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(job) = queues.urgent.pop_front() {
                    break job;
                }
                if let Some(job) = queues.background.pop_front() {
                    break job;
                }
                queues = pool.ready.wait(queues).unwrap_or_else(|p| p.into_inner());
            }
        };
        // A panicking job is caught by its wrapper (`run`, `spawn_background`).
        job();
    }
}

fn submit(job: Job, urgent: bool) {
    let pool = pool();
    {
        let mut queues = pool.queues.lock().unwrap_or_else(|p| p.into_inner());
        if urgent {
            queues.urgent.push_back(job);
        } else {
            queues.background.push_back(job);
        }
    }
    pool.ready.notify_one();
}

/// Queues `f` as a background job (run when no urgent job waits, in submission order with the
/// other background jobs) and returns at once. A panic in `f` is caught and logged; whatever `f`
/// owns is dropped (so guards it holds see the failure).
pub(crate) fn spawn_background<F>(f: F)
where
    F: FnOnce() + Send + 'static,
{
    submit(
        Box::new(move || {
            if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                tracing::error!(panic = %panic_text(&*panic), "store background job panicked");
            }
        }),
        false,
    );
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs `f` on the compute pool (an urgent job) and waits for its result without blocking the
/// async thread.
///
/// # Errors
/// [`Error::Internal`] if `f` panicked (the panic is caught; the pool thread lives on).
pub(crate) async fn run<R, F>(f: F) -> Result<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(out);
    });
    submit(job, true);
    match rx.await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(panic)) => Err(Error::Internal {
            detail: format!("background task failed: panicked: {}", panic_text(&*panic)),
        }),
        Err(_) => Err(Error::Internal {
            detail: "background task failed: dropped without a result".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_jobs_and_survives_a_panic() {
        assert_eq!(run(|| 6 * 7).await.unwrap(), 42);
        let err = run(|| -> u32 { panic!("boom") }).await.unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        // The pool still works after the panic, with every thread.
        let results: Vec<usize> =
            futures::future::try_join_all((0..threads() * 4).map(|i| run(move || i * 2)))
                .await
                .unwrap();
        assert_eq!(
            results,
            (0..threads() * 4).map(|i| i * 2).collect::<Vec<_>>()
        );
    }
}
