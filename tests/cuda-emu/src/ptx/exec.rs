//! Executes the instructions of one emulated thread until it blocks, exits or
//! uses up its quantum.

use super::decode::Func;
use super::float::*;
use super::instr::*;
use super::sanitize::Shadow;
use super::{LOCAL_BASE, PARAM_BASE, SHARED_BASE, WINDOW};
use crate::memory::Memory;

/// A saved caller frame.
#[derive(Debug)]
pub struct Frame {
    func: u32,
    ret_pc: u32,
    regs: Vec<u64>,
    params: Vec<u8>,
    local_base: u32,
}

/// A pending `shfl.sync`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShflWait {
    /// Mode.
    pub mode: Option<ShflMode>,
    /// Destination register.
    pub d: u32,
    /// Destination predicate (NO_REG: none).
    pub p: u32,
    /// Value offered.
    pub a: u32,
    /// Lane / offset operand.
    pub b: u32,
    /// Clamp / segment mask operand.
    pub c: u32,
    /// Member mask.
    pub mask: u32,
}

/// Where a thread stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Can run.
    Ready,
    /// Waiting at `bar.sync`.
    Bar,
    /// Waiting at `shfl.sync`.
    Shfl,
    /// Done.
    Exited,
}

/// One emulated thread.
#[derive(Debug)]
pub struct Thread {
    /// Current function.
    pub func: u32,
    /// Next instruction.
    pub pc: u32,
    /// The current frame's registers.
    pub regs: Vec<u64>,
    params: Vec<u8>,
    local_base: u32,
    local: Vec<u8>,
    stack: Vec<Frame>,
    carry: bool,
    /// `%tid`
    pub tid: [u32; 3],
    /// Linear index in the block.
    pub linear: u32,
    /// State.
    pub state: State,
    /// The pending shuffle.
    pub shfl: ShflWait,
}

/// Why a thread stopped running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Quantum used up.
    Quantum,
    /// `nanosleep`: let others run.
    Yield,
    /// `bar.sync` with an optional thread count.
    Bar(Option<u32>),
    /// `shfl.sync` (details in `Thread::shfl`).
    Shfl,
    /// `exit` / `ret` from the entry.
    Exit,
}

/// A failure in one instruction.
#[derive(Debug)]
pub struct Fail {
    /// CUresult.
    pub code: u32,
    /// What happened.
    pub msg: String,
    /// Function and instruction index.
    pub at: (u32, u32),
}

/// What the thread's block and launch give it.
pub struct Cx<'a> {
    /// Global memory.
    pub mem: &'a mut Memory,
    /// The launch's parameter buffer.
    pub kparams: &'a [u8],
    /// The block's shared memory.
    pub shared: &'a mut [u8],
    /// Its race shadow.
    pub shadow: &'a mut Shadow,
    /// The block's barrier epoch.
    pub epoch: u32,
    /// `%ctaid`
    pub ctaid: [u32; 3],
    /// `%ntid`
    pub ntid: [u32; 3],
    /// `%nctaid`
    pub nctaid: [u32; 3],
    /// Offset of dynamic shared memory.
    pub dyn_shared: u64,
    /// Set when memory changed (for livelock detection).
    pub progress: bool,
    /// Spin-like operations (volatile loads, sleeps, idle atomics).
    pub spins: u64,
    /// Instructions executed (for `%clock`).
    pub clock: u64,
}

#[inline(always)]
fn mask(v: u64, bits: u32) -> u64 {
    if bits >= 64 {
        v
    } else {
        v & ((1u64 << bits) - 1)
    }
}

#[inline(always)]
fn sext(v: u64, bits: u32) -> i64 {
    if bits >= 64 {
        v as i64
    } else {
        let s = 64 - bits;
        ((v << s) as i64) >> s
    }
}

#[inline(always)]
fn ext(v: u64, ty: Ty) -> i128 {
    if ty.signed() {
        sext(v, ty.bits()) as i128
    } else {
        mask(v, ty.bits()) as i128
    }
}

fn read_le(b: &[u8]) -> u64 {
    let mut x = [0u8; 8];
    x[..b.len()].copy_from_slice(b);
    u64::from_le_bytes(x)
}

/// A resolved memory location.
#[derive(Clone, Copy)]
enum Loc {
    Global(u64),
    Shared(usize),
    Local(usize),
    KParam(usize),
    FParam(usize),
}

