//! The `rstile` binary: parses flags, resolves them into the library's
//! validated plans, runs them, and prints errors once, with their chain, on
//! one line. Exit codes: 0 success, 1 error, 2 usage, 130 interrupted.

mod cli;

fn main() {
    let code = match cli::run() {
        Ok(()) => 0,
        Err(e) => {
            let interrupted = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<rstile::Error>(),
                    Some(rstile::Error::Interrupted)
                )
            });
            eprintln!("rstile: error: {}", rstile::error::one_line(e.as_ref()));
            if interrupted {
                130
            } else if e.downcast_ref::<cli::Usage>().is_some() {
                2
            } else {
                1
            }
        }
    };
    std::process::exit(code);
}
