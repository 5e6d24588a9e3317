//! Where a training step's time goes, by rstile's own ops.
//!
//! `rstile model bench` splits a step into forward, backward and update;
//! within those, the question that decides what to optimise next is how
//! much is rstile's kernels (convolution, batch norm, pooling) and how much
//! is everything else (candle's element-wise ops, its gradient bookkeeping,
//! the loss, the upsampling). Each custom op adds its wall time here; the
//! cost is two clock reads per op call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// How many ops are timed.
pub const OPS: usize = 6;

/// Seconds per op, in [`Op::ALL`] order.
pub type OpTimes = [f64; OPS];

/// The ops that are timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    ConvForward,
    ConvBackward,
    NormForward,
    NormBackward,
    PoolForward,
    PoolBackward,
}

impl Op {
    pub const ALL: [Op; OPS] = [
        Op::ConvForward,
        Op::ConvBackward,
        Op::NormForward,
        Op::NormBackward,
        Op::PoolForward,
        Op::PoolBackward,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::ConvForward => "conv forward",
            Op::ConvBackward => "conv backward",
            Op::NormForward => "batch norm forward",
            Op::NormBackward => "batch norm backward",
            Op::PoolForward => "max pool forward",
            Op::PoolBackward => "max pool backward",
        }
    }
}

static NANOS: [AtomicU64; OPS] = [const { AtomicU64::new(0) }; OPS];

/// Runs `f`, adding its wall time to `op`'s total.
pub(crate) fn timed<R>(op: Op, f: impl FnOnce() -> R) -> R {
    let t = Instant::now();
    let r = f();
    NANOS[op as usize].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    r
}

/// Seconds spent in each op (in [`Op::ALL`] order) since the process
/// started; differences of two snapshots time a stretch of work.
pub fn snapshot() -> OpTimes {
    std::array::from_fn(|i| NANOS[i].load(Ordering::Relaxed) as f64 * 1e-9)
}
