//! A small fixed pool of threads for the store's CPU-bound work (chunking, hashing,
//! compressing, sealing and decoding blobs), one thread per core.
//!
//! Tokio's blocking pool grows to as many threads as there are blocking calls waiting (up to
//! 512), and every thread that allocates gets its own glibc malloc arena (up to 8 per core)
//! and its own zstd contexts; freed chunk buffers then stay cached in many arenas. Running the
//! chunk work on `available_parallelism()` long-lived threads bounds both, and never runs more
//! CPU-bound jobs at once than there are cores. I/O stays on tokio's blocking pool.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce() + Send + 'static>;

static POOL: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();

/// Threads in the pool: the cores this process may use (1 if unknown).
pub(crate) fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn sender() -> mpsc::Sender<Job> {
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        for i in 0..threads() {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("m365bk-store-cpu-{i}"))
                .spawn(move || loop {
                    // Take one job, then release the receiver before running it.
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(poisoned) => poisoned.into_inner().recv(),
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                })
                .expect("spawning a store compute thread");
        }
        Mutex::new(tx)
    })
    .lock()
    .unwrap_or_else(|p| p.into_inner())
    .clone()
}

/// Runs `f` on the compute pool and waits for its result without blocking the async thread.
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
    if sender().send(job).is_err() {
        return Err(Error::Internal {
            detail: "the store's compute threads are gone".into(),
        });
    }
    match rx.await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(panic)) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::Internal {
                detail: format!("background task failed: panicked: {what}"),
            })
        }
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
