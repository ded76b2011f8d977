//! Splits PTX text into statements, labels and `{`/`}` scopes, each with its
//! line number; the structure (functions, declarations) is read from them.

/// One lexical item of a PTX file.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A statement (directive or instruction) without its `;`, and its line.
    Stmt(String, u32),
    /// `name:`
    Label(String),
    /// `{` opening a function body or a nested scope (with the text before
    /// it when that is a function header).
    Open(String, u32),
    /// `}`
    Close,
}

/// Removes `//` and `/* */` comments, keeping newlines (so line numbers hold).
fn strip_comments(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut in_str = false;
    while i < b.len() {
        let c = b[i];
        if in_str {
            out.push(c as char);
            if c == b'"' {
                in_str = false;
            }
            i += 1;
        } else if c == b'"' {
            in_str = true;
            out.push('"');
            i += 1;
        } else if c == b'/' && i + 1 < b.len() && b[i + 1] == b'/' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && i + 1 < b.len() && b[i + 1] == b'*' {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 2;
        } else {
            out.push(c as char);
            i += 1;
        }
    }
    out
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '.')
        && !s.starts_with('.')
}

/// Splits `text` into items.
pub fn lex(text: &str) -> Vec<Item> {
    let text = strip_comments(text);
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut cur_line = 0u32;
    let mut line = 1u32;
    let mut depth = 0usize; // braces inside the current statement
    for c in text.chars() {
        if c == '\n' {
            // these directives end at the line's end (no `;`)
            let t = cur.trim();
            if depth == 0 && [".version", ".target", ".address_size"].iter().any(|d| t.starts_with(d)) {
                items.push(Item::Stmt(t.to_string(), cur_line));
                cur.clear();
            }
            line += 1;
        }
        if cur.trim().is_empty() && !c.is_whitespace() {
            cur.clear();
            cur_line = line;
        }
        match c {
            ';' if depth == 0 => {
                let s = cur.trim();
                if !s.is_empty() {
                    items.push(Item::Stmt(s.to_string(), cur_line));
                }
                cur.clear();
            }
            ':' if depth == 0 && is_ident(cur.trim()) => {
                items.push(Item::Label(cur.trim().to_string()));
                cur.clear();
            }
            '{' => {
                let s = cur.trim();
                let header = s.contains(".entry") || s.contains(".func");
                if depth == 0 && (s.is_empty() || (header && !s.contains('='))) {
                    items.push(Item::Open(s.to_string(), cur_line.max(1)));
                    cur.clear();
                } else {
                    depth += 1;
                    cur.push(c);
                }
            }
            '}' => {
                if depth > 0 {
                    depth -= 1;
                    cur.push(c);
                } else {
                    let s = cur.trim();
                    if !s.is_empty() {
                        items.push(Item::Stmt(s.to_string(), cur_line));
                    }
                    cur.clear();
                    items.push(Item::Close);
                }
            }
            _ => cur.push(c),
        }
    }
    items
}

