//! Group commit: records that calls arriving together must each make durable before
//! they answer (audit events) are written together, in one durable write, by one
//! writer task.
//!
//! The guarantee a call gets is unchanged: [`GroupCommit::submit`] returns only once
//! the write that holds its record is durable, and with that write's error if it
//! failed. What changes is the cost: while one write is under way the records of the
//! calls that arrive meanwhile queue up, and the next write takes them all (up to
//! `max_batch`), so under load a write (a store round trip, a transaction, a hop to a
//! blocking thread) is paid once per batch instead of once per call. With one call at a
//! time, every batch is that call's record alone, written at once.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use crate::StoreError;

struct Pending<T> {
    record: T,
    durable: oneshot::Sender<Result<(), StoreError>>,
}

/// A queue of records and the task that writes them in batches. Cloning shares the
/// queue and the writer.
pub struct GroupCommit<T> {
    queue: mpsc::Sender<Pending<T>>,
}

impl<T> Clone for GroupCommit<T> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<T: Send + 'static> GroupCommit<T> {
    /// Starts the writer task (on the current Tokio runtime): `write` makes a batch of
    /// at most `max_batch` records durable, all or none.
    pub fn start<W, Fut>(max_batch: usize, write: W) -> Self
    where
        W: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), StoreError>> + Send,
    {
        let max_batch = max_batch.max(1);
        let (queue, mut arrivals) = mpsc::channel::<Pending<T>>(max_batch * 4);
        tokio::spawn(async move {
            while let Some(first) = arrivals.recv().await {
                let mut records = vec![first.record];
                let mut waiting = vec![first.durable];
                while records.len() < max_batch {
                    match arrivals.try_recv() {
                        Ok(next) => {
                            records.push(next.record);
                            waiting.push(next.durable);
                        }
                        Err(_) => break,
                    }
                }
                let written = write(records).await;
                for durable in waiting {
                    // A caller that went away does not mind.
                    let _ = durable.send(written.as_ref().map(|_| ()).map_err(shared));
                }
            }
        });
        Self { queue }
    }

    /// Hands `record` to the writer and waits until it is durable.
    pub async fn submit(&self, record: T) -> Result<(), StoreError> {
        let (durable, written) = oneshot::channel();
        self.queue
            .send(Pending { record, durable })
            .await
            .map_err(|_| StoreError::unavailable("the group-commit writer has stopped"))?;
        written
            .await
            .map_err(|_| StoreError::unavailable("the group-commit writer has stopped"))?
    }
}

/// One batch's error, as each of its callers gets it.
fn shared(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable { .. } => StoreError::unavailable(e.to_string()),
        StoreError::Duplicate(what) => StoreError::Duplicate(what),
        StoreError::Stale => StoreError::Stale,
        StoreError::NotFound(what) => StoreError::NotFound(what),
        StoreError::Backend { .. } => StoreError::backend(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_arriving_together_share_one_write_and_each_waits_for_it() {
        let writes: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let seen = writes.clone();
        let commit = GroupCommit::start(64, move |batch: Vec<u32>| {
            let seen = seen.clone();
            async move {
                // A slow durable write: the records arriving meanwhile queue up.
                tokio::time::sleep(Duration::from_millis(50)).await;
                seen.lock().unwrap().push(batch);
                Ok(())
            }
        });
        let calls: Vec<_> = (0..40)
            .map(|i| {
                let commit = commit.clone();
                let writes = writes.clone();
                tokio::spawn(async move {
                    commit.submit(i).await.unwrap();
                    // Answered only once a write holding this record is done.
                    assert!(writes.lock().unwrap().iter().flatten().any(|r| *r == i));
                })
            })
            .collect();
        for call in calls {
            call.await.unwrap();
        }
        let writes = writes.lock().unwrap();
        let mut all: Vec<u32> = writes.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..40).collect::<Vec<_>>(),
            "every record written once"
        );
        assert!(
            writes.len() < 40,
            "records arriving together shared writes: {} writes",
            writes.len()
        );
    }

    #[tokio::test]
    async fn a_failed_write_fails_every_call_in_its_batch() {
        let commit = GroupCommit::start(8, |_batch: Vec<u32>| async {
            Err(StoreError::unavailable("disk gone"))
        });
        let err = commit.submit(1).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    }
}