fn xyz(linear: u32, ntid: [u32; 3]) -> (u32, u32, u32) {
    (linear % ntid[0], (linear / ntid[0]) % ntid[1], linear / (ntid[0] * ntid[1]))
}

impl Thread {
    /// A thread at the start of `func` (an entry).
    pub fn new(func: &Func, fidx: u32, tid: [u32; 3], linear: u32) -> Thread {
        Thread {
            func: fidx,
            pc: 0,
            regs: vec![0; func.nregs as usize],
            params: vec![0; func.param_bytes as usize],
            local_base: 0,
            local: vec![0; func.depot as usize],
            stack: Vec::new(),
            carry: false,
            tid,
            linear,
            state: State::Ready,
            shfl: ShflWait::default(),
        }
    }

    #[inline(always)]
    fn get(&self, o: &Opd, cx: &Cx) -> u64 {
        match *o {
            Opd::Reg(r) => self.regs[r as usize],
            Opd::Imm(v) => v,
            Opd::Sreg(s) => self.sreg(s, cx),
        }
    }

    fn sreg(&self, s: Sreg, cx: &Cx) -> u64 {
        (match s {
            Sreg::Tid(d) => self.tid[d as usize],
            Sreg::Ntid(d) => cx.ntid[d as usize],
            Sreg::Ctaid(d) => cx.ctaid[d as usize],
            Sreg::Nctaid(d) => cx.nctaid[d as usize],
            Sreg::Laneid => self.linear % 32,
            Sreg::Warpid => self.linear / 32,
            Sreg::Nwarpid => (cx.ntid[0] * cx.ntid[1] * cx.ntid[2]).div_ceil(32),
            Sreg::GlobalTimer => {
                return std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0)
            }
            Sreg::Clock | Sreg::Clock64 => return cx.clock,
            Sreg::Smid => 0,
            Sreg::Depot => self.local_base,
            Sreg::DynShared => return cx.dyn_shared,
        }) as u64
    }

    fn fail(&self, at: u32, code: u32, msg: String) -> Fail {
        Fail { code, msg, at: (self.func, at) }
    }

    fn ea(&self, a: &Addr) -> u64 {
        let base = match a.base {
            Base::None => 0,
            Base::Reg(r) => self.regs[r as usize],
            Base::Depot => self.local_base as u64,
            Base::DynShared => 0,
        };
        base.wrapping_add(a.off as u64)
    }

    /// Resolves `addr` of `len` bytes in `space` to a checked location.
    fn locate(&self, cx: &Cx, space: Space, addr: u64, len: usize, at: u32) -> Result<Loc, Fail> {
        if len > 1 && !addr.is_multiple_of(len as u64) {
            return Err(self.fail(at, 716, format!("misaligned {len}-byte access at {addr:#x}")));
        }
        let (space, off) = match space {
            Space::Generic => {
                if (SHARED_BASE..SHARED_BASE + WINDOW).contains(&addr) {
                    (Space::Shared, addr - SHARED_BASE)
                } else if (LOCAL_BASE..LOCAL_BASE + WINDOW).contains(&addr) {
                    (Space::Local, addr - LOCAL_BASE)
                } else if (PARAM_BASE..PARAM_BASE + WINDOW).contains(&addr) {
                    (Space::KParam, addr - PARAM_BASE)
                } else {
                    (Space::Global, addr)
                }
            }
            s => (s, addr),
        };
        let end = off.checked_add(len as u64);
        let within = |size: usize| end.is_some_and(|e| e <= size as u64);
        Ok(match space {
            Space::Global => Loc::Global(off),
            Space::Shared if within(cx.shared.len()) => Loc::Shared(off as usize),
            Space::Shared => {
                return Err(self.fail(
                    at,
                    700,
                    format!(
                        "shared memory access of {len} bytes at offset {off:#x} outside the block's {} bytes",
                        cx.shared.len()
                    ),
                ))
            }
            Space::Local if within(self.local.len()) => Loc::Local(off as usize),
            Space::Local => {
                return Err(self.fail(
                    at,
                    700,
                    format!(
                        "local memory access of {len} bytes at offset {off:#x} outside the thread's {} bytes",
                        self.local.len()
                    ),
                ))
            }
            Space::KParam if within(cx.kparams.len()) => Loc::KParam(off as usize),
            Space::FParam if within(self.params.len()) => Loc::FParam(off as usize),
            _ => {
                return Err(self.fail(
                    at,
                    700,
                    format!("parameter access of {len} bytes at offset {off:#x} out of range"),
                ))
            }
        })
    }

    fn load(&self, cx: &mut Cx, loc: Loc, len: usize, at: u32) -> Result<u64, Fail> {
        Ok(match loc {
            Loc::Global(a) => read_le(cx.mem.slice(a, len).map_err(|e| self.fail(at, 700, e.to_string()))?),
            Loc::Shared(o) => {
                cx.shadow.access(o, len, self.linear, cx.epoch, false).map_err(|r| self.race(cx, r, at, false))?;
                read_le(&cx.shared[o..o + len])
            }
            Loc::Local(o) => read_le(&self.local[o..o + len]),
            Loc::KParam(o) => read_le(&cx.kparams[o..o + len]),
            Loc::FParam(o) => read_le(&self.params[o..o + len]),
        })
    }

    fn store(&mut self, cx: &mut Cx, loc: Loc, len: usize, v: u64, at: u32) -> Result<(), Fail> {
        let bytes = v.to_le_bytes();
        let src = &bytes[..len];
        match loc {
            Loc::Global(a) => {
                let dst = cx.mem.slice_mut(a, len).map_err(|e| self.fail(at, 700, e.to_string()))?;
                if dst != src {
                    dst.copy_from_slice(src);
                    cx.progress = true;
                }
            }
            Loc::Shared(o) => {
                cx.shadow.access(o, len, self.linear, cx.epoch, true).map_err(|r| self.race(cx, r, at, true))?;
                cx.shared[o..o + len].copy_from_slice(src);
                cx.progress = true;
            }
            Loc::Local(o) => self.local[o..o + len].copy_from_slice(src),
            Loc::KParam(_) => return Err(self.fail(at, 700, "store to a kernel parameter".into())),
            Loc::FParam(o) => self.params[o..o + len].copy_from_slice(src),
        }
        Ok(())
    }

    fn race(&self, cx: &Cx, r: super::sanitize::Race, at: u32, write: bool) -> Fail {
        let other = if r.other == u32::MAX {
            "other threads".to_string()
        } else {
            let (x, y, z) = xyz(r.other, cx.ntid);
            format!("thread ({x},{y},{z})")
        };
        let what = if r.other_wrote { "wrote" } else { "read" };
        let mine = if write { "write" } else { "read" };
        self.fail(
            at,
            700,
            format!(
                "shared memory race at offset {:#x}: this {mine} follows a {what_noun} by {other} with no bar.sync between ({other} {what} it in the same barrier interval)",
                r.offset,
                what_noun = if r.other_wrote { "write" } else { "read" }
            ),
        )
    }

    /// Runs up to `quantum` instructions; returns why it stopped and how many ran.
    pub fn run(&mut self, funcs: &[Func], cx: &mut Cx, quantum: u32) -> Result<(Stop, u32), Fail> {
        let mut code = &funcs[self.func as usize].code[..];
        let mut n = 0;
        while n < quantum {
            n += 1;
            cx.clock += 1;
            let at = self.pc;
            let ins = &code[at as usize];
            self.pc = at + 1;
            if ins.guard != NO_REG && ((self.regs[ins.guard as usize] & 1 != 0) == ins.guard_neg) {
                continue;
            }
            match &ins.op {
                Op::Mov { ty, d, a } => self.regs[*d as usize] = mask(self.get(a, cx), ty.bits()),
                Op::Int { op, ty, d, a, b } => {
                    let r = int_op(*op, *ty, self.get(a, cx), self.get(b, cx));
                    self.regs[*d as usize] = r;
                }
                Op::Float { op, f64, d, a, b } => {
                    let (x, y) = (self.get(a, cx), self.get(b, cx));
                    self.regs[*d as usize] = if *f64 {
                        let (x, y) = (f64::from_bits(x), f64::from_bits(y));
                        match op {
                            FBin::Add => r64(x + y, &[x, y]),
                            FBin::Sub => r64(x - y, &[x, y]),
                            FBin::Mul => r64(x * y, &[x, y]),
                            FBin::Div => r64(x / y, &[x, y]),
                            FBin::Min => minmax64(x, y, false),
                            FBin::Max => minmax64(x, y, true),
                        }
                    } else {
                        let (x, y) = (f32::from_bits(x as u32), f32::from_bits(y as u32));
                        match op {
                            FBin::Add => r32(x + y),
                            FBin::Sub => r32(x - y),
                            FBin::Mul => r32(x * y),
                            FBin::Div => r32(x / y),
                            FBin::Min => minmax32(x, y, false),
                            FBin::Max => minmax32(x, y, true),
                        }
                    };
                }
                Op::Fma { f64, d, a, b, c } => {
                    let (x, y, z) = (self.get(a, cx), self.get(b, cx), self.get(c, cx));
                    self.regs[*d as usize] = if *f64 {
                        let (x, y, z) = (f64::from_bits(x), f64::from_bits(y), f64::from_bits(z));
                        r64(x.mul_add(y, z), &[x, y, z])
                    } else {
                        r32(f32::from_bits(x as u32).mul_add(f32::from_bits(y as u32), f32::from_bits(z as u32)))
                    };
                }
                Op::Setp { cmp, ty, d, dn, a, b, comb } => {
                    let mut p = compare(*cmp, *ty, self.get(a, cx), self.get(b, cx));
                    let mut q = !p;
                    if let Some((bop, c, neg)) = comb {
                        let c = (self.get(c, cx) & 1 != 0) != *neg;
                        let f = |x: bool| match bop {
                            BoolOp::And => x && c,
                            BoolOp::Or => x || c,
                            BoolOp::Xor => x ^ c,
                        };
                        p = f(p);
                        q = f(q);
                    }
                    self.regs[*d as usize] = p as u64;
                    if *dn != NO_REG {
                        self.regs[*dn as usize] = q as u64;
                    }
                }
                Op::Selp { ty, d, a, b, p } => {
                    let v = if self.get(p, cx) & 1 != 0 { self.get(a, cx) } else { self.get(b, cx) };
                    self.regs[*d as usize] = mask(v, ty.bits());
                }
                Op::Bra { target } => self.pc = *target,
                Op::Ld { space, ty, ds, n, addr, volatile } => {
                    let es = ty.bytes() as usize;
                    let a = self.ea(addr);
                    let a = if addr.base == Base::DynShared { a.wrapping_add(cx.dyn_shared) } else { a };
                    let loc = self.locate(cx, *space, a, es * *n as usize, at)?;
                    for (i, d) in ds.iter().enumerate().take(*n as usize) {
                        let v = self.load(cx, offset(loc, i * es), es, at)?;
                        self.regs[*d as usize] = if ty.signed() { sext(v, ty.bits()) as u64 } else { v };
                    }
                    if *volatile {
                        cx.spins += 1;
                    }
                }
                Op::St { space, ty, src, n, addr } => {
                    let es = ty.bytes() as usize;
                    let a = self.ea(addr);
                    let a = if addr.base == Base::DynShared { a.wrapping_add(cx.dyn_shared) } else { a };
                    let loc = self.locate(cx, *space, a, es * *n as usize, at)?;
                    for (i, s) in src.iter().enumerate().take(*n as usize) {
                        let v = self.get(s, cx);
                        self.store(cx, offset(loc, i * es), es, v, at)?;
                    }
                }
                Op::MulWide { ty, d, a, b } => {
                    let (x, y) = (ext(self.get(a, cx), *ty), ext(self.get(b, cx), *ty));
                    self.regs[*d as usize] = mask(x.wrapping_mul(y) as u64, ty.bits() * 2);
                }
                Op::Mad { mode, ty, d, a, b, c, cin, cout } => {
                    let bits = ty.bits();
                    let (x, y) = (ext(self.get(a, cx), *ty), ext(self.get(b, cx), *ty));
                    let prod = x.wrapping_mul(y);
                    let (p, w) = match mode {
                        MadMode::Lo => (mask(prod as u64, bits) as u128, bits),
                        MadMode::Hi => (mask((prod >> bits) as u64, bits) as u128, bits),
                        MadMode::Wide => (mask(prod as u64, bits * 2) as u128, bits * 2),
                    };
                    let cv = mask(self.get(c, cx), w) as u128;
                    let sum = p + cv + (*cin && self.carry) as u128;
                    if *cout {
                        self.carry = (sum >> w) & 1 != 0;
                    }
                    self.regs[*d as usize] = mask(sum as u64, w);
                }
                Op::AddC { sub, ty, d, a, b, cin, cout } => {
                    let bits = ty.bits();
                    let (x, y) = (mask(self.get(a, cx), bits) as u128, mask(self.get(b, cx), bits) as u128);
                    let ci = (*cin && self.carry) as u128;
                    let (r, c) = if *sub {
                        (x.wrapping_sub(y + ci), x < y + ci)
                    } else {
                        let s = x + y + ci;
                        (s, (s >> bits) & 1 != 0)
                    };
                    if *cout {
                        self.carry = c;
                    }
                    self.regs[*d as usize] = mask(r as u64, bits);
                }
                Op::IntUn { op, ty, d, a } => {
                    let bits = ty.bits();
                    let v = mask(self.get(a, cx), bits);
                    self.regs[*d as usize] = match op {
                        IUn::Neg => mask(v.wrapping_neg(), bits),
                        IUn::Abs => mask(sext(v, bits).unsigned_abs(), bits),
                        IUn::Not => mask(!v, bits),
                        IUn::Cnot => (v == 0) as u64,
                        IUn::Clz => (v.leading_zeros() - (64 - bits)) as u64,
                        IUn::Popc => v.count_ones() as u64,
                        IUn::Brev => v.reverse_bits() >> (64 - bits),
                    };
                }
                Op::FloatUn { op, f64, d, a } => {
                    let v = self.get(a, cx);
                    self.regs[*d as usize] = if *f64 {
                        let x = f64::from_bits(v);
                        match op {
                            FUn::Neg => v ^ (1 << 63),
                            FUn::Abs => v & !(1 << 63),
                            FUn::Sqrt | FUn::SqrtApprox => r64(x.sqrt(), &[x]),
                            FUn::Rcp => r64(1.0 / x, &[x]),
                            FUn::RcpApprox => {
                                // Not bit-exact: ftz, then 1/x keeping the high word
                                // (the hardware's MUFU.RCP64H gives ~20 mantissa bits).
                                let x = if x.is_subnormal() { 0.0f64.copysign(x) } else { x };
                                let r = 1.0 / x;
                                if r.is_finite() && r != 0.0 {
                                    r.to_bits() & 0xffff_ffff_0000_0000
                                } else {
                                    r64(r, &[x])
                                }
                            }
                            FUn::RsqrtApprox => r64(1.0 / x.sqrt(), &[x]),
                            FUn::Ex2Approx => r64(x.exp2(), &[x]),
                            FUn::Lg2Approx => r64(x.log2(), &[x]),
                        }
                    } else {
                        let x = f32::from_bits(v as u32);
                        match op {
                            FUn::Neg => (v as u32 ^ (1 << 31)) as u64,
                            FUn::Abs => (v as u32 & !(1 << 31)) as u64,
                            FUn::Sqrt | FUn::SqrtApprox => r32(x.sqrt()),
                            FUn::Rcp => r32(1.0 / x),
                            FUn::RcpApprox => r32(1.0 / x),
                            FUn::RsqrtApprox => r32(1.0 / x.sqrt()),
                            FUn::Ex2Approx => r32(x.exp2()),
                            FUn::Lg2Approx => r32(x.log2()),
                        }
                    };
                }
                Op::Cvt { dt, st, rnd, sat, d, a } => {
                    let v = self.get(a, cx);
                    self.regs[*d as usize] = cvt(*dt, *st, *rnd, *sat, v).ok_or_else(|| {
                        self.fail(at, 801, format!("unsupported conversion {dt:?} <- {st:?} {rnd:?}"))
                    })?;
                }
                Op::Pack { d, parts, part_bits } => {
                    let mut r = 0u64;
                    for (i, p) in parts.iter().enumerate() {
                        r |= mask(self.get(p, cx), *part_bits) << (i as u32 * part_bits);
                    }
                    self.regs[*d as usize] = r;
                }
                Op::Unpack { ds, a, part_bits } => {
                    let v = self.get(a, cx);
                    for (i, r) in ds.iter().enumerate() {
                        self.regs[*r as usize] = mask(v >> (i as u32 * part_bits), *part_bits);
                    }
                }
                Op::Atom { space, op, ty, d, addr, b, c } => {
                    let es = ty.bytes() as usize;
                    let a = self.ea(addr);
                    let a = if addr.base == Base::DynShared { a.wrapping_add(cx.dyn_shared) } else { a };
                    let loc = self.locate(cx, *space, a, es, at)?;
                    let old = match loc {
                        Loc::Global(g) => read_le(cx.mem.slice(g, es).map_err(|e| self.fail(at, 700, e.to_string()))?),
                        Loc::Shared(o) => read_le(&cx.shared[o..o + es]),
                        _ => return Err(self.fail(at, 700, "atomic outside global and shared memory".into())),
                    };
                    let (x, y) = (self.get(b, cx), self.get(c, cx));
                    let new = atom_op(*op, *ty, old, x, y);
                    let bytes = new.to_le_bytes();
                    match loc {
                        Loc::Global(g) => {
                            let dst = cx.mem.slice_mut(g, es).map_err(|e| self.fail(at, 700, e.to_string()))?;
                            if dst != &bytes[..es] {
                                dst.copy_from_slice(&bytes[..es]);
                                cx.progress = true;
                            } else {
                                cx.spins += 1;
                            }
                        }
                        Loc::Shared(o) => cx.shared[o..o + es].copy_from_slice(&bytes[..es]),
                        _ => {}
                    }
                    if *d != NO_REG {
                        self.regs[*d as usize] = old;
                    }
                }
                Op::Bar { count } => {
                    let c = count.as_ref().map(|c| self.get(c, cx) as u32);
                    return Ok((Stop::Bar(c), n));
                }
                Op::Membar | Op::Nop => {}
                Op::Shfl { mode, d, p, a, b, c, mask: m } => {
                    self.shfl = ShflWait {
                        mode: Some(*mode),
                        d: *d,
                        p: *p,
                        a: self.get(a, cx) as u32,
                        b: self.get(b, cx) as u32,
                        c: self.get(c, cx) as u32,
                        mask: self.get(m, cx) as u32,
                    };
                    return Ok((Stop::Shfl, n));
                }
                Op::Call { func, args, .. } => {
                    let callee = &funcs[*func as usize];
                    let caller_depot = funcs[self.func as usize].depot;
                    let mut params = vec![0u8; callee.param_bytes as usize];
                    for (i, (off, size)) in args.iter().enumerate() {
                        let (to, tsize) = callee.sig.params[i];
                        let len = (*size).min(tsize) as usize;
                        params[to as usize..to as usize + len]
                            .copy_from_slice(&self.params[*off as usize..*off as usize + len]);
                    }
                    let local_base = (self.local_base + caller_depot).next_multiple_of(16);
                    let need = (local_base + callee.depot) as usize;
                    if self.local.len() < need {
                        self.local.resize(need, 0);
                    }
                    if self.stack.len() > 1000 {
                        return Err(self.fail(at, 719, "call stack deeper than 1000 frames".into()));
                    }
                    let regs = std::mem::replace(&mut self.regs, vec![0; callee.nregs as usize]);
                    let params = std::mem::replace(&mut self.params, params);
                    self.stack.push(Frame {
                        func: self.func,
                        ret_pc: self.pc,
                        regs,
                        params,
                        local_base: std::mem::replace(&mut self.local_base, local_base),
                    });
                    self.func = *func;
                    self.pc = 0;
                    code = &callee.code[..];
                }
                Op::Ret => {
                    let Some(fr) = self.stack.pop() else {
                        return Ok((Stop::Exit, n));
                    };
                    let callee = &funcs[self.func as usize];
                    let caller = &funcs[fr.func as usize];
                    let callee_params = std::mem::replace(&mut self.params, fr.params);
                    if let Op::Call { rets, .. } = &caller.code[fr.ret_pc as usize - 1].op {
                        for (i, (off, size)) in rets.iter().enumerate() {
                            let (from, fsize) = callee.sig.rets[i];
                            let len = (*size).min(fsize) as usize;
                            self.params[*off as usize..*off as usize + len]
                                .copy_from_slice(&callee_params[from as usize..from as usize + len]);
                        }
                    }
                    self.regs = fr.regs;
                    self.func = fr.func;
                    self.pc = fr.ret_pc;
                    self.local_base = fr.local_base;
                    code = &caller.code[..];
                }
                Op::Exit => return Ok((Stop::Exit, n)),
                Op::Trap => return Err(self.fail(at, 715, "trap".into())),
                Op::Nanosleep => {
                    cx.spins += 1;
                    return Ok((Stop::Yield, n));
                }
                Op::Unsupported => return Err(self.fail(at, 801, "unsupported instruction".into())),
            }
        }
        Ok((Stop::Quantum, n))
    }
}