/// Splits operands at top-level commas (not inside `{}`, `[]` or `()`).
pub fn split_operands(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' | '[' | '(' => depth += 1,
            '}' | ']' | ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = s[start..].trim();
    if !last.is_empty() {
        out.push(last);
    }
    out
}

/// A `.param`, `.reg`, `.shared`, `.local` or `.global` declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct Decl {
    /// State space without the dot (`param`, `reg`, ...).
    pub space: String,
    /// Element type without the dot (`b8`, `u64`, ...).
    pub ty: String,
    /// Declared alignment (0: the element size).
    pub align: usize,
    /// Name (for `%r<10>` the prefix `%r`).
    pub name: String,
    /// Array length (`[n]`), or the count of a `<n>` register range.
    pub count: Option<usize>,
    /// True for `%r<10>` ranges.
    pub range: bool,
    /// True for `[]` (extern arrays of unknown length).
    pub open_ended: bool,
    /// Initialiser values as text.
    pub init: Vec<String>,
    /// `.extern`
    pub external: bool,
}

impl Decl {
    /// Bytes of one element.
    pub fn elem_size(&self) -> usize {
        type_size(&self.ty)
    }
    /// Bytes of the whole declaration.
    pub fn size(&self) -> usize {
        self.elem_size() * self.count.unwrap_or(1)
    }
    /// Effective alignment.
    pub fn alignment(&self) -> usize {
        if self.align > 0 {
            self.align
        } else {
            self.elem_size()
        }
    }
}

/// Size in bytes of a PTX type name (without the dot).
pub fn type_size(ty: &str) -> usize {
    match ty {
        "pred" => 1,
        _ => {
            let bits: usize = ty.trim_start_matches(|c: char| c.is_ascii_alphabetic()).parse().unwrap_or(32);
            (bits / 8).max(1)
        }
    }
}

/// Parses one declaration like `.param .align 8 .b8 name[264]` or
/// `.reg .b32 %r<10>` or `.global .align 4 .b8 x[4] = {1, 2, 3, 4}`.
pub fn parse_decl(s: &str) -> Option<Decl> {
    let (head, init) = match s.find('=') {
        Some(i) => (&s[..i], Some(s[i + 1..].trim())),
        None => (s, None),
    };
    let mut d = Decl {
        space: String::new(),
        ty: String::new(),
        align: 0,
        name: String::new(),
        count: None,
        range: false,
        open_ended: false,
        init: Vec::new(),
        external: false,
    };
    let toks: Vec<&str> = head.split_whitespace().collect();
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i];
        match t {
            ".visible" | ".weak" | ".const_" => {}
            ".extern" => d.external = true,
            ".align" => {
                i += 1;
                d.align = toks.get(i)?.parse().ok()?;
            }
            ".param" | ".reg" | ".shared" | ".local" | ".global" | ".const" => d.space = t[1..].to_string(),
            _ if t.starts_with('.') && d.ty.is_empty() && !d.space.is_empty() => {
                let ty = &t[1..];
                if ty.starts_with('v') && ty[1..].parse::<u32>().is_ok() {
                    // vector variable: keep the element type and scale the count later
                } else {
                    d.ty = ty.to_string();
                }
            }
            _ => {
                let rest = toks[i..].join("");
                let name_end = rest.find(['[', '<']).unwrap_or(rest.len());
                d.name = rest[..name_end].to_string();
                let tail = &rest[name_end..];
                if let Some(n) = tail.strip_prefix('<') {
                    d.range = true;
                    d.count = Some(n.trim_end_matches('>').parse().ok()?);
                } else if let Some(n) = tail.strip_prefix('[') {
                    let mut total = 1usize;
                    for dim in n.split('[') {
                        let dim = dim.trim_end_matches(']');
                        if dim.is_empty() {
                            d.open_ended = true;
                            total = 0;
                        } else {
                            total *= dim.parse::<usize>().ok()?;
                        }
                    }
                    d.count = Some(total);
                }
                break;
            }
        }
        i += 1;
    }
    if d.space.is_empty() || d.name.is_empty() {
        return None;
    }
    if let Some(init) = init {
        let body = init.trim().trim_start_matches('{').trim_end_matches('}');
        d.init = body.split(',').map(|v| v.trim().trim_matches(|c| c == '{' || c == '}').to_string()).collect();
        d.init.retain(|v| !v.is_empty());
    }
    Some(d)
}

/// A function header: `.entry`/`.func`, its name, return and value parameters.
#[derive(Debug, Clone)]
pub struct Header {
    /// `.entry` (true) or `.func`.
    pub entry: bool,
    /// The function's name.
    pub name: String,
    /// Return parameters (`.func` only).
    pub rets: Vec<Decl>,
    /// Value parameters.
    pub params: Vec<Decl>,
}

/// Parses `.visible .entry name(.param ...) .maxntid ...` or
/// `.func (.param ...) name(.param ...)`.
pub fn parse_header(s: &str) -> Option<Header> {
    let entry = s.contains(".entry");
    let kw = if entry { ".entry" } else { ".func" };
    let mut rest = s[s.find(kw)? + kw.len()..].trim();
    let mut rets = Vec::new();
    if rest.starts_with('(') {
        let close = rest.find(')')?;
        rets = split_operands(&rest[1..close]).iter().filter_map(|p| parse_decl(p)).collect();
        rest = rest[close + 1..].trim();
    }
    let name_end = rest.find(|c: char| c == '(' || c.is_whitespace()).unwrap_or(rest.len());
    let name = rest[..name_end].to_string();
    rest = rest[name_end..].trim();
    let mut params = Vec::new();
    if rest.starts_with('(') {
        let close = rest.find(')')?;
        params = split_operands(&rest[1..close]).iter().filter_map(|p| parse_decl(p)).collect();
    }
    Some(Header { entry, name, rets, params })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexes_labels_scopes_and_vectors() {
        let items = lex(".global .b8 x[2] = {1, 2};\n.entry k(\n.param .u64 a\n)\n{\n$L1:\n mov.b32 %r1, {%rs1, %rs2};\n { .reg .b32 t; }\n}\n");
        assert_eq!(items[0], Item::Stmt(".global .b8 x[2] = {1, 2}".into(), 1));
        assert!(matches!(&items[1], Item::Open(h, 2) if h.contains(".entry")));
        assert_eq!(items[2], Item::Label("$L1".into()));
        assert_eq!(items[3], Item::Stmt("mov.b32 %r1, {%rs1, %rs2}".into(), 7));
        assert_eq!(items[4], Item::Open(String::new(), 8));
    }

    #[test]
    fn parses_declarations() {
        let d = parse_decl(".param .align 8 .b8 p[264]").unwrap();
        assert_eq!((d.align, d.size()), (8, 264));
        let r = parse_decl(".reg .b32 %r<10>").unwrap();
        assert_eq!((r.name.as_str(), r.count, r.range), ("%r", Some(10), true));
        let h = parse_header(".func (.param .align 8 .b8 r[16]) f(.param .b64 a, .param .b32 b)").unwrap();
        assert_eq!((h.name.as_str(), h.rets.len(), h.params.len()), ("f", 1, 2));
    }
}
