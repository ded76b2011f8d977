//! Parallel loops in which the calling thread works too.
//!
//! Rayon's parallel iterators, called from a thread outside its pool (a
//! model's thread, a benchmark), hand the whole loop to the pool and put the
//! caller to sleep until it is done: a wake-up of a worker and one of the
//! caller per loop, tens of microseconds on a virtual machine, as long as the
//! loop itself at a few hundred thousand elements. Here the caller takes
//! items from the same queue as the workers it calls in, so one core is at
//! work from the start, and the caller seldom sleeps at the end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// `f(item)` for every item, in parallel (each item is one task; make them
/// large enough that taking one from a locked queue costs nothing).
pub fn for_each<X: Send>(items: impl Iterator<Item = X> + Send, f: impl Fn(X) + Sync) {
    let (lo, hi) = items.size_hint();
    let helpers = rayon::current_num_threads().min(hi.unwrap_or(usize::MAX).max(lo)).saturating_sub(1);
    if helpers == 0 {
        items.for_each(f);
        return;
    }
    let queue = Mutex::new(items);
    // The lock is released before `f` runs, so a panic in `f` poisons nothing.
    let next = || queue.lock().unwrap_or_else(|e| e.into_inner()).next();
    let work = || {
        while let Some(x) = next() {
            f(x);
        }
    };
    rayon::in_place_scope(|s| {
        for _ in 0..helpers {
            s.spawn(|_| work());
        }
        work();
    });
}

/// `f(item)` for every item, in parallel, the results in the items' order.
pub fn map<X: Send, R: Send>(items: impl ExactSizeIterator<Item = X> + Send, f: impl Fn(X) -> R + Sync) -> Vec<R> {
    let n = items.len();
    let mut results = Vec::with_capacity(n);
    let written = AtomicUsize::new(0);
    for_each(items.zip(results.spare_capacity_mut()), |(x, slot)| {
        slot.write(f(x));
        written.fetch_add(1, Ordering::Relaxed);
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
}
