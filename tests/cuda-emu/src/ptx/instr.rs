//! The decoded instruction set: what the executor matches on. Operands are
//! already resolved to register indices, immediates and addresses.
//!
//! To add an instruction: add a variant (or reuse one) here, produce it in
//! `decode.rs` (`decode_op`), and execute it in `exec.rs` (`Thread::step`).

/// A PTX scalar type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// `.pred`
    Pred,
    /// `.b8`/`.u8`
    U8,
    /// `.s8`
    S8,
    /// `.b16`/`.u16`
    U16,
    /// `.s16`
    S16,
    /// `.b32`/`.u32`
    U32,
    /// `.s32`
    S32,
    /// `.b64`/`.u64`
    U64,
    /// `.s64`
    S64,
    /// `.f16`
    F16,
    /// `.bf16`
    BF16,
    /// `.f32`
    F32,
    /// `.f64`
    F64,
}

impl Ty {
    /// Parses a type name without the dot.
    pub fn parse(s: &str) -> Option<Ty> {
        Some(match s {
            "pred" => Ty::Pred,
            "b8" | "u8" => Ty::U8,
            "s8" => Ty::S8,
            "b16" | "u16" => Ty::U16,
            "s16" => Ty::S16,
            "b32" | "u32" => Ty::U32,
            "s32" => Ty::S32,
            "b64" | "u64" => Ty::U64,
            "s64" => Ty::S64,
            "f16" => Ty::F16,
            "bf16" => Ty::BF16,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            _ => return None,
        })
    }
    /// Width in bits (1 for predicates).
    pub fn bits(self) -> u32 {
        match self {
            Ty::Pred => 1,
            Ty::U8 | Ty::S8 => 8,
            Ty::U16 | Ty::S16 | Ty::F16 | Ty::BF16 => 16,
            Ty::U32 | Ty::S32 | Ty::F32 => 32,
            Ty::U64 | Ty::S64 | Ty::F64 => 64,
        }
    }
    /// Bytes in memory.
    pub fn bytes(self) -> u32 {
        (self.bits() / 8).max(1)
    }
    /// Signed integer.
    pub fn signed(self) -> bool {
        matches!(self, Ty::S8 | Ty::S16 | Ty::S32 | Ty::S64)
    }
    /// Floating point.
    pub fn float(self) -> bool {
        matches!(self, Ty::F16 | Ty::BF16 | Ty::F32 | Ty::F64)
    }
}

/// Special registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sreg {
    /// `%tid.{x,y,z}`
    Tid(u8),
    /// `%ntid.{x,y,z}`
    Ntid(u8),
    /// `%ctaid.{x,y,z}`
    Ctaid(u8),
    /// `%nctaid.{x,y,z}`
    Nctaid(u8),
    /// `%laneid`
    Laneid,
    /// `%warpid`
    Warpid,
    /// `%nwarpid`
    Nwarpid,
    /// `%globaltimer` (host nanoseconds)
    GlobalTimer,
    /// `%clock`
    Clock,
    /// `%clock64`
    Clock64,
    /// `%smid` (always 0)
    Smid,
    /// `%lanemask_lt` etc. are not here; the address of this frame's local depot.
    Depot,
    /// The address of dynamic (`.extern .shared`) shared memory.
    DynShared,
}

/// An operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opd {
    /// A register of the current frame.
    Reg(u32),
    /// An immediate (bits, already in the instruction's type).
    Imm(u64),
    /// A special register.
    Sreg(Sreg),
}

/// What an address is relative to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// Absolute (a symbol's address folded into the offset).
    None,
    /// A register.
    Reg(u32),
    /// This frame's local depot.
    Depot,
    /// Dynamic shared memory.
    DynShared,
}

/// `[base + off]`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    /// What it is relative to.
    pub base: Base,
    /// Byte offset (or absolute address).
    pub off: i64,
}

/// State spaces of loads and stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// `.global` (and `.const`)
    Global,
    /// `.shared`
    Shared,
    /// `.local`
    Local,
    /// `.param` of the kernel (through the parameter window).
    KParam,
    /// `.param` of the current function frame (call arguments and returns).
    FParam,
    /// No space: decided by the address window.
    Generic,
}