fn offset(loc: Loc, by: usize) -> Loc {
    match loc {
        Loc::Global(a) => Loc::Global(a + by as u64),
        Loc::Shared(o) => Loc::Shared(o + by),
        Loc::Local(o) => Loc::Local(o + by),
        Loc::KParam(o) => Loc::KParam(o + by),
        Loc::FParam(o) => Loc::FParam(o + by),
    }
}

/// Integer (and predicate) binary operations with PTX semantics.
pub fn int_op(op: IBin, ty: Ty, a: u64, b: u64) -> u64 {
    let bits = ty.bits();
    let signed = ty.signed();
    let r = match op {
        IBin::Add => a.wrapping_add(b),
        IBin::Sub => a.wrapping_sub(b),
        IBin::MulLo => a.wrapping_mul(b),
        IBin::MulHi => (ext(a, ty).wrapping_mul(ext(b, ty)) >> bits) as u64,
        IBin::Div => {
            if signed {
                let (x, y) = (sext(a, bits), sext(b, bits));
                if y == 0 {
                    u64::MAX
                } else {
                    x.wrapping_div(y) as u64
                }
            } else {
                let (x, y) = (mask(a, bits), mask(b, bits));
                x.checked_div(y).unwrap_or(u64::MAX)
            }
        }
        IBin::Rem => {
            if signed {
                let (x, y) = (sext(a, bits), sext(b, bits));
                if y == 0 {
                    x as u64
                } else {
                    x.wrapping_rem(y) as u64
                }
            } else {
                let (x, y) = (mask(a, bits), mask(b, bits));
                if y == 0 {
                    x
                } else {
                    x % y
                }
            }
        }
        IBin::And => a & b,
        IBin::Or => a | b,
        IBin::Xor => a ^ b,
        IBin::Shl => {
            let s = b as u32;
            if s >= bits {
                0
            } else {
                a << s
            }
        }
        IBin::Shr => {
            let s = b as u32;
            if signed {
                (sext(a, bits) >> s.min(bits - 1)) as u64
            } else if s >= bits {
                0
            } else {
                mask(a, bits) >> s
            }
        }
        IBin::Min | IBin::Max => {
            let (x, y) = (ext(a, ty), ext(b, ty));
            let m = if (op == IBin::Min) == (x < y) { x } else { y };
            m as u64
        }
    };
    mask(r, bits)
}

