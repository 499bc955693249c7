//! `lossc repl`: transcripts of piped sessions (insta snapshots) covering every command,
//! multi-line definitions, literals and .npy files, and errors; and a session under a
//! pseudo-terminal for completion and highlighting.

use std::io::Write;
use std::process::{Command, Stdio};

fn repl(input: &str) -> (String, i32) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lossc"))
        .arg("repl")
        .env_remove("LOSSC_STDLIB_DIR")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lossc repl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("panicked"), "{text}");
    (text, out.status.code().unwrap_or(-1))
}

fn transcript(file: &str, want_code: i32) -> String {
    let path = format!("{}/tests/repl/{file}", env!("CARGO_MANIFEST_DIR"));
    let input = std::fs::read_to_string(path).unwrap();
    let (out, code) = repl(&input);
    // A script exits 2 when any of its inputs failed.
    assert_eq!(code, want_code, "{out}");
    // Timings vary: keep their shape only.
    out.lines()
        .map(|l| match l.split_once(": median ") {
            Some((name, _)) if !name.contains(' ') => format!("{name}: median <time>"),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn session_transcript() {
    insta::assert_snapshot!("repl_session", transcript("session.txt", 0));
}

#[test]
fn errors_are_reported_and_the_session_goes_on() {
    let t = transcript("errors.txt", 2);
    // the last line still evaluates after every error before it
    assert!(
        t.trim_end().ends_with("[0.14556620878546002]") || t.contains("focal_loss [1] ="),
        "{t}"
    );
    insta::assert_snapshot!("repl_errors", t);
}

#[test]
fn the_readme_pipeline() {
    let (out, code) =
        // (the interpreter's digits; the REPL's default is the JIT)
        repl(":backend interp\n:list\nfocal_loss(labels=[1,0], logits=[0.5,-0.5], reduction=mean, grad=logits)\n");
    assert_eq!(code, 0);
    assert!(
        out.starts_with("backend interp\nbalanced_sigmoid_cross_entropy"),
        "{out}"
    );
    assert!(out.contains("focal_loss [] =\n0.033786745258751825\nd/dlogits [2] =\n[-0.017242124668864305, 0.05172637400659292]"), "{out}");
}

#[test]
fn time_reports_a_median_and_quit_stops_reading() {
    let (out, code) = repl(
        ":time mean_squared_error(labels = [1, 2], predictions = [0, 0])\n:quit\nnot reached(\n",
    );
    assert_eq!(code, 0);
    assert!(out.contains("mean_squared_error: median "), "{out}");
    assert!(out.contains(" per call over "), "{out}");
    assert!(!out.contains("not reached"), "{out}");
}

#[test]
fn unbalanced_input_at_the_end_is_an_error() {
    let (out, code) = repl("loss f(x[i]) -> [i] {\n x[i]\n");
    assert_eq!(code, 2);
    assert!(out.contains("unclosed bracket"), "{out}");
}

#[cfg(unix)]
#[test]
fn terminal_completion_highlighting_and_multiline() {
    use expectrl::{Expect, Regex};
    let _ = std::fs::remove_file(std::env::temp_dir().join("unused"));
    let history = std::env::temp_dir().join(format!("lossc-history-{}", std::process::id()));
    let cmd = format!(
        "env LOSSC_HISTORY={} TERM=xterm {} repl",
        history.display(),
        env!("CARGO_BIN_EXE_lossc")
    );
    let mut p = expectrl::spawn(cmd).expect("spawn under a pty");
    p.set_expect_timeout(Some(std::time::Duration::from_secs(20)));
    p.expect("loss> ").unwrap();
    // Tab completes a stdlib loss name...
    p.send("focal_lo\t").unwrap();
    p.expect("focal_loss").unwrap();
    // ...and, inside its call, its input names.
    p.send("(lab\t").unwrap();
    p.expect("labels").unwrap();
    p.send(" = [1, 0], logits = [0.5, -0.5], reduction = mean)\r")
        .unwrap();
    p.expect("0.03378674525875182").unwrap();
    // Keywords are highlighted (bold blue), and input continues until the braces balance.
    p.send("loss twice(x[i]) -> [i] {\r").unwrap();
    p.expect(Regex("\x1b\\[1;34mloss")).unwrap();
    p.send("2 * x[i] }\r").unwrap();
    p.expect("defined twice").unwrap();
    p.send("twice(x = [1, 2])\r").unwrap();
    p.expect("[2.0, 4.0]").unwrap();
    // Ctrl-C cancels the line, Ctrl-D leaves.
    p.send("half typed").unwrap();
    p.send(expectrl::ControlCode::EndOfText).unwrap();
    p.expect("loss> ").unwrap();
    // (the editor drops typed-ahead input when it is interrupted: let it settle first)
    std::thread::sleep(std::time::Duration::from_millis(300));
    p.send(expectrl::ControlCode::EndOfTransmission).unwrap();
    // Leaving saves the history.
    let mut saved = String::new();
    for _ in 0..100 {
        // Keep reading, so the session is never blocked writing to the terminal.
        let _ = p.check("never printed");
        saved = std::fs::read_to_string(&history).unwrap_or_default();
        if saved.contains("twice(x = [1, 2])") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        saved.contains("twice(x = [1, 2])"),
        "history not saved: {saved}"
    );
    let _ = std::fs::remove_file(history);
}

/// A script line that is not UTF-8 is an error naming the line, the script goes on, and the
/// exit code is 2 (it stopped there silently with exit 0).
#[test]
fn script_lines_that_are_not_utf8_are_errors() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lossc"))
        .arg("repl")
        .env_remove("LOSSC_STDLIB_DIR")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lossc repl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"let a = [1.5]\nlet x = \xff\xfe\nmean_squared_error(labels = [0.0], predictions = [3.0])\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("line 2 is not UTF-8"), "{text}");
    assert!(text.contains("9.0"), "the script went on: {text}");
    assert_eq!(out.status.code(), Some(2), "{text}");
}