/// Integer binary operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IBin {
    /// `add`
    Add,
    /// `sub`
    Sub,
    /// `mul.lo`
    MulLo,
    /// `mul.hi`
    MulHi,
    /// `div`
    Div,
    /// `rem`
    Rem,
    /// `and`
    And,
    /// `or`
    Or,
    /// `xor`
    Xor,
    /// `shl`
    Shl,
    /// `shr`
    Shr,
    /// `min`
    Min,
    /// `max`
    Max,
}

/// Integer unary operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IUn {
    /// `neg`
    Neg,
    /// `abs`
    Abs,
    /// `not` (and `not.pred`)
    Not,
    /// `cnot`
    Cnot,
    /// `clz`
    Clz,
    /// `popc`
    Popc,
    /// `brev`
    Brev,
}

/// Float binary operations (round to nearest even only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FBin {
    /// `add.rn`
    Add,
    /// `sub.rn`
    Sub,
    /// `mul.rn`
    Mul,
    /// `div.rn`
    Div,
    /// `min`
    Min,
    /// `max`
    Max,
}

/// Float unary operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FUn {
    /// `neg`
    Neg,
    /// `abs`
    Abs,
    /// `sqrt.rn`
    Sqrt,
    /// `rcp.rn`
    Rcp,
    /// `rcp.approx(.ftz).f64`: not bit-exact with hardware (computed as a
    /// correctly rounded 1/x, then the low 32 bits cleared as the hardware's
    /// 20-bit-mantissa seed would leave them).
    RcpApprox,
    /// `rsqrt.approx`: not bit-exact with hardware (correctly rounded 1/sqrt).
    RsqrtApprox,
    /// `sqrt.approx.f32`: not bit-exact with hardware (correctly rounded).
    SqrtApprox,
    /// `ex2.approx.f32`: not bit-exact with hardware (host `exp2`).
    Ex2Approx,
    /// `lg2.approx.f32`: not bit-exact with hardware (host `log2`).
    Lg2Approx,
}

/// Comparison operators of `setp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// `eq`
    Eq,
    /// `ne`
    Ne,
    /// `lt`/`lo`
    Lt,
    /// `le`/`ls`
    Le,
    /// `gt`/`hi`
    Gt,
    /// `ge`/`hs`
    Ge,
    /// `equ`
    Equ,
    /// `neu`
    Neu,
    /// `ltu`
    Ltu,
    /// `leu`
    Leu,
    /// `gtu`
    Gtu,
    /// `geu`
    Geu,
    /// `num`
    Num,
    /// `nan`
    Nan,
}

/// Boolean combination in `setp.op.bop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoolOp {
    /// `.and`
    And,
    /// `.or`
    Or,
    /// `.xor`
    Xor,
}

/// Rounding modifier of `cvt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rnd {
    /// none given
    None,
    /// `.rn`
    Rn,
    /// `.rz`
    Rz,
    /// `.rm`
    Rm,
    /// `.rp`
    Rp,
    /// `.rni`
    Rni,
    /// `.rzi`
    Rzi,
    /// `.rmi`
    Rmi,
    /// `.rpi`
    Rpi,
}

/// `shfl.sync` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShflMode {
    /// `.up`
    Up,
    /// `.down`
    Down,
    /// `.bfly`
    Bfly,
    /// `.idx`
    Idx,
}

/// Atomic operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomOp {
    /// `.add`
    Add,
    /// `.exch`
    Exch,
    /// `.cas`
    Cas,
    /// `.min`
    Min,
    /// `.max`
    Max,
    /// `.and`
    And,
    /// `.or`
    Or,
    /// `.xor`
    Xor,
    /// `.inc`
    Inc,
    /// `.dec`
    Dec,
}

/// How `mad` keeps its product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MadMode {
    /// `.lo`
    Lo,
    /// `.hi`
    Hi,
    /// `.wide`
    Wide,
}