fn fval(ty: Ty, v: u64) -> f64 {
    match ty {
        Ty::F32 => f32::from_bits(v as u32) as f64,
        Ty::F16 => half::f16::from_bits(v as u16).to_f64(),
        Ty::BF16 => half::bf16::from_bits(v as u16).to_f64(),
        _ => f64::from_bits(v),
    }
}

/// `setp` comparisons.
pub fn compare(cmp: Cmp, ty: Ty, a: u64, b: u64) -> bool {
    if ty.float() {
        let (x, y) = (fval(ty, a), fval(ty, b));
        let nan = x.is_nan() || y.is_nan();
        match cmp {
            Cmp::Eq => x == y,
            Cmp::Ne => !nan && x != y,
            Cmp::Lt => x < y,
            Cmp::Le => x <= y,
            Cmp::Gt => x > y,
            Cmp::Ge => x >= y,
            Cmp::Equ => nan || x == y,
            Cmp::Neu => nan || x != y,
            Cmp::Ltu => nan || x < y,
            Cmp::Leu => nan || x <= y,
            Cmp::Gtu => nan || x > y,
            Cmp::Geu => nan || x >= y,
            Cmp::Num => !nan,
            Cmp::Nan => nan,
        }
    } else {
        let (x, y) = (ext(a, ty), ext(b, ty));
        match cmp {
            Cmp::Eq | Cmp::Equ => x == y,
            Cmp::Ne | Cmp::Neu => x != y,
            Cmp::Lt | Cmp::Ltu => x < y,
            Cmp::Le | Cmp::Leu => x <= y,
            Cmp::Gt | Cmp::Gtu => x > y,
            Cmp::Ge | Cmp::Geu => x >= y,
            Cmp::Num => true,
            Cmp::Nan => false,
        }
    }
}

