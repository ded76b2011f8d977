//! Turns the statements of one function body into [`Instr`]s: registers to
//! indices, symbols to addresses, labels to instruction indices.

use super::instr::*;
use super::parse::{parse_decl, split_operands, Decl, Item};
use super::{LOCAL_BASE, PARAM_BASE, SHARED_BASE};
use std::collections::HashMap;

/// What a module-scope name stands for.
#[derive(Debug, Clone, Copy)]
pub enum Sym {
    /// A `.global`/`.const` variable at this device address.
    Global(u64),
    /// A `.shared` variable at this offset of the block's shared memory.
    Shared(u64),
    /// The `.extern .shared` array (dynamic shared memory).
    DynShared,
}

/// A function's calling convention, known before bodies are decoded.
#[derive(Debug, Clone, Default)]
pub struct Sig {
    /// (offset, size) of each value parameter in the frame's param area.
    pub params: Vec<(u32, u32)>,
    /// (offset, size) of each return parameter.
    pub rets: Vec<(u32, u32)>,
    /// Names with their offsets (params then returns).
    pub names: Vec<(String, u32, u32)>,
    /// Bytes used by params and returns.
    pub end: u32,
}

impl Sig {
    /// Lays out `params` then `rets`.
    pub fn new(params: &[Decl], rets: &[Decl]) -> Sig {
        let mut s = Sig::default();
        let mut end = 0u32;
        for (list, is_ret) in [(params, false), (rets, true)] {
            for d in list {
                let at = end.next_multiple_of(d.alignment().max(1) as u32);
                let size = d.size() as u32;
                if is_ret {
                    s.rets.push((at, size));
                } else {
                    s.params.push((at, size));
                }
                s.names.push((d.name.clone(), at, size));
                end = at + size;
            }
        }
        s.end = end;
        s
    }
}

/// A decoded function.
#[derive(Debug, Default)]
pub struct Func {
    /// Name.
    pub name: String,
    /// `.entry`
    pub entry: bool,
    /// Instructions.
    pub code: Vec<Instr>,
    /// PTX line of each instruction.
    pub lines: Vec<u32>,
    /// Text of each instruction.
    pub texts: Vec<String>,
    /// Registers (predicates included).
    pub nregs: u32,
    /// Bytes of this frame's param area.
    pub param_bytes: u32,
    /// Calling convention.
    pub sig: Sig,
    /// Bytes of the local depot.
    pub depot: u32,
    /// Bytes of `.shared` declared in the body (offsets start at `shared_at`).
    pub shared: u32,
    /// The first unsupported instruction (index).
    pub unsupported: Option<usize>,
    /// Functions it calls.
    pub callees: Vec<u32>,
}

struct Ctx<'a> {
    syms: &'a HashMap<String, Sym>,
    funcs: &'a HashMap<String, u32>,
    sigs: &'a [Sig],
    regs: HashMap<String, u32>,
    ranges: Vec<(String, u32, u32)>,
    nregs: u32,
    kparams: HashMap<String, u32>,
    fparams: HashMap<String, (u32, u32)>,
    param_end: u32,
    depot_name: Option<String>,
    depot: u32,
    shared: HashMap<String, u64>,
    shared_end: u64,
}

type R<T> = Result<T, String>;

