//! Parallel loops in which the calling thread works too, with helper
//! threads that wait for work spinning, so that a loop starts on every core
//! within a microsecond.
//!
//! Rayon's scopes, called from a thread outside its pool (a model's thread,
//! a benchmark), wake a worker through the pool's sleep protocol and put the
//! caller to sleep on a lock until the last job is done: two wake-ups per
//! loop, about ten microseconds each on a virtual machine, as long as the
//! loop itself at a few hundred thousand elements. Here the caller publishes
//! the loop to helper threads that spin for [`HOT`] after their last loop,
//! then yield their core between checks until [`SPIN`], then sleep; it takes
//! items from the same queue as they do, and spins while the last items finish.
//!
//! One loop runs on the helpers at a time: a loop started while they are
//! busy (another rank's thread, or a loop inside an item) runs on its
//! caller alone.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle helper spins before it yields its core between checks:
/// longer than the gaps between the loops of one operator.
const HOT: Duration = Duration::from_micros(20);
/// How long an idle helper waits before it sleeps: longer than the gaps
/// between the operators of one guidance step, short against a model's forward.
const SPIN: Duration = Duration::from_micros(200);

/// The threads a loop may use: the caller and the helpers. As many as the
/// cores, or `RAYON_NUM_THREADS` (as for rayon's own pool).
pub fn threads() -> usize {
    pool().helpers + 1
}

/// `f(item)` for every item, in parallel (each item is one task; make them
/// large enough that taking one from a locked queue costs nothing). The
/// caller takes items from the front, the helpers from the back: loop after
/// loop over the same data, each core gets back the part it has in its cache.
pub fn for_each<X: Send>(items: impl DoubleEndedIterator<Item = X> + Send, f: impl Fn(X) + Sync) {
    let (lo, hi) = items.size_hint();
    let wanted = rayon::current_num_threads().min(hi.unwrap_or(usize::MAX).max(lo)).saturating_sub(1);
    let pool = pool();
    if wanted == 0 || pool.helpers == 0 || pool.busy.swap(true, SeqCst) {
        items.for_each(f);
        return;
    }
    let queue = Mutex::new(items);
    // The lock is released before `f` runs, so a panic in `f` poisons nothing.
    let take = |back: bool| {
        let mut items = queue.lock().unwrap_or_else(|e| e.into_inner());
        if back {
            items.next_back()
        } else {
            items.next()
        }
    };
    let work = |back: bool| {
        while let Some(x) = take(back) {
            f(x);
        }
    };
    let helpers_work = || work(true);
    let job = Job {
        work: &helpers_work,
        seats: AtomicUsize::new(wanted.min(pool.helpers)),
        panicked: AtomicBool::new(false),
    };
    pool.open(&job);
    // Closed however `work` ends: helpers must be out of `job` before it goes.
    let close = Close(pool);
    work(false);
    drop(close);
    if job.panicked.load(SeqCst) {
        panic!("a parallel task panicked on a helper thread");
    }
}

/// `f(item)` for every item, in parallel, the results in the items' order.
pub fn map<X: Send, R: Send>(
    items: impl ExactSizeIterator<Item = X> + DoubleEndedIterator + Send,
    f: impl Fn(X) -> R + Sync,
) -> Vec<R> {
    let n = items.len();
    let mut results = Vec::with_capacity(n);
    let written = AtomicUsize::new(0);
    for_each(items.zip(results.spare_capacity_mut()), |(x, slot)| {
        slot.write(f(x));
        written.fetch_add(1, SeqCst);
    });
    // An iterator may report a wrong length; only a full count may be trusted.
    assert_eq!(written.into_inner(), n, "the items' iterator reported its length wrongly");
    // SAFETY: all n slots were written above.
    unsafe { results.set_len(n) };
    results
}

/// `f(index, chunk)` for every chunk of `size` values of `data` (the last
/// one shorter), in parallel.
pub fn for_each_chunk_mut<T: Send>(data: &mut [T], size: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    for_each(data.chunks_mut(size.max(1)).enumerate(), |(i, c)| f(i, c));
}

/// A published loop: the shared work, and how many helpers may still join.
struct Job<'a> {
    work: &'a (dyn Fn() + Sync),
    seats: AtomicUsize,
    panicked: AtomicBool,
}

/// The helpers and the one loop they may be running.
///
/// `epoch` is odd while a loop is open. A helper counts itself in `inside`,
/// then checks that the same loop is still open before it touches `job`;
/// the caller closes the loop (even epoch), then waits for `inside` to be
/// zero. All of it sequentially consistent: either the helper sees the loop
/// closed, or the caller sees the helper inside.
struct Pool {
    helpers: usize,
    busy: AtomicBool,
    epoch: AtomicUsize,
    job: AtomicPtr<Job<'static>>,
    inside: AtomicUsize,
    sleepers: Mutex<usize>,
    wake: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse().ok()).filter(|&n: &usize| n > 0);
        let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let helpers = threads - 1;
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            helpers,
            busy: AtomicBool::new(false),
            epoch: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            inside: AtomicUsize::new(0),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
        }));
        for k in 0..helpers {
            // A helper that cannot be started leaves its share to the others.
            let _ = std::thread::Builder::new().name(format!("cfg-par-{k}")).spawn(move || pool.serve());
        }
        pool
    })
}

