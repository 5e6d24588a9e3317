//! Process-wide set-up, in the binary only: thread pools, candle's thread
//! count, the allocator, signal hooks, GDAL's error handler and block cache.
//! The library changes none of these.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// GDAL errors come back as values (with GDAL's message); GDAL's own
/// printing to stderr would garble the one-line errors and the logs.
pub fn quiet_gdal() {
    gdal::config::set_error_handler(|_, _, _| {});
}

/// At most this many compute threads per core: more only adds spinning
/// threads that starve the pipeline's own (5000 took minutes to notice
/// SIGTERM).
pub const MAX_THREADS_PER_CORE: usize = 4;

/// Sets the compute thread count before any thread pool exists, and
/// returns it: `threads`, capped at [`MAX_THREADS_PER_CORE`] per core with
/// a warning, or the core count.
pub fn set_threads(threads: Option<usize>) -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let asked = threads.filter(|&n| n > 0);
    let n = cap_threads(asked.unwrap_or(cores), cores);
    if let Some(t) = asked.filter(|&t| t > n) {
        eprintln!(
            "rstile: warning: --threads {t} is more than {MAX_THREADS_PER_CORE} per core on {cores} core(s); using {n}"
        );
    }
    // candle and gemm size their pools from RAYON_NUM_THREADS
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    single_candle_pool();
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    n
}

/// `threads` capped at [`MAX_THREADS_PER_CORE`] per core.
pub fn cap_threads(threads: usize, cores: usize) -> usize {
    threads.min(cores.max(1).saturating_mul(MAX_THREADS_PER_CORE))
}

/// Leaves candle's element-wise thread pool at one thread unless
/// `CANDLE_NUM_THREADS` says otherwise. Call before the first candle op.
///
/// candle 0.11 runs element-wise ops on a second pool of spinning threads
/// beside rayon's; the two pools fight over the same cores (a training step
/// took twice as long with it on two cores). The heavy work runs on rayon in
/// rstile's kernels.
pub fn single_candle_pool() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Keeps freed activation buffers in the heap for the next step instead of
/// giving them back to the kernel: every candle op allocates its output, and
/// with glibc's defaults each large one is a fresh mmap whose pages the
/// kernel must zero (a fifth of a training step's time). For work whose
/// working set repeats step after step (training, benchmarks, and the
/// inference pipeline with [`pipeline_malloc`]).
pub fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        // 32 MiB is glibc's largest mmap threshold on 64-bit systems
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// The allocator for the inference pipeline: two malloc arenas, and freed
/// buffers kept in the heap for the next window or batch.
///
/// glibc gives each thread that allocates its own arena (up to 8 per
/// core), and the pipeline's threads (dispatcher, readers, model,
/// stitcher, writer, rayon's) each free buffers that another allocated, so
/// every arena kept its own freed, fragmented memory: the peak RSS grew
/// with the run's length (+14 % from 8192² to 16384², +21 % to 50000²)
/// though no buffer does. With two arenas it stays flat. And with glibc's
/// default thresholds every large buffer (a window, a batch's logits, a
/// cell) was a fresh mmap whose pages the kernel zeroes: a fifth of the
/// linear run's CPU time was system time. Keeping them in the heap
/// (as [`reuse_freed_memory`] does for training) cut the linear 8192² run
/// from 7.3-8.3 s to 6.5 s at the same peak (`benches/RESULTS.md`, issue
/// 16 §7). Call before the first thread starts.
pub fn pipeline_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    reuse_freed_memory();
}

/// GDAL's block cache, in MiB (counted in the memory bound).
pub fn gdal_cache(mb: usize) {
    let _ = gdal::config::set_config_option("GDAL_CACHEMAX", &mb.to_string());
}

/// A flag that SIGINT and SIGTERM raise; the pipeline stops at the next
/// window and keeps what it has for `--resume`.
pub fn stop_flag() -> std::io::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, flag.clone())?;
    }
    Ok(flag)
}

#[cfg(test)]
mod tests {
    #[test]
    fn threads_are_capped_per_core() {
        assert_eq!(super::cap_threads(5000, 2), 8);
        assert_eq!(super::cap_threads(8, 2), 8);
        assert_eq!(super::cap_threads(3, 2), 3);
        assert_eq!(super::cap_threads(5, 0), 4);
    }
}
