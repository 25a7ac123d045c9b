//! Typed page numbers and page intervals.
//!
//! The range code works in **page numbers** (a byte address shifted right by
//! [`PAGE_SHIFT`]) and inclusive intervals `[first, last]`, as the kernel's range code does.
//! [`PageNo`] keeps a page number from being mixed up with a byte address, a page count or
//! a VRAM page index; [`Pages`] is one inclusive interval of them. Arithmetic is only what
//! the range code needs: a page number plus or minus a count is a page number, and the
//! difference of two page numbers is a count.

use std::fmt;
use std::ops::{Add, AddAssign, Sub, SubAssign};

/// The CPU page size usvm works with (4 KiB, as KFD's SVM code assumes).
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// A page number of the process's address space: a byte address shifted right by 12.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageNo(u64);

impl PageNo {
    /// Page number `n`.
    pub const fn new(n: u64) -> PageNo {
        PageNo(n)
    }

    /// The page that holds byte address `addr`.
    pub const fn of_addr(addr: usize) -> PageNo {
        PageNo((addr >> PAGE_SHIFT) as u64)
    }

    /// The page number as an integer (for events, tables and the kernel's formats).
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The byte address of the page's first byte.
    pub const fn addr(self) -> usize {
        (self.0 as usize) << PAGE_SHIFT
    }

    /// `self + n`, or the largest page number past it.
    pub const fn saturating_add(self, n: u64) -> PageNo {
        PageNo(self.0.saturating_add(n))
    }

    /// `self - n`, or page 0 when that would go below it.
    pub const fn saturating_sub(self, n: u64) -> PageNo {
        PageNo(self.0.saturating_sub(n))
    }

    /// `self - n`, or `None` below page 0.
    pub const fn checked_sub(self, n: u64) -> Option<PageNo> {
        match self.0.checked_sub(n) {
            Some(v) => Some(PageNo(v)),
            None => None,
        }
    }

    /// The page `self` rounded down to a multiple of `n` pages (`n` a power of two).
    pub const fn align_down(self, n: u64) -> PageNo {
        PageNo(self.0 & !(n - 1))
    }

    /// Whether the page number is a multiple of `n`.
    pub const fn is_multiple_of(self, n: u64) -> bool {
        self.0.is_multiple_of(n)
    }
}

impl fmt::Debug for PageNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl Add<u64> for PageNo {
    type Output = PageNo;
    fn add(self, n: u64) -> PageNo {
        PageNo(self.0 + n)
    }
}

impl AddAssign<u64> for PageNo {
    fn add_assign(&mut self, n: u64) {
        self.0 += n;
    }
}

impl Sub<u64> for PageNo {
    type Output = PageNo;
    fn sub(self, n: u64) -> PageNo {
        PageNo(self.0 - n)
    }
}

impl SubAssign<u64> for PageNo {
    fn sub_assign(&mut self, n: u64) {
        self.0 -= n;
    }
}

/// The number of pages from `o` up to `self`.
impl Sub<PageNo> for PageNo {
    type Output = u64;
    fn sub(self, o: PageNo) -> u64 {
        self.0 - o.0
    }
}

/// An inclusive interval of pages `[first, last]`, never empty.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pages {
    /// The first page.
    pub first: PageNo,
    /// The last page (inclusive).
    pub last: PageNo,
}

impl Pages {
    /// `[first, last]`; `first <= last`.
    pub fn new(first: PageNo, last: PageNo) -> Pages {
        debug_assert!(first <= last, "empty page interval {first:?}..={last:?}");
        Pages { first, last }
    }

    /// Page `p` alone.
    pub fn one(p: PageNo) -> Pages {
        Pages { first: p, last: p }
    }

    /// The `n` pages from `first` (`n >= 1`).
    pub fn starting_at(first: PageNo, n: u64) -> Pages {
        Pages::new(first, first + (n - 1))
    }

    /// The pages that hold the bytes `[start, end)` (`start < end`).
    pub fn of_bytes(start: usize, end: usize) -> Pages {
        Pages::new(PageNo::of_addr(start), PageNo::of_addr(end - 1))
    }

    /// How many pages.
    pub fn len(self) -> u64 {
        self.last - self.first + 1
    }

    /// The bytes the pages cover.
    pub fn bytes(self) -> usize {
        (self.len() as usize) << PAGE_SHIFT
    }

    /// Whether page `p` is in the interval.
    pub fn contains(self, p: PageNo) -> bool {
        self.first <= p && p <= self.last
    }

    /// The pages both intervals hold, if any.
    pub fn intersect(self, o: Pages) -> Option<Pages> {
        let (f, l) = (self.first.max(o.first), self.last.min(o.last));
        (f <= l).then_some(Pages { first: f, last: l })
    }

    /// Every page, ascending.
    pub fn iter(self) -> impl DoubleEndedIterator<Item = PageNo> {
        (self.first.0..=self.last.0).map(PageNo)
    }
}

impl fmt::Debug for Pages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x}]", self.first.0, self.last.0)
    }
}

/// Every page of `[first, last]`, ascending (empty when `first > last`).
pub fn each_page(first: PageNo, last: PageNo) -> impl DoubleEndedIterator<Item = PageNo> {
    (first.0..=last.0).map(PageNo)
}

/// Page number `n` (shorthand for unit tests).
#[cfg(test)]
pub(crate) const fn pg(n: u64) -> PageNo {
    PageNo(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_keeps_the_kinds_apart() {
        let p = PageNo::of_addr(0x7000_1234);
        assert_eq!(p.get(), 0x70001);
        assert_eq!(p.addr(), 0x7000_1000);
        assert_eq!((p + 3) - p, 3);
        assert_eq!(PageNo::new(2).saturating_sub(5), PageNo::new(0));
        assert_eq!(PageNo::new(0x1ff).align_down(512), PageNo::new(0));
        assert_eq!(format!("{p:?}"), "0x70001");
    }

    #[test]
    fn intervals() {
        let a = Pages::new(PageNo::new(10), PageNo::new(19));
        assert_eq!(a.len(), 10);
        assert_eq!(a.bytes(), 10 * 4096);
        let b = Pages::new(PageNo::new(15), PageNo::new(24));
        assert_eq!(a.intersect(b), Some(Pages::new(PageNo::new(15), PageNo::new(19))));
        assert_eq!(a.intersect(Pages::one(PageNo::new(20))), None);
        assert_eq!(a.iter().count(), 10);
        assert_eq!(Pages::of_bytes(0x1000, 0x3001), Pages::new(PageNo::new(1), PageNo::new(3)));
        assert_eq!(each_page(PageNo::new(3), PageNo::new(2)).count(), 0);
    }
}