impl Ctx<'_> {
    fn reg(&self, name: &str) -> R<u32> {
        if let Some(&r) = self.regs.get(name) {
            return Ok(r);
        }
        let digits = name.len() - name.bytes().rev().take_while(|b| b.is_ascii_digit()).count();
        let (prefix, num) = name.split_at(digits);
        if let Ok(n) = num.parse::<u32>() {
            for (p, base, count) in &self.ranges {
                if p == prefix && n < *count {
                    return Ok(base + n);
                }
            }
        }
        Err(format!("unknown register {name}"))
    }

    fn sreg(name: &str) -> Option<Sreg> {
        let dim = |s: &str| match s {
            "x" => Some(0u8),
            "y" => Some(1),
            "z" => Some(2),
            _ => None,
        };
        let (head, tail) = name.split_once('.').unwrap_or((name, ""));
        Some(match head {
            "%tid" => Sreg::Tid(dim(tail)?),
            "%ntid" => Sreg::Ntid(dim(tail)?),
            "%ctaid" => Sreg::Ctaid(dim(tail)?),
            "%nctaid" => Sreg::Nctaid(dim(tail)?),
            "%laneid" => Sreg::Laneid,
            "%warpid" => Sreg::Warpid,
            "%nwarpid" => Sreg::Nwarpid,
            "%globaltimer" => Sreg::GlobalTimer,
            "%clock" => Sreg::Clock,
            "%clock64" => Sreg::Clock64,
            "%smid" => Sreg::Smid,
            _ => return None,
        })
    }

    /// A symbol's value as an operand (its address in its own space).
    fn symbol(&self, name: &str) -> R<Opd> {
        if let Some(&off) = self.shared.get(name) {
            return Ok(Opd::Imm(off));
        }
        if let Some(&off) = self.kparams.get(name) {
            return Ok(Opd::Imm(off as u64));
        }
        if self.depot_name.as_deref() == Some(name) {
            return Ok(Opd::Sreg(Sreg::Depot));
        }
        match self.syms.get(name) {
            Some(Sym::Global(a)) => Ok(Opd::Imm(*a)),
            Some(Sym::Shared(o)) => Ok(Opd::Imm(*o)),
            Some(Sym::DynShared) => Ok(Opd::Sreg(Sreg::DynShared)),
            None => Err(format!("unknown symbol {name}")),
        }
    }

    fn opd(&self, s: &str, ty: Ty) -> R<Opd> {
        let s = s.trim();
        if s.starts_with('%') {
            if let Some(r) = Self::sreg(s) {
                return Ok(Opd::Sreg(r));
            }
            return Ok(Opd::Reg(self.reg(s)?));
        }
        if let Some(h) = s.strip_prefix("0f").or_else(|| s.strip_prefix("0F")) {
            let bits = u32::from_str_radix(h, 16).map_err(|e| e.to_string())?;
            return Ok(Opd::Imm(if ty == Ty::F64 { (f32::from_bits(bits) as f64).to_bits() } else { bits as u64 }));
        }
        if let Some(h) = s.strip_prefix("0d").or_else(|| s.strip_prefix("0D")) {
            return Ok(Opd::Imm(u64::from_str_radix(h, 16).map_err(|e| e.to_string())?));
        }
        if s.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
            let v = parse_int(s)?;
            return Ok(Opd::Imm(match ty {
                Ty::F32 => (v as f32).to_bits() as u64,
                Ty::F64 => (v as f64).to_bits(),
                _ => v as u64,
            }));
        }
        // symbol or symbol+offset
        let (name, off) = match s.find('+') {
            Some(i) => (s[..i].trim(), parse_int(s[i + 1..].trim())?),
            None => (s, 0),
        };
        match self.symbol(name)? {
            Opd::Imm(a) => Ok(Opd::Imm(a.wrapping_add(off as u64))),
            o if off == 0 => Ok(o),
            _ => Err(format!("unsupported operand {s}")),
        }
    }

    /// `[base+off]` for a load/store in `space` (which symbols can refine).
    fn addr(&self, s: &str, space: Space) -> R<(Addr, Space)> {
        let inner = s.trim().strip_prefix('[').and_then(|s| s.strip_suffix(']')).ok_or("expected [address]")?.trim();
        let (base, off) = match inner[1..].find(['+', '-']) {
            Some(i) => {
                let (b, o) = inner.split_at(i + 1);
                let o = o.trim();
                let o = o.strip_prefix('+').unwrap_or(o);
                (b.trim(), parse_int(o.trim())?)
            }
            None => (inner, 0),
        };
        if base.starts_with('%') {
            let sp = if space == Space::FParam { Space::KParam } else { space };
            return Ok((Addr { base: Base::Reg(self.reg(base)?), off }, sp));
        }
        if base.starts_with(|c: char| c.is_ascii_digit()) {
            return Ok((Addr { base: Base::None, off: parse_int(base)?.wrapping_add(off) }, space));
        }
        if space == Space::KParam || space == Space::FParam {
            if let Some(&o) = self.kparams.get(base) {
                return Ok((Addr { base: Base::None, off: o as i64 + off }, Space::KParam));
            }
            if let Some(&(o, _)) = self.fparams.get(base) {
                return Ok((Addr { base: Base::None, off: o as i64 + off }, Space::FParam));
            }
            return Err(format!("unknown parameter {base}"));
        }
        if self.depot_name.as_deref() == Some(base) {
            return Ok((Addr { base: Base::Depot, off }, space));
        }
        match self.symbol(base)? {
            Opd::Imm(a) => Ok((Addr { base: Base::None, off: (a as i64).wrapping_add(off) }, space)),
            Opd::Sreg(Sreg::DynShared) => Ok((Addr { base: Base::DynShared, off }, space)),
            _ => Err(format!("unsupported address {s}")),
        }
    }

    fn declare(&mut self, d: &Decl) -> R<()> {
        match d.space.as_str() {
            "reg" => {
                if d.range {
                    let n = d.count.unwrap_or(0) as u32;
                    self.ranges.push((d.name.clone(), self.nregs, n));
                    self.nregs += n;
                } else {
                    self.regs.insert(d.name.clone(), self.nregs);
                    self.nregs += 1;
                }
            }
            "param" => {
                let at = self.param_end.next_multiple_of(d.alignment().max(1) as u32);
                self.fparams.insert(d.name.clone(), (at, d.size() as u32));
                self.param_end = at + d.size() as u32;
            }
            "local" => {
                let at = self.depot.next_multiple_of(d.alignment().max(1) as u32);
                self.depot = at + d.size() as u32;
                if at == 0 {
                    self.depot_name = Some(d.name.clone());
                } else {
                    return Err("more than one .local variable".into());
                }
            }
            "shared" => {
                let at = self.shared_end.next_multiple_of(d.alignment().max(1) as u64);
                self.shared.insert(d.name.clone(), at);
                self.shared_end = at + d.size() as u64;
            }
            s => return Err(format!("unsupported declaration space .{s}")),
        }
        Ok(())
    }
}

