//! An ordered, bounded, parallel map: the codec pool. Items are produced in order on the calling thread, processed
//! by `workers` threads (compress, encrypt, erasure-code, hash, and their store I/O), and handed to the sink in the
//! original order. At most `window` items are in flight, so memory stays bounded whatever the file size.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::mpsc;

use crate::error::{QsfsError, Result};

/// Worker threads for segment work: enough to keep every core encoding while others wait on stores.
pub fn default_workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores * 2).clamp(4, 16)
}

pub fn ordered_parallel<T, R>(
    workers: usize,
    window: usize,
    mut next: impl FnMut() -> Result<Option<T>>,
    work: impl Fn(T) -> Result<R> + Sync,
    mut sink: impl FnMut(R) -> Result<()>,
) -> Result<()>
where
    T: Send,
    R: Send,
{
    let workers = workers.max(1);
    let window = window.max(workers);
    let (job_tx, job_rx) = mpsc::sync_channel::<(u64, T)>(workers);
    let job_rx = Mutex::new(job_rx);
    let (res_tx, res_rx) = mpsc::channel::<(u64, Result<R>)>();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (job_rx, res_tx, work) = (&job_rx, res_tx.clone(), &work);
            scope.spawn(move || {
                loop {
                    let job = job_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((seq, item)) = job else { break };
                    if res_tx.send((seq, work(item))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(res_tx);
        let mut drive = || -> Result<()> {
            let (mut issued, mut emitted, mut input_done) = (0u64, 0u64, false);
            let mut pending: BTreeMap<u64, R> = BTreeMap::new();
            loop {
                while !input_done && issued - emitted < window as u64 {
                    match next()? {
                        Some(item) => {
                            job_tx.send((issued, item)).map_err(|_| {
                                QsfsError::Invalid("segment worker pool stopped".into())
                            })?;
                            issued += 1;
                        }
                        None => input_done = true,
                    }
                }
                if input_done && emitted == issued {
                    return Ok(());
                }
                let (seq, res) = res_rx
                    .recv()
                    .map_err(|_| QsfsError::Invalid("segment worker pool stopped".into()))?;
                pending.insert(seq, res?);
                while let Some(r) = pending.remove(&emitted) {
                    sink(r)?;
                    emitted += 1;
                }
            }
        };
        let out = drive();
        drop(job_tx); // lets the workers finish and exit before the scope joins them
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_stops_on_error() {
        let mut n = 0;
        let mut seen = Vec::new();
        ordered_parallel(
            4,
            8,
            || {
                n += 1;
                Ok((n <= 100).then_some(n))
            },
            |x| {
                std::thread::sleep(std::time::Duration::from_micros((x * 37 % 11) as u64 * 100));
                Ok(x * 2)
            },
            |r| {
                seen.push(r);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, (1..=100).map(|x| x * 2).collect::<Vec<_>>());

        let mut m = 0;
        let err = ordered_parallel(
            3,
            3,
            || {
                m += 1;
                Ok((m <= 50).then_some(m))
            },
            |x| {
                if x == 20 {
                    Err(QsfsError::Invalid("boom".into()))
                } else {
                    Ok(x)
                }
            },
            |_| Ok(()),
        );
        assert!(err.is_err());
    }
}
