//! A set of pages kept as runs (`start -> last`, inclusive).

use crate::addr::Pages;
use crate::range::PageNo;
use std::collections::BTreeMap;

/// Pages as disjoint runs.
#[derive(Debug, Default)]
pub struct PageSet {
    runs: BTreeMap<PageNo, PageNo>,
}

impl PageSet {
    /// Whether `p` is in the set.
    pub fn contains(&self, p: PageNo) -> bool {
        self.runs.range(..=p).next_back().is_some_and(|(_, &l)| l >= p)
    }

    /// The first page of `[s, l]` in the set, if any.
    pub fn first_in(&self, Pages { first: s, last: l }: Pages) -> Option<PageNo> {
        if self.contains(s) {
            return Some(s);
        }
        self.runs.range(s..=l).next().map(|(&k, _)| k)
    }

    /// Adds `[s, l]`.
    pub fn insert(&mut self, pages: Pages) {
        let Pages { first: s, last: l } = pages;
        self.remove(pages);
        self.runs.insert(s, l);
    }

    /// Removes `[s, l]`, cutting the runs that stick out.
    pub fn remove(&mut self, Pages { first: s, last: l }: Pages) {
        let from = match self.runs.range(..=s).next_back() {
            Some((&k, &v)) if v >= s => k,
            _ => s,
        };
        let keys: Vec<(PageNo, PageNo)> = self.runs.range(from..=l).map(|(&k, &v)| (k, v)).collect();
        for (k, v) in keys {
            self.runs.remove(&k);
            if k < s {
                self.runs.insert(k, s - 1);
            }
            if v > l {
                self.runs.insert(l + 1, v);
            }
        }
    }

    /// Number of pages.
    pub fn len(&self) -> u64 {
        self.runs.iter().map(|(&s, &l)| l - s + 1).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::pg;

    #[test]
    fn insert_remove_contains() {
        let mut s = PageSet::default();
        s.insert(Pages::new(pg(10), pg(20)));
        s.insert(Pages::new(pg(30), pg(40)));
        assert!(s.contains(pg(10)) && s.contains(pg(20)) && !s.contains(pg(21)) && s.contains(pg(35)));
        s.remove(Pages::new(pg(15), pg(32)));
        assert!(s.contains(pg(14)) && !s.contains(pg(15)) && !s.contains(pg(32)) && s.contains(pg(33)));
        assert_eq!(s.len(), 5 + 8);
        s.insert(Pages::new(pg(0), pg(100)));
        assert_eq!(s.len(), 101);
        s.remove(Pages::new(pg(0), pg(100)));
        assert_eq!(s.len(), 0);
    }
}