/// Parses an integer literal (decimal, `0x` hex, octal-free, optional `U`).
pub fn parse_int(s: &str) -> R<i64> {
    let s = s.trim().trim_end_matches(['U', 'u']);
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let v = if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).map_err(|e| format!("{s}: {e}"))?
    } else {
        body.parse::<u64>().map_err(|e| format!("{s}: {e}"))?
    };
    Ok(if neg { (v as i64).wrapping_neg() } else { v as i64 })
}

/// Everything a body needs from the module.
pub struct Env<'a> {
    /// Module-scope symbols.
    pub syms: &'a HashMap<String, Sym>,
    /// Function indices by name.
    pub funcs: &'a HashMap<String, u32>,
    /// Signatures by function index.
    pub sigs: &'a [Sig],
}

/// Decodes a function: `kparams` are an entry's parameters (name → offset in
/// the launch's parameter buffer); `shared_at` is where its own `.shared`
/// variables start.
pub fn decode_function(
    env: &Env,
    name: &str,
    entry: bool,
    sig: Sig,
    kparams: HashMap<String, u32>,
    body: &[Item],
    shared_at: u64,
) -> Func {
    let mut cx = Ctx {
        syms: env.syms,
        funcs: env.funcs,
        sigs: env.sigs,
        regs: HashMap::new(),
        ranges: Vec::new(),
        nregs: 0,
        kparams,
        fparams: sig.names.iter().map(|(n, o, s)| (n.clone(), (*o, *s))).collect(),
        param_end: sig.end,
        depot_name: None,
        depot: 0,
        shared: HashMap::new(),
        shared_end: shared_at,
    };
    let mut f = Func { name: name.to_string(), entry, sig, ..Default::default() };
    let mut labels: HashMap<&str, u32> = HashMap::new();
    let mut fixups: Vec<(usize, String)> = Vec::new();
    let mut scopes = Vec::new();
    for item in body {
        match item {
            Item::Label(l) => {
                labels.insert(l.as_str(), f.code.len() as u32);
            }
            Item::Open(..) => scopes.push((cx.regs.clone(), cx.fparams.clone())),
            Item::Close => {
                if let Some((regs, fparams)) = scopes.pop() {
                    cx.regs = regs;
                    cx.fparams = fparams;
                }
            }
            Item::Stmt(s, line) => {
                if s.starts_with('.') {
                    let word = s.split_whitespace().next().unwrap_or("");
                    if matches!(word, ".pragma" | ".loc" | ".file" | ".maxnreg" | ".maxntid" | ".reqntid") {
                        continue;
                    }
                    let err = match parse_decl(s) {
                        Some(d) => {
                            // `.reg .u32 %a, %b;` declares several names
                            let mut err = None;
                            for name in d.name.split(',') {
                                let one = Decl { name: name.trim().to_string(), ..d.clone() };
                                err = err.or(cx.declare(&one).err());
                            }
                            err
                        }
                        None => Some(format!("unknown directive {s}")),
                    };
                    if let Some(e) = err {
                        f.code.push(Instr { guard: NO_REG, guard_neg: false, op: Op::Unsupported });
                        f.lines.push(*line);
                        f.texts.push(format!("{s} ({e})"));
                        f.unsupported.get_or_insert(f.code.len() - 1);
                    }
                    continue;
                }
                let mut text = s.split_whitespace().collect::<Vec<_>>().join(" ");
                let (instr, label) = match decode_instr(&cx, s) {
                    Ok(x) => x,
                    Err(e) => {
                        text = format!("{text} (not decoded: {e})");
                        (Instr { guard: NO_REG, guard_neg: false, op: Op::Unsupported }, None)
                    }
                };
                if let Op::Call { func, .. } = &instr.op {
                    f.callees.push(*func);
                }
                if instr.op == Op::Unsupported {
                    f.unsupported.get_or_insert(f.code.len());
                }
                if let Some(l) = label {
                    fixups.push((f.code.len(), l));
                }
                f.code.push(instr);
                f.lines.push(*line);
                f.texts.push(text);
            }
        }
    }
    for (at, l) in fixups {
        match labels.get(l.as_str()) {
            Some(&t) => f.code[at].op = Op::Bra { target: t },
            None => {
                f.code[at].op = Op::Unsupported;
                f.unsupported.get_or_insert(at);
            }
        }
    }
    // A function whose last statement is not a jump falls off its end: `ret`.
    f.code.push(Instr { guard: NO_REG, guard_neg: false, op: if entry { Op::Exit } else { Op::Ret } });
    f.lines.push(f.lines.last().copied().unwrap_or(0));
    f.texts.push("(end of function)".into());
    f.nregs = cx.nregs;
    f.param_bytes = cx.param_end;
    f.depot = cx.depot;
    f.shared = (cx.shared_end - shared_at) as u32;
    f
}

