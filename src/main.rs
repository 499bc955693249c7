fn main() {
    // Like other command-line tools, end quietly when the reader of our output goes away
    // (`lossc list | head`) instead of failing on a broken pipe.
    #[cfg(unix)]
    // SAFETY: restoring the default SIGPIPE disposition at startup, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::process::exit(lossc::cli::main());
}
