//! Runs a launch: blocks (one after another, or all together when
//! cooperative), threads interleaved in a seeded random order, barriers,
//! shuffles, and deadlock/livelock detection.

use super::decode::Func;
use super::exec::{Cx, Fail, State, Stop, Thread};
use super::instr::ShflMode;
use super::sanitize::Shadow;
use super::{Kernel, KernelError, Launch};
use crate::memory::Memory;

/// Instructions without any progress (a memory change, a barrier or shuffle
/// completing, a thread exiting) after which spinning threads count as a livelock.
const SPIN_BUDGET: u64 = 50_000_000;
/// Instructions without progress after which the launch fails even if
/// nothing looked like spinning.
const HARD_BUDGET: u64 = 2_000_000_000;

/// splitmix64
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

struct Block {
    ctaid: [u32; 3],
    threads: Vec<Thread>,
    shared: Vec<u8>,
    shadow: Shadow,
    epoch: u32,
    arrived: u32,
    bar_count: Option<u32>,
    live: u32,
}

/// Shared state of one launch.
pub struct Runner<'a> {
    /// All functions of the module.
    pub funcs: &'a [Func],
    /// The kernel.
    pub kernel: &'a Kernel,
    /// How.
    pub launch: &'a Launch,
    /// The parameter buffer.
    pub params: &'a [u8],
}

fn xyz(linear: u32, dims: [u32; 3]) -> [u32; 3] {
    [linear % dims[0], (linear / dims[0]) % dims[1], linear / (dims[0] * dims[1])]
}