fn ty_of(mods: &[&str]) -> R<Ty> {
    mods.iter().rev().find_map(|m| Ty::parse(m)).ok_or_else(|| "no type".to_string())
}

fn space_of(mods: &[&str]) -> Space {
    for m in mods {
        match *m {
            "global" | "const" => return Space::Global,
            "shared" => return Space::Shared,
            "local" => return Space::Local,
            "param" => return Space::FParam,
            _ => {}
        }
    }
    Space::Generic
}

fn decode_instr(cx: &Ctx, s: &str) -> R<(Instr, Option<String>)> {
    let mut rest = s.trim();
    let mut guard = NO_REG;
    let mut guard_neg = false;
    if let Some(g) = rest.strip_prefix('@') {
        let end = g.find(char::is_whitespace).ok_or("bad guard")?;
        let (p, r) = g.split_at(end);
        guard_neg = p.starts_with('!');
        guard = cx.reg(p.trim_start_matches('!'))?;
        rest = r.trim();
    }
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let (opcode, operands) = rest.split_at(end);
    let mut parts = opcode.split('.');
    let base = parts.next().unwrap_or("");
    let mods: Vec<&str> = parts.collect();
    let ops = split_operands(operands.trim());
    let mut label = None;
    let op = if base == "bra" || base == "brx" {
        if base == "brx" {
            return Err("brx".into());
        }
        label = Some(ops.first().ok_or("bra without target")?.to_string());
        Op::Nop
    } else {
        decode_op(cx, base, &mods, &ops)?
    };
    Ok((Instr { guard, guard_neg, op }, label))
}

fn has(mods: &[&str], m: &str) -> bool {
    mods.contains(&m)
}

fn float_rn_only(mods: &[&str]) -> R<()> {
    for m in mods {
        match *m {
            "rn" | "f32" | "f64" => {}
            "rz" | "rm" | "rp" | "ftz" | "sat" | "approx" | "full" => return Err(format!("modifier .{m}")),
            _ => {}
        }
    }
    Ok(())
}

