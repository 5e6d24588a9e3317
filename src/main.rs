//! The `rstile` binary: parses flags, resolves them into the library's
//! validated plans, runs them, and prints errors once, with their chain, on
//! one line. Exit codes: 0 success, 1 error, 2 usage, 130 interrupted.

mod cli;

fn main() {
    // Window buffers are a few MiB each and short-lived: keep them on the
    // heap instead of mmap/munmap per buffer, which costs a page fault and a
    // page clear for every 4 KiB, every window.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
    let code = match cli::run() {
        Ok(()) => 0,
        Err(e) => {
            let interrupted = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<rstile::Error>(),
                    Some(rstile::Error::Interrupted)
                )
            });
            let msg = format!("{e:#}");
            eprintln!(
                "rstile: error: {}",
                msg.split_whitespace().collect::<Vec<_>>().join(" ")
            );
            if interrupted {
                130
            } else {
                1
            }
        }
    };
    std::process::exit(code);
}