impl Pool {
    /// Publishes `job` and wakes sleeping helpers.
    fn open(&self, job: &Job<'_>) {
        // SAFETY (of the lifetime): helpers touch `job` only while the loop is
        // open, and `for_each` closes it and waits for them before `job` goes.
        self.job.store((job as *const Job<'_>).cast_mut().cast(), SeqCst);
        self.epoch.fetch_add(1, SeqCst);
        let sleepers = self.sleepers.lock().unwrap_or_else(|e| e.into_inner());
        if *sleepers > 0 {
            self.wake.notify_all();
        }
    }

    /// Ends the open loop and waits until no helper is inside it.
    fn close(&self) {
        self.epoch.fetch_add(1, SeqCst);
        // A helper inside finishes at most one item; if it was preempted, let it run.
        let mut spins = 0u32;
        while self.inside.load(SeqCst) != 0 {
            spins += 1;
            if spins < 1 << 14 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// A helper's life: spin for work, join each open loop once, sleep when idle.
    fn serve(&self) {
        let mut done = 0;
        let mut idle = Instant::now();
        loop {
            let epoch = self.epoch.load(SeqCst);
            if epoch % 2 == 1 && epoch != done {
                done = epoch;
                self.join(epoch);
                idle = Instant::now();
                continue;
            }
            let waited = idle.elapsed();
            if waited < HOT {
                std::hint::spin_loop();
            } else if waited < SPIN {
                // Still ready within a few microseconds, but a thread waiting for this core runs first.
                std::thread::yield_now();
            } else {
                let mut sleepers = self.sleepers.lock().unwrap_or_else(|e| e.into_inner());
                *sleepers += 1;
                // Checked under the lock `open` takes to wake: no wake-up is lost.
                while self.epoch.load(SeqCst) == epoch {
                    sleepers = self.wake.wait(sleepers).unwrap_or_else(|e| e.into_inner());
                }
                *sleepers -= 1;
                idle = Instant::now();
            }
        }
    }

    /// Works on loop `epoch` if it is still open and has a seat left.
    fn join(&self, epoch: usize) {
        self.inside.fetch_add(1, SeqCst);
        if self.epoch.load(SeqCst) == epoch {
            // SAFETY: the loop is open, so `job` is alive until `inside` drops.
            let job = unsafe { &*self.job.load(SeqCst) };
            let seated = job.seats.fetch_update(SeqCst, SeqCst, |s| s.checked_sub(1)).is_ok();
            if seated && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.work)())).is_err() {
                job.panicked.store(true, SeqCst);
            }
        }
        self.inside.fetch_sub(1, SeqCst);
    }
}

/// Closes the pool's open loop and frees the pool when dropped (also while unwinding).
struct Close(&'static Pool);

impl Drop for Close {
    fn drop(&mut self) {
        self.0.close();
        self.0.busy.store(false, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_is_visited_once_with_its_index() {
        for (n, size) in [(0, 4), (1, 4), (7, 1), (1000, 7), (65536 * 3 + 5, 65536)] {
            let mut v = vec![0usize; n];
            for_each_chunk_mut(&mut v, size, |i, c| c.iter_mut().for_each(|x| *x += i + 1));
            let want: Vec<usize> = (0..n).map(|k| k / size + 1).collect();
            assert_eq!(v, want, "{n} {size}");
        }
    }

    #[test]
    fn map_keeps_the_order_of_its_items() {
        let squares = map(0..1000u32, |x| x as u64 * x as u64);
        assert_eq!(squares, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
        assert!(map(std::iter::empty::<u8>(), |x| x).is_empty());
    }

    #[test]
    fn inside_the_pool_it_still_visits_everything() {
        let total: usize = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap().install(|| {
            let mut v = vec![1usize; 10_000];
            for_each_chunk_mut(&mut v, 100, |i, c| c.iter_mut().for_each(|x| *x = i));
            v.iter().sum()
        });
        assert_eq!(total, (0..100).map(|i| i * 100).sum::<usize>());
    }

    #[test]
    fn loops_from_many_threads_at_once_and_nested_loops_finish() {
        // Callers race for the helpers; the losers, and loops inside items, run alone.
        std::thread::scope(|s| {
            for t in 0..4usize {
                s.spawn(move || {
                    for round in 0..200usize {
                        let sums = map(0..8usize, |i| map(0..4usize, |j| i * j + t + round).iter().sum::<usize>());
                        let want: Vec<usize> = (0..8).map(|i| (0..4).map(|j| i * j + t + round).sum()).collect();
                        assert_eq!(sums, want);
                    }
                });
            }
        });
    }

    #[test]
    fn a_panic_in_an_item_reaches_the_caller_and_the_pool_still_works() {
        let r = std::panic::catch_unwind(|| for_each(0..64usize, |i| assert!(i != 40, "item 40")));
        assert!(r.is_err());
        let mut v = vec![0u8; 1000];
        for_each_chunk_mut(&mut v, 10, |_, c| c.fill(1));
        assert!(v.iter().all(|&x| x == 1));
    }
}