fn decode_op(cx: &Ctx, base: &str, mods: &[&str], ops: &[&str]) -> R<Op> {
    let reg = |i: usize| -> R<u32> { cx.reg(ops.get(i).ok_or("missing operand")?) };
    let opd = |i: usize, ty: Ty| -> R<Opd> { cx.opd(ops.get(i).ok_or("missing operand")?, ty) };
    Ok(match base {
        "mov" => {
            let ty = ty_of(mods)?;
            if ops[0].starts_with('{') {
                let ds = vec_regs(cx, ops[0])?;
                let part_bits = ty.bits() / ds.len() as u32;
                Op::Unpack { part_bits, ds, a: opd(1, ty)? }
            } else if ops.get(1).is_some_and(|o| o.starts_with('{')) {
                let inner = ops[1].trim_start_matches('{').trim_end_matches('}');
                let parts = split_operands(inner).iter().map(|p| cx.opd(p, Ty::U64)).collect::<R<Vec<_>>>()?;
                Op::Pack { d: reg(0)?, part_bits: ty.bits() / parts.len() as u32, parts }
            } else {
                Op::Mov { ty, d: reg(0)?, a: opd(1, ty)? }
            }
        }
        "cvta" => {
            let ty = ty_of(mods)?;
            let to = has(mods, "to");
            let window = match space_of(mods) {
                Space::Global => return Ok(Op::Mov { ty, d: reg(0)?, a: opd(1, ty)? }),
                Space::Shared => SHARED_BASE,
                Space::Local => LOCAL_BASE,
                Space::FParam => PARAM_BASE,
                _ => return Err("cvta space".into()),
            };
            let op = if to { IBin::Sub } else { IBin::Add };
            Op::Int { op, ty, d: reg(0)?, a: opd(1, ty)?, b: Opd::Imm(window) }
        }
        "add" | "sub" | "addc" | "subc" => {
            let ty = ty_of(mods)?;
            let sub = base.starts_with("sub");
            if ty.float() {
                float_rn_only(mods)?;
                if ty == Ty::F16 || ty == Ty::BF16 {
                    return Err("half arithmetic".into());
                }
                let op = if sub { FBin::Sub } else { FBin::Add };
                Op::Float { op, f64: ty == Ty::F64, d: reg(0)?, a: opd(1, ty)?, b: opd(2, ty)? }
            } else if base.ends_with('c') || has(mods, "cc") {
                Op::AddC {
                    sub,
                    ty,
                    d: reg(0)?,
                    a: opd(1, ty)?,
                    b: opd(2, ty)?,
                    cin: base.ends_with('c'),
                    cout: has(mods, "cc"),
                }
            } else {
                if has(mods, "sat") {
                    return Err("add.sat".into());
                }
                let op = if sub { IBin::Sub } else { IBin::Add };
                Op::Int { op, ty, d: reg(0)?, a: opd(1, ty)?, b: opd(2, ty)? }
            }
        }
        "mul" => {
            let ty = ty_of(mods)?;
            if ty.float() {
                float_rn_only(mods)?;
                if ty == Ty::F16 || ty == Ty::BF16 {
                    return Err("half arithmetic".into());
                }
                Op::Float { op: FBin::Mul, f64: ty == Ty::F64, d: reg(0)?, a: opd(1, ty)?, b: opd(2, ty)? }
            } else if has(mods, "wide") {
                Op::MulWide { ty, d: reg(0)?, a: opd(1, ty)?, b: opd(2, ty)? }
            } else {
                let op = if has(mods, "hi") { IBin::MulHi } else { IBin::MulLo };
                Op::Int { op, ty, d: reg(0)?, a: opd(1, ty)?, b: opd(2, ty)? }
            }
        }
        "mad" | "madc" => {
            let ty = ty_of(mods)?;
            if ty.float() {
                float_rn_only(mods)?;
                if !has(mods, "rn") || !(ty == Ty::F32 || ty == Ty::F64) {
                    return Err("mad.f without .rn".into());
                }
                Op::Fma { f64: ty == Ty::F64, d: reg(0)?, a: opd(1, ty)?, b: opd(2, ty)?, c: opd(3, ty)? }
            } else {
                let mode = if has(mods, "hi") {
                    MadMode::Hi
                } else if has(mods, "wide") {
                    MadMode::Wide
                } else {
                    MadMode::Lo
                };
                let cty = if mode == MadMode::Wide { wide(ty)? } else { ty };
                Op::Mad {
                    mode,
                    ty,
                    d: reg(0)?,
                    a: opd(1, ty)?,
                    b: opd(2, ty)?,
                    c: opd(3, cty)?,
                    cin: base == "madc",
                    cout: has(mods, "cc"),
                }
            }
        }
        "fma" => {
            let ty = ty_of(mods)?;
            float_rn_only(mods)?;
            if !(ty == Ty::F32 || ty == Ty::F64) {
                return Err("fma type".into());
            }
            Op::Fma { f64: ty == Ty::F64, d: reg(0)?, a: opd(1, ty)?, b: opd(2, ty)?, c: opd(3, ty)? }
        }
        "div" | "rem" => {
            let ty = ty_of(mods)?;
            if ty.float() {
                if base == "rem" || !has(mods, "rn") {
                    return Err("div.approx/full".into());
                }
                float_rn_only(mods)?;
                Op::Float { op: FBin::Div, f64: ty == Ty::F64, d: reg(0)?, a: opd(1, ty)?, b: opd(2, ty)? }
            } else {
                let op = if base == "div" { IBin::Div } else { IBin::Rem };
                Op::Int { op, ty, d: reg(0)?, a: opd(1, ty)?, b: opd(2, ty)? }
            }
        }
        "and" | "or" | "xor" | "shl" | "shr" => {
            let ty = ty_of(mods)?;
            let op = match base {
                "and" => IBin::And,
                "or" => IBin::Or,
                "xor" => IBin::Xor,
                "shl" => IBin::Shl,
                _ => IBin::Shr,
            };
            let bty = if matches!(op, IBin::Shl | IBin::Shr) { Ty::U32 } else { ty };
            Op::Int { op, ty, d: reg(0)?, a: opd(1, ty)?, b: opd(2, bty)? }
        }
        "min" | "max" => {
            let ty = ty_of(mods)?;
            if ty.float() {
                if has(mods, "ftz") || has(mods, "NaN") || ty == Ty::F16 || ty == Ty::BF16 {
                    return Err("min/max modifier".into());
                }
                let op = if base == "min" { FBin::Min } else { FBin::Max };
                Op::Float { op, f64: ty == Ty::F64, d: reg(0)?, a: opd(1, ty)?, b: opd(2, ty)? }
            } else {
                let op = if base == "min" { IBin::Min } else { IBin::Max };
                Op::Int { op, ty, d: reg(0)?, a: opd(1, ty)?, b: opd(2, ty)? }
            }
        }
        "not" | "cnot" | "clz" | "popc" | "brev" | "neg" | "abs" => {
            let ty = ty_of(mods)?;
            if ty.float() {
                if has(mods, "ftz") || !(ty == Ty::F32 || ty == Ty::F64) {
                    return Err("neg/abs modifier".into());
                }
                let op = if base == "neg" { FUn::Neg } else { FUn::Abs };
                Op::FloatUn { op, f64: ty == Ty::F64, d: reg(0)?, a: opd(1, ty)? }
            } else {
                let op = match base {
                    "not" => IUn::Not,
                    "cnot" => IUn::Cnot,
                    "clz" => IUn::Clz,
                    "popc" => IUn::Popc,
                    "brev" => IUn::Brev,
                    "neg" => IUn::Neg,
                    _ => IUn::Abs,
                };
                Op::IntUn { op, ty, d: reg(0)?, a: opd(1, ty)? }
            }
        }
        "sqrt" | "rcp" | "rsqrt" | "ex2" | "lg2" => {
            let ty = ty_of(mods)?;
            let approx = has(mods, "approx");
            if has(mods, "ftz") && !(approx && ty == Ty::F64) {
                return Err("ftz".into());
            }
            let op = match (base, approx) {
                ("sqrt", false) if has(mods, "rn") => FUn::Sqrt,
                ("rcp", false) if has(mods, "rn") => FUn::Rcp,
                ("sqrt", true) => FUn::SqrtApprox,
                ("rcp", true) => FUn::RcpApprox,
                ("rsqrt", true) => FUn::RsqrtApprox,
                ("ex2", true) if ty == Ty::F32 => FUn::Ex2Approx,
                ("lg2", true) if ty == Ty::F32 => FUn::Lg2Approx,
                _ => return Err("rounding".into()),
            };
            Op::FloatUn { op, f64: ty == Ty::F64, d: reg(0)?, a: opd(1, ty)? }
        }
        "setp" => {
            let ty = ty_of(mods)?;
            let cmp = match mods.first().copied().unwrap_or("") {
                "eq" => Cmp::Eq,
                "ne" => Cmp::Ne,
                "lt" | "lo" => Cmp::Lt,
                "le" | "ls" => Cmp::Le,
                "gt" | "hi" => Cmp::Gt,
                "ge" | "hs" => Cmp::Ge,
                "equ" => Cmp::Equ,
                "neu" => Cmp::Neu,
                "ltu" => Cmp::Ltu,
                "leu" => Cmp::Leu,
                "gtu" => Cmp::Gtu,
                "geu" => Cmp::Geu,
                "num" => Cmp::Num,
                "nan" => Cmp::Nan,
                c => return Err(format!("setp .{c}")),
            };
            if has(mods, "ftz") || ty == Ty::F16 || ty == Ty::BF16 {
                return Err("setp type".into());
            }
            let bop = if has(mods, "and") {
                Some(BoolOp::And)
            } else if has(mods, "or") {
                Some(BoolOp::Or)
            } else if has(mods, "xor") {
                Some(BoolOp::Xor)
            } else {
                None
            };
            let (d, dn) = match ops[0].split_once('|') {
                Some((a, b)) => (cx.reg(a.trim())?, cx.reg(b.trim())?),
                None => (reg(0)?, NO_REG),
            };
            let comb = match bop {
                Some(b) => {
                    let p = ops.get(3).ok_or("setp without predicate")?;
                    let neg = p.starts_with('!');
                    Some((b, cx.opd(p.trim_start_matches('!'), Ty::Pred)?, neg))
                }
                None => None,
            };
            Op::Setp { cmp, ty, d, dn, a: opd(1, ty)?, b: opd(2, ty)?, comb }
        }
        "selp" => {
            let ty = ty_of(mods)?;
            Op::Selp { ty, d: reg(0)?, a: opd(1, ty)?, b: opd(2, ty)?, p: opd(3, Ty::Pred)? }
        }
        "cvt" => {
            let tys: Vec<Ty> = mods.iter().filter_map(|m| Ty::parse(m)).collect();
            if tys.len() != 2 {
                return Err("cvt types".into());
            }
            let mut rnd = Rnd::None;
            for m in mods {
                rnd = match *m {
                    "rn" => Rnd::Rn,
                    "rz" => Rnd::Rz,
                    "rm" => Rnd::Rm,
                    "rp" => Rnd::Rp,
                    "rni" => Rnd::Rni,
                    "rzi" => Rnd::Rzi,
                    "rmi" => Rnd::Rmi,
                    "rpi" => Rnd::Rpi,
                    "ftz" | "relu" | "satfinite" => return Err("cvt modifier".into()),
                    _ => rnd,
                };
            }
            Op::Cvt { dt: tys[0], st: tys[1], rnd, sat: has(mods, "sat"), d: reg(0)?, a: opd(1, tys[1])? }
        }
        "ld" | "ldu" | "st" => {
            let ty = ty_of(mods)?;
            let n = mods.iter().find_map(|m| m.strip_prefix('v').and_then(|v| v.parse::<u8>().ok())).unwrap_or(1);
            if n > 4 || has(mods, "L2") && mods.iter().any(|m| m.starts_with("L2::") || m.starts_with("L1::")) {
                return Err("ld modifiers".into());
            }
            let space = space_of(mods);
            if base == "st" {
                let (addr, space) = cx.addr(ops[0], space)?;
                let mut src = [Opd::Imm(0); 4];
                let list: Vec<&str> = if ops[1].starts_with('{') {
                    split_operands(ops[1].trim_start_matches('{').trim_end_matches('}'))
                } else {
                    vec![ops[1]]
                };
                if list.len() != n as usize {
                    return Err("vector size".into());
                }
                for (i, s) in list.iter().enumerate() {
                    src[i] = cx.opd(s, ty)?;
                }
                Op::St { space, ty, src, n, addr }
            } else {
                let (addr, space) = cx.addr(ops[1], space)?;
                let mut ds = [NO_REG; 4];
                let list = if ops[0].starts_with('{') { vec_regs(cx, ops[0])? } else { vec![reg(0)?] };
                if list.len() != n as usize {
                    return Err("vector size".into());
                }
                ds[..list.len()].copy_from_slice(&list);
                Op::Ld {
                    space,
                    ty,
                    ds,
                    n,
                    addr,
                    volatile: has(mods, "volatile") || has(mods, "acquire") || has(mods, "relaxed"),
                }
            }
        }
        "atom" | "red" => {
            let ty = ty_of(mods)?;
            let mut space = space_of(mods);
            if space == Space::FParam || space == Space::Local {
                return Err("atom space".into());
            }
            if space == Space::Generic && has(mods, "shared") {
                space = Space::Shared;
            }
            let op = mods
                .iter()
                .find_map(|m| {
                    Some(match *m {
                        "add" => AtomOp::Add,
                        "exch" => AtomOp::Exch,
                        "cas" => AtomOp::Cas,
                        "min" => AtomOp::Min,
                        "max" => AtomOp::Max,
                        "and" => AtomOp::And,
                        "or" => AtomOp::Or,
                        "xor" => AtomOp::Xor,
                        "inc" => AtomOp::Inc,
                        "dec" => AtomOp::Dec,
                        _ => return None,
                    })
                })
                .ok_or("atom op")?;
            if ty.float() && !(op == AtomOp::Add || op == AtomOp::Exch) || ty == Ty::F16 || ty == Ty::BF16 {
                return Err("atom float".into());
            }
            if base == "red" {
                let (addr, space) = cx.addr(ops[0], space)?;
                Op::Atom { space, op, ty, d: NO_REG, addr, b: opd(1, ty)?, c: Opd::Imm(0) }
            } else {
                let (addr, space) = cx.addr(ops[1], space)?;
                let c = if op == AtomOp::Cas { opd(3, ty)? } else { Opd::Imm(0) };
                Op::Atom { space, op, ty, d: reg(0)?, addr, b: opd(2, ty)?, c }
            }
        }
        "bar" | "barrier" => {
            if has(mods, "warp") {
                Op::Nop
            } else if has(mods, "arrive") || has(mods, "red") {
                return Err("bar.arrive/red".into());
            } else {
                Op::Bar { count: if ops.len() > 1 { Some(opd(1, Ty::U32)?) } else { None } }
            }
        }
        "membar" | "fence" => Op::Membar,
        "shfl" => {
            let mode = if has(mods, "down") {
                ShflMode::Down
            } else if has(mods, "up") {
                ShflMode::Up
            } else if has(mods, "bfly") {
                ShflMode::Bfly
            } else if has(mods, "idx") {
                ShflMode::Idx
            } else {
                return Err("shfl mode".into());
            };
            if !has(mods, "sync") {
                return Err("shfl without .sync".into());
            }
            let (d, p) = match ops[0].split_once('|') {
                Some((a, b)) => (cx.reg(a.trim())?, cx.reg(b.trim())?),
                None => (reg(0)?, NO_REG),
            };
            Op::Shfl {
                mode,
                d,
                p,
                a: opd(1, Ty::U32)?,
                b: opd(2, Ty::U32)?,
                c: opd(3, Ty::U32)?,
                mask: opd(4, Ty::U32)?,
            }
        }
        "call" => decode_call(cx, ops)?,
        "ret" => Op::Ret,
        "exit" => Op::Exit,
        "trap" => Op::Trap,
        "nanosleep" => Op::Nanosleep,
        "prefetch" | "prefetchu" | "pmevent" => Op::Nop,
        _ => return Err(format!("unknown opcode {base}")),
    })
}