/// `cvt`; `None` for a combination not implemented.
pub fn cvt(dt: Ty, st: Ty, rnd: Rnd, sat: bool, v: u64) -> Option<u64> {
    let int_range = |t: Ty| -> (i128, i128) {
        let b = t.bits();
        if t.signed() {
            (-(1i128 << (b - 1)), (1i128 << (b - 1)) - 1)
        } else {
            (0, (1i128 << b) - 1)
        }
    };
    Some(match (dt.float(), st.float()) {
        (false, false) => {
            let mut x = ext(v, st);
            if sat {
                let (lo, hi) = int_range(dt);
                x = x.clamp(lo, hi);
            }
            mask(x as u64, dt.bits())
        }
        (false, true) => {
            let x = fval(st, v);
            if !matches!(rnd, Rnd::Rni | Rnd::Rzi | Rnd::Rmi | Rnd::Rpi | Rnd::None) {
                return None;
            }
            if x.is_nan() {
                return Some(0);
            }
            let r = round_int(x, rnd);
            let (lo, hi) = int_range(dt);
            // f64 -> i128 saturates; then clamp to the destination's range.
            let i = (r as i128).clamp(lo, hi);
            mask(i as u64, dt.bits())
        }
        (true, false) => {
            if !matches!(rnd, Rnd::Rn | Rnd::None) {
                // Exact conversions do not depend on the mode.
                let exact = st.bits() <= 16 || (dt == Ty::F64 && st.bits() <= 32);
                if !exact {
                    return None;
                }
            }
            let x = ext(v, st);
            match dt {
                Ty::F32 => {
                    let f = if st.signed() { (x as i64) as f32 } else { (x as u64) as f32 };
                    f.to_bits() as u64
                }
                Ty::F64 => (if st.signed() { (x as i64) as f64 } else { (x as u64) as f64 }).to_bits(),
                Ty::F16 if st.bits() <= 32 => f64_to_f16(x as f64) as u64,
                Ty::BF16 if st.bits() <= 32 => f64_to_bf16(x as f64) as u64,
                _ => return None,
            }
        }
        (true, true) => {
            let x = fval(st, v);
            let rounded_int = matches!(rnd, Rnd::Rni | Rnd::Rzi | Rnd::Rmi | Rnd::Rpi);
            let narrowing = dt.bits() < st.bits();
            if narrowing && !matches!(rnd, Rnd::Rn | Rnd::None) {
                return None;
            }
            let mut r = match (dt, st) {
                (Ty::F64, _) => {
                    if st == Ty::F32 {
                        (f32::from_bits(v as u32) as f64).to_bits()
                    } else if x.is_nan() {
                        NAN64
                    } else {
                        x.to_bits()
                    }
                }
                (Ty::F32, Ty::F64) => r32(x as f32),
                (Ty::F32, _) => r32(x as f32),
                (Ty::F16, Ty::F32) => f32_to_f16(f32::from_bits(v as u32)) as u64,
                (Ty::F16, Ty::F64) => f64_to_f16(x) as u64,
                (Ty::BF16, Ty::F32) => f32_to_bf16(f32::from_bits(v as u32)) as u64,
                (Ty::BF16, Ty::F64) => f64_to_bf16(x) as u64,
                (Ty::F16, Ty::F16) | (Ty::BF16, Ty::BF16) => v & 0xffff,
                _ => return None,
            };
            if rounded_int {
                if dt != st {
                    return None;
                }
                r = match dt {
                    Ty::F32 => r32(round_int(x, rnd) as f32),
                    Ty::F64 => r64(round_int(x, rnd), &[x]),
                    _ => return None,
                };
            }
            if sat {
                let y = fval(dt, r);
                let c = if y.is_nan() { 0.0 } else { y.clamp(0.0, 1.0) };
                if c != y || y.is_nan() {
                    r = match dt {
                        Ty::F32 => (c as f32).to_bits() as u64,
                        Ty::F64 => c.to_bits(),
                        _ => return None,
                    };
                }
            }
            r
        }
    })
}

fn atom_op(op: AtomOp, ty: Ty, old: u64, b: u64, c: u64) -> u64 {
    let bits = ty.bits();
    match op {
        AtomOp::Add => match ty {
            Ty::F32 => r32(f32::from_bits(old as u32) + f32::from_bits(b as u32)),
            Ty::F64 => {
                let (x, y) = (f64::from_bits(old), f64::from_bits(b));
                r64(x + y, &[x, y])
            }
            _ => mask(old.wrapping_add(b), bits),
        },
        AtomOp::Exch => b,
        AtomOp::Cas => {
            if mask(old, bits) == mask(b, bits) {
                c
            } else {
                old
            }
        }
        AtomOp::Min => int_op(IBin::Min, ty, old, b),
        AtomOp::Max => int_op(IBin::Max, ty, old, b),
        AtomOp::And => old & b,
        AtomOp::Or => old | b,
        AtomOp::Xor => old ^ b,
        AtomOp::Inc => {
            if mask(old, bits) >= mask(b, bits) {
                0
            } else {
                old + 1
            }
        }
        AtomOp::Dec => {
            if old == 0 || mask(old, bits) > mask(b, bits) {
                b
            } else {
                old - 1
            }
        }
    }
}
