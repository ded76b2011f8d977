//! The in-process communicator: ranks are threads of one process.
//!
//! Each collective is a numbered round. A rank deposits its contribution in
//! the round's slot and waits (with a timeout) until every rank has; then each
//! rank reads all contributions and computes the result itself, in rank order,
//! so every rank gets the same bits. The last reader frees the slot. An abort
//! (or a timeout) marks the whole group failed and wakes every waiter.

use crate::comm::Communicator;
use crate::error::RuntimeError;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a collective waits for the other ranks by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug)]
enum Payload {
    Bytes(Vec<u8>),
    F32(Vec<f32>),
}

#[derive(Debug)]
struct Round {
    what: &'static str,
    step: usize,
    parts: Vec<Option<Arc<Payload>>>,
    readers: usize,
}

#[derive(Debug, Clone)]
struct Failure {
    rank: usize,
    step: usize,
    reason: String,
}

#[derive(Debug, Default)]
struct Board {
    rounds: BTreeMap<u64, Round>,
    failure: Option<Failure>,
}

#[derive(Debug)]
struct Group {
    world: usize,
    timeout: Duration,
    board: Mutex<Board>,
    changed: Condvar,
}

impl Group {
    /// Locks the board; a poisoned lock (a rank panicked while holding it)
    /// still holds consistent data because every update is a single assignment.
    fn lock(&self) -> MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, rank: usize, step: usize, reason: &str) {
        let mut board = self.lock();
        if board.failure.is_none() {
            board.failure = Some(Failure { rank, step, reason: reason.to_string() });
        }
        drop(board);
        self.changed.notify_all();
    }
}

/// One rank's handle on an in-process group.
#[derive(Debug)]
pub struct LocalComm {
    rank: usize,
    group: Arc<Group>,
    round: u64,
}

/// A handle that can only abort the group (kept by the launcher).
#[derive(Debug, Clone)]
pub struct Aborter {
    rank: usize,
    group: Arc<Group>,
}

impl Aborter {
    /// Marks the group failed by this rank at `step`.
    pub fn abort(&self, step: usize, reason: &str) {
        self.group.fail(self.rank, step, reason);
    }
}

impl LocalComm {
    /// A group of `world` connected handles, one per rank, in rank order.
    pub fn group(world: usize, timeout: Duration) -> Vec<LocalComm> {
        let group = Arc::new(Group { world, timeout, board: Mutex::new(Board::default()), changed: Condvar::new() });
        (0..world).map(|rank| LocalComm { rank, group: group.clone(), round: 0 }).collect()
    }

    /// A handle that aborts this rank's group.
    pub fn aborter(&self) -> Aborter {
        Aborter { rank: self.rank, group: self.group.clone() }
    }

    fn peer_failed(&self, f: &Failure) -> RuntimeError {
        RuntimeError::PeerFailed { rank: f.rank, step: f.step, reason: f.reason.clone(), seen_by: self.rank }
    }

