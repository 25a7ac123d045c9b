//! Placement decisions as pure functions: they compute, they never act.
//!
//! This is the home of the kernel's heuristics (`svm_range_set_max_pages`, and later the
//! best prefetch and restore locations). Everything here is deterministic and unit tested.

use crate::range::PageNo;

/// Smallest maximum range size, in pages (2 MiB).
pub const MIN_MAX_RANGE_PAGES: u64 = 1 << 9;
/// Largest maximum range size, in pages (1 GiB).
pub const MAX_MAX_RANGE_PAGES: u64 = 1 << 18;

/// The largest range SET_ATTR creates in a gap (`svm_range_set_max_pages`): for each GPU
/// 1/32 of its VRAM in pages, clamped to [2 MiB, 1 GiB], rounded down to a power of two;
/// the minimum over the GPUs.
pub fn max_range_pages(vram_bytes: impl IntoIterator<Item = u64>) -> PageNo {
    vram_bytes
        .into_iter()
        .map(|b| {
            let pages = (b >> 17).clamp(MIN_MAX_RANGE_PAGES, MAX_MAX_RANGE_PAGES);
            1u64 << pages.ilog2()
        })
        .min()
        .unwrap_or(MAX_MAX_RANGE_PAGES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_range_pages_follows_the_kernel() {
        assert_eq!(max_range_pages([64 << 20]), 512); // clamped up to 2 MiB
        assert_eq!(max_range_pages([1 << 30]), 8192); // 32 MiB
        assert_eq!(max_range_pages([16u64 << 30]), 131072); // 512 MiB
        assert_eq!(max_range_pages([1u64 << 40]), 262144); // clamped down to 1 GiB
        assert_eq!(max_range_pages([3 << 30]), 16384); // 96 MiB -> 64 MiB (power of two)
        assert_eq!(max_range_pages([1 << 30, 256 << 20]), 2048); // minimum over GPUs
    }
}
