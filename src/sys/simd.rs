//! CPU-feature dispatch for the one hot loop: rotating and counting the
//! bytes of answered lines. The baseline x86_64 build has SSE2 only; where
//! the CPU has AVX2 (checked once at run time, as memchr does) the same
//! portable kernel runs compiled for AVX2, 32 bytes per instruction.

/// Rotates `buf` in place and counts its LF bytes, on the best kernel.
pub fn rot13_count_lf(buf: &mut [u8]) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if avx2() {
            // SAFETY: `rot13_count_lf_avx2` only needs AVX2, which the CPU
            // was just found to support (std's runtime detection).
            return unsafe { rot13_count_lf_avx2(buf) };
        }
    }
    crate::rot13::rot13_count_lf_kernel(buf)
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    use std::sync::atomic::{AtomicU8, Ordering};
    // 0 = unknown, 1 = no, 2 = yes.
    static HAS: AtomicU8 = AtomicU8::new(0);
    match HAS.load(Ordering::Relaxed) {
        0 => {
            let yes = std::is_x86_feature_detected!("avx2");
            HAS.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
            yes
        }
        v => v == 2,
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn rot13_count_lf_avx2(buf: &mut [u8]) -> usize {
    crate::rot13::rot13_count_lf_kernel(buf)
}
