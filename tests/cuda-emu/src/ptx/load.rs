//! Module loading: module-scope variables into memory, function signatures,
//! then every body decoded.

use super::decode::{decode_function, parse_int, Env, Func, Sig, Sym};
use super::parse::{lex, parse_decl, parse_header, Decl, Header, Item};
use super::{Kernel, Module, ParamDecl};
use crate::memory::Memory;
use std::collections::{HashMap, HashSet};

fn init_bytes(d: &Decl) -> Result<Vec<u8>, String> {
    let es = d.elem_size();
    let mut out = vec![0u8; d.size()];
    for (i, v) in d.init.iter().enumerate() {
        if (i + 1) * es > out.len() {
            return Err(format!("{}: too many initialisers", d.name));
        }
        let bits: u64 = if let Some(h) = v.strip_prefix("0f").or_else(|| v.strip_prefix("0F")) {
            u32::from_str_radix(h, 16).map_err(|e| e.to_string())? as u64
        } else if let Some(h) = v.strip_prefix("0d").or_else(|| v.strip_prefix("0D")) {
            u64::from_str_radix(h, 16).map_err(|e| e.to_string())?
        } else if d.ty.starts_with('f') {
            let x: f64 = v.parse().map_err(|_| format!("{}: initialiser {v}", d.name))?;
            if es == 4 {
                (x as f32).to_bits() as u64
            } else {
                x.to_bits()
            }
        } else {
            parse_int(v).map_err(|_| format!("{}: unsupported initialiser {v}", d.name))? as u64
        };
        out[i * es..(i + 1) * es].copy_from_slice(&bits.to_le_bytes()[..es]);
    }
    Ok(out)
}

/// Parses `text` into a [`Module`].
pub fn load(text: &str, mem: &mut Memory, device: usize) -> Result<Module, String> {
    let items = lex(text);
    let mut syms: HashMap<String, Sym> = HashMap::new();
    let mut globals = HashMap::new();
    let mut module_shared = 0u64;
    let mut bodies: Vec<(Header, &[Item])> = Vec::new();
    let mut i = 0;
    while i < items.len() {
        match &items[i] {
            Item::Stmt(s, line) => {
                let s = s.as_str();
                let skip = [".version", ".target", ".address_size", ".file", ".section", ".pragma"];
                if skip.iter().any(|p| s.starts_with(p)) || s.contains(".entry") || s.contains(".func") {
                    // prototypes carry nothing the bodies do not
                } else if let Some(d) = parse_decl(s) {
                    match d.space.as_str() {
                        "global" | "const" => {
                            if d.external {
                                return Err(format!("line {line}: extern global {} is not supported", d.name));
                            }
                            let bytes = init_bytes(&d).map_err(|e| format!("line {line}: {e}"))?;
                            let addr = mem.alloc(bytes.len().max(1), device);
                            mem.slice_mut(addr, bytes.len()).map_err(|e| e.to_string())?.copy_from_slice(&bytes);
                            syms.insert(d.name.clone(), Sym::Global(addr));
                            globals.insert(d.name.clone(), (addr, bytes.len()));
                        }
                        "shared" if d.external || d.open_ended => {
                            syms.insert(d.name.clone(), Sym::DynShared);
                        }
                        "shared" => {
                            let at = module_shared.next_multiple_of(d.alignment().max(1) as u64);
                            syms.insert(d.name.clone(), Sym::Shared(at));
                            module_shared = at + d.size() as u64;
                        }
                        s => return Err(format!("line {line}: module-scope .{s} is not supported")),
                    }
                } else {
                    return Err(format!("line {line}: cannot parse `{s}`"));
                }
                i += 1;
            }
            Item::Open(h, line) if !h.is_empty() => {
                let header = parse_header(h).ok_or_else(|| format!("line {line}: bad function header"))?;
                let mut depth = 1;
                let start = i + 1;
                let mut j = start;
                while j < items.len() && depth > 0 {
                    match items[j] {
                        Item::Open(..) => depth += 1,
                        Item::Close => depth -= 1,
                        _ => {}
                    }
                    j += 1;
                }
                if depth != 0 {
                    return Err(format!("line {line}: unterminated function body"));
                }
                bodies.push((header, &items[start..j - 1]));
                i = j;
            }
            Item::Open(_, line) => return Err(format!("line {line}: unexpected `{{` at module scope")),
            Item::Close => return Err("unexpected `}` at module scope".into()),
            Item::Label(l) => return Err(format!("label {l} at module scope")),
        }
    }
    let funcs_by_name: HashMap<String, u32> =
        bodies.iter().enumerate().map(|(i, (h, _))| (h.name.clone(), i as u32)).collect();
    let sigs: Vec<Sig> =
        bodies.iter().map(|(h, _)| if h.entry { Sig::default() } else { Sig::new(&h.params, &h.rets) }).collect();
    let env = Env { syms: &syms, funcs: &funcs_by_name, sigs: &sigs };
    let mut funcs: Vec<Option<Func>> = (0..bodies.len()).map(|_| None).collect();
    // .func bodies first: their own .shared variables (rare) join the module's.
    for (i, (h, body)) in bodies.iter().enumerate().filter(|(_, (h, _))| !h.entry) {
        let f = decode_function(&env, &h.name, false, sigs[i].clone(), HashMap::new(), body, module_shared);
        module_shared += f.shared as u64;
        funcs[i] = Some(f);
    }
    let mut kernels = Vec::new();
    for (i, (h, body)) in bodies.iter().enumerate().filter(|(_, (h, _))| h.entry) {
        let params: Vec<ParamDecl> =
            h.params.iter().map(|d| ParamDecl { size: d.size(), align: d.alignment().max(1) }).collect();
        let mut k = Kernel {
            name: h.name.clone(),
            params,
            static_shared: 0,
            local_bytes: 0,
            registers: 0,
            func: i,
            unsupported: None,
            unsupported_at: None,
        };
        let (offsets, _) = k.param_layout();
        let kparams = h.params.iter().zip(&offsets).map(|(d, &o)| (d.name.clone(), o as u32)).collect();
        let f = decode_function(&env, &h.name, true, Sig::default(), kparams, body, module_shared);
        k.static_shared = module_shared as usize + f.shared as usize;
        k.local_bytes = f.depot as usize;
        k.registers = f.nregs as usize;
        funcs[i] = Some(f);
        kernels.push(k);
    }
    let funcs: Vec<Func> = funcs.into_iter().map(|f| f.expect("every body decoded")).collect();
    for k in &mut kernels {
        // the first unsupported instruction reachable through calls
        let mut seen = HashSet::new();
        let mut todo = vec![k.func as u32];
        let mut extra_local = 0;
        while let Some(f) = todo.pop() {
            if !seen.insert(f) {
                continue;
            }
            let func = &funcs[f as usize];
            if f != k.func as u32 {
                extra_local = extra_local.max(func.depot as usize + 16);
            }
            if let (Some(pc), None) = (func.unsupported, &k.unsupported) {
                k.unsupported = Some(format!("`{}` at PTX line {} in {}", func.texts[pc], func.lines[pc], func.name));
                k.unsupported_at = Some((f, pc as u32));
            }
            todo.extend(func.callees.iter().copied());
        }
        k.local_bytes += extra_local;
    }
    Ok(Module { funcs, kernels, globals })
}
