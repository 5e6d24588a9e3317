//! Compiling a hot loop for the instruction sets the CPU has, picked at run
//! time: the release build targets plain x86-64 (SSE2), so that one binary
//! runs everywhere, and only the loops that need it get AVX2 or AVX-512.

/// A function compiled three times, plain, for AVX2 and for AVX-512F, the
/// widest the CPU has picked at run time. Without fused multiply-add (Rust
/// never contracts `a * b + c`) the arithmetic, and so every bit of the
/// result, is the same on every path.
///
/// ```ignore
/// multiversion! {
///     /// `acc += w * p`
///     fn axpy(acc: &mut [f32], w: &[f32], p: &[f32]) {
///         for ((a, &w), &v) in acc.iter_mut().zip(w).zip(p) {
///             *a += w * v;
///         }
///     }
/// }
/// ```
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($a: $t),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($a: $t),*) $(-> $ret)? {
                    generic($($a),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($a: $t),*) $(-> $ret)? {
                    generic($($a),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F
                    return unsafe { avx512($($a),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2
                    return unsafe { avx2($($a),*) };
                }
            }
            generic($($a),*)
        }
    };
}

pub(crate) use multiversion;