fn wide(ty: Ty) -> R<Ty> {
    Ok(match ty {
        Ty::U16 => Ty::U32,
        Ty::S16 => Ty::S32,
        Ty::U32 => Ty::U64,
        Ty::S32 => Ty::S64,
        _ => return Err("wide type".into()),
    })
}

fn vec_regs(cx: &Ctx, s: &str) -> R<Vec<u32>> {
    split_operands(s.trim().trim_start_matches('{').trim_end_matches('}')).iter().map(|r| cx.reg(r)).collect()
}

fn decode_call(cx: &Ctx, ops: &[&str]) -> R<Op> {
    // call (ret), name, (args);  call name, (args);  call name;
    let mut i = 0;
    let mut rets = Vec::new();
    let list = |s: &str| -> Vec<String> {
        split_operands(s.trim().trim_start_matches('(').trim_end_matches(')')).iter().map(|x| x.to_string()).collect()
    };
    if ops.first().is_some_and(|o| o.starts_with('(')) {
        rets = list(ops[0]);
        i = 1;
    }
    let name = ops.get(i).ok_or("call without target")?;
    let func = *cx.funcs.get(*name).ok_or_else(|| format!("unknown function {name}"))?;
    let args = ops.get(i + 1).map(|a| list(a)).unwrap_or_default();
    let sig = &cx.sigs[func as usize];
    if args.len() != sig.params.len() || rets.len() != sig.rets.len() {
        return Err("call arity".into());
    }
    let place = |n: &String| -> R<(u32, u32)> { cx.fparams.get(n.as_str()).copied().ok_or_else(|| format!("{n}?")) };
    Ok(Op::Call {
        func,
        args: args.iter().map(place).collect::<R<_>>()?,
        rets: rets.iter().map(place).collect::<R<_>>()?,
    })
}