/// Marker for "no register".
pub const NO_REG: u32 = u32::MAX;

/// A decoded operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `mov` (and `cvta`, whose windows are identities here): copy the bits,
    /// truncated to the type.
    Mov { ty: Ty, d: u32, a: Opd },
    /// `mov.bN d, {a, b, ...}`: pack parts of `part_bits` each.
    Pack { d: u32, parts: Vec<Opd>, part_bits: u32 },
    /// `mov.bN {a, b, ...}, s`: unpack.
    Unpack { ds: Vec<u32>, a: Opd, part_bits: u32 },
    /// Integer (and predicate logic) binary operation.
    Int { op: IBin, ty: Ty, d: u32, a: Opd, b: Opd },
    /// `mul.wide`: `ty` is the source type; the result is twice as wide.
    MulWide { ty: Ty, d: u32, a: Opd, b: Opd },
    /// `mad.{lo,hi,wide}(.cc)`, `madc`: integer multiply-add with carries.
    Mad { mode: MadMode, ty: Ty, d: u32, a: Opd, b: Opd, c: Opd, cin: bool, cout: bool },
    /// `add.cc`/`addc(.cc)`/`sub.cc`/`subc(.cc)`
    AddC { sub: bool, ty: Ty, d: u32, a: Opd, b: Opd, cin: bool, cout: bool },
    /// Integer unary operation (`clz`/`popc` write a u32).
    IntUn { op: IUn, ty: Ty, d: u32, a: Opd },
    /// Float binary operation (`f64`: double precision, else single).
    Float { op: FBin, f64: bool, d: u32, a: Opd, b: Opd },
    /// `fma.rn` / `mad.rn` on floats.
    Fma { f64: bool, d: u32, a: Opd, b: Opd, c: Opd },
    /// Float unary operation.
    FloatUn { op: FUn, f64: bool, d: u32, a: Opd },
    /// `setp`
    Setp { cmp: Cmp, ty: Ty, d: u32, dn: u32, a: Opd, b: Opd, comb: Option<(BoolOp, Opd, bool)> },
    /// `selp`
    Selp { ty: Ty, d: u32, a: Opd, b: Opd, p: Opd },
    /// `cvt`
    Cvt { dt: Ty, st: Ty, rnd: Rnd, sat: bool, d: u32, a: Opd },
    /// `ld`: `n` elements of `ty` into `ds`.
    Ld { space: Space, ty: Ty, ds: [u32; 4], n: u8, addr: Addr, volatile: bool },
    /// `st`
    St { space: Space, ty: Ty, src: [Opd; 4], n: u8, addr: Addr },
    /// `atom` (and `red` with `d == NO_REG`)
    Atom { space: Space, op: AtomOp, ty: Ty, d: u32, addr: Addr, b: Opd, c: Opd },
    /// `bra`
    Bra { target: u32 },
    /// `bar.sync`/`barrier.sync` with an optional thread count.
    Bar { count: Option<Opd> },
    /// `membar`/`fence`: a no-op for one host thread.
    Membar,
    /// `shfl.sync`
    Shfl { mode: ShflMode, d: u32, p: u32, a: Opd, b: Opd, c: Opd, mask: Opd },
    /// `call`: copy `args` (caller frame param offset, size) into the callee's
    /// parameters; on return copy its results into `rets`.
    Call { func: u32, args: Vec<(u32, u32)>, rets: Vec<(u32, u32)> },
    /// `ret`
    Ret,
    /// `exit`
    Exit,
    /// `trap`
    Trap,
    /// `nanosleep`: yields.
    Nanosleep,
    /// Nothing to do (e.g. `prefetch`).
    Nop,
    /// An instruction the interpreter does not know; a launch reaching the
    /// kernel fails naming it.
    Unsupported,
}

/// One instruction: its guard and operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Instr {
    /// Guard predicate register (`NO_REG`: none).
    pub guard: u32,
    /// `@!%p`
    pub guard_neg: bool,
    /// The operation.
    pub op: Op,
}