    /// Deposits `mine` in this rank's next round and returns every rank's part.
    fn exchange(&mut self, what: &'static str, step: usize, mine: Payload) -> Result<Vec<Arc<Payload>>, RuntimeError> {
        let group = self.group.clone();
        let world = group.world;
        let id = self.round;
        self.round += 1;
        let deadline = Instant::now() + group.timeout;
        let mut board = group.lock();
        if let Some(f) = &board.failure {
            return Err(self.peer_failed(f));
        }
        let round =
            board.rounds.entry(id).or_insert_with(|| Round { what, step, parts: vec![None; world], readers: 0 });
        if round.what != what || round.step != step {
            let detail = format!(
                "rank {} called {what} for step {step} while another rank called {} for step {}",
                self.rank, round.what, round.step
            );
            drop(board);
            group.fail(self.rank, step, &detail);
            return Err(RuntimeError::Collective { rank: self.rank, step, detail });
        }
        round.parts[self.rank] = Some(Arc::new(mine));
        group.changed.notify_all();
        loop {
            if let Some(f) = &board.failure {
                return Err(self.peer_failed(f));
            }
            let round = board.rounds.get_mut(&id).expect("a round lives until its last reader leaves");
            if round.parts.iter().all(Option::is_some) {
                let parts: Vec<Arc<Payload>> = round.parts.iter().flatten().cloned().collect();
                round.readers += 1;
                if round.readers == world {
                    board.rounds.remove(&id);
                }
                return Ok(parts);
            }
            let now = Instant::now();
            if now >= deadline {
                let missing: Vec<usize> = (0..world).filter(|&r| round.parts[r].is_none()).collect();
                drop(board);
                let reason = format!("did not reach {what} within {:.1} s", group.timeout.as_secs_f64());
                group.fail(missing[0], step, &reason);
                return Err(RuntimeError::Timeout {
                    rank: self.rank,
                    step,
                    what,
                    seconds: group.timeout.as_secs_f64(),
                    missing,
                });
            }
            board = group.changed.wait_timeout(board, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

impl Communicator for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.group.world
    }

    fn all_gather(&mut self, step: usize, local: &[u8], sizes: &[usize]) -> Result<Vec<Vec<u8>>, RuntimeError> {
        let parts = self.exchange("all-gather", step, Payload::Bytes(local.to_vec()))?;
        let mut out = Vec::with_capacity(parts.len());
        for (r, p) in parts.iter().enumerate() {
            match &**p {
                Payload::Bytes(b) if sizes.get(r) == Some(&b.len()) => out.push(b.clone()),
                Payload::Bytes(b) => {
                    return Err(RuntimeError::Collective {
                        rank: self.rank,
                        step,
                        detail: format!("rank {r} sent {} bytes, expected {:?}", b.len(), sizes.get(r)),
                    })
                }
                Payload::F32(_) => unreachable!("rounds are checked to be of one kind"),
            }
        }
        Ok(out)
    }

    fn all_reduce_sum(&mut self, step: usize, buf: &mut [f32]) -> Result<(), RuntimeError> {
        let parts = self.exchange("all-reduce", step, Payload::F32(buf.to_vec()))?;
        // Fixed order: ((p0 + p1) + p2) + ..., the same on every rank.
        for (r, p) in parts.iter().enumerate() {
            let Payload::F32(v) = &**p else { unreachable!("rounds are checked to be of one kind") };
            if v.len() != buf.len() {
                return Err(RuntimeError::Collective {
                    rank: self.rank,
                    step,
                    detail: format!("rank {r} reduced {} values, this rank {}", v.len(), buf.len()),
                });
            }
            if r == 0 {
                buf.copy_from_slice(v);
            } else {
                buf.iter_mut().zip(v).for_each(|(a, b)| *a += *b);
            }
        }
        Ok(())
    }

    fn abort(&mut self, step: usize, reason: &str) {
        self.group.fail(self.rank, step, reason);
    }
}

/// Runs `f` on `world` rank threads connected by an in-process group and
/// returns each rank's result, in rank order.
///
/// A rank that returns an error or panics aborts the group, so the other
/// ranks' collectives fail promptly instead of waiting.
pub fn run_local<T, F>(world: usize, timeout: Duration, f: F) -> Vec<Result<T, RuntimeError>>
where
    T: Send,
    F: Fn(LocalComm) -> Result<T, RuntimeError> + Sync,
{
    let comms = LocalComm::group(world, timeout);
    std::thread::scope(|scope| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                let f = &f;
                let aborter = comm.aborter();
                scope.spawn(move || {
                    let rank = aborter.rank;
                    match catch_unwind(AssertUnwindSafe(|| f(comm))) {
                        Ok(Ok(v)) => Ok(v),
                        Ok(Err(e)) => {
                            aborter.abort(e.step().unwrap_or(0), &e.to_string());
                            Err(e)
                        }
                        Err(panic) => {
                            let message = panic_message(panic.as_ref());
                            aborter.abort(0, &format!("panicked: {message}"));
                            Err(RuntimeError::Panic { rank, step: 0, message })
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(RuntimeError::Config("rank thread lost".into()))))
            .collect()
    })
}

/// The text of a panic payload.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_reduce_sums_in_rank_order_on_every_rank() {
        let out = run_local(4, DEFAULT_TIMEOUT, |mut c| {
            let mut buf = vec![c.rank() as f32 + 0.5, 1e8 * (c.rank() as f32 - 1.5)];
            c.all_reduce_sum(0, &mut buf)?;
            Ok(buf)
        });
        let first = out[0].as_ref().unwrap().clone();
        assert_eq!(first[0], 0.5 + 1.5 + 2.5 + 3.5);
        for r in &out {
            assert_eq!(
                r.as_ref().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                first.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn all_gather_returns_variable_sizes_in_rank_order() {
        let out = run_local(3, DEFAULT_TIMEOUT, |mut c| {
            let sizes = [0, 1, 2];
            let mine = vec![c.rank() as u8; c.rank()];
            c.all_gather(7, &mine, &sizes)
        });
        for r in out {
            assert_eq!(r.unwrap(), vec![vec![], vec![1], vec![2, 2]]);
        }
    }

    #[test]
    fn a_failing_rank_stops_every_rank() {
        let out: Vec<Result<(), _>> = run_local(3, DEFAULT_TIMEOUT, |mut c| {
            for step in 0..10 {
                if c.rank() == 1 && step == 4 {
                    let (rank, branches, message) = (1, String::new(), "boom".to_string());
                    return Err(RuntimeError::Model { rank, step, branches, message });
                }
                c.all_gather(step, &[], &[0, 0, 0])?;
            }
            Ok(())
        });
        for r in out {
            let e = r.unwrap_err();
            assert_eq!((e.origin_rank(), e.step()), (Some(1), Some(4)), "{e}");
        }
    }

    #[test]
    fn a_missing_rank_times_out() {
        let out: Vec<Result<(), _>> = run_local(2, Duration::from_millis(50), |mut c| {
            if c.rank() == 0 {
                c.all_gather(0, &[], &[0, 0])?;
            }
            Ok(())
        });
        assert!(matches!(out[0], Err(RuntimeError::Timeout { .. })), "{:?}", out[0]);
    }
}
