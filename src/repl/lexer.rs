//! The REPL's lexer (logos): decides when multi-line input is complete (brackets balance),
//! and drives highlighting and completion.

use logos::Logos;

#[derive(Logos, Debug, Clone, Copy, PartialEq, Eq)]
#[logos(skip r"[ \t\r\n]+")]
pub enum Tok {
    #[regex(r"///[^\n]*", allow_greedy = true)]
    Doc,
    #[regex(r"//[^\n]*", allow_greedy = true)]
    Comment,
    #[regex(r"[A-Za-z_][A-Za-z0-9_]*")]
    Ident,
    #[regex(r"[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")]
    Number,
    #[regex(r#""[^"\n]*""#)]
    Str,
    #[regex(r":[a-z]+")]
    Command,
    #[token("(")]
    LParen,
    #[token(")")]
    RParen,
    #[token("[")]
    LBracket,
    #[token("]")]
    RBracket,
    #[token("{")]
    LBrace,
    #[token("}")]
    RBrace,
    #[token(",")]
    Comma,
    #[token(";")]
    Semi,
    #[token("=")]
    Assign,
    #[regex(r"[-+*/%^<>!&|.]|==|!=|<=|>=|&&|\|\||->")]
    Op,
}

/// Tokens with their byte ranges; characters the lexer does not know come back as `None`.
pub fn tokens(text: &str) -> Vec<(Option<Tok>, std::ops::Range<usize>)> {
    let mut lex = Tok::lexer(text);
    let mut out = Vec::new();
    while let Some(t) = lex.next() {
        out.push((t.ok(), lex.span()));
    }
    out
}

/// How many brackets of any kind are open at the end of `text` (negative: too many closed).
pub fn open_brackets(text: &str) -> i64 {
    let mut depth = 0i64;
    for (t, _) in tokens(text) {
        match t {
            Some(Tok::LParen | Tok::LBracket | Tok::LBrace) => depth += 1,
            Some(Tok::RParen | Tok::RBracket | Tok::RBrace) => depth -= 1,
            _ => {}
        }
    }
    depth
}

pub const KEYWORDS: &[&str] = &[
    "loss", "fn", "let", "pad", "if", "else", "import", "true", "false",
];

/// ANSI-coloured text: keywords bold blue, numbers cyan, strings green, comments grey,
/// commands magenta, known functions and losses yellow.
pub fn highlight(text: &str, is_known: &dyn Fn(&str) -> bool) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut last = 0;
    for (t, r) in tokens(text) {
        out.push_str(&text[last..r.start]);
        let s = &text[r.clone()];
        let color = match t {
            Some(Tok::Ident) if KEYWORDS.contains(&s) => Some("1;34"),
            Some(Tok::Ident) if is_known(s) => Some("33"),
            Some(Tok::Number) => Some("36"),
            Some(Tok::Str) => Some("32"),
            Some(Tok::Doc | Tok::Comment) => Some("90"),
            Some(Tok::Command) => Some("35"),
            _ => None,
        };
        match color {
            Some(c) => out.push_str(&format!("\x1b[{c}m{s}\x1b[0m")),
            None => out.push_str(s),
        }
        last = r.end;
    }
    out.push_str(&text[last..]);
    out
}
