//! The terminal front end: rustyline with history, completion, highlighting and multi-line
//! validation, all driven by the REPL's lexer.

use super::{lexer, Session};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::hint::Hinter;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Config, Context, Editor, Helper};
use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;

struct LossHelper {
    session: Rc<RefCell<Session>>,
}

impl Completer for LossHelper {
    type Candidate = Pair;
    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before
            .char_indices()
            .rev()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_' || *c == ':'))
            .map(|(i, c)| i + c.len_utf8())
            .unwrap_or(0);
        let word = &before[start..];
        let session = self.session.borrow();
        // Inside `name(`: the loss's inputs and parameters first.
        let mut words = Vec::new();
        if let Some(open) = before.rfind('(') {
            let callee = before[..open].trim_end();
            let callee = callee
                .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
                .unwrap_or("");
            if lexer::open_brackets(before) > 0 && session.lib_of(callee).is_some() {
                words.extend(session.arg_names(callee));
            }
        }
        words.extend(session.words());
        let mut seen = std::collections::HashSet::new();
        let cands: Vec<Pair> = words
            .into_iter()
            .filter(|w| w.starts_with(word) && !word.is_empty() && seen.insert(w.clone()))
            .map(|w| Pair {
                display: w.clone(),
                replacement: w,
            })
            .collect();
        Ok((start, cands))
    }
}

impl Hinter for LossHelper {
    type Hint = String;
}

impl Highlighter for LossHelper {
    fn highlight<'l>(&self, line: &'l str, _pos: usize) -> Cow<'l, str> {
        let session = self.session.borrow();
        Cow::Owned(lexer::highlight(line, &|w| session.is_known(w)))
    }
    fn highlight_char(&self, _line: &str, _pos: usize, _kind: CmdKind) -> bool {
        true
    }
}

impl Validator for LossHelper {
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        Ok(if super::complete_input(ctx.input()) {
            ValidationResult::Valid(None)
        } else {
            ValidationResult::Incomplete
        })
    }
}

impl Helper for LossHelper {}

fn history_path() -> Option<std::path::PathBuf> {
    std::env::var_os("LOSSC_HISTORY")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".lossc_history"))
        })
}

/// The interactive loop: Ctrl-C cancels the current input, Ctrl-D leaves.
pub fn interactive(session: Session) -> i32 {
    let session = Rc::new(RefCell::new(session));
    let config = Config::builder()
        .auto_add_history(true)
        .max_history_size(10_000)
        .map(|b| b.build());
    let mut ed: Editor<LossHelper, rustyline::history::DefaultHistory> =
        match config.and_then(Editor::with_config) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("error: cannot start the line editor: {e}");
                return 2;
            }
        };
    ed.set_helper(Some(LossHelper {
        session: session.clone(),
    }));
    let history = history_path();
    if let Some(h) = &history {
        let _ = ed.load_history(h);
    }
    println!("lossc repl: :help for help, :quit or Ctrl-D to leave");
    loop {
        match ed.readline("loss> ") {
            Ok(line) => {
                let out = session.borrow_mut().handle(&line);
                match out {
                    Some(text) => print!("{text}"),
                    None => break,
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("error: {e}");
                break;
            }
        }
    }
    if let Some(h) = &history {
        let _ = ed.save_history(h);
    }
    0
}
