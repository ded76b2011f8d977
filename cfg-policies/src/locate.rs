//! Finds where things are in policy text, so that validation errors (found on
//! the parsed tree, which has no spans) still name a line and column.
//!
//! A small tokenizer skips comments and splits the text into strings,
//! identifiers, numbers and punctuation, each with its 1-based position.

/// One token of policy text.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    /// What it is.
    pub kind: TokenKind,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub col: usize,
}

/// The kinds of token.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenKind {
    /// A string literal's content (escapes left as written).
    Str(String),
    /// An identifier or keyword (`Cfg`, `scale`, `NaN`, `inf`).
    Ident(String),
    /// A numeric literal as written.
    Num(String),
    /// Any other single character.
    Punct(char),
}

/// The tokens of a text, for position look-ups.
#[derive(Debug, Clone)]
pub struct Locator {
    tokens: Vec<Token>,
}

impl Locator {
    /// Tokenizes `text`. Never fails: unterminated strings or comments end the text.
    pub fn new(text: &str) -> Locator {
        let chars: Vec<char> = text.chars().collect();
        let mut tokens = Vec::new();
        let (mut i, mut line, mut col) = (0usize, 1usize, 1usize);
        let advance = |chars: &[char], i: &mut usize, line: &mut usize, col: &mut usize| {
            let c = chars[*i];
            *i += 1;
            if c == '\n' {
                *line += 1;
                *col = 1;
            } else {
                *col += 1;
            }
        };
        while i < chars.len() {
            let c = chars[i];
            let (tl, tc) = (line, col);
            if c.is_whitespace() {
                advance(&chars, &mut i, &mut line, &mut col);
            } else if c == '/' && chars.get(i + 1) == Some(&'/') {
                while i < chars.len() && chars[i] != '\n' {
                    advance(&chars, &mut i, &mut line, &mut col);
                }
            } else if c == '/' && chars.get(i + 1) == Some(&'*') {
                let mut depth = 0usize;
                while i < chars.len() {
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        advance(&chars, &mut i, &mut line, &mut col);
                        advance(&chars, &mut i, &mut line, &mut col);
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        advance(&chars, &mut i, &mut line, &mut col);
                        advance(&chars, &mut i, &mut line, &mut col);
                        if depth == 0 {
                            break;
                        }
                    } else {
                        advance(&chars, &mut i, &mut line, &mut col);
                    }
                }
            } else if c == '"' {
                advance(&chars, &mut i, &mut line, &mut col);
                let mut s = String::new();
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        s.push(chars[i]);
                        advance(&chars, &mut i, &mut line, &mut col);
                    }
                    s.push(chars[i]);
                    advance(&chars, &mut i, &mut line, &mut col);
                }
                if i < chars.len() {
                    advance(&chars, &mut i, &mut line, &mut col);
                }
                tokens.push(Token { kind: TokenKind::Str(s), line: tl, col: tc });
            } else if c.is_ascii_digit()
                || ((c == '-' || c == '+' || c == '.') && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
            {
                let mut s = String::new();
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric()
                        || chars[i] == '.'
                        || chars[i] == '_'
                        || ((chars[i] == '-' || chars[i] == '+')
                            && (s.is_empty() || s.ends_with('e') || s.ends_with('E'))))
                {
                    s.push(chars[i]);
                    advance(&chars, &mut i, &mut line, &mut col);
                }
                tokens.push(Token { kind: TokenKind::Num(s), line: tl, col: tc });
            } else if c.is_alphabetic() || c == '_' {
                let mut s = String::new();
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    s.push(chars[i]);
                    advance(&chars, &mut i, &mut line, &mut col);
                }
                tokens.push(Token { kind: TokenKind::Ident(s), line: tl, col: tc });
            } else {
                advance(&chars, &mut i, &mut line, &mut col);
                tokens.push(Token { kind: TokenKind::Punct(c), line: tl, col: tc });
            }
        }
        Locator { tokens }
    }

    /// All tokens.
    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    fn followed_by_colon(&self, i: usize) -> bool {
        matches!(self.tokens.get(i + 1), Some(Token { kind: TokenKind::Punct(':'), .. }))
    }

    /// The `nth` (0-based) occurrence of `"name"` used as a map key.
    pub fn key(&self, name: &str, nth: usize) -> Option<(usize, usize)> {
        self.tokens
            .iter()
            .enumerate()
            .filter(|(i, t)| matches!(&t.kind, TokenKind::Str(s) if s == name) && self.followed_by_colon(*i))
            .nth(nth)
            .map(|(_, t)| (t.line, t.col))
    }

    /// The first occurrence of `"name"` that is not a map key.
    pub fn reference(&self, name: &str) -> Option<(usize, usize)> {
        self.tokens
            .iter()
            .enumerate()
            .find(|(i, t)| matches!(&t.kind, TokenKind::Str(s) if s == name) && !self.followed_by_colon(*i))
            .map(|(_, t)| (t.line, t.col))
    }

    /// The `nth` occurrence of an identifier among `names`.
    pub fn ident(&self, names: &[&str], nth: usize) -> Option<(usize, usize)> {
        self.tokens
            .iter()
            .filter(|t| matches!(&t.kind, TokenKind::Ident(s) if names.contains(&s.as_str())))
            .nth(nth)
            .map(|t| (t.line, t.col))
    }

    /// The first field `name:`.
    pub fn field(&self, name: &str) -> Option<(usize, usize)> {
        self.tokens
            .iter()
            .enumerate()
            .find(|(i, t)| matches!(&t.kind, TokenKind::Ident(s) if s == name) && self.followed_by_colon(*i))
            .map(|(_, t)| (t.line, t.col))
    }

    /// The first token at or after `(line, col)` (comments and whitespace skipped).
    pub fn next_token(&self, line: usize, col: usize) -> Option<(usize, usize)> {
        self.tokens.iter().map(|t| (t.line, t.col)).find(|&p| p >= (line, col))
    }

    /// How many brackets are still open at the end of the text (a cut-short file).
    pub fn unclosed_brackets(&self) -> usize {
        self.tokens.iter().fold(0usize, |depth, t| match t.kind {
            TokenKind::Punct('(' | '[' | '{') => depth + 1,
            TokenKind::Punct(')' | ']' | '}') => depth.saturating_sub(1),
            _ => depth,
        })
    }

    /// The first string literal written over several lines that starts before
    /// `(line, col)`: the likely place of a missing closing quote.
    pub fn multiline_string_before(&self, line: usize, col: usize) -> Option<(usize, usize)> {
        self.tokens
            .iter()
            .filter(|t| (t.line, t.col) < (line, col))
            .find(|t| matches!(&t.kind, TokenKind::Str(s) if s.contains('\n')))
            .map(|t| (t.line, t.col))
    }

    /// The first `"value"` written as the argument of `op(...)`, as in `Ref("cond")`.
    pub fn call(&self, op: &str, value: &str) -> Option<(usize, usize)> {
        self.tokens
            .windows(3)
            .find(|w| {
                matches!(&w[0].kind, TokenKind::Ident(s) if s == op)
                    && w[1].kind == TokenKind::Punct('(')
                    && matches!(&w[2].kind, TokenKind::Str(s) if s == value)
            })
            .map(|w| (w[2].line, w[2].col))
    }

    /// The first `"value"` written as the value of a field, as in `scale: "s"`.
    pub fn field_string(&self, field: &str, value: &str) -> Option<(usize, usize)> {
        self.tokens
            .windows(3)
            .find(|w| {
                matches!(&w[0].kind, TokenKind::Ident(s) if s == field)
                    && w[1].kind == TokenKind::Punct(':')
                    && matches!(&w[2].kind, TokenKind::Str(s) if s == value)
            })
            .map(|w| (w[2].line, w[2].col))
    }

    /// The token just before the one at `at`.
    pub fn token_before(&self, at: (usize, usize)) -> Option<(usize, usize)> {
        let i = self.tokens.iter().position(|t| (t.line, t.col) == at)?;
        i.checked_sub(1).map(|j| (self.tokens[j].line, self.tokens[j].col))
    }

    /// The value of field `name:` directly inside the parentheses that follow the
    /// token at `at` (an operator or window name), skipping nested brackets.
    pub fn field_in_call(&self, at: (usize, usize), name: &str) -> Option<(usize, usize)> {
        let start = self.tokens.iter().position(|t| (t.line, t.col) == at)?;
        if self.tokens.get(start + 1)?.kind != TokenKind::Punct('(') {
            return None;
        }
        let mut depth = 0usize;
        for (i, t) in self.tokens.iter().enumerate().skip(start + 1) {
            match &t.kind {
                TokenKind::Punct('(' | '[' | '{') => depth += 1,
                TokenKind::Punct(')' | ']' | '}') => {
                    depth -= 1;
                    if depth == 0 {
                        return None;
                    }
                }
                TokenKind::Ident(s) if depth == 1 && s == name && self.followed_by_colon(i) => {
                    // Point at the value; the field name if the value is missing.
                    let value = self.tokens.get(i + 2).unwrap_or(t);
                    return Some((value.line, value.col));
                }
                _ => {}
            }
        }
        None
    }

    /// The first number literal that is NaN or infinite.
    pub fn non_finite(&self) -> Option<(usize, usize, String)> {
        self.tokens.iter().find_map(|t| {
            let bad = match &t.kind {
                TokenKind::Ident(s) => {
                    matches!(s.as_str(), "NaN" | "inf" | "infinity" | "Infinity")
                }
                TokenKind::Num(s) => s.replace('_', "").parse::<f64>().is_ok_and(|v| !v.is_finite()),
                _ => false,
            };
            match &t.kind {
                TokenKind::Ident(s) | TokenKind::Num(s) if bad => Some((t.line, t.col, s.clone())),
                _ => None,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_comments_and_finds_keys() {
        let text = "// \"cond\": no\n{ \"cond\": (x: 1), /* \"cond\": */ \"cond\": 2 }\nRef(\"cond\")";
        let l = Locator::new(text);
        assert_eq!(l.key("cond", 0), Some((2, 3)));
        assert_eq!(l.key("cond", 1), Some((2, 33)));
        assert_eq!(l.reference("cond"), Some((3, 5)));
    }

    #[test]
    fn finds_calls_fields_and_nested_fields() {
        let text = "Renorm(input: Renorm(min: 1), reference: Ref(\"c\"), min: -2, scale: \"s\")";
        let l = Locator::new(text);
        assert_eq!(l.call("Ref", "c"), Some((1, 46)));
        assert_eq!(l.field_string("scale", "s"), Some((1, 68)));
        assert_eq!(l.field_in_call((1, 1), "min"), Some((1, 57)));
        assert_eq!(l.field_in_call((1, 15), "min"), Some((1, 27)));
        assert_eq!(l.field_in_call((1, 1), "max"), None);
        assert_eq!(l.next_token(1, 14), Some((1, 15)));
    }

    #[test]
    fn finds_multiline_strings() {
        let l = Locator::new("(a: \"x,\n b: \"y\")");
        assert_eq!(l.multiline_string_before(2, 9), Some((1, 5)));
        assert_eq!(l.multiline_string_before(1, 5), None);
    }

    #[test]
    fn finds_non_finite_numbers() {
        let l = Locator::new("(a: 1.0, b: 1e999)");
        assert_eq!(l.non_finite(), Some((1, 13, "1e999".to_string())));
        let l = Locator::new("(a: -inf)");
        assert_eq!(l.non_finite().map(|x| x.2), Some("inf".to_string()));
    }
}
