//! Counts of something open per client address (anonymous WebSocket sessions), with a
//! ceiling; a slot is held by a `Slot` and given back when it drops.

use dashmap::DashMap;
use std::net::IpAddr;
use std::sync::Arc;

pub struct PerAddress {
    max: usize,
    open: Arc<DashMap<IpAddr, usize>>,
}

/// One open thing; its address's count goes down when this drops.
pub struct Slot {
    addr: IpAddr,
    open: Arc<DashMap<IpAddr, usize>>,
}

impl PerAddress {
    pub fn new(max: usize) -> PerAddress {
        PerAddress {
            max,
            open: Arc::new(DashMap::new()),
        }
    }

    /// A slot for `addr`, unless it already holds the most allowed.
    pub fn acquire(&self, addr: IpAddr) -> Option<Slot> {
        let mut n = self.open.entry(addr).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            addr,
            open: self.open.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.remove_if_mut(&self.addr, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_address_and_given_back() {
        let p = PerAddress::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = p.acquire(a).unwrap();
        let _s2 = p.acquire(a).unwrap();
        assert!(p.acquire(a).is_none());
        assert!(p.acquire(b).is_some());
        drop(s1);
        assert!(p.acquire(a).is_some());
    }
}