impl Runner<'_> {
    fn error(&self, block: [u32; 3], thread: [u32; 3], at: Option<(u32, u32)>, code: u32, msg: String) -> KernelError {
        let (line, text) = match at {
            Some((f, pc)) => {
                let f = &self.funcs[f as usize];
                let pc = (pc as usize).min(f.code.len() - 1);
                let name = if f.entry { String::new() } else { format!(" (in .func {})", f.name) };
                (f.lines[pc], format!("{}{name}", f.texts[pc]))
            }
            None => (0, String::new()),
        };
        KernelError { code, kernel: self.kernel.name.clone(), block, thread, line, text, msg }
    }

    fn fail(&self, b: &Block, t: &Thread, f: Fail) -> KernelError {
        self.error(b.ctaid, t.tid, Some(f.at), f.code, f.msg)
    }

    /// Runs the whole grid.
    pub fn run(&self, mem: &mut Memory) -> Result<(), KernelError> {
        let l = self.launch;
        let nblocks = l.grid.iter().map(|&g| g as u64).product::<u64>();
        let nthreads = l.block.iter().map(|&b| b as u64).product::<u64>();
        if nblocks == 0 || nthreads == 0 || nthreads > 1024 {
            return Err(self.error(
                [0; 3],
                [0; 3],
                None,
                1,
                format!("invalid launch: grid {:?}, block {:?}", l.grid, l.block),
            ));
        }
        let mut rng = Rng(l.seed ^ 0x5eed_0fc0_ffee);
        let mut order: Vec<u32> = (0..nblocks as u32).collect();
        rng.shuffle(&mut order);
        if l.cooperative {
            self.run_blocks(mem, &order, &mut rng)
        } else {
            for &b in &order {
                self.run_blocks(mem, &[b], &mut rng)?;
            }
            Ok(())
        }
    }

    fn new_block(&self, linear: u32) -> Block {
        let l = self.launch;
        let entry = &self.funcs[self.kernel.func];
        let n = l.block[0] * l.block[1] * l.block[2];
        let threads = (0..n).map(|i| Thread::new(entry, self.kernel.func as u32, xyz(i, l.block), i)).collect();
        let shared_len = self.kernel.dyn_shared_offset() + l.dynamic_shared;
        Block {
            ctaid: xyz(linear, l.grid),
            threads,
            shared: vec![0; shared_len],
            shadow: Shadow::new(shared_len),
            epoch: 1,
            arrived: 0,
            bar_count: None,
            live: n,
        }
    }

    fn run_blocks(&self, mem: &mut Memory, ids: &[u32], rng: &mut Rng) -> Result<(), KernelError> {
        let mut blocks: Vec<Block> = ids.iter().map(|&i| self.new_block(i)).collect();
        let mut since_progress = 0u64;
        let mut spins = 0u64;
        let mut clock = 0u64;
        let mut runnable: Vec<(u32, u32)> = Vec::new();
        loop {
            runnable.clear();
            for (bi, b) in blocks.iter().enumerate() {
                for (ti, t) in b.threads.iter().enumerate() {
                    if t.state == State::Ready {
                        runnable.push((bi as u32, ti as u32));
                    }
                }
            }
            if runnable.is_empty() {
                if blocks.iter().all(|b| b.live == 0) {
                    return Ok(());
                }
                return Err(self.stuck(
                    &blocks,
                    "deadlock: every remaining thread waits at a barrier or shuffle that can never complete",
                ));
            }
            rng.shuffle(&mut runnable);
            for &(bi, ti) in &runnable {
                let b = &mut blocks[bi as usize];
                if b.threads[ti as usize].state != State::Ready {
                    continue;
                }
                let quantum = 64 + rng.below(192) as u32;
                let Block { threads, shared, shadow, .. } = b;
                let mut cx = Cx {
                    mem,
                    kparams: self.params,
                    shared,
                    shadow,
                    epoch: b.epoch,
                    ctaid: b.ctaid,
                    ntid: self.launch.block,
                    nctaid: self.launch.grid,
                    dyn_shared: self.kernel.dyn_shared_offset() as u64,
                    progress: false,
                    spins: 0,
                    clock,
                };
                let t = &mut threads[ti as usize];
                let res = t.run(self.funcs, &mut cx, quantum);
                let (progress, sp) = (cx.progress, cx.spins);
                clock = cx.clock;
                let (stop, n) = match res {
                    Ok(x) => x,
                    Err(f) => return Err(self.fail(b, &b.threads[ti as usize], f)),
                };
                since_progress += n as u64;
                spins += sp;
                let mut progressed = progress;
                match stop {
                    Stop::Quantum | Stop::Yield => {}
                    Stop::Exit => {
                        b.threads[ti as usize].state = State::Exited;
                        b.live -= 1;
                        progressed = true;
                        self.check_shfl_exit(b, ti)?;
                        release_barrier(b);
                    }
                    Stop::Bar(count) => {
                        b.threads[ti as usize].state = State::Bar;
                        b.arrived += 1;
                        if count.is_some() {
                            b.bar_count = count;
                        }
                        progressed |= release_barrier(b);
                    }
                    Stop::Shfl => {
                        b.threads[ti as usize].state = State::Shfl;
                        progressed |= self.try_shfl(b, ti)?;
                    }
                }
                if progressed {
                    since_progress = 0;
                    spins = 0;
                }
                if (since_progress > SPIN_BUDGET && spins > 1000) || since_progress > HARD_BUDGET {
                    let why = if self.launch.cooperative || blocks.len() > 1 {
                        "livelock: threads spin without making progress"
                    } else {
                        "livelock: threads spin without making progress (a non-cooperative launch runs one block at a time here, so a grid-wide barrier never completes; launch it cooperatively)"
                    };
                    return Err(self.stuck(&blocks, why));
                }
            }
        }
    }

    fn stuck(&self, blocks: &[Block], why: &str) -> KernelError {
        let mut parts = Vec::new();
        let mut first = None;
        for b in blocks.iter().filter(|b| b.live > 0) {
            let waiting: Vec<&Thread> = b.threads.iter().filter(|t| t.state != State::Exited).collect();
            let at_bar = waiting.iter().filter(|t| t.state == State::Bar).count();
            let at_shfl = waiting.iter().filter(|t| t.state == State::Shfl).count();
            let running = waiting.iter().find(|t| t.state == State::Ready).or(waiting.first());
            if let Some(t) = running {
                first.get_or_insert((b.ctaid, t.tid, t.func, t.pc.saturating_sub(1)));
                let f = &self.funcs[t.func as usize];
                let pc = (t.pc as usize).saturating_sub(1).min(f.code.len() - 1);
                parts.push(format!(
                    "block ({},{},{}): {} threads left ({at_bar} at bar.sync, {at_shfl} at shfl.sync), thread ({},{},{}) near line {} `{}`",
                    b.ctaid[0], b.ctaid[1], b.ctaid[2], waiting.len(), t.tid[0], t.tid[1], t.tid[2], f.lines[pc], f.texts[pc]
                ));
            }
            if parts.len() >= 4 {
                parts.push("...".into());
                break;
            }
        }
        let (block, thread, at) = match first {
            Some((b, t, f, pc)) => (b, t, Some((f, pc))),
            None => ([0; 3], [0; 3], None),
        };
        self.error(block, thread, at, 702, format!("{why}; {}", parts.join("; ")))
    }

    fn check_shfl_exit(&self, b: &Block, ti: u32) -> Result<(), KernelError> {
        let lane = ti % 32;
        let warp0 = ti - lane;
        for t in b.threads.iter().skip(warp0 as usize).take(32) {
            if t.state == State::Shfl && t.shfl.mask & (1 << lane) != 0 {
                let me = &b.threads[ti as usize];
                return Err(self.error(
                    b.ctaid,
                    t.tid,
                    Some((t.func, t.pc - 1)),
                    719,
                    format!(
                        "shfl.sync member mask {:#x} names thread ({},{},{}), which has exited",
                        t.shfl.mask, me.tid[0], me.tid[1], me.tid[2]
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Completes the shuffle `ti` waits in if every member has arrived.
    fn try_shfl(&self, b: &mut Block, ti: u32) -> Result<bool, KernelError> {
        let lane = ti % 32;
        let warp0 = ti - lane;
        let n = b.threads.len() as u32;
        let mask = b.threads[ti as usize].shfl.mask | (1 << lane);
        let bad_lane = |l: u32, why: &str| {
            let t = &b.threads[ti as usize];
            let msg = format!("shfl.sync member mask {mask:#x} names lane {l}, which {why}");
            Err(self.error(b.ctaid, t.tid, Some((t.func, t.pc - 1)), 719, msg))
        };
        for l in 0..32 {
            if mask & (1 << l) == 0 {
                continue;
            }
            let i = warp0 + l;
            if i >= n {
                return bad_lane(l, "does not exist");
            }
            match b.threads[i as usize].state {
                State::Shfl => {}
                State::Exited => return bad_lane(l, "has exited"),
                _ => return Ok(false),
            }
        }
        let vals: Vec<u32> =
            (0..32).map(|l| b.threads.get((warp0 + l) as usize).map(|t| t.shfl.a).unwrap_or(0)).collect();
        for l in 0..32u32 {
            if mask & (1 << l) == 0 {
                continue;
            }
            let t = &mut b.threads[(warp0 + l) as usize];
            let w = t.shfl;
            let (bv, cv, seg) = (w.b & 31, w.c & 31, (w.c >> 8) & 31);
            let max_lane = (l & seg) | (cv & !seg);
            let min_lane = l & seg;
            let (j, ok) = match w.mode.unwrap_or(ShflMode::Idx) {
                ShflMode::Up => {
                    let j = l as i32 - bv as i32;
                    (j, j >= max_lane as i32)
                }
                ShflMode::Down => {
                    let j = l + bv;
                    (j as i32, j <= max_lane)
                }
                ShflMode::Bfly => {
                    let j = l ^ bv;
                    (j as i32, j <= max_lane)
                }
                ShflMode::Idx => {
                    let j = min_lane | (bv & !seg);
                    (j as i32, j <= max_lane)
                }
            };
            let src = if ok && (0..32).contains(&j) && mask & (1 << j) != 0 { j as u32 } else { l };
            t.regs[w.d as usize] = vals[src as usize] as u64;
            if w.p != super::instr::NO_REG {
                t.regs[w.p as usize] = ok as u64;
            }
            t.state = State::Ready;
        }
        Ok(true)
    }
}

/// Releases the block's barrier if every live thread (or the count given)
/// has arrived. Returns whether it did.
fn release_barrier(b: &mut Block) -> bool {
    if b.arrived == 0 {
        return false;
    }
    let need = b.bar_count.map(|c| c.min(b.live)).unwrap_or(b.live);
    if b.arrived < need {
        return false;
    }
    for t in b.threads.iter_mut() {
        if t.state == State::Bar {
            t.state = State::Ready;
        }
    }
    b.arrived = 0;
    b.bar_count = None;
    b.epoch += 1;
    true
}
