//! Shared-memory race detection: per 4-byte word, the last writer and the
//! barrier epoch of its write, and the reader(s) of the current epoch. An
//! access by one thread to a word another thread wrote (or, for a write,
//! read) in the same epoch — with no `bar.sync` between — is a race.

/// No thread.
const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Word {
    writer: u32,
    w_epoch: u32,
    reader: u32,
    r_epoch: u32,
    many_readers: bool,
}

/// The shadow state of one block's shared memory.
#[derive(Debug)]
pub struct Shadow {
    words: Vec<Word>,
}

/// A detected race: the other thread (linear index) and what it did.
#[derive(Debug, Clone, Copy)]
pub struct Race {
    /// The other thread's linear index in the block.
    pub other: u32,
    /// True if the other thread wrote the word.
    pub other_wrote: bool,
    /// The word's byte offset.
    pub offset: usize,
}

impl Shadow {
    /// Shadow for `bytes` of shared memory.
    pub fn new(bytes: usize) -> Shadow {
        let w = Word { writer: NONE, w_epoch: 0, reader: NONE, r_epoch: 0, many_readers: false };
        Shadow { words: vec![w; bytes.div_ceil(4)] }
    }

    /// Records an access of `len` bytes at `offset` by thread `t` in `epoch`
    /// (epochs start at 1).
    pub fn access(&mut self, offset: usize, len: usize, t: u32, epoch: u32, write: bool) -> Result<(), Race> {
        for i in offset / 4..(offset + len).div_ceil(4) {
            let w = &mut self.words[i];
            if w.w_epoch == epoch && w.writer != t {
                return Err(Race { other: w.writer, other_wrote: true, offset: i * 4 });
            }
            if write {
                if w.r_epoch == epoch && (w.many_readers || w.reader != t) {
                    let other = if w.reader != t { w.reader } else { NONE };
                    return Err(Race { other, other_wrote: false, offset: i * 4 });
                }
                w.writer = t;
                w.w_epoch = epoch;
            } else if w.r_epoch != epoch {
                w.reader = t;
                w.r_epoch = epoch;
                w.many_readers = false;
            } else if w.reader != t {
                w.many_readers = true;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_epoch_cross_thread_is_a_race() {
        let mut s = Shadow::new(16);
        s.access(0, 4, 0, 1, true).unwrap();
        s.access(0, 4, 0, 1, false).unwrap();
        assert!(s.access(0, 4, 1, 1, false).is_err());
        s.access(0, 4, 1, 2, false).unwrap();
        s.access(0, 4, 2, 2, false).unwrap();
        assert!(s.access(0, 4, 1, 2, true).is_err());
        s.access(8, 8, 3, 3, true).unwrap();
    }
}
